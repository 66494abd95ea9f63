//! The tables `mesh stat` and `mesh up` print: HTTP per workload and route, then TCP and the
//! sidecar per workload, each line at most 79 columns so an 80-column terminal never wraps.

use crate::schema::{State, Tcp, Traffic, Workload};
use std::fmt::Write as _;

/// The widest line.
pub const WIDTH: usize = 79;

/// Both tables and the list of workloads out of discovery. `namespace` shortens the routes'
/// authorities (`backend.demo.svc.cluster.local:8080` is `backend:8080` in mesh `demo`).
pub fn render(workloads: &[Workload], namespace: Option<&str>) -> String {
    let mut out = String::new();
    http_table(&mut out, workloads, namespace);
    out.push('\n');
    tcp_table(&mut out, workloads);
    let aside: Vec<String> = workloads
        .iter()
        .filter(|w| matches!(w.state, Some(State::Unready)))
        .map(|w| match &w.error {
            Some(e) => format!("{} ({e})", w.name),
            None => w.name.clone(),
        })
        .collect();
    if !aside.is_empty() {
        line(&mut out, &format!("Not in discovery: {}", aside.join("; ")));
    }
    out
}

fn http_table(out: &mut String, workloads: &[Workload], namespace: Option<&str>) {
    line(
        out,
        &format!(
            "{:<11} {:<17} {:>6} {:>7} {:>6} {:>6} {:>4} {:>4} {:>4} {:>5}",
            "WORKLOAD", "ROUTE", "RPS", "SUCCESS", "P50", "P99", "MTLS", "DENY", "5XX", "RETRY"
        ),
    );
    for w in workloads {
        let name = fit(&w.name, 11);
        if let Some(text) = trouble(w) {
            line(out, &format!("{name:<11} {text}"));
            continue;
        }
        // RPS to 5XX: the same columns inbound and on each route.
        let figures = |t: &Traffic| {
            format!(
                "{:>6} {:>7} {:>6} {:>6} {:>4} {:>4} {:>4}",
                rate(t.rps),
                pct1(t.success_rate),
                ms(t.p50_ms),
                ms(t.p99_ms),
                pct0(t.mtls_rate),
                num(t.denied),
                num(t.failed),
            )
        };
        let inbound = figures(&w.inbound);
        line(
            out,
            &format!("{name:<11} {:<17} {inbound} {:>5}", "inbound", "-"),
        );
        for r in &w.outbound {
            let route = format!("-> {}", short_authority(&r.authority, namespace));
            line(
                out,
                &format!(
                    "{:<11} {:<17} {} {:>5}",
                    "",
                    fit(&route, 17),
                    figures(&r.traffic),
                    num(r.retries),
                ),
            );
        }
    }
}

fn tcp_table(out: &mut String, workloads: &[Workload]) {
    line(
        out,
        &format!(
            "{:<11} {:<21} {:<21} {:>7}",
            "", "---- TCP in ----", "---- TCP out ---", "SIDECAR"
        ),
    );
    line(
        out,
        &format!(
            "{:<11} {:>6} {:>5} {:>8} {:>6} {:>5} {:>8} {:>7}",
            "WORKLOAD", "CONN/s", "OPEN", "B/s", "CONN/s", "OPEN", "B/s", "RSS"
        ),
    );
    for w in workloads.iter().filter(|w| trouble(w).is_none()) {
        let tcp = |t: &Tcp| {
            format!(
                "{:>6} {:>5} {:>8}",
                rate(t.connections_per_second),
                num(t.open),
                bytes(t.read_bytes_per_second + t.write_bytes_per_second)
            )
        };
        line(
            out,
            &format!(
                "{:<11} {} {} {:>7}",
                fit(&w.name, 11),
                tcp(&w.tcp.inbound),
                tcp(&w.tcp.outbound),
                w.sidecar
                    .rss_bytes
                    .map_or("-".into(), |b| format!("{:.1}M", b as f64 / 1e6)),
            ),
        );
    }
}

/// What to show instead of numbers: a failed or unreachable workload.
fn trouble(w: &Workload) -> Option<String> {
    let what = match w.state {
        Some(State::Failed) => "FAILED",
        Some(State::Unreachable) => "UNREACHABLE",
        _ => return None,
    };
    Some(match &w.error {
        Some(e) => format!("{what}: {e}"),
        None => what.to_string(),
    })
}

/// Appends `text`, cut to [`WIDTH`] columns, and a newline.
fn line(out: &mut String, text: &str) {
    let _ = writeln!(out, "{}", fit(text.trim_end(), WIDTH));
}

