//! Route pieces shared by inbound and outbound: matches, filters, hosts, metadata, and
//! Linkerd's retry/timeout annotations. Every conversion checks its input and says what is
//! wrong; the registry runs them at load time so a bad file is refused, the index skips a bad
//! Kubernetes object with a warning.

use crate::{
    model::{Meta, parse_duration},
    resources::{FailureInjector, HTTPRouteFilter, HTTPRouteMatch, HeaderModifier, ValueMatch},
};
use proto::api::{
    grpc_route::{GrpcFailureInjector, GrpcRouteMatch, GrpcRpcMatch},
    http_route::{
        HeaderMatch, HostMatch, HttpFailureInjector, HttpRouteMatch, PathMatch, PathModifier,
        QueryParamMatch, Ratio, RequestHeaderModifier, RequestRedirect, ResponseHeaderModifier,
        header_match, host_match, path_match, path_modifier, query_param_match,
    },
    http_types::{HttpMethod, Scheme, headers::Header},
    meta::{Metadata, Resource, metadata},
};
use std::{collections::BTreeMap, time::Duration};

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const POLICY_GROUP: &str = "policy.linkerd.io";

/// One HTTP filter, in the shape both directions use.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpFilter {
    FailureInjector(HttpFailureInjector),
    RequestHeaderModifier(RequestHeaderModifier),
    ResponseHeaderModifier(ResponseHeaderModifier),
    Redirect(RequestRedirect),
}

/// One gRPC filter.
#[derive(Clone, Debug, PartialEq)]
pub enum GrpcFilter {
    FailureInjector(GrpcFailureInjector),
    RequestHeaderModifier(RequestHeaderModifier),
}

/// Retry settings from `retry.linkerd.io/*`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryConfig {
    pub limit: u32,
    /// HTTP status ranges (inclusive).
    pub http: Vec<(u32, u32)>,
    /// gRPC conditions by name.
    pub grpc: Vec<String>,
    pub timeout: Option<Duration>,
}

/// Timeouts from `timeout.linkerd.io/*` (and a rule's `timeouts.request`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeoutConfig {
    pub request: Option<Duration>,
    pub response: Option<Duration>,
    pub idle: Option<Duration>,
}

pub fn default_meta(name: &str) -> Metadata {
    Metadata {
        kind: Some(metadata::Kind::Default(name.into())),
    }
}

pub fn resource_meta(group: &str, kind: &str, meta: &Meta) -> Metadata {
    Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: group.into(),
            kind: kind.into(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            section: String::new(),
            port: 0,
        })),
    }
}

/// Gateway API hostnames: `example.com` exactly, `*.example.com` as a suffix.
pub fn hosts(hostnames: Option<&[String]>) -> Result<Vec<HostMatch>, String> {
    hostnames
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            let m = match h.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() => {
                    host_match::Match::Suffix(host_match::Suffix {
                        reverse_labels: suffix.split('.').rev().map(String::from).collect(),
                    })
                }
                _ if h.is_empty() || h.contains('*') => {
                    return Err(format!("hostname {h:?} is not a name or *.suffix"));
                }
                _ => host_match::Match::Exact(h),
            };
            Ok(HostMatch { r#match: Some(m) })
        })
        .collect()
}

/// Matches everything (`PathPrefix /`).
pub fn match_all() -> HttpRouteMatch {
    HttpRouteMatch {
        path: Some(PathMatch {
            kind: Some(path_match::Kind::Prefix("/".into())),
        }),
        ..Default::default()
    }
}

pub fn http_matches(matches: Option<&[HTTPRouteMatch]>) -> Result<Vec<HttpRouteMatch>, String> {
    match matches {
        None | Some([]) => Ok(vec![match_all()]),
        Some(ms) => ms.iter().map(http_match).collect(),
    }
}

/// One match, with the Gateway API's defaults written out: no path is `PathPrefix /` (the
/// CRD's default, and what ranks a header-only match against a catch-all correctly in any
/// proxy), and of several header (query parameter) matches on one name only the first counts.
fn http_match(m: &HTTPRouteMatch) -> Result<HttpRouteMatch, String> {
    let path = match &m.path {
        None => match_all().path,
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let kind = match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => path_match::Kind::Exact(absolute(value)?),
                "PathPrefix" => path_match::Kind::Prefix(absolute(value)?),
                "RegularExpression" => path_match::Kind::Regex(value),
                other => {
                    return Err(format!(
                        "path match type {other:?} is not Exact, PathPrefix or RegularExpression"
                    ));
                }
            };
            Some(PathMatch { kind: Some(kind) })
        }
    };
    let headers = header_matches(m.headers.as_deref())?;
    let mut seen = Vec::new();
    let query_params = m
        .query_params
        .iter()
        .flatten()
        // Query parameter names are case-sensitive.
        .filter(|q| {
            let first = !seen.contains(&q.name.as_str());
            seen.push(q.name.as_str());
            first
        })
        .map(|q| {
            let value = match q.kind.as_deref().unwrap_or("Exact") {
                "Exact" => query_param_match::Value::Exact(q.value.clone()),
                "RegularExpression" => query_param_match::Value::Regex(q.value.clone()),
                other => return Err(format!("query param match type {other:?}")),
            };
            Ok(QueryParamMatch {
                name: q.name.clone(),
                value: Some(value),
            })
        })
        .collect::<Result<_, String>>()?;
    let method = m.method.as_deref().map(method).transpose()?;
    Ok(HttpRouteMatch {
        path,
        headers,
        query_params,
        method,
    })
}

