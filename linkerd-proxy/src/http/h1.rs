//! HTTP/1.1 to upstreams, driven by the task that serves the downstream connection.
//!
//! hyper's HTTP/1 client runs each upstream connection as a task of its own: a request travels
//! to it over a channel, its response head comes back over a oneshot, its body over another
//! channel, and the pool learns the connection is free again from yet another poll. Per proxied
//! request that was four task switches and a dispatcher costing about as much as everything
//! else the proxy did (a third of its user-space instructions on the HTTP/1 path). Here there
//! is no upstream task: the future that sends a request writes it and reads the response head,
//! and the response body reads the socket itself when the downstream server polls it for its
//! next frame. When that body is dropped after its last frame, the connection goes back to the
//! pool, ready for the next request.
//!
//! What it does: request bodies stream (`Content-Length` or chunked) concurrently with reading
//! the response (a server may answer before it has read the whole body); interim `1xx`
//! responses are skipped; response bodies are framed by `Content-Length`, chunked encoding
//! (trailers passed on) or the end of the connection, as RFC 9112 section 6.3 orders them; a
//! request that finds its pooled connection closed before any response byte is sent again on
//! a new connection if nothing of its body was read yet. What it leaves to hyper's client:
//! upgrades and `CONNECT` (see `Client::send_upgrade`), which hand the connection over.
//! Request trailers are not sent: an HTTP/1 server cannot be assumed to accept them.

use super::pool::{self, Key, Pooled};
use crate::{BoxError, io::BoxIo, metrics::TcpStats};
use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header,
};
use http_body::{Body, Frame, SizeHint};
use std::{
    io::{self, IoSlice, Write as _},
    mem::MaybeUninit,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, Waker, ready},
};
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest response head (status line and headers) accepted: about hyper's limit, so
/// responses with large cookies or policies pass as they did through hyper's client.
const MAX_HEAD: usize = 400 * 1024;
/// The most response headers (or trailers) accepted.
const MAX_HEADERS: usize = 100;
/// How much room each read of the socket has, at least.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the connection closed before the response")]
    Closed,
    #[error("the connection closed before the end of the response body")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("invalid response: {0}")]
    Parse(#[from] httparse::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
    #[error("the request body did not match its content-length")]
    RequestLength,
}

