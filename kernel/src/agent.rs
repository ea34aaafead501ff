//! Agents: their spec, their state machine (Starting -> Ready <-> Busy -> Draining -> Stopped,
//! plus Failed), concurrency slots and lease.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::driver::{AgentHandle, Driver};
use crate::event::{kind, Event, EventBus};
use crate::ids::{AgentId, Timestamp};
use crate::queue::TaskQueue;

/// Where an agent is in its life.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentState {
    /// Registered; its driver is starting it.
    Starting,
    /// Idle, taking tasks.
    Ready,
    /// Running at least one task, taking more while it has spare capacity.
    Busy,
    /// Finishing its in-flight tasks, taking no new ones.
    Draining,
    /// Gone, cleanly.
    Stopped,
    /// Gone, with the reason.
    Failed(Arc<str>),
}

impl AgentState {
    /// Stopped or Failed.
    pub fn is_terminal(&self) -> bool {
        matches!(self, AgentState::Stopped | AgentState::Failed(_))
    }

    /// The state's name, without the reason.
    pub fn name(&self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Ready => "ready",
            AgentState::Busy => "busy",
            AgentState::Draining => "draining",
            AgentState::Stopped => "stopped",
            AgentState::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentState::Failed(r) => write!(f, "failed: {r}"),
            s => f.write_str(s.name()),
        }
    }
}

impl fmt::Debug for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How to shut an agent down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownMode {
    /// Take no new task, finish the in-flight ones, then stop.
    Graceful,
    /// Stop now; in-flight tasks go back to their retry policy.
    Now,
}

/// What to spawn: a role, capabilities, a capacity and a driver.
#[derive(Clone)]
#[non_exhaustive]
pub struct AgentSpec {
    /// The role (the queue it serves).
    pub role: Arc<str>,
    /// Capabilities (each is also a queue it serves).
    pub capabilities: Vec<Arc<str>>,
    /// Tasks in flight at once (at least 1).
    pub capacity: u32,
    /// How it runs.
    pub driver: Arc<dyn Driver>,
}

impl AgentSpec {
    /// An agent of `role` run by `driver`, capacity 1, no capability.
    pub fn new(role: impl AsRef<str>, driver: Arc<dyn Driver>) -> Self {
        AgentSpec {
            role: Arc::from(role.as_ref()),
            capabilities: Vec::new(),
            capacity: 1,
            driver,
        }
    }

    /// Sets the capacity (at least 1).
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Adds a capability.
    pub fn with_capability(mut self, cap: impl AsRef<str>) -> Self {
        self.capabilities.push(Arc::from(cap.as_ref()));
        self
    }
}

impl fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSpec")
            .field("role", &self.role)
            .field("capabilities", &self.capabilities)
            .field("capacity", &self.capacity)
            .field("driver", &self.driver.name())
            .finish()
    }
}

/// A snapshot of one agent, for lookups and health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent.
    pub id: AgentId,
    /// Its role.
    pub role: Arc<str>,
    /// Its capabilities.
    pub capabilities: Vec<Arc<str>>,
    /// Its driver's name.
    pub driver: Arc<str>,
    /// Its state.
    pub state: AgentState,
    /// Tasks in flight.
    pub in_flight: u32,
    /// Tasks in flight at once, at most.
    pub capacity: u32,
    /// When it was spawned.
    pub spawned_at: Timestamp,
    /// Tasks it finished (any outcome).
    pub completed: u64,
    /// Milliseconds since its lease was last renewed, for leased agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_age_ms: Option<u64>,
}

/// A liveness lease: the driver renews it; the kernel fails the agent once it expires.
#[derive(Debug)]
pub(crate) struct Lease {
    epoch: Instant,
    ttl_ms: AtomicU64,
    renewed_ms: AtomicU64,
}

