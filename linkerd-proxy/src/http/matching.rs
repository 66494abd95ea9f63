//! Route matching, shared by the inbound and the outbound policies: what one HTTPRoute or
//! GRPCRoute match selects, and which of several matching routes and rules wins.
//!
//! Precedence is the Gateway API's. Between routes, the most specific hostname first (an
//! exact hostname over a wildcard, then the longer one; a route without hostnames comes
//! last). Then, between the best match of each rule:
//!
//! * HTTP: an exact path, then the longest path prefix, then a method, then the most header
//!   matches, then the most query-parameter matches. A match without a path is a prefix match
//!   on `/`, and a rule without matches is one such match.
//! * gRPC: the longest matching service, then the longest matching method, then the most
//!   header matches.
//!
//! Ties go to the earlier route (the policy service sends them oldest first, then by
//! namespace and name) and, within a route, to the earlier rule. Everything here is converted
//! once per policy update; ranking a request does no allocation.

use http::{HeaderMap, HeaderName, Method};
use proto::api::{grpc_route as api_grpc, http_route as api_route, meta};
use std::sync::Arc;

#[cfg(test)]
mod tests;

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Whole path segments: stored without trailing `/`, so the empty prefix (`/`) matches
    /// every path and `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// A gRPC call (a `POST` to `/service/method`); `None` matches any.
    Rpc {
        service: Option<String>,
        method: Option<String>,
    },
}

impl Default for PathMatch {
    /// The Gateway API's default: a prefix match on `/`.
    fn default() -> Self {
        PathMatch::Prefix(String::new())
    }
}

impl PathMatch {
    /// A `PathPrefix` match as the API writes it (`/`, `/foo`, `/foo/`).
    pub fn prefix(p: &str) -> Self {
        PathMatch::Prefix(p.trim_end_matches('/').to_string())
    }
}

/// All of these must hold for a request to match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    /// Exact header values (names are case-insensitive: `HeaderName` is lowercase).
    pub headers: Vec<(HeaderName, Vec<u8>)>,
    /// Exact query parameters (name, value), compared after percent-decoding the request's.
    pub query: Vec<(String, String)>,
    /// The match uses something this proxy does not evaluate (a regular expression): it never
    /// matches, so the route cannot grant more than intended.
    pub unsupported: bool,
}

/// What matching reads of a request.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// The authority (`host[:port]`), from the URI or the `Host` header.
    pub host: Option<&'a str>,
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RouteRequest<'a> {
    /// The parts of `req` that routes match on; `host` is its authority.
    pub fn new<B>(req: &'a http::Request<B>, host: Option<&'a str>) -> Self {
        Self {
            host,
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        }
    }
}

#[cfg(test)]
impl<'a> RouteRequest<'a> {
    /// A request for tests: `target` is `path[?query]`.
    pub(crate) fn test(
        host: Option<&'a str>,
        method: &'a Method,
        target: &'a str,
        headers: &'a HeaderMap,
    ) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        Self {
            host,
            method,
            path,
            query,
            headers,
        }
    }
}

/// How specific a route's hostname match is: a route without hostnames matches any host and
/// ranks lowest, a wildcard (by its length) next, an exact name (by its length) highest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostRank {
    #[default]
    Any,
    Suffix(usize),
    Exact(usize),
}

/// How specific a request match is; compared field by field, in declaration order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MatchRank {
    /// An exact path match (HTTP).
    pub exact: bool,
    /// Characters of the path matched: the exact path, the prefix (without its trailing
    /// `/`), or the gRPC service.
    pub path: usize,
    /// Characters of the gRPC method matched.
    pub rpc_method: usize,
    /// A method match (HTTP).
    pub method: bool,
    pub headers: usize,
    pub query: usize,
}

/// A route's hostname rank, then its rule's match rank: greater wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    pub host: HostRank,
    pub request: MatchRank,
}

