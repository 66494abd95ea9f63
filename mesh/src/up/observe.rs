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

/// The proxy's tracing variables (the contract with linkerd-proxy's trace export).
const COLLECTOR_ADDR: &str = "LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR";
const SERVICE_NAME: &str = "LINKERD2_PROXY_TRACE_SERVICE_NAME";
const PROTOCOL: &str = "LINKERD2_PROXY_TRACE_PROTOCOL";
const SAMPLE_RATIO: &str = "MESH_PROXY_TRACE_SAMPLE_RATIO";

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
            Some(c) => (c.to_string(), false),
            None => {
                let addr = SocketAddr::from((o.control_plane, otlp::PORT));
                otlp::serve(otlp::bind(addr).await?, store.clone());
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
