use super::*;

mod props;
use crate::{http::matching::RouteRequest, metrics::Metrics};
use http::{HeaderMap, Method, StatusCode, Version};
use proto::api::{
    grpc_route as g, http_route as hr,
    meta::{Metadata, metadata},
    outbound::{self as api, ProxyProtocol, backend, grpc_route, http_route, proxy_protocol},
};

fn backend(path: &str) -> api::Backend {
    api::Backend {
        metadata: None,
        queue: None,
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(backend::endpoint_discovery::Kind::Dst(
                    backend::endpoint_discovery::DestinationGet { path: path.into() },
                )),
            }),
            load: None,
        })),
    }
}

#[allow(deprecated)]
fn rule(matches: Vec<hr::HttpRouteMatch>, backends: &[(&str, u32)]) -> http_route::Rule {
    http_route::Rule {
        matches,
        filters: vec![],
        backends: Some(http_route::Distribution {
            kind: Some(http_route::distribution::Kind::RandomAvailable(
                http_route::distribution::RandomAvailable {
                    backends: backends
                        .iter()
                        .map(|(p, w)| http_route::WeightedRouteBackend {
                            backend: Some(http_route::RouteBackend {
                                backend: Some(backend(p)),
                                filters: vec![],
                                request_timeout: None,
                            }),
                            weight: *w,
                        })
                        .collect(),
                },
            )),
        }),
        request_timeout: None,
        timeouts: None,
        retry: None,
        allow_l5d_request_headers: false,
    }
}

fn path(kind: hr::path_match::Kind) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        path: Some(hr::PathMatch { kind: Some(kind) }),
        ..Default::default()
    }
}

fn policy(rules: Vec<http_route::Rule>) -> api::OutboundPolicy {
    api::OutboundPolicy {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Default("web:80".into())),
        }),
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                routes: vec![api::HttpRoute {
                    metadata: None,
                    hosts: vec![],
                    rules,
                }],
                failure_accrual: None,
            })),
        }),
    }
}

fn target(p: &OutboundPolicy, method: Method, path: &str, headers: &HeaderMap) -> Option<String> {
    let req = RouteRequest::test(Some("web:80"), &method, path, headers);
    let rule = p.select(Version::HTTP_11, &req)?;
    match &rule.backends[0].target {
        BackendTarget::Balancer(b) => Some(b.to_string()),
        BackendTarget::Forward(e) => Some(e.addr.to_string()),
    }
}

#[test]
fn the_most_specific_match_wins_whatever_the_order() {
    use hr::path_match::Kind::{Exact, Prefix};
    let p = OutboundPolicy::from_api(
        policy(vec![
            rule(vec![path(Prefix("/".into()))], &[("root:80", 1)]),
            rule(vec![path(Prefix("/api".into()))], &[("api:80", 1)]),
            rule(vec![path(Exact("/api/login".into()))], &[("login:80", 1)]),
            rule(
                vec![hr::HttpRouteMatch {
                    method: Some(proto::api::http_types::HttpMethod::from(Method::POST)),
                    ..path(Prefix("/api".into()))
                }],
                &[("api-writes:80", 1)],
            ),
        ]),
        &Metrics::new(),
    )
    .expect("valid policy");
    let h = HeaderMap::new();
    let t = |m: Method, path: &str| target(&p, m, path, &h);
    assert_eq!(t(Method::GET, "/api/login").as_deref(), Some("login:80"));
    assert_eq!(t(Method::GET, "/api/items").as_deref(), Some("api:80"));
    assert_eq!(
        t(Method::POST, "/api/items").as_deref(),
        Some("api-writes:80")
    );
    assert_eq!(t(Method::GET, "/apix").as_deref(), Some("root:80"));
    // HTTP/2 requests have no routes in an HTTP/1-only policy.
    assert!(
        p.select(
            Version::HTTP_2,
            &RouteRequest::test(None, &Method::GET, "/", &h)
        )
        .is_none()
    );
}

#[test]
fn backends_are_drawn_by_weight() {
    let p = OutboundPolicy::from_api(
        policy(vec![rule(vec![], &[("v1:80", 90), ("v2:80", 10)])]),
        &Metrics::new(),
    )
    .expect("valid policy");
    let r = p
        .select(
            Version::HTTP_11,
            &RouteRequest::test(None, &Method::GET, "/", &HeaderMap::new()),
        )
        .expect("a rule");
    let n = 20_000;
    let v2 = (0..n).filter(|_| r.pick_backend() == Some(1)).count();
    let share = v2 as f64 / n as f64;
    assert!((0.09..0.11).contains(&share), "v2 share {share}");
    // A zero weight is never drawn.
    let p = OutboundPolicy::from_api(
        policy(vec![rule(vec![], &[("v1:80", 1), ("v2:80", 0)])]),
        &Metrics::new(),
    )
    .expect("valid policy");
    let r = p
        .select(
            Version::HTTP_11,
            &RouteRequest::test(None, &Method::GET, "/", &HeaderMap::new()),
        )
        .expect("a rule");
    assert!((0..1000).all(|_| r.pick_backend() == Some(0)));
}

