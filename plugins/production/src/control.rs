//! The production plugin's brain, free of I/O: it keeps the agents and the SLA windows of
//! the managed roles, and each call answers with the actions to take (spawn, retire, emit),
//! which the plugin then performs through its `PluginContext`. Time comes in as an argument,
//! so the unit tests drive it with a fake clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{RoleSettings, Settings};
use crate::window::{Window, WindowStats};

/// A spawn asked for but never seen is forgotten after this long.
const PENDING_SPAWN_TTL: Duration = Duration::from_secs(30);
/// Agents that fail before they ever got ready are replaced this many times in a row at most
/// (a pool whose agents cannot start must not spawn forever).
const MAX_START_FAILURES: u32 = 3;
/// Known agents kept (for the failure decision) before the dead ones are pruned.
const KNOWN_CAP: usize = 4096;

/// What the plugin must do after a call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Spawn one agent of the role.
    Spawn {
        /// The role.
        role: String,
    },
    /// Shut an idle agent down, gracefully.
    Retire {
        /// Its role.
        role: String,
        /// The agent.
        agent: u64,
    },
    /// Emit a plugin event.
    Emit {
        /// The event's name.
        name: &'static str,
        /// Its data.
        data: Value,
    },
}

fn emit(name: &'static str, data: Value) -> Action {
    Action::Emit { name, data }
}

/// Where an agent is, as far as scaling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Starting,
    Ready,
    Busy,
    Draining,
    /// Stopped or failed (kept until its failure is handled).
    Gone,
}

