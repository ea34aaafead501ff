//! The `#[repr(C)]` types that cross the plugin boundary: hook sets, the manifest, event and
//! decision payloads (borrowed for the call: copy what you keep), and errors. Enums that may grow are abi_stable non-exhaustive enums
//! (`*_NE`); sets and codes are transparent integers with named constants.

use abi_stable::{
    std_types::{RStr, RString},
    StableAbi,
};

/// A set of hooks (a bit set; unknown bits are ignored, so newer plugins load in older
/// kernels).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Default, Debug, Hash)]
pub struct Hooks(pub u64);

macro_rules! hooks {
    ($($name:ident = $bit:expr, $word:literal;)*) => {
        impl Hooks {
            $(
                #[doc = concat!("The `", $word, "` hook.")]
                pub const $name: Hooks = Hooks(1 << $bit);
            )*
            /// Every hook this version knows.
            pub const ALL: Hooks = Hooks(0 $(| (1 << $bit))*);
            /// Every hook with its name, in declaration order.
            pub const NAMED: &'static [(Hooks, &'static str)] = &[$((Hooks::$name, $word)),*];
        }
    };
}

hooks! {
    AGENT_SPAWNED = 0, "agent_spawned";
    AGENT_STATE_CHANGED = 1, "agent_state_changed";
    AGENT_FAILED = 2, "agent_failed";
    TASK_SUBMITTED = 3, "task_submitted";
    TASK_DELEGATED = 4, "task_delegated";
    TASK_STARTED = 5, "task_started";
    TASK_COMPLETED = 6, "task_completed";
    PERFORMANCE_METRIC = 7, "performance_metric";
    RUN_STARTED = 8, "run_started";
    RUN_FINISHED = 9, "run_finished";
    // api-since-1.2 {
    ATTEMPT_FINISHED = 10, "attempt_finished";
    // } api-since-1.2
    BEFORE_DELEGATE = 16, "before_delegate";
    ON_TASK_FAILED = 17, "on_task_failed";
}

impl Hooks {
    /// No hook.
    pub const NONE: Hooks = Hooks(0);
    /// Every bit: as the answer of `Plugin::hooks`, "all of the manifest's".
    pub const ALL_BITS: Hooks = Hooks(u64::MAX);
    /// The observer hooks.
    pub const OBSERVERS: Hooks = Hooks(0xffff);
    /// The decision hooks.
    pub const DECISIONS: Hooks = Hooks((1 << 16) | (1 << 17));

    /// Both sets.
    pub const fn union(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// Whether every hook of `other` is in `self`.
    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// The names of the hooks in the set (unknown bits are left out).
    pub fn names(self) -> Vec<&'static str> {
        Hooks::NAMED
            .iter()
            .filter(|(h, _)| self.contains(*h))
            .map(|(_, n)| *n)
            .collect()
    }

    /// The hook of a name.
    pub fn by_name(name: &str) -> Option<Hooks> {
        Hooks::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(h, _)| *h)
    }
}

impl std::ops::BitOr for Hooks {
    type Output = Hooks;
    fn bitor(self, rhs: Hooks) -> Hooks {
        self.union(rhs)
    }
}

/// What a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Its name (unique among loaded plugins).
    pub name: RString,
    /// Its own version.
    pub version: RString,
    /// The plugin-api version it was built against.
    pub api_version: RString,
    /// The hooks it subscribes to; no other hook is called.
    pub hooks: Hooks,
    /// One line about what it does.
    pub description: RString,
}

/// Severity of a plugin's log line.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogLevel(pub u8);

impl LogLevel {
    /// Trace.
    pub const TRACE: LogLevel = LogLevel(0);
    /// Debug.
    pub const DEBUG: LogLevel = LogLevel(1);
    /// Info.
    pub const INFO: LogLevel = LogLevel(2);
    /// Warn.
    pub const WARN: LogLevel = LogLevel(3);
    /// Error.
    pub const ERROR: LogLevel = LogLevel(4);
}

/// The kind of a [`Target`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct TargetKind(pub u8);

impl TargetKind {
    /// Any agent of a role (`name`).
    pub const ROLE: TargetKind = TargetKind(0);
    /// Any agent with a capability (`name`).
    pub const CAPABILITY: TargetKind = TargetKind(1);
    /// One agent (`agent`).
    pub const AGENT: TargetKind = TargetKind(2);
}

/// Where a task may run.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Target {
    /// Role, capability or agent.
    pub kind: TargetKind,
    /// The role or capability.
    pub name: RString,
    /// The agent, for `AGENT`.
    pub agent: u64,
}

impl Target {
    /// Any agent of `role`.
    pub fn role(role: &str) -> Self {
        Target {
            kind: TargetKind::ROLE,
            name: role.into(),
            agent: 0,
        }
    }
    /// Any agent with capability `cap`.
    pub fn capability(cap: &str) -> Self {
        Target {
            kind: TargetKind::CAPABILITY,
            name: cap.into(),
            agent: 0,
        }
    }
    /// Agent `id`.
    pub fn agent(id: u64) -> Self {
        Target {
            kind: TargetKind::AGENT,
            name: RString::new(),
            agent: id,
        }
    }
}

