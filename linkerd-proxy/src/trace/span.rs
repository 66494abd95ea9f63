//! One request's span as the request path records it (plain owned data, no header buffers
//! kept alive), and its OTLP form, built by the exporter off the request path.
//!
//! Names and attributes follow OpenTelemetry's HTTP semantic conventions: the span is named
//! after the method (and the route, when a route matched: `GET /users`), and carries
//! `http.request.method`, `url.path`, `url.query`, `url.scheme`, `server.address`,
//! `server.port`, `network.peer.address`, `network.peer.port`, `network.protocol.version`,
//! `user_agent.original`, `http.response.status_code`, `rpc.grpc.status_code` and `error.type`;
//! and the mesh's facts: `direction`, `mesh.peer.identity`, `mesh.route.name`,
//! `http.request.resend_count` (retries) and `http.response.header.l5d-proxy-error`.

use super::Ids;
use crate::metrics::Direction;
use http::{Method, Request, Version, header};
#[cfg(test)]
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Strings longer than this are cut (a path or user agent is the caller's to choose).
const MAX_VALUE: usize = 1024;

/// A traced request, from its head to the end of its response.
#[derive(Debug)]
pub(crate) struct Span {
    ids: Ids,
    start: SystemTime,
    end: Option<SystemTime>,
    method: Method,
    scheme: Option<&'static str>,
    path: String,
    query: Option<String>,
    /// The authority the request named (`host[:port]`).
    authority: String,
    user_agent: Option<String>,
    version: Version,
    peer: SocketAddr,
    /// Inbound: the client's verified identity; outbound: the server's.
    pub peer_identity: Option<Arc<str>>,
    /// The route that matched (outbound policy).
    pub route: Option<Arc<str>>,
    /// Attempts after the first.
    pub resends: u32,
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// The proxy answered: why (`l5d-proxy-error`'s kind).
    error: Option<&'static str>,
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Span {
    pub(crate) fn new<B>(ids: Ids, req: &Request<B>, authority: &str, peer: SocketAddr) -> Self {
        let uri = req.uri();
        Self {
            ids,
            start: SystemTime::now(),
            end: None,
            method: req.method().clone(),
            scheme: uri.scheme_str().and_then(|s| match s {
                "http" => Some("http"),
                "https" => Some("https"),
                _ => None,
            }),
            path: cut(uri.path()),
            query: uri.query().map(cut),
            authority: cut(authority),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(cut),
            version: req.version(),
            peer,
            peer_identity: None,
            route: None,
            resends: 0,
            status: None,
            grpc_status: None,
            error: None,
        }
    }

    pub(crate) fn trace_id_hex(&self) -> String {
        super::context::hex(&self.ids.trace_id)
    }

    /// The response ended (or the proxy answered with `error`).
    pub(crate) fn end(
        &mut self,
        status: u16,
        grpc_status: Option<u32>,
        error: Option<&'static str>,
    ) {
        self.end = Some(SystemTime::now());
        self.status = Some(status);
        self.grpc_status = grpc_status;
        self.error = error;
    }

    #[cfg(test)]
    pub(crate) fn for_test(ids: Ids) -> Self {
        let req = Request::get("http://web.test:8080/users/7?full=1")
            .header(header::USER_AGENT, "curl/8")
            .body(())
            .unwrap_or_default();
        Span::new(
            ids,
            &req,
            "web.test:8080",
            SocketAddr::from(([10, 0, 0, 1], 40000)),
        )
    }

    /// Every attribute, in order, to `f`. Strings are the span's own or `scratch`'s (numbers
    /// and addresses are written there without `fmt`'s machinery).
    pub(super) fn attributes(&self, f: &mut dyn FnMut(&str, Attr<'_>)) {
        let direction = match self.ids.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        f("direction", Attr::Str(direction));
        f("http.request.method", Attr::Str(self.method.as_str()));
        f("url.path", Attr::Str(&self.path));
        if let Some(q) = &self.query {
            f("url.query", Attr::Str(q));
        }
        if let Some(sc) = self.scheme {
            f("url.scheme", Attr::Str(sc));
        }
        let (host, port) = split_authority(&self.authority);
        if !host.is_empty() {
            f("server.address", Attr::Str(host));
        }
        let mut ip = Scratch::default();
        ip.ip(self.peer.ip());
        f("network.peer.address", Attr::Str(ip.as_str()));
        if let Some(ua) = &self.user_agent {
            f("user_agent.original", Attr::Str(ua));
        }
        let version = match self.version {
            Version::HTTP_09 => "0.9",
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            Version::HTTP_3 => "3",
            _ => "1.1",
        };
        f("network.protocol.version", Attr::Str(version));
        if let Some(id) = &self.peer_identity {
            f("mesh.peer.identity", Attr::Str(id));
        }
        if let Some(r) = &self.route {
            f("mesh.route.name", Attr::Str(r));
        }
        if let Some(e) = self.error {
            f("error.type", Attr::Str(e));
            f("http.response.header.l5d-proxy-error", Attr::Str(e));
        }
        if let Some(p) = port {
            f("server.port", Attr::Int(i64::from(p)));
        }
        f("network.peer.port", Attr::Int(i64::from(self.peer.port())));
        if let Some(st) = self.status {
            f("http.response.status_code", Attr::Int(i64::from(st)));
        }
        if let Some(g) = self.grpc_status {
            f("rpc.grpc.status_code", Attr::Int(i64::from(g)));
        }
        if self.resends > 0 {
            f(
                "http.request.resend_count",
                Attr::Int(i64::from(self.resends)),
            );
        }
        if self.failed()
            && self.error.is_none()
            && let Some(st) = self.status
        {
            let mut code = Scratch::default();
            code.number(u64::from(st));
            f("error.type", Attr::Str(code.as_str()));
        }
    }

    /// HTTP semantic conventions: a server span fails on 5xx, a client span on 4xx too; a
    /// span the proxy answered fails with its reason.
    pub(super) fn failed(&self) -> bool {
        self.error.is_some()
            || self.status.is_some_and(|st| match self.ids.direction {
                Direction::Inbound => st >= 500,
                Direction::Outbound => st >= 400,
            })
    }

    /// The name: the method, and the route when one matched (`GET users`).
    pub(super) fn name(&self) -> (&str, Option<&str>) {
        let route = self.route.as_deref().filter(|r| !r.is_empty());
        (self.method.as_str(), route)
    }

    pub(super) fn ids(&self) -> &Ids {
        &self.ids
    }

    /// OTLP's flags: the W3C trace flags, and whether the parent is remote (it is the caller's
    /// span; a trace started here has none).
    pub(super) fn flags(&self) -> u32 {
        let remote = match self.ids.parent_id {
            Some(_) => 0x100 | 0x200,
            None => 0x100,
        };
        u32::from(self.ids.flags) | remote
    }

    /// OTLP's span kind: `SERVER` (2) inbound, `CLIENT` (3) outbound.
    pub(super) fn kind(&self) -> SpanKind {
        match self.ids.direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        }
    }

    pub(super) fn times(&self) -> (u64, u64) {
        let end = self.end.unwrap_or_else(SystemTime::now);
        (unix_nanos(self.start), unix_nanos(end))
    }

    /// The span as `opentelemetry-proto`'s message: what the hand-written encoding
    /// (`otlp.rs`) must decode to.
    #[cfg(test)]
    pub(crate) fn into_otlp(self) -> opentelemetry_proto::tonic::trace::v1::Span {
        use opentelemetry_proto::tonic::trace::v1::{self as otlp, status::StatusCode};
        let mut attributes = Vec::new();
        self.attributes(&mut |k, v| {
            let v = match v {
                Attr::Str(s) => Value::StringValue(s.to_string()),
                Attr::Int(i) => Value::IntValue(i),
            };
            attributes.push(kv(k, v));
        });
        let (method, route) = self.name();
        let name = match route {
            Some(r) => format!("{method} {r}"),
            None => method.to_string(),
        };
        let (start, end) = self.times();
        otlp::Span {
            trace_id: self.ids.trace_id.to_vec(),
            span_id: self.ids.span_id.to_vec(),
            parent_span_id: self.ids.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: self.flags(),
            name,
            kind: self.kind() as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            status: Some(otlp::Status {
                code: if self.failed() {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                } as i32,
                message: String::new(),
            }),
            ..Default::default()
        }
    }
}

/// An attribute's value.
#[derive(Clone, Copy, Debug)]
pub(super) enum Attr<'a> {
    Str(&'a str),
    Int(i64),
}

/// A small stack buffer for a number or an address.
struct Scratch {
    buf: [u8; 48],
    len: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl Scratch {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for d in &digits[i..] {
            self.push(*d);
        }
    }

    fn ip(&mut self, ip: std::net::IpAddr) {
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    self.number(u64::from(o));
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::fmt::Write as _;
                let _ = write!(self, "{v6}");
            }
        }
    }
}

