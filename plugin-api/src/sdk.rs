//! The SDK: what a plugin author writes against. Implement [`HivePlugin`] (plain Rust,
//! `Result`s, default hooks) and export it with [`export_plugin!`]. The SDK wraps every hook
//! in `catch_unwind`, so a panic becomes an error the kernel counts (never an abort), and
//! installs a tracing subscriber in the plugin's own copy of `tracing` that forwards events
//! to the kernel's log under the plugin's name.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RStr, RString},
};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::types::*;
use crate::{HostHandle, Plugin, PluginBox, Plugin_TO};

/// What a plugin gets to talk to the kernel. Every call returns at once.
#[derive(Clone)]
pub struct PluginContext {
    host: HostHandle,
    name: &'static str,
}

impl std::fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginContext")
            .field("name", &self.name)
            .finish()
    }
}

impl PluginContext {
    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Logs a line (plugins may also just use `tracing::info!` and friends).
    pub fn log(&self, level: LogLevel, message: &str) {
        self.host.log(level, RStr::from(message));
    }
    /// Reports a metric.
    pub fn metric(&self, name: &str, value: f64) {
        self.host.metric(RStr::from(name), value);
    }
    /// Queues the spawn of one more agent of `role` (like its pool in the config).
    pub fn spawn_agent(&self, role: &str) -> Result<u64, PluginError> {
        self.host.spawn_agent(RStr::from(role)).into_result()
    }
    /// Queues the shutdown of an agent.
    pub fn shutdown_agent(&self, agent: u64, graceful: bool) -> Result<(), PluginError> {
        self.host.shutdown_agent(agent, graceful).into_result()
    }
    /// Queues a task (`{"role": .., "payload": ..}`); returns its id.
    pub fn submit_task(&self, request_json: &str) -> Result<u64, PluginError> {
        self.host
            .submit_task(RStr::from(request_json))
            .into_result()
    }
    /// The kernel's health report as JSON.
    pub fn health_json(&self) -> String {
        self.host.health_json().into_string()
    }
    // api-since-1.2 {
    /// Queues the hard kill of an agent: it fails with `reason` and its in-flight tasks go
    /// back to their retry policy.
    pub fn kill_agent(&self, agent: u64, reason: &str) -> Result<(), PluginError> {
        self.host
            .kill_agent(agent, RStr::from(reason))
            .into_result()
    }
    /// Emits a named event (`data_json`: a JSON object) on the kernel's bus.
    pub fn emit(&self, name: &str, data_json: &str) {
        self.host.emit(RStr::from(name), RStr::from(data_json));
    }
    // } api-since-1.2
}

