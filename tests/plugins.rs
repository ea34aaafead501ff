//! Plugins through the real loader, on real `.so` files built from the workspace: every hook
//! in order, panics contained and quarantined, slow observers not slowing dispatch, decision
//! hooks changing what the router does, host commands, and every class of load error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_kernel::{
    AgentSpec, Event, InprocDriver, Kernel, LoadErrorKind, Outcome, PluginSpec, QuarantinePolicy,
    RetryPolicy, ShutdownMode, Status, TaskError, TaskSpec,
};
use hive_tests::{plugin_lib, scratch, Hive};
use serde_json::{json, Value};

fn testkit(config: Value) -> PluginSpec {
    PluginSpec::path(plugin_lib("hive_testkit")).with_config(config)
}

/// A kernel with `plugins` loaded, then one inproc agent of role `w` (its template
/// registered). The agent echoes its id, fails when the payload says `{"fail": msg}`, and
/// counts its calls.
async fn kernel_with(
    plugins: &[PluginSpec],
    policy: QuarantinePolicy,
) -> (Kernel, Arc<AtomicUsize>) {
    let k = Kernel::builder()
        .event_capacity(1 << 14)
        .build()
        .expect("kernel");
    k.load_plugins(plugins, policy, Path::new("."))
        .expect("plugins load");
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let d = InprocDriver::new(move |t| {
        c2.fetch_add(1, Ordering::SeqCst);
        async move {
            match t.payload.get("fail").and_then(Value::as_str) {
                Some(msg) => Err(TaskError::new(msg)),
                None => Ok(json!({"agent": t.agent.get()})),
            }
        }
    });
    let spec = AgentSpec::new("w", d.shared());
    k.register_template(spec.clone());
    k.spawn_agent(spec).await.expect("spawn");
    (k, calls)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_plugin_sees_every_hook_in_order() {
    let dir = scratch("plugin-record");
    let rec = dir.join("calls.log");
    let (k, _) = kernel_with(
        &[testkit(json!({"record": rec}))],
        QuarantinePolicy::default(),
    )
    .await;
    let ok = k
        .run(TaskSpec::for_role("w", json!({})).with_name("t1"))
        .await
        .expect("t1");
    // The agent hands its slot back just after the result: wait for Ready, so that t2 finds
    // it idle (otherwise the worker takes t2 straight from the queue, never leaving Busy).
    assert!(
        eventually(Duration::from_secs(5), || k.agents()[0].state.name()
            == "ready")
        .await
    );
    let bad = k
        .run(TaskSpec::for_role("w", json!({"fail": "boom"})).with_name("t2"))
        .await
        .expect("t2");
    assert!(
        eventually(Duration::from_secs(5), || k.agents()[0].state.name()
            == "ready")
        .await
    );
    assert_eq!(ok.status(), Status::Succeeded);
    assert_eq!(bad.status(), Status::Failed);
    k.shutdown(ShutdownMode::Graceful).await;
    let all = lines(&rec);
    let (t1, t2) = (ok.id.get(), bad.id.get());
    // Decision hooks run inline on the dispatching thread; observers on the plugin's thread,
    // in event order. Check each sequence on its own.
    let decisions: Vec<&String> = all
        .iter()
        .filter(|l| l.starts_with("before_delegate") || l.starts_with("on_task_failed"))
        .collect();
    assert_eq!(
        decisions,
        vec![
            &format!("before_delegate {t1} t1 1"),
            &format!("before_delegate {t2} t2 1"),
            &format!("on_task_failed {t2} 1 boom")
        ]
    );
    let observed: Vec<&String> = all
        .iter()
        .filter(|l| !l.starts_with("before_delegate") && !l.starts_with("on_task_failed"))
        .collect();
    let expected: Vec<String> = vec![
        "agent_spawned 1 w".into(),
        "agent_state_changed 1 starting ready".into(),
        format!("task_submitted {t1} t1 role:w"),
        "agent_state_changed 1 ready busy".into(),
        format!("task_delegated {t1} t1 1"),
        format!("task_started {t1} t1 1"),
        format!("task_completed {t1} t1 succeeded"),
        "agent_state_changed 1 busy ready".into(),
        format!("task_submitted {t2} t2 role:w"),
        "agent_state_changed 1 ready busy".into(),
        format!("task_delegated {t2} t2 1"),
        format!("task_started {t2} t2 1"),
        format!("task_completed {t2} t2 failed"),
        "agent_state_changed 1 busy ready".into(),
        "agent_state_changed 1 ready draining".into(),
        "agent_state_changed 1 draining stopped".into(),
        "shutdown ".into(),
    ];
    assert_eq!(observed, expected.iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_is_quarantined_and_the_kernel_carries_on() {
    let (k, calls) = kernel_with(
        &[testkit(json!({"panic": "all"}))],
        QuarantinePolicy::new(3, Duration::from_secs(60)),
    )
    .await;
    for i in 0..20 {
        let r = k
            .run(TaskSpec::for_role("w", json!({})).with_name(format!("t{i}")))
            .await
            .expect("run");
        assert_eq!(r.status(), Status::Succeeded, "task {i}: {r:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    assert!(
        eventually(Duration::from_secs(5), || k.health().plugins[0].state
            == "quarantined")
        .await,
        "{:?}",
        k.health().plugins
    );
    let p = &k.health().plugins[0];
    assert!(p.errors >= 3, "{p:?}");
    let reason = p.reason.clone().unwrap_or_default();
    assert!(reason.contains("panicked in"), "{reason}");
    assert_eq!(k.health().status, "degraded");
    k.shutdown(ShutdownMode::Graceful).await;
}

/// A plugin defined in this test program and linked, not loaded: it counts completed tasks
/// and answers `before_delegate` with a short circuit for tasks named `short`.
struct LinkedCounter {
    completed: AtomicUsize,
}

impl hive_plugin_api::HivePlugin for LinkedCounter {
    const NAME: &'static str = "linked-counter";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: hive_plugin_api::Hooks = hive_plugin_api::Hooks(
        hive_plugin_api::Hooks::TASK_COMPLETED.0 | hive_plugin_api::Hooks::BEFORE_DELEGATE.0,
    );
    fn new(
        _config: &str,
        _ctx: hive_plugin_api::PluginContext,
    ) -> Result<Self, hive_plugin_api::PluginError> {
        Ok(LinkedCounter {
            completed: AtomicUsize::new(0),
        })
    }
    fn on_task_completed(
        &self,
        _e: &hive_plugin_api::TaskCompletion<'_>,
    ) -> Result<(), hive_plugin_api::PluginError> {
        self.completed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn before_delegate(
        &self,
        r: &hive_plugin_api::DelegateRequest<'_>,
    ) -> Result<hive_plugin_api::Delegate, hive_plugin_api::PluginError> {
        Ok(if r.name.as_str() == "short" {
            hive_plugin_api::Delegate::ShortCircuit {
                output_json: "\"from the linked plugin\"".into(),
            }
        } else {
            hive_plugin_api::Delegate::Continue
        })
    }
    fn status(&self) -> String {
        json!({"completed": self.completed.load(Ordering::SeqCst)}).to_string()
    }
}

/// A linked plugin that panics in every hook.
struct LinkedPanicker;

impl hive_plugin_api::HivePlugin for LinkedPanicker {
    const NAME: &'static str = "linked-panicker";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: hive_plugin_api::Hooks = hive_plugin_api::Hooks::TASK_STARTED;
    fn new(
        _config: &str,
        _ctx: hive_plugin_api::PluginContext,
    ) -> Result<Self, hive_plugin_api::PluginError> {
        Ok(LinkedPanicker)
    }
    fn on_task_started(
        &self,
        _e: &hive_plugin_api::TaskEvent<'_>,
    ) -> Result<(), hive_plugin_api::PluginError> {
        panic!("the linked panicker panics")
    }
}

/// A linked plugin that sends every task, once, to an agent that does not exist.
struct PinToGhost {
    pinned: pins::Set,
}

mod pins {
    /// A set of task ids behind a std mutex.
    #[derive(Default)]
    pub struct Set(std::sync::Mutex<std::collections::HashSet<u64>>);
    impl Set {
        /// True the first time `id` is inserted.
        pub fn first(&self, id: u64) -> bool {
            self.0.lock().map(|mut s| s.insert(id)).unwrap_or(false)
        }
    }
}

impl hive_plugin_api::HivePlugin for PinToGhost {
    const NAME: &'static str = "pin-to-ghost";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: hive_plugin_api::Hooks = hive_plugin_api::Hooks::BEFORE_DELEGATE;
    fn new(
        _config: &str,
        _ctx: hive_plugin_api::PluginContext,
    ) -> Result<Self, hive_plugin_api::PluginError> {
        Ok(PinToGhost {
            pinned: Default::default(),
        })
    }
    fn before_delegate(
        &self,
        r: &hive_plugin_api::DelegateRequest<'_>,
    ) -> Result<hive_plugin_api::Delegate, hive_plugin_api::PluginError> {
        Ok(if self.pinned.first(r.task) {
            hive_plugin_api::Delegate::Reroute {
                target: hive_plugin_api::Target::agent(999_999),
            }
        } else {
            hive_plugin_api::Delegate::Continue
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_rerouted_to_an_agent_that_left_goes_back_to_its_own_target() {
    let (k, calls) = kernel_with(
        &[PluginSpec::linked(hive_plugin_api::linked_module::<
            PinToGhost,
        >())],
        QuarantinePolicy::default(),
    )
    .await;
    let r = k
        .run(TaskSpec::for_role("w", json!({})).with_name("pinned"))
        .await
        .expect("run");
    assert_eq!(r.status(), Status::Succeeded, "{r:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    k.shutdown(ShutdownMode::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_linked_into_the_program_behave_like_loaded_ones() {
    let (k, calls) = kernel_with(
        &[
            PluginSpec::linked(hive_plugin_api::linked_module::<LinkedCounter>()),
            PluginSpec::linked(hive_plugin_api::linked_module::<LinkedPanicker>()),
        ],
        QuarantinePolicy::new(3, Duration::from_secs(60)),
    )
    .await;
    let h = k.health();
    let names: Vec<(&str, &str)> = h
        .plugins
        .iter()
        .map(|p| (p.name.as_str(), p.path.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("linked-counter", "(linked) linked-counter"),
            ("linked-panicker", "(linked) linked-panicker")
        ]
    );
    for i in 0..5 {
        let r = k
            .run(TaskSpec::for_role("w", json!({})).with_name(format!("t{i}")))
            .await
            .expect("run");
        assert_eq!(r.status(), Status::Succeeded);
    }
    let r = k
        .run(TaskSpec::for_role("w", json!({})).with_name("short"))
        .await
        .expect("run");
    assert_eq!(
        r.outcome,
        Outcome::Succeeded(json!("from the linked plugin"))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "the short-circuited task never ran"
    );
    // Observers are called, and the panicking plugin is contained and quarantined, as a
    // library loaded from a file would be.
    assert!(
        eventually(Duration::from_secs(5), || k.health().plugins[0].status
            == json!({"completed": 6}))
        .await,
        "{:?}",
        k.health().plugins
    );
    assert!(
        eventually(Duration::from_secs(5), || k.health().plugins[1].state
            == "quarantined")
        .await,
        "{:?}",
        k.health().plugins
    );
    assert_eq!(k.health().plugins[0].state, "loaded");
    k.shutdown(ShutdownMode::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_observer_loses_events_but_never_slows_dispatch() {
    let k = Kernel::builder()
        .event_capacity(64)
        .queue_capacity(100_000)
        .grace_period(Duration::from_secs(1))
        .build()
        .expect("kernel");
    k.load_plugins(
        &[
            testkit(json!({"sleep_in": ["task_completed"], "sleep_ms": 1000}))
                .with_hooks(vec!["task_completed".into()]),
        ],
        QuarantinePolicy::default(),
        Path::new("."),
    )
    .expect("load");
    let d = InprocDriver::new(|_| async { Ok(Value::Null) });
    for _ in 0..4 {
        k.spawn_agent(AgentSpec::new("w", d.clone().shared()))
            .await
            .expect("spawn");
    }
    let t0 = Instant::now();
    let specs = (0..5000)
        .map(|_| TaskSpec::for_role("w", Value::Null))
        .collect();
    let r = k.run_batch(specs, hive_kernel::BatchOptions::new(64)).await;
    assert!(r.all_succeeded());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "dispatch waited for the plugin: {:?}",
        t0.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(3), || k.health().plugins[0].dropped > 0).await,
        "{:?}",
        k.health().plugins
    );
    assert_eq!(k.health().plugins[0].hooks, vec!["task_completed"]);
    // Shutdown does not wait for the backlog of a slow plugin past the grace period.
    let t0 = Instant::now();
    k.shutdown(ShutdownMode::Graceful).await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "shutdown waited {:?} for a slow plugin",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_hooks_change_what_the_router_does() {
    let rules = json!({
        "delegate": [
            {"name": "sc", "do": "short_circuit", "output": {"from": "cache"}},
            {"name": "rj", "do": "reject", "reason": "over budget"},
            {"name": "df", "do": "defer", "ms": 200},
            {"name": "rr", "do": "reroute", "role": "b"},
            {"name": "loop", "do": "reroute_forever", "role": "w"}
        ],
        "on_failed": [
            {"error_contains": "fallback-me", "do": "fallback", "output": {"degraded": true}},
            {"error_contains": "flaky", "do": "retry_after", "ms": 20},
            {"error_contains": "hopeless", "do": "give_up"}
        ]
    });
    let (k, calls) = kernel_with(&[testkit(rules)], QuarantinePolicy::default()).await;
    let b_driver =
        InprocDriver::new(|t| async move { Ok(json!({"agent": t.agent.get(), "role": "b"})) });
    let b = k
        .spawn_agent(AgentSpec::new("b", b_driver.shared()))
        .await
        .expect("b");

    let r = k
        .run(TaskSpec::for_role("w", json!({})).with_name("sc"))
        .await
        .expect("sc");
    assert_eq!(r.outcome, Outcome::Succeeded(json!({"from": "cache"})));
    assert!(r.attempts.is_empty(), "short-circuited: no attempt ran");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let r = k
        .run(TaskSpec::for_role("w", json!({})).with_name("rj"))
        .await
        .expect("rj");
    assert!(
        matches!(&r.outcome, Outcome::Failed(e) if e.message.contains("rejected by plugin testkit: over budget")),
        "{r:?}"
    );

    let r = k
        .run(TaskSpec::for_role("w", json!({})).with_name("df"))
        .await
        .expect("df");
    assert_eq!(r.status(), Status::Succeeded);
    let waited = r.attempts[0].started_at.since(r.queued_at);
    assert!(
        waited >= Duration::from_millis(200),
        "deferred only {waited:?}"
    );
    assert_eq!(r.attempts.len(), 1, "a deferral is not an attempt");

    let r = k
        .run(TaskSpec::for_role("w", json!({})).with_name("rr"))
        .await
        .expect("rr");
    let Outcome::Succeeded(v) = &r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(v["agent"], json!(b.get()), "rerouted to role b");

    let r = tokio::time::timeout(
        Duration::from_secs(10),
        k.run(TaskSpec::for_role("w", json!({})).with_name("loop")),
    )
    .await
    .expect("a plugin rerouting forever cannot livelock the task")
    .expect("loop");
    assert_eq!(
        r.status(),
        Status::Succeeded,
        "after the redirect cap the task runs"
    );

    let r = k
        .run(TaskSpec::for_role("w", json!({"fail": "fallback-me"})))
        .await
        .expect("fb");
    assert_eq!(r.outcome, Outcome::Succeeded(json!({"degraded": true})));

    let r = k
        .run(TaskSpec::for_role("w", json!({"fail": "flaky"})))
        .await
        .expect("flaky");
    assert_eq!(r.status(), Status::Failed);
    assert_eq!(
        r.attempts.len(),
        10,
        "retry_after retries past a policy of one attempt, up to the limit"
    );

    let r = k
        .run(
            TaskSpec::for_role("w", json!({"fail": "hopeless"}))
                .with_retry(RetryPolicy::fixed(5, Duration::ZERO)),
        )
        .await
        .expect("hopeless");
    assert_eq!(r.attempts.len(), 1, "give_up stops the retries");
    let d = &k.health().plugins[0];
    assert!(d.decisions >= 8, "{d:?}");
    k.shutdown(ShutdownMode::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_spawns_an_agent_from_inside_a_hook_and_logs_through_tracing() {
    let k0 = Kernel::builder().build().expect("kernel");
    let mut ev = k0.subscribe();
    k0.load_plugins(
        &[testkit(
            json!({"spawn_on_completed": "w", "log": "hello from testkit"}),
        )],
        QuarantinePolicy::default(),
        Path::new("."),
    )
    .expect("load");
    let log = ev.try_recv().map(|e| e.event.clone());
    assert!(
        matches!(&log, Some(Event::PluginLog { plugin, message, .. }) if &**plugin == "testkit" && message.contains("hello from testkit") && message.contains("answer=42")),
        "{log:?}"
    );
    let d = InprocDriver::new(|_| async { Ok(Value::Null) });
    let spec = AgentSpec::new("w", d.shared());
    k0.register_template(spec.clone());
    k0.spawn_agent(spec).await.expect("spawn");
    k0.run(TaskSpec::for_role("w", json!({})))
        .await
        .expect("run");
    assert!(
        eventually(Duration::from_secs(5), || k0.agents_with_role("w").len()
            == 2)
        .await,
        "the plugin's spawn_agent was applied"
    );
    k0.shutdown(ShutdownMode::Graceful).await;
}

fn load_err(spec: PluginSpec) -> hive_kernel::PluginLoadError {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let k = Kernel::builder().build().expect("kernel");
        k.load_plugins(&[spec], QuarantinePolicy::default(), Path::new("."))
            .expect_err("must not load")
    })
}

fn system_library() -> PathBuf {
    [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("a system shared library (libz or libm)")
}

#[test]
fn every_load_failure_names_the_path_and_the_reason() {
    let dir = scratch("plugin-errors");
    let missing = dir.join("nope.so");
    let e = load_err(PluginSpec::path(&missing));
    assert_eq!(e.kind, LoadErrorKind::NotFound);
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    let text = dir.join("notes.so");
    std::fs::write(&text, "this is not a library\n").expect("write");
    let e = load_err(PluginSpec::path(&text));
    assert_eq!(e.kind, LoadErrorKind::NotSharedLibrary, "{e}");
    assert!(
        e.to_string().contains("notes.so") && e.to_string().contains("not a shared library"),
        "{e}"
    );

    let lib = system_library();
    let e = load_err(PluginSpec::path(&lib));
    assert_eq!(e.kind, LoadErrorKind::NotAPlugin, "{e}");
    assert!(e.to_string().contains("not a Hive plugin"), "{e}");

    let e = load_err(testkit(json!({"refuse_config": true})));
    assert_eq!(e.kind, LoadErrorKind::ConfigRefused);
    assert!(
        e.to_string()
            .contains("refused its config: `refuse_config` is set"),
        "{e}"
    );
    let e = load_err(testkit(json!({"fail_init": true})));
    assert_eq!(e.kind, LoadErrorKind::InitFailed);
    assert!(
        e.to_string().contains("cannot reach the test database"),
        "{e}"
    );
    let e = load_err(testkit(json!({"panic_init": true})));
    assert_eq!(e.kind, LoadErrorKind::InitFailed);
    assert!(e.to_string().contains("panicked while starting"), "{e}");
    let e = load_err(PluginSpec::named("no-such-plugin-xyz"));
    assert_eq!(e.kind, LoadErrorKind::NotFound);
    assert!(e.to_string().contains("plugin search path"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_plugin_that_fails_is_a_warning_and_shows_in_health() {
    let k = Kernel::builder().build().expect("kernel");
    let warnings = k
        .load_plugins(
            &[
                testkit(json!({})),
                PluginSpec::path("/no/such/plugin.so")
                    .with_name("ghost")
                    .optional(),
            ],
            QuarantinePolicy::default(),
            Path::new("."),
        )
        .expect("the required one loads");
    assert_eq!(warnings.len(), 1);
    let h = k.health();
    assert_eq!(h.plugins.len(), 2);
    assert_eq!(h.plugins[0].state, "loaded");
    assert_eq!(h.plugins[0].status, json!({"calls": 0}));
    assert_eq!(
        (h.plugins[1].name.as_str(), h.plugins[1].state.as_str()),
        ("ghost", "failed")
    );
    assert_eq!(h.status, "degraded");
    let e = k
        .load_plugins(
            &[testkit(json!({}))],
            QuarantinePolicy::default(),
            Path::new("."),
        )
        .expect_err("twice");
    assert_eq!(e.kind, LoadErrorKind::Duplicate);
    let k2 = Kernel::builder().build().expect("kernel");
    let e = k2
        .load_plugins(
            &[testkit(json!({})), testkit(json!({}))],
            QuarantinePolicy::default(),
            Path::new("."),
        )
        .expect_err("same name twice");
    assert_eq!(e.kind, LoadErrorKind::Duplicate);
    assert!(e.to_string().contains("already loaded"), "{e}");
}

/// A compatibility plugin built by `cargo xtask test` against a frozen plugin-api.
fn compat_lib(variant: &str) -> PathBuf {
    let p =
        hive_tests::repo_root().join(format!("target/compat/target/debug/libcompat_{variant}.so"));
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_previous_minor_loads_and_works() {
    let dir = scratch("plugin-compat");
    let rec = dir.join("old.log");
    let old = compat_lib("v1_0");
    let m = hive_kernel::inspect_plugin(&old).expect("the 1.0 plugin loads");
    assert_eq!(
        (m.api_version.as_str(), m.name.as_str()),
        ("1.0.0", "compat")
    );
    let k = Kernel::builder().build().expect("kernel");
    k.load_plugins(
        &[PluginSpec::path(&old).with_config(json!({"record": rec}))],
        QuarantinePolicy::default(),
        Path::new("."),
    )
    .expect("load");
    let d = InprocDriver::new(|_| async { Ok(Value::Null) });
    k.spawn_agent(AgentSpec::new("w", d.shared()))
        .await
        .expect("spawn");
    let r = k
        .run(TaskSpec::for_role("w", json!({})))
        .await
        .expect("run");
    // Hooks added in 1.1 that a 1.0 plugin cannot have: the calls fall back to defaults.
    k.run_started("run-1", "plan");
    k.run_finished("run-1", "plan", "succeeded");
    k.shutdown(ShutdownMode::Graceful).await;
    assert_eq!(
        lines(&rec),
        vec![format!("task_completed {} succeeded", r.id.get())]
    );
    let p = &k.health().plugins[0];
    assert_eq!((p.errors, p.delivered), (0, 3), "{p:?}");
    assert_eq!(
        p.hooks,
        vec!["task_completed", "run_started", "run_finished"]
    );
}

#[test]
fn a_plugin_built_against_another_major_is_refused_with_both_versions() {
    let e = load_err(PluginSpec::path(compat_lib("v2_0")));
    assert_eq!(e.kind, LoadErrorKind::Incompatible, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("2.0.0") && m.contains(hive_plugin_api::API_VERSION),
        "both versions in: {m}"
    );
}

// ------------------------------------------------------------------ through `hive` itself --

/// A hive.toml in `dir` with one process pool `sh` and the given `[[plugins]]` entries.
fn config_with(dir: &Path, plugins: &str) -> PathBuf {
    let cfg = dir.join("hive.toml");
    std::fs::write(
        &cfg,
        format!("[kernel]\nstate_dir = \"state\"\nplugin_max_errors = 3\n\n[[pools]]\nrole = \"sh\"\ndriver = \"process\"\ncapacity = 4\n\n{plugins}"),
    )
    .expect("write config");
    cfg
}

#[test]
fn hive_plugins_inspect_shows_a_manifest_or_why_not() {
    let dir = scratch("cli-inspect");
    let lib = plugin_lib("hive_testkit");
    let out = Hive::new(&dir)
        .args(["plugins", "inspect"])
        .args([&lib])
        .args(["--json"])
        .run();
    assert_eq!(out.code, 0, "{out:?}");
    let m: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        (m["name"].as_str(), m["api_version"].as_str()),
        (Some("testkit"), Some(hive_plugin_api::API_VERSION))
    );
    assert_eq!(
        m["hooks"].as_array().map(Vec::len),
        Some(hive_plugin_api::Hooks::ALL.names().len()),
        "{m}"
    );

    let text = dir.join("fake.so");
    std::fs::write(&text, "hello").expect("write");
    let out = Hive::new(&dir)
        .args(["plugins", "inspect"])
        .args([&text])
        .run();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("fake.so") && out.stderr.contains("not a shared library"),
        "{out:?}"
    );
    let out = Hive::new(&dir)
        .args(["plugins", "inspect"])
        .args([system_library()])
        .run();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not a Hive plugin"), "{out:?}");
    let old = hive_tests::repo_root().join("target/compat/target/debug/libcompat_v2_0.so");
    let out = Hive::new(&dir)
        .args(["plugins", "inspect"])
        .args([&old])
        .run();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("2.0.0") && out.stderr.contains(hive_plugin_api::API_VERSION),
        "{out:?}"
    );
}

#[test]
fn a_run_with_a_panicking_plugin_completes_and_exits_0() {
    let dir = scratch("cli-panicky");
    let cfg = config_with(
        &dir,
        &format!(
            "[[plugins]]\npath = \"{}\"\n[plugins.config]\npanic = \"all\"\n",
            plugin_lib("hive_testkit").display()
        ),
    );
    let tasks: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("t{i}"), "command": "true"}))
        .collect();
    let out = Hive::new(&dir)
        .args(["run", "--config"])
        .args([&cfg])
        .args([
            "--tasks",
            &serde_json::to_string(&tasks).expect("json"),
            "--json",
        ])
        .run();
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(
        v["tasks"]
            .as_array()
            .is_some_and(|t| t.len() == 8 && t.iter().all(|t| t["status"] == "succeeded")),
        "{v}"
    );
    assert!(
        out.stderr.contains("quarantined"),
        "the quarantine is logged: {out:?}"
    );
}

#[test]
fn a_required_plugin_that_fails_stops_startup_before_any_task_runs() {
    let dir = scratch("cli-required");
    let marker = dir.join("ran");
    let cfg = config_with(
        &dir,
        &format!(
            "[[plugins]]\npath = \"{}\"\n[plugins.config]\nrefuse_config = true\n",
            plugin_lib("hive_testkit").display()
        ),
    );
    let task = json!([{"command": "touch", "args": [marker]}]).to_string();
    let out = Hive::new(&dir)
        .args(["run", "--config"])
        .args([&cfg])
        .args(["--tasks", &task])
        .run();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("refused its config") && out.stderr.contains("hive.toml"),
        "{out:?}"
    );
    assert!(
        !marker.exists(),
        "no task may run when a required plugin fails to load"
    );

    // Optional: a warning, and the run goes on.
    let cfg = config_with(
        &dir,
        "[[plugins]]\npath = \"missing.so\"\noptional = true\n",
    );
    let out = Hive::new(&dir)
        .args(["run", "--config"])
        .args([&cfg])
        .args(["--tasks", &task])
        .run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("warning: optional plugin") && out.stderr.contains("missing.so"),
        "{out:?}"
    );
    assert!(marker.exists());
}

#[test]
fn hive_plugins_list_loads_the_config_plugins() {
    let dir = scratch("cli-list");
    let lib = plugin_lib("hive_testkit");
    let cfg = config_with(
        &dir,
        &format!(
            "[[plugins]]\nname = \"rec\"\npath = \"{}\"\nhooks = [\"task_completed\"]\n\n[[plugins]]\nname = \"ghost\"\npath = \"nope.so\"\noptional = true\n",
            lib.display()
        ),
    );
    let out = Hive::new(&dir)
        .args(["plugins", "list", "--json", "--config"])
        .args([&cfg])
        .run();
    assert_eq!(
        out.code, 1,
        "a failed optional plugin makes list exit 1: {out:?}"
    );
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v[0]["name"], "rec");
    assert_eq!(v[0]["state"], "loaded");
    assert_eq!(v[0]["hooks"], json!(["task_completed"]));
    assert_eq!(
        (v[1]["name"].as_str(), v[1]["state"].as_str()),
        (Some("ghost"), Some("failed"))
    );
    let out = Hive::new(&dir)
        .args(["plugins", "list", "--config"])
        .args([dir.join("absent.toml")])
        .run();
    assert_eq!(out.code, 2, "{out:?}");
}
