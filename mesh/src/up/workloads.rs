//! The workloads of a mesh: each placed on its own loopback address, started (`launch.rs`) as
//! its sidecar and its app, and watched as Kubernetes would a pod with a readiness probe: a
//! workload is in discovery only while its sidecar is ready and its app runs and passes its
//! health check.

use super::config::{Health, MeshFile, Restart, WorkloadSpec};
use super::control;
use super::launch::Launcher;
use super::process::{self, tail};
use super::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
use anyhow::Context;
use rustix::process::Signal;
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};
use tokio::process::Child;

/// One workload of the mesh file, placed on its loopback address.
#[derive(Clone, Debug)]
pub struct Workload {
    pub spec: WorkloadSpec,
    pub namespace: String,
    pub ip: Ipv4Addr,
}

impl Workload {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn service(&self) -> &str {
        self.spec.service()
    }

    /// The workload's mTLS identity, as Linkerd names a service account's.
    pub fn identity(&self) -> String {
        format!(
            "{}.{}.serviceaccount.identity.linkerd.cluster.local",
            self.spec.name, self.namespace
        )
    }

    /// The fully-qualified name of the workload's service.
    pub fn fqdn(&self) -> String {
        fqdn(self.service(), &self.namespace)
    }

    pub fn app_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.spec.port))
    }

    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::from((self.ip, INBOUND_PORT))
    }

    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::from((self.ip, OUTBOUND_PORT))
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ADMIN_PORT))
    }

    /// The local listeners of the TCP services it uses: (service, local address).
    pub fn uses(&self, file: &MeshFile) -> Vec<(String, SocketAddr, u16)> {
        self.spec
            .uses
            .iter()
            .filter_map(|u| {
                let (_, port) = file.services().into_iter().find(|(s, _)| *s == u.service)?;
                let local = SocketAddr::from((self.ip, u.port.unwrap_or(port)));
                Some((u.service.clone(), local, port))
            })
            .collect()
    }
}

pub fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.cluster.local")
}

/// Every workload on its address, from `first` on.
pub fn place(file: &MeshFile, first: Ipv4Addr) -> anyhow::Result<Vec<Workload>> {
    let [a, b, c, d] = first.octets();
    file.workloads
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let last = u8::try_from(usize::from(d) + i)
                .ok()
                .filter(|x| *x < 255)
                .with_context(|| {
                    format!(
                        "{} workloads do not fit after {first}",
                        file.workloads.len()
                    )
                })?;
            Ok(Workload {
                spec: spec.clone(),
                namespace: file.namespace.clone(),
                ip: Ipv4Addr::new(a, b, c, last),
            })
        })
        .collect()
}

/// Every address:port a mesh of `file` listens on, for the check that they are free.
pub fn addresses(file: &MeshFile, cp: Ipv4Addr, first: Ipv4Addr) -> Vec<(SocketAddr, String)> {
    let mut out: Vec<(SocketAddr, String)> = control::PORTS
        .iter()
        .map(|(port, what)| (SocketAddr::from((cp, *port)), what.to_string()))
        .collect();
    for w in place(file, first).unwrap_or_default() {
        let n = w.name().to_string();
        out.push((w.inbound(), format!("the inbound sidecar of {n}")));
        out.push((w.outbound(), format!("the outbound sidecar of {n}")));
        out.push((w.admin(), format!("the sidecar admin of {n}")));
        out.push((w.app_addr(), format!("the app of {n}")));
        for (svc, local, _) in w.uses(file) {
            out.push((local, format!("the local port of {n} for {svc}")));
        }
    }
    out
}

/// Where a workload stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Started, not yet healthy.
    Starting,
    /// In discovery.
    Ready,
    /// Out of discovery: its health check fails (why), or it is restarting.
    Unready(String),
    /// Its app exited and comes back at this moment.
    Restarting { at: Instant, why: String },
    /// Done: its sidecar or app exited for good, or never became ready.
    Failed(String),
}

/// A workload and its processes.
#[derive(Debug)]
pub struct Running {
    pub workload: Workload,
    pub sidecar: Option<Child>,
    pub app: Option<Child>,
    pub phase: Phase,
    pub restarts: u32,
    /// Health checks failed in a row.
    failures: u32,
    backoff: Duration,
    ready_since: Option<Instant>,
}

