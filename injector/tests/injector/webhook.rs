//! The webhook over real HTTPS: a CA and serving certificate made at test time, a recorded
//! AdmissionReview, a hyper + rustls client.

use crate::support::*;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use linkerd_injector::{
    events::Events,
    namespaces::Namespaces,
    server::{self, Config},
};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::net::TcpStream;

struct Webhook {
    addr: SocketAddr,
    admin: SocketAddr,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

use linkerd_control::test_support::TempDir;

/// A CA, and a serving certificate it signs for the Service name and 127.0.0.1.
fn certs(dir: &std::path::Path) -> (String, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "webhook test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec![
        "linkerd-proxy-injector.linkerd.svc".to_string(),
        "127.0.0.1".to_string(),
    ])
    .unwrap();
    leaf.distinguished_name.push(
        rcgen::DnType::CommonName,
        "linkerd-proxy-injector.linkerd.svc",
    );
    let leaf = leaf.signed_by(&key, &ca).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}

async fn start() -> Webhook {
    let dir = TempDir::new("injector-webhook");
    let (ca_pem, tls_cert, tls_key) = certs(dir.path());
    let mut namespaces = BTreeMap::new();
    namespaces.insert("shop".to_string(), ns(&[("linkerd.io/inject", "enabled")]));
    let bound = server::bind(Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        tls_cert,
        tls_key,
        inject: config(),
        namespaces: Namespaces::Static(namespaces),
        events: Events::none(),
        grace: Duration::from_secs(2),
    })
    .await
    .unwrap();
    let (addr, admin) = (bound.addr().unwrap(), bound.admin_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));
    Webhook {
        addr,
        admin,
        ca_pem,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS connection to the webhook, checking its certificate for the Service name.
async fn tls_connect(
    w: &Webhook,
    tls: rustls::ClientConfig,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(w.addr).await.unwrap();
    let name = ServerName::try_from("linkerd-proxy-injector.linkerd.svc").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap()
}

async fn https(
    w: &Webhook,
    tls: rustls::ClientConfig,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let io = tls_connect(w, tls).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "linkerd-proxy-injector.linkerd.svc")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let status = rsp.status();
    (status, rsp.into_body().collect().await.unwrap().to_bytes())
}

async fn post(w: &Webhook, body: Vec<u8>) -> (StatusCode, Bytes) {
    let tls = client_config(&w.ca_pem, &[&rustls::version::TLS13]);
    https(w, tls, Method::POST, "/", body).await
}

async fn admin_get(w: &Webhook, path: &str) -> (StatusCode, String) {
    let (status, body) = linkerd_control::test_support::admin_get(w.admin, path).await;
    (StatusCode::from_u16(status).unwrap(), body)
}

fn recorded_review() -> Value {
    serde_json::from_str(&fixture("admission-review.json")).unwrap()
}

