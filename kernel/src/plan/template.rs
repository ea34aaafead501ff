//! `${...}` in plan strings: variables (`${VAR}`, from `--var K=V` or the plan's `vars`)
//! replaced when the plan is loaded, and run-time references (`${steps.ID.outputs.KEY}`,
//! `${item}`, `${item.KEY}`, `${index}`) compiled into templates rendered when a step starts.
//! `$${` is a literal `${`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// A run-time reference inside a template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ref {
    /// `${steps.ID.outputs.KEY[.KEY...]}`.
    Output { step: Arc<str>, path: Vec<String> },
    /// `${item}` or `${item.KEY...}`.
    Item(Vec<String>),
    /// `${index}`.
    Index,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    Lit(String),
    Ref(Ref),
}

/// A string with run-time references, compiled.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// Where a reference came from, for the plan's checks.
pub(crate) fn is_var_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Splits `s` into literal text and `${...}` contents. `$${` is kept as a literal `${` when
/// `unescape`, else as `$${`.
fn scan(s: &str, unescape: bool) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("$${") {
            lit.push_str(if unescape { "${" } else { "$${" });
            rest = r;
        } else if let Some(body) = after.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                return Err(format!("unclosed `${{` in {s:?}"));
            };
            if !lit.is_empty() {
                out.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            out.push(Piece::Ref(body[..end].trim()));
            rest = &body[end + 1..];
        } else {
            lit.push('$');
            rest = &after[1..];
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    Ok(out)
}

enum Piece<'a> {
    Lit(String),
    Ref(&'a str),
}

fn runtime_ref(body: &str) -> Option<Result<Ref, String>> {
    let mut segs = body.split('.');
    match segs.next() {
        Some("steps") => {
            let step = segs.next().unwrap_or("");
            let what = segs.next();
            let path: Vec<String> = segs.map(str::to_string).collect();
            Some(match what {
                Some("outputs")
                    if !step.is_empty()
                        && !path.is_empty()
                        && path.iter().all(|p| !p.is_empty()) =>
                {
                    Ok(Ref::Output {
                        step: Arc::from(step),
                        path,
                    })
                }
                _ => Err(format!(
                    "`${{{body}}}`: expected `${{steps.ID.outputs.KEY}}`"
                )),
            })
        }
        Some("item") => {
            let path: Vec<String> = segs.map(str::to_string).collect();
            if path.iter().any(|p| p.is_empty()) {
                return Some(Err(format!("`${{{body}}}`: expected `${{item.KEY}}`")));
            }
            Some(Ok(Ref::Item(path)))
        }
        Some("index") if body == "index" => Some(Ok(Ref::Index)),
        _ => None,
    }
}

