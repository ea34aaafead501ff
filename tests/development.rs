//! End-to-end tests of the official `development` plugin, through `hive`, hive.toml and the
//! real loader: seeded `mock` agents, fault injection, the debug trace, and dry runs.

use hive_tests::{official_plugin, repo_root, scratch, test_agent, Hive};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A hive.toml in `dir`: `pools` (TOML), then the development plugin with `config` (the
/// body of its `[plugins.config]` table, TOML).
fn config(dir: &Path, pools: &str, plugin_config: &str) -> PathBuf {
    let path = dir.join("hive.toml");
    let text = format!(
        "[kernel]\nstate_dir = \"state\"\n\n{pools}\n\n[[plugins]]\npath = \"{}\"\n[plugins.config]\n{plugin_config}\n",
        official_plugin("development").display()
    );
    std::fs::write(&path, text).expect("write hive.toml");
    path
}

const MOCK_POOL: &str = "[[pools]]\nrole = \"sim\"\ndriver = \"mock\"\nsize = 3\ncapacity = 8\n";

/// `n` tasks for role `role`, as a `--tasks @FILE` file.
fn tasks_file(dir: &Path, role: &str, n: usize) -> String {
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "role": role, "payload": {"i": i}}))
        .collect();
    let path = dir.join("tasks.json");
    std::fs::write(&path, serde_json::to_string(&tasks).expect("json")).expect("write tasks");
    format!("@{}", path.display())
}

/// Per task: (id, status, attempts, errors, output): what must not depend on timing.
fn outcomes(result: &Value) -> Vec<Value> {
    let mut v: Vec<Value> = result["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {result}"))
        .iter()
        .map(|t| {
            json!([
                t["id"],
                t["status"],
                t["attempts"],
                t["errors"],
                t["output"]
            ])
        })
        .collect();
    v.sort_by_key(|x| x[0].as_str().unwrap_or_default().to_string());
    v
}

fn run_mock(dir: &Path, seed: u64) -> Value {
    let cfg = config(
        dir,
        MOCK_POOL,
        &format!(
            "seed = {seed}\n[plugins.config.mock]\nlatency_ms = {{ dist = \"lognormal\", median = 3, p99 = 20 }}\nfailure_rate = 0.25\ntimeout_rate = 0.05\n"
        ),
    );
    let tasks = tasks_file(dir, "sim", 60);
    let out = Hive::new(dir)
        .args(["run", "--tasks", &tasks, "--config"])
        .args([&cfg])
        .args(["--json", "--retries", "2", "--retry-delay", "0.001"])
        .args(["--timeout", "0.3", "--max-concurrency", "16"])
        .run();
    assert!(out.code == 0 || out.code == 1, "{out}");
    out.json()
}

#[test]
fn mock_agents_with_the_same_seed_give_identical_outcomes() {
    let dir = scratch("dev-mock-seed");
    let a = run_mock(&dir, 11);
    let b = run_mock(&dir, 11);
    let c = run_mock(&dir, 12);
    let (oa, ob, oc) = (outcomes(&a), outcomes(&b), outcomes(&c));
    assert_eq!(oa.len(), 60);
    assert_eq!(oa, ob, "same seed, different outcomes");
    assert_ne!(oa, oc, "another seed should change some outcome");
    // The profile shows: some attempts failed, some timed out, most tasks succeeded.
    let errors: Vec<String> = oa
        .iter()
        .flat_map(|o| o[3].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("mock failure")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("timed out")), "{errors:?}");
    let ok = oa.iter().filter(|o| o[1] == "succeeded").count();
    assert!(ok > 40, "{ok} of 60 succeeded");
}

#[test]
fn a_mock_crash_kills_the_agent_for_real() {
    let dir = scratch("dev-mock-crash");
    let cfg = config(
        &dir,
        MOCK_POOL,
        "[plugins.config.mock]\nlatency_ms = 1\ncrash_rate = 1.0\n",
    );
    let events = dir.join("events.jsonl");
    let out = Hive::new(&dir)
        .args([
            "run",
            "--tasks",
            "[{\"id\": \"doomed\", \"role\": \"sim\"}]",
        ])
        .args(["--config"])
        .args([&cfg])
        .args(["--events"])
        .args([&events])
        .run();
    assert_eq!(out.code, 1, "{out}");
    let text = std::fs::read_to_string(&events).expect("events");
    let failed: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "agent_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("mock agent crashed")));
    assert!(
        text.contains("\"status\":\"agent_lost\""),
        "the attempt was lost with it"
    );
}

