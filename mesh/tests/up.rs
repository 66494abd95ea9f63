//! Runs the local mesh exactly as a user would (`mesh up --seconds N --json`, the built-in
//! demo or a user's file) and checks the summary the sidecars produced, and what `mesh check`,
//! `mesh stat` and `mesh edges` say about the running mesh.

// Test code: `allow-unwrap-in-tests` covers `#[test]` functions but not the helpers beside
// them; these tests drive a child process from a plain thread (no runtime), so sleeping is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

fn mesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-up-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"))
}

/// Waits for `mesh up` to write its state file (it does once everything is ready).
fn wait_for(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mesh_up_demo_serves_traffic_through_every_sidecar() {
    let state = temp("demo-state.json");
    let child = mesh()
        // A loopback range of its own, so a demo someone is running does not collide.
        .args([
            "up",
            "--seconds",
            "8",
            "--json",
            "--rps",
            "50",
            "--base-ip",
            "127.0.77.10",
            // The proxy this test binary was built with, not a linkerd-proxy binary that may
            // be stale.
            "--proxy-bin",
            "builtin",
            "--state",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh up");

    // While it runs: the other commands find it through the state file.
    wait_for(&state, Duration::from_secs(60));
    let check = mesh()
        .args(["check", "--json", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let report = json(&check);
    assert!(check.status.success(), "{report}");
    let checks = report["checks"].as_array().unwrap();
    // Three control-plane services, the issuer, the anchor, and two checks per sidecar.
    assert_eq!(checks.len(), 5 + 2 * 5, "{report}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{report}");

    let stat = mesh()
        .args(["stat", "--json", "--window", "1", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(stat.status.success());
    let rows = json(&stat);
    let routes: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "-> backend.demo.svc.cluster.local:8080",
        "-> quotes.demo.svc.cluster.local:9090",
        "-> ratings.demo.svc.cluster.local:8080",
    ] {
        assert!(routes.iter().any(|r| r == want), "{want}: {rows}");
    }

    // `mesh stat | head -0`: the reader is gone before the table is written (after the
    // 1 s window). That ends the command quietly and successfully, not in a panic.
    let mut piped = mesh()
        .args(["stat", "--window", "1", "--state"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let piped = piped.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{:?}: {stderr}", piped.status);
    assert!(stderr.is_empty(), "{stderr}");

    let edges = mesh()
        .args(["edges", "--json", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let edges = json(&edges);
    let quotes = edges
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["dst"] == "quotes.demo.svc.cluster.local:9090")
        .unwrap_or_else(|| panic!("no edge to quotes: {edges}"));
    assert_eq!(quotes["src"], "frontend");
    assert_eq!(quotes["mtls"], true);
    assert_eq!(
        quotes["client_id"],
        "frontend.demo.serviceaccount.identity.linkerd.cluster.local"
    );
    assert_eq!(
        quotes["server_id"],
        "quotes.demo.serviceaccount.identity.linkerd.cluster.local"
    );

    // Live requests by path, from every sidecar's tap stream.
    let top = mesh()
        .args(["top", "--json", "--seconds", "2", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let top_json = json(&top);
    assert!(top.status.success(), "{top_json}");
    let grpc = top_json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"] == "quotes" && r["direction"] == "inbound")
        .unwrap_or_else(|| panic!("no inbound quotes row: {top_json}"));
    assert_eq!(grpc["method"], "POST");
    assert_eq!(grpc["path"], "/demo.Quotes/Get");
    let count = grpc["count"].as_u64().unwrap();
    assert!(count >= 20, "2 s at 50 rps: {top_json}");
    assert_eq!(grpc["successes"].as_u64(), Some(count), "{top_json}");
    assert_eq!(grpc["tls"].as_u64(), Some(count), "{top_json}");

    let out = child.wait_with_output().unwrap();
    let summary = json(&out);
    assert!(out.status.success(), "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["problems"], serde_json::json!([]), "{summary}");
    assert!(
        summary["load"]["sent"].as_u64().unwrap() >= 100,
        "{summary}"
    );
    assert_eq!(summary["load"]["failed"], 0, "{summary}");
    assert!(!state.exists(), "the state file outlived mesh up");
    let w = &summary["workloads"];
    for name in ["frontend", "ratings", "quotes"] {
        assert_eq!(w[name]["success_rate"], 1.0, "{name}: {summary}");
        assert!(
            w[name]["requests"].as_f64().unwrap() > 0.0,
            "{name}: {summary}"
        );
    }
    for name in ["frontend", "backend-v1", "backend-v2", "ratings", "quotes"] {
        assert_eq!(w[name]["running"], true, "{name}: {summary}");
        assert!(
            w[name]["sidecar_rss_kb"].as_f64().unwrap() > 0.0,
            "{name}: {summary}"
        );
    }
    // Sidecar-to-sidecar traffic is all mTLS, over HTTP/1.1 (frontend -> backend), gRPC
    // (frontend -> quotes) and HTTP/2 (backend -> ratings); the front door is called from
    // outside the mesh.
    for name in ["ratings", "quotes"] {
        assert_eq!(w[name]["mtls_fraction"], 1.0, "{name}: {summary}");
    }
    assert_eq!(w["frontend"]["mtls_fraction"], 0.0, "{summary}");
    let front_routes = w["frontend"]["outbound"].as_array().unwrap();
    assert_eq!(front_routes.len(), 2, "{summary}");
    for r in front_routes {
        assert_eq!(r["success_rate"], 1.0, "{summary}");
        assert_eq!(r["mtls_fraction"], 1.0, "{summary}");
    }
    assert!(
        summary["control_plane_rss_kb"].as_u64().unwrap() > 0,
        "{summary}"
    );
    // Every frontend request calls one backend and the quotes service once each, and every
    // backend request calls ratings: the inbound sidecars downstream see what the frontend saw.
    let front = w["frontend"]["requests"].as_f64().unwrap();
    let backends = w["backend-v1"]["requests"].as_f64().unwrap()
        + w["backend-v2"]["requests"].as_f64().unwrap();
    let quotes = w["quotes"]["requests"].as_f64().unwrap();
    let ratings = w["ratings"]["requests"].as_f64().unwrap();
    assert!(backends > 0.0, "{summary}");
    assert!((backends - front).abs() <= 2.0, "{summary}");
    assert!((quotes - front).abs() <= 2.0, "{summary}");
    assert!((ratings - backends).abs() <= 2.0, "{summary}");
    // The demo's HTTPRoute splits the backend 90/10: the frontend's sidecar applies it.
    let v2 = w["backend-v2"]["requests"].as_f64().unwrap();
    assert!(
        v2 > 0.0 && v2 < 0.3 * backends,
        "backend-v2 got {v2} of {backends}: {summary}"
    );
}

#[test]
fn a_broken_workload_is_reported_and_the_rest_keep_running() {
    let file = temp("broken.yaml");
    std::fs::write(
        &file,
        r#"namespace: shop
workloads:
  - name: web
    port: 8000
    ingress: true
    command: '"$MESH" demo-app --name web --listen "$MESH_IP:$PORT" --via "$MESH_PROXY" --call "http://$MESH_SVC_API/items"'
  - name: api
    port: 8001
    command: '"$MESH" demo-app --name api --listen "$MESH_IP:$PORT"'
  - name: broken
    port: 8002
    command: 'echo "broken: cannot read /etc/broken.conf" >&2; exit 3'
load:
  service: web
  rps: 30
"#,
    )
    .unwrap();
    let state = temp("broken-state.json");
    let out = mesh()
        .args([
            "up",
            "--seconds",
            "3",
            "--json",
            "--base-ip",
            "127.0.79.10",
            "--proxy-bin",
            "builtin",
            "-f",
        ])
        .arg(&file)
        .arg("--state")
        .arg(&state)
        .output()
        .expect("run mesh up");
    let summary = json(&out);
    assert!(
        !out.status.success(),
        "a broken workload must fail the run: {summary}"
    );
    assert_eq!(summary["ok"], false);
    let w = &summary["workloads"];
    assert_eq!(w["broken"]["running"], false, "{summary}");
    let error = w["broken"]["error"].as_str().unwrap();
    assert!(error.contains("the app of broken exited"), "{error}");
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(error.contains("cannot read /etc/broken.conf"), "{error}");
    let problems = summary["problems"].as_array().unwrap();
    assert_eq!(
        problems.len(),
        1,
        "only the broken workload is a problem: {summary}"
    );
    // The others ran and carried traffic, mTLS between them.
    for name in ["web", "api"] {
        assert_eq!(w[name]["running"], true, "{summary}");
        assert_eq!(w[name]["success_rate"], 1.0, "{summary}");
        assert!(w[name]["requests"].as_f64().unwrap() > 0.0, "{summary}");
    }
    assert_eq!(w["api"]["mtls_fraction"], 1.0, "{summary}");
    assert_eq!(
        w["api"]["service"], "api.shop.svc.cluster.local",
        "{summary}"
    );
    assert_eq!(summary["load"]["failed"], 0, "{summary}");
}

#[test]
fn policy_in_the_mesh_file_admits_some_callers_and_refuses_others() {
    let file = temp("policy.yaml");
    std::fs::write(
        &file,
        r#"namespace: shop
workloads:
  - name: web
    port: 8000
    ingress: true
    command: '"$MESH" demo-app --name web --listen "$MESH_IP:$PORT" --via "$MESH_PROXY" --call "http://$MESH_SVC_API/items"'
  - name: intruder
    port: 8001
    ingress: true
    command: '"$MESH" demo-app --name intruder --listen "$MESH_IP:$PORT" --via "$MESH_PROXY" --call "http://$MESH_SVC_API/items"'
  - name: api
    port: 8002
    command: '"$MESH" demo-app --name api --listen "$MESH_IP:$PORT"'
load:
  service: web
  rps: 20
policy:
  servers:
    - {name: api, namespace: shop, spec: {podSelector: {matchLabels: {app: api}}, port: 8002}}
  meshTLSAuthentications:
    - {name: web, namespace: shop, spec: {identities: [web.shop.serviceaccount.identity.linkerd.cluster.local]}}
  authorizationPolicies:
    - name: api-from-web
      namespace: shop
      spec:
        targetRef: {group: policy.linkerd.io, kind: Server, name: api}
        requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: web}]
"#,
    )
    .unwrap();
    let state = temp("policy-state.json");
    let child = mesh()
        .args([
            "up",
            "--seconds",
            "4",
            "--json",
            "--base-ip",
            "127.0.81.10",
            "--proxy-bin",
            "builtin",
            "-f",
        ])
        .arg(&file)
        .arg("--state")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh up");
    wait_for(&state, Duration::from_secs(60));
    // The intruder's sidecar (mTLS, but not an identity the policy names) is refused: a 403
    // with the proxy's reason, passed back by the intruder app as a 502.
    let refused = http_get(
        "127.0.81.11:4143",
        "intruder.shop.svc.cluster.local:8001",
        "/",
    );
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    assert!(refused.contains("403 Forbidden"), "{refused}");
    assert!(
        refused.contains("unauthorized request on route default"),
        "{refused}"
    );
    let allowed = http_get("127.0.81.10:4143", "web.shop.svc.cluster.local:8000", "/");
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");

    let out = child.wait_with_output().unwrap();
    let summary = json(&out);
    let w = &summary["workloads"];
    assert_eq!(w["web"]["outbound"][0]["success_rate"], 1.0, "{summary}");
    assert_eq!(w["api"]["mtls_fraction"], 1.0, "{summary}");
    // The refusals are what failed, and the summary says so: the api's sidecar counts the
    // refused request as a failure, the intruder app answered 502; web is untouched.
    assert_eq!(summary["ok"], false, "{summary}");
    let problems: Vec<&str> = summary["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems.iter().any(|p| p.starts_with("intruder (inbound)")),
        "{summary}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("api (inbound)")),
        "{summary}"
    );
    assert!(!problems.iter().any(|p| p.starts_with("web")), "{summary}");
}

/// One HTTP/1.1 GET over a fresh connection; the whole response as text.
fn http_get(addr: &str, host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn an_invalid_file_is_refused_before_anything_starts() {
    let file = temp("invalid.yaml");
    std::fs::write(&file, "workloads:\n  - {name: Web, port: 80, command: x}\n").unwrap();
    let out = mesh().args(["up", "-f"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a valid mesh file"), "{stderr}");
    assert!(stderr.contains("\"Web\" is not a DNS label"), "{stderr}");
}

#[test]
fn the_viewing_commands_say_how_to_find_a_mesh() {
    let out = mesh()
        .args(["stat", "--state", "/nonexistent/mesh-up.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("start one with `mesh up`"), "{stderr}");
    // A proxy that is not there fails the check with a hint.
    let out = mesh()
        .args(["check", "--admin", "127.0.80.1:4191"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("× 127.0.80.1:4191: the sidecar is ready"),
        "{stdout}"
    );
    assert!(stdout.contains("hint:"), "{stdout}");
}

#[test]
fn a_port_in_use_is_reported_clearly() {
    // Hold the front door's sidecar admin port so that sidecar cannot start.
    let _held = std::net::TcpListener::bind("127.0.78.10:4191").expect("bind");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "up",
            "--seconds",
            "1",
            "--json",
            "--base-ip",
            "127.0.78.10",
            "--proxy-bin",
            "builtin",
            "--state",
        ])
        .arg(temp("port-state.json"))
        .output()
        .expect("run mesh up");
    assert!(!out.status.success());
    let summary = json(&out);
    let front = &summary["workloads"]["frontend"];
    assert_eq!(front["running"], false, "{summary}");
    let error = front["error"].as_str().unwrap();
    assert!(error.contains("sidecar of frontend"), "{error}");
    assert!(error.contains("127.0.78.10:4191"), "{error}");
}
