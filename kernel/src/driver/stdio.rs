//! The `stdio` driver: a persistent agent process speaking JSON Lines on stdin/stdout
//! (docs/agent-protocol.md). Any valid line renews the lease; a malformed one is logged and
//! ignored; the process exiting fails the agent and its in-flight tasks.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use super::output::Tail;
use super::reaper;
use super::{AgentContext, AgentHandle, AgentLink, Driver, DriverError, TaskContext};
use crate::agent::ShutdownMode;
use crate::event::LogLevel;
use crate::ids::{AgentId, TaskId};
use crate::task::TaskError;

/// The protocol version spoken.
pub const PROTOCOL_VERSION: u32 = 1;
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Settings of a `stdio` driver (one per pool).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StdioConfig {
    /// The agent program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment added to the kernel's.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: Option<PathBuf>,
    /// How often the agent must send something.
    pub heartbeat: Duration,
    /// Silence longer than this fails the agent (also the limit for `ready`).
    pub lease: Duration,
    /// Cancel-acknowledgement and stop grace; the kernel's when `None`.
    pub grace: Option<Duration>,
}

impl StdioConfig {
    /// An agent run as `program`.
    pub fn new(program: impl Into<String>) -> Self {
        StdioConfig {
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            grace: None,
        }
    }
    /// Sets the arguments.
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
    /// Sets the heartbeat period and the lease.
    pub fn liveness(&mut self, heartbeat: Duration, lease: Duration) -> &mut Self {
        self.heartbeat = heartbeat;
        self.lease = lease;
        self
    }
    /// Sets the grace period.
    pub fn grace(&mut self, grace: Duration) -> &mut Self {
        self.grace = Some(grace);
        self
    }
}

/// Runs agents as JSON Lines processes.
#[derive(Clone, Debug)]
pub struct StdioDriver {
    cfg: Arc<StdioConfig>,
}

impl StdioDriver {
    /// A driver with these settings.
    pub fn new(cfg: StdioConfig) -> Self {
        StdioDriver { cfg: Arc::new(cfg) }
    }

    /// As an `Arc<dyn Driver>`.
    pub fn shared(self) -> Arc<dyn Driver> {
        Arc::new(self)
    }
}

type Reply = Result<Value, TaskError>;

struct Shared {
    agent: AgentId,
    link: AgentLink,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    stopping: AtomicBool,
    ready: Mutex<Option<oneshot::Sender<()>>>,
}

struct StdioAgent {
    shared: Arc<Shared>,
    pgid: u32,
    grace: Duration,
    tx: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    exited: watch::Receiver<Option<String>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum HostMsg<'a> {
    Hello {
        protocol: u32,
        agent_id: u64,
        role: &'a str,
        heartbeat_ms: u64,
        lease_ms: u64,
    },
    Task {
        id: u64,
        attempt: u32,
        payload: &'a Value,
        timeout_ms: u64,
    },
    Cancel {
        id: u64,
    },
    Shutdown,
}

fn line(msg: &HostMsg<'_>) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    v.push(b'\n');
    v
}

fn clip(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &s[..end], s.len())
    }
}

impl Shared {
    fn malformed(&self, raw: &str, why: &str) {
        self.link.log(
            LogLevel::Warn,
            None,
            format!("malformed line from {} ({why}): {}", self.agent, clip(raw)),
        );
    }

    /// Handles one line from the agent's stdout.
    fn on_line(&self, raw: &str) {
        let raw = raw.trim_end_matches(['\r', '\n']);
        if raw.trim().is_empty() {
            return;
        }
        let v: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => return self.malformed(raw, &format!("not JSON: {e}")),
        };
        let Some(obj) = v.as_object() else {
            return self.malformed(raw, "not a JSON object");
        };
        let Some(kind) = obj.get("type").and_then(Value::as_str) else {
            return self.malformed(raw, "no string field `type`");
        };
        let task = obj.get("id").and_then(Value::as_u64);
        match kind {
            "ready" => {
                self.link.renew_lease();
                if let Some(tx) = self.ready.lock().take() {
                    let _ = tx.send(());
                }
            }
            "heartbeat" => self.link.renew_lease(),
            "result" => {
                let Some(id) = task else {
                    return self.malformed(raw, "result without an integer `id`");
                };
                let reply = match obj.get("ok") {
                    Some(Value::Bool(true)) => {
                        Ok(obj.get("output").cloned().unwrap_or(Value::Null))
                    }
                    Some(Value::Bool(false)) => {
                        let message = match obj.get("error") {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None => "agent reported failure".into(),
                        };
                        Err(TaskError {
                            message,
                            retryable: obj
                                .get("retryable")
                                .and_then(Value::as_bool)
                                .unwrap_or(true),
                            exit_code: None,
                            detail: obj.get("detail").cloned(),
                        })
                    }
                    _ => return self.malformed(raw, "result without a boolean `ok`"),
                };
                self.link.renew_lease();
                match self.pending.lock().remove(&id) {
                    Some(tx) => {
                        let _ = tx.send(reply);
                    }
                    None => self.link.log(
                        LogLevel::Warn,
                        Some(TaskId(id)),
                        format!(
                            "{} sent a result for task-{id}, which it is not running (ignored)",
                            self.agent
                        ),
                    ),
                }
            }
            "log" => {
                let level = match obj.get("level").and_then(Value::as_str) {
                    Some("trace") => LogLevel::Trace,
                    Some("debug") => LogLevel::Debug,
                    Some("warn") | Some("warning") => LogLevel::Warn,
                    Some("error") => LogLevel::Error,
                    _ => LogLevel::Info,
                };
                let message = match obj.get("message") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => return self.malformed(raw, "log without `message`"),
                };
                self.link.renew_lease();
                self.link.log(level, task.map(TaskId), message);
            }
            "metric" => {
                let (Some(name), Some(value)) = (
                    obj.get("name").and_then(Value::as_str),
                    obj.get("value").and_then(Value::as_f64),
                ) else {
                    return self
                        .malformed(raw, "metric needs a string `name` and a number `value`");
                };
                self.link.renew_lease();
                self.link.metric(name, value, task.map(TaskId));
            }
            other => {
                self.link.renew_lease();
                self.link.log(
                    LogLevel::Debug,
                    None,
                    format!(
                        "{} sent a message of unknown type `{other}` (ignored)",
                        self.agent
                    ),
                );
            }
        }
    }
}

