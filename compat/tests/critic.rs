//! The critic facade (seed 000) on a real kernel: `run_all` with success, timeout and error
//! templates, per-critic timeouts, failure isolation (errors and panics), every hook (cache
//! hits, degraded results, hooks that fail or panic), concurrency, and the blocking
//! `run_all_sync`. No timed assertions: the only timings are lower bounds where a timeout must
//! have been waited for.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hive_compat::critic::{
    critic_fn, Critic, CriticError, CriticFailure, CriticResult, ErrorInfo, ExecutionStatus,
    HookError, OrchestratorHooks, OrchestratorV2, SetupError, SyncError,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

fn scorer(score: i64) -> Arc<dyn Critic> {
    critic_fn(move |input: Arc<Value>| async move { Ok(json!({"score": score, "input": *input})) })
}

fn hanging() -> Arc<dyn Critic> {
    critic_fn(|_| std::future::pending())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_returns_one_success_per_critic_with_the_legacy_fields() {
    let o = OrchestratorV2::new([("test", scorer(7)), ("other", scorer(3))])
        .await
        .expect("orchestrator");
    let results = o.run_all(json!({"text": "hi"})).await;
    assert_eq!(results.len(), 2);
    let r = &results["test"];
    assert_eq!(r.execution_status, ExecutionStatus::Success);
    assert_eq!(r.result, Some(json!({"score": 7, "input": {"text": "hi"}})));
    assert!(r.duration_ms >= 0.0 && r.error.is_none() && !r.cached && !r.degraded);
    assert_eq!(
        serde_json::to_value(r).expect("json"),
        json!({
            "critic": "test",
            "execution_status": "success",
            "result": {"score": 7, "input": {"text": "hi"}},
            "duration_ms": r.duration_ms,
            "error": null,
            "cached": false,
            "degraded": false,
        })
    );
    // Each critic is a kernel agent of its own role.
    let role = o.role_of("test").expect("role");
    assert_eq!(o.kernel().agents_with_role(role).len(), 1);
    assert_eq!(o.critic_names().collect::<Vec<_>>(), ["test", "other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critics_run_concurrently() {
    // Each critic waits for the other two: run one after another, none would ever finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let mut b = OrchestratorV2::builder();
    for name in ["a", "b", "c"] {
        let barrier = barrier.clone();
        b = b.critic(name, move |_| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                Ok(json!("met"))
            }
        });
    }
    let o = b.build().await.expect("orchestrator");
    let results = o.run_all(Value::Null).await;
    assert!(
        results.values().all(CriticResult::is_success),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critic_timing_out_returns_the_timeout_template_while_the_others_succeed() {
    let o = OrchestratorV2::builder()
        .shared_critic("slow", hanging())
        .shared_critic("fast", scorer(1))
        .shared_critic("faster", scorer(2))
        .timeout("slow", Duration::from_millis(200))
        .build()
        .await
        .expect("orchestrator");
    let results = o.run_all(json!({})).await;
    let slow = &results["slow"];
    assert_eq!(
        *slow,
        CriticResult::timeout_template("slow", Duration::from_millis(200), slow.duration_ms)
    );
    assert!(slow.duration_ms >= 200.0, "{}", slow.duration_ms);
    assert_eq!(
        serde_json::to_value(slow).expect("json"),
        json!({
            "critic": "slow",
            "execution_status": "timeout",
            "result": null,
            "duration_ms": slow.duration_ms,
            "error": {"type": "TimeoutError", "message": "critic `slow` timed out after 0.2 s"},
            "cached": false,
            "degraded": false,
        })
    );
    assert!(results["fast"].is_success() && results["faster"].is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_critic_timeouts_override_the_default() {
    let patient = critic_fn(|_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(json!("took its time"))
    });
    let o = OrchestratorV2::builder()
        .default_timeout(Duration::from_millis(150))
        .shared_critic("patient", patient)
        .shared_critic("hasty", hanging())
        .timeout("patient", Duration::from_secs(60))
        .build()
        .await
        .expect("orchestrator");
    assert_eq!(o.timeout_of("hasty"), Some(Duration::from_millis(150)));
    let results = o.run_all(Value::Null).await;
    assert_eq!(results["patient"].result, Some(json!("took its time")));
    assert_eq!(results["hasty"].execution_status, ExecutionStatus::Timeout);
    assert!(results["hasty"].duration_ms >= 150.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_panics_become_the_error_template_and_never_fail_the_run() {
    let o = OrchestratorV2::builder()
        .critic("typed", |_| async {
            Err::<Value, _>(CriticError::new("ValueError", "bad input"))
        })
        .critic("parse", |_| async {
            let n: i64 = "seven".parse()?;
            Ok(json!(n))
        })
        .critic("panics", |_| async { panic!("critic blew up") })
        .shared_critic("fine", scorer(5))
        .build()
        .await
        .expect("orchestrator");
    for _ in 0..2 {
        // The kernel and the other critics survive a panic: a second run behaves the same.
        let results = o.run_all(Value::Null).await;
        let typed = &results["typed"];
        assert_eq!(
            *typed,
            CriticResult::error_template(
                "typed",
                ErrorInfo {
                    error_type: "ValueError".into(),
                    message: "bad input".into()
                },
                typed.duration_ms
            )
        );
        let parse = results["parse"].error.as_ref().expect("parse error");
        assert_eq!(parse.error_type, "ParseIntError");
        assert_eq!(parse.message, "invalid digit found in string");
        let panics = &results["panics"];
        assert_eq!(panics.execution_status, ExecutionStatus::Error);
        assert_eq!(
            panics.error,
            Some(ErrorInfo {
                error_type: "Panic".into(),
                message: "critic panicked: critic blew up".into()
            })
        );
        assert!(results["fine"].is_success());
        let json = serde_json::to_value(typed).expect("json");
        assert_eq!(
            json["error"],
            json!({"type": "ValueError", "message": "bad input"})
        );
        assert_eq!(json["result"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_post_hook_does_not_fail_run_all() {
    let hooks = OrchestratorHooks::new().post_execution(|name: Arc<str>, _r, _ms| async move {
        match &*name {
            "a" => Err::<(), HookError>("evidence store is down".into()),
            _ => panic!("post hook panicked"),
        }
    });
    let o = OrchestratorV2::builder()
        .shared_critic("a", scorer(1))
        .shared_critic("b", scorer(2))
        .hooks(hooks)
        .build()
        .await
        .expect("orchestrator");
    let results = o.run_all(Value::Null).await;
    assert!(results["a"].is_success() && results["b"].is_success());
    assert_eq!(
        results["a"].hook_errors,
        ["post_execution: evidence store is down"]
    );
    assert_eq!(
        results["b"].hook_errors,
        ["post_execution: panicked: post hook panicked"]
    );
    let json = serde_json::to_value(&results["a"]).expect("json");
    assert_eq!(
        json["hook_errors"],
        json!(["post_execution: evidence store is down"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_from_the_pre_hook_skips_the_critic() {
    let runs = Arc::new(AtomicU32::new(0));
    let counting = |runs: Arc<AtomicU32>| {
        critic_fn(move |_| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(json!("fresh"))
            }
        })
    };
    let posted = Arc::new(Mutex::new(Vec::new()));
    let p = posted.clone();
    let hooks = OrchestratorHooks::new()
        .pre_execution(|name: Arc<str>, input: Arc<Value>| async move {
            Ok((&*name == "cached").then(|| json!({"from": "cache", "input": *input})))
        })
        .post_execution(move |name: Arc<str>, r: Arc<CriticResult>, ms: f64| {
            let p = p.clone();
            async move {
                p.lock()
                    .push((name.to_string(), r.cached, r.duration_ms == ms));
                Ok(())
            }
        });
    let o = OrchestratorV2::builder()
        .shared_critic("cached", counting(runs.clone()))
        .shared_critic("live", counting(runs.clone()))
        .hooks(hooks)
        .build()
        .await
        .expect("orchestrator");
    let results = o.run_all(json!(42)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only `live` ran");
    let cached = &results["cached"];
    assert_eq!(cached.execution_status, ExecutionStatus::Success);
    assert!(cached.cached);
    assert_eq!(cached.result, Some(json!({"from": "cache", "input": 42})));
    assert!(!results["live"].cached);
    assert_eq!(results["live"].result, Some(json!("fresh")));
    let mut posted = posted.lock().clone();
    posted.sort();
    assert_eq!(
        posted,
        [("cached".into(), true, true), ("live".into(), false, true)],
        "post_execution sees every final result once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_hook_is_a_cache_miss() {
    let hooks = OrchestratorHooks::new().pre_execution(|name: Arc<str>, _| async move {
        if &*name == "a" {
            Err::<Option<Value>, HookError>("cache unreachable".into())
        } else {
            panic!("pre hook panicked")
        }
    });
    let o = OrchestratorV2::builder()
        .shared_critic("a", scorer(1))
        .shared_critic("b", scorer(2))
        .hooks(hooks)
        .build()
        .await
        .expect("orchestrator");
    let results = o.run_all(Value::Null).await;
    for (name, why) in [
        ("a", "pre_execution: cache unreachable"),
        ("b", "pre_execution: panicked: pre hook panicked"),
    ] {
        let r = &results[name];
        assert!(r.is_success() && !r.cached, "{name}: {r:?}");
        assert_eq!(r.hook_errors, [why]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_hook_can_supply_a_degraded_result() {
    let told = Arc::new(Mutex::new(Vec::new()));
    let t = told.clone();
    let hooks = OrchestratorHooks::new().on_failure(move |name: Arc<str>, f: CriticFailure| {
        let t = t.clone();
        async move {
            t.lock()
                .push((name.to_string(), f.status, f.error.error_type.clone()));
            match &*name {
                "broken_hook" => Err::<Option<Value>, HookError>("degradation failed".into()),
                "no_fallback" => Ok(None),
                _ => Ok(Some(
                    json!({"score": 0, "degraded_from": f.status.as_str()}),
                )),
            }
        }
    });
    let erroring = || critic_fn(|_| async { Err(CriticError::msg("model unavailable")) });
    let o = OrchestratorV2::builder()
        .shared_critic("slow", hanging())
        .shared_critic("erroring", erroring())
        .shared_critic("no_fallback", erroring())
        .shared_critic("broken_hook", erroring())
        .shared_critic("fine", scorer(9))
        .timeout("slow", Duration::from_millis(100))
        .hooks(hooks)
        .build()
        .await
        .expect("orchestrator");
    let results = o.run_all(Value::Null).await;

    let slow = &results["slow"];
    assert_eq!(
        slow.execution_status,
        ExecutionStatus::Timeout,
        "status kept"
    );
    assert!(slow.degraded);
    assert_eq!(
        slow.result,
        Some(json!({"score": 0, "degraded_from": "timeout"}))
    );
    assert_eq!(
        slow.error.as_ref().expect("error").error_type,
        "TimeoutError"
    );

    let erroring = &results["erroring"];
    assert_eq!(erroring.execution_status, ExecutionStatus::Error);
    assert!(erroring.degraded);
    assert_eq!(
        erroring.result,
        Some(json!({"score": 0, "degraded_from": "error"}))
    );

    let plain = &results["no_fallback"];
    assert!(!plain.degraded && plain.result.is_none());
    assert_eq!(
        plain.error,
        Some(ErrorInfo {
            error_type: "CriticError".into(),
            message: "model unavailable".into()
        })
    );
    let broken = &results["broken_hook"];
    assert!(!broken.degraded && broken.result.is_none());
    assert_eq!(broken.hook_errors, ["on_failure: degradation failed"]);

    assert!(results["fine"].is_success() && !results["fine"].degraded);
    let mut told = told.lock().clone();
    told.sort();
    assert_eq!(
        told,
        [
            (
                "broken_hook".into(),
                ExecutionStatus::Error,
                "CriticError".into()
            ),
            (
                "erroring".into(),
                ExecutionStatus::Error,
                "CriticError".into()
            ),
            (
                "no_fallback".into(),
                ExecutionStatus::Error,
                "CriticError".into()
            ),
            (
                "slow".into(),
                ExecutionStatus::Timeout,
                "TimeoutError".into()
            ),
        ],
        "on_failure is called for failures only"
    );
}

/// A critic as a type, through the `Critic` trait.
struct Length;

#[async_trait]
impl Critic for Length {
    async fn evaluate(&self, input: Arc<Value>) -> Result<Value, CriticError> {
        let text = input["text"]
            .as_str()
            .ok_or_else(|| CriticError::new("KeyError", "text"))?;
        Ok(json!({"length": text.len()}))
    }
}

#[test]
fn run_all_sync_blocks_outside_a_runtime() {
    let o = OrchestratorV2::builder()
        .critic("length", Length)
        .shared_critic("slow", hanging())
        .timeout("slow", Duration::from_millis(50))
        .build_sync()
        .expect("orchestrator");
    let results = o.run_all_sync(json!({"text": "four"})).expect("sync run");
    assert_eq!(results["length"].result, Some(json!({"length": 4})));
    assert_eq!(results["slow"].execution_status, ExecutionStatus::Timeout);
    let results = o.run_all_sync(json!({})).expect("sync run");
    assert_eq!(
        results["length"]
            .error
            .as_ref()
            .map(|e| e.error_type.as_str()),
        Some("KeyError")
    );
    // An orchestrator that owns its runtime may be dropped inside another runtime.
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    other.block_on(async move { drop(o) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_sync_is_refused_inside_a_runtime_and_works_from_a_plain_thread() {
    let o = Arc::new(
        OrchestratorV2::new([("s", scorer(1))])
            .await
            .expect("orchestrator"),
    );
    assert_eq!(
        o.run_all_sync(Value::Null).err(),
        Some(SyncError::InsideRuntime)
    );
    assert!(matches!(
        OrchestratorV2::builder().build_sync(),
        Err(SetupError::InsideRuntime)
    ));
    // From a thread outside the runtime, it blocks on the orchestrator's runtime.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let o2 = o.clone();
    std::thread::spawn(move || {
        let _ = tx.send(o2.run_all_sync(json!("from a thread")));
    });
    let results = rx.await.expect("thread").expect("sync run");
    assert_eq!(
        results["s"].result,
        Some(json!({"score": 1, "input": "from a thread"}))
    );
}

#[tokio::test]
async fn run_all_sync_names_a_current_thread_runtime() {
    let o = Arc::new(
        OrchestratorV2::new([("s", scorer(1))])
            .await
            .expect("orchestrator"),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let o2 = o.clone();
    std::thread::spawn(move || {
        let _ = tx.send(o2.run_all_sync(Value::Null).err());
    });
    assert_eq!(
        rx.await.expect("thread"),
        Some(SyncError::CurrentThreadRuntime)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_checks_names_and_timeouts() {
    let err = OrchestratorV2::new([("a", scorer(1)), ("a", scorer(2))])
        .await
        .expect_err("duplicate");
    assert!(matches!(err, SetupError::DuplicateCritic(ref n) if n == "a"));
    let err = OrchestratorV2::builder()
        .shared_critic("a", scorer(1))
        .timeout("b", Duration::from_secs(1))
        .build()
        .await
        .expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "timeout set for `b`, which is not a critic"
    );
    let err = OrchestratorV2::builder()
        .shared_critic("a", scorer(1))
        .timeout("a", Duration::ZERO)
        .build()
        .await
        .expect_err("zero");
    assert_eq!(
        err.to_string(),
        "the timeout of critic `a` must be more than zero"
    );
    let err = OrchestratorV2::builder()
        .shared_critic("", scorer(1))
        .build()
        .await
        .expect_err("empty");
    assert!(matches!(err, SetupError::EmptyName));
    let none = OrchestratorV2::builder().build().await.expect("no critics");
    assert!(none.run_all(Value::Null).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critics_can_share_a_callers_kernel_and_shut_down() {
    let kernel = hive_kernel::Kernel::builder().build().expect("kernel");
    let a = OrchestratorV2::builder()
        .shared_critic("x", scorer(1))
        .kernel(kernel.clone())
        .build()
        .await
        .expect("a");
    let b = OrchestratorV2::builder()
        .shared_critic("x", scorer(2))
        .kernel(kernel.clone())
        .build()
        .await
        .expect("b");
    assert_ne!(
        a.role_of("x"),
        b.role_of("x"),
        "each orchestrator has its own roles"
    );
    let (ra, rb) = tokio::join!(a.run_all(Value::Null), b.run_all(Value::Null));
    assert_eq!(
        ra["x"].result.as_ref().map(|v| v["score"].clone()),
        Some(json!(1))
    );
    assert_eq!(
        rb["x"].result.as_ref().map(|v| v["score"].clone()),
        Some(json!(2))
    );
    a.shutdown().await;
    let after = a.run_all(Value::Null).await;
    assert_eq!(after["x"].execution_status, ExecutionStatus::Error);
    assert_eq!(
        after["x"].error.as_ref().map(|e| e.error_type.as_str()),
        Some("OrchestratorError")
    );
    assert!(
        b.run_all(Value::Null).await["x"].is_success(),
        "the kernel lives on"
    );
}
