//! Run ids (sortable by creation time, unique) and run locks: an exclusive `flock` on
//! `runs/<RUN_ID>.lock` held by the process executing the run, released by the kernel when that
//! process dies, even by SIGKILL. A run whose lock is free is not being executed.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::StateError;
use crate::ids::Timestamp;

/// A new run id: `YYYYMMDD-HHMMSS-mmm-` then 6 random hex digits. Ids sort by creation time
/// (to the millisecond) and the random part keeps them unique across processes.
pub(crate) fn new_run_id() -> String {
    let now = Timestamp::now();
    // RFC 3339 with micros: 2026-11-21T19:06:50.123456Z
    let t = now.to_string();
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    // YYYYMMDDHHMMSSffffff
    let (date, rest) = digits.split_at(8.min(digits.len()));
    let (time, frac) = rest.split_at(6.min(rest.len()));
    let millis = frac.get(..3).unwrap_or("000");
    format!(
        "{date}-{time}-{millis}-{:06x}",
        fastrand::u32(..0x0100_0000)
    )
}

/// Whether `s` could be a run id (so that it is safe as a file name).
pub(crate) fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The exclusive lock of one run, held while this process executes it.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock(2) on a file descriptor this `File` owns.
    let r = unsafe { libc::flock(file.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl RunLock {
    /// Takes the lock of run `id` in `dir` (the state directory's `runs/`), or says which
    /// process holds it.
    pub(crate) fn acquire(dir: &Path, id: &str) -> Result<RunLock, StateError> {
        let path = dir.join(format!("{id}.lock"));
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if let Err(e) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(StateError::RunBusy {
                    run: id.to_string(),
                    pid: pid.trim().parse().ok(),
                });
            }
            return Err(io(e));
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(RunLock { file, path })
    }

    /// Whether some process holds the lock of run `id` (it is being executed now).
    pub(crate) fn held(dir: &Path, id: &str) -> bool {
        let path = dir.join(format!("{id}.lock"));
        let Ok(file) = File::open(&path) else {
            return false;
        };
        match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(()) => {
                let _ = flock(&file, libc::LOCK_UN);
                false
            }
            Err(_) => true,
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = flock(&self.file, libc::LOCK_UN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_differ() {
        let a = new_run_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_run_id();
        assert!(a < b, "{a} < {b}");
        assert_eq!(a.len(), "20261121-190650-123-a3f9c1".len(), "{a}");
        assert!(valid_run_id(&a));
        assert!(!valid_run_id("../x"));
    }

    #[test]
    fn a_run_lock_is_exclusive_until_dropped() {
        let dir = std::env::temp_dir().join(format!("hive-lock-test-{}", std::process::id()));
        let l = RunLock::acquire(&dir, "r1").expect("first");
        assert!(RunLock::held(&dir, "r1"));
        // flock locks belong to open file descriptions: a second open conflicts even in the
        // same process.
        match RunLock::acquire(&dir, "r1") {
            Err(StateError::RunBusy { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected RunBusy, got {other:?}"),
        }
        drop(l);
        assert!(!RunLock::held(&dir, "r1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
