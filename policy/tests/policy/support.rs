//! Shared helpers: state built in code, a running server, clients.
#![allow(dead_code)]

use linkerd_policy::{
    Config, Source,
    inbound_api::inbound_server_policies_client::InboundServerPoliciesClient,
    index::Index,
    metrics::Metrics,
    model::{ClusterConfig, Meta, Res, Service, State, Workload},
    outbound_api::outbound_policies_client::OutboundPoliciesClient,
    resources::*,
    server,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::sync::watch;
use tonic::transport::Channel;

pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const NS: &str = "emojivoto";

pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn meta(name: &str, created: i64) -> Meta {
    Meta {
        namespace: NS.into(),
        name: name.into(),
        created,
        annotations: BTreeMap::new(),
    }
}

pub fn res<T>(name: &str, created: i64, spec: T) -> Res<T> {
    Res {
        meta: meta(name, created),
        spec,
    }
}

pub fn key(name: &str) -> (String, String) {
    (NS.to_string(), name.to_string())
}

/// `web-0` (app=web, sa web, port http=8080, probes /ready on 8080) and `vote-0` (sa vote);
/// services web (8080, 10.96.0.10), backend-v1, backend-v2.
pub fn state() -> State {
    let mut s = State::default();
    s.workloads.insert(
        key("web-0"),
        Workload {
            namespace: NS.into(),
            name: "web-0".into(),
            labels: labels(&[("app", "web")]),
            service_account: Some("web".into()),
            named_ports: BTreeMap::from([("http".into(), 8080)]),
            probes: BTreeMap::from([(8080, ["/ready".to_string()].into())]),
            ..Workload::default()
        },
    );
    s.workloads.insert(
        key("vote-0"),
        Workload {
            namespace: NS.into(),
            name: "vote-0".into(),
            labels: labels(&[("app", "vote")]),
            service_account: Some("vote".into()),
            ..Workload::default()
        },
    );
    for (name, ip) in [
        ("web", "10.96.0.10"),
        ("backend-v1", "10.96.0.11"),
        ("backend-v2", "10.96.0.12"),
    ] {
        s.services.insert(
            key(name),
            Service {
                cluster_ips: vec![ip.parse().unwrap()],
                ports: [8080].into(),
                ..Service::default()
            },
        );
    }
    s
}

pub fn server_spec(app: &str, port: Port, protocol: &str) -> ServerSpec {
    ServerSpec {
        pod_selector: LabelSelector {
            match_labels: Some(labels(&[("app", app)])),
            match_expressions: None,
        },
        port,
        proxy_protocol: Some(protocol.into()),
    }
}

pub fn obj_ref(group: &str, kind: &str, name: &str) -> ObjectRef {
    ObjectRef {
        group: (!group.is_empty()).then(|| group.to_string()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "policy-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running policy service on loopback.
pub struct Server {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(source: Source, cluster: ClusterConfig) -> Self {
        let bound = server::bind(Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            source,
            cluster,
            grace: Duration::from_secs(2),
        })
        .await
        .unwrap();
        let addr = bound.grpc_addr().unwrap();
        let admin = bound.admin_addr().unwrap();
        let index = bound.index().clone();
        let metrics = bound.metrics().clone();
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            bound
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            admin,
            index,
            metrics,
            stop,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn inbound(&self) -> InboundServerPoliciesClient<Channel> {
        InboundServerPoliciesClient::new(self.channel().await)
    }

    pub async fn outbound(&self) -> OutboundPoliciesClient<Channel> {
        OutboundPoliciesClient::new(self.channel().await)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// GET on the admin server: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
