//! Wiring: configuration → index, source (registry file or Kubernetes), gRPC and admin, on the
//! control plane's serve sequence (`linkerd_control::serve`).

use crate::{
    Error,
    grpc::PolicyGrpc,
    index::Index,
    k8s::KubeWatch,
    metrics::{self, Metrics},
    model::ClusterConfig,
    registry::{self, RegistryWatcher},
};
use linkerd_control::{
    Listeners,
    serve::{Admin, Grpc, Source as Task},
};
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

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

/// Where the service's state comes from (a registry file, the API server, or the caller).
pub use linkerd_control::source::Source;

/// Bound listeners and the loaded index, ready to [`Bound::run`].
#[derive(Debug)]
pub struct Bound {
    listeners: Listeners,
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
            Some(registry::start_watcher(path.clone(), index.clone(), &metrics).await?)
        }
        Source::Kubernetes(_) => None,
        Source::Manual => {
            metrics.source().set_ready();
            None
        }
    };
    Ok(Bound {
        listeners: Listeners::bind(config.addr, config.admin_addr).await?,
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
        self.listeners.addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.admin_addr()
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
        let kube = match &self.config.source {
            Source::Kubernetes(api) => {
                Some(KubeWatch::new(api, self.index.clone(), self.metrics.clone()).await?)
            }
            _ => None,
        };
        let index = self.index.clone();
        let source = self.config.source.task(
            self.registry,
            kube.map(|k| move |stop| -> Task { Box::pin(k.run(stop)) }),
        );
        let (metrics, ready) = metrics::admin(self.index.clone(), self.metrics.clone());
        let policy = PolicyGrpc::new(self.index.clone(), self.metrics.clone());
        let grpc = Grpc {
            name: "policy",
            svc: tonic::service::Routes::new(policy.inbound_server())
                .add_service(policy.outbound_server())
                .prepare(),
            max_send_buf: MAX_SEND_BUF,
            grace: self.config.grace,
        };
        self.listeners
            .serve_grpc(
                grpc,
                Admin { metrics, ready },
                source,
                move || index.close(),
                shutdown,
            )
            .await;
        Ok(())
    }
}

/// Per-stream bytes h2 may buffer beyond what the socket took (as the destination service).
const MAX_SEND_BUF: usize = 32 * 1024;