#[test]
fn a_pool_that_crashed_to_nothing_fails_its_waiting_tasks_instead_of_hanging() {
    let dir = scratch("dev-starved");
    // Every mock attempt crashes its agent: after two crashes the role has no agent, and the
    // tasks still waiting fail once the starvation timeout passes (no hang).
    let path = dir.join("hive.toml");
    std::fs::write(
        &path,
        format!(
            "[kernel]\nstarved_role_timeout_s = 0.3\n\n[[pools]]\nrole = \"sim\"\ndriver = \"mock\"\nsize = 2\n\n[[plugins]]\npath = \"{}\"\n[plugins.config.mock]\nlatency_ms = 5\ncrash_rate = 1.0\n",
            official_plugin("development").display()
        ),
    )
    .expect("write");
    let tasks = tasks_file(&dir, "sim", 6);
    let out = Hive::new(&dir)
        .args(["run", "--tasks", &tasks, "--config"])
        .args([&path])
        .args(["--json"])
        .run();
    assert_eq!(out.code, 1, "{out}");
    let r = out.json();
    let starved = r["tasks"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|t| {
                    t["errors"]
                        .to_string()
                        .contains("no agent of role `sim` was alive")
                })
                .count()
        })
        .unwrap_or(0);
    assert!(starved >= 4, "{r}");
}

#[test]
fn fault_injection_fails_the_configured_share_of_a_roles_tasks() {
    let dir = scratch("dev-fault-rate");
    let cfg = config(
        &dir,
        MOCK_POOL,
        "seed = 3\n[plugins.config.mock]\nlatency_ms = 0\n\n[[plugins.config.faults]]\nrole = \"sim\"\nfail_rate = 0.2\n",
    );
    let tasks = tasks_file(&dir, "sim", 1000);
    let out = Hive::new(&dir)
        .args(["run", "--tasks", &tasks, "--config"])
        .args([&cfg])
        .args(["--json", "--max-concurrency", "64"])
        .run();
    assert_eq!(out.code, 1, "some tasks must fail: {out}");
    let r = out.json();
    let failed: Vec<&Value> = r["tasks"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["status"] == "failed").collect())
        .unwrap_or_default();
    // Binomial(1000, 0.2): sd 12.6; +-50 is about 4 sd.
    assert!(
        (150..=250).contains(&failed.len()),
        "{} of 1000 failed",
        failed.len()
    );
    for t in &failed {
        assert_eq!(t["attempts"], 0, "an injected failure runs nothing: {t}");
        assert!(t["errors"].to_string().contains("fault injected"), "{t}");
    }
    // Tasks of another role are untouched.
    let cfg = config(
        &dir,
        MOCK_POOL,
        "[plugins.config.mock]\nlatency_ms = 0\n\n[[plugins.config.faults]]\nrole = \"other\"\nfail_rate = 1.0\n",
    );
    let tasks = tasks_file(&dir, "sim", 50);
    let out = Hive::new(&dir)
        .args(["run", "--tasks", &tasks, "--config"])
        .args([&cfg])
        .run();
    assert_eq!(out.code, 0, "{out}");
}

