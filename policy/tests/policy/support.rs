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
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};
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

#[allow(unused_imports)]
pub use linkerd_control::test_support::{Running, TempDir};

/// A running policy service on loopback (its addresses through [`Running`]).
pub struct Server {
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    running: Running<linkerd_policy::Error>,
}

impl std::ops::Deref for Server {
    type Target = Running<linkerd_policy::Error>;

    fn deref(&self) -> &Self::Target {
        &self.running
    }
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
        let (index, metrics) = (bound.index.clone(), bound.metrics.clone());
        let running = Running::spawn(bound);
        Self {
            index,
            metrics,
            running,
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
        self.running.stop(TIMEOUT).await.unwrap();
    }
}

/// GET on the admin server: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    linkerd_control::test_support::admin_get(addr, path).await
}
