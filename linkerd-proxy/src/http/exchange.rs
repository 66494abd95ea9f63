//! What both directions do with a request once they have decided where it goes: the metrics
//! label set, the `/tap` event, rewriting it for the upstream connection, sending it, and
//! finishing the response (upgrades spliced, hop-by-hop headers stripped, a recorder on its
//! body); and failures turned into responses. The deciding is each direction's own
//! (`inbound::http`, `outbound::http`).

use super::{
    body::{ProxyBody, Recorder, grpc_status, narrow_grpc},
    client::{self, Client, SendError},
    errors::ProxyError,
    headers::strip_hop_by_hop,
    inflight::{Held, InFlight},
    observe::Observe,
};
use crate::{
    access_log::AccessLog,
    balance::{Accrual, Target},
    drain::Drain,
    lock,
    metrics::{Direction, HttpKey, HttpStats, Metrics, ResponseClass, Tls},
    resolve::Endpoint,
    tap::{Pending, TapEvent},
    trace::{Span, Tracer},
};
use http::{
    HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header, uri,
};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};
use tokio::time::Instant;
use tracing::debug;

/// Marks an HTTP/1 request carried over HTTP/2 between proxies, with its original version.
pub(crate) static L5D_ORIG_PROTO: HeaderName = HeaderName::from_static("l5d-orig-proto");

/// What one direction's HTTP connections share.
#[derive(Debug)]
pub struct Forwarding {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// The bound on this direction's requests in flight.
    pub in_flight: Arc<InFlight>,
    /// HTTP/1: how long a client may take to send a request head once it has started one.
    pub header_read_timeout: Duration,
    /// Connections closed by the header-read timeout.
    pub header_timeouts: Arc<AtomicU64>,
    /// Spans for sampled requests, when tracing is configured.
    pub(crate) tracer: Option<Arc<Tracer>>,
    /// The access log (inbound only, as in Linkerd).
    pub(crate) access_log: Option<Arc<AccessLog>>,
}

/// One downstream HTTP connection's part that does not depend on its direction.
#[derive(Debug)]
pub(crate) struct Core {
    pub direction: Direction,
    /// The downstream connection's TLS.
    pub tls: Tls,
    pub fw: Arc<Forwarding>,
    pub drain: Drain,
    /// The downstream client's address.
    pub peer: SocketAddr,
    /// The last label set used on this connection, so a connection reusing one authority
    /// looks its counters up once.
    last: Mutex<Option<(HeaderValue, SocketAddr, Arc<HttpStats>)>>,
}

/// How one attempt is sent.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub proto: client::Protocol,
    pub upgrade: bool,
    /// gRPC: retried on its `grpc-status`.
    pub grpc: bool,
    /// Each attempt's own timeout.
    pub timeout: Option<Duration>,
    pub accrual: Option<Accrual>,
}

/// A request being proxied: what its response (or failure) is recorded with.
#[derive(Debug)]
pub(crate) struct InFlightRequest {
    pub start: Instant,
    pub grpc: bool,
    pub authority: HeaderValue,
    /// `/tap`, the trace span, the access log: set only when one of them watches.
    pub observe: Option<Box<Observe>>,
}

/// How the response of a forwarded request is finished.
#[derive(Debug)]
pub(crate) struct Finish {
    pub stats: Arc<HttpStats>,
    pub held: Held,
    /// The downstream side of an upgrade (`101`, `CONNECT`), if the request asked for one.
    pub downstream_upgrade: Option<OnUpgrade>,
    /// The request asked to upgrade the connection.
    pub upgrade: bool,
    pub downstream_h2: bool,
    /// The request went upstream as HTTP/2 with `l5d-orig-proto`: answer as HTTP/1.1.
    pub from_h2: bool,
}

impl Finish {
    /// Counts `req` on `stats` and notes what finishing its response takes: its place in
    /// flight, and what it asked of the connection (an upgrade, HTTP/2 downstream).
    pub(crate) fn begin(stats: Arc<HttpStats>, held: Held, req: &mut Request<Incoming>) -> Self {
        stats.request();
        let upgrade = wants_upgrade(req);
        Finish {
            stats,
            held,
            downstream_upgrade: upgrade.then(|| hyper::upgrade::on(&mut *req)),
            upgrade,
            downstream_h2: req.version() == Version::HTTP_2,
            from_h2: false,
        }
    }
}

impl Core {
    pub(crate) fn new(
        direction: Direction,
        tls: Tls,
        fw: Arc<Forwarding>,
        drain: Drain,
        peer: SocketAddr,
    ) -> Self {
        Self {
            direction,
            tls,
            fw,
            drain,
            peer,
            last: Mutex::new(None),
        }
    }