/// A borrowed [`Target`], as events and decision requests carry it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct TargetRef<'a> {
    /// Role, capability or agent.
    pub kind: TargetKind,
    /// The role or capability.
    pub name: RStr<'a>,
    /// The agent, for `AGENT`.
    pub agent: u64,
}

impl TargetRef<'_> {
    /// An owned copy (for a `Reroute`, say).
    pub fn to_owned(&self) -> Target {
        Target {
            kind: self.kind,
            name: self.name.into(),
            agent: self.agent,
        }
    }
}

impl Target {
    /// A borrowed view.
    pub fn as_ref(&self) -> TargetRef<'_> {
        TargetRef {
            kind: self.kind,
            name: self.name.as_rstr(),
            agent: self.agent,
        }
    }
}

/// An agent was spawned.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AgentEvent<'a> {
    /// The agent.
    pub agent: u64,
    /// Its role.
    pub role: RStr<'a>,
    /// Its driver.
    pub driver: RStr<'a>,
    /// Its capacity.
    pub capacity: u32,
}

/// An agent changed state (`starting`, `ready`, `busy`, `draining`, `stopped`, `failed`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AgentStateChange<'a> {
    /// The agent.
    pub agent: u64,
    /// Its role.
    pub role: RStr<'a>,
    /// The state it left.
    pub from: RStr<'a>,
    /// The state it entered.
    pub to: RStr<'a>,
}

/// An agent failed.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AgentFailure<'a> {
    /// The agent.
    pub agent: u64,
    /// Its role.
    pub role: RStr<'a>,
    /// Why.
    pub reason: RStr<'a>,
    /// Tasks it was running (they go back to their retry policy).
    pub in_flight: u32,
}

/// A task was submitted, delegated or started.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TaskEvent<'a> {
    /// The task.
    pub task: u64,
    /// Its label (empty if none).
    pub name: RStr<'a>,
    /// Where it may run.
    pub target: TargetRef<'a>,
    /// The agent (0 before delegation).
    pub agent: u64,
    /// The attempt (0 before delegation).
    pub attempt: u32,
    /// Its priority.
    pub priority: i32,
}

/// A task ended.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TaskCompletion<'a> {
    /// The task.
    pub task: u64,
    /// Its label (empty if none).
    pub name: RStr<'a>,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, `skipped` or `cached`.
    pub status: RStr<'a>,
    /// Attempts made.
    pub attempts: u32,
    /// The agent of the last attempt (0 if none).
    pub agent: u64,
    /// Run time of the last attempt, in milliseconds.
    pub duration_ms: f64,
    /// The error, if it did not succeed (empty otherwise).
    pub error: RStr<'a>,
}

/// A metric.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Metric<'a> {
    /// The agent that reported it (0 if a plugin did).
    pub agent: u64,
    /// The task it concerns (0 if none).
    pub task: u64,
    /// The plugin that reported it (empty if an agent did).
    pub source: RStr<'a>,
    /// Its name.
    pub name: RStr<'a>,
    /// Its value.
    pub value: f64,
}

/// A run of a plan started or finished.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RunEvent<'a> {
    /// The run.
    pub run: RStr<'a>,
    /// The plan.
    pub plan: RStr<'a>,
    /// The run's state (`running`, `succeeded`, `failed`, ...).
    pub state: RStr<'a>,
}

// api-since-1.2 {
/// An attempt of a task ended. Added in 1.2.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AttemptEvent<'a> {
    /// The task.
    pub task: u64,
    /// Its label (empty if none).
    pub name: RStr<'a>,
    /// The role of the agent that ran it.
    pub role: RStr<'a>,
    /// The agent.
    pub agent: u64,
    /// 1-based attempt number.
    pub attempt: u32,
    /// `succeeded`, `failed`, `timed_out`, `cancelled` or `agent_lost`.
    pub status: RStr<'a>,
    /// How long it waited before it started: since its submission for a first attempt, since
    /// its retry was due for a later one (deferrals count as waiting), in milliseconds.
    pub queue_ms: f64,
    /// How long it ran, in milliseconds.
    pub run_ms: f64,
    /// The error, if it did not succeed (empty otherwise).
    pub error: RStr<'a>,
    /// Whether the task will be tried again.
    pub will_retry: bool,
}

/// One attempt for a plugin-contributed driver to decide. Added in 1.2.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct DriverRequest<'a> {
    /// The driver's name (a plugin may contribute several).
    pub driver: RStr<'a>,
    /// The agent.
    pub agent: u64,
    /// Its role.
    pub role: RStr<'a>,
    /// The task.
    pub task: u64,
    /// Its label (empty if none): a plan's step id.
    pub name: RStr<'a>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// The attempt's time limit, in milliseconds.
    pub timeout_ms: u64,
    /// Its payload as JSON.
    pub payload_json: RStr<'a>,
}

