//! The critic orchestrator of seed 000 (`engine/orchestrator/orchestrator_v2.py`):
//! `OrchestratorV2` over named critics, `OrchestratorHooks { pre_execution, post_execution,
//! on_failure }`, `run_all(input)` and the blocking `run_all_sync`, over one Hive kernel.
//!
//! Each critic is an in-process kernel agent of its own role; `run_all` submits one kernel
//! task per critic (the input is the task's payload, shared, not copied) with the critic's
//! timeout, so critics run concurrently on the kernel's workers, every run is in the kernel's
//! events and health (latency per critic role), and a critic that hangs is cut at its
//! timeout. The hooks run in the caller's `run_all` future, around each critic's task.
//! docs/compat/critic.md puts every legacy call beside its Hive call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hive_compat::critic::{critic_fn, ExecutionStatus, OrchestratorV2};
//! use serde_json::json;
//!
//! let orchestrator = OrchestratorV2::new([(
//!     "test",
//!     critic_fn(|input| async move { Ok(json!({"score": 1, "seen": *input})) }),
//! )])
//! .await?;
//! let results = orchestrator.run_all(json!({"text": "hello"})).await;
//! assert_eq!(results["test"].execution_status, ExecutionStatus::Success);
//! # Ok(()) }
//! ```

mod hooks;
mod result;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use hive_kernel::{
    AgentSpec, BuildError, InprocDriver, Kernel, Outcome, ShutdownMode, SpawnError, TaskError,
    TaskInput, TaskSpec, Timestamp,
};
use serde_json::{json, Value};

pub use hooks::{CriticFailure, HookError, OrchestratorHooks};
pub use result::{CriticResult, ErrorInfo, ExecutionStatus};

/// What `run_all` returns: each critic's result by name.
pub type CriticResults = BTreeMap<String, CriticResult>;

/// The timeout of critics that set none, unless the builder changes it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Tasks one critic runs at once (concurrent `run_all` calls beyond it wait in its queue),
/// unless the builder changes it.
pub const DEFAULT_CAPACITY: u32 = 64;

/// Why a critic failed: an error type and a message (the error metadata of the error
/// template). Any `std::error::Error` converts into it with `?`, its type being the error's
/// Rust type name; like `anyhow::Error`, it does not implement `std::error::Error` itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriticError {
    /// The error's type (`error.type` in the result).
    pub error_type: String,
    /// What went wrong (`error.message`).
    pub message: String,
}

impl CriticError {
    /// An error of type `error_type`.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        CriticError {
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// An error of type `CriticError`.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new("CriticError", message)
    }
}

impl fmt::Display for CriticError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl<E: std::error::Error> From<E> for CriticError {
    fn from(e: E) -> Self {
        CriticError::new(short_type_name::<E>(), e.to_string())
    }
}

/// `io::Error` for `std::io::Error`, `ParseIntError` for `core::num::ParseIntError`.
fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// A critic: an async evaluation of the shared input. Closures
/// `Fn(Arc<Value>) -> impl Future<Output = Result<Value, CriticError>>` are critics.
#[async_trait]
pub trait Critic: Send + Sync + 'static {
    /// Evaluates the input.
    async fn evaluate(&self, input: Arc<Value>) -> Result<Value, CriticError>;
}

