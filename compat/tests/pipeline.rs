//! The AI pipeline orchestrator facade (seed 003) on a real kernel, real processes and a real
//! SQLite state directory under the target directory: the translation of every supported
//! construct (inputs and variables, templates, `condition`, `on_success` / `on_failure` /
//! `on_false` routes, tools), the refusal of unsupported ones with their line and column,
//! runs that take each branch, the pipeline's outputs, and checkpoint/resume: a run whose
//! process is killed (SIGKILL, in a child process) or that is cancelled is finished by
//! `resume` without running its succeeded steps again. The example in examples/pipelines/
//! is checked against its translation and run. No timed assertions: the tests wait for
//! conditions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hive_compat::pipeline::{
    translate, translate_str, PipelineError, PipelineOrchestrator, ProblemKind,
};
use hive_compat::plans::{RunStateName, StepStatus};
use hive_kernel::StepState;
use serde_json::{json, Value};

const NO_INPUTS: [(&str, &str); 0] = [];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A fresh directory under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("compat-pipeline")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

fn orch(dir: &Path) -> PipelineOrchestrator {
    PipelineOrchestrator::builder()
        .state_dir(dir.join("state"))
        .workdir(dir)
        .build()
        .expect("build the orchestrator")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write the pipeline");
    p
}

/// The translated plan of pipeline text.
fn plan_of(text: &str) -> Value {
    match translate_str(text, "test.yaml") {
        Ok(t) => t.plan_json().clone(),
        Err(e) => panic!("translation failed:\n{e}"),
    }
}

/// The problems of pipeline text that must be refused.
fn refused(text: &str) -> PipelineError {
    match translate_str(text, "test.yaml") {
        Ok(t) => panic!("translated:\n{}", t.to_plan_json()),
        Err(e) => e,
    }
}

fn plan_step<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {plan:#}"))
}

fn step<'a>(steps: &'a [StepStatus], id: &str) -> &'a StepStatus {
    steps
        .iter()
        .find(|s| s.step_id == id)
        .unwrap_or_else(|| panic!("no step {id} in {steps:#?}"))
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

/// Waits until `cond` holds (checked every 20 ms); panics after a minute.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------ translation --

#[test]
fn inputs_templates_and_tools_translate() {
    let plan = plan_of(
        r#"
id: demo
name: Demo
version: 2
max_concurrency: 3
inputs:
  topic: {type: string, default: rust}
  depth: 2
  who: {type: string}
variables:
  mode: fast
steps:
  - id: a
    command: echo
    args: ["{{ topic }}", "${depth}", "{{inputs.mode}}", 7]
    env: {WHO: "{{ who }}"}
    outputs: [k]
  - id: b
    dependencies: a
    tool: web-search
    action: search
    parameters:
      query: "{{ topic }} {{ a.k }}"
      raw: "{{ a.k.items[0] }}"
      n: 3
    timeout: 30
    max_retries: 2
    retry_delay: 1.5
"#,
    );
    assert_eq!(plan["plan_id"], "demo");
    assert_eq!(plan["version"], "2");
    assert_eq!(plan["description"], "Demo");
    assert_eq!(plan["globals"]["max_concurrency"], 3);
    // Defaults become vars; a required input has none.
    assert_eq!(
        plan["vars"],
        json!({"topic": "rust", "depth": "2", "mode": "fast"})
    );
    assert_eq!(
        plan["metadata"]["pipeline"]["inputs"]["who"]["required"],
        true
    );
    let a = plan_step(&plan, "a");
    assert_eq!(a["args"], json!(["${topic}", "${depth}", "${mode}", 7]));
    assert_eq!(a["env"], json!({"WHO": "${who}"}));
    assert_eq!(a["outputs"], json!(["k"]));
    // A tool runs on an agent of its role; the task carries the action and parameters.
    let b = plan_step(&plan, "b");
    assert_eq!(b["role"], "web-search");
    assert_eq!(
        b["task"],
        json!({"action": "search", "tool": "web-search", "parameters": {
            "query": "${topic} ${steps.a.outputs.k}",
            "raw": "${steps.a.outputs.k.items.0}",
            "n": 3
        }})
    );
    assert_eq!(b["depends_on"], json!(["a"]));
    assert_eq!(b["timeout_sec"], 30);
    assert_eq!(b["retries"], 2);
    assert_eq!(b["retry_delay_sec"], 1.5);
    // The kernel accepts the translation.
    let t = translate_str(
        "id: x\ninputs: {who: {type: string}}\nsteps:\n  - id: a\n    command: echo {{ who }}\n",
        "x.yaml",
    )
    .expect("translate");
    let inputs: BTreeMap<String, String> = [("who".to_string(), "me".to_string())].into();
    let p = t
        .to_plan("x.plan.json", &inputs)
        .expect("the kernel loads it");
    assert_eq!(p.id(), "x");
}

