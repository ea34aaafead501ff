//! Step outputs (a marked stdout line or a file) and cache keys (SHA-256 over the command,
//! its args, env, working directory and the contents of declared input files).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A stdout line starting with this marker carries a JSON object of outputs.
pub(crate) const OUTPUT_MARKER: &str = "::hive-outputs::";

/// Outputs found in a command's stdout tail: every `::hive-outputs::{...}` line, merged in
/// order. A marker line that is not a JSON object is an error.
pub(crate) fn from_stdout(stdout: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    if !stdout.contains(OUTPUT_MARKER) {
        return Ok(out);
    }
    for line in stdout.lines() {
        let Some(rest) = line.trim_start().strip_prefix(OUTPUT_MARKER) else {
            continue;
        };
        match serde_json::from_str::<Value>(rest.trim()) {
            Ok(Value::Object(m)) => out.extend(m),
            _ => {
                return Err(format!(
                    "stdout line `{OUTPUT_MARKER}{}` is not a JSON object",
                    rest.trim()
                ))
            }
        }
    }
    Ok(out)
}

/// Outputs written to the `$HIVE_OUTPUTS` file: a JSON object, or `key=value` lines (values
/// are strings). `None` when the command wrote no file.
///
/// `dir` is an open descriptor of the file's directory, when there is one: the file is then
/// looked up in it by name (most commands write no file, and a failed open of the whole
/// path cost a few microseconds of every step).
pub(crate) fn from_file(
    path: &Path,
    dir: Option<&std::os::fd::OwnedFd>,
) -> Result<Option<Map<String, Value>>, String> {
    let read = match (dir, path.file_name()) {
        (Some(d), Some(name)) => read_at(d, name),
        _ => std::fs::read_to_string(path),
    };
    let text = match read {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Some(Map::new()));
    }
    if trimmed.starts_with('{') {
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(_) | Err(_) => Err(format!(
                "$HIVE_OUTPUTS ({}) is neither a JSON object nor key=value lines",
                path.display()
            )),
        };
    }
    let mut m = Map::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                m.insert(k.trim().to_string(), Value::String(v.to_string()));
            }
            _ => {
                return Err(format!(
                    "$HIVE_OUTPUTS ({}) line {}: expected key=value",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    Ok(Some(m))
}

/// Reads file `name` of directory `dir`.
fn read_at(dir: &std::os::fd::OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: openat on an open directory descriptor with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// An open descriptor of directory `dir` (for [`from_file`]); `None` if it cannot be opened.
pub(crate) fn open_dir(dir: &Path) -> Option<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .ok()
        .map(std::os::fd::OwnedFd::from)
}

/// What goes into a cache key.
#[derive(Debug)]
pub(crate) struct KeyInput {
    /// Command steps: command, args; task steps: the role and the task JSON.
    pub(crate) what: Value,
    /// Environment added by the step (HIVE_* excluded).
    pub(crate) env: BTreeMap<String, String>,
    /// Working directory; input patterns are relative to it.
    pub(crate) cwd: PathBuf,
    /// Input files, directories or glob patterns.
    pub(crate) inputs: Vec<String>,
    /// The step's extra `cache.key`.
    pub(crate) extra: Option<String>,
}

/// The SHA-256 cache key (blocking: reads the input files).
pub(crate) fn cache_key(k: &KeyInput) -> Result<String, String> {
    let mut h = Sha256::new();
    let mut field = |name: &str, v: &[u8]| {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    };
    field("v", b"hive-cache-1");
    field("what", k.what.to_string().as_bytes());
    for (name, value) in &k.env {
        field("env", name.as_bytes());
        field("=", value.as_bytes());
    }
    field("cwd", k.cwd.display().to_string().as_bytes());
    if let Some(x) = &k.extra {
        field("key", x.as_bytes());
    }
    for pattern in &k.inputs {
        field("input", pattern.as_bytes());
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            k.cwd.join(pattern)
        };
        let full_s = full.display().to_string();
        let mut files: Vec<PathBuf> = Vec::new();
        let matches = glob::glob(&full_s).map_err(|e| format!("cache input {pattern:?}: {e}"))?;
        let mut any = false;
        for entry in matches {
            let p = entry.map_err(|e| format!("cache input {pattern:?}: {e}"))?;
            any = true;
            collect_files(&p, &mut files)
                .map_err(|e| format!("cache input {}: {e}", p.display()))?;
        }
        if !any {
            field("missing", pattern.as_bytes());
        }
        files.sort();
        for f in files {
            let rel = f.strip_prefix(&k.cwd).unwrap_or(&f).display().to_string();
            let digest =
                file_digest(&f).map_err(|e| format!("cache input {}: {e}", f.display()))?;
            field("file", rel.as_bytes());
            field("sha256", &digest);
        }
    }
    Ok(crate::plan::hex(&h.finalize()))
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(p)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect_files(&e, out)?;
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

fn file_digest(p: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stdout_markers_merge_and_bad_ones_fail() {
        let out = from_stdout(
            "building\n::hive-outputs::{\"version\": \"1.2\"}\n  ::hive-outputs:: {\"n\": 3, \"version\": \"1.3\"}\n",
        )
        .expect("valid");
        assert_eq!(Value::Object(out), json!({"version": "1.3", "n": 3}));
        assert!(from_stdout("::hive-outputs::[1]").is_err());
        assert!(from_stdout("nothing here").expect("ok").is_empty());
    }

    #[test]
    fn output_files_are_json_or_key_value_lines() {
        let dir = std::env::temp_dir().join(format!("hive-outputs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("o");
        let fd = open_dir(&dir).expect("the directory opens");
        // By path, and by name in the open directory: the same answers.
        for d in [None, Some(&fd)] {
            std::fs::remove_file(&f).ok();
            assert_eq!(from_file(&f, d).expect("missing is fine"), None);
            std::fs::write(&f, "{\"a\": [1, 2]}").expect("write");
            assert_eq!(
                from_file(&f, d).expect("json").map(Value::Object),
                Some(json!({"a": [1, 2]}))
            );
            std::fs::write(&f, "a=1\nb = x=y\n\n").expect("write");
            assert_eq!(
                from_file(&f, d).expect("kv").map(Value::Object),
                Some(json!({"a": "1", "b": " x=y"}))
            );
            std::fs::write(&f, "no equals sign\n").expect("write");
            let e = from_file(&f, d).expect_err("neither form");
            assert!(e.contains("line 1: expected key=value"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cache_keys_follow_inputs() {
        let dir = std::env::temp_dir().join(format!("hive-cachekey-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).expect("mkdir");
        std::fs::write(dir.join("src/a.txt"), "one").expect("write");
        let k = |inputs: Vec<&str>| KeyInput {
            what: json!({"command": "make", "args": []}),
            env: BTreeMap::new(),
            cwd: dir.clone(),
            inputs: inputs.into_iter().map(String::from).collect(),
            extra: None,
        };
        let a = cache_key(&k(vec!["src"])).expect("key");
        assert_eq!(a, cache_key(&k(vec!["src"])).expect("key"), "stable");
        assert_eq!(a, cache_key(&k(vec!["src"])).expect("key"));
        let g = cache_key(&k(vec!["src/*.txt"])).expect("glob");
        std::fs::write(dir.join("src/a.txt"), "two").expect("write");
        assert_ne!(
            a,
            cache_key(&k(vec!["src"])).expect("key"),
            "content changed"
        );
        assert_ne!(g, cache_key(&k(vec!["src/*.txt"])).expect("key"));
        let missing = cache_key(&k(vec!["nope.txt"])).expect("key");
        std::fs::write(dir.join("nope.txt"), "").expect("write");
        assert_ne!(missing, cache_key(&k(vec!["nope.txt"])).expect("key"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
