//! `hive.toml`: kernel settings and agent pools. Unknown keys and wrong types are errors that
//! name the file, the key and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::agent::AgentSpec;
use crate::driver::{Driver, ProcessConfig, ProcessDriver, StdioConfig, StdioDriver};
use crate::kernel::{Dispatch, KernelBuilder, RoleConfig};
use crate::queue::QueueOrder;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and the offending key.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("{}:{line}: `{key}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key.
        key: String,
        /// What is expected.
        message: String,
    },
}

fn d_timeout() -> f64 {
    300.0
}
fn d_grace() -> f64 {
    5.0
}
fn d_queue() -> usize {
    10_000
}
fn d_events() -> usize {
    8192
}
fn d_tail() -> usize {
    64
}
fn d_one() -> u32 {
    1
}
fn d_plugin_errors() -> usize {
    5
}
fn d_plugin_window() -> f64 {
    60.0
}

fn d_starved() -> f64 {
    30.0
}

/// `[[plugins]]`: one plugin to load, in order.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PluginSection {
    /// Its name: looked up on the plugin search path unless `path` is given.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Its library file (relative to the config file's directory).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A failure to load is a warning instead of an error.
    #[serde(default)]
    pub optional: bool,
    /// Only these of its hooks are called.
    #[serde(default)]
    pub hooks: Option<Vec<String>>,
    /// Its own config table, handed to it as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
}

/// `[kernel]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KernelSection {
    /// State directory (relative to the config file's directory).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Per-attempt timeout of tasks that set none, in seconds.
    #[serde(default = "d_timeout")]
    pub default_timeout_s: f64,
    /// SIGTERM-to-SIGKILL grace, in seconds.
    #[serde(default = "d_grace")]
    pub grace_period_s: f64,
    /// Tasks waiting per role at most.
    #[serde(default = "d_queue")]
    pub queue_capacity: usize,
    /// Events buffered per subscriber.
    #[serde(default = "d_events")]
    pub event_buffer: usize,
    /// Seed for jitter and random choices.
    #[serde(default)]
    pub seed: Option<u64>,
    /// KiB of stdout and of stderr kept per command.
    #[serde(default = "d_tail")]
    pub output_tail_kib: usize,
    /// Failed hook calls that quarantine a plugin...
    #[serde(default = "d_plugin_errors")]
    pub plugin_max_errors: usize,
    /// ...within this many seconds.
    #[serde(default = "d_plugin_window")]
    pub plugin_error_window_s: f64,
    /// Tasks waiting for a role with no live agent for this long fail (0: wait forever).
    #[serde(default = "d_starved")]
    pub starved_role_timeout_s: f64,
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            state_dir: None,
            default_timeout_s: d_timeout(),
            grace_period_s: d_grace(),
            queue_capacity: d_queue(),
            event_buffer: d_events(),
            seed: None,
            output_tail_kib: d_tail(),
            plugin_max_errors: d_plugin_errors(),
            plugin_error_window_s: d_plugin_window(),
            starved_role_timeout_s: d_starved(),
        }
    }
}

impl KernelSection {
    /// The quarantine policy these settings give plugins.
    pub fn quarantine_policy(&self) -> crate::QuarantinePolicy {
        crate::QuarantinePolicy::new(
            self.plugin_max_errors,
            Duration::from_secs_f64(self.plugin_error_window_s),
        )
    }

    /// A kernel builder with these settings (the defaults: `KernelSection::default()`).
    pub fn kernel_builder(&self) -> KernelBuilder {
        let k = self;
        let mut b = KernelBuilder::new();
        b.default_timeout(Duration::from_secs_f64(k.default_timeout_s))
            .grace_period(Duration::from_secs_f64(k.grace_period_s))
            .queue_capacity(k.queue_capacity)
            .event_capacity(k.event_buffer);
        if let Some(s) = k.seed {
            b.seed(s);
        }
        if k.starved_role_timeout_s > 0.0 {
            b.starved_role_timeout(Duration::from_secs_f64(k.starved_role_timeout_s));
        }
        b
    }
}

