//! Starting a kernel for one run, the way `hive run PLAN` does, through the kernel's own
//! set-up (`hive_kernel::start_kernel`, which the binary uses too): the config's `[kernel]`
//! settings and plugins, the plan's default timeout, a local process agent for command steps
//! (role `local`, capacity = max concurrency), and the config's pools for the roles the plan
//! names, with each pool's capacity as the role's limit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use hive_kernel::{AgentSpec, Config, Kernel, Plan, SetupError, ShutdownMode, LOCAL_ROLE};

use super::OrchestratorError;

impl From<SetupError> for OrchestratorError {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Config(c) => OrchestratorError::Config(c),
            other => OrchestratorError::Kernel(other.to_string()),
        }
    }
}

/// Builds a kernel with the config's settings and plugins; `default_timeout` is the plan's.
pub(crate) fn build_kernel(
    config: Option<&Config>,
    default_timeout: Option<Duration>,
) -> Result<Kernel, OrchestratorError> {
    let mut settings = hive_kernel::kernel_settings(config);
    if let Some(t) = default_timeout {
        settings.default_timeout(t);
    }
    let (kernel, skipped) = hive_kernel::start_kernel(config, &settings, &[])?;
    for w in skipped {
        tracing::warn!("optional {w} (continuing without it)");
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
        let driver = hive_kernel::local_driver(config.map(|c| &c.1));
        kernel
            .spawn_agent(AgentSpec::new(LOCAL_ROLE, driver).with_capacity(max_concurrency))
            .await
            .map_err(|e| OrchestratorError::Kernel(e.to_string()))?;
    }
    let Some((_, c)) = config else {
        return Ok(capacity);
    };
    let roles = plan.roles();
    let pools = c.pools(kernel);
    let wanted: Vec<_> = pools.iter().filter(|p| roles.contains(&&*p.role)).collect();
    let failures = hive_kernel::spawn_pools(kernel, wanted.iter().copied())
        .await
        .map_err(|e| OrchestratorError::Kernel(e.to_string()))?;
    if !failures.is_empty() {
        kernel.shutdown(ShutdownMode::Now).await;
        let why: Vec<String> = failures.iter().map(ToString::to_string).collect();
        return Err(OrchestratorError::Kernel(format!(
            "{} agent(s) did not start: {}",
            failures.len(),
            why.join("; ")
        )));
    }
    for p in wanted {
        capacity.insert(
            p.role.to_string(),
            (p.size as usize * p.spec.capacity as usize).max(1),
        );
    }
    Ok(capacity)
}
