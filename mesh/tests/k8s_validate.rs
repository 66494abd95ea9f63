//! Offline schema validation of what `mesh install` and `mesh inject` print, and of the
//! optional `deploy/gateway-api-subset` CRDs, with the `kubernetes-validate` Python package
//! (the Kubernetes OpenAPI schemas, strict: unknown fields are errors). Skips when the tool is missing, unless MESH_REQUIRE_TOOLS=1 or
//! MESH_REQUIRE_NETNS=1 (CI sets it and installs the tool: see .ci/run).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The Kubernetes version the manifests target (native sidecars need 1.29+; k8s-openapi's
/// feature is v1_33).
const KUBERNETES_VERSION: &str = "1.33.0";

fn required() -> bool {
    ["MESH_REQUIRE_TOOLS", "MESH_REQUIRE_NETNS"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

fn mesh(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .expect("run mesh");
    assert!(
        out.status.success(),
        "mesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The validator as a Python module: works whether or not pip put its script on PATH (pyenv
/// shims appear only after a rehash).
fn validator() -> Command {
    let mut c = Command::new("python3");
    c.args(["-m", "kubernetes_validate"]);
    c
}

#[test]
fn install_and_inject_output_validates_against_the_kubernetes_schemas() {
    let tool = validator().arg("--version").output();
    if !tool.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            !required(),
            "kubernetes-validate is required (MESH_REQUIRE_TOOLS/MESH_REQUIRE_NETNS) but not installed: \
             pip install kubernetes-validate"
        );
        println!("SKIP: kubernetes-validate is not installed (pip install kubernetes-validate)");
        return;
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("mesh-k8s-validate-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let trust = dir.0.join("trust");
    let trust_s = trust.to_str().unwrap();
    mesh(&["identity", "init", "--dir", trust_s]);
    let anchors = trust.join("ca.crt");
    let anchors_s = anchors.to_str().unwrap();

    let mut files: Vec<PathBuf> = Vec::new();
    let mut write = |name: &str, yaml: String| {
        assert!(!yaml.trim().is_empty(), "{name}: no output");
        let p = dir.0.join(name);
        std::fs::write(&p, yaml).unwrap();
        files.push(p);
    };
    write("install.yaml", mesh(&["install"]));
    write("install-ha.yaml", mesh(&["install", "--ha"]));
    write(
        "install-given-trust.yaml",
        mesh(&[
            "install",
            "--identity-trust-anchors-file",
            anchors_s,
            "--identity-issuer-certificate-file",
            trust.join("issuer.crt").to_str().unwrap(),
            "--identity-issuer-key-file",
            trust.join("issuer.key").to_str().unwrap(),
        ]),
    );
    // The optional Gateway API subset (deploy/gateway-api-subset/; not in `mesh install`).
    let subset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway-api-subset");
    for crd in ["httproute.yaml", "grpcroute.yaml"] {
        write(
            &format!("gateway-api-subset-{crd}"),
            std::fs::read_to_string(subset.join(crd)).unwrap(),
        );
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../injector/tests/fixtures");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for f in &names {
        let out = mesh(&[
            "inject",
            f.to_str().unwrap(),
            "--identity-trust-anchors-file",
            anchors_s,
        ]);
        write(
            &format!("inject-{}", f.file_name().unwrap().to_str().unwrap()),
            out,
        );
    }

    // Real projects' manifests (injector/tests/fixtures/real), a whole directory each, as a
    // user would run it: every document read, every workload injected.
    for project in ["podinfo", "emojivoto", "kubernetes-examples"] {
        let dir = fixtures.join("real").join(project);
        let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(["inject", "-R", dir.to_str().unwrap()])
            .args(["--identity-trust-anchors-file", anchors_s])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{project}: {stderr}");
        assert!(!stderr.contains("cannot be"), "{project}: {stderr}");
        assert!(stderr.contains(" injected"), "{project}: {stderr}");
        write(
            &format!("inject-real-{project}.yaml"),
            String::from_utf8(out.stdout).unwrap(),
        );
    }

    let out = validator()
        .args(["-k", KUBERNETES_VERSION, "--strict", "--quiet"])
        .args(&files)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    assert!(!report.contains("ERROR"), "{report}");
    println!(
        "validated {} files against Kubernetes {KUBERNETES_VERSION}",
        files.len()
    );
}
