//! `mesh up`: the mesh on one machine.
//!
//! Generates a fresh trust anchor and issuer, starts the control plane (`mesh identity serve`,
//! and `mesh destination serve` with a registry file naming every workload's sidecar) and each
//! demo workload as its own process on its own loopback address, each behind its own sidecar
//! (`mesh proxy`, a separate process) with its own identity, drives load at the front door,
//! and shows what the sidecars measure. Workloads reach each other only through their
//! sidecars: the app uses its sidecar's outbound listener as an HTTP proxy, the sidecar
//! resolves the service through the destination service, balances over its endpoints and
//! dials the chosen peer's inbound proxy over mTLS (verifying the identity discovery gave),
//! which delivers to the peer app.

use crate::stat::{self, Snapshot, Window};
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    io::IsTerminal,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Print one JSON summary at the end instead of the live table. Exits 0 only if every
    /// request succeeded.
    #[arg(long)]
    json: bool,
    /// Requests per second sent to the demo's front door.
    #[arg(long, default_value_t = 20)]
    rps: u32,
    /// The first loopback address to use; workloads take consecutive addresses from it.
    #[arg(long, default_value = "127.0.0.10")]
    base_ip: Ipv4Addr,
}

const APP_PORT: u16 = 8080;
const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
const ADMIN_PORT: u16 = 4191;
const IDENTITY_PORT: u16 = 8080;
const IDENTITY_ADMIN_PORT: u16 = 9990;
const DESTINATION_PORT: u16 = 8086;
const DESTINATION_ADMIN_PORT: u16 = 9996;
/// The demo's namespace; services are `<name>.demo.svc.cluster.local`.
const NAMESPACE: &str = "demo";

/// One demo workload: an app and its sidecar.
#[derive(Debug)]
struct Workload {
    name: &'static str,
    /// The logical service the workload serves (a name in [`NAMESPACE`]).
    service: &'static str,
    ip: Ipv4Addr,
    /// URLs the app calls for every request it serves.
    calls: Vec<String>,
    /// Called from outside the mesh (the load generator), so its inbound traffic is plaintext.
    ingress: bool,
}

impl Workload {
    /// The workload's mTLS identity, as Linkerd names a service account's.
    fn identity(&self) -> String {
        format!(
            "{}.{NAMESPACE}.serviceaccount.identity.linkerd.cluster.local",
            self.name
        )
    }

    /// The fully-qualified name of the workload's service.
    fn fqdn(&self) -> String {
        fqdn(self.service)
    }
}

fn fqdn(service: &str) -> String {
    format!("{service}.{NAMESPACE}.svc.cluster.local")
}

/// The control plane: its process and what sidecars need to reach it.
#[derive(Debug)]
struct ControlPlane {
    process: Child,
    destination: Child,
    ip: Ipv4Addr,
    trust_anchor_pem: String,
}

#[derive(Debug)]
struct Running {
    workload: Workload,
    app: Child,
    proxy: Child,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let workloads = demo_workloads(args.base_ip);
    let exe = std::env::current_exe().context("cannot find the mesh binary")?;
    let logs = std::env::temp_dir().join(format!("mesh-up-{}", std::process::id()));
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let cp_ip = offset(args.base_ip, -1);
    let mut cp = start_control_plane(&exe, cp_ip, &workloads, &logs).await?;
    let mut running = Vec::new();
    for w in workloads {
        let proxy = spawn_proxy(&exe, &w, &cp, &logs)?;
        let app = spawn_app(&exe, &w, &logs)?;
        running.push(Running {
            workload: w,
            app,
            proxy,
        });
    }
    let outcome = serve(&args, &mut running, &mut cp, &logs).await;
    shutdown(&mut running).await;
    for p in [&mut cp.process, &mut cp.destination] {
        let _ = p.start_kill();
        let _ = p.wait().await;
    }
    outcome
}

