//! Kubernetes ingestion: Services, EndpointSlices and Pods (k8s-openapi types) folded into
//! [`model::Service`](crate::model::Service)s for the shared [`Index`].
//!
//! ```text
//! [ Service ] ──ports, clusterIP, opaque-ports──┐
//! [ EndpointSlice ] ─ready addresses, ports─────┼─► model::Service ─► Index
//! [ Pod ] ─sa → identity, meshed, named ports───┘   (per service, rebuilt when dirty)
//! ```
//!
//! `apply_*`/`delete_*`/`reset_*` only record the object and mark the services it touches
//! dirty; [`KubeIndex::flush`] rebuilds those and publishes them. The watch layer
//! ([`watch`](crate::k8s_watch)) flushes after each event, and once after an initial list,
//! so a relist of 10,000 pods rebuilds each service once.

use crate::{
    IdentityConfig,
    index::Index,
    model::{
        self, Backend, Identity, Labels, ServiceKey, ServicePort, TargetPort, parse_port_list,
    },
};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use proto::id::IdentityName;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Set by Linkerd's injector on meshed pods: the control plane's namespace.
pub const CONTROL_PLANE_NS_LABEL: &str = "linkerd.io/control-plane-ns";
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "config.linkerd.io/skip-inbound-ports";
/// Linkerd's default opaque ports, used for a meshed pod with no opaque-ports annotation.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

type PodKey = (String, String);

/// Kubernetes objects as far as discovery needs them.
#[derive(Debug)]
pub struct KubeIndex {
    index: Arc<Index>,
    ids: IdentityConfig,
    services: HashMap<ServiceKey, SvcInfo>,
    /// Per service, its slices by name.
    slices: HashMap<ServiceKey, BTreeMap<String, Arc<SliceInfo>>>,
    /// Which service each slice (namespace, name) was filed under.
    slice_owner: HashMap<PodKey, ServiceKey>,
    pods: HashMap<PodKey, Arc<PodInfo>>,
    /// Which services' slices reference each pod (counted per slice endpoint).
    pod_refs: HashMap<PodKey, HashMap<ServiceKey, usize>>,
    dirty: BTreeSet<ServiceKey>,
}

#[derive(Debug, PartialEq)]
struct SvcInfo {
    cluster_ips: Vec<IpAddr>,
    ports: Vec<ServicePort>,
    opaque_ports: BTreeSet<u16>,
}

#[derive(Debug, PartialEq)]
struct SliceInfo {
    /// Resolved target port by service-port name.
    ports: BTreeMap<String, u16>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, PartialEq)]
struct SliceEndpoint {
    ips: Vec<IpAddr>,
    hostname: Option<String>,
    zone: Option<String>,
    pod: Option<PodKey>,
}

#[derive(Debug, PartialEq)]
struct PodInfo {
    meshed: bool,
    identity: Option<Identity>,
    named_ports: BTreeMap<String, u16>,
    opaque_ports: BTreeSet<u16>,
    skip_inbound_ports: BTreeSet<u16>,
    labels: BTreeMap<String, String>,
}

