//! `bench all`: starts the upstream server and the paths the selected scenarios use (one proxy,
//! the mesh, the two-proxy pairs, the policy mesh; see `path.rs`), runs the scenario table
//! (`scenario.rs`) round by round, then the Certify and destination benchmarks, and prints one
//! JSON object per line per scenario.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    certify, client,
    path::{Ctx, Paths, ProxyUse, RunTotals, ServerOpts, Via},
    policy,
    procfs::{self, Scratch},
    proxy::Launch,
    report::{self, Measured, RoundOf, emit, loadavg, ratio, round},
    scenario::{self, Entry, Group, Proto, selected},
    tools,
};

/// `bench all`'s options, from its command line.
#[derive(Clone, Debug, clap::Args)]
pub struct AllOpts {
    /// Seconds per scenario.
    #[arg(long = "duration", value_name = "DURATION", default_value_t = 10.0)]
    pub duration_secs: f64,
    // `duration_secs`, checked to be positive (by `main`).
    #[arg(skip)]
    pub duration: Duration,
    /// The proxy binary [default: linkerd-proxy next to this binary].
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// The mesh binary, for the identity service and `certify` [default: mesh next to this
    /// binary].
    #[arg(long)]
    pub mesh_bin: Option<PathBuf>,
    /// LINKERD2_PROXY_CORES for every proxy.
    #[arg(long, default_value_t = 1)]
    pub proxy_cores: usize,
    /// Runtime worker threads of the upstream server.
    #[arg(long, default_value_t = 1)]
    pub server_threads: usize,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Connections for the saturation runs (wrk -c, h2load -c).
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Concurrent streams per connection for the HTTP/2 saturation run (h2load -m).
    #[arg(long, default_value_t = 10)]
    pub h2_streams: usize,
    /// Connections of the open-loop generator.
    #[arg(long, default_value_t = 16)]
    pub load_connections: usize,
    /// Request rates for the open-loop runs.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<u64>,
    /// Certify requests in flight for `certify` (`mesh identity bench --concurrency`).
    #[arg(long, default_value_t = 4)]
    pub certify_concurrency: usize,
    /// Only scenarios whose name starts with one of these, e.g. `http1_rate,certify`. A
    /// `_proxy` or `_mesh` scenario always brings its `_direct` baseline along.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Run each scenario's paths this many times in turn (direct, proxy, mesh, the policy
    /// cases, then again) and add a `median` row per path.
    // With more than one, every row also carries its `round`.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Production-path rate rows only: after a noisy round run another (every path of it),
    /// up to this many extra rounds, and take the medians over the quiet rounds. A round is
    /// noisy when any of its rows is `disturbed`, the load generator's timer woke later than
    /// `--max-lag-us` at p99, or the CPUs stalled longer than `--max-stall-ms`. The noisy
    /// rounds' rows stay in the output, followed by a line that says why.
    #[arg(long, default_value_t = 0)]
    pub rerun_noisy: usize,
    /// The dispatch lag (p99, µs) above which a production-path round counts as noisy.
    #[arg(long, default_value_t = 200)]
    pub max_lag_us: u64,
    /// Production-path rows: run a stall probe per CPU beside every row (`vcpu_stalls`; see
    /// `bench stalls`). It wakes each CPU 1,000 times a second, which keeps idle vCPUs from
    /// halting and so changes the latencies it is there to explain: off unless asked for.
    #[arg(long)]
    pub stall_probe: bool,
    /// The time the CPUs stalled during a production-path row (`vcpu_stalls`: a probe per CPU
    /// at real-time priority woke more than 200 µs late, lateness added up over the CPUs, ms)
    /// above which its round counts as noisy.
    #[arg(long, default_value_t = 100.0)]
    pub max_stall_ms: f64,
    /// Where to write the proxy's stderr [default: a temporary file]. The mesh's logs
    /// (`identity.log`, `mesh-client-proxy.log`, `mesh-server-proxy.log`) go next to it.
    #[arg(long)]
    pub proxy_log: Option<PathBuf>,
    /// Append the pid of every child process to this file (for cleanup by `bench/run`).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
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

/// Binaries and directories shared by the parts of a run.
#[derive(Debug)]
struct Env {
    exe: PathBuf,
    proxy_bin: PathBuf,
    mesh_bin: PathBuf,
    scratch: Scratch,
    proxy_log: PathBuf,
    log_dir: PathBuf,
}

async fn run_inner(opts: &AllOpts) -> anyhow::Result<()> {
    let table = scenario::table(&opts.rates, &opts.only);
    let certify = selected(&opts.only, "certify");
    // A minute long, so only when asked for by name.
    let destination = opts
        .only
        .iter()
        .any(|p| "destination".starts_with(p.as_str()) && !p.is_empty());
    let prod = crate::prod::wanted(opts);
    if table.is_empty() && !certify && !destination && !prod {
        bail!("no scenario matches --only {}", opts.only.join(","));
    }
    let uses = |via: Via| table.iter().any(|g| g.entries.iter().any(|e| e.via == via));
    let saturation = |proto: Proto| {
        table
            .iter()
            .any(|g| g.proto == proto && g.load == scenario::Load::Saturation)
    };
    for (tool, needed) in [
        ("wrk", saturation(Proto::Http1)),
        ("h2load", saturation(Proto::Http2)),
    ] {
        if needed && tools::find_on_path(tool).is_none() {
            bail!("`{tool}` is not on PATH; install it with `apt-get install wrk nghttp2-client`");
        }
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let proxy_bin = match &opts.proxy_bin {
        Some(p) => p.clone(),
        None => exe.with_file_name("linkerd-proxy"),
    };
    if (uses(Via::Proxy) || uses(Via::Mesh) || prod) && !proxy_bin.is_file() {
        bail!(
            "no proxy binary at {}; build it with `cargo build --release -p linkerd-proxy`",
            proxy_bin.display()
        );
    }
    let mesh_bin = match &opts.mesh_bin {
        Some(p) => p.clone(),
        None => exe.with_file_name("mesh"),
    };
    if (uses(Via::Mesh) || certify || destination || prod) && !mesh_bin.is_file() {
        bail!(
            "no mesh binary at {}; build it with `cargo build --release -p mesh`",
            mesh_bin.display()
        );
    }
    let scratch = Scratch::new()?;
    let proxy_log = opts
        .proxy_log
        .clone()
        .unwrap_or_else(|| scratch.0.join("proxy.log"));
    let log_dir = proxy_log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&log_dir)?;
    let env = Env {
        exe,
        proxy_bin,
        mesh_bin,
        scratch,
        proxy_log,
        log_dir,
    };

    if let Some(l) = loadavg().filter(|l| *l > 0.7) {
        eprintln!("bench: warning: load average {l:.2}: other work on this machine skews results");
    }
    if !table.is_empty() {
        run_http(opts, &env, &table).await?;
    }
    if prod {
        let bins = crate::prod::Bins {
            bench: &env.exe,
            proxy: &env.proxy_bin,
            mesh: &env.mesh_bin,
            scratch: &env.scratch.0,
            log_dir: &env.log_dir,
            proxy_cores: opts.proxy_cores,
            pid_file: opts.pid_file.as_deref(),
        };
        crate::prod::run(opts, &bins).await?;
    }
    if certify {
        // Last, with every other process of the run gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!(
            "bench: certify ({:.0}s) ...",
            opts.duration.as_secs_f64().ceil()
        );
        let fields = certify::run(
            &env.mesh_bin,
            opts.duration,
            opts.certify_concurrency,
            opts.pid_file.as_deref(),
        )
        .await
        .context("scenario certify")?;
        let mut row = vec![("scenario", json!("certify"))];
        row.extend(fields);
        row.push(("loadavg_1m", json!(loadavg())));
        emit(&row)?;
    }
    if destination {
        eprintln!("bench: destination (10,000 endpoints, 1,000 watchers; about a minute) ...");
        let fields = crate::destination::run(&env.mesh_bin, opts.pid_file.as_deref())
            .await
            .context("scenario destination")?;
        let mut obj = serde_json::Map::new();
        obj.insert("scenario".into(), json!("destination"));
        obj.extend(fields);
        obj.insert("loadavg_1m".into(), json!(loadavg()));
        println!("{}", serde_json::Value::Object(obj));
    }
    Ok(())
}

