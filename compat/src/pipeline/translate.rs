//! The translation of a legacy YAML pipeline into a Hive plan (JSON): inputs become `vars`,
//! steps become plan steps (a command, or a task for an agent of the tool's role), `condition`
//! becomes `when`, the `on_success` / `on_failure` / `on_false` routes become `on_failure`,
//! `critical`, `retries`, extra `depends_on` edges and `when` triggers. Every construct
//! outside the subset (docs/compat/pipeline.md) is refused with its line and column.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde_json::{json, Map, Value};

use super::expr::{self, Scope};
use super::{PipelineProblem, ProblemKind};
use hive_kernel::{parse_yaml, path_element as element, path_member as member, Positions};

/// Top-level keys of the subset.
const TOP_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "version",
    "inputs",
    "parameters",
    "variables",
    "steps",
    "outputs",
    "checkpoint",
    "max_concurrency",
    "metadata",
];

/// Step keys of the subset.
const STEP_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "command",
    "args",
    "env",
    "cwd",
    "action",
    "tool",
    "role",
    "parameters",
    "depends_on",
    "dependencies",
    "condition",
    "if",
    "on_success",
    "on_failure",
    "on_false",
    "timeout",
    "timeout_sec",
    "max_retries",
    "retries",
    "retry_delay",
    "retry_delay_sec",
    "outputs",
    "metadata",
];

/// Legacy keys with no exact equivalent, and why.
fn unsupported_why(key: &str) -> Option<&'static str> {
    Some(match key {
        "for_each" | "foreach" | "loop" | "while" | "until" | "max_iterations" => {
            "loops have no equivalent in the pipeline subset (Hive's `for_each` fans a step out over a list: write the plan by hand)"
        }
        "on_error" | "global_error_handlers" => {
            "error handlers (error types, patterns, fallback values) have no exact equivalent: use `on_failure` (continue, fail, skip, retry N, goto STEP)"
        }
        "model" | "requires_model" | "models" | "experts" | "expert" | "personality"
        | "personalities" | "selection_schema" => {
            "model selection has no equivalent: a step runs on an agent of its role (`tool`, else `action`), which picks its model"
        }
        "produces" | "location" => {
            "product files have no equivalent: let the step write its file and declare `outputs`"
        }
        "cache" | "cache_results" => "caching is not part of the pipeline subset (Hive plans have `cache`: translate, then add it)",
        _ => return None,
    })
}

/// A declared input.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) name: String,
    pub(crate) default: Option<String>,
    pub(crate) required: bool,
    pub(crate) field: String,
}

/// A translated pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Translated {
    pub(crate) plan: Value,
    pub(crate) inputs: Vec<Input>,
    pub(crate) positions: Positions,
}

/// What a failed step does once its retries are spent.
#[derive(Debug, Clone, PartialEq)]
enum FailRoute {
    Fail,
    Continue,
    Skip,
    Goto(String),
}

/// Why a goto target runs.
#[derive(Debug, Clone)]
enum Trigger {
    Failed(String),
    Succeeded(String),
    False(String),
}

impl Trigger {
    fn text(&self) -> String {
        match self {
            Trigger::Failed(s) => {
                format!("steps.{s}.status == 'failed' || steps.{s}.status == 'timed_out'")
            }
            Trigger::Succeeded(s) => format!("steps.{s}.status == 'succeeded'"),
            Trigger::False(s) => format!("steps.{s}.status == 'skipped'"),
        }
    }

    fn source(&self) -> &str {
        match self {
            Trigger::Failed(s) | Trigger::Succeeded(s) | Trigger::False(s) => s,
        }
    }
}

/// A step after the first pass.
#[derive(Debug, Default)]
struct Step {
    id: String,
    at: String,
    map: Map<String, Value>,
    deps: Vec<String>,
    outputs: Vec<String>,
    outputs_map: Option<Map<String, Value>>,
    retries: Option<u32>,
    fail: Option<FailRoute>,
    success_goto: Option<String>,
    false_goto: Option<String>,
    condition: Option<(String, String)>,
    triggers: Vec<Trigger>,
}

struct Cx<'a> {
    pos: &'a Positions,
    problems: Vec<PipelineProblem>,
}

impl Cx<'_> {
    fn push(&mut self, kind: ProblemKind, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        let p = self.pos.find(&field);
        self.problems.push(PipelineProblem {
            kind,
            line: p.map(|p| p.line),
            column: p.map(|p| p.col),
            field,
            message: message.into(),
        });
    }

    fn string(&mut self, v: &Value, field: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.push(
                    ProblemKind::Invalid,
                    field,
                    format!("expected a string, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn scalar(&mut self, v: &Value, field: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.push(
                    ProblemKind::Invalid,
                    field,
                    format!(
                        "expected a string, number or boolean, found {}",
                        kind_of(other)
                    ),
                );
                None
            }
        }
    }

    fn count(&mut self, v: &Value, field: &str) -> Option<u32> {
        match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                self.push(
                    ProblemKind::Invalid,
                    field,
                    format!("expected a whole number >= 0, found {v}"),
                );
                None
            }
        }
    }

    fn seconds(&mut self, v: &Value, field: &str, allow_zero: bool) -> Option<f64> {
        match v.as_f64() {
            Some(s) if s.is_finite() && (s > 0.0 || (allow_zero && s == 0.0)) => Some(s),
            _ => {
                self.push(
                    ProblemKind::Invalid,
                    field,
                    format!(
                        "expected a {} number of seconds, found {v}",
                        if allow_zero {
                            "non-negative"
                        } else {
                            "positive"
                        }
                    ),
                );
                None
            }
        }
    }

    fn names(&mut self, v: &Value, field: &str) -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, x)| self.string(x, &element(field, i)))
                .collect(),
            other => {
                self.push(
                    ProblemKind::Invalid,
                    field,
                    format!(
                        "expected a step id or a list of them, found {}",
                        kind_of(other)
                    ),
                );
                Vec::new()
            }
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_var(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `goto X` (a string) or `{goto: X}`.
fn goto_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s
            .trim()
            .strip_prefix("goto")
            .filter(|r| r.starts_with(char::is_whitespace))
            .map(|r| r.trim().to_string()),
        Value::Object(m) if m.len() == 1 => {
            m.get("goto").and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    }
}

