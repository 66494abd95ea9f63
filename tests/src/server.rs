//! The HTTP test server: HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
//!
//! It records every request it receives (method, URI, version, headers, connection number)
//! before handling it, and counts accepted connections, so tests can assert what crossed the
//! proxy; a [`TestServer::named`] one says who it is in `x-backend` on every response. Routes,
//! by path:
//!
//! | path | response |
//! | --- | --- |
//! | `/echo` (and any unknown path) | 200; the request body; `x-req-*` headers describe the request (and `x-req-traceparent` etc. repeat its trace context) |
//! | `/bytes?n=N` | 200; `pattern(N)` streamed in 64 KiB chunks |
//! | `/duplex` | 200 at once; each request body chunk echoed as soon as it arrives |
//! | `/gated` | 200; `first\n`, then waits for [`TestServer::open_gate`], then `second\nlast\n` |
//! | `/slow?chunks=N&ms=M` | 200; `N` chunks `chunk i\n`, `M` ms apart |
//! | `/upgrade` | 101 (if the request asks to upgrade), then `hello from upstream\n` and an echo of raw bytes |
//! | `/delay?ms=M` | 200 `delayed\n` after `M` ms |
//! | `/status/CODE` | that status |
//! | `/hop` | 200 with hop-by-hop response headers (`Connection: x-resp-secret`, ...) |
//! | `/trailers` | 200; `trailers\n` then trailers `x-trailer: done` and `x-req-trailer` (the request's) |

use crate::client::{TestBody, channel_body, empty, full};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Notify,
    task::JoinHandle,
};

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// Which accepted connection carried it (0-based).
    pub conn: usize,
}

#[derive(Debug, Default)]
struct State {
    connections: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
    gate: Notify,
    /// Sent back in `x-backend` on every response (see [`TestServer::named`]).
    name: Option<HeaderValue>,
}

/// A running HTTP test server; stops accepting when dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(State::default()).await
    }

    /// A server that names itself in an `x-backend` header on every response, so that a
    /// test sending through a router can tell which of several backends answered.
    pub async fn named(name: &'static str) -> Self {
        Self::start_with(State {
            name: Some(HeaderValue::from_static(name)),
            ..State::default()
        })
        .await
    }

    async fn start_with(state: State) -> Self {
        let state = Arc::new(state);
        let s = state.clone();
        let (addr, task) = crate::accept_each("test server", move |stream| {
            let conn = s.connections.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(crate::serve_http(stream, move |req| {
                handle(s.clone(), conn, req)
            }));
        })
        .await;
        Self { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.state.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// Lets a `/gated` response (current or next) send the rest of its body.
    pub fn open_gate(&self) {
        self.state.gate.notify_one();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn query(uri: &Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn with_status(status: StatusCode, body: TestBody) -> Response<TestBody> {
    let mut rsp = Response::new(body);
    *rsp.status_mut() = status;
    rsp
}

async fn handle(state: Arc<State>, conn: usize, req: Request<Incoming>) -> Response<TestBody> {
    let name = state.name.clone();
    let mut rsp = route(state, conn, req).await;
    if let Some(name) = name {
        rsp.headers_mut().insert("x-backend", name);
    }
    rsp
}

async fn route(state: Arc<State>, conn: usize, mut req: Request<Incoming>) -> Response<TestBody> {
    lock(&state.requests).push(Seen {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        conn,
    });
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/bytes" => {
            let n = query(req.uri(), "n").unwrap_or(0) as usize;
            Response::new(crate::client::streamed_pattern(n, 64 * 1024))
        }
        "/duplex" => {
            let (tx, body) = channel_body(1);
            let mut incoming = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = incoming.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Frame::data(data)).await.is_err()
                    {
                        return;
                    }
                }
            });
            Response::new(body)
        }
        "/gated" => {
            let (tx, body) = channel_body(1);
            tokio::spawn(async move {
                if tx.send(Frame::data(Bytes::from("first\n"))).await.is_err() {
                    return;
                }
                state.gate.notified().await;
                for part in ["second\n", "last\n"] {
                    if tx.send(Frame::data(Bytes::from(part))).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(body)
        }
        "/slow" => {
            let chunks = query(req.uri(), "chunks").unwrap_or(3);
            let ms = query(req.uri(), "ms").unwrap_or(50);
            let (tx, body) = channel_body(1);
            tokio::spawn(async move {
                for i in 0..chunks {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let chunk = Bytes::from(format!("chunk {i}\n"));
                    if tx.send(Frame::data(chunk)).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(body)
        }
        "/upgrade" => {
            let Some(proto) = req.headers().get(header::UPGRADE).cloned() else {
                return with_status(StatusCode::BAD_REQUEST, full("expected an upgrade\n"));
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                if io.write_all(b"hello from upstream\n").await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = io.shutdown().await;
            });
            let mut rsp = with_status(StatusCode::SWITCHING_PROTOCOLS, empty());
            rsp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            rsp.headers_mut().insert(header::UPGRADE, proto);
            rsp
        }
        "/delay" => {
            let ms = query(req.uri(), "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("delayed\n"))
        }
        "/hop" => {
            let mut rsp = Response::new(full("hop\n"));
            let h = rsp.headers_mut();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("x-resp-secret"),
            );
            h.insert("x-resp-secret", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("x-resp-ordinary", HeaderValue::from_static("yes"));
            rsp
        }
        "/trailers" => {
            let collected = match req.into_body().collect().await {
                Ok(c) => c,
                Err(e) => return with_status(StatusCode::BAD_REQUEST, full(format!("{e}\n"))),
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from_static("done"));
            let req_trailer = collected
                .trailers()
                .and_then(|t| t.get("x-req-trailer").cloned())
                .unwrap_or_else(|| HeaderValue::from_static("none"));
            trailers.insert("x-req-trailer", req_trailer);
            let (tx, body) = channel_body(2);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from("trailers\n"))).await;
                let _ = tx.send(Frame::trailers(trailers)).await;
            });
            Response::new(body)
        }
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            with_status(code, full(format!("status {}\n", code.as_u16())))
        }
        _ => echo(conn, req).await,
    }
}

async fn echo(conn: usize, req: Request<Incoming>) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return with_status(StatusCode::BAD_REQUEST, full(format!("{e}\n"))),
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let describe = [
        ("x-req-method", parts.method.to_string()),
        (
            "x-req-path",
            parts
                .uri
                .path_and_query()
                .map_or("/".to_string(), |pq| pq.to_string()),
        ),
        ("x-req-version", format!("{:?}", parts.version)),
        ("x-req-host", host),
        ("x-req-len", body.len().to_string()),
        ("x-conn", conn.to_string()),
    ];
    let mut rsp = Response::new(full(body));
    for (name, value) in describe {
        if let Ok(v) = HeaderValue::from_str(&value) {
            rsp.headers_mut().insert(name, v);
        }
    }
    // The trace context the app received, as `x-req-<header>`.
    for name in TRACE_HEADERS {
        if let (Some(v), Ok(echo)) = (
            parts.headers.get(*name),
            format!("x-req-{name}").parse::<HeaderName>(),
        ) {
            rsp.headers_mut().insert(echo, v.clone());
        }
    }
    rsp
}

/// Trace-context headers `/echo` reports.
pub const TRACE_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
];
