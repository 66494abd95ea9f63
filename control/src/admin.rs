//! The admin server: `/metrics` (Prometheus text), `/ready`, `/live`.

use crate::serve::accept;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::{net::TcpListener, sync::watch};

/// Serves the admin endpoints on `listener` until `shutdown` turns true: `/metrics` answers
/// `metrics()` (Prometheus text, see [`crate::metrics::encode`]), `/ready` 200 when `ready()`
/// is `Ok` and 503 with its reason otherwise, `/live` 200; anything else 404.
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
        hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
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