#[test]
fn filters_retries_and_timeouts_are_converted() {
    let mut r = rule(vec![], &[("web:80", 1)]);
    r.filters = vec![
        http_route::Filter {
            kind: Some(http_route::filter::Kind::FailureInjector(
                hr::HttpFailureInjector {
                    status: 503,
                    message: "chaos".into(),
                    ratio: Some(hr::Ratio {
                        numerator: 1,
                        denominator: 4,
                    }),
                },
            )),
        },
        http_route::Filter {
            kind: Some(http_route::filter::Kind::RequestHeaderModifier(
                hr::RequestHeaderModifier {
                    add: None,
                    set: Some(proto::api::http_types::Headers {
                        headers: vec![proto::api::http_types::headers::Header {
                            name: "x-route".into(),
                            value: b"web".to_vec(),
                        }],
                    }),
                    remove: vec!["x-debug".into()],
                },
            )),
        },
    ];
    r.timeouts = Some(hr::Timeouts {
        request: Some(std::time::Duration::from_millis(300).try_into().unwrap()),
        ..Default::default()
    });
    r.retry = Some(http_route::Retry {
        max_retries: 2,
        max_request_bytes: 0,
        conditions: None,
        timeout: Some(std::time::Duration::from_millis(100).try_into().unwrap()),
        backoff: None,
    });
    let p = OutboundPolicy::from_api(policy(vec![r]), &Metrics::new()).expect("valid policy");
    let rule = &p.http1[0].rules[0];
    assert_eq!(rule.timeout, Some(std::time::Duration::from_millis(300)));
    let retry = rule.retry.as_ref().expect("retry");
    assert_eq!(retry.max_retries, 2);
    assert_eq!(retry.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
    assert!(retry.retryable(StatusCode::SERVICE_UNAVAILABLE, None));
    assert!(!retry.retryable(StatusCode::NOT_FOUND, None));
    assert_eq!(retry.timeout, Some(std::time::Duration::from_millis(100)));
    assert!(matches!(
        rule.filters[0],
        Filter::Fail {
            status: StatusCode::SERVICE_UNAVAILABLE,
            numerator: 1,
            denominator: 4,
            ..
        }
    ));
    let mut h = HeaderMap::new();
    h.insert("x-debug", "1".parse().unwrap());
    rule.edit_request(0, &mut h);
    assert_eq!(h.get("x-route").unwrap(), "web");
    assert!(!h.contains_key("x-debug"));
    // About a quarter of decisions are injected failures.
    let failed = (0..8000)
        .filter(|_| matches!(rule.decide(), Decision::Fail(_)))
        .count();
    assert!((1600..2400).contains(&failed), "{failed} of 8000 injected");
}

#[test]
fn grpc_routes_retry_on_grpc_statuses() {
    #[allow(deprecated)]
    let route = api::GrpcRoute {
        metadata: None,
        hosts: vec![],
        rules: vec![grpc_route::Rule {
            matches: vec![g::GrpcRouteMatch {
                rpc: Some(g::GrpcRpcMatch {
                    service: "demo.Quotes".into(),
                    method: "Get".into(),
                }),
                headers: vec![],
            }],
            filters: vec![],
            backends: Some(grpc_route::Distribution {
                kind: Some(grpc_route::distribution::Kind::FirstAvailable(
                    grpc_route::distribution::FirstAvailable {
                        backends: vec![grpc_route::RouteBackend {
                            backend: Some(backend("quotes:9090")),
                            filters: vec![],
                            request_timeout: None,
                        }],
                    },
                )),
            }),
            request_timeout: None,
            timeouts: None,
            retry: Some(grpc_route::Retry {
                max_retries: 1,
                max_request_bytes: 1024,
                conditions: Some(grpc_route::retry::Conditions {
                    unavailable: true,
                    internal: true,
                    ..Default::default()
                }),
                timeout: None,
                backoff: None,
            }),
            allow_l5d_request_headers: false,
        }],
    };
    let p = OutboundPolicy::from_api(
        api::OutboundPolicy {
            metadata: None,
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
                    routes: vec![route],
                    failure_accrual: None,
                })),
            }),
        },
        &Metrics::new(),
    )
    .expect("valid policy");
    let h = HeaderMap::new();
    let rule = p
        .select(
            Version::HTTP_2,
            &RouteRequest::test(None, &Method::POST, "/demo.Quotes/Get", &h),
        )
        .expect("the rpc's rule");
    let retry = rule.retry.as_ref().expect("retry");
    assert!(retry.retryable(StatusCode::OK, Some(14)));
    assert!(retry.retryable(StatusCode::OK, Some(13)));
    assert!(!retry.retryable(StatusCode::OK, Some(5)));
    assert!(
        p.select(
            Version::HTTP_2,
            &RouteRequest::test(None, &Method::POST, "/demo.Quotes/List", &h)
        )
        .is_none()
    );
}

