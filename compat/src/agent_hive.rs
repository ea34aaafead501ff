//! The agent-hive family of seed 002 (being built).
