//! Shared test helpers: Kubernetes objects built in code, a running server, a client.
#![allow(dead_code, clippy::unwrap_used)]

use k8s_openapi::{
    api::{
        core::v1::{
            Container, ContainerPort, ObjectReference, Pod, PodSpec, Service, ServicePort,
            ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use linkerd_destination::{
    Config, IdentityConfig, Source,
    api::{
        DestinationProfile, GetDestination, Update, destination_client::DestinationClient, update,
    },
    index::{Index, Snapshot},
    metrics::Metrics,
    server,
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio::sync::watch;
use tonic::{Streaming, transport::Channel};

pub const TIMEOUT: Duration = Duration::from_secs(5);

#[allow(unused_imports)]
pub use linkerd_control::test_support::{Running, TempDir};

// === Kubernetes objects ===

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// A Service; `ports` are (port, name, targetPort). `cluster_ip` "None" makes it headless.
pub fn service(
    ns: &str,
    name: &str,
    ports: &[(i32, &str, IntOrString)],
    cluster_ip: &str,
) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(port, name, target)| ServicePort {
                        port: *port,
                        name: (!name.is_empty()).then(|| name.to_string()),
                        target_port: Some(target.clone()),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn int(n: i32) -> IntOrString {
    IntOrString::Int(n)
}

pub fn named(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}

/// An EndpointSlice of service `svc`; `ports` are (service-port name, port).
pub fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: &[(&str, i32)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut m = meta(ns, name);
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        svc.to_string(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(name, port)| EndpointPort {
                    name: Some(name.to_string()),
                    port: Some(*port),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// A ready endpoint backed by pod `pod` (if any).
pub fn endpoint(ip: &str, pod: Option<&str>) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        target_ref: pod.map(|p| ObjectReference {
            kind: Some("Pod".into()),
            name: Some(p.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn with_conditions(
    mut e: Endpoint,
    ready: Option<bool>,
    terminating: Option<bool>,
) -> Endpoint {
    e.conditions = Some(EndpointConditions {
        ready,
        serving: ready,
        terminating,
    });
    e
}

/// The label of a pod meshed by the control plane in namespace `ns`.
pub fn control_plane_label(ns: &str) -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(
        "linkerd.io/control-plane-ns".to_string(),
        ns.to_string(),
    )]))
}

/// A pod with service account `sa`; meshed by control plane `linkerd` if `meshed`;
/// `ports` are named container ports.
pub fn pod(ns: &str, name: &str, sa: &str, meshed: bool, ports: &[(&str, i32)]) -> Pod {
    let mut m = meta(ns, name);
    if meshed {
        m.labels = control_plane_label("linkerd");
    }
    Pod {
        metadata: m,
        spec: Some(PodSpec {
            service_account_name: Some(sa.into()),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ContainerPort {
                            name: Some(n.to_string()),
                            container_port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

// === the index ===

/// Waits for the next snapshot on a topic.
pub async fn next(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    tokio::time::timeout(TIMEOUT, rx.changed())
        .await
        .expect("no update in time")
        .expect("topic closed");
    rx.borrow_and_update().clone()
}

/// Addresses of a snapshot, sorted.
pub fn addrs(s: &Snapshot) -> Vec<String> {
    s.endpoints.keys().map(|a| a.to_string()).collect()
}

// === a running server ===

/// A running destination service on loopback (its addresses through [`Running`]).
pub struct Server {
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    running: Running<linkerd_destination::Error>,
}

impl std::ops::Deref for Server {
    type Target = Running<linkerd_destination::Error>;

    fn deref(&self) -> &Self::Target {
        &self.running
    }
}

impl Server {
    pub async fn start(source: Source) -> Self {
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            source,
            cluster_domain: "cluster.local".into(),
            ids: IdentityConfig::default(),
            grace: Duration::from_secs(2),
        };
        let bound = server::bind(config).await.unwrap();
        Self {
            index: bound.index.clone(),
            metrics: bound.metrics.clone(),
            running: Running::spawn(bound),
        }
    }

    pub async fn client(&self) -> DestinationClient<Channel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        DestinationClient::new(ch)
    }

    /// Stops the server and waits for it (streams end, so this is prompt).
    pub async fn stop(self) {
        self.running.stop(Duration::from_secs(10)).await.unwrap();
    }

    /// GET on the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        linkerd_control::test_support::admin_get(self.admin, path).await
    }
}

pub async fn get(
    client: &mut DestinationClient<Channel>,
    path: &str,
) -> Result<Streaming<Update>, tonic::Status> {
    client
        .get(GetDestination {
            path: path.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn get_profile(
    client: &mut DestinationClient<Channel>,
    path: &str,
) -> Streaming<DestinationProfile> {
    client
        .get_profile(GetDestination {
            path: path.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next message, within [`TIMEOUT`].
pub async fn recv<T>(s: &mut Streaming<T>) -> T {
    tokio::time::timeout(TIMEOUT, s.message())
        .await
        .expect("no message in time")
        .expect("stream failed")
        .expect("stream ended")
}

/// Whether a message arrives within `d`.
pub async fn quiet<T: std::fmt::Debug>(s: &mut Streaming<T>, d: Duration) {
    if let Ok(m) = tokio::time::timeout(d, s.message()).await {
        panic!("unexpected message: {m:?}");
    }
}

/// An update's kind and addresses, e.g. ("add", ["10.0.0.1:80"]).
pub fn summary(u: &Update) -> (&'static str, Vec<String>) {
    let addr = |a: &linkerd_destination::api::WeightedAddr| {
        proto::net::to_socket_addr(a.addr.as_ref().unwrap())
            .unwrap()
            .to_string()
    };
    match u.update.as_ref().unwrap() {
        update::Update::Add(set) => ("add", set.addrs.iter().map(addr).collect()),
        update::Update::Remove(set) => (
            "remove",
            set.addrs
                .iter()
                .map(|a| proto::net::to_socket_addr(a).unwrap().to_string())
                .collect(),
        ),
        update::Update::NoEndpoints(n) => {
            if n.exists {
                ("no_endpoints_exists", vec![])
            } else {
                ("no_endpoints_gone", vec![])
            }
        }
    }
}
