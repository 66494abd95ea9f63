//! What the sources say, in one [`State`]: workloads (pods), services, namespaces and the
//! policy resources of [`crate::resources`]. No proto, no kube client.

use crate::resources::{
    AuthorizationPolicySpec, GRPCRouteSpec, HTTPLocalRateLimitPolicySpec, HTTPRouteSpec,
    MeshTLSAuthenticationSpec, NetworkAuthenticationSpec, ServerSpec,
};
use ipnet::IpNet;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

/// `(namespace, name)`.
pub type Key = (String, String);

/// The annotation naming a pod's or namespace's default inbound policy.
pub const DEFAULT_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";
/// Ports whose traffic is opaque (pod or namespace annotation).
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";
/// Ports that accept only mesh TLS clients.
pub const REQUIRE_ID_ANNOTATION: &str = "config.linkerd.io/proxy-require-identity-inbound-ports";

/// A pod (or, in the registry, a workload): what Servers select and what the proxy's
/// `LINKERD2_PROXY_POLICY_WORKLOAD` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: Option<String>,
    /// Named container ports.
    pub named_ports: BTreeMap<String, u16>,
    /// HTTP probe paths by port (kubelet probes; the synthesized `probe` route).
    pub probes: BTreeMap<u16, BTreeSet<String>>,
}

/// A Service: the parent of outbound routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: BTreeSet<u16>,
    pub opaque_ports: BTreeSet<u16>,
    /// `balancer.linkerd.io/*`, `retry.linkerd.io/*`, `timeout.linkerd.io/*`.
    pub annotations: BTreeMap<String, String>,
}

/// A resource's metadata as the index uses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    /// Orders routes: the creation timestamp in seconds (Kubernetes), the position in the
    /// file (registry). Ties break on the name.
    pub created: i64,
    pub annotations: BTreeMap<String, String>,
}

/// A resource: metadata plus spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Res<T> {
    pub meta: Meta,
    pub spec: T,
}

/// Everything the index computes policies from. Sources replace it whole (registry) or edit
/// it object by object (Kubernetes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub workloads: BTreeMap<Key, Workload>,
    pub services: BTreeMap<Key, Service>,
    /// Namespace annotations (`config.linkerd.io/default-inbound-policy`, opaque ports).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub servers: BTreeMap<Key, Res<ServerSpec>>,
    pub authorization_policies: BTreeMap<Key, Res<AuthorizationPolicySpec>>,
    pub mesh_tls_authentications: BTreeMap<Key, Res<MeshTLSAuthenticationSpec>>,
    pub network_authentications: BTreeMap<Key, Res<NetworkAuthenticationSpec>>,
    pub rate_limits: BTreeMap<Key, Res<HTTPLocalRateLimitPolicySpec>>,
    pub http_routes: BTreeMap<Key, Res<HTTPRouteSpec>>,
    pub grpc_routes: BTreeMap<Key, Res<GRPCRouteSpec>>,
}

pub use proto::policy::DefaultPolicy;

/// Cluster-wide settings the index needs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub default_policy: DefaultPolicy,
    /// The `cluster-*` policies' networks.
    pub cluster_networks: Vec<IpNet>,
    /// Who may reach the synthesized probe routes (default: everyone).
    pub probe_networks: Vec<IpNet>,
    /// The protocol detection timeout in inbound `Detect` (Linkerd's default 10 s).
    pub detect_timeout: Duration,
    /// Service names are `<svc>.<ns>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Identities are `<sa>.<ns>.serviceaccount.identity.<control_plane_ns>.<trust_domain>`.
    pub control_plane_ns: String,
    pub trust_domain: String,
}

// === impl ClusterConfig ===

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: default_cluster_networks(),
            probe_networks: all_networks(),
            detect_timeout: Duration::from_secs(10),
            cluster_domain: "cluster.local".into(),
            control_plane_ns: "linkerd".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

impl ClusterConfig {
    /// The identity of a service account.
    pub fn identity(&self, sa: &str, ns: &str) -> String {
        format!(
            "{sa}.{ns}.serviceaccount.identity.{}.{}",
            self.control_plane_ns, self.trust_domain
        )
    }

    /// `<svc>.<ns>.svc.<domain>:<port>`.
    pub fn authority(&self, ns: &str, svc: &str, port: u16) -> String {
        format!("{svc}.{ns}.svc.{}:{port}", self.cluster_domain)
    }
}

/// `0.0.0.0/0` and `::/0`.
pub fn all_networks() -> Vec<IpNet> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Linkerd's default `clusterNetworks`.
pub fn default_cluster_networks() -> Vec<IpNet> {
    proto::policy::DEFAULT_CLUSTER_NETWORKS
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A CIDR or a single address (`10.0.0.1` is `10.0.0.1/32`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a network (CIDR) or an address"))
}

/// A comma-separated network list (`--cluster-networks`).
pub fn parse_nets(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_net)
        .collect()
}

/// Durations as Linkerd and the Gateway API write them (`10s`, `500ms`, `1m30s`, `1.5s`,
/// `250us`, `0`): the control plane's one grammar, `linkerd_control::duration`.
pub use linkerd_control::duration::parse as parse_duration;

/// Does `sel` select a pod with `labels`?
pub fn selects(sel: &crate::resources::LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let v = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => v.is_some_and(|v| values.contains(v)),
                "NotIn" => v.is_none_or(|v| !values.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                // An operator we do not know selects nothing (fail closed).
                _ => false,
            }
        })
}

impl Workload {
    /// The workload's identity, if it has a service account.
    pub fn identity(&self, cfg: &ClusterConfig) -> Option<String> {
        self.service_account
            .as_deref()
            .map(|sa| cfg.identity(sa, &self.namespace))
    }
}

/// Shared, immutable state snapshot.
pub type SharedState = Arc<State>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "10x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(parse_net("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert_eq!(parse_nets("10.0.0.0/8, ::1").unwrap().len(), 2);
    }

    #[test]
    fn label_selectors() {
        use crate::resources::{LabelSelector, LabelSelectorRequirement};
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let mut sel = LabelSelector::default();
        assert!(selects(&sel, &labels), "empty selects all");
        sel.match_labels = Some(labels.clone());
        assert!(selects(&sel, &labels));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]);
        assert!(selects(&sel, &labels));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: "NotIn".into(),
            values: Some(vec!["web".into()]),
        }]);
        assert!(!selects(&sel, &labels));
    }
}
