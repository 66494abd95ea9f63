//! The inbound `Server` for one workload port: the Server resource that selects it (with its
//! routes, authorizations and rate limit), or the default policy with the synthesized
//! `default` and `probe` routes.

use crate::{
    model::{
        ClusterConfig, DEFAULT_POLICY_ANNOTATION, DefaultPolicy, Key, Meta,
        OPAQUE_PORTS_ANNOTATION, REQUIRE_ID_ANNOTATION, Res, State, Workload, all_networks,
        parse_net, selects,
    },
    resources::{AuthorizationPolicySpec, ObjectRef, Port, ServerSpec},
    routes::{
        self, GrpcFilter, HttpFilter, POLICY_GROUP, default_meta, match_all, pb_duration,
        resource_meta,
    },
};
use ipnet::IpNet;
use proto::api::{
    http_route::{HttpRouteMatch, PathMatch, path_match},
    inbound::{
        Authn, Authz, GrpcRoute, HttpLocalRateLimit, HttpRoute, Identity, IdentitySuffix, Network,
        ProxyProtocol, Server, authn, grpc_route, http_local_rate_limit, http_route,
        proxy_protocol,
    },
};
use std::collections::{BTreeSet, HashMap};

/// The proxy protocol names a Server accepts.
pub const PROTOCOLS: [&str; 6] = ["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"];

/// The `Server` message for `port` of `workload`; `None` if the workload is unknown.
pub fn server(state: &State, cfg: &ClusterConfig, workload: &Key, port: u16) -> Option<Server> {
    let wl = state.workloads.get(workload)?;
    Some(match selecting_server(state, wl, port) {
        Some(srv) => from_server(state, cfg, wl, port, srv),
        None => default_server(state, cfg, wl, port),
    })
}

/// The oldest Server in the workload's namespace that selects it on `port`.
pub fn selecting_server<'a>(
    state: &'a State,
    wl: &Workload,
    port: u16,
) -> Option<&'a Res<ServerSpec>> {
    state
        .servers
        .range((wl.namespace.clone(), String::new())..)
        .take_while(|((ns, _), _)| *ns == wl.namespace)
        .map(|(_, s)| s)
        .filter(|s| selects(&s.spec.pod_selector, &wl.labels))
        .filter(|s| match &s.spec.port {
            Port::Number(n) => *n == port,
            Port::Name(name) => wl.named_ports.get(name) == Some(&port),
        })
        .min_by(|a, b| order(&a.meta, &b.meta))
}

/// Oldest first, then by namespace and name: the Gateway API's tie-break between routes
/// (and Linkerd's between Servers).
fn order(a: &Meta, b: &Meta) -> std::cmp::Ordering {
    (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
}

fn labels(group: &str, kind: &str, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("group".to_string(), group.to_string()),
        ("kind".to_string(), kind.to_string()),
        ("name".to_string(), name.to_string()),
    ])
}

fn networks(nets: &[IpNet]) -> Vec<Network> {
    nets.iter()
        .map(|n| Network {
            net: Some((*n).into()),
            except: vec![],
        })
        .collect()
}

fn unauthenticated() -> Authn {
    Authn {
        permit: Some(authn::Permit::Unauthenticated(
            authn::PermitUnauthenticated {},
        )),
    }
}

/// Mesh TLS with these identities and suffixes (an empty suffix matches every identity).
fn mesh_tls(identities: Vec<String>, suffixes: Vec<Vec<String>>) -> Authn {
    use authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    Authn {
        permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(Clients::Identities(PermitClientIdentities {
                identities: identities
                    .into_iter()
                    .map(|name| Identity { name })
                    .collect(),
                suffixes: suffixes
                    .into_iter()
                    .map(|parts| IdentitySuffix { parts })
                    .collect(),
            })),
        })),
    }
}

fn default_authz(name: &str, nets: &[IpNet], authentication: Authn) -> Authz {
    Authz {
        networks: networks(nets),
        authentication: Some(authentication),
        labels: labels("", "default", name),
        metadata: Some(default_meta(name)),
    }
}

// === Server resources ===

