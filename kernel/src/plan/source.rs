//! Plan files in JSON, YAML or TOML, read into one JSON value plus the line and column of
//! every key and array element, so that every later error (type, unknown field, unknown
//! dependency, cycle) can name the line it is about.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Number, Value};

/// A 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// The line.
    pub line: usize,
    /// The column.
    pub col: usize,
}

/// The format of a plan file, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Yaml,
    Toml,
}

impl Format {
    /// `.json`, `.yaml`/`.yml` or `.toml`.
    pub(crate) fn of(path: &Path) -> Option<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("json") => Some(Format::Json),
            Some("yaml") | Some("yml") => Some(Format::Yaml),
            Some("toml") => Some(Format::Toml),
            _ => None,
        }
    }
}

/// Where each node of a document starts, by path (`steps[2].depends_on[0]`; the root is
/// `""`). An object member is located at its key.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    map: HashMap<String, Pos>,
}

impl Positions {
    fn put(&mut self, path: &str, pos: Pos) {
        self.map.entry(path.to_string()).or_insert(pos);
    }

    /// The position of `path`, or of its nearest located ancestor.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            let cut = p.rfind(['.', '[']).unwrap_or(0);
            p = &p[..cut];
        }
    }
}

/// A syntax error: the parser's message and where.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// Where, when the parser says.
    pub pos: Option<Pos>,
    /// The parser's message.
    pub message: String,
}

/// Child path of an object member (`parent.key`, or `key` at the root).
pub fn member(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Child path of an array element (`parent[i]`).
pub fn element(path: &str, i: usize) -> String {
    let mut s = String::with_capacity(path.len() + 4);
    s.push_str(path);
    let _ = write!(s, "[{i}]");
    s
}

/// Byte offsets to line and column.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(line).copied().unwrap_or(0);
        let col = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(1, |s| s.chars().count() + 1);
        Pos {
            line: line + 1,
            col,
        }
    }
}

/// Parses `text` as `format` (positions are only computed on demand, see [`positions`]).
pub(crate) fn parse(text: &str, format: Format) -> Result<Value, SyntaxError> {
    match format {
        Format::Json => parse_json(text),
        Format::Yaml => parse_yaml(text).map(|(v, _)| v),
        Format::Toml => parse_toml(text).map(|(v, _)| v),
    }
}

