//! Resolving a logical destination to endpoints: the seam where service discovery plugs in.
//!
//! The outbound path asks a [`Resolve`] for the endpoints of a logical name (`host:port`) and
//! receives a [`watch::Receiver`], so a discovery client can push endpoint changes to every
//! connection using the name. The [`StaticResolve`] here serves names configured at startup
//! (local mode); the destination client implements the same trait.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};
use tokio::sync::watch;

/// One endpoint of a logical destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The TLS identity the endpoint's proxy presents, when it is meshed.
    pub identity: Option<Arc<str>>,
}

/// The current endpoints of a destination; empty when it exists but has none.
pub type Endpoints = Arc<[Endpoint]>;

/// A statically configured name: `host:port` and its endpoints' addresses and identities.
pub type StaticName = (String, Vec<(SocketAddr, Option<String>)>);

pub trait Resolve: Send + Sync + 'static {
    /// `None` when the name is unknown to this resolver (the caller may fall back, e.g. to DNS).
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Endpoints>>;
}

/// Names configured at startup (`MESH_PROXY_STATIC_ENDPOINTS`).
#[derive(Debug, Default)]
pub struct StaticResolve {
    names: HashMap<String, watch::Sender<Endpoints>>,
}

impl StaticResolve {
    pub fn new(entries: &[StaticName]) -> Self {
        let names = entries
            .iter()
            .map(|(name, addrs)| {
                let eps: Endpoints = addrs
                    .iter()
                    .map(|(addr, id)| Endpoint {
                        addr: *addr,
                        identity: id.as_deref().map(Arc::from),
                    })
                    .collect();
                (name.clone(), watch::Sender::new(eps))
            })
            .collect();
        Self { names }
    }
}

impl Resolve for StaticResolve {
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Endpoints>> {
        let key = authority.trim_end_matches('.').to_ascii_lowercase();
        self.names.get(&key).map(|tx| tx.subscribe())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no endpoints for {0}")]
    NoEndpoints(String),
    #[error("could not resolve {0}: {1}")]
    Unresolvable(String, String),
}

/// Finds an endpoint for a logical `host:port`: from the resolver when it knows the name,
/// otherwise the address itself when the host is an IP, otherwise DNS.
pub async fn endpoint_for(
    resolve: &dyn Resolve,
    authority: &str,
) -> Result<Endpoint, ResolveError> {
    if let Some(rx) = resolve.resolve(authority) {
        let eps = rx.borrow().clone();
        return pick(&eps)
            .cloned()
            .ok_or_else(|| ResolveError::NoEndpoints(authority.to_string()));
    }
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(Endpoint {
            addr,
            identity: None,
        });
    }
    let mut addrs = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| ResolveError::Unresolvable(authority.to_string(), e.to_string()))?;
    addrs
        .next()
        .map(|addr| Endpoint {
            addr,
            identity: None,
        })
        .ok_or_else(|| ResolveError::Unresolvable(authority.to_string(), "no addresses".into()))
}

/// Picks an endpoint uniformly at random. Latency-aware balancing (power of two choices over
/// peak EWMA) replaces this when the destination client lands (issue #4).
pub fn pick(endpoints: &[Endpoint]) -> Option<&Endpoint> {
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        n => endpoints.get(fastrand::usize(..n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_resolve_case_insensitively() {
        let r = StaticResolve::new(&[(
            "web.local:80".into(),
            vec![("127.0.0.2:8080".parse().unwrap(), Some("web.ns".into()))],
        )]);
        let rx = r.resolve("WEB.local.:80").map(|rx| rx.borrow().clone());
        // A trailing dot on the host is not a trailing dot on the authority; only exact names.
        assert!(rx.is_none());
        let eps = r.resolve("Web.Local:80").unwrap().borrow().clone();
        assert_eq!(eps[0].addr, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(eps[0].identity.as_deref(), Some("web.ns"));
        assert!(r.resolve("other:80").is_none());
    }

    #[test]
    fn pick_spreads_over_endpoints() {
        let eps: Vec<Endpoint> = (1..=3)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([127, 0, 0, i], 80)),
                identity: None,
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(pick(&eps).unwrap().addr);
        }
        assert_eq!(seen.len(), 3);
        assert!(pick(&[]).is_none());
    }
}
