//! Criterion benchmarks of the kernel's hot paths: inproc spawn, submit-to-result round trip
//! on an idle agent, and 10,000 no-op tasks over 8 agents.

/// mimalloc: far less contention than glibc malloc across worker threads (see
/// BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hive_kernel::{AgentSpec, BatchOptions, InprocDriver, Kernel, TaskSpec};
use serde_json::Value;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `f` as a task on the runtime (where callers of the kernel live), not on the thread
/// that blocks on it.
async fn in_runtime<F>(f: F) -> Duration
where
    F: std::future::Future<Output = Duration> + Send + 'static,
{
    tokio::spawn(f).await.expect("benchmark task")
}

fn noop() -> InprocDriver {
    InprocDriver::new(|_| async { Ok(Value::Null) })
}

fn bench(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("kernel");
    g.measurement_time(Duration::from_secs(5));

    g.bench_function("spawn_inproc_agent", |b| {
        b.iter_custom(|iters| {
            rt.block_on(in_runtime(async move {
                let k = Kernel::builder().build().expect("kernel");
                let _events = k.subscribe(); // events are really built and sent
                let driver = noop().shared();
                let t0 = Instant::now();
                for _ in 0..iters {
                    k.spawn_agent(AgentSpec::new("w", driver.clone()))
                        .await
                        .expect("spawn");
                }
                t0.elapsed()
            }))
        })
    });

    g.bench_function("round_trip_noop_idle_agent", |b| {
        b.iter_custom(|iters| {
            rt.block_on(in_runtime(async move {
                let k = Kernel::builder().build().expect("kernel");
                k.spawn_agent(AgentSpec::new("w", noop().shared()))
                    .await
                    .expect("spawn");
                let t0 = Instant::now();
                for _ in 0..iters {
                    k.run(TaskSpec::for_role("w", Value::Null))
                        .await
                        .expect("run");
                }
                t0.elapsed()
            }))
        })
    });

    g.throughput(Throughput::Elements(10_000));
    g.sample_size(20);
    g.bench_function("noop_10k_over_8_agents_submit_all", |b| {
        b.iter_custom(|iters| {
            rt.block_on(in_runtime(async move {
                let k = Kernel::builder()
                    .queue_capacity(20_000)
                    .build()
                    .expect("kernel");
                for _ in 0..8 {
                    k.spawn_agent(AgentSpec::new("w", noop().shared()))
                        .await
                        .expect("spawn");
                }
                let t0 = Instant::now();
                for _ in 0..iters {
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
                }
                t0.elapsed()
            }))
        })
    });
    g.bench_function("noop_10k_over_8_agents_batch_c8", |b| {
        b.iter_custom(|iters| {
            rt.block_on(in_runtime(async move {
                let k = Kernel::builder()
                    .queue_capacity(20_000)
                    .build()
                    .expect("kernel");
                for _ in 0..8 {
                    k.spawn_agent(AgentSpec::new("w", noop().shared()))
                        .await
                        .expect("spawn");
                }
                let t0 = Instant::now();
                for _ in 0..iters {
                    let specs = (0..10_000)
                        .map(|_| TaskSpec::for_role("w", Value::Null))
                        .collect();
                    k.run_batch(specs, BatchOptions::new(8)).await;
                }
                t0.elapsed()
            }))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
