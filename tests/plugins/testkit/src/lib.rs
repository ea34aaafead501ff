//! A plugin for Hive's tests, steered by its config: it records every hook call to a file,
//! and can panic, fail or sleep in chosen hooks, answer decision hooks by rules, refuse its
//! config, fail to start, or spawn an agent from inside a hook.
//!
//! Config keys (all optional): `record` (file), `panic` / `fail` / `sleep_in` (lists of hook
//! names or `"all"`), `sleep_ms`, `delegate` and `on_failed` (lists of rules),
//! `spawn_on_completed` (a role), `refuse_config`, `fail_init`, `panic_init`, `log` (a line
//! logged through `tracing` at start).

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hive_plugin_api::{
    export_plugin, AgentEvent, AgentFailure, AgentStateChange, Delegate, DelegateRequest,
    FailureInfo, HivePlugin, Hooks, Metric, OnFailure, PluginContext, PluginError, RunEvent,
    Target, TargetRef, TaskCompletion, TaskEvent,
};
use serde_json::Value;

struct Testkit {
    ctx: PluginContext,
    cfg: Value,
    record: Option<Mutex<std::fs::File>>,
    calls: AtomicU64,
    deferred: Mutex<HashSet<u64>>,
    spawned: AtomicU64,
}

fn listed(cfg: &Value, key: &str, hook: &str) -> bool {
    match cfg.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .any(|v| v.as_str() == Some(hook) || v.as_str() == Some("all")),
        Some(Value::String(s)) => s == hook || s == "all",
        _ => false,
    }
}

