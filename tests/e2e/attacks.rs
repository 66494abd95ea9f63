//! The sidecar tried as an attacker would, over real sockets: each test reproduces one way
//! around inbound policy or one way to make the proxy grow, and checks it is closed.
//!
//! - TLS with the proxy's SNI and no client certificate is not authenticated.
//! - A pause (or silence) before a request never turns HTTP into opaque TCP past HTTP policy.
//! - Requests for the proxy's own listeners, or that went round too many proxies, are refused.
//! - HTTP/2 streams reset together with their HEADERS (rapid reset, over many connections) never
//!   reach the application.
//! - A head that trickles is cut off (header-read timeout); a listener holds a bounded number
//!   of connections.
//! - Malformed HTTP/1 gets 400; HTTP-proxy mode reaches only what it may; a dead endpoint
//!   costs no request.

use linkerd_proxy::{
    config::{
        ENV_CORES, ENV_HTTP_HEADER_READ_TIMEOUT, ENV_INBOUND_DEFAULT_POLICY,
        ENV_INBOUND_FORWARD_ADDR, ENV_INBOUND_MAX_CONNECTIONS, ENV_INBOUND_PORTS,
        ENV_OUTBOUND_PROXY_ALLOW, ENV_POLICY_CLUSTER_NETWORKS, ENV_POLICY_SVC_ADDR,
        ENV_POLICY_WORKLOAD, ENV_STATIC_ENDPOINTS,
    },
    http::L5D_PROXY_ERROR,
};
use linkerd_tests::{
    assert_eventually, attack, client,
    mesh::{self, IdentityService, identity, leaf_policy},
    policy::{PolicyServer, mtls_any, server, unauthenticated},
    proxy::{ProxyProcess, TestProxy},
    run,
    server::TestServer,
};
use std::{net::SocketAddr, time::Duration};
use tokio::{io::AsyncWriteExt, net::TcpStream};

const WORKLOAD: &str = r#"{"ns":"shop","pod":"api-0"}"#;

fn policy() -> linkerd_identity::ca::LeafPolicy {
    leaf_policy(Duration::from_secs(3600), Duration::from_secs(20))
}

/// The three clients of an inbound port that requires authentication: TLS with the proxy's
/// name and no certificate (refused in the handshake, which asks for one), plaintext (403), and
/// a client with a mesh certificate (200).
async fn only_a_verified_identity_gets_through(svc: &IdentityService, proxy: &TestProxy, b: &str) {
    let anon = mesh::client_config(svc.ca.anchor_pem(), None);
    let refusal = mesh::refused(proxy.inbound, b, anon.clone()).await;
    assert!(refusal.contains("CertificateRequired"), "{refusal}");
    let rsp = mesh::tls_request(proxy.inbound, b, anon, client::get_request("/echo")).await;
    assert!(
        rsp.as_ref().is_err(),
        "a TLS client without a certificate was served: {rsp:?}"
    );

    let rsp = client::get(proxy.inbound, "/echo").await;
    assert_eq!(rsp.status, 403, "plaintext: {}", rsp.text());

    let good = svc.ca.valid_leaf(&identity("web"));
    let config = mesh::client_config(svc.ca.anchor_pem(), Some(&good));
    let rsp = mesh::tls_request(proxy.inbound, b, config, client::get_request("/echo"))
        .await
        .expect("a mesh certificate is accepted");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
}

