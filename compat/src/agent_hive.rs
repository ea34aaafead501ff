//! The agent-hive family of seed 002: `AgentOrchestrator`, `ProductionOrchestrator`,
//! `PerformanceOrchestrator`, `AutomatedOrchestrator`, `DevelopmentOrchestrator`,
//! `HighConcurrencyOrchestrator`, `UnifiedOrchestrator`, `EnterpriseDemoOrchestrator` and
//! `CliAgentOrchestrator`, each with the legacy core interface (`spawn_agent(role)`,
//! `delegate_task(task, agent_id?)`, `shutdown_agent(id)`, `get_health_status()`), and
//! `create_orchestrator_from_legacy(module_name)`.
//!
//! Every class is one Hive kernel plus a bundle of the official plugins ([`Bundle`]), loaded
//! through the real loader: from their shared libraries ([`PluginSource::Files`]) or linked
//! into the program through their rlibs ([`PluginSource::Linked`], the default: no file on
//! disk). Both load the same plugin with the same config and behave the same.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use hive_kernel::{
    AgentId, AgentSpec, Config, Dispatch, Kernel, KernelBuilder, Outcome, PluginSpec,
    QuarantinePolicy, RoleConfig, ShutdownMode, Status, Target, TaskSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An official plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OfficialPlugin {
    /// SLA monitoring, auto-scaling, failover (docs/plugins/production.md).
    Production,
    /// Latency histograms, throughput, reports (docs/plugins/performance.md).
    Performance,
    /// Circuit breakers, self-healing, error-pattern rules (docs/plugins/automation.md).
    Automation,
    /// Debug trace, mock agents, fault injection (docs/plugins/development.md).
    Development,
}

impl OfficialPlugin {
    /// Its name (the manifest's, and the `name` of a `[[plugins]]` entry).
    pub fn name(self) -> &'static str {
        match self {
            OfficialPlugin::Production => "production",
            OfficialPlugin::Performance => "performance",
            OfficialPlugin::Automation => "automation",
            OfficialPlugin::Development => "development",
        }
    }

    /// Its root module, linked into this program (built once: a root module is leaked).
    fn linked(self) -> hive_plugin_api::PluginMod_Ref {
        use hive_plugin_api::{linked_module, PluginMod_Ref};
        static MODULES: [OnceLock<PluginMod_Ref>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        let (slot, make): (usize, fn() -> PluginMod_Ref) = match self {
            OfficialPlugin::Production => (0, linked_module::<hive_production::Production>),
            OfficialPlugin::Performance => (1, linked_module::<hive_performance::Performance>),
            OfficialPlugin::Automation => (2, linked_module::<hive_automation::Automation>),
            OfficialPlugin::Development => (3, linked_module::<hive_development::Development>),
        };
        *MODULES[slot].get_or_init(make)
    }
}

/// Which legacy orchestrator: the kernel settings and the plugins it maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bundle {
    /// `AgentOrchestrator` (orchestrator.py): the kernel alone.
    Agent,
    /// `ProductionOrchestrator`: + production.
    Production,
    /// `PerformanceOrchestrator`: + performance.
    Performance,
    /// `AutomatedOrchestrator`: + automation.
    Automated,
    /// `DevelopmentOrchestrator`: + development (roles without an agent template get mock
    /// agents: a sandbox).
    Development,
    /// `HighConcurrencyOrchestrator`: + performance, deep queues and least-loaded dispatch.
    HighConcurrency,
    /// `UnifiedOrchestrator`: all four plugins.
    Unified,
    /// `EnterpriseDemoOrchestrator`: production, performance and development (mock agents
    /// for roles without a template, so a demo runs anywhere).
    EnterpriseDemo,
    /// `CliAgentOrchestrator`: agents are command-line programs (stdio or process pools of a
    /// hive.toml) + automation (restarts, breakers).
    CliAgent,
}

