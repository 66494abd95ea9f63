//! The `OutboundPolicy` for one service port: its HTTPRoutes or GRPCRoutes (or a default
//! route), weighted backends, timeouts, retries and failure accrual.

// The deprecated `request_timeout` fields are still filled (mirroring `timeouts.response`
// and `backendRequest`), as Linkerd's controller does, for proxies that read only them.
#![allow(deprecated)]

use crate::{
    model::{ClusterConfig, Key, Meta, Res, Service, State, parse_duration},
    resources::{BackendRef, GRPCRouteSpec, HTTPRouteSpec, ParentRef},
    routes::{
        self, GATEWAY_GROUP, GrpcFilter, HttpFilter, RetryConfig, TimeoutConfig, default_meta,
        match_all, pb_duration,
    },
};
use proto::api::{
    http_route::Timeouts,
    meta::{Metadata, Resource, metadata},
    outbound::{
        Backend, ExponentialBackoff, FailureAccrual, GrpcRoute, HttpRoute, OpaqueRoute,
        OutboundPolicy, ProxyProtocol, Queue, backend, failure_accrual, grpc_route, http_route,
        opaque_route, proxy_protocol,
    },
};
use std::{collections::BTreeMap, time::Duration};

pub const FAILURE_ACCRUAL: &str = "balancer.linkerd.io/failure-accrual";
const FA_PREFIX: &str = "balancer.linkerd.io/failure-accrual-consecutive-";

/// The outbound policy for `port` of `svc`; `None` if the service is unknown.
pub fn policy(state: &State, cfg: &ClusterConfig, key: &Key, port: u16) -> Option<OutboundPolicy> {
    let svc = state.services.get(key)?;
    let metadata = Some(service_meta(key, port));
    if !svc.ports.is_empty() && !svc.ports.contains(&port) {
        return Some(undefined_port(metadata));
    }
    let default = default_backend(cfg, key, port);
    let opaque = proxy_protocol::Opaque {
        routes: vec![OpaqueRoute {
            metadata: Some(default_meta("opaq")),
            rules: vec![opaque_route::Rule {
                backends: Some(opaque_route::Distribution {
                    kind: Some(opaque_route::distribution::Kind::FirstAvailable(
                        opaque_route::distribution::FirstAvailable {
                            backends: vec![opaque_route::RouteBackend {
                                backend: Some(default.clone()),
                                filters: vec![],
                            }],
                        },
                    )),
                }),
                filters: vec![],
            }],
        }],
    };
    if svc.opaque_ports.contains(&port) {
        return Some(OutboundPolicy {
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Opaque(opaque)),
            }),
            metadata,
        });
    }
    let failure_accrual = failure_accrual(&svc.annotations).unwrap_or_else(|e| {
        tracing::warn!(service = %key.1, namespace = %key.0, error = %e, "failure accrual ignored");
        None
    });
    let grpc = attached(&state.grpc_routes, key, port, |s: &GRPCRouteSpec| {
        &s.parent_refs
    });
    let kind = if !grpc.is_empty() {
        let routes = grpc
            .into_iter()
            .filter_map(|r| {
                grpc_route(cfg, svc, key, port, r)
                    .map_err(
                        |e| tracing::warn!(route = %r.meta.name, error = %e, "GRPCRoute skipped"),
                    )
                    .ok()
            })
            .collect();
        proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
            routes,
            failure_accrual,
        })
    } else {
        let http = attached(&state.http_routes, key, port, |s: &HTTPRouteSpec| {
            &s.parent_refs
        });
        let mut routes: Vec<HttpRoute> = http
            .into_iter()
            .filter_map(|r| {
                http_route(cfg, svc, key, port, r)
                    .map_err(
                        |e| tracing::warn!(route = %r.meta.name, error = %e, "HTTPRoute skipped"),
                    )
                    .ok()
            })
            .collect();
        if routes.is_empty() {
            routes.push(default_http_route(svc, &default));
        }
        proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: Some(pb_duration(Duration::from_secs(10))),
            opaque: Some(opaque),
            http1: Some(proxy_protocol::Http1 {
                routes: routes.clone(),
                failure_accrual,
            }),
            http2: Some(proxy_protocol::Http2 {
                routes,
                failure_accrual,
            }),
        })
    };
    Some(OutboundPolicy {
        protocol: Some(ProxyProtocol { kind: Some(kind) }),
        metadata,
    })
}

