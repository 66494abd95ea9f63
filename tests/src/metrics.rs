//! Scraping the admin server's `/metrics` and reading the Prometheus text format, with the
//! control plane's one parser (`linkerd_control::prom`).

use linkerd_control::prom::Scrape;
use std::net::SocketAddr;

/// One sample line: `name{label="value",...} value`.
pub use linkerd_control::prom::Sample;

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
    scrape: Scrape,
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
        let scrape =
            Scrape::parse(text).unwrap_or_else(|e| panic!("unparseable metrics: {e}\n{text}"));
        Self {
            text: text.to_string(),
            samples: scrape.samples.clone(),
            scrape,
        }
    }

    /// Samples named `name` having every label in `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.scrape.find(name, labels)
    }

    /// The sum over [`Metrics::find`]: 0 when nothing matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape.sum(name, labels)
    }

    /// Whether any sample named `name` has every label in `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.find(name, labels).next().is_some()
    }

    /// Whether the family is declared with `# TYPE`.
    pub fn declares(&self, name: &str) -> bool {
        self.scrape
            .family(name)
            .is_some_and(|f| f.kind != "untyped" || self.text.contains(&format!("# TYPE {name} ")))
    }
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
