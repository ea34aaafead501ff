//! The plan orchestrator of seed 001 (being built).
