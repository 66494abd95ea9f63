//! The policy mesh's processes: the destination and policy services on one registry file,
//! the client proxy and the server proxies, each certified by the plain mesh's identity service.

use std::{
    collections::BTreeMap,
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

use super::{CLIENT_POD, Case, NAMESPACE, Server, registry::registry_yaml};
use crate::{
    client,
    mesh::{self, CLIENT_ID, Mesh, SERVER_ID},
    path::{self, Ctx, RunTotals},
    procfs::{self, Guarded},
    proxy::{self, ProxyAddrs, ProxyProc},
    report::{self, Peaks, emit},
};

/// The control plane and the proxies of the policy scenarios.
#[derive(Debug)]
pub struct PolicyMesh {
    pub destination: Guarded,
    pub destination_log: PathBuf,
    pub policy: Guarded,
    pub policy_log: PathBuf,
    pub client: ProxyProc,
    pub servers: BTreeMap<Server, ProxyProc>,
    /// From spawning the proxies until all were certified and ready (the server proxies: with
    /// their first inbound policy).
    pub ready_in: Duration,
}

impl PolicyMesh {
    pub fn server(&self, s: Server) -> anyhow::Result<&ProxyProc> {
        self.servers
            .get(&s)
            .with_context(|| format!("no {} proxy", s.pod()))
    }

    /// Every process, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.destination.pid, self.policy.pid, self.client.child.pid];
        pids.extend(self.servers.values().map(|p| p.child.pid));
        pids
    }
}

fn control_plane(
    bin: &Path,
    which: &str,
    registry: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
    log: &Path,
) -> anyhow::Result<Command> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args([which, "serve", "--registry"])
        .arg(registry)
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--admin-addr")
        .arg(admin.to_string())
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    Ok(cmd)
}

/// Writes the registry, starts the destination and policy services, then the client proxy and
/// the server proxies (certified by `identity`'s service); returns once all are ready.
/// `ports`: 4 for the control plane, then 3 per proxy.
async fn start(o: &Ctx<'_>, identity: &Mesh, ports: &[u16]) -> anyhow::Result<PolicyMesh> {
    if ports.len() != 4 + 3 * (1 + Server::ALL.len()) {
        bail!(
            "policy::start needs {} ports",
            4 + 3 * (1 + Server::ALL.len())
        );
    }
    let lo = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (dst_addr, dst_admin, pol_addr, pol_admin) =
        (lo(ports[0]), lo(ports[1]), lo(ports[2]), lo(ports[3]));
    let addrs = |i: usize| ProxyAddrs {
        inbound: lo(ports[4 + 3 * i]),
        outbound: lo(ports[5 + 3 * i]),
        admin: lo(ports[6 + 3 * i]),
    };
    let client_addrs = addrs(0);
    let server_addrs: BTreeMap<Server, ProxyAddrs> = Server::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, addrs(i + 1)))
        .collect();
    let inbound = server_addrs.iter().map(|(s, a)| (*s, a.inbound)).collect();
    let registry = o.scratch.join("registry.yaml");
    std::fs::write(&registry, registry_yaml(&inbound, o.upstream.port()))
        .with_context(|| format!("writing {}", registry.display()))?;

    let destination_log = o.log_dir.join("destination.log");
    let mut destination = Guarded::spawn(
        "destination service",
        &mut control_plane(
            o.mesh_bin,
            "destination",
            &registry,
            dst_addr,
            dst_admin,
            &destination_log,
        )?,
        o.launch.pid_file,
    )?;
    let policy_log = o.log_dir.join("policy.log");
    let mut policy = Guarded::spawn(
        "policy service",
        &mut control_plane(
            o.mesh_bin,
            "policy",
            &registry,
            pol_addr,
            pol_admin,
            &policy_log,
        )?,
        o.launch.pid_file,
    )?;
    for (child, admin, log) in [
        (&mut destination, dst_admin, &destination_log),
        (&mut policy, pol_admin, &policy_log),
    ] {
        let what = format!("the {} to be ready", child.name);
        crate::client::wait_until(&what, child, || crate::client::expect_ok(admin, "/ready"))
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\nlog:\n{}", proxy::log_tail(log)))?;
    }

    let env = |token: &str, id: &str, pod: &str| {
        let mut env = mesh::identity_env(
            &identity.trust_anchors,
            identity.identity_addr,
            &identity.identity_dir,
            token,
            id,
        );
        env.extend([
            (config::ENV_DESTINATION_SVC_ADDR, dst_addr.to_string()),
            (config::ENV_POLICY_SVC_ADDR, pol_addr.to_string()),
            (
                config::ENV_POLICY_WORKLOAD,
                json!({"ns": NAMESPACE, "pod": pod}).to_string(),
            ),
        ]);
        env
    };
    let started = Instant::now();
    let spawn = |role: &'static str,
                 name: &'static str,
                 addrs: ProxyAddrs,
                 env: Vec<(&'static str, String)>,
                 id: &'static str|
     -> anyhow::Result<ProxyProc> {
        let log = o.log_dir.join(format!("mesh-{role}-proxy.log"));
        o.launch.spawn(role, name, addrs, &env, log, Some(id))
    };
    let mut servers = BTreeMap::new();
    for (s, a) in &server_addrs {
        let mut e = env("server", SERVER_ID, s.pod());
        e.push((config::ENV_INBOUND_FORWARD_ADDR, o.upstream.to_string()));
        e.push((config::ENV_INBOUND_PORTS, o.upstream.port().to_string()));
        let name = match s {
            Server::Open => "policy server proxy (server-open)",
            Server::Authz => "policy server proxy (server-authz)",
            Server::B => "policy server proxy (server-b)",
            Server::Limited => "policy server proxy (server-limited)",
        };
        servers.insert(*s, spawn(s.role(), name, *a, e, SERVER_ID)?);
    }
    let mut client = spawn(
        "policy-client",
        "policy client proxy",
        client_addrs,
        env("client", CLIENT_ID, CLIENT_POD),
        CLIENT_ID,
    )?;
    for p in servers.values_mut() {
        proxy::wait_ready(p).await?;
    }
    proxy::wait_ready(&mut client).await?;
    Ok(PolicyMesh {
        destination,
        destination_log,
        policy,
        policy_log,
        client,
        servers,
        ready_in: started.elapsed(),
    })
}

