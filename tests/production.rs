//! End-to-end tests of the official `production` plugin, through `hive`, hive.toml and the real loader.
//!
//! Auto-scaling (a role whose queue waits past its SLA gets agents up to `max_agents`, then
//! loses its idle ones down to `min_agents` after the cool-down, while the run goes on),
//! failover (a stdio agent killed with SIGKILL is replaced and its task, with no retries of
//! its own, completes on the replacement), the status in `hive health --json`, and config
//! errors naming the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hive_tests::{official_plugin, pids_with_cmdline, scratch, test_agent, wait_until, Hive};
use serde_json::{json, Value};

/// Writes `name` in `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The events of a `--events` file.
fn events(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Whether `e` is the production plugin's event `name`.
fn is_plugin_event(e: &Value, name: &str) -> bool {
    e["type"] == "plugin_event" && e["plugin"] == "production" && e["name"] == name
}

/// The data of every production event `name`, in order.
fn plugin_events(all: &[Value], name: &str) -> Vec<Value> {
    all.iter()
        .filter(|e| is_plugin_event(e, name))
        .map(|e| e["data"].clone())
        .collect()
}

/// The position of the first event matching `f`.
fn position(all: &[Value], f: impl Fn(&Value) -> bool) -> Option<usize> {
    all.iter().position(f)
}

/// Whether `e` is the agent state change of a `role` agent to `to`.
fn changed_to(e: &Value, role: &str, to: &str) -> bool {
    e["type"] == "agent_state_changed"
        && e["role"] == role
        && (e["to"] == to || e["to"].get(to).is_some())
}

/// The `[[plugins]]` entry of the production plugin with `config` (TOML lines of its
/// `[plugins.config]`, sub-tables included).
fn production_entry(config: &str) -> String {
    format!(
        "[[plugins]]\npath = \"{}\"\n[plugins.config]\n{config}\n",
        official_plugin("production").display()
    )
}

/// A stdio pool of the test agent; `token` goes on its command line.
fn stdio_pool(role: &str, size: u32, token: &str) -> String {
    format!(
        "[[pools]]\nrole = \"{role}\"\ndriver = \"stdio\"\nsize = {size}\ncapacity = 1\n\
         command = \"python3\"\nargs = ['{}', '{token}']\nheartbeat_ms = 200\n",
        test_agent().display()
    )
}

#[test]
fn a_role_under_load_scales_up_to_max_then_retires_idle_agents_to_min() {
    let dir = scratch("production-autoscale");
    let config = write(
        &dir,
        "hive.toml",
        &format!(
            "[kernel]\nstate_dir = \"state\"\n\n[[pools]]\nrole = \"work\"\ndriver = \"process\"\n\
             size = 1\ncapacity = 1\n\n{}",
            production_entry(
                "window_s = 1\ncheck_interval_ms = 100\n[plugins.config.roles.work]\n\
                 p95_queue_wait_ms = 100\nmin_agents = 1\nmax_agents = 3\nbreach_for_ms = 300\n\
                 cool_down_ms = 500\n"
            )
        ),
    );
    let events_file = dir.join("events.jsonl");
    // Twelve tasks for one agent of capacity 1: the queue waits far past 100 ms. The last
    // task (on the local process agent) keeps the run going until the events file shows two
    // retirements and two agents of `work` stopped, then ends the run (or fails after 25 s).
    let mut tasks: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("load-{i}"), "role": "work", "command": "sleep 0.3"}))
        .collect();
    let ev = events_file.display();
    tasks.push(json!({
        "id": "keep-alive",
        "command": format!(
            "for i in $(seq 1 250); do \
               d=$(grep -c '\"name\":\"scaled_down\"' '{ev}'); \
               s=$(grep -c '\"to\":\"stopped\"' '{ev}'); \
               [ \"$d\" -ge 2 ] && [ \"$s\" -ge 2 ] && exit 0; sleep 0.1; \
             done; exit 1"
        ),
    }));
    let run = Hive::new(&dir)
        .args(["run", "--json", "--max-concurrency", "20", "--config"])
        .args([&config])
        .args(["--events"])
        .args([&events_file])
        .args(["--tasks", &Value::Array(tasks).to_string()])
        .run();
    assert_eq!(run.code, 0, "{run}");
    let result = run.json();
    let list = result["tasks"].as_array().expect("tasks");
    assert_eq!(list.len(), 13, "{result}");
    assert!(list.iter().all(|t| t["status"] == "succeeded"), "{result}");

    let all = events(&events_file);
    // The breach comes first, then the scale-ups.
    let breach = position(&all, |e| {
        is_plugin_event(e, "sla_breach")
            && e["data"]["role"] == "work"
            && e["data"]["metric"] == "queue_wait"
    })
    .expect("an sla_breach event");
    let first_up = position(&all, |e| is_plugin_event(e, "scaled_up")).expect("scaled_up");
    assert!(breach < first_up, "sla_breach must come before scaled_up");
    let breach_data = &all[breach]["data"];
    assert_eq!(breach_data["threshold_ms"], 100.0, "{breach_data}");
    assert!(
        breach_data["p95_ms"].as_f64().is_some_and(|v| v > 100.0),
        "{breach_data}"
    );

    // Agents of `work`: never more than 3 live at once, and exactly 3 at the peak.
    let mut live = 0i64;
    let mut peak = 0i64;
    for e in &all {
        if e["type"] == "agent_spawned" && e["role"] == "work" {
            live += 1;
        }
        if changed_to(e, "work", "stopped") || changed_to(e, "work", "failed") {
            live -= 1;
        }
        peak = peak.max(live);
    }
    assert_eq!(peak, 3, "the role reaches max_agents, never more");
    let spawned = all
        .iter()
        .filter(|e| e["type"] == "agent_spawned" && e["role"] == "work")
        .count();
    assert_eq!(spawned, 3, "one pool agent and two spawned by scaling");
    let ups = plugin_events(&all, "scaled_up");
    assert!(
        ups.iter()
            .all(|u| u["agents_after"].as_u64().is_some_and(|n| n <= 3)),
        "{ups:?}"
    );
    assert_eq!(
        ups.last().map(|u| u["agents_after"].clone()),
        Some(json!(3))
    );

    // After the load: recovery, then two retirements (3 -> 1, never below min_agents).
    let downs = plugin_events(&all, "scaled_down");
    assert_eq!(
        downs
            .iter()
            .map(|d| d["agents_after"].clone())
            .collect::<Vec<_>>(),
        [json!(2), json!(1)],
        "{downs:?}"
    );
    assert!(
        downs
            .iter()
            .all(|d| d["idle_ms"].as_u64().is_some_and(|ms| ms >= 500)),
        "retired only after the cool-down: {downs:?}"
    );
    assert!(
        position(&all, |e| is_plugin_event(e, "sla_recovered")).is_some_and(|r| r < position(
            &all,
            |e| is_plugin_event(e, "scaled_down")
        )
        .unwrap_or(0)),
        "no retirement while the SLA is breached"
    );
    // The retired agents stopped while the run was still going: before the keep-alive
    // task ended, `work` was back to min_agents.
    let end = position(&all, |e| {
        e["type"] == "task_completed" && e["name"] == "keep-alive"
    })
    .expect("keep-alive completed");
    let live_then = all[..end]
        .iter()
        .map(|e| {
            if e["type"] == "agent_spawned" && e["role"] == "work" {
                1
            } else if changed_to(e, "work", "stopped") || changed_to(e, "work", "failed") {
                -1
            } else {
                0
            }
        })
        .sum::<i64>();
    assert_eq!(
        live_then, 1,
        "work is back to min_agents before the run ends"
    );
    for d in &downs {
        assert!(
            all[..end]
                .iter()
                .any(|e| changed_to(e, "work", "stopped") && e["agent"] == d["agent"]),
            "retired agent {} stopped during the run",
            d["agent"]
        );
    }
}

