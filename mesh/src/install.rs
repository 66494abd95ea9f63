//! `mesh install`: the manifests in `deploy/` (embedded, so the two cannot drift), with the
//! trust anchor, the identity issuer and the injector's webhook certificate filled in.
//! `--ha` applies `deploy/overlays/ha`'s patches, as `kubectl kustomize` would.

use crate::out;
use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::Value;
use std::{path::PathBuf, process::ExitCode};

/// `deploy/base/kustomization.yaml`'s resources, in its order.
pub const BASE: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../deploy/base/namespace.yaml"),
    ),
    (
        "crds/authorizationpolicy.yaml",
        include_str!("../../deploy/base/crds/authorizationpolicy.yaml"),
    ),
    (
        "crds/httplocalratelimitpolicy.yaml",
        include_str!("../../deploy/base/crds/httplocalratelimitpolicy.yaml"),
    ),
    (
        "crds/meshtlsauthentication.yaml",
        include_str!("../../deploy/base/crds/meshtlsauthentication.yaml"),
    ),
    (
        "crds/networkauthentication.yaml",
        include_str!("../../deploy/base/crds/networkauthentication.yaml"),
    ),
    (
        "crds/server.yaml",
        include_str!("../../deploy/base/crds/server.yaml"),
    ),
    (
        "identity-trust.yaml",
        include_str!("../../deploy/base/identity-trust.yaml"),
    ),
    (
        "identity.yaml",
        include_str!("../../deploy/base/identity.yaml"),
    ),
    (
        "destination.yaml",
        include_str!("../../deploy/base/destination.yaml"),
    ),
    ("policy.yaml", include_str!("../../deploy/base/policy.yaml")),
    (
        "injector.yaml",
        include_str!("../../deploy/base/injector.yaml"),
    ),
];

/// `deploy/overlays/ha/kustomization.yaml`'s patches: (file, target Deployment, JSON patch).
pub const HA_PATCHES: &[(&str, &str, &str)] = &[
    (
        "identity.yaml",
        "linkerd-identity",
        include_str!("../../deploy/overlays/ha/identity.yaml"),
    ),
    (
        "destination.yaml",
        "linkerd-destination",
        include_str!("../../deploy/overlays/ha/destination.yaml"),
    ),
    (
        "policy.yaml",
        "linkerd-policy",
        include_str!("../../deploy/overlays/ha/policy.yaml"),
    ),
    (
        "injector.yaml",
        "linkerd-proxy-injector",
        include_str!("../../deploy/overlays/ha/injector.yaml"),
    ),
];

/// Values in `deploy/` that `mesh install` replaces start with this.
const PLACEHOLDER: &str = "REPLACE";
const NAMESPACE: &str = "linkerd";
const INJECTOR_SERVICE: &str = "linkerd-proxy-injector";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Three replicas of each control-plane component, spread over nodes (needs 3 nodes).
    #[arg(long)]
    pub ha: bool,
    /// PEM trust anchor(s); with the two issuer files. Default: a fresh anchor and issuer
    /// (`mesh identity init` writes the same files, if you want to keep them).
    #[arg(long, requires_all = ["identity_issuer_certificate_file", "identity_issuer_key_file"])]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// PEM issuer certificate, signed by the trust anchor.
    #[arg(long, requires = "identity_trust_anchors_file")]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// PEM issuer key (P-256).
    #[arg(long, requires = "identity_trust_anchors_file")]
    pub identity_issuer_key_file: Option<PathBuf>,
    /// The registry the proxy and controller images are pulled from
    /// (`<registry>/mesh/proxy:<version>`, `<registry>/mesh/controller:<version>`), e.g.
    /// `ghcr.io/you`. The default is the local registry of kind's setup (deploy/README.md).
    #[arg(long, default_value = linkerd_injector::config::DEFAULT_REGISTRY)]
    pub registry: String,
}

/// What `mesh install` fills in.
#[derive(Clone)]
pub struct Secrets {
    pub anchors_pem: String,
    pub issuer_cert_pem: String,
    pub issuer_key_pem: String,
    /// The CA the API server trusts for the webhook (`caBundle`), and the serving pair.
    pub webhook_ca_pem: String,
    pub webhook_cert_pem: String,
    pub webhook_key_pem: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("anchors_pem", &self.anchors_pem)
            .finish_non_exhaustive()
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let secrets = secrets(&args)?;
    let mut docs = render(Some(&secrets), args.ha)?;
    set_registry(&mut docs, &args.registry)?;
    out::print(&linkerd_injector::workload::to_yaml(&docs)?)?;
    Ok(ExitCode::SUCCESS)
}

fn secrets(args: &Args) -> anyhow::Result<Secrets> {
    let (anchors_pem, issuer_cert_pem, issuer_key_pem) = match (
        &args.identity_trust_anchors_file,
        &args.identity_issuer_certificate_file,
        &args.identity_issuer_key_file,
    ) {
        (Some(a), Some(c), Some(k)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let (a_pem, c_pem, k_pem) = (read(a)?, read(c)?, read(k)?);
            // The identity service would refuse an issuer that does not chain to the anchor.
            let anchors = linkerd_identity::ca::TrustAnchors::from_pem(a_pem.as_bytes())
                .with_context(|| format!("{}", a.display()))?;
            linkerd_identity::ca::Issuer::load(
                &anchors,
                c_pem.as_bytes(),
                k_pem.as_bytes(),
                std::time::SystemTime::now(),
            )
            .with_context(|| format!("{} and {}", c.display(), k.display()))?;
            (a_pem, c_pem, k_pem)
        }
        (None, None, None) => {
            let t = linkerd_identity::generate_trust(&linkerd_identity::TrustOptions::default())?;
            (t.anchor_pem, t.issuer_cert_pem, t.issuer_key_pem)
        }
        _ => bail!("give all three --identity-* files, or none"),
    };
    let (webhook_ca_pem, webhook_cert_pem, webhook_key_pem) = webhook_certs()?;
    Ok(Secrets {
        anchors_pem,
        issuer_cert_pem,
        issuer_key_pem,
        webhook_ca_pem,
        webhook_cert_pem,
        webhook_key_pem,
    })
}

