//! Plans on the command line: `hive run PLAN`, `hive resume RUN`, `hive validate PLAN`,
//! `hive schema plan`, the state readers `hive runs`, `hive show RUN`, `hive events RUN`, and
//! `hive gc` (retention).
//! Every run is durable in the state directory; `hive run` prints `run RUN_ID` first on
//! stderr so that a killed run can be resumed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hive_kernel::{
    AgentSpec, CacheMode, Config, GcOptions, GcReport, Plan, PlanError, PlanRun, PluginSpec,
    RunError, RunOptions, RunRecord, RunReport, RunState, ShutdownMode, StateError, StateStore,
    StepState, Timestamp, LOCAL_ROLE,
};
use serde_json::{json, Value};

use crate::tasks_cmd::RunArgs;
use crate::{progress, Exit};

#[derive(Args, Debug)]
pub(crate) struct ValidateArgs {
    /// The plan file (.json, .yaml, .yml or .toml).
    plan: PathBuf,
    /// A plan variable (repeatable).
    #[arg(long = "var", value_name = "K=V")]
    vars: Vec<String>,
    /// Also check that every `role` has a pool in this config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SchemaKind {
    /// Plan files.
    Plan,
}

#[derive(Args, Debug)]
pub(crate) struct SchemaArgs {
    /// Which schema.
    #[arg(value_enum)]
    kind: SchemaKind,
}

#[derive(Args, Debug)]
pub(crate) struct StateArgs {
    /// The state directory [default: $HIVE_STATE_DIR, else .hive].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// A run's states as shown (`hive runs --state`, `GET /runs?state=`).
pub(crate) const RUN_STATES: [&str; 6] = [
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
];

#[derive(Args, Debug)]
pub(crate) struct RunsArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Only the runs in this state (`interrupted`: pending or running, but no process
    /// executes it).
    #[arg(long = "state", value_name = "STATE", value_parser = clap::builder::PossibleValuesParser::new(RUN_STATES))]
    only: Option<String>,
    /// Only the N most recently created runs (after --state).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// One JSON array on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["older_than", "keep"])))]
pub(crate) struct GcArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Remove runs that ended (or, never ended, were created) longer ago than this: `30d`,
    /// `12h`, `2w`, `90min`.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Never remove the N most recently created runs (alone: remove all but those).
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Afterwards, rewrite the database so that the file shrinks (SQLite VACUUM).
    #[arg(long)]
    vacuum: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    /// The run id (see `hive runs`).
    run: String,
    #[command(flatten)]
    state: StateArgs,
    /// One JSON object on stdout: the run, its steps and attempts.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct EventsArgs {
    /// The run id.
    run: String,
    #[command(flatten)]
    state: StateArgs,
    /// Keep printing new events until the run ends.
    #[arg(long, short)]
    follow: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ResumeArgs {
    /// The run id (printed as `run RUN_ID` by `hive run`).
    run: String,
    #[command(flatten)]
    state: StateArgs,
    /// Resume even though the plan file changed since the run started.
    #[arg(long)]
    force: bool,
    /// Steps running at once [default: as the run started].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_concurrency: Option<u32>,
    /// Print one JSON object on stdout instead of a summary.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

impl From<StateError> for Exit {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Corrupt { .. } | StateError::NoSuchRun(_) => Exit::bad_input(e.to_string()),
            _ => Exit::failed(e.to_string()),
        }
    }
}

impl From<RunError> for Exit {
    fn from(e: RunError) -> Self {
        match e {
            RunError::State(s) => s.into(),
            RunError::PlanChanged { .. } | RunError::BadRunId(_) => Exit::bad_input(e.to_string()),
            other => Exit::failed(other.to_string()),
        }
    }
}

/// A plan error: every problem on its own `hive: error:` line.
fn plan_exit(e: PlanError) -> Exit {
    Exit::bad_input(e.to_string().replace('\n', "\nhive: error: "))
}

fn parse_vars(raw: &[String]) -> Result<BTreeMap<String, String>, Exit> {
    let mut out = BTreeMap::new();
    for kv in raw {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Exit::bad_input(format!(
                "--var {kv}: expected K=V (a name, `=`, a value)"
            )));
        };
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Exit::bad_input(format!(
                "--var {kv}: `{k}` is not a variable name (letters, digits and `_`)"
            )));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Checks that every role the plan names has a pool (or is the local one).
