//! The fan-out benchmark: one service with many endpoints, many `Get` watchers over
//! loopback, and the time for one endpoint change to reach every watcher.
//!
//! The server (index + gRPC) runs in this process; the watchers run in a child process
//! (`client`, started through [`BenchOptions::client`]) so this process's RSS is the
//! server's alone. Each round removes one endpoint or adds it back through
//! [`Index::set_service`](crate::index::Index::set_service); the clock starts just before
//! that call, so the index's own work (rebuilding the port's endpoints and diffing them)
//! is included. The child timestamps each watcher's update with the wall clock, which
//! both processes share.

use crate::{
    Error, IdentityConfig,
    model::{Backend, Service, ServiceKey, ServicePort},
    server::{self, Config, Source},
};
use proto::{
    api::destination::{GetDestination, destination_client::DestinationClient, update},
    id::IdentityName,
};
use serde::Serialize;
use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};

const PATH: &str = "bench.bench.svc.cluster.local:8080";

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub endpoints: usize,
    pub watchers: usize,
    pub changes: usize,
    /// The command that runs [`client`] (its flags are appended).
    pub client: Vec<OsString>,
}

/// The watcher side's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub watchers: usize,
    #[arg(long)]
    pub endpoints: usize,
    #[arg(long)]
    pub changes: usize,
    /// Watchers connecting (and receiving the full set) at a time.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
}

/// The result, printed as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub endpoints: usize,
    pub watchers: usize,
    pub changes: usize,
    /// Until every watcher had the full endpoint set.
    pub sync_seconds: f64,
    /// Over every (change, watcher) pair: change applied → update received.
    pub latency_ms: Percentiles,
    /// Per change, the time until the last watcher had it.
    pub all_watchers_ms: Percentiles,
    /// The server's RSS once every watcher was in sync, and after the changes.
    pub rss_mb_synced: f64,
    pub rss_mb_after: f64,
    /// The server's peak RSS (VmHWM), initial sync included.
    pub rss_mb_peak: f64,
    pub updates_sent: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> Result<Report, Error> {
    let bench = |m: String| Error::Bench(m);
    let (prog, args) = opts
        .client
        .split_first()
        .ok_or_else(|| bench("no client command".into()))?;
    let config = Config {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        admin_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        source: Source::Manual,
        cluster_domain: "cluster.local".into(),
        ids: IdentityConfig::default(),
        grace: Duration::from_secs(1),
    };
    let bound = server::bind(config).await?;
    let addr = bound.grpc_addr().map_err(|e| bench(e.to_string()))?;
    let index = bound.index.clone();
    let metrics = bound.metrics.clone();
    let key = ServiceKey::new("bench", "bench");
    let mut svc = service(opts.endpoints.max(2));
    let moving = svc
        .backends
        .pop()
        .ok_or_else(|| bench("no endpoints".into()))?;
    index.set_service(key.clone(), svc.clone());

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async move {
        let _ = stop_rx.await;
    }));

    let started = Instant::now();
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--watchers")
        .arg(opts.watchers.to_string())
        .arg("--endpoints")
        .arg(svc.backends.len().to_string())
        .arg("--changes")
        .arg(opts.changes.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| bench(format!("cannot start the client: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| bench("no client stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = async || -> Result<String, Error> {
        lines
            .next_line()
            .await
            .map_err(|e| Error::Bench(e.to_string()))?
            .ok_or_else(|| Error::Bench("the client exited early".into()))
    };
    let ready = next_line().await?;
    if ready != "ready" {
        return Err(bench(format!("client said {ready:?}")));
    }
    let sync_seconds = started.elapsed().as_secs_f64();
    let rss_synced = rss_kb("VmRSS");

    let mut all = Vec::with_capacity(opts.changes * opts.watchers);
    let mut last_per_change = Vec::with_capacity(opts.changes);
    for round in 0..opts.changes {
        // `moving` starts out of the set: even rounds add it, odd rounds remove it.
        let mut next = svc.clone();
        if round % 2 == 0 {
            next.backends.push(moving.clone());
        } else {
            next.backends.retain(|b| !Arc::ptr_eq(b, &moving));
        }
        let t0 = unix_ns();
        index.set_service(key.clone(), next.clone());
        svc = next;
        let line = next_line().await?;
        let mut parts = line.split_whitespace();
        if parts.next() != Some("round") {
            return Err(bench(format!("client said {line:?}")));
        }
        let mut latest = 0.0f64;
        for t in parts.skip(1) {
            let t: u64 = t.parse().map_err(|_| bench(format!("bad line {line:?}")))?;
            let ms = t.saturating_sub(t0) as f64 / 1e6;
            latest = latest.max(ms);
            all.push(ms);
        }
        last_per_change.push(latest);
    }
    let rss_after = rss_kb("VmRSS");
    let peak = rss_kb("VmHWM");
    let _ = child.wait().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(Report {
        endpoints: opts.endpoints,
        watchers: opts.watchers,
        changes: opts.changes,
        sync_seconds,
        latency_ms: percentiles(&mut all),
        all_watchers_ms: percentiles(&mut last_per_change),
        rss_mb_synced: rss_synced as f64 / 1024.0,
        rss_mb_after: rss_after as f64 / 1024.0,
        rss_mb_peak: peak as f64 / 1024.0,
        updates_sent: metrics.updates_sent(crate::metrics::Api::Get),
    })
}

/// A meshed service on port 8080 with `n` endpoints (10.x.y.z), each with an identity and
/// pod labels, as a Kubernetes deployment would have.
pub fn service(n: usize) -> Service {
    let ids = IdentityConfig::default();
    let identity =
        IdentityName::service_account("bench", "bench", &ids.control_plane_ns, &ids.trust_domain)
            .ok()
            .map(Arc::new);
    let backends = (0..n)
        .map(|i| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)));
            let labels = vec![
                ("pod".to_string(), format!("bench-{i}")),
                ("serviceaccount".to_string(), "bench".to_string()),
                ("deployment".to_string(), "bench".to_string()),
            ];
            Arc::new(Backend {
                meshed: true,
                identity: identity.clone(),
                labels: labels.into(),
                ..Backend::new(ip)
            })
        })
        .collect();
    Service {
        cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))],
        ports: vec![ServicePort::same_target(8080, "http")],
        backends,
        ..Service::default()
    }
}