/// Authenticated means a verified client identity: in the proxy's own default policies, in
/// what the policy service sends, and before the policy service has answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_a_client_certificate_is_not_authenticated() {
    run(async {
        let svc = IdentityService::start(policy()).await;
        let app = TestServer::start().await;
        let app_addr = app.addr().to_string();
        let b = identity("api");

        for default in ["all-authenticated", "cluster-authenticated"] {
            let proxy = svc
                .proxy(
                    &b,
                    &[
                        (ENV_INBOUND_FORWARD_ADDR, &app_addr),
                        (ENV_INBOUND_DEFAULT_POLICY, default),
                        (ENV_POLICY_CLUSTER_NETWORKS, "127.0.0.0/8"),
                    ],
                )
                .await;
            only_a_verified_identity_gets_through(&svc, &proxy, &b).await;
        }

        // The policy service's "any identity" (what Linkerd's controller sends for
        // all-authenticated), on a port that declares HTTP/1.
        let policies = PolicyServer::start(WORKLOAD).await;
        let port = app.addr().port().to_string();
        policies.set(
            app.addr().port(),
            server("api-http", false, vec![mtls_any("any-identity")]),
        );
        let policy_addr = policies.addr.to_string();
        let proxy = svc
            .proxy(
                &b,
                &[
                    (ENV_INBOUND_FORWARD_ADDR, &app_addr),
                    (ENV_POLICY_SVC_ADDR, &policy_addr),
                    (ENV_POLICY_WORKLOAD, WORKLOAD),
                    (ENV_INBOUND_PORTS, &port),
                ],
            )
            .await;
        only_a_verified_identity_gets_through(&svc, &proxy, &b).await;

        // A policy service that never answers: the default applies meanwhile.
        let silent = client::closed_port();
        let silent_addr = silent.addr().to_string();
        let vars = svc.proxy_env(&b);
        let mut env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend([
            (ENV_INBOUND_FORWARD_ADDR, app_addr.as_str()),
            (ENV_INBOUND_DEFAULT_POLICY, "all-authenticated"),
            (ENV_POLICY_SVC_ADDR, silent_addr.as_str()),
            (ENV_POLICY_WORKLOAD, WORKLOAD),
            (ENV_INBOUND_PORTS, port.as_str()),
        ]);
        let proxy = TestProxy::start(&env).await;
        let good = svc.ca.valid_leaf(&identity("web"));
        let config = mesh::client_config(svc.ca.anchor_pem(), Some(&good));
        // Serving (certified) although the policy service never answers.
        assert_eventually!({
            let rsp =
                mesh::tls_request(proxy.inbound, &b, config.clone(), client::get_request("/"))
                    .await;
            rsp.is_ok_and(|r| r.status == 200)
        });
        only_a_verified_identity_gets_through(&svc, &proxy, &b).await;

        // Only the requests with a client certificate reached the app.
        for seen in app.requests() {
            assert_eq!(
                seen.headers.get("l5d-client-id").map(|v| v.as_bytes()),
                Some(identity("web").as_bytes()),
                "{seen:?}"
            );
        }
    })
    .await;
}

/// Writes `parts` one after another, each after its pause, then reads one response.
async fn paced(addr: SocketAddr, parts: &[(Duration, &[u8])]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    for (pause, bytes) in parts {
        tokio::time::sleep(*pause).await;
        // The proxy may already have answered and closed (a refused connection).
        if s.write_all(bytes).await.is_err() {
            break;
        }
    }
    client::read_raw_response(&mut s).await
}

/// Longer than the proxy's default detect timeout (1 s).
const PAUSE: Duration = Duration::from_millis(1500);

const FORGED: &[u8] = b"GET /echo HTTP/1.1\r\nHost: api\r\nl5d-client-id: admin.forged\r\n\r\n";

