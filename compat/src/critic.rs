//! The critic orchestrator of seed 000 (being built).
