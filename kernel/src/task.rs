//! What a task is (spec, target, retry policy) and how it ended (outcome, attempts, timings).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{AgentId, TaskId, Timestamp};

/// Where a task may run.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Target {
    /// Any agent of this role.
    Role(Arc<str>),
    /// Any agent that declares this capability.
    Capability(Arc<str>),
    /// This agent and no other.
    Agent(AgentId),
}

impl Target {
    /// Any agent of `role`.
    pub fn role(role: impl AsRef<str>) -> Self {
        Target::Role(Arc::from(role.as_ref()))
    }

    /// Any agent with capability `cap`.
    pub fn capability(cap: impl AsRef<str>) -> Self {
        Target::Capability(Arc::from(cap.as_ref()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Role(r) => write!(f, "role {r}"),
            Target::Capability(c) => write!(f, "capability {c}"),
            Target::Agent(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How long to wait before attempt `n + 1` after attempt `n` failed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay every time.
    Fixed {
        /// The delay.
        #[serde(with = "secs_f64")]
        delay: Duration,
    },
    /// `base * factor^(n-1)`, never more than `cap`.
    Exponential {
        /// The first delay.
        #[serde(with = "secs_f64")]
        base: Duration,
        /// The growth factor (2.0 doubles).
        factor: f64,
        /// The largest delay.
        #[serde(with = "secs_f64")]
        cap: Duration,
    },
}

/// Randomisation of a backoff delay `d` (AWS's "Exponential Backoff And Jitter").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `d`.
    #[default]
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
}

/// How often and how patiently a task is retried. Attempts that fail, time out or lose their
/// agent are retried while attempts remain and the deadline allows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Randomisation of the delay.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Fixed {
                delay: Duration::ZERO,
            },
            jitter: Jitter::None,
        }
    }

    /// `retries` retries (so `retries + 1` attempts) with a fixed delay.
    pub fn fixed(retries: u32, delay: Duration) -> Self {
        RetryPolicy {
            max_attempts: retries.saturating_add(1),
            backoff: Backoff::Fixed { delay },
            jitter: Jitter::None,
        }
    }

    /// `retries` retries with exponential backoff.
    pub fn exponential(retries: u32, base: Duration, factor: f64, cap: Duration) -> Self {
        RetryPolicy {
            max_attempts: retries.saturating_add(1),
            backoff: Backoff::Exponential { base, factor, cap },
            jitter: Jitter::None,
        }
    }

    /// The same policy with `jitter`.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The un-jittered delay after failed attempt `n` (1-based).
    pub fn base_delay(&self, n: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed { delay } => delay,
            Backoff::Exponential { base, factor, cap } => {
                let exp = factor.max(1.0).powi(n.saturating_sub(1).min(1024) as i32);
                let secs = base.as_secs_f64() * exp;
                if !secs.is_finite() || secs >= cap.as_secs_f64() {
                    cap
                } else {
                    Duration::from_secs_f64(secs)
                }
            }
        }
    }

    /// The delay after failed attempt `n`, jittered with `rng`.
    pub fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let d = self.base_delay(n);
        let micros = d.as_micros().min(u64::MAX as u128) as u64;
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => Duration::from_micros(rng.u64(0..=micros)),
            Jitter::Equal => {
                let half = micros / 2;
                Duration::from_micros(half + rng.u64(0..=micros - half))
            }
        }
    }

    /// The bounds `[lo, hi]` that [`RetryPolicy::delay`] can return after attempt `n`.
    pub fn delay_bounds(&self, n: u32) -> (Duration, Duration) {
        let d = self.base_delay(n);
        match self.jitter {
            Jitter::None => (d, d),
            Jitter::Full => (Duration::ZERO, d),
            Jitter::Equal => (Duration::from_micros(d.as_micros() as u64 / 2), d),
        }
    }
}

/// A unit of work to submit. Build with [`TaskSpec::new`] and the `with_*` setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TaskSpec {
    /// Where it may run.
    pub target: Target,
    /// The JSON handed to the agent.
    pub payload: Arc<Value>,
    /// A caller's label (for example the id in `hive run --tasks`).
    pub name: Option<Arc<str>>,
    /// Higher runs first (default 0).
    pub priority: i32,
    /// Estimated cost, for `shortest_first` queues and cost budgets.
    pub cost: Option<f64>,
    /// Limit per attempt; the kernel default when `None`.
    pub timeout: Option<Duration>,
    /// No attempt starts, and none runs, past this moment.
    pub deadline: Option<Timestamp>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Key for `affinity` routing: the same key goes to the same agent while it lives.
    pub affinity: Option<Arc<str>>,
}

