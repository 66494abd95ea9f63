//! Policy series: inbound authorization decisions, local rate limits, and outbound routes.

use super::{
    Metrics, samples, snapshot,
    text::{escape, family},
};
use crate::lock;
use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// An outbound policy route's (parent, route) labels, rendered: `parent_group="…",…` and
/// `route_group="…",…`.
pub(super) type RouteKey = (Arc<str>, Arc<str>);

/// `outbound_http_route_request_duration_seconds` buckets (Linkerd's).
const ROUTE_DURATION_BUCKETS_S: [f64; 4] = [0.05, 0.5, 1.0, 10.0];

/// What an outbound route did: Linkerd's `outbound_http_route_*` counters.
#[derive(Debug, Default)]
pub struct RouteCounters {
    pub requests: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Still failing after the route's retry limit.
    pub retry_limit_exceeded: AtomicU64,
    /// A retry was wanted but the budget was spent or the body too large to replay.
    pub retry_overflow: AtomicU64,
    pub timeouts: AtomicU64,
    pub faults_injected: AtomicU64,
    /// Retried requests that finally succeeded.
    pub retry_successes: AtomicU64,
    /// Requests by (HTTP status, error), at their response headers.
    statuses: std::sync::Mutex<Vec<(u16, &'static str, u64)>>,
    /// Request durations to the response headers: cumulative per bucket (and +Inf), the sum
    /// in microseconds.
    durations: [AtomicU64; 5],
    duration_sum_us: AtomicU64,
}

impl RouteCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A routed request's outcome at its response headers: `status` (the proxy's own when
    /// `error` names why it answered).
    pub fn record(&self, status: u16, error: Option<&'static str>, elapsed: std::time::Duration) {
        let error = error.unwrap_or("");
        {
            let mut st = lock(&self.statuses);
            match st.iter_mut().find(|(s, e, _)| *s == status && *e == error) {
                Some((_, _, n)) => *n += 1,
                None => st.push((status, error, 1)),
            }
        }
        let secs = elapsed.as_secs_f64();
        for (b, le) in self.durations.iter().zip(ROUTE_DURATION_BUCKETS_S) {
            if secs <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.durations[4].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// One authorization counter's labels: Linkerd's `inbound_{http,tcp}_authz_{allow,deny}_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthzKey {
    /// `http` or `tcp`.
    pub proto: &'static str,
    pub allow: bool,
    pub srv_kind: Arc<str>,
    pub srv_name: Arc<str>,
    /// HTTP only; empty for requests that matched no route.
    pub route_name: Option<Arc<str>>,
    /// Allowed decisions only.
    pub authz_kind: Option<Arc<str>>,
    pub authz_name: Option<Arc<str>>,
}

impl Metrics {
    /// The counter of requests one server's rate limit refused.
    pub fn rate_limited(&self, server: Arc<str>, limit: Arc<str>) -> Arc<AtomicU64> {
        lock(&self.rate_limited)
            .entry((server, limit))
            .or_default()
            .clone()
    }

    pub(super) fn encode_rate_limited(&self, out: &mut String) {
        let all = snapshot(&self.rate_limited);
        if all.is_empty() {
            return;
        }
        samples(
            out,
            "inbound_http_local_ratelimit_rate_limited_total",
            "Inbound requests refused by a server's local rate limit.",
            "counter",
            &all,
            |((srv, rl), _)| {
                format!(
                    "srv_name=\"{}\",ratelimit_name=\"{}\"",
                    escape(srv),
                    escape(rl)
                )
            },
            |(_, n)| n.load(Ordering::Relaxed),
        );
    }

    /// The counters of one outbound route (resolved once per policy update).
    pub fn route(&self, parent: Arc<str>, route: Arc<str>) -> Arc<RouteCounters> {
        lock(&self.routes)
            .entry((parent, route))
            .or_default()
            .clone()
    }

    pub(super) fn encode_routes(&self, out: &mut String) {
        let all = snapshot(&self.routes);
        if all.is_empty() {
            return;
        }
        type Get = fn(&RouteCounters) -> &AtomicU64;
        let families: [(&str, &str, Get); 7] = [
            (
                "outbound_http_route_requests_total",
                "Requests routed by an outbound policy route.",
                |c| &c.requests,
            ),
            (
                "outbound_http_route_retry_requests_total",
                "Retries sent by an outbound route.",
                |c| &c.retries,
            ),
            (
                "outbound_http_route_retry_successes_total",
                "Retried requests that finally succeeded.",
                |c| &c.retry_successes,
            ),
            (
                "outbound_http_route_retry_limit_exceeded_total",
                "Requests still failing after the route's retry limit.",
                |c| &c.retry_limit_exceeded,
            ),
            (
                "outbound_http_route_retry_overflow_total",
                "Retries not sent: the retry budget was spent or the body too large to replay.",
                |c| &c.retry_overflow,
            ),
            (
                "outbound_http_route_timeouts_total",
                "Requests that hit the route's timeout.",
                |c| &c.timeouts,
            ),
            (
                "outbound_http_route_faults_injected_total",
                "Requests answered by a fault-injection filter.",
                |c| &c.faults_injected,
            ),
        ];
        for (name, help, get) in families {
            samples(
                out,
                name,
                help,
                "counter",
                &all,
                |((parent, route), _)| format!("{parent},{route}"),
                |(_, c)| get(c).load(Ordering::Relaxed),
            );
        }
        family(
            out,
            "outbound_http_route_request_statuses_total",
            "Routed requests by response status (and the proxy's error when it answered).",
            "counter",
        );
        for ((parent, route), c) in &all {
            for (status, error, n) in lock(&c.statuses).iter() {
                let _ = writeln!(
                    out,
                    "outbound_http_route_request_statuses_total{{{parent},{route},http_status=\"{status}\",error=\"{error}\"}} {n}"
                );
            }
        }
        let name = "outbound_http_route_request_duration_seconds";
        family(
            out,
            name,
            "Routed requests' time to their response headers.",
            "histogram",
        );
        for ((parent, route), c) in &all {
            let labels = format!("{parent},{route}");
            for (i, le) in ROUTE_DURATION_BUCKETS_S.iter().enumerate() {
                let n = c.durations[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let count = c.durations[4].load(Ordering::Relaxed);
            let sum = c.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }

    /// The counter of one authorization outcome (resolved once per policy update).
    pub fn authz(&self, key: AuthzKey) -> Arc<AtomicU64> {
        lock(&self.authz).entry(key).or_default().clone()
    }

    pub(super) fn encode_authz(&self, out: &mut String) {
        let all = snapshot(&self.authz);
        if all.is_empty() {
            return;
        }
        for (proto, allow) in [
            ("http", true),
            ("http", false),
            ("tcp", true),
            ("tcp", false),
        ] {
            let name = format!(
                "inbound_{proto}_authz_{}_total",
                if allow { "allow" } else { "deny" }
            );
            let help = match (proto, allow) {
                ("http", true) => "HTTP requests authorized by an inbound policy.",
                ("http", false) => {
                    "HTTP requests refused by an inbound policy (403, or 404 without a route)."
                }
                ("tcp", true) => "Opaque TCP connections authorized by an inbound policy.",
                _ => "Opaque TCP connections refused by an inbound policy.",
            };
            let series: Vec<_> = all
                .iter()
                .filter(|(k, _)| k.proto == proto && k.allow == allow)
                .collect();
            samples(
                out,
                &name,
                help,
                "counter",
                &series,
                |(k, _)| authz_labels(k),
                |(_, n)| n.load(Ordering::Relaxed),
            );
        }
    }
}

fn authz_labels(k: &AuthzKey) -> String {
    let mut s = format!(
        "srv_kind=\"{}\",srv_name=\"{}\"",
        escape(&k.srv_kind),
        escape(&k.srv_name)
    );
    if let Some(r) = &k.route_name {
        let _ = write!(s, ",route_name=\"{}\"", escape(r));
    }
    if let (Some(kind), Some(n)) = (&k.authz_kind, &k.authz_name) {
        let _ = write!(
            s,
            ",authz_kind=\"{}\",authz_name=\"{}\"",
            escape(kind),
            escape(n)
        );
    }
    s
}