/// `s` in at most `width` characters, cut with `…`.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An authority without the mesh's namespace and cluster suffix.
pub fn short_authority(authority: &str, namespace: Option<&str>) -> String {
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
    let host = match namespace {
        Some(ns) => host
            .strip_suffix(&format!(".{ns}.svc.cluster.local"))
            .map(str::to_string),
        None => None,
    }
    .or_else(|| host.strip_suffix(".svc.cluster.local").map(str::to_string))
    .unwrap_or_else(|| host.to_string());
    if port.is_empty() {
        host
    } else {
        format!("{host}:{port}")
    }
}

fn rate(v: f64) -> String {
    if v >= 9999.5 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 999.95 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A count in at most four characters.
fn num(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else if n < 999_500 {
        format!("{:.0}k", n as f64 / 1e3)
    } else {
        format!("{:.1}M", n as f64 / 1e6)
    }
}

fn pct1(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn pct0(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.0}%", r * 100.0))
}

/// Milliseconds in at most six characters.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.2}ms"),
        Some(ms) if ms < 100.0 => format!("{ms:.1}ms"),
        Some(ms) if ms < 1000.0 => format!("{ms:.0}ms"),
        Some(ms) if ms < 10_000.0 => format!("{:.2}s", ms / 1000.0),
        Some(ms) => format!("{:.0}s", ms / 1000.0),
    }
}

fn bytes(v: f64) -> String {
    if v < 999.5 {
        format!("{v:.0}")
    } else if v < 999_950.0 {
        format!("{:.1}K", v / 1e3)
    } else if v < 999_950_000.0 {
        format!("{:.1}M", v / 1e6)
    } else {
        format!("{:.1}G", v / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Route, Sidecar, TcpTraffic, Traffic};

    fn busy() -> Traffic {
        Traffic {
            requests: 1_000_000,
            rps: 12_345.6,
            success_rate: Some(0.996),
            denied: 123_456,
            failed: 99_999,
            p50_ms: Some(12_345.0),
            p99_ms: Some(99_999.0),
            mtls_rate: Some(1.0),
        }
    }

    fn workload(name: &str, state: State) -> Workload {
        Workload {
            name: name.into(),
            service: None,
            identity: None,
            ingress: false,
            state: Some(state),
            restarts: 0,
            error: Some("its app exited (exit status: 3): cannot read /etc/very/long/path/to/a/config/file.conf".into()),
            inbound: busy(),
            outbound: vec![Route {
                authority: "a-service-with-a-very-long-name.other-namespace.svc.cluster.local:8080".into(),
                traffic: busy(),
                retries: 12345,
            }],
            tcp: TcpTraffic {
                inbound: Tcp {
                    connections_per_second: 1234.0,
                    open: 99_999,
                    read_bytes_per_second: 3e9,
                    ..Tcp::default()
                },
                outbound: Tcp::default(),
            },
            sidecar: Sidecar {
                rss_bytes: Some(123_456_789),
                pss_bytes: None,
            },
        }
    }

    #[test]
    fn every_line_fits_80_columns_even_with_large_numbers_and_long_names() {
        let ws = vec![
            workload("a-workload-with-a-long-name", State::Ready),
            workload("broken", State::Failed),
            workload("starting", State::Unready),
        ];
        let text = render(&ws, Some("demo"));
        for l in text.lines() {
            assert!(
                l.chars().count() <= WIDTH,
                "{} columns: {l}",
                l.chars().count()
            );
        }
        assert!(
            text.contains("broken      FAILED: its app exited"),
            "{text}"
        );
        assert!(text.contains("Not in discovery: starting"), "{text}");
        assert!(text.contains("a-workload…"), "{text}");
    }

    #[test]
    fn routes_in_the_mesh_namespace_are_short() {
        assert_eq!(
            short_authority("backend.demo.svc.cluster.local:8080", Some("demo")),
            "backend:8080"
        );
        assert_eq!(
            short_authority("db.shop.svc.cluster.local:5432", Some("demo")),
            "db.shop:5432"
        );
        assert_eq!(
            short_authority("example.com:80", Some("demo")),
            "example.com:80"
        );
    }

    #[test]
    fn numbers_keep_their_width() {
        assert_eq!(ms(Some(0.4321)), "0.43ms");
        assert_eq!(ms(Some(42.31)), "42.3ms");
        assert_eq!(ms(Some(423.1)), "423ms");
        assert_eq!(ms(Some(4231.0)), "4.23s");
        assert_eq!(ms(None), "-");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(1234.5), "1234");
        assert_eq!(rate(123_456.0), "123k");
        assert_eq!(num(9999), "9999");
        assert_eq!(num(123_456), "123k");
        assert_eq!(num(1_234_567), "1.2M");
        assert_eq!(bytes(512.0), "512");
        assert_eq!(bytes(2048.0), "2.0K");
        assert_eq!(bytes(3.5e6), "3.5M");
    }
}
