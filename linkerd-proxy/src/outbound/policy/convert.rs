//! Converting the API's `OutboundPolicy` into the proxy's model, once per update: every
//! route, rule, filter, backend and retry policy is checked and resolved here (metrics
//! counters included) so that nothing on the request path parses or allocates.

// `request_timeout` of rules and backends is deprecated in favour of `timeouts`; Linkerd's
// controller still fills it (and ours does, mirroring `backendRequest`), so both are read.
#![allow(deprecated)]

use super::budget::Budget;
use super::model::*;
use crate::balance::Accrual;
use crate::{
    http::matching::{RequestMatch, grpc_match, hosts, http_match, metadata_labels, metadata_name},
    metrics::Metrics,
    resolve::Endpoint,
};
use http::{HeaderName, HeaderValue, StatusCode};
use proto::api::{
    http_route as api_route, http_types,
    outbound::{self as api, proxy_protocol},
};
use std::{sync::Arc, time::Duration};

/// Linkerd's defaults for a retry budget: retries may add 20% to the requests, plus 10 per
/// second, over a 10 s window.
const BUDGET_RATIO: f64 = 0.2;
const BUDGET_MIN_PER_SEC: u32 = 10;
const BUDGET_TTL: Duration = Duration::from_secs(10);
/// The largest body kept for replay when the policy names no limit.
pub(crate) const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;

const DEFAULT_BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(25),
    max: Duration::from_millis(250),
    jitter: 0.5,
};

impl OutboundPolicy {
    pub fn from_api(p: api::OutboundPolicy, metrics: &Metrics) -> Result<Self, String> {
        let (parent, parent_labels) = named(p.metadata, "parent", "unknown", true);
        let kind = p
            .protocol
            .and_then(|p| p.kind)
            .ok_or("the policy names no protocol")?;
        let mut out = OutboundPolicy {
            parent: parent.clone(),
            http1: Vec::new(),
            http2: Vec::new(),
            accrual: None,
        };
        let conv = Conv {
            parent_labels,
            metrics,
        };
        match kind {
            proxy_protocol::Kind::Detect(d) => {
                if let Some(h) = d.http1 {
                    out.http1 = conv.http_routes(h.routes)?;
                    out.accrual = accrual(h.failure_accrual)?;
                }
                if let Some(h) = d.http2 {
                    out.http2 = conv.http_routes(h.routes)?;
                    out.accrual = out.accrual.or(accrual(h.failure_accrual)?);
                }
            }
            proxy_protocol::Kind::Http1(h) => {
                out.http1 = conv.http_routes(h.routes)?;
                out.accrual = accrual(h.failure_accrual)?;
            }
            proxy_protocol::Kind::Http2(h) => {
                out.http2 = conv.http_routes(h.routes)?;
                out.accrual = accrual(h.failure_accrual)?;
            }
            proxy_protocol::Kind::Grpc(g) => {
                out.http2 = conv.grpc_routes(g.routes)?;
                out.accrual = accrual(g.failure_accrual)?;
            }
            proxy_protocol::Kind::Opaque(_) | proxy_protocol::Kind::Tls(_) => {}
        }
        Ok(out)
    }
}

/// A policy resource's name and its metric labels (`<prefix>_group`, ..., with `_port` and
/// `_section_name` for a parent).
fn named(
    m: Option<proto::api::meta::Metadata>,
    prefix: &str,
    fallback: &str,
    parent: bool,
) -> (Arc<str>, Arc<str>) {
    let labels = metadata_labels(m.as_ref(), prefix, fallback, parent);
    let (_, name) = metadata_name(m, fallback);
    (name, labels)
}

/// Backends of a distribution of `api::$kind::Distribution` (an HTTP or a gRPC route's): every
/// backend of `RandomAvailable` with its weight, the first of `FirstAvailable`; `$filter`
/// converts that kind's filters. (A macro: the two kinds' messages are alike in shape only.)
macro_rules! backends {
    ($kind:ident, $d:expr, $filter:expr) => {{
        use api::$kind::distribution::Kind;
        distribution(
            $d.and_then(|d| d.kind),
            |k| match k {
                Kind::Empty(_) => Vec::new(),
                Kind::FirstAvailable(f) => f
                    .backends
                    .into_iter()
                    .take(1)
                    .map(|b| (b.backend, b.filters, 1, b.request_timeout))
                    .collect(),
                Kind::RandomAvailable(r) => r
                    .backends
                    .into_iter()
                    .filter_map(|w| {
                        w.backend
                            .map(|b| (b.backend, b.filters, w.weight, b.request_timeout))
                    })
                    .collect(),
            },
            $filter,
        )
    }};
}

