//! Rows: the JSON lines `bench all` prints, the fields every proxied row shares, and the
//! median rows of repeated rounds.

use std::{collections::BTreeMap, io::Write as _, path::Path};

use serde_json::{Value, json};

use crate::{
    counters::Counters,
    pair::Pair,
    path::{ProxyUse, Via},
    tools::Saturation,
};

/// One scenario's load-generator result.
#[derive(Debug)]
pub struct Measured {
    pub rps: f64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub requests: u64,
    pub errors: u64,
    pub extra: Vec<(&'static str, Value)>,
}

impl Measured {
    /// What a closed-loop run (`wrk`, `h2load`) measured, with `extra` fields for its row.
    pub fn saturation(s: &Saturation, extra: Vec<(&'static str, Value)>) -> Self {
        Self {
            rps: s.rps,
            p50: s.latency.p50,
            p99: s.latency.p99,
            p999: s.latency.p999,
            max: s.latency.max,
            requests: s.requests,
            errors: s.errors,
            extra,
        }
    }

    /// The figures every row reports, in order: `rps` (to a tenth), the latency percentiles
    /// and maximum (µs), `requests` and `errors`.
    pub fn figures(&self) -> [(&'static str, Value); 7] {
        [
            ("rps", json!(round(self.rps, 1))),
            ("p50_us", json!(self.p50)),
            ("p99_us", json!(self.p99)),
            ("p999_us", json!(self.p999)),
            ("max_us", json!(self.max)),
            ("requests", json!(self.requests)),
            ("errors", json!(self.errors)),
        ]
    }
}

/// An ordered JSON object: `serde_json::Map` would sort the keys, and `scenario` reads best
/// first.
pub fn emit(fields: &[(&str, Value)]) -> anyhow::Result<()> {
    let mut line = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&serde_json::to_string(k)?);
        line.push(':');
        line.push_str(&serde_json::to_string(v)?);
    }
    line.push('}');
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The fields of a proxied or meshed row: the proxies' cost and the comparison with direct.
pub fn proxied_fields(
    fields: &mut Vec<(&str, Value)>,
    path: Via,
    m: &Measured,
    direct: Option<&Measured>,
    plain_mesh: Option<&Measured>,
    used: &[ProxyUse],
) {
    // With two proxies: the larger peak (each is a separate sidecar), the summed CPU.
    let rss = used.iter().map(|u| u.rss_kb).max().unwrap_or(0);
    let cpu: f64 = used.iter().map(|u| u.cpu_s).sum();
    fields.push(("proxy_rss_kb", json!(rss)));
    fields.push(("proxy_cpu_s", json!(round(cpu, 2))));
    if m.requests > 0 {
        fields.push((
            "proxy_cpu_us_per_req",
            json!(round(cpu * 1e6 / m.requests as f64, 2)),
        ));
    }
    if let Some(d) = direct {
        fields.push(("ratio_rps", json!(round(ratio(m.rps, d.rps), 3))));
        fields.push(("added_p50_us", json!(m.p50 as i64 - d.p50 as i64)));
        fields.push(("added_p99_us", json!(m.p99 as i64 - d.p99 as i64)));
    }
    if let Some(b) = plain_mesh {
        fields.push(("ratio_rps_vs_mesh", json!(round(ratio(m.rps, b.rps), 3))));
        fields.push(("added_p50_us_vs_mesh", json!(m.p50 as i64 - b.p50 as i64)));
        fields.push(("added_p99_us_vs_mesh", json!(m.p99 as i64 - b.p99 as i64)));
    }
    let counters: Option<Vec<&Counters>> = used.iter().map(|u| u.counters.as_ref()).collect();
    if let Some(cs) = &counters {
        let mut failed: BTreeMap<String, u64> = BTreeMap::new();
        for c in cs {
            for (k, v) in &c.failures {
                *failed.entry(k.clone()).or_default() += v;
            }
        }
        fields.push(("proxy_failed_responses", json!(failed)));
        fields.push((
            "proxy_tcp_connects",
            json!(cs.iter().map(|c| c.tcp_connects).sum::<u64>()),
        ));
    }
    match path {
        Via::Proxy | Via::Direct => fields.push(("listener", json!("inbound"))),
        Via::Pair(kind) => {
            // Evidence of what the proxies did: HTTP requests seen (none for `pair_tcp`, whose
            // proxies only copy bytes; every request, twice, for `pair_http`).
            let http: Option<u64> = counters
                .as_ref()
                .map(|cs| cs.iter().map(|c| c.inbound_requests).sum());
            fields.push(("proxy_http_requests", json!(http)));
            let as_meant = match kind {
                Pair::Tcp => http == Some(0),
                Pair::Http => http.is_some_and(|n| n > 0),
            };
            if http.is_some() && !as_meant {
                eprintln!(
                    "bench: warning: {}: the proxies saw {http:?} HTTP requests",
                    kind.path()
                );
            }
            let mut proxies = serde_json::Map::new();
            for u in used {
                proxies.insert(
                    u.role.to_string(),
                    json!({"rss_kb": u.rss_kb, "cpu_s": round(u.cpu_s, 2)}),
                );
            }
            fields.push(("proxies", Value::Object(proxies)));
            fields.push(("listener", json!(kind.describe())));
        }
        Via::Mesh | Via::MeshPolicy(_) => {
            // Every server proxy the requests reached (two for the weighted split).
            let servers: Option<Vec<&Counters>> = used
                .iter()
                .filter(|u| !is_client(u.role))
                .map(|u| u.counters.as_ref())
                .collect();
            let merged = servers.map(|cs| {
                let mut all = Counters::default();
                for c in cs {
                    all.inbound_requests += c.inbound_requests;
                    all.inbound_tls_requests += c.inbound_tls_requests;
                    for (k, v) in &c.inbound_client_ids {
                        *all.inbound_client_ids.entry(k.clone()).or_default() += v;
                    }
                }
                all
            });
            let server_counters = merged.as_ref();
            fields.push((
                "mtls_fraction",
                json!(server_counters.and_then(Counters::mtls_fraction)),
            ));
            fields.push((
                "mtls_client_ids",
                json!(server_counters.map(|c| &c.inbound_client_ids)),
            ));
            if server_counters.and_then(Counters::mtls_fraction) != Some(1.0) {
                eprintln!("bench: warning: not all of the mesh traffic went over mTLS");
            }
            let mut proxies = serde_json::Map::new();
            for u in used {
                let mut o = serde_json::Map::new();
                o.insert("rss_kb".into(), json!(u.rss_kb));
                o.insert("cpu_s".into(), json!(round(u.cpu_s, 2)));
                if let Some(c) = &u.counters {
                    o.insert("failed_responses".into(), json!(c.failures));
                    // Connections the proxy opened: to the server proxy (client), to the
                    // upstream server (server).
                    o.insert("tcp_connects".into(), json!(c.tcp_connects));
                    match is_client(u.role) {
                        true => {
                            o.insert("outbound_requests".into(), json!(c.outbound_requests));
                            o.insert("mtls_server_ids".into(), json!(c.outbound_server_ids));
                        }
                        _ => {
                            o.insert("inbound_requests".into(), json!(c.inbound_requests));
                            o.insert("mtls_fraction".into(), json!(c.mtls_fraction()));
                        }
                    }
                }
                o.insert("listener".into(), json!(listener(u.role)));
                proxies.insert(u.role.to_string(), Value::Object(o));
            }
            fields.push(("proxies", Value::Object(proxies)));
            fields.push((
                "listener",
                json!("outbound (HTTP proxy) -> mTLS, HTTP/2 -> inbound"),
            ));
        }
    }
}

pub fn listener(role: &str) -> &'static str {
    match role {
        "client" => "outbound (HTTP proxy, absolute-form / :authority)",
        "policy-client" => {
            "outbound (HTTP proxy, :authority; destination + OutboundPolicies/Watch)"
        }
        "server" => "inbound (mTLS, MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)",
        r if r.starts_with("policy-server") => {
            "inbound (mTLS, InboundServerPolicies/WatchPort, MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)"
        }
        _ => "inbound (MESH_PROXY_INBOUND_FORWARD_ADDR -> upstream server)",
    }
}

/// The mesh's client side (`client`, `policy-client`); the others are server proxies.
pub fn is_client(role: &str) -> bool {
    role.ends_with("client")
}

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// One round of one path, for the medians.
#[derive(Clone, Debug)]
pub struct RoundOf {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
    pub cpu_us_per_req: Option<f64>,
    /// Against direct, and (policy cases) against the plain mesh, of the same round.
    pub ratio: Option<f64>,
    pub ratio_vs_mesh: Option<f64>,
    /// Policy cases: whether the check passed.
    pub applied: Option<bool>,
    pub disturbed: bool,
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// The `median` row of a path over its rounds. The ratios are medians of each round's own
/// ratio (each against the baselines measured just before it), not ratios of medians.
pub fn median_row(name: &str, rs: &[RoundOf]) -> Vec<(&'static str, Value)> {
    let med = |f: fn(&RoundOf) -> Option<f64>, places: i32| {
        json!(median(rs.iter().filter_map(f).collect()).map(|x| round(x, places)))
    };
    let mut row = vec![
        ("scenario", json!(name)),
        ("round", json!("median")),
        ("rounds", json!(rs.len())),
        ("rps", med(|r| Some(r.rps), 1)),
        (
            "rps_all",
            json!(rs.iter().map(|r| round(r.rps, 1)).collect::<Vec<_>>()),
        ),
        ("p50_us", med(|r| Some(r.p50), 0)),
        ("p99_us", med(|r| Some(r.p99), 0)),
        ("errors", json!(rs.iter().map(|r| r.errors).sum::<u64>())),
    ];
    if rs.iter().any(|r| r.cpu_us_per_req.is_some()) {
        row.push(("proxy_cpu_us_per_req", med(|r| r.cpu_us_per_req, 2)));
    }
    if rs.iter().any(|r| r.ratio.is_some()) {
        row.push(("ratio_rps", med(|r| r.ratio, 3)));
        row.push((
            "ratio_rps_all",
            json!(
                rs.iter()
                    .filter_map(|r| r.ratio.map(|x| round(x, 3)))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    if rs.iter().any(|r| r.ratio_vs_mesh.is_some()) {
        row.push(("ratio_rps_vs_mesh", med(|r| r.ratio_vs_mesh, 3)));
        row.push((
            "ratio_rps_vs_mesh_all",
            json!(
                rs.iter()
                    .filter_map(|r| r.ratio_vs_mesh.map(|x| round(x, 3)))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    if rs.iter().any(|r| r.applied.is_some()) {
        row.push((
            "policy_applied",
            json!(rs.iter().all(|r| r.applied == Some(true))),
        ));
    }
    row.push((
        "disturbed_rounds",
        json!(rs.iter().filter(|r| r.disturbed).count()),
    ));
    row.push(("loadavg_1m", json!(loadavg())));
    row
}

pub fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The 1-minute load average: other work on the machine skews every number.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak RSS per proxy role over the run, and whether the kernel lets `bench` reset a process's
/// peak before each scenario (`/proc/<pid>/clear_refs`).
#[derive(Debug)]
pub struct Peaks {
    pub by_role: BTreeMap<&'static str, u64>,
    pub resettable: bool,
}

impl Default for Peaks {
    fn default() -> Self {
        Self {
            by_role: BTreeMap::new(),
            resettable: true,
        }
    }
}

impl Peaks {
    /// Records `pid`'s peak so far under `role`, then resets it; returns the peak.
    pub fn start(&mut self, role: &'static str, pid: u32) -> anyhow::Result<u64> {
        let hwm = crate::procfs::status_number(pid, "VmHWM")?;
        self.by_role.insert(role, hwm);
        self.resettable &= crate::procfs::reset_peak_rss(pid);
        Ok(hwm)
    }

    /// The largest peak seen for `role`, counting `end_hwm`.
    pub fn of(&self, role: &str, end_hwm: u64) -> u64 {
        self.by_role.get(role).copied().unwrap_or(0).max(end_hwm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
