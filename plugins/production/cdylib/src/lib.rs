//! The shared library of the official `production` plugin: `libhive_plugin_production.so`, what hive.toml
//! loads by name. The plugin itself is the crate `hive-production` (also linkable into a program).

hive_plugin_api::export_plugin!(hive_production::Production);
