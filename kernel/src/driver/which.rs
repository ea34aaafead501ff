//! Where a bare command name (`sleep`, `cargo`) is on `PATH`, remembered for a few seconds.
//!
//! Left to itself, spawning `sleep` tries `execve` in every `PATH` directory before the one
//! that has it; with a typical `PATH` that is half a dozen failed `execve` calls per step,
//! made while the spawning worker thread is suspended (vfork). Shells remember the answer
//! (`hash`); so does the process driver, briefly: an entry lives [`TTL`], and a spawn that
//! fails with the remembered path forgets it and lets the system search again.
//!
//! Only absolute answers are remembered: a relative `PATH` entry met before the command is
//! found (`.`, `bin`) depends on the working directory, and the search is then left to the
//! system, as are names with a `/`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long an answer is trusted.
pub(crate) const TTL: Duration = Duration::from_secs(5);

/// Answers remembered at most (a plan names few programs; this bounds a pathological one).
const MAX_ENTRIES: usize = 1024;

type Key = (OsString, String);

fn cache() -> &'static Mutex<HashMap<Key, (PathBuf, Instant)>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, (PathBuf, Instant)>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The absolute path `program` resolves to on `path_var` (a `PATH` value), or `None` when
/// the system should search (a name with `/`, not found, a relative entry on the way).
pub(crate) fn resolve(program: &str, path_var: &OsStr) -> Option<PathBuf> {
    if program.is_empty() || program.contains('/') {
        return None;
    }
    let key: Key = (path_var.to_os_string(), program.to_string());
    let now = Instant::now();
    if let Some((p, at)) = cache().lock().get(&key) {
        if now.duration_since(*at) < TTL {
            return Some(p.clone());
        }
    }
    let found = search(program, path_var)?;
    let mut c = cache().lock();
    if c.len() >= MAX_ENTRIES {
        c.retain(|_, (_, at)| now.duration_since(*at) < TTL);
        if c.len() >= MAX_ENTRIES {
            c.clear();
        }
    }
    c.insert(key, (found.clone(), now));
    Some(found)
}

/// Forgets what `program` resolved to on `path_var` (its spawn failed).
pub(crate) fn forget(program: &str, path_var: &OsStr) {
    cache()
        .lock()
        .remove(&(path_var.to_os_string(), program.to_string()));
}

fn search(program: &str, path_var: &OsStr) -> Option<PathBuf> {
    for dir in path_var.as_bytes().split(|&b| b == b':') {
        let dir = Path::new(OsStr::from_bytes(dir));
        if !dir.is_absolute() {
            // Empty or relative: depends on the working directory.
            return None;
        }
        let candidate = dir.join(program);
        if let Ok(m) = std::fs::metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Some(candidate);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory holding `names` with their modes (removed when dropped).
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    fn dir_with(names: &[(&str, u32)]) -> Dir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "hive-which-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        for (n, mode) in names {
            let p = d.join(n);
            std::fs::write(&p, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        Dir(d)
    }

    #[test]
    fn finds_the_first_executable_on_path_and_remembers_it() {
        let a = dir_with(&[("tool", 0o644)]); // not executable: skipped
        let b = dir_with(&[("tool", 0o755)]);
        let path = std::env::join_paths([a.path(), b.path()]).expect("join");
        let found = resolve("tool", &path).expect("found");
        assert_eq!(found, b.path().join("tool"));
        // Remembered: still answered after the file is gone, until forgotten.
        std::fs::remove_file(b.path().join("tool")).expect("rm");
        assert_eq!(resolve("tool", &path), Some(found));
        forget("tool", &path);
        assert_eq!(resolve("tool", &path), None);
    }

    #[test]
    fn leaves_slashes_relative_entries_and_misses_to_the_system() {
        let b = dir_with(&[("tool2", 0o755)]);
        let abs = b.path().as_os_str().to_os_string();
        assert_eq!(resolve("./tool2", &abs), None);
        assert_eq!(resolve("missing-tool", &abs), None);
        let mut rel = OsString::from("relative/bin:");
        rel.push(&abs);
        assert_eq!(resolve("tool2", &rel), None);
        let mut empty_first = OsString::from(":");
        empty_first.push(&abs);
        assert_eq!(resolve("tool2", &empty_first), None);
        assert_eq!(resolve("tool2", &abs), Some(b.path().join("tool2")));
    }
}