/// The positions of every key and element of a document [`parse`] accepted.
pub(crate) fn positions(text: &str, format: Format) -> Positions {
    match format {
        Format::Json => {
            let mut scan = JsonScan::new(text, true);
            scan.value("");
            scan.out
        }
        Format::Yaml => parse_yaml(text).map(|(_, p)| p).unwrap_or_default(),
        Format::Toml => parse_toml(text).map(|(_, p)| p).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------- JSON --

/// Whether JSON text serde_json accepts has a duplicate key (serde_json keeps the last one;
/// a plan must not).
pub(crate) fn json_has_duplicate_key(text: &str) -> bool {
    let mut scan = JsonScan::new(text, false);
    scan.value("");
    scan.dup.is_some()
}

fn parse_json(text: &str) -> Result<Value, SyntaxError> {
    let value: Value = serde_json::from_str(text).map_err(|e| SyntaxError {
        pos: (e.line() > 0).then(|| Pos {
            line: e.line(),
            col: e.column(),
        }),
        message: strip_json_location(&e.to_string()),
    })?;
    let mut scan = JsonScan::new(text, false);
    scan.value("");
    if let Some(at) = scan.dup {
        let lines = Lines::new(text);
        let mut key_scan = JsonScan::new(text, false);
        key_scan.i = at;
        let key = key_scan.string();
        return Err(SyntaxError {
            pos: Some(lines.pos(at)),
            message: format!("duplicate key `{key}`"),
        });
    }
    Ok(value)
}

/// serde_json appends " at line L column C"; the caller prints the position itself.
fn strip_json_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Walks a document serde_json already accepted: finds duplicate keys and, when `record`,
/// the position of every key and element.
struct JsonScan<'a> {
    b: &'a [u8],
    i: usize,
    record: bool,
    lines: Lines<'a>,
    out: Positions,
    /// Byte offset of the first duplicate key.
    dup: Option<usize>,
    /// Spare vectors for the raw keys of an object (reused across objects).
    keys: Vec<Vec<(usize, usize)>>,
}

impl<'a> JsonScan<'a> {
    fn new(text: &'a str, record: bool) -> Self {
        JsonScan {
            b: text.as_bytes(),
            i: 0,
            record,
            lines: if record {
                Lines::new(text)
            } else {
                Lines {
                    text,
                    starts: Vec::new(),
                }
            },
            out: Positions::default(),
            dup: None,
            keys: Vec::new(),
        }
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    /// Skips a string starting at the opening quote; returns the byte range of its contents.
    fn skip_string(&mut self) -> (usize, usize) {
        let start = self.i + 1;
        self.i += 1;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\\' => self.i += 2,
                b'"' => break,
                _ => self.i += 1,
            }
        }
        let end = self.i.min(self.b.len());
        self.i += 1;
        (start, end)
    }

    /// Skips a string starting at the opening quote; returns it decoded.
    fn string(&mut self) -> String {
        let (start, end) = self.skip_string();
        let raw = &self.b[start..end];
        if raw.contains(&b'\\') {
            serde_json::from_slice::<String>(&self.b[start - 1..(end + 1).min(self.b.len())])
                .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
        } else {
            String::from_utf8_lossy(raw).into_owned()
        }
    }

    fn value(&mut self, path: &str) {
        self.ws();
        let Some(&c) = self.b.get(self.i) else { return };
        if self.record {
            self.out.put(path, self.lines.pos(self.i));
        }
        match c {
            b'{' => {
                self.i += 1;
                let mut seen = self.keys.pop().unwrap_or_default();
                seen.clear();
                loop {
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b'}') | None => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => {
                            self.i += 1;
                            continue;
                        }
                        _ => {}
                    }
                    let at = self.i;
                    let (ks, ke) = self.skip_string();
                    let key = &self.b[ks..ke];
                    if self.dup.is_none() && seen.iter().any(|&(s, e)| &self.b[s..e] == key) {
                        self.dup = Some(at);
                    }
                    seen.push((ks, ke));
                    let p = if self.record {
                        let p = member(path, &String::from_utf8_lossy(key));
                        self.out.put(&p, self.lines.pos(at));
                        p
                    } else {
                        String::new()
                    };
                    self.ws();
                    self.i += 1; // ':'
                    self.value(&p);
                }
                self.keys.push(seen);
            }
            b'[' => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b']') | None => {
                            self.i += 1;
                            return;
                        }
                        Some(b',') => {
                            self.i += 1;
                            continue;
                        }
                        _ => {}
                    }
                    if self.record {
                        self.value(&element(path, n));
                    } else {
                        self.value("");
                    }
                    n += 1;
                }
            }
            b'"' => {
                self.skip_string();
            }
            _ => {
                while self.i < self.b.len()
                    && !matches!(
                        self.b[self.i],
                        b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.i += 1;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------- YAML --

/// Parses YAML 1.2 text (one document) into a JSON value and the position of every node by
/// path: plain scalars become null, booleans and numbers, quoted ones stay strings, and a
/// duplicate key is an error. Plans use it; so does any reader of YAML that must name lines
/// in its errors (the compat pipelines).
pub fn parse_yaml(text: &str) -> Result<(Value, Positions), SyntaxError> {
    use yaml_rust2::parser::Parser;
    let mut b = YamlBuilder::default();
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
    Ok((b.root.unwrap_or(Value::Null), b.out))
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
struct YamlBuilder {
    stack: Vec<Frame>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    out: Positions,
    error: Option<SyntaxError>,
}

impl YamlBuilder {
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

    /// A finished node goes into its parent (or becomes the root).
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
}

fn yaml_scalar(s: String, style: yaml_rust2::scanner::TScalarStyle, tag: Option<&str>) -> Value {
    use yaml_rust2::scanner::TScalarStyle;
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
        if let Ok(f) = s.parse::<f64>() {
            if let Some(n) = Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(s)
}

impl yaml_rust2::parser::MarkedEventReceiver for YamlBuilder {
    fn on_event(&mut self, ev: yaml_rust2::parser::Event, mark: yaml_rust2::scanner::Marker) {
        use yaml_rust2::parser::Event;
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
                        self.out.put(&p, pos);
                    }
                    return;
                }
                self.out.put(&path, pos);
                let v = yaml_scalar(s, style, tag.as_ref().map(|t| t.suffix.as_str()));
                self.attach(v, anchor);
            }
            Event::Alias(id) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    return self.fail(pos, "an alias cannot be a mapping key");
                }
                self.out.put(&path, pos);
                match self.anchors.get(&id).cloned() {
                    Some(v) => self.attach(v, 0),
                    None => self.fail(pos, "unknown alias"),
                }
            }
            Event::SequenceStart(anchor, _) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    return self.fail(pos, "a sequence cannot be a mapping key");
                }
                self.out.put(&path, pos);
                self.stack.push(Frame::Seq {
                    path,
                    items: Vec::new(),
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    return self.fail(pos, "a mapping cannot be a mapping key");
                }
                self.out.put(&path, pos);
                self.stack.push(Frame::Map {
                    path,
                    map: Map::new(),
                    key: None,
                    anchor,
                });
            }
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

