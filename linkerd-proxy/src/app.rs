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
    http::{self, HttpConn, Route, Shared, inflight::InFlight},
    identity,
    inbound::policy::{Policies, PortPolicy, ServerProtocol},
    io::{BoxIo, CountingIo, PrefixedIo},
    log::LogLevel,
    metrics::{Direction, LimitSeries, Metrics, Tls},
    outbound::policy::OutboundPolicies,
    resolve::{Chain, Resolve, StaticResolve},
    tcp::{self, SrcConn},
    tls::{CredsRx, TrustRoots, client_hello, identity_of},
    transport::{self, Accepted, Listener, OwnAddrs},
};
use bytes::Bytes;
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{io::AsyncReadExt, net::TcpListener, sync::watch};
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

    let mut own = vec![
        (inbound.local_addr()?, Listener::Inbound),
        (outbound.local_addr()?, Listener::Outbound),
        (admin.local_addr()?, Listener::Admin),
    ];
    for (_, l) in &locals {
        own.push((l.local_addr()?, Listener::Local));
    }
    let own = Arc::new(OwnAddrs::new(own));

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
    let policy_channel = crate::inbound::policy::client::channel(&config.policy, creds.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let policies = crate::inbound::policy::client::start(
        &config.policy,
        policy_channel.clone(),
        metrics.clone(),
    );
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
        header_read_timeout: config.outbound.limits.header_read_timeout,
        header_timeouts: header_timeouts(&metrics, Direction::Outbound),
        in_flight: in_flight(&metrics, Direction::Outbound, &config.outbound.limits),
        own: own.clone(),
        proxy_allow: Arc::new(config.outbound.proxy_allow.clone()),
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
        header_read_timeout: config.inbound.limits.header_read_timeout,
        header_timeouts: header_timeouts(&metrics, Direction::Inbound),
        in_flight: in_flight(&metrics, Direction::Inbound, &config.inbound.limits),
        own: own.clone(),
        proxy_allow: Arc::default(),
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
    let limit = ConnLimit::new(&ctx.metrics, "outbound", cfg_max(&ctx, Direction::Outbound));
    tokio::spawn(accept_loop(
        outbound,
        limit.clone(),
        drain.clone(),
        move |acc, slot| outbound_conn(c.clone(), acc, d.clone(), slot),
    ));
    let (c, d) = (ctx.clone(), drain.clone());
    let inbound_limit = ConnLimit::new(&ctx.metrics, "inbound", cfg_max(&ctx, Direction::Inbound));
    tokio::spawn(accept_loop(
        inbound,
        inbound_limit.clone(),
        drain.clone(),
        move |acc, slot| inbound_conn(c.clone(), acc, d.clone(), slot),
    ));
    // glibc keeps freed memory resident: give it back after connections close.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let (a, b) = (limit.clone(), inbound_limit.clone());
        tokio::spawn(crate::trim::run(move || a.open() + b.open()));
    }
    // Local listeners are outbound traffic: they share the outbound listener's bound.
    for (l, listener) in locals {
        let (c, d, l) = (ctx.clone(), drain.clone(), Arc::new(l));
        tokio::spawn(accept_loop(
            listener,
            limit.clone(),
            drain.clone(),
            move |acc, slot| local_conn(c.clone(), l.clone(), acc, d.clone(), slot),
        ));
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

/// The connections a listener holds open, and its bound. At the bound a new connection is
/// closed as soon as it is accepted (counted, and logged at most every few seconds), so a flood
/// of connections costs a bounded amount of memory and the kernel's queue does not fill with
/// clients that will time out anyway.
#[derive(Debug)]
struct ConnLimit {
    name: &'static str,
    open: AtomicUsize,
    max: usize,
    refused: AtomicU64,
    last_log: Mutex<Option<tokio::time::Instant>>,
}

/// One open connection of a listener.
#[derive(Debug)]
struct ConnSlot(Arc<ConnLimit>);

impl ConnLimit {
    fn new(metrics: &Metrics, name: &'static str, max: usize) -> Arc<Self> {
        let limit = Arc::new(Self {
            name,
            open: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
        });
        let (open, refused) = (limit.clone(), limit.clone());
        metrics.register_limit(LimitSeries {
            name: "proxy_connections_open",
            help: "Connections a listener holds open.",
            kind: "gauge",
            labels: format!("listener=\"{name}\""),
            value: Box::new(move || open.open.load(Ordering::Relaxed) as u64),
        });
        metrics.register_limit(LimitSeries {
            name: "proxy_connections_refused_total",
            help: "Connections closed at once because the listener held its maximum.",
            kind: "counter",
            labels: format!("listener=\"{name}\""),
            value: Box::new(move || refused.refused.load(Ordering::Relaxed)),
        });
        limit
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn acquire(self: &Arc<Self>) -> Option<ConnSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            });
        if taken.is_ok() {
            return Some(ConnSlot(self.clone()));
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = tokio::time::Instant::now();
        let mut last = crate::lock(&self.last_log);
        if last.is_none_or(|l| now.duration_since(l) >= Duration::from_secs(10)) {
            *last = Some(now);
            warn!(
                listener = self.name,
                max = self.max,
                refused,
                "connection limit reached; closing new connections"
            );
        }
        None
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn cfg_max(ctx: &Ctx, direction: Direction) -> usize {
    match direction {
        Direction::Inbound => ctx.config.inbound.limits.max_connections,
        Direction::Outbound => ctx.config.outbound.limits.max_connections,
    }
}

/// The counter of a direction's connections cut off by the header-read timeout.
fn header_timeouts(metrics: &Metrics, direction: Direction) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    metrics.register_limit(LimitSeries {
        name: "proxy_http_header_read_timeouts_total",
        help: "HTTP/1 connections closed because a request head took longer than the header-read timeout.",
        kind: "counter",
        labels: format!("direction=\"{}\"", direction.as_str()),
        value: Box::new(move || c.load(Ordering::Relaxed)),
    });
    count
}

/// A direction's bound on requests in flight, exported as metrics.
fn in_flight(
    metrics: &Metrics,
    direction: Direction,
    limits: &crate::config::Limits,
) -> Arc<InFlight> {
    let f = InFlight::new(limits.max_in_flight);
    let (current, shed) = (f.clone(), f.clone());
    let labels = format!("direction=\"{}\"", direction.as_str());
    metrics.register_limit(LimitSeries {
        name: "proxy_http_requests_in_flight",
        help: "HTTP requests between their head and the end of their response.",
        kind: "gauge",
        labels: labels.clone(),
        value: Box::new(move || current.current() as u64),
    });
    metrics.register_limit(LimitSeries {
        name: "proxy_http_requests_shed_total",
        help: "HTTP requests refused because the direction had its maximum in flight.",
        kind: "counter",
        labels,
        value: Box::new(move || shed.shed()),
    });
    f
}

async fn accept_loop<F, Fut>(listener: TcpListener, limit: Arc<ConnLimit>, drain: Drain, handle: F)
where
    F: Fn(Accepted, ConnSlot) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = drain.signaled() => return,
        };
        let Ok((stream, client)) = accepted else {
            if let Err(e) = accepted {
                // Usually EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Some(slot) = limit.acquire() else {
            drop(stream);
            continue;
        };
        match transport::accepted(stream, client) {
            // The connection's future holds the slot: no wrapper future (each layer is one more
            // copy of the connection's state when it is spawned).
            Ok(acc) => {
                tokio::spawn(handle(acc, slot));
            }
            Err(e) => debug!(error = %e, "accepted connection unusable"),
        }
    }
}

