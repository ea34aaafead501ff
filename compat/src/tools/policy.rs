//! `OrchestrationPolicy { max_concurrency, retry { max_attempts, backoff, jitter }, timeout_s,
//! cost_budget, fairness, cancellation }`: its builder, its validation and its legacy JSON form.

use std::time::Duration;

use hive_kernel::{Cancellation, Fairness, Jitter, RetryPolicy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_concurrency` is 0.
    #[error("max_concurrency must be at least 1")]
    MaxConcurrency,
    /// `timeout_s` is not a positive, finite number of seconds.
    #[error("timeout_s must be a positive number of seconds, found {0}")]
    Timeout(f64),
    /// `cost_budget` is negative or not a number.
    #[error("cost_budget must be a non-negative number, found {0}")]
    CostBudget(f64),
    /// `retry.max_attempts` is 0.
    #[error("retry.max_attempts must be at least 1 (1 = no retry)")]
    MaxAttempts,
    /// A retry delay is negative or not a number.
    #[error("retry.{field} must be a non-negative number of seconds, found {value}")]
    Delay {
        /// `base_delay_s` or `max_delay_s`.
        field: &'static str,
        /// The value found.
        value: f64,
    },
}

/// `retry.backoff`: how the delay between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackoffKind {
    /// `exp`: `base_delay * 2^(n-1)` after failed attempt n, at most `max_delay`.
    #[default]
    #[serde(alias = "exponential")]
    Exp,
    /// `fixed`: `base_delay` every time.
    Fixed,
}

/// `retry.jitter`: randomisation of each delay `d`. In JSON, `true` is `full`, `false` is
/// `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum JitterMode {
    /// Exactly `d`.
    #[default]
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
}

impl JitterMode {
    fn word(self) -> &'static str {
        match self {
            JitterMode::None => "none",
            JitterMode::Full => "full",
            JitterMode::Equal => "equal",
        }
    }

    fn kernel(self) -> Jitter {
        match self {
            JitterMode::None => Jitter::None,
            JitterMode::Full => Jitter::Full,
            JitterMode::Equal => Jitter::Equal,
        }
    }
}

impl Serialize for JitterMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.word())
    }
}

impl<'de> Deserialize<'de> for JitterMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(JitterMode::Full),
            Raw::Flag(false) => Ok(JitterMode::None),
            Raw::Word(w) => match w.as_str() {
                "none" => Ok(JitterMode::None),
                "full" => Ok(JitterMode::Full),
                "equal" => Ok(JitterMode::Equal),
                other => Err(serde::de::Error::custom(format!(
                    "unknown jitter `{other}` (expected true, false, \"none\", \"full\" or \"equal\")"
                ))),
            },
        }
    }
}

/// `retry { max_attempts, backoff: exp | fixed, jitter }`, with the delays Hive adds
/// (`base_delay_s`, default 0.1; `max_delay_s`, default 60).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RetryRaw", into = "RetryRaw")]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// How the delay grows.
    pub backoff: BackoffKind,
    /// The first delay (`exp`) or every delay (`fixed`).
    pub base_delay: Duration,
    /// The largest delay (`exp`).
    pub max_delay: Duration,
    /// Randomisation of the delay.
    pub jitter: JitterMode,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig::none()
    }
}