// ---------------------------------------------------------------------------------- TOML --

fn parse_toml(text: &str) -> Result<(Value, Positions), SyntaxError> {
    let lines = Lines::new(text);
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| SyntaxError {
        pos: e.span().map(|s| lines.pos(s.start)),
        message: e.message().trim_end().to_string(),
    })?;
    let mut out = Positions::default();
    out.put("", Pos { line: 1, col: 1 });
    let v = toml_table(doc.as_table(), "", &lines, &mut out);
    Ok((v, out))
}

fn toml_table(t: &toml_edit::Table, path: &str, lines: &Lines<'_>, out: &mut Positions) -> Value {
    let mut map = Map::new();
    for (k, _) in t.iter() {
        let Some((key, item)) = t.get_key_value(k) else {
            continue;
        };
        let p = member(path, k);
        if let Some(s) = key.span().or_else(|| item.span()) {
            out.put(&p, lines.pos(s.start));
        }
        map.insert(k.to_string(), toml_item(item, &p, lines, out));
    }
    Value::Object(map)
}

fn toml_item(item: &toml_edit::Item, path: &str, lines: &Lines<'_>, out: &mut Positions) -> Value {
    match item {
        toml_edit::Item::None => Value::Null,
        toml_edit::Item::Value(v) => toml_value(v, path, lines, out),
        toml_edit::Item::Table(t) => toml_table(t, path, lines, out),
        toml_edit::Item::ArrayOfTables(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, t)| {
                    let p = element(path, i);
                    if let Some(s) = t.span() {
                        out.put(&p, lines.pos(s.start));
                    }
                    toml_table(t, &p, lines, out)
                })
                .collect(),
        ),
    }
}

