use super::*;
use crate::metrics::{Metrics, Tls};
use http::{HeaderMap, Method};
use proto::api::{
    http_route as route, inbound as api,
    meta::{Metadata, Resource, metadata},
    net::IpNetwork,
};
use std::{net::IpAddr, sync::Arc};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mtls(id: &str) -> Tls {
    Tls::Established {
        peer_id: Some(Arc::from(id)),
    }
}

const PLAIN: Tls = Tls::None("no_tls_from_remote");
const WEB: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";
const BATCH: &str = "batch.jobs.serviceaccount.identity.linkerd.cluster.local";

fn get(p: &ServerPolicy, client: &str, tls: &Tls, path: &str) -> HttpDecision {
    let h = HeaderMap::new();
    p.authorize_http(
        ip(client),
        tls,
        &RouteRequest::test(None, &Method::GET, path, &h),
    )
}

#[test]
fn networks_parse_and_contain() {
    let n: Net = "10.0.0.0/8".parse().unwrap();
    assert!(n.contains(ip("10.1.2.3")));
    assert!(!n.contains(ip("11.0.0.1")));
    // An IPv4 client on a dual-stack listener.
    assert!(n.contains(ip("::ffff:10.9.9.9")));
    let v6: Net = "fd00::/8".parse().unwrap();
    assert!(v6.contains(ip("fd12::1")));
    assert!(!v6.contains(ip("10.0.0.1")));
    assert_eq!("192.168.1.7".parse::<Net>().unwrap().prefix, 32);
    assert!("10.0.0.0/33".parse::<Net>().is_err());
    assert!("ten/8".parse::<Net>().is_err());
    assert!(Net::ALL_V4.contains(ip("8.8.8.8")));
}

