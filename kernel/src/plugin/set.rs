//! The loaded plugins and their dispatch: decision hooks inline in config order (first
//! non-Continue wins, time measured), observer hooks on one thread per plugin fed by its own
//! bounded subscription to the bus (overflow counted), and quarantine of a plugin that keeps
//! failing.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::nonexhaustive_enum::NonExhaustiveFor;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RStr};
use hive_plugin_api::{
    AgentEvent, AgentFailure, AgentStateChange, AttemptEvent, Delegate, DelegateRequest,
    DriverRequest, DriverStep, FailureInfo, Hooks, HostHandle, Host_TO, Metric, OnFailure,
    PluginBox, PluginError, RunEvent, TaskCompletion, TaskEvent,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::host::{HostCommand, KernelHost};
use super::loader::{self, LoadErrorKind, PluginLoadError, PluginManifest};
use crate::event::{kind, Event, EventStream};
use crate::kernel::Inner;
use crate::task::Target;

/// One `[[plugins]]` entry: what to load and with which config.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PluginSpec {
    /// Its name (found on the search path unless `path` is given; with `path`, the name it
    /// goes by, default the manifest's).
    pub name: Option<String>,
    /// The library file.
    pub path: Option<PathBuf>,
    /// A failure to load is a warning, not an error.
    pub optional: bool,
    /// Its own config, as JSON.
    pub config: Value,
    /// Only these of its hooks are called (default: all it subscribes to).
    pub hooks: Option<Vec<String>>,
    /// A plugin linked into this program (its rlib) instead of a library file.
    pub linked: Option<LinkedPlugin>,
}

/// The root module of a plugin linked into this program through its rlib
/// (`hive_plugin_api::linked_module::<ThePlugin>()`). Loaded like a library (manifest,
/// config, hooks, quarantine: the same), with no file on disk.
#[derive(Clone, Copy)]
pub struct LinkedPlugin(pub hive_plugin_api::PluginMod_Ref);

impl std::fmt::Debug for LinkedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkedPlugin")
    }
}

impl PartialEq for LinkedPlugin {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0 .0.to_raw_ptr(), other.0 .0.to_raw_ptr())
    }
}

impl PluginSpec {
    /// The plugin at `path`, with an empty config.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            name: None,
            path: Some(path.into()),
            optional: false,
            config: Value::Object(Default::default()),
            hooks: None,
            linked: None,
        }
    }
    /// A plugin linked into this program: `module` is
    /// `hive_plugin_api::linked_module::<ThePlugin>()` (the plugin's implementation crate is
    /// a dependency, as an rlib).
    pub fn linked(module: hive_plugin_api::PluginMod_Ref) -> Self {
        PluginSpec {
            linked: Some(LinkedPlugin(module)),
            ..Self::path("")
        }
        .no_path()
    }
    /// The plugin named `name` on the search path.
    pub fn named(name: impl Into<String>) -> Self {
        PluginSpec {
            name: Some(name.into()),
            ..Self::path("")
        }
        .no_path()
    }
    fn no_path(mut self) -> Self {
        self.path = None;
        self
    }
    /// Sets the config.
    pub fn with_config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }
    /// Sets the name it goes by.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Makes it optional.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
    /// Restricts the hooks called.
    pub fn with_hooks(mut self, hooks: Vec<String>) -> Self {
        self.hooks = Some(hooks);
        self
    }
}

/// When a plugin is quarantined: `max_errors` failed hooks within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuarantinePolicy {
    /// Failures that quarantine.
    pub max_errors: usize,
    /// Within this window.
    pub window: Duration,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            max_errors: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl QuarantinePolicy {
    /// `max_errors` failures within `window`.
    pub fn new(max_errors: usize, window: Duration) -> Self {
        QuarantinePolicy {
            max_errors: max_errors.max(1),
            window,
        }
    }
}

