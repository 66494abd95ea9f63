//! Shared helpers: fixtures, a trust anchor made at test time, applying a patch.

use linkerd_injector::{
    InjectConfig, Outcome,
    patch::{self, Options},
};
use serde_json::Value;
use std::{collections::BTreeMap, path::PathBuf};

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A self-signed CA certificate, PEM: stands in for the mesh's trust anchor.
pub fn trust_anchor_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "root.linkerd.cluster.local");
    params.self_signed(&key).unwrap().pem()
}

pub fn config() -> InjectConfig {
    InjectConfig::new(trust_anchor_pem())
}

pub fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses a one-document YAML fixture into JSON.
pub fn yaml(name: &str) -> Value {
    serde_saphyr::from_str(&fixture(name)).unwrap()
}

/// Runs the webhook's decision on a Pod fixture (as JSON) and applies the patch.
pub fn inject_pod(
    pod: &Value,
    ns_annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> (Outcome, Value) {
    let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
    let outcome = patch::pod(&typed, None, ns_annotations, cfg, Options::default());
    let mut out = pod.clone();
    if let Outcome::Inject { patch, .. } = &outcome {
        apply(&mut out, patch);
    }
    (outcome, out)
}

/// Applies an RFC 6902 patch (json-patch, the crate kube's admission types use).
pub fn apply(doc: &mut Value, patch: &Value) {
    let p: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
    json_patch::patch(doc, &p).unwrap_or_else(|e| panic!("{e}: {patch:#}"));
}

/// The env of a container as name → value (valueFrom entries map to their field path).
pub fn env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = match e.get("value") {
                Some(v) => v.as_str().unwrap().to_string(),
                None => format!(
                    "fieldRef:{}",
                    e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()
                ),
            };
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// The named container from `initContainers` (the proxy is a native sidecar).
pub fn init_container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no init container {name}: {spec:#}"))
}

pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The `linkerd-init` arguments as flag → value.
pub fn init_args(spec: &Value) -> BTreeMap<String, String> {
    let args: Vec<String> = init_container(spec, "linkerd-init")["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut out = BTreeMap::new();
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if let Some((k, v)) = a.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        } else {
            let v = it.next().unwrap();
            out.insert(a, v);
        }
    }
    out
}
