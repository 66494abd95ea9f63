use super::*;
use crate::model::{Backend, Service, ServicePort};
use tokio_stream::StreamExt;

fn svc(ips: &[&str]) -> Service {
    Service {
        ports: vec![ServicePort::same_target(80, "")],
        backends: ips
            .iter()
            .map(|ip| Arc::new(Backend::new(ip.parse().unwrap())))
            .collect(),
        ..Service::default()
    }
}

fn addrs(u: &Update) -> (&'static str, Vec<String>) {
    match u.update.as_ref().unwrap() {
        update::Update::Add(s) => (
            "add",
            s.addrs
                .iter()
                .map(|a| {
                    proto::net::to_socket_addr(a.addr.as_ref().unwrap())
                        .unwrap()
                        .to_string()
                })
                .collect(),
        ),
        update::Update::Remove(s) => (
            "remove",
            s.addrs
                .iter()
                .map(|a| proto::net::to_socket_addr(a).unwrap().to_string())
                .collect(),
        ),
        update::Update::NoEndpoints(_) => ("none", vec![]),
    }
}

/// A watcher that was not read while several versions went by gets one net diff
/// against what it last sent, not every step (and no queue built up meanwhile).
#[tokio::test]
async fn a_lagging_watcher_gets_one_net_diff() {
    let index = Arc::new(Index::new());
    let metrics = Arc::new(Metrics::default());
    let key = ServiceKey::new("ns", "web");
    index.set_service(key.clone(), svc(&["10.0.0.1", "10.0.0.2"]));
    let rx = index.watch(&key, 80).unwrap();
    let mut stream = EndpointStream::new(rx, &key, None, metrics.watcher(Api::Get, &key));
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        addrs(&first),
        ("add", vec!["10.0.0.1:80".into(), "10.0.0.2:80".into()])
    );

    index.set_service(key.clone(), svc(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
    index.set_service(key.clone(), svc(&["10.0.0.1", "10.0.0.3"]));
    index.set_service(key.clone(), svc(&["10.0.0.1", "10.0.0.3", "10.0.0.4"]));
    let rm = stream.next().await.unwrap().unwrap();
    assert_eq!(addrs(&rm), ("remove", vec!["10.0.0.2:80".into()]));
    let add = stream.next().await.unwrap().unwrap();
    assert_eq!(
        addrs(&add),
        ("add", vec!["10.0.0.3:80".into(), "10.0.0.4:80".into()])
    );
    let more = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(more.is_err(), "nothing else to send: {more:?}");
    assert_eq!(metrics.updates_sent(Api::Get), 3);
}

#[test]
fn paths() {
    let t = parse_target("web.emojivoto.svc.cluster.local:8080", "cluster.local").unwrap();
    assert_eq!(
        t,
        Target::Service {
            key: ServiceKey::new("emojivoto", "web"),
            port: 8080,
            hostname: None
        }
    );
    let t = parse_target("web-0.web.ns.svc.cluster.local.", "cluster.local").unwrap();
    assert_eq!(
        t,
        Target::Service {
            key: ServiceKey::new("ns", "web"),
            port: 80,
            hostname: Some("web-0".into())
        }
    );
    assert_eq!(
        parse_target("10.1.2.3:80", "cluster.local").unwrap(),
        Target::Addr("10.1.2.3:80".parse().unwrap())
    );
    for bad in [
        "web.example.com:80",
        "web.svc.cluster.local:80",
        "a.b.c.d.svc.cluster.local:80",
        "web.ns.svc.cluster.local:http",
    ] {
        assert!(parse_target(bad, "cluster.local").is_err(), "{bad}");
    }
}
