//! Plans through the library: the graph executor's ordering (a property test on random DAGs),
//! failure policies and `critical`, retries and timeouts, `when`, outputs, `for_each`,
//! caching, durable state and resume, and plan validation (every error class, with lines).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hive_kernel::{
    AgentSpec, CacheMode, InprocDriver, Kernel, Plan, PlanError, PlanRun, ProblemKind,
    ProcessConfig, ProcessDriver, RunError, RunEvent, RunEventKind, RunOptions, RunReport,
    RunState, StateError, StateStore, StepReport, StepState, TaskError,
};
use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::{json, Value};

/// What the test agent saw: (sequence number, step name, started or ended).
#[derive(Default)]
struct Log {
    seq: AtomicU64,
    entries: Mutex<Vec<(u64, String, bool)>>,
    /// Attempts so far per step name (to fail the first N).
    tries: Mutex<HashMap<String, u32>>,
}

impl Log {
    fn mark(&self, name: &str, start: bool) {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        self.entries.lock().push((n, name.to_string(), start));
    }
}

/// An inproc agent for role `work`. A task is `{"name", "sleep_ms"?, "fail_times"?,
/// "fail"?, "out"?}`: it logs its start and end, sleeps, fails its first `fail_times`
/// attempts (or always with `fail`), and returns `out` (or `{"name": ..}`).
fn worker(log: Arc<Log>) -> InprocDriver {
    InprocDriver::new(move |t| {
        let log = log.clone();
        async move {
            let p = &*t.payload;
            let name = p["name"].as_str().unwrap_or("?").to_string();
            log.mark(&name, true);
            let ms = p["sleep_ms"].as_u64().unwrap_or(0);
            if ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = t.cancel.cancelled() => {
                        log.mark(&name, false);
                        return Err(TaskError::new("cancelled"));
                    }
                }
            }
            let n = {
                let mut tries = log.tries.lock();
                let c = tries.entry(name.clone()).or_insert(0);
                *c += 1;
                *c
            };
            log.mark(&name, false);
            if p["fail"].as_bool() == Some(true)
                || p["fail_times"].as_u64().is_some_and(|f| u64::from(n) <= f)
            {
                return Err(TaskError::new(format!("{name} failed (attempt {n})")));
            }
            Ok(p.get("out")
                .cloned()
                .unwrap_or_else(|| json!({"name": name})))
        }
    })
}

struct Env {
    kernel: Kernel,
    log: Arc<Log>,
}

async fn env(capacity: u32) -> Env {
    let kernel = Kernel::builder().seed(7).build().expect("kernel");
    let log = Arc::new(Log::default());
    kernel
        .spawn_agent(AgentSpec::new("work", worker(log.clone()).shared()).with_capacity(capacity))
        .await
        .expect("worker");
    kernel
        .spawn_agent(
            AgentSpec::new("local", ProcessDriver::new(ProcessConfig::new()).shared())
                .with_capacity(capacity),
        )
        .await
        .expect("process agent");
    Env { kernel, log }
}

/// A plan from JSON (file name `t.json`).
fn plan(v: Value) -> Arc<Plan> {
    Arc::new(
        Plan::parse(&v.to_string(), Path::new("t.json"), &BTreeMap::new())
            .unwrap_or_else(|e| panic!("invalid test plan: {e}")),
    )
}

/// A `work` step: `task` gets the step's id as its name.
fn step(id: &str, deps: &[&str], extra: Value) -> Value {
    let mut s = json!({
        "id": id,
        "role": "work",
        "task": {"name": id},
        "depends_on": deps,
    });
    if let (Value::Object(m), Value::Object(x)) = (&mut s, extra) {
        for (k, v) in x {
            if k == "task" {
                if let (Some(Value::Object(t)), Value::Object(tx)) = (m.get_mut("task"), v) {
                    t.extend(tx);
                }
            } else {
                m.insert(k, v);
            }
        }
    }
    s
}

fn plan_of(steps: Vec<Value>, conc: u32) -> Arc<Plan> {
    plan(
        json!({"plan_id": "t", "version": 1, "globals": {"max_concurrency": conc}, "steps": steps}),
    )
}

/// Runs `plan` to its end; returns the report and every event.
async fn run(
    e: &Env,
    plan: Arc<Plan>,
    store: Option<&StateStore>,
    tweak: impl FnOnce(&mut RunOptions),
) -> (RunReport, Vec<Arc<RunEvent>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opts = RunOptions::new();
    opts.max_concurrency = plan.max_concurrency().unwrap_or(4) as usize;
    opts.listener = Some(tx);
    opts.seed = 1;
    tweak(&mut opts);
    let r = PlanRun::start(&e.kernel, plan, store, opts)
        .await
        .expect("start")
        .execute()
        .await
        .expect("run");
    let mut evs = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        evs.push(ev);
    }
    (r, evs)
}

fn by_id(r: &RunReport) -> HashMap<String, StepReport> {
    r.steps
        .iter()
        .map(|s| (s.id.to_string(), s.clone()))
        .collect()
}