impl St {
    fn parse(s: &str) -> Option<St> {
        Some(match s {
            "starting" => St::Starting,
            "ready" => St::Ready,
            "busy" => St::Busy,
            "draining" => St::Draining,
            "stopped" | "failed" => St::Gone,
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct AgentRec {
    role: String,
    state: St,
    /// When it entered `state` (for `Ready`: since when it is idle).
    since: Instant,
    ever_ready: bool,
    /// Asked to shut down by this plugin.
    retiring: bool,
    /// Whether it counted as live when its change to `failed` was seen.
    live_at_failure: bool,
}

impl AgentRec {
    fn live(&self) -> bool {
        matches!(self.state, St::Starting | St::Ready | St::Busy) && !self.retiring
    }
}

/// One metric's breach state.
#[derive(Debug, Default)]
struct Breach {
    since: Option<Instant>,
}

#[derive(Debug)]
struct RoleState {
    cfg: RoleSettings,
    window: Window,
    last: WindowStats,
    queue_depth: u64,
    oldest_wait_ms: f64,
    /// No spare capacity: tasks queued, or every slot in use (false when the health
    /// report could not be read: no scale-up on a guess).
    saturated: bool,
    latency: Breach,
    queue_wait: Breach,
    breach_since: Option<Instant>,
    /// Spawns asked for and not yet seen, with when they were asked.
    pending: VecDeque<Instant>,
    last_step: Option<Instant>,
    last_retire: Option<Instant>,
    start_failures: u32,
    breaches: u64,
    scaled_up: u64,
    scaled_down: u64,
    failovers: u64,
    rerouted: u64,
}

/// A parsed view of the kernel's health report: what the ticker needs of it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct HealthView {
    /// Per role: queue depth, oldest wait (ms), tasks in flight, capacity.
    pub(crate) roles: HashMap<String, RoleView>,
    /// Every agent: id, role, state name.
    pub(crate) agents: Vec<(u64, String, String)>,
}

/// One role of the health report.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct RoleView {
    /// Tasks waiting.
    pub(crate) queue_depth: u64,
    /// The longest wait among them, in milliseconds.
    pub(crate) oldest_wait_ms: f64,
    /// Tasks in flight.
    pub(crate) in_flight: u64,
    /// Slots of the live agents.
    pub(crate) capacity: u64,
}

impl HealthView {
    /// Reads the kernel's health JSON (`roles.<r>.{queue_depth, oldest_wait_ms, in_flight,
    /// capacity}`, `agent_list[].{id, role, state}`); None if it has no `roles` object.
    pub(crate) fn parse(json: &str) -> Option<HealthView> {
        let v: Value = serde_json::from_str(json).ok()?;
        // `{}` when the kernel is gone: no report.
        v.get("roles")?.as_object()?;
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let roles = v
            .get("roles")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(name, r)| {
                        (
                            name.clone(),
                            RoleView {
                                queue_depth: u(r, "queue_depth"),
                                oldest_wait_ms: r
                                    .get("oldest_wait_ms")
                                    .and_then(Value::as_f64)
                                    .unwrap_or(0.0),
                                in_flight: u(r, "in_flight"),
                                capacity: u(r, "capacity"),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let agents = v
            .get("agent_list")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|a| {
                        let id = a.get("id")?.as_u64()?;
                        let role = a.get("role")?.as_str()?.to_string();
                        // `"ready"`, or `{"failed": "reason"}`.
                        let state = match a.get("state")? {
                            Value::String(s) => s.clone(),
                            Value::Object(o) => o.keys().next()?.clone(),
                            _ => return None,
                        };
                        Some((id, role, state))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(HealthView { roles, agents })
    }
}

/// The state of every managed role and its agents.
#[derive(Debug)]
pub(crate) struct Controller {
    settings: Settings,
    roles: BTreeMap<String, RoleState>,
    agents: HashMap<u64, AgentRec>,
    /// Every agent of a managed role seen so far: its role, and whether it is gone.
    known: HashMap<u64, (String, bool)>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Controller {
    /// A controller for `settings`, its windows starting at `now`.
    pub(crate) fn new(settings: Settings, now: Instant) -> Self {
        let roles = settings
            .roles
            .iter()
            .map(|(name, cfg)| {
                (
                    name.clone(),
                    RoleState {
                        cfg: cfg.clone(),
                        window: Window::new(settings.window, now),
                        last: WindowStats::default(),
                        queue_depth: 0,
                        oldest_wait_ms: 0.0,
                        saturated: false,
                        latency: Breach::default(),
                        queue_wait: Breach::default(),
                        breach_since: None,
                        pending: VecDeque::new(),
                        last_step: None,
                        last_retire: None,
                        start_failures: 0,
                        breaches: 0,
                        scaled_up: 0,
                        scaled_down: 0,
                        failovers: 0,
                        rerouted: 0,
                    },
                )
            })
            .collect();
        Controller {
            settings,
            roles,
            agents: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// Whether `role` is managed.
    pub(crate) fn manages(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// An attempt of `role` finished.
    pub(crate) fn attempt_finished(
        &mut self,
        role: &str,
        run_ms: f64,
        queue_ms: f64,
        now: Instant,
    ) {
        if let Some(r) = self.roles.get_mut(role) {
            r.window.record(now, run_ms, queue_ms);
        }
    }

    /// Live agents of a role (starting, ready or busy, and not being retired).
    fn live(&self, role: &str) -> u64 {
        self.agents
            .values()
            .filter(|a| a.role == role && a.live())
            .count() as u64
    }

    /// An agent of a managed role appeared (from its event, or from the health report when
    /// the event was lost): it answers one pending spawn of its role.
    fn adopt(&mut self, agent: u64, role: &str, state: St, now: Instant) {
        if self.known.contains_key(&agent) {
            return;
        }
        let Some(r) = self.roles.get_mut(role) else {
            return;
        };
        r.pending.pop_front();
        if self.known.len() >= KNOWN_CAP {
            let agents = &self.agents;
            self.known
                .retain(|id, (_, gone)| !*gone || agents.contains_key(id));
        }
        self.known.insert(agent, (role.to_string(), false));
        self.agents.insert(
            agent,
            AgentRec {
                role: role.to_string(),
                state,
                since: now,
                ever_ready: state == St::Ready || state == St::Busy,
                retiring: false,
                live_at_failure: false,
            },
        );
    }

    fn bury(&mut self, agent: u64) -> Option<AgentRec> {
        if let Some(k) = self.known.get_mut(&agent) {
            k.1 = true;
        }
        self.agents.remove(&agent)
    }

    /// An agent was spawned.
    pub(crate) fn agent_spawned(&mut self, agent: u64, role: &str, now: Instant) {
        self.adopt(agent, role, St::Starting, now);
    }

    /// An agent changed state (`to`: `starting`, `ready`, `busy`, `draining`, `stopped`,
    /// `failed`).
    pub(crate) fn agent_state(&mut self, agent: u64, role: &str, to: &str, now: Instant) {
        let Some(to) = St::parse(to) else { return };
        if !self.manages(role) {
            return;
        }
        match self.known.get(&agent) {
            Some((_, true)) => return,
            Some(_) => {}
            None => self.adopt(agent, role, to, now),
        }
        if to == St::Gone {
            // `failed` comes just before `on_agent_failed`, which handles it; `stopped` ends it.
            // (Once only: the health report may have shown it gone first.)
            if let Some(a) = self.agents.get_mut(&agent).filter(|a| a.state != St::Gone) {
                a.live_at_failure = a.live();
                a.state = St::Gone;
                a.since = now;
            }
            return;
        }
        if let Some(a) = self.agents.get_mut(&agent) {
            if a.state != to {
                a.state = to;
                a.since = now;
            }
            if to == St::Ready || to == St::Busy {
                a.ever_ready = true;
                if let Some(r) = self.roles.get_mut(role) {
                    r.start_failures = 0;
                }
            }
        }
    }

    /// An agent stopped (a clean end: no failover).
    pub(crate) fn agent_stopped(&mut self, agent: u64) {
        self.bury(agent);
    }

    /// An agent failed: with failover on for its role, a replacement is spawned unless the
    /// agent was no longer counted (being retired) or the role is at its maximum.
    pub(crate) fn agent_failed(
        &mut self,
        agent: u64,
        role: &str,
        reason: &str,
        in_flight: u32,
        now: Instant,
    ) -> Vec<Action> {
        if !self.manages(role) {
            return Vec::new();
        }
        let rec = self.bury(agent);
        let was_live = rec.as_ref().is_none_or(|a| {
            if a.state == St::Gone {
                a.live_at_failure
            } else {
                a.live()
            }
        });
        let never_ready = rec.as_ref().is_some_and(|a| !a.ever_ready);
        let live = self.live(role);
        let Some(r) = self.roles.get_mut(role) else {
            return Vec::new();
        };
        if !r.cfg.failover {
            return Vec::new();
        }
        let total = live + r.pending.len() as u64;
        let before = total + u64::from(was_live);
        let mut why_not = None;
        if !was_live {
            why_not = Some("the agent was being retired");
        } else if total >= u64::from(r.cfg.max_agents) {
            why_not = Some("the role is at max_agents");
        } else if never_ready && r.start_failures >= MAX_START_FAILURES {
            why_not = Some("too many agents of this role failed to start in a row");
        }
        if never_ready {
            r.start_failures += 1;
        }
        r.failovers += 1;
        let replaced = why_not.is_none();
        if replaced {
            r.pending.push_back(now);
        }
        let mut data = json!({
            "role": role,
            "failed_agent": agent,
            "reason": reason,
            "in_flight": in_flight,
            "replaced": replaced,
            "agents_before": before,
            "agents_after": total + u64::from(replaced),
        });
        if let (Some(why), Some(o)) = (why_not, data.as_object_mut()) {
            o.insert("not_replaced_because".into(), json!(why));
        }
        // The event first: the replacement's `agent_spawned` comes after it.
        let mut actions = vec![emit("failover", data)];
        if replaced {
            actions.push(Action::Spawn {
                role: role.to_string(),
            });
        }
        actions
    }

    /// The failure decision: an attempt lost its agent. True (retry at once, so the work
    /// goes to a live agent) when the agent's role, or else the task's target role, is
    /// managed with failover on.
    pub(crate) fn reroute_lost(&mut self, agent: u64, target_role: Option<&str>) -> bool {
        let role = self
            .known
            .get(&agent)
            .map(|(r, _)| r.clone())
            .or_else(|| target_role.map(str::to_string));
        match role.and_then(|r| self.roles.get_mut(&r)) {
            Some(r) if r.cfg.failover => {
                r.rerouted += 1;
                true
            }
            _ => false,
        }
    }

    /// A spawn this controller asked for was refused at once.
    pub(crate) fn spawn_refused(&mut self, role: &str) {
        if let Some(r) = self.roles.get_mut(role) {
            r.pending.pop_back();
        }
    }

    /// A retirement this controller asked for was refused at once.
    pub(crate) fn retire_refused(&mut self, agent: u64) {
        if let Some(a) = self.agents.get_mut(&agent) {
            a.retiring = false;
        }
    }

    /// Brings the agents in line with the health report (events can be lost when the
    /// plugin falls behind): agents never seen are adopted, agents the report shows gone are
    /// buried (a failure is left to `agent_failed` for a moment, so that its failover runs).
    fn reconcile(&mut self, h: &HealthView, now: Instant) {
        for (id, role, state) in &h.agents {
            if !self.manages(role) {
                continue;
            }
            let Some(st) = St::parse(state) else { continue };
            match (self.known.get(id), st) {
                (None, St::Gone) => {
                    self.known.insert(*id, (role.clone(), true));
                }
                (None, st) => self.adopt(*id, role, st, now),
                (Some((_, false)), St::Gone) => {
                    let stale = self.agents.get(id).is_none_or(|a| {
                        a.state == St::Gone
                            && now.saturating_duration_since(a.since) > Duration::from_secs(5)
                    });
                    if state == "stopped" || stale {
                        self.bury(*id);
                    } else if let Some(a) = self.agents.get_mut(id) {
                        if a.state != St::Gone {
                            a.live_at_failure = a.live();
                            a.state = St::Gone;
                            a.since = now;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// One check: update the windows' figures, emit breach and recovery transitions, and
    /// decide scale-ups and retirements.
    pub(crate) fn tick(&mut self, health: Option<&HealthView>, now: Instant) -> Vec<Action> {
        if let Some(h) = health {
            self.reconcile(h, now);
        }
        let mut actions = Vec::new();
        let names: Vec<String> = self.roles.keys().cloned().collect();
        let window_s = self.settings.window.as_secs_f64();
        for name in names {
            let live = self.live(&name);
            // Idle agents of the role, longest idle first.
            let mut idle: Vec<(u64, Instant)> = self
                .agents
                .iter()
                .filter(|(_, a)| a.role == name && a.live() && a.state == St::Ready)
                .map(|(id, a)| (*id, a.since))
                .collect();
            idle.sort_by_key(|(id, since)| (*since, *id));
            let min_samples = self.settings.min_samples;
            let check = self.settings.check_interval;
            let Some(r) = self.roles.get_mut(&name) else {
                continue;
            };
            while r
                .pending
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > PENDING_SPAWN_TTL)
            {
                r.pending.pop_front();
            }
            let view = health.and_then(|h| h.roles.get(&name).copied());
            let v = view.unwrap_or_default();
            r.queue_depth = v.queue_depth;
            r.oldest_wait_ms = v.oldest_wait_ms;
            r.saturated = match (health, view) {
                (Some(_), Some(v)) => v.queue_depth > 0 || v.in_flight >= v.capacity,
                // A role the report does not list has no agent and no queue yet.
                (Some(_), None) => false,
                (None, _) => false,
            };
            r.last = r.window.stats(now);
            let enough = r.last.samples >= min_samples;
            let latency = r.last.p95_latency_ms.filter(|_| enough);
            let window_wait = r.last.p95_queue_wait_ms.filter(|_| enough);
            let waiting = (r.oldest_wait_ms > 0.0).then_some(r.oldest_wait_ms);
            let queue_wait = match (window_wait, waiting) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let metrics = [
                ("latency", r.cfg.p95_latency_ms, latency),
                ("queue_wait", r.cfg.p95_queue_wait_ms, queue_wait),
            ];
            for (metric, threshold, value) in metrics {
                let Some(threshold) = threshold else { continue };
                let over = value.is_some_and(|v| v > threshold);
                let state = if metric == "latency" {
                    &mut r.latency
                } else {
                    &mut r.queue_wait
                };
                match (state.since, over) {
                    (None, true) => {
                        state.since = Some(now);
                        r.breaches += 1;
                        actions.push(emit(
                            "sla_breach",
                            json!({
                                "role": name,
                                "metric": metric,
                                "p95_ms": value.map(round),
                                "threshold_ms": threshold,
                                "window_s": window_s,
                                "samples": r.last.samples,
                                "queue_depth": r.queue_depth,
                            }),
                        ));
                    }
                    (Some(since), false) => {
                        state.since = None;
                        actions.push(emit(
                            "sla_recovered",
                            json!({
                                "role": name,
                                "metric": metric,
                                "p95_ms": value.map(round),
                                "threshold_ms": threshold,
                                "breach_ms": ms(now.saturating_duration_since(since)),
                            }),
                        ));
                    }
                    _ => {}
                }
            }
            let breached = r.latency.since.is_some() || r.queue_wait.since.is_some();
            if !breached {
                r.breach_since = None;
            } else if r.breach_since.is_none() {
                r.breach_since = Some(now);
            }
            let pending = r.pending.len() as u64;
            let total = live + pending;
            let max = u64::from(r.cfg.max_agents);
            let step_gap = r.cfg.breach_for.max(check);
            if let Some(since) = r.breach_since {
                let sustained = now.saturating_duration_since(since) >= r.cfg.breach_for;
                let spaced = r
                    .last_step
                    .is_none_or(|t| now.saturating_duration_since(t) >= step_gap);
                if sustained && spaced && pending == 0 && total < max && r.saturated {
                    let n = u64::from(r.cfg.scale_up_step).min(max - total);
                    r.last_step = Some(now);
                    r.scaled_up += n;
                    let mut why = Vec::new();
                    if r.latency.since.is_some() {
                        why.push(format!(
                            "latency p95 {:.0} ms > {:.0} ms",
                            latency.unwrap_or(0.0),
                            r.cfg.p95_latency_ms.unwrap_or(0.0)
                        ));
                    }
                    if r.queue_wait.since.is_some() {
                        why.push(format!(
                            "queue wait p95 {:.0} ms > {:.0} ms",
                            queue_wait.unwrap_or(0.0),
                            r.cfg.p95_queue_wait_ms.unwrap_or(0.0)
                        ));
                    }
                    actions.push(emit(
                        "scaled_up",
                        json!({
                            "role": name,
                            "agents_before": total,
                            "agents_after": total + n,
                            "reason": why.join(", "),
                            "breach_ms": ms(now.saturating_duration_since(since)),
                        }),
                    ));
                    // After the event, so that the new agents' events come after it.
                    for _ in 0..n {
                        r.pending.push_back(now);
                        actions.push(Action::Spawn { role: name.clone() });
                    }
                }
            } else if total > u64::from(r.cfg.min_agents)
                && r.last_retire
                    .is_none_or(|t| now.saturating_duration_since(t) >= r.cfg.cool_down)
            {
                let cool = r.cfg.cool_down;
                if let Some((agent, since)) = idle
                    .into_iter()
                    .find(|(_, since)| now.saturating_duration_since(*since) >= cool)
                {
                    r.last_retire = Some(now);
                    r.scaled_down += 1;
                    actions.push(emit(
                        "scaled_down",
                        json!({
                            "role": name,
                            "agent": agent,
                            "agents_before": total,
                            "agents_after": total - 1,
                            "idle_ms": ms(now.saturating_duration_since(since)),
                        }),
                    ));
                    actions.push(Action::Retire {
                        role: name.clone(),
                        agent,
                    });
                    if let Some(a) = self.agents.get_mut(&agent) {
                        a.retiring = true;
                    }
                }
            }
        }
        actions
    }

    /// The status JSON: each role's SLA state, figures, thresholds, agents and counters.
    /// The window figures are computed now; the SLA state, queue figures and agents are
    /// those of the last check and events.
    pub(crate) fn status(&mut self, now: Instant) -> Value {
        let live: HashMap<String, u64> = self
            .roles
            .keys()
            .map(|name| (name.clone(), self.live(name)))
            .collect();
        let roles: serde_json::Map<String, Value> = self
            .roles
            .iter_mut()
            .map(|(name, r)| {
                let fresh = r.window.stats(now);
                let mut breached = Vec::new();
                if r.latency.since.is_some() {
                    breached.push("latency");
                }
                if r.queue_wait.since.is_some() {
                    breached.push("queue_wait");
                }
                (
                    name.clone(),
                    json!({
                        "state": if breached.is_empty() { "ok" } else { "breach" },
                        "breached": breached,
                        "breach_ms": r.breach_since.map(|t| ms(now.saturating_duration_since(t))),
                        "p95_latency_ms": fresh.p95_latency_ms.map(round),
                        "p95_queue_wait_ms": fresh.p95_queue_wait_ms.map(round),
                        "samples": fresh.samples,
                        "queue_depth": r.queue_depth,
                        "oldest_wait_ms": round(r.oldest_wait_ms),
                        "thresholds": {
                            "p95_latency_ms": r.cfg.p95_latency_ms,
                            "p95_queue_wait_ms": r.cfg.p95_queue_wait_ms,
                        },
                        "agents": live.get(name).copied().unwrap_or(0),
                        "pending_spawns": r.pending.len(),
                        "min_agents": r.cfg.min_agents,
                        "max_agents": r.cfg.max_agents,
                        "failover": r.cfg.failover,
                        "breaches": r.breaches,
                        "scaled_up": r.scaled_up,
                        "scaled_down": r.scaled_down,
                        "failovers": r.failovers,
                        "rerouted": r.rerouted,
                    }),
                )
            })
            .collect();
        json!({
            "window_s": self.settings.window.as_secs_f64(),
            "check_interval_ms": ms(self.settings.check_interval),
            "roles": roles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(role: &str) -> Settings {
        Settings::parse(&format!(
            r#"{{"window_s": 1, "check_interval_ms": 100, "roles": {{"{role}": {{
                "p95_queue_wait_ms": 100, "min_agents": 1, "max_agents": 3,
                "breach_for_ms": 200, "cool_down_ms": 500}}}}}}"#
        ))
        .expect("settings")
    }

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Spawn { role } => format!("spawn {role}"),
                Action::Retire { agent, .. } => format!("retire {agent}"),
                Action::Emit { name, .. } => (*name).to_string(),
            })
            .collect()
    }

    fn health(role: &str, depth: u64, oldest: f64, in_flight: u64, capacity: u64) -> HealthView {
        let mut h = HealthView::default();
        h.roles.insert(
            role.into(),
            RoleView {
                queue_depth: depth,
                oldest_wait_ms: oldest,
                in_flight,
                capacity,
            },
        );
        h
    }

    #[test]
    fn a_queue_that_waits_scales_up_to_max_then_idle_agents_retire_to_min() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Controller::new(settings("work"), t0);
        c.agent_spawned(1, "work", t0);
        c.agent_state(1, "work", "ready", t0);
        c.agent_state(1, "work", "busy", at(10));
        // The queue waits 150 ms: a breach, but not yet sustained.
        let busy = health("work", 5, 150.0, 1, 1);
        assert_eq!(names(&c.tick(Some(&busy), at(100))), ["sla_breach"]);
        assert!(c.tick(Some(&busy), at(200)).is_empty());
        // Sustained for 200 ms: one step.
        assert_eq!(
            names(&c.tick(Some(&busy), at(300))),
            ["scaled_up", "spawn work"]
        );
        // Not before the agent shows up and the steps are spaced.
        assert!(c.tick(Some(&busy), at(600)).is_empty());
        c.agent_spawned(2, "work", at(650));
        c.agent_state(2, "work", "busy", at(660));
        assert_eq!(
            names(&c.tick(Some(&busy), at(700))),
            ["scaled_up", "spawn work"]
        );
        c.agent_spawned(3, "work", at(750));
        c.agent_state(3, "work", "busy", at(760));
        // At max: no more.
        assert!(c.tick(Some(&busy), at(1000)).is_empty());
        assert!(c.tick(Some(&busy), at(2000)).is_empty());
        // The queue empties, the agents go idle: recovery, then one retirement per cool-down.
        for a in 1..=3 {
            c.agent_state(a, "work", "ready", at(2100));
        }
        let idle = health("work", 0, 0.0, 0, 3);
        assert_eq!(names(&c.tick(Some(&idle), at(2200))), ["sla_recovered"]);
        assert!(
            c.tick(Some(&idle), at(2500)).is_empty(),
            "not idle long enough"
        );
        let a = c.tick(Some(&idle), at(2600));
        assert_eq!(names(&a), ["scaled_down", "retire 1"]);
        assert!(
            c.tick(Some(&idle), at(2700)).is_empty(),
            "one per cool-down"
        );
        assert_eq!(
            names(&c.tick(Some(&idle), at(3100))),
            ["scaled_down", "retire 2"]
        );
        assert!(c.tick(Some(&idle), at(5000)).is_empty(), "never below min");
        let s = c.status(at(5000));
        let w = &s["roles"]["work"];
        assert_eq!(w["state"], "ok");
        assert_eq!(w["agents"], 1);
        assert_eq!(w["scaled_up"], 2);
        assert_eq!(w["scaled_down"], 2);
        assert_eq!(w["breaches"], 1);
    }

    #[test]
    fn slow_attempts_breach_the_window_and_the_window_forgets_them() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Controller::new(settings("work"), t0);
        for _ in 0..10 {
            c.attempt_finished("work", 5.0, 400.0, at(10));
        }
        let quiet = health("work", 0, 0.0, 0, 1);
        let a = c.tick(Some(&quiet), at(100));
        assert_eq!(names(&a), ["sla_breach"]);
        if let Action::Emit { data, .. } = &a[0] {
            assert_eq!(data["metric"], "queue_wait");
            assert!(data["p95_ms"].as_f64().is_some_and(|v| v > 390.0), "{data}");
        }
        // Spare capacity: a breach from the past alone spawns nothing.
        assert!(c.tick(Some(&quiet), at(500)).is_empty());
        assert_eq!(names(&c.tick(Some(&quiet), at(1200))), ["sla_recovered"]);
    }

    #[test]
    fn a_failed_agent_is_replaced_and_its_lost_work_retried() {
        let t0 = Instant::now();
        let mut c = Controller::new(settings("work"), t0);
        c.agent_spawned(7, "work", t0);
        c.agent_state(7, "work", "ready", t0);
        c.agent_state(7, "work", "busy", t0);
        assert!(c.reroute_lost(7, None));
        assert!(!c.reroute_lost(99, Some("other")), "unmanaged role");
        assert!(
            c.reroute_lost(99, Some("work")),
            "unknown agent, managed target"
        );
        c.agent_state(7, "work", "failed", t0);
        let a = c.agent_failed(7, "work", "exit 9", 1, t0);
        assert_eq!(names(&a), ["failover", "spawn work"]);
        if let Action::Emit { data, .. } = &a[0] {
            assert_eq!(data["failed_agent"], 7);
            assert_eq!(data["replaced"], true);
            assert_eq!(data["agents_after"], 1);
        }
        // Stale events of the dead agent change nothing.
        c.agent_state(7, "work", "ready", t0);
        assert_eq!(c.status(t0)["roles"]["work"]["agents"], 0);
        assert_eq!(c.status(t0)["roles"]["work"]["pending_spawns"], 1);
        // Agents that never start are replaced a few times only.
        let mut replaced = 0;
        for id in 100..110 {
            c.agent_spawned(id, "work", t0);
            c.agent_state(id, "work", "failed", t0);
            let a = c.agent_failed(id, "work", "did not start", 0, t0);
            replaced += a
                .iter()
                .filter(|a| matches!(a, Action::Spawn { .. }))
                .count();
        }
        assert_eq!(replaced as u32, MAX_START_FAILURES);
    }

    #[test]
    fn a_retired_agent_that_fails_is_not_replaced() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Controller::new(settings("work"), t0);
        for id in [1, 2] {
            c.agent_spawned(id, "work", t0);
            c.agent_state(id, "work", "ready", t0);
        }
        let idle = health("work", 0, 0.0, 0, 2);
        assert_eq!(
            names(&c.tick(Some(&idle), at(600))),
            ["scaled_down", "retire 1"]
        );
        c.agent_state(1, "work", "draining", at(610));
        c.agent_state(1, "work", "failed", at(620));
        let a = c.agent_failed(1, "work", "boom", 0, at(620));
        assert_eq!(names(&a), ["failover"]);
    }

    #[test]
    fn a_failure_seen_in_the_health_report_before_its_event_is_still_replaced() {
        let t0 = Instant::now();
        let mut c = Controller::new(settings("work"), t0);
        c.agent_spawned(1, "work", t0);
        c.agent_state(1, "work", "ready", t0);
        c.agent_state(1, "work", "busy", t0);
        // The ticker reads the report (agent failed) before the events arrive.
        let mut h = health("work", 1, 0.0, 0, 0);
        h.agents = vec![(1, "work".into(), "failed".into())];
        c.tick(Some(&h), t0);
        c.agent_state(1, "work", "failed", t0);
        let a = c.agent_failed(1, "work", "killed", 1, t0);
        assert_eq!(names(&a), ["failover", "spawn work"]);
        // And when the report shows it failed before its spawn event was seen.
        let mut c = Controller::new(settings("work"), t0);
        let mut h = health("work", 1, 0.0, 0, 0);
        h.agents = vec![(2, "work".into(), "failed".into())];
        c.tick(Some(&h), t0);
        c.agent_spawned(2, "work", t0);
        c.agent_state(2, "work", "failed", t0);
        let a = c.agent_failed(2, "work", "killed", 1, t0);
        assert_eq!(names(&a), ["failover", "spawn work"]);
    }

    #[test]
    fn lost_events_are_made_up_from_the_health_report() {
        let t0 = Instant::now();
        let mut c = Controller::new(settings("work"), t0);
        let mut h = health("work", 0, 0.0, 0, 2);
        h.agents = vec![
            (1, "work".into(), "ready".into()),
            (2, "work".into(), "busy".into()),
            (3, "other".into(), "ready".into()),
        ];
        c.tick(Some(&h), t0);
        assert_eq!(c.status(t0)["roles"]["work"]["agents"], 2);
        h.agents[1].2 = "stopped".into();
        c.tick(Some(&h), t0);
        assert_eq!(c.status(t0)["roles"]["work"]["agents"], 1);
    }

    #[test]
    fn health_json_is_read() {
        let h = HealthView::parse(
            r#"{"roles": {"work": {"agents": 1, "in_flight": 1, "capacity": 2,
                "queue_depth": 3, "oldest_wait_ms": 12.5}},
                "agent_list": [{"id": 4, "role": "work", "state": "busy"},
                               {"id": 5, "role": "work", "state": {"failed": "gone"}}]}"#,
        )
        .expect("parse");
        assert_eq!(
            h.roles["work"],
            RoleView {
                queue_depth: 3,
                oldest_wait_ms: 12.5,
                in_flight: 1,
                capacity: 2
            }
        );
        assert_eq!(
            h.agents,
            [
                (4, "work".to_string(), "busy".to_string()),
                (5, "work".to_string(), "failed".to_string())
            ]
        );
        assert!(HealthView::parse("[]").is_none());
        assert!(HealthView::parse("{}").is_none(), "the kernel is gone");
    }
}
