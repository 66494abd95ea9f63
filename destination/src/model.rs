//! The domain model: what a source (registry file or Kubernetes) says about a service, and
//! the endpoints the index resolves from it for one service port. No proto, no kube.

use proto::id::IdentityName;
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

/// Linkerd's default endpoint weight.
pub const DEFAULT_WEIGHT: u32 = 10_000;

/// The proxy's inbound port, where a meshed peer accepts opaque transport.
pub const PROXY_INBOUND_PORT: u16 = 4143;

/// Metric labels (`pod`, `serviceaccount`, …), sorted by key, packed into one shared string:
/// every endpoint has its own set, and 10,000 endpoints' worth of small strings add up (as a
/// slice of boxed strings, three labels took seven allocations, ~320 bytes; packed, one of
/// ~80). Each key and value is written as `<byte length>:<text>`, so any text round-trips.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels(Option<Arc<str>>);

/// A workload identity, shared by every endpoint of the workload (and its snapshots).
pub type Identity = Arc<IdentityName>;

/// A service's name and namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

/// A logical service as a source describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Empty for a headless service.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Ports whose traffic is opaque TCP (annotation or registry `opaquePorts`).
    pub opaque_ports: BTreeSet<u16>,
    /// Ready endpoints only: sources drop not-ready and terminating ones.
    pub backends: Vec<Arc<Backend>>,
}

/// One port the service declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    /// The port's name (`""` when unnamed, as in an EndpointSlice).
    pub name: String,
    pub target: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per backend.
    Name(String),
}

/// One workload address behind a service (an EndpointSlice endpoint, a registry endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    /// Set: this port for every service port (registry `port`).
    pub port_override: Option<u16>,
    /// Target ports already resolved by the source, keyed by service-port name (an
    /// EndpointSlice's `ports`).
    pub resolved_ports: BTreeMap<String, u16>,
    /// Named container ports (the pod's), for named target ports.
    pub named_ports: BTreeMap<String, u16>,
    pub weight: u32,
    /// The workload's proxy accepts mesh traffic.
    pub meshed: bool,
    pub identity: Option<Identity>,
    /// Ports the workload's proxy does not terminate (`skip-inbound-ports`): no identity.
    pub skip_inbound_ports: BTreeSet<u16>,
    /// Ports the workload marks opaque.
    pub opaque_ports: BTreeSet<u16>,
    /// For pod DNS names (`<hostname>.<svc>.<ns>.svc.<domain>`).
    pub hostname: Option<String>,
    pub labels: Labels,
}

/// What a meshed peer tells the client about its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolHint {
    /// Not meshed: no hint.
    Unknown,
    /// The peer's proxy takes HTTP/1 upgraded to HTTP/2.
    H2,
    /// Opaque TCP through the peer proxy's inbound port.
    Opaque { inbound_port: u16 },
}

/// One resolved address of one service port, as sent to watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The TLS identity to expect (meshed endpoints only).
    pub identity: Option<Identity>,
    pub hint: ProtocolHint,
    pub hostname: Option<String>,
    pub labels: Labels,
}

// === impl Labels ===

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest = self.0.as_deref().unwrap_or_default();
        std::iter::from_fn(move || {
            let k = take_packed(&mut rest)?;
            let v = take_packed(&mut rest)?;
            Some((k, v))
        })
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// From pairs already sorted by key, without repeated keys.
    fn pack<'a>(sorted: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        use fmt::Write;
        let mut packed = String::new();
        for (k, v) in sorted {
            for s in [k, v] {
                // Writing to a `String` cannot fail.
                let _ = write!(packed, "{}:{s}", s.len());
            }
        }
        Self((!packed.is_empty()).then(|| Arc::from(packed)))
    }
}

