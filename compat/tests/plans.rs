//! The plan orchestrator facade (seed 001) on a real kernel, real processes and a real SQLite
//! state directory under the target directory: what the legacy document promises of
//! `execute_plan` (a run id; a succeeded run with its steps; dependency order; timeouts;
//! retries with their attempt count; `on_failure` abort / skip_dependents / continue;
//! `${VAR}` substitution and unknown variables refused; the safe-merge plan), of the run
//! records (`create_run` / `start_run` / `complete_run` and their state machine, across
//! orchestrators), of `list_runs(state)` and of the monitor (`get_active_runs`,
//! `get_run_progress` with `progress_pct`), and of the legacy command line through the `hive`
//! binary (`hive run plans/safe_merge.json --var BRANCH=main`: exit codes 0, 1, 2). No timed
//! assertions: the tests wait for conditions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hive_compat::plans::{
    Orchestrator, OrchestratorError, RunKind, RunStateName, RunStatus, StepStatus,
};
use hive_kernel::{ProblemKind, StepState};
use serde_json::{json, Value};

const NO_VARS: [(&str, &str); 0] = [];

/// A fresh directory under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("compat-plans")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// An orchestrator with its state in `dir/state`, running commands in `dir`.
fn orch(dir: &Path) -> Orchestrator {
    Orchestrator::builder()
        .state_dir(dir.join("state"))
        .workdir(dir)
        .build()
        .expect("build the orchestrator")
}

fn write_plan(dir: &Path, name: &str, plan: Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        serde_json::to_string_pretty(&plan).expect("plan as JSON"),
    )
    .expect("write the plan");
    p
}

fn step<'a>(steps: &'a [StepStatus], id: &str) -> &'a StepStatus {
    steps
        .iter()
        .find(|s| s.step_id == id)
        .unwrap_or_else(|| panic!("no step {id} in {steps:#?}"))
}

fn ids(runs: &[RunStatus]) -> Vec<&str> {
    runs.iter().map(|r| r.run_id.as_str()).collect()
}