/// Runs one task on a one-agent stdio pool of `work`, SIGKILLs the agent in the middle of
/// the task, and returns the run, its events and the marker lines (`agent task start pid`).
fn kill_the_agent_under_a_task(
    test: &str,
    plugin_config: &str,
) -> (hive_tests::Finished, Vec<Value>, Vec<Vec<String>>) {
    let dir = scratch(test);
    let token = format!("agent-token-{test}-{}", std::process::id());
    let config = write(
        &dir,
        "hive.toml",
        &format!(
            "[kernel]\nstate_dir = \"state\"\n\n{}\n{}",
            stdio_pool("work", 1, &token),
            production_entry(plugin_config)
        ),
    );
    let marker = dir.join("marker");
    let events_file = dir.join("events.jsonl");
    let tasks = json!([{
        "id": "victim",
        "role": "work",
        "retries": 0,
        "payload": {"sleep": 2, "marker": marker},
    }]);
    let mut hive = Hive::new(&dir)
        .args(["run", "--json", "--config"])
        .args([&config])
        .args(["--events"])
        .args([&events_file])
        .args(["--tasks", &tasks.to_string()])
        .spawn();
    let lines = || -> Vec<Vec<String>> {
        std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || !lines().is_empty()),
        "the task never started; stderr:\n{}",
        hive.stderr()
    );
    let pid: i32 = lines()[0][3]
        .parse()
        .expect("the marker line ends with the pid");
    assert!(
        pids_with_cmdline(&token).contains(&pid),
        "the marker's pid {pid} is not a test agent of this test"
    );
    // SAFETY: kill(2) on the pid of a live test agent of this test.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
    let done = hive
        .wait(Duration::from_secs(25))
        .expect("hive run ends within 25 s of the kill");
    let evs = events(&events_file);
    (done, evs, lines())
}

