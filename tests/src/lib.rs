//! Helpers for Hive's cross-crate integration tests: locating the built `hive` binary and the
//! repository's fixtures, scratch directories, and waiting for conditions instead of sleeping.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `hive` binary of the current build profile (built by `cargo xtask test`).
pub fn hive_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/hive
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin = dir.join("hive");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test` (it builds the workspace first)",
        bin.display()
    );
    bin
}

/// A plugin library built from the workspace (by `cargo xtask test`), e.g. `hive_testkit`.
pub fn plugin_lib(lib_name: &str) -> PathBuf {
    let bin = hive_bin();
    let p = bin.with_file_name(format!("lib{lib_name}.so"));
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// A fresh scratch directory under the target directory, named after the test.
pub fn scratch(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let base = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("test-scratch"))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// Polls `cond` every 10 ms until it holds or `within` passes; false on timeout.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state is the field after the parenthesised command name.
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Pids of live processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// The test agent script (`tests/fixtures/test_agent.py`), absolute.
pub fn test_agent() -> PathBuf {
    repo_root()
        .join("tests")
        .join("fixtures")
        .join("test_agent.py")
}

/// One way of running the `hive` binary: arguments, environment and working directory.
#[derive(Debug)]
pub struct Hive {
    cmd: std::process::Command,
    args: Vec<String>,
}

/// A finished `hive` command.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    /// Stdout parsed as JSON; panics (showing both streams) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} (signal {:?}) after {:.3}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.signal,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// A `hive` command still running; SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Running {
    child: std::process::Child,
    started: Instant,
    stdout: std::sync::Arc<std::sync::Mutex<(String, bool)>>,
    stderr: std::sync::Arc<std::sync::Mutex<(String, bool)>>,
    what: String,
}

/// Copies `from` into the shared buffer until EOF, then marks it done.
fn drain(
    mut from: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<(String, bool)>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new((String::new(), false)));
    let out = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut b) = out.lock() {
                        b.0.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                }
            }
        }
        if let Ok(mut b) = out.lock() {
            b.1 = true;
        }
    });
    buf
}

fn snapshot(buf: &std::sync::Mutex<(String, bool)>) -> (String, bool) {
    buf.lock().map(|b| b.clone()).unwrap_or_default()
}

impl Hive {
    /// `hive` run in `cwd`, with `HIVE_STATE_DIR` and `HIVE_LOG` removed from its environment.
    pub fn new(cwd: &Path) -> Hive {
        let mut cmd = std::process::Command::new(hive_bin());
        cmd.current_dir(cwd)
            .env_remove("HIVE_STATE_DIR")
            .env_remove("HIVE_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Hive {
            cmd,
            args: Vec::new(),
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Hive
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        for a in args {
            self.args.push(a.as_ref().to_string_lossy().into_owned());
            self.cmd.arg(a);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Hive {
        self.cmd.env(key, value);
        self
    }

    /// Gives it a stdout pipe whose read end is already closed (as in `hive ... | true`).
    pub fn stdout_closed(mut self) -> Hive {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just created and are owned here alone; the read end is
        // closed at once, the write end goes to the child.
        let (read, write) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        drop(read);
        self.cmd.stdout(std::process::Stdio::from(write));
        self
    }

    /// Starts it in the background.
    pub fn spawn(mut self) -> Running {
        let what = format!("hive {}", self.args.join(" "));
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let closed = || std::sync::Arc::new(std::sync::Mutex::new((String::new(), true)));
        let stdout = child.stdout.take().map(drain).unwrap_or_else(closed);
        let stderr = child.stderr.take().map(drain).unwrap_or_else(closed);
        Running {
            child,
            started: Instant::now(),
            stdout,
            stderr,
            what,
        }
    }

    /// Runs it to the end (at most 30 s, else it is killed and the test fails).
    pub fn run(self) -> Finished {
        let mut r = self.spawn();
        match r.wait(Duration::from_secs(30)) {
            Some(f) => f,
            None => {
                let what = r.what.clone();
                let (out, _) = snapshot(&r.stdout);
                let (err, _) = snapshot(&r.stderr);
                drop(r);
                panic!(
                    "{what} still runs after 30 s\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
                );
            }
        }
    }
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        snapshot(&self.stderr).0
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        snapshot(&self.stdout).0
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            r,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits up to `within` for the exit, then for the output (at most 5 s more: a process
    /// that inherited the pipes may hold them). None if it still runs.
    pub fn wait(&mut self, within: Duration) -> Option<Finished> {
        let mut status = None;
        wait_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        let status = status?;
        let elapsed = self.started.elapsed();
        wait_until(Duration::from_secs(5), || {
            snapshot(&self.stdout).1 && snapshot(&self.stderr).1
        });
        use std::os::unix::process::ExitStatusExt;
        Some(Finished {
            code: status.code().unwrap_or(-1),
            signal: status.signal(),
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Field `n` (1-based, as in proc(5): 4 = ppid, 5 = pgrp) of `/proc/<pid>/stat`, and the state.
fn stat_field(pid: i32, n: usize) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start with field 3, the state.
    let mut rest = s.rsplit(')').next()?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let v = rest.nth(n.checked_sub(4)?)?.parse().ok()?;
    Some((state, v))
}

/// Pids of the live children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| stat_field(*p, 4).is_some_and(|(_, ppid)| ppid == pid))
        .filter(|p| alive(*p))
        .collect()
}

/// The command name (`/proc/<pid>/comm`) of a process.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .collect()
}

/// Makes this test process the child subreaper of its descendants (PR_SET_CHILD_SUBREAPER),
/// so orphans of the commands `hive` starts become its children and can be reaped with
/// [`process_group_gone`], whatever pid 1 does with zombies (some container inits never
/// reap them).
pub fn become_subreaper() {
    // SAFETY: prctl(2) with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether process group `pgid` is gone: `kill(-pgid, 0)` fails with ESRCH. Zombies of the
/// group that are this process's children (see [`become_subreaper`]) are reaped first, as
/// a dead process only leaves its group once reaped.
pub fn process_group_gone(pgid: i32) -> bool {
    let me = std::process::id() as i32;
    for pid in all_pids() {
        let in_group = stat_field(pid, 5).is_some_and(|(state, g)| g == pgid && state == 'Z');
        let ours = stat_field(pid, 4).is_some_and(|(_, ppid)| ppid == me);
        if in_group && ours {
            // SAFETY: waitpid(2) on one zombie child of ours, which no Child handle owns (the
            // only children with handles are `hive` processes, never in a command's group).
            unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
    }
    // SAFETY: kill(2) with signal 0 only checks whether the group exists.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// An official plugin library (`production`, `performance`, `automation`, `development`)
/// built from the workspace by `cargo xtask test`.
pub fn official_plugin(name: &str) -> PathBuf {
    plugin_lib(&format!("hive_plugin_{name}"))
}
