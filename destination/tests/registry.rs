//! The registry file: hot reload, invalid edits keep the last good state.
#![allow(clippy::unwrap_used)]

mod support;

use linkerd_destination::{
    IdentityConfig, Source,
    index::Index,
    metrics::Metrics,
    model::ServiceKey,
    registry::{self, Polled},
};
use std::{sync::Arc, time::Duration};
use support::*;

fn doc(ips: &[&str]) -> String {
    let mut s = String::from(
        "services:\n  - name: web\n    namespace: emojivoto\n    ports: [8080]\n    endpoints:\n",
    );
    for ip in ips {
        s.push_str(&format!("      - {{ip: {ip}, serviceAccount: web}}\n"));
    }
    s
}

#[tokio::test]
async fn reloads_apply_and_invalid_edits_keep_the_last_good_state() {
    let dir = TempDir::new("reload");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, doc(&["10.0.0.1"])).unwrap();
    let index = Arc::new(Index::new());
    let metrics = Arc::new(Metrics::default());
    let mut w = registry::watcher(
        path.clone(),
        IdentityConfig::default(),
        index.clone(),
        &metrics,
    );
    assert_eq!(w.poll().await, Polled::Applied(1));
    assert_eq!(
        w.poll().await,
        Polled::Unchanged,
        "same content is not applied again"
    );
    let key = ServiceKey::new("emojivoto", "web");
    let mut rx = index.watch(&key, 8080).unwrap();
    assert_eq!(addrs(&rx.borrow_and_update()), ["10.0.0.1:8080"]);

    std::fs::write(&path, doc(&["10.0.0.1", "10.0.0.2"])).unwrap();
    assert_eq!(w.poll().await, Polled::Applied(1));
    let s = next(&mut rx).await;
    assert_eq!(addrs(&s), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    // An invalid edit: reported and counted once, nothing published.
    std::fs::write(
        &path,
        "services:\n  - name: web\n    endpoints: [{ip: nope}]\n",
    )
    .unwrap();
    assert_eq!(w.poll().await, Polled::Rejected);
    assert_eq!(w.poll().await, Polled::Unchanged);
    assert_eq!(metrics.source().reload_errors(), 1);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(index.service(&key).unwrap().backends.len(), 2);

    // A missing file is an error too, reported once; the state stays.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(w.poll().await, Polled::Rejected);
    assert_eq!(w.poll().await, Polled::Unchanged);
    assert_eq!(metrics.source().reload_errors(), 2);
    assert_eq!(index.stats().services, 1);

    // Fixed: applied as a diff against the last good state.
    std::fs::write(&path, doc(&["10.0.0.2"])).unwrap();
    assert_eq!(w.poll().await, Polled::Applied(1));
    let s = next(&mut rx).await;
    assert_eq!(addrs(&s), ["10.0.0.2:8080"]);
    assert_eq!(s.diff.remove.len(), 1);
    assert!(s.diff.add.is_empty());
}

#[tokio::test]
async fn a_running_server_follows_the_file() {
    let dir = TempDir::new("serve");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, doc(&["10.0.0.1"])).unwrap();
    let server = Server::start(Source::Registry {
        path: path.clone(),
        interval: Duration::from_millis(50),
    })
    .await;
    let mut client = server.client().await;
    let mut s = get(&mut client, "web.emojivoto.svc.cluster.local:8080")
        .await
        .unwrap();
    assert_eq!(
        summary(&recv(&mut s).await),
        ("add", vec!["10.0.0.1:8080".to_string()])
    );

    std::fs::write(&path, doc(&["10.0.0.1", "10.0.0.3"])).unwrap();
    assert_eq!(
        summary(&recv(&mut s).await),
        ("add", vec!["10.0.0.3:8080".to_string()])
    );

    std::fs::write(&path, "services: [oops\n").unwrap();
    quiet(&mut s, Duration::from_millis(300)).await;
    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(
        metrics.contains("destination_registry_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("destination_index_endpoints 2"),
        "{metrics}"
    );

    std::fs::write(&path, doc(&["10.0.0.3"])).unwrap();
    assert_eq!(
        summary(&recv(&mut s).await),
        ("remove", vec!["10.0.0.1:8080".to_string()])
    );
    server.stop().await;
}

#[tokio::test]
async fn a_bad_registry_at_startup_is_an_error() {
    let dir = TempDir::new("bad");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, "services:\n  - nme: web\n").unwrap();
    let config = linkerd_destination::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        source: Source::Registry {
            path,
            interval: Duration::from_millis(50),
        },
        cluster_domain: "cluster.local".into(),
        ids: IdentityConfig::default(),
        grace: Duration::from_secs(1),
    };
    let e = linkerd_destination::bind(config).await.unwrap_err();
    assert!(e.to_string().contains("nme"), "{e}");
}
