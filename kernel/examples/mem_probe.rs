//! Memory probe: resident memory per idle inproc agent, from 10,000 agents spawned into one
//! kernel (VmRSS before and after). Run: `cargo run --release -p hive-kernel --example mem_probe`.

/// mimalloc: far less contention than glibc malloc across worker threads (see
/// BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use hive_kernel::{AgentSpec, InprocDriver, Kernel};
use serde_json::Value;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let k = Kernel::builder().build().expect("kernel");
        let noop = InprocDriver::new(|_| async { Ok(Value::Null) }).shared();
        // Warm the allocator and the maps with a first batch, measure the next.
        for _ in 0..1_000 {
            k.spawn_agent(AgentSpec::new("warm", noop.clone())).await.expect("spawn");
        }
        let n = 10_000u64;
        let before = rss_kib();
        for _ in 0..n {
            k.spawn_agent(AgentSpec::new("idle", noop.clone())).await.expect("spawn");
        }
        let after = rss_kib();
        let h = k.health();
        assert_eq!(h.roles["idle"].agents as u64, n);
        println!(
            "idle_inproc_agents: {n} agents, RSS {before} KiB -> {after} KiB, {:.0} bytes per agent",
            (after.saturating_sub(before) * 1024) as f64 / n as f64
        );
    });
}
