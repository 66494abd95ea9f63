//! Annotation values (the pod's, then its namespace's, then the defaults) validated into the
//! settings the patch is written from; an invalid value is ignored with a warning.

use super::*;

/// Annotation values after validation, with a warning for each one ignored.
pub(super) struct Settings {
    pub(super) mode: Mode,
    pub(super) image: String,
    pub(super) version: String,
    pub(super) log_level: String,
    pub(super) inbound_policy: String,
    pub(super) skip_inbound: Vec<PortRange>,
    pub(super) skip_outbound: Vec<PortRange>,
    pub(super) skip_subnets: Vec<String>,
    /// Every port the pod's containers declare or probe.
    pub(super) inbound_ports: Vec<u16>,
    pub(super) opaque_ports: Vec<PortRange>,
    /// The narrowed default, when the pod had no `opaque-ports` of its own.
    pub(super) opaque_annotation: Option<String>,
    pub(super) resources: Value,
    pub(super) cores: Option<u64>,
    pub(super) shutdown_grace_period: Option<String>,
    /// Span export, from `config.linkerd.io/trace-collector`.
    pub(super) trace: Option<Trace>,
    /// `apache` or `json`.
    pub(super) access_log: Option<String>,
    pub(super) warnings: Vec<String>,
}

/// Where the proxy sends spans and under which name.
pub(super) struct Trace {
    /// `host:port`.
    pub(super) addr: String,
    /// The collector's mesh identity; `None` for a loopback collector (plaintext).
    pub(super) svc_name: Option<String>,
    pub(super) service_name: Option<String>,
}

/// The trace settings from the annotations; the collector's namespace is its host's second
/// label (`collector.tracing.svc.cluster.local`), else the pod's own.
fn trace(
    get: &dyn Fn(&str) -> Option<String>,
    labels: Option<&BTreeMap<String, String>>,
    cfg: &InjectConfig,
    warn: &mut dyn FnMut(&str, &str, String),
) -> Option<Trace> {
    let addr = get(ann::TRACE_COLLECTOR)?;
    let Some((host, port)) = addr.rsplit_once(':') else {
        warn(ann::TRACE_COLLECTOR, &addr, "expected host:port".into());
        return None;
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        warn(ann::TRACE_COLLECTOR, &addr, "expected host:port".into());
        return None;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let svc_name = (!loopback).then(|| {
        let mut parts = host.split('.');
        let svc = parts.next().unwrap_or_default().to_string();
        let ns = parts
            .next()
            .filter(|n| !n.is_empty())
            .map_or_else(|| "$(_pod_ns)".to_string(), str::to_string);
        let sa = get(ann::TRACE_COLLECTOR_SERVICE_ACCOUNT)
            .filter(|sa| {
                sa.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            })
            .unwrap_or(svc);
        format!(
            "{sa}.{ns}.serviceaccount.identity.{}.{}",
            cfg.control_plane_ns, cfg.trust_domain
        )
    });
    // A `$(` would be expanded by the kubelet from the proxy's other variables.
    let plain = |v: &String| !v.contains("$(") && !v.chars().any(char::is_control);
    let service_name = match get(ann::TRACE_COLLECTOR_NAME) {
        Some(n) if plain(&n) => Some(n),
        Some(n) => {
            warn(
                ann::TRACE_COLLECTOR_NAME,
                &n,
                "no `$(` or control characters".into(),
            );
            None
        }
        None => None,
    }
    .or_else(|| {
        let l = labels?;
        [
            "app.kubernetes.io/instance",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|k| l.get(*k).cloned())
    });
    Some(Trace {
        addr,
        svc_name,
        service_name,
    })
}

pub(super) fn settings(
    mode: Mode,
    a: &BTreeMap<&str, &str>,
    spec: &PodSpec,
    labels: Option<&BTreeMap<String, String>>,
    cfg: &InjectConfig,
) -> Settings {
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
            Ok(canonical) => Some(canonical),
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
    let owned = |k: &str| get(k).map(str::to_string);
    let trace = trace(&owned, labels, cfg, &mut warn);
    let access_log = match get(ann::ACCESS_LOG) {
        Some(v) if v.eq_ignore_ascii_case("apache") || v.eq_ignore_ascii_case("json") => {
            Some(v.to_ascii_lowercase())
        }
        Some(v) => {
            warn(ann::ACCESS_LOG, v, "expected apache or json".into());
            None
        }
        None => None,
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
        trace,
        access_log,
        warnings,
    }
}

/// Every container port (app containers and sidecar init containers), with its name.
pub(super) fn named_ports(spec: &PodSpec) -> Vec<(Option<String>, u16)> {
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
pub(super) fn probe_ports(spec: &PodSpec, named: &[(Option<String>, u16)]) -> Vec<u16> {
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
