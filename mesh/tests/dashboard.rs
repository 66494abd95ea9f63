//! `mesh up`'s dashboard and trace receiver while the demo runs: the JSON API
//! (`dashboard_api_shows_the_demo_s_graph_and_traces`) and the page in a real browser
//! (`dashboard_page_in_headless_chromium`: Playwright, npm `playwright-core`, driving Debian's
//! `chromium`; mesh/tests/browser/dashboard.mjs). The browser test skips without node, chromium
//! or `npm install` in mesh/tests/browser, unless MESH_REQUIRE_TOOLS=1 or MESH_REQUIRE_NETNS=1
//! (CI sets it and installs them: see .ci/run).
//!
//! Traces need the sidecars' spans (linkerd-proxy's OTLP export) joined by the demo app's
//! propagation of the trace context: a trace with spans from at least three workloads proves
//! both.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use serde_json::Value;
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use support::*;

/// A GET to the dashboard: the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    http_get(addr, addr, path)
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Starts the demo for `seconds` and waits for its dashboard: the child and the address.
fn demo(rt: &Runtime, seconds: &str) -> (Child, String) {
    let child = rt
        .mesh()
        .args([
            "up",
            "--seconds",
            seconds,
            "--json",
            "--proxy-bin",
            "builtin",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh up");
    let state = rt.wait_for_state("demo", Duration::from_secs(90));
    let addr = state["dashboard"]
        .as_str()
        .expect("a dashboard")
        .to_string();
    (child, addr)
}

/// Waits until `f` gives a value, or panics with the last thing it saw.
fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

const DEMO_EDGES: [(&str, &str); 5] = [
    ("frontend", "backend-v1"),
    ("frontend", "backend-v2"),
    ("frontend", "quotes"),
    ("backend-v1", "ratings"),
    ("backend-v2", "ratings"),
];

#[test]
fn dashboard_api_shows_the_demo_s_graph_and_traces() {
    let rt = Runtime::new("dash-api");
    let (child, addr) = demo(&rt, "30");

    // The graph: every edge of the demo with traffic, all of it mTLS.
    let graph = eventually(Duration::from_secs(20), "the demo's edges", || {
        let g = get_json(&addr, "/api/graph");
        for (src, dst) in DEMO_EDGES {
            let e = g["edges"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["src"] == src && e["dst"] == dst)
                .ok_or(format!("no edge {src} -> {dst}: {g}"))?;
            if e["rps"].as_f64().unwrap_or(0.0) <= 0.0 {
                return Err(format!("{src} -> {dst} has no rps: {g}"));
            }
            if e["mtls_rate"] != 1.0 {
                return Err(format!("{src} -> {dst} is not all mTLS: {g}"));
            }
            assert!(e["p99_ms"].as_f64().is_some(), "{e}");
            assert_eq!(e["success_rate"], 1.0, "{e}");
        }
        Ok(g)
    });
    assert_eq!(graph["mesh"], "demo");
    let names: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    for w in [
        "outside",
        "frontend",
        "backend-v1",
        "backend-v2",
        "ratings",
        "quotes",
    ] {
        assert!(names.contains(&w), "{w}: {graph}");
    }
    let backend = graph["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "backend.demo.svc.cluster.local")
        .unwrap();
    assert_eq!(
        backend["workloads"],
        serde_json::json!(["backend-v1", "backend-v2"])
    );

    // Traces: one with spans from at least three workloads (the sidecars' spans, joined
    // across workloads by the demo app carrying the context), the load generator's as root.
    // Each sidecar exports its spans in its own batches, so a trace fills in over a moment:
    // wait for one that holds the frontend's server span too.
    let trace = eventually(Duration::from_secs(20), "a trace across workloads", || {
        let t = get_json(&addr, "/api/traces?limit=200");
        let ids: Vec<String> = t["traces"]
            .as_array()
            .unwrap()
            .iter()
            // The load generator's traces (the sidecars also start some of their own, for
            // requests without a context: `--trace-sample`).
            .filter(|t| t["root_service"] == "load")
            .filter(|t| {
                let s = t["services"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                s.iter().filter(|s| *s != "load").count() >= 3 && s.iter().any(|s| s == "frontend")
            })
            .filter_map(|t| t["trace_id"].as_str().map(str::to_string))
            .collect();
        ids.iter()
            .map(|id| get_json(&addr, &format!("/api/traces/{id}")))
            .find(|trace| {
                trace["spans"].as_array().is_some_and(|spans| {
                    spans
                        .iter()
                        .any(|s| s["service"] == "frontend" && s["kind"] == "server")
                })
            })
            .ok_or(format!(
                "no trace with spans from three workloads and the frontend's server span: {t}"
            ))
    });
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(trace["root_service"], "load", "{trace}");
    for s in trace["services"].as_array().unwrap() {
        assert!(spans.iter().any(|sp| sp["service"] == *s), "{s}: {trace}");
    }
    let server = spans
        .iter()
        .find(|s| s["service"] == "frontend" && s["kind"] == "server")
        .unwrap();
    assert_eq!(server["attributes"]["direction"], "inbound", "{trace}");
    assert!(server["parent_span_id"].is_string(), "{trace}");
    let (status, _) = get(&addr, "/api/traces/00000000000000000000000000000001");
    assert_eq!(status, 404);
    let (status, _) = get(&addr, "/api/traces/nothex");
    assert_eq!(status, 400);

    // The page and its live events.
    let (status, page) = get(&addr, "/");
    assert_eq!(status, 200);
    assert!(
        page.contains("app.js") && !page.contains("https://"),
        "{page}"
    );
    let (status, _) = http_get(&addr, "evil.example", "/api/graph");
    assert_eq!(status, 403, "a name other than localhost is refused");
    let status = get_json(&addr, "/api/status");
    assert!(
        status["page_bytes"].as_u64().unwrap() < 64 * 1024,
        "{status}"
    );
    assert!(
        status["traces"]["collected"].as_u64().unwrap() > 0,
        "{status}"
    );
    let history = get_json(&addr, "/api/history");
    assert!(!history["t"].as_array().unwrap().is_empty(), "{history}");
    let tick = first_event(&addr, "/api/events");
    assert!(tick.starts_with("event: tick\ndata: {"), "{tick}");

    let out = child.wait_with_output().unwrap();
    let summary = json(&out);
    assert!(out.status.success(), "{summary}");
    let traces = &summary["traces"];
    assert!(traces["collected"].as_u64().unwrap() > 0, "{summary}");
    assert!(traces["workloads"].as_u64().unwrap() >= 3, "{summary}");
    // The dashboard and the receiver live in `mesh up`, not in the control plane, whose
    // budget (< 40 MB) holds for release builds; a debug build's services are larger.
    let cp = summary["control_plane"]["rss_bytes"].as_u64().unwrap();
    assert!(cfg!(debug_assertions) || cp < 40 << 20, "{summary}");
    assert!(
        summary["mesh_up"]["rss_bytes"].as_u64().is_some(),
        "{summary}"
    );
}

/// The first event of a server-sent event stream.
fn first_event(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((_, body)) = text.split_once("\r\n\r\n")
            && body.contains("\n\n")
        {
            break body.to_string();
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream ended: {text}");
        buf.extend_from_slice(&chunk[..n]);
    };
    // Chunked encoding: the chunk's size line precedes the event.
    body.split_once("\r\n")
        .map(|(_, e)| e.to_string())
        .unwrap_or_default()
}

fn browser_tools() -> bool {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let have =
        tool("node") && tool("chromium") && dir.join("node_modules/playwright-core").is_dir();
    if !have {
        let required = ["MESH_REQUIRE_TOOLS", "MESH_REQUIRE_NETNS"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|v| v == "1"));
        assert!(
            !required,
            "the browser test needs node, chromium and `npm install` in {}",
            dir.display()
        );
        println!("SKIP: node, chromium or playwright-core missing (see .ci/run)");
    }
    have
}

#[test]
fn dashboard_page_in_headless_chromium() {
    if !browser_tools() {
        return;
    }
    let rt = Runtime::new("dash-browser");
    let (mut child, addr) = demo(&rt, "90");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let out = Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(format!("http://{addr}/"))
        .arg(&shots)
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\nscreenshots in {}", shots.display());
    kill(child.id(), "TERM");
    let _ = child.wait();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let found: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        found["trace_workloads"].as_array().unwrap().len() >= 3,
        "{found}"
    );
    for shot in ["dashboard.png", "tap.png", "traces.png"] {
        assert!(shots.join(shot).is_file(), "{shot}");
    }
}
