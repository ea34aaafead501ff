//! The `hive` command: run task lists (`hive run --tasks`), serve agent pools (`hive agents`),
//! report health (`hive health`). Exit 0 on success, 1 when a task or agent failed, 2 on bad
//! input.

/// mimalloc: far less contention than glibc malloc across worker threads (see
/// BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that tolerates a closed stdout (see [`say`]).
macro_rules! say {
    ($($t:tt)*) => { $crate::say(format!($($t)*)) };
}

mod agents_cmd;
mod plan_cmd;
mod plan_progress;
mod plugins_cmd;
mod progress;
mod setup;
mod tasks_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// An error that ends the command with an exit code.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Exit {
    /// Bad input: exit 2.
    pub(crate) fn bad_input(message: impl Into<String>) -> Self {
        Exit {
            code: 2,
            message: message.into(),
        }
    }

    /// A failure at run time: exit 1.
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Exit {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<hive_kernel::ConfigError> for Exit {
    fn from(e: hive_kernel::ConfigError) -> Self {
        Exit::bad_input(e.to_string())
    }
}

impl From<hive_kernel::BuildError> for Exit {
    fn from(e: hive_kernel::BuildError) -> Self {
        Exit::bad_input(e.to_string())
    }
}

#[derive(Parser, Debug)]
#[command(name = "hive", version, about = "Hive: a plugin-kernel orchestrator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a plan (`hive run PLAN`, durable, resumable) or a list of tasks (`--tasks`, the
    /// legacy `python -m tools.orchestrator run` command line).
    Run(tasks_cmd::RunArgs),
    /// Check a plan file without running it (exit 0 if valid, 2 otherwise).
    Validate(plan_cmd::ValidateArgs),
    /// Print the JSON Schema of plan files (`hive schema plan`), for editors.
    Schema(plan_cmd::SchemaArgs),
    /// List the runs of a state directory.
    Runs(plan_cmd::RunsArgs),
    /// Show a run: its state and every step.
    Show(plan_cmd::ShowArgs),
    /// Print a run's events as JSON Lines (`--follow` to wait for more).
    Events(plan_cmd::EventsArgs),
    /// Finish a run that was interrupted (killed, crashed, Ctrl-C) or failed.
    Resume(plan_cmd::ResumeArgs),
    /// List the plugins of a config, or inspect a plugin library.
    Plugins(plugins_cmd::PluginsArgs),
    /// Start the agent pools of a config file and serve them until Ctrl-C (drains gracefully).
    Agents(agents_cmd::AgentsArgs),
    /// Health of the `hive agents` serving a config, or a readiness check of its pools.
    Health(agents_cmd::HealthArgs),
}

/// Prints a line on stdout; a closed stdout (`hive ... | head`) is not an error.
pub(crate) fn say(line: impl AsRef<str>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
}

/// Where state lives: the flag, else $HIVE_STATE_DIR, else the config's, else `.hive`.
pub(crate) fn state_dir(flag: Option<PathBuf>, config: Option<&hive_kernel::Config>) -> PathBuf {
    flag.or_else(|| std::env::var_os("HIVE_STATE_DIR").map(PathBuf::from))
        .or_else(|| config.and_then(|c| c.state_dir()))
        .unwrap_or_else(|| PathBuf::from(".hive"))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HIVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() -> ! {
    let cli = Cli::parse();
    init_tracing();
    if matches!(cli.cmd, Cmd::Run(_) | Cmd::Resume(_) | Cmd::Agents(_)) {
        // Commands will run: fork the orphan guard while this process is small and has one
        // thread (it sets itself up on the other core while the plan is read).
        hive_kernel::start_orphan_guard();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hive")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hive: error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    // The command runs as a task of the runtime, not on the thread that blocks on it: a
    // plan's executor then wakes on the worker that reaped a step's process, instead of
    // crossing to the main thread and back for every step (about 100 us a step; see
    // BENCHMARKS.md).
    let command = async move {
        match cli.cmd {
            Cmd::Run(a) => tasks_cmd::run(a).await,
            Cmd::Validate(a) => plan_cmd::validate(a),
            Cmd::Schema(a) => plan_cmd::schema(a),
            Cmd::Runs(a) => plan_cmd::runs(a),
            Cmd::Show(a) => plan_cmd::show(a),
            Cmd::Events(a) => plan_cmd::events(a).await,
            Cmd::Resume(a) => plan_cmd::resume(a).await,
            Cmd::Plugins(a) => plugins_cmd::plugins(a).await,
            Cmd::Agents(a) => agents_cmd::agents(a).await,
            Cmd::Health(a) => agents_cmd::health(a).await,
        }
    };
    let result = rt.block_on(async {
        match tokio::spawn(command).await {
            Ok(r) => r,
            Err(e) => Err(Exit::failed(format!(
                "internal error: the command task failed: {e}"
            ))),
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hive: error: {}", e.message);
            e.code
        }
    };
    // The command has shut down what it started (agents, the state writer, sinks). Tearing
    // the runtime down as well would only wait for idle worker threads to wake up and leave:
    // exit now (std flushes stdout on the way).
    std::mem::forget(rt);
    std::process::exit(i32::from(code))
}