/// Starts every path the table uses, runs the table (each group's entries in turn, `repeats`
/// rounds, then a median row per entry), then prints each path's end row.
async fn run_http(opts: &AllOpts, env: &Env, table: &[Group]) -> anyhow::Result<()> {
    let pid_file = opts.pid_file.as_deref();
    let vias: Vec<Via> = table
        .iter()
        .flat_map(|g| g.entries.iter().map(|e| e.via))
        .collect();
    let ports = client::free_ports(1 + Paths::PORTS)?;
    let ctx = Ctx {
        launch: Launch {
            bin: &env.proxy_bin,
            cores: opts.proxy_cores,
            pid_file,
        },
        mesh_bin: &env.mesh_bin,
        upstream: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        scratch: &env.scratch.0,
        log_dir: &env.log_dir,
        proxy_log: &env.proxy_log,
        proxy_cores: opts.proxy_cores,
    };
    let server = ServerOpts {
        exe: &env.exe,
        threads: opts.server_threads,
        body_size: opts.body_size,
    };
    let mut totals = RunTotals::default();
    let mut paths = Paths::start(&ctx, server, &ports[1..], &vias, &mut totals.peaks).await?;
    totals.cpu_start = paths
        .pids()
        .into_iter()
        .filter_map(|p| Some((p, procfs::cpu_seconds(p).ok()?)))
        .collect();
    let repeats = opts.repeats.max(1);
    for group in table {
        let mut rounds: BTreeMap<&str, Vec<RoundOf>> = BTreeMap::new();
        for r in 0..repeats {
            let mut baselines = Baselines::default();
            for entry in &group.entries {
                let round = (repeats > 1).then_some((r + 1, repeats));
                let (m, of) =
                    run_entry(opts, env, &mut paths, entry, round, &baselines, &mut totals).await?;
                rounds.entry(&entry.name).or_default().push(of);
                match entry.via {
                    Via::Direct => baselines.direct = Some(m),
                    Via::Mesh => baselines.mesh = Some(m),
                    _ => {}
                }
            }
        }
        if repeats > 1 {
            for entry in &group.entries {
                if let Some(rs) = rounds.get(entry.name.as_str()) {
                    emit(&report::median_row(&entry.name, rs))?;
                }
            }
        }
    }

    // The end state, then a graceful shutdown through the admin servers.
    paths.finish(&totals).await?;
    if !totals.policy_failures.is_empty() {
        bail!(
            "a policy scenario measured a policy that was not applied:\n{}",
            totals.policy_failures.join("\n")
        );
    }
    Ok(())
}

