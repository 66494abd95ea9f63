//! What `bench` reads from a proxy's `/metrics`: requests, mTLS, failures, connections, routes,
//! authorization decisions and rate limits, and their differences between two scrapes.

use std::collections::BTreeMap;

use linkerd_control::prom::Scrape;

/// Counters from one `/metrics` scrape of a proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// `response_total{classification="failure"}` by `"<status> <error>"`.
    pub failures: BTreeMap<String, u64>,
    /// Inbound `request_total`, all of it and the part with `tls="true"`.
    pub inbound_requests: u64,
    pub inbound_tls_requests: u64,
    /// Inbound `tls="true"` requests by the caller's `client_id`.
    pub inbound_client_ids: BTreeMap<String, u64>,
    /// Outbound `request_total` with `tls="true"`, by `server_id`.
    pub outbound_server_ids: BTreeMap<String, u64>,
    pub outbound_requests: u64,
    /// `tcp_open_total{peer="dst"}`: connections the proxy opened (to the server, the peer
    /// proxy or an endpoint).
    pub tcp_connects: u64,
    /// Outbound `request_total` by `target_addr` (which endpoint a request went to).
    pub outbound_by_target: BTreeMap<String, u64>,
    /// `outbound_http_route_<counter>_total` by `"<counter> <parent_name>/<route_name>"`, e.g.
    /// `"requests bench-retry"`: what the outbound policy's routes did.
    pub routes: BTreeMap<String, u64>,
    /// `inbound_http_authz_{allow,deny}_total` by
    /// `"<allow|deny> <srv_kind>:<srv_name> <authz_kind>:<authz_name>"` (the authz part only
    /// for allowed requests).
    pub authz: BTreeMap<String, u64>,
    /// `inbound_http_local_ratelimit_rate_limited_total` by `"<srv_name>/<ratelimit_name>"`.
    /// A key (even at 0) means the proxy loaded that server's rate limit.
    pub rate_limited: BTreeMap<String, u64>,
}

/// Reads the counters `bench` reports from a proxy's Prometheus text.
/// Parsed with the control plane's parser (`linkerd_control::prom`); a line it cannot read is
/// skipped.
pub fn parse_counters(metrics: &str) -> Counters {
    let mut c = Counters::default();
    let (scrape, _) = Scrape::parse_lossy(metrics);
    for s in &scrape.samples {
        let (name, v) = (s.name.as_str(), s.value as u64);
        if let Some(counter) = name
            .strip_prefix("outbound_http_route_")
            .and_then(|n| n.strip_suffix("_total"))
        {
            let key = format!(
                "{counter} {}/{}",
                s.label("parent_name").unwrap_or(""),
                s.label("route_name").unwrap_or("")
            );
            *c.routes.entry(key).or_default() += v;
            continue;
        }
        if name == "inbound_http_local_ratelimit_rate_limited_total" {
            let key = format!(
                "{}/{}",
                s.label("srv_name").unwrap_or(""),
                s.label("ratelimit_name").unwrap_or("")
            );
            *c.rate_limited.entry(key).or_default() += v;
            continue;
        }
        if let Some(decision) = name
            .strip_prefix("inbound_http_authz_")
            .and_then(|n| n.strip_suffix("_total"))
        {
            let mut key = format!(
                "{decision} {}:{}",
                s.label("srv_kind").unwrap_or(""),
                s.label("srv_name").unwrap_or("")
            );
            if let (Some(kind), Some(name)) = (s.label("authz_kind"), s.label("authz_name")) {
                key.push_str(&format!(" {kind}:{name}"));
            }
            *c.authz.entry(key).or_default() += v;
            continue;
        }
        let tls = s.label("tls") == Some("true");
        match (name, s.label("direction")) {
            ("request_total", Some("inbound")) => {
                c.inbound_requests += v;
                if tls {
                    c.inbound_tls_requests += v;
                    let id = s.label("client_id").unwrap_or("").to_string();
                    *c.inbound_client_ids.entry(id).or_default() += v;
                }
            }
            ("request_total", Some("outbound")) => {
                c.outbound_requests += v;
                let target = s.label("target_addr").unwrap_or("").to_string();
                *c.outbound_by_target.entry(target).or_default() += v;
                if tls {
                    let id = s.label("server_id").unwrap_or("").to_string();
                    *c.outbound_server_ids.entry(id).or_default() += v;
                }
            }
            ("response_total", _) if s.label("classification") == Some("failure") => {
                let key = format!(
                    "{} {}",
                    s.label("status_code").unwrap_or(""),
                    s.label("error").unwrap_or("")
                )
                .trim()
                .to_string();
                *c.failures.entry(key).or_default() += v;
            }
            ("tcp_open_total", _) if s.label("peer") == Some("dst") => {
                c.tcp_connects += v;
            }
            _ => {}
        }
    }
    c
}

