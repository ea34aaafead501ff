//! `hive agents` (serve the pools of a config until Ctrl-C), `hive serve` (the same, with
//! health and runs over HTTP), and `hive health` (ask the serving process over its control
//! socket, or start the pools fresh as a readiness check).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use hive_kernel::{
    request_health, serve_control, socket_path, Config, HealthReport, Kernel, ShutdownMode,
};

use crate::Exit;

#[derive(Args, Debug)]
pub(crate) struct AgentsArgs {
    /// The config file with the pools.
    #[arg(long, value_name = "FILE", default_value = "hive.toml")]
    config: PathBuf,
    /// State directory (control socket); default $HIVE_STATE_DIR, the config's, or .hive.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Append every event to this file as JSON Lines.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    agents: AgentsArgs,
    /// Where to serve HTTP (port 0: any free port; the ready line says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    listen: std::net::SocketAddr,
}

#[derive(Args, Debug)]
pub(crate) struct HealthArgs {
    /// The config file of the pools.
    #[arg(long, value_name = "FILE", default_value = "hive.toml")]
    config: PathBuf,
    /// State directory; default $HIVE_STATE_DIR, the config's, or .hive.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Builds the kernel of a config (plugins loaded) and spawns its pools. Returns the kernel
/// and the spawn failures (as messages).
async fn start_pools(config: &Config) -> Result<(Kernel, Vec<String>), Exit> {
    let kernel = crate::setup::build_kernel(Some(config), |_| {})?;
    let pools = config.pools(&kernel);
    let failures = crate::setup::spawn_pools(&kernel, &pools).await?;
    Ok((kernel, failures))
}

pub(crate) async fn agents(args: AgentsArgs) -> Result<u8, Exit> {
    serve_pools(args, None).await
}

/// `hive serve`: `hive agents` with its health and the state directory's runs over HTTP.
pub(crate) async fn serve(args: ServeArgs) -> Result<u8, Exit> {
    serve_pools(args.agents, Some(args.listen)).await
}

async fn serve_pools(args: AgentsArgs, http: Option<std::net::SocketAddr>) -> Result<u8, Exit> {
    let name = if http.is_some() {
        "hive serve"
    } else {
        "hive agents"
    };
    let config = Config::load(&args.config)?;
    let state = crate::state_dir(args.state_dir, Some(&config));
    let sock = socket_path(&state, &args.config);
    if request_health(&sock).await.ok().flatten().is_some() {
        return Err(Exit::bad_input(format!(
            "another `hive agents` already serves {} (socket {})",
            args.config.display(),
            sock.display()
        )));
    }
    // Bound before any agent starts: an address in use stops nothing but this command.
    let web = match http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Exit::bad_input(format!("--listen {addr}: {e}")))?,
        ),
        None => None,
    };
    let (kernel, failures) = start_pools(&config).await?;
    let sink = match &args.events {
        Some(p) => Some(
            kernel
                .jsonl_sink(p)
                .await
                .map_err(|e| Exit::bad_input(format!("--events {}: {e}", p.display())))?,
        ),
        None => None,
    };
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("hive: {f}");
        }
        kernel.shutdown(ShutdownMode::Now).await;
        return Err(Exit::failed(format!(
            "{} agent(s) did not start",
            failures.len()
        )));
    }
    let server = serve_control(kernel.clone(), sock.clone())
        .await
        .map_err(|e| Exit::failed(e.to_string()))?;
    let (web_stop, web_stopped) = tokio::sync::oneshot::channel::<()>();
    let web_url = web
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| format!("; http://{a} (GET /health, /runs, /runs/ID, /runs/ID/events)"))
        .unwrap_or_default();
    let web = web.map(|listener| {
        let app = crate::http::router(kernel.clone(), state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = web_stopped.await;
                })
                .await
        })
    });
    // Listening before the ready line: a signal sent as soon as it shows is not lost.
    let mut stop = Stop::new();
    let h = kernel.health();
    // One write, so that a reader never sees the line half-written (stderr is unbuffered).
    let line = format!(
        "{name}: {} agent(s) ready in {} role(s) from {}; health: hive health --config {}{web_url}; Ctrl-C drains\n",
        h.agents.ready + h.agents.busy,
        h.roles.len(),
        args.config.display(),
        args.config.display()
    );
    {
        use std::io::Write;
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    stop.wait().await;
    eprintln!("{name}: draining (Ctrl-C again to stop now)");
    let drain = kernel.shutdown(ShutdownMode::Graceful);
    tokio::select! {
        _ = drain => {}
        _ = stop.wait() => {
            eprintln!("{name}: stopping now");
            kernel.shutdown(ShutdownMode::Now).await;
        }
    }
    // HTTP answers (health shows the drain) until the pools are down.
    let _ = web_stop.send(());
    if let Some(w) = web {
        let _ = w.await;
    }
    let _ = server.await;
    if let Some(s) = sink {
        let _ = s.finish().await;
    }
    let _ = std::fs::remove_file(&sock);
    Ok(0)
}