impl RetryConfig {
    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryConfig {
            max_attempts: 1,
            backoff: BackoffKind::Exp,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(60),
            jitter: JitterMode::None,
        }
    }

    /// `max_attempts` attempts, `exp` backoff from `base_delay` (doubling, at most 60 s).
    pub fn exponential(max_attempts: u32, base_delay: Duration) -> Self {
        RetryConfig {
            max_attempts,
            base_delay,
            ..Self::none()
        }
    }

    /// `max_attempts` attempts, `fixed` backoff of `delay`.
    pub fn fixed(max_attempts: u32, delay: Duration) -> Self {
        RetryConfig {
            max_attempts,
            backoff: BackoffKind::Fixed,
            base_delay: delay,
            ..Self::none()
        }
    }

    /// The same with `jitter`.
    pub fn with_jitter(mut self, jitter: JitterMode) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same with the largest delay `max_delay`.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// The kernel's retry policy for it.
    pub fn to_kernel(&self) -> RetryPolicy {
        let retries = self.max_attempts.saturating_sub(1);
        let p = match self.backoff {
            BackoffKind::Fixed => RetryPolicy::fixed(retries, self.base_delay),
            BackoffKind::Exp => {
                RetryPolicy::exponential(retries, self.base_delay, 2.0, self.max_delay)
            }
        };
        p.with_jitter(self.jitter.kernel())
    }

    fn check(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::MaxAttempts);
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRaw {
    #[serde(default = "one")]
    max_attempts: u32,
    #[serde(default)]
    backoff: BackoffKind,
    #[serde(default)]
    jitter: JitterMode,
    #[serde(default = "tenth")]
    base_delay_s: f64,
    #[serde(default = "minute")]
    max_delay_s: f64,
}

fn one() -> u32 {
    1
}
fn tenth() -> f64 {
    0.1
}
fn minute() -> f64 {
    60.0
}

fn delay(field: &'static str, value: f64) -> Result<Duration, PolicyError> {
    if value.is_finite() && value >= 0.0 {
        Duration::try_from_secs_f64(value).map_err(|_| PolicyError::Delay { field, value })
    } else {
        Err(PolicyError::Delay { field, value })
    }
}

impl TryFrom<RetryRaw> for RetryConfig {
    type Error = PolicyError;

    fn try_from(r: RetryRaw) -> Result<Self, PolicyError> {
        let c = RetryConfig {
            max_attempts: r.max_attempts,
            backoff: r.backoff,
            base_delay: delay("base_delay_s", r.base_delay_s)?,
            max_delay: delay("max_delay_s", r.max_delay_s)?,
            jitter: r.jitter,
        };
        c.check()?;
        Ok(c)
    }
}

impl From<RetryConfig> for RetryRaw {
    fn from(c: RetryConfig) -> Self {
        RetryRaw {
            max_attempts: c.max_attempts,
            backoff: c.backoff,
            jitter: c.jitter,
            base_delay_s: c.base_delay.as_secs_f64(),
            max_delay_s: c.max_delay.as_secs_f64(),
        }
    }
}

/// The legacy `OrchestrationPolicy`. Build it with [`OrchestrationPolicy::builder`] (or
/// deserialise the legacy JSON); both check it. Defaults: `max_concurrency` 4, one attempt,
/// `timeout_s` 300, no budget, `round_robin`, `isolated`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PolicyRaw", into = "PolicyRaw")]
pub struct OrchestrationPolicy {
    max_concurrency: usize,
    retry: RetryConfig,
    timeout: Duration,
    cost_budget: Option<f64>,
    fairness: Fairness,
    cancellation: Cancellation,
}

impl Default for OrchestrationPolicy {
    fn default() -> Self {
        OrchestrationPolicy {
            max_concurrency: 4,
            retry: RetryConfig::none(),
            timeout: Duration::from_secs(300),
            cost_budget: None,
            fairness: Fairness::RoundRobin,
            cancellation: Cancellation::Isolated,
        }
    }
}

impl OrchestrationPolicy {
    /// A builder with the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            max_concurrency: 4,
            retry: RetryConfig::none(),
            timeout_s: 300.0,
            cost_budget: None,
            fairness: Fairness::RoundRobin,
            cancellation: Cancellation::Isolated,
        }
    }

    /// Tasks in flight at once.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
    /// Retries.
    pub fn retry(&self) -> &RetryConfig {
        &self.retry
    }
    /// Per-attempt timeout of tasks that set none (`timeout_s`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// The cost budget, if any.
    pub fn cost_budget(&self) -> Option<f64> {
        self.cost_budget
    }
    /// Which ready task starts first.
    pub fn fairness(&self) -> Fairness {
        self.fairness
    }
    /// What a task that ends badly does to the others.
    pub fn cancellation(&self) -> Cancellation {
        self.cancellation
    }
}

