//! The production path's scenarios: `prod_<load>_<path>`, e.g. `prod_rate1000_mesh`, with
//! `<load>` `saturation` (wrk, closed loop), `rate1000`, `rate5000` (the open-loop generator)
//! and `<path>` one of [`PPath`]. Selected by name only (`--only prod_`): they need root.
//! Each round runs every path of a load shape in turn, direct first; each row carries that
//! round's direct p99 and the load generator's dispatch lag, so a noisy round shows.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{ADMIN, Bins, Cluster, PPath, fetch};
use crate::{
    all::AllOpts,
    counters::{self, Counters},
    load::Stops,
    netns,
    procfs::{self, Sched},
    report::{Measured, emit, loadavg, median, round},
    scenario::{Load, selected},
    stalls, tools,
};

/// The scenario's name: `prod_saturation_direct`, `prod_rate1000_hop`.
pub fn name(load: Load, path: PPath) -> String {
    format!("prod_{}_{}", load_part(load), path.part())
}

/// The load's part of a scenario name: `saturation`, `rate1000`.
fn load_part(load: Load) -> String {
    match load {
        Load::Saturation => "saturation".to_string(),
        Load::Rate(r) => format!("rate{r}"),
    }
}

/// The load shapes and their paths `--only` selects (nothing when `--only` is empty); a
/// selected path brings the direct baseline along.
pub fn table(rates: &[u64], only: &[String]) -> Vec<(Load, Vec<PPath>)> {
    if only.is_empty() {
        return Vec::new();
    }
    let mut loads = vec![Load::Saturation];
    loads.extend(rates.iter().map(|&r| Load::Rate(r)));
    loads
        .into_iter()
        .filter_map(|load| {
            let chosen: Vec<PPath> = PPath::ALL
                .into_iter()
                .filter(|&p| selected(only, &name(load, p)))
                .collect();
            if chosen.is_empty() {
                return None;
            }
            let mut paths = vec![PPath::Direct];
            paths.extend(chosen.into_iter().filter(|p| *p != PPath::Direct));
            Some((load, paths))
        })
        .collect()
}

pub fn wanted(opts: &AllOpts) -> bool {
    !table(&opts.rates, &opts.only).is_empty()
}

/// Why the production path cannot run here, if it cannot.
async fn unavailable(saturation: bool) -> Option<String> {
    match netns::effective_uid() {
        Ok(0) => {}
        Ok(uid) => return Some(format!("needs root (effective uid is {uid})")),
        Err(e) => return Some(format!("cannot tell the uid: {e:#}")),
    }
    let mut tools = vec![("ip", "-V"), ("setpriv", "--version")];
    if saturation {
        tools.push(("wrk", "--version"));
    }
    for (tool, arg) in tools {
        // `wrk --version` exits 1 after printing it: only a failure to start counts.
        if let Err(e) = tokio::process::Command::new(tool)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
        {
            return Some(format!("`{tool}` missing: {e}"));
        }
    }
    None
}

/// Runs the selected production-path scenarios: starts the cluster, runs `repeats` rounds of
/// each load shape, prints a row per round and path and, with rounds, a median row per path.
pub async fn run(opts: &AllOpts, b: &Bins<'_>) -> anyhow::Result<()> {
    let table = table(&opts.rates, &opts.only);
    if table.is_empty() {
        return Ok(());
    }
    let saturation = table.iter().any(|(l, _)| *l == Load::Saturation);
    if let Some(why) = unavailable(saturation).await {
        eprintln!("bench: prod: SKIP: the production path {why}");
        return emit(&[("scenario", json!("prod")), ("skipped", json!(why))]);
    }
    let paths: Vec<PPath> = PPath::ALL
        .into_iter()
        .filter(|p| table.iter().any(|(_, ps)| ps.contains(p)))
        .collect();
    eprintln!("bench: prod: starting pods for {paths:?} ...");
    let mut cluster = Cluster::start(b, &paths).await?;
    let result = rounds(opts, b, &mut cluster, &table).await;
    cluster.stop().await;
    result
}

/// One path's figures in one round, for the medians.
#[derive(Clone, Debug, Default)]
struct Round {
    p50: f64,
    p99: f64,
    p999: f64,
    added: Option<[f64; 3]>,
    direct_p99: Option<u64>,
    lag_p99: Option<u64>,
    /// The load generator's stops (`bench load`): runs of requests at least 1 ms late.
    stops: Option<Stops>,
    cpu_us_per_req: Option<f64>,
    wakeups_per_req: Option<f64>,
    rps: f64,
    errors: u64,
    disturbed: bool,
    /// What the stall probes counted on every CPU during the row, added up.
    stalled_ms: Option<f64>,
    /// Set once the round is over: some row of it was disturbed, lagged or stalled.
    noisy: bool,
}

