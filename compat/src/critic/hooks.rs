//! `OrchestratorHooks { pre_execution, post_execution, on_failure }`, and how a hook's failure
//! (an error or a panic) is caught, logged and ignored.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;

use super::result::{CriticResult, ErrorInfo, ExecutionStatus};

/// What a hook returns when it fails. A failing hook is logged and ignored.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the failure hook is told.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CriticFailure {
    /// `timeout` or `error`.
    pub status: ExecutionStatus,
    /// The error metadata of the template.
    pub error: ErrorInfo,
    /// How long the critic ran, in milliseconds.
    pub duration_ms: f64,
}

type PreFn = dyn Fn(Arc<str>, Arc<Value>) -> BoxFuture<'static, Result<Option<Value>, HookError>>
    + Send
    + Sync;
type PostFn = dyn Fn(Arc<str>, Arc<CriticResult>, f64) -> BoxFuture<'static, Result<(), HookError>>
    + Send
    + Sync;
type FailFn = dyn Fn(Arc<str>, CriticFailure) -> BoxFuture<'static, Result<Option<Value>, HookError>>
    + Send
    + Sync;

/// The legacy `OrchestratorHooks(pre_execution=..., post_execution=..., on_failure=...)`:
/// three optional async hooks. Each gets owned (shared) arguments, so that a hook is a plain
/// `move` closure returning an `async move` block.
#[derive(Clone, Default)]
pub struct OrchestratorHooks {
    pub(crate) pre_execution: Option<Arc<PreFn>>,
    pub(crate) post_execution: Option<Arc<PostFn>>,
    pub(crate) on_failure: Option<Arc<FailFn>>,
}

impl std::fmt::Debug for OrchestratorHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorHooks")
            .field("pre_execution", &self.pre_execution.is_some())
            .field("post_execution", &self.post_execution.is_some())
            .field("on_failure", &self.on_failure.is_some())
            .finish()
    }
}

impl OrchestratorHooks {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// `pre_execution(critic_name, input)`, before a critic runs: `Some(result)` is a cache
    /// hit (the critic does not run; its result is a success with `cached: true`), `None`
    /// lets it run. A failure counts as `None`.
    pub fn pre_execution<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Arc<str>, Arc<Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Value>, HookError>> + Send + 'static,
    {
        self.pre_execution = Some(Arc::new(move |name, input| f(name, input).boxed()));
        self
    }

    /// `post_execution(critic_name, result, duration_ms)`, once per critic with its final
    /// result (successes, cache hits, templates and degraded results alike).
    pub fn post_execution<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Arc<str>, Arc<CriticResult>, f64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HookError>> + Send + 'static,
    {
        self.post_execution = Some(Arc::new(move |name, result, ms| {
            f(name, result, ms).boxed()
        }));
        self
    }

    /// `on_failure(critic_name, failure)`, when a critic timed out or failed: `Some(value)` is
    /// a degraded result (it becomes `result`, with `degraded: true`; the status stays
    /// `timeout` or `error`), `None` keeps the template. A failure counts as `None`.
    pub fn on_failure<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Arc<str>, CriticFailure) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Value>, HookError>> + Send + 'static,
    {
        self.on_failure = Some(Arc::new(move |name, failure| f(name, failure).boxed()));
        self
    }
}

/// Calls a hook, turning an error or a panic (in the call or in its future) into a message,
/// logged with the critic's and the hook's names.
pub(crate) async fn guarded<T>(
    critic: &str,
    hook: &'static str,
    call: impl FnOnce() -> BoxFuture<'static, Result<T, HookError>>,
) -> Result<T, String> {
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{hook}: {e}"),
            Err(p) => format!("{hook}: panicked: {}", crate::tools::panic_message(&*p)),
        },
        Err(p) => format!("{hook}: panicked: {}", crate::tools::panic_message(&*p)),
    };
    tracing::warn!(critic, hook, error = %outcome, "critic hook failed; ignored");
    Err(outcome)
}
