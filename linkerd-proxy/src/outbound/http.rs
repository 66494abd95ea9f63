//! Outbound HTTP: each request the application sends is counted as a hop, planned by its
//! destination's policy (`plan.rs`), given an endpoint (a discovered one, the original
//! destination, or in HTTP-proxy mode the authority itself, never one of the proxy's own
//! listeners), carried to a meshed endpoint as HTTP/2 over mTLS, and sent with the route's
//! timeouts and retries (`retry.rs`). A connect that fails sends nothing: the request goes to
//! another endpoint.

use super::{
    plan::Plan,
    policy::{OutboundPolicies, PolicyWatch},
    retry::{self, Attempts, Outcome},
};
use crate::{
    balance::{Balancer, Balancers, Target, target_for},
    destination::DestinationConfig,
    http::{
        ProxyBody, ProxyError,
        client::{Protocol, SendError},
        exchange::{
            Attempt, Core, Finish, InFlightRequest, L5D_ORIG_PROTO, authority_of, check_host,
            prepare_request, record_outcome, with_port,
        },
        inflight::Held,
        server::Handle,
    },
    lock,
    metrics::{ResponseClass, RouteCounters},
    tcp,
    tls::CredsRx,
    transport::{Listener, OwnAddrs, ProxyAllow},
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version, uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::debug;

/// How many outbound proxies a request has passed through: each adds one, and a request that
/// arrives having passed [`MAX_HOPS`] is answered `508 Loop Detected` instead of sent on.
pub(crate) static L5D_PROXY_HOPS: HeaderName = HeaderName::from_static("l5d-proxy-hops");
/// More outbound hops than any real call chain makes, and few enough to stop a loop at once.
pub(crate) const MAX_HOPS: usize = 32;
/// `1` to `MAX_HOPS`, so that setting the count allocates nothing.
static HOPS: [&str; MAX_HOPS] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17",
    "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
];
/// How many other endpoints a request whose endpoint could not be reached may try.
const MAX_FAILOVERS: u32 = 2;

/// What every outbound connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Balancers of logical destinations (static names and service discovery).
    pub balancers: Arc<Balancers>,
    pub response_timeout: Option<Duration>,
    /// HTTP/1 to a meshed endpoint goes as HTTP/2 (see `outbound::Config::upgrade_http1`).
    pub upgrade_http1: bool,
    /// The proxy's TLS credentials, when it has an identity.
    pub creds: Option<CredsRx>,
    /// Routing policies (disabled without a policy service).
    pub policies: Arc<OutboundPolicies>,
    /// Which names service discovery covers: only those (or, transparently, the original
    /// destination address) are asked for a policy.
    pub discovery: Option<DestinationConfig>,
    /// The proxy's own listeners: a request is never sent to one (it would loop).
    pub own: Arc<OwnAddrs>,
    /// What HTTP-proxy mode may dial besides mesh destinations.
    pub proxy_allow: Arc<ProxyAllow>,
}

/// Where a connection's requests go.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dst {
    /// Transparent: the address the application dialled.
    OrigDst(SocketAddr),
    /// Not redirected: an HTTP proxy client; each request names its target.
    Proxy,
}

/// One outbound HTTP connection.
#[derive(Debug)]
pub(crate) struct Http {
    pub(super) core: Core,
    pub(super) dst: Dst,
    pub(super) shared: Arc<Shared>,
    /// The balancer (if any) of the last authority seen on this connection, and its name.
    pub(super) last: Mutex<Option<LastDst>>,
}

#[derive(Debug)]
pub(super) struct LastDst {
    pub(super) authority: HeaderValue,
    pub(super) name: Option<Arc<str>>,
    balancer: Option<Arc<Balancer>>,
    /// The destination's policy watch: `None` until looked up, then the answer (`Some(None)`:
    /// the destination gets no policy lookups).
    pub(super) policy: Option<Option<Arc<PolicyWatch>>>,
}

