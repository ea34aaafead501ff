//! Property test: under any interleaving of submits, cancels, agent deaths and spawns, every
//! submitted task ends in exactly one terminal outcome (none lost, none twice) and no
//! concurrency slot leaks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hive_kernel::{
    AgentContext, AgentHandle, AgentLink, AgentSpec, Driver, DriverError, Event, Kernel,
    RetryPolicy, RoleConfig, ShutdownMode, Status, SubmitError, TaskContext, TaskError, TaskSpec,
};
use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::{json, Value};

/// An inproc-like driver whose agents the test can kill (through their kernel link, the way
/// a crashed process or a lost lease fails them).
#[derive(Default)]
struct Killable {
    links: Mutex<Vec<AgentLink>>,
}

struct Worker;

#[async_trait]
impl Driver for Killable {
    fn name(&self) -> &str {
        "killable"
    }
    async fn start(&self, ctx: AgentContext) -> Result<Arc<dyn AgentHandle>, DriverError> {
        self.links.lock().push(ctx.link);
        Ok(Arc::new(Worker))
    }
}

#[async_trait]
impl AgentHandle for Worker {
    async fn execute(&self, t: TaskContext) -> Result<Value, TaskError> {
        let ms = t.payload["ms"].as_u64().unwrap_or(0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = t.cancel.cancelled() => return Err(TaskError::new("interrupted")),
        }
        if t.payload["fail"].as_bool().unwrap_or(false) {
            Err(TaskError::new("planned failure"))
        } else {
            Ok(json!(t.attempt))
        }
    }
    async fn stop(&self, _mode: ShutdownMode) {}
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        ms: u8,
        fail: bool,
        retries: u8,
        prio: i8,
        wait: bool,
    },
    Cancel(usize),
    Kill(usize),
    Stop(usize),
    Spawn(u8),
    Pause(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, any::<bool>(), 0u8..3, -2i8..3, any::<bool>())
            .prop_map(|(ms, fail, retries, prio, wait)| Op::Submit { ms, fail, retries, prio, wait }),
        2 => (0usize..64).prop_map(Op::Cancel),
        1 => (0usize..8).prop_map(Op::Kill),
        1 => (0usize..8).prop_map(Op::Stop),
        1 => (1u8..4).prop_map(Op::Spawn),
        2 => (0u8..4).prop_map(Op::Pause),
    ]
}

async fn scenario(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let k = Kernel::builder()
        .seed(3)
        .event_capacity(1 << 16)
        .build()
        .expect("kernel");
    let mut rc = RoleConfig::new();
    rc.queue_capacity(6);
    k.declare_role("w", rc).expect("declare");
    let driver = Arc::new(Killable::default());
    let mut events = k.subscribe();
    let mut agents = Vec::new();
    for cap in [1, 2] {
        agents.push(
            k.spawn_agent(AgentSpec::new("w", driver.clone()).with_capacity(cap))
                .await
                .expect("spawn"),
        );
    }
    let mut handles = Vec::new();
    let mut max_attempts = HashMap::new();
    for op in ops {
        match op {
            Op::Submit {
                ms,
                fail,
                retries,
                prio,
                wait,
            } => {
                let spec = TaskSpec::for_role("w", json!({"ms": ms, "fail": fail}))
                    .with_priority(prio as i32)
                    .with_retry(RetryPolicy::fixed(retries as u32, Duration::from_millis(1)));
                let h = if wait {
                    match tokio::time::timeout(Duration::from_millis(20), k.submit(spec)).await {
                        Ok(r) => r.map_err(|e| TestCaseError::fail(format!("submit: {e}")))?,
                        Err(_) => continue, // still waiting for room: dropped, never entered
                    }
                } else {
                    match k.try_submit(spec) {
                        Ok(h) => h,
                        Err(SubmitError::Busy(_)) => continue,
                        Err(e) => return Err(TestCaseError::fail(format!("try_submit: {e}"))),
                    }
                };
                max_attempts.insert(h.id(), retries as usize + 1);
                handles.push(h);
            }
            Op::Cancel(i) => {
                if let Some(h) = handles.get(i % handles.len().max(1)) {
                    k.cancel(h.id());
                }
            }
            Op::Kill(i) => {
                let links = driver.links.lock().clone();
                if let Some(l) = links.get(i % links.len().max(1)) {
                    l.fail("killed by the test");
                }
            }
            Op::Stop(i) => {
                if let Some(id) = agents.get(i % agents.len().max(1)) {
                    let k2 = k.clone();
                    let id = *id;
                    tokio::spawn(async move { k2.shutdown_agent(id, ShutdownMode::Now).await });
                }
            }
            Op::Spawn(cap) => {
                agents.push(
                    k.spawn_agent(AgentSpec::new("w", driver.clone()).with_capacity(cap as u32))
                        .await
                        .expect("spawn"),
                );
            }
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms as u64)).await,
        }
    }
    // Make sure someone can finish what waits.
    agents.push(
        k.spawn_agent(AgentSpec::new("w", driver.clone()).with_capacity(2))
            .await
            .expect("spawn"),
    );
    let mut ended = HashMap::new();
    for h in handles {
        let id = h.id();
        let r = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| TestCaseError::fail(format!("{id} never ended")))?;
        prop_assert_eq!(r.id, id);
        prop_assert!(
            r.attempts.len() <= max_attempts[&id],
            "{} made {} attempts, max {}",
            id,
            r.attempts.len(),
            max_attempts[&id]
        );
        prop_assert!(matches!(
            r.status(),
            Status::Succeeded | Status::Failed | Status::Cancelled
        ));
        ended.insert(id, r.status());
    }
    // Exactly one TaskCompleted per task, matching its result.
    let mut completed: HashMap<_, Vec<Status>> = HashMap::new();
    while let Some(e) = events.try_recv() {
        if let Event::TaskCompleted { task, status, .. } = &e.event {
            completed.entry(*task).or_default().push(*status);
        }
    }
    prop_assert_eq!(k.health().events_lagged, 0);
    prop_assert_eq!(completed.len(), ended.len());
    for (id, st) in &ended {
        prop_assert_eq!(
            completed.get(id).map(Vec::as_slice),
            Some(&[*st][..]),
            "{}",
            id
        );
    }
    // No slot leaks, nothing left behind.
    let mut idle = false;
    for _ in 0..300 {
        let h = k.health();
        if h.roles["w"].in_flight == 0 && h.tasks_open == 0 && h.roles["w"].queue_depth == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    prop_assert!(idle, "not idle: {:?}", k.health().roles["w"]);
    let w = &k.health().roles["w"];
    prop_assert_eq!(
        w.succeeded + w.failed + w.cancelled + w.timed_out,
        ended.len() as u64
    );
    k.shutdown(ShutdownMode::Now).await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_task_ends_exactly_once(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(scenario(ops))?;
    }
}
