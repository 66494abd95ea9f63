//! The HTTP/1 client against scripted servers on real loopback sockets: what it writes, how it
//! frames what it reads, and when a connection goes back to the pool.

use super::{
    chunked::{parse_hex, parse_length},
    *,
};
use crate::{
    http::test_support::{data, feed},
    lock,
};
use http::{HeaderValue, Method, StatusCode, Version};
use http_body_util::BodyExt;
use std::sync::Mutex;
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// What one scripted server connection does with each request it reads.
#[derive(Clone, Copy)]
enum Reply {
    /// Write these bytes and read the next request.
    Bytes(&'static [u8]),
    /// Write these bytes and close the connection.
    ThenClose(&'static [u8]),
    /// Close without answering.
    Close,
    /// Answer as soon as the head is read, then read the (chunked) body and go on.
    Early(&'static [u8]),
}

struct Server {
    addr: SocketAddr,
    /// Every request as received (head and body, raw).
    requests: mpsc::UnboundedReceiver<Vec<u8>>,
    accepted: Arc<AtomicUsize>,
}

/// A server that answers its n-th request (over all connections) with `replies[n]`.
async fn server(replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, requests) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let replies = Arc::new(Mutex::new(replies.into_iter()));
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, SeqCst);
            let (tx, replies) = (tx.clone(), replies.clone());
            tokio::spawn(async move {
                loop {
                    let Some(req) = read_request(&mut s, &replies).await else {
                        return;
                    };
                    let reply = req.1;
                    let _ = tx.send(req.0);
                    match reply {
                        Reply::Bytes(b) => s.write_all(b).await.unwrap(),
                        Reply::ThenClose(b) => {
                            s.write_all(b).await.unwrap();
                            return;
                        }
                        Reply::Close => return,
                        Reply::Early(b) => {
                            s.write_all(b).await.unwrap();
                            let mut body = Vec::new();
                            let mut byte = [0u8; 1];
                            while !body.ends_with(b"\r\n0\r\n\r\n") {
                                if s.read(&mut byte).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                body.push(byte[0]);
                            }
                            let _ = tx.send(body);
                        }
                    }
                }
            });
        }
    });
    Server {
        addr,
        requests,
        accepted,
    }
}

/// Reads one request (its head, then a Content-Length or chunked body) unless the reply says
/// to answer early.
async fn read_request(
    s: &mut TcpStream,
    replies: &Mutex<std::vec::IntoIter<Reply>>,
) -> Option<(Vec<u8>, Reply)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let reply = lock(replies).next().expect("a reply for every request");
    if matches!(reply, Reply::Early(_)) {
        return Some((buf, reply));
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap())
    {
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.ok()?;
        buf.extend(body);
    } else if head.contains("transfer-encoding: chunked") {
        while !buf.ends_with(b"\r\n0\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
    }
    Some((buf, reply))
}

fn key(addr: SocketAddr) -> Key {
    (addr, None)
}

async fn dial(addr: SocketAddr, stats: &Arc<TcpStats>) -> Result<Conn, Error> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    stats.open_total.fetch_add(1, SeqCst);
    Ok(Conn::new(Box::new(s), stats.clone(), key(addr)))
}

/// Sends `req` on a pooled connection to `addr` if there is one, else a new one.
async fn request<B>(
    pool: &Arc<Pool>,
    stats: &Arc<TcpStats>,
    addr: SocketAddr,
    req: Request<B>,
) -> Result<Response<RecvBody<B>>, Error>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (conn, reused) = match pool.checkout(&key(addr)) {
        Some(c) => (c, true),
        None => (dial(addr, stats).await?, false),
    };
    send(pool, conn, reused, req, || dial(addr, stats)).await
}

fn get(path: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(path)
        .header("host", "svc.test")
        .body(http_body_util::Empty::new())
        .unwrap()
}

fn fixture() -> (Arc<Pool>, Arc<TcpStats>) {
    (Arc::new(Pool::new(4)), Arc::new(TcpStats::default()))
}

#[tokio::test]
async fn writes_the_request_and_reuses_the_connection_after_a_sized_body() {
    let rsp = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello";
    let mut srv = server(vec![Reply::Bytes(rsp), Reply::Bytes(rsp)]).await;
    let (pool, stats) = fixture();

    let mut req = get("/p?q=1");
    req.headers_mut()
        .insert("x-b", HeaderValue::from_static("v"));
    let rsp = request(&pool, &stats, srv.addr, req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.version(), Version::HTTP_11);
    let values: Vec<_> = rsp.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(rsp.body().size_hint().exact(), Some(5));
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");
    let sent = srv.requests.recv().await.unwrap();
    assert_eq!(
        sent,
        b"GET /p?q=1 HTTP/1.1\r\nhost: svc.test\r\nx-b: v\r\n\r\n"
    );

    assert_eq!(pool.idle(&key(srv.addr)), 1, "back in the pool once read");
    let rsp = request(&pool, &stats, srv.addr, get("/2")).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");
    assert_eq!(
        srv.accepted.load(SeqCst),
        1,
        "one connection for both requests"
    );
    assert_eq!(stats.close_total.load(SeqCst), 0);
}

