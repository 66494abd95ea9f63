//! The local registry: a YAML file of services and endpoints, for running without
//! Kubernetes. Watched by polling; a change is applied without a restart, and an invalid
//! edit is logged, counted and ignored (the last good state stays).
//!
//! ```yaml
//! services:
//!   - name: web                 # DNS label
//!     namespace: emojivoto      # default "default"
//!     clusterIP: 10.96.0.10     # optional: GetProfile by IP finds the service
//!     ports:                    # a number, or {port, targetPort (number or name), name}
//!       - 8080
//!       - {port: 80, targetPort: http, name: web}
//!     opaquePorts: [3306]
//!     endpoints:
//!       - ip: 10.0.0.1
//!         port: 8080            # optional: this port for every service port
//!         ports: {http: 8080}   # optional: named ports, for named targetPorts
//!         serviceAccount: web   # identity <sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>
//!         # identity: web.emojivoto.serviceaccount.identity.linkerd.cluster.local
//!         meshed: true          # default: true iff an identity is given
//!         weight: 10000         # default 10000
//!         ready: true           # default true; not-ready endpoints are not served
//!         hostname: web-0       # optional: <hostname>.<svc>.<ns>.svc.<domain> finds it
//!         labels: {pod: web-0}  # metric labels
//! ```

use crate::{
    IdentityConfig,
    index::Index,
    metrics::Metrics,
    model::{Backend, DEFAULT_WEIGHT, Identity, Service, ServiceKey, ServicePort, TargetPort},
};
use linkerd_control::watch_file::{self, FileWatcher};
use proto::id::{IdentityName, is_dns_label};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

