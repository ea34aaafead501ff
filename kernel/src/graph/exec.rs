//! The executor's engine: one async loop that owns the run's graph. Steps become ready when
//! their last dependency ends; ready steps start while a slot is free (globally and in their
//! role's lane); completions come back through one `FuturesUnordered` (no task spawned per
//! step, no polling). With a state store, the events of each turn of the loop are written to
//! the run's JSONL file (one `write(2)`) before the attempts started in that turn are
//! submitted, so that after a crash every step that may have run is known; the database is
//! written from the same events by the writer thread, off this path.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::outputs::{self, KeyInput};
use super::{CacheMode, RunError, RunOptions, RunReport, StepReport};
use crate::error::SubmitError;
use crate::ids::{TaskId, Timestamp};
use crate::kernel::Kernel;
use crate::plan::{Action, ForEach, OnFailure, Plan, Ref, StepView};
use crate::state::{
    journal_header, AttemptEnd, CacheEntry, Finish, Journal, Op, RunEvent, RunEventKind, RunRecord,
    RunRow, RunState, StateError, StateStore, StepRecord, StepRow, StepState, Update, Writer,
};
use crate::task::{AttemptStatus, Outcome, Target, TaskResult, TaskSpec};

type Ix = usize;

/// Database writes the writer thread may lag behind the journal before the executor waits.
const MAX_BACKLOG: u64 = 200_000;

fn open_journal(store: &StateStore, run: &str) -> Result<Journal, StateError> {
    let path = store.events_path(run);
    Journal::open(&path).map_err(|source| StateError::Io { path, source })
}

/// Bytes of stdout and of stderr kept in the state per step (the kernel keeps 64 KiB).
const RESULT_TAIL: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Dependencies still running.
    Waiting,
    /// In its lane's ready queue.
    Ready,
    /// Holding a slot while its cache key is computed and looked up.
    CacheCheck,
    /// Holding a slot; its start is being written to the journal.
    Starting,
    /// Holding a slot; submitted to the kernel.
    Running,
    /// Between attempts (no slot).
    Backoff,
    /// A `for_each` step whose items run.
    Expanded,
    /// Ended.
    Ended,
}

#[derive(Debug)]
struct Node {
    step: usize,
    /// The step's number in the state (plan order, then items as they were created).
    no: u32,
    id: Arc<str>,
    parent: Option<Ix>,
    item: Option<(usize, Arc<Value>)>,
    lane: usize,
    phase: Phase,
    state: StepState,
    waiting: u32,
    attempts: u32,
    failures: u32,
    forced: bool,
    outputs: Option<Arc<Value>>,
    result: Option<Value>,
    exit_code: Option<i32>,
    error: Option<String>,
    task: Option<TaskId>,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    duration: Duration,
    children: Vec<Ix>,
    children_left: usize,
    cache_key: Option<String>,
    restored: bool,
}

impl Node {
    fn new(step: usize, no: u32, id: Arc<str>, lane: usize) -> Node {
        Node {
            step,
            no,
            id,
            parent: None,
            item: None,
            lane,
            phase: Phase::Waiting,
            state: StepState::Pending,
            waiting: 0,
            attempts: 0,
            failures: 0,
            forced: false,
            outputs: None,
            result: None,
            exit_code: None,
            error: None,
            task: None,
            started_at: None,
            finished_at: None,
            duration: Duration::ZERO,
            children: Vec::new(),
            children_left: 0,
            cache_key: None,
            restored: false,
        }
    }

    fn holds_slot(&self) -> bool {
        matches!(
            self.phase,
            Phase::CacheCheck | Phase::Starting | Phase::Running
        )
    }
}

#[derive(Debug)]
struct Lane {
    role: Arc<str>,
    limit: usize,
    running: usize,
    ready: VecDeque<Ix>,
}

enum Done {
    Task {
        node: Ix,
        attempt: u32,
        result: Box<TaskResult>,
        out_file: Option<PathBuf>,
    },
    Submit {
        node: Ix,
        attempt: u32,
        error: String,
    },
    Backoff {
        node: Ix,
    },
    Key {
        node: Ix,
        key: Result<String, String>,
    },
    Lookup {
        node: Ix,
        hit: Option<CacheEntry>,
    },
}

/// How a step ends (beyond its state).
#[derive(Default)]
struct End {
    error: Option<String>,
    attempt: Option<AttemptEnd>,
    outputs: Option<Arc<Value>>,
    result: Option<Value>,
    exit_code: Option<i32>,
    cache_put: bool,
}

