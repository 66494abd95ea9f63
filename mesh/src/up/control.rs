//! The control plane of one mesh: fresh trust (an anchor and an issuer), a token per workload,
//! and the identity, destination and policy services on the block's control-plane address,
//! the last two watching the registry file. The three run in one process
//! (`mesh control-plane`, [`serve_together`]): each process of the 24 MB `mesh` binary maps
//! ~11 MB of its code, so three processes had ~40 MB resident where one has ~15.

use super::process::{self, log_file, tail};
use super::workloads::Workload;
use anyhow::{Context, bail};
use rustix::process::Signal;
use std::{
    future::Future,
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    pin::Pin,
    process::ExitCode,
    time::Duration,
};
use tokio::process::Child;

pub const IDENTITY_PORT: u16 = 8080;
pub const IDENTITY_ADMIN_PORT: u16 = 9990;
pub const DESTINATION_PORT: u16 = 8086;
pub const DESTINATION_ADMIN_PORT: u16 = 9996;
pub const POLICY_PORT: u16 = 8090;
pub const POLICY_ADMIN_PORT: u16 = 9997;

/// Every port the control plane listens on, with what it is (for the check that a block of
/// addresses is free).
pub const PORTS: [(u16, &str); 6] = [
    (IDENTITY_PORT, "the identity service"),
    (IDENTITY_ADMIN_PORT, "the identity service's admin"),
    (DESTINATION_PORT, "the destination service"),
    (DESTINATION_ADMIN_PORT, "the destination service's admin"),
    (POLICY_PORT, "the policy service"),
    (POLICY_ADMIN_PORT, "the policy service's admin"),
];

const SERVICES: [(&str, u16); 3] = [
    ("identity", IDENTITY_ADMIN_PORT),
    ("destination", DESTINATION_ADMIN_PORT),
    ("policy", POLICY_ADMIN_PORT),
];

/// What a sidecar needs to reach the control plane.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub ip: Ipv4Addr,
    pub trust_anchor_pem: String,
    /// Where each workload's token is: `<tokens>/<workload>.token`.
    pub tokens: PathBuf,
}

impl Endpoints {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
}

/// The control plane's process and what sidecars need to reach it.
#[derive(Debug)]
pub struct ControlPlane {
    /// `mesh control-plane`, serving identity, destination and policy.
    child: Child,
    pub ip: Ipv4Addr,
    pub trust_anchor_pem: String,
    pub trust_anchor_file: PathBuf,
    pub registry: PathBuf,
    /// Where each workload's token is: `<tokens>/<workload>.token`.
    pub tokens: PathBuf,
}

/// The control plane's log files (`<name>.log` and `<name>.err.log` in the logs directory).
const LOG_NAME: &str = "control-plane";

/// The control plane's stderr log (its services' log lines and why it exited) in `logs`.
pub fn err_log(logs: &Path) -> PathBuf {
    logs.join(format!("{LOG_NAME}.err.log"))
}

/// A service of `mesh control-plane`, ready to run.
pub type Service = Pin<Box<dyn Future<Output = anyhow::Result<ExitCode>> + Send>>;

