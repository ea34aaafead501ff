//! The tools facade (seed 004) on a real kernel: `execute_parallel` and `execute_graph` with
//! every `OrchestrationPolicy` knob (concurrency, retries and backoff, timeouts, fairness,
//! cost budget, cascading and isolated cancellation), the result's legacy JSON shape, and
//! graph checks (dependency order, cycles named). No timed assertions: the only timings are
//! lower bounds where a timeout or a backoff must have been waited for.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hive_compat::tools::{
    agent_fn, execute_graph, execute_parallel, Agent, AgentContext, AgentError, BackoffKind,
    Cancellation, Fairness, GraphError, JitterMode, OrchestrationPolicy, PermanentError,
    PolicyError, RetryConfig, Status, TaskGraph, TaskSpec, ToolsError, ToolsOrchestrator,
};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

/// An agent that runs `f(ctx, prompt)`.
struct CtxAgent<F> {
    ctx: AgentContext,
    f: Arc<F>,
}

#[async_trait]
impl<F, Fut> Agent for CtxAgent<F>
where
    F: Fn(AgentContext, String) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Value, AgentError>> + Send,
{
    async fn run(&self, prompt: &str, _params: &Map<String, Value>) -> Result<Value, AgentError> {
        (self.f)(self.ctx.clone(), prompt.to_string()).await
    }
}