/// A plugin, as its author writes it. Only the hooks in `HOOKS` are called; all take
/// `&self` (use interior mutability): decision hooks run concurrently on the kernel's worker
/// threads, observer hooks on the plugin's own thread.
pub trait HivePlugin: Send + Sync + Sized + 'static {
    /// Unique name.
    const NAME: &'static str;
    /// The plugin's own version.
    const VERSION: &'static str;
    /// One line about it.
    const DESCRIPTION: &'static str = "";
    /// The hooks it subscribes to.
    const HOOKS: Hooks;

    /// Builds an instance from its config (a JSON object; `{}` when none). Refuse a bad
    /// config with [`PluginError::config`].
    fn new(config_json: &str, ctx: PluginContext) -> Result<Self, PluginError>;

    /// See [`Plugin::on_agent_spawned`].
    fn on_agent_spawned(&self, _e: &AgentEvent<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_agent_state_changed`].
    fn on_agent_state_changed(&self, _e: &AgentStateChange<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_agent_failed`].
    fn on_agent_failed(&self, _e: &AgentFailure<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_task_submitted`].
    fn on_task_submitted(&self, _e: &TaskEvent<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_task_delegated`].
    fn on_task_delegated(&self, _e: &TaskEvent<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_task_started`].
    fn on_task_started(&self, _e: &TaskEvent<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_task_completed`].
    fn on_task_completed(&self, _e: &TaskCompletion<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_performance_metric`].
    fn on_performance_metric(&self, _e: &Metric<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    // api-since-1.1 {
    /// See [`Plugin::on_run_started`].
    fn on_run_started(&self, _e: &RunEvent<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::on_run_finished`].
    fn on_run_finished(&self, _e: &RunEvent<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    // } api-since-1.1
    // api-since-1.2 {
    /// See [`Plugin::hooks`]: the hooks this instance wants, a subset of `HOOKS` chosen from
    /// its config (default: `HOOKS`).
    fn hooks(&self) -> Hooks {
        Self::HOOKS
    }
    /// See [`Plugin::on_attempt_finished`].
    fn on_attempt_finished(&self, _e: &AttemptEvent<'_>) -> Result<(), PluginError> {
        Ok(())
    }
    /// See [`Plugin::drivers`]: the names of the drivers this instance contributes.
    fn drivers(&self) -> Vec<String> {
        Vec::new()
    }
    /// See [`Plugin::driver_execute`].
    fn driver_execute(&self, _r: &DriverRequest<'_>) -> Result<DriverStep, PluginError> {
        Err(PluginError::hook("this plugin contributes no driver"))
    }
    // } api-since-1.2
    /// See [`Plugin::before_delegate`].
    fn before_delegate(&self, _r: &DelegateRequest<'_>) -> Result<Delegate, PluginError> {
        Ok(Delegate::Continue)
    }
    /// See [`Plugin::on_task_failed`].
    fn on_task_failed(&self, _f: &FailureInfo<'_>) -> Result<OnFailure, PluginError> {
        Ok(OnFailure::Default)
    }
    /// The plugin's state as a JSON object.
    fn status(&self) -> String {
        "{}".into()
    }
    /// The kernel is shutting down.
    fn shutdown(&self) -> Result<(), PluginError> {
        Ok(())
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

thread_local! {
    /// The host of the plugin instance whose hook runs on this thread (its logs go there).
    static HOOK_HOST: RefCell<Option<HostHandle>> = const { RefCell::new(None) };
}

/// The host of the instance created last: logs from outside any hook go there.
static LATEST_HOST: Mutex<Option<HostHandle>> = Mutex::new(None);

/// Runs `f` with `host` as this thread's current host.
fn with_host<T>(host: &HostHandle, f: impl FnOnce() -> T) -> T {
    let prev = HOOK_HOST.with(|h| h.replace(Some(host.clone())));
    let r = f();
    HOOK_HOST.with(|h| *h.borrow_mut() = prev);
    r
}

fn current_host() -> Option<HostHandle> {
    HOOK_HOST
        .with(|h| h.borrow().clone())
        .or_else(|| LATEST_HOST.lock().ok().and_then(|g| g.clone()))
}

/// Runs a hook, turning a panic into a `PANIC` error.
fn guard<T>(hook: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e),
        Err(p) => RErr(PluginError::new(
            ErrorKind::PANIC,
            format!("panicked in {hook}: {}", panic_message(&*p)),
        )),
    }
}

/// The `#[sabi_trait] Plugin` implementation around a [`HivePlugin`]: every hook runs under
/// `catch_unwind`, with this instance's host as the thread's current host.
struct Guarded<P> {
    plugin: P,
    host: HostHandle,
}

impl<P> Guarded<P> {
    fn hook<T>(
        &self,
        name: &str,
        f: impl FnOnce(&P) -> Result<T, PluginError>,
    ) -> RResult<T, PluginError> {
        with_host(&self.host, || guard(name, || f(&self.plugin)))
    }
}