#[test]
fn conditions_and_routes_translate() {
    let plan = plan_of(
        r#"
id: routes
inputs: {mode: fast}
steps:
  - id: check
    command: "true"
    outputs: [score]
  - id: fast
    depends_on: [check]
    condition: "{{ mode == 'fast' and check.score > 0.5 }}"
    on_false: goto slow
    command: "true"
  - id: slow
    command: "true"
  - id: fetch
    command: "false"
    on_failure: retry 2
  - id: tolerant
    command: "false"
    on_failure: continue
  - id: skipper
    command: "false"
    on_failure: skip
  - id: risky
    command: "false"
    on_failure: {retry: 1, then: goto recover}
  - id: recover
    command: "true"
    condition: mode != 'off'
  - id: build
    command: "true"
    on_success: goto ship
  - id: ship
    command: "true"
  - id: strict
    command: "false"
    on_failure: fail
"#,
    );
    let fast = plan_step(&plan, "fast");
    assert_eq!(
        fast["when"],
        "vars.mode == 'fast' && steps.check.outputs.score > 0.5"
    );
    let slow = plan_step(&plan, "slow");
    assert_eq!(slow["depends_on"], json!(["fast"]));
    assert_eq!(slow["when"], "steps.fast.status == 'skipped'");
    assert_eq!(plan_step(&plan, "fetch")["retries"], 2);
    assert!(plan_step(&plan, "fetch").get("on_failure").is_none());
    let tolerant = plan_step(&plan, "tolerant");
    assert_eq!(tolerant["on_failure"], "continue");
    assert_eq!(tolerant["critical"], false);
    let skipper = plan_step(&plan, "skipper");
    assert_eq!(skipper["on_failure"], "skip_dependents");
    assert_eq!(skipper["critical"], false);
    let risky = plan_step(&plan, "risky");
    assert_eq!(risky["retries"], 1);
    assert_eq!(risky["on_failure"], "skip_dependents");
    assert_eq!(risky["critical"], false);
    let recover = plan_step(&plan, "recover");
    assert_eq!(recover["depends_on"], json!(["risky"]));
    assert_eq!(
        recover["when"],
        "(steps.risky.status == 'failed' || steps.risky.status == 'timed_out') && (vars.mode != 'off')"
    );
    let ship = plan_step(&plan, "ship");
    assert_eq!(ship["depends_on"], json!(["build"]));
    assert_eq!(ship["when"], "steps.build.status == 'succeeded'");
    let strict = plan_step(&plan, "strict");
    assert!(strict.get("on_failure").is_none() && strict.get("critical").is_none());
}

