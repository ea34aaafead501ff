//! The kernel: agent registry, routing, the task lifecycle (attempts, timeouts, retries,
//! deadlines, cancellation), leases, batches and shutdown.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

/// Maps keyed by sequential ids: FxHash is enough (no untrusted keys) and far cheaper.
pub(crate) type IdMap<K, V> = DashMap<K, V, FxBuildHasher>;
use futures_util::stream::{FuturesUnordered, StreamExt};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::{AgentCell, AgentInfo, AgentSpec, AgentState, Lease, ShutdownMode};
use crate::driver::{AgentContext, AgentLink, TaskContext};
use crate::error::{BuildError, ShutdownError, SpawnError, SubmitError};
use crate::event::{kind, Event, EventBus, EventStream, JsonlSink};
use crate::health::RoleStats;
use crate::ids::{AgentId, BatchId, TaskId, Timestamp};
use crate::plugin::{
    abi_target, kernel_target, PluginLoadError, PluginSet, PluginSpec, QuarantinePolicy,
};
use crate::queue::{Pushed, QueueKey, QueueOrder, TaskQueue};
use crate::task::{AttemptRecord, AttemptStatus, Outcome, Target, TaskError, TaskResult, TaskSpec};

/// How a role hands its tasks to its agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Dispatch {
    /// Agents with a free slot pull the next task from the role's queue (work stealing).
    #[default]
    Pull,
    /// Push to the less loaded of two agents picked at random (power of two choices).
    LeastLoaded,
    /// Push to the agents in turn.
    RoundRobin,
    /// Push by the task's affinity key (rendezvous hashing); least_loaded without a key.
    Affinity,
}

/// A role's routing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RoleConfig {
    /// How tasks reach agents.
    pub dispatch: Dispatch,
    /// Queue order.
    pub order: QueueOrder,
    /// Tasks waiting at most (backpressure beyond); the kernel's default when `None`.
    pub queue_capacity: Option<usize>,
}

impl RoleConfig {
    /// The defaults: pull, priority order, the kernel's queue capacity.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the dispatch policy.
    pub fn dispatch(&mut self, d: Dispatch) -> &mut Self {
        self.dispatch = d;
        self
    }
    /// Sets the queue order.
    pub fn order(&mut self, o: QueueOrder) -> &mut Self {
        self.order = o;
        self
    }
    /// Sets the queue capacity.
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = Some(n);
        self
    }
}

/// What happens to a batch's other tasks when one of them ends badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancellation {
    /// A task that fails, times out or is cancelled cancels every task of the batch not yet
    /// ended.
    Cascading,
    /// Each task ends on its own.
    #[default]
    Isolated,
}

/// The order in which a batch submits its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fairness {
    /// Input order, interleaved across targets so that no target starves another.
    #[default]
    RoundRobin,
    /// Lowest cost estimate first.
    ShortestFirst,
}

/// Settings of [`Kernel::run_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchOptions {
    /// Tasks of the batch in the kernel at once.
    pub max_concurrency: usize,
    /// What one bad outcome does to the others.
    pub cancellation: Cancellation,
    /// Submission order.
    pub fairness: Fairness,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_concurrency: 8,
            cancellation: Cancellation::Isolated,
            fairness: Fairness::RoundRobin,
        }
    }
}

impl BatchOptions {
    /// At most `n` at once, isolated, round robin.
    pub fn new(n: usize) -> Self {
        BatchOptions {
            max_concurrency: n.max(1),
            ..Self::default()
        }
    }
    /// Sets the cancellation policy.
    pub fn cancellation(mut self, c: Cancellation) -> Self {
        self.cancellation = c;
        self
    }
    /// Sets the submission order.
    pub fn fairness(mut self, f: Fairness) -> Self {
        self.fairness = f;
        self
    }
}

/// The results of a batch, in input order.
#[derive(Clone, Debug)]
pub struct BatchResult {
    /// The batch.
    pub id: BatchId,
    /// One per input task, same order.
    pub results: Vec<TaskResult>,
    /// From the first submit to the last outcome.
    pub wall: Duration,
}

impl BatchResult {
    /// Sum of run times over the wall time.
    pub fn speedup_vs_serial(&self) -> f64 {
        let serial: f64 = self
            .results
            .iter()
            .map(|r| r.run_time().as_secs_f64())
            .fold(0.0, |a, b| a + b);
        let wall = self.wall.as_secs_f64();
        if wall > 0.0 {
            serial / wall
        } else {
            0.0
        }
    }

    /// Whether every task succeeded (or was cached).
    pub fn all_succeeded(&self) -> bool {
        self.results.iter().all(|r| r.outcome.is_success())
    }
}

/// Configures and builds a [`Kernel`].
#[derive(Clone, Debug)]
pub struct KernelBuilder {
    default_timeout: Duration,
    grace: Duration,
    queue_capacity: usize,
    event_capacity: usize,
    seed: Option<u64>,
    starved_role_timeout: Option<Duration>,
}

impl Default for KernelBuilder {
    fn default() -> Self {
        KernelBuilder {
            default_timeout: Duration::from_secs(300),
            grace: Duration::from_secs(5),
            queue_capacity: 10_000,
            event_capacity: 8192,
            seed: None,
            starved_role_timeout: None,
        }
    }
}

impl KernelBuilder {
    /// The defaults: 300 s timeout, 5 s grace, 10,000 queued per role, random seed.
    pub fn new() -> Self {
        Self::default()
    }
    /// Per-attempt timeout of tasks that set none.
    pub fn default_timeout(&mut self, d: Duration) -> &mut Self {
        self.default_timeout = d;
        self
    }
    /// SIGTERM-to-SIGKILL and cancel-acknowledgement grace.
    pub fn grace_period(&mut self, d: Duration) -> &mut Self {
        self.grace = d;
        self
    }
    /// Tasks waiting per role at most, by default.
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = n;
        self
    }
    /// Events buffered per subscriber before the slowest loses the oldest.
    pub fn event_capacity(&mut self, n: usize) -> &mut Self {
        self.event_capacity = n;
        self
    }
    /// Seed of retry jitter and of power-of-two choices (reproducible runs).
    pub fn seed(&mut self, seed: u64) -> &mut Self {
        self.seed = Some(seed);
        self
    }

    /// Fails the tasks waiting for a role that has had no live agent (none starting,
    /// ready, busy or draining) for this long: "nothing can run it" instead of waiting
    /// forever (Airflow's queued-task timeout, Temporal's schedule-to-start). Off by default;
    /// `hive` sets it from `[kernel] starved_role_timeout_s` (default 30 s).
    pub fn starved_role_timeout(&mut self, d: Duration) -> &mut Self {
        self.starved_role_timeout = Some(d);
        self
    }

    /// Builds the kernel. Must be called inside a tokio runtime.
    pub fn build(&self) -> Result<Kernel, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        if self.queue_capacity == 0 {
            return Err(BuildError::Invalid {
                setting: "queue_capacity",
                reason: "must be at least 1".into(),
            });
        }
        if self.default_timeout.is_zero() {
            return Err(BuildError::Invalid {
                setting: "default_timeout",
                reason: "must be more than zero".into(),
            });
        }
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| Inner {
            me: me.clone(),
            rt,
            epoch: Instant::now(),
            started_at: Timestamp::now(),
            default_timeout: self.default_timeout,
            grace: self.grace,
            queue_capacity: self.queue_capacity,
            seed: self.seed.unwrap_or_else(|| fastrand::u64(..)),
            bus: EventBus::new(self.event_capacity),
            agents: IdMap::with_hasher(FxBuildHasher),
            roles: DashMap::new(),
            caps: DashMap::new(),
            tasks: IdMap::with_hasher(FxBuildHasher),
            batches: IdMap::with_hasher(FxBuildHasher),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            stop: CancellationToken::new(),
            lease_period_ms: AtomicU64::new(0),
            terminal: Mutex::new(VecDeque::new()),
            completed: AtomicU64::new(0),
            plugins: std::sync::OnceLock::new(),
            templates: DashMap::new(),
            starved_role_timeout: self.starved_role_timeout,
        });
        Ok(Kernel { inner })
    }
}

/// The kernel. Cheap to clone (an `Arc`); all methods take `&self`.
#[derive(Clone)]
pub struct Kernel {
    inner: Arc<Inner>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("agents", &self.inner.agents.len())
            .field("tasks", &self.inner.tasks.len())
            .finish_non_exhaustive()
    }
}

