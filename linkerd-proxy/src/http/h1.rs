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

mod chunked;
mod exchange;

use self::{
    chunked::{Decoded, decode_chunk},
    exchange::{Chunk, Exchange, Recv},
};
use super::pool::{self, Key, Pooled};
use crate::{BoxError, io::BoxIo, metrics::TcpStats};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::{
    io,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, Waker, ready},
};
use tokio::io::AsyncRead;

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

#[cfg(test)]
mod tests;
