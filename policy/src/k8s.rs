//! The Kubernetes source: Pods, Services, Namespaces and the policy resources, each object
//! turned into the index's [`State`] by a pure function (tests feed objects built in code
//! through [`apply`]/[`delete`]).
//!
//! The watch loop is the control plane's (`linkerd_control::kube::watch_kind`): a list (and
//! every relist after a lost watch) replaces that kind's objects in one update; watch errors
//! are logged, counted and retried, the last state served meanwhile; a kind whose CRD is not
//! installed counts as listed and empty.

use crate::{
    inbound::parse_port_list,
    index::Index,
    metrics::Metrics,
    model::{Key, Meta, OPAQUE_PORTS_ANNOTATION, Res, Service, State, Workload},
    resources::{
        AuthorizationPolicy, GRPCRoute, HTTPLocalRateLimitPolicy, HTTPRoute, MeshTLSAuthentication,
        NetworkAuthentication, Server,
    },
};
use k8s_openapi::{
    api::core::v1::{Namespace, Pod, Probe, Service as KService},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::{Client, Resource, ResourceExt};
use linkerd_control::kube::{Change, KubeApiConfig, KubeError, Lists, watch_kind};
use serde::de::DeserializeOwned;
use std::{collections::BTreeMap, fmt::Debug, sync::Arc};
use tokio::sync::watch;

/// How one kind's objects land in the state.
pub trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    fn apply(&self, state: &mut State);
    fn delete(&self, state: &mut State);
    /// Removes every object of this kind (before a relist is applied).
    fn clear(state: &mut State);
}

fn key(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn meta(m: &ObjectMeta) -> Meta {
    let (namespace, name) = key(m);
    Meta {
        namespace,
        name,
        created: m.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
        annotations: m.annotations.clone().unwrap_or_default(),
    }
}

/// Applies one object (tests call this with objects built in code).
pub fn apply<K: Kind>(state: &mut State, obj: &K) {
    obj.apply(state)
}

pub fn delete<K: Kind>(state: &mut State, obj: &K) {
    obj.delete(state)
}

macro_rules! policy_kind {
    ($ty:ty, $field:ident) => {
        impl Kind for $ty {
            fn apply(&self, state: &mut State) {
                state.$field.insert(
                    key(&self.metadata),
                    Res {
                        meta: meta(&self.metadata),
                        spec: self.spec.clone(),
                    },
                );
            }
            fn delete(&self, state: &mut State) {
                state.$field.remove(&key(&self.metadata));
            }
            fn clear(state: &mut State) {
                state.$field.clear();
            }
        }
    };
}

policy_kind!(Server, servers);
policy_kind!(AuthorizationPolicy, authorization_policies);
policy_kind!(MeshTLSAuthentication, mesh_tls_authentications);
policy_kind!(NetworkAuthentication, network_authentications);
policy_kind!(HTTPLocalRateLimitPolicy, rate_limits);
policy_kind!(HTTPRoute, http_routes);
policy_kind!(GRPCRoute, grpc_routes);

impl Kind for Pod {
    fn apply(&self, state: &mut State) {
        let k = key(&self.metadata);
        let spec = self.spec.as_ref();
        let mut named_ports = BTreeMap::new();
        let mut probes: BTreeMap<u16, std::collections::BTreeSet<String>> = BTreeMap::new();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        for c in containers {
            for p in c.ports.iter().flatten() {
                if let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                    named_ports.insert(name.clone(), port);
                }
            }
        }
        for c in containers {
            let all: [Option<&Probe>; 3] = [
                c.liveness_probe.as_ref(),
                c.readiness_probe.as_ref(),
                c.startup_probe.as_ref(),
            ];
            for get in all
                .into_iter()
                .flatten()
                .filter_map(|p| p.http_get.as_ref())
            {
                let port = match &get.port {
                    IntOrString::Int(n) => u16::try_from(*n).ok(),
                    IntOrString::String(name) => named_ports.get(name).copied(),
                };
                if let Some(port) = port {
                    probes
                        .entry(port)
                        .or_default()
                        .insert(get.path.clone().unwrap_or_else(|| "/".into()));
                }
            }
        }
        state.workloads.insert(
            k.clone(),
            Workload {
                namespace: k.0,
                name: k.1,
                labels: self.labels().clone(),
                annotations: self.annotations().clone(),
                service_account: spec.and_then(|s| s.service_account_name.clone()),
                named_ports,
                probes,
            },
        );
    }
    fn delete(&self, state: &mut State) {
        state.workloads.remove(&key(&self.metadata));
    }
    fn clear(state: &mut State) {
        state.workloads.clear();
    }
}

impl Kind for KService {
    fn apply(&self, state: &mut State) {
        let spec = self.spec.as_ref();
        let cluster_ips = spec
            .and_then(|s| {
                s.cluster_ips
                    .clone()
                    .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        let annotations = self.annotations().clone();
        let opaque_ports = annotations
            .get(OPAQUE_PORTS_ANNOTATION)
            .and_then(|v| parse_port_list(v).ok())
            .unwrap_or_default();
        state.services.insert(
            key(&self.metadata),
            Service {
                cluster_ips,
                ports,
                opaque_ports,
                annotations,
            },
        );
    }
    fn delete(&self, state: &mut State) {
        state.services.remove(&key(&self.metadata));
    }
    fn clear(state: &mut State) {
        state.services.clear();
    }
}

impl Kind for Namespace {
    fn apply(&self, state: &mut State) {
        state
            .namespaces
            .insert(self.name_any(), self.annotations().clone());
    }
    fn delete(&self, state: &mut State) {
        state.namespaces.remove(&self.name_any());
    }
    fn clear(state: &mut State) {
        state.namespaces.clear();
    }
}

/// The running watches.
pub struct KubeWatch {
    client: Client,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
}

impl Debug for KubeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWatch").finish_non_exhaustive()
    }
}

/// Kinds watched; ready once each has been listed.
const KINDS: usize = 10;

impl KubeWatch {
    pub async fn new(
        api: &KubeApiConfig,
        index: Arc<Index>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KubeError> {
        Ok(Self {
            client: api.client().await?,
            index,
            metrics,
        })
    }

    /// Watches until `stop` turns true.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let lists = Lists::new(KINDS);
        let watches = async {
            tokio::join!(
                self.watch::<Pod>(&lists),
                self.watch::<KService>(&lists),
                self.watch::<Namespace>(&lists),
                self.watch::<Server>(&lists),
                self.watch::<AuthorizationPolicy>(&lists),
                self.watch::<MeshTLSAuthentication>(&lists),
                self.watch::<NetworkAuthentication>(&lists),
                self.watch::<HTTPLocalRateLimitPolicy>(&lists),
                self.watch::<HTTPRoute>(&lists),
                self.watch::<GRPCRoute>(&lists),
            );
        };
        lists.run(self.metrics.source(), watches, stop).await;
    }

    async fn watch<K: Kind>(&self, lists: &Lists) {
        let on = |change: Change<K>| {
            self.index.update(|s| match change {
                Change::Apply(obj) => obj.apply(s),
                Change::Delete(obj) => obj.delete(s),
                Change::Reset(objs) => {
                    K::clear(s);
                    for o in &objs {
                        o.apply(s);
                    }
                }
            });
        };
        watch_kind::<K, _>(self.client.clone(), lists, self.metrics.source(), on).await
    }
}
