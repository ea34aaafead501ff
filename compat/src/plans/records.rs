//! What the plan orchestrator's readers return, with the legacy dict's field names: a run's
//! status (`run_id`, `state`, `created_at`, `started_at`, `ended_at`, `metadata`,
//! `exit_code`), its steps, its events (the timeline) and the monitor's progress, built from
//! the state store's records.

use std::fmt;
use std::str::FromStr;

use hive_kernel::{AttemptRow, RunRecord, RunState, StepRecord, StepState, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::manual::{self, RunKind};

/// The state of a run as the facade shows it: the legacy run state machine
/// (`pending -> running -> succeeded | failed | cancelled`), plus `interrupted` for a run that
/// no process executes any more (killed, crashed, or its orchestrator dropped): it can be
/// resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStateName {
    /// Created, not started.
    Pending,
    /// Being executed.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended badly.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Pending or running, but no process executes it.
    Interrupted,
}

impl RunStateName {
    /// The snake_case word.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStateName::Pending => "pending",
            RunStateName::Running => "running",
            RunStateName::Succeeded => "succeeded",
            RunStateName::Failed => "failed",
            RunStateName::Cancelled => "cancelled",
            RunStateName::Interrupted => "interrupted",
        }
    }

    /// Pending or running (and executed by a live process).
    pub fn is_active(self) -> bool {
        matches!(self, RunStateName::Pending | RunStateName::Running)
    }

    /// Succeeded, failed or cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStateName::Succeeded | RunStateName::Failed | RunStateName::Cancelled
        )
    }

    /// The state of a stored run.
    pub fn of(record: &RunRecord) -> RunStateName {
        if record.interrupted {
            return RunStateName::Interrupted;
        }
        match record.state {
            RunState::Pending => RunStateName::Pending,
            RunState::Running => RunStateName::Running,
            RunState::Succeeded => RunStateName::Succeeded,
            RunState::Cancelled => RunStateName::Cancelled,
            _ => RunStateName::Failed,
        }
    }
}

impl fmt::Display for RunStateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a run state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a run state (expected pending, running, succeeded, failed, cancelled or interrupted)")]
pub struct UnknownRunState(pub String);

impl FromStr for RunStateName {
    type Err = UnknownRunState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => RunStateName::Pending,
            "running" => RunStateName::Running,
            "succeeded" => RunStateName::Succeeded,
            "failed" => RunStateName::Failed,
            "cancelled" => RunStateName::Cancelled,
            "interrupted" => RunStateName::Interrupted,
            other => return Err(UnknownRunState(other.to_string())),
        })
    }
}

/// `get_run_status(run_id)`: the legacy run dict.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RunStatus {
    /// The run id.
    pub run_id: String,
    /// `project_id` of `create_run`, or the plan's `metadata.project`.
    pub project_id: Option<String>,
    /// `phase_id` of `create_run`, or the plan's `metadata.phase_id`, else `ORCHESTRATED`.
    pub phase_id: Option<String>,
    /// Where it is.
    pub state: RunStateName,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it (last) started.
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// 0 when it succeeded, 1 when it failed or was cancelled (plans, as the legacy
    /// `execute_plan`); the `exit_code` given to `complete_run` (run records); None while it
    /// runs.
    pub exit_code: Option<i32>,
    /// For plans: `plan_id`, `plan_version`, `plan_path`, `variables` and the plan's own
    /// `metadata` (as `plan_metadata`); for run records: the `metadata` given to `create_run`.
    pub metadata: Value,
    /// How many times it was resumed.
    pub resumes: u32,
    /// `plan` (started by `execute_plan` / `execute_pipeline`) or `run_record` (`create_run`).
    pub kind: RunKind,
}

/// One attempt of a step.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct AttemptInfo {
    /// 1-based.
    pub attempt: u32,
    /// `running`, `succeeded`, `failed`, `timed_out`, `cancelled`, `agent_lost` or
    /// `interrupted`.
    pub state: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Exit status, for commands.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub error_log: Option<String>,
}

/// `get_run_steps(run_id)`: one step.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StepStatus {
    /// The step id (`ID[N]` for an item of a `for_each`).
    pub step_id: String,
    /// Its name.
    pub name: String,
    /// `pending`, `running`, `retrying`, `succeeded`, `failed`, `timed_out`, `cancelled`,
    /// `skipped` or `cached`.
    pub state: StepState,
    /// Attempts made (the legacy `attempt` counter).
    pub attempts: u32,
    /// Exit status of its last attempt (commands); -1 for a step that timed out without
    /// one, as the legacy orchestrator recorded a timeout; None when unknown.
    pub exit_code: Option<i32>,
    /// Why it did not succeed (the legacy `error_log`).
    pub error_log: Option<String>,
    /// When its last attempt started.
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Its outputs.
    pub outputs: Option<Value>,
    /// The `for_each` step of an item.
    pub parent: Option<String>,
    /// Every attempt, in order.
    pub attempt_history: Vec<AttemptInfo>,
}

/// `get_run_events(run_id)`: one event of the timeline.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RunEventRecord {
    /// 1, 2, 3... within the run.
    pub seq: u64,
    /// The run.
    pub run_id: String,
    /// `run_started`, `step_started`, `step_retrying` (the legacy `step_retry`),
    /// `step_expanded`, `step_finished`, `run_finished`.
    pub event_type: String,
    /// When (RFC 3339).
    pub timestamp: String,
    /// The step it concerns.
    pub step_id: Option<String>,
    /// The event's other fields (`attempt`, `state`, `exit_code`, `error`, ...).
    pub data: Value,
}

