//! The plan orchestrator of seed 001 (`core/engine/orchestrator.py`'s `Orchestrator` and the
//! GUI's `OrchestrationMonitor`) over one Hive kernel per run and the durable state store:
//!
//! - [`Orchestrator::execute_plan`] runs a JSON (or YAML, TOML) plan to its end and returns
//!   the run id, as the legacy `execute_plan(plan_path, variables)`: the same plan schema (a
//!   superset), `${VAR}` substitution (an unknown variable is refused), the DAG with
//!   `depends_on`, `max_concurrency`, timeouts, retries and `on_failure` (`abort`,
//!   `skip_dependents`, `continue`), each step a command on a local process agent, or a task
//!   for a pool of the config (`role` + `task`);
//! - [`Orchestrator::create_run`], [`Orchestrator::start_run`],
//!   [`Orchestrator::complete_run`]: a run record without a plan, with the legacy state
//!   machine (`pending -> running -> succeeded | failed | cancelled`, other moves refused);
//! - [`Orchestrator::get_run_status`], [`Orchestrator::get_run_steps`],
//!   [`Orchestrator::get_run_events`], [`Orchestrator::list_runs`]: the legacy readers, with
//!   the legacy field names;
//! - [`OrchestrationMonitor::get_active_runs`] and [`OrchestrationMonitor::get_run_progress`]
//!   (`run`, `steps`, `timeline`, `progress_pct`).
//!
//! Hive adds [`Orchestrator::start_plan`] (a handle to watch or cancel a run) and
//! [`Orchestrator::resume_run`] (finish an interrupted or failed run without re-running its
//! succeeded steps). Everything is in the state directory (`hive runs`, `hive show RUN`,
//! `hive events RUN` read the same runs). docs/compat/plans.md maps every legacy call.

mod launch;
mod manual;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hive_kernel::{
    CacheMode, Config, ConfigError, Plan, PlanError, PlanRun, RunError, RunOptions, RunReport,
    RunState, ShutdownMode, StateError, StateStore,
};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use manual::RunKind;
pub use records::{
    AttemptInfo, RunEventRecord, RunProgress, RunStateName, RunStatus, StepStatus, UnknownRunState,
};

use manual::{Gates, ManualRun, GATE_STEP};

/// Why an orchestrator call failed. A run that ends badly is not an error: its status says
/// `failed`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestratorError {
    /// The plan file was refused (every problem with its file, line and field).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The config file was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory failed, or has no such run.
    #[error(transparent)]
    State(#[from] StateError),
    /// The run could not be started or resumed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The kernel, a plugin or an agent could not start.
    #[error("cannot start the kernel: {0}")]
    Kernel(String),
    /// A step names a role that has no pool.
    #[error("{}: role `{role}` has no pool{}", plan.display(), match config { Some(c) => format!(" in {}", c.display()), None => " (give the orchestrator a config with a [[pools]] entry for it)".to_string() })]
    MissingPool {
        /// The plan file.
        plan: PathBuf,
        /// The role.
        role: String,
        /// The config file, if any.
        config: Option<PathBuf>,
    },
    /// A variable name that cannot be one.
    #[error(
        "variable `{0}`: a variable name is letters, digits and `_`, not starting with a digit"
    )]
    InvalidVariable(String),
    /// A builder setting out of range.
    #[error("invalid orchestrator setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting.
        setting: &'static str,
        /// What is expected.
        reason: String,
    },
    /// The run's state machine refuses the move.
    #[error("run `{run_id}` is {from}: it cannot become {to}")]
    InvalidTransition {
        /// The run.
        run_id: String,
        /// Its state.
        from: RunStateName,
        /// The state asked for.
        to: String,
    },
    /// `complete_run` with a status that does not end a run.
    #[error("`{0}` is not a final run status (expected succeeded, failed or cancelled)")]
    InvalidStatus(String),
    /// `start_run` / `complete_run` on a run of a plan (its steps decide how it ends).
    #[error("run `{0}` runs a plan: its steps decide how it ends (start_run and complete_run are for runs made by create_run)")]
    NotARunRecord(String),
    /// `resume_run` on a run record (use `start_run` / `complete_run`).
    #[error("run `{0}` is a run record made by create_run: start_run and complete_run move it")]
    NotAPlanRun(String),
    /// A file of the facade could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Configures an [`Orchestrator`].
#[derive(Debug, Clone, Default)]
pub struct OrchestratorBuilder {
    state_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    max_concurrency: Option<u32>,
    workdir: Option<PathBuf>,
}

impl OrchestratorBuilder {
    /// The defaults: state in `$HIVE_STATE_DIR`, else the config's `state_dir`, else `.hive`;
    /// no config; each plan's own `max_concurrency` (else 4); the current directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state directory (SQLite database and run journals), created if needed.
    pub fn state_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// A `hive.toml`: kernel settings, plugins (loaded for every run, in order) and the pools
    /// that run `role` steps.
    pub fn config(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.config = Some(path.into());
        self
    }

