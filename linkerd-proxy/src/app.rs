//! The composition root: binds every listener, runs the accept loops, and drains on shutdown.
//!
//! ```text
//! outbound accept ─ orig dst? ─┬─ opaque port ─────────────────────────► tcp::forward(orig dst)
//!                              └─ detect ─┬─ HTTP/1, HTTP/2 ─► http::serve(Route::OrigDst | Proxy)
//!                                         └─ opaque ─────────► tcp::forward(orig dst)
//! inbound accept ─ target = 127.0.0.1:orig port (or MESH_PROXY_INBOUND_FORWARD_ADDR)
//!                  └─ opaque port or detect ─► http::serve(Route::Fixed) | tcp::forward
//! local listener ─ logical name ─► resolve ─► tcp::forward
//! ```

use crate::{
    admin,
    balance::{Balancers, Target, target_for},
    config::{Config, LocalListener},
    destination::DestinationResolve,
    detect::{self, Protocol},
    drain::{self, Drain},
    http::{self, HttpConn, Route, Shared},
    identity,
    io::{BoxIo, CountingIo},
    log::LogLevel,
    metrics::{Direction, Metrics, Tls},
    outbound::OutboundPolicies,
    policy::{Policies, ServerProtocol},
    resolve::{Chain, Resolve, StaticResolve},
    tcp::{self, SrcConn},
    tls::{CredsRx, TrustRoots, client_hello, identity_of},
    transport::{self, Accepted},
};
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub local_listeners: Vec<(String, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    /// Keeps the shutdown channel open: `watch::Sender::send` discards the value when no
    /// receiver exists, which would lose a `/shutdown` that arrives before anyone waits for it.
    _shutdown_rx: watch::Receiver<bool>,
    drain: drain::Controller,
    grace: Duration,
}

/// What every connection handler needs.
struct Ctx {
    config: Config,
    metrics: Arc<Metrics>,
    outbound: Shared,
    inbound: Shared,
    /// Set when the proxy has an identity; holds `None` until the first certificate.
    creds: Option<CredsRx>,
    /// Inbound authorization, per port.
    policies: Policies,
}

