//! Runs the local demo exactly as a user would (`mesh up --seconds N --json`) and checks the
//! summary the sidecars produced.

use std::process::Command;

#[test]
fn mesh_up_demo_serves_traffic_through_every_sidecar() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        // A loopback range of its own, so a demo someone is running does not collide.
        .args([
            "up",
            "--seconds",
            "3",
            "--json",
            "--rps",
            "50",
            "--base-ip",
            "127.0.77.10",
        ])
        .output()
        .expect("run mesh up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mesh up failed: {stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(summary["load"]["sent"].as_u64().unwrap() >= 50, "{summary}");
    assert_eq!(summary["load"]["failed"], 0, "{summary}");
    let w = &summary["workloads"];
    for name in ["frontend", "backend-v1", "backend-v2", "quotes"] {
        assert_eq!(w[name]["success_rate"], 1.0, "{name}: {summary}");
        assert!(
            w[name]["requests"].as_f64().unwrap() > 0.0,
            "{name}: {summary}"
        );
        assert!(
            w[name]["sidecar_rss_kb"].as_f64().unwrap() > 0.0,
            "{name}: {summary}"
        );
    }
    // Sidecar-to-sidecar traffic is all mTLS; the front door is called from outside the mesh.
    for name in ["backend-v1", "backend-v2", "quotes"] {
        assert_eq!(w[name]["mtls_fraction"], 1.0, "{name}: {summary}");
    }
    assert_eq!(w["frontend"]["mtls_fraction"], 0.0, "{summary}");
    assert!(
        summary["control_plane_rss_kb"].as_u64().unwrap() > 0,
        "{summary}"
    );
    // Every frontend request calls one backend and the quotes service once each: the inbound
    // sidecars of the backends together see what the frontend saw.
    let front = w["frontend"]["requests"].as_f64().unwrap();
    let backends = w["backend-v1"]["requests"].as_f64().unwrap()
        + w["backend-v2"]["requests"].as_f64().unwrap();
    let quotes = w["quotes"]["requests"].as_f64().unwrap();
    assert!((backends - front).abs() <= 2.0, "{summary}");
    assert!((quotes - front).abs() <= 2.0, "{summary}");
}

#[test]
fn a_port_in_use_is_reported_clearly() {
    // Hold the front door's sidecar admin port so that sidecar cannot start.
    let _held = std::net::TcpListener::bind("127.0.78.10:4191").expect("bind");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["up", "--seconds", "1", "--json", "--base-ip", "127.0.78.10"])
        .output()
        .expect("run mesh up");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("frontend"), "{stderr}");
    assert!(stderr.contains("127.0.78.10:4191"), "{stderr}");
}