fn service_meta(key: &Key, port: u16) -> Metadata {
    Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "core".into(),
            kind: "Service".into(),
            name: key.1.clone(),
            namespace: key.0.clone(),
            section: String::new(),
            port: u32::from(port),
        })),
    }
}

/// Opaque, no backends, `Forbidden`: a port the Service does not declare.
fn undefined_port(metadata: Option<Metadata>) -> OutboundPolicy {
    OutboundPolicy {
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {
                routes: vec![OpaqueRoute {
                    metadata: Some(default_meta("undefined-port")),
                    rules: vec![opaque_route::Rule {
                        backends: Some(opaque_route::Distribution {
                            kind: Some(opaque_route::distribution::Kind::Empty(
                                opaque_route::distribution::Empty {},
                            )),
                        }),
                        filters: vec![opaque_route::Filter {
                            kind: Some(opaque_route::filter::Kind::Forbidden(
                                proto::api::opaque_route::Forbidden {},
                            )),
                        }],
                    }],
                }],
            })),
        }),
        metadata,
    }
}

/// BalanceP2c over `<svc>.<ns>.svc.<domain>:<port>`, PeakEwma (30 ms, 10 s), queue 100 with a
/// 3 s fail-fast: Linkerd's controller's values.
pub fn default_backend(cfg: &ClusterConfig, key: &Key, port: u16) -> Backend {
    use backend::{BalanceP2c, EndpointDiscovery, balance_p2c, endpoint_discovery};
    Backend {
        metadata: Some(service_meta(key, port)),
        queue: Some(Queue {
            capacity: 100,
            failfast_timeout: Some(pb_duration(Duration::from_secs(3))),
        }),
        kind: Some(backend::Kind::Balancer(BalanceP2c {
            discovery: Some(EndpointDiscovery {
                kind: Some(endpoint_discovery::Kind::Dst(
                    endpoint_discovery::DestinationGet {
                        path: cfg.authority(&key.0, &key.1, port),
                    },
                )),
            }),
            load: Some(balance_p2c::Load::PeakEwma(balance_p2c::PeakEwma {
                default_rtt: Some(pb_duration(Duration::from_millis(30))),
                decay: Some(pb_duration(Duration::from_secs(10))),
            })),
        })),
    }
}

/// Routes whose parentRefs name this Service (on this port, or on every port), oldest first.
fn attached<'a, T>(
    routes: &'a BTreeMap<Key, Res<T>>,
    key: &Key,
    port: u16,
    parents: impl Fn(&T) -> &Vec<ParentRef>,
) -> Vec<&'a Res<T>> {
    let mut out: Vec<&Res<T>> = routes
        .values()
        .filter(|r| {
            parents(&r.spec).iter().any(|p| {
                matches!(p.group.as_deref(), None | Some("") | Some("core"))
                    && p.kind.as_deref().unwrap_or("Service") == "Service"
                    && p.name == key.1
                    && p.namespace.as_deref().unwrap_or(&r.meta.namespace) == key.0
                    && p.port.is_none_or(|p| p == port)
            })
        })
        .collect();
    out.sort_by(|a, b| order(&a.meta, &b.meta));
    out
}