/// Replaces the variables of `s` (load time). Run-time references are kept as they are;
/// values are escaped so that a variable can never inject a reference.
pub(crate) fn substitute(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    for p in scan(s, false)? {
        match p {
            Piece::Lit(l) => out.push_str(&l),
            Piece::Ref(body) => {
                if let Some(r) = runtime_ref(body) {
                    r?;
                    out.push_str("${");
                    out.push_str(body);
                    out.push('}');
                } else if is_var_name(body) {
                    match vars.get(body) {
                        Some(v) => out.push_str(&v.replace("${", "$${")),
                        None => {
                            let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                            return Err(format!(
                                "unknown variable `${{{body}}}` (pass --var {body}=VALUE{})",
                                if known.is_empty() {
                                    String::new()
                                } else {
                                    format!("; known: {}", known.join(", "))
                                }
                            ));
                        }
                    }
                } else {
                    return Err(format!(
                        "`${{{body}}}` is not a variable (names are letters, digits and `_`; write `$${{` for a literal `${{`)"
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Replaces variables in every string of `v`; errors carry the path of the string.
pub(crate) fn substitute_value(
    v: &mut Value,
    path: &str,
    vars: &BTreeMap<String, String>,
    errors: &mut Vec<(String, String)>,
) {
    match v {
        Value::String(s) => match substitute(s, vars) {
            Ok(n) => *s = n,
            Err(e) => errors.push((path.to_string(), e)),
        },
        Value::Array(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                substitute_value(x, &super::source::element(path, i), vars, errors);
            }
        }
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                substitute_value(x, &super::source::member(path, k), vars, errors);
            }
        }
        _ => {}
    }
}

/// A plain string field: `$${` becomes `${`; run-time references are not allowed.
pub(crate) fn literal(s: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if !s.contains('$') {
        return Ok(std::borrow::Cow::Borrowed(s));
    }
    let mut out = String::new();
    for p in scan(s, true)? {
        match p {
            Piece::Lit(l) => out.push_str(&l),
            Piece::Ref(body) => {
                return Err(format!(
                    "`${{{body}}}` is not allowed here (only in command, args, env, cwd, task, for_each and cache inputs)"
                ))
            }
        }
    }
    Ok(std::borrow::Cow::Owned(out))
}

impl Template {
    /// Compiles a string whose variables were substituted.
    pub(crate) fn compile(s: &str) -> Result<Template, String> {
        // Most strings of a plan (every command and argument of a large one) are plain text.
        if !s.contains('$') {
            return Ok(Template::text(s));
        }
        let mut parts = Vec::new();
        for p in scan(s, true)? {
            match p {
                Piece::Lit(l) => parts.push(Part::Lit(l)),
                Piece::Ref(body) => match runtime_ref(body) {
                    Some(r) => parts.push(Part::Ref(r?)),
                    None => return Err(format!("unknown reference `${{{body}}}`")),
                },
            }
        }
        Ok(Template { parts })
    }

    /// A template of plain text.
    pub(crate) fn text(s: impl Into<String>) -> Template {
        Template {
            parts: vec![Part::Lit(s.into())],
        }
    }

    /// The text, if it has no reference.
    pub(crate) fn as_static(&self) -> Option<String> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Ref(_) => return None,
            }
        }
        Some(s)
    }

    /// The references.
    pub(crate) fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Lit(_) => None,
        })
    }

    /// The single reference, if the template is exactly one.
    fn only_ref(&self) -> Option<&Ref> {
        match self.parts.as_slice() {
            [Part::Ref(r)] => Some(r),
            _ => None,
        }
    }

    /// Renders with `resolve` giving each reference's value.
    pub(crate) fn render(
        &self,
        resolve: &dyn Fn(&Ref) -> Result<Value, String>,
    ) -> Result<String, String> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Ref(r) => match resolve(r)? {
                    Value::String(v) => s.push_str(&v),
                    other => s.push_str(&other.to_string()),
                },
            }
        }
        Ok(s)
    }
}

/// A JSON value whose strings may hold references (a step's `task`).
#[derive(Debug, Clone)]
pub(crate) enum ValueTemplate {
    /// No reference anywhere.
    Static(Arc<Value>),
    /// Rendered per step.
    Dynamic(Value),
}