/// Binds every listener and starts serving. Listener errors are returned before anything runs.
pub async fn start(config: Config, log: LogLevel) -> io::Result<Running> {
    let inbound = bind(config.inbound.listen_addr, "inbound").await?;
    let outbound = bind(config.outbound.listen_addr, "outbound").await?;
    let admin = bind(config.admin.listen_addr, "admin").await?;
    let mut locals = Vec::new();
    for l in &config.outbound.local_listeners {
        locals.push((l.clone(), bind(l.listen_addr, &l.name).await?));
    }

    let metrics = Arc::new(Metrics::new());
    // Identity first: the proxy is not ready until it holds a certificate.
    let creds = match &config.identity {
        Some(id) => {
            let roots = TrustRoots::from_pem(&id.trust_anchors_pem)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let (tx, rx) = watch::channel(None);
            tokio::spawn(identity::run(id.clone(), roots, tx, metrics.clone()));
            Some(rx)
        }
        None => None,
    };
    let policy_channel = crate::policy::client::channel(&config.policy, creds.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let policies =
        crate::policy::client::start(&config.policy, policy_channel.clone(), metrics.clone());
    let statics = StaticResolve::new(&config.outbound.static_endpoints);
    let resolve: Arc<dyn Resolve> = match &config.destination {
        Some(d) => {
            let dst = DestinationResolve::new(d.clone(), creds.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Arc::new(Chain(statics, dst))
        }
        None => Arc::new(statics),
    };
    let balancers = Arc::new(Balancers::new(resolve, config.outbound.balance));
    // Outbound policies come from the same policy service as the inbound ones.
    let outbound_policies = Arc::new(match (&config.policy.service, policy_channel) {
        (Some(svc), Some(channel)) => {
            OutboundPolicies::new(channel, svc.workload.clone(), metrics.clone())
        }
        _ => OutboundPolicies::disabled(metrics.clone()),
    });
    tokio::spawn(
        outbound_policies
            .clone()
            .evict_idle(config.outbound.discovery_idle_timeout),
    );
    tokio::spawn(
        balancers
            .clone()
            .evict_idle(config.outbound.discovery_idle_timeout),
    );
    let outbound_shared = Shared {
        client: http::Client::new(
            config.outbound.connect_timeout,
            config.outbound.max_idle_per_endpoint,
            metrics.clone(),
            Direction::Outbound,
            OUTBOUND_TLS,
            creds.clone(),
        ),
        metrics: metrics.clone(),
        balancers: balancers.clone(),
        response_timeout: config.outbound.response_timeout,
        creds: creds.clone(),
        policies: outbound_policies.clone(),
        discovery: config.destination.clone(),
    };
    tokio::spawn(
        outbound_shared
            .client
            .evict_idle(http::client::HTTP1_IDLE_TIMEOUT),
    );
    let inbound_shared = Shared {
        client: http::Client::new(
            config.inbound.connect_timeout,
            config.outbound.max_idle_per_endpoint,
            metrics.clone(),
            Direction::Inbound,
            INBOUND_TLS,
            None,
        ),
        metrics: metrics.clone(),
        balancers,
        response_timeout: None,
        creds: None,
        policies: outbound_policies,
        discovery: None,
    };
    tokio::spawn(
        inbound_shared
            .client
            .evict_idle(http::client::HTTP1_IDLE_TIMEOUT),
    );
    let (drain_ctl, drain) = drain::channel();
    let (shutdown, shutdown_rx) = watch::channel(false);

    let running = Running {
        inbound_addr: inbound.local_addr()?,
        outbound_addr: outbound.local_addr()?,
        admin_addr: admin.local_addr()?,
        local_listeners: locals
            .iter()
            .map(|(l, s)| Ok((l.name.clone(), s.local_addr()?)))
            .collect::<io::Result<_>>()?,
        shutdown,
        _shutdown_rx: shutdown_rx,
        drain: drain_ctl,
        grace: config.shutdown_grace_period,
    };
    let ctx = Arc::new(Ctx {
        config,
        metrics: metrics.clone(),
        outbound: outbound_shared,
        inbound: inbound_shared,
        creds: creds.clone(),
        policies,
    });

    let admin_state = admin::State {
        metrics,
        log,
        drain: drain.signal(),
        shutdown: running.shutdown.clone(),
        shutdown_enabled: ctx.config.admin.shutdown_endpoint_enabled,
        creds,
        policy_pending: ctx.policies.pending(),
    };
    tokio::spawn(admin::serve(admin, admin_state));

    let (c, d) = (ctx.clone(), drain.clone());
    tokio::spawn(accept_loop(outbound, drain.clone(), move |acc| {
        outbound_conn(c.clone(), acc, d.clone())
    }));
    let (c, d) = (ctx.clone(), drain.clone());
    tokio::spawn(accept_loop(inbound, drain.clone(), move |acc| {
        inbound_conn(c.clone(), acc, d.clone())
    }));
    for (l, listener) in locals {
        let (c, d, l) = (ctx.clone(), drain.clone(), Arc::new(l));
        tokio::spawn(accept_loop(listener, drain.clone(), move |acc| {
            local_conn(c.clone(), l.clone(), acc, d.clone())
        }));
    }
    info!(
        inbound = %running.inbound_addr,
        outbound = %running.outbound_addr,
        admin = %running.admin_addr,
        "proxy started"
    );
    Ok(running)
}

impl Running {
    /// A handle that starts shutdown when sent `true` (what `/shutdown` uses).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Completes when shutdown has been requested through the admin server or the handle.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops accepting, lets in-flight work finish within the grace period, and reports whether
    /// everything finished in time.
    pub async fn drain(self) -> bool {
        info!(grace = ?self.grace, "draining");
        let done = self.drain.drain(self.grace).await;
        if done {
            info!("drained");
        } else {
            warn!("grace period elapsed with connections still open");
        }
        done
    }
}

async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    transport::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the {what} listener on {addr}: {e}"),
        )
    })
}

