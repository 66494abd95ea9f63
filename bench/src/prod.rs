//! The production path: pods as network namespaces on a node's bridge (`netns.rs`), the
//! iptables rules installed in each meshed pod by the real `linkerd-proxy init`, the app and
//! its sidecar inside the pod (the sidecar as uid 2102, which the rules exempt), and the load
//! generated from the client pod's own namespace, so every request crosses the same
//! redirections (`REDIRECT`, `SO_ORIGINAL_DST`), veths and bridge as in a cluster.
//!
//! ```text
//!  node (br0 10.201.0.254); identity pod: identity service :8080, its sidecar (TLS)
//!   ├ c-direct  load ────────────────────────────────────────────────► s-plain  app :8080
//!   ├ c-relay   load ─OUTPUT─► sidecar :4140 (opaque TCP) ──────────► s-plain
//!   ├ c-hop     load ─OUTPUT─► sidecar :4140 (HTTP) ────────────────► s-plain
//!   ├ c-relay2  load ─OUTPUT─► sidecar (opaque) ─► PREROUTING ─► s-relay2 sidecar :4143 (opaque) ─► app
//!   ├ c-mesh    load ─OUTPUT─► sidecar (HTTP) ═mTLS, HTTP/2═► PREROUTING ─► s-mesh sidecar :4143 ─► app
//!   └ c-mtls_h1 load ─OUTPUT─► sidecar (HTTP) ═mTLS, HTTP/1.1═► PREROUTING ─► s-mtls-h1 sidecar :4143 ─► app
//! ```
//!
//! The load generator (`bench load`, or `wrk` at saturation) asks for
//! `http://<server pod>:8080/`, as an application that knows its peer's address would. The
//! mesh's client sidecar knows that address as a meshed endpoint with the server's identity
//! (`MESH_PROXY_STATIC_ENDPOINTS=<ip>:8080=<ip>:8080#<identity>`, what a destination service
//! answers for a meshed pod), so it dials it with mTLS and HTTP/2; the server pod's
//! `PREROUTING` rule hands that connection to its sidecar. Server sidecars forward to
//! `127.0.0.1:8080` (the original destination's port), as in a pod.
//!
//! `relay` and `relay2` are floors: the same pods and rules with sidecars that only copy bytes
//! (protocol detection off for port 8080), one for the one-hop path, two for the mesh.
//! `mtls_h1` is the mesh with `MESH_PROXY_OUTBOUND_UPGRADE_HTTP1=false` on the client sidecar:
//! HTTP/1.1 over pooled mTLS connections between the sidecars instead of one HTTP/2 connection.

mod run;

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use linkerd_proxy::config;

pub use self::run::{run, wanted};
use crate::{
    mesh::{self, CLIENT_ID, SERVER_ID},
    netns::{self, Node, Pod},
    procfs::Guarded,
    proxy::{self, ProxyAddrs},
};

const APP_PORT: u16 = 8080;
const INBOUND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 4143);
const OUTBOUND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4140);
const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4191);
const IDENTITY_ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9990);
const PROXY_UID: &str = "2102";
/// The identity service's own identity (its sidecar's), as Linkerd names it.
const IDENTITY_ID: &str = "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local";
/// Runs what follows as the proxy's user, as the proxy container's `runAsUser` would.
const AS_PROXY_UID: [&str; 5] = ["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"];

/// A path of the production bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PPath {
    /// No sidecar.
    Direct,
    /// The client pod's sidecar, copying bytes: the floor under `Hop`.
    Relay,
    /// The client pod's sidecar, HTTP, plaintext to an unmeshed server pod.
    Hop,
    /// Both sidecars copying bytes: the floor under `Mesh`.
    Relay2,
    /// Both sidecars, mTLS and HTTP/2 between them.
    Mesh,
    /// `Mesh` with HTTP/1.1 between the sidecars (`MESH_PROXY_OUTBOUND_UPGRADE_HTTP1=false`).
    MtlsH1,
}

impl PPath {
    pub const ALL: [PPath; 6] = [
        PPath::Direct,
        PPath::Relay,
        PPath::Hop,
        PPath::Relay2,
        PPath::Mesh,
        PPath::MtlsH1,
    ];

