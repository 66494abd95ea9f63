//! The pure part: should this pod be injected, and the JSON Patch that injects it.
//!
//! The same function serves the webhook (a Pod, patch paths from the root) and `mesh inject`
//! (a workload's pod template, paths under e.g. `/spec/template`). Nothing here does I/O.
//!
//! What the patch adds (section 5 of the proxy API reference):
//! * annotations `linkerd.io/created-by`, `linkerd.io/proxy-version`,
//!   `linkerd.io/trust-root-sha256`, the namespace's `config.linkerd.io/*` annotations the pod
//!   lacks, and `config.linkerd.io/opaque-ports` narrowed to the ports the pod exposes;
//! * labels `linkerd.io/control-plane-ns`, `linkerd.io/workload-ns`, and the owner label
//!   (`linkerd.io/proxy-deployment=<name>`, ...);
//! * volumes for the identity end-entity directory, the projected identity token and the
//!   xtables lock;
//! * init containers `linkerd-init` (first) and `linkerd-proxy` right after it, the proxy as a
//!   native sidecar (`restartPolicy: Always` with a startup probe), so the app's containers
//!   start only once the proxy is ready and Jobs complete with it still running.

use crate::{
    annotations::{self as ann, PortRange},
    config::InjectConfig,
};
use k8s_openapi::{
    api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, Probe},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const PROXY_CONTAINER: &str = "linkerd-proxy";
pub const INIT_CONTAINER: &str = "linkerd-init";
pub const VOLUME_END_ENTITY: &str = "linkerd-identity-end-entity";
pub const VOLUME_TOKEN: &str = "linkerd-identity-token";
pub const VOLUME_XTABLES_LOCK: &str = "linkerd-proxy-init-xtables-lock";
pub const END_ENTITY_DIR: &str = "/var/run/linkerd/identity/end-entity";
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "linkerd-identity-token";
pub const TOKEN_AUDIENCE: &str = "identity.l5d.io";
pub const TOKEN_LIFETIME_SECONDS: i64 = 86400;

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Inject: apply `patch` (an RFC 6902 array). `warnings` name annotations that were ignored
    /// because their values were invalid (the webhook returns them to the client).
    Inject { patch: Value, warnings: Vec<String> },
    /// Leave the pod as it is.
    Skip(SkipReason),
}

/// Why a pod is left alone. [`SkipReason::label`] is the metric label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Neither the pod nor its namespace says `linkerd.io/inject: enabled|ingress`.
    NotEnabled,
    /// The pod says `linkerd.io/inject: disabled`.
    DisabledOnPod,
    /// The namespace says `disabled` and the pod does not enable it.
    DisabledOnNamespace,
    /// `linkerd.io/inject` has a value other than enabled, ingress or disabled.
    InvalidAnnotation { on: &'static str, value: String },
    /// `hostNetwork: true`: iptables would rewrite the node's traffic.
    HostNetwork,
    /// A `linkerd-proxy` container is already there (the patch is idempotent).
    AlreadyInjected,
    /// Not a pod (or a pod with no spec).
    Unsupported(String),
}

/// How the proxy runs (`linkerd.io/inject: ingress` sets `LINKERD2_PROXY_INGRESS_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Default,
    Ingress,
}

/// The workload that owns a pod; names the owner label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// Knobs that differ between the webhook and `mesh inject`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// `mesh inject`: the user asked for these workloads, so a missing `linkerd.io/inject`
    /// counts as `enabled` (an explicit `disabled` is still honoured).
    pub explicit: bool,
}

