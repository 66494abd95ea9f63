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
        registry: linkerd_injector::config::DEFAULT_REGISTRY.into(),
    })
    .unwrap()
}

#[test]
fn every_image_is_qualified_and_the_registry_is_chosen() {
    let mut docs = render(None, false).unwrap();
    let mut images = Vec::new();
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("image", Value::String(s)) => out.push(s.clone()),
                        (_, x) => collect(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            Value::String(s) if s.starts_with("--proxy-image=") => out.push(s.clone()),
            _ => {}
        }
    }
    docs.iter().for_each(|d| collect(d, &mut images));
    assert!(images.len() >= 10, "{images:?}");
    // A registry host (with a port or a dot) before the first slash: never Docker Hub's
    // library or a Docker Hub user's image by accident.
    for i in &images {
        let name = i.trim_start_matches("--proxy-image=");
        let host = name.split('/').next().unwrap();
        assert!(host.contains(':') || host.contains('.'), "{i}");
        assert!(name.starts_with("localhost:5001/mesh/"), "{i}");
    }
    set_registry(&mut docs, "ghcr.io/example/").unwrap();
    let mut moved = Vec::new();
    docs.iter().for_each(|d| collect(d, &mut moved));
    assert_eq!(moved.len(), images.len());
    for i in &moved {
        assert!(
            i.trim_start_matches("--proxy-image=")
                .starts_with("ghcr.io/example/mesh/"),
            "{i}"
        );
    }
    assert!(moved.contains(&"--proxy-image=ghcr.io/example/mesh/proxy".to_string()));
    assert!(set_registry(&mut docs, "https://x").is_err());
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
        "linkerd-policy",
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
        ("linkerd-policy", "policy"),
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
        (
            "linkerd-policy",
            "LINKERD2_PROXY_POLICY_SVC_ADDR",
            "127.0.0.1:8090",
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
            // No policy service: the policy pod's proxy needs this pod's certificate first.
            proxy["env"].as_array_mut().unwrap().retain(|e| {
                ![
                    "LINKERD2_PROXY_POLICY_SVC_ADDR",
                    "LINKERD2_PROXY_POLICY_SVC_NAME",
                    "LINKERD2_PROXY_POLICY_WORKLOAD",
                ]
                .contains(&e["name"].as_str().unwrap())
            });
        }
        if name == "linkerd-identity" || name == "linkerd-policy" {
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
/// configuration; the identity pod's proxy certifies itself over loopback and has no policy
/// service, the policy pod's proxy gets its policy over loopback.
#[test]
fn control_plane_proxy_env_parses() {
    let s = test_secrets();
    let docs = render(Some(&s), false).unwrap();
    for name in ["linkerd-identity", "linkerd-destination", "linkerd-policy"] {
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
        let policy = cfg.policy.service.as_ref();
        match name {
            "linkerd-identity" => {
                assert_eq!(id.svc_addr, "127.0.0.1:8080");
                assert_eq!(policy, None, "{name}: no policy service");
            }
            "linkerd-destination" => {
                assert_eq!(cfg.destination.unwrap().svc_addr, "127.0.0.1:8086");
                let p = policy.unwrap();
                assert_eq!(p.svc_addr, "linkerd-policy.linkerd.svc.cluster.local.:8090");
                assert_eq!(p.ports, [8086, 9996]);
            }
            _ => {
                let p = policy.unwrap();
                assert_eq!(p.svc_addr, "127.0.0.1:8090");
                assert_eq!(
                    p.svc_name.as_deref(),
                    Some("linkerd-policy.linkerd.serviceaccount.identity.linkerd.cluster.local")
                );
                assert_eq!(p.workload, r#"{"ns":"linkerd","pod":"pod-0"}"#);
                assert_eq!(p.ports, [8090, 9997]);
            }
        }
    }
}

/// Every control-plane address the injector writes (`*_SVC_ADDR`) is a Service of deploy/base
/// whose pods run as the ServiceAccount whose identity the proxy expects there
/// (`*_SVC_NAME`), on a port one of their containers declares.
#[test]
fn proxies_expect_the_identities_of_the_pods_behind_the_addresses() {
    let docs = render(None, false).unwrap();
    let cfg = linkerd_injector::InjectConfig::new("-----BEGIN CERTIFICATE-----\n");
    for (addr, name) in [
        (&cfg.identity_svc_addr, &cfg.identity_svc_name),
        (&cfg.destination_svc_addr, &cfg.destination_svc_name),
        (&cfg.policy_svc_addr, &cfg.policy_svc_name),
    ] {
        // `<service>.<ns>.svc.cluster.local.:<port>`
        let (host, port) = addr.rsplit_once(':').unwrap();
        let port: u64 = port.parse().unwrap();
        let mut labels = host.split('.');
        let (svc, ns) = (labels.next().unwrap(), labels.next().unwrap());
        let service = docs
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == svc)
            .unwrap_or_else(|| panic!("{addr}: no Service {svc}"));
        assert_eq!(service["metadata"]["namespace"], ns, "{addr}");
        let target = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("{addr}: {svc} has no port {port}"))["targetPort"]
            .clone();
        let selector = service["spec"]["selector"].as_object().unwrap();
        let backing: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .filter(|d| {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| labels[k] == *v)
            })
            .collect();
        assert_eq!(backing.len(), 1, "{addr}: the Deployments behind {svc}");
        let pod = &backing[0]["spec"]["template"]["spec"];
        let sa = pod["serviceAccountName"].as_str().unwrap();
        assert_eq!(
            *name,
            format!("{sa}.{ns}.serviceaccount.identity.linkerd.cluster.local"),
            "{addr}: the proxies expect {name}, the pods behind it are {sa}"
        );
        let declared = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .any(|p| p["containerPort"] == target);
        assert!(declared, "{addr}: no container declares port {target}");
    }
}

