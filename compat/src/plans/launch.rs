//! Starting a kernel for one run, the way `hive run PLAN` does (kernel/src/bin/hive/setup.rs
//! and plan_cmd.rs, which live in the binary and are not reachable from a library): the
//! config's `[kernel]` settings and plugins, the plan's default timeout, a local process
//! agent for command steps (role `local`, capacity = max concurrency), and the config's pools
//! for the roles the plan names, with each pool's capacity as the role's limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hive_kernel::{AgentSpec, Config, Kernel, Plan, ProcessConfig, ProcessDriver, ShutdownMode};

use super::OrchestratorError;

/// The role of command steps that name none (as in `hive run`).
pub(crate) const LOCAL_ROLE: &str = "local";

/// Builds a kernel with the config's settings and plugins; `default_timeout` is the plan's.
pub(crate) fn build_kernel(
    config: Option<&Config>,
    default_timeout: Option<Duration>,
) -> Result<Kernel, OrchestratorError> {
    let mut builder = match config {
        Some(c) => c.kernel_builder(),
        None => Kernel::builder(),
    };
    if let Some(t) = default_timeout {
        builder.default_timeout(t);
    }
    let kernel = builder
        .build()
        .map_err(|e| OrchestratorError::Kernel(e.to_string()))?;
    if let Some(c) = config {
        let specs = c.plugin_specs();
        if !specs.is_empty() {
            let warnings = kernel
                .load_plugins(&specs, c.quarantine_policy(), c.dir())
                .map_err(|e| OrchestratorError::Kernel(format!("{}: {e}", c.path().display())))?;
            for w in warnings {
                tracing::warn!("optional {w} (continuing without it)");
            }
        }
        c.check_drivers(&kernel.plugin_drivers())?;
    }
    Ok(kernel)
}

/// Checks that every role of the plan has a pool in the config (or is the local one).
pub(crate) fn check_roles(
    plan: &Plan,
    config: Option<&(PathBuf, Config)>,
) -> Result<(), OrchestratorError> {
    let pools: Vec<String> = config.map(|c| c.1.pool_roles()).unwrap_or_default();
    for role in plan.roles() {
        if role != LOCAL_ROLE && !pools.iter().any(|p| p == role) {
            return Err(OrchestratorError::MissingPool {
                plan: plan.path().to_path_buf(),
                role: role.to_string(),
                config: config.map(|c| c.0.clone()),
            });
        }
    }
    Ok(())
}

/// Spawns the agents a plan needs on `kernel`; returns the per-role capacities.
pub(crate) async fn spawn_agents(
    kernel: &Kernel,
    plan: &Plan,
    config: Option<&(PathBuf, Config)>,
    max_concurrency: u32,
) -> Result<HashMap<String, usize>, OrchestratorError> {
    let mut capacity = HashMap::new();
    if plan.has_local_commands() || plan.roles().contains(&LOCAL_ROLE) {
        let mut pc = ProcessConfig::new();
        if let Some((_, c)) = config {
            pc.tail_bytes(c.kernel.output_tail_kib * 1024);
        }
        kernel
            .spawn_agent(
                AgentSpec::new(LOCAL_ROLE, ProcessDriver::new(pc).shared())
                    .with_capacity(max_concurrency),
            )
            .await
            .map_err(|e| OrchestratorError::Kernel(e.to_string()))?;
    }
    let Some((_, c)) = config else {
        return Ok(capacity);
    };
    let roles = plan.roles();
    let pools = c.pools(kernel);
    let mut failures = Vec::new();
    for p in pools.iter().filter(|p| roles.contains(&&*p.role)) {
        kernel
            .declare_role(&*p.role, p.role_config)
            .map_err(|e| OrchestratorError::Kernel(e.to_string()))?;
        kernel.register_template(p.spec.clone());
        for _ in 0..p.size {
            if let Err(e) = kernel.spawn_agent(p.spec.clone()).await {
                failures.push(e.to_string());
            }
        }
        capacity.insert(
            p.role.to_string(),
            (p.size as usize * p.spec.capacity as usize).max(1),
        );
    }
    if !failures.is_empty() {
        kernel.shutdown(ShutdownMode::Now).await;
        return Err(OrchestratorError::Kernel(format!(
            "{} agent(s) did not start: {}",
            failures.len(),
            failures.join("; ")
        )));
    }
    Ok(capacity)
}

/// The state directory: the given one, else `$HIVE_STATE_DIR`, else the config's, else
/// `.hive` (the same order as the `hive` command).
pub(crate) fn state_dir(given: Option<&Path>, config: Option<&Config>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HIVE_STATE_DIR").map(PathBuf::from))
        .or_else(|| config.and_then(Config::state_dir))
        .unwrap_or_else(|| PathBuf::from(".hive"))
}
