//! The dashboard: a web page and a JSON API served by `mesh up` (and `mesh dashboard` for a
//! running mesh), with the service graph, golden metrics over ~15 minutes, the live request
//! stream and traces.
//!
//! - `model.rs`: the graph and the history ring, from the sidecars' metrics (fed once a
//!   second by whoever scrapes them: `mesh up`'s loop, or [`watch`]).
//! - `traces.rs`: the bounded trace store; `otlp.rs`: the OTLP/gRPC receiver filling it.
//! - `http.rs`: the HTTP server, the API, live events (SSE) and the embedded page (`assets/`).

pub mod http;
pub mod model;
pub mod otlp;
pub mod traces;

use crate::metrics::Scrape;
use crate::stats::{Info, Rolling};
use bytes::Bytes;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::broadcast;

/// Where the dashboard's traces come from.
#[derive(Clone, Debug)]
pub enum Traces {
    /// This process's receiver (`mesh up`).
    Local(Arc<Mutex<traces::Store>>),
    /// Another dashboard's API (`mesh dashboard` asks `mesh up`'s).
    Remote(SocketAddr),
    /// None (proxies given by address).
    None,
}

#[derive(Debug, Default)]
struct Model {
    infos: Vec<Info>,
    rolling: Rolling,
    history: model::History,
    graph: model::Graph,
    remote_counts: Option<serde_json::Value>,
}

/// The dashboard's state, shared by the feeder and the HTTP server.
#[derive(Debug)]
pub struct Dash {
    mesh: Option<String>,
    model: Mutex<Model>,
    pub traces: Traces,
    /// Where the sidecars export spans when it is not here (`--trace-collector`).
    pub collector: Option<String>,
    /// Sidecars' admin addresses by workload, for the tap stream.
    proxies: Mutex<Vec<(String, SocketAddr)>>,
    events: broadcast::Sender<Bytes>,
}

impl Dash {
    pub fn new(mesh: Option<String>, traces: Traces, collector: Option<String>) -> Arc<Self> {
        let (events, _) = broadcast::channel(8);
        Arc::new(Dash {
            mesh,
            model: Mutex::new(Model::default()),
            traces,
            collector,
            proxies: Mutex::new(Vec::new()),
            events,
        })
    }

    /// One scrape of every sidecar (`infos[i]`'s is `scrapes[i]`): updates the graph and the
    /// history, and pushes a `tick` event to every page.
    pub fn feed(&self, infos: Vec<Info>, proxies: Vec<SocketAddr>, scrapes: Vec<Option<Scrape>>) {
        let now = std::time::Instant::now();
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Ok(mut p) = self.proxies.lock() {
            *p = infos.iter().map(|i| i.name.clone()).zip(proxies).collect();
        }
        let Ok(mut m) = self.model.lock() else {
            return;
        };
        m.rolling.push(now, scrapes);
        m.infos = infos;
        let graph = model::graph(self.mesh.as_deref(), &m.infos, &m.rolling);
        let sample = model::sample(unix_ms, &m.infos, &m.rolling);
        m.history.push(&sample);
        m.graph = graph;
        let tick = serde_json::json!({
            "graph": &m.graph,
            "sample": sample,
            "status": self.status_locked(&m),
        });
        drop(m);
        // Nobody watching is fine.
        let _ = self
            .events
            .send(Bytes::from(format!("event: tick\ndata: {tick}\n\n")));
    }

    pub fn graph(&self) -> serde_json::Value {
        match self.model.lock() {
            Ok(m) => serde_json::to_value(&m.graph).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    pub fn history(&self) -> serde_json::Value {
        match self.model.lock() {
            Ok(m) => serde_json::to_value(m.history.view()).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    pub fn status(&self) -> serde_json::Value {
        match self.model.lock() {
            Ok(m) => self.status_locked(&m),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// `GET /api/status`: the mesh, this process's memory, the traces held.
    fn status_locked(&self, m: &Model) -> serde_json::Value {
        let traces = match &self.traces {
            Traces::Local(store) => store
                .lock()
                .ok()
                .and_then(|s| serde_json::to_value(s.counts()).ok()),
            Traces::Remote(_) => m.remote_counts.clone(),
            Traces::None => None,
        };
        serde_json::json!({
            "mesh": self.mesh,
            "rss_bytes": self_rss_bytes(),
            "page_bytes": http::PAGE_BYTES,
            "traces": traces,
            "trace_collector": self.collector,
        })
    }

    pub fn proxies(&self) -> Vec<(String, SocketAddr)> {
        self.proxies.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.events.subscribe()
    }

    fn set_remote_counts(&self, v: Option<serde_json::Value>) {
        if let Ok(mut m) = self.model.lock() {
            m.remote_counts = v;
        }
    }
}

/// This process's resident memory.
pub fn self_rss_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// `mesh dashboard [NAME]`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mesh (see `mesh list`). Default: the only one running.
    name: Option<String>,
    /// Where to serve the page: default 127.0.0.1:50750, or the next free port.
    #[arg(long, value_name = "ADDR")]
    addr: Option<SocketAddr>,
}

/// Serves the dashboard for a running mesh from this process: its graph, charts and tap come
/// from the sidecars directly, its traces from the `mesh up` process's dashboard.
pub async fn dashboard(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let target = crate::viz::Target::named(args.name.clone());
    let (proxies, state) = target.resolve()?;
    let Some(state) = state else {
        anyhow::bail!("no mesh state");
    };
    let traces = match state.dashboard {
        Some(a) => Traces::Remote(a),
        None => Traces::None,
    };
    let dash = Dash::new(Some(state.name.clone()), traces, None);
    let listener = http::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    http::serve(listener, dash.clone());
    crate::out::outln!("Dashboard of mesh {}: http://{addr}", state.name)?;
    if let Some(own) = state.dashboard {
        crate::out::outln!("(`mesh up` serves one too: http://{own})")?;
    }
    watch(dash, proxies, state.pid).await;
    crate::out::outln!("mesh {} stopped", state.name)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Scrapes the proxies once a second into `dash` until Ctrl-C or until `pid` (the mesh's
/// `mesh up`) is gone.
async fn watch(dash: Arc<Dash>, proxies: Vec<crate::viz::Proxy>, pid: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let infos: Vec<Info> = proxies.iter().map(|p| p.info.clone()).collect();
    let admins: Vec<SocketAddr> = proxies.iter().map(|p| p.admin).collect();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return,
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        let scrapes = crate::viz::scrape_all(&proxies)
            .await
            .into_iter()
            .map(Result::ok)
            .collect();
        if let Traces::Remote(remote) = &dash.traces {
            let counts = match crate::metrics::get(*remote, "/api/status").await {
                Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .map(|v| v["traces"].clone()),
                _ => None,
            };
            dash.set_remote_counts(counts);
        }
        dash.feed(infos.clone(), admins.clone(), scrapes);
    }
}
