//! One circuit breaker (closed, open, half-open) over a sliding window of attempt outcomes,
//! driven by an explicit clock (milliseconds since the plugin started) so that it is tested
//! without sleeping.

use std::collections::HashMap;

use crate::config::BreakerSettings;

/// Buckets per window: outcomes older than the window leave it a tenth at a time.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (now / bucket_ms) it holds.
    idx: u64,
    ok: u32,
    failed: u32,
}

/// Successes and failures over the last `window_ms`, in `BUCKETS` slices.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    bucket_ms: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    pub(crate) fn new(window_ms: u64) -> Self {
        Window {
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    pub(crate) fn add(&mut self, now: u64, ok: bool) {
        let idx = now / self.bucket_ms;
        let b = &mut self.buckets[(idx % BUCKETS as u64) as usize];
        if b.idx != idx {
            *b = Bucket {
                idx,
                ok: 0,
                failed: 0,
            };
        }
        if ok {
            b.ok = b.ok.saturating_add(1);
        } else {
            b.failed = b.failed.saturating_add(1);
        }
    }

    /// (attempts, failures) in the window ending now.
    pub(crate) fn totals(&self, now: u64) -> (u64, u64) {
        let idx = now / self.bucket_ms;
        self.buckets
            .iter()
            .filter(|b| b.idx <= idx && b.idx + (BUCKETS as u64) > idx)
            .fold((0, 0), |(c, f), b| {
                (
                    c + u64::from(b.ok) + u64::from(b.failed),
                    f + u64::from(b.failed),
                )
            })
    }

    /// Takes one outcome back out (the bucket of `now`).
    pub(crate) fn remove(&mut self, now: u64, ok: bool) {
        let idx = now / self.bucket_ms;
        let b = &mut self.buckets[(idx % BUCKETS as u64) as usize];
        if b.idx == idx {
            if ok {
                b.ok = b.ok.saturating_sub(1);
            } else {
                b.failed = b.failed.saturating_sub(1);
            }
        }
    }

    /// Takes another window's outcomes out of this one (same window length: the buckets
    /// line up).
    pub(crate) fn subtract(&mut self, other: &Window) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            if mine.idx == theirs.idx && self.bucket_ms == other.bucket_ms {
                mine.ok = mine.ok.saturating_sub(theirs.ok);
                mine.failed = mine.failed.saturating_sub(theirs.failed);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Tasks go through; outcomes are counted.
    Closed,
    /// Tasks are kept away until the cool-down ends.
    Open,
    /// A few trial tasks go through; their outcomes decide.
    HalfOpen,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// A change of phase, to report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Transition {
    /// Closed -> open (failure rate over the threshold), or half-open -> open (a trial
    /// failed: `reopened`).
    Opened {
        /// Failures / attempts in the window (1.0 for a failed trial).
        failure_rate: f64,
        /// Attempts in the window.
        calls: u64,
        /// Failures in the window.
        failures: u64,
        /// A trial failed.
        reopened: bool,
    },
    /// Open -> half-open (the cool-down passed).
    HalfOpened,
    /// Half-open -> closed (every trial succeeded).
    Closed,
}

/// What the gate says about one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Closed: go ahead.
    Pass,
    /// Half-open with a trial slot free: go ahead as a trial (call [`Breaker::admit`]).
    Trial,
    /// Keep it away for at least this long (ms): open, or half-open with no slot free.
    Block(u64),
}

/// One breaker.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    phase: Phase,
    /// When the current phase began (plugin clock, ms).
    since: u64,
    /// When the current phase began (Unix ms), for the status.
    since_unix_ms: u64,
    window: Window,
    /// Trial tasks in flight while half-open, and when each was let through.
    trials: HashMap<u64, u64>,
    /// Trials that succeeded in this half-open phase.
    succeeded: u32,
    /// Times it opened.
    pub(crate) opened: u64,
}

