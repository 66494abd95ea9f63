//! The proxy's own form of an outbound policy (converted once per update from the API's
//! messages by `convert`), so that routing a request is a few comparisons, one random draw
//! and, for routes that retry, a budget check.

use super::budget::Budget;
pub use crate::{backoff::Backoff, balance::Accrual};
use crate::{
    http::matching::{
        HostMatch, PathMatch, Rank, RequestMatch, RouteRequest, host_rank, rule_rank,
    },
    metrics::RouteCounters,
    resolve::Endpoint,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use std::{sync::Arc, time::Duration};

/// One service port's outbound policy.
#[derive(Debug)]
pub struct OutboundPolicy {
    /// The parent's name (the Service), for logs and metrics.
    pub parent: Arc<str>,
    /// Routes for HTTP/1 requests and for HTTP/2 (and gRPC) requests. Both empty for an opaque
    /// port: its connections go to the logical name as before.
    pub http1: Vec<Route>,
    pub http2: Vec<Route>,
    pub accrual: Option<Accrual>,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub hosts: Vec<HostMatch>,
    pub rules: Vec<Arc<Rule>>,
}

/// A route rule: what it matches and what happens to the requests it matches.
#[derive(Debug)]
pub struct Rule {
    /// Any one of these selects the rule; none matches every request.
    pub matches: Vec<RequestMatch>,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub(super) total_weight: u64,
    /// The whole request, retries included, until the response headers.
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    /// The route's name, its parent's, and its counters.
    pub route: Arc<str>,
    pub counters: Arc<RouteCounters>,
}

#[derive(Debug)]
pub struct Backend {
    pub target: BackendTarget,
    pub weight: u32,
    pub filters: Vec<Filter>,
    /// Each attempt on this backend.
    pub timeout: Option<Duration>,
    /// The balancer of a `Balancer` target, looked up on first use and kept while this policy
    /// lives (so a routed request does no name lookup, and the backend's discovery stays).
    pub balancer: std::sync::OnceLock<Option<Arc<crate::balance::Balancer>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTarget {
    /// Balanced over the endpoints discovery gives for this `host:port`.
    Balancer(Arc<str>),
    /// One endpoint, as given.
    Forward(Endpoint),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Answer `ratio` of the requests with this failure instead of forwarding them.
    Fail {
        status: StatusCode,
        /// gRPC routes fail with a gRPC status.
        grpc: Option<u32>,
        message: Arc<str>,
        numerator: u32,
        denominator: u32,
    },
    RequestHeaders(HeaderEdit),
    ResponseHeaders(HeaderEdit),
    /// Answer with a redirect instead of forwarding.
    Redirect(Redirect),
}

/// A `RequestRedirect` filter: where to send the client instead (each part defaults to the
/// request's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<http::uri::Scheme>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: StatusCode,
}

/// How a redirect rewrites the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// This path instead.
    Full(String),
    /// This instead of the prefix the rule matched.
    Prefix(String),
}

impl Redirect {
    /// The `Location` to send for `req`, routed by `rule`; `scheme` is the request's (`http`
    /// when it has none). Built only for requests that are redirected. As the Gateway API
    /// says: a new scheme without a port means that scheme's port, and the default port of
    /// the scheme is left out; the query is kept.
    pub fn location(
        &self,
        rule: &Rule,
        req: &RouteRequest<'_>,
        scheme: Option<&str>,
    ) -> Option<HeaderValue> {
        let scheme = self
            .scheme
            .as_ref()
            .map_or(scheme.unwrap_or("http"), |s| s.as_str());
        let authority = req.host.unwrap_or_default();
        let (orig_host, orig_port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
                Ok(p) => (h, Some(p)),
                Err(_) => (authority, None),
            },
            _ => (authority, None),
        };
        let host = self.host.as_deref().unwrap_or(orig_host);
        if host.is_empty() {
            return None;
        }
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => orig_port,
        }
        .filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
        let mut location = format!("{scheme}://{host}");
        if let Some(p) = port {
            location.push_str(&format!(":{p}"));
        }
        match &self.path {
            None => location.push_str(req.path),
            Some(PathRewrite::Full(p)) => location.push_str(p),
            Some(PathRewrite::Prefix(replacement)) => {
                let rest = req.path.get(rule.matched_prefix(req)..).unwrap_or_default();
                let replacement = replacement.trim_end_matches('/');
                location.push_str(replacement);
                location.push_str(rest);
                if replacement.is_empty() && rest.is_empty() {
                    location.push('/');
                }
            }
        }
        if let Some(q) = req.query {
            location.push('?');
            location.push_str(q);
        }
        HeaderValue::from_str(&location).ok()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdit {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdit {
    pub fn apply(&self, h: &mut HeaderMap) {
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            h.remove(n);
        }
    }
}

/// When and how often a failed request is sent again.
#[derive(Debug)]
pub struct Retry {
    pub max_retries: u32,
    /// Requests with larger bodies are not retried (the body would have to be kept).
    pub max_request_bytes: usize,
    /// HTTP statuses that are retried (inclusive ranges).
    pub statuses: Vec<(u16, u16)>,
    /// gRPC statuses that are retried.
    pub grpc: Vec<u32>,
    /// Each attempt's timeout.
    pub timeout: Option<Duration>,
    pub backoff: Backoff,
    pub budget: Budget,
}