/// A task whose agent runs `f(ctx, prompt)`.
fn task<F, Fut>(prompt: &str, f: F) -> TaskSpec
where
    F: Fn(AgentContext, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, AgentError>> + Send + 'static,
{
    let f = Arc::new(f);
    TaskSpec::new(
        move |ctx: &AgentContext| -> Box<dyn Agent> {
            Box::new(CtxAgent {
                ctx: ctx.clone(),
                f: f.clone(),
            })
        },
        prompt,
    )
}

fn ok_task(id: &str) -> TaskSpec {
    task(id, |_, p| async move { Ok(json!({ "done": p })) }).with_id(id)
}

/// A task that never ends by itself.
fn hanging(id: &str) -> TaskSpec {
    task(id, |_, _| std::future::pending()).with_id(id)
}

fn failing(id: &str) -> TaskSpec {
    task(id, |_, _| async { Err::<Value, AgentError>("boom".into()) }).with_id(id)
}

fn policy(max: usize) -> OrchestrationPolicy {
    OrchestrationPolicy::builder()
        .max_concurrency(max)
        .build()
        .expect("policy")
}

fn statuses(r: &hive_compat::tools::OrchestrationResult) -> Vec<(String, Status)> {
    r.tasks
        .iter()
        .map(|t| (t.id.to_string(), t.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_results_are_in_input_order_in_the_legacy_json_shape() {
    let tasks = vec![
        ok_task("a"),
        task("second", |_, p| async move {
            Ok(json!({ "echo": p, "artifacts": ["report.md"] }))
        }),
        ok_task("c"),
    ];
    let r = execute_parallel(tasks, &policy(2)).await.expect("run");
    assert_eq!(
        statuses(&r),
        vec![
            ("a".into(), Status::Succeeded),
            ("task-2".into(), Status::Succeeded),
            ("c".into(), Status::Succeeded)
        ]
    );
    let t = r.task("task-2").expect("task-2");
    assert_eq!(
        t.output,
        Some(json!({"echo": "second", "artifacts": ["report.md"]}))
    );
    assert_eq!(t.artifacts, [json!("report.md")]);
    assert_eq!(t.attempts, 1);
    assert!(t.agent.is_some() && t.started_at.is_some() && t.errors.is_empty());
    assert!(r.all_succeeded());

    // The same keys as `hive run --tasks --json`, plus the legacy `artifacts`.
    let v = serde_json::to_value(&r).expect("json");
    let keys: Vec<&str> = v["tasks"][0]
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "status",
            "started_at",
            "finished_at",
            "attempts",
            "exit_code",
            "errors",
            "agent",
            "duration_s",
            "artifacts",
            "output"
        ]
    );
    assert_eq!(v["tasks"][0]["status"], "succeeded");
    let m = v["metrics"].as_object().expect("metrics");
    assert!(m["wall_time"].is_f64() && m["speedup_vs_serial"].is_f64());
    assert_eq!(m["cost_estimate"], 0.0);
    assert!(v.get("merged").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_concurrency_is_bounded_and_reached() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    // Three at a time must be able to meet: a bound below 3 would never release the barrier.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let tasks = (0..12)
        .map(|_| {
            let (f, p, b) = (in_flight.clone(), peak.clone(), barrier.clone());
            task("x", move |_, _| {
                let (f, p, b) = (f.clone(), p.clone(), b.clone());
                async move {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    b.wait().await;
                    f.fetch_sub(1, Ordering::SeqCst);
                    Ok(Value::Null)
                }
            })
        })
        .collect();
    let r = execute_parallel(tasks, &policy(3)).await.expect("run");
    assert!(r.all_succeeded(), "{:?}", statuses(&r));
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_attempts_and_permanent_errors_stop_them() {
    let retry = OrchestrationPolicy::builder()
        .retry(RetryConfig::fixed(3, Duration::from_millis(1)))
        .build()
        .expect("policy");
    let flaky = task("flaky", |ctx, _| async move {
        if ctx.attempt < 3 {
            Err::<Value, AgentError>(format!("attempt {} failed", ctx.attempt).into())
        } else {
            Ok(json!(ctx.attempt))
        }
    })
    .with_id("flaky");
    let permanent = task("permanent", |_, _| async {
        Err::<Value, AgentError>(Box::new(PermanentError::new("no point retrying")))
    })
    .with_id("permanent");
    let r = execute_parallel(vec![flaky, failing("always"), permanent], &retry)
        .await
        .expect("run");
    let flaky = r.task("flaky").expect("flaky");
    assert_eq!(flaky.status, Status::Succeeded);
    assert_eq!(flaky.attempts, 3);
    assert_eq!(flaky.errors, ["attempt 1 failed", "attempt 2 failed"]);
    assert_eq!(flaky.output, Some(json!(3)));
    let always = r.task("always").expect("always");
    assert_eq!((always.status, always.attempts), (Status::Failed, 3));
    assert_eq!(always.errors, ["boom", "boom", "boom"]);
    let permanent = r.task("permanent").expect("permanent");
    assert_eq!((permanent.status, permanent.attempts), (Status::Failed, 1));
    assert_eq!(permanent.errors, ["no point retrying"]);
}

/// The start of every attempt of one always-failing task under `retry`.
async fn attempt_starts(retry: RetryConfig) -> Vec<Instant> {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let s = starts.clone();
    let t = task("x", move |_, _| {
        s.lock().push(Instant::now());
        async { Err::<Value, AgentError>("again".into()) }
    });
    let p = OrchestrationPolicy::builder()
        .retry(retry)
        .build()
        .expect("policy");
    let r = execute_parallel(vec![t], &p).await.expect("run");
    assert_eq!(r.tasks[0].attempts, retry.max_attempts);
    let v = starts.lock().clone();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_and_fixed_backoff_wait_at_least_their_delays() {
    let base = Duration::from_millis(40);
    let exp = attempt_starts(RetryConfig::exponential(4, base)).await;
    let gaps: Vec<Duration> = exp.windows(2).map(|w| w[1] - w[0]).collect();
    for (n, gap) in gaps.iter().enumerate() {
        let at_least = base * 2u32.pow(n as u32); // 40, 80, 160 ms
        assert!(*gap >= at_least, "exp gap {n}: {gap:?} < {at_least:?}");
    }
    let fixed = attempt_starts(RetryConfig::fixed(4, base)).await;
    assert_eq!(fixed.len(), 4);
    for w in fixed.windows(2) {
        assert!(
            w[1] - w[0] >= base,
            "fixed gap {:?} < {base:?}",
            w[1] - w[0]
        );
    }
    // The delays themselves, as the kernel applies them (no clock involved).
    let k = RetryConfig::fixed(4, base).to_kernel();
    assert_eq!([k.base_delay(1), k.base_delay(3)], [base, base]);
    let k = RetryConfig::exponential(4, base).to_kernel();
    assert_eq!([k.base_delay(1), k.base_delay(3)], [base, base * 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_apply_per_attempt_from_the_policy_or_the_task() {
    let p = OrchestrationPolicy::builder()
        .timeout_s(0.2)
        .build()
        .expect("policy");
    let t0 = Instant::now();
    let r = execute_parallel(vec![hanging("h"), ok_task("ok")], &p)
        .await
        .expect("run");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let h = r.task("h").expect("h");
    assert_eq!(h.status, Status::TimedOut);
    assert!(
        h.errors[0].starts_with("timed out after 0.200s"),
        "{:?}",
        h.errors
    );
    assert_eq!(r.task("ok").expect("ok").status, Status::Succeeded);

    // A task's own timeout wins over the policy's 300 s.
    let t0 = Instant::now();
    let r = execute_parallel(
        vec![hanging("own").with_timeout(Duration::from_millis(100))],
        &policy(1),
    )
    .await
    .expect("run");
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!(r.tasks[0].status, Status::TimedOut);
}

/// Runs tasks with these costs one at a time and returns the order they ran in.
async fn run_order(costs: &[Option<f64>], fairness: Fairness) -> Vec<String> {
    let order = Arc::new(Mutex::new(Vec::new()));
    let tasks = costs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let o = order.clone();
            let t = task("x", move |ctx, _| {
                o.lock().push(ctx.task_id.to_string());
                async { Ok(Value::Null) }
            })
            .with_id(format!("t{i}"));
            match c {
                Some(c) => t.with_cost(*c),
                None => t,
            }
        })
        .collect();
    let p = OrchestrationPolicy::builder()
        .max_concurrency(1)
        .fairness(fairness)
        .build()
        .expect("policy");
    let r = execute_parallel(tasks, &p).await.expect("run");
    assert!(r.all_succeeded());
    let v = order.lock().clone();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortest_first_runs_the_cheapest_first_round_robin_keeps_input_order() {
    let costs = [Some(5.0), Some(1.0), None, Some(3.0), Some(1.0)];
    assert_eq!(
        run_order(&costs, Fairness::ShortestFirst).await,
        ["t1", "t4", "t3", "t0", "t2"]
    );
    assert_eq!(
        run_order(&costs, Fairness::RoundRobin).await,
        ["t0", "t1", "t2", "t3", "t4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_budget_skips_the_tasks_that_would_pass_it_and_says_why() {
    let ran = Arc::new(AtomicU32::new(0));
    let tasks = [4.0, 4.0, 4.0, 1.0]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ran = ran.clone();
            task("x", move |_, _| {
                ran.fetch_add(1, Ordering::SeqCst);
                async { Ok(Value::Null) }
            })
            .with_id(format!("t{i}"))
            .with_param("cost", json!(c))
        })
        .collect();
    let p = OrchestrationPolicy::builder()
        .cost_budget(10.0)
        .build()
        .expect("policy");
    let r = execute_parallel(tasks, &p).await.expect("run");
    assert_eq!(
        r.tasks.iter().map(|t| t.status).collect::<Vec<_>>(),
        [
            Status::Succeeded,
            Status::Succeeded,
            Status::Skipped,
            Status::Succeeded
        ]
    );
    let skipped = &r.tasks[2];
    assert_eq!(
        skipped.errors,
        ["cost budget 10 would be exceeded (spent 8, this task costs 4)"]
    );
    assert_eq!((skipped.attempts, skipped.started_at), (0, None));
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert_eq!(r.metrics.cost_estimate, 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_budget_in_a_graph_is_charged_as_tasks_start() {
    // a -> b -> c, d alone; budget 10: a (4) and d (1) start, then b (4): 9; c (4) would
    // make 13.
    let g = TaskGraph::builder()
        .task(ok_task("a").with_cost(4.0))
        .task_after(ok_task("b").with_cost(4.0), ["a"])
        .task_after(ok_task("c").with_cost(4.0), ["b"])
        .task(ok_task("d").with_cost(1.0))
        .task_after(ok_task("e"), ["c"])
        .build()
        .expect("graph");
    let p = OrchestrationPolicy::builder()
        .cost_budget(10.0)
        .build()
        .expect("policy");
    let r = execute_graph(g, &p).await.expect("run");
    assert_eq!(
        statuses(&r),
        vec![
            ("a".into(), Status::Succeeded),
            ("b".into(), Status::Succeeded),
            ("c".into(), Status::Skipped),
            ("d".into(), Status::Succeeded),
            ("e".into(), Status::Skipped),
        ]
    );
    assert_eq!(
        r.task("c").expect("c").errors,
        ["cost budget 10 would be exceeded (spent 9, this task costs 4)"]
    );
    assert_eq!(
        r.task("e").expect("e").errors,
        ["skipped: dependency `c` was skipped"]
    );
    assert_eq!(r.metrics.cost_estimate, 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_starts_a_task_only_after_its_dependencies_ended() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let step = |id: &str| {
        let log = log.clone();
        task(id, move |ctx, _| {
            let log = log.clone();
            async move {
                log.lock().push(format!("start {}", ctx.task_id));
                tokio::task::yield_now().await;
                log.lock().push(format!("end {}", ctx.task_id));
                Ok(Value::Null)
            }
        })
        .with_id(id)
    };
    // A diamond plus a tail: a -> (b, c) -> d -> e.
    let g = TaskGraph::builder()
        .task_after(step("d"), ["b", "c"])
        .task_after(step("b"), ["a"])
        .task(step("a"))
        .task_after(step("e"), ["d"])
        .task_after(step("c"), ["a"])
        .build()
        .expect("graph");
    assert_eq!(g.dependencies("d"), ["b", "c"]);
    let r = execute_graph(g, &policy(4)).await.expect("run");
    assert!(r.all_succeeded(), "{:?}", statuses(&r));
    assert_eq!(
        r.tasks.iter().map(|t| &*t.id).collect::<Vec<_>>(),
        ["d", "b", "a", "e", "c"],
        "results in insertion order"
    );
    let log = log.lock().clone();
    let at = |s: &str| log.iter().position(|l| l == s).expect(s);
    for (dep, task) in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")] {
        assert!(
            at(&format!("end {dep}")) < at(&format!("start {task}")),
            "{task} started before {dep} ended: {log:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_are_refused_at_build_time_naming_the_cycle() {
    let err = TaskGraph::builder()
        .task_after(ok_task("a"), ["c"])
        .task_after(ok_task("b"), ["a"])
        .task_after(ok_task("c"), ["b"])
        .task(ok_task("free"))
        .build()
        .expect_err("cycle");
    assert_eq!(
        err,
        GraphError::Cycle {
            cycle: vec!["a".into(), "c".into(), "b".into(), "a".into()]
        }
    );
    assert_eq!(
        err.to_string(),
        "dependency cycle: a -> c -> b -> a (each task depends on the next)"
    );
    let err = TaskGraph::builder()
        .task_after(ok_task("self"), ["self"])
        .build()
        .expect_err("self cycle");
    assert!(err.to_string().contains("self -> self"), "{err}");
    let err = TaskGraph::builder()
        .task_after(ok_task("a"), ["nope"])
        .build()
        .expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "task `a` depends on `nope`, which is not a task of the graph"
    );
    let err = TaskGraph::builder()
        .task(ok_task("a"))
        .task(ok_task("a"))
        .build()
        .expect_err("duplicate");
    assert_eq!(err, GraphError::DuplicateId("a".into()));
    let err = execute_parallel(vec![ok_task("x"), ok_task("x")], &policy(1))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, ToolsError::Graph(GraphError::DuplicateId(ref id)) if id == "x"));
    let err = execute_parallel(vec![ok_task("x").with_cost(-1.0)], &policy(1))
        .await
        .expect_err("cost");
    assert!(err
        .to_string()
        .contains("cost must be a non-negative number"));
}

/// bad fails; dep depends on it; other is independent; tail depends on other. Under
/// `isolated`, other waits until bad failed, then succeeds.
fn branching_graph(isolated: bool) -> TaskGraph {
    let failed = Arc::new(tokio::sync::Notify::new());
    let f = failed.clone();
    let bad = task("bad", move |_, _| {
        f.notify_one();
        async { Err::<Value, AgentError>("bad failed".into()) }
    })
    .with_id("bad");
    let other = if isolated {
        task("other", move |_, _| {
            let failed = failed.clone();
            async move {
                failed.notified().await;
                Ok(json!("other done"))
            }
        })
        .with_id("other")
    } else {
        hanging("other")
    };
    TaskGraph::builder()
        .task(bad)
        .task_after(ok_task("dep"), ["bad"])
        .task_after(ok_task("dep2"), ["dep"])
        .task(other)
        .task_after(ok_task("tail"), ["other"])
        .build()
        .expect("graph")
}

fn with_cancellation(c: Cancellation) -> OrchestrationPolicy {
    OrchestrationPolicy::builder()
        .max_concurrency(4)
        .cancellation(c)
        .build()
        .expect("policy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_cascading_cancels_the_rest_isolated_skips_only_dependents() {
    let r = execute_graph(
        branching_graph(true),
        &with_cancellation(Cancellation::Isolated),
    )
    .await
    .expect("run");
    assert_eq!(
        statuses(&r),
        vec![
            ("bad".into(), Status::Failed),
            ("dep".into(), Status::Skipped),
            ("dep2".into(), Status::Skipped),
            ("other".into(), Status::Succeeded),
            ("tail".into(), Status::Succeeded),
        ]
    );
    assert_eq!(
        r.task("dep").expect("dep").errors,
        ["skipped: dependency `bad` failed"]
    );
    assert_eq!(
        r.task("dep2").expect("dep2").errors,
        ["skipped: dependency `dep` was skipped"]
    );

    let r = execute_graph(
        branching_graph(false),
        &with_cancellation(Cancellation::Cascading),
    )
    .await
    .expect("run");
    assert_eq!(
        statuses(&r),
        vec![
            ("bad".into(), Status::Failed),
            ("dep".into(), Status::Cancelled),
            ("dep2".into(), Status::Cancelled),
            ("other".into(), Status::Cancelled),
            ("tail".into(), Status::Cancelled),
        ]
    );
    let why = "cancelled: task `bad` failed (cascading cancellation)";
    for id in ["dep", "dep2", "other", "tail"] {
        let t = r.task(id).expect(id);
        assert_eq!(t.errors.last().map(String::as_str), Some(why), "{id}");
    }
    assert_eq!(r.task("dep").expect("dep").attempts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_cascading_cancels_the_others_isolated_lets_them_finish() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let tx = Arc::new(tx);
    let bad = task("bad", move |_, _| {
        let _ = tx.send(true);
        async { Err::<Value, AgentError>("bad failed".into()) }
    })
    .with_id("bad");
    let waiter = |id: &str| {
        let rx = rx.clone();
        task(id, move |_, _| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|failed| *failed).await;
                Ok(Value::Null)
            }
        })
        .with_id(id)
    };
    let tasks = vec![waiter("w1"), bad, waiter("w2")];
    let r = execute_parallel(tasks, &with_cancellation(Cancellation::Isolated))
        .await
        .expect("run");
    assert_eq!(
        statuses(&r),
        vec![
            ("w1".into(), Status::Succeeded),
            ("bad".into(), Status::Failed),
            ("w2".into(), Status::Succeeded),
        ]
    );

    let tasks = vec![hanging("h1"), failing("bad"), hanging("h2"), hanging("h3")];
    let p = OrchestrationPolicy::builder()
        .max_concurrency(2)
        .cancellation(Cancellation::Cascading)
        .build()
        .expect("policy");
    let r = execute_parallel(tasks, &p).await.expect("run");
    assert_eq!(
        statuses(&r),
        vec![
            ("h1".into(), Status::Cancelled),
            ("bad".into(), Status::Failed),
            ("h2".into(), Status::Cancelled),
            ("h3".into(), Status::Cancelled),
        ]
    );
    assert!(r.tasks[3].errors[0].contains("cascading cancellation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_agent_fails_its_task_only() {
    let tasks = vec![
        task("p", |_, _| async { panic!("boom at runtime") }).with_id("p"),
        TaskSpec::new(
            |_ctx: &AgentContext| -> Box<dyn Agent> { panic!("factory broke") },
            "f",
        )
        .with_id("f"),
        ok_task("ok"),
    ];
    let r = execute_parallel(tasks, &policy(3)).await.expect("run");
    let p = r.task("p").expect("p");
    assert_eq!(p.status, Status::Failed);
    assert_eq!(p.errors, ["agent panicked: boom at runtime"]);
    assert_eq!(
        r.task("f").expect("f").errors,
        ["agent panicked: factory broke"]
    );
    assert_eq!(r.task("ok").expect("ok").status, Status::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_is_reused_across_calls_with_its_shared_context() {
    let o = ToolsOrchestrator::new()
        .await
        .expect("orchestrator")
        .with_context(json!({"workspace": "/tmp/w"}));
    let probe = || {
        task("ctx", |ctx, prompt| async move {
            Ok(json!({
                "task": &*ctx.task_id,
                "attempt": ctx.attempt,
                "shared": *ctx.shared,
                "prompt": prompt,
            }))
        })
    };
    let (p2, p8) = (policy(2), policy(8));
    let (a, b) = tokio::join!(
        o.execute_parallel(vec![probe(), probe()], &p2),
        o.execute_graph(
            TaskGraph::builder()
                .task(probe().with_id("g1"))
                .task_after(probe().with_id("g2"), ["g1"])
                .build()
                .expect("graph"),
            &p8
        )
    );
    let (a, b) = (a.expect("parallel"), b.expect("graph"));
    assert_eq!(
        a.tasks[1].output,
        Some(
            json!({"task": "task-2", "attempt": 1, "shared": {"workspace": "/tmp/w"}, "prompt": "ctx"})
        )
    );
    assert_eq!(b.tasks[1].output.as_ref().expect("g2")["task"], "g2");
    // The pool grew to the larger concurrency and serves both.
    assert_eq!(o.kernel().agents_with_role(o.role()).len(), 8);
    let r = o
        .execute_parallel(Vec::new(), &policy(1))
        .await
        .expect("empty");
    assert!(r.tasks.is_empty() && r.all_succeeded());
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fn_receives_prompt_and_params() {
    let t = TaskSpec::new(
        |_| agent_fn(|prompt, params| async move { Ok(json!({"p": prompt, "n": params["n"]})) }),
        "hello",
    )
    .with_param("n", json!(7));
    let r = execute_parallel(vec![t], &policy(1)).await.expect("run");
    assert_eq!(r.tasks[0].output, Some(json!({"p": "hello", "n": 7})));
}

#[test]
fn policies_are_checked_by_the_builder_and_the_legacy_json() {
    let b = OrchestrationPolicy::builder;
    assert_eq!(
        b().max_concurrency(0).build(),
        Err(PolicyError::MaxConcurrency)
    );
    assert_eq!(b().timeout_s(0.0).build(), Err(PolicyError::Timeout(0.0)));
    assert!(matches!(
        b().timeout_s(f64::NAN).build(),
        Err(PolicyError::Timeout(_))
    ));
    assert_eq!(
        b().cost_budget(-1.0).build(),
        Err(PolicyError::CostBudget(-1.0))
    );
    assert_eq!(
        b().retry(RetryConfig::fixed(0, Duration::ZERO)).build(),
        Err(PolicyError::MaxAttempts)
    );
    assert_eq!(
        PolicyError::CostBudget(-1.0).to_string(),
        "cost_budget must be a non-negative number, found -1"
    );

    let legacy = json!({
        "max_concurrency": 8,
        "retry": {"max_attempts": 3, "backoff": "exp", "jitter": true},
        "timeout_s": 30,
        "cost_budget": 12.5,
        "fairness": "shortest_first",
        "cancellation": "cascading"
    });
    let p: OrchestrationPolicy = serde_json::from_value(legacy).expect("legacy policy");
    assert_eq!(p.max_concurrency(), 8);
    assert_eq!(p.retry().max_attempts, 3);
    assert_eq!(p.retry().backoff, BackoffKind::Exp);
    assert_eq!(p.retry().jitter, JitterMode::Full);
    assert_eq!(p.timeout(), Duration::from_secs(30));
    assert_eq!(p.cost_budget(), Some(12.5));
    assert_eq!(p.fairness(), Fairness::ShortestFirst);
    assert_eq!(p.cancellation(), Cancellation::Cascading);
    let back: OrchestrationPolicy =
        serde_json::from_value(serde_json::to_value(p).expect("json")).expect("round trip");
    assert_eq!(back, p);
    let defaults: OrchestrationPolicy = serde_json::from_value(json!({})).expect("defaults");
    assert_eq!(defaults, OrchestrationPolicy::default());

    for bad in [
        json!({"max_concurrency": 0}),
        json!({"timeout_s": -1}),
        json!({"cost_budget": -3}),
        json!({"retry": {"backoff": "linear"}}),
        json!({"retry": {"max_attempts": 0}}),
        json!({"fairness": "lottery"}),
        json!({"max_concurency": 4}),
    ] {
        assert!(
            serde_json::from_value::<OrchestrationPolicy>(bad.clone()).is_err(),
            "{bad} accepted"
        );
    }
}
