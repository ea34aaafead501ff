//! Finding and loading plugin libraries: the search path, abi_stable's
//! `lib_header_from_path(..)` + `init_root_module()` (one library per path, never unloaded),
//! and an error naming the path and the reason for every way a file can fail to be a plugin.

use std::path::{Path, PathBuf};

use abi_stable::abi_stability::abi_checking::{
    check_layout_compatibility_with_globals, CheckingGlobals,
};
use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::StableAbi;
use hive_plugin_api::{Manifest, PluginMod_Ref, API_VERSION};
use serde::Serialize;

/// Why a plugin could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// No such file (or no file of that name on the search path).
    NotFound,
    /// The file is not a shared library the system can load.
    NotSharedLibrary,
    /// A shared library, but not a Hive plugin.
    NotAPlugin,
    /// Built against an incompatible plugin-api.
    Incompatible,
    /// The plugin failed to initialise.
    InitFailed,
    /// The plugin refused its config.
    ConfigRefused,
    /// Two plugins with the same name.
    Duplicate,
}

/// A plugin that could not be loaded: the path, the kind of failure, and the reason.
#[derive(Clone, Debug, thiserror::Error)]
#[error("plugin {}: {message}", path.display())]
pub struct PluginLoadError {
    /// The file (or the name searched for).
    pub path: PathBuf,
    /// What kind of failure.
    pub kind: LoadErrorKind,
    /// The reason, for people.
    pub message: String,
}

impl PluginLoadError {
    pub(crate) fn new(path: &Path, kind: LoadErrorKind, message: impl Into<String>) -> Self {
        PluginLoadError {
            path: path.to_path_buf(),
            kind,
            message: message.into(),
        }
    }
}

/// A plugin's manifest, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PluginManifest {
    /// The plugin's name.
    pub name: String,
    /// Its own version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// The hooks it subscribes to.
    pub hooks: Vec<String>,
    /// What it does.
    pub description: String,
    /// The library file.
    pub path: PathBuf,
}

impl PluginManifest {
    pub(crate) fn from_abi(m: &Manifest, path: &Path) -> Self {
        PluginManifest {
            name: m.name.to_string(),
            version: m.version.to_string(),
            api_version: m.api_version.to_string(),
            hooks: m.hooks.names().into_iter().map(String::from).collect(),
            description: m.description.to_string(),
            path: path.to_path_buf(),
        }
    }
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.len() > 300 {
        format!(
            "{}...",
            &line[..line.char_indices().nth(300).map_or(line.len(), |(i, _)| i)]
        )
    } else {
        line.to_string()
    }
}

/// abi_stable's layout report, squeezed onto one line (its non-empty lines, trimmed).
fn summary(s: &str) -> String {
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if joined.len() > 2000 {
        let cut = joined
            .char_indices()
            .nth(2000)
            .map_or(joined.len(), |(i, _)| i);
        format!("{}...", &joined[..cut])
    } else {
        joined
    }
}

/// Opens a library and initialises its root module. The library stays loaded for the life
/// of the process (unloading is unsound with thread-local destructors).
/// A plugin linked into this program: built with this very plugin-api, so no version or
/// layout check applies.
pub(crate) fn open_linked(module: PluginMod_Ref) -> (PluginMod_Ref, Manifest) {
    (module, (module.manifest())())
}

