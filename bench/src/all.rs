//! `bench all`: starts the upstream server, the proxy and the mesh (an identity service and two
//! certified proxies), runs every scenario direct, through the proxy and through the mesh, runs
//! the Certify benchmark, and prints one JSON object per line per scenario.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    certify,
    load::{self, LoadOpts},
    mesh::{self, Counters, Mesh, MeshOpts, ProxyAddrs, ProxyProc},
    pair::{self, Pair, PairOpts},
    policy::{self, Case, PolicyMesh, PolicyOpts},
    procfs::{self, Guarded, Scratch},
    tools,
};

#[derive(Clone, Debug)]
pub struct AllOpts {
    pub duration: Duration,
    pub proxy_bin: Option<PathBuf>,
    pub mesh_bin: Option<PathBuf>,
    pub proxy_cores: usize,
    pub server_threads: usize,
    pub body_size: usize,
    /// Closed loop: connections for wrk and h2load.
    pub connections: usize,
    /// Closed loop: concurrent streams per HTTP/2 connection (h2load `-m`).
    pub h2_streams: usize,
    /// Open loop: connections of the rate-limited generator.
    pub load_connections: usize,
    pub rates: Vec<u64>,
    /// Certify requests in flight (`mesh identity bench --concurrency`).
    pub certify_concurrency: usize,
    /// Run only scenarios whose name starts with one of these.
    pub only: Vec<String>,
    /// Rounds of each scenario's paths (direct, proxy, mesh, policy cases, then again); with
    /// more than one, every row carries its `round` and a `median` row follows each path.
    pub repeats: usize,
    pub proxy_log: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Saturation,
    Rate(u64),
}

/// The path under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
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

#[derive(Clone, Copy, Debug)]
struct Scenario {
    proto: Proto,
    kind: Kind,
}

impl Scenario {
    fn name(&self, path: Via) -> String {
        let proto = match self.proto {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
        };
        let kind = match self.kind {
            Kind::Saturation => "saturation".to_string(),
            Kind::Rate(r) => format!("rate{r}"),
        };
        let path = match path {
            Via::Direct => "direct",
            Via::Proxy => "proxy",
            Via::Mesh => "mesh",
            Via::MeshPolicy(case) => return case.name().to_string(),
            Via::Pair(p) => p.path(),
        };
        format!("{proto}_{kind}_{path}")
    }
}

/// Every HTTP scenario to run, each with its paths in order. A proxied or meshed path brings
/// its direct baseline along (its ratios are computed against it), selected or not.
fn plan(opts: &AllOpts) -> Vec<(Scenario, Vec<Via>)> {
    let mut scenarios = vec![
        Scenario {
            proto: Proto::Http1,
            kind: Kind::Saturation,
        },
        Scenario {
            proto: Proto::Http2,
            kind: Kind::Saturation,
        },
    ];
    for proto in [Proto::Http1, Proto::Http2] {
        for &rate in &opts.rates {
            scenarios.push(Scenario {
                proto,
                kind: Kind::Rate(rate),
            });
        }
    }
    scenarios
        .into_iter()
        .filter_map(|sc| {
            let mut others: Vec<Via> = [Via::Proxy, Via::Mesh]
                .into_iter()
                .chain(
                    Pair::ALL
                        .into_iter()
                        .map(Via::Pair)
                        .filter(|_| sc.proto == Proto::Http1),
                )
                .filter(|v| selected(opts, &sc.name(*v)))
                .collect();
            // The policy cases: HTTP/1.1 saturation, against the plain mesh of the same run.
            if sc.proto == Proto::Http1 && sc.kind == Kind::Saturation {
                let cases: Vec<Via> = Case::ALL
                    .into_iter()
                    .map(Via::MeshPolicy)
                    .filter(|v| selected(opts, &sc.name(*v)))
                    .collect();
                if !cases.is_empty() && !others.contains(&Via::Mesh) {
                    others.push(Via::Mesh);
                }
                others.extend(cases);
            }
            let mut paths = Vec::new();
            if selected(opts, &sc.name(Via::Direct)) || !others.is_empty() {
                paths.push(Via::Direct);
            }
            paths.extend(others);
            (!paths.is_empty()).then_some((sc, paths))
        })
        .collect()
}

fn selected(opts: &AllOpts, name: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|p| name.starts_with(p.as_str()))
}

/// One scenario's load-generator result.
#[derive(Debug)]
struct Measured {
    rps: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    requests: u64,
    errors: u64,
    extra: Vec<(&'static str, Value)>,
}

/// An ordered JSON object: `serde_json::Map` would sort the keys, and `scenario` reads best
/// first.
fn emit(fields: &[(&str, Value)]) -> anyhow::Result<()> {
    let mut line = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&serde_json::to_string(k)?);
        line.push(':');
        line.push_str(&serde_json::to_string(v)?);
    }
    line.push('}');
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// Distinct free loopback ports: bound together so they differ, then released for the children.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One request on a fresh HTTP/1.1 connection; returns the status and body.
async fn request_once(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut sender = load::connect_h1(addr).await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// `GET <path>` answers 200.
pub async fn expect_ok(addr: SocketAddr, path: &'static str) -> anyhow::Result<()> {
    match request_once(addr, Method::GET, path).await? {
        (StatusCode::OK, _) => Ok(()),
        (s, _) => bail!("{path}: {s}"),
    }
}

/// One absolute-form HTTP/1.1 request for `url` through the HTTP proxy at `proxy`.
async fn request_via_proxy(proxy: SocketAddr, url: &str) -> anyhow::Result<StatusCode> {
    let target = load::Target::parse(url, Some(proxy)).await?;
    let mut sender = load::connect_h1(proxy).await?;
    let rsp = sender.send_request(target.request(false)?).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    Ok(status)
}

pub async fn run(opts: AllOpts) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Returning drops the children's guards, which kills them.
    tokio::select! {
        r = run_inner(&opts) => r,
        _ = int.recv() => bail!("interrupted (SIGINT)"),
        _ = term.recv() => bail!("terminated (SIGTERM)"),
        _ = hup.recv() => bail!("hung up (SIGHUP)"),
    }
}

/// Binaries and directories shared by the parts of a run.
#[derive(Debug)]
struct Env {
    exe: PathBuf,
    proxy_bin: PathBuf,
    mesh_bin: PathBuf,
    scratch: Scratch,
    proxy_log: PathBuf,
    log_dir: PathBuf,
}

