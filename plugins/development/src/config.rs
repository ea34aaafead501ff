//! The development plugin's config (`[plugins.config]` of its hive.toml entry): parsed with
//! the path of every bad key in the error, then validated (rates within 0..=1, latency
//! distributions well formed, every fault rule doing something).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The whole config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Seed of every random draw (mock outcomes, fault injection).
    #[serde(default)]
    pub(crate) seed: u64,
    /// The debug trace.
    #[serde(default)]
    pub(crate) trace: TraceConfig,
    /// The `mock` driver.
    #[serde(default)]
    pub(crate) mock: MockConfig,
    /// Fault injection rules.
    #[serde(default)]
    pub(crate) faults: Vec<FaultRule>,
}

/// `[plugins.config.trace]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TraceConfig {
    /// On or off (default off).
    #[serde(default)]
    pub(crate) enabled: bool,
    /// A file (appended to), or `stderr` (the default).
    #[serde(default)]
    pub(crate) path: Option<String>,
}

/// `[plugins.config.mock]`: the default profile of mock agents, and per-role overrides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MockConfig {
    /// Whether the plugin contributes the `mock` driver (default true).
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    /// Latency (a number of ms, or a distribution table).
    #[serde(default)]
    pub(crate) latency_ms: Option<Value>,
    /// Share of attempts that fail.
    #[serde(default)]
    pub(crate) failure_rate: Option<f64>,
    /// Share of attempts that never answer (the task's timeout ends them).
    #[serde(default)]
    pub(crate) timeout_rate: Option<f64>,
    /// Share of attempts whose agent crashes under them.
    #[serde(default)]
    pub(crate) crash_rate: Option<f64>,
    /// Per-role overrides of the keys above.
    #[serde(default)]
    pub(crate) roles: BTreeMap<String, RoleProfile>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            enabled: true,
            latency_ms: None,
            failure_rate: None,
            timeout_rate: None,
            crash_rate: None,
            roles: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// `[plugins.config.mock.roles.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleProfile {
    #[serde(default)]
    pub(crate) latency_ms: Option<Value>,
    #[serde(default)]
    pub(crate) failure_rate: Option<f64>,
    #[serde(default)]
    pub(crate) timeout_rate: Option<f64>,
    #[serde(default)]
    pub(crate) crash_rate: Option<f64>,
}

/// `[[plugins.config.faults]]`: what to do to the tasks of a role (every role if `role` is
/// absent), on any driver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRule {
    /// The role (absent: every role).
    #[serde(default)]
    pub(crate) role: Option<String>,
    /// Share of the role's tasks that fail (rejected before they run).
    #[serde(default)]
    pub(crate) fail_rate: f64,
    /// Delay added before a task runs (it waits in the queue that long, once).
    #[serde(default)]
    pub(crate) delay_ms: u64,
    /// Share of the role's tasks delayed (default: all, when `delay_ms` is set).
    #[serde(default = "one")]
    pub(crate) delay_rate: f64,
    /// Kill the agent that takes the role's Nth task (the task runs on it and is retried
    /// elsewhere).
    #[serde(default)]
    pub(crate) kill_after_tasks: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Latency {
    Fixed(f64),
    Uniform { min: f64, max: f64 },
    Exponential { mean: f64 },
    LogNormal { median: f64, sigma: f64 },
}

/// One role's resolved mock profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Profile {
    pub(crate) latency: Latency,
    pub(crate) failure_rate: f64,
    pub(crate) timeout_rate: f64,
    pub(crate) crash_rate: f64,
}

/// The z-score of the 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874;

fn num(v: &Value, key: &str, at: &str) -> Result<f64, String> {
    match v.get(key) {
        Some(n) => n
            .as_f64()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| format!("{at}.{key}: expected a non-negative number of milliseconds")),
        None => Err(format!("{at}: missing `{key}`")),
    }
}

/// Parses `latency_ms`: a number (fixed), or a table with `dist` = `fixed` (`ms`),
/// `uniform` (`min`, `max`), `exponential` (`mean`) or `lognormal` (`median`, `p99`).
pub(crate) fn latency(v: &Value, at: &str) -> Result<Latency, String> {
    if let Some(ms) = v.as_f64() {
        return if ms.is_finite() && ms >= 0.0 {
            Ok(Latency::Fixed(ms))
        } else {
            Err(format!(
                "{at}: expected a non-negative number of milliseconds"
            ))
        };
    }
    let Some(obj) = v.as_object() else {
        return Err(format!(
            "{at}: expected a number of milliseconds or a table with `dist`"
        ));
    };
    let dist = obj.get("dist").and_then(Value::as_str).unwrap_or("");
    let allowed: &[&str] = match dist {
        "fixed" => &["dist", "ms"],
        "uniform" => &["dist", "min", "max"],
        "exponential" => &["dist", "mean"],
        "lognormal" => &["dist", "median", "p99"],
        other => {
            return Err(format!(
            "{at}.dist: expected `fixed`, `uniform`, `exponential` or `lognormal`, found `{other}`"
        ))
        }
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "{at}.{k}: unknown key for dist `{dist}` (expected {})",
            allowed[1..].join(", ")
        ));
    }
    Ok(match dist {
        "fixed" => Latency::Fixed(num(v, "ms", at)?),
        "uniform" => {
            let (min, max) = (num(v, "min", at)?, num(v, "max", at)?);
            if min > max {
                return Err(format!("{at}: `min` ({min}) is above `max` ({max})"));
            }
            Latency::Uniform { min, max }
        }
        "exponential" => Latency::Exponential {
            mean: num(v, "mean", at)?,
        },
        _ => {
            let (median, p99) = (num(v, "median", at)?, num(v, "p99", at)?);
            if median <= 0.0 || p99 < median {
                return Err(format!(
                    "{at}: expected 0 < median <= p99 (found median {median}, p99 {p99})"
                ));
            }
            Latency::LogNormal {
                median,
                sigma: (p99 / median).ln() / Z99,
            }
        }
    })
}

