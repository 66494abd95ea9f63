//! The proxy's own form of an inbound server policy: converted once per update from the API's
//! messages, with its metric counters resolved, so that a decision is a few comparisons and one
//! atomic increment.

use crate::http::matching::{
    HostMatch, Rank, RequestMatch, RouteRequest, best, grpc_match, host_rank, hosts, http_match,
    metadata_name, rule_rank,
};
use crate::metrics::{AuthzKey, Metrics, Tls};
use proto::api::inbound as api;
use std::{
    net::IpAddr,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// The cluster default policies (`LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`, Linkerd's
/// `config.linkerd.io/default-inbound-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    Deny,
    /// Allows everything (Linkerd records what would have been denied; we allow and count).
    Audit,
}

impl FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "all-unauthenticated" => Self::AllUnauthenticated,
            "all-authenticated" => Self::AllAuthenticated,
            "cluster-unauthenticated" => Self::ClusterUnauthenticated,
            "cluster-authenticated" => Self::ClusterAuthenticated,
            "deny" => Self::Deny,
            "audit" => Self::Audit,
            _ => {
                return Err("expected all-unauthenticated, all-authenticated, \
                            cluster-unauthenticated, cluster-authenticated, deny or audit"
                    .into());
            }
        })
    }
}

impl DefaultPolicy {
    pub fn name(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

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
    fn admits_anonymous(&self) -> bool {
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
    allow: Vec<Arc<AtomicU64>>,
    deny: Arc<AtomicU64>,
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
    tcp_allow: Vec<Arc<AtomicU64>>,
    tcp_deny: Arc<AtomicU64>,
    /// Requests that matched no route (answered 404).
    no_route: Arc<AtomicU64>,
    /// The server's local rate limit, if any.
    pub rate_limit: Option<super::ratelimit::RateLimit>,
    /// Whether any authorization (the server's or a route's) can admit a client without a
    /// verified identity. When none can, the mTLS handshake itself requires a client
    /// certificate.
    pub admits_anonymous: bool,
    /// Routes of the user's own (not the synthesized `default`/`probe`): then the port's
    /// traffic is only ever served as HTTP, never relayed as opaque TCP past them.
    has_user_routes: bool,
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

    /// The local default: what a port gets before (or without) the policy service.
    pub fn default_for(policy: DefaultPolicy, cluster: &[Net], metrics: &Metrics) -> Self {
        let all = vec![
            NetMatch {
                net: Net::ALL_V4,
                except: vec![],
            },
            NetMatch {
                net: Net::ALL_V6,
                except: vec![],
            },
        ];
        let cluster: Vec<NetMatch> = cluster
            .iter()
            .map(|n| NetMatch {
                net: *n,
                except: vec![],
            })
            .collect();
        let authz = |networks: Vec<NetMatch>, authn| {
            vec![Authorization {
                kind: "default".into(),
                name: policy.name().into(),
                networks,
                authn,
            }]
        };
        let authorizations = match policy {
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => {
                authz(all, Authn::Unauthenticated)
            }
            DefaultPolicy::AllAuthenticated => authz(all, Authn::any_identity()),
            DefaultPolicy::ClusterUnauthenticated => authz(cluster, Authn::Unauthenticated),
            DefaultPolicy::ClusterAuthenticated => authz(cluster, Authn::any_identity()),
            DefaultPolicy::Deny => vec![],
        };
        let route = RouteSpec {
            synthesized: true,
            name: "default".into(),
            hosts: vec![],
            matches: vec![],
            authorizations: vec![],
        };
        ServerPolicy::build(
            "default".into(),
            policy.name().into(),
            ServerProtocol::Detect,
            authorizations,
            vec![route],
            metrics,
        )
    }

    fn build(
        kind: Arc<str>,
        name: Arc<str>,
        protocol: ServerProtocol,
        authorizations: Vec<Authorization>,
        routes: Vec<RouteSpec>,
        metrics: &Metrics,
    ) -> Self {
        let key = |proto: &'static str,
                   allow: bool,
                   route: Option<&Arc<str>>,
                   authz: Option<&Authorization>| AuthzKey {
            proto,
            allow,
            srv_kind: kind.clone(),
            srv_name: name.clone(),
            route_name: route.cloned(),
            authz_kind: authz.map(|a| a.kind.clone()),
            authz_name: authz.map(|a| a.name.clone()),
        };
        let tcp_allow = authorizations
            .iter()
            .map(|a| metrics.authz(key("tcp", true, None, Some(a))))
            .collect();
        let tcp_deny = metrics.authz(key("tcp", false, None, None));
        let no_route = metrics.authz(key("http", false, Some(&Arc::from("")), None));
        let has_user_routes = routes.iter().any(|r| !r.synthesized);
        let admits_anonymous = authorizations
            .iter()
            .chain(routes.iter().flat_map(|r| &r.authorizations))
            .any(|a| a.authn.admits_anonymous());
        let routes = routes
            .into_iter()
            .map(|r| {
                let allow = r
                    .authorizations
                    .iter()
                    .chain(&authorizations)
                    .map(|a| metrics.authz(key("http", true, Some(&r.name), Some(a))))
                    .collect();
                let deny = metrics.authz(key("http", false, Some(&r.name), None));
                Route {
                    name: r.name,
                    hosts: r.hosts,
                    matches: r.matches,
                    authorizations: r.authorizations,
                    allow,
                    deny,
                }
            })
            .collect();
        ServerPolicy {
            kind,
            name,
            protocol,
            authorizations,
            routes,
            tcp_allow,
            tcp_deny,
            no_route,
            rate_limit: None,
            admits_anonymous,
            has_user_routes,
        }
    }

    /// Converts the policy service's `Server`. `cluster` is unused by the API (the controller
    /// sends networks explicitly) but kept for symmetry with the defaults.
    pub fn from_api(server: api::Server, metrics: &Metrics) -> Result<Self, String> {
        let kind: Arc<str> = server
            .labels
            .get("kind")
            .map_or("server", String::as_str)
            .into();
        let name: Arc<str> = server
            .labels
            .get("name")
            .map_or("unnamed", String::as_str)
            .into();
        let kind_proto = server
            .protocol
            .and_then(|p| p.kind)
            .ok_or("the server has no protocol")?;
        use api::proxy_protocol::Kind;
        let (protocol, routes, rate_limit) = match kind_proto {
            Kind::Detect(d) => (
                ServerProtocol::Detect,
                http_routes(d.http_routes)?,
                d.http_local_rate_limit,
            ),
            Kind::Http1(h) => (
                ServerProtocol::Http1,
                http_routes(h.routes)?,
                h.local_rate_limit,
            ),
            Kind::Http2(h) => (
                ServerProtocol::Http2,
                http_routes(h.routes)?,
                h.local_rate_limit,
            ),
            // The API has no rate limit for gRPC servers.
            Kind::Grpc(g) => (ServerProtocol::Grpc, grpc_routes(g.routes)?, None),
            Kind::Opaque(_) => (ServerProtocol::Opaque, vec![], None),
            Kind::Tls(_) => (ServerProtocol::Tls, vec![], None),
        };
        // A server with HTTP traffic and no routes gets Linkerd's implicit default route, so
        // that its authorizations apply to every request instead of none matching.
        let routes = if routes.is_empty()
            && !matches!(protocol, ServerProtocol::Opaque | ServerProtocol::Tls)
        {
            vec![RouteSpec {
                synthesized: true,
                name: "default".into(),
                hosts: vec![],
                matches: vec![],
                authorizations: vec![],
            }]
        } else {
            routes
        };
        let authorizations = server
            .authorizations
            .into_iter()
            .map(authorization)
            .collect::<Result<Vec<_>, _>>()?;
        // Linkerd's controller sends an empty limit object when none applies.
        let rate_limit = rate_limit
            .filter(|r| r.total.is_some() || r.identity.is_some() || !r.overrides.is_empty())
            .map(|r| {
                let (_, rl_name) = metadata_name(r.metadata.clone(), "ratelimit");
                let counter = metrics.rate_limited(name.clone(), rl_name);
                super::ratelimit::RateLimit::from_api(r, counter)
            })
            .transpose()?;
        let mut policy = ServerPolicy::build(kind, name, protocol, authorizations, routes, metrics);
        policy.rate_limit = rate_limit;
        Ok(policy)
    }
}

/// A route before its counters are resolved.
struct RouteSpec {
    /// Made up by the policy service or the proxy (`default`, `probe`), not a user's route.
    synthesized: bool,
    name: Arc<str>,
    hosts: Vec<HostMatch>,
    matches: Vec<RequestMatch>,
    authorizations: Vec<Authorization>,
}

fn net(n: proto::api::net::IpNetwork) -> Result<Net, String> {
    let ip = n.ip.ok_or("a network has no address")?;
    let addr = IpAddr::try_from(ip).map_err(|e| format!("a network address: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = u8::try_from(n.prefix_len)
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("prefix length {} for {addr}", n.prefix_len))?;
    Ok(Net { addr, prefix })
}

fn authorization(a: api::Authz) -> Result<Authorization, String> {
    let (kind, name) = metadata_name(
        a.metadata,
        a.labels.get("name").map_or("unnamed", String::as_str),
    );
    let networks = a
        .networks
        .into_iter()
        .map(|n| {
            Ok(NetMatch {
                net: net(n.net.ok_or("a network is empty")?)?,
                except: n
                    .except
                    .into_iter()
                    .map(net)
                    .collect::<Result<_, String>>()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    use api::authn::{Permit, permit_mesh_tls::Clients};
    let authn = match a
        .authentication
        .and_then(|a| a.permit)
        .ok_or_else(|| format!("authorization {name} has no authentication"))?
    {
        Permit::Unauthenticated(_) => Authn::Unauthenticated,
        Permit::MeshTls(m) => match m.clients {
            Some(Clients::Unauthenticated(_)) => Authn::TlsUnauthenticated,
            // Fail closed: an authorization that does not say which clients it admits.
            None => return Err(format!("authorization {name} names no mesh TLS clients")),
            Some(Clients::Identities(ids)) => Authn::MeshTls {
                identities: ids.identities.into_iter().map(|i| i.name).collect(),
                suffixes: ids
                    .suffixes
                    .into_iter()
                    .map(|s| s.parts.join("."))
                    .collect(),
            },
        },
    };
    Ok(Authorization {
        kind,
        name,
        networks,
        authn,
    })
}

fn http_routes(routes: Vec<api::HttpRoute>) -> Result<Vec<RouteSpec>, String> {
    routes
        .into_iter()
        .map(|r| {
            let (kind, name) = metadata_name(r.metadata, "unnamed");
            let mut matches = Vec::new();
            for rule in r.rules {
                if rule.matches.is_empty() {
                    matches.push(RequestMatch::default());
                }
                for m in rule.matches {
                    matches.push(http_match(m)?);
                }
            }
            Ok(RouteSpec {
                synthesized: &*kind == "default",
                name,
                hosts: hosts(r.hosts),
                matches,
                authorizations: r
                    .authorizations
                    .into_iter()
                    .map(authorization)
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

fn grpc_routes(routes: Vec<api::GrpcRoute>) -> Result<Vec<RouteSpec>, String> {
    routes
        .into_iter()
        .map(|r| {
            let (kind, name) = metadata_name(r.metadata, "unnamed");
            let mut matches = Vec::new();
            for rule in r.rules {
                if rule.matches.is_empty() {
                    matches.push(RequestMatch::default());
                }
                for m in rule.matches {
                    matches.push(grpc_match(m)?);
                }
            }
            Ok(RouteSpec {
                synthesized: &*kind == "default",
                name,
                hosts: hosts(r.hosts),
                matches,
                authorizations: r
                    .authorizations
                    .into_iter()
                    .map(authorization)
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}
