//! The admin server: `/metrics`, `/ready`, `/live`, `/proxy-log-level`, `/shutdown`, `/tap`.

use crate::{drain::Signal, log::LogLevel, metrics::Metrics};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc, watch},
};
use tracing::{debug, info};

#[derive(Clone, Debug)]
pub(crate) struct State {
    pub metrics: Arc<Metrics>,
    pub log: LogLevel,
    pub drain: Signal,
    pub shutdown: watch::Sender<bool>,
    pub shutdown_enabled: bool,
    /// With an identity, the proxy is ready only once it holds a certificate.
    pub creds: Option<crate::tls::CredsRx>,
    /// Inbound ports still waiting for their first policy from the policy service.
    pub policy_pending: Arc<std::sync::atomic::AtomicUsize>,
}

pub(crate) async fn serve(listener: TcpListener, state: State) {
    let state = Arc::new(state);
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, client, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(state: &State, client: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/tap") => {
            if !client.ip().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "tap is only allowed from localhost\n",
                );
            }
            match tap_seconds(req.uri().query()) {
                Ok(secs) => tap(state, secs),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (&Method::GET, "/metrics") => {
            let mut out = String::with_capacity(16 * 1024);
            state.metrics.encode(&mut out);
            text(StatusCode::OK, out)
        }
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            if state.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if state.creds.as_ref().is_some_and(|c| c.borrow().is_none()) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for an identity certificate\n",
                )
            } else if state
                .policy_pending
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
            {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for the inbound policy\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/proxy-log-level") => {
            text(StatusCode::OK, format!("{}\n", state.log.get()))
        }
        (&Method::PUT, "/proxy-log-level") => {
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "log level too long\n"),
            };
            let level = String::from_utf8_lossy(&body);
            match state.log.set(&level) {
                Ok(()) => {
                    info!(level = %level.trim(), "log level changed");
                    text(StatusCode::NO_CONTENT, "")
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("invalid log level: {e}\n")),
            }
        }
        (&Method::POST, "/shutdown") => {
            if !state.shutdown_enabled {
                text(StatusCode::NOT_FOUND, "shutdown endpoint disabled\n")
            } else if !client.ip().is_loopback() {
                text(
                    StatusCode::FORBIDDEN,
                    "shutdown is only allowed from localhost\n",
                )
            } else {
                info!("shutdown requested through the admin server");
                let _ = state.shutdown.send(true);
                text(StatusCode::OK, "shutdown\n")
            }
        }
        (_, "/metrics" | "/live" | "/ready" | "/proxy-log-level" | "/shutdown" | "/tap") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// The longest a `/tap` stream lasts, and its default.
const TAP_MAX_SECONDS: u64 = 3600;
const TAP_DEFAULT_SECONDS: u64 = 60;

/// `?seconds=N` (default 60, at most 3600).
fn tap_seconds(query: Option<&str>) -> Result<u64, String> {
    let mut secs = TAP_DEFAULT_SECONDS;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("seconds", v)) => {
                secs = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=TAP_MAX_SECONDS).contains(s))
                    .ok_or_else(|| format!("seconds={v:?}: expected 1 to {TAP_MAX_SECONDS}"))?;
            }
            _ => return Err(format!("unknown parameter {pair:?}; only seconds=N")),
        }
    }
    Ok(secs)
}

/// Streams every request the proxy finishes, one JSON object per line, for `secs` seconds or
/// until the client goes away. A watcher that falls behind gets `{"lost":N}` lines instead of
/// slowing the proxy.
fn tap(state: &State, secs: u64) -> Response<Body> {
    let mut watch = state.metrics.tap().watch();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(Duration::from_secs(secs));
        tokio::pin!(deadline);
        loop {
            let line = tokio::select! {
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                r = watch.rx.recv() => match r {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Bytes::from(format!("{{\"lost\":{n}}}\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if tx.send(line).await.is_err() {
                break;
            }
        }
        // Dropping `watch` here stops the proxy building events once nobody else watches.
    });
    let mut rsp = Response::new(TapBody { rx }.boxed());
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    rsp
}

struct TapBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(http_body::Frame::data(l))))
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(Full::new(body.into()).boxed());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