fn from_server(
    state: &State,
    cfg: &ClusterConfig,
    wl: &Workload,
    port: u16,
    srv: &Res<ServerSpec>,
) -> Server {
    let ns = &srv.meta.namespace;
    let authorizations = state
        .authorization_policies
        .values()
        .filter(|ap| ap.meta.namespace == *ns)
        .filter(|ap| {
            let t = &ap.spec.target_ref;
            (is_kind(t, POLICY_GROUP, "Server") && t.name == srv.meta.name)
                || (is_kind(t, "", "Namespace") && t.name == *ns)
        })
        .filter_map(|ap| policy_authz(state, cfg, ap))
        .collect();
    let rate_limit = state
        .rate_limits
        .values()
        .filter(|rl| rl.meta.namespace == *ns)
        .filter(|rl| {
            is_kind(&rl.spec.target_ref, POLICY_GROUP, "Server")
                && rl.spec.target_ref.name == srv.meta.name
        })
        .min_by(|a, b| order(&a.meta, &b.meta))
        .map(|rl| HttpLocalRateLimit {
            metadata: Some(resource_meta(
                POLICY_GROUP,
                "HTTPLocalRateLimitPolicy",
                &rl.meta,
            )),
            total: rl.spec.total.as_ref().map(limit),
            identity: rl.spec.identity.as_ref().map(limit),
            overrides: rl
                .spec
                .overrides
                .iter()
                .flatten()
                .map(|o| http_local_rate_limit::Override {
                    limit: Some(http_local_rate_limit::Limit {
                        requests_per_second: o.requests_per_second,
                    }),
                    clients: Some(http_local_rate_limit::r#override::ClientIdentities {
                        identities: o
                            .client_refs
                            .iter()
                            .filter(|r| r.kind == "ServiceAccount")
                            .map(|r| Identity {
                                name: cfg.identity(&r.name, r.namespace.as_deref().unwrap_or(ns)),
                            })
                            .collect(),
                    }),
                })
                .collect(),
        });
    let http = || {
        let mut routes = http_routes(state, cfg, srv);
        if routes.is_empty() {
            routes = synthesized_routes(cfg, wl, port);
        }
        routes
    };
    let kind = match srv.spec.proxy_protocol.as_deref().unwrap_or("unknown") {
        "HTTP/1" => proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
            routes: http(),
            local_rate_limit: rate_limit,
        }),
        "HTTP/2" => proxy_protocol::Kind::Http2(proxy_protocol::Http2 {
            routes: http(),
            local_rate_limit: rate_limit,
        }),
        "gRPC" => proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
            routes: grpc_routes(state, cfg, srv),
        }),
        "opaque" => proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {}),
        "TLS" => proxy_protocol::Kind::Tls(proxy_protocol::Tls {}),
        _ => proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: Some(pb_duration(cfg.detect_timeout)),
            http_routes: http(),
            http_local_rate_limit: rate_limit,
        }),
    };
    Server {
        protocol: Some(ProxyProtocol { kind: Some(kind) }),
        server_ips: vec![],
        authorizations,
        labels: labels(POLICY_GROUP, "server", &srv.meta.name),
    }
}

fn limit(l: &crate::resources::Limit) -> http_local_rate_limit::Limit {
    http_local_rate_limit::Limit {
        requests_per_second: l.requests_per_second,
    }
}

/// `group` matches: empty and `core` are the core group.
pub fn is_kind(r: &ObjectRef, group: &str, kind: &str) -> bool {
    let g = r.group.as_deref().unwrap_or("");
    let g = if g == "core" { "" } else { g };
    r.kind.eq_ignore_ascii_case(kind) && (g == group || (g.is_empty() && group == POLICY_GROUP))
}

