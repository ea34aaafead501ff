//! The tools orchestrator of seed 004 (`tools.orchestrator`): `execute_parallel(tasks, policy)`
//! and `execute_graph(graph, policy)` over `TaskSpec`, `TaskGraph` and `OrchestrationPolicy`,
//! returning an `OrchestrationResult`, each a thin layer over one Hive kernel.
//!
//! Mapping (docs/compat/tools.md has the full table):
//!
//! - every `agent_factory` runs on a pool of in-process kernel agents of one role (pull
//!   dispatch: an idle agent takes the next task, the legacy "work stealing"); the factory is
//!   called once per attempt and its agent's `run(prompt, params)` is the attempt;
//! - `execute_parallel` is [`hive_kernel::Kernel::run_batch`] (the kernel feature behind
//!   `hive run --tasks`): `max_concurrency`, `fairness` and `cancellation` are the batch's
//!   options; `retry` and `timeout_s` become each kernel task's retry policy and timeout;
//! - `execute_graph` is an event-driven dependency tracker over [`hive_kernel::Kernel::submit`]
//!   (one loop woken by task completions, no polling);
//! - `cost_budget` is enforced by the facade before a task enters the kernel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hive_compat::tools::{agent_fn, execute_parallel, OrchestrationPolicy, TaskSpec};
//! use serde_json::json;
//!
//! let tasks = (0..8)
//!     .map(|i| {
//!         TaskSpec::new(
//!             |_ctx| agent_fn(|prompt, _| async move { Ok(json!({"echo": prompt})) }),
//!             format!("prompt {i}"),
//!         )
//!     })
//!     .collect();
//! let policy = OrchestrationPolicy::builder().max_concurrency(4).build()?;
//! let result = execute_parallel(tasks, &policy).await?;
//! assert!(result.all_succeeded());
//! # Ok(()) }
//! ```

mod exec;
mod graph;
mod policy;
mod result;
mod spec;

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use futures_util::FutureExt;
use hive_kernel::{
    AgentSpec, BuildError, InprocDriver, Kernel, ShutdownMode, SpawnError, TaskError, TaskInput,
};
use parking_lot::RwLock;
use serde_json::Value;

pub use graph::{GraphError, TaskGraph, TaskGraphBuilder};
pub use hive_kernel::{Cancellation, Fairness, Status};
pub use policy::{
    BackoffKind, JitterMode, OrchestrationPolicy, PolicyBuilder, PolicyError, RetryConfig,
};
pub use result::{Metrics, OrchestrationResult, TaskOutcome};
pub use spec::{
    agent_fn, Agent, AgentContext, AgentError, AgentFactory, FnAgent, PermanentError, TaskSpec,
};

/// Why `execute_parallel` or `execute_graph` could not run (task failures are outcomes, not
/// errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolsError {
    /// The tasks or the graph were refused (duplicate ids, unknown dependencies, a cycle, a
    /// bad cost).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The kernel could not be built (for example outside a tokio runtime).
    #[error("cannot start the orchestrator's kernel: {0}")]
    Build(#[from] BuildError),
    /// The orchestrator's agents could not be spawned.
    #[error("cannot start the orchestrator's agents: {0}")]
    Spawn(#[from] SpawnError),
    /// More tasks in one call than the facade can number.
    #[error("{0} tasks in one call: at most 4,294,967,295")]
    TooManyTasks(usize),
}

/// The largest number of capacity-1 agents in a pool; beyond it, the last agent's capacity
/// grows instead.
const MAX_POOL_AGENTS: u32 = 64;

/// Numbers orchestrators, so that each has its own role on a shared kernel.
static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// The tasks of one call: the caller's specs (moved, not copied) and their ids.
struct CallTable {
    specs: Vec<TaskSpec>,
    ids: Vec<Arc<str>>,
    shared: Arc<Value>,
}

/// Calls in flight, by number: a kernel task's payload is `call << 32 | index`.
struct Registry {
    /// The orchestrator's number (the per-thread cache's key).
    id: u64,
    calls: RwLock<HashMap<u64, Arc<CallTable>>>,
}

thread_local! {
    /// The call a worker thread looked up last (registry, call, table): consecutive tasks of
    /// one call skip the registry's lock.
    static LAST_CALL: RefCell<Option<(u64, u64, Weak<CallTable>)>> = const { RefCell::new(None) };
}

impl Registry {
    fn lookup(&self, payload: &Value) -> Option<(Arc<CallTable>, usize)> {
        let key = payload.as_u64()?;
        let (call, idx) = (key >> 32, (key & 0xFFFF_FFFF) as usize);
        let cached = LAST_CALL.with(|c| match &*c.borrow() {
            Some((r, k, table)) if *r == self.id && *k == call => table.upgrade(),
            _ => None,
        });
        let table = match cached {
            Some(t) => t,
            None => {
                let t = self.calls.read().get(&call).cloned()?;
                LAST_CALL.with(|c| *c.borrow_mut() = Some((self.id, call, Arc::downgrade(&t))));
                t
            }
        };
        Some((table, idx))
    }
}

/// Removes a call's table when the call ends (or its future is dropped).
struct CallGuard<'a> {
    registry: &'a Registry,
    call: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.registry.calls.write().remove(&self.call);
    }
}

