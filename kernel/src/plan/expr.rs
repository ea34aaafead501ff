//! `when` conditions: a small expression language over earlier steps' status, exit code and
//! outputs and the run's variables.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | cmp
//! cmp     := primary (("==" | "!=" | "<" | "<=" | ">" | ">=") primary)?
//! primary := "(" expr ")" | STRING | NUMBER | true | false | null
//!          | steps.ID.status | steps.ID.exit_code | steps.ID.outputs.KEY[.KEY...]
//!          | vars.NAME | FUNC "(" expr ("," expr)* ")"
//! FUNC    := contains | starts_with | ends_with
//! ```
//!
//! Strings are quoted with `'` or `"`. A condition holds when its value is truthy: not false,
//! null, 0, "", [] or {}. A missing output is null.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Contains,
    StartsWith,
    EndsWith,
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Lit(Value),
    Status(Arc<str>),
    ExitCode(Arc<str>),
    Output(Arc<str>, Vec<String>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// The status words a step can end with (what `steps.ID.status` compares to).
pub(crate) const END_STATES: &[&str] = &[
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
    "cached",
];

/// What a condition sees of an ended step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepView<'a> {
    pub(crate) status: &'a str,
    pub(crate) exit_code: Option<i64>,
    pub(crate) outputs: Option<&'a Value>,
}

/// A parse error with the 1-based column in the expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExprError {
    pub(crate) col: usize,
    pub(crate) message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at column {})", self.message, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Str(String),
    Num(f64),
    Ident(String),
}

