//! The shared library of the official `automation` plugin: `libhive_plugin_automation.so`, what hive.toml
//! loads by name. The plugin itself is the crate `hive-automation` (also linkable into a program).

hive_plugin_api::export_plugin!(hive_automation::Automation);
