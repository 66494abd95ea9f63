//! Reading a sidecar's `/metrics` (Prometheus text) into cumulative counters per route, per
//! TCP direction and per retrying route, and the quantile of a histogram as Prometheus's
//! `histogram_quantile` computes it.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use linkerd_control::prom;
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

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

/// How a response counts, the same on both sides of a hop (so a caller's row and its callee's
/// agree): from its status, gRPC status and the proxy's `error` label, never from the
/// `classification` label (a proxy marks the 403 it produces itself a failure, and the same
/// 403 a success when it only relays it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Refused by policy (an authorization or a rate limit) or by the app: HTTP 403 and 429,
    /// gRPC `PERMISSION_DENIED` (7) and `RESOURCE_EXHAUSTED` (8).
    Denied,
    /// HTTP 5xx, any other gRPC error, or a failure the proxy met with no response at all.
    Failed,
}

pub fn classify(status: Option<u16>, grpc: Option<u32>, error: Option<&str>) -> Class {
    if matches!(status, Some(403 | 429))
        || matches!(grpc, Some(7 | 8))
        || matches!(error, Some("unauthorized" | "rate_limited" | "not_allowed"))
    {
        Class::Denied
    } else if status.is_none_or(|s| s >= 500) || grpc.is_some_and(|g| g != 0) {
        Class::Failed
    } else {
        Class::Success
    }
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

/// Cumulative HTTP counters of one route (or a sum of routes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub responses: f64,
    pub successes: f64,
    pub denied: f64,
    pub failed: f64,
    pub tls_responses: f64,
    /// The latency histogram: `le` bound (ms, as the proxy labelled it; `+Inf` last) and the
    /// cumulative count, by bound.
    pub buckets: BTreeMap<Bound, f64>,
}

/// A histogram bucket's upper bound, ordered numerically (`+Inf` last).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound(pub f64);

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Cumulative TCP counters of one direction, client side (`peer="src"`: connections the
/// sidecar accepted, from peers inbound and from its app outbound).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpSnapshot {
    pub opened: f64,
    pub open: f64,
    pub read_bytes: f64,
    pub write_bytes: f64,
}

/// Everything one scrape of a sidecar's `/metrics` says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub rss_bytes: Option<f64>,
    pub routes: BTreeMap<RouteKey, Snapshot>,
    /// By direction (`inbound`, `outbound`).
    pub tcp: BTreeMap<String, TcpSnapshot>,
    /// Retried requests by the route's parent (the service name), from
    /// `outbound_http_route_retry_requests_total`.
    pub retries: BTreeMap<String, f64>,
}