fn offset(ip: Ipv4Addr, by: i16) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    let d = u8::try_from((i16::from(d) + by).clamp(1, 254)).unwrap_or(1);
    Ipv4Addr::new(a, b, c, d)
}

/// Writes fresh trust material and a token per workload, and starts the identity service; writes
/// the registry of every workload's service and starts the destination service.
async fn start_control_plane(
    exe: &std::path::Path,
    ip: Ipv4Addr,
    workloads: &[Workload],
    logs: &std::path::Path,
) -> anyhow::Result<ControlPlane> {
    use linkerd_identity::{token, trust};
    let dir = logs.join("identity");
    let files = trust::generate_trust(&trust::TrustOptions::default())
        .context("cannot generate a trust anchor")?;
    let paths = files.write(&dir).context("cannot write the trust files")?;
    let key_file = dir.join("token.key");
    token::write_key_file(&key_file).context("cannot write the token key")?;
    let tokens = token::LocalTokens::from_key_file_contents(&std::fs::read(&key_file)?)
        .context("cannot read the token key")?;
    for w in workloads {
        let id = w.identity().parse().context("invalid workload identity")?;
        let t = tokens.mint(
            &id,
            Duration::from_secs(24 * 3600),
            std::time::SystemTime::now(),
        );
        std::fs::write(dir.join(format!("{}.token", w.name)), t)?;
    }
    let process = Command::new(exe)
        .args(["identity", "serve"])
        .args(["--addr", &SocketAddr::from((ip, IDENTITY_PORT)).to_string()])
        .args([
            "--admin-addr",
            &SocketAddr::from((ip, IDENTITY_ADMIN_PORT)).to_string(),
        ])
        .arg("--trust-anchors")
        .arg(&paths.anchor)
        .arg("--issuer-cert")
        .arg(&paths.issuer_cert)
        .arg("--issuer-key")
        .arg(&paths.issuer_key)
        .arg("--token-key")
        .arg(&key_file)
        .stdin(Stdio::null())
        .stdout(log_file(logs, "identity")?)
        .stderr(log_file(logs, "identity.err")?)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the identity service")?;
    let registry = logs.join("registry.yaml");
    std::fs::write(&registry, registry_yaml(workloads))
        .with_context(|| format!("cannot write {}", registry.display()))?;
    let destination = Command::new(exe)
        .args(["destination", "serve"])
        .arg("--registry")
        .arg(&registry)
        .args([
            "--addr",
            &SocketAddr::from((ip, DESTINATION_PORT)).to_string(),
        ])
        .args([
            "--admin-addr",
            &SocketAddr::from((ip, DESTINATION_ADMIN_PORT)).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log_file(logs, "destination")?)
        .stderr(log_file(logs, "destination.err")?)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the destination service")?;
    Ok(ControlPlane {
        process,
        destination,
        ip,
        trust_anchor_pem: files.anchor_pem,
    })
}

async fn serve(
    args: &Args,
    running: &mut [Running],
    cp: &mut ControlPlane,
    logs: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    wait_control_plane(cp, logs).await?;
    wait_ready(running, logs).await?;
    if !args.json {
        println!(
            "mesh up: {} workloads on loopback; logs in {}",
            running.len(),
            logs.display()
        );
        println!(
            "Try: curl -H 'Host: {}' http://{}/",
            running[0].workload.fqdn(),
            inbound(running[0].workload.ip)
        );
    }

    let front = inbound(running[0].workload.ip);
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(generate_load(front, args.rps, sent.clone(), failed.clone()));

    let first = scrape_all(running).await;
    let mut prev = first.clone();
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if let Some(w) = running.iter_mut().find_map(exited) {
            bail!("{w}; see the logs in {}", logs.display());
        }
        for (name, p) in [
            ("identity", &mut cp.process),
            ("destination", &mut cp.destination),
        ] {
            if let Ok(Some(status)) = p.try_wait() {
                bail!(
                    "the {name} service exited ({status}); see the logs in {}",
                    logs.display()
                );
            }
        }
        let now = scrape_all(running).await;
        if !args.json {
            print_table(
                running,
                &prev,
                &now,
                sent.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
            );
        }
        prev = now;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    load.abort();
    let secs = started.elapsed().as_secs_f64();
    let last = scrape_all(running).await;
    let cp_rss_kb = [&cp.process, &cp.destination]
        .iter()
        .map(|p| p.id().and_then(rss_kb))
        .sum::<Option<u64>>();
    summarize(
        cp_rss_kb,
        args,
        running,
        &first,
        &last,
        secs,
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

fn demo_workloads(base: Ipv4Addr) -> Vec<Workload> {
    let ip = |i: u8| {
        let [a, b, c, d] = base.octets();
        Ipv4Addr::new(a, b, c, d.saturating_add(i))
    };
    vec![
        Workload {
            name: "frontend",
            service: "frontend",
            ip: ip(0),
            calls: vec![
                format!("http://{}:{APP_PORT}/api", fqdn("backend")),
                format!("http://{}:{APP_PORT}/quote", fqdn("quotes")),
            ],
            ingress: true,
        },
        Workload {
            name: "backend-v1",
            service: "backend",
            ip: ip(1),
            calls: vec![],
            ingress: false,
        },
        Workload {
            name: "backend-v2",
            service: "backend",
            ip: ip(2),
            calls: vec![],
            ingress: false,
        },
        Workload {
            name: "quotes",
            service: "quotes",
            ip: ip(3),
            calls: vec![],
            ingress: false,
        },
    ]
}

/// The destination service's registry: every service on the app port, its endpoints the
/// inbound proxies of the workloads serving it (every workload has its own loopback IP, the
/// sidecar listens on the inbound port), each with the workload's identity.
fn registry_yaml(workloads: &[Workload]) -> String {
    let mut services: Vec<&str> = workloads.iter().map(|w| w.service).collect();
    services.dedup();
    let mut out = String::from("services:\n");
    for svc in services {
        out.push_str(&format!(
            "  - name: {svc}\n    namespace: {NAMESPACE}\n    ports: [{APP_PORT}]\n    endpoints:\n"
        ));
        for w in workloads.iter().filter(|w| w.service == svc) {
            out.push_str(&format!(
                "      - {{ip: {}, port: {INBOUND_PORT}, identity: {}, labels: {{pod: {}}}}}\n",
                w.ip,
                w.identity(),
                w.name
            ));
        }
    }
    out
}

fn inbound(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, INBOUND_PORT))
}

fn admin(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, ADMIN_PORT))
}