/// Translates pipeline text (`path` names it in problems and is recorded as the source).
pub(crate) fn translate(text: &str, path: &Path) -> Result<Translated, Vec<PipelineProblem>> {
    let (doc, positions) = parse_yaml(text).map_err(|e| {
        vec![PipelineProblem {
            kind: ProblemKind::Syntax,
            line: e.pos.map(|p| p.line),
            column: e.pos.map(|p| p.col),
            field: String::new(),
            message: e.message,
        }]
    })?;
    let mut cx = Cx {
        pos: &positions,
        problems: Vec::new(),
    };
    let plan = translate_doc(&doc, path, &mut cx);
    let mut problems = cx.problems;
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        return Err(problems);
    }
    let (plan, inputs) = plan.ok_or_else(|| {
        vec![PipelineProblem {
            kind: ProblemKind::Invalid,
            line: None,
            column: None,
            field: String::new(),
            message: "the pipeline could not be translated".into(),
        }]
    })?;
    Ok(Translated {
        plan,
        inputs,
        positions,
    })
}

fn translate_doc(doc: &Value, path: &Path, cx: &mut Cx<'_>) -> Option<(Value, Vec<Input>)> {
    let Some(top) = doc.as_object() else {
        cx.push(
            ProblemKind::Invalid,
            "",
            format!(
                "a pipeline is a mapping (id, inputs, steps...), found {}",
                kind_of(doc)
            ),
        );
        return None;
    };
    for k in top.keys() {
        if let Some(why) = unsupported_why(k) {
            cx.push(
                ProblemKind::Unsupported,
                k.as_str(),
                format!("`{k}`: {why}"),
            );
        } else if !TOP_KEYS.contains(&k.as_str()) {
            cx.push(
                ProblemKind::Unsupported,
                k.as_str(),
                format!(
                    "`{k}` is not part of the supported pipeline subset (top-level keys: {})",
                    TOP_KEYS.join(", ")
                ),
            );
        }
    }
    let id = match (top.get("id"), top.get("name")) {
        (Some(v), _) => cx.string(v, "id"),
        (None, Some(v)) => cx.string(v, "name"),
        (None, None) => {
            cx.push(
                ProblemKind::Invalid,
                "",
                "a pipeline needs an `id` (or a `name`): it becomes the plan_id",
            );
            None
        }
    };
    let name = top.get("name").and_then(|v| cx.string(v, "name"));
    let description = top
        .get("description")
        .and_then(|v| cx.string(v, "description"));
    let version = top
        .get("version")
        .and_then(|v| cx.scalar(v, "version"))
        .unwrap_or_else(|| "1".into());
    if let Some(c) = top.get("checkpoint") {
        if !c.is_boolean() {
            cx.push(
                ProblemKind::Invalid,
                "checkpoint",
                "expected true or false (every Hive run is checkpointed: it is durable and resumable either way)",
            );
        }
    }
    let max_concurrency = top
        .get("max_concurrency")
        .and_then(|v| cx.count(v, "max_concurrency"));
    if max_concurrency == Some(0) {
        cx.push(
            ProblemKind::Invalid,
            "max_concurrency",
            "expected at least 1",
        );
    }

    // Inputs.
    let mut inputs: Vec<Input> = Vec::new();
    for section in ["inputs", "parameters", "variables"] {
        let Some(v) = top.get(section) else { continue };
        let Some(m) = v.as_object() else {
            cx.push(
                ProblemKind::Invalid,
                section,
                format!("expected a mapping of input names, found {}", kind_of(v)),
            );
            continue;
        };
        for (name, decl) in m {
            let field = member(section, name);
            if !valid_var(name) {
                cx.push(
                    ProblemKind::Invalid,
                    &field,
                    format!("`{name}` is not a variable name (letters, digits and `_`, not starting with a digit)"),
                );
                continue;
            }
            if expr::BUILTIN_VARS.contains(&name.as_str()) {
                cx.push(
                    ProblemKind::Invalid,
                    &field,
                    format!("`{name}` is a built-in variable"),
                );
                continue;
            }
            if inputs.iter().any(|i| &i.name == name) {
                cx.push(
                    ProblemKind::Invalid,
                    &field,
                    format!("input `{name}` is declared twice"),
                );
                continue;
            }
            let (default, required) = match decl {
                Value::Object(d) => {
                    for k in d.keys() {
                        if !matches!(k.as_str(), "type" | "description" | "default" | "required") {
                            cx.push(
                                ProblemKind::Unsupported,
                                member(&field, k),
                                format!(
                                    "`{k}`: an input has type, description, default and required"
                                ),
                            );
                        }
                    }
                    let default = match d.get("default") {
                        None | Some(Value::Null) => None,
                        Some(v) => cx.scalar(v, &member(&field, "default")),
                    };
                    if let Some(r) = d.get("required").filter(|r| !r.is_boolean()) {
                        cx.push(
                            ProblemKind::Invalid,
                            member(&field, "required"),
                            format!("expected true or false, found {r}"),
                        );
                    }
                    // Required unless it has a default or says `required: false` (then its
                    // default is the empty string).
                    match default {
                        Some(v) => (Some(v), false),
                        None if d.get("required") == Some(&Value::Bool(false)) => {
                            (Some(String::new()), false)
                        }
                        None => (None, true),
                    }
                }
                Value::Null => (None, true),
                other => (cx.scalar(other, &field), false),
            };
            inputs.push(Input {
                name: name.clone(),
                default,
                required,
                field,
            });
        }
    }
    let input_names: BTreeSet<String> = inputs.iter().map(|i| i.name.clone()).collect();

    // Steps, first pass: ids, dependencies, outputs, routes.
    let Some(raw_steps) = top.get("steps") else {
        cx.push(ProblemKind::Invalid, "", "a pipeline needs `steps`");
        return None;
    };
    let Some(raw_steps) = raw_steps.as_array() else {
        cx.push(
            ProblemKind::Invalid,
            "steps",
            format!("expected a list of steps, found {}", kind_of(raw_steps)),
        );
        return None;
    };
    if raw_steps.is_empty() {
        cx.push(
            ProblemKind::Invalid,
            "steps",
            "a pipeline needs at least one step",
        );
        return None;
    }
    let mut steps: Vec<Step> = Vec::with_capacity(raw_steps.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, raw) in raw_steps.iter().enumerate() {
        let at = element("steps", i);
        let Some(map) = raw.as_object() else {
            cx.push(
                ProblemKind::Invalid,
                &at,
                format!(
                    "expected a step (a mapping with an `id`), found {}",
                    kind_of(raw)
                ),
            );
            continue;
        };
        let mut s = first_pass(map, &at, &input_names, cx);
        if s.id.is_empty() {
            continue;
        }
        if let Some(&first) = index.get(&s.id) {
            cx.push(
                ProblemKind::Invalid,
                member(&at, "id"),
                format!(
                    "duplicate step id `{}` (first used by steps[{first}])",
                    s.id
                ),
            );
            continue;
        }
        s.at = at;
        index.insert(s.id.clone(), steps.len());
        steps.push(s);
    }

    // Explicit dependencies exist; ancestors over them (for the goto checks).
    for s in &steps {
        for (j, d) in s.deps.iter().enumerate() {
            if !index.contains_key(d) {
                cx.push(
                    ProblemKind::UnknownReference,
                    element(&member(&s.at, "depends_on"), j),
                    format!("`depends_on`: no step has id `{d}`"),
                );
            } else if d == &s.id {
                cx.push(
                    ProblemKind::Invalid,
                    element(&member(&s.at, "depends_on"), j),
                    format!("step `{d}` depends on itself"),
                );
            }
        }
    }
    if !cx.problems.is_empty() {
        return None;
    }
    let explicit_anc = ancestors_or_cycle(&steps, &index, cx)?;

    // Routes: goto targets get a dependency on their source and a trigger.
    for si in 0..steps.len() {
        let routes: Vec<(String, &str, Trigger)> = {
            let s = &steps[si];
            let mut r = Vec::new();
            if let Some(FailRoute::Goto(x)) = &s.fail {
                r.push((x.clone(), "on_failure", Trigger::Failed(s.id.clone())));
            }
            if let Some(x) = &s.success_goto {
                r.push((x.clone(), "on_success", Trigger::Succeeded(s.id.clone())));
            }
            if let Some(x) = &s.false_goto {
                r.push((x.clone(), "on_false", Trigger::False(s.id.clone())));
            }
            r
        };
        for (target, key, trigger) in routes {
            let field = member(&steps[si].at, key);
            let Some(&ti) = index.get(&target) else {
                cx.push(
                    ProblemKind::UnknownReference,
                    field,
                    format!("`goto {target}`: no step has id `{target}`"),
                );
                continue;
            };
            if ti == si || explicit_anc[si].contains(&ti) {
                cx.push(
                    ProblemKind::Unsupported,
                    field,
                    format!(
                        "`goto {target}` jumps back to {}: a loop has no equivalent in a plan (a DAG)",
                        if ti == si {
                            "the step itself".to_string()
                        } else {
                            format!("`{target}`, which `{}` depends on", steps[si].id)
                        }
                    ),
                );
                continue;
            }
            let source = steps[si].id.clone();
            let t = &mut steps[ti];
            if !t.deps.contains(&source) {
                t.deps.push(source);
            }
            t.triggers.push(trigger);
        }
    }
    // `on_success: goto X` jumps over the source's other dependents: refused (in a DAG they
    // would still run).
    for s in &steps {
        let Some(target) = &s.success_goto else {
            continue;
        };
        let skipped: Vec<&str> = steps
            .iter()
            .filter(|d| {
                &d.id != target
                    && d.map
                        .get("depends_on")
                        .or_else(|| d.map.get("dependencies"))
                        .is_some_and(|v| names_of(v).iter().any(|n| n == &s.id))
                    && !d.triggers.iter().any(|t| t.source() == s.id)
            })
            .map(|d| d.id.as_str())
            .collect();
        if !skipped.is_empty() {
            cx.push(
                ProblemKind::Unsupported,
                member(&s.at, "on_success"),
                format!(
                    "`goto {target}` on success would jump over {} (which depend{} on `{}`); in a plan they would still run. Make them depend on `{target}` instead",
                    skipped.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", "),
                    if skipped.len() == 1 { "s" } else { "" },
                    s.id
                ),
            );
        }
    }
    if !cx.problems.is_empty() {
        return None;
    }
    let anc = ancestors_or_cycle(&steps, &index, cx)?;

    // Second pass: templates, conditions, the plan steps.
    let outputs: BTreeMap<String, Vec<String>> = steps
        .iter()
        .map(|s| (s.id.clone(), s.outputs.clone()))
        .collect();
    let mut uses_pipeline_dir = false;
    let mut plan_steps = Vec::with_capacity(steps.len());
    for (si, s) in steps.iter().enumerate() {
        let ancestors: HashSet<String> = anc[si].iter().map(|&a| steps[a].id.clone()).collect();
        let scope = Scope {
            inputs: &input_names,
            outputs: &outputs,
            ancestors: &ancestors,
            reader: &s.id,
        };
        let step = second_pass(s, &scope, cx, &mut uses_pipeline_dir);
        plan_steps.push(step);
    }

    // Pipeline outputs: `name: "{{ step.key }}"`, read back from the run by get_outputs.
    let mut pipeline_outputs = Map::new();
    if let Some(v) = top.get("outputs") {
        match v.as_object() {
            None => cx.push(
                ProblemKind::Invalid,
                "outputs",
                format!(
                    "expected a mapping of output names to `{{{{ step.key }}}}`, found {}",
                    kind_of(v)
                ),
            ),
            Some(m) => {
                let all: HashSet<String> = steps.iter().map(|s| s.id.clone()).collect();
                let scope = Scope {
                    inputs: &input_names,
                    outputs: &outputs,
                    ancestors: &all,
                    reader: "the pipeline's outputs",
                };
                for (name, t) in m {
                    let field = member("outputs", name);
                    let Some(text) = cx.string(t, &field) else {
                        continue;
                    };
                    match expr::template(&text, &scope) {
                        Ok(r) => match single_output_ref(&r) {
                            Some((step, path)) => {
                                pipeline_outputs
                                    .insert(name.clone(), json!({"step": step, "path": path}));
                            }
                            None => cx.push(
                                ProblemKind::Unsupported,
                                &field,
                                "a pipeline output is one `{{ step.key }}` reference (anything else has no equivalent)",
                            ),
                        },
                        Err(e) => cx.push(kind_for(&e), &field, e),
                    }
                }
            }
        }
    }
    if !cx.problems.is_empty() {
        return None;
    }

    // The plan.
    let id = id?;
    let mut plan = Map::new();
    plan.insert("plan_id".into(), json!(id));
    plan.insert("version".into(), json!(version));
    if let Some(d) = description.clone().or_else(|| name.clone()) {
        plan.insert("description".into(), json!(d));
    }
    if let Some(n) = max_concurrency {
        plan.insert("globals".into(), json!({"max_concurrency": n}));
    }
    let mut vars = Map::new();
    for i in &inputs {
        if let Some(d) = &i.default {
            vars.insert(i.name.clone(), json!(d));
        }
    }
    if uses_pipeline_dir {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        vars.insert("PIPELINE_DIR".into(), json!(dir.display().to_string()));
    }
    if !vars.is_empty() {
        plan.insert("vars".into(), Value::Object(vars));
    }
    let mut meta = match top.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            cx.push(
                ProblemKind::Invalid,
                "metadata",
                format!("expected a mapping, found {}", kind_of(other)),
            );
            Map::new()
        }
        None => Map::new(),
    };
    let mut pipeline_meta = Map::new();
    pipeline_meta.insert("id".into(), json!(id));
    if let Some(n) = &name {
        pipeline_meta.insert("name".into(), json!(n));
    }
    pipeline_meta.insert("source".into(), json!(path.display().to_string()));
    let decl: Map<String, Value> = inputs
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                json!({"required": i.required, "default": i.default}),
            )
        })
        .collect();
    pipeline_meta.insert("inputs".into(), Value::Object(decl));
    if !pipeline_outputs.is_empty() {
        pipeline_meta.insert("outputs".into(), Value::Object(pipeline_outputs));
    }
    meta.insert("pipeline".into(), Value::Object(pipeline_meta));
    plan.insert("metadata".into(), Value::Object(meta));
    plan.insert("steps".into(), Value::Array(plan_steps));
    if !cx.problems.is_empty() {
        return None;
    }
    Some((Value::Object(plan), inputs))
}

