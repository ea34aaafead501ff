//! Running external commands: printing them first, checking, streaming and capturing output.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

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

/// Run `cmd` with stdout and stderr piped: each line is echoed live (stdout to
/// stdout, stderr to stderr) and also collected, both streams interleaved in
/// arrival order. The caller prints the command line.
pub fn run_streaming(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let shown = display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let collected = Arc::new(Mutex::new(String::new()));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        let sink = Arc::clone(&collected);
        pumps.push(thread::spawn(move || pump(out, &sink, false)));
    }
    if let Some(err) = child.stderr.take() {
        let sink = Arc::clone(&collected);
        pumps.push(thread::spawn(move || pump(err, &sink, true)));
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    for p in pumps {
        // A panicking pump only loses echoed output; the status still counts.
        let _ = p.join();
    }
    let text = collected
        .lock()
        .map(|s| s.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    Ok((status, text))
}

fn pump(stream: impl Read, sink: &Mutex<String>, is_stderr: bool) {
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
        if is_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
        let mut guard = sink.lock().unwrap_or_else(|e| e.into_inner());
        guard.push_str(line);
        guard.push('\n');
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
    fn streaming_collects_both_streams() -> Result<()> {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (status, text) = run_streaming(&mut c)?;
        assert_eq!(status.code(), Some(3));
        assert!(text.contains("out\n"), "{text:?}");
        assert!(text.contains("err\n"), "{text:?}");
        Ok(())
    }
}
