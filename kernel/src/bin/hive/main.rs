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
mod progress;
mod tasks_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Run a list of tasks (the legacy `python -m tools.orchestrator run` command line).
    Run(tasks_cmd::RunArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hive")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hive: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => tasks_cmd::run(a).await,
            Cmd::Agents(a) => agents_cmd::agents(a).await,
            Cmd::Health(a) => agents_cmd::health(a).await,
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hive: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
