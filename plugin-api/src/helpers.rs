//! Helpers for plugin authors that are not part of the ABI: parsing a plugin's config with
//! the path of the bad key in the error, and a ticker thread for periodic work (a plugin
//! has no async runtime of its own, and must never use the kernel's).

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::PluginError;

/// Parses a plugin's config (the JSON object the kernel made from its `[plugins.config]`
/// table) into `T`. The error is a config error naming the key: `roles.work.max_agents:
/// invalid type: string "x", expected u32` (serde_json's position is left out: it is about
/// JSON the user never wrote). Use `#[serde(deny_unknown_fields)]` on `T` so that a typo is
/// an error too.
pub fn parse_config<T: serde::de::DeserializeOwned>(config_json: &str) -> Result<T, PluginError> {
    let de = &mut serde_json::Deserializer::from_str(config_json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = match inner.rfind(" at line ") {
            Some(i) => &inner[..i],
            None => inner.as_str(),
        };
        if path.is_empty() || path == "." {
            PluginError::config(inner)
        } else {
            PluginError::config(format!("{path}: {inner}"))
        }
    })
}

/// A named thread that runs a closure every period until it is stopped. `stop` waits for it
/// for a bounded time: a tick stuck in a host call must not hang the kernel's shutdown.
#[derive(Debug)]
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<(JoinHandle<()>, mpsc::Receiver<()>)>>,
}

impl Ticker {
    /// Starts `tick` every `period` on a thread named `name`.
    pub fn start(
        name: &str,
        period: Duration,
        mut tick: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let (done_tx, done_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let (lock, cvar) = &*flag;
                loop {
                    {
                        let Ok(guard) = lock.lock() else { break };
                        let Ok((guard, _)) = cvar.wait_timeout_while(guard, period, |s| !*s) else {
                            break;
                        };
                        if *guard {
                            break;
                        }
                    }
                    tick();
                }
                let _ = done_tx.send(());
            })?;
        Ok(Ticker {
            stop,
            thread: Mutex::new(Some((handle, done_rx))),
        })
    }

    /// Stops the thread and waits for it, at most `bound` (then leaves it to finish alone).
    /// True if it ended in time. Stopping twice is fine.
    pub fn stop(&self, bound: Duration) -> bool {
        let (lock, cvar) = &*self.stop;
        if let Ok(mut s) = lock.lock() {
            *s = true;
        }
        cvar.notify_all();
        let Some((handle, done)) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return true;
        };
        match done.recv_timeout(bound) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = handle.join();
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn ticks_until_stopped() {
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        let t = Ticker::start("test-tick", Duration::from_millis(5), move || {
            n2.fetch_add(1, Ordering::Relaxed);
        })
        .expect("thread");
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while n.load(Ordering::Relaxed) < 3 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(t.stop(Duration::from_secs(5)));
        let after = n.load(Ordering::Relaxed);
        assert!(after >= 3);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(n.load(Ordering::Relaxed), after, "no tick after stop");
        assert!(t.stop(Duration::from_secs(1)), "stopping twice is fine");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        #[serde(default)]
        roles: std::collections::BTreeMap<String, Role>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Role {
        max: u32,
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = parse_config::<Cfg>(r#"{"roles": {"w": {"max": "x"}}}"#).expect_err("type");
        assert_eq!(e.kind, crate::ErrorKind::CONFIG);
        assert!(e.message.starts_with("roles.w.max: invalid type"), "{e}");
        assert!(!e.message.contains("at line"), "{e}");
        let e = parse_config::<Cfg>(r#"{"bogus": 1}"#).expect_err("unknown");
        assert!(e.message.starts_with("bogus: unknown field"), "{e}");
    }
}