/// One plugin in the health report.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct PluginHealth {
    /// The name it goes by.
    pub name: String,
    /// Its version (empty if it did not load).
    pub version: String,
    /// The library.
    pub path: String,
    /// `loaded`, `quarantined` or `failed` (an optional plugin that did not load).
    pub state: String,
    /// Why it is quarantined or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The hooks called.
    pub hooks: Vec<String>,
    /// The agent drivers it contributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<String>,
    /// Hook calls that failed or panicked.
    pub errors: u64,
    /// Events delivered to its observer hooks.
    pub delivered: u64,
    /// Events it lost because its observer hooks fell behind.
    pub dropped: u64,
    /// Decision hook calls.
    pub decisions: u64,
    /// Mean time of its decision hooks, in microseconds.
    pub decision_mean_us: f64,
    /// Longest decision hook call, in microseconds.
    pub decision_max_us: f64,
    /// Its `status()` JSON.
    pub status: Value,
}

pub(crate) struct LoadedPlugin {
    pub(crate) name: Arc<str>,
    pub(crate) manifest: PluginManifest,
    hooks: Hooks,
    plugin: PluginBox,
    /// The drivers it contributes.
    pub(crate) drivers: Vec<Arc<str>>,
    quarantined: AtomicBool,
    reason: Mutex<Option<String>>,
    recent_errors: Mutex<VecDeque<Instant>>,
    errors: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    decisions: AtomicU64,
    decision_ns: AtomicU64,
    decision_max_ns: AtomicU64,
}

impl LoadedPlugin {
    fn wants(&self, h: Hooks) -> bool {
        self.hooks.contains(h) && !self.quarantined.load(Ordering::Acquire)
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        let ns = t0.elapsed().as_nanos() as u64;
        self.decisions.fetch_add(1, Ordering::Relaxed);
        self.decision_ns.fetch_add(ns, Ordering::Relaxed);
        self.decision_max_ns.fetch_max(ns, Ordering::Relaxed);
        r
    }
}

struct Failed {
    spec_name: String,
    path: String,
    reason: String,
}

/// Every loaded plugin, in config order.
pub(crate) struct PluginSet {
    plugins: Vec<Arc<LoadedPlugin>>,
    failed: Vec<Failed>,
    delegates: Vec<Arc<LoadedPlugin>>,
    on_failed: Vec<Arc<LoadedPlugin>>,
    policy: QuarantinePolicy,
    kernel: std::sync::Weak<Inner>,
    stop: CancellationToken,
    /// When the observers must be done delivering their backlog (set at stop).
    stop_by: Mutex<Option<Instant>>,
    threads: Mutex<Vec<(Arc<LoadedPlugin>, std::sync::mpsc::Receiver<()>)>>,
    /// Whether the final statuses were reported (once per kernel).
    reported: AtomicBool,
}

fn observer_mask(h: Hooks) -> u64 {
    let mut m = 0;
    for (hook, k) in [
        (Hooks::AGENT_SPAWNED, kind::AGENT_SPAWNED),
        (Hooks::AGENT_STATE_CHANGED, kind::AGENT_STATE_CHANGED),
        (Hooks::AGENT_FAILED, kind::AGENT_FAILED),
        (Hooks::TASK_SUBMITTED, kind::TASK_SUBMITTED),
        (Hooks::TASK_DELEGATED, kind::TASK_DELEGATED),
        (Hooks::TASK_STARTED, kind::TASK_STARTED),
        (Hooks::TASK_COMPLETED, kind::TASK_COMPLETED),
        (Hooks::PERFORMANCE_METRIC, kind::METRIC),
        (Hooks::RUN_STARTED, kind::RUN),
        (Hooks::RUN_FINISHED, kind::RUN),
        (Hooks::ATTEMPT_FINISHED, kind::ATTEMPT),
    ] {
        if h.contains(hook) {
            m |= k;
        }
    }
    m
}

fn s(x: &str) -> RStr<'_> {
    RStr::from(x)
}

/// The payload of `task_delegated` and `task_started`.
fn attempt_event<'a>(
    task: crate::TaskId,
    name: &'a Option<Arc<str>>,
    target: &'a Target,
    agent: crate::AgentId,
    attempt: u32,
) -> TaskEvent<'a> {
    TaskEvent {
        task: task.get(),
        name: s(name.as_deref().unwrap_or("")),
        target: abi_target(target),
        agent: agent.get(),
        attempt,
        priority: 0,
    }
}

