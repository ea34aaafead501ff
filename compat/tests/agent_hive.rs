//! The agent-hive family of seed 002 on a real kernel with the real official plugins: the
//! legacy core interface, `create_orchestrator_from_legacy`, every bundle's plugins, and the
//! same behaviour whether the plugins are linked or loaded from their shared libraries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hive_compat::agent_hive::{
    create_orchestrator_from_legacy, AgentOrchestrator, Bundle, CompatError,
    DevelopmentOrchestrator, Orchestrator, OrchestratorBuilder, PluginSource, Task,
    UnifiedOrchestrator,
};
use hive_kernel::{AgentSpec, InprocDriver, TaskError};
use serde_json::{json, Value};

/// An agent template of role `w`: echoes its payload, fails on `{"fail": msg}`.
fn worker() -> AgentSpec {
    let d = InprocDriver::new(|t| async move {
        match t.payload.get("fail").and_then(Value::as_str) {
            Some(m) => Err(TaskError::new(m)),
            None => Ok(json!({"echo": *t.payload, "agent": t.agent.get()})),
        }
    });
    AgentSpec::new("w", d.shared())
}

/// The directory of the workspace's built shared libraries (target/debug).
fn so_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        dir.join("libhive_plugin_production.so").exists(),
        "{} has no plugin libraries: run `cargo build --workspace` (or `cargo xtask test`)",
        dir.display()
    );
    dir
}

async fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

