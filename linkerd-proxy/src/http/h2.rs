//! HTTP/2 to upstreams on the `h2` crate's stream API, without hyper's HTTP/2 client.
//!
//! hyper's client takes each request over a channel to the task that owns the connection,
//! which opens the stream and spawns one more task per request to wait for the response head
//! and hand it back over a oneshot. Here the future that sends a request opens the stream
//! itself and waits for the response head on it, so a response wakes the task that asked for
//! it straight from the connection task. The connection task only drives the connection
//! (reads, writes, flow control). What stays the same as hyper's client: its settings
//! (windows, frame and send-buffer sizes), `Content-Length` added when the body's size is known,
//! request bodies piped under flow control by a task of their own (only when they are not
//! complete at once), a request cancelled before its response resets its stream, and
//! keep-alive pings. Unlike hyper's client, the pings also run while the connection is idle,
//! so a peer that went away is noticed before a request finds out, and a response cut short
//! by a reset is an error even when the reset says `NO_ERROR` (only a reset after the
//! response's `END_STREAM` is the RFC 9113 "stop sending" signal, and `h2` absorbs that one).
//! The proxy sends no `CONNECT` here: its server tunnels an HTTP/2 `CONNECT` over an
//! HTTP/1.1 `CONNECT` upstream (`Client::send_upgrade`), as it does an HTTP/1 one.

use crate::BoxError;
use crate::io::BoxIo;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{sync::oneshot, task::AbortHandle};
use tracing::debug;

/// hyper's client defaults, which the proxy used before this client.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams opened before the server's SETTINGS say how many it takes.
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// A ping every 10 s; no pong within 3 s closes the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A handle on one upstream HTTP/2 connection, shared by every request to its endpoint.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    tx: ::h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Conn {
    /// The HTTP/2 handshake over `io`. A task of its own drives the connection until it ends
    /// (the peer closes it, a keep-alive ping goes unanswered, or every handle is dropped and
    /// no stream is left), then calls `on_close` (which also runs if the handshake fails).
    pub(crate) async fn handshake(
        io: BoxIo,
        on_close: impl FnOnce() + Send + 'static,
    ) -> Result<Conn, ::h2::Error> {
        let closed = Arc::new(AtomicBool::new(false));
        // Runs `on_close` also when the handshake fails.
        let guard = OnClose {
            closed: closed.clone(),
            on_close: Some(on_close),
        };
        let (tx, mut conn) = ::h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let ping = conn.ping_pong();
        let task = tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        if let Some(ping) = ping {
            tokio::spawn(keepalive(ping, task.abort_handle()));
        }
        Ok(Conn { tx, closed })
    }

    /// The connection has ended: new requests need another.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether `self` and `other` are handles on the same connection.
    pub(crate) fn same(&self, other: &Conn) -> bool {
        Arc::ptr_eq(&self.closed, &other.closed)
    }

    /// Checks that the connection still takes new streams. An error means it is going away
    /// or gone, and nothing was sent on it. Streams beyond the server's concurrency limit
    /// wait inside `h2` until one ends (as they waited in hyper's request channel before).
    pub(crate) async fn ready(&self) -> Result<Ready, ::h2::Error> {
        let tx = self.tx.clone().ready().await?;
        Ok(Ready(tx))
    }
}

/// A connection with room for one more stream.
#[derive(Debug)]
pub(crate) struct Ready(::h2::client::SendRequest<Bytes>);

impl Ready {
    /// Sends `req` and waits for the response head. A request body that is not complete
    /// at once goes on streaming from a task of its own, under the connection's flow control,
    /// while the response is read.
    pub(crate) async fn send<B>(self, req: Request<B>) -> Result<Response<RecvBody>, ::h2::Error>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut tx = self.0;
        let (mut parts, body) = req.into_parts();
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || has_payload_semantics(&parts.method))
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if let Some(p) = parts.extensions.remove::<hyper::ext::Protocol>() {
            parts
                .extensions
                .insert(::h2::ext::Protocol::from(p.as_str()));
        }
        let streaming = parts.method == Method::CONNECT || !body.is_end_stream();
        let (rsp, stream) = tx.send_request(Request::from_parts(parts, ()), !streaming)?;
        let mut cancel = streaming.then(|| pipe(body, stream));
        let rsp = rsp.await?;
        // The response came: the request body's pipe goes on to its end.
        if let Some(c) = cancel.as_mut() {
            c.defuse();
        }
        let (head, recv) = rsp.into_parts();
        let body = RecvBody::new(recv, &head.headers);
        Ok(Response::from_parts(head, body))
    }
}

