//! Durable state of plan runs: a SQLite database (WAL) in the state directory with runs,
//! steps, attempts, events and the step cache, written by one writer thread in batched
//! transactions, plus a JSON Lines event file per run, written by the executor before the
//! database (it is the write-ahead log of attempt starts). Layout of a state directory:
//!
//! ```text
//! .hive/state.db (+ -wal, -shm)     runs, steps, attempts, events, cache
//! .hive/runs/RUN_ID.jsonl           the run's events, one JSON object per line
//! .hive/runs/RUN_ID.lock            flock held by the process executing the run
//! .hive/runs/RUN_ID/                step scratch (outputs files)
//! ```

mod db;
mod gc;
mod journal;
mod lock;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::Timestamp;
use crate::task::Status;

pub use gc::{GcOptions, GcReport, GcRun};
pub(crate) use journal::{header_line as journal_header, Journal};
pub use lock::RunLock;
pub(crate) use lock::{new_run_id, valid_run_id};
pub(crate) use writer::{AttemptEnd, CacheEntry, Finish, Op, RunRow, StepRow, Update, Writer};

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state directory or a file in it could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database file is not a Hive state database (or is damaged).
    #[error("{}: the state database is corrupt or not a database ({message}); move it away or pass another --state-dir", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// Another process holds the database locked for longer than the busy timeout (5 s).
    #[error("{}: the state database is locked by another process (busy for more than 5 s)", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// Another SQLite error.
    #[error("{}: {message}", path.display())]
    Sql {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// No run has this id.
    #[error("no run `{0}` in this state directory (see `hive runs`)")]
    NoSuchRun(String),
    /// Another live process is executing this run.
    #[error("run `{run}` is being executed by another hive process{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    RunBusy {
        /// The run.
        run: String,
        /// The process holding its lock, if known.
        pid: Option<u32>,
    },
    /// The writer thread stopped (after an earlier error).
    #[error("the state writer stopped: {0}")]
    WriterGone(String),
}

macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident = $s:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum $name { $($(#[$vdoc])* $v),* }

        impl $name {
            /// The snake_case word stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }

            /// Parses the stored word.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$v),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum!(
    /// Where a run is: `pending -> running -> succeeded | failed | cancelled`; a run found
    /// `running` whose process is gone is shown as interrupted and can be resumed.
    RunState {
        /// Created, not started.
        Pending = "pending",
        /// Being executed (or interrupted, if no process holds its lock).
        Running = "running",
        /// Every step succeeded, was cached or skipped, or failed without being critical.
        Succeeded = "succeeded",
        /// A critical step failed, or steps were cancelled by an abort.
        Failed = "failed",
        /// Interrupted on purpose (Ctrl-C).
        Cancelled = "cancelled",
    }
);

word_enum!(
    /// Where a step is: `pending -> running [-> retrying -> running]... -> succeeded | failed |
    /// timed_out | cancelled`, or straight from `pending` to `skipped`, `cached` or
    /// `cancelled`.
    StepState {
        /// Waiting for its dependencies or a free slot.
        Pending = "pending",
        /// An attempt is in flight.
        Running = "running",
        /// An attempt failed; the next one waits for its backoff delay.
        Retrying = "retrying",
        /// It ran and succeeded.
        Succeeded = "succeeded",
        /// Its last attempt failed.
        Failed = "failed",
        /// Its last attempt ran out of time.
        TimedOut = "timed_out",
        /// Cancelled (an abort, or Ctrl-C).
        Cancelled = "cancelled",
        /// Not run: its condition was false, or a dependency failed or was skipped.
        Skipped = "skipped",
        /// Not run: an earlier identical success was reused.
        Cached = "cached",
    }
);

impl StepState {
    /// Succeeded, failed, timed out, cancelled, skipped or cached.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            StepState::Pending | StepState::Running | StepState::Retrying
        )
    }

    /// Succeeded or cached.
    pub fn is_success(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Cached)
    }

    /// Whether the state machine allows going from `self` to `to`.
    pub fn can_become(self, to: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, to),
            (
                Pending,
                Running | Skipped | Cached | Cancelled | Succeeded | Failed
            ) | (
                Running,
                Retrying | Succeeded | Failed | TimedOut | Cancelled
            ) | (Retrying, Running | Cancelled)
        )
    }

    /// The state of an ended kernel task.
    pub fn from_status(s: Status) -> StepState {
        match s {
            Status::Succeeded => StepState::Succeeded,
            Status::TimedOut => StepState::TimedOut,
            Status::Cancelled => StepState::Cancelled,
            Status::Skipped => StepState::Skipped,
            Status::Cached => StepState::Cached,
            _ => StepState::Failed,
        }
    }
}