    /// Steps in flight at once, for every run (wins over a plan's `globals.max_concurrency`,
    /// like `hive run --max-concurrency`).
    pub fn max_concurrency(&mut self, n: u32) -> &mut Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Where commands run unless a step sets `cwd` (stored with each run, so that a resume
    /// runs in the same place).
    pub fn workdir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Loads the config and opens the state directory.
    pub fn build(&self) -> Result<Orchestrator, OrchestratorError> {
        if self.max_concurrency == Some(0) {
            return Err(OrchestratorError::InvalidSetting {
                setting: "max_concurrency",
                reason: "expected at least 1".into(),
            });
        }
        let config = match &self.config {
            Some(p) => Some((
                std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
                Config::load(p)?,
            )),
            None => None,
        };
        let state_dir =
            hive_kernel::state_dir(self.state_dir.as_deref(), config.as_ref().map(|c| &c.1));
        let store = StateStore::open(&state_dir)?;
        let workdir = match &self.workdir {
            Some(w) => w.clone(),
            None => std::env::current_dir().map_err(|source| OrchestratorError::Io {
                path: PathBuf::from("."),
                source,
            })?,
        };
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                store,
                state_dir,
                config,
                max_concurrency: self.max_concurrency,
                workdir,
                manual: Mutex::new(HashMap::new()),
                gates: Arc::new(Gates::default()),
                cancelled_codes: Mutex::new(HashMap::new()),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    store: StateStore,
    state_dir: PathBuf,
    config: Option<(PathBuf, Config)>,
    max_concurrency: Option<u32>,
    workdir: PathBuf,
    manual: Mutex<HashMap<String, ManualRun>>,
    gates: Arc<Gates>,
    cancelled_codes: Mutex<HashMap<String, i32>>,
}

/// The legacy `Orchestrator` (seed 001): runs plans durably and keeps run records. Cheap to
/// clone (the clones share the state store and the run records in progress). Dropping the
/// last clone stops executing the run records it started (they show as `interrupted` and
/// another orchestrator can go on with them); runs of plans started by [`Orchestrator::start_plan`]
/// go on until they end.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

/// A run of a plan in progress ([`Orchestrator::start_plan`]). Dropping it does not stop the
/// run.
#[derive(Debug)]
pub struct RunHandle {
    run_id: String,
    cancel: CancellationToken,
    task: JoinHandle<Result<RunReport, RunError>>,
    orch: Orchestrator,
}

impl RunHandle {
    /// The run id (the run is on disk: it can be read, or resumed if this process dies).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Interrupts the run as Ctrl-C does `hive run`: running steps are cancelled and the run
    /// ends `cancelled`; [`Orchestrator::resume_run`] finishes it later.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the run's end and returns its status.
    pub async fn wait(self) -> Result<RunStatus, OrchestratorError> {
        let orch = self.orch.clone();
        let id = self.run_id.clone();
        self.wait_report().await?;
        orch.get_run_status(&id)
    }

    /// Waits for the run's end and returns the executor's report (every step, its attempts,
    /// durations and outputs).
    pub async fn wait_report(self) -> Result<RunReport, OrchestratorError> {
        let joined = self
            .task
            .await
            .map_err(|e| OrchestratorError::Kernel(format!("the run's executor stopped: {e}")))?;
        Ok(joined?)
    }
}

fn check_vars<I, K, V>(variables: I) -> Result<BTreeMap<String, String>, OrchestratorError>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let mut out = BTreeMap::new();
    for (k, v) in variables {
        let k: String = k.into();
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(OrchestratorError::InvalidVariable(k));
        }
        out.insert(k, v.into());
    }
    Ok(out)
}

impl Orchestrator {
    /// A builder (state directory, config, max concurrency, working directory).
    pub fn builder() -> OrchestratorBuilder {
        OrchestratorBuilder::new()
    }

    /// The legacy `Orchestrator()`: the defaults of [`OrchestratorBuilder::new`].
    pub fn new() -> Result<Orchestrator, OrchestratorError> {
        OrchestratorBuilder::new().build()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The state store (every run, step, attempt and event).
    pub fn store(&self) -> &StateStore {
        &self.inner.store
    }

    /// A monitor over this orchestrator's runs (the legacy GUI's `OrchestrationMonitor`).
    pub fn monitor(&self) -> OrchestrationMonitor {
        OrchestrationMonitor::new(self)
    }

    /// Legacy `execute_plan(plan_path, variables) -> run_id`: loads the plan (substituting
    /// `${VAR}` with `variables`, the plan's `vars`, `PLAN_DIR`; an unknown variable is
    /// refused before anything runs), runs it to its end and returns the run id. A run that
    /// fails is not an error: [`Orchestrator::get_run_status`] says `failed` (exit code 1).
    pub async fn execute_plan<I, K, V>(
        &self,
        plan_path: impl AsRef<Path>,
        variables: I,
    ) -> Result<String, OrchestratorError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let handle = self.start_plan(plan_path, variables).await?;
        let id = handle.run_id.clone();
        handle.wait_report().await?;
        Ok(id)
    }

