//! The admin server: `/metrics`, `/ready`, `/live`, `/proxy-log-level`, `/shutdown`.

use crate::{drain::Signal, log::LogLevel, metrics::Metrics};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{convert::Infallible, net::SocketAddr, sync::Arc};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info};

#[derive(Clone, Debug)]
pub struct State {
    pub metrics: Arc<Metrics>,
    pub log: LogLevel,
    pub drain: Signal,
    pub shutdown: watch::Sender<bool>,
    pub shutdown_enabled: bool,
    /// With an identity, the proxy is ready only once it holds a certificate.
    pub creds: Option<crate::tls::CredsRx>,
}

pub async fn serve(listener: TcpListener, state: State) {
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

async fn handle(
    state: &State,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
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
        (_, "/metrics" | "/live" | "/ready" | "/proxy-log-level" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
