//! The state writer: one thread per run that owns a SQLite connection and applies the
//! executor's writes in batches, one transaction per batch. After each commit it publishes
//! how many operations are on disk and forwards the batch's events to a listener (so that
//! whatever is reported is in the database). The executor never waits for it: attempt starts
//! are made durable by the run's JSONL file first (see `journal.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use super::{db, ts, RunEvent, RunState, StateError, StepState};
use crate::ids::Timestamp;

/// A run's row at creation.
#[derive(Debug, Clone)]
pub(crate) struct RunRow {
    pub(crate) run_id: Arc<str>,
    pub(crate) plan_id: String,
    pub(crate) plan_version: String,
    pub(crate) plan_path: String,
    pub(crate) plan_hash: String,
    pub(crate) vars: String,
    pub(crate) options: String,
    pub(crate) created_at: Timestamp,
    pub(crate) metadata: Option<String>,
}

/// A step's row at creation (plan steps with the run, items when their step fans out).
#[derive(Debug, Clone)]
pub(crate) struct StepRow {
    /// Its number in the run (plan order, then items in the order they were created).
    pub(crate) no: u32,
    pub(crate) step_id: Arc<str>,
    pub(crate) ord: i64,
    pub(crate) parent: Option<Arc<str>>,
    pub(crate) item: Option<String>,
    pub(crate) name: Arc<str>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub(crate) struct AttemptEnd {
    pub(crate) attempt: u32,
    pub(crate) state: &'static str,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) agent: Option<String>,
}

/// The database effect of an event.
#[derive(Debug)]
pub(crate) enum Update {
    /// The run's state (`finished` sets finished_at, else started_at).
    Run { state: RunState, finished: bool },
    /// An attempt starts: its row, and the step goes `running`.
    Start { attempt: u32 },
    /// A `for_each` step fanned out: it is `running` while its items run.
    Expand,
    /// An attempt failed and the step goes `retrying`.
    Retry { end: AttemptEnd },
    /// The step ended.
    Finish(Box<Finish>),
}

/// The end of a step.
#[derive(Debug)]
pub(crate) struct Finish {
    pub(crate) state: StepState,
    pub(crate) attempts: u32,
    pub(crate) end: Option<AttemptEnd>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) outputs: Option<Arc<Value>>,
    pub(crate) result: Option<Value>,
    pub(crate) cache_key: Option<String>,
    /// Store this success in the cache under `cache_key`.
    pub(crate) cache_put: bool,
}

/// A cached success.
#[derive(Debug, Clone)]
pub(crate) struct CacheEntry {
    pub(crate) run_id: String,
    pub(crate) outputs: Option<Value>,
    pub(crate) result: Option<Value>,
}

/// One write (or read) for the writer thread.
#[derive(Debug)]
pub(crate) enum Op {
    /// A new run with its steps, `pending`.
    CreateRun { run: RunRow, steps: Vec<StepRow> },
    /// A run resumes: attempts left `running` become `interrupted`, steps that did not
    /// succeed go back to `pending`, the run to `running`.
    ResumeRun {
        plan_hash: String,
        at: Timestamp,
        steps: Vec<StepRow>,
    },
    /// Items of a `for_each` (kept if they exist from before a resume).
    InsertSteps(Vec<StepRow>),
    /// An event (with its JSON text) and its effect on step `no` (or on the run).
    Event {
        ev: Arc<RunEvent>,
        data: String,
        no: u32,
        update: Update,
    },
    /// Reads a cache entry (answered at once; sees every earlier write).
    CacheGet {
        key: String,
        reply: oneshot::Sender<Option<CacheEntry>>,
    },
}

/// How far the writer got.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Operations on disk (numbered from 1 in sending order).
    pub(crate) committed: u64,
    /// Set when a write failed: nothing after it is written.
    pub(crate) error: Option<Arc<str>>,
}

/// Operations handed to the writer thread.
#[derive(Debug, Default)]
struct Queue {
    ops: Vec<Op>,
    /// Someone waits for these operations: commit without gathering more.
    urgent: bool,
    /// The executor is done: commit what is left and stop.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: parking_lot::Mutex<Queue>,
    wake: parking_lot::Condvar,
}

/// How long the writer gathers operations before a commit that nobody waits for (the
/// journal has made attempt starts durable already; this only delays the database, and the
/// progress display, by at most this much, and saves a commit per step when steps are slow).
const GATHER: std::time::Duration = std::time::Duration::from_millis(25);

