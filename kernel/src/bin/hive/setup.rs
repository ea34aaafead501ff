//! Starting a kernel the way every command does: settings from the config, its plugins
//! loaded (a required plugin that fails stops everything with exit 2, before any task runs),
//! pool templates registered, pools spawned.

use hive_kernel::{Config, Kernel, KernelBuilder, PluginSpec, Pool, QuarantinePolicy};

use crate::Exit;

/// Builds a kernel from `config` (or the defaults), lets `adjust` change the settings, and
/// loads the config's plugins.
pub(crate) fn build_kernel(
    config: Option<&Config>,
    adjust: impl FnOnce(&mut KernelBuilder),
) -> Result<Kernel, Exit> {
    build_kernel_with(config, Vec::new(), adjust)
}

/// [`build_kernel`], with `extra` plugins loaded after the config's.
pub(crate) fn build_kernel_with(
    config: Option<&Config>,
    extra: Vec<PluginSpec>,
    adjust: impl FnOnce(&mut KernelBuilder),
) -> Result<Kernel, Exit> {
    let mut builder = match config {
        Some(c) => c.kernel_builder(),
        None => {
            let mut b = Kernel::builder();
            b.starved_role_timeout(std::time::Duration::from_secs_f64(
                hive_kernel::KernelSection::default().starved_role_timeout_s,
            ));
            b
        }
    };
    adjust(&mut builder);
    let kernel = builder.build()?;
    let mut specs = config.map(|c| c.plugin_specs()).unwrap_or_default();
    specs.extend(extra);
    if !specs.is_empty() {
        let (policy, dir, what) = match config {
            Some(c) => (
                c.quarantine_policy(),
                c.dir().to_path_buf(),
                c.path().display().to_string(),
            ),
            None => (
                QuarantinePolicy::default(),
                std::path::PathBuf::from("."),
                "hive".to_string(),
            ),
        };
        let warnings = kernel
            .load_plugins(&specs, policy, &dir)
            .map_err(|e| Exit::bad_input(format!("{what}: {e}")))?;
        for w in warnings {
            eprintln!("hive: warning: optional {w} (continuing without it)");
        }
    }
    if let Some(c) = config {
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
