//! Agent drivers contributed by plugins (the development plugin's `mock`): the plugin
//! decides each attempt (output or error, after how long, or a hang or a crash) in a quick
//! synchronous call, and the kernel keeps the time on its own timers, so a plugin needs no
//! runtime of its own and a cancelled attempt stops at once.

use std::sync::{Arc, Weak};
use std::time::Duration;

use abi_stable::std_types::RStr;
use async_trait::async_trait;
use hive_plugin_api::{DriverRequest, DriverStep};
use serde_json::Value;

use super::set::{LoadedPlugin, PluginSet};
use crate::agent::ShutdownMode;
use crate::driver::{AgentContext, AgentHandle, Driver, DriverError, TaskContext};
use crate::kernel::Inner;
use crate::task::TaskError;

/// A driver by name, resolved among the loaded plugins when an agent starts (so a pool can
/// name it before the plugins are loaded).
#[derive(Debug, Clone)]
pub(crate) struct PluginDriver {
    name: String,
    kernel: Weak<Inner>,
}

impl PluginDriver {
    pub(crate) fn new(name: impl Into<String>, kernel: Weak<Inner>) -> Self {
        PluginDriver {
            name: name.into(),
            kernel,
        }
    }
}

struct PluginAgent {
    driver: Arc<str>,
    role: Arc<str>,
    plugin: Arc<LoadedPlugin>,
    set: Weak<PluginSet>,
}

#[async_trait]
impl Driver for PluginDriver {
    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&self, ctx: AgentContext) -> Result<Arc<dyn AgentHandle>, DriverError> {
        let kernel = self
            .kernel
            .upgrade()
            .ok_or_else(|| DriverError::new("the kernel is gone"))?;
        let set = kernel.plugins.get().ok_or_else(|| {
            DriverError::new(format!(
                "driver `{}`: no plugin is loaded (a plugin contributes it)",
                self.name
            ))
        })?;
        let plugin = set.driver_plugin(&self.name).ok_or_else(|| {
            DriverError::new(format!(
                "driver `{}`: no loaded plugin contributes it (contributed: {})",
                self.name,
                or_none(&set.driver_names())
            ))
        })?;
        Ok(Arc::new(PluginAgent {
            driver: Arc::from(self.name.as_str()),
            role: ctx.role.clone(),
            plugin,
            set: Arc::downgrade(set),
        }))
    }
}

pub(crate) fn or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Sleeps `ms`, or returns false at once if the attempt is cancelled.
async fn wait(task: &TaskContext, ms: u64) -> bool {
    if ms == 0 {
        return !task.cancel.is_cancelled();
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
        _ = task.cancel.cancelled() => false,
    }
}

#[async_trait]
impl AgentHandle for PluginAgent {
    async fn execute(&self, task: TaskContext) -> Result<Value, TaskError> {
        let set = self
            .set
            .upgrade()
            .ok_or_else(|| TaskError::new("the kernel's plugins are gone"))?;
        let payload = serde_json::to_string(&*task.payload).unwrap_or_else(|_| "null".into());
        let name = task.name.as_deref().unwrap_or("");
        let req = DriverRequest {
            driver: RStr::from(&*self.driver),
            agent: task.link.agent().get(),
            role: RStr::from(&*self.role),
            task: task.task.get(),
            name: RStr::from(name),
            attempt: task.attempt,
            timeout_ms: task.timeout.as_millis() as u64,
            payload_json: RStr::from(payload.as_str()),
        };
        let step = set
            .driver_execute(&self.plugin, &req)
            .map_err(TaskError::new)?;
        drop(set);
        let stopped = || TaskError::new("stopped");
        match step {
            DriverStep::Complete {
                delay_ms,
                output_json,
            } => {
                if !wait(&task, delay_ms).await {
                    return Err(stopped());
                }
                Ok(serde_json::from_str(output_json.as_str())
                    .unwrap_or_else(|_| Value::String(output_json.to_string())))
            }
            DriverStep::Fail { delay_ms, error } => {
                if !wait(&task, delay_ms).await {
                    return Err(stopped());
                }
                Err(TaskError::new(error.to_string()))
            }
            DriverStep::Crash { delay_ms, reason } => {
                if !wait(&task, delay_ms).await {
                    return Err(stopped());
                }
                task.link.fail(reason.to_string());
                Err(TaskError::new(format!("agent crashed: {reason}")))
            }
            DriverStep::Hang => {
                task.cancel.cancelled().await;
                Err(stopped())
            }
            _ => Err(TaskError::new(format!(
                "driver `{}`: an attempt step this kernel does not know",
                self.driver
            ))),
        }
    }

    async fn stop(&self, _mode: ShutdownMode) {}
}
