//! Run records without a plan: the legacy `create_run` / `start_run` / `complete_run`.
//!
//! The state store records only runs of plans, so a run record is a run of a one-step plan
//! (`run_record.plan.json`, written once in `<state dir>/compat/`) whose step, `run`, is a
//! task for an in-process "gate" agent that waits for `complete_run`. `create_run` creates
//! the run (`pending`, on disk), `start_run` executes it (`running`), `complete_run` opens
//! the gate: the step succeeds (`succeeded`, with the exit code as its own) or fails
//! (`failed`), or the run is cancelled (`cancelled`). Every transition goes through the
//! kernel's executor and state writer; nothing writes to the database behind the store's
//! back. A record left pending or running by a process that ended shows as `interrupted`;
//! `start_run` / `complete_run` from another orchestrator resume it and go on.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use hive_kernel::{
    AgentSpec, Driver, InprocDriver, Kernel, Plan, PlanRun, RunError, RunEvent, RunEventKind,
    RunOptions, RunRecord, RunReport, RunState, ShutdownMode, TaskError, TaskInput,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::records::RunStateName;
use super::{Orchestrator, OrchestratorError};

/// The role of the gate agent.
pub(crate) const GATE_ROLE: &str = "hive-compat-run";
/// The one step of a run record.
pub(crate) const GATE_STEP: &str = "run";
/// The plan file of run records, in `<state dir>/compat/`.
const PLAN_FILE: &str = "run_record.plan.json";
/// About a year: a run record may stay running that long.
const PLAN_TEXT: &str = r#"{
  "plan_id": "${RUN_PLAN_ID}",
  "version": "1",
  "description": "A run record of the legacy create_run / start_run / complete_run (hive-compat): its one step waits for complete_run.",
  "globals": {"max_concurrency": 1, "default_timeout_sec": 31536000},
  "steps": [
    {
      "id": "run",
      "name": "${RUN_PLAN_ID}",
      "role": "hive-compat-run",
      "task": {"gate": "${RUN_GATE}"},
      "timeout_sec": 31536000
    }
  ]
}
"#;

/// What started a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunKind {
    /// A plan (`execute_plan`, `execute_pipeline`): its steps decide how it ends.
    Plan,
    /// `create_run`: `start_run` and `complete_run` move it.
    RunRecord,
}

/// Whether a stored run is a run record.
pub(crate) fn kind_of(r: &RunRecord) -> RunKind {
    if r.options["extra"]["compat"]["kind"] == "run_record" {
        RunKind::RunRecord
    } else {
        RunKind::Plan
    }
}

/// How `complete_run` ends the gate step.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Completion {
    Succeeded(i32),
    Failed(i32),
}

/// The gates of this process's run records, by token (the run's `RUN_GATE` variable).
#[derive(Debug, Default)]
pub(crate) struct Gates {
    waiting: Mutex<HashMap<String, oneshot::Receiver<Completion>>>,
}

impl Gates {
    fn open(&self, token: &str) -> oneshot::Sender<Completion> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(token.to_string(), rx);
        tx
    }

    /// The in-process driver of gate agents.
    fn driver(self: &Arc<Self>) -> Arc<dyn Driver> {
        let gates = self.clone();
        InprocDriver::new(move |t: TaskInput| {
            let rx = t
                .payload
                .get("gate")
                .and_then(Value::as_str)
                .and_then(|token| gates.waiting.lock().remove(token));
            async move {
                let Some(rx) = rx else {
                    return Err(TaskError::permanent(
                        "no complete_run can reach this run record in this process",
                    ));
                };
                match rx.await {
                    Ok(Completion::Succeeded(code)) => Ok(json!({"exit_code": code})),
                    Ok(Completion::Failed(code)) => {
                        let mut e = TaskError::permanent(format!(
                            "complete_run: failed (exit code {code})"
                        ));
                        e.exit_code = Some(code);
                        Err(e)
                    }
                    Err(_) => Err(TaskError::permanent(
                        "the orchestrator of this run record was dropped",
                    )),
                }
            }
        })
        .shared()
    }
}

/// A run record this orchestrator executes.
#[derive(Debug)]
pub(crate) struct ManualRun {
    kernel: Kernel,
    token: String,
    cancel: CancellationToken,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    Created {
        run: Box<PlanRun>,
        events: mpsc::UnboundedReceiver<Arc<RunEvent>>,
    },
    Started {
        task: JoinHandle<Result<RunReport, RunError>>,
        done: Option<oneshot::Sender<Completion>>,
    },
    Gone,
}

