//! The API-server side of the Kubernetes source: Services, EndpointSlices and Pods (all
//! namespaces) through `linkerd_control::kube::watch_kind`, each change landing in
//! [`KubeIndex`]. What an object means is decided in [`crate::k8s`], which tests drive
//! directly; the watch loop (lists buffered into one reset, errors counted and retried,
//! readiness once every kind is listed) is the control plane's.

use crate::{IdentityConfig, index::Index, k8s::KubeIndex, metrics::Metrics};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use linkerd_control::kube::{Change, KubeApiConfig, KubeError, Lists, watch_kind};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// The running watches.
pub struct KubeWatch {
    client: kube::Client,
    kube: Mutex<KubeIndex>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for KubeWatch {
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
    Ok(KubeWatch {
        client: api.client().await?,
        kube: Mutex::new(KubeIndex::new(index, ids)),
        metrics,
    })
}

/// How one kind's changes land in the index.
trait Kind: Sized {
    fn apply(k: &mut KubeIndex, obj: &Self);
    fn delete(k: &mut KubeIndex, obj: &Self);
    fn reset(k: &mut KubeIndex, objs: &[Self]);
}

impl Kind for Service {
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
        let lists = Lists::new(3);
        let source = self.metrics.source();
        let watches = async {
            tokio::join!(
                watch_kind(self.client.clone(), &lists, source, |c| self
                    .changed::<Service>(c)),
                watch_kind(self.client.clone(), &lists, source, |c| {
                    self.changed::<EndpointSlice>(c)
                }),
                watch_kind(self.client.clone(), &lists, source, |c| self
                    .changed::<Pod>(c)),
            );
        };
        lists.run(source, watches, stop).await;
    }

    fn changed<K: Kind>(&self, change: Change<K>) {
        let mut kube = self.kube.lock().unwrap_or_else(PoisonError::into_inner);
        match change {
            Change::Apply(obj) => K::apply(&mut kube, &obj),
            Change::Delete(obj) => K::delete(&mut kube, &obj),
            Change::Reset(objs) => K::reset(&mut kube, &objs),
        }
        kube.flush();
    }
}