/// A submitted task: await it for its [`TaskResult`]. Dropping it does not cancel the task.
#[derive(Debug)]
pub struct TaskHandle {
    id: TaskId,
    name: Option<Arc<str>>,
    queued_at: Timestamp,
    rx: oneshot::Receiver<TaskResult>,
}

impl TaskHandle {
    /// The task.
    pub fn id(&self) -> TaskId {
        self.id
    }
}

impl Future for TaskHandle {
    type Output = TaskResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskResult> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => Poll::Ready(TaskResult {
                id: self.id,
                name: self.name.clone(),
                outcome: Outcome::Failed(TaskError::new(
                    "the kernel stopped before the task ended",
                )),
                attempts: Vec::new(),
                queued_at: self.queued_at,
                started_at: None,
                finished_at: Timestamp::now(),
            }),
            Poll::Pending => Poll::Pending,
        }
    }
}

// ------------------------------------------------------------------------------ internals --

pub(crate) struct RoleState {
    pub(crate) name: Arc<str>,
    pub(crate) dispatch: Dispatch,
    pub(crate) queue: Arc<TaskQueue>,
    permits: Arc<Semaphore>,
    pub(crate) capacity: usize,
    pub(crate) agents: RwLock<Vec<Arc<AgentCell>>>,
    rr: AtomicUsize,
    pub(crate) stats: RoleStats,
    /// A starvation check is pending.
    starve_armed: AtomicBool,
}

impl RoleState {
    fn new(name: Arc<str>, is_capability: bool, cfg: RoleConfig, default_cap: usize) -> Self {
        let capacity = cfg.queue_capacity.unwrap_or(default_cap).max(1);
        let label: Arc<str> = if is_capability {
            Arc::from(format!("capability {name}"))
        } else {
            name.clone()
        };
        RoleState {
            queue: Arc::new(TaskQueue::new(label, cfg.order)),
            name,
            dispatch: cfg.dispatch,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            agents: RwLock::new(Vec::new()),
            rr: AtomicUsize::new(0),
            starve_armed: AtomicBool::new(false),
            stats: RoleStats::new(),
        }
    }
}

enum Phase {
    /// Waiting in a queue (or about to be).
    Queued {
        queue: Arc<TaskQueue>,
        key: QueueKey,
    },
    /// An attempt runs (or is about to start) on an agent.
    Running {
        attempt: u32,
        token: CancellationToken,
    },
    /// Between attempts.
    Backoff,
    /// Ended; the result was delivered.
    Done,
}

struct TaskRun {
    phase: Phase,
    attempts: Vec<AttemptRecord>,
    tx: Option<oneshot::Sender<TaskResult>>,
    cancel_requested: bool,
    /// Where a plugin sent it instead of its spec's target.
    reroute: Option<Target>,
    /// Deferrals and reroutes by plugins so far (capped, so no plugin can livelock a task).
    redirects: u32,
    /// When its next attempt became due, if it was retried (queue wait counts from here).
    due_at: Option<Timestamp>,
}

pub(crate) struct TaskEntry {
    pub(crate) id: TaskId,
    pub(crate) spec: TaskSpec,
    route: Arc<RoleState>,
    batch: Option<Arc<BatchCell>>,
    queued_at: Timestamp,
    st: Mutex<TaskRun>,
    /// Its payload as JSON, for plugins' decision hooks (built once).
    payload_json: std::sync::OnceLock<String>,
}

struct BatchCell {
    id: BatchId,
    cancellation: Cancellation,
    cancelled: AtomicBool,
    members: Mutex<Vec<TaskId>>,
}

/// An attempt to start after locks are released.
struct Start {
    agent: Arc<AgentCell>,
    entry: Arc<TaskEntry>,
    attempt: u32,
    token: CancellationToken,
}

enum Interrupt {
    Timeout(Duration),
    Cancel,
    AgentLost,
}

pub(crate) struct Inner {
    me: Weak<Inner>,
    rt: tokio::runtime::Handle,
    pub(crate) epoch: Instant,
    pub(crate) started_at: Timestamp,
    default_timeout: Duration,
    pub(crate) grace: Duration,
    queue_capacity: usize,
    seed: u64,
    pub(crate) bus: EventBus,
    pub(crate) agents: IdMap<AgentId, Arc<AgentCell>>,
    pub(crate) roles: DashMap<Arc<str>, Arc<RoleState>>,
    pub(crate) caps: DashMap<Arc<str>, Arc<RoleState>>,
    pub(crate) tasks: IdMap<TaskId, Arc<TaskEntry>>,
    batches: IdMap<BatchId, Arc<BatchCell>>,
    next_id: AtomicU64,
    closing: AtomicBool,
    pub(crate) stop: CancellationToken,
    lease_period_ms: AtomicU64,
    terminal: Mutex<VecDeque<AgentId>>,
    pub(crate) completed: AtomicU64,
    pub(crate) plugins: std::sync::OnceLock<Arc<PluginSet>>,
    /// Per role, how to build one more agent (pools register theirs; plugins' `spawn_agent`
    /// copies them).
    templates: DashMap<Arc<str>, AgentSpec>,
    /// See [`KernelBuilder::starved_role_timeout`].
    starved_role_timeout: Option<Duration>,
}

impl Kernel {
    /// A builder with the defaults.
    pub fn builder() -> KernelBuilder {
        KernelBuilder::new()
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Declares a role with its routing settings, before any agent or task uses it.
    pub fn declare_role(&self, role: impl AsRef<str>, cfg: RoleConfig) -> Result<(), BuildError> {
        let name: Arc<str> = Arc::from(role.as_ref());
        match self.inner.roles.entry(name.clone()) {
            dashmap::mapref::entry::Entry::Occupied(_) => Err(BuildError::RoleExists(name)),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(Arc::new(RoleState::new(
                    name,
                    false,
                    cfg,
                    self.inner.queue_capacity,
                )));
                Ok(())
            }
        }
    }

    /// Spawns an agent and waits until it is Ready (or failed to start).
    pub async fn spawn_agent(&self, spec: AgentSpec) -> Result<AgentId, SpawnError> {
        self.inner.spawn_agent(spec).await
    }

    /// Shuts an agent down. `Graceful` waits for its in-flight tasks; `Now` interrupts them
    /// (they go back to their retry policy). Tasks waiting in its own queue are rerouted.
    pub async fn shutdown_agent(
        &self,
        id: AgentId,
        mode: ShutdownMode,
    ) -> Result<(), ShutdownError> {
        self.inner.shutdown_agent(id, mode).await
    }

    /// Submits a task, waiting while its queue is full (backpressure).
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskHandle, SubmitError> {
        self.inner.submit(spec, None, true).await
    }

    /// Submits a task, or says `Busy` at once if its queue is full.
    pub fn try_submit(&self, spec: TaskSpec) -> Result<TaskHandle, SubmitError> {
        let (route, permit) = self.inner.admit_now(&spec)?;
        Ok(self.inner.enter(spec, route, permit, None))
    }

    /// Submits a task and waits for its result.
    pub async fn run(&self, spec: TaskSpec) -> Result<TaskResult, SubmitError> {
        Ok(self.submit(spec).await?.await)
    }

    /// Cancels a task. True if it had not ended yet.
    pub fn cancel(&self, id: TaskId) -> bool {
        self.inner.cancel(id)
    }

    /// Runs tasks as a batch (at most `max_concurrency` at once) and returns their results in
    /// input order.
    pub async fn run_batch(&self, specs: Vec<TaskSpec>, opts: BatchOptions) -> BatchResult {
        self.inner.run_batch(specs, opts).await
    }

    /// Cancels every task of a batch not yet ended, and those not yet submitted.
    pub fn cancel_batch(&self, id: BatchId) -> bool {
        match self.inner.batches.get(&id).map(|b| b.clone()) {
            Some(b) => {
                self.inner.cancel_batch(&b);
                true
            }
            None => false,
        }
    }

    /// One agent.
    pub fn agent(&self, id: AgentId) -> Option<AgentInfo> {
        self.inner.agents.get(&id).map(|a| a.info())
    }

