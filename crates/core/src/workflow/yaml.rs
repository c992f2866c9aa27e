//! YAML → JSON value, keeping the line and column of every node.
//!
//! Typed YAML crates report positions only for syntax errors. `switchyard validate` must point at
//! the line of an unknown step reference or a bad schema too, so the loader builds a
//! `serde_json::Value` from the parser's marked events and records where each path starts.
//! Everything after this module works on JSON values plus this position index.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Where each path (`steps.2.model`) starts in the file: the position of its value, and for
/// a mapping entry also of its key (an unknown field is reported at its key, a bad value at
/// the value).
#[derive(Debug, Clone, Default)]
pub struct PosIndex {
    map: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl PosIndex {
    /// The position of the key of `path`, else as [`PosIndex::at`].
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.at(path))
    }

    /// The position of the value at `path`, or of its closest ancestor that has one.
    pub fn at(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p).or_else(|| self.keys.get(p)) {
                return *pos;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return self.map.get("").copied().unwrap_or(Pos { line: 1, col: 1 }),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Joins a parent path and a segment.
pub fn join(parent: &str, seg: &str) -> String {
    if parent.is_empty() {
        seg.to_string()
    } else {
        format!("{parent}.{seg}")
    }
}

/// How many nodes aliases may add to a document, in all. Aliases are a legitimate way to share
/// a block (`defaults: &d {...}`), but each one copies its anchor's whole value, so a few
/// hundred bytes of nested aliases ("billion laughs") expand to billions of nodes. The 1 MiB file
/// limit bounds what is written, not what aliases expand to; this bounds the latter. Real
/// workflows use a handful of small aliases; 10,000 nodes is far above that.
pub const MAX_ALIAS_NODES: usize = 10_000;

enum Frame {
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
        /// `Builder::nodes` when this collection started: its size is the difference at its end.
        nodes_at_start: usize,
    },
    Map {
        map: Map<String, Value>,
        path: String,
        key: Option<String>,
        anchor: usize,
        nodes_at_start: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    /// Each anchor's value and its size in nodes (aliases inside it counted expanded).
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes built so far, alias expansions included.
    nodes: usize,
    /// Nodes added by aliases so far, checked against [`MAX_ALIAS_NODES`].
    alias_nodes: usize,
    index: PosIndex,
    error: Option<YamlError>,
    documents: usize,
}

fn pos(m: &Marker) -> Pos {
    Pos {
        line: m.line().max(1),
        col: m.col() + 1,
    }
}

/// Resolves a plain scalar the YAML 1.2 core-schema way (what users expect: `true`, `3`,
/// `0.5`, `null`, `~`). Quoted scalars are always strings.
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Number(i.into());
        }
    }
    let looks_numeric = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && s.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

impl Builder {
    /// The path the next value will have, and records its position.
    /// A collection that is a mapping entry's value is located by its key (its own mark is
    /// where its first entry starts, often the next line); scalars by their own position.
    fn next_path(&mut self, mark: &Marker, collection: bool) -> Option<String> {
        let in_map = matches!(self.stack.last(), Some(Frame::Map { .. }));
        let path = match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { items, path, .. }) => Some(join(path, &items.len().to_string())),
            Some(Frame::Map { path, key, .. }) => key.as_ref().map(|k| join(path, k)),
        };
        if let Some(p) = &path {
            if !(collection && in_map) {
                self.index.map.entry(p.clone()).or_insert(pos(mark));
            }
        }
        path
    }

    fn fail(&mut self, mark: &Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                pos: pos(mark),
                message,
            });
        }
    }

    /// Places a finished value into its parent (or as the root).
    fn place(&mut self, value: Value, mark: &Marker) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                }
                None => {
                    // This value is a key.
                    let k = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".to_string(),
                        _ => {
                            self.fail(mark, "mapping keys must be plain strings".into());
                            return;
                        }
                    };
                    if map.contains_key(&k) {
                        self.fail(mark, format!("duplicate key `{k}`"));
                        return;
                    }
                    let (path, first_of) = match self.stack.last() {
                        Some(Frame::Map { path, map, .. }) => {
                            (join(path, &k), map.is_empty().then(|| path.clone()))
                        }
                        _ => (k.clone(), None),
                    };
                    // yaml-rust2 marks a block mapping at its first `:`; it starts at its first key.
                    if let Some(at) = first_of.and_then(|p| self.index.map.get_mut(&p)) {
                        *at = (*at).min(pos(mark));
                    }
                    self.index.keys.insert(path, pos(mark));
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(k);
                    }
                }
            },
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(&mark, "a workflow file holds one YAML document".into());
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == TScalarStyle::Plain {
                    resolve_plain(&text)
                } else {
                    Value::String(text)
                };
                if !self.expecting_key() {
                    self.next_path(&mark, false);
                }
                self.nodes += 1;
                if anchor > 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                self.place(value, &mark);
            }
            Event::Alias(id) => {
                if !self.expecting_key() {
                    self.next_path(&mark, false);
                }
                let Some(&(_, size)) = self.anchors.get(&id) else {
                    self.fail(&mark, "alias to an unknown anchor".into());
                    return;
                };
                // Checked before the copy is made: the copy is what exhausts memory.
                self.alias_nodes = self.alias_nodes.saturating_add(size);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    self.fail(
                        &mark,
                        format!(
                            "alias expansion exceeds {MAX_ALIAS_NODES} nodes (aliases here \
                             copy {} nodes in all); share less through anchors",
                            self.alias_nodes
                        ),
                    );
                    return;
                }
                self.nodes += size;
                if let Some((v, _)) = self.anchors.get(&id).cloned() {
                    self.place(v, &mark);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.expecting_key() {
                    self.fail(&mark, "mapping keys must be plain strings".into());
                    return;
                }
                let path = self.next_path(&mark, true).unwrap_or_default();
                let nodes_at_start = self.nodes;
                let frame = if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq {
                        items: Vec::new(),
                        path,
                        anchor,
                        nodes_at_start,
                    }
                } else {
                    Frame::Map {
                        map: Map::new(),
                        path,
                        key: None,
                        anchor,
                        nodes_at_start,
                    }
                };
                self.stack.push(frame);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor, start) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        anchor,
                        nodes_at_start,
                        ..
                    }) => (Value::Array(items), anchor, nodes_at_start),
                    Some(Frame::Map {
                        map,
                        anchor,
                        nodes_at_start,
                        ..
                    }) => (Value::Object(map), anchor, nodes_at_start),
                    None => return,
                };
                self.nodes += 1;
                if anchor > 0 {
                    let size = self.nodes - start;
                    self.anchors.insert(anchor, (value.clone(), size));
                }
                self.place(value, &mark);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
}