impl Error {
    /// The server closed (or reset) an idle connection as the request reached it.
    fn is_stale_connection(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// One upstream connection. Boxed once for its lifetime: the response body that reads from
/// it is moved a few times on the way to the downstream server, and a pointer moves cheaper
/// than the connection's state.
#[derive(Debug)]
pub struct Conn(Box<State>);

/// A connection's stream, the bytes read past the last response, and what is being written:
/// a buffer for heads and chunk-size lines (kept across requests, so writing a head allocates
/// nothing), then a body chunk, then the framing that follows it.
pub struct State {
    io: BoxIo,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Written up to here in `wbuf`.
    wpos: usize,
    data: Bytes,
    tail: &'static [u8],
    stats: Arc<TcpStats>,
    key: Key,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.key.0)
            .finish_non_exhaustive()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.stats.close_total.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for Conn {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl Conn {
    /// A connection already counted as opened in `stats`; its close is counted when dropped.
    pub fn new(io: BoxIo, stats: Arc<TcpStats>, key: Key) -> Self {
        Self(Box::new(State {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            wpos: 0,
            data: Bytes::new(),
            tail: b"",
            stats,
            key,
        }))
    }
}

/// Idle HTTP/1 connections by endpoint.
pub type Pool = pool::Pool<Conn>;

impl Pooled for Conn {
    fn key(&self) -> &Key {
        &self.key
    }

    fn is_idle_open(&mut self) -> bool {
        self.0.is_idle_open()
    }
}

impl State {
    /// True while the server has neither closed the idle connection nor sent anything
    /// unasked. Costs no system call unless the socket was reported readable since the last
    /// read: it polls once with a waker nobody waits on.
    fn is_idle_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendFraming {
    /// Exactly this many bytes are still to come.
    Length(u64),
    Chunked,
}

/// How a response body is delimited, and how far it has been read.
#[derive(Debug, PartialEq, Eq)]
enum Recv {
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Eof,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, then an empty line.
    Trailers,
}

/// One request on one connection: the request still being written, if any, and whether the
/// connection may carry another request afterwards.
#[derive(Debug)]
struct Exchange<B> {
    conn: Conn,
    /// The request body while it has more to send (boxed: a response body holds its request's
    /// body, and the proxy's one body type is both).
    body: Option<(Box<B>, SendFraming)>,
    /// Whether any of the body was taken from the caller (no replay on another connection).
    body_read: bool,
    /// RFC 9110 section 9.2.2: only these may be sent again after a connection failure.
    idempotent: bool,
    head_method: bool,
    keep_alive: bool,
    /// Written but not yet flushed (a TLS stream may hold written bytes until flushed).
    unflushed: bool,
}

impl<B> Exchange<B> {
    /// Whether some of the request is still to be written (or flushed).
    fn sending(&self) -> bool {
        self.body.is_some() || self.unflushed || self.has_pending()
    }

    /// Stops writing the request (the server answered and the rest cannot be sent): the
    /// connection is not reused.
    fn abandon_send(&mut self) {
        self.body = None;
        self.unflushed = false;
        let st = &mut *self.conn;
        st.wpos = st.wbuf.len();
        st.data = Bytes::new();
        st.tail = b"";
        self.keep_alive = false;
    }

    fn has_pending(&self) -> bool {
        self.conn.wpos < self.conn.wbuf.len()
            || !self.conn.data.is_empty()
            || !self.conn.tail.is_empty()
    }
}

impl<B> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes the request head into the connection's buffer; the body follows as it comes.
    fn new(mut conn: Conn, req: Request<B>) -> Result<Self, Error> {
        let (parts, body) = req.into_parts();
        let mut w = std::mem::take(&mut conn.wbuf);
        w.clear();
        conn.wpos = 0;
        conn.data = Bytes::new();
        conn.tail = b"";
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let http10 = parts.version == Version::HTTP_10;
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(target.as_bytes());
        w.extend_from_slice(if http10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for (name, value) in &parts.headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        let framing = match parts.headers.get(header::CONTENT_LENGTH) {
            Some(v) => Some(SendFraming::Length(
                parse_length(v.as_bytes()).ok_or(Error::RequestLength)?,
            )),
            None if body.is_end_stream() => None,
            None => Some(match body.size_hint().exact() {
                Some(n) => {
                    let _ = write!(w, "content-length: {n}\r\n");
                    SendFraming::Length(n)
                }
                None => {
                    w.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    SendFraming::Chunked
                }
            }),
        };
        w.extend_from_slice(b"\r\n");
        conn.wbuf = w;
        let body = match framing {
            Some(SendFraming::Length(0)) | None => None,
            Some(f) => Some((Box::new(body), f)),
        };
        Ok(Self {
            conn,
            body,
            body_read: false,
            idempotent: matches!(
                parts.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            ),
            head_method: parts.method == Method::HEAD,
            // An HTTP/1.0 request asks for nothing more on its connection.
            keep_alive: !http10,
            unflushed: false,
        })
    }

    /// Writes the request: what is queued, then each body frame as the caller yields it.
    /// `Pending` when the socket is full or the body has nothing yet.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if self.conn.data.is_empty() && self.conn.tail.is_empty() && self.body.is_some() {
                match self.poll_body(cx)? {
                    Poll::Ready(()) => continue,
                    Poll::Pending if !self.has_pending() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            if self.has_pending() {
                let n = ready!(self.poll_write_pending(cx))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.advance(n);
                self.unflushed = true;
                continue;
            }
            if self.body.is_none() {
                ready!(Pin::new(&mut self.conn.io).poll_flush(cx))?;
                self.unflushed = false;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Takes the next body frame and queues it with its framing. `Ready` when something
    /// changed (a frame queued or the body ended).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some((body, framing)) = self.body.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        self.body_read = true;
        let frame = ready!(Pin::new(&mut **body).poll_frame(cx));
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers are not sent over HTTP/1 (see the module's comment).
                Err(_) => return Poll::Ready(Ok(())),
            },
            Some(Err(e)) => return Poll::Ready(Err(Error::RequestBody(e.into()))),
            None => {
                if *framing == SendFraming::Chunked {
                    self.conn.tail = b"0\r\n\r\n";
                } else {
                    return Poll::Ready(Err(Error::RequestLength));
                }
                self.body = None;
                return Poll::Ready(Ok(()));
            }
        };
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let end = body.is_end_stream();
        match framing {
            SendFraming::Length(left) => {
                let n = data.len() as u64;
                if n > *left || (end && n != *left) {
                    return Poll::Ready(Err(Error::RequestLength));
                }
                *left -= n;
                if *left == 0 {
                    self.body = None;
                }
            }
            SendFraming::Chunked => {
                if self.conn.wpos == self.conn.wbuf.len() {
                    self.conn.wbuf.clear();
                    self.conn.wpos = 0;
                }
                let _ = write!(self.conn.wbuf, "{:x}\r\n", data.len());
                if end {
                    self.conn.tail = b"\r\n0\r\n\r\n";
                    self.body = None;
                } else {
                    self.conn.tail = b"\r\n";
                }
            }
        }
        self.conn.data = data;
        Poll::Ready(Ok(()))
    }

    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let st = &mut *self.conn;
        let io = Pin::new(&mut st.io);
        let slices = [
            IoSlice::new(&st.wbuf[st.wpos..]),
            IoSlice::new(&st.data),
            IoSlice::new(st.tail),
        ];
        if io.is_write_vectored() {
            return io.poll_write_vectored(cx, &slices);
        }
        match slices.iter().find(|s| !s.is_empty()) {
            Some(s) => io.poll_write(cx, s),
            None => Poll::Ready(Ok(0)),
        }
    }

    fn advance(&mut self, mut n: usize) {
        let st = &mut *self.conn;
        // The written head stays in the buffer (a retry writes it again) until a chunk-size
        // line needs the room.
        let w = (st.wbuf.len() - st.wpos).min(n);
        st.wpos += w;
        n -= w;
        let d = st.data.len().min(n);
        st.data.advance(d);
        n -= d;
        st.tail = &st.tail[n.min(st.tail.len())..];
    }

    /// Writes what it can of the request while the response is being read. A failure of the
    /// caller's body is an error (the server would wait for the rest forever); a failure to
    /// write stops the sending (the server stopped reading, and may have answered, say 413) and
    /// is returned to report if no answer comes.
    fn progress_send(&mut self, cx: &mut Context<'_>) -> Result<Option<Error>, Error> {
        if !self.sending() {
            return Ok(None);
        }
        match self.poll_send(cx) {
            Poll::Ready(Err(e @ (Error::RequestBody(_) | Error::RequestLength))) => Err(e),
            Poll::Ready(Err(e)) => {
                self.abandon_send();
                Ok(Some(e))
            }
            Poll::Ready(Ok(())) | Poll::Pending => Ok(None),
        }
    }

    /// Drives the request forward (if it is still being written) and reads the response head.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(http::response::Parts, Recv), Error>> {
        let mut send_failed = self.progress_send(cx)?;
        loop {
            if !self.conn.rbuf.is_empty()
                && let Some(head) = self.parse_head()?
            {
                return Poll::Ready(Ok(head));
            }
            if self.conn.rbuf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::HeadTooLarge));
            }
            let empty = self.conn.rbuf.is_empty();
            let read = match (ready!(self.conn.poll_read_more(cx)), send_failed.take()) {
                (Ok(n), _) if n > 0 => n,
                (_, Some(e)) if empty => return Poll::Ready(Err(e)),
                (r, _) => r?,
            };
            if read == 0 {
                return Poll::Ready(Err(if empty {
                    Error::Closed
                } else {
                    Error::Invalid("the connection closed inside the response head")
                }));
            }
        }
    }

    /// A complete final response head from the read buffer, if it holds one (interim `1xx`
    /// responses are consumed and skipped).
    fn parse_head(&mut self) -> Result<Option<(http::response::Parts, Recv)>, Error> {
        loop {
            let mut headers =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut rsp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut rsp,
                &self.conn.rbuf,
                &mut headers,
            )?;
            let len = match parsed {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => return Ok(None),
            };
            let code = rsp.code.unwrap_or(0);
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(Error::Invalid("101 Switching Protocols without an upgrade"));
                }
                self.conn.rbuf.advance(len);
                if self.conn.rbuf.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code"))?;
            let version = if rsp.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            // Where each name and value lies in the buffer, to slice them out of it once it
            // is frozen instead of copying each value.
            let base = self.conn.rbuf.as_ptr() as usize;
            let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
            let count = rsp.headers.len();
            for (slot, h) in at.iter_mut().zip(rsp.headers.iter()) {
                let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
                *slot = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
            }
            let head = self.conn.rbuf.split_to(len).freeze();
            let mut map = HeaderMap::with_capacity(count);
            for &(n0, n1, v0, v1) in &at[..count] {
                let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
                let name = HeaderName::from_bytes(&head[n0..n1])
                    .map_err(|_| Error::Invalid("header name"))?;
                let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                    .map_err(|_| Error::Invalid("header value"))?;
                map.append(name, value);
            }
            let recv = self.response_framing(status, version, &mut map)?;
            let mut parts = Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = version;
            parts.headers = map;
            return Ok(Some((parts, recv)));
        }
    }

    /// RFC 9112 section 6.3, and whether the connection outlives the response.
    fn response_framing(
        &mut self,
        status: StatusCode,
        version: Version,
        headers: &mut HeaderMap,
    ) -> Result<Recv, Error> {
        let connection = |token: &str| {
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if version == Version::HTTP_10 {
            self.keep_alive &= connection("keep-alive");
        } else if connection("close") {
            self.keep_alive = false;
        }
        if self.head_method
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Recv::Done);
        }
        let te_chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .map(|te| {
                te.to_str()
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            });
        if let Some(chunked) = te_chunked {
            // A message with both is a smuggling vector: never reuse its connection, and do not
            // pass the length on (RFC 9112 section 6.3). HTTP/1.0 has no transfer codings.
            if headers.remove(header::CONTENT_LENGTH).is_some() || version == Version::HTTP_10 {
                self.keep_alive = false;
            }
            return Ok(if chunked {
                Recv::Chunked(Chunk::Size)
            } else {
                self.keep_alive = false;
                Recv::Eof
            });
        }
        let mut length = None;
        for v in headers.get_all(header::CONTENT_LENGTH) {
            // Repeated values must agree (a comma-separated list counts as repeated).
            for part in v.as_bytes().split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or(Error::Invalid("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("content-length"));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => Recv::Done,
            Some(n) => Recv::Length(n),
            None => {
                self.keep_alive = false;
                Recv::Eof
            }
        })
    }

    /// Whether the request may be sent again on another connection after this one (from the
    /// pool) failed before any byte of a response: an idempotent request none of whose body
    /// was taken yet.
    fn retryable(&self) -> bool {
        self.idempotent && !self.body_read && self.conn.rbuf.is_empty()
    }

    /// Moves the request over to `conn`, to be written again from its start.
    fn retry_on(&mut self, mut conn: Conn) {
        std::mem::swap(&mut conn.wbuf, &mut self.conn.wbuf);
        conn.wpos = 0;
        self.conn = conn;
    }
}