fn check_roles(
    plan: &Plan,
    config: Option<&Config>,
    config_path: Option<&Path>,
) -> Result<(), Exit> {
    let pools: Vec<String> = config.map(|c| c.pool_roles()).unwrap_or_default();
    for role in plan.roles() {
        if role != LOCAL_ROLE && !pools.iter().any(|p| p == role) {
            return Err(Exit::bad_input(match config_path {
                Some(c) => format!(
                    "{}: role `{role}` has no pool in {}",
                    plan.path().display(),
                    c.display()
                ),
                None => format!(
                    "{}: role `{role}` needs a pool: pass --config with a [[pools]] entry for it",
                    plan.path().display()
                ),
            }));
        }
    }
    Ok(())
}

pub(crate) fn validate(args: ValidateArgs) -> Result<u8, Exit> {
    let vars = parse_vars(&args.vars)?;
    let plan = Plan::load(&args.plan, &vars).map_err(plan_exit)?;
    if let Some(c) = &args.config {
        let config = Config::load(c)?;
        check_roles(&plan, Some(&config), Some(c))?;
    }
    say!(
        "{}: ok: plan {} version {}, {} steps",
        args.plan.display(),
        plan.id(),
        plan.version(),
        plan.len()
    );
    Ok(0)
}

pub(crate) fn schema(args: SchemaArgs) -> Result<u8, Exit> {
    match args.kind {
        SchemaKind::Plan => say!(
            "{}",
            serde_json::to_string_pretty(&Plan::json_schema()).unwrap_or_default()
        ),
    }
    Ok(0)
}

fn open_store(flag: Option<PathBuf>) -> Result<(PathBuf, Option<StateStore>), Exit> {
    let dir = crate::state_dir(flag, None);
    let store = StateStore::open_existing(&dir)?;
    Ok((dir, store))
}

fn need_store(flag: Option<PathBuf>, run: &str) -> Result<StateStore, Exit> {
    let (dir, store) = open_store(flag)?;
    store.ok_or_else(|| {
        Exit::bad_input(format!(
            "no run `{run}`: {} has no state (pass --state-dir, or set HIVE_STATE_DIR)",
            dir.display()
        ))
    })
}

fn ts(t: Option<Timestamp>) -> Value {
    t.map(|t| json!(t.to_string())).unwrap_or(Value::Null)
}

fn short_ts(t: Option<Timestamp>) -> String {
    t.map(|t| {
        let s = t.to_string();
        // 2026-11-21T19:06:50.123456Z -> 2026-11-21 19:06:50
        s.get(..19).unwrap_or(&s).replace('T', " ")
    })
    .unwrap_or_else(|| "-".into())
}