/// A client that sends the first byte of its request, waits past the detect timeout and sends
/// the rest is still served as HTTP: a forged `l5d-client-id` is removed. So is one from a
/// client that waited before sending anything (a server-speaks-first wait that turns out to be
/// HTTP). A port whose policy has routes of its own never relays opaque TCP past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_never_turns_http_into_opaque_tcp() {
    run(async {
        let app = TestServer::start().await;
        let proxy = TestProxy::inbound_to(app.addr()).await;

        let rsp = paced(
            proxy.inbound,
            &[(Duration::ZERO, &FORGED[..1]), (PAUSE, &FORGED[1..])],
        )
        .await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        let rsp = paced(proxy.inbound, &[(PAUSE, FORGED)]).await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        let seen = app.requests();
        assert_eq!(seen.len(), 2, "{seen:?}");
        for s in &seen {
            assert!(
                s.headers.get("l5d-client-id").is_none(),
                "a forged client id reached the app: {s:?}"
            );
        }
        let m = proxy.metrics().await;
        assert_eq!(
            m.sum(
                "protocol_detect_total",
                &[
                    ("direction", "inbound"),
                    ("protocol", "http1"),
                    ("reason", "timeout")
                ]
            ),
            1.0,
            "the paused request counts as a timeout that found HTTP: {}",
            m.text
        );

        // A Server that declares HTTP/1, authorizes everyone, and routes only `/public`: `/admin`
        // matches no route (404). Before, a pause relayed `/admin` to the app as opaque TCP.
        let policies = PolicyServer::start(WORKLOAD).await;
        let port = app.addr().port();
        policies.set(port, admin_route_server());
        let (app_addr, port_s, policy_addr) = (
            app.addr().to_string(),
            port.to_string(),
            policies.addr.to_string(),
        );
        let proxy = TestProxy::start(&[
            (ENV_INBOUND_FORWARD_ADDR, &app_addr),
            (ENV_POLICY_SVC_ADDR, &policy_addr),
            (ENV_POLICY_WORKLOAD, WORKLOAD),
            (ENV_INBOUND_PORTS, &port_s),
        ])
        .await;
        assert_eventually!(client::get(proxy.inbound, "/admin").await.status == 404);
        let admin = b"GET /admin HTTP/1.1\r\nHost: api\r\n\r\n";
        // Only the requests before the policy arrived reached the app.
        let admitted = app.requests().len();
        for parts in [
            vec![(Duration::ZERO, &admin[..1]), (PAUSE, &admin[1..])],
            vec![(PAUSE, &admin[..])],
        ] {
            let rsp = paced(proxy.inbound, &parts).await;
            assert!(rsp.starts_with("HTTP/1.1 404"), "{rsp}");
        }
        // Not HTTP at all: still not relayed to the app.
        let before = app.connections();
        let rsp = paced(
            proxy.inbound,
            &[(Duration::ZERO, b"\x16\x03\x01garbage\r\n\r\n")],
        )
        .await;
        assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
        assert_eq!(app.requests().len(), admitted, "{:?}", app.requests());
        assert_eq!(app.connections(), before, "no opaque connection to the app");
    })
    .await;
}

/// HTTP/1, everyone authorized on the server, and one route: `/public`.
fn admin_route_server() -> linkerd2_proxy_api::inbound::Server {
    use linkerd2_proxy_api::{
        http_route as r,
        inbound::{self, proxy_protocol},
        meta::{Metadata, Resource, metadata},
    };
    let public = inbound::HttpRoute {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Resource(Resource {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
                name: "public".into(),
                ..Default::default()
            })),
        }),
        hosts: vec![],
        authorizations: vec![],
        rules: vec![inbound::http_route::Rule {
            matches: vec![r::HttpRouteMatch {
                path: Some(r::PathMatch {
                    kind: Some(r::path_match::Kind::Prefix("/public".into())),
                }),
                ..Default::default()
            }],
            filters: vec![],
        }],
    };
    let mut s = server("api-http", false, vec![unauthenticated("everyone")]);
    s.protocol = Some(inbound::ProxyProtocol {
        kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
            routes: vec![public],
            local_rate_limit: None,
        })),
    });
    s
}