#[test]
fn a_sigkilled_stdio_agent_is_replaced_and_its_task_completes() {
    let (run, all, marks) = kill_the_agent_under_a_task(
        "production-failover",
        "check_interval_ms = 100\n[plugins.config.roles.work]\nmin_agents = 1\nmax_agents = 2\n",
    );
    assert_eq!(run.code, 0, "{run}");
    let r = run.json();
    let victim = &r["tasks"][0];
    assert_eq!(victim["status"], "succeeded", "{r}");
    assert_eq!(victim["attempts"], 2, "{r}");
    assert!(
        victim["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("signal 9")),
        "{r}"
    );
    // Two attempts, on two different agents.
    assert_eq!(marks.len(), 2, "{marks:?}");
    let (first, second) = (&marks[0][0], &marks[1][0]);
    assert_ne!(first, second, "the retry ran on another agent: {marks:?}");
    assert_eq!(
        victim["output"]["agent_id"].to_string(),
        *second,
        "the output comes from the replacement"
    );
    let started: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "task_started" && e["name"] == "victim")
        .map(|e| &e["agent"])
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert_ne!(started[0], started[1]);

    // The failover event names the killed agent; the replacement is spawned after it.
    let fo = position(&all, |e| is_plugin_event(e, "failover")).expect("a failover event");
    let data = &all[fo]["data"];
    assert_eq!(data["failed_agent"].to_string(), *first, "{data}");
    assert_eq!(data["role"], "work", "{data}");
    assert_eq!(data["replaced"], true, "{data}");
    assert_eq!(data["in_flight"], 1, "{data}");
    assert!(
        data["reason"]
            .as_str()
            .is_some_and(|s| s.contains("signal 9")),
        "{data}"
    );
    let spawns: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "agent_spawned" && e["role"] == "work")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(spawns.len(), 2, "one pool agent and one replacement");
    assert!(spawns[1] > fo, "the replacement comes after the failover");
    assert_eq!(all[spawns[1]]["agent"].to_string(), *second);
}

#[test]
fn without_failover_the_same_kill_fails_the_task() {
    let (run, all, marks) = kill_the_agent_under_a_task(
        "production-no-failover",
        "failover = false\n[plugins.config.roles.work]\nmin_agents = 1\nmax_agents = 2\n",
    );
    assert_eq!(run.code, 1, "{run}");
    let r = run.json();
    assert_eq!(r["tasks"][0]["status"], "failed", "{r}");
    assert_eq!(r["tasks"][0]["attempts"], 1, "{r}");
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert!(position(&all, |e| is_plugin_event(e, "failover")).is_none());
    assert_eq!(
        all.iter()
            .filter(|e| e["type"] == "agent_spawned" && e["role"] == "work")
            .count(),
        1,
        "no replacement"
    );
}

