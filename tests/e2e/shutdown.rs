//! The proxy as a process: graceful shutdown on SIGTERM, and configuration errors.

use crate::PROXY_BIN;
use linkerd_proxy::config::{ENV_CORES, ENV_INBOUND_FORWARD_ADDR, ENV_SHUTDOWN_GRACE_PERIOD};
use linkerd_tests::{
    assert_eventually, client,
    proxy::{ProxyProcess, proxy_command},
    run,
    server::TestServer,
    within,
};
use std::time::Duration;
use tokio::{net::TcpStream, time::Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    run(async {
        let server = TestServer::start().await;
        let forward = server.addr().to_string();
        let mut proxy = ProxyProcess::spawn(
            PROXY_BIN,
            &[
                (ENV_SHUTDOWN_GRACE_PERIOD, "10s"),
                (ENV_INBOUND_FORWARD_ADDR, &forward),
            ],
        )
        .await;
        let inbound = proxy.inbound;

        // A request the server answers after 3 s, in flight when SIGTERM arrives.
        let in_flight = tokio::spawn(async move { client::get(inbound, "/delay?ms=3000").await });
        assert_eventually!(server.request_count() == 1);
        let term = Instant::now();
        proxy.signal("TERM").await;
        assert!(
            !in_flight.is_finished(),
            "the request finished before SIGTERM"
        );

        // The listeners close at once: new connections are refused.
        assert_eventually!(
            TcpStream::connect(inbound).await.is_err(),
            "inbound still accepting after SIGTERM"
        );
        // The admin server stays up while draining, and reports not ready.
        let ready = client::get(proxy.admin, "/ready").await;
        assert_eq!(ready.status, 503, "{}", ready.text());
        assert!(
            !in_flight.is_finished(),
            "listeners closed only after the in-flight request"
        );

        let rsp = in_flight.await.unwrap();
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.text(), "delayed\n");

        let status = within(Duration::from_secs(8), "the proxy's exit", proxy.wait()).await;
        assert_eq!(status.code(), Some(0), "{status}: {}", proxy.stderr());
        let took = term.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "exit took {took:?}: the drain waited for the grace period"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_exits_with_usage_status() {
    run(async {
        let out = proxy_command(PROXY_BIN)
            .env(ENV_CORES, "zero")
            .kill_on_drop(true)
            .output()
            .await
            .expect("run the proxy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(linkerd_proxy::EX_USAGE)),
            "{}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains(ENV_CORES),
            "stderr does not name the variable: {stderr}"
        );
        assert!(
            stderr.contains("zero"),
            "stderr does not show the value: {stderr}"
        );
    })
    .await
}
