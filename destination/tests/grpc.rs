//! `Get` and `GetProfile` through a real tonic client over loopback.
#![allow(clippy::unwrap_used)]

mod support;

use linkerd_destination::{
    Source,
    api::{protocol_hint, tls_identity, update},
    metrics::Api,
    model::{Backend, Service, ServiceKey, ServicePort},
};
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use support::*;
use tonic::Code;

const WEB: &str = "web.emojivoto.svc.cluster.local:8080";
const ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn key() -> ServiceKey {
    ServiceKey::new("emojivoto", "web")
}

fn backend(ip: &str, meshed: bool) -> Arc<Backend> {
    let mut b = Backend::new(ip.parse().unwrap());
    b.meshed = meshed;
    if meshed {
        b.identity = Some(Arc::new(ID.parse().unwrap()));
    }
    b.labels = BTreeMap::from([("pod".to_string(), format!("web-{ip}"))]).into();
    Arc::new(b)
}

fn web(backends: Vec<Arc<Backend>>) -> Service {
    Service {
        cluster_ips: vec!["10.96.0.1".parse().unwrap()],
        ports: vec![ServicePort::same_target(8080, "http")],
        backends,
        ..Service::default()
    }
}

#[tokio::test]
async fn the_first_message_is_immediate() {
    let server = Server::start(Source::Manual).await;
    server.index.set_service(key(), web(vec![]));
    let mut client = server.client().await;

    let t = Instant::now();
    let mut s = get(&mut client, WEB).await.unwrap();
    assert_eq!(summary(&recv(&mut s).await).0, "no_endpoints_exists");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.1", true)]));
    assert_eq!(
        summary(&recv(&mut s).await),
        ("add", vec!["10.0.0.1:8080".to_string()])
    );
    let mut s2 = get(&mut client, WEB).await.unwrap();
    assert_eq!(
        summary(&recv(&mut s2).await).0,
        "add",
        "a non-empty service starts with its set"
    );

    // Unknown services are NOT_FOUND (as Linkerd's controller answers); IPs and names
    // outside the cluster domain are INVALID_ARGUMENT.
    let e = get(&mut client, "nope.emojivoto.svc.cluster.local:80")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    for bad in ["10.0.0.1:8080", "web.example.com:80"] {
        assert_eq!(
            get(&mut client, bad).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn changes_arrive_as_diffs() {
    let server = Server::start(Source::Manual).await;
    server.index.set_service(
        key(),
        web(vec![backend("10.0.0.1", true), backend("10.0.0.2", true)]),
    );
    let mut client = server.client().await;
    let mut s = get(&mut client, WEB).await.unwrap();
    let first = summary(&recv(&mut s).await);
    assert_eq!(
        first,
        ("add", vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()])
    );

    server.index.set_service(
        key(),
        web(vec![backend("10.0.0.2", true), backend("10.0.0.3", true)]),
    );
    assert_eq!(
        summary(&recv(&mut s).await),
        ("remove", vec!["10.0.0.1:8080".into()])
    );
    assert_eq!(
        summary(&recv(&mut s).await),
        ("add", vec!["10.0.0.3:8080".into()])
    );

    // An endpoint that changes (here: it stops being meshed) is re-added.
    server.index.set_service(
        key(),
        web(vec![backend("10.0.0.2", false), backend("10.0.0.3", true)]),
    );
    let u = recv(&mut s).await;
    assert_eq!(summary(&u), ("add", vec!["10.0.0.2:8080".into()]));
    let Some(update::Update::Add(set)) = u.update else {
        panic!()
    };
    assert!(set.addrs[0].tls_identity.is_none());

    // Deleted: everything removed, then no_endpoints{exists: false}; back, empty: exists.
    server.index.remove_service(&key());
    assert_eq!(summary(&recv(&mut s).await).0, "remove");
    assert_eq!(summary(&recv(&mut s).await).0, "no_endpoints_gone");
    server.index.set_service(key(), web(vec![]));
    assert_eq!(summary(&recv(&mut s).await).0, "no_endpoints_exists");
    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.9", true)]));
    assert_eq!(
        summary(&recv(&mut s).await),
        ("add", vec!["10.0.0.9:8080".into()])
    );
    // Setting the same state again sends nothing.
    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.9", true)]));
    quiet(&mut s, Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test]
async fn addresses_carry_weight_labels_identity_and_hints() {
    let server = Server::start(Source::Manual).await;
    let mut plain = Backend::new("10.0.0.2".parse().unwrap());
    plain.weight = 7;
    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.1", true), Arc::new(plain)]));
    let mut client = server.client().await;
    let mut s = get(&mut client, WEB).await.unwrap();
    let Some(update::Update::Add(set)) = recv(&mut s).await.update else {
        panic!()
    };
    assert_eq!(set.metric_labels.get("service").unwrap(), "web");
    assert_eq!(set.metric_labels.get("namespace").unwrap(), "emojivoto");
    let meshed = &set.addrs[0];
    assert_eq!(meshed.weight, 10_000);
    assert_eq!(meshed.metric_labels.get("pod").unwrap(), "web-10.0.0.1");
    let tls = meshed.tls_identity.as_ref().unwrap();
    let Some(tls_identity::Strategy::DnsLikeIdentity(id)) = &tls.strategy else {
        panic!()
    };
    assert_eq!(id.name, ID);
    assert_eq!(tls.server_name.as_ref().unwrap().name, ID);
    let hint = meshed.protocol_hint.as_ref().unwrap();
    assert!(matches!(
        hint.protocol,
        Some(protocol_hint::Protocol::H2(_))
    ));
    assert!(meshed.http2.is_some());
    let plain = &set.addrs[1];
    assert_eq!(plain.weight, 7);
    assert!(plain.tls_identity.is_none() && plain.protocol_hint.is_none());
    server.stop().await;
}

#[tokio::test]
async fn many_watchers_share_one_entry() {
    const N: usize = 40;
    let server = Server::start(Source::Manual).await;
    server.index.set_service(
        key(),
        web(vec![backend("10.0.0.1", true), backend("10.0.0.2", true)]),
    );
    let mut streams = Vec::new();
    for _ in 0..N {
        // Separate connections, as separate proxies would have.
        let mut client = server.client().await;
        let mut s = get(&mut client, WEB).await.unwrap();
        assert_eq!(summary(&recv(&mut s).await).0, "add");
        streams.push((client, s));
    }
    let stats = server.index.stats();
    assert_eq!(stats.topics, 1, "one index entry for every watcher");
    assert_eq!(stats.watchers.get(&key()), Some(&N));
    assert_eq!(server.metrics.watchers(Api::Get, &key()), N as u64);

    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.2", true)]));
    for (_, s) in &mut streams {
        assert_eq!(
            summary(&recv(s).await),
            ("remove", vec!["10.0.0.1:8080".into()])
        );
    }
    let (_, m) = server.admin_get("/metrics").await;
    assert!(
        m.contains(&format!(
            "destination_watchers{{api=\"get\",namespace=\"emojivoto\",service=\"web\"}} {N}"
        )),
        "{m}"
    );
    assert!(m.contains("destination_index_topics 1"), "{m}");
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metrics.watchers(Api::Get, &key()) > 0 || server.index.stats().topics > 0 {
        assert!(Instant::now() < deadline, "watchers not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn large_sets_go_out_in_chunks() {
    let server = Server::start(Source::Manual).await;
    let backends = (0..1200u32)
        .map(|i| {
            Arc::new(Backend::new(IpAddr::from([
                10,
                1,
                (i / 256) as u8,
                (i % 256) as u8,
            ])))
        })
        .collect();
    server.index.set_service(key(), web(backends));
    let mut client = server.client().await;
    let mut s = get(&mut client, WEB).await.unwrap();
    // Unmeshed addresses are small (~15 bytes): about 400 per 6 KB message.
    let mut got = Vec::new();
    while got.iter().sum::<usize>() < 1200 {
        got.push(summary(&recv(&mut s).await).1.len());
    }
    assert!(got.len() >= 3, "{got:?}");
    assert!(got.iter().all(|n| *n <= 500), "{got:?}");
    assert_eq!(got.iter().sum::<usize>(), 1200);
    quiet(&mut s, Duration::from_millis(100)).await;
    server.stop().await;
}

#[tokio::test]
async fn pod_dns_names_select_one_endpoint() {
    let server = Server::start(Source::Manual).await;
    let mut a = Backend::new("10.0.0.1".parse().unwrap());
    a.hostname = Some("pg-0".into());
    let mut b = Backend::new("10.0.0.2".parse().unwrap());
    b.hostname = Some("pg-1".into());
    let svc = Service {
        backends: vec![Arc::new(a), Arc::new(b)],
        ..Service::default()
    };
    server.index.set_service(ServiceKey::new("db", "pg"), svc);
    let mut client = server.client().await;
    let mut s = get(&mut client, "pg-1.pg.db.svc.cluster.local:5432")
        .await
        .unwrap();
    assert_eq!(
        summary(&recv(&mut s).await),
        ("add", vec!["10.0.0.2:5432".into()])
    );
    let mut s = get(&mut client, "pg-9.pg.db.svc.cluster.local:5432")
        .await
        .unwrap();
    assert_eq!(summary(&recv(&mut s).await).0, "no_endpoints_exists");
    server.stop().await;
}

#[tokio::test]
async fn profiles() {
    let server = Server::start(Source::Manual).await;
    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.1", true)]));
    let mut client = server.client().await;

    let mut p = get_profile(&mut client, WEB).await;
    let first = recv(&mut p).await;
    assert_eq!(
        first.fully_qualified_name,
        "web.emojivoto.svc.cluster.local"
    );
    assert!(!first.opaque_protocol);
    let budget = first.retry_budget.unwrap();
    assert_eq!(budget.retry_ratio, 0.2);
    assert_eq!(budget.min_retries_per_second, 10);
    assert_eq!(budget.ttl.unwrap().seconds, 10);
    assert!(first.routes.is_empty());

    // Endpoint changes do not change the profile; opaque ports do.
    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.2", true)]));
    quiet(&mut p, Duration::from_millis(200)).await;
    let mut opaque = web(vec![backend("10.0.0.2", true)]);
    opaque.opaque_ports.insert(8080);
    server.index.set_service(key(), opaque);
    assert!(recv(&mut p).await.opaque_protocol);

    // A port the service does not declare: the empty profile.
    let mut p = get_profile(&mut client, "web.emojivoto.svc.cluster.local:9999").await;
    assert_eq!(recv(&mut p).await, Default::default());

    // By cluster IP: the service's profile.
    let mut p = get_profile(&mut client, "10.96.0.1:8080").await;
    assert_eq!(
        recv(&mut p).await.fully_qualified_name,
        "web.emojivoto.svc.cluster.local"
    );
    // By pod IP: an endpoint profile.
    let mut p = get_profile(&mut client, "10.0.0.2:8080").await;
    let ep = recv(&mut p).await;
    assert!(ep.opaque_protocol);
    assert!(ep.endpoint.unwrap().tls_identity.is_some());

    // Unknown service: empty, then the real profile once it exists.
    let mut p = get_profile(&mut client, "later.emojivoto.svc.cluster.local:8080").await;
    assert_eq!(recv(&mut p).await.fully_qualified_name, "");
    server
        .index
        .set_service(ServiceKey::new("emojivoto", "later"), web(vec![]));
    assert_eq!(
        recv(&mut p).await.fully_qualified_name,
        "later.emojivoto.svc.cluster.local"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let server = Server::start(Source::Manual).await;
    server
        .index
        .set_service(key(), web(vec![backend("10.0.0.1", true)]));
    let mut client = server.client().await;
    let mut s = get(&mut client, WEB).await.unwrap();
    recv(&mut s).await;
    let mut p = get_profile(&mut client, "10.0.0.1:8080").await;
    recv(&mut p).await;
    let (status, _) = server.admin_get("/ready").await;
    assert_eq!(status, 200);
    let t = Instant::now();
    server.stop().await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let end = tokio::time::timeout(TIMEOUT, s.message()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)));
}