#[test]
fn default_policies_decide_as_linkerd_names_them() {
    let m = Metrics::new();
    let cluster = client::default_cluster_networks();
    let all = ServerPolicy::default_for(DefaultPolicy::AllUnauthenticated, &cluster, &m);
    assert_eq!(get(&all, "8.8.8.8", &PLAIN, "/"), HttpDecision::Allow);
    assert!(all.authorize_tcp(ip("8.8.8.8"), &PLAIN));

    let authn = ServerPolicy::default_for(DefaultPolicy::AllAuthenticated, &cluster, &m);
    assert!(matches!(
        get(&authn, "10.0.0.1", &PLAIN, "/"),
        HttpDecision::Deny { .. }
    ));
    assert_eq!(get(&authn, "8.8.8.8", &mtls(WEB), "/"), HttpDecision::Allow);

    let cl = ServerPolicy::default_for(DefaultPolicy::ClusterUnauthenticated, &cluster, &m);
    assert!(cl.authorize_tcp(ip("10.3.4.5"), &PLAIN));
    assert!(!cl.authorize_tcp(ip("8.8.8.8"), &PLAIN));

    let cla = ServerPolicy::default_for(DefaultPolicy::ClusterAuthenticated, &cluster, &m);
    assert!(!cla.authorize_tcp(ip("10.3.4.5"), &PLAIN));
    assert!(cla.authorize_tcp(ip("10.3.4.5"), &mtls(WEB)));
    assert!(!cla.authorize_tcp(ip("8.8.8.8"), &mtls(WEB)));

    let deny = ServerPolicy::default_for(DefaultPolicy::Deny, &cluster, &m);
    assert!(!deny.authorize_tcp(ip("127.0.0.1"), &mtls(WEB)));
    assert_eq!(
        get(&deny, "127.0.0.1", &mtls(WEB), "/"),
        HttpDecision::Deny {
            route: "default".into()
        }
    );

    let mut text = String::new();
    m.encode(&mut text);
    assert!(
        text.contains("inbound_http_authz_allow_total{srv_kind=\"default\",srv_name=\"all-unauthenticated\",route_name=\"default\",authz_kind=\"default\",authz_name=\"all-unauthenticated\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("inbound_tcp_authz_deny_total{srv_kind=\"default\",srv_name=\"deny\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("inbound_http_authz_deny_total{srv_kind=\"default\",srv_name=\"deny\",route_name=\"default\"} 1"),
        "{text}"
    );
}

/// TLS that this proxy terminated for a client that presented no certificate.
fn tls_without_identity() -> Tls {
    Tls::Established { peer_id: None }
}

#[test]
fn tls_without_a_client_certificate_is_never_authenticated() {
    let m = Metrics::new();
    let cluster = client::default_cluster_networks();
    let anon = tls_without_identity();
    for policy in [
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated,
    ] {
        let p = ServerPolicy::default_for(policy, &cluster, &m);
        assert!(!p.authorize_tcp(ip("10.3.4.5"), &anon), "{policy:?}");
        assert!(
            matches!(get(&p, "10.3.4.5", &anon, "/"), HttpDecision::Deny { .. }),
            "{policy:?}"
        );
        assert!(p.authorize_tcp(ip("10.3.4.5"), &mtls(WEB)), "{policy:?}");
        // So the handshake itself asks for a certificate.
        assert!(!p.admits_anonymous, "{policy:?}");
    }
    assert!(
        ServerPolicy::default_for(DefaultPolicy::AllUnauthenticated, &cluster, &m).admits_anonymous
    );

    // From the policy service: any identity (the empty suffix), named identities, and
    // Linkerd's `PermitMeshTLS { clients: Unauthenticated }`, which does admit TLS without a
    // certificate (proxies bootstrapping their identity).
    let server = |authn: api::Authn| api::Server {
        protocol: Some(api::ProxyProtocol {
            kind: Some(api::proxy_protocol::Kind::Detect(
                api::proxy_protocol::Detect {
                    timeout: None,
                    http_routes: vec![],
                    http_local_rate_limit: None,
                },
            )),
        }),
        authorizations: vec![api::Authz {
            networks: vec![net("0.0.0.0/0")],
            authentication: Some(authn),
            labels: Default::default(),
            metadata: resource("AuthorizationPolicy", "a"),
        }],
        ..Default::default()
    };
    use api::authn::{Permit, PermitMeshTls, permit_mesh_tls::Clients};
    let mesh = |clients: Option<Clients>| api::Authn {
        permit: Some(Permit::MeshTls(PermitMeshTls { clients })),
    };
    let any_id = mesh(Some(Clients::Identities(
        api::authn::permit_mesh_tls::PermitClientIdentities {
            identities: vec![],
            suffixes: vec![api::IdentitySuffix { parts: vec![] }],
        },
    )));
    let p = ServerPolicy::from_api(server(any_id), &m).unwrap();
    assert!(!p.authorize_tcp(ip("10.3.4.5"), &anon));
    assert!(p.authorize_tcp(ip("10.3.4.5"), &mtls(WEB)));
    assert!(!p.admits_anonymous);

    let bootstrap = mesh(Some(Clients::Unauthenticated(Default::default())));
    let p = ServerPolicy::from_api(server(bootstrap), &m).unwrap();
    assert!(p.authorize_tcp(ip("10.3.4.5"), &anon));
    assert!(!p.authorize_tcp(ip("10.3.4.5"), &PLAIN));
    assert!(p.admits_anonymous);

    // An authorization that names no clients is refused, not read as "any TLS".
    assert!(ServerPolicy::from_api(server(mesh(None)), &m).is_err());
}

fn net(s: &str) -> api::Network {
    let n: Net = s.parse().unwrap();
    api::Network {
        net: Some(IpNetwork {
            ip: Some(n.addr.into()),
            prefix_len: u32::from(n.prefix),
        }),
        except: vec![],
    }
}

fn resource(kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "policy.linkerd.io".into(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        })),
    })
}

