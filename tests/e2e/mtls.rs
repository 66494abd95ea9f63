//! Mutual TLS between proxies, end to end: the identity service in-process certifies
//! the proxies over real gRPC; the proxies speak real rustls to each other over loopback; every
//! certificate chains to a trust anchor generated for the test.
//!
//! A is the client's sidecar (its outbound listener, used as an HTTP proxy or through a local
//! TCP listener); B is the server's sidecar (its inbound listener, forwarding to the app). A
//! knows B's address and identity from `MESH_PROXY_STATIC_ENDPOINTS` (`name=addr#identity`).

use linkerd_proxy::{
    config::{
        ENV_IDENTITY_MAX_REFRESH, ENV_IDENTITY_MIN_REFRESH, ENV_INBOUND_FORWARD_ADDR,
        ENV_LOCAL_LISTENERS, ENV_OUTBOUND_CONNECT_TIMEOUT, ENV_OUTBOUND_UPGRADE_HTTP1,
        ENV_STATIC_ENDPOINTS,
    },
    http::L5D_PROXY_ERROR,
};
use linkerd_tests::{
    assert_eventually,
    client::{self, Reply},
    mesh::{
        self, CERT_EXPIRY, CERT_REFRESH, Ca, IdentityService, Leaf, TlsPeer, Traffic, gauge,
        identity, leaf_policy, meshed_endpoint,
    },
    metrics::Metrics,
    proxy::TestProxy,
    run,
    server::TestServer,
    tcp::TcpServer,
    within,
};
use linkerd2_proxy_api::destination::update;
use rustls::ClientConfig;
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tonic::Code;

const WEB: &str = "web.test:80";
const GRPC: &str = "grpc.test:80";
const ECHO: &str = "echo.test:7000";

fn default_policy() -> linkerd_identity::ca::LeafPolicy {
    leaf_policy(Duration::from_secs(3600), Duration::from_secs(20))
}

/// Starts B (identity `b`) in front of `app`.
async fn server_proxy(svc: &IdentityService, b: &str, app: SocketAddr) -> TestProxy {
    let app = app.to_string();
    svc.proxy(b, &[(ENV_INBOUND_FORWARD_ADDR, &app)]).await
}

/// Starts A (identity `a`) knowing `endpoints` (`name=addr#identity`, `;`-separated), with a
/// local TCP listener named `tcp` for [`ECHO`] and `extra` variables.
async fn client_proxy(
    svc: &IdentityService,
    a: &str,
    endpoints: &str,
    extra: &[(&str, &str)],
) -> TestProxy {
    let local = format!("tcp=127.0.0.1:0>{ECHO}");
    let mut env = vec![
        (ENV_STATIC_ENDPOINTS, endpoints),
        (ENV_LOCAL_LISTENERS, local.as_str()),
    ];
    env.extend_from_slice(extra);
    svc.proxy(a, &env).await
}

fn assert_proxy_error(what: &str, rsp: &Reply, status: u16) {
    assert_eq!(rsp.status, status, "{what}: {}", rsp.text());
    assert!(
        rsp.header(L5D_PROXY_ERROR).is_some_and(|e| !e.is_empty()),
        "{what}: no {L5D_PROXY_ERROR} header: {:?}",
        rsp.headers
    );
}

/// The identity service, B (identity `b`) in front of an app, and A (identity `a`), which
/// knows B's inbound listener by a name.
struct Meshed {
    svc: IdentityService,
    a: String,
    b: String,
    proxy_a: TestProxy,
    proxy_b: TestProxy,
}

impl Meshed {
    /// A is `identity(names.0)`, B is `identity(names.1)` in front of `app`; A knows B as
    /// `name`, where it expects the identity `expect` (B's own if `None`).
    async fn start(names: (&str, &str), name: &str, app: SocketAddr, expect: Option<&str>) -> Self {
        let svc = IdentityService::start(default_policy()).await;
        let (a, b) = (identity(names.0), identity(names.1));
        let proxy_b = server_proxy(&svc, &b, app).await;
        let endpoints = meshed_endpoint(name, proxy_b.inbound, expect.unwrap_or(&b));
        let proxy_a = client_proxy(&svc, &a, &endpoints, &[]).await;
        Self {
            svc,
            a,
            b,
            proxy_a,
            proxy_b,
        }
    }
}

/// The samples named `name` with `labels`, over mTLS (`tls="true"`) whose peer label
/// (`client_id` inbound, `server_id` outbound) is `peer`.
fn tls_sum(m: &Metrics, name: &str, labels: &[(&str, &str)], peer: (&str, &str)) -> f64 {
    let mut all = labels.to_vec();
    all.push(("tls", "true"));
    all.push(peer);
    m.sum(name, &all)
}

/// Asserts that [`tls_sum`] is `want`.
fn assert_tls_sum(m: &Metrics, name: &str, labels: &[(&str, &str)], peer: (&str, &str), want: f64) {
    assert_eq!(tls_sum(m, name, labels, peer), want, "{}", m.text);
}

