//! The index from objects built in code: default policies, Servers with authorizations,
//! inbound routes, rate limits; outbound defaults, splits, retries, timeouts, failure
//! accrual; updates to watchers; the Kubernetes conversion of Pods/Services/CRs.

use crate::support::*;
use linkerd_policy::{
    inbound_api::{Server as PbServer, authn, proxy_protocol},
    index::Index,
    k8s,
    model::{ClusterConfig, DefaultPolicy},
    outbound_api::{
        OutboundPolicy, backend, failure_accrual, http_route::distribution, proxy_protocol as out,
    },
    resources::*,
};
use proto::api::meta::metadata;
use std::{collections::BTreeMap, sync::Arc};

fn cfg(p: DefaultPolicy) -> ClusterConfig {
    ClusterConfig {
        default_policy: p,
        ..ClusterConfig::default()
    }
}

fn index(p: DefaultPolicy) -> Index {
    let i = Index::new(cfg(p));
    i.reset(state());
    i
}

fn meta_name(m: &Option<proto::api::meta::Metadata>) -> String {
    match m.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Default(n)) => format!("default:{n}"),
        Some(metadata::Kind::Resource(r)) => format!("{}:{}", r.kind, r.name),
        None => "-".into(),
    }
}

fn http_routes(s: &PbServer) -> Vec<String> {
    match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(proxy_protocol::Kind::Detect(d)) => d
            .http_routes
            .iter()
            .map(|r| meta_name(&r.metadata))
            .collect(),
        Some(proxy_protocol::Kind::Http1(h)) => {
            h.routes.iter().map(|r| meta_name(&r.metadata)).collect()
        }
        Some(proxy_protocol::Kind::Http2(h)) => {
            h.routes.iter().map(|r| meta_name(&r.metadata)).collect()
        }
        _ => vec![],
    }
}