struct Conv<'a> {
    /// The parent's metric labels (`parent_group`, ... `parent_section_name`).
    parent_labels: Arc<str>,
    metrics: &'a Metrics,
}

impl Conv<'_> {
    fn http_routes(&self, routes: Vec<api::HttpRoute>) -> Result<Vec<Route>, String> {
        let routes = routes.into_iter().map(|r| (r.metadata, r.hosts, r.rules));
        self.routes(routes, |rule| {
            Ok(RuleParts {
                matches: each(rule.matches, http_match)?,
                filters: each(rule.filters, |f| http_filter(f.kind))?,
                backends: backends!(http_route, rule.backends, |f| http_filter(f.kind))?,
                timeout: route_timeout(rule.timeouts.as_ref(), rule.request_timeout),
                retry: rule.retry.map(|r| retry(&r)).transpose()?,
            })
        })
    }

    fn grpc_routes(&self, routes: Vec<api::GrpcRoute>) -> Result<Vec<Route>, String> {
        let routes = routes.into_iter().map(|r| (r.metadata, r.hosts, r.rules));
        self.routes(routes, |rule| {
            Ok(RuleParts {
                matches: each(rule.matches, grpc_match)?,
                filters: each(rule.filters, |f| grpc_filter(f.kind))?,
                backends: backends!(grpc_route, rule.backends, |f| grpc_filter(f.kind))?,
                timeout: route_timeout(rule.timeouts.as_ref(), rule.request_timeout),
                retry: rule.retry.map(|r| grpc_retry(&r)).transpose()?,
            })
        })
    }

    /// Routes of either kind: each route's metadata, hosts and rules, and how one of its
    /// rules converts.
    fn routes<R>(
        &self,
        routes: impl Iterator<Item = RouteParts<R>>,
        rule: impl Fn(R) -> Result<RuleParts, String>,
    ) -> Result<Vec<Route>, String> {
        routes
            .map(|(metadata, route_hosts, rules)| {
                let (name, labels) = named(metadata, "route", "default", false);
                let rules = rules
                    .into_iter()
                    .map(|r| Ok(self.rule((&name, &labels), rule(r)?)))
                    .collect::<Result<_, String>>()?;
                Ok(Route {
                    name,
                    hosts: hosts(route_hosts),
                    rules,
                })
            })
            .collect()
    }

    fn rule(&self, (route, labels): (&Arc<str>, &Arc<str>), parts: RuleParts) -> Arc<Rule> {
        let RuleParts {
            matches,
            filters,
            backends,
            timeout,
            retry,
        } = parts;
        let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
        Arc::new(Rule {
            matches,
            filters,
            backends,
            total_weight,
            timeout,
            retry,
            route: route.clone(),
            counters: self
                .metrics
                .route(self.parent_labels.clone(), labels.clone()),
        })
    }
}

/// A route message of either kind: its metadata, hosts and rules.
type RouteParts<R> = (
    Option<proto::api::meta::Metadata>,
    Vec<api_route::HostMatch>,
    Vec<R>,
);

/// One rule, converted, before its counters are attached.
struct RuleParts {
    matches: Vec<RequestMatch>,
    filters: Vec<Filter>,
    backends: Vec<Backend>,
    timeout: Option<Duration>,
    retry: Option<Retry>,
}

/// Converts every item, or says why one does not.
fn each<T, U>(items: Vec<T>, f: impl FnMut(T) -> Result<U, String>) -> Result<Vec<U>, String> {
    items.into_iter().map(f).collect()
}

/// (backend, its filters, weight, per-attempt timeout).
type Flat<F> = (
    Option<api::Backend>,
    Vec<F>,
    u32,
    Option<prost_types::Duration>,
);