/// Waits until `proxy`'s [`tls_sum`] is `want`; then its metrics.
async fn settled(
    proxy: &TestProxy,
    name: &str,
    labels: &[(&str, &str)],
    peer: (&str, &str),
    want: f64,
) -> Metrics {
    assert_eventually!({
        let m = proxy.metrics().await;
        tls_sum(&m, name, labels, peer) == want
    });
    proxy.metrics().await
}

/// Asserts that no sample of `name` with `labels` is plaintext (`tls="no_identity"`).
fn assert_no_plaintext(m: &Metrics, name: &str, labels: &[(&str, &str)]) {
    let mut all = labels.to_vec();
    all.push(("tls", "no_identity"));
    assert!(!m.has(name, &all), "{}", m.text);
}

/// Asserts whether `m` has a sample of `name` with `labels`.
fn assert_has(m: &Metrics, name: &str, labels: &[(&str, &str)], want: bool) {
    assert_eq!(m.has(name, labels), want, "{}", m.text);
}

// === 1. Traffic over mTLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_mtls() {
    run(async {
        let app = TestServer::start().await;
        let Meshed {
            svc: _svc,
            a,
            b,
            proxy_a,
            proxy_b,
        } = Meshed::start(("client", "server"), WEB, app.addr(), None).await;

        // HTTP/1.1, with an identity header forged by the client: only B may set it.
        let mut h1 = client::http1(proxy_a.outbound).await;
        let mut req = client::request(
            http::Method::POST,
            &format!("http://{WEB}/echo"),
            client::full("over mTLS, HTTP/1.1"),
        );
        req.headers_mut().insert(
            "l5d-client-id",
            http::HeaderValue::from_static(
                "forged.mtls.serviceaccount.identity.linkerd.cluster.local",
            ),
        );
        let rsp = client::send1(&mut h1, req).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.text(), "over mTLS, HTTP/1.1");
        assert_eq!(rsp.header(L5D_PROXY_ERROR), None);
        // Still HTTP/1.1 when it reached the app, though it crossed as HTTP/2.
        assert_eq!(rsp.header("x-req-version"), Some("HTTP/1.1"));
        assert_eq!(rsp.header("x-req-host"), Some(WEB));
        assert!(rsp.headers.get("l5d-orig-proto").is_none(), "{rsp:?}");

        // Prior-knowledge HTTP/2.
        let mut h2 = client::http2(proxy_a.outbound).await;
        let req = client::request(
            http::Method::POST,
            &format!("http://{WEB}/echo"),
            client::full("over mTLS, HTTP/2"),
        );
        let rsp = client::send2(&mut h2, req).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.text(), "over mTLS, HTTP/2");
        assert_eq!(rsp.header("x-req-version"), Some("HTTP/2.0"));

        // A streamed body and trailers survive the TLS hop too.
        let rsp = client::send2(
            &mut h2,
            client::get_request(&format!("http://{WEB}/bytes?n=300000")),
        )
        .await;
        assert_eq!(rsp.status, 200);
        assert!(rsp.body == linkerd_tests::pattern(300_000), "body mismatch");

        // What the app saw: B's verified view of the caller, never the forged header.
        let seen = app.requests();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for s in &seen {
            let ids: Vec<_> = s.headers.get_all("l5d-client-id").iter().collect();
            assert_eq!(ids.len(), 1, "exactly one l5d-client-id: {:?}", s.headers);
            assert_eq!(ids[0], a.as_str(), "{:?}", s.headers);
            assert!(s.headers.get("l5d-orig-proto").is_none(), "{:?}", s.headers);
        }
        assert_eq!(seen[0].version, http::Version::HTTP_11);
        assert_eq!(seen[1].version, http::Version::HTTP_2);

        // B: every request and connection came in over mTLS from A, and one connection
        // carried all of them (HTTP/1 is multiplexed into HTTP/2 between proxies).
        let client_id = ("client_id", a.as_str());
        let inbound = [("direction", "inbound")];
        let m = settled(&proxy_b, "response_total", &inbound, client_id, 3.0).await;
        assert_tls_sum(&m, "request_total", &inbound, client_id, 3.0);
        let src = [("direction", "inbound"), ("peer", "src")];
        assert_tls_sum(&m, "tcp_open_total", &src, client_id, 1.0);
        assert_no_plaintext(&m, "tcp_open_total", &src);
        assert_no_plaintext(&m, "request_total", &inbound);

        // A: the requests and the upstream connection went to B's identity.
        let server_id = ("server_id", b.as_str());
        let target = proxy_b.inbound.to_string();
        let outbound = [
            ("direction", "outbound"),
            ("authority", WEB),
            ("target_addr", target.as_str()),
        ];
        let m = settled(&proxy_a, "response_total", &outbound, server_id, 3.0).await;
        let success = [("direction", "outbound"), ("classification", "success")];
        assert_tls_sum(&m, "response_total", &success, server_id, 3.0);
        let dst = [
            ("direction", "outbound"),
            ("peer", "dst"),
            ("target_addr", target.as_str()),
        ];
        assert_tls_sum(&m, "tcp_open_total", &dst, server_id, 1.0);
        // A read the 300 KB body from B over that connection.
        assert!(
            tls_sum(&m, "tcp_read_bytes_total", &dst, server_id) > 300_000.0,
            "{}",
            m.text
        );
        assert_no_plaintext(&m, "tcp_open_total", &dst);

        // Both hold a certificate that expires in the future.
        for (name, p) in [("A", &proxy_a), ("B", &proxy_b)] {
            let m = p.metrics().await;
            let expiry = gauge(&m, CERT_EXPIRY).unwrap_or_else(|| panic!("{name}: {}", m.text));
            let refresh = gauge(&m, CERT_REFRESH).unwrap_or_else(|| panic!("{name}: {}", m.text));
            let now = mesh::unix_now();
            assert!(refresh > now && expiry > refresh, "{name}: {}", m.text);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_mtls() {
    run(async {
        let (server, _task) = mesh::serve_client_id_echo().await;
        let Meshed {
            svc: _svc,
            a,
            b,
            proxy_a,
            proxy_b,
        } = Meshed::start(("grpc-client", "grpc-server"), GRPC, server, None).await;
        let mut grpc = linkerd_tests::grpc::client_via(proxy_a.outbound, GRPC).await;

        // A streamed response, ending with trailers: the app saw A's identity.
        let mut stream = grpc
            .get(linkerd_tests::grpc::get_destination("web:80"))
            .await
            .expect("Get over mTLS")
            .into_inner();
        let mut ids = Vec::new();
        while let Some(u) = stream.message().await.expect("an update") {
            match u.update {
                Some(update::Update::Add(set)) => ids.push(set.metric_labels["client_id"].clone()),
                other => panic!("unexpected update {other:?}"),
            }
        }
        assert_eq!(ids, std::slice::from_ref(&a));
        assert!(stream.trailers().await.expect("trailers").is_some());

        // An application error status crosses unchanged and is not the proxy's.
        let err = grpc
            .get_profile(linkerd_tests::grpc::get_destination("web:80"))
            .await
            .expect_err("GetProfile fails");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert_eq!(err.message(), format!("client_id={a}"));
        assert!(err.metadata().get(L5D_PROXY_ERROR).is_none(), "{err:?}");

        // One response of each status (the error's and the stream's).
        let client_id = ("client_id", a.as_str());
        assert_eventually!({
            let m = proxy_b.metrics().await;
            ["5", "0"].into_iter().all(|status| {
                let labels = [("direction", "inbound"), ("grpc_status", status)];
                tls_sum(&m, "response_total", &labels, client_id) == 1.0
            })
        });
        let server_id = ("server_id", b.as_str());
        let outbound = [("direction", "outbound"), ("authority", GRPC)];
        let m = settled(&proxy_a, "response_total", &outbound, server_id, 2.0).await;
        assert_no_plaintext(&m, "tcp_open_total", &[("peer", "dst")]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_over_mtls() {
    run(async {
        let echo = TcpServer::echo().await;
        let Meshed {
            svc: _svc,
            a,
            b,
            proxy_a,
            proxy_b,
        } = Meshed::start(("tcp-client", "tcp-server"), ECHO, echo.addr(), None).await;
        let local = proxy_a.local("tcp");

        // 256 KiB, half-closed by the client: the echo ends when the app closes.
        let data = mesh::opaque_payload(256 * 1024);
        let echoed = mesh::tcp_echo(local, &data).await.expect("echo over mTLS");
        assert!(
            echoed == data,
            "echoed {} bytes, sent {}",
            echoed.len(),
            data.len()
        );
        // Interactive, on a second connection.
        let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
        for msg in [&b"\x00one"[..], b"\x00two"] {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(msg).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            within(Duration::from_secs(10), "an echo", s.read_exact(&mut buf))
                .await
                .unwrap();
            assert_eq!(buf, msg);
        }
        drop(s);
        assert_eq!(echo.connections(), 2);

        // B: both connections came in over mTLS from A and were closed.
        let client_id = ("client_id", a.as_str());
        let src = [("direction", "inbound"), ("peer", "src")];
        let m = settled(&proxy_b, "tcp_close_total", &src, client_id, 2.0).await;
        assert_tls_sum(&m, "tcp_open_total", &src, client_id, 2.0);
        // B read the 256 KiB from A (plus TLS overhead).
        let read = tls_sum(&m, "tcp_read_bytes_total", &src, client_id);
        assert!(read > data.len() as f64, "{}", m.text);
        assert_no_plaintext(&m, "tcp_open_total", &src);
        let opaque = [("direction", "inbound"), ("protocol", "opaque")];
        assert_has(&m, "protocol_detect_total", &opaque, true);

        let target = proxy_b.inbound.to_string();
        let dst = [
            ("direction", "outbound"),
            ("peer", "dst"),
            ("target_addr", target.as_str()),
        ];
        let server_id = ("server_id", b.as_str());
        let m = settled(&proxy_a, "tcp_close_total", &dst, server_id, 2.0).await;
        assert_tls_sum(&m, "tcp_open_total", &dst, server_id, 2.0);
        assert_no_plaintext(&m, "tcp_open_total", &dst);
    })
    .await
}

// === 2. Refusals ===

/// A expects identity X at B's address; B holds Y. A's TLS client sends SNI X, which is not
/// B's, so B does not terminate it: it passes the connection through as the application's own
/// TLS (by design, see `app::inbound_conn`). A never completes a handshake, so no request
/// reaches the app, and A answers with its own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_peer_with_another_identity() {
    run(async {
        let expected = identity("someone-else");
        let app = TestServer::start().await;
        let Meshed {
            svc: _svc,
            proxy_a,
            proxy_b,
            ..
        } = Meshed::start(("client", "server"), WEB, app.addr(), Some(&expected)).await;

        let rsp = client::get(proxy_a.outbound, &format!("http://{WEB}/echo?secret=1")).await;
        assert_proxy_error("HTTP/1.1 to the wrong identity", &rsp, 502);
        let err = rsp.header(L5D_PROXY_ERROR).unwrap_or_default();
        assert!(err.contains("TLS") && err.contains(&expected), "{err}");

        let mut h2 = client::http2(proxy_a.outbound).await;
        let rsp = client::send2(&mut h2, client::get_request(&format!("http://{WEB}/echo"))).await;
        assert_proxy_error("HTTP/2 to the wrong identity", &rsp, 502);

        // Opaque TCP: the connection is closed without a byte echoed.
        let echoed = mesh::tcp_echo(proxy_a.local("tcp"), b"\x00never").await;
        assert!(
            echoed.as_ref().is_ok_and(|e| e.is_empty()) || echoed.is_err(),
            "{echoed:?}"
        );

        assert_eq!(app.request_count(), 0, "{:?}", app.requests());
        assert_eventually!(
            proxy_a.metrics().await.sum(
                "response_total",
                &[
                    ("direction", "outbound"),
                    ("error", "tls"),
                    ("status_code", "502")
                ],
            ) == 2.0
        );
        // B saw TLS for a name that is not its own and did not terminate it.
        let m = proxy_b.metrics().await;
        let passthru = [("direction", "inbound"), ("no_tls_reason", "passthru")];
        assert_has(&m, "tcp_open_total", &passthru, true);
        let terminated = [("direction", "inbound"), ("tls", "true")];
        assert_has(&m, "tcp_open_total", &terminated, false);
    })
    .await
}

/// B (identity `server`) with an app, for raw TLS clients.
struct Inbound {
    svc: IdentityService,
    app: TestServer,
    proxy_b: TestProxy,
    b: String,
}

impl Inbound {
    /// Starts B, and checks that a CA-signed client certificate for `raw-client` is accepted:
    /// the positive control for the refusals below.
    async fn start() -> Self {
        let svc = IdentityService::start(default_policy()).await;
        let b = identity("server");
        let app = TestServer::start().await;
        let proxy_b = server_proxy(&svc, &b, app.addr()).await;
        let inbound = Self {
            svc,
            app,
            proxy_b,
            b,
        };

        let good = inbound.svc.ca.valid_leaf(&identity("raw-client"));
        let rsp = inbound
            .request(inbound.client(Some(&good)), client::get_request("/echo"))
            .await
            .expect("a client certificate from the mesh CA is accepted");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let seen = inbound.app.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].headers.get("l5d-client-id").map(|v| v.as_bytes()),
            Some(identity("raw-client").as_bytes())
        );
        inbound
    }

    /// A client that trusts the mesh anchor (B's certificate checks out), presenting `leaf`.
    fn client(&self, leaf: Option<&Leaf>) -> Arc<ClientConfig> {
        mesh::client_config(self.svc.ca.anchor_pem(), leaf)
    }

    /// One request to B over a new TLS connection made with `config`.
    async fn request(
        &self,
        config: Arc<ClientConfig>,
        req: http::Request<client::TestBody>,
    ) -> Result<Reply, String> {
        mesh::tls_request(self.proxy_b.inbound, &self.b, config, req).await
    }

    /// B refuses a client presenting `leaf` in the handshake, with `alert`; and a request made
    /// with such a client fails, if `request`.
    async fn assert_refused(&self, leaf: &Leaf, alert: &str, request: bool) {
        let config = self.client(Some(leaf));
        let refusal = mesh::refused(self.proxy_b.inbound, &self.b, config.clone()).await;
        assert!(refusal.contains(alert), "expected {alert}: {refusal}");
        if request {
            let rsp = self.request(config, client::get_request("/echo")).await;
            assert!(rsp.is_err(), "{rsp:?}");
        }
    }

    /// Only the control request reached the app, and no connection beyond the first
    /// `connections`.
    fn assert_only_the_control(&self, connections: usize) {
        let app = &self.app;
        assert_eq!(
            app.request_count(),
            1,
            "only the control request: {:?}",
            app.requests()
        );
        assert_eq!(
            app.connections(),
            connections,
            "no new connection to the app"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_a_client_certificate_from_another_anchor() {
    run(async {
        let inbound = Inbound::start().await;
        let connections = inbound.app.connections();

        // Two foreign CAs. One is named exactly like ours (every Linkerd cluster's anchor is
        // `root.linkerd.cluster.local`), so B finds a path by name and the signature check
        // fails (`decrypt_error`); the other has another trust domain, so no path to our
        // anchor exists at all (`unknown_ca`). B must not trust the client's certificate.
        for (other, alert) in [
            (Ca::generate(), "DecryptError"),
            (Ca::generate_for("other.example"), "UnknownCA"),
        ] {
            let foreign = other.valid_leaf(&identity("raw-client"));
            inbound.assert_refused(&foreign, alert, true).await;
        }

        inbound.assert_only_the_control(connections);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_an_expired_client_certificate() {
    run(async {
        let inbound = Inbound::start().await;
        let connections = inbound.app.connections();
        let ca = &inbound.svc.ca;

        // Signed by the mesh's own issuer, for a valid name, but expired an hour ago.
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let expired = ca.leaf(&identity("raw-client"), now - 2 * hour, now - hour);
        inbound
            .assert_refused(&expired, "CertificateExpired", true)
            .await;

        // Not yet valid is refused the same way.
        let future = ca.leaf(&identity("raw-client"), now + hour, now + 2 * hour);
        inbound
            .assert_refused(&future, "CertificateExpired", false)
            .await;

        inbound.assert_only_the_control(connections);
    })
    .await
}

/// A client with no certificate at all, on a port whose policy admits unauthenticated clients
/// (the default `all-unauthenticated`): the inbound proxy verifies a client certificate when
/// one is presented but does not require one there (as Linkerd: a proxy still bootstrapping its
/// identity reaches the identity service this way). So the connection is served as TLS
/// *without* a client identity: the app gets no `l5d-client-id` (a forged one is removed) and
/// the metrics carry no `client_id`. Ports that require an identity refuse such a client in
/// the handshake (`attacks.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_serves_a_client_without_a_certificate_without_an_identity() {
    run(async {
        let inbound = Inbound::start().await;

        let mut req = client::get_request("/echo");
        req.headers_mut().insert(
            "l5d-client-id",
            http::HeaderValue::from_str(&identity("forged")).unwrap(),
        );
        let rsp = inbound
            .request(inbound.client(None), req)
            .await
            .expect("served without a client identity");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let seen = inbound.app.requests();
        assert_eq!(seen.len(), 2);
        assert!(
            seen[1].headers.get("l5d-client-id").is_none(),
            "an anonymous client cannot claim an identity: {:?}",
            seen[1].headers
        );

        let m = inbound.proxy_b.metrics().await;
        let anonymous: Vec<_> = m
            .find(
                "tcp_open_total",
                &[("direction", "inbound"), ("tls", "true")],
            )
            .filter(|s| !s.labels.contains_key("client_id"))
            .collect();
        assert_eq!(anonymous.len(), 1, "{}", m.text);
        assert_eq!(anonymous[0].value, 1.0, "{}", m.text);
    })
    .await
}

/// Raw TLS servers as A's endpoint for B's identity: one with a certificate from another trust
/// anchor, one with a mesh certificate for another name. A refuses both before sending a byte
/// of the request. A third, with the right certificate, is the positive control: A completes
/// the handshake, presents its own certificate, and speaks HTTP/2 with `l5d-orig-proto`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_certificate_it_cannot_verify() {
    run(async {
        let svc = IdentityService::start(default_policy()).await;
        let (a, b) = (identity("client"), identity("server"));
        let other = Ca::generate();
        let foreign = TlsPeer::start(other.valid_leaf(&b), svc.ca.roots()).await;
        let misnamed =
            TlsPeer::start(svc.ca.valid_leaf(&identity("not-server")), svc.ca.roots()).await;
        let genuine = TlsPeer::start(svc.ca.valid_leaf(&b), svc.ca.roots()).await;
        let endpoints = [
            meshed_endpoint("foreign.test:80", foreign.addr(), &b),
            meshed_endpoint("misnamed.test:80", misnamed.addr(), &b),
            meshed_endpoint("genuine.test:80", genuine.addr(), &b),
        ]
        .join(";");
        let proxy_a = client_proxy(&svc, &a, &endpoints, &[]).await;

        for (name, peer) in [("foreign", &foreign), ("misnamed", &misnamed)] {
            let rsp = client::get(proxy_a.outbound, &format!("http://{name}.test/echo")).await;
            assert_proxy_error(name, &rsp, 502);
            let err = rsp.header(L5D_PROXY_ERROR).unwrap_or_default();
            assert!(err.contains("TLS handshake"), "{name}: {err}");
            // The server's side of the handshake fails when A aborts it.
            assert_eventually!(peer.failed_handshakes() >= 1, "{name}: no failed handshake");
            assert_eq!(peer.handshakes(), 0, "{name}");
            assert!(peer.requests().is_empty(), "{name}: {:?}", peer.requests());
        }
        let m = proxy_a.metrics().await;
        assert_eq!(
            m.sum(
                "response_total",
                &[("direction", "outbound"), ("error", "tls")]
            ),
            2.0,
            "{}",
            m.text
        );

        let rsp = client::get(proxy_a.outbound, "http://genuine.test/echo").await;
        assert_eq!(rsp.status, 200, "{rsp:?}");
        assert_eq!(rsp.text(), "peer\n");
        assert_eq!(genuine.handshakes(), 1);
        let certs = genuine.client_certs();
        assert_eq!(certs.len(), 1, "A presented a client certificate");
        assert!(mesh::names(&certs[0][0], &a), "A's certificate names A");
        let requests = genuine.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].0, http::Version::HTTP_2);
        assert_eq!(
            requests[0].1.get("l5d-orig-proto").map(|v| v.as_bytes()),
            Some(&b"HTTP/1.1"[..])
        );
    })
    .await
}

/// With `MESH_PROXY_OUTBOUND_UPGRADE_HTTP1=false`, A sends HTTP/1 requests to a meshed
/// endpoint as HTTP/1.1 over mTLS (no `l5d-orig-proto`), reusing the pooled connection: on the
/// wire (a raw TLS peer with B's certificate sees HTTP/1.1 and one handshake for two requests)
/// and through a real B, which still verifies A and hands the app A's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_stays_http1_over_mtls_when_the_upgrade_is_off() {
    run(async {
        let svc = IdentityService::start(default_policy()).await;
        let (a, b) = (identity("client"), identity("server"));
        let app = TestServer::start().await;
        let proxy_b = server_proxy(&svc, &b, app.addr()).await;
        let peer = TlsPeer::start(svc.ca.valid_leaf(&b), svc.ca.roots()).await;
        let endpoints = [
            meshed_endpoint(WEB, proxy_b.inbound, &b),
            meshed_endpoint("peer.test:80", peer.addr(), &b),
        ]
        .join(";");
        let off = [(ENV_OUTBOUND_UPGRADE_HTTP1, "false")];
        let proxy_a = client_proxy(&svc, &a, &endpoints, &off).await;

        let mut h1 = client::http1(proxy_a.outbound).await;
        for _ in 0..2 {
            let req = client::get_request("http://peer.test/echo");
            let rsp = client::send1(&mut h1, req).await;
            assert_eq!(rsp.status, 200, "{rsp:?}");
        }
        assert_eq!(
            peer.handshakes(),
            1,
            "the second request reused the connection"
        );
        let seen = peer.requests();
        assert_eq!(seen.len(), 2);
        for (version, headers) in &seen {
            assert_eq!(*version, http::Version::HTTP_11);
            assert!(headers.get("l5d-orig-proto").is_none(), "{headers:?}");
        }

        let rsp = client::get(proxy_a.outbound, &format!("http://{WEB}/echo")).await;
        assert_eq!(rsp.status, 200, "{rsp:?}");
        assert_eq!(rsp.header("x-req-version"), Some("HTTP/1.1"));
        let seen = app.requests();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let ids: Vec<_> = seen[0].headers.get_all("l5d-client-id").iter().collect();
        assert_eq!(ids, [a.as_str()], "{:?}", seen[0].headers);
        let m = settled(
            &proxy_b,
            "request_total",
            &[("direction", "inbound")],
            ("client_id", &a),
            1.0,
        )
        .await;
        assert_tls_sum(
            &m,
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "src")],
            ("client_id", &a),
            1.0,
        );
    })
    .await
}

/// A meshed endpoint that accepts the TCP connection but never answers the ClientHello (a
/// wedged proxy: the kernel still completes connections into its listen backlog). The
/// handshake is bounded by the outbound connect timeout, so requests and opaque connections
/// fail promptly instead of hanging forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_bounds_a_stalled_handshake() {
    run(async {
        let svc = IdentityService::start(default_policy()).await;
        let (a, b) = (identity("client"), identity("server"));
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        let endpoints = [
            meshed_endpoint(WEB, addr, &b),
            meshed_endpoint(ECHO, addr, &b),
        ]
        .join(";");
        let proxy_a = client_proxy(
            &svc,
            &a,
            &endpoints,
            &[(ENV_OUTBOUND_CONNECT_TIMEOUT, "300ms")],
        )
        .await;

        let rsp = within(
            Duration::from_secs(5),
            "a response despite a silent peer",
            client::get(proxy_a.outbound, &format!("http://{WEB}/echo")),
        )
        .await;
        assert_proxy_error("stalled handshake", &rsp, 504);
        let err = rsp.header(L5D_PROXY_ERROR).unwrap_or_default();
        assert!(err.contains("no handshake within 300ms"), "{err}");
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);

        let echoed = within(
            Duration::from_secs(5),
            "an opaque connection closed despite a silent peer",
            mesh::tcp_echo(proxy_a.local("tcp"), b"\x00hello"),
        )
        .await;
        assert!(
            echoed.as_ref().is_ok_and(|e| e.is_empty()) || echoed.is_err(),
            "{echoed:?}"
        );
    })
    .await
}

