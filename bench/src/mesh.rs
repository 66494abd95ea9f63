//! The mesh path: a real identity service (`mesh identity serve`) and two sidecars, each
//! certified by it, wired the way `mesh up` wires workloads:
//!
//! ```text
//! load generator -> client proxy (outbound, HTTP proxy) == mTLS, HTTP/2 ==> server proxy
//!                   (inbound) -> upstream server
//! ```
//!
//! The client proxy resolves the logical name `svc.bench:80` through
//! `MESH_PROXY_STATIC_ENDPOINTS` to the server proxy's inbound listener and the server proxy's
//! identity; the server proxy forwards what arrives on its inbound listener to the upstream
//! server (`MESH_PROXY_INBOUND_FORWARD_ADDR`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use http::StatusCode;
use linkerd_proxy::config;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    client,
    counters::Counters,
    path::{self, Ctx, RunTotals},
    procfs::{self, Guarded},
    proxy::{ProxyAddrs, ProxyProc, log_tail, wait_ready},
    report::{self, Peaks, emit},
};

/// The logical name the load generator asks the client proxy for.
pub const SERVICE: &str = "svc.bench:80";
pub const CLIENT_ID: &str = "client.bench.serviceaccount.identity.linkerd.cluster.local";
pub const SERVER_ID: &str = "server.bench.serviceaccount.identity.linkerd.cluster.local";

/// The identity service and the two certified proxies.
#[derive(Debug)]
pub struct Mesh {
    pub identity: Guarded,
    pub identity_admin: SocketAddr,
    pub identity_log: PathBuf,
    /// What a proxy needs to be certified by this identity service (more proxies, e.g. the
    /// policy scenarios', certify against the same one).
    pub identity_addr: SocketAddr,
    pub trust_anchors: String,
    /// Holds `client.token` and `server.token`.
    pub identity_dir: PathBuf,
    pub client: ProxyProc,
    pub server: ProxyProc,
    /// From spawning the proxies until both were certified and ready.
    pub certified_in: Duration,
}

