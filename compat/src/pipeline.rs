//! The AI pipeline orchestrator of seed 003 (YAML pipelines with steps, `condition`,
//! `on_success`, `on_failure`, inputs/variables, checkpoint and resume), mapped onto Hive
//! plans: [`translate`] turns a pipeline into a plan (JSON you can read and keep, see
//! [`Translation::to_plan_json`]), and [`PipelineOrchestrator`] runs it durably on the plan
//! orchestrator ([`crate::plans::Orchestrator`]): every run is checkpointed in the state
//! directory as it goes, and [`PipelineOrchestrator::resume`] finishes an interrupted run
//! without running its succeeded steps again.
//!
//! The supported subset and its translation rules are in docs/compat/pipeline.md; anything
//! else is refused with its line and column, never guessed.

mod expr;
mod translate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hive_kernel::{Plan, PlanError};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::plans::{
    Orchestrator, OrchestratorBuilder, OrchestratorError, RunHandle, RunKind, RunStatus,
};

/// The class of a pipeline problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// Not valid YAML (or a duplicate key).
    Syntax,
    /// A legacy construct with no exact equivalent in a plan, or outside the subset.
    Unsupported,
    /// A value of the wrong type or out of range, or a missing field.
    Invalid,
    /// A step, input or output that does not exist or may not be read there.
    UnknownReference,
    /// Dependencies and goto routes that form a cycle.
    Cycle,
    /// A required input without a value.
    MissingInput,
}

/// One thing wrong with a pipeline, where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PipelineProblem {
    /// What class of problem.
    pub kind: ProblemKind,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// The field (`steps[2].on_failure`), empty for the whole file.
    pub field: String,
    /// What is wrong, and what would do.
    pub message: String,
}

impl PipelineProblem {
    /// `file:line:column: field: message`.
    pub fn render(&self, path: &Path) -> String {
        hive_kernel::render_problem(path, self.line, self.column, &self.field, &self.message)
    }
}

impl fmt::Display for PipelineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Path::new("pipeline")))
    }
}

fn show_problems(path: &Path, problems: &[PipelineProblem]) -> String {
    problems
        .iter()
        .map(|p| p.render(path))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a pipeline could not be translated or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The pipeline file could not be read.
    #[error("{}: cannot read pipeline: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pipeline has problems (every one, in file order).
    #[error("{}", show_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The problems.
        problems: Vec<PipelineProblem>,
    },
    /// The translated plan could not be written.
    #[error("{}: cannot write the translated plan: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel refused the translated plan (a gap in the translator's own checks).
    #[error("the translated plan was refused: {0}")]
    Plan(#[from] PlanError),
    /// Running it failed.
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// `resume` or `get_outputs` on a run that is not a pipeline's.
    #[error("run `{0}` is not a run of a pipeline")]
    NotAPipelineRun(String),
}

impl PipelineError {
    /// The located problems (empty for the other errors).
    pub fn problems(&self) -> &[PipelineProblem] {
        match self {
            PipelineError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// A declared input of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InputSpec {
    /// Its name (`{{ name }}`, `${name}`, `vars.name` in the plan).
    pub name: String,
    /// Its default (the plan's `vars`).
    pub default: Option<String>,
    /// Whether a run must give it.
    pub required: bool,
}

/// A pipeline translated into a plan.
#[derive(Debug, Clone)]
pub struct Translation {
    source: PathBuf,
    plan: Value,
    inputs: Vec<translate::Input>,
    positions: hive_kernel::Positions,
}

/// Reads and translates a pipeline file.
pub fn translate(path: impl AsRef<Path>) -> Result<Translation, PipelineError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    translate_str(&text, path)
}

/// Translates pipeline text; `path` names it in problems and in the plan's metadata.
pub fn translate_str(text: &str, path: impl AsRef<Path>) -> Result<Translation, PipelineError> {
    let path = path.as_ref();
    let t = translate::translate(text, path).map_err(|problems| PipelineError::Invalid {
        path: path.to_path_buf(),
        problems,
    })?;
    Ok(Translation {
        source: path.to_path_buf(),
        plan: t.plan,
        inputs: t.inputs,
        positions: t.positions,
    })
}

impl Translation {
    /// The pipeline file.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The plan's `plan_id` (the pipeline's `id`, else its `name`).
    pub fn plan_id(&self) -> &str {
        self.plan["plan_id"].as_str().unwrap_or("")
    }

    /// The plan, as JSON.
    pub fn plan_json(&self) -> &Value {
        &self.plan
    }