impl KubeIndex {
    pub fn new(index: Arc<Index>, ids: IdentityConfig) -> Self {
        Self {
            index,
            ids,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            pods: HashMap::new(),
            pod_refs: HashMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    // === Services ===

    pub fn apply_service(&mut self, svc: &Service) {
        let Some(key) = service_key(&svc.metadata) else {
            return;
        };
        let info = svc_info(svc);
        if self.services.get(&key) != Some(&info) {
            self.services.insert(key.clone(), info);
            self.dirty.insert(key);
        }
    }

    pub fn delete_service(&mut self, svc: &Service) {
        if let Some(key) = service_key(&svc.metadata)
            && self.services.remove(&key).is_some()
        {
            self.dirty.insert(key);
        }
    }

    /// Replaces every Service (after a relist).
    pub fn reset_services(&mut self, svcs: &[Service]) {
        let keep: BTreeSet<ServiceKey> = svcs
            .iter()
            .filter_map(|s| service_key(&s.metadata))
            .collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.services.remove(&k);
            self.dirty.insert(k);
        }
        for s in svcs {
            self.apply_service(s);
        }
    }

    // === EndpointSlices ===

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some(id) = object_key(&slice.metadata) else {
            return;
        };
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|svc| ServiceKey::new(id.0.clone(), svc.clone()));
        // A slice that changed (or lost) its service label leaves the old service.
        if let Some(old) = self.slice_owner.get(&id).cloned()
            && Some(&old) != owner.as_ref()
        {
            self.remove_slice(&id);
        }
        let Some(owner) = owner else {
            return;
        };
        let info = Arc::new(slice_info(slice, &id.0));
        let slices = self.slices.entry(owner.clone()).or_default();
        if slices.get(&id.1).map(|s| &**s) == Some(&*info) {
            return;
        }
        let old = slices.insert(id.1.clone(), info.clone());
        self.slice_owner.insert(id, owner.clone());
        if let Some(old) = old {
            self.unref_pods(&owner, &old);
        }
        for pod in info.endpoints.iter().filter_map(|e| e.pod.clone()) {
            *self
                .pod_refs
                .entry(pod)
                .or_default()
                .entry(owner.clone())
                .or_insert(0) += 1;
        }
        self.dirty.insert(owner);
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if let Some(id) = object_key(&slice.metadata) {
            self.remove_slice(&id);
        }
    }

    /// Replaces every EndpointSlice (after a relist).
    pub fn reset_slices(&mut self, slices: &[EndpointSlice]) {
        let keep: BTreeSet<PodKey> = slices
            .iter()
            .filter_map(|s| object_key(&s.metadata))
            .collect();
        let gone: Vec<PodKey> = self
            .slice_owner
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for id in gone {
            self.remove_slice(&id);
        }
        for s in slices {
            self.apply_slice(s);
        }
    }

    fn remove_slice(&mut self, id: &PodKey) {
        let Some(owner) = self.slice_owner.remove(id) else {
            return;
        };
        let old = self.slices.get_mut(&owner).and_then(|s| s.remove(&id.1));
        if self.slices.get(&owner).is_some_and(BTreeMap::is_empty) {
            self.slices.remove(&owner);
        }
        if let Some(old) = old {
            self.unref_pods(&owner, &old);
        }
        self.dirty.insert(owner);
    }

    fn unref_pods(&mut self, owner: &ServiceKey, slice: &SliceInfo) {
        for pod in slice.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            if let Some(refs) = self.pod_refs.get_mut(pod) {
                if let Some(n) = refs.get_mut(owner) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        refs.remove(owner);
                    }
                }
                if refs.is_empty() {
                    self.pod_refs.remove(pod);
                }
            }
        }
    }

    // === Pods ===

    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(key) = object_key(&pod.metadata) else {
            return;
        };
        let info = Arc::new(self.pod_info(pod, &key));
        if self.pods.get(&key).map(|p| &**p) == Some(&*info) {
            return;
        }
        self.pods.insert(key.clone(), info);
        self.pod_changed(&key);
    }

    pub fn delete_pod(&mut self, pod: &Pod) {
        if let Some(key) = object_key(&pod.metadata)
            && self.pods.remove(&key).is_some()
        {
            self.pod_changed(&key);
        }
    }

    /// Replaces every Pod (after a relist).
    pub fn reset_pods(&mut self, pods: &[Pod]) {
        let keep: BTreeSet<PodKey> = pods
            .iter()
            .filter_map(|p| object_key(&p.metadata))
            .collect();
        let gone: Vec<PodKey> = self
            .pods
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.pods.remove(&k);
            self.pod_changed(&k);
        }
        for p in pods {
            self.apply_pod(p);
        }
    }

    fn pod_changed(&mut self, key: &PodKey) {
        if let Some(refs) = self.pod_refs.get(key) {
            self.dirty.extend(refs.keys().cloned());
        }
    }

    fn pod_info(&self, pod: &Pod, key: &PodKey) -> PodInfo {
        let meta = &pod.metadata;
        let empty = BTreeMap::new();
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let annotations = meta.annotations.as_ref().unwrap_or(&empty);
        let meshed = labels.get(CONTROL_PLANE_NS_LABEL) == Some(&self.ids.control_plane_ns);
        let spec = pod.spec.as_ref();
        let sa = spec
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let identity = meshed
            .then(|| {
                IdentityName::service_account(
                    sa,
                    &key.0,
                    &self.ids.control_plane_ns,
                    &self.ids.trust_domain,
                )
                .ok()
            })
            .flatten()
            .map(Arc::new);
        let ports = |a: Option<&String>| {
            a.and_then(|s| match parse_port_list(s) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "bad port annotation");
                    None
                }
            })
        };
        let opaque_ports = match ports(annotations.get(OPAQUE_PORTS_ANNOTATION)) {
            Some(p) => p,
            None if meshed => parse_port_list(DEFAULT_OPAQUE_PORTS).unwrap_or_default(),
            None => BTreeSet::new(),
        };
        let skip_inbound_ports =
            ports(annotations.get(SKIP_INBOUND_PORTS_ANNOTATION)).unwrap_or_default();
        let mut named_ports = BTreeMap::new();
        for c in spec.iter().flat_map(|s| &s.containers) {
            for p in c.ports.iter().flatten() {
                if let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                    named_ports.entry(name.clone()).or_insert(port);
                }
            }
        }
        let mut metric_labels = BTreeMap::from([
            ("pod".to_string(), key.1.clone()),
            ("serviceaccount".to_string(), sa.to_string()),
        ]);
        if meshed {
            metric_labels.insert("control_plane_ns".into(), self.ids.control_plane_ns.clone());
        }
        if let Some(h) = labels.get("pod-template-hash") {
            metric_labels.insert("pod_template_hash".into(), h.clone());
        }
        if let Some((k, v)) = owner_label(pod, labels) {
            metric_labels.insert(k, v);
        }
        PodInfo {
            meshed,
            identity,
            named_ports,
            opaque_ports,
            skip_inbound_ports,
            labels: metric_labels,
        }
    }

    // === publishing ===

    /// Rebuilds every dirty service and publishes it. Returns how many changed.
    pub fn flush(&mut self) -> usize {
        let dirty = std::mem::take(&mut self.dirty);
        let mut changed = 0;
        for key in dirty {
            let c = match self.build(&key) {
                Some(svc) => self.index.set_service(key, svc),
                None => self.index.remove_service(&key),
            };
            changed += usize::from(c);
        }
        changed
    }

    fn build(&self, key: &ServiceKey) -> Option<model::Service> {
        let info = self.services.get(key)?;
        let mut svc = model::Service {
            cluster_ips: info.cluster_ips.clone(),
            ports: info.ports.clone(),
            opaque_ports: info.opaque_ports.clone(),
            backends: Vec::new(),
        };
        let slices = self.slices.get(key).into_iter().flat_map(BTreeMap::values);
        for slice in slices {
            for ep in &slice.endpoints {
                let pod = ep.pod.as_ref().and_then(|p| self.pods.get(p));
                let mut labels = pod.map(|p| p.labels.clone()).unwrap_or_default();
                if let Some(z) = &ep.zone {
                    labels.insert("zone".into(), z.clone());
                }
                let labels = Labels::from(labels);
                for ip in &ep.ips {
                    let mut b = Backend::new(*ip);
                    b.resolved_ports = slice.ports.clone();
                    b.hostname = ep.hostname.clone();
                    b.labels = labels.clone();
                    if let Some(p) = pod {
                        b.named_ports = p.named_ports.clone();
                        b.meshed = p.meshed;
                        b.identity = p.identity.clone();
                        b.opaque_ports = p.opaque_ports.clone();
                        b.skip_inbound_ports = p.skip_inbound_ports.clone();
                    }
                    svc.backends.push(Arc::new(b));
                }
            }
        }
        Some(svc)
    }
}

fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<PodKey> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn service_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ServiceKey> {
    object_key(meta).map(|(ns, name)| ServiceKey::new(ns, name))
}

fn svc_info(svc: &Service) -> SvcInfo {
    let spec = svc.spec.as_ref();
    let mut cluster_ips: Vec<IpAddr> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.and_then(|s| s.cluster_ip.as_ref()))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                    Ok(0) | Err(_) => TargetPort::Number(port),
                    Ok(n) => TargetPort::Number(n),
                },
                Some(IntOrString::String(name)) => match name.parse::<u16>() {
                    Ok(n) if n != 0 => TargetPort::Number(n),
                    _ => TargetPort::Name(name.clone()),
                },
            };
            Some(ServicePort {
                port,
                name: p.name.clone().unwrap_or_default(),
                target,
            })
        })
        .collect();
    let opaque_ports = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION))
        .and_then(|s| parse_port_list(s).ok())
        .unwrap_or_default();
    SvcInfo {
        cluster_ips,
        ports,
        opaque_ports,
    }
}

fn slice_info(slice: &EndpointSlice, ns: &str) -> SliceInfo {
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
            Some((p.name.clone().unwrap_or_default(), port))
        })
        .collect();
    let ip_family = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
    let endpoints = slice
        .endpoints
        .iter()
        .filter(|_| ip_family)
        .filter(|e| {
            // A missing Ready condition counts as ready; terminating endpoints never serve.
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .map(|e| SliceEndpoint {
            ips: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: e.hostname.clone(),
            zone: e.zone.clone(),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let ns = r.namespace.clone().unwrap_or_else(|| ns.to_string());
                    Some((ns, r.name.clone()?))
                }),
        })
        .collect();
    SliceInfo { ports, endpoints }
}

/// Linkerd's owner label: `deployment` for a ReplicaSet made by a Deployment (the name less
/// its pod-template-hash), else the owner's kind in lowercase.
fn owner_label(pod: &Pod, labels: &BTreeMap<String, String>) -> Option<(String, String)> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = labels.get("pod-template-hash")
        && let Some(deploy) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return Some(("deployment".into(), deploy.into()));
    }
    Some((owner.kind.to_ascii_lowercase(), owner.name.clone()))
}