async fn run_inner(opts: &AllOpts) -> anyhow::Result<()> {
    let plan = plan(opts);
    let certify = selected(opts, "certify");
    // A minute long, so only when asked for by name.
    let destination = opts
        .only
        .iter()
        .any(|p| "destination".starts_with(p.as_str()) && !p.is_empty());
    if plan.is_empty() && !certify && !destination {
        bail!("no scenario matches --only {}", opts.only.join(","));
    }
    let uses = |via: Via| plan.iter().any(|(_, paths)| paths.contains(&via));
    let saturation = |proto: Proto| {
        plan.iter()
            .any(|(sc, _)| sc.proto == proto && sc.kind == Kind::Saturation)
    };
    for (tool, needed) in [
        ("wrk", saturation(Proto::Http1)),
        ("h2load", saturation(Proto::Http2)),
    ] {
        if needed && tools::find_on_path(tool).is_none() {
            bail!("`{tool}` is not on PATH; install it with `apt-get install wrk nghttp2-client`");
        }
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let proxy_bin = match &opts.proxy_bin {
        Some(p) => p.clone(),
        None => exe.with_file_name("linkerd-proxy"),
    };
    if (uses(Via::Proxy) || uses(Via::Mesh)) && !proxy_bin.is_file() {
        bail!(
            "no proxy binary at {}; build it with `cargo build --release -p linkerd-proxy`",
            proxy_bin.display()
        );
    }
    let mesh_bin = match &opts.mesh_bin {
        Some(p) => p.clone(),
        None => exe.with_file_name("mesh"),
    };
    if (uses(Via::Mesh) || certify || destination) && !mesh_bin.is_file() {
        bail!(
            "no mesh binary at {}; build it with `cargo build --release -p mesh`",
            mesh_bin.display()
        );
    }
    let scratch = Scratch::new()?;
    let proxy_log = opts
        .proxy_log
        .clone()
        .unwrap_or_else(|| scratch.0.join("proxy.log"));
    let log_dir = proxy_log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&log_dir)?;
    let env = Env {
        exe,
        proxy_bin,
        mesh_bin,
        scratch,
        proxy_log,
        log_dir,
    };

    if let Some(l) = loadavg().filter(|l| *l > 0.7) {
        eprintln!("bench: warning: load average {l:.2}: other work on this machine skews results");
    }
    if !plan.is_empty() {
        run_http(opts, &env, &plan).await?;
    }
    if certify {
        // Last, with every other process of the run gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!(
            "bench: certify ({:.0}s) ...",
            opts.duration.as_secs_f64().ceil()
        );
        let fields = certify::run(
            &env.mesh_bin,
            opts.duration,
            opts.certify_concurrency,
            opts.pid_file.as_deref(),
        )
        .await
        .context("scenario certify")?;
        let mut row = vec![("scenario", json!("certify"))];
        row.extend(fields);
        row.push(("loadavg_1m", json!(loadavg())));
        emit(&row)?;
    }
    if destination {
        eprintln!("bench: destination (10,000 endpoints, 1,000 watchers; about a minute) ...");
        let fields = crate::destination::run(&env.mesh_bin, opts.pid_file.as_deref())
            .await
            .context("scenario destination")?;
        let mut obj = serde_json::Map::new();
        obj.insert("scenario".into(), json!("destination"));
        obj.extend(fields);
        obj.insert("loadavg_1m".into(), json!(loadavg()));
        println!("{}", serde_json::Value::Object(obj));
    }
    Ok(())
}

