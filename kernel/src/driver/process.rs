//! The `process` driver: each task is a command run as a child in its own process group.
//! Timeout or cancel: SIGTERM to the group, a grace period, then SIGKILL to the group. When the
//! leader exits, what is left of its group is killed too, so no orphan survives a task.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::output::Tail;
use super::reaper;
use super::spawn;
use super::which;
use super::{AgentContext, AgentHandle, AgentLink, Driver, DriverError, TaskContext};
use crate::agent::ShutdownMode;
use crate::event::Stream;
use crate::task::TaskError;

/// Settings of a `process` driver (one per pool).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProcessConfig {
    /// A program to run when the payload names none; the payload's args are appended.
    pub program: Option<String>,
    /// Arguments before the payload's.
    pub args: Vec<String>,
    /// Environment added to every command (the kernel's own is inherited).
    pub env: BTreeMap<String, String>,
    /// Working directory when the payload gives none.
    pub cwd: Option<PathBuf>,
    /// SIGTERM-to-SIGKILL grace; the kernel's when `None`.
    pub grace: Option<Duration>,
    /// Bytes of stdout and of stderr kept (each).
    pub tail_bytes: usize,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            program: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            grace: None,
            tail_bytes: 64 * 1024,
        }
    }
}

impl ProcessConfig {
    /// Commands come entirely from the payloads.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the default program.
    pub fn program(&mut self, program: impl Into<String>) -> &mut Self {
        self.program = Some(program.into());
        self
    }
    /// Sets the leading arguments.
    pub fn args(&mut self, args: impl IntoIterator<Item = impl Into<String>>) -> &mut Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
    /// Adds an environment variable.
    pub fn env(&mut self, k: impl Into<String>, v: impl Into<String>) -> &mut Self {
        self.env.insert(k.into(), v.into());
        self
    }
    /// Sets the working directory.
    pub fn cwd(&mut self, cwd: impl Into<PathBuf>) -> &mut Self {
        self.cwd = Some(cwd.into());
        self
    }
    /// Sets the grace period.
    pub fn grace(&mut self, grace: Duration) -> &mut Self {
        self.grace = Some(grace);
        self
    }
    /// Sets the size of the kept output tails.
    pub fn tail_bytes(&mut self, n: usize) -> &mut Self {
        self.tail_bytes = n;
        self
    }
}

/// Runs each task as a command.
#[derive(Clone, Debug)]
pub struct ProcessDriver {
    cfg: Arc<ProcessConfig>,
}

impl ProcessDriver {
    /// A driver with these settings.
    pub fn new(cfg: ProcessConfig) -> Self {
        ProcessDriver { cfg: Arc::new(cfg) }
    }

    /// As an `Arc<dyn Driver>`.
    pub fn shared(self) -> Arc<dyn Driver> {
        Arc::new(self)
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &str {
        "process"
    }

    async fn start(&self, ctx: AgentContext) -> Result<Arc<dyn AgentHandle>, DriverError> {
        reaper::ensure_started();
        Ok(Arc::new(ProcessAgent {
            cfg: self.cfg.clone(),
            grace: self.cfg.grace.unwrap_or(ctx.grace),
            link: ctx.link,
        }))
    }
}

struct ProcessAgent {
    cfg: Arc<ProcessConfig>,
    grace: Duration,
    link: AgentLink,
}

/// A command resolved from a payload.
#[derive(Debug, PartialEq)]
pub(crate) struct CommandLine {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<PathBuf>,
}

fn strings(v: &Value, field: &str) -> Result<Vec<String>, TaskError> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(TaskError::permanent(format!(
                    "payload field `{field}`: expected strings, found {other}"
                ))),
            })
            .collect(),
        other => Err(TaskError::permanent(format!(
            "payload field `{field}`: expected an array of strings, found {other}"
        ))),
    }
}

fn shell(line: &str) -> (String, Vec<String>) {
    ("/bin/sh".into(), vec!["-c".into(), line.into()])
}

