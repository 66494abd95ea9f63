//! Route matching and filters as the Gateway API specifies them, case by case, over real
//! sockets: the Gateway API conformance suite's mesh cases (MESH-HTTP, MESH-GRPC) and its
//! HTTPRoute/GRPCRoute matching cases, and linkerd2-proxy's own route-matching cases, ported
//! as data (`gateway/*.yaml`). For each file our policy service serves its routes (registry
//! format, in namespace `gateway-conformance-mesh`), our proxy routes each request, and named
//! backends (`echo-v1`, `echo-v2`, `echo-v3`) answer; a case names what must happen: which
//! backend answers, the status, what the backend received, response headers, a redirect's
//! `Location`, or the shares of a weighted split.
//!
//! As upstream, a case must pass three times in a row, within [`EVENTUALLY`] of the start (the
//! proxy fetches each Service's policy on its first request). Cases the Gateway API expects and
//! we deliberately do not do say so: `skip` (the file or the case) with the reason, `refused`
//! (the policy service must refuse the routes, as Linkerd's controller does), or `differs`
//! (the case asserts our answer and says how linkerd2-proxy's differs).

use linkerd_proxy::config::{
    ENV_DESTINATION_SVC_ADDR, ENV_POLICY_SVC_ADDR, ENV_POLICY_WORKLOAD, ENV_STATIC_ENDPOINTS,
};
use linkerd_tests::{
    EVENTUALLY, client, discovery::Discovery, proxy::TestProxy, registry::RegistryPolicy,
    server::TestServer, within,
};
use serde::Deserialize;
use std::{collections::BTreeMap, time::Duration};

const NS: &str = "gateway-conformance-mesh";
const DOMAIN: &str = "svc.cluster.local";
const BACKENDS: [&str; 3] = ["echo-v1", "echo-v2", "echo-v3"];
/// Requests per weighted-split case.
const SPLIT_REQUESTS: usize = 1000;

/// One ported test: its routes and its cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Suite {
    /// The upstream test's name.
    test: String,
    /// Why none of the cases run.
    #[serde(default)]
    skip: Option<String>,
    /// The policy service must refuse these routes, saying this.
    #[serde(default)]
    refused: Option<String>,
    /// More parent Services (ports 80 and 7070), beside `echo` and the backends.
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    http_routes: Vec<serde_json::Value>,
    #[serde(default)]
    grpc_routes: Vec<serde_json::Value>,
    cases: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    /// A Service of the namespace (`echo`, `echo-v1:8080`), or `pod:<backend>` for the
    /// backend's own address. Default `echo`.
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    method: Option<String>,
    /// Path and query. Default `/`.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// An HTTP/2 gRPC call (`application/grpc`).
    #[serde(default)]
    grpc: bool,
    /// Who must answer (`x-backend`); none: any backend for a success, else none.
    #[serde(default)]
    backend: Option<String>,
    /// Default 200.
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    grpc_status: Option<u32>,
    /// Headers the backend must have received (repeated values joined with `,`).
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
    /// The path the backend must have received.
    #[serde(default)]
    request_path: Option<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_response_headers: Vec<String>,
    #[serde(default)]
    redirect: Option<Redirect>,
    /// A weighted split: each backend's share of [`SPLIT_REQUESTS`].
    #[serde(default)]
    weights: BTreeMap<String, u32>,
    #[serde(default)]
    skip: Option<String>,
    /// How linkerd2-proxy's answer differs from the one asserted.
    #[serde(default)]
    differs: Option<String>,
}

/// The parts of a `Location` a case checks; `port: ""` means none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Redirect {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// What one file came to.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    differs: usize,
    skipped: Vec<String>,
    failed: Vec<String>,
}