    /// [`Orchestrator::execute_plan`] without waiting: returns once the run is on disk.
    pub async fn start_plan<I, K, V>(
        &self,
        plan_path: impl AsRef<Path>,
        variables: I,
    ) -> Result<RunHandle, OrchestratorError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = check_vars(variables)?;
        let plan = Plan::load(plan_path.as_ref(), &vars)?;
        self.start_loaded(Arc::new(plan), vars, Value::Null).await
    }

    /// Starts a loaded plan; `compat` is stored with the run (`options.extra.compat`).
    pub(crate) async fn start_loaded(
        &self,
        plan: Arc<Plan>,
        vars: BTreeMap<String, String>,
        compat: Value,
    ) -> Result<RunHandle, OrchestratorError> {
        let config = self.inner.config.as_ref();
        let max = self
            .inner
            .max_concurrency
            .or(plan.max_concurrency())
            .unwrap_or(4);
        let mut opts = RunOptions::new();
        opts.vars = vars;
        opts.cache = CacheMode::Use;
        opts.workdir = self.inner.workdir.clone();
        let mut extra = json!({
            "config": config.map(|c| c.0.display().to_string()),
            "max_concurrency_flag": self.inner.max_concurrency,
        });
        if !compat.is_null() {
            extra["compat"] = compat;
        }
        opts.extra = extra;
        self.launch(plan, opts, max, None).await
    }

    /// Builds the kernel and agents, then starts (or resumes) the run.
    async fn launch(
        &self,
        plan: Arc<Plan>,
        mut opts: RunOptions,
        max: u32,
        resume: Option<&str>,
    ) -> Result<RunHandle, OrchestratorError> {
        let config = self.inner.config_for(&opts)?;
        launch::check_roles(&plan, config.as_ref())?;
        let kernel = launch::build_kernel(config.as_ref().map(|c| &c.1), plan.default_timeout())?;
        let capacity = match launch::spawn_agents(&kernel, &plan, config.as_ref(), max).await {
            Ok(c) => c,
            Err(e) => {
                kernel.shutdown(ShutdownMode::Now).await;
                return Err(e);
            }
        };
        opts.max_concurrency = max as usize;
        opts.role_capacity = capacity;
        let cancel = opts.cancel.clone();
        let store = &self.inner.store;
        let prepared = match resume {
            // Legacy callers read the run record as soon as execute_plan returns.
            None => match PlanRun::start(&kernel, plan, Some(store), opts).await {
                Ok(mut r) => r.created().await.map(|()| r),
                Err(e) => Err(e),
            },
            Some(id) => PlanRun::resume(&kernel, plan, store, id, opts, false).await,
        };
        let run = match prepared {
            Ok(r) => r,
            Err(e) => {
                kernel.shutdown(ShutdownMode::Now).await;
                return Err(e.into());
            }
        };
        let run_id = run.id().to_string();
        let task = tokio::spawn(async move {
            let r = run.execute().await;
            kernel.shutdown(ShutdownMode::Graceful).await;
            r
        });
        Ok(RunHandle {
            run_id,
            cancel,
            task,
            orch: self.clone(),
        })
    }

    /// Finishes a run of a plan that was interrupted (its process killed, or
    /// [`RunHandle::cancel`]) or failed, as `hive resume RUN`: steps that succeeded are kept
    /// with their outputs and not run again; the others run with their full retry budget,
    /// with the run's variables, working directory and settings. Returns the run's status at
    /// its end (at once, unchanged, for a run that already succeeded). Refused while another
    /// process executes the run, and when the plan file changed since the run started.
    pub async fn resume_run(&self, run_id: &str) -> Result<RunStatus, OrchestratorError> {
        let record = self.inner.store.run(run_id)?;
        if manual::kind_of(&record) == RunKind::RunRecord {
            return Err(OrchestratorError::NotAPlanRun(run_id.to_string()));
        }
        if record.state == RunState::Succeeded {
            return self.get_run_status(run_id);
        }
        if self.inner.store.is_running_now(run_id) {
            return Err(StateError::RunBusy {
                run: run_id.to_string(),
                pid: None,
            }
            .into());
        }
        let plan = Plan::load(&record.plan_path, &record.vars)?;
        let max = self
            .inner
            .max_concurrency
            .or(record.max_concurrency())
            .or(plan.max_concurrency())
            .unwrap_or(4);
        let opts = RunOptions::of_run(&record);
        let handle = self.launch(Arc::new(plan), opts, max, Some(run_id)).await?;
        handle.wait().await
    }

    /// Legacy `get_run_status(run_id)`: the run dict (`run_id`, `state`, `created_at`,
    /// `started_at`, `ended_at`, `metadata` with `plan_id` and `plan_version`, `exit_code`).
    pub fn get_run_status(&self, run_id: &str) -> Result<RunStatus, OrchestratorError> {
        let store = &self.inner.store;
        let mut r = store.run(run_id)?;
        if r.interrupted {
            // Its last events may be in its journal only.
            store.recover(run_id)?;
            r = store.run(run_id)?;
        }
        let gate = if manual::kind_of(&r) == RunKind::RunRecord {
            store
                .steps(run_id)?
                .into_iter()
                .find(|s| s.step_id == GATE_STEP)
        } else {
            None
        };
        let code = self.inner.cancelled_codes.lock().get(run_id).copied();
        Ok(records::run_status(&r, gate.as_ref(), code))
    }

    /// Legacy `get_run_steps(run_id)`: every step (plan order, `for_each` items after their
    /// step) with its state, attempts, exit code, error and times. A run record has none.
    pub fn get_run_steps(&self, run_id: &str) -> Result<Vec<StepStatus>, OrchestratorError> {
        let store = &self.inner.store;
        let r = store.run(run_id)?;
        if manual::kind_of(&r) == RunKind::RunRecord {
            return Ok(Vec::new());
        }
        if r.interrupted {
            store.recover(run_id)?;
        }
        let steps = store.steps(run_id)?;
        let attempts = store.attempts(run_id)?;
        Ok(records::step_statuses(steps, &attempts))
    }

    /// Legacy `get_run_events(run_id)`: the run's timeline, in order.
    pub fn get_run_events(&self, run_id: &str) -> Result<Vec<RunEventRecord>, OrchestratorError> {
        let store = &self.inner.store;
        let r = store.run(run_id)?;
        if r.interrupted {
            store.recover(run_id)?;
        }
        let record = manual::kind_of(&r) == RunKind::RunRecord;
        Ok(store
            .events_after(run_id, 0)?
            .into_iter()
            .map(|(seq, text)| records::event_record(seq, &text))
            // A run record's step is how the facade implements it, not part of the legacy record.
            .filter(|e| !(record && e.step_id.is_some()))
            .collect())
    }

    /// Legacy `list_runs(state)`: every run (oldest first), or those in `state`.
    pub fn list_runs(
        &self,
        state: Option<RunStateName>,
    ) -> Result<Vec<RunStatus>, OrchestratorError> {
        let runs = self.inner.store.runs()?;
        let mut out = Vec::new();
        for r in runs {
            if state.is_some_and(|s| RunStateName::of(&r) != s) {
                continue;
            }
            out.push(self.get_run_status(&r.run_id)?);
        }
        Ok(out)
    }
}