const OUTBOUND_TLS: Tls = Tls::None("not_provided_by_service_discovery");
const INBOUND_TLS: Tls = Tls::None("no_tls_from_remote");

async fn outbound_conn(ctx: Arc<Ctx>, acc: Accepted, drain: Drain, _slot: ConnSlot) {
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

async fn inbound_conn(ctx: Arc<Ctx>, acc: Accepted, drain: Drain, _slot: ConnSlot) {
    let cfg = &ctx.config.inbound;
    let target = match acc.orig_dst {
        // Redirected: deliver to the application on the port the client dialled.
        Some(o) => SocketAddr::new(loopback(o.0.ip()), o.0.port()),
        None => match cfg.forward_addr {
            Some(addr) => addr,
            None => {
                debug!(client = %acc.client, "direct inbound connection and no MESH_PROXY_INBOUND_FORWARD_ADDR; closing");
                return;
            }
        },
    };
    // A redirected connection for one of the proxy's own ports (the inbound port itself, or
    // the outbound or admin port on localhost) would loop back into the proxy.
    if acc
        .orig_dst
        .is_some_and(|o| o.0.port() == cfg.listen_addr.port())
        || ctx.inbound.own.find(target).is_some()
    {
        debug!(client = %acc.client, %target, "refusing a connection for the proxy's own listener");
        return;
    }
    let port = acc.orig_dst.map_or(target.port(), |o| o.0.port());
    let policy = ctx.policies.port(port);
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
                // A client certificate is required unless the port's policy can admit a TLS
                // client without one (and then it is verified whenever it is presented).
                let config = if policy.current().admits_anonymous {
                    creds.server_optional.clone()
                } else {
                    creds.server.clone()
                };
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
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
                let conn = InboundConn {
                    client: acc.client,
                    target,
                    port,
                    tls: label,
                    policy,
                    silent: false,
                };
                serve_inbound(&ctx, io, conn, drain).await;
                drop(src);
            }
            // TLS for someone else (the application's own, end to end) or plaintext.
            peek => {
                let label = match peek {
                    client_hello::Peek::ClientHello(_) => Tls::None("passthru"),
                    _ => INBOUND_TLS,
                };
                // Nothing arrived within the detect timeout: detection would only wait again.
                let silent = io.prefix().is_empty();
                let src = SrcConn::open(&ctx.metrics, Direction::Inbound, target, label.clone());
                io.get_mut().rebind(src.counters());
                let io = Box::new(io);
                let conn = InboundConn {
                    client: acc.client,
                    target,
                    port,
                    tls: label,
                    policy,
                    silent,
                };
                serve_inbound(&ctx, io, conn, drain).await;
                drop(src);
            }
        }
    } else {
        let mut io = io;
        let src = SrcConn::open(&ctx.metrics, Direction::Inbound, target, INBOUND_TLS);
        io.rebind(src.counters());
        let io = Box::new(io);
        let conn = InboundConn {
            client: acc.client,
            target,
            port,
            tls: INBOUND_TLS,
            policy,
            silent: false,
        };
        serve_inbound(&ctx, io, conn, drain).await;
        drop(src);
    }
}

