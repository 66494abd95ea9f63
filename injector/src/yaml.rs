//! Kubernetes YAML read as `kubectl` reads it.
//!
//! `kubectl` turns each document into JSON with `sigs.k8s.io/yaml`, whose parser (go-yaml v2)
//! resolves plain scalars by YAML 1.1's rules, not 1.2's: `0755` is the octal 493 (a
//! `defaultMode` written that way is common), `0x1F` is 31, `1_000` is 1000, `yes`/`no`/`on`/
//! `off`/`y`/`n` are booleans, a number with a fraction is a float. Quoted scalars, block
//! scalars and `!!str` are always strings. Anchors, aliases and merge keys (`<<`) are
//! expanded; a key that repeats takes its last value, as go-yaml does. A float with no
//! fraction is written as an integer, as Go's JSON encoder writes it (so `defaultMode: 08`,
//! the float 8, is the integer 8 kubectl sends); NaN and infinities, which JSON cannot hold,
//! make the document unreadable, as they make kubectl fail.
//!
//! Documents are split on their `---` lines before parsing, so one that does not parse is
//! reported and kept as written while the others are read.

use granit_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// One document of a multi-document stream, as written: `prefix`, then `marker`, then `body`,
/// which together are its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document<'a> {
    /// Blank lines, comments and directives before its `---` line.
    pub prefix: &'a str,
    /// Its `---` line (which may carry content: `--- {a: 1}`), with the line break; empty for
    /// a first document without one.
    pub marker: &'a str,
    pub body: &'a str,
    /// The line (from 1) of its `---`, or of its first line.
    pub line: usize,
}

impl Document<'_> {
    /// Its text, as written.
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(self.prefix.len() + self.marker.len() + self.body.len());
        s.push_str(self.prefix);
        s.push_str(self.marker);
        s.push_str(self.body);
        s
    }

    /// Whether it holds nothing but blank lines, comments and directives.
    pub fn is_empty(&self) -> bool {
        (self.marker.is_empty() || is_bare_marker(self.marker.trim_end()))
            && self.body.lines().all(movable)
    }
}

/// `---` alone, or followed by spaces or a comment.
fn is_bare_marker(line: &str) -> bool {
    let rest = line.get(3..).unwrap_or("").trim();
    rest.is_empty() || rest.starts_with('#')
}

fn is_marker(line: &str) -> bool {
    line.starts_with("---") && (line.len() == 3 || line[3..].starts_with([' ', '\t']))
}

/// A line that belongs as well to the next document as to the one before it: blank, or a
/// comment or directive in the first column.
fn movable(line: &str) -> bool {
    line.trim().is_empty() || line.starts_with('#') || line.starts_with('%')
}

/// Splits a stream at its `---` lines. Comments and directives just before a `---` go with
/// the document it starts; joining the documents' texts gives the input back.
pub fn split(input: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    // The current document: where it starts, its marker (start, end), where its content ends.
    let mut start = 0;
    let mut marker: Option<(usize, usize, usize)> = None; // (start, end, line)
    let mut content_end: Option<usize> = None;
    let mut offset = 0;
    let mut finish = |start: usize, marker: Option<(usize, usize, usize)>, end: usize| {
        let (prefix_end, body_start, line) = match marker {
            Some((m0, m1, line)) => (m0, m1, line),
            None => (start, start, 1 + input[..start].matches('\n').count()),
        };
        docs.push(Document {
            prefix: &input[start..prefix_end],
            marker: &input[prefix_end..body_start],
            body: &input[body_start..end],
            line,
        });
    };
    for (i, raw) in input.split_inclusive('\n').enumerate() {
        let line = raw.trim_end_matches(['\n', '\r']);
        if is_marker(line) {
            match (marker, content_end) {
                // Content before it: that document ends after its last content line.
                (_, Some(end)) => {
                    finish(start, marker, end);
                    start = end;
                }
                // A document of a marker and nothing else.
                (Some((_, m1, _)), None) => {
                    finish(start, marker, m1);
                    start = m1;
                }
                // Only comments so far: they go with this marker's document.
                (None, None) => {}
            }
            marker = Some((offset, offset + raw.len(), i + 1));
            content_end = None;
        } else if !movable(line) {
            content_end = Some(offset + raw.len());
        }
        offset += raw.len();
    }
    if marker.is_some() || start < input.len() {
        finish(start, marker, input.len());
    }
    // A stream of nothing but blank lines has no documents.
    if docs.len() == 1 && docs[0].is_empty() && input.trim().is_empty() {
        docs.clear();
    }
    docs
}

