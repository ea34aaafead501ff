//! `hive run --tasks JSON|@FILE`: the legacy tools command line. Runs a list of commands (or
//! agent tasks) at a bounded concurrency and prints a summary, or with `--json` the
//! OrchestrationResult of the seed (`{"tasks": [...], "metrics": {...}}`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hive_kernel::{
    AgentSpec, BatchOptions, BatchResult, Cancellation, Config, Fairness, Outcome, RetryPolicy,
    ShutdownMode, Status, TaskSpec, Timestamp, LOCAL_ROLE,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::progress;
use crate::Exit;

/// The role of tasks that name none: commands run by a local process agent.

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// A plan file (.json, .yaml or .toml) to run as a durable DAG (see docs/plans.md).
    /// Exactly one of PLAN or --tasks.
    #[arg(value_name = "PLAN")]
    pub(crate) plan: Option<PathBuf>,
    /// The tasks: a JSON array, or @FILE to read it from a file. Each task is
    /// {id?, command, args?, role?, timeout_s?, retries?, env?, cwd?, priority?, cost?, payload?}.
    #[arg(long, value_name = "JSON|@FILE")]
    tasks: Option<String>,
    /// Tasks (or plan steps) running at once [default: 4, or the plan's
    /// globals.max_concurrency].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) max_concurrency: Option<u32>,
    /// Per-task timeout in seconds (a task's own `timeout_s` wins).
    #[arg(
        long,
        default_value_t = 300.0,
        value_name = "S",
        conflicts_with = "plan"
    )]
    timeout: f64,
    /// Retries of a failed task (a task's own `retries` wins).
    #[arg(long, default_value_t = 0, conflicts_with = "plan")]
    retries: u32,
    /// Seconds between retries (doubling each time, with equal jitter).
    #[arg(long, default_value_t = 0.1, value_name = "S", conflicts_with = "plan")]
    retry_delay: f64,
    /// What a failed task does to the others.
    #[arg(long, value_enum, default_value_t = CancellationArg::Isolated, conflicts_with = "plan")]
    cancellation: CancellationArg,
    /// Submission order.
    #[arg(long, value_enum, default_value_t = FairnessArg::RoundRobin, conflicts_with = "plan")]
    fairness: FairnessArg,
    /// A plan variable: `${K}` in the plan becomes V (repeatable).
    #[arg(long = "var", value_name = "K=V", conflicts_with = "tasks")]
    pub(crate) vars: Vec<String>,
    /// Where runs are kept [default: $HIVE_STATE_DIR, else the config's, else .hive].
    #[arg(long, value_name = "DIR", conflicts_with = "tasks")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Run steps with `cache` even when an earlier success matches (and store the new result).
    #[arg(long, conflicts_with = "tasks")]
    pub(crate) no_cache: bool,
    /// Config file with agent pools for tasks that name a `role`.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Append every event to this file as JSON Lines.
    #[arg(long, value_name = "FILE")]
    pub(crate) events: Option<PathBuf>,
    /// Print one JSON object (OrchestrationResult) on stdout instead of a summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress output.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Run the plan against `mock` agents only (the development plugin's seeded sandbox):
    /// nothing is executed for real and no run is recorded.
    #[arg(long, conflicts_with = "tasks")]
    pub(crate) dry_run: bool,
    /// Behave like the legacy plan command line (`python -m core.engine.orchestrator PLAN
    /// --var K=V`): `Run ID: <id>` alone on stdout (the summary goes to stderr), exit 0 once
    /// the run has ended whatever its state, 1 on bad input, 2 on a bad flag.
    #[arg(long, conflicts_with_all = ["tasks", "json", "dry_run"])]
    pub(crate) legacy: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CancellationArg {
    Cascading,
    Isolated,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FairnessArg {
    RoundRobin,
    ShortestFirst,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(i64),
}

/// One task of `--tasks`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    id: Option<IdValue>,
    command: Option<String>,
    args: Option<Vec<String>>,
    role: Option<String>,
    timeout_s: Option<f64>,
    retries: Option<u32>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    priority: Option<i32>,
    cost: Option<f64>,
    payload: Option<Value>,
    shell: Option<bool>,
}