pub(crate) struct Exec {
    kernel: Kernel,
    plan: Arc<Plan>,
    run_id: Arc<str>,
    opts: RunOptions,
    nodes: Vec<Node>,
    lanes: Vec<Lane>,
    running: usize,
    max: usize,
    inflight: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Attempts to submit once the journal is written (this turn of the loop).
    staged: Vec<(Ix, u32, TaskSpec, Option<PathBuf>)>,
    writer: Option<Writer>,
    journal: Option<Journal>,
    listener: Option<UnboundedSender<Arc<RunEvent>>>,
    seq: u64,
    unended: usize,
    aborting: bool,
    abort_cause: Option<String>,
    interrupted: bool,
    stop: CancellationToken,
    failure: Option<StateError>,
    scratch: Option<PathBuf>,
    /// `scratch`, open (outputs files are looked up in it by name).
    scratch_fd: Option<std::os::fd::OwnedFd>,
    temp_scratch: bool,
    cache_on: bool,
    resumed: bool,
    restored_items: HashMap<String, StepRecord>,
    next_no: u32,
    /// The writer operation that creates the run (0: none).
    create_op: u64,
    /// Items of a `for_each` waiting for their rows to be committed (by operation
    /// `items_op`) before they may start: an item that started and ended before its row was
    /// on disk would be unknown to a resume, and run again.
    held_items: Vec<Ix>,
    items_op: u64,
    rng: fastrand::Rng,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("run_id", &self.run_id)
            .field("steps", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

fn settings(opts: &RunOptions) -> String {
    json!({
        "workdir": opts.workdir.display().to_string(),
        "max_concurrency": opts.max_concurrency,
        "cache": opts.cache,
        "extra": opts.extra,
    })
    .to_string()
}

fn tail(s: &str) -> &str {
    if s.len() <= RESULT_TAIL {
        return s;
    }
    let mut start = s.len() - RESULT_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A command's result for the state: exit code and the ends of stdout and stderr.
fn command_result(exit_code: Option<i32>, v: Option<&Value>) -> Option<Value> {
    let v = v?;
    let out = v.get("stdout").and_then(Value::as_str).unwrap_or("");
    let err = v.get("stderr").and_then(Value::as_str).unwrap_or("");
    Some(json!({"exit_code": exit_code, "stdout": tail(out), "stderr": tail(err)}))
}

fn attempt_word(s: AttemptStatus) -> &'static str {
    match s {
        AttemptStatus::Succeeded => "succeeded",
        AttemptStatus::TimedOut => "timed_out",
        AttemptStatus::Cancelled => "cancelled",
        AttemptStatus::AgentLost => "agent_lost",
        _ => "failed",
    }
}

impl Exec {
    fn new(kernel: Kernel, plan: Arc<Plan>, mut opts: RunOptions, run_id: String) -> Exec {
        let mut lanes: Vec<Lane> = Vec::new();
        let mut lane_of: HashMap<Arc<str>, usize> = HashMap::new();
        let max = opts.max_concurrency.max(1);
        let mut nodes = Vec::with_capacity(plan.steps.len());
        for (i, s) in plan.steps.iter().enumerate() {
            let role = s.role.clone().unwrap_or_else(|| opts.local_role.clone());
            let lane = *lane_of.entry(role.clone()).or_insert_with(|| {
                lanes.push(Lane {
                    limit: opts
                        .role_capacity
                        .get(&*role)
                        .copied()
                        .unwrap_or(max)
                        .max(1),
                    role,
                    running: 0,
                    ready: VecDeque::new(),
                });
                lanes.len() - 1
            });
            let mut n = Node::new(i, i as u32, s.id.clone(), lane);
            n.waiting = s.deps.len() as u32;
            nodes.push(n);
        }
        let listener = opts.listener.take();
        let rng = fastrand::Rng::with_seed(opts.seed);
        Exec {
            kernel,
            run_id: Arc::from(run_id),
            unended: nodes.len(),
            nodes,
            lanes,
            running: 0,
            max,
            inflight: FuturesUnordered::new(),
            staged: Vec::new(),
            writer: None,
            journal: None,
            listener,
            seq: 0,
            aborting: false,
            abort_cause: None,
            interrupted: false,
            stop: CancellationToken::new(),
            failure: None,
            scratch: None,
            scratch_fd: None,
            temp_scratch: false,
            cache_on: false,
            resumed: false,
            restored_items: HashMap::new(),
            next_no: plan.steps.len() as u32,
            create_op: 0,
            held_items: Vec::new(),
            items_op: 0,
            rng,
            plan,
            opts,
        }
    }

    fn step_rows(&self) -> Vec<StepRow> {
        self.plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepRow {
                no: self.nodes[i].no,
                step_id: s.id.clone(),
                ord: i as i64,
                parent: None,
                item: None,
                name: s.name.clone(),
            })
            .collect()
    }

    fn scratch_dir(&mut self, store: Option<&StateStore>) {
        // Absolute: `$HIVE_OUTPUTS` must name the same file from a step's own `cwd` (a
        // relative `--state-dir` used to send a step with a `cwd` to write elsewhere).
        let dir = match store {
            Some(s) => s.run_dir(&self.run_id),
            None => {
                self.temp_scratch = true;
                std::env::temp_dir().join(format!("hive-run-{}", self.run_id))
            }
        };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        if std::fs::create_dir_all(&dir).is_ok() {
            self.scratch_fd = outputs::open_dir(&dir);
            self.scratch = Some(dir);
        }
    }

    pub(crate) async fn create(
        kernel: Kernel,
        plan: Arc<Plan>,
        store: Option<&StateStore>,
        opts: RunOptions,
        run_id: String,
    ) -> Result<Exec, RunError> {
        let mut ex = Exec::new(kernel, plan, opts, run_id);
        ex.scratch_dir(store);
        if let Some(store) = store {
            ex.cache_on = true;
            let plan_path = std::fs::canonicalize(ex.plan.path())
                .unwrap_or_else(|_| ex.opts.workdir.join(ex.plan.path()));
            let run = RunRow {
                run_id: ex.run_id.clone(),
                plan_id: ex.plan.id().to_string(),
                plan_version: ex.plan.version().to_string(),
                plan_path: plan_path.display().to_string(),
                plan_hash: ex.plan.hash().to_string(),
                vars: serde_json::to_string(&ex.opts.vars).unwrap_or_else(|_| "{}".into()),
                options: settings(&ex.opts),
                created_at: Timestamp::now(),
                metadata: (!ex.plan.metadata().is_null()).then(|| ex.plan.metadata().to_string()),
            };
            let steps = ex.step_rows();
            // The run's file first: once its header line is written the run can be resumed,
            // even if `hive` dies before the writer thread has committed the run (which it
            // does while the first steps start, instead of before).
            let mut journal = open_journal(store, &ex.run_id)?;
            journal.push(&journal_header(&run, &steps));
            if let Err(source) = journal.flush() {
                let path = journal.path().to_path_buf();
                return Err(StateError::Io { path, source }.into());
            }
            let mut w = store.writer(&ex.run_id, ex.listener.take())?;
            ex.create_op = w.send(Op::CreateRun { run, steps });
            w.flush();
            ex.writer = Some(w);
            ex.journal = Some(journal);
        }
        Ok(ex)
    }

    pub(crate) async fn resume(
        kernel: Kernel,
        plan: Arc<Plan>,
        store: &StateStore,
        opts: RunOptions,
        record: RunRecord,
        steps: Vec<StepRecord>,
        next_seq: u64,
    ) -> Result<Exec, RunError> {
        let mut ex = Exec::new(kernel, plan, opts, record.run_id.clone());
        ex.resumed = true;
        ex.cache_on = true;
        ex.seq = next_seq.saturating_sub(1);
        ex.scratch_dir(Some(store));
        ex.next_no = steps
            .iter()
            .map(|s| s.step_no + 1)
            .max()
            .unwrap_or(0)
            .max(ex.next_no);
        let mut by_id: HashMap<String, StepRecord> =
            steps.into_iter().map(|s| (s.step_id.clone(), s)).collect();
        for i in 0..ex.nodes.len() {
            let Some(r) = by_id.remove(&*ex.nodes[i].id) else {
                // A step added to the plan since (a forced resume): a new number.
                ex.nodes[i].no = ex.next_no;
                ex.next_no += 1;
                continue;
            };
            let n = &mut ex.nodes[i];
            n.no = r.step_no;
            n.attempts = r.attempts;
            if r.state.is_success() {
                n.phase = Phase::Ended;
                n.state = r.state;
                n.restored = true;
                n.outputs = r.outputs.map(Arc::new);
                n.result = r.result;
                n.exit_code = r.exit_code;
                n.started_at = r.started_at;
                n.finished_at = r.finished_at;
                n.cache_key = r.cache_key;
                ex.unended -= 1;
            }
        }
        ex.restored_items = by_id;
        for i in 0..ex.nodes.len() {
            let deps = ex.plan.steps[ex.nodes[i].step].deps.clone();
            ex.nodes[i].waiting = deps
                .iter()
                .filter(|&&d| ex.nodes[d].phase != Phase::Ended)
                .count() as u32;
        }
        let mut w = store.writer(&ex.run_id, ex.listener.take())?;
        let op = w.send(Op::ResumeRun {
            plan_hash: ex.plan.hash().to_string(),
            at: Timestamp::now(),
            steps: ex.step_rows(),
        });
        w.wait_for(op).await?;
        ex.writer = Some(w);
        ex.journal = Some(open_journal(store, &ex.run_id)?);
        Ok(ex)
    }

    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Waits until the run's creation is in the database.
    pub(crate) async fn wait_created(&mut self) -> Result<(), StateError> {
        match &mut self.writer {
            Some(w) if self.create_op > 0 => w.wait_for(self.create_op).await,
            _ => Ok(()),
        }
    }

    // ---------------------------------------------------------------------- events --

    /// Emits an event about step `no`: to the journal and the writer (which forwards it to
    /// the listener once it is in the database), or straight to the listener without a store.
    fn emit(&mut self, kind: RunEventKind, no: u32, update: Update) {
        if self.writer.is_none() && self.listener.is_none() {
            return;
        }
        self.seq += 1;
        let ev = Arc::new(RunEvent {
            seq: self.seq,
            at: Timestamp::now(),
            run: self.run_id.clone(),
            kind,
        });
        match (&mut self.writer, &mut self.journal) {
            (Some(w), Some(j)) => {
                let data = serde_json::to_string(&*ev).unwrap_or_default();
                j.push(&data);
                w.send(Op::Event {
                    ev,
                    data,
                    no,
                    update,
                });
            }
            _ => {
                if let Some(l) = &self.listener {
                    let _ = l.send(ev);
                }
            }
        }
    }

    /// Writes this turn's events to the journal, then submits the attempts they started,
    /// then hands the database writes to the writer thread. Returns the operation to wait
    /// for when the database lags too far behind.
    fn end_turn(&mut self) -> Option<u64> {
        if self.journal.is_none() && self.writer.is_none() {
            return None;
        }
        if let Some(j) = &mut self.journal {
            if let Err(source) = j.flush() {
                let path = j.path().to_path_buf();
                self.state_failed(StateError::Io { path, source });
            }
        }
        for (ix, attempt, spec, out_file) in std::mem::take(&mut self.staged) {
            let n = &self.nodes[ix];
            if n.phase == Phase::Starting && n.attempts == attempt {
                self.submit(ix, attempt, spec, out_file);
            }
        }
        if let Some(w) = &mut self.writer {
            // When every step left is running (the last round), the writer commits at once
            // instead of gathering: the run's end then waits for a small last batch. Once
            // no step is left, the run's end follows at once and commits with it.
            if self.unended > 0 && self.unended <= self.running {
                w.flush_now();
            } else {
                w.flush();
            }
            match w.committed() {
                Err(e) => self.state_failed(e),
                // Backpressure: the database may lag the journal, but not without bound.
                Ok(c) if w.sent() > c + MAX_BACKLOG => return Some(w.sent() - MAX_BACKLOG / 2),
                Ok(_) => {}
            }
        }
        None
    }

    // -------------------------------------------------------------------- the loop --

    pub(crate) async fn run(mut self) -> Result<RunReport, RunError> {
        let t0 = Instant::now();
        self.kernel.run_started(&self.run_id, self.plan.id());
        self.emit(
            RunEventKind::RunStarted {
                plan_id: self.plan.id().to_string(),
                steps: self.plan.len(),
                resumed: self.resumed,
            },
            0,
            Update::Run {
                state: RunState::Running,
                finished: false,
            },
        );
        for i in 0..self.plan.steps.len() {
            if self.nodes[i].phase == Phase::Waiting && self.nodes[i].waiting == 0 {
                self.decide(i);
            }
        }
        let cancel = self.opts.cancel.clone();
        loop {
            self.pump();
            if let Some(target) = self.end_turn() {
                if let Some(w) = &mut self.writer {
                    if let Err(e) = w.wait_for(target).await {
                        self.state_failed(e);
                    }
                }
            }
            if !self.held_items.is_empty() {
                // New items' rows are committed first (one commit, once per fan-out).
                if let Some(w) = &mut self.writer {
                    if let Err(e) = w.wait_for(self.items_op).await {
                        self.state_failed(e);
                    }
                }
                let items = std::mem::take(&mut self.held_items);
                self.release_items(items);
                continue;
            }
            if self.unended == 0 && self.staged.is_empty() && self.inflight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !self.interrupted => self.interrupt(),
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.on_done(done);
                    while let Some(Some(d)) = self.inflight.next().now_or_never() {
                        self.on_done(d);
                    }
                }
            }
        }
        let state = self.final_state();
        if self.interrupted && self.failure.is_none() && !self.inflight.is_empty() {
            // Unreachable: the loop drains every completion before it ends.
            tracing::warn!("run {}: completions left after the end", self.run_id);
        }
        self.emit(
            RunEventKind::RunFinished {
                state,
                duration_ms: t0.elapsed().as_secs_f64() * 1e3,
            },
            0,
            Update::Run {
                state,
                finished: true,
            },
        );
        self.kernel
            .run_finished(&self.run_id, self.plan.id(), state.as_str());
        if let Some(j) = &mut self.journal {
            if let Err(source) = j.flush() {
                let path = j.path().to_path_buf();
                if self.failure.is_none() {
                    self.failure = Some(StateError::Io { path, source });
                }
            }
        }
        // The writer commits what is left while the report is built.
        let mut writer = self.writer.take();
        if let Some(w) = &mut writer {
            w.close();
        }
        let report = self.report(state, t0.elapsed());
        if let Some(w) = writer {
            let r = w.finish().await;
            if self.failure.is_none() {
                if let Err(e) = r {
                    self.failure = Some(e);
                }
            }
        }
        if self.temp_scratch {
            if let Some(d) = &self.scratch {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        if let Some(e) = self.failure.take() {
            return Err(RunError::State(e));
        }
        Ok(report)
    }

    fn final_state(&self) -> RunState {
        if self.interrupted {
            return RunState::Cancelled;
        }
        let bad = self.nodes.iter().any(|n| match n.state {
            StepState::Failed | StepState::TimedOut => self.plan.steps[n.step].critical,
            StepState::Cancelled => true,
            _ => false,
        });
        if bad {
            RunState::Failed
        } else {
            RunState::Succeeded
        }
    }

    /// The run's report; moves the steps' results out (the run is over).
    fn report(&mut self, state: RunState, wall: Duration) -> RunReport {
        // Plan order, each step's items after it.
        let mut order = Vec::with_capacity(self.nodes.len());
        for i in 0..self.plan.steps.len().min(self.nodes.len()) {
            order.push(i);
            order.extend(self.nodes[i].children.iter().copied());
        }
        let mut steps = Vec::with_capacity(order.len());
        for ix in order {
            let parent = self.nodes[ix].parent.map(|p| self.nodes[p].id.clone());
            let n = &mut self.nodes[ix];
            let s = &self.plan.steps[n.step];
            steps.push(StepReport {
                id: n.id.clone(),
                name: if parent.is_some() {
                    n.id.clone()
                } else {
                    s.name.clone()
                },
                parent,
                state: n.state,
                attempts: n.attempts,
                critical: s.critical,
                started_at: n.started_at,
                finished_at: n.finished_at,
                duration: n.duration,
                exit_code: n.exit_code,
                error: n.error.take(),
                outputs: n
                    .outputs
                    .take()
                    .map(|o| Arc::try_unwrap(o).unwrap_or_else(|o| (*o).clone())),
                result: n.result.take(),
                restored: n.restored,
            });
        }
        RunReport {
            run_id: self.run_id.to_string(),
            state,
            steps,
            wall,
            resumed: self.resumed,
        }
    }

    // ------------------------------------------------------------------ scheduling --

    /// Decides what to do with a step whose dependencies all ended.
    fn decide(&mut self, ix: Ix) {
        if self.nodes[ix].phase != Phase::Waiting {
            return;
        }
        if self.aborting || self.interrupted {
            let why = self.abort_reason();
            return self.finish(ix, StepState::Cancelled, End::error(why));
        }
        let plan = self.plan.clone();
        let step = &plan.steps[self.nodes[ix].step];
        if let Some(w) = &step.when {
            let (src, expr) = &**w;
            let holds = expr.holds(&|id| self.view(id));
            if !holds {
                return self.finish(
                    ix,
                    StepState::Skipped,
                    End::error(format!("condition is false: {src}")),
                );
            }
        } else if let Some(&d) = step.deps.iter().find(|&&d| {
            let n = &self.nodes[d];
            !(n.state.is_success()
                || (matches!(n.state, StepState::Failed | StepState::TimedOut)
                    && plan.steps[d].on_failure == OnFailure::Continue))
        }) {
            let n = &self.nodes[d];
            let why = format!("dependency `{}` {}", n.id, n.state);
            return self.finish(ix, StepState::Skipped, End::error(why));
        }
        if step.for_each.is_some() {
            return self.expand(ix);
        }
        self.make_ready(ix, false);
    }

    fn make_ready(&mut self, ix: Ix, front: bool) {
        let n = &mut self.nodes[ix];
        n.phase = Phase::Ready;
        let lane = &mut self.lanes[n.lane];
        if front {
            lane.ready.push_front(ix);
        } else {
            lane.ready.push_back(ix);
        }
    }

    fn view(&self, id: &str) -> Option<StepView<'_>> {
        let &i = self.plan.index.get(id)?;
        let n = &self.nodes[i];
        Some(StepView {
            status: n.state.as_str(),
            exit_code: n.exit_code.map(i64::from),
            outputs: n.outputs.as_deref(),
        })
    }

