//! The contract with the proxy: the environment the injector writes, with the downward-API
//! values the kubelet would substitute, is a valid `linkerd_proxy` configuration.

use crate::support::*;
use linkerd_injector::Outcome;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// Linkerd variables the injector writes (so that Linkerd's own proxy works with our
/// injector) which our proxy does not implement yet and ignores.
const IGNORED_BY_OUR_PROXY: &[&str] = &[
    "LINKERD2_PROXY_CONTROL_LISTEN_ADDR",
    "LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT",
    "LINKERD2_PROXY_CONTROL_STREAM_INITIAL_TIMEOUT",
    "LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT",
    "LINKERD2_PROXY_CONTROL_STREAM_LIFETIME",
    "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS",
    "LINKERD2_PROXY_INGRESS_MODE",
];

/// The inbound-policy variables our proxy reads (`linkerd_proxy::config`'s `parse_policy`): they
/// must not be listed as ignored, and each must be documented.
const POLICY_VARIABLES: &[&str] = &[
    "LINKERD2_PROXY_POLICY_SVC_ADDR",
    "LINKERD2_PROXY_POLICY_SVC_NAME",
    "LINKERD2_PROXY_POLICY_WORKLOAD",
    "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS",
    "LINKERD2_PROXY_INBOUND_PORTS",
    "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
];

/// What the kubelet does: each `$(VAR)` is replaced by an earlier variable's value.
fn kubelet_env(proxy: &Value) -> HashMap<String, String> {
    let downward: HashMap<&str, &str> = HashMap::from([
        ("metadata.name", "web-7c9f8b6d5-x2x4z"),
        ("metadata.namespace", "shop"),
        ("spec.nodeName", "kind-worker"),
        ("spec.serviceAccountName", "web"),
        ("status.podIPs", "10.244.1.7,fd00:10:244:1::7"),
    ]);
    let mut env: Vec<(String, String)> = Vec::new();
    for e in proxy["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match e.get("value") {
            Some(v) => {
                let mut v = v.as_str().unwrap().to_string();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                v
            }
            None => {
                let path = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
                downward[path].to_string()
            }
        };
        assert!(
            !value.contains("$("),
            "{name}={value}: refers to a variable not defined before it"
        );
        env.push((name, value));
    }
    env.into_iter().collect()
}

fn injected_proxy(pod: Value) -> Value {
    let (outcome, out) = inject_pod(&pod, &ns(&[]), &config());
    assert!(matches!(outcome, Outcome::Inject { .. }), "{outcome:?}");
    init_container(&out["spec"], "linkerd-proxy").clone()
}

