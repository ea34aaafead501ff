//! Starting a step's command fast on Linux x86-64: `clone3(CLONE_VM | CLONE_VFORK |
//! CLONE_PIDFD | CLONE_CLEAR_SIGHAND)`, a few system calls in the child, then `execve`.
//!
//! Why not `std::process::Command` for every step: std spawns through glibc's `posix_spawn`,
//! whose child queries and resets all 64 signal dispositions one by one before `execve`
//! (about 120 system calls, 17 us on the reference machine, on the critical path of every
//! step), and std rebuilds the whole environment of the process for every command. Here the
//! kernel clears the handled signals at clone time (`CLONE_CLEAR_SIGHAND`, Linux 5.5), the
//! environment of the process is captured once, and the pidfd comes with the clone.
//!
//! The child is what std would start: `argv[0]` as given, the process's environment with the
//! command's variables over it, stdin on `/dev/null`, stdout and stderr on pipes, its own
//! process group, an empty signal mask, `SIGPIPE` at its default, no handler of ours.
//!
//! Where `clone3` or its flags are refused (older kernels, seccomp profiles that deny
//! `clone3`), [`start`] answers `Ok(None)` once and for all, and the caller uses std.
//!
//! The process's environment is read once, at the first command: `hive` never changes its
//! own environment while it runs (a command's variables go to that command only).

// Elsewhere than Linux x86-64 only `start` (answering "use std") is compiled in use.
#![cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code, unused_imports)
)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::OnceLock;

use tokio::io::unix::AsyncFd;

/// What to start.
#[derive(Debug)]
pub(crate) struct Command<'a> {
    /// The file to execute (a path: the caller has searched `PATH`).
    pub(crate) path: &'a OsStr,
    /// `argv[0]`.
    pub(crate) arg0: &'a str,
    pub(crate) args: &'a [String],
    /// Variables over the process's environment; the last of a name wins.
    pub(crate) env: &'a [(String, String)],
    pub(crate) cwd: Option<&'a std::path::Path>,
}

/// A started command.
#[derive(Debug)]
pub(crate) struct Child {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    pub(crate) stdout: Option<tokio::net::unix::pipe::Receiver>,
    pub(crate) stderr: Option<tokio::net::unix::pipe::Receiver>,
}

impl Child {
    pub(crate) fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the command to end and reaps it.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            // The pidfd turns readable when the process has ended (epoll reports that even
            // if it ended before the descriptor was registered).
            let Some(fd) = &self.pidfd else {
                return Err(io::Error::other("the command was reaped already"));
            };
            let mut ready = fd.readable().await?;
            ready.clear_ready();
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut raw = 0;
        // SAFETY: waitpid on our own unreaped child (its pidfd pins the pid).
        let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw, libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r > 0 => {
                use std::os::unix::process::ExitStatusExt;
                let s = ExitStatus::from_raw(raw);
                self.status = Some(s);
                self.pidfd = None;
                Ok(Some(s))
            }
            _ => Err(io::Error::last_os_error()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Dropped before it ended (its attempt was dropped): the caller's group guard kills
        // it; reap it when it is gone so that no zombie stays behind.
        if self.status.is_some() || matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.pid as libc::pid_t;
        let _ = std::thread::Builder::new()
            .name("hive-reap".into())
            .spawn(move || {
                let mut raw = 0;
                // SAFETY: blocking waitpid on our own child.
                unsafe { libc::waitpid(pid, &mut raw, 0) };
            });
    }
}

/// Set once `clone3` has been refused: every later command goes through std at once.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Starts `cmd`, or `Ok(None)` where this way of starting is not available (use std).
pub(crate) fn start(cmd: &Command<'_>) -> io::Result<Option<Child>> {
    if REFUSED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    imp::start(cmd)
}

/// The process's environment, as `NAME=value` strings, read at the first command.
fn base_env() -> &'static [(OsString, CString)] {
    static ENV: OnceLock<Vec<(OsString, CString)>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.clone().into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok().map(|c| (k, c))
            })
            .collect()
    })
}

fn cstring(what: &str, s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds a NUL byte"),
        )
    })
}

/// `/dev/null`, opened once (close-on-exec), for the commands' stdin.
fn dev_null() -> Option<RawFd> {
    static NULL: OnceLock<Option<OwnedFd>> = OnceLock::new();
    NULL.get_or_init(|| {
        std::fs::File::open("/dev/null")
            .ok()
            .and_then(|f| above_stdio(OwnedFd::from(f)).ok())
    })
    .as_ref()
    .map(|f| f.as_raw_fd())
}

