//! Metrics (prometheus-client, `linkerd_control::metrics`) and what the admin server answers
//! (`/metrics`, `/ready`).

use crate::index::Index;
use linkerd_control::metrics::{
    self as m, Counter, EncodeLabelSet, Family, Gauge, Registry, SourceMetrics,
};
use std::sync::Arc;

/// Which RPC a lookup or watcher is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    InboundGet,
    InboundWatch,
    OutboundGet,
    OutboundWatch,
}

const APIS: [Api; 4] = [
    Api::InboundGet,
    Api::InboundWatch,
    Api::OutboundGet,
    Api::OutboundWatch,
];

const RESULTS: [&str; 3] = ["ok", "not_found", "invalid"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    direction: &'static str,
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    direction: &'static str,
    rpc: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Counters shared by the gRPC services, the sources and the admin server. Every series is
/// resolved once, so counting is one atomic operation.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By [`Api`].
    watchers: [Gauge; 4],
    updates: [Counter; 4],
    /// By [`Api`], then result (`ok`, `not_found`, `invalid`).
    lookups: [[Counter; 3]; 4],
    source: Arc<SourceMetrics>,
    index_workloads: Gauge,
    index_services: Gauge,
    index_resources: Gauge,
    /// Inbound, outbound.
    index_topics: [Gauge; 2],
}

/// Counts one open watch; uncounts it when its stream is dropped.
#[derive(Debug)]
pub struct WatcherGuard {
    metrics: Arc<Metrics>,
    api: Api,
}

impl Api {
    fn labels(self) -> RpcLabels {
        let (direction, rpc) = match self {
            Api::InboundGet => ("inbound", "get_port"),
            Api::InboundWatch => ("inbound", "watch_port"),
            Api::OutboundGet => ("outbound", "get"),
            Api::OutboundWatch => ("outbound", "watch"),
        };
        RpcLabels { direction, rpc }
    }

    fn i(self) -> usize {
        self as usize
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let watchers: Family<RpcLabels, Gauge> =
            m::new_gauge(&mut registry, "policy_watchers", "Open watch streams.");
        let updates: Family<RpcLabels, Counter> = m::new_counter(
            &mut registry,
            "policy_updates_sent_total",
            "Messages sent on watch streams.",
        );
        let lookups: Family<LookupLabels, Counter> =
            m::new_counter(&mut registry, "policy_lookups_total", "Requests by result.");
        let source = Arc::new(SourceMetrics::default());
        source.register(&mut registry, "policy");
        let index_workloads: Gauge = m::new_gauge(
            &mut registry,
            "policy_index_workloads",
            "Workloads (pods) in the index.",
        );
        let index_services: Gauge = m::new_gauge(
            &mut registry,
            "policy_index_services",
            "Services in the index.",
        );
        let index_resources: Gauge = m::new_gauge(
            &mut registry,
            "policy_index_resources",
            "Policy resources (Servers, routes, authorizations, ...).",
        );
        let topics: Family<DirectionLabels, Gauge> = m::new_gauge(
            &mut registry,
            "policy_index_topics",
            "Watched entries, each shared by its watchers.",
        );
        Self {
            registry,
            watchers: APIS.map(|a| watchers.get_or_create(&a.labels()).clone()),
            updates: APIS.map(|a| updates.get_or_create(&a.labels()).clone()),
            lookups: APIS.map(|a| {
                let RpcLabels { direction, rpc } = a.labels();
                RESULTS.map(|result| {
                    lookups
                        .get_or_create(&LookupLabels {
                            direction,
                            rpc,
                            result,
                        })
                        .clone()
                })
            }),
            source,
            index_workloads,
            index_services,
            index_resources,
            index_topics: ["inbound", "outbound"]
                .map(|direction| topics.get_or_create(&DirectionLabels { direction }).clone()),
        }
    }
}

impl Metrics {
    pub fn watcher(self: &Arc<Self>, api: Api) -> WatcherGuard {
        self.watchers[api.i()].inc();
        WatcherGuard {
            metrics: self.clone(),
            api,
        }
    }

    pub fn watchers(&self, api: Api) -> u64 {
        self.watchers[api.i()].get().max(0) as u64
    }

    pub fn updates_sent(&self, api: Api) -> u64 {
        self.updates[api.i()].get()
    }

    /// Counts a request by result.
    pub fn lookup(&self, api: Api, err: Option<&tonic::Status>) {
        let result = match err.map(tonic::Status::code) {
            None => 0,
            Some(tonic::Code::NotFound) => 1,
            Some(_) => 2,
        };
        self.lookups[api.i()][result].inc();
    }

    pub fn lookups(&self, api: Api, result: &str) -> u64 {
        let r = RESULTS.iter().position(|r| *r == result).unwrap_or(2);
        self.lookups[api.i()][r].get()
    }

    /// What the sources (registry file, Kubernetes) count.
    pub fn source(&self) -> &Arc<SourceMetrics> {
        &self.source
    }

    /// Prometheus text exposition.
    pub fn render(&self, index: &Index) -> String {
        let stats = index.stats();
        self.index_workloads.set(stats.workloads as i64);
        self.index_services.set(stats.services as i64);
        self.index_resources.set(stats.resources as i64);
        self.index_topics[0].set(stats.inbound_topics as i64);
        self.index_topics[1].set(stats.outbound_topics as i64);
        m::encode(&[&self.registry])
    }
}

impl WatcherGuard {
    pub fn sent(&self) {
        self.metrics.updates[self.api.i()].inc();
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.metrics.watchers[self.api.i()].dec();
    }
}
