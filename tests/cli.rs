//! End-to-end tests of the `hive` command line: exit codes and messages for bad input,
//! `hive run` summaries and `--json` results (timeouts, retries, stdio pools), and
//! `hive agents` / `hive health` over the control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hive_tests::{pids_with_cmdline, scratch, test_agent, wait_until, Finished, Hive};
use serde_json::Value;

/// Writes `name` in `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A `[[pools]]` entry for the test agent; `token` goes on its command line so the test can
/// find its processes.
fn agent_pool(role: &str, size: u32, token: &str, extra: &str) -> String {
    format!(
        "[[pools]]\nrole = \"{role}\"\ndriver = \"stdio\"\nsize = {size}\ncapacity = 2\n\
         command = \"python3\"\nargs = ['{}', '{token}']\nheartbeat_ms = 200\n{extra}\n",
        test_agent().display()
    )
}

/// A marker for the command line of the test agents of one test (not a substring of the
/// scratch directory's name, which is on `hive`'s own command line).
fn token(test: &str) -> String {
    format!("agent-token-{test}-{}", std::process::id())
}

/// Asserts a bad-input exit: code 2, nothing on stdout, `hive: error: ` and every needle on
/// stderr.
fn assert_bad_input(run: &Finished, needles: &[&str]) {
    assert_eq!(run.code, 2, "expected exit 2 (bad input):\n{run}");
    assert!(
        run.stdout.is_empty(),
        "bad input must print nothing on stdout:\n{run}"
    );
    assert!(
        run.stderr.starts_with("hive: error: "),
        "stderr must start with `hive: error: `:\n{run}"
    );
    for n in needles {
        assert!(run.stderr.contains(n), "stderr lacks {n:?}:\n{run}");
    }
}

fn hive_run(dir: &Path, tasks: &str, extra: &[&str]) -> Finished {
    Hive::new(dir)
        .args(["run", "--tasks", tasks])
        .args(extra)
        .run()
}

fn task(result: &Value, i: usize) -> &Value {
    &result["tasks"][i]
}

/// Whether `s` looks like an RFC 3339 UTC timestamp: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if b.len() < 20
        || !(digits(0..4)
            && digits(5..7)
            && digits(8..10)
            && digits(11..13)
            && digits(14..16)
            && digits(17..19))
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':')
}

// ---- bad input: exit 2 -------------------------------------------------------------------

#[test]
fn invalid_json_names_the_position() {
    let dir = scratch("cli-invalid-json");
    let run = hive_run(
        &dir,
        "[\n  {\"command\": \"true\"},\n  {\"command\": }\n]",
        &[],
    );
    assert_bad_input(&run, &["--tasks: invalid task list:", "at line 3 column"]);
}