/// `fd` moved to a number above 2 (so that the child's `dup2` onto 0, 1 and 2 cannot clash
/// with it when this process was started with a standard stream closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor; the result is ours.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A pipe: (read end, non-blocking; write end, blocking), both close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (r, w) = (above_stdio(r)?, above_stdio(w)?);
    // SAFETY: F_SETFL on our own descriptor.
    if unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r, w))
}

/// The `envp` of `cmd`: the process's variables not overridden, then the command's.
fn environment(cmd: &Command<'_>) -> io::Result<(Vec<CString>, Vec<*const libc::c_char>)> {
    let mut own: Vec<CString> = Vec::with_capacity(cmd.env.len());
    let mut names: Vec<&str> = Vec::with_capacity(cmd.env.len());
    for (i, (k, v)) in cmd.env.iter().enumerate() {
        if k.is_empty() || k.contains('=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("environment variable name `{k}` is empty or holds `=`"),
            ));
        }
        // The last of a name wins.
        if cmd.env[i + 1..].iter().any(|(k2, _)| k2 == k) {
            continue;
        }
        own.push(cstring(
            "an environment variable",
            format!("{k}={v}").as_bytes(),
        )?);
        names.push(k);
    }
    let base = base_env();
    let mut ptrs = Vec::with_capacity(base.len() + own.len() + 1);
    for (k, kv) in base {
        if !names.iter().any(|n| OsStr::new(n) == k) {
            ptrs.push(kv.as_ptr());
        }
    }
    ptrs.extend(own.iter().map(|c| c.as_ptr()));
    ptrs.push(std::ptr::null());
    Ok((own, ptrs))
}

/// What the child reads (in the parent's memory: `CLONE_VM`), and where it reports a failure.
#[repr(C)]
struct Setup {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The errno of the step that failed, 0 if `execve` succeeded.
    err: AtomicI32,
    /// Which step that was (one of the `STAGE_` values).
    stage: AtomicU8,
}

/// The child's steps, for the error of the one that failed.
const STAGE_SETUP: u8 = 0;
const STAGE_CHDIR: u8 = 1;
const STAGE_EXEC: u8 = 2;

impl Setup {
    /// The child's failure, saying which step failed (`execve`'s own error as it is: the
    /// caller names the program).
    fn failure(&self, errno: i32, cwd: Option<&std::path::Path>) -> io::Error {
        let e = io::Error::from_raw_os_error(errno);
        match (self.stage.load(Ordering::Relaxed), cwd) {
            (STAGE_EXEC, _) => e,
            (STAGE_CHDIR, Some(d)) => io::Error::new(
                e.kind(),
                format!("cannot enter the working directory {}: {e}", d.display()),
            ),
            _ => io::Error::new(e.kind(), format!("setting up the new process failed: {e}")),
        }
    }
}

