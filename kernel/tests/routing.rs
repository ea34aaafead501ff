//! Routing and lifecycle through the public API with inproc agents: backpressure, queue
//! order, push policies, targets, cancellation, deadlines, batches and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hive_kernel::{
    AgentId, AgentSpec, AttemptStatus, BatchOptions, Cancellation, Dispatch, Event, InprocDriver,
    Kernel, Outcome, QueueOrder, RetryPolicy, RoleConfig, ShutdownMode, Status, SubmitError,
    Target, TaskSpec, Timestamp,
};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// An inproc driver whose tasks wait for a permit of `gate` (so tests hold agents busy), log
/// the payload to `seen`, and return the agent id.
fn gated(gate: Arc<Semaphore>, seen: Arc<parking_lot::Mutex<Vec<Value>>>) -> InprocDriver {
    InprocDriver::new(move |t| {
        let gate = gate.clone();
        let seen = seen.clone();
        async move {
            let _p = gate
                .acquire()
                .await
                .map_err(|e| hive_kernel::TaskError::new(e.to_string()))?;
            seen.lock().push((*t.payload).clone());
            Ok(json!({"agent": t.agent.get()}))
        }
    })
}

fn echo() -> InprocDriver {
    InprocDriver::new(|t| async move { Ok(json!({"agent": t.agent.get(), "payload": *t.payload})) })
}

async fn kernel() -> Kernel {
    Kernel::builder().seed(1).build().expect("kernel")
}

fn agent_of(r: &hive_kernel::TaskResult) -> u64 {
    match &r.outcome {
        Outcome::Succeeded(v) => v["agent"].as_u64().expect("agent in output"),
        other => panic!("not succeeded: {other:?}"),
    }
}

