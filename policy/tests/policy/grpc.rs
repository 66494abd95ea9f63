//! Both APIs through a real tonic client over loopback.

use crate::support::*;
use linkerd_policy::{
    Source,
    inbound_api::PortSpec,
    metrics::Api,
    model::ClusterConfig,
    outbound_api::{TrafficSpec, traffic_spec},
};
use std::time::{Duration, Instant};
use tonic::Code;

fn spec(workload: &str, port: u32) -> PortSpec {
    PortSpec {
        workload: workload.into(),
        port,
    }
}

fn authority(a: &str) -> TrafficSpec {
    TrafficSpec {
        source_workload: "emojivoto:vote-0".into(),
        target: Some(traffic_spec::Target::Authority(a.into())),
    }
}

/// A server on a manual source, holding [`state`].
async fn serving_state() -> Server {
    let server = Server::start(Source::Manual, ClusterConfig::default()).await;
    server.index.reset(state());
    server
}

/// The stream's next message, within [`TIMEOUT`].
async fn message<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(TIMEOUT, s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn watch_port_answers_at_once_and_follows_changes() {
    let server = serving_state().await;
    let mut client = server.inbound().await;

    let t = Instant::now();
    let mut s = client
        .watch_port(spec(r#"{"ns":"emojivoto","pod":"web-0"}"#, 8080))
        .await
        .unwrap()
        .into_inner();
    let first = message(&mut s).await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(first.labels["name"], "all-unauthenticated");

    server.index.update(|st| {
        st.namespaces.insert(
            NS.into(),
            labels(&[("config.linkerd.io/default-inbound-policy", "deny")]),
        );
    });
    let next = message(&mut s).await;
    assert_eq!(next.labels["name"], "deny");
    assert!(next.authorizations.is_empty());

    // The old `ns:pod` form, unary.
    let got = client
        .get_port(spec("emojivoto:web-0", 8080))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, next);
    assert_eq!(server.metrics.watchers(Api::InboundWatch), 1);

    // Errors.
    for (w, p, code) in [
        ("emojivoto:web-0", 0, Code::InvalidArgument),
        ("emojivoto:web-0", 65536, Code::InvalidArgument),
        ("not a workload", 80, Code::InvalidArgument),
        (r#"{"ns":"emojivoto"}"#, 80, Code::InvalidArgument),
        ("emojivoto:nope", 80, Code::NotFound),
    ] {
        assert_eq!(
            client.watch_port(spec(w, p)).await.unwrap_err().code(),
            code,
            "{w} {p}"
        );
        assert_eq!(
            client.get_port(spec(w, p)).await.unwrap_err().code(),
            code,
            "{w} {p}"
        );
    }

    // The workload goes away: the stream ends with NOT_FOUND.
    server.index.update(|st| {
        st.workloads.remove(&key("web-0"));
    });
    let end = tokio::time::timeout(TIMEOUT, s.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn outbound_watch_by_authority_and_address() {
    let server = serving_state().await;
    let mut client = server.outbound().await;
    let mut s = client
        .watch(authority("web.emojivoto.svc.cluster.local:8080"))
        .await
        .unwrap()
        .into_inner();
    let first = message(&mut s).await;
    assert!(format!("{first:?}").contains("Default(\"default\")"));

    server.index.update(|st| {
        st.services.get_mut(&key("web")).unwrap().annotations =
            labels(&[("balancer.linkerd.io/failure-accrual", "consecutive")]);
    });
    let next = message(&mut s).await;
    assert!(format!("{next:?}").contains("ConsecutiveFailures"));

    let by_ip = TrafficSpec {
        source_workload: String::new(),
        target: Some(traffic_spec::Target::Addr(proto::net::to_tcp_address(
            "10.96.0.10:8080".parse().unwrap(),
        ))),
    };
    assert_eq!(client.get(by_ip).await.unwrap().into_inner(), next);

    for (a, code) in [
        ("nope.emojivoto.svc.cluster.local:80", Code::NotFound),
        ("example.com:80", Code::NotFound),
        ("10.1.1.1:80", Code::NotFound),
        ("web.emojivoto.svc.cluster.local:0", Code::InvalidArgument),
    ] {
        assert_eq!(
            client.watch(authority(a)).await.unwrap_err().code(),
            code,
            "{a}"
        );
    }
    let (status, metrics) = admin_get(server.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("policy_watchers{direction=\"outbound\",rpc=\"watch\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "policy_lookups_total{direction=\"outbound\",rpc=\"watch\",result=\"not_found\"} 3"
        ),
        "{metrics}"
    );
    assert_eq!(admin_get(server.admin, "/ready").await.0, 200);

    // Shutdown ends open streams.
    server.stop().await;
    let end = tokio::time::timeout(TIMEOUT, s.message()).await.unwrap();
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

#[tokio::test]
async fn many_watchers_share_one_entry() {
    let server = serving_state().await;
    let mut client = server.inbound().await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut s = client
            .watch_port(spec("emojivoto:web-0", 8080))
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap();
        streams.push(s);
    }
    let stats = server.index.stats();
    assert_eq!((stats.inbound_topics, stats.inbound_watchers), (1, 50));
    server.index.update(|st| {
        st.namespaces.insert(
            NS.into(),
            labels(&[("config.linkerd.io/default-inbound-policy", "deny")]),
        );
    });
    for s in &mut streams {
        let m = message(s).await;
        assert_eq!(m.labels["name"], "deny");
    }
    server.stop().await;
}
