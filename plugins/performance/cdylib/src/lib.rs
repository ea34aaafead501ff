//! The shared library of the official `performance` plugin: `libhive_plugin_performance.so`, what hive.toml
//! loads by name. The plugin itself is the crate `hive-performance` (also linkable into a program).

hive_plugin_api::export_plugin!(hive_performance::Performance);