/// The tools orchestrator: one kernel and a pool of in-process agents that run the tasks'
/// agents. [`execute_parallel`] and [`execute_graph`] make one per call; keep one to reuse
/// its kernel and pool across calls (concurrent calls share the pool, whose size is the
/// largest `max_concurrency` seen; each call is still bounded by its own).
pub struct ToolsOrchestrator {
    kernel: Kernel,
    owns_kernel: bool,
    role: Arc<str>,
    driver: Arc<dyn hive_kernel::Driver>,
    registry: Arc<Registry>,
    pool: tokio::sync::Mutex<(u32, u32)>,
    capacity: AtomicU32,
    shared: Arc<Value>,
    next_call: AtomicU64,
}

impl std::fmt::Debug for ToolsOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolsOrchestrator")
            .field("role", &self.role)
            .field("capacity", &self.capacity.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ToolsOrchestrator {
    /// An orchestrator with its own kernel (built on the current tokio runtime).
    pub async fn new() -> Result<Self, ToolsError> {
        let kernel = Kernel::builder().build()?;
        Ok(Self::build(kernel, true))
    }

    /// An orchestrator on an existing kernel (for example one with plugins loaded: the
    /// automation plugin's circuit breakers, the performance plugin's telemetry). Its agents
    /// get a role of their own, `compat.tools.N`.
    pub fn with_kernel(kernel: Kernel) -> Self {
        Self::build(kernel, false)
    }

    fn build(kernel: Kernel, owns_kernel: bool) -> Self {
        let id = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        let registry = Arc::new(Registry {
            id,
            calls: RwLock::new(HashMap::new()),
        });
        let reg = registry.clone();
        let driver = InprocDriver::new(move |input: TaskInput| {
            let found = reg.lookup(&input.payload);
            run_job(found, input.attempt, input.agent.get())
        })
        .shared();
        ToolsOrchestrator {
            kernel,
            owns_kernel,
            role: Arc::from(format!("compat.tools.{id}")),
            driver,
            registry,
            pool: tokio::sync::Mutex::new((0, 0)),
            capacity: AtomicU32::new(0),
            shared: Arc::new(Value::Null),
            next_call: AtomicU64::new(1),
        }
    }

    /// Sets the context shared by every task (`AgentContext::shared`).
    pub fn with_context(mut self, shared: Value) -> Self {
        self.shared = Arc::new(shared);
        self
    }

    /// The kernel.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The role of the pool's agents.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The legacy `execute_parallel(tasks, policy)`: runs independent tasks, at most
    /// `max_concurrency` at once, and returns their outcomes in input order.
    pub async fn execute_parallel(
        &self,
        tasks: Vec<TaskSpec>,
        policy: &OrchestrationPolicy,
    ) -> Result<OrchestrationResult, ToolsError> {
        exec::parallel(self, tasks, policy).await
    }

    /// The legacy `execute_graph(graph, policy)`: runs a DAG, each task once all its
    /// dependencies succeeded, at most `max_concurrency` at once.
    pub async fn execute_graph(
        &self,
        graph: TaskGraph,
        policy: &OrchestrationPolicy,
    ) -> Result<OrchestrationResult, ToolsError> {
        exec::graph(self, graph, policy).await
    }

    /// Stops the kernel if the orchestrator built it (its agents finish their tasks first);
    /// on a caller's kernel, shuts the pool's agents down only.
    pub async fn shutdown(self) {
        if self.owns_kernel {
            self.kernel.shutdown(ShutdownMode::Graceful).await;
        } else {
            for id in self.kernel.agents_with_role(&self.role) {
                let _ = self.kernel.shutdown_agent(id, ShutdownMode::Graceful).await;
            }
        }
    }

    /// Grows the pool to at least `n` slots.
    async fn ensure_capacity(&self, n: usize) -> Result<(), ToolsError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if self.capacity.load(Ordering::Acquire) >= n {
            return Ok(());
        }
        let mut pool = self.pool.lock().await;
        let (agents, cap) = &mut *pool;
        while *cap < n {
            let c = if *agents < MAX_POOL_AGENTS {
                1
            } else {
                n - *cap
            };
            self.kernel
                .spawn_agent(AgentSpec::new(&*self.role, self.driver.clone()).with_capacity(c))
                .await?;
            *agents += 1;
            *cap += c;
        }
        self.capacity.store(*cap, Ordering::Release);
        Ok(())
    }

    /// Registers a call's tasks; the guard unregisters them.
    fn register(
        &self,
        specs: Vec<TaskSpec>,
        ids: Vec<Arc<str>>,
    ) -> Result<(u64, CallGuard<'_>, Arc<CallTable>), ToolsError> {
        if specs.len() > u32::MAX as usize {
            return Err(ToolsError::TooManyTasks(specs.len()));
        }
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let table = Arc::new(CallTable {
            specs,
            ids,
            shared: self.shared.clone(),
        });
        self.registry.calls.write().insert(call, table.clone());
        Ok((
            call,
            CallGuard {
                registry: &self.registry,
                call,
            },
            table,
        ))
    }
}

