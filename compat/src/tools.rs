//! The tools orchestrator of seed 004 (being built).
