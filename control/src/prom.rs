//! A parser of the Prometheus text format (0.0.4, and the OpenMetrics text the same lines
//! make): families from `# HELP` and `# TYPE`, samples with their labels, the escapes of help
//! texts (`\\`, `\n`) and label values (`\\`, `\"`, `\n`), `+Inf`/`-Inf`/`NaN`, optional
//! timestamps, `# EOF`. One parser for every reader of `/metrics`: the tests, the benchmarks,
//! the CLI.
//!
//! ```text
//! # HELP request_total Requests.        ─► Family { name, help, kind: "counter", samples }
//! # TYPE request_total counter
//! request_total{direction="inbound"} 3  ─► Sample { name, labels, value, timestamp }
//! ```

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries one.
    pub timestamp: Option<i64>,
}

/// A metric family, as `# HELP` and `# TYPE` declare it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    /// `counter`, `gauge`, `histogram`, `summary`, `untyped`… (`untyped` when only `# HELP`
    /// declared it).
    pub kind: String,
    /// Indexes into [`Scrape::samples`] of the samples that belong to it.
    pub samples: Vec<usize>,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub families: Vec<Family>,
    pub samples: Vec<Sample>,
}

/// A line that is not Prometheus text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// What a sample's name may add to its family's (histograms, summaries, OpenMetrics counters).
const SUFFIXES: [&str; 6] = ["_total", "_bucket", "_sum", "_count", "_created", "_info"];

impl Scrape {
    /// Parses a whole exposition; the first line that is not Prometheus text is an error.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut s = Self::default();
        for (i, line) in text.lines().enumerate() {
            s.line(line).map_err(|message| ParseError {
                line: i + 1,
                message,
            })?;
        }
        Ok(s)
    }

    /// Parses what it can, skipping (and returning) the lines it cannot read.
    pub fn parse_lossy(text: &str) -> (Self, Vec<ParseError>) {
        let mut s = Self::default();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if let Err(message) = s.line(line) {
                errors.push(ParseError {
                    line: i + 1,
                    message,
                });
            }
        }
        (s, errors)
    }

    fn line(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.comment(comment.trim_start());
        }
        let sample = parse_sample(line)?;
        let i = self.samples.len();
        let family = self.families.iter_mut().rev().find(|f| {
            sample.name == f.name
                || sample
                    .name
                    .strip_prefix(f.name.as_str())
                    .is_some_and(|rest| SUFFIXES.contains(&rest))
        });
        if let Some(f) = family {
            f.samples.push(i);
        }
        self.samples.push(sample);
        Ok(())
    }

    fn comment(&mut self, c: &str) -> Result<(), String> {
        let (keyword, rest) = c.split_once([' ', '\t']).unwrap_or((c, ""));
        match keyword {
            "HELP" => {
                let rest = rest.trim_start();
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_name(name)?;
                self.declared(name).help = Some(unescape_help(help));
            }
            "TYPE" => {
                let mut words = rest.split_whitespace();
                let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(format!("# TYPE needs a name and a type: {c:?}"));
                };
                check_name(name)?;
                self.declared(name).kind = kind.to_string();
            }
            // `# EOF` and other comments.
            _ => {}
        }
        Ok(())
    }

    fn declared(&mut self, name: &str) -> &mut Family {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    kind: "untyped".into(),
                    ..Family::default()
                });
                self.families.len() - 1
            }
        };
        &mut self.families[at]
    }

    /// The family declared as `name`.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Whether `name` is declared with `# TYPE` (or `# HELP`).
    pub fn declares(&self, name: &str) -> bool {
        self.family(name).is_some()
    }

    /// Samples named `name` having every label in `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has_labels(labels))
    }

    /// The sum over [`Scrape::find`]: 0 when nothing matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }

    /// The value of the first sample [`Scrape::find`] yields.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).next().map(|s| s.value)
    }
}

impl Sample {
    /// Whether every `(name, value)` in `labels` is one of this sample's labels.
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|x| x == v))
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Parses one sample line.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let line = line.trim();
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = line[name_end..].trim_start();
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (l, used) = label_set(after)?;
        labels = l;
        rest = &after[used..];
    }
    let mut words = rest.split_whitespace();
    let value = words
        .next()
        .ok_or_else(|| format!("no value: {line:?}"))
        .and_then(|v| parse_value(v).ok_or_else(|| format!("bad value {v:?}")))?;
    let timestamp = match words.next() {
        None => None,
        Some(t) => Some(t.parse().map_err(|_| format!("bad timestamp {t:?}"))?),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp,
    })
}

/// Parses the inside of a label set, `a="1",b="x\"y"` (the braces optional).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let s = s.trim();
    let inner = s.strip_prefix('{').unwrap_or(s);
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let text = format!("{inner}}}");
    let (labels, used) = label_set(&text)?;
    if used != text.len() {
        return Err(format!(
            "unexpected text after the labels: {:?}",
            &text[used..]
        ));
    }
    Ok(labels)
}

/// The labels up to and including the closing `}` of `s` (which starts after the `{`), and
/// how many bytes they took.
fn label_set(s: &str) -> Result<(BTreeMap<String, String>, usize), String> {
    let mut labels = BTreeMap::new();
    let mut at = 0;
    loop {
        let trimmed = s[at..].trim_start();
        if let Some(after) = trimmed.strip_prefix('}') {
            return Ok((labels, s.len() - after.len()));
        }
        let eq = trimmed
            .find('=')
            .ok_or_else(|| format!("label without a value: {trimmed:?}"))?;
        let key = trimmed[..eq].trim();
        check_name(key)?;
        let after_eq = trimmed[eq + 1..].trim_start();
        let quoted = after_eq
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key} has no quoted value"))?;
        let (value, len) = unescape_value(quoted)?;
        at = s.len() - quoted.len() + len;
        labels.insert(key.to_string(), value);
        let rest = s[at..].trim_start();
        at = s.len() - rest.len();
        if let Some(r) = rest.strip_prefix(',') {
            at = s.len() - r.len();
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after label {key}"));
        }
    }
}

/// A quoted label value (after its opening quote): the value and the bytes it took, closing
/// quote included.
fn unescape_value(s: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, c)) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            (c, _) => out.push(c),
        }
    }
    out
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf", "infinity" and "nan" in any case: not Prometheus.
        v if v
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) =>
        {
            None
        }
        v => v.parse().ok(),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric or label name"))
    }
}

#[cfg(test)]
mod tests;
