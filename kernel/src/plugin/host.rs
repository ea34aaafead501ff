//! The `Host` the kernel implements for plugins. Every call returns at once: commands go to a
//! queue that a kernel task applies, so a plugin can spawn agents or submit tasks from inside
//! a hook without blocking (or re-entering) the kernel.

use std::sync::{Arc, Weak};

use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};
use hive_plugin_api::{ErrorKind, Host, LogLevel as PLevel, PluginError};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::event::{kind, Event, LogLevel};
use crate::ids::{AgentId, TaskId};
use crate::kernel::Inner;
use crate::task::TaskSpec;
use crate::ShutdownMode;

/// A command queued by a plugin.
#[derive(Debug)]
pub(crate) enum HostCommand {
    Spawn {
        plugin: Arc<str>,
        role: Arc<str>,
    },
    Shutdown {
        plugin: Arc<str>,
        agent: AgentId,
        mode: ShutdownMode,
    },
    Submit {
        plugin: Arc<str>,
        id: TaskId,
        spec: Box<TaskSpec>,
    },
    Kill {
        plugin: Arc<str>,
        agent: AgentId,
        reason: String,
    },
}

/// One plugin's handle on the kernel.
#[derive(Clone)]
pub(crate) struct KernelHost {
    pub(crate) plugin: Arc<str>,
    pub(crate) tx: mpsc::UnboundedSender<HostCommand>,
    pub(crate) kernel: Weak<Inner>,
    /// Linked into this program (not loaded from a file).
    pub(crate) linked: bool,
}

fn level(l: PLevel) -> LogLevel {
    match l {
        PLevel::TRACE => LogLevel::Trace,
        PLevel::DEBUG => LogLevel::Debug,
        PLevel::WARN => LogLevel::Warn,
        PLevel::ERROR => LogLevel::Error,
        _ => LogLevel::Info,
    }
}

fn host_err(msg: impl Into<String>) -> PluginError {
    PluginError::new(ErrorKind::HOST, msg)
}

/// Parses a plugin's `submit_task` request.
pub(crate) fn parse_submit(json: &str) -> Result<TaskSpec, String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("submit_task: invalid JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("submit_task: expected a JSON object".into());
    };
    for k in obj.keys() {
        if ![
            "role",
            "capability",
            "agent",
            "payload",
            "priority",
            "timeout_s",
            "name",
        ]
        .contains(&k.as_str())
        {
            return Err(format!(
                "submit_task: unknown field `{k}`, expected role, capability, agent, payload, priority, timeout_s or name"
            ));
        }
    }
    let target = match (obj.get("role"), obj.get("capability"), obj.get("agent")) {
        (Some(Value::String(r)), None, None) => crate::Target::role(r),
        (None, Some(Value::String(c)), None) => crate::Target::capability(c),
        (None, None, Some(a)) => crate::Target::Agent(AgentId(
            a.as_u64()
                .ok_or("submit_task: `agent` must be an agent id (integer)")?,
        )),
        _ => return Err("submit_task: give exactly one of `role`, `capability` or `agent`".into()),
    };
    let mut spec = TaskSpec::new(target, obj.get("payload").cloned().unwrap_or(Value::Null));
    if let Some(p) = obj.get("priority") {
        spec = spec.with_priority(
            p.as_i64()
                .ok_or("submit_task: `priority` must be an integer")? as i32,
        );
    }
    if let Some(t) = obj.get("timeout_s") {
        let s = t
            .as_f64()
            .filter(|s| *s > 0.0 && s.is_finite())
            .ok_or("submit_task: `timeout_s` must be a positive number")?;
        spec = spec.with_timeout(std::time::Duration::from_secs_f64(s));
    }
    if let Some(Value::String(n)) = obj.get("name") {
        spec = spec.with_name(n);
    }
    Ok(spec)
}

impl Host for KernelHost {
    fn log(&self, l: PLevel, message: RStr<'_>) {
        let lv = level(l);
        let msg = message.as_str();
        match lv {
            LogLevel::Error => tracing::error!(plugin = %self.plugin, "{msg}"),
            LogLevel::Warn => tracing::warn!(plugin = %self.plugin, "{msg}"),
            LogLevel::Info => tracing::info!(plugin = %self.plugin, "{msg}"),
            _ => tracing::debug!(plugin = %self.plugin, "{msg}"),
        }
        if let Some(k) = self.kernel.upgrade() {
            k.bus.emit_with(kind::PLUGIN, || Event::PluginLog {
                plugin: self.plugin.clone(),
                level: lv,
                message: msg.to_string(),
            });
        }
    }

    fn metric(&self, name: RStr<'_>, value: f64) {
        if let Some(k) = self.kernel.upgrade() {
            k.bus.emit_with(kind::METRIC, || Event::PluginMetric {
                plugin: self.plugin.clone(),
                name: name.to_string(),
                value,
            });
        }
    }

