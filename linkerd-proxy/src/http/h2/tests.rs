//! The HTTP/2 client against servers built on the `h2` crate's server side, on real loopback
//! sockets: what reaches the server, flow control and trailers both ways, resets, a
//! connection going away, and keep-alive.

use super::*;
use crate::{
    http::{
        ProxyBody,
        client::Client,
        test_support::{data, feed},
    },
    lock,
    metrics::{Direction, Metrics, Tls},
    resolve::Endpoint,
};
use http::HeaderMap;
use http_body_util::BodyExt;
use std::{
    future::poll_fn,
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};

type Handler = fn(
    Request<::h2::RecvStream>,
    ::h2::server::SendResponse<Bytes>,
) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// An HTTP/2 server on loopback that runs `handler` for each stream. With `go_away`, each
/// connection starts a graceful shutdown (GOAWAY) as it accepts its first stream, so the
/// GOAWAY reaches the client before that stream's response.
async fn server(handler: Handler, go_away: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut conn = ::h2::server::handshake(s).await.unwrap();
                while let Some(Ok((req, rsp))) = conn.accept().await {
                    if go_away {
                        conn.graceful_shutdown();
                    }
                    tokio::spawn(handler(req, rsp));
                }
            });
        }
    });
    (addr, accepted)
}

/// A client connection to `addr`, and how many times its `on_close` ran.
async fn connect(addr: SocketAddr) -> (Conn, Arc<AtomicUsize>) {
    let s = TcpStream::connect(addr).await.unwrap();
    let closes = Arc::new(AtomicUsize::new(0));
    let c = closes.clone();
    let conn = Conn::handshake(Box::new(s), move || {
        c.fetch_add(1, SeqCst);
    })
    .await
    .unwrap();
    (conn, closes)
}

fn get(addr: SocketAddr) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(format!("http://svc.test:{}/path?q=1", addr.port()))
        .header("x-a", "1")
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// Reads a request body to its end (giving the window back) and returns it with its trailers.
async fn read_all(mut body: ::h2::RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    (data, body.trailers().await.unwrap())
}

fn respond(rsp: &mut ::h2::server::SendResponse<Bytes>, eos: bool) -> ::h2::SendStream<Bytes> {
    rsp.send_response(Response::new(()), eos).unwrap()
}

#[tokio::test]
async fn a_get_is_one_headers_frame_and_its_response_streams_back_with_trailers() {
    let (addr, _) = server(
        |req, mut rsp| {
            Box::pin(async move {
                let (head, body) = req.into_parts();
                assert_eq!(head.method, Method::GET);
                assert_eq!(head.uri.authority().unwrap().host(), "svc.test");
                assert_eq!(head.uri.path_and_query().unwrap(), "/path?q=1");
                assert_eq!(head.headers["x-a"], "1");
                // No body: END_STREAM on the headers, and no `content-length: 0` for a GET.
                assert!(body.is_end_stream());
                assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
                let r = Response::builder()
                    .header(header::CONTENT_LENGTH, "5")
                    .body(())
                    .unwrap();
                let mut s = rsp.send_response(r, false).unwrap();
                s.send_data(Bytes::from_static(b"hel"), false).unwrap();
                s.send_data(Bytes::from_static(b"lo"), false).unwrap();
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static("0"));
                s.send_trailers(t).unwrap();
            })
        },
        false,
    )
    .await;
    let (conn, _) = connect(addr).await;
    let rsp = conn.ready().await.unwrap().send(get(addr)).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.body().size_hint().exact(), Some(5));
    let body = rsp.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&body.to_bytes()[..], b"hello");
}

#[tokio::test]
async fn request_bodies_stream_under_flow_control_with_trailers_and_sized_ones_get_a_length() {
    let (addr, _) = server(
        |req, mut rsp| {
            Box::pin(async move {
                let (head, body) = req.into_parts();
                let length = head.headers.get(header::CONTENT_LENGTH).cloned();
                let (data, trailers) = read_all(body).await;
                let mut s = respond(&mut rsp, false);
                let summary = format!(
                    "{} {:?} {:?}",
                    data.len(),
                    length,
                    trailers.as_ref().and_then(|t| t.get("x-sum"))
                );
                s.send_data(Bytes::from(summary), true).unwrap();
            })
        },
        false,
    )
    .await;
    let (conn, _) = connect(addr).await;
    async fn text(rsp: Response<RecvBody>) -> String {
        let b = rsp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    // Three 40 KiB chunks: more than the server's 64 KiB stream window, so the pipe has to
    // wait for the server to read before it can send the rest.
    let (tx, body) = feed();
    let req = Request::post(format!("http://svc.test:{}/", addr.port()))
        .body(body)
        .unwrap();
    let sent = tokio::spawn(conn.ready().await.unwrap().send(req));
    for _ in 0..3 {
        tx.send(Frame::data(Bytes::from(vec![7u8; 40 * 1024])))
            .unwrap();
    }
    let mut t = HeaderMap::new();
    t.insert("x-sum", HeaderValue::from_static("122880"));
    tx.send(Frame::trailers(t)).unwrap();
    let rsp = sent.await.unwrap().unwrap();
    assert_eq!(text(rsp).await, r#"122880 None Some("122880")"#);

    // A body whose size is known travels with its `Content-Length`.
    let req = Request::post(format!("http://svc.test:{}/", addr.port()))
        .body(ProxyBody::full("abc"))
        .unwrap();
    let rsp = conn.ready().await.unwrap().send(req).await.unwrap();
    assert_eq!(text(rsp).await, r#"3 Some("3") None"#);
}

#[tokio::test]
async fn a_reset_with_no_error_after_an_early_response_keeps_the_response() {
    let (addr, _) = server(
        |req, mut rsp| {
            Box::pin(async move {
                // Answer before the request body has ended, then tell the client to stop
                // sending it (RFC 9113 section 8.1).
                let _body = req.into_body();
                let mut s = respond(&mut rsp, false);
                s.send_data(Bytes::from_static(b"early"), true).unwrap();
                // A reset drops the stream's frames not yet written: let the connection
                // write the response first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                rsp.send_reset(::h2::Reason::NO_ERROR);
            })
        },
        false,
    )
    .await;
    let (conn, _) = connect(addr).await;
    let (tx, body) = feed();
    tx.send(data(b"more to come")).unwrap();
    let req = Request::post(format!("http://svc.test:{}/", addr.port()))
        .body(body)
        .unwrap();
    let rsp = conn.ready().await.unwrap().send(req).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"early");
    drop(tx);
}

#[tokio::test]
async fn a_response_cut_short_by_a_reset_is_an_error_even_with_no_error() {
    let (addr, _) = server(
        |_req, mut rsp| {
            Box::pin(async move {
                let r = Response::builder()
                    .header(header::CONTENT_LENGTH, "10")
                    .body(())
                    .unwrap();
                let mut s = rsp.send_response(r, false).unwrap();
                s.send_data(Bytes::from_static(b"half"), false).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.send_reset(::h2::Reason::NO_ERROR);
            })
        },
        false,
    )
    .await;
    let (conn, _) = connect(addr).await;
    let rsp = conn.ready().await.unwrap().send(get(addr)).await.unwrap();
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"half");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.reason(), Some(::h2::Reason::NO_ERROR));
}