/// One document's value, as kubectl reads it (`Null` for an empty document).
pub fn parse(doc: &Document<'_>) -> Result<Value, String> {
    parse_str(&doc.text())
}

/// A single document's text, as kubectl reads it.
pub fn parse_str(text: &str) -> Result<Value, String> {
    let mut b = Builder::default();
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| e.to_string())?;
        let at = || format!("line {}", span.start.line());
        match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(format!("{}: a second document without `---`", at()));
                }
            }
            Event::Alias(id) => {
                let v = b
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("{}: an alias to an unknown anchor", at()))?;
                b.value(v).map_err(|e| format!("{}: {e}", at()))?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|t| format!("{}{}", t.handle(), t.suffix()));
                let (v, merge) =
                    scalar(&text, style, tag.as_deref()).map_err(|e| format!("{}: {e}", at()))?;
                if anchor != 0 {
                    b.anchors.insert(anchor, v.clone());
                }
                if merge && b.expecting_key() {
                    b.merge_key();
                } else {
                    b.value(v).map_err(|e| format!("{}: {e}", at()))?;
                }
            }
            Event::SequenceStart(_, anchor, _) => b.stack.push(Frame::Seq(Vec::new(), anchor)),
            Event::MappingStart(_, anchor, _) => b.stack.push(Frame::Map(MapFrame {
                anchor,
                ..MapFrame::default()
            })),
            Event::SequenceEnd | Event::MappingEnd => {
                let (v, anchor) = match b.stack.pop() {
                    Some(Frame::Seq(items, anchor)) => (Value::Array(items), anchor),
                    Some(Frame::Map(m)) => {
                        let anchor = m.anchor;
                        (m.finish(), anchor)
                    }
                    None => return Err(format!("{}: an unbalanced collection", at())),
                };
                if anchor != 0 {
                    b.anchors.insert(anchor, v.clone());
                }
                b.value(v).map_err(|e| format!("{}: {e}", at()))?;
            }
            _ => {}
        }
    }
    Ok(b.root.unwrap_or(Value::Null))
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
}

#[derive(Debug)]
enum Frame {
    Seq(Vec<Value>, usize),
    Map(MapFrame),
}

#[derive(Debug, Default)]
struct MapFrame {
    map: Map<String, Value>,
    /// The key read, waiting for its value.
    key: Option<String>,
    /// The next value is a merge key's (`<<`).
    merging: bool,
    /// Mappings to merge in, earlier ones first; explicit keys win.
    merges: Vec<Map<String, Value>>,
    anchor: usize,
}

impl MapFrame {
    fn finish(self) -> Value {
        let mut map = self.map;
        for m in self.merges {
            for (k, v) in m {
                map.entry(k).or_insert(v);
            }
        }
        Value::Object(map)
    }
}

impl Builder {
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map(m)) if m.key.is_none() && !m.merging)
    }

    fn merge_key(&mut self) {
        if let Some(Frame::Map(m)) = self.stack.last_mut() {
            m.merging = true;
        }
    }

    /// A complete node: the root, an item, a key or a value.
    fn value(&mut self, v: Value) -> Result<(), String> {
        match self.stack.last_mut() {
            None => {
                self.root = Some(v);
                Ok(())
            }
            Some(Frame::Seq(items, _)) => {
                items.push(v);
                Ok(())
            }
            Some(Frame::Map(m)) if m.merging => {
                m.merging = false;
                match v {
                    Value::Object(o) => m.merges.push(o),
                    Value::Array(items) => {
                        for item in items {
                            match item {
                                Value::Object(o) => m.merges.push(o),
                                _ => return Err("a merge key (<<) takes mappings".into()),
                            }
                        }
                    }
                    _ => return Err("a merge key (<<) takes a mapping".into()),
                }
                Ok(())
            }
            Some(Frame::Map(m)) => match m.key.take() {
                None => {
                    m.key = Some(key_string(&v)?);
                    Ok(())
                }
                Some(k) => {
                    // A repeated key takes its last value, as go-yaml's does.
                    m.map.insert(k, v);
                    Ok(())
                }
            },
        }
    }
}

/// A mapping key as JSON's string, as `sigs.k8s.io/yaml` writes non-string keys.
fn key_string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok("null".into()),
        _ => Err("a mapping or sequence as a key".into()),
    }
}

const CORE: &str = "tag:yaml.org,2002:";