    fn spawn_agent(&self, role: RStr<'_>) -> RResult<u64, PluginError> {
        let Some(k) = self.kernel.upgrade() else {
            return RErr(host_err("the kernel is gone"));
        };
        if !k.has_template(role.as_str()) {
            return RErr(host_err(format!(
                "spawn_agent: role `{role}` has no pool to copy (declare it in [[pools]])"
            )));
        }
        let ticket = k.reserve_id();
        match self.tx.send(HostCommand::Spawn {
            plugin: self.plugin.clone(),
            role: Arc::from(role.as_str()),
        }) {
            Ok(()) => ROk(ticket),
            Err(_) => RErr(host_err("the kernel is shutting down")),
        }
    }

    fn shutdown_agent(&self, agent: u64, graceful: bool) -> RResult<(), PluginError> {
        let mode = if graceful {
            ShutdownMode::Graceful
        } else {
            ShutdownMode::Now
        };
        match self.tx.send(HostCommand::Shutdown {
            plugin: self.plugin.clone(),
            agent: AgentId(agent),
            mode,
        }) {
            Ok(()) => ROk(()),
            Err(_) => RErr(host_err("the kernel is shutting down")),
        }
    }

    fn submit_task(&self, request_json: RStr<'_>) -> RResult<u64, PluginError> {
        let spec = match parse_submit(request_json.as_str()) {
            Ok(s) => s,
            Err(e) => return RErr(host_err(e)),
        };
        let Some(k) = self.kernel.upgrade() else {
            return RErr(host_err("the kernel is gone"));
        };
        let id = TaskId(k.reserve_id());
        match self.tx.send(HostCommand::Submit {
            plugin: self.plugin.clone(),
            id,
            spec: Box::new(spec),
        }) {
            Ok(()) => ROk(id.get()),
            Err(_) => RErr(host_err("the kernel is shutting down")),
        }
    }

    fn kill_agent(&self, agent: u64, reason: RStr<'_>) -> RResult<(), PluginError> {
        match self.tx.send(HostCommand::Kill {
            plugin: self.plugin.clone(),
            agent: AgentId(agent),
            reason: reason.to_string(),
        }) {
            Ok(()) => ROk(()),
            Err(_) => RErr(host_err("the kernel is shutting down")),
        }
    }

    fn linked(&self) -> bool {
        self.linked
    }

    fn emit(&self, name: RStr<'_>, data_json: RStr<'_>) {
        let Some(k) = self.kernel.upgrade() else {
            return;
        };
        let data = serde_json::from_str::<Value>(data_json.as_str())
            .unwrap_or_else(|_| Value::String(data_json.to_string()));
        tracing::info!(plugin = %self.plugin, "{name} {data}");
        k.bus.emit_with(kind::PLUGIN, || Event::PluginEvent {
            plugin: self.plugin.clone(),
            name: name.to_string(),
            data,
        });
    }

    fn health_json(&self) -> RString {
        match self.kernel.upgrade() {
            Some(k) => RString::from(
                serde_json::to_string(&crate::Kernel::from_inner(k).health())
                    .unwrap_or_else(|_| "{}".into()),
            ),
            None => RString::from("{}"),
        }
    }
}

/// Applies plugins' commands until the queue closes.
pub(crate) async fn apply_commands(
    kernel: Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<HostCommand>,
) {
    while let Some(cmd) = rx.recv().await {
        let Some(k) = kernel.upgrade() else { return };
        let kernel = crate::Kernel::from_inner(k);
        match cmd {
            HostCommand::Spawn { plugin, role } => {
                tokio::spawn(async move {
                    if let Err(e) = kernel.spawn_from_template(&role).await {
                        tracing::warn!(plugin = %plugin, "spawn_agent({role}) failed: {e}");
                    }
                });
            }
            HostCommand::Shutdown {
                plugin,
                agent,
                mode,
            } => {
                tokio::spawn(async move {
                    if let Err(e) = kernel.shutdown_agent(agent, mode).await {
                        tracing::warn!(plugin = %plugin, "shutdown_agent({agent}) failed: {e}");
                    }
                });
            }
            HostCommand::Kill {
                plugin,
                agent,
                reason,
            } => {
                if !kernel.kill_agent(agent, &format!("killed by plugin {plugin}: {reason}")) {
                    tracing::warn!(plugin = %plugin, "kill_agent({agent}): no such live agent");
                }
            }
            HostCommand::Submit { plugin, id, spec } => {
                tokio::spawn(async move {
                    if let Err(e) = kernel.submit_reserved(id, *spec).await {
                        tracing::warn!(plugin = %plugin, "submit_task ({id}) failed: {e}");
                    }
                });
            }
        }
    }
}