impl<P: HivePlugin> Plugin for Guarded<P> {
    fn on_agent_spawned(&self, e: &AgentEvent<'_>) -> RResult<(), PluginError> {
        self.hook("on_agent_spawned", |p| p.on_agent_spawned(e))
    }
    fn on_agent_state_changed(&self, e: &AgentStateChange<'_>) -> RResult<(), PluginError> {
        self.hook("on_agent_state_changed", |p| p.on_agent_state_changed(e))
    }
    fn on_agent_failed(&self, e: &AgentFailure<'_>) -> RResult<(), PluginError> {
        self.hook("on_agent_failed", |p| p.on_agent_failed(e))
    }
    fn on_task_submitted(&self, e: &TaskEvent<'_>) -> RResult<(), PluginError> {
        self.hook("on_task_submitted", |p| p.on_task_submitted(e))
    }
    fn on_task_delegated(&self, e: &TaskEvent<'_>) -> RResult<(), PluginError> {
        self.hook("on_task_delegated", |p| p.on_task_delegated(e))
    }
    fn on_task_started(&self, e: &TaskEvent<'_>) -> RResult<(), PluginError> {
        self.hook("on_task_started", |p| p.on_task_started(e))
    }
    fn on_task_completed(&self, e: &TaskCompletion<'_>) -> RResult<(), PluginError> {
        self.hook("on_task_completed", |p| p.on_task_completed(e))
    }
    fn on_performance_metric(&self, e: &Metric<'_>) -> RResult<(), PluginError> {
        self.hook("on_performance_metric", |p| p.on_performance_metric(e))
    }
    fn before_delegate(&self, r: &DelegateRequest<'_>) -> RResult<Delegate_NE, PluginError> {
        self.hook("before_delegate", |p| {
            p.before_delegate(r).map(Delegate_NE::new)
        })
    }
    fn on_task_failed(&self, f: &FailureInfo<'_>) -> RResult<OnFailure_NE, PluginError> {
        self.hook("on_task_failed", |p| {
            p.on_task_failed(f).map(OnFailure_NE::new)
        })
    }
    fn status(&self) -> RString {
        match with_host(&self.host, || {
            catch_unwind(AssertUnwindSafe(|| self.plugin.status()))
        }) {
            Ok(s) => RString::from(s),
            Err(p) => RString::from(format!(
                "{{\"error\": \"status panicked: {}\"}}",
                panic_message(&*p).replace('"', "'")
            )),
        }
    }
    fn shutdown(&self) -> RResult<(), PluginError> {
        self.hook("shutdown", |p| p.shutdown())
    }
    // api-since-1.1 {
    fn on_run_started(&self, e: &RunEvent<'_>) -> RResult<(), PluginError> {
        self.hook("on_run_started", |p| p.on_run_started(e))
    }
    fn on_run_finished(&self, e: &RunEvent<'_>) -> RResult<(), PluginError> {
        self.hook("on_run_finished", |p| p.on_run_finished(e))
    }
    // } api-since-1.1
    // api-since-1.2 {
    fn hooks(&self) -> Hooks {
        catch_unwind(AssertUnwindSafe(|| self.plugin.hooks())).unwrap_or(P::HOOKS)
    }
    fn on_attempt_finished(&self, e: &AttemptEvent<'_>) -> RResult<(), PluginError> {
        self.hook("on_attempt_finished", |p| p.on_attempt_finished(e))
    }
    fn drivers(&self) -> RString {
        catch_unwind(AssertUnwindSafe(|| self.plugin.drivers().join(",")))
            .unwrap_or_default()
            .into()
    }
    fn driver_execute(&self, r: &DriverRequest<'_>) -> RResult<DriverStep_NE, PluginError> {
        self.hook("driver_execute", |p| {
            p.driver_execute(r).map(DriverStep_NE::new)
        })
    }
    // } api-since-1.2
}

/// The root module of plugin `P` linked into this program (the plugin's crate is an rlib
/// dependency), for the kernel's `PluginSpec::linked`: the same plugin as its shared library,
/// with no file on disk. The crate linked this way must not call [`export_plugin!`] (its
/// library header is one fixed symbol per program): keep the implementation in an rlib crate
/// and export it from a separate cdylib crate, as the official plugins do. Each call builds
/// (and leaks, like any root module) a new module: call it once per plugin and keep it.
pub fn linked_module<P: HivePlugin>() -> crate::PluginMod_Ref {
    use abi_stable::prefix_type::PrefixTypeTrait;
    extern "C" fn manifest<P: HivePlugin>() -> Manifest {
        manifest_of::<P>()
    }
    extern "C" fn new<P: HivePlugin>(
        config: RStr<'_>,
        host: HostHandle,
    ) -> RResult<PluginBox, PluginError> {
        instantiate::<P>(config, host)
    }
    crate::PluginMod {
        manifest: manifest::<P>,
        new: new::<P>,
    }
    .leak_into_prefix()
}