async fn accept_loop<F, Fut>(listener: TcpListener, drain: Drain, handle: F)
where
    F: Fn(Accepted) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = drain.signaled() => return,
        };
        match accepted.and_then(|(s, client)| transport::accepted(s, client)) {
            Ok(acc) => {
                tokio::spawn(handle(acc));
            }
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

const OUTBOUND_TLS: Tls = Tls::None("not_provided_by_service_discovery");
const INBOUND_TLS: Tls = Tls::None("no_tls_from_remote");

async fn outbound_conn(ctx: Arc<Ctx>, acc: Accepted, drain: Drain) {
    let orig = acc.orig_dst.map(|o| o.0);
    let src = SrcConn::open(
        &ctx.metrics,
        Direction::Outbound,
        orig.unwrap_or(acc.local),
        OUTBOUND_TLS,
    );
    let io: BoxIo = Box::new(CountingIo::new(acc.stream, src.counters()));
    let cfg = &ctx.config.outbound;

    if let Some(orig) = orig.filter(|o| cfg.opaque_ports.contains(&o.port())) {
        ctx.metrics
            .detected(Direction::Outbound, "opaque", "configured");
        let target = Target::direct(orig);
        return forward(&ctx, io, &target, Direction::Outbound, drain).await;
    }
    let (proto, reason, io) = match detect::detect(io, cfg.detect_timeout).await {
        Ok(d) => d,
        Err(e) => {
            debug!(error = %e, "outbound detection failed");
            return;
        }
    };
    ctx.metrics.detected(
        Direction::Outbound,
        protocol_label(proto),
        reason_label(reason),
    );
    match (proto, orig) {
        (Protocol::Http1 | Protocol::Http2, _) => {
            let route = orig.map_or(Route::Proxy, Route::OrigDst);
            let conn = HttpConn::new(
                Direction::Outbound,
                OUTBOUND_TLS,
                route,
                ctx.outbound.clone(),
                drain,
            );
            http::serve(io, proto, conn).await;
        }
        (Protocol::Opaque, Some(orig)) => {
            let target = Target::direct(orig);
            forward(&ctx, Box::new(io), &target, Direction::Outbound, drain).await
        }
        (Protocol::Opaque, None) => {
            debug!(client = %acc.client, "opaque connection with no original destination; closing");
        }
    }
    drop(src);
}

async fn inbound_conn(ctx: Arc<Ctx>, acc: Accepted, drain: Drain) {
    let cfg = &ctx.config.inbound;
    let target = match acc.orig_dst {
        // Redirected: deliver to the application on the port the client dialled.
        Some(o) if o.0.port() != cfg.listen_addr.port() => {
            SocketAddr::new(loopback(o.0.ip()), o.0.port())
        }
        Some(_) => {
            debug!(client = %acc.client, "refusing a connection redirected to the proxy itself");
            return;
        }
        None => match cfg.forward_addr {
            Some(addr) => addr,
            None => {
                debug!(client = %acc.client, "direct inbound connection and no MESH_PROXY_INBOUND_FORWARD_ADDR; closing");
                return;
            }
        },
    };
    let port = acc.orig_dst.map_or(target.port(), |o| o.0.port());
    // Bytes are counted from the first one; the label set is known once TLS is settled.
    let io = CountingIo::new(acc.stream, Default::default());
    let creds = ctx.creds.as_ref().and_then(|c| c.borrow().clone());
    if let Some(creds) = creds {
        let (peek, mut io) = match client_hello::peek(io, cfg.detect_timeout).await {
            Ok(p) => p,
            Err(e) => return debug!(error = %e, "inbound TLS detection failed"),
        };
        match peek {
            client_hello::Peek::ClientHello(Some(sni)) if *sni == *creds.local_id => {
                let accept = tokio_rustls::TlsAcceptor::from(creds.server.clone()).accept(io);
                let mut tls = match tokio::time::timeout(
                    cfg.detect_timeout.max(Duration::from_secs(1)),
                    accept,
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        return debug!(client = %acc.client, error = %e, "inbound TLS handshake failed");
                    }
                    Err(_) => {
                        return debug!(client = %acc.client, "inbound TLS handshake timed out");
                    }
                };
                let client_id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(identity_of);
                let label = Tls::Established { peer_id: client_id };
                let src = SrcConn::open(&ctx.metrics, Direction::Inbound, target, label.clone());
                tls.get_mut().0.get_mut().rebind(src.counters());
                let io = Box::new(tls);
                serve_inbound(&ctx, io, acc.client, target, port, label, drain).await;
                drop(src);
            }
            // TLS for someone else (the application's own, end to end) or plaintext.
            peek => {
                let label = match peek {
                    client_hello::Peek::ClientHello(_) => Tls::None("passthru"),
                    _ => INBOUND_TLS,
                };
                let src = SrcConn::open(&ctx.metrics, Direction::Inbound, target, label.clone());
                io.get_mut().rebind(src.counters());
                let io = Box::new(io);
                serve_inbound(&ctx, io, acc.client, target, port, label, drain).await;
                drop(src);
            }
        }
    } else {
        let mut io = io;
        let src = SrcConn::open(&ctx.metrics, Direction::Inbound, target, INBOUND_TLS);
        io.rebind(src.counters());
        let io = Box::new(io);
        serve_inbound(&ctx, io, acc.client, target, port, INBOUND_TLS, drain).await;
        drop(src);
    }
}

