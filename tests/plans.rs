//! End-to-end tests of plans on the `hive` command line: `hive validate` and `hive schema`,
//! `hive run PLAN` (its `run RUN_ID` line, exit codes, `--json`), bad input (exit 2 naming
//! file, field and line), `hive runs`, `show`, `events [--follow]`, `resume` (changed plans,
//! Ctrl-C), `hive gc`, a corrupt state database, caching, and the example plans.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hive_tests::{repo_root, scratch, wait_until, Finished, Hive, Running};
use serde_json::Value;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn hive(dir: &Path, args: &[&str]) -> Finished {
    Hive::new(dir).args(args).run()
}

/// Whether a live `hive run` has written its whole `run RUN_ID` line.
fn run_line_written(stderr: &str) -> bool {
    stderr.starts_with("run ") && stderr.contains('\n')
}

/// The run id from `hive run`'s first stderr line (`run RUN_ID`).
fn run_id(f: &Finished) -> String {
    let first = f.stderr.lines().next().unwrap_or_default();
    first
        .strip_prefix("run ")
        .map(str::to_string)
        .unwrap_or_else(|| panic!("stderr does not start with `run RUN_ID`:\n{f}"))
}

/// Starts `hive run PLAN` (state in `st`) in the background and waits for its `run RUN_ID`
/// line; the process and the run id.
fn start(dir: &Path, plan: &str) -> (Running, String) {
    let run = Hive::new(dir)
        .args(["run", plan, "--state-dir", "st", "-q"])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || run_line_written(&run.stderr())),
        "no run line: {}",
        run.stderr()
    );
    let id = run
        .stderr()
        .lines()
        .next()
        .unwrap_or("")
        .replace("run ", "");
    (run, id)
}

/// [`start`], then waits until `hive show` says the run is running.
fn start_until_running(dir: &Path, plan: &str) -> (Running, String) {
    let (run, id) = start(dir, plan);
    assert!(wait_until(Duration::from_secs(10), || {
        hive(dir, &["show", &id, "--state-dir", "st"])
            .stdout
            .contains("running")
    }));
    (run, id)
}