    /// All agents, live and recently ended, by id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut v: Vec<_> = self.inner.agents.iter().map(|a| a.info()).collect();
        v.sort_by_key(|a| a.id);
        v
    }

    /// Live agents of a role.
    pub fn agents_with_role(&self, role: &str) -> Vec<AgentId> {
        self.inner
            .roles
            .get(role)
            .map(|r| r.agents.read().iter().map(|a| a.id).collect())
            .unwrap_or_default()
    }

    /// Live agents with a capability.
    pub fn agents_with_capability(&self, cap: &str) -> Vec<AgentId> {
        self.inner
            .caps
            .get(cap)
            .map(|r| r.agents.read().iter().map(|a| a.id).collect())
            .unwrap_or_default()
    }

    /// Subscribes to the event bus.
    pub fn subscribe(&self) -> EventStream {
        self.inner.bus.subscribe()
    }

    /// Writes every event from now on to `path` as JSON Lines (appending).
    pub async fn jsonl_sink(&self, path: &std::path::Path) -> std::io::Result<JsonlSink> {
        JsonlSink::start(self.inner.bus.subscribe(), path, self.inner.stop.clone()).await
    }

    /// Stops the kernel: no new task or agent; agents shut down (`Graceful`: after their
    /// in-flight tasks); tasks still waiting end Cancelled; sinks flush.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        self.inner.closing.store(true, Ordering::Release);
        let ids: Vec<AgentId> = self.inner.agents.iter().map(|a| a.id).collect();
        let mut stops: FuturesUnordered<_> = ids
            .into_iter()
            .map(|id| self.inner.shutdown_agent(id, mode))
            .collect();
        while stops.next().await.is_some() {}
        let left: Vec<TaskId> = self.inner.tasks.iter().map(|t| t.id).collect();
        for id in left {
            self.inner.cancel(id);
        }
        if let Some(set) = self.inner.plugins.get().cloned() {
            let within = self.inner.grace;
            let s2 = set.clone();
            let _ = tokio::task::spawn_blocking(move || s2.stop(within)).await;
            let first = set.report_final_once();
            for p in set.health() {
                if first && p.state == "loaded" {
                    self.inner
                        .bus
                        .emit_with(crate::event::kind::PLUGIN, || Event::PluginStatus {
                            plugin: Arc::from(p.name.as_str()),
                            status: p.status.clone(),
                        });
                }
            }
        }
        self.inner.stop.cancel();
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Kernel { inner }
    }

    /// Loads plugins, in order (their order is the order of their decision hooks). Call once,
    /// before spawning agents, so that observers see everything. Returns the optional
    /// plugins that failed to load (as warnings); a required one that fails is an error and
    /// nothing is loaded.
    pub fn load_plugins(
        &self,
        specs: &[PluginSpec],
        policy: QuarantinePolicy,
        base_dir: &std::path::Path,
    ) -> Result<Vec<PluginLoadError>, PluginLoadError> {
        if self.inner.plugins.get().is_some() {
            return Err(PluginLoadError::new(
                base_dir,
                crate::plugin::LoadErrorKind::Duplicate,
                "plugins are already loaded in this kernel",
            ));
        }
        let (set, warnings) = PluginSet::load(&self.inner, specs, policy, base_dir)?;
        let _ = self.inner.plugins.set(set);
        Ok(warnings)
    }

    /// A driver a plugin contributes, by name (resolved when an agent starts: load the
    /// plugins first, or the agent fails to start with the reason).
    pub fn plugin_driver(&self, name: &str) -> Arc<dyn crate::Driver> {
        Arc::new(crate::plugin::PluginDriver::new(
            name,
            Arc::downgrade(&self.inner),
        ))
    }

    /// The drivers the loaded plugins contribute.
    pub fn plugin_drivers(&self) -> Vec<String> {
        self.inner
            .plugins
            .get()
            .map(|p| p.driver_names())
            .unwrap_or_default()
    }

    /// Kills an agent the hard way: it becomes Failed with `reason` (its driver stops it at
    /// once) and its in-flight tasks go back to their retry policy. False if there is no
    /// such live agent.
    pub fn kill_agent(&self, id: AgentId, reason: &str) -> bool {
        let live = self
            .inner
            .agents
            .get(&id)
            .is_some_and(|a| !a.state().is_terminal());
        if live {
            self.inner.fail_agent(id, reason.to_string());
        }
        live
    }

    /// Announces that a run (of a plan) started: plugins' `on_run_started` and every
    /// subscriber see it.
    pub fn run_started(&self, run: &str, plan: &str) {
        self.inner
            .bus
            .emit_with(crate::event::kind::RUN, || Event::RunStarted {
                run: Arc::from(run),
                plan: Arc::from(plan),
            });
    }

    /// Announces that a run finished in `state` (`succeeded`, `failed`, ...).
    pub fn run_finished(&self, run: &str, plan: &str, state: &str) {
        self.inner
            .bus
            .emit_with(crate::event::kind::RUN, || Event::RunFinished {
                run: Arc::from(run),
                plan: Arc::from(plan),
                state: Arc::from(state),
            });
    }

    /// Remembers how to build one more agent of `spec.role` (plugins' `spawn_agent` uses it).
    pub fn register_template(&self, spec: AgentSpec) {
        self.inner.templates.insert(spec.role.clone(), spec);
    }

    /// The roles with an agent template, sorted.
    pub fn template_roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = self
            .inner
            .templates
            .iter()
            .map(|t| t.key().to_string())
            .collect();
        roles.sort();
        roles
    }

    /// Spawns one more agent of `role` from its template.
    pub async fn spawn_from_template(&self, role: &str) -> Result<AgentId, SpawnError> {
        let spec = self
            .inner
            .templates
            .get(role)
            .map(|t| t.clone())
            .ok_or_else(|| SpawnError::Start {
                role: Arc::from(role),
                reason: Arc::from("no pool template for this role"),
            })?;
        self.spawn_agent(spec).await
    }

    pub(crate) async fn submit_reserved(
        &self,
        id: TaskId,
        spec: TaskSpec,
    ) -> Result<TaskHandle, SubmitError> {
        self.inner.submit_reserved(id, spec).await
    }

    /// Whether `shutdown` was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }
}

