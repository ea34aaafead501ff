//! `cargo xtask new-plugin NAME [--dir DIR]`: generates a plugin crate (a cdylib against
//! `hive-plugin-api`) that builds and loads as it is, and adds it to the workspace members
//! when it goes under the workspace.

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What [`generate`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The crate's directory (absolute).
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// Whether the crate is under the workspace root (and so a workspace member).
    pub in_workspace: bool,
    /// The entry added to the workspace `members`, if one was needed.
    pub member_added: Option<String>,
}

/// `cargo xtask new-plugin`: generates the crate and says what to do next. A relative `dir`
/// is taken from the current directory; the default is `plugins/NAME` in the workspace.
pub fn run(root: &Path, name: &str, dir: Option<&Path>) -> Result<()> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => root.join("plugins").join(name),
    };
    let g = generate(root, name, &dir)?;
    let snake = name.replace('-', "_");
    let shown = g
        .dir
        .strip_prefix(canonical(root)?)
        .map_or_else(|_| g.dir.clone(), Path::to_path_buf);
    let files: Vec<String> = g.files.iter().map(|f| f.display().to_string()).collect();
    println!("created {} ({})", shown.display(), files.join(", "));
    if let Some(m) = &g.member_added {
        println!("added \"{m}\" to the workspace members in Cargo.toml");
    }
    println!("next:");
    if g.in_workspace {
        println!("  cargo build -p {name} --release");
        println!("  target/release/hive plugins inspect target/release/lib{snake}.so");
    } else {
        println!(
            "  cd {} && cargo build -p {name} --release",
            g.dir.display()
        );
        println!("  hive plugins inspect target/release/lib{snake}.so");
    }
    println!("  and see {}/README.md to load it", shown.display());
    Ok(())
}

/// Generates the plugin crate `name` in `dir` (which must not exist) for the workspace at
/// `root`. Under `root`, the crate inherits the workspace lints and is added to `members`
/// (unless a glob already covers it); elsewhere it is its own workspace, with a copy of the
/// workspace's Cargo.lock so that it builds with the same dependency versions.
pub fn generate(root: &Path, name: &str, dir: &Path) -> Result<Generated> {
    validate_name(name)?;
    let root = canonical(root)?;
    let api = root.join("plugin-api");
    if !api.join("Cargo.toml").is_file() {
        bail!("no plugin-api crate at {}", api.display());
    }
    check_not_locked(&root, name)?;
    if dir.exists() {
        bail!(
            "{} already exists; choose another NAME or --dir",
            dir.display()
        );
    }
    let dir = absolute(dir)?;
    let in_workspace = dir.starts_with(&root) && dir != root;

    // Work out the manifest edit before writing anything, so a refusal leaves no trace.
    let manifest_path = root.join("Cargo.toml");
    let mut member_added = None;
    let mut new_manifest = None;
    if in_workspace {
        let member = member_path(&dir, &root)?;
        let text = fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        if let Some(edited) = add_member(&text, &member)? {
            new_manifest = Some(edited);
            member_added = Some(member);
        }
    }

    let api_rel = relative_path(&dir, &api);
    let files = render(name, &api_rel, in_workspace);
    let write_all = || -> Result<()> {
        for (rel, text) in &files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        if !in_workspace {
            let lock = root.join("Cargo.lock");
            if lock.is_file() {
                fs::copy(&lock, dir.join("Cargo.lock")).context("copying Cargo.lock")?;
            }
        }
        Ok(())
    };
    if let Err(e) = write_all() {
        // The directory did not exist before: remove what was made of it.
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    let mut written: Vec<PathBuf> = files.iter().map(|(rel, _)| PathBuf::from(rel)).collect();
    if !in_workspace && dir.join("Cargo.lock").is_file() {
        written.push(PathBuf::from("Cargo.lock"));
    }
    if let Some(text) = new_manifest {
        fs::write(&manifest_path, text)
            .with_context(|| format!("writing {}", manifest_path.display()))?;
    }
    Ok(Generated {
        dir,
        files: written,
        in_workspace,
        member_added,
    })
}

/// Rust keywords (strict and reserved): not usable as a crate name.
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use",
    "where", "while", "abstract", "become", "box", "do", "final", "gen", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Crate names the compiler or the generated crate's dependencies already take.
const TAKEN: &[&str] = &[
    "std",
    "core",
    "alloc",
    "test",
    "proc_macro",
    "hive_plugin_api",
    "serde_json",
    "tracing",
];

/// A plugin name: lowercase ASCII letters, digits, `-` and `_`, starting with a letter, and
/// usable as a crate name.
pub fn validate_name(name: &str) -> Result<()> {
    let Some(first) = name.chars().next() else {
        bail!("the plugin name is empty");
    };
    if !first.is_ascii_lowercase() {
        bail!("invalid plugin name `{name}`: it must start with a lowercase letter (a-z)");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        bail!(
            "invalid plugin name `{name}`: `{c}` is not allowed (use lowercase letters, digits, `-` and `_`)"
        );
    }
    if name.len() > 64 {
        bail!("invalid plugin name `{name}`: longer than 64 characters");
    }
    let snake = name.replace('-', "_");
    if KEYWORDS.contains(&snake.as_str()) {
        bail!("invalid plugin name `{name}`: a Rust keyword cannot be a crate name");
    }
    if TAKEN.contains(&snake.as_str()) {
        bail!("invalid plugin name `{name}`: that crate name is taken by a standard or dependency crate");
    }
    Ok(())
}

/// Refuses a name already used by a package of the workspace's Cargo.lock (a member or a
/// dependency): two packages of one name make `cargo build -p NAME` ambiguous.
fn check_not_locked(root: &Path, name: &str) -> Result<()> {
    let lock = root.join("Cargo.lock");
    let Ok(text) = fs::read_to_string(&lock) else {
        return Ok(());
    };
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", lock.display()))?;
    let snake = name.replace('-', "_");
    let clash = table
        .get("package")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("name").and_then(toml::Value::as_str))
        .find(|n| n.replace('-', "_") == snake);
    if let Some(n) = clash {
        bail!("invalid plugin name `{name}`: the workspace already has a package `{n}` (see Cargo.lock)");
    }
    Ok(())
}

