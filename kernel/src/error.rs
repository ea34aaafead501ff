//! Errors by failure domain: spawning, submitting, shutting down, building a kernel.

use std::sync::Arc;

use crate::ids::AgentId;
use crate::task::Target;

/// Why an agent could not be spawned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The driver could not start it.
    #[error("agent of role `{role}` did not start: {reason}")]
    Start {
        /// Its role.
        role: Arc<str>,
        /// The driver's reason.
        reason: Arc<str>,
    },
    /// The kernel is shutting down.
    #[error("the kernel is shutting down")]
    ShuttingDown,
}

/// Why a task could not be submitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The queue is full (only from `try_submit`; `submit` waits).
    #[error("the queue of {0} is full")]
    Busy(Target),
    /// No agent of this role was ever spawned or declared.
    #[error("no agent serves role `{0}` (declare the role or spawn an agent first)")]
    NoSuchRole(Arc<str>),
    /// No agent with this capability was ever spawned.
    #[error("no agent has capability `{0}`")]
    NoSuchCapability(Arc<str>),
    /// The target agent does not exist or no longer takes tasks.
    #[error("{0} does not exist or takes no tasks")]
    NoSuchAgent(AgentId),
    /// The kernel is shutting down.
    #[error("the kernel is shutting down")]
    ShuttingDown,
}

/// Why an agent could not be shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// No such agent.
    #[error("no agent {0}")]
    NoSuchAgent(AgentId),
}

/// Why a kernel could not be built, or a role declared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `build()` was called outside a tokio runtime.
    #[error("a Kernel must be built inside a tokio runtime (multi-threaded recommended)")]
    NoRuntime,
    /// A setting is out of range.
    #[error("invalid kernel setting `{setting}`: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is expected.
        reason: String,
    },
    /// The role was declared already (or used before being declared).
    #[error("role `{0}` is already declared")]
    RoleExists(Arc<str>),
}
