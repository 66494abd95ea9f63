//! The inbound half: connections from other proxies and clients to this pod's application.
//!
//! ```text
//! accept ─ target = 127.0.0.1:<orig port> (or MESH_PROXY_INBOUND_FORWARD_ADDR)
//!   └─ ClientHello for our identity? ─ mTLS (client certificate required unless the port's
//!      │                                policy admits clients without one)
//!      └─ the port's policy decides before detection:
//!           opaque ─► authorize as TCP ─► relay
//!           HTTP/2, gRPC ─► http (no detection)   HTTP/1, user routes ─► http (never TCP)
//!           detect ─► http (per request: http.rs) │ TCP (authorized once)
//!                     │ silent ─► dial the app, whoever speaks first decides
//! ```
//!
//! - [`http`]: each request authorized, given its client identity, sent to the application.
//! - [`policy`]: who may call which port and route (Linkerd's `InboundServerPolicies`).

pub(crate) mod http;
pub mod policy;

use self::{
    http::Http,
    policy::{Policies, PortPolicy, ServerProtocol},
};
use crate::{
    balance::Target,
    detect::{self, Protocol},
    drain::Drain,
    http::exchange::{Core, Forwarding},
    io::{BoxIo, CountingIo, PrefixedIo},
    listen::ConnSlot,
    metrics::{Direction, Metrics, Tls},
    tcp::{self, SrcConn},
    tls::{CredsRx, client_hello, identity_of},
    transport::{self, Accepted, OwnAddrs},
};
use bytes::Bytes;
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::io::AsyncReadExt;
use tracing::debug;

const INBOUND_TLS: Tls = Tls::None("no_tls_from_remote");

#[derive(Clone, Debug)]
/// How the inbound listener serves.
pub struct Config {
    pub listen_addr: SocketAddr,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Target ports whose traffic skips protocol detection.
    pub opaque_ports: Vec<u16>,
    /// Where connections made directly to the inbound listener (not redirected by iptables) go:
    /// the local application, when running without iptables.
    pub forward_addr: Option<SocketAddr>,
    /// The pod's IPs; a redirected connection to one of these is forwarded to localhost.
    pub ips: Vec<std::net::IpAddr>,
    pub limits: crate::listen::Limits,
}

/// What every inbound connection needs.
#[derive(Debug)]
pub struct Inbound {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Set when the proxy has an identity; holds `None` until the first certificate.
    pub creds: Option<CredsRx>,
    /// Authorization, per port.
    pub policies: Policies,
    pub fw: Arc<Forwarding>,
    /// The proxy's own listeners: never a connection's target.
    pub own: Arc<OwnAddrs>,
}

/// Serves one accepted connection.
pub async fn serve_conn(ctx: Arc<Inbound>, acc: Accepted, drain: Drain, _slot: ConnSlot) {
    let cfg = &ctx.config;
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
        || ctx.own.find(target).is_some()
    {
        debug!(client = %acc.client, %target, "refusing a connection for the proxy's own listener");
        return;
    }
    let port = acc.orig_dst.map_or(target.port(), |o| o.0.port());
    let policy = ctx.policies.port(port);
    // Bytes are counted from the first one; the label set is known once TLS is settled.
    let io = CountingIo::new(acc.stream, Default::default());
    let creds = ctx.creds.as_ref().and_then(|c| c.borrow().clone());
    let open = |label: &Tls| SrcConn::open(&ctx.metrics, Direction::Inbound, target, label.clone());
    let (label, silent, src, io): (Tls, bool, SrcConn, BoxIo) = match creds {
        None => {
            let mut io = io;
            let src = open(&INBOUND_TLS);
            io.rebind(src.counters());
            (INBOUND_TLS, false, src, Box::new(io))
        }
        Some(creds) => {
            let (peek, mut io) = match client_hello::peek(io, cfg.detect_timeout).await {
                Ok(p) => p,
                Err(e) => return debug!(error = %e, "inbound TLS detection failed"),
            };
            match peek {
                client_hello::Peek::ClientHello(Some(sni)) if *sni == *creds.local_id => {
                    // A client certificate is required unless the port's policy can admit a
                    // TLS client without one (and then it is verified whenever it is
                    // presented).
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
                    let src = open(&label);
                    tls.get_mut().0.get_mut().rebind(src.counters());
                    (label, false, src, Box::new(tls))
                }
                // TLS for someone else (the application's own, end to end) or plaintext.
                peek => {
                    let label = match peek {
                        client_hello::Peek::ClientHello(_) => Tls::None("passthru"),
                        _ => INBOUND_TLS,
                    };
                    // Nothing arrived within the detect timeout: detection would only wait
                    // again.
                    let silent = io.prefix().is_empty();
                    let src = open(&label);
                    io.get_mut().rebind(src.counters());
                    (label, silent, src, Box::new(io))
                }
            }
        }
    };
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
async fn serve_inbound(ctx: &Inbound, io: BoxIo, conn: InboundConn, drain: Drain) {
    let cfg = &ctx.config;
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
                .detected(Direction::Inbound, proto.label(), "configured");
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
            ctx.metrics
                .detected(Direction::Inbound, proto.label(), reason.label());
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
            forward(ctx, Box::new(io), &ep, drain).await
        }
    }
}

async fn serve_inbound_http(
    ctx: &Inbound,
    io: PrefixedIo<BoxIo>,
    proto: Protocol,
    conn: InboundConn,
    drain: Drain,
) {
    let core = Core::new(
        Direction::Inbound,
        conn.tls,
        ctx.fw.clone(),
        drain,
        conn.client,
    );
    let http = Http::new(core, conn.target, conn.policy, conn.client.ip());
    crate::http::server::serve(io, proto, Arc::new(http)).await;
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
async fn serve_after_silence(
    ctx: &Inbound,
    io: PrefixedIo<BoxIo>,
    conn: InboundConn,
    drain: Drain,
) {
    if !authorize_tcp(&conn) {
        return;
    }
    let cfg = &ctx.config;
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
                ctx.metrics.detected(Direction::Inbound, proto.label(), reason.label());
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
    ctx: &Inbound,
    io: BoxIo,
    upstream: tokio::net::TcpStream,
    target: SocketAddr,
    drain: Drain,
) {
    tcp::forward_on(io, upstream, &Target::direct(target), relay(ctx), drain).await;
}

/// Relays an opaque inbound connection to the application.
async fn forward(ctx: &Inbound, io: BoxIo, target: &Target, drain: Drain) {
    if let Some(l) = ctx.own.find(target.endpoint().addr) {
        return debug!(target = %target.endpoint().addr, listener = l.as_str(), "not forwarding to the proxy's own listener");
    }
    tcp::forward(io, target, relay(ctx), drain).await;
}

/// How an inbound connection is relayed: to the application, in plaintext.
fn relay(ctx: &Inbound) -> tcp::Forward<'_> {
    tcp::Forward {
        direction: Direction::Inbound,
        plaintext: INBOUND_TLS,
        connect_timeout: ctx.config.connect_timeout,
        creds: None,
        metrics: &ctx.metrics,
    }
}

fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