impl TaskSpec {
    /// A task for `target` carrying `payload`, with defaults for the rest.
    pub fn new(target: Target, payload: Value) -> Self {
        TaskSpec {
            target,
            payload: Arc::new(payload),
            name: None,
            priority: 0,
            cost: None,
            timeout: None,
            deadline: None,
            retry: RetryPolicy::none(),
            affinity: None,
        }
    }

    /// A task for any agent of `role`.
    pub fn for_role(role: impl AsRef<str>, payload: Value) -> Self {
        Self::new(Target::role(role), payload)
    }

    /// Sets the label.
    pub fn with_name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Some(Arc::from(name.as_ref()));
        self
    }
    /// Sets the priority (higher first).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Sets the cost estimate.
    pub fn with_cost(mut self, cost: f64) -> Self {
        self.cost = Some(cost);
        self
    }
    /// Sets the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Timestamp) -> Self {
        self.deadline = Some(deadline);
        self
    }
    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Sets the affinity key.
    pub fn with_affinity(mut self, key: impl AsRef<str>) -> Self {
        self.affinity = Some(Arc::from(key.as_ref()));
        self
    }
}

/// Why an attempt or a task failed: a message, and whether trying again can help.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// What went wrong, for people.
    pub message: String,
    /// `false` stops retries.
    #[serde(default = "yes")]
    pub retryable: bool,
    /// The exit status, for commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Anything else the driver knows (for commands: the tails of stdout and stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

fn yes() -> bool {
    true
}

impl TaskError {
    /// A retryable error.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: true,
            exit_code: None,
            detail: None,
        }
    }

    /// An error that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        TaskError {
            retryable: false,
            ..Self::new(message)
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// It ran and produced this output.
    Succeeded(Value),
    /// Its last attempt failed (or it could not be attempted).
    Failed(TaskError),
    /// Its last attempt ran out of time, or its deadline passed.
    TimedOut,
    /// Someone cancelled it (or its batch cascaded).
    Cancelled,
    /// It was not run because of an earlier outcome (graph executors).
    Skipped(String),
    /// It was not run because an earlier identical run's output was reused.
    Cached(Value),
}

impl Outcome {
    /// The status word.
    pub fn status(&self) -> Status {
        match self {
            Outcome::Succeeded(_) => Status::Succeeded,
            Outcome::Failed(_) => Status::Failed,
            Outcome::TimedOut => Status::TimedOut,
            Outcome::Cancelled => Status::Cancelled,
            Outcome::Skipped(_) => Status::Skipped,
            Outcome::Cached(_) => Status::Cached,
        }
    }

    /// Succeeded or Cached.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded(_) | Outcome::Cached(_))
    }
}

/// The status word of an [`Outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// See [`Outcome::Succeeded`].
    Succeeded,
    /// See [`Outcome::Failed`].
    Failed,
    /// See [`Outcome::TimedOut`].
    TimedOut,
    /// See [`Outcome::Cancelled`].
    Cancelled,
    /// See [`Outcome::Skipped`].
    Skipped,
    /// See [`Outcome::Cached`].
    Cached,
}

impl Status {
    /// The snake_case word.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
            Status::Cached => "cached",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttemptStatus {
    /// It produced output.
    Succeeded,
    /// The agent reported an error.
    Failed,
    /// It ran past its timeout (or the task's deadline) and was stopped.
    TimedOut,
    /// It was cancelled.
    Cancelled,
    /// Its agent died, lost its lease or was shut down under it.
    AgentLost,
}

impl AttemptStatus {
    /// Its name in events and for plugins (`succeeded`, `failed`, `timed_out`, `cancelled`,
    /// `agent_lost`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
            AttemptStatus::TimedOut => "timed_out",
            AttemptStatus::Cancelled => "cancelled",
            AttemptStatus::AgentLost => "agent_lost",
        }
    }
}