fn identities(ids: &[&str], suffixes: &[&[&str]]) -> Option<api::Authn> {
    use api::authn::{Permit, PermitMeshTls, permit_mesh_tls};
    Some(api::Authn {
        permit: Some(Permit::MeshTls(PermitMeshTls {
            clients: Some(permit_mesh_tls::Clients::Identities(
                permit_mesh_tls::PermitClientIdentities {
                    identities: ids
                        .iter()
                        .map(|i| api::Identity {
                            name: i.to_string(),
                        })
                        .collect(),
                    suffixes: suffixes
                        .iter()
                        .map(|s| api::IdentitySuffix {
                            parts: s.iter().map(|p| p.to_string()).collect(),
                        })
                        .collect(),
                },
            )),
        })),
    })
}

/// A Server for port 8080: plaintext health checks from anywhere on `/healthz`, `/admin` only
/// for the `web` identity (a route authorization), everything else for any identity in the
/// `shop` namespace (a server authorization), except from 10.9.0.0/16.
fn server() -> api::Server {
    let unauthenticated = Some(api::Authn {
        permit: Some(api::authn::Permit::Unauthenticated(
            api::authn::PermitUnauthenticated {},
        )),
    });
    let path = |kind: route::path_match::Kind| route::HttpRouteMatch {
        path: Some(route::PathMatch { kind: Some(kind) }),
        ..Default::default()
    };
    let http_route =
        |name: &str, m: route::HttpRouteMatch, authz: Vec<api::Authz>| api::HttpRoute {
            metadata: resource("HTTPRoute", name),
            hosts: vec![],
            authorizations: authz,
            rules: vec![api::http_route::Rule {
                matches: vec![m],
                filters: vec![],
            }],
        };
    let mut shop = net("0.0.0.0/0");
    shop.except.push(IpNetwork {
        ip: Some(ip("10.9.0.0").into()),
        prefix_len: 16,
    });
    api::Server {
        protocol: Some(api::ProxyProtocol {
            kind: Some(api::proxy_protocol::Kind::Http1(
                api::proxy_protocol::Http1 {
                    routes: vec![
                        http_route(
                            "health",
                            path(route::path_match::Kind::Exact("/healthz".into())),
                            vec![api::Authz {
                                networks: vec![net("0.0.0.0/0")],
                                authentication: unauthenticated,
                                labels: Default::default(),
                                metadata: resource("AuthorizationPolicy", "probes"),
                            }],
                        ),
                        http_route(
                            "admin",
                            path(route::path_match::Kind::Prefix("/admin".into())),
                            vec![api::Authz {
                                networks: vec![net("0.0.0.0/0")],
                                authentication: identities(&[WEB], &[]),
                                labels: Default::default(),
                                metadata: resource("AuthorizationPolicy", "web-admin"),
                            }],
                        ),
                        http_route(
                            "api",
                            path(route::path_match::Kind::Prefix("/api".into())),
                            vec![],
                        ),
                    ],
                    local_rate_limit: None,
                },
            )),
        }),
        server_ips: vec![],
        authorizations: vec![api::Authz {
            networks: vec![shop],
            authentication: identities(
                &[],
                &[&[
                    "shop",
                    "serviceaccount",
                    "identity",
                    "linkerd",
                    "cluster",
                    "local",
                ]],
            ),
            labels: Default::default(),
            metadata: resource("AuthorizationPolicy", "shop-clients"),
        }],
        labels: [
            ("kind".to_string(), "server".to_string()),
            ("name".to_string(), "web-http".to_string()),
        ]
        .into_iter()
        .collect(),
    }
}

