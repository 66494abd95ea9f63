//! Serving one detected HTTP connection with hyper: HTTP/1 (with upgrades and the header-read
//! timeout) or HTTP/2, each request handed to the connection's [`Handle`] (its direction's
//! handler) with its place in flight, until the client closes or the proxy drains.

use super::{
    ProxyBody,
    exchange::Core,
    header_timeout::{FirstHead, HeaderTimeout, first_head},
    inflight::{ConnRequests, Held},
};
use crate::{
    detect,
    io::{BoxIo, PrefixedIo},
};
use http::{Request, Response};
use hyper::{body::Incoming, server::conn, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tracing::debug;

/// A connection's handler: proxies each of its requests.
pub(crate) trait Handle: Send + Sync + 'static {
    /// The part of the connection every direction has.
    fn core(&self) -> &Core;

    /// Proxies one request whose head is complete; `held` is its place in flight, to be
    /// released when its response ends.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        held: Held,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

/// Streams one HTTP/2 client may have open at once (hyper's default is 200).
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// The largest request head accepted, over HTTP/2 (HPACK-decoded) and HTTP/1 alike.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// HTTP/1: the most a connection buffers of a request head (and of pipelined requests).
const MAX_H1_BUF: usize = 64 * 1024;

/// Runs a hyper connection to its end; once the proxy drains, asks it to finish what it has
/// in flight and take nothing new. The connection is polled first: no random start on every
/// wake-up, and the drain is looked at only while the connection waits. (A macro: the two
/// connection types share `graceful_shutdown` by name, not by a trait.)
macro_rules! until_drained {
    ($conn:expr, $drain:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            biased;
            res = conn.as_mut() => res,
            _ = $drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// Serves HTTP on `io` until the client closes it or the proxy drains.
pub(crate) async fn serve<H: Handle>(io: PrefixedIo<BoxIo>, proto: detect::Protocol, http: Arc<H>) {
    let core = http.core();
    let drain = core.drain.clone();
    let requests = ConnRequests::new(core.fw.in_flight.clone());
    let res = match proto {
        detect::Protocol::Http2 => {
            // hyper spawns a task per HTTP/2 request and moves the request's future into it:
            // boxed, that is a pointer instead of the future's few KiB copied on the way in.
            // (HTTP/1 keeps one future slot per connection: boxing would only add an
            // allocation per request.) Over the in-flight bound, the stream is refused
            // (`REFUSED_STREAM`) before anything is allocated for it.
            let svc = service_fn(move |req: Request<Incoming>| {
                let rsp = requests.start().map(|held| {
                    let http = http.clone();
                    Box::pin(async move {
                        YieldOnce(false).await;
                        http.handle(req, held).await
                    })
                });
                async move {
                    match rsp {
                        Some(rsp) => Ok(rsp.await),
                        None => Err(::h2::Error::from(::h2::Reason::REFUSED_STREAM)),
                    }
                }
            });
            let conn = conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(3))
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .max_header_list_size(MAX_HEADER_LIST_SIZE)
                .serve_connection(TokioIo::new(io), svc);
            until_drained!(conn, drain)
        }
        _ => {
            let fw = &core.fw;
            let limit = fw.header_read_timeout;
            let io = match first_head(io, limit, MAX_H1_BUF, &fw.header_timeouts, &drain).await {
                FirstHead::Ready(io) => io,
                FirstHead::TimedOut => {
                    return debug!("closing a connection whose first request head timed out");
                }
                FirstHead::Drained => return,
            };
            let io = HeaderTimeout::new(
                io,
                requests.clone(),
                core.fw.header_read_timeout,
                core.fw.header_timeouts.clone(),
            );
            // hyper calls this as soon as it has parsed a head (and reads on before it polls
            // the future): the request counts as started, for the header-read timeout, here.
            let svc = service_fn(move |req: Request<Incoming>| {
                let http = http.clone();
                let held = requests.start();
                async move {
                    let rsp = match held {
                        Some(held) => http.handle(req, held).await,
                        None => http.core().overloaded(&req),
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            // The header-read timeout is `HeaderTimeout`'s, not hyper's: hyper arms a timer
            // for every request, and each registration wakes tokio's driver through its
            // eventfd (one `write` and one `epoll_wait` more per request). Idle keep-alive
            // connections are bounded by the client, TCP keepalive and the connection limit.
            let conn = conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(MAX_H1_BUF)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            until_drained!(conn, drain)
        }
    };
    if let Err(e) = res {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Returns `Pending` once, having woken its task. hyper polls an HTTP/2 request's future before
/// it looks at the stream's reset state, and looks only when the future is pending; h2 has
/// already read every frame that came with the request (HEADERS and an RST_STREAM in one
/// packet: rapid reset). So a request the client reset at once is dropped here, before any of
/// it is sent upstream: it costs the application nothing and the shared upstream connection
/// no reset. The price is one more poll of the request's task, without a system call.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
