//! The state writer: one thread per run that owns a SQLite connection and applies the
//! executor's writes in batches, one transaction per batch (group commit). After each commit
//! it appends the batch's events to the run's JSONL file, publishes how many operations are
//! on disk, and forwards the events to a listener. The executor never waits for SQLite except
//! where durability is the point (an attempt's start is committed before the work begins).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
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
    /// An event and its effect on step `no` (or on the run).
    Event {
        ev: Arc<RunEvent>,
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

/// Operations handed to the writer thread, and whether the executor is done.
#[derive(Debug, Default)]
struct Shared {
    queue: parking_lot::Mutex<(Vec<Op>, bool)>,
    wake: parking_lot::Condvar,
}

/// The executor's end of a writer thread. Operations are collected without any
/// synchronisation and handed over by [`Writer::flush`] (once per turn of the executor's
/// loop), so that everything one turn produced is committed in one transaction.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    pending: Vec<Op>,
    sent: u64,
    progress: watch::Receiver<Progress>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        db_path: PathBuf,
        jsonl: PathBuf,
        run_no: Option<i64>,
        listener: Option<tokio::sync::mpsc::UnboundedSender<Arc<RunEvent>>>,
    ) -> Result<Writer, StateError> {
        let shared = Arc::new(Shared::default());
        let rx = shared.clone();
        let (ptx, prx) = watch::channel(Progress::default());
        let thread = std::thread::Builder::new()
            .name("hive-state".into())
            .spawn(move || {
                let mut w = Thread {
                    conn,
                    db_path,
                    jsonl_path: jsonl,
                    jsonl: None,
                    run_no,
                    listener,
                    progress: ptx,
                    committed: 0,
                };
                w.run(rx);
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
            thread: Some(thread),
        })
    }

    /// Queues `op` (handed over at the next [`Writer::flush`]); returns its number (it is on
    /// disk once `committed() >= number`).
    pub(crate) fn send(&mut self, op: Op) -> u64 {
        self.sent += 1;
        self.pending.push(op);
        self.sent
    }

    /// Hands the queued operations to the writer thread.
    pub(crate) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut q = self.shared.queue.lock();
        if q.0.is_empty() {
            std::mem::swap(&mut q.0, &mut self.pending);
        } else {
            q.0.append(&mut self.pending);
        }
        drop(q);
        self.shared.wake.notify_one();
    }

    fn close(&mut self) {
        self.flush();
        self.shared.queue.lock().1 = true;
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

    /// Waits until progress changes (or the writer is gone).
    pub(crate) async fn changed(&mut self) {
        if self.progress.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until operation `n` is on disk.
    pub(crate) async fn wait_for(&mut self, n: u64) -> Result<(), StateError> {
        self.flush();
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

    /// Waits for everything sent, then stops the thread.
    pub(crate) async fn finish(mut self) -> Result<(), StateError> {
        let n = self.sent;
        let r = self.wait_for(n).await;
        self.close();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
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
    conn: Connection,
    db_path: PathBuf,
    jsonl_path: PathBuf,
    jsonl: Option<BufWriter<File>>,
    /// `runs.run_no`: known at start for a resume, set by `CreateRun` otherwise.
    run_no: Option<i64>,
    listener: Option<tokio::sync::mpsc::UnboundedSender<Arc<RunEvent>>>,
    progress: watch::Sender<Progress>,
    committed: u64,
}

thread_local! { static STATS: std::cell::RefCell<(u64, u64, f64, f64)> = const { std::cell::RefCell::new((0, 0, 0.0, 0.0)) }; }

impl Thread {
    /// Takes everything queued, waiting for something; empty once closed and drained.
    fn next_batch(shared: &Shared, batch: &mut Vec<Op>) {
        let mut q = shared.queue.lock();
        while q.0.is_empty() && !q.1 {
            shared.wake.wait(&mut q);
        }
        std::mem::swap(&mut q.0, batch);
    }

    fn run(&mut self, rx: Arc<Shared>) {
        let mut batch: Vec<Op> = Vec::with_capacity(256);
        let mut events: Vec<(Arc<RunEvent>, String)> = Vec::with_capacity(256);
        loop {
            Self::next_batch(&rx, &mut batch);
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            if std::env::var_os("HIVE_EXP_STATS").is_some() {
                STATS.with(|c| {
                    let mut c = c.borrow_mut();
                    c.0 += 1;
                    c.1 += n;
                });
            }
            let t0 = std::time::Instant::now();
            let r = self.apply(&mut batch, &mut events);
            let t1 = t0.elapsed().as_secs_f64();
            if std::env::var_os("HIVE_EXP_STATS").is_some() {
                STATS.with(|c| c.borrow_mut().2 += t1);
            }
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
            if let Err(e) = self.append_jsonl(&events) {
                tracing::warn!("state writer: {}: {e}", self.jsonl_path.display());
            }
            self.committed += n;
            let c = self.committed;
            self.progress.send_modify(|p| p.committed = c);
            match &self.listener {
                Some(l) => {
                    for (ev, _) in events.drain(..) {
                        let _ = l.send(ev);
                    }
                }
                None => events.clear(),
            }
            if std::env::var_os("HIVE_EXP_STATS").is_some() {
                STATS.with(|c| c.borrow_mut().3 += t0.elapsed().as_secs_f64());
            }
        }
        // The run's writes are done: fold the WAL into the database.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
        if std::env::var_os("HIVE_EXP_STATS").is_some() {
            STATS.with(|c| {
                let c = c.borrow();
                eprintln!(
                    "writer: {} commits, {} ops, {:.1} ops/commit, apply {:.3}s total {:.3}s",
                    c.0,
                    c.1,
                    c.1 as f64 / c.0.max(1) as f64,
                    c.2,
                    c.3
                );
            });
        }
    }

    fn apply(
        &mut self,
        batch: &mut Vec<Op>,
        events: &mut Vec<(Arc<RunEvent>, String)>,
    ) -> Result<(), StateError> {
        let path = self.db_path.clone();
        let m = |e| db::map_err(&path, e);
        let gone =
            |what: &str| StateError::WriterGone(format!("{what} before the run was created"));
        let mut run_no = self.run_no;
        let tx = self.conn.transaction().map_err(m)?;
        for op in batch.drain(..) {
            match op {
                Op::CreateRun { run, steps } => {
                    tx.execute(
                        "INSERT INTO runs (run_id, plan_id, plan_version, plan_path, plan_hash, vars, options, state, created_at, metadata) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9)",
                        params![&*run.run_id, run.plan_id, run.plan_version, run.plan_path, run.plan_hash, run.vars, run.options, ts(run.created_at), run.metadata],
                    )
                    .map_err(m)?;
                    let no = tx.last_insert_rowid();
                    run_no = Some(no);
                    insert_steps(&tx, no, &steps, false).map_err(m)?;
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
                Op::Event { ev, no, update } => {
                    let r = run_no.ok_or_else(|| gone("an event"))?;
                    let data = event(&tx, r, no, &ev, update).map_err(m)?;
                    events.push((ev, data));
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

    fn append_jsonl(&mut self, events: &[(Arc<RunEvent>, String)]) -> std::io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        if self.jsonl.is_none() {
            if let Some(run_no) = self.run_no {
                reconcile_jsonl(&self.conn, &self.jsonl_path, run_no, events[0].0.seq)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.jsonl_path)?;
            self.jsonl = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        if let Some(out) = &mut self.jsonl {
            for (_, data) in events {
                out.write_all(data.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        Ok(())
    }
}

fn event(
    tx: &rusqlite::Transaction<'_>,
    run_no: i64,
    no: u32,
    ev: &RunEvent,
    update: Update,
) -> rusqlite::Result<String> {
    let at = ts(ev.at);
    let key = db::step_key(run_no, no);
    match update {
        Update::Run { state, finished } => {
            let sql = if finished {
                "UPDATE runs SET state = ?2, finished_at = ?3 WHERE run_no = ?1"
            } else {
                "UPDATE runs SET state = ?2, started_at = ?3, finished_at = NULL WHERE run_no = ?1"
            };
            tx.prepare_cached(sql)?
                .execute(params![run_no, state.as_str(), at])?;
        }
        Update::Start { attempt } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO attempts (id, run_no, step_no, attempt, state, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
            )?
            .execute(params![db::attempt_key(run_no, no, attempt), run_no, no, attempt, at])?;
            // The step's own row is updated when it ends; until then readers derive `running`
            // from this attempt (one write less on the hot path).
        }
        Update::Expand => {
            tx.prepare_cached("UPDATE steps SET state = 'running', started_at = ?2 WHERE id = ?1")?
                .execute(params![key, at])?;
        }
        Update::Retry { end } => {
            end_attempt(tx, run_no, no, &at, &end)?;
            tx.prepare_cached(
                "UPDATE steps SET state = 'retrying', exit_code = ?2, error = ?3 WHERE id = ?1",
            )?
            .execute(params![key, end.exit_code, end.error])?;
        }
        Update::Finish(f) => {
            if let Some(end) = &f.end {
                end_attempt(tx, run_no, no, &at, end)?;
            }
            let outputs = f.outputs.as_ref().map(|o| o.to_string());
            let result = f.result.as_ref().map(Value::to_string);
            tx.prepare_cached(
                "UPDATE steps SET state = ?2, attempts = ?3, finished_at = ?4, exit_code = ?5, error = ?6, \
                 outputs = ?7, result = ?8, cache_key = ?9 WHERE id = ?1",
            )?
            .execute(params![
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
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO cache (key, step_id, run_id, outputs, result, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![k, ev.kind.step().map(|s| &**s), &*ev.run, outputs, result, at])?;
            }
        }
    }
    let data = serde_json::to_string(ev).unwrap_or_default();
    tx.prepare_cached(
        "INSERT OR REPLACE INTO events (id, run_no, seq, type, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        db::event_key(run_no, ev.seq),
        run_no,
        ev.seq as i64,
        ev.kind.type_name(),
        &data
    ])?;
    Ok(data)
}

fn end_attempt(
    tx: &rusqlite::Transaction<'_>,
    run_no: i64,
    no: u32,
    at: &str,
    end: &AttemptEnd,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE attempts SET state = ?2, finished_at = ?3, exit_code = ?4, error = ?5, agent = ?6 WHERE id = ?1",
    )?
    .execute(params![
        db::attempt_key(run_no, no, end.attempt),
        end.state,
        at,
        end.exit_code,
        end.error,
        end.agent
    ])?;
    Ok(())
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

/// Before appending to a run's JSONL file: drop a torn last line, and append the events the
/// database has but the file lacks (a crash between the commit and the append).
fn reconcile_jsonl(conn: &Connection, path: &Path, run_no: i64, next: u64) -> std::io::Result<()> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if next <= 1 {
                return Ok(());
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)?
        }
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let tail_len = len.min(64 * 1024);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    f.read_to_end(&mut tail)?;
    let mut keep = len;
    if !tail.is_empty() && tail.last() != Some(&b'\n') {
        let cut = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        keep = len - tail_len + cut as u64;
        f.set_len(keep)?;
        tail.truncate(cut);
    }
    let last_seq = tail
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .and_then(|l| serde_json::from_slice::<Value>(l).ok())
        .and_then(|v| v.get("seq").and_then(Value::as_u64))
        .unwrap_or(0);
    if last_seq + 1 >= next {
        return Ok(());
    }
    let mut st = conn
        .prepare("SELECT data FROM events WHERE id > ?1 AND id < ?2 ORDER BY id")
        .map_err(std::io::Error::other)?;
    let rows = st
        .query_map(
            params![db::event_key(run_no, last_seq), db::event_key(run_no, next)],
            |r| r.get::<_, String>(0),
        )
        .map_err(std::io::Error::other)?;
    f.seek(SeekFrom::Start(keep))?;
    let mut out = BufWriter::new(f);
    for data in rows {
        let data = data.map_err(std::io::Error::other)?;
        out.write_all(data.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
