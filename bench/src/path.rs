//! The paths under test, and the processes behind them. Each path knows how to start its
//! processes, where the load goes, and which proxies to read before and after a scenario:
//!
//! | path | processes | the load goes to |
//! |---|---|---|
//! | direct | the upstream server (`bench server`) | the server |
//! | proxy (one hop) | one proxy ([`proxy::start_one_hop`]) | its inbound listener |
//! | `pair_tcp`, `pair_http` | two proxies in a row ([`pair`]) | the front one's inbound listener |
//! | mesh | the identity service and two certified proxies ([`mesh`]) | the client proxy's outbound listener, as an HTTP proxy |
//! | policy mesh | the destination and policy services, a client proxy and four server proxies ([`policy`]) | that client proxy's outbound listener, as an HTTP proxy |
//!
//! Every path but direct forwards to the same upstream server.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, process::Stdio};

use anyhow::Context as _;
use http::Method;
use tokio::process::Command;

use crate::{
    client,
    counters::Counters,
    mesh::{self, Mesh},
    pair::{self, Pair},
    policy::{self, Case, PolicyMesh},
    procfs::{self, Guarded},
    proxy::{self, Launch, ProxyAddrs, ProxyProc},
    report::{self, Peaks},
};
use serde_json::{Value, json};

/// The path under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Load generator -> upstream server.
    Direct,
    /// Load generator -> one proxy (inbound listener, plaintext) -> upstream server.
    Proxy,
    /// Load generator -> client proxy (outbound) -> mTLS -> server proxy (inbound) -> upstream.
    Mesh,
    /// The mesh path with the destination and policy services, and one policy case enabled
    /// (HTTP/1.1 saturation only).
    MeshPolicy(Case),
    /// Load generator -> two plaintext proxies in a row -> upstream: the floor the mesh is
    /// read against (HTTP/1.1 scenarios only; see `pair.rs`).
    Pair(Pair),
}

impl Via {
    /// The path's part of a scenario name (`http1_saturation_<part>`); a policy case's name is
    /// its own.
    pub fn part(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Proxy => "proxy",
            Via::Mesh => "mesh",
            Via::MeshPolicy(case) => case.name(),
            Via::Pair(p) => p.path(),
        }
    }
}

/// Where one scenario's load goes, and what to read around it.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    /// Send the load through this HTTP proxy (a client proxy's outbound listener).
    pub proxy: Option<SocketAddr>,
    /// The proxies the load crosses.
    pub probes: Vec<Probe>,
}

/// A proxy under test in one scenario: what to read before and after.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub role: &'static str,
    pub pid: u32,
    pub admin: SocketAddr,
}

impl Probe {
    fn of(p: &ProxyProc) -> Self {
        Self {
            role: p.role,
            pid: p.child.pid,
            admin: p.admin,
        }
    }
}

/// What one proxy did during a scenario.
#[derive(Debug)]
pub struct ProxyUse {
    pub role: &'static str,
    pub rss_kb: u64,
    pub cpu_s: f64,
    /// `None` if /metrics could not be read.
    pub counters: Option<Counters>,
}

/// What starting a path needs.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// The proxies' binary, cores and the pid file (which every child goes into).
    pub launch: Launch<'a>,
    /// `mesh`, for the identity, destination and policy services.
    pub mesh_bin: &'a Path,
    /// The upstream server, where every path ends.
    pub upstream: SocketAddr,
    /// Trust material, tokens, the registry.
    pub scratch: &'a Path,
    /// Logs (`identity.log`, `mesh-client-proxy.log`, ...).
    pub log_dir: &'a Path,
    /// The one-hop proxy's log.
    pub proxy_log: &'a Path,
    pub proxy_cores: usize,
}

/// What the end rows need from the whole run.
#[derive(Debug, Default)]
pub struct RunTotals {
    pub peaks: Peaks,
    /// CPU seconds of every process when the scenarios began.
    pub cpu_start: BTreeMap<u32, f64>,
    /// Load-generator errors over every row.
    pub load_errors: u64,
    /// Policy cases whose policy was not applied.
    pub policy_failures: Vec<String>,
}

impl RunTotals {
    /// `pid`'s CPU seconds since the scenarios began.
    pub fn cpu_since_start(&self, pid: u32) -> anyhow::Result<f64> {
        Ok(procfs::cpu_seconds(pid)? - self.cpu_start.get(&pid).copied().unwrap_or(0.0))
    }
}

/// Each proxy's state once it is ready (the `*_idle` rows): RSS, high-water mark (then reset,
/// so the end row can tell the scenarios' peak), threads, identity and listener, by role.
pub fn idle_proxies<'a>(
    procs: impl IntoIterator<Item = &'a ProxyProc>,
    peaks: &mut Peaks,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut proxies = serde_json::Map::new();
    for p in procs {
        let pid = p.child.pid;
        let rss = procfs::status_number(pid, "VmRSS")?;
        let hwm = peaks.start(p.role, pid)?;
        proxies.insert(
            p.role.to_string(),
            json!({
                "rss_kb": rss,
                "hwm_kb": hwm,
                "threads": procfs::status_number(pid, "Threads").ok(),
                "identity": p.identity,
                "listener": report::listener(p.role),
            }),
        );
    }
    Ok(proxies)
}