/// Waits until no task of `role` is in flight (slots come back just after results).
async fn idle(k: &Kernel, role: &str) -> bool {
    for _ in 0..200 {
        if k.health().roles[role].in_flight == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_blocks_submit_and_try_submit_says_busy() {
    let k = kernel().await;
    let mut rc = RoleConfig::new();
    rc.queue_capacity(2);
    k.declare_role("w", rc).expect("declare");
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    k.spawn_agent(AgentSpec::new(
        "w",
        gated(gate.clone(), seen.clone()).shared(),
    ))
    .await
    .expect("spawn");
    // One runs (blocked on the gate), two wait: the queue is full.
    let h1 = k
        .submit(TaskSpec::for_role("w", json!(1)))
        .await
        .expect("1");
    let h2 = k
        .submit(TaskSpec::for_role("w", json!(2)))
        .await
        .expect("2");
    let h3 = k
        .submit(TaskSpec::for_role("w", json!(3)))
        .await
        .expect("3");
    match k.try_submit(TaskSpec::for_role("w", json!(4))) {
        Err(SubmitError::Busy(t)) => assert_eq!(t, Target::role("w")),
        other => panic!("expected Busy, got {other:?}"),
    }
    let k2 = k.clone();
    let mut blocked =
        tokio::spawn(async move { k2.submit(TaskSpec::for_role("w", json!(5))).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut blocked)
            .await
            .is_err(),
        "submit must wait while the queue is full"
    );
    assert_eq!(k.health().roles["w"].queue_depth, 2);
    gate.add_permits(100);
    let h5 = blocked
        .await
        .expect("join")
        .expect("submit resumes once there is room");
    for h in [h1, h2, h3, h5] {
        assert_eq!(h.await.status(), Status::Succeeded);
    }
    assert_eq!(*seen.lock(), vec![json!(1), json!(2), json!(3), json!(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_orders_by_priority_then_fifo() {
    let k = kernel().await;
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    k.spawn_agent(AgentSpec::new(
        "w",
        gated(gate.clone(), seen.clone()).shared(),
    ))
    .await
    .expect("spawn");
    let mut hs = vec![k
        .submit(TaskSpec::for_role("w", json!("first")))
        .await
        .expect("s")];
    for (p, name) in [(0, "a"), (5, "b"), (1, "c"), (5, "d"), (-3, "e")] {
        hs.push(
            k.submit(TaskSpec::for_role("w", json!(name)).with_priority(p))
                .await
                .expect("s"),
        );
    }
    gate.add_permits(100);
    for h in hs {
        h.await;
    }
    assert_eq!(
        *seen.lock(),
        vec![
            json!("first"),
            json!("b"),
            json!("d"),
            json!("c"),
            json!("a"),
            json!("e")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortest_first_orders_by_cost() {
    let k = kernel().await;
    let mut rc = RoleConfig::new();
    rc.order(QueueOrder::ShortestFirst);
    k.declare_role("w", rc).expect("declare");
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    k.spawn_agent(AgentSpec::new(
        "w",
        gated(gate.clone(), seen.clone()).shared(),
    ))
    .await
    .expect("spawn");
    let mut hs = vec![k
        .submit(TaskSpec::for_role("w", json!("first")))
        .await
        .expect("s")];
    for (c, name) in [(9.0, "slow"), (0.5, "quick"), (3.0, "mid")] {
        hs.push(
            k.submit(TaskSpec::for_role("w", json!(name)).with_cost(c))
                .await
                .expect("s"),
        );
    }
    hs.push(
        k.submit(TaskSpec::for_role("w", json!("unknown")))
            .await
            .expect("s"),
    );
    gate.add_permits(100);
    for h in hs {
        h.await;
    }
    assert_eq!(
        *seen.lock(),
        vec![
            json!("first"),
            json!("quick"),
            json!("mid"),
            json!("slow"),
            json!("unknown")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_spreads_work_over_agents_with_spare_capacity() {
    let k = kernel().await;
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    for _ in 0..4 {
        k.spawn_agent(
            AgentSpec::new("w", gated(gate.clone(), seen.clone()).shared()).with_capacity(2),
        )
        .await
        .expect("spawn");
    }
    let mut hs = Vec::new();
    for i in 0..8 {
        hs.push(
            k.submit(TaskSpec::for_role("w", json!(i)))
                .await
                .expect("s"),
        );
    }
    // 4 agents x 2 slots: all 8 run at once, none waits.
    let h = k.health();
    assert_eq!(h.roles["w"].in_flight, 8, "{:?}", h.roles["w"]);
    assert_eq!(h.roles["w"].queue_depth, 0);
    assert_eq!(h.agents.busy, 4);
    gate.add_permits(100);
    let mut per_agent: HashMap<u64, usize> = HashMap::new();
    for h in hs {
        *per_agent.entry(agent_of(&h.await)).or_default() += 1;
    }
    assert_eq!(per_agent.len(), 4);
    assert!(per_agent.values().all(|&n| n == 2), "{per_agent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_pushes_in_turn() {
    let k = kernel().await;
    let mut rc = RoleConfig::new();
    rc.dispatch(Dispatch::RoundRobin);
    k.declare_role("w", rc).expect("declare");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            k.spawn_agent(AgentSpec::new("w", echo().shared()))
                .await
                .expect("spawn")
                .get(),
        );
    }
    let mut got = Vec::new();
    for i in 0..9 {
        got.push(agent_of(
            &k.run(TaskSpec::for_role("w", json!(i))).await.expect("run"),
        ));
    }
    let expected: Vec<u64> = (0..9).map(|i| ids[i % 3]).collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_keeps_a_key_on_one_agent() {
    let k = kernel().await;
    let mut rc = RoleConfig::new();
    rc.dispatch(Dispatch::Affinity);
    k.declare_role("w", rc).expect("declare");
    for _ in 0..4 {
        k.spawn_agent(AgentSpec::new("w", echo().shared()))
            .await
            .expect("spawn");
    }
    let mut by_key: HashMap<String, std::collections::HashSet<u64>> = HashMap::new();
    for i in 0..40 {
        let key = format!("user-{}", i % 5);
        let r = k
            .run(TaskSpec::for_role("w", json!(i)).with_affinity(&key))
            .await
            .expect("run");
        by_key.entry(key).or_default().insert(agent_of(&r));
    }
    assert!(by_key.values().all(|s| s.len() == 1), "{by_key:?}");
    let distinct: std::collections::HashSet<_> = by_key.values().flatten().collect();
    assert!(
        distinct.len() >= 2,
        "five keys should not all land on one agent: {by_key:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_avoids_the_busy_agent() {
    let k = kernel().await;
    let mut rc = RoleConfig::new();
    rc.dispatch(Dispatch::LeastLoaded);
    k.declare_role("w", rc).expect("declare");
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let a = k
        .spawn_agent(
            AgentSpec::new("w", gated(gate.clone(), seen.clone()).shared()).with_capacity(8),
        )
        .await
        .expect("a");
    let b = k
        .spawn_agent(
            AgentSpec::new("w", gated(gate.clone(), seen.clone()).shared()).with_capacity(8),
        )
        .await
        .expect("b");
    let mut hs = Vec::new();
    for i in 0..10 {
        hs.push(
            k.submit(TaskSpec::for_role("w", json!(i)))
                .await
                .expect("s"),
        );
    }
    // With two agents, power of two choices is exact: loads stay within one of each other.
    let (la, lb) = (
        k.agent(a).expect("a").in_flight,
        k.agent(b).expect("b").in_flight,
    );
    assert!(la.abs_diff(lb) <= 1, "{la} vs {lb}");
    gate.add_permits(100);
    for h in hs {
        h.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_and_agent_targets() {
    let k = kernel().await;
    let plain = k
        .spawn_agent(AgentSpec::new("w", echo().shared()))
        .await
        .expect("plain");
    let gpu = k
        .spawn_agent(AgentSpec::new("w", echo().shared()).with_capability("gpu"))
        .await
        .expect("gpu");
    assert_eq!(k.agents_with_capability("gpu"), vec![gpu]);
    assert_eq!(k.agents_with_role("w").len(), 2);
    for i in 0..5 {
        let r = k
            .run(TaskSpec::new(Target::capability("gpu"), json!(i)))
            .await
            .expect("run");
        assert_eq!(agent_of(&r), gpu.get());
        let r = k
            .run(TaskSpec::new(Target::Agent(plain), json!(i)))
            .await
            .expect("run");
        assert_eq!(agent_of(&r), plain.get());
    }
    assert!(matches!(
        k.submit(TaskSpec::new(Target::capability("tpu"), json!(0)))
            .await,
        Err(SubmitError::NoSuchCapability(_))
    ));
    assert!(matches!(
        k.submit(TaskSpec::for_role("nobody", json!(0))).await,
        Err(SubmitError::NoSuchRole(_))
    ));
    assert!(matches!(
        k.submit(TaskSpec::new(Target::Agent(AgentId(999)), json!(0)))
            .await,
        Err(SubmitError::NoSuchAgent(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_tasks() {
    let k = kernel().await;
    let started = Arc::new(Semaphore::new(0));
    let s2 = started.clone();
    let slow = InprocDriver::new(move |t| {
        let s2 = s2.clone();
        async move {
            s2.add_permits(1);
            t.cancel.cancelled().await;
            Ok(json!("never"))
        }
    });
    k.spawn_agent(AgentSpec::new("w", slow.shared()))
        .await
        .expect("spawn");
    let running = k
        .submit(TaskSpec::for_role("w", json!(1)))
        .await
        .expect("s");
    let queued = k
        .submit(TaskSpec::for_role("w", json!(2)))
        .await
        .expect("s");
    let _ = started.acquire().await.expect("started");
    assert!(k.cancel(queued.id()));
    assert!(k.cancel(running.id()));
    let (r1, r2) = (running.await, queued.await);
    assert_eq!(r1.status(), Status::Cancelled);
    assert_eq!(r1.attempts.len(), 1);
    assert_eq!(r1.attempts[0].status, AttemptStatus::Cancelled);
    assert_eq!(r2.status(), Status::Cancelled);
    assert!(r2.attempts.is_empty(), "a queued task never ran");
    assert!(!k.cancel(r1.id), "an ended task cannot be cancelled twice");
    let h = k.health();
    assert!(
        idle(&k, "w").await,
        "no slot leaked: {:?}",
        k.health().roles["w"]
    );
    assert_eq!(h.roles["w"].cancelled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_ends_a_task_that_waits_in_the_queue() {
    let k = kernel().await;
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    k.spawn_agent(AgentSpec::new(
        "w",
        gated(gate.clone(), seen.clone()).shared(),
    ))
    .await
    .expect("spawn");
    let blocker = k
        .submit(TaskSpec::for_role("w", json!("blocker")))
        .await
        .expect("s");
    let dl = Timestamp(Timestamp::now().micros() + 150_000);
    let late = k
        .submit(TaskSpec::for_role("w", json!("late")).with_deadline(dl))
        .await
        .expect("s");
    let r = tokio::time::timeout(Duration::from_secs(5), late)
        .await
        .expect("deadline fires");
    assert_eq!(r.status(), Status::TimedOut);
    assert!(r.attempts.is_empty());
    gate.add_permits(10);
    assert_eq!(blocker.await.status(), Status::Succeeded);
    assert_eq!(
        *seen.lock(),
        vec![json!("blocker")],
        "the expired task never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_retries_then_gives_up() {
    let k = kernel().await;
    let never = InprocDriver::new(|t| async move {
        t.cancel.cancelled().await;
        Ok(json!("late"))
    });
    k.spawn_agent(AgentSpec::new("w", never.shared()))
        .await
        .expect("spawn");
    let r = k
        .run(
            TaskSpec::for_role("w", json!(0))
                .with_timeout(Duration::from_millis(50))
                .with_retry(RetryPolicy::fixed(2, Duration::from_millis(10))),
        )
        .await
        .expect("run");
    assert_eq!(r.status(), Status::TimedOut);
    assert_eq!(r.attempts.len(), 3);
    assert!(r
        .attempts
        .iter()
        .all(|a| a.status == AttemptStatus::TimedOut));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    let k = kernel().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let d = InprocDriver::new(move |_| {
        c2.fetch_add(1, Ordering::SeqCst);
        async { Err(hive_kernel::TaskError::permanent("bad input")) }
    });
    k.spawn_agent(AgentSpec::new("w", d.shared()))
        .await
        .expect("spawn");
    let r = k
        .run(TaskSpec::for_role("w", json!(0)).with_retry(RetryPolicy::fixed(5, Duration::ZERO)))
        .await
        .expect("run");
    assert!(matches!(&r.outcome, Outcome::Failed(e) if e.message == "bad input"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_batch_cancels_the_rest_isolated_does_not() {
    let k = kernel().await;
    let d = InprocDriver::new(|t| async move {
        match t.payload.as_str() {
            Some("fail") => Err(hive_kernel::TaskError::permanent("boom")),
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => Ok(json!("done")),
                    _ = t.cancel.cancelled() => Ok(json!("cut")),
                }
            }
        }
    });
    for _ in 0..2 {
        k.spawn_agent(AgentSpec::new("w", d.clone().shared()))
            .await
            .expect("spawn");
    }
    let specs = || {
        vec![
            TaskSpec::for_role("w", json!("slow")),
            TaskSpec::for_role("w", json!("fail")),
            TaskSpec::for_role("w", json!("slow")),
            TaskSpec::for_role("w", json!("slow")),
        ]
    };
    let r = k
        .run_batch(
            specs(),
            BatchOptions::new(2).cancellation(Cancellation::Cascading),
        )
        .await;
    let st: Vec<Status> = r.results.iter().map(|t| t.status()).collect();
    assert_eq!(
        st,
        vec![
            Status::Cancelled,
            Status::Failed,
            Status::Cancelled,
            Status::Cancelled
        ]
    );
    let r = k
        .run_batch(
            specs(),
            BatchOptions::new(2).cancellation(Cancellation::Isolated),
        )
        .await;
    let st: Vec<Status> = r.results.iter().map(|t| t.status()).collect();
    assert_eq!(
        st,
        vec![
            Status::Succeeded,
            Status::Failed,
            Status::Succeeded,
            Status::Succeeded
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_respects_max_concurrency() {
    let k = kernel().await;
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n2, p2) = (now.clone(), peak.clone());
    let d = InprocDriver::new(move |_| {
        let (n2, p2) = (n2.clone(), p2.clone());
        async move {
            let c = n2.fetch_add(1, Ordering::SeqCst) + 1;
            p2.fetch_max(c, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            n2.fetch_sub(1, Ordering::SeqCst);
            Ok(Value::Null)
        }
    });
    k.spawn_agent(AgentSpec::new("w", d.shared()).with_capacity(64))
        .await
        .expect("spawn");
    let specs = (0..60).map(|i| TaskSpec::for_role("w", json!(i))).collect();
    let r = k.run_batch(specs, BatchOptions::new(4)).await;
    assert!(r.all_succeeded());
    assert_eq!(peak.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_and_now_reroutes() {
    let k = kernel().await;
    let d = InprocDriver::new(|t| async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => Ok(json!({"agent": t.agent.get()})),
            _ = t.cancel.cancelled() => Err(hive_kernel::TaskError::new("cut")),
        }
    });
    let a = k
        .spawn_agent(AgentSpec::new("w", d.clone().shared()))
        .await
        .expect("a");
    let h = k
        .submit(TaskSpec::for_role("w", json!(0)))
        .await
        .expect("s");
    tokio::time::sleep(Duration::from_millis(20)).await;
    k.shutdown_agent(a, ShutdownMode::Graceful)
        .await
        .expect("shutdown");
    let r = h.await;
    assert_eq!(
        r.status(),
        Status::Succeeded,
        "graceful waits for in-flight work"
    );
    assert_eq!(k.agent(a).expect("a").state.name(), "stopped");

    let b = k
        .spawn_agent(AgentSpec::new("w", d.clone().shared()))
        .await
        .expect("b");
    let h = k
        .submit(TaskSpec::for_role("w", json!(1)).with_retry(RetryPolicy::fixed(1, Duration::ZERO)))
        .await
        .expect("s");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = k
        .spawn_agent(AgentSpec::new("w", d.shared()))
        .await
        .expect("c");
    k.shutdown_agent(b, ShutdownMode::Now)
        .await
        .expect("shutdown");
    let r = h.await;
    assert_eq!(r.status(), Status::Succeeded);
    assert_eq!(r.attempts[0].status, AttemptStatus::AgentLost);
    assert_eq!(r.attempts[0].agent, b);
    assert_eq!(r.attempts[1].agent, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_is_an_event() {
    let k = kernel().await;
    let mut ev = k.subscribe();
    let a = k
        .spawn_agent(AgentSpec::new("w", echo().shared()))
        .await
        .expect("spawn");
    let r = k
        .run(TaskSpec::for_role("w", json!(1)).with_name("t1"))
        .await
        .expect("run");
    k.shutdown(ShutdownMode::Graceful).await;
    let mut kinds = Vec::new();
    while let Some(e) = ev.try_recv() {
        kinds.push(match &e.event {
            Event::AgentSpawned { agent, .. } => format!("spawned {agent}"),
            Event::AgentStateChanged { to, .. } => format!("state {}", to.name()),
            Event::TaskSubmitted { name, .. } => {
                format!("submitted {}", name.as_deref().unwrap_or(""))
            }
            Event::TaskDelegated { agent, .. } => format!("delegated {agent}"),
            Event::TaskStarted { .. } => "started".into(),
            Event::AttemptFinished {
                attempt, status, ..
            } => format!("attempt {attempt} {}", status.as_str()),
            Event::TaskCompleted { status, task, .. } => {
                assert_eq!(*task, r.id);
                format!("completed {status}")
            }
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        kinds,
        vec![
            format!("spawned {a}"),
            "state ready".into(),
            "submitted t1".into(),
            "state busy".into(),
            format!("delegated {a}"),
            "started".into(),
            "attempt 1 succeeded".into(),
            "completed succeeded".into(),
            "state ready".into(),
            "state draining".into(),
            "state stopped".into(),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_inproc_function_fails_its_attempt_and_frees_the_slot() {
    let k = kernel().await;
    let d = InprocDriver::new(|t| async move {
        if t.payload.as_str() == Some("boom") {
            panic!("boom");
        }
        Ok(json!("fine"))
    });
    k.spawn_agent(AgentSpec::new("w", d.shared()))
        .await
        .expect("spawn");
    let r = k
        .run(TaskSpec::for_role("w", json!("boom")))
        .await
        .expect("run");
    match &r.outcome {
        Outcome::Failed(e) => assert!(e.message.contains("panicked: boom"), "{e:?}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    // The agent's only slot is free again: the next task runs.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        k.run(TaskSpec::for_role("w", json!("ok"))),
    )
    .await
    .expect("the slot was released")
    .expect("run");
    assert_eq!(r.outcome, Outcome::Succeeded(json!("fine")));
    k.shutdown(ShutdownMode::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_role_left_without_agents_fail_after_the_starvation_timeout() {
    let k = Kernel::builder()
        .seed(1)
        .starved_role_timeout(Duration::from_millis(200))
        .build()
        .expect("kernel");
    let slow = InprocDriver::new(|t| async move {
        tokio::time::sleep(Duration::from_millis(if *t.payload == json!("slow") {
            5000
        } else {
            1
        }))
        .await;
        Ok(json!("done"))
    });
    // One agent busy with a slow task, and a task waiting behind it.
    let busy_agent_and_a_waiting_task = || async {
        let agent = k
            .spawn_agent(AgentSpec::new("w", slow.clone().shared()))
            .await
            .expect("spawn");
        let running = k
            .submit(TaskSpec::for_role("w", json!("slow")))
            .await
            .expect("submit");
        let waiting = k
            .submit(TaskSpec::for_role("w", json!("quick")))
            .await
            .expect("submit");
        (agent, running, waiting)
    };
    let (a, running, waiting) = busy_agent_and_a_waiting_task().await;
    // The only agent dies: the running task is lost with it, the waiting one has nobody.
    assert!(k.kill_agent(a, "test kill"));
    let r = running.await;
    assert_eq!(r.status(), Status::Failed, "{r:?}");
    let t0 = std::time::Instant::now();
    let r = waiting.await;
    match &r.outcome {
        Outcome::Failed(e) => assert!(
            e.message.contains("no agent of role `w` was alive"),
            "{e:?}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "waited for the timeout"
    );

    // A role that gets an agent back in time keeps its tasks.
    let (b, running, waiting) = busy_agent_and_a_waiting_task().await;
    assert!(k.kill_agent(b, "test kill"));
    k.spawn_agent(AgentSpec::new("w", slow.clone().shared()))
        .await
        .expect("spawn");
    let r = waiting.await;
    assert_eq!(r.outcome, Outcome::Succeeded(json!("done")));
    let _ = running.await;
    k.shutdown(ShutdownMode::Now).await;
}
