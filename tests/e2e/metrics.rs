//! The admin server: `/metrics` after real traffic, and `/ready`, `/live`, `/proxy-log-level`,
//! `/shutdown`.

use http::Method;
use linkerd_tests::{
    assert_eventually, client, grpc, metrics::Metrics, proxy::TestProxy, run, server::TestServer,
    within,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_metrics_count_real_traffic() {
    run(async {
        const OK: usize = 5;
        const FAILED: usize = 3;
        const OUTBOUND: usize = 2;
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let target = server.addr().to_string();

        let mut c = client::http1(proxy.inbound).await;
        for _ in 0..OK {
            let rsp = client::send1(&mut c, client::get_request("/echo")).await;
            assert_eq!(rsp.status, 200);
        }
        for _ in 0..FAILED {
            let rsp = client::send1(&mut c, client::get_request("/status/500")).await;
            assert_eq!(rsp.status, 500);
        }
        let mut out = client::http1(proxy.outbound).await;
        for _ in 0..OUTBOUND {
            let uri = format!("http://{target}/echo");
            let rsp = client::send1(&mut out, client::get_request(&uri)).await;
            assert_eq!(rsp.status, 200);
        }

        let inbound = [("direction", "inbound"), ("target_addr", target.as_str())];
        let ok = [
            ("direction", "inbound"),
            ("target_addr", target.as_str()),
            ("status_code", "200"),
            ("classification", "success"),
        ];
        let failed = [
            ("direction", "inbound"),
            ("target_addr", target.as_str()),
            ("status_code", "500"),
            ("classification", "failure"),
        ];
        // Responses are recorded when their bodies end, just after the client has read them.
        let mut m: Metrics;
        assert_eventually!(
            {
                m = proxy.metrics().await;
                m.sum("response_total", &ok) == OK as f64
                    && m.sum("response_total", &failed) == FAILED as f64
            },
            "inbound responses in:\n{}",
            m.text
        );
        assert_eq!(m.sum("request_total", &inbound), (OK + FAILED) as f64);
        assert_eq!(
            m.sum("response_total", &[("direction", "inbound")]),
            (OK + FAILED) as f64,
            "no other inbound responses:\n{}",
            m.text
        );
        let inbound_authority = [
            ("direction", "inbound"),
            ("authority", client::DEFAULT_HOST),
        ];
        assert_eq!(
            m.sum("request_total", &inbound_authority),
            (OK + FAILED) as f64
        );

        // The latency histogram: +Inf (and the count) equals the responses; buckets are
        // cumulative.
        let ok_latency = [
            ("direction", "inbound"),
            ("target_addr", target.as_str()),
            ("status_code", "200"),
        ];
        let inf: Vec<(&str, &str)> = ok_latency.iter().copied().chain([("le", "+Inf")]).collect();
        assert_eq!(
            m.sum("response_latency_ms_bucket", &inf),
            OK as f64,
            "{}",
            m.text
        );
        assert_eq!(m.sum("response_latency_ms_count", &ok_latency), OK as f64);
        let buckets: Vec<f64> = m
            .find("response_latency_ms_bucket", &ok_latency)
            .map(|s| s.value)
            .collect();
        // Linkerd's 25 bounds (1 ms to 50 s), 5 sub-millisecond ones below them, and +Inf.
        assert_eq!(buckets.len(), 31, "30 bounds and +Inf");
        for le in [
            "1", "2", "3", "4", "5", "10", "20", "30", "40", "50", "100", "200", "300", "400",
            "500", "1000", "2000", "3000", "4000", "5000", "10000", "20000", "30000", "40000",
            "50000",
        ] {
            let with: Vec<(&str, &str)> = ok_latency.iter().copied().chain([("le", le)]).collect();
            assert_eq!(
                m.find("response_latency_ms_bucket", &with).count(),
                1,
                "le={le}"
            );
        }
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

        // Outbound (proxy mode) traffic is labelled as such, by the authority it named.
        let outbound = [("direction", "outbound"), ("authority", target.as_str())];
        assert_eq!(
            m.sum("request_total", &outbound),
            OUTBOUND as f64,
            "{}",
            m.text
        );
        let outbound_ok = [
            ("direction", "outbound"),
            ("status_code", "200"),
            ("classification", "success"),
        ];
        assert_eventually!(
            proxy.metrics().await.sum("response_total", &outbound_ok) == OUTBOUND as f64
        );

        // TCP: one accepted connection per direction, with bytes both ways.
        for dir in ["inbound", "outbound"] {
            let src = [("direction", dir), ("peer", "src")];
            assert_eq!(m.sum("tcp_open_total", &src), 1.0, "{dir}:\n{}", m.text);
            assert!(
                m.sum("tcp_read_bytes_total", &src) > 0.0,
                "{dir}:\n{}",
                m.text
            );
            assert!(
                m.sum("tcp_write_bytes_total", &src) > 0.0,
                "{dir}:\n{}",
                m.text
            );
            assert_eq!(m.sum("tcp_close_total", &src), 0.0, "{dir}: still open");
            // Upstream connections are counted on the other side (`peer="dst"`); the pool
            // reuses them, so there are at least one and at most one per request.
            let dst = [("direction", dir), ("peer", "dst")];
            let requests = if dir == "inbound" {
                OK + FAILED
            } else {
                OUTBOUND
            };
            let opened = m.sum("tcp_open_total", &dst);
            assert!(
                (1.0..=requests as f64).contains(&opened),
                "{dir}:\n{}",
                m.text
            );
            assert!(
                m.sum("tcp_write_bytes_total", &dst) > 0.0,
                "{dir}:\n{}",
                m.text
            );
            assert!(
                m.sum("tcp_read_bytes_total", &dst) > 0.0,
                "{dir}:\n{}",
                m.text
            );
        }
        let http1 = [
            ("direction", "inbound"),
            ("protocol", "http1"),
            ("reason", "matched"),
        ];
        assert_eq!(m.sum("protocol_detect_total", &http1), 1.0);
        for family in [
            "request_total",
            "response_total",
            "response_latency_ms",
            "tcp_open_total",
            "tcp_close_total",
            "tcp_read_bytes_total",
            "tcp_write_bytes_total",
        ] {
            assert!(m.declares(family), "no # TYPE for {family}");
        }

        // Closing the client connections is counted.
        drop(c);
        drop(out);
        for dir in ["inbound", "outbound"] {
            let src = [("direction", dir), ("peer", "src")];
            assert_eventually!(
                proxy.metrics().await.sum("tcp_close_total", &src) == 1.0,
                "{dir} close"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_responses_carry_grpc_status() {
    run(async {
        let (server, _task) = grpc::serve().await;
        let proxy = TestProxy::inbound_to(server).await;
        let mut dst = grpc::client(proxy.inbound).await;
        let mut stream = dst
            .get(grpc::get_destination("web:80"))
            .await
            .expect("Get")
            .into_inner();
        while stream.message().await.expect("update").is_some() {}
        let err = dst
            .get_profile(grpc::get_destination("web:80"))
            .await
            .expect_err("GetProfile fails");
        assert_eq!(err.code(), tonic::Code::NotFound);

        let ok = [
            ("direction", "inbound"),
            ("grpc_status", "0"),
            ("classification", "success"),
        ];
        let not_found = [
            ("direction", "inbound"),
            ("status_code", "200"),
            ("grpc_status", "5"),
            ("classification", "failure"),
        ];
        let mut m: Metrics;
        assert_eventually!(
            {
                m = proxy.metrics().await;
                m.sum("response_total", &ok) == 1.0 && m.sum("response_total", &not_found) == 1.0
            },
            "gRPC responses in:\n{}",
            m.text
        );
        assert_eq!(m.sum("request_total", &[("direction", "inbound")]), 2.0);
        let http2 = [("direction", "inbound"), ("protocol", "http2")];
        assert_eq!(m.sum("protocol_detect_total", &http2), 1.0);
    })
    .await
}

async fn admin(proxy: &TestProxy, method: Method, path: &str, body: &str) -> client::Reply {
    let mut c = client::http1(proxy.admin).await;
    let req = client::request(method, path, client::full(body.to_string()));
    client::send1(&mut c, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    run(async {
        let proxy = TestProxy::start(&[]).await;

        let rsp = client::get(proxy.admin, "/ready").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let rsp = client::get(proxy.admin, "/live").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let rsp = client::get(proxy.admin, "/no-such-page").await;
        assert_eq!(rsp.status, 404);

        let rsp = client::get(proxy.admin, "/proxy-log-level").await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.text().trim(), "warn");
        let rsp = admin(
            &proxy,
            Method::PUT,
            "/proxy-log-level",
            "info,linkerd_proxy=debug",
        )
        .await;
        assert!(rsp.status.is_success(), "{}: {}", rsp.status, rsp.text());
        let rsp = client::get(proxy.admin, "/proxy-log-level").await;
        assert_eq!(rsp.text().trim(), "info,linkerd_proxy=debug");
        let rsp = admin(&proxy, Method::PUT, "/proxy-log-level", "linkerd=loudest!").await;
        assert_eq!(rsp.status, 400, "{}", rsp.text());
        let rsp = client::get(proxy.admin, "/proxy-log-level").await;
        assert_eq!(rsp.text().trim(), "info,linkerd_proxy=debug", "unchanged");

        let rsp = client::get(proxy.admin, "/shutdown").await;
        assert_eq!(rsp.status, 405, "GET /shutdown");
        let rsp = admin(&proxy, Method::POST, "/shutdown", "").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        within(
            Duration::from_secs(5),
            "the shutdown request",
            proxy.shutdown_requested(),
        )
        .await;
        assert!(proxy.shutdown().await, "drained within the grace period");
    })
    .await
}

/// `/tap` streams each finished request as a JSON line while someone watches, and refuses
/// malformed parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_finished_requests() {
    use http_body_util::BodyExt;
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;

        let rsp = client::get(proxy.admin, "/tap?seconds=0").await;
        assert_eq!(rsp.status, 400, "{}", rsp.text());
        let rsp = client::get(proxy.admin, "/tap?verbose=1").await;
        assert_eq!(rsp.status, 400, "{}", rsp.text());

        // Requests before anyone watches are not reported.
        let rsp = client::get(proxy.inbound, "/echo/before").await;
        assert_eq!(rsp.status, 200);

        let mut admin = client::http1(proxy.admin).await;
        let tap = admin
            .send_request(client::get_request("/tap?seconds=30"))
            .await
            .expect("tap response");
        assert_eq!(tap.status(), 200);
        assert_eq!(
            tap.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/x-ndjson")
        );
        let mut body = tap.into_body();

        let mut c = client::http1(proxy.inbound).await;
        let rsp = client::send1(&mut c, client::get_request("/echo/tapped")).await;
        assert_eq!(rsp.status, 200);
        let rsp = client::send1(&mut c, client::get_request("/status/503")).await;
        assert_eq!(rsp.status, 503);

        let mut text = String::new();
        within(Duration::from_secs(10), "two tap events", async {
            while text.lines().count() < 2 {
                let frame = body.frame().await.expect("tap stream open").expect("frame");
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
        })
        .await;
        let lines: Vec<&str> = text.lines().collect();
        assert!(!text.contains("/echo/before"), "{text}");
        assert!(
            lines[0].starts_with("{\"direction\":\"inbound\",\"method\":\"GET\""),
            "{text}"
        );
        assert!(lines[0].contains("\"path\":\"/echo/tapped\""), "{text}");
        assert!(lines[0].contains("\"status\":200"), "{text}");
        assert!(lines[0].contains("\"tls\":false"), "{text}");
        assert!(lines[0].contains("\"latency_us\":"), "{text}");
        assert!(lines[1].contains("\"path\":\"/status/503\""), "{text}");
        assert!(lines[1].contains("\"status\":503"), "{text}");
    })
    .await;
}

/// A client that takes the response head and stops reading (an ordinary client that did not
/// want the body): the 200 is a success, as Linkerd classifies it, not a failure. A denial is
/// counted on the app's target address, as the allowed requests are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_is_classified_by_its_status() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let target = server.addr().to_string();
        for _ in 0..3 {
            let mut c = client::http1(proxy.inbound).await;
            let rsp = c
                .send_request(client::get_request("/bytes?n=4000000"))
                .await
                .expect("a response head");
            assert_eq!(rsp.status(), 200);
            drop(rsp);
            drop(c);
        }
        let ok = [
            ("direction", "inbound"),
            ("target_addr", target.as_str()),
            ("status_code", "200"),
            ("classification", "success"),
        ];
        let mut m: Metrics;
        assert_eventually!(
            {
                m = proxy.metrics().await;
                m.sum("response_total", &ok) == 3.0
            },
            "{}",
            m.text
        );
        assert_eq!(
            m.sum("response_total", &[("classification", "failure")]),
            0.0,
            "{}",
            m.text
        );
        // Two Host headers: refused (400) by the proxy, counted on the app's address.
        let rsp = client::raw_http(
            proxy.inbound,
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        )
        .await;
        assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
        let refused = [
            ("direction", "inbound"),
            ("target_addr", target.as_str()),
            ("status_code", "400"),
            ("error", "bad_request"),
        ];
        assert_eventually!(
            {
                m = proxy.metrics().await;
                m.sum("response_total", &refused) == 1.0
            },
            "{}",
            m.text
        );
        // Sub-millisecond buckets, and Linkerd's from 1 ms.
        for le in ["0.1", "0.5", "1", "50000"] {
            assert!(
                m.text.contains(&format!("le=\"{le}\"")),
                "no bucket {le}: {}",
                m.text
            );
        }
        assert!(m.text.contains("proxy_build_info{"), "{}", m.text);
    })
    .await;
}