/// The plugin-side (borrowed) view of a kernel target.
pub(crate) fn abi_target(t: &Target) -> hive_plugin_api::TargetRef<'_> {
    use hive_plugin_api::{TargetKind, TargetRef};
    match t {
        Target::Role(r) => TargetRef {
            kind: TargetKind::ROLE,
            name: RStr::from(&**r),
            agent: 0,
        },
        Target::Capability(c) => TargetRef {
            kind: TargetKind::CAPABILITY,
            name: RStr::from(&**c),
            agent: 0,
        },
        Target::Agent(a) => TargetRef {
            kind: TargetKind::AGENT,
            name: RStr::from(""),
            agent: a.get(),
        },
    }
}

/// The kernel-side view of a plugin's target.
pub(crate) fn kernel_target(t: &hive_plugin_api::Target) -> Target {
    match t.kind {
        hive_plugin_api::TargetKind::CAPABILITY => Target::capability(t.name.as_str()),
        hive_plugin_api::TargetKind::AGENT => Target::Agent(crate::AgentId(t.agent)),
        _ => Target::role(t.name.as_str()),
    }
}

impl PluginSet {
    /// Loads the plugins in order. A required plugin that fails stops everything (the
    /// already-loaded ones are shut down); an optional one is recorded and skipped.
    pub(crate) fn load(
        kernel: &Arc<Inner>,
        specs: &[PluginSpec],
        policy: QuarantinePolicy,
        base_dir: &std::path::Path,
    ) -> Result<(Arc<PluginSet>, Vec<PluginLoadError>), PluginLoadError> {
        let (tx, rx) = mpsc::unbounded_channel::<HostCommand>();
        let mut plugins: Vec<Arc<LoadedPlugin>> = Vec::new();
        let mut failed = Vec::new();
        let mut warnings = Vec::new();
        for spec in specs {
            match Self::load_one(kernel, spec, base_dir, &tx, &plugins) {
                Ok(p) => plugins.push(Arc::new(p)),
                Err(e) if spec.optional => {
                    tracing::warn!("optional {e}");
                    failed.push(Failed {
                        spec_name: spec.name.clone().unwrap_or_default(),
                        path: e.path.display().to_string(),
                        reason: e.message.clone(),
                    });
                    warnings.push(e);
                }
                Err(e) => {
                    for p in &plugins {
                        let _ = p.plugin.shutdown();
                    }
                    return Err(e);
                }
            }
        }
        let set = Arc::new(PluginSet {
            delegates: plugins
                .iter()
                .filter(|p| p.hooks.contains(Hooks::BEFORE_DELEGATE))
                .cloned()
                .collect(),
            on_failed: plugins
                .iter()
                .filter(|p| p.hooks.contains(Hooks::ON_TASK_FAILED))
                .cloned()
                .collect(),
            plugins,
            failed,
            policy,
            kernel: Arc::downgrade(kernel),
            stop: CancellationToken::new(),
            stop_by: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            reported: AtomicBool::new(false),
        });
        kernel
            .rt()
            .spawn(super::host::apply_commands(Arc::downgrade(kernel), rx));
        for p in &set.plugins {
            let mask = observer_mask(p.hooks);
            if mask == 0 {
                continue;
            }
            let stream = kernel.bus.subscribe_to(mask);
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let handle = set.spawn_observer(p.clone(), stream, done_tx);
            match handle {
                Ok(_) => set.threads.lock().push((p.clone(), done_rx)),
                Err(e) => {
                    tracing::error!(plugin = %p.name, "cannot start the observer thread: {e}")
                }
            }
        }
        Ok((set, warnings))
    }

