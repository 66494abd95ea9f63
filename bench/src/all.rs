//! `bench all`: starts the upstream server and the proxy, runs every scenario direct and through
//! the proxy, and prints one JSON object per line per scenario.

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
    load::{self, LoadOpts},
    procfs::{self, Guarded, Scratch},
    tools,
};

#[derive(Clone, Debug)]
pub struct AllOpts {
    pub duration: Duration,
    pub proxy_bin: Option<PathBuf>,
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
    /// Run only scenarios whose name starts with one of these.
    pub only: Vec<String>,
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
    Direct,
    Proxy,
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
        };
        format!("{proto}_{kind}_{path}")
    }
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

fn round(x: f64, places: i32) -> f64 {
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

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
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

async fn run_inner(opts: &AllOpts) -> anyhow::Result<()> {
    for tool in ["wrk", "h2load"] {
        if tools::find_on_path(tool).is_none() {
            bail!("`{tool}` is not on PATH; install it with `apt-get install wrk nghttp2-client`");
        }
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let proxy_bin = match &opts.proxy_bin {
        Some(p) => p.clone(),
        None => exe.with_file_name("linkerd-proxy"),
    };
    if !proxy_bin.is_file() {
        bail!(
            "no proxy binary at {}; build it with `cargo build --release -p linkerd-proxy`",
            proxy_bin.display()
        );
    }
    let scratch = Scratch::new()?;
    let proxy_log = opts
        .proxy_log
        .clone()
        .unwrap_or_else(|| scratch.0.join("proxy.log"));
    if let Some(dir) = proxy_log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let pid_file = opts.pid_file.as_deref();

    if let Some(l) = loadavg().filter(|l| *l > 0.7) {
        eprintln!("bench: warning: load average {l:.2}: other work on this machine skews results");
    }
    let ports = free_ports(4)?;
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (server_addr, inbound, outbound, admin) = (
        loopback(ports[0]),
        loopback(ports[1]),
        loopback(ports[2]),
        loopback(ports[3]),
    );

    let mut server = Guarded::spawn(
        "upstream server",
        Command::new(&exe)
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

    let mut cmd = Command::new(&proxy_bin);
    // Start from a clean slate: the caller's own proxy settings must not leak in.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("LINKERD2_PROXY_") || k.starts_with("MESH_PROXY_"))
        {
            cmd.env_remove(k);
        }
    }
    let log_file = std::fs::File::create(&proxy_log)
        .with_context(|| format!("creating {}", proxy_log.display()))?;
    cmd.env("LINKERD2_PROXY_CORES", opts.proxy_cores.to_string())
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", outbound.to_string())
        .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", inbound.to_string())
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
        .env("LINKERD2_PROXY_LOG", "warn")
        .env("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "2s")
        .env("MESH_PROXY_INBOUND_FORWARD_ADDR", server_addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    let mut proxy = Guarded::spawn("proxy", &mut cmd, pid_file)?;
    let ready = wait_until("the proxy to be ready", &mut proxy, || async {
        match request_once(admin, Method::GET, "/ready").await? {
            (StatusCode::OK, _) => Ok(()),
            (s, _) => bail!("/ready: {s}"),
        }
    })
    .await;
    if let Err(e) = ready {
        bail!("{e:#}\nproxy log:\n{}", log_tail(&proxy_log));
    }

    // Idle footprint: started, and one request served end to end.
    match request_once(inbound, Method::GET, "/").await? {
        (StatusCode::OK, _) => {}
        (s, _) => bail!("a request through the proxy failed: {s}"),
    }
    let idle_rss = procfs::status_number(proxy.pid, "VmRSS")?;
    let mut peak_rss = procfs::status_number(proxy.pid, "VmHWM")?;
    let hwm_resettable = procfs::reset_peak_rss(proxy.pid);
    emit(&[
        ("scenario", json!("proxy_idle")),
        ("proxy_rss_kb", json!(idle_rss)),
        ("proxy_hwm_kb", json!(peak_rss)),
        ("proxy_cores", json!(opts.proxy_cores)),
        (
            "proxy_threads",
            json!(procfs::status_number(proxy.pid, "Threads").ok()),
        ),
        (
            "listener",
            json!("inbound (MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)"),
        ),
        ("per_scenario_peak_rss", json!(hwm_resettable)),
        ("loadavg_1m", json!(loadavg())),
    ])?;

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
    let selected =
        |name: &str| opts.only.is_empty() || opts.only.iter().any(|p| name.starts_with(p));

    let proxy_cpu_start = procfs::cpu_seconds(proxy.pid)?;
    let mut total_errors = 0u64;
    for sc in scenarios {
        let mut direct: Option<Measured> = None;
        for path in [Via::Direct, Via::Proxy] {
            let name = sc.name(path);
            if !selected(&name) {
                continue;
            }
            let url = match path {
                Via::Direct => format!("http://{server_addr}/"),
                Via::Proxy => format!("http://{inbound}/"),
            };
            // Let sockets from the previous run close and the machine go quiet.
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprintln!(
                "bench: {name} ({:.0}s) ...",
                opts.duration.as_secs_f64().ceil()
            );
            if path == Via::Proxy && hwm_resettable {
                procfs::reset_peak_rss(proxy.pid);
            }
            let failures0 = match path {
                Via::Proxy => scrape_failures(admin).await,
                Via::Direct => None,
            };
            let proxy_cpu0 = procfs::cpu_seconds(proxy.pid)?;
            let server_cpu0 = procfs::cpu_seconds(server.pid)?;
            let load_cpu0 = procfs::self_and_children_cpu_seconds()?;
            let machine0 = procfs::machine_busy_seconds()?;
            let started = Instant::now();
            let m = measure(opts, sc, &url, &scratch.0, pid_file).await;
            let wall = started.elapsed().as_secs_f64();
            proxy.check_running().map_err(|e| {
                anyhow::anyhow!("{e} during {name}\nproxy log:\n{}", log_tail(&proxy_log))
            })?;
            server.check_running()?;
            let m = m.with_context(|| format!("scenario {name}"))?;
            let server_cpu = procfs::cpu_seconds(server.pid)? - server_cpu0;
            let load_cpu = procfs::self_and_children_cpu_seconds()? - load_cpu0;
            let machine = procfs::machine_busy_seconds()? - machine0;
            let proxy_cpu = procfs::cpu_seconds(proxy.pid)? - proxy_cpu0;
            total_errors += m.errors;

            let mut fields: Vec<(&str, Value)> = vec![
                ("scenario", json!(name)),
                ("rps", json!(round(m.rps, 1))),
                ("p50_us", json!(m.p50)),
                ("p99_us", json!(m.p99)),
                ("p999_us", json!(m.p999)),
                ("max_us", json!(m.max)),
                ("requests", json!(m.requests)),
                ("errors", json!(m.errors)),
            ];
            match path {
                Via::Direct => {
                    fields.push(("proxy_rss_kb", Value::Null));
                    fields.push(("proxy_cpu_s", Value::Null));
                }
                Via::Proxy => {
                    let rss = procfs::status_number(proxy.pid, "VmHWM")?;
                    peak_rss = peak_rss.max(rss);
                    let cpu = proxy_cpu;
                    fields.push(("proxy_rss_kb", json!(rss)));
                    fields.push(("proxy_cpu_s", json!(round(cpu, 2))));
                    if m.requests > 0 {
                        fields.push((
                            "proxy_cpu_us_per_req",
                            json!(round(cpu * 1e6 / m.requests as f64, 2)),
                        ));
                    }
                    if let Some(d) = &direct {
                        let ratio = if d.rps > 0.0 { m.rps / d.rps } else { 0.0 };
                        fields.push(("ratio_rps", json!(round(ratio, 3))));
                        fields.push(("added_p50_us", json!(m.p50 as i64 - d.p50 as i64)));
                        fields.push(("added_p99_us", json!(m.p99 as i64 - d.p99 as i64)));
                    }
                    if let (Some(f0), Some(f1)) = (&failures0, scrape_failures(admin).await) {
                        fields.push(("proxy_failed_responses", json!(delta(f0, &f1))));
                    }
                    fields.push(("listener", json!("inbound")));
                }
            }
            fields.push(("server_cpu_s", json!(round(server_cpu, 2))));
            fields.push(("loadgen_cpu_s", json!(round(load_cpu, 2))));
            // Busy CPU not accounted to the processes above: other work on the machine (and
            // some interrupt time). Large values mean the numbers are not trustworthy.
            let ours = server_cpu + load_cpu + proxy_cpu;
            let other = (machine - ours).max(0.0);
            fields.push(("other_cpu_s", json!(round(other, 2))));
            // More than a tenth of a core on average went to something else.
            fields.push(("disturbed", json!(other > 0.1 * wall)));
            fields.push(("wall_s", json!(round(wall, 2))));
            fields.extend(m.extra.iter().cloned());
            emit(&fields)?;
            if path == Via::Direct {
                direct = Some(m);
            }
        }
    }

    // The end state, then a graceful shutdown through the admin server.
    let end_rss = procfs::status_number(proxy.pid, "VmRSS")?;
    let end_hwm = procfs::status_number(proxy.pid, "VmHWM")?;
    peak_rss = peak_rss.max(end_hwm);
    let proxy_cpu_total = procfs::cpu_seconds(proxy.pid)? - proxy_cpu_start;
    let failures = scrape_failures(admin)
        .await
        .map_or(Value::Null, |f| json!(f));
    let shutdown = request_once(admin, Method::POST, "/shutdown").await;
    let proxy_exit = match shutdown {
        Ok((StatusCode::OK, _)) => proxy.wait_or_kill(Duration::from_secs(5)).await,
        Ok((s, _)) => format!("/shutdown answered {s}; {}", kill(&mut proxy).await),
        Err(e) => format!("/shutdown failed: {e:#}; {}", kill(&mut proxy).await),
    };
    let log_lines = std::fs::read_to_string(&proxy_log)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    emit(&[
        ("scenario", json!("proxy_rss_end")),
        ("proxy_rss_end_kb", json!(end_rss)),
        ("proxy_hwm_end_kb", json!(end_hwm)),
        ("proxy_peak_rss_kb", json!(peak_rss)),
        ("proxy_cpu_total_s", json!(round(proxy_cpu_total, 2))),
        ("proxy_failed_responses", failures),
        ("proxy_log_lines", json!(log_lines)),
        ("proxy_exit", json!(proxy_exit)),
        ("load_errors", json!(total_errors)),
        ("loadavg_1m", json!(loadavg())),
    ])?;
    drop(server);
    Ok(())
}

async fn kill(child: &mut Guarded) -> String {
    child.wait_or_kill(Duration::ZERO).await
}

/// `response_total{...classification="failure"...}` from the proxy's metrics, summed by
/// `status_code` and `error` label, e.g. `{"502 connect": 2}`.
fn failed_responses(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("response_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if !labels.contains("classification=\"failure\"") {
            continue;
        }
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                .map_or("", |v| v.trim_end_matches('"'))
        };
        let key = format!("{} {}", label("status_code"), label("error"))
            .trim()
            .to_string();
        *out.entry(key).or_insert(0) += value.trim().parse::<f64>().unwrap_or(0.0) as u64;
    }
    out
}

/// The proxy's failed responses so far, by status and error; `None` if /metrics fails.
async fn scrape_failures(admin: SocketAddr) -> Option<BTreeMap<String, u64>> {
    match request_once(admin, Method::GET, "/metrics").await {
        Ok((StatusCode::OK, body)) => Some(failed_responses(&String::from_utf8_lossy(&body))),
        _ => None,
    }
}

/// `after - before`, key by key, leaving out zeros.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
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
async fn wait_until<F, Fut>(what: &str, child: &mut Guarded, mut probe: F) -> anyhow::Result<()>
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
    scratch: &Path,
    pid_file: Option<&Path>,
) -> anyhow::Result<Measured> {
    match sc.kind {
        Kind::Saturation => {
            let (s, tool, conc) = match sc.proto {
                Proto::Http1 => (
                    tools::wrk(url, opts.connections, opts.duration, scratch, pid_file).await?,
                    "wrk -t1",
                    opts.connections,
                ),
                Proto::Http2 => (
                    tools::h2load(
                        url,
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

    #[test]
    fn sums_failed_responses() {
        let m = "# HELP response_total x\n\
                 response_total{direction=\"inbound\",status_code=\"200\",classification=\"success\"} 10\n\
                 response_total{direction=\"inbound\",status_code=\"502\",classification=\"failure\",error=\"connect\"} 2\n\
                 response_total{direction=\"outbound\",status_code=\"504\",classification=\"failure\"} 1\n";
        let f = failed_responses(m);
        assert_eq!(f.get("502 connect"), Some(&2));
        assert_eq!(f.get("504"), Some(&1));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn scenario_names() {
        let sc = Scenario {
            proto: Proto::Http1,
            kind: Kind::Rate(1000),
        };
        assert_eq!(sc.name(Via::Proxy), "http1_rate1000_proxy");
        let sc = Scenario {
            proto: Proto::Http2,
            kind: Kind::Saturation,
        };
        assert_eq!(sc.name(Via::Direct), "http2_saturation_direct");
    }
}