/// A batch this large is committed at once.
const GATHER_MAX: usize = 1024;

/// The executor's end of a writer thread. Operations are collected without any
/// synchronisation and handed over by [`Writer::flush`] (once per turn of the executor's
/// loop), so that everything one turn produced is committed in one transaction.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    pending: Vec<Op>,
    sent: u64,
    progress: watch::Receiver<Progress>,
}

impl Writer {
    /// Starts the writer thread, which opens its own connection to `db_path` (so that the
    /// caller goes on meanwhile; an open that fails fails every wait).
    pub(crate) fn start(
        db_path: PathBuf,
        run_no: Option<i64>,
        listener: Option<tokio::sync::mpsc::UnboundedSender<Arc<RunEvent>>>,
    ) -> Result<Writer, StateError> {
        let shared = Arc::new(Shared::default());
        let rx = shared.clone();
        let (ptx, prx) = watch::channel(Progress::default());
        // Nothing joins the thread: it ends by itself once closed and drained (see `finish`).
        std::thread::Builder::new()
            .name("hive-state".into())
            .spawn(move || {
                let conn = match db::open(&db_path, true) {
                    Ok(c) => c,
                    Err(e) => {
                        let msg: Arc<str> = Arc::from(e.to_string());
                        ptx.send_modify(|p| p.error = Some(msg));
                        return;
                    }
                };
                let w = Thread {
                    db_path,
                    run_no,
                    listener,
                    progress: ptx,
                    committed: 0,
                };
                w.run(conn, rx);
            })
            .map_err(|source| StateError::Io {
                path: PathBuf::from("hive-state thread"),
                source,
            })?;
        Ok(Writer {
            shared,
            pending: Vec::with_capacity(64),
            sent: 0,
            progress: prx,
        })
    }

    /// Queues `op` (handed over at the next [`Writer::flush`]); returns its number (it is on
    /// disk once `committed() >= number`).
    pub(crate) fn send(&mut self, op: Op) -> u64 {
        self.sent += 1;
        self.pending.push(op);
        self.sent
    }

    /// Operations queued so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Hands the queued operations to the writer thread.
    pub(crate) fn flush(&mut self) {
        self.hand_over(false);
    }

    /// Hands the queued operations over and has them committed without gathering more.
    pub(crate) fn flush_now(&mut self) {
        if !self.pending.is_empty() {
            self.hand_over(true);
        }
    }

