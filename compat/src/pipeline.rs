//! The AI pipeline orchestrator of seed 003 (being built).
