//! Starting a kernel the way every command does (the kernel's `start_kernel`), with the
//! command line's exit codes and messages: a required plugin that fails stops everything with
//! exit 2, before any task runs; an optional one is a warning.

use hive_kernel::{Config, Kernel, KernelBuilder, PluginSpec, Pool};

use crate::Exit;

impl From<hive_kernel::SetupError> for Exit {
    fn from(e: hive_kernel::SetupError) -> Self {
        Exit::bad_input(e.to_string())
    }
}

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
    let mut settings = hive_kernel::kernel_settings(config);
    adjust(&mut settings);
    let (kernel, skipped) = hive_kernel::start_kernel(config, &settings, &extra)?;
    for w in skipped {
        eprintln!("hive: warning: optional {w} (continuing without it)");
    }
    Ok(kernel)
}

/// Declares the pools' roles, registers their templates, and spawns their agents
/// concurrently. Returns the spawn failures as messages.
pub(crate) async fn spawn_pools<'a>(
    kernel: &Kernel,
    pools: impl IntoIterator<Item = &'a Pool>,
) -> Result<Vec<String>, Exit> {
    let failures = hive_kernel::spawn_pools(kernel, pools).await?;
    Ok(failures.iter().map(ToString::to_string).collect())
}
