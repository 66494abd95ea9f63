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
use proto::id::{IdentityName, is_dns_label};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::sync::watch;

/// Why a registry file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

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
            PortDef::Number(port) => ServicePort {
                port,
                name: String::new(),
                target: TargetPort::Number(port),
            },
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

/// Reads and parses a registry file (on a blocking thread: a big file takes a while).
pub async fn load(
    path: &Path,
    ids: &IdentityConfig,
) -> Result<HashMap<ServiceKey, Service>, RegistryError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| RegistryError::Read {
            path: path.display().to_string(),
            source,
        })?;
    parse_blocking(path, text, ids).await
}

async fn parse_blocking(
    path: &Path,
    text: String,
    ids: &IdentityConfig,
) -> Result<HashMap<ServiceKey, Service>, RegistryError> {
    let ids = ids.clone();
    let invalid = |message| RegistryError::Invalid {
        path: path.display().to_string(),
        message,
    };
    tokio::task::spawn_blocking(move || parse(&text, &ids))
        .await
        .map_err(|e| invalid(format!("parser failed: {e}")))?
        .map_err(invalid)
}

/// How long a changed file must stay the same before it is parsed.
const SETTLE: Duration = Duration::from_millis(20);

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

// === impl RegistryWatcher ===

/// Polls the registry file and applies changes to the index.
#[derive(Debug)]
pub struct RegistryWatcher {
    path: PathBuf,
    ids: IdentityConfig,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    /// The file's modification time and length at the last read.
    stat: Option<(SystemTime, u64)>,
    /// The hash of the content last parsed, good or bad.
    hash: Option<u64>,
    /// The last read error reported (so a missing file is reported once).
    read_error: Option<String>,
}

/// What one poll did.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    Unchanged,
    /// Applied; this many services changed.
    Applied(usize),
    Rejected,
}

impl RegistryWatcher {
    pub fn new(
        path: PathBuf,
        ids: IdentityConfig,
        index: Arc<Index>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            path,
            ids,
            index,
            metrics,
            stat: None,
            hash: None,
            read_error: None,
        }
    }

    /// Polls every `every` until `stop` turns true.
    pub async fn run(mut self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.poll().await;
                }
                _ = crate::server::stopped(&mut stop) => return,
            }
        }
    }

    /// Checks the file once. It is read when its mtime or size changed, or was modified in
    /// the last two seconds (mtime granularity); it is parsed only if its content changed.
    pub async fn poll(&mut self) -> Polled {
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) => return self.read_failed(e),
        };
        let stat = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let recent = SystemTime::now()
            .duration_since(stat.0)
            .map_or(true, |age| age < Duration::from_secs(2));
        if self.stat == Some(stat) && !recent {
            return Polled::Unchanged;
        }
        let text = match self.read_settled().await {
            Ok(Some(t)) => t,
            // Still being written: look again on the next poll.
            Ok(None) => return Polled::Unchanged,
            Err(e) => return self.read_failed(e),
        };
        self.stat = Some(stat);
        self.read_error = None;
        let hash = hash(&text);
        if self.hash == Some(hash) {
            return Polled::Unchanged;
        }
        self.hash = Some(hash);
        match parse_blocking(&self.path, text, &self.ids).await {
            Ok(services) => {
                let n = services.len();
                let changed = self.index.reset(services);
                self.metrics.reloaded(true);
                self.metrics.set_ready();
                tracing::info!(path = %self.path.display(), services = n, changed, "registry applied");
                Polled::Applied(changed)
            }
            Err(e) => {
                self.metrics.reloaded(false);
                tracing::error!(error = %e, "registry rejected; keeping the last good state");
                Polled::Rejected
            }
        }
    }

    /// Reads the file twice, a moment apart; `None` if it changed in between (a writer
    /// that truncates and then writes is not read half-way).
    async fn read_settled(&self) -> std::io::Result<Option<String>> {
        let first = tokio::fs::read_to_string(&self.path).await?;
        if self.hash == Some(hash(&first)) {
            return Ok(Some(first));
        }
        tokio::time::sleep(SETTLE).await;
        let second = tokio::fs::read_to_string(&self.path).await?;
        Ok((first == second).then_some(second))
    }

    fn read_failed(&mut self, e: std::io::Error) -> Polled {
        let msg = e.to_string();
        if self.read_error.as_ref() == Some(&msg) {
            return Polled::Unchanged;
        }
        self.read_error = Some(msg);
        self.stat = None;
        self.metrics.reloaded(false);
        let e = RegistryError::Read {
            path: self.path.display().to_string(),
            source: e,
        };
        tracing::error!(error = %e, "registry unreadable; keeping the last good state");
        Polled::Rejected
    }
}
