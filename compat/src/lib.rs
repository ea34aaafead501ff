//! Drop-in facades for the legacy orchestrators described in `../shared/seeds/`: the same
//! names and the same semantics, each mapped onto one Hive kernel plus a bundle of plugins, so
//! that a caller switches by changing an import. docs/migration.md puts every legacy call
//! beside its Hive call.
//!
//! - [`critic`]: `OrchestratorV2::run_all` over named critics with pre/post/failure hooks
//!   (seed 000).
//! - [`tools`]: `execute_parallel` / `execute_graph` with `TaskSpec`, `OrchestrationPolicy`
//!   and `OrchestrationResult` (seed 004).
//! - [`plans`]: the plan orchestrator's `execute_plan`, run records and monitor (seed 001).
//! - [`pipeline`]: the AI pipeline orchestrator's YAML pipelines, mapped onto plans (seed 003).
//! - [`agent_hive`]: the agent-hive family (`AgentOrchestrator`, `ProductionOrchestrator`, ...)
//!   and `create_orchestrator_from_legacy` (seed 002).

pub mod agent_hive;
pub mod critic;
pub mod pipeline;
pub mod plans;
pub mod tools;
