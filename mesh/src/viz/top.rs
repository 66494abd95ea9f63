//! `mesh top`: live requests by path, from every sidecar's `/tap` stream, busiest first.

use super::Target;
use crate::out::{self, outln};
use crate::table::{WIDTH, fit, ms, short_authority};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, net::SocketAddr, process::ExitCode, time::Duration};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Rows shown in the live table.
    #[arg(long, default_value = "20")]
    rows: usize,
    /// Print one JSON summary at the end instead of the live table.
    #[arg(long)]
    json: bool,
}

/// Requests seen through `/tap` for one (workload, direction, method, authority, path).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TopRow {
    pub workload: String,
    pub direction: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub count: u64,
    pub successes: u64,
    pub tls: u64,
    #[serde(skip)]
    latencies_us: Vec<u64>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// One `/tap` event, as the proxy writes it.
#[derive(Debug, Deserialize)]
struct TapEvent {
    direction: String,
    method: String,
    authority: String,
    path: String,
    #[serde(default)]
    tls: bool,
    status: Option<u16>,
    grpc_status: Option<u32>,
    error: Option<String>,
    latency_us: u64,
}

impl TapEvent {
    fn success(&self) -> bool {
        self.error.is_none()
            && self.status.is_some_and(|s| s < 500)
            && self.grpc_status.is_none_or(|g| g == 0)
    }
}

/// Keeps this many latencies per row for the percentiles.
const TOP_SAMPLES: usize = 10_000;

#[derive(Debug, Default)]
struct Top {
    rows: BTreeMap<(String, String, String, String, String), TopRow>,
    lost: u64,
}