/// Every bundle, with its legacy class and module names.
const BUNDLES: &[(Bundle, &str, &str)] = &[
    (Bundle::Agent, "AgentOrchestrator", "orchestrator"),
    (
        Bundle::Production,
        "ProductionOrchestrator",
        "production_orchestrator",
    ),
    (
        Bundle::Performance,
        "PerformanceOrchestrator",
        "performance_orchestrator",
    ),
    (
        Bundle::Automated,
        "AutomatedOrchestrator",
        "automated_orchestrator",
    ),
    (
        Bundle::Development,
        "DevelopmentOrchestrator",
        "development_orchestrator",
    ),
    (
        Bundle::HighConcurrency,
        "HighConcurrencyOrchestrator",
        "high_concurrency_orchestrator",
    ),
    (
        Bundle::Unified,
        "UnifiedOrchestrator",
        "unified_orchestrator",
    ),
    (
        Bundle::EnterpriseDemo,
        "EnterpriseDemoOrchestrator",
        "enterprise_demo_orchestrator",
    ),
    (
        Bundle::CliAgent,
        "CliAgentOrchestrator",
        "cli_agent_orchestrator",
    ),
];

impl Bundle {
    /// The plugins it loads, in load (and decision) order.
    pub fn plugins(self) -> &'static [OfficialPlugin] {
        use OfficialPlugin::*;
        match self {
            Bundle::Agent => &[],
            Bundle::Production => &[Production],
            Bundle::Performance | Bundle::HighConcurrency => &[Performance],
            Bundle::Automated | Bundle::CliAgent => &[Automation],
            Bundle::Development => &[Development],
            Bundle::Unified => &[Production, Performance, Automation, Development],
            Bundle::EnterpriseDemo => &[Production, Performance, Development],
        }
    }

    /// The legacy class name (`ProductionOrchestrator`, ...).
    pub fn class_name(self) -> &'static str {
        BUNDLES
            .iter()
            .find(|(b, _, _)| *b == self)
            .map_or("AgentOrchestrator", |(_, c, _)| c)
    }

    /// The legacy module name (`production_orchestrator`, ...).
    pub fn module_name(self) -> &'static str {
        BUNDLES
            .iter()
            .find(|(b, _, _)| *b == self)
            .map_or("orchestrator", |(_, _, m)| m)
    }

    /// The bundle of a legacy module: `production_orchestrator`, or a dotted import path
    /// ending in it (`app.core.production_orchestrator`), with or without `.py`.
    pub fn from_legacy_module(name: &str) -> Option<Bundle> {
        let name = name.trim().trim_end_matches(".py");
        let last = name.rsplit(['.', '/']).next().unwrap_or(name);
        BUNDLES
            .iter()
            .find(|(_, class, module)| *module == last || *class == last)
            .map(|(b, _, _)| *b)
    }

    /// Whether roles without an agent template get mock agents.
    fn mocks_unknown_roles(self) -> bool {
        matches!(self, Bundle::Development | Bundle::EnterpriseDemo)
    }
}

/// Where the bundle's plugins come from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PluginSource {
    /// Linked into this program through the plugins' rlibs: no file needed.
    #[default]
    Linked,
    /// Their shared libraries (`libhive_plugin_NAME.so`), from `dir` or else the plugin
    /// search path (`HIVE_PLUGIN_PATH`, `./plugins`, `<hive>/../lib/hive/plugins`, beside the
    /// program).
    Files {
        /// The directory of the libraries.
        dir: Option<PathBuf>,
    },
}