/// Waits until `cond` holds (checked every 20 ms); panics after a minute.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_plan_returns_the_run_id_of_a_succeeded_run_with_its_steps() {
    // The legacy test_execute_simple_plan.
    let dir = scratch("simple");
    let o = orch(&dir);
    let p = write_plan(
        &dir,
        "test.json",
        json!({
            "plan_id": "TEST-001",
            "version": "1.0",
            "globals": {"max_concurrency": 1},
            "steps": [{"id": "echo", "command": "echo", "args": ["hello"], "depends_on": []}]
        }),
    );
    let run_id = o.execute_plan(&p, NO_VARS).await.expect("execute_plan");

    let run = o.get_run_status(&run_id).expect("get_run_status");
    assert_eq!(run.run_id, run_id);
    assert_eq!(run.state, RunStateName::Succeeded);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.kind, RunKind::Plan);
    assert_eq!(run.metadata["plan_id"], "TEST-001");
    assert_eq!(run.metadata["plan_version"], "1.0");
    assert_eq!(run.phase_id.as_deref(), Some("ORCHESTRATED"));
    assert!(run.started_at.is_some() && run.ended_at.is_some());
    // The legacy dict's field names.
    let v = serde_json::to_value(&run).expect("serialise");
    for k in [
        "run_id",
        "state",
        "created_at",
        "started_at",
        "ended_at",
        "metadata",
        "exit_code",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    assert_eq!(v["state"], "succeeded");

    let steps = o.get_run_steps(&run_id).expect("get_run_steps");
    assert_eq!(steps.len(), 1);
    let echo = step(&steps, "echo");
    assert_eq!(echo.state, StepState::Succeeded);
    assert_eq!(echo.attempts, 1);
    assert_eq!(echo.exit_code, Some(0));
    assert_eq!(echo.error_log, None);
    assert!(echo.started_at.is_some() && echo.ended_at.is_some());
    assert_eq!(echo.attempt_history.len(), 1);

    let events = o.get_run_events(&run_id).expect("get_run_events");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "run_started",
            "step_started",
            "step_finished",
            "run_finished"
        ]
    );
    assert!(events.iter().all(|e| e.run_id == run_id));
    assert_eq!(events[1].step_id.as_deref(), Some("echo"));
    assert_eq!(events[2].data["state"], "succeeded");
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));

    assert!(ids(&o.list_runs(None).expect("list_runs")).contains(&run_id.as_str()));
    // The same run is in the state directory for `hive runs` / `hive show`.
    assert_eq!(o.store().run(&run_id).expect("stored").plan_id, "TEST-001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_start_only_after_their_dependencies() {
    let dir = scratch("order");
    let o = orch(&dir);
    let append = |name: &str| json!(["-c", format!("echo {name} >> order.txt")]);
    // Listed out of order, with room for all of them at once.
    let p = write_plan(
        &dir,
        "order.json",
        json!({
            "plan_id": "ORDER",
            "version": 1,
            "globals": {"max_concurrency": 4},
            "steps": [
                {"id": "c", "command": "sh", "args": append("c"), "depends_on": ["b"]},
                {"id": "b", "command": "sh", "args": append("b"), "depends_on": ["a"]},
                {"id": "a", "command": "sh", "args": append("a")}
            ]
        }),
    );
    let run_id = o.execute_plan(&p, NO_VARS).await.expect("execute_plan");
    assert_eq!(
        o.get_run_status(&run_id).expect("status").state,
        RunStateName::Succeeded
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("order.txt")).expect("order.txt"),
        "a\nb\nc\n"
    );
    // And by the recorded times: each starts after its dependency ended.
    let steps = o.get_run_steps(&run_id).expect("steps");
    let attempts = o.store().attempts(&run_id).expect("attempts");
    let start = |id: &str| {
        attempts
            .iter()
            .find(|a| a.step_id == id)
            .map(|a| a.started_at)
            .unwrap_or_else(|| panic!("no attempt of {id}"))
    };
    let end = |id: &str| {
        o.store()
            .steps(&run_id)
            .expect("steps")
            .into_iter()
            .find(|s| s.step_id == id)
            .and_then(|s| s.finished_at)
            .unwrap_or_else(|| panic!("{id} has no end"))
    };
    for (dep, next) in [("a", "b"), ("b", "c")] {
        assert!(start(next) >= end(dep), "{next} started before {dep} ended");
        assert!(step(&steps, next).started_at >= step(&steps, dep).ended_at);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_timeout_is_killed_and_fails_the_run() {
    let dir = scratch("timeout");
    let o = orch(&dir);
    let p = write_plan(
        &dir,
        "timeout.json",
        json!({
            "plan_id": "TIMEOUT",
            "version": "1",
            "steps": [{"id": "slow", "command": "sleep", "args": ["30"], "timeout_sec": 1}]
        }),
    );
    let run_id = o.execute_plan(&p, NO_VARS).await.expect("execute_plan");
    let run = o.get_run_status(&run_id).expect("status");
    assert_eq!(run.state, RunStateName::Failed);
    assert_eq!(run.exit_code, Some(1));
    let steps = o.get_run_steps(&run_id).expect("steps");
    let slow = step(&steps, "slow");
    assert_eq!(slow.state, StepState::TimedOut);
    // The legacy orchestrator records a timeout as exit code -1 with an error.
    assert_eq!(slow.exit_code, Some(-1));
    assert!(slow.error_log.is_some(), "{slow:?}");
    assert_eq!(slow.attempt_history[0].state, "timed_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_attempts() {
    let dir = scratch("retries");
    let o = orch(&dir);
    let p = write_plan(
        &dir,
        "retries.json",
        json!({
            "plan_id": "RETRIES",
            "version": "1",
            "steps": [
                // Fails twice, then succeeds (a counter file).
                {"id": "flaky", "command": "sh", "retries": 2,
                 "args": ["-c", "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; test $n -ge 3"]},
                {"id": "hopeless", "command": "sh", "args": ["-c", "exit 3"], "retries": 1,
                 "on_failure": "continue", "critical": false}
            ]
        }),
    );
    let run_id = o.execute_plan(&p, NO_VARS).await.expect("execute_plan");
    assert_eq!(
        o.get_run_status(&run_id).expect("status").state,
        RunStateName::Succeeded
    );
    let steps = o.get_run_steps(&run_id).expect("steps");
    let flaky = step(&steps, "flaky");
    assert_eq!(flaky.state, StepState::Succeeded);
    assert_eq!(flaky.attempts, 3);
    let states: Vec<&str> = flaky
        .attempt_history
        .iter()
        .map(|a| a.state.as_str())
        .collect();
    assert_eq!(states, ["failed", "failed", "succeeded"]);
    let hopeless = step(&steps, "hopeless");
    assert_eq!(hopeless.state, StepState::Failed);
    assert_eq!(hopeless.attempts, 2);
    assert_eq!(hopeless.exit_code, Some(3));
    // The legacy step_retry events, with the attempt that failed.
    let retries: Vec<(Option<String>, Value)> = o
        .get_run_events(&run_id)
        .expect("events")
        .into_iter()
        .filter(|e| e.event_type == "step_retrying")
        .map(|e| (e.step_id, e.data["attempt"].clone()))
        .collect();
    assert!(retries.contains(&(Some("flaky".into()), json!(1))));
    assert!(retries.contains(&(Some("flaky".into()), json!(2))));
    assert!(retries.contains(&(Some("hopeless".into()), json!(1))));
    assert_eq!(retries.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_abort_skip_dependents_and_continue() {
    let dir = scratch("on-failure");
    let o = orch(&dir);
    let fail = json!(["-c", "exit 1"]);

    // abort (the default): steps not started are cancelled, the run fails.
    let p = write_plan(
        &dir,
        "abort.json",
        json!({"plan_id": "ABORT", "version": "1", "steps": [
            {"id": "bad", "command": "sh", "args": fail},
            {"id": "after", "command": "true", "depends_on": ["bad"]}
        ]}),
    );
    let id = o.execute_plan(&p, NO_VARS).await.expect("abort plan");
    assert_eq!(
        o.get_run_status(&id).expect("status").state,
        RunStateName::Failed
    );
    let steps = o.get_run_steps(&id).expect("steps");
    assert_eq!(step(&steps, "bad").state, StepState::Failed);
    assert_eq!(step(&steps, "after").state, StepState::Cancelled);

    // skip_dependents: everything downstream is skipped, the rest goes on.
    let p = write_plan(
        &dir,
        "skip.json",
        json!({"plan_id": "SKIP", "version": "1", "steps": [
            {"id": "bad", "command": "sh", "args": fail, "on_failure": "skip_dependents"},
            {"id": "child", "command": "true", "depends_on": ["bad"]},
            {"id": "grandchild", "command": "true", "depends_on": ["child"]},
            {"id": "other", "command": "true"}
        ]}),
    );
    let id = o.execute_plan(&p, NO_VARS).await.expect("skip plan");
    let steps = o.get_run_steps(&id).expect("steps");
    assert_eq!(step(&steps, "child").state, StepState::Skipped);
    assert_eq!(step(&steps, "grandchild").state, StepState::Skipped);
    assert_eq!(step(&steps, "other").state, StepState::Succeeded);
    assert!(step(&steps, "child")
        .error_log
        .as_deref()
        .is_some_and(|e| e.contains("bad")));
    // `bad` is critical (the default): the run fails.
    assert_eq!(
        o.get_run_status(&id).expect("status").state,
        RunStateName::Failed
    );

    // continue: dependents run as if it had succeeded; not critical, the run succeeds.
    let p = write_plan(
        &dir,
        "continue.json",
        json!({"plan_id": "CONTINUE", "version": "1", "steps": [
            {"id": "bad", "command": "sh", "args": fail, "on_failure": "continue", "critical": false},
            {"id": "child", "command": "true", "depends_on": ["bad"]}
        ]}),
    );
    let id = o.execute_plan(&p, NO_VARS).await.expect("continue plan");
    let steps = o.get_run_steps(&id).expect("steps");
    assert_eq!(step(&steps, "bad").state, StepState::Failed);
    assert_eq!(step(&steps, "child").state, StepState::Succeeded);
    assert_eq!(
        o.get_run_status(&id).expect("status").state,
        RunStateName::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_are_substituted_and_an_unknown_one_is_refused() {
    let dir = scratch("vars");
    let o = orch(&dir);
    let p = write_plan(
        &dir,
        "vars.json",
        json!({"plan_id": "VARS", "version": "1", "vars": {"BRANCH": "feature/x"}, "steps": [
            {"id": "show", "command": "sh", "args": ["-c", "printf %s '${BRANCH}' > branch.txt"]}
        ]}),
    );
    let id = o
        .execute_plan(&p, [("BRANCH", "main")])
        .await
        .expect("execute_plan");
    assert_eq!(
        std::fs::read_to_string(dir.join("branch.txt")).expect("branch.txt"),
        "main"
    );
    let run = o.get_run_status(&id).expect("status");
    assert_eq!(run.metadata["variables"]["BRANCH"], "main");
    // The plan's default when no variable is given.
    o.execute_plan(&p, NO_VARS).await.expect("execute_plan");
    assert_eq!(
        std::fs::read_to_string(dir.join("branch.txt")).expect("branch.txt"),
        "feature/x"
    );

    // An unknown variable is refused before anything runs, with its place.
    let runs_before = o.list_runs(None).expect("list").len();
    let bad = write_plan(
        &dir,
        "unknown.json",
        json!({"plan_id": "UNKNOWN", "version": "1", "steps": [
            {"id": "show", "command": "echo", "args": ["${NOPE}"]}
        ]}),
    );
    match o.execute_plan(&bad, NO_VARS).await {
        Err(OrchestratorError::Plan(e)) => {
            let p = &e.problems()[0];
            assert_eq!(p.kind, ProblemKind::UnknownVariable, "{e}");
            assert!(p.line.is_some(), "{e}");
            assert!(e.to_string().contains("NOPE"), "{e}");
        }
        other => panic!("expected an unknown variable error, got {other:?}"),
    }
    assert_eq!(o.list_runs(None).expect("list").len(), runs_before);
    // A variable name that cannot be one.
    assert!(matches!(
        o.execute_plan(&p, [("1BAD", "x")]).await,
        Err(OrchestratorError::InvalidVariable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_records_follow_the_legacy_state_machine() {
    let dir = scratch("records");
    let o = orch(&dir);
    let meta = json!({"plan_id": "MANUAL", "owner": "gui"});
    let id = o
        .create_run("proj", "PHASE-1", meta.clone())
        .await
        .expect("create_run");
    let s = o.get_run_status(&id).expect("status");
    assert_eq!(s.state, RunStateName::Pending);
    assert_eq!(s.kind, RunKind::RunRecord);
    assert_eq!(s.project_id.as_deref(), Some("proj"));
    assert_eq!(s.phase_id.as_deref(), Some("PHASE-1"));
    assert_eq!(s.metadata, meta);
    assert_eq!(s.exit_code, None);
    assert!(s.started_at.is_none());
    assert!(ids(&o.monitor().get_active_runs().expect("active")).contains(&id.as_str()));

    o.start_run(&id).await.expect("start_run");
    let s = o.get_run_status(&id).expect("status");
    assert_eq!(s.state, RunStateName::Running);
    assert!(s.started_at.is_some());
    // Illegal moves are refused, typed.
    assert!(matches!(
        o.start_run(&id).await,
        Err(OrchestratorError::InvalidTransition {
            from: RunStateName::Running,
            ..
        })
    ));
    assert!(matches!(
        o.complete_run(&id, "running", 0).await,
        Err(OrchestratorError::InvalidStatus(_))
    ));
    o.complete_run(&id, "succeeded", 0)
        .await
        .expect("complete_run");
    let s = o.get_run_status(&id).expect("status");
    assert_eq!(s.state, RunStateName::Succeeded);
    assert_eq!(s.exit_code, Some(0));
    assert!(s.ended_at.is_some());
    assert!(matches!(
        o.complete_run(&id, "failed", 1).await,
        Err(OrchestratorError::InvalidTransition {
            from: RunStateName::Succeeded,
            ..
        })
    ));
    assert!(matches!(
        o.start_run(&id).await,
        Err(OrchestratorError::InvalidTransition {
            from: RunStateName::Succeeded,
            ..
        })
    ));
    assert!(o.get_run_steps(&id).expect("steps").is_empty());
    let types: Vec<String> = o
        .get_run_events(&id)
        .expect("events")
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, ["run_started", "run_finished"]);

    // Completing a run that did not start is refused; failed keeps its exit code.
    let failed = o
        .create_run("proj", "PHASE-2", json!({}))
        .await
        .expect("create_run");
    assert!(matches!(
        o.complete_run(&failed, "succeeded", 0).await,
        Err(OrchestratorError::InvalidTransition {
            from: RunStateName::Pending,
            ..
        })
    ));
    o.start_run(&failed).await.expect("start_run");
    o.complete_run(&failed, "failed", 3)
        .await
        .expect("complete_run");
    let s = o.get_run_status(&failed).expect("status");
    assert_eq!((s.state, s.exit_code), (RunStateName::Failed, Some(3)));

    let cancelled = o
        .create_run("proj", "PHASE-3", json!({}))
        .await
        .expect("create_run");
    o.start_run(&cancelled).await.expect("start_run");
    o.complete_run(&cancelled, "cancelled", 130)
        .await
        .expect("complete_run");
    let s = o.get_run_status(&cancelled).expect("status");
    assert_eq!((s.state, s.exit_code), (RunStateName::Cancelled, Some(130)));

    // Runs of plans are moved by their steps, run records by these calls.
    let p = write_plan(
        &dir,
        "one.json",
        json!({"plan_id": "ONE", "version": "1", "steps": [{"id": "a", "command": "true"}]}),
    );
    let plan_run = o.execute_plan(&p, NO_VARS).await.expect("execute_plan");
    assert!(matches!(
        o.complete_run(&plan_run, "succeeded", 0).await,
        Err(OrchestratorError::NotARunRecord(_))
    ));
    assert!(matches!(
        o.resume_run(&id).await,
        Err(OrchestratorError::NotAPlanRun(_))
    ));

    // list_runs(state) filters.
    let pending = o
        .create_run("proj", "PHASE-4", json!({}))
        .await
        .expect("create_run");
    let succeeded = o
        .list_runs(Some(RunStateName::Succeeded))
        .expect("list_runs");
    assert_eq!(ids(&succeeded), [id.as_str(), plan_run.as_str()]);
    assert_eq!(
        ids(&o.list_runs(Some(RunStateName::Failed)).expect("list_runs")),
        [failed.as_str()]
    );
    assert_eq!(
        ids(&o
            .list_runs(Some(RunStateName::Cancelled))
            .expect("list_runs")),
        [cancelled.as_str()]
    );
    assert_eq!(
        ids(&o.list_runs(Some(RunStateName::Pending)).expect("list_runs")),
        [pending.as_str()]
    );
    assert_eq!(o.list_runs(None).expect("list_runs").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orchestrator_goes_on_with_run_records_left_behind() {
    let dir = scratch("records-adopted");
    let a = orch(&dir);
    let pending = a
        .create_run("proj", "LEFT-PENDING", json!({"n": 1}))
        .await
        .expect("create_run");
    let running = a
        .create_run("proj", "LEFT-RUNNING", json!({"n": 2}))
        .await
        .expect("create_run");
    a.start_run(&running).await.expect("start_run");
    drop(a);

    let b = orch(&dir);
    wait_for("the dropped orchestrator to let go of its runs", || {
        !b.store().is_running_now(&pending) && !b.store().is_running_now(&running)
    })
    .await;
    assert_eq!(
        b.get_run_status(&pending).expect("status").state,
        RunStateName::Interrupted
    );
    assert_eq!(
        b.get_run_status(&running).expect("status").state,
        RunStateName::Interrupted
    );
    assert_eq!(
        b.list_runs(Some(RunStateName::Interrupted))
            .expect("list_runs")
            .len(),
        2
    );
    // The state machine still holds: a pending record must start first.
    assert!(matches!(
        b.complete_run(&pending, "succeeded", 0).await,
        Err(OrchestratorError::InvalidTransition {
            from: RunStateName::Pending,
            ..
        })
    ));
    b.start_run(&pending).await.expect("start_run");
    assert_eq!(
        b.get_run_status(&pending).expect("status").state,
        RunStateName::Running
    );
    b.complete_run(&pending, "succeeded", 0)
        .await
        .expect("complete_run");
    b.complete_run(&running, "failed", 2)
        .await
        .expect("complete_run");
    let s = b.get_run_status(&pending).expect("status");
    assert_eq!((s.state, s.exit_code), (RunStateName::Succeeded, Some(0)));
    assert_eq!(s.metadata, json!({"n": 1}));
    let s = b.get_run_status(&running).expect("status");
    assert_eq!((s.state, s.exit_code), (RunStateName::Failed, Some(2)));
    assert!(s.resumes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_shows_active_runs_and_their_progress() {
    let dir = scratch("monitor");
    let o = orch(&dir);
    let monitor = o.monitor();
    let p = write_plan(
        &dir,
        "gated.json",
        json!({"plan_id": "GATED", "version": "1", "steps": [
            {"id": "a", "command": "true"},
            {"id": "b", "command": "sh", "depends_on": ["a"],
             "args": ["-c", "while [ ! -f gate ]; do sleep 0.02; done"]},
            {"id": "c", "command": "true", "depends_on": ["b"]}
        ]}),
    );
    let handle = o.start_plan(&p, NO_VARS).await.expect("start_plan");
    let id = handle.run_id().to_string();
    wait_for("step b to run", || {
        o.get_run_steps(&id)
            .is_ok_and(|s| step(&s, "b").state == StepState::Running)
    })
    .await;
    let active = monitor.get_active_runs().expect("get_active_runs");
    assert_eq!(ids(&active), [id.as_str()]);
    assert_eq!(active[0].state, RunStateName::Running);
    let progress = monitor.get_run_progress(&id).expect("get_run_progress");
    // One of three steps ended: int(1 / 3 * 100).
    assert_eq!(progress.progress_pct, 33);
    assert_eq!(progress.run.run_id, id);
    assert_eq!(progress.steps.len(), 3);
    assert!(progress
        .timeline
        .iter()
        .any(|e| e.event_type == "step_started" && e.step_id.as_deref() == Some("b")));
    let v = serde_json::to_value(&progress).expect("serialise");
    for k in ["run", "steps", "timeline", "progress_pct"] {
        assert!(v.get(k).is_some(), "{k} missing");
    }

    std::fs::write(dir.join("gate"), "").expect("open the gate");
    let end = handle.wait().await.expect("wait");
    assert_eq!(end.state, RunStateName::Succeeded);
    assert_eq!(
        monitor
            .get_run_progress(&id)
            .expect("progress")
            .progress_pct,
        100
    );
    assert!(monitor.get_active_runs().expect("active").is_empty());

    // Failed, skipped and Hive's other end states count as done.
    let p = write_plan(
        &dir,
        "ends.json",
        json!({"plan_id": "ENDS", "version": "1", "steps": [
            {"id": "ok", "command": "true"},
            {"id": "bad", "command": "false", "on_failure": "continue", "critical": false},
            {"id": "never", "command": "true", "when": "false"},
            {"id": "slow", "command": "sleep", "args": ["30"], "timeout_sec": 0.5,
             "critical": false, "on_failure": "continue"}
        ]}),
    );
    let id = o.execute_plan(&p, NO_VARS).await.expect("execute_plan");
    let progress = monitor.get_run_progress(&id).expect("progress");
    let states: Vec<StepState> = progress.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [
            StepState::Succeeded,
            StepState::Failed,
            StepState::Skipped,
            StepState::TimedOut
        ]
    );
    assert_eq!(progress.progress_pct, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safe_merge_plan_runs_through_execute_plan() {
    // The legacy success criterion: "safe merge completes successfully via execute_plan()".
    let dir = scratch("safe-merge");
    let o = orch(&dir);
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans/safe_merge.json");
    let id = o
        .execute_plan(&plan, [("BRANCH", "main")])
        .await
        .expect("execute_plan");
    let run = o.get_run_status(&id).expect("status");
    assert_eq!(run.state, RunStateName::Succeeded, "{run:#?}");
    assert_eq!(run.project_id.as_deref(), Some("hive-examples"));
    assert_eq!(run.metadata["plan_id"], "PLAN-SAFE-MERGE");
    let steps = o.get_run_steps(&id).expect("steps");
    assert_eq!(steps.len(), 12);
    assert_eq!(step(&steps, "rollback").state, StepState::Skipped);
    assert!(steps
        .iter()
        .filter(|s| s.step_id != "rollback")
        .all(|s| s.state == StepState::Succeeded));
    assert!(step(&steps, "record_result")
        .outputs
        .as_ref()
        .is_some_and(|o| o["merged"].as_str().is_some_and(|h| h.len() >= 40)));
}

// ------------------------------------------------------------------ the command line --

/// The `hive` binary of this build (built with the workspace: `cargo xtask test`, or
/// `cargo build --workspace`).
fn hive_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/hive
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("hive"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

fn hive(cwd: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(hive_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("HIVE_STATE_DIR")
        .output()
        .expect("run hive");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_legacy_command_line_has_the_same_flags_and_exit_codes() {
    // `python -m core.engine.orchestrator plans/safe_merge.json --var BRANCH=main` becomes
    // `hive run examples/plans/safe_merge.json --var BRANCH=main`.
    let dir = scratch("cli");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf();
    let plan = root.join("examples/plans/safe_merge.json");
    let plan = plan.to_str().expect("utf-8 path");
    let state = dir.join("state");
    let state = state.to_str().expect("utf-8 path");

    let (code, err) = hive(
        &dir,
        &[
            "run",
            plan,
            "--var",
            "BRANCH=main",
            "--state-dir",
            state,
            "-q",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines().next().is_some_and(|l| l.starts_with("run ")),
        "the run id comes first: {err}"
    );

    // A run that fails: exit 1.
    let failing = write_plan(
        &dir,
        "failing.json",
        json!({"plan_id": "FAILING", "version": "1", "steps": [{"id": "no", "command": "false"}]}),
    );
    let failing = failing.to_str().expect("utf-8 path");
    let (code, err) = hive(&dir, &["run", failing, "--state-dir", state, "-q"]);
    assert_eq!(code, 1, "{err}");

    // Bad input: exit 2 (an unknown variable, a malformed --var, a missing plan).
    let unknown = write_plan(
        &dir,
        "unknown.json",
        json!({"plan_id": "U", "version": "1", "steps": [{"id": "a", "command": "echo ${NOPE}"}]}),
    );
    let unknown = unknown.to_str().expect("utf-8 path");
    let (code, err) = hive(&dir, &["run", unknown, "--state-dir", state, "-q"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("NOPE"), "{err}");
    let (code, err) = hive(
        &dir,
        &["run", plan, "--var", "BRANCH", "--state-dir", state],
    );
    assert_eq!(code, 2, "{err}");
    let (code, err) = hive(
        &dir,
        &["run", "plans/safe_merge.json", "--state-dir", state],
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_facade_is_send() {
    // Callers spawn its futures on a multi-threaded runtime.
    fn send<T: Send>(_: &T) {}
    let dir = scratch("send");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let o = orch(&dir);
    send(&o);
    send(&o.execute_plan(dir.join("p.json"), NO_VARS));
    send(&o.start_plan(dir.join("p.json"), NO_VARS));
    send(&o.resume_run("x"));
    send(&o.create_run("p", "q", json!({})));
    send(&o.start_run("x"));
    send(&o.complete_run("x", "succeeded", 0));
    send(&o.monitor());
}