#[test]
fn an_unusable_policy_is_an_error_not_a_panic() {
    let mut p = policy(vec![rule(vec![], &[("web:80", 1)])]);
    p.protocol = None;
    assert!(OutboundPolicy::from_api(p, &Metrics::new()).is_err());
    let mut bad = rule(vec![], &[("web:80", 1)]);
    bad.filters = vec![http_route::Filter {
        kind: Some(http_route::filter::Kind::FailureInjector(
            hr::HttpFailureInjector {
                status: 1000,
                message: String::new(),
                ratio: None,
            },
        )),
    }];
    assert!(OutboundPolicy::from_api(policy(vec![bad]), &Metrics::new()).is_err());
}

/// A rule answering with a redirect (as the Gateway API's RequestRedirect says).
fn redirect_rule(prefix: &str, r: hr::RequestRedirect) -> http_route::Rule {
    let mut rule = rule(
        vec![path(hr::path_match::Kind::Prefix(prefix.into()))],
        &[("web:80", 1)],
    );
    rule.filters = vec![http_route::Filter {
        kind: Some(http_route::filter::Kind::Redirect(r)),
    }];
    rule
}

#[test]
fn redirects_build_their_location_from_the_request() {
    use hr::path_modifier::Replace;
    let modifier = |r: Replace| Some(hr::PathModifier { replace: Some(r) });
    let https = Some(proto::api::http_types::Scheme::from("https"));
    let cases: Vec<(hr::RequestRedirect, &str, &str, u16, &str)> = vec![
        // (filter, request authority, request path, status, location)
        (
            hr::RequestRedirect {
                status: 303,
                ..Default::default()
            },
            "echo",
            "/redirect",
            303,
            "http://echo/redirect",
        ),
        (
            hr::RequestRedirect {
                host: "example.org".into(),
                status: 302,
                ..Default::default()
            },
            "echo:80",
            "/hostname-redirect?x=1",
            302,
            "http://example.org/hostname-redirect?x=1",
        ),
        (
            hr::RequestRedirect {
                port: 8083,
                status: 302,
                ..Default::default()
            },
            "echo",
            "/port",
            302,
            "http://echo:8083/port",
        ),
        (
            hr::RequestRedirect {
                scheme: https.clone(),
                status: 301,
                ..Default::default()
            },
            "echo:8080",
            "/scheme",
            301,
            "https://echo/scheme",
        ),
        (
            hr::RequestRedirect {
                scheme: https,
                port: 8443,
                status: 302,
                ..Default::default()
            },
            "echo",
            "/scheme",
            302,
            "https://echo:8443/scheme",
        ),
        (
            hr::RequestRedirect {
                path: modifier(Replace::Prefix("/replacement-prefix".into())),
                status: 302,
                ..Default::default()
            },
            "echo",
            "/original-prefix/lemon",
            302,
            "http://echo/replacement-prefix/lemon",
        ),
        (
            hr::RequestRedirect {
                path: modifier(Replace::Prefix("/".into())),
                status: 302,
                ..Default::default()
            },
            "echo",
            "/original-prefix",
            302,
            "http://echo/",
        ),
        (
            hr::RequestRedirect {
                host: "example.org".into(),
                path: modifier(Replace::Full("/replacement-full".into())),
                status: 307,
                ..Default::default()
            },
            "echo:9000",
            "/original-prefix/x",
            307,
            "http://example.org:9000/replacement-full",
        ),
    ];
    for (r, authority, target, status, location) in cases {
        let prefix = if target.starts_with("/original-prefix") {
            "/original-prefix"
        } else {
            "/"
        };
        let p = OutboundPolicy::from_api(policy(vec![redirect_rule(prefix, r)]), &Metrics::new())
            .expect("valid policy");
        let h = HeaderMap::new();
        let req = RouteRequest::test(Some(authority), &Method::GET, target, &h);
        let rule = p.select(Version::HTTP_11, &req).expect("a rule");
        let Decision::Redirect(rule, redirect) = rule.decide() else {
            panic!("{target}: not a redirect");
        };
        assert_eq!(redirect.status.as_u16(), status, "{target}");
        let got = redirect.location(rule, &req, None).expect("a location");
        assert_eq!(got, location, "{target}");
    }
    // Not a redirect status: refused with the policy.
    let bad = redirect_rule(
        "/",
        hr::RequestRedirect {
            status: 200,
            ..Default::default()
        },
    );
    assert!(OutboundPolicy::from_api(policy(vec![bad]), &Metrics::new()).is_err());
}