impl Scrape {
    /// Reads the families `mesh` reports from Prometheus text, with the control plane's parser
    /// (`linkerd_control::prom`); a line it cannot read is skipped.
    pub fn parse(text: &str) -> Self {
        let mut out = Scrape::default();
        let (scrape, _) = prom::Scrape::parse_lossy(text);
        for s in &scrape.samples {
            let (name, v) = (s.name.as_str(), s.value);
            match name {
                "process_resident_memory_bytes" => out.rss_bytes = Some(v),
                "response_total" | "response_latency_ms_bucket" => out.route_sample(s),
                "tcp_open_total"
                | "tcp_open_connections"
                | "tcp_read_bytes_total"
                | "tcp_write_bytes_total" => {
                    if s.label("peer") != Some("src") {
                        continue;
                    }
                    let Some(direction) = s.label("direction") else {
                        continue;
                    };
                    let t = out.tcp.entry(direction.to_string()).or_default();
                    match name {
                        "tcp_open_total" => t.opened += v,
                        "tcp_open_connections" => t.open += v,
                        "tcp_read_bytes_total" => t.read_bytes += v,
                        _ => t.write_bytes += v,
                    }
                }
                "outbound_http_route_retry_requests_total" => {
                    if let Some(parent) = s.label("parent_name") {
                        *out.retries.entry(parent.to_string()).or_default() += v;
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn route_sample(&mut self, sample: &prom::Sample) {
        let label = |name| sample.label(name);
        let Some(direction) = label("direction") else {
            return;
        };
        let key = RouteKey {
            direction: direction.to_string(),
            authority: label("authority").unwrap_or("").to_string(),
            peer_id: label("client_id")
                .or_else(|| label("server_id"))
                .map(str::to_string),
        };
        let v = sample.value;
        let s = self.routes.entry(key).or_default();
        if sample.name == "response_total" {
            s.responses += v;
            let status = label("status_code").and_then(|c| c.parse().ok());
            let grpc = label("grpc_status").and_then(|c| c.parse().ok());
            match classify(status, grpc, label("error")) {
                Class::Success => s.successes += v,
                Class::Denied => s.denied += v,
                Class::Failed => s.failed += v,
            }
            if label("tls") == Some("true") {
                s.tls_responses += v;
            }
        } else if let Some(le) = label("le") {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(b) => b,
                    Err(_) => return,
                }
            };
            *s.buckets.entry(Bound(bound)).or_default() += v;
        }
    }

    /// Every route of one direction (`inbound` or `outbound`) summed.
    pub fn direction(&self, direction: &str) -> Snapshot {
        let mut total = Snapshot::default();
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
        self.responses += other.responses;
        self.successes += other.successes;
        self.denied += other.denied;
        self.failed += other.failed;
        self.tls_responses += other.tls_responses;
        for (le, c) in &other.buckets {
            *self.buckets.entry(*le).or_default() += c;
        }
    }
}

/// The `q`-quantile of a histogram given as cumulative counts by upper bound (ending with
/// `+Inf`), as Prometheus's `histogram_quantile` computes it: the bucket holding rank
/// `q * total` is found, and the value is interpolated linearly between its lower bound (the
/// previous bucket's upper bound, 0 for the first) and its upper bound. A rank in the `+Inf`
/// bucket gives the highest finite bound. `None` with no observations, fewer than two
/// buckets, or no `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &BTreeMap<Bound, f64>) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) || buckets.len() < 2 {
        return None;
    }
    // Cumulative counts can dip when counters were read at slightly different moments: make
    // them monotonic, as Prometheus does.
    let mut cumulative: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    let mut max = 0.0_f64;
    for (le, c) in buckets {
        max = max.max(*c);
        cumulative.push((le.0, max));
    }
    let &(last_le, total) = cumulative.last()?;
    if last_le != f64::INFINITY || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = cumulative.iter().position(|(_, c)| *c >= rank)?;
    if i == cumulative.len() - 1 {
        return Some(cumulative[cumulative.len() - 2].0);
    }
    let (upper, count) = cumulative[i];
    if i == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let (lower, below) = if i == 0 {
        (0.0, 0.0)
    } else {
        cumulative[i - 1]
    };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * ((rank - below) / in_bucket))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE request_total counter
request_total{direction="inbound",authority="a",target_addr="127.0.0.1:1",tls="no_identity",no_tls_reason="x"} 10
response_total{direction="inbound",authority="a",target_addr="127.0.0.1:1",tls="no_identity",no_tls_reason="x",status_code="200",classification="success"} 8
response_total{direction="inbound",authority="a",target_addr="127.0.0.1:1",tls="true",client_id="c",status_code="403",classification="failure",error="unauthorized"} 1
response_total{direction="inbound",authority="a",target_addr="127.0.0.1:1",tls="no_identity",no_tls_reason="x",status_code="502",classification="failure",error="connect"} 1
response_total{direction="outbound",authority="b",target_addr="127.0.0.1:2",tls="true",server_id="s",status_code="403",classification="success"} 3
response_total{direction="outbound",authority="b",target_addr="127.0.0.1:2",tls="true",server_id="s",status_code="200",grpc_status="14",classification="failure"} 1
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="0.5"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="1"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="2"} 5
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="10"} 9
response_latency_ms_bucket{direction="inbound",authority="a",status_code="200",le="+Inf"} 9
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="0.5"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="1"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="2"} 0
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="10"} 1
response_latency_ms_bucket{direction="inbound",authority="a",status_code="502",le="+Inf"} 1
tcp_open_total{direction="inbound",peer="src",target_addr="127.0.0.1:1",tls="true",client_id="c"} 4
tcp_open_total{direction="inbound",peer="dst",target_addr="127.0.0.1:1",tls="true",client_id="c"} 9
tcp_open_connections{direction="inbound",peer="src",target_addr="127.0.0.1:1",tls="true",client_id="c"} 2
tcp_read_bytes_total{direction="inbound",peer="src",target_addr="127.0.0.1:1",tls="true",client_id="c"} 100
tcp_write_bytes_total{direction="inbound",peer="src",target_addr="127.0.0.1:1",tls="true",client_id="c"} 300
tcp_write_bytes_total{direction="outbound",peer="src",target_addr="127.0.0.1:6379",tls="no_identity",no_tls_reason="x"} 7
outbound_http_route_retry_requests_total{parent_name="b",route_name="r"} 2
outbound_http_route_retry_requests_total{parent_name="b",route_name="default"} 1
process_resident_memory_bytes 4096000
"#;

    fn buckets(pairs: &[(f64, f64)]) -> BTreeMap<Bound, f64> {
        pairs.iter().map(|(le, c)| (Bound(*le), *c)).collect()
    }

    #[test]
    fn a_scrape_is_read_per_route_direction_and_class() {
        let s = Scrape::parse(TEXT);
        let inbound = s.direction("inbound");
        assert_eq!(inbound.responses, 10.0);
        assert_eq!(inbound.successes, 8.0);
        assert_eq!(inbound.denied, 1.0);
        assert_eq!(inbound.failed, 1.0);
        assert_eq!(inbound.tls_responses, 1.0);
        assert_eq!(inbound.buckets[&Bound(0.5)], 0.0);
        assert_eq!(inbound.buckets[&Bound(2.0)], 5.0);
        assert_eq!(inbound.buckets[&Bound(f64::INFINITY)], 10.0);
        // The caller's side of the same refusals: denied too, not a success.
        let b = &s.by_authority("outbound")["b"];
        assert_eq!((b.denied, b.failed, b.successes), (3.0, 1.0, 0.0));
        assert_eq!(s.rss_bytes, Some(4096000.0));
        let tcp = &s.tcp["inbound"];
        assert_eq!(
            (tcp.opened, tcp.open, tcp.read_bytes, tcp.write_bytes),
            (4.0, 2.0, 100.0, 300.0)
        );
        assert_eq!(s.tcp["outbound"].write_bytes, 7.0);
        assert_eq!(s.retries["b"], 3.0);
    }

    #[test]
    fn classes_agree_on_both_sides_of_a_hop() {
        assert_eq!(classify(Some(200), None, None), Class::Success);
        assert_eq!(classify(Some(404), None, None), Class::Success);
        assert_eq!(
            classify(Some(403), None, Some("unauthorized")),
            Class::Denied
        );
        assert_eq!(classify(Some(403), None, None), Class::Denied);
        assert_eq!(
            classify(Some(429), None, Some("rate_limited")),
            Class::Denied
        );
        assert_eq!(classify(Some(200), Some(7), None), Class::Denied);
        assert_eq!(classify(Some(200), Some(14), None), Class::Failed);
        assert_eq!(classify(Some(200), Some(0), None), Class::Success);
        assert_eq!(classify(Some(502), None, Some("connect")), Class::Failed);
        assert_eq!(classify(None, None, Some("stream")), Class::Failed);
    }

    #[test]
    fn quantiles_interpolate_within_buckets_as_prometheus_does() {
        let h = buckets(&[(1.0, 0.0), (2.0, 5.0), (10.0, 9.0), (f64::INFINITY, 10.0)]);
        // Rank 5 of 10 is the top of the (1, 2] bucket.
        assert_eq!(histogram_quantile(0.5, &h), Some(2.0));
        // Rank 9 of 10 is the top of (2, 10].
        assert_eq!(histogram_quantile(0.9, &h), Some(10.0));
        // Rank 7 lies in (2, 10]: 2 + 8 * (7 - 5) / 4.
        assert_eq!(histogram_quantile(0.7, &h), Some(6.0));
        // Rank 9.9 is in +Inf: the highest finite bound.
        assert_eq!(histogram_quantile(0.99, &h), Some(10.0));
        // The first bucket's lower bound is 0: rank 2 of 4 in (0, 0.25].
        let fine = buckets(&[(0.25, 4.0), (0.5, 4.0), (f64::INFINITY, 4.0)]);
        assert_eq!(histogram_quantile(0.5, &fine), Some(0.125));
        // Sub-millisecond bounds come from the labels, whatever they are.
        let sub = buckets(&[(0.1, 1.0), (0.3, 3.0), (1.0, 4.0), (f64::INFINITY, 4.0)]);
        let p50 = histogram_quantile(0.5, &sub).unwrap();
        assert!((p50 - 0.2).abs() < 1e-12, "{p50}");
        // A dip from reading counters at different moments is smoothed, not a negative count.
        let dip = buckets(&[(1.0, 5.0), (2.0, 4.0), (f64::INFINITY, 6.0)]);
        assert_eq!(histogram_quantile(0.5, &dip), Some(0.6));
    }

    #[test]
    fn quantiles_of_nothing_are_none() {
        assert_eq!(histogram_quantile(0.5, &BTreeMap::new()), None);
        let empty = buckets(&[(1.0, 0.0), (f64::INFINITY, 0.0)]);
        assert_eq!(histogram_quantile(0.5, &empty), None);
        let no_inf = buckets(&[(1.0, 1.0), (2.0, 2.0)]);
        assert_eq!(histogram_quantile(0.5, &no_inf), None);
        let one = buckets(&[(f64::INFINITY, 3.0)]);
        assert_eq!(histogram_quantile(0.5, &one), None);
    }
}
