//! `mesh up`: a mesh on one machine.
//!
//! Each run is an instance of its own (`instance.rs`): a name, a free block of loopback
//! addresses, a state file and a directory. It starts, in order and each step only once the
//! one before is ready:
//! 1. the control plane (`control.rs`): fresh trust, a token per workload, the identity,
//!    destination and policy services, the last two watching a registry file (`registry.rs`);
//! 2. a sidecar per workload (`workloads.rs`, started by `launch.rs`), each on the workload's
//!    own loopback address, with its own identity, ready once it holds a certificate and its
//!    inbound policy;
//! 3. each workload's app, under `mesh supervise` (`supervise.rs`); a workload joins discovery
//!    once its app passes its health check, and leaves it while it fails;
//! 4. the load generator (`load.rs`), after a request through the front door succeeded (the
//!    `Try:` line shows that request).
//!
//! Workloads reach each other only through their sidecars: the app uses its sidecar's
//! outbound listener as an HTTP proxy (or a local TCP port it carries), the sidecar resolves
//! the service through the destination service, balances over its ready endpoints and dials
//! the chosen peer's inbound sidecar over mTLS, which delivers to the peer app.
//!
//! Nothing outlives `mesh up` (`process.rs`): Ctrl-C, SIGTERM and SIGHUP stop the apps, drain
//! the sidecars and stop the control plane; if `mesh up` is killed, the kernel kills the rest.

mod config;
pub mod control;
mod launch;
mod load;
mod observe;
mod process;
mod registry;
mod summary;
pub mod supervise;
mod workloads;

pub use config::MeshFile;

use crate::instance::{self, Block, Paths, State, StateWorkload};
use crate::metrics::Scrape;
use crate::out::{self, outln};
use crate::stats::Rolling;
use anyhow::Context;
use launch::{Launcher, ProxyCommand};
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};
use workloads::Running;

pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A mesh file naming your own workloads (see examples/mesh.yaml). Default: the built-in
    /// demo (examples/demo.yaml).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The mesh's name, for `--mesh` of the other commands (see `mesh list`). Default: the
    /// file's name (`demo` for the demo), with `-2`, `-3`, ... when that one is running.
    #[arg(long)]
    name: Option<String>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Print one JSON summary at the end (the schema in mesh/README.md) instead of the live
    /// table. Exits 0 only if every workload ran, every route's requests succeeded and all
    /// traffic between workloads was mTLS.
    #[arg(long)]
    json: bool,
    /// Requests per second from the load generator (default: the file's `load.rps`).
    #[arg(long)]
    rps: Option<u32>,
    /// The first workload's loopback address; the control plane takes the one before it and
    /// workloads consecutive ones from it. Default: the first of 127.0.0.10, 127.0.1.10, ...
    /// 127.0.63.10 whose addresses no other mesh or program uses.
    #[arg(long)]
    base_ip: Option<Ipv4Addr>,
    /// The sidecar: the path of a `linkerd-proxy` binary, or `builtin` for `mesh proxy` (the
    /// same proxy code inside this binary). By default the standalone `linkerd-proxy` next to
    /// this binary when it was built with it (`cargo build --release -p mesh -p
    /// linkerd-proxy`), else `builtin`. The standalone binary is a quarter the size, so each
    /// sidecar maps fewer of its (shared) pages: RSS ≈ 7 MB instead of ≈ 13 MB.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// How long each step of the start (control plane, sidecars, apps, front door) may take.
    #[arg(long, default_value = "20")]
    ready_timeout_secs: u64,
    /// Keep the mesh's directory (logs, trust, registry) after it stops; by default it is
    /// removed. A kept one goes when a mesh of the same name starts.
    #[arg(long)]
    keep_logs: bool,
    /// Serve the dashboard (service graph, golden metrics, live requests, traces) here.
    /// Default: 127.0.0.1:50750, or the next free port.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<SocketAddr>,
    /// Serve no dashboard.
    #[arg(long, conflicts_with = "dashboard")]
    no_dashboard: bool,
    /// Sidecars export their spans (OTLP/gRPC) to this collector (host:port: Jaeger, Tempo,
    /// an OpenTelemetry collector) instead of `mesh up`'s own receiver.
    #[arg(long, value_name = "HOST:PORT")]
    trace_collector: Option<String>,
    /// The share of requests traced (0 to 1): the load generator's, and those that reach a
    /// sidecar without a trace context.
    #[arg(long, default_value = "0.1", value_name = "SHARE")]
    trace_sample: f64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = match &args.file {
        Some(path) => MeshFile::load(path)?,
        None => MeshFile::demo()?,
    };
    let runtime = instance::runtime_dir()?;
    let (name, _name_lock) = match &args.name {
        Some(n) => {
            instance::check_name(n)?;
            instance::claim_name(&runtime, n, false)?
        }
        None => instance::claim_name(
            &runtime,
            &instance::name_from_file(args.file.as_deref()),
            true,
        )?,
    };
    let paths = instance::paths(&runtime, &name);
    let block = instance::claim_block(&instance::user_dir()?, args.base_ip, &|cp, first| {
        workloads::addresses(&file, cp, first)
    })?;
    instance::private_dir(&paths.dir, false)?;
    let logs = paths.dir.join("logs");
    instance::private_dir(&logs, false)?;
    let mut signals = Signals::new()?;
    let up = Up {
        args: &args,
        file: &file,
        name: &name,
        paths: &paths,
        block: &block,
        logs,
    };
    let outcome = up.run(&mut signals).await;
    let _ = std::fs::remove_file(&paths.state);
    if args.keep_logs {
        crate::out::errln!("mesh up: logs kept in {}", paths.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&paths.dir);
    }
    outcome
}