    /// The path's part of a scenario name: `prod_rate1000_hop`.
    pub fn part(self) -> &'static str {
        match self {
            PPath::Direct => "direct",
            PPath::Relay => "relay",
            PPath::Hop => "hop",
            PPath::Relay2 => "relay2",
            PPath::Mesh => "mesh",
            PPath::MtlsH1 => "mtls_h1",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PPath::Direct => "client pod -> server pod (no sidecar)",
            PPath::Relay => "client pod -> its sidecar (outbound, opaque TCP) -> server pod",
            PPath::Hop => "client pod -> its sidecar (outbound, HTTP/1.1) -> server pod",
            PPath::Relay2 => {
                "client pod -> its sidecar (opaque) -> server pod's sidecar (inbound, opaque) -> app"
            }
            PPath::Mesh => {
                "client pod -> its sidecar (outbound) == mTLS, HTTP/2 ==> server pod's sidecar (inbound) -> app"
            }
            PPath::MtlsH1 => {
                "client pod -> its sidecar (outbound) == mTLS, HTTP/1.1 ==> server pod's sidecar (inbound) -> app"
            }
        }
    }

    /// The server pod it calls: the unmeshed one, or its own meshed one.
    fn server(self) -> &'static str {
        match self {
            PPath::Direct | PPath::Relay | PPath::Hop => "s-plain",
            PPath::Relay2 => "s-relay2",
            PPath::Mesh => "s-mesh",
            PPath::MtlsH1 => "s-mtls-h1",
        }
    }
}

/// A sidecar: a proxy process in a pod.
#[derive(Debug)]
pub struct Sidecar {
    /// `hop-client`, `mesh-server`, ...
    pub role: &'static str,
    pub netns: String,
    pub child: Guarded,
    pub log: PathBuf,
}

/// A path, wired: where its load starts and goes, and what it crosses.
#[derive(Debug)]
pub struct Wired {
    pub path: PPath,
    pub client: Pod,
    pub url: String,
    /// Indexes into [`Cluster::sidecars`]: the client's, then the server's.
    pub sidecars: Vec<usize>,
    /// The app (`bench server`) answering this path.
    pub app_pid: u32,
}

/// What `Cluster::start` needs.
#[derive(Clone, Copy, Debug)]
pub struct Bins<'a> {
    pub bench: &'a Path,
    pub proxy: &'a Path,
    pub mesh: &'a Path,
    pub scratch: &'a Path,
    pub log_dir: &'a Path,
    pub proxy_cores: usize,
    pub pid_file: Option<&'a Path>,
}

/// Everything the production path runs. Dropping it kills the processes, then deletes the
/// namespaces (`node` is the last field, so it is dropped last).
#[derive(Debug)]
pub struct Cluster {
    pub identity: Option<Guarded>,
    pub apps: Vec<(String, Guarded)>,
    pub sidecars: Vec<Sidecar>,
    pub paths: Vec<Wired>,
    node: Node,
}

