//! Reading a sidecar's `/metrics` into the numbers `mesh up` shows: requests, successes and a
//! latency histogram per direction, plus TLS share and RSS.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

/// Cumulative counters from one scrape, for one direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub requests: f64,
    pub responses: f64,
    pub successes: f64,
    pub tls_responses: f64,
    /// `le` bound in ms (f64::INFINITY for +Inf) -> cumulative count.
    pub buckets: BTreeMap<u64, f64>,
    pub rss_bytes: f64,
}

/// Rates and percentiles between two snapshots.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Window {
    pub requests: f64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub tls_fraction: Option<f64>,
}

const INF: u64 = u64::MAX;

pub async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    match get(admin, "/metrics").await? {
        (200, body) => Ok(body),
        (status, _) => anyhow::bail!("{admin}/metrics answered {status}"),
    }
}

/// A GET to an admin server: the status and the body as text.
pub async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())?;
    let rsp = tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await??;
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One series' identity: which direction, which authority (the route, as Linkerd's
/// `linkerd viz stat` groups), and the peer's mTLS identity when there was one (`client_id`
/// inbound, `server_id` outbound).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub direction: String,
    pub authority: String,
    pub peer_id: Option<String>,
}

/// Everything one scrape of a sidecar's `/metrics` says, per route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub rss_bytes: f64,
    pub routes: BTreeMap<RouteKey, Snapshot>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut out = Scrape::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if series.starts_with("process_resident_memory_bytes") {
                out.rss_bytes = v;
                continue;
            }
            let is_request = series.starts_with("request_total{");
            let is_response = series.starts_with("response_total{");
            let is_bucket = series.starts_with("response_latency_ms_bucket{");
            if !(is_request || is_response || is_bucket) {
                continue;
            }
            let Some(direction) = label(series, "direction") else {
                continue;
            };
            let key = RouteKey {
                direction: direction.to_string(),
                authority: label(series, "authority").unwrap_or("").to_string(),
                peer_id: label(series, "client_id")
                    .or_else(|| label(series, "server_id"))
                    .map(str::to_string),
            };
            let s = out.routes.entry(key).or_default();
            if is_request {
                s.requests += v;
            } else if is_response {
                s.responses += v;
                if series.contains("classification=\"success\"") {
                    s.successes += v;
                }
                if series.contains("tls=\"true\"") {
                    s.tls_responses += v;
                }
            } else if let Some(le) = label(series, "le") {
                let bound = if le == "+Inf" {
                    INF
                } else {
                    le.parse().unwrap_or(INF)
                };
                *s.buckets.entry(bound).or_default() += v;
            }
        }
        out
    }

    /// Every route of one direction (`inbound` or `outbound`) summed.
    pub fn direction(&self, direction: &str) -> Snapshot {
        let mut total = Snapshot {
            rss_bytes: self.rss_bytes,
            ..Snapshot::default()
        };
        for (k, s) in &self.routes {
            if k.direction == direction {
                total.add(s);
            }
        }
        total
    }

    /// One direction's routes by authority, summed over peers.
    pub fn by_authority(&self, direction: &str) -> BTreeMap<String, Snapshot> {
        let mut out: BTreeMap<String, Snapshot> = BTreeMap::new();
        for (k, s) in &self.routes {
            if k.direction == direction {
                out.entry(k.authority.clone()).or_default().add(s);
            }
        }
        out
    }
}

impl Snapshot {
    pub fn add(&mut self, other: &Snapshot) {
        self.requests += other.requests;
        self.responses += other.responses;
        self.successes += other.successes;
        self.tls_responses += other.tls_responses;
        for (le, c) in &other.buckets {
            *self.buckets.entry(*le).or_default() += c;
        }
    }
}