fn parse(file: &str, text: &str) -> Suite {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The registry: the namespace's Services (no endpoints: the proxy resolves the backends
/// itself) and the suite's routes.
fn registry(suite: &Suite) -> String {
    let mut out = String::from("services:\n");
    let mut service = |name: &str, ports: &str| {
        out.push_str(&format!(
            "  - {{name: {name}, namespace: {NS}, ports: {ports}}}\n"
        ));
    };
    service("echo", "[80, 7070]");
    for b in BACKENDS {
        service(b, "[80, 8080, 7070]");
    }
    for s in &suite.services {
        service(s, "[80, 7070]");
    }
    for (key, routes) in [
        ("httpRoutes", &suite.http_routes),
        ("grpcRoutes", &suite.grpc_routes),
    ] {
        let routes: Vec<serde_json::Value> = routes
            .iter()
            .cloned()
            .map(|mut r| {
                if let Some(o) = r.as_object_mut() {
                    o.entry("namespace").or_insert_with(|| NS.into());
                }
                r
            })
            .collect();
        if !routes.is_empty() {
            // JSON is YAML.
            let json = serde_json::to_string(&routes).unwrap();
            out.push_str(&format!("{key}: {json}\n"));
        }
    }
    out
}

fn fqdn(service: &str) -> String {
    format!("{service}.{NS}.{DOMAIN}")
}

/// The backends, the policy service, and a proxy that asks it and resolves every Service
/// of the namespace to the backends by name.
struct Mesh {
    backends: Vec<(&'static str, TestServer)>,
    _policy: RegistryPolicy,
    _discovery: Discovery,
    proxy: TestProxy,
}

impl Mesh {
    async fn start(suite: &Suite, registry: &str) -> Self {
        let mut backends = Vec::new();
        for b in BACKENDS {
            backends.push((b, TestServer::named(b).await));
        }
        let policy = RegistryPolicy::start(registry).await;
        let discovery = Discovery::start();
        let mut endpoints = Vec::new();
        for (name, server) in &backends {
            for port in [80, 8080, 7070] {
                endpoints.push(format!("{}:{port}={}", fqdn(name), server.addr()));
            }
        }
        // A parent's own endpoints (its default route): the first two backends.
        let both = format!("{}|{}", backends[0].1.addr(), backends[1].1.addr());
        for parent in std::iter::once("echo").chain(suite.services.iter().map(String::as_str)) {
            for port in [80, 7070] {
                endpoints.push(format!("{}:{port}={both}", fqdn(parent)));
            }
        }
        let (p, d, eps) = (
            policy.addr.to_string(),
            discovery.addr.to_string(),
            endpoints.join(";"),
        );
        let workload = format!(r#"{{"ns":"{NS}","pod":"client-0"}}"#);
        let proxy = TestProxy::start(&[
            (ENV_POLICY_SVC_ADDR, &p),
            (ENV_POLICY_WORKLOAD, &workload),
            (ENV_DESTINATION_SVC_ADDR, &d),
            (ENV_STATIC_ENDPOINTS, &eps),
        ])
        .await;
        Self {
            backends,
            _policy: policy,
            _discovery: discovery,
            proxy,
        }
    }

    fn backend(&self, name: &str) -> Option<&TestServer> {
        self.backends
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
    }

    fn authority(&self, host: &str) -> String {
        if let Some(b) = host.strip_prefix("pod:") {
            let server = self.backend(b).unwrap_or_else(|| panic!("no backend {b}"));
            return server.addr().to_string();
        }
        match host.split_once(':') {
            Some((svc, port)) => format!("{}:{port}", fqdn(svc)),
            None => fqdn(host),
        }
    }

    /// Sends the case's request through the proxy.
    async fn send(&self, case: &Case) -> client::Reply {
        let authority = self.authority(case.host.as_deref().unwrap_or("echo"));
        let path = case.path.as_deref().unwrap_or("/");
        let method = case
            .method
            .as_deref()
            .unwrap_or(if case.grpc { "POST" } else { "GET" });
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client::request(
            method,
            &format!("http://{authority}{path}"),
            client::empty(),
        );
        for (k, v) in &case.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            req.headers_mut().append(name, v.parse().unwrap());
        }
        if case.grpc {
            let h = req.headers_mut();
            h.insert("content-type", "application/grpc".parse().unwrap());
            h.insert("te", "trailers".parse().unwrap());
            let mut c = client::http2(self.proxy.outbound).await;
            client::send2(&mut c, req).await
        } else {
            let mut c = client::http1(self.proxy.outbound).await;
            client::send1(&mut c, req).await
        }
    }

    /// One attempt at a case: what is wrong, if anything.
    async fn check(&self, case: &Case) -> Result<(), String> {
        let rsp = self.send(case).await;
        let status = rsp.status.as_u16();
        let answered = rsp.header("x-backend").map(str::to_string);
        let want_status = case.status.unwrap_or(200);
        if status != want_status {
            return Err(format!(
                "status {status}, not {want_status} (backend {answered:?}, {:?})",
                rsp.header("l5d-proxy-error")
            ));
        }
        if let Some(code) = case.grpc_status {
            let got = rsp
                .header("grpc-status")
                .or_else(|| {
                    rsp.trailers
                        .as_ref()
                        .and_then(|t| t.get("grpc-status"))
                        .and_then(|v| v.to_str().ok())
                })
                .map(str::to_string);
            if got.as_deref() != Some(code.to_string().as_str()) {
                return Err(format!("grpc-status {got:?}, not {code}"));
            }
        }
        // No backend named: a success must come from one of them, anything else from none.
        let backend_ok = match &case.backend {
            Some(b) => answered.as_ref() == Some(b),
            None => {
                let success =
                    (200..300).contains(&status) && case.grpc_status.is_none_or(|c| c == 0);
                answered.is_some() == success
            }
        };
        if !backend_ok {
            return Err(format!("answered by {answered:?}, not {:?}", case.backend));
        }
        for (k, v) in &case.response_headers {
            if rsp.header(k) != Some(v.as_str()) {
                return Err(format!("response {k}: {:?}, not {v:?}", rsp.header(k)));
            }
        }
        for k in &case.absent_response_headers {
            if rsp.headers.contains_key(k.as_str()) {
                return Err(format!("response has {k}"));
            }
        }
        if let Some(r) = &case.redirect {
            let location = rsp.header("location").unwrap_or_default();
            let uri: http::Uri = location
                .parse()
                .map_err(|e| format!("Location {location:?}: {e}"))?;
            let port = uri.port_u16().map(|p| p.to_string()).unwrap_or_default();
            let parts = [
                ("scheme", &r.scheme, uri.scheme_str().unwrap_or_default()),
                ("host", &r.host, uri.host().unwrap_or_default()),
                ("port", &r.port, port.as_str()),
                ("path", &r.path, uri.path()),
            ];
            for (what, want, got) in parts {
                if want.as_deref().is_some_and(|w| w != got) {
                    return Err(format!("Location {location:?}: {what} is not {want:?}"));
                }
            }
        }
        if let Some(b) = &case.backend {
            let seen = self
                .backend(b)
                .and_then(|s| s.requests().pop())
                .ok_or_else(|| format!("{b} saw no request"))?;
            for (k, v) in &case.request_headers {
                let got: Vec<&str> = seen
                    .headers
                    .get_all(k.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if got.join(",") != *v {
                    return Err(format!("{b} received {k}: {got:?}, not {v:?}"));
                }
            }
            for k in &case.absent_headers {
                if seen.headers.contains_key(k.as_str()) {
                    return Err(format!("{b} received {k}"));
                }
            }
            if let Some(p) = &case.request_path
                && seen.uri.path() != p
            {
                return Err(format!("{b} received path {}, not {p}", seen.uri.path()));
            }
        }
        Ok(())
    }

    /// A case passes when it passes three times in a row, the first within [`EVENTUALLY`].
    async fn run(&self, case: &Case) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            match self.check(case).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        for _ in 0..2 {
            self.check(case).await?;
        }
        Ok(())
    }

    /// A weighted split: once a request is answered, [`SPLIT_REQUESTS`] more; each backend's
    /// count must lie within six standard deviations of its binomial expectation (a false
    /// failure is rarer than one in 500 million), and a zero weight is never chosen.
    async fn split(&self, case: &Case) -> Result<String, String> {
        let total: u32 = case.weights.values().sum();
        let first = Case {
            host: case.host.clone(),
            path: case.path.clone(),
            grpc: case.grpc,
            ..Case::default()
        };
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            let rsp = self.send(&first).await;
            let b = rsp.header("x-backend").unwrap_or_default();
            if rsp.status == 200 && case.weights.contains_key(b) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no weighted backend answered: {}", rsp.status));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..SPLIT_REQUESTS {
            let rsp = self.send(&first).await;
            if rsp.status != 200 {
                return Err(format!("status {}", rsp.status));
            }
            let b = rsp.header("x-backend").unwrap_or("none").to_string();
            *counts.entry(b).or_default() += 1;
        }
        let n = SPLIT_REQUESTS as f64;
        for (b, got) in &counts {
            if !case.weights.contains_key(b) {
                return Err(format!("{got} requests reached {b}, not in the split"));
            }
        }
        for (b, w) in &case.weights {
            let got = counts.get(b).copied().unwrap_or(0) as f64;
            let p = f64::from(*w) / f64::from(total);
            let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
            if (got - mean).abs() > 6.0 * sd {
                return Err(format!(
                    "{b}: {got} of {n}, expected {mean} ± {:.0}",
                    6.0 * sd
                ));
            }
        }
        Ok(format!("{counts:?}"))
    }
}

/// Runs one file's cases; every failure is collected, then reported at once.
async fn run_suite(file: &str, text: &str) -> Tally {
    let suite = parse(file, text);
    let mut tally = Tally::default();
    let registry = registry(&suite);
    if let Some(reason) = &suite.skip {
        for i in 0..suite.cases.len() {
            tally.skipped.push(format!("{} #{i}: {reason}", suite.test));
        }
        // Even skipped, the routes are what the policy service accepts.
        assert_eq!(RegistryPolicy::refusal(&registry), None, "{file}");
        return tally;
    }
    if let Some(expected) = &suite.refused {
        let why = RegistryPolicy::refusal(&registry)
            .unwrap_or_else(|| panic!("{file}: the policy service accepted the routes"));
        assert!(why.contains(expected.as_str()), "{file}: {why}");
        for i in 0..suite.cases.len() {
            tally
                .skipped
                .push(format!("{} #{i}: refused ({why})", suite.test));
        }
        return tally;
    }
    let mesh = Mesh::start(&suite, &registry).await;
    for (i, case) in suite.cases.iter().enumerate() {
        let what = format!("{} #{i} ({:?} {:?})", suite.test, case.host, case.path);
        if let Some(reason) = &case.skip {
            tally.skipped.push(format!("{what}: {reason}"));
            continue;
        }
        let outcome = if case.weights.is_empty() {
            mesh.run(case).await
        } else {
            mesh.split(case).await.map(|counts| {
                eprintln!("{what}: {counts}");
            })
        };
        match outcome {
            Ok(()) if case.differs.is_some() => tally.differs += 1,
            Ok(()) => tally.passed += 1,
            Err(e) => tally.failed.push(format!("{what}: {e}")),
        }
    }
    tally
}

macro_rules! suites {
    ($($name:ident => $file:literal,)*) => {
        /// Every file, for the inventory.
        const FILES: &[(&str, &str)] = &[$(($file, include_str!(concat!("gateway/", $file))),)*];

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let text = include_str!(concat!("gateway/", $file));
                let t = within(Duration::from_secs(120), $file, run_suite($file, text)).await;
                eprintln!(
                    "{}: {} passed ({} asserting a deliberate difference from linkerd2-proxy), {} skipped",
                    $file, t.passed + t.differs, t.differs, t.skipped.len()
                );
                for s in &t.skipped {
                    eprintln!("  skipped: {s}");
                }
                assert!(t.failed.is_empty(), "{} failed:\n{}", $file, t.failed.join("\n"));
            }
        )*
    };
}

