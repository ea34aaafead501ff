//! Plugins on the kernel's side: loading libraries, the host handle the kernel gives them,
//! and the dispatch of their hooks.

mod driver;
mod host;
mod loader;
mod set;

pub(crate) use driver::PluginDriver;
pub use loader::{inspect, search_path, LoadErrorKind, PluginLoadError, PluginManifest};
pub(crate) use set::{abi_target, kernel_target, PluginSet};
pub use set::{LinkedPlugin, PluginHealth, PluginSpec, QuarantinePolicy};