    fn hand_over(&mut self, urgent: bool) {
        if self.pending.is_empty() && !urgent {
            return;
        }
        let read = self
            .pending
            .iter()
            .any(|op| matches!(op, Op::CacheGet { .. }));
        let mut q = self.shared.queue.lock();
        // Wake the thread when it waits for a first operation, or must stop gathering.
        let wake =
            q.ops.is_empty() || urgent || read || q.ops.len() + self.pending.len() >= GATHER_MAX;
        if q.ops.is_empty() {
            std::mem::swap(&mut q.ops, &mut self.pending);
        } else {
            q.ops.append(&mut self.pending);
        }
        q.urgent |= urgent || read;
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Hands everything over and lets the thread end once it is written ([`Writer::finish`]
    /// waits for the commit, not for the thread).
    pub(crate) fn close(&mut self) {
        self.hand_over(true);
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_one();
    }

    /// Operations on disk, or the error that stopped the writer.
    pub(crate) fn committed(&self) -> Result<u64, StateError> {
        let p = self.progress.borrow();
        match &p.error {
            Some(e) => Err(StateError::WriterGone(e.to_string())),
            None => Ok(p.committed),
        }
    }

    /// Waits until operation `n` is on disk.
    pub(crate) async fn wait_for(&mut self, n: u64) -> Result<(), StateError> {
        if self.committed()? < n {
            self.hand_over(true);
        }
        loop {
            if self.committed()? >= n {
                return Ok(());
            }
            if self.progress.changed().await.is_err() {
                return self.committed().and_then(|c| {
                    if c >= n {
                        Ok(())
                    } else {
                        Err(StateError::WriterGone("the writer thread ended".into()))
                    }
                });
            }
        }
    }

    /// Waits for everything sent to be committed, then lets the thread go: it closes the
    /// connection on its own. Nothing waits for that: what the run wrote is on disk, and a
    /// process that exits meanwhile leaves the database as a kill would, which SQLite
    /// recovers from (a join cost the end of every run about 0.4 ms).
    pub(crate) async fn finish(mut self) -> Result<(), StateError> {
        let n = self.sent;
        let r = self.wait_for(n).await;
        self.close();
        r
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The thread ends after it has written what it has.
        self.close();
    }
}

struct Thread {
    db_path: PathBuf,
    /// `runs.run_no`: known at start for a resume, set by `CreateRun` otherwise.
    run_no: Option<i64>,
    listener: Option<tokio::sync::mpsc::UnboundedSender<Arc<RunEvent>>>,
    progress: watch::Sender<Progress>,
    committed: u64,
}

impl Thread {
    /// Takes everything queued, waiting for something; empty once closed and drained.
    fn next_batch(shared: &Shared, batch: &mut Vec<Op>) {
        let mut q = shared.queue.lock();
        while q.ops.is_empty() && !q.closed {
            shared.wake.wait(&mut q);
        }
        // Gather more for a while, unless someone waits or the batch is big already.
        let until = std::time::Instant::now() + GATHER;
        while !q.urgent && !q.closed && q.ops.len() < GATHER_MAX {
            if shared.wake.wait_until(&mut q, until).timed_out() {
                break;
            }
        }
        q.urgent = false;
        std::mem::swap(&mut q.ops, batch);
    }

    fn run(mut self, conn: Connection, rx: Arc<Shared>) {
        let mut batch: Vec<Op> = Vec::with_capacity(256);
        let mut events: Vec<Arc<RunEvent>> = Vec::with_capacity(256);
        let mut hot = match Hot::prepare(&conn) {
            Ok(h) => Some(h),
            Err(e) => {
                let msg: Arc<str> = Arc::from(db::map_err(&self.db_path, e).to_string());
                self.progress.send_modify(|p| p.error = Some(msg));
                None
            }
        };
        loop {
            Self::next_batch(&rx, &mut batch);
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let r = match hot.as_mut() {
                Some(h) => self.apply(&conn, h, &mut batch, &mut events),
                None => Err(StateError::WriterGone("cannot prepare statements".into())),
            };
            if let Err(e) = r {
                let msg: Arc<str> = Arc::from(e.to_string());
                tracing::error!("state writer: {msg}");
                self.progress.send_modify(|p| p.error = Some(msg));
                // Keep draining (answering reads with nothing) until the executor is done.
                loop {
                    batch.clear();
                    Self::next_batch(&rx, &mut batch);
                    if batch.is_empty() {
                        return;
                    }
                    for op in batch.drain(..) {
                        if let Op::CacheGet { reply, .. } = op {
                            let _ = reply.send(None);
                        }
                    }
                }
            }
            // The listener gets a batch's events before anyone learns it is committed: once
            // `finish` returns, every event is in the listener's channel.
            match &self.listener {
                Some(l) => {
                    for ev in events.drain(..) {
                        let _ = l.send(ev);
                    }
                }
                None => events.clear(),
            }
            self.committed += n;
            let c = self.committed;
            self.progress.send_modify(|p| p.committed = c);
        }
        drop(hot);
    }

    fn apply(
        &mut self,
        conn: &Connection,
        hot: &mut Hot<'_>,
        batch: &mut Vec<Op>,
        events: &mut Vec<Arc<RunEvent>>,
    ) -> Result<(), StateError> {
        let path = self.db_path.clone();
        let m = |e| db::map_err(&path, e);
        let gone =
            |what: &str| StateError::WriterGone(format!("{what} before the run was created"));
        let mut run_no = self.run_no;
        let tx = conn.unchecked_transaction().map_err(m)?;
        for op in batch.drain(..) {
            match op {
                Op::CreateRun { run, steps } => {
                    let no = insert_run(&tx, &run, &steps).map_err(m)?;
                    run_no = Some(no);
                }
                Op::ResumeRun {
                    plan_hash,
                    at,
                    steps,
                } => {
                    let no = run_no.ok_or_else(|| gone("resume"))?;
                    let now = ts(at);
                    tx.execute(
                        "UPDATE runs SET state = 'running', plan_hash = ?2, resumes = resumes + 1, started_at = ?3, finished_at = NULL WHERE run_no = ?1",
                        params![no, plan_hash, now],
                    )
                    .map_err(m)?;
                    // Attempt starts are not written to the steps table (only to attempts):
                    // fold them into it before anything else.
                    let (lo, hi) = db::step_range(no);
                    tx.execute(
                        "UPDATE steps SET attempts = MAX(attempts, COALESCE((SELECT MAX(a.attempt) FROM attempts a \
                         WHERE a.id BETWEEN ((steps.run_no << 40) | (steps.step_no << 16)) \
                         AND ((steps.run_no << 40) | (steps.step_no << 16) | 65535)), 0)) \
                         WHERE id BETWEEN ?1 AND ?2",
                        params![lo, hi],
                    )
                    .map_err(m)?;
                    let (lo, hi) = db::attempt_range(no);
                    tx.execute(
                        "UPDATE attempts SET state = 'interrupted', finished_at = ?3, error = 'the hive process running it ended' \
                         WHERE id BETWEEN ?1 AND ?2 AND state = 'running'",
                        params![lo, hi, now],
                    )
                    .map_err(m)?;
                    let (lo, hi) = db::step_range(no);
                    tx.execute(
                        "UPDATE steps SET state = 'pending', finished_at = NULL, error = NULL, exit_code = NULL \
                         WHERE id BETWEEN ?1 AND ?2 AND state NOT IN ('succeeded', 'cached')",
                        params![lo, hi],
                    )
                    .map_err(m)?;
                    insert_steps(&tx, no, &steps, true).map_err(m)?;
                }
                Op::InsertSteps(steps) => {
                    let no = run_no.ok_or_else(|| gone("steps"))?;
                    insert_steps(&tx, no, &steps, true).map_err(m)?;
                }
                Op::Event {
                    ev,
                    data,
                    no,
                    update,
                } => {
                    let r = run_no.ok_or_else(|| gone("an event"))?;
                    event(hot, r, no, &ev, &data, update).map_err(m)?;
                    events.push(ev);
                }
                Op::CacheGet { key, reply } => {
                    let hit = tx
                        .prepare_cached("SELECT run_id, outputs, result FROM cache WHERE key = ?1")
                        .and_then(|mut st| {
                            st.query_row([&key], |r| {
                                Ok(CacheEntry {
                                    run_id: r.get(0)?,
                                    outputs: r
                                        .get::<_, Option<String>>(1)?
                                        .and_then(|s| serde_json::from_str(&s).ok()),
                                    result: r
                                        .get::<_, Option<String>>(2)?
                                        .and_then(|s| serde_json::from_str(&s).ok()),
                                })
                            })
                            .optional()
                        })
                        .map_err(m)?;
                    let _ = reply.send(hit);
                }
            }
        }
        tx.commit().map_err(m)?;
        self.run_no = run_no;
        Ok(())
    }
}

/// The statements of the hot path, prepared once per writer.
struct Hot<'c> {
    attempt_start: rusqlite::Statement<'c>,
    attempt_end: rusqlite::Statement<'c>,
    step_finish: rusqlite::Statement<'c>,
    step_retry: rusqlite::Statement<'c>,
    step_expand: rusqlite::Statement<'c>,
    run_started: rusqlite::Statement<'c>,
    run_finished: rusqlite::Statement<'c>,
    cache_put: rusqlite::Statement<'c>,
    event: rusqlite::Statement<'c>,
}

impl<'c> Hot<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Hot<'c>> {
        Ok(Hot {
            attempt_start: conn.prepare(
                "INSERT OR REPLACE INTO attempts (id, run_no, step_no, attempt, state, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
            )?,
            attempt_end: conn.prepare(
                "UPDATE attempts SET state = ?2, finished_at = ?3, exit_code = ?4, error = ?5, agent = ?6 WHERE id = ?1",
            )?,
            step_finish: conn.prepare(
                "UPDATE steps SET state = ?2, attempts = ?3, finished_at = ?4, exit_code = ?5, error = ?6, \
                 outputs = ?7, result = ?8, cache_key = ?9 WHERE id = ?1",
            )?,
            step_retry: conn.prepare(
                "UPDATE steps SET state = 'retrying', attempts = ?2, exit_code = ?3, error = ?4 WHERE id = ?1",
            )?,
            step_expand: conn
                .prepare("UPDATE steps SET state = 'running', started_at = ?2 WHERE id = ?1")?,
            run_started: conn.prepare(
                "UPDATE runs SET state = ?2, started_at = ?3, finished_at = NULL WHERE run_no = ?1",
            )?,
            run_finished: conn
                .prepare("UPDATE runs SET state = ?2, finished_at = ?3 WHERE run_no = ?1")?,
            cache_put: conn.prepare(
                "INSERT OR REPLACE INTO cache (key, step_id, run_id, outputs, result, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            event: conn.prepare(
                "INSERT OR REPLACE INTO events (id, run_no, seq, type, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
        })
    }
}

/// Applies an event's effect and stores it.
fn event(
    hot: &mut Hot<'_>,
    run_no: i64,
    no: u32,
    ev: &RunEvent,
    data: &str,
    update: Update,
) -> rusqlite::Result<()> {
    let at = ts(ev.at);
    let key = db::step_key(run_no, no);
    match update {
        Update::Run { state, finished } => {
            let st = if finished {
                &mut hot.run_finished
            } else {
                &mut hot.run_started
            };
            st.execute(params![run_no, state.as_str(), at])?;
        }
        Update::Start { attempt } => {
            // The step's own row is updated when it ends; until then readers derive
            // `running` from this attempt (one write less on the hot path).
            hot.attempt_start.execute(params![
                db::attempt_key(run_no, no, attempt),
                run_no,
                no,
                attempt,
                at
            ])?;
        }
        Update::Expand => {
            hot.step_expand.execute(params![key, at])?;
        }
        Update::Retry { end } => {
            end_attempt(&mut hot.attempt_end, run_no, no, &at, &end)?;
            hot.step_retry
                .execute(params![key, end.attempt, end.exit_code, end.error])?;
        }
        Update::Finish(f) => {
            if let Some(end) = &f.end {
                end_attempt(&mut hot.attempt_end, run_no, no, &at, end)?;
            }
            let outputs = f.outputs.as_ref().map(|o| o.to_string());
            let result = f.result.as_ref().map(Value::to_string);
            hot.step_finish.execute(params![
                key,
                f.state.as_str(),
                f.attempts,
                at,
                f.exit_code,
                f.error,
                outputs,
                result,
                f.cache_key
            ])?;
            if let (true, Some(k)) = (f.cache_put, &f.cache_key) {
                hot.cache_put.execute(params![
                    k,
                    ev.kind.step().map(|s| &**s),
                    &*ev.run,
                    outputs,
                    result,
                    at
                ])?;
            }
        }
    }
    hot.event.execute(params![
        db::event_key(run_no, ev.seq),
        run_no,
        ev.seq as i64,
        ev.kind.type_name(),
        data
    ])?;
    Ok(())
}

fn end_attempt(
    st: &mut rusqlite::Statement<'_>,
    run_no: i64,
    no: u32,
    at: &str,
    end: &AttemptEnd,
) -> rusqlite::Result<()> {
    st.execute(params![
        db::attempt_key(run_no, no, end.attempt),
        end.state,
        at,
        end.exit_code,
        end.error,
        end.agent
    ])?;
    Ok(())
}

/// Inserts a new run and its steps; returns its `run_no`.
pub(crate) fn insert_run(
    tx: &rusqlite::Transaction<'_>,
    run: &RunRow,
    steps: &[StepRow],
) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO runs (run_id, plan_id, plan_version, plan_path, plan_hash, vars, options, state, created_at, metadata) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9)",
        params![&*run.run_id, run.plan_id, run.plan_version, run.plan_path, run.plan_hash, run.vars, run.options, ts(run.created_at), run.metadata],
    )?;
    let no = tx.last_insert_rowid();
    insert_steps(tx, no, steps, false)?;
    Ok(no)
}

fn insert_steps(
    tx: &rusqlite::Transaction<'_>,
    run_no: i64,
    steps: &[StepRow],
    keep_existing: bool,
) -> rusqlite::Result<()> {
    let sql = if keep_existing {
        "INSERT OR IGNORE INTO steps (id, run_no, step_no, step_id, ord, parent, item, name, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')"
    } else {
        "INSERT INTO steps (id, run_no, step_no, step_id, ord, parent, item, name, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')"
    };
    let mut st = tx.prepare_cached(sql)?;
    for s in steps {
        st.execute(params![
            db::step_key(run_no, s.no),
            run_no,
            s.no,
            &*s.step_id,
            s.ord,
            s.parent.as_deref(),
            s.item,
            &*s.name
        ])?;
    }
    Ok(())
}