impl RequestMatch {
    /// How specifically this matches `req`, or `None` if it does not.
    pub fn rank(&self, req: &RouteRequest<'_>) -> Option<MatchRank> {
        if self.unsupported {
            return None;
        }
        let mut rank = MatchRank::default();
        if let Some(m) = &self.method {
            if m != req.method {
                return None;
            }
            rank.method = true;
        }
        match &self.path {
            PathMatch::Exact(p) => {
                if p != req.path {
                    return None;
                }
                rank.exact = true;
                rank.path = p.len();
            }
            PathMatch::Prefix(p) => {
                if !prefix_matches(p, req.path) {
                    return None;
                }
                rank.path = p.len();
            }
            PathMatch::Rpc { service, method } => {
                let (s, m) = rpc(req)?;
                if let Some(want) = service {
                    if want != s {
                        return None;
                    }
                    rank.path = want.len();
                }
                if let Some(want) = method {
                    if want != m {
                        return None;
                    }
                    rank.rpc_method = want.len();
                }
            }
        }
        let headers_match = self
            .headers
            .iter()
            .all(|(n, v)| req.headers.get_all(n).iter().any(|h| h.as_bytes() == v));
        if !headers_match {
            return None;
        }
        rank.headers = self.headers.len();
        if !self.query.is_empty() {
            let q = req.query?;
            if !self.query.iter().all(|(n, v)| query_has(q, n, v)) {
                return None;
            }
            rank.query = self.query.len();
        }
        Some(rank)
    }
}

/// The best rank of a rule's matches for `req` (a rule without matches matches everything,
/// as a prefix match on `/`); `None` if none matches.
pub fn rule_rank(matches: &[RequestMatch], req: &RouteRequest<'_>) -> Option<MatchRank> {
    if matches.is_empty() {
        return Some(MatchRank::default());
    }
    matches.iter().filter_map(|m| m.rank(req)).max()
}

/// The greatest of `ranked`, the first one on ties.
pub fn best<R: Ord, T>(ranked: impl IntoIterator<Item = (R, T)>) -> Option<(R, T)> {
    ranked
        .into_iter()
        .reduce(|a, b| if b.0 > a.0 { b } else { a })
}

/// Gateway API prefix semantics on a prefix stored without its trailing `/`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The service and method of a gRPC call: a `POST` to `/service/method`.
fn rpc<'a>(req: &RouteRequest<'a>) -> Option<(&'a str, &'a str)> {
    if req.method != Method::POST {
        return None;
    }
    let (service, rest) = req.path.strip_prefix('/')?.split_once('/')?;
    let method = rest.split_once('/').map_or(rest, |(m, _)| m);
    Some((service, method))
}

/// Whether the query string `q` has parameter `name` with `value` (form-decoded: `+` is a
/// space, `%XX` a byte). Allocates nothing.
fn query_has(q: &str, name: &str, value: &str) -> bool {
    q.split('&').any(|pair| {
        !pair.is_empty() && {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            decoded_eq(n, name) && decoded_eq(v, value)
        }
    })
}

