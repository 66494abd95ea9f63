//! Wiring: configuration → CA, authenticator, issuer watcher, gRPC and admin servers.

use crate::{
    Error,
    ca::{Ca, LeafPolicy, TrustAnchors},
    certify::Certifier,
    grpc::IdentityGrpc,
    kube::{TokenReview, TokenReviewConfig},
    metrics::{Metrics, serve_admin},
    token::{AuthError, Authenticator, LocalTokens},
};
use linkerd_control::{Listeners, ReadError, serve::Service, shutdown::Shutdown, stopped};
use proto::id::IdentityName;
use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::sync::watch;

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// gRPC (default `0.0.0.0:8080`), plaintext.
    pub addr: SocketAddr,
    /// `/metrics`, `/ready`, `/live` (default `127.0.0.1:9990`).
    pub admin_addr: SocketAddr,
    pub trust_anchors: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    pub auth: AuthConfig,
    pub policy: LeafPolicy,
    /// How often the issuer files are checked for changes.
    pub reload_interval: Duration,
}

/// How tokens are checked.
#[derive(Clone, Debug)]
pub enum AuthConfig {
    /// [`LocalTokens`] with the hex key in this file.
    Local { key_file: PathBuf },
    /// [`TokenReview`] against the API server.
    Kubernetes(TokenReviewConfig),
}

/// The authenticator chosen by [`AuthConfig`].
#[derive(Debug)]
pub enum AnyAuth {
    Local(LocalTokens),
    Kubernetes(TokenReview),
}

impl Authenticator for AnyAuth {
    async fn authenticate(&self, token: &[u8]) -> Result<IdentityName, AuthError> {
        match self {
            Self::Local(a) => a.authenticate(token).await,
            Self::Kubernetes(a) => a.authenticate(token).await,
        }
    }
}

/// Bound listeners and loaded state, ready to [`Bound::run`].
pub type Bound = linkerd_control::Bound<Loaded>;

/// What [`bind`] loads: the CA and authenticator, the metrics and the issuer watcher.
#[derive(Debug)]
pub struct Loaded {
    certifier: Arc<Certifier<AnyAuth>>,
    metrics: Arc<Metrics>,
    watcher: IssuerWatcher,
    reload_interval: Duration,
}

/// Loads the trust anchors (required), the issuer (if it is not there yet or invalid, the
/// service starts anyway, answers `FAILED_PRECONDITION` and is not ready until it appears)
/// and the authenticator, and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let pem = read(&config.trust_anchors).await?;
    let anchors = TrustAnchors::from_pem(&pem).map_err(|source| Error::Anchors {
        path: config.trust_anchors.display().to_string(),
        source,
    })?;
    let ca = Arc::new(Ca::new(anchors, config.policy));
    let metrics = Arc::new(Metrics::default());
    let mut watcher = IssuerWatcher {
        ca: ca.clone(),
        metrics: metrics.clone(),
        cert: config.issuer_cert,
        key: config.issuer_key,
        last: None,
    };
    watcher.poll().await;

    let auth = match config.auth {
        AuthConfig::Local { key_file } => {
            AnyAuth::Local(LocalTokens::read_key_file(&key_file).await?)
        }
        AuthConfig::Kubernetes(c) => AnyAuth::Kubernetes(TokenReview::new(c).await?),
    };
    let loaded = Loaded {
        certifier: Arc::new(Certifier::new(ca, auth)),
        metrics,
        watcher,
        reload_interval: config.reload_interval,
    };
    Ok(Bound::new(
        Listeners::bind(config.addr, config.admin_addr).await?,
        loaded,
    ))
}

/// [`bind`] then [`Bound::run`].
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

