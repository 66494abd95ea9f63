//! HTTP request and response series: `request_total`, `response_total` and the
//! `response_latency_ms` histogram.

use super::{HttpKey, Metrics, family, samples, snapshot, text::escape};
use crate::lock;
use std::{
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// `response_latency_ms` bucket bounds: Linkerd's (1 ms to 50 s), with sub-millisecond bounds
/// below them, since a hop through a sidecar on one host takes a fraction of a millisecond
/// (Linkerd's first bucket would put every such request at "≤ 1 ms"). Dashboards that compute
/// quantiles from the `le` labels read them either way.
pub const LATENCY_BUCKETS_MS: [f64; 30] = [
    0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0,
    300.0, 400.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0,
    40000.0, 50000.0,
];

/// Request and response counters for one HTTP label set.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: AtomicU64,
    responses: Mutex<Vec<ResponseStats>>,
}

#[derive(Debug)]
struct ResponseStats {
    class: ResponseClass,
    count: u64,
    buckets: [u64; LATENCY_BUCKETS_MS.len()],
    sum_ms: f64,
}

/// How a response ended, which becomes its `status_code`, `grpc_status`, `classification` and
/// `error` labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseClass {
    pub status: Option<u16>,
    pub grpc_status: Option<u32>,
    /// Set when the proxy, not the upstream, produced the failure.
    pub error: Option<&'static str>,
}

impl Metrics {
    pub(super) fn encode_http(&self, out: &mut String) {
        let http = snapshot(&self.http);
        samples(
            out,
            "request_total",
            "Total count of HTTP requests.",
            "counter",
            &http,
            |(k, _)| http_labels(k),
            |(_, s)| s.requests.load(Ordering::Relaxed),
        );
        family(
            out,
            "response_total",
            "Total count of HTTP responses.",
            "counter",
        );
        for (k, s) in &http {
            for r in lock(&s.responses).iter() {
                let _ = writeln!(
                    out,
                    "response_total{{{},{}}} {}",
                    http_labels(k),
                    response_labels(&r.class, true),
                    r.count
                );
            }
        }
        family(
            out,
            "response_latency_ms",
            "Elapsed times between a request's headers being received and its response stream completing.",
            "histogram",
        );
        for (k, s) in &http {
            for r in lock(&s.responses).iter() {
                let labels = format!("{},{}", http_labels(k), response_labels(&r.class, false));
                let mut cumulative = 0;
                for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
                    cumulative += r.buckets[i];
                    let _ = writeln!(
                        out,
                        "response_latency_ms_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "response_latency_ms_bucket{{{labels},le=\"+Inf\"}} {}",
                    r.count
                );
                let _ = writeln!(out, "response_latency_ms_count{{{labels}}} {}", r.count);
                let _ = writeln!(out, "response_latency_ms_sum{{{labels}}} {}", r.sum_ms);
            }
        }
    }
}

// === impl HttpStats ===

impl HttpStats {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn response(&self, class: ResponseClass, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        let mut rs = lock(&self.responses);
        let i = match rs.iter().position(|r| r.class == class) {
            Some(i) => i,
            None => {
                rs.push(ResponseStats {
                    class,
                    count: 0,
                    buckets: [0; LATENCY_BUCKETS_MS.len()],
                    sum_ms: 0.0,
                });
                rs.len() - 1
            }
        };
        let r = &mut rs[i];
        r.count += 1;
        r.sum_ms += ms;
        if let Some(b) = r.buckets.get_mut(bucket) {
            *b += 1;
        }
    }
}

impl ResponseClass {
    pub fn is_success(&self) -> bool {
        self.error.is_none()
            && self.status.is_some_and(|s| s < 500)
            && self.grpc_status.is_none_or(|g| g == 0)
    }
}

fn http_labels(k: &HttpKey) -> String {
    let mut s = format!(
        "direction=\"{}\",authority=\"{}\",target_addr=\"{}\",",
        k.direction.as_str(),
        escape(&k.authority),
        k.target_addr
    );
    k.tls.labels(k.direction, &mut s);
    if let Some(l) = &k.dst_labels {
        s.push(',');
        s.push_str(l);
    }
    s
}

fn response_labels(c: &ResponseClass, classification: bool) -> String {
    let mut s = String::new();
    match c.status {
        Some(code) => {
            let _ = write!(s, "status_code=\"{code}\"");
        }
        None => s.push_str("status_code=\"\""),
    }
    if let Some(g) = c.grpc_status {
        let _ = write!(s, ",grpc_status=\"{g}\"");
    }
    if classification {
        let class = if c.is_success() { "success" } else { "failure" };
        let _ = write!(s, ",classification=\"{class}\"");
    }
    if let Some(e) = c.error {
        let _ = write!(s, ",error=\"{e}\"");
    }
    s
}