impl Cluster {
    /// Creates the node and the pods `paths` need, installs the rules, starts the apps, the
    /// identity service (for the mesh) and the sidecars, and sends one request down each path.
    pub async fn start(b: &Bins<'_>, paths: &[PPath]) -> anyhow::Result<Self> {
        // uid 2102 reads its token, and maybe runs a copy of the proxy, from here.
        std::fs::set_permissions(b.scratch, std::fs::Permissions::from_mode(0o755))?;
        let mut node = Node::create().await?;
        let mut servers: Vec<(&'static str, Pod)> = Vec::new();
        for p in paths {
            if !servers.iter().any(|(n, _)| *n == p.server()) {
                servers.push((p.server(), node.pod(p.server()).await?));
            }
        }
        let mut clients = Vec::new();
        for p in paths {
            clients.push((*p, node.pod(&format!("c-{}", p.part())).await?));
        }
        let mut c = Cluster {
            identity: None,
            apps: Vec::new(),
            sidecars: Vec::new(),
            paths: Vec::new(),
            node,
        };
        // The init container's step, in every pod that has a sidecar.
        let meshed = |p: &Pod| {
            clients
                .iter()
                .any(|(k, c)| *k != PPath::Direct && c.netns == p.netns)
                || servers
                    .iter()
                    .any(|(n, s)| *n != "s-plain" && s.netns == p.netns)
        };
        for pod in servers
            .iter()
            .map(|(_, p)| p)
            .chain(clients.iter().map(|(_, p)| p))
        {
            if meshed(pod) {
                init_rules(b.proxy, pod).await?;
            }
        }
        for (name, pod) in &servers {
            let app = start_app(b, pod).await?;
            c.apps.push((name.to_string(), app));
        }
        let proxy_bin = proxy_bin_for_uid(b.proxy, b.scratch).await?;
        let id_dir = b.scratch.join("identity");
        let mut anchors = String::new();
        let mut identity_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, APP_PORT));
        if paths.contains(&PPath::Mesh) || paths.contains(&PPath::MtlsH1) {
            // The identity service's own pod, with its sidecar, as Linkerd deploys it: the
            // sidecar is certified over loopback, and terminates the other proxies' TLS.
            let pod = c.node.pod("identity").await?;
            init_rules(b.proxy, &pod).await?;
            let (identity, pem) = start_identity(b, &pod.netns, &id_dir).await?;
            c.identity = Some(identity);
            anchors = pem;
            let mut env =
                mesh::identity_env(&anchors, identity_addr, &id_dir, "identity", IDENTITY_ID);
            env.push((config::ENV_IDENTITY_SVC_NAME, IDENTITY_ID.to_string()));
            let i = c.spawn_sidecar(b, &proxy_bin, "identity", &pod, &env)?;
            c.wait_ready(i).await?;
            identity_addr = SocketAddr::from((pod.ip, APP_PORT));
        }
        let identity_env = |name: &str, id: &str| {
            let mut env = mesh::identity_env(&anchors, identity_addr, &id_dir, name, id);
            env.push((config::ENV_IDENTITY_SVC_NAME, IDENTITY_ID.to_string()));
            env
        };
        let opaque = || vec![(config::ENV_OUTBOUND_OPAQUE_PORTS, APP_PORT.to_string())];
        for (path, client) in &clients {
            let (srv_name, srv) = servers
                .iter()
                .find(|(n, _)| *n == path.server())
                .context("no server pod")?;
            let url = format!("http://{}:{APP_PORT}/", srv.ip);
            let mut cars = Vec::new();
            let (client_env, server_env) = match path {
                PPath::Direct => (None, None),
                PPath::Relay | PPath::Hop => {
                    let env = if *path == PPath::Relay {
                        opaque()
                    } else {
                        vec![]
                    };
                    (Some(env), None)
                }
                PPath::Relay2 => (
                    Some(opaque()),
                    Some(vec![(
                        config::ENV_INBOUND_OPAQUE_PORTS,
                        APP_PORT.to_string(),
                    )]),
                ),
                PPath::Mesh | PPath::MtlsH1 => {
                    let mut ce = identity_env("client", CLIENT_ID);
                    let name = format!("{}:{APP_PORT}", srv.ip);
                    ce.push((
                        config::ENV_STATIC_ENDPOINTS,
                        format!("{name}={name}#{SERVER_ID}"),
                    ));
                    if *path == PPath::MtlsH1 {
                        ce.push((config::ENV_OUTBOUND_UPGRADE_HTTP1, "false".into()));
                    }
                    (Some(ce), Some(identity_env("server", SERVER_ID)))
                }
            };
            if let Some(env) = server_env {
                let role = roles(*path)[1];
                cars.push(c.spawn_sidecar(b, &proxy_bin, role, srv, &env)?);
            }
            if let Some(env) = client_env {
                let role = roles(*path)[0];
                cars.insert(0, c.spawn_sidecar(b, &proxy_bin, role, client, &env)?);
            }
            let app_pid = c
                .apps
                .iter()
                .find(|(n, _)| n == srv_name)
                .map(|(_, g)| g.pid)
                .context("no app")?;
            c.paths.push(Wired {
                path: *path,
                client: client.clone(),
                url,
                sidecars: cars,
                app_pid,
            });
        }
        let started = Instant::now();
        for i in 0..c.sidecars.len() {
            c.wait_ready(i).await?;
        }
        eprintln!(
            "bench: prod: {} sidecars ready in {:.0} ms",
            c.sidecars.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        for w in &c.paths {
            let addr = w.url.trim_start_matches("http://").trim_end_matches('/');
            fetch(b.bench, &w.client.netns, addr, "/", false)
                .await
                .with_context(|| format!("a request on the prod {} path", w.path.part()))?;
        }
        Ok(c)
    }

