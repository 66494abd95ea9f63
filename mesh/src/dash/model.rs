//! What the dashboard knows of the mesh's traffic, from the sidecars' metrics: the service
//! graph over the last 10 s (`GET /api/graph`) and ~15 minutes of golden metrics per workload
//! and route, one sample a second (`GET /api/history`), kept in a ring.

use crate::metrics::Snapshot;
use crate::schema::{State, Traffic};
use crate::stats::{self, Info, Rolling};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Samples kept: 15 minutes at one a second.
pub const HISTORY: usize = 900;
/// Series (a workload's inbound traffic, or one of its routes) kept at most.
const MAX_SERIES: usize = 256;
/// The node for clients outside the mesh (the load generator, curl).
pub const OUTSIDE: &str = "outside";

#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    pub mesh: Option<String>,
    pub window_seconds: f64,
    pub nodes: Vec<Node>,
    /// The services and their workloads (a node may also be grouped by its service).
    pub services: Vec<Service>,
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub name: String,
    /// `workload`, or `external` (clients outside the mesh).
    pub kind: &'static str,
    pub service: Option<String>,
    pub identity: Option<String>,
    pub ingress: bool,
    pub state: Option<State>,
    /// What its sidecar received for its app.
    pub inbound: Traffic,
    pub sidecar_rss_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub workloads: Vec<String>,
}

/// Calls from one workload to another (or from outside), over the window.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub src: String,
    /// The workload that answered (by its mTLS identity), else the authority.
    pub dst: String,
    /// The authority the caller used (`host:port`); `null` for calls from outside.
    pub authority: Option<String>,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Builds the graph from the rolling window of scrapes (sidecar `i` is `infos[i]`).
pub fn graph(mesh: Option<&str>, infos: &[Info], rolling: &Rolling) -> Graph {
    let mut g = Graph {
        mesh: mesh.map(str::to_string),
        ..Graph::default()
    };
    let by_identity = |id: &str| {
        infos
            .iter()
            .find(|i| i.identity.as_deref() == Some(id))
            .map(|i| i.name.clone())
    };
    let mut outside: Option<Traffic> = None;
    for (i, info) in infos.iter().enumerate() {
        let span = rolling.span(i);
        let w = span.map(|(a, b, secs)| stats::workload(info.clone(), a, b, secs));
        g.window_seconds = g.window_seconds.max(span.map_or(0.0, |s| s.2));
        g.nodes.push(Node {
            name: info.name.clone(),
            kind: "workload",
            service: info.service.clone(),
            identity: info.identity.clone(),
            ingress: info.ingress,
            state: info.state,
            inbound: w.as_ref().map(|w| w.inbound.clone()).unwrap_or_default(),
            sidecar_rss_bytes: w.as_ref().and_then(|w| w.sidecar.rss_bytes),
        });
        if let Some(svc) = &info.service {
            match g.services.iter_mut().find(|s| &s.name == svc) {
                Some(s) => s.workloads.push(info.name.clone()),
                None => g.services.push(Service {
                    name: svc.clone(),
                    workloads: vec![info.name.clone()],
                }),
            }
        }
        let Some((before, after, secs)) = span else {
            continue;
        };
        // Outbound: one edge per (authority, answering identity).
        let totals = after.by_authority("outbound");
        let before_totals = before.by_authority("outbound");
        for (key, now) in after
            .routes
            .iter()
            .filter(|(k, _)| k.direction == "outbound")
        {
            let then = before.routes.get(key).cloned().unwrap_or_default();
            let mut t = stats::traffic(&then, now, secs);
            if t.requests == 0 {
                continue;
            }
            if t.p99_ms.is_none()
                && let Some(total) = totals.get(&key.authority)
            {
                let all = stats::traffic(
                    before_totals
                        .get(&key.authority)
                        .unwrap_or(&Snapshot::default()),
                    total,
                    secs,
                );
                (t.p50_ms, t.p99_ms) = (all.p50_ms, all.p99_ms);
            }
            let host = key.authority.split(':').next().unwrap_or_default();
            let dst = key
                .peer_id
                .as_deref()
                .and_then(by_identity)
                .or_else(|| {
                    let mut of_service =
                        infos.iter().filter(|w| w.service.as_deref() == Some(host));
                    match (of_service.next(), of_service.next()) {
                        (Some(only), None) => Some(only.name.clone()),
                        _ => None,
                    }
                })
                .unwrap_or_else(|| key.authority.clone());
            g.edges.push(Edge {
                src: info.name.clone(),
                dst,
                authority: Some(key.authority.clone()),
                traffic: t,
            });
        }
        // Inbound from outside the mesh (no client identity) into an ingress workload.
        if info.ingress {
            let mut then = Snapshot::default();
            let mut now = Snapshot::default();
            for (key, s) in after
                .routes
                .iter()
                .filter(|(k, _)| k.direction == "inbound" && k.peer_id.is_none())
            {
                now.add(s);
                if let Some(b) = before.routes.get(key) {
                    then.add(b);
                }
            }
            let t = stats::traffic(&then, &now, secs);
            if t.requests > 0 {
                g.edges.push(Edge {
                    src: OUTSIDE.to_string(),
                    dst: info.name.clone(),
                    authority: None,
                    traffic: t.clone(),
                });
                outside.get_or_insert_with(Traffic::default).requests += t.requests;
            }
        }
    }
    if outside.is_some() {
        g.nodes.insert(
            0,
            Node {
                name: OUTSIDE.to_string(),
                kind: "external",
                service: None,
                identity: None,
                ingress: false,
                state: None,
                inbound: Traffic::default(),
                sidecar_rss_bytes: None,
            },
        );
    }
    g
}

