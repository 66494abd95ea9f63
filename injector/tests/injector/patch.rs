//! The webhook's patch on a table of pod fixtures, checked on the patched pod.

use crate::support::*;
use linkerd_injector::{Outcome, SkipReason};
use serde_json::{Value, json};

const ENABLED: (&str, &str) = ("linkerd.io/inject", "enabled");

#[test]
fn annotated_pod_gets_init_step_and_native_sidecar() {
    let cfg = config();
    let pod = yaml("pod-annotated.yaml");
    let (outcome, out) = inject_pod(&pod, &ns(&[]), &cfg);
    assert!(
        matches!(outcome, Outcome::Inject { ref warnings, .. } if warnings.is_empty()),
        "{outcome:?}"
    );
    // The patched object is still a valid Pod.
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(out.clone()).unwrap();
    let spec = &out["spec"];

    // linkerd-init first, the proxy right after it; the app's containers untouched.
    assert_eq!(
        names(&spec["initContainers"]),
        ["linkerd-init", "linkerd-proxy"]
    );
    assert_eq!(spec["containers"], pod["spec"]["containers"]);

    let proxy = init_container(spec, "linkerd-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        proxy["image"],
        format!("localhost:5001/mesh/proxy:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 4191})
    );
    assert_eq!(
        proxy["livenessProbe"]["httpGet"],
        json!({"path": "/live", "port": 4191})
    );
    assert_eq!(
        proxy["readinessProbe"]["httpGet"],
        json!({"path": "/ready", "port": 4191})
    );
    assert_eq!(
        proxy["ports"],
        json!([
            {"name": "linkerd-proxy", "containerPort": 4143, "protocol": "TCP"},
            {"name": "linkerd-admin", "containerPort": 4191, "protocol": "TCP"},
        ])
    );
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 2102);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        proxy["volumeMounts"],
        json!([
            {"name": "linkerd-identity-end-entity", "mountPath": "/var/run/linkerd/identity/end-entity"},
            {"name": "linkerd-identity-token", "mountPath": "/var/run/secrets/tokens"},
        ])
    );
    assert!(
        proxy.get("resources").is_none(),
        "no resources unless annotated"
    );

    let e = env(proxy);
    assert_eq!(
        e["LINKERD2_PROXY_INBOUND_PORTS"], "8080,8081,9090",
        "container ports and probe ports"
    );
    assert!(!e.contains_key("LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"));
    assert_eq!(
        e["LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"],
        cfg.trust_anchors_pem
    );
    assert_eq!(
        e["LINKERD2_PROXY_IDENTITY_LOCAL_NAME"],
        "$(_pod_sa).$(_pod_ns).serviceaccount.identity.linkerd.cluster.local"
    );
    assert_eq!(e["_pod_sa"], "fieldRef:spec.serviceAccountName");
    assert_eq!(e["LINKERD2_PROXY_INBOUND_IPS"], "fieldRef:status.podIPs");
    assert_eq!(
        e["LINKERD2_PROXY_IDENTITY_SVC_ADDR"],
        "linkerd-identity-headless.linkerd.svc.cluster.local.:8080"
    );
    assert_eq!(
        e["LINKERD2_PROXY_DESTINATION_SVC_ADDR"],
        "linkerd-dst-headless.linkerd.svc.cluster.local.:8086"
    );
    assert_eq!(e["LINKERD2_PROXY_ADMIN_LISTEN_ADDR"], "0.0.0.0:4191");
    assert_eq!(
        e["LINKERD2_PROXY_INBOUND_DEFAULT_POLICY"],
        "all-unauthenticated"
    );
    assert!(!e.contains_key("LINKERD2_PROXY_INGRESS_MODE"));

    // The iptables step: proxy-init's flags, not root, only the two capabilities it needs.
    let init = init_container(spec, "linkerd-init");
    assert_eq!(
        init["command"],
        json!(["/usr/lib/linkerd/linkerd-proxy", "init"])
    );
    let args = init_args(spec);
    assert_eq!(args["--incoming-proxy-port"], "4143");
    assert_eq!(args["--outgoing-proxy-port"], "4140");
    assert_eq!(args["--proxy-uid"], "2102");
    assert_eq!(args["--inbound-ports-to-ignore"], "4190,4191");
    assert_eq!(args["--firewall-bin-path"], "iptables-nft");
    assert_eq!(args["--firewall-save-bin-path"], "iptables-nft-save");
    assert_eq!(args["--ipv6"], "false");
    assert!(!args.contains_key("--outbound-ports-to-ignore"));
    assert!(!args.contains_key("--subnets-to-ignore"));
    let sc = &init["securityContext"];
    assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(sc["runAsUser"], 65534);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(
        init["volumeMounts"],
        json!([{"name": "linkerd-proxy-init-xtables-lock", "mountPath": "/run"}])
    );

    assert_eq!(
        spec["volumes"],
        json!([
            {"name": "linkerd-identity-end-entity", "emptyDir": {"medium": "Memory"}},
            {"name": "linkerd-identity-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "identity.l5d.io", "expirationSeconds": 86400, "path": "linkerd-identity-token"}}]}},
            {"name": "linkerd-proxy-init-xtables-lock", "emptyDir": {}},
        ])
    );

    let meta = &out["metadata"];
    assert_eq!(meta["annotations"]["linkerd.io/inject"], "enabled");
    assert_eq!(
        meta["annotations"]["linkerd.io/created-by"],
        format!("mesh/injector {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        meta["annotations"]["linkerd.io/proxy-version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        meta["annotations"]["linkerd.io/trust-root-sha256"],
        cfg.trust_root_sha256()
    );
    assert_eq!(cfg.trust_root_sha256().len(), 64);
    assert!(
        meta["annotations"]
            .get("config.linkerd.io/opaque-ports")
            .is_none(),
        "exposes no default opaque port"
    );
    assert_eq!(meta["labels"]["app"], "web");
    assert_eq!(meta["labels"]["linkerd.io/control-plane-ns"], "linkerd");
    assert_eq!(meta["labels"]["linkerd.io/workload-ns"], "shop");
}

#[test]
fn injecting_twice_changes_nothing() {
    let cfg = config();
    let (_, once) = inject_pod(&yaml("pod-annotated.yaml"), &ns(&[]), &cfg);
    let (outcome, twice) = inject_pod(&once, &ns(&[ENABLED]), &cfg);
    assert_eq!(outcome, Outcome::Skip(SkipReason::AlreadyInjected));
    assert_eq!(once, twice);

    let injected = yaml("pod-injected.yaml");
    let (outcome, out) = inject_pod(&injected, &ns(&[ENABLED]), &cfg);
    assert_eq!(outcome, Outcome::Skip(SkipReason::AlreadyInjected));
    assert_eq!(out, injected);
}

#[test]
fn namespace_annotation_enables_and_configures() {
    let cfg = config();
    let ns = ns(&[
        ENABLED,
        ("config.linkerd.io/skip-outbound-ports", "25"),
        ("config.linkerd.io/proxy-log-level", "debug"),
        ("unrelated.example.com/owner", "team-a"),
    ]);
    let (outcome, out) = inject_pod(&yaml("pod-plain.yaml"), &ns, &cfg);
    assert!(matches!(outcome, Outcome::Inject { .. }), "{outcome:?}");
    let a = &out["metadata"]["annotations"];
    // The namespace's config annotations are copied onto the pod (it had no annotations).
    assert_eq!(a["config.linkerd.io/skip-outbound-ports"], "25");
    assert_eq!(a["config.linkerd.io/proxy-log-level"], "debug");
    assert!(a.get("unrelated.example.com/owner").is_none());
    assert!(a.get("linkerd.io/inject").is_none());
    // The default opaque ports narrowed to the ones the pod exposes (5432 of 7000, 5432).
    assert_eq!(a["config.linkerd.io/opaque-ports"], "5432");
    let proxy = init_container(&out["spec"], "linkerd-proxy");
    let e = env(proxy);
    assert_eq!(
        e["LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"],
        "5432"
    );
    assert_eq!(e["LINKERD2_PROXY_LOG"], "debug");
    assert_eq!(init_args(&out["spec"])["--outbound-ports-to-ignore"], "25");
}

#[test]
fn pod_annotations_win_over_the_namespace() {
    let cfg = config();
    let mut pod = yaml("pod-annotated.yaml");
    pod["metadata"]["annotations"]["config.linkerd.io/proxy-log-level"] = json!("info");
    let ns = ns(&[("config.linkerd.io/proxy-log-level", "trace")]);
    let (_, out) = inject_pod(&pod, &ns, &cfg);
    assert_eq!(
        out["metadata"]["annotations"]["config.linkerd.io/proxy-log-level"],
        "info"
    );
    assert_eq!(
        env(init_container(&out["spec"], "linkerd-proxy"))["LINKERD2_PROXY_LOG"],
        "info"
    );
}

#[test]
fn the_inject_annotation_table() {
    let cfg = config();
    let with = |value: Option<&str>| {
        let mut pod = yaml("pod-plain.yaml");
        if let Some(v) = value {
            pod["metadata"]["annotations"] = json!({"linkerd.io/inject": v});
        }
        pod
    };
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Result<bool, SkipReason>,
    );
    let cases: &[Case] = &[
        // (pod, namespace, injected (ingress?) or skipped)
        (None, None, Err(SkipReason::NotEnabled)),
        (None, Some("enabled"), Ok(false)),
        (None, Some("ingress"), Ok(true)),
        (Some("enabled"), None, Ok(false)),
        (Some("ingress"), None, Ok(true)),
        (
            Some("disabled"),
            Some("enabled"),
            Err(SkipReason::DisabledOnPod),
        ),
        (Some("enabled"), Some("disabled"), Ok(false)),
        (None, Some("disabled"), Err(SkipReason::DisabledOnNamespace)),
        (
            Some("true"),
            Some("enabled"),
            Err(SkipReason::InvalidAnnotation {
                on: "pod",
                value: "true".into(),
            }),
        ),
        (
            None,
            Some("yes"),
            Err(SkipReason::InvalidAnnotation {
                on: "namespace",
                value: "yes".into(),
            }),
        ),
    ];
    for (pod, namespace, want) in cases {
        let ns = namespace
            .map(|v| ns(&[("linkerd.io/inject", v)]))
            .unwrap_or_default();
        let (outcome, out) = inject_pod(&with(*pod), &ns, &cfg);
        match want {
            Ok(ingress) => {
                assert!(
                    matches!(outcome, Outcome::Inject { .. }),
                    "{pod:?}/{namespace:?}: {outcome:?}"
                );
                let e = env(init_container(&out["spec"], "linkerd-proxy"));
                assert_eq!(
                    e.contains_key("LINKERD2_PROXY_INGRESS_MODE"),
                    *ingress,
                    "{pod:?}/{namespace:?}"
                );
            }
            Err(reason) => assert_eq!(
                &outcome,
                &Outcome::Skip(reason.clone()),
                "{pod:?}/{namespace:?}"
            ),
        }
    }
}

