//! An independent client: the `openssl` CLI makes the key and the DER CSR, the certificate
//! comes back through the real tonic client, and `openssl verify` checks the chain. The
//! issuer key is converted to SEC1 (`EC PRIVATE KEY`) by openssl, as `step`/cert-manager
//! keys are. Skipped without `openssl`, unless MESH_REQUIRE_NETNS=1 (CI) makes that a failure.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod support;

use linkerd_identity::api::CertifyRequest;
use std::path::Path;
use support::{ID, Running, TempDir, Trust};
use tokio::process::Command;

async fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

async fn have_openssl() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("MESH_REQUIRE_NETNS").as_deref() != Ok("1"),
            "openssl is required (MESH_REQUIRE_NETNS=1)"
        );
        eprintln!("SKIPPED: the openssl CLI is not installed");
    }
    found
}

#[tokio::test]
async fn openssl_csr_and_verify() {
    if !have_openssl().await {
        return;
    }
    let trust = Trust::new();
    let work = TempDir::new("openssl");
    let dir = work.path();

    // The issuer key as SEC1, written by openssl.
    let issuer_key = dir.join("issuer-sec1.key");
    let pkcs8 = trust.paths.issuer_key.display().to_string();
    openssl(dir, &["ec", "-in", &pkcs8, "-out", "issuer-sec1.key"]).await;
    assert!(
        std::fs::read_to_string(&issuer_key)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );
    let mut config = trust.config();
    config.issuer_key = issuer_key;
    let server = Running::start(config).await;

    // Key and DER CSR, the way the proxy's wrapper makes them.
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "key.pem",
        ],
    )
    .await;
    let subj = format!("/CN={ID}");
    let san = format!("subjectAltName=DNS:{ID}");
    openssl(
        dir,
        &[
            "req", "-new", "-key", "key.pem", "-subj", &subj, "-addext", &san, "-outform", "DER",
            "-out", "csr.der",
        ],
    )
    .await;
    let csr = std::fs::read(dir.join("csr.der")).unwrap();
    let rsp = server
        .certify(CertifyRequest {
            identity: ID.into(),
            token: trust.token(ID),
            certificate_signing_request: csr,
        })
        .await
        .unwrap();

    std::fs::write(dir.join("leaf.der"), &rsp.leaf_certificate).unwrap();
    std::fs::write(dir.join("issuer.der"), &rsp.intermediate_certificates[0]).unwrap();
    openssl(
        dir,
        &[
            "x509", "-inform", "DER", "-in", "leaf.der", "-out", "leaf.pem",
        ],
    )
    .await;
    openssl(
        dir,
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "issuer.der",
            "-out",
            "issuer.pem",
        ],
    )
    .await;
    let ca = trust.paths.anchor.display().to_string();
    for purpose in ["sslserver", "sslclient"] {
        let out = openssl(
            dir,
            &[
                "verify",
                "-CAfile",
                &ca,
                "-untrusted",
                "issuer.pem",
                "-purpose",
                purpose,
                "leaf.pem",
            ],
        )
        .await;
        assert!(out.contains("leaf.pem: OK"), "{out}");
    }
    // The leaf carries openssl's key and our names.
    let text = openssl(dir, &["x509", "-in", "leaf.pem", "-noout", "-text"]).await;
    assert!(text.contains(&format!("DNS:{ID}")), "{text}");
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/emojivoto/sa/web"),
        "{text}"
    );
    let leaf_key = openssl(dir, &["x509", "-in", "leaf.pem", "-noout", "-pubkey"]).await;
    let our_key = openssl(dir, &["ec", "-in", "key.pem", "-pubout"]).await;
    assert!(our_key.contains(leaf_key.trim()), "{leaf_key}\n{our_key}");

    // openssl's RSA and PEM CSRs are refused.
    openssl(dir, &["genrsa", "-out", "rsa.pem", "2048"]).await;
    openssl(
        dir,
        &[
            "req", "-new", "-key", "rsa.pem", "-subj", &subj, "-addext", &san, "-outform", "DER",
            "-out", "rsa.der",
        ],
    )
    .await;
    openssl(
        dir,
        &[
            "req", "-new", "-key", "key.pem", "-subj", &subj, "-addext", &san, "-out", "csr.pem",
        ],
    )
    .await;
    for file in ["rsa.der", "csr.pem"] {
        let err = server
            .certify(CertifyRequest {
                identity: ID.into(),
                token: trust.token(ID),
                certificate_signing_request: std::fs::read(dir.join(file)).unwrap(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{file}: {err:?}");
    }
    server.stop().await;
}