#[tokio::test]
async fn recorded_review_is_answered_with_a_patch_that_injects_the_pod() {
    let w = start().await;
    let review = recorded_review();
    let (status, body) = post(&w, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let rsp = &answer["response"];
    assert_eq!(rsp["uid"], review["request"]["uid"]);
    assert_eq!(rsp["allowed"], true);
    assert_eq!(rsp["patchType"], "JSONPatch");
    // The patch is base64 (Go's []byte), a JSON Patch array once decoded.
    let patch = base64::engine::general_purpose::STANDARD
        .decode(rsp["patch"].as_str().expect("patch is a base64 string"))
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    apply(&mut pod, &patch);
    let spec = &pod["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["linkerd-init", "linkerd-proxy"]
    );
    assert_eq!(
        names(&spec["volumes"]),
        [
            "kube-api-access-x7q2m",
            "linkerd-identity-end-entity",
            "linkerd-identity-token",
            "linkerd-proxy-init-xtables-lock"
        ]
    );
    assert_eq!(
        pod["metadata"]["labels"]["linkerd.io/proxy-deployment"],
        "web"
    );
    assert_eq!(pod["metadata"]["labels"]["linkerd.io/workload-ns"], "shop");
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();

    let (status, metrics) = admin_get(&w, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("proxy_inject_admission_responses_total{skip=\"false\",reason=\"\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn pods_that_are_not_injected_are_admitted_unchanged() {
    let w = start().await;
    // A namespace without the annotation.
    let mut review = recorded_review();
    review["request"]["namespace"] = json!("other");
    review["request"]["object"]["metadata"]["namespace"] = json!("other");
    let (status, body) = post(&w, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let rsp = &serde_json::from_slice::<Value>(&body).unwrap()["response"];
    assert_eq!(rsp["allowed"], true);
    assert!(rsp.get("patch").is_none(), "{rsp}");
    assert!(rsp.get("patchType").is_none(), "{rsp}");

    // An object that is not a valid Pod: admitted, with a warning, counted as a failure.
    let mut review = recorded_review();
    review["request"]["object"]["spec"]["containers"] = json!("nope");
    let (status, body) = post(&w, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let rsp = &serde_json::from_slice::<Value>(&body).unwrap()["response"];
    assert_eq!(rsp["allowed"], true);
    assert!(
        rsp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not a valid Pod"),
        "{rsp}"
    );

    // A Service (Linkerd's webhook also sees them): admitted, unsupported.
    let mut review = recorded_review();
    review["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let (status, _) = post(&w, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    let (_, metrics) = admin_get(&w, "/metrics").await;
    for line in [
        "proxy_inject_admission_responses_total{skip=\"true\",reason=\"not_enabled\"} 1",
        "proxy_inject_admission_responses_total{skip=\"true\",reason=\"unsupported\"} 1",
        "proxy_inject_admission_failures_total 1",
        "proxy_inject_admission_requests_total 3",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn malformed_reviews_are_rejected_with_a_message() {
    let w = start().await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (
            {
                let mut r = recorded_review();
                r["request"]["uid"] = json!("");
                serde_json::to_vec(&r).unwrap()
            },
            "no uid",
        ),
        (
            {
                let mut r = recorded_review();
                r["request"].as_object_mut().unwrap().remove("uid");
                serde_json::to_vec(&r).unwrap()
            },
            "uid",
        ),
    ];
    for (body, want) in cases {
        let (status, rsp) = post(&w, body).await;
        let rsp = String::from_utf8_lossy(&rsp);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rsp}");
        assert!(rsp.contains(want), "{want}: {rsp}");
    }
    // Over 10 MB.
    let (status, _) = post(&w, vec![b' '; 10 * 1024 * 1024 + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Wrong method and path.
    let tls = client_config(&w.ca_pem, &[&rustls::version::TLS13]);
    let (status, _) = https(&w, tls.clone(), Method::GET, "/", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = https(&w, tls, Method::POST, "/mutate", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, metrics) = admin_get(&w, "/metrics").await;
    assert!(
        metrics.contains("proxy_inject_bad_requests_total 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn tls12_probes_and_graceful_shutdown() {
    let mut w = start().await;
    // An API server that offers TLS 1.2 only still gets an answer.
    let tls = client_config(&w.ca_pem, &[&rustls::version::TLS12]);
    let (status, _) = https(
        &w,
        tls,
        Method::POST,
        "/",
        serde_json::to_vec(&recorded_review()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        admin_get(&w, "/ready").await,
        (StatusCode::OK, "ready\n".into())
    );
    assert_eq!(
        admin_get(&w, "/live").await,
        (StatusCode::OK, "live\n".into())
    );
    // A connection that is open (idle, keep-alive) does not hold up the shutdown.
    let tcp = TcpStream::connect(w.addr).await.unwrap();
    let _ = w.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut w.task)
        .await
        .unwrap()
        .unwrap();
    drop(tcp);
    assert!(
        TcpStream::connect(w.addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn a_missing_certificate_is_a_clear_error() {
    let err = server::bind(Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        tls_cert: "/nonexistent/tls.crt".into(),
        tls_key: "/nonexistent/tls.key".into(),
        inject: config(),
        namespaces: Namespaces::Static(BTreeMap::new()),
        events: Events::none(),
        grace: Duration::from_secs(1),
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tls.crt"), "{err}");
}

#[tokio::test]
async fn a_review_in_flight_at_shutdown_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut w = start().await;
    let mut io = tls_connect(&w, client_config(&w.ca_pem, rustls::DEFAULT_VERSIONS)).await;
    let body = serde_json::to_vec(&recorded_review()).unwrap();
    // `expect: 100-continue`: the interim response says the server has taken the request and
    // is reading its body, so the shutdown below finds it in flight, not yet unread.
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: injector\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    io.write_all(head.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            io.read(&mut b).await.unwrap(),
            1,
            "closed before 100 Continue"
        );
        interim.push(b[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");

    // Shut down with the review's body not sent. The admin listener closes with the same
    // signal that tells each connection to finish: once it refuses, the drain has begun.
    let _ = w.stop.take().unwrap().send(());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(w.admin).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "admin still up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!w.task.is_finished(), "gave up on the review in flight");

    io.write_all(&body).await.unwrap();
    io.flush().await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut raw))
        .await
        .expect("the connection closes after the answer")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );
    let (_, json) = raw.split_once("\r\n\r\n").unwrap();
    let review: Value = serde_json::from_str(json).unwrap();
    assert_eq!(review["response"]["allowed"], true, "{review}");
    tokio::time::timeout(Duration::from_secs(5), &mut w.task)
        .await
        .unwrap()
        .unwrap();
}