/// Sends `req` on `conn` and returns the response once its head has arrived; its body reads
/// the rest. `reconnect` is called at most once, when `conn` came from the pool and turns out
/// to have been closed by the server before it answered.
pub async fn send<B, F, Fut, E>(
    pool: &Arc<Pool>,
    conn: Conn,
    reused: bool,
    req: Request<B>,
    reconnect: F,
) -> Result<Response<RecvBody<B>>, E>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Conn, E>>,
    E: From<Error>,
{
    let mut ex = Exchange::new(conn, req)?;
    let (parts, recv) = match std::future::poll_fn(|cx| ex.poll_head(cx)).await {
        Ok(head) => head,
        Err(e) if reused && e.is_stale_connection() && ex.retryable() => {
            ex.retry_on(reconnect().await?);
            std::future::poll_fn(|cx| ex.poll_head(cx)).await?
        }
        Err(e) => return Err(e.into()),
    };
    let body = RecvBody {
        ex: Some(ex),
        recv,
        pool: pool.clone(),
        finish: finish_sending::<B>,
    };
    Ok(Response::from_parts(parts, body))
}

/// A response body read straight from the upstream connection. Dropped after its end (and
/// after the request's), it returns the connection to the pool; dropped before, it closes it.
#[derive(Debug)]
pub struct RecvBody<B> {
    ex: Option<Exchange<B>>,
    recv: Recv,
    pool: Arc<Pool>,
    /// What becomes of a request still being written when its response has ended.
    finish: fn(Exchange<B>, Arc<Pool>),
}