fn read_tasks(arg: &str) -> Result<(String, String), Exit> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| (format!("--tasks @{path}"), t))
            .map_err(|e| Exit::bad_input(format!("--tasks @{path}: cannot read {path}: {e}"))),
        None => Ok(("--tasks".into(), arg.to_string())),
    }
}

fn positive_secs(what: &str, v: f64) -> Result<Duration, Exit> {
    if v.is_finite() && v > 0.0 {
        Duration::try_from_secs_f64(v).map_err(|e| Exit::bad_input(format!("{what}: {e}")))
    } else {
        Err(Exit::bad_input(format!(
            "{what}: expected a positive number of seconds, found {v}"
        )))
    }
}

/// Parses and checks the task list; every error names the task and the field.
fn parse_tasks(args: &RunArgs) -> Result<Vec<(String, TaskLine)>, Exit> {
    let (source, text) = read_tasks(args.tasks.as_deref().unwrap_or_default())?;
    let lines: Vec<TaskLine> = serde_json::from_str(&text).map_err(|e| {
        Exit::bad_input(format!(
            "{source}: invalid task list: {e} (expected a JSON array of {{\"command\": ..., \"args\": [...]}} objects)"
        ))
    })?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(lines.len());
    for (i, t) in lines.into_iter().enumerate() {
        let id = match &t.id {
            Some(IdValue::Text(s)) => s.clone(),
            Some(IdValue::Number(n)) => n.to_string(),
            None => format!("task-{}", i + 1),
        };
        let at = format!("{source}: task {i} (id {id})");
        if !seen.insert(id.clone()) {
            return Err(Exit::bad_input(format!("{at}: duplicate id `{id}`")));
        }
        if t.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(Exit::bad_input(format!("{at}: `command` is empty")));
        }
        if t.command.is_none() && t.role.is_none() {
            return Err(Exit::bad_input(format!(
                "{at}: needs a `command` (or a `role` whose agents take the `payload`)"
            )));
        }
        if t.command.is_none() && t.args.is_some() {
            return Err(Exit::bad_input(format!("{at}: `args` without `command`")));
        }
        if let Some(s) = t.timeout_s {
            positive_secs(&format!("{at}: `timeout_s`"), s)?;
        }
        if t.cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
            return Err(Exit::bad_input(format!(
                "{at}: `cost` must be a non-negative number"
            )));
        }
        out.push((id, t));
    }
    Ok(out)
}

fn payload_of(t: &TaskLine) -> Value {
    if let Some(p) = &t.payload {
        if t.command.is_none() {
            return p.clone();
        }
    }
    let mut m = serde_json::Map::new();
    if let Some(c) = &t.command {
        m.insert("command".into(), json!(c));
    }
    if let Some(a) = &t.args {
        m.insert("args".into(), json!(a));
    }
    if let Some(e) = &t.env {
        m.insert("env".into(), json!(e));
    }
    if let Some(c) = &t.cwd {
        m.insert("cwd".into(), json!(c));
    }
    if let Some(s) = t.shell {
        m.insert("shell".into(), json!(s));
    }
    if let Some(p) = &t.payload {
        m.insert("payload".into(), p.clone());
    }
    Value::Object(m)
}

