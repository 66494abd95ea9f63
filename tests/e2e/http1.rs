//! HTTP/1.1 through the inbound listener (forwarding to the app) and the outbound listener in
//! HTTP-proxy mode (absolute-form request targets).

use bytes::Bytes;
use http::{Method, header};
use http_body_util::BodyExt;
use linkerd_proxy::config::ENV_STATIC_ENDPOINTS;
use linkerd_tests::{
    client::{self, TestBody},
    pattern,
    proxy::TestProxy,
    run,
    server::TestServer,
    within,
};
use std::{collections::HashSet, net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EIGHT_MIB: usize = 8 * 1024 * 1024;

/// Where to send requests so that they reach `server`: the proxy address and the request
/// target to use, for the inbound listener (origin-form) and outbound proxy mode (absolute).
fn targets(proxy: &TestProxy, server: &TestServer) -> [(&'static str, SocketAddr, String); 2] {
    [
        ("inbound", proxy.inbound, String::new()),
        (
            "outbound",
            proxy.outbound,
            format!("http://{}", server.addr()),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_inbound() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;

        let rsp = client::get(proxy.inbound, "/echo?x=1").await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.header("x-req-method"), Some("GET"));
        assert_eq!(rsp.header("x-req-path"), Some("/echo?x=1"));
        assert_eq!(rsp.header("x-req-version"), Some("HTTP/1.1"));
        assert_eq!(rsp.header("x-req-host"), Some(client::DEFAULT_HOST));

        let mut c = client::http1(proxy.inbound).await;
        let req = client::request(Method::POST, "/echo", client::full("hello, app"));
        let rsp = client::send1(&mut c, req).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.header("x-req-method"), Some("POST"));
        assert_eq!(rsp.body, "hello, app");

        // HEAD: headers only, and the connection stays in sync for the next request.
        let rsp = client::send1(
            &mut c,
            client::request(Method::HEAD, "/echo", client::empty()),
        )
        .await;
        assert_eq!(rsp.status, 200);
        assert!(rsp.body.is_empty());
        let req = client::request(Method::PUT, "/echo", client::full("after HEAD"));
        let rsp = client::send1(&mut c, req).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.body, "after HEAD");

        let seen = server.requests();
        let methods: Vec<Method> = seen.iter().map(|s| s.method.clone()).collect();
        assert_eq!(
            methods,
            [Method::GET, Method::POST, Method::HEAD, Method::PUT]
        );
        assert_eq!(seen[0].uri, "/echo?x=1");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_outbound_proxy_mode() {
    run(async {
        let server = TestServer::start().await;
        let endpoints = format!("web.test:80={}", server.addr());
        let proxy = TestProxy::start(&[(ENV_STATIC_ENDPOINTS, &endpoints)]).await;

        // An IP:port authority goes to that address.
        let uri = format!("http://{}/echo?y=2", server.addr());
        let rsp = client::get(proxy.outbound, &uri).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.header("x-req-method"), Some("GET"));
        let host = server.addr().to_string();
        assert_eq!(rsp.header("x-req-host"), Some(host.as_str()));

        // POST with a body; the upstream receives an origin-form request target.
        let mut c = client::http1(proxy.outbound).await;
        let uri = format!("http://{}/echo", server.addr());
        let req = client::request(Method::POST, &uri, client::full("posted"));
        let rsp = client::send1(&mut c, req).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.body, "posted");
        assert_eq!(rsp.header("x-req-path"), Some("/echo"));

        // A logical name is resolved through the static endpoints, and keeps its Host.
        let rsp = client::get(proxy.outbound, "http://web.test/echo").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.header("x-req-host"), Some("web.test"));

        let seen = server.requests();
        assert_eq!(seen.len(), 3);
        for s in &seen {
            assert!(
                s.uri.scheme().is_none() && s.uri.authority().is_none(),
                "upstream got a non-origin-form target: {}",
                s.uri
            );
        }
        assert_eq!(seen[1].method, Method::POST);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_connections() {
    run(async {
        const REQUESTS: usize = 20;
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        for (name, addr, prefix) in targets(&proxy, &server) {
            let before = server.connections();
            let mut c = client::http1(addr).await;
            for i in 0..REQUESTS {
                let rsp = client::send1(&mut c, client::get_request(&format!("{prefix}/echo"))).await;
                assert_eq!(rsp.status, 200, "{name}: request {i}: {}", rsp.text());
            }
            let upstream = server.connections() - before;
            assert!(
                upstream < REQUESTS,
                "{name}: {REQUESTS} requests on one client connection used {upstream} upstream connections"
            );
        }
        // One client connection per listener, each carrying every request.
        let m = proxy.metrics().await;
        for dir in ["inbound", "outbound"] {
            let opened = m.sum("tcp_open_total", &[("direction", dir), ("peer", "src")]);
            assert_eq!(opened, 1.0, "{dir} client connections:\n{}", m.text);
            let requests = m.sum("request_total", &[("direction", dir)]);
            assert_eq!(requests, REQUESTS as f64, "{dir} requests:\n{}", m.text);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        for (name, addr, prefix) in targets(&proxy, &server) {
            let mut c = client::http1(addr).await;
            let mut req = client::get_request(&format!("{prefix}/echo"));
            let h = req.headers_mut();
            h.insert(header::CONNECTION, "x-foo".parse().unwrap());
            h.insert("x-foo", "named by Connection".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert(
                header::PROXY_AUTHORIZATION,
                "Basic c2VjcmV0".parse().unwrap(),
            );
            h.insert("x-ordinary", "kept".parse().unwrap());
            let rsp = client::send1(&mut c, req).await;
            assert_eq!(rsp.status, 200, "{name}");

            let seen = server
                .requests()
                .pop()
                .expect("the request reached the server");
            let got = &seen.headers;
            for hop in ["x-foo", "keep-alive", "proxy-authorization"] {
                assert!(
                    !got.contains_key(hop),
                    "{name}: upstream saw {hop}: {got:?}"
                );
            }
            assert!(
                got.get_all(header::CONNECTION)
                    .iter()
                    .all(|v| !v.to_str().unwrap_or("").contains("x-foo")),
                "{name}: upstream saw Connection: x-foo: {got:?}"
            );
            assert_eq!(got["x-ordinary"], "kept", "{name}");

            // And the other way: hop-by-hop response headers stop at the proxy.
            let rsp = client::send1(&mut c, client::get_request(&format!("{prefix}/hop"))).await;
            assert_eq!(rsp.status, 200, "{name}");
            assert_eq!(rsp.header("x-resp-ordinary"), Some("yes"), "{name}");
            assert!(
                rsp.header("x-resp-secret").is_none(),
                "{name}: {:?}",
                rsp.headers
            );
            assert!(
                rsp.header("keep-alive").is_none(),
                "{name}: {:?}",
                rsp.headers
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_bodies_arrive_intact() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let expected = pattern(EIGHT_MIB);
        for (name, addr, prefix) in targets(&proxy, &server) {
            let mut c = client::http1(addr).await;

            // 8 MiB up (streamed in 64 KiB chunks, chunked encoding) and the same 8 MiB back.
            let body = client::streamed_pattern(EIGHT_MIB, 64 * 1024);
            let req = client::request(Method::POST, &format!("{prefix}/echo"), body);
            let rsp = client::send1(&mut c, req).await;
            assert_eq!(rsp.status, 200, "{name}");
            assert_eq!(rsp.header("x-req-len"), Some("8388608"), "{name}");
            assert!(rsp.body == expected, "{name}: echoed body differs");

            // 8 MiB streamed down.
            let uri = format!("{prefix}/bytes?n={EIGHT_MIB}");
            let rsp = client::send1(&mut c, client::get_request(&uri)).await;
            assert_eq!(rsp.status, 200, "{name}");
            assert_eq!(rsp.body.len(), EIGHT_MIB, "{name}");
            assert!(rsp.body == expected, "{name}: streamed body differs");
        }
    })
    .await
}

/// Reads the next non-empty data frame of a response body, failing if none arrives within
/// 10 s. (HTTP/2 may end a stream with an empty DATA frame.)
async fn next_data(body: &mut hyper::body::Incoming, what: &str) -> Option<Bytes> {
    loop {
        let frame = within(Duration::from_secs(10), what, body.frame()).await?;
        let frame = frame.expect("response body frame");
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return Some(data);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_responses_are_not_buffered() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        for (name, addr, prefix) in targets(&proxy, &server) {
            // The server sends its first chunk and then waits for us: the first chunk can only
            // arrive if the proxy forwards it without waiting for the rest of the body.
            let mut c = client::http1(addr).await;
            let head = c.send_request(client::get_request(&format!("{prefix}/gated")));
            let rsp = within(Duration::from_secs(10), "the response head", head)
                .await
                .expect("response head");
            assert_eq!(rsp.status(), 200, "{name}");
            let mut body = rsp.into_body();
            let first = next_data(&mut body, "the first chunk while the server waits").await;
            assert_eq!(first.as_deref(), Some(&b"first\n"[..]), "{name}");
            server.open_gate();
            let mut rest = Vec::new();
            while let Some(d) = next_data(&mut body, "the rest of the body").await {
                rest.extend_from_slice(&d);
            }
            assert_eq!(rest, b"second\nlast\n", "{name}");

            // A slow body arrives chunk by chunk, complete.
            let uri = format!("{prefix}/slow?chunks=5&ms=50");
            c.ready()
                .await
                .expect("connection ready for another request");
            let rsp = c
                .send_request(client::get_request(&uri))
                .await
                .expect("response head");
            let mut body = rsp.into_body();
            let mut frames: Vec<Bytes> = Vec::new();
            while let Some(d) = next_data(&mut body, "a slow chunk").await {
                frames.push(d);
            }
            let all: Vec<u8> = frames.concat();
            let expected: String = (0..5).map(|i| format!("chunk {i}\n")).collect();
            assert_eq!(String::from_utf8_lossy(&all), expected, "{name}");
            assert!(frames.len() > 1, "{name}: one frame for a slow body");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients() {
    run(async {
        // Several client connections at once, each with several requests: every response
        // belongs to its own request.
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let mut tasks = Vec::new();
        for client_id in 0..8 {
            let addr = proxy.inbound;
            tasks.push(tokio::spawn(async move {
                let mut c = client::http1(addr).await;
                let mut seen = HashSet::new();
                for i in 0..10 {
                    let body: TestBody = client::full(format!("client {client_id} request {i}"));
                    let req = client::request(Method::POST, "/echo", body);
                    let rsp = client::send1(&mut c, req).await;
                    assert_eq!(rsp.status, 200);
                    assert_eq!(rsp.text(), format!("client {client_id} request {i}"));
                    seen.insert(rsp.text());
                }
                seen.len()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 10);
        }
        assert_eq!(server.request_count(), 80);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue() {
    run(async {
        // What curl does for large uploads: send the head, wait for `100 Continue`, then the
        // body. Without the interim response the client stalls (curl for a second).
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let mut s = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        within(Duration::from_secs(10), "100 Continue", async {
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        let interim = String::from_utf8_lossy(&got).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");

        s.write_all(b"hello").await.unwrap();
        let mut rest = Vec::new();
        within(Duration::from_secs(10), "the final response", async {
            while !String::from_utf8_lossy(&rest).ends_with("hello") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&rest));
                rest.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        let rsp = String::from_utf8_lossy(&rest).into_owned();
        let final_rsp = rsp.trim_start_matches(interim.as_str());
        assert!(final_rsp.contains("HTTP/1.1 200"), "{rsp:?}");
        assert_eq!(server.request_count(), 1);
    })
    .await
}

/// Sends messages on a request body and expects each echoed on the response body before the
/// next is sent: the request and response stream at the same time through the proxy.
pub async fn duplex_exchange(
    name: &str,
    rsp: http::Response<hyper::body::Incoming>,
    tx: tokio::sync::mpsc::Sender<hyper::body::Frame<Bytes>>,
) {
    assert_eq!(rsp.status(), 200, "{name}");
    let mut body = rsp.into_body();
    for i in 0..5 {
        let msg = Bytes::from(format!("message {i}"));
        tx.send(hyper::body::Frame::data(msg.clone()))
            .await
            .unwrap();
        let echoed = next_data(&mut body, "an echoed message").await;
        assert_eq!(echoed, Some(msg), "{name}");
    }
    drop(tx);
    assert_eq!(
        next_data(&mut body, "the end of the body").await,
        None,
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_stream_concurrently() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        for (name, addr, prefix) in targets(&proxy, &server) {
            let mut c = client::http1(addr).await;
            let (tx, body) = client::channel_body(1);
            let req = client::request(Method::POST, &format!("{prefix}/duplex"), body);
            let head = c.send_request(req);
            let rsp = within(Duration::from_secs(10), "the response head", head)
                .await
                .expect("response head");
            duplex_exchange(name, rsp, tx).await;
        }
    })
    .await
}

/// A request whose request line is longer than the proxy's detection buffer (1 KiB): query
/// strings of several KiB are common.
fn long_query() -> String {
    "q=".to_string() + &"x".repeat(6 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_request_target_inbound() {
    run(async {
        // Detection gives up on a request line that does not fit its buffer and forwards the
        // connection as opaque TCP: the request still reaches the application intact.
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        let uri = format!("/echo?{}", long_query());
        let rsp = client::get(proxy.inbound, &uri).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.header("x-req-path"), Some(uri.as_str()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_request_target_outbound_proxy_mode() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::start(&[]).await;
        let uri = format!("http://{}/echo?{}", server.addr(), long_query());
        let rsp = client::get(proxy.outbound, &uri).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let m = proxy.metrics().await;
        assert_eq!(
            m.sum("request_total", &[("direction", "outbound")]),
            1.0,
            "{}",
            m.text
        );
    })
    .await
}