#[test]
fn disabled_pod_in_enabled_namespace_is_left_alone() {
    let pod = yaml("pod-disabled.yaml");
    let (outcome, out) = inject_pod(&pod, &ns(&[ENABLED]), &config());
    assert_eq!(outcome, Outcome::Skip(SkipReason::DisabledOnPod));
    assert_eq!(out, pod);
}

#[test]
fn not_annotated_pod_is_left_alone() {
    let (outcome, _) = inject_pod(&yaml("pod-plain.yaml"), &ns(&[]), &config());
    assert_eq!(outcome, Outcome::Skip(SkipReason::NotEnabled));
}

#[test]
fn host_network_pod_is_left_alone() {
    let (outcome, _) = inject_pod(&yaml("pod-host-network.yaml"), &ns(&[ENABLED]), &config());
    assert_eq!(outcome, Outcome::Skip(SkipReason::HostNetwork));
}

#[test]
fn skip_ports_opaque_ports_resources_and_policy_from_annotations() {
    let (outcome, out) = inject_pod(&yaml("pod-config.yaml"), &ns(&[]), &config());
    let Outcome::Inject { warnings, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    let spec = &out["spec"];
    // linkerd-init and the proxy go before the pod's own init container.
    assert_eq!(
        names(&spec["initContainers"]),
        ["linkerd-init", "linkerd-proxy", "migrate"]
    );
    assert_eq!(
        names(&spec["volumes"]),
        [
            "scratch",
            "linkerd-identity-end-entity",
            "linkerd-identity-token",
            "linkerd-proxy-init-xtables-lock"
        ]
    );
    let args = init_args(spec);
    assert_eq!(args["--inbound-ports-to-ignore"], "4190,4191,9901");
    assert_eq!(args["--outbound-ports-to-ignore"], "3306,11000-11010");
    assert_eq!(args["--subnets-to-ignore"], "10.96.0.0/12,fd00:10::/108");
    let proxy = init_container(spec, "linkerd-proxy");
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "100m", "memory": "20Mi"}, "limits": {"cpu": "1500m", "memory": "250Mi"}})
    );
    let e = env(proxy);
    // `redis` resolved to its container port.
    assert_eq!(
        e["LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"],
        "6379,7000"
    );
    assert_eq!(e["LINKERD2_PROXY_INBOUND_PORTS"], "6379,7000,9901");
    assert_eq!(e["LINKERD2_PROXY_CORES"], "2", "ceil of the 1.5-core limit");
    assert_eq!(e["LINKERD2_PROXY_LOG"], "warn,linkerd_proxy=debug");
    assert_eq!(
        e["LINKERD2_PROXY_INBOUND_DEFAULT_POLICY"],
        "cluster-authenticated"
    );
    // The pod's own opaque-ports stays as written.
    assert_eq!(
        out["metadata"]["annotations"]["config.linkerd.io/opaque-ports"],
        "7000,redis"
    );
}

