//! The stdio driver with a real Python agent (tests/fixtures/test_agent.py): leases, crashes,
//! malformed lines, failed starts, logs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hive_kernel::{
    AgentSpec, AttemptStatus, Event, EventStream, Kernel, LogLevel, Outcome, RetryPolicy,
    SpawnError, Status, StdioConfig, StdioDriver, TaskSpec,
};
use serde_json::json;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/test_agent.py")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A stdio driver for the test agent with a fast heartbeat and a short lease.
fn driver(env: &[(&str, &str)]) -> StdioDriver {
    let mut c = StdioConfig::new("python3");
    c.args([fixture().display().to_string()])
        .liveness(Duration::from_millis(100), Duration::from_millis(800))
        .grace(Duration::from_millis(500));
    for (k, v) in env {
        c.env(*k, *v);
    }
    StdioDriver::new(c)
}

async fn kernel_with(n: usize) -> Kernel {
    let k = Kernel::builder()
        .grace_period(Duration::from_millis(500))
        .build()
        .expect("kernel");
    for _ in 0..n {
        k.spawn_agent(AgentSpec::new("py", driver(&[]).shared()).with_capacity(2))
            .await
            .expect("spawn");
    }
    k
}

/// Collects events until `pred` matches one (or `within` passes).
async fn wait_event(
    ev: &mut EventStream,
    within: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, ev.recv()).await {
            Ok(Some(e)) if pred(&e.event) => return Some(e.event.clone()),
            Ok(Some(_)) => continue,
            _ => return None,
        }
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
async fn echo_through_a_real_agent() {
    let k = kernel_with(1).await;
    let r = k
        .run(TaskSpec::for_role("py", json!({"echo": [1, "two"]})))
        .await
        .expect("run");
    let Outcome::Succeeded(v) = &r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(v["echo"], json!([1, "two"]));
    let r = k
        .run(TaskSpec::for_role(
            "py",
            json!({"fail": "nope", "retryable": false}),
        ))
        .await
        .expect("run");
    assert!(
        matches!(&r.outcome, Outcome::Failed(e) if e.message == "nope" && !e.retryable),
        "{r:?}"
    );
    k.shutdown(hive_kernel::ShutdownMode::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_loses_its_lease_and_the_task_completes_elsewhere() {
    let dir = scratch("lease");
    let k = kernel_with(2).await;
    let mut ev = k.subscribe();
    let t0 = Instant::now();
    let r = k
        .run(
            TaskSpec::for_role(
                "py",
                json!({"hang_once": dir.join("hung"), "echo": "after"}),
            )
            .with_retry(RetryPolicy::fixed(2, Duration::ZERO)),
        )
        .await
        .expect("run");
    assert_eq!(r.status(), Status::Succeeded, "{r:?}");
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[0].status, AttemptStatus::AgentLost);
    assert!(
        r.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("lease expired")),
        "{:?}",
        r.attempts[0].error
    );
    assert_ne!(
        r.attempts[0].agent, r.attempts[1].agent,
        "retried on the other agent"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let failed = wait_event(&mut ev, Duration::from_secs(1), |e| {
        matches!(e, Event::AgentFailed { .. })
    })
    .await;
    assert!(
        matches!(failed, Some(Event::AgentFailed { agent, .. }) if agent == r.attempts[0].agent)
    );
    let h = k.health();
    assert_eq!(h.agents.failed, 1);
    assert!(
        idle(&k, "py").await,
        "no slot leaked: {:?}",
        k.health().roles["py"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_task_fails_over() {
    let dir = scratch("sigkill");
    let marker = dir.join("marker");
    let k = kernel_with(2).await;
    let h = k
        .submit(
            TaskSpec::for_role("py", json!({"sleep": 0.5, "marker": marker}))
                .with_retry(RetryPolicy::fixed(1, Duration::ZERO)),
        )
        .await
        .expect("submit");
    let end = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        if let Some(line) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.lines().next().map(String::from))
        {
            break line
                .split_whitespace()
                .nth(3)
                .and_then(|p| p.parse().ok())
                .expect("pid in marker");
        }
        assert!(Instant::now() < end, "task never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // SAFETY: killing the agent process the test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let r = tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("task ends");
    assert_eq!(r.status(), Status::Succeeded, "{r:?}");
    assert_eq!(r.attempts[0].status, AttemptStatus::AgentLost);
    assert!(
        r.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("exited")),
        "{:?}",
        r.attempts[0].error
    );
    assert_ne!(r.attempts[0].agent, r.attempts[1].agent);
    let lines = std::fs::read_to_string(&marker).expect("marker");
    assert_eq!(lines.lines().count(), 2, "started twice: {lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_logged_and_ignored() {
    let k = kernel_with(1).await;
    let mut ev = k.subscribe();
    let r = k
        .run(TaskSpec::for_role("py", json!({"garbage": true})))
        .await
        .expect("run");
    let Outcome::Succeeded(v) = &r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(v["after_garbage"], json!(true));
    let agent = r.attempts[0].agent;
    let mut logs = Vec::new();
    while let Some(e) = wait_event(&mut ev, Duration::from_millis(300), |e| {
        matches!(e, Event::AgentLog { .. })
    })
    .await
    {
        if let Event::AgentLog {
            agent: a,
            level,
            message,
            ..
        } = e
        {
            assert_eq!(a, agent);
            if level == LogLevel::Warn {
                logs.push(message);
            }
        }
    }
    for needle in ["not json at all", "{\"type\":\"result\"", "[1,2,3]"] {
        assert!(
            logs.iter().any(|m| m.contains("malformed line")
                && m.contains(&agent.to_string())
                && m.contains(needle)),
            "no log of `{needle}` in {logs:?}"
        );
    }
    assert_eq!(
        k.agent(agent).expect("agent").state.name(),
        "ready",
        "the agent survives"
    );
    let r = k
        .run(TaskSpec::for_role("py", json!({"echo": 1})))
        .await
        .expect("run");
    assert_eq!(r.status(), Status::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_says_ready_does_not_start() {
    let k = Kernel::builder().build().expect("kernel");
    let t0 = Instant::now();
    let e = k
        .spawn_agent(AgentSpec::new(
            "py",
            driver(&[("TEST_AGENT_NO_READY", "1")]).shared(),
        ))
        .await
        .expect_err("no ready");
    assert!(
        matches!(&e, SpawnError::Start { reason, .. } if reason.contains("no `ready`")),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let mut c = StdioConfig::new("/no/such/agent");
    c.liveness(Duration::from_millis(100), Duration::from_millis(500));
    let e = k
        .spawn_agent(AgentSpec::new("py", StdioDriver::new(c).shared()))
        .await
        .expect_err("no program");
    assert!(e.to_string().contains("/no/such/agent"), "{e}");
    assert_eq!(k.health().agents.failed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_lines_become_logs_and_graceful_stop_is_clean() {
    let k = Kernel::builder().build().expect("kernel");
    let mut ev = k.subscribe();
    let a = k
        .spawn_agent(AgentSpec::new(
            "py",
            driver(&[("TEST_AGENT_STDERR", "1")]).shared(),
        ))
        .await
        .expect("spawn");
    let log = wait_event(&mut ev, Duration::from_secs(5), |e| {
        matches!(e, Event::AgentLog { message, .. } if message.contains("test agent stderr line"))
    })
    .await;
    assert!(
        matches!(log, Some(Event::AgentLog { agent, level: LogLevel::Warn, .. }) if agent == a)
    );
    k.shutdown_agent(a, hive_kernel::ShutdownMode::Graceful)
        .await
        .expect("stop");
    assert_eq!(
        k.agent(a).expect("agent").state.name(),
        "stopped",
        "a clean exit is not a failure"
    );
}
