//! Policy series: inbound authorization decisions, local rate limits, and outbound routes.

use super::{Metrics, samples, snapshot, text::escape};
use crate::lock;
use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// (parent, route) of an outbound policy route.
pub(super) type RouteKey = (Arc<str>, Arc<str>);

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
}

impl RouteCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
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
        let families: [(&str, &str, Get); 6] = [
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
                |((parent, route), _)| {
                    format!(
                        "parent_name=\"{}\",route_name=\"{}\"",
                        escape(parent),
                        escape(route)
                    )
                },
                |(_, c)| get(c).load(Ordering::Relaxed),
            );
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