impl ValueTemplate {
    /// Compiles every string of `v`; errors carry the path below `path`.
    pub(crate) fn compile(v: Value, path: &str) -> Result<ValueTemplate, (String, String)> {
        fn walk(v: &Value, path: &str, dynamic: &mut bool) -> Result<Value, (String, String)> {
            Ok(match v {
                Value::String(s) => {
                    let t = Template::compile(s).map_err(|e| (path.to_string(), e))?;
                    match t.as_static() {
                        Some(text) => Value::String(text),
                        None => {
                            *dynamic = true;
                            Value::String(s.clone())
                        }
                    }
                }
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| walk(x, &super::source::element(path, i), dynamic))
                        .collect::<Result<_, _>>()?,
                ),
                Value::Object(m) => Value::Object(
                    m.iter()
                        .map(|(k, x)| {
                            walk(x, &super::source::member(path, k), dynamic)
                                .map(|x| (k.clone(), x))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => other.clone(),
            })
        }
        let mut dynamic = false;
        let out = walk(&v, path, &mut dynamic)?;
        Ok(if dynamic {
            ValueTemplate::Dynamic(v)
        } else {
            ValueTemplate::Static(Arc::new(out))
        })
    }

    /// Every reference (for the plan's checks).
    pub(crate) fn refs(&self) -> Vec<Ref> {
        fn walk(v: &Value, out: &mut Vec<Ref>) {
            match v {
                Value::String(s) => {
                    if let Ok(t) = Template::compile(s) {
                        out.extend(t.refs().cloned());
                    }
                }
                Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
                Value::Object(m) => m.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if let ValueTemplate::Dynamic(v) = self {
            walk(v, &mut out);
        }
        out
    }

    /// The value with references resolved: a string that is exactly one reference takes the
    /// referenced JSON value as it is; other strings are interpolated.
    pub(crate) fn render(
        &self,
        resolve: &dyn Fn(&Ref) -> Result<Value, String>,
    ) -> Result<Arc<Value>, String> {
        fn walk(
            v: &Value,
            resolve: &dyn Fn(&Ref) -> Result<Value, String>,
        ) -> Result<Value, String> {
            Ok(match v {
                Value::String(s) => {
                    let t = Template::compile(s)?;
                    match t.only_ref() {
                        Some(r) => resolve(r)?,
                        None => Value::String(t.render(resolve)?),
                    }
                }
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|x| walk(x, resolve))
                        .collect::<Result<_, _>>()?,
                ),
                Value::Object(m) => Value::Object(
                    m.iter()
                        .map(|(k, x)| walk(x, resolve).map(|x| (k.clone(), x)))
                        .collect::<Result<_, _>>()?,
                ),
                other => other.clone(),
            })
        }
        match self {
            ValueTemplate::Static(v) => Ok(v.clone()),
            ValueTemplate::Dynamic(v) => walk(v, resolve).map(Arc::new),
        }
    }
}

/// Follows `path` (object keys, or array indexes) into `v`.
pub(crate) fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_substitute_and_unknown_ones_fail() {
        let v = vars(&[("BRANCH", "main"), ("N", "3")]);
        assert_eq!(
            substitute("git merge ${BRANCH} -j${ N }", &v).expect("ok"),
            "git merge main -j3"
        );
        let e = substitute("x ${BRANHC}", &v).expect_err("unknown");
        assert!(e.contains("unknown variable `${BRANHC}`"), "{e}");
        assert!(e.contains("known: BRANCH, N"), "{e}");
        assert!(substitute("${a b}", &v).is_err());
        assert!(substitute("${open", &v).is_err());
        assert_eq!(
            substitute("cost $5 $${HOME}", &v).expect("ok"),
            "cost $5 $${HOME}"
        );
    }

    #[test]
    fn runtime_refs_survive_substitution_and_values_cannot_inject() {
        let v = vars(&[("X", "${steps.a.outputs.k}")]);
        let s = substitute("${steps.a.outputs.k}-${X}-${item.name}", &v).expect("ok");
        assert_eq!(s, "${steps.a.outputs.k}-$${steps.a.outputs.k}-${item.name}");
        let t = Template::compile(&s).expect("compiles");
        let refs: Vec<_> = t.refs().cloned().collect();
        assert_eq!(refs.len(), 2);
        let out = t
            .render(&|r| match r {
                Ref::Output { .. } => Ok(json!("V")),
                Ref::Item(p) => Ok(json!(p.join("."))),
                Ref::Index => Ok(json!(0)),
            })
            .expect("renders");
        assert_eq!(out, "V-${steps.a.outputs.k}-name");
        assert!(substitute("${steps.a.status}", &v).is_err());
    }

    #[test]
    fn literal_unescapes_and_refuses_refs() {
        assert_eq!(literal("a $${b}").expect("ok"), "a ${b}");
        assert!(literal("${item}").is_err());
    }

    #[test]
    fn value_templates_keep_types_of_whole_refs() {
        let t = ValueTemplate::compile(
            json!({"n": "${steps.a.outputs.n}", "s": "v=${steps.a.outputs.n}", "k": 1}),
            "task",
        )
        .expect("compiles");
        assert_eq!(t.refs().len(), 2);
        let v = t.render(&|_| Ok(json!(42))).expect("renders");
        assert_eq!(*v, json!({"n": 42, "s": "v=42", "k": 1}));
        let s = ValueTemplate::compile(json!({"a": "$${x}"}), "task").expect("static");
        assert!(matches!(&s, ValueTemplate::Static(v) if v["a"] == "${x}"));
    }

    #[test]
    fn lookup_follows_keys_and_indexes() {
        let v = json!({"a": {"b": [1, {"c": true}]}});
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(lookup(&v, &p("a.b.1.c")), Some(&json!(true)));
        assert_eq!(lookup(&v, &p("a.x")), None);
    }
}