/// A scalar's value, and whether it is a merge key.
fn scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Result<(Value, bool), String> {
    let core = tag.and_then(|t| t.strip_prefix(CORE).or_else(|| t.strip_prefix("!!")));
    match core {
        Some("str" | "binary" | "timestamp") => return Ok((Value::String(text.into()), false)),
        Some("null") => return Ok((Value::Null, false)),
        Some(kind @ ("int" | "float" | "bool")) => {
            let (v, _) = resolve_plain(text)?;
            let ok = match (kind, &v) {
                ("int", Value::Number(n)) => n.is_i64() || n.is_u64(),
                ("float", Value::Number(_)) | ("bool", Value::Bool(_)) => true,
                _ => false,
            };
            if !ok {
                return Err(format!("cannot decode {text:?} as !!{kind}"));
            }
            return Ok((v, false));
        }
        _ => {}
    }
    if style != ScalarStyle::Plain || tag.is_some_and(|t| t == "!") {
        return Ok((Value::String(text.into()), false));
    }
    resolve_plain(text)
}

/// A plain scalar resolved by go-yaml v2's YAML 1.1 rules.
fn resolve_plain(s: &str) -> Result<(Value, bool), String> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok((Value::Null, false)),
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok((Value::Bool(true), false));
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok((Value::Bool(false), false));
        }
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF"
        | "-.inf" | "-.Inf" | "-.INF" => {
            return Err(format!("{s} is not a number JSON can hold"));
        }
        "<<" => return Ok((Value::String(s.into()), true)),
        _ => {}
    }
    let first = s.as_bytes()[0];
    if first == b'.' {
        if let Some(v) = float(s) {
            return Ok((v?, false));
        }
    } else if first.is_ascii_digit() || first == b'+' || first == b'-' {
        let plain: String = s.chars().filter(|c| *c != '_').collect();
        if let Some(n) = go_int(&plain) {
            return Ok((n, false));
        }
        if is_yaml_float(&plain)
            && let Some(v) = float(&plain)
        {
            return Ok((v?, false));
        }
    }
    Ok((Value::String(s.into()), false))
}

/// `strconv.ParseInt(s, 0, 64)`, then `ParseUint`: a sign, then `0x`, `0o`, `0b` or a leading
/// `0` (octal) for the base.
fn go_int(s: &str) -> Option<Value> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(r) = lower.strip_prefix("0x") {
        (16, r)
    } else if let Some(r) = lower.strip_prefix("0o") {
        (8, r)
    } else if let Some(r) = lower.strip_prefix("0b") {
        (2, r)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        let v = i64::try_from(magnitude)
            .ok()
            .map(|m| -m)
            .or((magnitude == 1 << 63).then_some(i64::MIN))?;
        Some(Value::Number(v.into()))
    } else {
        Some(Value::Number(magnitude.into()))
    }
}

