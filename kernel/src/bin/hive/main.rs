//! The `hive` command: run task lists (`hive run --tasks`), serve agent pools (`hive agents`),
//! report health (`hive health`). Exit 0 on success, 1 when a task or agent failed, 2 on bad
//! input.

/// mimalloc: far less contention than glibc malloc across worker threads (see
/// BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arena as it uses it, rather than all at once: where transparent huge
/// pages are `always` on, an eagerly committed arena turns every first touch into zeroing a
/// 2 MiB page, which cost `hive` 3 to 6 ms at every start (BENCHMARKS.md). Disabling THP
/// for the process instead (`MIMALLOC_ALLOW_THP=0`) would also disable it for every command
/// `hive` runs (the flag is inherited across exec). Set before the first allocation: this
/// runs from `.init_array`, ahead of the runtime's own initialisation; an explicit
/// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still wins.
///
/// The first arena is reserved at 64 MiB instead of 1 GiB: mimalloc initialises the arena's
/// bitmaps at start, and those of a 1 GiB arena are about 40 pages to fault in (0.1-0.2 ms
/// of every `hive` command). Bigger heaps get further arenas as they grow
/// (`MIMALLOC_ARENA_RESERVE` in the environment still wins).
#[used]
#[link_section = ".init_array.00099"]
static MIMALLOC_OPTIONS: extern "C" fn() = {
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_t`.
    const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
    /// `mi_option_arena_reserve` (in KiB).
    const ARENA_RESERVE: std::ffi::c_int = 23;
    extern "C" fn set_mimalloc_options() {
        // SAFETY: getenv reads the environment the loader set up (no allocation); setting a
        // mimalloc option is a store into its option table, valid before initialisation.
        unsafe {
            if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
                mi_option_set(ARENA_EAGER_COMMIT, 0);
            }
            if libc::getenv(c"MIMALLOC_ARENA_RESERVE".as_ptr()).is_null() {
                mi_option_set(ARENA_RESERVE, 64 * 1024);
            }
        }
    }
    set_mimalloc_options
};

/// `println!` that tolerates a closed stdout (see [`say`]).
macro_rules! say {
    ($($t:tt)*) => { $crate::say(format!($($t)*)) };
}

mod agents_cmd;
mod http;
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
    /// Remove old runs from a state directory (`--older-than 30d`, `--keep 100`).
    Gc(plan_cmd::GcArgs),
    /// Finish a run that was interrupted (killed, crashed, Ctrl-C) or failed.
    Resume(plan_cmd::ResumeArgs),
    /// List the plugins of a config, or inspect a plugin library.
    Plugins(plugins_cmd::PluginsArgs),
    /// Start the agent pools of a config file and serve them until Ctrl-C (drains gracefully).
    Agents(agents_cmd::AgentsArgs),
    /// `hive agents` with its health and the state directory's runs over HTTP (JSON).
    Serve(agents_cmd::ServeArgs),
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
    hive_kernel::state_dir(flag.as_deref(), config)
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
    if matches!(
        cli.cmd,
        Cmd::Run(_) | Cmd::Resume(_) | Cmd::Agents(_) | Cmd::Serve(_)
    ) {
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
            Cmd::Gc(a) => plan_cmd::gc(a),
            Cmd::Plugins(a) => plugins_cmd::plugins(a).await,
            Cmd::Agents(a) => agents_cmd::agents(a).await,
            Cmd::Serve(a) => agents_cmd::serve(a).await,
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
    // the runtime down as well would only wait for idle worker threads to wake up and leave,
    // and the allocator's exit handler would hand every page back to the system one madvise
    // at a time: flush the standard streams and leave.
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }
    std::mem::forget(rt);
    // SAFETY: _exit(2) ends the process; nothing after this line runs.
    unsafe { libc::_exit(i32::from(code)) }
}
