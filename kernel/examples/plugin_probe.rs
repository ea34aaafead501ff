//! Plugin overhead probe: throughput of 10,000 no-op inproc tasks over 8 agents with no plugin,
//! with a no-op decision hook, a no-op observer, four no-op plugins on every hook, an
//! observer that sleeps 1 s per event, and the four official plugins loaded together (as
//! configured for a real role, and with a development fault rule active); the per-task cost
//! of each against none.
//! Run: `cargo run --release -p hive-kernel --example plugin_probe -- NOOP_SO TESTKIT_SO`
//! (all built by `cargo build --release --workspace`; the official plugins are looked for
//! beside NOOP_SO).

use std::path::{Path, PathBuf};
use std::time::Instant;

use hive_kernel::{AgentSpec, InprocDriver, Kernel, PluginSpec, QuarantinePolicy, TaskSpec};
use serde_json::{json, Value};

/// mimalloc, as in the `hive` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn throughput(plugins: Vec<PluginSpec>) -> f64 {
    let k = Kernel::builder()
        .queue_capacity(20_000)
        .build()
        .expect("kernel");
    k.load_plugins(&plugins, QuarantinePolicy::default(), Path::new("."))
        .expect("plugins");
    let noop = InprocDriver::new(|_| async { Ok(Value::Null) }).shared();
    for _ in 0..8 {
        k.spawn_agent(AgentSpec::new("w", noop.clone()))
            .await
            .expect("spawn");
    }
    let mut rates = Vec::new();
    for round in 0..9 {
        let t0 = Instant::now();
        let mut hs = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            hs.push(
                k.submit(TaskSpec::for_role("w", Value::Null))
                    .await
                    .expect("submit"),
            );
        }
        for h in hs {
            h.await;
        }
        if round >= 2 {
            rates.push(10_000.0 / t0.elapsed().as_secs_f64());
        }
    }
    let h = k.health();
    for p in &h.plugins {
        if p.dropped > 0 || p.errors > 0 {
            println!(
                "    ({}: delivered {}, dropped {}, errors {})",
                p.name, p.delivered, p.dropped, p.errors
            );
        }
    }
    k.shutdown(hive_kernel::ShutdownMode::Now).await;
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let (Some(noop), Some(testkit)) = (args.first(), args.get(1)) else {
        eprintln!("usage: plugin_probe NOOP_SO TESTKIT_SO");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = noop.parent().map(Path::to_path_buf).unwrap_or_default();
    let official = move |name: &str, config: Value| {
        PluginSpec::path(dir.join(format!("libhive_plugin_{name}.so"))).with_config(config)
    };
    let four = move |dev: Value| {
        vec![
            official(
                "production",
                json!({"roles": {"w": {"p95_latency_ms": 1000, "p95_queue_wait_ms": 1000,
                                       "min_agents": 8, "max_agents": 8}}}),
            ),
            official("performance", json!({"report_interval_ms": 1000})),
            official(
                "automation",
                json!({"rules": [{"pattern": "rate limit", "action": "retry_after", "ms": 100}]}),
            ),
            official("development", dev),
        ]
    };
    let (noop, testkit) = (noop.clone(), testkit.clone());
    let noop_with = move |name: &str, hooks: Option<&[&str]>| {
        let mut s = PluginSpec::path(&noop).with_name(name);
        if let Some(h) = hooks {
            s = s.with_hooks(h.iter().map(|x| x.to_string()).collect());
        }
        s
    };
    let scenarios = move || -> Vec<(&'static str, Vec<PluginSpec>)> {
        vec![
            ("none", vec![]),
            (
                "noop_before_delegate",
                vec![noop_with("d", Some(&["before_delegate"]))],
            ),
            (
                "noop_observer_task_completed",
                vec![noop_with("o", Some(&["task_completed"]))],
            ),
            ("one_noop_all_hooks", vec![noop_with("a", None)]),
            (
                "four_noop_all_hooks",
                (0..4).map(|i| noop_with(&format!("n{i}"), None)).collect(),
            ),
            ("official_four", four(json!({}))),
            (
                "official_four_dev_fault_rule",
                four(json!({"faults": [{"role": "w", "fail_rate": 0.001}]})),
            ),
            (
                "sleepy_observer_1s",
                vec![PluginSpec::path(&testkit)
                    .with_config(json!({"sleep_in": ["task_completed"], "sleep_ms": 1000}))
                    .with_hooks(vec!["task_completed".into()])],
            ),
        ]
    };
    // Scenarios interleaved, three rounds, the median of each (the machine is noisy).
    rt.block_on(async move {
        tokio::spawn(async move {
            let names: Vec<&str> = scenarios().iter().map(|(n, _)| *n).collect();
            let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
            for _ in 0..3 {
                for (i, (_, plugins)) in scenarios().into_iter().enumerate() {
                    rates[i].push(throughput(plugins).await);
                }
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let base = med(&mut rates[0]);
            for (i, name) in names.iter().enumerate() {
                let r = med(&mut rates[i]);
                let per_task_ns = (1.0 / r - 1.0 / base) * 1e9;
                println!(
                    "plugins.{name}: {r:.0} tasks/s, {:.1}% of none, {per_task_ns:+.0} ns/task",
                    100.0 * r / base
                );
            }
        })
        .await
        .expect("probe");
    });
}
