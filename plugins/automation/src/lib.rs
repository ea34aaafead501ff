//! The official `automation` plugin: circuit breakers per agent and per role (closed, open,
//! half-open) that reroute or defer work headed for failing agents, self-healing restarts of
//! crashed agents with exponential backoff and an OTP-style restart intensity, and
//! error-pattern rules (a regex on a failed attempt's error: retry after a delay, retry on
//! another agent, or give up). It takes over the `AutomationPlugin` of the legacy
//! `automated_orchestrator.py`. See docs/plugins/automation.md for the config, hooks, events
//! and status.

mod breaker;
mod config;
mod engine;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hive_plugin_api::{
    AgentEvent, AgentFailure, AgentStateChange, AttemptEvent, Delegate, DelegateRequest,
    FailureInfo, HivePlugin, Hooks, LogLevel, OnFailure, PluginContext, PluginError, Ticker,
};

pub use config::{Action, BreakerSettings, HealingSettings, Rule, Settings};
use engine::{Effect, Engine, TargetView};

/// How often the ticker half-opens breakers and runs due restarts.
const TICK: Duration = Duration::from_millis(20);
/// How long `shutdown` waits for the ticker thread.
const JOIN_WITHIN: Duration = Duration::from_secs(2);

/// The clock: milliseconds since the plugin started (monotonic), and Unix milliseconds.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    fn unix_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Tells the kernel what the engine decided to say.
fn apply(ctx: &PluginContext, fx: Vec<Effect>) {
    for e in fx {
        match e {
            Effect::Emit(name, data) => ctx.emit(name, &data.to_string()),
            Effect::Log(level, msg) => ctx.log(level, &msg),
            Effect::Metric(name, value) => ctx.metric(name, value),
        }
    }
}

/// The plugin: one instance per `[[plugins]]` entry.
#[derive(Debug)]
pub struct Automation {
    ctx: PluginContext,
    engine: Arc<Engine>,
    clock: Clock,
    ticker: Mutex<Option<Ticker>>,
}

fn start_ticker(
    ctx: PluginContext,
    engine: Arc<Engine>,
    clock: Clock,
) -> Result<Ticker, PluginError> {
    Ticker::start("automation-ticker", TICK, move || {
        let (fx, restarts_due) = engine.tick(clock.now(), Clock::unix_ms());
        apply(&ctx, fx);
        if restarts_due {
            // Never under the engine's lock: the health report asks for our status.
            let health: serde_json::Value =
                serde_json::from_str(&ctx.health_json()).unwrap_or_default();
            let fx = engine.run_restarts(clock.now(), &health, &mut |role| {
                ctx.spawn_agent(role).map_err(|e| e.to_string())
            });
            apply(&ctx, fx);
        }
    })
    .map_err(|e| PluginError::init(format!("cannot start the ticker thread: {e}")))
}

impl HivePlugin for Automation {
    const NAME: &'static str = "automation";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "circuit breakers per agent and role, self-healing restarts, error-pattern rules";
    const HOOKS: Hooks = Hooks::AGENT_SPAWNED
        .union(Hooks::AGENT_STATE_CHANGED)
        .union(Hooks::AGENT_FAILED)
        .union(Hooks::ATTEMPT_FINISHED)
        .union(Hooks::BEFORE_DELEGATE)
        .union(Hooks::ON_TASK_FAILED);

    fn new(config_json: &str, ctx: PluginContext) -> Result<Self, PluginError> {
        let settings = Settings::from_json(config_json)?;
        let needs_ticker = settings.breaker.enabled || settings.healing.enabled;
        let engine = Arc::new(Engine::new(settings));
        let clock = Clock(Instant::now());
        let ticker = if needs_ticker {
            Some(start_ticker(ctx.clone(), engine.clone(), clock)?)
        } else {
            None
        };
        let s = &engine.settings;
        ctx.log(
            LogLevel::INFO,
            &format!(
                "started: breakers {} (per agent: {}, per role: {}), self-healing {}, {} rule(s)",
                if s.breaker.enabled { "on" } else { "off" },
                s.breaker.per_agent,
                s.breaker.per_role,
                if s.healing.enabled { "on" } else { "off" },
                s.rules.len()
            ),
        );
        Ok(Automation {
            ctx,
            engine,
            clock,
            ticker: Mutex::new(ticker),
        })
    }