/// The canonical form of an existing path.
fn canonical(p: &Path) -> Result<PathBuf> {
    p.canonicalize()
        .with_context(|| format!("resolving {}", p.display()))
}

/// `p` made absolute and canonical as far as it exists (the rest appended, `..` resolved).
fn absolute(p: &Path) -> Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(p)
    };
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(file)) => {
                rest.push(file.to_os_string());
                existing = parent;
            }
            _ => bail!("cannot resolve {}", p.display()),
        }
    }
    let mut out = canonical(existing)?;
    for part in rest.iter().rev() {
        if part == ".." {
            out.pop();
        } else if part != "." {
            out.push(part);
        }
    }
    Ok(out)
}

/// The path from directory `from` to `to` (both absolute), with `/` separators.
fn relative_path(from: &Path, to: &Path) -> String {
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); a.len() - common];
    parts.extend(
        b[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// `dir` relative to `root` as a `members` entry (`/` separators).
fn member_path(dir: &Path, root: &Path) -> Result<String> {
    let rel = dir
        .strip_prefix(root)
        .with_context(|| format!("{} is not under {}", dir.display(), root.display()))?;
    let parts: Vec<&str> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8", rel.display()))
        })
        .collect::<Result<_>>()?;
    Ok(parts.join("/"))
}

/// Whether a `members` entry (path components may hold `*` and `?`) names `path`.
fn member_covers(pattern: &str, path: &str) -> bool {
    let split = |s: &str| -> Vec<String> {
        s.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect()
    };
    let (p, n) = (split(pattern), split(path));
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| crate::tidy::wildcard(p, n))
}

/// The `members` of a parsed workspace manifest.
fn members_of(table: &toml::Table) -> Option<Vec<String>> {
    table.get("workspace")?.get("members")?.as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    })
}

