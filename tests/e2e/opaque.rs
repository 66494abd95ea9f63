//! Opaque TCP: local listeners forwarding to a logical service, half-close, servers that speak
//! first (on opaque ports and after the detect timeout), and non-HTTP client bytes.

use linkerd_proxy::config::{
    ENV_INBOUND_DETECT_TIMEOUT, ENV_INBOUND_FORWARD_ADDR, ENV_INBOUND_OPAQUE_PORTS,
    ENV_LOCAL_LISTENERS, ENV_STATIC_ENDPOINTS,
};
use linkerd_tests::{
    assert_eventually, pattern,
    proxy::TestProxy,
    run,
    tcp::{BANNER, TcpServer},
    within,
};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Writes `data` and half-closes, while reading the echo to its end.
async fn echo_round_trip(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        // Keep the write half (and so the socket) open until the reader is done.
        w
    });
    let mut echoed = Vec::new();
    within(
        Duration::from_secs(10),
        "the echo after a half-close",
        r.read_to_end(&mut echoed),
    )
    .await
    .unwrap();
    drop(writer.await.unwrap());
    echoed
}

async fn local_listener_proxy(endpoints: &[SocketAddr]) -> TestProxy {
    let addrs: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    let static_endpoints = format!("db.test:5432={}", addrs.join("|"));
    TestProxy::start(&[
        (ENV_LOCAL_LISTENERS, "db=127.0.0.1:0>db.test:5432"),
        (ENV_STATIC_ENDPOINTS, &static_endpoints),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_listener_echo() {
    run(async {
        let echo = TcpServer::echo().await;
        let proxy = local_listener_proxy(&[echo.addr()]).await;
        let addr = proxy.local("db");

        // Interactive: each message is echoed before the next is sent.
        let mut s = TcpStream::connect(addr).await.unwrap();
        for msg in ["one", "two", "three"] {
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            within(Duration::from_secs(10), "an echo", s.read_exact(&mut buf))
                .await
                .unwrap();
            assert_eq!(buf, msg.as_bytes());
        }
        drop(s);
        assert_eq!(echo.connections(), 1);

        let m = proxy.metrics().await;
        let dst = echo.addr().to_string();
        let labels = [
            ("direction", "outbound"),
            ("peer", "dst"),
            ("target_addr", dst.as_str()),
        ];
        assert_eq!(m.sum("tcp_open_total", &labels), 1.0, "{}", m.text);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_delivers_the_reply() {
    run(async {
        let echo = TcpServer::echo().await;
        let proxy = local_listener_proxy(&[echo.addr()]).await;
        let data = pattern(1024 * 1024);
        let echoed = echo_round_trip(proxy.local("db"), data.clone()).await;
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "echoed bytes differ");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_listener_balances_over_static_endpoints() {
    run(async {
        let (a, b) = (TcpServer::echo().await, TcpServer::echo().await);
        let proxy = local_listener_proxy(&[a.addr(), b.addr()]).await;
        for i in 0..24 {
            let msg = format!("connection {i}").into_bytes();
            assert_eq!(echo_round_trip(proxy.local("db"), msg.clone()).await, msg);
        }
        assert_eq!(a.connections() + b.connections(), 24);
        assert!(
            a.connections() > 0 && b.connections() > 0,
            "every connection went to one endpoint: {} / {}",
            a.connections(),
            b.connections()
        );
    })
    .await
}

/// Connects and reads the banner without sending anything.
async fn read_banner(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    within(
        Duration::from_secs(10),
        "the server's banner",
        s.read_exact(&mut banner),
    )
    .await
    .unwrap();
    assert_eq!(banner, BANNER);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_on_an_opaque_port() {
    run(async {
        let server = TcpServer::banner().await;
        let port = server.addr().port().to_string();
        let forward = server.addr().to_string();
        // A detect timeout far beyond the banner read's limit: the banner can only arrive in
        // time if detection is skipped.
        let proxy = TestProxy::start(&[
            (ENV_INBOUND_FORWARD_ADDR, &forward),
            (ENV_INBOUND_OPAQUE_PORTS, &port),
            (ENV_INBOUND_DETECT_TIMEOUT, "60s"),
        ])
        .await;
        let mut s = read_banner(proxy.inbound).await;
        // The connection carries client bytes afterwards too.
        s.write_all(b"EHLO client\r\n").await.unwrap();
        let mut reply = [0u8; 13];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"EHLO client\r\n");

        let m = proxy.metrics().await;
        let configured = [
            ("direction", "inbound"),
            ("protocol", "opaque"),
            ("reason", "configured"),
        ];
        assert_eq!(
            m.sum("protocol_detect_total", &configured),
            1.0,
            "{}",
            m.text
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_after_the_detect_timeout() {
    run(async {
        let server = TcpServer::banner().await;
        let forward = server.addr().to_string();
        let proxy = TestProxy::start(&[
            (ENV_INBOUND_FORWARD_ADDR, &forward),
            (ENV_INBOUND_DETECT_TIMEOUT, "200ms"),
        ])
        .await;
        let mut s = read_banner(proxy.inbound).await;
        s.write_all(b"QUIT\r\n").await.unwrap();
        let mut reply = [0u8; 6];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"QUIT\r\n");

        let timeout = [
            ("direction", "inbound"),
            ("protocol", "opaque"),
            ("reason", "timeout"),
        ];
        assert_eventually!(proxy.metrics().await.sum("protocol_detect_total", &timeout) == 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_client_payload_is_forwarded_intact() {
    run(async {
        let echo = TcpServer::echo().await;
        let proxy = TestProxy::inbound_to(echo.addr()).await;
        // A TLS ClientHello-like prefix (not HTTP), then every byte value.
        let mut data = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        data.extend((0..=255u8).cycle().take(64 * 1024));
        let echoed = echo_round_trip(proxy.inbound, data.clone()).await;
        assert!(
            echoed == data,
            "echoed {} of {} bytes",
            echoed.len(),
            data.len()
        );

        let m = proxy.metrics().await;
        let not_http = [
            ("direction", "inbound"),
            ("protocol", "opaque"),
            ("reason", "not_http"),
        ];
        assert_eq!(m.sum("protocol_detect_total", &not_http), 1.0, "{}", m.text);
        let dst = echo.addr().to_string();
        let labels = [
            ("direction", "inbound"),
            ("peer", "dst"),
            ("target_addr", dst.as_str()),
        ];
        assert_eventually!(
            proxy.metrics().await.sum("tcp_write_bytes_total", &labels) == data.len() as f64
        );
    })
    .await
}