/// Oldest first, then by namespace and name: the Gateway API's tie-break between routes
/// (and Linkerd's between Servers).
fn order(a: &Meta, b: &Meta) -> std::cmp::Ordering {
    (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
}

fn default_http_route(svc: &Service, default: &Backend) -> HttpRoute {
    let retry = routes::retry(&svc.annotations).ok().flatten();
    let timeouts = routes::timeouts(&svc.annotations).unwrap_or_default();
    HttpRoute {
        metadata: Some(default_meta("default")),
        hosts: vec![],
        rules: vec![http_route::Rule {
            matches: vec![match_all()],
            filters: vec![],
            backends: Some(http_route::Distribution {
                kind: Some(http_route::distribution::Kind::FirstAvailable(
                    http_route::distribution::FirstAvailable {
                        backends: vec![http_route::RouteBackend {
                            backend: Some(default.clone()),
                            filters: vec![],
                            request_timeout: None,
                        }],
                    },
                )),
            }),
            request_timeout: timeouts.response.map(pb_duration),
            timeouts: pb_timeouts(&timeouts),
            retry: retry.as_ref().map(http_retry),
            allow_l5d_request_headers: false,
        }],
    }
}

fn pb_timeouts(t: &TimeoutConfig) -> Option<Timeouts> {
    if *t == TimeoutConfig::default() {
        return None;
    }
    Some(Timeouts {
        response: t.response.map(pb_duration),
        request: t.request.map(pb_duration),
        idle: t.idle.map(pb_duration),
    })
}

/// Linkerd's controller's retry values: 64 KiB replay buffer, 25–250 ms backoff, jitter 1.
fn backoff() -> ExponentialBackoff {
    ExponentialBackoff {
        min_backoff: Some(pb_duration(Duration::from_millis(25))),
        max_backoff: Some(pb_duration(Duration::from_millis(250))),
        jitter_ratio: 1.0,
        respect_retry_after_hint: false,
    }
}

const MAX_REQUEST_BYTES: u32 = 64 * 1024;

fn http_retry(r: &RetryConfig) -> http_route::Retry {
    use http_route::retry::{Conditions, conditions::StatusRange};
    http_route::Retry {
        max_retries: r.limit,
        max_request_bytes: MAX_REQUEST_BYTES,
        conditions: Some(Conditions {
            status_ranges: r
                .http
                .iter()
                .map(|(start, end)| StatusRange {
                    start: *start,
                    end: *end,
                })
                .collect(),
        }),
        timeout: r.timeout.map(pb_duration),
        backoff: Some(backoff()),
    }
}

fn grpc_retry(r: &RetryConfig) -> grpc_route::Retry {
    let has = |c: &str| r.grpc.iter().any(|g| g == c);
    grpc_route::Retry {
        max_retries: r.limit,
        max_request_bytes: MAX_REQUEST_BYTES,
        conditions: Some(grpc_route::retry::Conditions {
            cancelled: has("cancelled"),
            deadine_exceeded: has("deadline-exceeded"),
            resource_exhausted: has("resource-exhausted"),
            internal: has("internal"),
            unavailable: has("unavailable"),
        }),
        timeout: r.timeout.map(pb_duration),
        backoff: Some(backoff()),
    }
}

/// The Service backend a backendRef names (default: the route's namespace, the parent port).
fn backend_for(
    cfg: &ClusterConfig,
    route_ns: &str,
    port: u16,
    b: &BackendRef,
) -> Result<Backend, String> {
    if !matches!(b.group.as_deref(), None | Some("") | Some("core"))
        || b.kind.as_deref().unwrap_or("Service") != "Service"
    {
        return Err(format!("backendRef {} is not a Service", b.name));
    }
    let key = (
        b.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
        b.name.clone(),
    );
    Ok(default_backend(cfg, &key, b.port.unwrap_or(port)))
}

/// A rule's (or a backend's) HTTP filters in the outbound API.
fn http_filters(
    fs: Option<&[crate::resources::HTTPRouteFilter]>,
) -> Result<Vec<http_route::Filter>, String> {
    use http_route::filter::Kind;
    Ok(routes::http_filters(fs)?
        .into_iter()
        .map(|f| http_route::Filter {
            kind: Some(match f {
                HttpFilter::FailureInjector(f) => Kind::FailureInjector(f),
                HttpFilter::RequestHeaderModifier(f) => Kind::RequestHeaderModifier(f),
                HttpFilter::ResponseHeaderModifier(f) => Kind::ResponseHeaderModifier(f),
                HttpFilter::Redirect(f) => Kind::Redirect(f),
            }),
        })
        .collect())
}

/// A rule's (or a backend's) gRPC filters in the outbound API.
fn grpc_filters(
    fs: Option<&[crate::resources::HTTPRouteFilter]>,
) -> Result<Vec<grpc_route::Filter>, String> {
    use grpc_route::filter::Kind;
    Ok(routes::grpc_filters(fs)?
        .into_iter()
        .map(|f| grpc_route::Filter {
            kind: Some(match f {
                GrpcFilter::FailureInjector(f) => Kind::FailureInjector(f),
                GrpcFilter::RequestHeaderModifier(f) => Kind::RequestHeaderModifier(f),
            }),
        })
        .collect())
}

fn http_route(
    cfg: &ClusterConfig,
    svc: &Service,
    key: &Key,
    port: u16,
    r: &Res<HTTPRouteSpec>,
) -> Result<HttpRoute, String> {
    let ann =
        routes::effective_annotations(&r.meta.annotations, &svc.annotations, "retry.linkerd.io/");
    let retry = routes::retry(ann)?;
    let tann =
        routes::effective_annotations(&r.meta.annotations, &svc.annotations, "timeout.linkerd.io/");
    let ann_timeouts = routes::timeouts(tann)?;
    let rules = r
        .spec
        .rules
        .iter()
        .map(|rule| {
            let mut timeouts = ann_timeouts.clone();
            let mut backend_timeout = None;
            if let Some(t) = &rule.timeouts {
                if let Some(req) = &t.request {
                    timeouts.request = Some(parse_duration(req)?);
                }
                if let Some(b) = &t.backend_request {
                    backend_timeout = Some(parse_duration(b)?);
                }
            }
            let refs = rule.backend_refs.as_deref().unwrap_or_default();
            let backends = if refs.is_empty() {
                http_route::distribution::Kind::FirstAvailable(
                    http_route::distribution::FirstAvailable {
                        backends: vec![http_route::RouteBackend {
                            backend: Some(default_backend(cfg, key, port)),
                            filters: vec![],
                            request_timeout: backend_timeout.map(pb_duration),
                        }],
                    },
                )
            } else {
                http_route::distribution::Kind::RandomAvailable(
                    http_route::distribution::RandomAvailable {
                        backends: refs
                            .iter()
                            .map(|b| {
                                Ok(http_route::WeightedRouteBackend {
                                    weight: b.weight.unwrap_or(1),
                                    backend: Some(http_route::RouteBackend {
                                        backend: Some(backend_for(
                                            cfg,
                                            &r.meta.namespace,
                                            port,
                                            b,
                                        )?),
                                        filters: http_filters(b.filters.as_deref())?,
                                        request_timeout: backend_timeout.map(pb_duration),
                                    }),
                                })
                            })
                            .collect::<Result<_, String>>()?,
                    },
                )
            };
            Ok(http_route::Rule {
                matches: routes::http_matches(rule.matches.as_deref())?,
                filters: http_filters(rule.filters.as_deref())?,
                backends: Some(http_route::Distribution {
                    kind: Some(backends),
                }),
                request_timeout: timeouts.response.map(pb_duration),
                timeouts: pb_timeouts(&timeouts),
                retry: retry.as_ref().map(http_retry),
                allow_l5d_request_headers: false,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(HttpRoute {
        metadata: Some(routes::resource_meta(GATEWAY_GROUP, "HTTPRoute", &r.meta)),
        hosts: routes::hosts(r.spec.hostnames.as_deref())?,
        rules,
    })
}

fn grpc_route(
    cfg: &ClusterConfig,
    svc: &Service,
    key: &Key,
    port: u16,
    r: &Res<GRPCRouteSpec>,
) -> Result<GrpcRoute, String> {
    let ann =
        routes::effective_annotations(&r.meta.annotations, &svc.annotations, "retry.linkerd.io/");
    let retry = routes::retry(ann)?;
    let tann =
        routes::effective_annotations(&r.meta.annotations, &svc.annotations, "timeout.linkerd.io/");
    let timeouts = routes::timeouts(tann)?;
    let rules = r
        .spec
        .rules
        .iter()
        .map(|rule| {
            let refs = rule.backend_refs.as_deref().unwrap_or_default();
            let backends = if refs.is_empty() {
                grpc_route::distribution::Kind::FirstAvailable(
                    grpc_route::distribution::FirstAvailable {
                        backends: vec![grpc_route::RouteBackend {
                            backend: Some(default_backend(cfg, key, port)),
                            filters: vec![],
                            request_timeout: None,
                        }],
                    },
                )
            } else {
                grpc_route::distribution::Kind::RandomAvailable(
                    grpc_route::distribution::RandomAvailable {
                        backends: refs
                            .iter()
                            .map(|b| {
                                Ok(grpc_route::WeightedRouteBackend {
                                    weight: b.weight.unwrap_or(1),
                                    backend: Some(grpc_route::RouteBackend {
                                        backend: Some(backend_for(
                                            cfg,
                                            &r.meta.namespace,
                                            port,
                                            b,
                                        )?),
                                        filters: grpc_filters(b.filters.as_deref())?,
                                        request_timeout: None,
                                    }),
                                })
                            })
                            .collect::<Result<_, String>>()?,
                    },
                )
            };
            Ok(grpc_route::Rule {
                matches: routes::grpc_matches(rule.matches.as_deref())?,
                filters: grpc_filters(rule.filters.as_deref())?,
                backends: Some(grpc_route::Distribution {
                    kind: Some(backends),
                }),
                request_timeout: timeouts.response.map(pb_duration),
                timeouts: pb_timeouts(&timeouts),
                retry: retry.as_ref().map(grpc_retry),
                allow_l5d_request_headers: false,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(GrpcRoute {
        metadata: Some(routes::resource_meta(GATEWAY_GROUP, "GRPCRoute", &r.meta)),
        hosts: routes::hosts(r.spec.hostnames.as_deref())?,
        rules,
    })
}

/// `balancer.linkerd.io/failure-accrual: consecutive` with `…-consecutive-max-failures`
/// (default 7), `…-min-penalty` (1s), `…-max-penalty` (60s), `…-jitter-ratio` (0.5).
pub fn failure_accrual(ann: &BTreeMap<String, String>) -> Result<Option<FailureAccrual>, String> {
    let Some(mode) = ann.get(FAILURE_ACCRUAL) else {
        return Ok(None);
    };
    if mode != "consecutive" {
        return Err(format!(
            "{FAILURE_ACCRUAL}: {mode:?} is not supported (only \"consecutive\")"
        ));
    }
    let get = |k: &str| ann.get(&format!("{FA_PREFIX}{k}"));
    let max_failures = match get("max-failures") {
        None => 7,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{FA_PREFIX}max-failures: {v:?} is not a positive count"))?,
    };
    let dur = |k: &str, d: Duration| -> Result<Duration, String> {
        get(k)
            .map(|v| parse_duration(v).map_err(|e| format!("{FA_PREFIX}{k}: {e}")))
            .transpose()
            .map(|v| v.unwrap_or(d))
    };
    let min = dur("min-penalty", Duration::from_secs(1))?;
    let max = dur("max-penalty", Duration::from_secs(60))?;
    if max < min {
        return Err(format!("{FA_PREFIX}max-penalty is below min-penalty"));
    }
    let jitter = match get("jitter-ratio") {
        None => 0.5,
        Some(v) => v
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|j| (0.0..=100.0).contains(j))
            .ok_or_else(|| format!("{FA_PREFIX}jitter-ratio: {v:?} is not a ratio"))?,
    };
    Ok(Some(FailureAccrual {
        ejection: None,
        kind: Some(failure_accrual::Kind::ConsecutiveFailures(
            failure_accrual::ConsecutiveFailures {
                max_failures,
                backoff: Some(ExponentialBackoff {
                    min_backoff: Some(pb_duration(min)),
                    max_backoff: Some(pb_duration(max)),
                    jitter_ratio: jitter,
                    respect_retry_after_hint: false,
                }),
            },
        )),
    }))
}
