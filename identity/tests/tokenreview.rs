//! TokenReview against a real local HTTPS (and HTTP) server that answers like an API server.
//! No cluster runs here: the server below is a stand-in that speaks the TokenReview JSON.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use linkerd_identity::{
    AuthConfig,
    kube::{TokenReview, TokenReviewConfig},
    token::{AuthError, Authenticator},
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use support::{ID, Running, TempDir, Trust};
use tokio::net::TcpListener;

const API_TOKEN: &str = "identity-controller-token";

/// What the fake API server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    reviews: Mutex<Vec<serde_json::Value>>,
}

/// Answers TokenReviews by token: `good-<ns>-<sa>`, `denied`, `legacy`, `not-sa`, `bad-sa`,
/// `boom` (HTTP 500). Requires our bearer token.
async fn answer(
    req: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authz = req.headers().get("authorization").cloned();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
    seen.reviews.lock().unwrap().push(review.clone());
    let reply = |code: u16, v: serde_json::Value| {
        let mut rsp = Response::new(Full::new(Bytes::from(v.to_string())));
        *rsp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        Ok(rsp)
    };
    if authz.as_ref().and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {API_TOKEN}")) {
        return reply(401, serde_json::json!({"kind": "Status", "code": 401}));
    }
    assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
    let token = review["spec"]["token"].as_str().unwrap().to_string();
    let audiences = review["spec"]["audiences"].as_array().unwrap().clone();
    let ok = |user: &str| {
        serde_json::json!({
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "status": {"authenticated": true, "user": {"username": user, "uid": "u-1"},
                       "audiences": audiences}
        })
    };
    let denied = |error: &str| {
        serde_json::json!({
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "status": {"authenticated": false, "error": error}
        })
    };
    match token.as_str() {
        t if t.starts_with("good-") => {
            let mut parts = t.splitn(3, '-').skip(1);
            let (ns, sa) = (parts.next().unwrap(), parts.next().unwrap());
            reply(201, ok(&format!("system:serviceaccount:{ns}:{sa}")))
        }
        "denied" => reply(201, denied("token has expired")),
        "legacy" if !audiences.is_empty() => reply(
            201,
            denied(
                "[invalid bearer token, token audiences [\"identity.l5d.io\"] is invalid for the target audiences [\"https://kubernetes.default.svc\"]]",
            ),
        ),
        "legacy" => reply(201, ok("system:serviceaccount:emojivoto:web")),
        "not-sa" => reply(201, ok("kubernetes-admin")),
        "bad-sa" => reply(201, ok("system:serviceaccount:Bad_NS:web")),
        "boom" => reply(500, serde_json::json!({"kind": "Status", "code": 500})),
        _ => reply(201, denied("unknown token")),
    }
}

/// A fake API server; with `tls`, HTTPS with a certificate for 127.0.0.1 signed by the
/// returned CA PEM.
async fn fake_api(tls: bool) -> (SocketAddr, Option<String>, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let (acceptor, ca_pem) = if tls {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            Some(ca.pem()),
        )
    } else {
        (None, None)
    };
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, seen.clone()));
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        let io = TokioIo::new(a.accept(tcp).await.unwrap());
                        let _ = http.serve_connection(io, svc).await;
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    (addr, ca_pem, seen)
}

/// A TokenReview client for the fake server, with CA and bearer token files in `dir`.
async fn client(dir: &TempDir, addr: SocketAddr, ca_pem: Option<&str>) -> TokenReview {
    TokenReview::new(config(dir, addr, ca_pem)).await.unwrap()
}

fn config(dir: &TempDir, addr: SocketAddr, ca_pem: Option<&str>) -> TokenReviewConfig {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).unwrap();
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    let mut c = TokenReviewConfig::new(
        format!("{scheme}://{addr}").parse().unwrap(),
        "linkerd",
        "cluster.local",
    );
    c.token_file = Some(token_file);
    if let Some(pem) = ca_pem {
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, pem).unwrap();
        c.ca_file = Some(ca_file);
    }
    c.timeout = Duration::from_secs(5);
    c
}

