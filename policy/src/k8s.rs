//! The Kubernetes source: `kube::runtime::watcher` streams for Pods, Services, Namespaces and
//! the policy resources, each object turned into the index's [`State`] by a pure function
//! (tests feed objects built in code through [`apply`]/[`delete`]).
//!
//! An initial list (and every relist after a lost watch) is buffered from `Init` to
//! `InitDone` and replaces that kind's objects in one update. Watch errors are logged,
//! counted and retried with kube's default backoff; the last state stays served meanwhile.

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
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use std::{collections::BTreeMap, fmt::Debug, path::PathBuf, sync::Arc};
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// Where the API server is (kube's inference when `api_url` is `None`).
#[derive(Clone, Debug, Default)]
pub struct KubeApiConfig {
    pub api_url: Option<http::Uri>,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes configuration: {0}")]
    Infer(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

impl KubeApiConfig {
    pub async fn client(&self) -> Result<Client, KubeError> {
        let mut config = match &self.api_url {
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Infer(e.to_string()))?,
            Some(url) => kube::Config::new(url.clone()),
        };
        if let Some(ca) = &self.ca_file {
            config.root_cert_file = Some(ca.clone());
        }
        if let Some(t) = &self.token_file {
            config.auth_info.token_file = Some(t.display().to_string());
        }
        Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
    }
}

/// How one kind's objects land in the state.
pub trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const NAME: &'static str;
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
    ($ty:ty, $name:literal, $field:ident) => {
        impl Kind for $ty {
            const NAME: &'static str = $name;
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

policy_kind!(Server, "servers", servers);
policy_kind!(
    AuthorizationPolicy,
    "authorizationpolicies",
    authorization_policies
);
policy_kind!(
    MeshTLSAuthentication,
    "meshtlsauthentications",
    mesh_tls_authentications
);
policy_kind!(
    NetworkAuthentication,
    "networkauthentications",
    network_authentications
);
policy_kind!(
    HTTPLocalRateLimitPolicy,
    "httplocalratelimitpolicies",
    rate_limits
);
policy_kind!(HTTPRoute, "httproutes", http_routes);
policy_kind!(GRPCRoute, "grpcroutes", grpc_routes);

impl Kind for Pod {
    const NAME: &'static str = "pods";
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
    const NAME: &'static str = "services";
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
    const NAME: &'static str = "namespaces";
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
const KINDS: u8 = 10;

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
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let (listed_tx, mut listed) = watch::channel(0u8);
        let tx = Arc::new(listed_tx);
        let metrics = self.metrics.clone();
        let ready = async move {
            while *listed.borrow_and_update() < KINDS {
                if listed.changed().await.is_err() {
                    return;
                }
            }
            metrics.set_ready();
            tracing::info!("kubernetes state listed; ready");
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = self.watch::<Pod>(tx.clone()) => {}
            _ = self.watch::<KService>(tx.clone()) => {}
            _ = self.watch::<Namespace>(tx.clone()) => {}
            _ = self.watch::<Server>(tx.clone()) => {}
            _ = self.watch::<AuthorizationPolicy>(tx.clone()) => {}
            _ = self.watch::<MeshTLSAuthentication>(tx.clone()) => {}
            _ = self.watch::<NetworkAuthentication>(tx.clone()) => {}
            _ = self.watch::<HTTPLocalRateLimitPolicy>(tx.clone()) => {}
            _ = self.watch::<HTTPRoute>(tx.clone()) => {}
            _ = self.watch::<GRPCRoute>(tx) => {}
            _ = ready => {}
            _ = crate::server::stopped(&mut stop) => {}
        }
    }

    async fn watch<K: Kind>(&self, listed: Arc<watch::Sender<u8>>) {
        let api: Api<K> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut buffer: Option<Vec<K>> = None;
        let mut first = true;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    self.metrics.kube_error();
                    if first && resource_missing(&e) {
                        // The kind's CRD is not installed (the Gateway API ones are optional):
                        // it has no objects, which must not keep the controller unready. The
                        // watch keeps retrying, so installing the CRD later is picked up.
                        first = false;
                        listed.send_modify(|n| *n += 1);
                        tracing::warn!(
                            kind = K::NAME,
                            "the API server does not serve this kind (CRD not installed?); treating it as empty"
                        );
                        continue;
                    }
                    tracing::warn!(kind = K::NAME, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            self.metrics.kube_event();
            match event {
                watcher::Event::Init => buffer = Some(Vec::new()),
                watcher::Event::InitApply(obj) => match &mut buffer {
                    Some(b) => b.push(obj),
                    None => {
                        self.index.update(|s| obj.apply(s));
                    }
                },
                watcher::Event::InitDone => {
                    let objs = buffer.take().unwrap_or_default();
                    tracing::debug!(kind = K::NAME, n = objs.len(), "listed");
                    self.index.update(|s| {
                        K::clear(s);
                        for o in &objs {
                            o.apply(s);
                        }
                    });
                    if first {
                        first = false;
                        listed.send_modify(|n| *n += 1);
                    }
                }
                watcher::Event::Apply(obj) => {
                    self.index.update(|s| obj.apply(s));
                }
                watcher::Event::Delete(obj) => {
                    self.index.update(|s| obj.delete(s));
                }
            }
        }
    }
}

/// Whether a watch failed because the API server does not serve the kind at all (404 on the
/// list: its CustomResourceDefinition is not installed).
fn resource_missing(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "the server could not find the requested resource".into(),
            reason: "NotFound".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_kind_the_api_server_does_not_serve_counts_as_listed_and_empty() {
        assert!(resource_missing(&watcher::Error::InitialListFailed(
            api_error(404)
        )));
        assert!(resource_missing(&watcher::Error::WatchStartFailed(
            api_error(404)
        )));
        // Forbidden (RBAC) or a server error is a real failure: keep retrying, stay unready.
        assert!(!resource_missing(&watcher::Error::InitialListFailed(
            api_error(403)
        )));
        assert!(!resource_missing(&watcher::Error::InitialListFailed(
            api_error(500)
        )));
    }
}