impl Lease {
    pub(crate) fn new(epoch: Instant) -> Self {
        Lease {
            epoch,
            ttl_ms: AtomicU64::new(0),
            renewed_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn set_ttl(&self, ttl: Duration) {
        self.renew();
        self.ttl_ms
            .store((ttl.as_millis() as u64).max(1), Ordering::Release);
    }

    pub(crate) fn renew(&self) {
        self.renewed_ms.store(self.now_ms(), Ordering::Release);
    }

    pub(crate) fn is_leased(&self) -> bool {
        self.ttl_ms.load(Ordering::Acquire) > 0
    }

    /// `Some(silence)` when the lease has expired.
    pub(crate) fn expired(&self) -> Option<Duration> {
        let ttl = self.ttl_ms.load(Ordering::Acquire);
        if ttl == 0 {
            return None;
        }
        let age = self.age_ms();
        (age > ttl).then(|| Duration::from_millis(age))
    }

    pub(crate) fn age_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.renewed_ms.load(Ordering::Acquire))
    }
}

#[derive(Debug)]
struct Slots {
    state: AgentState,
    busy: u32,
}

/// The kernel's record of a live agent.
pub(crate) struct AgentCell {
    pub(crate) id: AgentId,
    pub(crate) role: Arc<str>,
    pub(crate) capabilities: Vec<Arc<str>>,
    pub(crate) driver_name: Arc<str>,
    pub(crate) capacity: u32,
    pub(crate) spawned_at: Timestamp,
    slots: Mutex<Slots>,
    pub(crate) handle: OnceLock<Arc<dyn AgentHandle>>,
    /// Cancelled when the agent fails or is stopped now: its attempts end at once.
    pub(crate) lost: CancellationToken,
    pub(crate) lease: Arc<Lease>,
    /// Its own queue first, then its role's, then one per capability.
    pub(crate) queues: Vec<Arc<TaskQueue>>,
    /// Whether the agent sits in `queues[i]`'s idle list.
    pub(crate) idle_in: Box<[AtomicBool]>,
    pub(crate) drained: Notify,
    pub(crate) completed: AtomicU64,
}

impl fmt::Debug for AgentCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCell")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("slots", &*self.slots.lock())
            .finish_non_exhaustive()
    }
}

impl AgentCell {
    pub(crate) fn new(
        id: AgentId,
        spec: &AgentSpec,
        queues: Vec<Arc<TaskQueue>>,
        lease: Arc<Lease>,
    ) -> Self {
        let idle_in = queues.iter().map(|_| AtomicBool::new(false)).collect();
        AgentCell {
            id,
            role: spec.role.clone(),
            capabilities: spec.capabilities.clone(),
            driver_name: Arc::from(spec.driver.name()),
            capacity: spec.capacity.max(1),
            spawned_at: Timestamp::now(),
            slots: Mutex::new(Slots {
                state: AgentState::Starting,
                busy: 0,
            }),
            handle: OnceLock::new(),
            lost: CancellationToken::new(),
            lease,
            queues,
            idle_in,
            drained: Notify::new(),
            completed: AtomicU64::new(0),
        }
    }

    pub(crate) fn direct(&self) -> &Arc<TaskQueue> {
        &self.queues[0]
    }

    pub(crate) fn state(&self) -> AgentState {
        self.slots.lock().state.clone()
    }

    pub(crate) fn busy(&self) -> u32 {
        self.slots.lock().busy
    }

    pub(crate) fn accepting(&self) -> bool {
        matches!(
            self.slots.lock().state,
            AgentState::Ready | AgentState::Busy
        )
    }

    fn emit_change(&self, bus: &EventBus, from: &AgentState, to: &AgentState) {
        bus.emit_with(kind::AGENT_STATE_CHANGED, || Event::AgentStateChanged {
            agent: self.id,
            role: self.role.clone(),
            from: from.clone(),
            to: to.clone(),
        });
    }