impl<B> RecvBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(ex) = self.ex.as_mut() else {
            return Poll::Ready(None);
        };
        // A server that answers before reading the whole request still gets the rest.
        ex.progress_send(cx)?;
        loop {
            let buf = &mut ex.conn.rbuf;
            match &mut self.recv {
                Recv::Done => return Poll::Ready(None),
                Recv::Length(left) => {
                    if !buf.is_empty() {
                        let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0 {
                            self.recv = Recv::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(buf.split_to(n).freeze()))));
                    }
                }
                Recv::Eof => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                }
                Recv::Chunked(chunk) => match decode_chunk(buf, chunk)? {
                    Decoded::Frame(f) => {
                        if *chunk == Chunk::Trailers {
                            self.recv = Recv::Done;
                        }
                        return Poll::Ready(Some(Ok(f)));
                    }
                    Decoded::End => {
                        self.recv = Recv::Done;
                        return Poll::Ready(None);
                    }
                    Decoded::Progress => continue,
                    Decoded::NeedMore => {}
                },
            }
            if ready!(ex.conn.poll_read_more(cx))? == 0 {
                if self.recv == Recv::Eof {
                    self.recv = Recv::Done;
                    ex.keep_alive = false;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Error::Truncated)));
            }
        }
    }
}

impl<B> Body for RecvBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let res = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = res {
            // Nothing more can be read from this connection.
            this.ex = None;
            this.recv = Recv::Done;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.recv == Recv::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.recv {
            Recv::Done => SizeHint::with_exact(0),
            Recv::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for RecvBody<B> {
    fn drop(&mut self) {
        if let Some(ex) = self.ex.take()
            && self.recv == Recv::Done
            && ex.keep_alive
            && ex.conn.rbuf.is_empty()
        {
            if ex.sending() {
                (self.finish)(ex, self.pool.clone());
            } else {
                self.pool.checkin(ex.conn);
            }
        }
    }
}

/// A response that ended before its request did (a server may answer early and go on
/// reading): the rest of the request is written in the background, as hyper's client did,
/// and the connection then returns to the pool.
fn finish_sending<B>(mut ex: Exchange<B>, pool: Arc<Pool>)
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let sent = std::future::poll_fn(|cx| ex.poll_send(cx)).await;
        if sent.is_ok() && ex.conn.rbuf.is_empty() {
            pool.checkin(ex.conn);
        }
    });
}