async fn rounds(
    opts: &AllOpts,
    b: &Bins<'_>,
    cluster: &mut Cluster,
    table: &[(Load, Vec<PPath>)],
) -> anyhow::Result<()> {
    let repeats = opts.repeats.max(1);
    for (load, paths) in table {
        // Only the rate rows are judged quiet or noisy: saturation has no timer to lag.
        let judged = matches!(load, Load::Rate(_));
        let reruns = if judged { opts.rerun_noisy } else { 0 };
        let mut all: BTreeMap<String, Vec<Round>> = BTreeMap::new();
        let (mut r, mut quiet) = (0, 0);
        while quiet < repeats && r < repeats + reruns {
            r += 1;
            let mut direct: Option<(u64, u64, u64)> = None;
            let mut this: Vec<(String, Round)> = Vec::new();
            for path in paths {
                let name = name(*load, *path);
                tokio::time::sleep(Duration::from_millis(500)).await;
                eprintln!(
                    "bench: {name} ({:.0}s, round {r}) ...",
                    opts.duration.as_secs_f64().ceil()
                );
                let round = scenario(opts, b, cluster, &name, *load, *path, r, &mut direct)
                    .await
                    .with_context(|| format!("scenario {name}"))?;
                this.push((name, round));
            }
            let why = noise(this.iter().map(|(_, x)| x), opts);
            let noisy = judged && !why.is_empty();
            if noisy {
                eprintln!("bench: round {r} was noisy ({}) ...", why.join(", "));
                emit(&[
                    ("scenario", json!(format!("prod_{}", load_part(*load)))),
                    ("round", json!(r)),
                    ("noisy", json!(true)),
                    ("why", json!(why)),
                ])?;
            } else {
                quiet += 1;
            }
            for (name, mut round) in this {
                round.noisy = noisy;
                all.entry(name).or_default().push(round);
            }
        }
        if r > 1 {
            for path in paths {
                let name = name(*load, *path);
                if let Some(rs) = all.get(&name) {
                    emit(&median_row(&name, rs, reruns > 0))?;
                }
            }
        }
    }
    Ok(())
}

/// Why a round's rows cannot be trusted: other work took CPU during a row (`disturbed`), the
/// load generator's timer woke later than `--max-lag-us` at p99, or the CPUs stalled for
/// longer than `--max-stall-ms` during a row. Empty for a quiet round.
fn noise<'a>(rows: impl Iterator<Item = &'a Round>, opts: &AllOpts) -> Vec<String> {
    let (mut disturbed, mut lag, mut stalled) = (0, 0, 0);
    for x in rows {
        disturbed += usize::from(x.disturbed);
        lag += usize::from(x.lag_p99.is_some_and(|l| l > opts.max_lag_us));
        stalled += usize::from(x.stalled_ms.is_some_and(|s| s > opts.max_stall_ms));
    }
    let mut why = Vec::new();
    if disturbed > 0 {
        why.push(format!("{disturbed} rows disturbed"));
    }
    if lag > 0 {
        let max = opts.max_lag_us;
        why.push(format!("{lag} rows with dispatch lag p99 over {max} us"));
    }
    if stalled > 0 {
        let max = opts.max_stall_ms;
        why.push(format!("{stalled} rows with CPUs stalled over {max} ms"));
    }
    why
}

/// What one sidecar (or app) did over a scenario.
struct Probe {
    role: String,
    pid: u32,
    netns: Option<String>,
    cpu: f64,
    sched: Sched,
    counters: Option<Counters>,
}

async fn probe(bench: &Path, role: &str, pid: u32, netns: Option<&str>) -> anyhow::Result<Probe> {
    let counters = match netns {
        Some(ns) => fetch(bench, ns, &ADMIN.to_string(), "/metrics", false)
            .await
            .ok()
            .map(|m| counters::parse_counters(&m)),
        None => None,
    };
    Ok(Probe {
        role: role.to_string(),
        pid,
        netns: netns.map(str::to_string),
        cpu: procfs::cpu_seconds(pid)?,
        sched: procfs::sched(pid)?,
        counters,
    })
}