/// The four golden numbers of one series at one moment: rps, success rate, p50, p99.
pub type Point = [Option<f64>; 4];

fn point(t: &Traffic) -> Point {
    [Some(t.rps), t.success_rate, t.p50_ms, t.p99_ms]
}

/// One series: a workload's inbound traffic (`route: null`) or one of its outbound routes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SeriesKey {
    pub workload: String,
    pub route: Option<String>,
}

/// The values of every series at one moment (`sample` in the live events).
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t: u64,
    pub series: Vec<(SeriesKey, Point)>,
}

/// The current moment's values, from the graph (its window is the last 10 s).
pub fn sample(t_unix_ms: u64, infos: &[Info], rolling: &Rolling) -> Sample {
    let mut series = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let Some((a, b, secs)) = rolling.span(i) else {
            continue;
        };
        let w = stats::workload(info.clone(), a, b, secs);
        series.push((
            SeriesKey {
                workload: w.name.clone(),
                route: None,
            },
            point(&w.inbound),
        ));
        for r in &w.outbound {
            series.push((
                SeriesKey {
                    workload: w.name.clone(),
                    route: Some(r.authority.clone()),
                },
                point(&r.traffic),
            ));
        }
    }
    Sample {
        t: t_unix_ms,
        series,
    }
}

/// The last [`HISTORY`] samples, by series.
#[derive(Debug, Default)]
pub struct History {
    times: VecDeque<u64>,
    series: BTreeMap<SeriesKey, VecDeque<Point>>,
}

#[derive(Debug, Serialize)]
pub struct HistoryView<'a> {
    pub interval_ms: u64,
    /// Unix time (ms) of each sample.
    pub t: &'a VecDeque<u64>,
    pub series: Vec<SeriesView<'a>>,
}

#[derive(Debug, Serialize)]
pub struct SeriesView<'a> {
    #[serde(flatten)]
    pub key: &'a SeriesKey,
    /// One `[rps, success_rate, p50_ms, p99_ms]` per sample (`null` where unknown).
    pub points: &'a VecDeque<Point>,
}

impl History {
    pub fn push(&mut self, s: &Sample) {
        if self.times.len() >= HISTORY {
            self.times.pop_front();
            for v in self.series.values_mut() {
                v.pop_front();
            }
            self.series.retain(|_, v| v.iter().any(|p| p[0].is_some()));
        }
        self.times.push_back(s.t);
        let n = self.times.len();
        for (k, p) in &s.series {
            if !self.series.contains_key(k) && self.series.len() >= MAX_SERIES {
                continue;
            }
            let v = self.series.entry(k.clone()).or_default();
            v.resize(n - 1, [None; 4]);
            v.push_back(*p);
        }
        for v in self.series.values_mut() {
            v.resize(n, [None; 4]);
        }
    }

