//! Prior-knowledge HTTP/2 through the inbound listener.

use bytes::Bytes;
use http::{Method, Version};
use hyper::body::Frame;
use linkerd_tests::{client, proxy::TestProxy, run, server::TestServer, within};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_one_connection() {
    run(async {
        const STREAMS: usize = 64;
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let base = format!("http://{}", proxy.inbound);
        let mut c = client::http2(proxy.inbound).await;

        // The first request opens the proxy's HTTP/2 connection to the server...
        let rsp = client::send2(&mut c, client::get_request(&format!("{base}/echo"))).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.header("x-req-version"), Some("HTTP/2.0"));

        // ...which every concurrent stream then shares.
        let mut tasks = Vec::new();
        for i in 0..STREAMS {
            let mut c = c.clone();
            let uri = format!("{base}/echo?stream={i}");
            tasks.push(tokio::spawn(async move {
                let req = client::request(Method::POST, &uri, client::full(format!("body {i}")));
                let rsp = client::send2(&mut c, req).await;
                (i, rsp)
            }));
        }
        for t in tasks {
            let (i, rsp) = t.await.unwrap();
            assert_eq!(rsp.status, 200, "stream {i}");
            assert_eq!(rsp.text(), format!("body {i}"), "stream {i}");
            let path = format!("/echo?stream={i}");
            assert_eq!(rsp.header("x-req-path"), Some(path.as_str()), "stream {i}");
        }
        assert_eq!(server.request_count(), STREAMS + 1);
        assert!(
            server
                .requests()
                .iter()
                .all(|s| s.version == Version::HTTP_2),
            "the proxy downgraded an HTTP/2 request"
        );
        assert_eq!(
            server.connections(),
            1,
            "the proxy should multiplex every stream on one upstream connection"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let mut c = client::http2(proxy.inbound).await;

        // Request trailers go up; the server reflects them in its response trailers.
        let (tx, body) = client::channel_body(2);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-req-trailer", "from-client".parse().unwrap());
        tx.send(Frame::data(Bytes::from("some data")))
            .await
            .unwrap();
        tx.send(Frame::trailers(trailers)).await.unwrap();
        drop(tx);
        let uri = format!("http://{}/trailers", proxy.inbound);
        let rsp = client::send2(&mut c, client::request(Method::POST, &uri, body)).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.text(), "trailers\n");
        let trailers = rsp.trailers.expect("response trailers");
        assert_eq!(trailers["x-trailer"], "done");
        assert_eq!(trailers["x-req-trailer"], "from-client");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_respect_flow_control() {
    run(async {
        // 8 MiB each way is far beyond HTTP/2's initial 64 KiB windows: the proxy must keep
        // releasing capacity on both connections.
        const LEN: usize = 8 * 1024 * 1024;
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let mut c = client::http2(proxy.inbound).await;
        let expected = linkerd_tests::pattern(LEN);

        let uri = format!("http://{}/echo", proxy.inbound);
        let body = client::streamed_pattern(LEN, 64 * 1024);
        let rsp = client::send2(&mut c, client::request(Method::POST, &uri, body)).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.header("x-req-len"), Some("8388608"));
        assert!(rsp.body == expected, "echoed body differs");

        let uri = format!("http://{}/bytes?n={LEN}", proxy.inbound);
        let rsp = client::send2(&mut c, client::get_request(&uri)).await;
        assert_eq!(rsp.body.len(), LEN);
        assert!(rsp.body == expected, "streamed body differs");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_proxy_mode_routes_by_authority() {
    run(async {
        // Without iptables, an HTTP/2 client of the outbound listener names its target in
        // :authority.
        let server = TestServer::start().await;
        let proxy = TestProxy::start(&[]).await;
        let mut c = client::http2(proxy.outbound).await;
        for i in 0..3 {
            let uri = format!("http://{}/echo?i={i}", server.addr());
            let rsp = client::send2(&mut c, client::get_request(&uri)).await;
            assert_eq!(rsp.status, 200, "{}", rsp.text());
            assert_eq!(rsp.header("x-req-version"), Some("HTTP/2.0"));
            let path = format!("/echo?i={i}");
            assert_eq!(rsp.header("x-req-path"), Some(path.as_str()));
        }
        assert_eq!(server.request_count(), 3);
        let authority = server.addr().to_string();
        for seen in server.requests() {
            assert_eq!(
                seen.uri.authority().map(|a| a.as_str()),
                Some(authority.as_str())
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_stream_concurrently() {
    run(async {
        // What gRPC bidirectional streaming needs.
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let mut c = client::http2(proxy.inbound).await;
        let (tx, body) = client::channel_body(1);
        let uri = format!("http://{}/duplex", proxy.inbound);
        c.ready().await.unwrap();
        let head = c.send_request(client::request(Method::POST, &uri, body));
        let rsp = within(Duration::from_secs(10), "the response head", head)
            .await
            .expect("response head");
        crate::http1::duplex_exchange("http2", rsp, tx).await;
    })
    .await
}
