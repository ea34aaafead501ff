//! A bounded-by-permits task queue with an idle-agent list: a push hands the task straight to
//! an idle agent when there is one, otherwise it waits in priority (or cost) order.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use crate::agent::AgentCell;
use crate::event::EventBus;
use crate::kernel::TaskEntry;

/// The order in which a queue hands out tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueueOrder {
    /// Higher priority first, FIFO within a priority.
    #[default]
    Priority,
    /// Lower cost estimate first (tasks without one last), FIFO among equals.
    ShortestFirst,
}

pub(crate) type QueueKey = (i64, u64);

pub(crate) struct Queued {
    pub(crate) entry: Arc<TaskEntry>,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
    pub(crate) since: Instant,
}

struct Inner {
    items: BTreeMap<QueueKey, Queued>,
    idle: VecDeque<(Arc<AgentCell>, usize)>,
    seq: u64,
}

/// One queue: a role's, a capability's, or an agent's own.
pub(crate) struct TaskQueue {
    pub(crate) label: Arc<str>,
    order: QueueOrder,
    inner: Mutex<Inner>,
}

impl fmt::Debug for TaskQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskQueue")
            .field("label", &self.label)
            .field("len", &self.len())
            .finish()
    }
}

/// What a push did.
pub(crate) enum Pushed {
    /// It waits in the queue under this key.
    Queued(QueueKey),
    /// An idle agent took it (a slot is already taken on that agent).
    Handoff(Arc<AgentCell>),
}

fn cost_key(cost: Option<f64>) -> i64 {
    match cost {
        None => i64::MAX,
        Some(c) if c.is_nan() => i64::MAX,
        Some(c) => {
            let bits = c.to_bits() as i64;
            if bits < 0 {
                bits ^ i64::MAX
            } else {
                bits
            }
        }
    }
}

impl TaskQueue {
    pub(crate) fn new(label: Arc<str>, order: QueueOrder) -> Self {
        TaskQueue {
            label,
            order,
            inner: Mutex::new(Inner {
                items: BTreeMap::new(),
                idle: VecDeque::new(),
                seq: 0,
            }),
        }
    }

    fn key_for(&self, entry: &TaskEntry, seq: u64) -> QueueKey {
        match self.order {
            QueueOrder::Priority => (-(entry.spec.priority as i64), seq),
            QueueOrder::ShortestFirst => (cost_key(entry.spec.cost), seq),
        }
    }

    /// Hands `entry` to an idle agent with a free slot, or queues it.
    pub(crate) fn push(
        &self,
        entry: &Arc<TaskEntry>,
        permit: Option<OwnedSemaphorePermit>,
        bus: &EventBus,
    ) -> Pushed {
        let mut q = self.inner.lock();
        while let Some((agent, idx)) = q.idle.pop_front() {
            if agent.try_take_slot(bus) {
                if agent.has_spare() {
                    q.idle.push_back((agent.clone(), idx));
                } else {
                    agent.idle_in[idx].store(false, Ordering::Release);
                }
                return Pushed::Handoff(agent);
            }
            agent.idle_in[idx].store(false, Ordering::Release);
        }
        q.seq += 1;
        let key = self.key_for(entry, q.seq);
        q.items.insert(
            key,
            Queued {
                entry: entry.clone(),
                _permit: permit,
                since: Instant::now(),
            },
        );
        Pushed::Queued(key)
    }

    /// The next task in order.
    pub(crate) fn pop(&self) -> Option<Queued> {
        self.inner.lock().items.pop_first().map(|(_, v)| v)
    }

    /// Takes a queued task out (cancel, deadline).
    pub(crate) fn remove(&self, key: &QueueKey) -> Option<Queued> {
        self.inner.lock().items.remove(key)
    }

    /// Everything queued, in order (an agent going away hands its own queue back).
    pub(crate) fn drain(&self) -> Vec<Queued> {
        std::mem::take(&mut self.inner.lock().items)
            .into_values()
            .collect()
    }

    /// An agent with a free slot looks for work: if a task waits, it takes a slot and the
    /// task; otherwise it registers as idle (once), so the next push hands to it. Both under
    /// the queue's lock, so no push is missed.
    pub(crate) fn park(
        &self,
        agent: &Arc<AgentCell>,
        idx: usize,
        bus: &EventBus,
    ) -> Option<Queued> {
        let mut q = self.inner.lock();
        if !q.items.is_empty() {
            if agent.try_take_slot(bus) {
                return q.items.pop_first().map(|(_, v)| v);
            }
            return None;
        }
        if agent.accepting() && !agent.idle_in[idx].swap(true, Ordering::AcqRel) {
            q.idle.push_back((agent.clone(), idx));
        }
        None
    }

    /// Forgets an agent (it stopped or failed).
    pub(crate) fn forget(&self, agent: &AgentCell) {
        self.inner.lock().idle.retain(|(a, _)| a.id != agent.id);
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// Depth and the longest wait of a queued task.
    pub(crate) fn depth_and_oldest(&self) -> (usize, Duration) {
        let q = self.inner.lock();
        let oldest = q
            .items
            .values()
            .map(|v| v.since.elapsed())
            .max()
            .unwrap_or(Duration::ZERO);
        (q.items.len(), oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::cost_key;

    #[test]
    fn cost_keys_order_like_the_costs() {
        let costs = [-5.0, -0.5, 0.0, 0.1, 1.0, 1e9];
        for w in costs.windows(2) {
            assert!(cost_key(Some(w[0])) < cost_key(Some(w[1])), "{w:?}");
        }
        assert!(cost_key(Some(1e300)) < cost_key(None));
    }
}