fn absolute(p: String) -> Result<String, String> {
    if p.starts_with('/') {
        Ok(p)
    } else {
        Err(format!("path {p:?} does not start with /"))
    }
}

pub fn method(m: &str) -> Result<HttpMethod, String> {
    let m = http::Method::from_bytes(m.as_bytes())
        .map_err(|_| format!("{m:?} is not an HTTP method"))?;
    Ok(HttpMethod::from(m))
}

/// Header matches, names lowercased; of several on one name (in any case) the first counts.
pub fn header_matches(hs: Option<&[ValueMatch]>) -> Result<Vec<HeaderMatch>, String> {
    let mut seen = Vec::new();
    hs.unwrap_or_default()
        .iter()
        .filter(|h| {
            let name = h.name.to_ascii_lowercase();
            let first = !seen.contains(&name);
            seen.push(name);
            first
        })
        .map(|h| {
            http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{:?} is not a header name", h.name))?;
            let value = match h.kind.as_deref().unwrap_or("Exact") {
                "Exact" => header_match::Value::Exact(h.value.clone().into_bytes()),
                "RegularExpression" => header_match::Value::Regex(h.value.clone()),
                other => return Err(format!("header match type {other:?}")),
            };
            Ok(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: Some(value),
            })
        })
        .collect()
}

/// gRPC matches. The call match is always written (empty service or method: any), as
/// linkerd2-proxy requires one; a rule without matches is one match of any call.
pub fn grpc_matches(
    matches: Option<&[crate::resources::GRPCRouteMatch]>,
) -> Result<Vec<GrpcRouteMatch>, String> {
    let any = || GrpcRouteMatch {
        rpc: Some(GrpcRpcMatch::default()),
        headers: vec![],
    };
    match matches {
        None | Some([]) => Ok(vec![any()]),
        Some(ms) => ms
            .iter()
            .map(|m| {
                let rpc = m
                    .method
                    .as_ref()
                    .map_or_else(GrpcRpcMatch::default, |r| GrpcRpcMatch {
                        service: r.service.clone().unwrap_or_default(),
                        method: r.method.clone().unwrap_or_default(),
                    });
                Ok(GrpcRouteMatch {
                    rpc: Some(rpc),
                    headers: header_matches(m.headers.as_deref())?,
                })
            })
            .collect(),
    }
}

