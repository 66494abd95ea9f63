//! Serving one detected HTTP connection and proxying each of its requests.
//!
//! Per request: pick the target (the connection's fixed target inbound; the original
//! destination, or the request's authority in HTTP-proxy mode, outbound), resolve it to an
//! endpoint, strip hop-by-hop headers, send it over the pooled client, and stream the response
//! back with a metrics recorder on its body. Failures become responses (see `errors.rs`).

use super::{
    body::{ProxyBody, Recorder, ReplayBody, grpc_status},
    client::{self, Client, SendError},
    errors::{ProxyError, is_grpc},
    header_timeout::HeaderTimeout,
    headers::{strip_hop_by_hop, wants_upgrade},
    inflight::{ConnRequests, Held, InFlight},
};
use crate::{
    balance::{Balancer, Balancers, Target, target_for},
    detect,
    drain::Drain,
    inbound::policy::{HttpDecision, PortPolicy, RouteRequest},
    io::{BoxIo, PrefixedIo},
    lock,
    metrics::{Direction, HttpKey, HttpStats, Metrics, ResponseClass, RouteCounters, Tls},
    outbound::policy::{
        Accrual, BackendTarget, Decision, Filter, OutboundPolicies, PolicyWatch, Retry, Rule,
    },
    resolve::Endpoint,
    tap::{Pending, TapEvent},
    tcp,
    tls::CredsRx,
    transport::{OwnAddrs, ProxyAllow},
};

/// Marks an HTTP/1 request carried over HTTP/2 between proxies, with its original version.
pub static L5D_ORIG_PROTO: HeaderName = HeaderName::from_static("l5d-orig-proto");
/// The verified identity of the calling proxy, set on inbound requests for the application.
pub static L5D_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");
/// How many outbound proxies a request has passed through: each adds one, and a request that
/// arrives having passed [`MAX_HOPS`] is answered `508 Loop Detected` instead of sent on.
pub static L5D_PROXY_HOPS: HeaderName = HeaderName::from_static("l5d-proxy-hops");
/// More outbound hops than any real call chain makes, and few enough to stop a loop at once.
pub const MAX_HOPS: usize = 32;
/// `1` to `MAX_HOPS`, so that setting the count allocates nothing.
static HOPS: [&str; MAX_HOPS] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17",
    "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
];
use http::{
    HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header, uri,
};
use hyper::{body::Incoming, server::conn, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::debug;

/// How one attempt is sent.
struct Attempt {
    proto: client::Protocol,
    upgrade: bool,
    /// gRPC: retried on its `grpc-status`.
    grpc: bool,
    /// Each attempt's own timeout.
    timeout: Option<Duration>,
    accrual: Option<Accrual>,
}

/// What every HTTP connection of a proxy shares.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Balancers of logical destinations (static names and service discovery).
    pub balancers: Arc<Balancers>,
    pub response_timeout: Option<Duration>,
    /// The proxy's TLS credentials, when it has an identity.
    pub creds: Option<CredsRx>,
    /// Outbound routing policies (outbound only; disabled without a policy service).
    pub policies: Arc<OutboundPolicies>,
    /// Which names service discovery covers: only those (or, transparently, the original
    /// destination address) are asked for a policy.
    pub discovery: Option<crate::destination::DestinationConfig>,
    /// HTTP/1: how long a client may take to send a request head once it has started one.
    pub header_read_timeout: Duration,
    /// Connections closed by the header-read timeout.
    pub header_timeouts: Arc<std::sync::atomic::AtomicU64>,
    /// The bound on this direction's requests in flight.
    pub in_flight: Arc<InFlight>,
    /// The proxy's own listeners: a request is never sent to one (it would loop).
    pub own: Arc<OwnAddrs>,
    /// What HTTP-proxy mode may dial besides mesh destinations.
    pub proxy_allow: Arc<ProxyAllow>,
}

/// Where a connection's requests go.
#[derive(Clone, Copy, Debug)]
pub enum Route {
    /// Always this address (inbound: the local application).
    Fixed(SocketAddr),
    /// Transparent outbound: the address the application dialled.
    OrigDst(SocketAddr),
    /// Not redirected: an HTTP proxy client; the request names its target.
    Proxy,
}

/// One downstream HTTP connection.
pub struct HttpConn {
    pub direction: Direction,
    pub tls: Tls,
    pub route: Route,
    pub shared: Shared,
    pub drain: Drain,
    /// Inbound over mTLS: the verified client identity, set as `l5d-client-id`.
    client_id: Option<HeaderValue>,
    /// The last label set used on this connection, so a connection reusing one authority
    /// looks its counters up once.
    last: Mutex<Option<(HeaderValue, SocketAddr, Arc<HttpStats>)>>,
    /// The balancer (if any) of the last authority seen on this connection, and its name.
    dst: Mutex<Option<LastDst>>,
    /// Inbound: the port's authorization policy and the client's address.
    authz: Option<(PortPolicy, IpAddr)>,
}

