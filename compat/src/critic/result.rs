//! What `run_all` returns per critic: `execution_status` success | timeout | error,
//! `duration_ms`, error metadata, and the fixed timeout and error templates.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `execution_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExecutionStatus {
    /// The critic returned a result (or the pre-execution hook supplied a cached one).
    Success,
    /// The critic ran past its timeout and was stopped.
    Timeout,
    /// The critic returned an error or panicked (or could not be run).
    Error,
}

impl ExecutionStatus {
    /// `success`, `timeout` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Success => "success",
            ExecutionStatus::Timeout => "timeout",
            ExecutionStatus::Error => "error",
        }
    }
}

impl std::fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error metadata of a critic that did not succeed: `{"type": ..., "message": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// `TimeoutError`, `Panic`, `OrchestratorError`, or the critic's error type (the Rust type
    /// name of the error it returned, or the one it gave [`super::CriticError::new`]).
    #[serde(rename = "type")]
    pub error_type: String,
    /// What went wrong.
    pub message: String,
}

/// The result of one critic in `run_all`, serialised with the legacy field names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CriticResult {
    /// The critic's name.
    pub critic: String,
    /// `success`, `timeout` or `error`.
    pub execution_status: ExecutionStatus,
    /// The critic's output; `null` in the timeout and error templates, unless the failure
    /// hook supplied a degraded result.
    pub result: Option<Value>,
    /// Milliseconds from the critic's submission to its end (for a cache hit: the
    /// pre-execution hook's time).
    pub duration_ms: f64,
    /// Why it did not succeed (`null` on success).
    pub error: Option<ErrorInfo>,
    /// The result came from the pre-execution hook; the critic did not run.
    pub cached: bool,
    /// The result was supplied by the failure hook (the status stays `timeout` or `error`).
    pub degraded: bool,
    /// Hooks that failed for this critic (`"post_execution: ..."`); each was logged and
    /// ignored. Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hook_errors: Vec<String>,
}

impl CriticResult {
    /// A success.
    pub fn success(critic: &str, result: Value, duration_ms: f64) -> Self {
        CriticResult {
            critic: critic.to_string(),
            execution_status: ExecutionStatus::Success,
            result: Some(result),
            duration_ms,
            error: None,
            cached: false,
            degraded: false,
            hook_errors: Vec::new(),
        }
    }

    /// The timeout template: `execution_status: "timeout"`, `result: null`,
    /// `error: {"type": "TimeoutError", "message": "critic `NAME` timed out after S s"}`.
    pub fn timeout_template(critic: &str, timeout: Duration, duration_ms: f64) -> Self {
        CriticResult {
            critic: critic.to_string(),
            execution_status: ExecutionStatus::Timeout,
            result: None,
            duration_ms,
            error: Some(ErrorInfo {
                error_type: "TimeoutError".into(),
                message: format!(
                    "critic `{critic}` timed out after {} s",
                    timeout.as_secs_f64()
                ),
            }),
            cached: false,
            degraded: false,
            hook_errors: Vec::new(),
        }
    }

    /// The error template: `execution_status: "error"`, `result: null`,
    /// `error: {"type": TYPE, "message": MESSAGE}`.
    pub fn error_template(critic: &str, error: ErrorInfo, duration_ms: f64) -> Self {
        CriticResult {
            critic: critic.to_string(),
            execution_status: ExecutionStatus::Error,
            result: None,
            duration_ms,
            error: Some(error),
            cached: false,
            degraded: false,
            hook_errors: Vec::new(),
        }
    }

    /// Whether `execution_status` is `success`.
    pub fn is_success(&self) -> bool {
        self.execution_status == ExecutionStatus::Success
    }
}