suites! {
    mesh_basic => "mesh-basic.yaml",
    mesh_httproute_simple_same_namespace => "mesh-httproute-simple-same-namespace.yaml",
    mesh_httproute_matching => "mesh-httproute-matching.yaml",
    mesh_httproute_query_param_matching => "mesh-httproute-query-param-matching.yaml",
    mesh_httproute_weight => "mesh-httproute-weight.yaml",
    mesh_split => "mesh-split.yaml",
    mesh_httproute_named_rule => "mesh-httproute-named-rule.yaml",
    mesh_httproute_303_redirect => "mesh-httproute-303-redirect.yaml",
    mesh_httproute_307_redirect => "mesh-httproute-307-redirect.yaml",
    mesh_httproute_308_redirect => "mesh-httproute-308-redirect.yaml",
    mesh_httproute_redirect_host_and_status => "mesh-httproute-redirect-host-and-status.yaml",
    mesh_httproute_redirect_path => "mesh-httproute-redirect-path.yaml",
    mesh_httproute_redirect_port => "mesh-httproute-redirect-port.yaml",
    mesh_httproute_redirect_scheme => "mesh-httproute-redirect-scheme.yaml",
    mesh_httproute_rewrite_path => "mesh-httproute-rewrite-path.yaml",
    mesh_httproute_request_header_modifier => "mesh-httproute-request-header-modifier.yaml",
    mesh_httproute_backend_request_header_modifier => "mesh-httproute-backend-request-header-modifier.yaml",
    mesh_ports => "mesh-ports.yaml",
    mesh_frontend => "mesh-frontend.yaml",
    mesh_frontend_hostname => "mesh-frontend-hostname.yaml",
    mesh_consumer_route => "mesh-consumer-route.yaml",
    mesh_grpcroute_weight => "mesh-grpcroute-weight.yaml",
    mesh_grpcroute_request_header_modifier => "mesh-grpcroute-request-header-modifier.yaml",
    httproute_matching_across_routes => "httproute-matching-across-routes.yaml",
    httproute_method_matching => "httproute-method-matching.yaml",
    httproute_header_matching => "httproute-header-matching.yaml",
    httproute_query_param_matching => "httproute-query-param-matching.yaml",
    grpcroute_exact_method_matching => "grpcroute-exact-method-matching.yaml",
    grpcroute_header_matching => "grpcroute-header-matching.yaml",
    linkerd2_proxy_http_routes => "linkerd2-proxy-http-routes.yaml",
    linkerd2_proxy_grpc_routes => "linkerd2-proxy-grpc-routes.yaml",
}