/// Resolves the command of a payload: a string is a shell line; an object has `command`
/// (a program, or a shell line when it holds whitespace and no `args` are given, or when
/// `shell` is true), `args`, `env` and `cwd`.
pub(crate) fn command_for(cfg: &ProcessConfig, payload: &Value) -> Result<CommandLine, TaskError> {
    let mut env: Vec<(String, String)> = cfg
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (program, args, cwd) = match payload {
        Value::String(line) if cfg.program.is_none() => {
            let (p, a) = shell(line);
            (p, a, None)
        }
        Value::Object(map) => {
            let extra_args = match map.get("args") {
                Some(v) => Some(strings(v, "args")?),
                None => None,
            };
            if let Some(e) = map.get("env") {
                let Value::Object(vars) = e else {
                    return Err(TaskError::permanent(
                        "payload field `env`: expected an object of strings",
                    ));
                };
                for (k, v) in vars {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    env.push((k.clone(), v));
                }
            }
            let cwd = match map.get("cwd") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(PathBuf::from(s)),
                Some(other) => {
                    return Err(TaskError::permanent(format!(
                        "payload field `cwd`: expected a string, found {other}"
                    )))
                }
            };
            let use_shell = matches!(map.get("shell"), Some(Value::Bool(true)));
            match (map.get("command"), &cfg.program) {
                (Some(Value::String(c)), _) => {
                    if use_shell || (extra_args.is_none() && c.trim().contains(char::is_whitespace))
                    {
                        let (p, a) = shell(c);
                        (p, a, cwd)
                    } else {
                        (c.clone(), extra_args.unwrap_or_default(), cwd)
                    }
                }
                (Some(other), _) => {
                    return Err(TaskError::permanent(format!(
                        "payload field `command`: expected a string, found {other}"
                    )))
                }
                (None, Some(p)) => {
                    let mut a = cfg.args.clone();
                    a.extend(extra_args.unwrap_or_default());
                    (p.clone(), a, cwd)
                }
                (None, None) => {
                    return Err(TaskError::permanent(
                        "payload: missing field `command` (a process task needs a command)",
                    ))
                }
            }
        }
        _ => match &cfg.program {
            Some(p) => (p.clone(), cfg.args.clone(), None),
            None => {
                return Err(TaskError::permanent(format!(
                    "payload: expected an object with `command` or a command line string, found {payload}"
                )))
            }
        },
    };
    if program.is_empty() {
        return Err(TaskError::permanent("payload field `command` is empty"));
    }
    Ok(CommandLine {
        program,
        args,
        env,
        cwd: cwd.or_else(|| cfg.cwd.clone()),
    })
}

/// Kills the whole group if the attempt is dropped before the group was cleaned up.
struct GroupGuard {
    pgid: u32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            reaper::kill_group(self.pgid, libc::SIGKILL);
            reaper::unregister(self.pgid);
        }
    }
}

pub(crate) fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

