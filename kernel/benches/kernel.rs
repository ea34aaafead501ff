//! Kernel micro-benchmarks.
fn main() {}