#[test]
fn invalid_annotation_values_are_ignored_with_a_warning() {
    let mut pod = yaml("pod-annotated.yaml");
    let a = &mut pod["metadata"]["annotations"];
    a["config.linkerd.io/skip-inbound-ports"] = json!("http-ish,70000");
    a["config.linkerd.io/proxy-cpu-limit"] = json!("lots");
    a["config.linkerd.io/skip-subnets"] = json!("10.0.0.0/40");
    a["config.linkerd.io/default-inbound-policy"] = json!("allow-all");
    a["config.linkerd.io/opaque-ports"] = json!("nosuchport");
    let (outcome, out) = inject_pod(&pod, &ns(&[]), &config());
    let Outcome::Inject { warnings, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("proxy-cpu-limit") && w.contains("lots")),
        "{warnings:?}"
    );
    let spec = &out["spec"];
    let args = init_args(spec);
    assert_eq!(args["--inbound-ports-to-ignore"], "4190,4191");
    assert!(!args.contains_key("--subnets-to-ignore"));
    let proxy = init_container(spec, "linkerd-proxy");
    assert!(proxy.get("resources").is_none());
    let e = env(proxy);
    assert!(!e.contains_key("LINKERD2_PROXY_CORES"));
    assert_eq!(
        e["LINKERD2_PROXY_INBOUND_DEFAULT_POLICY"],
        "all-unauthenticated"
    );
}

