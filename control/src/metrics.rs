//! The control plane's metrics vocabulary, on `prometheus-client` (as linkerd2-proxy and
//! ztunnel): each service keeps its metrics in a [`Registry`] and renders it with [`encode`] as
//! Prometheus text, format 0.0.4 (counters end in `_total` on every line, no `# EOF`), the
//! format the services have always served. [`SourceMetrics`] is what the shared sources
//! (registry file, Kubernetes watches) count.
//!
//! Names are written in full, as they appear on `/metrics`: [`counter`] takes
//! `…_total` and registers it without the suffix, which the encoder adds back.

pub use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Metric, Registry},
};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The Prometheus text of `registries`, one after the other.
pub fn encode(registries: &[&Registry]) -> String {
    let mut s = String::with_capacity(2048);
    for r in registries {
        // Writing to a `String` cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut s, r);
    }
    s
}

/// Registers a counter (or a family of counters) named `name` as it appears on `/metrics`,
/// `_total` included. `help` is one sentence ending in a full stop.
pub fn counter(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    let name = name.strip_suffix("_total").unwrap_or(name);
    registry.register(name, help_text(help), metric);
}

/// Registers a gauge (or a family of gauges).
pub fn gauge(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help_text(help), metric);
}

/// A new counter (or family of counters), registered as [`counter`] does.
pub fn new_counter<M: Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let metric = M::default();
    counter(registry, name, help, metric.clone());
    metric
}

/// A new gauge (or family of gauges), registered.
pub fn new_gauge<M: Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let metric = M::default();
    gauge(registry, name, help, metric.clone());
    metric
}

/// prometheus-client ends every help text with a full stop.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// `{result="ok"}` or `{result="error"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Outcomes counted by result (`ok`, `error`), both series present from the start.
#[derive(Clone, Debug)]
pub struct Outcomes(Family<ResultLabels, Counter>);

impl Default for Outcomes {
    fn default() -> Self {
        let f = Family::default();
        for result in ["ok", "error"] {
            let _ = f.get_or_create(&ResultLabels { result });
        }
        Self(f)
    }
}

impl Outcomes {
    pub fn record(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.0.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn count(&self, ok: bool) -> u64 {
        let result = if ok { "ok" } else { "error" };
        self.0.get(&ResultLabels { result }).map_or(0, |c| c.get())
    }

    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        counter(registry, name, help, self.0.clone());
    }
}

/// What the sources count (registry reloads, Kubernetes events and watch errors) and whether
/// the first full state has been loaded.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    reloads: Outcomes,
    kube_events: Counter,
    kube_errors: Counter,
    ready: AtomicBool,
}

impl SourceMetrics {
    /// Registers `<prefix>_registry_reloads_total{result}`, `<prefix>_kube_events_total` and
    /// `<prefix>_kube_watch_errors_total`.
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        self.reloads.register(
            registry,
            &format!("{prefix}_registry_reloads_total"),
            "Registry file changes applied or rejected.",
        );
        counter(
            registry,
            &format!("{prefix}_kube_events_total"),
            "Kubernetes watch events applied.",
            self.kube_events.clone(),
        );
        counter(
            registry,
            &format!("{prefix}_kube_watch_errors_total"),
            "Kubernetes watch errors (each is retried).",
            self.kube_errors.clone(),
        );
    }

    /// A registry change applied (`true`) or rejected.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.record(ok);
    }

    pub fn reload_errors(&self) -> u64 {
        self.reloads.count(false)
    }

    pub fn kube_event(&self) {
        self.kube_events.inc();
    }

    pub fn kube_error(&self) {
        self.kube_errors.inc();
    }

    /// The source has loaded its first full state.
    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::Scrape;

    #[test]
    fn renders_prometheus_text_with_the_names_given() {
        let m = SourceMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r, "test");
        m.reloaded(true);
        m.reloaded(false);
        m.reloaded(false);
        m.kube_event();
        let text = encode(&[&r]);
        assert!(
            text.contains(
                "# HELP test_registry_reloads_total Registry file changes applied or rejected.\n\
                 # TYPE test_registry_reloads_total counter\n"
            ),
            "{text}"
        );
        assert!(!text.contains("EOF"), "{text}");
        let s = Scrape::parse(&text).unwrap();
        assert_eq!(
            s.value("test_registry_reloads_total", &[("result", "error")]),
            Some(2.0)
        );
        assert_eq!(
            s.value("test_registry_reloads_total", &[("result", "ok")]),
            Some(1.0)
        );
        assert_eq!(s.value("test_kube_events_total", &[]), Some(1.0));
        assert_eq!(s.value("test_kube_watch_errors_total", &[]), Some(0.0));
        assert_eq!(
            s.family("test_kube_events_total").map(|f| f.kind.as_str()),
            Some("counter")
        );
        assert_eq!(m.reload_errors(), 2);
    }
}
