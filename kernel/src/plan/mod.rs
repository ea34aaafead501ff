//! Plans: the legacy plan orchestrator's JSON plans (seed 001) as a superset, in JSON, YAML
//! or TOML. Loading reads the file, substitutes `${VAR}` variables, checks every field and
//! the graph (unknown fields, types, enum values, duplicate ids, unknown dependencies,
//! cycles, references), and resolves it into a [`Plan`] ready to run. Every problem names the
//! file, the field and, where the format gives it, the line and column.

mod expr;
mod resolve;
mod schema;
mod source;
mod template;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::task::RetryPolicy;

pub(crate) use expr::{Expr, StepView};
pub(crate) use schema::kind as kind_of;
pub use schema::OnFailure;
pub use source::{
    element as path_element, member as path_member, parse_yaml, Pos, Positions, SyntaxError,
};
pub(crate) use template::{lookup, Ref, Template, ValueTemplate};

/// The kind of a plan problem (one per validation error class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Not valid JSON, YAML or TOML (or a duplicate key).
    Syntax,
    /// A field the schema does not know.
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// A value of the wrong type.
    WrongType,
    /// A value of the right type that is not acceptable (enum word, range, empty, ...).
    BadValue,
    /// Two steps with the same id.
    DuplicateId,
    /// `depends_on` names no step.
    UnknownDependency,
    /// The dependencies form a cycle.
    Cycle,
    /// `${VAR}` names no variable.
    UnknownVariable,
    /// A reference (`${steps...}`, `${item}`, `when`) that cannot be satisfied.
    BadReference,
}

/// One thing wrong with a plan.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Problem {
    /// What class of problem.
    pub kind: ProblemKind,
    /// 1-based line, where the format gives it.
    pub line: Option<usize>,
    /// 1-based column, where the format gives it.
    pub column: Option<usize>,
    /// The field (`steps[2].depends_on[0]`), empty for the whole file.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The file could not be read.
    #[error("{}: cannot read plan: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The extension is not one of .json, .yaml, .yml, .toml.
    #[error("{}: unknown plan format (expected a .json, .yaml, .yml or .toml file)", path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The plan has problems (at least one).
    #[error("{}", show_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl PlanError {
    /// The problems (empty for read and format errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            PlanError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn show_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&p.render(path));
    }
    out
}

impl Problem {
    /// `file:line:col: field: message`.
    pub fn render(&self, path: &Path) -> String {
        render_problem(path, self.line, self.column, &self.field, &self.message)
    }
}

/// `file:line:col: field: message`, leaving out what is unknown: how a problem in a file of
/// the user's is shown (plans here, and any reader that locates its problems the same way).
pub fn render_problem(
    path: &Path,
    line: Option<usize>,
    column: Option<usize>,
    field: &str,
    message: &str,
) -> String {
    let mut s = path.display().to_string();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
        if let Some(c) = column {
            s.push_str(&format!(":{c}"));
        }
    }
    s.push_str(": ");
    if !field.is_empty() {
        s.push_str(field);
        s.push_str(": ");
    }
    s.push_str(message);
    s
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Path::new("plan")))
    }
}

/// What a step does.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// A command (on the local process agent, or on a process pool of `role`).
    Command {
        command: Template,
        args: Vec<Template>,
        env: Vec<(String, Template)>,
        cwd: Option<Template>,
    },
    /// A JSON task for an agent of `role`.
    Task(ValueTemplate),
}

/// Where a `for_each` gets its items.
#[derive(Debug, Clone)]
pub(crate) enum ForEach {
    Items(Vec<Value>),
    From { step: Arc<str>, path: Vec<String> },
}

/// `cache` of a step.
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheSpec {
    pub(crate) inputs: Vec<Template>,
    pub(crate) key: Option<String>,
}

/// One resolved step.
#[derive(Debug, Clone)]
pub(crate) struct PlanStep {
    pub(crate) id: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) action: Action,
    pub(crate) role: Option<Arc<str>>,
    pub(crate) deps: Vec<usize>,
    pub(crate) dependents: Vec<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    pub(crate) critical: bool,
    pub(crate) on_failure: OnFailure,
    pub(crate) when: Option<Box<(String, Expr)>>,
    pub(crate) outputs: Option<Vec<String>>,
    pub(crate) for_each: Option<Box<ForEach>>,
    pub(crate) cache: Option<Box<CacheSpec>>,
}

/// A plan, loaded and checked: ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) path: PathBuf,
    pub(crate) hash: String,
    pub(crate) plan_id: String,
    pub(crate) version: String,
    pub(crate) description: Option<String>,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) metadata: Value,
    pub(crate) vars: BTreeMap<String, String>,
    pub(crate) steps: Vec<PlanStep>,
    pub(crate) index: HashMap<Arc<str>, usize>,
}

impl Plan {
    /// Reads and checks a plan file; `vars` are the `--var K=V` values.
    pub fn load(path: &Path, vars: &BTreeMap<String, String>) -> Result<Plan, PlanError> {
        let bytes = std::fs::read(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| PlanError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                kind: ProblemKind::Syntax,
                line: None,
                column: None,
                field: String::new(),
                message: format!("not UTF-8 text: {e}"),
            }],
        })?;
        Self::parse(&text, path, vars)
    }

    /// Checks plan text; `path` names it in errors, gives its format (by extension) and its
    /// directory (`${PLAN_DIR}`).
    pub fn parse(
        text: &str,
        path: &Path,
        vars: &BTreeMap<String, String>,
    ) -> Result<Plan, PlanError> {
        let format = source::Format::of(path).ok_or_else(|| PlanError::Format {
            path: path.to_path_buf(),
        })?;
        resolve::resolve(text, path, format, vars)
    }

    /// The SHA-256 of a plan file's bytes, as `hive resume` compares it.
    pub fn hash_of(text: &[u8]) -> String {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(text))
    }

    /// The JSON Schema (draft-07) of plan files, for editors.
    pub fn json_schema() -> Value {
        schema::json_schema()
    }

    /// `plan_id`.
    pub fn id(&self) -> &str {
        &self.plan_id
    }

    /// `version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `description`.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SHA-256 of the file's bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// `globals.default_timeout_sec`.
    pub fn default_timeout(&self) -> Option<Duration> {
        self.default_timeout
    }

    /// `globals.max_concurrency`.
    pub fn max_concurrency(&self) -> Option<u32> {
        self.max_concurrency
    }

    /// Step ids in file order.
    pub fn step_ids(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().map(|s| &*s.id)
    }

    /// The number of steps (before `for_each` fans out).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it has no step (never true for a loaded plan).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The roles its steps name (their pools must exist).
    pub fn roles(&self) -> Vec<&str> {
        let mut r: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| s.role.as_deref())
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// Whether some step runs a command without a role (on the local process agent).
    pub fn has_local_commands(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.role.is_none() && matches!(s.action, Action::Command { .. }))
    }

    /// The variables in effect (the plan's defaults, the given ones, `PLAN_DIR`).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// `metadata`.
    pub fn metadata(&self) -> &Value {
        &self.metadata
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
