//! The official `production` plugin (being built: see docs/plugins/production.md once it lands).

use hive_plugin_api::{export_plugin, HivePlugin, Hooks, PluginContext, PluginError};

/// The plugin.
#[derive(Debug)]
pub struct Production;

impl HivePlugin for Production {
    const NAME: &'static str = "production";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::NONE;

    fn new(_config_json: &str, _ctx: PluginContext) -> Result<Self, PluginError> {
        Ok(Production)
    }
}

export_plugin!(Production);
