//! The debug trace: one JSON object per line for every event the plugin observes, with the
//! time it saw it, to a file (appended to) or to stderr. Buffered; flushed by the plugin's
//! ticker every 100 ms and at shutdown.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Where the trace goes.
pub(crate) struct Trace {
    out: Mutex<Box<dyn Write + Send>>,
    pub(crate) target: String,
    pub(crate) lines: AtomicU64,
    pub(crate) write_errors: AtomicU64,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Trace {
    /// Opens the trace: `None` or `stderr` is stderr, anything else a file to append to.
    pub(crate) fn open(path: Option<&str>) -> Result<Trace, String> {
        let (out, target): (Box<dyn Write + Send>, String) = match path {
            None | Some("stderr") => (Box::new(BufWriter::new(std::io::stderr())), "stderr".into()),
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("trace.path: cannot open {p}: {e}"))?;
                (Box::new(BufWriter::with_capacity(64 * 1024, f)), p.into())
            }
        };
        Ok(Trace {
            out: Mutex::new(out),
            target,
            lines: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    /// Writes one line: `{"ts_ms": .., "event": NAME, ..fields}`.
    pub(crate) fn write(&self, event: &str, fields: Value) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        let mut obj = Map::new();
        obj.insert("ts_ms".into(), Value::from((ts * 1e3).round() / 1e3));
        obj.insert("event".into(), Value::from(event));
        if let Value::Object(f) = fields {
            obj.extend(f);
        }
        let line = Value::Object(obj).to_string();
        let Ok(mut out) = self.out.lock() else { return };
        if writeln!(out, "{line}").is_ok() {
            self.lines.fetch_add(1, Ordering::Relaxed);
        } else {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Flushes what is buffered.
    pub(crate) fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            if out.flush().is_err() {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