#[test]
fn injected_env_parses_as_a_proxy_config() {
    let mut ingress = yaml("pod-annotated.yaml");
    ingress["metadata"]["annotations"]["linkerd.io/inject"] = json!("ingress");
    for (name, pod) in [
        ("pod-annotated", yaml("pod-annotated.yaml")),
        ("pod-config", yaml("pod-config.yaml")),
        ("ingress", ingress),
    ] {
        let env = kubelet_env(&injected_proxy(pod));
        let cfg = linkerd_proxy::config::Config::from_strings(&env)
            .unwrap_or_else(|e| panic!("{name}: the proxy rejects the injected env: {e}"));
        let id = cfg.identity.as_ref().expect("identity is on");
        assert_eq!(
            id.local_name,
            "web.shop.serviceaccount.identity.linkerd.cluster.local"
        );
        assert_eq!(
            id.svc_addr,
            "linkerd-identity-headless.linkerd.svc.cluster.local.:8080"
        );
        assert_eq!(
            id.svc_name.as_deref(),
            Some("linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local")
        );
        assert_eq!(
            id.token_file,
            std::path::Path::new("/var/run/secrets/tokens/linkerd-identity-token")
        );
        let dst = cfg.destination.as_ref().expect("discovery is on");
        assert_eq!(
            dst.svc_addr,
            "linkerd-dst-headless.linkerd.svc.cluster.local.:8086"
        );
        let ctx: Value = serde_json::from_str(&dst.context).unwrap();
        assert_eq!(
            ctx,
            json!({"ns": "shop", "nodeName": "kind-worker", "pod": "web-7c9f8b6d5-x2x4z"})
        );
        assert_eq!(dst.suffixes, ["svc.cluster.local"]);
        assert_eq!(cfg.admin.listen_addr, "0.0.0.0:4191".parse().unwrap());
        assert!(!cfg.admin.shutdown_endpoint_enabled);
        assert_eq!(cfg.inbound.listen_addr, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(cfg.outbound.listen_addr, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(
            cfg.inbound.connect_timeout,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(
            cfg.outbound.connect_timeout,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(cfg.inbound.ips.len(), 2);
        if name == "pod-config" {
            assert_eq!(cfg.inbound.opaque_ports, [6379, 7000]);
            assert_eq!(cfg.cores, 2);
            assert_eq!(cfg.log_level, "warn,linkerd_proxy=debug");
        }

        // Inbound policy: the default from the annotation (else the injector's), Linkerd's
        // cluster networks, and the policy service watching every container and probe port
        // of this pod.
        let policy = &cfg.policy;
        let (default, ports): (&str, &[u16]) = match name {
            // Container ports 7000, 6379 (`redis`), 9901; no probes.
            "pod-config" => ("cluster-authenticated", &[6379, 7000, 9901]),
            // Container ports 8080 (`http`), 9090; probes on `http` and 8081.
            _ => ("all-unauthenticated", &[8080, 8081, 9090]),
        };
        assert_eq!(
            policy.default,
            default
                .parse::<linkerd_proxy::inbound::policy::DefaultPolicy>()
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            policy.cluster_networks,
            linkerd_proxy::inbound::policy::client::default_cluster_networks(),
            "{name}"
        );
        let svc = policy
            .service
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: the policy service is off"));
        assert_eq!(
            svc.svc_addr,
            "linkerd-policy.linkerd.svc.cluster.local.:8090"
        );
        assert_eq!(
            svc.svc_name.as_deref(),
            Some("linkerd-policy.linkerd.serviceaccount.identity.linkerd.cluster.local")
        );
        let workload: Value = serde_json::from_str(&svc.workload)
            .unwrap_or_else(|e| panic!("{name}: workload {:?}: {e}", svc.workload));
        // `kubelet_env`'s `metadata.name` and `metadata.namespace`, substituted.
        assert_eq!(
            workload,
            json!({"ns": "shop", "pod": "web-7c9f8b6d5-x2x4z"}),
            "{name}"
        );
        assert_eq!(svc.ports, ports, "{name}");
    }
}

/// The default inbound policy follows the annotation on the pod, else on its namespace, else
/// the injector's configured default; an invalid value falls back to the configured default.
#[test]
fn default_inbound_policy_reaches_the_proxy_config() {
    use linkerd_proxy::inbound::policy::DefaultPolicy;
    const KEY: &str = "config.linkerd.io/default-inbound-policy";
    let parse =
        |pod: Value, ns_annotations: &[(&str, &str)], cfg: &linkerd_injector::InjectConfig| {
            let (outcome, out) = inject_pod(&pod, &ns(ns_annotations), cfg);
            assert!(matches!(outcome, Outcome::Inject { .. }), "{outcome:?}");
            let env = kubelet_env(init_container(&out["spec"], "linkerd-proxy"));
            linkerd_proxy::config::Config::from_strings(&env)
                .unwrap()
                .policy
                .default
        };
    let cfg = config();
    let mut denied = yaml("pod-annotated.yaml");
    denied["metadata"]["annotations"][KEY] = json!("deny");
    assert_eq!(parse(denied.clone(), &[], &cfg), DefaultPolicy::Deny);
    assert_eq!(
        parse(denied, &[(KEY, "audit")], &cfg),
        DefaultPolicy::Deny,
        "the pod's annotation wins"
    );
    assert_eq!(
        parse(
            yaml("pod-annotated.yaml"),
            &[(KEY, "cluster-unauthenticated")],
            &cfg
        ),
        DefaultPolicy::ClusterUnauthenticated,
        "the namespace's annotation applies"
    );
    let mut typo = yaml("pod-annotated.yaml");
    typo["metadata"]["annotations"][KEY] = json!("allow-all");
    assert_eq!(parse(typo, &[], &cfg), DefaultPolicy::AllUnauthenticated);
    let mut strict = config();
    strict.default_inbound_policy = "all-authenticated".into();
    assert_eq!(
        parse(yaml("pod-annotated.yaml"), &[], &strict),
        DefaultPolicy::AllAuthenticated,
        "the injector's configured default"
    );
}

/// Every variable the injector writes is either in the proxy's documented table
/// (`linkerd-proxy/README.md`) or a Linkerd variable listed above as ignored.
#[test]
fn every_variable_is_documented_or_knowingly_ignored() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../linkerd-proxy/README.md"
    ))
    .unwrap();
    let documented: BTreeSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let mut ignored = Vec::new();
    let mut pod = yaml("pod-config.yaml");
    pod["metadata"]["annotations"]["linkerd.io/inject"] = json!("ingress");
    pod["metadata"]["annotations"]["config.linkerd.io/shutdown-grace-period"] = json!("30s");
    let proxy = injected_proxy(pod);
    for e in proxy["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if name.starts_with("_pod_") {
            continue;
        }
        if documented.contains(name) {
            continue;
        }
        assert!(
            IGNORED_BY_OUR_PROXY.contains(&name),
            "{name} is neither a documented proxy variable nor a known Linkerd-only one"
        );
        ignored.push(name);
    }
    println!("written for Linkerd's proxy, ignored by ours: {ignored:?}");
    for name in POLICY_VARIABLES {
        assert!(
            !IGNORED_BY_OUR_PROXY.contains(name),
            "{name} is read by our proxy"
        );
        assert!(
            proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == *name),
            "{name} is not written"
        );
    }
}

