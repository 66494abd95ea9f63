//! Certify over real loopback gRPC with a real tonic client.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod support;

use linkerd_identity::{
    api::CertifyRequest,
    trust::{TrustOptions, generate_issuer, write_file},
};
use std::time::{Duration, SystemTime};
use support::{ID, Running, Trust, eventually, parse, pem_to_der};
use tonic::Code;

#[tokio::test]
async fn certify_happy_path() {
    let trust = Trust::new();
    let server = Running::start(trust.config()).await;
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let rsp = server.certify(trust.request(ID)).await.unwrap();

    let leaf = parse(&rsp.leaf_certificate);
    let valid_until = rsp.valid_until.unwrap();
    assert_eq!(valid_until.seconds, leaf.validity().not_after.timestamp());
    assert_eq!(valid_until.nanos, 0);
    // 24h + 20s skew by default.
    let lifetime = valid_until.seconds - before;
    assert!((86420..=86425).contains(&lifetime), "{lifetime}");

    // Chain: leaf ← issuer ← anchor.
    assert_eq!(rsp.intermediate_certificates.len(), 1);
    let issuer_der = &rsp.intermediate_certificates[0];
    assert_eq!(*issuer_der, pem_to_der(&trust.files.issuer_cert_pem));
    let issuer = parse(issuer_der);
    let anchor_der = pem_to_der(&trust.files.anchor_pem);
    let anchor = parse(&anchor_der);
    leaf.verify_signature(Some(issuer.public_key())).unwrap();
    issuer.verify_signature(Some(anchor.public_key())).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].contains(ID));
    assert!(names[1].contains("spiffe://cluster.local/ns/emojivoto/sa/web"));

    assert_eq!(server.metrics.issued_total(), 1);
    let (status, metrics) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("identity_certificates_issued_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("identity_issuer_expiry_timestamp_seconds "));
    assert_eq!(server.admin_get("/ready").await.0, 200);
    assert_eq!(server.admin_get("/live").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn rejections_have_the_right_codes() {
    let trust = Trust::new();
    let server = Running::start(trust.config()).await;
    let good = || trust.request(ID);
    let other = "api.emojivoto.serviceaccount.identity.linkerd.cluster.local";
    let pem_csr = {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![ID.to_string()]).unwrap();
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    };
    let expired = trust
        .tokens
        .mint(
            &ID.parse().unwrap(),
            Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(3600),
        )
        .into_bytes();
    let mut forged = trust.token(ID);
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };

    let cases: Vec<(&str, CertifyRequest, Code, &str)> = vec![
        (
            "empty identity",
            CertifyRequest {
                identity: String::new(),
                ..good()
            },
            Code::InvalidArgument,
            "empty_field",
        ),
        (
            "empty token",
            CertifyRequest {
                token: Vec::new(),
                ..good()
            },
            Code::InvalidArgument,
            "empty_field",
        ),
        (
            "empty csr",
            CertifyRequest {
                certificate_signing_request: Vec::new(),
                ..good()
            },
            Code::InvalidArgument,
            "empty_field",
        ),
        (
            "bad name",
            CertifyRequest {
                identity: "Not_A.Name".into(),
                ..good()
            },
            Code::InvalidArgument,
            "bad_identity",
        ),
        (
            "PEM csr",
            CertifyRequest {
                certificate_signing_request: pem_csr,
                ..good()
            },
            Code::InvalidArgument,
            "csr_malformed",
        ),
        (
            "garbage csr",
            CertifyRequest {
                certificate_signing_request: b"\x30\x03abc".to_vec(),
                ..good()
            },
            Code::InvalidArgument,
            "csr_malformed",
        ),
        (
            "csr for another name",
            CertifyRequest {
                certificate_signing_request: linkerd_identity::bench::csr_for(other).unwrap(),
                ..good()
            },
            Code::InvalidArgument,
            "csr_name_mismatch",
        ),
        (
            "forged token",
            CertifyRequest {
                token: forged,
                ..good()
            },
            Code::Unauthenticated,
            "unauthenticated",
        ),
        (
            "expired token",
            CertifyRequest {
                token: expired,
                ..good()
            },
            Code::Unauthenticated,
            "unauthenticated",
        ),
        (
            "garbage token",
            CertifyRequest {
                token: b"hello".to_vec(),
                ..good()
            },
            Code::Unauthenticated,
            "unauthenticated",
        ),
        (
            "token for another identity",
            CertifyRequest {
                token: trust.token(other),
                ..good()
            },
            Code::InvalidArgument,
            "identity_mismatch",
        ),
    ];
    let mut client = server.client().await;
    for (what, req, code, reason) in cases {
        let before = server.metrics.rejected_total(reason);
        let err = client.certify(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert_eq!(
            server.metrics.rejected_total(reason),
            before + 1,
            "{what}: {reason}"
        );
    }
    assert_eq!(server.metrics.issued_total(), 0);
    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(
        metrics.contains("identity_certify_rejections_total{reason=\"empty_field\"} 3"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn no_issuer_until_it_appears() {
    let trust = Trust::new();
    let mut config = trust.config();
    let dir = support::TempDir::new("late");
    config.issuer_cert = dir.path().join("issuer.crt");
    config.issuer_key = dir.path().join("issuer.key");
    let server = Running::start(config).await;

    let err = server.certify(trust.request(ID)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(server.metrics.rejected_total("no_issuer"), 1);
    assert_eq!(server.admin_get("/ready").await.0, 503);
    assert!(
        !server
            .admin_get("/metrics")
            .await
            .1
            .contains("issuer_expiry")
    );

    write_file(
        &dir.path().join("issuer.key"),
        trust.files.issuer_key_pem.as_bytes(),
        0o600,
    )
    .unwrap();
    write_file(
        &dir.path().join("issuer.crt"),
        trust.files.issuer_cert_pem.as_bytes(),
        0o644,
    )
    .unwrap();
    eventually("ready", || async {
        server.admin_get("/ready").await.0 == 200
    })
    .await;
    server.certify(trust.request(ID)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn issuer_reload() {
    let trust = Trust::new();
    let server = Running::start(trust.config()).await;
    let first = server.certify(trust.request(ID)).await.unwrap();
    assert_eq!(
        first.intermediate_certificates[0],
        pem_to_der(&trust.files.issuer_cert_pem)
    );

    // Rotate: a new issuer under the same anchor, written while the server runs.
    let (cert, key) = generate_issuer(
        &trust.files.anchor_pem,
        &trust.files.anchor_key_pem,
        &TrustOptions::default(),
    )
    .unwrap();
    write_file(&trust.paths.issuer_key, key.as_bytes(), 0o600).unwrap();
    write_file(&trust.paths.issuer_cert, cert.as_bytes(), 0o644).unwrap();
    let new_der = pem_to_der(&cert);
    eventually("the new issuer", || async {
        let rsp = server.certify(trust.request(ID)).await.unwrap();
        rsp.intermediate_certificates[0] == new_der
    })
    .await;
    let rsp = server.certify(trust.request(ID)).await.unwrap();
    let new_issuer = parse(&new_der);
    parse(&rsp.leaf_certificate)
        .verify_signature(Some(new_issuer.public_key()))
        .unwrap();
    let errors = metric(&server, "identity_issuer_reloads_total{result=\"error\"}").await;

    // An invalid replacement (a CA from another anchor) is refused; the old issuer stays.
    let other = linkerd_identity::generate_trust(&TrustOptions::default()).unwrap();
    let stranger = (other.issuer_cert_pem, other.issuer_key_pem);
    write_file(&trust.paths.issuer_key, stranger.1.as_bytes(), 0o600).unwrap();
    write_file(&trust.paths.issuer_cert, stranger.0.as_bytes(), 0o644).unwrap();
    eventually("the rejection", || async {
        metric(&server, "identity_issuer_reloads_total{result=\"error\"}").await > errors
    })
    .await;
    // And garbage too.
    write_file(&trust.paths.issuer_cert, b"garbage", 0o644).unwrap();
    eventually("the second rejection", || async {
        metric(&server, "identity_issuer_reloads_total{result=\"error\"}").await > errors + 1
    })
    .await;
    let rsp = server.certify(trust.request(ID)).await.unwrap();
    assert_eq!(rsp.intermediate_certificates[0], new_der);
    assert_eq!(server.admin_get("/ready").await.0, 200);
    server.stop().await;
}

async fn metric(server: &Running, name: &str) -> u64 {
    let (_, body) = server.admin_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "current_thread")]
async fn bench_runs() {
    let report = linkerd_identity::bench::bench(linkerd_identity::bench::BenchOptions {
        duration: Duration::from_millis(300),
        concurrency: 4,
        csrs: 4,
    })
    .await
    .unwrap();
    assert_eq!(report.errors, 0);
    assert!(report.certs > 0);
    assert_eq!(report.runtime, "current_thread");
    assert!(report.latency_us_p50 <= report.latency_us_p99);
}