impl Inner {
    fn next(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn arc(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }

    fn role_state(&self, name: &Arc<str>) -> Arc<RoleState> {
        self.roles
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(RoleState::new(
                    name.clone(),
                    false,
                    RoleConfig::default(),
                    self.queue_capacity,
                ))
            })
            .clone()
    }

    fn cap_state(&self, name: &Arc<str>) -> Arc<RoleState> {
        self.caps
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(RoleState::new(
                    name.clone(),
                    true,
                    RoleConfig::default(),
                    self.queue_capacity,
                ))
            })
            .clone()
    }

    // ---------------------------------------------------------------------- agents --

    async fn spawn_agent(&self, spec: AgentSpec) -> Result<AgentId, SpawnError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SpawnError::ShuttingDown);
        }
        let role = self.role_state(&spec.role);
        let caps: Vec<Arc<RoleState>> = spec
            .capabilities
            .iter()
            .map(|c| self.cap_state(c))
            .collect();
        let id = AgentId(self.next());
        let mut queues = Vec::with_capacity(2 + caps.len());
        queues.push(Arc::new(TaskQueue::new(
            Arc::from(id.to_string()),
            QueueOrder::Priority,
        )));
        queues.push(role.queue.clone());
        queues.extend(caps.iter().map(|c| c.queue.clone()));
        let lease = Arc::new(Lease::new(self.epoch));
        let cell = Arc::new(AgentCell::new(id, &spec, queues, lease.clone()));
        self.agents.insert(id, cell.clone());
        self.bus
            .emit_with(kind::AGENT_SPAWNED, || Event::AgentSpawned {
                agent: id,
                role: spec.role.clone(),
                driver: cell.driver_name.clone(),
                capacity: cell.capacity,
            });
        let ctx = AgentContext {
            agent: id,
            role: spec.role.clone(),
            capacity: cell.capacity,
            grace: self.grace,
            link: AgentLink::new(id, lease, self.me.clone()),
        };
        match spec.driver.start(ctx).await {
            Ok(handle) => {
                let _ = cell.handle.set(handle);
                if cell.mark_ready(&self.bus) {
                    role.agents.write().push(cell.clone());
                    for c in &caps {
                        c.agents.write().push(cell.clone());
                    }
                    if !cell.accepting() {
                        self.detach(&cell);
                    }
                    self.kick(&cell);
                    return Ok(id);
                }
                let reason = match cell.state() {
                    AgentState::Failed(r) => r,
                    other => Arc::from(format!("left Starting for {other}")),
                };
                Err(SpawnError::Start {
                    role: spec.role.clone(),
                    reason,
                })
            }
            Err(e) => {
                let reason: Arc<str> = Arc::from(e.message);
                cell.mark_failed(&self.bus, &reason);
                self.retire(id);
                self.watch_starvation(&role);
                Err(SpawnError::Start {
                    role: spec.role.clone(),
                    reason,
                })
            }
        }
    }

    /// Whether an agent of `role` is alive (starting, ready, busy or draining).
    fn role_has_live_agent(&self, role: &RoleState) -> bool {
        if !role.agents.read().is_empty() {
            return true;
        }
        // Starting agents are not routable yet, but they will be.
        self.agents
            .iter()
            .any(|a| a.role == role.name && !a.state().is_terminal())
    }

    /// Arms the starvation check of `role` (if configured, not armed yet, and nobody serves
    /// it): after the timeout, if still nobody does, its waiting tasks fail.
    fn watch_starvation(&self, role: &Arc<RoleState>) {
        let Some(after) = self.starved_role_timeout else {
            return;
        };
        // Cheapest first: this runs for every task queued in a role while the timeout is on.
        if role.starve_armed.load(Ordering::Acquire)
            || self.role_has_live_agent(role)
            || role.queue.len() == 0
            || role.starve_armed.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (me, role) = (self.me.clone(), role.clone());
        self.rt.spawn(async move {
            tokio::time::sleep(after).await;
            role.starve_armed.store(false, Ordering::Release);
            if let Some(k) = me.upgrade() {
                k.starve(&role, after);
            }
        });
    }

    /// Fails the tasks waiting for `role` if it still has no live agent.
    fn starve(&self, role: &Arc<RoleState>, after: Duration) {
        if self.role_has_live_agent(role) || self.closing.load(Ordering::Acquire) {
            return;
        }
        let items = role.queue.drain();
        if items.is_empty() {
            return;
        }
        tracing::warn!(role = %role.name, tasks = items.len(), "no live agent of the role for {}: failing its waiting tasks", fmt_dur(after));
        for item in items {
            let entry = item.entry;
            let mut st = entry.st.lock();
            if !matches!(st.phase, Phase::Queued { .. }) {
                continue;
            }
            let e = TaskError::permanent(format!(
                "no agent of role `{}` was alive for {}: nothing could run it (keep the role's pool alive, or raise starved_role_timeout_s)",
                role.name,
                fmt_dur(after)
            ));
            let fin = self.close_locked(&mut st, Outcome::Failed(e));
            drop(st);
            self.complete(&entry, fin);
        }
    }

    /// Removes an agent from routing (role lists, idle lists) and hands its own queue back.
    fn detach(&self, agent: &Arc<AgentCell>) {
        if let Some(r) = self.roles.get(&agent.role) {
            r.agents.write().retain(|a| a.id != agent.id);
        }
        for c in &agent.capabilities {
            if let Some(r) = self.caps.get(c) {
                r.agents.write().retain(|a| a.id != agent.id);
            }
        }
        for q in &agent.queues {
            q.forget(agent);
        }
        for item in agent.direct().drain() {
            self.reroute(&item.entry);
        }
    }

    /// Keeps ended agents visible for a while, but not forever.
    fn retire(&self, id: AgentId) {
        let mut t = self.terminal.lock();
        t.push_back(id);
        while t.len() > 1024 {
            if let Some(old) = t.pop_front() {
                self.agents.remove(&old);
            }
        }
    }

    pub(crate) fn fail_agent(&self, id: AgentId, reason: String) {
        let Some(agent) = self.agents.get(&id).map(|a| a.clone()) else {
            return;
        };
        let reason: Arc<str> = Arc::from(reason);
        let Some(in_flight) = agent.mark_failed(&self.bus, &reason) else {
            return;
        };
        tracing::warn!(agent = %id, role = %agent.role, in_flight, "agent failed: {reason}");
        agent.lost.cancel();
        self.detach(&agent);
        self.retire(id);
        if let Some(role) = self.roles.get(&agent.role).map(|r| r.clone()) {
            self.watch_starvation(&role);
        }
        if let Some(h) = agent.handle.get().cloned() {
            self.rt
                .spawn(async move { h.stop(ShutdownMode::Now).await });
        }
    }

    async fn shutdown_agent(&self, id: AgentId, mode: ShutdownMode) -> Result<(), ShutdownError> {
        let agent = self
            .agents
            .get(&id)
            .map(|a| a.clone())
            .ok_or(ShutdownError::NoSuchAgent(id))?;
        if agent.mark_draining(&self.bus).is_none() {
            return Ok(());
        }
        self.detach(&agent);
        if mode == ShutdownMode::Now {
            agent.lost.cancel();
        }
        agent.wait_drained().await;
        if let Some(h) = agent.handle.get().cloned() {
            h.stop(mode).await;
        }
        if agent.mark_stopped(&self.bus) {
            self.retire(id);
        }
        if let Some(role) = self.roles.get(&agent.role).map(|r| r.clone()) {
            self.watch_starvation(&role);
        }
        Ok(())
    }

    pub(crate) fn ensure_lease_monitor(&self, ttl: Duration) {
        let period = (ttl.as_millis() as u64 / 4).clamp(10, 1000);
        let prev = self.lease_period_ms.load(Ordering::Acquire);
        if prev != 0 {
            if period < prev {
                self.lease_period_ms.store(period, Ordering::Release);
            }
            return;
        }
        if self
            .lease_period_ms
            .compare_exchange(0, period, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let me = self.me.clone();
        let stop = self.stop.clone();
        self.rt.spawn(async move {
            loop {
                let period = match me.upgrade() {
                    Some(k) => k.lease_period_ms.load(Ordering::Acquire),
                    None => return,
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(period)) => {}
                }
                let Some(k) = me.upgrade() else { return };
                let expired: Vec<(AgentId, Duration)> = k
                    .agents
                    .iter()
                    .filter(|a| !a.state().is_terminal())
                    .filter_map(|a| a.lease.expired().map(|d| (a.id, d)))
                    .collect();
                for (id, silence) in expired {
                    k.fail_agent(
                        id,
                        format!(
                            "lease expired: nothing heard for {} ms",
                            silence.as_millis()
                        ),
                    );
                }
            }
        });
    }

    // ----------------------------------------------------------------------- submit --

    /// Resolves where a task is bound (for its queue permits and statistics).
    fn route_of(&self, spec: &TaskSpec) -> Result<Arc<RoleState>, SubmitError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        match &spec.target {
            Target::Role(r) => self
                .roles
                .get(r)
                .map(|s| s.clone())
                .ok_or_else(|| SubmitError::NoSuchRole(r.clone())),
            Target::Capability(c) => self
                .caps
                .get(c)
                .map(|s| s.clone())
                .ok_or_else(|| SubmitError::NoSuchCapability(c.clone())),
            Target::Agent(a) => {
                let agent = self
                    .agents
                    .get(a)
                    .filter(|x| x.accepting())
                    .map(|x| x.clone())
                    .ok_or(SubmitError::NoSuchAgent(*a))?;
                Ok(self.role_state(&agent.role))
            }
        }
    }

    fn admit_now(
        &self,
        spec: &TaskSpec,
    ) -> Result<(Arc<RoleState>, OwnedSemaphorePermit), SubmitError> {
        let route = self.route_of(spec)?;
        match route.permits.clone().try_acquire_owned() {
            Ok(p) => Ok((route, p)),
            Err(TryAcquireError::NoPermits) => Err(SubmitError::Busy(spec.target.clone())),
            Err(TryAcquireError::Closed) => Err(SubmitError::ShuttingDown),
        }
    }

    async fn submit(
        &self,
        spec: TaskSpec,
        batch: Option<Arc<BatchCell>>,
        wait: bool,
    ) -> Result<TaskHandle, SubmitError> {
        let route = self.route_of(&spec)?;
        let permit = match route.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) if wait => {
                let permits = route.permits.clone();
                tokio::select! {
                    p = permits.acquire_owned() => p.map_err(|_| SubmitError::ShuttingDown)?,
                    _ = self.stop.cancelled() => return Err(SubmitError::ShuttingDown),
                }
            }
            Err(TryAcquireError::NoPermits) => return Err(SubmitError::Busy(spec.target.clone())),
            Err(TryAcquireError::Closed) => return Err(SubmitError::ShuttingDown),
        };
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        Ok(self.enter(spec, route, permit, batch))
    }

    /// Submits under an id reserved earlier (plugins get the id before the task enters).
    async fn submit_reserved(&self, id: TaskId, spec: TaskSpec) -> Result<TaskHandle, SubmitError> {
        let route = self.route_of(&spec)?;
        let permit = tokio::select! {
            p = route.permits.clone().acquire_owned() => p.map_err(|_| SubmitError::ShuttingDown)?,
            _ = self.stop.cancelled() => return Err(SubmitError::ShuttingDown),
        };
        Ok(self.enter_as(id, spec, route, permit, None))
    }

    pub(crate) fn reserve_id(&self) -> u64 {
        self.next()
    }

    pub(crate) fn rt(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    pub(crate) fn has_template(&self, role: &str) -> bool {
        self.templates.contains_key(role)
    }

    /// The task enters the kernel: registered, announced, queued or handed to an agent.
    fn enter(
        &self,
        spec: TaskSpec,
        route: Arc<RoleState>,
        permit: OwnedSemaphorePermit,
        batch: Option<Arc<BatchCell>>,
    ) -> TaskHandle {
        let id = TaskId(self.next());
        self.enter_as(id, spec, route, permit, batch)
    }

    fn enter_as(
        &self,
        id: TaskId,
        spec: TaskSpec,
        route: Arc<RoleState>,
        permit: OwnedSemaphorePermit,
        batch: Option<Arc<BatchCell>>,
    ) -> TaskHandle {
        let (tx, rx) = oneshot::channel();
        let queued_at = Timestamp::now();
        let name = spec.name.clone();
        let deadline = spec.deadline;
        let entry = Arc::new(TaskEntry {
            id,
            spec,
            route,
            batch,
            queued_at,
            st: Mutex::new(TaskRun {
                phase: Phase::Backoff,
                attempts: Vec::new(),
                tx: Some(tx),
                cancel_requested: false,
                reroute: None,
                redirects: 0,
                due_at: None,
            }),
            payload_json: std::sync::OnceLock::new(),
        });
        self.tasks.insert(id, entry.clone());
        entry.route.stats.submitted.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &entry.batch {
            b.members.lock().push(id);
        }
        self.bus
            .emit_with(kind::TASK_SUBMITTED, || Event::TaskSubmitted {
                task: id,
                name: entry.spec.name.clone(),
                target: entry.spec.target.clone(),
                priority: entry.spec.priority,
                batch: entry.batch.as_ref().map(|b| b.id),
            });
        if let Some(d) = deadline {
            self.arm_deadline(&entry, d);
        }
        let start = {
            let mut st = entry.st.lock();
            self.enqueue_locked(&entry, &mut st, Some(permit))
        };
        self.launch(start);
        TaskHandle {
            id,
            name,
            queued_at,
            rx,
        }
    }

    fn arm_deadline(&self, entry: &Arc<TaskEntry>, deadline: Timestamp) {
        let me = self.me.clone();
        let weak = Arc::downgrade(entry);
        let wait = deadline.since(Timestamp::now());
        self.rt.spawn(async move {
            tokio::time::sleep(wait).await;
            if let (Some(k), Some(entry)) = (me.upgrade(), weak.upgrade()) {
                k.expire(&entry);
            }
        });
    }

    /// The deadline passed: a task waiting (queued or between attempts) ends TimedOut; a
    /// running attempt is cut by its own timer.
    fn expire(&self, entry: &Arc<TaskEntry>) {
        let mut st = entry.st.lock();
        match &st.phase {
            Phase::Queued { queue, key } => {
                queue.remove(key);
            }
            Phase::Backoff => {}
            Phase::Running { .. } | Phase::Done => return,
        }
        let fin = self.close_locked(&mut st, Outcome::TimedOut);
        drop(st);
        self.complete(entry, fin);
    }

    /// Picks the queue a task goes to now (its spec's target, or where a plugin rerouted it).
    fn pick_queue(&self, entry: &TaskEntry, target: &Target) -> Result<Arc<TaskQueue>, TaskError> {
        let route = if *target == entry.spec.target {
            entry.route.clone()
        } else {
            match target {
                Target::Role(r) => self.roles.get(r).map(|x| x.clone()).ok_or_else(|| {
                    TaskError::permanent(format!("rerouted to role `{r}`, which has no agents"))
                })?,
                Target::Capability(c) => self.caps.get(c).map(|x| x.clone()).ok_or_else(|| {
                    TaskError::permanent(format!(
                        "rerouted to capability `{c}`, which no agent has"
                    ))
                })?,
                Target::Agent(_) => entry.route.clone(),
            }
        };
        match target {
            Target::Agent(a) => self
                .agents
                .get(a)
                .filter(|x| x.accepting())
                .map(|x| x.direct().clone())
                .ok_or_else(|| TaskError::permanent(format!("target {a} is gone"))),
            Target::Capability(_) => Ok(route.queue.clone()),
            Target::Role(_) => {
                if route.dispatch == Dispatch::Pull {
                    return Ok(route.queue.clone());
                }
                let agents = route.agents.read();
                let live: Vec<&Arc<AgentCell>> = agents.iter().filter(|a| a.accepting()).collect();
                if live.is_empty() {
                    return Ok(route.queue.clone());
                }
                let load = |a: &AgentCell| a.busy() as usize + a.direct().len();
                let least = |live: &[&Arc<AgentCell>]| -> usize {
                    if live.len() == 1 {
                        return 0;
                    }
                    let i = fastrand::usize(..live.len());
                    let mut j = fastrand::usize(..live.len() - 1);
                    if j >= i {
                        j += 1;
                    }
                    if load(live[j]) < load(live[i]) {
                        j
                    } else {
                        i
                    }
                };
                let pick = match (route.dispatch, &entry.spec.affinity) {
                    (Dispatch::RoundRobin, _) => {
                        route.rr.fetch_add(1, Ordering::Relaxed) % live.len()
                    }
                    (Dispatch::Affinity, Some(key)) => {
                        // Rendezvous hashing: stable while agents come and go.
                        let mut best = (0u64, 0usize);
                        for (i, a) in live.iter().enumerate() {
                            let h = hash2(key.as_bytes(), a.id.get());
                            if i == 0 || h > best.0 {
                                best = (h, i);
                            }
                        }
                        best.1
                    }
                    _ => least(&live),
                };
                Ok(live[pick].direct().clone())
            }
        }
    }

    /// Queues a task (or hands it to an idle agent) while its lock is held. Returns the
    /// attempt to launch once the lock is released. A task that cannot be placed ends.
    fn enqueue_locked(
        &self,
        entry: &Arc<TaskEntry>,
        st: &mut TaskRun,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<Launch> {
        let picked = match &st.reroute {
            Some(t) => match self.pick_queue(entry, &t.clone()) {
                // A plugin sent it to one agent, which has left since: back to its own
                // target, rather than failing a task nobody pinned there.
                Err(_) if matches!(t, Target::Agent(_)) && *t != entry.spec.target => {
                    tracing::debug!(task = %entry.id, "rerouted to {t:?}, which left: back to its own target");
                    st.reroute = None;
                    self.pick_queue(entry, &entry.spec.target)
                }
                other => other,
            },
            None => self.pick_queue(entry, &entry.spec.target),
        };
        let queue = match picked {
            Ok(q) => q,
            Err(e) => {
                let fin = self.close_locked(st, Outcome::Failed(e));
                return Some(Launch::Finish(entry.clone(), fin));
            }
        };
        match queue.push(entry, permit, &self.bus) {
            Pushed::Queued(key) => {
                let in_role_queue = self.starved_role_timeout.is_some()
                    && matches!(entry.spec.target, Target::Role(_))
                    && Arc::ptr_eq(&queue, &entry.route.queue);
                st.phase = Phase::Queued { queue, key };
                if in_role_queue {
                    self.watch_starvation(&entry.route);
                }
                None
            }
            Pushed::Handoff(agent) => {
                let attempt = st.attempts.len() as u32 + 1;
                let token = CancellationToken::new();
                st.phase = Phase::Running {
                    attempt,
                    token: token.clone(),
                };
                Some(Launch::Start(Start {
                    agent,
                    entry: entry.clone(),
                    attempt,
                    token,
                }))
            }
        }
    }

    fn launch(&self, l: Option<Launch>) {
        match l {
            None => {}
            Some(Launch::Start(s)) => self.spawn_worker(s),
            Some(Launch::Finish(entry, fin)) => self.complete(&entry, fin),
        }
    }

    fn spawn_worker(&self, s: Start) {
        if let Some(me) = self.arc() {
            self.rt.spawn(async move { me.worker(s).await });
        }
    }

    /// A task that waited in an agent's own queue goes elsewhere (the agent left).
    fn reroute(&self, entry: &Arc<TaskEntry>) {
        let l = {
            let mut st = entry.st.lock();
            if !matches!(st.phase, Phase::Queued { .. }) {
                return;
            }
            self.enqueue_locked(entry, &mut st, None)
        };
        self.launch(l);
    }

    // ------------------------------------------------------------------ dispatching --

    /// Takes a queued task for an agent that holds a slot: Queued -> Running.
    fn claim(&self, agent: &Arc<AgentCell>, entry: Arc<TaskEntry>) -> Option<Start> {
        let mut st = entry.st.lock();
        if !matches!(st.phase, Phase::Queued { .. }) {
            return None;
        }
        let attempt = st.attempts.len() as u32 + 1;
        let token = CancellationToken::new();
        st.phase = Phase::Running {
            attempt,
            token: token.clone(),
        };
        drop(st);
        Some(Start {
            agent: agent.clone(),
            entry,
            attempt,
            token,
        })
    }

    /// An agent with a free slot looks for work in its queues, parking where there is none.
    fn fill_one(&self, agent: &Arc<AgentCell>) -> Option<Start> {
        'outer: loop {
            for (idx, q) in agent.queues.iter().enumerate() {
                if let Some(item) = q.park(agent, idx, &self.bus) {
                    match self.claim(agent, item.entry) {
                        Some(s) => return Some(s),
                        None => {
                            agent.release_slot(&self.bus);
                            continue 'outer;
                        }
                    }
                }
            }
            return None;
        }
    }

    /// Fills all free slots of an agent (after it became Ready).
    fn kick(&self, agent: &Arc<AgentCell>) {
        while let Some(s) = self.fill_one(agent) {
            self.spawn_worker(s);
        }
    }

    /// After an attempt: the next task for the same slot, or None (slot released).
    fn next_for(&self, agent: &Arc<AgentCell>) -> Option<Start> {
        loop {
            if !agent.accepting() {
                agent.release_slot(&self.bus);
                return None;
            }
            let popped = agent.queues.iter().find_map(|q| q.pop());
            match popped {
                Some(item) => {
                    if let Some(s) = self.claim(agent, item.entry) {
                        return Some(s);
                    }
                }
                None => {
                    agent.release_slot(&self.bus);
                    return self.fill_one(agent);
                }
            }
        }
    }

    async fn worker(self: Arc<Self>, mut s: Start) {
        loop {
            self.run_attempt(&s).await;
            match self.next_for(&s.agent) {
                Some(next) => s = next,
                None => return,
            }
        }
    }

    async fn run_attempt(&self, s: &Start) {
        let Start {
            agent,
            entry,
            attempt,
            token,
        } = s;
        let (agent_id, task_id, attempt) = (agent.id, entry.id, *attempt);
        if let Some(set) = self.plugins.get().filter(|p| p.has_delegate_hooks()) {
            let payload = entry.payload_json.get_or_init(|| {
                serde_json::to_string(&*entry.spec.payload).unwrap_or_else(|_| "null".into())
            });
            let rerouted = entry.st.lock().reroute.clone();
            let req = hive_plugin_api::DelegateRequest {
                task: task_id.get(),
                name: entry.spec.name.as_deref().unwrap_or("").into(),
                target: abi_target(rerouted.as_ref().unwrap_or(&entry.spec.target)),
                agent: agent_id.get(),
                attempt,
                priority: entry.spec.priority,
                payload_json: payload.as_str().into(),
            };
            if let Some((plugin, decision)) = set.before_delegate(&req) {
                if self.apply_delegate(s, &plugin, decision) {
                    return;
                }
            }
        }
        self.bus
            .emit_with(kind::TASK_DELEGATED, || Event::TaskDelegated {
                task: task_id,
                name: entry.spec.name.clone(),
                target: entry.spec.target.clone(),
                agent: agent_id,
                attempt,
            });
        let started = Timestamp::now();
        let timeout = entry.spec.timeout.unwrap_or(self.default_timeout);
        let mut limit = timeout;
        if let Some(d) = entry.spec.deadline {
            limit = limit.min(d.since(started));
        }
        let handle = agent.handle.get().cloned();
        let (res, why) = match handle {
            None => (
                Some(Err(TaskError::new("agent has no driver handle"))),
                None,
            ),
            Some(handle) => {
                self.bus
                    .emit_with(kind::TASK_STARTED, || Event::TaskStarted {
                        task: task_id,
                        name: entry.spec.name.clone(),
                        target: entry.spec.target.clone(),
                        agent: agent_id,
                        attempt,
                    });
                let ctx = TaskContext {
                    task: task_id,
                    name: entry.spec.name.clone(),
                    attempt,
                    payload: entry.spec.payload.clone(),
                    timeout: limit,
                    cancel: token.clone(),
                    link: AgentLink::new(agent_id, agent.lease.clone(), self.me.clone()),
                };
                let span = tracing::debug_span!(
                    "attempt",
                    task = task_id.get(),
                    agent = agent_id.get(),
                    attempt
                );
                let fut = handle.execute(ctx).instrument(span);
                tokio::pin!(fut);
                let sleep = tokio::time::sleep(limit);
                tokio::pin!(sleep);
                let why = tokio::select! {
                    biased;
                    r = &mut fut => return self.finish_attempt(s, started, Some(r), None),
                    _ = token.cancelled() => Interrupt::Cancel,
                    _ = agent.lost.cancelled() => Interrupt::AgentLost,
                    _ = &mut sleep => Interrupt::Timeout(limit),
                };
                token.cancel();
                // Let the driver stop the work (SIGTERM, grace, SIGKILL), then go on.
                let r = tokio::time::timeout(self.grace + Duration::from_secs(1), &mut fut)
                    .await
                    .ok();
                (r, Some(why))
            }
        };
        self.finish_attempt(s, started, res, why)
    }

    /// Carries out a plugin's `before_delegate` decision. True if the task does not run now.
    fn apply_delegate(&self, s: &Start, plugin: &str, decision: hive_plugin_api::Delegate) -> bool {
        use hive_plugin_api::Delegate as D;
        let entry = &s.entry;
        let mut st = entry.st.lock();
        if !matches!(st.phase, Phase::Running { attempt, .. } if attempt == s.attempt) {
            return true;
        }
        match decision {
            D::ShortCircuit { output_json } => {
                let v = serde_json::from_str(output_json.as_str())
                    .unwrap_or_else(|_| Value::String(output_json.to_string()));
                let fin = self.close_locked(&mut st, Outcome::Succeeded(v));
                drop(st);
                self.complete(entry, fin);
            }
            D::Reject { reason } => {
                let e = TaskError::permanent(format!("rejected by plugin {plugin}: {reason}"));
                let fin = self.close_locked(&mut st, Outcome::Failed(e));
                drop(st);
                self.complete(entry, fin);
            }
            D::Defer { .. } | D::Reroute { .. } if st.redirects >= MAX_REDIRECTS => {
                tracing::warn!(task = %entry.id, plugin, "ignoring a deferral or reroute: the task was redirected {MAX_REDIRECTS} times already");
                return false;
            }
            D::Defer { ms } => {
                st.redirects += 1;
                st.phase = Phase::Backoff;
                drop(st);
                self.schedule_retry(entry, Duration::from_millis(ms));
            }
            D::Reroute { target } => {
                st.redirects += 1;
                st.reroute = Some(kernel_target(&target));
                st.phase = Phase::Backoff;
                drop(st);
                self.requeue(entry);
            }
            _ => return false,
        }
        true
    }

    /// Asks the plugins about a failed attempt (no lock held).
    fn ask_on_failed(
        &self,
        s: &Start,
        status: AttemptStatus,
        error: &TaskError,
    ) -> Option<hive_plugin_api::OnFailure> {
        let set = self.plugins.get().filter(|p| p.has_failure_hooks())?;
        let entry = &s.entry;
        let info = hive_plugin_api::FailureInfo {
            task: entry.id.get(),
            name: entry.spec.name.as_deref().unwrap_or("").into(),
            target: abi_target(&entry.spec.target),
            agent: s.agent.id.get(),
            attempt: s.attempt,
            max_attempts: entry.spec.retry.max_attempts,
            error: error.message.as_str().into(),
            exit_code: error.exit_code.unwrap_or(-1),
            timed_out: status == AttemptStatus::TimedOut,
            agent_lost: status == AttemptStatus::AgentLost,
        };
        set.on_task_failed(&info).map(|(plugin, d)| {
            tracing::debug!(task = %entry.id, plugin = %plugin, "on_task_failed decision: {d:?}");
            d
        })
    }

    fn finish_attempt(
        &self,
        s: &Start,
        started: Timestamp,
        res: Option<Result<Value, TaskError>>,
        why: Option<Interrupt>,
    ) {
        let Start {
            agent,
            entry,
            attempt,
            ..
        } = s;
        let finished = Timestamp::now();
        agent.completed.fetch_add(1, Ordering::Relaxed);
        let (status, output, error): (AttemptStatus, Option<Value>, Option<TaskError>) =
            match (why, res) {
                (None, Some(Ok(v))) => (AttemptStatus::Succeeded, Some(v), None),
                (None, Some(Err(e))) if agent.lost.is_cancelled() => {
                    // The attempt broke because its agent died under it.
                    let why = match agent.state() {
                        AgentState::Failed(r) => format!("{} failed: {r}", agent.id),
                        other => format!("{} was shut down ({other}): {e}", agent.id),
                    };
                    (AttemptStatus::AgentLost, None, Some(TaskError::new(why)))
                }
                (None, Some(Err(e))) => (AttemptStatus::Failed, None, Some(e)),
                (None, None) => (
                    AttemptStatus::Failed,
                    None,
                    Some(TaskError::new("the driver returned nothing")),
                ),
                (Some(Interrupt::Timeout(d)), r) => {
                    let mut e = TaskError::new(format!("timed out after {}", fmt_dur(d)));
                    if let Some(Err(inner)) = r {
                        e.exit_code = inner.exit_code;
                        e.detail = inner.detail;
                    }
                    (AttemptStatus::TimedOut, None, Some(e))
                }
                (Some(Interrupt::Cancel), _) => (
                    AttemptStatus::Cancelled,
                    None,
                    Some(TaskError::permanent("cancelled")),
                ),
                (Some(Interrupt::AgentLost), _) => {
                    let why = match agent.state() {
                        AgentState::Failed(r) => format!("{} failed: {r}", agent.id),
                        other => format!("{} was shut down ({other})", agent.id),
                    };
                    (AttemptStatus::AgentLost, None, Some(TaskError::new(why)))
                }
            };
        let exit_code = match (&output, &error) {
            (Some(v), _) => v.get("exit_code").and_then(Value::as_i64).map(|c| c as i32),
            (_, Some(e)) => e.exit_code,
            _ => None,
        };
        let plugin_says = match (&output, &error) {
            (None, Some(e)) if status != AttemptStatus::Cancelled => {
                self.ask_on_failed(s, status, e)
            }
            _ => None,
        };
        let mut st = entry.st.lock();
        match st.phase {
            Phase::Running { attempt: a, .. } if a == *attempt => {}
            _ => return, // ended meanwhile (stale attempt)
        }
        st.attempts.push(AttemptRecord {
            attempt: *attempt,
            agent: agent.id,
            started_at: started,
            finished_at: finished,
            status,
            error: error.as_ref().map(|e| e.message.clone()),
            exit_code,
        });
        let queued_from = st.due_at.unwrap_or(entry.queued_at);
        let attempt_error = error.as_ref().map(|e| e.message.clone());
        let emit_attempt = |status: AttemptStatus, will_retry: bool| {
            self.bus
                .emit_with(kind::ATTEMPT, || Event::AttemptFinished {
                    task: entry.id,
                    name: entry.spec.name.clone(),
                    role: agent.role.clone(),
                    agent: agent.id,
                    attempt: *attempt,
                    status,
                    queue_ms: started.since(queued_from).as_secs_f64() * 1e3,
                    run_ms: finished.since(started).as_secs_f64() * 1e3,
                    error: attempt_error.clone(),
                    will_retry,
                });
        };
        let outcome = if st.cancel_requested || status == AttemptStatus::Cancelled {
            // A cancel requested before the attempt ended wins, even over its output.
            if let Some(last) = st.attempts.last_mut() {
                last.status = AttemptStatus::Cancelled;
            }
            Outcome::Cancelled
        } else if let Some(v) = output {
            Outcome::Succeeded(v)
        } else if let Some(hive_plugin_api::OnFailure::Fallback { output_json }) = &plugin_says {
            Outcome::Succeeded(
                serde_json::from_str(output_json.as_str())
                    .unwrap_or_else(|_| Value::String(output_json.to_string())),
            )
        } else {
            use hive_plugin_api::OnFailure as F;
            let err = error.unwrap_or_else(|| TaskError::new("failed"));
            let n = st.attempts.len() as u32;
            let now = Timestamp::now();
            let past_deadline = entry.spec.deadline.is_some_and(|d| now >= d);
            let retry = &entry.spec.retry;
            let (may_retry, forced_delay) = match &plugin_says {
                Some(F::GiveUp) => (false, None),
                Some(F::RetryAfter { ms }) => (
                    n < retry.max_attempts.max(PLUGIN_RETRY_LIMIT),
                    Some(Duration::from_millis(*ms)),
                ),
                _ => (err.retryable && n < retry.max_attempts, None),
            };
            if !past_deadline && may_retry && !self.closing.load(Ordering::Acquire) {
                let mut rng = fastrand::Rng::with_seed(
                    self.seed ^ entry.id.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n as u64,
                );
                let delay = forced_delay.unwrap_or_else(|| retry.delay(n, &mut rng));
                let too_late = entry
                    .spec
                    .deadline
                    .is_some_and(|d| now.micros() + delay.as_micros() as u64 >= d.micros());
                if !too_late {
                    st.phase = Phase::Backoff;
                    st.due_at = Some(Timestamp(now.micros() + delay.as_micros() as u64));
                    emit_attempt(status, true);
                    drop(st);
                    self.bus
                        .emit_with(kind::TASK_RETRYING, || Event::TaskRetrying {
                            task: entry.id,
                            attempt: n,
                            delay_ms: delay.as_millis() as u64,
                            error: err.message.clone(),
                        });
                    self.schedule_retry(entry, delay);
                    return;
                }
                Outcome::TimedOut
            } else if past_deadline || status == AttemptStatus::TimedOut {
                Outcome::TimedOut
            } else {
                Outcome::Failed(err)
            }
        };
        emit_attempt(st.attempts.last().map_or(status, |a| a.status), false);
        let fin = self.close_locked(&mut st, outcome);
        drop(st);
        self.complete(entry, fin);
    }

    fn schedule_retry(&self, entry: &Arc<TaskEntry>, delay: Duration) {
        if delay.is_zero() {
            return self.requeue(entry);
        }
        let me = self.me.clone();
        let entry = entry.clone();
        self.rt.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(k) = me.upgrade() {
                k.requeue(&entry);
            }
        });
    }

    fn requeue(&self, entry: &Arc<TaskEntry>) {
        let l = {
            let mut st = entry.st.lock();
            if !matches!(st.phase, Phase::Backoff) {
                return;
            }
            self.enqueue_locked(entry, &mut st, None)
        };
        self.launch(l);
    }

    // ------------------------------------------------------------------- completion --

    /// Marks a task Done under its lock and takes what the result needs.
    fn close_locked(&self, st: &mut TaskRun, outcome: Outcome) -> Finished {
        st.phase = Phase::Done;
        Finished {
            outcome,
            attempts: std::mem::take(&mut st.attempts),
            tx: st.tx.take(),
        }
    }

    /// Delivers a task's result, exactly once (only the holder of `Finished` gets here).
    fn complete(&self, entry: &Arc<TaskEntry>, fin: Finished) {
        let Finished {
            outcome,
            attempts,
            tx,
        } = fin;
        self.tasks.remove(&entry.id);
        self.completed.fetch_add(1, Ordering::Relaxed);
        let status = outcome.status();
        let last = attempts.last();
        let finished_at = match (&outcome, last) {
            (Outcome::Succeeded(_), Some(a)) => a.finished_at,
            _ => Timestamp::now(),
        };
        let run = last.map(|a| a.finished_at.since(a.started_at));
        let wait = attempts
            .first()
            .map(|a| a.started_at.since(entry.queued_at));
        entry.route.stats.record(status, run, wait);
        self.bus
            .emit_with(kind::TASK_COMPLETED, || Event::TaskCompleted {
                task: entry.id,
                name: entry.spec.name.clone(),
                status,
                attempts: attempts.len() as u32,
                agent: last.map(|a| a.agent),
                duration_ms: run.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
                error: match &outcome {
                    Outcome::Failed(e) => Some(e.message.clone()),
                    Outcome::TimedOut => last
                        .and_then(|a| a.error.clone())
                        .or(Some("deadline passed".into())),
                    _ => None,
                },
            });
        let cascade = !outcome.is_success()
            && entry
                .batch
                .as_ref()
                .is_some_and(|b| b.cancellation == Cancellation::Cascading);
        if let Some(tx) = tx {
            let _ = tx.send(TaskResult {
                id: entry.id,
                name: entry.spec.name.clone(),
                started_at: attempts.first().map(|a| a.started_at),
                outcome,
                attempts,
                queued_at: entry.queued_at,
                finished_at,
            });
        }
        if cascade {
            if let Some(b) = &entry.batch {
                self.cancel_batch(b);
            }
        }
    }

    fn cancel(&self, id: TaskId) -> bool {
        let Some(entry) = self.tasks.get(&id).map(|e| e.clone()) else {
            return false;
        };
        let mut st = entry.st.lock();
        match &st.phase {
            Phase::Queued { queue, key } => {
                queue.remove(key);
            }
            Phase::Running { token, .. } => {
                let token = token.clone();
                st.cancel_requested = true;
                token.cancel();
                return true;
            }
            Phase::Backoff => {}
            Phase::Done => return false,
        }
        let fin = self.close_locked(&mut st, Outcome::Cancelled);
        drop(st);
        self.complete(&entry, fin);
        true
    }

    fn cancel_batch(&self, b: &Arc<BatchCell>) {
        if b.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        let members: Vec<TaskId> = b.members.lock().clone();
        for id in members {
            self.cancel(id);
        }
    }

    // ----------------------------------------------------------------------- batches --

    async fn run_batch(&self, specs: Vec<TaskSpec>, opts: BatchOptions) -> BatchResult {
        let id = BatchId(self.next());
        let cell = Arc::new(BatchCell {
            id,
            cancellation: opts.cancellation,
            cancelled: AtomicBool::new(false),
            members: Mutex::new(Vec::with_capacity(specs.len())),
        });
        self.batches.insert(id, cell.clone());
        let t0 = Instant::now();
        let order = batch_order(&specs, opts.fairness);
        let n = specs.len();
        let mut specs: Vec<Option<TaskSpec>> = specs.into_iter().map(Some).collect();
        let mut results: Vec<Option<TaskResult>> = (0..n).map(|_| None).collect();
        let mut running = FuturesUnordered::new();
        let max = opts.max_concurrency.max(1);
        let mut next = 0;
        loop {
            while running.len() < max && next < n {
                let idx = order[next];
                next += 1;
                let Some(spec) = specs[idx].take() else {
                    continue;
                };
                if cell.cancelled.load(Ordering::Acquire) {
                    results[idx] = Some(self.never_ran(&spec, Outcome::Cancelled));
                    continue;
                }
                match self.submit(spec.clone(), Some(cell.clone()), true).await {
                    Ok(h) => running.push(async move { (idx, h.await) }),
                    Err(e) => {
                        let r = self
                            .never_ran(&spec, Outcome::Failed(TaskError::permanent(e.to_string())));
                        results[idx] = Some(r);
                        if opts.cancellation == Cancellation::Cascading {
                            self.cancel_batch(&cell);
                        }
                    }
                }
            }
            match running.next().await {
                Some((idx, r)) => results[idx] = Some(r),
                None => break,
            }
        }
        self.batches.remove(&id);
        BatchResult {
            id,
            results: results
                .into_iter()
                .zip(specs)
                .map(|(r, s)| {
                    r.unwrap_or_else(|| {
                        let spec =
                            s.unwrap_or_else(|| TaskSpec::new(Target::role("?"), Value::Null));
                        self.never_ran(&spec, Outcome::Cancelled)
                    })
                })
                .collect(),
            wall: t0.elapsed(),
        }
    }

    /// The result of a task that never entered the kernel.
    fn never_ran(&self, spec: &TaskSpec, outcome: Outcome) -> TaskResult {
        let now = Timestamp::now();
        TaskResult {
            id: TaskId(self.next()),
            name: spec.name.clone(),
            outcome,
            attempts: Vec::new(),
            queued_at: now,
            started_at: None,
            finished_at: now,
        }
    }
}

