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
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
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
        let mut server = tokio::spawn(serve_h2(self.grpc, routes, drain_rx));
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

/// The gRPC server: HTTP/2 on hyper. Stops accepting when `drain` turns true, then asks every
/// connection to finish and waits for them.
async fn serve_h2<S>(listener: TcpListener, svc: S, mut drain: watch::Receiver<bool>)
where
    S: tonic::codegen::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.max_send_buf_size(MAX_SEND_BUF);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut drain) => break,
        };
        let _ = io.set_nodelay(true);
        let conn = h2.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc.clone()));
        let mut drain = drain.clone();
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                    return;
                }
                _ = stopped(&mut drain) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

pub(crate) use linkerd_control::stopped;