// === 3. Rotation under traffic ===

/// Leaves live ~4 s (3 s + 1 s skew), so each proxy renews every ~2.5 s. Traffic runs until
/// every proxy has renewed at least twice: HTTP requests on A's pooled connection to B, and a
/// new opaque connection (a new mTLS handshake, with whatever certificates are current) every
/// 50 ms. Not one may fail, and B must be presenting a new certificate by the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic() {
    run(async {
        let svc =
            IdentityService::start(leaf_policy(Duration::from_secs(3), Duration::from_secs(1)))
                .await;
        let (a, b) = (identity("client"), identity("server"));
        let refresh = [(ENV_IDENTITY_MIN_REFRESH, "100ms")];
        let app = TestServer::start().await;
        let echo = TcpServer::echo().await;
        let app_env = app.addr().to_string();
        let echo_env = echo.addr().to_string();
        let proxy_b = svc
            .proxy(&b, &[(ENV_INBOUND_FORWARD_ADDR, &app_env), refresh[0]])
            .await;
        let proxy_b_tcp = svc
            .proxy(&b, &[(ENV_INBOUND_FORWARD_ADDR, &echo_env), refresh[0]])
            .await;
        let endpoints = [
            meshed_endpoint(WEB, proxy_b.inbound, &b),
            meshed_endpoint(ECHO, proxy_b_tcp.inbound, &b),
        ]
        .join(";");
        let proxy_a = client_proxy(&svc, &a, &endpoints, &refresh).await;

        let probe = mesh::client_config(
            svc.ca.anchor_pem(),
            Some(&svc.ca.valid_leaf(&identity("probe"))),
        );
        let first_cert = mesh::server_chain(proxy_b.inbound, &b, probe.clone()).await;
        assert!(mesh::names(&first_cert[0], &b));

        let traffic = Traffic::start(
            proxy_a.outbound,
            format!("http://{WEB}/echo"),
            Some(proxy_a.local("tcp")),
        );
        let proxies = [("A", &proxy_a), ("B", &proxy_b), ("B (tcp)", &proxy_b_tcp)];
        let mut expiries: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); proxies.len()];
        within(
            Duration::from_secs(20),
            "two renewals of every proxy",
            async {
                loop {
                    for (i, (name, p)) in proxies.iter().enumerate() {
                        let m = p.metrics().await;
                        let e =
                            gauge(&m, CERT_EXPIRY).unwrap_or_else(|| panic!("{name}: {}", m.text));
                        expiries[i].insert(e as u64);
                    }
                    // Past the first certificates' expiry too: from then on a handshake made with
                    // a certificate that was not renewed would be refused.
                    let first_expired = expiries.iter().all(|e| {
                        e.first()
                            .is_some_and(|&f| mesh::unix_now() > f as f64 + 0.5)
                    });
                    if first_expired && expiries.iter().all(|e| e.len() >= 3) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await;
        let (http, tcp) = traffic.stop().await;

        assert_eq!(http.failed, 0, "failed HTTP requests: {:?}", http.failures);
        assert_eq!(tcp.failed, 0, "failed TCP connections: {:?}", tcp.failures);
        assert!(http.ok >= 100, "too little HTTP traffic: {http:?}");
        assert!(tcp.ok >= 20, "too few new connections: {tcp:?}");
        for ((name, _), e) in proxies.iter().zip(&expiries) {
            // Each renewal pushed the expiry forward.
            let e: Vec<_> = e.iter().collect();
            assert!(
                e.len() >= 3 && e.windows(2).all(|w| w[0] < w[1]),
                "{name}: {e:?}"
            );
        }

        // B now presents another certificate, for the same identity, from the same CA.
        let last_cert = mesh::server_chain(proxy_b.inbound, &b, probe).await;
        assert_ne!(
            first_cert[0], last_cert[0],
            "B still presents its first certificate"
        );
        assert!(mesh::names(&last_cert[0], &b));
        // Every request reached the app with A's identity.
        let seen = app.requests();
        assert_eq!(seen.len() as u64, http.ok);
        assert!(seen.iter().all(|s| {
            s.headers
                .get("l5d-client-id")
                .is_some_and(|v| v == a.as_str())
        }));
        assert_eq!(echo.connections() as u64, tcp.ok);
    })
    .await
}

