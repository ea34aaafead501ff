//! The official `performance` plugin: HdrHistograms of latency and queue wait per role and
//! per agent (p50, p95, p99, max, mean), attempt counts by status, throughput over sliding
//! windows, a periodic JSON report written atomically to a file and the same JSON as its
//! status (which `hive health` prints as a table), and an optional benchmark submitted at
//! start. It takes over the metrics and benchmarking of the legacy
//! `performance_orchestrator.py` (`PerformancePlugin`). See docs/plugins/performance.md.

mod config;
mod report;
mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hive_plugin_api::{AgentEvent, AttemptEvent, HivePlugin, Hooks, PluginContext, PluginError};
use serde_json::{json, Value};

use crate::config::{Benchmark, Settings};
use crate::stats::{BenchProgress, Stats};
use hive_plugin_api::Ticker;

/// How long `shutdown` waits for the ticker thread.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// The report file and what happened to the last write.
#[derive(Debug, Default)]
struct Writer {
    path: Option<PathBuf>,
    written: bool,
    last_error: Option<String>,
}

/// What the hooks and the ticker share.
#[derive(Debug)]
struct Shared {
    stats: Mutex<Stats>,
    writer: Mutex<Writer>,
    /// The benchmark, until it is submitted.
    benchmark: Mutex<Option<Benchmark>>,
    bench_done: AtomicBool,
}

impl Shared {
    fn report(&self) -> Value {
        let generated_at = report::rfc3339(SystemTime::now());
        match self.stats.lock() {
            Ok(mut s) => s.report(&generated_at, Instant::now()),
            Err(_) => json!({"error": "stats lock poisoned"}),
        }
    }

    /// Writes the report file (if there is one); a failure is logged once per distinct error.
    fn write_report(&self) {
        let Ok(mut w) = self.writer.lock() else {
            return;
        };
        let Some(path) = w.path.clone() else { return };
        let text = serde_json::to_string_pretty(&self.report()).unwrap_or_default();
        match report::write_atomically(&path, &text) {
            Ok(()) => {
                w.written = true;
                w.last_error = None;
            }
            Err(e) => {
                let e = e.to_string();
                if w.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!("cannot write the report {}: {e}", path.display());
                    w.last_error = Some(e);
                }
            }
        }
    }

    /// Submits the benchmark once its role has a live agent.
    fn maybe_start_benchmark(&self, ctx: &PluginContext) {
        if self.bench_done.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut slot) = self.benchmark.lock() else {
            return;
        };
        let Some(b) = slot.as_ref() else { return };
        let health: Value = serde_json::from_str(&ctx.health_json()).unwrap_or(Value::Null);
        let agents = health["roles"][b.role.as_str()]["agents"]
            .as_u64()
            .unwrap_or(0);
        if agents == 0 {
            return;
        }
        let Some(b) = slot.take() else { return };
        self.bench_done.store(true, Ordering::Release);
        // The stats stay locked while the tasks are submitted, so that no task can end
        // before its id is known.
        let Ok(mut stats) = self.stats.lock() else {
            return;
        };
        stats.bench_start(&b.role, b.tasks, Instant::now());
        let mut submitted = 0u32;
        let mut first_error = None;
        for i in 0..b.tasks {
            let mut req = json!({
                "role": b.role,
                "payload": b.payload,
                "name": format!("benchmark-{}", i + 1),
            });
            if let (Some(t), Some(o)) = (b.timeout_s, req.as_object_mut()) {
                o.insert("timeout_s".into(), json!(t));
            }
            match ctx.submit_task(&req.to_string()) {
                Ok(id) => {
                    stats.bench_submitted(Some(id));
                    submitted += 1;
                }
                Err(e) => {
                    stats.bench_submitted(None);
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        drop(stats);
        if let Some(e) = first_error {
            tracing::warn!(
                "benchmark: {} of {} task(s) refused: {e}",
                b.tasks - submitted,
                b.tasks
            );
        }
        ctx.emit(
            "benchmark_started",
            &json!({"role": b.role, "tasks": b.tasks, "submitted": submitted}).to_string(),
        );
    }
}

/// The plugin: one instance per `[[plugins]]` entry.
pub struct Performance {
    ctx: PluginContext,
    shared: Arc<Shared>,
    ticker: Option<Ticker>,
}

impl std::fmt::Debug for Performance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Performance").finish_non_exhaustive()
    }
}

impl HivePlugin for Performance {
    const NAME: &'static str = "performance";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "latency and queue-wait histograms per role and agent, throughput, periodic JSON reports";
    const HOOKS: Hooks = Hooks::ATTEMPT_FINISHED.union(Hooks::AGENT_SPAWNED);

    fn new(config_json: &str, ctx: PluginContext) -> Result<Self, PluginError> {
        let settings = Settings::parse(config_json).map_err(PluginError::config)?;
        if let Some(dir) = settings
            .report_path
            .as_deref()
            .and_then(|p| p.parent())
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                PluginError::config(format!(
                    "report_path: cannot create the directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let shared = Arc::new(Shared {
            stats: Mutex::new(Stats::new(
                Instant::now(),
                settings.windows_s.clone(),
                settings.per_agent,
            )),
            writer: Mutex::new(Writer {
                path: settings.report_path.clone(),
                ..Writer::default()
            }),
            benchmark: Mutex::new(settings.benchmark.clone()),
            bench_done: AtomicBool::new(settings.benchmark.is_none()),
        });
        let ticker = if settings.report_path.is_some() || settings.benchmark.is_some() {
            let (ctx2, shared2) = (ctx.clone(), shared.clone());
            Some(
                Ticker::start(
                    "hive-performance-report",
                    settings.report_interval,
                    move || {
                        shared2.maybe_start_benchmark(&ctx2);
                        shared2.write_report();
                    },
                )
                .map_err(|e| PluginError::init(format!("cannot start its thread: {e}")))?,
            )
        } else {
            None
        };
        Ok(Performance {
            ctx,
            shared,
            ticker,
        })
    }

    fn on_agent_spawned(&self, e: &AgentEvent<'_>) -> Result<(), PluginError> {
        if let Ok(mut s) = self.shared.stats.lock() {
            s.agent_spawned(e.agent, e.role.as_str());
        }
        Ok(())
    }

    fn on_attempt_finished(&self, e: &AttemptEvent<'_>) -> Result<(), PluginError> {
        let progress = match self.shared.stats.lock() {
            Ok(mut s) => s.record(
                e.task,
                e.role.as_str(),
                e.agent,
                e.status.as_str(),
                e.run_ms,
                e.queue_ms,
                e.will_retry,
                Instant::now(),
            ),
            Err(_) => return Err(PluginError::hook("stats lock poisoned")),
        };
        if let BenchProgress::Finished(summary) = progress {
            self.ctx.emit("benchmark_finished", &summary.to_string());
        }
        Ok(())
    }

    fn status(&self) -> String {
        self.shared.report().to_string()
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        if let Some(t) = &self.ticker {
            if !t.stop(STOP_BOUND) {
                tracing::warn!("the report thread did not stop within {STOP_BOUND:?}");
            }
        }
        // The last report: always once one was written or anything was recorded (a
        // `hive plugins list` that merely loads the plugin leaves an earlier report alone).
        let written = self
            .shared
            .writer
            .lock()
            .map(|w| w.written)
            .unwrap_or(false);
        let any = self.shared.stats.lock().map(|s| s.any()).unwrap_or(false);
        if written || any {
            self.shared.write_report();
        }
        Ok(())
    }
}