impl RunState {
    /// Succeeded, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

/// An event of a plan run (in the events table, the run's JSONL file, and to listeners).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// 1, 2, 3... within the run (continued by resumes).
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// The run.
    pub run: Arc<str>,
    /// What happened.
    #[serde(flatten)]
    pub kind: RunEventKind,
}

/// What happened in a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunEventKind {
    /// The run started (or was resumed).
    RunStarted {
        /// The plan.
        plan_id: String,
        /// Steps of the plan.
        steps: usize,
        /// Whether this is a resume.
        resumed: bool,
    },
    /// An attempt of a step started (its start is on disk before the work begins).
    StepStarted {
        /// The step (`ID`, or `ID[N]` for an item of a `for_each`).
        step: Arc<str>,
        /// 1-based, counting the run's earlier attempts.
        attempt: u32,
    },
    /// An attempt failed; the step will be tried again after `delay_ms`.
    StepRetrying {
        /// The step.
        step: Arc<str>,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next attempt.
        delay_ms: u64,
        /// Why the attempt failed.
        error: String,
    },
    /// A `for_each` step fanned out.
    StepExpanded {
        /// The step.
        step: Arc<str>,
        /// Its items.
        items: usize,
    },
    /// A step ended (exactly once per step and run, resumes aside).
    StepFinished {
        /// The step.
        step: Arc<str>,
        /// How it ended.
        state: StepState,
        /// Attempts made so far in the run.
        attempts: u32,
        /// Run time of its last attempt, in milliseconds.
        duration_ms: f64,
        /// The exit status, for commands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Why it did not succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Its outputs (so that a success is complete in the JSONL file alone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outputs: Option<Value>,
    },
    /// The run ended.
    RunFinished {
        /// How.
        state: RunState,
        /// Wall time of this execution (since the start or resume), in milliseconds.
        duration_ms: f64,
    },
}

impl RunEventKind {
    /// The `type` word.
    pub fn type_name(&self) -> &'static str {
        match self {
            RunEventKind::RunStarted { .. } => "run_started",
            RunEventKind::StepStarted { .. } => "step_started",
            RunEventKind::StepRetrying { .. } => "step_retrying",
            RunEventKind::StepExpanded { .. } => "step_expanded",
            RunEventKind::StepFinished { .. } => "step_finished",
            RunEventKind::RunFinished { .. } => "run_finished",
        }
    }

    /// The step it concerns.
    pub fn step(&self) -> Option<&Arc<str>> {
        match self {
            RunEventKind::StepStarted { step, .. }
            | RunEventKind::StepRetrying { step, .. }
            | RunEventKind::StepExpanded { step, .. }
            | RunEventKind::StepFinished { step, .. } => Some(step),
            _ => None,
        }
    }
}

/// A run as stored.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// `plan_id` of its plan.
    pub plan_id: String,
    /// `version` of its plan.
    pub plan_version: String,
    /// The plan file (absolute).
    pub plan_path: PathBuf,
    /// SHA-256 of the plan file when the run started (or was force-resumed).
    pub plan_hash: String,
    /// The `--var` values.
    pub vars: BTreeMap<String, String>,
    /// The settings it was started with (as the caller stored them).
    pub options: Value,
    /// Its state.
    pub state: RunState,
    /// `pending` or `running`, but no process executes it: killed or crashed; `hive resume`
    /// finishes it.
    pub interrupted: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it (last) started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// How many times it was resumed.
    pub resumes: u32,
    /// The plan's `metadata`.
    pub metadata: Value,
}

impl RunRecord {
    /// The max concurrency it was started with (`None` if not recorded).
    pub fn max_concurrency(&self) -> Option<u32> {
        self.options["max_concurrency"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
    }

    /// The state word to show: `interrupted` for a dead `running` run.
    pub fn shown_state(&self) -> &'static str {
        if self.interrupted {
            "interrupted"
        } else {
            self.state.as_str()
        }
    }
}