pub(crate) async fn run(args: RunArgs) -> Result<u8, Exit> {
    match (&args.plan, &args.tasks) {
        (Some(_), None) if args.legacy => {
            // The legacy CLI raised an exception (exit 1) for anything but a bad flag.
            return match crate::plan_cmd::run(args).await {
                Ok(130) => Ok(130),
                Ok(_) => Ok(0),
                Err(e) => Err(Exit { code: 1, ..e }),
            };
        }
        (Some(_), None) => return crate::plan_cmd::run(args).await,
        (None, Some(_)) => {}
        (Some(_), Some(_)) | (None, None) => {
            return Err(Exit::bad_input(
                "hive run needs exactly one of PLAN (a plan file) or --tasks JSON|@FILE",
            ))
        }
    }
    let timeout = positive_secs("--timeout", args.timeout)?;
    if !(args.retry_delay.is_finite() && args.retry_delay >= 0.0) {
        return Err(Exit::bad_input(format!(
            "--retry-delay: expected a non-negative number of seconds, found {}",
            args.retry_delay
        )));
    }
    let tasks = parse_tasks(&args)?;
    let config = match &args.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    let pool_roles = config.as_ref().map(|c| c.pool_roles()).unwrap_or_default();
    let wanted: HashSet<&str> = tasks
        .iter()
        .filter_map(|(_, t)| t.role.as_deref())
        .collect();
    for (id, t) in &tasks {
        if let Some(r) = &t.role {
            if r != LOCAL_ROLE && !pool_roles.iter().any(|p| p == r) {
                return Err(Exit::bad_input(match &args.config {
                    Some(c) => format!("task {id}: role `{r}` has no pool in {}", c.display()),
                    None => format!("task {id}: role `{r}` needs a pool: pass --config with a [[pools]] entry for it"),
                }));
            }
        }
    }

    let kernel = crate::setup::build_kernel(config.as_ref(), |b| {
        b.default_timeout(timeout);
    })?;
    let pools = config
        .as_ref()
        .map(|c| c.pools(&kernel))
        .unwrap_or_default();
    let sink = match &args.events {
        Some(p) => Some(
            kernel
                .jsonl_sink(p)
                .await
                .map_err(|e| Exit::bad_input(format!("--events {}: {e}", p.display())))?,
        ),
        None => None,
    };

    // Agents: a local process agent for plain commands, and the pools the tasks name.
    let needs_local = tasks
        .iter()
        .any(|(_, t)| t.role.as_deref().unwrap_or(LOCAL_ROLE) == LOCAL_ROLE);
    if needs_local {
        kernel
            .spawn_agent(
                AgentSpec::new(LOCAL_ROLE, hive_kernel::local_driver(config.as_ref()))
                    .with_capacity(args.max_concurrency.unwrap_or(4)),
            )
            .await
            .map_err(|e| Exit::failed(e.to_string()))?;
    }
    let failures =
        crate::setup::spawn_pools(&kernel, pools.iter().filter(|p| wanted.contains(&*p.role)))
            .await?;
    if let Some(first) = failures.first() {
        kernel.shutdown(ShutdownMode::Now).await;
        return Err(Exit::failed(first.clone()));
    }

    let specs: Vec<TaskSpec> = tasks
        .iter()
        .map(|(id, t)| {
            let retries = t.retries.unwrap_or(args.retries);
            let mut spec =
                TaskSpec::for_role(t.role.as_deref().unwrap_or(LOCAL_ROLE), payload_of(t))
                    .with_name(id)
                    .with_priority(t.priority.unwrap_or(0))
                    .with_retry(
                        RetryPolicy::exponential(
                            retries,
                            Duration::from_secs_f64(args.retry_delay),
                            2.0,
                            Duration::from_secs(60),
                        )
                        .with_jitter(hive_kernel::Jitter::Equal),
                    );
            if let Some(s) = t.timeout_s {
                spec = spec.with_timeout(Duration::from_secs_f64(s));
            }
            if let Some(c) = t.cost {
                spec = spec.with_cost(c);
            }
            spec
        })
        .collect();
    let cost_estimate: f64 = tasks
        .iter()
        .filter_map(|(_, t)| t.cost)
        .fold(0.0, |a, c| a + c);
    let opts = BatchOptions::new(args.max_concurrency.unwrap_or(4) as usize)
        .cancellation(match args.cancellation {
            CancellationArg::Cascading => Cancellation::Cascading,
            CancellationArg::Isolated => Cancellation::Isolated,
        })
        .fairness(match args.fairness {
            FairnessArg::RoundRobin => Fairness::RoundRobin,
            FairnessArg::ShortestFirst => Fairness::ShortestFirst,
        });

    let mode = progress::Mode::pick(args.quiet, args.json);
    let follower = tokio::spawn(progress::follow(kernel.subscribe(), specs.len(), mode));
    let k2 = kernel.clone();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let int2 = interrupted.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            int2.store(true, std::sync::atomic::Ordering::Release);
            eprintln!("hive: interrupted: cancelling the run");
            k2.shutdown(ShutdownMode::Now).await;
        }
    });
    let result = kernel.run_batch(specs, opts).await;
    ctrl_c.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), follower).await;
    kernel.shutdown(ShutdownMode::Graceful).await;
    if let Some(s) = sink {
        let _ = s.finish().await;
    }

    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&orchestration_result(&result, cost_estimate))
                .unwrap_or_default()
        );
    } else {
        print_summary(&result);
    }
    if interrupted.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(130);
    }
    Ok(if result.all_succeeded() { 0 } else { 1 })
}