/// Adds `member` to `[workspace] members` in the manifest text, editing only the list: the
/// new entry goes last, in the list's own layout. `None` when an entry (or a glob such as
/// `"plugins/*"`) already covers it.
pub fn add_member(text: &str, member: &str) -> Result<Option<String>> {
    let before: toml::Table = text.parse().context("parsing the workspace Cargo.toml")?;
    let Some(members) = members_of(&before) else {
        bail!("the workspace Cargo.toml has no `[workspace] members` list; add \"{member}\" to it by hand");
    };
    if members.iter().any(|m| member_covers(m, member)) {
        return Ok(None);
    }
    let (open, close) = find_members_array(text)
        .context("cannot find the `members = [...]` list of `[workspace]` in Cargo.toml")?;
    let quoted = toml::Value::String(member.to_string()).to_string();
    let inner = &text[open + 1..close];
    // The last significant character before `]`: `[`, `,` or the end of an entry.
    let last = last_significant(text, open, close);
    let mut out = String::with_capacity(text.len() + quoted.len() + 8);
    if !inner.contains('\n') {
        let at = last + 1;
        out.push_str(&text[..at]);
        match text.as_bytes()[last] {
            b'[' => out.push_str(&quoted),
            b',' => {
                out.push(' ');
                out.push_str(&quoted);
            }
            _ => {
                out.push_str(", ");
                out.push_str(&quoted);
            }
        }
        out.push_str(&text[at..]);
    } else {
        // One entry per line: a new line after the last entry's line, indented like it.
        let last_line_start = text[..=last].rfind('\n').map_or(0, |i| i + 1);
        let last_line_end = text[last..close].find('\n').map_or(close, |i| last + i);
        let indent: String = if text.as_bytes()[last] == b'[' {
            "    ".into()
        } else {
            text[last_line_start..]
                .chars()
                .take_while(|c| *c == ' ' || *c == '\t')
                .collect()
        };
        let trailing_comma = text.as_bytes()[last] == b',';
        out.push_str(&text[..=last]);
        if text.as_bytes()[last] != b'[' && !trailing_comma {
            out.push(',');
        }
        out.push_str(&text[last + 1..last_line_end]);
        out.push('\n');
        out.push_str(&indent);
        out.push_str(&quoted);
        if trailing_comma || text.as_bytes()[last] == b'[' {
            out.push(',');
        }
        out.push_str(&text[last_line_end..]);
    }
    // The edit must add exactly that entry and change nothing else.
    let after: toml::Table = out
        .parse()
        .context("internal error: the edited Cargo.toml does not parse")?;
    let mut expected = before.clone();
    if let Some(toml::Value::Array(a)) = expected
        .get_mut("workspace")
        .and_then(|w| w.as_table_mut())
        .and_then(|w| w.get_mut("members"))
    {
        a.push(toml::Value::String(member.to_string()));
    }
    if after != expected {
        bail!("internal error: editing `members` in Cargo.toml would change more than the list; add \"{member}\" to it by hand");
    }
    Ok(Some(out))
}

/// The byte offsets of `[` and `]` of `members = [...]` in the `[workspace]` table.
fn find_members_array(text: &str) -> Option<(usize, usize)> {
    let mut offset = 0;
    let mut in_workspace = false;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let t = line.trim();
        if t.starts_with('[') {
            let header = t.split('#').next().unwrap_or("").trim();
            in_workspace = header == "[workspace]";
            continue;
        }
        if !in_workspace {
            continue;
        }
        let Some(after_key) = t.strip_prefix("members") else {
            continue;
        };
        let after_key = after_key.trim_start();
        if !after_key.starts_with('=') {
            continue;
        }
        let open = start + line.find('[')?;
        let close = matching_bracket(text, open)?;
        return Some((open, close));
    }
    None
}

