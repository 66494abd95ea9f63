//! What the patch adds: the identity volumes, the `linkerd-init` container and the proxy
//! container with its environment.

use super::*;

pub(super) fn volumes(s: &Settings) -> Vec<Value> {
    let mut v = vec![
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
    ];
    if s.trace.is_some() {
        v.push(json!({
            "name": VOLUME_PODINFO,
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        }));
    }
    v
}

/// The iptables step: the proxy image's `init` command with proxy-init's flags.
pub(super) fn init_container(s: &Settings, cfg: &InjectConfig) -> Value {
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
pub(super) fn proxy_container(s: &Settings, cfg: &InjectConfig) -> Value {
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
    if s.trace.is_some()
        && let Some(mounts) = c["volumeMounts"].as_array_mut()
    {
        mounts.push(json!({"name": VOLUME_PODINFO, "mountPath": PODINFO_DIR, "readOnly": true}));
    }
    c
}

/// The proxy's environment, in Linkerd's names (see `linkerd-proxy/README.md`). Kubernetes
/// expands `$(VAR)` only from variables defined earlier, so the downward-API ones come first.
pub(super) fn proxy_env(s: &Settings, cfg: &InjectConfig) -> Vec<Value> {
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
    for (name, ip, port) in [
        ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "0.0.0.0", p.inbound),
        (
            "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR",
            "127.0.0.1",
            p.outbound,
        ),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0", p.admin),
        ("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "0.0.0.0", p.control),
    ] {
        set(name, format!("{ip}:{port}"));
    }
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
    // The same for every pod, but for the injector's configuration.
    let fixed = [
        ("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "100ms".into()),
        ("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "1000ms".into()),
        (
            "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT",
            "5s".into(),
        ),
        (
            "LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT",
            "90s".into(),
        ),
        ("LINKERD2_PROXY_CONTROL_STREAM_INITIAL_TIMEOUT", "3s".into()),
        ("LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT", "5m".into()),
        ("LINKERD2_PROXY_CONTROL_STREAM_LIFETIME", "1h".into()),
        (
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
            cfg.destination_svc_addr.clone(),
        ),
        (
            "LINKERD2_PROXY_DESTINATION_SVC_NAME",
            cfg.destination_svc_name.clone(),
        ),
        (
            "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES",
            format!("svc.{}.", cfg.cluster_domain),
        ),
        (
            "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS",
            cfg.cluster_networks.clone(),
        ),
        (
            "LINKERD2_PROXY_DESTINATION_CONTEXT",
            r#"{"ns":"$(_pod_ns)","nodeName":"$(_pod_nodeName)","pod":"$(_pod_name)"}"#.into(),
        ),
        (
            "LINKERD2_PROXY_POLICY_SVC_ADDR",
            cfg.policy_svc_addr.clone(),
        ),
        (
            "LINKERD2_PROXY_POLICY_SVC_NAME",
            cfg.policy_svc_name.clone(),
        ),
        (
            "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS",
            cfg.cluster_networks.clone(),
        ),
        (
            "LINKERD2_PROXY_POLICY_WORKLOAD",
            r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#.into(),
        ),
        ("LINKERD2_PROXY_IDENTITY_DIR", END_ENTITY_DIR.into()),
        (
            "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
            cfg.trust_anchors_pem.clone(),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
            format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
            cfg.identity_svc_addr.clone(),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_SVC_NAME",
            cfg.identity_svc_name.clone(),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
            format!(
                "$(_pod_sa).$(_pod_ns).serviceaccount.identity.{}.{}",
                cfg.control_plane_ns, cfg.trust_domain
            ),
        ),
    ];
    for (name, value) in fixed {
        set(name, value);
    }
    if s.mode == Mode::Ingress {
        set("LINKERD2_PROXY_INGRESS_MODE", "true".into());
    }
    if let Some(log) = &s.access_log {
        set("LINKERD2_PROXY_ACCESS_LOG", log.clone());
    }
    if let Some(t) = &s.trace {
        set("LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR", t.addr.clone());
        if let Some(name) = &t.svc_name {
            set("LINKERD2_PROXY_TRACE_COLLECTOR_SVC_NAME", name.clone());
        }
        set("LINKERD2_PROXY_TRACE_PROTOCOL", "opentelemetry".into());
        if let Some(n) = &t.service_name {
            set("LINKERD2_PROXY_TRACE_SERVICE_NAME", n.clone());
        }
        set(
            "LINKERD2_PROXY_TRACE_ATTRIBUTES_PATH",
            format!("{PODINFO_DIR}/labels"),
        );
        set(
            "LINKERD2_PROXY_TRACE_EXTRA_ATTRIBUTES",
            "k8s.pod.name=$(_pod_name)\nk8s.namespace.name=$(_pod_ns)\nk8s.node.name=$(_pod_nodeName)"
                .into(),
        );
    }
    env
}