    fn load_one(
        kernel: &Arc<Inner>,
        spec: &PluginSpec,
        base_dir: &std::path::Path,
        tx: &mpsc::UnboundedSender<HostCommand>,
        loaded: &[Arc<LoadedPlugin>],
    ) -> Result<LoadedPlugin, PluginLoadError> {
        let path = match (&spec.path, &spec.name) {
            _ if spec.linked.is_some() => PathBuf::from("(linked)"),
            (Some(p), _) if p.is_absolute() => p.clone(),
            (Some(p), _) => base_dir.join(p),
            (None, Some(n)) => loader::find(n)?,
            (None, None) => {
                return Err(PluginLoadError::new(
                    std::path::Path::new("?"),
                    LoadErrorKind::NotFound,
                    "a [[plugins]] entry needs `name` or `path`",
                ))
            }
        };
        let (module, manifest) = match spec.linked {
            Some(LinkedPlugin(module)) => loader::open_linked(module),
            None => loader::open(&path)?,
        };
        let path = match spec.linked {
            Some(_) => PathBuf::from(format!("(linked) {}", manifest.name)),
            None => path,
        };
        let manifest = PluginManifest::from_abi(&manifest, &path);
        let name: Arc<str> = Arc::from(spec.name.clone().unwrap_or_else(|| manifest.name.clone()));
        if loaded.iter().any(|p| p.name == name) {
            return Err(PluginLoadError::new(
                &path,
                LoadErrorKind::Duplicate,
                format!(
                    "a plugin named `{name}` is already loaded (give this entry another `name`)"
                ),
            ));
        }
        let declared = Hooks(
            manifest
                .hooks
                .iter()
                .filter_map(|h| Hooks::by_name(h))
                .fold(0, |a, h| a | h.0),
        );
        let hooks = match &spec.hooks {
            None => declared,
            Some(list) => {
                let mut only = Hooks::NONE;
                for h in list {
                    let Some(bit) = Hooks::by_name(h) else {
                        return Err(PluginLoadError::new(
                            &path,
                            LoadErrorKind::ConfigRefused,
                            format!(
                                "`hooks`: unknown hook `{h}`, expected one of {}",
                                Hooks::ALL.names().join(", ")
                            ),
                        ));
                    };
                    only = only | bit;
                }
                Hooks(only.0 & declared.0)
            }
        };
        let host: HostHandle = Host_TO::from_ptr(
            RArc::new(KernelHost {
                plugin: name.clone(),
                tx: tx.clone(),
                kernel: Arc::downgrade(kernel),
                linked: spec.linked.is_some(),
            }),
            TD_Opaque,
        );
        let config = serde_json::to_string(&spec.config).unwrap_or_else(|_| "{}".into());
        let plugin = match (module.new())(RStr::from(config.as_str()), host) {
            RResult::ROk(p) => p,
            RResult::RErr(e) => {
                let kind = if e.kind == hive_plugin_api::ErrorKind::CONFIG {
                    LoadErrorKind::ConfigRefused
                } else {
                    LoadErrorKind::InitFailed
                };
                let what = if kind == LoadErrorKind::ConfigRefused {
                    "refused its config"
                } else {
                    "failed to initialise"
                };
                return Err(PluginLoadError::new(
                    &path,
                    kind,
                    format!("`{name}` {what}: {}", e.message),
                ));
            }
        };
        // A 1.2 plugin narrows its hooks from its config; an older one answers "all".
        let hooks = Hooks(hooks.0 & plugin.hooks().0);
        let drivers: Vec<Arc<str>> = plugin
            .drivers()
            .as_str()
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(Arc::from)
            .collect();
        for d in &drivers {
            if ["process", "stdio", "inproc"].contains(&&**d) {
                return Err(PluginLoadError::new(
                    &path,
                    LoadErrorKind::InitFailed,
                    format!("`{name}` contributes a driver named `{d}`, which is a built-in driver's name"),
                ));
            }
            if let Some(other) = loaded.iter().find(|p| p.drivers.contains(d)) {
                return Err(PluginLoadError::new(
                    &path,
                    LoadErrorKind::Duplicate,
                    format!(
                        "`{name}` contributes driver `{d}`, which `{}` already contributes",
                        other.name
                    ),
                ));
            }
        }
        tracing::info!(plugin = %name, version = %manifest.version, "plugin loaded from {}", path.display());
        Ok(LoadedPlugin {
            name,
            manifest,
            hooks,
            plugin,
            drivers,
            quarantined: AtomicBool::new(false),
            reason: Mutex::new(None),
            recent_errors: Mutex::new(VecDeque::new()),
            errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            decisions: AtomicU64::new(0),
            decision_ns: AtomicU64::new(0),
            decision_max_ns: AtomicU64::new(0),
        })
    }

