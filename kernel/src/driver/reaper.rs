//! The orphan guard: a tiny process forked once per kernel process that holds the read end of
//! a pipe. Every command the drivers start is registered with it (`+pgid`) and unregistered
//! when its group is gone (`-pgid`). When the kernel process dies, even by SIGKILL, the pipe
//! closes and the guard SIGKILLs every group still registered, so no command outlives `hive`.
//!
//! The forked child runs only async-signal-safe calls (`read`, `kill`, `close`, `_exit`) on
//! memory allocated before the fork, as POSIX requires after forking a threaded process.

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

/// pid_max is at most 2^22 on Linux (PID_MAX_LIMIT): one bit per possible pid.
const PID_LIMIT: usize = 1 << 22;

#[derive(Debug)]
struct Reaper {
    fd: RawFd,
    pid: libc::pid_t,
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

/// Registers process group `pgid` (a command started with `process_group(0)`).
pub(crate) fn register(pgid: u32) {
    if let Some(r) = reaper() {
        r.send(b'+', pgid);
    }
}

/// Unregisters process group `pgid` (its leader has been reaped and the group killed).
pub(crate) fn unregister(pgid: u32) {
    if let Some(r) = reaper() {
        r.send(b'-', pgid);
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
        // The child's bitmap, mapped before the fork (the child only writes into it). A
        // private anonymous mapping costs nothing until touched: the guard's memory is the
        // pages of the pids it registers, not 512 KiB zeroed at every start (nor a 2 MiB
        // huge page where transparent huge pages are on).
        let bytes = PID_LIMIT / 8;
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            close_pipe();
            return Err(e);
        }
        // SAFETY: advice on the mapping just made; failure only costs memory.
        unsafe { libc::madvise(map, bytes, libc::MADV_NOHUGEPAGE) };
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
            // SAFETY: we are the freshly forked child; `map` is `bytes` of zeroed, writable,
            // u64-aligned memory that only this process uses from now on.
            unsafe {
                let bits = std::slice::from_raw_parts_mut(map.cast::<u64>(), bytes / 8);
                guard_main(rd, wr, bits)
            }
        }
        // SAFETY: the mapping is the child's copy now; the read end belongs to the child.
        unsafe {
            libc::munmap(map, bytes);
            libc::close(rd);
        }
        Ok(Reaper { fd: wr, pid })
    }

    fn send(&self, sign: u8, pid: u32) {
        let mut buf = [0u8; 16];
        buf[0] = sign;
        let mut digits = [0u8; 10];
        let mut n = pid;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[1 + i] = digits[len - 1 - i];
        }
        buf[1 + len] = b'\n';
        let total = len + 2;
        loop {
            // SAFETY: buf is valid for `total` bytes; writes under PIPE_BUF are atomic.
            let r = unsafe { libc::write(self.fd, buf.as_ptr().cast(), total) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
    }
}

/// The guard's whole life. Only async-signal-safe calls; no allocation, no panics (all
/// indexing is checked, all arithmetic wrapping).
unsafe fn guard_main(rd: RawFd, wr: RawFd, bits: &mut [u64]) -> ! {
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

        let mut buf = [0u8; 4096];
        let mut sign = 0u8;
        let mut num: u64 = 0;
        loop {
            let n = libc::read(rd, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if n == 0 {
                break;
            }
            for &b in buf.iter().take(n as usize) {
                match b {
                    b'+' | b'-' => {
                        sign = b;
                        num = 0;
                    }
                    b'0'..=b'9' => num = num.wrapping_mul(10).wrapping_add((b - b'0') as u64),
                    b'\n' => {
                        let idx = num as usize;
                        if let Some(word) = bits.get_mut(idx / 64) {
                            let mask = 1u64 << (idx % 64);
                            if sign == b'+' {
                                *word |= mask;
                            } else if sign == b'-' {
                                *word &= !mask;
                            }
                        }
                        sign = 0;
                    }
                    _ => {}
                }
            }
        }
        // The kernel process is gone: kill every group still registered.
        for (w, &word) in bits.iter().enumerate() {
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
