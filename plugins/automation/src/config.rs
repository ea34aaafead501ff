//! The plugin's config (`[plugins.config]`): the circuit breakers, self-healing and the
//! error-pattern rules, read from JSON and checked (every error names the key at fault).

use regex::Regex;
use serde::Deserialize;

use hive_plugin_api::PluginError;

/// The attempt statuses a breaker may count as failures.
const COUNTABLE: &[&str] = &["failed", "timed_out", "agent_lost", "cancelled"];

/// The whole config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[plugins.config.breaker]`.
    pub breaker: BreakerSettings,
    /// `[plugins.config.self_healing]`.
    pub healing: HealingSettings,
    /// `[[plugins.config.rules]]`, in order (the first match wins).
    pub rules: Vec<Rule>,
}

/// Circuit breakers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Breakers at all.
    pub enabled: bool,
    /// One breaker per agent.
    pub per_agent: bool,
    /// One breaker per role.
    pub per_role: bool,
    /// The sliding window of outcomes, in milliseconds.
    pub window_ms: u64,
    /// Fewer attempts than this in the window never trip a breaker.
    pub min_calls: u32,
    /// Failures / attempts in the window at or above which a breaker opens.
    pub failure_rate: f64,
    /// How long a breaker stays open before it half-opens, in milliseconds.
    pub cool_down_ms: u64,
    /// Trial tasks let through while half-open.
    pub half_open_trials: u32,
    /// How long a task is deferred when it cannot run now, in milliseconds (at least).
    pub defer_ms: u64,
    /// Which attempt statuses count as failures.
    pub count_failed: bool,
    /// `timed_out` counts as a failure.
    pub count_timed_out: bool,
    /// `agent_lost` counts as a failure.
    pub count_agent_lost: bool,
    /// `cancelled` counts as a failure.
    pub count_cancelled: bool,
}

impl BreakerSettings {
    /// Whether an attempt status counts as a failure.
    pub fn counts(&self, status: &str) -> bool {
        match status {
            "failed" => self.count_failed,
            "timed_out" => self.count_timed_out,
            "agent_lost" => self.count_agent_lost,
            "cancelled" => self.count_cancelled,
            _ => false,
        }
    }
}

/// Self-healing (restarts of crashed agents).
#[derive(Debug, Clone, PartialEq)]
pub struct HealingSettings {
    /// Restarts at all.
    pub enabled: bool,
    /// The first restart's delay, in milliseconds.
    pub backoff_initial_ms: u64,
    /// The delay's cap, in milliseconds.
    pub backoff_max_ms: u64,
    /// Each further restart within the period multiplies the delay by this.
    pub backoff_factor: f64,
    /// At most this many restarts of a role within `within_ms`...
    pub max_restarts: u32,
    /// ...milliseconds; one more failure gives up on the role.
    pub within_ms: u64,
    /// Retry a task whose agent died under it, even past its retry policy.
    pub retry_lost_tasks: bool,
}

/// What a rule does with a failed attempt whose error matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Retry after `ms`.
    RetryAfter,
    /// Retry after `ms` on another agent of the role.
    Reroute,
    /// No more attempts.
    GiveUp,
}

impl Action {
    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Action::RetryAfter => "retry_after",
            Action::Reroute => "reroute",
            Action::GiveUp => "give_up",
        }
    }
}

