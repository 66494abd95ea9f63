//! HTTP/1.1 upgrades (WebSocket-style): 101, then raw bytes both ways; `CONNECT` tunnels
//! through the outbound listener in proxy mode; and an HTTP/2 `CONNECT` to an application
//! that is itself a forward proxy.

use http::header;
use hyper_util::rt::TokioIo;
use linkerd_tests::{
    client, pattern, proxy::TestProxy, run, server::TestServer, tcp::TcpServer, within,
};
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn upgrade_and_echo(name: &str, addr: SocketAddr, uri: &str) {
    let mut c = client::http1(addr).await;
    let mut req = client::get_request(uri);
    let h = req.headers_mut();
    h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
    h.insert(header::UPGRADE, "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-key",
        "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
    );
    h.insert("sec-websocket-version", "13".parse().unwrap());
    let rsp = c.send_request(req).await.expect("upgrade response");
    assert_eq!(rsp.status(), 101, "{name}");
    assert_eq!(rsp.headers()[header::UPGRADE], "websocket", "{name}");
    let upgraded = hyper::upgrade::on(rsp).await.expect("upgraded connection");
    let mut io = TokioIo::new(upgraded);

    within(Duration::from_secs(10), "upgraded traffic", async {
        // Server to client, unprompted.
        let mut greeting = [0u8; 20];
        io.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello from upstream\n", "{name}");

        // Client to server and back: a small message, then 256 KiB of binary.
        io.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        io.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping", "{name}");

        let data = pattern(256 * 1024);
        let (mut r, mut w) = tokio::io::split(io);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            // Closing our side ends the server's echo, which closes the tunnel.
            w.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        r.read_to_end(&mut echoed).await.unwrap();
        writer.await.unwrap();
        assert!(echoed == data, "{name}: echoed {} bytes", echoed.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_then_raw_bytes_both_ways() {
    run(async {
        let server = TestServer::start().await;
        let proxy = TestProxy::inbound_to(server.addr()).await;
        upgrade_and_echo("inbound", proxy.inbound, "/upgrade").await;
        let uri = format!("http://{}/upgrade", server.addr());
        upgrade_and_echo("outbound", proxy.outbound, &uri).await;

        let seen = server.requests();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            assert_eq!(s.headers[header::UPGRADE], "websocket");
            assert_eq!(s.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_in_proxy_mode() {
    run(async {
        let echo = TcpServer::echo().await;
        let proxy = TestProxy::start(&[]).await;
        let mut c = client::http1(proxy.outbound).await;
        let authority = echo.addr().to_string();
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority.as_str())
            .header(header::HOST, authority.as_str())
            .body(client::empty())
            .unwrap();
        let rsp = c.send_request(req).await.expect("CONNECT response");
        assert_eq!(rsp.status(), 200);
        let mut io = TokioIo::new(hyper::upgrade::on(rsp).await.expect("tunnel"));
        within(Duration::from_secs(10), "tunnelled echo", async {
            io.write_all(b"through the tunnel").await.unwrap();
            let mut buf = [0u8; 18];
            io.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"through the tunnel");
        })
        .await;
        assert_eq!(echo.connections(), 1);

        // A tunnel to where nothing listens is refused with the proxy's error.
        let closed_port = client::closed_port();
        let closed = closed_port.addr().to_string();
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(closed.as_str())
            .header(header::HOST, closed.as_str())
            .body(client::empty())
            .unwrap();
        let mut c = client::http1(proxy.outbound).await;
        let rsp = c.send_request(req).await.expect("CONNECT response");
        assert_eq!(rsp.status(), 502);
        assert!(rsp.headers().contains_key("l5d-proxy-error"));
    })
    .await
}

/// An application that is itself a forward proxy: it answers an HTTP/1.1 `CONNECT` with 200,
/// then echoes. Returns its address and the request heads it read.
async fn connect_echo_app() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connect_reaches_the_app_as_an_http1_connect_tunnel() {
    run(async {
        let (app, heads) = connect_echo_app().await;
        let proxy = TestProxy::inbound_to(app).await;
        let mut c = client::http2(proxy.inbound).await;
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("example.test:443")
            .body(client::empty())
            .unwrap();
        let rsp = c.send_request(req).await.expect("CONNECT response");
        assert_eq!(rsp.status(), 200);
        assert!(!rsp.headers().contains_key(header::CONNECTION));
        let mut io = TokioIo::new(hyper::upgrade::on(rsp).await.expect("tunnel"));
        within(
            Duration::from_secs(10),
            "echo through the HTTP/2 tunnel",
            async {
                io.write_all(b"over one stream").await.unwrap();
                let mut buf = [0u8; 15];
                io.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"over one stream");
            },
        )
        .await;
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1);
        assert!(
            heads[0].starts_with("CONNECT example.test:443 HTTP/1.1\r\n"),
            "{heads:?}"
        );
    })
    .await
}