fn rate(v: Option<f64>, at: &str) -> Result<Option<f64>, String> {
    match v {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            Err(format!("{at}: expected a rate between 0 and 1, found {r}"))
        }
        other => Ok(other),
    }
}

/// The resolved mock profiles: the default one and one per overridden role.
#[derive(Debug, Clone)]
pub(crate) struct Profiles {
    pub(crate) default: Profile,
    pub(crate) roles: BTreeMap<String, Profile>,
}

impl Profiles {
    pub(crate) fn of(&self, role: &str) -> &Profile {
        self.roles.get(role).unwrap_or(&self.default)
    }
}

fn check_sum(p: &Profile, at: &str) -> Result<(), String> {
    let sum = p.failure_rate + p.timeout_rate + p.crash_rate;
    if sum > 1.0 + 1e-9 {
        return Err(format!(
            "{at}: failure_rate + timeout_rate + crash_rate is {sum}, above 1"
        ));
    }
    Ok(())
}

impl Config {
    /// Parses and validates the config JSON; the error names the key.
    pub(crate) fn parse(json: &str) -> Result<(Config, Profiles), String> {
        let cfg: Config = hive_plugin_api::parse_config(json).map_err(|e| e.message.to_string())?;
        let m = &cfg.mock;
        let default = Profile {
            latency: match &m.latency_ms {
                Some(v) => latency(v, "mock.latency_ms")?,
                None => Latency::Fixed(10.0),
            },
            failure_rate: rate(m.failure_rate, "mock.failure_rate")?.unwrap_or(0.0),
            timeout_rate: rate(m.timeout_rate, "mock.timeout_rate")?.unwrap_or(0.0),
            crash_rate: rate(m.crash_rate, "mock.crash_rate")?.unwrap_or(0.0),
        };
        check_sum(&default, "mock")?;
        let mut roles = BTreeMap::new();
        for (role, o) in &m.roles {
            let at = format!("mock.roles.{role}");
            let p = Profile {
                latency: match &o.latency_ms {
                    Some(v) => latency(v, &format!("{at}.latency_ms"))?,
                    None => default.latency,
                },
                failure_rate: rate(o.failure_rate, &format!("{at}.failure_rate"))?
                    .unwrap_or(default.failure_rate),
                timeout_rate: rate(o.timeout_rate, &format!("{at}.timeout_rate"))?
                    .unwrap_or(default.timeout_rate),
                crash_rate: rate(o.crash_rate, &format!("{at}.crash_rate"))?
                    .unwrap_or(default.crash_rate),
            };
            check_sum(&p, &at)?;
            roles.insert(role.clone(), p);
        }
        for (i, f) in cfg.faults.iter().enumerate() {
            let at = format!("faults[{i}]");
            rate(Some(f.fail_rate), &format!("{at}.fail_rate"))?;
            rate(Some(f.delay_rate), &format!("{at}.delay_rate"))?;
            if f.kill_after_tasks == Some(0) {
                return Err(format!("{at}.kill_after_tasks: expected at least 1"));
            }
            if f.fail_rate == 0.0 && f.delay_ms == 0 && f.kill_after_tasks.is_none() {
                return Err(format!(
                    "{at}: does nothing: set fail_rate, delay_ms or kill_after_tasks"
                ));
            }
        }
        if cfg.trace.path.as_deref() == Some("") {
            return Err("trace.path: expected a file path or `stderr`".into());
        }
        Ok((cfg, Profiles { default, roles }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let (c, p) = Config::parse("{}").expect("empty config");
        assert!(c.mock.enabled && !c.trace.enabled && c.faults.is_empty());
        assert_eq!(p.default.latency, Latency::Fixed(10.0));
    }

    #[test]
    fn bad_keys_are_named() {
        let e = Config::parse(r#"{"mock": {"failure_rate": 1.5}}"#).expect_err("rate");
        assert_eq!(
            e,
            "mock.failure_rate: expected a rate between 0 and 1, found 1.5"
        );
        let e = Config::parse(r#"{"mock": {"roles": {"a": {"bogus": 1}}}}"#).expect_err("key");
        assert!(
            e.starts_with("mock.roles.a.bogus: unknown field `bogus`"),
            "{e}"
        );
        let e = Config::parse(r#"{"mock": {"latency_ms": {"dist": "uniform", "min": 5}}}"#)
            .expect_err("max");
        assert_eq!(e, "mock.latency_ms: missing `max`");
        let e = Config::parse(r#"{"faults": [{"role": "a"}]}"#).expect_err("no effect");
        assert!(e.starts_with("faults[0]: does nothing"), "{e}");
        let e = Config::parse(r#"{"seed": "x"}"#).expect_err("seed");
        assert!(e.starts_with("seed: invalid type"), "{e}");
    }

    #[test]
    fn role_profiles_inherit_the_default() {
        let (_, p) = Config::parse(
            r#"{"mock": {"failure_rate": 0.1, "latency_ms": 5, "roles": {"b": {"latency_ms": {"dist": "lognormal", "median": 10, "p99": 100}}}}}"#,
        )
        .expect("valid");
        let b = p.of("b");
        assert_eq!(b.failure_rate, 0.1);
        assert!(matches!(b.latency, Latency::LogNormal { median, .. } if median == 10.0));
        assert_eq!(p.of("other").latency, Latency::Fixed(5.0));
    }
}
