//! The official `automation` plugin (being built: see docs/plugins/automation.md once it lands).

use hive_plugin_api::{export_plugin, HivePlugin, Hooks, PluginContext, PluginError};

/// The plugin.
#[derive(Debug)]
pub struct Automation;

impl HivePlugin for Automation {
    const NAME: &'static str = "automation";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::NONE;

    fn new(_config_json: &str, _ctx: PluginContext) -> Result<Self, PluginError> {
        Ok(Automation)
    }
}

export_plugin!(Automation);