#[tokio::test]
async fn tokenreview_over_https() {
    let (addr, ca, seen) = fake_api(true).await;
    let dir = TempDir::new("kube");
    let tr = client(&dir, addr, ca.as_deref()).await;

    let id = tr.authenticate(b"good-emojivoto-web").await.unwrap();
    assert_eq!(id.as_str(), ID);
    {
        let reviews = seen.reviews.lock().unwrap();
        assert_eq!(
            reviews[0]["spec"]["audiences"],
            serde_json::json!(["identity.l5d.io"])
        );
        assert_eq!(reviews[0]["spec"]["token"], "good-emojivoto-web");
    }
    let unauth =
        |r: Result<_, AuthError>| assert!(matches!(r, Err(AuthError::Unauthenticated(_))), "{r:?}");
    unauth(tr.authenticate(b"denied").await);
    unauth(tr.authenticate(b"not-sa").await);
    unauth(tr.authenticate(b"bad-sa").await);
    unauth(tr.authenticate(b"whatever").await);
    unauth(tr.authenticate(&[0xff]).await);
    let e = tr.authenticate(b"boom").await.unwrap_err();
    assert!(matches!(e, AuthError::Unavailable(_)), "{e:?}");

    // A legacy token: retried once with no audiences.
    let before = seen.reviews.lock().unwrap().len();
    assert_eq!(tr.authenticate(b"legacy").await.unwrap().as_str(), ID);
    let reviews = seen.reviews.lock().unwrap();
    assert_eq!(reviews.len(), before + 2);
    assert_eq!(
        reviews[before + 1]["spec"]["audiences"],
        serde_json::json!([])
    );
    drop(reviews);

    // All of that over one kept-alive connection.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tokenreview_over_http_and_bad_bearer() {
    let (addr, _, _) = fake_api(false).await;
    let dir = TempDir::new("kube-http");
    let tr = client(&dir, addr, None).await;
    assert_eq!(
        tr.authenticate(b"good-emojivoto-web")
            .await
            .unwrap()
            .as_str(),
        ID
    );
    // Our own token is reread on every call: a wrong one gives 401 → UNAVAILABLE.
    std::fs::write(dir.path().join("token"), "wrong").unwrap();
    let e = tr.authenticate(b"good-emojivoto-web").await.unwrap_err();
    assert!(
        matches!(e, AuthError::Unavailable(ref m) if m.contains("401")),
        "{e:?}"
    );
}

#[tokio::test]
async fn tokenreview_unreachable_is_unavailable() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = TempDir::new("kube-down");
    let tr = client(&dir, addr, None).await;
    let e = tr.authenticate(b"good-emojivoto-web").await.unwrap_err();
    assert!(matches!(e, AuthError::Unavailable(_)), "{e:?}");
    // HTTPS to a server with a certificate we do not trust is unavailable too.
    let (addr, _, _) = fake_api(true).await;
    let other_ca = rcgen::CertifiedIssuer::self_signed(
        {
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p
        },
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    let tr = client(&dir, addr, Some(&other_ca.pem())).await;
    let e = tr.authenticate(b"good-emojivoto-web").await.unwrap_err();
    assert!(
        matches!(e, AuthError::Unavailable(ref m) if m.contains("TLS")),
        "{e:?}"
    );
}

/// Certify end to end with `AuthConfig::Kubernetes` against the fake API server.
#[tokio::test]
async fn certify_with_tokenreview() {
    let (api, ca, _) = fake_api(true).await;
    let trust = Trust::new();
    let dir = TempDir::new("kube-e2e");
    let mut config = trust.config();
    config.auth = AuthConfig::Kubernetes(self::config(&dir, api, ca.as_deref()));
    let server = Running::start(config).await;

    let mut req = trust.request(ID);
    req.token = b"good-emojivoto-web".to_vec();
    let rsp = server.certify(req.clone()).await.unwrap();
    assert!(!rsp.leaf_certificate.is_empty());

    let code = |token: &'static [u8]| {
        let mut req = req.clone();
        req.token = token.to_vec();
        let server = &server;
        async move { server.certify(req).await.unwrap_err().code() }
    };
    assert_eq!(code(b"denied").await, tonic::Code::Unauthenticated);
    assert_eq!(code(b"not-sa").await, tonic::Code::Unauthenticated);
    assert_eq!(code(b"boom").await, tonic::Code::Unavailable);
    // A valid token for another service account: the names do not match.
    assert_eq!(
        code(b"good-emojivoto-api").await,
        tonic::Code::InvalidArgument
    );
    server.stop().await;
}
