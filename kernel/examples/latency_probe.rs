//! Latency and throughput probe with percentiles (criterion reports means): inproc spawn,
//! submit-to-result round trip on an idle agent, and 10,000 no-op tasks over 8 agents.
//! Run: `cargo run --release -p hive-kernel --example latency_probe`.

/// mimalloc: far less contention than glibc malloc across worker threads (see
/// BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use hdrhistogram::Histogram;
use hive_kernel::{AgentSpec, BatchOptions, InprocDriver, Kernel, TaskSpec};
use serde_json::Value;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram")
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: p50 {:.2} us, p95 {:.2} us, p99 {:.2} us, max {:.2} us (n={})",
        h.value_at_quantile(0.50) as f64 / 1e3,
        h.value_at_quantile(0.95) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3,
        h.len()
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Measured from a task on the runtime, as a caller inside an async program runs; the
    // last figure is from a thread outside the runtime (two cross-thread wake-ups per task).
    let body = async {
        let noop = InprocDriver::new(|_| async { Ok(Value::Null) }).shared();

        // Spawn: registered, Ready, events emitted (a subscriber is attached).
        let k = Kernel::builder().build().expect("kernel");
        let _events = k.subscribe();
        let mut h = hist();
        for _ in 0..20_000 {
            let t0 = Instant::now();
            k.spawn_agent(AgentSpec::new("w", noop.clone()))
                .await
                .expect("spawn");
            h.record(t0.elapsed().as_nanos() as u64).expect("record");
        }
        report("spawn_inproc_agent", &h);

        // Round trip on an idle agent.
        let k = Kernel::builder().build().expect("kernel");
        k.spawn_agent(AgentSpec::new("w", noop.clone()))
            .await
            .expect("spawn");
        for _ in 0..10_000 {
            k.run(TaskSpec::for_role("w", Value::Null))
                .await
                .expect("warm-up");
        }
        let mut h = hist();
        for _ in 0..100_000 {
            let t0 = Instant::now();
            k.run(TaskSpec::for_role("w", Value::Null))
                .await
                .expect("run");
            h.record(t0.elapsed().as_nanos() as u64).expect("record");
        }
        report("round_trip_noop_idle_agent", &h);

        // 10,000 no-op tasks over 8 agents.
        let k = Kernel::builder()
            .queue_capacity(20_000)
            .build()
            .expect("kernel");
        for _ in 0..8 {
            k.spawn_agent(AgentSpec::new("w", noop.clone()))
                .await
                .expect("spawn");
        }
        let mut submit_all = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..7 {
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
            submit_all.push(10_000.0 / t0.elapsed().as_secs_f64());
            let specs = (0..10_000)
                .map(|_| TaskSpec::for_role("w", Value::Null))
                .collect();
            let t0 = Instant::now();
            k.run_batch(specs, BatchOptions::new(8)).await;
            batch.push(10_000.0 / t0.elapsed().as_secs_f64());
        }
        println!(
            "noop_10k_over_8_agents_submit_all: {:.0} tasks/s (median of 7)",
            median(submit_all)
        );
        println!(
            "noop_10k_over_8_agents_batch_c8: {:.0} tasks/s (median of 7)",
            median(batch)
        );
    };
    rt.block_on(async { tokio::spawn(body).await.expect("probe") });

    let k = rt.block_on(async {
        let k = Kernel::builder().build().expect("kernel");
        let noop = InprocDriver::new(|_| async { Ok(Value::Null) }).shared();
        k.spawn_agent(AgentSpec::new("w", noop))
            .await
            .expect("spawn");
        k
    });
    let mut h = hist();
    for _ in 0..20_000 {
        let t0 = Instant::now();
        rt.block_on(k.run(TaskSpec::for_role("w", Value::Null)))
            .expect("run");
        h.record(t0.elapsed().as_nanos() as u64).expect("record");
    }
    report("round_trip_noop_idle_agent_from_outside_thread", &h);
}
