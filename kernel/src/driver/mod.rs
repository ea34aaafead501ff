//! How agents execute: the [`Driver`] and [`AgentHandle`] traits, the contexts the kernel hands
//! them, and the built-in drivers (`inproc`, `process`, `stdio`).

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agent::{Lease, ShutdownMode};
use crate::event::{kind, Event, LogLevel, Stream};
use crate::ids::{AgentId, TaskId};
use crate::kernel::Inner;
use crate::task::TaskError;

pub(crate) mod inproc;
pub(crate) mod output;
pub(crate) mod process;
pub(crate) mod reaper;
pub(crate) mod spawn;
pub(crate) mod stdio;
pub(crate) mod which;

/// Starts agents of one kind. One driver value can start many agents.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A short name for events and health (`inproc`, `process`, `stdio`, ...).
    fn name(&self) -> &str;

    /// Starts one agent. Returns once it can take tasks (the kernel then marks it Ready), or
    /// with the reason it could not start.
    async fn start(&self, ctx: AgentContext) -> Result<Arc<dyn AgentHandle>, DriverError>;
}

/// A started agent, as its driver sees it.
#[async_trait]
pub trait AgentHandle: Send + Sync + 'static {
    /// Runs one attempt of a task. Must return soon (within the grace period) once
    /// `task.cancel` is cancelled; the kernel decides the outcome from why it cancelled.
    async fn execute(&self, task: TaskContext) -> Result<Value, TaskError>;

    /// Stops the agent. `Graceful`: the kernel has already waited for in-flight work.
    async fn stop(&self, mode: ShutdownMode);
}

/// Why a driver could not start an agent.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    /// What went wrong.
    pub message: String,
}

impl DriverError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        DriverError {
            message: message.into(),
        }
    }
}

/// The link from a driver to the kernel for one agent: lease renewal, logs, metrics, output,
/// and reporting the agent's death. Cheap to clone; does not keep the kernel alive.
#[derive(Clone)]
pub struct AgentLink {
    agent: AgentId,
    lease: Arc<Lease>,
    kernel: Weak<Inner>,
}

impl fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentLink")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl AgentLink {
    pub(crate) fn new(agent: AgentId, lease: Arc<Lease>, kernel: Weak<Inner>) -> Self {
        AgentLink {
            agent,
            lease,
            kernel,
        }
    }

    /// The agent.
    pub fn agent(&self) -> AgentId {
        self.agent
    }

    /// Puts the agent under a lease of `ttl`: unless renewed within `ttl`, it fails.
    pub fn set_lease(&self, ttl: Duration) {
        self.lease.set_ttl(ttl);
        if let Some(k) = self.kernel.upgrade() {
            k.ensure_lease_monitor(ttl);
        }
    }

    /// Renews the lease (a heartbeat).
    pub fn renew_lease(&self) {
        self.lease.renew();
    }

    /// Emits a log line of the agent.
    pub fn log(&self, level: LogLevel, task: Option<TaskId>, message: impl Into<String>) {
        let message = message.into();
        match level {
            LogLevel::Error => tracing::error!(agent = %self.agent, task = ?task, "{message}"),
            LogLevel::Warn => tracing::warn!(agent = %self.agent, task = ?task, "{message}"),
            LogLevel::Info => tracing::info!(agent = %self.agent, task = ?task, "{message}"),
            _ => tracing::debug!(agent = %self.agent, task = ?task, "{message}"),
        }
        if let Some(k) = self.kernel.upgrade() {
            k.bus.emit(Event::AgentLog {
                agent: self.agent,
                task,
                level,
                message,
            });
        }
    }

    /// Emits a metric of the agent.
    pub fn metric(&self, name: impl Into<String>, value: f64, task: Option<TaskId>) {
        if let Some(k) = self.kernel.upgrade() {
            k.bus.emit(Event::Metric {
                agent: self.agent,
                task,
                name: name.into(),
                value,
            });
        }
    }

    /// Streams a chunk of a task's output (built only if someone listens).
    pub fn output(&self, task: TaskId, stream: Stream, chunk: &[u8]) {
        if let Some(k) = self.kernel.upgrade() {
            k.bus.emit_with(kind::TASK_OUTPUT, || Event::TaskOutput {
                task,
                agent: self.agent,
                stream,
                chunk: String::from_utf8_lossy(chunk).into_owned(),
            });
        }
    }

    /// Reports that the agent died. Its in-flight tasks go back to their retry policy.
    pub fn fail(&self, reason: impl Into<String>) {
        if let Some(k) = self.kernel.upgrade() {
            k.fail_agent(self.agent, reason.into());
        }
    }
}

/// What a driver gets to start an agent.
#[derive(Debug, Clone)]
pub struct AgentContext {
    /// The agent.
    pub agent: AgentId,
    /// Its role.
    pub role: Arc<str>,
    /// Its capacity.
    pub capacity: u32,
    /// The kernel's grace period (SIGTERM to SIGKILL, cancel to acknowledgement).
    pub grace: Duration,
    /// The link back to the kernel.
    pub link: AgentLink,
}

/// One attempt of a task, as a driver gets it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TaskContext {
    /// The task.
    pub task: TaskId,
    /// Its label (a plan's step id), if any.
    pub name: Option<Arc<str>>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// The payload.
    pub payload: Arc<Value>,
    /// The time this attempt has (the kernel enforces it; drivers may pass it on).
    pub timeout: Duration,
    /// Cancelled when the attempt must stop (timeout, cancel, agent lost).
    pub cancel: CancellationToken,
    /// The link back to the kernel.
    pub link: AgentLink,
}

pub use inproc::{InprocDriver, TaskInput};
pub use process::{ProcessConfig, ProcessDriver};
pub use stdio::{StdioConfig, StdioDriver};