/// Reads one line of at most MAX_LINE bytes (longer ones are cut and the rest skipped).
/// `None` at EOF.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    let mut overflow = false;
    loop {
        let chunk = match r.fill_buf().await {
            Ok(c) => c,
            Err(_) => return None,
        };
        if chunk.is_empty() {
            return if buf.is_empty() && !overflow {
                None
            } else {
                Some(())
            };
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !overflow {
            let room = MAX_LINE.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..take.min(room)]);
            overflow = take > room;
        }
        r.consume(take);
        if done {
            return Some(());
        }
    }
}

#[async_trait]
impl Driver for StdioDriver {
    fn name(&self) -> &str {
        "stdio"
    }

    async fn start(&self, ctx: AgentContext) -> Result<Arc<dyn AgentHandle>, DriverError> {
        reaper::ensure_started();
        let cfg = &self.cfg;
        let mut cmd = tokio::process::Command::new(&cfg.program);
        cmd.args(&cfg.args)
            .envs(&cfg.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &cfg.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(|e| {
            DriverError::new(format!(
                "cannot start stdio agent `{}`{}: {e}",
                cfg.program,
                cfg.cwd
                    .as_ref()
                    .map(|d| format!(" in {}", d.display()))
                    .unwrap_or_default()
            ))
        })?;
        let pgid = child.id().unwrap_or(0);
        reaper::register(pgid);
        let grace = cfg.grace.unwrap_or(ctx.grace);
        let (ready_tx, ready_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            agent: ctx.agent,
            link: ctx.link.clone(),
            pending: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            ready: Mutex::new(Some(ready_tx)),
        });

        // Writer: one task owns stdin.
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let mut stdin = child.stdin.take();
        tokio::spawn(async move {
            let Some(w) = stdin.as_mut() else { return };
            while let Some(first) = rx.recv().await {
                if w.write_all(&first).await.is_err() {
                    return;
                }
                while let Ok(more) = rx.try_recv() {
                    if w.write_all(&more).await.is_err() {
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
            // Channel closed: dropping stdin sends EOF.
        });

        // Reader of stdout.
        let stdout = child.stdout.take();
        let rshared = shared.clone();
        let reader = tokio::spawn(async move {
            let Some(out) = stdout else { return };
            let mut r = BufReader::with_capacity(64 * 1024, out);
            let mut buf = Vec::with_capacity(1024);
            while read_line(&mut r, &mut buf).await.is_some() {
                rshared.on_line(&String::from_utf8_lossy(&buf));
            }
        });

        // Reader of stderr: every line is a warn log; the tail explains a failed start.
        let stderr_tail = Arc::new(Mutex::new(Tail::new(4096)));
        if let Some(err) = child.stderr.take() {
            let link = ctx.link.clone();
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(err);
                let mut buf = Vec::new();
                while read_line(&mut r, &mut buf).await.is_some() {
                    tail.lock().push(&buf);
                    let text = String::from_utf8_lossy(&buf);
                    link.log(LogLevel::Warn, None, format!("stderr: {}", text.trim_end()));
                }
            });
        }

        // Waiter: the process's exit fails the agent (unless we are stopping it).
        let (exit_tx, exit_rx) = watch::channel(None);
        let wshared = shared.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            reaper::kill_group(pgid, libc::SIGKILL);
            // Let the reader deliver results written before the exit.
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
            reaper::unregister(pgid);
            let why = match status {
                Ok(s) => format!("agent process exited ({})", super::process::describe(&s)),
                Err(e) => format!("agent process lost: {e}"),
            };
            // Fail the agent first, so its in-flight attempts end as "agent lost".
            if !wshared.stopping.load(Ordering::Acquire) {
                wshared.link.fail(why.clone());
            }
            let orphans: Vec<_> = wshared.pending.lock().drain().collect();
            for (_, tx) in orphans {
                let _ = tx.send(Err(TaskError::new(why.clone())));
            }
            let _ = exit_tx.send(Some(why));
        });