    fn spawn_sidecar(
        &mut self,
        b: &Bins<'_>,
        bin: &Path,
        role: &'static str,
        pod: &Pod,
        env: &[(&str, String)],
    ) -> anyhow::Result<usize> {
        let log = b.log_dir.join(format!("prod-{role}-proxy.log"));
        let mut cmd = netns::exec_in(&pod.netns, Path::new("setpriv"));
        cmd.args(AS_PROXY_UID).arg(bin);
        let addrs = ProxyAddrs {
            inbound: INBOUND,
            outbound: OUTBOUND,
            admin: ADMIN,
        };
        let mut env = env.to_vec();
        // `BENCH_PROD_PROXY_LOG=debug` when a sidecar will not start: `warn` says little.
        if let Ok(level) = std::env::var("BENCH_PROD_PROXY_LOG") {
            env.push((config::ENV_LOG, level));
        }
        proxy::proxy_env(&mut cmd, b.proxy_cores, addrs, &env, &log)?;
        let child = Guarded::spawn("sidecar", &mut cmd, b.pid_file)?;
        self.sidecars.push(Sidecar {
            role,
            netns: pod.netns.clone(),
            child,
            log,
        });
        Ok(self.sidecars.len() - 1)
    }

    /// Waits up to 10 s for a sidecar's `/ready` (with identity: once it is certified).
    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let bench = std::env::current_exe()?;
        loop {
            let s = &mut self.sidecars[i];
            s.child.check_running().map_err(|e| {
                anyhow::anyhow!("{e}\n{} log:\n{}", s.role, proxy::log_tail(&s.log))
            })?;
            match fetch(&bench, &s.netns, &ADMIN.to_string(), "/ready", false).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "the {} sidecar is not ready: {e:#}\nlog:\n{}",
                        s.role,
                        proxy::log_tail(&s.log)
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Fails if any process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (_, app) in &mut self.apps {
            app.check_running()?;
        }
        if let Some(id) = &mut self.identity {
            id.check_running()?;
        }
        for s in &mut self.sidecars {
            s.child.check_running().map_err(|e| {
                anyhow::anyhow!("{e}\n{} log:\n{}", s.role, proxy::log_tail(&s.log))
            })?;
        }
        Ok(())
    }

    /// Kills every process, then deletes the namespaces and waits for that.
    pub async fn stop(mut self) {
        for s in &mut self.sidecars {
            let _ = s.child.wait_or_kill(Duration::ZERO).await;
        }
        for (_, app) in &mut self.apps {
            let _ = app.wait_or_kill(Duration::ZERO).await;
        }
        if let Some(id) = &mut self.identity {
            let _ = id.wait_or_kill(Duration::ZERO).await;
        }
        let Cluster { node, .. } = self;
        node.remove().await;
    }
}

/// The sidecars' roles of a path: client, server.
pub fn roles(p: PPath) -> [&'static str; 2] {
    match p {
        PPath::Direct => ["", ""],
        PPath::Relay => ["relay-client", ""],
        PPath::Hop => ["hop-client", ""],
        PPath::Relay2 => ["relay2-client", "relay2-server"],
        PPath::Mesh => ["mesh-client", "mesh-server"],
        PPath::MtlsH1 => ["mtls-h1-client", "mtls-h1-server"],
    }
}

/// `linkerd-proxy init` as the `linkerd-init` container runs it (root, in the pod): every
/// inbound TCP connection but the admin ports to 4143, every outbound one but uid 2102's and
/// loopback's to 4140.
async fn init_rules(proxy: &Path, pod: &Pod) -> anyhow::Result<()> {
    let bin = proxy.to_str().context("the proxy path is not UTF-8")?;
    let args = [
        "netns",
        "exec",
        &pod.netns,
        bin,
        "init",
        "--incoming-proxy-port",
        "4143",
        "--outgoing-proxy-port",
        "4140",
        "--proxy-uid",
        PROXY_UID,
        "--inbound-ports-to-ignore",
        "4190,4191",
        "--ipv6=false",
    ];
    netns::run("ip", &args)
        .await
        .with_context(|| format!("linkerd-proxy init in {}", pod.netns))?;
    Ok(())
}

