//! `mesh up`: the mesh on one machine.
//!
//! Generates a fresh trust anchor and issuer, starts the control plane (`mesh identity serve`,
//! and `mesh destination serve` with a registry file naming every workload's sidecar), then
//! each workload of the mesh file (the built-in demo, or the user's `-f mesh.yaml`) as its own
//! process on its own loopback address, behind its own sidecar (`mesh proxy`, a separate
//! process) with its own identity; drives load at the front door, and shows what the sidecars
//! measure. Workloads reach each other only through their sidecars: the app uses its
//! sidecar's outbound listener as an HTTP proxy, the sidecar resolves the service through the
//! destination service, balances over its endpoints and dials the chosen peer's inbound proxy
//! over mTLS (verifying the identity discovery gave), which delivers to the peer app.
//!
//! A workload that fails (its app or sidecar exits, or it never listens) is reported with the
//! end of its error log and the rest keep running; the control plane failing ends the run.

mod config;

pub use config::MeshFile;

use crate::out::{self, outln};
use crate::stat::{self, Scrape, Window};
use anyhow::{Context, bail};
use bytes::Bytes;
use config::WorkloadSpec;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    io::IsTerminal,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
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
    /// A mesh file naming your own workloads (see examples/mesh.yaml). Default: the built-in
    /// demo (examples/demo.yaml).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Print one JSON summary at the end instead of the live table. Exits 0 only if every
    /// workload ran, every route's requests succeeded and all traffic between workloads was
    /// mTLS.
    #[arg(long)]
    json: bool,
    /// Requests per second from the load generator (default: the file's `load.rps`).
    #[arg(long)]
    rps: Option<u32>,
    /// The first loopback address to use; the control plane takes the one before it and
    /// workloads consecutive ones from it.
    #[arg(long, default_value = "127.0.0.10")]
    base_ip: Ipv4Addr,
    /// Where to write what is running (addresses of every sidecar's admin server, the control
    /// plane), for `mesh stat`, `mesh edges`, `mesh graph` and `mesh check`.
    #[arg(long, default_value_os_t = crate::viz::default_state_file())]
    state: PathBuf,
    /// The sidecar: the path of a `linkerd-proxy` binary, or `builtin` for `mesh proxy` (the
    /// same proxy code inside this binary). By default the standalone `linkerd-proxy` next to
    /// this binary when it was built with it (`cargo build --release -p mesh -p
    /// linkerd-proxy`), else `builtin`. The standalone binary is a quarter the size, so each
    /// sidecar maps fewer of its (shared) pages: RSS ≈ 7 MB instead of ≈ 13 MB.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// How long a workload has to listen on its port and its sidecar to be ready.
    #[arg(long, default_value = "20")]
    ready_timeout_secs: u64,
}

const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
const ADMIN_PORT: u16 = 4191;
const IDENTITY_PORT: u16 = 8080;
const IDENTITY_ADMIN_PORT: u16 = 9990;
const DESTINATION_PORT: u16 = 8086;
const DESTINATION_ADMIN_PORT: u16 = 9996;
const POLICY_PORT: u16 = 8090;
const POLICY_ADMIN_PORT: u16 = 9997;

/// One workload of the mesh file, placed on its loopback address.
#[derive(Debug)]
struct Workload {
    spec: WorkloadSpec,
    namespace: String,
    ip: Ipv4Addr,
}

impl Workload {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn service(&self) -> &str {
        self.spec.service()
    }

    /// The workload's mTLS identity, as Linkerd names a service account's.
    fn identity(&self) -> String {
        format!(
            "{}.{}.serviceaccount.identity.linkerd.cluster.local",
            self.spec.name, self.namespace
        )
    }

    /// The fully-qualified name of the workload's service.
    fn fqdn(&self) -> String {
        fqdn(self.service(), &self.namespace)
    }

    fn app_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.spec.port))
    }
}

fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.cluster.local")
}

/// The control plane: its processes and what sidecars need to reach it.
#[derive(Debug)]
struct ControlPlane {
    identity: Child,
    destination: Child,
    policy: Child,
    ip: Ipv4Addr,
    trust_anchor_pem: String,
    trust_anchor_file: PathBuf,
}

