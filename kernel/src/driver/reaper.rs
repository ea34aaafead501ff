//! The orphan guard: a tiny process forked once per kernel process that holds the read end of
//! a pipe, and shares a bitmap of process groups with the kernel process. Every command the
//! drivers start is registered in the bitmap (its group's bit set) and unregistered when its
//! group is gone (bit cleared): plain atomic operations on shared memory, no system call and
//! no wake-up of the guard per command. When the kernel process dies, even by SIGKILL, the
//! pipe closes and the guard SIGKILLs every group whose bit is still set, so no command
//! outlives `hive`.
//!
//! The forked child runs only async-signal-safe calls (`read`, `kill`, `close`, `_exit`) on
//! memory mapped before the fork, as POSIX requires after forking a threaded process.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// pid_max is at most 2^22 on Linux (PID_MAX_LIMIT): one bit per possible pid.
const PID_LIMIT: usize = 1 << 22;

#[derive(Debug)]
struct Reaper {
    /// The write end of the pipe: never written, only held (its closing is the signal).
    _pipe: RawFd,
    pid: libc::pid_t,
    /// The bitmap shared with the guard (PID_LIMIT bits), mapped for the process's life.
    bits: &'static [AtomicU64],
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

fn reaper() -> Option<&'static Reaper> {
    REAPER
        .get_or_init(|| match Reaper::start() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(
                    "cannot start the orphan guard: {e}; commands may outlive hive if it is killed"
                );
                None
            }
        })
        .as_ref()
}

/// Makes sure the guard runs (call before the first command starts; a program may call it
/// first thing, while it is small and has one thread, through [`crate::start_orphan_guard`]).
pub(crate) fn ensure_started() {
    let _ = reaper();
}

/// The guard's pid, if it runs.
pub(crate) fn guard_pid() -> Option<u32> {
    reaper().map(|r| r.pid as u32)
}

/// The word and bit of `pgid` in the shared bitmap.
fn slot(pgid: u32) -> (usize, u64) {
    let i = pgid as usize;
    (i / 64, 1u64 << (i % 64))
}

/// Registers process group `pgid` (a command started with `process_group(0)`).
pub(crate) fn register(pgid: u32) {
    if let Some(r) = reaper() {
        let (w, mask) = slot(pgid);
        if let Some(word) = r.bits.get(w) {
            word.fetch_or(mask, Ordering::Release);
        }
    }
}

/// Unregisters process group `pgid` (its leader has been reaped and the group killed).
pub(crate) fn unregister(pgid: u32) {
    if let Some(r) = reaper() {
        let (w, mask) = slot(pgid);
        if let Some(word) = r.bits.get(w) {
            word.fetch_and(!mask, Ordering::Release);
        }
    }
}

/// Sends `sig` to process group `pgid`; a group already gone is not an error.
pub(crate) fn kill_group(pgid: u32, sig: libc::c_int) {
    if pgid == 0 || pgid > i32::MAX as u32 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

impl Reaper {
    fn start() -> io::Result<Reaper> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (rd, wr) = (fds[0], fds[1]);
        let close_pipe = || {
            // SAFETY: closing the two fds we just created.
            unsafe {
                libc::close(rd);
                libc::close(wr);
            }
        };
        // The bitmap, shared with the child: a shared anonymous mapping costs nothing until
        // touched (the pages of the pids registered), and both processes see every update.
        let bytes = PID_LIMIT / 8;
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            close_pipe();
            return Err(e);
        }
        // SAFETY: the mapping is `bytes` of zeroed memory, aligned to a page (so to u64), valid
        // for the rest of the process's life (never unmapped); AtomicU64 has u64's layout.
        let bits: &'static [AtomicU64] =
            unsafe { std::slice::from_raw_parts(map.cast::<AtomicU64>(), bytes / 8) };
        // SAFETY: fork(2); the child runs only async-signal-safe code (see guard_main).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = io::Error::last_os_error();
            close_pipe();
            // SAFETY: unmapping the mapping made above, used by no one.
            unsafe { libc::munmap(map, bytes) };
            return Err(e);
        }
        if pid == 0 {
            // SAFETY: we are the freshly forked child.
            unsafe { guard_main(rd, wr, bits) }
        }
        // SAFETY: the read end belongs to the child now.
        unsafe { libc::close(rd) };
        Ok(Reaper {
            _pipe: wr,
            pid,
            bits,
        })
    }
}

/// The guard's whole life. Only async-signal-safe calls; no allocation, no panics (all
/// indexing is checked, all arithmetic wrapping).
unsafe fn guard_main(rd: RawFd, wr: RawFd, bits: &[AtomicU64]) -> ! {
    // SAFETY (whole block): plain syscalls on fds and signals we own.
    unsafe {
        libc::close(wr);
        // Out of the terminal's process group: Ctrl-C reaches hive, not the guard.
        libc::setpgid(0, 0);
        for sig in [
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGPIPE,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Keep only the pipe: inherited pipes of other children must not be held open.
        // close_range(2) does it in two calls; the loop is for kernels without it.
        let below = if rd > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (rd - 1) as u32, 0u32)
        } else {
            0
        };
        let above = libc::syscall(libc::SYS_close_range, (rd + 1) as u32, u32::MAX, 0u32);
        if below != 0 || above != 0 {
            let max = match libc::sysconf(libc::_SC_OPEN_MAX) {
                n if n > 0 && n < 1 << 20 => n as libc::c_int,
                _ => 65536,
            };
            let mut fd = 0;
            while fd < max {
                if fd != rd {
                    libc::close(fd);
                }
                fd = fd.wrapping_add(1);
            }
        }
        libc::prctl(
            libc::PR_SET_NAME,
            c"hive-reaper".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );

        // Nothing is ever written to the pipe: wait for its end (the kernel process is gone).
        let mut buf = [0u8; 64];
        loop {
            let n = libc::read(rd, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        // Kill every group still registered in the shared bitmap.
        for (w, word) in bits.iter().enumerate() {
            let word = word.load(Ordering::Acquire);
            if word == 0 {
                continue;
            }
            for bit in 0..64 {
                if word & (1u64 << bit) != 0 {
                    let pgid = (w * 64 + bit) as libc::pid_t;
                    if pgid > 1 {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                }
            }
        }
        libc::_exit(0)
    }
}