/// Every file parses, and every file in `gateway/` is listed above; the totals.
#[test]
fn conformance_inventory() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/gateway");
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        on_disk,
        FILES.len(),
        "a file in {} is not run",
        dir.display()
    );
    let (mut cases, mut skipped, mut differs) = (0, 0, 0);
    for (file, text) in FILES {
        let s = parse(file, text);
        assert!(!s.cases.is_empty(), "{file}");
        cases += s.cases.len();
        if s.skip.is_some() || s.refused.is_some() {
            skipped += s.cases.len();
        } else {
            skipped += s.cases.iter().filter(|c| c.skip.is_some()).count();
            differs += s.cases.iter().filter(|c| c.differs.is_some()).count();
        }
    }
    eprintln!(
        "{cases} cases in {} files: {} run ({differs} asserting a deliberate difference), {skipped} skipped",
        FILES.len(),
        cases - skipped
    );
}

/// The canary split users write: a rule for `x-canary: yes` to the canary, and a catch-all on
/// `PathPrefix /` splitting 90/10. The header rule ranks as `PathPrefix /` with one header, so
/// it beats the catch-all (before, "no path" ranked below `/` and the catch-all took every
/// request).
const CANARY: &str = r#"
test: canary
httpRoutes:
  - name: web-canary
    spec:
      parentRefs: [{kind: Service, name: echo, port: 80}]
      rules:
        - matches: [{headers: [{name: x-canary, value: "yes"}]}]
          backendRefs: [{name: echo-v2, port: 8080}]
        - matches: [{path: {type: PathPrefix, value: /}}]
          backendRefs: [{name: echo-v1, port: 8080, weight: 90}, {name: echo-v2, port: 8080, weight: 10}]