    /// Starts ready steps while slots are free.
    fn pump(&mut self) {
        while self.running < self.max {
            let mut started = false;
            for l in 0..self.lanes.len() {
                if self.running >= self.max {
                    break;
                }
                let lane = &mut self.lanes[l];
                if lane.running >= lane.limit {
                    continue;
                }
                let Some(ix) = lane.ready.pop_front() else {
                    continue;
                };
                if self.nodes[ix].phase != Phase::Ready {
                    started = true; // a stale entry: look again
                    continue;
                }
                lane.running += 1;
                self.running += 1;
                started = true;
                self.start(ix);
            }
            if !started {
                break;
            }
        }
    }

    /// A ready step got a slot: check the cache, or begin an attempt.
    fn start(&mut self, ix: Ix) {
        let plan = self.plan.clone();
        let step = &plan.steps[self.nodes[ix].step];
        if self.cache_on && step.cache.is_some() && self.nodes[ix].cache_key.is_none() {
            self.nodes[ix].phase = Phase::CacheCheck;
            match self.render(ix) {
                Ok(input) => {
                    self.inflight.push(Box::pin(async move {
                        let key = tokio::task::spawn_blocking(move || outputs::cache_key(&input))
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()));
                        Done::Key { node: ix, key }
                    }));
                }
                Err(e) => self.finish(ix, StepState::Failed, End::error(e)),
            }
            return;
        }
        self.begin_attempt(ix);
    }

    /// Resolves a run-time reference for node `ix`.
    fn resolve(&self, ix: Ix, r: &Ref) -> Result<Value, String> {
        match r {
            Ref::Output { step, path } => {
                let n = self
                    .plan
                    .index
                    .get(step)
                    .map(|&i| &self.nodes[i])
                    .ok_or_else(|| format!("no step `{step}`"))?;
                n.outputs
                    .as_deref()
                    .and_then(|o| crate::plan::lookup(o, path))
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "`${{steps.{step}.outputs.{}}}` is not set (step `{step}` ended {})",
                            path.join("."),
                            n.state
                        )
                    })
            }
            Ref::Item(path) => {
                let (_, item) = self.nodes[ix]
                    .item
                    .as_ref()
                    .ok_or_else(|| "`${item}` outside a for_each".to_string())?;
                crate::plan::lookup(item, path).cloned().ok_or_else(|| {
                    format!("`${{item.{}}}`: the item has no such key", path.join("."))
                })
            }
            Ref::Index => self.nodes[ix]
                .item
                .as_ref()
                .map(|(i, _)| Value::from(*i))
                .ok_or_else(|| "`${index}` outside a for_each".to_string()),
        }
    }

    fn workdir_of(&self, cwd: Option<String>) -> PathBuf {
        match cwd {
            Some(c) if std::path::Path::new(&c).is_absolute() => PathBuf::from(c),
            Some(c) => self.opts.workdir.join(c),
            None => self.opts.workdir.clone(),
        }
    }

    /// The rendered command (or task) of node `ix`, as the parts of its cache key (a command
    /// step's `what` is also the base of its payload).
    fn render(&self, ix: Ix) -> Result<KeyInput, String> {
        let step = &self.plan.steps[self.nodes[ix].step];
        let resolve = |r: &Ref| self.resolve(ix, r);
        match &step.action {
            Action::Command {
                command,
                args,
                env,
                cwd,
            } => {
                let command = command.render(&resolve)?;
                let args: Vec<String> = args
                    .iter()
                    .map(|a| a.render(&resolve))
                    .collect::<Result<_, _>>()?;
                let mut envs = std::collections::BTreeMap::new();
                for (k, v) in env {
                    envs.insert(k.clone(), v.render(&resolve)?);
                }
                let cwd = match cwd {
                    Some(c) => Some(c.render(&resolve)?),
                    None => None,
                };
                let dir = self.workdir_of(cwd);
                let mut what = json!({"command": command});
                if !args.is_empty() {
                    what["args"] = json!(args);
                }
                if let Some(r) = &step.role {
                    what["role"] = json!(&**r);
                }
                Ok(KeyInput {
                    what,
                    env: envs,
                    cwd: dir,
                    inputs: self.cache_inputs(ix)?,
                    extra: step.cache.as_ref().and_then(|c| c.key.clone()),
                })
            }
            Action::Task(t) => {
                let task = t.render(&resolve)?;
                Ok(KeyInput {
                    what: json!({"role": step.role.as_deref(), "task": &*task}),
                    env: Default::default(),
                    cwd: self.opts.workdir.clone(),
                    inputs: self.cache_inputs(ix)?,
                    extra: step.cache.as_ref().and_then(|c| c.key.clone()),
                })
            }
        }
    }

    fn cache_inputs(&self, ix: Ix) -> Result<Vec<String>, String> {
        let step = &self.plan.steps[self.nodes[ix].step];
        match &step.cache {
            Some(c) => c
                .inputs
                .iter()
                .map(|t| t.render(&|r| self.resolve(ix, r)))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    /// Builds the task of the next attempt and makes its start durable (or submits it).
    fn begin_attempt(&mut self, ix: Ix) {
        let plan = self.plan.clone();
        let step = &plan.steps[self.nodes[ix].step];
        let attempt = self.nodes[ix].attempts + 1;
        let (payload, out_file) = match &step.action {
            Action::Task(t) => match t.render(&|r| self.resolve(ix, r)) {
                Ok(p) => (p, None),
                Err(e) => return self.finish(ix, StepState::Failed, End::error(e)),
            },
            Action::Command { .. } => match self.render(ix) {
                Ok(key) => {
                    let mut what = key.what;
                    let mut env: Map<String, Value> = key
                        .env
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect();
                    env.insert("HIVE_RUN_ID".into(), json!(&*self.run_id));
                    env.insert("HIVE_STEP_ID".into(), json!(&*self.nodes[ix].id));
                    env.insert("HIVE_ATTEMPT".into(), json!(attempt.to_string()));
                    let out_file = self
                        .scratch
                        .as_ref()
                        .map(|d| d.join(format!("{}.{attempt}.outputs", self.nodes[ix].id)));
                    if let Some(f) = &out_file {
                        env.insert("HIVE_OUTPUTS".into(), json!(f.display().to_string()));
                    }
                    what["env"] = Value::Object(env);
                    what["cwd"] = json!(key.cwd.display().to_string());
                    if let Value::Object(m) = &mut what {
                        m.remove("role");
                    }
                    (Arc::new(what), out_file)
                }
                Err(e) => return self.finish(ix, StepState::Failed, End::error(e)),
            },
        };
        let n = &mut self.nodes[ix];
        n.attempts = attempt;
        n.phase = Phase::Starting;
        n.state = StepState::Running;
        n.started_at = Some(Timestamp::now());
        let mut spec = TaskSpec::new(Target::Role(self.lanes[n.lane].role.clone()), Value::Null);
        spec.payload = payload;
        spec.name = Some(n.id.clone());
        spec.timeout = step.timeout;
        let (id, no) = (n.id.clone(), n.no);
        self.emit(
            RunEventKind::StepStarted { step: id, attempt },
            no,
            Update::Start { attempt },
        );
        if self.journal.is_some() {
            self.staged.push((ix, attempt, spec, out_file));
        } else {
            self.submit(ix, attempt, spec, out_file);
        }
    }

    fn submit(&mut self, ix: Ix, attempt: u32, spec: TaskSpec, out_file: Option<PathBuf>) {
        self.nodes[ix].phase = Phase::Running;
        match self.kernel.try_submit(spec.clone()) {
            Ok(h) => {
                self.nodes[ix].task = Some(h.id());
                self.inflight.push(Box::pin(h.map(move |r| Done::Task {
                    node: ix,
                    attempt,
                    result: Box::new(r),
                    out_file,
                })));
            }
            Err(SubmitError::Busy(_)) => {
                let k = self.kernel.clone();
                self.inflight.push(Box::pin(async move {
                    match k.submit(spec).await {
                        Ok(h) => Done::Task {
                            node: ix,
                            attempt,
                            result: Box::new(h.await),
                            out_file,
                        },
                        Err(e) => Done::Submit {
                            node: ix,
                            attempt,
                            error: e.to_string(),
                        },
                    }
                }));
            }
            Err(e) => self.on_done(Done::Submit {
                node: ix,
                attempt,
                error: e.to_string(),
            }),
        }
    }

    // ------------------------------------------------------------------ completions --

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Task {
                node,
                attempt,
                result,
                out_file,
            } => self.on_task(node, attempt, *result, out_file),
            Done::Submit {
                node,
                attempt,
                error,
            } => {
                let n = &self.nodes[node];
                if n.phase == Phase::Running && n.attempts == attempt {
                    let end = AttemptEnd {
                        attempt,
                        state: "failed",
                        exit_code: None,
                        error: Some(error.clone()),
                        agent: None,
                    };
                    self.finish(
                        node,
                        StepState::Failed,
                        End {
                            error: Some(error),
                            attempt: Some(end),
                            ..End::default()
                        },
                    );
                }
            }
            Done::Backoff { node } => {
                if self.nodes[node].phase == Phase::Backoff {
                    self.make_ready(node, true);
                }
            }
            Done::Key { node, key } => {
                if self.nodes[node].phase != Phase::CacheCheck {
                    return;
                }
                match key {
                    Err(e) => self.finish(node, StepState::Failed, End::error(e)),
                    Ok(key) => {
                        self.nodes[node].cache_key = Some(key.clone());
                        match (&mut self.writer, self.opts.cache) {
                            (Some(w), CacheMode::Use) => {
                                let (tx, rx) = tokio::sync::oneshot::channel();
                                w.send(Op::CacheGet { key, reply: tx });
                                self.inflight.push(Box::pin(async move {
                                    Done::Lookup {
                                        node,
                                        hit: rx.await.ok().flatten(),
                                    }
                                }));
                            }
                            _ => self.begin_attempt(node),
                        }
                    }
                }
            }
            Done::Lookup { node, hit } => {
                if self.nodes[node].phase != Phase::CacheCheck {
                    return;
                }
                match hit {
                    Some(entry) => {
                        let key = self.nodes[node].cache_key.clone().unwrap_or_default();
                        let short = key.get(..12).unwrap_or(&key).to_string();
                        self.nodes[node].error = None;
                        self.finish(
                            node,
                            StepState::Cached,
                            End {
                                outputs: entry.outputs.map(Arc::new),
                                result: Some(json!({
                                    "cached_from": entry.run_id,
                                    "cache_key": short,
                                    "result": entry.result,
                                })),
                                ..End::default()
                            },
                        );
                    }
                    None => self.begin_attempt(node),
                }
            }
        }
    }

    fn on_task(&mut self, ix: Ix, attempt: u32, r: TaskResult, out_file: Option<PathBuf>) {
        {
            let n = &self.nodes[ix];
            if n.phase != Phase::Running || n.attempts != attempt {
                return;
            }
        }
        let last = r.attempts.last();
        let exit_code = r.exit_code();
        let agent = last.map(|a| a.agent.to_string());
        let attempt_state = last.map(|a| attempt_word(a.status));
        {
            let n = &mut self.nodes[ix];
            n.task = None;
            n.duration = last.map_or(Duration::ZERO, |a| a.finished_at.since(a.started_at));
            if let Some(a) = last {
                n.started_at = Some(a.started_at);
            }
            n.exit_code = exit_code;
        }
        let is_command = matches!(
            self.plan.steps[self.nodes[ix].step].action,
            Action::Command { .. }
        );
        let end = |state: &'static str, error: Option<String>| AttemptEnd {
            attempt,
            state,
            exit_code,
            error,
            agent: agent.clone(),
        };
        match r.outcome {
            Outcome::Succeeded(v) | Outcome::Cached(v) => {
                let collected = if is_command {
                    self.command_outputs(ix, &v, out_file.as_deref())
                } else {
                    self.task_outputs(ix, &v)
                };
                let result = if is_command {
                    command_result(exit_code, Some(&v))
                } else {
                    Some(v)
                };
                match collected {
                    Ok(outputs) => {
                        let cache_put = self.nodes[ix].cache_key.is_some();
                        self.finish(
                            ix,
                            StepState::Succeeded,
                            End {
                                attempt: Some(end("succeeded", None)),
                                outputs,
                                result,
                                exit_code,
                                cache_put,
                                ..End::default()
                            },
                        )
                    }
                    Err(e) => self.attempt_failed(
                        ix,
                        attempt,
                        StepState::Failed,
                        e,
                        true,
                        end("failed", None),
                        result,
                    ),
                }
            }
            Outcome::Failed(e) => {
                let result = if is_command {
                    command_result(exit_code, e.detail.as_ref())
                } else {
                    e.detail.clone()
                };
                let word = attempt_state.unwrap_or("failed");
                self.attempt_failed(
                    ix,
                    attempt,
                    StepState::Failed,
                    e.message.clone(),
                    e.retryable,
                    end(word, Some(e.message)),
                    result,
                )
            }
            Outcome::TimedOut => {
                let msg = last
                    .and_then(|a| a.error.clone())
                    .unwrap_or_else(|| "timed out".into());
                self.attempt_failed(
                    ix,
                    attempt,
                    StepState::TimedOut,
                    msg.clone(),
                    true,
                    end("timed_out", Some(msg)),
                    None,
                )
            }
            Outcome::Cancelled | Outcome::Skipped(_) => {
                let why = self.abort_reason();
                self.finish(
                    ix,
                    StepState::Cancelled,
                    End {
                        error: Some(why.clone()),
                        attempt: Some(end("cancelled", Some(why))),
                        ..End::default()
                    },
                )
            }
        }
    }

    fn command_outputs(
        &self,
        ix: Ix,
        v: &Value,
        out_file: Option<&std::path::Path>,
    ) -> Result<Option<Arc<Value>>, String> {
        let stdout = v.get("stdout").and_then(Value::as_str).unwrap_or("");
        let mut outs = outputs::from_stdout(stdout)?;
        if let Some(f) = out_file {
            if let Some(m) = outputs::from_file(f, self.scratch_fd.as_ref())? {
                outs.extend(m);
            }
        }
        self.check_declared(ix, outs)
    }

    fn task_outputs(&self, ix: Ix, v: &Value) -> Result<Option<Arc<Value>>, String> {
        match v {
            Value::Object(m) => self.check_declared(ix, m.clone()),
            _ => self.check_declared(ix, Map::new()),
        }
    }

    /// Outputs must include every declared name.
    fn check_declared(
        &self,
        ix: Ix,
        mut outs: Map<String, Value>,
    ) -> Result<Option<Arc<Value>>, String> {
        let step = &self.plan.steps[self.nodes[ix].step];
        if let (Some(names), true) = (&step.outputs, self.opts.dry_run) {
            for n in names {
                if !outs.contains_key(n) {
                    outs.insert(n.clone(), Value::String(format!("dry-run:{n}")));
                }
            }
        }
        if let Some(names) = &step.outputs {
            let missing: Vec<&str> = names
                .iter()
                .filter(|k| !outs.contains_key(*k))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "declared output(s) {} not emitted (print `{}{{\"{}\": ...}}` or write them to $HIVE_OUTPUTS)",
                    missing.join(", "),
                    outputs::OUTPUT_MARKER,
                    missing[0]
                ));
            }
        }
        Ok(if outs.is_empty() {
            None
        } else {
            Some(Arc::new(Value::Object(outs)))
        })
    }

    /// An attempt failed: retry after the backoff, or end the step.
    #[allow(clippy::too_many_arguments)]
    fn attempt_failed(
        &mut self,
        ix: Ix,
        attempt: u32,
        state: StepState,
        error: String,
        retryable: bool,
        end: AttemptEnd,
        result: Option<Value>,
    ) {
        let plan = self.plan.clone();
        let step = &plan.steps[self.nodes[ix].step];
        let failures = self.nodes[ix].failures + 1;
        self.nodes[ix].failures = failures;
        if retryable && failures < step.retry.max_attempts && !self.aborting && !self.interrupted {
            let delay = step.retry.delay(failures, &mut self.rng);
            let n = &mut self.nodes[ix];
            n.phase = Phase::Backoff;
            n.state = StepState::Retrying;
            n.error = Some(error.clone());
            n.result = result;
            self.release_slot(ix);
            let (id, no) = (self.nodes[ix].id.clone(), self.nodes[ix].no);
            self.emit(
                RunEventKind::StepRetrying {
                    step: id,
                    attempt,
                    delay_ms: delay.as_millis() as u64,
                    error,
                },
                no,
                Update::Retry { end },
            );
            let stop = self.stop.clone();
            self.inflight.push(Box::pin(async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => {}
                }
                Done::Backoff { node: ix }
            }));
            return;
        }
        let exit_code = end.exit_code;
        self.finish(
            ix,
            state,
            End {
                error: Some(error),
                attempt: Some(end),
                result,
                exit_code,
                ..End::default()
            },
        );
    }

    fn release_slot(&mut self, ix: Ix) {
        let lane = self.nodes[ix].lane;
        self.running = self.running.saturating_sub(1);
        self.lanes[lane].running = self.lanes[lane].running.saturating_sub(1);
    }

    // ----------------------------------------------------------------------- endings --

    /// Ends a step (exactly once) and lets the graph react.
    fn finish(&mut self, ix: Ix, state: StepState, end: End) {
        if self.nodes[ix].phase == Phase::Ended {
            return;
        }
        if self.nodes[ix].holds_slot() {
            self.release_slot(ix);
        }
        let now = Timestamp::now();
        let n = &mut self.nodes[ix];
        debug_assert!(
            n.state.can_become(state),
            "step {}: {} -> {state} breaks the step state machine",
            n.id,
            n.state
        );
        n.phase = Phase::Ended;
        n.state = state;
        n.finished_at = Some(now);
        n.task = None;
        if end.error.is_some() || state.is_success() {
            n.error = end.error.clone();
        }
        if end.outputs.is_some() {
            n.outputs = end.outputs.clone();
        }
        if end.result.is_some() {
            n.result = end.result.clone();
        }
        if end.exit_code.is_some() {
            n.exit_code = end.exit_code;
        }
        self.unended = self.unended.saturating_sub(1);
        let (id, attempts, duration, exit_code, error) = (
            n.id.clone(),
            n.attempts,
            n.duration,
            n.exit_code,
            n.error.clone(),
        );
        let cache_key = n.cache_key.clone();
        let no = n.no;
        self.emit(
            RunEventKind::StepFinished {
                step: id,
                state,
                attempts,
                duration_ms: duration.as_secs_f64() * 1e3,
                exit_code,
                error: error.clone(),
                outputs: end.outputs.as_deref().cloned(),
            },
            no,
            Update::Finish(Box::new(Finish {
                state,
                attempts,
                end: end.attempt,
                exit_code,
                error,
                outputs: end.outputs,
                result: end.result,
                cache_put: end.cache_put && state == StepState::Succeeded,
                cache_key,
            })),
        );
        match self.nodes[ix].parent {
            Some(p) => self.item_ended(p, ix),
            None => self.propagate(ix),
        }
    }

    /// What a step's end does to its dependents.
    fn propagate(&mut self, ix: Ix) {
        let plan = self.plan.clone();
        let step = &plan.steps[self.nodes[ix].step];
        match self.nodes[ix].state {
            StepState::Failed | StepState::TimedOut => match step.on_failure {
                OnFailure::Continue => self.release_dependents(ix),
                OnFailure::SkipDependents => self.force_skip(ix),
                OnFailure::Abort => {
                    self.abort(step.critical, &step.id);
                    self.release_dependents(ix);
                }
            },
            StepState::Skipped if self.nodes[ix].forced => self.force_skip(ix),
            _ => self.release_dependents(ix),
        }
    }

    fn release_dependents(&mut self, ix: Ix) {
        let plan = self.plan.clone();
        for &d in &plan.steps[self.nodes[ix].step].dependents {
            let n = &mut self.nodes[d];
            if n.phase != Phase::Waiting {
                continue;
            }
            n.waiting = n.waiting.saturating_sub(1);
            if n.waiting == 0 {
                self.decide(d);
            }
        }
    }

    /// `skip_dependents`: every step downstream of `ix` is skipped, whatever else it waits
    /// for, except steps with a `when`: those are decided by their condition once their
    /// dependencies have ended (that is how a plan runs cleanup after a failure).
    fn force_skip(&mut self, ix: Ix) {
        let plan = self.plan.clone();
        let cause = self.nodes[ix].id.clone();
        let verb = if self.nodes[ix].forced {
            "was skipped"
        } else {
            "failed"
        };
        for &d in &plan.steps[self.nodes[ix].step].dependents {
            if self.nodes[d].phase != Phase::Waiting {
                continue;
            }
            if plan.steps[d].when.is_some() {
                let n = &mut self.nodes[d];
                n.waiting = n.waiting.saturating_sub(1);
                if n.waiting == 0 {
                    self.decide(d);
                }
                continue;
            }
            self.nodes[d].forced = true;
            self.finish(
                d,
                StepState::Skipped,
                End::error(format!("dependency `{cause}` {verb} (skip_dependents)")),
            );
        }
    }

    fn abort_reason(&self) -> String {
        if self.interrupted {
            "the run was interrupted".into()
        } else {
            match &self.abort_cause {
                Some(c) => format!("the run was aborted: step `{c}` failed"),
                None => "the run was aborted".into(),
            }
        }
    }

    /// `on_failure: abort`: steps not started are cancelled; running ones too if `critical`.
    fn abort(&mut self, critical: bool, cause: &str) {
        if !self.aborting {
            self.aborting = true;
            self.abort_cause = Some(cause.to_string());
            self.stop.cancel();
        }
        self.cancel_pending(critical);
    }

    fn cancel_pending(&mut self, running_too: bool) {
        let why = self.abort_reason();
        for ix in 0..self.nodes.len() {
            match self.nodes[ix].phase {
                Phase::Waiting | Phase::Ready | Phase::Backoff | Phase::CacheCheck => {
                    self.finish(ix, StepState::Cancelled, End::error(why.clone()));
                }
                Phase::Starting => {
                    let attempt = self.nodes[ix].attempts;
                    self.finish(
                        ix,
                        StepState::Cancelled,
                        End {
                            error: Some(why.clone()),
                            attempt: Some(AttemptEnd {
                                attempt,
                                state: "cancelled",
                                exit_code: None,
                                error: Some(why.clone()),
                                agent: None,
                            }),
                            ..End::default()
                        },
                    );
                }
                Phase::Running if running_too => {
                    if let Some(t) = self.nodes[ix].task {
                        self.kernel.cancel(t);
                    }
                }
                _ => {}
            }
        }
    }

    /// Ctrl-C: everything stops; the run ends cancelled.
    fn interrupt(&mut self) {
        self.interrupted = true;
        self.stop.cancel();
        self.cancel_pending(true);
    }

    /// The state writer failed: nothing more can be made durable, so the run stops.
    fn state_failed(&mut self, e: StateError) {
        if self.failure.is_none() {
            self.failure = Some(e);
        }
        self.interrupted = true;
        self.stop.cancel();
        self.cancel_pending(true);
        // Starts that could not be made durable are not submitted.
        self.staged.clear();
        self.journal = None;
    }

    // ---------------------------------------------------------------------- for_each --

    fn expand(&mut self, ix: Ix) {
        let plan = self.plan.clone();
        let step = &plan.steps[self.nodes[ix].step];
        let items: Vec<Value> = match step.for_each.as_deref() {
            Some(ForEach::Items(v)) => v.clone(),
            Some(ForEach::From { step: src, path }) => {
                let r = Ref::Output {
                    step: src.clone(),
                    path: path.clone(),
                };
                match self.resolve(ix, &r) {
                    Ok(Value::Array(a)) => a,
                    Ok(other) => {
                        let msg = format!(
                            "for_each: `${{steps.{src}.outputs.{}}}` is not a list but {}",
                            path.join("."),
                            crate::plan::kind_of(&other)
                        );
                        return self.finish(ix, StepState::Failed, End::error(msg));
                    }
                    Err(e) => return self.finish(ix, StepState::Failed, End::error(e)),
                }
            }
            None => Vec::new(),
        };
        let parent_id = self.nodes[ix].id.clone();
        let lane = self.nodes[ix].lane;
        let mut rows = Vec::with_capacity(items.len());
        let mut left = 0;
        for (i, item) in items.into_iter().enumerate() {
            let id: Arc<str> = Arc::from(format!("{parent_id}[{i}]"));
            let restored = self.restored_items.remove(&*id);
            let no = match &restored {
                Some(r) => r.step_no,
                None => {
                    self.next_no += 1;
                    self.next_no - 1
                }
            };
            rows.push(StepRow {
                no,
                step_id: id.clone(),
                ord: ix as i64,
                parent: Some(parent_id.clone()),
                item: Some(item.to_string()),
                name: id.clone(),
            });
            let mut n = Node::new(self.nodes[ix].step, no, id, lane);
            n.parent = Some(ix);
            n.item = Some((i, Arc::new(item)));
            if let Some(r) = restored {
                n.attempts = r.attempts;
                if r.state.is_success() {
                    n.phase = Phase::Ended;
                    n.state = r.state;
                    n.restored = true;
                    n.outputs = r.outputs.map(Arc::new);
                    n.result = r.result;
                    n.exit_code = r.exit_code;
                    n.started_at = r.started_at;
                    n.finished_at = r.finished_at;
                    n.cache_key = r.cache_key;
                }
            }
            let child = self.nodes.len();
            if n.phase != Phase::Ended {
                left += 1;
                self.unended += 1;
            }
            self.nodes.push(n);
            self.nodes[ix].children.push(child);
        }
        let count = rows.len();
        if let Some(w) = &mut self.writer {
            self.items_op = w.send(Op::InsertSteps(rows));
        }
        let n = &mut self.nodes[ix];
        n.phase = Phase::Expanded;
        n.state = StepState::Running;
        n.started_at = Some(Timestamp::now());
        n.children_left = left;
        let no = n.no;
        self.emit(
            RunEventKind::StepExpanded {
                step: parent_id,
                items: count,
            },
            no,
            Update::Expand,
        );
        if left == 0 {
            return self.group_done(ix);
        }
        let children = self.nodes[ix].children.clone();
        if self.writer.is_some() {
            self.held_items.extend(children);
        } else {
            self.release_items(children);
        }
    }

    /// Items of a `for_each` may start (their rows are on disk).
    fn release_items(&mut self, items: Vec<Ix>) {
        for c in items {
            if self.nodes[c].phase == Phase::Waiting {
                if self.aborting || self.interrupted {
                    let why = self.abort_reason();
                    self.finish(c, StepState::Cancelled, End::error(why));
                } else {
                    self.make_ready(c, false);
                }
            }
        }
    }

    fn item_ended(&mut self, parent: Ix, child: Ix) {
        let plan = self.plan.clone();
        let step = &plan.steps[self.nodes[parent].step];
        let failed = matches!(
            self.nodes[child].state,
            StepState::Failed | StepState::TimedOut
        );
        if failed && step.on_failure == OnFailure::Abort {
            let id = self.nodes[child].id.clone();
            self.abort(step.critical, &id);
        }
        let p = &mut self.nodes[parent];
        p.children_left = p.children_left.saturating_sub(1);
        if p.children_left == 0 && p.phase == Phase::Expanded {
            self.group_done(parent);
        }
    }

    /// Every item of a `for_each` ended: the step ends with them.
    fn group_done(&mut self, ix: Ix) {
        let children = self.nodes[ix].children.clone();
        let total = children.len();
        let failed: Vec<Ix> = children
            .iter()
            .copied()
            .filter(|&c| matches!(self.nodes[c].state, StepState::Failed | StepState::TimedOut))
            .collect();
        let cancelled = children
            .iter()
            .any(|&c| self.nodes[c].state == StepState::Cancelled);
        // The step's own figures: its items' span (each item has its own attempts).
        let started = self.nodes[ix].started_at;
        self.nodes[ix].duration = started.map_or(Duration::ZERO, |t| Timestamp::now().since(t));
        if let Some(&first) = failed.first() {
            let msg = format!(
                "{} of {total} items failed; `{}`: {}",
                failed.len(),
                self.nodes[first].id,
                self.nodes[first].error.clone().unwrap_or_default()
            );
            return self.finish(ix, StepState::Failed, End::error(msg));
        }
        if cancelled {
            let why = self.abort_reason();
            return self.finish(ix, StepState::Cancelled, End::error(why));
        }
        // Outputs: each key maps to the list of the items' values, in item order.
        let step = &self.plan.steps[self.nodes[ix].step];
        let mut keys: Vec<String> = step.outputs.clone().unwrap_or_default();
        if keys.is_empty() {
            for &c in &children {
                if let Some(Value::Object(m)) = self.nodes[c].outputs.as_deref() {
                    for k in m.keys() {
                        if !keys.contains(k) {
                            keys.push(k.clone());
                        }
                    }
                }
            }
        }
        let mut outs = Map::new();
        for k in keys {
            let vals: Vec<Value> = children
                .iter()
                .map(|&c| {
                    self.nodes[c]
                        .outputs
                        .as_deref()
                        .and_then(|o| o.get(&k))
                        .cloned()
                        .unwrap_or(Value::Null)
                })
                .collect();
            outs.insert(k, Value::Array(vals));
        }
        let outputs = (!outs.is_empty()).then(|| Arc::new(Value::Object(outs)));
        self.finish(
            ix,
            StepState::Succeeded,
            End {
                outputs,
                ..End::default()
            },
        );
    }
}

impl End {
    fn error(e: impl Into<String>) -> End {
        End {
            error: Some(e.into()),
            ..End::default()
        }
    }
}
