//! Where a service's state comes from: a registry file, the API server, or the caller.

use crate::{
    kube::KubeApiConfig,
    metrics::SourceMetrics,
    serve,
    watch_file::{FileWatcher, Registry},
};
use std::{future::Future, path::PathBuf, time::Duration};
use tokio::sync::watch;

/// Where a service's state comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A registry file, polled every `interval`.
    Registry { path: PathBuf, interval: Duration },
    /// Objects from the API server.
    Kubernetes(KubeApiConfig),
    /// Nothing: the caller feeds the service's index (tests, benchmarks).
    Manual,
}

impl Source {
    /// The registry watcher `start` makes of a [`Source::Registry`]'s file (its first load
    /// must succeed: there is no last good state to keep), else none; a [`Source::Manual`]
    /// service is ready at once.
    pub async fn start_registry<R, E, F>(
        &self,
        metrics: &SourceMetrics,
        start: impl FnOnce(PathBuf) -> F,
    ) -> Result<Option<FileWatcher<R>>, E>
    where
        R: Registry,
        F: Future<Output = Result<FileWatcher<R>, E>>,
    {
        match self {
            Source::Registry { path, .. } => start(path.clone()).await.map(Some),
            Source::Kubernetes(_) => Ok(None),
            Source::Manual => {
                metrics.set_ready();
                Ok(None)
            }
        }
    }

    /// The serve sequence's source task ([`serve::Grpc::serve`]): `registry` polled
    /// every `interval` of [`Source::Registry`], else the watch `kube` starts, else none.
    pub fn task<R, K>(
        &self,
        registry: Option<FileWatcher<R>>,
        kube: Option<K>,
    ) -> impl FnOnce(watch::Receiver<bool>) -> Option<serve::Source> + use<R, K>
    where
        R: Registry,
        K: FnOnce(watch::Receiver<bool>) -> serve::Source,
    {
        let interval = match self {
            Source::Registry { interval, .. } => *interval,
            _ => Duration::MAX,
        };
        move |stop| match (registry, kube) {
            (Some(w), _) => Some(Box::pin(w.run(interval, stop))),
            (_, Some(k)) => Some(k(stop)),
            _ => None,
        }
    }
}
