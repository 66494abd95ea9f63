//! The outbound half: the application's connections to other services.
//!
//! ```text
//! accept ─ orig dst? ─┬─ opaque port ──────────────────────────► TCP to the orig dst
//!                     └─ detect ─┬─ HTTP/1, HTTP/2 ─► http (per request: plan, then send)
//!                                └─ opaque ─────────► TCP to the orig dst
//! local listener ─ logical name ─► balance ─► TCP (mTLS to a meshed endpoint)
//! ```
//!
//! - [`http`]: each request counted as a hop, given its endpoint and sent, with retries.
//! - [`plan`]: deciding where a request goes (its route, a backend, an endpoint).
//! - [`retry`]: the retry loop, apart from sending.
//! - [`policy`]: how requests to a destination are routed, split, retried and timed out
//!   (Linkerd's `OutboundPolicies`).

pub(crate) mod http;
pub(crate) mod plan;
pub mod policy;
pub(crate) mod retry;

use self::http::{Dst, Http, Shared};
use crate::{
    balance::{Target, target_for},
    detect::{self, Protocol},
    drain::Drain,
    http::exchange::{Core, Forwarding},
    io::{BoxIo, CountingIo},
    listen::ConnSlot,
    metrics::{Direction, Metrics, Tls},
    tcp::{self, SrcConn},
    transport::Accepted,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tracing::{debug, warn};

const OUTBOUND_TLS: Tls = Tls::None("not_provided_by_service_discovery");

#[derive(Clone, Debug)]
/// How the outbound listener (and the local listeners) serve.
pub struct Config {
    pub listen_addr: SocketAddr,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Bound on the time from sending a request to receiving response headers; none by default.
    pub response_timeout: Option<Duration>,
    /// HTTP/1 requests to a meshed endpoint travel as HTTP/2 (`l5d-orig-proto`) over one
    /// multiplexed mTLS connection, as Linkerd's proxies do; `false` keeps them HTTP/1.1 over
    /// pooled mTLS connections (less work per request, one connection per concurrent request).
    pub upgrade_http1: bool,
    pub opaque_ports: Vec<u16>,
    /// Extra listeners that forward every connection to a logical service as opaque TCP.
    pub local_listeners: Vec<LocalListener>,
    /// Logical names resolved without a discovery service (local mode), each endpoint with the
    /// TLS identity of its proxy when it is meshed.
    pub static_endpoints: Vec<crate::resolve::StaticName>,
    pub max_idle_per_endpoint: usize,
    /// Peak-EWMA parameters and the fail-fast timeout of every balancer.
    pub balance: crate::balance::BalanceConfig,
    /// A destination nobody used for this long loses its balancer and discovery watch.
    pub discovery_idle_timeout: Duration,
    pub limits: crate::listen::Limits,
    /// What HTTP-proxy mode may dial besides mesh destinations.
    pub proxy_allow: crate::transport::ProxyAllow,
}

/// `name=listen_addr>target`: a local port forwarded to a logical service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalListener {
    pub name: String,
    pub listen_addr: SocketAddr,
    /// A logical `host:port`, resolved through the proxy's resolver.
    pub target: String,
}

/// What every outbound connection needs.
#[derive(Debug)]
pub struct Outbound {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub fw: Arc<Forwarding>,
    pub shared: Arc<Shared>,
}

/// Serves one connection accepted on the outbound listener.
pub async fn serve_conn(ctx: Arc<Outbound>, acc: Accepted, drain: Drain, _slot: ConnSlot) {
    let orig = acc.orig_dst.map(|o| o.0);
    let src = SrcConn::open(
        &ctx.metrics,
        Direction::Outbound,
        orig.unwrap_or(acc.local),
        OUTBOUND_TLS,
    );
    let io: BoxIo = Box::new(CountingIo::new(acc.stream, src.counters()));
    let cfg = &ctx.config;

    if let Some(orig) = orig.filter(|o| cfg.opaque_ports.contains(&o.port())) {
        ctx.metrics
            .detected(Direction::Outbound, "opaque", "configured");
        let target = Target::direct(orig);
        return forward(&ctx, io, &target, drain).await;
    }
    let (proto, reason, io) = match detect::detect(io, cfg.detect_timeout).await {
        Ok(d) => d,
        Err(e) => {
            debug!(error = %e, "outbound detection failed");
            return;
        }
    };
    ctx.metrics
        .detected(Direction::Outbound, proto.label(), reason.label());
    match (proto, orig) {
        (Protocol::Http1 | Protocol::Http2, _) => {
            let dst = orig.map_or(Dst::Proxy, Dst::OrigDst);
            let core = Core::new(
                Direction::Outbound,
                OUTBOUND_TLS,
                ctx.fw.clone(),
                drain,
                acc.client,
            );
            let http = Http::new(core, dst, ctx.shared.clone());
            crate::http::server::serve(io, proto, Arc::new(http)).await;
        }
        (Protocol::Opaque, Some(orig)) => {
            let target = Target::direct(orig);
            forward(&ctx, Box::new(io), &target, drain).await
        }
        (Protocol::Opaque, None) => {
            debug!(client = %acc.client, "opaque connection with no original destination; closing");
        }
    }
    drop(src);
}

/// Serves one connection accepted on a local listener: opaque TCP to an endpoint of its
/// service.
pub async fn serve_local(
    ctx: Arc<Outbound>,
    listener: Arc<LocalListener>,
    acc: Accepted,
    drain: Drain,
    _slot: ConnSlot,
) {
    // Balanced per connection: the pick is held (in flight on its endpoint) while it lasts.
    let balancer = ctx.shared.balancers.get(&listener.target);
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
    forward(&ctx, io, &target, drain).await;
}

/// Relays an opaque outbound connection to its target (over mTLS when it is meshed).
async fn forward(ctx: &Outbound, io: BoxIo, target: &Target, drain: Drain) {
    if let Some(l) = ctx.shared.own.find(target.endpoint().addr) {
        return debug!(target = %target.endpoint().addr, listener = l.as_str(), "not forwarding to the proxy's own listener");
    }
    let f = tcp::Forward {
        direction: Direction::Outbound,
        plaintext: OUTBOUND_TLS,
        connect_timeout: ctx.config.connect_timeout,
        creds: ctx.shared.creds.as_ref(),
        metrics: &ctx.metrics,
    };
    tcp::forward(io, target, f, drain).await;
}
