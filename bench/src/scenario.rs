//! The scenario table: every HTTP scenario `bench all` can run, one entry per (name, path,
//! protocol, load shape), grouped so that the paths of one protocol and load shape run one
//! after another in each round; and how an entry's load is generated.

use std::{path::Path, time::Duration};

use serde_json::json;

use crate::{
    all::AllOpts,
    load::{self, LoadOpts},
    pair::Pair,
    path::{Target, Via},
    policy::Case,
    report::Measured,
    tools,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// The load shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Closed loop (wrk, h2load): as many requests as the path takes.
    Saturation,
    /// Open loop at this many requests per second.
    Rate(u64),
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `<protocol>_<load>_<path>`, or the policy case's own name; what `--only` matches.
    pub name: String,
    pub via: Via,
    pub proto: Proto,
    pub load: Load,
}

/// The entries of one protocol and load shape, in the order each round runs them. The direct
/// baseline comes first whenever another path is there: their ratios are computed against it.
#[derive(Clone, Debug)]
pub struct Group {
    pub proto: Proto,
    pub load: Load,
    pub entries: Vec<Entry>,
}

/// A scenario's name: `http1_rate1000_proxy`, `http2_saturation_mesh`, `mesh_policy_authz`.
pub fn name(proto: Proto, load: Load, via: Via) -> String {
    if let Via::MeshPolicy(case) = via {
        return case.name().to_string();
    }
    let proto = match proto {
        Proto::Http1 => "http1",
        Proto::Http2 => "http2",
    };
    let load = match load {
        Load::Saturation => "saturation".to_string(),
        Load::Rate(r) => format!("rate{r}"),
    };
    format!("{proto}_{load}_{}", via.part())
}

/// Every path of a protocol and load shape, before selection: direct, proxy, mesh, then (HTTP/1.1
/// only) the two pairs, then (HTTP/1.1 saturation only) the policy cases.
fn paths(proto: Proto, load: Load) -> Vec<Via> {
    let mut paths = vec![Via::Direct, Via::Proxy, Via::Mesh];
    if proto == Proto::Http1 {
        paths.extend(Pair::ALL.map(Via::Pair));
        if load == Load::Saturation {
            paths.extend(Case::ALL.map(Via::MeshPolicy));
        }
    }
    paths
}

/// The table `--only` selects from (scenario-name prefixes; empty: everything). A selected
/// proxied or meshed path brings its direct baseline along, and a policy case the plain mesh
/// (its `ratio_rps_vs_mesh` is against it).
pub fn table(rates: &[u64], only: &[String]) -> Vec<Group> {
    let mut shapes = vec![
        (Proto::Http1, Load::Saturation),
        (Proto::Http2, Load::Saturation),
    ];
    for proto in [Proto::Http1, Proto::Http2] {
        shapes.extend(rates.iter().map(|&r| (proto, Load::Rate(r))));
    }
    shapes
        .into_iter()
        .filter_map(|(proto, load)| {
            let chosen: Vec<Via> = paths(proto, load)
                .into_iter()
                .filter(|&v| selected(only, &name(proto, load, v)))
                .collect();
            let mut vias = Vec::new();
            let others = chosen.iter().any(|v| *v != Via::Direct);
            if others || chosen.contains(&Via::Direct) {
                vias.push(Via::Direct);
            }
            vias.extend(
                chosen
                    .iter()
                    .filter(|v| !matches!(v, Via::Direct | Via::MeshPolicy(_))),
            );
            let cases: Vec<Via> = chosen
                .iter()
                .copied()
                .filter(|v| matches!(v, Via::MeshPolicy(_)))
                .collect();
            if !cases.is_empty() && !vias.contains(&Via::Mesh) {
                vias.push(Via::Mesh);
            }
            vias.extend(cases);
            let entries: Vec<Entry> = vias
                .into_iter()
                .map(|via| Entry {
                    name: name(proto, load, via),
                    via,
                    proto,
                    load,
                })
                .collect();
            (!entries.is_empty()).then_some(Group {
                proto,
                load,
                entries,
            })
        })
        .collect()
}

pub fn selected(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|p| name.starts_with(p.as_str()))
}

