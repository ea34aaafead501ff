//! The figures: per role, per agent and for everything, HdrHistograms of latency (the run
//! time of attempts) and queue wait (microseconds, two significant digits), attempt counts by
//! status, and attempts finished per second in a ring of per-second counters, from which
//! throughput over each window is read. `Stats::report` turns them into the report JSON.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// The report's schema name (`hive health` finds the plugin's status by it).
pub(crate) const SCHEMA: &str = "hive-performance/1";

/// A histogram of microseconds from 1 µs to one hour, two significant digits (a value is
/// off by at most 1%; larger values are clamped to one hour).
fn histogram() -> Histogram<u64> {
    // Not reachable by input: hdrhistogram refuses only bad bounds, and these are constant.
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("constant histogram bounds are valid")
}

fn micros(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        ((ms * 1e3) as u64).max(1)
    } else {
        1
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Attempts finished per second over the last `len - 1` seconds.
#[derive(Debug, Clone)]
struct Ring {
    counts: Vec<u64>,
    /// The second (since the plugin started) the ring was last advanced to.
    last: u64,
}

impl Ring {
    fn new(max_window_s: u64) -> Self {
        Ring {
            counts: vec![0; max_window_s as usize + 1],
            last: 0,
        }
    }

    fn slot(&self, sec: u64) -> usize {
        (sec % self.counts.len() as u64) as usize
    }

    fn advance(&mut self, sec: u64) {
        if sec <= self.last {
            return;
        }
        let gap = (sec - self.last).min(self.counts.len() as u64);
        for i in 1..=gap {
            let s = self.slot(self.last + i);
            self.counts[s] = 0;
        }
        self.last = sec;
    }

    fn record(&mut self, at: Duration) {
        let sec = at.as_secs();
        self.advance(sec);
        if sec + (self.counts.len() as u64) > self.last {
            let s = self.slot(sec);
            self.counts[s] += 1;
        }
    }

    /// Attempts per second over the last `w` seconds at `at` (the partial current second
    /// counts, and the part of the oldest second still in the window counts pro rata),
    /// over at most the time since the start.
    fn rate(&mut self, w: u64, at: Duration) -> f64 {
        let sec = at.as_secs();
        self.advance(sec);
        let frac = f64::from(at.subsec_nanos()) / 1e9;
        let mut sum = 0.0;
        for k in 0..w.min(sec + 1) {
            sum += self.counts[self.slot(sec - k)] as f64;
        }
        if sec >= w {
            sum += (1.0 - frac) * self.counts[self.slot(sec - w)] as f64;
        }
        let covered = (w as f64).min(at.as_secs_f64());
        if covered > 0.0 {
            sum / covered
        } else {
            0.0
        }
    }
}

/// The figures of one role, one agent, or everything.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The role, for an agent's entry.
    role: Option<String>,
    attempts: u64,
    by_status: [u64; 5],
    latency: Histogram<u64>,
    queue: Histogram<u64>,
    ring: Ring,
}

const STATUSES: [&str; 5] = [
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "agent_lost",
];

impl Entry {
    fn new(role: Option<String>, max_window_s: u64) -> Self {
        Entry {
            role,
            attempts: 0,
            by_status: [0; 5],
            latency: histogram(),
            queue: histogram(),
            ring: Ring::new(max_window_s),
        }
    }

    fn record(&mut self, status: &str, run_us: u64, queue_us: u64, at: Duration) {
        self.attempts += 1;
        // An unknown status counts as failed.
        let i = STATUSES.iter().position(|s| *s == status).unwrap_or(1);
        self.by_status[i] += 1;
        self.latency.saturating_record(run_us);
        self.queue.saturating_record(queue_us);
        self.ring.record(at);
    }

    fn quantiles(h: &Histogram<u64>) -> Value {
        if h.is_empty() {
            return json!({"count": 0, "p50": null, "p95": null, "p99": null, "max": null, "mean": null});
        }
        let ms = |us: u64| round(us as f64 / 1e3);
        json!({
            "count": h.len(),
            "p50": ms(h.value_at_quantile(0.50)),
            "p95": ms(h.value_at_quantile(0.95)),
            "p99": ms(h.value_at_quantile(0.99)),
            "max": ms(h.max()),
            "mean": round(h.mean() / 1e3),
        })
    }

    fn json(&mut self, windows_s: &[u64], at: Duration) -> Value {
        let mut o = Map::new();
        if let Some(r) = &self.role {
            o.insert("role".into(), json!(r));
        }
        o.insert("attempts".into(), json!(self.attempts));
        for (name, n) in STATUSES.iter().zip(self.by_status) {
            o.insert((*name).into(), json!(n));
        }
        o.insert("latency_ms".into(), Self::quantiles(&self.latency));
        o.insert("queue_wait_ms".into(), Self::quantiles(&self.queue));
        let mut t = Map::new();
        for w in windows_s {
            t.insert(format!("{w}s"), json!(round(self.ring.rate(*w, at))));
        }
        let secs = at.as_secs_f64();
        let overall = if secs > 0.0 {
            self.attempts as f64 / secs
        } else {
            0.0
        };
        t.insert("overall".into(), json!(round(overall)));
        o.insert("throughput_per_s".into(), Value::Object(t));
        Value::Object(o)
    }
}