/// The child, on its own stack, sharing the parent's memory until `execve`: system calls
/// only (nothing that allocates, locks or unwinds).
extern "C" fn child(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the parent's `Setup`, alive and unchanged while the parent is
    // suspended (CLONE_VFORK) until this process calls execve or exits. Every call below is
    // async-signal-safe; no handler of the parent is installed here (CLONE_CLEAR_SIGHAND).
    unsafe {
        let s = &*(arg as *const Setup);
        let set_up = libc::setpgid(0, 0) == 0
            && libc::dup2(s.stdin, 0) == 0
            && libc::dup2(s.stdout, 1) == 1
            && libc::dup2(s.stderr, 2) == 2
            && libc::signal(libc::SIGPIPE, libc::SIG_DFL) != libc::SIG_ERR
            && {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) == 0
            };
        if set_up {
            s.stage.store(STAGE_CHDIR, Ordering::Relaxed);
            if s.cwd.is_null() || libc::chdir(s.cwd) == 0 {
                s.stage.store(STAGE_EXEC, Ordering::Relaxed);
                libc::execve(s.path, s.argv, s.envp);
            }
        }
        s.err
            .store((*libc::__errno_location()).max(1), Ordering::Relaxed);
        libc::_exit(127)
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    use super::*;
    use std::cell::RefCell;

    const CLONE_VM: u64 = 0x100;
    const CLONE_VFORK: u64 = 0x4000;
    const CLONE_PIDFD: u64 = 0x1000;
    const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
    /// The child's stack, in 16-byte units (64 KiB; glibc's posix_spawn uses 36 KiB).
    const STACK_UNITS: usize = 4096;

    /// `struct clone_args` up to `tls` (CLONE_ARGS_SIZE_VER0).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }

    /// A command's two pipes (stdout, stderr): (read end, write end) each.
    type Pipes = ((OwnedFd, OwnedFd), (OwnedFd, OwnedFd));

    thread_local! {
        /// One stack per thread: the thread is suspended while its child runs on it.
        static STACK: RefCell<Box<[u128]>> =
            RefCell::new(vec![0u128; STACK_UNITS].into_boxed_slice());
        /// The next command's pipes, made after the last command started instead of on the
        /// way to the next one (four system calls off the path from a step's end to the
        /// next step's start).
        static SPARE: RefCell<Option<Pipes>> = const { RefCell::new(None) };
    }

    /// This thread's spare pipes, or new ones.
    fn take_pipes() -> io::Result<Pipes> {
        match SPARE.with(|s| s.borrow_mut().take()) {
            Some(p) => Ok(p),
            None => Ok((pipe()?, pipe()?)),
        }
    }

    /// The descriptors of this thread's spare pipes (tests).
    #[cfg(test)]
    pub(super) fn spare_fds() -> Vec<RawFd> {
        SPARE.with(|s| {
            s.borrow().as_ref().map_or(Vec::new(), |((a, b), (c, d))| {
                vec![a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd(), d.as_raw_fd()]
            })
        })
    }

    /// Makes this thread's spare pipes, after a command started (a failure is left to the
    /// next command to meet).
    fn refill_pipes() {
        if let (Ok(a), Ok(b)) = (pipe(), pipe()) {
            SPARE.with(|s| *s.borrow_mut() = Some((a, b)));
        }
    }

    /// clone3; in the child, calls `f(arg)` on the new stack (which never returns).
    ///
    /// # Safety
    /// `args` describes a valid stack nobody else uses until the child execs or exits, and
    /// `CLONE_VFORK` is set so the caller waits until then.
    unsafe fn clone3(
        args: &mut CloneArgs,
        f: extern "C" fn(*mut libc::c_void) -> !,
        arg: *mut libc::c_void,
    ) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the child starts at the instruction after `syscall` with the kernel's
        // rsp = stack + stack_size (16-byte aligned) and the parent's other registers, so it
        // calls `f(arg)` from r12/r13 on its own stack and never comes back here. The parent
        // continues at label 2 with only rax, rcx and r11 changed (declared).
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") args as *mut CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") arg,
                in("r13") f,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    pub(super) fn start(cmd: &Command<'_>) -> io::Result<Option<Child>> {
        let Some(stdin) = dev_null() else {
            return Ok(None);
        };
        let path = cstring("the program path", cmd.path.as_bytes())?;
        let mut argv_own = Vec::with_capacity(cmd.args.len() + 1);
        argv_own.push(cstring("the program name", cmd.arg0.as_bytes())?);
        for a in cmd.args {
            argv_own.push(cstring("an argument", a.as_bytes())?);
        }
        let mut argv: Vec<*const libc::c_char> = argv_own.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let (_env_own, envp) = environment(cmd)?;
        let cwd = match cmd.cwd {
            Some(d) => Some(cstring("the working directory", d.as_os_str().as_bytes())?),
            None => None,
        };
        let ((out_r, out_w), (err_r, err_w)) = take_pipes()?;
        let setup = Setup {
            path: path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            stdin,
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            err: AtomicI32::new(0),
            stage: AtomicU8::new(STAGE_SETUP),
        };
        let mut pidfd: RawFd = -1;
        let ret = STACK.with(|st| {
            let mut st = st.borrow_mut();
            let bytes = st.len() * std::mem::size_of::<u128>();
            let mut args = CloneArgs {
                flags: CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
                pidfd: &mut pidfd as *mut RawFd as u64,
                child_tid: 0,
                parent_tid: 0,
                exit_signal: libc::SIGCHLD as u64,
                stack: st.as_mut_ptr() as u64,
                stack_size: bytes as u64,
                tls: 0,
            };
            // SAFETY: the stack is this thread's, unused by anything else while the thread
            // is suspended in clone3 (CLONE_VFORK); `setup` and everything it points to
            // outlive the child's use of them (until execve or _exit).
            unsafe {
                clone3(
                    &mut args,
                    child,
                    &setup as *const Setup as *mut libc::c_void,
                )
            }
        });
        drop((out_w, err_w));
        if ret < 0 {
            let errno = -ret as i32;
            if matches!(
                errno,
                libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG | libc::EACCES
            ) {
                REFUSED.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            return Err(io::Error::from_raw_os_error(errno));
        }
        // Not where clone3 is refused: std's path makes its own pipes.
        refill_pipes();
        let pid = ret as libc::pid_t;
        // SAFETY: CLONE_PIDFD stored a new close-on-exec descriptor nobody else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let err = setup.err.load(Ordering::Relaxed);
        if err != 0 {
            let mut raw = 0;
            // SAFETY: the child has exited (_exit after the failed step); reap it.
            unsafe { libc::waitpid(pid, &mut raw, 0) };
            return Err(setup.failure(err, cmd.cwd));
        }
        let mut child = Child {
            pid: pid as u32,
            pidfd: None,
            status: None,
            stdout: None,
            stderr: None,
        };
        // From here on, dropping `child` reaps the process.
        // SAFETY: an OwnedFd's descriptor stays open and the same until the AsyncFd drops it.
        let registered =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
        child.pidfd = Some(registered.map_err(io::Error::from)?);
        child.stdout = Some(tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(
            out_r,
        )?);
        child.stderr = Some(tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(
            err_r,
        )?);
        Ok(Some(child))
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod imp {
    use super::*;

    pub(super) fn start(_cmd: &Command<'_>) -> io::Result<Option<Child>> {
        REFUSED.store(true, Ordering::Relaxed);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Starts `cmd`; `None` (the test passes with a note) where clone3 is refused here.
    fn started(cmd: &Command<'_>) -> Option<Child> {
        let c = start(cmd).expect("starts");
        if c.is_none() {
            eprintln!("clone3 is refused on this machine: the std path is used instead");
        }
        c
    }

    async fn run(cmd: &Command<'_>) -> Option<(ExitStatus, String, String)> {
        let mut c = started(cmd)?;
        let (mut o, mut e) = (String::new(), String::new());
        let mut out = c.stdout.take().expect("stdout");
        let mut err = c.stderr.take().expect("stderr");
        out.read_to_string(&mut o).await.expect("stdout");
        err.read_to_string(&mut e).await.expect("stderr");
        Some((c.wait().await.expect("waits"), o, e))
    }

    fn sh<'a>(script: &'a [String], env: &'a [(String, String)]) -> Command<'a> {
        Command {
            path: OsStr::new("/bin/sh"),
            arg0: "argv0",
            args: script,
            env,
            cwd: None,
        }
    }

    #[tokio::test]
    async fn a_command_gets_its_arguments_environment_streams_and_status() {
        let script = vec![
            "-c".to_string(),
            "a0=$(tr '\\0' '\\n' < /proc/$$/cmdline | head -n 1); \
             echo \"$a0 $0 $1 $X $HIVE_T\"; echo oops >&2; read l || echo eof; exit 3"
                .into(),
            "zero".into(),
            "one".into(),
        ];
        let env = vec![
            ("X".to_string(), "first".to_string()),
            ("HIVE_T".into(), "t".into()),
            ("X".into(), "last".into()),
        ];
        let Some((status, out, err)) = run(&sh(&script, &env)).await else {
            return;
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(out, "argv0 zero one last t\neof\n");
        assert_eq!(err, "oops\n");
    }

    /// Each command has its own pipes (a thread keeps the next command's ready), and no
    /// command holds another thread's spare pipes: they are close-on-exec.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[tokio::test]
    async fn commands_get_their_own_streams_and_no_spare_pipe() {
        use std::os::unix::fs::MetadataExt;
        // The pipes as the child's /proc/PID/fd shows them: `pipe:[INODE]`.
        let names = |fds: Vec<RawFd>| -> Vec<String> {
            fds.into_iter()
                .filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok())
                .map(|m| format!("pipe:[{}]", m.ino()))
                .collect()
        };
        // Another thread starts a command and keeps its spare pipes open meanwhile.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let script = vec!["-c".to_string(), "true".into()];
            let fds = rt.block_on(async { run(&sh(&script, &[])).await.map(|_| imp::spare_fds()) });
            let _ = tx.send(fds.map(names));
            let _ = done_rx.recv();
        });
        let spares = rx.recv().expect("the other thread answers");
        let Some(spares) = spares else { return };
        assert_eq!(spares.len(), 4, "the other thread keeps two spare pipes");
        for word in ["first", "second"] {
            let script = vec![
                "-c".to_string(),
                format!("echo {word}; echo {word}-err >&2; ls -l /proc/$$/fd"),
            ];
            let Some((status, out, err)) = run(&sh(&script, &[])).await else {
                return;
            };
            assert!(status.success());
            assert!(out.starts_with(&format!("{word}\n")), "{out}");
            assert_eq!(err, format!("{word}-err\n"));
            for pipe in &spares {
                assert!(
                    !out.contains(pipe.as_str()),
                    "`{word}` holds spare {pipe}:\n{out}"
                );
            }
        }
        drop(done_tx);
        other.join().expect("thread");
    }

    #[tokio::test]
    async fn the_process_environment_is_inherited() {
        let script = vec!["-c".to_string(), "printf %s \"$PATH\"".into()];
        let Some((_, out, _)) = run(&sh(&script, &[])).await else {
            return;
        };
        assert_eq!(Some(OsString::from(out)), std::env::var_os("PATH"));
    }

    #[tokio::test]
    async fn group_cwd_signals_and_mask_are_those_of_a_fresh_command() {
        // Own process group; cwd; SIGPIPE at its default (the test harness, like hive,
        // ignores it); nothing blocked; nothing ignored that we ignore.
        let dir = std::env::temp_dir();
        let script = vec![
            "-c".to_string(),
            // Builtins only: a shell that waits for a child (`grep`) blocks every signal
            // meanwhile (dash's waitproc), which the child would read as our mask.
            "read -r _ _ _ _ pg _ < /proc/$$/stat; echo $$ $pg; pwd -P; \
             while read -r k v; do case $k in SigBlk:|SigIgn:) echo \"$k $v\";; esac; \
             done < /proc/$$/status"
                .into(),
        ];
        let mut cmd = sh(&script, &[]);
        cmd.cwd = Some(&dir);
        let Some((status, out, err)) = run(&cmd).await else {
            return;
        };
        assert!(status.success(), "{err}");
        let mut lines = out.lines();
        let ids: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        assert_eq!(ids.len(), 2, "{out}");
        assert_eq!(ids[0], ids[1], "the command leads its own group: {out}");
        let cwd = std::fs::canonicalize(&dir).expect("temp dir");
        assert_eq!(lines.next(), Some(cwd.to_str().unwrap_or("")));
        assert_eq!(lines.next(), Some("SigBlk: 0000000000000000"), "{out}");
        let ign = lines.next().unwrap_or("");
        let ign = u64::from_str_radix(ign.trim_start_matches("SigIgn: "), 16).expect("hex");
        assert_eq!(
            ign & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE is not ignored"
        );
    }

    #[tokio::test]
    async fn a_signal_ends_a_command_with_that_signal() {
        use std::os::unix::process::ExitStatusExt;
        let script = vec!["-c".to_string(), "kill -TERM $$; sleep 5".into()];
        let Some((status, _, _)) = run(&sh(&script, &[])).await else {
            return;
        };
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn a_missing_program_or_directory_is_the_error_of_execve_or_chdir() {
        let none: Vec<String> = Vec::new();
        if started(&sh(&none, &[])).is_none() {
            return;
        }
        let cmd = Command {
            path: OsStr::new("/nonexistent/prog"),
            arg0: "prog",
            args: &none,
            env: &[],
            cwd: None,
        };
        let e = start(&cmd).expect_err("no such program");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let mut cmd = sh(&none, &[]);
        let missing = std::path::Path::new("/nonexistent/dir");
        cmd.cwd = Some(missing);
        let e = start(&cmd).expect_err("no such directory");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with("cannot enter the working directory /nonexistent/dir: "),
            "{e}"
        );
        let bad = vec![("A=B".to_string(), "x".to_string())];
        let e = start(&sh(&none, &bad)).expect_err("bad name");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn a_dropped_child_is_reaped() {
        let script = vec!["-c".to_string(), "exit 0".into()];
        let Some(c) = started(&sh(&script, &[])) else {
            return;
        };
        let proc_dir = std::path::PathBuf::from(format!("/proc/{}", c.id()));
        drop(c);
        // A zombie keeps its /proc entry until it is reaped.
        let gone = (0..500).any(|_| {
            if !proc_dir.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            false
        });
        assert!(gone, "the dropped child was not reaped");
    }
}