    fn hooks(&self) -> Hooks {
        let s = &self.engine.settings;
        let reroute_rules = s.rules.iter().any(|r| r.action == Action::Reroute);
        let mut h = Hooks::NONE;
        if s.breaker.enabled || s.healing.enabled || reroute_rules {
            h = h | Hooks::AGENT_SPAWNED | Hooks::AGENT_STATE_CHANGED;
        }
        if s.breaker.enabled || reroute_rules {
            h = h | Hooks::ATTEMPT_FINISHED | Hooks::BEFORE_DELEGATE;
        }
        if s.healing.enabled {
            h = h | Hooks::AGENT_FAILED;
        }
        if !s.rules.is_empty() || (s.healing.enabled && s.healing.retry_lost_tasks) {
            h = h | Hooks::ON_TASK_FAILED;
        }
        h
    }

    fn on_agent_spawned(&self, e: &AgentEvent<'_>) -> Result<(), PluginError> {
        self.engine.agent_spawned(e.agent, e.role.as_str());
        Ok(())
    }

    fn on_agent_state_changed(&self, e: &AgentStateChange<'_>) -> Result<(), PluginError> {
        self.engine
            .agent_state_changed(e.agent, e.role.as_str(), e.from.as_str(), e.to.as_str());
        Ok(())
    }

    fn on_agent_failed(&self, e: &AgentFailure<'_>) -> Result<(), PluginError> {
        let fx = self.engine.agent_failed(
            e.agent,
            e.role.as_str(),
            e.reason.as_str(),
            self.clock.now(),
            Clock::unix_ms(),
        );
        apply(&self.ctx, fx);
        Ok(())
    }

    fn on_attempt_finished(&self, e: &AttemptEvent<'_>) -> Result<(), PluginError> {
        let fx = self.engine.attempt_finished(
            e.task,
            e.role.as_str(),
            e.agent,
            e.attempt,
            e.status.as_str(),
            e.error.as_str(),
            e.will_retry,
            self.clock.now(),
            Clock::unix_ms(),
        );
        apply(&self.ctx, fx);
        Ok(())
    }

    fn before_delegate(&self, r: &DelegateRequest<'_>) -> Result<Delegate, PluginError> {
        if !self.engine.armed() {
            return Ok(Delegate::Continue);
        }
        let target = TargetView {
            kind: r.target.kind,
            name: r.target.name.as_str(),
        };
        let (d, fx) = self.engine.before_delegate(
            r.task,
            target,
            r.agent,
            self.clock.now(),
            Clock::unix_ms(),
        );
        apply(&self.ctx, fx);
        Ok(d)
    }

    fn on_task_failed(&self, f: &FailureInfo<'_>) -> Result<OnFailure, PluginError> {
        let target = TargetView {
            kind: f.target.kind,
            name: f.target.name.as_str(),
        };
        Ok(self.engine.on_task_failed(
            f.task,
            target,
            f.agent,
            f.attempt,
            f.error.as_str(),
            f.agent_lost,
            self.clock.now(),
        ))
    }

    fn status(&self) -> String {
        self.engine.status(self.clock.now()).to_string()
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        self.engine.stop();
        let ticker = self.ticker.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(t) = ticker {
            if !t.stop(JOIN_WITHIN) {
                self.ctx
                    .log(LogLevel::WARN, "the ticker thread did not stop in time");
            }
        }
        self.ctx.emit("summary", &self.status());
        Ok(())
    }
}
