//! The production plugin's config (`[plugins.config]` of its hive.toml entry): parsed with the
//! path of a bad key in the error (`roles.work.max_agents: ...`), then validated.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The config as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_window_s")]
    window_s: f64,
    #[serde(default = "default_check_interval_ms")]
    check_interval_ms: u64,
    #[serde(default = "yes")]
    failover: bool,
    #[serde(default = "one")]
    min_samples: u64,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
}

/// One `[plugins.config.roles.<role>]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    p95_latency_ms: Option<f64>,
    #[serde(default)]
    p95_queue_wait_ms: Option<f64>,
    #[serde(default = "one_u32")]
    min_agents: u32,
    max_agents: u32,
    #[serde(default = "default_breach_for_ms")]
    breach_for_ms: u64,
    #[serde(default = "one_u32")]
    scale_up_step: u32,
    #[serde(default = "default_cool_down_ms")]
    cool_down_ms: u64,
    #[serde(default)]
    failover: Option<bool>,
}

fn default_window_s() -> f64 {
    10.0
}
fn default_check_interval_ms() -> u64 {
    250
}
fn default_breach_for_ms() -> u64 {
    1000
}
fn default_cool_down_ms() -> u64 {
    30_000
}
fn yes() -> bool {
    true
}
fn one() -> u64 {
    1
}
fn one_u32() -> u32 {
    1
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// The sliding window of the SLA statistics.
    pub(crate) window: Duration,
    /// The ticker's period.
    pub(crate) check_interval: Duration,
    /// Finished attempts a window needs before its p95 counts.
    pub(crate) min_samples: u64,
    /// The managed roles.
    pub(crate) roles: BTreeMap<String, RoleSettings>,
}

/// One managed role.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoleSettings {
    /// The p95 latency (run time of attempts) threshold, in milliseconds.
    pub(crate) p95_latency_ms: Option<f64>,
    /// The p95 queue-wait threshold, in milliseconds.
    pub(crate) p95_queue_wait_ms: Option<f64>,
    /// Idle agents are never retired below this many.
    pub(crate) min_agents: u32,
    /// Agents are never spawned above this many.
    pub(crate) max_agents: u32,
    /// How long a breach lasts before a scale-up step (and between two steps).
    pub(crate) breach_for: Duration,
    /// Agents spawned per step.
    pub(crate) scale_up_step: u32,
    /// Idle time before an agent is retired; also the least time between two retirements.
    pub(crate) cool_down: Duration,
    /// Whether failed agents of the role are replaced and their work retried at once.
    pub(crate) failover: bool,
}

impl Settings {
    /// Whether any role has failover on.
    pub(crate) fn any_failover(&self) -> bool {
        self.roles.values().any(|r| r.failover)
    }

    /// Whether any role has a threshold.
    pub(crate) fn any_threshold(&self) -> bool {
        self.roles
            .values()
            .any(|r| r.p95_latency_ms.is_some() || r.p95_queue_wait_ms.is_some())
    }

