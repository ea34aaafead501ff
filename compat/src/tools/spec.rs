//! The tools orchestrator's task shapes: the `Agent` trait, the `AgentContext` a factory gets,
//! and `TaskSpec { agent_factory, prompt, params, id }`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

/// What an agent's `run` returns when it fails: any error. It is retried under the policy's
/// `retry`, unless it is a [`PermanentError`].
pub type AgentError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error that retrying cannot fix: return it (boxed) from [`Agent::run`] and the task ends
/// `failed` at once, whatever attempts remain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PermanentError(pub String);

impl PermanentError {
    /// A permanent error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PermanentError(message.into())
    }
}

/// The legacy `Agent`: something that runs one prompt with its params. Made by a task's
/// `agent_factory`, once per attempt, and run on one of the orchestrator's in-process kernel
/// agents.
#[async_trait]
pub trait Agent: Send + Sync {
    /// Runs the prompt; the value is the task's output (`output`, and `artifacts` when it is
    /// an object with an `artifacts` member).
    async fn run(&self, prompt: &str, params: &Map<String, Value>) -> Result<Value, AgentError>;
}

/// What an `agent_factory` gets: the legacy shared `AgentContext`, plus where the attempt runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentContext {
    /// The task's id (its `id`, or `task-N` for the N-th task, 1-based).
    pub task_id: Arc<str>,
    /// The attempt, 1-based.
    pub attempt: u32,
    /// The kernel agent running the attempt (the `agent` of the task's outcome).
    pub agent: u64,
    /// The context shared by every task of the orchestrator
    /// ([`crate::tools::ToolsOrchestrator::with_context`]); `null` by default.
    pub shared: Arc<Value>,
}

/// `agent_factory`: builds the agent of one attempt.
pub type AgentFactory = Arc<dyn Fn(&AgentContext) -> Box<dyn Agent> + Send + Sync + 'static>;

/// An [`Agent`] made of an async closure over (prompt, params), for [`agent_fn`].
pub struct FnAgent<F> {
    f: F,
}

impl<F> fmt::Debug for FnAgent<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnAgent")
    }
}

#[async_trait]
impl<F, Fut> Agent for FnAgent<F>
where
    F: Fn(String, Map<String, Value>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Value, AgentError>> + Send,
{
    async fn run(&self, prompt: &str, params: &Map<String, Value>) -> Result<Value, AgentError> {
        (self.f)(prompt.to_owned(), params.clone()).await
    }
}

/// An agent from an async closure that takes the prompt and the params (owned copies).
///
/// ```
/// use hive_compat::tools::{agent_fn, TaskSpec};
/// use serde_json::json;
///
/// let task = TaskSpec::new(
///     |_ctx| agent_fn(|prompt, _params| async move { Ok(json!({"echo": prompt})) }),
///     "hello",
/// );
/// # let _ = task;
/// ```
pub fn agent_fn<F, Fut>(f: F) -> Box<dyn Agent>
where
    F: Fn(String, Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, AgentError>> + Send + 'static,
{
    Box::new(FnAgent { f })
}

/// The legacy `TaskSpec`: `{agent_factory, prompt, params?, id?}`, plus the Hive extras a
/// task may carry (a cost estimate and its own timeout).
#[derive(Clone)]
#[non_exhaustive]
pub struct TaskSpec {
    /// Builds the agent of each attempt.
    pub agent_factory: AgentFactory,
    /// The prompt handed to [`Agent::run`].
    pub prompt: String,
    /// The params handed to [`Agent::run`]; a numeric `cost` member is the cost estimate
    /// unless [`TaskSpec::with_cost`] set one.
    pub params: Map<String, Value>,
    /// The id; `task-N` (1-based position) when `None`.
    pub id: Option<String>,
    /// Cost estimate, for `cost_budget` and `shortest_first` (wins over `params.cost`).
    pub cost: Option<f64>,
    /// Per-attempt timeout of this task (wins over the policy's `timeout_s`).
    pub timeout: Option<Duration>,
}

impl fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpec")
            .field("id", &self.id)
            .field("prompt", &self.prompt)
            .field("params", &self.params)
            .field("cost", &self.cost)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TaskSpec {
    /// A task whose attempts run an agent from `agent_factory` on `prompt`, with no params.
    pub fn new<F>(agent_factory: F, prompt: impl Into<String>) -> Self
    where
        F: Fn(&AgentContext) -> Box<dyn Agent> + Send + Sync + 'static,
    {
        Self::with_factory(Arc::new(agent_factory), prompt)
    }

    /// The same with a shared factory (one `Arc` for many tasks).
    pub fn with_factory(agent_factory: AgentFactory, prompt: impl Into<String>) -> Self {
        TaskSpec {
            agent_factory,
            prompt: prompt.into(),
            params: Map::new(),
            id: None,
            cost: None,
            timeout: None,
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the params.
    pub fn with_params(mut self, params: Map<String, Value>) -> Self {
        self.params = params;
        self
    }

    /// Sets one param.
    pub fn with_param(mut self, key: impl Into<String>, value: Value) -> Self {
        self.params.insert(key.into(), value);
        self
    }

    /// Sets the cost estimate.
    pub fn with_cost(mut self, cost: f64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Sets this task's per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The cost estimate: [`TaskSpec::cost`], else a numeric `params.cost`, else none.
    pub fn cost_estimate(&self) -> Option<f64> {
        self.cost
            .or_else(|| self.params.get("cost").and_then(Value::as_f64))
    }
}