impl std::fmt::Write for Scratch {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

#[cfg(test)]
pub(super) fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `host[:port]` (or `[v6]:port`) split; the port is `None` when absent or invalid.
fn split_authority(a: &str) -> (&str, Option<u16>) {
    if let Some(rest) = a.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (a, None),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (a, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{self as otlp, status::StatusCode};

    fn attr<'a>(s: &'a otlp::Span, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    fn ids(direction: Direction, parent: Option<[u8; 8]>) -> Ids {
        Ids {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent_id: parent,
            flags: 1,
            direction,
        }
    }

    #[test]
    fn a_client_span_in_otlp() {
        let mut span = Span::for_test(ids(Direction::Outbound, Some([3; 8])));
        span.route = Some("users".into());
        span.peer_identity = Some("web.ns.serviceaccount.identity.linkerd.cluster.local".into());
        span.resends = 2;
        span.end(200, None, None);
        let o = span.into_otlp();
        assert_eq!(o.name, "GET users");
        assert_eq!(o.kind, SpanKind::Client as i32);
        assert_eq!(
            (&o.trace_id[..], &o.parent_span_id[..]),
            (&[7; 16][..], &[3; 8][..])
        );
        assert_eq!(o.flags, 0x301);
        let str_attr = |k| match attr(&o, k) {
            Some(Value::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        let int_attr = |k| match attr(&o, k) {
            Some(Value::IntValue(i)) => *i,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(str_attr("direction"), "outbound");
        assert_eq!(str_attr("http.request.method"), "GET");
        assert_eq!(str_attr("url.path"), "/users/7");
        assert_eq!(str_attr("url.query"), "full=1");
        assert_eq!(str_attr("url.scheme"), "http");
        assert_eq!(str_attr("server.address"), "web.test");
        assert_eq!(int_attr("server.port"), 8080);
        assert_eq!(str_attr("network.peer.address"), "10.0.0.1");
        assert_eq!(int_attr("network.peer.port"), 40000);
        assert_eq!(str_attr("user_agent.original"), "curl/8");
        assert_eq!(str_attr("mesh.route.name"), "users");
        assert_eq!(int_attr("http.response.status_code"), 200);
        assert_eq!(int_attr("http.request.resend_count"), 2);
        assert!(attr(&o, "error.type").is_none());
        assert_eq!(o.status.unwrap().code, StatusCode::Unset as i32);
        assert!(o.end_time_unix_nano >= o.start_time_unix_nano);
    }

    #[test]
    fn failures_and_started_traces() {
        let mut span = Span::for_test(ids(Direction::Inbound, None));
        span.end(403, None, Some("unauthorized"));
        let o = span.into_otlp();
        assert_eq!(o.kind, SpanKind::Server as i32);
        assert!(o.parent_span_id.is_empty());
        assert_eq!(o.flags, 0x101);
        assert_eq!(o.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert!(
            matches!(attr(&o, "error.type"), Some(Value::StringValue(s)) if s == "unauthorized")
        );
        // A server's 404 is the client's error, not the server span's.
        let mut span = Span::for_test(ids(Direction::Inbound, None));
        span.end(404, None, None);
        assert_eq!(
            span.into_otlp().status.unwrap().code,
            StatusCode::Unset as i32
        );
        let mut span = Span::for_test(ids(Direction::Inbound, None));
        span.end(503, Some(14), None);
        let o = span.into_otlp();
        assert!(matches!(
            attr(&o, "rpc.grpc.status_code"),
            Some(Value::IntValue(14))
        ));
        assert!(matches!(attr(&o, "error.type"), Some(Value::StringValue(s)) if s == "503"));
    }

    #[test]
    fn authorities_and_long_values() {
        assert_eq!(split_authority("a.b:80"), ("a.b", Some(80)));
        assert_eq!(split_authority("a.b"), ("a.b", None));
        assert_eq!(split_authority("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_authority("::1"), ("::1", None));
        assert_eq!(split_authority("a:99999"), ("a", None));
        let long = "é".repeat(1000);
        let c = cut(&long);
        assert!(c.len() <= MAX_VALUE && long.starts_with(&c));
    }
}