fn state_of(r: &RunReport, id: &str) -> StepState {
    by_id(r)
        .get(id)
        .map(|s| s.state)
        .unwrap_or_else(|| panic!("no step {id} in {r:#?}"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hive-plans-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

// ------------------------------------------------------------------------------ ordering --

/// A random DAG: for each node, its dependencies among the earlier ones, and a sleep.
fn dags() -> impl Strategy<Value = (Vec<(Vec<usize>, u64)>, u32, bool)> {
    (1usize..24, 1u32..6, any::<bool>()).prop_flat_map(|(n, conc, durable)| {
        let nodes: Vec<_> = (0..n)
            .map(|i| {
                (
                    proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)),
                    0u64..4,
                )
            })
            .collect();
        (nodes, Just(conc), Just(durable))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// No step starts before all of its dependencies ended; every step ends exactly once.
    #[test]
    fn steps_start_after_their_dependencies_and_end_once((dag, conc, durable) in dags()) {
        let rt = rt();
        rt.block_on(async {
            let e = env(conc).await;
            let steps: Vec<Value> = dag
                .iter()
                .enumerate()
                .map(|(i, (deps, ms))| {
                    let deps: Vec<String> = deps.iter().map(|d| format!("s{d}")).collect();
                    let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                    step(&format!("s{i}"), &deps, json!({"task": {"sleep_ms": ms}}))
                })
                .collect();
            let dir = scratch("prop");
            let store = durable.then(|| StateStore::open(&dir).expect("store"));
            let (r, evs) = run(&e, plan_of(steps, conc), store.as_ref(), |_| {}).await;
            assert_eq!(r.state, RunState::Succeeded, "{r:#?}");
            let log = e.log.entries.lock().clone();
            let mut start = HashMap::new();
            let mut end = HashMap::new();
            for (seq, name, is_start) in log {
                let m = if is_start { &mut start } else { &mut end };
                assert!(m.insert(name.clone(), seq).is_none(), "{name} ran twice");
            }
            for (i, (deps, _)) in dag.iter().enumerate() {
                let me = format!("s{i}");
                assert!(start.contains_key(&me) && end.contains_key(&me), "{me} never ran");
                for d in deps {
                    let dep = format!("s{d}");
                    assert!(end[&dep] < start[&me], "{me} started before {dep} ended");
                }
            }
            let mut finished = HashMap::new();
            for ev in &evs {
                if let RunEventKind::StepFinished { step, .. } = &ev.kind {
                    *finished.entry(step.to_string()).or_insert(0) += 1;
                }
            }
            assert_eq!(finished.len(), dag.len());
            assert!(finished.values().all(|&n| n == 1), "{finished:?}");
            // Bounded by max_concurrency: at no point more than `conc` steps between start
            // and end.
            let mut marks = e.log.entries.lock().clone();
            marks.sort();
            let (mut now, mut peak) = (0i64, 0i64);
            for (_, _, s) in marks {
                now += if s { 1 } else { -1 };
                peak = peak.max(now);
            }
            assert!(peak <= i64::from(conc), "{peak} at once > {conc}");
            e.kernel.shutdown(hive_kernel::ShutdownMode::Now).await;
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}

// ----------------------------------------------------------------------- failure policies --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cancels_pending_steps_and_lets_running_ones_finish() {
    let e = env(4).await;
    // Two slots: `bad` fails at once while `long` runs; `later` waits for a slot.
    let p = plan_of(
        vec![
            step("long", &[], json!({"task": {"sleep_ms": 300}})),
            step(
                "bad",
                &[],
                json!({"task": {"fail": true}, "critical": false}),
            ),
            step("later", &[], json!({})),
            step("after_bad", &["bad"], json!({})),
        ],
        2,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    assert_eq!(state_of(&r, "bad"), StepState::Failed);
    assert_eq!(state_of(&r, "long"), StepState::Succeeded, "{r:#?}");
    assert_eq!(state_of(&r, "later"), StepState::Cancelled);
    assert_eq!(state_of(&r, "after_bad"), StepState::Cancelled);
    assert_eq!(r.state, RunState::Failed, "cancelled steps fail the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_abort_cancels_running_steps_too() {
    let e = env(4).await;
    let p = plan_of(
        vec![
            step("long", &[], json!({"task": {"sleep_ms": 5000}})),
            step("bad", &[], json!({"task": {"sleep_ms": 20, "fail": true}})),
        ],
        2,
    );
    let t0 = std::time::Instant::now();
    let (r, _) = run(&e, p, None, |_| {}).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "long was not cancelled"
    );
    assert_eq!(state_of(&r, "long"), StepState::Cancelled);
    assert_eq!(state_of(&r, "bad"), StepState::Failed);
    assert_eq!(r.state, RunState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_dependents_skips_downstream_at_once_and_spares_the_rest() {
    let e = env(4).await;
    let p = plan_of(
        vec![
            step(
                "bad",
                &[],
                json!({"task": {"fail": true}, "on_failure": "skip_dependents"}),
            ),
            step("slow", &[], json!({"task": {"sleep_ms": 300}})),
            step("child", &["bad"], json!({})),
            step("grandchild", &["child"], json!({})),
            step("both", &["bad", "slow"], json!({})),
            step("free", &[], json!({})),
            step(
                "cleanup",
                &["bad"],
                json!({"when": "steps.bad.status == 'failed'"}),
            ),
        ],
        4,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    let s = by_id(&r);
    for id in ["child", "grandchild", "both"] {
        assert_eq!(s[id].state, StepState::Skipped, "{id}");
        assert!(s[id]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("skip_dependents"));
    }
    assert!(
        s["both"].finished_at < s["slow"].finished_at,
        "`both` is skipped when `bad` fails, not when `slow` ends"
    );
    assert_eq!(s["free"].state, StepState::Succeeded);
    assert_eq!(s["slow"].state, StepState::Succeeded);
    assert_eq!(
        s["cleanup"].state,
        StepState::Succeeded,
        "a `when` step decides for itself"
    );
    assert_eq!(r.state, RunState::Failed, "bad is critical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_runs_dependents_and_critical_decides_the_run() {
    for critical in [true, false] {
        let e = env(4).await;
        let p = plan_of(
            vec![
                step(
                    "bad",
                    &[],
                    json!({"task": {"fail": true}, "on_failure": "continue", "critical": critical}),
                ),
                step("next", &["bad"], json!({})),
            ],
            2,
        );
        let (r, _) = run(&e, p, None, |_| {}).await;
        assert_eq!(state_of(&r, "bad"), StepState::Failed);
        assert_eq!(state_of(&r, "next"), StepState::Succeeded);
        let want = if critical {
            RunState::Failed
        } else {
            RunState::Succeeded
        };
        assert_eq!(r.state, want, "critical = {critical}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_critical_skip_dependents_failure_leaves_the_run_succeeded() {
    let e = env(4).await;
    let p = plan_of(
        vec![
            step(
                "bad",
                &[],
                json!({"task": {"fail": true}, "critical": false, "on_failure": "skip_dependents"}),
            ),
            step("child", &["bad"], json!({})),
            step("free", &[], json!({})),
        ],
        2,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    assert_eq!(state_of(&r, "child"), StepState::Skipped);
    assert_eq!(r.state, RunState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_attempts_and_give_up_after_the_last() {
    let e = env(4).await;
    let p = plan_of(
        vec![
            step(
                "flaky",
                &[],
                json!({"task": {"fail_times": 2}, "retries": 2, "retry_delay_sec": 0.01}),
            ),
            step(
                "hopeless",
                &[],
                json!({"task": {"fail_times": 5}, "retries": 1, "backoff": "exponential", "jitter": "full", "critical": false, "on_failure": "continue"}),
            ),
        ],
        2,
    );
    let (r, evs) = run(&e, p, None, |_| {}).await;
    let s = by_id(&r);
    assert_eq!(
        (s["flaky"].state, s["flaky"].attempts),
        (StepState::Succeeded, 3)
    );
    assert_eq!(
        (s["hopeless"].state, s["hopeless"].attempts),
        (StepState::Failed, 2)
    );
    let retries = evs
        .iter()
        .filter(
            |e| matches!(&e.kind, RunEventKind::StepRetrying { step, .. } if &**step == "flaky"),
        )
        .count();
    assert_eq!(retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_over_its_timeout_times_out() {
    let e = env(2).await;
    let p = plan_of(
        vec![step(
            "slow",
            &[],
            json!({"task": {"sleep_ms": 5000}, "timeout_sec": 0.05, "critical": false, "on_failure": "continue"}),
        )],
        1,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    assert_eq!(state_of(&r, "slow"), StepState::TimedOut);
}

// ------------------------------------------------------------- when, outputs, for_each --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_conditions_read_statuses_and_outputs() {
    let e = env(4).await;
    let p = plan_of(
        vec![
            step(
                "probe",
                &[],
                json!({"task": {"out": {"ready": true, "n": 3}}, "outputs": ["ready", "n"]}),
            ),
            step(
                "go",
                &["probe"],
                json!({"when": "steps.probe.outputs.ready && steps.probe.outputs.n > 2"}),
            ),
            step(
                "never",
                &["probe"],
                json!({"when": "steps.probe.outputs.n == 4"}),
            ),
            step("after_never", &["never"], json!({})),
            step(
                "after_never_anyway",
                &["never"],
                json!({"when": "steps.never.status == 'skipped'"}),
            ),
        ],
        4,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    assert_eq!(state_of(&r, "go"), StepState::Succeeded);
    assert_eq!(state_of(&r, "never"), StepState::Skipped);
    assert_eq!(state_of(&r, "after_never"), StepState::Skipped);
    assert_eq!(state_of(&r, "after_never_anyway"), StepState::Succeeded);
    assert_eq!(
        r.state,
        RunState::Succeeded,
        "skipped steps do not fail a run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_flow_into_later_steps_and_missing_ones_fail() {
    let e = env(4).await;
    let p = plan_of(
        vec![
            step(
                "make",
                &[],
                json!({"task": {"out": {"version": "1.2.3", "list": [1, 2]}}, "outputs": ["version", "list"]}),
            ),
            step(
                "use",
                &["make"],
                json!({"task": {"out": {"v": "${steps.make.outputs.version}", "l": "${steps.make.outputs.list}", "s": "v${steps.make.outputs.version}"}}, "outputs": ["v"]}),
            ),
            step(
                "liar",
                &[],
                json!({"outputs": ["promised"], "critical": false, "on_failure": "continue"}),
            ),
        ],
        4,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    let s = by_id(&r);
    assert_eq!(
        s["use"].outputs,
        Some(json!({"v": "1.2.3", "l": [1, 2], "s": "v1.2.3"}))
    );
    assert_eq!(s["liar"].state, StepState::Failed);
    assert!(s["liar"]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("promised"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_outputs_come_from_a_marked_line_or_the_outputs_file() {
    let e = env(4).await;
    let p = plan(json!({
        "plan_id": "t", "version": 1,
        "steps": [
            {"id": "a", "command": "echo '::hive-outputs::{\"x\": 1}'", "outputs": ["x"]},
            {"id": "b", "command": "sh", "args": ["-c", "echo y=two >> \"$HIVE_OUTPUTS\""], "outputs": ["y"]},
            {"id": "c", "depends_on": ["a", "b"], "command": "sh",
             "args": ["-c", "echo \"::hive-outputs::{\\\"z\\\": \\\"${steps.a.outputs.x}-${steps.b.outputs.y}\\\"}\""],
             "outputs": ["z"]}
        ]
    }));
    let dir = scratch("cmd-outputs");
    let store = StateStore::open(&dir).expect("store");
    let (r, _) = run(&e, p, Some(&store), |_| {}).await;
    let s = by_id(&r);
    assert_eq!(s["c"].outputs, Some(json!({"z": "1-two"})), "{r:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_fans_out_over_lists_and_outputs() {
    let e = env(4).await;
    let p = plan_of(
        vec![
            step(
                "list",
                &[],
                json!({"task": {"out": {"files": ["a", "b", "c"]}}, "outputs": ["files"]}),
            ),
            step(
                "each",
                &["list"],
                json!({"for_each": "${steps.list.outputs.files}", "task": {"name": "each-${item}", "out": {"file": "${item}", "i": "${index}"}}, "outputs": ["file", "i"]}),
            ),
            step(
                "static",
                &[],
                json!({"for_each": [{"k": 1}, {"k": 2}], "task": {"name": "static-${item.k}"}}),
            ),
            step(
                "after",
                &["each"],
                json!({"task": {"out": {"got": "${steps.each.outputs.file}"}}}),
            ),
        ],
        4,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    let s = by_id(&r);
    assert_eq!(s["each"].state, StepState::Succeeded);
    assert_eq!(s["each[1]"].parent.as_deref(), Some("each"));
    assert_eq!(
        s["each"].outputs,
        Some(json!({"file": ["a", "b", "c"], "i": [0, 1, 2]}))
    );
    assert_eq!(s["after"].outputs, Some(json!({"got": ["a", "b", "c"]})));
    let names: Vec<String> = e.log.entries.lock().iter().map(|x| x.1.clone()).collect();
    for n in ["each-a", "each-b", "each-c", "static-1", "static-2"] {
        assert!(names.iter().any(|x| x == n), "{n} did not run: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_item_fails_its_step_and_applies_its_policy() {
    let e = env(4).await;
    // Items get their own names, so the agent's `fail_times` fails item `bad` only.
    let p = plan_of(
        vec![
            step(
                "each",
                &[],
                json!({"for_each": [{"n": "ok1", "f": 0}, {"n": "bad", "f": 9}, {"n": "ok2", "f": 0}],
                       "task": {"name": "${item.n}", "fail_times": "${item.f}"},
                       "on_failure": "skip_dependents"}),
            ),
            step("after", &["each"], json!({})),
            step("free", &[], json!({})),
        ],
        4,
    );
    let (r, _) = run(&e, p, None, |_| {}).await;
    let s = by_id(&r);
    assert_eq!(s["each[1]"].state, StepState::Failed);
    assert_eq!(s["each[0]"].state, StepState::Succeeded);
    assert_eq!(s["each[2]"].state, StepState::Succeeded);
    assert_eq!(s["each"].state, StepState::Failed);
    let why = s["each"].error.clone().unwrap_or_default();
    assert!(why.contains("1 of 3 items failed"), "{why}");
    assert_eq!(s["after"].state, StepState::Skipped);
    assert_eq!(s["free"].state, StepState::Succeeded);
}

// ----------------------------------------------------------------------------- caching --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_reuse_outputs_and_changed_inputs_miss() {
    let e = env(2).await;
    let dir = scratch("cache");
    std::fs::write(dir.join("input.txt"), "one").expect("write");
    let store = StateStore::open(&dir.join("state")).expect("store");
    let p = plan(json!({
        "plan_id": "t", "version": 1,
        "steps": [{
            "id": "build",
            "command": "sh",
            "args": ["-c", "echo ran >> runs.log; echo \"::hive-outputs::{\\\"digest\\\": \\\"$(cat input.txt)\\\"}\""],
            "outputs": ["digest"],
            "cache": {"inputs": ["input.txt"]}
        }]
    }));
    let go = |mode: CacheMode| {
        let dir = dir.clone();
        move |o: &mut RunOptions| {
            o.workdir = dir;
            o.cache = mode;
        }
    };
    let runs = || {
        std::fs::read_to_string(dir.join("runs.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let (r1, _) = run(&e, p.clone(), Some(&store), go(CacheMode::Use)).await;
    assert_eq!(state_of(&r1, "build"), StepState::Succeeded);
    let (r2, _) = run(&e, p.clone(), Some(&store), go(CacheMode::Use)).await;
    assert_eq!(
        state_of(&r2, "build"),
        StepState::Cached,
        "same inputs: a hit"
    );
    assert_eq!(by_id(&r2)["build"].outputs, Some(json!({"digest": "one"})));
    assert_eq!(runs(), 1, "a cached step does not run");
    std::fs::write(dir.join("input.txt"), "two").expect("write");
    let (r3, _) = run(&e, p.clone(), Some(&store), go(CacheMode::Use)).await;
    assert_eq!(
        state_of(&r3, "build"),
        StepState::Succeeded,
        "changed input: a miss"
    );
    assert_eq!(by_id(&r3)["build"].outputs, Some(json!({"digest": "two"})));
    let (r4, _) = run(&e, p.clone(), Some(&store), go(CacheMode::Refresh)).await;
    assert_eq!(
        state_of(&r4, "build"),
        StepState::Succeeded,
        "--no-cache runs it"
    );
    assert_eq!(runs(), 3);
    let (r5, _) = run(&e, p, None, go(CacheMode::Use)).await;
    assert_eq!(
        state_of(&r5, "build"),
        StepState::Succeeded,
        "no state, no cache"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------- state & resume --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_run_is_in_the_database_and_its_jsonl_file() {
    let e = env(2).await;
    let dir = scratch("durable");
    let store = StateStore::open(&dir).expect("store");
    let p = plan_of(
        vec![
            step(
                "a",
                &[],
                json!({"task": {"out": {"k": "v"}}, "outputs": ["k"]}),
            ),
            step(
                "b",
                &["a"],
                json!({"task": {"fail": true}, "retries": 1, "critical": false}),
            ),
        ],
        2,
    );
    let (r, evs) = run(&e, p, Some(&store), |_| {}).await;
    assert_eq!(r.state, RunState::Succeeded);
    let rec = store.run(&r.run_id).expect("run");
    assert_eq!(rec.state, RunState::Succeeded);
    assert!(!rec.interrupted);
    let steps = store.steps(&r.run_id).expect("steps");
    let a = steps.iter().find(|s| s.step_id == "a").expect("a");
    assert_eq!(a.outputs, Some(json!({"k": "v"})));
    let b = steps.iter().find(|s| s.step_id == "b").expect("b");
    assert_eq!((b.state, b.attempts), (StepState::Failed, 2));
    let attempts = store.attempts(&r.run_id).expect("attempts");
    assert_eq!(attempts.iter().filter(|x| x.step_id == "b").count(), 2);
    let db: Vec<String> = store
        .events_after(&r.run_id, 0)
        .expect("events")
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let file = std::fs::read_to_string(store.events_path(&r.run_id)).expect("jsonl");
    let lines: Vec<&str> = file.lines().collect();
    // A `run_created` header (the run's row and steps, not an event), then the events.
    let header: Value = serde_json::from_str(lines[0]).expect("header");
    assert_eq!(
        (header["type"].as_str(), header["seq"].as_u64()),
        (Some("run_created"), Some(0))
    );
    assert_eq!(header["steps"].as_array().map(Vec::len), Some(2));
    let lines = &lines[1..];
    assert_eq!(lines, db, "the JSONL file and the events table agree");
    assert_eq!(db.len(), evs.len(), "the listener saw every event");
    let parsed: Vec<RunEvent> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    assert!(parsed.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_failed_run_reruns_only_what_did_not_succeed() {
    let e = env(2).await;
    let dir = scratch("resume");
    let store = StateStore::open(&dir.join("state")).expect("store");
    let path = dir.join("p.json");
    let text = json!({
        "plan_id": "t", "version": 1,
        "steps": [
            step("a", &[], json!({"task": {"out": {"k": 1}}, "outputs": ["k"]})),
            step("flaky", &["a"], json!({"task": {"fail_times": 1}, "on_failure": "skip_dependents"})),
            step("c", &["flaky"], json!({"task": {"out": {"k": "${steps.a.outputs.k}"}}})),
        ]
    })
    .to_string();
    std::fs::write(&path, &text).expect("write");
    let p = Arc::new(Plan::load(&path, &BTreeMap::new()).expect("plan"));
    let (r1, _) = run(&e, p.clone(), Some(&store), |_| {}).await;
    assert_eq!(r1.state, RunState::Failed);
    assert_eq!(state_of(&r1, "c"), StepState::Skipped);
    let r2 = PlanRun::resume(
        &e.kernel,
        p.clone(),
        &store,
        &r1.run_id,
        RunOptions::new(),
        false,
    )
    .await
    .expect("resume")
    .execute()
    .await
    .expect("run");
    assert_eq!(r2.state, RunState::Succeeded, "{r2:#?}");
    let s = by_id(&r2);
    assert!(s["a"].restored, "a succeeded before: kept");
    assert_eq!(
        s["flaky"].attempts, 2,
        "attempts continue across the resume"
    );
    assert_eq!(
        s["c"].outputs,
        Some(json!({"k": 1})),
        "outputs of kept steps are used"
    );
    let a_runs = e
        .log
        .entries
        .lock()
        .iter()
        .filter(|x| x.1 == "a" && x.2)
        .count();
    assert_eq!(a_runs, 1);
    assert_eq!(store.run(&r1.run_id).expect("run").resumes, 1);
    // Nothing left to do.
    match PlanRun::resume(
        &e.kernel,
        p.clone(),
        &store,
        &r1.run_id,
        RunOptions::new(),
        false,
    )
    .await
    {
        Err(RunError::Finished { .. }) => {}
        other => panic!("expected Finished, got {other:?}"),
    }
    // A changed plan file is refused unless forced.
    std::fs::write(&path, text.replace("\"version\":1", "\"version\":2")).expect("write");
    let changed = Arc::new(Plan::load(&path, &BTreeMap::new()).expect("plan"));
    assert_ne!(changed.hash(), p.hash());
    let (r3, _) = run(
        &e,
        plan_of(vec![step("x", &[], json!({"task": {"fail": true}}))], 1),
        Some(&store),
        |_| {},
    )
    .await;
    assert_eq!(r3.state, RunState::Failed);
    match PlanRun::resume(
        &e.kernel,
        changed.clone(),
        &store,
        &r3.run_id,
        RunOptions::new(),
        false,
    )
    .await
    {
        Err(RunError::PlanChanged { .. }) => {}
        other => panic!("expected PlanChanged, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_replays_the_journal_the_database_had_not_caught_up_with() {
    let e = env(2).await;
    let dir = scratch("recover");
    let store = StateStore::open(&dir.join("state")).expect("store");
    let path = dir.join("p.json");
    let text = json!({
        "plan_id": "t", "version": 1,
        "steps": [
            step("s1", &[], json!({"outputs": ["k"], "task": {"out": {"k": "from-s1"}}})),
            step("s2", &[], json!({})),
            step("s3", &["s1", "s2"], json!({"task": {"out": {"got": "${steps.s1.outputs.k}"}}})),
        ]
    })
    .to_string();
    std::fs::write(&path, &text).expect("write");
    let p = Arc::new(Plan::load(&path, &BTreeMap::new()).expect("plan"));
    // A run created (in the database too), then "killed": its journal has events the
    // database never saw.
    let mut run = PlanRun::start(&e.kernel, p.clone(), Some(&store), RunOptions::new())
        .await
        .expect("start");
    run.created().await.expect("created");
    let id = run.id().to_string();
    drop(run);
    let at = "2026-01-01T00:00:00.000000Z";
    let lines = [
        json!({"seq": 1, "at": at, "run": id, "type": "run_started", "plan_id": "t", "steps": 3, "resumed": false}),
        json!({"seq": 2, "at": at, "run": id, "type": "step_started", "step": "s1", "attempt": 1}),
        json!({"seq": 3, "at": at, "run": id, "type": "step_started", "step": "s2", "attempt": 1}),
        json!({"seq": 4, "at": at, "run": id, "type": "step_finished", "step": "s1", "state": "succeeded",
               "attempts": 1, "duration_ms": 1.0, "exit_code": 0, "outputs": {"k": "from-journal"}}),
    ];
    let mut journal: String = lines.iter().map(|l| format!("{l}\n")).collect();
    journal.push_str("{\"seq\": 5, \"torn"); // a line cut by the crash
    std::fs::write(store.events_path(&id), journal).expect("journal");
    assert_eq!(store.recover(&id).expect("recover"), 4);
    assert_eq!(
        store.recover(&id).expect("again"),
        0,
        "recovery is idempotent"
    );
    let steps = store.steps(&id).expect("steps");
    let get = |n: &str| steps.iter().find(|s| s.step_id == n).expect("step").clone();
    assert_eq!(get("s1").state, StepState::Succeeded);
    assert_eq!(get("s1").outputs, Some(json!({"k": "from-journal"})));
    assert_eq!(
        (get("s2").state, get("s2").attempts),
        (StepState::Running, 1)
    );
    assert_eq!(get("s3").state, StepState::Pending);
    assert!(store.run(&id).expect("run").interrupted);
    let r = PlanRun::resume(&e.kernel, p, &store, &id, RunOptions::new(), false)
        .await
        .expect("resume")
        .execute()
        .await
        .expect("run");
    assert_eq!(r.state, RunState::Succeeded, "{r:#?}");
    let s = by_id(&r);
    assert!(
        s["s1"].restored,
        "a success found only in the journal is kept"
    );
    assert_eq!(s["s2"].attempts, 2, "the interrupted attempt counts");
    assert_eq!(s["s3"].outputs, Some(json!({"got": "from-journal"})));
    let ran: Vec<String> = e
        .log
        .entries
        .lock()
        .iter()
        .filter(|x| x.2)
        .map(|x| x.1.clone())
        .collect();
    assert!(!ran.contains(&"s1".to_string()), "{ran:?}");
    let attempts = store.attempts(&id).expect("attempts");
    let s2: Vec<&str> = attempts
        .iter()
        .filter(|a| a.step_id == "s2")
        .map(|a| a.state.as_str())
        .collect();
    assert_eq!(s2, vec!["interrupted", "succeeded"]);
    // The journal is whole again: the torn line is gone, every event once, in order.
    let file = std::fs::read_to_string(store.events_path(&id)).expect("journal");
    let seqs: Vec<u64> = file
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("a whole JSON line")["seq"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "{seqs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_being_executed_cannot_be_resumed_elsewhere() {
    let e = env(2).await;
    let dir = scratch("busy");
    let store = StateStore::open(&dir).expect("store");
    let p = plan_of(
        vec![step("slow", &[], json!({"task": {"sleep_ms": 400}}))],
        1,
    );
    let run = PlanRun::start(&e.kernel, p.clone(), Some(&store), RunOptions::new())
        .await
        .expect("start");
    let id = run.id().to_string();
    let handle = tokio::spawn(run.execute());
    let store2 = StateStore::open(&dir).expect("store");
    assert!(store2.is_running_now(&id));
    match PlanRun::resume(&e.kernel, p, &store2, &id, RunOptions::new(), false).await {
        Err(RunError::State(StateError::RunBusy { pid, .. })) => {
            assert_eq!(pid, Some(std::process::id()))
        }
        other => panic!("expected RunBusy, got {other:?}"),
    }
    let r = handle.await.expect("join").expect("run");
    assert_eq!(r.state, RunState::Succeeded);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_database_is_a_clear_error() {
    let dir = scratch("corrupt");
    std::fs::write(dir.join("state.db"), vec![0x42u8; 8192]).expect("write");
    match StateStore::open(&dir) {
        Err(e @ StateError::Corrupt { .. }) => {
            let m = e.to_string();
            assert!(m.contains("state.db") && m.contains("corrupt"), "{m}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// -------------------------------------------------------------------------- validation --

fn problems(name: &str, text: &str) -> Vec<hive_kernel::Problem> {
    problems_with(name, text, &BTreeMap::new())
}

fn problems_with(
    name: &str,
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Vec<hive_kernel::Problem> {
    match Plan::parse(text, Path::new(name), vars) {
        Ok(_) => panic!("{name} should be refused:\n{text}"),
        Err(PlanError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// The single problem of `text` has `kind`, is at `line` and mentions `needle`.
fn refused(name: &str, text: &str, kind: ProblemKind, line: usize, needle: &str) {
    let ps = problems(name, text);
    let p = ps
        .iter()
        .find(|p| p.kind == kind)
        .unwrap_or_else(|| panic!("{name}: no {kind:?} among {ps:#?}"));
    assert_eq!(p.line, Some(line), "{name}: {p:?}");
    assert!(p.column.is_some(), "{name}: {p:?}");
    let shown = p.render(Path::new(name));
    assert!(shown.contains(needle), "{name}: {shown}");
    assert!(shown.starts_with(&format!("{name}:{line}:")), "{shown}");
}

#[test]
fn every_validation_error_class_names_file_field_and_line() {
    // JSON
    refused(
        "a.json",
        "{\"plan_id\": \"x\", \"version\": 1,\n \"steps\": [\n  {\"id\": \"a\", \"command\": \"true\", \"colour\": 1}\n ]}",
        ProblemKind::UnknownField,
        3,
        "colour",
    );
    refused(
        "b.json",
        "{\"plan_id\": \"x\", \"version\": 1,\n \"steps\": [\n  {\"id\": \"a\", \"command\": \"true\",\n   \"retries\": \"many\"}]}",
        ProblemKind::BadValue,
        4,
        "retries",
    );
    refused(
        "c.json",
        "{\"plan_id\": \"x\", \"version\": 1,\n \"steps\": [\n  {\"id\": \"a\", \"command\": \"true\",\n   \"depends_on\": \"b\"}]}",
        ProblemKind::WrongType,
        4,
        "depends_on",
    );
    refused(
        "d.json",
        "{\"plan_id\": \"x\", \"version\": 1, \"steps\": [\n {\"id\": \"a\", \"command\": \"true\"},\n {\"id\": \"a\", \"command\": \"true\"}]}",
        ProblemKind::DuplicateId,
        3,
        "duplicate step id `a`",
    );
    refused(
        "e.json",
        "{\"plan_id\": \"x\", \"version\": 1, \"steps\": [\n {\"id\": \"build\", \"command\": \"true\"},\n {\"id\": \"b\", \"command\": \"true\", \"depends_on\": [\"biuld\"]}]}",
        ProblemKind::UnknownDependency,
        3,
        "did you mean `build`",
    );
    refused(
        "f.json",
        "{\"plan_id\": \"x\", \"version\": 1, \"steps\": [\n {\"id\": \"a\", \"command\": \"true\",\n  \"on_failure\": \"explode\"}]}",
        ProblemKind::BadValue,
        3,
        "unknown variant `explode`",
    );
    refused(
        "g.json",
        "{\"plan_id\": \"x\", \"version\": 1, \"steps\": [\n {\"id\": \"a\"}]}",
        ProblemKind::MissingField,
        2,
        "needs a `command`",
    );
    refused(
        "h.json",
        "{\"version\": 1, \"steps\": []}",
        ProblemKind::MissingField,
        1,
        "plan_id",
    );
    refused(
        "i.json",
        "{\"plan_id\": \"x\", \"version\": 1, \"steps\": [\n {\"id\": \"a\",\n \"command\": \"true\",, }]}",
        ProblemKind::Syntax,
        3,
        "i.json:3:",
    );
    // YAML
    refused(
        "a.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n    depends_on: [c]\n  - id: c\n    command: 'true'\n    depends_on: [a]\n",
        ProblemKind::Cycle,
        9,
        "a -> c -> a",
    );
    refused(
        "b.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n    timeout_sec: -3\n",
        ProblemKind::BadValue,
        6,
        "positive number of seconds",
    );
    refused(
        "c.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n    when: steps.a.status =\n",
        ProblemKind::BadValue,
        6,
        "when",
    );
    refused(
        "d.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n  - id: b\n    command: 'true'\n    when: steps.a.status == 'succeded'\n    depends_on: [a]\n",
        ProblemKind::BadValue,
        8,
        "succeded",
    );
    refused(
        "e.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n  - id: b\n    command: 'echo ${steps.a.outputs.v}'\n",
        ProblemKind::BadReference,
        7,
        "does not depend on it",
    );
    refused(
        "f.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n  - id: b\n    depends_on: [a]\n    command: 'echo ${steps.a.outputs.v}'\n",
        ProblemKind::BadReference,
        8,
        "declares no `outputs`",
    );
    refused(
        "g.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'echo ${item}'\n",
        ProblemKind::BadReference,
        5,
        "for_each",
    );
    // TOML
    refused(
        "a.toml",
        "plan_id = \"x\"\nversion = 1\n\n[[steps]]\nid = \"a\"\ncommand = \"true\"\ncritical = \"yes\"\n",
        ProblemKind::BadValue,
        7,
        "critical",
    );
    refused(
        "b.toml",
        "plan_id = \"x\"\nversion = 1\n\n[[steps]]\nid = \"a\"\ncommand = \"true\"\n\n[[steps]]\nid = \"b\"\ncommand = \"true\"\ndepends_on = [\"b\"]\n",
        ProblemKind::Cycle,
        11,
        "b -> b",
    );
    refused(
        "c.toml",
        "plan_id = \"x\"\nversion = 1\n[globals]\nmax_concurrency = 2\nparallelism = 3\n[[steps]]\nid = \"a\"\ncommand = \"true\"\n",
        ProblemKind::UnknownField,
        5,
        "parallelism",
    );
    refused(
        "d.toml",
        "plan_id = \"x\"\nversion = 1\n[[steps]]\nid = \"a b\"\ncommand = \"true\"\n",
        ProblemKind::BadValue,
        4,
        "letters, digits",
    );
    // Several problems are all reported, in file order.
    let ps = problems(
        "many.json",
        "{\"plan_id\": \"x\", \"version\": 1, \"steps\": [\n {\"id\": \"a\", \"command\": \"true\", \"depends_on\": [\"zz\"]},\n {\"id\": \"a\", \"command\": \"true\"}]}",
    );
    assert_eq!(ps.len(), 2, "{ps:#?}");
    assert!(ps[0].line <= ps[1].line);
    // Unknown extension.
    match Plan::parse("{}", Path::new("plan.xml"), &BTreeMap::new()) {
        Err(PlanError::Format { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn variables_substitute_escape_and_must_be_known() {
    let vars: BTreeMap<String, String> = [
        ("BRANCH".to_string(), "main".to_string()),
        ("N".to_string(), "3".to_string()),
    ]
    .into();
    let text = "plan_id: merge-${BRANCH}\nversion: 1\nglobals:\n  max_concurrency: ${N}\nvars:\n  WHO: world\nsteps:\n  - id: a\n    command: echo\n    args: ['${BRANCH}', '$${HOME}', '${WHO}', '${PLAN_DIR}']\n";
    let p = Plan::parse(text, Path::new("/tmp/v.yaml"), &vars).expect("valid");
    assert_eq!(p.id(), "merge-main");
    assert_eq!(p.max_concurrency(), Some(3));
    assert_eq!(p.vars()["WHO"], "world", "plan defaults");
    let ps = problems(
        "u.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: echo ${BRANHC}\n",
    );
    assert_eq!(ps[0].kind, ProblemKind::UnknownVariable);
    assert_eq!(ps[0].line, Some(5));
    assert!(ps[0].message.contains("--var BRANHC="), "{}", ps[0].message);
    // --var wins over the plan's default.
    let given: BTreeMap<String, String> = [("WHO".to_string(), "you".to_string())].into();
    let p = Plan::parse(
        text.replace("${BRANCH}", "b").replace("${N}", "2").as_str(),
        Path::new("w.yaml"),
        &given,
    )
    .expect("valid");
    assert_eq!(p.vars()["WHO"], "you");
    let ps = problems_with(
        "n.yaml",
        "plan_id: x\nversion: 1\nglobals:\n  max_concurrency: ${N}\nsteps:\n  - id: a\n    command: 'true'\n",
        &[("N".to_string(), "lots".to_string())].into(),
    );
    assert_eq!(ps[0].kind, ProblemKind::BadValue, "{ps:?}");
    assert_eq!(ps[0].line, Some(4));
}

#[test]
fn the_json_schema_describes_plans() {
    let s = Plan::json_schema();
    assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
    assert!(s["properties"]["steps"].is_object());
    assert!(s["required"]
        .as_array()
        .expect("required")
        .iter()
        .any(|r| r == "plan_id"));
    let text = s.to_string();
    for field in [
        "depends_on",
        "on_failure",
        "for_each",
        "cache",
        "when",
        "outputs",
        "skip_dependents",
    ] {
        assert!(text.contains(field), "schema lacks {field}");
    }
}
