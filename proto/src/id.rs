//! Workload identity names.

use std::{fmt, str::FromStr};

/// A DNS-like workload identity, e.g.
/// `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityName(String);

/// The parts of a service-account identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountId<'a> {
    pub service_account: &'a str,
    pub namespace: &'a str,
    pub control_plane_ns: &'a str,
    pub trust_domain: &'a str,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("identity name is empty")]
    Empty,
    #[error("identity name is longer than 253 characters")]
    TooLong,
    #[error(
        "label {0:?} is not a DNS-1123 label (lowercase letters, digits and '-', 1-63 characters, alphanumeric at both ends)"
    )]
    BadLabel(String),
    #[error(
        "{0:?} is not a service-account identity (<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>)"
    )]
    NotServiceAccount(String),
}

impl IdentityName {
    /// Builds the identity of a Kubernetes service account.
    pub fn service_account(
        sa: &str,
        ns: &str,
        control_plane_ns: &str,
        trust_domain: &str,
    ) -> Result<Self, InvalidName> {
        format!("{sa}.{ns}.serviceaccount.identity.{control_plane_ns}.{trust_domain}").parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Splits a service-account identity into its parts.
    pub fn service_account_parts(&self) -> Result<ServiceAccountId<'_>, InvalidName> {
        let not_sa = || InvalidName::NotServiceAccount(self.0.clone());
        let mut labels = self.0.splitn(5, '.');
        let sa = labels.next().ok_or_else(not_sa)?;
        let ns = labels.next().ok_or_else(not_sa)?;
        if labels.next() != Some("serviceaccount") || labels.next() != Some("identity") {
            return Err(not_sa());
        }
        let rest = labels.next().ok_or_else(not_sa)?;
        let (cp_ns, trust_domain) = rest.split_once('.').ok_or_else(not_sa)?;
        Ok(ServiceAccountId {
            service_account: sa,
            namespace: ns,
            control_plane_ns: cp_ns,
            trust_domain,
        })
    }
}

impl FromStr for IdentityName {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(InvalidName::Empty);
        }
        if s.len() > 253 {
            return Err(InvalidName::TooLong);
        }
        for label in s.split('.') {
            if !is_dns_label(label) {
                return Err(InvalidName::BadLabel(label.to_string()));
            }
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_splits_service_account_names() {
        let id =
            IdentityName::service_account("web", "emojivoto", "linkerd", "cluster.local").unwrap();
        assert_eq!(
            id.as_str(),
            "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
        );
        let p = id.service_account_parts().unwrap();
        assert_eq!(p.service_account, "web");
        assert_eq!(p.namespace, "emojivoto");
        assert_eq!(p.control_plane_ns, "linkerd");
        assert_eq!(p.trust_domain, "cluster.local");
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!("".parse::<IdentityName>(), Err(InvalidName::Empty));
        assert!(matches!(
            "Web.ns".parse::<IdentityName>(),
            Err(InvalidName::BadLabel(_))
        ));
        assert!(matches!(
            "a..b".parse::<IdentityName>(),
            Err(InvalidName::BadLabel(_))
        ));
        assert!(matches!(
            "-a.b".parse::<IdentityName>(),
            Err(InvalidName::BadLabel(_))
        ));
        assert!(matches!(
            "x".repeat(64).parse::<IdentityName>(),
            Err(InvalidName::BadLabel(_))
        ));
        let long = vec!["a"; 130].join(".");
        assert_eq!(long.parse::<IdentityName>(), Err(InvalidName::TooLong));
        let plain: IdentityName = "web.example.com.".parse().unwrap();
        assert_eq!(plain.as_str(), "web.example.com");
        assert!(plain.service_account_parts().is_err());
    }
}
