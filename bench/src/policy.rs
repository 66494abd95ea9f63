//! The policy scenarios: the mesh path with a control plane (`mesh destination serve` and
//! `mesh policy serve` on one registry file, as `mesh up` runs them) and each proxy feature
//! enabled but never triggered.
//!
//! ```text
//! load generator -> policy client proxy (outbound, HTTP proxy; discovery + OutboundPolicies)
//!     == mTLS, HTTP/2 ==> a policy server proxy (inbound; InboundServerPolicies) -> upstream
//! ```
//!
//! One client proxy serves every case: each case sends its load to its own Service
//! (`<service>.bench.svc.cluster.local:80`), and the policy for that Service is what the case
//! measures. Inbound policy is per workload, so there are four server proxies, all forwarding
//! to the same upstream server: `server-open` (no Server: the default policy), `server-authz`
//! (a Server with an AuthorizationPolicy naming the client's identity) and `server-b` (the 10%
//! side of the weighted split). They are certified by the plain mesh's identity service.
//!
//! After each run the case checks, from the proxies' `/metrics`, that the policy it is about
//! was applied to the requests it measured; see [`Case::check`].

mod registry;
mod running;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{counters::Counters, path::ProxyUse};

pub use running::{PolicyMesh, end_path, start_path};

/// The namespace of every Service and workload in the registry.
pub const NAMESPACE: &str = "bench";
/// The client proxy's workload (`LINKERD2_PROXY_POLICY_WORKLOAD`).
const CLIENT_POD: &str = "client-0";
/// The Server, MeshTLSAuthentication and AuthorizationPolicy of `server-authz`.
const SERVER_NAME: &str = "bench-authz";
const AUTHN_NAME: &str = "bench-client";
const AUTHZ_NAME: &str = "bench-from-client";
/// The rate-limited Server of `server-limited`, its AuthorizationPolicy and its limit.
const LIMITED_SERVER: &str = "bench-limited";
const LIMITED_AUTHZ: &str = "bench-limited-from-client";
const RATE_LIMIT: &str = "bench-limit";

/// One policy scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    /// Control plane present, only the defaults: the Service's synthesized `default` route,
    /// the default inbound policy (`all-unauthenticated`).
    None,
    /// An HTTPRoute with retries (`5xx`, limit 2) and a request timeout (5 s).
    RouteRetry,
    /// A Server and an AuthorizationPolicy (MeshTLSAuthentication: the client's identity) on
    /// the server proxy.
    Authz,
    /// Both of the above: the case the 10% bar is about.
    RouteRetryAuthz,
    /// An HTTPRoute splitting 90/10 between two backend Services (two server proxies in front
    /// of the same upstream).
    Split,
    /// The Service's `balancer.linkerd.io/failure-accrual: consecutive`.
    FailureAccrual,
    /// An HTTPRoute with a FailureInjector filter at 0%.
    Fault0,
    /// A Server with an AuthorizationPolicy and an HTTPLocalRateLimitPolicy far above the load
    /// (1,000,000 requests per second in total and per identity).
    RateLimit,
}

impl Case {
    pub const ALL: [Case; 8] = [
        Case::None,
        Case::RouteRetry,
        Case::Authz,
        Case::RouteRetryAuthz,
        Case::Split,
        Case::FailureAccrual,
        Case::Fault0,
        Case::RateLimit,
    ];