/// An inbound connection once its TLS is settled.
struct InboundConn {
    client: SocketAddr,
    /// The application's address.
    target: SocketAddr,
    /// The port the client dialled, whose policy applies.
    port: u16,
    tls: Tls,
    policy: PortPolicy,
    /// The client sent nothing within the detect timeout already (waiting for a ClientHello).
    silent: bool,
}

/// Detects the protocol of an inbound stream (plaintext or the inside of mTLS), checks the
/// port's policy and serves it: opaque connections are authorized once, HTTP requests each.
///
/// What the port's policy declares decides before detection does:
/// - opaque (configured, or a server protocol of `opaque`/`TLS`): no detection, TCP;
/// - `HTTP/2` or `gRPC`: no detection, HTTP/2;
/// - `HTTP/1`, or a policy with routes of the user's or a rate limit: detection only tells
///   HTTP/2 (prior knowledge, as peer proxies send) from HTTP/1; anything else, including a
///   client that stays silent, is served as HTTP/1 (which answers garbage `400`). Such a port
///   never becomes opaque TCP, whatever the client sends or how long it waits;
/// - anything else (`Detect`): HTTP if the bytes say so (also when the client paused midway),
///   TCP if they do not. A client that sends *nothing* within the detect timeout is waiting for
///   the server to speak first: see [`serve_after_silence`].
async fn serve_inbound(ctx: &Ctx, io: BoxIo, conn: InboundConn, drain: Drain) {
    let cfg = &ctx.config.inbound;
    let current = conn.policy.current();
    let declared = match current.protocol {
        _ if cfg.opaque_ports.contains(&conn.port) => Some(Protocol::Opaque),
        ServerProtocol::Opaque | ServerProtocol::Tls => Some(Protocol::Opaque),
        ServerProtocol::Http2 | ServerProtocol::Grpc => Some(Protocol::Http2),
        _ => None,
    };
    let http_only = current.requires_http();
    drop(current);
    let (proto, io) = match declared {
        Some(proto) => {
            ctx.metrics
                .detected(Direction::Inbound, protocol_label(proto), "configured");
            (proto, PrefixedIo::new(Bytes::new(), io))
        }
        None => {
            let detected = if conn.silent {
                Ok((
                    Protocol::Opaque,
                    detect::Reason::Timeout,
                    PrefixedIo::new(Bytes::new(), io),
                ))
            } else {
                detect::detect(io, cfg.detect_timeout).await
            };
            let (proto, reason, io) = match detected {
                Ok(d) => d,
                Err(e) => return debug!(error = %e, "inbound detection failed"),
            };
            let proto = match proto {
                Protocol::Opaque if http_only => Protocol::Http1,
                p => p,
            };
            ctx.metrics.detected(
                Direction::Inbound,
                protocol_label(proto),
                reason_label(reason),
            );
            if proto == Protocol::Opaque && reason == detect::Reason::Timeout {
                // Boxed: rare, and it would otherwise widen every connection's future.
                return Box::pin(serve_after_silence(ctx, io, conn, drain)).await;
            }
            (proto, io)
        }
    };
    match proto {
        Protocol::Http1 | Protocol::Http2 => serve_inbound_http(ctx, io, proto, conn, drain).await,
        Protocol::Opaque => {
            if !authorize_tcp(&conn) {
                return;
            }
            let ep = Target::direct(conn.target);
            forward(ctx, Box::new(io), &ep, Direction::Inbound, drain).await
        }
    }
}

