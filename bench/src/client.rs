//! The orchestrator's own HTTP client: one request at a time to a server, a proxy's admin
//! server or through an HTTP proxy, readiness polling, and a graceful proxy shutdown.

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};

use crate::{
    counters::{self, Counters},
    load,
    procfs::Guarded,
    proxy::ProxyProc,
};

/// Distinct free loopback ports: bound together so they differ, then released for the children.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One request on a fresh HTTP/1.1 connection; returns the status and body.
pub async fn request_once(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut sender = load::connect_h1(addr).await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// `GET <path>` answers 200.
pub async fn expect_ok(addr: SocketAddr, path: &'static str) -> anyhow::Result<()> {
    match request_once(addr, Method::GET, path).await? {
        (StatusCode::OK, _) => Ok(()),
        (s, _) => bail!("{path}: {s}"),
    }
}

/// One absolute-form HTTP/1.1 request for `url` through the HTTP proxy at `proxy`.
pub async fn request_via_proxy(proxy: SocketAddr, url: &str) -> anyhow::Result<StatusCode> {
    let target = load::Target::parse(url, Some(proxy)).await?;
    let mut sender = load::connect_h1(proxy).await?;
    let rsp = sender.send_request(target.request(false)?).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    Ok(status)
}

/// Retries `probe` every 20 ms for up to 10 s, failing early if `child` exits.
pub async fn wait_until<F, Fut>(what: &str, child: &mut Guarded, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        child.check_running()?;
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("timed out waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The counters of one `/metrics` scrape; `None` if it failed.
pub async fn scrape_counters(admin: SocketAddr) -> Option<Counters> {
    match request_once(admin, Method::GET, "/metrics").await {
        Ok((StatusCode::OK, body)) => {
            Some(counters::parse_counters(&String::from_utf8_lossy(&body)))
        }
        _ => None,
    }
}

/// `identity_certificates_issued_total` from the identity service's admin server.
pub async fn identity_issued(admin: SocketAddr) -> Option<u64> {
    let (status, body) = request_once(admin, Method::GET, "/metrics").await.ok()?;
    if status != StatusCode::OK {
        return None;
    }
    let (scrape, _) = linkerd_control::prom::Scrape::parse_lossy(&String::from_utf8_lossy(&body));
    let values: Vec<f64> = scrape
        .find("identity_certificates_issued_total", &[])
        .map(|s| s.value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

/// `POST /shutdown`, then how the proxy ended (`exit status: 0` is a clean drain).
pub async fn shutdown(p: &mut ProxyProc) -> String {
    match request_once(p.admin, Method::POST, "/shutdown").await {
        Ok((StatusCode::OK, _)) => p.child.wait_or_kill(Duration::from_secs(5)).await,
        Ok((s, _)) => format!("/shutdown answered {s}; {}", kill(&mut p.child).await),
        Err(e) => format!("/shutdown failed: {e:#}; {}", kill(&mut p.child).await),
    }
}

pub async fn kill(child: &mut Guarded) -> String {
    child.wait_or_kill(Duration::ZERO).await
}
