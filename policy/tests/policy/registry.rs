//! The registry file: the destination service's file plus policy sections, parsed by both;
//! reloads; a bad edit keeps the last good state.

use crate::support::*;
use linkerd_policy::{
    Source,
    model::ClusterConfig,
    registry::{self, Polled, parse},
};
use std::time::Duration;

pub const EXAMPLE: &str = r#"
services:                       # the destination service's section
  - name: web
    namespace: emojivoto
    clusterIP: 10.96.0.10
    ports: [8080]
    endpoints:
      - {ip: 127.0.0.10, port: 4143, serviceAccount: web, labels: {pod: web-0, app: web}}
  - name: backend
    namespace: emojivoto
    ports: [{port: 8080, targetPort: 8080}]
    endpoints: []
  - name: backend-v2
    namespace: emojivoto
    ports: [8080]
workloads:
  - name: vote-0
    namespace: emojivoto
    serviceAccount: vote
    labels: {app: vote}
    ports: {http: 8080}
    probes: {8080: [/ready]}
namespaces:
  - name: emojivoto
    annotations: {config.linkerd.io/default-inbound-policy: all-authenticated}
serviceAnnotations:
  - name: backend
    namespace: emojivoto
    annotations:
      balancer.linkerd.io/failure-accrual: consecutive
      retry.linkerd.io/http: 5xx
servers:
  - name: web-http
    namespace: emojivoto
    spec:
      podSelector: {matchLabels: {app: web}}
      port: 8080
      proxyProtocol: HTTP/1
authorizationPolicies:
  - name: web-from-vote
    namespace: emojivoto
    spec:
      targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
      requiredAuthenticationRefs:
        - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: vote}
meshTLSAuthentications:
  - name: vote
    namespace: emojivoto
    spec:
      identityRefs: [{kind: ServiceAccount, name: vote}]
httpLocalRateLimitPolicies:
  - name: web-rl
    namespace: emojivoto
    spec:
      targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
      total: {requestsPerSecond: 100}
httpRoutes:
  - name: backend-split
    namespace: emojivoto
    annotations: {retry.linkerd.io/limit: "2"}
    spec:
      parentRefs: [{kind: Service, name: backend, port: 8080}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}}]
          backendRefs:
            - {name: backend, port: 8080, weight: 90}
            - {name: backend-v2, port: 8080, weight: 10}
          timeouts: {request: 2s}
"#;

#[test]
fn the_example_parses_in_both_services() {
    let cfg = ClusterConfig::default();
    let st = parse(EXAMPLE, &cfg).unwrap();
    assert_eq!(
        st.workloads.len(),
        2,
        "web-0 from its endpoint, vote-0 explicit"
    );
    assert_eq!(
        st.workloads[&key("web-0")].service_account.as_deref(),
        Some("web")
    );
    assert_eq!(st.services.len(), 3);
    assert_eq!(st.http_routes.len(), 1);
    // The destination service reads the same file (and ignores the policy sections).
    let ids = linkerd_destination::IdentityConfig::default();
    let services = linkerd_destination::registry::parse(EXAMPLE, &ids).unwrap();
    assert_eq!(services.len(), 3);
    // A typo at the top level is still refused by both.
    let typo = format!("{EXAMPLE}\nservers2: []\n");
    assert!(parse(&typo, &cfg).is_err());
    assert!(linkerd_destination::registry::parse(&typo, &ids).is_err());
}