async fn serve_inbound_http(
    ctx: &Ctx,
    io: PrefixedIo<BoxIo>,
    proto: Protocol,
    conn: InboundConn,
    drain: Drain,
) {
    let http = HttpConn::new(
        Direction::Inbound,
        conn.tls,
        Route::Fixed(conn.target),
        ctx.inbound.clone(),
        drain,
    )
    .with_authz(conn.policy, conn.client.ip());
    http::serve(io, proto, http).await;
}

/// The port's server authorizations for a connection relayed as opaque TCP.
fn authorize_tcp(conn: &InboundConn) -> bool {
    let current = conn.policy.current();
    let allowed = current.authorize_tcp(conn.client.ip(), &conn.tls);
    if !allowed {
        debug!(client = %conn.client, port = conn.port, server = %current.name, "connection not authorized; closing");
    }
    allowed
}

/// A client on a `Detect` port sent nothing within the detect timeout: it is probably waiting
/// for the server to speak first (SMTP, MySQL, many brokers). The connection is authorized as
/// TCP (the server's authorizations), the application is dialled, and whichever side speaks
/// first decides:
/// - the application: the connection is opaque TCP from then on;
/// - the client, after all: its bytes are detected like any client's, so an HTTP client that
///   only waited before sending is served as HTTP, with every HTTP policy (routes, route
///   authorizations, rate limits, the stripping of a forged `l5d-client-id`); the unused
///   connection to the application is closed. Otherwise it is opaque TCP.
async fn serve_after_silence(ctx: &Ctx, io: PrefixedIo<BoxIo>, conn: InboundConn, drain: Drain) {
    if !authorize_tcp(&conn) {
        return;
    }
    let cfg = &ctx.config.inbound;
    let upstream = match transport::connect(conn.target, cfg.connect_timeout).await {
        Ok(s) => s,
        Err(e) => return debug!(error = %e, "opaque forward failed"),
    };
    let mut io = io;
    let mut first = bytes::BytesMut::with_capacity(detect::MAX_PEEK);
    tokio::select! {
        biased;
        read = io.read_buf(&mut first) => match read {
            Ok(0) | Err(_) => {}
            Ok(_) => {
                // Nothing was left to replay (the client had sent nothing).
                let (rest, io) = io.into_parts();
                let mut bytes = bytes::BytesMut::from(rest);
                bytes.extend_from_slice(&first);
                let io: BoxIo = Box::new(PrefixedIo::new(bytes.freeze(), io));
                let (proto, reason, io) = match detect::detect(io, cfg.detect_timeout).await {
                    Ok(d) => d,
                    Err(e) => return debug!(error = %e, "inbound detection failed"),
                };
                ctx.metrics.detected(Direction::Inbound, protocol_label(proto), reason_label(reason));
                match proto {
                    Protocol::Http1 | Protocol::Http2 => {
                        drop(upstream);
                        serve_inbound_http(ctx, io, proto, conn, drain).await;
                    }
                    Protocol::Opaque => {
                        forward_on(ctx, Box::new(io), upstream, conn.target, drain).await;
                    }
                }
            }
        },
        _ = upstream.readable() => forward_on(ctx, Box::new(io), upstream, conn.target, drain).await,
    }
}

/// Relays an inbound connection to the application over an established connection.
async fn forward_on(
    ctx: &Ctx,
    io: BoxIo,
    upstream: tokio::net::TcpStream,
    target: SocketAddr,
    drain: Drain,
) {
    let f = tcp::Forward {
        direction: Direction::Inbound,
        plaintext: INBOUND_TLS,
        connect_timeout: ctx.config.inbound.connect_timeout,
        creds: None,
        metrics: &ctx.metrics,
    };
    tcp::forward_on(io, upstream, &Target::direct(target), f, drain).await;
}

async fn local_conn(
    ctx: Arc<Ctx>,
    listener: Arc<LocalListener>,
    acc: Accepted,
    drain: Drain,
    _slot: ConnSlot,
) {
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
    if let Some(l) = ctx.outbound.own.find(target.endpoint().addr) {
        return debug!(target = %target.endpoint().addr, listener = l.as_str(), "not forwarding to the proxy's own listener");
    }
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
