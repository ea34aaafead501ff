//! Running external commands: printing them first, checking, streaming and capturing output.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The cargo to use: the one that launched us (`$CARGO`), else `cargo` on PATH.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A shell-like rendering of `cmd`: environment overrides, program, arguments.
pub fn display(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&quote(&cmd.get_program().to_string_lossy()));
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(&a.to_string_lossy()));
    }
    s
}

/// [`display`] followed by the working directory when one is set, for `$ ...` lines.
pub fn display_in(cmd: &Command) -> String {
    match cmd.get_current_dir() {
        Some(dir) => format!("{}   (in {})", display(cmd), dir.display()),
        None => display(cmd),
    }
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@=:,+%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Print `$ cmd`, run it with inherited stdio, and fail if it does not succeed.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("$ {}", display_in(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}

/// What a piped run produced.
#[derive(Debug)]
pub struct Piped {
    pub status: ExitStatus,
    /// Stdout alone.
    pub stdout: String,
    /// Stdout and stderr interleaved in arrival order.
    pub all: String,
}

/// Run `cmd` with stdout and stderr piped and collected; with `echo`, each line
/// is also echoed live (stdout to stdout, stderr to stderr). With a `timeout`,
/// the child is killed when it runs longer and an error is returned. The
/// caller prints the command line.
pub fn run_piped(cmd: &mut Command, echo: bool, timeout: Option<Duration>) -> Result<Piped> {
    let shown = display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let all = Arc::new(Mutex::new(String::new()));
    let stdout = Arc::new(Mutex::new(String::new()));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        let sinks = [Arc::clone(&all), Arc::clone(&stdout)];
        pumps.push(thread::spawn(move || pump(out, &sinks, echo, false)));
    }
    if let Some(err) = child.stderr.take() {
        let sinks = [Arc::clone(&all)];
        pumps.push(thread::spawn(move || pump(err, &sinks, echo, true)));
    }
    let status = match timeout {
        None => child
            .wait()
            .with_context(|| format!("waiting for `{shown}`"))?,
        Some(limit) => {
            let start = Instant::now();
            loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if start.elapsed() >= limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    // The pumps are left detached: a grandchild may still hold the pipes.
                    bail!(
                        "`{shown}` still running after {} s; killed",
                        limit.as_secs()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    for p in pumps {
        // A panicking pump only loses output; the status still counts.
        let _ = p.join();
    }
    let take = |m: &Mutex<String>| {
        m.lock()
            .map_or_else(|e| e.into_inner().clone(), |s| s.clone())
    };
    Ok(Piped {
        status,
        stdout: take(&stdout),
        all: take(&all),
    })
}

fn pump(stream: impl Read, sinks: &[Arc<Mutex<String>>], echo: bool, is_stderr: bool) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if echo && is_stderr {
            eprintln!("{line}");
        } else if echo {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
        for sink in sinks {
            let mut guard = sink.lock().unwrap_or_else(|e| e.into_inner());
            guard.push_str(line);
            guard.push('\n');
        }
    }
}

/// Does `program --version` start and succeed?
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run `cmd` quietly and return its trimmed stdout, or `None` if it fails.
pub fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_when_needed() {
        let mut c = Command::new("hyperfine");
        c.args(["--runs", "5", "seq 1000 | xargs -P8 -n1 /bin/true", "it's"]);
        assert_eq!(
            display(&c),
            r"hyperfine --runs 5 'seq 1000 | xargs -P8 -n1 /bin/true' 'it'\''s'"
        );
    }

    #[test]
    fn piped_collects_both_streams() -> Result<()> {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let r = run_piped(&mut c, false, Some(Duration::from_secs(30)))?;
        assert_eq!(r.status.code(), Some(3));
        assert_eq!(r.stdout, "out\n");
        assert!(r.all.contains("out\n"), "{:?}", r.all);
        assert!(r.all.contains("err\n"), "{:?}", r.all);
        Ok(())
    }

    #[test]
    fn piped_times_out() {
        let start = Instant::now();
        let mut c = Command::new("sleep");
        c.arg("30");
        let r = run_piped(&mut c, false, Some(Duration::from_millis(200)));
        let err = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("killed"), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