/// SIGINT (Ctrl-C), SIGTERM (`mesh down`, `kill`) and SIGHUP (the terminal closed) all stop
/// the mesh in order.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

struct Up<'a> {
    args: &'a Args,
    file: &'a MeshFile,
    name: &'a str,
    paths: &'a Paths,
    block: &'a Block,
    logs: PathBuf,
}

/// How a run ended before its summary.
enum Stopped {
    /// A signal while starting.
    Signal(&'static str),
}

impl Up<'_> {
    async fn run(&self, signals: &mut Signals) -> anyhow::Result<ExitCode> {
        let exe = std::env::current_exe().context("cannot find the mesh binary")?;
        let proxy = ProxyCommand::choose(&exe, self.args.proxy_bin.as_deref())?;
        let placed = workloads::place(self.file, self.block.first)?;
        let mut running: Vec<Running> = placed.iter().cloned().map(Running::new).collect();
        let observe = observe::Observe::start(observe::Options {
            mesh: self.name,
            control_plane: self.block.control_plane,
            dashboard: self.args.dashboard,
            no_dashboard: self.args.no_dashboard,
            trace_collector: self.args.trace_collector.as_deref(),
            sample: self.args.trace_sample,
            json: self.args.json,
        })
        .await?;
        let trace_env = observe.sidecar_env();
        let mut cp = control::ControlPlane::start(
            &exe,
            self.block.control_plane,
            &self.paths.dir,
            &self.logs,
            &placed,
            &registry::yaml(self.file, &placed, &|_| false),
        )?;
        let endpoints = cp.endpoints();
        let launcher = Launcher {
            exe: &exe,
            proxy: &proxy,
            file: self.file,
            cp: &endpoints,
            dir: &self.paths.dir,
            logs: &self.logs,
            trace_env: &trace_env,
        };
        let outcome = self
            .serve(signals, &mut cp, &mut running, &launcher, &observe)
            .await;
        // In order: apps, then sidecars (draining), then the control plane. A second signal
        // meanwhile kills whatever is left.
        let hurry = tokio::select! {
            _ = async {
                workloads::stop_all(&mut running).await;
                cp.stop(Duration::from_secs(2)).await;
            } => false,
            _ = signals.recv() => true,
        };
        if hurry {
            workloads::kill_all(&mut running);
            cp.kill();
        }
        match outcome {
            Ok(Ok(code)) => Ok(code),
            Ok(Err(Stopped::Signal(sig))) => {
                crate::out::errln!("mesh up: stopped by {sig} while starting");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e),
        }
    }