/// The watcher side: connects `watchers` streams in batches, waits for each to hold the
/// full set, prints `ready`, then one `round <n> <unix-ns>…` line per change.
pub async fn client(a: ClientArgs) -> Result<(), Error> {
    let (sync_tx, mut sync_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, u64)>();
    let url = format!("http://{}", a.addr);
    let mut started = 0;
    while started < a.watchers {
        let batch = a.batch.max(1).min(a.watchers - started);
        for _ in 0..batch {
            let (sync_tx, seen_tx, url) = (sync_tx.clone(), seen_tx.clone(), url.clone());
            let (endpoints, changes) = (a.endpoints, a.changes);
            tokio::spawn(async move {
                let r = watch(&url, endpoints, changes, &sync_tx, &seen_tx).await;
                if let Err(e) = r {
                    let _ = sync_tx.send(Err(e));
                }
            });
        }
        for _ in 0..batch {
            match sync_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(Error::Bench(format!("watcher: {e}"))),
                None => return Err(Error::Bench("watchers gone".into())),
            }
        }
        started += batch;
    }
    println!("ready");
    let mut rounds: Vec<Vec<u64>> = vec![Vec::with_capacity(a.watchers); a.changes];
    let mut done = 0;
    while done < a.changes {
        let Some((round, t)) = seen_rx.recv().await else {
            return Err(Error::Bench("watchers gone".into()));
        };
        let Some(r) = rounds.get_mut(round) else {
            continue;
        };
        r.push(t);
        if r.len() == a.watchers {
            let ts: Vec<String> = r.iter().map(u64::to_string).collect();
            println!("round {round} {}", ts.join(" "));
            done += 1;
        }
    }
    Ok(())
}

async fn watch(
    url: &str,
    endpoints: usize,
    changes: usize,
    synced: &mpsc::UnboundedSender<Result<(), String>>,
    seen: &mpsc::UnboundedSender<(usize, u64)>,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = DestinationClient::new(channel);
    let mut stream = client
        .get(GetDestination {
            path: PATH.into(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut have = 0;
    while have < endpoints {
        match stream.message().await.map_err(|e| e.to_string())? {
            Some(u) => {
                if let Some(update::Update::Add(set)) = u.update {
                    have += set.addrs.len();
                }
            }
            None => return Err("stream ended".into()),
        }
    }
    let _ = synced.send(Ok(()));
    for round in 0..changes {
        match stream.message().await.map_err(|e| e.to_string())? {
            Some(_) => {
                let _ = seen.send((round, unix_ns()));
            }
            None => return Err("stream ended".into()),
        }
    }
    Ok(())
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A field of /proc/self/status, in kB (0 if unavailable).
pub fn rss_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentiles(v: &mut [f64]) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}
