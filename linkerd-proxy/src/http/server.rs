//! Serving one detected HTTP connection and proxying each of its requests.
//!
//! Per request: pick the target (the connection's fixed target inbound; the original
//! destination, or the request's authority in HTTP-proxy mode, outbound), resolve it to an
//! endpoint, strip hop-by-hop headers, send it over the pooled client, and stream the response
//! back with a metrics recorder on its body. Failures become responses (see `errors.rs`).

use super::{
    body::{ProxyBody, Recorder, ReplayBody, grpc_status},
    client::{self, Client},
    errors::{ProxyError, is_grpc},
    headers::{strip_hop_by_hop, wants_upgrade},
};
use crate::{
    balance::{Balancer, Balancers, Target, target_for},
    detect,
    drain::Drain,
    io::{BoxIo, PrefixedIo},
    lock,
    metrics::{Direction, HttpKey, HttpStats, Metrics, ResponseClass, RouteCounters, Tls},
    outbound::{
        Accrual, BackendTarget, Decision, Filter, OutboundPolicies, PolicyWatch, Retry, Rule,
    },
    policy::{HttpDecision, PortPolicy, RouteRequest},
    resolve::Endpoint,
    tap::{Pending, TapEvent},
    tcp,
    tls::CredsRx,
};

/// Marks an HTTP/1 request carried over HTTP/2 between proxies, with its original version.
pub static L5D_ORIG_PROTO: HeaderName = HeaderName::from_static("l5d-orig-proto");
/// The verified identity of the calling proxy, set on inbound requests for the application.
pub static L5D_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");
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
    let http = Arc::new(http);
    let io = TokioIo::new(io);
    let res = match proto {
        detect::Protocol::Http2 => {
            // hyper spawns a task per HTTP/2 request and moves the request's future into it:
            // boxed, that is a pointer instead of the future's few KiB copied on the way in.
            // (HTTP/1 keeps one future slot per connection: boxing would only add an
            // allocation per request.)
            let svc = service_fn(move |req: Request<Incoming>| {
                let http = http.clone();
                let rsp = Box::pin(async move { http.proxy(req).await });
                async move { Ok::<_, Infallible>(rsp.await) }
            });
            let conn = conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(3))
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        _ => {
            let svc = service_fn(move |req: Request<Incoming>| {
                let http = http.clone();
                async move { Ok::<_, Infallible>(http.proxy(req).await) }
            });
            // No header-read timer: hyper would arm a 30 s timer for every request, and each
            // registration wakes tokio's driver through its eventfd (one `write` and one
            // `epoll_wait` more per request). Idle keep-alive connections are bounded by the
            // client and TCP keepalive, as in linkerd2-proxy.
            let conn = conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
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

    async fn proxy(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let start = tokio::time::Instant::now();
        let grpc = is_grpc(&req);
        let authority = match authority_of(&req) {
            Some(a) => a,
            None if matches!(self.route, Route::Proxy) => {
                return ProxyError::BadRequest("the request names no host").into_response(grpc);
            }
            None => HeaderValue::from_static(""),
        };
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
        let target = match &plan {
            Some(plan) => self.backend_target(plan).await,
            None => self.target(&req, &authority).await,
        };
        let target = match target {
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
            return Box::pin(self.tunnel(req, target, &authority, start, tap)).await;
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
            Some(t) => match tokio::time::timeout(t, self.send(retry, target, &how, req)).await {
                Ok(r) => r,
                Err(_) => {
                    if let Some(p) = &plan {
                        RouteCounters::inc(&p.rule.counters.timeouts);
                    }
                    let e = ProxyError::ResponseTimeout(t);
                    return self.fail(e, grpc, &authority, Some(&stats), start, tap);
                }
            },
            None => self.send(retry, target, &how, req).await,
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
            grpc_status: grpc_status(rsp.headers()),
            start,
            tap,
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
        target: Target,
        how: &Attempt,
        req: Request<Incoming>,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Target) {
        match retry {
            Some((plan, retry)) => {
                Box::pin(self.send_with_retries(plan, retry, target, how, req)).await
            }
            None => {
                let req = req.map(|b| ProxyBody::stream(b, None));
                let rsp = self.attempt(&target, how, req).await;
                (rsp, target)
            }
        }
    }

    /// Sends one attempt and reports its outcome to the endpoint's load and failure accrual.
    async fn attempt(
        &self,
        target: &Target,
        how: &Attempt,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let ep = target.endpoint();
        let rsp = match how.timeout {
            Some(t) => match tokio::time::timeout(t, self.send_once(ep, how, req)).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::ResponseTimeout(t)),
            },
            None => self.send_once(ep, how, req).await,
        };
        match &rsp {
            Ok(r) => {
                target.complete();
                if let Some(a) = &how.accrual {
                    target.accrue(!r.status().is_server_error(), a);
                }
            }
            Err(e) => {
                if e.is_connect() {
                    target.connect_failed();
                }
                if let Some(a) = &how.accrual {
                    target.accrue(false, a);
                }
            }
        }
        rsp
    }

    /// Sends one request to the endpoint on a connection of the attempt's kind.
    async fn send_once(
        &self,
        ep: &Endpoint,
        how: &Attempt,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if how.upgrade {
            Box::pin(self.shared.client.send_upgrade(ep, req)).await
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
            let rsp = self.attempt(&target, how, req).await;
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
            let rsp = self.attempt(&target, how, req).await;
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

    /// Resolves the request's target: an endpoint of a logical destination when one is known
    /// for the authority, otherwise the original destination (transparent) or the authority
    /// itself (HTTP-proxy mode).
    async fn target(
        &self,
        req: &Request<Incoming>,
        authority: &HeaderValue,
    ) -> Result<Target, ProxyError> {
        let default_port = match self.route {
            Route::Fixed(addr) => return Ok(Target::direct(addr)),
            Route::OrigDst(addr) => addr.port(),
            Route::Proxy if req.uri().scheme() == Some(&uri::Scheme::HTTPS) => 443,
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
                // No endpoint was chosen; label the failure with an unspecified target.
                let target = Endpoint {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
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
