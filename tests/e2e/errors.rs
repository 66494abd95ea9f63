//! The responses the proxy writes itself: upstream failures, timeouts and bad requests.

use linkerd_proxy::{config::ENV_OUTBOUND_RESPONSE_TIMEOUT, http::L5D_PROXY_ERROR};
use linkerd_tests::{
    assert_eventually,
    client::{self, Reply},
    proxy::TestProxy,
    run,
    server::TestServer,
};

fn assert_proxy_error(name: &str, rsp: &Reply, status: u16) {
    assert_eq!(rsp.status, status, "{name}: {}", rsp.text());
    assert!(
        rsp.header(L5D_PROXY_ERROR).is_some_and(|e| !e.is_empty()),
        "{name}: no {L5D_PROXY_ERROR} header: {:?}",
        rsp.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_bad_gateway() {
    run(async {
        let closed_port = client::closed_port();
        let closed = closed_port.addr();
        let proxy = TestProxy::inbound_to(closed).await;

        let rsp = client::get(proxy.inbound, "/echo").await;
        assert_proxy_error("inbound", &rsp, 502);
        let rsp = client::get(proxy.outbound, &format!("http://{closed}/echo")).await;
        assert_proxy_error("outbound", &rsp, 502);

        let failed = [
            ("status_code", "502"),
            ("classification", "failure"),
            ("error", "connect"),
        ];
        assert_eventually!(proxy.metrics().await.sum("response_total", &failed) == 2.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_service_unavailable() {
    run(async {
        let proxy = TestProxy::start(&[]).await;
        let rsp = client::get(proxy.outbound, "http://nonexistent.invalid/").await;
        assert_proxy_error("outbound", &rsp, 503);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_gateway_timeout() {
    run(async {
        let server = TestServer::start().await;
        let forward = server.addr().to_string();
        let proxy = TestProxy::start(&[
            (linkerd_proxy::config::ENV_INBOUND_FORWARD_ADDR, &forward),
            (ENV_OUTBOUND_RESPONSE_TIMEOUT, "200ms"),
        ])
        .await;
        // The timeout is the outbound side's: inbound, the application may take its time.
        let rsp = client::get(proxy.inbound, "/delay?ms=500").await;
        assert_eq!(rsp.status, 200, "inbound: {}", rsp.text());
        let uri = format!("http://{}/delay?ms=10000", server.addr());
        let rsp = client::get(proxy.outbound, &uri).await;
        assert_proxy_error("outbound", &rsp, 504);
        // Fast requests are unaffected.
        let rsp = client::get(proxy.inbound, "/delay?ms=0").await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.text(), "delayed\n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_is_bad_request_and_the_proxy_keeps_serving() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        for addr in [proxy.inbound, proxy.outbound] {
            // The request line parses (so detection says HTTP/1); the next line is no header.
            let raw = b"GET /echo HTTP/1.1\r\nHost: app.test\r\nthis is not a header\r\n\r\n";
            let rsp = client::raw_http(addr, raw).await;
            assert!(rsp.starts_with("HTTP/1.1 400"), "{addr}: {rsp:?}");
        }
        assert_eq!(
            server.request_count(),
            0,
            "a malformed request was forwarded"
        );

        let rsp = client::get(proxy.inbound, "/echo").await;
        assert_eq!(rsp.status, 200);
        let rsp = client::get(proxy.outbound, &format!("http://{}/echo", server.addr())).await;
        assert_eq!(rsp.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_request_without_host_is_bad_request() {
    run(async {
        let proxy = TestProxy::start(&[]).await;
        for raw in [
            &b"GET /echo HTTP/1.1\r\n\r\n"[..],
            &b"GET /echo HTTP/1.0\r\n\r\n"[..],
        ] {
            let rsp = client::raw_http(proxy.outbound, raw).await;
            assert!(rsp.starts_with("HTTP/1."), "{rsp:?}");
            assert!(rsp[..12].ends_with(" 400"), "{rsp:?}");
            assert!(
                rsp.to_ascii_lowercase().contains(L5D_PROXY_ERROR),
                "{rsp:?}"
            );
        }
    })
    .await
}
