//! What the policy controller and the proxy both read from configuration: Linkerd's default
//! inbound policies and its default cluster networks.

use std::{fmt, str::FromStr};

/// A default inbound policy: the cluster's (`--default-policy`,
/// `LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`), or a pod's or namespace's
/// `config.linkerd.io/default-inbound-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    /// Allows everyone, as `all-unauthenticated` (Linkerd's proxy logs what it would deny;
    /// ours allows and counts).
    Audit,
    Deny,
}

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 6] = [
        Self::AllUnauthenticated,
        Self::AllAuthenticated,
        Self::ClusterUnauthenticated,
        Self::ClusterAuthenticated,
        Self::Audit,
        Self::Deny,
    ];

    /// The name Linkerd's configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Audit => "audit",
            Self::Deny => "deny",
        }
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;

    /// One of the names, surrounding white space ignored.
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a default policy (all-unauthenticated, all-authenticated, \
                     cluster-unauthenticated, cluster-authenticated, audit, deny)"
                )
            })
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Linkerd's default `clusterNetworks`: the networks the `cluster-*` policies admit when none
/// are configured.
pub const DEFAULT_CLUSTER_NETWORKS: [&str; 5] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in DefaultPolicy::ALL {
            assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
            assert_eq!(format!(" {p}\n").parse::<DefaultPolicy>(), Ok(p));
        }
        let e = "allow".parse::<DefaultPolicy>().unwrap_err();
        assert!(e.contains("\"allow\" is not a default policy"), "{e}");
        assert!(e.contains("cluster-authenticated"), "{e}");
    }

    #[test]
    fn default_cluster_networks_parse() {
        for n in DEFAULT_CLUSTER_NETWORKS {
            let (ip, len) = n.split_once('/').unwrap();
            assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{n}");
            assert!(len.parse::<u8>().is_ok(), "{n}");
        }
    }
}