#[async_trait]
impl<F, Fut> Critic for F
where
    F: Fn(Arc<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, CriticError>> + Send + 'static,
{
    async fn evaluate(&self, input: Arc<Value>) -> Result<Value, CriticError> {
        (self)(input).await
    }
}

/// A shared critic from an async closure.
pub fn critic_fn<F, Fut>(f: F) -> Arc<dyn Critic>
where
    F: Fn(Arc<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, CriticError>> + Send + 'static,
{
    Arc::new(f)
}

/// Why an orchestrator could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// Two critics have the same name.
    #[error("duplicate critic `{0}`")]
    DuplicateCritic(String),
    /// A critic's name is empty.
    #[error("a critic's name is empty")]
    EmptyName,
    /// A timeout names no critic.
    #[error("timeout set for `{0}`, which is not a critic")]
    UnknownCritic(String),
    /// A timeout of zero.
    #[error("the timeout of {0} must be more than zero")]
    ZeroTimeout(String),
    /// The kernel could not be built.
    #[error("cannot start the orchestrator's kernel: {0}")]
    Build(#[from] BuildError),
    /// A critic's agent could not be spawned.
    #[error("cannot start a critic's agent: {0}")]
    Spawn(#[from] SpawnError),
    /// `build_sync` could not create its runtime.
    #[error("cannot create the orchestrator's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// `build_sync` was called on a thread that runs inside a tokio runtime.
    #[error("build_sync was called inside a tokio runtime: use `build().await` there")]
    InsideRuntime,
}

/// Why `run_all_sync` refused to block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Called on a thread inside a tokio runtime, where blocking would stall (or panic):
    /// `run_all(input).await` there.
    #[error("run_all_sync was called inside a tokio runtime: use `run_all(input).await` there")]
    InsideRuntime,
    /// The orchestrator lives on a current-thread runtime, which a blocked thread cannot drive.
    #[error("run_all_sync needs a multi-thread runtime (the orchestrator was built on a current-thread runtime); build it with build_sync() or on a multi-thread runtime")]
    CurrentThreadRuntime,
}

/// Numbers orchestrators, so that each has its own roles on a shared kernel.
static NEXT_ORCHESTRATOR: AtomicU64 = AtomicU64::new(1);

/// Configures an [`OrchestratorV2`].
#[derive(Default)]
pub struct OrchestratorV2Builder {
    critics: Vec<(String, Arc<dyn Critic>)>,
    timeouts: Vec<(String, Duration)>,
    default_timeout: Option<Duration>,
    hooks: OrchestratorHooks,
    capacity: Option<u32>,
    kernel: Option<Kernel>,
}

impl fmt::Debug for OrchestratorV2Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrchestratorV2Builder")
            .field(
                "critics",
                &self.critics.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("timeouts", &self.timeouts)
            .field("default_timeout", &self.default_timeout)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

impl OrchestratorV2Builder {
    /// Adds a critic (a closure or a [`Critic`]).
    pub fn critic(self, name: impl Into<String>, critic: impl Critic) -> Self {
        self.shared_critic(name, Arc::new(critic))
    }

    /// Adds a shared critic.
    pub fn shared_critic(mut self, name: impl Into<String>, critic: Arc<dyn Critic>) -> Self {
        self.critics.push((name.into(), critic));
        self
    }

    /// The timeout of critics without their own (default [`DEFAULT_TIMEOUT`]).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// The timeout of one critic.
    pub fn timeout(mut self, critic: impl Into<String>, timeout: Duration) -> Self {
        self.timeouts.push((critic.into(), timeout));
        self
    }

    /// The hooks.
    pub fn hooks(mut self, hooks: OrchestratorHooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Tasks one critic runs at once (default [`DEFAULT_CAPACITY`]).
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = Some(n.max(1));
        self
    }

    /// Runs the critics on this kernel (for example one with plugins loaded) instead of a
    /// kernel of the orchestrator's own.
    pub fn kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = Some(kernel);
        self
    }

    fn check(&self) -> Result<HashMap<String, Duration>, SetupError> {
        let default = self.default_timeout.unwrap_or(DEFAULT_TIMEOUT);
        if default.is_zero() {
            return Err(SetupError::ZeroTimeout("default_timeout".into()));
        }
        let mut names = HashSet::new();
        for (n, _) in &self.critics {
            if n.is_empty() {
                return Err(SetupError::EmptyName);
            }
            if !names.insert(n.as_str()) {
                return Err(SetupError::DuplicateCritic(n.clone()));
            }
        }
        let mut timeouts = HashMap::new();
        for (n, t) in &self.timeouts {
            if !names.contains(n.as_str()) {
                return Err(SetupError::UnknownCritic(n.clone()));
            }
            if t.is_zero() {
                return Err(SetupError::ZeroTimeout(format!("critic `{n}`")));
            }
            timeouts.insert(n.clone(), *t);
        }
        Ok(timeouts)
    }

    /// Builds the orchestrator on the current tokio runtime: its kernel (unless one was given)
    /// and one agent per critic.
    pub async fn build(self) -> Result<OrchestratorV2, SetupError> {
        let timeouts = self.check()?;
        let default = self.default_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let (kernel, owns_kernel) = match self.kernel {
            Some(k) => (k, false),
            None => (Kernel::builder().default_timeout(default).build()?, true),
        };
        let n = NEXT_ORCHESTRATOR.fetch_add(1, Ordering::Relaxed);
        let capacity = self.capacity.unwrap_or(DEFAULT_CAPACITY);
        let mut critics = Vec::with_capacity(self.critics.len());
        for (name, critic) in self.critics {
            let role: Arc<str> = Arc::from(format!("compat.critic.{n}.{name}"));
            let driver = InprocDriver::new(move |t: TaskInput| evaluate(critic.clone(), t));
            kernel
                .spawn_agent(AgentSpec::new(&*role, driver.shared()).with_capacity(capacity))
                .await?;
            critics.push(Registered {
                timeout: timeouts.get(&name).copied().unwrap_or(default),
                name: Arc::from(name),
                role,
            });
        }
        Ok(OrchestratorV2 {
            kernel,
            owns_kernel,
            closed: AtomicBool::new(false),
            critics,
            hooks: self.hooks,
            handle,
            runtime: None,
        })
    }

    /// Builds the orchestrator from synchronous code: it gets a runtime of its own (two
    /// worker threads) for its kernel and for [`OrchestratorV2::run_all_sync`]. Refused inside
    /// a tokio runtime (use [`OrchestratorV2Builder::build`] there).
    pub fn build_sync(self) -> Result<OrchestratorV2, SetupError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(SetupError::InsideRuntime);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hive-critic")
            .enable_all()
            .build()?;
        let mut o = rt.block_on(self.build())?;
        o.runtime = Some(rt);
        Ok(o)
    }
}

/// One attempt of a critic on its agent: the critic's errors and panics become task errors
/// carrying the error type.
async fn evaluate(critic: Arc<dyn Critic>, t: TaskInput) -> Result<Value, TaskError> {
    let input = t.payload.clone();
    match AssertUnwindSafe(async move { critic.evaluate(input).await })
        .catch_unwind()
        .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(typed_error(&e.error_type, e.message)),
        Err(p) => Err(typed_error(
            "Panic",
            format!("critic panicked: {}", crate::tools::panic_message(&*p)),
        )),
    }
}