fn log_file(logs: &std::path::Path, name: &str) -> anyhow::Result<Stdio> {
    let path: PathBuf = logs.join(format!("{name}.log"));
    let f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Stdio::from(f))
}

fn spawn_proxy(
    exe: &std::path::Path,
    w: &Workload,
    cp: &ControlPlane,
    logs: &std::path::Path,
) -> anyhow::Result<Child> {
    let token = logs.join("identity").join(format!("{}.token", w.name));
    Command::new(exe)
        .arg("proxy")
        .env(
            "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
            &cp.trust_anchor_pem,
        )
        .env("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", w.identity())
        .env(
            "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
            SocketAddr::from((cp.ip, IDENTITY_PORT)).to_string(),
        )
        .env("LINKERD2_PROXY_IDENTITY_TOKEN_FILE", token)
        .env(
            "LINKERD2_PROXY_INBOUND_LISTEN_ADDR",
            inbound(w.ip).to_string(),
        )
        .env(
            "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR",
            SocketAddr::from((w.ip, OUTBOUND_PORT)).to_string(),
        )
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", admin(w.ip).to_string())
        .env(
            "MESH_PROXY_INBOUND_FORWARD_ADDR",
            SocketAddr::from((w.ip, APP_PORT)).to_string(),
        )
        .env(
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
            SocketAddr::from((cp.ip, DESTINATION_PORT)).to_string(),
        )
        .env("LINKERD2_PROXY_CORES", "1")
        .env("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "5s")
        .env("LINKERD2_PROXY_LOG", "warn,linkerd_proxy=info")
        .stdin(Stdio::null())
        .stdout(log_file(logs, &format!("{}-proxy", w.name))?)
        .stderr(log_file(logs, &format!("{}-proxy.err", w.name))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the sidecar of {}", w.name))
}

fn spawn_app(exe: &std::path::Path, w: &Workload, logs: &std::path::Path) -> anyhow::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("demo-app")
        .args(["--name", w.name])
        .args(["--listen", &SocketAddr::from((w.ip, APP_PORT)).to_string()])
        .args([
            "--via",
            &SocketAddr::from((w.ip, OUTBOUND_PORT)).to_string(),
        ]);
    for c in &w.calls {
        cmd.args(["--call", c]);
    }
    cmd.stdin(Stdio::null())
        .stdout(log_file(logs, w.name)?)
        .stderr(log_file(logs, &format!("{}.err", w.name))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", w.name))
}

fn exited(r: &mut Running) -> Option<String> {
    for (what, child) in [("app", &mut r.app), ("sidecar", &mut r.proxy)] {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(format!(
                "the {what} of {} exited ({status})",
                r.workload.name
            ));
        }
    }
    None
}

async fn wait_control_plane(cp: &mut ControlPlane, logs: &std::path::Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let services = [
        ("identity", IDENTITY_ADMIN_PORT),
        ("destination", DESTINATION_ADMIN_PORT),
    ];
    for (name, port) in services {
        let admin = SocketAddr::from((cp.ip, port));
        loop {
            let child = if name == "identity" {
                &mut cp.process
            } else {
                &mut cp.destination
            };
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(logs.join(format!("{name}.err.log")))
                    .unwrap_or_default();
                bail!("the {name} service exited ({status}): {}", err.trim());
            }
            if get(admin, "/ready").await.is_ok_and(|s| s == 200) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the {name} service did not become ready within 15 s; see {}",
                    logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn wait_ready(running: &mut [Running], logs: &std::path::Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for r in running.iter_mut() {
        loop {
            if let Some(e) = exited(r) {
                let err = std::fs::read_to_string(
                    logs.join(format!("{}-proxy.err.log", r.workload.name)),
                )
                .unwrap_or_default();
                bail!("{e}: {}", err.trim());
            }
            let w = &r.workload;
            let ready = get(admin(w.ip), "/ready").await.is_ok_and(|s| s == 200)
                && tokio::net::TcpStream::connect((w.ip, APP_PORT))
                    .await
                    .is_ok();
            if ready {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not become ready within 15 s; see {}",
                    w.name,
                    logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Sends `rps` requests per second to the front door over one keep-alive connection,
/// reconnecting after failures.
async fn generate_load(front: SocketAddr, rps: u32, sent: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    loop {
        tick.tick().await;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = match tokio::net::TcpStream::connect(front).await {
                Ok(s) => match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                    Ok((tx, conn)) => {
                        tokio::spawn(conn);
                        Some(tx)
                    }
                    Err(_) => None,
                },
                Err(_) => None,
            };
        }
        sent.fetch_add(1, Ordering::Relaxed);
        let ok = match sender.as_mut() {
            Some(tx) => {
                let req = http::Request::get("/")
                    .header(http::header::HOST, fqdn("frontend"))
                    .body(Empty::new());
                match req {
                    Ok(req) => match tx.send_request(req).await {
                        Ok(rsp) => {
                            let status = rsp.status();
                            rsp.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                }
            }
            None => false,
        };
        if !ok {
            failed.fetch_add(1, Ordering::Relaxed);
            sender = None;
        }
    }
}

async fn scrape_all(running: &[Running]) -> Vec<Snapshot> {
    let mut out = Vec::with_capacity(running.len());
    for r in running {
        let text = stat::scrape(admin(r.workload.ip)).await.unwrap_or_default();
        out.push(stat::parse(&text, "inbound"));
    }
    out
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let stream = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await??;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let rsp = tokio::time::timeout(Duration::from_secs(1), tx.send_request(req)).await??;
    Ok(rsp.status().as_u16())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |ms| format!("{ms:.1}ms"))
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.2}%", r * 100.0))
}

fn print_table(running: &[Running], prev: &[Snapshot], now: &[Snapshot], sent: u64, failed: u64) {
    if std::io::stdout().is_terminal() {
        print!("\x1b[2J\x1b[H");
    }
    println!(
        "{:<12} {:<15} {:>8} {:>9} {:>8} {:>8} {:>6} {:>8}",
        "WORKLOAD", "SERVICE", "RPS", "SUCCESS", "P50", "P99", "MTLS", "RSS"
    );
    for (i, r) in running.iter().enumerate() {
        let w = Window::between(&prev[i], &now[i], 1.0);
        println!(
            "{:<12} {:<15} {:>8.1} {:>9} {:>8} {:>8} {:>6} {:>7.1}M",
            r.workload.name,
            r.workload.service,
            w.rps,
            fmt_pct(w.success_rate),
            fmt_ms(w.p50_ms),
            fmt_ms(w.p99_ms),
            fmt_pct(w.tls_fraction),
            now[i].rss_bytes / 1e6,
        );
    }
    println!("\nload generator: {sent} sent, {failed} failed. Ctrl-C to stop.");
    println!(
        "MTLS: share of inbound requests that arrived over mTLS from another sidecar (the frontend is called from outside the mesh)."
    );
}

/// Resident memory of a process, from /proc.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    cp_rss_kb: Option<u64>,
    args: &Args,
    running: &[Running],
    first: &[Snapshot],
    last: &[Snapshot],
    secs: f64,
    sent: u64,
    failed: u64,
) -> anyhow::Result<ExitCode> {
    let mut all_ok = sent > 0 && failed == 0;
    let mut workloads = serde_json::Map::new();
    for (i, r) in running.iter().enumerate() {
        let w = Window::between(&first[i], &last[i], secs);
        all_ok &= w.requests > 0.0 && w.success_rate == Some(1.0);
        // Traffic between workloads must all be mTLS; the front door is called from outside.
        if !r.workload.ingress {
            all_ok &= w.tls_fraction == Some(1.0);
        }
        workloads.insert(
            r.workload.name.to_string(),
            serde_json::json!({
                "service": r.workload.fqdn(),
                "requests": w.requests,
                "rps": w.rps,
                "success_rate": w.success_rate,
                "p50_ms": w.p50_ms,
                "p99_ms": w.p99_ms,
                "mtls_fraction": w.tls_fraction,
                "identity": r.workload.identity(),
                "ingress": r.workload.ingress,
                "sidecar_rss_kb": (last[i].rss_bytes / 1024.0).round(),
            }),
        );
    }
    let summary = serde_json::json!({
        "seconds": secs,
        "control_plane_rss_kb": cp_rss_kb,
        "load": {"sent": sent, "failed": failed},
        "workloads": workloads,
        "ok": all_ok,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "\n{}",
            if all_ok {
                "every request succeeded"
            } else {
                "some requests failed"
            }
        );
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Asks every sidecar to drain, stops the apps, and makes sure nothing is left running.
async fn shutdown(running: &mut [Running]) {
    for r in running.iter_mut() {
        let _ = r.app.start_kill();
        let addr = admin(r.workload.ip);
        let _ = post_shutdown(addr).await;
    }
    for r in running.iter_mut() {
        let _ = r.app.wait().await;
        if tokio::time::timeout(Duration::from_secs(6), r.proxy.wait())
            .await
            .is_err()
        {
            let _ = r.proxy.start_kill();
            let _ = r.proxy.wait().await;
        }
    }
}

async fn post_shutdown(addr: SocketAddr) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await??;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post("/shutdown")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    tokio::time::timeout(Duration::from_secs(1), tx.send_request(req)).await??;
    Ok(())
}