#[test]
fn status_shows_each_roles_sla_state_in_health() {
    let dir = scratch("production-status");
    let token = format!("agent-token-production-status-{}", std::process::id());
    let config = write(
        &dir,
        "hive.toml",
        &format!(
            "[kernel]\nstate_dir = \"state\"\n\n{}\n{}",
            stdio_pool("work", 2, &token),
            production_entry(
                "window_s = 5\n[plugins.config.roles.work]\np95_latency_ms = 500\n\
                 p95_queue_wait_ms = 200\nmin_agents = 2\nmax_agents = 4\n"
            )
        ),
    );
    let mut agents = Hive::new(&dir)
        .args(["agents", "--config"])
        .args([&config])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(15), || agents
            .stderr()
            .contains("hive agents:")),
        "not ready:\n{}",
        agents.stderr()
    );
    let status = || {
        let h = Hive::new(&dir)
            .args(["health", "--json", "--config"])
            .args([&config])
            .run();
        assert_eq!(h.code, 0, "{h}");
        let v = h.json();
        let p = v["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "production"))
            .cloned()
            .unwrap_or_else(|| panic!("no production plugin in health: {v}"));
        assert_eq!(p["state"], "loaded", "{p}");
        p
    };
    // The plugin counts the agents from their events: wait for both.
    assert!(
        wait_until(Duration::from_secs(10), || status()["status"]["roles"]
            ["work"]["agents"]
            == 2),
        "{}",
        status()
    );
    let p = status();
    let hooks: Vec<&str> = p["hooks"]
        .as_array()
        .map(|h| h.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        hooks,
        [
            "agent_spawned",
            "agent_state_changed",
            "agent_failed",
            "attempt_finished",
            "on_task_failed"
        ]
    );
    let w = &p["status"]["roles"]["work"];
    assert_eq!(w["state"], "ok", "{w}");
    assert_eq!(w["thresholds"]["p95_latency_ms"], 500.0, "{w}");
    assert_eq!(w["thresholds"]["p95_queue_wait_ms"], 200.0, "{w}");
    assert_eq!(
        (w["min_agents"].clone(), w["max_agents"].clone()),
        (json!(2), json!(4))
    );
    for k in ["breaches", "scaled_up", "scaled_down", "failovers"] {
        assert_eq!(w[k], 0, "{k}: {w}");
    }
    assert_eq!(p["status"]["window_s"], 5.0);
    agents.signal(libc::SIGINT);
    let done = agents
        .wait(Duration::from_secs(10))
        .expect("hive agents exits");
    assert_eq!(done.code, 0, "{done}");
}

#[test]
fn a_bad_config_stops_hive_with_exit_2_naming_the_key() {
    let dir = scratch("production-bad-config");
    let cases = [
        (
            "[plugins.config.roles.work]\nmin_agents = 3\nmax_agents = 2\n",
            "roles.work.min_agents",
        ),
        ("bogus_key = 1\n", "bogus_key"),
        (
            "[plugins.config.roles.work]\nmin_agents = 1\n",
            "max_agents",
        ),
        (
            "[plugins.config.roles.work]\nmax_agents = 2\np95_latency_ms = 0\n",
            "roles.work.p95_latency_ms",
        ),
    ];
    for (i, (plugin_config, key)) in cases.into_iter().enumerate() {
        let config = write(
            &dir,
            &format!("hive-{i}.toml"),
            &format!(
                "[kernel]\nstate_dir = \"state\"\n\n{}",
                production_entry(plugin_config)
            ),
        );
        let marker = dir.join(format!("ran-{i}"));
        let run = Hive::new(&dir)
            .args(["run", "--config"])
            .args([&config])
            .args([
                "--tasks",
                &json!([{"command": "touch", "args": [marker]}]).to_string(),
            ])
            .run();
        assert_eq!(run.code, 2, "{run}");
        assert!(
            run.stderr.contains("refused its config") && run.stderr.contains(key),
            "stderr names `{key}`:\n{run}"
        );
        assert!(!marker.exists(), "no task runs with a refused config");
    }
}
