//! The one typed event bus: every lifecycle transition is an [`Event`]; sinks (JSONL, health,
//! plugins, the CLI) subscribe to the same stream.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use crate::agent::AgentState;
use crate::ids::{AgentId, BatchId, TaskId, Timestamp};
use crate::task::{Status, Target};

/// Which output stream of a command a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Severity of an agent's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something is wrong.
    Error,
}

/// A lifecycle transition or a report from an agent.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// An agent was registered (state Starting).
    AgentSpawned {
        /// The agent.
        agent: AgentId,
        /// Its role.
        role: Arc<str>,
        /// Its driver's name.
        driver: Arc<str>,
        /// Tasks in flight at once.
        capacity: u32,
    },
    /// An agent moved from one state to another.
    AgentStateChanged {
        /// The agent.
        agent: AgentId,
        /// Its role.
        role: Arc<str>,
        /// The state it left.
        from: AgentState,
        /// The state it entered.
        to: AgentState,
    },
    /// An agent failed (crash, lost lease, failed start).
    AgentFailed {
        /// The agent.
        agent: AgentId,
        /// Its role.
        role: Arc<str>,
        /// Why.
        reason: Arc<str>,
        /// Tasks it was running (they go back to their retry policy).
        in_flight: u32,
    },
    /// A task entered the kernel.
    TaskSubmitted {
        /// The task.
        task: TaskId,
        /// Its label.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<Arc<str>>,
        /// Where it may run.
        target: Target,
        /// Its priority.
        priority: i32,
        /// Its batch.
        #[serde(skip_serializing_if = "Option::is_none")]
        batch: Option<BatchId>,
    },
    /// A task was handed to an agent.
    TaskDelegated {
        /// The task.
        task: TaskId,
        /// Its label.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<Arc<str>>,
        /// Where it was headed.
        target: Target,
        /// The agent.
        agent: AgentId,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// An attempt started on its agent.
    TaskStarted {
        /// The task.
        task: TaskId,
        /// Its label.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<Arc<str>>,
        /// Where it was headed.
        target: Target,
        /// The agent.
        agent: AgentId,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// A chunk of a command's output.
    TaskOutput {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: AgentId,
        /// Which stream.
        stream: Stream,
        /// The bytes (lossy UTF-8).
        chunk: String,
    },
    /// An attempt failed and the task will be tried again after `delay_ms`.
    TaskRetrying {
        /// The task.
        task: TaskId,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next attempt.
        delay_ms: u64,
        /// Why the attempt failed.
        error: String,
    },
    /// A task ended (exactly once per task).
    TaskCompleted {
        /// The task.
        task: TaskId,
        /// Its label.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<Arc<str>>,
        /// How it ended.
        status: Status,
        /// Attempts made.
        attempts: u32,
        /// The agent of the last attempt.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<AgentId>,
        /// Run time of the last attempt, in milliseconds.
        duration_ms: f64,
        /// The error, if it did not succeed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A log line from an agent (or from its driver about it).
    AgentLog {
        /// The agent.
        agent: AgentId,
        /// The task it concerns.
        #[serde(skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
        /// Severity.
        level: LogLevel,
        /// The text.
        message: String,
    },
    /// A log line from a plugin.
    PluginLog {
        /// The plugin.
        plugin: Arc<str>,
        /// Severity.
        level: LogLevel,
        /// The text.
        message: String,
    },
    /// A number reported by a plugin.
    PluginMetric {
        /// The plugin.
        plugin: Arc<str>,
        /// Its name.
        name: String,
        /// Its value.
        value: f64,
    },
    /// A plugin's hook failed or panicked (contained; counted towards quarantine).
    PluginError {
        /// The plugin.
        plugin: Arc<str>,
        /// The hook.
        hook: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A plugin failed too often and gets no more calls.
    PluginQuarantined {
        /// The plugin.
        plugin: Arc<str>,
        /// Why.
        reason: String,
    },
    /// A run of a plan started.
    RunStarted {
        /// The run.
        run: Arc<str>,
        /// The plan.
        plan: Arc<str>,
    },
    /// A run of a plan finished.
    RunFinished {
        /// The run.
        run: Arc<str>,
        /// The plan.
        plan: Arc<str>,
        /// Its final state.
        state: Arc<str>,
    },
    /// An attempt of a task ended (one per attempt, retries included; before the task's
    /// `task_retrying` or `task_completed`).
    AttemptFinished {
        /// The task.
        task: TaskId,
        /// Its label.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<Arc<str>>,
        /// The role of the agent that ran it.
        role: Arc<str>,
        /// The agent.
        agent: AgentId,
        /// 1-based attempt number.
        attempt: u32,
        /// How it ended.
        status: crate::task::AttemptStatus,
        /// Wait before it started (since submission, or since its retry was due), ms.
        queue_ms: f64,
        /// Run time, ms.
        run_ms: f64,
        /// The error, if it did not succeed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Whether the task will be tried again.
        will_retry: bool,
    },
    /// A plugin's `status()` when the kernel shut down (after its observers drained): the
    /// last word of each plugin in the event log.
    PluginStatus {
        /// The plugin.
        plugin: Arc<str>,
        /// Its `status()` JSON.
        status: serde_json::Value,
    },
    /// A named event of a plugin (`sla_breach`, `scaled_up`, `breaker_opened`, ...).
    PluginEvent {
        /// The plugin.
        plugin: Arc<str>,
        /// The event's name.
        name: String,
        /// Its data (a JSON object).
        data: serde_json::Value,
    },
    /// A number reported by an agent.
    Metric {
        /// The agent.
        agent: AgentId,
        /// The task it concerns.
        #[serde(skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
        /// Its name.
        name: String,
        /// Its value.
        value: f64,
    },
}

/// Event kinds as bits, for interest filtering: an event is built only if some subscriber
/// wants its kind.
pub(crate) mod kind {
    pub(crate) const AGENT_SPAWNED: u64 = 1 << 0;
    pub(crate) const AGENT_STATE_CHANGED: u64 = 1 << 1;
    pub(crate) const AGENT_FAILED: u64 = 1 << 2;
    pub(crate) const TASK_SUBMITTED: u64 = 1 << 3;
    pub(crate) const TASK_DELEGATED: u64 = 1 << 4;
    pub(crate) const TASK_STARTED: u64 = 1 << 5;
    pub(crate) const TASK_OUTPUT: u64 = 1 << 6;
    pub(crate) const TASK_RETRYING: u64 = 1 << 7;
    pub(crate) const TASK_COMPLETED: u64 = 1 << 8;
    pub(crate) const AGENT_LOG: u64 = 1 << 9;
    pub(crate) const METRIC: u64 = 1 << 10;
    pub(crate) const PLUGIN: u64 = 1 << 11;
    pub(crate) const RUN: u64 = 1 << 12;
    pub(crate) const ATTEMPT: u64 = 1 << 13;
    pub(crate) const ALL: u64 = (1 << 14) - 1;
}

impl Event {
    /// The kind bit of this event.
    pub(crate) fn kind(&self) -> u64 {
        match self {
            Event::AgentSpawned { .. } => kind::AGENT_SPAWNED,
            Event::AgentStateChanged { .. } => kind::AGENT_STATE_CHANGED,
            Event::AgentFailed { .. } => kind::AGENT_FAILED,
            Event::TaskSubmitted { .. } => kind::TASK_SUBMITTED,
            Event::TaskDelegated { .. } => kind::TASK_DELEGATED,
            Event::TaskStarted { .. } => kind::TASK_STARTED,
            Event::TaskOutput { .. } => kind::TASK_OUTPUT,
            Event::TaskRetrying { .. } => kind::TASK_RETRYING,
            Event::TaskCompleted { .. } => kind::TASK_COMPLETED,
            Event::AgentLog { .. } => kind::AGENT_LOG,
            Event::Metric { .. } | Event::PluginMetric { .. } => kind::METRIC,
            Event::PluginLog { .. }
            | Event::PluginError { .. }
            | Event::PluginQuarantined { .. }
            | Event::PluginEvent { .. }
            | Event::PluginStatus { .. } => kind::PLUGIN,
            Event::AttemptFinished { .. } => kind::ATTEMPT,
            Event::RunStarted { .. } | Event::RunFinished { .. } => kind::RUN,
        }
    }
}

/// An [`Event`] with its sequence number and time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventEnvelope {
    /// Strictly increasing per kernel (gaps mean nobody was listening).
    pub seq: u64,
    /// When it was emitted, to the resolution of the coarse real-time clock (about 1 to
    /// 4 ms); `seq` gives the order.
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Which kinds of events the live subscriptions want (a count per kind bit).
#[derive(Debug, Default)]
struct Interest {
    counts: parking_lot::Mutex<[usize; 32]>,
    mask: AtomicU64,
}

impl Interest {
    fn add(&self, mask: u64, delta: isize) {
        let mut c = self.counts.lock();
        let mut union = 0u64;
        for (bit, n) in c.iter_mut().enumerate() {
            if mask & (1 << bit) != 0 {
                *n = n.saturating_add_signed(delta);
            }
            if *n > 0 {
                union |= 1 << bit;
            }
        }
        self.mask.store(union, Ordering::Release);
    }
}

/// The bus. Cheap to emit on when nobody listens (or nobody wants that kind of event); each
/// subscriber has its own bounded backlog and a slow one loses the oldest events (counted
/// per subscriber and in [`EventBus::lagged`]), never slows the emitter.
#[derive(Debug)]
pub(crate) struct EventBus {
    tx: broadcast::Sender<Arc<EventEnvelope>>,
    seq: AtomicU64,
    lagged: Arc<AtomicU64>,
    interest: Arc<Interest>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        EventBus {
            tx,
            seq: AtomicU64::new(0),
            lagged: Arc::new(AtomicU64::new(0)),
            interest: Arc::new(Interest::default()),
        }
    }

    /// Whether some subscriber wants events of `kind`.
    #[inline]
    pub(crate) fn wants(&self, kind: u64) -> bool {
        self.interest.mask.load(Ordering::Acquire) & kind != 0
    }

    /// Emits an event of `kind` built lazily: when nobody wants that kind, `make` is not
    /// called.
    #[inline]
    pub(crate) fn emit_with(&self, kind: u64, make: impl FnOnce() -> Event) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if !self.wants(kind) {
            return;
        }
        let env = EventEnvelope {
            seq,
            at: Timestamp::now_coarse(),
            event: make(),
        };
        let _ = self.tx.send(Arc::new(env));
    }

    pub(crate) fn emit(&self, event: Event) {
        let k = event.kind();
        self.emit_with(k, || event)
    }

    /// A subscription to every kind of event.
    pub(crate) fn subscribe(&self) -> EventStream {
        self.subscribe_to(kind::ALL)
    }

    /// A subscription to the kinds in `mask` (others may still arrive; they are filtered on
    /// receipt).
    pub(crate) fn subscribe_to(&self, mask: u64) -> EventStream {
        let rx = self.tx.subscribe();
        self.interest.add(mask, 1);
        EventStream {
            rx,
            mask,
            lost: 0,
            lagged: self.lagged.clone(),
            interest: self.interest.clone(),
        }
    }

    pub(crate) fn emitted(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    pub(crate) fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// A subscription to the bus.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<Arc<EventEnvelope>>,
    mask: u64,
    lost: u64,
    lagged: Arc<AtomicU64>,
    interest: Arc<Interest>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.interest.add(self.mask, -1);
    }
}

impl EventStream {
    fn wanted(&self, e: &EventEnvelope) -> bool {
        e.event.kind() & self.mask != 0
    }

    fn lag(&mut self, n: u64) {
        self.lost += n;
        self.lagged.fetch_add(n, Ordering::Relaxed);
    }

    /// The next event; `None` once the kernel is gone. Events lost to lag are counted and
    /// skipped.
    pub async fn recv(&mut self) -> Option<Arc<EventEnvelope>> {
        loop {
            match self.rx.recv().await {
                Ok(e) if self.wanted(&e) => return Some(e),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => self.lag(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is buffered.
    pub fn try_recv(&mut self) -> Option<Arc<EventEnvelope>> {
        loop {
            match self.rx.try_recv() {
                Ok(e) if self.wanted(&e) => return Some(e),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lag(n),
                Err(_) => return None,
            }
        }
    }

    /// Events this subscription lost because it fell behind.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// Writes every event as one JSON line to a file, until the kernel shuts down.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    done: tokio::task::JoinHandle<std::io::Result<u64>>,
}

impl JsonlSink {
    pub(crate) async fn start(
        mut stream: EventStream,
        path: &Path,
        stop: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let done = tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(file);
            let mut written = 0u64;
            let mut line = Vec::with_capacity(256);
            loop {
                let ev = tokio::select! {
                    biased;
                    ev = stream.recv() => ev,
                    _ = stop.cancelled() => None,
                };
                let Some(ev) = ev else { break };
                let mut next = Some(ev);
                while let Some(ev) = next {
                    line.clear();
                    serde_json::to_writer(&mut line, &*ev)?;
                    line.push(b'\n');
                    out.write_all(&line).await?;
                    written += 1;
                    next = stream.try_recv();
                }
                out.flush().await?;
            }
            while let Some(ev) = stream.try_recv() {
                line.clear();
                serde_json::to_writer(&mut line, &*ev)?;
                line.push(b'\n');
                out.write_all(&line).await?;
                written += 1;
            }
            out.flush().await?;
            Ok(written)
        });
        Ok(JsonlSink {
            path: path.to_owned(),
            done,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the sink has written everything (after the kernel's shutdown) and returns
    /// the number of lines written.
    pub async fn finish(self) -> std::io::Result<u64> {
        match self.done.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
