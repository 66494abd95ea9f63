use super::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

fn deploy(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read_yaml(path: &str) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(deploy(path)).unwrap()).unwrap()
}

fn test_secrets() -> Secrets {
    secrets(&Args {
        ha: false,
        identity_trust_anchors_file: None,
        identity_issuer_certificate_file: None,
        identity_issuer_key_file: None,
    })
    .unwrap()
}

fn key(d: &Value) -> String {
    format!(
        "{}/{}/{}",
        d["kind"].as_str().unwrap_or_default(),
        d["metadata"]["namespace"].as_str().unwrap_or_default(),
        d["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter().map(|d| (key(&d), d)).collect()
}

fn deployment<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap()
}

/// `mesh install` embeds exactly the files the kustomizations list, in their order.
#[test]
fn embedded_files_are_the_kustomizations() {
    let base = read_yaml("base/kustomization.yaml");
    let listed: Vec<&str> = base["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let embedded: Vec<&str> = BASE.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        listed, embedded,
        "deploy/base/kustomization.yaml vs install::BASE"
    );
    for (file, text) in BASE {
        assert_eq!(
            std::fs::read_to_string(deploy(&format!("base/{file}"))).unwrap(),
            *text
        );
    }
    let ha = read_yaml("overlays/ha/kustomization.yaml");
    assert_eq!(ha["resources"], json!(["../../base"]));
    let patches: Vec<(String, String)> = ha["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["target"]["kind"], "Deployment");
            (
                p["path"].as_str().unwrap().to_string(),
                p["target"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let embedded: Vec<(String, String)> = HA_PATCHES
        .iter()
        .map(|(f, n, _)| (f.to_string(), n.to_string()))
        .collect();
    assert_eq!(patches, embedded);
}

#[test]
fn install_fills_every_placeholder_and_ha_spreads_replicas() {
    let s = test_secrets();
    let docs = render(Some(&s), false).unwrap();
    let cm = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "linkerd-identity-trust-roots")
        .unwrap();
    assert_eq!(cm["data"]["ca-bundle.crt"], s.anchors_pem);
    let hook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            hook["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(String::from_utf8(ca).unwrap(), s.webhook_ca_pem);
    let w = &hook["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    for name in [
        "linkerd-identity",
        "linkerd-destination",
        "linkerd-proxy-injector",
    ] {
        assert_eq!(deployment(&docs, name)["spec"]["replicas"], 1);
    }
    // The issuer chains to the anchor (what the identity service checks at startup).
    let anchors = linkerd_identity::ca::TrustAnchors::from_pem(s.anchors_pem.as_bytes()).unwrap();
    linkerd_identity::ca::Issuer::load(
        &anchors,
        s.issuer_cert_pem.as_bytes(),
        s.issuer_key_pem.as_bytes(),
        std::time::SystemTime::now(),
    )
    .unwrap();

    let ha = render(Some(&s), true).unwrap();
    for (name, component) in [
        ("linkerd-identity", "identity"),
        ("linkerd-destination", "destination"),
        ("linkerd-proxy-injector", "proxy-injector"),
    ] {
        let d = deployment(&ha, name);
        assert_eq!(d["spec"]["replicas"], 3);
        let term = &d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            [0];
        assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(
            term["labelSelector"]["matchLabels"]["linkerd.io/control-plane-component"],
            component
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"]["linkerd.io/control-plane-component"],
            component,
            "the anti-affinity selects the Deployment's own pods"
        );
    }
}

/// The real kustomize (kubectl's) renders deploy/ to the same documents `mesh install`
/// renders before filling in the secrets. Skipped where kubectl is not installed.
#[test]
fn kubectl_kustomize_renders_what_install_renders() {
    let Ok(v) = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    else {
        println!("SKIP: kubectl is not installed; `kubectl kustomize deploy/...` not checked");
        return;
    };
    assert!(v.status.success());
    for (dir, ha) in [("base", false), ("overlays/ha", true)] {
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy(dir))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize deploy/{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kustomized =
            linkerd_injector::workload::parse_yaml(&String::from_utf8(out.stdout).unwrap())
                .unwrap();
        let ours = render(None, ha).unwrap();
        assert_eq!(kustomized.len(), ours.len(), "deploy/{dir}");
        let (k, o) = (by_key(kustomized), by_key(ours));
        assert_eq!(
            k.keys().collect::<Vec<_>>(),
            o.keys().collect::<Vec<_>>(),
            "deploy/{dir}"
        );
        for (name, doc) in &k {
            assert_eq!(doc, &o[name], "deploy/{dir}: {name}");
        }
    }
}

/// The proxies in the control-plane pods are what the injector writes today, plus the
/// documented changes for a control-plane pod; regenerating them is `mesh inject` (see
/// deploy/README.md).
#[test]
fn control_plane_proxies_are_the_injectors() {
    let docs = render(None, false).unwrap();
    for (name, local_env, local_addr) in [
        (
            "linkerd-identity",
            "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
            "127.0.0.1:8080",
        ),
        (
            "linkerd-destination",
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
            "127.0.0.1:8086",
        ),
    ] {
        let file = deployment(&docs, name).clone();
        // Undo the injection...
        let mut bare = file.clone();
        let t = &mut bare["spec"]["template"];
        let a = t["metadata"]["annotations"].as_object_mut().unwrap();
        a.remove("linkerd.io/created-by");
        a.remove("linkerd.io/proxy-version");
        let l = t["metadata"]["labels"].as_object_mut().unwrap();
        l.remove("linkerd.io/proxy-deployment");
        l.remove("linkerd.io/workload-ns");
        t["spec"].as_object_mut().unwrap().remove("initContainers");
        let vols: Vec<Value> = t["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| !v["name"].as_str().unwrap().starts_with("linkerd-"))
            .cloned()
            .collect();
        if vols.is_empty() {
            t["spec"].as_object_mut().unwrap().remove("volumes");
        } else {
            t["spec"]["volumes"] = Value::Array(vols);
        }
        // ...and redo it with the injector.
        let cfg = linkerd_injector::InjectConfig::new("-----BEGIN CERTIFICATE-----\n");
        let mut reports = Vec::new();
        let mut again = bare.clone();
        again["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"] =
            json!("enabled");
        linkerd_injector::workload::inject_value(&mut again, &BTreeMap::new(), &cfg, &mut reports)
            .unwrap();
        let t = &mut again["spec"]["template"];
        let a = t["metadata"]["annotations"].as_object_mut().unwrap();
        a.remove("linkerd.io/inject");
        a.remove("linkerd.io/trust-root-sha256");
        let proxy = &mut t["spec"]["initContainers"][1];
        assert_eq!(proxy["name"], "linkerd-proxy");
        for e in proxy["env"].as_array_mut().unwrap() {
            if e["name"] == "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS" {
                *e = json!({"name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", "valueFrom": {
                    "configMapKeyRef": {"name": "linkerd-identity-trust-roots", "key": "ca-bundle.crt"}}});
            }
            if e["name"] == local_env {
                e["value"] = json!(local_addr);
            }
        }
        if name == "linkerd-identity" {
            proxy["startupProbe"]["httpGet"]["path"] = json!("/live");
        }
        // YAML writes the skip-port annotations as strings either way; compare as JSON.
        assert_eq!(
            again["spec"]["template"], file["spec"]["template"],
            "{name}: deploy/base differs from what the injector writes; regenerate it"
        );
    }
}

/// The control-plane proxies' env, with the trust roots from the ConfigMap, is a valid proxy
/// configuration, and the identity pod's proxy certifies itself over loopback.
#[test]
fn control_plane_proxy_env_parses() {
    let s = test_secrets();
    let docs = render(Some(&s), false).unwrap();
    for name in ["linkerd-identity", "linkerd-destination"] {
        let d = deployment(&docs, name);
        let proxy = &d["spec"]["template"]["spec"]["initContainers"][1];
        let mut env: Vec<(String, String)> = Vec::new();
        for e in proxy["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                let mut v = v.to_string();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                v
            } else if e["valueFrom"]["configMapKeyRef"]["key"] == "ca-bundle.crt" {
                s.anchors_pem.clone()
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap() {
                    "metadata.name" => "pod-0".into(),
                    "metadata.namespace" => "linkerd".into(),
                    "spec.nodeName" => "node-1".into(),
                    "spec.serviceAccountName" => {
                        d["spec"]["template"]["spec"]["serviceAccountName"]
                            .as_str()
                            .unwrap()
                            .into()
                    }
                    "status.podIPs" => "10.244.0.5".into(),
                    other => panic!("{other}"),
                }
            };
            env.push((name, value));
        }
        let env: HashMap<String, String> = env.into_iter().collect();
        let cfg = linkerd_proxy::config::Config::from_strings(&env).unwrap();
        let id = cfg.identity.unwrap();
        assert_eq!(
            id.local_name,
            format!("{name}.linkerd.serviceaccount.identity.linkerd.cluster.local")
        );
        if name == "linkerd-identity" {
            assert_eq!(id.svc_addr, "127.0.0.1:8080");
        } else {
            assert_eq!(cfg.destination.unwrap().svc_addr, "127.0.0.1:8086");
        }
    }
}