/// The benchmark's progress.
#[derive(Debug, Clone, Default)]
struct Bench {
    role: String,
    tasks: u32,
    ids: HashSet<u64>,
    submitted_at: Option<Duration>,
    submitted: u64,
    refused: u64,
    completed: u64,
    succeeded: u64,
    last_end: Option<Duration>,
}

/// What one finished attempt of a benchmark task means.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BenchProgress {
    /// Not a benchmark task, or not its last attempt.
    None,
    /// The benchmark's last task ended: its summary.
    Finished(Value),
}

/// Every figure of the plugin.
#[derive(Debug)]
pub(crate) struct Stats {
    start: Instant,
    windows_s: Vec<u64>,
    max_window_s: u64,
    per_agent: bool,
    all: Entry,
    roles: BTreeMap<String, Entry>,
    agents: HashMap<u64, Entry>,
    bench: Option<Bench>,
}

impl Stats {
    /// Empty figures, their clock starting at `start`.
    pub(crate) fn new(start: Instant, windows_s: Vec<u64>, per_agent: bool) -> Self {
        let max_window_s = windows_s.iter().copied().max().unwrap_or(1);
        Stats {
            start,
            all: Entry::new(None, max_window_s),
            windows_s,
            max_window_s,
            per_agent,
            roles: BTreeMap::new(),
            agents: HashMap::new(),
            bench: None,
        }
    }

    /// Whether any attempt was recorded.
    pub(crate) fn any(&self) -> bool {
        self.all.attempts > 0
    }

    /// An agent appeared: its role (and the agent) get an entry, so that they show before
    /// their first attempt.
    pub(crate) fn agent_spawned(&mut self, agent: u64, role: &str) {
        let w = self.max_window_s;
        if !self.roles.contains_key(role) {
            self.roles.insert(role.to_string(), Entry::new(None, w));
        }
        if self.per_agent {
            self.agents
                .entry(agent)
                .or_insert_with(|| Entry::new(Some(role.to_string()), w));
        }
    }