pub(crate) fn runs(args: RunsArgs) -> Result<u8, Exit> {
    let (_, store) = open_store(args.state.state_dir)?;
    let runs = match &store {
        Some(s) => select_runs(s.runs()?, args.only.as_deref(), args.last),
        None => Vec::new(),
    };
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&runs_json(&runs)).unwrap_or_default()
        );
        return Ok(0);
    }
    if runs.is_empty() {
        say!("no runs");
        return Ok(0);
    }
    let wid = runs
        .iter()
        .map(|r| r.run_id.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let wplan = runs
        .iter()
        .map(|r| r.plan_id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    say!(
        "{:<wid$}  {:<wplan$}  {:<11}  {:<19}  {:<19}",
        "ID",
        "PLAN",
        "STATE",
        "STARTED",
        "FINISHED"
    );
    for r in &runs {
        say!(
            "{:<wid$}  {:<wplan$}  {:<11}  {:<19}  {:<19}",
            r.run_id,
            r.plan_id,
            r.shown_state(),
            short_ts(r.started_at),
            short_ts(r.finished_at)
        );
    }
    Ok(0)
}

/// The runs in state `only` (as shown: `interrupted` included), then the newest `last`.
pub(crate) fn select_runs(
    mut runs: Vec<RunRecord>,
    only: Option<&str>,
    last: Option<usize>,
) -> Vec<RunRecord> {
    if let Some(only) = only {
        runs.retain(|r| r.shown_state() == only);
    }
    if let Some(n) = last {
        runs.drain(..runs.len().saturating_sub(n));
    }
    runs
}

/// `hive runs --json` (and `GET /runs` of `hive serve`).
pub(crate) fn runs_json(runs: &[RunRecord]) -> Value {
    runs.iter()
        .map(|r| {
            json!({
                "id": r.run_id,
                "plan": r.plan_id,
                "plan_path": r.plan_path,
                "state": r.shown_state(),
                "created_at": r.created_at.to_string(),
                "started_at": ts(r.started_at),
                "finished_at": ts(r.finished_at),
                "resumes": r.resumes,
            })
        })
        .collect()
}

/// Run `id`, after bringing in the events an interrupted run has in its JSONL file only (the
/// readers `show` and `events`, the CLI's and HTTP's). An unknown id is `NoSuchRun`, checked
/// before anything is written.
pub(crate) fn up_to_date(store: &StateStore, id: &str) -> Result<RunRecord, StateError> {
    store.run(id)?;
    store.recover(id)?;
    store.run(id)
}

/// `hive show RUN --json` (and `GET /runs/RUN` of `hive serve`): the run, its steps and
/// attempts, after bringing an interrupted run's last events in from its JSONL file.
pub(crate) fn show_json(store: &StateStore, id: &str) -> Result<Value, StateError> {
    let run = up_to_date(store, id)?;
    let steps = store.steps(id)?;
    let attempts = store.attempts(id)?;
    let mut r = serde_json::to_value(&run).unwrap_or(Value::Null);
    if let Some(o) = r.as_object_mut() {
        o.insert("state".into(), json!(run.shown_state()));
    }
    Ok(json!({"run": r, "steps": steps, "attempts": attempts}))
}

/// `hive gc`: removes old runs (rows and files) from a state directory.
pub(crate) fn gc(args: GcArgs) -> Result<u8, Exit> {
    let (dir, store) = open_store(args.state.state_dir)?;
    let Some(store) = store else {
        if args.json {
            let mut empty = GcReport::default();
            empty.dry_run = args.dry_run;
            say!(
                "{}",
                serde_json::to_string_pretty(&empty).unwrap_or_default()
            );
        } else {
            say!("nothing to remove: {} has no state", dir.display());
        }
        return Ok(0);
    };
    let mut opts = GcOptions::new();
    if let Some(age) = args.older_than {
        opts.older_than(age);
    }
    if let Some(n) = args.keep {
        opts.keep(n);
    }
    opts.dry_run(args.dry_run).vacuum(args.vacuum);
    let report = store.gc(&opts)?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(if report.vacuum_error.is_some() { 1 } else { 0 });
    }
    let n = report.removed.len();
    let runs = |n: usize| if n == 1 { "run" } else { "runs" };
    if report.dry_run {
        say!("would remove {n} {} of {}:", runs(n), n + report.kept);
        for r in &report.removed {
            say!(
                "  {}  {}  {}  {}",
                r.run_id,
                if r.plan_id.is_empty() {
                    "-"
                } else {
                    &r.plan_id
                },
                r.state,
                short_ts(r.finished_at)
            );
        }
    } else {
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &report.removed {
            *states.entry(r.state.as_str()).or_default() += 1;
        }
        let by_state: Vec<String> = states.iter().map(|(s, k)| format!("{k} {s}")).collect();
        say!(
            "removed {n} {}{} and {} of their files; kept {} {}",
            runs(n),
            if by_state.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_state.join(", "))
            },
            human_bytes(report.file_bytes),
            report.kept,
            runs(report.kept)
        );
        say!(
            "database: {} -> {}{}",
            human_bytes(report.db_bytes_before),
            human_bytes(report.db_bytes_after),
            if report.vacuumed {
                " (vacuumed)"
            } else if n > 0 {
                " (freed pages are reused; --vacuum shrinks the file)"
            } else {
                ""
            }
        );
    }
    if !report.busy.is_empty() {
        say!("left alone, being executed now: {}", report.busy.join(", "));
    }
    match report.vacuum_error {
        Some(e) => Err(Exit::failed(format!(
            "the runs are removed, but the database was not vacuumed: {e}"
        ))),
        None => Ok(0),
    }
}

