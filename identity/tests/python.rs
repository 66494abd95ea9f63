//! An independent client in another language: `tests/python/certify_client.py` generates
//! Python gRPC stubs at run time (grpc_tools.protoc) from the identity.proto shipped in the
//! `linkerd2-proxy-api` crate, makes its key and DER CSR with `cryptography`, and calls
//! Certify on the real service over plaintext gRPC. It checks that the leaf chains to the
//! anchor, carries the DNS SAN and its key, and that `valid_until` is in the future; then that
//! a forged token is UNAUTHENTICATED and a garbage or misnamed CSR is INVALID_ARGUMENT.
//!
//! Skipped without a python3 that imports grpc, grpc_tools and cryptography, unless
//! MESH_REQUIRE_NETNS=1 (CI) makes that a failure. On Debian: `apt-get install
//! python3-grpcio python3-grpc-tools python3-cryptography` (these serve /usr/bin/python3,
//! which is tried after `python3` on PATH, e.g. a pyenv one; MESH_PYTHON=PATH picks one).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};
use support::{ID, Running, Trust};
use tokio::process::Command;

const MODULES: &str = "import grpc, grpc_tools.protoc, cryptography";

/// The first interpreter that imports every module the client needs, or None (the test
/// skips) after saying why. Panics instead when MESH_REQUIRE_NETNS=1.
async fn find_python() -> Option<String> {
    // MESH_PYTHON, when set, is the only one tried.
    let candidates = match std::env::var("MESH_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".to_string(), "/usr/bin/python3".to_string()],
    };
    let mut why = Vec::new();
    for py in candidates {
        match Command::new(&py).args(["-c", MODULES]).output().await {
            Ok(out) if out.status.success() => return Some(py),
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err.lines().last().unwrap_or("").trim().to_string();
                why.push(format!("{py}: {last}"));
            }
            Err(e) => why.push(format!("{py}: {e}")),
        }
    }
    let why = why.join("; ");
    assert!(
        std::env::var("MESH_REQUIRE_NETNS").as_deref() != Ok("1"),
        "python3 with grpc, grpc_tools and cryptography is required (MESH_REQUIRE_NETNS=1): {why}"
    );
    eprintln!("SKIPPED: no python3 with grpc, grpc_tools and cryptography ({why})");
    None
}

/// The `proto/` directory of the `linkerd2-proxy-api` crate this workspace builds against:
/// from `cargo metadata`, else from the pinned version in CARGO_HOME's registry.
async fn proto_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .current_dir(manifest_dir)
            .kill_on_drop(true)
            .output(),
    )
    .await;
    if let Ok(Ok(out)) = &out
        && out.status.success()
    {
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = meta["packages"].as_array().unwrap().iter().find_map(|p| {
            (p["name"] == "linkerd2-proxy-api").then(|| {
                Path::new(p["manifest_path"].as_str().unwrap())
                    .parent()
                    .unwrap()
                    .join("proto")
            })
        });
        if let Some(dir) = found {
            return dir;
        }
    }
    eprintln!("cargo metadata did not name linkerd2-proxy-api ({out:?}); trying CARGO_HOME");

    // The version pinned in the workspace's Cargo.toml (`version = "=X.Y.Z"`).
    let root = manifest_dir.parent().unwrap();
    let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let line = toml
        .lines()
        .find(|l| l.trim_start().starts_with("linkerd2-proxy-api"))
        .expect("linkerd2-proxy-api in the root Cargo.toml");
    let version = line
        .split("version")
        .nth(1)
        .and_then(|v| v.split('"').nth(1))
        .unwrap()
        .trim_start_matches('=');
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let crate_dir = format!("linkerd2-proxy-api-{version}");
    std::fs::read_dir(home.join("registry").join("src"))
        .unwrap()
        .map(|e| e.unwrap().path().join(&crate_dir).join("proto"))
        .find(|p| p.join("identity.proto").is_file())
        .unwrap_or_else(|| panic!("{crate_dir}/proto not found under {}", home.display()))
}

#[tokio::test]
async fn python_grpcio_client() {
    let Some(python) = find_python().await else {
        return;
    };
    let protos = proto_dir().await;
    assert!(
        protos.join("identity.proto").is_file(),
        "{}",
        protos.display()
    );

    let trust = Trust::new();
    let server = Running::start(trust.config()).await;
    let token = String::from_utf8(trust.token(ID)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/certify_client.py");

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(&python)
            .arg(&script)
            .arg("--addr")
            .arg(server.addr.to_string())
            .arg("--proto-dir")
            .arg(&protos)
            .args(["--identity", ID, "--token", &token])
            .arg("--trust-anchor-pem")
            .arg(&trust.paths.anchor)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the python client timed out")
    .expect("run the python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{python} {}:\n{stdout}", script.display());
    if !stderr.is_empty() {
        println!("stderr:\n{stderr}");
    }
    assert!(out.status.success(), "{}: {stdout}\n{stderr}", out.status);

    // The script checks everything itself; check the main facts again from its report.
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["failures"], serde_json::json!([]), "{stdout}");
    let ok = &r["ok"];
    assert_eq!(ok["error"], serde_json::Value::Null, "{stdout}");
    assert_eq!(ok["chain_verified"], true, "{stdout}");
    assert_eq!(ok["dns_sans"], serde_json::json!([ID]), "{stdout}");
    assert_eq!(ok["leaf_key_is_ours"], true, "{stdout}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid_until = ok["valid_until"].as_u64().unwrap();
    assert!(valid_until > now, "{stdout}");
    assert_eq!(ok["valid_until"], ok["not_after"], "{stdout}");
    // The leaf it got is one our issuer signed, for the identity, with the spiffe URI too.
    let leaf_der = support::pem_to_der(ok["leaf_pem"].as_str().unwrap());
    let leaf = support::parse(&leaf_der);
    let issuer_der = support::pem_to_der(&trust.files.issuer_cert_pem);
    let issuer = support::parse(&issuer_der);
    assert_eq!(leaf.issuer(), issuer.subject());
    leaf.verify_signature(Some(issuer.public_key())).unwrap();
    assert_eq!(
        ok["uri_sans"],
        serde_json::json!(["spiffe://cluster.local/ns/emojivoto/sa/web"]),
        "{stdout}"
    );

    for (case, code) in [
        ("bad_token", "UNAUTHENTICATED"),
        ("garbage_csr", "INVALID_ARGUMENT"),
        ("name_mismatch", "INVALID_ARGUMENT"),
    ] {
        assert_eq!(r[case]["code"], code, "{case}: {stdout}");
    }
    // And the server refused them for the reasons we meant.
    assert_eq!(server.metrics.issued_total(), 1);
    for reason in ["unauthenticated", "csr_malformed", "csr_name_mismatch"] {
        assert_eq!(server.metrics.rejected_total(reason), 1, "{reason}");
    }
    server.stop().await;
}
