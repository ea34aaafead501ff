//! The plugin's state and decisions, without the host: an agent registry, the breakers, the
//! error-pattern rules and the restart schedule. Every entry point takes the clock as an
//! argument and returns what to tell the kernel (events, logs, metrics) as [`Effect`]s, so
//! the logic is tested without a kernel and without sleeping.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hive_plugin_api::{Delegate, LogLevel, OnFailure, Target, TargetKind};
// Small integer and short string keys: a fast hash (the maps are not exposed to untrusted
// key choice beyond agent and task ids and role names from the config).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde_json::{json, Value};

use crate::breaker::{Breaker, Gate, Phase, Transition, Window};
use crate::config::{Action, Settings};

/// Tasks remembered for reroutes (pins and agents to avoid) at most; past it the maps are
/// cleared (a forgotten pin is only treated as the task's own target).
const MAX_TRACKED_TASKS: usize = 100_000;
/// Roles of agents that ended, remembered for late questions about them.
const MAX_DEAD: usize = 4096;
/// A spawn request not seen as an agent after this long is forgotten (ms).
const TICKET_TTL_MS: u64 = 30_000;

/// Something to tell the kernel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// A named plugin event.
    Emit(&'static str, Value),
    /// A log line.
    Log(LogLevel, String),
    /// A metric.
    Metric(&'static str, f64),
}

/// An agent's life, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Starting,
    Ready,
    Busy,
    Draining,
}

impl Life {
    fn parse(s: &str) -> Option<Life> {
        match s {
            "starting" => Some(Life::Starting),
            "ready" => Some(Life::Ready),
            "busy" => Some(Life::Busy),
            "draining" => Some(Life::Draining),
            _ => None,
        }
    }
    /// Counts as one of the role's live agents (for restarts).
    fn live(self) -> bool {
        matches!(self, Life::Starting | Life::Ready | Life::Busy)
    }
    /// Takes tasks now.
    fn accepting(self) -> bool {
        matches!(self, Life::Ready | Life::Busy)
    }
}

#[derive(Debug, Clone)]
struct AgentRec {
    role: Arc<str>,
    life: Life,
}

/// A restart waiting for its backoff.
#[derive(Debug, Clone)]
struct Restart {
    role: Arc<str>,
    failed_agent: u64,
    reason: String,
    due: u64,
    /// Live agents the role should have (as many as before the failure).
    target: usize,
    backoff_ms: u64,
}

/// A spawn this plugin asked for, until its agent shows up.
#[derive(Debug, Clone)]
struct Ticket {
    role: Arc<str>,
    ticket: u64,
    at: u64,
}

#[derive(Debug, Clone)]
struct GaveUp {
    restarts: usize,
    failed_agent: u64,
    unix_ms: u64,
}

#[derive(Debug, Default)]
struct Healing {
    pending: Vec<Restart>,
    /// Restarts done per role, within the intensity period (plugin clock, ms).
    history: HashMap<Arc<str>, VecDeque<u64>>,
    total: BTreeMap<String, u64>,
    gave_up: BTreeMap<String, GaveUp>,
    tickets: Vec<Ticket>,
    skipped: u64,
    /// Agents that failed while draining (on their way out anyway): not restarted.
    draining_failed: HashSet<u64>,
    stopping: bool,
}

#[derive(Debug, Default)]
struct State {
    agents: HashMap<u64, AgentRec>,
    dead: HashMap<u64, Arc<str>>,
    dead_order: VecDeque<u64>,
    agent_breakers: HashMap<u64, Breaker>,
    role_breakers: HashMap<Arc<str>, Breaker>,
    /// Task -> (agent to keep it away from, the attempt that failed there): `reroute` rules.
    avoid: HashMap<u64, (u64, u32)>,
    /// Task -> the agent this plugin rerouted it to.
    pinned: HashMap<u64, u64>,
    /// Per role, the agents whose failures its window holds, and when each failed last.
    failing: HashMap<Arc<str>, HashMap<u64, u64>>,
    rr: usize,
    rerouted: u64,
    deferred: u64,
    reroute_unavailable: u64,
    lost_retried: u64,
    heal: Healing,
}

/// The target of a delegation, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetView<'a> {
    /// Role, capability or agent.
    pub(crate) kind: TargetKind,
    /// The role or capability.
    pub(crate) name: &'a str,
}

/// The engine: settings, state, and the fast-path flag.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) settings: Settings,
    state: Mutex<State>,
    /// Whether `before_delegate` has anything to check: a breaker not closed, or a task to
    /// keep away from an agent. False: `Continue` without taking the lock.
    armed: AtomicBool,
    rule_hits: Vec<AtomicU64>,
    /// Breakers opened so far (agents' breakers go with their agents; this stays).
    opened_total: AtomicU64,
}

fn agent_key(id: u64) -> String {
    format!("agent:{id}")
}

fn role_key(role: &str) -> String {
    format!("role:{role}")
}

impl Engine {
    pub(crate) fn new(settings: Settings) -> Self {
        let rule_hits = settings.rules.iter().map(|_| AtomicU64::new(0)).collect();
        Engine {
            settings,
            state: Mutex::new(State::default()),
            armed: AtomicBool::new(false),
            rule_hits,
            opened_total: AtomicU64::new(0),
        }
    }

    /// Whether `before_delegate` has anything to check (lock-free).
    pub(crate) fn armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (caught by the SDK) leaves the state usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recomputes the fast-path flag (under the lock).
    fn rearm(&self, st: &State) {
        let armed = !st.avoid.is_empty()
            || st
                .agent_breakers
                .values()
                .any(|b| b.phase() != Phase::Closed)
            || st
                .role_breakers
                .values()
                .any(|b| b.phase() != Phase::Closed);
        self.armed.store(armed, Ordering::Release);
    }

    fn open_count(st: &State) -> usize {
        st.agent_breakers
            .values()
            .chain(st.role_breakers.values())
            .filter(|b| b.phase() != Phase::Closed)
            .count()
    }

