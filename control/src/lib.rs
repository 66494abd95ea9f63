//! What the control-plane services (identity, destination, policy, the injector) share: the admin
//! server with `/metrics`, `/ready` and `/live`, the gRPC server loop of destination and policy,
//! the stop signal their loops select on, and stdout for their commands (and the rest of
//! `mesh`'s) that a closed pipe does not crash.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use std::{convert::Infallible, net::SocketAddr, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Writes `text` to stdout in one go and flushes it. `println!` panics when the reader has gone
/// (`mesh policy crds - | head -1`: Rust ignores SIGPIPE, so the write fails with `EPIPE`);
/// here that is an `io::ErrorKind::BrokenPipe` error, on which `mesh` exits quietly.
pub fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Completes once `stop` holds `true` (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let done = *stop.borrow_and_update();
        if done || stop.changed().await.is_err() {
            return;
        }
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` turns true: `/metrics` answers
/// `metrics()` (Prometheus text), `/ready` 200 when `ready()` is `Ok` and 503 with its reason
/// otherwise, `/live` 200; anything else 404.
pub async fn serve_admin<M, R>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    metrics: M,
    ready: R,
) where
    M: Fn() -> String + Clone + Send + Sync + 'static,
    R: Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
{
    while let Some((io, _)) = accept(&listener, &mut shutdown).await {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let svc = service_fn(move |req: Request<Incoming>| {
            let rsp = answer(req.uri().path(), &metrics, &ready);
            async move { Ok::<_, Infallible>(rsp) }
        });
        tokio::spawn(async move {
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection failed");
            }
        });
    }
}

/// The next connection on `listener`, or `None` once `stop` holds `true`. A failed accept (out
/// of file descriptors, say) is logged and retried after a short pause instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, addr = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(stop) => return None,
        }
    }
}

/// Serves gRPC (HTTP/2 only, on hyper directly: tonic's transport server does not expose the
/// per-stream send buffer, `max_send_buf`) on `listener` until `drain` turns true, then asks
/// every connection to finish and waits for them.
pub async fn serve_h2<S, B>(
    listener: TcpListener,
    svc: S,
    mut drain: watch::Receiver<bool>,
    max_send_buf: usize,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.max_send_buf_size(max_send_buf);
    let mut conns = tokio::task::JoinSet::new();
    while let Some((io, peer)) = accept(&listener, &mut drain).await {
        let _ = io.set_nodelay(true);
        let conn = h2.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc.clone()));
        let mut drain = drain.clone();
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                    return;
                }
                _ = stopped(&mut drain) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
        // Reap finished connections so the set holds only live ones.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

fn answer(
    path: &str,
    metrics: &impl Fn() -> String,
    ready: &impl Fn() -> Result<(), &'static str>,
) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, metrics()),
        "/live" => (StatusCode::OK, "live\n".to_string()),
        "/ready" => match ready() {
            Ok(()) => (StatusCode::OK, "ready\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_metrics_readiness_and_liveness_until_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let is_ready = Arc::new(AtomicBool::new(false));
        let flag = is_ready.clone();
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve_admin(
            listener,
            stop_rx,
            || "requests_total 3\n".to_string(),
            move || {
                if flag.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("nothing loaded yet")
                }
            },
        ));

        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(m.ends_with("requests_total 3\n"), "{m}");
        let r = get(addr, "/ready").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("nothing loaded yet\n"), "{r}");
        is_ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