        let hello = HostMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent_id: ctx.agent.get(),
            role: &ctx.role,
            heartbeat_ms: cfg.heartbeat.as_millis() as u64,
            lease_ms: cfg.lease.as_millis() as u64,
        };
        let _ = tx.send(line(&hello));

        let agent = StdioAgent {
            shared,
            pgid,
            grace,
            tx: Mutex::new(Some(tx)),
            exited: exit_rx,
        };
        let mut exited = agent.exited.clone();
        let outcome = tokio::select! {
            r = ready_rx => r.map_err(|_| "the agent closed without sending ready".to_string()),
            r = exited.wait_for(|e| e.is_some()) => {
                Err(r.map(|v| v.clone().unwrap_or_default()).unwrap_or_else(|_| "the agent exited".into()))
            }
            _ = tokio::time::sleep(cfg.lease) => Err(format!("no `ready` within {:?}", cfg.lease)),
        };
        match outcome {
            Ok(()) => {
                ctx.link.set_lease(cfg.lease);
                Ok(Arc::new(agent))
            }
            Err(why) => {
                agent.shared.stopping.store(true, Ordering::Release);
                reaper::kill_group(pgid, libc::SIGKILL);
                let tail = std::mem::replace(&mut *stderr_tail.lock(), Tail::new(0)).into_string();
                let tail = tail.trim();
                Err(DriverError::new(if tail.is_empty() {
                    format!("stdio agent `{}` did not start: {why}", cfg.program)
                } else {
                    format!(
                        "stdio agent `{}` did not start: {why}; its stderr: {tail}",
                        cfg.program
                    )
                }))
            }
        }
    }
}

impl StdioAgent {
    fn send(&self, msg: &HostMsg<'_>) -> bool {
        match &*self.tx.lock() {
            Some(tx) => tx.send(line(msg)).is_ok(),
            None => false,
        }
    }

    fn exit_reason(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    async fn wait_exit(&self, within: Duration) -> bool {
        let mut ex = self.exited.clone();
        let done =
            tokio::time::timeout(within, async { ex.wait_for(|e| e.is_some()).await.is_ok() })
                .await;
        done.unwrap_or(false)
    }
}

#[async_trait]
impl AgentHandle for StdioAgent {
    async fn execute(&self, t: TaskContext) -> Result<Value, TaskError> {
        if let Some(why) = self.exit_reason() {
            return Err(TaskError::new(why));
        }
        let id = t.task.get();
        let (tx, mut rx) = oneshot::channel();
        self.shared.pending.lock().insert(id, tx);
        let sent = self.send(&HostMsg::Task {
            id,
            attempt: t.attempt,
            payload: &t.payload,
            timeout_ms: t.timeout.as_millis() as u64,
        });
        if !sent {
            self.shared.pending.lock().remove(&id);
            return Err(TaskError::new("the agent's stdin is closed"));
        }
        tokio::select! {
            r = &mut rx => return r.unwrap_or_else(|_| Err(TaskError::new("agent exited"))),
            _ = t.cancel.cancelled() => {}
        }
        // Cancelled (timeout, cancel, agent lost): ask the agent to stop, and keep the slot
        // until it acknowledges; an agent that does not is not trusted with more work.
        self.send(&HostMsg::Cancel { id });
        match tokio::time::timeout(self.grace, &mut rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(TaskError::new("agent exited")),
            Err(_) => {
                self.shared.pending.lock().remove(&id);
                self.shared.link.fail(format!(
                    "did not acknowledge the cancel of task-{id} within {:?}",
                    self.grace
                ));
                Err(TaskError::new("cancel not acknowledged"))
            }
        }
    }

    async fn stop(&self, mode: ShutdownMode) {
        self.shared.stopping.store(true, Ordering::Release);
        if mode == ShutdownMode::Graceful && self.exit_reason().is_none() {
            self.send(&HostMsg::Shutdown);
            self.tx.lock().take(); // EOF on stdin
            if self.wait_exit(self.grace).await {
                return;
            }
            reaper::kill_group(self.pgid, libc::SIGTERM);
            if self.wait_exit(self.grace).await {
                return;
            }
        }
        self.tx.lock().take();
        reaper::kill_group(self.pgid, libc::SIGKILL);
        self.wait_exit(Duration::from_secs(5)).await;
    }
}