fn typed_error(error_type: &str, message: String) -> TaskError {
    let mut e = TaskError::permanent(message);
    e.detail = Some(json!({ "type": error_type }));
    e
}

/// A critic as the orchestrator runs it.
#[derive(Debug)]
struct Registered {
    name: Arc<str>,
    role: Arc<str>,
    timeout: Duration,
}

/// The legacy `OrchestratorV2`: named critics run concurrently on one kernel, each under its
/// timeout, with hooks around each. One critic's failure never fails the run; a hook's
/// failure is logged and ignored.
pub struct OrchestratorV2 {
    kernel: Kernel,
    owns_kernel: bool,
    closed: AtomicBool,
    critics: Vec<Registered>,
    hooks: OrchestratorHooks,
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for OrchestratorV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrchestratorV2")
            .field("critics", &self.critics)
            .field("hooks", &self.hooks)
            .field("own_runtime", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for OrchestratorV2 {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime: let it go in the
        // background instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl OrchestratorV2 {
    /// The legacy `OrchestratorV2(critics={...})`: these critics, no hooks, the default
    /// timeout, on a kernel of its own on the current tokio runtime.
    pub async fn new<I, S>(critics: I) -> Result<Self, SetupError>
    where
        I: IntoIterator<Item = (S, Arc<dyn Critic>)>,
        S: Into<String>,
    {
        let mut b = Self::builder();
        for (name, c) in critics {
            b = b.shared_critic(name, c);
        }
        b.build().await
    }

    /// A builder: critics, timeouts (default and per critic), hooks, capacity, kernel.
    pub fn builder() -> OrchestratorV2Builder {
        OrchestratorV2Builder::default()
    }

    /// The kernel the critics run on.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The critics' names, in the order they were added.
    pub fn critic_names(&self) -> impl Iterator<Item = &str> {
        self.critics.iter().map(|c| &*c.name)
    }

    /// The timeout of a critic.
    pub fn timeout_of(&self, critic: &str) -> Option<Duration> {
        self.critics
            .iter()
            .find(|c| &*c.name == critic)
            .map(|c| c.timeout)
    }

    /// The kernel role of a critic's agent (`compat.critic.N.NAME`), as health reports it.
    pub fn role_of(&self, critic: &str) -> Option<&str> {
        self.critics
            .iter()
            .find(|c| &*c.name == critic)
            .map(|c| &*c.role)
    }

    /// The legacy `run_all(input)`: every critic, concurrently, on this input; one result per
    /// critic, never an error.
    pub async fn run_all(&self, input: Value) -> CriticResults {
        self.run_all_shared(Arc::new(input)).await
    }

    /// [`OrchestratorV2::run_all`] with an input already shared.
    pub async fn run_all_shared(&self, input: Arc<Value>) -> CriticResults {
        let runs = self.critics.iter().map(|c| self.run_one(c, input.clone()));
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .map(|r| (r.critic.clone(), r))
            .collect()
    }

    /// The legacy blocking `run_all_sync(input)`: blocks the calling thread until `run_all`
    /// ends. Refused (with an error, not a panic) on a thread inside a tokio runtime.
    pub fn run_all_sync(&self, input: Value) -> Result<CriticResults, SyncError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(SyncError::InsideRuntime);
        }
        match &self.runtime {
            Some(rt) => Ok(rt.block_on(self.run_all(input))),
            None => {
                if self.handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
                    return Err(SyncError::CurrentThreadRuntime);
                }
                Ok(self.handle.block_on(self.run_all(input)))
            }
        }
    }

    /// Stops the kernel if the orchestrator built it (critics running finish first); on a
    /// caller's kernel, shuts the critics' agents down only. Later `run_all` calls return the
    /// error template (`OrchestratorError`) for every critic.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        if self.owns_kernel {
            self.kernel.shutdown(ShutdownMode::Graceful).await;
        } else {
            for c in &self.critics {
                for id in self.kernel.agents_with_role(&c.role) {
                    let _ = self.kernel.shutdown_agent(id, ShutdownMode::Graceful).await;
                }
            }
        }
    }

    /// One critic: pre-hook (cache), the kernel task, failure hook, post-hook.
    async fn run_one(&self, c: &Registered, input: Arc<Value>) -> CriticResult {
        let name = &*c.name;
        let mut hook_errors = Vec::new();
        let mut result = None;
        if let Some(pre) = &self.hooks.pre_execution {
            let t0 = Instant::now();
            match hooks::guarded(name, "pre_execution", || pre(c.name.clone(), input.clone())).await
            {
                Ok(Some(cached)) => {
                    let mut r = CriticResult::success(name, cached, ms(t0.elapsed()));
                    r.cached = true;
                    result = Some(r);
                }
                Ok(None) => {}
                Err(e) => hook_errors.push(e),
            }
        }
        let mut result = match result {
            Some(r) => r,
            None => self.execute(c, input, &mut hook_errors).await,
        };
        if let Some(post) = &self.hooks.post_execution {
            let shared = Arc::new(result);
            let d = shared.duration_ms;
            let posted = hooks::guarded(name, "post_execution", || {
                post(c.name.clone(), shared.clone(), d)
            })
            .await;
            result = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
            if let Err(e) = posted {
                hook_errors.push(e);
            }
        }
        result.hook_errors = hook_errors;
        result
    }

    /// Runs a critic's kernel task; a failure becomes a template, or the failure hook's
    /// degraded result.
    async fn execute(
        &self,
        c: &Registered,
        input: Arc<Value>,
        hook_errors: &mut Vec<String>,
    ) -> CriticResult {
        let name = &*c.name;
        // The timeout is the critic's wall time from its submission: the deadline also
        // covers waiting for a slot of its agent (concurrent runs beyond its capacity).
        let deadline = Timestamp(
            Timestamp::now()
                .micros()
                .saturating_add(c.timeout.as_micros().min(u64::MAX as u128) as u64),
        );
        let mut spec = TaskSpec::for_role(&*c.role, Value::Null)
            .with_timeout(c.timeout)
            .with_deadline(deadline);
        spec.payload = input;
        spec.name = Some(c.name.clone());
        let t0 = Instant::now();
        let outcome = if self.closed.load(Ordering::Acquire) {
            Outcome::Failed(typed_error(
                "OrchestratorError",
                format!("critic `{name}` could not be run: the orchestrator was shut down"),
            ))
        } else {
            match self.kernel.submit(spec).await {
                Ok(h) => h.await.outcome,
                Err(e) => Outcome::Failed(typed_error(
                    "OrchestratorError",
                    format!("critic `{name}` could not be run: {e}"),
                )),
            }
        };
        let d = ms(t0.elapsed());
        let mut r = match outcome {
            Outcome::Succeeded(v) | Outcome::Cached(v) => return CriticResult::success(name, v, d),
            Outcome::TimedOut => CriticResult::timeout_template(name, c.timeout, d),
            Outcome::Failed(e) => {
                let error_type = e
                    .detail
                    .as_ref()
                    .and_then(|v| v.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("OrchestratorError")
                    .to_string();
                CriticResult::error_template(
                    name,
                    ErrorInfo {
                        error_type,
                        message: e.message,
                    },
                    d,
                )
            }
            Outcome::Cancelled => CriticResult::error_template(
                name,
                ErrorInfo {
                    error_type: "OrchestratorError".into(),
                    message: format!("critic `{name}` was cancelled (its kernel is shutting down)"),
                },
                d,
            ),
            other => CriticResult::error_template(
                name,
                ErrorInfo {
                    error_type: "OrchestratorError".into(),
                    message: format!("critic `{name}` ended {}", other.status()),
                },
                d,
            ),
        };
        if let Some(fail) = &self.hooks.on_failure {
            let failure = CriticFailure {
                status: r.execution_status,
                error: r.error.clone().unwrap_or(ErrorInfo {
                    error_type: "OrchestratorError".into(),
                    message: String::new(),
                }),
                duration_ms: d,
            };
            match hooks::guarded(name, "on_failure", || fail(c.name.clone(), failure)).await {
                Ok(Some(v)) => {
                    r.result = Some(v);
                    r.degraded = true;
                }
                Ok(None) => {}
                Err(e) => hook_errors.push(e),
            }
        }
        r
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
