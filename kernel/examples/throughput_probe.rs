//! Throughput probe for profiling: 10,000 no-op inproc tasks over 8 agents, repeated.
//! Run: `cargo run --release -p hive-kernel --example throughput_probe -- [ROUNDS]`.

use std::time::Instant;

use hive_kernel::{AgentSpec, InprocDriver, Kernel, TaskSpec};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::Value;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::spawn(async move {
            let k = Kernel::builder()
                .queue_capacity(20_000)
                .build()
                .expect("kernel");
            let noop = InprocDriver::new(|_| async { Ok(Value::Null) }).shared();
            for _ in 0..8 {
                k.spawn_agent(AgentSpec::new("w", noop.clone()))
                    .await
                    .expect("spawn");
            }
            let t0 = Instant::now();
            for _ in 0..rounds {
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
            let n = rounds * 10_000;
            println!("{:.0} tasks/s", n as f64 / t0.elapsed().as_secs_f64());
        })
        .await
        .expect("probe");
    });
}