#[async_trait]
impl AgentHandle for ProcessAgent {
    async fn execute(&self, t: TaskContext) -> Result<Value, TaskError> {
        let cl = command_for(&self.cfg, &t.payload)?;
        // A bare name is looked up on the PATH the child will have (see `which`).
        let path_var = cl
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| std::ffi::OsString::from(v))
            .or_else(|| std::env::var_os("PATH"));
        let resolved = path_var
            .as_deref()
            .and_then(|p| which::resolve(&cl.program, p));
        // std's Command: where the fast path is refused, or to let the system search PATH.
        let std_spawn = |program: &std::ffi::OsStr| {
            let mut cmd = tokio::process::Command::new(program);
            cmd.arg0(&cl.program)
                .args(&cl.args)
                .envs(cl.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(false);
            if let Some(cwd) = &cl.cwd {
                cmd.current_dir(cwd);
            }
            cmd.spawn().map(Proc::Std)
        };
        // The file to execute: a path as given, or the one found on the PATH.
        let file: Option<&std::ffi::OsStr> = if cl.program.contains('/') {
            Some(std::ffi::OsStr::new(&cl.program))
        } else {
            resolved.as_deref().map(|p| p.as_os_str())
        };
        let spawned = match file {
            Some(f) => match spawn::start(&spawn::Command {
                path: f,
                arg0: &cl.program,
                args: &cl.args,
                env: &cl.env,
                cwd: cl.cwd.as_deref(),
            }) {
                Ok(Some(c)) => Ok(Proc::Fast(c)),
                Ok(None) => std_spawn(f),
                // A remembered PATH answer (never a name with `/`) that no longer holds:
                // forget it and let the system search again.
                Err(e) if resolved.is_some() => {
                    tracing::debug!(
                        "`{}` at {}: {e}; searching PATH again",
                        cl.program,
                        f.to_string_lossy()
                    );
                    if let Some(pv) = &path_var {
                        which::forget(&cl.program, pv);
                    }
                    std_spawn(std::ffi::OsStr::new(&cl.program))
                }
                Err(e) => Err(e),
            },
            None => std_spawn(std::ffi::OsStr::new(&cl.program)),
        };
        let mut child = spawned.map_err(|e| {
            let mut err = TaskError::new(format!("cannot start `{}`: {e}", cl.program));
            err.retryable = !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidInput
            );
            err
        })?;
        let pgid = child.id();
        warm_lookup(&cl.env);
        reaper::register(pgid);
        let mut guard = GroupGuard { pgid, armed: true };

        let (mut out, mut err) = child.pipes();
        let mut out_tail = Tail::new(self.cfg.tail_bytes);
        let mut err_tail = Tail::new(self.cfg.tail_bytes);
        let mut obuf = Vec::with_capacity(8192);
        let mut ebuf = Vec::with_capacity(8192);
        let mut term_at: Option<Instant> = None;
        let mut killed = false;
        let far = Instant::now() + Duration::from_secs(86400 * 365);

        let status = loop {
            let kill_at = match term_at {
                Some(t) if !killed => t + self.grace,
                _ => far,
            };
            tokio::select! {
                r = read_some(&mut out, &mut obuf) => {
                    if let Some(n) = r { out_tail.push(&obuf[..n]); self.link.output(t.task, Stream::Stdout, &obuf[..n]); } else { out = None; }
                }
                r = read_some(&mut err, &mut ebuf) => {
                    if let Some(n) = r { err_tail.push(&ebuf[..n]); self.link.output(t.task, Stream::Stderr, &ebuf[..n]); } else { err = None; }
                }
                s = child.wait() => break s,
                _ = t.cancel.cancelled(), if term_at.is_none() => {
                    reaper::kill_group(pgid, libc::SIGTERM);
                    term_at = Some(Instant::now());
                }
                _ = tokio::time::sleep_until(kill_at), if term_at.is_some() && !killed => {
                    reaper::kill_group(pgid, libc::SIGKILL);
                    killed = true;
                }
            }
        };
        // The leader is gone: whatever is left of its group goes too, then the pipes drain.
        reaper::kill_group(pgid, libc::SIGKILL);
        let drain_until = Instant::now() + Duration::from_millis(500);
        while out.is_some() || err.is_some() {
            tokio::select! {
                r = read_some(&mut out, &mut obuf) => match r { Some(n) => { out_tail.push(&obuf[..n]); self.link.output(t.task, Stream::Stdout, &obuf[..n]); } None => out = None },
                r = read_some(&mut err, &mut ebuf) => match r { Some(n) => { err_tail.push(&ebuf[..n]); self.link.output(t.task, Stream::Stderr, &ebuf[..n]); } None => err = None },
                _ = tokio::time::sleep_until(drain_until) => break,
            }
        }
        reaper::unregister(pgid);
        guard.armed = false;