    async fn serve(
        &self,
        signals: &mut Signals,
        cp: &mut control::ControlPlane,
        running: &mut [Running],
        launcher: &Launcher<'_>,
        observe: &observe::Observe,
    ) -> anyhow::Result<Result<ExitCode, Stopped>> {
        let args = self.args;
        let timeout = Duration::from_secs(args.ready_timeout_secs);
        tokio::select! {
            r = cp.wait_ready(&self.logs, timeout) => r?,
            s = signals.recv() => return Ok(Err(Stopped::Signal(s))),
        }
        tokio::select! {
            _ = workloads::start_sidecars(running, launcher, timeout) => {}
            s = signals.recv() => return Ok(Err(Stopped::Signal(s))),
        }
        tokio::select! {
            _ = workloads::start_apps(running, launcher, timeout) => {}
            s = signals.recv() => return Ok(Err(Stopped::Signal(s))),
        }
        self.publish(cp, running)?;
        if !args.json {
            for r in running.iter() {
                if let workloads::Phase::Failed(why) = &r.phase {
                    crate::out::errln!("mesh up: {why}");
                }
            }
        }
        let front = front_door(self.file, running);
        let try_line = match &front {
            None => None,
            Some((addr, authority, path)) => tokio::select! {
                r = load::probe(*addr, authority, path, timeout) => match r {
                    Ok(()) => Some(format!("Try: curl -H 'Host: {authority}' http://{addr}{path}")),
                    Err(e) => {
                        if !args.json {
                            crate::out::errln!("mesh up: the front door ({addr}, Host {authority}) does not answer yet: {e}");
                        }
                        None
                    }
                },
                s = signals.recv() => return Ok(Err(Stopped::Signal(s))),
            },
        };
        // The summary's baseline, taken before the state file announces the mesh: whatever
        // anyone sends once they can find it (`mesh stat`, a test, the load) is counted.
        let first = scrape_all(running).await;
        let started = tokio::time::Instant::now();
        observe.feed(running, &first);
        self.write_state(running, &cp.trust_anchor_file, observe)?;
        let (front_tx, front_rx) = tokio::sync::watch::channel(front.as_ref().map(|f| f.0));
        let mut load = self.file.load.as_ref().map(|l| {
            let port = self
                .file
                .services()
                .into_iter()
                .find(|(s, _)| *s == l.service)
                .map_or(0, |(_, p)| p);
            let authority = format!(
                "{}:{port}",
                workloads::fqdn(&l.service, &self.file.namespace)
            );
            load::Load::start(
                front_rx,
                authority,
                l.path.clone(),
                args.rps.unwrap_or(l.rps),
                Some(observe.load_tracing()),
            )
        });
        if !args.json {
            self.intro(running, launcher, try_line.as_deref())?;
        }
        let header = format!(
            "mesh {} ({} workloads; `mesh down {}` or Ctrl-C stops it)\n{}{}\n\n",
            self.name,
            running.len(),
            self.name,
            observe
                .dashboard
                .map_or(String::new(), |a| format!("Dashboard: http://{a}\n")),
            try_line.as_deref().unwrap_or("")
        );
        let mut rolling = Rolling::default();
        rolling.push(std::time::Instant::now(), first.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.tick().await;
        let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = signals.recv() => break,
            }
            if let Some(why) = cp.exited(&self.logs) {
                anyhow::bail!("{why}");
            }
            if workloads::check(running, launcher).await {
                self.publish(cp, running)?;
                self.write_state(running, &cp.trust_anchor_file, observe)?;
                let _ = front_tx.send(front_door(self.file, running).map(|f| f.0));
            }
            ticks += 1;
            if ticks.is_multiple_of(4) {
                let scrapes = scrape_all(running).await;
                observe.feed(running, &scrapes);
                rolling.push(std::time::Instant::now(), scrapes);
                if !args.json {
                    summary::print_live(
                        &header,
                        running,
                        &rolling,
                        &self.file.namespace,
                        load.as_ref().map(|l| (l.sent(), l.failed())),
                    )?;
                }
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
        }
        if let Some(load) = load.as_mut() {
            load.stop().await;
        }
        let secs = started.elapsed().as_secs_f64();
        let last = scrape_all(running).await;
        let summary = summary::summarize(summary::Run {
            mesh: self.name,
            sidecar_command: launcher.proxy.describe(),
            control_plane_rss: cp.rss_bytes(),
            running,
            first: &first,
            last: &last,
            secs,
            load: load.as_ref().map(|l| (l.sent(), l.failed())),
            traces: observe.summary(running),
            mesh_up: observe.mesh_up(),
        });
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&summary)?)?;
        } else {
            for problem in &summary.problems {
                outln!("problem: {problem}")?;
            }
            outln!(
                "\n{}",
                if summary.ok {
                    "every workload ran, every request succeeded, all traffic between workloads was mTLS"
                } else {
                    "not everything went well: see the problems above (and the logs: --keep-logs keeps them)"
                }
            )?;
        }
        Ok(Ok(crate::out::status(summary.ok)))
    }

    /// Tells discovery which workloads are ready.
    fn publish(&self, cp: &control::ControlPlane, running: &[Running]) -> anyhow::Result<()> {
        let placed: Vec<workloads::Workload> = running.iter().map(|r| r.workload.clone()).collect();
        let ready: Vec<&str> = running
            .iter()
            .filter(|r| r.is_ready())
            .map(|r| r.name())
            .collect();
        cp.write_registry(&registry::yaml(self.file, &placed, &|w| {
            ready.contains(&w.name())
        }))
    }

    fn intro(
        &self,
        running: &[Running],
        launcher: &Launcher<'_>,
        try_line: Option<&str>,
    ) -> std::io::Result<()> {
        let (first, last) = (
            running.first().map(|r| r.workload.ip),
            running.last().map(|r| r.workload.ip),
        );
        outln!(
            "mesh {}: {} workloads on {}-{}, control plane on {}",
            self.name,
            running.len(),
            first.map_or("-".into(), |ip| ip.to_string()),
            last.map_or("-".into(), |ip| ip.to_string()),
            self.block.control_plane
        )?;
        outln!("Sidecars: {}", launcher.proxy.describe())?;
        outln!(
            "Files and logs: {}{}",
            self.paths.dir.display(),
            if self.args.keep_logs {
                ""
            } else {
                " (removed when it stops; --keep-logs keeps them)"
            }
        )?;
        if let Some(t) = try_line {
            outln!("{t}")?;
        }
        outln!(
            "Other terminals: mesh stat | top | edges | graph | check | list | down [--mesh {}]",
            self.name
        )?;
        out::print("\n")
    }

    /// What `mesh stat|top|edges|graph|check|list|down` read to find the running mesh.
    fn write_state(
        &self,
        running: &[Running],
        trust_anchor_file: &Path,
        observe: &observe::Observe,
    ) -> anyhow::Result<()> {
        let cp = self.block.control_plane;
        let state = State {
            name: self.name.to_string(),
            pid: std::process::id(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            file: match &self.args.file {
                Some(f) => f.display().to_string(),
                None => "built-in demo".into(),
            },
            dir: self.paths.dir.clone(),
            keep_logs: self.args.keep_logs,
            namespace: self.file.namespace.clone(),
            identity_admin: SocketAddr::from((cp, control::IDENTITY_ADMIN_PORT)),
            destination_admin: SocketAddr::from((cp, control::DESTINATION_ADMIN_PORT)),
            policy_admin: SocketAddr::from((cp, control::POLICY_ADMIN_PORT)),
            trust_anchor_file: trust_anchor_file.to_path_buf(),
            workloads: running
                .iter()
                .map(|r| StateWorkload {
                    name: r.name().to_string(),
                    service: r.workload.fqdn(),
                    identity: r.workload.identity(),
                    admin: r.workload.admin(),
                    app: r.workload.app_addr(),
                    ingress: r.workload.spec.ingress,
                    ready: r.is_ready(),
                })
                .collect(),
            dashboard: observe.dashboard,
            trace_collector: Some(observe.collector.clone()),
        };
        instance::write_state(&self.paths.state, &state)
    }
}