#[test]
fn unsupported_constructs_are_refused_with_their_place() {
    let cases: &[(&str, &str, ProblemKind, usize, usize, &str)] = &[
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n    for_each: [1, 2]\n",
            "steps[0].for_each",
            ProblemKind::Unsupported,
            5,
            5,
            "loops",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n    on_success: fail\n",
            "steps[0].on_success",
            ProblemKind::Unsupported,
            5,
            5,
            "no equivalent",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n  - id: b\n    command: echo\n    depends_on: [a]\n    on_failure: goto a\n",
            "steps[1].on_failure",
            ProblemKind::Unsupported,
            8,
            5,
            "loop",
        ),
        (
            "id: x\ninputs: {t: a}\nsteps:\n  - id: a\n    command: echo \"{{ t | upper }}\"\n",
            "steps[0].command",
            ProblemKind::Unsupported,
            5,
            5,
            "filters",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo {{ nope }}\n",
            "steps[0].command",
            ProblemKind::UnknownReference,
            4,
            5,
            "nope",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    action: <AUTO>pick one</AUTO>\n",
            "steps[0].action",
            ProblemKind::Unsupported,
            4,
            5,
            "AUTO",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n    outputs: [k]\n  - id: b\n    command: echo {{ a.k }}\n",
            "steps[1].command",
            ProblemKind::UnknownReference,
            7,
            5,
            "does not depend on it",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n    on_failure: retry\n",
            "steps[0].on_failure",
            ProblemKind::Invalid,
            5,
            5,
            "needs a count",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n  - id: b\n    command: echo\n    depends_on: [a]\n  - id: c\n    command: echo\n    on_success: goto d\n  - id: d\n    command: echo\n  - id: e\n    command: echo\n    depends_on: [c]\n",
            "steps[2].on_success",
            ProblemKind::Unsupported,
            10,
            5,
            "jump over `e`",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n    condition: \"a.score + 1 > 2\"\n",
            "steps[0].condition",
            ProblemKind::Unsupported,
            5,
            5,
            "arithmetic",
        ),
        (
            "id: x\nglobal_error_handlers: []\nsteps:\n  - id: a\n    command: echo\n",
            "global_error_handlers",
            ProblemKind::Unsupported,
            2,
            1,
            "error handlers",
        ),
        (
            "id: x\nsteps:\n  - id: a\n    command: echo\n    depends_on: [b]\n  - id: b\n    command: echo\n    depends_on: [a]\n",
            "steps[0].depends_on",
            ProblemKind::Cycle,
            5,
            5,
            "a -> b -> a",
        ),
    ];
    for (text, field, kind, line, column, words) in cases {
        let e = refused(text);
        let p = e
            .problems()
            .iter()
            .find(|p| p.field == *field)
            .unwrap_or_else(|| panic!("no problem at {field}: {e}"));
        assert_eq!(p.kind, *kind, "{e}");
        assert_eq!((p.line, p.column), (Some(*line), Some(*column)), "{e}");
        assert!(p.message.contains(words), "{e}");
        // The message names the file, line and column.
        assert!(
            e.to_string()
                .contains(&format!("test.yaml:{line}:{column}: {field}")),
            "{e}"
        );
    }
}

