//! Inbound authorization over real mTLS: a policy service (real gRPC) tells the server-side
//! proxy which client identities may call its app; the proxy answers others 403 and closes
//! opaque connections it does not authorize; an update applies to the next request on the
//! same connection; without the policy service the local default decides.

use linkerd_proxy::{
    config::{
        ENV_INBOUND_DEFAULT_POLICY, ENV_INBOUND_FORWARD_ADDR, ENV_INBOUND_OPAQUE_PORTS,
        ENV_INBOUND_PORTS, ENV_LOCAL_LISTENERS, ENV_POLICY_SVC_ADDR, ENV_POLICY_WORKLOAD,
        ENV_STATIC_ENDPOINTS,
    },
    http::L5D_PROXY_ERROR,
};
use linkerd_tests::{
    assert_eventually, client,
    mesh::{self, IdentityService, identity, leaf_policy, meshed_endpoint},
    policy::{PolicyServer, mtls_identities, server, unauthenticated, with_rate_limit},
    proxy::TestProxy,
    run,
    server::TestServer,
    tcp::TcpServer,
};
use linkerd2_proxy_api::inbound::Server;
use std::time::Duration;

const WEB: &str = "web.test:80";
const WORKLOAD: &str = r#"{"ns":"shop","pod":"api-0"}"#;

/// A proxy certified as `id` in front of `app`, whose inbound follows `policies` for the
/// app's port.
async fn policed(
    svc: &IdentityService,
    id: &str,
    app: std::net::SocketAddr,
    policies: &PolicyServer,
) -> TestProxy {
    let (app_addr, port, policy_addr) = (
        app.to_string(),
        app.port().to_string(),
        policies.addr.to_string(),
    );
    svc.proxy(
        id,
        &[
            (ENV_INBOUND_FORWARD_ADDR, &app_addr),
            (ENV_POLICY_SVC_ADDR, &policy_addr),
            (ENV_POLICY_WORKLOAD, WORKLOAD),
            (ENV_INBOUND_PORTS, &port),
        ],
    )
    .await
}

fn policy() -> linkerd_identity::ca::LeafPolicy {
    leaf_policy(Duration::from_secs(3600), Duration::from_secs(20))
}

/// The identity service; an app behind the proxy of `api`, whose inbound follows a policy
/// service for the app's port; and two callers, `web` and `batch`, whose proxies know it as
/// [`WEB`].
struct Api {
    svc: IdentityService,
    web: String,
    batch: String,
    app: TestServer,
    port: u16,
    policies: PolicyServer,
    proxy_api: TestProxy,
    proxy_web: TestProxy,
    proxy_batch: TestProxy,
    /// `/echo` at [`WEB`].
    url: String,
}