/// Where a client outside the mesh calls: the inbound sidecar of a ready workload serving the
/// load's service, else of the first ready ingress workload, else of the first ready HTTP
/// workload; with the `Host` and path to send.
fn front_door(file: &MeshFile, running: &[Running]) -> Option<(SocketAddr, String, String)> {
    let ready = || {
        running
            .iter()
            .filter(|r| r.is_ready() && r.workload.spec.protocol == config::Protocol::Http)
    };
    let pick = match &file.load {
        Some(l) => ready().find(|r| r.workload.service() == l.service),
        None => ready()
            .find(|r| r.workload.spec.ingress)
            .or_else(|| ready().next()),
    }?;
    let w = &pick.workload;
    let path = file.load.as_ref().map_or("/".into(), |l| l.path.clone());
    Some((w.inbound(), format!("{}:{}", w.fqdn(), w.spec.port), path))
}

async fn scrape_all(running: &[Running]) -> Vec<Option<Scrape>> {
    let mut out = Vec::with_capacity(running.len());
    for r in running {
        let scrape = if r.sidecar.is_some() && !r.is_failed() {
            crate::metrics::scrape(r.workload.admin())
                .await
                .ok()
                .map(|t| Scrape::parse(&t))
        } else {
            None
        };
        out.push(scrape);
    }
    out
}
