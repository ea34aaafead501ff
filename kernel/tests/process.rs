//! The process driver through the kernel: timeouts kill the whole process group, retries with
//! backoff, bounded output capture, cancellation, and exit statuses.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hive_kernel::{
    AgentSpec, AttemptStatus, Jitter, Kernel, Outcome, ProcessConfig, ProcessDriver, RetryPolicy,
    Status, TaskSpec,
};
use serde_json::json;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A kernel with one process agent of role `sh` and the given grace period.
async fn kernel(grace: Duration) -> Kernel {
    let k = Kernel::builder()
        .grace_period(grace)
        .build()
        .expect("kernel");
    let mut cfg = ProcessConfig::new();
    cfg.tail_bytes(64 * 1024);
    k.spawn_agent(AgentSpec::new("sh", ProcessDriver::new(cfg).shared()).with_capacity(4))
        .await
        .expect("spawn");
    k
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z")
        ),
        Err(_) => false,
    }
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_group_grandchildren_included() {
    let dir = scratch("timeout-group");
    let k = kernel(Duration::from_millis(300)).await;
    // The shell records its pid (= its process group) and a grandchild's, then waits; it
    // ignores SIGTERM so the escalation to SIGKILL is exercised too.
    let script = format!(
        "trap '' TERM; echo $$ > {d}/pgid; sleep 30 & echo $! > {d}/grandchild; wait",
        d = dir.display()
    );
    let t0 = Instant::now();
    let r = k
        .run(
            TaskSpec::for_role("sh", json!({"command": "sh", "args": ["-c", script]}))
                .with_timeout(Duration::from_millis(400)),
        )
        .await
        .expect("run");
    assert_eq!(r.status(), Status::TimedOut, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(r.attempts[0].status, AttemptStatus::TimedOut);
    let pgid = read_pid(&dir.join("pgid"));
    let grandchild = read_pid(&dir.join("grandchild"));
    assert!(
        wait_until(Duration::from_secs(3), || !pid_alive(grandchild)),
        "grandchild {grandchild} survived"
    );
    assert!(
        wait_until(Duration::from_secs(3), || !group_alive(pgid)),
        "group {pgid} still has members"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_finished_command_are_killed() {
    let dir = scratch("leftovers");
    let k = kernel(Duration::from_secs(1)).await;
    let script = format!("sleep 30 & echo $! > {}/bg; exit 0", dir.display());
    let r = k
        .run(TaskSpec::for_role(
            "sh",
            json!({"command": "sh", "args": ["-c", script]}),
        ))
        .await
        .expect("run");
    assert_eq!(r.status(), Status::Succeeded);
    let bg = read_pid(&dir.join("bg"));
    assert!(
        wait_until(Duration::from_secs(3), || !pid_alive(bg)),
        "background child {bg} outlived its task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_twice_then_succeeds_with_backoff_in_bounds() {
    let dir = scratch("retries");
    let counter = dir.join("count");
    let k = kernel(Duration::from_secs(1)).await;
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ] || {{ echo attempt $n failed >&2; exit 7; }}",
        c = counter.display()
    );
    let policy =
        RetryPolicy::exponential(2, Duration::from_millis(100), 2.0, Duration::from_secs(1))
            .with_jitter(Jitter::Equal);
    let r = k
        .run(
            TaskSpec::for_role("sh", json!({"command": "sh", "args": ["-c", script]}))
                .with_retry(policy),
        )
        .await
        .expect("run");
    assert_eq!(r.status(), Status::Succeeded, "{r:?}");
    assert_eq!(r.attempts.len(), 3);
    assert_eq!(r.attempts[0].exit_code, Some(7));
    assert!(
        r.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("attempt 1 failed")),
        "{:?}",
        r.attempts[0].error
    );
    assert_eq!(r.attempts[2].status, AttemptStatus::Succeeded);
    for n in 1..3u32 {
        let gap = r.attempts[n as usize]
            .started_at
            .since(r.attempts[n as usize - 1].finished_at);
        let (lo, hi) = policy.delay_bounds(n);
        assert!(gap >= lo, "gap after attempt {n}: {gap:?} < {lo:?}");
        assert!(
            gap <= hi + Duration::from_millis(250),
            "gap after attempt {n}: {gap:?} > {hi:?} (+250ms slack)"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&counter).expect("counter").trim(),
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_tail_is_bounded() {
    let k = kernel(Duration::from_secs(1)).await;
    let r = k
        .run(TaskSpec::for_role("sh", json!({"command": "sh", "args": ["-c", "head -c 300000 /dev/zero | tr '\\0' x; echo END"]})))
        .await
        .expect("run");
    let Outcome::Succeeded(v) = &r.outcome else {
        panic!("{r:?}")
    };
    let out = v["stdout"].as_str().expect("stdout");
    assert!(
        out.ends_with("xxxxEND\n"),
        "tail kept: {}",
        &out[out.len().saturating_sub(20)..]
    );
    assert!(out.len() <= 64 * 1024 + 64, "kept {} bytes", out.len());
    assert!(out.starts_with("[... "), "dropped bytes are announced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_command() {
    let dir = scratch("cancel");
    let k = kernel(Duration::from_millis(500)).await;
    let script = format!("echo $$ > {}/pid; exec sleep 30", dir.display());
    let h = k
        .submit(TaskSpec::for_role(
            "sh",
            json!({"command": "sh", "args": ["-c", script]}),
        ))
        .await
        .expect("submit");
    let pidfile = dir.join("pid");
    assert!(wait_until(Duration::from_secs(5), || pidfile.exists()
        && std::fs::read_to_string(&pidfile)
            .is_ok_and(|s| s.ends_with('\n'))));
    let pid = read_pid(&pidfile);
    assert!(k.cancel(h.id()));
    let r = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .expect("cancel is prompt");
    assert_eq!(r.status(), Status::Cancelled);
    assert!(
        wait_until(Duration::from_secs(3), || !pid_alive(pid)),
        "cancelled command {pid} still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_program_fails_without_retry_and_says_why() {
    let k = kernel(Duration::from_secs(1)).await;
    let r = k
        .run(
            TaskSpec::for_role("sh", json!({"command": "/no/such/program-xyz", "args": []}))
                .with_retry(RetryPolicy::fixed(3, Duration::ZERO)),
        )
        .await
        .expect("run");
    let Outcome::Failed(e) = &r.outcome else {
        panic!("{r:?}")
    };
    assert!(
        e.message.contains("cannot start `/no/such/program-xyz`"),
        "{e}"
    );
    assert_eq!(r.attempts.len(), 1, "a missing program is not retried");
    let r = k
        .run(TaskSpec::for_role("sh", json!({"args": ["x"]})))
        .await
        .expect("run");
    assert!(
        matches!(&r.outcome, Outcome::Failed(e) if e.message.contains("missing field `command`")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_cwd_and_exit_codes() {
    let dir = scratch("env");
    let k = kernel(Duration::from_secs(1)).await;
    let r = k
        .run(TaskSpec::for_role(
            "sh",
            json!({"command": "sh", "args": ["-c", "echo $HIVE_X $(pwd); exit 3"], "env": {"HIVE_X": "42"}, "cwd": dir}),
        ))
        .await
        .expect("run");
    let Outcome::Failed(e) = &r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(e.exit_code, Some(3));
    assert_eq!(r.exit_code(), Some(3));
    let stdout = e
        .detail
        .as_ref()
        .and_then(|d| d["stdout"].as_str())
        .unwrap_or_default();
    let canon = std::fs::canonicalize(&dir).expect("canon");
    assert_eq!(stdout.trim(), format!("42 {}", canon.display()));
}
