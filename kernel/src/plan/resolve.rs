//! From plan text to a checked [`Plan`]: parse, substitute variables, deserialize into the
//! schema types, check every step and the graph (duplicate ids, unknown dependencies, cycles,
//! references), and resolve into run-ready steps. All problems are collected, then located.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::expr::Expr;
use super::schema::{BackoffKind, CacheDef, ForEachDef, JitterKind, OnFailure, PlanFile, StepDef};
use super::source::{self, element, member, Format};
use super::template::{self, Ref, Template, ValueTemplate};
use super::{Action, CacheSpec, ForEach, Plan, PlanError, PlanStep, Problem, ProblemKind};
use crate::task::{Jitter, RetryPolicy};

/// A problem before it is located: kind, field path, message.
type Raw = (ProblemKind, String, String);

pub(super) fn resolve(
    text: &str,
    path: &Path,
    format: Format,
    given: &BTreeMap<String, String>,
) -> Result<Plan, PlanError> {
    let fail = |problems: Vec<Raw>| -> PlanError {
        let pos = source::positions(text, format);
        let mut located: Vec<Problem> = problems
            .into_iter()
            .map(|(kind, field, message)| {
                let p = pos.find(&field);
                Problem {
                    kind,
                    line: p.map(|p| p.line),
                    column: p.map(|p| p.col),
                    field,
                    message,
                }
            })
            .collect();
        located.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        PlanError::Invalid {
            path: path.to_path_buf(),
            problems: located,
        }
    };
    // The common case first: a JSON plan without `$` has nothing to substitute, and parses
    // straight into the schema types. Anything else (or any problem) takes the general path,
    // which also says where the problem is.
    if format == Format::Json && !text.contains('$') && !source::json_has_duplicate_key(text) {
        if let Ok(file) = serde_json::from_str::<PlanFile>(text) {
            let mut vars: BTreeMap<String, String> = BTreeMap::new();
            let mut problems: Vec<Raw> = Vec::new();
            for (k, v) in &file.vars {
                if !template::is_var_name(k) {
                    problems.push(bad_var_name(k));
                }
                vars.insert(k.clone(), v.text());
            }
            if !problems.is_empty() {
                return Err(fail(problems));
            }
            add_given_vars(&mut vars, given, path);
            return check(file, &vars, path, text).map_err(fail);
        }
    }
    let mut value = source::parse(text, format).map_err(|e| PlanError::Invalid {
        path: path.to_path_buf(),
        problems: vec![Problem {
            kind: ProblemKind::Syntax,
            line: e.pos.map(|p| p.line),
            column: e.pos.map(|p| p.col),
            field: String::new(),
            message: e.message,
        }],
    })?;

    // Variables: the plan's defaults, then the given ones, then PLAN_DIR.
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut problems: Vec<Raw> = Vec::new();
    if let Some(Value::Object(defaults)) = value.get("vars") {
        for (k, v) in defaults {
            if !template::is_var_name(k) {
                problems.push(bad_var_name(k));
            }
            match v {
                Value::String(s) => {
                    vars.insert(k.clone(), s.clone());
                }
                Value::Number(_) | Value::Bool(_) => {
                    vars.insert(k.clone(), v.to_string());
                }
                _ => {} // the typed pass reports it
            }
        }
    }
    add_given_vars(&mut vars, given, path);

    let mut var_errors = Vec::new();
    if let Value::Object(m) = &mut value {
        for (k, v) in m.iter_mut() {
            if k != "vars" {
                template::substitute_value(v, k, &vars, &mut var_errors);
            }
        }
    }
    for (field, message) in var_errors {
        let kind = if message.starts_with("unknown variable") {
            ProblemKind::UnknownVariable
        } else {
            ProblemKind::BadReference
        };
        problems.push((kind, field, message));
    }
    if !problems.is_empty() {
        return Err(fail(problems));
    }

    let file: PlanFile = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = path_of(e.path());
        let message = e.inner().to_string();
        fail(vec![serde_problem(field, message)])
    })?;

    check(file, &vars, path, text).map_err(fail)
}

