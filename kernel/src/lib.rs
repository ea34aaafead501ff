//! Hive's kernel: a registry of agents, the drivers that run them (`inproc`, `process`,
//! `stdio`), routing of tasks to them (bounded per-role queues, pull or push policies), the
//! task lifecycle (timeouts, retries with backoff and jitter, deadlines, cancellation), leases,
//! health, and one typed event bus that every sink reads.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hive_kernel::{AgentSpec, InprocDriver, Kernel, TaskSpec};
//! use serde_json::json;
//!
//! let kernel = Kernel::builder().build()?;
//! let echo = InprocDriver::new(|t| async move { Ok(json!({"echo": *t.payload})) });
//! kernel.spawn_agent(AgentSpec::new("echo", echo.shared())).await?;
//! let result = kernel.run(TaskSpec::for_role("echo", json!("hi"))).await?;
//! assert!(result.outcome.is_success());
//! # Ok(()) }
//! ```
//!
//! Runtime guarantees (ordering, delivery, what happens to in-flight work when an agent dies)
//! are in docs/runtime-semantics.md.

mod agent;
mod config;
mod control;
mod driver;
mod error;
mod event;
mod graph;
mod health;
mod ids;
mod kernel;
mod plan;
mod plugin;
mod queue;
mod setup;
mod state;
mod task;

pub use agent::{AgentInfo, AgentSpec, AgentState, ShutdownMode};
pub use config::{Config, ConfigError, KernelSection, PluginSection, Pool, PoolSection};
pub use control::{request_health, serve as serve_control, socket_path, ControlError};
pub use driver::{
    AgentContext, AgentHandle, AgentLink, Driver, DriverError, InprocDriver, ProcessConfig,
    ProcessDriver, StdioConfig, StdioDriver, TaskContext, TaskInput,
};
pub use error::{BuildError, ShutdownError, SpawnError, SubmitError};
pub use event::{Event, EventEnvelope, EventStream, JsonlSink, LogLevel, Stream};
pub use graph::{CacheMode, PlanRun, RunError, RunOptions, RunReport, StepReport};
pub use health::{AgentCounts, HealthReport, Quantiles, RoleHealth};
pub use ids::{AgentId, BatchId, TaskId, Timestamp};
pub use kernel::{
    BatchOptions, BatchResult, Cancellation, Dispatch, Fairness, Kernel, KernelBuilder, RoleConfig,
    TaskHandle,
};
pub use plan::{
    parse_yaml, path_element, path_member, render_problem, OnFailure, Plan, PlanError, Pos,
    Positions, Problem, ProblemKind, SyntaxError,
};
pub use plugin::{
    inspect as inspect_plugin, search_path as plugin_search_path, LinkedPlugin, LoadErrorKind,
    PluginHealth, PluginLoadError, PluginManifest, PluginSpec, QuarantinePolicy,
};
pub use queue::QueueOrder;
pub use setup::{
    kernel_settings, local_driver, spawn_pools, start_kernel, state_dir, SetupError, LOCAL_ROLE,
};
pub use state::{
    AttemptRow, GcOptions, GcReport, GcRun, RunEvent, RunEventKind, RunLock, RunRecord, RunState,
    StateError, StateStore, StepRecord, StepState,
};
pub use task::{
    AttemptRecord, AttemptStatus, Backoff, Jitter, Outcome, RetryPolicy, Status, Target, TaskError,
    TaskResult, TaskSpec,
};

/// Starts the orphan guard now (otherwise the first command started does). A program that
/// will start commands may call it first thing in `main`: forking is cheapest while the
/// process is small and single-threaded, and the guard then sets itself up on another core
/// while the program goes on.
pub fn start_orphan_guard() {
    driver::reaper::ensure_started();
}

/// The orphan guard's pid (the process that kills this process's commands if it dies), once
/// a command has been started. For tests and diagnostics.
pub fn orphan_guard_pid() -> Option<u32> {
    driver::reaper::guard_pid()
}
