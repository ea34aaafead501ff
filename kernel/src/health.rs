//! The health report: agents by state, per-role queues, outcomes and latency, uptime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::agent::AgentInfo;
use crate::ids::Timestamp;
use crate::kernel::{Kernel, RoleState};
use crate::task::Status;

const SHARDS: usize = 8;

/// One shard of a role's statistics; each thread records into its own shard, so workers on
/// different threads never contend.
#[derive(Default)]
struct Shard {
    succeeded: u64,
    failed: u64,
    timed_out: u64,
    cancelled: u64,
    latency: Option<Histogram<u64>>,
    wait: Option<Histogram<u64>>,
}

/// Per-role counters and latency histograms (microseconds).
pub(crate) struct RoleStats {
    pub(crate) submitted: AtomicU64,
    shards: [Mutex<Shard>; SHARDS],
}

fn shard_index() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Ordering::Relaxed) as usize % SHARDS);
        }
        i.get()
    })
}

fn hist() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).ok()
}

impl RoleStats {
    pub(crate) fn new() -> Self {
        RoleStats {
            submitted: AtomicU64::new(0),
            shards: Default::default(),
        }
    }

    pub(crate) fn record(&self, status: Status, run: Option<Duration>, wait: Option<Duration>) {
        let mut s = self.shards[shard_index()].lock();
        match status {
            Status::Succeeded | Status::Cached => s.succeeded += 1,
            Status::TimedOut => s.timed_out += 1,
            Status::Cancelled | Status::Skipped => s.cancelled += 1,
            _ => s.failed += 1,
        }
        let Shard {
            latency, wait: w, ..
        } = &mut *s;
        for (h, d) in [(latency, run), (w, wait)] {
            if let Some(d) = d {
                if h.is_none() {
                    *h = hist();
                }
                if let Some(h) = h.as_mut() {
                    h.saturating_record((d.as_micros() as u64).max(1));
                }
            }
        }
    }

    /// Counters and merged histograms of all shards.
    fn merged(&self) -> (Shard, Quantiles, Quantiles) {
        let mut total = Shard::default();
        let mut lat = hist();
        let mut wait = hist();
        for sh in &self.shards {
            let s = sh.lock();
            total.succeeded += s.succeeded;
            total.failed += s.failed;
            total.timed_out += s.timed_out;
            total.cancelled += s.cancelled;
            for (into, from) in [(&mut lat, &s.latency), (&mut wait, &s.wait)] {
                if let (Some(into), Some(from)) = (into.as_mut(), from.as_ref()) {
                    let _ = into.add(from);
                }
            }
        }
        (
            total,
            Self::quantiles(lat.as_ref()),
            Self::quantiles(wait.as_ref()),
        )
    }

    fn quantiles(h: Option<&Histogram<u64>>) -> Quantiles {
        match h {
            Some(h) if !h.is_empty() => Quantiles {
                count: h.len(),
                p50_ms: h.value_at_quantile(0.50) as f64 / 1e3,
                p95_ms: h.value_at_quantile(0.95) as f64 / 1e3,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
                max_ms: h.max() as f64 / 1e3,
            },
            _ => Quantiles::default(),
        }
    }
}

/// Latency quantiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// One role's (or capability's) queue and outcomes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleHealth {
    /// Live agents.
    pub agents: usize,
    /// Tasks in flight on them.
    pub in_flight: u64,
    /// Their capacity summed.
    pub capacity: u64,
    /// Tasks waiting (shared queue and agents' own queues).
    pub queue_depth: usize,
    /// Queue bound.
    pub queue_capacity: usize,
    /// The longest wait among waiting tasks, in milliseconds.
    pub oldest_wait_ms: f64,
    /// Tasks submitted.
    pub submitted: u64,
    /// Tasks succeeded.
    pub succeeded: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks timed out.
    pub timed_out: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Run time of the last attempt of ended tasks.
    pub latency: Quantiles,
    /// Time from submit to first start.
    pub queue_wait: Quantiles,
}

