//! End-to-end tests of the official `automation` plugin, through `hive`, hive.toml and the
//! real loader: circuit breakers (per agent: reroute to healthy agents; per role: defer),
//! self-healing restarts of a SIGKILLed agent and the restart intensity, error-pattern rules,
//! config errors, and the hooks a config subscribes to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hive_tests::{official_plugin, scratch, test_agent, wait_until, Finished, Hive};
use serde_json::{json, Value};

/// A `[[pools]]` entry of `size` test agents of role `role`, one task at a time each.
fn pool(role: &str, size: u32) -> String {
    format!(
        "[[pools]]\nrole = \"{role}\"\ndriver = \"stdio\"\nsize = {size}\ncapacity = 1\n\
         command = \"python3\"\nargs = ['{}']\nheartbeat_ms = 200\n",
        test_agent().display()
    )
}

/// A hive.toml in `dir`: `pools`, then the automation plugin with `config` (TOML tables
/// under `plugins.config`, e.g. `[plugins.config.breaker]`).
fn config(dir: &Path, pools: &str, config: &str) -> PathBuf {
    let path = dir.join("hive.toml");
    let text = format!(
        "[kernel]\nstate_dir = \"state\"\n\n{pools}\n[[plugins]]\npath = \"{}\"\n{config}\n",
        official_plugin("automation").display()
    );
    std::fs::write(&path, text).expect("write hive.toml");
    path
}

/// The tasks as a `--tasks @FILE` argument.
fn tasks_file(dir: &Path, tasks: &[Value]) -> String {
    let path = dir.join("tasks.json");
    std::fs::write(&path, serde_json::to_string(tasks).expect("json")).expect("write tasks");
    format!("@{}", path.display())
}

/// `hive run --tasks .. --config .. --events events.jsonl --json` plus `extra`.
fn run(dir: &Path, cfg: &Path, tasks: &str, extra: &[&str]) -> Hive {
    Hive::new(dir)
        .args(["run", "--tasks", tasks, "--config"])
        .args([cfg])
        .args(["--events"])
        .args([dir.join("events.jsonl")])
        .args(["--json"])
        .args(extra)
}

/// The events written so far (complete lines only).
fn events(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The automation plugin's events named `name`.
fn plugin_events<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| e["type"] == "plugin_event" && e["plugin"] == "automation" && e["name"] == name)
        .collect()
}

/// The events of type `kind`.
fn of_type<'a>(evs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == kind).collect()
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {e}"))
}

/// Waits (up to `within`) for an event of the plugin matching `pred`; returns it.
fn wait_for_plugin_event(
    dir: &Path,
    name: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let mut found = None;
    wait_until(within, || {
        found = plugin_events(&events(dir), name)
            .into_iter()
            .find(|e| pred(&e["data"]))
            .cloned();
        found.is_some()
    });
    found
}

/// The final status the plugin emits at shutdown.
fn summary(evs: &[Value]) -> Value {
    plugin_events(evs, "summary")
        .last()
        .map(|e| e["data"].clone())
        .unwrap_or_else(|| panic!("no summary event"))
}

fn finish(mut running: hive_tests::Running) -> Finished {
    running
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("hive still runs after 60 s:\n{}", running.stderr()))
}

/// Task results by id.
fn results(out: &Finished) -> Vec<Value> {
    out.json()["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no tasks in the result:\n{out}"))
}