impl Breaker {
    pub(crate) fn new(s: &BreakerSettings, now: u64, unix_ms: u64) -> Self {
        Breaker {
            phase: Phase::Closed,
            since: now,
            since_unix_ms: unix_ms,
            window: Window::new(s.window_ms),
            trials: HashMap::new(),
            succeeded: 0,
            opened: 0,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The outcomes it counted (while closed).
    pub(crate) fn window(&self) -> &Window {
        &self.window
    }

    /// Takes outcomes out of its window (those another breaker took the blame for).
    pub(crate) fn forget(&mut self, outcomes: &Window) {
        self.window.subtract(outcomes);
    }

    fn enter(&mut self, phase: Phase, now: u64, unix_ms: u64) {
        self.phase = phase;
        self.since = now;
        self.since_unix_ms = unix_ms;
        self.trials.clear();
        self.succeeded = 0;
        if phase == Phase::Open {
            self.opened += 1;
        }
        if phase == Phase::Closed {
            self.window.clear();
        }
    }

    /// An attempt of `task` ended: `ok`, or a counted failure. Outcomes while open, and
    /// while half-open those of tasks that were not let through as trials, are not counted.
    pub(crate) fn record(
        &mut self,
        s: &BreakerSettings,
        task: u64,
        ok: bool,
        now: u64,
        unix_ms: u64,
    ) -> Option<Transition> {
        self.record_with(s, task, ok, now, unix_ms, true)
    }

    /// [`Breaker::record`], but a closed breaker only opens if `may_open`.
    pub(crate) fn record_with(
        &mut self,
        s: &BreakerSettings,
        task: u64,
        ok: bool,
        now: u64,
        unix_ms: u64,
        may_open: bool,
    ) -> Option<Transition> {
        match self.phase {
            Phase::Closed => {
                self.window.add(now, ok);
                if ok {
                    return None;
                }
                let (calls, failures) = self.window.totals(now);
                let rate = failures as f64 / calls.max(1) as f64;
                if may_open && calls >= u64::from(s.min_calls) && rate >= s.failure_rate {
                    self.enter(Phase::Open, now, unix_ms);
                    return Some(Transition::Opened {
                        failure_rate: rate,
                        calls,
                        failures,
                        reopened: false,
                    });
                }
                None
            }
            Phase::Open => None,
            Phase::HalfOpen => {
                self.trials.remove(&task)?;
                if ok {
                    self.succeeded += 1;
                    if self.succeeded >= s.half_open_trials {
                        self.enter(Phase::Closed, now, unix_ms);
                        return Some(Transition::Closed);
                    }
                    None
                } else {
                    self.enter(Phase::Open, now, unix_ms);
                    Some(Transition::Opened {
                        failure_rate: 1.0,
                        calls: 1,
                        failures: 1,
                        reopened: true,
                    })
                }
            }
        }
    }

    /// Open -> half-open once the cool-down has passed.
    pub(crate) fn poll(
        &mut self,
        s: &BreakerSettings,
        now: u64,
        unix_ms: u64,
    ) -> Option<Transition> {
        if self.phase == Phase::Open && now >= self.since + s.cool_down_ms {
            self.enter(Phase::HalfOpen, now, unix_ms);
            return Some(Transition::HalfOpened);
        }
        None
    }

    /// Whether `task` may go through now (after [`Breaker::poll`]). Does not change the
    /// breaker except to forget trials that have been out for longer than the cool-down
    /// (lost, or taken elsewhere by another plugin), which frees their slots.
    pub(crate) fn gate(&mut self, s: &BreakerSettings, task: u64, now: u64) -> Gate {
        match self.phase {
            Phase::Closed => Gate::Pass,
            Phase::Open => Gate::Block(
                (self.since + s.cool_down_ms)
                    .saturating_sub(now)
                    .max(s.defer_ms),
            ),
            Phase::HalfOpen => {
                if self.trials.contains_key(&task) {
                    return Gate::Trial;
                }
                let cool = s.cool_down_ms;
                self.trials.retain(|_, at| now < *at + cool);
                if self.trials.len() as u32 + self.succeeded < s.half_open_trials {
                    Gate::Trial
                } else {
                    Gate::Block(s.defer_ms)
                }
            }
        }
    }

    /// While open: how long until it half-opens (ms).
    pub(crate) fn half_opens_in(&self, s: &BreakerSettings, now: u64) -> Option<u64> {
        (self.phase == Phase::Open).then(|| (self.since + s.cool_down_ms).saturating_sub(now))
    }

    /// Lets `task` through as a trial (after [`Gate::Trial`]).
    pub(crate) fn admit(&mut self, task: u64, now: u64) {
        if self.phase == Phase::HalfOpen {
            self.trials.insert(task, now);
        }
    }

    /// Its state as JSON, for the status.
    pub(crate) fn status(&self, s: &BreakerSettings, now: u64) -> serde_json::Value {
        let (calls, failures) = self.window.totals(now);
        let mut v = serde_json::json!({
            "state": self.phase.name(),
            "calls": calls,
            "failures": failures,
            "failure_rate": if calls == 0 { 0.0 } else { failures as f64 / calls as f64 },
            "opened": self.opened,
            "since_unix_ms": self.since_unix_ms,
            "in_state_ms": now.saturating_sub(self.since),
        });
        if self.phase == Phase::HalfOpen {
            v["trials"] = serde_json::json!({
                "limit": s.half_open_trials,
                "in_flight": self.trials.len(),
                "succeeded": self.succeeded,
            });
        }
        if let Some(ms) = self.half_opens_in(s, now) {
            v["half_opens_in_ms"] = ms.into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings() -> BreakerSettings {
        Settings::from_json(
            r#"{"breaker": {"window_s": 10, "min_calls": 4, "failure_rate": 0.5,
                 "cool_down_ms": 1000, "half_open_trials": 2, "defer_ms": 50}}"#,
        )
        .expect("config")
        .breaker
    }

    #[test]
    fn window_forgets_old_outcomes() {
        let mut w = Window::new(10_000);
        w.add(0, false);
        w.add(500, true);
        w.add(5_000, false);
        assert_eq!(w.totals(5_000), (3, 2));
        assert_eq!(w.totals(10_500), (1, 1), "the first second left the window");
        assert_eq!(w.totals(16_000), (0, 0));
    }

    #[test]
    fn min_calls_then_rate_trips_it() {
        let s = settings();
        let mut b = Breaker::new(&s, 0, 0);
        assert_eq!(b.record(&s, 1, false, 10, 0), None);
        assert_eq!(b.record(&s, 2, false, 20, 0), None);
        assert_eq!(b.record(&s, 3, true, 30, 0), None);
        assert_eq!(b.gate(&s, 9, 35), Gate::Pass);
        match b.record(&s, 4, false, 40, 0) {
            Some(Transition::Opened {
                calls: 4,
                failures: 3,
                reopened: false,
                ..
            }) => {}
            other => panic!("expected it to open, got {other:?}"),
        }
        assert_eq!(b.phase(), Phase::Open);
        assert_eq!(b.gate(&s, 9, 100), Gate::Block(940));
        assert_eq!(b.gate(&s, 9, 1030), Gate::Block(50), "at least defer_ms");
        // Late outcomes of attempts started before it opened are not counted.
        assert_eq!(b.record(&s, 5, true, 500, 0), None);
        assert_eq!(b.poll(&s, 999, 0), None);
        assert_eq!(b.poll(&s, 1040, 0), Some(Transition::HalfOpened));
    }

    #[test]
    fn half_open_trials_close_or_reopen_it() {
        let s = settings();
        let mut b = Breaker::new(&s, 0, 0);
        for t in 0..4 {
            b.record(&s, t, false, 10, 0);
        }
        assert_eq!(b.poll(&s, 2000, 0), Some(Transition::HalfOpened));
        assert_eq!(b.gate(&s, 10, 2000), Gate::Trial);
        b.admit(10, 2000);
        assert_eq!(b.gate(&s, 11, 2001), Gate::Trial);
        b.admit(11, 2001);
        assert_eq!(b.gate(&s, 12, 2002), Gate::Block(50), "two trials out");
        assert_eq!(
            b.gate(&s, 10, 2002),
            Gate::Trial,
            "a trial asked again stays one"
        );
        // An outcome of a task that is not a trial is not counted.
        assert_eq!(b.record(&s, 99, true, 2003, 0), None);
        assert_eq!(b.record(&s, 10, true, 2010, 0), None);
        assert_eq!(b.record(&s, 11, true, 2020, 0), Some(Transition::Closed));
        assert_eq!(b.gate(&s, 12, 2021), Gate::Pass);
        assert_eq!(
            b.status(&s, 2021)["calls"],
            0,
            "closing starts a fresh window"
        );

        for t in 0..4 {
            b.record(&s, t, false, 3000, 0);
        }
        b.poll(&s, 4000, 0);
        b.admit(20, 4000);
        match b.record(&s, 20, false, 4100, 0) {
            Some(Transition::Opened { reopened: true, .. }) => {}
            other => panic!("a failed trial re-opens it, got {other:?}"),
        }
        assert_eq!(b.opened, 3);
        assert_eq!(b.gate(&s, 21, 4200), Gate::Block(900));
    }

    #[test]
    fn lost_trials_free_their_slot_after_the_cool_down() {
        let s = settings();
        let mut b = Breaker::new(&s, 0, 0);
        for t in 0..4 {
            b.record(&s, t, false, 0, 0);
        }
        b.poll(&s, 1000, 0);
        b.admit(1, 1000);
        b.admit(2, 1000);
        assert_eq!(b.gate(&s, 3, 1500), Gate::Block(50));
        assert_eq!(b.gate(&s, 3, 2000), Gate::Trial);
    }
}