impl Loaded {
    pub fn ca(&self) -> &Arc<Ca> {
        self.certifier.ca()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl Service for Loaded {
    type Error = Error;

    /// Serves until `shutdown` completes, then stops the admin server and the watcher.
    async fn run(self, listeners: Listeners, shutdown: impl Shutdown) -> Result<(), Error> {
        let (stop, stopped) = watch::channel(false);
        let ca = self.certifier.ca().clone();
        let admin = tokio::spawn(serve_admin(
            listeners.admin,
            ca,
            self.metrics.clone(),
            stopped.clone(),
        ));
        let watcher = tokio::spawn(self.watcher.run(self.reload_interval, stopped));
        if let Ok(addr) = listeners.main.local_addr() {
            tracing::info!(%addr, "identity gRPC listening");
        }
        let incoming =
            tonic::transport::server::TcpIncoming::from(listeners.main).with_nodelay(Some(true));
        let svc = IdentityGrpc::new(self.certifier, self.metrics).into_server();
        let result = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        let _ = stop.send(true);
        let _ = admin.await;
        let _ = watcher.await;
        result.map_err(Error::Serve)
    }
}

// === impl IssuerWatcher ===

/// Polls the issuer files and swaps in a new issuer when their contents change and validate.
#[derive(Debug)]
struct IssuerWatcher {
    ca: Arc<Ca>,
    metrics: Arc<Metrics>,
    cert: PathBuf,
    key: PathBuf,
    last: Option<Seen>,
}

/// The issuer file contents last seen and what came of them.
#[derive(Debug)]
struct Seen {
    cert: Vec<u8>,
    key: Vec<u8>,
    error: Option<String>,
    /// Whether `error` has been logged and counted.
    reported: bool,
}

impl IssuerWatcher {
    async fn run(mut self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset(); // the first poll happened in `bind`
        loop {
            tokio::select! {
                _ = tick.tick() => self.poll().await,
                _ = stopped(&mut stop) => return,
            }
        }
    }

    async fn poll(&mut self) {
        let read = (
            tokio::fs::read(&self.cert).await,
            tokio::fs::read(&self.key).await,
        );
        let (cert, key) = match read {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                let msg = format!("cannot read the issuer files: {e}");
                if self
                    .last
                    .as_ref()
                    .is_none_or(|l| l.error.as_ref() != Some(&msg))
                {
                    tracing::warn!("{msg}");
                    self.last = Some(Seen {
                        cert: Vec::new(),
                        key: Vec::new(),
                        error: Some(msg),
                        reported: true,
                    });
                }
                return;
            }
        };
        let last = self.last.take().filter(|l| l.cert == cert && l.key == key);
        // Unchanged and good: nothing to do. Unchanged and bad: try again (a certificate
        // that was not yet valid may be now), but report each error once.
        if let Some(l @ Seen { error: None, .. }) = last {
            self.last = Some(l);
            return;
        }
        let seen_before = last.as_ref().and_then(|l| l.error.clone());
        let reported = last.is_some_and(|l| l.reported);
        match self.ca.load_issuer(&cert, &key) {
            Ok(issuer) => {
                tracing::info!(
                    subject = issuer.subject(),
                    not_after = issuer.not_after(),
                    "issuer loaded"
                );
                self.metrics.reloaded(true);
                self.last = Some(Seen {
                    cert,
                    key,
                    error: None,
                    reported: true,
                });
            }
            Err(e) => {
                let msg = e.to_string();
                // A key that does not match a certificate that just changed is most likely
                // the other half of a rotation still being written: wait one poll.
                let settling =
                    seen_before.is_none() && matches!(e, crate::ca::LoadError::KeyMismatch);
                let repeat = reported && seen_before.as_ref() == Some(&msg);
                let report = !(settling || repeat);
                if report {
                    if self.ca.issuer().is_some() {
                        tracing::warn!(error = %msg, "new issuer rejected; keeping the current one");
                    } else {
                        tracing::error!(error = %msg, "no valid issuer; Certify fails until one appears");
                    }
                    self.metrics.reloaded(false);
                }
                self.last = Some(Seen {
                    cert,
                    key,
                    error: Some(msg),
                    reported: reported || report,
                });
            }
        }
    }
}

async fn read(path: &Path) -> Result<Vec<u8>, Error> {
    Ok(tokio::fs::read(path).await.map_err(ReadError::at(path))?)
}