/// One error-pattern rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The pattern, as written.
    pub pattern: String,
    /// The pattern, compiled.
    pub regex: Regex,
    /// What to do.
    pub action: Action,
    /// The retry delay (`retry_after`, `reroute`).
    pub ms: u64,
    /// The rule applies to failed attempts numbered below this (`retry_after`, `reroute`).
    pub max_attempts: Option<u32>,
    /// Whether matching failures count towards the breakers.
    pub count: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    self_healing: RawHealing,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBreaker {
    enabled: bool,
    per_agent: bool,
    per_role: bool,
    window_s: f64,
    min_calls: u32,
    failure_rate: f64,
    cool_down_ms: u64,
    half_open_trials: u32,
    defer_ms: u64,
    count: Vec<String>,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            enabled: true,
            per_agent: true,
            per_role: true,
            window_s: 30.0,
            min_calls: 5,
            failure_rate: 0.5,
            cool_down_ms: 5000,
            half_open_trials: 3,
            defer_ms: 200,
            count: vec!["failed".into(), "timed_out".into(), "agent_lost".into()],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealing {
    enabled: bool,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    backoff_factor: f64,
    max_restarts: u32,
    within_s: f64,
    retry_lost_tasks: bool,
}

impl Default for RawHealing {
    fn default() -> Self {
        RawHealing {
            enabled: true,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            backoff_factor: 2.0,
            max_restarts: 5,
            within_s: 60.0,
            retry_lost_tasks: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    pattern: String,
    action: String,
    #[serde(default)]
    ms: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default = "yes")]
    count: bool,
}

fn yes() -> bool {
    true
}

fn bad(key: &str, what: impl std::fmt::Display) -> PluginError {
    PluginError::config(format!("`{key}`: {what}"))
}

/// Milliseconds from a positive, finite number of seconds.
fn secs_to_ms(key: &str, s: f64) -> Result<u64, PluginError> {
    if s.is_finite() && s > 0.0 && s <= 1e9 {
        Ok(((s * 1000.0).round() as u64).max(1))
    } else {
        Err(bad(
            key,
            format!("expected a positive number of seconds, found {s}"),
        ))
    }
}

impl Settings {
    /// Reads and checks the config (a JSON object).
    pub fn from_json(config_json: &str) -> Result<Self, PluginError> {
        let raw: Raw = hive_plugin_api::parse_config(config_json)?;
        let b = raw.breaker;
        let window_ms = secs_to_ms("breaker.window_s", b.window_s)?;
        if b.min_calls == 0 {
            return Err(bad(
                "breaker.min_calls",
                "expected an integer >= 1, found 0",
            ));
        }
        if !(b.failure_rate.is_finite() && b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
            return Err(bad(
                "breaker.failure_rate",
                format!(
                    "expected a fraction in (0, 1] (0.5 = half of the attempts failed), found {}",
                    b.failure_rate
                ),
            ));
        }
        if b.cool_down_ms == 0 {
            return Err(bad("breaker.cool_down_ms", "expected >= 1, found 0"));
        }
        if b.half_open_trials == 0 {
            return Err(bad(
                "breaker.half_open_trials",
                "expected an integer >= 1, found 0",
            ));
        }
        if b.defer_ms == 0 {
            return Err(bad("breaker.defer_ms", "expected >= 1, found 0"));
        }
        for (i, s) in b.count.iter().enumerate() {
            if !COUNTABLE.contains(&s.as_str()) {
                return Err(bad(
                    &format!("breaker.count[{i}]"),
                    format!(
                        "unknown attempt status `{s}`, expected one of: {}",
                        COUNTABLE.join(", ")
                    ),
                ));
            }
        }
        let has = |s: &str| b.count.iter().any(|c| c == s);
        let breaker = BreakerSettings {
            enabled: b.enabled && (b.per_agent || b.per_role),
            per_agent: b.per_agent,
            per_role: b.per_role,
            window_ms,
            min_calls: b.min_calls,
            failure_rate: b.failure_rate,
            cool_down_ms: b.cool_down_ms,
            half_open_trials: b.half_open_trials,
            defer_ms: b.defer_ms,
            count_failed: has("failed"),
            count_timed_out: has("timed_out"),
            count_agent_lost: has("agent_lost"),
            count_cancelled: has("cancelled"),
        };

        let h = raw.self_healing;
        if !(h.backoff_factor.is_finite() && (1.0..=1000.0).contains(&h.backoff_factor)) {
            return Err(bad(
                "self_healing.backoff_factor",
                format!("expected a number in [1, 1000], found {}", h.backoff_factor),
            ));
        }
        if h.backoff_max_ms < h.backoff_initial_ms {
            return Err(bad(
                "self_healing.backoff_max_ms",
                format!(
                    "must be >= backoff_initial_ms ({}), found {}",
                    h.backoff_initial_ms, h.backoff_max_ms
                ),
            ));
        }
        if h.max_restarts == 0 {
            return Err(bad(
                "self_healing.max_restarts",
                "expected an integer >= 1, found 0 (set enabled = false to never restart)",
            ));
        }
        let healing = HealingSettings {
            enabled: h.enabled,
            backoff_initial_ms: h.backoff_initial_ms,
            backoff_max_ms: h.backoff_max_ms,
            backoff_factor: h.backoff_factor,
            max_restarts: h.max_restarts,
            within_ms: secs_to_ms("self_healing.within_s", h.within_s)?,
            retry_lost_tasks: h.retry_lost_tasks,
        };

        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            let regex = Regex::new(&r.pattern).map_err(|e| {
                bad(
                    &key("pattern"),
                    format!("invalid regex `{}`: {e}", r.pattern),
                )
            })?;
            let action = match r.action.as_str() {
                "retry_after" => Action::RetryAfter,
                "reroute" => Action::Reroute,
                "give_up" => Action::GiveUp,
                other => {
                    return Err(bad(
                        &key("action"),
                        format!(
                            "unknown action `{other}`, expected retry_after, reroute or give_up"
                        ),
                    ))
                }
            };
            let ms = match (action, r.ms) {
                (Action::RetryAfter, None) => {
                    return Err(bad(
                        &key("ms"),
                        "a retry_after rule needs `ms` (the delay in milliseconds)",
                    ))
                }
                (Action::GiveUp, Some(_)) => {
                    return Err(bad(&key("ms"), "a give_up rule takes no `ms`"))
                }
                (_, ms) => ms.unwrap_or(0),
            };
            match (action, r.max_attempts) {
                (Action::GiveUp, Some(_)) => {
                    return Err(bad(
                        &key("max_attempts"),
                        "a give_up rule takes no `max_attempts`",
                    ))
                }
                (_, Some(0)) => {
                    return Err(bad(
                        &key("max_attempts"),
                        "expected an integer >= 1, found 0",
                    ))
                }
                _ => {}
            }
            rules.push(Rule {
                pattern: r.pattern,
                regex,
                action,
                ms,
                max_attempts: r.max_attempts,
                count: r.count,
            });
        }
        Ok(Settings {
            breaker,
            healing,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match Settings::from_json(json) {
            Ok(_) => panic!("accepted {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::from_json("{}").expect("empty config");
        assert!(s.breaker.enabled && s.breaker.per_agent && s.breaker.per_role);
        assert_eq!(s.breaker.window_ms, 30_000);
        assert_eq!(s.breaker.min_calls, 5);
        assert!(s.breaker.counts("failed") && s.breaker.counts("agent_lost"));
        assert!(!s.breaker.counts("cancelled") && !s.breaker.counts("succeeded"));
        assert!(s.healing.enabled);
        assert_eq!(s.healing.within_ms, 60_000);
        assert!(s.rules.is_empty());
    }

    #[test]
    fn rules_parse_in_order() {
        let s = Settings::from_json(
            r#"{"rules": [
                {"pattern": "(?i)rate limit", "action": "retry_after", "ms": 500, "max_attempts": 4},
                {"pattern": "bad input", "action": "give_up", "count": false},
                {"pattern": "oom", "action": "reroute"}
            ]}"#,
        )
        .expect("rules");
        let actions: Vec<_> = s.rules.iter().map(|r| (r.action, r.ms)).collect();
        assert_eq!(
            actions,
            [
                (Action::RetryAfter, 500),
                (Action::GiveUp, 0),
                (Action::Reroute, 0)
            ]
        );
        assert!(s.rules[0].regex.is_match("Rate Limit exceeded"));
        assert_eq!(s.rules[0].max_attempts, Some(4));
        assert!(!s.rules[1].count && s.rules[2].count);
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(
            r#"{"rules": [{"pattern": "ok", "action": "give_up"}, {"pattern": "(", "action": "give_up"}]}"#,
        );
        assert!(
            e.contains("rules[1].pattern") && e.contains("invalid regex `(`"),
            "{e}"
        );
        let e = err(r#"{"breaker": {"bogus": 1}}"#);
        assert!(e.contains("breaker") && e.contains("bogus"), "{e}");
        let e = err(r#"{"breaker": {"failure_rate": 1.5}}"#);
        assert!(
            e.contains("breaker.failure_rate") && e.contains("1.5"),
            "{e}"
        );
        let e = err(r#"{"breaker": {"count": ["failed", "succeeded"]}}"#);
        assert!(e.contains("breaker.count[1]"), "{e}");
        let e = err(r#"{"rules": [{"pattern": "x", "action": "retry_after"}]}"#);
        assert!(e.contains("rules[0].ms"), "{e}");
        let e = err(r#"{"rules": [{"pattern": "x", "action": "explode"}]}"#);
        assert!(
            e.contains("rules[0].action") && e.contains("explode"),
            "{e}"
        );
        let e = err(r#"{"self_healing": {"within_s": -1}}"#);
        assert!(e.contains("self_healing.within_s"), "{e}");
        let e = err(r#"{"self_healing": {"backoff_initial_ms": 500, "backoff_max_ms": 100}}"#);
        assert!(e.contains("self_healing.backoff_max_ms"), "{e}");
        let e = err(r#"{"surprise": true}"#);
        assert!(e.contains("surprise"), "{e}");
        let e = err(r#"{"breaker": {"min_calls": "five"}}"#);
        assert!(e.contains("breaker.min_calls"), "{e}");
    }
}