impl Testkit {
    /// Every hook goes through here: record, then sleep, panic or fail as configured.
    fn hook(&self, hook: &str, detail: String) -> Result<(), PluginError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = &self.record {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "{hook} {detail}");
            }
        }
        if listed(&self.cfg, "sleep_in", hook) {
            let ms = self
                .cfg
                .get("sleep_ms")
                .and_then(Value::as_u64)
                .unwrap_or(1000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if listed(&self.cfg, "panic", hook) {
            panic!("testkit panics in {hook} as configured");
        }
        if listed(&self.cfg, "fail", hook) {
            return Err(PluginError::hook(format!(
                "testkit fails in {hook} as configured"
            )));
        }
        Ok(())
    }

    fn rules(&self, key: &str) -> Vec<Value> {
        self.cfg
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

fn target_str(t: &TargetRef<'_>) -> String {
    match t.kind {
        hive_plugin_api::TargetKind::AGENT => format!("agent:{}", t.agent),
        hive_plugin_api::TargetKind::CAPABILITY => format!("capability:{}", t.name),
        _ => format!("role:{}", t.name),
    }
}

impl HivePlugin for Testkit {
    const NAME: &'static str = "testkit";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str = "configurable test plugin";
    const HOOKS: Hooks = Hooks::ALL;

    fn new(config_json: &str, ctx: PluginContext) -> Result<Self, PluginError> {
        let cfg: Value = serde_json::from_str(config_json)
            .map_err(|e| PluginError::config(format!("config is not JSON: {e}")))?;
        if cfg
            .get("refuse_config")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err(PluginError::config(
                "`refuse_config` is set: this config is refused",
            ));
        }
        if cfg
            .get("fail_init")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err(PluginError::init(
                "cannot reach the test database (as configured)",
            ));
        }
        if cfg
            .get("panic_init")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            panic!("testkit panics while starting, as configured");
        }
        let record = match cfg.get("record").and_then(Value::as_str) {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        PluginError::config(format!("`record`: cannot open {path}: {e}"))
                    })?,
            )),
            None => None,
        };
        if let Some(line) = cfg.get("log").and_then(Value::as_str) {
            tracing::info!(answer = 42, "{line}");
        }
        Ok(Testkit {
            ctx,
            cfg,
            record,
            calls: AtomicU64::new(0),
            deferred: Mutex::new(HashSet::new()),
            spawned: AtomicU64::new(0),
        })
    }

    fn on_agent_spawned(&self, e: &AgentEvent<'_>) -> Result<(), PluginError> {
        self.hook("agent_spawned", format!("{} {}", e.agent, e.role))
    }
    fn on_agent_state_changed(&self, e: &AgentStateChange<'_>) -> Result<(), PluginError> {
        self.hook(
            "agent_state_changed",
            format!("{} {} {}", e.agent, e.from, e.to),
        )
    }
    fn on_agent_failed(&self, e: &AgentFailure<'_>) -> Result<(), PluginError> {
        self.hook("agent_failed", format!("{} {}", e.agent, e.reason))
    }
    fn on_task_submitted(&self, e: &TaskEvent<'_>) -> Result<(), PluginError> {
        self.hook(
            "task_submitted",
            format!("{} {} {}", e.task, e.name, target_str(&e.target)),
        )
    }
    fn on_task_delegated(&self, e: &TaskEvent<'_>) -> Result<(), PluginError> {
        self.hook(
            "task_delegated",
            format!("{} {} {}", e.task, e.name, e.agent),
        )
    }
    fn on_task_started(&self, e: &TaskEvent<'_>) -> Result<(), PluginError> {
        self.hook("task_started", format!("{} {} {}", e.task, e.name, e.agent))
    }
    fn on_task_completed(&self, e: &TaskCompletion<'_>) -> Result<(), PluginError> {
        let r = self.hook(
            "task_completed",
            format!("{} {} {}", e.task, e.name, e.status),
        );
        if let Some(role) = self.cfg.get("spawn_on_completed").and_then(Value::as_str) {
            if self.spawned.fetch_add(1, Ordering::Relaxed) == 0 {
                self.ctx.spawn_agent(role)?;
            }
        }
        r
    }
    fn on_performance_metric(&self, e: &Metric<'_>) -> Result<(), PluginError> {
        self.hook("performance_metric", format!("{} {}", e.name, e.value))
    }
    fn on_run_started(&self, e: &RunEvent<'_>) -> Result<(), PluginError> {
        self.hook("run_started", e.run.to_string())
    }
    fn on_run_finished(&self, e: &RunEvent<'_>) -> Result<(), PluginError> {
        self.hook("run_finished", format!("{} {}", e.run, e.state))
    }

    fn before_delegate(&self, r: &DelegateRequest<'_>) -> Result<Delegate, PluginError> {
        self.hook(
            "before_delegate",
            format!("{} {} {}", r.task, r.name, r.attempt),
        )?;
        for rule in self.rules("delegate") {
            if let Some(n) = rule.get("name").and_then(Value::as_str) {
                if n != r.name.as_str() {
                    continue;
                }
            }
            let d = match rule.get("do").and_then(Value::as_str) {
                Some("short_circuit") => Delegate::ShortCircuit {
                    output_json: rule
                        .get("output")
                        .cloned()
                        .unwrap_or(Value::Null)
                        .to_string()
                        .into(),
                },
                Some("reject") => Delegate::Reject {
                    reason: rule
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("no")
                        .into(),
                },
                Some("defer") => {
                    if !self
                        .deferred
                        .lock()
                        .map(|mut d| d.insert(r.task))
                        .unwrap_or(false)
                    {
                        continue; // once per task
                    }
                    Delegate::Defer {
                        ms: rule.get("ms").and_then(Value::as_u64).unwrap_or(100),
                    }
                }
                Some("reroute") => {
                    let role = rule.get("role").and_then(Value::as_str).unwrap_or("");
                    if r.target.name.as_str() == role {
                        continue; // already there
                    }
                    Delegate::Reroute {
                        target: Target::role(role),
                    }
                }
                Some("reroute_forever") => Delegate::Reroute {
                    target: Target::role(rule.get("role").and_then(Value::as_str).unwrap_or("")),
                },
                _ => continue,
            };
            return Ok(d);
        }
        Ok(Delegate::Continue)
    }

    fn on_task_failed(&self, f: &FailureInfo<'_>) -> Result<OnFailure, PluginError> {
        self.hook(
            "on_task_failed",
            format!("{} {} {}", f.task, f.attempt, f.error),
        )?;
        for rule in self.rules("on_failed") {
            if let Some(m) = rule.get("error_contains").and_then(Value::as_str) {
                if !f.error.as_str().contains(m) {
                    continue;
                }
            }
            return Ok(match rule.get("do").and_then(Value::as_str) {
                Some("retry_after") => OnFailure::RetryAfter {
                    ms: rule.get("ms").and_then(Value::as_u64).unwrap_or(10),
                },
                Some("give_up") => OnFailure::GiveUp,
                Some("fallback") => OnFailure::Fallback {
                    output_json: rule
                        .get("output")
                        .cloned()
                        .unwrap_or(Value::Null)
                        .to_string()
                        .into(),
                },
                _ => continue,
            });
        }
        Ok(OnFailure::Default)
    }

    fn status(&self) -> String {
        serde_json::json!({"calls": self.calls.load(Ordering::Relaxed)}).to_string()
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        self.hook("shutdown", String::new())
    }
}

export_plugin!(Testkit);
