//! Progress of a plan run, driven by its events (each already on disk when it arrives): on a
//! terminal an overall bar plus one spinner per running step; otherwise one line per ended
//! step (and per retry) on stderr.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hive_kernel::{RunEvent, RunEventKind, StepState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::progress::Mode;

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Follows the run's events until the run finishes (or the channel closes).
pub(crate) async fn follow(mut rx: UnboundedReceiver<Arc<RunEvent>>, total: usize, mode: Mode) {
    let mut total = total;
    let mut done = 0usize;
    let mut failed = 0usize;
    let multi = (mode == Mode::Bar)
        .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
    let overall = multi.as_ref().map(|m| {
        let b = m.add(ProgressBar::new(total as u64));
        b.set_style(style(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg}",
        ));
        b.enable_steady_tick(Duration::from_millis(100));
        b
    });
    let mut running: HashMap<Arc<str>, ProgressBar> = HashMap::new();
    let line = |s: String| match &multi {
        Some(m) => {
            let _ = m.println(s);
        }
        None => eprintln!("{s}"),
    };
    while let Some(ev) = rx.recv().await {
        match &ev.kind {
            RunEventKind::StepExpanded { items, .. } => {
                total += items;
                if let Some(b) = &overall {
                    b.set_length(total as u64);
                }
            }
            RunEventKind::StepStarted { step, attempt } => {
                if let Some(m) = &multi {
                    let b = m.add(ProgressBar::new_spinner());
                    b.set_style(style("  {spinner} {msg} [{elapsed}]"));
                    b.set_message(if *attempt > 1 {
                        format!("{step} (attempt {attempt})")
                    } else {
                        step.to_string()
                    });
                    b.enable_steady_tick(Duration::from_millis(100));
                    if let Some(old) = running.insert(step.clone(), b) {
                        old.finish_and_clear();
                    }
                }
            }
            RunEventKind::StepRetrying {
                step,
                attempt,
                delay_ms,
                error,
            } => {
                if let Some(b) = running.remove(step) {
                    b.finish_and_clear();
                }
                if mode != Mode::Quiet {
                    line(format!(
                        "{step}: attempt {attempt} failed, retrying in {:.1}s: {}",
                        *delay_ms as f64 / 1e3,
                        error.lines().next().unwrap_or("")
                    ));
                }
            }
            RunEventKind::StepFinished {
                step,
                state,
                attempts,
                duration_ms,
                error,
                ..
            } => {
                done += 1;
                if matches!(
                    state,
                    StepState::Failed | StepState::TimedOut | StepState::Cancelled
                ) {
                    failed += 1;
                }
                if let Some(b) = running.remove(step) {
                    b.finish_and_clear();
                }
                let width = total.to_string().len();
                let mut l = format!(
                    "[{done:>width$}/{total}] {step} {state} in {:.3}s",
                    duration_ms / 1e3
                );
                if *attempts > 1 {
                    l.push_str(&format!(" after {attempts} attempts"));
                }
                if let Some(e) = error {
                    l.push_str(": ");
                    l.push_str(e.lines().next().unwrap_or(""));
                }
                match mode {
                    Mode::Bar => {
                        if !state.is_success() && *state != StepState::Skipped {
                            line(l);
                        }
                    }
                    Mode::Lines => line(l),
                    Mode::Quiet => {}
                }
                if let Some(b) = &overall {
                    b.set_position(done as u64);
                }
            }
            RunEventKind::RunFinished { .. } => break,
            _ => {}
        }
        if let Some(b) = &overall {
            b.set_message(format!("({} running, {failed} failed)", running.len()));
        }
    }
    for (_, b) in running {
        b.finish_and_clear();
    }
    if let Some(b) = overall {
        b.finish_and_clear();
    }
}