/// Builds an [`OrchestrationPolicy`]; [`PolicyBuilder::build`] checks it.
#[derive(Clone, Copy, Debug)]
pub struct PolicyBuilder {
    max_concurrency: usize,
    retry: RetryConfig,
    timeout_s: f64,
    cost_budget: Option<f64>,
    fairness: Fairness,
    cancellation: Cancellation,
}

impl PolicyBuilder {
    /// Tasks in flight at once (at least 1).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }
    /// Retries.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }
    /// Per-attempt timeout in seconds (more than 0).
    pub fn timeout_s(mut self, s: f64) -> Self {
        self.timeout_s = s;
        self
    }
    /// Cost budget (0 or more).
    pub fn cost_budget(mut self, budget: f64) -> Self {
        self.cost_budget = Some(budget);
        self
    }
    /// Which ready task starts first.
    pub fn fairness(mut self, fairness: Fairness) -> Self {
        self.fairness = fairness;
        self
    }
    /// What a task that ends badly does to the others.
    pub fn cancellation(mut self, cancellation: Cancellation) -> Self {
        self.cancellation = cancellation;
        self
    }

    /// Checks and builds the policy.
    pub fn build(self) -> Result<OrchestrationPolicy, PolicyError> {
        if self.max_concurrency == 0 {
            return Err(PolicyError::MaxConcurrency);
        }
        let timeout = if self.timeout_s.is_finite() && self.timeout_s > 0.0 {
            Duration::try_from_secs_f64(self.timeout_s)
                .map_err(|_| PolicyError::Timeout(self.timeout_s))?
        } else {
            return Err(PolicyError::Timeout(self.timeout_s));
        };
        if let Some(b) = self.cost_budget {
            if !(b.is_finite() && b >= 0.0) {
                return Err(PolicyError::CostBudget(b));
            }
        }
        self.retry.check()?;
        Ok(OrchestrationPolicy {
            max_concurrency: self.max_concurrency,
            retry: self.retry,
            timeout,
            cost_budget: self.cost_budget,
            fairness: self.fairness,
            cancellation: self.cancellation,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRaw {
    #[serde(default = "four")]
    max_concurrency: usize,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default = "five_minutes")]
    timeout_s: f64,
    #[serde(default)]
    cost_budget: Option<f64>,
    #[serde(default)]
    fairness: Fairness,
    #[serde(default)]
    cancellation: Cancellation,
}

fn four() -> usize {
    4
}
fn five_minutes() -> f64 {
    300.0
}

impl TryFrom<PolicyRaw> for OrchestrationPolicy {
    type Error = PolicyError;

    fn try_from(r: PolicyRaw) -> Result<Self, PolicyError> {
        let mut b = OrchestrationPolicy::builder()
            .max_concurrency(r.max_concurrency)
            .retry(r.retry)
            .timeout_s(r.timeout_s)
            .fairness(r.fairness)
            .cancellation(r.cancellation);
        if let Some(c) = r.cost_budget {
            b = b.cost_budget(c);
        }
        b.build()
    }
}

impl From<OrchestrationPolicy> for PolicyRaw {
    fn from(p: OrchestrationPolicy) -> Self {
        PolicyRaw {
            max_concurrency: p.max_concurrency,
            retry: p.retry,
            timeout_s: p.timeout.as_secs_f64(),
            cost_budget: p.cost_budget,
            fairness: p.fairness,
            cancellation: p.cancellation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_maps_onto_the_kernel_policy() {
        let exp = RetryConfig::exponential(4, Duration::from_millis(10)).to_kernel();
        assert_eq!(exp.max_attempts, 4);
        assert_eq!(exp.base_delay(1), Duration::from_millis(10));
        assert_eq!(exp.base_delay(3), Duration::from_millis(40));
        let fixed = RetryConfig::fixed(4, Duration::from_millis(10)).to_kernel();
        assert_eq!(fixed.base_delay(1), Duration::from_millis(10));
        assert_eq!(fixed.base_delay(3), Duration::from_millis(10));
    }
}