    /// Takes a concurrency slot if the agent accepts work and has one free.
    pub(crate) fn try_take_slot(&self, bus: &EventBus) -> bool {
        let mut s = self.slots.lock();
        let accepting = matches!(s.state, AgentState::Ready | AgentState::Busy);
        if !accepting || s.busy >= self.capacity {
            return false;
        }
        s.busy += 1;
        if s.state == AgentState::Ready {
            s.state = AgentState::Busy;
            self.emit_change(bus, &AgentState::Ready, &AgentState::Busy);
        }
        true
    }

    /// Whether a slot is free right now (a hint: it can be gone a moment later).
    pub(crate) fn has_spare(&self) -> bool {
        let s = self.slots.lock();
        matches!(s.state, AgentState::Ready | AgentState::Busy) && s.busy < self.capacity
    }

    /// Gives a slot back.
    pub(crate) fn release_slot(&self, bus: &EventBus) {
        let mut s = self.slots.lock();
        s.busy = s.busy.saturating_sub(1);
        if s.busy == 0 {
            match s.state {
                AgentState::Busy => {
                    s.state = AgentState::Ready;
                    self.emit_change(bus, &AgentState::Busy, &AgentState::Ready);
                }
                AgentState::Draining | AgentState::Failed(_) | AgentState::Stopped => {
                    self.drained.notify_waiters();
                    self.drained.notify_one();
                }
                _ => {}
            }
        }
    }

    /// Starting -> Ready. False if the agent left Starting meanwhile (failed).
    pub(crate) fn mark_ready(&self, bus: &EventBus) -> bool {
        let mut s = self.slots.lock();
        if s.state != AgentState::Starting {
            return false;
        }
        s.state = AgentState::Ready;
        self.emit_change(bus, &AgentState::Starting, &AgentState::Ready);
        true
    }

    /// Ready/Busy/Starting -> Draining. Returns the number in flight, or None if it was not
    /// live.
    pub(crate) fn mark_draining(&self, bus: &EventBus) -> Option<u32> {
        let mut s = self.slots.lock();
        if s.state.is_terminal() {
            return None;
        }
        if s.state != AgentState::Draining {
            let from = std::mem::replace(&mut s.state, AgentState::Draining);
            self.emit_change(bus, &from, &AgentState::Draining);
        }
        Some(s.busy)
    }

    /// Any live state -> Stopped.
    pub(crate) fn mark_stopped(&self, bus: &EventBus) -> bool {
        let mut s = self.slots.lock();
        if s.state.is_terminal() {
            return false;
        }
        let from = std::mem::replace(&mut s.state, AgentState::Stopped);
        self.emit_change(bus, &from, &AgentState::Stopped);
        true
    }

    /// Any live state -> Failed(reason), once. Returns the number in flight if this call
    /// made the transition.
    pub(crate) fn mark_failed(&self, bus: &EventBus, reason: &Arc<str>) -> Option<u32> {
        let mut s = self.slots.lock();
        if s.state.is_terminal() {
            return None;
        }
        let to = AgentState::Failed(reason.clone());
        let from = std::mem::replace(&mut s.state, to.clone());
        self.emit_change(bus, &from, &to);
        bus.emit_with(kind::AGENT_FAILED, || Event::AgentFailed {
            agent: self.id,
            role: self.role.clone(),
            reason: reason.clone(),
            in_flight: s.busy,
        });
        Some(s.busy)
    }

    /// Waits until no task is in flight.
    pub(crate) async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.busy() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn info(&self) -> AgentInfo {
        let (state, busy) = {
            let s = self.slots.lock();
            (s.state.clone(), s.busy)
        };
        AgentInfo {
            id: self.id,
            role: self.role.clone(),
            capabilities: self.capabilities.clone(),
            driver: self.driver_name.clone(),
            state,
            in_flight: busy,
            capacity: self.capacity,
            spawned_at: self.spawned_at,
            completed: self.completed.load(Ordering::Relaxed),
            lease_age_ms: self.lease.is_leased().then(|| self.lease.age_ms()),
        }
    }
}
