//! Proxy processes: how `bench` starts one (a clean environment built from the proxy's own
//! variable names, its listeners on given addresses), waits for it and reads its log.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, bail};
use http::{Method, StatusCode};
use linkerd_proxy::config;
use serde_json::json;
use tokio::process::Command;

use crate::{
    client,
    path::{Ctx, RunTotals},
    procfs::{self, Guarded},
    report::{self, Peaks, emit},
};

/// One proxy process and where to reach it.
#[derive(Debug)]
pub struct ProxyProc {
    /// `proxy` (the single-hop path), `client` or `server` (the mesh path).
    pub role: &'static str,
    pub child: Guarded,
    pub admin: SocketAddr,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub log: PathBuf,
    pub identity: Option<&'static str>,
}

/// Addresses for one proxy: inbound, outbound, admin.
#[derive(Clone, Copy, Debug)]
pub struct ProxyAddrs {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

/// A proxy command with a clean environment: the caller's own proxy settings must not leak in.
pub fn proxy_command(
    bin: &Path,
    cores: usize,
    addrs: ProxyAddrs,
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Command> {
    let mut cmd = Command::new(bin);
    proxy_env(&mut cmd, cores, addrs, env, log)?;
    Ok(cmd)
}

/// Gives `cmd` (the proxy, or a command that execs it) the proxy's environment and no other
/// proxy setting, its listeners, and `log` as stderr.
pub fn proxy_env(
    cmd: &mut Command,
    cores: usize,
    addrs: ProxyAddrs,
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<()> {
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("LINKERD2_PROXY_") || k.starts_with("MESH_PROXY_"))
        {
            cmd.env_remove(k);
        }
    }
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.env(config::ENV_CORES, cores.to_string())
        .env(config::ENV_OUTBOUND_LISTEN_ADDR, addrs.outbound.to_string())
        .env(config::ENV_INBOUND_LISTEN_ADDR, addrs.inbound.to_string())
        .env(config::ENV_ADMIN_LISTEN_ADDR, addrs.admin.to_string())
        .env(config::ENV_LOG, "warn")
        .env(config::ENV_SHUTDOWN_GRACE_PERIOD, "2s");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Extra variables for every proxy of the run, `NAME=value` pairs separated by `;` (e.g.
    // tracing or the access log on, to measure what they cost).
    if let Ok(extra) = std::env::var("BENCH_PROXY_ENV") {
        for (k, v) in extra.split(';').filter_map(|p| p.split_once('=')) {
            cmd.env(k.trim(), v);
        }
    }
    // The proxy's log lines go to stdout (tracing's default writer), its fatal errors to
    // stderr: both into the log.
    let out = log_file
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(log_file);
    Ok(())
}

/// How the proxies of a run are started: the binary, `LINKERD2_PROXY_CORES`, the pid file.
#[derive(Clone, Copy, Debug)]
pub struct Launch<'a> {
    pub bin: &'a Path,
    pub cores: usize,
    pub pid_file: Option<&'a Path>,
}

impl Launch<'_> {
    /// Starts one proxy ([`proxy_command`], stderr to `log`); [`wait_ready`] waits for it.
    pub fn spawn(
        &self,
        role: &'static str,
        name: &'static str,
        addrs: ProxyAddrs,
        env: &[(&str, String)],
        log: PathBuf,
        identity: Option<&'static str>,
    ) -> anyhow::Result<ProxyProc> {
        let child = Guarded::spawn(
            name,
            &mut proxy_command(self.bin, self.cores, addrs, env, &log)?,
            self.pid_file,
        )?;
        Ok(ProxyProc {
            role,
            child,
            admin: addrs.admin,
            inbound: addrs.inbound,
            outbound: addrs.outbound,
            log,
            identity,
        })
    }
}

/// Waits for the proxy's `/ready` (with an identity: once it holds a certificate).
pub async fn wait_ready(p: &mut ProxyProc) -> anyhow::Result<()> {
    let admin = p.admin;
    let what = format!("the {} to be ready", p.child.name);
    crate::client::wait_until(&what, &mut p.child, || {
        crate::client::expect_ok(admin, "/ready")
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{} log:\n{}", p.role, log_tail(&p.log)))
}

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The one-hop path: load generator -> proxy (inbound listener, plaintext) -> upstream server.
/// Starts the proxy, sends one request through it and prints the `proxy_idle` row.
pub async fn start_one_hop(
    ctx: &Ctx<'_>,
    addrs: ProxyAddrs,
    peaks: &mut Peaks,
) -> anyhow::Result<ProxyProc> {
    let env_vars = [(config::ENV_INBOUND_FORWARD_ADDR, ctx.upstream.to_string())];
    let mut proxy = ctx.launch.spawn(
        "proxy",
        "proxy",
        addrs,
        &env_vars,
        ctx.proxy_log.to_path_buf(),
        None,
    )?;
    wait_ready(&mut proxy).await?;
    // Idle footprint: started, and one request served end to end.
    match client::request_once(proxy.inbound, Method::GET, "/").await? {
        (StatusCode::OK, _) => {}
        (s, _) => bail!("a request through the proxy failed: {s}"),
    }
    let pid = proxy.child.pid;
    let idle_rss = procfs::status_number(pid, "VmRSS")?;
    let hwm = peaks.start("proxy", pid)?;
    emit(&[
        ("scenario", json!("proxy_idle")),
        ("proxy_rss_kb", json!(idle_rss)),
        ("proxy_hwm_kb", json!(hwm)),
        ("proxy_cores", json!(ctx.proxy_cores)),
        (
            "proxy_threads",
            json!(procfs::status_number(pid, "Threads").ok()),
        ),
        (
            "listener",
            json!("inbound (MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)"),
        ),
        ("per_scenario_peak_rss", json!(peaks.resettable)),
        ("loadavg_1m", json!(report::loadavg())),
    ])?;
    Ok(proxy)
}

/// The one-hop proxy's end state (`proxy_rss_end`), then a graceful shutdown.
pub async fn end_one_hop(mut proxy: ProxyProc, totals: &RunTotals) -> anyhow::Result<()> {
    let pid = proxy.child.pid;
    let end_rss = procfs::status_number(pid, "VmRSS")?;
    let end_hwm = procfs::status_number(pid, "VmHWM")?;
    let peak = totals.peaks.of("proxy", end_hwm);
    let cpu_total = totals.cpu_since_start(pid)?;
    let failures = client::scrape_counters(proxy.admin)
        .await
        .map_or(serde_json::Value::Null, |c| json!(c.failures));
    let proxy_exit = client::shutdown(&mut proxy).await;
    emit(&[
        ("scenario", json!("proxy_rss_end")),
        ("proxy_rss_end_kb", json!(end_rss)),
        ("proxy_hwm_end_kb", json!(end_hwm)),
        ("proxy_peak_rss_kb", json!(peak)),
        ("proxy_cpu_total_s", json!(report::round(cpu_total, 2))),
        ("proxy_failed_responses", failures),
        ("proxy_log_lines", json!(report::log_lines(&proxy.log))),
        ("proxy_exit", json!(proxy_exit)),
        ("load_errors", json!(totals.load_errors)),
        ("loadavg_1m", json!(report::loadavg())),
    ])
}