fn tokenize(src: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |col: usize, m: String| ExprError {
        col: col + 1,
        message: m,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let two = |s: &str| {
            chars
                .get(i..i + 2)
                .is_some_and(|w| w.iter().copied().eq(s.chars()))
        };
        let tok = if c.is_whitespace() {
            i += 1;
            continue;
        } else if c == '(' {
            i += 1;
            Tok::LParen
        } else if c == ')' {
            i += 1;
            Tok::RParen
        } else if c == ',' {
            i += 1;
            Tok::Comma
        } else if two("&&") {
            i += 2;
            Tok::And
        } else if two("||") {
            i += 2;
            Tok::Or
        } else if two("==") {
            i += 2;
            Tok::Cmp(CmpOp::Eq)
        } else if two("!=") {
            i += 2;
            Tok::Cmp(CmpOp::Ne)
        } else if two("<=") {
            i += 2;
            Tok::Cmp(CmpOp::Le)
        } else if two(">=") {
            i += 2;
            Tok::Cmp(CmpOp::Ge)
        } else if c == '<' {
            i += 1;
            Tok::Cmp(CmpOp::Lt)
        } else if c == '>' {
            i += 1;
            Tok::Cmp(CmpOp::Gt)
        } else if c == '!' {
            i += 1;
            Tok::Not
        } else if c == '\'' || c == '"' {
            let q = c;
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(err(start, "unterminated string".into())),
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                    }
                    Some(ch) if *ch == q => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            Tok::Str(s)
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            i += 1;
            while chars
                .get(i)
                .is_some_and(|d| d.is_ascii_digit() || *d == '.' || *d == 'e' || *d == 'E')
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            Tok::Num(
                text.parse()
                    .map_err(|_| err(start, format!("bad number `{text}`")))?,
            )
        } else if c.is_ascii_alphabetic() || c == '_' {
            while chars
                .get(i)
                .is_some_and(|d| d.is_ascii_alphanumeric() || matches!(d, '_' | '-' | '.'))
            {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else {
            return Err(err(start, format!("unexpected `{c}`")));
        };
        out.push((start + 1, tok));
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<(usize, Tok)>,
    i: usize,
    end: usize,
    vars: &'a BTreeMap<String, String>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(_, t)| t)
    }

    fn col(&self) -> usize {
        self.toks.get(self.i).map_or(self.end, |(c, _)| *c)
    }

    fn err<T>(&self, m: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError {
            col: self.col(),
            message: m.into(),
        })
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.i += 1;
            l = Expr::And(Box::new(l), Box::new(self.unary()?));
        }
        Ok(l)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.peek() == Some(&Tok::Not) {
            self.i += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        let l = self.primary()?;
        if let Some(Tok::Cmp(op)) = self.peek() {
            let op = *op;
            self.i += 1;
            let r = self.primary()?;
            return Ok(Expr::Cmp(op, Box::new(l), Box::new(r)));
        }
        Ok(l)
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let Some((_, tok)) = self.toks.get(self.i).cloned() else {
            return self.err("unexpected end of expression");
        };
        let col = self.col();
        self.i += 1;
        match tok {
            Tok::LParen => {
                let e = self.or()?;
                if self.peek() != Some(&Tok::RParen) {
                    return self.err("expected `)`");
                }
                self.i += 1;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Num(n) => Ok(Expr::Lit(Value::from(n))),
            Tok::Ident(id) => self.ident(&id, col),
            other => {
                self.i -= 1;
                self.err(format!("unexpected {}", describe(&other)))
            }
        }
    }

    fn ident(&mut self, id: &str, col: usize) -> Result<Expr, ExprError> {
        let bad = |m: String| Err(ExprError { col, message: m });
        match id {
            "true" => return Ok(Expr::Lit(Value::Bool(true))),
            "false" => return Ok(Expr::Lit(Value::Bool(false))),
            "null" => return Ok(Expr::Lit(Value::Null)),
            "contains" | "starts_with" | "ends_with" => {
                let f = match id {
                    "contains" => Func::Contains,
                    "starts_with" => Func::StartsWith,
                    _ => Func::EndsWith,
                };
                if self.peek() != Some(&Tok::LParen) {
                    return self.err(format!("expected `(` after `{id}`"));
                }
                self.i += 1;
                let mut args = vec![self.or()?];
                while self.peek() == Some(&Tok::Comma) {
                    self.i += 1;
                    args.push(self.or()?);
                }
                if self.peek() != Some(&Tok::RParen) {
                    return self.err("expected `)`");
                }
                self.i += 1;
                if args.len() != 2 {
                    return bad(format!("`{id}` takes 2 arguments, found {}", args.len()));
                }
                return Ok(Expr::Call(f, args));
            }
            _ => {}
        }
        let segs: Vec<&str> = id.split('.').collect();
        match segs.as_slice() {
            ["steps", step, "status"] if !step.is_empty() => Ok(Expr::Status(Arc::from(*step))),
            ["steps", step, "exit_code"] if !step.is_empty() => {
                Ok(Expr::ExitCode(Arc::from(*step)))
            }
            ["steps", step, "outputs", path @ ..]
                if !step.is_empty() && !path.is_empty() && path.iter().all(|p| !p.is_empty()) =>
            {
                Ok(Expr::Output(
                    Arc::from(*step),
                    path.iter().map(|s| s.to_string()).collect(),
                ))
            }
            ["steps", ..] => bad(format!(
                "`{id}`: expected steps.ID.status, steps.ID.exit_code or steps.ID.outputs.KEY"
            )),
            ["vars", name] => match self.vars.get(*name) {
                Some(v) => Ok(Expr::Lit(Value::String(v.clone()))),
                None => bad(format!("unknown variable `vars.{name}`")),
            },
            _ => bad(format!(
                "unknown name `{id}` (expected steps.ID..., vars.NAME, a literal or a function)"
            )),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Not => "`!`".into(),
        Tok::And => "`&&`".into(),
        Tok::Or => "`||`".into(),
        Tok::Cmp(_) => "comparison".into(),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Ident(i) => format!("`{i}`"),
    }
}

impl Expr {
    /// Parses a condition; `vars.NAME` is resolved now.
    pub(crate) fn parse(src: &str, vars: &BTreeMap<String, String>) -> Result<Expr, ExprError> {
        let toks = tokenize(src)?;
        if toks.is_empty() {
            return Err(ExprError {
                col: 1,
                message: "empty condition".into(),
            });
        }
        let mut p = Parser {
            toks,
            i: 0,
            end: src.chars().count() + 1,
            vars,
        };
        let e = p.or()?;
        if p.i < p.toks.len() {
            let t = p.toks[p.i].1.clone();
            return p.err(format!("unexpected {} after the expression", describe(&t)));
        }
        Ok(e)
    }

    /// Every step the condition reads, with whether it reads outputs (and which key).
    pub(crate) fn step_refs(&self, out: &mut Vec<(Arc<str>, Option<String>)>) {
        match self {
            Expr::Lit(_) => {}
            Expr::Status(s) | Expr::ExitCode(s) => out.push((s.clone(), None)),
            Expr::Output(s, p) => out.push((s.clone(), p.first().cloned())),
            Expr::Not(e) => e.step_refs(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) => {
                a.step_refs(out);
                b.step_refs(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.step_refs(out)),
        }
    }

    /// Status literals compared with `steps.ID.status` that no step can have.
    pub(crate) fn bad_status_literals(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Cmp(_, a, b) = e {
                for (x, y) in [(a, b), (b, a)] {
                    if let (Expr::Status(_), Expr::Lit(Value::String(s))) = (&**x, &**y) {
                        if !END_STATES.contains(&s.as_str()) {
                            out.push(s.clone());
                        }
                    }
                }
            }
        });
        out
    }

    fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Not(e) => e.walk(f),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.walk(f)),
            _ => {}
        }
    }

    /// Evaluates with `step` describing ended steps (None: unknown step, read as null).
    pub(crate) fn eval<'v>(&self, step: &dyn Fn(&str) -> Option<StepView<'v>>) -> Value {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Status(s) => step(s).map_or(Value::Null, |v| Value::String(v.status.into())),
            Expr::ExitCode(s) => step(s)
                .and_then(|v| v.exit_code)
                .map_or(Value::Null, Value::from),
            Expr::Output(s, path) => step(s)
                .and_then(|v| v.outputs)
                .and_then(|o| super::template::lookup(o, path))
                .cloned()
                .unwrap_or(Value::Null),
            Expr::Not(e) => Value::Bool(!truthy(&e.eval(step))),
            Expr::And(a, b) => Value::Bool(truthy(&a.eval(step)) && truthy(&b.eval(step))),
            Expr::Or(a, b) => Value::Bool(truthy(&a.eval(step)) || truthy(&b.eval(step))),
            Expr::Cmp(op, a, b) => Value::Bool(compare(*op, &a.eval(step), &b.eval(step))),
            Expr::Call(f, args) => {
                let a = args.first().map_or(Value::Null, |x| x.eval(step));
                let b = args.get(1).map_or(Value::Null, |x| x.eval(step));
                Value::Bool(call(*f, &a, &b))
            }
        }
    }

    /// Whether the condition holds.
    pub(crate) fn holds<'v>(&self, step: &dyn Fn(&str) -> Option<StepView<'v>>) -> bool {
        truthy(&self.eval(step))
    }
}

