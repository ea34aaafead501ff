//! `cargo xtask`: the project's developer tasks (test, tidy, bench, new-plugin) behind one CLI.

mod bench;
mod cmd;
mod compat;
mod new_plugin;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Hive developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the whole workspace, then run `cargo test --workspace [ARGS...]`.
    ///
    /// Extra arguments (after `--`) go to `cargo test`; use `-- -- --nocapture`
    /// to reach the test binaries.
    Test {
        /// Passed through to `cargo test --workspace`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Repository hygiene checks (also run by `cargo test` as `xtask::tidy`).
    Tidy,
    /// Run the benchmark suite; writes target/bench/report.txt.
    Bench {
        /// Shorter runs: criterion `--quick`, QUICK=1 for the peer scripts.
        #[arg(long)]
        quick: bool,
    },
    /// Generate a plugin crate (a cdylib against hive-plugin-api) that builds and loads as
    /// it is; under the workspace, it is added to the workspace members.
    NewPlugin {
        /// The plugin's name (and its package's): lowercase letters, digits, `-` and `_`,
        /// starting with a letter.
        name: String,
        /// Where to put the crate (must not exist) [default: plugins/NAME in the workspace].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = workspace_root().and_then(|root| match cli.task {
        Task::Test { args } => run_tests(&root, &args),
        Task::Tidy => run_tidy(&root),
        Task::Bench { quick } => bench::run(&root, quick),
        Task::NewPlugin { name, dir } => new_plugin::run(&root, &name, dir.as_deref()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .context("xtask manifest dir has no parent")?;
    if !root.join("Cargo.toml").is_file() {
        bail!("no Cargo.toml at the workspace root {}", root.display());
    }
    Ok(root.to_path_buf())
}

/// `cargo xtask test`: `cargo build --workspace` then `cargo test --workspace ARGS`.
fn run_tests(root: &Path, args: &[String]) -> Result<()> {
    let mut build = Command::new(cmd::cargo());
    build.current_dir(root).args(["build", "--workspace"]);
    cmd::run_checked(&mut build)?;
    compat::build(root)?;

    let mut test = Command::new(cmd::cargo());
    test.current_dir(root)
        .args(["test", "--workspace"])
        .args(args);
    cmd::run_checked(&mut test)
}

/// `cargo xtask tidy`: print every problem, fail if there is any.
fn run_tidy(root: &Path) -> Result<()> {
    let problems = tidy::check(root)?;
    if problems.is_empty() {
        println!("tidy: ok");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    bail!("tidy: {} problem(s)", problems.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real workspace must be tidy: `cargo test --workspace` runs this.
    #[test]
    fn tidy() -> Result<()> {
        let root = workspace_root()?;
        let problems = tidy::check(&root)?;
        let listing: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            problems.is_empty(),
            "tidy found {} problem(s):\n{}",
            problems.len(),
            listing.join("\n")
        );
        Ok(())
    }

    #[test]
    fn cli_parses() -> Result<()> {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["xtask", "test", "--", "-p", "x", "--", "--nocapture"])?;
        match cli.task {
            Task::Test { args } => assert_eq!(args, ["-p", "x", "--", "--nocapture"]),
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from(["xtask", "bench", "--quick"])?;
        assert!(matches!(cli.task, Task::Bench { quick: true }));
        let cli = Cli::try_parse_from(["xtask", "new-plugin", "my-plugin", "--dir", "/tmp/p"])?;
        match cli.task {
            Task::NewPlugin { name, dir } => {
                assert_eq!(name, "my-plugin");
                assert_eq!(dir, Some(PathBuf::from("/tmp/p")));
            }
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    }
}