/// `[[pools]]`: `size` agents of one role.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolSection {
    /// The role.
    pub role: Spanned<String>,
    /// `process` or `stdio`.
    pub driver: Spanned<String>,
    /// Agents in the pool.
    #[serde(default = "d_one")]
    pub size: u32,
    /// Tasks in flight per agent.
    #[serde(default = "d_one")]
    pub capacity: u32,
    /// The program (stdio: the agent; process: the default command).
    #[serde(default)]
    pub command: Option<Spanned<String>>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (relative to the config file's directory, which is the default).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Capabilities of every agent of the pool.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `pull`, `least_loaded`, `round_robin` or `affinity`.
    #[serde(default)]
    pub dispatch: Dispatch,
    /// `priority` or `shortest_first`.
    #[serde(default)]
    pub order: QueueOrder,
    /// Tasks waiting at most (the kernel's default otherwise).
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// stdio: heartbeat period in milliseconds.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// stdio: lease in milliseconds (silence longer fails the agent).
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// Grace period in seconds (the kernel's otherwise).
    #[serde(default)]
    pub grace_period_s: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    kernel: KernelSection,
    #[serde(default)]
    pools: Vec<PoolSection>,
    #[serde(default)]
    plugins: Vec<PluginSection>,
}

/// One pool ready to spawn.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Pool {
    /// The role.
    pub role: Arc<str>,
    /// Agents to spawn.
    pub size: u32,
    /// What each agent is.
    pub spec: AgentSpec,
    /// The role's routing.
    pub role_config: RoleConfig,
}

/// A loaded, validated `hive.toml`.
#[derive(Clone, Debug)]
pub struct Config {
    path: PathBuf,
    text: Arc<str>,
    dir: PathBuf,
    /// `[kernel]`.
    pub kernel: KernelSection,
    /// `[[pools]]`.
    pub pools: Vec<PoolSection>,
    /// `[[plugins]]`, in load order.
    pub plugins: Vec<PluginSection>,
}

fn is_driver_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