        let status = status
            .map_err(|e| TaskError::new(format!("waiting for `{}` failed: {e}", cl.program)))?;
        let stdout = out_tail.into_string();
        let stderr = err_tail.into_string();
        if status.success() {
            Ok(json!({"exit_code": 0, "stdout": stdout, "stderr": stderr}))
        } else {
            let mut message = format!("`{}` {}", cl.program, describe(&status));
            if let Some(last) = stderr.lines().rev().find(|l| !l.trim().is_empty()) {
                message.push_str(": ");
                message.push_str(last.trim());
            }
            Err(TaskError {
                message,
                retryable: true,
                exit_code: status.code(),
                detail: Some(json!({"stdout": stdout, "stderr": stderr})),
            })
        }
    }

    async fn stop(&self, _mode: ShutdownMode) {}
}

/// Looks `$HIVE_OUTPUTS` up once while the command runs (the file rarely exists): the
/// executor's check after the exit then finds the name in the kernel's cache of lookups
/// instead of searching the directory on disk, on the way to the next step's start.
fn warm_lookup(env: &[(String, String)]) {
    if let Some((_, p)) = env.iter().rev().find(|(k, _)| k == "HIVE_OUTPUTS") {
        if let Ok(c) = std::ffi::CString::new(p.as_bytes()) {
            // SAFETY: a NUL-terminated path; faccessat only reads it.
            unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::F_OK, 0) };
        }
    }
}

/// Reads a chunk into `buf` (replacing what it held, never zeroing it first); `None` at EOF
/// or error. Pending forever on a closed stream.
async fn read_some(r: &mut Option<Reader>, buf: &mut Vec<u8>) -> Option<usize> {
    match r {
        Some(r) => {
            buf.clear();
            match r.read_buf(buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(n),
            }
        }
        None => std::future::pending().await,
    }
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// A started command: by the fast path (see `spawn`) or by std where that is refused.
enum Proc {
    Fast(spawn::Child),
    Std(tokio::process::Child),
}

impl Proc {
    fn id(&self) -> u32 {
        match self {
            Proc::Fast(c) => c.id(),
            Proc::Std(c) => c.id().unwrap_or(0),
        }
    }

    fn pipes(&mut self) -> (Option<Reader>, Option<Reader>) {
        fn boxed<R: tokio::io::AsyncRead + Send + Unpin + 'static>(r: Option<R>) -> Option<Reader> {
            r.map(|r| Box::new(r) as Reader)
        }
        match self {
            Proc::Fast(c) => (boxed(c.stdout.take()), boxed(c.stderr.take())),
            Proc::Std(c) => (boxed(c.stdout.take()), boxed(c.stderr.take())),
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Proc::Fast(c) => c.wait().await,
            Proc::Std(c) => c.wait().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_forms_resolve_to_commands() {
        let cfg = ProcessConfig::default();
        let c = command_for(&cfg, &json!({"command": "echo", "args": ["a", 1]})).expect("ok");
        assert_eq!(
            (c.program.as_str(), c.args.clone()),
            ("echo", vec!["a".to_string(), "1".into()])
        );
        let c = command_for(&cfg, &json!({"command": "sleep 1 && true"})).expect("ok");
        assert_eq!(c.program, "/bin/sh");
        assert_eq!(c.args, vec!["-c", "sleep 1 && true"]);
        let c = command_for(&cfg, &json!("echo hi")).expect("ok");
        assert_eq!(c.args, vec!["-c", "echo hi"]);
        let e = command_for(&cfg, &json!({"args": []})).expect_err("no command");
        assert!(e.message.contains("missing field `command`"), "{e}");
        assert!(!e.retryable);
        let e = command_for(&cfg, &json!({"command": "x", "args": "y"})).expect_err("bad args");
        assert!(e.message.contains("`args`"), "{e}");
    }

    #[test]
    fn pool_program_takes_payload_args() {
        let mut cfg = ProcessConfig::default();
        cfg.program("python3").args(["-c"]);
        let c = command_for(&cfg, &json!({"args": ["print(1)"]})).expect("ok");
        assert_eq!(c.program, "python3");
        assert_eq!(c.args, vec!["-c", "print(1)"]);
    }
}
