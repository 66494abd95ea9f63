//! Turning proxy failures into responses: an HTTP status with an `l5d-proxy-error` header, or a
//! gRPC status for gRPC requests. Classified in one place.

use super::body::ProxyBody;
use crate::{resolve::ResolveError, tls::TlsError, transport::ConnectError};
use http::{HeaderValue, Response, StatusCode, header};
use std::time::Duration;

pub const L5D_PROXY_ERROR: &str = "l5d-proxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("upstream handshake failed: {0}")]
    Handshake(#[source] crate::BoxError),
    #[error("upstream request failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("upstream request failed: {0}")]
    Http1(#[from] super::h1::Error),
    #[error("upstream request failed: {0}")]
    Http2(#[from] ::h2::Error),
    #[error("response timed out after {0:?}")]
    ResponseTimeout(Duration),
    /// The inbound policy does not authorize this client on this route.
    #[error("unauthorized request on route {0}")]
    Unauthorized(std::sync::Arc<str>),
    /// The inbound policy has routes and none matches the request.
    #[error("no route found for request")]
    NoRoute,
    /// A route's fault-injection filter answered the request.
    #[error("injected failure: {message}")]
    Injected {
        status: StatusCode,
        grpc: Option<u32>,
        message: std::sync::Arc<str>,
    },
    /// The inbound server's local rate limit refused the request.
    #[error("rate limited by {0}")]
    RateLimited(std::sync::Arc<str>),
    /// The route asks for something this proxy does not do.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The request's target is the proxy itself (a listener of its own, or a proxy it has
    /// already passed through): sending it would loop.
    #[error("loop detected: the request's target is {0}")]
    Loop(&'static str),
    /// HTTP-proxy mode does not dial this address (not a mesh destination, not allowed by
    /// `MESH_PROXY_OUTBOUND_PROXY_ALLOW`).
    #[error(
        "the proxy does not forward to {0}: not a mesh destination nor allowed by MESH_PROXY_OUTBOUND_PROXY_ALLOW"
    )]
    NotAllowed(std::net::SocketAddr),
    /// The proxy has as many requests in flight as it allows.
    #[error("the proxy is overloaded ({0} requests in flight)")]
    Overloaded(usize),
    /// A route's redirect filter answered the request.
    #[error("redirected to {location:?}")]
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
}

impl From<crate::tcp::DialError> for ProxyError {
    fn from(e: crate::tcp::DialError) -> Self {
        match e {
            crate::tcp::DialError::Connect(e) => e.into(),
            crate::tcp::DialError::Tls(e) => e.into(),
        }
    }
}

impl ProxyError {
    /// The endpoint could not be reached (TCP, TLS or HTTP handshake): the balancer backs it off.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_)
                | ProxyError::Tls(TlsError::Handshake { .. })
                | ProxyError::Handshake(_)
        )
    }

    /// The `error` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Resolve(ResolveError::NoEndpoints(_)) => "no_endpoints",
            ProxyError::Resolve(ResolveError::Unresolvable(..)) => "unresolvable",
            ProxyError::Connect(ConnectError::Timeout { .. }) => "connect_timeout",
            ProxyError::Connect(_) => "connect",
            ProxyError::Tls(TlsError::NoCredentials) => "no_credentials",
            ProxyError::Tls(_) => "tls",
            ProxyError::Handshake(_) => "handshake",
            e if e.is_client_body() => "request_body",
            ProxyError::Upstream(_) | ProxyError::Http1(_) | ProxyError::Http2(_) => "upstream",
            ProxyError::ResponseTimeout(_) => "response_timeout",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::NoRoute => "no_route",
            ProxyError::Injected { .. } => "fault_injected",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::Unsupported(_) => "unsupported_route",
            ProxyError::Redirect { .. } => "redirect",
            ProxyError::Loop(_) => "loop",
            ProxyError::NotAllowed(_) => "not_allowed",
            ProxyError::Overloaded(_) => "overloaded",
        }
    }

    /// The request failed because the client's own body did (a malformed chunk, a body shorter
    /// or longer than its `content-length`): the client's error, not the upstream's.
    pub fn is_client_body(&self) -> bool {
        match self {
            ProxyError::Http1(
                super::h1::Error::RequestBody(_) | super::h1::Error::RequestLength,
            ) => true,
            // The HTTP/2 client resets a stream with INTERNAL_ERROR itself only when the request
            // body it was sending failed (`h2.rs`, `Pipe`).
            ProxyError::Http2(e) => {
                e.is_reset()
                    && !e.is_remote()
                    && !e.is_library()
                    && e.reason() == Some(::h2::Reason::INTERNAL_ERROR)
            }
            _ => false,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            e if e.is_client_body() => StatusCode::BAD_REQUEST,
            ProxyError::Loop(_) => StatusCode::LOOP_DETECTED,
            ProxyError::NotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unauthorized(_) => StatusCode::FORBIDDEN,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Injected { status, .. } | ProxyError::Redirect { status, .. } => *status,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Unsupported(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Resolve(_) | ProxyError::Tls(TlsError::NoCredentials) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Tls(TlsError::Handshake { source, .. })
                if source.kind() == std::io::ErrorKind::TimedOut =>
            {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Tls(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Connect(ConnectError::Timeout { .. }) | ProxyError::ResponseTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Connect(_)
            | ProxyError::Handshake(_)
            | ProxyError::Upstream(_)
            | ProxyError::Http1(_)
            | ProxyError::Http2(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// gRPC status codes: UNAVAILABLE for anything that may succeed on retry, DEADLINE_EXCEEDED
    /// for timeouts, INTERNAL for a request the proxy cannot carry.
    pub fn grpc_code(&self) -> u32 {
        if let ProxyError::Injected {
            grpc: Some(code), ..
        } = self
        {
            return *code;
        }
        match self.http_status() {
            StatusCode::FORBIDDEN => 7,
            StatusCode::TOO_MANY_REQUESTS => 8,
            StatusCode::NOT_FOUND => 5,
            StatusCode::GATEWAY_TIMEOUT => 4,
            StatusCode::BAD_REQUEST => 13,
            _ => 14,
        }
    }

    pub fn into_response(&self, grpc: bool) -> Response<ProxyBody> {
        // Not a failure: the route's answer, without `l5d-proxy-error`.
        if let ProxyError::Redirect { status, location } = self {
            let mut rsp = Response::new(ProxyBody::empty());
            *rsp.status_mut() = *status;
            rsp.headers_mut().insert(header::LOCATION, location.clone());
            return rsp;
        }
        let msg = self.to_string();
        let msg_value = HeaderValue::from_str(&sanitize(&msg))
            .unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
        let mut rsp = Response::new(if grpc {
            ProxyBody::empty()
        } else {
            ProxyBody::full(format!("{msg}\n"))
        });
        if !grpc {
            *rsp.status_mut() = self.http_status();
        }
        let h = rsp.headers_mut();
        h.insert(L5D_PROXY_ERROR, msg_value.clone());
        if grpc {
            // A trailers-only gRPC response.
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(self.grpc_code()));
            h.insert("grpc-message", msg_value);
        } else {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        rsp
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .collect()
}

pub(crate) fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let refused = ProxyError::Connect(ConnectError::Io {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(refused.http_status(), StatusCode::BAD_GATEWAY);
        assert_eq!(refused.grpc_code(), 14);
        let timeout = ProxyError::ResponseTimeout(Duration::from_secs(1));
        assert_eq!(timeout.http_status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.grpc_code(), 4);
        assert_eq!(
            ProxyError::Resolve(ResolveError::NoEndpoints("x:80".into())).http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        let rsp = refused.into_response(false);
        assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
        assert!(rsp.headers().contains_key(L5D_PROXY_ERROR));
        let rsp = refused.into_response(true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
    }
}