/// The manifest of `P` (used by [`export_plugin!`]).
pub fn manifest_of<P: HivePlugin>() -> Manifest {
    Manifest {
        name: P::NAME.into(),
        version: P::VERSION.into(),
        api_version: crate::API_VERSION.into(),
        hooks: P::HOOKS,
        description: P::DESCRIPTION.into(),
    }
}

/// Builds `P` behind the panic guard and installs the tracing forwarder (used by
/// [`export_plugin!`]).
pub fn instantiate<P: HivePlugin>(
    config: RStr<'_>,
    host: HostHandle,
) -> RResult<PluginBox, PluginError> {
    static TRACING: Once = Once::new();
    // A plugin linked into the kernel's own program shares its `tracing` and its panic hook:
    // installing ours there would take over the host's (and loop its logs back to itself).
    #[allow(unused_mut, unused_assignments)]
    let mut linked = false;
    // api-since-1.2 {
    linked = host.linked();
    // } api-since-1.2
    if let Ok(mut latest) = LATEST_HOST.lock() {
        if !linked {
            *latest = Some(host.clone());
        }
    }
    TRACING.call_once(|| {
        if linked {
            return;
        }
        let subscriber = tracing_subscriber::registry().with(ForwardLayer { _private: () });
        let _ = tracing::subscriber::set_global_default(subscriber);
        // This library's own panic hook: report through the kernel's log (with the plugin's
        // name) instead of printing a backtrace on the host's stderr. The panic itself is
        // caught by the hook wrapper and counted by the kernel.
        std::panic::set_hook(Box::new(|info| tracing::error!("plugin panicked: {info}")));
    });
    let ctx = PluginContext {
        host: host.clone(),
        name: P::NAME,
    };
    let cfg = config.as_str();
    let cfg = if cfg.trim().is_empty() { "{}" } else { cfg };
    match with_host(&host, || {
        catch_unwind(AssertUnwindSafe(|| P::new(cfg, ctx)))
    }) {
        Ok(Ok(plugin)) => ROk(Plugin_TO::from_value(Guarded { plugin, host }, TD_Opaque)),
        Ok(Err(e)) => RErr(e),
        Err(p) => RErr(PluginError::init(format!(
            "panicked while starting: {}",
            panic_message(&*p)
        ))),
    }
}

/// A tracing layer that forwards a plugin's events to the kernel's log (the kernel adds
/// the plugin's name): to the host of the instance whose hook is running, else of the
/// instance created last. Installed by the SDK in the plugin's own copy of `tracing`.
pub struct ForwardLayer {
    _private: (),
}

impl std::fmt::Debug for ForwardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardLayer")
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(
                self.0,
                "{}{value:?}",
                if self.0.is_empty() { "" } else { " " }
            );
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => LogLevel::ERROR,
            tracing::Level::WARN => LogLevel::WARN,
            tracing::Level::INFO => LogLevel::INFO,
            tracing::Level::DEBUG => LogLevel::DEBUG,
            _ => LogLevel::TRACE,
        };
        if let Some(host) = current_host() {
            host.log(level, RStr::from(fields.0.trim()));
        }
    }
}

/// Exports a [`HivePlugin`] as the root module of this library (a `cdylib`). The plugin
/// crate depends on `hive-plugin-api` only.
///
/// ```ignore
/// hive_plugin_api::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The library header abi_stable's loader looks for (what `#[export_root_module]`
        /// generates, spelled out so that the plugin needs no direct abi_stable dependency).
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static HIVE_PLUGIN_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __hive_erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__hive_root_module)
            }
            // SAFETY: the constructor returns the `PluginMod_Ref` this header is typed with.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::PluginMod_Ref>(
                    __hive_erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };

        fn __hive_root_module() -> $crate::PluginMod_Ref {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::PluginMod {
                manifest: __hive_manifest,
                new: __hive_new,
            }
            .leak_into_prefix()
        }

        extern "C" fn __hive_manifest() -> $crate::Manifest {
            $crate::manifest_of::<$plugin>()
        }

        extern "C" fn __hive_new(
            config: $crate::abi_stable::std_types::RStr<'_>,
            host: $crate::HostHandle,
        ) -> $crate::abi_stable::std_types::RResult<$crate::PluginBox, $crate::PluginError> {
            $crate::instantiate::<$plugin>(config, host)
        }
    };
}
