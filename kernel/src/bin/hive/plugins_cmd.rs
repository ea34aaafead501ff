//! `hive plugins list` (the plugins of a config, loaded for real) and `hive plugins inspect
//! FILE` (one library's manifest, or why it is not a loadable plugin: exit 2).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hive_kernel::{inspect_plugin, Config, PluginHealth};

use crate::Exit;

#[derive(Args, Debug)]
pub(crate) struct PluginsArgs {
    #[command(subcommand)]
    cmd: PluginsCmd,
}

#[derive(Subcommand, Debug)]
enum PluginsCmd {
    /// Load the plugins of a config and list them (name, version, API, hooks, state).
    List {
        /// The config file.
        #[arg(long, value_name = "FILE", default_value = "hive.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin library's manifest, or why it cannot be loaded (exit 2).
    Inspect {
        /// The library file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn plugins(args: PluginsArgs) -> Result<u8, Exit> {
    match args.cmd {
        PluginsCmd::List { config, json } => list(config, json).await,
        PluginsCmd::Inspect { file, json } => inspect(file, json),
    }
}

async fn list(path: PathBuf, json: bool) -> Result<u8, Exit> {
    let config = Config::load(&path)?;
    let kernel = crate::setup::build_kernel(Some(&config), |_| {})?;
    let plugins: Vec<PluginHealth> = kernel.health().plugins;
    kernel.shutdown(hive_kernel::ShutdownMode::Now).await;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&plugins).unwrap_or_default()
        );
    } else if plugins.is_empty() {
        say!("no [[plugins]] in {}", path.display());
    } else {
        say!("{:<16} {:<9} {:<12} PATH", "NAME", "VERSION", "STATE");
        for p in &plugins {
            say!("{:<16} {:<9} {:<12} {}", p.name, p.version, p.state, p.path);
            if !p.hooks.is_empty() {
                say!("  hooks: {}", p.hooks.join(", "));
            }
            if !p.drivers.is_empty() {
                say!("  drivers: {}", p.drivers.join(", "));
            }
            if let Some(r) = &p.reason {
                say!("  reason: {r}");
            }
        }
    }
    Ok(if plugins.iter().all(|p| p.state == "loaded") {
        0
    } else {
        1
    })
}

fn inspect(file: PathBuf, json: bool) -> Result<u8, Exit> {
    match inspect_plugin(&file) {
        Ok(m) => {
            if json {
                say!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            } else {
                say!("name:        {}", m.name);
                say!("version:     {}", m.version);
                say!(
                    "api_version: {} (this kernel: {})",
                    m.api_version,
                    hive_plugin_api::API_VERSION
                );
                say!("hooks:       {}", m.hooks.join(", "));
                say!("description: {}", m.description);
                say!("path:        {}", m.path.display());
            }
            Ok(0)
        }
        Err(e) => {
            if json {
                say!(
                    "{}",
                    serde_json::json!({"path": e.path, "error": e.kind, "message": e.message})
                );
            }
            Err(Exit::bad_input(e.to_string()))
        }
    }
}