    pub fn view(&self) -> HistoryView<'_> {
        HistoryView {
            interval_ms: 1000,
            t: &self.times,
            series: self
                .series
                .iter()
                .map(|(key, points)| SeriesView { key, points })
                .collect(),
        }
    }
}

/// A latency quantile from a snapshot (used by tests).
#[cfg(test)]
fn p(q: f64, s: &Snapshot) -> Option<f64> {
    crate::metrics::histogram_quantile(q, &s.buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Scrape;
    use std::time::{Duration, Instant};

    fn scrape(n: u64) -> Scrape {
        Scrape::parse(&format!(
            r#"response_total{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",tls="true",server_id="backend-v1.id",status_code="200"}} {n}
response_total{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",tls="true",server_id="backend-v2.id",status_code="200"}} {}
response_latency_ms_bucket{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",tls="true",server_id="backend-v1.id",status_code="200",le="5"}} {n}
response_latency_ms_bucket{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",tls="true",server_id="backend-v1.id",status_code="200",le="+Inf"}} {n}
response_total{{direction="inbound",authority="frontend.demo.svc.cluster.local:8080",tls="no_identity",status_code="200"}} {n}
"#,
            n / 10
        ))
    }

    fn info(name: &str, service: &str, ingress: bool) -> Info {
        Info {
            name: name.into(),
            service: Some(service.into()),
            identity: Some(format!("{name}.id")),
            ingress,
            ..Info::default()
        }
    }

    #[test]
    fn the_graph_has_an_edge_per_answering_workload_and_one_from_outside() {
        let infos = [
            info("frontend", "frontend.demo.svc.cluster.local", true),
            info("backend-v1", "backend.demo.svc.cluster.local", false),
            info("backend-v2", "backend.demo.svc.cluster.local", false),
        ];
        let mut rolling = Rolling::default();
        let t0 = Instant::now();
        rolling.push(t0, vec![Some(scrape(100)), None, None]);
        rolling.push(
            t0 + Duration::from_secs(2),
            vec![Some(scrape(300)), None, None],
        );
        let g = graph(Some("demo"), &infos, &rolling);
        assert_eq!(g.nodes[0].name, OUTSIDE);
        assert_eq!(g.services.len(), 2);
        assert_eq!(g.services[1].workloads, ["backend-v1", "backend-v2"]);
        let e = |dst: &str| g.edges.iter().find(|e| e.dst == dst).unwrap();
        assert_eq!(e("backend-v1").traffic.rps, 100.0);
        assert_eq!(e("backend-v1").traffic.mtls_rate, Some(1.0));
        assert_eq!(e("backend-v2").traffic.rps, 10.0);
        assert!(
            e("backend-v2").traffic.p99_ms.is_some(),
            "from the authority's total"
        );
        assert_eq!(e("frontend").src, OUTSIDE);
        assert_eq!(e("frontend").traffic.mtls_rate, Some(0.0));
        assert_eq!(p(0.5, &scrape(10).direction("outbound")), Some(2.5));
    }

    #[test]
    fn history_keeps_fifteen_minutes_of_aligned_series() {
        let mut h = History::default();
        let key = |r: Option<&str>| SeriesKey {
            workload: "w".into(),
            route: r.map(str::to_string),
        };
        for t in 0..1000u64 {
            let mut series = vec![(key(None), [Some(t as f64), None, None, None])];
            if t >= 990 {
                series.push((key(Some("r")), [Some(1.0); 4]));
            }
            h.push(&Sample { t, series });
        }
        let v = h.view();
        assert_eq!(v.t.len(), HISTORY);
        assert_eq!(v.t[0], 100);
        assert!(v.series.iter().all(|s| s.points.len() == HISTORY));
        let r = v.series.iter().find(|s| s.key.route.is_some()).unwrap();
        assert_eq!(r.points[HISTORY - 11][0], None);
        assert_eq!(r.points[HISTORY - 10][0], Some(1.0));
    }
}