#[test]
fn fault_injection_delays_and_kills_real_agents() {
    let dir = scratch("dev-fault-kill");
    let pools = format!(
        "[[pools]]\nrole = \"py\"\ndriver = \"stdio\"\nsize = 2\ncapacity = 1\ncommand = \"python3\"\nargs = [\"{}\"]\n",
        test_agent().display()
    );
    let cfg = config(
        &dir,
        &pools,
        "[[plugins.config.faults]]\nrole = \"py\"\nkill_after_tasks = 3\n\n[[plugins.config.faults]]\nrole = \"py\"\ndelay_ms = 150\n",
    );
    let events = dir.join("events.jsonl");
    let tasks: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("t{i}"), "role": "py", "payload": {"sleep": 0.2}}))
        .collect();
    let out = Hive::new(&dir)
        .args([
            "run",
            "--tasks",
            &serde_json::to_string(&tasks).expect("json"),
        ])
        .args(["--config"])
        .args([&cfg])
        .args(["--events"])
        .args([&events])
        .args(["--json", "--retries", "2", "--retry-delay", "0.01"])
        .run();
    assert_eq!(out.code, 0, "every task completes despite the kill: {out}");
    let lines: Vec<Value> = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let injected: Vec<&Value> = lines
        .iter()
        .filter(|e| e["type"] == "plugin_event" && e["name"] == "fault_injected")
        .collect();
    assert_eq!(injected.len(), 1, "one kill: {injected:?}");
    let killed = &injected[0]["data"]["agent"];
    assert!(
        lines.iter().any(|e| e["type"] == "agent_failed"
            && &e["agent"] == killed
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("fault injection"))),
        "the agent was killed for real"
    );
    // The task it was running was tried again on another agent.
    let r = out.json();
    assert!(
        r["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["attempts"] == 2)),
        "{r}"
    );
    // Every task was delayed once: none started before 150 ms after its submission.
    let queued: Vec<f64> = lines
        .iter()
        .filter(|e| e["type"] == "attempt_finished" && e["attempt"] == 1)
        .filter_map(|e| e["queue_ms"].as_f64())
        .collect();
    assert_eq!(queued.len(), 6, "{queued:?}");
    assert!(queued.iter().all(|q| *q >= 140.0), "{queued:?}");
}