/// Agent counts by state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentCounts {
    /// Starting.
    pub starting: usize,
    /// Ready.
    pub ready: usize,
    /// Busy.
    pub busy: usize,
    /// Draining.
    pub draining: usize,
    /// Stopped (recently).
    pub stopped: usize,
    /// Failed (recently).
    pub failed: usize,
}

/// The whole report: same data in the CLI and over the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// `ok`, or `degraded` when a role has work but no live agent or an agent failed.
    pub status: String,
    /// When the kernel started.
    pub started_at: Timestamp,
    /// Seconds since.
    pub uptime_s: f64,
    /// Agents by state.
    pub agents: AgentCounts,
    /// Per role.
    pub roles: BTreeMap<String, RoleHealth>,
    /// Per capability.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, RoleHealth>,
    /// Tasks not yet ended.
    pub tasks_open: usize,
    /// Tasks ended.
    pub tasks_completed: u64,
    /// Events emitted on the bus.
    pub events_emitted: u64,
    /// Events lost by slow subscribers.
    pub events_lagged: u64,
    /// Every agent.
    pub agent_list: Vec<AgentInfo>,
    /// Every plugin, in config order.
    #[serde(default)]
    pub plugins: Vec<crate::plugin::PluginHealth>,
}

fn role_health(r: &RoleState) -> RoleHealth {
    let agents = r.agents.read();
    let (mut depth, mut oldest) = r.queue.depth_and_oldest();
    let mut in_flight = 0u64;
    let mut capacity = 0u64;
    for a in agents.iter() {
        let (d, o) = a.direct().depth_and_oldest();
        depth += d;
        oldest = oldest.max(o);
        in_flight += a.busy() as u64;
        capacity += a.capacity as u64;
    }
    let (s, latency, queue_wait) = r.stats.merged();
    RoleHealth {
        agents: agents.len(),
        in_flight,
        capacity,
        queue_depth: depth,
        queue_capacity: r.capacity,
        oldest_wait_ms: oldest.as_secs_f64() * 1e3,
        submitted: r.stats.submitted.load(Ordering::Relaxed),
        succeeded: s.succeeded,
        failed: s.failed,
        timed_out: s.timed_out,
        cancelled: s.cancelled,
        latency,
        queue_wait,
    }
}

impl Kernel {
    /// The health report, now.
    pub fn health(&self) -> HealthReport {
        let k = self.inner();
        let agent_list = self.agents();
        let mut counts = AgentCounts::default();
        for a in &agent_list {
            *match a.state.name() {
                "starting" => &mut counts.starting,
                "ready" => &mut counts.ready,
                "busy" => &mut counts.busy,
                "draining" => &mut counts.draining,
                "stopped" => &mut counts.stopped,
                _ => &mut counts.failed,
            } += 1;
        }
        let roles: BTreeMap<String, RoleHealth> = k
            .roles
            .iter()
            .map(|r| (r.name.to_string(), role_health(&r)))
            .collect();
        let capabilities = k
            .caps
            .iter()
            .map(|r| (r.name.to_string(), role_health(&r)))
            .collect();
        let starved = roles.values().any(|r| r.agents == 0 && r.queue_depth > 0);
        let plugins = k.plugins.get().map(|p| p.health()).unwrap_or_default();
        let plugin_trouble = plugins.iter().any(|p| p.state != "loaded");
        HealthReport {
            status: if starved || counts.failed > 0 || plugin_trouble {
                "degraded".into()
            } else {
                "ok".into()
            },
            started_at: k.started_at,
            uptime_s: k.epoch.elapsed().as_secs_f64(),
            agents: counts,
            roles,
            capabilities,
            tasks_open: k.tasks.len(),
            tasks_completed: k.completed.load(Ordering::Relaxed),
            events_emitted: k.bus.emitted(),
            events_lagged: k.bus.lagged(),
            agent_list,
            plugins,
        }
    }
}
