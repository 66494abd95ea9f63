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

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    mesh::{self, CLIENT_ID, Counters, Mesh, ProxyAddrs, ProxyProc, SERVER_ID},
    procfs::Guarded,
};

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
                    json!(crate::all::round(b as f64 / total as f64, 3)),
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

/// The registry both services read: a Service per case on port 80 whose endpoints are the
/// server proxies' inbound listeners, and the policy sections. `upstream_port` is the port the
/// server proxies deliver to, which is the port their inbound policy is for.
pub fn registry_yaml(inbound: &BTreeMap<Server, SocketAddr>, upstream_port: u16) -> String {
    let endpoint = |s: Server| {
        let addr = inbound
            .get(&s)
            .copied()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        format!(
            "      - {{ip: {}, port: {}, identity: {SERVER_ID}, labels: {{pod: {}, app: {}}}}}\n",
            addr.ip(),
            addr.port(),
            s.pod(),
            s.app()
        )
    };
    let services: [(&str, Server); 10] = [
        ("open", Server::Open),
        ("route", Server::Open),
        ("authz", Server::Authz),
        ("route-authz", Server::Authz),
        ("split", Server::Open),
        ("split-a", Server::Open),
        ("split-b", Server::B),
        ("accrual", Server::Open),
        ("fault", Server::Open),
        ("limited", Server::Limited),
    ];
    let mut out = String::from("services:\n");
    for (name, server) in services {
        out.push_str(&format!(
            "  - name: {name}\n    namespace: {NAMESPACE}\n    ports: [80]\n    endpoints:\n"
        ));
        out.push_str(&endpoint(server));
    }
    let retry = "annotations: {retry.linkerd.io/http: 5xx, retry.linkerd.io/limit: \"2\"}";
    out.push_str(&format!(
        "workloads:
  - {{name: {CLIENT_POD}, namespace: {NAMESPACE}, serviceAccount: client, labels: {{app: client}}}}
serviceAnnotations:
  - name: accrual
    namespace: {NAMESPACE}
    annotations: {{balancer.linkerd.io/failure-accrual: consecutive}}
servers:
  - name: {SERVER_NAME}
    namespace: {NAMESPACE}
    spec: {{podSelector: {{matchLabels: {{app: {authz_app}}}}}, port: {upstream_port}}}
  - name: {LIMITED_SERVER}
    namespace: {NAMESPACE}
    spec: {{podSelector: {{matchLabels: {{app: {limited_app}}}}}, port: {upstream_port}}}
meshTLSAuthentications:
  - name: {AUTHN_NAME}
    namespace: {NAMESPACE}
    spec: {{identities: [{CLIENT_ID}]}}
authorizationPolicies:
  - name: {AUTHZ_NAME}
    namespace: {NAMESPACE}
    spec:
      targetRef: {{group: policy.linkerd.io, kind: Server, name: {SERVER_NAME}}}
      requiredAuthenticationRefs:
        - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: {AUTHN_NAME}}}
  - name: {LIMITED_AUTHZ}
    namespace: {NAMESPACE}
    spec:
      targetRef: {{group: policy.linkerd.io, kind: Server, name: {LIMITED_SERVER}}}
      requiredAuthenticationRefs:
        - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: {AUTHN_NAME}}}
httpLocalRateLimitPolicies:
  - name: {RATE_LIMIT}
    namespace: {NAMESPACE}
    spec:
      targetRef: {{group: policy.linkerd.io, kind: Server, name: {LIMITED_SERVER}}}
      total: {{requestsPerSecond: 1000000}}
      identity: {{requestsPerSecond: 1000000}}
httpRoutes:
  - name: bench-retry
    namespace: {NAMESPACE}
    {retry}
    spec:
      parentRefs: [{{kind: Service, name: route, port: 80}}]
      rules: [{{timeouts: {{request: 5s}}}}]
  - name: bench-retry-authz
    namespace: {NAMESPACE}
    {retry}
    spec:
      parentRefs: [{{kind: Service, name: route-authz, port: 80}}]
      rules: [{{timeouts: {{request: 5s}}}}]
  - name: bench-split
    namespace: {NAMESPACE}
    spec:
      parentRefs: [{{kind: Service, name: split, port: 80}}]
      rules:
        - backendRefs:
            - {{name: split-a, port: 80, weight: 90}}
            - {{name: split-b, port: 80, weight: 10}}
  - name: bench-fault0
    namespace: {NAMESPACE}
    spec:
      parentRefs: [{{kind: Service, name: fault, port: 80}}]
      rules:
        - filters: [{{type: FailureInjector, failureInjector: {{status: 503, percent: 0}}}}]
",
        authz_app = Server::Authz.app(),
        limited_app = Server::Limited.app(),
    ));
    out
}

/// The control plane and the proxies of the policy scenarios.
#[derive(Debug)]
pub struct PolicyMesh {
    pub destination: Guarded,
    pub destination_log: PathBuf,
    pub policy: Guarded,
    pub policy_log: PathBuf,
    pub client: ProxyProc,
    pub servers: BTreeMap<Server, ProxyProc>,
    /// From spawning the proxies until all were certified and ready (the server proxies: with
    /// their first inbound policy).
    pub ready_in: Duration,
}

impl PolicyMesh {
    pub fn server(&self, s: Server) -> anyhow::Result<&ProxyProc> {
        self.servers
            .get(&s)
            .with_context(|| format!("no {} proxy", s.pod()))
    }

    /// Every process, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.destination.pid, self.policy.pid, self.client.child.pid];
        pids.extend(self.servers.values().map(|p| p.child.pid));
        pids
    }
}

