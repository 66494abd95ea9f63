//! The composition root: binds every listener, builds the two halves (`inbound`, `outbound`)
//! and what they share, runs the accept loops, and drains on shutdown.

use crate::{
    admin,
    balance::Balancers,
    config::Config,
    destination::DestinationResolve,
    drain,
    http::{Client, client::HTTP1_IDLE_TIMEOUT, exchange::Forwarding},
    identity,
    inbound::{self, Inbound},
    listen::{self, ConnLimit, accept_loop},
    log::LogLevel,
    metrics::{Direction, Metrics, Tls},
    outbound::{self, Outbound, policy::OutboundPolicies},
    resolve::{Chain, Resolve, StaticResolve},
    tls::TrustRoots,
    transport::{self, Listener, OwnAddrs},
};
use std::{io, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

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
    let tracer = match config.trace.clone() {
        Some(t) => Some(
            crate::trace::Tracer::start(t, creds.clone(), &metrics)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        ),
        None => None,
    };
    let access_log = match config.access_log {
        Some(format) => Some(crate::access_log::AccessLog::start(
            format,
            &metrics,
            std::io::stderr(),
        )?),
        None => None,
    };
    let forwarding =
        |direction, connect_timeout, tls, creds, limits: &listen::Limits, access_log| {
            let client = Client::new(
                connect_timeout,
                config.outbound.max_idle_per_endpoint,
                metrics.clone(),
                direction,
                tls,
                creds,
            );
            tokio::spawn(client.evict_idle(HTTP1_IDLE_TIMEOUT));
            Arc::new(Forwarding {
                client,
                metrics: metrics.clone(),
                in_flight: listen::in_flight(&metrics, direction, limits),
                header_read_timeout: limits.header_read_timeout,
                header_timeouts: listen::header_timeouts(&metrics, direction),
                tracer: tracer.clone(),
                access_log,
            })
        };
    let out_fw = forwarding(
        Direction::Outbound,
        config.outbound.connect_timeout,
        Tls::None("not_provided_by_service_discovery"),
        creds.clone(),
        &config.outbound.limits,
        None,
    );
    let in_fw = forwarding(
        Direction::Inbound,
        config.inbound.connect_timeout,
        Tls::None("no_tls_from_remote"),
        None,
        &config.inbound.limits,
        access_log,
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
    let admin_state = admin::State {
        metrics: metrics.clone(),
        log,
        drain: drain.signal(),
        shutdown: running.shutdown.clone(),
        shutdown_enabled: config.admin.shutdown_endpoint_enabled,
        creds: creds.clone(),
        policy_pending: policies.pending(),
    };
    tokio::spawn(admin::serve(admin, admin_state));

    let out_limit = ConnLimit::new(&metrics, "outbound", config.outbound.limits.max_connections);
    let in_limit = ConnLimit::new(&metrics, "inbound", config.inbound.limits.max_connections);
    let out = Arc::new(Outbound {
        shared: Arc::new(outbound::http::Shared {
            balancers,
            response_timeout: config.outbound.response_timeout,
            upgrade_http1: config.outbound.upgrade_http1,
            creds: creds.clone(),
            policies: outbound_policies,
            discovery: config.destination.clone(),
            own: own.clone(),
            proxy_allow: Arc::new(config.outbound.proxy_allow.clone()),
        }),
        config: config.outbound,
        metrics: metrics.clone(),
        fw: out_fw,
    });
    let inb = Arc::new(Inbound {
        config: config.inbound,
        metrics,
        creds,
        policies,
        fw: in_fw,
        own,
    });
    let (c, d) = (out.clone(), drain.clone());
    tokio::spawn(accept_loop(
        outbound,
        out_limit.clone(),
        drain.clone(),
        move |acc, slot| outbound::serve_conn(c.clone(), acc, d.clone(), slot),
    ));
    let (c, d) = (inb, drain.clone());
    tokio::spawn(accept_loop(
        inbound,
        in_limit.clone(),
        drain.clone(),
        move |acc, slot| inbound::serve_conn(c.clone(), acc, d.clone(), slot),
    ));
    // glibc keeps freed memory resident: give it back after connections close.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let (a, b) = (out_limit.clone(), in_limit);
        tokio::spawn(crate::trim::run(move || a.open() + b.open()));
    }
    // Local listeners are outbound traffic: they share the outbound listener's bound.
    for (l, listener) in locals {
        let (c, d, l) = (out.clone(), drain.clone(), Arc::new(l));
        tokio::spawn(accept_loop(
            listener,
            out_limit.clone(),
            drain.clone(),
            move |acc, slot| outbound::serve_local(c.clone(), l.clone(), acc, d.clone(), slot),
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
