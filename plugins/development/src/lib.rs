//! The official `development` plugin: what the legacy DevelopmentOrchestrator offered for
//! trying things out, done through the plugin API. A debug trace of every event; a `mock`
//! agent driver (agents with seeded latency, failure, timeout and crash rates: the same seed
//! gives the same run); fault injection on any driver (fail a share of a role's tasks, delay
//! them, kill the agent that takes the Nth task); and the sandbox behind
//! `hive run PLAN --dry-run`. See docs/plugins/development.md.

mod config;
mod mock;
mod trace;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_plugin_api::{
    AgentEvent, AgentFailure, AgentStateChange, AttemptEvent, Delegate, DelegateRequest,
    DriverRequest, DriverStep, HivePlugin, Hooks, Metric, PluginContext, PluginError, RunEvent,
    TargetKind, TaskCompletion, TaskEvent, Ticker,
};
use serde_json::{json, Value};

use config::{Config, FaultRule, Profiles};
use mock::Fate;
use trace::Trace;

/// The name of the driver this plugin contributes.
pub const MOCK_DRIVER: &str = "mock";

/// Counters of one fault rule.
#[derive(Debug, Default)]
struct FaultStats {
    seen: AtomicU64,
    failed: AtomicU64,
    delayed: AtomicU64,
    killed: AtomicU64,
}

/// Counters of the mock driver.
#[derive(Debug, Default)]
struct MockStats {
    attempts: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    crashed: AtomicU64,
}

/// The plugin.
#[derive(Debug)]
pub struct Development {
    ctx: PluginContext,
    seed: u64,
    mock_enabled: bool,
    profiles: Profiles,
    faults: Vec<(FaultRule, FaultStats)>,
    /// Tasks deferred once by a delay rule (the next time they come, they go).
    delayed: Mutex<HashSet<u64>>,
    trace: Option<Arc<Trace>>,
    mock: MockStats,
    flusher: Option<Ticker>,
    shut: AtomicBool,
}

impl Development {
    fn trace(&self, event: &str, fields: Value) -> Result<(), PluginError> {
        if let Some(t) = &self.trace {
            t.write(event, fields);
        }
        Ok(())
    }

    fn role_of<'a>(r: &DelegateRequest<'a>) -> &'a str {
        if r.target.kind == TargetKind::ROLE {
            r.target.name.as_str()
        } else {
            ""
        }
    }
}

fn target_json(kind: TargetKind, name: &str, agent: u64) -> Value {
    match kind {
        TargetKind::ROLE => json!({"role": name}),
        TargetKind::CAPABILITY => json!({"capability": name}),
        _ => json!({"agent": agent}),
    }
}

fn task_json(e: &TaskEvent<'_>) -> Value {
    json!({
        "task": e.task,
        "name": e.name.as_str(),
        "target": target_json(e.target.kind, e.target.name.as_str(), e.target.agent),
        "agent": e.agent,
        "attempt": e.attempt,
        "priority": e.priority,
    })
}

impl HivePlugin for Development {
    const NAME: &'static str = "development";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "debug trace, seeded mock agents (driver `mock`), fault injection, dry runs";
    const HOOKS: Hooks = Hooks(Hooks::OBSERVERS.0 & Hooks::ALL.0 | Hooks::BEFORE_DELEGATE.0);

    fn new(config_json: &str, ctx: PluginContext) -> Result<Self, PluginError> {
        let (cfg, profiles) = Config::parse(config_json).map_err(PluginError::config)?;
        let trace = if cfg.trace.enabled {
            Some(Arc::new(
                Trace::open(cfg.trace.path.as_deref()).map_err(PluginError::config)?,
            ))
        } else {
            None
        };
        let flusher = match &trace {
            Some(t) => {
                let t = t.clone();
                Some(
                    Ticker::start(
                        "hive-development-trace",
                        Duration::from_millis(100),
                        move || t.flush(),
                    )
                    .map_err(|e| {
                        PluginError::init(format!("cannot start the trace flusher: {e}"))
                    })?,
                )
            }
            None => None,
        };
        let faults = cfg
            .faults
            .into_iter()
            .map(|f| (f, FaultStats::default()))
            .collect();
        Ok(Development {
            ctx,
            seed: cfg.seed,
            mock_enabled: cfg.mock.enabled,
            profiles,
            faults,
            delayed: Mutex::new(HashSet::new()),
            trace,
            mock: MockStats::default(),
            flusher,
            shut: AtomicBool::new(false),
        })
    }