/// How a request's target is chosen, again when a connect fails.
#[derive(Clone, Copy)]
enum Retarget<'a> {
    /// An endpoint of the route's backend.
    Plan(&'a Plan),
    /// From the request's authority (and whether its URI is `https`).
    Name(&'a HeaderValue, bool),
}

impl Http {
    pub(crate) fn new(core: Core, dst: Dst, shared: Arc<Shared>) -> Self {
        Self {
            core,
            dst,
            shared,
            last: Mutex::new(None),
        }
    }

    /// Failures before an endpoint is chosen are counted on an unspecified address.
    const NO_TARGET: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

    async fn proxy(&self, mut req: Request<Incoming>, held: Held) -> Response<ProxyBody> {
        let core = &self.core;
        let checked = check_host(&req);
        let authority = authority_of(&req);
        let named = authority.is_some();
        let mut r = core.begin(&mut req, authority.unwrap_or(HeaderValue::from_static("")));
        if let Err(e) = checked {
            return core.fail(e, r, None, Self::NO_TARGET);
        }
        if !named && matches!(self.dst, Dst::Proxy) {
            let e = ProxyError::BadRequest("the request names no host");
            return e.into_response(r.grpc);
        }
        if let Err(e) = count_hop(req.headers_mut()) {
            return core.fail(e, r, None, Self::NO_TARGET);
        }
        // The destination's policy: a route's filters may answer right here; else a backend.
        let plan = match self.plan(&mut req, &r.authority, r.grpc).await {
            Ok(p) => p,
            Err(e) => return core.fail(e, r, None, Self::NO_TARGET),
        };
        let https = req.uri().scheme() == Some(&uri::Scheme::HTTPS);
        // `retarget`, inline: the hot path keeps one async layer fewer.
        let target = match &plan {
            Some(plan) => self.backend_target(plan).await,
            None => self.target(&r.authority, https).await,
        };
        let target = match target.and_then(|t| self.check_target(t)) {
            Ok(t) => t,
            Err(e) => return core.fail(e, r, None, Self::NO_TARGET),
        };
        if let Some(o) = r.observe.as_mut() {
            let id = target.endpoint().identity.as_ref();
            if let Some(t) = o.tap.as_mut() {
                t.event.tls = id.is_some();
                t.event.peer_id = id.map(|i| i.to_string());
            }
            if let Some((_, span)) = o.span.as_mut() {
                span.peer_identity = id.cloned();
                span.route = plan.as_ref().map(|p| p.rule.route.clone());
            }
        }
        if req.method() == Method::CONNECT && matches!(self.dst, Dst::Proxy) {
            return Box::pin(self.tunnel(req, target, r, held)).await;
        }
        let mut f = Finish::begin(core.stats(&r.authority, target.endpoint()), held, &mut req);
        let (upgrade, downstream_h2) = (f.upgrade, f.downstream_h2);
        req.headers_mut().remove(&L5D_ORIG_PROTO);
        // Between meshed proxies, HTTP/1 travels as HTTP/2 so that one mTLS connection
        // multiplexes every request; the receiving proxy restores HTTP/1 for its application.
        // (Unless configured off: then HTTP/1.1 over pooled mTLS connections.)
        let to_h2 = self.shared.upgrade_http1
            && target.endpoint().identity.is_some()
            && !downstream_h2
            && !upgrade;
        let proto = if to_h2 {
            let v = if req.version() == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            req.headers_mut()
                .insert(L5D_ORIG_PROTO.clone(), HeaderValue::from_static(v));
            Protocol::Http2
        } else if downstream_h2 && !upgrade {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let req = match prepare_request(req, &r.authority, proto, upgrade) {
            Ok(r) => r,
            Err(e) => return core.fail(e, r, Some(&f.stats), target.endpoint().addr),
        };
        let how = Attempt {
            proto,
            upgrade,
            grpc: r.grpc,
            timeout: plan.as_ref().and_then(Plan::attempt_timeout),
            accrual: plan.as_ref().and_then(|p| p.accrual),
        };
        let total = plan
            .as_ref()
            .and_then(|p| p.rule.timeout)
            .or(self.shared.response_timeout);
        let retarget = match &plan {
            Some(plan) => Retarget::Plan(plan),
            None => Retarget::Name(&r.authority, https),
        };
        let addr = target.endpoint().addr;
        let mut sends = 0;
        let send = self.send(plan.as_ref(), target, &how, req, retarget, &mut sends);
        let rsp = match total {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(rsp) => rsp,
                Err(_) => {
                    if let Some(p) = &plan {
                        RouteCounters::inc(&p.rule.counters.timeouts);
                    }
                    Err(ProxyError::ResponseTimeout(t))
                }
            },
            None => send.await,
        };
        if sends > 1
            && let Some((_, span)) = r.observe.as_mut().and_then(|o| o.span.as_mut())
        {
            span.resends = sends - 1;
        }
        if let Some(p) = &plan {
            let (status, error) = match &rsp {
                Ok(rsp) => (rsp.status().as_u16(), None),
                Err(e) => (e.http_status().as_u16(), Some(e.label())),
            };
            p.rule.counters.record(status, error, r.start.elapsed());
        }
        let mut rsp = match rsp {
            Ok(rsp) => rsp,
            Err(e) => return core.fail(e, r, Some(&f.stats), addr),
        };
        if let Some(p) = &plan {
            p.rule.edit_response(p.backend, rsp.headers_mut());
        }
        f.from_h2 = to_h2;
        core.respond(rsp, r, f)
    }

    /// Sends the request, with the route's retries if it has any. The target counts as in
    /// flight on its endpoint until the response headers, when this returns.
    async fn send(
        &self,
        plan: Option<&Plan>,
        target: Target,
        how: &Attempt,
        req: Request<Incoming>,
        retarget: Retarget<'_>,
        sends: &mut u32,
    ) -> Outcome {
        let retry = plan
            .and_then(|p| Some((p, p.rule.retry.as_ref()?)))
            .filter(|_| !how.upgrade);
        let mut target = target;
        match retry {
            Some((plan, retry)) => {
                let mut attempts = PlanAttempts {
                    http: self,
                    plan,
                    how,
                    target: &mut target,
                    sends,
                };
                let counters = &plan.rule.counters;
                Box::pin(retry::with_retries(
                    retry,
                    counters,
                    how.grpc,
                    req,
                    &mut attempts,
                ))
                .await
            }
            None => {
                let req = req.map(|b| ProxyBody::stream(b, None));
                self.attempt(&mut target, how, req, retarget).await
            }
        }
    }

    /// Sends one attempt and reports its outcome to the endpoint's load and failure accrual.
    /// When no connection to a balanced endpoint could be had, nothing was sent: the request
    /// goes to another endpoint of the same destination ([`Http::fail_over`]).
    async fn attempt(
        &self,
        target: &mut Target,
        how: &Attempt,
        req: Request<ProxyBody>,
        retarget: Retarget<'_>,
    ) -> Outcome {
        let rsp = self.send_timed(target, how, req).await;
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

    /// One attempt on `target`, bounded by the attempt's timeout, its outcome recorded.
    async fn send_timed(
        &self,
        target: &Target,
        how: &Attempt,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let ep = target.endpoint();
        let send = self.core.send_once(ep, how, req);
        let rsp = match how.timeout {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::ResponseTimeout(t).into()),
            },
            None => send.await,
        };
        record_outcome(target, how, &rsp);
        rsp
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
    ) -> Outcome {
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
            match self.send_timed(target, how, req).await {
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

    /// A target the request may go to: not one of the proxy's own listeners (the inbound
    /// listener is allowed as an endpoint discovery or a static name gave: a workload calling
    /// its own service through the mesh reaches its application) and, in HTTP-proxy mode, a
    /// mesh destination or an address `MESH_PROXY_OUTBOUND_PROXY_ALLOW` allows.
    fn check_target(&self, target: Target) -> Result<Target, ProxyError> {
        match self.shared.own.find(target.endpoint().addr) {
            None => {}
            Some(Listener::Inbound) if matches!(target, Target::Balanced(_)) => {}
            Some(l) => return Err(ProxyError::Loop(l.as_str())),
        }
        if let (Dst::Proxy, Target::Direct(ep)) = (self.dst, &target)
            && !self.shared.proxy_allow.permits(ep.addr)
        {
            return Err(ProxyError::NotAllowed(ep.addr));
        }
        Ok(target)
    }

    /// The port a name without one gets.
    pub(super) fn default_port(&self, https: bool) -> u16 {
        match self.dst {
            Dst::OrigDst(addr) => addr.port(),
            Dst::Proxy if https => 443,
            Dst::Proxy => 80,
        }
    }

    /// Resolves the request's target: an endpoint of a logical destination when one is known
    /// for the authority, otherwise the original destination (transparent) or the authority
    /// itself (HTTP-proxy mode).
    async fn target(&self, authority: &HeaderValue, https: bool) -> Result<Target, ProxyError> {
        let (name, balancer) = self.destination(authority, self.default_port(https));
        match self.dst {
            Dst::OrigDst(addr) => {
                // A name discovery knows is balanced over its endpoints; anything else goes
                // where the application was sending it.
                let name = name.as_deref().unwrap_or("");
                Ok(target_for(balancer.as_deref(), name, Some(addr)).await?)
            }
            Dst::Proxy => {
                let name = name.ok_or(ProxyError::BadRequest("invalid host"))?;
                Ok(target_for(balancer.as_deref(), &name, None).await?)
            }
        }
    }

    /// The logical name (`host:port`) for an authority and its balancer, cached for the
    /// connection's last authority so keep-alive requests do no lookups.
    pub(super) fn destination(
        &self,
        authority: &HeaderValue,
        default_port: u16,
    ) -> (Option<Arc<str>>, Option<Arc<Balancer>>) {
        let mut last = lock(&self.last);
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
        r: InFlightRequest,
        held: Held,
    ) -> Response<ProxyBody> {
        let core = &self.core;
        let stats = core.stats(&r.authority, target.endpoint());
        stats.request();
        let timeout = core.fw.client.connect_timeout();
        let dialed = tcp::dial(target.endpoint(), timeout, self.shared.creds.as_ref()).await;
        let mut upstream = match dialed {
            Ok(s) => {
                target.connected();
                s
            }
            Err(e) => {
                target.connect_failed();
                let addr = target.endpoint().addr;
                return core.fail(e.into(), r, Some(&stats), addr);
            }
        };
        if let Some(mut o) = r.observe {
            o.headers(200, None);
            o.finish(200, None, None, r.start.elapsed());
        }
        // The connection becomes the tunnel: no more request heads, and it is bounded as a
        // connection, not as a request in flight.
        held.upgraded();
        drop(held);
        let down = hyper::upgrade::on(&mut req);
        let drain = core.drain.clone();
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
            r.start.elapsed(),
        );
        Response::new(ProxyBody::empty())
    }
}

impl Handle for Http {
    fn core(&self) -> &Core {
        &self.core
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, held: Held) -> Response<ProxyBody> {
        self.proxy(req, held).await
    }
}

/// The attempts of a request on a route that retries: each on an endpoint of the route's
/// backend.
struct PlanAttempts<'a> {
    http: &'a Http,
    plan: &'a Plan,
    how: &'a Attempt,
    target: &'a mut Target,
    /// Attempts sent so far (the trace span reports the retries).
    sends: &'a mut u32,
}

impl Attempts for PlanAttempts<'_> {
    fn send(&mut self, req: Request<ProxyBody>) -> impl Future<Output = Outcome> + Send {
        *self.sends += 1;
        let retarget = Retarget::Plan(self.plan);
        self.http.attempt(self.target, self.how, req, retarget)
    }

    async fn next(&mut self) -> bool {
        match self.http.backend_target(self.plan).await {
            // The request was shaped (HTTP/2 or not) for a meshed or an unmeshed endpoint.
            Ok(next)
                if next.endpoint().identity.is_some()
                    == self.target.endpoint().identity.is_some() =>
            {
                *self.target = next;
                true
            }
            _ => false,
        }
    }
}

/// Adds this proxy to the request's outbound hop count, or fails when the request has been
/// through [`MAX_HOPS`] proxies already: it is looping.
fn count_hop(headers: &mut HeaderMap) -> Result<(), ProxyError> {
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
