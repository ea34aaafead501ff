//! The official `performance` plugin (being built: see docs/plugins/performance.md once it lands).

use hive_plugin_api::{export_plugin, HivePlugin, Hooks, PluginContext, PluginError};

/// The plugin.
#[derive(Debug)]
pub struct Performance;

impl HivePlugin for Performance {
    const NAME: &'static str = "performance";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::NONE;

    fn new(_config_json: &str, _ctx: PluginContext) -> Result<Self, PluginError> {
        Ok(Performance)
    }
}

export_plugin!(Performance);