/// What the `*_end` rows report of a path's proxies.
#[derive(Debug, Default)]
pub struct Drained {
    /// By role: end RSS and high-water mark, peak, CPU, failed responses, log lines, exit.
    pub proxies: serde_json::Map<String, Value>,
    pub rss_max: u64,
    pub peak_max: u64,
    pub failures_total: u64,
    pub log_total: usize,
    /// Whether every proxy drained and exited 0.
    pub clean: bool,
}

/// Reads each proxy's end state, then drains them one by one through `POST /shutdown`.
pub async fn drain_proxies(
    mut procs: Vec<&mut ProxyProc>,
    totals: &RunTotals,
) -> anyhow::Result<Drained> {
    let mut d = Drained::default();
    for p in &procs {
        let pid = p.child.pid;
        let end_rss = procfs::status_number(pid, "VmRSS")?;
        let end_hwm = procfs::status_number(pid, "VmHWM")?;
        let peak = totals.peaks.of(p.role, end_hwm);
        let cpu_total = totals.cpu_since_start(pid)?;
        let failures = client::scrape_counters(p.admin).await.map(|c| c.failures);
        d.failures_total += failures.iter().flat_map(|f| f.values()).sum::<u64>();
        d.rss_max = d.rss_max.max(end_rss);
        d.peak_max = d.peak_max.max(peak);
        let lines = report::log_lines(&p.log);
        d.log_total += lines;
        d.proxies.insert(
            p.role.to_string(),
            json!({
                "rss_end_kb": end_rss,
                "hwm_end_kb": end_hwm,
                "peak_rss_kb": peak,
                "cpu_total_s": report::round(cpu_total, 2),
                "failed_responses": failures,
                "log_lines": lines,
                "log": p.log.display().to_string(),
            }),
        );
    }
    d.clean = true;
    for p in procs.iter_mut() {
        let exit = client::shutdown(p).await;
        d.clean &= exit == "exit status: 0";
        if let Some(Value::Object(o)) = d.proxies.get_mut(p.role) {
            o.insert("exit".into(), json!(exit));
        }
    }
    Ok(d)
}

/// The running processes of every path a run uses.
#[derive(Debug)]
pub struct Paths {
    server: Guarded,
    server_addr: SocketAddr,
    proxy: Option<ProxyProc>,
    mesh: Option<Mesh>,
    policy: Option<PolicyMesh>,
    pairs: Vec<pair::Running>,
}

/// How the upstream server is started.
#[derive(Clone, Copy, Debug)]
pub struct ServerOpts<'a> {
    /// This binary (`bench server`).
    pub exe: &'a Path,
    pub threads: usize,
    pub body_size: usize,
}

impl Paths {
    /// Free loopback ports [`Paths::start`] needs besides the upstream server's.
    pub const PORTS: usize = 42;