impl Top {
    fn add(&mut self, workload: &str, line: &str) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(lost) = v.get("lost").and_then(|l| l.as_u64())
        {
            self.lost += lost;
            return;
        }
        let Ok(ev) = serde_json::from_str::<TapEvent>(line) else {
            return;
        };
        let key = (
            workload.to_string(),
            ev.direction.clone(),
            ev.method.clone(),
            ev.authority.clone(),
            ev.path.clone(),
        );
        let row = self.rows.entry(key).or_insert_with(|| TopRow {
            workload: workload.to_string(),
            direction: ev.direction.clone(),
            method: ev.method.clone(),
            authority: ev.authority.clone(),
            path: ev.path.clone(),
            ..TopRow::default()
        });
        row.count += 1;
        row.successes += u64::from(ev.success());
        row.tls += u64::from(ev.tls);
        if row.latencies_us.len() < TOP_SAMPLES {
            row.latencies_us.push(ev.latency_us);
        }
    }

    /// The rows, busiest first, with their percentiles.
    fn sorted(&self) -> Vec<TopRow> {
        let mut rows: Vec<TopRow> = self
            .rows
            .values()
            .map(|r| {
                let mut r = r.clone();
                let mut l = std::mem::take(&mut r.latencies_us);
                l.sort_unstable();
                r.p50_ms = l.get(l.len() / 2).map(|us| *us as f64 / 1000.0);
                r.max_ms = l.last().map(|us| *us as f64 / 1000.0);
                r
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
        rows
    }
}

fn print_top(
    rows: &[TopRow],
    limit: usize,
    lost: u64,
    namespace: Option<&str>,
) -> std::io::Result<()> {
    let mut text = String::new();
    let mut line = |l: String| {
        text.push_str(&fit(l.trim_end(), WIDTH));
        text.push('\n');
    };
    line(format!(
        "{:<11} {:<17} {:<16} {:>6} {:>6} {:>6} {:>6} {:>4}",
        "WORKLOAD", "ROUTE", "REQUEST", "COUNT", "SUCC", "P50", "MAX", "MTLS"
    ));
    for r in rows.iter().take(limit) {
        let route = if r.direction == "inbound" {
            "inbound".to_string()
        } else {
            format!("-> {}", short_authority(&r.authority, namespace))
        };
        line(format!(
            "{:<11} {:<17} {:<16} {:>6} {:>6} {:>6} {:>6} {:>4}",
            fit(&r.workload, 11),
            fit(&route, 17),
            fit(&format!("{} {}", r.method, r.path), 16),
            r.count,
            format!("{:.0}%", r.successes as f64 * 100.0 / r.count.max(1) as f64),
            ms(r.p50_ms),
            ms(r.max_ms),
            if r.tls == r.count {
                "yes"
            } else if r.tls == 0 {
                "no"
            } else {
                "some"
            },
        ));
    }
    if lost > 0 {
        line(format!(
            "({lost} events lost: the proxies produced them faster than we read)"
        ));
    }
    out::print(&text)
}

/// Reads one proxy's `/tap` stream line by line into `tx`.
pub(crate) async fn tap_stream(
    name: String,
    admin: SocketAddr,
    seconds: u64,
    tx: tokio::sync::mpsc::Sender<(String, String)>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let stream = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .context("connect timed out")??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("/tap?seconds={seconds}"))
        .header(http::header::HOST, admin.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let rsp = sender.send_request(req).await?;
    if !rsp.status().is_success() {
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
    }
    let mut body = rsp.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            if tx.send((name.clone(), line)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

pub async fn top(args: TopArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let (proxies, state) = args.target.resolve()?;
    let namespace = state.as_ref().map(|s| s.namespace.clone());
    let seconds = args.seconds.unwrap_or(3600).clamp(1, 3600);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut tasks = Vec::new();
    for p in &proxies {
        let (name, admin, tx) = (p.name.clone(), p.admin, tx.clone());
        tasks.push(tokio::spawn(async move {
            tap_stream(name.clone(), admin, seconds, tx)
                .await
                .map_err(|e| format!("{name} ({admin}): {}", crate::out::chain(&e)))
        }));
    }
    drop(tx);
    let mut top = Top::default();
    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some((name, line)) => top.add(&name, &line),
                None => break,
            },
            _ = tick.tick(), if !args.json => {
                if std::io::stdout().is_terminal() {
                    out::print("\x1b[2J\x1b[H")?;
                }
                print_top(&top.sorted(), args.rows, top.lost, namespace.as_deref())?;
                out::print("\n")?;
            }
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let mut errors = Vec::new();
    for t in tasks {
        t.abort();
        if let Ok(Err(e)) = t.await {
            errors.push(e);
        }
    }
    let rows = top.sorted();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"rows": rows, "lost": top.lost, "errors": errors})
            )?
        )?;
    } else {
        print_top(&rows, args.rows, top.lost, namespace.as_deref())?;
        for e in &errors {
            crate::out::errln!("mesh top: {e}");
        }
    }
    Ok(crate::out::status(errors.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_groups_tap_events_by_path_busiest_first() {
        let mut top = Top::default();
        let line = |path: &str, status: u16, grpc: Option<u32>, us: u64| {
            let grpc = grpc.map_or(String::new(), |g| format!(",\"grpc_status\":{g}"));
            format!(
                "{{\"direction\":\"inbound\",\"method\":\"GET\",\"authority\":\"a:80\",\"path\":\"{path}\",\"tls\":true,\"status\":{status}{grpc},\"latency_us\":{us}}}"
            )
        };
        for us in [1000, 2000, 3000] {
            top.add("web", &line("/busy", 200, None, us));
        }
        top.add("web", &line("/busy", 503, None, 9000));
        top.add("web", &line("/grpc", 200, Some(14), 500));
        top.add("web", "{\"lost\":7}");
        top.add("web", "not json");
        let rows = top.sorted();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].path, "/busy");
        assert_eq!(rows[0].count, 4);
        assert_eq!(rows[0].successes, 3);
        assert_eq!(rows[0].p50_ms, Some(3.0));
        assert_eq!(rows[0].max_ms, Some(9.0));
        assert_eq!(rows[1].successes, 0, "grpc-status 14 is a failure");
        assert_eq!(top.lost, 7);
    }
}