#[test]
fn unknown_task_field_is_refused() {
    let dir = scratch("cli-unknown-field");
    let run = hive_run(&dir, r#"[{"comand": "touch ran"}]"#, &[]);
    assert_bad_input(
        &run,
        &["--tasks: invalid task list:", "unknown field `comand`"],
    );
    assert!(!dir.join("ran").exists());
}

#[test]
fn missing_tasks_file_is_refused() {
    let dir = scratch("cli-missing-file");
    let path = dir.join("no-such-tasks.json");
    let run = hive_run(&dir, &format!("@{}", path.display()), &[]);
    assert_bad_input(
        &run,
        &[&format!("--tasks @{}: cannot read", path.display())],
    );
}

#[test]
fn duplicate_id_is_refused_before_anything_runs() {
    let dir = scratch("cli-duplicate-id");
    let run = hive_run(
        &dir,
        r#"[{"id": "a", "command": "touch ran"}, {"id": "b", "command": "true"}, {"id": "a", "command": "true"}]"#,
        &[],
    );
    assert_bad_input(&run, &["duplicate id", "`a`"]);
    assert!(
        !dir.join("ran").exists(),
        "no task may run when the list is refused"
    );
}

#[test]
fn role_without_config_is_refused() {
    let dir = scratch("cli-role-no-config");
    let run = hive_run(&dir, r#"[{"role": "echo", "payload": {"echo": 1}}]"#, &[]);
    assert_bad_input(&run, &["needs a pool: pass --config", "`echo`"]);
}

#[test]
fn role_absent_from_config_is_refused() {
    let dir = scratch("cli-role-absent");
    let config = write(
        &dir,
        "hive.toml",
        &agent_pool("echo", 1, "cli-role-absent", ""),
    );
    let run = hive_run(
        &dir,
        r#"[{"role": "summarise", "payload": {}}]"#,
        &["--config", &config.to_string_lossy()],
    );
    assert_bad_input(
        &run,
        &["`summarise`", "has no pool in", &config.to_string_lossy()],
    );
}

#[test]
fn unknown_flag_is_refused_by_clap() {
    let dir = scratch("cli-unknown-flag");
    let run = hive_run(&dir, "[]", &["--max-concurency", "2"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--max-concurency"), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
}

#[test]
fn config_with_unknown_key_names_file_and_line() {
    let dir = scratch("cli-config-unknown-key");
    let config = write(
        &dir,
        "hive.toml",
        "[kernel]\nstate_dir = \"state\"\nbogus_key = 1\n",
    );
    let run = hive_run(
        &dir,
        r#"[{"command": "true"}]"#,
        &["--config", &config.to_string_lossy()],
    );
    assert_bad_input(&run, &[&config.to_string_lossy(), "line 3", "bogus_key"]);
}

#[test]
fn config_with_unknown_driver_names_file_line_and_key() {
    let dir = scratch("cli-config-bad-driver");
    let config = write(
        &dir,
        "hive.toml",
        "[[pools]]\nrole = \"x\"\ndriver = \"ssh\"\n",
    );
    let run = hive_run(
        &dir,
        r#"[{"role": "x", "payload": {}}]"#,
        &["--config", &config.to_string_lossy()],
    );
    assert_bad_input(
        &run,
        &[
            &format!("{}:3: `driver`:", config.display()),
            "unknown driver `ssh`",
            "expected `process`, `stdio`, or a driver",
        ],
    );
}

#[test]
fn missing_config_is_refused() {
    let dir = scratch("cli-config-missing");
    let config = dir.join("absent.toml");
    let run = hive_run(
        &dir,
        r#"[{"command": "true"}]"#,
        &["--config", &config.to_string_lossy()],
    );
    assert_bad_input(
        &run,
        &[&config.to_string_lossy(), "cannot read config file"],
    );
}

// ---- hive run ----------------------------------------------------------------------------

#[test]
fn successful_run_from_a_file_exits_0_with_a_summary() {
    let dir = scratch("cli-success");
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir sub");
    let tasks = serde_json::json!([
        {"id": "env", "command": "echo \"$HIVE_TEST_VALUE\" > env.txt", "env": {"HIVE_TEST_VALUE": "from-env"}},
        {"id": "cwd", "command": "touch", "args": ["made-here"], "cwd": sub.to_string_lossy()},
    ]);
    let file = write(&dir, "tasks.json", &tasks.to_string());
    let run = hive_run(&dir, &format!("@{}", file.display()), &[]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("2 tasks: 2 succeeded, 0 failed, 0 timed out, 0 cancelled"),
        "{run}"
    );
    assert!(
        run.stdout.contains("wall time") && run.stdout.contains("speedup"),
        "{run}"
    );
    for id in ["env", "cwd"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with("[") && l.contains(&format!(" {id} succeeded in "))),
            "no progress line for {id}:\n{run}"
        );
    }
    assert!(
        run.stderr.contains("[1/2] ") && run.stderr.contains("[2/2] "),
        "{run}"
    );
    let env = std::fs::read_to_string(dir.join("env.txt")).expect("the env task wrote env.txt");
    assert_eq!(env.trim(), "from-env");
    assert!(
        sub.join("made-here").exists(),
        "the cwd task ran elsewhere:\n{run}"
    );
}

#[test]
fn failing_run_exits_1_and_counts_the_failure() {
    let dir = scratch("cli-failure");
    let run = hive_run(
        &dir,
        r#"[{"id": "fine", "command": "true"}, {"id": "broken", "command": "exit 3"}]"#,
        &[],
    );
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout
            .contains("2 tasks: 1 succeeded, 1 failed, 0 timed out, 0 cancelled"),
        "{run}"
    );
    assert!(run.stdout.contains("broken failed"), "{run}");
    assert!(
        run.stderr.lines().any(|l| l.contains(" broken failed in ")),
        "{run}"
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(" fine succeeded in ")),
        "{run}"
    );
}

