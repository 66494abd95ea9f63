//! Wiring: configuration → index, source (registry file or Kubernetes), gRPC and admin.

use crate::{
    Error,
    grpc::PolicyGrpc,
    index::Index,
    k8s::{KubeApiConfig, KubeWatch},
    metrics::{Metrics, serve_admin},
    model::ClusterConfig,
    registry::{self, RegistryWatcher},
};
use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch};

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// gRPC (default `0.0.0.0:8090`), plaintext.
    pub addr: SocketAddr,
    /// `/metrics`, `/ready`, `/live` (default `127.0.0.1:9997`).
    pub admin_addr: SocketAddr,
    pub source: Source,
    pub cluster: ClusterConfig,
    /// How long shutdown waits for open streams to finish.
    pub grace: Duration,
}

/// Where policy comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A registry file, polled every `interval`.
    Registry {
        path: PathBuf,
        interval: Duration,
    },
    Kubernetes(KubeApiConfig),
    /// Nothing: the caller feeds [`Bound::index`] (tests).
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

/// Loads the registry (a first load that fails is an error: there is no last good state)
/// and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let index = Arc::new(Index::new(config.cluster.clone()));
    let metrics = Arc::new(Metrics::default());
    let registry = match &config.source {
        Source::Registry { path, .. } => {
            let state = registry::load_file(path, &config.cluster).await?;
            index.reset(state);
            let mut w = RegistryWatcher::new(path.clone(), index.clone(), metrics.clone());
            w.poll().await;
            metrics.set_ready();
            tracing::info!(path = %path.display(), "registry loaded");
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
                let kube = KubeWatch::new(api, self.index.clone(), self.metrics.clone()).await?;
                Some(tokio::spawn(kube.run(stop_rx.clone())))
            }
            _ => None,
        };
        if let Ok(addr) = self.grpc.local_addr() {
            tracing::info!(%addr, "policy gRPC listening");
        }
        let grpc = PolicyGrpc::new(self.index.clone(), self.metrics.clone());
        let routes = tonic::service::Routes::new(grpc.inbound_server())
            .add_service(grpc.outbound_server())
            .prepare();
        let (draining, drain_rx) = watch::channel(false);
        let mut server = tokio::spawn(linkerd_control::serve_h2(
            self.grpc,
            routes,
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

/// Per-stream bytes h2 may buffer beyond what the socket took (as the destination service).
const MAX_SEND_BUF: usize = 32 * 1024;

pub(crate) use linkerd_control::stopped;