fn secs(path: &Path, text: &str, key: &str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v).map_err(|_| ConfigError::Invalid {
        path: path.into(),
        line: text
            .lines()
            .position(|l| l.trim_start().starts_with(key))
            .map_or(1, |i| i + 1),
        key: key.into(),
        message: format!("expected a non-negative number of seconds, found {v}"),
    })
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid =
            |span: std::ops::Range<usize>, key: &str, message: String| ConfigError::Invalid {
                path: path.into(),
                line: line_of(text, span.start),
                key: key.into(),
                message,
            };
        let k = &raw.kernel;
        secs(path, text, "default_timeout_s", k.default_timeout_s)?;
        secs(path, text, "grace_period_s", k.grace_period_s)?;
        if k.default_timeout_s <= 0.0 {
            return Err(ConfigError::Invalid {
                path: path.into(),
                line: line_of(text, text.find("default_timeout_s").unwrap_or(0)),
                key: "kernel.default_timeout_s".into(),
                message: "expected more than zero seconds".into(),
            });
        }
        if k.queue_capacity == 0 {
            return Err(ConfigError::Invalid {
                path: path.into(),
                line: line_of(text, text.find("queue_capacity").unwrap_or(0)),
                key: "kernel.queue_capacity".into(),
                message: "expected at least 1".into(),
            });
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for p in &raw.pools {
            let role = p.role.get_ref();
            if role.trim().is_empty() {
                return Err(invalid(
                    p.role.span(),
                    "role",
                    "expected a non-empty role name".into(),
                ));
            }
            if let Some(first) = seen.insert(role.clone(), line_of(text, p.role.span().start)) {
                return Err(invalid(
                    p.role.span(),
                    "role",
                    format!("role `{role}` already has a pool (line {first}); one pool per role"),
                ));
            }
            match p.driver.get_ref().as_str() {
                "process" => {}
                "stdio" if p.command.is_none() => {
                    return Err(invalid(
                        p.driver.span(),
                        "command",
                        format!("pool `{role}` uses driver stdio and needs `command` (the agent program)"),
                    ));
                }
                "stdio" => {}
                other if raw.plugins.is_empty() || !is_driver_name(other) => {
                    return Err(invalid(
                        p.driver.span(),
                        "driver",
                        format!("unknown driver `{other}`, expected `process`, `stdio`, or a driver a plugin of [[plugins]] contributes"),
                    ))
                }
                // A plugin's driver: checked once the plugins are loaded (`check_drivers`).
                _ => {}
            }
            if p.capacity == 0 {
                return Err(invalid(
                    p.role.span(),
                    "capacity",
                    format!("pool `{role}`: expected at least 1"),
                ));
            }
            if let Some(g) = p.grace_period_s {
                secs(path, text, "grace_period_s", g)?;
            }
            if let (Some(hb), Some(lease)) = (p.heartbeat_ms, p.lease_ms) {
                if lease <= hb {
                    return Err(invalid(
                        p.role.span(),
                        "lease_ms",
                        format!("pool `{role}`: lease_ms ({lease}) must be longer than heartbeat_ms ({hb})"),
                    ));
                }
            }
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, p) in raw.plugins.iter().enumerate() {
            let line = p.name.as_ref().map_or_else(
                || {
                    text.match_indices("[[plugins]]")
                        .nth(i)
                        .map_or(1, |(o, _)| line_of(text, o))
                },
                |n| line_of(text, n.span().start),
            );
            if p.name.is_none() && p.path.is_none() {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    line,
                    key: "plugins".into(),
                    message: "a [[plugins]] entry needs `name` (found on the plugin search path) or `path`".into(),
                });
            }
            if let Some(n) = &p.name {
                if let Some(first) = names.insert(n.get_ref().clone(), line) {
                    return Err(ConfigError::Invalid {
                        path: path.into(),
                        line,
                        key: "name".into(),
                        message: format!(
                            "plugin `{}` is already listed (line {first})",
                            n.get_ref()
                        ),
                    });
                }
            }
            for h in p.hooks.iter().flatten() {
                if hive_plugin_api::Hooks::by_name(h).is_none() {
                    return Err(ConfigError::Invalid {
                        path: path.into(),
                        line,
                        key: "hooks".into(),
                        message: format!(
                            "unknown hook `{h}`, expected one of {}",
                            hive_plugin_api::Hooks::ALL.names().join(", ")
                        ),
                    });
                }
            }
        }
        if k.plugin_max_errors == 0 {
            return Err(ConfigError::Invalid {
                path: path.into(),
                line: line_of(text, text.find("plugin_max_errors").unwrap_or(0)),
                key: "kernel.plugin_max_errors".into(),
                message: "expected at least 1".into(),
            });
        }
        secs(path, text, "plugin_error_window_s", k.plugin_error_window_s)?;
        secs(
            path,
            text,
            "starved_role_timeout_s",
            k.starved_role_timeout_s,
        )?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Config {
            path: path.into(),
            text: text.into(),
            dir,
            kernel: raw.kernel,
            pools: raw.pools,
            plugins: raw.plugins,
        })
    }

    /// Checks that every pool's driver is built in or contributed by a loaded plugin
    /// (`contributed`: the drivers the loaded plugins contribute).
    pub fn check_drivers(&self, contributed: &[String]) -> Result<(), ConfigError> {
        for p in &self.pools {
            let d = p.driver.get_ref();
            if d == "process" || d == "stdio" || contributed.iter().any(|c| c == d) {
                continue;
            }
            return Err(ConfigError::Invalid {
                path: self.path.clone(),
                line: line_of(&self.text, p.driver.span().start),
                key: "driver".into(),
                message: format!(
                    "pool `{}`: unknown driver `{d}`, expected `process`, `stdio`, or a driver a loaded plugin contributes ({})",
                    p.role.get_ref(),
                    if contributed.is_empty() {
                        "the loaded plugins contribute none".to_string()
                    } else {
                        format!("contributed: {}", contributed.join(", "))
                    }
                ),
            });
        }
        Ok(())
    }

    /// The roles of its pools.
    pub fn pool_roles(&self) -> Vec<String> {
        self.pools
            .iter()
            .map(|p| p.role.get_ref().clone())
            .collect()
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory it names, resolved against its own directory.
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.kernel.state_dir.as_ref().map(|d| self.dir.join(d))
    }

    /// The directory relative paths hang off.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `[[plugins]]` entries as load specs, in order.
    pub fn plugin_specs(&self) -> Vec<crate::PluginSpec> {
        self.plugins
            .iter()
            .map(|p| {
                let config = p
                    .config
                    .as_ref()
                    .and_then(|t| serde_json::to_value(t).ok())
                    .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
                let mut spec = match &p.path {
                    Some(path) => crate::PluginSpec::path(self.dir.join(path)),
                    None => crate::PluginSpec::named(
                        p.name
                            .as_ref()
                            .map(|n| n.get_ref().clone())
                            .unwrap_or_default(),
                    ),
                };
                if let Some(n) = &p.name {
                    spec = spec.with_name(n.get_ref().clone());
                }
                spec = spec.with_config(config);
                if p.optional {
                    spec = spec.optional();
                }
                if let Some(h) = &p.hooks {
                    spec = spec.with_hooks(h.clone());
                }
                spec
            })
            .collect()
    }

    /// The quarantine policy of `[kernel]`.
    pub fn quarantine_policy(&self) -> crate::QuarantinePolicy {
        self.kernel.quarantine_policy()
    }

    /// A kernel builder with the `[kernel]` settings.
    pub fn kernel_builder(&self) -> KernelBuilder {
        self.kernel.kernel_builder()
    }

    /// The pools, with drivers built (a plugin's driver through `kernel`, which must have
    /// loaded the plugins before the pools' agents start).
    pub fn pools(&self, kernel: &crate::Kernel) -> Vec<Pool> {
        self.pools
            .iter()
            .map(|p| {
                let cwd = Some(match &p.cwd {
                    Some(c) => self.dir.join(c),
                    None => self.dir.clone(),
                });
                let grace = p.grace_period_s.map(Duration::from_secs_f64);
                let builtin = matches!(p.driver.get_ref().as_str(), "stdio" | "process");
                let driver: Arc<dyn Driver> = if !builtin {
                    kernel.plugin_driver(p.driver.get_ref())
                } else if p.driver.get_ref() == "stdio" {
                    let program = p
                        .command
                        .as_ref()
                        .map(|c| c.get_ref().clone())
                        .unwrap_or_default();
                    let mut c = StdioConfig::new(program);
                    c.args(p.args.clone());
                    c.env = p.env.clone();
                    c.cwd = cwd;
                    c.grace = grace;
                    let hb = p
                        .heartbeat_ms
                        .map(Duration::from_millis)
                        .unwrap_or(c.heartbeat);
                    let lease = p
                        .lease_ms
                        .map(Duration::from_millis)
                        .unwrap_or_else(|| (hb * 5).max(c.lease.min(hb * 5)));
                    c.liveness(hb, lease);
                    StdioDriver::new(c).shared()
                } else {
                    let mut c = ProcessConfig::new();
                    if let Some(cmd) = &p.command {
                        c.program(cmd.get_ref().clone());
                    }
                    c.args(p.args.clone());
                    c.env = p.env.clone();
                    c.cwd = cwd;
                    c.grace = grace;
                    c.tail_bytes(self.kernel.output_tail_kib * 1024);
                    ProcessDriver::new(c).shared()
                };
                let mut spec = AgentSpec::new(p.role.get_ref(), driver).with_capacity(p.capacity);
                for cap in &p.capabilities {
                    spec = spec.with_capability(cap);
                }
                let mut rc = RoleConfig::new();
                rc.dispatch(p.dispatch).order(p.order);
                if let Some(q) = p.queue_capacity {
                    rc.queue_capacity(q);
                }
                Pool {
                    role: Arc::from(p.role.get_ref().as_str()),
                    size: p.size,
                    spec,
                    role_config: rc,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("conf/hive.toml"))
    }

    #[tokio::test]
    async fn a_full_config_parses() {
        let c = parse(
            r#"
[kernel]
default_timeout_s = 30
seed = 7

[[pools]]
role = "echo"
driver = "stdio"
size = 2
capacity = 4
command = "python3"
args = ["agents/echo_agent.py"]
dispatch = "least_loaded"

[[pools]]
role = "sh"
driver = "process"
order = "shortest_first"
"#,
        )
        .expect("valid");
        let kernel = crate::Kernel::builder().build().expect("kernel");
        let pools = c.pools(&kernel);
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].size, 2);
        assert_eq!(pools[0].spec.capacity, 4);
        assert_eq!(pools[0].role_config.dispatch, Dispatch::LeastLoaded);
        assert_eq!(pools[1].role_config.order, QueueOrder::ShortestFirst);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("[kernel]\nseed = 1\nbogus = 2\n").expect_err("unknown key");
        let m = e.to_string();
        assert!(m.contains("conf/hive.toml"), "{m}");
        assert!(m.contains("line 3"), "{m}");
        assert!(m.contains("bogus"), "{m}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let e = parse("[[pools]]\nrole = \"a\"\ndriver = \"process\"\nsize = \"two\"\n")
            .expect_err("wrong type");
        let m = e.to_string();
        assert!(m.contains("line 4"), "{m}");
        assert!(m.contains("size") || m.contains("invalid type"), "{m}");
    }

    #[test]
    fn semantic_errors_name_line() {
        let e = parse("[[pools]]\nrole = \"a\"\ndriver = \"ssh\"\n").expect_err("bad driver");
        assert_eq!(
            e.to_string(),
            "conf/hive.toml:3: `driver`: unknown driver `ssh`, expected `process`, `stdio`, or a driver a plugin of [[plugins]] contributes"
        );
        let e = parse("[[pools]]\nrole = \"a\"\ndriver = \"stdio\"\n").expect_err("no command");
        assert!(e.to_string().contains("needs `command`"), "{e}");
        let e = parse("[[pools]]\nrole = \"a\"\ndriver = \"process\"\n[[pools]]\nrole = \"a\"\ndriver = \"process\"\n")
            .expect_err("dup");
        assert!(e.to_string().starts_with("conf/hive.toml:5:"), "{e}");
    }

    #[test]
    fn plugins_parse_in_order_with_their_config() {
        let c = parse(
            "[[plugins]]\nname = \"a\"\n[plugins.config]\nx = 1\n\n[[plugins]]\npath = \"lib/b.so\"\noptional = true\nhooks = [\"task_completed\"]\n",
        )
        .expect("valid");
        let specs = c.plugin_specs();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name.as_deref(), Some("a"));
        assert_eq!(specs[0].config, serde_json::json!({"x": 1}));
        assert_eq!(specs[1].path, Some(PathBuf::from("conf/lib/b.so")));
        assert!(specs[1].optional);
        let e = parse("[[plugins]]\noptional = true\n").expect_err("no name or path");
        assert!(e.to_string().starts_with("conf/hive.toml:1:"), "{e}");
        let e = parse("[[plugins]]\nname = \"a\"\nhooks = [\"nope\"]\n").expect_err("bad hook");
        assert!(e.to_string().contains("unknown hook `nope`"), "{e}");
        let e = parse("[[plugins]]\nname = \"a\"\nbogus = 1\n").expect_err("unknown key");
        assert!(
            e.to_string().contains("bogus") && e.to_string().contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_hang_off_the_config_dir() {
        let c = parse("[kernel]\nstate_dir = \"st\"\n").expect("valid");
        assert_eq!(c.state_dir(), Some(PathBuf::from("conf/st")));
    }
}
