//! `OrchestrationResult { tasks, metrics { wall_time, speedup_vs_serial, cost_estimate } }`:
//! the legacy result, serialised in the shape `hive run --tasks --json` prints.

use std::sync::Arc;
use std::time::Duration;

use hive_kernel::{Outcome, Status, TaskResult, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How one task ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskOutcome {
    /// The task's id.
    pub id: Arc<str>,
    /// `succeeded`, `failed`, `timed_out`, `cancelled` or `skipped` (cost budget, or a
    /// dependency that did not succeed).
    pub status: Status,
    /// When its first attempt started (`null` if it never ran).
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Timestamp,
    /// Attempts made.
    pub attempts: u32,
    /// Always `null` (the field is for commands in `hive run --tasks`).
    pub exit_code: Option<i32>,
    /// The errors, one per failed attempt, then the reason it was skipped or cancelled.
    pub errors: Vec<String>,
    /// The kernel agent of its last attempt (`null` if it never ran).
    pub agent: Option<u64>,
    /// Run time summed over attempts, in seconds.
    pub duration_s: f64,
    /// The `artifacts` member of the output, when the output is an object with an array
    /// there; else `[]`.
    pub artifacts: Vec<Value>,
    /// The agent's output, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

impl TaskOutcome {
    /// From the kernel's result of the task.
    pub(crate) fn from_kernel(id: Arc<str>, r: TaskResult) -> Self {
        let mut errors: Vec<String> = r.attempts.iter().filter_map(|a| a.error.clone()).collect();
        let duration_s = r.run_time().as_secs_f64();
        let artifacts = r.artifacts().to_vec();
        let status = r.status();
        let output = match r.outcome {
            Outcome::Succeeded(v) | Outcome::Cached(v) => Some(v),
            Outcome::Failed(e) if r.attempts.is_empty() => {
                errors.push(e.message);
                None
            }
            Outcome::Skipped(why) => {
                errors.push(why);
                None
            }
            _ => None,
        };
        TaskOutcome {
            id,
            status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            attempts: r.attempts.len() as u32,
            exit_code: None,
            errors,
            agent: r.attempts.last().map(|a| a.agent.get()),
            duration_s,
            artifacts,
            output,
        }
    }

    /// A task that never ran: skipped or cancelled, with the reason.
    pub(crate) fn never_ran(id: Arc<str>, status: Status, why: String) -> Self {
        TaskOutcome {
            id,
            status,
            started_at: None,
            finished_at: Timestamp::now(),
            attempts: 0,
            exit_code: None,
            errors: vec![why],
            agent: None,
            duration_s: 0.0,
            artifacts: Vec::new(),
            output: None,
        }
    }

    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == Status::Succeeded
    }
}

/// `metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metrics {
    /// From the first task's submission to the last task's end, in seconds.
    pub wall_time: f64,
    /// The tasks' run times summed, over `wall_time` (0 when nothing ran).
    pub speedup_vs_serial: f64,
    /// The cost estimates of the tasks that were started, summed (what the budget was
    /// charged).
    pub cost_estimate: f64,
}

impl Metrics {
    pub(crate) fn new(tasks: &[TaskOutcome], wall: Duration, cost_estimate: f64) -> Self {
        let serial: f64 = tasks.iter().map(|t| t.duration_s).sum();
        let wall_time = wall.as_secs_f64();
        Metrics {
            wall_time,
            speedup_vs_serial: if wall_time > 0.0 {
                serial / wall_time
            } else {
                0.0
            },
            cost_estimate,
        }
    }
}

/// The legacy `OrchestrationResult`. `merged` (the legacy quality-gate merger's
/// `{summary, conflicts?}`) is not produced by the facade: it stays `None` and is left out
/// of the JSON; run a merger as the last task of a graph instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OrchestrationResult {
    /// One per task, in input (insertion) order.
    pub tasks: Vec<TaskOutcome>,
    /// Timings and cost.
    pub metrics: Metrics,
    /// Always `None` (see above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<Value>,
}

impl OrchestrationResult {
    /// The outcome of task `id`.
    pub fn task(&self, id: &str) -> Option<&TaskOutcome> {
        self.tasks.iter().find(|t| &*t.id == id)
    }

    /// Whether every task succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.tasks.iter().all(TaskOutcome::succeeded)
    }

    /// How many tasks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.tasks.iter().filter(|t| t.status == status).count()
    }
}
