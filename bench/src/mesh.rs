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
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use linkerd_control::prom::Scrape;
use tokio::process::Command;

use crate::procfs::Guarded;

/// The logical name the load generator asks the client proxy for.
pub const SERVICE: &str = "svc.bench:80";
pub const CLIENT_ID: &str = "client.bench.serviceaccount.identity.linkerd.cluster.local";
pub const SERVER_ID: &str = "server.bench.serviceaccount.identity.linkerd.cluster.local";

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
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("LINKERD2_PROXY_") || k.starts_with("MESH_PROXY_"))
        {
            cmd.env_remove(k);
        }
    }
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.env("LINKERD2_PROXY_CORES", cores.to_string())
        .env(
            "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR",
            addrs.outbound.to_string(),
        )
        .env(
            "LINKERD2_PROXY_INBOUND_LISTEN_ADDR",
            addrs.inbound.to_string(),
        )
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", addrs.admin.to_string())
        .env("LINKERD2_PROXY_LOG", "warn")
        .env("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "2s");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    Ok(cmd)
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

/// What `start` needs.
#[derive(Debug)]
pub struct MeshOpts<'a> {
    pub mesh_bin: &'a Path,
    /// The proxies' binary, cores and the pid file (which every child goes into).
    pub launch: Launch<'a>,
    /// The upstream server, where the server proxy delivers.
    pub upstream: SocketAddr,
    /// Trust material and tokens go here.
    pub scratch: &'a Path,
    /// Logs go here (`identity.log`, `mesh-client-proxy.log`, `mesh-server-proxy.log`).
    pub log_dir: &'a Path,
}