/// A CA for the webhook (the API server trusts it through `caBundle`) and a serving
/// certificate for the injector's Service names, valid for a year (as Linkerd's).
fn webhook_certs() -> anyhow::Result<(String, String, String)> {
    let now = time::OffsetDateTime::now_utc();
    let year = time::Duration::days(365);
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        "linkerd-proxy-injector webhook CA",
    );
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::minutes(1);
    ca.not_after = now + year;
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let svc = format!("{INJECTOR_SERVICE}.{NAMESPACE}.svc");
    let mut leaf = rcgen::CertificateParams::new(vec![
        svc.clone(),
        format!("{svc}.cluster.local"),
        format!("{INJECTOR_SERVICE}.{NAMESPACE}"),
    ])?;
    leaf.distinguished_name.push(rcgen::DnType::CommonName, svc);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::minutes(1);
    leaf.not_after = now + year;
    let leaf = leaf.signed_by(&key, &ca)?;
    Ok((ca.pem(), leaf.pem(), key.serialize_pem()))
}

/// The documents of `deploy/base` (and the HA patches), with `secrets` filled in; without
/// secrets, the placeholders stay (what `kubectl kustomize deploy/...` prints).
pub fn render(secrets: Option<&Secrets>, ha: bool) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (file, text) in BASE {
        docs.extend(
            linkerd_injector::workload::parse_yaml(text)
                .with_context(|| format!("deploy/base/{file}"))?,
        );
    }
    if let Some(s) = secrets {
        for doc in &mut docs {
            fill(doc, s);
        }
        let mut left = Vec::new();
        for doc in &docs {
            placeholders(doc, "", &mut left);
        }
        if !left.is_empty() {
            bail!("deploy/ has placeholders mesh install does not fill: {left:?}");
        }
    }
    if ha {
        for (file, name, patch) in HA_PATCHES {
            let ops: Value = serde_saphyr::from_str(patch)
                .with_context(|| format!("deploy/overlays/ha/{file}"))?;
            let ops: json_patch::Patch = serde_json::from_value(ops)
                .with_context(|| format!("deploy/overlays/ha/{file}: not a JSON patch"))?;
            let target = docs
                .iter_mut()
                .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == *name)
                .with_context(|| format!("deploy/overlays/ha/{file}: no Deployment {name}"))?;
            json_patch::patch(target, &ops)
                .with_context(|| format!("deploy/overlays/ha/{file}"))?;
        }
    }
    Ok(docs)
}

/// Names every image (and the injector's `--proxy-image`) under `registry` instead of the
/// default one.
pub fn set_registry(docs: &mut [Value], registry: &str) -> anyhow::Result<()> {
    let registry = registry.trim_end_matches('/');
    if registry.is_empty() || registry.contains("://") || registry.contains(char::is_whitespace) {
        bail!("--registry {registry:?}: a registry host (and path), such as ghcr.io/you");
    }
    let from = format!("{}/", linkerd_injector::config::DEFAULT_REGISTRY);
    let to = format!("{registry}/");
    fn walk(v: &mut Value, from: &str, to: &str) {
        match v {
            Value::String(s) => {
                let flag = "--proxy-image=";
                if let Some(rest) = s.strip_prefix(from) {
                    *s = format!("{to}{rest}");
                } else if let Some(rest) = s.strip_prefix(flag).and_then(|r| r.strip_prefix(from)) {
                    *s = format!("{flag}{to}{rest}");
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, from, to)),
            Value::Object(m) => m.values_mut().for_each(|x| walk(x, from, to)),
            _ => {}
        }
    }
    for doc in docs {
        walk(doc, &from, &to);
    }
    Ok(())
}

fn fill(doc: &mut Value, s: &Secrets) {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match (kind.as_str(), name.as_str()) {
        ("ConfigMap", "linkerd-identity-trust-roots") => {
            doc["data"]["ca-bundle.crt"] = Value::String(s.anchors_pem.clone());
        }
        ("Secret", "linkerd-identity-issuer") => {
            doc["stringData"]["tls.crt"] = Value::String(s.issuer_cert_pem.clone());
            doc["stringData"]["tls.key"] = Value::String(s.issuer_key_pem.clone());
        }
        ("Secret", "linkerd-proxy-injector-k8s-tls") => {
            doc["stringData"]["tls.crt"] = Value::String(s.webhook_cert_pem.clone());
            doc["stringData"]["tls.key"] = Value::String(s.webhook_key_pem.clone());
        }
        ("MutatingWebhookConfiguration", _) => {
            let ca = base64::engine::general_purpose::STANDARD.encode(&s.webhook_ca_pem);
            for w in doc["webhooks"].as_array_mut().into_iter().flatten() {
                w["clientConfig"]["caBundle"] = Value::String(ca.clone());
            }
        }
        _ => {}
    }
}

/// Paths of string values that are still placeholders.
fn placeholders(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with(PLACEHOLDER) => out.push(path.to_string()),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                placeholders(x, &format!("{path}/{i}"), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                placeholders(x, &format!("{path}/{k}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