/// Backends from a distribution of either route kind: `flatten` lists (backend, filters,
/// weight) and `filter` converts that kind's filters.
fn distribution<K, F>(
    kind: Option<K>,
    flatten: impl FnOnce(K) -> Vec<Flat<F>>,
    filter: impl Fn(F) -> Result<Filter, String>,
) -> Result<Vec<Backend>, String> {
    let Some(kind) = kind else {
        return Ok(Vec::new());
    };
    flatten(kind)
        .into_iter()
        .map(|(b, filters, weight, timeout)| {
            let b = b.ok_or("a route backend has no backend")?;
            let target = match b.kind.ok_or("a backend has no kind")? {
                api::backend::Kind::Balancer(p2c) => {
                    let path = match p2c.discovery.and_then(|d| d.kind) {
                        Some(api::backend::endpoint_discovery::Kind::Dst(d)) => d.path,
                        None => return Err("a balancer backend has no discovery path".into()),
                    };
                    BackendTarget::Balancer(path.into())
                }
                api::backend::Kind::Forward(wa) => {
                    let addr = wa
                        .addr
                        .as_ref()
                        .ok_or("a forward backend has no address")
                        .and_then(|a| {
                            proto::net::to_socket_addr(a).map_err(|_| "a forward address")
                        })?;
                    let identity = wa
                        .tls_identity
                        .and_then(|t| t.strategy)
                        .and_then(|s| match s {
                            proto::api::destination::tls_identity::Strategy::DnsLikeIdentity(d) => {
                                Some(Arc::from(d.name.as_str()))
                            }
                            _ => None,
                        });
                    BackendTarget::Forward(Endpoint {
                        addr,
                        identity,
                        labels: None,
                    })
                }
            };
            Ok(Backend {
                target,
                weight,
                filters: filters.into_iter().map(&filter).collect::<Result<_, _>>()?,
                timeout: timeout.and_then(duration).filter(|d| !d.is_zero()),
                balancer: std::sync::OnceLock::new(),
            })
        })
        .collect()
}

fn route_timeout(
    t: Option<&api_route::Timeouts>,
    legacy: Option<prost_types::Duration>,
) -> Option<Duration> {
    let t = t.and_then(|t| t.request.or(t.response)).or(legacy)?;
    duration(t).filter(|d| !d.is_zero())
}

fn duration(d: prost_types::Duration) -> Option<Duration> {
    Duration::try_from(d).ok()
}

fn backoff(b: Option<&api::ExponentialBackoff>) -> Backoff {
    match b {
        None => DEFAULT_BACKOFF,
        Some(b) => {
            let min = b
                .min_backoff
                .and_then(duration)
                .unwrap_or(DEFAULT_BACKOFF.min);
            let max = b
                .max_backoff
                .and_then(duration)
                .unwrap_or(DEFAULT_BACKOFF.max)
                .max(min);
            Backoff {
                min,
                max,
                jitter: f64::from(b.jitter_ratio).clamp(0.0, 1.0),
            }
        }
    }
}

fn new_budget() -> Budget {
    Budget::new(BUDGET_RATIO, BUDGET_MIN_PER_SEC, BUDGET_TTL)
}

fn retry(r: &api::http_route::Retry) -> Result<Retry, String> {
    let statuses = match &r.conditions {
        Some(c) if !c.status_ranges.is_empty() => c
            .status_ranges
            .iter()
            .map(|s| {
                let (lo, hi) = (s.start, if s.end == 0 { s.start } else { s.end });
                if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
                    return Err(format!("retry status range {lo}-{hi}"));
                }
                Ok((lo as u16, hi as u16))
            })
            .collect::<Result<_, _>>()?,
        _ => vec![(500, 599)],
    };
    Ok(Retry {
        max_retries: r.max_retries,
        max_request_bytes: max_bytes(r.max_request_bytes),
        statuses,
        grpc: Vec::new(),
        timeout: r.timeout.and_then(duration).filter(|d| !d.is_zero()),
        backoff: backoff(r.backoff.as_ref()),
        budget: new_budget(),
    })
}

fn grpc_retry(r: &api::grpc_route::Retry) -> Result<Retry, String> {
    let mut grpc = Vec::new();
    if let Some(c) = &r.conditions {
        for (on, code) in [
            (c.cancelled, 1),
            (c.deadine_exceeded, 4),
            (c.resource_exhausted, 8),
            (c.internal, 13),
            (c.unavailable, 14),
        ] {
            if on {
                grpc.push(code);
            }
        }
    }
    if grpc.is_empty() {
        grpc.push(14);
    }
    Ok(Retry {
        max_retries: r.max_retries,
        max_request_bytes: max_bytes(r.max_request_bytes),
        statuses: Vec::new(),
        grpc,
        timeout: r.timeout.and_then(duration).filter(|d| !d.is_zero()),
        backoff: backoff(r.backoff.as_ref()),
        budget: new_budget(),
    })
}

