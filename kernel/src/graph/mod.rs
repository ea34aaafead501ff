//! The graph executor: runs a [`Plan`] on a [`Kernel`] as a DAG. Dispatch is event-driven
//! (a step starts when its last dependency ends and a slot is free; no polling loop), bounded
//! by the run's `max_concurrency` and by the capacity of each role. Failure policies, `when`
//! conditions, outputs, `for_each` fan-out and caching are applied here; with a
//! [`StateStore`] every transition is durable and a killed run can be resumed.

mod exec;
mod outputs;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::ids::Timestamp;
use crate::kernel::Kernel;
use crate::plan::Plan;
use crate::state::{RunEvent, RunLock, RunRecord, RunState, StateError, StateStore, StepState};

/// Why a run could not be started, resumed or finished.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// `hive resume`: the plan file changed since the run started.
    #[error("run `{run}`: the plan {} changed since the run started (sha256 {recorded} then, {now} now); pass --force to resume with the new plan", path.display())]
    PlanChanged {
        /// The run.
        run: String,
        /// The plan file.
        path: PathBuf,
        /// The hash stored with the run.
        recorded: String,
        /// The file's hash now.
        now: String,
    },
    /// `hive resume`: the run already succeeded.
    #[error("run `{run}` already {state}: nothing to resume")]
    Finished {
        /// The run.
        run: String,
        /// Its state.
        state: RunState,
    },
    /// A run id that cannot be one.
    #[error("`{0}` is not a run id")]
    BadRunId(String),
}

/// Whether steps with `cache` reuse earlier successes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CacheMode {
    /// Reuse a matching earlier success, store new ones.
    #[default]
    Use,
    /// Run every step; store successes (refreshes the cache). `--no-cache`.
    Refresh,
}

/// How to run a plan.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunOptions {
    /// Steps in flight at once (from their start to their end, retries' backoff excluded).
    pub max_concurrency: usize,
    /// The role of command steps that name none (an agent with a process driver).
    pub local_role: Arc<str>,
    /// Steps of a role in flight at once, at most (for example the pool's agents times their
    /// capacity). Roles not listed are bounded by `max_concurrency` only.
    pub role_capacity: HashMap<String, usize>,
    /// Where commands run unless a step sets `cwd` (relative `cwd`s and cache inputs are
    /// resolved against it). Stored with the run, so that a resume runs in the same place.
    pub workdir: PathBuf,
    /// Cache reuse.
    pub cache: CacheMode,
    /// Cancelled: the run is interrupted (running steps cancelled, the run ends cancelled).
    pub cancel: CancellationToken,
    /// Receives every event once it is on disk (at once without a state store).
    pub listener: Option<tokio::sync::mpsc::UnboundedSender<Arc<RunEvent>>>,
    /// Seed of retry jitter.
    pub seed: u64,
    /// The `--var` values given (stored with the run, so that a resume resolves the plan the
    /// same way).
    pub vars: BTreeMap<String, String>,
    /// Anything else the caller wants stored with the run (`hive` stores its settings).
    pub extra: Value,
    /// A dry run (agents are mocks): a declared output a step did not emit is filled with
    /// the string `dry-run:<name>` instead of failing the step.
    pub dry_run: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_concurrency: 4,
            local_role: Arc::from("local"),
            role_capacity: HashMap::new(),
            workdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            cache: CacheMode::Use,
            cancel: CancellationToken::new(),
            listener: None,
            seed: fastrand::u64(..),
            vars: BTreeMap::new(),
            extra: Value::Null,
            dry_run: false,
        }
    }
}

impl RunOptions {
    /// The defaults: 4 at once, role `local` for commands, the current directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// The settings run `record` was started with (its variables, working directory, cache
    /// mode, `extra` and recorded max concurrency), to resume it with; the rest is default.
    pub fn of_run(record: &RunRecord) -> Self {
        let o = &record.options;
        let mut opts = Self::new();
        opts.vars = record.vars.clone();
        if let Some(w) = o["workdir"].as_str() {
            opts.workdir = PathBuf::from(w);
        }
        opts.cache = if o["cache"] == "refresh" {
            CacheMode::Refresh
        } else {
            CacheMode::Use
        };
        opts.extra = o["extra"].clone();
        if let Some(n) = record.max_concurrency() {
            opts.max_concurrency = n as usize;
        }
        opts
    }
}