/// SIGINT and SIGTERM, listened for from the moment it is made.
struct Stop {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    fn new() -> Stop {
        use tokio::signal::unix::{signal, SignalKind};
        Stop {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// The next SIGINT or SIGTERM (Ctrl-C only, if the listeners could not be set up).
    async fn wait(&mut self) {
        match (&mut self.int, &mut self.term) {
            (Some(int), Some(term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

pub(crate) async fn health(args: HealthArgs) -> Result<u8, Exit> {
    let config = Config::load(&args.config)?;
    let state = crate::state_dir(args.state_dir, Some(&config));
    let sock = socket_path(&state, &args.config);
    let (report, source, failures) = match request_health(&sock).await {
        Ok(Some(r)) => (
            r,
            format!("hive agents serving {}", args.config.display()),
            Vec::new(),
        ),
        Ok(None) | Err(_) => {
            let (kernel, failures) = start_pools(&config).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = kernel.health();
            kernel.shutdown(ShutdownMode::Now).await;
            (
                r,
                format!(
                    "readiness check of {} (no `hive agents` serving it)",
                    args.config.display()
                ),
                failures,
            )
        }
    };
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&report, &source, &args.config);
    }
    for f in &failures {
        eprintln!("hive: {f}");
    }
    Ok(if report.status == "ok" && failures.is_empty() {
        0
    } else {
        1
    })
}

fn print_report(r: &HealthReport, source: &str, _config: &Path) {
    say!("{source}");
    say!(
        "status {}   uptime {:.1}s   agents: {} ready, {} busy, {} starting, {} draining, {} failed, {} stopped",
        r.status,
        r.uptime_s,
        r.agents.ready,
        r.agents.busy,
        r.agents.starting,
        r.agents.draining,
        r.agents.failed,
        r.agents.stopped
    );
    say!(
        "{:<16} {:>6} {:>9} {:>7} {:>10} {:>8} {:>7} {:>9} {:>9}",
        "ROLE",
        "AGENTS",
        "IN-FLIGHT",
        "QUEUED",
        "OLDEST",
        "OK",
        "FAILED",
        "P50",
        "P95"
    );
    for (name, h) in &r.roles {
        say!(
            "{:<16} {:>6} {:>4}/{:<4} {:>7} {:>8.0}ms {:>8} {:>7} {:>7.1}ms {:>7.1}ms",
            name,
            h.agents,
            h.in_flight,
            h.capacity,
            h.queue_depth,
            h.oldest_wait_ms,
            h.succeeded,
            h.failed + h.timed_out,
            h.latency.p50_ms,
            h.latency.p95_ms
        );
    }
    for p in &r.plugins {
        say!(
            "plugin {} {}: {}  errors {}  delivered {}  dropped {}  decisions {} (mean {:.2} us){}",
            p.name,
            p.version,
            p.state,
            p.errors,
            p.delivered,
            p.dropped,
            p.decisions,
            p.decision_mean_us,
            p.reason
                .as_deref()
                .map(|r| format!("  reason: {r}"))
                .unwrap_or_default()
        );
    }
    for p in r.plugins.iter().filter(|p| p.state == "loaded") {
        print_performance(&p.name, &p.status);
    }
    for a in r.agent_list.iter().filter(|a| a.state.is_terminal()) {
        say!("{} ({}) {}", a.id, a.role, a.state);
    }
}

/// The per-role figures of a loaded `performance` plugin (found by its status' `schema`,
/// whatever its name): latency and queue-wait quantiles, attempts, throughput per window.
fn print_performance(plugin: &str, status: &serde_json::Value) {
    use serde_json::Value;
    if status.get("schema").and_then(Value::as_str) != Some("hive-performance/1") {
        return;
    }
    let Some(roles) = status.get("roles").and_then(Value::as_object) else {
        return;
    };
    let windows: Vec<String> = status
        .get("windows_s")
        .and_then(Value::as_array)
        .map(|w| w.iter().map(|s| format!("{s}s")).collect())
        .unwrap_or_default();
    let num = |v: &Value, decimals: usize| match v.as_f64() {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".into(),
    };
    say!("performance (plugin {plugin}): latency and queue wait in ms, throughput in attempts/s");
    let mut head = format!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ROLE",
        "ATTEMPTS",
        "LAT-P50",
        "LAT-P95",
        "LAT-P99",
        "LAT-MAX",
        "WAIT-P50",
        "WAIT-P95",
        "WAIT-P99",
        "WAIT-MAX"
    );
    for w in &windows {
        head.push_str(&format!(" {:>9}", format!("TPUT-{w}")));
    }
    head.push_str(&format!(" {:>9}", "TPUT-ALL"));
    say!("{head}");
    for (name, e) in roles {
        let mut line = format!("{:<16} {:>8}", name, e["attempts"].as_u64().unwrap_or(0));
        for h in ["latency_ms", "queue_wait_ms"] {
            for q in ["p50", "p95", "p99", "max"] {
                line.push_str(&format!(" {:>8}", num(&e[h][q], 1)));
            }
        }
        for w in windows.iter().map(String::as_str).chain(["overall"]) {
            line.push_str(&format!(" {:>9}", num(&e["throughput_per_s"][w], 2)));
        }
        say!("{line}");
    }
}
