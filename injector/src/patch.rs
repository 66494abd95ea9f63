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

mod containers;
mod settings;

use containers::{init_container, proxy_container, volumes};
use settings::{Settings, settings};

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
/// The pod's labels for the proxy's trace resource attributes (downward API), as Linkerd mounts them.
pub const VOLUME_PODINFO: &str = "linkerd-podinfo";
pub const PODINFO_DIR: &str = "/var/run/linkerd/podinfo";

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
    let labels = t.meta.and_then(|m| m.labels.as_ref());
    let s = settings(mode, &effective, t.spec, labels, cfg);

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
    let volumes: Vec<Value> = volumes(&s)
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