/// A proxy under test in one scenario: what to read before and after.
#[derive(Clone, Copy, Debug)]
struct Probe {
    role: &'static str,
    pid: u32,
    admin: SocketAddr,
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

/// A probe's readings at the start of a scenario.
#[derive(Debug)]
struct Before {
    cpu: f64,
    counters: Option<Counters>,
}

/// What one proxy did during a scenario.
#[derive(Debug)]
struct ProxyUse {
    role: &'static str,
    rss_kb: u64,
    cpu_s: f64,
    /// `None` if /metrics could not be read.
    counters: Option<Counters>,
}

async fn scrape_counters(admin: SocketAddr) -> Option<Counters> {
    match request_once(admin, Method::GET, "/metrics").await {
        Ok((StatusCode::OK, body)) => Some(mesh::parse_counters(&String::from_utf8_lossy(&body))),
        _ => None,
    }
}

/// `identity_certificates_issued_total` from the identity service's admin server.
async fn identity_issued(admin: SocketAddr) -> Option<u64> {
    let (status, body) = request_once(admin, Method::GET, "/metrics").await.ok()?;
    if status != StatusCode::OK {
        return None;
    }
    let (scrape, _) = linkerd_control::prom::Scrape::parse_lossy(&String::from_utf8_lossy(&body));
    let values: Vec<f64> = scrape
        .find("identity_certificates_issued_total", &[])
        .map(|s| s.value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

/// The processes of an HTTP run.
#[derive(Debug)]
struct Procs {
    server: Guarded,
    server_addr: SocketAddr,
    proxy: Option<ProxyProc>,
    mesh: Option<Mesh>,
    policy: Option<PolicyMesh>,
    pairs: Vec<pair::Running>,
}

impl Procs {
    /// Every process but the load generator: their CPU is accounted, not "other".
    fn pids(&self) -> Vec<u32> {
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

    fn pair(&self, kind: Pair) -> anyhow::Result<&pair::Running> {
        self.pairs
            .iter()
            .find(|p| p.kind == kind)
            .with_context(|| format!("no {} proxies", kind.path()))
    }

    fn check_running(&mut self, during: &str) -> anyhow::Result<()> {
        self.server.check_running()?;
        let mut proxies: Vec<&mut ProxyProc> = Vec::new();
        if let Some(p) = &mut self.proxy {
            proxies.push(p);
        }
        if let Some(m) = &mut self.mesh {
            m.identity.check_running().map_err(|e| {
                anyhow::anyhow!(
                    "{e} during {during}\nidentity log:\n{}",
                    mesh::log_tail(&m.identity_log)
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
                    anyhow::anyhow!("{e} during {during}\nlog:\n{}", mesh::log_tail(log))
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
                    mesh::log_tail(&p.log)
                )
            })?;
        }
        Ok(())
    }
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| procfs::cpu_seconds(p)).sum()
}

async fn run_http(opts: &AllOpts, env: &Env, plan: &[(Scenario, Vec<Via>)]) -> anyhow::Result<()> {
    let pid_file = opts.pid_file.as_deref();
    let uses = |via: Via| plan.iter().any(|(_, paths)| paths.contains(&via));
    let ports = free_ports(43)?;
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let server_addr = loopback(ports[0]);

    let mut server = Guarded::spawn(
        "upstream server",
        Command::new(&env.exe)
            .arg("server")
            .arg("--addr")
            .arg(server_addr.to_string())
            .arg("--threads")
            .arg(opts.server_threads.to_string())
            .arg("--body-size")
            .arg(opts.body_size.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        pid_file,
    )?;
    wait_until("the upstream server to accept", &mut server, || async {
        request_once(server_addr, Method::GET, "/")
            .await
            .map(|_| ())
    })
    .await?;
    let mut procs = Procs {
        server,
        server_addr,
        proxy: None,
        mesh: None,
        policy: None,
        pairs: Vec::new(),
    };
    let launch = mesh::Launch {
        bin: &env.proxy_bin,
        cores: opts.proxy_cores,
        pid_file,
    };
    // Peak RSS per proxy role over the run.
    let mut peaks: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut hwm_resettable = true;

    if uses(Via::Proxy) {
        let addrs = ProxyAddrs {
            inbound: loopback(ports[1]),
            outbound: loopback(ports[2]),
            admin: loopback(ports[3]),
        };
        let env_vars = [("MESH_PROXY_INBOUND_FORWARD_ADDR", server_addr.to_string())];
        let mut proxy = launch.spawn(
            "proxy",
            "proxy",
            addrs,
            &env_vars,
            env.proxy_log.clone(),
            None,
        )?;
        mesh::wait_ready(&mut proxy).await?;
        // Idle footprint: started, and one request served end to end.
        match request_once(proxy.inbound, Method::GET, "/").await? {
            (StatusCode::OK, _) => {}
            (s, _) => bail!("a request through the proxy failed: {s}"),
        }
        let pid = proxy.child.pid;
        let idle_rss = procfs::status_number(pid, "VmRSS")?;
        let hwm = procfs::status_number(pid, "VmHWM")?;
        peaks.insert("proxy", hwm);
        hwm_resettable = procfs::reset_peak_rss(pid);
        emit(&[
            ("scenario", json!("proxy_idle")),
            ("proxy_rss_kb", json!(idle_rss)),
            ("proxy_hwm_kb", json!(hwm)),
            ("proxy_cores", json!(opts.proxy_cores)),
            (
                "proxy_threads",
                json!(procfs::status_number(pid, "Threads").ok()),
            ),
            (
                "listener",
                json!("inbound (MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)"),
            ),
            ("per_scenario_peak_rss", json!(hwm_resettable)),
            ("loadavg_1m", json!(loadavg())),
        ])?;
        procs.proxy = Some(proxy);
    }

    if uses(Via::Mesh) {
        let m = mesh::start(
            &MeshOpts {
                mesh_bin: &env.mesh_bin,
                launch,
                upstream: server_addr,
                scratch: &env.scratch.0,
                log_dir: &env.log_dir,
            },
            &ports[4..12],
        )
        .await?;
        procs.mesh = Some(m);
        let m = procs.mesh.as_ref().context("mesh")?;
        // One request end to end, and proof that it crossed the mesh over mTLS.
        let url = format!("http://{}/", mesh::SERVICE);
        let status = request_via_proxy(m.client.outbound, &url)
            .await
            .context("a request through the mesh")?;
        if status != StatusCode::OK {
            bail!(
                "a request through the mesh failed: {status}\nclient proxy log:\n{}\nserver proxy log:\n{}",
                mesh::log_tail(&m.client.log),
                mesh::log_tail(&m.server.log)
            );
        }
        let server_counters = scrape_counters(m.server.admin).await;
        let mtls = server_counters.as_ref().and_then(Counters::mtls_fraction);
        if mtls != Some(1.0) {
            eprintln!(
                "bench: warning: the server proxy saw {mtls:?} of its inbound requests over mTLS"
            );
        }
        let mut proxies = serde_json::Map::new();
        for p in [&m.client, &m.server] {
            let pid = p.child.pid;
            let hwm = procfs::status_number(pid, "VmHWM")?;
            peaks.insert(p.role, hwm);
            proxies.insert(
                p.role.to_string(),
                json!({
                    "rss_kb": procfs::status_number(pid, "VmRSS")?,
                    "hwm_kb": hwm,
                    "threads": procfs::status_number(pid, "Threads").ok(),
                    "identity": p.identity,
                    "listener": listener(p.role),
                }),
            );
            hwm_resettable &= procfs::reset_peak_rss(pid);
        }
        let rss_max = [&m.client, &m.server]
            .iter()
            .filter_map(|p| procfs::status_number(p.child.pid, "VmRSS").ok())
            .max();
        emit(&[
            ("scenario", json!("mesh_idle")),
            ("proxy_rss_kb", json!(rss_max)),
            ("proxies", Value::Object(proxies)),
            (
                "identity_rss_kb",
                json!(procfs::status_number(m.identity.pid, "VmRSS").ok()),
            ),
            (
                "identity_certificates_issued",
                json!(identity_issued(m.identity_admin).await),
            ),
            (
                "certified_in_ms",
                json!(round(m.certified_in.as_secs_f64() * 1e3, 1)),
            ),
            ("mtls_fraction", json!(mtls)),
            ("service", json!(mesh::SERVICE)),
            ("proxy_cores", json!(opts.proxy_cores)),
            ("per_scenario_peak_rss", json!(hwm_resettable)),
            ("loadavg_1m", json!(loadavg())),
        ])?;
    }

    for (kind, ports) in Pair::ALL.into_iter().zip([&ports[31..37], &ports[37..43]]) {
        if !uses(Via::Pair(kind)) {
            continue;
        }
        let p = pair::start(
            kind,
            &PairOpts {
                launch,
                upstream: server_addr,
                log_dir: &env.log_dir,
            },
            ports,
        )
        .await?;
        match request_once(p.front.inbound, Method::GET, "/").await? {
            (StatusCode::OK, _) => {}
            (s, _) => bail!("a request through {} failed: {s}", kind.path()),
        }
        for q in [&p.front, &p.back] {
            peaks.insert(q.role, procfs::status_number(q.child.pid, "VmHWM")?);
            hwm_resettable &= procfs::reset_peak_rss(q.child.pid);
        }
        procs.pairs.push(p);
    }

    let cases: Vec<Case> = plan
        .iter()
        .flat_map(|(_, paths)| paths)
        .filter_map(|v| match v {
            Via::MeshPolicy(c) => Some(*c),
            _ => None,
        })
        .collect();
    if !cases.is_empty() {
        let m = procs
            .mesh
            .as_ref()
            .context("the policy cases need the mesh")?;
        let pm = policy::start(
            &PolicyOpts {
                mesh_bin: &env.mesh_bin,
                launch,
                upstream: server_addr,
                scratch: &env.scratch.0,
                log_dir: &env.log_dir,
            },
            m,
            &ports[12..31],
        )
        .await?;
        procs.policy = Some(pm);
        let pm = procs.policy.as_ref().context("policy mesh")?;
        // One request per case end to end: the first waits for the Service's policy.
        for case in &cases {
            let url = format!("http://{}/", case.authority());
            let status = request_via_proxy(pm.client.outbound, &url)
                .await
                .with_context(|| format!("a request for {url} through the policy mesh"))?;
            if status != StatusCode::OK {
                let mut logs = format!(
                    "client proxy log:\n{}\npolicy log:\n{}",
                    mesh::log_tail(&pm.client.log),
                    mesh::log_tail(&pm.policy_log)
                );
                for p in pm.servers.values() {
                    logs.push_str(&format!("\n{} log:\n{}", p.role, mesh::log_tail(&p.log)));
                }
                bail!(
                    "{}: a request for {url} answered {status}\n{logs}",
                    case.name()
                );
            }
        }
        let mut proxies = serde_json::Map::new();
        for p in std::iter::once(&pm.client).chain(pm.servers.values()) {
            let pid = p.child.pid;
            let hwm = procfs::status_number(pid, "VmHWM")?;
            peaks.insert(p.role, hwm);
            proxies.insert(
                p.role.to_string(),
                json!({
                    "rss_kb": procfs::status_number(pid, "VmRSS")?,
                    "hwm_kb": hwm,
                    "identity": p.identity,
                    "listener": listener(p.role),
                }),
            );
            hwm_resettable &= procfs::reset_peak_rss(pid);
        }
        emit(&[
            ("scenario", json!("mesh_policy_idle")),
            ("proxies", Value::Object(proxies)),
            (
                "destination_rss_kb",
                json!(procfs::status_number(pm.destination.pid, "VmRSS").ok()),
            ),
            (
                "policy_rss_kb",
                json!(procfs::status_number(pm.policy.pid, "VmRSS").ok()),
            ),
            (
                "ready_in_ms",
                json!(round(pm.ready_in.as_secs_f64() * 1e3, 1)),
            ),
            (
                "services",
                json!(cases.iter().map(|c| c.authority()).collect::<Vec<_>>()),
            ),
            ("loadavg_1m", json!(loadavg())),
        ])?;
    }

    let cpu_start: BTreeMap<u32, f64> = procs
        .pids()
        .into_iter()
        .filter_map(|p| Some((p, procfs::cpu_seconds(p).ok()?)))
        .collect();
    let mut total_errors = 0u64;
    let mut policy_failures: Vec<String> = Vec::new();
    let repeats = opts.repeats.max(1);
    for (sc, paths) in plan {
        let mut rounds: BTreeMap<String, Vec<RoundOf>> = BTreeMap::new();
        for r in 0..repeats {
            let mut direct: Option<Measured> = None;
            let mut plain_mesh: Option<Measured> = None;
            for &path in paths {
                let name = sc.name(path);
                let (url, via_proxy, probes) = match path {
                    Via::Direct => (format!("http://{}/", procs.server_addr), None, vec![]),
                    Via::Proxy => {
                        let p = procs.proxy.as_ref().context("no proxy")?;
                        (format!("http://{}/", p.inbound), None, vec![Probe::of(p)])
                    }
                    Via::Mesh => {
                        let m = procs.mesh.as_ref().context("no mesh")?;
                        (
                            format!("http://{}/", mesh::SERVICE),
                            Some(m.client.outbound),
                            vec![Probe::of(&m.client), Probe::of(&m.server)],
                        )
                    }
                    Via::Pair(kind) => {
                        let p = procs.pair(kind)?;
                        (
                            format!("http://{}/", p.front.inbound),
                            None,
                            vec![Probe::of(&p.front), Probe::of(&p.back)],
                        )
                    }
                    Via::MeshPolicy(case) => {
                        let pm = procs.policy.as_ref().context("no policy mesh")?;
                        let mut probes = vec![Probe::of(&pm.client)];
                        for s in case.servers() {
                            probes.push(Probe::of(pm.server(*s)?));
                        }
                        (
                            format!("http://{}/", case.authority()),
                            Some(pm.client.outbound),
                            probes,
                        )
                    }
                };
                // Let sockets from the previous run close and the machine go quiet.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let of = if repeats > 1 {
                    format!(", round {}/{repeats}", r + 1)
                } else {
                    String::new()
                };
                eprintln!(
                    "bench: {name} ({:.0}s{of}) ...",
                    opts.duration.as_secs_f64().ceil()
                );
                let mut before = Vec::new();
                for p in &probes {
                    if hwm_resettable {
                        procfs::reset_peak_rss(p.pid);
                    }
                    before.push(Before {
                        counters: scrape_counters(p.admin).await,
                        cpu: procfs::cpu_seconds(p.pid)?,
                    });
                }
                let pids = procs.pids();
                let background_cpu0 = cpu_of(&pids)?;
                let server_cpu0 = procfs::cpu_seconds(procs.server.pid)?;
                let load_cpu0 = procfs::self_and_children_cpu_seconds()?;
                let machine0 = procfs::machine_busy_seconds()?;
                let started = Instant::now();
                let m = measure(opts, *sc, &url, via_proxy, &env.scratch.0, pid_file).await;
                let wall = started.elapsed().as_secs_f64();
                procs.check_running(&name)?;
                let m = m.with_context(|| format!("scenario {name}"))?;
                let server_cpu = procfs::cpu_seconds(procs.server.pid)? - server_cpu0;
                let load_cpu = procfs::self_and_children_cpu_seconds()? - load_cpu0;
                let machine = procfs::machine_busy_seconds()? - machine0;
                let background_cpu = cpu_of(&pids)? - background_cpu0;
                let mut used = Vec::new();
                for (p, b) in probes.iter().zip(before) {
                    let after = scrape_counters(p.admin).await;
                    let rss_kb = procfs::status_number(p.pid, "VmHWM")?;
                    let peak = peaks.entry(p.role).or_default();
                    *peak = (*peak).max(rss_kb);
                    used.push(ProxyUse {
                        role: p.role,
                        rss_kb,
                        cpu_s: procfs::cpu_seconds(p.pid)? - b.cpu,
                        counters: match (b.counters, after) {
                            (Some(b), Some(a)) => Some(a.since(&b)),
                            _ => None,
                        },
                    });
                }
                total_errors += m.errors;

                let mut fields: Vec<(&str, Value)> = vec![("scenario", json!(name))];
                if repeats > 1 {
                    fields.push(("round", json!(r + 1)));
                }
                fields.extend([
                    ("rps", json!(round(m.rps, 1))),
                    ("p50_us", json!(m.p50)),
                    ("p99_us", json!(m.p99)),
                    ("p999_us", json!(m.p999)),
                    ("max_us", json!(m.max)),
                    ("requests", json!(m.requests)),
                    ("errors", json!(m.errors)),
                ]);
                let baseline = match path {
                    Via::MeshPolicy(_) => plain_mesh.as_ref(),
                    _ => None,
                };
                if path == Via::Direct {
                    fields.push(("proxy_rss_kb", Value::Null));
                    fields.push(("proxy_cpu_s", Value::Null));
                } else {
                    proxied_fields(&mut fields, path, &m, direct.as_ref(), baseline, &used);
                }
                let mut applied = None;
                if let Via::MeshPolicy(case) = path {
                    let verdict = match used.iter().map(|u| u.counters.as_ref()).collect() {
                        Some(cs) => {
                            let cs: Vec<&Counters> = cs;
                            let servers: Vec<_> = case
                                .servers()
                                .iter()
                                .copied()
                                .zip(cs[1..].iter().copied())
                                .collect();
                            case.check(cs[0], &servers)
                        }
                        None => Err("a proxy's /metrics could not be read".to_string()),
                    };
                    match verdict {
                        Ok(evidence) => {
                            applied = Some(true);
                            fields.push(("policy", evidence));
                        }
                        Err(e) => {
                            eprintln!("bench: ERROR: {name}: the policy was not applied: {e}");
                            policy_failures.push(format!("{name}: {e}"));
                            applied = Some(false);
                            fields.push((
                                "policy",
                                json!({"enabled": case.describe(), "applied": false, "error": e}),
                            ));
                        }
                    }
                }
                fields.push(("server_cpu_s", json!(round(server_cpu, 2))));
                fields.push(("loadgen_cpu_s", json!(round(load_cpu, 2))));
                // Busy CPU not accounted to our processes (server, proxies, identity service,
                // control plane, load generator): other work on the machine (and some
                // interrupt time). Large values mean the numbers are not trustworthy.
                let other = (machine - background_cpu - load_cpu).max(0.0);
                fields.push(("other_cpu_s", json!(round(other, 2))));
                // More than a tenth of a core on average went to something else.
                fields.push(("disturbed", json!(other > 0.1 * wall)));
                fields.push(("wall_s", json!(round(wall, 2))));
                // The share of the machine's CPU time nobody used. Well above zero in a
                // saturation run means the path did not run out of CPU but out of
                // concurrency: its processes waited on each other (or on the scheduler).
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                fields.push((
                    "machine_idle",
                    json!(round((1.0 - machine / (wall * cpus)).clamp(0.0, 1.0), 3)),
                ));
                fields.extend(m.extra.iter().cloned());
                emit(&fields)?;
                let cpu: f64 = used.iter().map(|u| u.cpu_s).sum();
                rounds.entry(name).or_default().push(RoundOf {
                    rps: m.rps,
                    p50: m.p50 as f64,
                    p99: m.p99 as f64,
                    errors: m.errors,
                    cpu_us_per_req: (path != Via::Direct && m.requests > 0)
                        .then(|| cpu * 1e6 / m.requests as f64),
                    ratio: direct.as_ref().map(|d| ratio(m.rps, d.rps)),
                    ratio_vs_mesh: baseline.map(|b| ratio(m.rps, b.rps)),
                    applied,
                    disturbed: other > 0.1 * wall,
                });
                match path {
                    Via::Direct => direct = Some(m),
                    Via::Mesh => plain_mesh = Some(m),
                    _ => {}
                }
            }
        }
        if repeats > 1 {
            for &path in paths {
                let name = sc.name(path);
                if let Some(rs) = rounds.get(&name) {
                    emit(&median_row(&name, rs))?;
                }
            }
        }
    }

    // The end state, then a graceful shutdown through the admin servers.
    if let Some(mut proxy) = procs.proxy.take() {
        let pid = proxy.child.pid;
        let end_rss = procfs::status_number(pid, "VmRSS")?;
        let end_hwm = procfs::status_number(pid, "VmHWM")?;
        let peak = peaks.get("proxy").copied().unwrap_or(0).max(end_hwm);
        let cpu_total = procfs::cpu_seconds(pid)? - cpu_start.get(&pid).copied().unwrap_or(0.0);
        let failures = scrape_counters(proxy.admin)
            .await
            .map_or(Value::Null, |c| json!(c.failures));
        let proxy_exit = shutdown(&mut proxy).await;
        emit(&[
            ("scenario", json!("proxy_rss_end")),
            ("proxy_rss_end_kb", json!(end_rss)),
            ("proxy_hwm_end_kb", json!(end_hwm)),
            ("proxy_peak_rss_kb", json!(peak)),
            ("proxy_cpu_total_s", json!(round(cpu_total, 2))),
            ("proxy_failed_responses", failures),
            ("proxy_log_lines", json!(log_lines(&proxy.log))),
            ("proxy_exit", json!(proxy_exit)),
            ("load_errors", json!(total_errors)),
            ("loadavg_1m", json!(loadavg())),
        ])?;
    }
    if let Some(mut pm) = procs.policy.take() {
        let mut proxies = serde_json::Map::new();
        let mut rss_max = 0;
        let mut peak_max = 0;
        let mut log_total = 0;
        for p in std::iter::once(&pm.client).chain(pm.servers.values()) {
            let pid = p.child.pid;
            let end_rss = procfs::status_number(pid, "VmRSS")?;
            let end_hwm = procfs::status_number(pid, "VmHWM")?;
            let peak = peaks.get(p.role).copied().unwrap_or(0).max(end_hwm);
            let cpu_total = procfs::cpu_seconds(pid)? - cpu_start.get(&pid).copied().unwrap_or(0.0);
            let failures = scrape_counters(p.admin).await.map(|c| c.failures);
            rss_max = rss_max.max(end_rss);
            peak_max = peak_max.max(peak);
            let lines = log_lines(&p.log);
            log_total += lines;
            proxies.insert(
                p.role.to_string(),
                json!({
                    "rss_end_kb": end_rss,
                    "peak_rss_kb": peak,
                    "cpu_total_s": round(cpu_total, 2),
                    "failed_responses": failures,
                    "log_lines": lines,
                    "log": p.log.display().to_string(),
                }),
            );
        }
        let destination_rss = procfs::status_number(pm.destination.pid, "VmRSS").ok();
        let policy_rss = procfs::status_number(pm.policy.pid, "VmRSS").ok();
        let mut exits = Vec::new();
        for p in std::iter::once(&mut pm.client).chain(pm.servers.values_mut()) {
            let exit = shutdown(p).await;
            if let Some(Value::Object(o)) = proxies.get_mut(p.role) {
                o.insert("exit".into(), json!(exit));
            }
            exits.push(exit);
        }
        let _ = kill(&mut pm.destination).await;
        let _ = kill(&mut pm.policy).await;
        emit(&[
            ("scenario", json!("mesh_policy_end")),
            ("proxy_rss_end_kb", json!(rss_max)),
            ("proxy_peak_rss_kb", json!(peak_max)),
            ("proxies", Value::Object(proxies)),
            (
                "proxies_exit_clean",
                json!(exits.iter().all(|e| e == "exit status: 0")),
            ),
            ("proxy_log_lines", json!(log_total)),
            ("destination_rss_kb", json!(destination_rss)),
            ("policy_rss_kb", json!(policy_rss)),
            (
                "control_plane_log_lines",
                json!(log_lines(&pm.destination_log) + log_lines(&pm.policy_log)),
            ),
            ("policy_failures", json!(policy_failures)),
            ("loadavg_1m", json!(loadavg())),
        ])?;
    }
    if let Some(mut m) = procs.mesh.take() {
        let mut proxies = serde_json::Map::new();
        let mut rss_max = 0;
        let mut peak_max = 0;
        let mut failures_total = 0;
        let mut log_total = 0;
        let mut exits = Vec::new();
        let identity_rss = procfs::status_number(m.identity.pid, "VmRSS").ok();
        // Ask both to drain at once, then collect.
        for p in [&m.client, &m.server] {
            let pid = p.child.pid;
            let end_rss = procfs::status_number(pid, "VmRSS")?;
            let end_hwm = procfs::status_number(pid, "VmHWM")?;
            let peak = peaks.get(p.role).copied().unwrap_or(0).max(end_hwm);
            let cpu_total = procfs::cpu_seconds(pid)? - cpu_start.get(&pid).copied().unwrap_or(0.0);
            let failures = scrape_counters(p.admin).await.map(|c| c.failures);
            failures_total += failures.iter().flat_map(|f| f.values()).sum::<u64>();
            rss_max = rss_max.max(end_rss);
            peak_max = peak_max.max(peak);
            let lines = log_lines(&p.log);
            log_total += lines;
            proxies.insert(
                p.role.to_string(),
                json!({
                    "rss_end_kb": end_rss,
                    "hwm_end_kb": end_hwm,
                    "peak_rss_kb": peak,
                    "cpu_total_s": round(cpu_total, 2),
                    "failed_responses": failures,
                    "log_lines": lines,
                    "log": p.log.display().to_string(),
                }),
            );
        }
        for p in [&mut m.client, &mut m.server] {
            let exit = shutdown(p).await;
            if let Some(Value::Object(o)) = proxies.get_mut(p.role) {
                o.insert("exit".into(), json!(exit));
            }
            exits.push(exit);
        }
        let clean = exits.iter().all(|e| e == "exit status: 0");
        let identity_log_lines = log_lines(&m.identity_log);
        let _ = kill(&mut m.identity).await;
        emit(&[
            ("scenario", json!("mesh_end")),
            ("proxy_rss_end_kb", json!(rss_max)),
            ("proxy_peak_rss_kb", json!(peak_max)),
            ("proxies", Value::Object(proxies)),
            ("proxy_failed_responses_total", json!(failures_total)),
            ("proxy_log_lines", json!(log_total)),
            ("proxies_exit_clean", json!(clean)),
            ("identity_rss_kb", json!(identity_rss)),
            ("identity_log_lines", json!(identity_log_lines)),
            ("load_errors", json!(total_errors)),
            ("loadavg_1m", json!(loadavg())),
        ])?;
    }
    for mut p in std::mem::take(&mut procs.pairs) {
        let mut proxies = serde_json::Map::new();
        for q in [&mut p.front, &mut p.back] {
            let pid = q.child.pid;
            let end_hwm = procfs::status_number(pid, "VmHWM")?;
            let peak = peaks.get(q.role).copied().unwrap_or(0).max(end_hwm);
            let failures = scrape_counters(q.admin).await.map(|c| c.failures);
            let exit = shutdown(q).await;
            proxies.insert(
                q.role.to_string(),
                json!({"peak_rss_kb": peak, "failed_responses": failures, "exit": exit}),
            );
        }
        emit(&[
            ("scenario", json!(format!("{}_end", p.kind.path()))),
            ("proxies", Value::Object(proxies)),
            ("loadavg_1m", json!(loadavg())),
        ])?;
    }
    if !policy_failures.is_empty() {
        bail!(
            "a policy scenario measured a policy that was not applied:\n{}",
            policy_failures.join("\n")
        );
    }
    Ok(())
}

/// The fields of a proxied or meshed row: the proxies' cost and the comparison with direct.
fn proxied_fields(
    fields: &mut Vec<(&str, Value)>,
    path: Via,
    m: &Measured,
    direct: Option<&Measured>,
    plain_mesh: Option<&Measured>,
    used: &[ProxyUse],
) {
    // With two proxies: the larger peak (each is a separate sidecar), the summed CPU.
    let rss = used.iter().map(|u| u.rss_kb).max().unwrap_or(0);
    let cpu: f64 = used.iter().map(|u| u.cpu_s).sum();
    fields.push(("proxy_rss_kb", json!(rss)));
    fields.push(("proxy_cpu_s", json!(round(cpu, 2))));
    if m.requests > 0 {
        fields.push((
            "proxy_cpu_us_per_req",
            json!(round(cpu * 1e6 / m.requests as f64, 2)),
        ));
    }
    if let Some(d) = direct {
        fields.push(("ratio_rps", json!(round(ratio(m.rps, d.rps), 3))));
        fields.push(("added_p50_us", json!(m.p50 as i64 - d.p50 as i64)));
        fields.push(("added_p99_us", json!(m.p99 as i64 - d.p99 as i64)));
    }
    if let Some(b) = plain_mesh {
        fields.push(("ratio_rps_vs_mesh", json!(round(ratio(m.rps, b.rps), 3))));
        fields.push(("added_p50_us_vs_mesh", json!(m.p50 as i64 - b.p50 as i64)));
        fields.push(("added_p99_us_vs_mesh", json!(m.p99 as i64 - b.p99 as i64)));
    }
    let counters: Option<Vec<&Counters>> = used.iter().map(|u| u.counters.as_ref()).collect();
    if let Some(cs) = &counters {
        let mut failed: BTreeMap<String, u64> = BTreeMap::new();
        for c in cs {
            for (k, v) in &c.failures {
                *failed.entry(k.clone()).or_default() += v;
            }
        }
        fields.push(("proxy_failed_responses", json!(failed)));
        fields.push((
            "proxy_tcp_connects",
            json!(cs.iter().map(|c| c.tcp_connects).sum::<u64>()),
        ));
    }
    match path {
        Via::Proxy | Via::Direct => fields.push(("listener", json!("inbound"))),
        Via::Pair(kind) => {
            // Evidence of what the proxies did: HTTP requests seen (none for `pair_tcp`, whose
            // proxies only copy bytes; every request, twice, for `pair_http`).
            let http: Option<u64> = counters
                .as_ref()
                .map(|cs| cs.iter().map(|c| c.inbound_requests).sum());
            fields.push(("proxy_http_requests", json!(http)));
            let as_meant = match kind {
                Pair::Tcp => http == Some(0),
                Pair::Http => http.is_some_and(|n| n > 0),
            };
            if http.is_some() && !as_meant {
                eprintln!(
                    "bench: warning: {}: the proxies saw {http:?} HTTP requests",
                    kind.path()
                );
            }
            let mut proxies = serde_json::Map::new();
            for u in used {
                proxies.insert(
                    u.role.to_string(),
                    json!({"rss_kb": u.rss_kb, "cpu_s": round(u.cpu_s, 2)}),
                );
            }
            fields.push(("proxies", Value::Object(proxies)));
            fields.push(("listener", json!(kind.describe())));
        }
        Via::Mesh | Via::MeshPolicy(_) => {
            // Every server proxy the requests reached (two for the weighted split).
            let servers: Option<Vec<&Counters>> = used
                .iter()
                .filter(|u| !is_client(u.role))
                .map(|u| u.counters.as_ref())
                .collect();
            let merged = servers.map(|cs| {
                let mut all = Counters::default();
                for c in cs {
                    all.inbound_requests += c.inbound_requests;
                    all.inbound_tls_requests += c.inbound_tls_requests;
                    for (k, v) in &c.inbound_client_ids {
                        *all.inbound_client_ids.entry(k.clone()).or_default() += v;
                    }
                }
                all
            });
            let server_counters = merged.as_ref();
            fields.push((
                "mtls_fraction",
                json!(server_counters.and_then(Counters::mtls_fraction)),
            ));
            fields.push((
                "mtls_client_ids",
                json!(server_counters.map(|c| &c.inbound_client_ids)),
            ));
            if server_counters.and_then(Counters::mtls_fraction) != Some(1.0) {
                eprintln!("bench: warning: not all of the mesh traffic went over mTLS");
            }
            let mut proxies = serde_json::Map::new();
            for u in used {
                let mut o = serde_json::Map::new();
                o.insert("rss_kb".into(), json!(u.rss_kb));
                o.insert("cpu_s".into(), json!(round(u.cpu_s, 2)));
                if let Some(c) = &u.counters {
                    o.insert("failed_responses".into(), json!(c.failures));
                    // Connections the proxy opened: to the server proxy (client), to the
                    // upstream server (server).
                    o.insert("tcp_connects".into(), json!(c.tcp_connects));
                    match is_client(u.role) {
                        true => {
                            o.insert("outbound_requests".into(), json!(c.outbound_requests));
                            o.insert("mtls_server_ids".into(), json!(c.outbound_server_ids));
                        }
                        _ => {
                            o.insert("inbound_requests".into(), json!(c.inbound_requests));
                            o.insert("mtls_fraction".into(), json!(c.mtls_fraction()));
                        }
                    }
                }
                o.insert("listener".into(), json!(listener(u.role)));
                proxies.insert(u.role.to_string(), Value::Object(o));
            }
            fields.push(("proxies", Value::Object(proxies)));
            fields.push((
                "listener",
                json!("outbound (HTTP proxy) -> mTLS, HTTP/2 -> inbound"),
            ));
        }
    }
}

fn listener(role: &str) -> &'static str {
    match role {
        "client" => "outbound (HTTP proxy, absolute-form / :authority)",
        "policy-client" => {
            "outbound (HTTP proxy, :authority; destination + OutboundPolicies/Watch)"
        }
        "server" => "inbound (mTLS, MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)",
        r if r.starts_with("policy-server") => {
            "inbound (mTLS, InboundServerPolicies/WatchPort, MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)"
        }
        _ => "inbound (MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)",
    }
}

/// The mesh's client side (`client`, `policy-client`); the others are server proxies.
fn is_client(role: &str) -> bool {
    role.ends_with("client")
}

/// `a / b`, 0 when `b` is 0.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// One round of one path, for the medians.
#[derive(Clone, Debug)]
struct RoundOf {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
    cpu_us_per_req: Option<f64>,
    /// Against direct, and (policy cases) against the plain mesh, of the same round.
    ratio: Option<f64>,
    ratio_vs_mesh: Option<f64>,
    /// Policy cases: whether the check passed.
    applied: Option<bool>,
    disturbed: bool,
}

/// The median (the mean of the middle two for an even count); `None` when empty.
fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// The `median` row of a path over its rounds. The ratios are medians of each round's own
/// ratio (each against the baselines measured just before it), not ratios of medians.
fn median_row(name: &str, rs: &[RoundOf]) -> Vec<(&'static str, Value)> {
    let med = |f: fn(&RoundOf) -> Option<f64>, places: i32| {
        json!(median(rs.iter().filter_map(f).collect()).map(|x| round(x, places)))
    };
    let mut row = vec![
        ("scenario", json!(name)),
        ("round", json!("median")),
        ("rounds", json!(rs.len())),
        ("rps", med(|r| Some(r.rps), 1)),
        (
            "rps_all",
            json!(rs.iter().map(|r| round(r.rps, 1)).collect::<Vec<_>>()),
        ),
        ("p50_us", med(|r| Some(r.p50), 0)),
        ("p99_us", med(|r| Some(r.p99), 0)),
        ("errors", json!(rs.iter().map(|r| r.errors).sum::<u64>())),
    ];
    if rs.iter().any(|r| r.cpu_us_per_req.is_some()) {
        row.push(("proxy_cpu_us_per_req", med(|r| r.cpu_us_per_req, 2)));
    }
    if rs.iter().any(|r| r.ratio.is_some()) {
        row.push(("ratio_rps", med(|r| r.ratio, 3)));
        row.push((
            "ratio_rps_all",
            json!(
                rs.iter()
                    .filter_map(|r| r.ratio.map(|x| round(x, 3)))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    if rs.iter().any(|r| r.ratio_vs_mesh.is_some()) {
        row.push(("ratio_rps_vs_mesh", med(|r| r.ratio_vs_mesh, 3)));
        row.push((
            "ratio_rps_vs_mesh_all",
            json!(
                rs.iter()
                    .filter_map(|r| r.ratio_vs_mesh.map(|x| round(x, 3)))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    if rs.iter().any(|r| r.applied.is_some()) {
        row.push((
            "policy_applied",
            json!(rs.iter().all(|r| r.applied == Some(true))),
        ));
    }
    row.push((
        "disturbed_rounds",
        json!(rs.iter().filter(|r| r.disturbed).count()),
    ));
    row.push(("loadavg_1m", json!(loadavg())));
    row
}

fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// `POST /shutdown`, then how the proxy ended (`exit status: 0` is a clean drain).
async fn shutdown(p: &mut ProxyProc) -> String {
    match request_once(p.admin, Method::POST, "/shutdown").await {
        Ok((StatusCode::OK, _)) => p.child.wait_or_kill(Duration::from_secs(5)).await,
        Ok((s, _)) => format!("/shutdown answered {s}; {}", kill(&mut p.child).await),
        Err(e) => format!("/shutdown failed: {e:#}; {}", kill(&mut p.child).await),
    }
}

async fn kill(child: &mut Guarded) -> String {
    child.wait_or_kill(Duration::ZERO).await
}

/// The 1-minute load average: other work on the machine skews every number.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Retries `probe` every 20 ms for up to 10 s, failing early if `child` exits.
pub async fn wait_until<F, Fut>(what: &str, child: &mut Guarded, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        child.check_running()?;
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("timed out waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn measure(
    opts: &AllOpts,
    sc: Scenario,
    url: &str,
    proxy: Option<SocketAddr>,
    scratch: &Path,
    pid_file: Option<&Path>,
) -> anyhow::Result<Measured> {
    match sc.kind {
        Kind::Saturation => {
            let (s, tool, conc) = match sc.proto {
                Proto::Http1 => (
                    tools::wrk(
                        url,
                        proxy,
                        opts.connections,
                        opts.duration,
                        scratch,
                        pid_file,
                    )
                    .await?,
                    "wrk -t1",
                    opts.connections,
                ),
                Proto::Http2 => (
                    tools::h2load(
                        url,
                        proxy,
                        opts.connections,
                        opts.h2_streams,
                        opts.duration,
                        scratch,
                        pid_file,
                    )
                    .await?,
                    "h2load -t1",
                    opts.connections * opts.h2_streams,
                ),
            };
            Ok(Measured {
                rps: s.rps,
                p50: s.latency.p50,
                p99: s.latency.p99,
                p999: s.latency.p999,
                max: s.latency.max,
                requests: s.requests,
                errors: s.errors,
                extra: vec![
                    ("load", json!(tool)),
                    ("connections", json!(opts.connections)),
                    ("concurrency", json!(conc)),
                ],
            })
        }
        Kind::Rate(rate) => {
            let r = load::run(&LoadOpts {
                url: url.to_string(),
                rate,
                duration: opts.duration,
                connections: opts.load_connections,
                http2: sc.proto == Proto::Http2,
                proxy,
                timeout: Duration::from_secs(10),
            })
            .await?;
            let lat = r.latency.unwrap_or_default();
            let mut extra = vec![
                ("load", json!("bench open loop")),
                ("connections", json!(opts.load_connections)),
                ("target_rps", json!(rate)),
                ("timeouts", json!(r.timeouts)),
                ("dispatch_lag_p99_us", json!(r.dispatch_lag.map(|l| l.p99))),
            ];
            if let Some(e) = r.first_error {
                extra.push(("first_error", json!(e)));
            }
            Ok(Measured {
                rps: r.rps,
                p50: lat.p50,
                p99: lat.p99,
                p999: lat.p999,
                max: lat.max,
                requests: r.ok,
                errors: r.errors + r.timeouts,
                extra,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(only: &[&str]) -> AllOpts {
        AllOpts {
            duration: Duration::from_secs(1),
            proxy_bin: None,
            mesh_bin: None,
            proxy_cores: 1,
            server_threads: 1,
            body_size: 64,
            connections: 10,
            h2_streams: 10,
            load_connections: 16,
            rates: vec![1000, 5000],
            certify_concurrency: 4,
            only: only.iter().map(|s| s.to_string()).collect(),
            repeats: 1,
            proxy_log: None,
            pid_file: None,
        }
    }

    fn names(plan: &[(Scenario, Vec<Via>)]) -> Vec<String> {
        plan.iter()
            .flat_map(|(sc, paths)| paths.iter().map(|p| sc.name(*p)))
            .collect()
    }

    #[test]
    fn scenario_names() {
        let sc = Scenario {
            proto: Proto::Http1,
            kind: Kind::Rate(1000),
        };
        assert_eq!(sc.name(Via::Proxy), "http1_rate1000_proxy");
        assert_eq!(sc.name(Via::Mesh), "http1_rate1000_mesh");
        let sc = Scenario {
            proto: Proto::Http2,
            kind: Kind::Saturation,
        };
        assert_eq!(sc.name(Via::Direct), "http2_saturation_direct");
    }

    #[test]
    fn plan_brings_the_direct_baseline() {
        let p = plan(&opts(&["http1_saturation_mesh"]));
        assert_eq!(
            names(&p),
            ["http1_saturation_direct", "http1_saturation_mesh"]
        );
        let p = plan(&opts(&["http2_rate1000"]));
        assert_eq!(
            names(&p),
            [
                "http2_rate1000_direct",
                "http2_rate1000_proxy",
                "http2_rate1000_mesh"
            ]
        );
        let p = plan(&opts(&["http1_rate5000_direct"]));
        assert_eq!(names(&p), ["http1_rate5000_direct"]);
        assert!(plan(&opts(&["certify"])).is_empty());
        assert_eq!(plan(&opts(&[])).len(), 6);
        // HTTP/1.1 scenarios: direct, proxy, mesh and the two pairs; HTTP/2: three paths.
        assert_eq!(
            names(&plan(&opts(&[]))).len(),
            3 * 5 + 3 * 3 + Case::ALL.len()
        );
    }

    #[test]
    fn plan_brings_the_pairs_for_http1_only() {
        assert_eq!(
            names(&plan(&opts(&["http1_saturation_pair"]))),
            [
                "http1_saturation_direct",
                "http1_saturation_pair_tcp",
                "http1_saturation_pair_http"
            ]
        );
        assert_eq!(
            names(&plan(&opts(&["http1_rate1000"]))),
            [
                "http1_rate1000_direct",
                "http1_rate1000_proxy",
                "http1_rate1000_mesh",
                "http1_rate1000_pair_tcp",
                "http1_rate1000_pair_http"
            ]
        );
        assert!(
            !names(&plan(&opts(&["http2"])))
                .iter()
                .any(|n| n.contains("pair"))
        );
    }

    #[test]
    fn plan_brings_both_baselines_for_the_policy_cases() {
        let p = plan(&opts(&["mesh_policy_route_retry_authz"]));
        assert_eq!(
            names(&p),
            [
                "http1_saturation_direct",
                "http1_saturation_mesh",
                "mesh_policy_route_retry_authz"
            ]
        );
        let all = names(&plan(&opts(&["mesh_policy"])));
        assert_eq!(all.len(), 2 + Case::ALL.len());
        assert_eq!(all[2], "mesh_policy_none");
        // The policy cases are HTTP/1.1 saturation only, and not part of the mesh prefix.
        assert_eq!(
            names(&plan(&opts(&["http1_saturation_mesh"]))),
            ["http1_saturation_direct", "http1_saturation_mesh"]
        );
        assert!(
            !names(&plan(&opts(&["http2_saturation"])))
                .iter()
                .any(|n| n.starts_with("mesh_policy"))
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