    /// Starts the upstream server (at `ctx.upstream`), then whichever of the one-hop proxy, the
    /// mesh, the pairs and the policy mesh `vias` uses, in that order: each waited for, tried
    /// with one request and its idle row printed. `ports`: [`Paths::PORTS`] free ports.
    pub async fn start(
        ctx: &Ctx<'_>,
        server: ServerOpts<'_>,
        ports: &[u16],
        vias: &[Via],
        peaks: &mut Peaks,
    ) -> anyhow::Result<Self> {
        let uses = |via: Via| vias.contains(&via);
        if ports.len() != Self::PORTS {
            anyhow::bail!("Paths::start needs {} ports", Self::PORTS);
        }
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let pid_file = ctx.launch.pid_file;
        let server_addr = ctx.upstream;
        let mut server = Guarded::spawn(
            "upstream server",
            Command::new(server.exe)
                .arg("server")
                .arg("--addr")
                .arg(server_addr.to_string())
                .arg("--threads")
                .arg(server.threads.to_string())
                .arg("--body-size")
                .arg(server.body_size.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
            pid_file,
        )?;
        client::wait_until("the upstream server to accept", &mut server, || async {
            client::request_once(server_addr, Method::GET, "/")
                .await
                .map(|_| ())
        })
        .await?;
        let mut paths = Paths {
            server,
            server_addr,
            proxy: None,
            mesh: None,
            policy: None,
            pairs: Vec::new(),
        };
        if uses(Via::Proxy) {
            let addrs = ProxyAddrs {
                inbound: loopback(ports[0]),
                outbound: loopback(ports[1]),
                admin: loopback(ports[2]),
            };
            paths.proxy = Some(proxy::start_one_hop(ctx, addrs, peaks).await?);
        }
        if uses(Via::Mesh) {
            paths.mesh = Some(mesh::start_path(ctx, &ports[3..11], peaks).await?);
        }
        for (kind, ports) in Pair::ALL.into_iter().zip([&ports[30..36], &ports[36..42]]) {
            if uses(Via::Pair(kind)) {
                paths
                    .pairs
                    .push(pair::start_path(kind, ctx, ports, peaks).await?);
            }
        }
        let cases: Vec<Case> = vias
            .iter()
            .filter_map(|v| match v {
                Via::MeshPolicy(c) => Some(*c),
                _ => None,
            })
            .collect();
        if !cases.is_empty() {
            let m = paths
                .mesh
                .as_ref()
                .context("the policy cases need the mesh")?;
            let pm = policy::start_path(ctx, m, &ports[11..30], &cases, peaks).await?;
            paths.policy = Some(pm);
        }
        Ok(paths)
    }

    /// Where the load for `via` goes, and the proxies it crosses.
    pub fn target(&self, via: Via) -> anyhow::Result<Target> {
        let to = |addr: SocketAddr| format!("http://{addr}/");
        Ok(match via {
            Via::Direct => Target {
                url: to(self.server_addr),
                proxy: None,
                probes: vec![],
            },
            Via::Proxy => {
                let p = self.proxy.as_ref().context("no proxy")?;
                Target {
                    url: to(p.inbound),
                    proxy: None,
                    probes: vec![Probe::of(p)],
                }
            }
            Via::Mesh => {
                let m = self.mesh.as_ref().context("no mesh")?;
                Target {
                    url: format!("http://{}/", mesh::SERVICE),
                    proxy: Some(m.client.outbound),
                    probes: vec![Probe::of(&m.client), Probe::of(&m.server)],
                }
            }
            Via::Pair(kind) => {
                let p = self
                    .pairs
                    .iter()
                    .find(|p| p.kind == kind)
                    .with_context(|| format!("no {} proxies", kind.path()))?;
                Target {
                    url: to(p.front.inbound),
                    proxy: None,
                    probes: vec![Probe::of(&p.front), Probe::of(&p.back)],
                }
            }
            Via::MeshPolicy(case) => {
                let pm = self.policy.as_ref().context("no policy mesh")?;
                let mut probes = vec![Probe::of(&pm.client)];
                for s in case.servers() {
                    probes.push(Probe::of(pm.server(*s)?));
                }
                Target {
                    url: format!("http://{}/", case.authority()),
                    proxy: Some(pm.client.outbound),
                    probes,
                }
            }
        })
    }

    /// The upstream server's pid.
    pub fn server_pid(&self) -> u32 {
        self.server.pid
    }

    /// Every process but the load generator: their CPU is accounted, not "other".
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.server.pid];
        if let Some(p) = &self.proxy {
            pids.push(p.child.pid);
        }
        if let Some(m) = &self.mesh {
            pids.extend([m.identity.pid, m.client.child.pid, m.server.child.pid]);
        }
        if let Some(pm) = &self.policy {
            pids.extend(pm.pids());
        }
        for p in &self.pairs {
            pids.extend([p.front.child.pid, p.back.child.pid]);
        }
        pids
    }

    /// Fails, with the end of its log, if any process has exited.
    pub fn check_running(&mut self, during: &str) -> anyhow::Result<()> {
        self.server.check_running()?;
        let mut proxies: Vec<&mut ProxyProc> = Vec::new();
        if let Some(p) = &mut self.proxy {
            proxies.push(p);
        }
        if let Some(m) = &mut self.mesh {
            m.identity.check_running().map_err(|e| {
                anyhow::anyhow!(
                    "{e} during {during}\nidentity log:\n{}",
                    proxy::log_tail(&m.identity_log)
                )
            })?;
            proxies.push(&mut m.client);
            proxies.push(&mut m.server);
        }
        if let Some(pm) = &mut self.policy {
            for (child, log) in [
                (&mut pm.destination, &pm.destination_log),
                (&mut pm.policy, &pm.policy_log),
            ] {
                child.check_running().map_err(|e| {
                    anyhow::anyhow!("{e} during {during}\nlog:\n{}", proxy::log_tail(log))
                })?;
            }
            proxies.push(&mut pm.client);
            proxies.extend(pm.servers.values_mut());
        }
        for p in &mut self.pairs {
            proxies.push(&mut p.front);
            proxies.push(&mut p.back);
        }
        for p in proxies {
            p.child.check_running().map_err(|e| {
                anyhow::anyhow!(
                    "{e} during {during}\n{} log:\n{}",
                    p.role,
                    proxy::log_tail(&p.log)
                )
            })?;
        }
        Ok(())
    }

    /// Each path's end row, after a graceful shutdown of its proxies: the one-hop proxy, the
    /// policy mesh, the mesh, the pairs. The upstream server is killed when `self` is dropped.
    pub async fn finish(&mut self, totals: &RunTotals) -> anyhow::Result<()> {
        if let Some(p) = self.proxy.take() {
            proxy::end_one_hop(p, totals).await?;
        }
        if let Some(pm) = self.policy.take() {
            policy::end_path(pm, totals).await?;
        }
        if let Some(m) = self.mesh.take() {
            mesh::end_path(m, totals).await?;
        }
        for p in std::mem::take(&mut self.pairs) {
            pair::end_path(p, totals).await?;
        }
        Ok(())
    }
}