/// (networks, authentication) per authorization, compactly.
fn authz(s: &PbServer) -> Vec<(usize, String)> {
    s.authorizations
        .iter()
        .map(|a| {
            let auth = match a.authentication.as_ref().and_then(|a| a.permit.as_ref()) {
                Some(authn::Permit::Unauthenticated(_)) => "unauthenticated".to_string(),
                Some(authn::Permit::MeshTls(m)) => match &m.clients {
                    Some(authn::permit_mesh_tls::Clients::Identities(ids)) => format!(
                        "tls:{}|{}",
                        ids.identities
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        ids.suffixes
                            .iter()
                            .map(|s| s.parts.join("."))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    _ => "tls:any".into(),
                },
                None => "none".into(),
            };
            (a.networks.len(), auth)
        })
        .collect()
}

#[test]
fn default_policies_without_a_server() {
    let wl = key("web-0");
    let s = index(DefaultPolicy::AllUnauthenticated)
        .inbound(&wl, 8080)
        .unwrap();
    assert_eq!(s.labels["kind"], "default");
    assert_eq!(s.labels["name"], "all-unauthenticated");
    assert_eq!(authz(&s), [(2, "unauthenticated".to_string())]);
    // The default route, and the probe route since 8080 has an HTTP probe.
    assert_eq!(http_routes(&s), ["default:default", "default:probe"]);
    let Some(proxy_protocol::Kind::Detect(d)) = s.protocol.unwrap().kind else {
        panic!()
    };
    assert_eq!(d.timeout.unwrap().seconds, 10);
    assert_eq!(
        d.http_routes[1].authorizations.len(),
        1,
        "probes are authorized"
    );

    let s = index(DefaultPolicy::AllAuthenticated)
        .inbound(&wl, 9000)
        .unwrap();
    assert_eq!(
        authz(&s),
        [(2, "tls:|".to_string())],
        "any identity (one empty suffix)"
    );
    assert_eq!(http_routes(&s), ["default:default"], "no probe on 9000");

    let s = index(DefaultPolicy::ClusterUnauthenticated)
        .inbound(&wl, 8080)
        .unwrap();
    assert_eq!(
        authz(&s),
        [(5, "unauthenticated".to_string())],
        "the cluster networks"
    );
    let s = index(DefaultPolicy::ClusterAuthenticated)
        .inbound(&wl, 8080)
        .unwrap();
    assert_eq!(authz(&s), [(5, "tls:|".to_string())]);
    let s = index(DefaultPolicy::Deny).inbound(&wl, 8080).unwrap();
    assert!(s.authorizations.is_empty());
    assert_eq!(
        http_routes(&s),
        ["default:default", "default:probe"],
        "probes still work"
    );

    // Unknown workloads are not found.
    assert!(
        index(DefaultPolicy::Deny)
            .inbound(&key("nope"), 80)
            .is_none()
    );
}

#[test]
fn annotations_override_the_default_and_mark_ports() {
    let i = index(DefaultPolicy::AllUnauthenticated);
    i.update(|s| {
        s.namespaces.insert(
            NS.into(),
            labels(&[("config.linkerd.io/default-inbound-policy", "deny")]),
        );
        let w = s.workloads.get_mut(&key("vote-0")).unwrap();
        w.annotations = labels(&[
            (
                "config.linkerd.io/default-inbound-policy",
                "all-unauthenticated",
            ),
            ("config.linkerd.io/opaque-ports", "3306"),
            (
                "config.linkerd.io/proxy-require-identity-inbound-ports",
                "9443",
            ),
        ]);
    });
    assert_eq!(
        i.inbound(&key("web-0"), 8080).unwrap().labels["name"],
        "deny",
        "namespace"
    );
    let vote = i.inbound(&key("vote-0"), 8080).unwrap();
    assert_eq!(vote.labels["name"], "all-unauthenticated", "the pod wins");
    let opaque = i.inbound(&key("vote-0"), 3306).unwrap();
    assert!(matches!(
        opaque.protocol.unwrap().kind,
        Some(proxy_protocol::Kind::Opaque(_))
    ));
    let tls = i.inbound(&key("vote-0"), 9443).unwrap();
    assert_eq!(authz(&tls), [(2, "tls:|".to_string())]);
}

#[test]
fn a_server_with_authorization_policies() {
    let i = index(DefaultPolicy::AllUnauthenticated);
    i.update(|s| {
        s.servers.insert(
            key("web-http"),
            res(
                "web-http",
                1,
                server_spec("web", Port::Name("http".into()), "HTTP/1"),
            ),
        );
        s.mesh_tls_authentications.insert(
            key("vote-only"),
            res(
                "vote-only",
                1,
                MeshTLSAuthenticationSpec {
                    identities: Some(vec![
                        "*.admin.serviceaccount.identity.linkerd.cluster.local".into(),
                    ]),
                    identity_refs: Some(vec![obj_ref("", "ServiceAccount", "vote")]),
                },
            ),
        );
        s.network_authentications.insert(
            key("office"),
            res(
                "office",
                1,
                NetworkAuthenticationSpec {
                    networks: vec![NetworkDef {
                        cidr: "192.168.0.0/16".into(),
                        except: Some(vec!["192.168.1.1".into()]),
                    }],
                },
            ),
        );
        s.authorization_policies.insert(
            key("web-from-vote"),
            res(
                "web-from-vote",
                1,
                AuthorizationPolicySpec {
                    target_ref: obj_ref("policy.linkerd.io", "Server", "web-http"),
                    required_authentication_refs: vec![
                        obj_ref("policy.linkerd.io", "MeshTLSAuthentication", "vote-only"),
                        obj_ref("policy.linkerd.io", "NetworkAuthentication", "office"),
                    ],
                },
            ),
        );
        // Names a missing authentication: grants nothing.
        s.authorization_policies.insert(
            key("broken"),
            res(
                "broken",
                1,
                AuthorizationPolicySpec {
                    target_ref: obj_ref("policy.linkerd.io", "Server", "web-http"),
                    required_authentication_refs: vec![obj_ref(
                        "policy.linkerd.io",
                        "MeshTLSAuthentication",
                        "missing",
                    )],
                },
            ),
        );
    });
    let s = i.inbound(&key("web-0"), 8080).unwrap();
    assert_eq!(s.labels["kind"], "server");
    assert_eq!(s.labels["name"], "web-http");
    assert_eq!(
        authz(&s),
        [(1, "tls:vote.emojivoto.serviceaccount.identity.linkerd.cluster.local|admin.serviceaccount.identity.linkerd.cluster.local".to_string())]
    );
    assert_eq!(s.authorizations[0].networks[0].except.len(), 1);
    assert_eq!(
        meta_name(&s.authorizations[0].metadata),
        "AuthorizationPolicy:web-from-vote"
    );
    let Some(proxy_protocol::Kind::Http1(h)) = s.protocol.clone().unwrap().kind else {
        panic!()
    };
    assert_eq!(http_routes(&s), ["default:default", "default:probe"]);
    assert!(h.local_rate_limit.is_none());
    // Other ports keep the default.
    assert_eq!(
        i.inbound(&key("web-0"), 9000).unwrap().labels["kind"],
        "default"
    );
    // Not selected: vote-0.
    assert_eq!(
        i.inbound(&key("vote-0"), 8080).unwrap().labels["kind"],
        "default"
    );
}

#[test]
fn inbound_routes_and_rate_limits() {
    let i = index(DefaultPolicy::Deny);
    i.update(|s| {
        s.servers.insert(
            key("web-http"),
            res(
                "web-http",
                1,
                server_spec("web", Port::Number(8080), "unknown"),
            ),
        );
        for (name, created) in [("b-route", 1), ("a-route", 2), ("c-route", 1)] {
            s.http_routes.insert(
                key(name),
                res(
                    name,
                    created,
                    HTTPRouteSpec {
                        parent_refs: vec![ParentRef {
                            group: Some("policy.linkerd.io".into()),
                            kind: Some("Server".into()),
                            name: "web-http".into(),
                            ..ParentRef::default()
                        }],
                        hostnames: None,
                        rules: vec![HTTPRouteRule {
                            matches: Some(vec![HTTPRouteMatch {
                                path: Some(PathMatch {
                                    kind: Some("Exact".into()),
                                    value: Some(format!("/{name}")),
                                }),
                                method: Some("POST".into()),
                                ..HTTPRouteMatch::default()
                            }]),
                            filters: Some(vec![HTTPRouteFilter {
                                kind: "FailureInjector".into(),
                                failure_injector: Some(FailureInjector {
                                    status: Some(503),
                                    percent: Some(10),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }]),
                            ..HTTPRouteRule::default()
                        }],
                    },
                ),
            );
        }
        s.authorization_policies.insert(
            key("a-route-authz"),
            res(
                "a-route-authz",
                1,
                AuthorizationPolicySpec {
                    target_ref: obj_ref("gateway.networking.k8s.io", "HTTPRoute", "a-route"),
                    required_authentication_refs: vec![obj_ref("", "ServiceAccount", "vote")],
                },
            ),
        );
        s.rate_limits.insert(
            key("rl"),
            res(
                "rl",
                1,
                HTTPLocalRateLimitPolicySpec {
                    target_ref: obj_ref("policy.linkerd.io", "Server", "web-http"),
                    total: Some(Limit {
                        requests_per_second: 100,
                    }),
                    identity: Some(Limit {
                        requests_per_second: 20,
                    }),
                    overrides: Some(vec![RateLimitOverride {
                        requests_per_second: 50,
                        client_refs: vec![obj_ref("", "ServiceAccount", "vote")],
                    }]),
                },
            ),
        );
    });
    let s = i.inbound(&key("web-0"), 8080).unwrap();
    // Creation time, then name.
    assert_eq!(
        http_routes(&s),
        [
            "HTTPRoute:b-route",
            "HTTPRoute:c-route",
            "HTTPRoute:a-route"
        ]
    );
    let Some(proxy_protocol::Kind::Detect(d)) = s.protocol.unwrap().kind else {
        panic!()
    };
    assert_eq!(
        d.http_routes[2].authorizations.len(),
        1,
        "the route's own authorization"
    );
    assert!(d.http_routes[0].authorizations.is_empty());
    let fi = &d.http_routes[0].rules[0].filters[0];
    assert!(format!("{fi:?}").contains("status: 503"), "{fi:?}");
    let rl = d.http_local_rate_limit.unwrap();
    assert_eq!(rl.total.unwrap().requests_per_second, 100);
    assert_eq!(rl.identity.unwrap().requests_per_second, 20);
    assert_eq!(
        rl.overrides[0].clients.as_ref().unwrap().identities[0].name,
        "vote.emojivoto.serviceaccount.identity.linkerd.cluster.local"
    );
}

fn detect_http1(p: &OutboundPolicy) -> out::Http1 {
    match p.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(out::Kind::Detect(d)) => d.http1.clone().unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn outbound_default_route_and_backend() {
    let i = index(DefaultPolicy::AllUnauthenticated);
    let p = i.outbound(&key("web"), 8080).unwrap();
    let Some(out::Kind::Detect(d)) = p.protocol.clone().unwrap().kind else {
        panic!()
    };
    assert_eq!(d.timeout.unwrap().seconds, 10);
    let h = detect_http1(&p);
    assert_eq!(h.routes.len(), 1);
    assert_eq!(meta_name(&h.routes[0].metadata), "default:default");
    assert!(h.failure_accrual.is_none());
    let Some(distribution::Kind::FirstAvailable(fa)) =
        h.routes[0].rules[0].backends.clone().unwrap().kind
    else {
        panic!()
    };
    let b = fa.backends[0].backend.clone().unwrap();
    assert_eq!(b.queue.unwrap().capacity, 100);
    let Some(backend::Kind::Balancer(bal)) = b.kind else {
        panic!()
    };
    let dst = format!("{:?}", bal.discovery.unwrap());
    assert!(
        dst.contains("web.emojivoto.svc.cluster.local:8080"),
        "{dst}"
    );
    let load = format!("{:?}", bal.load.unwrap());
    assert!(
        load.contains("PeakEwma") && load.contains("nanos: 30000000"),
        "{load}"
    );
    // A port the service does not declare: opaque and forbidden.
    let p = i.outbound(&key("web"), 9999).unwrap();
    assert!(format!("{p:?}").contains("undefined-port"));
    assert!(i.outbound(&key("nope"), 80).is_none());
}

#[test]
fn outbound_split_retries_timeouts_and_failure_accrual() {
    let i = index(DefaultPolicy::AllUnauthenticated);
    i.update(|s| {
        let web = s.services.get_mut(&key("web")).unwrap();
        web.annotations = labels(&[
            ("balancer.linkerd.io/failure-accrual", "consecutive"),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-max-failures",
                "3",
            ),
            ("retry.linkerd.io/http", "5xx"),
        ]);
        let mut route = res(
            "split",
            1,
            HTTPRouteSpec {
                parent_refs: vec![ParentRef {
                    name: "web".into(),
                    kind: Some("Service".into()),
                    ..ParentRef::default()
                }],
                hostnames: None,
                rules: vec![HTTPRouteRule {
                    backend_refs: Some(vec![
                        BackendRef {
                            group: None,
                            kind: None,
                            name: "backend-v1".into(),
                            namespace: None,
                            port: Some(8080),
                            weight: Some(90),
                            filters: None,
                        },
                        BackendRef {
                            group: None,
                            kind: None,
                            name: "backend-v2".into(),
                            namespace: None,
                            port: None,
                            weight: Some(10),
                            filters: None,
                        },
                    ]),
                    timeouts: Some(HTTPRouteTimeouts {
                        request: Some("2s".into()),
                        backend_request: Some("500ms".into()),
                    }),
                    ..HTTPRouteRule::default()
                }],
            },
        );
        route.meta.annotations = labels(&[
            ("retry.linkerd.io/http", "502-504"),
            ("retry.linkerd.io/limit", "2"),
        ]);
        s.http_routes.insert(key("split"), route);
    });
    let h = detect_http1(&i.outbound(&key("web"), 8080).unwrap());
    let fa = h.failure_accrual.unwrap();
    let Some(failure_accrual::Kind::ConsecutiveFailures(c)) = fa.kind else {
        panic!()
    };
    assert_eq!(c.max_failures, 3);
    assert_eq!(c.backoff.unwrap().max_backoff.unwrap().seconds, 60);
    assert_eq!(h.routes.len(), 1);
    assert_eq!(meta_name(&h.routes[0].metadata), "HTTPRoute:split");
    let rule = &h.routes[0].rules[0];
    let Some(distribution::Kind::RandomAvailable(ra)) = rule.backends.clone().unwrap().kind else {
        panic!()
    };
    let weights: Vec<u32> = ra.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
    assert!(
        format!("{:?}", ra.backends[1]).contains("backend-v2.emojivoto.svc.cluster.local:8080")
    );
    let retry = rule.retry.clone().unwrap();
    assert_eq!(retry.max_retries, 2, "the route's annotations win");
    assert_eq!(retry.max_request_bytes, 64 * 1024);
    assert_eq!(
        format!("{:?}", retry.conditions.unwrap().status_ranges),
        "[StatusRange { start: 502, end: 504 }]"
    );
    assert_eq!(rule.timeouts.unwrap().request.unwrap().seconds, 2);
}

#[test]
fn outbound_grpc_routes() {
    let i = index(DefaultPolicy::AllUnauthenticated);
    i.update(|s| {
        let mut r = res(
            "quotes",
            1,
            GRPCRouteSpec {
                parent_refs: vec![ParentRef {
                    name: "web".into(),
                    kind: Some("Service".into()),
                    port: Some(8080),
                    ..ParentRef::default()
                }],
                hostnames: None,
                rules: vec![GRPCRouteRule {
                    matches: Some(vec![GRPCRouteMatch {
                        method: Some(GRPCMethodMatch {
                            service: Some("quotes.Quotes".into()),
                            method: Some("Get".into()),
                        }),
                        headers: None,
                    }]),
                    ..GRPCRouteRule::default()
                }],
            },
        );
        r.meta.annotations = labels(&[
            ("retry.linkerd.io/grpc", "unavailable,cancelled"),
            ("timeout.linkerd.io/request", "1s"),
        ]);
        s.grpc_routes.insert(key("quotes"), r);
    });
    let p = i.outbound(&key("web"), 8080).unwrap();
    let Some(out::Kind::Grpc(g)) = p.protocol.unwrap().kind else {
        panic!()
    };
    let rule = &g.routes[0].rules[0];
    assert_eq!(rule.matches[0].rpc.as_ref().unwrap().method, "Get");
    // A rule without matches is one match of any call (linkerd2-proxy needs the call match).
    assert!(
        g.routes[0].rules.len() == 1
            && rule.matches[0].rpc.is_some()
            && rule.matches.iter().all(|m| m.rpc.is_some())
    );
    let c = rule.retry.unwrap().conditions.unwrap();
    assert!(c.unavailable && c.cancelled && !c.internal);
    assert_eq!(rule.timeouts.unwrap().request.unwrap().seconds, 1);
}

/// What the proxy needs to rank matches as the Gateway API does, written out: a match without
/// a path is `PathPrefix /`, a rule without matches one such match, only the first of several
/// header (query parameter) matches on a name counts; routes oldest first, then by namespace
/// and name; backend filters kept.
#[test]
fn outbound_matches_spell_out_the_gateway_api_defaults() {
    use proto::api::http_route::{HttpRouteMatch, PathMatch, path_match};
    let i = index(DefaultPolicy::AllUnauthenticated);
    let value = |name: &str, value: &str| ValueMatch {
        kind: None,
        name: name.into(),
        value: value.into(),
    };
    let parent = ParentRef {
        name: "web".into(),
        kind: Some("Service".into()),
        namespace: Some(NS.into()),
        ..ParentRef::default()
    };
    i.update(|s| {
        let canary = HTTPRouteRule {
            matches: Some(vec![HTTPRouteMatch {
                headers: Some(vec![value("X-Canary", "yes"), value("x-canary", "no")]),
                query_params: Some(vec![value("v", "1"), value("v", "2"), value("V", "3")]),
                ..HTTPRouteMatch::default()
            }]),
            backend_refs: Some(vec![BackendRef {
                group: None,
                kind: None,
                name: "backend-v2".into(),
                namespace: None,
                port: Some(8080),
                weight: None,
                filters: Some(vec![HTTPRouteFilter {
                    kind: "RequestHeaderModifier".into(),
                    request_header_modifier: Some(HeaderModifier {
                        set: Some(vec![Header {
                            name: "x-backend".into(),
                            value: "v2".into(),
                        }]),
                        ..HeaderModifier::default()
                    }),
                    ..HTTPRouteFilter::default()
                }]),
            }]),
            ..HTTPRouteRule::default()
        };
        let spec = |rules| HTTPRouteSpec {
            parent_refs: vec![parent.clone()],
            hostnames: None,
            rules,
        };
        s.http_routes.insert(
            key("zz-canary"),
            res("zz-canary", 1, spec(vec![canary, HTTPRouteRule::default()])),
        );
        // As old, in another namespace whose name sorts after ours: second, whatever its name.
        let mut other = res("aa-other", 1, spec(vec![HTTPRouteRule::default()]));
        other.meta.namespace = "other".into();
        s.http_routes
            .insert(("other".into(), "aa-other".into()), other);
    });
    let h = detect_http1(&i.outbound(&key("web"), 8080).unwrap());
    let names: Vec<String> = h.routes.iter().map(|r| meta_name(&r.metadata)).collect();
    assert_eq!(names, ["HTTPRoute:zz-canary", "HTTPRoute:aa-other"]);
    let slash = Some(PathMatch {
        kind: Some(path_match::Kind::Prefix("/".into())),
    });
    let rules = &h.routes[0].rules;
    let m = &rules[0].matches[0];
    assert_eq!(m.path, slash);
    let headers: Vec<(&str, &[u8])> = m
        .headers
        .iter()
        .map(|h| match &h.value {
            Some(proto::api::http_route::header_match::Value::Exact(v)) => {
                (h.name.as_str(), v.as_slice())
            }
            _ => panic!("{h:?}"),
        })
        .collect();
    assert_eq!(headers, [("x-canary", &b"yes"[..])]);
    let params: Vec<&str> = m.query_params.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(params, ["v", "V"], "names are case-sensitive");
    assert_eq!(
        rules[1].matches,
        [HttpRouteMatch {
            path: slash,
            ..HttpRouteMatch::default()
        }]
    );
    let Some(distribution::Kind::RandomAvailable(ra)) = rules[0].backends.clone().unwrap().kind
    else {
        panic!()
    };
    let filters = &ra.backends[0].backend.as_ref().unwrap().filters;
    assert_eq!(filters.len(), 1, "{filters:?}");
}

#[tokio::test]
async fn watchers_share_a_topic_and_see_changes() {
    let i = Arc::new(index(DefaultPolicy::AllUnauthenticated));
    let mut a = i.watch_inbound(&key("web-0"), 8080).unwrap();
    let mut b = i.watch_inbound(&key("web-0"), 8080).unwrap();
    assert_eq!(i.stats().inbound_topics, 1);
    assert_eq!(i.stats().inbound_watchers, 2);
    assert_eq!(
        a.borrow_and_update().as_ref().unwrap().labels["name"],
        "all-unauthenticated"
    );
    b.borrow_and_update();
    // A change that does not touch web-0:8080 publishes nothing.
    assert_eq!(
        i.update(|s| {
            s.services.remove(&key("backend-v2"));
        }),
        0
    );
    assert!(!a.has_changed().unwrap());
    assert_eq!(
        i.update(|s| {
            s.namespaces.insert(
                NS.into(),
                labels(&[("config.linkerd.io/default-inbound-policy", "deny")]),
            );
        }),
        1
    );
    assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
    assert_eq!(
        a.borrow_and_update().as_ref().unwrap().labels["name"],
        "deny"
    );
    // The workload goes away: watchers see None (the stream ends NOT_FOUND).
    i.update(|s| {
        s.workloads.remove(&key("web-0"));
    });
    assert!(a.borrow_and_update().is_none());
    drop((a, b));
    assert_eq!(i.stats().inbound_topics, 0);
}

#[test]
fn kubernetes_objects_become_state() {
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, HTTPGetAction, Pod, PodSpec, Probe, Service as KService,
        ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, Time},
        util::intstr::IntOrString,
    };
    let om = |name: &str, ann: &[(&str, &str)]| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        labels: Some(labels(&[("app", "web")])),
        annotations: Some(labels(ann)),
        creation_timestamp: Some(Time("2024-01-01T00:00:00Z".parse().unwrap())),
        ..ObjectMeta::default()
    };
    let pod = Pod {
        metadata: om("web-1", &[]),
        spec: Some(PodSpec {
            service_account_name: Some("web".into()),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..ContainerPort::default()
                }]),
                readiness_probe: Some(Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some("/ready".into()),
                        port: IntOrString::String("http".into()),
                        ..HTTPGetAction::default()
                    }),
                    ..Probe::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let svc = KService {
        metadata: om(
            "api",
            &[
                ("config.linkerd.io/opaque-ports", "5432"),
                ("balancer.linkerd.io/failure-accrual", "consecutive"),
            ],
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.1.1".into()),
            ports: Some(vec![
                ServicePort {
                    port: 80,
                    ..ServicePort::default()
                },
                ServicePort {
                    port: 5432,
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..KService::default()
    };
    let srv = linkerd_policy::resources::Server::new(
        "web-http",
        server_spec("web", Port::Name("http".into()), "HTTP/2"),
    );
    let mut srv = srv;
    srv.metadata.namespace = Some(NS.into());
    srv.metadata.creation_timestamp = Some(Time("2024-01-02T00:00:00Z".parse().unwrap()));

    let i = Index::new(ClusterConfig::default());
    i.update(|s| {
        k8s::apply(s, &pod);
        k8s::apply(s, &svc);
        k8s::apply(s, &srv);
    });
    let st = i.state();
    let w = &st.workloads[&key("web-1")];
    assert_eq!(w.named_ports["http"], 8080);
    assert!(w.probes[&8080].contains("/ready"));
    assert_eq!(st.servers[&key("web-http")].meta.created, 1_704_153_600);
    let s = i.inbound(&key("web-1"), 8080).unwrap();
    assert_eq!(s.labels["name"], "web-http");
    assert!(matches!(
        s.protocol.unwrap().kind,
        Some(proxy_protocol::Kind::Http2(_))
    ));
    assert_eq!(
        i.service_by_ip("10.96.1.1".parse().unwrap()),
        Some(key("api"))
    );
    let p = i.outbound(&key("api"), 5432).unwrap();
    assert!(matches!(
        p.protocol.unwrap().kind,
        Some(out::Kind::Opaque(_))
    ));
    assert!(
        detect_http1(&i.outbound(&key("api"), 80).unwrap())
            .failure_accrual
            .is_some()
    );

    i.update(|s| k8s::delete(s, &srv));
    assert_eq!(
        i.inbound(&key("web-1"), 8080).unwrap().labels["kind"],
        "default"
    );
    let _ = BTreeMap::<String, String>::new();
}