/// The policy controller's cluster default and networks are the injector's, so a proxy's local
/// default (before its first policy) and the controller's agree.
#[test]
fn policy_controller_defaults_are_the_injectors() {
    let docs = render(None, false).unwrap();
    let cfg = linkerd_injector::InjectConfig::new("-----BEGIN CERTIFICATE-----\n");
    let d = deployment(&docs, "linkerd-policy");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "policy");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..3], ["policy", "serve", "--kubernetes"]);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name} is not set"))
    };
    assert_eq!(flag("addr"), "0.0.0.0:8090");
    assert_eq!(flag("admin-addr"), "0.0.0.0:9997");
    assert_eq!(flag("default-policy"), cfg.default_inbound_policy);
    assert_eq!(flag("cluster-networks"), cfg.cluster_networks);
    assert_eq!(flag("cluster-domain"), cfg.cluster_domain);
    assert_eq!(flag("trust-domain"), cfg.trust_domain);
    assert_eq!(flag("control-plane-ns"), cfg.control_plane_ns);
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(c[probe]["httpGet"]["port"], 9997);
    }
    // The kubelet reaches the admin port directly, not through the proxy.
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["config.linkerd.io/skip-inbound-ports"],
        "9997"
    );
}

/// The policy controller may read exactly what it watches: pods, services, namespaces and
/// every kind it generates a CRD for (policy.linkerd.io and the Gateway API routes), with
/// get/list/watch, and nothing else.
#[test]
fn policy_rbac_is_what_it_watches() {
    let docs = render(None, false).unwrap();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "linkerd-linkerd-policy")
        .unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                granted.insert(format!("{}/{}", g.as_str().unwrap(), r.as_str().unwrap()));
            }
        }
    }
    let mut watched: std::collections::BTreeSet<String> = ["/pods", "/services", "/namespaces"]
        .into_iter()
        .map(String::from)
        .collect();
    for (name, yaml) in linkerd_policy::resources::crd_yamls().unwrap() {
        let crd = &linkerd_injector::workload::parse_yaml(&yaml).unwrap()[0];
        let (group, plural) = (&crd["spec"]["group"], &crd["spec"]["names"]["plural"]);
        assert!(group.is_string() && plural.is_string(), "{name}");
        watched.insert(format!(
            "{}/{}",
            group.as_str().unwrap(),
            plural.as_str().unwrap()
        ));
    }
    assert_eq!(granted, watched);
    // Bound to the ServiceAccount the policy pods run as.
    let binding = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRoleBinding" && d["metadata"]["name"] == "linkerd-linkerd-policy"
        })
        .unwrap();
    assert_eq!(binding["roleRef"]["name"], "linkerd-linkerd-policy");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "linkerd-policy", "namespace": "linkerd"}])
    );
    assert_eq!(
        deployment(&docs, "linkerd-policy")["spec"]["template"]["spec"]["serviceAccountName"],
        "linkerd-policy"
    );
}