/// What can go wrong in the facade.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompatError {
    /// `create_orchestrator_from_legacy` got a module it does not know.
    #[error("unknown legacy orchestrator module `{name}` (known: {known})")]
    UnknownModule {
        /// The name given.
        name: String,
        /// The names it knows.
        known: String,
    },
    /// The kernel could not be built.
    #[error(transparent)]
    Kernel(#[from] hive_kernel::BuildError),
    /// A plugin of the bundle did not load.
    #[error(transparent)]
    Plugin(#[from] hive_kernel::PluginLoadError),
    /// The hive.toml given is invalid.
    #[error(transparent)]
    Config(#[from] hive_kernel::ConfigError),
    /// A role has no agent template.
    #[error("role `{role}` has no agent template (known roles: {known}); give one with `.agent(..)` or a hive.toml pool")]
    UnknownRole {
        /// The role.
        role: String,
        /// The roles with a template.
        known: String,
    },
    /// An agent id that is not one.
    #[error("`{0}` is not an agent id (expected `agent-N` or `N`)")]
    BadAgentId(String),
    /// An agent did not start.
    #[error(transparent)]
    Spawn(#[from] hive_kernel::SpawnError),
    /// A task could not be submitted.
    #[error(transparent)]
    Submit(#[from] hive_kernel::SubmitError),
    /// Called outside a tokio runtime.
    #[error("the orchestrator must be built inside a tokio runtime")]
    NoRuntime,
}

/// A task, as the legacy `delegate_task` takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Its id (a label; generated if absent).
    #[serde(default)]
    pub id: Option<String>,
    /// The role (the legacy `AgentRole`) whose agents take it.
    pub role: String,
    /// What to do: the payload the agent gets.
    #[serde(default)]
    pub payload: Value,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Time limit in seconds (the kernel's default otherwise).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Attempts in all (1: no retry).
    #[serde(default = "one")]
    pub max_attempts: u32,
}

fn one() -> u32 {
    1
}

impl Task {
    /// A task for `role` with `payload`.
    pub fn new(role: impl Into<String>, payload: Value) -> Self {
        Task {
            id: None,
            role: role.into(),
            payload,
            priority: 0,
            timeout_s: None,
            max_attempts: 1,
        }
    }
    /// Sets its id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// Sets its time limit.
    pub fn with_timeout_s(mut self, s: f64) -> Self {
        self.timeout_s = Some(s);
        self
    }
    /// Sets its attempts in all.
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

/// The legacy `TaskResult`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's id (its label).
    pub task_id: String,
    /// The agent of the last attempt (`agent-N`), if any ran.
    pub agent_id: Option<String>,
    /// Whether it succeeded.
    pub success: bool,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, ...
    pub status: String,
    /// Its output, if it succeeded.
    pub result: Option<Value>,
    /// Why not, if it did not.
    pub error: Option<String>,
    /// From its first start to its end, in milliseconds.
    pub duration_ms: f64,
    /// Attempts made.
    pub attempts: u32,
}

/// Builds an orchestrator of one bundle (tokio-style: named constructors, `&mut self`
/// setters, a fallible `build()`).
#[derive(Debug, Clone)]
pub struct OrchestratorBuilder {
    bundle: Bundle,
    source: PluginSource,
    config: Option<PathBuf>,
    plugin_config: BTreeMap<&'static str, Value>,
    templates: Vec<AgentSpec>,
    default_timeout: Option<Duration>,
}

impl OrchestratorBuilder {
    /// A builder for `bundle`.
    pub fn new(bundle: Bundle) -> Self {
        OrchestratorBuilder {
            bundle,
            source: PluginSource::Linked,
            config: None,
            plugin_config: BTreeMap::new(),
            templates: Vec::new(),
            default_timeout: None,
        }
    }
    /// Where the plugins come from (default: linked).
    pub fn plugin_source(&mut self, source: PluginSource) -> &mut Self {
        self.source = source;
        self
    }
    /// A hive.toml: its `[kernel]` settings, its pools (spawned at `build`, and templates for
    /// `spawn_agent`), and the config tables of its `[[plugins]]` entries that name a plugin
    /// of the bundle.
    pub fn config(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.config = Some(path.into());
        self
    }
    /// The config of one plugin of the bundle (a JSON object; wins over the hive.toml's).
    pub fn plugin_config(&mut self, plugin: OfficialPlugin, config: Value) -> &mut Self {
        self.plugin_config.insert(plugin.name(), config);
        self
    }
    /// An agent template: `spawn_agent(spec.role)` spawns one like it.
    pub fn agent(&mut self, spec: AgentSpec) -> &mut Self {
        self.templates.push(spec);
        self
    }
    /// The time limit of tasks without their own.
    pub fn default_timeout(&mut self, d: Duration) -> &mut Self {
        self.default_timeout = Some(d);
        self
    }

    /// Builds the kernel, loads the bundle's plugins, registers the templates and spawns the
    /// config's pools. Call inside a tokio runtime.
    pub async fn build(&self) -> Result<Orchestrator, CompatError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CompatError::NoRuntime);
        }
        let config = match &self.config {
            Some(p) => Some(Config::load(p)?),
            None => None,
        };
        let mut kb: KernelBuilder = match &config {
            Some(c) => c.kernel_builder(),
            None => Kernel::builder(),
        };
        if self.bundle == Bundle::HighConcurrency {
            kb.queue_capacity(1 << 20).event_capacity(1 << 16);
        }
        if let Some(t) = self.default_timeout {
            kb.default_timeout(t);
        }
        let kernel = kb.build()?;
        let specs = self.plugin_specs(config.as_ref());
        if !specs.is_empty() {
            let (policy, dir) = match &config {
                Some(c) => (c.quarantine_policy(), c.dir().to_path_buf()),
                None => (QuarantinePolicy::default(), PathBuf::from(".")),
            };
            kernel.load_plugins(&specs, policy, &dir)?;
        }
        if let Some(c) = &config {
            c.check_drivers(&kernel.plugin_drivers())?;
            for pool in c.pools(&kernel) {
                let _ = kernel.declare_role(&*pool.role, pool.role_config);
                kernel.register_template(pool.spec.clone());
                for _ in 0..pool.size {
                    kernel.spawn_agent(pool.spec.clone()).await?;
                }
            }
        }
        for t in &self.templates {
            self.declare(&kernel, &t.role);
            kernel.register_template(t.clone());
        }
        Ok(Orchestrator {
            kernel,
            bundle: self.bundle,
            labels: AtomicU64::new(0),
        })
    }

    fn declare(&self, kernel: &Kernel, role: &str) {
        let mut rc = RoleConfig::new();
        if self.bundle == Bundle::HighConcurrency {
            rc.dispatch(Dispatch::LeastLoaded);
        }
        // Already declared (by the config's pool): keep that.
        let _ = kernel.declare_role(role, rc);
    }

    fn plugin_specs(&self, config: Option<&Config>) -> Vec<PluginSpec> {
        let from_config: BTreeMap<String, Value> = config
            .map(|c| {
                c.plugin_specs()
                    .into_iter()
                    .filter_map(|s| s.name.clone().map(|n| (n, s.config)))
                    .collect()
            })
            .unwrap_or_default();
        self.bundle
            .plugins()
            .iter()
            .map(|p| {
                let spec = match &self.source {
                    PluginSource::Linked => PluginSpec::linked(p.linked()),
                    PluginSource::Files { dir: Some(d) } => {
                        PluginSpec::path(d.join(format!("libhive_plugin_{}.so", p.name())))
                    }
                    PluginSource::Files { dir: None } => PluginSpec::named(p.name()),
                };
                let cfg = self
                    .plugin_config
                    .get(p.name())
                    .or_else(|| from_config.get(p.name()))
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                spec.with_name(p.name()).with_config(cfg)
            })
            .collect()
    }
}

/// One legacy orchestrator: a kernel and its bundle of plugins.
#[derive(Debug)]
pub struct Orchestrator {
    kernel: Kernel,
    bundle: Bundle,
    /// Tasks delegated without an id so far (their labels are `task-N`).
    labels: AtomicU64,
}

fn parse_agent(id: &str) -> Result<AgentId, CompatError> {
    id.trim()
        .trim_start_matches("agent-")
        .parse::<u64>()
        .map(AgentId)
        .map_err(|_| CompatError::BadAgentId(id.to_string()))
}

impl Orchestrator {
    /// A builder for `bundle`.
    pub fn builder(bundle: Bundle) -> OrchestratorBuilder {
        OrchestratorBuilder::new(bundle)
    }

    /// The bundle.
    pub fn bundle(&self) -> Bundle {
        self.bundle
    }

    /// The kernel underneath (for everything the legacy interface does not cover).
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Spawns one more agent of `role` (from its template; a mock agent for a role without
    /// one in the development and demo bundles). Returns its id (`agent-N`).
    pub async fn spawn_agent(&self, role: &str) -> Result<String, CompatError> {
        let known = self.kernel.template_roles();
        if !known.iter().any(|r| r == role) {
            if !self.bundle.mocks_unknown_roles() {
                return Err(CompatError::UnknownRole {
                    role: role.to_string(),
                    known: known.join(", "),
                });
            }
            let spec = AgentSpec::new(role, self.kernel.plugin_driver("mock"));
            let _ = self.kernel.declare_role(role, RoleConfig::new());
            self.kernel.register_template(spec);
        }
        let id = self.kernel.spawn_from_template(role).await?;
        Ok(id.to_string())
    }

    /// Runs a task on an agent of its role (or on `agent_id` when given) and waits for its
    /// result. A failed task is a result with `success: false`, not an error; an error means
    /// it could not be submitted.
    pub async fn delegate_task(
        &self,
        task: Task,
        agent_id: Option<&str>,
    ) -> Result<TaskResult, CompatError> {
        let target = match agent_id {
            Some(a) => Target::Agent(parse_agent(a)?),
            None => Target::role(&task.role),
        };
        let label = task
            .id
            .clone()
            .unwrap_or_else(|| format!("task-{}", self.labels.fetch_add(1, Ordering::Relaxed) + 1));
        let mut spec = TaskSpec::new(target, task.payload)
            .with_name(&label)
            .with_priority(task.priority);
        if let Some(s) = task.timeout_s.filter(|s| *s > 0.0 && s.is_finite()) {
            spec = spec.with_timeout(Duration::from_secs_f64(s));
        }
        if task.max_attempts > 1 {
            spec = spec.with_retry(hive_kernel::RetryPolicy::fixed(
                task.max_attempts - 1,
                Duration::from_millis(100),
            ));
        }
        let r = self.kernel.submit(spec).await?.await;
        let duration_ms = match r.started_at {
            Some(s) => r.finished_at.since(s).as_secs_f64() * 1e3,
            None => 0.0,
        };
        let status = r.status();
        let (result, error) = match r.outcome {
            Outcome::Succeeded(v) | Outcome::Cached(v) => (Some(v), None),
            Outcome::Failed(e) => (None, Some(e.message)),
            other => (None, Some(other.status().as_str().to_string())),
        };
        Ok(TaskResult {
            task_id: label,
            agent_id: r.attempts.last().map(|a| a.agent.to_string()),
            success: matches!(status, Status::Succeeded | Status::Cached),
            status: status.as_str().to_string(),
            result,
            error,
            duration_ms,
            attempts: r.attempts.len() as u32,
        })
    }

    /// Shuts an agent down gracefully (it finishes its tasks first). False if there is no
    /// such agent (or it had already stopped).
    pub async fn shutdown_agent(&self, agent_id: &str) -> Result<bool, CompatError> {
        let id = parse_agent(agent_id)?;
        let live = self
            .kernel
            .agent(id)
            .is_some_and(|a| !a.state.is_terminal());
        if !live {
            return Ok(false);
        }
        Ok(self
            .kernel
            .shutdown_agent(id, ShutdownMode::Graceful)
            .await
            .is_ok())
    }

    /// The legacy health dictionary: `status` (`healthy`, `degraded` or `unhealthy`),
    /// `orchestrator` (the class), `agents` (total, by state, by role), `tasks`, `plugins`
    /// (each plugin's state and `status()`), and `kernel` (Hive's whole health report).
    pub async fn get_health_status(&self) -> Value {
        let h = self.kernel.health();
        let mut by_role: BTreeMap<String, usize> = BTreeMap::new();
        for a in &h.agent_list {
            if !a.state.is_terminal() {
                *by_role.entry(a.role.to_string()).or_default() += 1;
            }
        }
        let live = h.agents.starting + h.agents.ready + h.agents.busy + h.agents.draining;
        let status = match h.status.as_str() {
            "ok" => "healthy",
            "degraded" => "degraded",
            _ => "unhealthy",
        };
        let plugins: serde_json::Map<String, Value> = h
            .plugins
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    json!({"state": p.state, "reason": p.reason, "errors": p.errors, "status": p.status}),
                )
            })
            .collect();
        json!({
            "status": status,
            "orchestrator": self.bundle.class_name(),
            "uptime_s": h.uptime_s,
            "agents": {
                "total": live,
                "by_state": h.agents,
                "by_role": by_role,
            },
            "tasks": {"completed": h.tasks_completed, "open": h.tasks_open},
            "plugins": plugins,
            "kernel": h,
        })
    }

    /// One plugin's `status()` JSON, if the bundle loaded it.
    pub fn plugin_status(&self, plugin: &str) -> Option<Value> {
        self.kernel
            .health()
            .plugins
            .into_iter()
            .find(|p| p.name == plugin && p.state == "loaded")
            .map(|p| p.status)
    }

    /// Shuts everything down (agents finish their tasks; plugins flush).
    pub async fn shutdown(&self) {
        self.kernel.shutdown(ShutdownMode::Graceful).await;
    }
}