/// A step of a run as stored.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StepRecord {
    /// `ID`, or `ID[N]` for item N of a `for_each`.
    pub step_id: String,
    /// Plan order.
    pub ord: i64,
    /// The `for_each` step of an item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The item, for items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// Attempts made.
    pub attempts: u32,
    /// When its last attempt started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Exit status of its last attempt, for commands.
    pub exit_code: Option<i32>,
    /// Why it did not succeed.
    pub error: Option<String>,
    /// The outputs it emitted.
    pub outputs: Option<Value>,
    /// Its result (for commands: stdout and stderr tails).
    pub result: Option<Value>,
    /// Its cache key, if `cache` was on.
    pub cache_key: Option<String>,
    /// Its number in the run (plan order, then items).
    pub step_no: u32,
}

/// One attempt as stored.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct AttemptRow {
    /// The step.
    pub step_id: String,
    /// 1-based.
    pub attempt: u32,
    /// `running`, `succeeded`, `failed`, `timed_out`, `cancelled`, `agent_lost`, or
    /// `interrupted` (the process running it died).
    pub state: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Exit status, for commands.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
    /// The agent that ran it.
    pub agent: Option<String>,
}

pub(crate) fn ts(t: Timestamp) -> String {
    t.to_string()
}

fn parse_ts(s: Option<String>) -> Option<Timestamp> {
    s.and_then(|s| humantime::parse_rfc3339(&s).ok().map(Timestamp::from))
}