    /// The plan as a pretty JSON document (what `hive run` takes).
    pub fn to_plan_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.plan).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The declared inputs.
    pub fn inputs(&self) -> Vec<InputSpec> {
        self.inputs
            .iter()
            .map(|i| InputSpec {
                name: i.name.clone(),
                default: i.default.clone(),
                required: i.required,
            })
            .collect()
    }

    /// Checks run inputs: every required input given, none that is not declared.
    pub fn check_inputs(&self, given: &BTreeMap<String, String>) -> Result<(), PipelineError> {
        let mut problems = Vec::new();
        let mut push = |kind, field: &str, message: String| {
            let p = self.positions.find(field);
            problems.push(PipelineProblem {
                kind,
                line: p.map(|p| p.line),
                column: p.map(|p| p.col),
                field: field.to_string(),
                message,
            });
        };
        for i in &self.inputs {
            if i.required && !given.contains_key(&i.name) {
                push(
                    ProblemKind::MissingInput,
                    &i.field,
                    format!("input `{}` is required and has no default: give it", i.name),
                );
            }
        }
        for k in given.keys() {
            if !self.inputs.iter().any(|i| &i.name == k) {
                let declared: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
                push(
                    ProblemKind::UnknownReference,
                    "inputs",
                    format!(
                        "input `{k}` is not declared by the pipeline (declared: {})",
                        if declared.is_empty() {
                            "none".to_string()
                        } else {
                            declared.join(", ")
                        }
                    ),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PipelineError::Invalid {
                path: self.source.clone(),
                problems,
            })
        }
    }

    /// The plan as the kernel loads it, with `inputs` as its variables (checked first), as if
    /// its JSON were at `plan_path` (which names it in errors and sets `${PLAN_DIR}`).
    pub fn to_plan(
        &self,
        plan_path: impl AsRef<Path>,
        inputs: &BTreeMap<String, String>,
    ) -> Result<Plan, PipelineError> {
        self.check_inputs(inputs)?;
        Ok(Plan::parse(
            &self.to_plan_json(),
            plan_path.as_ref(),
            inputs,
        )?)
    }

    /// Writes the plan's JSON to `path` (for example next to the pipeline, to keep it and run
    /// it with `hive run`).
    pub fn write_plan(&self, path: impl AsRef<Path>) -> Result<(), PipelineError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_plan_json()).map_err(|source| PipelineError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Configures a [`PipelineOrchestrator`] (the same settings as the plan orchestrator's).
#[derive(Debug, Clone, Default)]
pub struct PipelineOrchestratorBuilder {
    inner: OrchestratorBuilder,
}

impl PipelineOrchestratorBuilder {
    /// The defaults of [`OrchestratorBuilder::new`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The state directory: where runs are checkpointed (and translated plans kept, in
    /// `compat/pipelines/`).
    pub fn state_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.inner.state_dir(dir);
        self
    }

    /// A `hive.toml` whose pools run the pipeline's tools (a step's role is its `tool`, else
    /// its `action`).
    pub fn config(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.inner.config(path);
        self
    }

    /// Steps in flight at once (wins over the pipeline's `max_concurrency`).
    pub fn max_concurrency(&mut self, n: u32) -> &mut Self {
        self.inner.max_concurrency(n);
        self
    }

    /// Where command steps run.
    pub fn workdir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.inner.workdir(dir);
        self
    }

    /// Loads the config and opens the state directory.
    pub fn build(&self) -> Result<PipelineOrchestrator, PipelineError> {
        Ok(PipelineOrchestrator {
            orch: self.inner.build()?,
        })
    }
}

/// The AI pipeline orchestrator (seed 003): runs YAML pipelines as durable Hive plans.
#[derive(Debug, Clone)]
pub struct PipelineOrchestrator {
    orch: Orchestrator,
}

impl PipelineOrchestrator {
    /// A builder.
    pub fn builder() -> PipelineOrchestratorBuilder {
        PipelineOrchestratorBuilder::new()
    }

    /// Runs pipelines on an existing plan orchestrator (same state directory and config).
    pub fn from_orchestrator(orchestrator: Orchestrator) -> Self {
        PipelineOrchestrator { orch: orchestrator }
    }

    /// The plan orchestrator underneath: `get_run_status`, `get_run_steps`, `get_run_events`,
    /// `list_runs` and the monitor read pipeline runs too.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    /// [`translate`].
    pub fn translate(&self, path: impl AsRef<Path>) -> Result<Translation, PipelineError> {
        translate(path)
    }