/// One attempt: who ran it, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1-based.
    pub attempt: u32,
    /// The agent that ran it.
    pub agent: AgentId,
    /// When it started on the agent.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// How it ended.
    pub status: AttemptStatus,
    /// The error, unless it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exit status, for commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Everything known about a finished task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// Its label, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
    /// How it ended.
    pub outcome: Outcome,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    /// When it was submitted (entered the queue).
    pub queued_at: Timestamp,
    /// When its first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Timestamp,
}

impl TaskResult {
    /// The status word.
    pub fn status(&self) -> Status {
        self.outcome.status()
    }

    /// The exit code of the last attempt, for commands.
    pub fn exit_code(&self) -> Option<i32> {
        self.attempts.last().and_then(|a| a.exit_code)
    }

    /// The `artifacts` array of its output, when it succeeded (or was cached) with an object
    /// that has one: the legacy `OrchestrationResult`'s per-task `artifacts`. Else empty.
    pub fn artifacts(&self) -> &[Value] {
        match &self.outcome {
            Outcome::Succeeded(v) | Outcome::Cached(v) => v
                .get("artifacts")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice),
            _ => &[],
        }
    }

    /// Time spent running, summed over attempts.
    pub fn run_time(&self) -> Duration {
        self.attempts
            .iter()
            .map(|a| a.finished_at.since(a.started_at))
            .sum()
    }
}

pub(crate) mod secs_f64 {
    //! Serialises a `Duration` as fractional seconds.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_come_from_a_successful_output_object() {
        let result = |outcome| TaskResult {
            id: TaskId(1),
            name: None,
            outcome,
            attempts: Vec::new(),
            queued_at: Timestamp(0),
            started_at: None,
            finished_at: Timestamp(0),
        };
        let out = serde_json::json!({"artifacts": ["a.txt", {"path": "b"}], "x": 1});
        let ok = result(Outcome::Succeeded(out.clone()));
        assert_eq!(
            ok.artifacts(),
            out["artifacts"].as_array().expect("array").as_slice()
        );
        assert_eq!(result(Outcome::Cached(out)).artifacts().len(), 2);
        for none in [
            Outcome::Succeeded(serde_json::json!({"artifacts": "not a list"})),
            Outcome::Succeeded(serde_json::json!(["artifacts"])),
            Outcome::Skipped("why".into()),
        ] {
            assert!(result(none).artifacts().is_empty());
        }
    }

    #[test]
    fn exponential_backoff_grows_then_caps() {
        let p = RetryPolicy::exponential(
            10,
            Duration::from_millis(100),
            2.0,
            Duration::from_millis(1000),
        );
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(200));
        assert_eq!(p.base_delay(4), Duration::from_millis(800));
        assert_eq!(p.base_delay(5), Duration::from_millis(1000));
        assert_eq!(p.base_delay(500), Duration::from_millis(1000));
    }

    #[test]
    fn jittered_delays_stay_in_bounds_and_are_seedable() {
        for jitter in [Jitter::None, Jitter::Full, Jitter::Equal] {
            let p =
                RetryPolicy::exponential(5, Duration::from_millis(10), 3.0, Duration::from_secs(1))
                    .with_jitter(jitter);
            let mut a = fastrand::Rng::with_seed(7);
            let mut b = fastrand::Rng::with_seed(7);
            for n in 1..6 {
                let (lo, hi) = p.delay_bounds(n);
                let d = p.delay(n, &mut a);
                assert!(
                    d >= lo && d <= hi,
                    "{jitter:?} n={n}: {d:?} not in [{lo:?}, {hi:?}]"
                );
                assert_eq!(d, p.delay(n, &mut b), "same seed, same delay");
            }
        }
    }

    #[test]
    fn full_jitter_actually_varies() {
        let p = RetryPolicy::fixed(3, Duration::from_secs(1)).with_jitter(Jitter::Full);
        let mut rng = fastrand::Rng::with_seed(1);
        let ds: std::collections::HashSet<_> = (0..20).map(|_| p.delay(1, &mut rng)).collect();
        assert!(ds.len() > 10);
    }

    #[test]
    fn outcome_serialises_with_status_word() {
        let o = Outcome::Succeeded(serde_json::json!({"x": 1}));
        assert_eq!(
            serde_json::to_value(&o).expect("json"),
            serde_json::json!({"status": "succeeded", "value": {"x": 1}})
        );
        assert_eq!(Outcome::TimedOut.status().as_str(), "timed_out");
    }
}