#[tokio::test]
async fn a_request_cancelled_before_its_response_resets_its_stream() {
    static RESETS: std::sync::Mutex<Vec<::h2::Reason>> = std::sync::Mutex::new(Vec::new());
    static STREAMS: AtomicUsize = AtomicUsize::new(0);
    let (addr, _) = server(
        |_req, mut rsp| {
            Box::pin(async move {
                STREAMS.fetch_add(1, SeqCst);
                let reason = poll_fn(|cx| rsp.poll_reset(cx)).await.unwrap();
                lock(&RESETS).push(reason);
            })
        },
        false,
    )
    .await;
    let (conn, _) = connect(addr).await;
    // Without a body (h2 resets the stream when its last handle goes) and with one still
    // streaming from its pipe task (the proxy's guard resets it).
    let (tx, body) = feed();
    tx.send(data(b"part")).unwrap();
    let post = Request::post(format!("http://svc.test:{}/", addr.port()))
        .body(body)
        .unwrap();
    let a = tokio::spawn(conn.ready().await.unwrap().send(get(addr)));
    let b = tokio::spawn(conn.ready().await.unwrap().send(post));
    // Both streams reached the server before the requests are cancelled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while STREAMS.load(SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.abort();
    b.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while lock(&RESETS).len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*lock(&RESETS), [::h2::Reason::CANCEL, ::h2::Reason::CANCEL]);
    drop(tx);
}

/// Answers `ok`, except on `/hold`: response head, then a body that never ends.
fn ok(
    req: Request<::h2::RecvStream>,
    mut rsp: ::h2::server::SendResponse<Bytes>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let mut s = respond(&mut rsp, false);
        if req.uri().path() == "/hold" {
            std::future::pending::<()>().await;
        }
        s.send_data(Bytes::from_static(b"ok"), true).unwrap();
    })
}

#[tokio::test]
async fn a_connection_that_went_away_is_closed_and_opens_no_more_streams() {
    let (addr, _) = server(ok, true).await;
    let (conn, closes) = connect(addr).await;
    let rsp = conn.ready().await.unwrap().send(get(addr)).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    // Its last stream done, the server closes the connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !conn.is_closed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(conn.is_closed());
    assert_eq!(closes.load(SeqCst), 1);
    assert!(conn.ready().await.is_err());
}

#[tokio::test]
async fn a_request_finding_its_connection_going_away_is_sent_on_a_new_one() {
    let (addr, accepted) = server(ok, true).await;
    let client = Client::new(
        Duration::from_secs(1),
        4,
        Arc::new(Metrics::new()),
        Direction::Outbound,
        Tls::None("test"),
        None,
    );
    let ep = Endpoint {
        labels: None,
        addr,
        identity: None,
    };
    let send = |path: &str| {
        let req = Request::get(format!("http://svc.test:{}{path}", addr.port()))
            .body(ProxyBody::empty())
            .unwrap();
        client.send(&ep, crate::http::client::Protocol::Http2, req)
    };
    // The first connection is going away (its GOAWAY came before this response) but stays
    // open while this response streams.
    let held = send("/hold").await.unwrap();
    assert_eq!(held.status(), 200);
    // So the next request cannot open a stream on it: it goes on a second connection.
    let rsp = send("/").await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_eq!(accepted.load(SeqCst), 2);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_does_not_answer_pings_is_dropped() {
    // A TCP server that reads everything and never answers: not even its SETTINGS.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let (conn, closes) = connect(addr).await;
    tokio::time::sleep(KEEPALIVE_INTERVAL - Duration::from_secs(1)).await;
    assert!(!conn.is_closed(), "no ping has been sent yet");
    tokio::time::sleep(Duration::from_secs(1) + KEEPALIVE_TIMEOUT + Duration::from_secs(1)).await;
    assert!(
        conn.is_closed(),
        "the unanswered ping closed the connection"
    );
    assert_eq!(closes.load(SeqCst), 1);
}