fn names_of(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// `${steps.ID.outputs.K...}` alone -> (ID, [K...]).
fn single_output_ref(t: &str) -> Option<(String, Vec<String>)> {
    let body = t.strip_prefix("${steps.")?.strip_suffix('}')?;
    if body.contains(['$', '{', '}']) {
        return None;
    }
    let (step, rest) = body.split_once(".outputs.")?;
    Some((
        step.to_string(),
        rest.split('.').map(str::to_string).collect(),
    ))
}

fn kind_for(message: &str) -> ProblemKind {
    if message.contains("no step has id")
        || message.contains("not a declared input")
        || message.contains("neither a declared input")
        || message.contains("unknown variable")
        || message.contains("does not depend on it")
        || message.contains("declares")
    {
        ProblemKind::UnknownReference
    } else if message.contains("no equivalent") {
        ProblemKind::Unsupported
    } else {
        ProblemKind::Invalid
    }
}

/// Transitive dependencies of every step (by its `deps`), or None after reporting a cycle.
fn ancestors_or_cycle(
    steps: &[Step],
    index: &HashMap<String, usize>,
    cx: &mut Cx<'_>,
) -> Option<Vec<BTreeSet<usize>>> {
    let graph: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| {
            s.deps
                .iter()
                .filter_map(|d| index.get(d).copied())
                .collect()
        })
        .collect();
    let anc = ancestors(&graph);
    if anc.is_none() {
        report_cycle(steps, &graph, cx);
    }
    anc
}