/// A request whose target is the proxy itself (any of its listeners), or that has been through
/// more proxies than any call chain has, is answered 508 and goes nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_the_proxy_itself_are_refused_not_looped() {
    run(async {
        let app = TestServer::start().await;
        let proxy = TestProxy::inbound_to(app.addr()).await;
        for target in [proxy.outbound, proxy.inbound, proxy.admin] {
            for path in ["/", "/shutdown"] {
                let req = format!(
                    "POST http://{target}{path} HTTP/1.1\r\nHost: {target}\r\ncontent-length: 0\r\n\r\n"
                );
                let rsp = client::raw_http(proxy.outbound, req.as_bytes()).await;
                assert!(rsp.starts_with("HTTP/1.1 508"), "{target}{path}: {rsp}");
                assert!(
                    rsp.to_ascii_lowercase().contains("l5d-proxy-error: loop detected"),
                    "{rsp}"
                );
            }
            // `Host` alone (origin-form), and HTTP/2.
            let req = format!("GET / HTTP/1.1\r\nHost: {target}\r\n\r\n");
            let rsp = client::raw_http(proxy.outbound, req.as_bytes()).await;
            assert!(rsp.starts_with("HTTP/1.1 508"), "{target}: {rsp}");
            let mut h2 = client::http2(proxy.outbound).await;
            let rsp = client::send2(
                &mut h2,
                client::get_request(&format!("http://{target}/")),
            )
            .await;
            assert_eq!(rsp.status, 508, "{target}: {}", rsp.text());
            // CONNECT to the proxy itself.
            let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            let rsp = client::raw_http(proxy.outbound, req.as_bytes()).await;
            assert!(rsp.starts_with("HTTP/1.1 508"), "CONNECT {target}: {rsp}");
        }
        // `/shutdown` never arrived: the proxy still serves.
        let rsp = client::get(proxy.inbound, "/echo").await;
        assert_eq!(rsp.status, 200);

        // Hops: the proxy adds itself; past the limit a request is a loop.
        let url = format!("http://{}/echo", app.addr());
        let rsp = client::get(proxy.outbound, &url).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(
            app.requests()
                .last()
                .and_then(|s| s.headers.get("l5d-proxy-hops").cloned()),
            Some(http::HeaderValue::from_static("1"))
        );
        let mut c = client::http1(proxy.outbound).await;
        for (hops, status) in [("31", 200), ("32", 508), ("x", 400)] {
            let mut req = client::get_request(&url);
            req.headers_mut()
                .insert("l5d-proxy-hops", http::HeaderValue::from_static(hops));
            let rsp = client::send1(&mut c, req).await;
            assert_eq!(rsp.status, status, "hops {hops}: {}", rsp.text());
        }

        // Nothing looped: a handful of requests in all.
        let m = proxy.metrics().await;
        let total = m.sum("request_total", &[("direction", "outbound")]);
        assert!(total <= 40.0, "{total} outbound requests: {}", m.text);
    })
    .await;
}

