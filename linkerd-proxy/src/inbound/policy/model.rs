//! The proxy's own form of an inbound server policy (built once per update by `convert`, with
//! its metric counters resolved), so that a decision is a few comparisons and one atomic
//! increment.

use crate::http::matching::{
    HostMatch, Rank, RequestMatch, RouteRequest, best, host_rank, rule_rank,
};
use crate::metrics::Tls;
use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

pub use proto::policy::DefaultPolicy;

pub use crate::transport::Net;

/// Client networks an authorization applies to, with exceptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetMatch {
    pub net: Net,
    pub except: Vec<Net>,
}

impl NetMatch {
    fn matches(&self, ip: IpAddr) -> bool {
        self.net.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// Who an authorization admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authn {
    /// Anyone, with or without mTLS.
    Unauthenticated,
    /// Any client whose TLS this proxy terminated, even one that presented no certificate (the
    /// API's `PermitMeshTLS { clients: Unauthenticated }`, e.g. proxies that are still asking
    /// the identity service for their first certificate).
    TlsUnauthenticated,
    /// mTLS clients with a verified identity: one of these identities or under one of these
    /// suffixes (`["ns", "serviceaccount", ...]` means `*.ns.serviceaccount...`; an empty suffix,
    /// any verified identity). A TLS client without a certificate is never admitted.
    MeshTls {
        identities: Vec<String>,
        suffixes: Vec<String>,
    },
}

impl Authn {
    /// Any verified client identity: what `all-authenticated` and `cluster-authenticated` mean.
    pub fn any_identity() -> Self {
        Authn::MeshTls {
            identities: vec![],
            suffixes: vec![String::new()],
        }
    }

    fn admits(&self, tls: &Tls) -> bool {
        match (self, tls) {
            (Authn::Unauthenticated, _) => true,
            (_, Tls::None(_)) => false,
            (Authn::TlsUnauthenticated, Tls::Established { .. }) => true,
            (
                Authn::MeshTls {
                    identities,
                    suffixes,
                },
                Tls::Established { peer_id },
            ) => {
                let Some(id) = peer_id.as_deref() else {
                    return false;
                };
                identities.iter().any(|i| i == id)
                    || suffixes.iter().any(|s| {
                        s.is_empty()
                            || (id.len() > s.len()
                                && id.ends_with(s.as_str())
                                && id.as_bytes()[id.len() - s.len() - 1] == b'.')
                    })
            }
        }
    }

    /// Whether a client that presents no certificate can ever be admitted.
    pub(super) fn admits_anonymous(&self) -> bool {
        matches!(self, Authn::Unauthenticated | Authn::TlsUnauthenticated)
    }
}

/// One authorization: its name (for metrics), networks and authentication.
#[derive(Debug)]
pub struct Authorization {
    pub kind: Arc<str>,
    pub name: Arc<str>,
    pub networks: Vec<NetMatch>,
    pub authn: Authn,
}

impl Authorization {
    fn admits(&self, client: IpAddr, tls: &Tls) -> bool {
        // No networks: the authorization is ignored (the API's rule).
        self.networks.iter().any(|n| n.matches(client)) && self.authn.admits(tls)
    }
}

/// An inbound route: the requests it matches and the authorizations it adds to the server's.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub hosts: Vec<HostMatch>,
    /// Any rule's matches (one of them) select the route; no matches match everything.
    pub matches: Vec<RequestMatch>,
    pub authorizations: Vec<Authorization>,
    /// Allow counters for the route's authorizations then the server's, in that order.
    pub(super) allow: Vec<Arc<AtomicU64>>,
    pub(super) deny: Arc<AtomicU64>,
}

impl Route {
    /// How specifically the route matches `req` (its hosts, then its best match).
    fn rank(&self, req: &RouteRequest<'_>) -> Option<Rank> {
        Some(Rank {
            host: host_rank(&self.hosts, req.host)?,
            request: rule_rank(&self.matches, req)?,
        })
    }
}

/// How the server's traffic is to be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerProtocol {
    Detect,
    Http1,
    Http2,
    Grpc,
    Opaque,
    Tls,
}

/// The policy of one inbound port.
#[derive(Debug)]
pub struct ServerPolicy {
    pub kind: Arc<str>,
    pub name: Arc<str>,
    pub protocol: ServerProtocol,
    pub authorizations: Vec<Authorization>,
    pub routes: Vec<Route>,
    pub(super) tcp_allow: Vec<Arc<AtomicU64>>,
    pub(super) tcp_deny: Arc<AtomicU64>,
    /// Requests that matched no route (answered 404).
    pub(super) no_route: Arc<AtomicU64>,
    /// The server's local rate limit, if any.
    pub rate_limit: Option<super::ratelimit::RateLimit>,
    /// Whether any authorization (the server's or a route's) can admit a client without a
    /// verified identity. When none can, the mTLS handshake itself requires a client
    /// certificate.
    pub admits_anonymous: bool,
    /// Routes of the user's own (not the synthesized `default`/`probe`): then the port's
    /// traffic is only ever served as HTTP, never relayed as opaque TCP past them.
    pub(super) has_user_routes: bool,
}

/// What to do with an HTTP request.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpDecision {
    Allow,
    /// Not authorized on this route (403, or gRPC `PERMISSION_DENIED`).
    Deny {
        route: Arc<str>,
    },
    /// No route matches (404).
    NoRoute,
}

impl ServerPolicy {
    /// Whether the port's connections must be served as HTTP whatever detection finds: the
    /// server declares an HTTP protocol, or the policy has something only HTTP can enforce
    /// (routes of the user's, a rate limit). Opaque TCP would skip all of it, and the stripping
    /// of a forged `l5d-client-id`.
    pub fn requires_http(&self) -> bool {
        matches!(
            self.protocol,
            ServerProtocol::Http1 | ServerProtocol::Http2 | ServerProtocol::Grpc
        ) || self.has_user_routes
            || self.rate_limit.is_some()
    }

    /// Whether an opaque connection from `client` may proceed.
    pub fn authorize_tcp(&self, client: IpAddr, tls: &Tls) -> bool {
        match self
            .authorizations
            .iter()
            .position(|a| a.admits(client, tls))
        {
            Some(i) => {
                self.tcp_allow[i].fetch_add(1, Ordering::Relaxed);
                true
            }
            None => {
                self.tcp_deny.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The decision for one request: the most specific route that matches (Gateway API
    /// precedence, the first on ties), then the route's and the server's authorizations.
    pub fn authorize_http(
        &self,
        client: IpAddr,
        tls: &Tls,
        req: &RouteRequest<'_>,
    ) -> HttpDecision {
        let Some((_, route)) = best(self.routes.iter().filter_map(|r| Some((r.rank(req)?, r))))
        else {
            self.no_route.fetch_add(1, Ordering::Relaxed);
            return HttpDecision::NoRoute;
        };
        let admitted = route
            .authorizations
            .iter()
            .chain(&self.authorizations)
            .position(|a| a.admits(client, tls));
        match admitted {
            Some(i) => {
                route.allow[i].fetch_add(1, Ordering::Relaxed);
                HttpDecision::Allow
            }
            None => {
                route.deny.fetch_add(1, Ordering::Relaxed);
                HttpDecision::Deny {
                    route: route.name.clone(),
                }
            }
        }
    }
}