/// Runs one path once under `load`, prints its row, returns its figures. `direct`: the
/// round's direct (p50, p99, p99.9), set when `path` is direct.
#[expect(clippy::too_many_arguments, reason = "one scenario's whole context")]
async fn scenario(
    opts: &AllOpts,
    b: &Bins<'_>,
    cluster: &mut Cluster,
    name: &str,
    load: Load,
    path: PPath,
    round_no: usize,
    direct: &mut Option<(u64, u64, u64)>,
) -> anyhow::Result<Round> {
    let w = cluster
        .paths
        .iter()
        .find(|w| w.path == path)
        .context("path not started")?;
    let (client_ns, url) = (w.client.netns.clone(), w.url.clone());
    let mut targets: Vec<(String, u32, Option<String>)> = w
        .sidecars
        .iter()
        .map(|&i| {
            let s = &cluster.sidecars[i];
            (s.role.to_string(), s.child.pid, Some(s.netns.clone()))
        })
        .collect();
    targets.push(("app".into(), w.app_pid, None));
    let accounted: Vec<u32> = cluster
        .sidecars
        .iter()
        .map(|s| s.child.pid)
        .chain(cluster.apps.iter().map(|(_, a)| a.pid))
        .chain(cluster.identity.iter().map(|i| i.pid))
        .collect();
    let mut before = Vec::new();
    for (role, pid, ns) in &targets {
        before.push(probe(b.bench, role, *pid, ns.as_deref()).await?);
    }
    let accounted0: f64 = accounted
        .iter()
        .filter_map(|&p| procfs::cpu_seconds(p).ok())
        .sum();
    let load_cpu0 = procfs::self_and_children_cpu_seconds()?;
    let machine0 = procfs::machine_busy_seconds()?;
    let started = Instant::now();
    let probes = opts
        .stall_probe
        .then(|| stalls::Running::start(b.bench, opts.duration, b.pid_file))
        .flatten();
    // `BENCH_PROD_LATENCIES=DIR`: each rate row's requests, one line each, in
    // DIR/<scenario>-<round>.tsv (when in the row the slow ones came).
    let latencies = std::env::var_os("BENCH_PROD_LATENCIES")
        .map(|d| std::path::PathBuf::from(d).join(format!("{name}-{round_no}.tsv")));
    let generated = generate(opts, b, &client_ns, &url, load, latencies.as_deref()).await;
    let wall = started.elapsed().as_secs_f64();
    let stalled = match probes {
        Some(p) => Some(p.finish().await?),
        None => None,
    };
    cluster.check_running()?;
    let g = generated?;
    let m = &g.measured;
    let machine = procfs::machine_busy_seconds()? - machine0;
    let load_cpu = procfs::self_and_children_cpu_seconds()? - load_cpu0;
    let accounted_cpu = accounted
        .iter()
        .filter_map(|&p| procfs::cpu_seconds(p).ok())
        .sum::<f64>()
        - accounted0;
    let other = (machine - accounted_cpu - load_cpu).max(0.0);
    let disturbed = other > 0.1 * wall;

    let reqs = m.requests.max(1) as f64;
    let per_req = |x: f64, places| json!(round(x / reqs, places));
    let mut parts = serde_json::Map::new();
    let (mut cpu_sum, mut wakeups_sum, mut meant) = (0.0, 0.0, true);
    for p in before {
        let after = probe(b.bench, &p.role, p.pid, p.netns.as_deref()).await?;
        let s = after.sched.since(&p.sched);
        let cpu = after.cpu - p.cpu;
        let mut o = serde_json::Map::new();
        o.insert("cpu_us_per_req".into(), per_req(cpu * 1e6, 2));
        o.insert(
            "on_cpu_us_per_req".into(),
            per_req(s.on_cpu_ns as f64 / 1e3, 2),
        );
        o.insert(
            "runq_wait_us_per_req".into(),
            per_req(s.wait_ns as f64 / 1e3, 2),
        );
        o.insert("wakeups_per_req".into(), per_req(s.slices as f64, 3));
        o.insert(
            "voluntary_cs_per_req".into(),
            per_req(s.voluntary as f64, 3),
        );
        o.insert(
            "involuntary_cs_per_req".into(),
            per_req(s.involuntary as f64, 3),
        );
        if p.role != "app" {
            cpu_sum += cpu;
            wakeups_sum += s.slices as f64;
        }
        if let (Some(c0), Some(c1)) = (&p.counters, &after.counters) {
            let c = c1.since(c0);
            o.insert(
                "http_requests".into(),
                json!(c.inbound_requests + c.outbound_requests),
            );
            o.insert("tcp_connects".into(), json!(c.tcp_connects));
            o.insert("failed_responses".into(), json!(c.failures));
            meant &= as_meant(path, &p.role, &c, &mut o);
        }
        parts.insert(p.role.clone(), Value::Object(o));
    }
    if !meant {
        eprintln!("bench: warning: {name}: the sidecars did not carry the traffic as described");
    }
    if path == PPath::Direct {
        *direct = Some((m.p50, m.p99, m.p999));
    }
    let added = match (path, *direct) {
        (PPath::Direct, _) | (_, None) => None,
        (_, Some((d50, d99, d999))) => Some([
            m.p50 as f64 - d50 as f64,
            m.p99 as f64 - d99 as f64,
            m.p999 as f64 - d999 as f64,
        ]),
    };
    let sidecar_cpu = (path != PPath::Direct).then(|| cpu_sum * 1e6 / reqs);
    let mut row: Vec<(&str, Value)> = vec![("scenario", json!(name)), ("round", json!(round_no))];
    row.extend(m.figures());
    row.extend([
        ("direct_p99_us", json!(direct.map(|d| d.1))),
        ("added_p50_us", json!(added.map(|a| a[0]))),
        ("added_p99_us", json!(added.map(|a| a[1]))),
        ("added_p999_us", json!(added.map(|a| a[2]))),
        ("dispatch_lag_p99_us", json!(g.lag_p99)),
    ]);
    row.extend(Stops::fields(g.stops));
    row.extend([
        (
            "vcpu_stalls",
            json!(stalled.as_ref().map(|s| s.0.to_json())),
        ),
        (
            "vcpu_stalls_per_cpu",
            json!(
                stalled
                    .as_ref()
                    .map(|s| s.1.iter().map(|c| c.to_json()).collect::<Vec<_>>())
            ),
        ),
        (
            "sidecar_cpu_us_per_req",
            json!(sidecar_cpu.map(|c| round(c, 2))),
        ),
        (
            "sidecar_wakeups_per_req",
            json!(round(wakeups_sum / reqs, 3)),
        ),
        ("processes", Value::Object(parts)),
        ("as_meant", json!(meant)),
        ("path", json!(path.describe())),
        ("load", json!(g.tool)),
        ("loadgen_cpu_s", json!(round(load_cpu, 2))),
        ("other_cpu_s", json!(round(other, 2))),
        ("disturbed", json!(disturbed)),
        ("wall_s", json!(round(wall, 2))),
        ("loadavg_1m", json!(loadavg())),
    ]);
    if let Some(e) = &g.first_error {
        row.push(("first_error", json!(e)));
    }
    emit(&row)?;
    Ok(Round {
        p50: m.p50 as f64,
        p99: m.p99 as f64,
        p999: m.p999 as f64,
        added,
        direct_p99: direct.map(|d| d.1),
        lag_p99: g.lag_p99,
        stops: g.stops,
        cpu_us_per_req: sidecar_cpu,
        wakeups_per_req: (path != PPath::Direct).then(|| wakeups_sum / reqs),
        rps: m.rps,
        errors: m.errors,
        disturbed,
        stalled_ms: stalled.map(|s| s.0.stalled.as_secs_f64() * 1e3),
        noisy: false,
    })
}