    /// A request's start: its authority (`""` when it names none), the time, and whoever
    /// watches it: the `/tap` event, its trace span (whose context the request's headers now
    /// carry to the next hop), its access log entry.
    pub(crate) fn begin(
        &self,
        req: &mut Request<Incoming>,
        authority: HeaderValue,
    ) -> InFlightRequest {
        // Nobody watching `/tap`: one relaxed load, nothing built.
        let tap = self
            .fw
            .metrics
            .tap()
            .is_active()
            .then(|| self.tap_start(req, &authority));
        let span = self.fw.tracer.as_ref().and_then(|t| {
            let ids = t.begin(self.direction, req.headers_mut())?;
            let a = String::from_utf8_lossy(authority.as_bytes());
            let mut span = Span::new(ids, req, &a, self.peer);
            span.peer_identity = self.peer_id();
            Some((t.clone(), span))
        });
        let access = self.fw.access_log.as_ref().map(|log| {
            let trace_id = match &span {
                Some((_, s)) => Some(s.trace_id_hex()),
                None => crate::trace::trace_id_of(req.headers()),
            };
            let entry = AccessLog::entry(req, self.peer, self.peer_id(), trace_id);
            (log.clone(), Box::new(entry))
        });
        InFlightRequest {
            start: Instant::now(),
            grpc: super::errors::is_grpc(req),
            authority,
            observe: Observe { tap, span, access }.boxed(),
        }
    }

    /// The downstream peer's verified identity (inbound over mTLS).
    fn peer_id(&self) -> Option<Arc<str>> {
        match &self.tls {
            Tls::Established { peer_id } => peer_id.clone(),
            Tls::None(_) => None,
        }
    }

    /// The counters of the label set (authority, endpoint), cached for the connection's last.
    pub(crate) fn stats(&self, authority: &HeaderValue, target: &Endpoint) -> Arc<HttpStats> {
        let mut last = lock(&self.last);
        if let Some((a, t, s)) = last.as_ref()
            && a == authority
            && *t == target.addr
        {
            return s.clone();
        }
        // Outbound, the TLS label describes the connection to the endpoint; inbound, the
        // connection from the client.
        let tls = match (&target.identity, self.direction) {
            (Some(id), Direction::Outbound) => Tls::Established {
                peer_id: Some(id.clone()),
            },
            _ => self.tls.clone(),
        };
        let stats = self.fw.metrics.http(HttpKey {
            direction: self.direction,
            authority: Arc::from(authority.to_str().unwrap_or("")),
            target_addr: target.addr,
            tls,
            dst_labels: target.labels.clone(),
        });
        *last = Some((authority.clone(), target.addr, stats.clone()));
        stats
    }

    /// What `/tap` reports about a request, captured before it is forwarded.
    fn tap_start(&self, req: &Request<Incoming>, authority: &HeaderValue) -> Pending {
        let (tls, peer_id) = match &self.tls {
            Tls::Established { peer_id } => (true, peer_id.as_deref().map(str::to_string)),
            Tls::None(_) => (false, None),
        };
        self.fw.metrics.tap().start(TapEvent {
            direction: self.direction.as_str(),
            method: req.method().clone(),
            authority: authority.clone(),
            path: req.uri().path().to_string(),
            peer_id,
            tls,
        })
    }

    /// The answer to a request the proxy could not or would not forward, recorded with the
    /// label set of `stats` or, when no endpoint was chosen, of `target_addr`.
    pub(crate) fn fail(
        &self,
        error: ProxyError,
        r: InFlightRequest,
        stats: Option<&Arc<HttpStats>>,
        target_addr: SocketAddr,
    ) -> Response<ProxyBody> {
        debug!(%error, direction = self.direction.as_str(), "request failed");
        let rsp = error.into_response(r.grpc);
        let elapsed = r.start.elapsed();
        let class = ResponseClass {
            status: Some(rsp.status().as_u16()),
            grpc_status: r.grpc.then(|| error.grpc_code()),
            error: Some(error.label()),
        };
        if let Some(mut o) = r.observe {
            o.headers(rsp.status().as_u16(), Some(rsp.headers()));
            o.finish(
                rsp.status().as_u16(),
                class.grpc_status,
                class.error,
                elapsed,
            );
        }
        match stats {
            Some(s) => s.response(class, elapsed),
            None => {
                let target = Endpoint {
                    labels: None,
                    addr: target_addr,
                    identity: None,
                };
                let s = self.stats(&r.authority, &target);
                s.request();
                s.response(class, elapsed);
            }
        }
        rsp
    }

    /// The answer to an HTTP/1 request over the in-flight bound (HTTP/2 streams are refused).
    pub(crate) fn overloaded(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let error = ProxyError::Overloaded(self.fw.in_flight.max());
        debug!(%error, direction = self.direction.as_str(), "request shed");
        error.into_response(super::errors::is_grpc(req))
    }

    /// Sends one request to the endpoint on a connection of the attempt's kind.
    pub(crate) async fn send_once(
        &self,
        ep: &Endpoint,
        how: &Attempt,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        if how.upgrade {
            Ok(Box::pin(self.fw.client.send_upgrade(ep, req)).await?)
        } else {
            self.fw.client.send(ep, how.proto, req).await
        }
    }

