//! The API-server side of the Kubernetes source: three `kube::runtime::watcher` streams
//! (Services, EndpointSlices, Pods, all namespaces) feeding [`KubeIndex`]. Everything here is
//! plumbing; what an object means is decided in [`crate::k8s`], which tests drive directly.
//!
//! An initial list (and every relist after a watch is lost) is buffered from `Init` to
//! `InitDone` and applied as one `reset_*`, so the index never sees half a list and each
//! service is rebuilt once. Watch errors are logged, counted and retried with kube's default
//! backoff; the last state stays served meanwhile.

use crate::{IdentityConfig, index::Index, k8s::KubeIndex, metrics::Metrics};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use std::{
    fmt::Debug,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};
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
}

impl KubeApiConfig {
    /// kube's inference (in-cluster first).
    pub fn in_cluster() -> Result<Self, KubeError> {
        Ok(Self::default())
    }

    pub fn new(api_url: http::Uri) -> Self {
        Self {
            api_url: Some(api_url),
            ..Self::default()
        }
    }

    async fn client(&self) -> Result<Client, KubeError> {
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

/// The running watches.
pub struct KubeWatch {
    client: Client,
    kube: Arc<Mutex<KubeIndex>>,
    metrics: Arc<Metrics>,
}

impl Debug for KubeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWatch").finish_non_exhaustive()
    }
}

/// Builds the client (no request is made yet).
pub async fn start(
    api: KubeApiConfig,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    ids: IdentityConfig,
) -> Result<KubeWatch, KubeError> {
    let client = api.client().await?;
    Ok(KubeWatch {
        client,
        kube: Arc::new(Mutex::new(KubeIndex::new(index, ids))),
        metrics,
    })
}

/// How one kind's events land in the index.
trait Kind:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static
{
    const NAME: &'static str;
    fn apply(k: &mut KubeIndex, obj: &Self);
    fn delete(k: &mut KubeIndex, obj: &Self);
    fn reset(k: &mut KubeIndex, objs: &[Self]);
}

impl Kind for Service {
    const NAME: &'static str = "services";
    fn apply(k: &mut KubeIndex, obj: &Self) {
        k.apply_service(obj)
    }
    fn delete(k: &mut KubeIndex, obj: &Self) {
        k.delete_service(obj)
    }
    fn reset(k: &mut KubeIndex, objs: &[Self]) {
        k.reset_services(objs)
    }
}

impl Kind for EndpointSlice {
    const NAME: &'static str = "endpointslices";
    fn apply(k: &mut KubeIndex, obj: &Self) {
        k.apply_slice(obj)
    }
    fn delete(k: &mut KubeIndex, obj: &Self) {
        k.delete_slice(obj)
    }
    fn reset(k: &mut KubeIndex, objs: &[Self]) {
        k.reset_slices(objs)
    }
}

impl Kind for Pod {
    const NAME: &'static str = "pods";
    fn apply(k: &mut KubeIndex, obj: &Self) {
        k.apply_pod(obj)
    }
    fn delete(k: &mut KubeIndex, obj: &Self) {
        k.delete_pod(obj)
    }
    fn reset(k: &mut KubeIndex, objs: &[Self]) {
        k.reset_pods(objs)
    }
}

impl KubeWatch {
    /// Watches until `stop` turns true. Ready once every kind has been listed once.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let (listed_tx, mut listed) = watch::channel(0u8);
        let listed_tx = Arc::new(listed_tx);
        let svc = self.watch::<Service>(listed_tx.clone());
        let slices = self.watch::<EndpointSlice>(listed_tx.clone());
        let pods = self.watch::<Pod>(listed_tx);
        let metrics = self.metrics.clone();
        let ready = async move {
            while *listed.borrow_and_update() < 3 {
                if listed.changed().await.is_err() {
                    return;
                }
            }
            metrics.set_ready();
            tracing::info!("kubernetes state listed; ready");
            std::future::pending::<()>().await;
        };
        let mut stop = stop;
        tokio::select! {
            _ = svc => {}
            _ = slices => {}
            _ = pods => {}
            _ = ready => {}
            _ = crate::server::stopped(&mut stop) => {}
        }
    }

    async fn watch<K: Kind>(&self, listed: Arc<watch::Sender<u8>>) {
        let api: Api<K> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut buffer: Option<Vec<K>> = None;
        let mut first = true;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    self.metrics.kube_error();
                    tracing::warn!(kind = K::NAME, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            self.metrics.kube_event();
            let mut kube = self.kube.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                watcher::Event::Init => buffer = Some(Vec::new()),
                watcher::Event::InitApply(obj) => match &mut buffer {
                    Some(b) => b.push(obj),
                    None => K::apply(&mut kube, &obj),
                },
                watcher::Event::InitDone => {
                    let objs = buffer.take().unwrap_or_default();
                    tracing::debug!(kind = K::NAME, n = objs.len(), "listed");
                    K::reset(&mut kube, &objs);
                    kube.flush();
                    if first {
                        first = false;
                        listed.send_modify(|n| *n += 1);
                    }
                }
                watcher::Event::Apply(obj) => {
                    K::apply(&mut kube, &obj);
                    kube.flush();
                }
                watcher::Event::Delete(obj) => {
                    K::delete(&mut kube, &obj);
                    kube.flush();
                }
            }
        }
    }
}