// === 4. Identity service outage ===

/// Renewal is due every second (`MAX_REFRESH`), while certificates last an hour. With the
/// identity service down for well over a renewal interval, traffic (including new mTLS
/// handshakes) keeps flowing on the certificates already held and `/ready` stays 200; when the
/// service comes back on the same port, renewal resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_outage_does_not_interrupt_traffic() {
    run(async {
        let mut svc = IdentityService::start(default_policy()).await;
        let (a, b) = (identity("client"), identity("server"));
        let refresh = [
            (ENV_IDENTITY_MIN_REFRESH, "100ms"),
            (ENV_IDENTITY_MAX_REFRESH, "1s"),
        ];
        let app = TestServer::start().await;
        let echo = TcpServer::echo().await;
        let app_env = app.addr().to_string();
        let echo_env = echo.addr().to_string();
        let mut env_b = vec![(ENV_INBOUND_FORWARD_ADDR, app_env.as_str())];
        env_b.extend_from_slice(&refresh);
        let proxy_b = svc.proxy(&b, &env_b).await;
        let mut env_b_tcp = vec![(ENV_INBOUND_FORWARD_ADDR, echo_env.as_str())];
        env_b_tcp.extend_from_slice(&refresh);
        let proxy_b_tcp = svc.proxy(&b, &env_b_tcp).await;
        let endpoints = [
            meshed_endpoint(WEB, proxy_b.inbound, &b),
            meshed_endpoint(ECHO, proxy_b_tcp.inbound, &b),
        ]
        .join(";");
        let proxy_a = client_proxy(&svc, &a, &endpoints, &refresh).await;
        let proxies = [("A", &proxy_a), ("B", &proxy_b), ("B (tcp)", &proxy_b_tcp)];

        // Stop the service between renewals (none due for 300 ms), so that no Certify call
        // is in flight when it goes down.
        within(
            Duration::from_secs(5),
            "a quiet moment between renewals",
            async {
                loop {
                    let mut next = f64::MAX;
                    for (name, p) in &proxies {
                        let m = p.metrics().await;
                        let due =
                            gauge(&m, CERT_REFRESH).unwrap_or_else(|| panic!("{name}: {}", m.text));
                        next = next.min(due);
                    }
                    if next - mesh::unix_now() > 0.3 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        )
        .await;
        svc.stop().await;
        let mut held = Vec::new();
        for (name, p) in &proxies {
            let m = p.metrics().await;
            let e = gauge(&m, CERT_EXPIRY).unwrap_or_else(|| panic!("{name}: {}", m.text));
            held.push(e);
        }

        // 2.5 s of traffic with the service down: past every proxy's renewal point.
        let traffic = Traffic::start(
            proxy_a.outbound,
            format!("http://{WEB}/echo"),
            Some(proxy_a.local("tcp")),
        );
        let outage = tokio::time::Instant::now() + Duration::from_millis(2500);
        let mut probes = 0;
        while tokio::time::Instant::now() < outage {
            for (name, p) in &proxies {
                assert_eq!(mesh::ready(p.admin).await, 200, "{name} became unready");
            }
            probes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (http, tcp) = traffic.stop().await;
        assert_eq!(http.failed, 0, "failed HTTP requests: {:?}", http.failures);
        assert_eq!(tcp.failed, 0, "failed TCP connections: {:?}", tcp.failures);
        assert!(
            http.ok >= 50 && tcp.ok >= 10,
            "too little traffic: {http:?} {tcp:?}"
        );
        assert!(probes >= 10);

        let now = mesh::unix_now();
        for ((name, p), held) in proxies.iter().zip(&held) {
            let m = p.metrics().await;
            // No certificate was issued while the service was down...
            assert_eq!(gauge(&m, CERT_EXPIRY), Some(*held), "{name}: {}", m.text);
            // ...although renewal was due.
            let due = gauge(&m, CERT_REFRESH).unwrap_or_else(|| panic!("{name}: {}", m.text));
            assert!(due < now, "{name}: renewal not yet due ({due} >= {now})");
        }

        // Back on the same port: every proxy renews on its next retry.
        svc.restart().await;
        for ((name, p), held) in proxies.iter().zip(&held) {
            assert_eventually!(
                gauge(&p.metrics().await, CERT_EXPIRY).is_some_and(|e| e > *held),
                "{name} did not renew after the identity service came back"
            );
        }
        let rsp = client::get(proxy_a.outbound, &format!("http://{WEB}/echo")).await;
        assert_eq!(rsp.status, 200, "{rsp:?}");
    })
    .await
}