#[tokio::test]
async fn decodes_chunked_bodies_and_passes_trailers_on() {
    let rsp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-t: done\r\n\r\n";
    let srv = server(vec![Reply::Bytes(rsp)]).await;
    let (pool, stats) = fixture();
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    assert_eq!(rsp.body().size_hint().exact(), None);
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-t"], "done");
    assert_eq!(collected.to_bytes(), "hello world");
    assert_eq!(pool.idle(&key(srv.addr)), 1);
}

#[tokio::test]
async fn a_body_delimited_by_close_is_read_to_the_end_and_the_connection_not_kept() {
    let srv = server(vec![Reply::ThenClose(
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
    )])
    .await;
    let (pool, stats) = fixture();
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "until the end");
    assert_eq!(pool.idle(&key(srv.addr)), 0);
    assert_eq!(stats.close_total.load(SeqCst), 1);
}

#[tokio::test]
async fn connection_close_and_http_1_0_are_not_kept_alive() {
    let srv = server(vec![
        Reply::Bytes(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"),
        Reply::Bytes(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb"),
        Reply::Bytes(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nc"),
    ])
    .await;
    let (pool, stats) = fixture();
    for (want, kept) in [("a", 0), ("b", 0), ("c", 1)] {
        let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want);
        assert_eq!(pool.idle(&key(srv.addr)), kept, "after {want}");
    }
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_responses_have_no_body() {
    let srv = server(vec![
        Reply::Bytes(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"),
        Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        Reply::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n"),
    ])
    .await;
    let (pool, stats) = fixture();
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::CREATED);
    assert!(
        rsp.headers().get("link").is_none(),
        "the interim response's headers are not kept"
    );
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ok");

    let mut head = get("/");
    *head.method_mut() = Method::HEAD;
    let rsp = request(&pool, &stats, srv.addr, head).await.unwrap();
    assert!(rsp.body().is_end_stream());
    assert_eq!(rsp.headers()["content-length"], "1000");
    drop(rsp);
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::NO_CONTENT);
    assert!(rsp.body().is_end_stream());
    drop(rsp);
    assert_eq!(srv.accepted.load(SeqCst), 1);
    assert_eq!(pool.idle(&key(srv.addr)), 1);
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let mut srv = server(vec![Reply::Bytes(ok), Reply::Bytes(ok)]).await;
    let (pool, stats) = fixture();

    let req = Request::post("/sized")
        .body(http_body_util::Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let rsp = request(&pool, &stats, srv.addr, req).await.unwrap();
    drop(rsp);
    assert_eq!(
        srv.requests.recv().await.unwrap(),
        b"POST /sized HTTP/1.1\r\ncontent-length: 5\r\n\r\n12345"
    );

    let (tx, body) = feed();
    tx.send(data(b"hello")).unwrap();
    tx.send(data(b", streamed body")).unwrap();
    drop(tx);
    let req = Request::post("/streamed").body(body).unwrap();
    let rsp = request(&pool, &stats, srv.addr, req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    drop(rsp);
    assert_eq!(
        srv.requests.recv().await.unwrap(),
        b"POST /streamed HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\nf\r\n, streamed body\r\n0\r\n\r\n"
    );
    assert_eq!(srv.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn a_response_can_arrive_while_the_request_body_is_still_streaming() {
    let mut srv = server(vec![
        Reply::Early(b"HTTP/1.1 202 Accepted\r\ncontent-length: 3\r\n\r\nyes"),
        Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    ])
    .await;
    let (pool, stats) = fixture();
    let (tx, body) = feed();
    tx.send(data(b"first")).unwrap();
    let req = Request::post("/upload").body(body).unwrap();
    let rsp = request(&pool, &stats, srv.addr, req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::ACCEPTED);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "yes");
    // The response has ended; the rest of the upload still goes out.
    tx.send(data(b"second")).unwrap();
    drop(tx);
    let _head = srv.requests.recv().await.unwrap();
    assert_eq!(
        srv.requests.recv().await.unwrap(),
        b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n"
    );
    // ... and then the connection serves the next request.
    for _ in 0..100 {
        if pool.idle(&key(srv.addr)) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let rsp = request(&pool, &stats, srv.addr, get("/next"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(srv.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_when_its_pooled_connection_was_closed() {
    // The first connection answers once and then closes without answering the second
    // request; the client sends that one again on a new connection.
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let srv = server(vec![Reply::Bytes(ok), Reply::Close, Reply::Bytes(ok)]).await;
    let (pool, stats) = fixture();
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    drop(rsp.into_body().collect().await.unwrap());
    // Take the pooled connection as if the close had not been seen yet.
    let conn = pool.checkout(&key(srv.addr)).expect("pooled");
    let rsp = send(&pool, conn, true, get("/again"), || dial(srv.addr, &stats))
        .await
        .unwrap();
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(srv.accepted.load(SeqCst), 2);

    // Not a POST: it may have been acted on.
    let srv = server(vec![Reply::Bytes(ok), Reply::Close]).await;
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    drop(rsp.into_body().collect().await.unwrap());
    let conn = pool.checkout(&key(srv.addr)).expect("pooled");
    let post = Request::post("/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let err = send(&pool, conn, true, post, || dial(srv.addr, &stats))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
    assert_eq!(srv.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_not_checked_out() {
    let srv = server(vec![Reply::ThenClose(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let (pool, stats) = fixture();
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    drop(rsp.into_body().collect().await.unwrap());
    assert_eq!(pool.idle(&key(srv.addr)), 1);
    // Let the runtime see the server's FIN.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(pool.checkout(&key(srv.addr)).is_none());
    assert_eq!(stats.close_total.load(SeqCst), 1);
}

#[tokio::test]
async fn malformed_or_truncated_responses_are_errors() {
    let cases: [(&'static [u8], &str); 5] = [
        (b"HTTX/1.1 200 OK\r\n\r\n", "invalid response"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            "content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            "end of the response body",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "chunk size",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-le", "inside the response head"),
    ];
    for (reply, want) in cases {
        let srv = server(vec![Reply::ThenClose(reply)]).await;
        let (pool, stats) = fixture();
        let err = match request(&pool, &stats, srv.addr, get("/")).await {
            Err(e) => e.to_string(),
            Ok(rsp) => match rsp.into_body().collect().await {
                Err(e) => e.to_string(),
                Ok(b) => panic!("{want}: read {:?}", b.to_bytes()),
            },
        };
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(pool.idle(&key(srv.addr)), 0);
    }
}

#[test]
fn lengths_and_chunk_sizes_parse_strictly() {
    assert_eq!(parse_length(b"0"), Some(0));
    assert_eq!(parse_length(b"18446744073709551615"), None, "20 digits");
    assert_eq!(
        parse_length(b"1844674407370955161"),
        Some(1_844_674_407_370_955_161)
    );
    assert_eq!(parse_length(b"+1"), None);
    assert_eq!(parse_length(b""), None);
    assert_eq!(parse_hex(b"fF"), Some(255));
    assert_eq!(parse_hex(b"10000000000000000"), None, "17 digits");
    assert_eq!(parse_hex(b"g"), None);
}

#[tokio::test]
async fn sweeps_close_connections_idle_for_a_whole_period() {
    use crate::idle::Sweep;
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let srv = server(vec![Reply::Bytes(ok), Reply::Bytes(ok)]).await;
    let (pool, stats) = fixture();
    drop(request(&pool, &stats, srv.addr, get("/")).await.unwrap());
    assert_eq!(pool.sweep(), 0, "checked in since the last sweep");
    assert_eq!(pool.idle(&key(srv.addr)), 1);
    // Used again between sweeps: kept.
    drop(request(&pool, &stats, srv.addr, get("/")).await.unwrap());
    assert_eq!(pool.sweep(), 0);
    assert_eq!(pool.sweep(), 1, "idle through a whole period");
    assert_eq!(pool.idle(&key(srv.addr)), 0);
    assert_eq!(stats.close_total.load(SeqCst), 1);
    assert_eq!(srv.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn chunked_wins_over_content_length_and_such_a_connection_is_not_kept() {
    let srv = server(vec![
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        Reply::Bytes(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        ),
    ])
    .await;
    let (pool, stats) = fixture();
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    assert!(
        rsp.headers().get("content-length").is_none(),
        "not passed on"
    );
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "hello");
    assert_eq!(pool.idle(&key(srv.addr)), 0);
    let rsp = request(&pool, &stats, srv.addr, get("/")).await.unwrap();
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "hi");
    assert_eq!(
        pool.idle(&key(srv.addr)),
        0,
        "HTTP/1.0 has no transfer codings"
    );
}

#[tokio::test]
async fn a_full_idle_list_drops_its_oldest_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = Arc::new(Pool::new(2));
    let stats = Arc::new(TcpStats::default());
    // Three connections, told apart by what their server end receives.
    let mut ends = Vec::new();
    for _ in 0..3 {
        pool.checkin(dial(addr, &stats).await.unwrap());
        ends.push(listener.accept().await.unwrap().0);
    }
    assert_eq!(pool.idle(&key(addr)), 2);
    // Checkout takes the most recent first: the third, then the second; the first is gone.
    for (i, end) in [(2usize, b'c'), (1, b'b')] {
        let mut c = pool.checkout(&key(addr)).unwrap();
        c.io.write_all(&[end]).await.unwrap();
        let mut got = [0u8; 1];
        ends[i].read_exact(&mut got).await.unwrap();
        assert_eq!(got[0], end);
    }
    assert!(pool.checkout(&key(addr)).is_none());
}
