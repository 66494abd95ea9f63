//! Metrics (prometheus-client, `linkerd_control::metrics`) and the admin server (`/metrics`,
//! `/ready`, `/live`).

use crate::{index::Index, model::ServiceKey};
use linkerd_control::metrics::{
    self as m, Counter, EncodeLabelSet, Family, Gauge, Registry, SourceMetrics,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

/// Which API a watcher or lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Api {
    Get,
    Profile,
}

const APIS: [Api; 2] = [Api::Get, Api::Profile];
const RESULTS: [&str; 3] = ["ok", "not_found", "invalid"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatcherLabels {
    api: &'static str,
    namespace: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    api: &'static str,
    result: &'static str,
}

/// Counters shared by the gRPC service, the sources and the admin server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open watches by (service, API); the gauge family mirrors it, under its lock, so a
    /// service's series goes away with its last watcher.
    watchers: Mutex<BTreeMap<(ServiceKey, Api), u64>>,
    watcher_gauges: Family<WatcherLabels, Gauge>,
    /// By [`Api`]; resolved once so that counting is one atomic add.
    updates: [Counter; 2],
    /// By [`Api`], then result (`ok`, `not_found`, `invalid`).
    lookups: [[Counter; 3]; 2],
    source: Arc<SourceMetrics>,
    index_services: Gauge,
    index_endpoints: Gauge,
    index_topics: Gauge,
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

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let watcher_gauges: Family<WatcherLabels, Gauge> = m::new_gauge(
            &mut registry,
            "destination_watchers",
            "Open Get/GetProfile streams, by service.",
        );
        let updates: Family<ApiLabels, Counter> = m::new_counter(
            &mut registry,
            "destination_updates_sent_total",
            "Messages sent on Get/GetProfile streams.",
        );
        let lookups: Family<LookupLabels, Counter> = m::new_counter(
            &mut registry,
            "destination_lookups_total",
            "Get/GetProfile requests, by result.",
        );
        let source = Arc::new(SourceMetrics::default());
        source.register(&mut registry, "destination");
        let index_services: Gauge = m::new_gauge(
            &mut registry,
            "destination_index_services",
            "Services in the index.",
        );
        let index_endpoints: Gauge = m::new_gauge(
            &mut registry,
            "destination_index_endpoints",
            "Ready endpoints over all services.",
        );
        let index_topics: Gauge = m::new_gauge(
            &mut registry,
            "destination_index_topics",
            "Watched (service, port) entries, each shared by its watchers.",
        );
        Self {
            registry,
            watchers: Mutex::default(),
            watcher_gauges,
            updates: APIS.map(|a| updates.get_or_create(&ApiLabels { api: a.label() }).clone()),
            lookups: APIS.map(|a| {
                RESULTS.map(|result| {
                    lookups
                        .get_or_create(&LookupLabels {
                            api: a.label(),
                            result,
                        })
                        .clone()
                })
            }),
            source,
            index_services,
            index_endpoints,
            index_topics,
        }
    }
}

impl Metrics {
    /// Registers an open watch of `key`.
    pub fn watcher(self: &Arc<Self>, api: Api, key: &ServiceKey) -> WatcherGuard {
        let mut w = self.lock_watchers();
        let n = w.entry((key.clone(), api)).or_insert(0);
        *n += 1;
        self.watcher_gauges
            .get_or_create(&watcher_labels(api, key))
            .set(*n as i64);
        WatcherGuard {
            metrics: self.clone(),
            key: key.clone(),
            api,
        }
    }

    fn lock_watchers(&self) -> MutexGuard<'_, BTreeMap<(ServiceKey, Api), u64>> {
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
        let result = match err.map(tonic::Status::code) {
            None => 0,
            Some(tonic::Code::NotFound) => 1,
            Some(_) => 2,
        };
        self.lookups[api.i()][result].inc();
    }

    pub fn profile_sent(&self) {
        self.updates[Api::Profile.i()].inc();
    }

    pub fn updates_sent(&self, api: Api) -> u64 {
        self.updates[api.i()].get()
    }

    /// What the sources (registry file, Kubernetes) count.
    pub fn source(&self) -> &Arc<SourceMetrics> {
        &self.source
    }

    /// Prometheus text exposition.
    pub fn render(&self, index: &Index) -> String {
        let stats = index.stats();
        self.index_services.set(stats.services as i64);
        self.index_endpoints.set(stats.endpoints as i64);
        self.index_topics.set(stats.topics as i64);
        m::encode(&[&self.registry])
    }
}

fn watcher_labels(api: Api, key: &ServiceKey) -> WatcherLabels {
    WatcherLabels {
        api: api.label(),
        namespace: key.namespace.to_string(),
        service: key.name.to_string(),
    }
}

// === impl WatcherGuard ===

impl WatcherGuard {
    /// Counts one message sent on this stream.
    pub fn sent(&self) {
        self.metrics.updates[self.api.i()].inc();
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        let mut w = self.metrics.lock_watchers();
        let k = (self.key.clone(), self.api);
        if let Some(n) = w.get_mut(&k) {
            *n = n.saturating_sub(1);
            let labels = watcher_labels(self.api, &self.key);
            if *n == 0 {
                w.remove(&k);
                self.metrics.watcher_gauges.remove(&labels);
            } else {
                self.metrics
                    .watcher_gauges
                    .get_or_create(&labels)
                    .set(*n as i64);
            }
        }
    }
}
