//! Linkerd's annotation and label names, and parsing of their values.

pub const INJECT: &str = "linkerd.io/inject";
pub const CREATED_BY: &str = "linkerd.io/created-by";
pub const PROXY_VERSION: &str = "linkerd.io/proxy-version";
pub const TRUST_ROOT_SHA256: &str = "linkerd.io/trust-root-sha256";

pub const CONTROL_PLANE_NS_LABEL: &str = "linkerd.io/control-plane-ns";
pub const WORKLOAD_NS_LABEL: &str = "linkerd.io/workload-ns";
pub const CONTROL_PLANE_COMPONENT_LABEL: &str = "linkerd.io/control-plane-component";

pub const CONFIG_PREFIX: &str = "config.linkerd.io/";
pub const CONFIG_ALPHA_PREFIX: &str = "config.alpha.linkerd.io/";

pub const SKIP_INBOUND_PORTS: &str = "config.linkerd.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.linkerd.io/skip-outbound-ports";
pub const SKIP_SUBNETS: &str = "config.linkerd.io/skip-subnets";
pub const OPAQUE_PORTS: &str = "config.linkerd.io/opaque-ports";
pub const PROXY_CPU_REQUEST: &str = "config.linkerd.io/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "config.linkerd.io/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "config.linkerd.io/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "config.linkerd.io/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "config.linkerd.io/proxy-log-level";
pub const PROXY_IMAGE: &str = "config.linkerd.io/proxy-image";
pub const PROXY_IMAGE_VERSION: &str = "config.linkerd.io/proxy-version";
pub const DEFAULT_INBOUND_POLICY: &str = "config.linkerd.io/default-inbound-policy";
pub const SHUTDOWN_GRACE_PERIOD: &str = "config.linkerd.io/shutdown-grace-period";
/// The OTLP/gRPC collector the proxy sends spans to, `host:port` (Linkerd's tracing annotation).
pub const TRACE_COLLECTOR: &str = "config.linkerd.io/trace-collector";
/// The collector's ServiceAccount, for its mesh identity (default: the collector Service's name).
pub const TRACE_COLLECTOR_SERVICE_ACCOUNT: &str =
    "config.alpha.linkerd.io/trace-collector-service-account";
/// The spans' `service.name` (default: the pod's `app.kubernetes.io/instance`,
/// `app.kubernetes.io/name` or `app` label).
pub const TRACE_COLLECTOR_NAME: &str = "config.linkerd.io/trace-collector-name";
/// `apache` or `json`: the proxy's inbound access log.
pub const ACCESS_LOG: &str = "config.linkerd.io/access-log";
/// On a namespace: the webhook's `namespaceSelector` leaves it alone.
pub const ADMISSION_WEBHOOKS: &str = "config.linkerd.io/admission-webhooks";

/// The inbound policies Linkerd's proxies understand.
pub const INBOUND_POLICIES: &[&str] = &[
    "all-unauthenticated",
    "all-authenticated",
    "cluster-unauthenticated",
    "cluster-authenticated",
    "deny",
    "audit",
];

/// An inclusive port range; a single port is `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// `25,587,4000-4010`. Entries that are not ports or ranges are returned as names (Linkerd
/// accepts container port names in `opaque-ports`); the caller decides what a name means.
pub fn parse_ports(v: &str) -> Result<(Vec<PortRange>, Vec<String>), String> {
    let mut ranges = Vec::new();
    let mut names = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |p: &str| -> Option<u16> { p.trim().parse::<u16>().ok().filter(|p| *p > 0) };
        match part.split_once('-') {
            Some((lo, hi)) if lo.trim().chars().all(|c| c.is_ascii_digit()) => {
                match (port(lo), port(hi)) {
                    (Some(lo), Some(hi)) if lo <= hi => ranges.push(PortRange { lo, hi }),
                    _ => return Err(format!("{part:?} is not a port range (lo-hi, 1-65535)")),
                }
            }
            _ => match port(part) {
                Some(p) => ranges.push(PortRange { lo: p, hi: p }),
                None if part.chars().all(|c| c.is_ascii_digit()) => {
                    return Err(format!("{part:?} is not a port (1-65535)"));
                }
                None if is_port_name(part) => names.push(part.to_string()),
                None => return Err(format!("{part:?} is neither a port nor a port name")),
            },
        }
    }
    ranges.sort_unstable();
    ranges.dedup();
    Ok((ranges, names))
}