fn toml_value(v: &toml_edit::Value, path: &str, lines: &Lines<'_>, out: &mut Positions) -> Value {
    use toml_edit::Value as T;
    match v {
        T::String(s) => Value::String(s.value().clone()),
        T::Integer(i) => Value::Number((*i.value()).into()),
        T::Float(f) => Number::from_f64(*f.value()).map_or(Value::Null, Value::Number),
        T::Boolean(b) => Value::Bool(*b.value()),
        T::Datetime(d) => Value::String(d.value().to_string()),
        T::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| {
                    let p = element(path, i);
                    if let Some(s) = x.span() {
                        out.put(&p, lines.pos(s.start));
                    }
                    toml_value(x, &p, lines, out)
                })
                .collect(),
        ),
        T::InlineTable(t) => {
            let mut map = Map::new();
            for (k, _) in t.iter() {
                let Some((key, item)) = t.get_key_value(k) else {
                    continue;
                };
                let p = member(path, k);
                if let Some(s) = key.span().or_else(|| item.span()) {
                    out.put(&p, lines.pos(s.start));
                }
                map.insert(k.to_string(), toml_item(item, &p, lines, out));
            }
            Value::Object(map)
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn yaml_values_and_positions_by_path() {
        let (v, p) = parse_yaml("id: x\nsteps:\n  - id: a\n    on_failure: retry 2\n    n: 3\n")
            .expect("parses");
        assert_eq!(v["steps"][0]["on_failure"], "retry 2");
        assert_eq!(v["steps"][0]["n"], 3);
        assert_eq!(p.find("steps[0].on_failure"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(p.find("steps[0].nope.deeper").map(|p| p.line), Some(3));
        let e = parse_yaml("a: 1\na: 2\n").expect_err("duplicate");
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        assert_eq!(e.pos.map(|p| p.line), Some(2));
    }

    use super::*;

    fn at(p: &Positions, path: &str) -> (usize, usize) {
        let pos = p.find(path).expect("located");
        (pos.line, pos.col)
    }

    #[test]
    fn json_positions_point_at_keys_and_elements() {
        let text = "{\n  \"steps\": [\n    {\"id\": \"a\"},\n    {\"id\": \"b\", \"depends_on\": [\"a\"]}\n  ]\n}\n";
        let v = parse(text, Format::Json).expect("valid");
        let p = positions(text, Format::Json);
        assert_eq!(v["steps"][1]["id"], "b");
        assert_eq!(at(&p, "steps"), (2, 3));
        assert_eq!(at(&p, "steps[1]"), (4, 5));
        assert_eq!(at(&p, "steps[1].depends_on[0]"), (4, 32));
        assert_eq!(at(&p, "steps[1].depends_on[0].nothing"), (4, 32));
    }

    #[test]
    fn json_syntax_and_duplicate_keys_have_positions() {
        let e = parse("{\n  \"a\": 1,\n  \"a\": 2\n}", Format::Json).expect_err("dup");
        assert_eq!(e.pos, Some(Pos { line: 3, col: 3 }));
        assert_eq!(e.message, "duplicate key `a`");
        // The same key in two objects is fine.
        parse("[{\"a\": 1, \"b\": {\"a\": 2}}, {\"a\": 3}]", Format::Json).expect("valid");
        let e = parse("{\n  \"a\": [1,\n}", Format::Json).expect_err("syntax");
        assert_eq!(e.pos.map(|p| p.line), Some(3));
        assert!(!e.message.contains(" at line "), "{}", e.message);
    }

    #[test]
    fn yaml_types_positions_and_anchors() {
        let text = "plan_id: x\nsteps:\n  - id: a\n    retries: 2\n    critical: false\n    args: ['1', 2, 0.5, ~]\n  - &b\n    id: b\n  - *b\n";
        let v = parse(text, Format::Yaml).expect("valid");
        let p = positions(text, Format::Yaml);
        assert_eq!(v["steps"][0]["retries"], 2);
        assert_eq!(v["steps"][0]["critical"], false);
        assert_eq!(
            v["steps"][0]["args"],
            serde_json::json!(["1", 2, 0.5, null])
        );
        assert_eq!(v["steps"][2]["id"], "b");
        assert_eq!(at(&p, "steps[0].retries"), (4, 5));
        assert_eq!(at(&p, "steps[1].id"), (8, 5));
        let e = parse("a: 1\na: 2\n", Format::Yaml).expect_err("dup");
        assert_eq!(e.pos.map(|p| p.line), Some(2));
        let e = parse("a: [1, 2\nb: 3\n", Format::Yaml).expect_err("syntax");
        assert!(e.pos.is_some());
    }

    #[test]
    fn toml_positions_for_arrays_of_tables() {
        let text = "plan_id = \"x\"\n\n[[steps]]\nid = \"a\"\n\n[[steps]]\nid = \"b\"\ndepends_on = [\"a\"]\nenv = { K = \"v\" }\n";
        let v = parse(text, Format::Toml).expect("valid");
        let p = positions(text, Format::Toml);
        assert_eq!(v["steps"][1]["env"]["K"], "v");
        assert_eq!(at(&p, "steps[1].id"), (7, 1));
        assert_eq!(at(&p, "steps[1].depends_on[0]"), (8, 15));
        assert_eq!(at(&p, "steps[1].env.K"), (9, 9));
        let e = parse("a = \n", Format::Toml).expect_err("syntax");
        assert_eq!(e.pos.map(|p| p.line), Some(1));
    }
}
