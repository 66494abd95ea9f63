//! Wiring: configuration → index, source (registry file or Kubernetes), gRPC and admin.

use crate::{
    Error, IdentityConfig,
    get::Routes,
    grpc::DestinationGrpc,
    index::Index,
    k8s_watch::{self, KubeApiConfig},
    metrics::{Metrics, serve_admin},
    registry::{self, RegistryWatcher},
};
use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch};

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// gRPC (default `0.0.0.0:8086`), plaintext.
    pub addr: SocketAddr,
    /// `/metrics`, `/ready`, `/live` (default `127.0.0.1:9996`).
    pub admin_addr: SocketAddr,
    pub source: Source,
    /// Service names are `<svc>.<ns>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    pub ids: IdentityConfig,
    /// How long shutdown waits for open streams to finish.
    pub grace: Duration,
}

/// Where endpoints come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A registry file, polled every `interval`.
    Registry { path: PathBuf, interval: Duration },
    /// Services, EndpointSlices and Pods from the API server.
    Kubernetes(KubeApiConfig),
    /// Nothing: the caller feeds [`Bound::index`] (tests, benchmarks).
    Manual,
}

/// Bound listeners and the loaded index, ready to [`Bound::run`].
#[derive(Debug)]
pub struct Bound {
    grpc: TcpListener,
    admin: TcpListener,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    config: Config,
    registry: Option<RegistryWatcher>,
}

/// Loads the registry (a first load that fails is an error: there is no last good state to
/// keep) and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let index = Arc::new(Index::new());
    let metrics = Arc::new(Metrics::default());
    let registry = match &config.source {
        Source::Registry { path, .. } => {
            let services = registry::load(path, &config.ids).await?;
            let n = services.len();
            index.reset(services);
            let mut w = RegistryWatcher::new(
                path.clone(),
                config.ids.clone(),
                index.clone(),
                metrics.clone(),
            );
            // Record what was loaded, so the first poll does not apply it again.
            w.poll().await;
            metrics.set_ready();
            tracing::info!(path = %path.display(), services = n, "registry loaded");
            Some(w)
        }
        Source::Kubernetes(_) => None,
        Source::Manual => {
            metrics.set_ready();
            None
        }
    };
    let listen = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })
    };
    Ok(Bound {
        grpc: listen(config.addr).await?,
        admin: listen(config.admin_addr).await?,
        index,
        metrics,
        config,
        registry,
    })
}

/// [`bind`] then [`Bound::run`].
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

impl Bound {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves until `shutdown` completes; then ends every stream, stops the source and the
    /// admin server, and waits up to the grace period for connections to close.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let (stop, stop_rx) = watch::channel(false);
        let admin = tokio::spawn(serve_admin(
            self.admin,
            self.index.clone(),
            self.metrics.clone(),
            stop_rx.clone(),
        ));
        let source = match (self.registry, &self.config.source) {
            (Some(w), Source::Registry { interval, .. }) => {
                Some(tokio::spawn(w.run(*interval, stop_rx.clone())))
            }
            (_, Source::Kubernetes(api)) => {
                let kube = k8s_watch::start(
                    api.clone(),
                    self.index.clone(),
                    self.metrics.clone(),
                    self.config.ids.clone(),
                )
                .await?;
                Some(tokio::spawn(kube.run(stop_rx.clone())))
            }
            _ => None,
        };
        if let Ok(addr) = self.grpc.local_addr() {
            tracing::info!(%addr, "destination gRPC listening");
        }
        let svc = Routes::new(DestinationGrpc::new(
            self.index.clone(),
            self.metrics.clone(),
            &self.config.cluster_domain,
        ));
        let (draining, drain_rx) = watch::channel(false);
        let mut server = tokio::spawn(linkerd_control::serve_h2(
            self.grpc,
            svc,
            drain_rx,
            MAX_SEND_BUF,
        ));
        shutdown.await;
        // Watch streams never end on their own: end them so connections can close.
        self.index.close();
        let _ = draining.send(true);
        if tokio::time::timeout(self.config.grace, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period; closing them");
            server.abort();
        }
        let _ = stop.send(true);
        let _ = admin.await;
        if let Some(s) = source {
            let _ = s.await;
        }
        Ok(())
    }
}

/// Per-stream bytes h2 may hold beyond what the socket took: about one message (they are cut
/// at [`crate::grpc::MESSAGE_BYTES`]), so the next is made only once the previous one has gone
/// to the socket, and a watcher that reads slowly (or thousands starting at once) cannot pile
/// up buffered data. The kernel's socket buffer, not this, keeps a stream's data flowing. It
/// sets the server's memory more than any other knob: with 1,000 watchers syncing 10,000
/// endpoints, RSS after the sync was 62 MB at 32 KB, 50 MB at 16 KB, 46 MB at 8 KB, 44 MB at
/// 4 KB (less data in flight at once: a lower heap high-water mark, and a smaller per-connection
/// frame queue in h2, which never shrinks), and the sync itself got faster, not slower.
const MAX_SEND_BUF: usize = 4 * 1024;

pub(crate) use linkerd_control::stopped;