/// The app: `bench server` on `0.0.0.0:8080` in the server pod, as root (not the proxy's uid).
async fn start_app(b: &Bins<'_>, pod: &Pod) -> anyhow::Result<Guarded> {
    let mut cmd = netns::exec_in(&pod.netns, b.bench);
    cmd.args(["server", "--addr", &format!("0.0.0.0:{APP_PORT}")])
        .args(["--threads", "1", "--body-size", "64"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut app = Guarded::spawn("app", &mut cmd, b.pid_file)?;
    let addr = format!("127.0.0.1:{APP_PORT}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        app.check_running()?;
        match fetch(b.bench, &pod.netns, &addr, "/", false).await {
            Ok(_) => return Ok(app),
            Err(e) if Instant::now() > deadline => return Err(e.context("the app is not up")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `mesh identity serve` on `:8080` in the identity pod, with fresh trust material and a
/// token per identity in `dir`, readable by the proxies' uid. Returns the process and the
/// trust anchors.
async fn start_identity(
    b: &Bins<'_>,
    pod_ns: &str,
    dir: &Path,
) -> anyhow::Result<(Guarded, String)> {
    mesh::init_trust(b.mesh, dir).await?;
    let key = dir.join("token.key");
    let key_s = key.to_str().context("the scratch path is not UTF-8")?;
    let args = [
        "identity",
        "token",
        "--key",
        key_s,
        "--identity",
        IDENTITY_ID,
    ];
    let token = mesh::mesh_cli(b.mesh, &args).await?;
    std::fs::write(dir.join("identity.token"), token.trim())?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for token in ["client.token", "server.token", "identity.token"] {
        std::fs::set_permissions(dir.join(token), std::fs::Permissions::from_mode(0o644))?;
    }
    let log = b.log_dir.join("prod-identity.log");
    let log_file = std::fs::File::create(&log)?;
    let mut cmd = netns::exec_in(pod_ns, b.mesh);
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, APP_PORT));
    mesh::identity_serve(&mut cmd, dir, any, IDENTITY_ADMIN).stderr(log_file);
    let mut id = Guarded::spawn("identity service", &mut cmd, b.pid_file)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = IDENTITY_ADMIN.to_string();
    loop {
        id.check_running()?;
        match fetch(b.bench, pod_ns, &admin, "/ready", false).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "identity service not ready: {e:#}\n{}",
                    proxy::log_tail(&log)
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let anchors = std::fs::read_to_string(dir.join("ca.crt")).context("reading ca.crt")?;
    Ok((id, anchors))
}

/// The proxy binary uid 2102 can execute: `proxy`, or a world-executable copy of it in
/// `scratch`.
async fn proxy_bin_for_uid(proxy: &Path, scratch: &Path) -> anyhow::Result<PathBuf> {
    let can_exec = |bin: PathBuf| async move {
        let s = bin.to_str().unwrap_or_default().to_string();
        let mut args: Vec<&str> = AS_PROXY_UID.to_vec();
        args.extend(["test", "-x", &s]);
        netns::run("setpriv", &args).await.is_ok()
    };
    if can_exec(proxy.to_path_buf()).await {
        return Ok(proxy.to_path_buf());
    }
    let copy = scratch.join("linkerd-proxy");
    std::fs::copy(proxy, &copy).context("copying the proxy for uid 2102")?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    if !can_exec(copy.clone()).await {
        bail!(
            "uid {PROXY_UID} can execute neither {} nor a copy",
            proxy.display()
        );
    }
    Ok(copy)
}

/// One HTTP/1.1 request from inside `netns` (`bench fetch`); the body.
pub async fn fetch(
    bench: &Path,
    netns: &str,
    addr: &str,
    path: &str,
    post: bool,
) -> anyhow::Result<String> {
    let bench = bench.to_str().context("the bench path is not UTF-8")?;
    let mut args = vec![
        "netns", "exec", netns, bench, "fetch", "--addr", addr, "--path", path,
    ];
    if post {
        args.push("--post");
    }
    netns::run("ip", &args).await
}