pub use linkerd_control::watch_file::{Polled, RegistryError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    services: Vec<ServiceDef>,
    /// The policy service's sections of the same file (policy/README.md): skipped here,
    /// so a typo in any other top-level key is still an error.
    #[serde(default, rename = "workloads")]
    _workloads: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "namespaces")]
    _namespaces: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "serviceAnnotations")]
    _service_annotations: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "servers")]
    _servers: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "authorizationPolicies")]
    _authorization_policies: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "meshTLSAuthentications")]
    _mesh_tls_authentications: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "networkAuthentications")]
    _network_authentications: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "httpLocalRateLimitPolicies")]
    _http_local_rate_limit_policies: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "httpRoutes")]
    _http_routes: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "grpcRoutes")]
    _grpc_routes: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDef {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<IpAddr>,
    #[serde(default)]
    ports: Vec<PortDef>,
    #[serde(default)]
    opaque_ports: Vec<u16>,
    #[serde(default)]
    endpoints: Vec<EndpointDef>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortDef {
    Number(u16),
    Full(FullPort),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FullPort {
    port: u16,
    #[serde(default)]
    target_port: Option<TargetDef>,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TargetDef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointDef {
    ip: IpAddr,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    meshed: Option<bool>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default = "default_ready")]
    ready: bool,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn default_ready() -> bool {
    true
}

/// Parses and validates a registry document.
///
/// An empty document is refused: it is far more likely a file caught half-written (or
/// truncated by mistake) than a wish to remove every service (`services: []` says that).
pub fn parse(text: &str, ids: &IdentityConfig) -> Result<HashMap<ServiceKey, Service>, String> {
    if text.trim().is_empty() {
        return Err("the file is empty (write `services: []` for no services)".into());
    }
    let file: File = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (i, def) in file.services.into_iter().enumerate() {
        let what = format!("services[{i}] ({}.{})", def.name, def.namespace);
        let (key, svc) = service(def, ids).map_err(|e| format!("{what}: {e}"))?;
        if out.insert(key, svc).is_some() {
            return Err(format!("{what}: defined twice"));
        }
    }
    Ok(out)
}

fn service(def: ServiceDef, ids: &IdentityConfig) -> Result<(ServiceKey, Service), String> {
    for (what, l) in [("name", &def.name), ("namespace", &def.namespace)] {
        if !is_dns_label(l) {
            return Err(format!("{what} {l:?} is not a DNS label"));
        }
    }
    let mut svc = Service {
        cluster_ips: def.cluster_ip.into_iter().collect(),
        opaque_ports: def.opaque_ports.iter().copied().collect(),
        ..Service::default()
    };
    for p in def.ports {
        let p = match p {
            PortDef::Number(port) => ServicePort::same_target(port, ""),
            PortDef::Full(f) => ServicePort {
                port: f.port,
                name: f.name,
                target: match f.target_port {
                    None => TargetPort::Number(f.port),
                    Some(TargetDef::Number(n)) => TargetPort::Number(n),
                    Some(TargetDef::Name(n)) => TargetPort::Name(n),
                },
            },
        };
        if p.port == 0 || p.target == TargetPort::Number(0) {
            return Err("port 0".into());
        }
        if svc.port(p.port).is_some() {
            return Err(format!("port {} listed twice", p.port));
        }
        svc.ports.push(p);
    }
    if svc.opaque_ports.contains(&0) {
        return Err("opaque port 0".into());
    }
    let mut interned = HashMap::new();
    for (i, ep) in def.endpoints.into_iter().enumerate() {
        let b = backend(ep, &def.namespace, ids, &mut interned)
            .map_err(|e| format!("endpoints[{i}]: {e}"))?;
        if let Some(b) = b {
            svc.backends.push(Arc::new(b));
        }
    }
    Ok((ServiceKey::new(def.namespace, def.name), svc))
}

fn backend(
    def: EndpointDef,
    ns: &str,
    ids: &IdentityConfig,
    interned: &mut HashMap<String, Identity>,
) -> Result<Option<Backend>, String> {
    let mut labels = def.labels;
    let identity = match (def.identity, def.service_account) {
        (Some(_), Some(_)) => return Err("give identity or serviceAccount, not both".into()),
        (Some(id), None) => Some(
            id.parse::<IdentityName>()
                .map_err(|e| format!("identity: {e}"))?,
        ),
        (None, Some(sa)) => {
            let id =
                IdentityName::service_account(&sa, ns, &ids.control_plane_ns, &ids.trust_domain)
                    .map_err(|e| format!("serviceAccount {sa:?}: {e}"))?;
            labels.entry("serviceaccount".into()).or_insert(sa);
            Some(id)
        }
        (None, None) => None,
    };
    // Endpoints of one workload share one identity allocation.
    let identity = identity.map(|id| {
        interned
            .entry(id.as_str().to_string())
            .or_insert_with(|| Arc::new(id))
            .clone()
    });
    if def.port == Some(0) || def.ports.values().any(|p| *p == 0) {
        return Err("port 0".into());
    }
    if let Some(h) = &def.hostname
        && !is_dns_label(h)
    {
        return Err(format!("hostname {h:?} is not a DNS label"));
    }
    if !def.ready {
        return Ok(None);
    }
    let meshed = def.meshed.unwrap_or(identity.is_some());
    Ok(Some(Backend {
        port_override: def.port,
        named_ports: def.ports,
        weight: def.weight,
        meshed,
        identity,
        hostname: def.hostname,
        labels: labels.into(),
        ..Backend::new(def.ip)
    }))
}

/// The destination's side of the registry file: its services, applied to the index.
#[derive(Debug)]
pub struct Services {
    ids: IdentityConfig,
    index: Arc<Index>,
}

impl watch_file::Registry for Services {
    type State = HashMap<ServiceKey, Service>;

    fn parse(&self, text: &str) -> Result<Self::State, String> {
        parse(text, &self.ids)
    }

    /// How many services changed.
    fn apply(&self, services: Self::State) -> usize {
        self.index.reset(services)
    }
}

// === impl RegistryWatcher ===

/// Polls the registry file and applies changes to the index (`linkerd_control::watch_file`).
pub type RegistryWatcher = FileWatcher<Services>;

/// A watcher that has read nothing yet: its first poll applies the file.
pub fn watcher(
    path: PathBuf,
    ids: IdentityConfig,
    index: Arc<Index>,
    metrics: &Metrics,
) -> RegistryWatcher {
    FileWatcher::new(
        path,
        Arc::new(Services { ids, index }),
        metrics.source().clone(),
    )
}

/// Loads and applies the file (an error if it is bad: there is no last good state yet).
pub async fn start_watcher(
    path: PathBuf,
    ids: IdentityConfig,
    index: Arc<Index>,
    metrics: &Metrics,
) -> Result<RegistryWatcher, RegistryError> {
    FileWatcher::start(
        path,
        Arc::new(Services { ids, index }),
        metrics.source().clone(),
    )
    .await
}
