//! Metrics and the admin server (`/metrics`, `/ready`, `/live`).

use crate::index::Index;
use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};
use tokio::{net::TcpListener, sync::watch};

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

/// Counters shared by the gRPC services, the sources and the admin server.
#[derive(Debug, Default)]
pub struct Metrics {
    watchers: [AtomicU64; 4],
    updates: [AtomicU64; 4],
    ok: [AtomicU64; 4],
    not_found: [AtomicU64; 4],
    invalid: [AtomicU64; 4],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    kube_events: AtomicU64,
    kube_errors: AtomicU64,
    ready: AtomicBool,
}

/// Counts one open watch; uncounts it when its stream is dropped.
#[derive(Debug)]
pub struct WatcherGuard {
    metrics: Arc<Metrics>,
    api: Api,
}

impl Api {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Api::InboundGet => ("inbound", "get_port"),
            Api::InboundWatch => ("inbound", "watch_port"),
            Api::OutboundGet => ("outbound", "get"),
            Api::OutboundWatch => ("outbound", "watch"),
        }
    }

    fn i(self) -> usize {
        self as usize
    }
}

impl Metrics {
    pub fn watcher(self: &Arc<Self>, api: Api) -> WatcherGuard {
        self.watchers[api.i()].fetch_add(1, Relaxed);
        WatcherGuard {
            metrics: self.clone(),
            api,
        }
    }

    pub fn watchers(&self, api: Api) -> u64 {
        self.watchers[api.i()].load(Relaxed)
    }

    pub fn updates_sent(&self, api: Api) -> u64 {
        self.updates[api.i()].load(Relaxed)
    }

    /// Counts a request by result.
    pub fn lookup(&self, api: Api, err: Option<&tonic::Status>) {
        let c = match err.map(tonic::Status::code) {
            None => &self.ok,
            Some(tonic::Code::NotFound) => &self.not_found,
            Some(_) => &self.invalid,
        };
        c[api.i()].fetch_add(1, Relaxed);
    }

    pub fn lookups(&self, api: Api, result: &str) -> u64 {
        let c = match result {
            "ok" => &self.ok,
            "not_found" => &self.not_found,
            _ => &self.invalid,
        };
        c[api.i()].load(Relaxed)
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
        let series = |s: &mut String, name: &str, help: &str, kind: &str, c: &[AtomicU64; 4]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for api in APIS {
                let (dir, rpc) = api.labels();
                let _ = writeln!(
                    s,
                    "{name}{{direction=\"{dir}\",rpc=\"{rpc}\"}} {}",
                    c[api.i()].load(Relaxed)
                );
            }
        };
        series(
            &mut s,
            "policy_watchers",
            "Open watch streams.",
            "gauge",
            &self.watchers,
        );
        series(
            &mut s,
            "policy_updates_sent_total",
            "Messages sent on watch streams.",
            "counter",
            &self.updates,
        );
        let _ = writeln!(
            s,
            "# HELP policy_lookups_total Requests by result.\n# TYPE policy_lookups_total counter"
        );
        for api in APIS {
            let (dir, rpc) = api.labels();
            for (result, c) in [
                ("ok", &self.ok),
                ("not_found", &self.not_found),
                ("invalid", &self.invalid),
            ] {
                let _ = writeln!(
                    s,
                    "policy_lookups_total{{direction=\"{dir}\",rpc=\"{rpc}\",result=\"{result}\"}} {}",
                    c[api.i()].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP policy_registry_reloads_total Registry file changes applied or rejected.\n\
             # TYPE policy_registry_reloads_total counter\n\
             policy_registry_reloads_total{{result=\"ok\"}} {}\n\
             policy_registry_reloads_total{{result=\"error\"}} {}\n\
             # HELP policy_kube_events_total Kubernetes watch events applied.\n\
             # TYPE policy_kube_events_total counter\n\
             policy_kube_events_total {}\n\
             # HELP policy_kube_watch_errors_total Kubernetes watch errors (each is retried).\n\
             # TYPE policy_kube_watch_errors_total counter\n\
             policy_kube_watch_errors_total {}\n\
             # HELP policy_index_workloads Workloads (pods) in the index.\n\
             # TYPE policy_index_workloads gauge\n\
             policy_index_workloads {}\n\
             # HELP policy_index_services Services in the index.\n\
             # TYPE policy_index_services gauge\n\
             policy_index_services {}\n\
             # HELP policy_index_resources Policy resources (Servers, routes, authorizations, ...).\n\
             # TYPE policy_index_resources gauge\n\
             policy_index_resources {}\n\
             # HELP policy_index_topics Watched entries, each shared by its watchers.\n\
             # TYPE policy_index_topics gauge\n\
             policy_index_topics{{direction=\"inbound\"}} {}\n\
             policy_index_topics{{direction=\"outbound\"}} {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
            self.kube_events.load(Relaxed),
            self.kube_errors.load(Relaxed),
            stats.workloads,
            stats.services,
            stats.resources,
            stats.inbound_topics,
            stats.outbound_topics,
        );
        s
    }
}

impl WatcherGuard {
    pub fn sent(&self) {
        self.metrics.updates[self.api.i()].fetch_add(1, Relaxed);
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.metrics.watchers[self.api.i()].fetch_sub(1, Relaxed);
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
            .ok_or("no policy state loaded yet")
    };
    linkerd_control::serve_admin(listener, shutdown, move || m.render(&index), ready).await
}