impl Api {
    /// `first` makes the policy for the app's port that `api`'s proxy starts with, given the
    /// identities of `web` and `batch`.
    async fn start(first: impl FnOnce(&str, &str) -> Server) -> Self {
        let svc = IdentityService::start(policy()).await;
        let (web, batch, api) = (identity("web"), identity("batch"), identity("api"));
        let app = TestServer::start().await;
        let port = app.addr().port();
        let policies = PolicyServer::start(WORKLOAD).await;
        policies.set(port, first(&web, &batch));
        let proxy_api = policed(&svc, &api, app.addr(), &policies).await;
        let endpoints = meshed_endpoint(WEB, proxy_api.inbound, &api);
        let proxy_web = svc.proxy(&web, &[(ENV_STATIC_ENDPOINTS, &endpoints)]).await;
        let proxy_batch = svc
            .proxy(&batch, &[(ENV_STATIC_ENDPOINTS, &endpoints)])
            .await;
        Self {
            svc,
            web,
            batch,
            app,
            port,
            policies,
            proxy_api,
            proxy_web,
            proxy_batch,
            url: format!("http://{WEB}/echo"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authorized_identities_reach_the_app() {
    run(async {
        let Api {
            svc: _svc,
            web,
            batch,
            app: _app,
            port,
            policies,
            proxy_api,
            proxy_web,
            proxy_batch,
            url,
        } = Api::start(|web, _| {
            server("api-http", false, vec![mtls_identities("web-only", &[web])])
        })
        .await;

        // The policy arrives shortly after start; until then the default (allow) applies.
        let mut batch_conn = client::http1(proxy_batch.outbound).await;
        assert_eventually!({
            let rsp = client::send1(&mut batch_conn, client::get_request(&url)).await;
            rsp.status == 403
        });
        let rsp = client::send1(&mut batch_conn, client::get_request(&url)).await;
        assert_eq!(rsp.status, 403, "{}", rsp.text());
        let err = rsp.header(L5D_PROXY_ERROR).unwrap_or_default().to_string();
        assert!(err.contains("unauthorized"), "{err}");

        let rsp = client::get(proxy_web.outbound, &url).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());

        // Plaintext straight to the inbound proxy: no identity, not authorized.
        let rsp = client::get(proxy_api.inbound, "/echo").await;
        assert_eq!(rsp.status, 403, "{}", rsp.text());

        // gRPC callers get PERMISSION_DENIED instead of a 403.
        let mut req = client::request(http::Method::POST, &url, client::empty());
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        let rsp = client::send1(&mut batch_conn, req).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.header("grpc-status"), Some("7"), "{:?}", rsp.headers);

        // An update applies to the next request on the same connection.
        policies.set(
            port,
            server(
                "api-http",
                false,
                vec![mtls_identities("web-and-batch", &[&web, &batch])],
            ),
        );
        assert_eventually!({
            let rsp = client::send1(&mut batch_conn, client::get_request(&url)).await;
            rsp.status == 200
        });

        let m = proxy_api.metrics().await;
        let allow = m.sum(
            "inbound_http_authz_allow_total",
            &[("srv_name", "api-http"), ("authz_name", "web-only")],
        );
        assert!(allow >= 1.0, "{}", m.text);
        let deny = m.sum(
            "inbound_http_authz_deny_total",
            &[("srv_kind", "server"), ("srv_name", "api-http")],
        );
        assert!(deny >= 3.0, "{}", m.text);
        assert!(
            m.sum(
                "inbound_http_authz_allow_total",
                &[("authz_name", "web-and-batch")]
            ) >= 1.0,
            "{}",
            m.text
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_connections_are_authorized_once_and_closed_when_refused() {
    run(async {
        let svc = IdentityService::start(policy()).await;
        let (web, db) = (identity("web"), identity("db"));
        let echo = TcpServer::echo().await;
        let port = echo.addr().port();
        let policies = PolicyServer::start(WORKLOAD).await;
        // Nobody is authorized yet.
        policies.set(port, server("db-tcp", true, vec![]));
        let proxy_db = policed(&svc, &db, echo.addr(), &policies).await;
        let target = "db.test:5000";
        let endpoints = meshed_endpoint(target, proxy_db.inbound, &db);
        let local = format!("tcp=127.0.0.1:0>{target}");
        let proxy_web = svc
            .proxy(
                &web,
                &[
                    (ENV_STATIC_ENDPOINTS, &endpoints),
                    (ENV_LOCAL_LISTENERS, &local),
                ],
            )
            .await;
        let data = mesh::opaque_payload(4096);
        // Refused: the connection is closed without a byte echoed.
        assert_eventually!(
            mesh::tcp_echo(proxy_web.local("tcp"), &data)
                .await
                .map_or(true, |e| e.is_empty())
        );
        // Until the policy arrived, the default (allow) applied; from now on nothing gets through.
        let before = echo.connections();
        for _ in 0..3 {
            let refused = mesh::tcp_echo(proxy_web.local("tcp"), &data).await;
            assert!(
                refused.as_ref().map_or(true, |e| e.is_empty()),
                "{refused:?}"
            );
        }
        assert_eq!(
            echo.connections(),
            before,
            "a refused connection reached the app"
        );

        policies.set(
            port,
            server("db-tcp", true, vec![mtls_identities("web-db", &[&web])]),
        );
        assert_eventually!(
            mesh::tcp_echo(proxy_web.local("tcp"), &data)
                .await
                .is_ok_and(|e| e == data)
        );
        let m = proxy_db.metrics().await;
        assert!(
            m.sum("inbound_tcp_authz_deny_total", &[("srv_name", "db-tcp")]) >= 1.0,
            "{}",
            m.text
        );
        assert!(
            m.sum("inbound_tcp_authz_allow_total", &[("authz_name", "web-db")]) >= 1.0,
            "{}",
            m.text
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_default_decides_without_a_policy_service() {
    run(async {
        let app = TestServer::start().await;
        let echo = TcpServer::echo().await;
        // deny: HTTP gets 403, an opaque port's connection is closed.
        let proxy = TestProxy::start(&[
            (ENV_INBOUND_FORWARD_ADDR, &app.addr().to_string()),
            (ENV_INBOUND_DEFAULT_POLICY, "deny"),
        ])
        .await;
        let rsp = client::get(proxy.inbound, "/echo").await;
        assert_eq!(rsp.status, 403, "{}", rsp.text());
        let m = proxy.metrics().await;
        assert_eq!(
            m.sum(
                "inbound_http_authz_deny_total",
                &[("srv_kind", "default"), ("srv_name", "deny")]
            ),
            1.0,
            "{}",
            m.text
        );

        let opaque = TestProxy::start(&[
            (ENV_INBOUND_FORWARD_ADDR, &echo.addr().to_string()),
            (ENV_INBOUND_OPAQUE_PORTS, &echo.addr().port().to_string()),
            (ENV_INBOUND_DEFAULT_POLICY, "all-authenticated"),
        ])
        .await;
        let data = mesh::opaque_payload(1024);
        let refused = mesh::tcp_echo(opaque.inbound, &data).await;
        assert!(
            refused.as_ref().map_or(true, |e| e.is_empty()),
            "{refused:?}"
        );
        assert_eq!(echo.connections(), 0);

        // all-unauthenticated (the default) lets the same traffic through.
        let open = TestProxy::start(&[
            (ENV_INBOUND_FORWARD_ADDR, &echo.addr().to_string()),
            (ENV_INBOUND_OPAQUE_PORTS, &echo.addr().port().to_string()),
        ])
        .await;
        let echoed = mesh::tcp_echo(open.inbound, &data).await.expect("echo");
        assert!(echoed == data);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_default_policy_is_a_startup_error() {
    run(async {
        // An unknown default; a policy service without the workload to ask it about.
        for (var, value, named) in [
            (
                ENV_INBOUND_DEFAULT_POLICY,
                "allow-everyone",
                ENV_INBOUND_DEFAULT_POLICY,
            ),
            (ENV_POLICY_SVC_ADDR, "127.0.0.1:8090", ENV_POLICY_WORKLOAD),
        ] {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-proxy"))
                .env(var, value)
                .output()
                .await
                .expect("run the proxy");
            assert_eq!(out.status.code(), Some(64));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(named), "{stderr}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_policy_and_the_default_serves_meanwhile() {
    run(async {
        let app = TestServer::start().await;
        let closed = client::closed_port();
        let port = app.addr().port().to_string();
        let proxy = TestProxy::start(&[
            (ENV_INBOUND_FORWARD_ADDR, &app.addr().to_string()),
            (ENV_POLICY_SVC_ADDR, &closed.addr().to_string()),
            (ENV_POLICY_WORKLOAD, WORKLOAD),
            (ENV_INBOUND_PORTS, &port),
        ])
        .await;
        let rsp = client::get(proxy.admin, "/ready").await;
        assert_eq!(rsp.status, 503, "{}", rsp.text());
        assert!(rsp.text().contains("inbound policy"), "{}", rsp.text());
        // The local default (all-unauthenticated) decides until the service answers.
        let rsp = client::get(proxy.inbound, "/echo").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_rate_limit_answers_429_beyond_each_identitys_budget() {
    run(async {
        // 40 requests per second in total, 15 per client identity.
        let Api {
            svc: _svc,
            app,
            policies: _policies,
            proxy_api,
            proxy_web,
            proxy_batch,
            url,
            ..
        } = Api::start(|_, _| {
            with_rate_limit(
                server("api-http", false, vec![unauthenticated("anyone")]),
                40,
                Some(15),
            )
        })
        .await;

        // A burst of 30 from one identity: its 15 pass (plus what refills meanwhile).
        let mut conn = client::http1(proxy_web.outbound).await;
        let mut statuses = Vec::new();
        for _ in 0..30 {
            let rsp = client::send1(&mut conn, client::get_request(&url)).await;
            if rsp.status == 429 {
                let err = rsp.header(L5D_PROXY_ERROR).unwrap_or_default().to_string();
                assert!(err.contains("rate limited"), "{err}");
            }
            statuses.push(rsp.status.as_u16());
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(ok + limited, 30, "{statuses:?}");
        assert!((15..=20).contains(&ok), "{ok} of 30 passed: {statuses:?}");
        // Another identity has its own budget.
        let mut conn_b = client::http1(proxy_batch.outbound).await;
        let rsp = client::send1(&mut conn_b, client::get_request(&url)).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let mut ok_b = 1;
        // gRPC callers get RESOURCE_EXHAUSTED once the identity's budget is spent.
        for _ in 0..20 {
            let rsp = client::send1(&mut conn_b, client::get_request(&url)).await;
            ok_b += usize::from(rsp.status == 200);
        }
        let mut req = client::request(http::Method::POST, &url, client::empty());
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        let rsp = client::send1(&mut conn_b, req).await;
        assert_eq!(rsp.header("grpc-status"), Some("8"), "{:?}", rsp.headers);

        let m = proxy_api.metrics().await;
        let counted = m.sum(
            "inbound_http_local_ratelimit_rate_limited_total",
            &[("srv_name", "api-http"), ("ratelimit_name", "api-limit")],
        );
        assert!(counted >= (limited + 1) as f64, "{}", m.text);
        // Only requests within the limits reached the app.
        assert_eq!(app.request_count(), ok + ok_b);
    })
    .await;
}