#[test]
fn a_failing_agent_trips_its_breaker_its_work_goes_to_healthy_agents_and_it_recovers() {
    let dir = scratch("auto-breaker-agent");
    let cfg = config(
        &dir,
        &pool("work", 3),
        "[plugins.config.breaker]\nmin_calls = 4\nfailure_rate = 0.5\n\
         cool_down_ms = 1000\nhalf_open_trials = 2\ndefer_ms = 50\n\
         [plugins.config.self_healing]\nenabled = false\n",
    );
    let bad_pattern = dir.join("bad-{agent_id}");
    let tasks: Vec<Value> = (0..400)
        .map(|i| {
            json!({"id": format!("t{i}"), "role": "work", "retries": 6,
                   "payload": {"sleep": 0.03, "fail_if_exists": bad_pattern}})
        })
        .collect();
    let tasks = tasks_file(&dir, &tasks);
    let running = run(
        &dir,
        &cfg,
        &tasks,
        &["--max-concurrency", "6", "--retry-delay", "0.05"],
    )
    .spawn();

    // Make one of the three agents fail from now on.
    let mut agents: Vec<u64> = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            agents = of_type(&events(&dir), "agent_spawned")
                .iter()
                .filter_map(|e| e["agent"].as_u64())
                .collect();
            agents.len() == 3
        }),
        "three agents: {agents:?}\n{}",
        running.stderr()
    );
    let bad = agents.iter().copied().min().unwrap_or_default();
    let bad_file = dir.join(format!("bad-{bad}"));
    std::fs::write(&bad_file, "").expect("create the bad file");

    let opened = wait_for_plugin_event(&dir, "breaker_opened", Duration::from_secs(20), |d| {
        d["agent"] == bad
    });
    assert!(
        opened.is_some(),
        "no breaker_opened for agent {bad}:\n{}",
        running.stderr()
    );
    // The agent recovers.
    std::fs::remove_file(&bad_file).expect("remove the bad file");
    let closed = wait_for_plugin_event(&dir, "breaker_closed", Duration::from_secs(20), |d| {
        d["agent"] == bad
    });
    assert!(
        closed.is_some(),
        "no breaker_closed for agent {bad}:\n{}",
        running.stderr()
    );

    let out = finish(running);
    assert_eq!(
        out.code, 0,
        "every task succeeds in the end:\n{}",
        out.stderr
    );
    let res = results(&out);
    assert_eq!(res.len(), 400);
    assert!(res.iter().all(|t| t["status"] == "succeeded"));

    let evs = events(&dir);
    let key = format!("agent:{bad}");
    let of_bad = |name: &str| -> Vec<u64> {
        plugin_events(&evs, name)
            .into_iter()
            .filter(|e| e["data"]["key"] == key.as_str())
            .map(seq)
            .collect()
    };
    let (opened, half, closed) = (
        of_bad("breaker_opened"),
        of_bad("breaker_half_opened"),
        of_bad("breaker_closed"),
    );
    assert_eq!(opened.len(), 1, "opened once (no trial failed): {opened:?}");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(!half.is_empty(), "it half-opened");
    assert!(opened[0] < half[0] && half[half.len() - 1] < closed[0]);
    let data = &plugin_events(&evs, "breaker_opened")[0]["data"];
    assert_eq!(data["scope"], "agent");
    assert!(
        data["failures"].as_u64() >= Some(2) && data["calls"].as_u64() >= Some(4),
        "{data}"
    );
    // The bad agent's failures are its own: the role's breaker (on too) stays closed.
    assert!(
        plugin_events(&evs, "breaker_opened")
            .iter()
            .all(|e| e["data"]["scope"] == "agent"),
        "only the agent's breaker opens"
    );

    // While it was open, the work went to the two healthy agents (a delegation racing with
    // the opening may still reach the bad agent).
    let delegated = |agent_is_bad: bool, from: u64, to: u64| {
        of_type(&evs, "task_delegated")
            .into_iter()
            .filter(|e| (e["agent"] == bad) == agent_is_bad && seq(e) > from && seq(e) < to)
            .count()
    };
    let (to_bad, to_healthy) = (
        delegated(true, opened[0], half[0]),
        delegated(false, opened[0], half[0]),
    );
    assert!(to_bad <= 1, "{to_bad} tasks went to the open agent {bad}");
    assert!(
        to_healthy >= 5,
        "only {to_healthy} tasks ran while the breaker was open"
    );
    // Half-open: trial tasks ran on it and succeeded, which closed it.
    let trials = of_type(&evs, "attempt_finished")
        .into_iter()
        .filter(|e| e["agent"] == bad && seq(e) > half[half.len() - 1] && seq(e) < closed[0] + 1)
        .filter(|e| e["status"] == "succeeded")
        .count();
    assert!(trials >= 2, "{trials} successful trials on agent {bad}");
    // Before the file: failures on the bad agent only.
    let failed: Vec<&Value> = of_type(&evs, "attempt_finished")
        .into_iter()
        .filter(|e| e["status"] == "failed")
        .collect();
    assert!(
        failed.len() >= 4 && failed.iter().all(|e| e["agent"] == bad),
        "{failed:?}"
    );

    let s = summary(&evs);
    assert!(s["rerouted"].as_u64() >= Some(1), "{s}");
    // Agents' breakers go with their agents (all stopped by now); the count stays.
    assert_eq!(s["breakers_opened_total"], 1, "{s}");
    assert_eq!(s["breakers"]["role:work"]["state"], "closed", "{s}");
}