fn ts(t: Option<Timestamp>) -> Value {
    t.map(|t| json!(t.to_string())).unwrap_or(Value::Null)
}

/// The seed's OrchestrationResult shape.
fn orchestration_result(r: &BatchResult, cost_estimate: f64) -> Value {
    let tasks: Vec<Value> = r
        .results
        .iter()
        .map(|t| {
            let errors: Vec<Value> = t
                .attempts
                .iter()
                .filter_map(|a| a.error.clone().map(Value::String))
                .chain(match &t.outcome {
                    Outcome::Failed(e) if t.attempts.is_empty() => Some(json!(e.message)),
                    _ => None,
                })
                .collect();
            let mut o = json!({
                "id": t.name.as_deref().unwrap_or_default(),
                "status": t.status().as_str(),
                "started_at": ts(t.started_at),
                "finished_at": ts(Some(t.finished_at)),
                "attempts": t.attempts.len(),
                "exit_code": t.exit_code(),
                "errors": errors,
                "agent": t.attempts.last().map(|a| a.agent.get()),
                "duration_s": t.run_time().as_secs_f64(),
                "artifacts": t.artifacts(),
            });
            if let Outcome::Succeeded(v) = &t.outcome {
                if let Some(obj) = o.as_object_mut() {
                    obj.insert("output".into(), v.clone());
                }
            }
            o
        })
        .collect();
    json!({
        "tasks": tasks,
        "metrics": {
            "wall_time": r.wall.as_secs_f64(),
            "speedup_vs_serial": r.speedup_vs_serial(),
            "cost_estimate": cost_estimate,
        }
    })
}

fn print_summary(r: &BatchResult) {
    let count = |s: Status| r.results.iter().filter(|t| t.status() == s).count();
    let serial: f64 = r
        .results
        .iter()
        .map(|t| t.run_time().as_secs_f64())
        .fold(0.0, |a, b| a + b);
    for t in r.results.iter().filter(|t| !t.outcome.is_success()) {
        let why = match &t.outcome {
            Outcome::Failed(e) => e.message.clone(),
            _ => t
                .attempts
                .last()
                .and_then(|a| a.error.clone())
                .unwrap_or_default(),
        };
        say!(
            "{} {} after {} attempt(s): {}",
            t.name.as_deref().unwrap_or_default(),
            t.status(),
            t.attempts.len(),
            why
        );
    }
    say!(
        "{} tasks: {} succeeded, {} failed, {} timed out, {} cancelled",
        r.results.len(),
        count(Status::Succeeded),
        count(Status::Failed),
        count(Status::TimedOut),
        count(Status::Cancelled)
    );
    say!(
        "wall time {:.3}s, serial time {:.3}s, speedup {:.2}x",
        r.wall.as_secs_f64(),
        serial,
        r.speedup_vs_serial()
    );
}