#[test]
fn a_server_from_the_policy_service_routes_then_authorizes() {
    let m = Metrics::new();
    let p = ServerPolicy::from_api(server(), &m).unwrap();
    assert_eq!(&*p.name, "web-http");
    assert_eq!(p.protocol, ServerProtocol::Http1);

    // Route authorization: anyone may reach /healthz.
    assert_eq!(get(&p, "8.8.8.8", &PLAIN, "/healthz"), HttpDecision::Allow);
    // Exact means exact.
    assert_eq!(
        get(&p, "8.8.8.8", &PLAIN, "/healthz/x"),
        HttpDecision::NoRoute
    );
    // /admin: the web identity (route authz) and shop identities (server authz).
    assert_eq!(
        get(&p, "10.1.1.1", &mtls(WEB), "/admin/users"),
        HttpDecision::Allow
    );
    assert_eq!(
        get(&p, "10.1.1.1", &mtls(BATCH), "/admin"),
        HttpDecision::Deny {
            route: "admin".into()
        }
    );
    assert_eq!(
        get(&p, "10.1.1.1", &PLAIN, "/api"),
        HttpDecision::Deny {
            route: "api".into()
        }
    );
    // Prefix matches whole segments only.
    assert_eq!(
        get(&p, "10.1.1.1", &mtls(WEB), "/administrator"),
        HttpDecision::NoRoute
    );
    assert_eq!(
        get(&p, "10.1.1.1", &mtls(WEB), "/api/v1"),
        HttpDecision::Allow
    );
    // The server authorization excludes 10.9.0.0/16.
    assert!(matches!(
        get(&p, "10.9.1.1", &mtls(WEB), "/api/v1"),
        HttpDecision::Deny { .. }
    ));
    // Opaque connections use the server authorizations only.
    assert!(p.authorize_tcp(ip("10.1.1.1"), &mtls(WEB)));
    assert!(!p.authorize_tcp(ip("10.1.1.1"), &mtls(BATCH)));

    let mut text = String::new();
    m.encode(&mut text);
    assert!(
        text.contains("inbound_http_authz_allow_total{srv_kind=\"server\",srv_name=\"web-http\",route_name=\"admin\",authz_kind=\"authorizationpolicy\",authz_name=\"web-admin\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("inbound_http_authz_deny_total{srv_kind=\"server\",srv_name=\"web-http\",route_name=\"\"} 2"),
        "{text}"
    );
}

#[test]
fn a_server_without_routes_gets_a_default_route() {
    let m = Metrics::new();
    let mut s = server();
    s.protocol = Some(api::ProxyProtocol {
        kind: Some(api::proxy_protocol::Kind::Grpc(api::proxy_protocol::Grpc {
            routes: vec![],
        })),
    });
    let p = ServerPolicy::from_api(s, &m).unwrap();
    assert_eq!(p.routes.len(), 1);
    assert_eq!(
        get(&p, "10.1.1.1", &mtls(WEB), "/any.Service/Call"),
        HttpDecision::Allow
    );
    assert_eq!(
        get(&p, "10.1.1.1", &mtls(BATCH), "/any.Service/Call"),
        HttpDecision::Deny {
            route: "default".into()
        }
    );
}

#[test]
fn invalid_servers_are_refused() {
    let m = Metrics::new();
    let mut s = server();
    s.protocol = None;
    assert!(ServerPolicy::from_api(s, &m).is_err());
    let mut s = server();
    s.authorizations[0].authentication = None;
    assert!(ServerPolicy::from_api(s, &m).is_err());
    let mut s = server();
    s.authorizations[0].networks[0]
        .net
        .as_mut()
        .unwrap()
        .prefix_len = 40;
    assert!(ServerPolicy::from_api(s, &m).is_err());
}

#[test]
fn header_and_method_matches_and_unsupported_regexes() {
    let m = Metrics::new();
    let mut s = server();
    if let Some(api::proxy_protocol::Kind::Http1(h)) =
        s.protocol.as_mut().and_then(|p| p.kind.as_mut())
    {
        let rule = &mut h.routes[2].rules[0].matches[0];
        rule.method = Some(Method::DELETE.into());
        rule.headers.push(route::HeaderMatch {
            name: "x-tenant".into(),
            value: Some(route::header_match::Value::Exact(b"blue".to_vec())),
        });
        h.routes[0].rules[0].matches[0].path = Some(route::PathMatch {
            kind: Some(route::path_match::Kind::Regex("/health.*".into())),
        });
    }
    let p = ServerPolicy::from_api(s, &m).unwrap();
    let mut headers = HeaderMap::new();
    let decide = |method: &Method, headers: &HeaderMap, path: &str| {
        p.authorize_http(
            ip("10.1.1.1"),
            &mtls(WEB),
            &RouteRequest::test(None, method, path, headers),
        )
    };
    assert_eq!(
        decide(&Method::DELETE, &headers, "/api/x"),
        HttpDecision::NoRoute
    );
    headers.insert("x-tenant", "blue".parse().unwrap());
    assert_eq!(
        decide(&Method::DELETE, &headers, "/api/x"),
        HttpDecision::Allow
    );
    assert_eq!(
        decide(&Method::GET, &headers, "/api/x"),
        HttpDecision::NoRoute
    );
    // A regular expression is never matched, so it cannot grant access.
    assert_eq!(
        decide(&Method::GET, &headers, "/healthz"),
        HttpDecision::NoRoute
    );
}

#[test]
fn hosts_restrict_routes() {
    let m = Metrics::new();
    let mut s = server();
    if let Some(api::proxy_protocol::Kind::Http1(h)) =
        s.protocol.as_mut().and_then(|p| p.kind.as_mut())
    {
        h.routes[0].hosts.push(route::HostMatch {
            r#match: Some(route::host_match::Match::Suffix(
                route::host_match::Suffix {
                    reverse_labels: vec!["local".into(), "cluster".into()],
                },
            )),
        });
    }
    let p = ServerPolicy::from_api(s, &m).unwrap();
    let h = HeaderMap::new();
    let d = |host| {
        let req = RouteRequest::test(host, &Method::GET, "/healthz", &h);
        p.authorize_http(ip("8.8.8.8"), &PLAIN, &req)
    };
    assert_eq!(
        d(Some("web.shop.svc.cluster.local:8080")),
        HttpDecision::Allow
    );
    assert_eq!(d(Some("example.com")), HttpDecision::NoRoute);
    assert_eq!(d(None), HttpDecision::NoRoute);
}