/// HTTP/2 clients that send a GET and reset it in the same packet, on many connections: the
/// application never sees those requests, a well-behaved client on its own connection gets
/// every answer, and the proxy's memory comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_over_many_connections_never_reach_the_app() {
    run(async {
        let app = TestServer::start().await;
        let app_addr = app.addr().to_string();
        // Two worker threads: a stream's task may run on the other thread than its connection's.
        let proxy = ProxyProcess::spawn(
            crate::PROXY_BIN,
            &[(ENV_INBOUND_FORWARD_ADDR, &app_addr), (ENV_CORES, "2")],
        )
        .await;
        let idle = attack::rss_kib(proxy.pid());

        let good = tokio::spawn({
            let inbound = proxy.inbound;
            async move {
                let mut c = client::http2(inbound).await;
                let mut statuses = Vec::new();
                for _ in 0..300 {
                    let rsp = client::send2(&mut c, client::get_request("http://api/echo")).await;
                    statuses.push((rsp.status.as_u16(), rsp.text()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            }
        });

        const CONNECTIONS: usize = 400;
        const STREAMS: u32 = 19;
        let mut open = Vec::new();
        for i in 0..CONNECTIONS {
            if let Some(s) =
                attack::rapid_reset(proxy.inbound, "api", "/delay?ms=200", STREAMS).await
            {
                open.push(s);
            }
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let statuses = good.await.expect("the well-behaved client");
        let cancelled = open.len() * STREAMS as usize;
        let reached = app.requests().iter().filter(|s| s.uri.path() == "/delay").count();
        assert!(
            statuses.iter().all(|(s, _)| *s == 200),
            "the well-behaved client got {:?} ({reached} of {cancelled} cancelled streams reached the app)",
            statuses.iter().filter(|(s, _)| *s != 200).collect::<Vec<_>>()
        );
        assert!(
            reached * 20 < cancelled,
            "{reached} of {cancelled} cancelled streams reached the app"
        );
        drop(open);
        // Memory comes back once the attack's connections are gone.
        let mut rss = attack::rss_kib(proxy.pid());
        for _ in 0..150 {
            if rss <= 2 * idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            rss = attack::rss_kib(proxy.pid());
        }
        assert!(rss <= 2 * idle, "RSS {rss} KiB after the attack, {idle} KiB idle");
    })
    .await;
}

/// Heads that trickle are cut off at the header-read timeout; past its connection limit the
/// listener closes new connections at once; a well-behaved client is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_off_and_connections_are_bounded() {
    run(async {
        let app = TestServer::start().await;
        let app_addr = app.addr().to_string();
        let proxy = ProxyProcess::spawn(
            crate::PROXY_BIN,
            &[
                (ENV_INBOUND_FORWARD_ADDR, &app_addr),
                (ENV_HTTP_HEADER_READ_TIMEOUT, "2s"),
                (ENV_INBOUND_MAX_CONNECTIONS, "300"),
            ],
        )
        .await;
        let mut good = client::http1(proxy.inbound).await;
        // A first head that comes in pieces, each well within the timeout, is served.
        let pause = Duration::from_millis(300);
        let rsp = paced(
            proxy.inbound,
            &[
                (Duration::ZERO, &b"GET /echo HT"[..]),
                (pause, b"TP/1.1\r\nHost: a\r"),
                (pause, b"\n\r\n"),
            ],
        )
        .await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");

        let mut slow = Vec::new();
        for _ in 0..250 {
            slow.push(attack::partial_head(proxy.inbound).await.expect("connect"));
        }
        // One byte more now and then does not help.
        for s in slow.iter_mut().take(50) {
            let _ = s.write_all(b"x").await;
        }
        let rsp = client::send1(&mut good, client::get_request("/echo")).await;
        assert_eq!(rsp.status, 200);

        // Over the limit (250 slow + 1 good + 49 more = 300): closed at once.
        let mut extra = Vec::new();
        for _ in 0..60 {
            extra.push(TcpStream::connect(proxy.inbound).await.expect("connect"));
        }
        let mut refused = 0;
        for s in &mut extra {
            if attack::closed_within(s, Duration::from_millis(500)).await {
                refused += 1;
            }
        }
        assert_eq!(refused, 11, "connections past the limit are closed at once");
        drop(extra);

        for s in &mut slow {
            assert!(
                attack::closed_within(s, Duration::from_secs(5)).await,
                "a slow head outlived the header-read timeout"
            );
        }
        let rsp = client::send1(&mut good, client::get_request("/echo")).await;
        assert_eq!(rsp.status, 200, "the well-behaved connection survives");
        assert!(
            app.requests().iter().all(|s| s.uri.path() == "/echo"),
            "{:?}",
            app.requests()
        );

        let m = linkerd_tests::metrics::scrape(proxy.admin).await;
        assert_eq!(
            m.sum(
                "proxy_connections_refused_total",
                &[("listener", "inbound")]
            ),
            11.0,
            "{}",
            m.text
        );
        assert_eq!(
            m.sum(
                "proxy_http_header_read_timeouts_total",
                &[("direction", "inbound")]
            ),
            250.0,
            "every slow head is cut off by the timeout, and counted: {}",
            m.text
        );
    })
    .await;
}

/// Requests nginx and Envoy refuse are refused here too, before they reach the app: two
/// `Host` headers, HTTP/1.1 without `Host`, an invalid method token, a malformed chunked body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_is_the_clients_error() {
    run(async {
        let app = TestServer::start().await;
        let proxy = TestProxy::inbound_to(app.addr()).await;
        for (what, req) in [
            (
                "two Host headers",
                &b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            ),
            ("no Host", b"GET /echo HTTP/1.1\r\n\r\n"),
            ("an invalid method", b"G@T /echo HTTP/1.1\r\nHost: a\r\n\r\n"),
            (
                "a malformed chunk",
                b"POST /echo HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            ),
        ] {
            let rsp = client::raw_http(proxy.inbound, req).await;
            assert!(rsp.starts_with("HTTP/1.1 400"), "{what}: {rsp}");
        }
        // The chunked request's head did reach the app before its body failed; the others
        // never did.
        let seen: Vec<_> = app.requests().iter().map(|s| s.method.clone()).collect();
        assert!(
            seen.iter().all(|m| m == http::Method::POST),
            "{seen:?}"
        );
        // A head larger than the proxy buffers (64 KiB) is refused and never reaches the app.
        let mut big = b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 70 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        let rsp = client::raw_http(proxy.inbound, &big).await;
        assert!(rsp.starts_with("HTTP/1.1 431"), "an oversized head: {rsp}");
        assert!(app.requests().iter().all(|s| s.uri.path() != "/big"));
        // HTTP/1.0 needs no Host.
        let rsp = client::raw_http(proxy.inbound, b"GET /echo HTTP/1.0\r\n\r\n").await;
        assert!(rsp.starts_with("HTTP/1.0 200") || rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    })
    .await;
}

/// The outbound listener as an HTTP proxy (local mode) reaches mesh destinations and external
/// addresses, not what is on the host: loopback, the admin ports, link-local metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_mode_is_not_an_open_door_to_the_host() {
    run(async {
        let app = TestServer::start().await;
        let name = "api.local:80";
        let statics = format!("{name}={}", app.addr());
        let proxy = TestProxy::start(&[
            (ENV_OUTBOUND_PROXY_ALLOW, "external"),
            (ENV_STATIC_ENDPOINTS, &statics),
        ])
        .await;
        // A mesh destination.
        let rsp = client::get(proxy.outbound, &format!("http://{name}/echo")).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        // The same app by address, and an admin port on this host: refused. (Link-local and
        // external addresses are covered by `transport`'s unit tests: no test sends traffic off
        // loopback.)
        let admin_like = SocketAddr::from(([127, 0, 0, 1], 4191));
        for target in [app.addr(), admin_like] {
            let rsp = client::get(proxy.outbound, &format!("http://{target}/")).await;
            assert_eq!(rsp.status, 403, "{target}: {}", rsp.text());
            let err = rsp.header(L5D_PROXY_ERROR).unwrap_or_default();
            assert!(err.contains("MESH_PROXY_OUTBOUND_PROXY_ALLOW"), "{err}");
            let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            let rsp = client::raw_http(proxy.outbound, req.as_bytes()).await;
            assert!(rsp.starts_with("HTTP/1.1 403"), "CONNECT {target}: {rsp}");
        }
        assert_eq!(app.request_count(), 1, "{:?}", app.requests());

        // What the operator allows is reachable.
        let allowed = app.addr().to_string();
        let proxy = TestProxy::start(&[(ENV_OUTBOUND_PROXY_ALLOW, &allowed)]).await;
        let rsp = client::get(proxy.outbound, &format!("http://{allowed}/echo")).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
    })
    .await;
}

/// One of two endpoints is gone: its connect fails before anything is sent, so the request goes
/// to the other one. No request fails, while the dead one is probed and backed off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_costs_no_request() {
    run(async {
        let app = TestServer::start().await;
        let dead = client::closed_port();
        let name = "api.local:80";
        let statics = format!("{name}={}|{}", dead.addr(), app.addr());
        let proxy = TestProxy::start(&[(ENV_STATIC_ENDPOINTS, &statics)]).await;
        let url = format!("http://{name}/echo");
        let mut failed = Vec::new();
        for i in 0..200 {
            // New connections too, so that no single pooled connection hides the choice.
            let rsp = if i % 10 == 0 {
                client::get(proxy.outbound, &url).await
            } else {
                let mut c = client::http1(proxy.outbound).await;
                client::send1(&mut c, client::get_request(&url)).await
            };
            if rsp.status != 200 {
                failed.push((i, rsp.status, rsp.text()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(app.request_count(), 200);
    })
    .await;
}