/// What a plugin-contributed driver decides for one attempt. Added in 1.2.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [usize; 8], traits(Debug, Clone, PartialEq))))]
pub enum DriverStep {
    /// After `delay_ms`, the attempt succeeds with this output (JSON).
    Complete {
        /// Milliseconds.
        delay_ms: u64,
        /// The output, as JSON.
        output_json: RString,
    },
    /// After `delay_ms`, the attempt fails with this error (retryable).
    Fail {
        /// Milliseconds.
        delay_ms: u64,
        /// The error.
        error: RString,
    },
    /// The attempt never answers: the task's timeout ends it.
    Hang,
    /// After `delay_ms`, the agent dies under the attempt (an agent failure).
    Crash {
        /// Milliseconds.
        delay_ms: u64,
        /// Why.
        reason: RString,
    },
}

// `DriverStep_NE` (generated by the derive): [`DriverStep`] behind abi_stable's
// non-exhaustive wrapper; a kernel that meets a variant it does not know fails the attempt.
// } api-since-1.2

/// The question of `before_delegate`: this task is about to be handed to an agent.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct DelegateRequest<'a> {
    /// The task.
    pub task: u64,
    /// Its label (empty if none).
    pub name: RStr<'a>,
    /// Where it is headed now (its own target, or where a plugin rerouted it).
    pub target: TargetRef<'a>,
    /// The agent that would take it.
    pub agent: u64,
    /// The attempt it would be.
    pub attempt: u32,
    /// Its priority.
    pub priority: i32,
    /// Its payload as JSON.
    pub payload_json: RStr<'a>,
}

/// The answer of `before_delegate`.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [usize; 8], traits(Debug, Clone, PartialEq))))]
pub enum Delegate {
    /// Go ahead.
    Continue,
    /// Do not run it: it succeeded with this output (JSON).
    ShortCircuit {
        /// The output, as JSON.
        output_json: RString,
    },
    /// Do not run it: it failed for this reason (no retry).
    Reject {
        /// Why.
        reason: RString,
    },
    /// Put it back in the queue for this long, then try again (no attempt is counted).
    Defer {
        /// Milliseconds.
        ms: u64,
    },
    /// Send it elsewhere.
    Reroute {
        /// The new target.
        target: Target,
    },
}

// `Delegate_NE` (generated by the derive): [`Delegate`] behind abi_stable's non-exhaustive
// wrapper; a kernel that meets a variant it does not know treats it as `Continue`.

/// The question of `on_task_failed`: this attempt failed.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FailureInfo<'a> {
    /// The task.
    pub task: u64,
    /// Its label (empty if none).
    pub name: RStr<'a>,
    /// Where it was headed.
    pub target: TargetRef<'a>,
    /// The agent that ran the attempt.
    pub agent: u64,
    /// The attempt that failed.
    pub attempt: u32,
    /// Attempts the policy allows.
    pub max_attempts: u32,
    /// The error.
    pub error: RStr<'a>,
    /// The exit code, for commands (-1 if none).
    pub exit_code: i32,
    /// Whether it timed out.
    pub timed_out: bool,
    /// Whether its agent was lost under it.
    pub agent_lost: bool,
}

/// The answer of `on_task_failed`.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [usize; 8], traits(Debug, Clone, PartialEq))))]
pub enum OnFailure {
    /// Apply the task's retry policy.
    Default,
    /// Try again after this long (even past the policy's attempts, up to the kernel's limit).
    RetryAfter {
        /// Milliseconds.
        ms: u64,
    },
    /// No more attempts: the task fails now.
    GiveUp,
    /// The task succeeds with this output (JSON) instead.
    Fallback {
        /// The output, as JSON.
        output_json: RString,
    },
}

// `OnFailure_NE` (generated by the derive): [`OnFailure`] behind abi_stable's non-exhaustive
// wrapper; unknown variants mean `Default`.

/// The kind of a [`PluginError`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// The plugin refused its config.
    pub const CONFIG: ErrorKind = ErrorKind(1);
    /// The plugin could not initialise.
    pub const INIT: ErrorKind = ErrorKind(2);
    /// A hook failed.
    pub const HOOK: ErrorKind = ErrorKind(3);
    /// A hook panicked (caught by the SDK).
    pub const PANIC: ErrorKind = ErrorKind(4);
    /// The kernel refused a host call.
    pub const HOST: ErrorKind = ErrorKind(5);
}

/// An error from a plugin (or from the kernel to a plugin).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct PluginError {
    /// What kind.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: RString,
}

impl PluginError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: RString::from(message.into()),
        }
    }
    /// The plugin refuses its config.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CONFIG, message)
    }
    /// The plugin cannot initialise.
    pub fn init(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INIT, message)
    }
    /// A hook failed.
    pub fn hook(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::HOOK, message)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}