    /// One attempt finished.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        task: u64,
        role: &str,
        agent: u64,
        status: &str,
        run_ms: f64,
        queue_ms: f64,
        will_retry: bool,
        now: Instant,
    ) -> BenchProgress {
        let at = now.saturating_duration_since(self.start);
        let (run, queue) = (micros(run_ms), micros(queue_ms));
        let w = self.max_window_s;
        self.all.record(status, run, queue, at);
        match self.roles.get_mut(role) {
            Some(e) => e.record(status, run, queue, at),
            None => {
                let mut e = Entry::new(None, w);
                e.record(status, run, queue, at);
                self.roles.insert(role.to_string(), e);
            }
        }
        if self.per_agent {
            self.agents
                .entry(agent)
                .or_insert_with(|| Entry::new(Some(role.to_string()), w))
                .record(status, run, queue, at);
        }
        let Some(b) = self.bench.as_mut().filter(|_| !will_retry) else {
            return BenchProgress::None;
        };
        if !b.ids.remove(&task) {
            return BenchProgress::None;
        }
        b.completed += 1;
        if status == "succeeded" {
            b.succeeded += 1;
        }
        b.last_end = Some(at);
        if b.ids.is_empty() && b.completed == b.submitted {
            return BenchProgress::Finished(Self::bench_json(b));
        }
        BenchProgress::None
    }

    /// The benchmark is about to be submitted.
    pub(crate) fn bench_start(&mut self, role: &str, tasks: u32, now: Instant) {
        self.bench = Some(Bench {
            role: role.to_string(),
            tasks,
            submitted_at: Some(now.saturating_duration_since(self.start)),
            ..Bench::default()
        });
    }

    /// One benchmark task was submitted (`Some(id)`) or refused (`None`).
    pub(crate) fn bench_submitted(&mut self, id: Option<u64>) {
        if let Some(b) = &mut self.bench {
            match id {
                Some(id) => {
                    b.ids.insert(id);
                    b.submitted += 1;
                }
                None => b.refused += 1,
            }
        }
    }

    fn bench_json(b: &Bench) -> Value {
        let elapsed = match (b.submitted_at, b.last_end) {
            (Some(s), Some(e)) => Some(e.saturating_sub(s).as_secs_f64()),
            _ => None,
        };
        json!({
            "role": b.role,
            "tasks": b.tasks,
            "submitted": b.submitted,
            "refused": b.refused,
            "completed": b.completed,
            "succeeded": b.succeeded,
            "elapsed_s": elapsed.map(round),
            "throughput_per_s": elapsed.filter(|e| *e > 0.0).map(|e| round(b.completed as f64 / e)),
        })
    }

    /// The report: `schema`, `generated_at` (given), `uptime_s`, `windows_s`, `all`, `roles`,
    /// `agents` (when kept per agent) and `benchmark` (when one runs).
    pub(crate) fn report(&mut self, generated_at: &str, now: Instant) -> Value {
        let at = now.saturating_duration_since(self.start);
        let windows = self.windows_s.clone();
        let roles: Map<String, Value> = self
            .roles
            .iter_mut()
            .map(|(name, e)| (name.clone(), e.json(&windows, at)))
            .collect();
        let mut report = json!({
            "schema": SCHEMA,
            "generated_at": generated_at,
            "uptime_s": round(at.as_secs_f64()),
            "windows_s": windows,
            "all": self.all.json(&windows, at),
            "roles": roles,
        });
        if let Some(o) = report.as_object_mut() {
            if self.per_agent {
                let mut ids: Vec<u64> = self.agents.keys().copied().collect();
                ids.sort_unstable();
                let mut agents = Map::new();
                for id in ids {
                    if let Some(e) = self.agents.get_mut(&id) {
                        agents.insert(id.to_string(), e.json(&windows, at));
                    }
                }
                o.insert("agents".into(), Value::Object(agents));
            }
            if let Some(b) = &self.bench {
                o.insert("benchmark".into(), Self::bench_json(b));
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_rates_over_windows() {
        let mut r = Ring::new(10);
        for i in 0..20 {
            // 10 per second for 2 s.
            r.record(Duration::from_millis(i * 100));
        }
        let at = Duration::from_millis(2000);
        assert!((r.rate(1, at) - 10.0).abs() < 1e-9, "{}", r.rate(1, at));
        assert!((r.rate(10, at) - 10.0).abs() < 1e-9, "{}", r.rate(10, at));
        // After 5 quiet seconds, the 1 s window is empty and the 10 s one is diluted.
        let at = Duration::from_millis(7000);
        assert_eq!(r.rate(1, at), 0.0);
        assert!((r.rate(10, at) - 20.0 / 7.0).abs() < 1e-9);
        // Past the ring, everything is forgotten.
        assert_eq!(r.rate(10, Duration::from_secs(40)), 0.0);
        r.record(Duration::from_millis(40_500));
        assert!((r.rate(1, Duration::from_millis(40_600)) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_report_has_every_figure() {
        let t0 = Instant::now();
        let mut s = Stats::new(t0, vec![1, 10], true);
        s.agent_spawned(3, "idle-role");
        for i in 0..100u64 {
            let status = if i % 10 == 0 { "failed" } else { "succeeded" };
            s.record(
                i,
                "work",
                1 + i % 2,
                status,
                (i + 1) as f64,
                0.5,
                false,
                t0 + Duration::from_millis(5 * i),
            );
        }
        let r = s.report("2024-01-01T00:00:00.000Z", t0 + Duration::from_millis(1000));
        assert_eq!(r["schema"], SCHEMA);
        assert_eq!(r["uptime_s"], 1.0);
        let w = &r["roles"]["work"];
        assert_eq!(w["attempts"], 100);
        assert_eq!(w["succeeded"], 90);
        assert_eq!(w["failed"], 10);
        let p50 = w["latency_ms"]["p50"].as_f64().expect("p50");
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        let p99 = w["latency_ms"]["p99"].as_f64().expect("p99");
        assert!((98.0..=100.5).contains(&p99), "{p99}");
        assert_eq!(w["latency_ms"]["count"], 100);
        assert!(w["queue_wait_ms"]["max"]
            .as_f64()
            .is_some_and(|m| m <= 0.51));
        assert_eq!(w["throughput_per_s"]["overall"], 100.0);
        assert_eq!(r["all"]["attempts"], 100);
        assert_eq!(r["roles"]["idle-role"]["attempts"], 0);
        assert_eq!(r["roles"]["idle-role"]["latency_ms"]["p50"], Value::Null);
        assert_eq!(r["agents"]["1"]["attempts"], 50);
        assert_eq!(r["agents"]["2"]["role"], "work");
        assert_eq!(r["agents"]["3"]["attempts"], 0);
        assert!(r.get("benchmark").is_none());
    }

    #[test]
    fn the_benchmark_finishes_with_its_last_task() {
        let t0 = Instant::now();
        let mut s = Stats::new(t0, vec![1], false);
        s.bench_start("work", 2, t0);
        s.bench_submitted(Some(10));
        s.bench_submitted(Some(11));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            s.record(10, "work", 1, "failed", 1.0, 1.0, true, at(100)),
            BenchProgress::None,
            "a retried attempt is not the end"
        );
        assert_eq!(
            s.record(10, "work", 1, "succeeded", 1.0, 1.0, false, at(200)),
            BenchProgress::None
        );
        assert_eq!(
            s.record(99, "work", 1, "succeeded", 1.0, 1.0, false, at(300)),
            BenchProgress::None
        );
        match s.record(11, "work", 1, "succeeded", 1.0, 1.0, false, at(500)) {
            BenchProgress::Finished(v) => {
                assert_eq!(v["completed"], 2);
                assert_eq!(v["succeeded"], 2);
                assert_eq!(v["elapsed_s"], 0.5);
                assert_eq!(v["throughput_per_s"], 4.0);
            }
            other => panic!("{other:?}"),
        }
        assert!(s.report("x", at(600)).get("agents").is_none());
    }
}