fn human_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f < K {
        format!("{b} B")
    } else if f < K * K {
        format!("{:.1} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MiB", f / (K * K))
    } else {
        format!("{:.2} GiB", f / (K * K * K))
    }
}

pub(crate) fn show(args: ShowArgs) -> Result<u8, Exit> {
    let store = need_store(args.state.state_dir, &args.run)?;
    if args.json {
        let v = show_json(&store, &args.run)?;
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    let run = up_to_date(&store, &args.run)?;
    let steps = store.steps(&args.run)?;
    say!("run       {}", run.run_id);
    say!(
        "plan      {} (version {}) {}",
        run.plan_id,
        run.plan_version,
        run.plan_path.display()
    );
    say!("state     {}", run.shown_state());
    say!("started   {}", short_ts(run.started_at));
    say!("finished  {}", short_ts(run.finished_at));
    if run.resumes > 0 {
        say!("resumed   {} time(s)", run.resumes);
    }
    if !run.vars.is_empty() {
        let v: Vec<String> = run.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        say!("vars      {}", v.join(" "));
    }
    say!("");
    let wid = steps
        .iter()
        .map(|s| s.step_id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    say!(
        "{:<wid$}  {:<9}  {:>8}  {:>9}  {:>4}  ERROR",
        "STEP",
        "STATE",
        "ATTEMPTS",
        "DURATION",
        "EXIT"
    );
    for s in &steps {
        let dur = match (s.started_at, s.finished_at) {
            (Some(a), Some(b)) if s.state != StepState::Cached => {
                format!("{:.3}s", b.since(a).as_secs_f64())
            }
            _ => "-".into(),
        };
        say!(
            "{:<wid$}  {:<9}  {:>8}  {:>9}  {:>4}  {}",
            s.step_id,
            s.state.as_str(),
            s.attempts,
            dur,
            s.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            s.error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("")
        );
    }
    if run.interrupted {
        say!("");
        say!("interrupted: `hive resume {}` finishes it", run.run_id);
    }
    Ok(0)
}

pub(crate) async fn events(args: EventsArgs) -> Result<u8, Exit> {
    let store = need_store(args.state.state_dir, &args.run)?;
    up_to_date(&store, &args.run)?;
    let mut last = 0u64;
    loop {
        let evs = store.events_after(&args.run, last)?;
        let mut finished = false;
        for (seq, data) in evs {
            last = seq;
            finished = data.contains("\"type\":\"run_finished\"");
            say!("{data}");
        }
        if !args.follow {
            return Ok(0);
        }
        if finished && !store.is_running_now(&args.run) {
            return Ok(0);
        }
        if !store.is_running_now(&args.run) && store.events_after(&args.run, last)?.is_empty() {
            // Nobody executes it (interrupted, or finished): nothing more will come.
            let run = store.run(&args.run)?;
            if run.state != RunState::Pending {
                return Ok(0);
            }
        }
        // `--follow` reads the database another process writes: a short sleep between reads,
        // like `tail -f` (dispatch itself never polls).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a config loads the development plugin (by name, or a library named after it).
fn has_development(c: &Config) -> bool {
    c.plugins.iter().any(|p| {
        p.name
            .as_ref()
            .is_some_and(|n| n.get_ref() == "development")
            || p.path
                .as_ref()
                .is_some_and(|p| p.to_string_lossy().contains("development"))
    })
}

/// What `hive run PLAN` and `hive resume` share.
struct Launch {
    plan: Arc<Plan>,
    config: Option<(PathBuf, Config)>,
    max_concurrency: u32,
    /// None: a dry run (nothing recorded).
    store: Option<StateStore>,
    /// Every agent is a `mock` agent of the development plugin.
    dry_run: bool,
    json: bool,
    quiet: bool,
    events: Option<PathBuf>,
    opts: RunOptions,
    resume: Option<(String, bool)>,
    /// `--legacy`: the summary on stderr, then `Run ID: <id>` alone on stdout.
    legacy: bool,
}

pub(crate) async fn run(args: RunArgs) -> Result<u8, Exit> {
    let path = args.plan.clone().unwrap_or_default();
    let vars = parse_vars(&args.vars)?;
    let config = args.config.as_ref().map(|p| {
        Config::load(p).map(|c| (std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()), c))
    });
    // An existing state database opens (and recovers its WAL) on another thread while the
    // plan is read and checked. A new one is created only once the plan proved valid.
    let dir = match &config {
        Some(Err(_)) => None,
        Some(Ok((_, c))) => Some(crate::state_dir(args.state_dir.clone(), Some(c))),
        None => Some(crate::state_dir(args.state_dir.clone(), None)),
    }
    .filter(|_| !args.dry_run);
    let early = dir
        .as_ref()
        .filter(|d| d.join("state.db").is_file())
        .map(|d| {
            let d = d.clone();
            tokio::task::spawn_blocking(move || StateStore::open(&d))
        });
    let plan = Plan::load(&path, &vars).map_err(plan_exit)?;
    let config = config.transpose()?;
    check_roles(&plan, config.as_ref().map(|c| &c.1), args.config.as_deref())?;
    let max = args.max_concurrency.or(plan.max_concurrency()).unwrap_or(4);
    let store = match (early, &dir) {
        (Some(h), _) => Some(
            h.await
                .map_err(|e| Exit::failed(format!("opening the state database: {e}")))??,
        ),
        (None, Some(d)) => Some(StateStore::open(d)?),
        (None, None) => None,
    };
    let mut opts = RunOptions::new();
    opts.vars = vars;
    opts.cache = if args.no_cache {
        CacheMode::Refresh
    } else {
        CacheMode::Use
    };
    opts.extra = json!({
        "config": config.as_ref().map(|c| c.0.display().to_string()),
        "max_concurrency_flag": args.max_concurrency,
    });
    launch(Launch {
        plan: Arc::new(plan),
        config,
        max_concurrency: max,
        store,
        dry_run: args.dry_run,
        json: args.json,
        quiet: args.quiet,
        events: args.events,
        opts,
        resume: None,
        legacy: args.legacy,
    })
    .await
}

pub(crate) async fn resume(args: ResumeArgs) -> Result<u8, Exit> {
    let store = need_store(args.state.state_dir, &args.run)?;
    let record = store.run(&args.run)?;
    if record.state == RunState::Succeeded {
        eprintln!(
            "hive: run {} already succeeded: nothing to resume",
            args.run
        );
        return Ok(0);
    }
    if store.is_running_now(&args.run) {
        return Err(StateError::RunBusy {
            run: args.run.clone(),
            pid: None,
        }
        .into());
    }
    let plan = Plan::load(&record.plan_path, &record.vars).map_err(plan_exit)?;
    let o = &record.options;
    let config_path = o["extra"]["config"].as_str().map(PathBuf::from);
    let config = match &config_path {
        Some(p) => Some((p.clone(), Config::load(p)?)),
        None => None,
    };
    check_roles(&plan, config.as_ref().map(|c| &c.1), config_path.as_deref())?;
    let max = args
        .max_concurrency
        .or(record.max_concurrency())
        .or(plan.max_concurrency())
        .unwrap_or(4);
    let opts = RunOptions::of_run(&record);
    launch(Launch {
        plan: Arc::new(plan),
        config,
        max_concurrency: max,
        store: Some(store),
        dry_run: false,
        json: args.json,
        quiet: args.quiet,
        events: None,
        opts,
        resume: Some((args.run, args.force)),
        legacy: false,
    })
    .await
}

async fn launch(l: Launch) -> Result<u8, Exit> {
    let Launch {
        plan,
        config,
        max_concurrency,
        store,
        dry_run,
        json,
        quiet,
        events,
        mut opts,
        resume,
        legacy,
    } = l;
    let cfg = config.as_ref().map(|c| &c.1);
    let extra = if dry_run && !cfg.is_some_and(has_development) {
        vec![PluginSpec::named("development")]
    } else {
        Vec::new()
    };
    let kernel = crate::setup::build_kernel_with(cfg, extra, |b| {
        if let Some(t) = plan.default_timeout() {
            b.default_timeout(t);
        }
    })?;
    let mock = if dry_run {
        if !kernel.plugin_drivers().iter().any(|d| d == "mock") {
            kernel.shutdown(ShutdownMode::Now).await;
            return Err(Exit::bad_input(
                "--dry-run needs the development plugin's `mock` driver, and the loaded development plugin has it disabled (mock.enabled = false)",
            ));
        }
        eprintln!("hive: dry run: every step runs on a mock agent of the development plugin; nothing is executed, no run is recorded");
        Some(kernel.plugin_driver("mock"))
    } else {
        None
    };
    let sink = match &events {
        Some(p) => Some(
            kernel
                .jsonl_sink(p)
                .await
                .map_err(|e| Exit::bad_input(format!("--events {}: {e}", p.display())))?,
        ),
        None => None,
    };
    // Agents: a local process agent for commands, and the pools the plan's roles name.
    let mut capacity: HashMap<String, usize> = HashMap::new();
    if plan.has_local_commands() || plan.roles().contains(&LOCAL_ROLE) {
        let driver = mock
            .clone()
            .unwrap_or_else(|| hive_kernel::local_driver(cfg));
        kernel
            .spawn_agent(AgentSpec::new(LOCAL_ROLE, driver).with_capacity(max_concurrency))
            .await
            .map_err(|e| Exit::failed(e.to_string()))?;
    }
    if let Some((_, c)) = &config {
        let roles = plan.roles();
        let mut pools = c.pools(&kernel);
        if let Some(m) = &mock {
            for p in &mut pools {
                p.spec.driver = m.clone();
            }
        }
        let wanted: Vec<_> = pools.iter().filter(|p| roles.contains(&&*p.role)).collect();
        let failures = crate::setup::spawn_pools(&kernel, wanted.iter().copied()).await?;
        if !failures.is_empty() {
            for f in &failures {
                eprintln!("hive: {f}");
            }
            kernel.shutdown(ShutdownMode::Now).await;
            return Err(Exit::failed(format!(
                "{} agent(s) did not start",
                failures.len()
            )));
        }
        for pool in wanted {
            capacity.insert(
                pool.role.to_string(),
                (pool.size as usize * pool.spec.capacity as usize).max(1),
            );
        }
    }
    opts.max_concurrency = max_concurrency as usize;
    opts.dry_run = dry_run;
    opts.role_capacity = capacity;
    let mode = progress::Mode::pick(quiet, json);
    let rx = (mode != progress::Mode::Quiet).then(|| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        opts.listener = Some(tx);
        rx
    });
    let cancel = opts.cancel.clone();

    let prepared = match &resume {
        None => PlanRun::start(&kernel, plan.clone(), store.as_ref(), opts).await,
        Some((id, force)) => match &store {
            Some(store) => PlanRun::resume(&kernel, plan.clone(), store, id, opts, *force).await,
            None => {
                kernel.shutdown(ShutdownMode::Now).await;
                return Err(Exit::bad_input("a dry run cannot resume a run"));
            }
        },
    };
    let run = match prepared {
        Ok(r) => r,
        Err(e) => {
            kernel.shutdown(ShutdownMode::Now).await;
            return Err(e.into());
        }
    };
    // One write, so that a reader never sees the line half-written (stderr is unbuffered).
    {
        use std::io::Write;
        let _ = std::io::stderr().write_all(format!("run {}\n", run.id()).as_bytes());
    }
    let follower = rx.map(|rx| tokio::spawn(crate::plan_progress::follow(rx, plan.len(), mode)));
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let int2 = interrupted.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            int2.store(true, std::sync::atomic::Ordering::Release);
            eprintln!("hive: interrupted: cancelling the run (resume it with `hive resume`)");
            cancel.cancel();
        }
    });
    let result = run.execute().await;
    ctrl_c.abort();
    if let Some(f) = follower {
        let _ = tokio::time::timeout(Duration::from_secs(2), f).await;
    }
    kernel.shutdown(ShutdownMode::Graceful).await;
    if let Some(s) = sink {
        let _ = s.finish().await;
    }
    let report = result?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json_result(&report)).unwrap_or_default()
        );
    } else if legacy {
        print_summary(&report, &|line| eprintln!("{line}"));
        say!("Run ID: {}", report.run_id);
    } else {
        print_summary(&report, &|line| crate::say(line));
    }
    let code = if interrupted.load(std::sync::atomic::Ordering::Acquire) {
        130
    } else if report.state == RunState::Succeeded {
        0
    } else {
        1
    };
    // `hive` exits right after this: the run's report and plan are left to the exit instead
    // of being freed one allocation at a time (tens of thousands for 1,000 steps).
    std::mem::forget(report);
    std::mem::forget(plan);
    Ok(code)
}