impl SkipReason {
    pub const LABELS: &[&str] = &[
        "not_enabled",
        "disabled_on_pod",
        "disabled_on_namespace",
        "invalid_annotation",
        "host_network",
        "already_injected",
        "unsupported",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Self::NotEnabled => "not_enabled",
            Self::DisabledOnPod => "disabled_on_pod",
            Self::DisabledOnNamespace => "disabled_on_namespace",
            Self::InvalidAnnotation { .. } => "invalid_annotation",
            Self::HostNetwork => "host_network",
            Self::AlreadyInjected => "already_injected",
            Self::Unsupported(_) => "unsupported",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotEnabled => write!(
                f,
                "neither the pod nor its namespace has {}: enabled",
                ann::INJECT
            ),
            Self::DisabledOnPod => write!(f, "the pod has {}: disabled", ann::INJECT),
            Self::DisabledOnNamespace => write!(f, "the namespace has {}: disabled", ann::INJECT),
            Self::InvalidAnnotation { on, value } => write!(
                f,
                "the {on} has {}: {value:?} (expected enabled, ingress or disabled)",
                ann::INJECT
            ),
            Self::HostNetwork => write!(f, "the pod uses hostNetwork"),
            Self::AlreadyInjected => write!(f, "the pod already has a {PROXY_CONTAINER} container"),
            Self::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

impl Owner {
    /// The owner label Linkerd puts on injected pods, e.g. `linkerd.io/proxy-deployment`.
    pub fn label(&self) -> String {
        format!("linkerd.io/proxy-{}", self.kind.to_ascii_lowercase())
    }

    /// The owner of a pod from its `ownerReferences`: a ReplicaSet named `<deployment>-<hash>`
    /// whose hash is the pod's `pod-template-hash` label counts as that Deployment.
    pub fn of_pod(meta: &ObjectMeta) -> Option<Owner> {
        let r = meta
            .owner_references
            .as_ref()?
            .iter()
            .find(|r| r.controller == Some(true))
            .or_else(|| meta.owner_references.as_ref()?.first())?;
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if r.kind == "ReplicaSet"
            && let Some(deployment) = hash.and_then(|h| r.name.strip_suffix(&format!("-{h}")))
        {
            return Some(Owner {
                kind: "Deployment".into(),
                name: deployment.into(),
            });
        }
        Some(Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
    }
}

/// Decides and patches a Pod (the webhook's case): patch paths start at the root.
/// `namespace` is the request's namespace (a new pod's own metadata often lacks it).
pub fn pod(
    pod: &Pod,
    namespace: Option<&str>,
    ns_annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
    opts: Options,
) -> Outcome {
    let Some(spec) = &pod.spec else {
        return Outcome::Skip(SkipReason::Unsupported("a pod without a spec".into()));
    };
    let target = Target {
        prefix: "",
        meta: Some(&pod.metadata),
        spec,
        namespace: namespace.or(pod.metadata.namespace.as_deref()),
        owner: Owner::of_pod(&pod.metadata),
    };
    plan(&target, ns_annotations, cfg, opts)
}

/// Decides and patches a workload's pod template at `prefix` (e.g. `/spec/template`).
pub fn template(
    template: &PodTemplateSpec,
    prefix: &str,
    namespace: Option<&str>,
    owner: Option<Owner>,
    ns_annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
    opts: Options,
) -> Outcome {
    let Some(spec) = &template.spec else {
        return Outcome::Skip(SkipReason::Unsupported(
            "a pod template without a spec".into(),
        ));
    };
    let target = Target {
        prefix,
        meta: template.metadata.as_ref(),
        spec,
        namespace,
        owner,
    };
    plan(&target, ns_annotations, cfg, opts)
}

/// The `linkerd.io/inject` rule: a namespace that says `enabled` or `ingress` injects unless
/// the pod says `disabled`; otherwise only a pod that says `enabled` or `ingress` is injected.
pub fn decide(
    pod: Option<&str>,
    namespace: Option<&str>,
    opts: Options,
) -> Result<Mode, SkipReason> {
    let mode = |v: &str| match v {
        "enabled" => Some(Mode::Default),
        "ingress" => Some(Mode::Ingress),
        _ => None,
    };
    match pod.map(str::trim) {
        Some("disabled") => Err(SkipReason::DisabledOnPod),
        Some(v) => mode(v).ok_or_else(|| SkipReason::InvalidAnnotation {
            on: "pod",
            value: v.into(),
        }),
        None => match namespace.map(str::trim) {
            Some(v @ ("enabled" | "ingress")) => mode(v).ok_or(SkipReason::NotEnabled),
            _ if opts.explicit => Ok(Mode::Default),
            Some("disabled") => Err(SkipReason::DisabledOnNamespace),
            Some(v) => Err(SkipReason::InvalidAnnotation {
                on: "namespace",
                value: v.into(),
            }),
            None => Err(SkipReason::NotEnabled),
        },
    }
}

struct Target<'a> {
    prefix: &'a str,
    meta: Option<&'a ObjectMeta>,
    spec: &'a PodSpec,
    namespace: Option<&'a str>,
    owner: Option<Owner>,
}

/// Annotation values after validation, with a warning for each one ignored.
struct Settings {
    mode: Mode,
    image: String,
    version: String,
    log_level: String,
    inbound_policy: String,
    skip_inbound: Vec<PortRange>,
    skip_outbound: Vec<PortRange>,
    skip_subnets: Vec<String>,
    /// Every port the pod's containers declare or probe.
    inbound_ports: Vec<u16>,
    opaque_ports: Vec<PortRange>,
    /// The narrowed default, when the pod had no `opaque-ports` of its own.
    opaque_annotation: Option<String>,
    resources: Value,
    cores: Option<u64>,
    shutdown_grace_period: Option<String>,
    warnings: Vec<String>,
}

fn plan(
    t: &Target<'_>,
    ns_annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
    opts: Options,
) -> Outcome {
    let empty = BTreeMap::new();
    let pod_annotations = t
        .meta
        .and_then(|m| m.annotations.as_ref())
        .unwrap_or(&empty);
    let mode = match decide(
        pod_annotations.get(ann::INJECT).map(String::as_str),
        ns_annotations.get(ann::INJECT).map(String::as_str),
        opts,
    ) {
        Ok(m) => m,
        Err(reason) => return Outcome::Skip(reason),
    };
    if t.spec.host_network == Some(true) {
        return Outcome::Skip(SkipReason::HostNetwork);
    }
    let all_containers = || {
        t.spec
            .containers
            .iter()
            .chain(t.spec.init_containers.iter().flatten())
    };
    if all_containers().any(|c| c.name == PROXY_CONTAINER) {
        return Outcome::Skip(SkipReason::AlreadyInjected);
    }

    // The namespace's config annotations apply where the pod has none of its own.
    let copied: BTreeMap<&String, &String> = ns_annotations
        .iter()
        .filter(|(k, _)| {
            k.starts_with(ann::CONFIG_PREFIX) || k.starts_with(ann::CONFIG_ALPHA_PREFIX)
        })
        .filter(|(k, _)| !pod_annotations.contains_key(*k))
        .collect();
    let effective: BTreeMap<&str, &str> = pod_annotations
        .iter()
        .chain(copied.iter().map(|(k, v)| (*k, *v)))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let s = settings(mode, &effective, t.spec, cfg);

    let mut p = PatchBuilder {
        prefix: t.prefix,
        ops: Vec::new(),
    };
    // Metadata.
    let mut annotations: BTreeMap<String, String> = copied
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(ann::CREATED_BY.into(), cfg.created_by.clone());
    annotations.insert(ann::PROXY_VERSION.into(), s.version.clone());
    annotations.insert(ann::TRUST_ROOT_SHA256.into(), cfg.trust_root_sha256());
    if let Some(opaque) = &s.opaque_annotation {
        annotations.insert(ann::OPAQUE_PORTS.into(), opaque.clone());
    }
    let mut labels = BTreeMap::new();
    labels.insert(
        ann::CONTROL_PLANE_NS_LABEL.to_string(),
        cfg.control_plane_ns.clone(),
    );
    if let Some(ns) = t.namespace.filter(|n| !n.is_empty()) {
        labels.insert(ann::WORKLOAD_NS_LABEL.to_string(), ns.to_string());
    }
    if let Some(owner) = &t.owner {
        labels.insert(owner.label(), owner.name.clone());
    }
    match t.meta {
        None => p.add(
            "/metadata",
            json!({"annotations": annotations, "labels": labels}),
        ),
        Some(meta) => {
            p.add_entries(
                "/metadata/annotations",
                meta.annotations.is_some(),
                &annotations,
            );
            p.add_entries("/metadata/labels", meta.labels.is_some(), &labels);
        }
    }

    // Volumes.
    let existing: Vec<&str> = t
        .spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let volumes: Vec<Value> = volumes()
        .into_iter()
        .filter(|v| !existing.contains(&v["name"].as_str().unwrap_or_default()))
        .collect();
    if t.spec.volumes.is_none() {
        p.add("/spec/volumes", Value::Array(volumes));
    } else {
        for v in volumes {
            p.add("/spec/volumes/-", v);
        }
    }

    // Init containers: linkerd-init first, then the proxy right after it.
    let init = init_container(&s, cfg);
    let proxy = proxy_container(&s, cfg);
    match &t.spec.init_containers {
        None => p.add("/spec/initContainers", json!([init, proxy])),
        Some(list) => match list.iter().position(|c| c.name == INIT_CONTAINER) {
            Some(i) => p.add(&format!("/spec/initContainers/{}", i + 1), proxy),
            None => {
                p.add("/spec/initContainers/0", init);
                p.add("/spec/initContainers/1", proxy);
            }
        },
    }
    Outcome::Inject {
        patch: Value::Array(p.ops),
        warnings: s.warnings,
    }
}

fn settings(mode: Mode, a: &BTreeMap<&str, &str>, spec: &PodSpec, cfg: &InjectConfig) -> Settings {
    let mut warnings = Vec::new();
    let mut warn = |key: &str, value: &str, why: String| {
        warnings.push(format!("{key}: {value:?} ignored: {why}"));
    };
    let get = |k: &str| a.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

    let mut ports = |key: &str| -> Vec<PortRange> {
        let Some(v) = get(key) else { return Vec::new() };
        match ann::parse_ports(v) {
            Ok((ranges, names)) if names.is_empty() => ranges,
            Ok(_) => {
                warn(key, v, "port names are only allowed in opaque-ports".into());
                Vec::new()
            }
            Err(e) => {
                warn(key, v, e);
                Vec::new()
            }
        }
    };
    let skip_inbound = ports(ann::SKIP_INBOUND_PORTS);
    let skip_outbound = ports(ann::SKIP_OUTBOUND_PORTS);

    let skip_subnets = match get(ann::SKIP_SUBNETS).map(|v| (v, ann::parse_subnets(v))) {
        None => Vec::new(),
        Some((_, Ok(s))) => s,
        Some((v, Err(e))) => {
            warn(ann::SKIP_SUBNETS, v, e);
            Vec::new()
        }
    };

    let named = named_ports(spec);
    let mut inbound_ports: Vec<u16> = named.iter().map(|(_, p)| *p).collect();
    inbound_ports.extend(probe_ports(spec, &named));
    inbound_ports.sort_unstable();
    inbound_ports.dedup();

    // Opaque ports: the pod's own list (names resolved to its container ports), or the
    // default list narrowed to the ports the pod exposes.
    let narrow = |ranges: &[PortRange]| -> Vec<PortRange> {
        let mut out: Vec<PortRange> = named
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| ranges.iter().any(|r| r.contains(*p)))
            .map(|p| PortRange { lo: p, hi: p })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    };
    let default_opaque = ann::parse_ports(&cfg.default_opaque_ports)
        .map(|(r, _)| r)
        .unwrap_or_default();
    let (opaque_ports, opaque_annotation) = match get(ann::OPAQUE_PORTS) {
        Some(v) => match ann::parse_ports(v) {
            Ok((mut ranges, names)) => {
                for n in names {
                    match named.iter().find(|(name, _)| name.as_deref() == Some(&n)) {
                        Some((_, p)) => ranges.push(PortRange { lo: *p, hi: *p }),
                        None => warn(
                            ann::OPAQUE_PORTS,
                            &n,
                            "no container port has this name".into(),
                        ),
                    }
                }
                ranges.sort_unstable();
                ranges.dedup();
                (ranges, None)
            }
            Err(e) => {
                warn(ann::OPAQUE_PORTS, v, e);
                (narrow(&default_opaque), None)
            }
        },
        None => {
            let n = narrow(&default_opaque);
            let annotation = (!n.is_empty()).then(|| ann::join_ports(&n));
            (n, annotation)
        }
    };

    // Resources: each value checked, so a typo cannot make the API server reject the pod.
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    let mut cores = None;
    for (key, limit, name) in [
        (ann::PROXY_CPU_REQUEST, false, "cpu"),
        (ann::PROXY_MEMORY_REQUEST, false, "memory"),
        (ann::PROXY_CPU_LIMIT, true, "cpu"),
        (ann::PROXY_MEMORY_LIMIT, true, "memory"),
    ] {
        let Some(v) = get(key) else { continue };
        match ann::parse_quantity(v) {
            Ok(q) => {
                let map = if limit { &mut limits } else { &mut requests };
                map.insert(name.into(), Value::String(v.into()));
                if key == ann::PROXY_CPU_LIMIT {
                    // Linkerd sizes the proxy's runtime from its CPU limit.
                    cores = Some((q.ceil() as u64).max(1));
                }
            }
            Err(e) => warn(key, v, e),
        }
    }
    let mut resources = serde_json::Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }

    let inbound_policy = match get(ann::DEFAULT_INBOUND_POLICY) {
        Some(v) if ann::INBOUND_POLICIES.contains(&v) => v.to_string(),
        Some(v) => {
            warn(
                ann::DEFAULT_INBOUND_POLICY,
                v,
                format!("expected one of {}", ann::INBOUND_POLICIES.join(", ")),
            );
            cfg.default_inbound_policy.clone()
        }
        None => cfg.default_inbound_policy.clone(),
    };
    let shutdown_grace_period = match get(ann::SHUTDOWN_GRACE_PERIOD) {
        Some(v) => match ann::parse_duration(v) {
            Ok(()) => Some(v.to_string()),
            Err(e) => {
                warn(ann::SHUTDOWN_GRACE_PERIOD, v, e);
                None
            }
        },
        None => None,
    };
    let log_level = match get(ann::PROXY_LOG_LEVEL) {
        Some(v) if v.chars().any(char::is_whitespace) => {
            warn(ann::PROXY_LOG_LEVEL, v, "must not contain spaces".into());
            cfg.default_log_level.clone()
        }
        Some(v) => v.to_string(),
        None => cfg.default_log_level.clone(),
    };
    Settings {
        mode,
        image: get(ann::PROXY_IMAGE)
            .unwrap_or(&cfg.proxy_image)
            .to_string(),
        version: get(ann::PROXY_IMAGE_VERSION)
            .unwrap_or(&cfg.proxy_version)
            .to_string(),
        log_level,
        inbound_policy,
        skip_inbound,
        skip_outbound,
        skip_subnets,
        inbound_ports,
        opaque_ports,
        opaque_annotation,
        resources: Value::Object(resources),
        cores,
        shutdown_grace_period,
        warnings,
    }
}