/// A Kubernetes port name (IANA_SVC_NAME): 1-15 lowercase alphanumerics or `-`, with a letter.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Joins ranges as `a,b,c-d`.
pub fn join_ports(ranges: &[PortRange]) -> String {
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `10.0.0.0/8,fd00::/8`: each entry an IP network in CIDR notation.
pub fn parse_subnets(v: &str) -> Result<Vec<String>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|net| {
            let (ip, len) = net
                .split_once('/')
                .ok_or_else(|| format!("{net:?} is not a CIDR (ip/len)"))?;
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|_| format!("{net:?}: {ip:?} is not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(l) if l <= max => Ok(net.to_string()),
                _ => Err(format!("{net:?}: prefix length must be 0-{max}")),
            }
        })
        .collect()
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1e3`), checked so that a bad
/// annotation cannot make the API server reject the patched pod. Returns the value in base
/// units (cores, bytes).
pub fn parse_quantity(v: &str) -> Result<f64, String> {
    let bad = || format!("{v:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi)");
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(split);
    if num.is_empty() || num.starts_with('-') || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let n: f64 = num.trim_start_matches('+').parse().map_err(|_| bad())?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if (e.starts_with('e') || e.starts_with('E')) && e.len() > 1 => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    Ok(n * mult)
}

/// `shutdown-grace-period`, in the control plane's duration grammar (`30s`, `500ms`, `2m`,
/// `1h`, `1m30s`, `1.5s`): what to write into the proxy's environment, in a form the proxy
/// reads (whole milliseconds or a larger unit: `30s`, `90s`, `1500ms`).
pub fn parse_duration(v: &str) -> Result<String, String> {
    let d = linkerd_control::duration::parse(v)?;
    let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    Ok(linkerd_control::duration::format(
        std::time::Duration::from_millis(ms),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let (r, n) = parse_ports("8080, 25,4000-4010,http,25").unwrap();
        assert_eq!(join_ports(&r), "25,4000-4010,8080");
        assert_eq!(n, ["http"]);
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("70000").is_err());
        assert!(parse_ports("10-5").is_err());
        assert!(parse_ports("Not_A_Name").is_err());
        assert_eq!(parse_ports("").unwrap(), (vec![], vec![]));
    }

    #[test]
    fn subnets() {
        assert_eq!(
            parse_subnets("10.0.0.0/8, fd00::/8").unwrap(),
            ["10.0.0.0/8", "fd00::/8"]
        );
        assert!(parse_subnets("10.0.0.0/33").is_err());
        assert!(parse_subnets("10.0.0.0").is_err());
        assert!(parse_subnets("example/8").is_err());
    }

    #[test]
    fn grace_periods_are_written_as_the_proxy_reads_them() {
        for (v, env) in [
            ("30s", "30s"),
            ("500ms", "500ms"),
            ("2m", "2m"),
            ("1h", "1h"),
            ("1m30s", "90s"),
            ("1.5s", "1500ms"),
            ("250us", "1ms"),
        ] {
            assert_eq!(parse_duration(v).as_deref(), Ok(env), "{v}");
        }
        for bad in ["", "30", "-1s", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m").unwrap(), 0.1);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_quantity("64Mi").unwrap(), 64.0 * 1024.0 * 1024.0);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert_eq!(parse_quantity("0.5").unwrap(), 0.5);
        for bad in ["", "m", "-1", "1.2.3", "10x", "abc"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}