    /// The scenario's name (also what `--only` matches).
    pub fn name(self) -> &'static str {
        match self {
            Case::None => "mesh_policy_none",
            Case::RouteRetry => "mesh_policy_route_retry",
            Case::Authz => "mesh_policy_authz",
            Case::RouteRetryAuthz => "mesh_policy_route_retry_authz",
            Case::Split => "mesh_policy_split",
            Case::FailureAccrual => "mesh_policy_failure_accrual",
            Case::Fault0 => "mesh_policy_fault0",
            Case::RateLimit => "mesh_policy_ratelimit",
        }
    }

    /// The Service the load is sent to.
    fn service(self) -> &'static str {
        match self {
            Case::None => "open",
            Case::RouteRetry => "route",
            Case::Authz => "authz",
            Case::RouteRetryAuthz => "route-authz",
            Case::Split => "split",
            Case::FailureAccrual => "accrual",
            Case::Fault0 => "fault",
            Case::RateLimit => "limited",
        }
    }

    /// The authority the load generator asks the client proxy for.
    pub fn authority(self) -> String {
        format!("{}.{NAMESPACE}.svc.cluster.local:80", self.service())
    }

    /// The HTTPRoute on the Service, if any.
    fn route(self) -> Option<&'static str> {
        match self {
            Case::RouteRetry => Some("bench-retry"),
            Case::RouteRetryAuthz => Some("bench-retry-authz"),
            Case::Split => Some("bench-split"),
            Case::Fault0 => Some("bench-fault0"),
            Case::None | Case::Authz | Case::FailureAccrual | Case::RateLimit => None,
        }
    }

    /// The server proxies this case's requests reach.
    pub fn servers(self) -> &'static [Server] {
        match self {
            Case::Authz | Case::RouteRetryAuthz => &[Server::Authz],
            Case::Split => &[Server::Open, Server::B],
            Case::RateLimit => &[Server::Limited],
            _ => &[Server::Open],
        }
    }

    /// What is enabled, for the row.
    pub fn describe(self) -> &'static str {
        match self {
            Case::None => "destination + policy services; default route, default inbound policy",
            Case::RouteRetry => "HTTPRoute: retry 5xx (limit 2), request timeout 5s",
            Case::Authz => "Server + AuthorizationPolicy (MeshTLSAuthentication: the client)",
            Case::RouteRetryAuthz => {
                "HTTPRoute: retry 5xx (limit 2), request timeout 5s; Server + AuthorizationPolicy"
            }
            Case::Split => "HTTPRoute: backends split-a 90, split-b 10 (two server proxies)",
            Case::FailureAccrual => "Service annotation balancer.linkerd.io/failure-accrual",
            Case::Fault0 => "HTTPRoute: FailureInjector 503 at 0%",
            Case::RateLimit => {
                "Server + AuthorizationPolicy + HTTPLocalRateLimitPolicy (1,000,000/s total and per identity)"
            }
        }
    }

    /// Checks that the policy this case is about was applied to the requests of the run, and
    /// that nothing it enables was triggered. `client` and `servers` are what the proxies'
    /// counters did during the run. Returns the evidence for the row, or what is wrong.
    pub fn check(
        self,
        client: &Counters,
        servers: &[(Server, &Counters)],
    ) -> Result<Value, String> {
        let mut problems = Vec::new();
        let route = self.route().unwrap_or("default");
        let route_key = |counter: &str| format!("{counter} {}/{route}", self.service());
        let routed = client
            .routes
            .get(&route_key("requests"))
            .copied()
            .unwrap_or(0);
        if routed == 0 {
            problems.push(format!(
                "the client proxy routed no request by route {route} of Service {} \
                 (outbound_http_route_requests_total); routes seen: {:?}",
                self.service(),
                client.routes
            ));
        }
        for counter in [
            "retry_requests",
            "retry_limit_exceeded",
            "retry_overflow",
            "timeouts",
            "faults_injected",
        ] {
            if let Some(n) = client.routes.get(&route_key(counter)) {
                problems.push(format!(
                    "{n} outbound_http_route_{counter}_total: triggered"
                ));
            }
        }
        let mut allowed = BTreeMap::new();
        for (server, c) in servers {
            let (want, what) = match server {
                Server::Authz => (
                    format!("allow server:{SERVER_NAME} "),
                    format!("Server {SERVER_NAME} by {AUTHZ_NAME}"),
                ),
                Server::Limited => (
                    format!("allow server:{LIMITED_SERVER} "),
                    format!("Server {LIMITED_SERVER} by {LIMITED_AUTHZ}"),
                ),
                Server::Open | Server::B => (
                    "allow default:".to_string(),
                    "the default policy".to_string(),
                ),
            };
            let want_authz = match server {
                Server::Authz => Some(AUTHZ_NAME),
                Server::Limited => Some(LIMITED_AUTHZ),
                Server::Open | Server::B => None,
            };
            let n: u64 = c
                .authz
                .iter()
                .filter(|(k, _)| {
                    k.starts_with(&want) && want_authz.is_none_or(|a| k.ends_with(&format!(":{a}")))
                })
                .map(|(_, v)| v)
                .sum();
            if n == 0 {
                problems.push(format!(
                    "the {} proxy authorized no request by {what} \
                     (inbound_http_authz_allow_total); decisions seen: {:?}",
                    server.pod(),
                    c.authz
                ));
            }
            let denied: u64 = c
                .authz
                .iter()
                .filter(|(k, _)| k.starts_with("deny "))
                .map(|(_, v)| v)
                .sum();
            if denied > 0 {
                problems.push(format!(
                    "the {} proxy denied {denied} requests",
                    server.pod()
                ));
            }
            allowed.insert(server.pod(), n);
        }
        let mut evidence = serde_json::Map::new();
        evidence.insert("enabled".into(), json!(self.describe()));
        evidence.insert("route".into(), json!(format!("{}/{route}", self.service())));
        evidence.insert("route_requests".into(), json!(routed));
        evidence.insert("authz_allowed".into(), json!(allowed));
        if self == Case::Split {
            let inbound: BTreeMap<&str, u64> = servers
                .iter()
                .map(|(s, c)| (s.pod(), c.inbound_requests))
                .collect();
            let total: u64 = inbound.values().sum();
            let b = inbound.get(Server::B.pod()).copied().unwrap_or(0);
            if b == 0 || b == total {
                problems.push(format!(
                    "the split did not split: inbound requests {inbound:?}"
                ));
            }
            evidence.insert("inbound_requests".into(), json!(inbound));
            if total > 0 {
                evidence.insert(
                    "split_b_fraction".into(),
                    json!(crate::report::round(b as f64 / total as f64, 3)),
                );
            }
        }
        if self == Case::RateLimit {
            let key = format!("{LIMITED_SERVER}/{RATE_LIMIT}");
            let limited = servers
                .iter()
                .find(|(s, _)| *s == Server::Limited)
                .and_then(|(_, c)| c.rate_limited.get(&key).copied());
            match limited {
                None => problems.push(format!(
                    "the server-limited proxy has no rate limit {key} loaded \
                     (inbound_http_local_ratelimit_rate_limited_total)"
                )),
                Some(n) if n > 0 => problems.push(format!("{n} requests rate limited: triggered")),
                Some(_) => {}
            }
            evidence.insert("rate_limit".into(), json!(key));
        }
        if self == Case::FailureAccrual {
            evidence.insert(
                "note".into(),
                json!(
                    "the proxy has no metric of failure accrual: this checks only that the \
                     Service's policy (which carries it) routed the requests"
                ),
            );
        }
        evidence.insert("applied".into(), json!(problems.is_empty()));
        if problems.is_empty() {
            Ok(Value::Object(evidence))
        } else {
            Err(problems.join("; "))
        }
    }
}