impl Inner {
    /// The config of a run: the one stored with it (a resume), else the orchestrator's.
    fn config_for(
        &self,
        opts: &RunOptions,
    ) -> Result<Option<(PathBuf, Config)>, OrchestratorError> {
        match opts.extra["config"].as_str() {
            Some(p) => {
                let p = PathBuf::from(p);
                if self.config.as_ref().is_some_and(|c| c.0 == p) {
                    return Ok(self.config.clone());
                }
                let c = Config::load(&p)?;
                Ok(Some((p, c)))
            }
            None => Ok(None),
        }
    }
}

/// The legacy GUI's `OrchestrationMonitor`: active runs and their progress.
#[derive(Debug, Clone)]
pub struct OrchestrationMonitor {
    orch: Orchestrator,
}

impl OrchestrationMonitor {
    /// A monitor over `orchestrator`'s state directory.
    pub fn new(orchestrator: &Orchestrator) -> Self {
        OrchestrationMonitor {
            orch: orchestrator.clone(),
        }
    }

    /// Legacy `get_active_runs()`: runs pending or running (executed by a live process),
    /// oldest first.
    pub fn get_active_runs(&self) -> Result<Vec<RunStatus>, OrchestratorError> {
        Ok(self
            .orch
            .list_runs(None)?
            .into_iter()
            .filter(|r| r.state.is_active())
            .collect())
    }

    /// Legacy `get_run_progress(run_id)`: `{run, steps, timeline, progress_pct}`.
    pub fn get_run_progress(&self, run_id: &str) -> Result<RunProgress, OrchestratorError> {
        let run = self.orch.get_run_status(run_id)?;
        let steps = self.orch.get_run_steps(run_id)?;
        let timeline = self.orch.get_run_events(run_id)?;
        let progress_pct = records::progress_pct(&steps);
        Ok(RunProgress {
            run,
            steps,
            timeline,
            progress_pct,
        })
    }
}