/// Deferrals and reroutes plugins may impose on one task before the kernel ignores them.
const MAX_REDIRECTS: u32 = 32;

/// Attempts a plugin's `RetryAfter` may push a task to, past its own policy.
const PLUGIN_RETRY_LIMIT: u32 = 10;

enum Launch {
    Start(Start),
    Finish(Arc<TaskEntry>, Finished),
}

struct Finished {
    outcome: Outcome,
    attempts: Vec<AttemptRecord>,
    tx: Option<oneshot::Sender<TaskResult>>,
}

fn fmt_dur(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn hash2(key: &[u8], salt: u64) -> u64 {
    // FNV-1a over the key, then a SplitMix64 finaliser with the agent id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Submission order of a batch: shortest first by cost, or input order interleaved across
/// targets.
fn batch_order(specs: &[TaskSpec], fairness: Fairness) -> Vec<usize> {
    match fairness {
        Fairness::ShortestFirst => {
            let mut idx: Vec<usize> = (0..specs.len()).collect();
            idx.sort_by(|&a, &b| {
                let ca = specs[a].cost.unwrap_or(f64::INFINITY);
                let cb = specs[b].cost.unwrap_or(f64::INFINITY);
                ca.total_cmp(&cb).then(a.cmp(&b))
            });
            idx
        }
        Fairness::RoundRobin => {
            let mut groups: Vec<(Target, VecDeque<usize>)> = Vec::new();
            for (i, s) in specs.iter().enumerate() {
                match groups.iter_mut().find(|(t, _)| *t == s.target) {
                    Some((_, g)) => g.push_back(i),
                    None => groups.push((s.target.clone(), VecDeque::from([i]))),
                }
            }
            let mut out = Vec::with_capacity(specs.len());
            while out.len() < specs.len() {
                for (_, g) in groups.iter_mut() {
                    if let Some(i) = g.pop_front() {
                        out.push(i);
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_interleaves_targets() {
        let a = |n: &str| TaskSpec::for_role(n, Value::Null);
        let specs = vec![a("x"), a("x"), a("x"), a("y"), a("y"), a("z")];
        assert_eq!(
            batch_order(&specs, Fairness::RoundRobin),
            vec![0, 3, 5, 1, 4, 2]
        );
    }

    #[test]
    fn shortest_first_sorts_by_cost_stably() {
        let c = |c: Option<f64>| {
            let s = TaskSpec::for_role("x", Value::Null);
            match c {
                Some(c) => s.with_cost(c),
                None => s,
            }
        };
        let specs = vec![c(Some(3.0)), c(None), c(Some(1.0)), c(Some(3.0))];
        assert_eq!(
            batch_order(&specs, Fairness::ShortestFirst),
            vec![2, 0, 3, 1]
        );
    }

    #[test]
    fn rendezvous_hash_spreads_keys() {
        let agents = [1u64, 2, 3, 4];
        let mut hits = [0usize; 4];
        for k in 0..4000 {
            let key = format!("key-{k}");
            let best = (0..4)
                .max_by_key(|&i| hash2(key.as_bytes(), agents[i]))
                .unwrap_or(0);
            hits[best] += 1;
        }
        assert!(hits.iter().all(|&h| h > 700), "{hits:?}");
    }
}