    /// Runs a pipeline to its end with `inputs` (the legacy `execute_pipeline(path,
    /// inputs)`) and returns the run id. A run that fails is not an error: its status says
    /// `failed`.
    pub async fn execute_pipeline<I, K, V>(
        &self,
        path: impl AsRef<Path>,
        inputs: I,
    ) -> Result<String, PipelineError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let handle = self.start_pipeline(path, inputs).await?;
        let id = handle.run_id().to_string();
        handle.wait_report().await?;
        Ok(id)
    }

    /// [`PipelineOrchestrator::execute_pipeline`] without waiting: returns once the run is on
    /// disk (so that it can be resumed if this process dies).
    pub async fn start_pipeline<I, K, V>(
        &self,
        path: impl AsRef<Path>,
        inputs: I,
    ) -> Result<RunHandle, PipelineError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let path = path.as_ref();
        let inputs: BTreeMap<String, String> = inputs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let t = translate(path)?;
        t.check_inputs(&inputs)?;
        let file = self.keep(&t)?;
        let plan = t.to_plan(&file, &inputs)?;
        let compat = serde_json::json!({
            "kind": "pipeline",
            "pipeline": {"id": t.plan_id(), "source": path.display().to_string()},
        });
        Ok(self
            .orch
            .start_loaded(Arc::new(plan), inputs, compat)
            .await?)
    }

    /// Writes the translated plan in the state directory, named by its content (a resume
    /// finds the very plan its run started with).
    fn keep(&self, t: &Translation) -> Result<PathBuf, PipelineError> {
        let text = t.to_plan_json();
        let hash = Plan::hash_of(text.as_bytes());
        let name: String = t
            .plan_id()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = self.orch.state_dir().join("compat").join("pipelines");
        let path = dir.join(format!("{name}-{}.json", hash.get(..16).unwrap_or(&hash)));
        if !path.exists() {
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&path, &text))
                .map_err(|source| PipelineError::Write {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(path)
    }

    fn pipeline_run(&self, run_id: &str) -> Result<hive_kernel::RunRecord, PipelineError> {
        let r = self
            .orch
            .store()
            .run(run_id)
            .map_err(OrchestratorError::from)?;
        if r.options["extra"]["compat"]["kind"] != "pipeline" {
            return Err(PipelineError::NotAPipelineRun(run_id.to_string()));
        }
        Ok(r)
    }

    /// Checkpoint/resume: finishes a pipeline run that was interrupted (its process killed,
    /// or cancelled) or failed. Succeeded steps are kept with their outputs and not run
    /// again; the others run again with the run's inputs. Returns the run's status at its
    /// end.
    pub async fn resume(&self, run_id: &str) -> Result<RunStatus, PipelineError> {
        self.pipeline_run(run_id)?;
        Ok(self.orch.resume_run(run_id).await?)
    }

    /// [`Orchestrator::get_run_status`] of a pipeline run.
    pub fn get_status(&self, run_id: &str) -> Result<RunStatus, PipelineError> {
        let s = self.orch.get_run_status(run_id)?;
        if s.kind != RunKind::Plan {
            return Err(PipelineError::NotAPipelineRun(run_id.to_string()));
        }
        Ok(s)
    }

    /// The pipeline's `outputs` (`name: "{{ step.key }}"`) of a run, read from its steps'
    /// outputs; a step that did not emit one (skipped, failed, not yet run) gives null.
    pub fn get_outputs(&self, run_id: &str) -> Result<Map<String, Value>, PipelineError> {
        let r = self.pipeline_run(run_id)?;
        let declared = r.metadata["pipeline"]["outputs"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let steps = self
            .orch
            .store()
            .steps(run_id)
            .map_err(OrchestratorError::from)?;
        let mut out = Map::new();
        for (name, d) in declared {
            let step = d["step"].as_str().unwrap_or("");
            let mut v = steps
                .iter()
                .find(|s| s.step_id == step)
                .and_then(|s| s.outputs.clone())
                .unwrap_or(Value::Null);
            for seg in d["path"].as_array().into_iter().flatten() {
                let seg = seg.as_str().unwrap_or("");
                v = match &v {
                    Value::Object(m) => m.get(seg).cloned().unwrap_or(Value::Null),
                    Value::Array(a) => seg
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| a.get(i).cloned())
                        .unwrap_or(Value::Null),
                    _ => Value::Null,
                };
            }
            out.insert(name, v);
        }
        Ok(out)
    }
}