/// GET, HEAD, DELETE and CONNECT bodies have no defined meaning, so an empty one gets no
/// `Content-Length: 0` (as hyper does).
fn has_payload_semantics(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

/// Marks the connection closed and reports it, however its task ends (also when aborted).
struct OnClose<F: FnOnce()> {
    closed: Arc<AtomicBool>,
    on_close: Option<F>,
}

impl<F: FnOnce()> Drop for OnClose<F> {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        if let Some(f) = self.on_close.take() {
            f();
        }
    }
}

/// Pings the peer every [`KEEPALIVE_INTERVAL`]; closes the connection when a pong does not
/// come within [`KEEPALIVE_TIMEOUT`]. Ends with the connection.
async fn keepalive(mut ping: ::h2::PingPong, conn: AbortHandle) {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        if conn.is_finished() {
            return;
        }
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(::h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                debug!("upstream HTTP/2 connection did not answer a ping; closing it");
                conn.abort();
                return;
            }
        }
    }
}

/// Starts sending `body` on `stream`: inline while it is ready, then from a task of its own.
/// Dropping the returned guard before [`Cancel::defuse`] resets the stream (the request was
/// cancelled before its response).
fn pipe<B>(body: B, stream: ::h2::SendStream<Bytes>) -> Cancel
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut pipe = Pipe {
        body,
        stream,
        cancel: None,
    };
    let waker = std::task::Waker::noop();
    if let Poll::Ready(r) = Pin::new(&mut pipe).poll(&mut Context::from_waker(waker)) {
        if let Err(e) = r {
            debug!(error = %e, "upstream HTTP/2 request body");
        }
        return Cancel(None);
    }
    let (tx, rx) = oneshot::channel();
    pipe.cancel = Some(rx);
    tokio::spawn(async move {
        if let Err(e) = pipe.await {
            debug!(error = %e, "upstream HTTP/2 request body");
        }
    });
    Cancel(Some(tx))
}

/// Resets the request's stream when dropped before the response head came.
struct Cancel(Option<oneshot::Sender<()>>);

impl Cancel {
    fn defuse(&mut self) {
        // Dropping the sender unsent tells the pipe the response came.
        self.0 = None;
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Copies a request body onto its stream under flow control.
struct Pipe<B> {
    body: B,
    stream: ::h2::SendStream<Bytes>,
    /// `Ok` = the request was cancelled; closed = its response came (stop watching).
    cancel: Option<oneshot::Receiver<()>>,
}

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        loop {
            if let Some(rx) = me.cancel.as_mut()
                && let Poll::Ready(r) = Pin::new(rx).poll(cx)
            {
                me.cancel = None;
                if r.is_ok() {
                    me.stream.send_reset(::h2::Reason::CANCEL);
                    return Poll::Ready(Ok(()));
                }
            }
            // Wait for some send window before taking the next chunk from the body: h2
            // buffers what it cannot send yet, and this keeps that buffer small.
            me.stream.reserve_capacity(1);
            if me.stream.capacity() == 0 {
                loop {
                    match ready!(me.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Poll::Ready(Err(e.into())),
                        None => return Poll::Ready(Err("the stream closed".into())),
                    }
                }
            } else if let Poll::Ready(r) = me.stream.poll_reset(cx) {
                return Poll::Ready(match r {
                    Ok(reason) => Err(format!("the server reset the stream: {reason}").into()),
                    Err(e) => Err(e.into()),
                });
            }
            match ready!(Pin::new(&mut me.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = me.body.is_end_stream();
                        me.stream.send_data(data, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            me.stream.reserve_capacity(0);
                            me.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    me.stream.send_reset(::h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(Err(e.into()));
                }
                None => {
                    me.stream.reserve_capacity(0);
                    me.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A response body read from its stream; the window it frees is given back as it is read.
#[derive(Debug)]
pub struct RecvBody {
    recv: ::h2::RecvStream,
    data_done: bool,
    /// What `Content-Length` says is left.
    remaining: Option<u64>,
}

impl RecvBody {
    /// The body of a response with `headers`: its `Content-Length` is the size hint.
    fn new(recv: ::h2::RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Self {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = ::h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ::h2::Error>>> {
        let me = &mut *self;
        if !me.data_done {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = me.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset after the response's END_STREAM (RFC 9113 section 8.1: the server
                // does not want the rest of the request) is not seen here: `h2` keeps the
                // complete response. Any reset seen here cut the response short.
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => me.data_done = true,
            }
        }
        match ready!(me.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