    /// Finishes a forwarded request's response: splices an accepted upgrade, strips hop-by-hop
    /// headers, restores HTTP/1.1 for a request that travelled as HTTP/2, and puts the
    /// recorder (metrics, `/tap`, the request's place in flight) on the body.
    pub(crate) fn respond(
        &self,
        mut rsp: Response<ProxyBody>,
        r: InFlightRequest,
        f: Finish,
    ) -> Response<ProxyBody> {
        let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (f.upgrade && rsp.status().is_success());
        if let (true, Some(down)) = (switching, f.downstream_upgrade) {
            f.held.upgraded();
            let up = hyper::upgrade::on(&mut rsp);
            let drain = self.drain.clone();
            tokio::spawn(async move {
                let _drain = drain;
                match tokio::try_join!(down, up) {
                    Ok((d, u)) => {
                        let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
        }
        let status = rsp.status();
        // HTTP/2 has no `Connection` or `Upgrade` headers: its tunnel is the stream itself.
        strip_hop_by_hop(rsp.headers_mut(), switching && !f.downstream_h2);
        if f.from_h2 {
            rsp.headers_mut().remove(&L5D_ORIG_PROTO);
            *rsp.version_mut() = Version::HTTP_11;
        }
        let mut observe = r.observe;
        if let Some(o) = observe.as_mut() {
            o.headers(status.as_u16(), Some(rsp.headers()));
        }
        let recorder = Recorder {
            stats: f.stats,
            status: status.as_u16(),
            grpc_status: grpc_status(rsp.headers()).map(narrow_grpc),
            start: r.start,
            observe,
            held: f.held,
        };
        rsp.map(|body| body.with_recorder(recorder))
    }
}

/// Whether a request asks to take over its connection: `CONNECT` (over HTTP/2 too, RFC 9113
/// section 8.5: tunnelled as an HTTP/1.1 `CONNECT` upstream), or an HTTP/1 `Upgrade`.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || (req.version() <= Version::HTTP_11 && super::headers::wants_upgrade(req.headers()))
}

/// Reports an attempt's outcome to its endpoint's load, connect backoff and failure accrual.
pub(crate) fn record_outcome(
    target: &Target,
    how: &Attempt,
    rsp: &Result<Response<ProxyBody>, SendError>,
) {
    match rsp {
        Ok(r) => {
            target.complete();
            if let Some(a) = &how.accrual {
                target.accrue(!r.status().is_server_error(), a);
            }
        }
        Err(e) => {
            if e.error.is_connect() {
                target.connect_failed();
            }
            if let Some(a) = &how.accrual {
                target.accrue(false, a);
            }
        }
    }
}

/// The request's authority: the URI's (absolute-form, HTTP/2) or the `Host` header.
pub(crate) fn authority_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| !h.is_empty())
        .cloned()
}

/// HTTP/1 requests need exactly one `Host` (RFC 9112 section 3.2; `CONNECT` names its
/// target in the request line). Like nginx and Envoy, anything else is the client's error.
pub(crate) fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.version() > Version::HTTP_11 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if req.version() == Version::HTTP_11 && req.method() != Method::CONNECT => Err(
            ProxyError::BadRequest("an HTTP/1.1 request without a Host header"),
        ),
        _ => Ok(()),
    }
}

/// `host` or `host:port` as `host:port`.
pub(crate) fn with_port(authority: &str, default_port: u16) -> Option<String> {
    let a: uri::Authority = authority.parse().ok()?;
    Some(format!(
        "{}:{}",
        a.host().to_ascii_lowercase(),
        a.port_u16().unwrap_or(default_port)
    ))
}

/// Rewrites a downstream request for the upstream connection.
pub(crate) fn prepare_request(
    req: Request<Incoming>,
    authority: &HeaderValue,
    proto: client::Protocol,
    upgrade: bool,
) -> Result<Request<Incoming>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    match proto {
        client::Protocol::Http1 => {
            // Origin-form on the wire; the authority travels in `Host`.
            if parts.uri.scheme().is_some() && parts.method != Method::CONNECT {
                let pq = parts
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/");
                parts.uri = pq
                    .parse::<Uri>()
                    .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
            }
            if !authority.is_empty() && !parts.headers.contains_key(header::HOST) {
                parts.headers.insert(header::HOST, authority.clone());
            }
            if parts.version == Version::HTTP_2 {
                parts.version = Version::HTTP_11;
            }
        }
        client::Protocol::Http2 => {
            if parts.uri.scheme().is_none() {
                let mut p = parts.uri.into_parts();
                p.scheme = Some(uri::Scheme::HTTP);
                if p.authority.is_none() {
                    p.authority = authority.to_str().ok().and_then(|a| a.parse().ok());
                }
                if p.path_and_query.is_none() {
                    p.path_and_query = Some(uri::PathAndQuery::from_static("/"));
                }
                parts.uri = Uri::from_parts(p)
                    .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
            }
            parts.version = Version::HTTP_2;
        }
    }
    Ok(Request::from_parts(parts, body))
}
