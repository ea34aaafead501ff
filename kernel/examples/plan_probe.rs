//! Plan executor probes (BENCHMARKS.md, "Plans"):
//!
//! - `plan_probe noop [STEPS] [WIDTH] [CONCURRENCY] [STATE_DIR]`: a layered DAG of no-op
//!   inproc steps (each node of a layer depends on two of the previous one), run through the
//!   graph executor with durable state off, then on when STATE_DIR is given. Prints steps/s.
//! - `plan_probe run PLAN CONCURRENCY [STATE_DIR]`: runs a plan file of commands in this
//!   process (no `hive` start-up), with durable state when STATE_DIR is given; prints the
//!   wall time of 5 runs.
//! - `plan_probe dag-plans DIR`: writes the 1,000-step `sleep 0.01` DAGs of
//!   /work/shared/peers/bench_common.py (shapes w8x125 and l8x125) as plans
//!   `DIR/dag_w8x125.json` and `DIR/dag_l8x125.json`, for `hive run` against `make -j8`.
//!
//! Run: `cargo run --release -p hive-kernel --example plan_probe -- noop 100000 100 8 /tmp/st`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hive_kernel::{AgentSpec, InprocDriver, Kernel, Plan, PlanRun, RunOptions, StateStore};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `{node: deps}` of a layered DAG: `layers` x `width`, node i of layer L > 0 depends on nodes
/// i and (i + 1) mod width of layer L - 1 (bench_common.dag_shape).
fn layered(layers: usize, width: usize) -> Vec<Vec<usize>> {
    let mut g = Vec::with_capacity(layers * width);
    for l in 0..layers {
        for i in 0..width {
            if l == 0 {
                g.push(Vec::new());
            } else {
                let prev = (l - 1) * width;
                let mut d = vec![prev + i, prev + (i + 1) % width];
                d.sort_unstable();
                d.dedup();
                g.push(d);
            }
        }
    }
    g
}

fn plan_json(id: &str, g: &[Vec<usize>], step: impl Fn(usize) -> Value, conc: usize) -> String {
    let steps: Vec<Value> = g
        .iter()
        .enumerate()
        .map(|(k, deps)| {
            let mut s = step(k);
            s["id"] = json!(format!("t{k}"));
            s["depends_on"] = json!(deps.iter().map(|d| format!("t{d}")).collect::<Vec<_>>());
            s
        })
        .collect();
    json!({
        "plan_id": id,
        "version": "1",
        "globals": {"max_concurrency": conc},
        "steps": steps,
    })
    .to_string()
}

fn dag_plans(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, layers, width) in [("w8x125", 125, 8), ("l8x125", 8, 125)] {
        let g = layered(layers, width);
        let text = plan_json(
            &format!("dag_{name}"),
            &g,
            |_| json!({"command": "sleep", "args": ["0.01"]}),
            8,
        );
        let path = dir.join(format!("dag_{name}.json"));
        std::fs::write(&path, text).expect("write");
        println!("{}", path.display());
    }
}

async fn noop(steps: usize, width: usize, conc: usize, state: Option<PathBuf>) {
    let layers = steps.div_ceil(width);
    let g = layered(layers, width);
    let text = plan_json("noop", &g, |_| json!({"role": "noop", "task": {}}), conc);
    let t0 = Instant::now();
    let plan = Arc::new(
        Plan::parse(&text, Path::new("noop.json"), &BTreeMap::new()).expect("plan is valid"),
    );
    println!(
        "plan: {} steps ({layers} layers x {width}), parsed and checked in {:.3}s",
        plan.len(),
        t0.elapsed().as_secs_f64()
    );
    let modes: Vec<Option<PathBuf>> = match state {
        Some(s) => vec![None, Some(s)],
        None => vec![None],
    };
    for mode in modes {
        for rep in 0..3 {
            let k = Kernel::builder()
                .queue_capacity(steps.max(10_000))
                .build()
                .expect("kernel");
            let noop = InprocDriver::new(|_| async { Ok(Value::Null) }).shared();
            for _ in 0..conc {
                k.spawn_agent(AgentSpec::new("noop", noop.clone()))
                    .await
                    .expect("spawn");
            }
            let store = mode.as_ref().map(|d| {
                let _ = std::fs::remove_dir_all(d);
                StateStore::open(d).expect("state store")
            });
            let mut opts = RunOptions::new();
            opts.max_concurrency = conc;
            let t = Instant::now();
            let run = PlanRun::start(&k, plan.clone(), store.as_ref(), opts)
                .await
                .expect("start");
            let created = t.elapsed().as_secs_f64();
            let report = run.execute().await.expect("run");
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(report.steps.len(), plan.len());
            println!(
                "noop {} steps, concurrency {conc}, durable state {}: {:.3}s, {:.0} steps/s (run created in {:.3}s; rep {rep}, {})",
                plan.len(),
                if mode.is_some() { "on" } else { "off" },
                secs,
                plan.len() as f64 / secs,
                created,
                report.state
            );
            k.shutdown(hive_kernel::ShutdownMode::Now).await;
        }
    }
}

async fn run_file(path: PathBuf, conc: usize, state: Option<PathBuf>) {
    let plan = Arc::new(Plan::load(&path, &BTreeMap::new()).expect("plan is valid"));
    for rep in 0..5 {
        let k = Kernel::builder().build().expect("kernel");
        let driver = hive_kernel::ProcessDriver::new(hive_kernel::ProcessConfig::new()).shared();
        k.spawn_agent(AgentSpec::new("local", driver).with_capacity(conc as u32))
            .await
            .expect("spawn");
        let store = state.as_ref().map(|d| {
            let _ = std::fs::remove_dir_all(d);
            StateStore::open(d).expect("state store")
        });
        let mut opts = RunOptions::new();
        opts.max_concurrency = conc;
        let t = Instant::now();
        let report = PlanRun::start(&k, plan.clone(), store.as_ref(), opts)
            .await
            .expect("start")
            .execute()
            .await
            .expect("run");
        println!(
            "{}: {:.3}s ({}, durable state {}, rep {rep})",
            path.display(),
            t.elapsed().as_secs_f64(),
            report.state,
            if store.is_some() { "on" } else { "off" }
        );
        k.shutdown(hive_kernel::ShutdownMode::Now).await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |i: usize, d: usize| -> usize { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d) };
    match args.first().map(String::as_str) {
        Some("dag-plans") => dag_plans(Path::new(args.get(1).map_or(".", String::as_str))),
        Some("noop") | None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let state = args.get(4).map(PathBuf::from);
            rt.block_on(async move {
                tokio::spawn(noop(num(1, 100_000), num(2, 100), num(3, 8), state))
                    .await
                    .expect("probe")
            });
        }
        Some("run") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let path = PathBuf::from(args.get(1).map_or("plan.json", String::as_str));
            let state = args.get(3).map(PathBuf::from);
            rt.block_on(async move {
                tokio::spawn(run_file(path, num(2, 8), state))
                    .await
                    .expect("probe")
            });
        }
        Some(other) => eprintln!("unknown probe `{other}` (noop | run | dag-plans)"),
    }
}