/// `--json`: the `--tasks` OrchestrationResult shape, with the run id and state.
fn json_result(r: &RunReport) -> Value {
    let tasks: Vec<Value> = r
        .steps
        .iter()
        .map(|s| {
            let mut o = json!({
                "id": &*s.id,
                "name": &*s.name,
                "status": s.state.as_str(),
                "started_at": ts(s.started_at),
                "finished_at": ts(s.finished_at),
                "attempts": s.attempts,
                "exit_code": s.exit_code,
                "errors": s.error.iter().collect::<Vec<_>>(),
                "duration_s": s.duration.as_secs_f64(),
                "critical": s.critical,
            });
            if let Some(obj) = o.as_object_mut() {
                if let Some(p) = &s.parent {
                    obj.insert("parent".into(), json!(&**p));
                }
                if let Some(out) = &s.outputs {
                    obj.insert("outputs".into(), out.clone());
                }
                if let Some(res) = &s.result {
                    obj.insert("output".into(), res.clone());
                }
                if s.restored {
                    obj.insert("restored".into(), json!(true));
                }
            }
            o
        })
        .collect();
    json!({
        "run_id": r.run_id,
        "state": r.state.as_str(),
        "resumed": r.resumed,
        "tasks": tasks,
        "metrics": {
            "wall_time": r.wall.as_secs_f64(),
            "speedup_vs_serial": r.speedup_vs_serial(),
            "cost_estimate": 0.0,
        }
    })
}