enum Decoded {
    Frame(Frame<Bytes>),
    /// The last chunk and an empty trailer section.
    End,
    /// A state change with nothing to yield.
    Progress,
    NeedMore,
}

/// One step of decoding a chunked body from `buf`.
fn decode_chunk(buf: &mut BytesMut, chunk: &mut Chunk) -> Result<Decoded, Error> {
    match *chunk {
        Chunk::Size => {
            let Some(eol) = find_crlf(buf) else {
                return if buf.len() > 1024 {
                    Err(Error::Invalid("chunk size line"))
                } else {
                    Ok(Decoded::NeedMore)
                };
            };
            let line = &buf[..eol];
            let digits = line
                .iter()
                .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                .map_or(line, |i| &line[..i]);
            let size = parse_hex(digits).ok_or(Error::Invalid("chunk size"))?;
            buf.advance(eol + 2);
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Decoded::Progress)
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let left = left - n as u64;
            *chunk = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Decoded::Frame(Frame::data(buf.split_to(n).freeze())))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Invalid("chunk data longer than its size"));
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(Decoded::Progress)
        }
        Chunk::Trailers => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Decoded::End);
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let len = match httparse::parse_headers(buf, &mut headers)? {
                httparse::Status::Complete((n, _)) => n,
                httparse::Status::Partial if buf.len() >= MAX_HEAD => {
                    return Err(Error::HeadTooLarge);
                }
                httparse::Status::Partial => return Ok(Decoded::NeedMore),
            };
            let mut map = HeaderMap::new();
            for h in headers.iter().take_while(|h| !h.name.is_empty()) {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| Error::Invalid("trailer name"))?;
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| Error::Invalid("trailer value"))?;
                map.append(name, value);
            }
            buf.advance(len);
            Ok(Decoded::Frame(Frame::trailers(map)))
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, b| {
        let d = (*b as char).to_digit(16)?;
        Some(n << 4 | u64::from(d))
    })
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests;