fn bad_var_name(k: &str) -> Raw {
    (
        ProblemKind::BadValue,
        member("vars", k),
        format!("`{k}` is not a variable name (letters, digits and `_`)"),
    )
}

/// The given variables over the plan's defaults, and `PLAN_DIR`.
fn add_given_vars(
    vars: &mut BTreeMap<String, String>,
    given: &BTreeMap<String, String>,
    path: &Path,
) {
    for (k, v) in given {
        vars.insert(k.clone(), v.clone());
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    vars.insert("PLAN_DIR".into(), dir.display().to_string());
}

/// Checks the deserialized plan; its problems are still to be located.
fn check(
    file: PlanFile,
    vars: &BTreeMap<String, String>,
    path: &Path,
    text: &str,
) -> Result<Plan, Vec<Raw>> {
    let mut cx = Checker {
        problems: Vec::new(),
        vars,
    };
    let plan = cx.plan(file, path, text);
    if cx.problems.is_empty() {
        Ok(plan)
    } else {
        Err(cx.problems)
    }
}

/// The field path of a serde error, in this module's notation.
fn path_of(p: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out = element(&out, *index),
            serde_path_to_error::Segment::Map { key } => out = member(&out, key),
            serde_path_to_error::Segment::Enum { variant } => out = member(&out, variant),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// Classifies a serde message; an unknown field is located at its own key.
fn serde_problem(mut field: String, message: String) -> Raw {
    let quoted = |m: &str| -> Option<String> {
        let start = m.find('`')? + 1;
        let end = start + m[start..].find('`')?;
        Some(m[start..end].to_string())
    };
    let kind = if message.starts_with("unknown field") {
        if let Some(k) = quoted(&message) {
            if !field.ends_with(&k) {
                field = member(&field, &k);
            }
        }
        ProblemKind::UnknownField
    } else if message.starts_with("missing field") {
        ProblemKind::MissingField
    } else if message.starts_with("unknown variant") || message.starts_with("invalid value") {
        ProblemKind::BadValue
    } else {
        ProblemKind::WrongType
    };
    (kind, field, message)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

struct Checker<'a> {
    problems: Vec<Raw>,
    vars: &'a BTreeMap<String, String>,
}

impl Checker<'_> {
    fn push(&mut self, kind: ProblemKind, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push((kind, field.into(), message.into()));
    }

    /// A plain string field: `$${` unescaped, no run-time reference. `field` builds the
    /// field's path (only for a problem: most fields have none, and a plan has thousands).
    fn literal<'s>(&mut self, s: &'s str, field: impl FnOnce() -> String) -> Cow<'s, str> {
        match template::literal(s) {
            Ok(v) => v,
            Err(e) => {
                self.push(ProblemKind::BadReference, field(), e);
                Cow::Borrowed(s)
            }
        }
    }

    fn template(&mut self, s: &str, field: impl FnOnce() -> String) -> Template {
        match Template::compile(s) {
            Ok(t) => t,
            Err(e) => {
                self.push(ProblemKind::BadReference, field(), e);
                Template::text(s)
            }
        }
    }

    fn secs(&mut self, v: f64, field: &str, allow_zero: bool) -> Option<Duration> {
        let ok = v.is_finite() && (v > 0.0 || (allow_zero && v == 0.0));
        match Duration::try_from_secs_f64(v) {
            Ok(d) if ok => Some(d),
            _ => {
                self.push(
                    ProblemKind::BadValue,
                    field,
                    format!(
                        "expected {} number of seconds, found {v}",
                        if allow_zero {
                            "a non-negative"
                        } else {
                            "a positive"
                        }
                    ),
                );
                None
            }
        }
    }

    fn plan(&mut self, file: PlanFile, path: &Path, text: &str) -> Plan {
        let plan_id = self
            .literal(&file.plan_id, || "plan_id".into())
            .into_owned();
        if plan_id.trim().is_empty() {
            self.push(
                ProblemKind::BadValue,
                "plan_id",
                "expected a non-empty plan id",
            );
        }
        let version = self
            .literal(&file.version.0, || "version".into())
            .into_owned();
        let description = file
            .description
            .as_deref()
            .map(|d| self.literal(d, || "description".into()).into_owned());
        let max_concurrency = file.globals.max_concurrency.map(|n| n.0);
        if max_concurrency == Some(0) {
            self.push(
                ProblemKind::BadValue,
                "globals.max_concurrency",
                "expected at least 1",
            );
        }
        let default_timeout = file
            .globals
            .default_timeout_sec
            .and_then(|n| self.secs(n.0, "globals.default_timeout_sec", false));
        if file.steps.is_empty() {
            self.push(
                ProblemKind::BadValue,
                "steps",
                "a plan needs at least one step",
            );
        }

        // Ids first: dependencies and references are checked against them.
        let mut index: HashMap<Arc<str>, usize> = HashMap::with_capacity(file.steps.len());
        let mut ids: Vec<Arc<str>> = Vec::with_capacity(file.steps.len());
        for (i, s) in file.steps.iter().enumerate() {
            let field = || member(&element("steps", i), "id");
            let id = self.literal(&s.id, field);
            if !valid_id(&id) {
                self.push(
                    ProblemKind::BadValue,
                    field(),
                    format!("step id {id:?}: expected letters, digits, `_` and `-` only"),
                );
            }
            let id: Arc<str> = Arc::from(&*id);
            if let Some(first) = index.get(&id) {
                self.push(
                    ProblemKind::DuplicateId,
                    field(),
                    format!("duplicate step id `{id}` (first used by steps[{first}])"),
                );
            } else {
                index.insert(id.clone(), i);
            }
            ids.push(id);
        }

        let mut steps: Vec<PlanStep> = Vec::with_capacity(file.steps.len());
        for (i, def) in file.steps.into_iter().enumerate() {
            let s = self.step(i, def, ids[i].clone(), &index, default_timeout);
            steps.push(s);
        }
        for i in 0..steps.len() {
            for k in 0..steps[i].deps.len() {
                let d = steps[i].deps[k];
                steps[d].dependents.push(i);
            }
        }
        let acyclic = self.cycles(&steps);
        if acyclic {
            self.references(&steps, &index);
        }
        Plan {
            path: path.to_path_buf(),
            hash: Plan::hash_of(text.as_bytes()),
            plan_id,
            version,
            description,
            max_concurrency,
            default_timeout,
            metadata: file.metadata.unwrap_or(Value::Null),
            vars: self.vars.clone(),
            steps,
            index,
        }
    }

    fn step(
        &mut self,
        i: usize,
        def: StepDef,
        id: Arc<str>,
        index: &HashMap<Arc<str>, usize>,
        default_timeout: Option<Duration>,
    ) -> PlanStep {
        let at = || element("steps", i);
        let f = |name: &str| member(&at(), name);
        let name: Arc<str> = match &def.name {
            Some(n) => Arc::from(&*self.literal(n, || f("name"))),
            None => id.clone(),
        };
        let role = def.role.as_deref().map(|r| {
            let r = self.literal(r, || f("role"));
            if r.trim().is_empty() {
                self.push(ProblemKind::BadValue, f("role"), "expected a role name");
            }
            Arc::from(&*r)
        });

        let action = match (&def.command, def.task) {
            (Some(_), Some(_)) => {
                self.push(
                    ProblemKind::BadValue,
                    f("task"),
                    "a step has either `command` or `task`, not both",
                );
                Action::Command {
                    command: Template::default(),
                    args: Vec::new(),
                    env: Vec::new(),
                    cwd: None,
                }
            }
            (None, Some(task)) => {
                if role.is_none() {
                    self.push(
                        ProblemKind::MissingField,
                        f("task"),
                        "`task` needs a `role` (the pool whose agents take it)",
                    );
                }
                for (k, present) in [
                    ("args", !def.args.is_empty()),
                    ("env", !def.env.is_empty()),
                    ("cwd", def.cwd.is_some()),
                ] {
                    if present {
                        self.push(
                            ProblemKind::BadValue,
                            f(k),
                            format!("`{k}` is only for `command` steps"),
                        );
                    }
                }
                match ValueTemplate::compile(*task, &f("task")) {
                    Ok(t) => Action::Task(t),
                    Err((field, e)) => {
                        self.push(ProblemKind::BadReference, field, e);
                        Action::Task(ValueTemplate::Static(Arc::new(Value::Null)))
                    }
                }
            }
            (Some(command), None) => {
                if command.trim().is_empty() {
                    self.push(ProblemKind::BadValue, f("command"), "`command` is empty");
                }
                let command = self.template(command, || f("command"));
                let args = def
                    .args
                    .iter()
                    .enumerate()
                    .map(|(j, a)| self.template(&a.0, || element(&f("args"), j)))
                    .collect();
                let env = def
                    .env
                    .iter()
                    .map(|(k, v)| {
                        let field = member(&f("env"), k);
                        if k.is_empty() || k.contains('=') || k.contains('\0') {
                            self.push(
                                ProblemKind::BadValue,
                                &field,
                                format!("{k:?} is not an environment variable name"),
                            );
                        }
                        (k.clone(), self.template(&v.0, || field.clone()))
                    })
                    .collect();
                let cwd = def.cwd.as_deref().map(|c| self.template(c, || f("cwd")));
                Action::Command {
                    command,
                    args,
                    env,
                    cwd,
                }
            }
            (None, None) => {
                self.push(
                    ProblemKind::MissingField,
                    at(),
                    format!("step `{id}` needs a `command` (or a `role` and a `task`)"),
                );
                Action::Command {
                    command: Template::default(),
                    args: Vec::new(),
                    env: Vec::new(),
                    cwd: None,
                }
            }
        };

        let mut deps: Vec<usize> = Vec::with_capacity(def.depends_on.len());
        // Repeats: a short list (the common case) is searched, a long one hashed.
        let mut seen: Option<HashSet<usize>> = (def.depends_on.len() > 16).then(HashSet::new);
        for (j, d) in def.depends_on.iter().enumerate() {
            let field = || element(&f("depends_on"), j);
            let d = self.literal(d, field);
            match index.get(&*d) {
                Some(&k) => {
                    let repeated = match &mut seen {
                        Some(set) => !set.insert(k),
                        None => deps.contains(&k),
                    };
                    if repeated {
                        self.push(
                            ProblemKind::BadValue,
                            field(),
                            format!("`{d}` is listed twice"),
                        );
                    } else {
                        deps.push(k);
                    }
                }
                None => {
                    let hint = closest(&d, index.keys().map(|k| &**k))
                        .map(|c| format!(" (did you mean `{c}`?)"))
                        .unwrap_or_default();
                    self.push(
                        ProblemKind::UnknownDependency,
                        field(),
                        format!(
                            "step `{id}` depends on `{d}`, which is not a step of this plan{hint}"
                        ),
                    );
                }
            }
        }

        let timeout = match def.timeout_sec {
            Some(t) => self.secs(t.0, &f("timeout_sec"), false),
            None => default_timeout,
        };
        let retries = def.retries.map_or(0, |n| n.0);
        let delay = def
            .retry_delay_sec
            .and_then(|d| self.secs(d.0, &f("retry_delay_sec"), true))
            .unwrap_or(Duration::ZERO);
        let mut retry = match def.backoff.unwrap_or(BackoffKind::Fixed) {
            BackoffKind::Fixed => RetryPolicy::fixed(retries, delay),
            BackoffKind::Exponential => {
                RetryPolicy::exponential(retries, delay, 2.0, Duration::from_secs(3600))
            }
        };
        retry = retry.with_jitter(match def.jitter.unwrap_or(JitterKind::None) {
            JitterKind::None => Jitter::None,
            JitterKind::Full => Jitter::Full,
            JitterKind::Equal => Jitter::Equal,
        });

        let when = def.when.as_deref().and_then(|w| {
            let w = self.literal(w, || f("when")).into_owned();
            match Expr::parse(&w, self.vars) {
                Ok(e) => Some((w, e)),
                Err(e) => {
                    self.push(ProblemKind::BadValue, f("when"), format!("{e} in {w:?}"));
                    None
                }
            }
        });

        let outputs = def.outputs.map(|o| {
            let names = o.names();
            for n in &names {
                if n.is_empty() || n.contains('.') || n.contains(char::is_whitespace) {
                    self.push(
                        ProblemKind::BadValue,
                        f("outputs"),
                        format!("{n:?} is not an output name (no dots or spaces)"),
                    );
                }
            }
            names
        });

        let for_each = def.for_each.and_then(|fe| match *fe {
            ForEachDef::Items(items) => Some(ForEach::Items(items)),
            ForEachDef::From(s) => {
                let t = self.template(&s, || f("for_each"));
                let refs: Vec<&Ref> = t.refs().collect();
                match (refs.as_slice(), t.as_static()) {
                    ([Ref::Output { step, path }], None) if s.trim().starts_with("${") && s.trim().ends_with('}') => {
                        Some(ForEach::From {
                            step: step.clone(),
                            path: path.clone(),
                        })
                    }
                    _ => {
                        self.push(
                            ProblemKind::BadValue,
                            f("for_each"),
                            format!("expected a list or exactly `${{steps.ID.outputs.KEY}}`, found {s:?}"),
                        );
                        None
                    }
                }
            }
        });

        let cache = def.cache.and_then(|c| match *c {
            CacheDef::Enabled(false) => None,
            CacheDef::Enabled(true) => Some(CacheSpec::default()),
            CacheDef::With(w) => Some(CacheSpec {
                inputs: w
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(j, p)| self.template(p, || element(&member(&f("cache"), "inputs"), j)))
                    .collect(),
                key: w.key,
            }),
        });

        PlanStep {
            id,
            name,
            action,
            role,
            deps,
            dependents: Vec::new(),
            timeout,
            retry,
            critical: def.critical.is_none_or(|c| c.0),
            on_failure: def.on_failure.unwrap_or(OnFailure::Abort),
            when: when.map(Box::new),
            outputs,
            for_each: for_each.map(Box::new),
            cache: cache.map(Box::new),
        }
    }

    /// Finds cycles (iteratively, so that long chains cannot overflow the stack); reports each
    /// with its path. True when there is none.
    fn cycles(&mut self, steps: &[PlanStep]) -> bool {
        const NEW: u8 = 0;
        const ACTIVE: u8 = 1;
        const DONE: u8 = 2;
        let mut color = vec![NEW; steps.len()];
        let mut found = false;
        let mut reported: HashSet<Vec<usize>> = HashSet::new();
        // (node, next dep index to look at)
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..steps.len() {
            if color[root] != NEW {
                continue;
            }
            stack.clear();
            stack.push((root, 0));
            color[root] = ACTIVE;
            while let Some(&mut (n, ref mut k)) = stack.last_mut() {
                if let Some(&d) = steps[n].deps.get(*k) {
                    *k += 1;
                    match color[d] {
                        NEW => {
                            color[d] = ACTIVE;
                            stack.push((d, 0));
                        }
                        ACTIVE => {
                            found = true;
                            let from = stack.iter().position(|&(x, _)| x == d).unwrap_or(0);
                            let cycle: Vec<usize> = stack[from..].iter().map(|&(x, _)| x).collect();
                            let mut key = cycle.clone();
                            key.sort_unstable();
                            if reported.insert(key) {
                                // The path runs along dependency edges: a depends on b ...
                                let mut names: Vec<&str> =
                                    cycle.iter().map(|&x| &*steps[x].id).collect();
                                names.push(&steps[d].id);
                                let j = steps[n].deps.iter().position(|&x| x == d).unwrap_or(0);
                                self.push(
                                    ProblemKind::Cycle,
                                    element(&member(&element("steps", n), "depends_on"), j),
                                    format!(
                                        "dependency cycle: {} (each step depends on the next)",
                                        names.join(" -> ")
                                    ),
                                );
                            }
                        }
                        _ => {}
                    }
                } else {
                    color[n] = DONE;
                    stack.pop();
                }
            }
        }
        !found
    }

    /// Whether `anc` is a (transitive) dependency of `of`.
    fn is_ancestor(steps: &[PlanStep], anc: usize, of: usize) -> bool {
        let mut seen = HashSet::new();
        let mut todo = steps[of].deps.clone();
        while let Some(x) = todo.pop() {
            if x == anc {
                return true;
            }
            if seen.insert(x) {
                todo.extend(steps[x].deps.iter().copied());
            }
        }
        false
    }

    /// Checks a reference to step `target` (reading output `key`, if any) from step `from`.
    fn check_ref(
        &mut self,
        steps: &[PlanStep],
        index: &HashMap<Arc<str>, usize>,
        from: usize,
        target: &str,
        key: Option<&str>,
        field: &str,
    ) {
        let Some(&t) = index.get(target) else {
            self.push(
                ProblemKind::BadReference,
                field,
                format!("`steps.{target}`: no step has id `{target}`"),
            );
            return;
        };
        if !Self::is_ancestor(steps, t, from) {
            self.push(
                ProblemKind::BadReference,
                field,
                format!(
                    "step `{}` reads `steps.{target}` but does not depend on it (add `{target}` to its depends_on)",
                    steps[from].id
                ),
            );
            return;
        }
        if let Some(k) = key {
            match &steps[t].outputs {
                None => self.push(
                    ProblemKind::BadReference,
                    field,
                    format!("`steps.{target}.outputs.{k}`: step `{target}` declares no `outputs` (add `outputs: [{k}]` to it)"),
                ),
                Some(names) if !names.iter().any(|n| n == k) => self.push(
                    ProblemKind::BadReference,
                    field,
                    format!(
                        "`steps.{target}.outputs.{k}`: step `{target}` declares outputs [{}], not `{k}`",
                        names.join(", ")
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    fn references(&mut self, steps: &[PlanStep], index: &HashMap<Arc<str>, usize>) {
        for (i, s) in steps.iter().enumerate() {
            // The field path is built only for a step that has something to check.
            let at = || element("steps", i);
            let mut refs: Vec<(Ref, String)> = Vec::new();
            match &s.action {
                Action::Command {
                    command,
                    args,
                    env,
                    cwd,
                } => {
                    refs.extend(
                        command
                            .refs()
                            .map(|r| (r.clone(), member(&at(), "command"))),
                    );
                    for (j, a) in args.iter().enumerate() {
                        refs.extend(
                            a.refs()
                                .map(|r| (r.clone(), element(&member(&at(), "args"), j))),
                        );
                    }
                    for (k, v) in env {
                        refs.extend(
                            v.refs()
                                .map(|r| (r.clone(), member(&member(&at(), "env"), k))),
                        );
                    }
                    if let Some(c) = cwd {
                        refs.extend(c.refs().map(|r| (r.clone(), member(&at(), "cwd"))));
                    }
                }
                Action::Task(t) => {
                    refs.extend(t.refs().into_iter().map(|r| (r, member(&at(), "task"))));
                }
            }
            if let Some(c) = &s.cache {
                for (j, t) in c.inputs.iter().enumerate() {
                    let field = element(&member(&member(&at(), "cache"), "inputs"), j);
                    refs.extend(t.refs().map(|r| (r.clone(), field.clone())));
                }
            }
            for (r, field) in refs {
                match r {
                    Ref::Output { step, path } => self.check_ref(
                        steps,
                        index,
                        i,
                        &step,
                        path.first().map(String::as_str),
                        &field,
                    ),
                    Ref::Item(_) | Ref::Index if s.for_each.is_none() => self.push(
                        ProblemKind::BadReference,
                        field,
                        "`${item}` and `${index}` are only for steps with `for_each`",
                    ),
                    _ => {}
                }
            }
            if let Some(ForEach::From { step, path }) = s.for_each.as_deref() {
                self.check_ref(
                    steps,
                    index,
                    i,
                    step,
                    path.first().map(String::as_str),
                    &member(&at(), "for_each"),
                );
            }
            if let Some(w) = &s.when {
                let e = &w.1;
                let field = member(&at(), "when");
                let mut rs = Vec::new();
                e.step_refs(&mut rs);
                for (target, key) in rs {
                    self.check_ref(steps, index, i, &target, key.as_deref(), &field);
                }
                for bad in e.bad_status_literals() {
                    self.push(
                        ProblemKind::BadValue,
                        &field,
                        format!(
                            "no step ends with status {bad:?} (expected one of {})",
                            super::expr::END_STATES.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .map(|c| (dist(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Result<Plan, PlanError> {
        Plan::parse(text, Path::new(name), &BTreeMap::new())
    }

    fn problems(name: &str, text: &str) -> Vec<Problem> {
        match load(name, text) {
            Ok(_) => panic!("{name} should be refused"),
            Err(e) => e.problems().to_vec(),
        }
    }

    /// A JSON plan without `$` takes the direct path (no `Value`, no substitution); the same
    /// plan in YAML takes the general one. Both must give the same plan.
    #[test]
    fn the_direct_json_path_gives_what_the_general_path_gives() {
        let json = r#"{"plan_id": "EQ", "version": 3, "description": "both ways",
            "globals": {"max_concurrency": 2, "default_timeout_sec": 9},
            "vars": {"WHO": "world", "N": 2},
            "metadata": {"project": "hive", "tags": ["a", 1]},
            "steps": [
              {"id": "a", "name": "A", "command": "echo", "args": ["hi", 5, true], "env": {"K": "v"},
               "cwd": "/tmp", "timeout_sec": 4, "retries": 2, "retry_delay_sec": 0.5,
               "backoff": "exponential", "jitter": "full", "outputs": ["x"], "cache": true},
              {"id": "b", "command": "true", "depends_on": ["a"], "critical": false,
               "on_failure": "skip_dependents", "when": "steps.a.status == 'succeeded'",
               "for_each": ["p", "q"], "metadata": {"k": 1}},
              {"id": "c", "role": "builder", "task": {"op": "build", "n": [1, 2]}, "depends_on": ["a", "b"]}
            ]}"#;
        let yaml = "plan_id: EQ\nversion: 3\ndescription: both ways\n\
            globals: {max_concurrency: 2, default_timeout_sec: 9}\n\
            vars: {WHO: world, N: 2}\n\
            metadata: {project: hive, tags: [a, 1]}\n\
            steps:\n\
            - {id: a, name: A, command: echo, args: [hi, 5, true], env: {K: v}, cwd: /tmp, timeout_sec: 4,\n   retries: 2, retry_delay_sec: 0.5, backoff: exponential, jitter: full, outputs: [x], cache: true}\n\
            - {id: b, command: 'true', depends_on: [a], critical: false, on_failure: skip_dependents,\n   when: \"steps.a.status == 'succeeded'\", for_each: [p, q], metadata: {k: 1}}\n\
            - {id: c, role: builder, task: {op: build, n: [1, 2]}, depends_on: [a, b]}\n";
        let j = load("eq.json", json).expect("json plan");
        let y = load("eq.yaml", yaml).expect("yaml plan");
        assert_eq!(format!("{:?}", j.steps), format!("{:?}", y.steps));
        assert_eq!(j.vars, y.vars);
        assert_eq!(j.vars.get("N").map(String::as_str), Some("2"));
        assert_eq!((j.id(), j.version()), (y.id(), y.version()));
        assert_eq!(j.metadata(), y.metadata());
        assert_eq!(j.max_concurrency(), y.max_concurrency());
        assert_eq!(j.default_timeout(), y.default_timeout());
    }

    #[test]
    fn a_json_plan_without_dollars_is_still_checked_and_located() {
        let dup = problems("d.json", "{\"plan_id\": \"p\", \"version\": \"1\",\n \"steps\": [{\"id\": \"a\", \"command\": \"x\", \"command\": \"y\"}]}");
        assert_eq!(dup[0].kind, ProblemKind::Syntax);
        assert_eq!(dup[0].line, Some(2));
        let unknown = problems("u.json", "{\"plan_id\": \"p\", \"version\": \"1\",\n \"steps\": [{\"id\": \"a\",\n \"comand\": \"x\"}]}");
        assert_eq!(unknown[0].kind, ProblemKind::UnknownField);
        assert_eq!(
            (unknown[0].line, unknown[0].field.as_str()),
            (Some(3), "steps[0].comand")
        );
        let bad_var = problems(
            "v.json",
            r#"{"plan_id": "p", "version": "1", "vars": {"a-b": "x"}, "steps": [{"id": "a", "command": "x"}]}"#,
        );
        assert_eq!(bad_var[0].kind, ProblemKind::BadValue);
        assert_eq!(bad_var[0].field, "vars.a-b");
    }

    #[test]
    fn seed_plan_loads() {
        let p = load(
            "p.json",
            r#"{"plan_id": "TEST-001", "version": "1.0", "globals": {"max_concurrency": 2},
               "steps": [{"id": "echo", "name": "Echo", "command": "echo", "args": ["hello"], "depends_on": []},
                         {"id": "two", "command": "true", "depends_on": ["echo"], "retries": 2, "retry_delay_sec": 0.5,
                          "critical": false, "on_failure": "continue", "timeout_sec": 5}]}"#,
        )
        .expect("valid");
        assert_eq!(p.id(), "TEST-001");
        assert_eq!(p.max_concurrency(), Some(2));
        let two = &p.steps[1];
        assert_eq!(two.deps, vec![0]);
        assert_eq!(p.steps[0].dependents, vec![1]);
        assert_eq!(two.retry.max_attempts, 3);
        assert!(!two.critical);
        assert_eq!(two.on_failure, OnFailure::Continue);
        assert_eq!(two.timeout, Some(Duration::from_secs(5)));
        assert_eq!(&*p.steps[0].name, "Echo");
        assert_eq!(&*two.name, "two");
    }

    #[test]
    fn closest_suggests_typos_only() {
        let c = ["build", "test", "deploy"];
        assert_eq!(closest("biuld", c.iter().copied()), Some("build"));
        assert_eq!(closest("zzzzzz", c.iter().copied()), None);
    }

    #[test]
    fn cycle_reports_its_path() {
        let ps = problems(
            "p.yaml",
            "plan_id: x\nversion: 1\nsteps:\n  - id: a\n    command: 'true'\n    depends_on: [c]\n  - id: b\n    command: 'true'\n    depends_on: [a]\n  - id: c\n    command: 'true'\n    depends_on: [b]\n",
        );
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert_eq!(ps[0].kind, ProblemKind::Cycle);
        assert!(
            ps[0].message.contains("a -> c -> b -> a"),
            "{}",
            ps[0].message
        );
        assert!(ps[0].line.is_some());
    }
}
