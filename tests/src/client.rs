//! Clients: HTTP/1 and HTTP/2 on single connections (so tests control connection reuse), and
//! raw TCP for requests no well-behaved client would send.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{
    body::{Frame, Incoming},
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

/// The body type every test client and the test server send.
pub type TestBody = BoxBody<Bytes, io::Error>;

/// The `Host` sent with origin-form requests (inbound, where the proxy forwards to a fixed
/// address and the host is only a label).
pub const DEFAULT_HOST: &str = "app.test";

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body fed frame by frame through a channel: for streaming, trailers and slow bodies.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// A body that ends when the sender is dropped. `buffer` frames may be queued unread.
pub fn channel_body(buffer: usize) -> (mpsc::Sender<Frame<Bytes>>, TestBody) {
    let (tx, rx) = mpsc::channel(buffer);
    (tx, ChannelBody { rx }.boxed())
}

/// A body of `pattern(len)` sent in `chunk`-sized frames by a background task.
pub fn streamed_pattern(len: usize, chunk: usize) -> TestBody {
    let (tx, body) = channel_body(4);
    let data = Bytes::from(crate::pattern(len));
    tokio::spawn(async move {
        let mut off = 0;
        while off < data.len() {
            let end = (off + chunk).min(data.len());
            if tx.send(Frame::data(data.slice(off..end))).await.is_err() {
                return;
            }
            off = end;
        }
    });
    body
}

/// A new HTTP/1.1 connection to `addr` (upgrades enabled).
pub async fn http1(addr: SocketAddr) -> http1::SendRequest<TestBody> {
    let io = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP/1 client handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// A new prior-knowledge HTTP/2 connection to `addr`.
pub async fn http2(addr: SocketAddr) -> http2::SendRequest<TestBody> {
    let io = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("HTTP/2 client handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A request with a `Host` header: the URI's authority for absolute-form URIs, else
/// [`DEFAULT_HOST`].
pub fn request(method: Method, uri: &str, body: TestBody) -> Request<TestBody> {
    let parsed: Uri = uri
        .parse()
        .unwrap_or_else(|e| panic!("invalid URI {uri:?}: {e}"));
    let host = parsed
        .authority()
        .map_or(DEFAULT_HOST.to_string(), |a| a.to_string());
    Request::builder()
        .method(method)
        .uri(parsed)
        .header(header::HOST, host)
        .body(body)
        .expect("valid request")
}

pub fn get_request(uri: &str) -> Request<TestBody> {
    request(Method::GET, uri, empty())
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Reads a response's body (and trailers) to the end.
pub async fn collect(rsp: Response<Incoming>) -> Reply {
    let (parts, body) = rsp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Sends a request on an HTTP/1 connection and reads the whole response.
pub async fn send1(c: &mut http1::SendRequest<TestBody>, req: Request<TestBody>) -> Reply {
    c.ready().await.expect("HTTP/1 connection ready");
    let rsp = c.send_request(req).await.expect("HTTP/1 response");
    collect(rsp).await
}

/// Sends a request on an HTTP/2 connection and reads the whole response.
pub async fn send2(c: &mut http2::SendRequest<TestBody>, req: Request<TestBody>) -> Reply {
    c.ready().await.expect("HTTP/2 connection ready");
    let rsp = c.send_request(req).await.expect("HTTP/2 response");
    collect(rsp).await
}

/// `GET uri` on a new HTTP/1 connection to `addr`.
pub async fn get(addr: SocketAddr, uri: &str) -> Reply {
    let mut c = http1(addr).await;
    send1(&mut c, get_request(uri)).await
}

/// Writes `bytes` on a new connection and reads one HTTP/1 response: the head, then as many
/// body bytes as its `Content-Length` says (or until the connection closes). Fails if no
/// complete response arrives within 10 s.
pub async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.write_all(bytes).await.expect("write raw request");
    read_raw_response(&mut s).await
}

/// Reads one HTTP/1 response from `s` as [`raw_http`] does ("" if the connection closes
/// first).
pub async fn read_raw_response(s: &mut TcpStream) -> String {
    crate::within(Duration::from_secs(10), "a raw HTTP response", async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(len) = len
                    && buf.len() >= end + 4 + len
                {
                    buf.truncate(end + 4 + len);
                    break;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A free loopback address (bound and released: another test may take it first, rarely, so
/// whoever binds it must cope with `EADDRINUSE`).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
}

/// A loopback port that is bound, so that no other test can be given it, but not listening, so
/// that connections to it are refused. The port stays reserved while this value lives.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Reserves a [`ClosedPort`]. (Binding a port and closing it again is not enough: under
/// parallel tests, the port is soon handed to another test's server.)
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("create a socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind an ephemeral port");
    let addr = socket.local_addr().expect("bound address");
    ClosedPort {
        _socket: socket,
        addr,
    }
}