/// Runs `mesh <args>` to completion and returns its stdout.
pub async fn mesh_cli(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {} {}", bin.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`mesh {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `mesh identity init`, a token per proxy (`mesh identity token`), `mesh identity serve`, then
/// both proxies; returns once the identity service and both proxies are ready (the proxies
/// report ready only once they hold a certificate).
pub async fn start(o: &Ctx<'_>, ports: &[u16]) -> anyhow::Result<Mesh> {
    let [
        id_addr,
        id_admin,
        c_in,
        c_out,
        c_admin,
        s_in,
        s_out,
        s_admin,
    ] = ports
    else {
        bail!("mesh::start needs 8 ports");
    };
    let lo = |p: &u16| SocketAddr::from(([127, 0, 0, 1], *p));
    let dir = o.scratch.join("identity");
    init_trust(o.mesh_bin, &dir).await?;

    let identity_log = o.log_dir.join("identity.log");
    let log_file = std::fs::File::create(&identity_log)
        .with_context(|| format!("creating {}", identity_log.display()))?;
    let identity_admin = lo(id_admin);
    let mut identity = Guarded::spawn(
        "identity service",
        identity_serve(
            &mut Command::new(o.mesh_bin),
            &dir,
            lo(id_addr),
            identity_admin,
        )
        .stderr(log_file),
        o.launch.pid_file,
    )?;
    crate::client::wait_until("the identity service to be ready", &mut identity, || {
        crate::client::expect_ok(identity_admin, "/ready")
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\nidentity log:\n{}", log_tail(&identity_log)))?;

    let anchors = std::fs::read_to_string(dir.join("ca.crt")).context("reading ca.crt")?;
    let id_env = |name: &str, id: &str| identity_env(&anchors, lo(id_addr), &dir, name, id);
    let server_addrs = ProxyAddrs {
        inbound: lo(s_in),
        outbound: lo(s_out),
        admin: lo(s_admin),
    };
    let client_addrs = ProxyAddrs {
        inbound: lo(c_in),
        outbound: lo(c_out),
        admin: lo(c_admin),
    };
    let mut server_env = id_env("server", SERVER_ID);
    server_env.push((config::ENV_INBOUND_FORWARD_ADDR, o.upstream.to_string()));
    let mut client_env = id_env("client", CLIENT_ID);
    client_env.push((
        config::ENV_STATIC_ENDPOINTS,
        format!("{SERVICE}={}#{SERVER_ID}", server_addrs.inbound),
    ));

    let started = Instant::now();
    let mut procs = Vec::new();
    for (role, addrs, env, id) in [
        ("server", server_addrs, server_env, SERVER_ID),
        ("client", client_addrs, client_env, CLIENT_ID),
    ] {
        let log = o.log_dir.join(format!("mesh-{role}-proxy.log"));
        let name = match role {
            "server" => "server proxy",
            _ => "client proxy",
        };
        procs.push(o.launch.spawn(role, name, addrs, &env, log, Some(id))?);
    }
    for p in &mut procs {
        wait_ready(p).await?;
    }
    let certified_in = started.elapsed();
    let (Some(client), Some(server)) = (procs.pop(), procs.pop()) else {
        bail!("the mesh proxies went missing");
    };
    Ok(Mesh {
        identity,
        identity_admin,
        identity_log,
        identity_addr: lo(id_addr),
        trust_anchors: anchors,
        identity_dir: dir,
        client,
        server,
        certified_in,
    })
}

/// `mesh identity init` in `dir` (a fresh trust anchor, issuer and token key), and a token for
/// each of the client and the server identity (`client.token`, `server.token`).
pub async fn init_trust(mesh_bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let dir_s = dir.to_str().context("the scratch path is not UTF-8")?;
    mesh_cli(mesh_bin, &["identity", "init", "--dir", dir_s, "--force"]).await?;
    let key = dir.join("token.key");
    let key_s = key.to_str().context("the scratch path is not UTF-8")?;
    for (name, id) in [("client", CLIENT_ID), ("server", SERVER_ID)] {
        let token = mesh_cli(
            mesh_bin,
            &["identity", "token", "--key", key_s, "--identity", id],
        )
        .await?;
        // `mesh identity token` ends its output with a newline, and the identity service
        // checks the file's bytes as they are ("MAC is not hex"): write the token alone.
        let path = dir.join(format!("{name}.token"));
        std::fs::write(&path, token.trim())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `cmd` (the mesh binary) as the identity service with the trust material [`init_trust`] wrote
/// in `dir`: `identity serve` on `addr`, its admin server on `admin`, logging warnings, with
/// no standard input or output.
pub fn identity_serve<'c>(
    cmd: &'c mut Command,
    dir: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
) -> &'c mut Command {
    cmd.args(["identity", "serve", "--addr"])
        .arg(addr.to_string())
        .arg("--admin-addr")
        .arg(admin.to_string())
        .arg("--trust-anchors")
        .arg(dir.join("ca.crt"))
        .arg("--issuer-cert")
        .arg(dir.join("issuer.crt"))
        .arg("--issuer-key")
        .arg(dir.join("issuer.key"))
        .arg("--token-key")
        .arg(dir.join("token.key"))
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
}

/// The environment that has a proxy certified as `id` with the token `<dir>/<token>.token`.
pub fn identity_env(
    anchors: &str,
    identity_addr: SocketAddr,
    dir: &Path,
    token: &str,
    id: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (config::ENV_IDENTITY_TRUST_ANCHORS, anchors.to_string()),
        (config::ENV_IDENTITY_LOCAL_NAME, id.to_string()),
        (config::ENV_IDENTITY_SVC_ADDR, identity_addr.to_string()),
        (
            config::ENV_IDENTITY_TOKEN_FILE,
            dir.join(format!("{token}.token")).display().to_string(),
        ),
    ]
}

/// Starts the mesh ([`start`]), sends one request across it, checks that it went over mTLS
/// and prints the `mesh_idle` row.
pub async fn start_path(ctx: &Ctx<'_>, ports: &[u16], peaks: &mut Peaks) -> anyhow::Result<Mesh> {
    let m = start(ctx, ports).await?;
    // One request end to end, and proof that it crossed the mesh over mTLS.
    let url = format!("http://{SERVICE}/");
    let status = client::request_via_proxy(m.client.outbound, &url)
        .await
        .context("a request through the mesh")?;
    if status != StatusCode::OK {
        bail!(
            "a request through the mesh failed: {status}\nclient proxy log:\n{}\nserver proxy log:\n{}",
            log_tail(&m.client.log),
            log_tail(&m.server.log)
        );
    }
    let server_counters = client::scrape_counters(m.server.admin).await;
    let mtls = server_counters.as_ref().and_then(Counters::mtls_fraction);
    if mtls != Some(1.0) {
        eprintln!(
            "bench: warning: the server proxy saw {mtls:?} of its inbound requests over mTLS"
        );
    }
    let proxies = path::idle_proxies([&m.client, &m.server], peaks)?;
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
            json!(client::identity_issued(m.identity_admin).await),
        ),
        (
            "certified_in_ms",
            json!(report::round(m.certified_in.as_secs_f64() * 1e3, 1)),
        ),
        ("mtls_fraction", json!(mtls)),
        ("service", json!(SERVICE)),
        ("proxy_cores", json!(ctx.proxy_cores)),
        ("per_scenario_peak_rss", json!(peaks.resettable)),
        ("loadavg_1m", json!(report::loadavg())),
    ])?;
    Ok(m)
}

/// The mesh's end state (`mesh_end`): both proxies drained through `POST /shutdown`, then the
/// identity service stopped.
pub async fn end_path(mut m: Mesh, totals: &RunTotals) -> anyhow::Result<()> {
    let identity_rss = procfs::status_number(m.identity.pid, "VmRSS").ok();
    let d = path::drain_proxies(vec![&mut m.client, &mut m.server], totals).await?;
    let identity_log_lines = report::log_lines(&m.identity_log);
    let _ = client::kill(&mut m.identity).await;
    emit(&[
        ("scenario", json!("mesh_end")),
        ("proxy_rss_end_kb", json!(d.rss_max)),
        ("proxy_peak_rss_kb", json!(d.peak_max)),
        ("proxies", Value::Object(d.proxies)),
        ("proxy_failed_responses_total", json!(d.failures_total)),
        ("proxy_log_lines", json!(d.log_total)),
        ("proxies_exit_clean", json!(d.clean)),
        ("identity_rss_kb", json!(identity_rss)),
        ("identity_log_lines", json!(identity_log_lines)),
        ("load_errors", json!(totals.load_errors)),
        ("loadavg_1m", json!(report::loadavg())),
    ])
}
