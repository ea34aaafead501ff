//! The performance plugin's config (`[plugins.config]` of its hive.toml entry): parsed with
//! the path of a bad key in the error (`benchmark.tasks: ...`), then validated.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The config as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    report_path: Option<String>,
    #[serde(default = "default_report_interval_ms")]
    report_interval_ms: u64,
    #[serde(default = "default_windows_s")]
    windows_s: Vec<u64>,
    #[serde(default = "yes")]
    per_agent: bool,
    #[serde(default)]
    benchmark: Option<RawBenchmark>,
}

/// `[plugins.config.benchmark]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBenchmark {
    role: String,
    #[serde(default = "default_benchmark_tasks")]
    tasks: u32,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    timeout_s: Option<f64>,
}

fn default_report_interval_ms() -> u64 {
    1000
}
fn default_windows_s() -> Vec<u64> {
    vec![1, 10, 60]
}
fn default_benchmark_tasks() -> u32 {
    10
}
fn yes() -> bool {
    true
}

/// The longest throughput window, in seconds.
pub(crate) const MAX_WINDOW_S: u64 = 3600;

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// Where the periodic report goes (None: no file, `status()` only).
    pub(crate) report_path: Option<PathBuf>,
    /// The report's period (also the benchmark's readiness check).
    pub(crate) report_interval: Duration,
    /// The throughput windows, in seconds, sorted, without duplicates.
    pub(crate) windows_s: Vec<u64>,
    /// Whether statistics are also kept per agent.
    pub(crate) per_agent: bool,
    /// The benchmark to submit once the role has an agent.
    pub(crate) benchmark: Option<Benchmark>,
}

/// A benchmark: `tasks` tasks of `role` with `payload`, submitted together.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Benchmark {
    /// The role.
    pub(crate) role: String,
    /// How many tasks.
    pub(crate) tasks: u32,
    /// Every task's payload.
    pub(crate) payload: Value,
    /// Every task's timeout, in seconds (None: the kernel's default).
    pub(crate) timeout_s: Option<f64>,
}

impl Settings {
    /// Parses and validates the config JSON; the error names the key.
    pub(crate) fn parse(json: &str) -> Result<Settings, String> {
        let raw: Raw = hive_plugin_api::parse_config(json).map_err(|e| e.message.to_string())?;
        let report_path = match raw.report_path {
            Some(p) if p.trim().is_empty() => {
                return Err("report_path: expected a file path, found an empty string".into())
            }
            Some(p) => Some(PathBuf::from(p)),
            None => None,
        };
        if let Some(p) = &report_path {
            if p.file_name().is_none() {
                return Err(format!(
                    "report_path: `{}` does not name a file",
                    p.display()
                ));
            }
        }
        if !(10..=3_600_000).contains(&raw.report_interval_ms) {
            return Err(format!(
                "report_interval_ms: expected milliseconds in 10..=3600000, found {}",
                raw.report_interval_ms
            ));
        }
        let mut windows_s = raw.windows_s;
        if windows_s.is_empty() {
            return Err("windows_s: expected at least one window, found []".into());
        }
        if let Some(w) = windows_s.iter().find(|w| !(1..=MAX_WINDOW_S).contains(*w)) {
            return Err(format!(
                "windows_s: expected seconds in 1..={MAX_WINDOW_S}, found {w}"
            ));
        }
        windows_s.sort_unstable();
        windows_s.dedup();
        let benchmark = match raw.benchmark {
            None => None,
            Some(b) => {
                if b.role.trim().is_empty() {
                    return Err("benchmark.role: expected a role name, found \"\"".into());
                }
                if !(1..=100_000).contains(&b.tasks) {
                    return Err(format!(
                        "benchmark.tasks: expected 1..=100000, found {}",
                        b.tasks
                    ));
                }
                if let Some(t) = b.timeout_s {
                    if !(t.is_finite() && t > 0.0) {
                        return Err(format!(
                            "benchmark.timeout_s: expected seconds > 0, found {t}"
                        ));
                    }
                }
                Some(Benchmark {
                    role: b.role,
                    tasks: b.tasks,
                    payload: b
                        .payload
                        .unwrap_or_else(|| Value::Object(Default::default())),
                    timeout_s: b.timeout_s,
                })
            }
        };
        Ok(Settings {
            report_path,
            report_interval: Duration::from_millis(raw.report_interval_ms),
            windows_s,
            per_agent: raw.per_agent,
            benchmark,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_key() {
        let s = Settings::parse("{}").expect("empty");
        assert_eq!(s.report_path, None);
        assert_eq!(s.report_interval, Duration::from_secs(1));
        assert_eq!(s.windows_s, [1, 10, 60]);
        assert!(s.per_agent);
        assert_eq!(s.benchmark, None);
        let s = Settings::parse(
            r#"{"report_path": "out/perf.json", "report_interval_ms": 200,
                "windows_s": [60, 5, 5], "per_agent": false,
                "benchmark": {"role": "work", "tasks": 3, "payload": {"sleep": 0.1}}}"#,
        )
        .expect("valid");
        assert_eq!(s.report_path, Some(PathBuf::from("out/perf.json")));
        assert_eq!(s.windows_s, [5, 60]);
        assert!(!s.per_agent);
        let b = s.benchmark.expect("benchmark");
        assert_eq!((b.role.as_str(), b.tasks), ("work", 3));
        assert_eq!(b.payload["sleep"], 0.1);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"bogus": 1}"#, "unknown field `bogus`"),
            (
                r#"{"report_interval_ms": 0}"#,
                "report_interval_ms: expected",
            ),
            (
                r#"{"report_interval_ms": -5}"#,
                "report_interval_ms: invalid",
            ),
            (r#"{"report_path": ""}"#, "report_path:"),
            (r#"{"windows_s": []}"#, "windows_s:"),
            (r#"{"windows_s": [0]}"#, "windows_s:"),
            (r#"{"windows_s": [1.5]}"#, "windows_s[0]: invalid type"),
            (r#"{"benchmark": {}}"#, "benchmark: missing field `role`"),
            (
                r#"{"benchmark": {"role": "w", "tasks": 0}}"#,
                "benchmark.tasks:",
            ),
            (
                r#"{"benchmark": {"role": "w", "extra": 0}}"#,
                "benchmark.extra: unknown field `extra`",
            ),
        ];
        for (json, needle) in cases {
            let e = Settings::parse(json).expect_err(json);
            assert!(e.contains(needle), "{json}: {e:?} lacks {needle:?}");
        }
    }
}
