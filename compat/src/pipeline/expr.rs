//! The legacy pipeline's templates (`{{ name }}`, `{{ step.key }}`, `${name}`) and
//! `condition` expressions (Jinja/Python-style `and`, `or`, `not`, `in`, comparisons over
//! inputs and earlier steps), translated into Hive's `${...}` templates and `when` language.
//! Anything outside that subset is refused with a message; the caller adds the location.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

/// Variables every translated plan has besides the declared inputs.
pub(crate) const BUILTIN_VARS: &[&str] = &["PLAN_DIR", "PIPELINE_DIR"];

/// The step words `steps.ID.status` can be compared with (Hive's end states).
const END_STATES: &[&str] = &[
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
    "cached",
];

/// What names mean where a template or condition is translated.
#[derive(Debug)]
pub(crate) struct Scope<'a> {
    /// Declared inputs (the plan's variables).
    pub(crate) inputs: &'a BTreeSet<String>,
    /// Every step id, with the outputs it declares.
    pub(crate) outputs: &'a BTreeMap<String, Vec<String>>,
    /// The steps the reader may read: its transitive dependencies.
    pub(crate) ancestors: &'a HashSet<String>,
    /// The reader (a step id), for messages.
    pub(crate) reader: &'a str,
}

impl Scope<'_> {
    fn is_input(&self, name: &str) -> bool {
        self.inputs.contains(name) || BUILTIN_VARS.contains(&name)
    }

    /// Checks that `step` exists, may be read, and declares output `key`.
    fn check_output(&self, step: &str, key: &str) -> Result<(), String> {
        let Some(outs) = self.outputs.get(step) else {
            return Err(format!("no step has id `{step}`"));
        };
        self.check_reads(step)?;
        if !outs.iter().any(|o| o == key) {
            return Err(if outs.is_empty() {
                format!("`{step}.{key}`: step `{step}` declares no outputs (add `outputs: [{key}]` to it; a step's outputs are what it emits)")
            } else {
                format!(
                    "`{step}.{key}`: step `{step}` declares outputs [{}], not `{key}`",
                    outs.join(", ")
                )
            });
        }
        Ok(())
    }

    fn check_reads(&self, step: &str) -> Result<(), String> {
        if !self.outputs.contains_key(step) {
            return Err(format!("no step has id `{step}`"));
        }
        if !self.ancestors.contains(step) {
            return Err(format!(
                "`{}` reads step `{step}` but does not depend on it (add `{step}` to its depends_on)",
                self.reader
            ));
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits `a.b[0].c` into `["a", "b", "0", "c"]`; None if it is not a plain path.
fn path_segments(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for part in s.split('.') {
        let (head, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !is_name(head) {
            return None;
        }
        out.push(head.to_string());
        while !rest.is_empty() {
            let close = rest.find(']')?;
            let idx = rest.get(1..close)?;
            if idx.is_empty() || !idx.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            out.push(idx.to_string());
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    Some(out)
}

/// What a path means.
#[derive(Debug, Clone, PartialEq)]
enum Ref {
    Var(String),
    Status(String),
    ExitCode(String),
    Output(String, Vec<String>),
}

/// Resolves a dotted path: an input, `inputs.NAME`, `vars.NAME`, `STEP.status`,
/// `STEP.exit_code`, `STEP.KEY...`, `STEP.outputs.KEY...`, `steps.STEP....`.
fn resolve(segs: &[String], scope: &Scope<'_>, shown: &str) -> Result<Ref, String> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let var = |name: &str| {
        if scope.is_input(name) {
            Ok(Ref::Var(name.to_string()))
        } else {
            Err(format!(
                "`{shown}`: `{name}` is not a declared input (declare it under `inputs`)"
            ))
        }
    };
    match s.as_slice() {
        [name] if scope.is_input(name) => var(name),
        ["inputs" | "parameters" | "variables" | "vars", name] => var(name),
        ["steps", step, rest @ ..] if scope.outputs.contains_key(*step) => {
            step_ref(step, rest, scope, shown)
        }
        [step, rest @ ..] if scope.outputs.contains_key(*step) => {
            step_ref(step, rest, scope, shown)
        }
        [name, ..] => Err(format!(
            "`{shown}`: `{name}` is neither a declared input nor a step id"
        )),
        [] => Err("empty reference".into()),
    }
}

fn step_ref(step: &str, rest: &[&str], scope: &Scope<'_>, shown: &str) -> Result<Ref, String> {
    scope.check_reads(step)?;
    match rest {
        ["status"] => Ok(Ref::Status(step.to_string())),
        ["exit_code"] => Ok(Ref::ExitCode(step.to_string())),
        ["outputs", key, more @ ..] | [key, more @ ..] if *key != "outputs" => {
            scope.check_output(step, key)?;
            let mut path = vec![key.to_string()];
            path.extend(more.iter().map(|m| m.to_string()));
            Ok(Ref::Output(step.to_string(), path))
        }
        _ => Err(format!(
            "`{shown}`: a step is read as `{step}.KEY` (one of its outputs), `{step}.status` or `{step}.exit_code`"
        )),
    }
}

/// Translates a string with `{{ ref }}` and `${ref}` templates into a Hive template.
pub(crate) fn template(s: &str, scope: &Scope<'_>) -> Result<String, String> {
    if s.contains("<AUTO>") {
        return Err("`<AUTO>` (resolved by a model when the legacy pipeline compiles) has no equivalent: write the value".into());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("$${");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let body = r[..end].trim();
            out.push_str(&dollar(body, scope)?);
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix("{{") {
            let end = r
                .find("}}")
                .ok_or_else(|| format!("unterminated `{{{{` in {s:?}"))?;
            let body = r[..end].trim();
            let segs = path_segments(body).ok_or_else(|| {
                format!("`{{{{ {body} }}}}` is not a plain reference (filters, operators and calls have no equivalent): write `{{{{ input }}}}` or `{{{{ step.key }}}}`")
            })?;
            match resolve(&segs, scope, body)? {
                Ref::Var(v) => {
                    let _ = write!(out, "${{{v}}}");
                }
                Ref::Output(step, path) => {
                    let _ = write!(out, "${{steps.{step}.outputs.{}}}", path.join("."));
                }
                Ref::Status(_) | Ref::ExitCode(_) => {
                    return Err(format!(
                        "`{{{{ {body} }}}}`: a step's status or exit code can be read in a `condition`, not in a template"
                    ))
                }
            }
            rest = &r[end + 2..];
        } else if rest.starts_with("{%") {
            return Err("Jinja statements (`{% ... %}`) have no equivalent".into());
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
    }
    Ok(out)
}

/// A Hive-style `${...}` in the pipeline: a declared variable or `steps.ID.outputs.KEY`.
fn dollar(body: &str, scope: &Scope<'_>) -> Result<String, String> {
    let segs = path_segments(body)
        .ok_or_else(|| format!("`${{{body}}}` is not a variable or a step output"))?;
    match segs.as_slice() {
        [name] if scope.is_input(name) => Ok(format!("${{{name}}}")),
        [name] => Err(format!(
            "unknown variable `${{{name}}}` (declare it under `inputs`, or write `$${{{name}}}` for a literal `${{{name}}}`)"
        )),
        [first, ..] if first == "steps" => match resolve(&segs, scope, body)? {
            Ref::Output(step, path) => Ok(format!("${{steps.{step}.outputs.{}}}", path.join("."))),
            _ => Err(format!(
                "`${{{body}}}`: only `${{steps.ID.outputs.KEY}}` can be inserted"
            )),
        },
        _ => Err(format!("`${{{body}}}` is not a variable or a step output")),
    }
}

// ----------------------------------------------------------------------- conditions --

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
    In,
    Is,
    Cmp(&'static str),
    Str(String),
    Num(String),
    Ident(String),
}

fn tokenize(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let two = |s: &str| {
            chars
                .get(i..i + 2)
                .is_some_and(|w| w.iter().copied().eq(s.chars()))
        };
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // `{{ ref }}` inside a condition is the reference itself.
        if two("{{") || two("}}") {
            i += 2;
            continue;
        }
        let (tok, len) = if c == '(' {
            (Tok::LParen, 1)
        } else if c == ')' {
            (Tok::RParen, 1)
        } else if c == ',' {
            (Tok::Comma, 1)
        } else if two("&&") {
            (Tok::And, 2)
        } else if two("||") {
            (Tok::Or, 2)
        } else if two("==") {
            (Tok::Cmp("=="), 2)
        } else if two("!=") {
            (Tok::Cmp("!="), 2)
        } else if two("<=") {
            (Tok::Cmp("<="), 2)
        } else if two(">=") {
            (Tok::Cmp(">="), 2)
        } else if c == '<' {
            (Tok::Cmp("<"), 1)
        } else if c == '>' {
            (Tok::Cmp(">"), 1)
        } else if c == '!' {
            (Tok::Not, 1)
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => return Err(format!("unterminated string at column {}", i + 1)),
                    Some('\\') => {
                        if let Some(n) = chars.get(j + 1) {
                            s.push(*n);
                        }
                        j += 2;
                    }
                    Some(ch) if *ch == c => break,
                    Some(ch) => {
                        s.push(*ch);
                        j += 1;
                    }
                }
            }
            if s.contains("{{") {
                return Err(format!(
                    "the string {s:?} holds a template: a condition compares values, write the reference without quotes"
                ));
            }
            (Tok::Str(s), j + 1 - i)
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let mut j = i + 1;
            while chars
                .get(j)
                .is_some_and(|d| d.is_ascii_digit() || matches!(d, '.' | 'e' | 'E'))
            {
                j += 1;
            }
            let text: String = chars[i..j].iter().collect();
            if text.parse::<f64>().is_err() {
                return Err(format!("bad number `{text}`"));
            }
            (Tok::Num(text), j - i)
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut j = i + 1;
            while chars.get(j).is_some_and(|d| {
                d.is_ascii_alphanumeric() || matches!(d, '_' | '-' | '.' | '[' | ']')
            }) {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            let tok = match word.as_str() {
                "and" => Tok::And,
                "or" => Tok::Or,
                "not" => Tok::Not,
                "in" => Tok::In,
                "is" => Tok::Is,
                _ => Tok::Ident(word),
            };
            (tok, j - i)
        } else {
            return Err(format!(
                "unexpected `{c}` at column {} (arithmetic, filters and other operators have no equivalent)",
                i + 1
            ));
        };
        out.push(tok);
        i += len;
    }
    Ok(out)
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Str(String),
    Num(String),
    Bool(bool),
    Null,
    Ref(Ref),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Cmp(&'static str, Box<Cond>, Box<Cond>),
    Call(String, Vec<Cond>),
}

struct CondParser<'a, 's> {
    toks: Vec<Tok>,
    i: usize,
    scope: &'a Scope<'s>,
}

impl CondParser<'_, '_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Cond, String> {
        let mut l = self.and()?;
        while self.eat(&Tok::Or) {
            l = Cond::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Cond, String> {
        let mut l = self.not()?;
        while self.eat(&Tok::And) {
            l = Cond::And(Box::new(l), Box::new(self.not()?));
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Cond, String> {
        if self.eat(&Tok::Not) {
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Cond, String> {
        let l = self.primary()?;
        match self.peek().cloned() {
            Some(Tok::Cmp(op)) => {
                self.i += 1;
                let r = self.primary()?;
                status_words(op, l, r)
            }
            Some(Tok::In) => {
                self.i += 1;
                let r = self.primary()?;
                Ok(Cond::Call("contains".into(), vec![r, l]))
            }
            Some(Tok::Not) if self.toks.get(self.i + 1) == Some(&Tok::In) => {
                self.i += 2;
                let r = self.primary()?;
                Ok(Cond::Not(Box::new(Cond::Call(
                    "contains".into(),
                    vec![r, l],
                ))))
            }
            Some(Tok::Is) => {
                self.i += 1;
                let negate = self.eat(&Tok::Not);
                let r = self.primary()?;
                status_words(if negate { "!=" } else { "==" }, l, r)
            }
            _ => Ok(l),
        }
    }

    fn primary(&mut self) -> Result<Cond, String> {
        let Some(tok) = self.toks.get(self.i).cloned() else {
            return Err("unexpected end of the condition".into());
        };
        self.i += 1;
        match tok {
            Tok::LParen => {
                let e = self.or()?;
                if !self.eat(&Tok::RParen) {
                    return Err("expected `)`".into());
                }
                Ok(e)
            }
            Tok::Str(s) => Ok(Cond::Str(s)),
            Tok::Num(n) => Ok(Cond::Num(n)),
            Tok::Ident(id) => match id.as_str() {
                "true" | "True" => Ok(Cond::Bool(true)),
                "false" | "False" => Ok(Cond::Bool(false)),
                "null" | "None" | "none" => Ok(Cond::Null),
                "contains" | "starts_with" | "ends_with" => {
                    if !self.eat(&Tok::LParen) {
                        return Err(format!("expected `(` after `{id}`"));
                    }
                    let mut args = vec![self.or()?];
                    while self.eat(&Tok::Comma) {
                        args.push(self.or()?);
                    }
                    if !self.eat(&Tok::RParen) {
                        return Err("expected `)`".into());
                    }
                    if args.len() != 2 {
                        return Err(format!("`{id}` takes 2 arguments, found {}", args.len()));
                    }
                    Ok(Cond::Call(id, args))
                }
                _ => {
                    if self.peek() == Some(&Tok::LParen) {
                        return Err(format!(
                            "`{id}(...)`: only contains, starts_with and ends_with can be called"
                        ));
                    }
                    let segs = path_segments(&id)
                        .ok_or_else(|| format!("`{id}` is not a name or a dotted path"))?;
                    Ok(Cond::Ref(resolve(&segs, self.scope, &id)?))
                }
            },
            other => Err(format!("unexpected {}", describe(&other))),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::And => "`and`".into(),
        Tok::Or => "`or`".into(),
        Tok::Not => "`not`".into(),
        Tok::In => "`in`".into(),
        Tok::Is => "`is`".into(),
        Tok::Cmp(op) => format!("`{op}`"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Ident(i) => format!("`{i}`"),
    }
}

/// A comparison; a step's status compared with a word takes the legacy words too
/// (`completed`, `success` -> `succeeded`; `failure`, `error` -> `failed`).
fn status_words(op: &'static str, l: Cond, r: Cond) -> Result<Cond, String> {
    let fix = |c: Cond| -> Result<Cond, String> {
        match c {
            Cond::Str(s) => {
                let w = match s.as_str() {
                    "completed" | "success" | "successful" => "succeeded",
                    "failure" | "error" => "failed",
                    other => other,
                };
                if END_STATES.contains(&w) {
                    Ok(Cond::Str(w.to_string()))
                } else {
                    Err(format!(
                        "no step ends with status {s:?} (expected one of {}, or completed/success/failure)",
                        END_STATES.join(", ")
                    ))
                }
            }
            other => Ok(other),
        }
    };
    let is_status = |c: &Cond| matches!(c, Cond::Ref(Ref::Status(_)));
    let (l, r) = if is_status(&l) {
        (l, fix(r)?)
    } else if is_status(&r) {
        (fix(l)?, r)
    } else {
        (l, r)
    };
    Ok(Cond::Cmp(op, Box::new(l), Box::new(r)))
}

fn prec(c: &Cond) -> u8 {
    match c {
        Cond::Or(..) => 1,
        Cond::And(..) => 2,
        Cond::Not(..) => 3,
        Cond::Cmp(..) => 4,
        _ => 5,
    }
}

fn emit(c: &Cond, min: u8, out: &mut String) -> Result<(), String> {
    let wrap = prec(c) < min;
    if wrap {
        out.push('(');
    }
    match c {
        Cond::Str(s) => {
            if s.contains("${") {
                return Err(format!(
                    "the string {s:?} holds `${{`: a condition compares values, write the reference without quotes"
                ));
            }
            out.push('\'');
            for ch in s.chars() {
                if ch == '\'' || ch == '\\' {
                    out.push('\\');
                }
                out.push(ch);
            }
            out.push('\'');
        }
        Cond::Num(n) => out.push_str(n),
        Cond::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Cond::Null => out.push_str("null"),
        Cond::Ref(r) => match r {
            Ref::Var(v) => {
                let _ = write!(out, "vars.{v}");
            }
            Ref::Status(s) => {
                let _ = write!(out, "steps.{s}.status");
            }
            Ref::ExitCode(s) => {
                let _ = write!(out, "steps.{s}.exit_code");
            }
            Ref::Output(s, path) => {
                let _ = write!(out, "steps.{s}.outputs.{}", path.join("."));
            }
        },
        Cond::Not(x) => {
            out.push('!');
            emit(x, 5, out)?;
        }
        Cond::And(l, r) => {
            emit(l, 2, out)?;
            out.push_str(" && ");
            emit(r, 3, out)?;
        }
        Cond::Or(l, r) => {
            emit(l, 1, out)?;
            out.push_str(" || ");
            emit(r, 2, out)?;
        }
        Cond::Cmp(op, l, r) => {
            emit(l, 5, out)?;
            let _ = write!(out, " {op} ");
            emit(r, 5, out)?;
        }
        Cond::Call(f, args) => {
            out.push_str(f);
            out.push('(');
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                emit(a, 1, out)?;
            }
            out.push(')');
        }
    }
    if wrap {
        out.push(')');
    }
    Ok(())
}

/// Translates a legacy `condition` into a Hive `when` expression. The condition may be
/// wrapped in `{{ }}` as a whole, and plain references in it may be too.
pub(crate) fn condition(src: &str, scope: &Scope<'_>) -> Result<String, String> {
    if src.contains("<AUTO>") {
        return Err("`<AUTO>` conditions (decided by a model) have no equivalent".into());
    }
    let toks = tokenize(src)?;
    if toks.is_empty() {
        return Err("empty condition".into());
    }
    let mut p = CondParser { toks, i: 0, scope };
    let c = p.or()?;
    if let Some(t) = p.peek() {
        return Err(format!("unexpected {} after the condition", describe(t)));
    }
    let mut out = String::new();
    emit(&c, 1, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_scope<T>(f: impl FnOnce(&Scope<'_>) -> T) -> T {
        let inputs: BTreeSet<String> = ["topic".to_string(), "depth".to_string()].into();
        let outputs: BTreeMap<String, Vec<String>> = [
            (
                "fetch".to_string(),
                vec!["result".to_string(), "count".to_string()],
            ),
            ("late".to_string(), vec![]),
        ]
        .into();
        let ancestors: HashSet<String> = ["fetch".to_string()].into();
        f(&Scope {
            inputs: &inputs,
            outputs: &outputs,
            ancestors: &ancestors,
            reader: "me",
        })
    }

    #[test]
    fn templates() {
        with_scope(|s| {
            assert_eq!(
                template("q={{ topic }} n={{fetch.count}} r=${topic} $${HOME}", s).expect("ok"),
                "q=${topic} n=${steps.fetch.outputs.count} r=${topic} $${HOME}"
            );
            assert_eq!(
                template("{{ fetch.result.items[0] }}", s).expect("ok"),
                "${steps.fetch.outputs.result.items.0}"
            );
            assert!(template("{{ topic | upper }}", s)
                .expect_err("filter")
                .contains("not a plain reference"));
            assert!(template("${NOPE}", s)
                .expect_err("unknown")
                .contains("unknown variable"));
            assert!(template("{{ late.x }}", s)
                .expect_err("not a dep")
                .contains("does not depend on it"));
            assert!(template("{{ fetch.other }}", s)
                .expect_err("undeclared")
                .contains("declares outputs [result, count]"));
        });
    }

    #[test]
    fn conditions() {
        with_scope(|s| {
            assert_eq!(
                condition("{{ topic == 'rust' and not (fetch.count > 3) }}", s).expect("ok"),
                "vars.topic == 'rust' && !(steps.fetch.outputs.count > 3)"
            );
            assert_eq!(
                condition("fetch.status == 'completed' or 'x' in fetch.result", s).expect("ok"),
                "steps.fetch.status == 'succeeded' || contains(steps.fetch.outputs.result, 'x')"
            );
            assert_eq!(
                condition(
                    "(topic == 'a' or depth > 1) and fetch.result is not None",
                    s
                )
                .expect("ok"),
                "(vars.topic == 'a' || vars.depth > 1) && steps.fetch.outputs.result != null"
            );
            assert_eq!(
                condition("{{ depth }} >= 2", s).expect("ok"),
                "vars.depth >= 2"
            );
            assert!(condition("fetch.status == 'weird'", s)
                .expect_err("bad word")
                .contains("no step ends with status"));
            assert!(condition("'{{ topic }}' == 'rust'", s)
                .expect_err("template in a string")
                .contains("without quotes"));
            assert!(condition("depth + 1 > 2", s)
                .expect_err("arith")
                .contains("unexpected `+`"));
            assert!(condition("len(topic) > 2", s)
                .expect_err("call")
                .contains("only contains"));
        });
    }
}