/// Sums the series of one direction (`inbound` or `outbound`).
#[cfg(test)]
fn parse(text: &str, direction: &str) -> Snapshot {
    Scrape::parse(text).direction(direction)
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = series.find(&key)? + key.len();
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

impl Window {
    pub fn between(before: &Snapshot, after: &Snapshot, secs: f64) -> Self {
        let requests = (after.requests - before.requests).max(0.0);
        let responses = (after.responses - before.responses).max(0.0);
        let ok = (after.successes - before.successes).max(0.0);
        let tls = (after.tls_responses - before.tls_responses).max(0.0);
        let deltas: Vec<(u64, f64)> = after
            .buckets
            .iter()
            .map(|(le, c)| (*le, c - before.buckets.get(le).copied().unwrap_or(0.0)))
            .collect();
        Window {
            requests,
            rps: if secs > 0.0 { requests / secs } else { 0.0 },
            success_rate: (responses > 0.0).then(|| ok / responses),
            p50_ms: quantile(&deltas, 0.5),
            p99_ms: quantile(&deltas, 0.99),
            tls_fraction: (responses > 0.0).then(|| tls / responses),
        }
    }
}

/// The quantile from cumulative histogram deltas, interpolated linearly inside the bucket.
fn quantile(cumulative: &[(u64, f64)], q: f64) -> Option<f64> {
    let total = cumulative
        .iter()
        .find(|(le, _)| *le == INF)
        .map(|(_, c)| *c)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for (le, count) in cumulative {
        if *count >= rank {
            if *le == INF {
                return Some(prev_le);
            }
            let le = *le as f64;
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count) / in_bucket
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * frac);
        }
        prev_le = *le as f64;
        prev_count = *count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE request_total counter
request_total{direction="inbound",authority="a",target_addr="127.0.0.1:1",tls="no_identity",no_tls_reason="x"} 10
request_total{direction="outbound",authority="b",target_addr="127.0.0.1:2",tls="no_identity",no_tls_reason="x"} 4
response_total{direction="inbound",authority="a",target_addr="127.0.0.1:1",tls="no_identity",no_tls_reason="x",status_code="200",classification="success"} 9
response_total{direction="inbound",authority="a",target_addr="127.0.0.1:1",tls="no_identity",no_tls_reason="x",status_code="502",classification="failure"} 1
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="1"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="2"} 5
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="10"} 9
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="+Inf"} 9
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="1"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="2"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="10"} 1
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="+Inf"} 1
process_resident_memory_bytes 4096000
"#;

    #[test]
    fn parses_and_computes_a_window() {
        let s = parse(TEXT, "inbound");
        assert_eq!(s.requests, 10.0);
        assert_eq!(s.responses, 10.0);
        assert_eq!(s.successes, 9.0);
        assert_eq!(s.buckets[&2], 5.0);
        assert_eq!(s.buckets[&INF], 10.0);
        assert_eq!(s.rss_bytes, 4096000.0);
        assert_eq!(parse(TEXT, "outbound").requests, 4.0);
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.by_authority("inbound")["a"].successes, 9.0);
        assert_eq!(scrape.by_authority("outbound")["b"].requests, 4.0);

        let w = Window::between(&Snapshot::default(), &s, 2.0);
        assert_eq!(w.rps, 5.0);
        assert_eq!(w.success_rate, Some(0.9));
        // Rank 5 of 10 is the top of the (1, 2] bucket.
        assert_eq!(w.p50_ms, Some(2.0));
        // Rank 9.9 lies in (2, 10]: 2 + 8 * (9.9 - 5) / 5.
        let p99 = w.p99_ms.unwrap();
        assert!((p99 - 9.84).abs() < 1e-9, "{p99}");
        assert_eq!(w.tls_fraction, Some(0.0));
    }

    #[test]
    fn empty_windows_have_no_percentiles() {
        let w = Window::between(&Snapshot::default(), &Snapshot::default(), 1.0);
        assert_eq!(w.success_rate, None);
        assert_eq!(w.p50_ms, None);
    }
}