/// False, null, 0, "", [] and {} are false; everything else is true.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn compare(op: CmpOp, a: &Value, b: &Value) -> bool {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        // A number and a string holding one compare as numbers ("3" == 3).
        (Value::Number(x), Value::String(y)) => x
            .as_f64()
            .zip(y.trim().parse::<f64>().ok())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::Number(y)) => x
            .trim()
            .parse::<f64>()
            .ok()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        _ => (a == b).then_some(Ordering::Equal),
    };
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

fn call(f: Func, a: &Value, b: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match f {
        Func::Contains => match a {
            Value::Array(items) => items.iter().any(|x| compare(CmpOp::Eq, x, b)),
            Value::Object(m) => m.contains_key(&text(b)),
            Value::Null => false,
            other => text(other).contains(&text(b)),
        },
        Func::StartsWith => text(a).starts_with(&text(b)),
        Func::EndsWith => text(a).ends_with(&text(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Expr, ExprError> {
        let vars = [("BRANCH".to_string(), "main".to_string())].into();
        Expr::parse(s, &vars)
    }

    fn eval(s: &str) -> bool {
        let out = json!({"version": "1.2.0", "n": 3, "files": ["a", "b"], "ok": true});
        let e = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        e.holds(&|id| match id {
            "build" => Some(StepView {
                status: "succeeded",
                exit_code: Some(0),
                outputs: Some(&out),
            }),
            "lint" => Some(StepView {
                status: "failed",
                exit_code: Some(2),
                outputs: None,
            }),
            _ => None,
        })
    }

    #[test]
    fn conditions_evaluate() {
        assert!(eval("steps.build.status == 'succeeded'"));
        assert!(eval(
            "steps.lint.status != \"succeeded\" && steps.lint.exit_code == 2"
        ));
        assert!(eval(
            "steps.build.outputs.n >= 3 && steps.build.outputs.n < 4"
        ));
        assert!(eval("steps.build.outputs.n == '3'"));
        assert!(eval("contains(steps.build.outputs.files, 'b')"));
        assert!(eval("starts_with(steps.build.outputs.version, '1.')"));
        assert!(eval("!steps.build.outputs.missing"));
        assert!(eval("steps.build.outputs.ok"));
        assert!(eval("vars.BRANCH == 'main' || false"));
        assert!(!eval("(true || false) && !(steps.lint.status == 'failed')"));
        assert!(eval("steps.build.outputs.files.1 == 'b'"));
        assert!(!eval("null"));
        assert!(eval("-1 < 0"));
    }

    #[test]
    fn parse_errors_have_columns() {
        let e = parse("steps.a.status == ").expect_err("incomplete");
        assert!(e.message.contains("end of expression"), "{e}");
        let e = parse("steps.a.status = 'x'").expect_err("single =");
        assert_eq!(e.col, 16);
        let e = parse("vars.NOPE").expect_err("unknown var");
        assert!(e.message.contains("vars.NOPE"), "{e}");
        assert!(parse("steps.a.stat").is_err());
        assert!(parse("contains('a')").is_err());
        assert!(parse("(true").is_err());
        assert!(parse("true true").is_err());
        assert!(parse("'open").is_err());
    }

    #[test]
    fn refs_and_bad_status_literals() {
        let e = parse("steps.a.status == 'succeded' || steps.b.outputs.k.x").expect("ok");
        let mut refs = Vec::new();
        e.step_refs(&mut refs);
        assert_eq!(
            refs,
            vec![
                (Arc::from("a"), None),
                (Arc::from("b"), Some("k".to_string()))
            ]
        );
        assert_eq!(e.bad_status_literals(), vec!["succeded".to_string()]);
    }
}