#[derive(Debug)]
struct Running {
    workload: Workload,
    app: Option<Child>,
    proxy: Option<Child>,
    /// Why the workload is not running, once it has failed.
    failed: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = match &args.file {
        Some(path) => MeshFile::load(path)?,
        None => MeshFile::demo()?,
    };
    let exe = std::env::current_exe().context("cannot find the mesh binary")?;
    let logs = std::env::temp_dir().join(format!("mesh-up-{}", std::process::id()));
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let workloads: Vec<Workload> = file
        .workloads
        .iter()
        .enumerate()
        .map(|(i, spec)| Workload {
            spec: spec.clone(),
            namespace: file.namespace.clone(),
            ip: offset(args.base_ip, i16::try_from(i).unwrap_or(i16::MAX)),
        })
        .collect();
    if let Some(last) = workloads.last()
        && last.ip.octets()[3] < args.base_ip.octets()[3]
    {
        bail!(
            "{} workloads do not fit after {}",
            workloads.len(),
            args.base_ip
        );
    }
    let cp_ip = offset(args.base_ip, -1);
    let mut cp = start_control_plane(&exe, cp_ip, &file, &workloads, &logs).await?;
    let proxy = ProxyCommand::choose(&exe, args.proxy_bin.as_deref())?;
    let mut running = Vec::new();
    for w in workloads {
        running.push(start_workload(&exe, &proxy, w, &file, &cp, &logs));
    }
    let outcome = serve(&args, &file, &proxy, &mut running, &mut cp, &logs).await;
    let _ = std::fs::remove_file(&args.state);
    shutdown(&mut running).await;
    for p in [&mut cp.identity, &mut cp.destination, &mut cp.policy] {
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
    exe: &Path,
    ip: Ipv4Addr,
    file: &MeshFile,
    workloads: &[Workload],
    logs: &Path,
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
        std::fs::write(dir.join(format!("{}.token", w.name())), t)?;
    }
    let identity = Command::new(exe)
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
        // Out of the terminal's process group: Ctrl-C reaches `mesh up`, which drains
        // everything in order.
        .process_group(0)
        .spawn()
        .context("cannot start the identity service")?;
    let registry = logs.join("registry.yaml");
    std::fs::write(&registry, registry_yaml(file, workloads))
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
        // Out of the terminal's process group: Ctrl-C reaches `mesh up`, which drains
        // everything in order.
        .process_group(0)
        .spawn()
        .context("cannot start the destination service")?;
    let policy = Command::new(exe)
        .args(["policy", "serve"])
        .arg("--registry")
        .arg(&registry)
        .args(["--addr", &SocketAddr::from((ip, POLICY_PORT)).to_string()])
        .args([
            "--admin-addr",
            &SocketAddr::from((ip, POLICY_ADMIN_PORT)).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log_file(logs, "policy")?)
        .stderr(log_file(logs, "policy.err")?)
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .context("cannot start the policy service")?;
    Ok(ControlPlane {
        identity,
        destination,
        policy,
        ip,
        trust_anchor_pem: files.anchor_pem,
        trust_anchor_file: paths.anchor.clone(),
    })
}

/// Starts a workload's sidecar and app; a failure to start either is recorded on the
/// workload, not fatal to the mesh.
fn start_workload(
    exe: &Path,
    proxy: &ProxyCommand,
    w: Workload,
    file: &MeshFile,
    cp: &ControlPlane,
    logs: &Path,
) -> Running {
    let mut r = Running {
        workload: w,
        app: None,
        proxy: None,
        failed: None,
    };
    match spawn_proxy(proxy, &r.workload, cp, logs) {
        Ok(p) => r.proxy = Some(p),
        Err(e) => r.failed = Some(format!("{e:#}")),
    }
    match spawn_app(exe, &r.workload, file, logs) {
        Ok(a) => r.app = Some(a),
        Err(e) => r.failed = Some(format!("{e:#}")),
    }
    r
}

async fn serve(
    args: &Args,
    file: &MeshFile,
    proxy: &ProxyCommand,
    running: &mut [Running],
    cp: &mut ControlPlane,
    logs: &Path,
) -> anyhow::Result<ExitCode> {
    wait_control_plane(cp, logs).await?;
    wait_ready(running, logs, Duration::from_secs(args.ready_timeout_secs)).await;
    // The summary's baseline, taken before the state file announces the mesh: whatever anyone
    // sends once they can find it (`mesh stat`, a test, the load below) falls in the window.
    let first = scrape_all(running).await;
    let started = tokio::time::Instant::now();
    write_state(&args.state, file, running, cp, logs)?;
    let front = file.load.as_ref().and_then(|l| {
        running
            .iter()
            .find(|r| r.workload.service() == l.service && r.failed.is_none())
            .map(|r| (r, l))
    });
    if !args.json {
        outln!(
            "mesh up: {} workloads on loopback; logs in {}; state in {}",
            running.len(),
            logs.display(),
            args.state.display()
        )?;
        if let Some(r) = running.iter().find(|r| r.failed.is_none()) {
            outln!(
                "Try: curl -H 'Host: {}:{}' http://{}/",
                r.workload.fqdn(),
                r.workload.spec.port,
                inbound(r.workload.ip)
            )?;
        }
        outln!("Sidecars: {}", proxy.describe())?;
        outln!("Other terminals: mesh stat | mesh edges | mesh graph | mesh check")?;
    }
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load = front.map(|(r, l)| {
        let authority = format!("{}:{}", r.workload.fqdn(), r.workload.spec.port);
        tokio::spawn(generate_load(
            inbound(r.workload.ip),
            authority,
            l.path.clone(),
            args.rps.unwrap_or(l.rps),
            sent.clone(),
            failed.clone(),
        ))
    });
    if file.load.is_some() && load.is_none() {
        eprintln!("mesh up: no workload serving the load's service is running; no load sent");
    }

    let mut prev = first.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        for r in running.iter_mut() {
            if r.failed.is_none()
                && let Some(e) = exited(r, logs)
            {
                if !args.json {
                    eprintln!("mesh up: {e}");
                }
                r.failed = Some(e);
            }
        }
        for (name, p) in [
            ("identity", &mut cp.identity),
            ("destination", &mut cp.destination),
            ("policy", &mut cp.policy),
        ] {
            if let Ok(Some(status)) = p.try_wait() {
                bail!(
                    "the {name} service exited ({status}): {}",
                    tail(&logs.join(format!("{name}.err.log")))
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
            )?;
        }
        prev = now;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    if let Some(load) = load {
        load.abort();
    }
    let secs = started.elapsed().as_secs_f64();
    let last = scrape_all(running).await;
    let cp_rss_kb = [&cp.identity, &cp.destination, &cp.policy]
        .iter()
        .map(|p| p.id().and_then(rss_kb))
        .sum::<Option<u64>>();
    let summary = summarize(
        proxy,
        cp_rss_kb,
        running,
        &first,
        &last,
        secs,
        file.load.is_some(),
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    let ok = summary["ok"] == serde_json::Value::Bool(true);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        for problem in summary["problems"].as_array().into_iter().flatten() {
            outln!("problem: {}", problem.as_str().unwrap_or_default())?;
        }
        outln!(
            "\n{}",
            if ok {
                "every workload ran, every request succeeded, all traffic between workloads was mTLS"
            } else {
                "not everything went well: see the problems above and the logs"
            }
        )?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The destination service's registry: every service on its port, its endpoints the inbound
/// proxies of the workloads serving it (every workload has its own loopback IP, the sidecar
/// listens on the inbound port), each with the workload's identity.
fn registry_yaml(file: &MeshFile, workloads: &[Workload]) -> String {
    let mut out = String::from("services:\n");
    let mut service = |name: &str, port: u16, members: &mut dyn Iterator<Item = &Workload>| {
        out.push_str(&format!(
            "  - name: {name}\n    namespace: {}\n    ports: [{port}]\n    endpoints:\n",
            file.namespace
        ));
        for w in members {
            out.push_str(&format!(
                "      - {{ip: {}, port: {INBOUND_PORT}, identity: {}, labels: {{pod: {}, app: {}}}}}\n",
                w.ip,
                w.identity(),
                w.name(),
                w.service()
            ));
        }
    };
    for (svc, port) in file.services() {
        service(
            svc,
            port,
            &mut workloads.iter().filter(|w| w.service() == svc),
        );
    }
    // Each workload of a shared service is also its own service, for routes that split.
    for w in workloads.iter().filter(|w| w.service() != w.name()) {
        service(w.name(), w.spec.port, &mut std::iter::once(w));
    }
    // The file's policy sections, for the policy service (JSON is YAML).
    if let Some(policy) = &file.policy {
        for (section, value) in policy {
            out.push_str(&format!("{section}: {value}\n"));
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

fn log_file(logs: &Path, name: &str) -> anyhow::Result<Stdio> {
    let path: PathBuf = logs.join(format!("{name}.log"));
    let f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Stdio::from(f))
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        format!("nothing in {}", path.display())
    } else {
        t
    }
}

/// How to start a sidecar: a proxy binary, or `mesh proxy`.
#[derive(Debug)]
struct ProxyCommand {
    program: PathBuf,
    args: Vec<&'static str>,
}

impl ProxyCommand {
    fn choose(exe: &Path, explicit: Option<&Path>) -> anyhow::Result<Self> {
        let builtin = Self {
            program: exe.to_path_buf(),
            args: vec!["proxy"],
        };
        match explicit {
            None => Ok(Self::standalone_beside(exe).unwrap_or(builtin)),
            Some(p) if p.as_os_str() == "builtin" => Ok(builtin),
            Some(p) if p.is_file() => Ok(Self {
                program: p.to_path_buf(),
                args: vec![],
            }),
            Some(p) => bail!("--proxy-bin {}: no such file", p.display()),
        }
    }

    /// `linkerd-proxy` in this binary's directory, if it was built with this binary (not more
    /// than ten minutes before it: an older one may be another version of the proxy).
    fn standalone_beside(exe: &Path) -> Option<Self> {
        let path = exe.parent()?.join("linkerd-proxy");
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let (proxy, mesh) = (modified(&path)?, modified(exe)?);
        let fresh = proxy + Duration::from_secs(600) >= mesh;
        if !fresh {
            eprintln!(
                "mesh up: not using {} (older than this binary; rebuild it with \
                 `cargo build --release -p mesh -p linkerd-proxy`): sidecars run `mesh proxy`",
                path.display()
            );
        }
        fresh.then(|| Self {
            program: path,
            args: vec![],
        })
    }

    fn describe(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

fn spawn_proxy(
    proxy: &ProxyCommand,
    w: &Workload,
    cp: &ControlPlane,
    logs: &Path,
) -> anyhow::Result<Child> {
    let token = logs.join("identity").join(format!("{}.token", w.name()));
    Command::new(&proxy.program)
        .args(&proxy.args)
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
        .env("MESH_PROXY_INBOUND_FORWARD_ADDR", w.app_addr().to_string())
        .env(
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
            SocketAddr::from((cp.ip, DESTINATION_PORT)).to_string(),
        )
        .env(
            "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES",
            format!("{}.svc.cluster.local.", w.namespace),
        )
        .env(
            "LINKERD2_PROXY_POLICY_SVC_ADDR",
            SocketAddr::from((cp.ip, POLICY_PORT)).to_string(),
        )
        .env(
            "LINKERD2_PROXY_POLICY_WORKLOAD",
            serde_json::json!({"ns": w.namespace, "pod": w.name()}).to_string(),
        )
        .env("LINKERD2_PROXY_INBOUND_PORTS", w.spec.port.to_string())
        .env("LINKERD2_PROXY_CORES", "1")
        .env("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "5s")
        .env("LINKERD2_PROXY_LOG", "warn,linkerd_proxy=info")
        .stdin(Stdio::null())
        .stdout(log_file(logs, &format!("{}-proxy", w.name()))?)
        .stderr(log_file(logs, &format!("{}-proxy.err", w.name()))?)
        .kill_on_drop(true)
        // Out of the terminal's process group: Ctrl-C reaches `mesh up`, which drains
        // everything in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start the sidecar of {}", w.name()))
}

/// Runs the workload's command with `sh -c` in a working directory of its own, with the
/// environment examples/mesh.yaml documents.
fn spawn_app(exe: &Path, w: &Workload, file: &MeshFile, logs: &Path) -> anyhow::Result<Child> {
    let workdir = logs.join("work").join(w.name());
    std::fs::create_dir_all(&workdir)
        .with_context(|| format!("cannot create {}", workdir.display()))?;
    let proxy = SocketAddr::from((w.ip, OUTBOUND_PORT)).to_string();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&w.spec.command)
        .current_dir(&workdir)
        .env("MESH", exe)
        .env("MESH_IP", w.ip.to_string())
        .env("PORT", w.spec.port.to_string())
        .env("MESH_PROXY", &proxy)
        .env("http_proxy", format!("http://{proxy}"))
        .env("HTTP_PROXY", format!("http://{proxy}"))
        .env_remove("no_proxy")
        .env_remove("NO_PROXY");
    for (svc, port) in file.services() {
        cmd.env(
            config::service_env(svc),
            format!("{}:{port}", fqdn(svc, &file.namespace)),
        );
    }
    cmd.envs(&w.spec.env)
        .stdin(Stdio::null())
        .stdout(log_file(logs, w.name())?)
        .stderr(log_file(logs, &format!("{}.err", w.name()))?)
        .kill_on_drop(true)
        // Its own process group, so that stopping it stops whatever `sh` started.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", w.name()))
}

/// Whether the workload's app or sidecar has exited, with why.
fn exited(r: &mut Running, logs: &Path) -> Option<String> {
    let name = r.workload.name().to_string();
    for (what, child, log) in [
        ("app", r.app.as_mut(), format!("{name}.err.log")),
        ("sidecar", r.proxy.as_mut(), format!("{name}-proxy.err.log")),
    ] {
        if let Some(child) = child
            && let Ok(Some(status)) = child.try_wait()
        {
            return Some(format!(
                "the {what} of {name} exited ({status}): {}",
                tail(&logs.join(log))
            ));
        }
    }
    None
}

async fn wait_control_plane(cp: &mut ControlPlane, logs: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let services = [
        ("identity", IDENTITY_ADMIN_PORT),
        ("destination", DESTINATION_ADMIN_PORT),
        ("policy", POLICY_ADMIN_PORT),
    ];
    for (name, port) in services {
        let admin = SocketAddr::from((cp.ip, port));
        loop {
            let child = match name {
                "identity" => &mut cp.identity,
                "destination" => &mut cp.destination,
                _ => &mut cp.policy,
            };
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the {name} service exited ({status}): {}",
                    tail(&logs.join(format!("{name}.err.log")))
                );
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

/// Waits until every workload's sidecar is ready and its app listens; a workload that exits or
/// does not make it in time is marked failed, and the others go on.
async fn wait_ready(running: &mut [Running], logs: &Path, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<usize> = (0..running.len())
        .filter(|&i| running[i].failed.is_none())
        .collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            let r = &mut running[i];
            if let Some(e) = exited(r, logs) {
                r.failed = Some(e);
                continue;
            }
            let w = &r.workload;
            let proxy_ready = get(admin(w.ip), "/ready").await.is_ok_and(|s| s == 200);
            let app_listens = tokio::net::TcpStream::connect(w.app_addr()).await.is_ok();
            if proxy_ready && app_listens {
                continue;
            }
            if tokio::time::Instant::now() > deadline {
                r.failed = Some(if proxy_ready {
                    format!(
                        "{} did not listen on {} within {} s (its command must listen on $MESH_IP:$PORT): {}",
                        w.name(),
                        w.app_addr(),
                        timeout.as_secs(),
                        tail(&logs.join(format!("{}.err.log", w.name())))
                    )
                } else {
                    format!(
                        "the sidecar of {} was not ready within {} s: {}",
                        w.name(),
                        timeout.as_secs(),
                        tail(&logs.join(format!("{}-proxy.err.log", w.name())))
                    )
                });
                continue;
            }
            still.push(i);
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What `mesh stat`, `edges`, `graph` and `check` read to find the running mesh.
fn write_state(
    path: &Path,
    file: &MeshFile,
    running: &[Running],
    cp: &ControlPlane,
    logs: &Path,
) -> anyhow::Result<()> {
    let state = crate::viz::State {
        pid: std::process::id(),
        logs: logs.to_path_buf(),
        namespace: file.namespace.clone(),
        identity_admin: SocketAddr::from((cp.ip, IDENTITY_ADMIN_PORT)),
        destination_admin: SocketAddr::from((cp.ip, DESTINATION_ADMIN_PORT)),
        policy_admin: SocketAddr::from((cp.ip, POLICY_ADMIN_PORT)),
        trust_anchor_file: cp.trust_anchor_file.clone(),
        workloads: running
            .iter()
            .map(|r| crate::viz::StateWorkload {
                name: r.workload.name().to_string(),
                service: r.workload.fqdn(),
                identity: r.workload.identity(),
                admin: admin(r.workload.ip),
                app: r.workload.app_addr(),
                ingress: r.workload.spec.ingress,
            })
            .collect(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&state)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Sends `rps` requests per second to the front door over one keep-alive connection,
/// reconnecting after failures.
async fn generate_load(
    front: SocketAddr,
    authority: String,
    path: String,
    rps: u32,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
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
                let req = http::Request::get(path.as_str())
                    .header(http::header::HOST, authority.as_str())
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

async fn scrape_all(running: &[Running]) -> Vec<Scrape> {
    let mut out = Vec::with_capacity(running.len());
    for r in running {
        let text = stat::scrape(admin(r.workload.ip)).await.unwrap_or_default();
        out.push(Scrape::parse(&text));
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

fn print_table(
    running: &[Running],
    prev: &[Scrape],
    now: &[Scrape],
    sent: u64,
    failed: u64,
) -> std::io::Result<()> {
    if std::io::stdout().is_terminal() {
        out::print("\x1b[2J\x1b[H")?;
    }
    let mut rows = Vec::new();
    for (i, r) in running.iter().enumerate() {
        if let Some(e) = &r.failed {
            rows.push(crate::viz::Row::failed(r.workload.name(), e));
            continue;
        }
        rows.extend(crate::viz::rows(r.workload.name(), &prev[i], &now[i], 1.0));
    }
    crate::viz::print_rows(&rows)?;
    if sent > 0 {
        outln!("\nload generator: {sent} sent, {failed} failed. Ctrl-C to stop.")?;
    } else {
        outln!("\nCtrl-C to stop.")?;
    }
    outln!(
        "MTLS: share of a route's responses carried over mTLS between sidecars (a front door called from outside the mesh is plaintext)."
    )?;
    Ok(())
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

/// Proportional set size of a process (its private pages plus its share of shared ones).
fn pss_kb(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The JSON summary, with `ok` and the list of problems that made it not ok.
#[allow(clippy::too_many_arguments)]
fn summarize(
    proxy: &ProxyCommand,
    cp_rss_kb: Option<u64>,
    running: &[Running],
    first: &[Scrape],
    last: &[Scrape],
    secs: f64,
    has_load: bool,
    sent: u64,
    failed: u64,
) -> serde_json::Value {
    let mut problems = Vec::new();
    if has_load && sent == 0 {
        problems.push("the load generator sent nothing".to_string());
    }
    if failed > 0 {
        problems.push(format!("{failed} of {sent} load requests failed"));
    }
    let mut workloads = serde_json::Map::new();
    for (i, r) in running.iter().enumerate() {
        let name = r.workload.name();
        let inbound = Window::between(
            &first[i].direction("inbound"),
            &last[i].direction("inbound"),
            secs,
        );
        if let Some(e) = &r.failed {
            problems.push(e.clone());
        }
        let mut routes = Vec::new();
        let before = first[i].by_authority("outbound");
        for (authority, after) in last[i].by_authority("outbound") {
            let w = Window::between(
                &before.get(&authority).cloned().unwrap_or_default(),
                &after,
                secs,
            );
            if w.requests == 0.0 {
                continue;
            }
            if w.success_rate != Some(1.0) {
                problems.push(format!(
                    "{name} -> {authority}: success rate {}",
                    fmt_rate(w.success_rate)
                ));
            }
            if w.tls_fraction != Some(1.0) {
                problems.push(format!(
                    "{name} -> {authority}: only {} of responses over mTLS",
                    fmt_rate(w.tls_fraction)
                ));
            }
            routes.push(serde_json::json!({
                "authority": authority,
                "requests": w.requests,
                "rps": w.rps,
                "success_rate": w.success_rate,
                "p50_ms": w.p50_ms,
                "p99_ms": w.p99_ms,
                "mtls_fraction": w.tls_fraction,
            }));
        }
        if inbound.requests > 0.0 {
            if inbound.success_rate != Some(1.0) {
                problems.push(format!(
                    "{name} (inbound): success rate {}",
                    fmt_rate(inbound.success_rate)
                ));
            }
            // Traffic between workloads must all be mTLS; a front door is called from outside.
            if !r.workload.spec.ingress && inbound.tls_fraction != Some(1.0) {
                problems.push(format!(
                    "{name} (inbound): only {} of responses over mTLS",
                    fmt_rate(inbound.tls_fraction)
                ));
            }
        }
        workloads.insert(
            name.to_string(),
            serde_json::json!({
                "service": r.workload.fqdn(),
                "identity": r.workload.identity(),
                "ingress": r.workload.spec.ingress,
                "running": r.failed.is_none(),
                "error": r.failed,
                "requests": inbound.requests,
                "rps": inbound.rps,
                "success_rate": inbound.success_rate,
                "p50_ms": inbound.p50_ms,
                "p99_ms": inbound.p99_ms,
                "mtls_fraction": inbound.tls_fraction,
                "outbound": routes,
                "sidecar_rss_kb": (last[i].rss_bytes / 1024.0).round(),
                // RSS counts the binary's pages shared with every other process running it;
                // PSS divides them among those processes, so it is what each sidecar costs.
                "sidecar_pss_kb": r.proxy.as_ref().and_then(|p| p.id()).and_then(pss_kb),
            }),
        );
    }
    serde_json::json!({
        "seconds": secs,
        "control_plane_rss_kb": cp_rss_kb,
        "sidecar_command": proxy.describe(),
        "load": {"sent": sent, "failed": failed},
        "workloads": workloads,
        "problems": problems,
        "ok": problems.is_empty(),
    })
}

fn fmt_rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.2}%", r * 100.0))
}

/// Asks every sidecar to drain, stops the apps, and makes sure nothing is left running.
async fn shutdown(running: &mut [Running]) {
    for r in running.iter_mut() {
        if let Some(app) = r.app.as_mut() {
            signal_group(app, "TERM").await;
        }
        let _ = post_shutdown(admin(r.workload.ip)).await;
    }
    for r in running.iter_mut() {
        if let Some(app) = r.app.as_mut()
            && tokio::time::timeout(Duration::from_secs(3), app.wait())
                .await
                .is_err()
        {
            signal_group(app, "KILL").await;
            let _ = app.wait().await;
        }
        if let Some(proxy) = r.proxy.as_mut()
            && tokio::time::timeout(Duration::from_secs(6), proxy.wait())
                .await
                .is_err()
        {
            let _ = proxy.start_kill();
            let _ = proxy.wait().await;
        }
    }
}

/// Signals the app's process group: its `sh -c` and everything it started.
async fn signal_group(app: &mut Child, signal: &str) {
    let Some(pid) = app.id() else { return };
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !sent.is_ok_and(|s| s.success()) {
        let _ = app.start_kill();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_registry_lists_both_backends_under_one_service() {
        let file = MeshFile::demo().unwrap();
        let workloads: Vec<Workload> = file
            .workloads
            .iter()
            .enumerate()
            .map(|(i, spec)| Workload {
                spec: spec.clone(),
                namespace: file.namespace.clone(),
                ip: offset(Ipv4Addr::new(127, 0, 0, 10), i as i16),
            })
            .collect();
        let yaml = registry_yaml(&file, &workloads);
        let backend = yaml
            .split("- name: ")
            .find(|s| s.starts_with("backend"))
            .unwrap();
        assert_eq!(backend.matches("port: 4143").count(), 2, "{yaml}");
        assert!(backend.contains("backend-v1.demo.serviceaccount.identity.linkerd.cluster.local"));
        assert!(yaml.contains("ports: [9090]"), "{yaml}");
        // Each version is also a service of its own, for the 90/10 HTTPRoute.
        let v2 = yaml
            .split("- name: ")
            .find(|s| s.starts_with("backend-v2\n"))
            .unwrap();
        assert_eq!(v2.matches("port: 4143").count(), 1, "{yaml}");
        assert!(yaml.contains("httpRoutes"), "{yaml}");
    }
}