/// One of the policy mesh's server proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    Open,
    Authz,
    B,
    Limited,
}

impl Server {
    const ALL: [Server; 4] = [Server::Open, Server::Authz, Server::B, Server::Limited];

    /// The proxy's role in rows and logs.
    pub fn role(self) -> &'static str {
        match self {
            Server::Open => "policy-server",
            Server::Authz => "policy-server-authz",
            Server::B => "policy-server-b",
            Server::Limited => "policy-server-limited",
        }
    }

    /// Its workload (`LINKERD2_PROXY_POLICY_WORKLOAD`'s pod, and the endpoints' `pod` label).
    pub fn pod(self) -> &'static str {
        match self {
            Server::Open => "server-open",
            Server::Authz => "server-authz",
            Server::B => "server-b",
            Server::Limited => "server-limited",
        }
    }

    /// Its `app` label, which the Server selects.
    fn app(self) -> &'static str {
        match self {
            Server::Open => "open",
            Server::Authz => "authz",
            Server::B => "b",
            Server::Limited => "limited",
        }
    }
}

/// The `policy` field of a case's row: the evidence that its policy was applied to the
/// requests of the run (`used`: the client proxy, then the servers of [`Case::servers`]), or
/// what is wrong and the field that says so.
pub fn verdict(case: Case, used: &[ProxyUse]) -> Result<Value, (String, Value)> {
    let counters: Option<Vec<&Counters>> = used.iter().map(|u| u.counters.as_ref()).collect();
    let checked = match counters {
        Some(cs) if !cs.is_empty() => {
            let servers: Vec<_> = case
                .servers()
                .iter()
                .copied()
                .zip(cs[1..].iter().copied())
                .collect();
            case.check(cs[0], &servers)
        }
        _ => Err("a proxy's /metrics could not be read".to_string()),
    };
    checked.map_err(|e| {
        let field = json!({"enabled": case.describe(), "applied": false, "error": e});
        (e, field)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(routes: &[(&str, u64)], authz: &[(&str, u64)], inbound: u64) -> Counters {
        Counters {
            routes: routes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            authz: authz.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            inbound_requests: inbound,
            ..Counters::default()
        }
    }

    #[test]
    fn names_are_distinct_and_prefixed() {
        let mut names: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("mesh_policy_")));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Case::ALL.len());
        assert_eq!(
            Case::RouteRetryAuthz.authority(),
            "route-authz.bench.svc.cluster.local:80"
        );
    }

    #[test]
    fn check_wants_the_route_and_the_authorization() {
        let client = counters(&[("requests route-authz/bench-retry-authz", 100)], &[], 0);
        let server = counters(
            &[],
            &[(
                "allow server:bench-authz authorizationpolicy:bench-from-client",
                100,
            )],
            100,
        );
        let ok = Case::RouteRetryAuthz.check(&client, &[(Server::Authz, &server)]);
        assert!(ok.is_ok(), "{ok:?}");
        // The default policy allowed it: the Server was not applied.
        let default = counters(&[], &[("allow default:all-unauthenticated", 100)], 100);
        assert!(
            Case::RouteRetryAuthz
                .check(&client, &[(Server::Authz, &default)])
                .is_err()
        );
        // The default route, not the HTTPRoute.
        let plain = counters(&[("requests route-authz/default", 100)], &[], 0);
        assert!(
            Case::RouteRetryAuthz
                .check(&plain, &[(Server::Authz, &server)])
                .is_err()
        );
        // Retries happened: the feature was triggered.
        let retried = counters(
            &[
                ("requests route-authz/bench-retry-authz", 100),
                ("retry_requests route-authz/bench-retry-authz", 3),
            ],
            &[],
            0,
        );
        assert!(
            Case::RouteRetryAuthz
                .check(&retried, &[(Server::Authz, &server)])
                .is_err()
        );
    }

    #[test]
    fn check_split_wants_both_sides() {
        let client = counters(&[("requests split/bench-split", 100)], &[], 0);
        let a = counters(&[], &[("allow default:all-unauthenticated", 90)], 90);
        let b = counters(&[], &[("allow default:all-unauthenticated", 10)], 10);
        let v = Case::Split
            .check(&client, &[(Server::Open, &a), (Server::B, &b)])
            .expect("split applied");
        assert_eq!(v["split_b_fraction"], json!(0.1));
        let none = counters(&[], &[], 0);
        assert!(
            Case::Split
                .check(&client, &[(Server::Open, &a), (Server::B, &none)])
                .is_err()
        );
    }
}