/// Parses one YAML document into a JSON value and the position of every path.
pub fn parse(src: &str) -> Result<(Value, PosIndex), YamlError> {
    let mut builder = Builder {
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        nodes: 0,
        alias_nodes: 0,
        index: PosIndex::default(),
        error: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(YamlError {
            pos: pos(e.marker()),
            message: e.info().to_string(),
        });
    }
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok((builder.root.unwrap_or(Value::Null), builder.index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_positions() {
        let src = "name: demo\nversion: 3\nsteps:\n  - id: a\n    ratio: 0.5\n    on: true\n    q: \"3\"\n  - id: b\n";
        let (v, idx) = parse(src).unwrap();
        assert_eq!(
            v,
            json!({"name": "demo", "version": 3, "steps": [
                {"id": "a", "ratio": 0.5, "on": true, "q": "3"}, {"id": "b"}]})
        );
        assert_eq!(idx.key("name"), Pos { line: 1, col: 1 });
        assert_eq!(idx.at("name"), Pos { line: 1, col: 7 });
        assert_eq!(idx.key("steps.0.id"), Pos { line: 4, col: 5 });
        assert_eq!(idx.at("steps.0.id"), Pos { line: 4, col: 9 });
        assert_eq!(idx.at("steps.1"), Pos { line: 8, col: 5 });
        assert_eq!(idx.at("steps.0.q"), Pos { line: 7, col: 8 });
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(idx.at("steps.0.nope.deeper"), Pos { line: 4, col: 5 });
    }

    #[test]
    fn errors_have_positions() {
        let table = [
            ("a: 1\na: 2\n", 2, "duplicate key `a`"),
            ("a: [1, 2\n", 2, ""),
            ("a: *nope\n", 1, ""),
            ("a: 1\n---\nb: 2\n", 2, "one YAML document"),
        ];
        for (src, line, msg) in table {
            match parse(src) {
                Ok(v) => panic!("{src:?} parsed as {v:?}"),
                Err(e) => {
                    assert_eq!(e.pos.line, line, "{src:?}: {e:?}");
                    assert!(e.message.contains(msg), "{src:?}: {e:?}");
                }
            }
        }
    }

    /// "Billion laughs": ten levels of ten aliases each would expand to 10^9 nodes. It must be
    /// refused at the alias that crosses the budget, quickly and without building the copies.
    #[test]
    fn alias_bombs_are_refused_with_a_position() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..=8 {
            let prev = format!("*a{}", level - 1);
            let items = vec![prev; 10].join(", ");
            src.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        let e = parse(&src).unwrap_err();
        assert!(
            e.message.contains("alias expansion exceeds 10000 nodes"),
            "{e:?}"
        );
        // Aliases copy 110 nodes on line 2 and 1,110 on line 3; line 4's aliases (1,111 nodes
        // each) cross the budget, long before the expensive levels are built.
        assert_eq!(e.pos.line, 4, "{e:?}");

        // A workflow's ordinary sharing of a defaults block stays accepted.
        let ok = "d: &d {retry: {max_attempts: 3}, timeout: 30s}\ns1: *d\ns2: *d\ns3: *d\n";
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn anchors_and_scalars() {
        let (v, _) = parse("x: &d {a: 1}\ny: *d\nz: ~\nw: 0x10\ns: 1e3\nt: 12abc\n").unwrap();
        assert_eq!(
            v,
            json!({"x": {"a": 1}, "y": {"a": 1}, "z": null, "w": 16, "s": 1000.0, "t": "12abc"})
        );
    }
}