/// The failed steps, the counts and the run's line, each through `out`.
fn print_summary(r: &RunReport, out: &dyn Fn(String)) {
    for s in r.steps.iter().filter(|s| {
        matches!(
            s.state,
            StepState::Failed | StepState::TimedOut | StepState::Cancelled
        )
    }) {
        out(format!(
            "{} {} after {} attempt(s): {}",
            s.id,
            s.state,
            s.attempts,
            s.error.as_deref().unwrap_or("")
        ));
    }
    let serial: f64 = r
        .steps
        .iter()
        .filter(|s| !s.restored)
        .map(|s| s.duration.as_secs_f64())
        .sum();
    let kept = r.steps.iter().filter(|s| s.restored).count();
    let mut counts = format!(
        "{} steps: {} succeeded, {} failed, {} timed out, {} cancelled, {} skipped, {} cached",
        r.steps.len(),
        r.count(StepState::Succeeded),
        r.count(StepState::Failed),
        r.count(StepState::TimedOut),
        r.count(StepState::Cancelled),
        r.count(StepState::Skipped),
        r.count(StepState::Cached),
    );
    if kept > 0 {
        counts.push_str(&format!(" ({kept} kept from before the resume)"));
    }
    out(counts);
    out(format!(
        "run {} {}: wall time {:.3}s, serial time {:.3}s, speedup {:.2}x",
        r.run_id,
        r.state,
        r.wall.as_secs_f64(),
        serial,
        r.speedup_vs_serial()
    ));
}
