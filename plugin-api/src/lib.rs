//! The stable ABI between the Hive kernel and its plugins, after abi_stable's
//! `examples/1_trait_objects`: a prefix-type root module ([`PluginMod`]) with the manifest and
//! the constructor, the [`Plugin`] trait object with observer and decision hooks, and the
//! [`Host`] trait object the kernel implements. Only `#[repr(C)]` `StableAbi` types cross the
//! boundary: R-types, `u64` ids, and JSON in strings where a shape must stay open.
//!
//! This crate knows nothing of tokio, dashmap or the kernel. Plugin authors implement
//! [`HivePlugin`] and export it with [`export_plugin!`]; see docs/plugins.md.
//!
//! Versioning (semver on this crate's version, checked at load time): hooks and fields are
//! only ever added after `last_prefix_field`, with a default, which is a minor bump; a plugin
//! built against an older minor keeps loading and its missing hooks take their defaults. A
//! major bump is refused at load with both versions in the message.

#![allow(non_camel_case_types)] // abi_stable's generated names: `*_TO`, `*_Ref`, `*_NE`.
#![allow(non_local_definitions)] // abi_stable's derive and sabi_trait expand to such impls.
#![allow(missing_debug_implementations)] // generated trait-object and vtable types.

mod helpers;
mod sdk;
mod types;

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, ROk, RResult, RStr, RString},
    StableAbi,
};

pub use abi_stable;
pub use helpers::{parse_config, Ticker};
pub use sdk::{instantiate, linked_module, manifest_of, ForwardLayer, HivePlugin, PluginContext};
pub use types::*;

/// The version of this crate: the plugin ABI version a plugin is built against.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A loaded plugin instance, as the kernel holds it.
pub type PluginBox = Plugin_TO<'static, RBox<()>>;

/// The kernel's handle, as a plugin holds it (cheap to clone).
pub type HostHandle = Host_TO<'static, RArc<()>>;