#[test]
fn a_failing_role_trips_its_breaker_tasks_wait_and_it_closes_once_the_role_recovers() {
    let dir = scratch("auto-breaker-role");
    let cfg = config(
        &dir,
        &pool("work", 2),
        "[plugins.config.breaker]\nper_agent = false\nmin_calls = 4\nfailure_rate = 0.5\n\
         cool_down_ms = 1000\nhalf_open_trials = 2\ndefer_ms = 50\n\
         [plugins.config.self_healing]\nenabled = false\n",
    );
    let down = dir.join("down");
    std::fs::write(&down, "").expect("create the down file");
    let tasks: Vec<Value> = (0..40)
        .map(|i| {
            json!({"id": format!("t{i}"), "role": "work", "retries": 8,
                   "payload": {"sleep": 0.02, "fail_if_exists": down}})
        })
        .collect();
    let tasks = tasks_file(&dir, &tasks);
    let running = run(
        &dir,
        &cfg,
        &tasks,
        &["--max-concurrency", "4", "--retry-delay", "0.05"],
    )
    .spawn();
    let opened = wait_for_plugin_event(&dir, "breaker_opened", Duration::from_secs(20), |d| {
        d["key"] == "role:work"
    });
    assert!(
        opened.is_some(),
        "no breaker_opened for role:work:\n{}",
        running.stderr()
    );
    std::fs::remove_file(&down).expect("remove the down file");
    let out = finish(running);
    assert_eq!(
        out.code, 0,
        "every task succeeds once the role recovers:\n{}",
        out.stderr
    );
    assert!(results(&out).iter().all(|t| t["status"] == "succeeded"));

    let evs = events(&dir);
    let of_role = |name: &str| -> Vec<u64> {
        plugin_events(&evs, name)
            .into_iter()
            .filter(|e| e["data"]["key"] == "role:work")
            .map(seq)
            .collect()
    };
    let (opened, half, closed) = (
        of_role("breaker_opened"),
        of_role("breaker_half_opened"),
        of_role("breaker_closed"),
    );
    assert_eq!(
        (opened.len(), closed.len()),
        (1, 1),
        "{opened:?} {closed:?}"
    );
    assert!(opened[0] < half[0] && half[0] < closed[0]);
    // While open, no agent of the role got work (two delegations may race with the opening).
    let started = of_type(&evs, "task_started")
        .into_iter()
        .filter(|e| seq(e) > opened[0] && seq(e) < half[0])
        .count();
    assert!(
        started <= 2,
        "{started} attempts started while the role's breaker was open"
    );
    let s = summary(&evs);
    assert!(s["deferred"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["breakers"]["role:work"]["state"], "closed", "{s}");
}

#[test]
fn a_sigkilled_stdio_agent_is_restarted_and_its_task_still_completes() {
    let dir = scratch("auto-heal-kill");
    let cfg = config(
        &dir,
        &pool("work", 1),
        "[plugins.config.self_healing]\nbackoff_initial_ms = 100\n",
    );
    let marks = dir.join("marks");
    let tasks = tasks_file(
        &dir,
        &[json!({"id": "long", "role": "work", "payload": {"sleep": 2, "marker": marks}})],
    );
    let running = run(&dir, &cfg, &tasks, &[]).spawn();
    let mut first = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            first = std::fs::read_to_string(&marks).unwrap_or_default();
            first.ends_with('\n')
        }),
        "the task never started:\n{}",
        running.stderr()
    );
    // "{agent_id} {task id} start {pid}"
    let fields: Vec<&str> = first.split_whitespace().collect();
    let (agent, pid): (u64, i32) = (
        fields[0].parse().expect("agent id"),
        fields[3].parse().expect("pid"),
    );
    // SAFETY: kill(2) on the test agent's pid, read from its own marker line.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let out = finish(running);
    assert_eq!(
        out.code, 0,
        "the task completes on the restarted agent:\n{}",
        out.stderr
    );
    let res = results(&out);
    assert_eq!(res[0]["status"], "succeeded");
    assert_eq!(res[0]["attempts"], 2, "{}", res[0]);

    let evs = events(&dir);
    let failed = of_type(&evs, "agent_failed");
    assert!(failed.iter().any(|e| e["agent"] == agent), "{failed:?}");
    let restarted = plugin_events(&evs, "agent_restarted");
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    let r = &restarted[0]["data"];
    assert_eq!(
        (r["role"].as_str(), r["failed_agent"].as_u64()),
        (Some("work"), Some(agent))
    );
    assert_eq!(
        (r["restarts"].as_u64(), r["backoff_ms"].as_u64()),
        (Some(1), Some(100))
    );
    let died = of_type(&evs, "agent_failed")
        .into_iter()
        .map(seq)
        .min()
        .unwrap_or_default();
    let new: Vec<u64> = of_type(&evs, "agent_spawned")
        .into_iter()
        .filter(|e| e["role"] == "work" && seq(e) > died)
        .filter_map(|e| e["agent"].as_u64())
        .collect();
    assert_eq!(new.len(), 1, "one new agent: {new:?}");
    assert_eq!(
        res[0]["agent"].as_u64(),
        Some(new[0]),
        "the retry ran on the new agent"
    );
    let lines = std::fs::read_to_string(&marks).unwrap_or_default();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    let s = summary(&evs);
    assert_eq!(
        (
            s["restarts"]["work"].as_u64(),
            s["lost_tasks_retried"].as_u64()
        ),
        (Some(1), Some(1)),
        "{s}"
    );
}