/// How one step (or one item of a `for_each`) ended.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StepReport {
    /// `ID`, or `ID[N]` for item N of a `for_each`.
    pub id: Arc<str>,
    /// Its name.
    pub name: Arc<str>,
    /// The `for_each` step of an item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Arc<str>>,
    /// How it ended.
    pub state: StepState,
    /// Attempts made in the run (resumes included).
    pub attempts: u32,
    /// Whether its failure fails the run.
    pub critical: bool,
    /// When its last attempt started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Run time of its last attempt.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Exit status of its last attempt, for commands.
    pub exit_code: Option<i32>,
    /// Why it did not succeed.
    pub error: Option<String>,
    /// Its outputs.
    pub outputs: Option<Value>,
    /// What it produced (for commands: exit code, stdout and stderr tails).
    pub result: Option<Value>,
    /// Whether it ended before this execution (a resume kept it).
    pub restored: bool,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RunReport {
    /// The run.
    pub run_id: String,
    /// How it ended.
    pub state: RunState,
    /// Every step, in plan order, items after their step.
    pub steps: Vec<StepReport>,
    /// Wall time of this execution.
    #[serde(serialize_with = "secs")]
    pub wall: Duration,
    /// Whether this execution was a resume.
    pub resumed: bool,
}

impl RunReport {
    /// Steps in `state`.
    pub fn count(&self, state: StepState) -> usize {
        self.steps.iter().filter(|s| s.state == state).count()
    }

    /// Sum of the steps' run times over the wall time.
    pub fn speedup_vs_serial(&self) -> f64 {
        let serial: f64 = self
            .steps
            .iter()
            .filter(|s| !s.restored)
            .map(|s| s.duration.as_secs_f64())
            .sum();
        let wall = self.wall.as_secs_f64();
        if wall > 0.0 {
            serial / wall
        } else {
            0.0
        }
    }
}

/// A run ready to execute: created (or resumed) in the state store, its lock held.
#[derive(Debug)]
pub struct PlanRun {
    exec: exec::Exec,
    _lock: Option<RunLock>,
}

impl PlanRun {
    /// Creates a run of `plan` (in `store`, if given: the run and its steps are in the run's
    /// file when this returns, so that [`PlanRun::id`] can be resumed; the writer thread
    /// commits them to the database while the first steps start, and a run whose process
    /// died before that commit is taken from its file by the next reader).
    pub async fn start(
        kernel: &Kernel,
        plan: Arc<Plan>,
        store: Option<&StateStore>,
        opts: RunOptions,
    ) -> Result<PlanRun, RunError> {
        let run_id = crate::state::new_run_id();
        let lock = match store {
            Some(s) => Some(s.lock_run(&run_id)?),
            None => None,
        };
        let exec = exec::Exec::create(kernel.clone(), plan, store, opts, run_id).await?;
        Ok(PlanRun { exec, _lock: lock })
    }

    /// Resumes run `run_id` of `store` with `plan` (loaded from the run's plan file with its
    /// stored vars): steps that succeeded (or were cached) are kept with their outputs, every
    /// other step runs again; attempts interrupted by the crash are recorded as such. A plan
    /// whose hash changed is refused unless `force`.
    pub async fn resume(
        kernel: &Kernel,
        plan: Arc<Plan>,
        store: &StateStore,
        run_id: &str,
        opts: RunOptions,
        force: bool,
    ) -> Result<PlanRun, RunError> {
        if !crate::state::valid_run_id(run_id) {
            return Err(RunError::BadRunId(run_id.to_string()));
        }
        let lock = store.lock_run(run_id)?;
        // Attempts started just before a crash may be in the run's JSONL file only.
        store.recover_locked(run_id)?;
        let record = store.run(run_id)?;
        if record.state == RunState::Succeeded {
            return Err(RunError::Finished {
                run: run_id.to_string(),
                state: record.state,
            });
        }
        if record.plan_hash != plan.hash() && !force {
            return Err(RunError::PlanChanged {
                run: run_id.to_string(),
                path: record.plan_path.clone(),
                recorded: record.plan_hash.clone(),
                now: plan.hash().to_string(),
            });
        }
        let steps = store.steps(run_id)?;
        let next_seq = store.last_seq(run_id)? + 1;
        let exec =
            exec::Exec::resume(kernel.clone(), plan, store, opts, record, steps, next_seq).await?;
        Ok(PlanRun {
            exec,
            _lock: Some(lock),
        })
    }

    /// The run id.
    pub fn id(&self) -> &str {
        self.exec.run_id()
    }

    /// Waits until the run and its steps are in the database too, so that
    /// [`StateStore::runs`] lists it ([`PlanRun::start`] returns once they are in the run's
    /// file; the run's own execution never waits for this).
    pub async fn created(&mut self) -> Result<(), RunError> {
        self.exec.wait_created().await.map_err(RunError::State)
    }

    /// Executes the run to its end.
    pub async fn execute(self) -> Result<RunReport, RunError> {
        let PlanRun { exec, _lock } = self;
        let r = exec.run().await;
        drop(_lock);
        r
    }
}