/// The `key` of each object of a JSON array (`hive runs --json`, `hive gc --json`'s `removed`).
fn ids_in(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r[key].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A plan whose one step fails.
const FAILING_PLAN: &str = "plan_id: f\nversion: 1\nsteps:\n  - id: bad\n    command: 'false'\n";

fn assert_bad_input(f: &Finished, needles: &[&str]) {
    assert_eq!(f.code, 2, "expected exit 2:\n{f}");
    assert!(f.stderr.contains("error"), "no error message:\n{f}");
    for n in needles {
        assert!(f.stderr.contains(n), "stderr lacks {n:?}:\n{f}");
    }
}

const OK_PLAN: &str = r#"
plan_id: ok
version: 1
steps:
  - id: hello
    command: "echo '::hive-outputs::{\"who\": \"world\"}'"
    outputs: [who]
  - id: greet
    depends_on: [hello]
    command: echo
    args: ["hello ${steps.hello.outputs.who}"]
"#;

#[test]
fn validate_exits_0_for_a_good_plan_and_2_naming_file_and_line() {
    let dir = scratch("plan-validate");
    let good = write(&dir, "good.yaml", OK_PLAN);
    let f = hive(&dir, &["validate", &good.display().to_string()]);
    assert_eq!(f.code, 0, "{f}");
    assert!(f.stdout.contains("ok"), "{f}");
    write(
        &dir,
        "bad.yaml",
        "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n    depends_on: [b]\n  - id: b\n    command: 'true'\n    depends_on: [a]\n  - id: c\n    command: 'true'\n    depends_on: [nope]\n",
    );
    let f = hive(&dir, &["validate", "bad.yaml"]);
    assert_bad_input(
        &f,
        &["bad.yaml:9:", "a -> b -> a", "bad.yaml:12:", "`nope`"],
    );
    assert!(
        f.stderr.lines().all(|l| l.starts_with("hive: error: ")),
        "each problem on its own error line:\n{f}"
    );
    let f = hive(&dir, &["validate", "missing.json"]);
    assert_bad_input(&f, &["missing.json", "cannot read"]);
}

#[test]
fn schema_prints_the_plan_json_schema() {
    let dir = scratch("plan-schema");
    let f = hive(&dir, &["schema", "plan"]);
    assert_eq!(f.code, 0, "{f}");
    let v = f.json();
    assert!(v["$schema"]
        .as_str()
        .unwrap_or("")
        .contains("json-schema.org"));
    assert!(v["properties"]["steps"]["items"].is_object(), "{v}");
}

#[test]
fn run_prints_its_id_first_and_reports_json() {
    let dir = scratch("plan-run-json");
    write(&dir, "p.yaml", OK_PLAN);
    let f = hive(&dir, &["run", "p.yaml", "--state-dir", "st", "--json"]);
    assert_eq!(f.code, 0, "{f}");
    let id = run_id(&f);
    let v = f.json();
    assert_eq!(v["run_id"], id.as_str());
    assert_eq!(v["state"], "succeeded");
    let tasks = v["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["id"], "hello");
    assert_eq!(tasks[0]["outputs"]["who"], "world");
    assert_eq!(tasks[1]["status"], "succeeded");
    assert!(tasks[1]["output"]["stdout"]
        .as_str()
        .unwrap_or("")
        .contains("hello world"));
    assert!(v["metrics"]["wall_time"].as_f64().is_some());
    // HIVE_STATE_DIR is honoured.
    let f = Hive::new(&dir)
        .args(["run", "p.yaml", "-q"])
        .env("HIVE_STATE_DIR", dir.join("env-state"))
        .run();
    assert_eq!(f.code, 0, "{f}");
    assert!(dir.join("env-state").join("state.db").exists());
}

/// A bare command name is looked up on the PATH the step gives (not only `hive`'s), for
/// every step that names it (the driver remembers the answer; see driver/which.rs).
#[test]
fn a_bare_command_is_found_on_the_path_the_step_gives() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("plan-step-path");
    let bin = dir.join("tools");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let tool = write(&bin, "hive-test-greet", "#!/bin/sh\necho \"greet $*\"\n");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let plan = serde_json::json!({
        "plan_id": "path", "version": "1",
        "steps": [
            {"id": "a", "command": "hive-test-greet", "args": ["one"], "env": {"PATH": path}},
            {"id": "b", "command": "hive-test-greet", "args": ["two"], "env": {"PATH": path},
             "depends_on": ["a"]},
            {"id": "c", "command": "hive-test-greet", "depends_on": ["b"], "critical": false,
             "on_failure": "continue"}
        ]
    });
    write(&dir, "p.json", &plan.to_string());
    let f = hive(&dir, &["run", "p.json", "--state-dir", "st", "--json"]);
    // Step c (not critical) has hive's PATH only: it fails, the run does not.
    assert_eq!(f.code, 0, "{f}");
    let v = f.json();
    let tasks = v["tasks"].as_array().expect("tasks");
    let out = |i: usize| {
        tasks[i]["output"]["stdout"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(tasks[0]["status"], "succeeded", "{f}");
    assert!(out(0).contains("greet one"), "{f}");
    assert_eq!(tasks[1]["status"], "succeeded", "{f}");
    assert!(out(1).contains("greet two"), "{f}");
    assert_eq!(tasks[2]["status"], "failed", "{f}");
    assert!(
        f.stdout.contains("hive-test-greet"),
        "the failure names the program:\n{f}"
    );
}

/// `$HIVE_OUTPUTS` names the same file from a step's own working directory, with a relative
/// `--state-dir` too (the path used to be relative to where `hive` started).
#[test]
fn outputs_file_is_found_from_a_steps_own_cwd_with_a_relative_state_dir() {
    let dir = scratch("plan-outputs-cwd");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let plan = serde_json::json!({
        "plan_id": "outputs-cwd", "version": "1",
        "steps": [
            {"id": "a", "command": "sh", "args": ["-c", "echo v=42 > \"$HIVE_OUTPUTS\""],
             "cwd": "sub", "outputs": ["v"]},
            {"id": "b", "command": "echo", "args": ["got ${steps.a.outputs.v}"],
             "depends_on": ["a"]}
        ]
    });
    write(&dir, "p.json", &plan.to_string());
    let f = hive(&dir, &["run", "p.json", "--state-dir", "st", "--json"]);
    assert_eq!(f.code, 0, "{f}");
    let v = f.json();
    assert_eq!(v["tasks"][1]["output"]["stdout"], "got 42\n", "{f}");
    assert!(
        !dir.join("sub/st").exists(),
        "nothing is written below the step's cwd"
    );
}

#[test]
fn a_failed_step_exits_1_and_names_the_step() {
    let dir = scratch("plan-run-fail");
    write(
        &dir,
        "p.json",
        r#"{"plan_id": "f", "version": "1", "steps": [
            {"id": "boom", "command": "sh", "args": ["-c", "echo oops >&2; exit 3"]},
            {"id": "after", "command": "true", "depends_on": ["boom"]}]}"#,
    );
    let f = hive(&dir, &["run", "p.json", "--state-dir", "st"]);
    assert_eq!(f.code, 1, "{f}");
    assert!(f.stdout.contains("boom failed"), "{f}");
    assert!(f.stdout.contains("oops"), "{f}");
    assert!(
        f.stdout.contains("1 cancelled"),
        "abort cancels `after`:\n{f}"
    );
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let dir = scratch("plan-bad-input");
    write(&dir, "p.yaml", OK_PLAN);
    let f = hive(&dir, &["run", "p.yaml", "--tasks", "[]"]);
    assert_bad_input(&f, &["exactly one of PLAN"]);
    let f = hive(&dir, &["run"]);
    assert_bad_input(&f, &["exactly one of PLAN"]);
    let f = hive(&dir, &["run", "p.yaml", "--var", "NOEQUALS"]);
    assert_bad_input(&f, &["--var NOEQUALS", "K=V"]);
    write(
        &dir,
        "v.yaml",
        "plan_id: v\nversion: 1\nsteps:\n  - id: a\n    command: echo ${BRANCH}\n",
    );
    let f = hive(&dir, &["run", "v.yaml", "--state-dir", "st"]);
    assert_bad_input(&f, &["v.yaml:5:", "steps[0].command", "${BRANCH}"]);
    assert!(
        !dir.join("st").exists(),
        "nothing runs (or is stored) when the plan is refused"
    );
    let f = hive(
        &dir,
        &["run", "v.yaml", "--var", "BRANCH=x", "--state-dir", "st"],
    );
    assert_eq!(f.code, 0, "{f}");
    write(
        &dir,
        "r.yaml",
        "plan_id: r\nversion: 1\nsteps:\n  - id: a\n    role: llm\n    task: {q: 1}\n",
    );
    let f = hive(&dir, &["run", "r.yaml", "--state-dir", "st"]);
    assert_bad_input(&f, &["role `llm`", "--config"]);
    let f = hive(&dir, &["run", "p.yaml", "--timeout", "3"]);
    assert_eq!(f.code, 2, "--timeout is for --tasks:\n{f}");
}

#[test]
fn runs_show_and_events_read_the_state() {
    let dir = scratch("plan-readers");
    write(&dir, "p.yaml", OK_PLAN);
    let f = hive(&dir, &["run", "p.yaml", "--state-dir", "st", "-q"]);
    assert_eq!(f.code, 0, "{f}");
    let id = run_id(&f);
    let f = hive(&dir, &["runs", "--state-dir", "st", "--json"]);
    assert_eq!(f.code, 0, "{f}");
    let runs = f.json();
    let r = runs
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not listed: {runs}"));
    assert_eq!(r["plan"], "ok");
    assert_eq!(r["state"], "succeeded");
    assert!(r["started_at"].is_string() && r["finished_at"].is_string());
    let f = hive(&dir, &["runs", "--state-dir", "st"]);
    assert!(
        f.stdout.contains(&id) && f.stdout.contains("succeeded"),
        "{f}"
    );
    let f = hive(&dir, &["show", &id, "--state-dir", "st"]);
    assert_eq!(f.code, 0, "{f}");
    assert!(
        f.stdout.contains("greet") && f.stdout.contains("succeeded"),
        "{f}"
    );
    let f = hive(&dir, &["show", &id, "--state-dir", "st", "--json"]);
    let v = f.json();
    assert_eq!(v["steps"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["attempts"].as_array().map(Vec::len), Some(2));
    let f = hive(&dir, &["events", &id, "--state-dir", "st"]);
    let types: Vec<String> = f
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("JSON line")["type"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("run_started"));
    assert_eq!(types.last().map(String::as_str), Some("run_finished"));
    assert_eq!(types.iter().filter(|t| *t == "step_finished").count(), 2);
    let file = std::fs::read_to_string(dir.join("st").join("runs").join(format!("{id}.jsonl")))
        .expect("JSONL file beside the database");
    // The file: a `run_created` header (not an event), then the same events.
    assert_eq!(file.lines().count(), types.len() + 1);
    let header: Value =
        serde_json::from_str(file.lines().next().unwrap_or_default()).expect("a JSON header line");
    assert_eq!(header["type"], "run_created");
    assert_eq!(header["seq"], 0);
    assert_eq!(header["steps"].as_array().map(Vec::len), Some(2));
    let f = hive(&dir, &["show", "no-such-run", "--state-dir", "st"]);
    assert_bad_input(&f, &["no-such-run"]);

    // `--state` and `--last` select runs.
    write(&dir, "fails.yaml", FAILING_PLAN);
    let failed = run_id(&hive(
        &dir,
        &["run", "fails.yaml", "--state-dir", "st", "-q"],
    ));
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["runs", "--state-dir", "st", "--json"];
        all.extend_from_slice(args);
        let f = hive(&dir, &all);
        assert_eq!(f.code, 0, "{f}");
        ids_in(&f.json(), "id")
    };
    assert_eq!(listed(&[]), [id.clone(), failed.clone()]);
    assert_eq!(
        listed(&["--state", "failed"]),
        std::slice::from_ref(&failed)
    );
    assert_eq!(
        listed(&["--state", "succeeded", "--last", "5"]),
        std::slice::from_ref(&id)
    );
    assert_eq!(listed(&["--last", "1"]), std::slice::from_ref(&failed));
    assert!(listed(&["--state", "interrupted"]).is_empty());
    assert_bad_input(
        &hive(&dir, &["runs", "--state-dir", "st", "--state", "done"]),
        &["--state", "possible values"],
    );
}

#[test]
fn events_follow_ends_with_the_run() {
    let dir = scratch("plan-follow");
    write(
        &dir,
        "slow.yaml",
        "plan_id: s\nversion: 1\nsteps:\n  - id: a\n    command: sleep\n    args: ['0.5']\n  - id: b\n    command: 'true'\n    depends_on: [a]\n",
    );
    let (mut run, id) = start(&dir, "slow.yaml");
    let f = hive(&dir, &["events", &id, "--state-dir", "st", "--follow"]);
    assert_eq!(f.code, 0, "{f}");
    assert!(
        f.stdout
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .contains("run_finished"),
        "{f}"
    );
    let done = run.wait(Duration::from_secs(10)).expect("run ends");
    assert_eq!(done.code, 0, "{done}");
}

#[test]
fn resume_refuses_a_changed_plan_unless_forced() {
    let dir = scratch("plan-resume-changed");
    let plan = "plan_id: c\nversion: 1\nsteps:\n  - id: a\n    command: sh\n    args: [-c, 'echo a >> log']\n  - id: b\n    command: sh\n    args: [-c, 'test -e fixed']\n    depends_on: [a]\n";
    write(&dir, "p.yaml", plan);
    let f = hive(&dir, &["run", "p.yaml", "--state-dir", "st", "-q"]);
    assert_eq!(f.code, 1, "{f}");
    let id = run_id(&f);
    // Same file: resume re-runs the failed step (still failing).
    write(&dir, "fixed", "");
    write(&dir, "p.yaml", &format!("{plan}# changed\n"));
    let f = hive(&dir, &["resume", &id, "--state-dir", "st", "-q"]);
    assert_bad_input(&f, &["changed", "--force"]);
    let f = hive(
        &dir,
        &["resume", &id, "--state-dir", "st", "--force", "--json"],
    );
    assert_eq!(f.code, 0, "{f}");
    assert_eq!(run_id(&f), id);
    let v = f.json();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["resumed"], true);
    let log = std::fs::read_to_string(dir.join("log")).expect("log");
    assert_eq!(
        log.lines().count(),
        1,
        "`a` succeeded before: not run again"
    );
    let f = hive(&dir, &["resume", &id, "--state-dir", "st"]);
    assert_eq!(f.code, 0, "{f}");
    assert!(f.stderr.contains("nothing to resume"), "{f}");
}