/// The authorization an AuthorizationPolicy grants, or `None` if it grants nothing (no
/// authentication refs, or one that names a missing resource: fail closed).
pub fn policy_authz(
    state: &State,
    cfg: &ClusterConfig,
    ap: &Res<AuthorizationPolicySpec>,
) -> Option<Authz> {
    let ns = &ap.meta.namespace;
    let mut nets: Option<Vec<(IpNet, Vec<IpNet>)>> = None;
    let mut identities = Vec::new();
    let mut suffixes = Vec::new();
    let mut tls = false;
    if ap.spec.required_authentication_refs.is_empty() {
        return None;
    }
    for r in &ap.spec.required_authentication_refs {
        let rns = r.namespace.clone().unwrap_or_else(|| ns.clone());
        if is_kind(r, "", "ServiceAccount") {
            tls = true;
            identities.push(cfg.identity(&r.name, &rns));
        } else if is_kind(r, POLICY_GROUP, "MeshTLSAuthentication") {
            let m = state
                .mesh_tls_authentications
                .get(&(rns.clone(), r.name.clone()))?;
            tls = true;
            for id in m.spec.identities.iter().flatten() {
                match identity_match(id) {
                    IdMatch::Exact(e) => identities.push(e),
                    IdMatch::Suffix(s) => suffixes.push(s),
                }
            }
            for ir in m.spec.identity_refs.iter().flatten() {
                let irns = ir.namespace.clone().unwrap_or_else(|| rns.clone());
                if is_kind(ir, "", "ServiceAccount") {
                    identities.push(cfg.identity(&ir.name, &irns));
                } else if is_kind(ir, "", "Namespace") {
                    let id = cfg.identity("x", &ir.name);
                    suffixes.push(id.split('.').skip(1).map(String::from).collect());
                }
            }
        } else if is_kind(r, POLICY_GROUP, "NetworkAuthentication") {
            let n = state.network_authentications.get(&(rns, r.name.clone()))?;
            let parsed = n
                .spec
                .networks
                .iter()
                .map(|d| {
                    let net = parse_net(&d.cidr)?;
                    let except = d
                        .except
                        .iter()
                        .flatten()
                        .map(|e| parse_net(e))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((net, except))
                })
                .collect::<Result<Vec<_>, String>>()
                .ok()?;
            nets.get_or_insert_with(Vec::new).extend(parsed);
        } else {
            return None;
        }
    }
    let networks = match nets {
        Some(n) => n
            .into_iter()
            .map(|(net, except)| Network {
                net: Some(net.into()),
                except: except.into_iter().map(Into::into).collect(),
            })
            .collect(),
        None => networks(&all_networks()),
    };
    let authentication = if tls {
        mesh_tls(identities, suffixes)
    } else {
        unauthenticated()
    };
    Some(Authz {
        networks,
        authentication: Some(authentication),
        labels: labels(POLICY_GROUP, "authorizationpolicy", &ap.meta.name),
        metadata: Some(resource_meta(POLICY_GROUP, "AuthorizationPolicy", &ap.meta)),
    })
}

enum IdMatch {
    Exact(String),
    /// Parts in name order (`*.ns.serviceaccount…` → `["ns", "serviceaccount", …]`).
    Suffix(Vec<String>),
}

fn identity_match(id: &str) -> IdMatch {
    if id == "*" {
        IdMatch::Suffix(vec![])
    } else if let Some(s) = id.strip_prefix("*.") {
        IdMatch::Suffix(s.split('.').map(String::from).collect())
    } else {
        IdMatch::Exact(id.to_string())
    }
}

fn parents_server(
    parents: &[crate::resources::ParentRef],
    route_ns: &str,
    srv: &Res<ServerSpec>,
) -> bool {
    parents.iter().any(|p| {
        p.group.as_deref() == Some(POLICY_GROUP)
            && p.kind.as_deref() == Some("Server")
            && p.name == srv.meta.name
            && p.namespace.as_deref().unwrap_or(route_ns) == srv.meta.namespace
    })
}

fn route_authz(
    state: &State,
    cfg: &ClusterConfig,
    kind: &str,
    meta: &Meta,
) -> Vec<proto::api::inbound::Authz> {
    state
        .authorization_policies
        .values()
        .filter(|ap| ap.meta.namespace == meta.namespace)
        .filter(|ap| {
            is_kind(&ap.spec.target_ref, routes::GATEWAY_GROUP, kind)
                && ap.spec.target_ref.name == meta.name
        })
        .filter_map(|ap| policy_authz(state, cfg, ap))
        .collect()
}