/// One attempt of a job on a pool agent: build the agent, run it, catch its panics.
async fn run_job(
    found: Option<(Arc<CallTable>, usize)>,
    attempt: u32,
    agent: u64,
) -> Result<Value, TaskError> {
    let Some((table, idx)) = found else {
        return Err(TaskError::permanent(
            "no such task: its call has ended (the orchestrator's pool ran a stray task)",
        ));
    };
    let (Some(job), Some(id)) = (table.specs.get(idx), table.ids.get(idx)) else {
        return Err(TaskError::permanent("no such task in its call"));
    };
    let ctx = AgentContext {
        task_id: id.clone(),
        attempt,
        agent,
        shared: table.shared.clone(),
    };
    let run = AssertUnwindSafe(async {
        let a = (job.agent_factory)(&ctx);
        a.run(&job.prompt, &job.params).await
    })
    .catch_unwind()
    .await;
    match run {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(if e.is::<PermanentError>() {
            TaskError::permanent(e.to_string())
        } else {
            TaskError::new(e.to_string())
        }),
        Err(panic) => Err(TaskError::new(format!(
            "agent panicked: {}",
            panic_message(&*panic)
        ))),
    }
}

/// The legacy `execute_parallel(tasks, policy)` on a fresh orchestrator (its own kernel on
/// the current tokio runtime, shut down before returning). Keep a [`ToolsOrchestrator`] to
/// reuse one kernel across calls.
pub async fn execute_parallel(
    tasks: Vec<TaskSpec>,
    policy: &OrchestrationPolicy,
) -> Result<OrchestrationResult, ToolsError> {
    let o = ToolsOrchestrator::new().await?;
    let r = o.execute_parallel(tasks, policy).await;
    o.shutdown().await;
    r
}

/// The legacy `execute_graph(graph, policy)` on a fresh orchestrator (see
/// [`execute_parallel`]).
pub async fn execute_graph(
    graph: TaskGraph,
    policy: &OrchestrationPolicy,
) -> Result<OrchestrationResult, ToolsError> {
    let o = ToolsOrchestrator::new().await?;
    let r = o.execute_graph(graph, policy).await;
    o.shutdown().await;
    r
}

/// The message of a caught panic (`&str` or `String` payloads; other payloads say so).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}
