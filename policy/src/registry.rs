//! The local registry: the destination service's YAML file, plus policy sections. Both
//! services read the same file; each ignores the other's sections (`services:` is the
//! destination's; the policy service reads from it only what it needs). Watched by polling;
//! an invalid edit is logged, counted and ignored (the last good state stays).
//!
//! The policy sections hold the Kubernetes resources' own `spec`s, under the resource's
//! `name`, `namespace` (default `default`) and `annotations`; see `policy/README.md`.

use crate::{
    inbound::{PROTOCOLS, parse_port_list},
    index::Index,
    metrics::Metrics,
    model::{
        ClusterConfig, DEFAULT_POLICY_ANNOTATION, DefaultPolicy, Key, Meta,
        OPAQUE_PORTS_ANNOTATION, REQUIRE_ID_ANNOTATION, Res, Service, State, Workload,
        parse_duration, parse_net,
    },
    outbound::failure_accrual,
    resources::{BackendRef, Port},
    routes,
};
use linkerd_control::watch_file::{self, FileWatcher};
use proto::id::{IdentityName, is_dns_label};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

pub use linkerd_control::watch_file::{Polled, RegistryError};

/// Every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct File {
    /// The destination service's section: only what policy needs is read.
    services: Vec<ServiceView>,
    workloads: Vec<WorkloadDef>,
    namespaces: Vec<NamedAnnotations>,
    service_annotations: Vec<NamedAnnotations>,
    servers: Vec<Item>,
    authorization_policies: Vec<Item>,
    #[serde(rename = "meshTLSAuthentications")]
    mesh_tls_authentications: Vec<Item>,
    network_authentications: Vec<Item>,
    http_local_rate_limit_policies: Vec<Item>,
    #[serde(rename = "httpRoutes")]
    http_routes: Vec<Item>,
    #[serde(rename = "grpcRoutes")]
    grpc_routes: Vec<Item>,
}

