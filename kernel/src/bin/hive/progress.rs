//! Progress of a run, driven by the event bus: a live bar on a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;

use hive_kernel::{Event, EventStream, Status, TaskId};
use indicatif::{ProgressBar, ProgressStyle};

/// How to show progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Nothing.
    Quiet,
    /// One line per ended task on stderr.
    Lines,
    /// A live bar on stderr.
    Bar,
}

impl Mode {
    /// A bar on a terminal, lines otherwise (none when `quiet`).
    pub(crate) fn pick(quiet: bool, json: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else if json {
            Mode::Quiet
        } else {
            Mode::Lines
        }
    }
}

/// Follows the bus until `total` tasks have ended (or the bus closes).
pub(crate) async fn follow(mut events: EventStream, total: usize, mode: Mode) {
    if mode == Mode::Quiet || total == 0 {
        return;
    }
    let bar = (mode == Mode::Bar).then(|| {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(100));
        b
    });
    let mut names: HashMap<TaskId, Arc<str>> = HashMap::new();
    let mut running = 0i64;
    let (mut done, mut failed) = (0usize, 0usize);
    let width = total.to_string().len();
    while done < total {
        let Some(ev) = events.recv().await else { break };
        match &ev.event {
            Event::TaskSubmitted {
                task,
                name: Some(n),
                ..
            } => {
                names.insert(*task, n.clone());
            }
            Event::TaskStarted { .. } => running += 1,
            Event::TaskRetrying { .. } => running -= 1,
            Event::TaskCompleted {
                task,
                name,
                status,
                attempts,
                duration_ms,
                error,
                ..
            } => {
                done += 1;
                if *attempts > 0 {
                    running -= 1;
                }
                if *status != Status::Succeeded {
                    failed += 1;
                }
                let label = name
                    .clone()
                    .or_else(|| names.remove(task))
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| task.to_string());
                let mut line = format!(
                    "[{done:>width$}/{total}] {label} {status} in {:.3}s",
                    duration_ms / 1e3
                );
                if *attempts > 1 {
                    line.push_str(&format!(" after {attempts} attempts"));
                }
                if let Some(e) = error {
                    line.push_str(": ");
                    line.push_str(e.lines().next().unwrap_or(""));
                }
                match &bar {
                    Some(b) => {
                        if *status != Status::Succeeded {
                            b.println(line);
                        }
                        b.set_position(done as u64);
                    }
                    None => eprintln!("{line}"),
                }
            }
            _ => {}
        }
        if let Some(b) = &bar {
            b.set_message(format!("{} running, {failed} failed", running.max(0)));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