/// Every container port (app containers and sidecar init containers), with its name.
fn named_ports(spec: &PodSpec) -> Vec<(Option<String>, u16)> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone(), u16::try_from(p.container_port).ok()?)))
        .filter(|(_, p)| *p > 0)
        .collect()
}

/// The ports the kubelet probes (named ports resolved against the container's ports).
fn probe_ports(spec: &PodSpec, named: &[(Option<String>, u16)]) -> Vec<u16> {
    let resolve = |c: &Container, p: &IntOrString| -> Option<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .or_else(|| {
                    named
                        .iter()
                        .find(|(n, _)| n.as_deref() == Some(name))
                        .map(|(_, p)| *p)
                }),
        }
    };
    let probe = |c: &Container, p: &Probe| -> Option<u16> {
        if let Some(h) = &p.http_get {
            return resolve(c, &h.port);
        }
        if let Some(t) = &p.tcp_socket {
            return resolve(c, &t.port);
        }
        p.grpc.as_ref().and_then(|g| u16::try_from(g.port).ok())
    };
    spec.containers
        .iter()
        .flat_map(|c| {
            [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
                .into_iter()
                .flatten()
                .filter_map(move |p| probe(c, p))
        })
        .filter(|p| *p > 0)
        .collect()
}

fn volumes() -> Vec<Value> {
    vec![
        json!({"name": VOLUME_END_ENTITY, "emptyDir": {"medium": "Memory"}}),
        json!({
            "name": VOLUME_TOKEN,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE,
                "expirationSeconds": TOKEN_LIFETIME_SECONDS,
                "path": TOKEN_FILE,
            }}]},
        }),
        json!({"name": VOLUME_XTABLES_LOCK, "emptyDir": {}}),
    ]
}