impl Drop for ManualRun {
    fn drop(&mut self) {
        // The run stays pending or running on disk (interrupted): another orchestrator can
        // start or complete it. Stop executing it here without ending it.
        let phase = std::mem::replace(&mut self.phase, Phase::Gone);
        let done = match phase {
            Phase::Started { task, done } => {
                task.abort();
                done
            }
            _ => None,
        };
        let kernel = self.kernel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                kernel.shutdown(ShutdownMode::Now).await;
                drop(done);
            });
        }
    }
}

fn run_plan_id(phase_id: &str, metadata: &Value) -> String {
    metadata
        .get("plan_id")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .or_else(|| (!phase_id.trim().is_empty()).then(|| phase_id.to_string()))
        .unwrap_or_else(|| "RUN".to_string())
}

fn new_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Orchestrator {
    /// The plan file of run records (written on first use).
    fn run_record_plan(&self) -> Result<PathBuf, OrchestratorError> {
        let dir = self.inner.state_dir.join("compat");
        let path = dir.join(PLAN_FILE);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(PLAN_TEXT) {
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&path, PLAN_TEXT))
                .map_err(|source| OrchestratorError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(path)
    }

    /// A kernel with one gate agent.
    async fn gate_kernel(&self) -> Result<Kernel, OrchestratorError> {
        let kernel = Kernel::builder()
            .build()
            .map_err(|e| OrchestratorError::Kernel(e.to_string()))?;
        kernel
            .spawn_agent(AgentSpec::new(GATE_ROLE, self.inner.gates.driver()))
            .await
            .map_err(|e| OrchestratorError::Kernel(e.to_string()))?;
        Ok(kernel)
    }

    /// Legacy `create_run(project_id, phase_id, metadata) -> run_id`: records a `pending`
    /// run without a plan. `metadata` is kept as given (`get_run_status` returns it); its
    /// `plan_id`, else `phase_id`, names the run in `hive runs`.
    pub async fn create_run(
        &self,
        project_id: &str,
        phase_id: &str,
        metadata: Value,
    ) -> Result<String, OrchestratorError> {
        let path = self.run_record_plan()?;
        let token = new_token();
        let vars: BTreeMap<String, String> = [
            ("RUN_PLAN_ID".to_string(), run_plan_id(phase_id, &metadata)),
            ("RUN_GATE".to_string(), token.clone()),
        ]
        .into();
        let plan = Arc::new(Plan::load(&path, &vars)?);
        let kernel = self.gate_kernel().await?;
        let mut opts = RunOptions::new();
        opts.vars = vars;
        opts.max_concurrency = 1;
        opts.workdir = self.inner.workdir.clone();
        opts.extra = json!({
            "compat": {
                "kind": "run_record",
                "project_id": project_id,
                "phase_id": phase_id,
                "metadata": metadata,
            }
        });
        let (tx, events) = mpsc::unbounded_channel();
        opts.listener = Some(tx);
        let cancel = opts.cancel.clone();
        // The legacy create_run's record is listed at once: wait for the database.
        let started = match PlanRun::start(&kernel, plan, Some(&self.inner.store), opts).await {
            Ok(mut r) => r.created().await.map(|()| r),
            Err(e) => Err(e),
        };
        let run = match started {
            Ok(r) => r,
            Err(e) => {
                kernel.shutdown(ShutdownMode::Now).await;
                return Err(e.into());
            }
        };
        let id = run.id().to_string();
        self.inner.manual.lock().insert(
            id.clone(),
            ManualRun {
                kernel,
                token,
                cancel,
                phase: Phase::Created {
                    run: Box::new(run),
                    events,
                },
            },
        );
        Ok(id)
    }

    /// Resumes a run record that no process executes (created or started by an orchestrator
    /// that is gone), so that this one can start or complete it.
    async fn adopt(&self, record: &RunRecord) -> Result<ManualRun, OrchestratorError> {
        let plan = Arc::new(Plan::load(&record.plan_path, &record.vars)?);
        let token = record.vars.get("RUN_GATE").cloned().unwrap_or_default();
        let kernel = self.gate_kernel().await?;
        let mut opts = RunOptions::of_run(record);
        opts.max_concurrency = 1;
        let (tx, events) = mpsc::unbounded_channel();
        opts.listener = Some(tx);
        let cancel = opts.cancel.clone();
        let run = match PlanRun::resume(
            &kernel,
            plan,
            &self.inner.store,
            &record.run_id,
            opts,
            false,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                kernel.shutdown(ShutdownMode::Now).await;
                return Err(e.into());
            }
        };
        Ok(ManualRun {
            kernel,
            token,
            cancel,
            phase: Phase::Created {
                run: Box::new(run),
                events,
            },
        })
    }

    /// Executes a created (or adopted) record until its `run_started` is on disk.
    async fn launch_record(&self, m: &mut ManualRun) {
        let phase = std::mem::replace(&mut m.phase, Phase::Gone);
        let Phase::Created { run, mut events } = phase else {
            m.phase = phase;
            return;
        };
        let done = self.inner.gates.open(&m.token);
        let kernel = m.kernel.clone();
        let task = tokio::spawn(async move {
            let r = run.execute().await;
            kernel.shutdown(ShutdownMode::Graceful).await;
            r
        });
        while let Some(ev) = events.recv().await {
            if matches!(ev.kind, RunEventKind::RunStarted { .. }) {
                break;
            }
        }
        m.phase = Phase::Started {
            task,
            done: Some(done),
        };
    }

    /// Takes this orchestrator's entry for a record, or adopts an interrupted one, checking
    /// that the record may go to `to` (`running` for `start_run`, a final status for
    /// `complete_run`).
    async fn take_record(&self, run_id: &str, to: &str) -> Result<ManualRun, OrchestratorError> {
        let entry = self.inner.manual.lock().remove(run_id);
        if let Some(m) = entry {
            return Ok(m);
        }
        let record = self.inner.store.run(run_id)?;
        if kind_of(&record) != RunKind::RunRecord {
            return Err(OrchestratorError::NotARunRecord(run_id.to_string()));
        }
        let refuse = |from: RunStateName| OrchestratorError::InvalidTransition {
            run_id: run_id.to_string(),
            from,
            to: to.to_string(),
        };
        let shown = RunStateName::of(&record);
        if shown.is_final() {
            return Err(refuse(shown));
        }
        if self.inner.store.is_running_now(run_id) {
            return Err(hive_kernel::StateError::RunBusy {
                run: run_id.to_string(),
                pid: None,
            }
            .into());
        }
        // Interrupted: check the transition first (adopting resumes the run, which makes it
        // running), then finish it here.
        let starting = to == "running";
        match (record.state, starting) {
            (RunState::Pending, true) => self.adopt(&record).await,
            (RunState::Running, false) => {
                let mut m = self.adopt(&record).await?;
                self.launch_record(&mut m).await;
                Ok(m)
            }
            (RunState::Pending, false) => Err(refuse(RunStateName::Pending)),
            _ => Err(refuse(RunStateName::Running)),
        }
    }

    /// Legacy `start_run(run_id)`: `pending -> running`. Any other state is refused with
    /// [`OrchestratorError::InvalidTransition`]; runs of plans start by themselves
    /// ([`OrchestratorError::NotARunRecord`]).
    pub async fn start_run(&self, run_id: &str) -> Result<(), OrchestratorError> {
        let mut m = self.take_record(run_id, "running").await?;
        let result = match m.phase {
            Phase::Created { .. } => {
                self.launch_record(&mut m).await;
                Ok(())
            }
            _ => Err(OrchestratorError::InvalidTransition {
                run_id: run_id.to_string(),
                from: RunStateName::Running,
                to: "running".into(),
            }),
        };
        self.inner.manual.lock().insert(run_id.to_string(), m);
        result
    }

    /// Legacy `complete_run(run_id, status, exit_code)`: `running -> succeeded | failed |
    /// cancelled`, recording `exit_code` (`get_run_status` returns it). A status that is not
    /// final is refused with [`OrchestratorError::InvalidStatus`]; a run that is not running
    /// (pending, or already ended) with [`OrchestratorError::InvalidTransition`]. Returns once
    /// the end is on disk.
    pub async fn complete_run(
        &self,
        run_id: &str,
        status: &str,
        exit_code: i32,
    ) -> Result<(), OrchestratorError> {
        let completion = match status {
            "succeeded" => Some(Completion::Succeeded(exit_code)),
            "failed" => Some(Completion::Failed(exit_code)),
            "cancelled" => None,
            other => return Err(OrchestratorError::InvalidStatus(other.to_string())),
        };
        let mut m = self.take_record(run_id, status).await?;
        let Phase::Started { task, done } = &mut m.phase else {
            let from = RunStateName::Pending;
            self.inner.manual.lock().insert(run_id.to_string(), m);
            return Err(OrchestratorError::InvalidTransition {
                run_id: run_id.to_string(),
                from,
                to: status.to_string(),
            });
        };
        match (completion, done.take()) {
            (Some(c), Some(tx)) => {
                let _ = tx.send(c);
            }
            _ => {
                self.inner
                    .cancelled_codes
                    .lock()
                    .insert(run_id.to_string(), exit_code);
                m.cancel.cancel();
            }
        }
        let joined = task.await;
        m.phase = Phase::Gone;
        let report = joined.map_err(|e| {
            OrchestratorError::Kernel(format!("the run record's executor failed: {e}"))
        })?;
        report?;
        Ok(())
    }
}
