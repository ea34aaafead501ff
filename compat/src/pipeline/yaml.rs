//! Reading a legacy pipeline's YAML into JSON values while remembering where every node
//! is (line and column by field path, such as `steps[2].on_failure`), so that every refusal
//! of the translator names its place in the file.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

/// Where each field path starts (a mapping member at its key, a list element at its node).
#[derive(Debug, Default, Clone)]
pub(crate) struct Positions(HashMap<String, Pos>);

impl Positions {
    fn put(&mut self, path: &str, pos: Pos) {
        self.0.entry(path.to_string()).or_insert(pos);
    }

    /// The position of `path`, else of its closest ancestor that has one.
    pub(crate) fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.0.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// `parent.key` (or `key` at the top).
pub(crate) fn member(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(crate) fn element(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A YAML syntax error.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) pos: Option<Pos>,
    pub(crate) message: String,
}

/// Parses YAML 1.2 text (one document) into a JSON value and the positions of its nodes.
/// Plain scalars become null, booleans (`true`/`false` in any common case) and numbers;
/// quoted scalars stay strings; `yes`/`no` stay strings (YAML 1.2). Duplicate keys are errors.
pub(crate) fn parse(text: &str) -> Result<(Value, Positions), SyntaxError> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut b, false).map_err(|e| SyntaxError {
        pos: Some(Pos {
            line: e.marker().line(),
            col: e.marker().col() + 1,
        }),
        message: e.info().to_string(),
    })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok((b.root.unwrap_or(Value::Null), b.positions))
}

enum Frame {
    Map {
        path: String,
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
    },
    Seq {
        path: String,
        items: Vec<Value>,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    positions: Positions,
    error: Option<SyntaxError>,
}

impl Builder {
    /// The path of the node starting now, and whether it is a mapping key.
    fn next_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some(Frame::Map { key: None, .. }) => (String::new(), true),
            Some(Frame::Map {
                path, key: Some(k), ..
            }) => (member(path, k), false),
            Some(Frame::Seq { path, items, .. }) => (element(path, items.len()), false),
        }
    }

    fn fail(&mut self, pos: Pos, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                pos: Some(pos),
                message: message.into(),
            });
        }
    }

    fn attach(&mut self, v: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame::Map { map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, v);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(v),
        }
    }

    fn open(&mut self, pos: Pos, seq: bool, anchor: usize) {
        let (path, is_key) = self.next_path();
        if is_key {
            return self.fail(pos, "a mapping key must be a plain scalar");
        }
        self.positions.put(&path, pos);
        self.stack.push(if seq {
            Frame::Seq {
                path,
                items: Vec::new(),
                anchor,
            }
        } else {
            Frame::Map {
                path,
                map: Map::new(),
                key: None,
                anchor,
            }
        });
    }
}

fn scalar(s: String, style: TScalarStyle, tag: Option<&str>) -> Value {
    if tag == Some("str") || style != TScalarStyle::Plain {
        return Value::String(s);
    }
    match s.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if s.bytes().any(|b| b.is_ascii_digit()) {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s)
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(s, style, anchor, tag) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    let dup = matches!(self.stack.last(), Some(Frame::Map { map, .. }) if map.contains_key(&s));
                    if dup {
                        return self.fail(pos, format!("duplicate key `{s}`"));
                    }
                    if let Some(Frame::Map {
                        path: parent, key, ..
                    }) = self.stack.last_mut()
                    {
                        let p = member(parent, &s);
                        *key = Some(s);
                        self.positions.put(&p, pos);
                    }
                    return;
                }
                self.positions.put(&path, pos);
                let v = scalar(s, style, tag.as_ref().map(|t| t.suffix.as_str()));
                self.attach(v, anchor);
            }
            Event::Alias(id) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    return self.fail(pos, "an alias cannot be a mapping key");
                }
                self.positions.put(&path, pos);
                match self.anchors.get(&id).cloned() {
                    Some(v) => self.attach(v, 0),
                    None => self.fail(pos, "unknown alias"),
                }
            }
            Event::SequenceStart(anchor, _) => self.open(pos, true, anchor),
            Event::MappingStart(anchor, _) => self.open(pos, false, anchor),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() {
                    self.attach(Value::Array(items), anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { map, anchor, .. }) = self.stack.pop() {
                    self.attach(Value::Object(map), anchor);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_positions() {
        let (v, p) =
            parse("id: x\nsteps:\n  - id: a\n    on_failure: retry 2\n    n: 3\n").expect("parses");
        assert_eq!(v["steps"][0]["on_failure"], "retry 2");
        assert_eq!(v["steps"][0]["n"], 3);
        assert_eq!(p.find("steps[0].on_failure"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(p.find("steps[0].nope.deeper").map(|p| p.line), Some(3));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\na: 2\n").expect_err("duplicate");
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        assert_eq!(e.pos.map(|p| p.line), Some(2));
    }
}
