//! Builds the plugins of the plugin-api version-compatibility test (in the spirit of
//! abi_stable's testing/version_compatibility): one against the previous minor layout
//! (plugin-api 1.0, generated from the current sources by dropping the blocks marked
//! `api-since-1.N`) and one against an incompatible major (2.0.0). Each is a standalone crate
//! under target/compat/, built with the workspace's Cargo.lock.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// Drops every block between `// api-since-1.N {` and `// } api-since-1.N` (every minor
/// after 1.0).
fn strip_since(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("// api-since-1.") && t.ends_with('{') {
            skipping = true;
            continue;
        }
        if t.starts_with("// } api-since-1.") {
            skipping = false;
            continue;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

const PLUGIN_SRC: &str = r#"//! A plugin built against plugin-api @API@, for the version-compatibility test: it records
//! every task it sees complete.

use std::io::Write;
use std::sync::Mutex;

use hive_plugin_api::{export_plugin, HivePlugin, Hooks, PluginContext, PluginError, TaskCompletion};

struct Compat {
    record: Option<Mutex<std::fs::File>>,
}

impl HivePlugin for Compat {
    const NAME: &'static str = "compat";
    const VERSION: &'static str = "@API@";
    // The two high bits are the run hooks added in 1.1: a 1.0 plugin may set them, and the
    // kernel then calls hooks its vtable does not have (they must fall back to defaults).
    const HOOKS: Hooks = Hooks(Hooks::TASK_COMPLETED.0 | (1 << 8) | (1 << 9));

    fn new(config_json: &str, _ctx: PluginContext) -> Result<Self, PluginError> {
        let cfg: serde_json::Value = serde_json::from_str(config_json).map_err(|e| PluginError::config(e.to_string()))?;
        let record = match cfg.get("record").and_then(|v| v.as_str()) {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| PluginError::config(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Compat { record })
    }

    fn on_task_completed(&self, e: &TaskCompletion) -> Result<(), PluginError> {
        if let Some(f) = &self.record {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "task_completed {} {}", e.task, e.status);
            }
        }
        Ok(())
    }
}

export_plugin!(Compat);
"#;

/// Generates and builds both compatibility plugins.
pub fn build(root: &Path) -> Result<()> {
    let out = root.join("target/compat");
    let api_src = root.join("plugin-api/src");
    for (variant, version, strip) in [("v1_0", "1.0.0", true), ("v2_0", "2.0.0", false)] {
        let api = out.join(format!("api-{variant}"));
        fs::create_dir_all(api.join("src"))?;
        for f in ["lib.rs", "sdk.rs", "types.rs", "helpers.rs"] {
            let text = fs::read_to_string(api_src.join(f))
                .with_context(|| format!("reading plugin-api/src/{f}"))?;
            let text = if strip { strip_since(&text) } else { text };
            fs::write(api.join("src").join(f), text)?;
        }
        fs::write(
            api.join("Cargo.toml"),
            format!(
                "[package]\nname = \"hive-plugin-api\"\nversion = \"{version}\"\nedition = \"2021\"\npublish = false\n\n\
                 [dependencies]\nabi_stable = \"0.11\"\ntracing = \"0.1\"\n\
                 tracing-subscriber = {{ version = \"0.3\", default-features = false, features = [\"registry\", \"std\"] }}\n\
                 serde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\nserde_path_to_error = \"0.1\"\n"
            ),
        )?;
        let plugin = out.join(format!("plugin-{variant}"));
        fs::create_dir_all(plugin.join("src"))?;
        fs::write(
            plugin.join("Cargo.toml"),
            format!(
                "[workspace]\n\n[package]\nname = \"hive-compat-{variant}\"\nversion = \"{version}\"\nedition = \"2021\"\npublish = false\n\n\
                 [lib]\nname = \"compat_{variant}\"\ncrate-type = [\"cdylib\"]\n\n\
                 [dependencies]\nhive-plugin-api = {{ path = \"../api-{variant}\" }}\nserde_json = \"1\"\n"
            ),
        )?;
        fs::write(
            plugin.join("src/lib.rs"),
            PLUGIN_SRC.replace("@API@", version),
        )?;
        fs::copy(root.join("Cargo.lock"), plugin.join("Cargo.lock"))
            .context("copying Cargo.lock")?;
        let mut c = Command::new(cmd::cargo());
        c.current_dir(root).args([
            "build",
            "--quiet",
            "--manifest-path",
            &plugin.join("Cargo.toml").display().to_string(),
            "--target-dir",
            &out.join("target").display().to_string(),
        ]);
        cmd::run_checked(&mut c)
            .with_context(|| format!("building the plugin-api {version} compatibility plugin"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::strip_since;

    #[test]
    fn strips_only_marked_blocks() {
        let src = "a\n    // api-since-1.1 {\n    b\n    // } api-since-1.1\nc\n// api-since-1.2 {\nd\n// } api-since-1.2\ne\n";
        assert_eq!(strip_since(src), "a\nc\ne\n");
    }
}