/// Linkerd's tracing and access-log annotations (on the pod or its namespace) become the
/// proxy's variables, which the proxy accepts: the collector's mesh identity from its host's
/// namespace and the ServiceAccount annotation, the pod's labels as resource attributes.
#[test]
fn tracing_and_access_log_annotations_reach_the_proxy_config() {
    let cfg = config();
    let mut pod = yaml("pod-annotated.yaml");
    let a = &mut pod["metadata"]["annotations"];
    a["config.linkerd.io/trace-collector"] = json!("otel-collector.tracing.svc.cluster.local:4317");
    a["config.alpha.linkerd.io/trace-collector-service-account"] = json!("otel");
    a["config.linkerd.io/access-log"] = json!("JSON");
    pod["metadata"]["labels"]["app.kubernetes.io/name"] = json!("web-app");
    let (outcome, out) = inject_pod(&pod, &ns(&[]), &cfg);
    assert!(
        matches!(outcome, Outcome::Inject { ref warnings, .. } if warnings.is_empty()),
        "{outcome:?}"
    );
    let proxy = init_container(&out["spec"], "linkerd-proxy");
    let env = kubelet_env(proxy);
    let parsed = linkerd_proxy::config::Config::from_strings(&env).unwrap();
    let t = parsed.trace.expect("tracing is on");
    assert_eq!(
        t.collector_addr,
        "otel-collector.tracing.svc.cluster.local:4317"
    );
    assert_eq!(
        t.collector_name.as_deref(),
        Some("otel.tracing.serviceaccount.identity.linkerd.cluster.local")
    );
    let attr = |k: &str| {
        t.resource
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(attr("service.name"), Some("web-app"));
    assert_eq!(attr("k8s.pod.name"), Some("web-7c9f8b6d5-x2x4z"));
    assert_eq!(attr("k8s.namespace.name"), Some("shop"));
    assert_eq!(
        parsed.access_log,
        Some(linkerd_proxy::config::AccessLogFormat::Json)
    );
    // The pod's labels, mounted where the attributes file is read from.
    assert_eq!(
        env["LINKERD2_PROXY_TRACE_ATTRIBUTES_PATH"],
        "/var/run/linkerd/podinfo/labels"
    );
    let mounts = proxy["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "linkerd-podinfo" && m["mountPath"] == "/var/run/linkerd/podinfo"), "{mounts:?}");
    let volumes = out["spec"]["volumes"].as_array().unwrap();
    let podinfo = volumes
        .iter()
        .find(|v| v["name"] == "linkerd-podinfo")
        .expect("the podinfo volume");
    assert_eq!(
        podinfo["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.labels"
    );

    // From the namespace, a collector named without its namespace: the pod's own.
    let pod = yaml("pod-annotated.yaml");
    let (_, out) = inject_pod(
        &pod,
        &ns(&[("config.linkerd.io/trace-collector", "collector:4317")]),
        &cfg,
    );
    let env = kubelet_env(init_container(&out["spec"], "linkerd-proxy"));
    let t = linkerd_proxy::config::Config::from_strings(&env)
        .unwrap()
        .trace
        .unwrap();
    assert_eq!(
        t.collector_name.as_deref(),
        Some("collector.shop.serviceaccount.identity.linkerd.cluster.local")
    );

    // Hostile or broken values: a warning each, no tracing, and the pod still injected.
    for (key, value) in [
        ("config.linkerd.io/trace-collector", "collector"),
        ("config.linkerd.io/trace-collector", "collector:0"),
        (
            "config.linkerd.io/trace-collector",
            "$(LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS):4317",
        ),
        ("config.linkerd.io/trace-collector", "a b:4317"),
        ("config.linkerd.io/access-log", "combined"),
    ] {
        let mut pod = yaml("pod-annotated.yaml");
        pod["metadata"]["annotations"][key] = json!(value);
        let (outcome, out) = inject_pod(&pod, &ns(&[]), &cfg);
        let Outcome::Inject { warnings, .. } = &outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            warnings.iter().any(|w| w.contains(key)),
            "{key}={value}: {warnings:?}"
        );
        let env = kubelet_env(init_container(&out["spec"], "linkerd-proxy"));
        let parsed = linkerd_proxy::config::Config::from_strings(&env).unwrap();
        assert!(
            parsed.trace.is_none() && parsed.access_log.is_none(),
            "{key}={value}"
        );
        assert!(!env.contains_key("LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR"));
    }
    // A service name that would expand another variable is refused; tracing stays on.
    let mut pod = yaml("pod-annotated.yaml");
    pod["metadata"]["annotations"]["config.linkerd.io/trace-collector"] = json!("127.0.0.1:4317");
    pod["metadata"]["annotations"]["config.linkerd.io/trace-collector-name"] = json!("$(_pod_sa)");
    let (_, out) = inject_pod(&pod, &ns(&[]), &cfg);
    let env = kubelet_env(init_container(&out["spec"], "linkerd-proxy"));
    let t = linkerd_proxy::config::Config::from_strings(&env)
        .unwrap()
        .trace
        .unwrap();
    assert_eq!(t.collector_name, None, "a loopback collector is plaintext");
    // The pod's `app` label instead.
    assert_eq!(env["LINKERD2_PROXY_TRACE_SERVICE_NAME"], "web");
}
