//! The shared library of the official `development` plugin: `libhive_plugin_development.so`, what hive.toml
//! loads by name. The plugin itself is the crate `hive-development` (also linkable into a program).

hive_plugin_api::export_plugin!(hive_development::Development);
