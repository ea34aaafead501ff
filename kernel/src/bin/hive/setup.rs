//! Starting a kernel the way every command does: settings from the config, its plugins
//! loaded (a required plugin that fails stops everything with exit 2, before any task runs),
//! pool templates registered, pools spawned.

use hive_kernel::{Config, Kernel, KernelBuilder, Pool};

use crate::Exit;

/// Builds a kernel from `config` (or the defaults), lets `adjust` change the settings, and
/// loads the config's plugins.
pub(crate) fn build_kernel(
    config: Option<&Config>,
    adjust: impl FnOnce(&mut KernelBuilder),
) -> Result<Kernel, Exit> {
    let mut builder = match config {
        Some(c) => c.kernel_builder(),
        None => Kernel::builder(),
    };
    adjust(&mut builder);
    let kernel = builder.build()?;
    if let Some(c) = config {
        if !c.plugins.is_empty() {
            let warnings = kernel
                .load_plugins(&c.plugin_specs(), c.quarantine_policy(), c.dir())
                .map_err(|e| Exit::bad_input(format!("{}: {e}", c.path().display())))?;
            for w in warnings {
                eprintln!("hive: warning: optional {w} (continuing without it)");
            }
        }
        c.check_drivers(&kernel.plugin_drivers())?;
    }
    Ok(kernel)
}

/// Declares the pools' roles, registers their templates, and spawns their agents
/// concurrently. Returns the spawn failures as messages.
pub(crate) async fn spawn_pools<'a>(
    kernel: &Kernel,
    pools: impl IntoIterator<Item = &'a Pool>,
) -> Result<Vec<String>, Exit> {
    let mut set = tokio::task::JoinSet::new();
    for p in pools {
        kernel.declare_role(&*p.role, p.role_config)?;
        kernel.register_template(p.spec.clone());
        for _ in 0..p.size {
            let k = kernel.clone();
            let spec = p.spec.clone();
            set.spawn(async move { k.spawn_agent(spec).await });
        }
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(format!("spawn task failed: {e}")),
        }
    }
    Ok(failures)
}