/// The iptables step: the proxy image's `init` command with proxy-init's flags.
fn init_container(s: &Settings, cfg: &InjectConfig) -> Value {
    let ports = cfg.ports;
    let mut ignore_inbound = format!("{},{}", ports.control, ports.admin);
    for r in &s.skip_inbound {
        ignore_inbound.push_str(&format!(",{r}"));
    }
    let mut args = vec![
        "--incoming-proxy-port".to_string(),
        ports.inbound.to_string(),
        "--outgoing-proxy-port".into(),
        ports.outbound.to_string(),
        "--proxy-uid".into(),
        cfg.proxy_uid.to_string(),
        "--inbound-ports-to-ignore".into(),
        ignore_inbound,
    ];
    if !s.skip_outbound.is_empty() {
        args.push("--outbound-ports-to-ignore".into());
        args.push(ann::join_ports(&s.skip_outbound));
    }
    if !s.skip_subnets.is_empty() {
        args.push("--subnets-to-ignore".into());
        args.push(s.skip_subnets.join(","));
    }
    args.extend([
        "--firewall-bin-path".into(),
        cfg.firewall_bin.clone(),
        "--firewall-save-bin-path".into(),
        cfg.firewall_save_bin.clone(),
        format!("--ipv6={}", cfg.ipv6),
    ]);
    json!({
        "name": INIT_CONTAINER,
        "image": format!("{}:{}", s.image, s.version),
        "imagePullPolicy": "IfNotPresent",
        "command": [cfg.proxy_bin, "init"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "20Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": cfg.init_uid,
            "runAsGroup": cfg.init_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": VOLUME_XTABLES_LOCK, "mountPath": "/run"}],
    })
}

/// The sidecar: a native sidecar (an init container with `restartPolicy: Always`).
fn proxy_container(s: &Settings, cfg: &InjectConfig) -> Value {
    let admin = cfg.ports.admin;
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": admin}});
    let mut startup = probe("/ready");
    startup["periodSeconds"] = json!(1);
    startup["failureThreshold"] = json!(120);
    let mut liveness = probe("/live");
    liveness["initialDelaySeconds"] = json!(10);
    liveness["timeoutSeconds"] = json!(1);
    let mut readiness = probe("/ready");
    readiness["initialDelaySeconds"] = json!(2);
    readiness["timeoutSeconds"] = json!(1);
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": format!("{}:{}", s.image, s.version),
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "env": proxy_env(s, cfg),
        "ports": [
            {"name": "linkerd-proxy", "containerPort": cfg.ports.inbound, "protocol": "TCP"},
            {"name": "linkerd-admin", "containerPort": admin, "protocol": "TCP"},
        ],
        "startupProbe": startup,
        "livenessProbe": liveness,
        "readinessProbe": readiness,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": cfg.proxy_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": VOLUME_END_ENTITY, "mountPath": END_ENTITY_DIR},
            {"name": VOLUME_TOKEN, "mountPath": TOKEN_DIR},
        ],
    });
    if s.resources.as_object().is_some_and(|r| !r.is_empty()) {
        c["resources"] = s.resources.clone();
    }
    c
}