/// Detects the protocol of an inbound stream (plaintext or the inside of mTLS), checks the
/// port's policy and serves it: opaque connections are authorized once, HTTP requests each.
async fn serve_inbound(
    ctx: &Ctx,
    io: BoxIo,
    client: SocketAddr,
    target: SocketAddr,
    port: u16,
    tls: Tls,
    drain: Drain,
) {
    let cfg = &ctx.config.inbound;
    let ep = Target::direct(target);
    let policy = ctx.policies.port(port);
    let current = policy.current();
    let opaque_by_policy = matches!(
        current.protocol,
        ServerProtocol::Opaque | ServerProtocol::Tls
    );
    if cfg.opaque_ports.contains(&port) || opaque_by_policy {
        ctx.metrics
            .detected(Direction::Inbound, "opaque", "configured");
        if !current.authorize_tcp(client.ip(), &tls) {
            return debug!(%client, port, server = %current.name, "connection not authorized; closing");
        }
        return forward(ctx, io, &ep, Direction::Inbound, drain).await;
    }
    drop(current);
    let (proto, reason, io) = match detect::detect(io, cfg.detect_timeout).await {
        Ok(d) => d,
        Err(e) => return debug!(error = %e, "inbound detection failed"),
    };
    ctx.metrics.detected(
        Direction::Inbound,
        protocol_label(proto),
        reason_label(reason),
    );
    match proto {
        Protocol::Http1 | Protocol::Http2 => {
            let conn = HttpConn::new(
                Direction::Inbound,
                tls,
                Route::Fixed(target),
                ctx.inbound.clone(),
                drain,
            )
            .with_authz(policy, client.ip());
            http::serve(io, proto, conn).await;
        }
        Protocol::Opaque => {
            let current = policy.current();
            if !current.authorize_tcp(client.ip(), &tls) {
                return debug!(%client, port, server = %current.name, "connection not authorized; closing");
            }
            forward(ctx, Box::new(io), &ep, Direction::Inbound, drain).await
        }
    }
}

async fn local_conn(ctx: Arc<Ctx>, listener: Arc<LocalListener>, acc: Accepted, drain: Drain) {
    // Balanced per connection: the pick is held (in flight on its endpoint) while it lasts.
    let balancer = ctx.outbound.balancers.get(&listener.target);
    let target = match target_for(balancer.as_deref(), &listener.target, None).await {
        Ok(t) => t,
        Err(e) => {
            warn!(listener = %listener.name, error = %e, "cannot forward");
            return;
        }
    };
    let addr = target.endpoint().addr;
    let src = SrcConn::open(&ctx.metrics, Direction::Outbound, addr, OUTBOUND_TLS);
    let io = Box::new(CountingIo::new(acc.stream, src.counters()));
    forward(&ctx, io, &target, Direction::Outbound, drain).await;
}

async fn forward(ctx: &Ctx, io: BoxIo, target: &Target, direction: Direction, drain: Drain) {
    let (plaintext, connect_timeout, creds) = match direction {
        Direction::Inbound => (INBOUND_TLS, ctx.config.inbound.connect_timeout, None),
        Direction::Outbound => (
            OUTBOUND_TLS,
            ctx.config.outbound.connect_timeout,
            ctx.creds.as_ref(),
        ),
    };
    let f = tcp::Forward {
        direction,
        plaintext,
        connect_timeout,
        creds,
        metrics: &ctx.metrics,
    };
    tcp::forward(io, target, f, drain).await;
}

fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn protocol_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "http1",
        Protocol::Http2 => "http2",
        Protocol::Opaque => "opaque",
    }
}

fn reason_label(r: detect::Reason) -> &'static str {
    match r {
        detect::Reason::Matched => "matched",
        detect::Reason::NotHttp => "not_http",
        detect::Reason::Timeout => "timeout",
        detect::Reason::BufferFull => "buffer_full",
    }
}