    /// Counts a failed hook, logs it with the plugin's and the hook's names, and
    /// quarantines the plugin when it fails too often.
    fn failed_hook(&self, p: &LoadedPlugin, hook: &'static str, e: &PluginError) {
        p.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %p.name, hook, "plugin hook failed: {}", e.message);
        let kernel = self.kernel.upgrade();
        if let Some(k) = &kernel {
            k.bus.emit_with(kind::PLUGIN, || Event::PluginError {
                plugin: p.name.clone(),
                hook,
                message: e.message.to_string(),
            });
        }
        let now = Instant::now();
        let mut recent = p.recent_errors.lock();
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            recent.pop_front();
        }
        if recent.len() >= self.policy.max_errors && !p.quarantined.swap(true, Ordering::AcqRel) {
            let reason = format!(
                "{} failed hook calls within {}s (last: {hook}: {})",
                recent.len(),
                self.policy.window.as_secs(),
                e.message
            );
            tracing::error!(plugin = %p.name, "plugin quarantined: {reason}");
            if let Some(k) = &kernel {
                k.bus.emit(Event::PluginQuarantined {
                    plugin: p.name.clone(),
                    reason: reason.clone(),
                });
            }
            *p.reason.lock() = Some(reason);
        }
    }

    pub(crate) fn has_delegate_hooks(&self) -> bool {
        !self.delegates.is_empty()
    }

    pub(crate) fn has_failure_hooks(&self) -> bool {
        !self.on_failed.is_empty()
    }

    /// Asks `plugins` in config order (skipping the quarantined); the first answer for which
    /// `passes` is false wins. An answer this kernel does not know counts as a pass; a failed
    /// call is counted towards quarantine and counts as a pass too.
    fn first_decision<E>(
        &self,
        plugins: &[Arc<LoadedPlugin>],
        hook: &'static str,
        bit: Hooks,
        ask: impl Fn(&LoadedPlugin) -> RResult<NonExhaustiveFor<E>, PluginError>,
        passes: impl Fn(&E) -> bool,
    ) -> Option<(Arc<str>, E)>
    where
        E: Clone + abi_stable::nonexhaustive_enum::GetEnumInfo,
    {
        for p in plugins {
            if !p.wants(bit) {
                continue;
            }
            match p.timed(|| ask(p)) {
                RResult::ROk(d) => match d.as_enum() {
                    Ok(answer) if passes(answer) => {}
                    Ok(answer) => return Some((p.name.clone(), answer.clone())),
                    Err(_) => {
                        tracing::warn!(plugin = %p.name, hook, "unknown answer (a newer plugin-api?); ignored")
                    }
                },
                RResult::RErr(e) => self.failed_hook(p, hook, &e),
            }
        }
        None
    }

    /// `before_delegate` in config order; the first non-Continue answer wins.
    pub(crate) fn before_delegate(
        &self,
        req: &DelegateRequest<'_>,
    ) -> Option<(Arc<str>, Delegate)> {
        self.first_decision(
            &self.delegates,
            "before_delegate",
            Hooks::BEFORE_DELEGATE,
            |p| p.plugin.before_delegate(req),
            |d| matches!(d, Delegate::Continue),
        )
    }

    /// `on_task_failed` in config order; the first non-Default answer wins.
    pub(crate) fn on_task_failed(&self, info: &FailureInfo<'_>) -> Option<(Arc<str>, OnFailure)> {
        self.first_decision(
            &self.on_failed,
            "on_task_failed",
            Hooks::ON_TASK_FAILED,
            |p| p.plugin.on_task_failed(info),
            |d| matches!(d, OnFailure::Default),
        )
    }

    /// The plugin contributing driver `name`, if any is loaded.
    pub(crate) fn driver_plugin(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins
            .iter()
            .find(|p| p.drivers.iter().any(|d| &**d == name))
            .cloned()
    }

    /// Every driver the loaded plugins contribute.
    pub(crate) fn driver_names(&self) -> Vec<String> {
        self.plugins
            .iter()
            .flat_map(|p| p.drivers.iter().map(|d| d.to_string()))
            .collect()
    }

    /// Asks `p` (which contributes `req.driver`) what an attempt does; timed like a
    /// decision. A failed call is counted towards quarantine and fails the attempt.
    pub(crate) fn driver_execute(
        &self,
        p: &LoadedPlugin,
        req: &DriverRequest<'_>,
    ) -> Result<DriverStep, String> {
        if p.quarantined.load(Ordering::Acquire) {
            return Err(format!(
                "driver `{}`: plugin `{}` is quarantined",
                req.driver, p.name
            ));
        }
        match p.timed(|| p.plugin.driver_execute(req)) {
            RResult::ROk(step) => step.as_enum().cloned().map_err(|_| {
                format!(
                    "driver `{}`: plugin `{}` answered with a step this kernel does not know",
                    req.driver, p.name
                )
            }),
            RResult::RErr(e) => {
                self.failed_hook(p, "driver_execute", &e);
                Err(format!(
                    "driver `{}` (plugin `{}`): {}",
                    req.driver, p.name, e.message
                ))
            }
        }
    }

    /// The observer thread of one plugin. It drains its subscription in batches and naps
    /// (1 ms, backing off to 10 ms when idle) instead of parking on the channel, so that an
    /// emit never pays for waking it: observers are asynchronous by contract, and this keeps
    /// their cost on the dispatch path to building and enqueueing the event.
    fn spawn_observer(
        self: &Arc<Self>,
        p: Arc<LoadedPlugin>,
        mut stream: EventStream,
        done: std::sync::mpsc::Sender<()>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let set = Arc::downgrade(self);
        let stop = self.stop.clone();
        std::thread::Builder::new()
            .name(format!("hive-plugin-{}", p.name))
            .spawn(move || {
                let mut nap = Duration::from_millis(1);
                loop {
                    let stopping = stop.is_cancelled();
                    let Some(set) = set.upgrade() else { break };
                    let mut got = 0u32;
                    while let Some(ev) = stream.try_recv() {
                        got += 1;
                        set.deliver(&p, &ev.event);
                        p.dropped.store(stream.lost(), Ordering::Relaxed);
                        if stopping
                            && Instant::now() >= set.stop_by.lock().unwrap_or_else(Instant::now)
                        {
                            break;
                        }
                    }
                    p.dropped.store(stream.lost(), Ordering::Relaxed);
                    if stopping {
                        // Past the deadline, what is left is dropped (and counted).
                        let mut late = 0u64;
                        while stream.try_recv().is_some() {
                            late += 1;
                        }
                        p.dropped.store(stream.lost() + late, Ordering::Relaxed);
                        break;
                    }
                    drop(set);
                    nap = if got > 0 {
                        Duration::from_millis(1)
                    } else {
                        (nap * 2).min(Duration::from_millis(10))
                    };
                    std::thread::sleep(nap);
                }
                let _ = done.send(());
            })
    }

    /// Calls the observer hook of `event` on `p`, if subscribed (no allocation: the hook gets
    /// views into the event).
    fn deliver(&self, p: &LoadedPlugin, event: &Event) {
        let r: Option<(&'static str, RResult<(), PluginError>)> = match event {
            Event::AgentSpawned {
                agent,
                role,
                driver,
                capacity,
            } if p.wants(Hooks::AGENT_SPAWNED) => Some((
                "on_agent_spawned",
                p.plugin.on_agent_spawned(&AgentEvent {
                    agent: agent.get(),
                    role: s(role),
                    driver: s(driver),
                    capacity: *capacity,
                }),
            )),
            Event::AgentStateChanged {
                agent,
                role,
                from,
                to,
            } if p.wants(Hooks::AGENT_STATE_CHANGED) => Some((
                "on_agent_state_changed",
                p.plugin.on_agent_state_changed(&AgentStateChange {
                    agent: agent.get(),
                    role: s(role),
                    from: s(from.name()),
                    to: s(to.name()),
                }),
            )),
            Event::AgentFailed {
                agent,
                role,
                reason,
                in_flight,
            } if p.wants(Hooks::AGENT_FAILED) => Some((
                "on_agent_failed",
                p.plugin.on_agent_failed(&AgentFailure {
                    agent: agent.get(),
                    role: s(role),
                    reason: s(reason),
                    in_flight: *in_flight,
                }),
            )),
            Event::TaskSubmitted {
                task,
                name,
                target,
                priority,
                ..
            } if p.wants(Hooks::TASK_SUBMITTED) => Some((
                "on_task_submitted",
                p.plugin.on_task_submitted(&TaskEvent {
                    task: task.get(),
                    name: s(name.as_deref().unwrap_or("")),
                    target: abi_target(target),
                    agent: 0,
                    attempt: 0,
                    priority: *priority,
                }),
            )),
            Event::TaskDelegated {
                task,
                name,
                target,
                agent,
                attempt,
            } if p.wants(Hooks::TASK_DELEGATED) => Some((
                "on_task_delegated",
                p.plugin
                    .on_task_delegated(&attempt_event(*task, name, target, *agent, *attempt)),
            )),
            Event::TaskStarted {
                task,
                name,
                target,
                agent,
                attempt,
            } if p.wants(Hooks::TASK_STARTED) => Some((
                "on_task_started",
                p.plugin
                    .on_task_started(&attempt_event(*task, name, target, *agent, *attempt)),
            )),
            Event::TaskCompleted {
                task,
                name,
                status,
                attempts,
                agent,
                duration_ms,
                error,
            } if p.wants(Hooks::TASK_COMPLETED) => Some((
                "on_task_completed",
                p.plugin.on_task_completed(&TaskCompletion {
                    task: task.get(),
                    name: s(name.as_deref().unwrap_or("")),
                    status: s(status.as_str()),
                    attempts: *attempts,
                    agent: agent.map_or(0, |a| a.get()),
                    duration_ms: *duration_ms,
                    error: s(error.as_deref().unwrap_or("")),
                }),
            )),
            Event::Metric {
                agent,
                task,
                name,
                value,
            } if p.wants(Hooks::PERFORMANCE_METRIC) => Some((
                "on_performance_metric",
                p.plugin.on_performance_metric(&Metric {
                    agent: agent.get(),
                    task: task.map_or(0, |t| t.get()),
                    source: RStr::from(""),
                    name: s(name),
                    value: *value,
                }),
            )),
            Event::PluginMetric {
                plugin,
                name,
                value,
            } if p.wants(Hooks::PERFORMANCE_METRIC) => Some((
                "on_performance_metric",
                p.plugin.on_performance_metric(&Metric {
                    agent: 0,
                    task: 0,
                    source: s(plugin),
                    name: s(name),
                    value: *value,
                }),
            )),
            Event::AttemptFinished {
                task,
                name,
                role,
                agent,
                attempt,
                status,
                queue_ms,
                run_ms,
                error,
                will_retry,
            } if p.wants(Hooks::ATTEMPT_FINISHED) => Some((
                "on_attempt_finished",
                p.plugin.on_attempt_finished(&AttemptEvent {
                    task: task.get(),
                    name: s(name.as_deref().unwrap_or("")),
                    role: s(role),
                    agent: agent.get(),
                    attempt: *attempt,
                    status: s(status.as_str()),
                    queue_ms: *queue_ms,
                    run_ms: *run_ms,
                    error: s(error.as_deref().unwrap_or("")),
                    will_retry: *will_retry,
                }),
            )),
            Event::RunStarted { run, plan } if p.wants(Hooks::RUN_STARTED) => Some((
                "on_run_started",
                p.plugin.on_run_started(&RunEvent {
                    run: s(run),
                    plan: s(plan),
                    state: s("running"),
                }),
            )),
            Event::RunFinished { run, plan, state } if p.wants(Hooks::RUN_FINISHED) => Some((
                "on_run_finished",
                p.plugin.on_run_finished(&RunEvent {
                    run: s(run),
                    plan: s(plan),
                    state: s(state),
                }),
            )),
            _ => None,
        };
        if let Some((hook, r)) = r {
            p.delivered.fetch_add(1, Ordering::Relaxed);
            if let RResult::RErr(e) = r {
                self.failed_hook(p, hook, &e);
            }
        }
    }

    /// Stops the observer threads: each delivers what is buffered until `within` has passed
    /// (the rest is dropped, and counted). Then calls every plugin's `shutdown`, except those
    /// quarantined or stuck in a hook past the deadline (those are left behind, never waited
    /// for: a plugin cannot hold up the kernel's exit).
    pub(crate) fn stop(&self, within: Duration) {
        let by = Instant::now() + within;
        *self.stop_by.lock() = Some(by);
        self.stop.cancel();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        let mut stuck: Vec<Arc<str>> = Vec::new();
        for (p, done) in threads {
            let left = by.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
            if done.recv_timeout(left).is_err() {
                tracing::warn!(plugin = %p.name, "observer hook still running at shutdown; not waiting for it");
                stuck.push(p.name.clone());
            }
        }
        for p in &self.plugins {
            if p.quarantined.load(Ordering::Acquire) || stuck.contains(&p.name) {
                continue;
            }
            if let RResult::RErr(e) = p.plugin.shutdown() {
                self.failed_hook(p, "shutdown", &e);
            }
        }
    }

    /// True the first time only: whoever gets it reports the final statuses.
    pub(crate) fn report_final_once(&self) -> bool {
        !self.reported.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn health(&self) -> Vec<PluginHealth> {
        let mut out: Vec<PluginHealth> = self
            .plugins
            .iter()
            .map(|p| {
                let decisions = p.decisions.load(Ordering::Relaxed);
                let quarantined = p.quarantined.load(Ordering::Acquire);
                let status = if quarantined {
                    Value::Null
                } else {
                    serde_json::from_str(p.plugin.status().as_str()).unwrap_or(Value::Null)
                };
                PluginHealth {
                    name: p.name.to_string(),
                    version: p.manifest.version.clone(),
                    path: p.manifest.path.display().to_string(),
                    state: if quarantined {
                        "quarantined".into()
                    } else {
                        "loaded".into()
                    },
                    reason: p.reason.lock().clone(),
                    hooks: p.hooks.names().into_iter().map(String::from).collect(),
                    drivers: p.drivers.iter().map(|d| d.to_string()).collect(),
                    errors: p.errors.load(Ordering::Relaxed),
                    delivered: p.delivered.load(Ordering::Relaxed),
                    dropped: p.dropped.load(Ordering::Relaxed),
                    decisions,
                    decision_mean_us: if decisions > 0 {
                        p.decision_ns.load(Ordering::Relaxed) as f64 / decisions as f64 / 1e3
                    } else {
                        0.0
                    },
                    decision_max_us: p.decision_max_ns.load(Ordering::Relaxed) as f64 / 1e3,
                    status,
                }
            })
            .collect();
        out.extend(self.failed.iter().map(|f| PluginHealth {
            name: f.spec_name.clone(),
            version: String::new(),
            path: f.path.clone(),
            state: "failed".into(),
            reason: Some(f.reason.clone()),
            hooks: Vec::new(),
            drivers: Vec::new(),
            errors: 0,
            delivered: 0,
            dropped: 0,
            decisions: 0,
            decision_mean_us: 0.0,
            decision_max_us: 0.0,
            status: Value::Null,
        }));
        out
    }
}