fn headers(
    hs: Option<&[crate::resources::Header]>,
) -> Result<Option<proto::api::http_types::Headers>, String> {
    let Some(hs) = hs else { return Ok(None) };
    let headers = hs
        .iter()
        .map(|h| {
            http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{:?} is not a header name", h.name))?;
            Ok(Header {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone().into_bytes(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Some(proto::api::http_types::Headers { headers }))
}

fn header_modifier(
    m: Option<&HeaderModifier>,
    what: &str,
) -> Result<RequestHeaderModifier, String> {
    let m = m.ok_or_else(|| format!("a {what} filter needs its {what} block"))?;
    Ok(RequestHeaderModifier {
        add: headers(m.add.as_deref())?,
        set: headers(m.set.as_deref())?,
        remove: m.remove.clone().unwrap_or_default(),
    })
}

fn ratio(percent: Option<u32>) -> Result<Ratio, String> {
    let p = percent.unwrap_or(100);
    if p > 100 {
        return Err(format!("percent {p} is over 100"));
    }
    Ok(Ratio {
        numerator: p,
        denominator: 100,
    })
}

fn failure(f: Option<&FailureInjector>) -> Result<&FailureInjector, String> {
    f.ok_or_else(|| "a FailureInjector filter needs its failureInjector block".to_string())
}

pub fn http_filters(fs: Option<&[HTTPRouteFilter]>) -> Result<Vec<HttpFilter>, String> {
    fs.unwrap_or_default()
        .iter()
        .map(|f| {
            Ok(match f.kind.as_str() {
                "RequestHeaderModifier" => HttpFilter::RequestHeaderModifier(header_modifier(
                    f.request_header_modifier.as_ref(),
                    "requestHeaderModifier",
                )?),
                "ResponseHeaderModifier" => {
                    let m = header_modifier(
                        f.response_header_modifier.as_ref(),
                        "responseHeaderModifier",
                    )?;
                    HttpFilter::ResponseHeaderModifier(ResponseHeaderModifier {
                        add: m.add,
                        set: m.set,
                        remove: m.remove,
                    })
                }
                "RequestRedirect" => {
                    let r = f
                        .request_redirect
                        .as_ref()
                        .ok_or("a RequestRedirect filter needs its requestRedirect block")?;
                    let scheme = match r.scheme.as_deref() {
                        None => None,
                        Some(s @ ("http" | "https")) => Some(Scheme::from(s)),
                        Some(s) => return Err(format!("scheme {s:?} is not http or https")),
                    };
                    let path = match &r.path {
                        None => None,
                        Some(p) => Some(PathModifier {
                            replace: Some(match p.kind.as_str() {
                                "ReplaceFullPath" => path_modifier::Replace::Full(
                                    p.replace_full_path.clone().unwrap_or_default(),
                                ),
                                "ReplacePrefixMatch" => path_modifier::Replace::Prefix(
                                    p.replace_prefix_match.clone().unwrap_or_default(),
                                ),
                                other => return Err(format!("path modifier type {other:?}")),
                            }),
                        }),
                    };
                    let status = r.status_code.unwrap_or(302);
                    if ![301, 302, 303, 307, 308].contains(&status) {
                        return Err(format!(
                            "redirect status {status} is not 301/302/303/307/308"
                        ));
                    }
                    HttpFilter::Redirect(RequestRedirect {
                        scheme,
                        host: r.hostname.clone().unwrap_or_default(),
                        path,
                        port: r.port.map(u32::from).unwrap_or(0),
                        status: u32::from(status),
                    })
                }
                "FailureInjector" => {
                    let fi = failure(f.failure_injector.as_ref())?;
                    let status = fi.status.unwrap_or(500);
                    if !(100..=599).contains(&status) {
                        return Err(format!("failure status {status} is not an HTTP status"));
                    }
                    HttpFilter::FailureInjector(HttpFailureInjector {
                        status: u32::from(status),
                        message: fi.message.clone().unwrap_or_default(),
                        ratio: Some(ratio(fi.percent)?),
                    })
                }
                other @ ("URLRewrite" | "RequestMirror" | "ExtensionRef" | "CORS") => {
                    return Err(unsupported_filter(other));
                }
                other => {
                    return Err(format!(
                        "filter type {other:?} is not RequestHeaderModifier, \
                         ResponseHeaderModifier, RequestRedirect or FailureInjector"
                    ));
                }
            })
        })
        .collect()
}

pub fn grpc_filters(fs: Option<&[HTTPRouteFilter]>) -> Result<Vec<GrpcFilter>, String> {
    fs.unwrap_or_default()
        .iter()
        .map(|f| {
            Ok(match f.kind.as_str() {
                "RequestHeaderModifier" => GrpcFilter::RequestHeaderModifier(header_modifier(
                    f.request_header_modifier.as_ref(),
                    "requestHeaderModifier",
                )?),
                "FailureInjector" => {
                    let fi = failure(f.failure_injector.as_ref())?;
                    let code = fi.code.unwrap_or(13);
                    if code == 0 || code > 16 {
                        return Err(format!("failure code {code} is not a gRPC error code"));
                    }
                    GrpcFilter::FailureInjector(GrpcFailureInjector {
                        code,
                        message: fi.message.clone().unwrap_or_default(),
                        ratio: Some(ratio(fi.percent)?),
                    })
                }
                other @ ("RequestMirror" | "ExtensionRef" | "ResponseHeaderModifier") => {
                    return Err(unsupported_filter(other));
                }
                other => {
                    return Err(format!(
                        "gRPC filter type {other:?} is not RequestHeaderModifier or FailureInjector"
                    ));
                }
            })
        })
        .collect()
}

/// A Gateway API filter Linkerd's policy API cannot carry: Linkerd's controller refuses a
/// route that uses one, and so do we (the Kubernetes index skips the route, the registry
/// refuses the file), rather than serve the route without it.
fn unsupported_filter(kind: &str) -> String {
    format!("filter type {kind} is not supported (the proxy API has no such filter)")
}

pub const RETRY_HTTP: &str = "retry.linkerd.io/http";
pub const RETRY_GRPC: &str = "retry.linkerd.io/grpc";
pub const RETRY_LIMIT: &str = "retry.linkerd.io/limit";
pub const RETRY_TIMEOUT: &str = "retry.linkerd.io/timeout";
const GRPC_CONDITIONS: [&str; 5] = [
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "unavailable",
];

/// Retries from `retry.linkerd.io/*` (`None` when no retry annotation is set). `http`:
/// `5xx`, `gateway-error` (502–504), codes and `a-b` ranges; `grpc`: cancelled,
/// deadline-exceeded, resource-exhausted, internal, unavailable; `limit` (default 1);
/// `timeout` (per try).
pub fn retry(ann: &BTreeMap<String, String>) -> Result<Option<RetryConfig>, String> {
    if ![RETRY_HTTP, RETRY_GRPC, RETRY_LIMIT, RETRY_TIMEOUT]
        .iter()
        .any(|k| ann.contains_key(*k))
    {
        return Ok(None);
    }
    let limit = match ann.get(RETRY_LIMIT) {
        None => 1,
        Some(l) => l
            .trim()
            .parse()
            .map_err(|_| format!("{RETRY_LIMIT}: {l:?} is not a count"))?,
    };
    let mut http = Vec::new();
    let spec = ann.get(RETRY_HTTP).map_or("5xx", String::as_str);
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad =
            || format!("{RETRY_HTTP}: {part:?} is not 5xx, gateway-error, a status or a range");
        let range = match part {
            "5xx" => (500, 599),
            "gateway-error" => (502, 504),
            _ => {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let a: u32 = a.trim().parse().map_err(|_| bad())?;
                let b: u32 = b.trim().parse().map_err(|_| bad())?;
                if !(100..=599).contains(&a) || !(100..=599).contains(&b) || b < a {
                    return Err(bad());
                }
                (a, b)
            }
        };
        http.push(range);
    }
    let mut grpc = Vec::new();
    for part in ann
        .get(RETRY_GRPC)
        .map_or("", String::as_str)
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !GRPC_CONDITIONS.contains(&part) {
            return Err(format!(
                "{RETRY_GRPC}: {part:?} is not one of {}",
                GRPC_CONDITIONS.join(", ")
            ));
        }
        grpc.push(part.to_string());
    }
    let timeout = ann
        .get(RETRY_TIMEOUT)
        .map(|t| parse_duration(t).map_err(|e| format!("{RETRY_TIMEOUT}: {e}")))
        .transpose()?;
    Ok(Some(RetryConfig {
        limit,
        http,
        grpc,
        timeout,
    }))
}

/// `timeout.linkerd.io/{request,response,idle}`.
pub fn timeouts(ann: &BTreeMap<String, String>) -> Result<TimeoutConfig, String> {
    let get = |k: &str| {
        let key = format!("timeout.linkerd.io/{k}");
        ann.get(&key)
            .map(|v| parse_duration(v).map_err(|e| format!("{key}: {e}")))
            .transpose()
    };
    Ok(TimeoutConfig {
        request: get("request")?,
        response: get("response")?,
        idle: get("idle")?,
    })
}

/// The route's own retry/timeout annotations, else its parent Service's (as Linkerd does).
pub fn effective_annotations<'a>(
    route: &'a BTreeMap<String, String>,
    service: &'a BTreeMap<String, String>,
    prefix: &str,
) -> &'a BTreeMap<String, String> {
    if route.keys().any(|k| k.starts_with(prefix)) {
        route
    } else {
        service
    }
}

pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_annotations() {
        let ann = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(retry(&ann(&[])).unwrap(), None);
        let r = retry(&ann(&[(RETRY_HTTP, "5xx,429"), (RETRY_LIMIT, "3")]))
            .unwrap()
            .unwrap();
        assert_eq!(r.http, [(500, 599), (429, 429)]);
        assert_eq!(r.limit, 3);
        let r = retry(&ann(&[(RETRY_TIMEOUT, "300ms")])).unwrap().unwrap();
        assert_eq!(r.http, [(500, 599)], "5xx by default");
        assert_eq!(r.timeout, Some(Duration::from_millis(300)));
        assert!(retry(&ann(&[(RETRY_HTTP, "6xx")])).is_err());
        assert!(retry(&ann(&[(RETRY_GRPC, "nope")])).is_err());
        assert!(retry(&ann(&[(RETRY_LIMIT, "-1")])).is_err());
    }

    #[test]
    fn hostnames() {
        let h = hosts(Some(&["*.example.com".into(), "web.local.".into()])).unwrap();
        assert_eq!(
            h[0].r#match,
            Some(host_match::Match::Suffix(host_match::Suffix {
                reverse_labels: vec!["com".into(), "example".into()]
            }))
        );
        assert_eq!(
            h[1].r#match,
            Some(host_match::Match::Exact("web.local".into()))
        );
        assert!(hosts(Some(&["a.*.com".into()])).is_err());
    }
}
