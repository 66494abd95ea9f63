//! Scraping the admin server's `/metrics` and reading the Prometheus text format.

use std::{collections::BTreeMap, net::SocketAddr};

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

/// `GET /metrics` from the admin server at `admin`.
pub async fn scrape(admin: SocketAddr) -> Metrics {
    let rsp = crate::client::get(admin, "/metrics").await;
    assert_eq!(rsp.status, 200, "GET /metrics: {}", rsp.text());
    Metrics::parse(&rsp.text())
}

impl Metrics {
    /// Parses Prometheus text. Panics on a line it cannot read: the format is part of what the
    /// tests check.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparseable metrics line: {l:?}")))
            .collect();
        Self {
            text: text.to_string(),
            samples,
        }
    }

    /// Samples named `name` having every label in `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The sum over [`Metrics::find`]: 0 when nothing matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample named `name` has every label in `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.find(name, labels).next().is_some()
    }

    /// Whether the family is declared with `# TYPE`.
    pub fn declares(&self, name: &str) -> bool {
        self.text
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} ")))
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            // A label name up to `=`, or the closing brace.
            let (i, c) = chars.next()?;
            if c == '}' {
                break i;
            }
            if c == ',' {
                continue;
            }
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key.trim().to_string(), value);
        };
        rest = &after[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let m = Metrics::parse(
            "# TYPE request_total counter\n\
             request_total{direction=\"inbound\",authority=\"a\\\"b,c\"} 3\n\
             process_threads 7\n\
             response_latency_ms_bucket{le=\"+Inf\"} 1.5\n",
        );
        assert_eq!(m.samples.len(), 3);
        assert_eq!(m.samples[0].labels["authority"], "a\"b,c");
        assert_eq!(m.sum("request_total", &[("direction", "inbound")]), 3.0);
        assert_eq!(m.sum("request_total", &[("direction", "outbound")]), 0.0);
        assert_eq!(m.sum("process_threads", &[]), 7.0);
        assert_eq!(m.samples[2].labels["le"], "+Inf");
        assert!(m.declares("request_total"));
    }
}