fn decoded_eq(raw: &str, want: &str) -> bool {
    let raw = raw.as_bytes();
    let mut want = want.bytes();
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'+' => {
                i += 1;
                b' '
            }
            b'%' => match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    i += 3;
                    hi << 4 | lo
                }
                _ => {
                    i += 1;
                    b'%'
                }
            },
            c => {
                i += 1;
                c
            }
        };
        if want.next() != Some(b) {
            return false;
        }
    }
    want.next().is_none()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A hostname condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` as `example.com`.
    Suffix(String),
}

/// How specifically `hosts` match a request's host (`host[:port]`): `Any` when the route
/// names no hosts, `None` when it names some and none matches.
pub fn host_rank(hosts: &[HostMatch], host: Option<&str>) -> Option<HostRank> {
    if hosts.is_empty() {
        return Some(HostRank::Any);
    }
    let h = host?;
    let h = h
        .rsplit_once(':')
        .map_or(h, |(h, _)| h)
        .trim_end_matches('.');
    hosts
        .iter()
        .filter_map(|m| match m {
            HostMatch::Exact(e) => e
                .eq_ignore_ascii_case(h)
                .then_some(HostRank::Exact(e.len())),
            HostMatch::Suffix(s) => {
                let matched = h.len() > s.len()
                    && h.as_bytes()[h.len() - s.len() - 1] == b'.'
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s);
                matched.then_some(HostRank::Suffix(s.len() + 1))
            }
        })
        .max()
}

// ---- conversion from the API -------------------------------------------------------------

pub(crate) fn hosts(hosts: Vec<api_route::HostMatch>) -> Vec<HostMatch> {
    hosts
        .into_iter()
        .filter_map(|h| match h.r#match? {
            api_route::host_match::Match::Exact(e) => {
                Some(HostMatch::Exact(e.trim_end_matches('.').to_string()))
            }
            api_route::host_match::Match::Suffix(s) => {
                let mut labels = s.reverse_labels;
                labels.reverse();
                Some(HostMatch::Suffix(labels.join(".")))
            }
        })
        .collect()
}

/// Header conditions; as the Gateway API says, only the first of several with the same name
/// counts.
fn header_matches(
    headers: Vec<api_route::HeaderMatch>,
    m: &mut RequestMatch,
) -> Result<(), String> {
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("header name {:?}", h.name))?;
        if m.headers.iter().any(|(n, _)| *n == name) {
            continue;
        }
        match h.value {
            Some(api_route::header_match::Value::Exact(v)) => m.headers.push((name, v)),
            Some(api_route::header_match::Value::Regex(_)) | None => m.unsupported = true,
        }
    }
    Ok(())
}

/// One HTTPRoute match in the proxy's form. No path is a prefix match on `/`.
pub(crate) fn http_match(m: api_route::HttpRouteMatch) -> Result<RequestMatch, String> {
    let mut out = RequestMatch::default();
    match m.path.and_then(|p| p.kind) {
        Some(api_route::path_match::Kind::Exact(p)) => out.path = PathMatch::Exact(p),
        Some(api_route::path_match::Kind::Prefix(p)) => out.path = PathMatch::prefix(&p),
        Some(api_route::path_match::Kind::Regex(_)) => out.unsupported = true,
        None => {}
    }
    if let Some(method) = m.method {
        out.method = Some(Method::try_from(method).map_err(|e| format!("a route method: {e}"))?);
    }
    for q in m.query_params {
        if out.query.iter().any(|(n, _)| *n == q.name) {
            continue;
        }
        match q.value {
            Some(api_route::query_param_match::Value::Exact(v)) => out.query.push((q.name, v)),
            Some(api_route::query_param_match::Value::Regex(_)) | None => out.unsupported = true,
        }
    }
    header_matches(m.headers, &mut out)?;
    Ok(out)
}

/// One GRPCRoute match in the proxy's form: a `POST` to `/service/method` (either may be any).
pub(crate) fn grpc_match(m: api_grpc::GrpcRouteMatch) -> Result<RequestMatch, String> {
    let rpc = m.rpc.unwrap_or_default();
    let part = |s: String| (!s.is_empty()).then_some(s);
    let mut out = RequestMatch {
        path: PathMatch::Rpc {
            service: part(rpc.service),
            method: part(rpc.method),
        },
        ..RequestMatch::default()
    };
    header_matches(m.headers, &mut out)?;
    Ok(out)
}

/// A route's (or rate limit's) kind and name from the API's metadata; `fallback` names one the
/// policy service left unnamed.
/// A policy resource's metric labels, as linkerd2-proxy writes them: `<prefix>_group`,
/// `_kind`, `_namespace`, `_name` (and, for a parent, `_port` and `_section_name`). A default
/// resource is kind `default` with no group or namespace.
pub(crate) fn metadata_labels(
    m: Option<&meta::Metadata>,
    prefix: &str,
    fallback: &str,
    parent: bool,
) -> Arc<str> {
    let esc = crate::metrics::escape;
    let (group, kind, ns, name, section, port) = match m.and_then(|m| m.kind.as_ref()) {
        Some(meta::metadata::Kind::Resource(r)) => (
            esc(&r.group),
            esc(&r.kind),
            esc(&r.namespace),
            esc(&r.name),
            esc(&r.section),
            r.port,
        ),
        Some(meta::metadata::Kind::Default(n)) => (
            String::new(),
            "default".into(),
            String::new(),
            esc(n),
            String::new(),
            0,
        ),
        None => (
            String::new(),
            "default".into(),
            String::new(),
            esc(fallback),
            String::new(),
            0,
        ),
    };
    let mut s = format!(
        "{prefix}_group=\"{group}\",{prefix}_kind=\"{kind}\",{prefix}_namespace=\"{ns}\",{prefix}_name=\"{name}\""
    );
    if parent {
        let port = if port == 0 {
            String::new()
        } else {
            port.to_string()
        };
        s.push_str(&format!(
            ",{prefix}_port=\"{port}\",{prefix}_section_name=\"{section}\""
        ));
    }
    s.into()
}

pub(crate) fn metadata_name(m: Option<meta::Metadata>, fallback: &str) -> (Arc<str>, Arc<str>) {
    match m.and_then(|m| m.kind) {
        Some(meta::metadata::Kind::Default(name)) => ("default".into(), name.into()),
        Some(meta::metadata::Kind::Resource(r)) => {
            (r.kind.to_ascii_lowercase().into(), r.name.into())
        }
        None => ("default".into(), fallback.into()),
    }
}