/// Whether a sidecar's counters show the traffic went the way the path says: HTTP requests
/// for the HTTP sidecars (over mTLS into the mesh's server), none for the relays.
fn as_meant(path: PPath, role: &str, c: &Counters, o: &mut serde_json::Map<String, Value>) -> bool {
    let http = c.inbound_requests + c.outbound_requests;
    match path {
        PPath::Relay | PPath::Relay2 => http == 0,
        PPath::Hop => http > 0,
        PPath::Mesh | PPath::MtlsH1 if role.ends_with("server") => {
            o.insert("mtls_fraction".into(), json!(c.mtls_fraction()));
            c.mtls_fraction() == Some(1.0)
        }
        PPath::Mesh | PPath::MtlsH1 => {
            o.insert("mtls_server_ids".into(), json!(c.outbound_server_ids));
            c.outbound_server_ids.values().sum::<u64>() > 0
        }
        PPath::Direct => true,
    }
}

/// What the load generator measured.
struct Generated {
    tool: &'static str,
    /// Its figures (no extra fields).
    measured: Measured,
    lag_p99: Option<u64>,
    stops: Option<Stops>,
    first_error: Option<String>,
}

/// The load, from inside the client pod: `wrk` at saturation, `bench load` at a rate.
async fn generate(
    opts: &AllOpts,
    b: &Bins<'_>,
    netns: &str,
    url: &str,
    load: Load,
    latencies: Option<&std::path::Path>,
) -> anyhow::Result<Generated> {
    match load {
        Load::Saturation => {
            let s = tools::wrk(
                Some(netns),
                url,
                None,
                opts.connections,
                opts.duration,
                b.scratch,
                b.pid_file,
            )
            .await?;
            Ok(Generated {
                tool: "wrk -t1",
                measured: Measured::saturation(&s, vec![]),
                lag_p99: None,
                stops: None,
                first_error: None,
            })
        }
        Load::Rate(rate) => {
            let mut cmd = netns::exec_in(netns, b.bench);
            cmd.args(["load", "--url", url])
                .args(["--rate", &rate.to_string()])
                .args(["--duration", &opts.duration.as_secs_f64().to_string()])
                .args(["--connections", &opts.load_connections.to_string()]);
            if let Some(path) = latencies {
                cmd.arg("--latencies").arg(path);
            }
            let limit = opts.duration + Duration::from_secs(30);
            let out = tools::run_tool("bench load", &mut cmd, limit, b.pid_file).await?;
            let v: Value = serde_json::from_str(out.trim())
                .with_context(|| format!("bench load's output: {out}"))?;
            let n = |k: &str| v.get(k).and_then(Value::as_u64);
            Ok(Generated {
                tool: "bench load (open loop)",
                measured: Measured {
                    rps: v.get("rps").and_then(Value::as_f64).unwrap_or(0.0),
                    p50: n("p50_us").unwrap_or(0),
                    p99: n("p99_us").unwrap_or(0),
                    p999: n("p999_us").unwrap_or(0),
                    max: n("max_us").unwrap_or(0),
                    requests: n("ok").unwrap_or(0),
                    errors: n("errors").unwrap_or(0) + n("timeouts").unwrap_or(0),
                    extra: vec![],
                },
                lag_p99: n("dispatch_lag_p99_us"),
                stops: Stops::from_fields(&v),
                first_error: v
                    .get("first_error")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        }
    }
}

/// A path's `median` row over its rounds, with every round's p99, direct p99 and dispatch lag
/// so the spread between rounds is visible. With `quiet_only` (noisy rounds were rerun), the
/// medians are over the quiet rounds, or over every round when none was quiet (`median_of`
/// says which).
fn median_row(name: &str, all: &[Round], quiet_only: bool) -> Vec<(&'static str, Value)> {
    let quiet: Vec<Round> = all.iter().filter(|r| !r.noisy).cloned().collect();
    let (rs, median_of) = if quiet_only && !quiet.is_empty() {
        (&quiet[..], "quiet rounds")
    } else {
        (all, "all rounds")
    };
    let med = |f: &dyn Fn(&Round) -> Option<f64>, places| {
        json!(median(rs.iter().filter_map(f).collect()).map(|x| round(x, places)))
    };
    let list = |f: &dyn Fn(&Round) -> Option<f64>| {
        json!(
            rs.iter()
                .map(|r| f(r).map(|x| round(x, 1)))
                .collect::<Vec<_>>()
        )
    };
    vec![
        ("scenario", json!(name)),
        ("round", json!("median")),
        ("median_of", json!(median_of)),
        ("noisy_rounds", json!(all.len() - quiet.len())),
        ("rounds", json!(rs.len())),
        ("rps", med(&|r| Some(r.rps), 1)),
        ("p50_us", med(&|r| Some(r.p50), 0)),
        ("p99_us", med(&|r| Some(r.p99), 0)),
        ("p999_us", med(&|r| Some(r.p999), 0)),
        ("added_p50_us", med(&|r| r.added.map(|a| a[0]), 0)),
        ("added_p99_us", med(&|r| r.added.map(|a| a[1]), 0)),
        ("added_p999_us", med(&|r| r.added.map(|a| a[2]), 0)),
        ("sidecar_cpu_us_per_req", med(&|r| r.cpu_us_per_req, 2)),
        ("sidecar_wakeups_per_req", med(&|r| r.wakeups_per_req, 3)),
        ("p99_us_all", list(&|r| Some(r.p99))),
        ("added_p99_us_all", list(&|r| r.added.map(|a| a[1]))),
        (
            "direct_p99_us_all",
            list(&|r| r.direct_p99.map(|d| d as f64)),
        ),
        (
            "dispatch_lag_p99_us_all",
            list(&|r| r.lag_p99.map(|d| d as f64)),
        ),
        ("vcpu_stalled_ms_all", list(&|r| r.stalled_ms)),
        (
            "stopped_requests",
            med(&|r| r.stops.map(|s| s.requests as f64), 0),
        ),
        (
            "stopped_requests_all",
            list(&|r| r.stops.map(|s| s.requests as f64)),
        ),
        (
            "stops_over_5ms_all",
            list(&|r| r.stops.map(|s| s.over_5ms as f64)),
        ),
        ("errors", json!(rs.iter().map(|r| r.errors).sum::<u64>())),
        (
            "disturbed_rounds",
            json!(rs.iter().filter(|r| r.disturbed).count()),
        ),
        ("loadavg_1m", json!(loadavg())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(only: &[&str]) -> Vec<String> {
        let row =
            |(l, ps): &(Load, Vec<PPath>)| ps.iter().map(|p| name(*l, *p)).collect::<Vec<_>>();
        crate::scenario::tests::selected_names(table, only, row)
    }

    #[test]
    fn selected_by_name_only() {
        assert!(names(&[]).is_empty());
        assert!(names(&["http1"]).is_empty());
        assert_eq!(names(&["prod_"]).len(), 3 * PPath::ALL.len());
        assert_eq!(
            names(&["prod_rate1000_mesh"]),
            ["prod_rate1000_direct", "prod_rate1000_mesh"]
        );
        assert_eq!(
            names(&["prod_rate1000_relay"]),
            [
                "prod_rate1000_direct",
                "prod_rate1000_relay",
                "prod_rate1000_relay2"
            ]
        );
    }

    fn round(p99: f64, lag: u64, disturbed: bool) -> Round {
        Round {
            p99,
            added: Some([0.0, p99 - 300.0, 0.0]),
            lag_p99: Some(lag),
            disturbed,
            ..Round::default()
        }
    }

    #[test]
    fn a_round_is_noisy_when_a_row_is_disturbed_lagged_or_stalled() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            all: AllOpts,
        }
        let opts = Cli::parse_from(["bench", "--max-lag-us", "200", "--max-stall-ms", "30"]).all;
        let quiet = [round(400.0, 150, false), round(500.0, 200, false)];
        assert!(noise(quiet.iter(), &opts).is_empty());
        let lagged = [round(400.0, 150, false), round(500.0, 201, false)];
        assert_eq!(
            noise(lagged.iter(), &opts),
            ["1 rows with dispatch lag p99 over 200 us"]
        );
        let disturbed = [round(400.0, 150, true), round(500.0, 150, true)];
        assert_eq!(noise(disturbed.iter(), &opts), ["2 rows disturbed"]);
        let mut stalled = round(400.0, 150, false);
        stalled.stalled_ms = Some(30.5);
        let mut almost = round(400.0, 150, false);
        almost.stalled_ms = Some(30.0);
        assert_eq!(
            noise([stalled, almost].iter(), &opts),
            ["1 rows with CPUs stalled over 30 ms"]
        );
    }

    #[test]
    fn medians_leave_out_noisy_rounds_when_they_were_rerun() {
        let mut noisy = round(5000.0, 900, false);
        noisy.noisy = true;
        let rs = [round(400.0, 150, false), noisy, round(600.0, 150, false)];
        let get = |row: &[(&str, Value)], k: &str| {
            row.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let rerun = median_row("x", &rs, true);
        assert_eq!(get(&rerun, "p99_us"), json!(500.0));
        assert_eq!(get(&rerun, "added_p99_us"), json!(200.0));
        assert_eq!(get(&rerun, "rounds"), json!(2));
        assert_eq!(get(&rerun, "noisy_rounds"), json!(1));
        assert_eq!(get(&rerun, "median_of"), json!("quiet rounds"));
        // Without reruns every round counts, as before.
        let all = median_row("x", &rs, false);
        assert_eq!(get(&all, "p99_us"), json!(600.0));
        assert_eq!(get(&all, "median_of"), json!("all rounds"));
        // No quiet round at all: the medians of every round, said so.
        let none = median_row("x", &rs[1..2], true);
        assert_eq!(get(&none, "p99_us"), json!(5000.0));
        assert_eq!(get(&none, "median_of"), json!("all rounds"));
    }
}
