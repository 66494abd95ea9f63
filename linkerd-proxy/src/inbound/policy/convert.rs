//! Building a [`ServerPolicy`]: the local default (`LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`)
//! or the policy service's `Server`, checked and with every counter resolved once per update.

use super::model::*;
use crate::http::matching::{
    HostMatch, RequestMatch, grpc_match, hosts, http_match, metadata_name,
};
use crate::metrics::{AuthzKey, Metrics};
use proto::api::inbound as api;
use std::{net::IpAddr, sync::Arc};

/// The routes of a list of `api::HttpRoute` or `api::GrpcRoute`, whose matches `$convert`
/// converts. (A macro: the two messages are alike in shape only.)
macro_rules! routes {
    ($routes:expr, $convert:expr) => {
        $routes
            .into_iter()
            .map(|r| {
                let rules = r.rules.into_iter().map(|rule| rule.matches);
                route(r.metadata, r.hosts, rules, r.authorizations, $convert)
            })
            .collect::<Result<Vec<RouteSpec>, String>>()
    };
}

impl ServerPolicy {
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
                name: policy.as_str().into(),
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
            policy.as_str().into(),
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
                routes!(d.http_routes, http_match)?,
                d.http_local_rate_limit,
            ),
            Kind::Http1(h) => (
                ServerProtocol::Http1,
                routes!(h.routes, http_match)?,
                h.local_rate_limit,
            ),
            Kind::Http2(h) => (
                ServerProtocol::Http2,
                routes!(h.routes, http_match)?,
                h.local_rate_limit,
            ),
            // The API has no rate limit for gRPC servers.
            Kind::Grpc(g) => (ServerProtocol::Grpc, routes!(g.routes, grpc_match)?, None),
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

/// A route of either kind: a rule without matches matches every request.
fn route<M>(
    metadata: Option<proto::api::meta::Metadata>,
    route_hosts: Vec<proto::api::http_route::HostMatch>,
    rules: impl Iterator<Item = Vec<M>>,
    authorizations: Vec<api::Authz>,
    convert: fn(M) -> Result<RequestMatch, String>,
) -> Result<RouteSpec, String> {
    let (kind, name) = metadata_name(metadata, "unnamed");
    let mut matches = Vec::new();
    for rule in rules {
        if rule.is_empty() {
            matches.push(RequestMatch::default());
        }
        for m in rule {
            matches.push(convert(m)?);
        }
    }
    Ok(RouteSpec {
        synthesized: &*kind == "default",
        name,
        hosts: hosts(route_hosts),
        matches,
        authorizations: authorizations
            .into_iter()
            .map(authorization)
            .collect::<Result<_, _>>()?,
    })
}
