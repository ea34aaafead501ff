//! Cost of the tools facade against the kernel it wraps, in one process: (a) 10,000 no-op
//! tasks through `execute_parallel` (a kept `ToolsOrchestrator`, and the one-shot free
//! function that builds its own kernel) against the same tasks through `Kernel::run_batch`,
//! interleaved rounds, medians (each timing covers building the input, running it and dropping
//! the result); (b) 16 tasks of 50 ms at concurrency 4 against concurrency 1
//! (the legacy AC1 speedup).
//! Run: `cargo run --release -p hive-compat --example facade_probe [ROUNDS]`.

/// mimalloc, as the kernel's own probes use (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hive_compat::tools::{
    execute_parallel, Agent, AgentContext, AgentError, AgentFactory, OrchestrationPolicy, TaskSpec,
    ToolsOrchestrator,
};
use hive_kernel::{AgentSpec, BatchOptions, InprocDriver, Kernel, TaskSpec as KernelTask};
use serde_json::{Map, Value};

const TASKS: usize = 10_000;
const CONCURRENCY: usize = 8;

struct Noop;

#[async_trait]
impl Agent for Noop {
    async fn run(&self, _: &str, _: &Map<String, Value>) -> Result<Value, AgentError> {
        Ok(Value::Null)
    }
}

struct Sleep(Duration);

#[async_trait]
impl Agent for Sleep {
    async fn run(&self, _: &str, _: &Map<String, Value>) -> Result<Value, AgentError> {
        tokio::time::sleep(self.0).await;
        Ok(Value::Null)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn noop_tasks(factory: &AgentFactory) -> Vec<TaskSpec> {
    (0..TASKS)
        .map(|_| TaskSpec::with_factory(factory.clone(), ""))
        .collect()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::spawn(probe(rounds)).await.expect("probe");
    });
}

async fn probe(rounds: usize) {
    // The kernel used directly: 8 no-op in-process agents, run_batch at most 8 in flight
    // (the shape the facade's pool takes at max_concurrency 8).
    let kernel = Kernel::builder().build().expect("kernel");
    let noop = InprocDriver::new(|_| async { Ok(Value::Null) }).shared();
    for _ in 0..CONCURRENCY {
        kernel
            .spawn_agent(AgentSpec::new("w", noop.clone()))
            .await
            .expect("spawn");
    }
    let direct = || async {
        let t0 = Instant::now();
        let specs = (0..TASKS)
            .map(|_| KernelTask::for_role("w", Value::Null))
            .collect();
        let r = kernel
            .run_batch(specs, BatchOptions::new(CONCURRENCY))
            .await;
        assert!(r.all_succeeded());
        t0.elapsed().as_secs_f64()
    };

    let policy = OrchestrationPolicy::builder()
        .max_concurrency(CONCURRENCY)
        .build()
        .expect("policy");
    let factory: AgentFactory = Arc::new(|_: &AgentContext| -> Box<dyn Agent> { Box::new(Noop) });
    let kept = ToolsOrchestrator::new().await.expect("orchestrator");
    let facade_kept = || async {
        let t0 = Instant::now();
        let r = kept
            .execute_parallel(noop_tasks(&factory), &policy)
            .await
            .expect("run");
        assert!(r.all_succeeded());
        drop(r);
        t0.elapsed().as_secs_f64()
    };
    let facade_fresh = || async {
        let t0 = Instant::now();
        let r = execute_parallel(noop_tasks(&factory), &policy)
            .await
            .expect("run");
        assert!(r.all_succeeded());
        drop(r);
        t0.elapsed().as_secs_f64()
    };

    // Warm-up, then interleaved rounds.
    for _ in 0..3 {
        direct().await;
        facade_kept().await;
        facade_fresh().await;
    }
    let (mut d, mut k, mut f) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rk, mut rf) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Rotate the order so that no path always runs right after another.
        let (a, b, c) = match i % 3 {
            0 => (direct().await, facade_kept().await, facade_fresh().await),
            1 => {
                let b = facade_kept().await;
                let c = facade_fresh().await;
                (direct().await, b, c)
            }
            _ => {
                let c = facade_fresh().await;
                let a = direct().await;
                (a, facade_kept().await, c)
            }
        };
        rk.push(b / a);
        rf.push(c / a);
        d.push(a);
        k.push(b);
        f.push(c);
    }
    let ms = |v: &[f64]| median(v.to_vec()) * 1e3;
    println!("10,000 no-op tasks at max_concurrency {CONCURRENCY}, medians of {rounds} interleaved rounds:");
    println!(
        "  kernel run_batch (direct):           {:8.2} ms  ({:.0} tasks/s)",
        ms(&d),
        TASKS as f64 / median(d.clone())
    );
    println!(
        "  execute_parallel (kept orchestrator): {:8.2} ms  ({:.0} tasks/s), {:.3}x direct (median of per-round ratios {:.3}x)",
        ms(&k),
        TASKS as f64 / median(k.clone()),
        median(k.clone()) / median(d.clone()),
        median(rk)
    );
    println!(
        "  execute_parallel (one-shot function): {:8.2} ms  ({:.0} tasks/s), {:.3}x direct (median of per-round ratios {:.3}x)",
        ms(&f),
        TASKS as f64 / median(f.clone()),
        median(f.clone()) / median(d.clone()),
        median(rf)
    );
    kept.shutdown().await;

    // (b) 16 tasks of 50 ms: concurrency 4 against concurrency 1.
    let sleep: AgentFactory = Arc::new(|_: &AgentContext| -> Box<dyn Agent> {
        Box::new(Sleep(Duration::from_millis(50)))
    });
    let sixteen = || -> Vec<TaskSpec> {
        (0..16)
            .map(|_| TaskSpec::with_factory(sleep.clone(), ""))
            .collect()
    };
    let at = |n: usize| {
        OrchestrationPolicy::builder()
            .max_concurrency(n)
            .build()
            .expect("policy")
    };
    let o = ToolsOrchestrator::new().await.expect("orchestrator");
    let (mut par, mut ser, mut reported) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = o.execute_parallel(sixteen(), &at(4)).await.expect("run");
        par.push(t0.elapsed().as_secs_f64());
        reported.push(r.metrics.speedup_vs_serial);
        let t0 = Instant::now();
        o.execute_parallel(sixteen(), &at(1)).await.expect("run");
        ser.push(t0.elapsed().as_secs_f64());
    }
    let (p, s) = (median(par), median(ser));
    println!("16 tasks of 50 ms, medians of 3:");
    println!(
        "  concurrency 4: {:.1} ms, concurrency 1: {:.1} ms: speedup {:.2}x (metrics.speedup_vs_serial {:.2})",
        p * 1e3,
        s * 1e3,
        s / p,
        median(reported)
    );
    o.shutdown().await;
}