/// Health checks failed in a row before a ready workload leaves discovery.
const FAILURE_THRESHOLD: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A restarted app that stays ready this long starts from the first backoff again.
const STABLE: Duration = Duration::from_secs(10);

impl Running {
    pub fn new(workload: Workload) -> Self {
        Running {
            workload,
            sidecar: None,
            app: None,
            phase: Phase::Starting,
            restarts: 0,
            failures: 0,
            backoff: FIRST_BACKOFF,
            ready_since: None,
        }
    }

    pub fn name(&self) -> &str {
        self.workload.name()
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.phase, Phase::Failed(_))
    }

    pub fn fail(&mut self, why: String) {
        self.phase = Phase::Failed(why);
        self.ready_since = None;
    }

    /// Whether its sidecar has exited (a sidecar is never restarted: the workload fails).
    fn sidecar_exited(&mut self, logs: &Path) -> Option<String> {
        let status = self.sidecar.as_mut()?.try_wait().ok()??;
        Some(format!(
            "the sidecar of {} exited ({status}): {}",
            self.name(),
            tail(&logs.join(format!("{}-proxy.err.log", self.name())))
        ))
    }

    /// Whether its app has exited, with how.
    fn app_exited(&mut self, logs: &Path) -> Option<(String, bool)> {
        let status = self.app.as_mut()?.try_wait().ok()??;
        self.app = None;
        Some((
            format!(
                "the app of {} exited ({status}): {}",
                self.name(),
                tail(&logs.join(format!("{}.err.log", self.name())))
            ),
            status.success(),
        ))
    }
}

/// The outcome of one health check.
pub async fn probe(health: &Health, app: SocketAddr) -> Result<(), String> {
    let timeout = Duration::from_millis(500);
    match health {
        Health::None => Ok(()),
        Health::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(app)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("{app}: {e}")),
                Err(_) => Err(format!("{app}: no connection within 500 ms")),
            }
        }
        Health::Http(path) => {
            match tokio::time::timeout(timeout, crate::metrics::get(app, path)).await {
                Ok(Ok((status, _))) if (200..400).contains(&status) => Ok(()),
                Ok(Ok((status, _))) => Err(format!("GET {path} answered {status}")),
                Ok(Err(e)) => Err(format!("GET {path}: {}", crate::out::chain(&e))),
                Err(_) => Err(format!("GET {path}: no answer within 500 ms")),
            }
        }
    }
}

/// Checks every workload once: processes that exited, restarts that are due, health checks.
/// Returns whether any workload joined or left discovery.
pub async fn check(running: &mut [Running], launcher: &Launcher<'_>) -> bool {
    let now = Instant::now();
    let mut changed = false;
    // Health checks run together: one hung app must not delay the others'.
    let mut probes = tokio::task::JoinSet::new();
    for (i, r) in running.iter_mut().enumerate() {
        let was_ready = r.is_ready();
        if r.is_failed() {
            continue;
        }
        if let Some(why) = r.sidecar_exited(launcher.logs) {
            if let Some(app) = r.app.as_mut() {
                process::stop(app, Duration::from_secs(1)).await;
            }
            r.fail(why);
            changed |= was_ready;
            continue;
        }
        if let Some((why, success)) = r.app_exited(launcher.logs) {
            r.ready_since = None;
            let again = match r.workload.spec.restart {
                Restart::Never => false,
                Restart::OnFailure => !success,
                Restart::Always => true,
            };
            if again {
                r.phase = Phase::Restarting {
                    at: now + r.backoff,
                    why,
                };
                r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
            } else {
                r.fail(why);
            }
            changed |= was_ready;
            continue;
        }
        if let Phase::Restarting { at, why } = &r.phase {
            if now < *at {
                continue;
            }
            let why = why.clone();
            match launcher.spawn_app(&r.workload) {
                Ok(app) => {
                    r.app = Some(app);
                    r.restarts += 1;
                    r.failures = 0;
                    r.phase = Phase::Unready(format!("restarted after: {why}"));
                }
                Err(e) => r.fail(crate::out::chain(&e)),
            }
            continue;
        }
        if r.is_ready()
            && r.ready_since
                .is_some_and(|t| now.duration_since(t) >= STABLE)
        {
            r.backoff = FIRST_BACKOFF;
        }
        let (health, app) = (r.workload.spec.health.clone(), r.workload.app_addr());
        probes.spawn(async move { (i, probe(&health, app).await) });
    }
    while let Some(Ok((i, outcome))) = probes.join_next().await {
        let r = &mut running[i];
        match outcome {
            Ok(()) => {
                r.failures = 0;
                if !r.is_ready() {
                    r.phase = Phase::Ready;
                    r.ready_since = Some(now);
                    changed = true;
                }
            }
            Err(why) => {
                r.failures += 1;
                if r.is_ready() && r.failures >= FAILURE_THRESHOLD {
                    r.phase = Phase::Unready(format!("its health check fails: {why}"));
                    r.ready_since = None;
                    changed = true;
                } else if matches!(r.phase, Phase::Unready(_)) {
                    r.phase = Phase::Unready(format!("its health check fails: {why}"));
                }
            }
        }
    }
    changed
}

