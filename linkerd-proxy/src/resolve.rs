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
    /// The labels service discovery gave the endpoint (its namespace, service, pod, owner,
    /// service account...), rendered for the outbound metrics as `dst_<key>="<value>"` pairs.
    pub labels: Option<Arc<str>>,
}

/// The current endpoints of a destination; empty when it exists but has none.
pub(crate) type Endpoints = Arc<[Endpoint]>;

/// What a resolver currently knows about a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Discovery has not answered yet.
    Pending,
    /// Discovery says the name does not exist: fall back (original destination, DNS).
    Unknown,
    /// The destination exists with these endpoints (possibly none).
    Ready(Endpoints),
}

/// A statically configured name: `host:port` and its endpoints' addresses and identities.
pub(crate) type StaticName = (String, Vec<(SocketAddr, Option<String>)>);

pub trait Resolve: Send + Sync + 'static {
    /// `None` when the name is not this resolver's to answer (the caller may fall back, e.g. to
    /// DNS). `authority` is lower-case `host:port` with no trailing dot on the host.
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Resolution>>;
}

/// Names configured at startup (`MESH_PROXY_STATIC_ENDPOINTS`).
#[derive(Debug, Default)]
pub(crate) struct StaticResolve {
    names: HashMap<String, watch::Sender<Resolution>>,
}

impl StaticResolve {
    pub(crate) fn new(entries: &[StaticName]) -> Self {
        let names = entries
            .iter()
            .map(|(name, addrs)| {
                let eps: Endpoints = addrs
                    .iter()
                    .map(|(addr, id)| Endpoint {
                        labels: None,
                        addr: *addr,
                        identity: id.as_deref().map(Arc::from),
                    })
                    .collect();
                (
                    name.to_ascii_lowercase(),
                    watch::Sender::new(Resolution::Ready(eps)),
                )
            })
            .collect();
        Self { names }
    }
}

impl Resolve for StaticResolve {
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Resolution>> {
        let key = authority.to_ascii_lowercase();
        self.names.get(&key).map(|tx| tx.subscribe())
    }
}

/// Static names first, then the next resolver (service discovery).
#[derive(Debug)]
pub(crate) struct Chain<A, B>(pub A, pub B);

impl<A: Resolve, B: Resolve> Resolve for Chain<A, B> {
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Resolution>> {
        self.0
            .resolve(authority)
            .or_else(|| self.1.resolve(authority))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no endpoints for {0}")]
    NoEndpoints(String),
    #[error("could not resolve {0}: {1}")]
    Unresolvable(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_resolve_case_insensitively() {
        let r = StaticResolve::new(&[(
            "Web.local:80".into(),
            vec![("127.0.0.2:8080".parse().unwrap(), Some("web.ns".into()))],
        )]);
        let res = r.resolve("web.local:80").unwrap().borrow().clone();
        let Resolution::Ready(eps) = res else {
            panic!("not ready: {res:?}")
        };
        assert_eq!(eps[0].addr, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(eps[0].identity.as_deref(), Some("web.ns"));
        assert!(r.resolve("other:80").is_none());
        let chained = Chain(StaticResolve::default(), r);
        assert!(chained.resolve("web.local:80").is_some());
        assert!(chained.resolve("web.local:81").is_none());
    }
}