/// deploy/'s CRDs are what the policy types generate (so, with policy's own drift test, the
/// same as policy/crds/): the policy.linkerd.io ones in deploy/base/crds/ (installed), the
/// Gateway API ones in deploy/gateway-api-subset/ (optional, never installed by `mesh
/// install`), each exactly once. `UPDATE_CRDS=1 cargo test -p mesh install` rewrites the copies.
#[test]
fn deploy_crds_are_the_generated_ones() {
    const SUBSET: &str = "gateway-api-subset";
    let crds = linkerd_policy::resources::crd_yamls().unwrap();
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let mut base_expected = Vec::new();
    let mut subset_expected = Vec::new();
    for (name, yaml) in &crds {
        let crd = &linkerd_injector::workload::parse_yaml(yaml).unwrap()[0];
        let group = crd["spec"]["group"].as_str().unwrap();
        let dir = match group {
            "policy.linkerd.io" => {
                base_expected.push(format!("crds/{name}.yaml"));
                "base/crds"
            }
            "gateway.networking.k8s.io" => {
                subset_expected.push(format!("{name}.yaml"));
                SUBSET
            }
            other => panic!("{name}: where does a CRD of group {other} go?"),
        };
        let path = deploy(&format!("{dir}/{name}.yaml"));
        if update {
            std::fs::write(&path, yaml).unwrap();
        }
        let copy = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            copy == *yaml,
            "{} differs from what the policy types generate: run `UPDATE_CRDS=1 cargo test -p mesh install`",
            path.display()
        );
    }
    // The base installs exactly the policy.linkerd.io CRDs, through its kustomization (and
    // so `mesh install`, whose BASE is checked against it).
    let mut base_listed: Vec<String> = read_yaml("base/kustomization.yaml")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .filter(|r| r.starts_with("crds/"))
        .collect();
    base_listed.sort();
    base_expected.sort();
    assert_eq!(base_listed, base_expected);
    let mut in_dir: Vec<String> = std::fs::read_dir(deploy("base/crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml"))
        .map(|f| format!("crds/{f}"))
        .collect();
    in_dir.sort();
    assert_eq!(in_dir, base_expected, "stray files in deploy/base/crds");
    let rendered = render(None, false).unwrap();
    assert!(
        rendered
            .iter()
            .all(|d| d["kind"] != "CustomResourceDefinition"
                || d["spec"]["group"] == "policy.linkerd.io"),
        "mesh install must not install the Gateway API subset"
    );
    // The optional subset: its kustomization lists exactly the Gateway API CRDs.
    let subset = read_yaml(&format!("{SUBSET}/kustomization.yaml"));
    let mut listed: Vec<String> = subset["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    subset_expected.sort();
    assert_eq!(listed, subset_expected);
    let mut in_dir: Vec<String> = std::fs::read_dir(deploy(SUBSET))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    in_dir.sort();
    assert_eq!(in_dir, subset_expected, "stray files in deploy/{SUBSET}");
}