/// go-yaml's float syntax: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        None => digits(mantissa),
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// A float as Go's JSON encoder writes it: whole numbers as integers. `None` when `s` is not
/// a float; an error when it is one JSON cannot hold.
fn float(s: &str) -> Option<Result<Value, String>> {
    let f: f64 = s.parse().ok()?;
    if !f.is_finite() {
        return Some(Err(format!("{s} is not a number JSON can hold")));
    }
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Some(Ok(Value::Number((f as i64).into())));
    }
    Some(
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{s}: not a number")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        parse_str(text).unwrap()
    }

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1_does() {
        let v = one(
            "octal: 0755\nsmall: 0644\nhex: 0x1F\nbinary: 0b101\nnew_octal: 0o17\nunder: 1_000\n\
             neg: -0755\nplus: +12\nzero: 0\neight: 08\nfloat: 1.5\nexp: 1e3\ndot: .5\n\
             b1: yes\nb2: No\nb3: ON\nb4: off\nb5: y\nb6: n\nb7: true\nyes: key\nnull1: ~\nnull2:\n\
             date: 2001-12-14\nsexagesimal: 1:20\nversion: 1.2.3\nword: web\n",
        );
        assert_eq!(v["octal"], 493);
        assert_eq!(v["small"], 420);
        assert_eq!(v["hex"], 31);
        assert_eq!(v["binary"], 5);
        assert_eq!(v["new_octal"], 15);
        assert_eq!(v["under"], 1000);
        assert_eq!(v["neg"], -493);
        assert_eq!(v["plus"], 12);
        assert_eq!(v["zero"], 0);
        // Not octal, so a float (8.0), which JSON writes as 8.
        assert_eq!(v["eight"], 8);
        assert!(v["eight"].is_i64());
        assert_eq!(v["float"], 1.5);
        assert_eq!(v["exp"], 1000);
        assert_eq!(v["dot"], 0.5);
        for (k, b) in [
            ("b1", true),
            ("b2", false),
            ("b3", true),
            ("b4", false),
            ("b5", true),
            ("b6", false),
            ("b7", true),
        ] {
            assert_eq!(v[k], b, "{k}");
        }
        // Keys resolve too: `yes:` is the key "true".
        assert_eq!(v["true"], "key");
        assert_eq!(v["null1"], Value::Null);
        assert_eq!(v["null2"], Value::Null);
        assert_eq!(v["date"], "2001-12-14");
        assert_eq!(v["sexagesimal"], "1:20");
        assert_eq!(v["version"], "1.2.3");
        assert_eq!(v["word"], "web");
    }

    #[test]
    fn quoted_block_and_tagged_scalars_are_strings() {
        let v = one(
            "a: '0755'\nb: \"yes\"\nc: !!str 0755\nd: |\n  0755\ne: >-\n  on\nf: !!int \"0x10\"\n",
        );
        assert_eq!(v["a"], "0755");
        assert_eq!(v["b"], "yes");
        assert_eq!(v["c"], "0755");
        assert_eq!(v["d"], "0755\n");
        assert_eq!(v["e"], "on");
        assert_eq!(v["f"], 16);
        assert!(parse_str("a: !!int nope\n").is_err());
    }

    #[test]
    fn anchors_aliases_and_merge_keys_are_expanded() {
        let v = one("base: &base {cpu: 100m, memory: 64Mi}\nlimits: *base\n\
             merged:\n  <<: *base\n  memory: 128Mi\nboth:\n  <<: [{a: 1}, {a: 2, b: 2}]\n");
        assert_eq!(v["limits"], json!({"cpu": "100m", "memory": "64Mi"}));
        assert_eq!(v["merged"], json!({"cpu": "100m", "memory": "128Mi"}));
        assert_eq!(v["both"], json!({"a": 1, "b": 2}));
        assert!(parse_str("a: *nowhere\n").is_err());
    }

    #[test]
    fn keys_repeat_last_wins_and_what_json_cannot_hold_is_an_error() {
        assert_eq!(one("a: 1\na: 2\n"), json!({"a": 2}));
        assert_eq!(
            one("80: http\ntrue: x\n"),
            json!({"80": "http", "true": "x"})
        );
        assert!(parse_str("a: .inf\n").is_err());
        assert!(parse_str("a: .nan\n").is_err());
        assert!(parse_str("? [a]\n: b\n").is_err());
        assert!(parse_str("a: [1, 2\n").is_err());
        assert_eq!(one(""), Value::Null);
        assert_eq!(one("# only a comment\n"), Value::Null);
    }

    #[test]
    fn streams_split_at_their_markers_and_join_back() {
        let text = "# leading comment\napiVersion: v1\nkind: A\n# about B\n---\nkind: B\n--- # c\nkind: C\n---\n%YAML 1.1\n---\nkind: D\n---\n";
        let docs = split(text);
        let kinds: Vec<Value> = docs
            .iter()
            .map(|d| parse(d).unwrap_or(Value::Null)["kind"].clone())
            .collect();
        assert_eq!(
            kinds,
            [
                json!("A"),
                json!("B"),
                json!("C"),
                Value::Null,
                json!("D"),
                Value::Null
            ]
        );
        assert_eq!(docs[0].prefix, "");
        assert_eq!(docs[0].marker, "");
        assert!(docs[0].body.starts_with("# leading comment"));
        // The comment before B's marker is B's.
        assert_eq!(docs[1].prefix, "# about B\n");
        assert_eq!(docs[1].line, 5);
        assert!(docs[3].is_empty());
        assert!(docs[5].is_empty());
        let joined: String = docs.iter().map(Document::text).collect();
        assert_eq!(joined, text);
        // A marker with content, a stream that starts with a marker, a block scalar whose
        // indented lines look like comments.
        let docs = split("--- {kind: X}\n---\nkind: Y\ndata:\n  s: |\n    # kept\n---\n");
        assert_eq!(parse(&docs[0]).unwrap()["kind"], "X");
        assert_eq!(parse(&docs[1]).unwrap()["data"]["s"], "# kept\n");
        assert!(split("").is_empty());
        assert!(split("\n\n").is_empty());
        assert_eq!(split("# only\n").len(), 1);
    }
}
