//! What an injected proxy looks like: image, ports, control-plane addresses, defaults.

/// The proxy's four ports (Linkerd's numbers; see the ports table in `ARCHITECTURE.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyPorts {
    /// Where iptables sends the pod's incoming TCP.
    pub inbound: u16,
    /// Where iptables sends the app's outgoing TCP.
    pub outbound: u16,
    /// Metrics and probes (`/ready`, `/live`); the kubelet probes it, so it binds all addresses.
    pub admin: u16,
    /// Linkerd's tap port: reserved, never redirected.
    pub control: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            inbound: 4143,
            outbound: 4140,
            admin: 4191,
            control: 4190,
        }
    }
}

/// Everything the patch needs besides the pod and its namespace's annotations.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// The control plane's namespace (`linkerd`).
    pub control_plane_ns: String,
    /// The DNS suffix of the cluster (`cluster.local`).
    pub cluster_domain: String,
    /// The identity trust domain (`cluster.local`).
    pub trust_domain: String,
    /// Proxy image without tag; `config.linkerd.io/proxy-image` overrides it.
    pub proxy_image: String,
    /// The proxy image tag; `config.linkerd.io/proxy-version` overrides it.
    pub proxy_version: String,
    /// The mesh's trust anchors, PEM, written inline into every proxy's environment.
    pub trust_anchors_pem: String,
    pub identity_svc_addr: String,
    pub identity_svc_name: String,
    pub destination_svc_addr: String,
    pub destination_svc_name: String,
    pub policy_svc_addr: String,
    pub policy_svc_name: String,
    pub ports: ProxyPorts,
    /// The proxy's uid; iptables lets its traffic through unredirected.
    pub proxy_uid: i64,
    /// The uid the iptables init container runs as (not root; it gets NET_ADMIN and NET_RAW).
    pub init_uid: i64,
    /// Ports whose clients do not speak first, narrowed per pod to the ports it exposes.
    pub default_opaque_ports: String,
    pub default_inbound_policy: String,
    /// `LINKERD2_PROXY_LOG` unless `config.linkerd.io/proxy-log-level` says otherwise.
    pub default_log_level: String,
    /// Networks treated as in-cluster (profile lookups, policy).
    pub cluster_networks: String,
    /// Value of the `linkerd.io/created-by` annotation.
    pub created_by: String,
    /// iptables binaries the init step runs (Linkerd's default mode is nft).
    pub firewall_bin: String,
    pub firewall_save_bin: String,
    /// Also redirect IPv6 (ip6tables). Off by default, as in Linkerd's chart.
    pub ipv6: bool,
    /// The path of the proxy binary inside the proxy image (the init step runs it as `init`).
    pub proxy_bin: String,
}

impl InjectConfig {
    /// Linkerd's defaults for control-plane namespace `linkerd` and domain `cluster.local`.
    pub fn new(trust_anchors_pem: impl Into<String>) -> Self {
        Self::for_namespace("linkerd", "cluster.local", trust_anchors_pem)
    }

    /// The defaults for a control plane in `ns` of a cluster whose DNS and trust domain is
    /// `domain`.
    pub fn for_namespace(ns: &str, domain: &str, trust_anchors_pem: impl Into<String>) -> Self {
        let id = |sa: &str| format!("{sa}.{ns}.serviceaccount.identity.{ns}.{domain}");
        Self {
            control_plane_ns: ns.into(),
            cluster_domain: domain.into(),
            trust_domain: domain.into(),
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            proxy_version: env!("CARGO_PKG_VERSION").into(),
            trust_anchors_pem: trust_anchors_pem.into(),
            identity_svc_addr: format!("linkerd-identity-headless.{ns}.svc.{domain}.:8080"),
            identity_svc_name: id("linkerd-identity"),
            destination_svc_addr: format!("linkerd-dst-headless.{ns}.svc.{domain}.:8086"),
            destination_svc_name: id("linkerd-destination"),
            policy_svc_addr: format!("linkerd-policy.{ns}.svc.{domain}.:8090"),
            // Linkerd runs its policy controller in the destination pod, so its proxies expect
            // the destination's identity here; ours is its own Deployment with its own
            // ServiceAccount (deploy/base/policy.yaml), so the identity is linkerd-policy's.
            // A test in mesh/src/install checks each name against the pods behind its address.
            policy_svc_name: id("linkerd-policy"),
            ports: ProxyPorts::default(),
            proxy_uid: 2102,
            init_uid: 65534,
            default_opaque_ports: "25,587,3306,4444,5432,6379,9300,11211".into(),
            default_inbound_policy: "all-unauthenticated".into(),
            default_log_level: "warn,linkerd_proxy=info".into(),
            cluster_networks: "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8"
                .into(),
            created_by: format!("mesh/injector {}", env!("CARGO_PKG_VERSION")),
            firewall_bin: "iptables-nft".into(),
            firewall_save_bin: "iptables-nft-save".into(),
            ipv6: false,
            proxy_bin: PROXY_BIN.into(),
        }
    }

    /// `linkerd.io/trust-root-sha256`: hex SHA-256 of the anchors PEM as written.
    pub fn trust_root_sha256(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.trust_anchors_pem.as_bytes());
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The registry the images are named under by default: the local registry of kind's documented
/// setup (deploy/README.md), so an unqualified name never resolves to an image someone else
/// published on Docker Hub. `mesh install --registry` and `--proxy-image` name another.
pub const DEFAULT_REGISTRY: &str = "localhost:5001";
/// The proxy image `deploy/Dockerfile` builds (target `proxy`).
pub const DEFAULT_PROXY_IMAGE: &str = "localhost:5001/mesh/proxy";
/// The control-plane image `deploy/Dockerfile` builds (target `controller`).
pub const DEFAULT_CONTROLLER_IMAGE: &str = "localhost:5001/mesh/controller";
/// Where the proxy image keeps the proxy binary (as Linkerd's image does).
pub const PROXY_BIN: &str = "/usr/lib/linkerd/linkerd-proxy";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_images_are_under_the_default_registry() {
        for image in [DEFAULT_PROXY_IMAGE, DEFAULT_CONTROLLER_IMAGE] {
            assert!(
                image.starts_with(&format!("{DEFAULT_REGISTRY}/")),
                "{image}"
            );
        }
    }
}
