//! What `mesh up` adds to see the mesh: the embedded OTLP trace receiver its sidecars export
//! to (or the user's collector, `--trace-collector`), and the dashboard (`--dashboard`), both
//! in this process, not in the control plane.

use super::workloads::Running;
use crate::dash::{self, Dash, Traces, otlp, traces::Store};
use crate::metrics::Scrape;
use crate::schema;
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

// The proxy's tracing variables, by the proxy's own names.
use linkerd_proxy::config::{
    ENV_TRACE_COLLECTOR_SVC_ADDR as COLLECTOR_ADDR, ENV_TRACE_PROTOCOL as PROTOCOL,
    ENV_TRACE_SAMPLE_RATIO as SAMPLE_RATIO, ENV_TRACE_SERVICE_NAME as SERVICE_NAME,
};

#[derive(Debug)]
pub struct Observe {
    pub store: Arc<Mutex<Store>>,
    /// Where the sidecars export spans.
    pub collector: String,
    /// Whether that is the embedded receiver.
    pub own_receiver: bool,
    pub sample: f64,
    pub dash: Option<Arc<Dash>>,
    pub dashboard: Option<SocketAddr>,
}

/// How `mesh up` was asked to observe.
#[derive(Debug)]
pub struct Options<'a> {
    pub mesh: &'a str,
    pub control_plane: Ipv4Addr,
    pub dashboard: Option<SocketAddr>,
    pub no_dashboard: bool,
    pub trace_collector: Option<&'a str>,
    pub sample: f64,
    pub json: bool,
}

impl Observe {
    /// Starts the receiver (unless the sidecars export elsewhere) and the dashboard, and says
    /// where the dashboard is (on stderr with `--json`, whose stdout is the summary only).
    pub async fn start(o: Options<'_>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&o.sample),
            "--trace-sample {}: expected a share from 0 to 1",
            o.sample
        );
        let store = Arc::new(Mutex::new(Store::default()));
        let (collector, own_receiver) = match o.trace_collector {
            Some(c) => {
                check_collector(c)?;
                (c.to_string(), false)
            }
            None => {
                // OTLP's port, unless something listens there on all addresses (a collector
                // of the user's): then any free port.
                let listener =
                    match otlp::bind(SocketAddr::from((o.control_plane, otlp::PORT))).await {
                        Ok(l) => l,
                        Err(_) => otlp::bind(SocketAddr::from((o.control_plane, 0))).await?,
                    };
                let addr = listener.local_addr()?;
                otlp::serve(listener, store.clone());
                (addr.to_string(), true)
            }
        };
        let (dash, dashboard) = if o.no_dashboard {
            (None, None)
        } else {
            let listener = dash::http::bind(o.dashboard).await?;
            let addr = listener.local_addr()?;
            let d = Dash::new(
                Some(o.mesh.to_string()),
                Traces::Local(store.clone()),
                (!own_receiver).then(|| collector.clone()),
            );
            dash::http::serve(listener, d.clone());
            let line = format!("Dashboard: http://{addr}");
            if o.json {
                crate::out::errln!("{line}");
            } else {
                crate::out::outln!("{line}")?;
            }
            (Some(d), Some(addr))
        };
        Ok(Observe {
            store,
            collector,
            own_receiver,
            sample: o.sample,
            dash,
            dashboard,
        })
    }

    /// The tracing variables of every sidecar (the workload's name is added per sidecar).
    pub fn sidecar_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (COLLECTOR_ADDR, self.collector.clone()),
            (PROTOCOL, "opentelemetry".into()),
            (SAMPLE_RATIO, self.sample.to_string()),
        ]
    }

    pub const SERVICE_NAME: &'static str = SERVICE_NAME;

    pub fn load_tracing(&self) -> super::load::Tracing {
        super::load::Tracing {
            sample: self.sample,
            store: self.store.clone(),
        }
    }

    /// One scrape of every sidecar, for the dashboard.
    pub fn feed(&self, running: &[Running], scrapes: &[Option<Scrape>]) {
        if let Some(d) = &self.dash {
            d.feed(
                running.iter().map(super::summary::info).collect(),
                running.iter().map(|r| r.workload.admin()).collect(),
                scrapes.to_vec(),
            );
        }
    }

    /// The traces collected, for the summary (`null` when the sidecars exported elsewhere).
    pub fn summary(&self, running: &[Running]) -> Option<schema::Traces> {
        if !self.own_receiver {
            return None;
        }
        let counts = self.store.lock().ok()?.counts();
        let workload_names: Vec<String> = counts
            .services
            .iter()
            .filter(|s| running.iter().any(|r| r.name() == s.as_str()))
            .cloned()
            .collect();
        Some(schema::Traces {
            collected: counts.collected,
            stored: counts.stored,
            spans: counts.spans_received,
            workloads: workload_names.len(),
            workload_names,
        })
    }

    pub fn mesh_up(&self) -> schema::MeshUp {
        schema::MeshUp {
            rss_bytes: dash::self_rss_bytes(),
            dashboard: self.dashboard.map(|a| format!("http://{a}")),
        }
    }
}

/// The sidecars export plaintext, which the proxy allows only to a collector on loopback (one
/// elsewhere is reached over mTLS with its mesh identity: deploy/README.md).
fn check_collector(addr: &str) -> anyhow::Result<()> {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => anyhow::bail!("--trace-collector {addr}: expected host:port"),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "--trace-collector {addr}: the sidecars of `mesh up` export in plaintext, so the \
         collector must listen on loopback (e.g. Jaeger's or an OpenTelemetry collector's \
         OTLP/gRPC port, 127.0.0.1:4317)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_must_be_on_loopback() {
        for ok in ["127.0.0.1:4317", "localhost:4317", "[::1]:4317"] {
            assert!(check_collector(ok).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.1:4317", "jaeger:4317", "127.0.0.1"] {
            assert!(check_collector(bad).is_err(), "{bad}");
        }
    }
}