    fn hooks(&self) -> Hooks {
        let mut h = Hooks::NONE;
        if self.trace.is_some() {
            h = h | Hooks(Hooks::OBSERVERS.0 & Hooks::ALL.0);
        }
        if !self.faults.is_empty() {
            h = h | Hooks::BEFORE_DELEGATE;
        }
        h
    }

    fn drivers(&self) -> Vec<String> {
        if self.mock_enabled {
            vec![MOCK_DRIVER.to_string()]
        } else {
            Vec::new()
        }
    }

    fn driver_execute(&self, r: &DriverRequest<'_>) -> Result<DriverStep, PluginError> {
        if r.driver.as_str() != MOCK_DRIVER {
            return Err(PluginError::hook(format!(
                "no driver named `{}` here",
                r.driver
            )));
        }
        let role = r.role.as_str();
        let key = mock::task_key(r.name.as_str(), r.task, r.payload_json.as_str());
        let (fate, step) = mock::decide(
            self.seed,
            self.profiles.of(role),
            role,
            &key,
            r.attempt,
            r.payload_json.as_str(),
        );
        self.mock.attempts.fetch_add(1, Ordering::Relaxed);
        match fate {
            Fate::Completed => &self.mock.completed,
            Fate::Failed => &self.mock.failed,
            Fate::TimedOut => &self.mock.timed_out,
            Fate::Crashed => &self.mock.crashed,
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(step)
    }

    fn before_delegate(&self, r: &DelegateRequest<'_>) -> Result<Delegate, PluginError> {
        let role = Self::role_of(r);
        let applies = |rule: &FaultRule| rule.role.as_deref().is_none_or(|want| want == role);
        // Hashed on first use only: most tasks match no rule that draws.
        let key = std::cell::OnceCell::new();
        let key = || {
            *key.get_or_init(|| mock::task_key(r.name.as_str(), r.task, r.payload_json.as_str()))
        };
        // Failures and delays first: a task they stop does not count as taken.
        for (rule, stats) in self.faults.iter().filter(|(rule, _)| applies(rule)) {
            // Per task, not per attempt: `fail_rate` is the share of the role's tasks.
            if rule.fail_rate > 0.0 && mock::coin(self.seed, "fail", &key(), 0) < rule.fail_rate {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                return Ok(Delegate::Reject {
                    reason: format!(
                        "fault injected by the development plugin (fail_rate {} of role `{role}`)",
                        rule.fail_rate
                    )
                    .into(),
                });
            }
            if rule.delay_ms > 0 && mock::coin(self.seed, "delay", &key(), 0) < rule.delay_rate {
                let mut delayed = self
                    .delayed
                    .lock()
                    .map_err(|_| PluginError::hook("the delay set is poisoned"))?;
                if !delayed.remove(&r.task) {
                    delayed.insert(r.task);
                    stats.delayed.fetch_add(1, Ordering::Relaxed);
                    return Ok(Delegate::Defer { ms: rule.delay_ms });
                }
                // Delayed once already: it goes now.
            }
        }
        // The task goes to `r.agent`: count it, and kill that agent if it is the Nth.
        for (rule, stats) in self.faults.iter().filter(|(rule, _)| applies(rule)) {
            let n = stats.seen.fetch_add(1, Ordering::Relaxed) + 1;
            if rule.kill_after_tasks == Some(n) {
                stats.killed.fetch_add(1, Ordering::Relaxed);
                let why = format!(
                    "fault injection: kill the agent that takes task #{n} of role `{role}`"
                );
                tracing::warn!("{why} (agent {}, task {})", r.agent, r.task);
                self.ctx.kill_agent(r.agent, &why)?;
                self.ctx.emit(
                    "fault_injected",
                    &json!({"fault": "kill_agent", "role": role, "agent": r.agent, "task": r.task, "nth": n})
                        .to_string(),
                );
            }
        }
        Ok(Delegate::Continue)
    }

    fn on_agent_spawned(&self, e: &AgentEvent<'_>) -> Result<(), PluginError> {
        self.trace(
            "agent_spawned",
            json!({"agent": e.agent, "role": e.role.as_str(), "driver": e.driver.as_str(), "capacity": e.capacity}),
        )
    }
    fn on_agent_state_changed(&self, e: &AgentStateChange<'_>) -> Result<(), PluginError> {
        self.trace(
            "agent_state_changed",
            json!({"agent": e.agent, "role": e.role.as_str(), "from": e.from.as_str(), "to": e.to.as_str()}),
        )
    }
    fn on_agent_failed(&self, e: &AgentFailure<'_>) -> Result<(), PluginError> {
        self.trace(
            "agent_failed",
            json!({"agent": e.agent, "role": e.role.as_str(), "reason": e.reason.as_str(), "in_flight": e.in_flight}),
        )
    }
    fn on_task_submitted(&self, e: &TaskEvent<'_>) -> Result<(), PluginError> {
        self.trace("task_submitted", task_json(e))
    }
    fn on_task_delegated(&self, e: &TaskEvent<'_>) -> Result<(), PluginError> {
        self.trace("task_delegated", task_json(e))
    }
    fn on_task_started(&self, e: &TaskEvent<'_>) -> Result<(), PluginError> {
        self.trace("task_started", task_json(e))
    }
    fn on_attempt_finished(&self, e: &AttemptEvent<'_>) -> Result<(), PluginError> {
        self.trace(
            "attempt_finished",
            json!({
                "task": e.task, "name": e.name.as_str(), "role": e.role.as_str(), "agent": e.agent,
                "attempt": e.attempt, "status": e.status.as_str(), "queue_ms": e.queue_ms,
                "run_ms": e.run_ms, "error": e.error.as_str(), "will_retry": e.will_retry,
            }),
        )
    }
    fn on_task_completed(&self, e: &TaskCompletion<'_>) -> Result<(), PluginError> {
        self.trace(
            "task_completed",
            json!({
                "task": e.task, "name": e.name.as_str(), "status": e.status.as_str(),
                "attempts": e.attempts, "agent": e.agent, "duration_ms": e.duration_ms,
                "error": e.error.as_str(),
            }),
        )
    }
    fn on_performance_metric(&self, e: &Metric<'_>) -> Result<(), PluginError> {
        self.trace(
            "performance_metric",
            json!({"agent": e.agent, "task": e.task, "source": e.source.as_str(), "name": e.name.as_str(), "value": e.value}),
        )
    }
    fn on_run_started(&self, e: &RunEvent<'_>) -> Result<(), PluginError> {
        self.trace(
            "run_started",
            json!({"run": e.run.as_str(), "plan": e.plan.as_str(), "state": e.state.as_str()}),
        )
    }
    fn on_run_finished(&self, e: &RunEvent<'_>) -> Result<(), PluginError> {
        self.trace(
            "run_finished",
            json!({"run": e.run.as_str(), "plan": e.plan.as_str(), "state": e.state.as_str()}),
        )
    }

    fn status(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "seed": self.seed,
            "trace": match &self.trace {
                Some(t) => json!({"enabled": true, "to": t.target, "lines": n(&t.lines), "write_errors": n(&t.write_errors)}),
                None => json!({"enabled": false}),
            },
            "mock": {
                "enabled": self.mock_enabled,
                "attempts": n(&self.mock.attempts),
                "completed": n(&self.mock.completed),
                "failed": n(&self.mock.failed),
                "timed_out": n(&self.mock.timed_out),
                "crashed": n(&self.mock.crashed),
            },
            "faults": self.faults.iter().map(|(r, s)| json!({
                "role": r.role,
                "fail_rate": r.fail_rate,
                "delay_ms": r.delay_ms,
                "kill_after_tasks": r.kill_after_tasks,
                "seen": n(&s.seen),
                "failed": n(&s.failed),
                "delayed": n(&s.delayed),
                "killed": n(&s.killed),
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        if self.shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(f) = &self.flusher {
            f.stop(Duration::from_secs(1));
        }
        if let Some(t) = &self.trace {
            t.flush();
        }
        Ok(())
    }
}
