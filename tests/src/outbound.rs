//! A controllable Linkerd policy service for outbound policies: `OutboundPolicies` over real
//! gRPC, serving whatever policy a test sets for each authority and streaming every change to
//! its watchers; an unknown target gets `NOT_FOUND`. Plus builders for the policies tests use.

use crate::watched::{Streamed, Watched, publish, stream};
use linkerd2_proxy_api::{
    http_route::{
        self as hr, HttpFailureInjector, HttpRouteMatch, PathMatch, Ratio, Timeouts, path_match,
    },
    meta::{Metadata, Resource, metadata},
    outbound::{
        Backend, ExponentialBackoff, FailureAccrual, HttpRoute, OutboundPolicy, ProxyProtocol,
        TrafficSpec, backend, failure_accrual, http_route,
        outbound_policies_server::{OutboundPolicies, OutboundPoliciesServer},
        proxy_protocol, traffic_spec,
    },
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

type Targets = Watched<String, OutboundPolicy>;

#[derive(Clone)]
struct Svc {
    targets: Targets,
}

impl Svc {
    fn target(&self, spec: &TrafficSpec) -> Result<watch::Receiver<OutboundPolicy>, Status> {
        let key = match &spec.target {
            Some(traffic_spec::Target::Authority(a)) => a.clone(),
            Some(traffic_spec::Target::Addr(a)) => proto::net::to_socket_addr(a)
                .map_err(|_| Status::invalid_argument("bad address"))?
                .to_string(),
            None => return Err(Status::invalid_argument("no target")),
        };
        self.targets
            .lock()
            .expect("targets lock")
            .get(&key)
            .map(|tx| tx.subscribe())
            .ok_or_else(|| Status::not_found(format!("no policy for {key}")))
    }
}

#[tonic::async_trait]
impl OutboundPolicies for Svc {
    type WatchStream = Streamed<OutboundPolicy>;

    async fn get(&self, req: Request<TrafficSpec>) -> Result<Response<OutboundPolicy>, Status> {
        let rx = self.target(req.get_ref())?;
        let p = rx.borrow().clone();
        Ok(Response::new(p))
    }

    async fn watch(
        &self,
        req: Request<TrafficSpec>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self.target(req.get_ref())?;
        Ok(Response::new(stream(rx)))
    }
}

/// The outbound policy service, serving on its own task until dropped.
#[derive(Debug)]
pub struct OutboundPolicyServer {
    pub addr: SocketAddr,
    targets: Targets,
    task: tokio::task::JoinHandle<()>,
}

impl OutboundPolicyServer {
    pub async fn start() -> Self {
        let targets: Targets = Arc::default();
        let svc = Svc {
            targets: targets.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(OutboundPoliciesServer::new(svc))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        Self {
            addr,
            targets,
            task,
        }
    }

    /// Sets the policy of `target` (`host:port` or `ip:port`), streaming it to every watcher.
    pub fn set(&self, target: &str, policy: OutboundPolicy) {
        publish(&self.targets, target.to_string(), policy);
    }
}

impl Drop for OutboundPolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource(kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "gateway.networking.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        })),
    })
}

/// A Service's HTTP policy (detected HTTP/1 and HTTP/2) with these routes.
pub fn http_policy(
    service: &str,
    routes: Vec<HttpRoute>,
    accrual: Option<FailureAccrual>,
) -> OutboundPolicy {
    OutboundPolicy {
        metadata: resource("Service", service),
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: Some(Duration::from_secs(10).try_into().expect("duration")),
                opaque: None,
                http1: Some(proxy_protocol::Http1 {
                    routes: routes.clone(),
                    failure_accrual: accrual,
                }),
                http2: Some(proxy_protocol::Http2 {
                    routes,
                    failure_accrual: accrual,
                }),
            })),
        }),
    }
}

/// An HTTPRoute named `name` with these rules, for any host.
pub fn route(name: &str, rules: Vec<http_route::Rule>) -> HttpRoute {
    HttpRoute {
        metadata: resource("HTTPRoute", name),
        hosts: vec![],
        rules,
    }
}