/// `after - before`, key by key, leaving out zeros.
pub fn delta_map(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl Counters {
    /// What happened between two scrapes.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            failures: delta_map(&before.failures, &self.failures),
            inbound_requests: self
                .inbound_requests
                .saturating_sub(before.inbound_requests),
            inbound_tls_requests: self
                .inbound_tls_requests
                .saturating_sub(before.inbound_tls_requests),
            inbound_client_ids: delta_map(&before.inbound_client_ids, &self.inbound_client_ids),
            outbound_server_ids: delta_map(&before.outbound_server_ids, &self.outbound_server_ids),
            outbound_requests: self
                .outbound_requests
                .saturating_sub(before.outbound_requests),
            tcp_connects: self.tcp_connects.saturating_sub(before.tcp_connects),
            outbound_by_target: delta_map(&before.outbound_by_target, &self.outbound_by_target),
            routes: delta_map(&before.routes, &self.routes),
            authz: delta_map(&before.authz, &self.authz),
            // Zeros kept: a key says the limit is loaded.
            rate_limited: self
                .rate_limited
                .iter()
                .map(|(k, v)| {
                    let b = before.rate_limited.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(b))
                })
                .collect(),
        }
    }

    /// The share of inbound requests that arrived over mTLS; `None` without inbound requests.
    pub fn mtls_fraction(&self) -> Option<f64> {
        (self.inbound_requests > 0)
            .then(|| self.inbound_tls_requests as f64 / self.inbound_requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{CLIENT_ID, SERVER_ID};

    const METRICS: &str = "# HELP request_total x\n\
request_total{direction=\"inbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:1\",tls=\"true\",client_id=\"client.bench.serviceaccount.identity.linkerd.cluster.local\"} 90\n\
request_total{direction=\"inbound\",authority=\"x:1\",target_addr=\"127.0.0.1:1\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\"} 10\n\
request_total{direction=\"outbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:2\",tls=\"true\",server_id=\"server.bench.serviceaccount.identity.linkerd.cluster.local\"} 7\n\
response_total{direction=\"inbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:1\",tls=\"true\",status_code=\"502\",classification=\"failure\",error=\"connect\"} 2\n\
response_total{direction=\"inbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:1\",tls=\"true\",status_code=\"200\",classification=\"success\"} 88\n\
tcp_open_total{direction=\"inbound\",peer=\"dst\",target_addr=\"127.0.0.1:1\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\"} 5\n\
tcp_open_total{direction=\"inbound\",peer=\"src\",target_addr=\"127.0.0.1:1\",tls=\"true\"} 3\n\
outbound_http_route_requests_total{parent_name=\"route\",route_name=\"bench-retry\"} 40\n\
outbound_http_route_retry_requests_total{parent_name=\"route\",route_name=\"bench-retry\"} 0\n\
inbound_http_authz_allow_total{srv_kind=\"server\",srv_name=\"bench-authz\",route_name=\"default\",authz_kind=\"authorizationpolicy\",authz_name=\"bench-from-client\"} 12\n\
inbound_http_authz_deny_total{srv_kind=\"server\",srv_name=\"bench-authz\",route_name=\"default\"} 1\n";

    #[test]
    fn parses_counters() {
        let c = parse_counters(METRICS);
        assert_eq!(c.inbound_requests, 100);
        assert_eq!(c.inbound_tls_requests, 90);
        assert_eq!(c.inbound_client_ids.get(CLIENT_ID), Some(&90));
        assert_eq!(c.outbound_requests, 7);
        assert_eq!(c.outbound_server_ids.get(SERVER_ID), Some(&7));
        assert_eq!(c.failures.get("502 connect"), Some(&2));
        assert_eq!(c.failures.len(), 1);
        assert_eq!(c.tcp_connects, 5);
        assert_eq!(c.mtls_fraction(), Some(0.9));
        assert_eq!(c.outbound_by_target.get("127.0.0.1:2"), Some(&7));
        assert_eq!(c.routes.get("requests route/bench-retry"), Some(&40));
        assert_eq!(c.routes.get("retry_requests route/bench-retry"), Some(&0));
        assert_eq!(
            c.authz
                .get("allow server:bench-authz authorizationpolicy:bench-from-client"),
            Some(&12)
        );
        assert_eq!(c.authz.get("deny server:bench-authz"), Some(&1));
    }

    #[test]
    fn counters_since() {
        let after = parse_counters(METRICS);
        let before = Counters {
            inbound_requests: 50,
            inbound_tls_requests: 50,
            ..Counters::default()
        };
        let d = after.since(&before);
        assert_eq!((d.inbound_requests, d.inbound_tls_requests), (50, 40));
        assert_eq!(d.mtls_fraction(), Some(0.8));
        assert_eq!(Counters::default().mtls_fraction(), None);
    }
}