/// The next `<len>:<text>` of a packed label string.
fn take_packed<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let (len, tail) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let text = tail.get(..len)?;
    *rest = tail.get(len..)?;
    Some(text)
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl From<Vec<(String, String)>> for Labels {
    /// Sorted by key; a repeated key keeps its last value.
    fn from(mut v: Vec<(String, String)>) -> Self {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.reverse();
        v.dedup_by(|a, b| a.0 == b.0);
        v.reverse();
        Self::pack(v.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(m: BTreeMap<String, String>) -> Self {
        Self::pack(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

// === impl ServiceKey ===

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `<name>.<ns>.svc.<cluster-domain>`.
    pub fn fqdn(&self, cluster_domain: &str) -> String {
        format!("{}.{}.svc.{cluster_domain}", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl ServicePort ===

impl ServicePort {
    /// Port `port`, named `name`, whose traffic goes to the same port on the backends.
    pub fn same_target(port: u16, name: impl Into<String>) -> Self {
        Self {
            port,
            name: name.into(),
            target: TargetPort::Number(port),
        }
    }
}

// === impl Service ===

impl Service {
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Whether traffic to `port` is opaque (the profile's `opaque_protocol`).
    pub fn is_opaque(&self, port: u16) -> bool {
        let target = match self.port(port).map(|p| &p.target) {
            Some(TargetPort::Number(n)) => *n,
            _ => port,
        };
        self.opaque_ports.contains(&port) || self.opaque_ports.contains(&target)
    }

    /// The endpoints for one service port. A port the service does not declare is used
    /// as the target port itself (as Linkerd does, e.g. for headless services).
    pub fn endpoints(&self, port: u16) -> BTreeMap<SocketAddr, Arc<Endpoint>> {
        self.endpoints_reusing(port, &BTreeMap::new())
    }

    /// [`Service::endpoints`], reusing the `Arc` of every endpoint `old` already has with the
    /// same value: an update allocates only what changed, and unchanged endpoints stay
    /// shared between snapshots.
    pub fn endpoints_reusing(
        &self,
        port: u16,
        old: &BTreeMap<SocketAddr, Arc<Endpoint>>,
    ) -> BTreeMap<SocketAddr, Arc<Endpoint>> {
        let undeclared = ServicePort::same_target(port, "");
        let sp = self.port(port).unwrap_or(&undeclared);
        let mut out = BTreeMap::new();
        for b in &self.backends {
            let Some(target) = b.target_port(sp) else {
                continue;
            };
            let opaque = self.opaque_ports.contains(&sp.port)
                || self.opaque_ports.contains(&target)
                || b.opaque_ports.contains(&target);
            let ep = b.endpoint(target, opaque);
            let ep = match old.get(&ep.addr) {
                Some(o) if **o == ep => o.clone(),
                _ => Arc::new(ep),
            };
            out.insert(ep.addr, ep);
        }
        out
    }

    pub fn endpoint_count(&self) -> usize {
        self.backends.len()
    }
}

// === impl Backend ===

impl Backend {
    /// A plain, unmeshed backend with default weight (a building block for sources).
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            port_override: None,
            resolved_ports: BTreeMap::new(),
            named_ports: BTreeMap::new(),
            weight: DEFAULT_WEIGHT,
            meshed: false,
            identity: None,
            skip_inbound_ports: BTreeSet::new(),
            opaque_ports: BTreeSet::new(),
            hostname: None,
            labels: Labels::default(),
        }
    }

    /// The port this backend serves `sp` on, if it has one.
    pub fn target_port(&self, sp: &ServicePort) -> Option<u16> {
        if let Some(p) = self.port_override {
            return Some(p);
        }
        if let Some(p) = self.resolved_ports.get(&sp.name) {
            return Some(*p);
        }
        match &sp.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self.named_ports.get(name).copied(),
        }
    }

    fn endpoint(&self, port: u16, opaque: bool) -> Endpoint {
        let proxied = self.meshed && !self.skip_inbound_ports.contains(&port);
        let hint = match (proxied, opaque) {
            (false, _) => ProtocolHint::Unknown,
            (true, false) => ProtocolHint::H2,
            (true, true) => ProtocolHint::Opaque {
                inbound_port: PROXY_INBOUND_PORT,
            },
        };
        Endpoint {
            addr: SocketAddr::new(self.ip, port),
            weight: self.weight,
            identity: self.identity.clone().filter(|_| proxied),
            hint,
            hostname: self.hostname.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// Parses a port list as Linkerd's annotations write it: `25,587,3306` with `a-b` ranges.
pub fn parse_port_list(s: &str) -> Result<BTreeSet<u16>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a port or a port range");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo == 0 || hi < lo {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        let p = parse_port_list("25, 587,3306-3308").unwrap();
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            [25, 587, 3306, 3307, 3308]
        );
        assert!(parse_port_list("http").is_err());
        assert!(parse_port_list("9-3").is_err());
        assert!(parse_port_list("").unwrap().is_empty());
    }

    #[test]
    fn labels_round_trip() {
        let l = Labels::from(vec![
            ("pod".to_string(), "web-0".to_string()),
            ("a:b".to_string(), "12:x".to_string()),
            ("pod".to_string(), "web-1".to_string()),
            ("empty".to_string(), String::new()),
            ("ü".to_string(), "ß:".to_string()),
        ]);
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [
                ("a:b", "12:x"),
                ("empty", ""),
                ("pod", "web-1"),
                ("ü", "ß:")
            ]
        );
        assert_eq!(l.len(), 4);
        assert_eq!(l.get("pod"), Some("web-1"));
        assert_eq!(l.get("empty"), Some(""));
        assert_eq!(l.get("web-1"), None);
        assert_eq!(
            format!("{l:?}"),
            r#"{"a:b": "12:x", "empty": "", "pod": "web-1", "ü": "ß:"}"#
        );
        let m: BTreeMap<String, String> = l.iter().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(Labels::from(m), l);
        assert!(Labels::from(Vec::new()).is_empty());
        assert_eq!(Labels::from(Vec::new()), Labels::default());
        assert_eq!(Labels::default().iter().count(), 0);
    }

    #[test]
    fn target_ports() {
        let mut b = Backend::new("10.0.0.1".parse().unwrap());
        b.named_ports.insert("http".into(), 8080);
        let named = ServicePort {
            port: 80,
            name: "web".into(),
            target: TargetPort::Name("http".into()),
        };
        assert_eq!(b.target_port(&named), Some(8080));
        b.resolved_ports.insert("web".into(), 9090);
        assert_eq!(b.target_port(&named), Some(9090));
        b.port_override = Some(1);
        assert_eq!(b.target_port(&named), Some(1));
        let missing = ServicePort {
            port: 81,
            name: "x".into(),
            target: TargetPort::Name("nope".into()),
        };
        b.port_override = None;
        assert_eq!(b.target_port(&missing), None);
    }
}