/// A plugin's hooks. Every hook returns `Err` rather than panicking; the SDK turns a panic
/// into an `Err` (a panic across this boundary would abort the host). Only the hooks named
/// in the manifest are called. All take `&self`: decision hooks run on the kernel's worker
/// threads, concurrently, and observer hooks on the plugin's own thread.
#[sabi_trait]
pub trait Plugin: Send + Sync {
    /// An agent was registered.
    fn on_agent_spawned(&self, _e: &AgentEvent<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// An agent changed state.
    fn on_agent_state_changed(&self, _e: &AgentStateChange<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// An agent failed.
    fn on_agent_failed(&self, _e: &AgentFailure<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// A task entered the kernel.
    fn on_task_submitted(&self, _e: &TaskEvent<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// A task was handed to an agent.
    fn on_task_delegated(&self, _e: &TaskEvent<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// An attempt started.
    fn on_task_started(&self, _e: &TaskEvent<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// A task ended (every task, short-circuited ones included).
    fn on_task_completed(&self, _e: &TaskCompletion<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// A metric was reported (by an agent or a plugin).
    fn on_performance_metric(&self, _e: &Metric<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// Decision: before a task is delegated to an agent. `Continue` lets it go.
    fn before_delegate(&self, _r: &DelegateRequest<'_>) -> RResult<Delegate_NE, PluginError> {
        ROk(Delegate_NE::new(Delegate::Continue))
    }
    /// Decision: an attempt failed. `Default` applies the task's retry policy.
    fn on_task_failed(&self, _f: &FailureInfo<'_>) -> RResult<OnFailure_NE, PluginError> {
        ROk(OnFailure_NE::new(OnFailure::Default))
    }
    /// The plugin's state as a JSON object (for health and `hive plugins list`).
    fn status(&self) -> RString {
        RString::from("{}")
    }
    /// The kernel is shutting down; the plugin gets no call after this one.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> RResult<(), PluginError> {
        ROk(())
    }
    // api-since-1.1 {
    /// A run (of a plan) started. Added in 1.1.
    fn on_run_started(&self, _e: &RunEvent<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// A run finished. Added in 1.1.
    fn on_run_finished(&self, _e: &RunEvent<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    // } api-since-1.1
    // api-since-1.2 {
    /// The hooks this instance wants called, chosen from its config: the kernel calls the
    /// intersection with the manifest's. Default: every hook of the manifest. Added in 1.2.
    fn hooks(&self) -> Hooks {
        Hooks::ALL_BITS
    }
    /// An attempt of a task ended (one call per attempt, retries included). Added in 1.2.
    fn on_attempt_finished(&self, _e: &AttemptEvent<'_>) -> RResult<(), PluginError> {
        ROk(())
    }
    /// The agent drivers this instance contributes, comma-separated (`mock`, say); pools
    /// name them in `driver = ".."`. Default: none. Added in 1.2.
    fn drivers(&self) -> RString {
        RString::new()
    }
    /// Decides one attempt of a task on an agent of a driver this instance contributes:
    /// what it returns and after how long. The kernel keeps the time (the plugin must
    /// answer at once, like a decision hook). Added in 1.2.
    fn driver_execute(&self, _r: &DriverRequest<'_>) -> RResult<DriverStep_NE, PluginError> {
        ROk(DriverStep_NE::new(DriverStep::Fail {
            delay_ms: 0,
            error: RString::from("this plugin contributes no driver"),
        }))
    }
    // } api-since-1.2
}

/// What a plugin may ask of the kernel. Every call returns at once: commands are queued and
/// applied by the kernel, never inside the caller's hook.
#[sabi_trait]
pub trait Host: Send + Sync + Clone {
    /// Logs a line under the plugin's name.
    fn log(&self, level: LogLevel, message: RStr<'_>);
    /// Reports a metric (`on_performance_metric` of every plugin sees it).
    fn metric(&self, name: RStr<'_>, value: f64);
    /// Queues the spawn of one more agent of `role`, built like the role's pool in the
    /// config. Returns a ticket; the agent shows up in `on_agent_spawned`.
    fn spawn_agent(&self, role: RStr<'_>) -> RResult<u64, PluginError>;
    /// Queues the shutdown of an agent (graceful: it finishes its in-flight tasks).
    fn shutdown_agent(&self, agent: u64, graceful: bool) -> RResult<(), PluginError>;
    /// Queues a task: `{"role": .., "payload": .., "priority"?: .., "timeout_s"?: ..}`.
    /// Returns its task id (its events carry it).
    fn submit_task(&self, request_json: RStr<'_>) -> RResult<u64, PluginError>;
    /// The kernel's health report as JSON.
    #[sabi(last_prefix_field)]
    fn health_json(&self) -> RString;
    // api-since-1.2 {
    /// Kills an agent the hard way (fault injection, a stuck agent): its process is killed,
    /// it becomes `failed` with `reason`, and its in-flight tasks go back to their retry
    /// policy. Queued like every command. Added in 1.2.
    fn kill_agent(&self, _agent: u64, _reason: RStr<'_>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(
            ErrorKind::HOST,
            "kill_agent: this kernel does not support it",
        ))
    }
    /// Emits a named event with a JSON object as data (`sla_breach`, `scaled_up`, ...): it
    /// goes on the kernel's event bus (the JSONL log, `hive events`) as a `plugin_event`
    /// with the plugin's name. Added in 1.2.
    fn emit(&self, _name: RStr<'_>, _data_json: RStr<'_>) {}
    /// Whether the plugin is linked into the kernel's own program (through its rlib) rather
    /// than loaded from a shared library: it then shares the host's `tracing` and panic hook,
    /// and the SDK installs neither. Added in 1.2.
    fn linked(&self) -> bool {
        false
    }
    // } api-since-1.2
}

/// The root module of a plugin library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginMod_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's manifest: name, version, API version, hooks.
    pub manifest: extern "C" fn() -> Manifest,
    /// Builds an instance from its config (a JSON object) and the kernel's handle.
    #[sabi(last_prefix_field)]
    pub new:
        extern "C" fn(config_json: RStr<'_>, host: HostHandle) -> RResult<PluginBox, PluginError>,
}

impl RootModule for PluginMod_Ref {
    declare_root_module_statics! {PluginMod_Ref}
    const BASE_NAME: &'static str = "hive_plugin";
    const NAME: &'static str = "hive_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