#[test]
fn the_most_specific_route_decides_not_the_first() {
    // An older catch-all route open to anyone must not open `/admin`, whose own route is
    // more specific (a longer prefix): Gateway API precedence, as for outbound routes.
    let m = Metrics::new();
    let mut s = server();
    if let Some(api::proxy_protocol::Kind::Http1(h)) =
        s.protocol.as_mut().and_then(|p| p.kind.as_mut())
    {
        let open = api::HttpRoute {
            metadata: resource("HTTPRoute", "everything"),
            hosts: vec![],
            authorizations: vec![api::Authz {
                networks: vec![net("0.0.0.0/0")],
                authentication: Some(api::Authn {
                    permit: Some(api::authn::Permit::Unauthenticated(
                        api::authn::PermitUnauthenticated {},
                    )),
                }),
                labels: Default::default(),
                metadata: resource("AuthorizationPolicy", "open"),
            }],
            // No path: a prefix match on `/`, with a header and a query parameter.
            rules: vec![api::http_route::Rule {
                matches: vec![route::HttpRouteMatch {
                    query_params: vec![route::QueryParamMatch {
                        name: "debug".into(),
                        value: Some(route::query_param_match::Value::Exact("1".into())),
                    }],
                    ..Default::default()
                }],
                filters: vec![],
            }],
        };
        h.routes.insert(0, open);
    }
    let p = ServerPolicy::from_api(s, &m).unwrap();
    let h = HeaderMap::new();
    let decide = |target: &str| {
        let req = RouteRequest::test(None, &Method::GET, target, &h);
        p.authorize_http(ip("10.1.1.1"), &mtls(BATCH), &req)
    };
    assert_eq!(
        decide("/admin/users?debug=1"),
        HttpDecision::Deny {
            route: "admin".into()
        }
    );
    // Where the open route is the most specific match, it decides.
    assert_eq!(decide("/other?debug=1"), HttpDecision::Allow);
    assert_eq!(decide("/other?debug=2"), HttpDecision::NoRoute);
    assert_eq!(decide("/other"), HttpDecision::NoRoute);
}