/// The rows of the current round that later rows are compared with.
#[derive(Debug, Default)]
struct Baselines {
    direct: Option<Measured>,
    /// The plain mesh, for the policy cases.
    mesh: Option<Measured>,
}

/// Runs one entry of the table once and prints its row; returns what was measured and the
/// round's figures for the medians. `round`: (this round, of how many) when repeating.
async fn run_entry(
    opts: &AllOpts,
    env: &Env,
    paths: &mut Paths,
    entry: &Entry,
    round_of: Option<(usize, usize)>,
    baselines: &Baselines,
    totals: &mut RunTotals,
) -> anyhow::Result<(Measured, RoundOf)> {
    let name = entry.name.as_str();
    let target = paths.target(entry.via)?;
    // Let sockets from the previous run close and the machine go quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let of = round_of.map_or(String::new(), |(r, n)| format!(", round {r}/{n}"));
    eprintln!(
        "bench: {name} ({:.0}s{of}) ...",
        opts.duration.as_secs_f64().ceil()
    );
    let mut before = Vec::new();
    for p in &target.probes {
        if totals.peaks.resettable {
            procfs::reset_peak_rss(p.pid);
        }
        before.push((
            client::scrape_counters(p.admin).await,
            procfs::cpu_seconds(p.pid)?,
        ));
    }
    let pids = paths.pids();
    let background_cpu0 = cpu_of(&pids)?;
    let server_cpu0 = procfs::cpu_seconds(paths.server_pid())?;
    let load_cpu0 = procfs::self_and_children_cpu_seconds()?;
    let machine0 = procfs::machine_busy_seconds()?;
    let started = Instant::now();
    let m = scenario::measure(
        opts,
        entry,
        &target,
        &env.scratch.0,
        opts.pid_file.as_deref(),
    )
    .await;
    let wall = started.elapsed().as_secs_f64();
    paths.check_running(name)?;
    let m = m.with_context(|| format!("scenario {name}"))?;
    let server_cpu = procfs::cpu_seconds(paths.server_pid())? - server_cpu0;
    let load_cpu = procfs::self_and_children_cpu_seconds()? - load_cpu0;
    let machine = procfs::machine_busy_seconds()? - machine0;
    let background_cpu = cpu_of(&pids)? - background_cpu0;
    let mut used = Vec::new();
    for (p, (counters_before, cpu_before)) in target.probes.iter().zip(before) {
        let after = client::scrape_counters(p.admin).await;
        let rss_kb = procfs::status_number(p.pid, "VmHWM")?;
        let peak = totals.peaks.by_role.entry(p.role).or_default();
        *peak = (*peak).max(rss_kb);
        used.push(ProxyUse {
            role: p.role,
            rss_kb,
            cpu_s: procfs::cpu_seconds(p.pid)? - cpu_before,
            counters: match (counters_before, after) {
                (Some(b), Some(a)) => Some(a.since(&b)),
                _ => None,
            },
        });
    }
    totals.load_errors += m.errors;

    let mut fields: Vec<(&str, Value)> = vec![("scenario", json!(name))];
    if let Some((r, _)) = round_of {
        fields.push(("round", json!(r)));
    }
    fields.extend(m.figures());
    let vs_mesh = match entry.via {
        Via::MeshPolicy(_) => baselines.mesh.as_ref(),
        _ => None,
    };
    if entry.via == Via::Direct {
        fields.push(("proxy_rss_kb", Value::Null));
        fields.push(("proxy_cpu_s", Value::Null));
    } else {
        let direct = baselines.direct.as_ref();
        report::proxied_fields(&mut fields, entry.via, &m, direct, vs_mesh, &used);
    }
    let mut applied = None;
    if let Via::MeshPolicy(case) = entry.via {
        match policy::verdict(case, &used) {
            Ok(evidence) => {
                applied = Some(true);
                fields.push(("policy", evidence));
            }
            Err((e, field)) => {
                eprintln!("bench: ERROR: {name}: the policy was not applied: {e}");
                totals.policy_failures.push(format!("{name}: {e}"));
                applied = Some(false);
                fields.push(("policy", field));
            }
        }
    }
    fields.push(("server_cpu_s", json!(round(server_cpu, 2))));
    fields.push(("loadgen_cpu_s", json!(round(load_cpu, 2))));
    // Busy CPU not accounted to our processes (server, proxies, identity service, control
    // plane, load generator): other work on the machine (and some interrupt time). Large
    // values mean the numbers are not trustworthy.
    let other = (machine - background_cpu - load_cpu).max(0.0);
    fields.push(("other_cpu_s", json!(round(other, 2))));
    // More than a tenth of a core on average went to something else.
    fields.push(("disturbed", json!(other > 0.1 * wall)));
    fields.push(("wall_s", json!(round(wall, 2))));
    // The share of the machine's CPU time nobody used. Well above zero in a saturation run
    // means the path did not run out of CPU but out of concurrency: its processes waited on
    // each other (or on the scheduler).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    fields.push((
        "machine_idle",
        json!(round((1.0 - machine / (wall * cpus)).clamp(0.0, 1.0), 3)),
    ));
    fields.extend(m.extra.iter().cloned());
    emit(&fields)?;
    let cpu: f64 = used.iter().map(|u| u.cpu_s).sum();
    let of = RoundOf {
        rps: m.rps,
        p50: m.p50 as f64,
        p99: m.p99 as f64,
        errors: m.errors,
        cpu_us_per_req: (entry.via != Via::Direct && m.requests > 0)
            .then(|| cpu * 1e6 / m.requests as f64),
        ratio: baselines.direct.as_ref().map(|d| ratio(m.rps, d.rps)),
        ratio_vs_mesh: vs_mesh.map(|b| ratio(m.rps, b.rps)),
        applied,
        disturbed: other > 0.1 * wall,
    };
    Ok((m, of))
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| procfs::cpu_seconds(p)).sum()
}
