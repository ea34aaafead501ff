//! Seeded draws: the `mock` driver's outcome of an attempt (latency, failure, timeout,
//! crash) and the fault-injection coin flips. Every draw is a pure function of the seed and
//! the task's identity (its label, else its id, and its payload), never of call order, so
//! that the same seed gives the same run whatever the interleaving.

use hive_plugin_api::DriverStep;
use serde_json::json;

use crate::config::{Latency, Profile};

/// FNV-1a over `parts`, finished with splitmix64.
pub(crate) fn hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The identity of a task for draws: a hash of its label when it has one (a plan's step id,
/// a `--tasks` id), else of its id; and of its payload. No allocation: it runs on the
/// dispatch path.
pub(crate) fn task_key(name: &str, task: u64, payload: &str) -> [u8; 8] {
    let id = task.to_le_bytes();
    let first: &[u8] = if name.is_empty() {
        &id
    } else {
        name.as_bytes()
    };
    hash(0, &[first, payload.as_bytes()]).to_le_bytes()
}

/// A uniform draw in [0, 1) for `purpose` of the task `key`.
pub(crate) fn coin(seed: u64, purpose: &str, key: &[u8], attempt: u32) -> f64 {
    let h = hash(seed, &[purpose.as_bytes(), key, &attempt.to_le_bytes()]);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A latency sample.
pub(crate) fn sample(lat: Latency, rng: &mut fastrand::Rng) -> f64 {
    match lat {
        Latency::Fixed(ms) => ms,
        Latency::Uniform { min, max } => min + (max - min) * rng.f64(),
        Latency::Exponential { mean } => -mean * (1.0 - rng.f64()).ln(),
        Latency::LogNormal { median, sigma } => {
            // Box-Muller.
            let u1 = 1.0 - rng.f64();
            let u2 = rng.f64();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            median * (sigma * z).exp()
        }
    }
}

/// How a mock attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Completed,
    Failed,
    TimedOut,
    Crashed,
}

/// Decides one mock attempt: its fate and latency, then the step for the kernel.
pub(crate) fn decide(
    seed: u64,
    profile: &Profile,
    role: &str,
    key: &[u8],
    attempt: u32,
    payload_json: &str,
) -> (Fate, DriverStep) {
    let mut rng = fastrand::Rng::with_seed(hash(
        seed,
        &[b"mock", role.as_bytes(), key, &attempt.to_le_bytes()],
    ));
    let ms = sample(profile.latency, &mut rng).max(0.0);
    let delay_ms = ms.round() as u64;
    let u = rng.f64();
    let p = profile;
    if u < p.crash_rate {
        let reason = format!("mock agent crashed (seeded, crash_rate {})", p.crash_rate);
        (
            Fate::Crashed,
            DriverStep::Crash {
                delay_ms,
                reason: reason.into(),
            },
        )
    } else if u < p.crash_rate + p.timeout_rate {
        (Fate::TimedOut, DriverStep::Hang)
    } else if u < p.crash_rate + p.timeout_rate + p.failure_rate {
        let error = format!("mock failure (seeded, failure_rate {})", p.failure_rate);
        (
            Fate::Failed,
            DriverStep::Fail {
                delay_ms,
                error: error.into(),
            },
        )
    } else {
        let payload: serde_json::Value =
            serde_json::from_str(payload_json).unwrap_or(serde_json::Value::Null);
        let out = match payload.get("command").and_then(|c| c.as_str()) {
            // A command (a plan's command step, a `--tasks` command): answer like a command
            // that succeeded, saying what would have run.
            Some(cmd) => {
                let mut line = vec![cmd.to_string()];
                if let Some(args) = payload.get("args").and_then(|a| a.as_array()) {
                    line.extend(args.iter().map(|a| match a.as_str() {
                        Some(s) => s.to_string(),
                        None => a.to_string(),
                    }));
                }
                json!({
                    "exit_code": 0,
                    "stdout": format!("[mock] would run: {}\n", line.join(" ")),
                    "stderr": "",
                    "mock": true,
                    "latency_ms": delay_ms,
                })
            }
            None => json!({
                "mock": true,
                "role": role,
                "attempt": attempt,
                "latency_ms": delay_ms,
                "payload": payload,
            }),
        };
        (
            Fate::Completed,
            DriverStep::Complete {
                delay_ms,
                output_json: out.to_string().into(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(latency: Latency, failure_rate: f64) -> Profile {
        Profile {
            latency,
            failure_rate,
            timeout_rate: 0.0,
            crash_rate: 0.0,
        }
    }

    #[test]
    fn the_same_seed_and_task_give_the_same_outcome() {
        let p = profile(
            Latency::Uniform {
                min: 1.0,
                max: 100.0,
            },
            0.3,
        );
        let a = decide(7, &p, "r", b"step-1", 1, "{}");
        assert_eq!(a, decide(7, &p, "r", b"step-1", 1, "{}"));
        let others: Vec<_> = (0..20)
            .map(|s| decide(s, &p, "r", b"step-1", 1, "{}"))
            .collect();
        assert!(others.iter().any(|o| *o != a), "the seed changes outcomes");
    }

    #[test]
    fn rates_and_latencies_follow_the_profile() {
        let p = profile(
            Latency::LogNormal {
                median: 20.0,
                sigma: 1.0,
            },
            0.25,
        );
        let mut failed = 0;
        let mut lat = Vec::new();
        for i in 0..4000u32 {
            let (fate, step) = decide(1, &p, "r", &i.to_le_bytes(), 1, "{}");
            if fate == Fate::Failed {
                failed += 1;
            }
            if let DriverStep::Complete { delay_ms, .. } = step {
                lat.push(delay_ms);
            }
        }
        let rate = failed as f64 / 4000.0;
        assert!((0.22..0.28).contains(&rate), "failure rate {rate}");
        lat.sort_unstable();
        let median = lat[lat.len() / 2] as f64;
        assert!((17.0..23.0).contains(&median), "median {median}");
    }

    #[test]
    fn coins_are_uniform_and_stable() {
        let n = 10_000;
        let below = (0..n)
            .filter(|i: &u32| coin(3, "fail", &i.to_le_bytes(), 0) < 0.1)
            .count();
        assert!((850..1150).contains(&below), "{below}");
        assert_eq!(coin(3, "x", b"k", 1), coin(3, "x", b"k", 1));
        assert_ne!(coin(3, "x", b"k", 1), coin(3, "y", b"k", 1));
    }
}
