//! A plugin that subscribes to every hook and does nothing in any of them (the SDK's default
//! hooks): what the plugin machinery itself costs, for the benchmarks. Give each instance a
//! distinct `name` in hive.toml to load several.

use hive_plugin_api::{export_plugin, HivePlugin, Hooks, PluginContext, PluginError};

struct Noop;

impl HivePlugin for Noop {
    const NAME: &'static str = "noop";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str = "subscribes to every hook, does nothing";
    const HOOKS: Hooks = Hooks::ALL;

    fn new(_config_json: &str, _ctx: PluginContext) -> Result<Self, PluginError> {
        Ok(Noop)
    }
}

export_plugin!(Noop);
