//! `mesh stat`: requests/s, success, denials, failures, retries, latency percentiles and mTLS
//! share per workload and route, and TCP connections and bytes per workload, over a window.

use super::{Target, scrape_all};
use crate::out::{self, outln};
use crate::schema::{self, State};
use crate::{stats, table};
use std::{process::ExitCode, time::Duration};

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    #[command(flatten)]
    target: Target,
    /// The window the rates, shares and percentiles are measured over, in seconds (the
    /// command takes that long).
    #[arg(long, default_value = "10")]
    window: f64,
    /// Print JSON (the schema in mesh/README.md) instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn stat(args: StatArgs) -> anyhow::Result<ExitCode> {
    let (proxies, state) = args.target.resolve()?;
    let window = args.window.clamp(0.1, 600.0);
    let before = scrape_all(&proxies).await;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let after = scrape_all(&proxies).await;
    let secs = started.elapsed().as_secs_f64();
    let mut workloads = Vec::with_capacity(proxies.len());
    for (i, p) in proxies.iter().enumerate() {
        workloads.push(match (&before[i], &after[i]) {
            (Ok(b), Ok(a)) => stats::workload(p.info.clone(), b, a, secs),
            (Err(e), _) | (_, Err(e)) => stats::Info {
                state: Some(State::Unreachable),
                error: Some(e.clone()),
                ..p.info.clone()
            },
        });
    }
    let reachable = workloads
        .iter()
        .all(|w| w.state != Some(State::Unreachable));
    let namespace = state.as_ref().map(|s| s.namespace.as_str());
    if args.json {
        let report = schema::Stat {
            mesh: state.as_ref().map(|s| s.name.clone()),
            window_seconds: secs,
            workloads,
        };
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        if let Some(s) = &state {
            outln!("mesh {}: the last {secs:.0} s", s.name)?;
        }
        out::print(&table::render(&workloads, namespace))?;
    }
    Ok(crate::out::status(reachable))
}