/// `OrchestrationMonitor::get_run_progress(run_id)`.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RunProgress {
    /// `get_run_status`.
    pub run: RunStatus,
    /// `get_run_steps`.
    pub steps: Vec<StepStatus>,
    /// `get_run_events`.
    pub timeline: Vec<RunEventRecord>,
    /// Ended steps over all steps, in percent, rounded down (as the legacy `int(...)`): a
    /// step counts when `succeeded`, `failed`, `skipped` (the legacy three) or `timed_out`,
    /// `cancelled`, `cached` (Hive's other end states). Items of a `for_each` are not counted
    /// (their step is). 0 for a run without steps.
    pub progress_pct: u32,
}

fn ts(t: Option<Timestamp>) -> Option<String> {
    t.map(|t| t.to_string())
}

/// The legacy status dict of a stored run.
pub(crate) fn run_status(
    r: &RunRecord,
    gate: Option<&StepRecord>,
    cancelled_code: Option<i32>,
) -> RunStatus {
    let state = RunStateName::of(r);
    let kind = manual::kind_of(r);
    let compat = &r.options["extra"]["compat"];
    let str_of = |v: &Value| v.as_str().map(str::to_string);
    let (project_id, phase_id, metadata, exit_code) = match kind {
        RunKind::RunRecord => {
            let code = match r.state {
                RunState::Succeeded | RunState::Failed => gate.and_then(|g| g.exit_code),
                RunState::Cancelled => cancelled_code,
                _ => None,
            };
            (
                str_of(&compat["project_id"]),
                str_of(&compat["phase_id"]),
                compat["metadata"].clone(),
                code,
            )
        }
        RunKind::Plan => {
            let mut m = Map::new();
            m.insert("plan_id".into(), json!(r.plan_id));
            m.insert("plan_version".into(), json!(r.plan_version));
            m.insert("plan_path".into(), json!(r.plan_path.display().to_string()));
            m.insert("variables".into(), json!(r.vars));
            if !r.metadata.is_null() {
                m.insert("plan_metadata".into(), r.metadata.clone());
            }
            if let Some(p) = compat.get("pipeline") {
                m.insert("pipeline".into(), p.clone());
            }
            let code = match r.state {
                RunState::Succeeded => Some(0),
                RunState::Failed | RunState::Cancelled => Some(1),
                _ => None,
            };
            (
                str_of(&r.metadata["project"]),
                Some(str_of(&r.metadata["phase_id"]).unwrap_or_else(|| "ORCHESTRATED".into())),
                Value::Object(m),
                code,
            )
        }
    };
    RunStatus {
        run_id: r.run_id.clone(),
        project_id,
        phase_id,
        state,
        created_at: r.created_at.to_string(),
        started_at: ts(r.started_at),
        ended_at: ts(r.finished_at),
        exit_code,
        metadata,
        resumes: r.resumes,
        kind,
    }
}

/// The steps of a run, each with its attempts.
pub(crate) fn step_statuses(steps: Vec<StepRecord>, attempts: &[AttemptRow]) -> Vec<StepStatus> {
    steps
        .into_iter()
        .map(|s| StepStatus {
            // The store leaves an ended step's start empty: its last attempt's start is it.
            started_at: ts(s.started_at.or_else(|| {
                attempts
                    .iter()
                    .rev()
                    .find(|a| a.step_id == s.step_id)
                    .map(|a| a.started_at)
            })),
            attempt_history: attempts
                .iter()
                .filter(|a| a.step_id == s.step_id)
                .map(|a| AttemptInfo {
                    attempt: a.attempt,
                    state: a.state.clone(),
                    started_at: a.started_at.to_string(),
                    ended_at: ts(a.finished_at),
                    exit_code: a.exit_code,
                    error_log: a.error.clone(),
                })
                .collect(),
            step_id: s.step_id,
            name: s.name,
            state: s.state,
            attempts: s.attempts,
            exit_code: match (s.exit_code, s.state) {
                (None, StepState::TimedOut) => Some(-1),
                (c, _) => c,
            },
            error_log: s.error,
            ended_at: ts(s.finished_at),
            outputs: s.outputs,
            parent: s.parent,
        })
        .collect()
}

/// One stored event (JSON text) as a timeline entry.
pub(crate) fn event_record(seq: u64, text: &str) -> RunEventRecord {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let mut data = match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let take_str = |m: &mut Map<String, Value>, k: &str| {
        m.remove(k).and_then(|v| v.as_str().map(str::to_string))
    };
    let run_id = take_str(&mut data, "run").unwrap_or_default();
    let event_type = take_str(&mut data, "type").unwrap_or_default();
    let timestamp = take_str(&mut data, "at").unwrap_or_default();
    let step_id = take_str(&mut data, "step");
    data.remove("seq");
    RunEventRecord {
        seq,
        run_id,
        event_type,
        timestamp,
        step_id,
        data: Value::Object(data),
    }
}

/// The legacy `_compute_progress`, over the plan's steps (items excluded).
pub(crate) fn progress_pct(steps: &[StepStatus]) -> u32 {
    let top: Vec<&StepStatus> = steps.iter().filter(|s| s.parent.is_none()).collect();
    if top.is_empty() {
        return 0;
    }
    let done = top.iter().filter(|s| s.state.is_terminal()).count();
    (done * 100 / top.len()) as u32
}