fn parse_json(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

/// A state directory: its database (opened once for reads) and its files.
pub struct StateStore {
    dir: PathBuf,
    db: PathBuf,
    conn: Mutex<Connection>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens the state directory `dir`, creating it and its database if needed.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(dir.join("runs")).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let db = dir.join("state.db");
        let conn = db::open(&db, true)?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
            db,
            conn: Mutex::new(conn),
        })
    }

    /// Opens an existing state directory; `None` if it has no database yet.
    pub fn open_existing(dir: &Path) -> Result<Option<StateStore>, StateError> {
        if !dir.join("state.db").exists() {
            return Ok(None);
        }
        Self::open(dir).map(Some)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// The run's JSON Lines event file.
    pub fn events_path(&self, run: &str) -> PathBuf {
        self.dir.join("runs").join(format!("{run}.jsonl"))
    }

    /// The run's scratch directory (step outputs files).
    pub fn run_dir(&self, run: &str) -> PathBuf {
        self.dir.join("runs").join(run)
    }

    fn m(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |e| db::map_err(&self.db, e)
    }

    /// Takes the lock of run `id` (see [`RunLock`]).
    pub fn lock_run(&self, id: &str) -> Result<RunLock, StateError> {
        RunLock::acquire(&self.dir.join("runs"), id)
    }

    /// Starts a writer thread for run `run` (its own connection).
    pub(crate) fn writer(
        &self,
        run: &str,
        listener: Option<tokio::sync::mpsc::UnboundedSender<Arc<RunEvent>>>,
    ) -> Result<Writer, StateError> {
        let run_no = self.run_no(run).ok();
        Writer::start(self.db.clone(), run_no, listener)
    }

    /// The number of run `id` (`runs.run_no`).
    fn run_no(&self, id: &str) -> Result<i64, StateError> {
        let conn = self.conn.lock();
        self.run_no_locked(&conn, id)
    }

    fn run_no_locked(&self, conn: &Connection, id: &str) -> Result<i64, StateError> {
        conn.query_row("SELECT run_no FROM runs WHERE run_id = ?1", [id], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map_err(self.m())?
        .ok_or_else(|| StateError::NoSuchRun(id.to_string()))
    }

    const RUN_COLS: &'static str = "run_id, plan_id, plan_version, plan_path, plan_hash, vars, options, state, created_at, started_at, finished_at, resumes, metadata";

    fn run_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
        let state: String = r.get(7)?;
        let run_id: String = r.get(0)?;
        let state = RunState::parse(&state).unwrap_or(RunState::Failed);
        let interrupted = matches!(state, RunState::Running | RunState::Pending)
            && !RunLock::held(&self.dir.join("runs"), &run_id);
        Ok(RunRecord {
            plan_id: r.get(1)?,
            plan_version: r.get(2)?,
            plan_path: PathBuf::from(r.get::<_, String>(3)?),
            plan_hash: r.get(4)?,
            vars: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            options: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or(Value::Null),
            state,
            interrupted,
            created_at: parse_ts(r.get(8)?).unwrap_or_default(),
            started_at: parse_ts(r.get(9)?),
            finished_at: parse_ts(r.get(10)?),
            resumes: r.get(11)?,
            metadata: parse_json(r.get(12)?).unwrap_or(Value::Null),
            run_id,
        })
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StateError> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare(&format!(
                "SELECT {} FROM runs ORDER BY created_at, run_id",
                Self::RUN_COLS
            ))
            .map_err(self.m())?;
        let rows = st
            .query_map([], |r| self.run_row(r))
            .map_err(self.m())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.m())?;
        Ok(rows)
    }

    /// One run.
    pub fn run(&self, id: &str) -> Result<RunRecord, StateError> {
        let find = || {
            let conn = self.conn.lock();
            conn.query_row(
                &format!("SELECT {} FROM runs WHERE run_id = ?1", Self::RUN_COLS),
                [id],
                |r| self.run_row(r),
            )
            .optional()
            .map_err(self.m())
        };
        if let Some(r) = find()? {
            return Ok(r);
        }
        // Killed before the database's first commit: the run may be in its file only.
        if !valid_run_id(id) || !self.events_path(id).is_file() {
            return Err(StateError::NoSuchRun(id.to_string()));
        }
        // While its process holds the lock it is creating the run: the writer's first commit
        // is milliseconds away (at most the database's busy timeout).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(6);
        loop {
            match self.lock_run(id) {
                Ok(lock) => {
                    if self.adopt_locked(id)? {
                        if let Some(r) = find()? {
                            return Ok(r);
                        }
                    }
                    // Removed meanwhile (`hive gc` held the lock): leave no lock file behind.
                    if !self.events_path(id).exists() {
                        let _ = std::fs::remove_file(lock.path());
                    }
                    break;
                }
                Err(StateError::RunBusy { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    if let Some(r) = find()? {
                        return Ok(r);
                    }
                }
                Err(StateError::RunBusy { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Err(StateError::NoSuchRun(id.to_string()))
    }

    /// Writes run `id` to the database from its file's header line, when the database does
    /// not have it (its `hive` was killed before the writer's first commit). True when the
    /// run is in the database now. For the holder of the run's lock.
    pub(crate) fn adopt_locked(&self, id: &str) -> Result<bool, StateError> {
        if !valid_run_id(id) {
            return Ok(false);
        }
        let path = self.events_path(id);
        let Some((run, steps)) =
            journal::read_header(&path).map_err(|source| StateError::Io { path, source })?
        else {
            return Ok(false);
        };
        if &*run.run_id != id {
            return Ok(false);
        }
        let mut conn = self.conn.lock();
        let m = |e| db::map_err(&self.db, e);
        // Immediate: the write lock first, so that a writer thread still committing the same
        // run (its PlanRun was dropped without executing) is seen, not raced.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(m)?;
        let known = tx
            .query_row("SELECT 1 FROM runs WHERE run_id = ?1", [id], |_| Ok(()))
            .optional()
            .map_err(m)?
            .is_some();
        if !known {
            writer::insert_run(&tx, &run, &steps).map_err(m)?;
        }
        tx.commit().map_err(m)?;
        Ok(true)
    }

    /// The steps of a run, in plan order (items after their step).
    pub fn steps(&self, id: &str) -> Result<Vec<StepRecord>, StateError> {
        let (lo, hi) = db::step_range(self.run_no(id)?);
        let conn = self.conn.lock();
        let mut st = conn
            .prepare(
                "SELECT step_id, ord, parent, item, name, state, attempts, started_at, finished_at, \
                 exit_code, error, outputs, result, cache_key, step_no FROM steps \
                 WHERE id BETWEEN ?1 AND ?2 ORDER BY ord, step_no",
            )
            .map_err(self.m())?;
        let rows = st
            .query_map(rusqlite::params![lo, hi], |r| {
                let state: String = r.get(5)?;
                Ok(StepRecord {
                    step_id: r.get(0)?,
                    ord: r.get(1)?,
                    parent: r.get(2)?,
                    item: parse_json(r.get(3)?),
                    name: r.get(4)?,
                    state: StepState::parse(&state).unwrap_or(StepState::Pending),
                    attempts: r.get(6)?,
                    started_at: parse_ts(r.get(7)?),
                    finished_at: parse_ts(r.get(8)?),
                    exit_code: r.get(9)?,
                    error: r.get(10)?,
                    outputs: parse_json(r.get(11)?),
                    result: parse_json(r.get(12)?),
                    cache_key: r.get(13)?,
                    step_no: r.get(14)?,
                })
            })
            .map_err(self.m())?
            .collect::<Result<Vec<StepRecord>, _>>()
            .map_err(self.m())?;
        drop(st);
        // A step's row is written when it ends: its attempts (and whether one runs now) are
        // read from the attempts table.
        let (lo, hi) = db::attempt_range(self.run_no_locked(&conn, id)?);
        let mut st = conn
            .prepare(
                "SELECT step_no, attempt, state, started_at FROM attempts WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
            )
            .map_err(self.m())?;
        let mut last: HashMap<u32, (u32, bool, Option<Timestamp>)> = HashMap::new();
        let mut first: HashMap<u32, Timestamp> = HashMap::new();
        let mut q = st.query(rusqlite::params![lo, hi]).map_err(self.m())?;
        while let Some(r) = q.next().map_err(self.m())? {
            let no: u32 = r.get(0).map_err(self.m())?;
            let attempt: u32 = r.get(1).map_err(self.m())?;
            let state: String = r.get(2).map_err(self.m())?;
            let started = parse_ts(r.get(3).map_err(self.m())?);
            if let Some(t) = started {
                first.entry(no).or_insert(t);
            }
            last.insert(no, (attempt, state == "running", started));
        }
        let mut rows = rows;
        for s in rows.iter_mut() {
            // The step started when its first attempt did.
            if s.started_at.is_none() {
                s.started_at = first.get(&s.step_no).copied();
            }
            if let Some((attempt, running, started)) = last.get(&s.step_no) {
                s.attempts = s.attempts.max(*attempt);
                if *running && !s.state.is_terminal() {
                    s.state = StepState::Running;
                    s.started_at = *started;
                }
            }
        }
        Ok(rows)
    }

    /// The attempts of a run, by step (in step order) then attempt.
    pub fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, StateError> {
        let (lo, hi) = db::attempt_range(self.run_no(id)?);
        let conn = self.conn.lock();
        let mut st = conn
            .prepare(
                "SELECT s.step_id, a.attempt, a.state, a.started_at, a.finished_at, a.exit_code, a.error, a.agent \
                 FROM attempts a JOIN steps s ON s.id = ((a.run_no << 32) | a.step_no) \
                 WHERE a.id BETWEEN ?1 AND ?2 ORDER BY a.id",
            )
            .map_err(self.m())?;
        let rows = st
            .query_map(rusqlite::params![lo, hi], |r| {
                Ok(AttemptRow {
                    step_id: r.get(0)?,
                    attempt: r.get(1)?,
                    state: r.get(2)?,
                    started_at: parse_ts(r.get(3)?).unwrap_or_default(),
                    finished_at: parse_ts(r.get(4)?),
                    exit_code: r.get(5)?,
                    error: r.get(6)?,
                    agent: r.get(7)?,
                })
            })
            .map_err(self.m())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.m())?;
        Ok(rows)
    }

    /// Events of a run with `seq > after`, in order, as their JSON text.
    pub fn events_after(&self, id: &str, after: u64) -> Result<Vec<(u64, String)>, StateError> {
        let run_no = self.run_no(id)?;
        let conn = self.conn.lock();
        let mut st = conn
            .prepare("SELECT seq, data FROM events WHERE id > ?1 AND id <= ?2 ORDER BY id")
            .map_err(self.m())?;
        let rows = st
            .query_map(
                rusqlite::params![
                    db::event_key(run_no, after),
                    db::event_key(run_no, u64::MAX)
                ],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .map_err(self.m())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.m())?;
        Ok(rows)
    }

    /// The last event seq of a run (0 if none).
    pub(crate) fn last_seq(&self, id: &str) -> Result<u64, StateError> {
        let (lo, hi) = db::event_range(self.run_no(id)?);
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE id BETWEEN ?1 AND ?2",
            rusqlite::params![lo, hi],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(self.m())
    }

    /// Brings the database up to date with the run's JSONL file after a crash: events the
    /// file has and the database lacks are stored, attempt starts among them become attempts
    /// (then marked interrupted by the resume), failed attempts are ended, and steps that
    /// ended in the file end in the database too (with their outputs, which the event
    /// carries). Skips a run another process executes. Returns the number of events
    /// recovered.
    pub fn recover(&self, id: &str) -> Result<usize, StateError> {
        let _lock = match self.lock_run(id) {
            Ok(l) => l,
            Err(StateError::RunBusy { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        self.recover_locked(id)
    }

    /// [`StateStore::recover`] for the holder of the run's lock.
    pub(crate) fn recover_locked(&self, id: &str) -> Result<usize, StateError> {
        let run_no = match self.run_no(id) {
            Err(StateError::NoSuchRun(_)) if self.adopt_locked(id)? => self.run_no(id)?,
            other => other?,
        };
        let after = self.last_seq(id)?;
        let path = self.events_path(id);
        let tail = journal::tail_after(&path, after).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        if tail.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.lock();
        let m = |e| db::map_err(&self.db, e);
        let tx = conn.transaction().map_err(m)?;
        let mut numbers: HashMap<String, u32> = HashMap::new();
        {
            let (lo, hi) = db::step_range(run_no);
            let mut st = tx
                .prepare("SELECT step_id, step_no FROM steps WHERE id BETWEEN ?1 AND ?2")
                .map_err(m)?;
            let rows = st
                .query_map(rusqlite::params![lo, hi], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
                })
                .map_err(m)?;
            for row in rows {
                let (k, v) = row.map_err(m)?;
                numbers.insert(k, v);
            }
        }
        let n = tail.len();
        for (seq, line, v) in tail {
            let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
            let at = v
                .get("at")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            tx.execute(
                "INSERT OR IGNORE INTO events (id, run_no, seq, type, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![db::event_key(run_no, seq), run_no, seq as i64, kind, line],
            )
            .map_err(m)?;
            let step_no = v
                .get("step")
                .and_then(Value::as_str)
                .and_then(|s| numbers.get(s).copied());
            let attempt = v.get("attempt").and_then(Value::as_u64).unwrap_or(0) as u32;
            match (kind, step_no) {
                ("run_started", _) => {
                    tx.execute(
                        "UPDATE runs SET state = 'running', started_at = ?2, finished_at = NULL WHERE run_no = ?1",
                        rusqlite::params![run_no, at],
                    )
                    .map_err(m)?;
                }
                ("run_finished", _) => {
                    let state = v.get("state").and_then(Value::as_str).unwrap_or("failed");
                    tx.execute(
                        "UPDATE runs SET state = ?2, finished_at = ?3 WHERE run_no = ?1",
                        rusqlite::params![run_no, state, at],
                    )
                    .map_err(m)?;
                }
                ("step_started", Some(no)) => {
                    tx.execute(
                        "INSERT OR IGNORE INTO attempts (id, run_no, step_no, attempt, state, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                        rusqlite::params![db::attempt_key(run_no, no, attempt), run_no, no, attempt, at],
                    )
                    .map_err(m)?;
                    tx.execute(
                        "UPDATE steps SET attempts = MAX(attempts, ?2) WHERE id = ?1",
                        rusqlite::params![db::step_key(run_no, no), attempt],
                    )
                    .map_err(m)?;
                }
                ("step_finished", Some(no)) => {
                    let state = v.get("state").and_then(Value::as_str).unwrap_or("failed");
                    let attempts = v.get("attempts").and_then(Value::as_u64).unwrap_or(0) as u32;
                    let exit_code = v.get("exit_code").and_then(Value::as_i64);
                    let error = v.get("error").and_then(Value::as_str);
                    let outputs = v.get("outputs").map(Value::to_string);
                    tx.execute(
                        "UPDATE steps SET state = ?2, attempts = MAX(attempts, ?3), finished_at = ?4, exit_code = ?5, \
                         error = ?6, outputs = ?7 WHERE id = ?1 AND state NOT IN ('succeeded', 'cached')",
                        rusqlite::params![db::step_key(run_no, no), state, attempts, at, exit_code, error, outputs],
                    )
                    .map_err(m)?;
                    if !matches!(state, "skipped" | "cached") && attempts > 0 {
                        tx.execute(
                            "UPDATE attempts SET state = ?2, finished_at = ?3, exit_code = ?4, error = ?5 WHERE id = ?1 AND state = 'running'",
                            rusqlite::params![db::attempt_key(run_no, no, attempts), state, at, exit_code, error],
                        )
                        .map_err(m)?;
                    }
                }
                ("step_retrying", Some(no)) => {
                    let error = v.get("error").and_then(Value::as_str).unwrap_or("");
                    tx.execute(
                        "UPDATE attempts SET state = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1 AND state = 'running'",
                        rusqlite::params![db::attempt_key(run_no, no, attempt), at, error],
                    )
                    .map_err(m)?;
                }
                _ => {}
            }
        }
        tx.commit().map_err(m)?;
        Ok(n)
    }

    /// Whether some process is executing run `id` now.
    pub fn is_running_now(&self, id: &str) -> bool {
        RunLock::held(&self.dir.join("runs"), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new run of plan `p` with these steps, in its JSONL file only (its header line, as
    /// `hive` writes it before the database's first commit); the journal, to append events.
    pub(crate) fn header_only_run(store: &StateStore, steps: &[&str]) -> (String, Journal) {
        let id = new_run_id();
        let run = RunRow {
            run_id: Arc::from(id.as_str()),
            plan_id: "p".into(),
            plan_version: "1".into(),
            plan_path: "/plans/p.json".into(),
            plan_hash: "h".into(),
            vars: "{}".into(),
            options: "{}".into(),
            created_at: Timestamp::now(),
            metadata: None,
        };
        let steps: Vec<StepRow> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepRow {
                no: i as u32,
                step_id: Arc::from(*s),
                ord: i as i64,
                parent: None,
                item: None,
                name: Arc::from(*s),
            })
            .collect();
        let mut j = Journal::open(&store.events_path(&id)).expect("journal");
        j.push(&journal_header(&run, &steps));
        (id, j)
    }

    /// `hive` killed after the run's header line and some events were written, before the
    /// writer's first commit: the database has nothing; the next reader takes the run from
    /// its file, and recovery replays the events after it.
    #[test]
    fn a_run_killed_before_its_first_commit_is_taken_from_its_file() {
        let dir = std::env::temp_dir().join(format!("hive-adopt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateStore::open(&dir).expect("store");
        let (id, mut j) = header_only_run(&store, &["a", "b"]);
        let at = ts(Timestamp::now());
        j.push(&format!(r#"{{"seq":1,"at":"{at}","run":"{id}","type":"run_started","plan_id":"p","steps":2,"resumed":false}}"#));
        j.push(&format!(
            r#"{{"seq":2,"at":"{at}","run":"{id}","type":"step_started","step":"a","attempt":1}}"#
        ));
        j.flush().expect("flush");
        drop(j);
        assert!(
            store.runs().expect("runs").is_empty(),
            "nothing committed yet"
        );
        // A typo is still unknown, and leaves no lock file behind.
        assert!(matches!(
            store.run("20990101-000000-000-000000"),
            Err(StateError::NoSuchRun(_))
        ));
        assert!(!dir
            .join("runs")
            .join("20990101-000000-000-000000.lock")
            .exists());

        let r = store.run(&id).expect("taken from the file");
        assert_eq!(r.plan_path, PathBuf::from("/plans/p.json"));
        assert_eq!(r.plan_hash, "h");
        assert_eq!(store.runs().expect("runs").len(), 1);
        assert_eq!(store.recover(&id).expect("recover"), 2);
        let s = store.steps(&id).expect("steps");
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].step_id.as_str(), s[0].attempts), ("a", 1));
        assert_eq!(store.attempts(&id).expect("attempts").len(), 1);
        // Taking it again changes nothing.
        assert!(store.adopt_locked(&id).expect("again"));
        assert_eq!(store.runs().expect("runs").len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_step_state_machine() {
        use StepState::*;
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Retrying) && Retrying.can_become(Running));
        assert!(Pending.can_become(Cached) && Pending.can_become(Skipped));
        for end in [Succeeded, Failed, TimedOut, Cancelled, Skipped, Cached] {
            assert!(end.is_terminal());
            assert!(!end.can_become(Running), "{end} is final");
            assert_eq!(StepState::parse(end.as_str()), Some(end));
        }
        assert!(
            !Retrying.can_become(Succeeded),
            "a retry runs before it succeeds"
        );
        assert!(RunState::Succeeded.is_terminal() && !RunState::Running.is_terminal());
    }
}
