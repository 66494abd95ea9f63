//! Running the proxy: in-process through `linkerd_proxy::app::start`, or as a real process
//! (the `test-proxy` binary) for signals and exit codes.

use crate::metrics::{self, Metrics};
use linkerd_proxy::{
    app::{self, Running},
    config::{self, Config},
    log::LogLevel,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::AsyncReadExt,
    process::{Child, Command},
};

/// `MESH_PROXY_OUTBOUND_PROXY_ALLOW` for proxies whose HTTP-proxy mode reaches test servers on
/// loopback (tests of the default pass their own value).
pub const LOOPBACK_ALLOWED: &str = "external,127.0.0.0/8,::1";

/// A proxy running inside the test's runtime, every listener on an ephemeral loopback port.
#[derive(Debug)]
pub struct TestProxy {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub locals: Vec<(String, SocketAddr)>,
    running: Running,
}

impl TestProxy {
    /// Starts a proxy configured by `env` (variable name, value) on top of loopback listeners
    /// and a 5 s shutdown grace period.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut vars: HashMap<String, String> = [
            (config::ENV_INBOUND_LISTEN_ADDR, "127.0.0.1:0"),
            (config::ENV_OUTBOUND_LISTEN_ADDR, "127.0.0.1:0"),
            (config::ENV_ADMIN_LISTEN_ADDR, "127.0.0.1:0"),
            (config::ENV_SHUTDOWN_GRACE_PERIOD, "5s"),
            // The test servers are on loopback, which HTTP-proxy mode refuses by default.
            (config::ENV_OUTBOUND_PROXY_ALLOW, LOOPBACK_ALLOWED),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in env {
            vars.insert(k.to_string(), v.to_string());
        }
        let config = Config::from_strings(&vars)
            .unwrap_or_else(|e| panic!("invalid test proxy configuration: {e}"));
        let running = app::start(config, LogLevel::detached("warn"))
            .await
            .unwrap_or_else(|e| panic!("the test proxy did not start: {e}"));
        Self {
            inbound: running.inbound_addr,
            outbound: running.outbound_addr,
            admin: running.admin_addr,
            locals: running.local_listeners.clone(),
            running,
        }
    }

    /// A proxy whose inbound listener forwards direct connections to `app`.
    pub async fn inbound_to(app: SocketAddr) -> Self {
        Self::start(&[(config::ENV_INBOUND_FORWARD_ADDR, &app.to_string())]).await
    }

    /// The bound address of the local listener named `name`.
    pub fn local(&self, name: &str) -> SocketAddr {
        self.locals
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no local listener named {name:?}"))
    }

    pub async fn metrics(&self) -> Metrics {
        metrics::scrape(self.admin).await
    }

    /// Completes once shutdown was requested (e.g. through the admin server).
    pub async fn shutdown_requested(&self) {
        self.running.shutdown_requested().await
    }

    /// Shuts the proxy down and drains it; true if everything finished within the grace period.
    pub async fn shutdown(self) -> bool {
        let _ = self.running.shutdown_handle().send(true);
        self.running.drain().await
    }
}

/// The proxy as a child process, killed when dropped.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// A command for the proxy binary `bin` with none of the proxy's variables inherited from the
/// test's environment.
pub fn proxy_command(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("LINKERD2_PROXY_") || k.starts_with("MESH_PROXY_") {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

impl ProxyProcess {
    /// Runs `bin` (the `test-proxy` binary) configured by `env`, on free loopback ports, and
    /// waits until its admin server reports ready. Retries on another set of ports if one was
    /// taken in the meantime.
    pub async fn spawn(bin: &str, env: &[(&str, &str)]) -> Self {
        let mut last_err = String::new();
        for _ in 0..3 {
            let inbound = crate::client::free_addr();
            let outbound = crate::client::free_addr();
            let admin = crate::client::free_addr();
            let mut cmd = proxy_command(bin);
            cmd.env(config::ENV_INBOUND_LISTEN_ADDR, inbound.to_string())
                .env(config::ENV_OUTBOUND_LISTEN_ADDR, outbound.to_string())
                .env(config::ENV_ADMIN_LISTEN_ADDR, admin.to_string())
                .env(config::ENV_LOG, "warn")
                .env(config::ENV_CORES, "2")
                .env(config::ENV_OUTBOUND_PROXY_ALLOW, LOOPBACK_ALLOWED)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
            let stderr = Arc::new(Mutex::new(Vec::new()));
            if let Some(mut pipe) = child.stderr.take() {
                let sink = stderr.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = pipe.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        sink.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend_from_slice(&buf[..n]);
                    }
                });
            }
            let mut proc = Self {
                child,
                inbound,
                outbound,
                admin,
                stderr,
            };
            match proc.wait_ready().await {
                Ok(()) => return proc,
                Err(e) => last_err = e,
            }
        }
        panic!("the proxy process did not become ready: {last_err}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the stderr reader catch up before reporting.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(format!("exited with {status}: {}", self.stderr()));
            }
            if ready(self.admin).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("not ready after 20 s: {}", self.stderr()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the proxy process is running")
    }

    /// Sends a signal (`TERM`, `INT`, ...) with `kill(1)`.
    pub async fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed: {status}");
    }

    pub async fn wait(&mut self) -> ExitStatus {
        self.child.wait().await.expect("wait for the proxy process")
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let buf = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Whether the admin server at `admin` answers `GET /ready` with 200.
async fn ready(admin: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let check = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let rsp = sender
            .send_request(crate::client::get_request("/ready"))
            .await
            .ok()?;
        Some(rsp.status() == http::StatusCode::OK)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(true))
    )
}
