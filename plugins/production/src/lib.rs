//! The official `production` plugin: SLA monitoring per role (p95 latency and queue wait over
//! a sliding window against thresholds from its config), auto-scaling through the host
//! handle (spawn agents of a breaching role up to `max_agents`, retire idle ones after a
//! cool-down down to `min_agents`), and failover (replace a failed agent, retry the work it
//! lost at once). It takes over the SLA, scaling and disaster-recovery features of the legacy
//! `production_orchestrator.py` (`ProductionPlugin`). See docs/plugins/production.md.

mod config;
mod control;
mod window;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hive_plugin_api::{
    AgentEvent, AgentFailure, AgentStateChange, AttemptEvent, FailureInfo, HivePlugin, Hooks,
    OnFailure, PluginContext, PluginError, TargetKind,
};

use crate::config::Settings;
use crate::control::{Action, Controller, HealthView};
use hive_plugin_api::Ticker;

/// How long `shutdown` waits for the ticker thread.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// The plugin: one instance per `[[plugins]]` entry.
pub struct Production {
    ctx: PluginContext,
    hooks: Hooks,
    state: Arc<Mutex<Controller>>,
    ticker: Option<Ticker>,
}

impl std::fmt::Debug for Production {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Production")
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// Logs a command the host refused: a warning, unless the kernel is shutting down (then
/// refusals are expected).
fn refused(what: &str, e: &PluginError) {
    if e.message.as_str().contains("shutting down") {
        tracing::debug!("{what} refused: {e}");
    } else {
        tracing::warn!("{what} refused: {e}");
    }
}

/// Performs the controller's actions through the host. A command the host refuses at once
/// is handed back to the controller (so that it stops counting the agent).
fn perform(ctx: &PluginContext, state: &Mutex<Controller>, actions: Vec<Action>) {
    for a in actions {
        match a {
            Action::Spawn { role } => {
                if let Err(e) = ctx.spawn_agent(&role) {
                    refused(&format!("spawn_agent({role})"), &e);
                    if let Ok(mut c) = state.lock() {
                        c.spawn_refused(&role);
                    }
                }
            }
            Action::Retire { role, agent } => {
                if let Err(e) = ctx.shutdown_agent(agent, true) {
                    refused(&format!("retiring agent {agent} of {role}"), &e);
                    if let Ok(mut c) = state.lock() {
                        c.retire_refused(agent);
                    }
                }
            }
            Action::Emit { name, data } => ctx.emit(name, &data.to_string()),
        }
    }
}

impl Production {
    fn act(&self, actions: Vec<Action>) {
        if !actions.is_empty() {
            perform(&self.ctx, &self.state, actions);
        }
    }
}

impl HivePlugin for Production {
    const NAME: &'static str = "production";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "SLA monitoring per role, auto-scaling of agent pools, failover of failed agents";
    const HOOKS: Hooks = Hooks::AGENT_SPAWNED
        .union(Hooks::AGENT_STATE_CHANGED)
        .union(Hooks::AGENT_FAILED)
        .union(Hooks::ATTEMPT_FINISHED)
        .union(Hooks::ON_TASK_FAILED);

    fn new(config_json: &str, ctx: PluginContext) -> Result<Self, PluginError> {
        let settings = Settings::parse(config_json).map_err(PluginError::config)?;
        let mut hooks = Hooks::NONE;
        if !settings.roles.is_empty() {
            hooks = Hooks::AGENT_SPAWNED | Hooks::AGENT_STATE_CHANGED | Hooks::AGENT_FAILED;
        }
        if settings.any_threshold() {
            hooks = hooks | Hooks::ATTEMPT_FINISHED;
        }
        if settings.any_failover() {
            hooks = hooks | Hooks::ON_TASK_FAILED;
        }
        let period = settings.check_interval;
        let managed = settings.roles.len();
        let state = Arc::new(Mutex::new(Controller::new(settings, Instant::now())));
        let ticker = if managed == 0 {
            tracing::warn!("no [plugins.config.roles] table: nothing to monitor");
            None
        } else {
            let (ctx2, state2) = (ctx.clone(), state.clone());
            let tick = move || {
                let health = HealthView::parse(&ctx2.health_json());
                let actions = match state2.lock() {
                    Ok(mut c) => c.tick(health.as_ref(), Instant::now()),
                    Err(_) => return,
                };
                perform(&ctx2, &state2, actions);
            };
            Some(
                Ticker::start("hive-production-tick", period, tick)
                    .map_err(|e| PluginError::init(format!("cannot start its thread: {e}")))?,
            )
        };
        Ok(Production {
            ctx,
            hooks,
            state,
            ticker,
        })
    }

    fn hooks(&self) -> Hooks {
        self.hooks
    }

    fn on_agent_spawned(&self, e: &AgentEvent<'_>) -> Result<(), PluginError> {
        if let Ok(mut c) = self.state.lock() {
            c.agent_spawned(e.agent, e.role.as_str(), Instant::now());
        }
        Ok(())
    }

    fn on_agent_state_changed(&self, e: &AgentStateChange<'_>) -> Result<(), PluginError> {
        if let Ok(mut c) = self.state.lock() {
            if e.to.as_str() == "stopped" {
                c.agent_stopped(e.agent);
            } else {
                c.agent_state(e.agent, e.role.as_str(), e.to.as_str(), Instant::now());
            }
        }
        Ok(())
    }

    fn on_agent_failed(&self, e: &AgentFailure<'_>) -> Result<(), PluginError> {
        let actions = match self.state.lock() {
            Ok(mut c) => c.agent_failed(
                e.agent,
                e.role.as_str(),
                e.reason.as_str(),
                e.in_flight,
                Instant::now(),
            ),
            Err(_) => return Err(PluginError::hook("state lock poisoned")),
        };
        self.act(actions);
        Ok(())
    }

    fn on_attempt_finished(&self, e: &AttemptEvent<'_>) -> Result<(), PluginError> {
        if let Ok(mut c) = self.state.lock() {
            c.attempt_finished(e.role.as_str(), e.run_ms, e.queue_ms, Instant::now());
        }
        Ok(())
    }

    fn on_task_failed(&self, f: &FailureInfo<'_>) -> Result<OnFailure, PluginError> {
        if !f.agent_lost || f.target.kind == TargetKind::AGENT {
            return Ok(OnFailure::Default);
        }
        let target_role = (f.target.kind == TargetKind::ROLE).then(|| f.target.name.as_str());
        let reroute = self
            .state
            .lock()
            .map(|mut c| c.reroute_lost(f.agent, target_role))
            .unwrap_or(false);
        Ok(if reroute {
            OnFailure::RetryAfter { ms: 0 }
        } else {
            OnFailure::Default
        })
    }

    fn status(&self) -> String {
        match self.state.lock() {
            Ok(mut c) => c.status(Instant::now()).to_string(),
            Err(_) => r#"{"error": "state lock poisoned"}"#.into(),
        }
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        if let Some(t) = &self.ticker {
            if !t.stop(STOP_BOUND) {
                tracing::warn!("the ticker thread did not stop within {STOP_BOUND:?}");
            }
        }
        Ok(())
    }
}