/// The offset of the `]` closing the array opened at `open`, skipping strings and comments.
fn matching_bracket(text: &str, open: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = open + 1;
    let mut depth = 1;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => i = string_end(b, i)?,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The offset of the closing quote of the string starting at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if q == b'"' && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The offset of the last character between `open` and `close` that is neither blank nor
/// in a comment (`open` itself for an empty array).
fn last_significant(text: &str, open: usize, close: usize) -> usize {
    let b = text.as_bytes();
    let mut last = open;
    let mut i = open + 1;
    while i < close {
        match b[i] {
            b'"' | b'\'' => {
                let end = string_end(b, i).unwrap_or(close - 1);
                last = end;
                i = end + 1;
            }
            b'#' => {
                while i < close && b[i] != b'\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                last = i;
                i += 1;
            }
        }
    }
    last
}

/// The Rust type of the plugin: `my-thing` → `MyThingPlugin`.
fn type_name(name: &str) -> String {
    let mut s: String = name
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect();
    if !s.ends_with("Plugin") {
        s.push_str("Plugin");
    }
    if s == "HivePlugin" {
        // The SDK's trait, imported by the generated code.
        s = "HivePluginImpl".into();
    }
    s
}

/// The generated files, relative to the crate directory.
fn render(name: &str, api_rel: &str, in_workspace: bool) -> Vec<(&'static str, String)> {
    let snake = name.replace('-', "_");
    let ty = type_name(name);
    let fill = |t: &str| {
        t.replace("@NAME@", name)
            .replace("@SNAKE@", &snake)
            .replace("@TYPE@", &ty)
            .replace("@API@", api_rel)
    };
    let mut manifest = fill(CARGO_TOML);
    if in_workspace {
        manifest.push_str("\n[lints]\nworkspace = true\n");
    } else {
        manifest.insert_str(
            0,
            "# Its own workspace (delete this table to make it a member of an enclosing one).\n\
             [workspace]\n\n",
        );
    }
    let readme = fill(README_MD).replace(
        "@WHERE@",
        if in_workspace {
            "Run these from the workspace root (the crate is one of its members; its library\n\
             lands in the workspace's `target/`):"
        } else {
            "Run these from this directory (the crate is its own workspace, with a copy of\n\
             Hive's Cargo.lock so that it builds with the kernel's dependency versions):"
        },
    );
    vec![
        ("Cargo.toml", manifest),
        ("src/lib.rs", fill(LIB_RS)),
        ("README.md", readme),
    ]
}

const CARGO_TOML: &str = r#"[package]
name = "@NAME@"
description = "A Hive plugin: counts finished tasks per status"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the shared library the kernel loads; rlib: for `cargo test` and reuse.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The only Hive crate a plugin depends on: the stable ABI and its SDK.
hive-plugin-api = { path = "@API@" }
serde_json = "1"
tracing = "0.1"
"#;

const LIB_RS: &str = r##"//! The `@NAME@` Hive plugin: counts finished tasks per status and reports the counts in its
//! status, logs the tasks slower than `slow_ms`, and lets every delegation go ahead.
//!
//! Config (`[plugins.config]` in hive.toml), every key optional; any other key is refused:
//! - `slow_ms` (number): log each task whose last attempt ran longer than this.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hive_plugin_api::{
    export_plugin, Delegate, DelegateRequest, HivePlugin, Hooks, PluginContext, PluginError,
    TaskCompletion,
};
use serde_json::{json, Value};

/// The config keys this plugin knows.
const CONFIG_KEYS: &[&str] = &["slow_ms"];

/// The plugin's config, read from the JSON of its `[plugins.config]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Log the tasks whose last attempt ran longer than this many milliseconds.
    pub slow_ms: Option<f64>,
}

impl Settings {
    /// Reads the config, refusing an unknown key or a bad value.
    pub fn from_json(config_json: &str) -> Result<Self, PluginError> {
        let config: Value = serde_json::from_str(config_json)
            .map_err(|e| PluginError::config(format!("config is not JSON: {e}")))?;
        let Some(table) = config.as_object() else {
            return Err(PluginError::config("config must be a table"));
        };
        if let Some(key) = table.keys().find(|k| !CONFIG_KEYS.contains(&k.as_str())) {
            return Err(PluginError::config(format!(
                "unknown config key `{key}`, expected one of: {}",
                CONFIG_KEYS.join(", ")
            )));
        }
        let slow_ms = match table.get("slow_ms") {
            None => None,
            Some(v) => Some(v.as_f64().filter(|ms| *ms >= 0.0).ok_or_else(|| {
                PluginError::config(format!("`slow_ms` must be a number >= 0, not {v}"))
            })?),
        };
        Ok(Settings { slow_ms })
    }
}