#[test]
fn json_result_has_every_key_in_input_order() {
    let dir = scratch("cli-json-shape");
    // The first task finishes last: the result must still follow the input order.
    let tasks = r#"[
        {"command": "sleep 0.3", "cost": 1.5},
        {"id": "second", "command": "exit 4", "cost": 2},
        {"id": 7, "command": "echo", "args": ["hello"]},
        {"command": "true"}
    ]"#;
    let run = hive_run(&dir, tasks, &["--json", "--max-concurrency", "4"]);
    assert_eq!(run.code, 1, "{run}");
    let r = run.json();
    let list = r["tasks"].as_array().expect("tasks is an array");
    assert_eq!(list.len(), 4, "{run}");
    let ids: Vec<&str> = list
        .iter()
        .map(|t| t["id"].as_str().expect("id is a string"))
        .collect();
    assert_eq!(ids, ["task-1", "second", "7", "task-4"], "{run}");
    let statuses: Vec<&str> = list
        .iter()
        .map(|t| t["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        ["succeeded", "failed", "succeeded", "succeeded"],
        "{run}"
    );
    for t in list {
        for key in [
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
        ] {
            assert!(t.get(key).is_some(), "task lacks `{key}`: {t}");
        }
        // A command's output (exit code, stdout, stderr) has no artifacts.
        assert_eq!(t["artifacts"], serde_json::json!([]), "{t}");
        for key in ["started_at", "finished_at"] {
            let s = t[key]
                .as_str()
                .unwrap_or_else(|| panic!("`{key}` is not a string: {t}"));
            assert!(is_rfc3339(s), "`{key}` is not RFC 3339: {s}");
        }
        assert_eq!(t["attempts"], 1, "{t}");
        assert!(t["duration_s"].as_f64().is_some_and(|d| d >= 0.0), "{t}");
        assert!(t["agent"].is_u64(), "{t}");
        assert_eq!(
            t.get("output").is_some(),
            t["status"] == "succeeded",
            "output only on success: {t}"
        );
    }
    assert_eq!(task(&r, 0)["exit_code"], 0);
    assert!(
        task(&r, 0)["duration_s"]
            .as_f64()
            .is_some_and(|d| d >= 0.25),
        "{r}"
    );
    assert_eq!(task(&r, 1)["exit_code"], 4);
    let errors = task(&r, 1)["errors"]
        .as_array()
        .expect("errors is an array");
    assert_eq!(errors.len(), 1, "{r}");
    assert!(errors[0].as_str().is_some_and(|e| e.contains('4')), "{r}");
    assert_eq!(task(&r, 2)["errors"], serde_json::json!([]));
    assert_eq!(task(&r, 2)["output"]["stdout"], "hello\n", "{r}");
    let m = &r["metrics"];
    assert!(m["wall_time"].as_f64().is_some_and(|w| w >= 0.25), "{m}");
    assert!(
        m["speedup_vs_serial"].as_f64().is_some_and(|s| s > 0.0),
        "{m}"
    );
    assert_eq!(m["cost_estimate"].as_f64(), Some(3.5), "{m}");
    // --json prints the object only: no summary lines.
    assert!(!run.stdout.contains("tasks: "), "{run}");
}