impl Retry {
    /// Whether a response with this status (and gRPC status, for gRPC) is worth retrying.
    pub fn retryable(&self, status: StatusCode, grpc: Option<u32>) -> bool {
        if let Some(code) = grpc
            && !self.grpc.is_empty()
        {
            return self.grpc.contains(&code);
        }
        let s = status.as_u16();
        self.statuses.iter().any(|&(lo, hi)| lo <= s && s <= hi)
    }
}

/// What a request routed by the policy does next.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Forward to this backend of this rule.
    Forward(&'a Arc<Rule>, usize),
    /// Answer with this failure (fault injection).
    Fail(&'a Filter),
    /// Answer with this redirect (of this rule).
    Redirect(&'a Arc<Rule>, &'a Redirect),
    /// No route matches: 404.
    NoRoute,
}

impl OutboundPolicy {
    /// The routes for a request of this version.
    pub fn routes(&self, version: Version) -> &[Route] {
        if version == Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        }
    }

    /// Whether requests are routed at all (an opaque port's are not).
    pub fn is_http(&self) -> bool {
        !self.http1.is_empty() || !self.http2.is_empty()
    }

    /// The most specific matching rule of any route, by the Gateway API's precedence (see
    /// [`crate::http::matching::Rank`]): the route's hostname, then an exact path, the longest prefix,
    /// a method, the most headers, the most query parameters (gRPC: service, method, headers);
    /// the earlier route, then the earlier rule, on ties.
    pub fn select(&self, version: Version, req: &RouteRequest<'_>) -> Option<&Arc<Rule>> {
        let mut best: Option<(Rank, &Arc<Rule>)> = None;
        for route in self.routes(version) {
            let Some(host) = host_rank(&route.hosts, req.host) else {
                continue;
            };
            for rule in &route.rules {
                if let Some(request) = rule_rank(&rule.matches, req) {
                    let rank = Rank { host, request };
                    if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                        best = Some((rank, rule));
                    }
                }
            }
        }
        best.map(|(_, r)| r)
    }
}

impl Rule {
    /// The rule's fate for one request: a failure filter that fires, or a backend drawn by
    /// weight (whose own failure filters may then fire).
    pub fn decide(self: &Arc<Self>) -> Decision<'_> {
        if let Some(f) = fired(&self.filters) {
            return self.answer(f);
        }
        let Some(i) = self.pick_backend() else {
            return Decision::NoRoute;
        };
        match fired(&self.backends[i].filters) {
            Some(f) => self.answer(f),
            None => Decision::Forward(self, i),
        }
    }

    fn answer<'a>(self: &'a Arc<Self>, f: &'a Filter) -> Decision<'a> {
        match f {
            Filter::Redirect(r) => Decision::Redirect(self, r),
            _ => Decision::Fail(f),
        }
    }

    /// The length of the path prefix that selected this rule for `req` (0 when its best
    /// match is not a prefix match): what a redirect's `ReplacePrefixMatch` replaces.
    pub fn matched_prefix(&self, req: &RouteRequest<'_>) -> usize {
        let ranked = self.matches.iter().filter_map(|m| Some((m.rank(req)?, m)));
        match crate::http::matching::best(ranked) {
            Some((
                _,
                RequestMatch {
                    path: PathMatch::Prefix(p),
                    ..
                },
            )) => p.len(),
            _ => 0,
        }
    }

    /// A backend drawn with probability weight / total weight.
    pub fn pick_backend(&self) -> Option<usize> {
        match self.backends.len() {
            0 => None,
            1 => Some(0),
            _ if self.total_weight == 0 => Some(fastrand::usize(..self.backends.len())),
            _ => {
                let mut n = fastrand::u64(..self.total_weight);
                for (i, b) in self.backends.iter().enumerate() {
                    let w = u64::from(b.weight);
                    if n < w {
                        return Some(i);
                    }
                    n -= w;
                }
                Some(self.backends.len() - 1)
            }
        }
    }

    /// Request header edits of the rule and of backend `i`.
    pub fn edit_request(&self, i: usize, h: &mut HeaderMap) {
        for f in self.filters.iter().chain(&self.backends[i].filters) {
            if let Filter::RequestHeaders(e) = f {
                e.apply(h);
            }
        }
    }

    /// Response header edits of the rule and of backend `i`.
    pub fn edit_response(&self, i: usize, h: &mut HeaderMap) {
        for f in self.filters.iter().chain(&self.backends[i].filters) {
            if let Filter::ResponseHeaders(e) = f {
                e.apply(h);
            }
        }
    }
}

/// The first failure filter that applies to this request, if any.
fn fired(filters: &[Filter]) -> Option<&Filter> {
    filters.iter().find(|f| match f {
        Filter::Fail {
            numerator,
            denominator,
            ..
        } => *denominator > 0 && fastrand::u32(..*denominator) < *numerator,
        Filter::Redirect(_) => true,
        Filter::RequestHeaders(_) | Filter::ResponseHeaders(_) => false,
    })
}
