//! Starting a kernel from a config the way the `hive` command does, for the binary and for
//! library callers alike (compat's plan facades): the settings, the plugins, the local
//! process agent that runs commands, the pools, and where state lives.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    BuildError, Config, ConfigError, Driver, Kernel, KernelBuilder, KernelSection, PluginLoadError,
    PluginSpec, Pool, ProcessConfig, ProcessDriver, SpawnError,
};

/// The role of command steps and tasks that name none: one process agent runs them.
pub const LOCAL_ROLE: &str = "local";

/// Why a kernel could not be started from a config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A setting is out of range, or there is no runtime.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A required plugin did not load.
    #[error("{origin}: {source}")]
    Plugin {
        /// The config file that names it (or `hive` for plugins added without one).
        origin: String,
        /// Why it did not load.
        #[source]
        source: PluginLoadError,
    },
    /// A pool names a driver that no loaded plugin provides.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A kernel's settings: the config's `[kernel]` section, or that section's defaults when
/// there is no config (so both start the same kernel).
pub fn kernel_settings(config: Option<&Config>) -> KernelBuilder {
    match config {
        Some(c) => c.kernel_builder(),
        None => KernelSection::default().kernel_builder(),
    }
}

/// Builds the kernel `settings` describe, loads the config's plugins and then `extra` (with
/// the config's quarantine policy, paths relative to the config's directory), and checks that
/// every pool's driver exists. Returns the kernel and the optional plugins that did not load;
/// a required one that does not load is an error, before anything runs.
pub fn start_kernel(
    config: Option<&Config>,
    settings: &KernelBuilder,
    extra: &[PluginSpec],
) -> Result<(Kernel, Vec<PluginLoadError>), SetupError> {
    let kernel = settings.build()?;
    let mut specs = config.map(Config::plugin_specs).unwrap_or_default();
    specs.extend_from_slice(extra);
    let mut skipped = Vec::new();
    if !specs.is_empty() {
        let (policy, dir, origin) = match config {
            Some(c) => (
                c.quarantine_policy(),
                c.dir().to_path_buf(),
                c.path().display().to_string(),
            ),
            None => (
                KernelSection::default().quarantine_policy(),
                PathBuf::from("."),
                "hive".to_string(),
            ),
        };
        skipped = kernel
            .load_plugins(&specs, policy, &dir)
            .map_err(|source| SetupError::Plugin { origin, source })?;
    }
    if let Some(c) = config {
        c.check_drivers(&kernel.plugin_drivers())?;
    }
    Ok((kernel, skipped))
}

/// The driver of the local agent: commands as processes, keeping the config's
/// `output_tail_kib` of each stream.
pub fn local_driver(config: Option<&Config>) -> Arc<dyn Driver> {
    let mut pc = ProcessConfig::new();
    if let Some(c) = config {
        pc.tail_bytes(c.kernel.output_tail_kib * 1024);
    }
    ProcessDriver::new(pc).shared()
}

/// Declares the pools' roles, registers their templates (for restarts and scaling), and
/// spawns their agents concurrently. Returns the agents that did not start; a role declared
/// twice is an error.
pub async fn spawn_pools<'a>(
    kernel: &Kernel,
    pools: impl IntoIterator<Item = &'a Pool>,
) -> Result<Vec<SpawnError>, BuildError> {
    let mut set = tokio::task::JoinSet::new();
    let mut roles = std::collections::HashMap::new();
    for p in pools {
        kernel.declare_role(&*p.role, p.role_config)?;
        kernel.register_template(p.spec.clone());
        for _ in 0..p.size {
            let k = kernel.clone();
            let spec = p.spec.clone();
            let task = set.spawn(async move { k.spawn_agent(spec).await });
            roles.insert(task.id(), p.role.clone());
        }
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next_with_id().await {
        match r {
            Ok((_, Ok(_))) => {}
            Ok((_, Err(e))) => failures.push(e),
            Err(e) => failures.push(SpawnError::Start {
                role: roles.remove(&e.id()).unwrap_or_else(|| Arc::from("?")),
                reason: Arc::from(format!("its spawn task failed: {e}")),
            }),
        }
    }
    Ok(failures)
}

/// Where state lives: `given`, else `$HIVE_STATE_DIR`, else the config's `state_dir`, else
/// `.hive`.
pub fn state_dir(given: Option<&Path>, config: Option<&Config>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HIVE_STATE_DIR").map(PathBuf::from))
        .or_else(|| config.and_then(Config::state_dir))
        .unwrap_or_else(|| PathBuf::from(".hive"))
}