/// Runs `mesh <args>` to completion and returns its stdout.
async fn mesh_cli(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
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
pub async fn start(o: &MeshOpts<'_>, ports: &[u16]) -> anyhow::Result<Mesh> {
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
    let dir_s = dir.to_str().context("the scratch path is not UTF-8")?;
    mesh_cli(o.mesh_bin, &["identity", "init", "--dir", dir_s, "--force"]).await?;
    let key = dir.join("token.key");
    let key_s = key.to_str().context("the scratch path is not UTF-8")?;
    for (name, id) in [("client", CLIENT_ID), ("server", SERVER_ID)] {
        let token = mesh_cli(
            o.mesh_bin,
            &["identity", "token", "--key", key_s, "--identity", id],
        )
        .await?;
        // `mesh identity token` ends its output with a newline, and the identity service
        // checks the file's bytes as they are ("MAC is not hex"): write the token alone.
        let path = dir.join(format!("{name}.token"));
        std::fs::write(&path, token.trim())
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let identity_log = o.log_dir.join("identity.log");
    let log_file = std::fs::File::create(&identity_log)
        .with_context(|| format!("creating {}", identity_log.display()))?;
    let identity_admin = lo(id_admin);
    let mut identity = Guarded::spawn(
        "identity service",
        Command::new(o.mesh_bin)
            .args(["identity", "serve"])
            .arg("--addr")
            .arg(lo(id_addr).to_string())
            .arg("--admin-addr")
            .arg(identity_admin.to_string())
            .arg("--trust-anchors")
            .arg(dir.join("ca.crt"))
            .arg("--issuer-cert")
            .arg(dir.join("issuer.crt"))
            .arg("--issuer-key")
            .arg(dir.join("issuer.key"))
            .arg("--token-key")
            .arg(&key)
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file),
        o.launch.pid_file,
    )?;
    crate::all::wait_until("the identity service to be ready", &mut identity, || {
        crate::all::expect_ok(identity_admin, "/ready")
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
    server_env.push(("MESH_PROXY_INBOUND_FORWARD_ADDR", o.upstream.to_string()));
    let mut client_env = id_env("client", CLIENT_ID);
    client_env.push((
        "MESH_PROXY_STATIC_ENDPOINTS",
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

/// The environment that has a proxy certified as `id` with the token `<dir>/<token>.token`.
pub fn identity_env(
    anchors: &str,
    identity_addr: SocketAddr,
    dir: &Path,
    token: &str,
    id: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", anchors.to_string()),
        ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", id.to_string()),
        (
            "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
            identity_addr.to_string(),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
            dir.join(format!("{token}.token")).display().to_string(),
        ),
    ]
}

/// Waits for the proxy's `/ready` (with an identity: once it holds a certificate).
pub async fn wait_ready(p: &mut ProxyProc) -> anyhow::Result<()> {
    let admin = p.admin;
    let what = format!("the {} to be ready", p.child.name);
    crate::all::wait_until(&what, &mut p.child, || {
        crate::all::expect_ok(admin, "/ready")
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{} log:\n{}", p.role, log_tail(&p.log)))
}

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Counters from one `/metrics` scrape of a proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// `response_total{classification="failure"}` by `"<status> <error>"`.
    pub failures: BTreeMap<String, u64>,
    /// Inbound `request_total`, all of it and the part with `tls="true"`.
    pub inbound_requests: u64,
    pub inbound_tls_requests: u64,
    /// Inbound `tls="true"` requests by the caller's `client_id`.
    pub inbound_client_ids: BTreeMap<String, u64>,
    /// Outbound `request_total` with `tls="true"`, by `server_id`.
    pub outbound_server_ids: BTreeMap<String, u64>,
    pub outbound_requests: u64,
    /// `tcp_open_total{peer="dst"}`: connections the proxy opened (to the server, the peer
    /// proxy or an endpoint).
    pub tcp_connects: u64,
    /// Outbound `request_total` by `target_addr` (which endpoint a request went to).
    pub outbound_by_target: BTreeMap<String, u64>,
    /// `outbound_http_route_<counter>_total` by `"<counter> <parent_name>/<route_name>"`, e.g.
    /// `"requests bench-retry"`: what the outbound policy's routes did.
    pub routes: BTreeMap<String, u64>,
    /// `inbound_http_authz_{allow,deny}_total` by
    /// `"<allow|deny> <srv_kind>:<srv_name> <authz_kind>:<authz_name>"` (the authz part only
    /// for allowed requests).
    pub authz: BTreeMap<String, u64>,
    /// `inbound_http_local_ratelimit_rate_limited_total` by `"<srv_name>/<ratelimit_name>"`.
    /// A key (even at 0) means the proxy loaded that server's rate limit.
    pub rate_limited: BTreeMap<String, u64>,
}

/// Reads the counters `bench` reports from a proxy's Prometheus text.
/// Parsed with the control plane's parser (`linkerd_control::prom`); a line it cannot read is
/// skipped.
pub fn parse_counters(metrics: &str) -> Counters {
    let mut c = Counters::default();
    let (scrape, _) = Scrape::parse_lossy(metrics);
    for s in &scrape.samples {
        let (name, v) = (s.name.as_str(), s.value as u64);
        if let Some(counter) = name
            .strip_prefix("outbound_http_route_")
            .and_then(|n| n.strip_suffix("_total"))
        {
            let key = format!(
                "{counter} {}/{}",
                s.label("parent_name").unwrap_or(""),
                s.label("route_name").unwrap_or("")
            );
            *c.routes.entry(key).or_default() += v;
            continue;
        }
        if name == "inbound_http_local_ratelimit_rate_limited_total" {
            let key = format!(
                "{}/{}",
                s.label("srv_name").unwrap_or(""),
                s.label("ratelimit_name").unwrap_or("")
            );
            *c.rate_limited.entry(key).or_default() += v;
            continue;
        }
        if let Some(decision) = name
            .strip_prefix("inbound_http_authz_")
            .and_then(|n| n.strip_suffix("_total"))
        {
            let mut key = format!(
                "{decision} {}:{}",
                s.label("srv_kind").unwrap_or(""),
                s.label("srv_name").unwrap_or("")
            );
            if let (Some(kind), Some(name)) = (s.label("authz_kind"), s.label("authz_name")) {
                key.push_str(&format!(" {kind}:{name}"));
            }
            *c.authz.entry(key).or_default() += v;
            continue;
        }
        let tls = s.label("tls") == Some("true");
        match (name, s.label("direction")) {
            ("request_total", Some("inbound")) => {
                c.inbound_requests += v;
                if tls {
                    c.inbound_tls_requests += v;
                    let id = s.label("client_id").unwrap_or("").to_string();
                    *c.inbound_client_ids.entry(id).or_default() += v;
                }
            }
            ("request_total", Some("outbound")) => {
                c.outbound_requests += v;
                let target = s.label("target_addr").unwrap_or("").to_string();
                *c.outbound_by_target.entry(target).or_default() += v;
                if tls {
                    let id = s.label("server_id").unwrap_or("").to_string();
                    *c.outbound_server_ids.entry(id).or_default() += v;
                }
            }
            ("response_total", _) if s.label("classification") == Some("failure") => {
                let key = format!(
                    "{} {}",
                    s.label("status_code").unwrap_or(""),
                    s.label("error").unwrap_or("")
                )
                .trim()
                .to_string();
                *c.failures.entry(key).or_default() += v;
            }
            ("tcp_open_total", _) if s.label("peer") == Some("dst") => {
                c.tcp_connects += v;
            }
            _ => {}
        }
    }
    c
}

/// `after - before`, key by key, leaving out zeros.
pub fn delta_map(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl Counters {
    /// What happened between two scrapes.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            failures: delta_map(&before.failures, &self.failures),
            inbound_requests: self
                .inbound_requests
                .saturating_sub(before.inbound_requests),
            inbound_tls_requests: self
                .inbound_tls_requests
                .saturating_sub(before.inbound_tls_requests),
            inbound_client_ids: delta_map(&before.inbound_client_ids, &self.inbound_client_ids),
            outbound_server_ids: delta_map(&before.outbound_server_ids, &self.outbound_server_ids),
            outbound_requests: self
                .outbound_requests
                .saturating_sub(before.outbound_requests),
            tcp_connects: self.tcp_connects.saturating_sub(before.tcp_connects),
            outbound_by_target: delta_map(&before.outbound_by_target, &self.outbound_by_target),
            routes: delta_map(&before.routes, &self.routes),
            authz: delta_map(&before.authz, &self.authz),
            // Zeros kept: a key says the limit is loaded.
            rate_limited: self
                .rate_limited
                .iter()
                .map(|(k, v)| {
                    let b = before.rate_limited.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(b))
                })
                .collect(),
        }
    }

    /// The share of inbound requests that arrived over mTLS; `None` without inbound requests.
    pub fn mtls_fraction(&self) -> Option<f64> {
        (self.inbound_requests > 0)
            .then(|| self.inbound_tls_requests as f64 / self.inbound_requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP request_total x\n\
request_total{direction=\"inbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:1\",tls=\"true\",client_id=\"client.bench.serviceaccount.identity.linkerd.cluster.local\"} 90\n\
request_total{direction=\"inbound\",authority=\"x:1\",target_addr=\"127.0.0.1:1\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\"} 10\n\
request_total{direction=\"outbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:2\",tls=\"true\",server_id=\"server.bench.serviceaccount.identity.linkerd.cluster.local\"} 7\n\
response_total{direction=\"inbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:1\",tls=\"true\",status_code=\"502\",classification=\"failure\",error=\"connect\"} 2\n\
response_total{direction=\"inbound\",authority=\"svc.bench:80\",target_addr=\"127.0.0.1:1\",tls=\"true\",status_code=\"200\",classification=\"success\"} 88\n\
tcp_open_total{direction=\"inbound\",peer=\"dst\",target_addr=\"127.0.0.1:1\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\"} 5\n\
tcp_open_total{direction=\"inbound\",peer=\"src\",target_addr=\"127.0.0.1:1\",tls=\"true\"} 3\n\
outbound_http_route_requests_total{parent_name=\"route\",route_name=\"bench-retry\"} 40\n\
outbound_http_route_retry_requests_total{parent_name=\"route\",route_name=\"bench-retry\"} 0\n\
inbound_http_authz_allow_total{srv_kind=\"server\",srv_name=\"bench-authz\",route_name=\"default\",authz_kind=\"authorizationpolicy\",authz_name=\"bench-from-client\"} 12\n\
inbound_http_authz_deny_total{srv_kind=\"server\",srv_name=\"bench-authz\",route_name=\"default\"} 1\n";

    #[test]
    fn parses_counters() {
        let c = parse_counters(METRICS);
        assert_eq!(c.inbound_requests, 100);
        assert_eq!(c.inbound_tls_requests, 90);
        assert_eq!(c.inbound_client_ids.get(CLIENT_ID), Some(&90));
        assert_eq!(c.outbound_requests, 7);
        assert_eq!(c.outbound_server_ids.get(SERVER_ID), Some(&7));
        assert_eq!(c.failures.get("502 connect"), Some(&2));
        assert_eq!(c.failures.len(), 1);
        assert_eq!(c.tcp_connects, 5);
        assert_eq!(c.mtls_fraction(), Some(0.9));
        assert_eq!(c.outbound_by_target.get("127.0.0.1:2"), Some(&7));
        assert_eq!(c.routes.get("requests route/bench-retry"), Some(&40));
        assert_eq!(c.routes.get("retry_requests route/bench-retry"), Some(&0));
        assert_eq!(
            c.authz
                .get("allow server:bench-authz authorizationpolicy:bench-from-client"),
            Some(&12)
        );
        assert_eq!(c.authz.get("deny server:bench-authz"), Some(&1));
    }

    #[test]
    fn counters_since() {
        let after = parse_counters(METRICS);
        let before = Counters {
            inbound_requests: 50,
            inbound_tls_requests: 50,
            ..Counters::default()
        };
        let d = after.since(&before);
        assert_eq!((d.inbound_requests, d.inbound_tls_requests), (50, 40));
        assert_eq!(d.mtls_fraction(), Some(0.8));
        assert_eq!(Counters::default().mtls_fraction(), None);
    }
}
