//! The sliding window of a role's SLA statistics: the latency and queue wait of the attempts
//! that finished in the last `window`, kept as ten slices of HdrHistograms (microseconds,
//! two significant digits) so that a sample leaves the window with its slice.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Slices per window.
const SLICES: u64 = 10;

/// A histogram of microseconds from 1 µs to one hour, two significant digits.
fn histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).ok()
}

fn micros(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        ((ms * 1e3) as u64).max(1)
    } else {
        1
    }
}

struct Slice {
    /// The slice's number since the window's epoch.
    no: u64,
    latency: Histogram<u64>,
    queue: Histogram<u64>,
}

/// What a window says now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct WindowStats {
    /// Attempts in the window.
    pub(crate) samples: u64,
    /// Their p95 run time, in milliseconds (None when no sample).
    pub(crate) p95_latency_ms: Option<f64>,
    /// Their p95 queue wait, in milliseconds (None when no sample).
    pub(crate) p95_queue_wait_ms: Option<f64>,
}

/// The last `window` of attempts of one role.
pub(crate) struct Window {
    epoch: Instant,
    slice: Duration,
    slices: Vec<Option<Slice>>,
    /// Scratch histograms the slices are merged into (kept to avoid allocating per tick).
    merged: Option<(Histogram<u64>, Histogram<u64>)>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("slice", &self.slice)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// An empty window of `window`, in ten slices.
    pub(crate) fn new(window: Duration, epoch: Instant) -> Self {
        let slice = (window / SLICES as u32).max(Duration::from_millis(1));
        Window {
            epoch,
            slice,
            slices: (0..SLICES).map(|_| None).collect(),
            merged: None,
        }
    }

    fn slice_no(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slice.as_nanos().max(1)) as u64
    }

    /// Records one finished attempt.
    pub(crate) fn record(&mut self, now: Instant, run_ms: f64, queue_ms: f64) {
        let no = self.slice_no(now);
        let idx = (no % SLICES) as usize;
        let Some(cell) = self.slices.get_mut(idx) else {
            return;
        };
        match cell {
            Some(s) if s.no == no => {}
            Some(s) => {
                s.no = no;
                s.latency.reset();
                s.queue.reset();
            }
            None => {
                let (Some(latency), Some(queue)) = (histogram(), histogram()) else {
                    return;
                };
                *cell = Some(Slice { no, latency, queue });
            }
        }
        if let Some(s) = cell {
            s.latency.saturating_record(micros(run_ms));
            s.queue.saturating_record(micros(queue_ms));
        }
    }

    /// The statistics of the slices still in the window at `now`.
    pub(crate) fn stats(&mut self, now: Instant) -> WindowStats {
        let no = self.slice_no(now);
        if self.merged.is_none() {
            self.merged = histogram().zip(histogram());
        }
        let Some((lat, queue)) = self.merged.as_mut() else {
            return WindowStats::default();
        };
        lat.reset();
        queue.reset();
        for s in self.slices.iter().flatten() {
            if s.no + SLICES > no && s.no <= no {
                let _ = lat.add(&s.latency);
                let _ = queue.add(&s.queue);
            }
        }
        let p95 =
            |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.95) as f64 / 1e3);
        WindowStats {
            samples: lat.len(),
            p95_latency_ms: p95(lat),
            p95_queue_wait_ms: p95(queue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_leave_the_window_with_their_slice() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(1), t0);
        assert_eq!(w.stats(t0), WindowStats::default());
        for i in 0..100 {
            w.record(t0, if i < 95 { 10.0 } else { 1000.0 }, 5.0);
        }
        let s = w.stats(t0 + Duration::from_millis(50));
        assert_eq!(s.samples, 100);
        let p95 = s.p95_latency_ms.expect("p95");
        assert!((9.5..=10.5).contains(&p95), "{p95}");
        w.record(t0 + Duration::from_millis(950), 2000.0, 3000.0);
        let s = w.stats(t0 + Duration::from_millis(990));
        assert_eq!(s.samples, 101);
        // Past the window, only the late sample is left.
        let s = w.stats(t0 + Duration::from_millis(1500));
        assert_eq!(s.samples, 1);
        let q = s.p95_queue_wait_ms.expect("p95");
        assert!((2950.0..=3050.0).contains(&q), "{q}");
        let s = w.stats(t0 + Duration::from_millis(2000));
        assert_eq!(s, WindowStats::default());
        // A slice reused after a lap starts empty.
        w.record(t0 + Duration::from_millis(2010), 1.0, 1.0);
        assert_eq!(w.stats(t0 + Duration::from_millis(2020)).samples, 1);
    }
}
