//! The official `development` plugin (being built: see docs/plugins/development.md once it lands).

use hive_plugin_api::{export_plugin, HivePlugin, Hooks, PluginContext, PluginError};

/// The plugin.
#[derive(Debug)]
pub struct Development;

impl HivePlugin for Development {
    const NAME: &'static str = "development";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::NONE;

    fn new(_config_json: &str, _ctx: PluginContext) -> Result<Self, PluginError> {
        Ok(Development)
    }
}

export_plugin!(Development);