fn http_routes(state: &State, cfg: &ClusterConfig, srv: &Res<ServerSpec>) -> Vec<HttpRoute> {
    let mut rs: Vec<_> = state
        .http_routes
        .values()
        .filter(|r| parents_server(&r.spec.parent_refs, &r.meta.namespace, srv))
        .collect();
    rs.sort_by(|a, b| order(&a.meta, &b.meta));
    rs.into_iter()
        .filter_map(|r| match inbound_http_route(state, cfg, r) {
            Ok(route) => Some(route),
            Err(e) => {
                tracing::warn!(route = %r.meta.name, namespace = %r.meta.namespace, error = %e, "HTTPRoute skipped");
                None
            }
        })
        .collect()
}

fn inbound_http_route(
    state: &State,
    cfg: &ClusterConfig,
    r: &Res<crate::resources::HTTPRouteSpec>,
) -> Result<HttpRoute, String> {
    let rules = r
        .spec
        .rules
        .iter()
        .map(|rule| {
            Ok(http_route::Rule {
                matches: routes::http_matches(rule.matches.as_deref())?,
                filters: routes::http_filters(rule.filters.as_deref())?
                    .into_iter()
                    .filter_map(|f| {
                        use http_route::filter::Kind;
                        Some(http_route::Filter {
                            kind: Some(match f {
                                HttpFilter::FailureInjector(f) => Kind::FailureInjector(f),
                                HttpFilter::RequestHeaderModifier(f) => {
                                    Kind::RequestHeaderModifier(f)
                                }
                                HttpFilter::Redirect(f) => Kind::Redirect(f),
                                // Not in the inbound API.
                                HttpFilter::ResponseHeaderModifier(_) => return None,
                            }),
                        })
                    })
                    .collect(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(HttpRoute {
        metadata: Some(resource_meta(routes::GATEWAY_GROUP, "HTTPRoute", &r.meta)),
        hosts: routes::hosts(r.spec.hostnames.as_deref())?,
        authorizations: route_authz(state, cfg, "HTTPRoute", &r.meta),
        rules,
    })
}

fn grpc_routes(state: &State, cfg: &ClusterConfig, srv: &Res<ServerSpec>) -> Vec<GrpcRoute> {
    let mut rs: Vec<_> = state
        .grpc_routes
        .values()
        .filter(|r| parents_server(&r.spec.parent_refs, &r.meta.namespace, srv))
        .collect();
    rs.sort_by(|a, b| order(&a.meta, &b.meta));
    let routes: Vec<GrpcRoute> = rs
        .into_iter()
        .filter_map(|r| {
            let built = (|| -> Result<GrpcRoute, String> {
                let rules = r
                    .spec
                    .rules
                    .iter()
                    .map(|rule| {
                        Ok(grpc_route::Rule {
                            matches: routes::grpc_matches(rule.matches.as_deref())?,
                            filters: routes::grpc_filters(rule.filters.as_deref())?
                                .into_iter()
                                .map(|f| grpc_route::Filter {
                                    kind: Some(match f {
                                        GrpcFilter::FailureInjector(f) => {
                                            grpc_route::filter::Kind::FailureInjector(f)
                                        }
                                        GrpcFilter::RequestHeaderModifier(f) => {
                                            grpc_route::filter::Kind::RequestHeaderModifier(f)
                                        }
                                    }),
                                })
                                .collect(),
                        })
                    })
                    .collect::<Result<_, String>>()?;
                Ok(GrpcRoute {
                    metadata: Some(resource_meta(routes::GATEWAY_GROUP, "GRPCRoute", &r.meta)),
                    hosts: routes::hosts(r.spec.hostnames.as_deref())?,
                    authorizations: route_authz(state, cfg, "GRPCRoute", &r.meta),
                    rules,
                })
            })();
            built
                .map_err(|e| tracing::warn!(route = %r.meta.name, error = %e, "GRPCRoute skipped"))
                .ok()
        })
        .collect();
    if routes.is_empty() {
        return vec![GrpcRoute {
            metadata: Some(default_meta("default")),
            hosts: vec![],
            authorizations: vec![],
            rules: vec![grpc_route::Rule {
                matches: vec![Default::default()],
                filters: vec![],
            }],
        }];
    }
    routes
}

// === Defaults ===

/// The workload's default policy: its annotation, its namespace's, else the cluster's.
pub fn default_policy(state: &State, cfg: &ClusterConfig, wl: &Workload) -> DefaultPolicy {
    let from = |ann: Option<&String>| ann.and_then(|v| v.parse::<DefaultPolicy>().ok());
    from(wl.annotations.get(DEFAULT_POLICY_ANNOTATION))
        .or_else(|| {
            from(
                state
                    .namespaces
                    .get(&wl.namespace)
                    .and_then(|a| a.get(DEFAULT_POLICY_ANNOTATION)),
            )
        })
        .unwrap_or(cfg.default_policy)
}

fn annotated_ports(state: &State, wl: &Workload, key: &str) -> BTreeSet<u16> {
    let ann = wl
        .annotations
        .get(key)
        .or_else(|| state.namespaces.get(&wl.namespace).and_then(|a| a.get(key)));
    ann.and_then(|v| parse_port_list(v).ok())
        .unwrap_or_default()
}

fn default_server(state: &State, cfg: &ClusterConfig, wl: &Workload, port: u16) -> Server {
    let policy = default_policy(state, cfg, wl);
    let require_id = annotated_ports(state, wl, REQUIRE_ID_ANNOTATION).contains(&port);
    let name = policy.as_str();
    let any_identity = || mesh_tls(vec![], vec![vec![]]);
    let authorizations = match policy {
        DefaultPolicy::Deny => vec![],
        DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit if !require_id => {
            vec![default_authz(name, &all_networks(), unauthenticated())]
        }
        DefaultPolicy::ClusterUnauthenticated if !require_id => {
            vec![default_authz(
                name,
                &cfg.cluster_networks,
                unauthenticated(),
            )]
        }
        DefaultPolicy::AllUnauthenticated
        | DefaultPolicy::Audit
        | DefaultPolicy::AllAuthenticated => {
            vec![default_authz(name, &all_networks(), any_identity())]
        }
        DefaultPolicy::ClusterUnauthenticated | DefaultPolicy::ClusterAuthenticated => {
            vec![default_authz(name, &cfg.cluster_networks, any_identity())]
        }
    };
    let kind = if annotated_ports(state, wl, OPAQUE_PORTS_ANNOTATION).contains(&port) {
        proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {})
    } else {
        proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: Some(pb_duration(cfg.detect_timeout)),
            http_routes: synthesized_routes(cfg, wl, port),
            http_local_rate_limit: None,
        })
    };
    Server {
        protocol: Some(ProxyProtocol { kind: Some(kind) }),
        server_ips: vec![],
        authorizations,
        labels: labels("", "default", name),
    }
}

/// `default` (everything, no authorizations of its own) and, when the port has HTTP
/// probes, `probe` (`GET` on each probe path, unauthenticated from the probe networks).
fn synthesized_routes(cfg: &ClusterConfig, wl: &Workload, port: u16) -> Vec<HttpRoute> {
    let mut routes = vec![HttpRoute {
        metadata: Some(default_meta("default")),
        hosts: vec![],
        authorizations: vec![],
        rules: vec![http_route::Rule {
            matches: vec![match_all()],
            filters: vec![],
        }],
    }];
    if let Some(paths) = wl.probes.get(&port).filter(|p| !p.is_empty()) {
        let get = routes::method("GET").ok();
        routes.push(HttpRoute {
            metadata: Some(default_meta("probe")),
            hosts: vec![],
            authorizations: vec![default_authz(
                "probe",
                &cfg.probe_networks,
                unauthenticated(),
            )],
            rules: vec![http_route::Rule {
                matches: paths
                    .iter()
                    .map(|p| HttpRouteMatch {
                        path: Some(PathMatch {
                            kind: Some(path_match::Kind::Exact(p.clone())),
                        }),
                        method: get.clone(),
                        ..Default::default()
                    })
                    .collect(),
                filters: vec![],
            }],
        });
    }
    routes
}

/// Parses a port list as Linkerd's annotations write it: `25,587,3306` with `a-b` ranges.
pub fn parse_port_list(s: &str) -> Result<BTreeSet<u16>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a port or a port range");
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || hi < lo {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}