#[test]
fn ctrl_c_cancels_the_run_and_resume_finishes_it() {
    let dir = scratch("plan-interrupt");
    write(
        &dir,
        "p.yaml",
        "plan_id: i\nversion: 1\nsteps:\n  - id: long\n    command: sh\n    args: [-c, 'test -e go || sleep 30']\n  - id: next\n    command: 'true'\n    depends_on: [long]\n",
    );
    let (mut run, id) = start_until_running(&dir, "p.yaml");
    run.signal(libc::SIGINT);
    let f = run.wait(Duration::from_secs(20)).expect("hive ends");
    assert_eq!(f.code, 130, "{f}");
    let show = hive(&dir, &["show", &id, "--state-dir", "st"]);
    assert!(show.stdout.contains("cancelled"), "{show}");
    write(&dir, "go", "");
    let f = hive(&dir, &["resume", &id, "--state-dir", "st", "-q"]);
    assert_eq!(f.code, 0, "{f}");
}

/// `hive gc`: old runs go (rows and files), young ones stay, a run being executed is left
/// alone and finishes, and the selectors are checked.
#[test]
fn gc_removes_old_runs_and_never_a_running_one() {
    let dir = scratch("plan-gc");
    write(&dir, "p.yaml", OK_PLAN);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let f = hive(&dir, &["run", "p.yaml", "--state-dir", "st", "-q"]);
            assert_eq!(f.code, 0, "{f}");
            run_id(&f)
        })
        .collect();
    let jsonl = |id: &str| dir.join("st").join("runs").join(format!("{id}.jsonl"));
    let scratch_dir = |id: &str| dir.join("st").join("runs").join(id);
    assert!(jsonl(&ids[0]).is_file() && scratch_dir(&ids[0]).is_dir());
    // The first run ended in January.
    let db = rusqlite::Connection::open(dir.join("st").join("state.db")).expect("open");
    let n = db
        .execute(
            "UPDATE runs SET created_at = '2026-01-01T00:00:00Z', finished_at = '2026-01-01T00:01:00Z' WHERE run_id = ?1",
            [&ids[0]],
        )
        .expect("backdate");
    assert_eq!(n, 1);
    drop(db);

    let removed = |f: &Finished| -> Vec<String> {
        assert_eq!(f.code, 0, "{f}");
        ids_in(&f.json()["removed"], "run_id")
    };
    let f = hive(
        &dir,
        &[
            "gc",
            "--state-dir",
            "st",
            "--older-than",
            "30d",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(removed(&f), [ids[0].clone()]);
    assert!(jsonl(&ids[0]).is_file(), "a dry run removes nothing");
    let f = hive(
        &dir,
        &["gc", "--state-dir", "st", "--older-than", "30d", "--json"],
    );
    assert_eq!(removed(&f), [ids[0].clone()]);
    assert_eq!(f.json()["kept"], 2);
    assert!(!jsonl(&ids[0]).exists() && !scratch_dir(&ids[0]).exists());
    assert_bad_input(
        &hive(&dir, &["show", &ids[0], "--state-dir", "st"]),
        &[&ids[0]],
    );
    for id in &ids[1..] {
        let f = hive(&dir, &["show", id, "--state-dir", "st"]);
        assert_eq!(f.code, 0, "{f}");
        assert!(jsonl(id).is_file());
    }

    // A run being executed is never removed, even with --keep 0.
    write(
        &dir,
        "wait.yaml",
        "plan_id: w\nversion: 1\nsteps:\n  - id: w\n    command: sh\n    args: [-c, 'while ! test -e go; do sleep 0.02; done']\n",
    );
    let (mut live, live_id) = start_until_running(&dir, "wait.yaml");
    let f = hive(
        &dir,
        &[
            "gc",
            "--state-dir",
            "st",
            "--keep",
            "0",
            "--vacuum",
            "--json",
        ],
    );
    let mut gone = removed(&f);
    gone.sort();
    assert_eq!(gone, ids[1..]);
    let v = f.json();
    assert_eq!(v["busy"], serde_json::json!([live_id]));
    assert_eq!(
        (v["kept"].as_u64(), v["vacuumed"].as_bool()),
        (Some(1), Some(true))
    );
    write(&dir, "go", "");
    let done = live
        .wait(Duration::from_secs(20))
        .expect("the live run ends");
    assert_eq!(done.code, 0, "{done}");
    let f = hive(&dir, &["runs", "--state-dir", "st", "--json"]);
    assert_eq!(ids_in(&f.json(), "id"), std::slice::from_ref(&live_id));
    let f = hive(&dir, &["gc", "--state-dir", "st", "--keep", "1"]);
    assert!(f.stdout.contains("removed 0 runs"), "{f}");

    // Which runs must be said, and an age must have a unit.
    assert_bad_input(
        &hive(&dir, &["gc", "--state-dir", "st"]),
        &["--older-than", "--keep"],
    );
    assert_bad_input(
        &hive(&dir, &["gc", "--state-dir", "st", "--older-than", "3x"]),
        &["--older-than", "unknown time unit"],
    );
}

/// `--legacy`: the legacy plan command line's contract (`python -m core.engine.orchestrator`):
/// `Run ID: <id>` alone on stdout, exit 0 once the run ended (failed included), 1 on bad
/// input, 2 on a bad flag.
#[test]
fn legacy_flag_keeps_the_legacy_plan_cli_contract() {
    let dir = scratch("plan-legacy");
    write(&dir, "fails.yaml", FAILING_PLAN);
    let f = hive(
        &dir,
        &["run", "fails.yaml", "--state-dir", "st", "--legacy", "-q"],
    );
    assert_eq!(f.code, 0, "a failed run still exits 0: {f}");
    let id = run_id(&f);
    assert_eq!(f.stdout, format!("Run ID: {id}\n"), "{f}");
    assert!(
        f.stderr.contains("bad failed"),
        "the summary is on stderr: {f}"
    );
    let f = hive(&dir, &["show", &id, "--state-dir", "st", "--json"]);
    assert_eq!(f.json()["run"]["state"], "failed");
    // Without it, the same run exits 1 and the summary is on stdout.
    let f = hive(&dir, &["run", "fails.yaml", "--state-dir", "st", "-q"]);
    assert_eq!(f.code, 1, "{f}");
    assert!(
        f.stdout.contains("bad failed") && !f.stdout.contains("Run ID"),
        "{f}"
    );
    // Bad input is 1 (the legacy CLI's exception), a bad flag 2 (argparse's).
    let f = hive(
        &dir,
        &["run", "missing.yaml", "--state-dir", "st", "--legacy"],
    );
    assert_eq!(f.code, 1, "{f}");
    assert!(f.stderr.contains("missing.yaml"), "{f}");
    let f = hive(&dir, &["run", "fails.yaml", "--var", "novalue", "--legacy"]);
    assert_eq!(f.code, 1, "{f}");
    let f = hive(&dir, &["run", "fails.yaml", "--legacy", "--json"]);
    assert_bad_input(&f, &["--legacy", "--json"]);
}

#[test]
fn a_corrupt_state_database_is_a_clear_error() {
    let dir = scratch("plan-corrupt");
    write(&dir, "p.yaml", OK_PLAN);
    std::fs::create_dir_all(dir.join("st")).expect("mkdir");
    std::fs::write(dir.join("st").join("state.db"), vec![7u8; 4096]).expect("write");
    let f = hive(&dir, &["run", "p.yaml", "--state-dir", "st"]);
    assert_bad_input(&f, &["state.db", "corrupt"]);
    assert!(!f.stderr.contains("panicked"), "{f}");
    let f = hive(&dir, &["runs", "--state-dir", "st"]);
    assert_bad_input(&f, &["corrupt"]);
}

#[test]
fn cache_hits_and_misses_on_the_command_line() {
    let dir = scratch("plan-cache");
    write(&dir, "input.txt", "1");
    write(
        &dir,
        "p.yaml",
        "plan_id: c\nversion: 1\nsteps:\n  - id: build\n    command: sh\n    args: [-c, 'cat input.txt >> built']\n    cache:\n      inputs: [input.txt]\n",
    );
    let status = |args: &[&str]| -> String {
        let mut a = vec!["run", "p.yaml", "--state-dir", "st", "--json"];
        a.extend_from_slice(args);
        let f = hive(&dir, &a);
        assert_eq!(f.code, 0, "{f}");
        f.json()["tasks"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status(&[]), "succeeded");
    assert_eq!(status(&[]), "cached");
    write(&dir, "input.txt", "2");
    assert_eq!(status(&[]), "succeeded", "a changed input misses");
    assert_eq!(status(&[]), "cached");
    assert_eq!(status(&["--no-cache"]), "succeeded");
    let built = std::fs::read_to_string(dir.join("built")).expect("built");
    assert_eq!(built, "122", "ran three times");
}

fn example(name: &str) -> String {
    repo_root()
        .join("examples")
        .join("plans")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn the_example_plans_validate_and_run() {
    let dir = scratch("plan-examples");
    for p in ["safe_merge.yaml", "ci.toml", "fan_out.json"] {
        let f = hive(&dir, &["validate", &example(p)]);
        assert_eq!(f.code, 0, "{p}: {f}");
    }
    let f = hive(
        &dir,
        &[
            "run",
            &example("fan_out.json"),
            "--state-dir",
            "st",
            "--json",
        ],
    );
    assert_eq!(f.code, 0, "{f}");
    let v = f.json();
    let sum = v["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == "sum"))
        .map(|t| t["outputs"]["sum"].clone());
    assert_eq!(sum, Some(Value::from(1496)), "1..16 squared");
    let git = std::process::Command::new("git").arg("--version").output();
    if git.is_ok_and(|o| o.status.success()) {
        let f = hive(
            &dir,
            &[
                "run",
                &example("safe_merge.yaml"),
                "--state-dir",
                "st",
                "--json",
            ],
        );
        assert_eq!(f.code, 0, "{f}");
        let log = std::process::Command::new("git")
            .args(["log", "--oneline", "-1"])
            .current_dir(dir.join(".hive").join("safe-merge-demo"))
            .output()
            .expect("git log");
        assert!(String::from_utf8_lossy(&log.stdout).contains("Merge feature/demo"));
    }
    let config = repo_root().join("examples").join("hive.toml");
    let args = [
        "run",
        &example("ci.toml"),
        "--config",
        &config.display().to_string(),
        "--state-dir",
        "st",
        "--json",
    ];
    let f = hive(&dir, &args);
    assert_eq!(f.code, 0, "{f}");
    let build = |f: &Finished| {
        f.json()["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["id"] == "build"))
            .map(|t| t["status"].clone())
    };
    assert_eq!(build(&f), Some(Value::from("succeeded")));
    let f = hive(&dir, &args);
    assert_eq!(f.code, 0, "{f}");
    assert_eq!(build(&f), Some(Value::from("cached")));
}