/// Runs `mesh control-plane`'s services on this runtime until every one has ended. The first
/// that fails, panics or exits unsuccessfully ends the process with its error (the others are
/// stopped with it), so `mesh up` sees the control plane exit and says why.
pub async fn serve_together(services: Vec<(String, Service)>) -> anyhow::Result<ExitCode> {
    let mut running = tokio::task::JoinSet::new();
    for (name, service) in services {
        running.spawn(async move { (name, service.await) });
    }
    while let Some(ended) = running.join_next().await {
        let (name, result) = ended.context("a control-plane service panicked")?;
        let code = result.with_context(|| format!("the {name} service failed"))?;
        if code != ExitCode::SUCCESS {
            bail!("the {name} service exited with {code:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl ControlPlane {
    /// Writes fresh trust material, a token per workload (0600) and the registry, and starts
    /// the three services in one process.
    pub fn start(
        exe: &Path,
        ip: Ipv4Addr,
        dir: &Path,
        logs: &Path,
        workloads: &[Workload],
        registry_yaml: &str,
    ) -> anyhow::Result<Self> {
        use linkerd_identity::{token, trust};
        let identity_dir = dir.join("identity");
        crate::instance::private_dir(&identity_dir, false)?;
        let files = trust::generate_trust(&trust::TrustOptions::default())
            .context("cannot generate a trust anchor")?;
        let paths = files
            .write(&identity_dir)
            .context("cannot write the trust files")?;
        let key_file = identity_dir.join("token.key");
        token::write_key_file(&key_file).context("cannot write the token key")?;
        let tokens = token::LocalTokens::from_key_file_contents(&std::fs::read(&key_file)?)
            .context("cannot read the token key")?;
        for w in workloads {
            let id = w.identity().parse().context("invalid workload identity")?;
            let t = tokens.mint(
                &id,
                Duration::from_secs(24 * 3600),
                std::time::SystemTime::now(),
            );
            private_file(
                &identity_dir.join(format!("{}.token", w.name())),
                t.as_bytes(),
            )?;
        }
        let registry = dir.join("registry.yaml");
        write_atomically(&registry, registry_yaml)?;
        let addr = |port| SocketAddr::from((ip, port)).to_string();
        let mut cmd = process::command(exe, Signal::KILL);
        cmd.arg("control-plane")
            .args(["identity", "serve", "--addr", &addr(IDENTITY_PORT)])
            .args(["--admin-addr", &addr(IDENTITY_ADMIN_PORT)])
            .arg("--trust-anchors")
            .arg(&paths.anchor)
            .arg("--issuer-cert")
            .arg(&paths.issuer_cert)
            .arg("--issuer-key")
            .arg(&paths.issuer_key)
            .arg("--token-key")
            .arg(&key_file)
            .arg(crate::SERVICE_SEPARATOR)
            .args(["destination", "serve", "--registry"])
            .arg(&registry)
            .args(["--addr", &addr(DESTINATION_PORT)])
            .args(["--admin-addr", &addr(DESTINATION_ADMIN_PORT)])
            .arg(crate::SERVICE_SEPARATOR)
            .args(["policy", "serve", "--registry"])
            .arg(&registry)
            .args(["--addr", &addr(POLICY_PORT)])
            .args(["--admin-addr", &addr(POLICY_ADMIN_PORT)]);
        let child = cmd
            .stdout(log_file(logs, LOG_NAME)?)
            .stderr(log_file(logs, &format!("{LOG_NAME}.err"))?)
            .spawn()
            .context("cannot start the control plane")?;
        Ok(ControlPlane {
            child,
            ip,
            trust_anchor_pem: files.anchor_pem,
            trust_anchor_file: paths.anchor.clone(),
            registry,
            tokens: identity_dir,
        })
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            ip: self.ip,
            trust_anchor_pem: self.trust_anchor_pem.clone(),
            tokens: self.tokens.clone(),
        }
    }

    /// Kills the control plane at once.
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Rewrites the registry; the destination and policy services pick it up within 500 ms.
    pub fn write_registry(&self, yaml: &str) -> anyhow::Result<()> {
        write_atomically(&self.registry, yaml)
    }

    /// Why the control plane is down, if it has exited.
    pub fn exited(&mut self, logs: &Path) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the control plane exited ({status}): {}",
                tail(&err_log(logs))
            )),
            _ => None,
        }
    }

    /// Waits until every service answers `/ready` (identity: an issuer is loaded; destination
    /// and policy: the registry is).
    pub async fn wait_ready(&mut self, logs: &Path, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (name, port) in SERVICES {
            let admin = self.addr(port);
            loop {
                if let Some(why) = self.exited(logs) {
                    bail!("{why}");
                }
                if crate::metrics::get(admin, "/ready")
                    .await
                    .is_ok_and(|(s, _)| s == 200)
                {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "the {name} service was not ready within {} s: {}",
                        timeout.as_secs(),
                        tail(&err_log(logs))
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Resident memory of the control plane's process.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.child.id().and_then(rss_kb).map(|kb| kb * 1024)
    }

    pub fn signal(&self, sig: Signal) {
        process::signal(&self.child, sig);
    }

    /// Stops the services (`SIGTERM`, then `SIGKILL` after `grace`).
    pub async fn stop(&mut self, grace: Duration) {
        self.signal(Signal::TERM);
        process::stop(&mut self.child, grace).await;
    }
}

fn private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a file by renaming a complete copy over it, so a reader never sees half of it.
fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    private_file(&tmp, contents.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Resident memory of a process, from /proc.
pub fn rss_kb(pid: u32) -> Option<u64> {
    proc_kb(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size of a process (its private pages plus its share of shared ones).
pub fn pss_kb(pid: u32) -> Option<u64> {
    proc_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn proc_kb(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
