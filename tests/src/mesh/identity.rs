//! The identity service in-process, and reading its and a proxy's admin server.

use super::{Ca, TempDir};
use crate::{metrics::Metrics, proxy::TestProxy};
use linkerd_identity::{
    AuthConfig, Config,
    ca::LeafPolicy,
    token::{self, LocalTokens},
};
use linkerd_proxy::config as env;
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};

/// The identity service (`linkerd_identity`) in-process on `127.0.0.1`, with local HMAC
/// tokens and a fresh [`Ca`].
#[derive(Debug)]
pub struct IdentityService {
    pub ca: Ca,
    dir: TempDir,
    config: Config,
    addr: SocketAddr,
    tokens: LocalTokens,
    running: Option<Serving>,
}

#[derive(Debug)]
struct Serving {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), linkerd_identity::Error>>,
}

/// Leaves that live `lifetime`, NotBefore/NotAfter widened by `skew` (the service's rule).
pub fn leaf_policy(lifetime: Duration, skew: Duration) -> LeafPolicy {
    LeafPolicy { lifetime, skew }
}

impl IdentityService {
    /// Generates trust material and a token key, and serves on an ephemeral port.
    pub async fn start(policy: LeafPolicy) -> Self {
        let ca = Ca::generate();
        let dir = TempDir::new("mtls-identity");
        let paths = ca.files.write(dir.path()).expect("write the trust files");
        let key = token::generate_key_file_contents().expect("a token key");
        let key_file = dir.path().join("token.key");
        std::fs::write(&key_file, &key).expect("write the token key");
        let tokens = LocalTokens::from_key_file_contents(key.as_bytes()).expect("a token key");
        let config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            trust_anchors: paths.anchor,
            issuer_cert: paths.issuer_cert,
            issuer_key: paths.issuer_key,
            auth: AuthConfig::Local { key_file },
            policy,
            reload_interval: Duration::from_secs(60),
        };
        let bound = linkerd_identity::bind(config.clone())
            .await
            .expect("bind the identity service");
        let addr = bound.grpc_addr().expect("identity address");
        assert!(
            bound.ca().issuer().is_some(),
            "the identity service loaded its issuer"
        );
        let mut svc = Self {
            ca,
            dir,
            config,
            addr,
            tokens,
            running: None,
        };
        svc.run(bound);
        svc
    }

    fn run(&mut self, bound: linkerd_identity::server::Bound) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        self.running = Some(Serving { stop, task });
    }

    /// The gRPC address proxies are pointed at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the service down and waits until its listener is closed.
    pub async fn stop(&mut self) {
        let Some(s) = self.running.take() else {
            return;
        };
        let _ = s.stop.send(());
        let res = crate::within(Duration::from_secs(10), "identity shutdown", s.task).await;
        res.expect("the identity task")
            .expect("the identity service ran cleanly");
        // Nothing listens any more: Certify calls are refused.
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "the identity port still accepts connections after shutdown"
        );
    }

    /// Serves again, on the same port.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "restart of a running service");
        let config = Config {
            addr: self.addr,
            ..self.config.clone()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let bound = loop {
            match linkerd_identity::bind(config.clone()).await {
                Ok(b) => break b,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "rebinding the identity port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind the identity service on {}: {e}", self.addr),
            }
        };
        self.run(bound);
    }

    /// Mints a token for `identity` (valid for an hour) into a file, as a projected service
    /// account token would be, and returns its path.
    pub fn token_file(&self, identity: &str) -> PathBuf {
        let name = identity.parse().expect("a valid identity name");
        let token = self
            .tokens
            .mint(&name, Duration::from_secs(3600), SystemTime::now());
        let path = self.dir.path().join(format!("{identity}.token"));
        std::fs::write(&path, token).expect("write a token file");
        path
    }

    /// The identity variables for a proxy named `identity`.
    pub fn proxy_env(&self, identity: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                env::ENV_IDENTITY_TRUST_ANCHORS,
                self.ca.files.anchor_pem.clone(),
            ),
            (env::ENV_IDENTITY_LOCAL_NAME, identity.to_string()),
            (env::ENV_IDENTITY_SVC_ADDR, self.addr.to_string()),
            (
                env::ENV_IDENTITY_TOKEN_FILE,
                self.token_file(identity).display().to_string(),
            ),
        ]
    }

    /// Starts a proxy named `identity`, certified by this service, configured further by
    /// `extra`, and waits until it holds a certificate (`/ready` is 200).
    pub async fn proxy(&self, identity: &str, extra: &[(&str, &str)]) -> TestProxy {
        let vars = self.proxy_env(identity);
        let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        let proxy = TestProxy::start(&all).await;
        crate::within(
            Duration::from_secs(10),
            "the proxy's first certificate",
            async {
                while ready(proxy.admin).await != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        )
        .await;
        proxy
    }
}

/// `GET /ready` on an admin server: the status code.
pub async fn ready(admin: SocketAddr) -> u16 {
    crate::client::get(admin, "/ready").await.status.as_u16()
}

/// A gauge's value, if the scrape has it.
pub fn gauge(m: &Metrics, name: &str) -> Option<f64> {
    m.find(name, &[]).next().map(|s| s.value)
}