/// Starts every sidecar and waits until each is ready (a certificate, and its inbound policy);
/// a sidecar that fails to start, exits or is not ready in time fails its workload.
pub async fn start_sidecars(running: &mut [Running], launcher: &Launcher<'_>, timeout: Duration) {
    for r in running.iter_mut() {
        match launcher.spawn_sidecar(&r.workload) {
            Ok(p) => r.sidecar = Some(p),
            Err(e) => r.fail(crate::out::chain(&e)),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut pending = false;
        for r in running.iter_mut().filter(|r| r.phase == Phase::Starting) {
            if r.sidecar.is_none() {
                continue;
            }
            if let Some(why) = r.sidecar_exited(launcher.logs) {
                r.fail(why);
                continue;
            }
            if crate::metrics::get(r.workload.admin(), "/ready")
                .await
                .is_ok_and(|(s, _)| s == 200)
            {
                // Ready: the app comes next.
                r.phase = Phase::Unready("starting".into());
                continue;
            }
            if tokio::time::Instant::now() > deadline {
                let why = format!(
                    "the sidecar of {} was not ready within {} s: {}",
                    r.name(),
                    timeout.as_secs(),
                    tail(&launcher.logs.join(format!("{}-proxy.err.log", r.name())))
                );
                r.fail(why);
                continue;
            }
            pending = true;
        }
        if !pending {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the app of every workload whose sidecar is ready, and waits until each passes its
/// health check (it is then in discovery), exits, or runs out of time.
pub async fn start_apps(running: &mut [Running], launcher: &Launcher<'_>, timeout: Duration) {
    for r in running.iter_mut().filter(|r| !r.is_failed()) {
        match launcher.spawn_app(&r.workload) {
            Ok(a) => r.app = Some(a),
            Err(e) => r.fail(crate::out::chain(&e)),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        check(running, launcher).await;
        let waiting: Vec<usize> = (0..running.len())
            .filter(|&i| matches!(running[i].phase, Phase::Unready(_) | Phase::Starting))
            .collect();
        if waiting.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            for i in waiting {
                let r = &mut running[i];
                let w = &r.workload;
                let why = format!(
                    "{} did not pass its health check on {} within {} s (its command must listen \
                     on $MESH_IP:$PORT): {}",
                    w.name(),
                    w.app_addr(),
                    timeout.as_secs(),
                    tail(&launcher.logs.join(format!("{}.err.log", w.name())))
                );
                r.fail(why);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops every app (its supervisor takes its whole process tree down), then drains every
/// sidecar; each gets `grace`, all at once.
pub async fn stop_all(running: &mut [Running]) {
    for r in running.iter() {
        if let Some(app) = &r.app {
            process::signal(app, Signal::TERM);
        }
    }
    for r in running.iter_mut() {
        if let Some(app) = r.app.as_mut() {
            process::stop(app, Duration::from_secs(5)).await;
        }
    }
    for r in running.iter() {
        if let Some(sidecar) = &r.sidecar {
            process::signal(sidecar, Signal::TERM);
        }
    }
    for r in running.iter_mut() {
        if let Some(sidecar) = r.sidecar.as_mut() {
            process::stop(sidecar, Duration::from_secs(7)).await;
        }
    }
}

/// Kills everything at once (a second Ctrl-C while stopping).
pub fn kill_all(running: &mut [Running]) {
    for r in running.iter_mut() {
        for c in [r.app.as_mut(), r.sidecar.as_mut()].into_iter().flatten() {
            let _ = c.start_kill();
        }
    }
}