#[test]
fn timeout_gives_timed_out_quickly() {
    let dir = scratch("cli-timeout");
    let run = hive_run(
        &dir,
        r#"[{"id": "slow", "command": "sleep", "args": ["5"], "timeout_s": 0.3}, {"id": "quick", "command": "true"}]"#,
        &["--json"],
    );
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.elapsed < Duration::from_secs(3),
        "the timeout did not stop `sleep 5` quickly:\n{run}"
    );
    let r = run.json();
    assert_eq!(task(&r, 0)["status"], "timed_out", "{r}");
    assert_eq!(
        task(&r, 0)["errors"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    assert!(
        task(&r, 0)["duration_s"]
            .as_f64()
            .is_some_and(|d| (0.25..3.0).contains(&d)),
        "{r}"
    );
    assert_eq!(task(&r, 1)["status"], "succeeded", "{r}");
}

#[test]
fn global_timeout_flag_applies_to_tasks_without_their_own() {
    let dir = scratch("cli-timeout-flag");
    let run = hive_run(
        &dir,
        r#"[{"command": "sleep", "args": ["5"]}]"#,
        &["--timeout", "0.3", "--json"],
    );
    assert_eq!(run.code, 1, "{run}");
    assert!(run.elapsed < Duration::from_secs(3), "{run}");
    assert_eq!(task(&run.json(), 0)["status"], "timed_out", "{run}");
}

#[test]
fn retries_run_a_failing_command_again() {
    let dir = scratch("cli-retries");
    // Each attempt bumps its counter file; the command succeeds from the third attempt on.
    let counting = |file: &str| {
        format!(
            "n=$(cat {file} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {file}; test $n -ge 3"
        )
    };
    let tasks = serde_json::json!([
        {"id": "third-time-lucky", "command": counting("a.count")},
        // A task's own `retries` wins over --retries: 1 retry is one short.
        {"id": "one-short", "command": counting("b.count"), "retries": 1},
    ]);
    let run = hive_run(
        &dir,
        &tasks.to_string(),
        &["--retries", "2", "--retry-delay", "0.01", "--json"],
    );
    assert_eq!(run.code, 1, "{run}");
    let r = run.json();
    assert_eq!(task(&r, 0)["status"], "succeeded", "{r}");
    assert_eq!(task(&r, 0)["attempts"], 3, "{r}");
    assert_eq!(
        task(&r, 0)["errors"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    assert_eq!(task(&r, 0)["exit_code"], 0, "{r}");
    assert_eq!(task(&r, 1)["status"], "failed", "{r}");
    assert_eq!(task(&r, 1)["attempts"], 2, "{r}");
    assert_eq!(
        task(&r, 1)["errors"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    let count = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .expect("counter file")
            .trim()
            .to_string()
    };
    assert_eq!(count("a.count"), "3");
    assert_eq!(count("b.count"), "2");
}

#[test]
fn cascading_cancellation_cancels_the_rest_after_a_failure() {
    let dir = scratch("cli-cascading");
    let tasks = r#"[
        {"id": "bad", "command": "exit 1"},
        {"id": "slow", "command": "sleep 5; touch slow-finished"},
        {"id": "later", "command": "touch later-ran"}
    ]"#;
    let run = hive_run(
        &dir,
        tasks,
        &[
            "--cancellation",
            "cascading",
            "--max-concurrency",
            "2",
            "--json",
        ],
    );
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.elapsed < Duration::from_secs(4),
        "the running task was not cancelled:\n{run}"
    );
    let r = run.json();
    let statuses: Vec<&str> = (0..3)
        .map(|i| task(&r, i)["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(statuses, ["failed", "cancelled", "cancelled"], "{r}");
    assert!(!dir.join("slow-finished").exists() && !dir.join("later-ran").exists());
}

#[test]
fn events_file_gets_one_json_object_per_line() {
    let dir = scratch("cli-events");
    let events = dir.join("events.jsonl");
    let run = hive_run(
        &dir,
        r#"[{"id": "one", "command": "true"}, {"id": "two", "command": "exit 2"}]"#,
        &["-q", "--events", &events.to_string_lossy()],
    );
    assert_eq!(run.code, 1, "{run}");
    assert!(
        !run.stderr.contains("[1/2]"),
        "-q prints no progress:\n{run}"
    );
    let text = std::fs::read_to_string(&events).expect("the events file exists");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(e["seq"], i, "events in sequence: {e}");
        assert!(
            e["type"].is_string() && e["at"].as_str().is_some_and(is_rfc3339),
            "{e}"
        );
    }
    for name in ["one", "two"] {
        assert!(
            lines
                .iter()
                .any(|e| e["type"] == "task_submitted" && e["name"] == name),
            "no task_submitted event for {name}:\n{text}"
        );
    }
}

#[test]
fn closed_stdout_is_not_a_panic() {
    let dir = scratch("cli-closed-stdout");
    let run = Hive::new(&dir)
        .args(["run", "--json", "--tasks", r#"[{"command": "true"}]"#])
        .stdout_closed()
        .run();
    assert!(!run.stderr.contains("panicked"), "{run}");
    assert_ne!(run.code, 101, "{run}");
}

#[test]
fn stdio_pool_runs_payload_tasks() {
    let dir = scratch("cli-stdio-pool");
    let token = token("cli-stdio-pool");
    let config = write(
        &dir,
        "hive.toml",
        &format!(
            "[kernel]\nstate_dir = \"state\"\n\n{}",
            agent_pool("echo", 2, &token, "lease_ms = 2000")
        ),
    );
    let tasks = r#"[
        {"id": "five", "role": "echo", "payload": {"echo": 5}},
        {"id": "text", "role": "echo", "payload": {"echo": "hi"}},
        {"id": "boom", "role": "echo", "payload": {"fail": "boom on purpose"}},
        {"id": "plain", "command": "true"}
    ]"#;
    let run = hive_run(
        &dir,
        tasks,
        &["--config", &config.to_string_lossy(), "--json"],
    );
    assert_eq!(run.code, 1, "{run}");
    let r = run.json();
    let five = task(&r, 0);
    assert_eq!(five["status"], "succeeded", "{r}");
    assert_eq!(five["output"]["echo"], 5, "{r}");
    assert!(five["output"]["agent_id"].is_u64(), "{r}");
    let pid = five["output"]["pid"]
        .as_i64()
        .expect("the test agent reports its pid");
    assert_eq!(task(&r, 1)["output"]["echo"], "hi", "{r}");
    let boom = task(&r, 2);
    assert_eq!(boom["status"], "failed", "{r}");
    assert!(
        boom["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("boom on purpose")),
        "{r}"
    );
    assert!(boom.get("output").is_none(), "{r}");
    assert_eq!(task(&r, 3)["status"], "succeeded", "{r}");
    // The agents are stopped when hive exits.
    assert!(
        wait_until(Duration::from_secs(3), || pids_with_cmdline(&token)
            .is_empty()),
        "test agents outlived hive: {:?} (one reported pid {pid})",
        pids_with_cmdline(&token)
    );
}

// ---- hive health / hive agents -----------------------------------------------------------

#[test]
fn health_readiness_check_passes_for_a_process_pool() {
    let dir = scratch("cli-health-ok");
    let config = write(
        &dir,
        "hive.toml",
        "[kernel]\nstate_dir = \"state\"\n\n[[pools]]\nrole = \"shell\"\ndriver = \"process\"\nsize = 2\ncapacity = 3\n",
    );
    let run = Hive::new(&dir)
        .args(["health", "--config"])
        .args([&config])
        .run();
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("readiness check"), "{run}");
    assert!(run.stdout.contains("status ok"), "{run}");
    let json = Hive::new(&dir)
        .args(["health", "--json", "--config"])
        .args([&config])
        .run();
    assert_eq!(json.code, 0, "{json}");
    let h = json.json();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["agents"]["ready"], 2, "{h}");
    assert_eq!(h["agents"]["failed"], 0, "{h}");
    assert_eq!(h["roles"]["shell"]["agents"], 2, "{h}");
}

#[test]
fn health_readiness_check_fails_for_an_agent_that_never_gets_ready() {
    let dir = scratch("cli-health-no-ready");
    let token = token("cli-health-no-ready");
    let config = write(
        &dir,
        "hive.toml",
        &agent_pool(
            "mute",
            1,
            &token,
            "lease_ms = 500\nenv = {TEST_AGENT_NO_READY = \"1\"}",
        ),
    );
    let run = Hive::new(&dir)
        .args(["health", "--config"])
        .args([&config])
        .run();
    assert_eq!(run.code, 1, "{run}");
    assert!(run.elapsed < Duration::from_secs(5), "{run}");
    assert!(run.stderr.contains("did not start"), "{run}");
    assert!(run.stderr.contains("ready"), "{run}");
    assert!(run.stdout.contains("1 failed"), "{run}");
    assert!(
        wait_until(Duration::from_secs(3), || pids_with_cmdline(&token)
            .is_empty()),
        "the agent that never got ready still runs"
    );
}

#[test]
fn health_readiness_check_fails_for_a_missing_agent_program() {
    let dir = scratch("cli-health-missing-program");
    let missing = dir.join("no-such-agent");
    let config = write(
        &dir,
        "hive.toml",
        &format!(
            "[[pools]]\nrole = \"ghost\"\ndriver = \"stdio\"\ncommand = '{}'\n",
            missing.display()
        ),
    );
    let run = Hive::new(&dir)
        .args(["health", "--json", "--config"])
        .args([&config])
        .run();
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains(&missing.to_string_lossy().into_owned()),
        "{run}"
    );
    assert_ne!(run.json()["status"], "ok", "{run}");
}

/// The control sockets (`*.sock`) in `dir`.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn agents_serve_health_over_the_socket_and_drain_on_sigint() {
    let dir = scratch("cli-agents-serve");
    let token = token("cli-agents-serve");
    let text = format!(
        "[kernel]\nstate_dir = \"state\"\n\n{}\n[[pools]]\nrole = \"shell\"\ndriver = \"process\"\nsize = 1\ncapacity = 3\n",
        agent_pool("echo", 2, &token, "lease_ms = 2000")
    );
    let config = write(&dir, "hive.toml", &text);
    let state = dir.join("state");

    let mut agents = Hive::new(&dir)
        .args(["agents", "--config"])
        .args([&config])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || agents
            .stderr()
            .contains("hive agents:")),
        "`hive agents` never said it was ready; stderr:\n{}",
        agents.stderr()
    );
    assert_eq!(
        sockets(&state).len(),
        1,
        "one control socket in {}",
        state.display()
    );
    assert_eq!(pids_with_cmdline(&token).len(), 2, "two test agents run");

    // Health comes from the serving process: the same start time on every ask.
    let ask = || {
        let run = Hive::new(&dir)
            .args(["health", "--json", "--config"])
            .args([&config])
            .run();
        assert_eq!(run.code, 0, "{run}");
        run.json()
    };
    let h = ask();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["agents"]["ready"], 3, "{h}");
    assert_eq!(h["agents"]["failed"], 0, "{h}");
    assert_eq!(h["roles"]["echo"]["agents"], 2, "{h}");
    assert_eq!(h["roles"]["shell"]["agents"], 1, "{h}");
    assert_eq!(h["roles"].as_object().map(|r| r.len()), Some(2), "{h}");
    assert_eq!(h["agent_list"].as_array().map(Vec::len), Some(3), "{h}");
    assert!(h["uptime_s"].as_f64().is_some(), "{h}");
    assert_eq!(
        ask()["started_at"],
        h["started_at"],
        "health did not come from the serving process"
    );
    let text = Hive::new(&dir)
        .args(["health", "--config"])
        .args([&config])
        .run();
    assert_eq!(text.code, 0, "{text}");
    assert!(text.stdout.starts_with("hive agents serving"), "{text}");

    // A second server for the same config is refused.
    let second = Hive::new(&dir)
        .args(["agents", "--config"])
        .args([&config])
        .run();
    assert_eq!(second.code, 2, "{second}");
    assert!(second.stderr.contains("already serves"), "{second}");
    assert_eq!(
        pids_with_cmdline(&token).len(),
        2,
        "the refused server started agents"
    );

    agents.signal(libc::SIGINT);
    let done = agents
        .wait(Duration::from_secs(5))
        .expect("`hive agents` exits within 5 s of SIGINT");
    assert_eq!(done.code, 0, "{done}");
    assert!(done.stderr.contains("draining"), "{done}");
    assert!(
        sockets(&state).is_empty(),
        "socket left behind: {:?}",
        sockets(&state)
    );
    assert!(
        wait_until(Duration::from_secs(3), || pids_with_cmdline(&token)
            .is_empty()),
        "test agents outlived `hive agents`"
    );
}