/// The proxy's environment, in Linkerd's names (see `linkerd-proxy/README.md`). Kubernetes
/// expands `$(VAR)` only from variables defined earlier, so the downward-API ones come first.
fn proxy_env(s: &Settings, cfg: &InjectConfig) -> Vec<Value> {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env = vec![
        field("_pod_name", "metadata.name"),
        field("_pod_ns", "metadata.namespace"),
        field("_pod_nodeName", "spec.nodeName"),
        field("_pod_sa", "spec.serviceAccountName"),
        field("LINKERD2_PROXY_INBOUND_IPS", "status.podIPs"),
    ];
    let mut set = |name: &str, value: String| env.push(json!({"name": name, "value": value}));
    let p = cfg.ports;
    set("LINKERD2_PROXY_LOG", s.log_level.clone());
    set("LINKERD2_PROXY_LOG_FORMAT", "plain".into());
    if let Some(cores) = s.cores {
        set("LINKERD2_PROXY_CORES", cores.to_string());
    }
    set("LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "false".into());
    if let Some(g) = &s.shutdown_grace_period {
        set("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", g.clone());
    }
    set(
        "LINKERD2_PROXY_INBOUND_LISTEN_ADDR",
        format!("0.0.0.0:{}", p.inbound),
    );
    set(
        "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR",
        format!("127.0.0.1:{}", p.outbound),
    );
    set(
        "LINKERD2_PROXY_ADMIN_LISTEN_ADDR",
        format!("0.0.0.0:{}", p.admin),
    );
    set(
        "LINKERD2_PROXY_CONTROL_LISTEN_ADDR",
        format!("0.0.0.0:{}", p.control),
    );
    if !s.inbound_ports.is_empty() {
        let ports: Vec<String> = s.inbound_ports.iter().map(u16::to_string).collect();
        set("LINKERD2_PROXY_INBOUND_PORTS", ports.join(","));
    }
    if !s.opaque_ports.is_empty() {
        set(
            "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
            ann::join_ports(&s.opaque_ports),
        );
    }
    set(
        "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
        s.inbound_policy.clone(),
    );
    set("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "100ms".into());
    set("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "1000ms".into());
    set(
        "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT",
        "5s".into(),
    );
    set(
        "LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT",
        "90s".into(),
    );
    set("LINKERD2_PROXY_CONTROL_STREAM_INITIAL_TIMEOUT", "3s".into());
    set("LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT", "5m".into());
    set("LINKERD2_PROXY_CONTROL_STREAM_LIFETIME", "1h".into());
    set(
        "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
        cfg.destination_svc_addr.clone(),
    );
    set(
        "LINKERD2_PROXY_DESTINATION_SVC_NAME",
        cfg.destination_svc_name.clone(),
    );
    set(
        "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES",
        format!("svc.{}.", cfg.cluster_domain),
    );
    set(
        "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS",
        cfg.cluster_networks.clone(),
    );
    set(
        "LINKERD2_PROXY_DESTINATION_CONTEXT",
        r#"{"ns":"$(_pod_ns)","nodeName":"$(_pod_nodeName)","pod":"$(_pod_name)"}"#.into(),
    );
    set(
        "LINKERD2_PROXY_POLICY_SVC_ADDR",
        cfg.policy_svc_addr.clone(),
    );
    set(
        "LINKERD2_PROXY_POLICY_SVC_NAME",
        cfg.policy_svc_name.clone(),
    );
    set(
        "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS",
        cfg.cluster_networks.clone(),
    );
    set(
        "LINKERD2_PROXY_POLICY_WORKLOAD",
        r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#.into(),
    );
    set("LINKERD2_PROXY_IDENTITY_DIR", END_ENTITY_DIR.into());
    set(
        "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
        cfg.trust_anchors_pem.clone(),
    );
    set(
        "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
        format!("{TOKEN_DIR}/{TOKEN_FILE}"),
    );
    set(
        "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
        cfg.identity_svc_addr.clone(),
    );
    set(
        "LINKERD2_PROXY_IDENTITY_SVC_NAME",
        cfg.identity_svc_name.clone(),
    );
    set(
        "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
        format!(
            "$(_pod_sa).$(_pod_ns).serviceaccount.identity.{}.{}",
            cfg.control_plane_ns, cfg.trust_domain
        ),
    );
    if s.mode == Mode::Ingress {
        set("LINKERD2_PROXY_INGRESS_MODE", "true".into());
    }
    env
}

/// Collects patch operations under a path prefix.
struct PatchBuilder<'a> {
    prefix: &'a str,
    ops: Vec<Value>,
}

impl PatchBuilder<'_> {
    fn add(&mut self, path: &str, value: Value) {
        self.ops.push(json!({
            "op": "add",
            "path": format!("{}{path}", self.prefix),
            "value": value,
        }));
    }

    /// Adds map entries under `path`, creating the map when it does not exist.
    fn add_entries(&mut self, path: &str, exists: bool, entries: &BTreeMap<String, String>) {
        if !exists {
            self.add(path, json!(entries));
            return;
        }
        for (k, v) in entries {
            self.add(&format!("{path}/{}", escape(k)), Value::String(v.clone()));
        }
    }
}

/// RFC 6901: `~` becomes `~0` and `/` becomes `~1` in a path segment.
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