macro_rules! legacy_class {
    ($(#[$doc:meta])* $name:ident, $bundle:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(Orchestrator);

        impl $name {
            /// With the default settings: plugins linked, no agent template.
            pub async fn new() -> Result<Self, CompatError> {
                Ok($name(OrchestratorBuilder::new($bundle).build().await?))
            }
            /// A builder with this class's bundle.
            pub fn builder() -> OrchestratorBuilder {
                OrchestratorBuilder::new($bundle)
            }
            /// From a built orchestrator (of any bundle).
            pub fn from_orchestrator(o: Orchestrator) -> Self {
                $name(o)
            }
        }

        impl std::ops::Deref for $name {
            type Target = Orchestrator;
            fn deref(&self) -> &Orchestrator {
                &self.0
            }
        }
    };
}

legacy_class!(
    /// `AgentOrchestrator`: the kernel alone.
    AgentOrchestrator,
    Bundle::Agent
);
legacy_class!(
    /// `ProductionOrchestrator`: kernel + production plugin.
    ProductionOrchestrator,
    Bundle::Production
);
legacy_class!(
    /// `PerformanceOrchestrator`: kernel + performance plugin.
    PerformanceOrchestrator,
    Bundle::Performance
);
legacy_class!(
    /// `AutomatedOrchestrator`: kernel + automation plugin.
    AutomatedOrchestrator,
    Bundle::Automated
);
legacy_class!(
    /// `DevelopmentOrchestrator`: kernel + development plugin (mock agents for roles
    /// without a template).
    DevelopmentOrchestrator,
    Bundle::Development
);
legacy_class!(
    /// `HighConcurrencyOrchestrator`: kernel with deep queues and least-loaded dispatch +
    /// performance plugin.
    HighConcurrencyOrchestrator,
    Bundle::HighConcurrency
);
legacy_class!(
    /// `UnifiedOrchestrator`: kernel + all four plugins.
    UnifiedOrchestrator,
    Bundle::Unified
);
legacy_class!(
    /// `EnterpriseDemoOrchestrator`: kernel + production, performance and development.
    EnterpriseDemoOrchestrator,
    Bundle::EnterpriseDemo
);
legacy_class!(
    /// `CliAgentOrchestrator`: command-line agents (a hive.toml's stdio/process pools) +
    /// automation plugin.
    CliAgentOrchestrator,
    Bundle::CliAgent
);

/// `create_orchestrator_from_legacy(module_name)`: the orchestrator a legacy module maps to
/// (`production_orchestrator`, `app.core.performance_orchestrator`, ...), with the default
/// settings.
pub async fn create_orchestrator_from_legacy(
    module_name: &str,
) -> Result<Orchestrator, CompatError> {
    let bundle =
        Bundle::from_legacy_module(module_name).ok_or_else(|| CompatError::UnknownModule {
            name: module_name.to_string(),
            known: BUNDLES
                .iter()
                .map(|(_, _, m)| *m)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    OrchestratorBuilder::new(bundle).build().await
}

/// Every legacy module name with its class and plugins (the table of docs/migration.md).
pub fn legacy_table() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    BUNDLES
        .iter()
        .map(|(b, c, m)| (*m, *c, b.plugins().iter().map(|p| p.name()).collect()))
        .collect()
}