    /// The events of a breaker's transition.
    fn transition_fx(
        &self,
        st: &State,
        fx: &mut Vec<Effect>,
        scope: &str,
        role: &str,
        agent: Option<u64>,
        t: Transition,
    ) {
        let s = &self.settings.breaker;
        let key = match agent {
            Some(a) => agent_key(a),
            None => role_key(role),
        };
        let mut data = json!({"scope": scope, "key": key, "role": role});
        if let Some(a) = agent {
            data["agent"] = a.into();
        }
        let name = match t {
            Transition::Opened {
                failure_rate,
                calls,
                failures,
                reopened,
            } => {
                data["failure_rate"] = json!((failure_rate * 1000.0).round() / 1000.0);
                data["calls"] = calls.into();
                data["failures"] = failures.into();
                data["reopened"] = reopened.into();
                data["cool_down_ms"] = s.cool_down_ms.into();
                self.opened_total.fetch_add(1, Ordering::Relaxed);
                fx.push(Effect::Log(
                    LogLevel::WARN,
                    format!(
                        "breaker {key} opened ({}): {failures} of {calls} attempts failed",
                        if reopened {
                            "a half-open trial failed"
                        } else {
                            "failure rate over the threshold"
                        }
                    ),
                ));
                "breaker_opened"
            }
            Transition::HalfOpened => {
                data["trials"] = s.half_open_trials.into();
                fx.push(Effect::Log(
                    LogLevel::INFO,
                    format!(
                        "breaker {key} half-open: letting {} trial task(s) through",
                        s.half_open_trials
                    ),
                ));
                "breaker_half_opened"
            }
            Transition::Closed => {
                data["trials"] = s.half_open_trials.into();
                fx.push(Effect::Log(
                    LogLevel::INFO,
                    format!("breaker {key} closed: every trial succeeded"),
                ));
                "breaker_closed"
            }
        };
        fx.push(Effect::Emit(name, data));
        fx.push(Effect::Metric("breakers_open", Self::open_count(st) as f64));
    }

    // ------------------------------------------------------------------ registry --

    pub(crate) fn agent_spawned(&self, agent: u64, role: &str) {
        let mut st = self.lock();
        st.agents.insert(
            agent,
            AgentRec {
                role: Arc::from(role),
                life: Life::Starting,
            },
        );
    }

    pub(crate) fn agent_state_changed(&self, agent: u64, role: &str, from: &str, to: &str) {
        let mut st = self.lock();
        match Life::parse(to) {
            Some(life) => {
                let rec = st.agents.entry(agent).or_insert_with(|| AgentRec {
                    role: Arc::from(role),
                    life,
                });
                rec.life = life;
            }
            None => {
                // stopped or failed: gone.
                if to == "failed" && from == "draining" && self.settings.healing.enabled {
                    st.heal.draining_failed.insert(agent);
                }
                self.forget_agent(&mut st, agent, role);
            }
        }
    }

    fn forget_agent(&self, st: &mut State, agent: u64, role: &str) {
        let role = st
            .agents
            .remove(&agent)
            .map(|r| r.role)
            .unwrap_or_else(|| Arc::from(role));
        if st.dead.insert(agent, role).is_none() {
            st.dead_order.push_back(agent);
            while st.dead_order.len() > MAX_DEAD {
                if let Some(old) = st.dead_order.pop_front() {
                    st.dead.remove(&old);
                }
            }
        }
        if st.agent_breakers.remove(&agent).is_some() {
            self.rearm(st);
        }
    }

    fn role_of(st: &State, agent: u64) -> Option<Arc<str>> {
        st.agents
            .get(&agent)
            .map(|a| a.role.clone())
            .or_else(|| st.dead.get(&agent).cloned())
    }

    fn live_count(st: &State, role: &str) -> usize {
        st.agents
            .values()
            .filter(|a| &*a.role == role && a.life.live())
            .count()
    }

    // ------------------------------------------------------------------ breakers --