/// Runs one entry's load against `target`.
pub async fn measure(
    opts: &AllOpts,
    entry: &Entry,
    target: &Target,
    scratch: &Path,
    pid_file: Option<&Path>,
) -> anyhow::Result<Measured> {
    let (url, proxy) = (target.url.as_str(), target.proxy);
    match entry.load {
        Load::Saturation => {
            let (s, tool, conc) = match entry.proto {
                Proto::Http1 => (
                    tools::wrk(
                        None,
                        url,
                        proxy,
                        opts.connections,
                        opts.duration,
                        scratch,
                        pid_file,
                    )
                    .await?,
                    "wrk -t1",
                    opts.connections,
                ),
                Proto::Http2 => (
                    tools::h2load(
                        url,
                        proxy,
                        opts.connections,
                        opts.h2_streams,
                        opts.duration,
                        scratch,
                        pid_file,
                    )
                    .await?,
                    "h2load -t1",
                    opts.connections * opts.h2_streams,
                ),
            };
            Ok(Measured::saturation(
                &s,
                vec![
                    ("load", json!(tool)),
                    ("connections", json!(opts.connections)),
                    ("concurrency", json!(conc)),
                ],
            ))
        }
        Load::Rate(rate) => {
            let r = load::run(&LoadOpts {
                url: url.to_string(),
                rate,
                duration: opts.duration,
                connections: opts.load_connections,
                http2: entry.proto == Proto::Http2,
                proxy,
                timeout: Duration::from_secs(10),
                latencies: None,
            })
            .await?;
            let lat = r.latency.unwrap_or_default();
            let mut extra = vec![
                ("load", json!("bench open loop")),
                ("connections", json!(opts.load_connections)),
                ("target_rps", json!(rate)),
                ("timeouts", json!(r.timeouts)),
                ("dispatch_lag_p99_us", json!(r.dispatch_lag.map(|l| l.p99))),
            ];
            extra.extend(load::Stops::fields(Some(r.stops)));
            if let Some(e) = r.first_error {
                extra.push(("first_error", json!(e)));
            }
            Ok(Measured {
                rps: r.rps,
                p50: lat.p50,
                p99: lat.p99,
                p999: lat.p999,
                max: lat.max,
                requests: r.ok,
                errors: r.errors + r.timeouts,
                extra,
            })
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The scenario names `table` selects at 1,000 and 5,000 req/s for `only`: `names` lists a
    /// row's (the prod table's tests use it too).
    pub fn selected_names<T>(
        table: impl Fn(&[u64], &[String]) -> Vec<T>,
        only: &[&str],
        names: impl Fn(&T) -> Vec<String>,
    ) -> Vec<String> {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        table(&[1000, 5000], &only).iter().flat_map(names).collect()
    }

    fn names(only: &[&str]) -> Vec<String> {
        selected_names(table, only, |g| {
            g.entries.iter().map(|e| e.name.clone()).collect()
        })
    }

    #[test]
    fn scenario_names() {
        let rate = Load::Rate(1000);
        assert_eq!(name(Proto::Http1, rate, Via::Proxy), "http1_rate1000_proxy");
        assert_eq!(name(Proto::Http1, rate, Via::Mesh), "http1_rate1000_mesh");
        assert_eq!(
            name(Proto::Http2, Load::Saturation, Via::Direct),
            "http2_saturation_direct"
        );
    }

    #[test]
    fn table_brings_the_direct_baseline() {
        assert_eq!(
            names(&["http1_saturation_mesh"]),
            ["http1_saturation_direct", "http1_saturation_mesh"]
        );
        assert_eq!(
            names(&["http2_rate1000"]),
            [
                "http2_rate1000_direct",
                "http2_rate1000_proxy",
                "http2_rate1000_mesh"
            ]
        );
        assert_eq!(names(&["http1_rate5000_direct"]), ["http1_rate5000_direct"]);
        assert!(names(&["certify"]).is_empty());
        assert_eq!(table(&[1000, 5000], &[]).len(), 6);
        // HTTP/1.1 scenarios: direct, proxy, mesh and the two pairs; HTTP/2: three paths.
        assert_eq!(names(&[]).len(), 3 * 5 + 3 * 3 + Case::ALL.len());
    }

    #[test]
    fn table_brings_the_pairs_for_http1_only() {
        assert_eq!(
            names(&["http1_saturation_pair"]),
            [
                "http1_saturation_direct",
                "http1_saturation_pair_tcp",
                "http1_saturation_pair_http"
            ]
        );
        assert_eq!(
            names(&["http1_rate1000"]),
            [
                "http1_rate1000_direct",
                "http1_rate1000_proxy",
                "http1_rate1000_mesh",
                "http1_rate1000_pair_tcp",
                "http1_rate1000_pair_http"
            ]
        );
        assert!(!names(&["http2"]).iter().any(|n| n.contains("pair")));
    }

    #[test]
    fn table_brings_both_baselines_for_the_policy_cases() {
        assert_eq!(
            names(&["mesh_policy_route_retry_authz"]),
            [
                "http1_saturation_direct",
                "http1_saturation_mesh",
                "mesh_policy_route_retry_authz"
            ]
        );
        let all = names(&["mesh_policy"]);
        assert_eq!(all.len(), 2 + Case::ALL.len());
        assert_eq!(all[2], "mesh_policy_none");
        // The policy cases are HTTP/1.1 saturation only, and not part of the mesh prefix.
        assert_eq!(
            names(&["http1_saturation_mesh"]),
            ["http1_saturation_direct", "http1_saturation_mesh"]
        );
        assert!(
            !names(&["http2_saturation"])
                .iter()
                .any(|n| n.starts_with("mesh_policy"))
        );
    }
}