fn loaded(o: &Orchestrator) -> Vec<String> {
    o.kernel()
        .health()
        .plugins
        .into_iter()
        .filter(|p| p.state == "loaded")
        .map(|p| p.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_orchestrator_from_legacy_production_has_the_production_plugin_reporting() {
    let o = create_orchestrator_from_legacy("production_orchestrator")
        .await
        .expect("build");
    assert_eq!(o.bundle(), Bundle::Production);
    assert_eq!(loaded(&o), ["production"]);
    let status = o.plugin_status("production").expect("production status");
    assert!(status["roles"].is_object(), "{status}");
    let h = o.get_health_status().await;
    assert_eq!(h["orchestrator"], "ProductionOrchestrator");
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["plugins"]["production"]["state"], "loaded");
    o.shutdown().await;
    // Dotted import paths and class names work too; unknown modules are refused by name.
    for name in [
        "app.core.production_orchestrator",
        "production_orchestrator.py",
        "ProductionOrchestrator",
    ] {
        assert_eq!(Bundle::from_legacy_module(name), Some(Bundle::Production));
    }
    match create_orchestrator_from_legacy("quantum_orchestrator").await {
        Err(CompatError::UnknownModule { known, .. }) => {
            assert!(known.contains("unified_orchestrator"), "{known}")
        }
        other => panic!("expected UnknownModule, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_legacy_module_loads_its_bundle() {
    let table = hive_compat::agent_hive::legacy_table();
    assert_eq!(table.len(), 9);
    for (module, class, plugins) in table {
        let o = create_orchestrator_from_legacy(module)
            .await
            .unwrap_or_else(|e| panic!("{module}: {e}"));
        assert_eq!(o.bundle().class_name(), class);
        assert_eq!(loaded(&o), plugins, "{module}");
        o.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_core_interface_spawns_delegates_and_shuts_down() {
    let o = AgentOrchestrator::builder()
        .agent(worker())
        .build()
        .await
        .expect("build");
    let o = AgentOrchestrator::from_orchestrator(o);
    let a = o.spawn_agent("w").await.expect("spawn");
    let b = o.spawn_agent("w").await.expect("spawn");
    assert!(a.starts_with("agent-") && a != b, "{a} {b}");
    // To the role: any agent; to an agent: that one.
    let r = o
        .delegate_task(Task::new("w", json!({"x": 1})).with_id("t1"), None)
        .await
        .expect("delegate");
    assert!(r.success && r.status == "succeeded", "{r:?}");
    assert_eq!(r.task_id, "t1");
    assert_eq!(
        r.result.as_ref().map(|v| v["echo"]["x"].clone()),
        Some(json!(1))
    );
    for _ in 0..5 {
        let r = o
            .delegate_task(Task::new("w", json!({})), Some(&b))
            .await
            .expect("delegate");
        assert_eq!(r.agent_id.as_deref(), Some(b.as_str()), "{r:?}");
    }
    // A failed task is a result, not an error; retries are counted.
    let r = o
        .delegate_task(
            Task::new("w", json!({"fail": "nope"})).with_max_attempts(2),
            None,
        )
        .await
        .expect("delegate");
    assert!(!r.success && r.status == "failed", "{r:?}");
    assert_eq!(r.attempts, 2);
    assert_eq!(r.error.as_deref(), Some("nope"));
    // Health counts the agents by role.
    let h = o.get_health_status().await;
    assert_eq!(h["agents"]["by_role"]["w"], 2, "{h}");
    assert_eq!(h["orchestrator"], "AgentOrchestrator");
    // shutdown_agent: true, then false (already stopped), and bad ids are refused.
    assert!(o.shutdown_agent(&a).await.expect("shutdown"));
    assert!(!o.shutdown_agent(&a).await.expect("shutdown again"));
    assert!(!o.shutdown_agent("agent-999").await.expect("no such agent"));
    assert!(matches!(
        o.shutdown_agent("bob").await,
        Err(CompatError::BadAgentId(_))
    ));
    // A role without a template is refused by name (the kernel alone mocks nothing).
    match o.spawn_agent("qa").await {
        Err(CompatError::UnknownRole { role, known }) => {
            assert_eq!((role.as_str(), known.as_str()), ("qa", "w"))
        }
        other => panic!("expected UnknownRole, got {other:?}"),
    }
    o.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_orchestrator_spawns_mock_agents_for_any_role() {
    let o = DevelopmentOrchestrator::new().await.expect("build");
    let id = o.spawn_agent("backend_developer").await.expect("spawn");
    let r = o
        .delegate_task(
            Task::new("backend_developer", json!({"spec": "login page"})),
            Some(&id),
        )
        .await
        .expect("delegate");
    assert!(r.success, "{r:?}");
    let out = r.result.unwrap_or_default();
    assert_eq!(out["mock"], true, "{out}");
    assert_eq!(out["payload"]["spec"], "login page");
    let dev = o.plugin_status("development").expect("status");
    assert_eq!(dev["mock"]["completed"], 1, "{dev}");
    o.shutdown().await;
}

/// The same scenario on a unified orchestrator whose plugins come from `source`: the
/// plugins' figures after 30 tasks (4 of which fail once).
async fn unified_scenario(source: PluginSource) -> (Vec<String>, Value, Value, Value) {
    let mut b: OrchestratorBuilder = UnifiedOrchestrator::builder();
    b.plugin_source(source).agent(worker());
    let o = b.build().await.expect("build");
    for _ in 0..3 {
        o.spawn_agent("w").await.expect("spawn");
    }
    for i in 0..30 {
        let payload = if i % 8 == 0 {
            json!({"fail": "flaky"})
        } else {
            json!({"i": i})
        };
        o.delegate_task(Task::new("w", payload).with_max_attempts(1), None)
            .await
            .expect("delegate");
    }
    // Observers are asynchronous: wait until performance saw every attempt.
    assert!(
        wait_for(Duration::from_secs(5), || o
            .plugin_status("performance")
            .is_some_and(|s| s["roles"]["w"]["attempts"] == 30))
        .await,
        "{:?}",
        o.plugin_status("performance")
    );
    let perf = o.plugin_status("performance").unwrap_or_default();
    let auto = o.plugin_status("automation").unwrap_or_default();
    let prod = o.plugin_status("production").unwrap_or_default();
    let names = loaded(&o);
    o.shutdown().await;
    (
        names,
        json!({"attempts": perf["roles"]["w"]["attempts"], "failed": perf["roles"]["w"]["failed"]}),
        json!({"calls": auto["breakers"]["role:w"]["calls"], "state": auto["breakers"]["role:w"]["state"]}),
        json!({"roles": prod["roles"].as_object().map(|r| r.len())}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_and_loaded_plugins_behave_the_same() {
    let linked = unified_scenario(PluginSource::Linked).await;
    let files = unified_scenario(PluginSource::Files {
        dir: Some(so_dir()),
    })
    .await;
    assert_eq!(
        linked.0,
        ["production", "performance", "automation", "development"]
    );
    assert_eq!(linked, files);
    assert_eq!(linked.1, json!({"attempts": 30, "failed": 4}));
}