cases: []
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_canary_request_reaches_the_canary_and_the_rest_split_90_10() {
    within(Duration::from_secs(120), "the canary test", async {
        let suite = parse("canary", CANARY);
        let mesh = Mesh::start(&suite, &registry(&suite)).await;
        let canary = Case {
            headers: BTreeMap::from([("x-canary".to_string(), "yes".to_string())]),
            backend: Some("echo-v2".into()),
            ..Case::default()
        };
        // The policy has arrived once a canary request reaches the canary.
        mesh.run(&canary).await.unwrap();
        let (plain_n, canary_n) = (2000, 500);
        let (mut plain_to_canary, mut canary_to_canary) = (0, 0);
        for i in 0..plain_n + canary_n {
            // Every fifth request is a canary request.
            let is_canary = i % 5 == 4;
            let case = if is_canary { &canary } else { &Case::default() };
            let rsp = mesh.send(case).await;
            assert_eq!(rsp.status, 200, "{:?}", rsp.header("l5d-proxy-error"));
            let to_canary = match rsp.header("x-backend") {
                Some("echo-v2") => true,
                Some("echo-v1") => false,
                other => panic!("answered by {other:?}"),
            };
            match (is_canary, to_canary) {
                (true, true) => canary_to_canary += 1,
                (false, true) => plain_to_canary += 1,
                _ => {}
            }
        }
        let (n, p) = (f64::from(plain_n), 0.1);
        let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
        eprintln!(
            "x-canary: yes: {canary_to_canary} of {canary_n} to the canary; others: \
             {plain_to_canary} of {plain_n} ({:.1}%) to the canary, expected {mean} ± {:.0}",
            f64::from(plain_to_canary) * 100.0 / n,
            6.0 * sd
        );
        assert_eq!(
            canary_to_canary, canary_n,
            "every canary request to the canary"
        );
        // Six standard deviations of the binomial: a false failure is rarer than one in 500
        // million runs; 200 ± 80 of 2,000 is 10% ± 4 points.
        assert!(
            (f64::from(plain_to_canary) - mean).abs() <= 6.0 * sd,
            "{plain_to_canary} of {plain_n} to the canary"
        );
    })
    .await;
}
