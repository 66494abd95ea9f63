//! Wiring: configuration → index, source (registry file or Kubernetes), gRPC and admin, on the
//! control plane's serve sequence (`linkerd_control::serve`).

use crate::{
    Error,
    grpc::PolicyGrpc,
    index::Index,
    k8s::KubeWatch,
    metrics::Metrics,
    model::ClusterConfig,
    registry::{self, RegistryWatcher},
};
use linkerd_control::{
    Listeners,
    serve::{Grpc, Service, Source as Task, source_admin},
    shutdown::Shutdown,
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
pub type Bound = linkerd_control::Bound<Loaded>;

/// What [`bind`] loads, and the configuration [`Bound::run`] needs.
#[derive(Debug)]
pub struct Loaded {
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    source: Source,
    registry: Option<RegistryWatcher>,
    grace: Duration,
}

/// Loads the registry (a first load that fails is an error) and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let index = Arc::new(Index::new(config.cluster));
    let metrics = Arc::new(Metrics::default());
    let registry = config
        .source
        .start_registry(metrics.source(), |path| {
            registry::start_watcher(path, index.clone(), &metrics)
        })
        .await?;
    let loaded = Loaded {
        index,
        metrics,
        source: config.source,
        registry,
        grace: config.grace,
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

impl Service for Loaded {
    type Error = Error;

    /// Serves until `shutdown` completes; then ends every stream, stops the source and the
    /// admin server, and waits up to the grace period for connections to close.
    async fn run(self, listeners: Listeners, shutdown: impl Shutdown) -> Result<(), Error> {
        let kube = match &self.source {
            Source::Kubernetes(api) => {
                Some(KubeWatch::new(api, self.index.clone(), self.metrics.clone()).await?)
            }
            _ => None,
        };
        let index = self.index.clone();
        let source = self.source.task(
            self.registry,
            kube.map(|k| move |stop| -> Task { Box::pin(k.run(stop)) }),
        );
        let policy = PolicyGrpc::new(self.index.clone(), self.metrics.clone());
        let grpc = Grpc {
            name: "policy",
            svc: tonic::service::Routes::new(policy.inbound_server())
                .add_service(policy.outbound_server())
                .prepare(),
            max_send_buf: MAX_SEND_BUF,
            grace: self.grace,
        };
        let render = {
            let (index, metrics) = (self.index.clone(), self.metrics.clone());
            move || metrics.render(&index)
        };
        let admin = source_admin(
            render,
            self.metrics.source().clone(),
            "no policy state loaded yet",
        );
        grpc.serve(listeners, admin, source, move || index.close(), shutdown)
            .await;
        Ok(())
    }
}

/// Per-stream bytes h2 may buffer beyond what the socket took (as the destination service).
const MAX_SEND_BUF: usize = 32 * 1024;
