//! Index tests: Kubernetes objects built in code and registry documents, fed straight into
//! the index; assertions on what its watch channels publish.
#![allow(clippy::unwrap_used)]

mod support;

use linkerd_destination::{
    IdentityConfig,
    index::Index,
    k8s::KubeIndex,
    model::{ProtocolHint, ServiceKey},
    registry,
};
use std::sync::Arc;
use support::*;

const ID_WEB: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn kube() -> KubeIndex {
    KubeIndex::new(Arc::new(Index::new()), IdentityConfig::default())
}

/// emojivoto/web: port 80 (`http`) to 8080, at 10.96.0.1.
fn web_service() -> k8s_openapi::api::core::v1::Service {
    service("emojivoto", "web", &[(80, "http", int(8080))], "10.96.0.1")
}

fn web() -> ServiceKey {
    ServiceKey::new("emojivoto", "web")
}

#[tokio::test]
async fn endpoints_added_and_removed() {
    let mut k = kube();
    k.apply_service(&web_service());
    k.flush();
    let mut rx = k.index().watch(&web(), 80).unwrap();
    let first = rx.borrow_and_update().clone();
    assert!(first.exists && first.declared);
    assert!(first.endpoints.is_empty(), "no slices yet");

    let eps = vec![endpoint("10.0.0.1", None), endpoint("10.0.0.2", None)];
    k.apply_slice(&slice("emojivoto", "web-a", "web", &[("http", 8080)], eps));
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(addrs(&s), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!(s.diff.add.len(), 2);

    // One more endpoint: the diff is just that one.
    let eps = vec![
        endpoint("10.0.0.1", None),
        endpoint("10.0.0.2", None),
        endpoint("10.0.0.3", None),
    ];
    k.apply_slice(&slice("emojivoto", "web-a", "web", &[("http", 8080)], eps));
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(s.diff.add.len(), 1);
    assert_eq!(s.diff.add[0].addr.to_string(), "10.0.0.3:8080");
    assert!(s.diff.remove.is_empty());

    // A second slice adds; deleting the first removes its endpoints only.
    k.apply_slice(&slice(
        "emojivoto",
        "web-b",
        "web",
        &[("http", 8080)],
        vec![endpoint("10.0.1.1", None)],
    ));
    k.flush();
    assert_eq!(next(&mut rx).await.endpoints.len(), 4);
    k.delete_slice(&slice("emojivoto", "web-a", "web", &[], vec![]));
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(addrs(&s), ["10.0.1.1:8080"]);
    assert_eq!(s.diff.remove.len(), 3);

    // The service goes: everything removed, exists = false.
    k.delete_service(&service("emojivoto", "web", &[], ""));
    k.flush();
    let s = next(&mut rx).await;
    assert!(!s.exists);
    assert!(s.endpoints.is_empty());
    assert!(
        k.index().watch(&web(), 80).is_none(),
        "unknown services are not watchable"
    );
}

#[tokio::test]
async fn not_ready_and_terminating_endpoints_are_dropped() {
    let mut k = kube();
    k.apply_service(&web_service());
    let eps = vec![
        endpoint("10.0.0.1", None),
        with_conditions(endpoint("10.0.0.2", None), Some(false), None),
        with_conditions(endpoint("10.0.0.3", None), Some(true), Some(true)),
        with_conditions(endpoint("10.0.0.4", None), Some(false), Some(true)),
        // No conditions at all: counts as ready.
        with_conditions(endpoint("10.0.0.5", None), None, None),
    ];
    k.apply_slice(&slice("emojivoto", "web-a", "web", &[("http", 8080)], eps));
    k.flush();
    let mut rx = k.index().watch(&web(), 80).unwrap();
    assert_eq!(
        addrs(&rx.borrow_and_update()),
        ["10.0.0.1:8080", "10.0.0.5:8080"]
    );
    // 10.0.0.2 becomes ready.
    let eps = vec![
        endpoint("10.0.0.1", None),
        endpoint("10.0.0.2", None),
        with_conditions(endpoint("10.0.0.5", None), None, None),
    ];
    k.apply_slice(&slice("emojivoto", "web-a", "web", &[("http", 8080)], eps));
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(s.diff.add.len(), 1);
    assert_eq!(s.diff.add[0].addr.to_string(), "10.0.0.2:8080");
}

#[tokio::test]
async fn named_target_ports_resolve_through_the_pod() {
    let mut k = kube();
    // targetPort "http"; the slice's port is named after a different service port, so the
    // only way to resolve it is the pod's container ports.
    k.apply_service(&service(
        "emojivoto",
        "web",
        &[(80, "web", named("http"))],
        "10.96.0.1",
    ));
    k.apply_slice(&slice(
        "emojivoto",
        "web-a",
        "web",
        &[("other", 9999)],
        vec![
            endpoint("10.0.0.1", Some("web-1")),
            endpoint("10.0.0.2", Some("web-2")),
        ],
    ));
    k.flush();
    let mut rx = k.index().watch(&web(), 80).unwrap();
    assert!(
        rx.borrow_and_update().endpoints.is_empty(),
        "pods unknown yet"
    );
    k.apply_pod(&pod("emojivoto", "web-1", "web", false, &[("http", 8080)]));
    k.apply_pod(&pod("emojivoto", "web-2", "web", false, &[("http", 8081)]));
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(addrs(&s), ["10.0.0.1:8080", "10.0.0.2:8081"]);

    // When the slice names the service port, its resolution wins (as in Kubernetes).
    k.apply_slice(&slice(
        "emojivoto",
        "web-a",
        "web",
        &[("web", 7000)],
        vec![endpoint("10.0.0.1", Some("web-1"))],
    ));
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(addrs(&s), ["10.0.0.1:7000"]);
}

#[tokio::test]
async fn headless_services_serve_undeclared_ports() {
    let mut k = kube();
    k.apply_service(&service("db", "pg", &[], "None"));
    let mut e = endpoint("10.0.0.7", Some("pg-0"));
    e.hostname = Some("pg-0".into());
    k.apply_slice(&slice("db", "pg-a", "pg", &[], vec![e]));
    k.flush();
    let svc = k.index().service(&ServiceKey::new("db", "pg")).unwrap();
    assert!(svc.cluster_ips.is_empty(), "headless");
    let mut rx = k.index().watch(&ServiceKey::new("db", "pg"), 5432).unwrap();
    let s = rx.borrow_and_update().clone();
    assert!(s.exists && !s.declared);
    assert_eq!(addrs(&s), ["10.0.0.7:5432"]);
    assert_eq!(
        s.endpoints.values().next().unwrap().hostname.as_deref(),
        Some("pg-0")
    );
}

#[tokio::test]
async fn meshed_pods_carry_identity_and_h2() {
    let mut k = kube();
    k.apply_service(&web_service());
    k.apply_slice(&slice(
        "emojivoto",
        "web-a",
        "web",
        &[("http", 8080)],
        vec![
            endpoint("10.0.0.1", Some("web-1")),
            endpoint("10.0.0.2", Some("web-2")),
        ],
    ));
    k.apply_pod(&pod("emojivoto", "web-1", "web", true, &[]));
    k.apply_pod(&pod("emojivoto", "web-2", "web", false, &[]));
    k.flush();
    let mut rx = k.index().watch(&web(), 80).unwrap();
    let s = rx.borrow_and_update().clone();
    let eps: Vec<_> = s.endpoints.values().collect();
    assert_eq!(eps[0].identity.as_ref().unwrap().as_str(), ID_WEB);
    assert_eq!(eps[0].hint, ProtocolHint::H2);
    assert_eq!(eps[0].labels.get("pod").unwrap(), "web-1");
    assert_eq!(eps[0].labels.get("serviceaccount").unwrap(), "web");
    assert_eq!(eps[1].identity, None);
    assert_eq!(eps[1].hint, ProtocolHint::Unknown);

    // web-2 gets injected: an add for it (an update of an address the client has).
    k.apply_pod(&pod("emojivoto", "web-2", "web", true, &[]));
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(s.diff.add.len(), 1);
    assert_eq!(s.diff.add[0].addr.to_string(), "10.0.0.2:8080");
    assert_eq!(s.diff.add[0].hint, ProtocolHint::H2);
    assert!(s.diff.remove.is_empty());

    // A pod meshed by another control plane is not ours to vouch for.
    let mut other = pod("emojivoto", "web-1", "web", false, &[]);
    other.metadata.labels = control_plane_label("other");
    k.apply_pod(&other);
    k.flush();
    let s = next(&mut rx).await;
    assert_eq!(s.diff.add[0].identity, None);
}

#[tokio::test]
async fn identity_uses_the_configured_domain_and_namespace() {
    let index = Arc::new(Index::new());
    let ids = IdentityConfig {
        control_plane_ns: "mesh-system".into(),
        trust_domain: "example.org".into(),
    };
    let mut k = KubeIndex::new(index.clone(), ids);
    k.apply_service(&service("shop", "cart", &[(80, "", int(80))], "10.96.0.2"));
    k.apply_slice(&slice(
        "shop",
        "cart-a",
        "cart",
        &[("", 80)],
        vec![endpoint("10.0.0.9", Some("cart-1"))],
    ));
    let mut p = pod("shop", "cart-1", "cart-sa", false, &[]);
    p.metadata.labels = control_plane_label("mesh-system");
    k.apply_pod(&p);
    k.flush();
    let rx = index.watch(&ServiceKey::new("shop", "cart"), 80).unwrap();
    let s = rx.borrow().clone();
    let ep = s.endpoints.values().next().unwrap();
    assert_eq!(
        ep.identity.as_ref().unwrap().as_str(),
        "cart-sa.shop.serviceaccount.identity.mesh-system.example.org"
    );
}

#[tokio::test]
async fn opaque_ports_hint_opaque_transport() {
    let mut k = kube();
    let mut svc = service("db", "mysql", &[(3306, "", int(3306))], "10.96.0.3");
    svc.metadata.annotations = Some(
        [(
            "config.linkerd.io/opaque-ports".to_string(),
            "3306".to_string(),
        )]
        .into(),
    );
    k.apply_service(&svc);
    k.apply_slice(&slice(
        "db",
        "mysql-a",
        "mysql",
        &[("", 3306)],
        vec![endpoint("10.0.0.4", Some("mysql-0"))],
    ));
    k.apply_pod(&pod("db", "mysql-0", "mysql", true, &[]));
    k.flush();
    let rx = k
        .index()
        .watch(&ServiceKey::new("db", "mysql"), 3306)
        .unwrap();
    let s = rx.borrow().clone();
    assert!(s.opaque);
    assert_eq!(
        s.endpoints.values().next().unwrap().hint,
        ProtocolHint::Opaque { inbound_port: 4143 }
    );
}

#[tokio::test]
async fn relist_removes_what_is_gone_and_pods_rebuild_once() {
    let mut k = kube();
    k.reset_services(&[
        service("a", "one", &[(80, "", int(80))], "10.96.0.4"),
        service("a", "two", &[(80, "", int(80))], "10.96.0.5"),
    ]);
    k.reset_slices(&[slice(
        "a",
        "one-x",
        "one",
        &[("", 80)],
        vec![endpoint("10.0.0.1", Some("p1"))],
    )]);
    k.reset_pods(&[pod("a", "p1", "sa", true, &[])]);
    assert_eq!(k.flush(), 2);
    let mut rx = k.index().watch(&ServiceKey::new("a", "one"), 80).unwrap();
    assert!(
        rx.borrow_and_update()
            .endpoints
            .values()
            .next()
            .unwrap()
            .identity
            .is_some()
    );

    // A relist without service "two" and without the pod.
    k.reset_services(&[service("a", "one", &[(80, "", int(80))], "10.96.0.4")]);
    k.reset_pods(&[]);
    assert_eq!(k.flush(), 2);
    assert!(k.index().service(&ServiceKey::new("a", "two")).is_none());
    let s = next(&mut rx).await;
    assert_eq!(s.endpoints.values().next().unwrap().identity, None);
    assert_eq!(k.index().stats().services, 1);
}

// === registry documents ===

const REGISTRY: &str = r#"
services:
  - name: web
    namespace: emojivoto
    clusterIP: 10.96.0.10
    ports:
      - 8080
      - {port: 80, targetPort: http, name: web}
    opaquePorts: [3306]
    endpoints:
      - ip: 10.0.0.1
        ports: {http: 9000}
        serviceAccount: web
        labels: {pod: web-1}
      - ip: 10.0.0.2
        ports: {http: 9000}
        meshed: false
        weight: 5
      - ip: 10.0.0.3
        ready: false
  - name: local
    endpoints:
      - ip: 127.0.0.10
        port: 18080
        identity: local.default.serviceaccount.identity.linkerd.cluster.local
"#;

#[tokio::test]
async fn registry_documents_become_services() {
    let services = registry::parse(REGISTRY, &IdentityConfig::default()).unwrap();
    let index = Index::new();
    assert_eq!(index.reset(services), 2);
    let mut rx = index.watch(&web(), 8080).unwrap();
    let s = rx.borrow_and_update().clone();
    assert_eq!(
        addrs(&s),
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "not-ready dropped"
    );
    let eps: Vec<_> = s.endpoints.values().collect();
    assert_eq!(eps[0].identity.as_ref().unwrap().as_str(), ID_WEB);
    assert_eq!(eps[0].hint, ProtocolHint::H2);
    assert_eq!(eps[0].weight, 10_000);
    assert_eq!(eps[0].labels.get("pod").unwrap(), "web-1");
    assert_eq!(eps[1].identity, None);
    assert_eq!(eps[1].weight, 5);

    // The named target port resolves through each endpoint's ports.
    let rx80 = index.watch(&web(), 80).unwrap();
    assert_eq!(addrs(&rx80.borrow()), ["10.0.0.1:9000", "10.0.0.2:9000"]);
    // `port` overrides the target port; the namespace defaults to "default".
    let rx = index
        .watch(&ServiceKey::new("default", "local"), 80)
        .unwrap();
    let s = rx.borrow().clone();
    assert_eq!(addrs(&s), ["127.0.0.10:18080"]);
    assert!(
        s.endpoints.values().next().unwrap().identity.is_some(),
        "meshed by default with an identity"
    );
    assert_eq!(
        index.service_by_cluster_ip("10.96.0.10".parse().unwrap()),
        Some(web())
    );
}

#[test]
fn registry_errors_are_clear() {
    let ids = IdentityConfig::default();
    let cases = [
        ("services:\n  - name: web\n    prots: [80]\n", "prots"),
        ("services:\n  - name: Web\n", "not a DNS label"),
        ("services:\n  - name: web\n  - name: web\n", "defined twice"),
        (
            "services:\n  - name: web\n    endpoints:\n      - ip: 10.0.0.1\n        identity: Bad..Name\n",
            "identity",
        ),
        (
            "services:\n  - name: web\n    endpoints:\n      - ip: not-an-ip\n",
            "line 4 column 13: invalid IP",
        ),
        ("services: [\n", ""),
        (
            "services:\n  - name: web\n    ports: [80, 80]\n",
            "listed twice",
        ),
    ];
    for (doc, needle) in cases {
        let e = registry::parse(doc, &ids).unwrap_err();
        assert!(e.contains(needle), "{doc:?}: {e}");
    }
    assert!(registry::parse("services: []\n", &ids).unwrap().is_empty());
}