/// Starts the policy mesh ([`start`]) beside the plain mesh `m` (whose identity service
/// certifies its proxies), sends one request per case through it (the first waits for the
/// Service's policy) and prints the `mesh_policy_idle` row.
pub async fn start_path(
    ctx: &Ctx<'_>,
    m: &Mesh,
    ports: &[u16],
    cases: &[Case],
    peaks: &mut Peaks,
) -> anyhow::Result<PolicyMesh> {
    let pm = start(ctx, m, ports).await?;
    for case in cases {
        let url = format!("http://{}/", case.authority());
        let status = client::request_via_proxy(pm.client.outbound, &url)
            .await
            .with_context(|| format!("a request for {url} through the policy mesh"))?;
        if status != StatusCode::OK {
            let mut logs = format!(
                "client proxy log:\n{}\npolicy log:\n{}",
                proxy::log_tail(&pm.client.log),
                proxy::log_tail(&pm.policy_log)
            );
            for p in pm.servers.values() {
                logs.push_str(&format!("\n{} log:\n{}", p.role, proxy::log_tail(&p.log)));
            }
            bail!(
                "{}: a request for {url} answered {status}\n{logs}",
                case.name()
            );
        }
    }
    let proxies = path::idle_proxies(
        std::iter::once(&pm.client).chain(pm.servers.values()),
        peaks,
    )?;
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
            json!(report::round(pm.ready_in.as_secs_f64() * 1e3, 1)),
        ),
        (
            "services",
            json!(cases.iter().map(|c| c.authority()).collect::<Vec<_>>()),
        ),
        ("loadavg_1m", json!(report::loadavg())),
    ])?;
    Ok(pm)
}

/// The policy mesh's end state (`mesh_policy_end`): every proxy drained, the control plane
/// stopped, and the cases whose policy was not applied.
pub async fn end_path(mut pm: PolicyMesh, totals: &RunTotals) -> anyhow::Result<()> {
    let destination_rss = procfs::status_number(pm.destination.pid, "VmRSS").ok();
    let policy_rss = procfs::status_number(pm.policy.pid, "VmRSS").ok();
    let procs = std::iter::once(&mut pm.client)
        .chain(pm.servers.values_mut())
        .collect();
    let d = path::drain_proxies(procs, totals).await?;
    let _ = client::kill(&mut pm.destination).await;
    let _ = client::kill(&mut pm.policy).await;
    emit(&[
        ("scenario", json!("mesh_policy_end")),
        ("proxy_rss_end_kb", json!(d.rss_max)),
        ("proxy_peak_rss_kb", json!(d.peak_max)),
        ("proxies", Value::Object(d.proxies)),
        ("proxies_exit_clean", json!(d.clean)),
        ("proxy_log_lines", json!(d.log_total)),
        ("destination_rss_kb", json!(destination_rss)),
        ("policy_rss_kb", json!(policy_rss)),
        (
            "control_plane_log_lines",
            json!(report::log_lines(&pm.destination_log) + report::log_lines(&pm.policy_log)),
        ),
        ("policy_failures", json!(totals.policy_failures)),
        ("loadavg_1m", json!(report::loadavg())),
    ])
}