pub(crate) fn open(path: &Path) -> Result<(PluginMod_Ref, Manifest), PluginLoadError> {
    let err = |kind, msg: String| PluginLoadError::new(path, kind, msg);
    match std::fs::metadata(path) {
        Err(e) => return Err(err(LoadErrorKind::NotFound, format!("not found: {e}"))),
        Ok(m) if m.is_dir() => {
            return Err(err(
                LoadErrorKind::NotFound,
                "is a directory, not a shared library".into(),
            ))
        }
        Ok(_) => {}
    }
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::OpenError { err: cause, .. } => err(
            LoadErrorKind::NotSharedLibrary,
            format!("not a shared library: {}", first_line(&cause.to_string())),
        ),
        LibraryError::GetSymbolError { .. } => err(
            LoadErrorKind::NotAPlugin,
            "not a Hive plugin: it exports no plugin root module (build it with hive_plugin_api::export_plugin!)".into(),
        ),
        LibraryError::InvalidAbiHeader(h) => err(
            LoadErrorKind::Incompatible,
            format!("built with an incompatible abi_stable (ABI header {h:?})"),
        ),
        other => err(LoadErrorKind::NotAPlugin, format!("not a Hive plugin: {}", first_line(&other.to_string()))),
    })?;
    let theirs = header.version_strings().version.to_string();
    // Version policy (docs/plugins.md): the same major, and a minor no newer than ours. A
    // plugin built against an older minor loads; its missing hooks take their defaults.
    let ours_v = PluginMod_Ref::VERSION_STRINGS
        .parsed()
        .map_err(|e| err(LoadErrorKind::Incompatible, e.to_string()))?;
    let theirs_v = header.version_strings().parsed().map_err(|e| {
        err(
            LoadErrorKind::Incompatible,
            format!("unreadable plugin-api version `{theirs}`: {e}"),
        )
    })?;
    if theirs_v.major != ours_v.major {
        return Err(err(
            LoadErrorKind::Incompatible,
            format!("built against plugin-api {theirs}, but this kernel speaks plugin-api {API_VERSION} (the major versions must match; rebuild the plugin)"),
        ));
    }
    if theirs_v.minor > ours_v.minor {
        return Err(err(
            LoadErrorKind::Incompatible,
            format!("built against plugin-api {theirs}, newer than this kernel's plugin-api {API_VERSION} (upgrade hive, or build the plugin against {API_VERSION})"),
        ));
    }
    // Layout: the plugin's view of every type must be a prefix of ours (fields and hooks
    // are only ever added at the end). abi_stable's own check runs the other way round (a
    // library newer than its loader), so it is run here with the roles swapped: the plugin's
    // layout as the interface, the kernel's as the implementation.
    let Some(layout) = header.layout() else {
        return Err(err(
            LoadErrorKind::Incompatible,
            "exports no type layout, so its compatibility cannot be checked".into(),
        ));
    };
    // Each plugin is checked on its own: plugins exchange types with the kernel only, never
    // with each other, so abi_stable's process-wide merge of prefix types (which would make
    // a 1.0 plugin and a 1.1 plugin refuse each other) does not apply.
    let globals = CheckingGlobals::new();
    check_layout_compatibility_with_globals(layout, <PluginMod_Ref as StableAbi>::LAYOUT, &globals).map_err(|e| {
        err(
            LoadErrorKind::Incompatible,
            format!(
                "built against plugin-api {theirs}, whose layout is incompatible with this kernel's plugin-api {API_VERSION}: {}",
                summary(&e.to_string())
            ),
        )
    })?;
    // SAFETY: the layout was checked just above, in the direction plugin-api promises.
    let module = unsafe { header.init_root_module_with_unchecked_layout::<PluginMod_Ref>() }.map_err(|e| match e {
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => err(
            LoadErrorKind::Incompatible,
            format!(
                "built against plugin-api {actual_version}, but this kernel speaks plugin-api {expected_version} (rebuild the plugin)"
            ),
        ),
        LibraryError::RootModule { err: e, .. } => err(
            LoadErrorKind::InitFailed,
            format!("initialisation failed: {}", first_line(&e.to_string())),
        ),
        other => err(
            LoadErrorKind::Incompatible,
            format!(
                "built against plugin-api {theirs}, not loadable by this kernel's plugin-api {API_VERSION}: {}",
                first_line(&other.to_string())
            ),
        ),
    })?;
    let manifest = (module.manifest())();
    Ok((module, manifest))
}

/// Reads a library's manifest (for `hive plugins inspect`).
pub fn inspect(path: &Path) -> Result<PluginManifest, PluginLoadError> {
    let (_, m) = open(path)?;
    Ok(PluginManifest::from_abi(&m, path))
}

/// The plugin search path: `$HIVE_PLUGIN_PATH` (colon-separated), `./plugins`, and
/// `<dir of the hive binary>/../lib/hive/plugins`.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("HIVE_PLUGIN_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.push(PathBuf::from("plugins"));
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir.join("../lib/hive/plugins"));
        // Beside the binary: where cargo puts the workspace's plugins (target/<profile>/).
        dirs.push(dir);
    }
    dirs
}

/// Finds the library of a plugin named `name` on the search path.
pub(crate) fn find(name: &str) -> Result<PathBuf, PluginLoadError> {
    let snake = name.replace('-', "_");
    let files = [
        format!("lib{name}.so"),
        format!("lib{snake}.so"),
        format!("libhive_plugin_{snake}.so"),
        format!("{name}.so"),
    ];
    let dirs = search_path();
    for d in &dirs {
        for f in &files {
            let p = d.join(f);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(PluginLoadError::new(
        Path::new(name),
        LoadErrorKind::NotFound,
        format!(
            "not found on the plugin search path (looked for lib{snake}.so in {}); set HIVE_PLUGIN_PATH or give `path`",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    ))
}