#[test]
fn agents_stop_on_sigterm_too() {
    let dir = scratch("cli-agents-sigterm");
    let config = write(
        &dir,
        "hive.toml",
        "[kernel]\nstate_dir = \"state\"\n\n[[pools]]\nrole = \"shell\"\ndriver = \"process\"\n",
    );
    let mut agents = Hive::new(&dir)
        .args(["agents", "--config"])
        .args([&config])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || agents
            .stderr()
            .contains("hive agents:")),
        "not ready:\n{}",
        agents.stderr()
    );
    agents.signal(libc::SIGTERM);
    let done = agents
        .wait(Duration::from_secs(5))
        .expect("`hive agents` exits within 5 s of SIGTERM");
    assert_eq!(done.code, 0, "{done}");
    assert!(sockets(&dir.join("state")).is_empty());
    // Nothing serves any more: health falls back to a readiness check.
    let run = Hive::new(&dir)
        .args(["health", "--config"])
        .args([&config])
        .run();
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("readiness check"), "{run}");
}

/// `GET path` from `addr` over HTTP/1.1: the status and the body as JSON (a plain-text body
/// as a JSON string).
fn http_get(addr: &str, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    let json = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (code, json)
}

/// `hive serve`: the pools of `hive agents`, with health and the state directory's runs over
/// HTTP (the same JSON as the CLI's), JSON errors, and a drain on SIGTERM.
#[test]
fn serve_gives_health_and_runs_over_http_and_drains_on_sigterm() {
    let dir = scratch("cli-serve");
    let config = write(
        &dir,
        "hive.toml",
        "[kernel]\nstate_dir = \"state\"\n\n[[pools]]\nrole = \"shell\"\ndriver = \"process\"\nsize = 2\n",
    );
    write(
        &dir,
        "p.yaml",
        "plan_id: p\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n  - id: b\n    command: 'true'\n    depends_on: [a]\n",
    );
    // A run in the config's state directory, before the server starts.
    let run = Hive::new(&dir)
        .args(["run", "p.yaml", "-q", "--config"])
        .args([&config])
        .run();
    assert_eq!(run.code, 0, "{run}");
    let id = run.stderr.lines().next().unwrap_or("").replace("run ", "");

    let mut serve = Hive::new(&dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .args([&config])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || serve
            .stderr()
            .contains("Ctrl-C drains")),
        "not ready:\n{}",
        serve.stderr()
    );
    let line = serve.stderr();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in the ready line: {line}"))
        .to_string();

    let (code, h) = http_get(&addr, "/health");
    assert_eq!((code, &h["status"]), (200, &Value::from("ok")), "{h}");
    assert_eq!(h["roles"]["shell"]["agents"], 2, "{h}");
    // The same process answers `hive health` over its control socket.
    let cli = Hive::new(&dir)
        .args(["health", "--json", "--config"])
        .args([&config])
        .run();
    assert_eq!(cli.json()["started_at"], h["started_at"], "{cli}");
    assert_eq!(http_get(&addr, "/livez").0, 200);

    let (code, runs) = http_get(&addr, "/runs");
    assert_eq!(code, 200, "{runs}");
    let cli = Hive::new(&dir)
        .args(["runs", "--json", "--state-dir", "state"])
        .run();
    assert_eq!(runs, cli.json(), "GET /runs is `hive runs --json`");
    assert_eq!(runs[0]["id"], id.as_str(), "{runs}");
    assert_eq!(
        http_get(&addr, "/runs?state=failed").1,
        serde_json::json!([])
    );
    let (code, one) = http_get(&addr, &format!("/runs/{id}"));
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["run"]["state"], "succeeded", "{one}");
    assert_eq!(one["steps"].as_array().map(Vec::len), Some(2), "{one}");
    let (code, evs) = http_get(&addr, &format!("/runs/{id}/events"));
    assert_eq!(code, 200, "{evs}");
    let types: Vec<&str> = evs
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(types.first(), Some(&"run_started"), "{evs}");
    assert_eq!(types.last(), Some(&"run_finished"), "{evs}");
    let (_, later) = http_get(&addr, &format!("/runs/{id}/events?after=2"));
    assert_eq!(
        later.as_array().map(Vec::len),
        Some(types.len() - 2),
        "{later}"
    );

    // Errors are JSON with their status.
    for (path, want) in [
        ("/runs/no-such-run", 404),
        ("/runs?state=done", 400),
        ("/runs?last=x", 400),
        ("/nowhere", 404),
    ] {
        let (code, body) = http_get(&addr, path);
        assert_eq!(code, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    serve.signal(libc::SIGTERM);
    let done = serve
        .wait(Duration::from_secs(5))
        .expect("`hive serve` exits within 5 s of SIGTERM");
    assert_eq!(done.code, 0, "{done}");
    assert!(done.stderr.contains("hive serve: draining"), "{done}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still listening on {addr} after exit"
    );
}