/// A balancer backend discovering `path` (`host:port`).
pub fn backend(path: &str) -> Backend {
    Backend {
        metadata: resource("Service", path),
        queue: None,
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(backend::endpoint_discovery::Kind::Dst(
                    backend::endpoint_discovery::DestinationGet {
                        path: path.to_string(),
                    },
                )),
            }),
            load: None,
        })),
    }
}

/// A rule matching everything and splitting over `(path, weight)` backends.
#[allow(deprecated)]
pub fn split(backends: &[(&str, u32)]) -> http_route::Rule {
    http_route::Rule {
        matches: vec![],
        filters: vec![],
        backends: Some(http_route::Distribution {
            kind: Some(http_route::distribution::Kind::RandomAvailable(
                http_route::distribution::RandomAvailable {
                    backends: backends
                        .iter()
                        .map(|(path, weight)| http_route::WeightedRouteBackend {
                            backend: Some(http_route::RouteBackend {
                                backend: Some(backend(path)),
                                filters: vec![],
                                request_timeout: None,
                            }),
                            weight: *weight,
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

/// Only requests whose path starts with `prefix`.
pub fn path_prefix(mut rule: http_route::Rule, prefix: &str) -> http_route::Rule {
    rule.matches.push(HttpRouteMatch {
        path: Some(PathMatch {
            kind: Some(path_match::Kind::Prefix(prefix.to_string())),
        }),
        ..Default::default()
    });
    rule
}

/// Only requests with this header value (added to the rule's last match, so that it must
/// hold together with that match's path).
pub fn header(mut rule: http_route::Rule, name: &str, value: &str) -> http_route::Rule {
    if rule.matches.is_empty() {
        rule.matches.push(HttpRouteMatch::default());
    }
    if let Some(m) = rule.matches.last_mut() {
        m.headers.push(hr::HeaderMatch {
            name: name.to_string(),
            value: Some(hr::header_match::Value::Exact(value.as_bytes().to_vec())),
        });
    }
    rule
}

/// The whole request (retries included) must have its response headers within `t`.
pub fn with_timeout(mut rule: http_route::Rule, t: Duration) -> http_route::Rule {
    rule.timeouts = Some(Timeouts {
        request: Some(t.try_into().expect("duration")),
        ..Default::default()
    });
    rule
}

/// Retries on 5xx, at most `max` times per request.
pub fn with_retries(mut rule: http_route::Rule, max: u32) -> http_route::Rule {
    rule.retry = Some(http_route::Retry {
        max_retries: max,
        max_request_bytes: 64 * 1024,
        conditions: Some(http_route::retry::Conditions {
            status_ranges: vec![http_route::retry::conditions::StatusRange {
                start: 500,
                end: 599,
            }],
        }),
        timeout: None,
        backoff: Some(backoff(Duration::from_millis(1), Duration::from_millis(5))),
    });
    rule
}

/// Answers `numerator / denominator` of the requests with `status`.
pub fn with_fault(
    mut rule: http_route::Rule,
    status: u32,
    numerator: u32,
    denominator: u32,
) -> http_route::Rule {
    rule.filters.push(http_route::Filter {
        kind: Some(http_route::filter::Kind::FailureInjector(
            HttpFailureInjector {
                status,
                message: "chaos".into(),
                ratio: Some(Ratio {
                    numerator,
                    denominator,
                }),
            },
        )),
    });
    rule
}

pub fn backoff(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBackoff {
        min_backoff: Some(min.try_into().expect("duration")),
        max_backoff: Some(max.try_into().expect("duration")),
        jitter_ratio: 0.0,
        respect_retry_after_hint: false,
    }
}

/// Consecutive-failure accrual: `max` failures in a row eject an endpoint for `min` (doubling
/// up to `max_backoff` while it keeps failing its probes).
pub fn consecutive_failures(max: u32, min: Duration, max_backoff: Duration) -> FailureAccrual {
    FailureAccrual {
        ejection: None,
        kind: Some(failure_accrual::Kind::ConsecutiveFailures(
            failure_accrual::ConsecutiveFailures {
                max_failures: max,
                backoff: Some(backoff(min, max_backoff)),
            },
        )),
    }
}