/// Transitive dependencies of every node, or None if the graph has a cycle.
fn ancestors(deps: &[Vec<usize>]) -> Option<Vec<BTreeSet<usize>>> {
    let n = deps.len();
    let mut order = Vec::with_capacity(n);
    let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            indeg[d] -= 1;
            if indeg[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() != n {
        return None;
    }
    let mut anc: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for &i in &order {
        let mut set = BTreeSet::new();
        for &d in &deps[i] {
            set.insert(d);
            set.extend(anc[d].iter().copied());
        }
        anc[i] = set;
    }
    Some(anc)
}

fn report_cycle(steps: &[Step], deps: &[Vec<usize>], cx: &mut Cx<'_>) {
    // Depth-first search for a back edge.
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        color: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        color[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            if color[d] == 1 {
                let start = stack.iter().position(|&x| x == d).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(d);
                return Some(cycle);
            }
            if color[d] == 0 {
                if let Some(c) = visit(d, deps, color, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        color[i] = 2;
        None
    }
    let mut color = vec![0u8; steps.len()];
    for i in 0..steps.len() {
        if color[i] == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(i, deps, &mut color, &mut stack) {
                let path: Vec<&str> = c.iter().rev().map(|&x| steps[x].id.as_str()).collect();
                let first = c[0];
                cx.push(
                    ProblemKind::Cycle,
                    member(&steps[first].at, "depends_on"),
                    format!(
                        "the steps form a cycle (dependencies and goto routes): {}",
                        path.join(" -> ")
                    ),
                );
                return;
            }
        }
    }
}

fn first_pass(
    map: &Map<String, Value>,
    at: &str,
    inputs: &BTreeSet<String>,
    cx: &mut Cx<'_>,
) -> Step {
    let mut s = Step {
        map: map.clone(),
        ..Step::default()
    };
    for k in map.keys() {
        let field = member(at, k);
        if let Some(why) = unsupported_why(k) {
            cx.push(ProblemKind::Unsupported, field, format!("`{k}`: {why}"));
        } else if !STEP_KEYS.contains(&k.as_str()) {
            cx.push(
                ProblemKind::Unsupported,
                field,
                format!(
                    "`{k}` is not part of the supported pipeline subset (step keys: {})",
                    STEP_KEYS.join(", ")
                ),
            );
        }
    }
    for (a, b) in [
        ("depends_on", "dependencies"),
        ("condition", "if"),
        ("timeout", "timeout_sec"),
        ("max_retries", "retries"),
        ("retry_delay", "retry_delay_sec"),
    ] {
        if map.contains_key(a) && map.contains_key(b) {
            cx.push(
                ProblemKind::Invalid,
                member(at, b),
                format!("`{a}` and `{b}` are the same setting: give one"),
            );
        }
    }
    match map.get("id") {
        None => cx.push(ProblemKind::Invalid, at, "a step needs an `id`"),
        Some(v) => {
            if let Some(id) = cx.string(v, &member(at, "id")) {
                if !valid_id(&id) {
                    cx.push(
                        ProblemKind::Invalid,
                        member(at, "id"),
                        format!("step id {id:?}: letters, digits, `_` and `-` only"),
                    );
                } else if inputs.contains(&id)
                    || ["steps", "inputs", "vars", "parameters", "variables"].contains(&id.as_str())
                {
                    cx.push(
                        ProblemKind::Invalid,
                        member(at, "id"),
                        format!("step id `{id}` is also an input's name (or a reserved word): `{{{{ {id} }}}}` would be ambiguous"),
                    );
                } else {
                    s.id = id;
                }
            }
        }
    }
    let dep_key = if map.contains_key("dependencies") {
        "dependencies"
    } else {
        "depends_on"
    };
    if let Some(v) = map.get(dep_key) {
        s.deps = cx.names(v, &member(at, dep_key));
    }
    // Outputs.
    if let Some(v) = map.get("outputs") {
        let field = member(at, "outputs");
        match v {
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    if let Some(n) = cx.string(x, &element(&field, i)) {
                        s.outputs.push(n);
                    }
                }
            }
            Value::Object(m) => {
                s.outputs = m.keys().cloned().collect();
                s.outputs_map = Some(m.clone());
            }
            other => cx.push(
                ProblemKind::Invalid,
                &field,
                format!(
                    "expected a list of output names (or a mapping name -> description), found {}",
                    kind_of(other)
                ),
            ),
        }
        for o in &s.outputs {
            if !valid_id(o) {
                cx.push(
                    ProblemKind::Invalid,
                    &field,
                    format!("output name {o:?}: letters, digits, `_` and `-` only"),
                );
            }
        }
    }
    // Retries.
    let retry_key = if map.contains_key("retries") {
        "retries"
    } else {
        "max_retries"
    };
    if let Some(v) = map.get(retry_key) {
        s.retries = cx.count(v, &member(at, retry_key));
    }
    // on_failure.
    if let Some(v) = map.get("on_failure") {
        let field = member(at, "on_failure");
        let (retry, route) = parse_fail_route(v, &field, cx);
        if let Some(n) = retry {
            match s.retries {
                Some(m) if m != n => cx.push(
                    ProblemKind::Invalid,
                    &field,
                    format!("`retry {n}` contradicts `{retry_key}: {m}`"),
                ),
                _ => s.retries = Some(n),
            }
        }
        if matches!(v.as_str().map(str::trim), Some("retry")) && s.retries.is_none() {
            cx.push(
                ProblemKind::Invalid,
                &field,
                "`retry` needs a count: `retry N` (or `max_retries: N`)",
            );
        }
        s.fail = route;
    }
    // on_success.
    if let Some(v) = map.get("on_success") {
        let field = member(at, "on_success");
        match v {
            Value::String(w) if w.trim() == "continue" => {}
            _ => match goto_target(v) {
                Some(t) => s.success_goto = Some(t),
                None => cx.push(
                    ProblemKind::Unsupported,
                    &field,
                    format!(
                        "`on_success: {}` has no equivalent (a success cannot fail, skip or retry a step); supported: continue, goto STEP",
                        show(v)
                    ),
                ),
            },
        }
    }
    // The condition (raw; translated in the second pass).
    let cond_key = if map.contains_key("if") {
        "if"
    } else {
        "condition"
    };
    if let Some(v) = map.get(cond_key) {
        let field = member(at, cond_key);
        match v {
            Value::String(c) => s.condition = Some((c.clone(), field)),
            Value::Bool(b) => s.condition = Some((b.to_string(), field)),
            other => cx.push(
                ProblemKind::Invalid,
                &field,
                format!("expected a condition (a string), found {}", kind_of(other)),
            ),
        }
    }
    // on_false.
    if let Some(v) = map.get("on_false") {
        let field = member(at, "on_false");
        if s.condition.is_none() {
            cx.push(
                ProblemKind::Invalid,
                &field,
                "`on_false` needs a `condition` on the same step",
            );
        }
        match v {
            Value::String(w) if w.trim() == "skip" => {}
            _ => match goto_target(v) {
                Some(t) => s.false_goto = Some(t),
                None => cx.push(
                    ProblemKind::Unsupported,
                    &field,
                    format!(
                        "`on_false: {}` has no equivalent; supported: skip (the default), goto STEP",
                        show(v)
                    ),
                ),
            },
        }
    }
    s
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `continue | fail | skip | retry N | goto STEP` (strings), `{retry: N, then: ROUTE}`,
/// `{goto: STEP}`. Returns the retry count it sets and the final route.
fn parse_fail_route(v: &Value, field: &str, cx: &mut Cx<'_>) -> (Option<u32>, Option<FailRoute>) {
    let word = |w: &str, cx: &mut Cx<'_>| -> Option<FailRoute> {
        match w.trim() {
            "fail" | "abort" | "stop" => Some(FailRoute::Fail),
            "continue" | "ignore" => Some(FailRoute::Continue),
            "skip" | "skip_dependents" => Some(FailRoute::Skip),
            "retry" => Some(FailRoute::Fail),
            other => {
                if let Some(t) = goto_target(&Value::String(other.to_string())) {
                    return Some(FailRoute::Goto(t));
                }
                cx.push(
                    ProblemKind::Unsupported,
                    field,
                    format!(
                        "`on_failure: {other}` is not a route; supported: continue, fail, skip, retry N, goto STEP (write `goto {other}` to jump to a step)"
                    ),
                );
                None
            }
        }
    };
    match v {
        Value::String(s) => {
            let t = s.trim();
            if let Some(n) = t.strip_prefix("retry ") {
                match n.trim().parse::<u32>() {
                    Ok(n) => (Some(n), Some(FailRoute::Fail)),
                    Err(_) => {
                        cx.push(
                            ProblemKind::Invalid,
                            field,
                            format!("`{t}`: expected `retry N` with a whole number N"),
                        );
                        (None, None)
                    }
                }
            } else {
                (None, word(t, cx))
            }
        }
        Value::Object(m) => {
            if let Some(t) = goto_target(v) {
                return (None, Some(FailRoute::Goto(t)));
            }
            for k in m.keys() {
                if !matches!(k.as_str(), "retry" | "then") {
                    cx.push(
                        ProblemKind::Unsupported,
                        member(field, k),
                        format!("`{k}`: an on_failure mapping has `retry` and `then` (or is `{{goto: STEP}}`)"),
                    );
                }
            }
            let retry = m
                .get("retry")
                .and_then(|n| cx.count(n, &member(field, "retry")));
            let then = match m.get("then") {
                None => Some(FailRoute::Fail),
                Some(Value::String(w)) if w.trim().starts_with("retry") => {
                    cx.push(
                        ProblemKind::Invalid,
                        member(field, "then"),
                        "`then` is what happens after the retries: continue, fail, skip or goto STEP",
                    );
                    None
                }
                Some(Value::String(w)) => word(w, cx),
                Some(other) => match goto_target(other) {
                    Some(t) => Some(FailRoute::Goto(t)),
                    None => {
                        cx.push(
                            ProblemKind::Invalid,
                            member(field, "then"),
                            format!("expected continue, fail, skip or goto STEP, found {other}"),
                        );
                        None
                    }
                },
            };
            (retry, then)
        }
        other => {
            cx.push(
                ProblemKind::Invalid,
                field,
                format!(
                    "expected a route (continue, fail, skip, retry N, goto STEP), found {}",
                    kind_of(other)
                ),
            );
            (None, None)
        }
    }
}