/// The plugin. The kernel makes one instance per `[[plugins]]` entry; every hook takes
/// `&self`, so its state sits behind atomics and a mutex.
#[derive(Debug)]
pub struct @TYPE@ {
    ctx: PluginContext,
    settings: Settings,
    completed: Mutex<BTreeMap<String, u64>>,
    delegations: AtomicU64,
}

impl HivePlugin for @TYPE@ {
    const NAME: &'static str = "@NAME@";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "counts finished tasks per status";
    const HOOKS: Hooks = Hooks::TASK_COMPLETED.union(Hooks::BEFORE_DELEGATE);

    fn new(config_json: &str, ctx: PluginContext) -> Result<Self, PluginError> {
        let settings = Settings::from_json(config_json)?;
        tracing::info!("started (slow_ms: {:?})", settings.slow_ms);
        Ok(Self {
            ctx,
            settings,
            completed: Mutex::new(BTreeMap::new()),
            delegations: AtomicU64::new(0),
        })
    }

    /// Observer hook: on this plugin's own thread, one event at a time.
    fn on_task_completed(&self, e: &TaskCompletion) -> Result<(), PluginError> {
        if let Ok(mut counts) = self.completed.lock() {
            *counts.entry(e.status.to_string()).or_insert(0) += 1;
        }
        if self
            .settings
            .slow_ms
            .is_some_and(|slow| e.duration_ms > slow)
        {
            tracing::info!(
                task = e.task,
                status = %e.status,
                "slow task: {:.0} ms",
                e.duration_ms
            );
            self.ctx.metric("slow_task_ms", e.duration_ms);
        }
        Ok(())
    }

    /// Decision hook: inline on the kernel's worker threads, so it must stay quick.
    fn before_delegate(&self, _r: &DelegateRequest<'_>) -> Result<Delegate, PluginError> {
        self.delegations.fetch_add(1, Ordering::Relaxed);
        Ok(Delegate::Continue)
    }

    fn status(&self) -> String {
        let completed = self.completed.lock().map(|c| c.clone()).unwrap_or_default();
        json!({
            "completed": completed,
            "delegations": self.delegations.load(Ordering::Relaxed),
        })
        .to_string()
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        tracing::info!("shutting down: {}", self.status());
        Ok(())
    }
}

export_plugin!(@TYPE@);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_config() -> Result<(), PluginError> {
        assert_eq!(Settings::from_json("{}")?, Settings::default());
        assert_eq!(
            Settings::from_json(r#"{"slow_ms": 250}"#)?.slow_ms,
            Some(250.0)
        );
        Ok(())
    }

    #[test]
    fn refuses_an_unknown_key_or_a_bad_value() {
        for bad in [r#"{"slow": 1}"#, r#"{"slow_ms": "fast"}"#, "[]", "nope"] {
            let e = Settings::from_json(bad).err();
            assert_eq!(
                e.map(|e| e.kind),
                Some(hive_plugin_api::ErrorKind::CONFIG),
                "{bad}"
            );
        }
    }
}
"##;

const README_MD: &str = r#"# @NAME@

A Hive plugin: it counts finished tasks per status (reported in its status, so in
`hive plugins list` and the health report), logs the tasks slower than `slow_ms`, and lets
every delegation go ahead. Start from `src/lib.rs`; docs/plugins.md in the Hive repository
says what each hook receives and may answer.

## Build

@WHERE@

```sh
cargo build -p @NAME@ --release
hive plugins inspect target/release/lib@SNAKE@.so
```

(In the Hive workspace, `cargo build -p hive-kernel --bin hive --release` makes
`target/release/hive`.)

`inspect` prints the manifest (name, version, plugin-api version, hooks), or why the file is
not loadable (exit 2). `cargo test -p @NAME@` runs the plugin's own tests.

## Load

In hive.toml, by path (relative to hive.toml; adjust it to where the library is):