#[test]
fn proxy_image_and_version_annotations() {
    let mut pod = yaml("pod-annotated.yaml");
    pod["metadata"]["annotations"]["config.linkerd.io/proxy-image"] =
        json!("registry.example.com/mesh/proxy");
    pod["metadata"]["annotations"]["config.linkerd.io/proxy-version"] = json!("0.2.0-rc1");
    let (_, out) = inject_pod(&pod, &ns(&[]), &config());
    for c in ["linkerd-init", "linkerd-proxy"] {
        assert_eq!(
            init_container(&out["spec"], c)["image"],
            "registry.example.com/mesh/proxy:0.2.0-rc1"
        );
    }
    assert_eq!(
        out["metadata"]["annotations"]["linkerd.io/proxy-version"],
        "0.2.0-rc1"
    );
}

#[test]
fn owner_label_from_the_replicaset() {
    let review: Value = serde_json::from_str(&fixture("admission-review.json")).unwrap();
    let pod = review["request"]["object"].clone();
    let (_, out) = inject_pod(&pod, &ns(&[ENABLED]), &config());
    assert_eq!(
        out["metadata"]["labels"]["linkerd.io/proxy-deployment"],
        "web"
    );
    assert_eq!(out["metadata"]["labels"]["pod-template-hash"], "7c9f8b6d5");
}

#[test]
fn keys_with_slashes_and_tildes_are_escaped() {
    assert_eq!(
        linkerd_injector::patch::escape("linkerd.io/inject"),
        "linkerd.io~1inject"
    );
    assert_eq!(linkerd_injector::patch::escape("a~b/c"), "a~0b~1c");
    // And the patch uses them: a pod with annotations gets one op per key.
    let cfg = config();
    let typed: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(yaml("pod-annotated.yaml")).unwrap();
    let Outcome::Inject { patch, .. } =
        linkerd_injector::patch::pod(&typed, None, &ns(&[]), &cfg, Default::default())
    else {
        panic!()
    };
    let paths: Vec<&str> = patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/metadata/annotations/linkerd.io~1created-by"),
        "{paths:?}"
    );
    assert!(paths.contains(&"/spec/initContainers"), "{paths:?}");
}

/// Not a benchmark, a sanity figure: how long the pure patch takes for a typical pod.
#[test]
fn patch_time_per_pod() {
    let cfg = config();
    let review: Value = serde_json::from_str(&fixture("admission-review.json")).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let ns = ns(&[ENABLED]);
    let n = 2000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let o = linkerd_injector::patch::pod(&pod, Some("shop"), &ns, &cfg, Default::default());
        assert!(matches!(o, Outcome::Inject { .. }));
    }
    let per = start.elapsed() / n;
    println!("patch time per pod: {per:?}");
    assert!(per < std::time::Duration::from_millis(5), "{per:?}");
}