#[test]
fn an_agent_that_keeps_crashing_is_restarted_at_most_max_restarts_times_then_given_up() {
    let dir = scratch("auto-heal-intensity");
    let cfg = config(
        &dir,
        &pool("work", 1),
        "[plugins.config.breaker]\nenabled = false\n\
         [plugins.config.self_healing]\nbackoff_initial_ms = 20\nbackoff_factor = 2.0\n\
         max_restarts = 3\nwithin_s = 60\n",
    );
    let tasks = tasks_file(
        &dir,
        &[json!({"id": "poison", "role": "work", "payload": {"exit": 1}})],
    );
    let out = finish(run(&dir, &cfg, &tasks, &[]).spawn());
    assert_eq!(
        out.code, 1,
        "the task fails once the role is given up:\n{}",
        out.stderr
    );
    let res = results(&out);
    assert_eq!(
        (res[0]["status"].as_str(), res[0]["attempts"].as_u64()),
        (Some("failed"), Some(4)),
        "{}",
        res[0]
    );

    let evs = events(&dir);
    let restarted = plugin_events(&evs, "agent_restarted");
    let backoffs: Vec<u64> = restarted
        .iter()
        .filter_map(|e| e["data"]["backoff_ms"].as_u64())
        .collect();
    assert_eq!(backoffs, [20, 40, 80], "exponential backoff");
    let gave_up = plugin_events(&evs, "restart_gave_up");
    assert_eq!(gave_up.len(), 1, "{gave_up:?}");
    assert_eq!(gave_up[0]["data"]["role"], "work");
    assert_eq!(gave_up[0]["data"]["restarts"], 3);
    assert_eq!(gave_up[0]["data"]["within_s"], 60.0);
    assert!(seq(gave_up[0]) > seq(restarted[2]));
    assert_eq!(of_type(&evs, "agent_failed").len(), 4);
    assert_eq!(
        of_type(&evs, "agent_spawned").len(),
        4,
        "1 + 3 restarts, then none"
    );
    assert!(
        out.stderr.contains("giving up on role `work`"),
        "logged as an error:\n{}",
        out.stderr
    );
    let s = summary(&evs);
    assert_eq!(s["gave_up"][0]["role"], "work", "{s}");
    assert_eq!(s["restarts"]["work"], 3, "{s}");
}