```toml
[[plugins]]
path = "target/release/lib@SNAKE@.so"
optional = false                     # true: a load failure is only a warning
# hooks = ["task_completed"]         # call only these of its hooks
[plugins.config]
slow_ms = 250                        # optional; any other key is refused
```

or by name: copy `lib@SNAKE@.so` into a directory of `HIVE_PLUGIN_PATH` (colon-separated),
`./plugins` or `<dir of hive>/../lib/hive/plugins`, and write `name = "@NAME@"` instead of
`path`.

Then `hive plugins list --config hive.toml` loads it and shows its state and status.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Result<Self> {
            let dir = std::env::temp_dir().join(format!(
                "xtask-new-plugin-{}-{}-{name}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos()
            ));
            fs::create_dir_all(&dir)?;
            Ok(Scratch(dir.canonicalize()?))
        }

        fn file(&self, rel: &str, text: &str) -> Result<&Self> {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, text)?;
            Ok(self)
        }

        /// A tidy workspace with a plugin-api crate and the given `members` line.
        fn workspace(name: &str, members: &str) -> Result<Self> {
            let s = Scratch::new(name)?;
            let lints = "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n";
            s.file(
                "Cargo.toml",
                &format!("[workspace]\nresolver = \"2\"\n{members}\n\n[workspace.lints.rust]\nunused_must_use = \"deny\"\n"),
            )?
            .file("plugin-api/Cargo.toml", lints)?
            .file("plugin-api/src/lib.rs", "//! The API.\n")?
            .file(
                "Cargo.lock",
                "version = 4\n\n[[package]]\nname = \"hive-plugin-api\"\nversion = \"1.1.0\"\n\n[[package]]\nname = \"taken-name\"\nversion = \"0.1.0\"\n",
            )?
            .file("README.md", "")?
            .file("ARCHITECTURE.md", "")?
            .file("BENCHMARKS.md", "")?
            .file("docs/agent-protocol.md", "")?;
            Ok(s)
        }

        fn read(&self, rel: &str) -> Result<String> {
            Ok(fs::read_to_string(self.0.join(rel))?)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn toml_of(text: &str) -> Result<toml::Table> {
        Ok(text.parse()?)
    }

    #[test]
    fn generates_a_member_crate_under_the_workspace() -> Result<()> {
        let ws = Scratch::workspace("member", "members = [\"plugin-api\"]")?;
        let g = generate(&ws.0, "my-demo", &ws.0.join("plugins/my-demo"))?;
        assert!(g.in_workspace);
        assert_eq!(g.dir, ws.0.join("plugins/my-demo"));
        assert_eq!(
            g.files,
            ["Cargo.toml", "src/lib.rs", "README.md"].map(PathBuf::from)
        );
        assert_eq!(g.member_added.as_deref(), Some("plugins/my-demo"));
        assert_eq!(
            ws.read("Cargo.toml")?,
            "[workspace]\nresolver = \"2\"\nmembers = [\"plugin-api\", \"plugins/my-demo\"]\n\n\
             [workspace.lints.rust]\nunused_must_use = \"deny\"\n"
        );

        let manifest = toml_of(&ws.read("plugins/my-demo/Cargo.toml")?)?;
        assert_eq!(manifest["package"]["name"].as_str(), Some("my-demo"));
        assert_eq!(
            manifest["lib"]["crate-type"],
            toml::Value::Array(vec!["cdylib".into(), "rlib".into()])
        );
        assert_eq!(
            manifest["dependencies"]["hive-plugin-api"]["path"].as_str(),
            Some("../../plugin-api")
        );
        assert!(manifest["dependencies"].get("serde_json").is_some());
        assert_eq!(manifest["lints"]["workspace"].as_bool(), Some(true));
        assert!(manifest.get("workspace").is_none());

        let lib = ws.read("plugins/my-demo/src/lib.rs")?;
        assert!(lib.starts_with("//! The `my-demo` Hive plugin"), "{lib}");
        for needle in [
            "pub struct MyDemoPlugin {",
            "const NAME: &'static str = \"my-demo\";",
            "Hooks::TASK_COMPLETED.union(Hooks::BEFORE_DELEGATE)",
            "Ok(Delegate::Continue)",
            "unknown config key",
            "tracing::info!(",
            "export_plugin!(MyDemoPlugin);",
        ] {
            assert!(lib.contains(needle), "no `{needle}` in\n{lib}");
        }
        let readme = ws.read("plugins/my-demo/README.md")?;
        for needle in [
            "# my-demo",
            "cargo build -p my-demo --release",
            "path = \"target/release/libmy_demo.so\"",
            "HIVE_PLUGIN_PATH",
            "name = \"my-demo\"",
        ] {
            assert!(readme.contains(needle), "no `{needle}` in\n{readme}");
        }
        let manifest_text = ws.read("plugins/my-demo/Cargo.toml")?;
        for (f, text) in [
            ("Cargo.toml", &manifest_text),
            ("lib.rs", &lib),
            ("README.md", &readme),
        ] {
            assert!(!text.contains('@'), "a placeholder is left in {f}:\n{text}");
        }
        assert!(!ws.0.join("plugins/my-demo/Cargo.lock").exists());

        // The workspace's own hygiene rules hold for the generated crate.
        let problems = crate::tidy::check(&ws.0)?;
        assert!(problems.is_empty(), "{problems:#?}");
        Ok(())
    }

    #[test]
    fn generates_a_standalone_crate_outside_the_workspace() -> Result<()> {
        let ws = Scratch::workspace("root", "members = [\"plugin-api\"]")?;
        let elsewhere = Scratch::new("elsewhere")?;
        let before = ws.read("Cargo.toml")?;
        let g = generate(&ws.0, "solo_1", &elsewhere.0.join("solo"))?;
        assert!(!g.in_workspace);
        assert_eq!(g.member_added, None);
        assert_eq!(
            g.files,
            ["Cargo.toml", "src/lib.rs", "README.md", "Cargo.lock"].map(PathBuf::from)
        );
        assert_eq!(ws.read("Cargo.toml")?, before);
        let manifest = toml_of(&elsewhere.read("solo/Cargo.toml")?)?;
        assert_eq!(manifest["package"]["name"].as_str(), Some("solo_1"));
        assert!(manifest.get("lints").is_none());
        assert!(manifest["workspace"].as_table().is_some());
        let api = manifest["dependencies"]["hive-plugin-api"]["path"]
            .as_str()
            .unwrap_or("");
        assert_eq!(
            elsewhere.0.join("solo").join(api).canonicalize()?,
            ws.0.join("plugin-api")
        );
        let lib = elsewhere.read("solo/src/lib.rs")?;
        assert!(lib.contains("export_plugin!(Solo1Plugin);"), "{lib}");
        assert!(elsewhere
            .read("solo/README.md")?
            .contains("target/release/libsolo_1.so"));
        Ok(())
    }

    #[test]
    fn a_glob_member_is_left_alone() -> Result<()> {
        let ws = Scratch::workspace("glob", "members = [\"plugin-api\", \"plugins/*\"]")?;
        let before = ws.read("Cargo.toml")?;
        let g = generate(&ws.0, "globbed", &ws.0.join("plugins/globbed"))?;
        assert!(g.in_workspace);
        assert_eq!(g.member_added, None);
        assert_eq!(ws.read("Cargo.toml")?, before);
        Ok(())
    }

    #[test]
    fn refuses_an_existing_directory_or_a_taken_name() -> Result<()> {
        let ws = Scratch::workspace("exists", "members = [\"plugin-api\"]")?;
        ws.file("plugins/here/notes.txt", "mine\n")?;
        let before = ws.read("Cargo.toml")?;
        let e = generate(&ws.0, "here", &ws.0.join("plugins/here"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(ws.read("plugins/here/notes.txt")?, "mine\n");
        let e = generate(&ws.0, "taken_name", &ws.0.join("plugins/t"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("already has a package `taken-name`"), "{e}");
        assert!(!ws.0.join("plugins/t").exists());
        assert_eq!(ws.read("Cargo.toml")?, before);
        Ok(())
    }

    #[test]
    fn bad_names_are_refused() -> Result<()> {
        for bad in [
            "",
            "1abc",
            "Abc",
            "aBc",
            "-abc",
            "_abc",
            "my plugin",
            "a/b",
            "a.b",
            "é",
            "fn",
            "self",
            "std",
            "test",
            "tracing",
            "serde-json",
            "hive_plugin_api",
        ] {
            assert!(validate_name(bad).is_err(), "`{bad}` was accepted");
        }
        let long = "a".repeat(65);
        assert!(validate_name(&long).is_err());
        for good in ["a", "my-plugin", "my_plugin", "p2p", "x-1_y"] {
            validate_name(good)?;
        }
        let ws = Scratch::workspace("badname", "members = [\"plugin-api\"]")?;
        let e = generate(&ws.0, "Bad", &ws.0.join("plugins/Bad"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("must start with a lowercase letter"), "{e}");
        assert!(!ws.0.join("plugins").exists());
        Ok(())
    }

    #[test]
    fn members_edits_are_minimal() -> Result<()> {
        let cases = [
            (
                "[workspace]\nmembers = []\n",
                "[workspace]\nmembers = [\"p/x\"]\n",
            ),
            (
                "[workspace]\nmembers = [\"a\", \"b\",] # two\n",
                "[workspace]\nmembers = [\"a\", \"b\", \"p/x\"] # two\n",
            ),
            (
                "[package]\nname = \"r\"\nmembers = 1\n\n[workspace]\nmembers = [\n    \"a\",\n    \"b\", # the b\n]\n",
                "[package]\nname = \"r\"\nmembers = 1\n\n[workspace]\nmembers = [\n    \"a\",\n    \"b\", # the b\n    \"p/x\",\n]\n",
            ),
            (
                "[workspace]\nmembers = [\n  \"a\",\n  \"b\" # [no comma]\n]\nexclude = [\"z\"]\n",
                "[workspace]\nmembers = [\n  \"a\",\n  \"b\", # [no comma]\n  \"p/x\"\n]\nexclude = [\"z\"]\n",
            ),
            (
                "[workspace]\nmembers = [\n]\n",
                "[workspace]\nmembers = [\n    \"p/x\",\n]\n",
            ),
        ];
        for (before, after) in cases {
            assert_eq!(
                add_member(before, "p/x")?.as_deref(),
                Some(after),
                "{before}"
            );
        }
        for covered in [
            "[workspace]\nmembers = [\"p/*\"]\n",
            "[workspace]\nmembers = [\"p/x\"]\n",
            "[workspace]\nmembers = [\"./p/?\"]\n",
        ] {
            assert_eq!(add_member(covered, "p/x")?, None, "{covered}");
        }
        assert!(add_member("[package]\nname = \"a\"\n", "p/x").is_err());
        Ok(())
    }

    /// docs/plugins.md shows what `new-plugin my-plugin` generates in the workspace.
    #[test]
    fn the_docs_show_the_generated_crate() -> Result<()> {
        let root = crate::workspace_root()?;
        let docs = fs::read_to_string(root.join("docs/plugins.md"))?;
        let files = render("my-plugin", "../../plugin-api", true);
        for (rel, text) in &files[..2] {
            let shown = text.split("\n#[cfg(test)]").next().unwrap_or(text);
            assert!(
                docs.contains(shown),
                "docs/plugins.md does not show the generated {rel}:\n{shown}"
            );
        }
        Ok(())
    }

    #[test]
    fn names_and_paths() {
        assert_eq!(type_name("my-demo"), "MyDemoPlugin");
        assert_eq!(type_name("my_plugin"), "MyPlugin");
        assert_eq!(type_name("hive"), "HivePluginImpl");
        assert_eq!(type_name("a--b"), "ABPlugin");
        assert_eq!(
            relative_path(Path::new("/w/plugins/x"), Path::new("/w/plugin-api")),
            "../../plugin-api"
        );
        assert_eq!(
            relative_path(Path::new("/tmp/x"), Path::new("/w/plugin-api")),
            "../../w/plugin-api"
        );
    }
}
