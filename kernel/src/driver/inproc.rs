//! The `inproc` driver: tasks are async Rust functions run on the kernel's runtime.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{AgentContext, AgentHandle, Driver, DriverError, TaskContext};
use crate::agent::ShutdownMode;
use crate::ids::{AgentId, TaskId};
use crate::task::TaskError;

/// What an inproc function receives.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// The task.
    pub task: TaskId,
    /// 1-based attempt.
    pub attempt: u32,
    /// The agent running it.
    pub agent: AgentId,
    /// The payload.
    pub payload: Arc<Value>,
    /// Cancelled when the attempt must stop; the future is dropped right after.
    pub cancel: CancellationToken,
}

type Handler = dyn Fn(TaskInput) -> BoxFuture<'static, Result<Value, TaskError>> + Send + Sync;

/// Runs tasks as calls of an async function.
#[derive(Clone)]
pub struct InprocDriver {
    f: Arc<Handler>,
}

impl fmt::Debug for InprocDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InprocDriver")
    }
}

impl InprocDriver {
    /// A driver whose agents run `f` for every task.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(TaskInput) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        InprocDriver {
            f: Arc::new(move |input| Box::pin(f(input))),
        }
    }

    /// As an `Arc<dyn Driver>` for an [`crate::AgentSpec`].
    pub fn shared(self) -> Arc<dyn Driver> {
        Arc::new(self)
    }
}

fn panicked(p: &(dyn std::any::Any + Send)) -> TaskError {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    TaskError::new(format!("the task's function panicked: {msg}"))
}

struct InprocAgent {
    agent: AgentId,
    f: Arc<Handler>,
}

#[async_trait]
impl Driver for InprocDriver {
    fn name(&self) -> &str {
        "inproc"
    }

    async fn start(&self, ctx: AgentContext) -> Result<Arc<dyn AgentHandle>, DriverError> {
        Ok(Arc::new(InprocAgent {
            agent: ctx.agent,
            f: self.f.clone(),
        }))
    }
}

#[async_trait]
impl AgentHandle for InprocAgent {
    async fn execute(&self, task: TaskContext) -> Result<Value, TaskError> {
        use futures_util::FutureExt;
        use std::panic::AssertUnwindSafe;
        // A panic in the function (building its future, or polling it) is the attempt's
        // error, never a lost worker holding a slot forever.
        let input = TaskInput {
            task: task.task,
            attempt: task.attempt,
            agent: self.agent,
            payload: task.payload,
            cancel: task.cancel.clone(),
        };
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.f)(input))) {
            Ok(fut) => fut,
            Err(p) => return Err(panicked(&*p)),
        };
        tokio::select! {
            biased;
            r = AssertUnwindSafe(fut).catch_unwind() => r.unwrap_or_else(|p| Err(panicked(&*p))),
            _ = task.cancel.cancelled() => Err(TaskError::new("interrupted")),
        }
    }

    async fn stop(&self, _mode: ShutdownMode) {}
}
