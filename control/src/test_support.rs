//! Helpers for the services' tests (feature `test-support`): a temporary directory, requests
//! to an admin server, waiting for readiness, scraping `/metrics`, and a bound service running
//! on a task of its own.

use crate::{
    prom::Scrape,
    serve::{Bound, Service},
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fresh directory under the system temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<tmp>/<prefix>-<pid>-<n>-<nanos>`.
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in the directory (a registry file, say); its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `GET path` on an admin server: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let status = out
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `/metrics` of an admin server, parsed (panics on text that is not Prometheus text).
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = admin_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    Scrape::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// Waits until `/ready` answers 200, polling every 20 ms; panics after `within`.
pub async fn wait_ready(addr: SocketAddr, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if admin_get(addr, "/ready").await.0 == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bound service running on a task of its own until [`Running::stop`] (dropped, it stops
/// too: its shutdown signal completes).
#[derive(Debug)]
pub struct Running<E> {
    /// The service's own (gRPC) address.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), E>>,
}

impl<E: Send + 'static> Running<E> {
    /// Runs `bound` on a task of its own.
    pub fn spawn<S>(bound: Bound<S>) -> Self
    where
        S: Service<Error = E> + Send + 'static,
    {
        let addr = bound
            .grpc_addr()
            .unwrap_or_else(|e| panic!("the service's address: {e}"));
        let admin = bound
            .admin_addr()
            .unwrap_or_else(|e| panic!("the admin address: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            stop,
            task,
        }
    }

    /// Stops the service and waits for it to wind down (panics if that takes longer than
    /// `within`); what it returned.
    pub async fn stop(self, within: Duration) -> Result<(), E> {
        let _ = self.stop.send(());
        tokio::time::timeout(within, self.task)
            .await
            .unwrap_or_else(|_| panic!("the service did not stop within {within:?}"))
            .unwrap_or_else(|e| panic!("the service's task: {e}"))
    }
}
