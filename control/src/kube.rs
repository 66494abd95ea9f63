//! The Kubernetes source (feature `kube`): where the API server is, and the watch loop every
//! kind goes through. What an object means is the service's business (its `Change` handler,
//! which tests drive directly); everything here is plumbing.
//!
//! ```text
//! watcher(Api::all) ─► Init … InitApply … InitDone ─► Change::Reset(whole list)
//!   (kube's default backoff)   Apply / Delete      ─► Change::Apply / Change::Delete
//!   404 on the first list (CRD not installed)      ─► listed, empty; the watch keeps retrying
//! Lists: every kind listed once ─► SourceMetrics::set_ready
//! ```
//!
//! An initial list (and every relist after a watch is lost) is buffered from `Init` to
//! `InitDone` and handed over as one `Reset`, so the service never sees half a list. Watch
//! errors are logged, counted and retried; the last state stays served meanwhile.

use crate::{args::KubeArgs, args::Names, metrics::SourceMetrics, shutdown::stopped};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use std::{fmt::Debug, future::Future, path::PathBuf};
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// Where the API server is. Without a URL, kube's inference is used (in-cluster service
/// account, else `$KUBECONFIG`/`~/.kube/config`).
#[derive(Clone, Debug, Default)]
pub struct KubeApiConfig {
    pub api_url: Option<http::Uri>,
    /// PEM roots for the API server's certificate.
    pub ca_file: Option<PathBuf>,
    /// A bearer token file (reread by kube as it changes).
    pub token_file: Option<PathBuf>,
}

/// Why the Kubernetes client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes configuration: {0}")]
    Infer(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
    #[error("{0}")]
    Usage(String),
}

impl KubeApiConfig {
    /// kube's inference (in-cluster first).
    pub fn in_cluster() -> Self {
        Self::default()
    }

    pub fn new(api_url: http::Uri) -> Self {
        Self {
            api_url: Some(api_url),
            ..Self::default()
        }
    }

    /// What the flags say: in-cluster unless `--kube-api-url`, then `--kube-ca` and
    /// `--kube-token-file` if given.
    pub fn from_args<N: Names>(a: &KubeArgs<N>) -> Result<Self, KubeError> {
        Ok(Self {
            api_url: a.api_url().map_err(KubeError::Usage)?,
            ca_file: a.kube_ca.clone(),
            token_file: a.kube_token_file.clone(),
        })
    }

    /// Builds the client (no request is made yet).
    pub async fn client(&self) -> Result<Client, KubeError> {
        let mut config = match &self.api_url {
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Infer(e.to_string()))?,
            Some(url) => kube::Config::new(url.clone()),
        };
        if let Some(ca) = &self.ca_file {
            config.root_cert_file = Some(ca.clone());
        }
        if let Some(t) = &self.token_file {
            config.auth_info.token_file = Some(t.display().to_string());
        }
        Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
    }
}

/// What one watch event means for the service.
#[derive(Debug)]
pub enum Change<K> {
    Apply(K),
    Delete(K),
    /// Every object of the kind, replacing what was there (a first list or a relist).
    Reset(Vec<K>),
}

/// Counts the kinds listed at least once; the source is ready when every kind is.
#[derive(Debug)]
pub struct Lists {
    listed: watch::Sender<usize>,
    kinds: usize,
}

impl Lists {
    pub fn new(kinds: usize) -> Self {
        Self {
            listed: watch::Sender::new(0),
            kinds,
        }
    }

    fn listed(&self) {
        self.listed.send_modify(|n| *n += 1);
    }

    /// Runs `watches` (every kind's [`watch_kind`]) until `stop` turns true; marks `metrics`
    /// ready once every kind has been listed.
    pub async fn run(
        &self,
        metrics: &SourceMetrics,
        watches: impl Future<Output = ()>,
        mut stop: watch::Receiver<bool>,
    ) {
        let ready = async {
            let mut rx = self.listed.subscribe();
            if rx.wait_for(|n| *n >= self.kinds).await.is_ok() {
                metrics.set_ready();
                tracing::info!("kubernetes state listed; ready");
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = watches => {}
            _ = ready => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

/// Watches every object of kind `K` (all namespaces), handing each change to `on`.
pub async fn watch_kind<K, F>(client: Client, lists: &Lists, metrics: &SourceMetrics, mut on: F)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(Change<K>),
{
    let kind = K::plural(&()).into_owned();
    let api: Api<K> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut buffer: Option<Vec<K>> = None;
    let mut first = true;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                metrics.kube_error();
                if first && resource_missing(&e) {
                    // The kind's CRD is not installed (the Gateway API ones are optional): it
                    // has no objects, which must not keep the controller unready. The watch
                    // keeps retrying, so installing the CRD later is picked up.
                    first = false;
                    lists.listed();
                    tracing::warn!(
                        %kind,
                        "the API server does not serve this kind (CRD not installed?); treating it as empty"
                    );
                    continue;
                }
                tracing::warn!(%kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        metrics.kube_event();
        match event {
            watcher::Event::Init => buffer = Some(Vec::new()),
            watcher::Event::InitApply(obj) => match &mut buffer {
                Some(b) => b.push(obj),
                None => on(Change::Apply(obj)),
            },
            watcher::Event::InitDone => {
                let objs = buffer.take().unwrap_or_default();
                tracing::debug!(%kind, n = objs.len(), "listed");
                on(Change::Reset(objs));
                if first {
                    first = false;
                    lists.listed();
                }
            }
            watcher::Event::Apply(obj) => on(Change::Apply(obj)),
            watcher::Event::Delete(obj) => on(Change::Delete(obj)),
        }
    }
}

/// Whether a watch failed because the API server does not serve the kind at all (404 on the
/// list: its CustomResourceDefinition is not installed).
pub fn resource_missing(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "the server could not find the requested resource".into(),
            reason: "NotFound".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_kind_the_api_server_does_not_serve_counts_as_listed_and_empty() {
        assert!(resource_missing(&watcher::Error::InitialListFailed(
            api_error(404)
        )));
        assert!(resource_missing(&watcher::Error::WatchStartFailed(
            api_error(404)
        )));
        // Forbidden (RBAC) or a server error is a real failure: keep retrying, stay unready.
        assert!(!resource_missing(&watcher::Error::InitialListFailed(
            api_error(403)
        )));
        assert!(!resource_missing(&watcher::Error::InitialListFailed(
            api_error(500)
        )));
    }

    #[tokio::test]
    async fn ready_once_every_kind_is_listed() {
        let lists = Lists::new(2);
        let metrics = SourceMetrics::default();
        let (stop, rx) = watch::channel(false);
        let watches = async {
            lists.listed();
            tokio::task::yield_now().await;
            assert!(!metrics.is_ready());
            lists.listed();
            std::future::pending::<()>().await;
        };
        let stopper = async {
            while !metrics.is_ready() {
                tokio::task::yield_now().await;
            }
            stop.send(true).unwrap();
        };
        tokio::join!(lists.run(&metrics, watches, rx), stopper);
        assert!(metrics.is_ready());
    }
}