    /// Parses and validates the config JSON; the error names the key.
    pub(crate) fn parse(json: &str) -> Result<Settings, String> {
        let raw: Raw = hive_plugin_api::parse_config(json).map_err(|e| e.message.to_string())?;
        if !(raw.window_s.is_finite() && raw.window_s >= 0.1 && raw.window_s <= 86_400.0) {
            return Err(format!(
                "window_s: expected a number of seconds in 0.1..=86400, found {}",
                raw.window_s
            ));
        }
        if !(10..=60_000).contains(&raw.check_interval_ms) {
            return Err(format!(
                "check_interval_ms: expected milliseconds in 10..=60000, found {}",
                raw.check_interval_ms
            ));
        }
        if raw.min_samples == 0 {
            return Err("min_samples: expected at least 1, found 0".into());
        }
        let mut roles = BTreeMap::new();
        for (name, r) in raw.roles {
            let at = |key: &str| format!("roles.{name}.{key}");
            for (key, v) in [
                ("p95_latency_ms", r.p95_latency_ms),
                ("p95_queue_wait_ms", r.p95_queue_wait_ms),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(format!(
                            "{}: expected a number of milliseconds > 0, found {v}",
                            at(key)
                        ));
                    }
                }
            }
            if r.max_agents == 0 {
                return Err(format!(
                    "{}: expected at least 1, found 0",
                    at("max_agents")
                ));
            }
            if r.min_agents > r.max_agents {
                return Err(format!(
                    "{}: {} is more than max_agents ({})",
                    at("min_agents"),
                    r.min_agents,
                    r.max_agents
                ));
            }
            if r.scale_up_step == 0 {
                return Err(format!(
                    "{}: expected at least 1, found 0",
                    at("scale_up_step")
                ));
            }
            if r.cool_down_ms == 0 {
                return Err(format!(
                    "{}: expected milliseconds > 0, found 0",
                    at("cool_down_ms")
                ));
            }
            roles.insert(
                name.clone(),
                RoleSettings {
                    p95_latency_ms: r.p95_latency_ms,
                    p95_queue_wait_ms: r.p95_queue_wait_ms,
                    min_agents: r.min_agents,
                    max_agents: r.max_agents,
                    breach_for: Duration::from_millis(r.breach_for_ms),
                    scale_up_step: r.scale_up_step,
                    cool_down: Duration::from_millis(r.cool_down_ms),
                    failover: r.failover.unwrap_or(raw.failover),
                },
            );
        }
        Ok(Settings {
            window: Duration::from_secs_f64(raw.window_s),
            check_interval: Duration::from_millis(raw.check_interval_ms),
            min_samples: raw.min_samples,
            roles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_a_full_role() {
        let s = Settings::parse("{}").expect("empty config");
        assert_eq!(s.window, Duration::from_secs(10));
        assert_eq!(s.check_interval, Duration::from_millis(250));
        assert!(s.roles.is_empty());
        let s = Settings::parse(
            r#"{"window_s": 2, "failover": false, "roles": {"work": {"p95_latency_ms": 500,
                "min_agents": 2, "max_agents": 4, "breach_for_ms": 100, "scale_up_step": 2,
                "cool_down_ms": 700, "failover": true}, "other": {"max_agents": 1}}}"#,
        )
        .expect("valid");
        let w = &s.roles["work"];
        assert_eq!(w.p95_latency_ms, Some(500.0));
        assert_eq!(w.p95_queue_wait_ms, None);
        assert_eq!((w.min_agents, w.max_agents, w.scale_up_step), (2, 4, 2));
        assert_eq!(w.cool_down, Duration::from_millis(700));
        assert!(w.failover, "the role's own failover wins");
        assert!(!s.roles["other"].failover, "the top-level failover applies");
        assert_eq!(s.roles["other"].min_agents, 1);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"bogus": 1}"#, "unknown field `bogus`"),
            (r#"{"window_s": 0}"#, "window_s:"),
            (r#"{"check_interval_ms": 0}"#, "check_interval_ms:"),
            (
                r#"{"roles": {"w": {}}}"#,
                "roles.w: missing field `max_agents`",
            ),
            (
                r#"{"roles": {"w": {"max_agents": 1, "min_agents": 2}}}"#,
                "roles.w.min_agents: 2 is more than max_agents (1)",
            ),
            (
                r#"{"roles": {"w": {"max_agents": 1, "p95_latency_ms": -1}}}"#,
                "roles.w.p95_latency_ms:",
            ),
            (
                r#"{"roles": {"w": {"max_agents": 1, "typo": 1}}}"#,
                "roles.w.typo: unknown field `typo`",
            ),
            (
                r#"{"roles": {"w": {"max_agents": 0}}}"#,
                "roles.w.max_agents:",
            ),
            (
                r#"{"roles": {"w": {"max_agents": "x"}}}"#,
                "roles.w.max_agents: invalid type",
            ),
        ];
        for (json, needle) in cases {
            let e = Settings::parse(json).expect_err(json);
            assert!(e.contains(needle), "{json}: {e:?} lacks {needle:?}");
        }
    }
}