#[test]
fn the_trace_records_every_event_of_every_task_in_order() {
    let dir = scratch("dev-trace");
    let trace = dir.join("trace.jsonl");
    let cfg = config(
        &dir,
        MOCK_POOL,
        &format!(
            "[plugins.config.trace]\nenabled = true\npath = \"{}\"\n[plugins.config.mock]\nlatency_ms = 1\n",
            trace.display()
        ),
    );
    let tasks = tasks_file(&dir, "sim", 20);
    let out = Hive::new(&dir)
        .args(["run", "--tasks", &tasks, "--config"])
        .args([&cfg])
        .run();
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<Value> = std::fs::read_to_string(&trace)
        .expect("trace file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["ts_ms"].as_f64().is_some()));
    let spawned = lines
        .iter()
        .filter(|l| l["event"] == "agent_spawned")
        .count();
    assert_eq!(spawned, 3);
    for i in 0..20 {
        let name = format!("t{i}");
        let seq: Vec<&str> = lines
            .iter()
            .filter(|l| l["name"] == name.as_str())
            .filter_map(|l| l["event"].as_str())
            .collect();
        assert_eq!(
            seq,
            [
                "task_submitted",
                "task_delegated",
                "task_started",
                "attempt_finished",
                "task_completed"
            ],
            "task {name}"
        );
    }
}

#[test]
fn a_dry_run_executes_nothing_and_records_nothing() {
    let dir = scratch("dev-dry-run");
    let root = repo_root();
    let marker = dir.join("touched");
    let plan = dir.join("plan.json");
    std::fs::write(
        &plan,
        json!({
            "plan_id": "dry",
            "version": "1",
            "steps": [
                {"id": "touch", "command": "touch", "args": [marker.display().to_string()]},
                {"id": "ask", "role": "echo", "task": {"q": 1}, "depends_on": ["touch"]},
                {"id": "out", "command": "sh", "args": ["-c", "exit 3"], "outputs": ["version"], "depends_on": ["ask"]},
                {"id": "use", "command": "echo", "args": ["${steps.out.outputs.version}"], "depends_on": ["out"]}
            ]
        })
        .to_string(),
    )
    .expect("plan");
    // The README's config: a stdio pool and a process pool; no development plugin in it.
    let out = Hive::new(&dir)
        .args(["run"])
        .args([&plan])
        .args(["--config"])
        .args([root.join("examples/hive.toml")])
        .args(["--dry-run", "--json"])
        .env("HIVE_STATE_DIR", dir.join("state"))
        .run();
    assert_eq!(out.code, 0, "{out}");
    assert!(!marker.exists(), "a dry run must not execute commands");
    assert!(out.stderr.contains("dry run"), "{out}");
    let r = out.json();
    let steps = r["tasks"].as_array().expect("steps");
    assert_eq!(steps.len(), 4, "{r}");
    assert!(steps.iter().all(|s| s["status"] == "succeeded"), "{r}");
    // Commands say what would have run; the agent step got a mock answer.
    let touch = &steps[0]["output"]["stdout"];
    assert!(
        touch
            .as_str()
            .is_some_and(|o| o.starts_with("[mock] would run: touch ")),
        "{r}"
    );
    assert_eq!(steps[1]["output"]["mock"], true, "{r}");
    assert_eq!(steps[2]["outputs"]["version"], "dry-run:version", "{r}");
    // Nothing recorded: no run in the state directory.
    let runs = Hive::new(&dir)
        .args(["runs", "--state-dir"])
        .args([dir.join("state")])
        .run();
    assert!(!runs.stdout.contains("dry"), "{runs}");
    // The examples' own CI plan dry-runs too (the README's main job, without running it).
    let out = Hive::new(&dir)
        .args(["run"])
        .args([root.join("examples/plans/ci.toml")])
        .args(["--config"])
        .args([root.join("examples/hive.toml")])
        .args(["--dry-run", "--quiet"])
        .run();
    assert_eq!(out.code, 0, "{out}");
}

#[test]
fn a_dry_run_follows_the_mock_profile() {
    let dir = scratch("dev-dry-fail");
    let plan = dir.join("plan.json");
    std::fs::write(
        &plan,
        json!({"plan_id": "p", "version": "1", "steps": [{"id": "a", "role": "sim", "task": 1}]})
            .to_string(),
    )
    .expect("plan");
    let cfg = config(
        &dir,
        "[[pools]]\nrole = \"sim\"\ndriver = \"process\"\n",
        "[plugins.config.mock.roles.sim]\nfailure_rate = 1.0\n",
    );
    let out = Hive::new(&dir)
        .args(["run"])
        .args([&plan])
        .args(["--config"])
        .args([&cfg])
        .args(["--dry-run", "--quiet"])
        .run();
    assert_eq!(
        out.code, 1,
        "the mock fails every attempt of role sim: {out}"
    );
    assert!(out.stdout.contains("mock failure"), "{out}");
}

#[test]
fn bad_development_config_is_refused_with_the_key() {
    let dir = scratch("dev-bad-config");
    for (body, want) in [
        (
            "[plugins.config.mock]\nfailure_rate = 2.0\n",
            "mock.failure_rate: expected a rate between 0 and 1",
        ),
        ("bogus = 1\n", "unknown field `bogus`"),
        (
            "[plugins.config.mock]\nlatency_ms = { dist = \"weird\" }\n",
            "mock.latency_ms.dist",
        ),
        (
            "[[plugins.config.faults]]\nrole = \"x\"\n",
            "faults[0]: does nothing",
        ),
    ] {
        let cfg = config(&dir, MOCK_POOL, body);
        let out = Hive::new(&dir)
            .args(["run", "--tasks", "[{\"role\": \"sim\"}]", "--config"])
            .args([&cfg])
            .run();
        assert_eq!(out.code, 2, "{body}: {out}");
        assert!(out.stderr.contains(want), "{body}: {out}");
        assert!(out.stderr.contains("hive.toml"), "names the file: {out}");
    }
    // A pool naming the mock driver without the plugin that contributes it.
    let path = dir.join("nomock.toml");
    std::fs::write(
        &path,
        format!(
            "{MOCK_POOL}\n[[plugins]]\npath = \"{}\"\n[plugins.config.mock]\nenabled = false\n",
            official_plugin("development").display()
        ),
    )
    .expect("write");
    let out = Hive::new(&dir)
        .args(["run", "--tasks", "[{\"role\": \"sim\"}]", "--config"])
        .args([&path])
        .run();
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains("nomock.toml:3") && out.stderr.contains("unknown driver `mock`"),
        "{out}"
    );
}