#[test]
fn give_up_and_retry_after_rules_decide_over_the_retry_policy() {
    let dir = scratch("auto-rules");
    let cfg = config(
        &dir,
        &pool("work", 2),
        "[plugins.config.breaker]\nenabled = false\n\
         [[plugins.config.rules]]\npattern = \"(?i)^fatal\"\naction = \"give_up\"\n\
         [[plugins.config.rules]]\npattern = \"first attempt fails\"\naction = \"retry_after\"\nms = 300\n\
         [[plugins.config.rules]]\npattern = \"rate limit\"\naction = \"retry_after\"\nms = 20\nmax_attempts = 3\n",
    );
    let once = dir.join("once");
    let tasks = tasks_file(
        &dir,
        &[
            json!({"id": "fatal", "role": "work", "retries": 3, "payload": {"fail": "FATAL: bad credentials"}}),
            json!({"id": "flaky", "role": "work", "retries": 2, "payload": {"fail": "flaky"}}),
            json!({"id": "once", "role": "work", "retries": 0, "payload": {"fail_once": once}}),
            json!({"id": "limited", "role": "work", "retries": 0, "payload": {"fail": "rate limit exceeded"}}),
        ],
    );
    let out = finish(run(&dir, &cfg, &tasks, &["--retry-delay", "0.01"]).spawn());
    assert_eq!(out.code, 1, "{out}");
    let res = results(&out);
    let by_id = |id: &str| {
        res.iter()
            .find(|t| t["id"] == id)
            .map(|t| {
                (
                    t["status"].as_str().unwrap_or("").to_string(),
                    t["attempts"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or_else(|| panic!("no task {id}"))
    };
    assert_eq!(
        by_id("fatal"),
        ("failed".into(), 1),
        "give_up: no retry despite retries = 3"
    );
    assert_eq!(
        by_id("flaky"),
        ("failed".into(), 3),
        "no rule: the task's policy"
    );
    assert_eq!(
        by_id("once"),
        ("succeeded".into(), 2),
        "retry_after retries with retries = 0"
    );
    assert_eq!(
        by_id("limited"),
        ("failed".into(), 3),
        "retry_after up to max_attempts"
    );

    let evs = events(&dir);
    let task_of = |name: &str| {
        of_type(&evs, "task_submitted")
            .into_iter()
            .find(|e| e["name"] == name)
            .map(|e| e["task"].clone())
            .unwrap_or_else(|| panic!("no task {name}"))
    };
    let once_task = task_of("once");
    let retrying: Vec<&Value> = of_type(&evs, "task_retrying")
        .into_iter()
        .filter(|e| e["task"] == once_task)
        .collect();
    assert_eq!(retrying.len(), 1);
    assert_eq!(retrying[0]["delay_ms"], 300, "the rule's delay");
    let at = |e: &Value| -> hive_kernel::Timestamp {
        serde_json::from_value(e["at"].clone()).expect("timestamp")
    };
    let attempts: Vec<&Value> = of_type(&evs, "attempt_finished")
        .into_iter()
        .filter(|e| e["task"] == once_task)
        .collect();
    let second = of_type(&evs, "task_started")
        .into_iter()
        .find(|e| e["task"] == once_task && e["attempt"] == 2)
        .expect("second attempt");
    let gap = at(second).since(at(attempts[0]));
    assert!(gap >= Duration::from_millis(290), "retried after {gap:?}");

    let s = summary(&evs);
    let hits: Vec<u64> = s["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["hits"].as_u64())
        .collect();
    assert_eq!(hits, [1, 1, 2], "{s}");
    assert_eq!(s["rules"][0]["action"], "give_up");
    assert_eq!(s["rules"][1]["ms"], 300);
}

#[test]
fn a_reroute_rule_sends_the_retry_to_another_agent() {
    let dir = scratch("auto-rules-reroute");
    let cfg = config(
        &dir,
        &pool("work", 2),
        "[[plugins.config.rules]]\npattern = \"fail_once\"\naction = \"reroute\"\ncount = false\n",
    );
    let tasks: Vec<Value> = (0..8)
        .map(|i| {
            json!({"id": format!("r{i}"), "role": "work", "retries": 0,
                   "payload": {"sleep": 0.05, "fail_once": dir.join(format!("r{i}"))}})
        })
        .collect();
    let tasks = tasks_file(&dir, &tasks);
    let out = finish(run(&dir, &cfg, &tasks, &["--max-concurrency", "2"]).spawn());
    assert_eq!(out.code, 0, "{out}");
    let evs = events(&dir);
    let attempts = of_type(&evs, "attempt_finished");
    for t in results(&out) {
        assert_eq!(
            (t["status"].as_str(), t["attempts"].as_u64()),
            (Some("succeeded"), Some(2)),
            "{t}"
        );
        let agents: Vec<&Value> = attempts
            .iter()
            .filter(|e| e["name"] == t["id"])
            .map(|e| &e["agent"])
            .collect();
        assert_eq!(agents.len(), 2);
        assert_ne!(
            agents[0], agents[1],
            "task {} was retried on the same agent",
            t["id"]
        );
    }
    let s = summary(&evs);
    assert_eq!(s["rules"][0]["hits"], 8, "{s}");
    // `count = false`: these failures do not count towards the breakers.
    assert!(plugin_events(&evs, "breaker_opened").is_empty());
    assert_eq!(s["breakers"]["role:work"]["failures"], 0, "{s}");
}

#[test]
fn a_bad_config_stops_hive_with_exit_2_naming_the_key() {
    let dir = scratch("auto-bad-config");
    let tasks = tasks_file(&dir, &[json!({"role": "work", "payload": {"echo": 1}})]);
    for (cfg_text, needles) in [
        (
            "[[plugins.config.rules]]\npattern = \"ok\"\naction = \"give_up\"\n\
             [[plugins.config.rules]]\npattern = \"(unclosed\"\naction = \"give_up\"\n",
            &["rules[1].pattern", "invalid regex", "(unclosed"][..],
        ),
        (
            "[plugins.config.breaker]\nwindow = 30\n",
            &["breaker.window", "unknown field"][..],
        ),
        (
            "[plugins.config.breaker]\nfailure_rate = 1.5\n",
            &["breaker.failure_rate", "1.5"][..],
        ),
        (
            "[plugins.config.self_healing]\nmax_restarts = 0\n",
            &["self_healing.max_restarts"][..],
        ),
    ] {
        let cfg = config(&dir, &pool("work", 1), cfg_text);
        let out = Hive::new(&dir)
            .args(["run", "--tasks", &tasks, "--config"])
            .args([&cfg])
            .run();
        assert_eq!(out.code, 2, "{cfg_text}\n{out}");
        assert!(out.stderr.contains("refused its config"), "{out}");
        for n in needles {
            assert!(out.stderr.contains(n), "stderr lacks {n:?}:\n{out}");
        }
    }
}

#[test]
fn the_config_decides_the_hooks_and_the_status_shows_every_part() {
    let dir = scratch("auto-hooks");
    let list = |cfg_text: &str| -> Value {
        let cfg = config(&dir, &pool("work", 1), cfg_text);
        let out = Hive::new(&dir)
            .args(["plugins", "list", "--json", "--config"])
            .args([&cfg])
            .run();
        assert_eq!(out.code, 0, "{out}");
        out.json()[0].clone()
    };
    let all = list("");
    let mut hooks: Vec<&str> = all["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    hooks.sort_unstable();
    assert_eq!(
        hooks,
        [
            "agent_failed",
            "agent_spawned",
            "agent_state_changed",
            "attempt_finished",
            "before_delegate",
            "on_task_failed"
        ]
    );
    let st = &all["status"];
    for k in [
        "breakers",
        "rerouted",
        "deferred",
        "restarts",
        "gave_up",
        "rules",
        "lost_tasks_retried",
    ] {
        assert!(st.get(k).is_some(), "status lacks {k}: {st}");
    }
    let rules_only = list(
        "[plugins.config.breaker]\nenabled = false\n[plugins.config.self_healing]\nenabled = false\n\
         [[plugins.config.rules]]\npattern = \"x\"\naction = \"give_up\"\n",
    );
    assert_eq!(
        rules_only["hooks"],
        json!(["on_task_failed"]),
        "{rules_only}"
    );
    let healing_only = list(
        "[plugins.config.breaker]\nenabled = false\n[plugins.config.self_healing]\nretry_lost_tasks = false\n",
    );
    assert_eq!(
        healing_only["hooks"],
        json!(["agent_spawned", "agent_state_changed", "agent_failed"]),
        "{healing_only}"
    );
}

#[test]
fn next_to_the_production_plugins_failover_a_crashed_agent_is_replaced_once() {
    let dir = scratch("auto-heal-with-production");
    let cfg = dir.join("hive.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kernel]\nstate_dir = \"state\"\n\n{}\n\
             [[plugins]]\npath = \"{}\"\n[plugins.config.roles.work]\nmax_agents = 4\nfailover = true\n\n\
             [[plugins]]\npath = \"{}\"\n[plugins.config.self_healing]\nbackoff_initial_ms = 300\n",
            pool("work", 2),
            official_plugin("production").display(),
            official_plugin("automation").display()
        ),
    )
    .expect("write hive.toml");
    let marks = dir.join("marks");
    let tasks = tasks_file(
        &dir,
        &[json!({"id": "long", "role": "work", "payload": {"sleep": 2, "marker": marks}})],
    );
    let running = run(&dir, &cfg, &tasks, &[]).spawn();
    let mut first = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            first = std::fs::read_to_string(&marks).unwrap_or_default();
            first.ends_with('\n')
        }),
        "the task never started:\n{}",
        running.stderr()
    );
    let pid: i32 = first
        .split_whitespace()
        .nth(3)
        .and_then(|p| p.parse().ok())
        .expect("pid");
    // SAFETY: kill(2) on the test agent's pid, read from its own marker line.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let out = finish(running);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(results(&out)[0]["status"], "succeeded");

    let evs = events(&dir);
    assert_eq!(of_type(&evs, "agent_failed").len(), 1);
    assert_eq!(
        of_type(&evs, "agent_spawned").len(),
        3,
        "two agents and one replacement, not two"
    );
    assert!(
        plugin_events(&evs, "agent_restarted").is_empty(),
        "the production plugin's failover replaced it first"
    );
    let s = summary(&evs);
    assert_eq!(
        (
            s["restarts_skipped"].as_u64(),
            s["restarts_pending"].as_u64()
        ),
        (Some(1), Some(0)),
        "{s}"
    );
}