fn max_bytes(n: u32) -> usize {
    if n == 0 {
        DEFAULT_MAX_REQUEST_BYTES
    } else {
        n as usize
    }
}

fn accrual(fa: Option<api::FailureAccrual>) -> Result<Option<Accrual>, String> {
    use api::failure_accrual::Kind;
    match fa.and_then(|f| f.kind) {
        None => Ok(None),
        Some(Kind::ConsecutiveFailures(c)) => Ok(Some(Accrual {
            max_failures: c.max_failures.max(1),
            backoff: backoff(c.backoff.as_ref()),
        })),
        Some(Kind::Unified(u)) => Ok(Some(Accrual {
            max_failures: u.max_consecutive_failures.max(1),
            backoff: backoff(u.backoff.as_ref()),
        })),
    }
}

fn headers(h: Option<http_types::Headers>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    h.map(|h| h.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let n = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?}", h.name))?;
            let v = HeaderValue::from_bytes(&h.value)
                .map_err(|_| format!("a value of header {:?}", h.name))?;
            Ok((n, v))
        })
        .collect()
}

fn edit(
    add: Option<http_types::Headers>,
    set: Option<http_types::Headers>,
    remove: Vec<String>,
) -> Result<HeaderEdit, String> {
    Ok(HeaderEdit {
        add: headers(add)?,
        set: headers(set)?,
        remove: remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("header name {n:?}")))
            .collect::<Result<_, _>>()?,
    })
}

fn ratio(r: Option<api_route::Ratio>) -> (u32, u32) {
    match r {
        // No ratio: every request.
        None => (1, 1),
        Some(r) => (r.numerator.min(r.denominator), r.denominator),
    }
}

fn http_filter(kind: Option<api::http_route::filter::Kind>) -> Result<Filter, String> {
    use api::http_route::filter::Kind;
    Ok(match kind.ok_or("a filter has no kind")? {
        Kind::FailureInjector(f) => {
            let status = u16::try_from(f.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| format!("failure injector status {}", f.status))?;
            let (numerator, denominator) = ratio(f.ratio);
            Filter::Fail {
                status,
                grpc: None,
                message: f.message.into(),
                numerator,
                denominator,
            }
        }
        Kind::RequestHeaderModifier(m) => Filter::RequestHeaders(edit(m.add, m.set, m.remove)?),
        Kind::ResponseHeaderModifier(m) => Filter::ResponseHeaders(edit(m.add, m.set, m.remove)?),
        Kind::Redirect(r) => Filter::Redirect(redirect(r)?),
    })
}

fn grpc_filter(kind: Option<api::grpc_route::filter::Kind>) -> Result<Filter, String> {
    use api::grpc_route::filter::Kind;
    Ok(match kind.ok_or("a filter has no kind")? {
        Kind::FailureInjector(f) => {
            let (numerator, denominator) = ratio(f.ratio);
            Filter::Fail {
                status: StatusCode::OK,
                grpc: Some(f.code),
                message: f.message.into(),
                numerator,
                denominator,
            }
        }
        Kind::RequestHeaderModifier(m) => Filter::RequestHeaders(edit(m.add, m.set, m.remove)?),
    })
}

fn redirect(r: api_route::RequestRedirect) -> Result<Redirect, String> {
    let scheme = r
        .scheme
        .map(http::uri::Scheme::try_from)
        .transpose()
        .map_err(|e| format!("redirect scheme: {e}"))?;
    let port = match r.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| format!("redirect port {p}"))?),
    };
    let path = match r.path.and_then(|p| p.replace) {
        None => None,
        Some(api_route::path_modifier::Replace::Full(p)) => Some(PathRewrite::Full(p)),
        Some(api_route::path_modifier::Replace::Prefix(p)) => Some(PathRewrite::Prefix(p)),
    };
    // The API's default is 301.
    let status = match r.status {
        0 => StatusCode::MOVED_PERMANENTLY,
        s => u16::try_from(s)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(StatusCode::is_redirection)
            .ok_or_else(|| format!("redirect status {s}"))?,
    };
    Ok(Redirect {
        scheme,
        host: (!r.host.is_empty()).then_some(r.host),
        port,
        path,
        status,
    })
}
