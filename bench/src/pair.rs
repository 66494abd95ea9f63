//! Two-proxy reference paths: what any two sidecars cost on this machine, without mTLS or
//! HTTP/2, so that the mesh's figures can be read against a floor measured in the same run.
//!
//! ```text
//! pair_tcp:  load generator -> front proxy (inbound, opaque) -> back proxy (inbound, opaque) -> upstream
//! pair_http: load generator -> front proxy (inbound, HTTP/1) -> back proxy (inbound, HTTP/1) -> upstream
//! ```
//!
//! Both proxies of a pair are the proxy under test, plaintext, each forwarding what reaches its
//! inbound listener (`MESH_PROXY_INBOUND_FORWARD_ADDR`): the front one to the back one, the back
//! one to the upstream server. `pair_tcp` turns protocol detection off for the port each
//! forwards to (`LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION`), so each proxy only
//! copies bytes: the least two extra processes on the request path can cost. `pair_http` is two
//! HTTP-aware proxies with HTTP/1.1 on every hop: the mesh without mTLS and without HTTP/2
//! between the proxies.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use linkerd_proxy::config;
use serde_json::{Value, json};

use crate::{
    client,
    path::{Ctx, RunTotals},
    procfs,
    proxy::{self, ProxyAddrs, ProxyProc},
    report::{self, Peaks, emit},
};

/// Which two-proxy reference path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// Both proxies copy bytes (protocol detection off).
    Tcp,
    /// Both proxies serve HTTP/1.1, plaintext.
    Http,
}

impl Pair {
    pub const ALL: [Pair; 2] = [Pair::Tcp, Pair::Http];

    /// The path's part of a scenario name: `http1_saturation_pair_tcp`.
    pub fn path(self) -> &'static str {
        match self {
            Pair::Tcp => "pair_tcp",
            Pair::Http => "pair_http",
        }
    }

    /// The proxies' roles (`ProxyProc::role`): front (the load generator's), back.
    pub fn roles(self) -> [&'static str; 2] {
        match self {
            Pair::Tcp => ["pair-tcp-front", "pair-tcp-back"],
            Pair::Http => ["pair-http-front", "pair-http-back"],
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Pair::Tcp => {
                "inbound (opaque, forward) -> inbound (opaque, forward) -> upstream server; plaintext"
            }
            Pair::Http => {
                "inbound (HTTP/1.1, forward) -> inbound (HTTP/1.1, forward) -> upstream server; plaintext"
            }
        }
    }
}

/// The two running proxies of a pair.
#[derive(Debug)]
pub struct Running {
    pub kind: Pair,
    pub front: ProxyProc,
    pub back: ProxyProc,
}

/// Starts the back proxy, then the front one, and waits until both are ready. `ports`: six
/// free loopback ports (inbound, outbound, admin of each).
pub async fn start(kind: Pair, o: &Ctx<'_>, ports: &[u16]) -> anyhow::Result<Running> {
    let [a, b, c, d, e, f] = ports else {
        anyhow::bail!("a proxy pair needs 6 ports, got {}", ports.len());
    };
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let [front_role, back_role] = kind.roles();
    let back_addrs = ProxyAddrs {
        inbound: loopback(*a),
        outbound: loopback(*b),
        admin: loopback(*c),
    };
    let front_addrs = ProxyAddrs {
        inbound: loopback(*d),
        outbound: loopback(*e),
        admin: loopback(*f),
    };
    let back = spawn(kind, back_role, back_addrs, o.upstream, o).await?;
    let front = spawn(kind, front_role, front_addrs, back_addrs.inbound, o).await?;
    Ok(Running { kind, front, back })
}

async fn spawn(
    kind: Pair,
    role: &'static str,
    addrs: ProxyAddrs,
    forward: SocketAddr,
    o: &Ctx<'_>,
) -> anyhow::Result<ProxyProc> {
    let mut env = vec![(config::ENV_INBOUND_FORWARD_ADDR, forward.to_string())];
    if kind == Pair::Tcp {
        // The port an inbound connection is classified by is the one it is forwarded to.
        env.push((config::ENV_INBOUND_OPAQUE_PORTS, forward.port().to_string()));
    }
    let log = o.log_dir.join(format!("{role}-proxy.log"));
    let mut p = o.launch.spawn(role, role, addrs, &env, log, None)?;
    proxy::wait_ready(&mut p).await?;
    Ok(p)
}

/// Starts a pair ([`start`]) and sends one request through it.
pub async fn start_path(
    kind: Pair,
    ctx: &Ctx<'_>,
    ports: &[u16],
    peaks: &mut Peaks,
) -> anyhow::Result<Running> {
    let p = start(kind, ctx, ports).await?;
    match client::request_once(p.front.inbound, Method::GET, "/").await? {
        (StatusCode::OK, _) => {}
        (s, _) => anyhow::bail!("a request through {} failed: {s}", kind.path()),
    }
    for q in [&p.front, &p.back] {
        peaks.start(q.role, q.child.pid)?;
    }
    Ok(p)
}

/// The pair's end state (`pair_tcp_end`, `pair_http_end`), after a graceful shutdown.
pub async fn end_path(mut p: Running, totals: &RunTotals) -> anyhow::Result<()> {
    let mut proxies = serde_json::Map::new();
    for q in [&mut p.front, &mut p.back] {
        let pid = q.child.pid;
        let end_hwm = procfs::status_number(pid, "VmHWM")?;
        let peak = totals.peaks.of(q.role, end_hwm);
        let failures = client::scrape_counters(q.admin).await.map(|c| c.failures);
        let exit = client::shutdown(q).await;
        proxies.insert(
            q.role.to_string(),
            json!({"peak_rss_kb": peak, "failed_responses": failures, "exit": exit}),
        );
    }
    emit(&[
        ("scenario", json!(format!("{}_end", p.kind.path()))),
        ("proxies", Value::Object(proxies)),
        ("loadavg_1m", json!(report::loadavg())),
    ])
}