/// A destination `services[]` entry, leniently (destination validates it).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceView {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<IpAddr>,
    #[serde(default)]
    ports: Vec<PortView>,
    #[serde(default)]
    opaque_ports: Vec<u16>,
    #[serde(default)]
    endpoints: Vec<EndpointView>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortView {
    Number(u16),
    Full { port: u16 },
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct EndpointView {
    ports: BTreeMap<String, u16>,
    service_account: Option<String>,
    identity: Option<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadDef {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    /// Named container ports.
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    /// HTTP probe paths by port.
    #[serde(default)]
    probes: BTreeMap<u16, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedAnnotations {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A policy resource: Kubernetes metadata (the parts used) plus its spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    spec: serde_json::Value,
}

fn default_namespace() -> String {
    "default".into()
}

/// Parses and validates a registry document into the policy [`State`].
pub fn parse(text: &str, cfg: &ClusterConfig) -> Result<State, String> {
    if text.trim().is_empty() {
        return Err("the file is empty (write `services: []` for nothing)".into());
    }
    let file: File = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut state = State::default();
    for (i, s) in file.services.into_iter().enumerate() {
        let what = || format!("services[{i}] ({}.{})", s.name, s.namespace);
        let svc = Service {
            cluster_ips: s.cluster_ip.into_iter().collect(),
            ports: s
                .ports
                .iter()
                .map(|p| match p {
                    PortView::Number(n) | PortView::Full { port: n } => *n,
                })
                .collect(),
            opaque_ports: s.opaque_ports.iter().copied().collect(),
            annotations: BTreeMap::new(),
        };
        // An endpoint labelled with its pod is a workload (what `mesh up` writes).
        for ep in &s.endpoints {
            let Some(pod) = ep.labels.get("pod") else {
                continue;
            };
            let sa = match (&ep.service_account, &ep.identity) {
                (Some(sa), _) => Some(sa.clone()),
                (None, Some(id)) => id.parse::<IdentityName>().ok().and_then(|n| {
                    n.service_account_parts()
                        .ok()
                        .map(|p| p.service_account.to_string())
                }),
                (None, None) => None,
            };
            state
                .workloads
                .entry((s.namespace.clone(), pod.clone()))
                .or_insert_with(|| Workload {
                    namespace: s.namespace.clone(),
                    name: pod.clone(),
                    labels: ep.labels.clone(),
                    service_account: sa,
                    named_ports: ep.ports.clone(),
                    ..Workload::default()
                });
        }
        if state
            .services
            .insert((s.namespace.clone(), s.name.clone()), svc)
            .is_some()
        {
            return Err(format!("{}: defined twice", what()));
        }
    }
    for (i, w) in file.workloads.into_iter().enumerate() {
        let what = format!("workloads[{i}] ({}.{})", w.namespace, w.name);
        check_name(&w.namespace, &w.name).map_err(|e| format!("{what}: {e}"))?;
        if w.ports.values().chain(w.probes.keys()).any(|p| *p == 0) {
            return Err(format!("{what}: port 0"));
        }
        check_annotations(&w.annotations).map_err(|e| format!("{what}: {e}"))?;
        if let Some(sa) = &w.service_account
            && !is_dns_label(sa)
        {
            return Err(format!("{what}: serviceAccount {sa:?} is not a DNS label"));
        }
        for paths in w.probes.values() {
            if let Some(p) = paths.iter().find(|p| !p.starts_with('/')) {
                return Err(format!("{what}: probe path {p:?} does not start with /"));
            }
        }
        // An explicit workload replaces one implied by an endpoint.
        state.workloads.insert(
            (w.namespace.clone(), w.name.clone()),
            Workload {
                namespace: w.namespace,
                name: w.name,
                labels: w.labels,
                annotations: w.annotations,
                service_account: w.service_account,
                named_ports: w.ports,
                probes: w
                    .probes
                    .into_iter()
                    .map(|(p, paths)| (p, paths.into_iter().collect()))
                    .collect(),
            },
        );
    }
    for (i, n) in file.namespaces.into_iter().enumerate() {
        let what = format!("namespaces[{i}] ({})", n.name);
        if !is_dns_label(&n.name) {
            return Err(format!("{what}: not a DNS label"));
        }
        check_annotations(&n.annotations).map_err(|e| format!("{what}: {e}"))?;
        state.namespaces.insert(n.name, n.annotations);
    }
    for (i, a) in file.service_annotations.into_iter().enumerate() {
        let what = format!("serviceAnnotations[{i}] ({}.{})", a.name, a.namespace);
        let svc = state
            .services
            .get_mut(&(a.namespace.clone(), a.name.clone()))
            .ok_or_else(|| format!("{what}: no such service in `services`"))?;
        failure_accrual(&a.annotations).map_err(|e| format!("{what}: {e}"))?;
        routes::retry(&a.annotations).map_err(|e| format!("{what}: {e}"))?;
        routes::timeouts(&a.annotations).map_err(|e| format!("{what}: {e}"))?;
        svc.annotations = a.annotations;
    }
    load(&mut state.servers, file.servers, "servers", |s| {
        if let Port::Number(0) = s.port {
            return Err("port 0".into());
        }
        if let Port::Name(n) = &s.port
            && n.is_empty()
        {
            return Err("empty port name".into());
        }
        match &s.proxy_protocol {
            Some(p) if !PROTOCOLS.contains(&p.as_str()) => Err(format!(
                "proxyProtocol {p:?} is not one of {}",
                PROTOCOLS.join(", ")
            )),
            _ => Ok(()),
        }
    })?;
    load(
        &mut state.authorization_policies,
        file.authorization_policies,
        "authorizationPolicies",
        |a| {
            if a.required_authentication_refs.is_empty() {
                return Err("requiredAuthenticationRefs is empty (it would allow no one)".into());
            }
            Ok(())
        },
    )?;
    load(
        &mut state.mesh_tls_authentications,
        file.mesh_tls_authentications,
        "meshTLSAuthentications",
        |_| Ok(()),
    )?;
    load(
        &mut state.network_authentications,
        file.network_authentications,
        "networkAuthentications",
        |n| {
            for net in &n.networks {
                parse_net(&net.cidr)?;
                for e in net.except.iter().flatten() {
                    parse_net(e)?;
                }
            }
            Ok(())
        },
    )?;
    load(
        &mut state.rate_limits,
        file.http_local_rate_limit_policies,
        "httpLocalRateLimitPolicies",
        |_| Ok(()),
    )?;
    load(
        &mut state.http_routes,
        file.http_routes,
        "httpRoutes",
        |r| {
            routes::hosts(r.hostnames.as_deref())?;
            for rule in &r.rules {
                routes::http_matches(rule.matches.as_deref())?;
                routes::http_filters(rule.filters.as_deref())?;
                check_backends(rule.backend_refs.as_deref())?;
                for b in rule.backend_refs.iter().flatten() {
                    routes::http_filters(b.filters.as_deref())?;
                }
                if let Some(t) = &rule.timeouts {
                    for d in t.request.iter().chain(&t.backend_request) {
                        parse_duration(d)?;
                    }
                }
            }
            Ok(())
        },
    )?;
    load(
        &mut state.grpc_routes,
        file.grpc_routes,
        "grpcRoutes",
        |r| {
            routes::hosts(r.hostnames.as_deref())?;
            for rule in &r.rules {
                routes::grpc_matches(rule.matches.as_deref())?;
                routes::grpc_filters(rule.filters.as_deref())?;
                check_backends(rule.backend_refs.as_deref())?;
                for b in rule.backend_refs.iter().flatten() {
                    routes::grpc_filters(b.filters.as_deref())?;
                }
            }
            Ok(())
        },
    )?;
    for (what, anns) in [
        (
            "httpRoutes",
            state
                .http_routes
                .values()
                .map(|r| &r.meta)
                .collect::<Vec<_>>(),
        ),
        (
            "grpcRoutes",
            state.grpc_routes.values().map(|r| &r.meta).collect(),
        ),
    ] {
        for m in anns {
            let err = |e: String| format!("{what} ({}.{}): {e}", m.namespace, m.name);
            routes::retry(&m.annotations).map_err(err)?;
            routes::timeouts(&m.annotations).map_err(err)?;
        }
    }
    let _ = cfg;
    Ok(state)
}

fn check_name(ns: &str, name: &str) -> Result<(), String> {
    if !is_dns_label(ns) {
        return Err(format!("namespace {ns:?} is not a DNS label"));
    }
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| !is_dns_label(l)) {
        return Err(format!("name {name:?} is not a DNS name"));
    }
    Ok(())
}

fn check_annotations(a: &BTreeMap<String, String>) -> Result<(), String> {
    if let Some(p) = a.get(DEFAULT_POLICY_ANNOTATION) {
        p.parse::<DefaultPolicy>()
            .map_err(|e| format!("{DEFAULT_POLICY_ANNOTATION}: {e}"))?;
    }
    for k in [OPAQUE_PORTS_ANNOTATION, REQUIRE_ID_ANNOTATION] {
        if let Some(p) = a.get(k) {
            parse_port_list(p).map_err(|e| format!("{k}: {e}"))?;
        }
    }
    Ok(())
}

fn check_backends(refs: Option<&[BackendRef]>) -> Result<(), String> {
    for b in refs.unwrap_or_default() {
        if b.kind.as_deref().unwrap_or("Service") != "Service" {
            return Err(format!(
                "backendRef {}: only Service backends are supported",
                b.name
            ));
        }
        if b.port == Some(0) {
            return Err(format!("backendRef {}: port 0", b.name));
        }
    }
    Ok(())
}

/// Deserializes each item's spec, refusing fields the types do not know (a typo must not
/// be silently ignored), runs `check`, and files it under its key; the position in the file
/// orders routes as a creation timestamp would.
fn load<T: DeserializeOwned + Serialize>(
    into: &mut BTreeMap<Key, Res<T>>,
    items: Vec<Item>,
    section: &str,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<(), String> {
    for (i, item) in items.into_iter().enumerate() {
        let what = format!("{section}[{i}] ({}.{})", item.namespace, item.name);
        let err = |e: String| format!("{what}: {e}");
        check_name(&item.namespace, &item.name).map_err(err)?;
        let spec: T = serde_json::from_value(item.spec.clone()).map_err(|e| err(e.to_string()))?;
        // First what the typed spec says is wrong (a filter we do not support names itself
        // here, rather than as the unknown field holding its settings).
        check(&spec).map_err(err)?;
        let kept = serde_json::to_value(&spec).map_err(|e| err(e.to_string()))?;
        let mut unknown = Vec::new();
        unknown_fields(&item.spec, &kept, "spec", &mut unknown);
        if !unknown.is_empty() {
            return Err(err(format!("unknown field(s): {}", unknown.join(", "))));
        }
        let key = (item.namespace.clone(), item.name.clone());
        let res = Res {
            meta: Meta {
                namespace: item.namespace,
                name: item.name,
                created: i64::try_from(i).unwrap_or(i64::MAX),
                annotations: item.annotations,
            },
            spec,
        };
        if into.insert(key, res).is_some() {
            return Err(err("defined twice".into()));
        }
    }
    Ok(())
}

/// Paths of object keys in `input` that `kept` (the typed value written back) lacks.
pub fn unknown_fields(
    input: &serde_json::Value,
    kept: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (input, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => unknown_fields(v, w, &p, out),
                    // An explicit null or empty value the type dropped is not a typo.
                    None if v.is_null() || *v == Value::Array(vec![]) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The policy's side of the registry file: the whole state, applied to the index.
#[derive(Debug)]
pub struct Policies(Arc<Index>);

impl watch_file::Registry for Policies {
    type State = State;

    fn parse(&self, text: &str) -> Result<State, String> {
        parse(text, self.0.config())
    }

    /// How many watched topics changed.
    fn apply(&self, state: State) -> usize {
        self.0.reset(state)
    }
}

/// Polls the registry file and applies changes to the index (`linkerd_control::watch_file`:
/// read twice 20 ms apart, parsed off the runtime when the content changed, a bad edit logged
/// and counted, the last good state kept).
pub type RegistryWatcher = FileWatcher<Policies>;

/// A watcher that has read nothing yet: its first poll applies the file.
pub fn watcher(path: PathBuf, index: Arc<Index>, metrics: &Metrics) -> RegistryWatcher {
    FileWatcher::new(path, Arc::new(Policies(index)), metrics.source().clone())
}

/// Loads and applies the file (an error if it is bad: there is no last good state yet).
pub async fn start_watcher(
    path: PathBuf,
    index: Arc<Index>,
    metrics: &Metrics,
) -> Result<RegistryWatcher, RegistryError> {
    FileWatcher::start(path, Arc::new(Policies(index)), metrics.source().clone()).await
}