/// Templates every string of a JSON value (parameters of a tool step).
fn template_value(
    v: &Value,
    field: &str,
    scope: &Scope<'_>,
    cx: &mut Cx<'_>,
    dir: &mut bool,
) -> Value {
    match v {
        Value::String(s) => {
            template_str(s, field, scope, cx, dir).map_or(Value::Null, Value::String)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| template_value(x, &element(field, i), scope, cx, dir))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    (
                        k.clone(),
                        template_value(x, &member(field, k), scope, cx, dir),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn template_str(
    s: &str,
    field: &str,
    scope: &Scope<'_>,
    cx: &mut Cx<'_>,
    dir: &mut bool,
) -> Option<String> {
    match expr::template(s, scope) {
        Ok(t) => {
            if t.contains("${PIPELINE_DIR}") {
                *dir = true;
            }
            Some(t)
        }
        Err(e) => {
            cx.push(kind_for(&e), field, e);
            None
        }
    }
}

/// A number of seconds, whole numbers without a fraction.
fn seconds_json(s: f64) -> Value {
    if s.fract() == 0.0 && s <= u32::MAX as f64 {
        json!(s as u64)
    } else {
        json!(s)
    }
}

fn second_pass(s: &Step, scope: &Scope<'_>, cx: &mut Cx<'_>, dir: &mut bool) -> Value {
    let at = s.at.as_str();
    let m = &s.map;
    let mut out = Map::new();
    out.insert("id".into(), json!(s.id));
    let name_field = member(at, "name");
    if let Some(n) = m.get("name").and_then(|v| cx.string(v, &name_field)) {
        if let Some(t) = template_str(&n, &name_field, scope, cx, dir) {
            if t.contains("${steps.") {
                cx.push(
                    ProblemKind::Unsupported,
                    &name_field,
                    "a step's name is fixed when the pipeline loads: it can use inputs, not steps' outputs",
                );
            } else {
                out.insert("name".into(), json!(t));
            }
        }
    }
    let has_command = m.contains_key("command");
    let has_tool = m.contains_key("action") || m.contains_key("tool");
    if has_command && has_tool {
        cx.push(
            ProblemKind::Invalid,
            member(at, "command"),
            "a step runs a `command` or an `action`/`tool`, not both",
        );
    }
    if has_command {
        let field = member(at, "command");
        if let Some(c) = m.get("command").and_then(|v| cx.string(v, &field)) {
            if let Some(t) = template_str(&c, &field, scope, cx, dir) {
                out.insert("command".into(), json!(t));
            }
        }
        if let Some(v) = m.get("args") {
            let field = member(at, "args");
            match v.as_array() {
                Some(items) => {
                    let mut args = Vec::new();
                    for (i, x) in items.iter().enumerate() {
                        let f = element(&field, i);
                        match x {
                            Value::String(a) => {
                                if let Some(t) = template_str(a, &f, scope, cx, dir) {
                                    args.push(json!(t));
                                }
                            }
                            Value::Number(_) | Value::Bool(_) => args.push(x.clone()),
                            other => cx.push(
                                ProblemKind::Invalid,
                                f,
                                format!(
                                    "expected a string, number or boolean, found {}",
                                    kind_of(other)
                                ),
                            ),
                        }
                    }
                    out.insert("args".into(), Value::Array(args));
                }
                None => cx.push(
                    ProblemKind::Invalid,
                    field,
                    format!("expected a list of arguments, found {}", kind_of(v)),
                ),
            }
        }
        if let Some(v) = m.get("env") {
            let field = member(at, "env");
            match v.as_object() {
                Some(env) => {
                    let mut e = Map::new();
                    for (k, x) in env {
                        let f = member(&field, k);
                        if let Some(val) = cx.scalar(x, &f) {
                            if let Some(t) = template_str(&val, &f, scope, cx, dir) {
                                e.insert(k.clone(), json!(t));
                            }
                        }
                    }
                    out.insert("env".into(), Value::Object(e));
                }
                None => cx.push(
                    ProblemKind::Invalid,
                    field,
                    format!("expected a mapping of variables, found {}", kind_of(v)),
                ),
            }
        }
        if let Some(v) = m.get("cwd") {
            let field = member(at, "cwd");
            if let Some(c) = cx.string(v, &field) {
                if let Some(t) = template_str(&c, &field, scope, cx, dir) {
                    out.insert("cwd".into(), json!(t));
                }
            }
        }
        if let Some(r) = m
            .get("role")
            .and_then(|v| cx.string(v, &member(at, "role")))
        {
            out.insert("role".into(), json!(r));
        }
        if m.contains_key("parameters") {
            cx.push(
                ProblemKind::Invalid,
                member(at, "parameters"),
                "`parameters` go to an `action`/`tool`; a `command` takes `args` and `env`",
            );
        }
    } else if has_tool {
        for k in ["args", "env", "cwd"] {
            if m.contains_key(k) {
                cx.push(
                    ProblemKind::Invalid,
                    member(at, k),
                    format!("`{k}` is for `command` steps; an `action`/`tool` takes `parameters`"),
                );
            }
        }
        let action = m
            .get("action")
            .and_then(|v| cx.string(v, &member(at, "action")));
        let tool = m
            .get("tool")
            .and_then(|v| cx.string(v, &member(at, "tool")));
        let role = m
            .get("role")
            .and_then(|v| cx.string(v, &member(at, "role")))
            .or_else(|| tool.clone())
            .or_else(|| action.clone());
        if let Some(a) = action.as_deref().or(tool.as_deref()) {
            if a.contains("<AUTO>") || a.contains(' ') && m.get("role").is_none() && tool.is_none()
            {
                cx.push(
                    ProblemKind::Unsupported,
                    member(at, if action.is_some() { "action" } else { "tool" }),
                    format!("action {a:?} is prose for a model, which has no equivalent: name a tool (its agents' role), or give `role`"),
                );
            }
        }
        let mut task = Map::new();
        if let Some(a) = &action {
            task.insert("action".into(), json!(a));
        }
        if let Some(t) = &tool {
            task.insert("tool".into(), json!(t));
        }
        let params = match m.get("parameters") {
            Some(p @ Value::Object(_)) => {
                template_value(p, &member(at, "parameters"), scope, cx, dir)
            }
            Some(Value::Null) | None => json!({}),
            Some(other) => {
                cx.push(
                    ProblemKind::Invalid,
                    member(at, "parameters"),
                    format!("expected a mapping of parameters, found {}", kind_of(other)),
                );
                json!({})
            }
        };
        task.insert("parameters".into(), params);
        if let Some(r) = role {
            out.insert("role".into(), json!(r));
        }
        out.insert("task".into(), Value::Object(task));
    } else {
        cx.push(
            ProblemKind::Invalid,
            at,
            format!(
                "step `{}` needs a `command`, or an `action`/`tool` (with `parameters`)",
                s.id
            ),
        );
    }
    if !s.deps.is_empty() {
        out.insert("depends_on".into(), json!(s.deps));
    }
    // when: the goto triggers (any of them), and the condition.
    let cond = s
        .condition
        .as_ref()
        .and_then(|(c, field)| match expr::condition(c, scope) {
            Ok(w) => Some(w),
            Err(e) => {
                cx.push(kind_for(&e), field, e);
                None
            }
        });
    let triggers: Vec<String> = s.triggers.iter().map(Trigger::text).collect();
    let when = match (triggers.len(), cond) {
        (0, None) => None,
        (0, Some(c)) => Some(c),
        (1, None) => Some(triggers[0].clone()),
        (_, None) => Some(
            triggers
                .iter()
                .map(|t| format!("({t})"))
                .collect::<Vec<_>>()
                .join(" || "),
        ),
        (_, Some(c)) => Some(format!(
            "({}) && ({c})",
            triggers
                .iter()
                .map(|t| if triggers.len() > 1 {
                    format!("({t})")
                } else {
                    t.clone()
                })
                .collect::<Vec<_>>()
                .join(" || ")
        )),
    };
    if let Some(w) = when {
        out.insert("when".into(), json!(w));
    }
    let tkey = if m.contains_key("timeout_sec") {
        "timeout_sec"
    } else {
        "timeout"
    };
    if let Some(v) = m.get(tkey) {
        if let Some(t) = cx.seconds(v, &member(at, tkey), false) {
            out.insert("timeout_sec".into(), seconds_json(t));
        }
    }
    if let Some(n) = s.retries {
        out.insert("retries".into(), json!(n));
    }
    let dkey = if m.contains_key("retry_delay_sec") {
        "retry_delay_sec"
    } else {
        "retry_delay"
    };
    if let Some(v) = m.get(dkey) {
        if let Some(d) = cx.seconds(v, &member(at, dkey), true) {
            out.insert("retry_delay_sec".into(), seconds_json(d));
        }
    }
    match &s.fail {
        None | Some(FailRoute::Fail) => {}
        Some(FailRoute::Continue) => {
            out.insert("critical".into(), json!(false));
            out.insert("on_failure".into(), json!("continue"));
        }
        Some(FailRoute::Skip) | Some(FailRoute::Goto(_)) => {
            out.insert("critical".into(), json!(false));
            out.insert("on_failure".into(), json!("skip_dependents"));
        }
    }
    if !s.outputs.is_empty() {
        match &s.outputs_map {
            Some(map) => out.insert("outputs".into(), Value::Object(map.clone())),
            None => out.insert("outputs".into(), json!(s.outputs)),
        };
    }
    let mut meta = match m.get("metadata") {
        Some(Value::Object(o)) => o.clone(),
        Some(other) => {
            cx.push(
                ProblemKind::Invalid,
                member(at, "metadata"),
                format!("expected a mapping, found {}", kind_of(other)),
            );
            Map::new()
        }
        None => Map::new(),
    };
    if let Some(d) = m
        .get("description")
        .and_then(|v| cx.string(v, &member(at, "description")))
    {
        meta.insert("description".into(), json!(d));
    }
    if !meta.is_empty() {
        out.insert("metadata".into(), Value::Object(meta));
    }
    Value::Object(out)
}