#[test]
fn bad_files_say_what_is_wrong() {
    let cfg = ClusterConfig::default();
    for (bad, expect) in [
        ("", "empty"),
        (
            "servers:\n  - name: s\n    spec: {podSelector: {}, port: 80, proxyProtocol: HTTP/3}\n",
            "proxyProtocol",
        ),
        (
            "servers:\n  - name: s\n    spec: {podSelector: {}, port: 80, protocol: HTTP/1}\n",
            "unknown field(s): spec.protocol",
        ),
        (
            "servers:\n  - name: s\n    spec: {podSelector: {}, port: 0}\n",
            "port 0",
        ),
        (
            "httpRoutes:\n  - name: r\n    spec: {rules: [{matches: [{path: {type: Exact, value: nope}}]}]}\n",
            "does not start with /",
        ),
        (
            "httpRoutes:\n  - name: r\n    annotations: {retry.linkerd.io/http: 7xx}\n    spec: {}\n",
            "retry.linkerd.io/http",
        ),
        (
            "httpRoutes:\n  - name: r\n    spec: {rules: [{timeouts: {request: soon}}]}\n",
            "not a duration",
        ),
        (
            "networkAuthentications:\n  - name: n\n    spec: {networks: [{cidr: 10.0.0.0/33}]}\n",
            "not a network",
        ),
        (
            "namespaces:\n  - name: x\n    annotations: {config.linkerd.io/default-inbound-policy: allow}\n",
            "not a default policy",
        ),
        ("serviceAnnotations:\n  - name: ghost\n", "no such service"),
        (
            "authorizationPolicies:\n  - name: a\n    spec: {targetRef: {kind: Server, name: s}}\n",
            "requiredAuthenticationRefs",
        ),
        (
            "workloads:\n  - name: w\n    probes: {80: [ready]}\n",
            "probe path",
        ),
        // Gateway API filters the proxy API cannot carry name themselves (Linkerd's
        // controller refuses such routes too), not the unknown field holding their settings.
        (
            "httpRoutes:\n  - name: r\n    spec: {rules: [{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]}]}\n",
            "filter type URLRewrite is not supported",
        ),
        (
            "httpRoutes:\n  - name: r\n    spec: {rules: [{backendRefs: [{name: b, port: 80, filters: [{type: RequestMirror}]}]}]}\n",
            "filter type RequestMirror is not supported",
        ),
        (
            "grpcRoutes:\n  - name: r\n    spec: {rules: [{filters: [{type: ResponseHeaderModifier}]}]}\n",
            "filter type ResponseHeaderModifier is not supported",
        ),
    ] {
        let e = parse(bad, &cfg).unwrap_err();
        assert!(e.contains(expect), "{bad:?}: {e}");
    }
}

#[tokio::test]
async fn reloads_and_keeps_the_last_good_state() {
    let dir = TempDir::new("reload");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let server = Server::start(
        Source::Registry {
            path: path.clone(),
            interval: Duration::from_millis(3_600_000),
        },
        ClusterConfig::default(),
    )
    .await;
    let s = server.index.inbound(&key("web-0"), 8080).unwrap();
    assert_eq!(s.labels["name"], "web-http");
    let mut w = registry::watcher(path.clone(), server.index.clone(), &server.metrics);
    w.poll().await;
    assert_eq!(w.poll().await, Polled::Unchanged);

    std::fs::write(
        &path,
        EXAMPLE.replace("proxyProtocol: HTTP/1", "proxyProtocol: bogus"),
    )
    .unwrap();
    assert_eq!(w.poll().await, Polled::Rejected);
    assert_eq!(
        server.index.inbound(&key("web-0"), 8080).unwrap().labels["name"],
        "web-http"
    );
    assert!(server.metrics.source().reload_errors() >= 1);

    let mut rx = server.index.watch_inbound(&key("vote-0"), 8080).unwrap();
    rx.borrow_and_update();
    std::fs::write(&path, EXAMPLE.replace("all-authenticated", "deny")).unwrap();
    assert!(matches!(w.poll().await, Polled::Applied(n) if n >= 1));
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow().as_ref().unwrap().labels["name"], "deny");
    server.stop().await;
}

/// The README's example registry is a valid one.
#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../README.md");
    let section = readme.split("## Registry file").nth(1).unwrap();
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .unwrap();
    let st = parse(yaml, &ClusterConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(st.http_routes.len(), 1);
    assert_eq!(st.grpc_routes.len(), 1);
}
