//! The control socket of a serving `hive agents`: a Unix socket in the state directory that
//! answers one JSON request per line (`{"cmd":"health"}`) with one JSON line.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::health::HealthReport;
use crate::kernel::Kernel;

/// The socket path for a config file: `<state_dir>/agents-<hash of its absolute path>.sock`.
pub fn socket_path(state_dir: &Path, config: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    state_dir.join(format!("agents-{:08x}.sock", h as u32))
}

/// Why the control socket could not be served or asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Another `hive agents` already serves this config.
    #[error("another `hive agents` already serves this config (socket {0})")]
    InUse(PathBuf),
    /// Socket I/O failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The server's answer was not understood.
    #[error("control socket {0}: unexpected answer: {1}")]
    Protocol(PathBuf, String),
}

/// Serves the control socket until the kernel shuts down; removes the socket file then.
pub async fn serve(
    kernel: Kernel,
    path: PathBuf,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::InUse(path));
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    let stop = kernel.inner().stop.clone();
    Ok(tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.cancelled() => break,
            };
            let Ok((stream, _)) = conn else { continue };
            let k = kernel.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = match serde_json::from_str::<Value>(&line) {
                        Ok(v) => match v.get("cmd").and_then(Value::as_str) {
                            Some("health") => {
                                serde_json::to_value(k.health()).unwrap_or(Value::Null)
                            }
                            Some("ping") => json!({"ok": true}),
                            other => {
                                json!({"error": format!("unknown cmd {other:?}; expected health or ping")})
                            }
                        },
                        Err(e) => json!({"error": format!("request is not JSON: {e}")}),
                    };
                    let mut out = reply.to_string();
                    out.push('\n');
                    if w.write_all(out.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// Asks a serving `hive agents` for its health. `Ok(None)` when nobody serves the socket.
pub async fn request_health(path: &Path) -> Result<Option<HealthReport>, ControlError> {
    let Ok(stream) = UnixStream::connect(path).await else {
        return Ok(None);
    };
    let io = |source| ControlError::Io {
        path: path.into(),
        source,
    };
    let (r, mut w) = stream.into_split();
    w.write_all(b"{\"cmd\":\"health\"}\n").await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.map_err(io)?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| ControlError::Protocol(path.into(), format!("{e}: {}", line.trim())))
}