/// What `start` needs.
#[derive(Debug)]
pub struct PolicyOpts<'a> {
    pub mesh_bin: &'a Path,
    /// The proxies' binary, cores and the pid file (which every child goes into).
    pub launch: mesh::Launch<'a>,
    pub upstream: SocketAddr,
    pub scratch: &'a Path,
    pub log_dir: &'a Path,
}

fn control_plane(
    bin: &Path,
    which: &str,
    registry: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
    log: &Path,
) -> anyhow::Result<Command> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args([which, "serve", "--registry"])
        .arg(registry)
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--admin-addr")
        .arg(admin.to_string())
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    Ok(cmd)
}

/// Writes the registry, starts the destination and policy services, then the client proxy and
/// the server proxies (certified by `identity`'s service); returns once all are ready.
/// `ports`: 4 for the control plane, then 3 per proxy.
pub async fn start(
    o: &PolicyOpts<'_>,
    identity: &Mesh,
    ports: &[u16],
) -> anyhow::Result<PolicyMesh> {
    if ports.len() != 4 + 3 * (1 + Server::ALL.len()) {
        bail!(
            "policy::start needs {} ports",
            4 + 3 * (1 + Server::ALL.len())
        );
    }
    let lo = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (dst_addr, dst_admin, pol_addr, pol_admin) =
        (lo(ports[0]), lo(ports[1]), lo(ports[2]), lo(ports[3]));
    let addrs = |i: usize| ProxyAddrs {
        inbound: lo(ports[4 + 3 * i]),
        outbound: lo(ports[5 + 3 * i]),
        admin: lo(ports[6 + 3 * i]),
    };
    let client_addrs = addrs(0);
    let server_addrs: BTreeMap<Server, ProxyAddrs> = Server::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, addrs(i + 1)))
        .collect();
    let inbound = server_addrs.iter().map(|(s, a)| (*s, a.inbound)).collect();
    let registry = o.scratch.join("registry.yaml");
    std::fs::write(&registry, registry_yaml(&inbound, o.upstream.port()))
        .with_context(|| format!("writing {}", registry.display()))?;

    let destination_log = o.log_dir.join("destination.log");
    let mut destination = Guarded::spawn(
        "destination service",
        &mut control_plane(
            o.mesh_bin,
            "destination",
            &registry,
            dst_addr,
            dst_admin,
            &destination_log,
        )?,
        o.launch.pid_file,
    )?;
    let policy_log = o.log_dir.join("policy.log");
    let mut policy = Guarded::spawn(
        "policy service",
        &mut control_plane(
            o.mesh_bin,
            "policy",
            &registry,
            pol_addr,
            pol_admin,
            &policy_log,
        )?,
        o.launch.pid_file,
    )?;
    for (child, admin, log) in [
        (&mut destination, dst_admin, &destination_log),
        (&mut policy, pol_admin, &policy_log),
    ] {
        let what = format!("the {} to be ready", child.name);
        crate::all::wait_until(&what, child, || crate::all::expect_ok(admin, "/ready"))
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\nlog:\n{}", mesh::log_tail(log)))?;
    }

    let env = |token: &str, id: &str, pod: &str| {
        let mut env = mesh::identity_env(
            &identity.trust_anchors,
            identity.identity_addr,
            &identity.identity_dir,
            token,
            id,
        );
        env.extend([
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", dst_addr.to_string()),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", pol_addr.to_string()),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                json!({"ns": NAMESPACE, "pod": pod}).to_string(),
            ),
        ]);
        env
    };
    let started = Instant::now();
    let spawn = |role: &'static str,
                 name: &'static str,
                 addrs: ProxyAddrs,
                 env: Vec<(&'static str, String)>,
                 id: &'static str|
     -> anyhow::Result<ProxyProc> {
        let log = o.log_dir.join(format!("mesh-{role}-proxy.log"));
        o.launch.spawn(role, name, addrs, &env, log, Some(id))
    };
    let mut servers = BTreeMap::new();
    for (s, a) in &server_addrs {
        let mut e = env("server", SERVER_ID, s.pod());
        e.push(("MESH_PROXY_INBOUND_FORWARD_ADDR", o.upstream.to_string()));
        e.push((
            "LINKERD2_PROXY_INBOUND_PORTS",
            o.upstream.port().to_string(),
        ));
        let name = match s {
            Server::Open => "policy server proxy (server-open)",
            Server::Authz => "policy server proxy (server-authz)",
            Server::B => "policy server proxy (server-b)",
            Server::Limited => "policy server proxy (server-limited)",
        };
        servers.insert(*s, spawn(s.role(), name, *a, e, SERVER_ID)?);
    }
    let mut client = spawn(
        "policy-client",
        "policy client proxy",
        client_addrs,
        env("client", CLIENT_ID, CLIENT_POD),
        CLIENT_ID,
    )?;
    for p in servers.values_mut() {
        mesh::wait_ready(p).await?;
    }
    mesh::wait_ready(&mut client).await?;
    Ok(PolicyMesh {
        destination,
        destination_log,
        policy,
        policy_log,
        client,
        servers,
        ready_in: started.elapsed(),
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

    #[test]
    fn registry_names_every_case_service() {
        let inbound = Server::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16))))
            .collect();
        let y = registry_yaml(&inbound, 8080);
        for c in Case::ALL {
            assert!(
                y.contains(&format!("  - name: {}\n", c.service())),
                "{}",
                c.service()
            );
        }
        assert!(y.contains("port: 8080}"));
        assert!(y.contains("{ip: 127.0.0.1, port: 5001, identity: server.bench"));
    }
}
