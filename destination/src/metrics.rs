//! Metrics and the admin server (`/metrics`, `/ready`, `/live`).

use crate::{index::Index, model::ServiceKey};
use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};
use tokio::{net::TcpListener, sync::watch};

/// Which API a watcher or lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Api {
    Get,
    Profile,
}

/// Counters shared by the gRPC service, the sources and the admin server.
#[derive(Debug, Default)]
pub struct Metrics {
    watchers: Mutex<BTreeMap<(ServiceKey, Api), u64>>,
    updates: [AtomicU64; 2],
    lookups_ok: [AtomicU64; 2],
    lookups_not_found: [AtomicU64; 2],
    lookups_invalid: [AtomicU64; 2],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    kube_events: AtomicU64,
    kube_errors: AtomicU64,
    ready: AtomicBool,
}

/// Counts one open watch; uncounts it when dropped with its stream.
#[derive(Debug)]
pub struct WatcherGuard {
    metrics: Arc<Metrics>,
    key: ServiceKey,
    api: Api,
}

impl Api {
    fn label(self) -> &'static str {
        match self {
            Api::Get => "get",
            Api::Profile => "get_profile",
        }
    }

    fn i(self) -> usize {
        self as usize
    }
}

impl Metrics {
    /// Registers an open watch of `key`.
    pub fn watcher(self: &Arc<Self>, api: Api, key: &ServiceKey) -> WatcherGuard {
        *self.lock_watchers().entry((key.clone(), api)).or_insert(0) += 1;
        WatcherGuard {
            metrics: self.clone(),
            key: key.clone(),
            api,
        }
    }

    fn lock_watchers(&self) -> std::sync::MutexGuard<'_, BTreeMap<(ServiceKey, Api), u64>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open watches of `key` for `api`.
    pub fn watchers(&self, api: Api, key: &ServiceKey) -> u64 {
        self.lock_watchers()
            .get(&(key.clone(), api))
            .copied()
            .unwrap_or(0)
    }

    /// Counts a lookup by result (`None`: the stream was opened).
    pub fn lookup(&self, api: Api, err: Option<&tonic::Status>) {
        let c = match err.map(tonic::Status::code) {
            None => &self.lookups_ok,
            Some(tonic::Code::NotFound) => &self.lookups_not_found,
            Some(_) => &self.lookups_invalid,
        };
        c[api.i()].fetch_add(1, Relaxed);
    }

    pub fn profile_sent(&self) {
        self.updates[Api::Profile.i()].fetch_add(1, Relaxed);
    }

    pub fn updates_sent(&self, api: Api) -> u64 {
        self.updates[api.i()].load(Relaxed)
    }

    pub fn reloaded(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn reload_errors(&self) -> u64 {
        self.reloads_failed.load(Relaxed)
    }

    pub fn kube_event(&self) {
        self.kube_events.fetch_add(1, Relaxed);
    }

    pub fn kube_error(&self) {
        self.kube_errors.fetch_add(1, Relaxed);
    }

    /// The source has loaded its first full state.
    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self, index: &Index) -> String {
        let stats = index.stats();
        let mut s = String::with_capacity(2048);
        s.push_str(
            "# HELP destination_watchers Open Get/GetProfile streams, by service.\n\
             # TYPE destination_watchers gauge\n",
        );
        for ((key, api), n) in self.lock_watchers().iter().filter(|(_, n)| **n > 0) {
            let _ = writeln!(
                s,
                "destination_watchers{{api=\"{}\",namespace=\"{}\",service=\"{}\"}} {n}",
                api.label(),
                key.namespace,
                key.name
            );
        }
        s.push_str(
            "# HELP destination_updates_sent_total Messages sent on Get/GetProfile streams.\n\
             # TYPE destination_updates_sent_total counter\n",
        );
        for api in [Api::Get, Api::Profile] {
            let _ = writeln!(
                s,
                "destination_updates_sent_total{{api=\"{}\"}} {}",
                api.label(),
                self.updates_sent(api)
            );
        }
        s.push_str(
            "# HELP destination_lookups_total Get/GetProfile requests, by result.\n\
             # TYPE destination_lookups_total counter\n",
        );
        for api in [Api::Get, Api::Profile] {
            for (result, c) in [
                ("ok", &self.lookups_ok),
                ("not_found", &self.lookups_not_found),
                ("invalid", &self.lookups_invalid),
            ] {
                let _ = writeln!(
                    s,
                    "destination_lookups_total{{api=\"{}\",result=\"{result}\"}} {}",
                    api.label(),
                    c[api.i()].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP destination_registry_reloads_total Registry file changes applied or rejected.\n\
             # TYPE destination_registry_reloads_total counter\n\
             destination_registry_reloads_total{{result=\"ok\"}} {}\n\
             destination_registry_reloads_total{{result=\"error\"}} {}\n\
             # HELP destination_kube_events_total Kubernetes watch events applied.\n\
             # TYPE destination_kube_events_total counter\n\
             destination_kube_events_total {}\n\
             # HELP destination_kube_watch_errors_total Kubernetes watch errors (each is retried).\n\
             # TYPE destination_kube_watch_errors_total counter\n\
             destination_kube_watch_errors_total {}\n\
             # HELP destination_index_services Services in the index.\n\
             # TYPE destination_index_services gauge\n\
             destination_index_services {}\n\
             # HELP destination_index_endpoints Ready endpoints over all services.\n\
             # TYPE destination_index_endpoints gauge\n\
             destination_index_endpoints {}\n\
             # HELP destination_index_topics Watched (service, port) entries, each shared by its watchers.\n\
             # TYPE destination_index_topics gauge\n\
             destination_index_topics {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
            self.kube_events.load(Relaxed),
            self.kube_errors.load(Relaxed),
            stats.services,
            stats.endpoints,
            stats.topics,
        );
        s
    }
}

// === impl WatcherGuard ===

impl WatcherGuard {
    /// Counts one message sent on this stream.
    pub fn sent(&self) {
        self.metrics.updates[self.api.i()].fetch_add(1, Relaxed);
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        let mut w = self.metrics.lock_watchers();
        let k = (self.key.clone(), self.api);
        if let Some(n) = w.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&k);
            }
        }
    }
}

/// Serves `/metrics`, `/ready` and `/live` until `shutdown` turns true.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let m = metrics.clone();
    let ready = move || {
        metrics
            .is_ready()
            .then_some(())
            .ok_or("no discovery state loaded yet")
    };
    linkerd_control::serve_admin(listener, shutdown, move || m.render(&index), ready).await
}