struct LastDst {
    authority: HeaderValue,
    name: Option<Arc<str>>,
    balancer: Option<Arc<Balancer>>,
    /// The destination's outbound policy watch: `None` until looked up, then the answer
    /// (`Some(None)`: the destination gets no policy lookups).
    policy: Option<Option<Arc<PolicyWatch>>>,
}

/// How a request's target is chosen, again when a connect fails.
#[derive(Clone, Copy)]
enum Retarget<'a> {
    /// An endpoint of the outbound route's backend.
    Plan(&'a Plan),
    /// From the request's authority (and whether its URI is `https`).
    Name(&'a HeaderValue, bool),
}

/// How many other endpoints a request whose endpoint could not be reached may try.
const MAX_FAILOVERS: u32 = 2;

/// Where a request routed by an outbound policy goes.
struct Plan {
    rule: Arc<Rule>,
    backend: usize,
    accrual: Option<Accrual>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("direction", &self.direction)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// Serves HTTP on `io` until the client closes it or the proxy drains.
pub async fn serve(io: PrefixedIo<BoxIo>, proto: detect::Protocol, http: HttpConn) {
    let drain = http.drain.clone();
    let requests = ConnRequests::new(http.shared.in_flight.clone());
    let res = match proto {
        detect::Protocol::Http2 => {
            let http = Arc::new(http);
            // hyper spawns a task per HTTP/2 request and moves the request's future into it:
            // boxed, that is a pointer instead of the future's few KiB copied on the way in.
            // (HTTP/1 keeps one future slot per connection: boxing would only add an
            // allocation per request.) Over the in-flight bound, the stream is refused
            // (`REFUSED_STREAM`) before anything is allocated for it.
            let svc = service_fn(move |req: Request<Incoming>| {
                let rsp = requests.start().map(|held| {
                    let http = http.clone();
                    Box::pin(async move {
                        YieldOnce(false).await;
                        http.proxy(req, held).await
                    })
                });
                async move {
                    match rsp {
                        Some(rsp) => Ok(rsp.await),
                        None => Err(::h2::Error::from(::h2::Reason::REFUSED_STREAM)),
                    }
                }
            });
            let conn = conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(3))
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .max_header_list_size(MAX_HEADER_LIST_SIZE)
                .serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            // The connection first: no random start on every wake-up, and the drain is looked
            // at only while the connection waits.
            tokio::select! {
                biased;
                res = conn.as_mut() => res,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        _ => {
            let io = HeaderTimeout::new(
                io,
                requests.clone(),
                http.shared.header_read_timeout,
                http.shared.header_timeouts.clone(),
            );
            let http = Arc::new(http);
            // hyper calls this as soon as it has parsed a head (and reads on before it polls
            // the future): the request counts as started, for the header-read timeout, here.
            let svc = service_fn(move |req: Request<Incoming>| {
                let http = http.clone();
                let held = requests.start();
                async move {
                    let rsp = match held {
                        Some(held) => http.proxy(req, held).await,
                        None => http.overloaded(&req),
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            // The header-read timeout is `HeaderTimeout`'s, not hyper's: hyper arms a timer
            // for every request, and each registration wakes tokio's driver through its
            // eventfd (one `write` and one `epoll_wait` more per request). Idle keep-alive
            // connections are bounded by the client, TCP keepalive and the connection limit.
            let conn = conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(MAX_H1_BUF)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            tokio::pin!(conn);
            // The connection first: no random start on every wake-up, and the drain is looked
            // at only while the connection waits.
            tokio::select! {
                biased;
                res = conn.as_mut() => res,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = res {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Returns `Pending` once, having woken its task. hyper polls an HTTP/2 request's future before
/// it looks at the stream's reset state, and looks only when the future is pending; h2 has
/// already read every frame that came with the request (HEADERS and an RST_STREAM in one
/// packet: rapid reset). So a request the client reset at once is dropped here, before any of
/// it is sent upstream: it costs the application nothing and the shared upstream connection
/// no reset. The price is one more poll of the request's task, without a system call.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Streams one HTTP/2 client may have open at once (hyper's default is 200).
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// The largest request head accepted, over HTTP/2 (HPACK-decoded) and HTTP/1 alike.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// HTTP/1: the most a connection buffers of a request head (and of pipelined requests).
const MAX_H1_BUF: usize = 64 * 1024;

impl HttpConn {
    pub fn new(direction: Direction, tls: Tls, route: Route, shared: Shared, drain: Drain) -> Self {
        let client_id = match (&tls, direction) {
            (Tls::Established { peer_id: Some(id) }, Direction::Inbound) => {
                HeaderValue::from_str(id).ok()
            }
            _ => None,
        };
        Self {
            client_id,
            direction,
            tls,
            route,
            shared,
            drain,
            last: Mutex::new(None),
            dst: Mutex::new(None),
            authz: None,
        }
    }

    /// Authorize every request against the port's current policy (inbound).
    pub fn with_authz(mut self, policy: PortPolicy, client: IpAddr) -> Self {
        self.authz = Some((policy, client));
        self
    }

    /// The inbound policy's verdict on a request, as an error to answer with.
    fn authorize(
        &self,
        req: &Request<Incoming>,
        authority: &HeaderValue,
    ) -> Result<(), ProxyError> {
        let Some((policy, client)) = &self.authz else {
            return Ok(());
        };
        let host = authority.to_str().ok().filter(|h| !h.is_empty());
        let policy = policy.current();
        match policy.authorize_http(*client, &self.tls, &RouteRequest::new(req, host)) {
            HttpDecision::Allow => match &policy.rate_limit {
                Some(rl) if !rl.admit(&self.tls) => Err(ProxyError::RateLimited(rl.name.clone())),
                _ => Ok(()),
            },
            HttpDecision::Deny { route } => Err(ProxyError::Unauthorized(route)),
            HttpDecision::NoRoute => Err(ProxyError::NoRoute),
        }
    }

    /// The answer to an HTTP/1 request over the in-flight bound (HTTP/2 streams are refused).
    fn overloaded(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let error = ProxyError::Overloaded(self.shared.in_flight.max());
        debug!(%error, direction = self.direction.as_str(), "request shed");
        error.into_response(is_grpc(req))
    }

    async fn proxy(&self, mut req: Request<Incoming>, held: Held) -> Response<ProxyBody> {
        let start = tokio::time::Instant::now();
        let grpc = is_grpc(&req);
        if let Err(e) = check_host(&req) {
            return self.fail(e, grpc, &HeaderValue::from_static(""), None, start, None);
        }
        let authority = match authority_of(&req) {
            Some(a) => a,
            None if matches!(self.route, Route::Proxy) => {
                return ProxyError::BadRequest("the request names no host").into_response(grpc);
            }
            None => HeaderValue::from_static(""),
        };
        if self.direction == Direction::Outbound
            && let Err(e) = count_hop(req.headers_mut())
        {
            return self.fail(e, grpc, &authority, None, start, None);
        }
        // Nobody watching `/tap`: one relaxed load, nothing built.
        let mut tap = self
            .shared
            .metrics
            .tap()
            .is_active()
            .then(|| self.tap_start(&req, &authority));
        if let Err(e) = self.authorize(&req, &authority) {
            return self.fail(e, grpc, &authority, None, start, tap);
        }
        // Outbound policy: the route's filters may answer right here; otherwise a backend.
        let plan = if self.direction == Direction::Outbound {
            match self.plan(&mut req, &authority, grpc).await {
                Ok(p) => p,
                Err(e) => return self.fail(e, grpc, &authority, None, start, tap),
            }
        } else {
            None
        };
        let https = req.uri().scheme() == Some(&uri::Scheme::HTTPS);
        let retarget = match &plan {
            Some(plan) => Retarget::Plan(plan),
            None => Retarget::Name(&authority, https),
        };
        // `retarget`, inline: the hot path keeps one async layer fewer.
        let target = match &plan {
            Some(plan) => self.backend_target(plan).await,
            None => self.target(&authority, https).await,
        };
        let target = match target.and_then(|t| self.check_target(t)) {
            Ok(t) => t,
            Err(e) => return self.fail(e, grpc, &authority, None, start, tap),
        };
        if self.direction == Direction::Outbound
            && let Some(t) = tap.as_mut()
        {
            let id = target.endpoint().identity.as_deref();
            t.event.tls = id.is_some();
            t.event.peer_id = id.map(str::to_string);
        }
        if req.method() == Method::CONNECT && matches!(self.route, Route::Proxy) {
            return Box::pin(self.tunnel(req, target, &authority, start, tap, held)).await;
        }

        let stats = self.stats(&authority, target.endpoint());
        stats.request();
        // A `CONNECT` over HTTP/2 (RFC 9113 section 8.5) is tunnelled like one over HTTP/1:
        // an HTTP/1.1 `CONNECT` upstream, and the two connections spliced once it succeeds.
        let upgrade = req.method() == Method::CONNECT
            || (req.version() <= Version::HTTP_11 && wants_upgrade(req.headers()));
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let downstream_h2 = req.version() == Version::HTTP_2;
        let mut proto = if downstream_h2 && !upgrade {
            client::Protocol::Http2
        } else {
            client::Protocol::Http1
        };
        // Between meshed proxies, HTTP/1 travels as HTTP/2 so that one mTLS connection
        // multiplexes every request; the receiving proxy restores HTTP/1 for its application.
        let orig_proto = req.headers_mut().remove(&L5D_ORIG_PROTO);
        if self.direction == Direction::Inbound {
            // Only the proxy may vouch for the caller's identity.
            let h = req.headers_mut();
            h.remove(&L5D_CLIENT_ID);
            if let Some(id) = &self.client_id {
                h.insert(L5D_CLIENT_ID.clone(), id.clone());
            }
        }
        if self.direction == Direction::Inbound && orig_proto.is_some() {
            proto = client::Protocol::Http1;
        }
        let to_h2 = self.direction == Direction::Outbound
            && target.endpoint().identity.is_some()
            && proto == client::Protocol::Http1
            && !upgrade;
        if to_h2 {
            let v = if req.version() == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            req.headers_mut()
                .insert(L5D_ORIG_PROTO.clone(), HeaderValue::from_static(v));
            proto = client::Protocol::Http2;
        }
        let req = match prepare_request(req, &authority, proto, upgrade) {
            Ok(r) => r,
            Err(e) => return self.fail(e, grpc, &authority, Some(&stats), start, tap),
        };

        let how = Attempt {
            proto,
            upgrade,
            grpc,
            timeout: plan.as_ref().and_then(|p| {
                p.rule.backends[p.backend]
                    .timeout
                    .or(p.rule.retry.as_ref()?.timeout)
            }),
            accrual: plan.as_ref().and_then(|p| p.accrual),
        };
        let total = plan
            .as_ref()
            .and_then(|p| p.rule.timeout)
            .or(self.shared.response_timeout);
        let retry = plan
            .as_ref()
            .and_then(|p| Some((p, p.rule.retry.as_ref()?)))
            .filter(|_| !upgrade);
        let (rsp, target) = match total {
            Some(t) => {
                match tokio::time::timeout(t, self.send(retry, target, &how, req, retarget)).await {
                    Ok(r) => r,
                    Err(_) => {
                        if let Some(p) = &plan {
                            RouteCounters::inc(&p.rule.counters.timeouts);
                        }
                        let e = ProxyError::ResponseTimeout(t);
                        return self.fail(e, grpc, &authority, Some(&stats), start, tap);
                    }
                }
            }
            None => self.send(retry, target, &how, req, retarget).await,
        };
        let mut rsp = match rsp {
            Ok(r) => r,
            Err(e) => return self.fail(e, grpc, &authority, Some(&stats), start, tap),
        };
        // The endpoint's load counts requests until their response headers.
        drop(target);
        if let Some(p) = &plan {
            p.rule.edit_response(p.backend, rsp.headers_mut());
        }

        let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (upgrade && rsp.status().is_success());
        if let (true, Some(down)) = (switching, downstream_upgrade) {
            held.upgraded();
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
        strip_hop_by_hop(rsp.headers_mut(), switching && !downstream_h2);
        if to_h2 {
            rsp.headers_mut().remove(&L5D_ORIG_PROTO);
            *rsp.version_mut() = Version::HTTP_11;
        }
        let recorder = Recorder {
            stats,
            status: status.as_u16(),
            grpc_status: grpc_status(rsp.headers()).map(super::body::narrow_grpc),
            start,
            tap,
            held,
        };
        rsp.map(|body| body.with_recorder(recorder))
    }

    /// The outbound policy's plan for a request: `None` when its destination has no policy
    /// (or an opaque one); an error when the policy answers it (no route, an injected fault).
    async fn plan(
        &self,
        req: &mut Request<Incoming>,
        authority: &HeaderValue,
        grpc: bool,
    ) -> Result<Option<Plan>, ProxyError> {
        if !self.shared.policies.is_enabled() {
            return Ok(None);
        }
        let Some(watch) = self.policy_watch(req, authority) else {
            return Ok(None);
        };
        let Some(policy) = watch.current().await.filter(|p| p.is_http()) else {
            return Ok(None);
        };
        let host = authority.to_str().ok().filter(|h| !h.is_empty());
        let Some(rule) = policy.select(req.version(), &RouteRequest::new(req, host)) else {
            return Err(ProxyError::NoRoute);
        };
        RouteCounters::inc(&rule.counters.requests);
        match rule.decide() {
            Decision::Forward(rule, backend) => {
                rule.edit_request(backend, req.headers_mut());
                if let Some(r) = &rule.retry {
                    r.budget.deposit();
                }
                Ok(Some(Plan {
                    rule: rule.clone(),
                    backend,
                    accrual: policy.accrual,
                }))
            }
            Decision::NoRoute => Err(ProxyError::NoRoute),
            Decision::Redirect(rule, r) => {
                let view = RouteRequest::new(req, host);
                match r.location(rule, &view, req.uri().scheme_str()) {
                    Some(location) => Err(ProxyError::Redirect {
                        status: r.status,
                        location,
                    }),
                    None => Err(ProxyError::Unsupported("the redirect has no host to go to")),
                }
            }
            Decision::Fail(f) => {
                RouteCounters::inc(&rule.counters.faults_injected);
                Err(match f {
                    Filter::Fail {
                        status,
                        grpc: code,
                        message,
                        ..
                    } => ProxyError::Injected {
                        status: *status,
                        grpc: code.or(grpc.then_some(14)),
                        message: message.clone(),
                    },
                    _ => {
                        ProxyError::Unsupported("the route has a filter this proxy does not apply")
                    }
                })
            }
        }
    }

    /// The policy watch for a request's destination: its name when discovery covers it,
    /// otherwise (transparent mode) the address the application dialled.
    fn policy_watch(
        &self,
        req: &Request<Incoming>,
        authority: &HeaderValue,
    ) -> Option<Arc<PolicyWatch>> {
        let default_port = match self.route {
            Route::Fixed(_) => return None,
            Route::OrigDst(addr) => addr.port(),
            Route::Proxy if req.uri().scheme() == Some(&uri::Scheme::HTTPS) => 443,
            Route::Proxy => 80,
        };
        {
            // The connection's last authority, already looked up: one lock.
            let last = lock(&self.dst);
            if let Some(d) = last.as_ref()
                && d.authority == *authority
                && let Some(policy) = &d.policy
            {
                return policy.clone();
            }
        }
        self.destination(authority, default_port);
        let mut last = lock(&self.dst);
        let d = last.as_mut()?;
        let covered = d
            .name
            .as_deref()
            .filter(|n| self.shared.discovery.as_ref().is_some_and(|c| c.covers(n)));
        let policy = match (covered, self.route) {
            (Some(name), _) => self.shared.policies.get(name),
            (None, Route::OrigDst(addr)) => self.shared.policies.get(&addr.to_string()),
            (None, _) => None,
        };
        d.policy = Some(policy.clone());
        policy
    }

    /// An endpoint of the plan's backend.
    async fn backend_target(&self, plan: &Plan) -> Result<Target, ProxyError> {
        let backend = &plan.rule.backends[plan.backend];
        match &backend.target {
            BackendTarget::Forward(ep) => Ok(Target::Direct(ep.clone())),
            BackendTarget::Balancer(path) => {
                let balancer = backend
                    .balancer
                    .get_or_init(|| self.shared.balancers.get(path));
                let fallback = match self.route {
                    Route::OrigDst(addr) => Some(addr),
                    _ => None,
                };
                Ok(target_for(balancer.as_deref(), path, fallback).await?)
            }
        }
    }

    /// Sends the request, with the route's retries if it has any.
    async fn send(
        &self,
        retry: Option<(&Plan, &Retry)>,
        mut target: Target,
        how: &Attempt,
        req: Request<Incoming>,
        retarget: Retarget<'_>,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Target) {
        match retry {
            Some((plan, retry)) => {
                Box::pin(self.send_with_retries(plan, retry, target, how, req)).await
            }
            None => {
                let req = req.map(|b| ProxyBody::stream(b, None));
                let rsp = self.attempt(&mut target, how, req, retarget).await;
                (rsp, target)
            }
        }
    }

    /// Sends one attempt and reports its outcome to the endpoint's load and failure accrual.
    /// When no connection to a balanced endpoint could be had, nothing was sent: the request
    /// goes to another endpoint of the same destination ([`HttpConn::fail_over`]).
    async fn attempt(
        &self,
        target: &mut Target,
        how: &Attempt,
        req: Request<ProxyBody>,
        retarget: Retarget<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let ep = target.endpoint();
        let rsp = match how.timeout {
            Some(t) => match tokio::time::timeout(t, self.send_once(ep, how, req)).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::ResponseTimeout(t).into()),
            },
            None => self.send_once(ep, how, req).await,
        };
        record_outcome(target, how, &rsp);
        match rsp {
            Ok(rsp) => Ok(rsp),
            Err(SendError {
                error,
                unsent: Some(req),
            }) if error.is_connect() && matches!(target, Target::Balanced(_)) => {
                // Boxed: a rare path, which would otherwise widen every request's future.
                Box::pin(self.fail_over(target, how, *req, retarget, error)).await
            }
            Err(e) => Err(e.error),
        }
    }

    /// The connection to `target` failed before anything was sent: `req` goes to another
    /// endpoint of the same destination (the failed one is backed off, so the balancer does not
    /// pick it again), up to [`MAX_FAILOVERS`] times.
    async fn fail_over(
        &self,
        target: &mut Target,
        how: &Attempt,
        mut req: Request<ProxyBody>,
        retarget: Retarget<'_>,
        mut error: ProxyError,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        for _ in 0..MAX_FAILOVERS {
            let next = match self.retarget(retarget).await {
                // The request was shaped (HTTP/2 or not) for a meshed or an unmeshed endpoint.
                Ok(next)
                    if next.endpoint().addr != target.endpoint().addr
                        && next.endpoint().identity.is_some()
                            == target.endpoint().identity.is_some() =>
                {
                    next
                }
                _ => break,
            };
            debug!(failed = %target.endpoint().addr, next = %next.endpoint().addr, %error, "connect failed; trying another endpoint");
            *target = next;
            let ep = target.endpoint();
            let rsp = match how.timeout {
                Some(t) => match tokio::time::timeout(t, self.send_once(ep, how, req)).await {
                    Ok(r) => r,
                    Err(_) => Err(ProxyError::ResponseTimeout(t).into()),
                },
                None => self.send_once(ep, how, req).await,
            };
            record_outcome(target, how, &rsp);
            match rsp {
                Ok(rsp) => return Ok(rsp),
                Err(SendError {
                    error: e,
                    unsent: Some(unsent),
                }) if e.is_connect() => {
                    req = *unsent;
                    error = e;
                }
                Err(e) => return Err(e.error),
            }
        }
        Err(error)
    }

    /// Sends one request to the endpoint on a connection of the attempt's kind.
    async fn send_once(
        &self,
        ep: &Endpoint,
        how: &Attempt,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        if how.upgrade {
            Ok(Box::pin(self.shared.client.send_upgrade(ep, req)).await?)
        } else {
            self.shared.client.send(ep, how.proto, req).await
        }
    }

    /// Sends a request on a route that retries: again on a retryable status or error, while
    /// the retry limit, the route's budget and the body's replay buffer allow, with backoff.
    async fn send_with_retries(
        &self,
        plan: &Plan,
        retry: &Retry,
        mut target: Target,
        how: &Attempt,
        req: Request<Incoming>,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Target) {
        let counters = &plan.rule.counters;
        let (parts, body) = req.into_parts();
        if http_body::Body::size_hint(&body).lower() > retry.max_request_bytes as u64 {
            // Too large to keep: one attempt.
            RouteCounters::inc(&counters.retry_overflow);
            let req = Request::from_parts(parts, ProxyBody::stream(body, None));
            let rsp = self
                .attempt(&mut target, how, req, Retarget::Plan(plan))
                .await;
            return (rsp, target);
        }
        let body = ReplayBody::new(body, retry.max_request_bytes);
        let grpc = how.grpc;
        let template = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.version,
            parts.headers.clone(),
        );
        let handle = body.handle();
        let mut req = Request::from_parts(parts, ProxyBody::Replay(body));
        let mut retries = 0u32;
        loop {
            let rsp = self
                .attempt(&mut target, how, req, Retarget::Plan(plan))
                .await;
            let retryable = match &rsp {
                Ok(r) => {
                    retry.retryable(r.status(), grpc.then(|| grpc_status(r.headers())).flatten())
                }
                Err(e) => e.is_connect() || matches!(e, ProxyError::ResponseTimeout(_)),
            };
            if !retryable {
                return (rsp, target);
            }
            if retries >= retry.max_retries {
                RouteCounters::inc(&counters.retry_limit_exceeded);
                return (rsp, target);
            }
            let body = match handle.replay() {
                Some(b) if retry.budget.withdraw() => b,
                _ => {
                    RouteCounters::inc(&counters.retry_overflow);
                    return (rsp, target);
                }
            };
            tokio::time::sleep(retry.backoff.delay(retries)).await;
            let next = match self.backend_target(plan).await {
                Ok(t) => t,
                Err(_) => return (rsp, target),
            };
            // The request was shaped (HTTP/2 or not) for a meshed or an unmeshed endpoint.
            if next.endpoint().identity.is_some() != target.endpoint().identity.is_some() {
                return (rsp, target);
            }
            drop(rsp);
            target = next;
            retries += 1;
            RouteCounters::inc(&counters.retries);
            let mut r = Request::new(ProxyBody::Replay(body));
            *r.method_mut() = template.0.clone();
            *r.uri_mut() = template.1.clone();
            *r.version_mut() = template.2;
            *r.headers_mut() = template.3.clone();
            req = r;
        }
    }

    /// Where a request goes: an endpoint of the route's backend, or of the logical destination
    /// the authority names, or the original destination (transparent) or the authority itself
    /// (HTTP-proxy mode). Never one of the proxy's own listeners.
    async fn retarget(&self, how: Retarget<'_>) -> Result<Target, ProxyError> {
        let target = match how {
            Retarget::Plan(plan) => self.backend_target(plan).await?,
            Retarget::Name(authority, https) => self.target(authority, https).await?,
        };
        self.check_target(target)
    }

    /// A target the request may go to: not one of the proxy's own listeners and, in HTTP-proxy
    /// mode, a mesh destination or an address `MESH_PROXY_OUTBOUND_PROXY_ALLOW` allows.
    fn check_target(&self, target: Target) -> Result<Target, ProxyError> {
        self.check_not_own(&target)?;
        if matches!(self.route, Route::Proxy)
            && let Target::Direct(ep) = &target
            && !self.shared.proxy_allow.permits(ep.addr)
        {
            return Err(ProxyError::NotAllowed(ep.addr));
        }
        Ok(target)
    }

    /// A target that is one of this proxy's listeners would loop. The one exception is the
    /// inbound listener as an endpoint that discovery (or a static name) gave: a workload
    /// calling its own service through the mesh, which reaches its application.
    fn check_not_own(&self, target: &Target) -> Result<(), ProxyError> {
        if let Route::Fixed(_) = self.route {
            // The connection's one target was checked when it was accepted.
            return Ok(());
        }
        match self.shared.own.find(target.endpoint().addr) {
            None => Ok(()),
            Some(crate::transport::Listener::Inbound) if matches!(target, Target::Balanced(_)) => {
                Ok(())
            }
            Some(l) => Err(ProxyError::Loop(l.as_str())),
        }
    }

    /// Resolves the request's target: an endpoint of a logical destination when one is known
    /// for the authority, otherwise the original destination (transparent) or the authority
    /// itself (HTTP-proxy mode).
    async fn target(&self, authority: &HeaderValue, https: bool) -> Result<Target, ProxyError> {
        let default_port = match self.route {
            Route::Fixed(addr) => return Ok(Target::direct(addr)),
            Route::OrigDst(addr) => addr.port(),
            Route::Proxy if https => 443,
            Route::Proxy => 80,
        };
        let (name, balancer) = self.destination(authority, default_port);
        match self.route {
            Route::OrigDst(addr) => {
                // A name discovery knows is balanced over its endpoints; anything else goes
                // where the application was sending it.
                let name = name.as_deref().unwrap_or("");
                Ok(target_for(balancer.as_deref(), name, Some(addr)).await?)
            }
            _ => {
                let name = name.ok_or(ProxyError::BadRequest("invalid host"))?;
                Ok(target_for(balancer.as_deref(), &name, None).await?)
            }
        }
    }

    /// The logical name (`host:port`) for an authority and its balancer, cached for the
    /// connection's last authority so keep-alive requests do no lookups.
    fn destination(
        &self,
        authority: &HeaderValue,
        default_port: u16,
    ) -> (Option<Arc<str>>, Option<Arc<Balancer>>) {
        let mut last = lock(&self.dst);
        if let Some(d) = last.as_ref()
            && d.authority == *authority
        {
            return (d.name.clone(), d.balancer.clone());
        }
        let name: Option<Arc<str>> = authority
            .to_str()
            .ok()
            .and_then(|a| with_port(a, default_port))
            .map(Arc::from);
        let balancer = name.as_deref().and_then(|n| self.shared.balancers.get(n));
        *last = Some(LastDst {
            authority: authority.clone(),
            name: name.clone(),
            balancer: balancer.clone(),
            policy: None,
        });
        (name, balancer)
    }

    /// `CONNECT host:port` from an HTTP-proxy client: dial, answer 200, then relay bytes.
    async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        target: Target,
        authority: &HeaderValue,
        start: tokio::time::Instant,
        tap: Option<Box<Pending>>,
        held: Held,
    ) -> Response<ProxyBody> {
        let stats = self.stats(authority, target.endpoint());
        stats.request();
        let timeout = self.shared.client.connect_timeout();
        let dialed = tcp::dial(target.endpoint(), timeout, self.shared.creds.as_ref()).await;
        let mut upstream = match dialed {
            Ok(s) => {
                target.connected();
                if let Some(t) = tap {
                    t.finish(Some(200), None, None, start.elapsed());
                }
                s
            }
            Err(e) => {
                target.connect_failed();
                return self.fail(e.into(), false, authority, Some(&stats), start, tap);
            }
        };
        // The connection becomes the tunnel: no more request heads, and it is bounded as a
        // connection, not as a request in flight.
        held.upgraded();
        drop(held);
        let down = hyper::upgrade::on(&mut req);
        let drain = self.drain.clone();
        tokio::spawn(async move {
            let _drain = drain;
            // The tunnel counts as in flight on its endpoint while it lasts.
            let _target = target;
            match down.await {
                Ok(d) => {
                    let mut d = TokioIo::new(d);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut upstream).await;
                }
                Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        stats.response(
            ResponseClass {
                status: Some(200),
                grpc_status: None,
                error: None,
            },
            start.elapsed(),
        );
        Response::new(ProxyBody::empty())
    }

    fn stats(&self, authority: &HeaderValue, target: &Endpoint) -> Arc<HttpStats> {
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
        let stats = self.shared.metrics.http(HttpKey {
            direction: self.direction,
            authority: Arc::from(authority.to_str().unwrap_or("")),
            target_addr: target.addr,
            tls,
        });
        *last = Some((authority.clone(), target.addr, stats.clone()));
        stats
    }

    /// What `/tap` reports about a request, captured before it is forwarded.
    fn tap_start(&self, req: &Request<Incoming>, authority: &HeaderValue) -> Box<Pending> {
        let (tls, peer_id) = match &self.tls {
            Tls::Established { peer_id } => (true, peer_id.as_deref().map(str::to_string)),
            Tls::None(_) => (false, None),
        };
        self.shared.metrics.tap().start(TapEvent {
            direction: self.direction.as_str(),
            method: req.method().clone(),
            authority: authority.clone(),
            path: req.uri().path().to_string(),
            peer_id,
            tls,
        })
    }

    fn fail(
        &self,
        error: ProxyError,
        grpc: bool,
        authority: &HeaderValue,
        stats: Option<&Arc<HttpStats>>,
        start: tokio::time::Instant,
        tap: Option<Box<Pending>>,
    ) -> Response<ProxyBody> {
        debug!(%error, direction = self.direction.as_str(), "request failed");
        let rsp = error.into_response(grpc);
        if let Some(t) = tap {
            t.finish(
                Some(rsp.status().as_u16()),
                grpc.then(|| error.grpc_code()),
                Some(error.label()),
                start.elapsed(),
            );
        }
        let class = ResponseClass {
            status: Some(rsp.status().as_u16()),
            grpc_status: grpc.then(|| error.grpc_code()),
            error: Some(error.label()),
        };
        match stats {
            Some(s) => s.response(class, start.elapsed()),
            None => {
                // No endpoint was chosen. Inbound the target is the connection's application
                // anyway (so a denied request counts where the allowed ones do); outbound it is
                // unspecified.
                let addr = match self.route {
                    Route::Fixed(addr) => addr,
                    _ => SocketAddr::from(([0, 0, 0, 0], 0)),
                };
                let target = Endpoint {
                    addr,
                    identity: None,
                };
                let s = self.stats(authority, &target);
                s.request();
                s.response(class, start.elapsed());
            }
        }
        rsp
    }
}

/// The request's authority: the URI's (absolute-form, HTTP/2) or the `Host` header.
fn authority_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| !h.is_empty())
        .cloned()
}

/// Reports an attempt's outcome to its endpoint's load, connect backoff and failure accrual.
fn record_outcome(target: &Target, how: &Attempt, rsp: &Result<Response<ProxyBody>, SendError>) {
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

/// HTTP/1 requests need exactly one `Host` (RFC 9112 section 3.2; `CONNECT` names its
/// target in the request line). Like nginx and Envoy, anything else is the client's error.
fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
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

/// Adds this proxy to the request's outbound hop count, or fails when the request has been
/// through [`MAX_HOPS`] proxies already: it is looping.
fn count_hop(headers: &mut http::HeaderMap) -> Result<(), ProxyError> {
    let hops = match headers.get(&L5D_PROXY_HOPS) {
        None => 0,
        Some(v) => std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or(ProxyError::BadRequest("invalid l5d-proxy-hops"))?,
    };
    let Some(next) = HOPS.get(hops) else {
        return Err(ProxyError::Loop("a proxy it has been through already"));
    };
    headers.insert(L5D_PROXY_HOPS.clone(), HeaderValue::from_static(next));
    Ok(())
}

/// `host` or `host:port` as `host:port`.
fn with_port(authority: &str, default_port: u16) -> Option<String> {
    let a: uri::Authority = authority.parse().ok()?;
    Some(format!(
        "{}:{}",
        a.host().to_ascii_lowercase(),
        a.port_u16().unwrap_or(default_port)
    ))
}

/// Rewrites a downstream request for the upstream connection.
fn prepare_request(
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