    /// An attempt ended (observer).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attempt_finished(
        &self,
        task: u64,
        role: &str,
        agent: u64,
        attempt: u32,
        status: &str,
        error: &str,
        will_retry: bool,
        now: u64,
        unix: u64,
    ) -> Vec<Effect> {
        let s = &self.settings.breaker;
        let mut fx = Vec::new();
        let mut st = self.lock();
        let mut changed = false;
        if let Some(&(_, failed_at)) = st.avoid.get(&task) {
            if attempt > failed_at || !will_retry {
                st.avoid.remove(&task);
                changed = true;
            }
        }
        if !will_retry {
            st.pinned.remove(&task);
        }
        if s.enabled {
            let ok = status == "succeeded";
            let failed = !ok
                && s.counts(status)
                && !self
                    .settings
                    .rules
                    .iter()
                    .any(|r| !r.count && r.regex.is_match(error));
            if ok || failed {
                // Failures are the agent's first: an agent whose breaker opens takes its
                // outcomes out of its role's window, and while it is not closed its
                // outcomes do not count for the role (only role trials do).
                let mut agent_closed = true;
                let mut blamed: Option<Window> = None;
                if s.per_agent && st.agents.contains_key(&agent) {
                    let b = st
                        .agent_breakers
                        .entry(agent)
                        .or_insert_with(|| Breaker::new(s, now, unix));
                    let t = b.record(s, task, ok, now, unix);
                    agent_closed = b.phase() == Phase::Closed;
                    if let Some(Transition::Opened {
                        reopened: false, ..
                    }) = t
                    {
                        let mut w = b.window().clone();
                        w.remove(now, ok); // the role has not counted this one
                        blamed = Some(w);
                    }
                    if let Some(t) = t {
                        changed = true;
                        self.transition_fx(&st, &mut fx, "agent", role, Some(agent), t);
                    }
                }
                if s.per_role {
                    if !st.role_breakers.contains_key(role) {
                        st.role_breakers
                            .insert(Arc::from(role), Breaker::new(s, now, unix));
                    }
                    // With per-agent breakers, one bad agent is its own breaker's business:
                    // a role opens on failures of at least two of its agents (or of its
                    // only agent).
                    let may_open = if s.per_agent && !ok {
                        let window = s.window_ms;
                        if !st.failing.contains_key(role) {
                            st.failing.insert(Arc::from(role), HashMap::default());
                        }
                        let failers = st.failing.get_mut(role).map_or(0, |failing| {
                            if blamed.is_some() {
                                failing.remove(&agent);
                            } else if agent_closed {
                                failing.insert(agent, now);
                            }
                            failing.retain(|_, at| *at + window > now);
                            failing.len()
                        });
                        failers >= 2 || Self::live_count(&st, role) <= 1
                    } else {
                        true
                    };
                    let t = st.role_breakers.get_mut(role).and_then(|b| {
                        if let Some(w) = &blamed {
                            b.forget(w);
                        }
                        if agent_closed || b.phase() != Phase::Closed {
                            b.record_with(s, task, ok, now, unix, may_open)
                        } else {
                            None
                        }
                    });
                    if let Some(t) = t {
                        changed = true;
                        self.transition_fx(&st, &mut fx, "role", role, None, t);
                    }
                }
            }
        }
        if changed {
            self.rearm(&st);
        }
        fx
    }

    /// The live agents of `role` a task may be moved to: accepting, breaker closed, not
    /// `exclude`, not the agent this task must avoid. Idle agents first, round-robin.
    fn pick_healthy(&self, st: &mut State, role: &str, exclude: u64, task: u64) -> Option<u64> {
        let avoid = st.avoid.get(&task).map(|(a, _)| *a);
        let per_agent = self.settings.breaker.enabled && self.settings.breaker.per_agent;
        let mut idle = Vec::new();
        let mut busy = Vec::new();
        for (&id, a) in &st.agents {
            if id == exclude || Some(id) == avoid || &*a.role != role || !a.life.accepting() {
                continue;
            }
            if per_agent
                && st
                    .agent_breakers
                    .get(&id)
                    .is_some_and(|b| b.phase() != Phase::Closed)
            {
                continue;
            }
            if a.life == Life::Ready {
                idle.push(id);
            } else {
                busy.push(id);
            }
        }
        let pool = if idle.is_empty() {
            &mut busy
        } else {
            &mut idle
        };
        if pool.is_empty() {
            return None;
        }
        pool.sort_unstable();
        st.rr = st.rr.wrapping_add(1);
        Some(pool[st.rr % pool.len()])
    }

    /// The shortest wait until an agent of `role` other than `exclude` may take work again.
    fn next_chance(&self, st: &State, role: &str, exclude: u64, now: u64) -> Option<u64> {
        let s = &self.settings.breaker;
        st.agents
            .iter()
            .filter(|(id, a)| **id != exclude && &*a.role == role && a.life != Life::Draining)
            .map(|(id, _)| {
                st.agent_breakers
                    .get(id)
                    .and_then(|b| b.half_opens_in(s, now))
                    .unwrap_or(s.defer_ms)
            })
            .min()
    }

    /// The breaker gate (decision hook).
    pub(crate) fn before_delegate(
        &self,
        task: u64,
        target: TargetView<'_>,
        agent: u64,
        now: u64,
        unix: u64,
    ) -> (Delegate, Vec<Effect>) {
        if !self.armed.load(Ordering::Acquire) {
            return (Delegate::Continue, Vec::new());
        }
        let s = &self.settings.breaker;
        let mut fx = Vec::new();
        let mut st = self.lock();
        let role = Self::role_of(&st, agent).or_else(|| {
            (target.kind == TargetKind::ROLE && !target.name.is_empty())
                .then(|| Arc::from(target.name))
        });
        let Some(role) = role else {
            return (Delegate::Continue, fx);
        };
        let mut changed = false;

        // The role's breaker: open means no agent of the role gets the task.
        let mut role_trial = false;
        if s.enabled && s.per_role {
            if let Some(b) = st.role_breakers.get_mut(&role) {
                let t = b.poll(s, now, unix);
                let gate = b.gate(s, task, now);
                if let Some(t) = t {
                    changed = true;
                    self.transition_fx(&st, &mut fx, "role", &role, None, t);
                }
                match gate {
                    Gate::Pass => {}
                    Gate::Trial => role_trial = true,
                    Gate::Block(ms) => {
                        st.deferred += 1;
                        if changed {
                            self.rearm(&st);
                        }
                        return (Delegate::Defer { ms }, fx);
                    }
                }
            }
        }

        // The agent's breaker, and the agent a `reroute` rule keeps this task away from.
        let user_pinned = target.kind == TargetKind::AGENT && !st.pinned.contains_key(&task);
        let mut agent_trial = false;
        let mut blocked: Option<u64> = None;
        if s.enabled && s.per_agent {
            if let Some(b) = st.agent_breakers.get_mut(&agent) {
                let t = b.poll(s, now, unix);
                let gate = b.gate(s, task, now);
                if let Some(t) = t {
                    changed = true;
                    self.transition_fx(&st, &mut fx, "agent", &role, Some(agent), t);
                }
                match gate {
                    Gate::Pass => {}
                    Gate::Trial => agent_trial = true,
                    Gate::Block(ms) => blocked = Some(ms),
                }
            }
        }
        let avoid_here = st.avoid.get(&task).is_some_and(|(a, _)| *a == agent);

        let decision = if let Some(wait) = blocked {
            let moved = if user_pinned {
                None
            } else {
                self.pick_healthy(&mut st, &role, agent, task)
            };
            match moved {
                Some(h) => Some(h),
                None => {
                    let sooner = if user_pinned {
                        None
                    } else {
                        self.next_chance(&st, &role, agent, now)
                    };
                    let ms = sooner.map_or(wait, |other| other.min(wait)).max(s.defer_ms);
                    st.deferred += 1;
                    if changed {
                        self.rearm(&st);
                    }
                    return (Delegate::Defer { ms }, fx);
                }
            }
        } else if avoid_here && !user_pinned {
            let moved = self.pick_healthy(&mut st, &role, agent, task);
            if moved.is_none() {
                // Nowhere else to go: run it here rather than hold it back.
                st.avoid.remove(&task);
                st.reroute_unavailable += 1;
                changed = true;
            }
            moved
        } else {
            None
        };

        if role_trial {
            if let Some(b) = st.role_breakers.get_mut(&role) {
                b.admit(task, now);
            }
        }
        let answer = match decision {
            Some(h) => {
                if st.pinned.len() >= MAX_TRACKED_TASKS {
                    st.pinned.clear();
                }
                st.pinned.insert(task, h);
                if st.avoid.remove(&task).is_some() {
                    changed = true;
                }
                st.rerouted += 1;
                Delegate::Reroute {
                    target: Target::agent(h),
                }
            }
            None => {
                if agent_trial {
                    if let Some(b) = st.agent_breakers.get_mut(&agent) {
                        b.admit(task, now);
                    }
                }
                Delegate::Continue
            }
        };
        if changed {
            self.rearm(&st);
        }
        (answer, fx)
    }

    /// Open breakers whose cool-down has passed become half-open (ticker). Returns the
    /// effects and whether a restart is due.
    pub(crate) fn tick(&self, now: u64, unix: u64) -> (Vec<Effect>, bool) {
        let s = &self.settings.breaker;
        let mut fx = Vec::new();
        let mut st = self.lock();
        let mut changes = Vec::new();
        if s.enabled {
            for (id, b) in st.agent_breakers.iter_mut() {
                if let Some(t) = b.poll(s, now, unix) {
                    changes.push((Some(*id), None, t));
                }
            }
            for (role, b) in st.role_breakers.iter_mut() {
                if let Some(t) = b.poll(s, now, unix) {
                    changes.push((None, Some(role.clone()), t));
                }
            }
        }
        if !changes.is_empty() {
            for (agent, role, t) in changes {
                match agent {
                    Some(a) => {
                        let role = Self::role_of(&st, a).unwrap_or_else(|| Arc::from(""));
                        self.transition_fx(&st, &mut fx, "agent", &role, Some(a), t);
                    }
                    None => {
                        let role = role.unwrap_or_else(|| Arc::from(""));
                        self.transition_fx(&st, &mut fx, "role", &role, None, t);
                    }
                }
            }
            self.rearm(&st);
        }
        let due = st.heal.pending.iter().any(|r| r.due <= now);
        (fx, due)
    }

    // --------------------------------------------------------------------- rules --

    /// A failed attempt (decision hook): the first matching rule, else a lost task's retry.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_task_failed(
        &self,
        task: u64,
        target: TargetView<'_>,
        agent: u64,
        attempt: u32,
        error: &str,
        agent_lost: bool,
        now: u64,
    ) -> OnFailure {
        for (i, rule) in self.settings.rules.iter().enumerate() {
            if rule.max_attempts.is_some_and(|m| attempt >= m) || !rule.regex.is_match(error) {
                continue;
            }
            if let Some(h) = self.rule_hits.get(i) {
                h.fetch_add(1, Ordering::Relaxed);
            }
            return match rule.action {
                Action::RetryAfter => OnFailure::RetryAfter { ms: rule.ms },
                Action::GiveUp => OnFailure::GiveUp,
                Action::Reroute => {
                    let mut st = self.lock();
                    if st.avoid.len() >= MAX_TRACKED_TASKS {
                        st.avoid.clear();
                    }
                    st.avoid.insert(task, (agent, attempt));
                    self.armed.store(true, Ordering::Release);
                    OnFailure::RetryAfter { ms: rule.ms }
                }
            };
        }
        let h = &self.settings.healing;
        if h.enabled && h.retry_lost_tasks && agent_lost {
            let mut st = self.lock();
            let role = Self::role_of(&st, agent)
                .or_else(|| (target.kind == TargetKind::ROLE).then(|| Arc::from(target.name)));
            if let Some(role) = role {
                if !self.would_give_up(&mut st, &role, agent, now) {
                    st.lost_retried += 1;
                    return OnFailure::RetryAfter { ms: 0 };
                }
            }
        }
        OnFailure::Default
    }

    // -------------------------------------------------------------- self-healing --

    /// Drops restarts older than the intensity period.
    fn prune_history(&self, st: &mut State, role: &str, now: u64) -> usize {
        let within = self.settings.healing.within_ms;
        match st.heal.history.get_mut(role) {
            Some(h) => {
                while h.front().is_some_and(|t| *t + within <= now) {
                    h.pop_front();
                }
                h.len()
            }
            None => 0,
        }
    }

    /// Restarts of `role` done within the period plus those waiting (except the one for the
    /// failure of `except`).
    fn restarts_counted(&self, st: &mut State, role: &str, except: u64, now: u64) -> usize {
        let done = self.prune_history(st, role, now);
        done + st
            .heal
            .pending
            .iter()
            .filter(|r| &*r.role == role && r.failed_agent != except)
            .count()
    }

    /// Whether the failure of `agent` (of `role`) is not restarted, whether or not the
    /// observer has seen it yet: the role is given up, or it would be by this failure.
    fn would_give_up(&self, st: &mut State, role: &str, agent: u64, now: u64) -> bool {
        st.heal.gave_up.contains_key(role)
            || st.heal.stopping
            || self.restarts_counted(st, role, agent, now)
                >= self.settings.healing.max_restarts as usize
    }

    /// An agent failed (observer): schedule a restart of its role, or give up on the role.
    pub(crate) fn agent_failed(
        &self,
        agent: u64,
        role: &str,
        reason: &str,
        now: u64,
        unix: u64,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let mut st = self.lock();
        self.forget_agent(&mut st, agent, role);
        let h = &self.settings.healing;
        if !h.enabled || st.heal.stopping {
            return fx;
        }
        if st.heal.draining_failed.remove(&agent) {
            fx.push(Effect::Log(
                LogLevel::INFO,
                format!("agent {agent} ({role}) failed while draining: not restarted"),
            ));
            return fx;
        }
        if st.heal.gave_up.contains_key(role) {
            fx.push(Effect::Log(
                LogLevel::WARN,
                format!("agent {agent} ({role}) failed: not restarted (gave up on role `{role}`)"),
            ));
            return fx;
        }
        let role: Arc<str> = Arc::from(role);
        let n = self.restarts_counted(&mut st, &role, agent, now);
        if n >= h.max_restarts as usize {
            let within_s = h.within_ms as f64 / 1000.0;
            st.heal.gave_up.insert(
                role.to_string(),
                GaveUp {
                    restarts: n,
                    failed_agent: agent,
                    unix_ms: unix,
                },
            );
            fx.push(Effect::Emit(
                "restart_gave_up",
                json!({"role": &*role, "restarts": n, "within_s": within_s,
                       "failed_agent": agent, "reason": reason}),
            ));
            fx.push(Effect::Log(
                LogLevel::ERROR,
                format!(
                    "giving up on role `{role}`: agent {agent} failed ({reason}) after {n} restart(s) within {within_s} s; its agents are no longer restarted"
                ),
            ));
            return fx;
        }
        let backoff = (h.backoff_initial_ms as f64 * h.backoff_factor.powi(n.min(64) as i32))
            .min(h.backoff_max_ms as f64) as u64;
        let before = Self::live_count(&st, &role) + 1;
        let target = st
            .heal
            .pending
            .iter()
            .filter(|r| r.role == role)
            .map(|r| r.target)
            .max()
            .unwrap_or(0)
            .max(before);
        fx.push(Effect::Log(
            LogLevel::WARN,
            format!("agent {agent} ({role}) failed ({reason}): restart in {backoff} ms"),
        ));
        st.heal.pending.push(Restart {
            role,
            failed_agent: agent,
            reason: reason.to_string(),
            due: now + backoff,
            target,
            backoff_ms: backoff,
        });
        fx
    }

    /// Carries out the restarts that are due (ticker), with the kernel's health report (JSON)
    /// taken just before: a role is only given an agent if it has fewer live agents (and
    /// spawns of ours on the way) than before the failure.
    pub(crate) fn run_restarts(
        &self,
        now: u64,
        health: &Value,
        spawn: &mut dyn FnMut(&str) -> Result<u64, String>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let mut st = self.lock();
        if st.heal.stopping {
            st.heal.pending.clear();
            return fx;
        }
        // The kernel's view: live agents per role, and every agent (any state) per role.
        let mut live: HashMap<&str, usize> = HashMap::default();
        let mut seen: HashMap<&str, Vec<u64>> = HashMap::default();
        let list = health
            .get("agent_list")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for a in list {
            let (Some(id), Some(role)) = (
                a.get("id").and_then(Value::as_u64),
                a.get("role").and_then(Value::as_str),
            ) else {
                continue;
            };
            let life = a.get("state").and_then(Value::as_str).and_then(Life::parse);
            if life.is_some_and(Life::live) {
                *live.entry(role).or_default() += 1;
            }
            seen.entry(role).or_default().push(id);
            // Reconcile the registry (an observer event may have been dropped).
            match life {
                Some(l) if !st.agents.contains_key(&id) && !st.dead.contains_key(&id) => {
                    st.agents.insert(
                        id,
                        AgentRec {
                            role: Arc::from(role),
                            life: l,
                        },
                    );
                }
                None if st.agents.contains_key(&id) => {
                    self.forget_agent(&mut st, id, role);
                }
                _ => {}
            }
        }
        // Our spawns on the way: those no agent of the role registered after yet.
        let mut tickets = std::mem::take(&mut st.heal.tickets);
        tickets.retain(|t| t.at + TICKET_TTL_MS > now);
        tickets.sort_by_key(|t| t.ticket);
        let mut used: HashSet<u64> = HashSet::default();
        tickets.retain(|t| {
            let served = seen.get(&*t.role).and_then(|ids| {
                ids.iter()
                    .filter(|id| **id > t.ticket && !used.contains(id))
                    .min()
                    .copied()
            });
            match served {
                Some(id) => {
                    used.insert(id);
                    false
                }
                None => true,
            }
        });
        st.heal.tickets = tickets;

        let mut due: Vec<Restart> = Vec::new();
        st.heal.pending.retain(|r| {
            if r.due <= now {
                due.push(r.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|r| r.due);
        for r in due {
            if st.heal.gave_up.contains_key(&*r.role) {
                continue;
            }
            let desired = st
                .heal
                .pending
                .iter()
                .filter(|p| p.role == r.role)
                .map(|p| p.target)
                .max()
                .unwrap_or(0)
                .max(r.target);
            let have = live.get(&*r.role).copied().unwrap_or(0);
            let coming = st.heal.tickets.iter().filter(|t| t.role == r.role).count();
            if have + coming >= desired {
                st.heal.skipped += 1;
                fx.push(Effect::Log(
                    LogLevel::INFO,
                    format!(
                        "not restarting agent {} ({}): the role has {have} live agent(s) and {coming} starting, as many as before the failure",
                        r.failed_agent, r.role
                    ),
                ));
                continue;
            }
            match spawn(&r.role) {
                Ok(ticket) => {
                    st.heal.tickets.push(Ticket {
                        role: r.role.clone(),
                        ticket,
                        at: now,
                    });
                    st.heal
                        .history
                        .entry(r.role.clone())
                        .or_default()
                        .push_back(now);
                    let n = self.prune_history(&mut st, &r.role, now);
                    *st.heal.total.entry(r.role.to_string()).or_default() += 1;
                    fx.push(Effect::Emit(
                        "agent_restarted",
                        json!({"role": &*r.role, "failed_agent": r.failed_agent,
                               "restarts": n, "backoff_ms": r.backoff_ms, "reason": r.reason}),
                    ));
                    fx.push(Effect::Log(
                        LogLevel::INFO,
                        format!(
                            "restarting an agent of role `{}` (agent {} failed; restart {n} within the period, after {} ms)",
                            r.role, r.failed_agent, r.backoff_ms
                        ),
                    ));
                    fx.push(Effect::Metric("agent_restarts", n as f64));
                }
                Err(e) => fx.push(Effect::Log(
                    LogLevel::WARN,
                    format!("cannot restart an agent of role `{}`: {e}", r.role),
                )),
            }
        }
        fx
    }

    /// No more restarts (the kernel shuts down).
    pub(crate) fn stop(&self) {
        let mut st = self.lock();
        st.heal.stopping = true;
        st.heal.pending.clear();
    }

    // -------------------------------------------------------------------- status --

    pub(crate) fn status(&self, now: u64) -> Value {
        let s = &self.settings;
        let st = self.lock();
        let mut breakers = serde_json::Map::new();
        let mut roles: Vec<(&Arc<str>, &Breaker)> = st.role_breakers.iter().collect();
        roles.sort_by(|a, b| a.0.cmp(b.0));
        for (role, b) in roles {
            let mut v = b.status(&s.breaker, now);
            v["scope"] = "role".into();
            v["role"] = (**role).into();
            breakers.insert(role_key(role), v);
        }
        let mut agents: Vec<(&u64, &Breaker)> = st.agent_breakers.iter().collect();
        agents.sort_by_key(|a| *a.0);
        for (id, b) in agents {
            let mut v = b.status(&s.breaker, now);
            v["scope"] = "agent".into();
            v["agent"] = (*id).into();
            if let Some(r) = st.agents.get(id) {
                v["role"] = (*r.role).into();
            }
            breakers.insert(agent_key(*id), v);
        }
        let rules: Vec<Value> = s
            .rules
            .iter()
            .zip(&self.rule_hits)
            .map(|(r, h)| {
                let mut v = json!({"pattern": r.pattern, "action": r.action.name(),
                                   "hits": h.load(Ordering::Relaxed)});
                if r.action != Action::GiveUp {
                    v["ms"] = r.ms.into();
                }
                if let Some(m) = r.max_attempts {
                    v["max_attempts"] = m.into();
                }
                if !r.count {
                    v["count"] = false.into();
                }
                v
            })
            .collect();
        let gave_up: Vec<Value> = st
            .heal
            .gave_up
            .iter()
            .map(|(role, g)| {
                json!({"role": role, "restarts": g.restarts, "failed_agent": g.failed_agent,
                       "at_unix_ms": g.unix_ms})
            })
            .collect();
        json!({
            "breakers": breakers,
            "breakers_open": Self::open_count(&st),
            "breakers_opened_total": self.opened_total.load(Ordering::Relaxed),
            "rerouted": st.rerouted,
            "deferred": st.deferred,
            "reroute_unavailable": st.reroute_unavailable,
            "restarts": st.heal.total,
            "restarts_pending": st.heal.pending.len(),
            "restarts_skipped": st.heal.skipped,
            "gave_up": gave_up,
            "lost_tasks_retried": st.lost_retried,
            "rules": rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: TargetView<'static> = TargetView {
        kind: TargetKind::ROLE,
        name: "work",
    };

    fn engine(json: &str) -> Engine {
        let e = Engine::new(Settings::from_json(json).expect("config"));
        for a in [1, 2, 3] {
            e.agent_spawned(a, "work");
            e.agent_state_changed(a, "work", "starting", "ready");
        }
        e
    }

    fn names(fx: &[Effect]) -> Vec<&'static str> {
        fx.iter()
            .filter_map(|f| match f {
                Effect::Emit(n, _) => Some(*n),
                _ => None,
            })
            .collect()
    }

    fn fail(e: &Engine, agent: u64, task: u64, now: u64) -> Vec<Effect> {
        e.attempt_finished(task, "work", agent, 1, "failed", "boom", false, now, 0)
    }

    const AGENT_ONLY: &str = r#"{"breaker": {"per_role": false, "min_calls": 3,
        "cool_down_ms": 1000, "half_open_trials": 2, "defer_ms": 50}}"#;

    #[test]
    fn an_open_agent_breaker_reroutes_to_a_healthy_agent_then_half_opens_and_closes() {
        let e = engine(AGENT_ONLY);
        assert!(!e.armed());
        assert_eq!(e.before_delegate(1, ROLE, 1, 0, 0).0, Delegate::Continue);
        fail(&e, 1, 10, 1);
        fail(&e, 1, 11, 2);
        let fx = fail(&e, 1, 12, 3);
        assert_eq!(names(&fx), ["breaker_opened"]);
        assert!(e.armed());
        for t in 0..4 {
            match e.before_delegate(100 + t, ROLE, 1, 10, 0).0 {
                Delegate::Reroute { target } => {
                    assert_eq!(target.kind, TargetKind::AGENT);
                    assert!(target.agent == 2 || target.agent == 3, "{target:?}");
                }
                other => panic!("expected a reroute, got {other:?}"),
            }
        }
        // The rerouted task, now pinned to agent 2, goes ahead there.
        let pinned = TargetView {
            kind: TargetKind::AGENT,
            name: "",
        };
        assert_eq!(
            e.before_delegate(100, pinned, 2, 11, 0).0,
            Delegate::Continue
        );
        // A task someone pinned to agent 1 itself is deferred, never moved.
        assert_eq!(
            e.before_delegate(200, pinned, 1, 12, 0).0,
            Delegate::Defer { ms: 991 }
        );
        // After the cool-down: two trials on agent 1, then rerouting again until they end.
        let (d, fx) = e.before_delegate(300, ROLE, 1, 1003, 0);
        assert_eq!(
            (d, names(&fx)),
            (Delegate::Continue, vec!["breaker_half_opened"])
        );
        assert_eq!(
            e.before_delegate(301, ROLE, 1, 1004, 0).0,
            Delegate::Continue
        );
        assert!(matches!(
            e.before_delegate(302, ROLE, 1, 1005, 0).0,
            Delegate::Reroute { .. }
        ));
        assert!(e
            .attempt_finished(300, "work", 1, 1, "succeeded", "", false, 1100, 0)
            .is_empty());
        let fx = e.attempt_finished(301, "work", 1, 1, "succeeded", "", false, 1200, 0);
        assert_eq!(names(&fx), ["breaker_closed"]);
        assert!(!e.armed(), "the fast path is back");
        assert_eq!(e.status(1200)["rerouted"], 5);
    }

    #[test]
    fn one_bad_agent_trips_its_own_breaker_not_its_roles() {
        let e = engine(r#"{"breaker": {"min_calls": 3, "cool_down_ms": 1000}}"#);
        // Agent 1 fails from the start, before the others have finished anything.
        fail(&e, 1, 1, 0);
        fail(&e, 1, 2, 1);
        let fx = fail(&e, 1, 3, 2);
        assert_eq!(names(&fx), ["breaker_opened"]);
        let st = e.status(3);
        assert_eq!(st["breakers"]["agent:1"]["state"], "open");
        assert_eq!(st["breakers"]["role:work"]["state"], "closed");
        assert_eq!(st["breakers"]["role:work"]["calls"], 0, "{st}");
        // Agent 2 fails alone, more than half of the role's attempts, before its own
        // breaker trips: the role stays closed.
        let e2 = engine(r#"{"breaker": {"min_calls": 4, "cool_down_ms": 1000}}"#);
        fail(&e2, 2, 1, 0);
        fail(&e2, 2, 2, 0);
        e2.attempt_finished(3, "work", 1, 1, "succeeded", "", false, 0, 0);
        assert!(fail(&e2, 2, 4, 0).is_empty());
        assert_eq!(e2.status(0)["breakers"]["role:work"]["failure_rate"], 0.75);
        assert_eq!(e2.status(0)["breakers"]["role:work"]["state"], "closed");
        // While it is open its late outcomes do not count for the role either.
        fail(&e, 1, 4, 4);
        e.attempt_finished(5, "work", 2, 1, "succeeded", "", false, 5, 0);
        assert_eq!(e.status(6)["breakers"]["role:work"]["calls"], 1);
        // Failures spread over the role's agents still trip the role.
        assert!(fail(&e, 2, 6, 7).is_empty());
        let fx = fail(&e, 3, 7, 8);
        assert_eq!(names(&fx), ["breaker_opened"]);
        assert!(fx
            .iter()
            .any(|f| matches!(f, Effect::Emit(_, d) if d["key"] == "role:work")));
    }

    #[test]
    fn no_healthy_agent_defers() {
        let e = engine(AGENT_ONLY);
        for a in [1, 2, 3] {
            for t in 0..3 {
                fail(&e, a, a * 10 + t, 100 * a);
            }
        }
        // Agent 3 opened last (at 300): 1 half-opens first, at 1100.
        assert_eq!(
            e.before_delegate(1, ROLE, 3, 400, 0).0,
            Delegate::Defer { ms: 700 }
        );
        assert_eq!(e.status(400)["deferred"], 1);
    }

    #[test]
    fn an_open_role_breaker_defers_until_it_half_opens() {
        let e = engine(
            r#"{"breaker": {"per_agent": false, "min_calls": 4, "cool_down_ms": 2000,
                "half_open_trials": 1}}"#,
        );
        fail(&e, 1, 1, 0);
        e.attempt_finished(2, "work", 2, 1, "succeeded", "", false, 0, 0);
        fail(&e, 2, 3, 0);
        let fx = fail(&e, 3, 4, 0);
        assert_eq!(names(&fx), ["breaker_opened"]);
        assert_eq!(
            e.before_delegate(5, ROLE, 2, 500, 0).0,
            Delegate::Defer { ms: 1500 }
        );
        let (fx, _) = e.tick(2000, 0);
        assert_eq!(names(&fx), ["breaker_half_opened"]);
        assert_eq!(e.before_delegate(5, ROLE, 2, 2001, 0).0, Delegate::Continue);
        assert_eq!(
            e.before_delegate(6, ROLE, 3, 2002, 0).0,
            Delegate::Defer { ms: 200 }
        );
        let fx = e.attempt_finished(5, "work", 2, 1, "succeeded", "", false, 2100, 0);
        assert_eq!(names(&fx), ["breaker_closed"]);
        assert_eq!(e.before_delegate(6, ROLE, 3, 2101, 0).0, Delegate::Continue);
    }

    #[test]
    fn rules_decide_in_order_and_reroute_keeps_the_retry_off_the_agent() {
        let e = engine(
            r#"{"breaker": {"enabled": false},
                "rules": [{"pattern": "(?i)rate limit", "action": "retry_after", "ms": 500, "max_attempts": 3},
                          {"pattern": "fatal", "action": "give_up"},
                          {"pattern": "oom", "action": "reroute", "ms": 5}]}"#,
        );
        let ask = |err: &str, attempt: u32, agent: u64| {
            e.on_task_failed(7, ROLE, agent, attempt, err, false, 0)
        };
        assert_eq!(
            ask("Rate Limit hit", 1, 1),
            OnFailure::RetryAfter { ms: 500 }
        );
        assert_eq!(
            ask("rate limit", 3, 1),
            OnFailure::Default,
            "past max_attempts"
        );
        assert_eq!(ask("fatal: no", 1, 1), OnFailure::GiveUp);
        assert_eq!(ask("something else", 1, 1), OnFailure::Default);
        assert!(!e.armed());
        assert_eq!(ask("oom killed", 1, 2), OnFailure::RetryAfter { ms: 5 });
        assert!(e.armed());
        // Another task on agent 2 is not affected; task 7 on agent 2 is moved.
        assert_eq!(e.before_delegate(8, ROLE, 2, 1, 0).0, Delegate::Continue);
        e.attempt_finished(7, "work", 2, 1, "failed", "oom killed", true, 1, 0);
        match e.before_delegate(7, ROLE, 2, 2, 0).0 {
            Delegate::Reroute { target } => assert_ne!(target.agent, 2),
            other => panic!("expected a reroute, got {other:?}"),
        }
        assert!(!e.armed(), "done with that task");
        let st = e.status(3);
        assert_eq!(st["rules"][0]["hits"], 1);
        assert_eq!(st["rules"][2]["hits"], 1);
    }

    fn health(agents: &[(u64, &str)]) -> Value {
        let list: Vec<Value> = agents
            .iter()
            .map(|(id, state)| json!({"id": id, "role": "work", "state": state}))
            .collect();
        json!({ "agent_list": list })
    }

    #[test]
    fn a_failed_agent_is_restarted_after_its_backoff_unless_the_role_is_back_to_strength() {
        let e = engine(
            r#"{"self_healing": {"backoff_initial_ms": 100, "backoff_factor": 2,
                "max_restarts": 2, "within_s": 10}}"#,
        );
        let spawned = std::cell::RefCell::new(Vec::new());
        let next = std::cell::Cell::new(10);
        let mut spawn = |role: &str| {
            spawned.borrow_mut().push(role.to_string());
            next.set(next.get() + 1);
            Ok(next.get())
        };
        e.agent_state_changed(1, "work", "busy", "failed");
        let fx = e.agent_failed(1, "work", "crashed", 0, 0);
        assert!(names(&fx).is_empty());
        let (_, due) = e.tick(50, 0);
        assert!(!due);
        let (_, due) = e.tick(100, 0);
        assert!(due);
        let h = health(&[(2, "ready"), (3, "busy")]);
        let fx = e.run_restarts(100, &h, &mut spawn);
        assert_eq!(names(&fx), ["agent_restarted"]);
        assert_eq!(*spawned.borrow(), ["work"]);

        // The new agent (12) crashes: the second restart waits 200 ms.
        e.agent_spawned(12, "work");
        e.agent_state_changed(12, "work", "starting", "failed");
        e.agent_failed(12, "work", "crashed", 200, 0);
        assert!(!e.tick(399, 0).1 && e.tick(400, 0).1);
        // Meanwhile someone else replaced it: no restart.
        let h = health(&[(2, "ready"), (3, "busy"), (12, "failed"), (13, "starting")]);
        let fx = e.run_restarts(400, &h, &mut spawn);
        assert!(names(&fx).is_empty());
        assert_eq!(spawned.borrow().len(), 1);
        assert_eq!(e.status(400)["restarts_skipped"], 1);
    }

    #[test]
    fn too_many_restarts_within_the_period_give_up_on_the_role() {
        let e = engine(
            r#"{"self_healing": {"backoff_initial_ms": 10, "max_restarts": 2, "within_s": 10}}"#,
        );
        let next = std::cell::Cell::new(100);
        let mut spawn = |_: &str| {
            next.set(next.get() + 1);
            Ok(next.get())
        };
        let mut now = 0;
        let mut agent = 1;
        for _ in 0..2 {
            e.agent_state_changed(agent, "work", "busy", "failed");
            e.agent_failed(agent, "work", "crashed", now, 0);
            // The decision hook may run before or after the observer saw the failure.
            assert_eq!(
                e.on_task_failed(1, ROLE, agent, 1, "lost", true, now),
                OnFailure::RetryAfter { ms: 0 },
                "a lost task is retried while the role is restarted"
            );
            now += 1000;
            let h = health(&[(2, "ready"), (3, "ready"), (agent, "failed")]);
            assert_eq!(
                names(&e.run_restarts(now, &h, &mut spawn)),
                ["agent_restarted"]
            );
            agent = next.get() + 1; // the agent's id comes after the spawn's ticket
            e.agent_spawned(agent, "work");
        }
        e.agent_state_changed(agent, "work", "busy", "failed");
        assert_eq!(
            e.on_task_failed(1, ROLE, agent, 3, "lost", true, now),
            OnFailure::Default,
            "no more restarts: the task's own policy"
        );
        let fx = e.agent_failed(agent, "work", "crashed", now, 0);
        assert_eq!(names(&fx), ["restart_gave_up"]);
        assert_eq!(
            e.on_task_failed(1, ROLE, agent, 3, "lost", true, now),
            OnFailure::Default,
            "the same answer once the failure was seen"
        );
        let st = e.status(now);
        assert_eq!(st["gave_up"][0]["role"], "work");
        assert_eq!(st["restarts"]["work"], 2);
        // Later failures of the role are not restarted either; other roles still are.
        e.agent_failed(2, "work", "crashed", now, 0);
        e.agent_spawned(50, "other");
        e.agent_failed(50, "other", "crashed", now, 0);
        assert_eq!(e.status(now)["restarts_pending"], 1);
    }

    #[test]
    fn restarts_wait_for_the_intensity_period_to_forget_old_ones() {
        let e = engine(
            r#"{"self_healing": {"backoff_initial_ms": 10, "max_restarts": 1, "within_s": 1}}"#,
        );
        let mut spawn = |_: &str| Ok(100);
        e.agent_failed(1, "work", "crashed", 0, 0);
        e.run_restarts(10, &health(&[(2, "ready")]), &mut spawn);
        // 1.5 s later the first restart is out of the period: this one is restarted too.
        let fx = e.agent_failed(2, "work", "crashed", 1500, 0);
        assert!(names(&fx).is_empty());
        assert_eq!(e.status(1500)["restarts_pending"], 1);
    }

    #[test]
    fn agents_that_stop_or_fail_while_draining_are_not_restarted() {
        let e = engine("{}");
        e.agent_state_changed(1, "work", "ready", "stopped");
        e.agent_state_changed(2, "work", "ready", "draining");
        e.agent_state_changed(2, "work", "draining", "failed");
        e.agent_failed(2, "work", "crashed", 0, 0);
        assert_eq!(e.status(0)["restarts_pending"], 0);
    }
}