// ------------------------------------------------------------------------------ runs --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_take_their_branch_and_inputs_are_checked() {
    let dir = scratch("conditions");
    let o = orch(&dir);
    let p = write(
        &dir,
        "branch.yaml",
        r#"
id: branch
inputs:
  mode: {type: string, default: fast}
  label: {type: string}
steps:
  - id: probe
    command: sh
    args: [-c, 'echo "::hive-outputs::{\"score\": 0.9}"']
    outputs: [score]
  - id: quick
    depends_on: [probe]
    condition: "{{ mode == 'fast' and probe.score > 0.5 }}"
    on_false: goto thorough
    command: sh
    args: [-c, 'echo "quick {{ label }}" > quick.txt']
  - id: thorough
    command: sh
    args: [-c, 'echo "thorough {{ label }}" > thorough.txt']
outputs:
  score: "{{ probe.score }}"
"#,
    );
    // The condition holds: `quick` runs, the on_false route does not.
    let id = o
        .execute_pipeline(&p, [("label", "one")])
        .await
        .expect("execute_pipeline");
    let run = o.get_status(&id).expect("status");
    assert_eq!(run.state, RunStateName::Succeeded);
    let steps = o.orchestrator().get_run_steps(&id).expect("steps");
    assert_eq!(step(&steps, "quick").state, StepState::Succeeded);
    assert_eq!(step(&steps, "thorough").state, StepState::Skipped);
    assert_eq!(
        std::fs::read_to_string(dir.join("quick.txt")).expect("quick.txt"),
        "quick one\n"
    );
    assert_eq!(
        o.get_outputs(&id).expect("outputs"),
        json!({"score": 0.9}).as_object().cloned().expect("map")
    );

    // The condition is false: `quick` is skipped, `thorough` runs.
    let id = o
        .execute_pipeline(&p, [("mode", "slow"), ("label", "two")])
        .await
        .expect("execute_pipeline");
    let steps = o.orchestrator().get_run_steps(&id).expect("steps");
    assert_eq!(step(&steps, "quick").state, StepState::Skipped);
    assert_eq!(step(&steps, "thorough").state, StepState::Succeeded);
    assert_eq!(
        std::fs::read_to_string(dir.join("thorough.txt")).expect("thorough.txt"),
        "thorough two\n"
    );

    // A required input missing, and one the pipeline does not declare: refused, located.
    let runs = o.orchestrator().list_runs(None).expect("runs").len();
    let e = o
        .execute_pipeline(&p, NO_INPUTS)
        .await
        .expect_err("label is required");
    let miss = &e.problems()[0];
    assert_eq!(miss.kind, ProblemKind::MissingInput, "{e}");
    assert_eq!(miss.field, "inputs.label");
    assert_eq!(miss.line, Some(5), "{e}");
    let e = o
        .execute_pipeline(&p, [("label", "x"), ("colour", "red")])
        .await
        .expect_err("colour is not declared");
    assert_eq!(e.problems()[0].kind, ProblemKind::UnknownReference, "{e}");
    assert_eq!(o.orchestrator().list_runs(None).expect("runs").len(), runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_routes_continue_skip_retry_and_goto() {
    let dir = scratch("routes");
    let o = orch(&dir);
    let p = write(
        &dir,
        "routes.yaml",
        r#"
id: routes
steps:
  - id: flaky
    command: sh
    args: [-c, 'echo x >> flaky.count; exit 1']
    on_failure: {retry: 1, then: goto handler}
  - id: after_flaky
    depends_on: [flaky]
    command: "true"
  - id: handler
    command: sh
    args: [-c, 'echo handled > handled.txt']
  - id: tolerant
    command: "false"
    on_failure: continue
  - id: after_tolerant
    depends_on: [tolerant]
    command: "true"
  - id: skipper
    command: "false"
    on_failure: skip
  - id: after_skipper
    depends_on: [skipper]
    command: "true"
  - id: build
    command: "true"
    on_success: goto ship
  - id: ship
    command: "true"
"#,
    );
    let id = o
        .execute_pipeline(&p, NO_INPUTS)
        .await
        .expect("execute_pipeline");
    let steps = o.orchestrator().get_run_steps(&id).expect("steps");
    let state = |s: &str| step(&steps, s).state;
    // retry 1, then goto: two attempts, the handler runs, the normal path is skipped.
    assert_eq!(state("flaky"), StepState::Failed);
    assert_eq!(step(&steps, "flaky").attempts, 2);
    assert_eq!(lines(&dir.join("flaky.count")), 2);
    assert_eq!(state("handler"), StepState::Succeeded);
    assert!(dir.join("handled.txt").exists());
    assert_eq!(state("after_flaky"), StepState::Skipped);
    // continue: dependents run; skip: dependents skipped.
    assert_eq!(state("after_tolerant"), StepState::Succeeded);
    assert_eq!(state("after_skipper"), StepState::Skipped);
    // on_success goto.
    assert_eq!(state("ship"), StepState::Succeeded);
    // Every failure was routed: the pipeline succeeds.
    assert_eq!(
        o.get_status(&id).expect("status").state,
        RunStateName::Succeeded
    );

    // `fail` (the default) fails the pipeline and stops what has not started.
    let p = write(
        &dir,
        "fail.yaml",
        "id: failing\nsteps:\n  - id: bad\n    command: \"false\"\n  - id: next\n    depends_on: [bad]\n    command: \"true\"\n",
    );
    let id = o
        .execute_pipeline(&p, NO_INPUTS)
        .await
        .expect("execute_pipeline");
    let run = o.get_status(&id).expect("status");
    assert_eq!((run.state, run.exit_code), (RunStateName::Failed, Some(1)));
    let steps = o.orchestrator().get_run_steps(&id).expect("steps");
    assert_eq!(step(&steps, "next").state, StepState::Cancelled);
}

// ------------------------------------------------------------------ checkpoint/resume --

/// Three steps: `first` counts its runs; `second` counts its runs, says it started, and
/// waits for a `release` file; `third` counts its runs.
const RESUMABLE: &str = r#"
id: resumable
steps:
  - id: first
    command: sh
    args: [-c, 'echo x >> first.count']
  - id: second
    depends_on: [first]
    command: sh
    args: [-c, 'echo x >> second.count; touch second.started; while [ ! -f release ]; do sleep 0.02; done']
  - id: third
    depends_on: [second]
    command: sh
    args: [-c, 'echo x >> third.count']
"#;

/// Run by `checkpoint_resume_after_the_process_is_killed` in a child process: executes the
/// pipeline of `$HIVE_COMPAT_PIPELINE_CHILD` (it never ends by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of checkpoint_resume_after_the_process_is_killed"]
async fn child_executes_a_pipeline() {
    let Some(dir) = std::env::var_os("HIVE_COMPAT_PIPELINE_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let o = orch(&dir);
    let _ = o
        .execute_pipeline(dir.join("resumable.yaml"), NO_INPUTS)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_resume_after_the_process_is_killed() {
    let dir = scratch("crash");
    write(&dir, "resumable.yaml", RESUMABLE);
    let mut child = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "child_executes_a_pipeline",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("HIVE_COMPAT_PIPELINE_CHILD", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child");
    let o = orch(&dir);
    // Wait until `first` succeeded (on disk) and `second` runs, then kill -9 the process.
    let mut run_id = String::new();
    wait_for("first to succeed and second to start", || {
        let Ok(runs) = o.orchestrator().list_runs(None) else {
            return false;
        };
        let Some(r) = runs.first() else { return false };
        run_id = r.run_id.clone();
        dir.join("second.started").exists()
            && o.orchestrator()
                .get_run_steps(&run_id)
                .is_ok_and(|s| step(&s, "first").state == StepState::Succeeded)
    })
    .await;
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    wait_for("the run to be interrupted", || {
        o.get_status(&run_id)
            .is_ok_and(|s| s.state == RunStateName::Interrupted)
    })
    .await;

    std::fs::write(dir.join("release"), "").expect("release second");
    let end = o.resume(&run_id).await.expect("resume");
    assert_eq!(end.state, RunStateName::Succeeded);
    assert_eq!(end.resumes, 1);
    // `first` succeeded before the crash: not run again. `second` was in flight: again.
    assert_eq!(lines(&dir.join("first.count")), 1);
    assert_eq!(lines(&dir.join("second.count")), 2);
    assert_eq!(lines(&dir.join("third.count")), 1);
    let steps = o.orchestrator().get_run_steps(&run_id).expect("steps");
    let second = step(&steps, "second");
    assert_eq!(second.state, StepState::Succeeded);
    assert_eq!(second.attempt_history[0].state, "interrupted");
    assert_eq!(second.attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_resume_after_a_cancel() {
    let dir = scratch("cancel");
    let p = write(&dir, "resumable.yaml", RESUMABLE);
    let o = orch(&dir);
    let handle = o
        .start_pipeline(&p, NO_INPUTS)
        .await
        .expect("start_pipeline");
    let id = handle.run_id().to_string();
    wait_for("second to start", || dir.join("second.started").exists()).await;
    handle.cancel();
    let s = handle.wait().await.expect("wait");
    assert_eq!(s.state, RunStateName::Cancelled);
    let steps = o.orchestrator().get_run_steps(&id).expect("steps");
    assert_eq!(step(&steps, "second").state, StepState::Cancelled);
    assert_eq!(step(&steps, "third").state, StepState::Cancelled);

    std::fs::write(dir.join("release"), "").expect("release second");
    let end = o.resume(&id).await.expect("resume");
    assert_eq!(end.state, RunStateName::Succeeded);
    assert_eq!(lines(&dir.join("first.count")), 1);
    assert_eq!(lines(&dir.join("second.count")), 2);
    assert_eq!(lines(&dir.join("third.count")), 1);
    // A succeeded run resumes to itself; a run of a plan is not a pipeline's.
    assert_eq!(
        o.resume(&id).await.expect("resume").state,
        RunStateName::Succeeded
    );
    let plan = dir.join("plain.json");
    std::fs::write(
        &plan,
        r#"{"plan_id": "P", "version": "1", "steps": [{"id": "a", "command": "true"}]}"#,
    )
    .expect("write plan");
    let plain = o
        .orchestrator()
        .execute_plan(&plan, NO_INPUTS)
        .await
        .expect("execute_plan");
    assert!(matches!(
        o.resume(&plain).await,
        Err(PipelineError::NotAPipelineRun(_))
    ));
}

// --------------------------------------------------------------------------- example --

const EXAMPLE: &str = "examples/pipelines/research_report.yaml";
const EXAMPLE_PLAN: &str = "examples/pipelines/research_report.plan.json";

#[test]
fn the_example_plan_is_the_translation_of_the_example_pipeline() {
    let root = repo();
    let text = std::fs::read_to_string(root.join(EXAMPLE)).expect("read the example");
    let t = translate_str(&text, EXAMPLE).expect("translate the example");
    let json = t.to_plan_json();
    if std::env::var_os("HIVE_COMPAT_BLESS").is_some() {
        t.write_plan(root.join(EXAMPLE_PLAN)).expect("write");
    }
    let kept = std::fs::read_to_string(root.join(EXAMPLE_PLAN)).expect("read the plan");
    assert_eq!(
        kept, json,
        "{EXAMPLE_PLAN} is stale: regenerate it with HIVE_COMPAT_BLESS=1 cargo test -p hive-compat --test pipeline the_example"
    );
    // And the translation from the file is the same.
    let from_file = translate(root.join(EXAMPLE)).expect("translate");
    assert_eq!(from_file.plan_json()["steps"], t.plan_json()["steps"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_pipeline_runs() {
    let dir = scratch("example");
    // The echo pool of examples/hive.toml (a Python stdio agent), without plugins.
    let config = write(
        &dir,
        "hive.toml",
        &format!(
            "[[pools]]\nrole = \"echo\"\ndriver = \"stdio\"\nsize = 1\ncapacity = 2\ncommand = \"python3\"\nargs = [\"{}\"]\n",
            repo().join("examples/agents/echo_agent.py").display()
        ),
    );
    let o = PipelineOrchestrator::builder()
        .state_dir(dir.join("state"))
        .workdir(&dir)
        .config(&config)
        .build()
        .expect("build");
    let id = o
        .execute_pipeline(repo().join(EXAMPLE), [("topic", "hive")])
        .await
        .expect("execute_pipeline");
    let run = o.get_status(&id).expect("status");
    let steps = o.orchestrator().get_run_steps(&id).expect("steps");
    assert_eq!(run.state, RunStateName::Succeeded, "{steps:#?}");
    let state = |s: &str| step(&steps, s).state;
    assert_eq!(state("gather"), StepState::Succeeded);
    assert_eq!(state("fallback"), StepState::Skipped);
    assert_eq!(state("summarize"), StepState::Succeeded);
    assert_eq!(state("deep_dive"), StepState::Skipped);
    assert_eq!(state("quick_look"), StepState::Succeeded);
    assert_eq!(state("publish"), StepState::Succeeded);
    let out = dir.join(".hive/research-report");
    let report = std::fs::read_to_string(out.join("published.md")).expect("the report");
    assert!(report.starts_with("# hive\n"), "{report}");
    assert!(report.contains("note 2 about hive"), "{report}");
    let outputs = o.get_outputs(&id).expect("outputs");
    assert_eq!(outputs["notes"], 2);
    assert_eq!(outputs["report"], ".hive/research-report/report.md");
}

#[test]
fn the_facade_is_send() {
    fn send<T: Send>(_: &T) {}
    let dir = scratch("send");
    let o = orch(&dir);
    send(&o);
    send(&o.execute_pipeline(dir.join("p.yaml"), NO_INPUTS));
    send(&o.start_pipeline(dir.join("p.yaml"), NO_INPUTS));
    send(&o.resume("x"));
}
