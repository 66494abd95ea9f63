//! The load generator (HTTP/1.1 GETs to the front door, as a client outside the mesh would
//! send them: to the inbound sidecar of a ready workload serving the load's service) and the
//! one-request probe that must succeed before `mesh up` prints its `Try:` line.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::watch;

/// A running load generator.
#[derive(Debug)]
pub struct Load {
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Sends `rps` requests per second for `path` with `authority` as `Host` to whatever
    /// address `front` holds (none: the request fails, as it would for a real client).
    pub fn start(
        front: watch::Receiver<Option<SocketAddr>>,
        authority: String,
        path: String,
        rps: u32,
    ) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(generate(
            front,
            authority,
            path,
            rps,
            sent.clone(),
            failed.clone(),
        ));
        Load { sent, failed, task }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Over one keep-alive connection, reconnecting after a failure or when the front moves.
async fn generate(
    front: watch::Receiver<Option<SocketAddr>>,
    authority: String,
    path: String,
    rps: u32,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(SocketAddr, Sender)> = None;
    loop {
        tick.tick().await;
        sent.fetch_add(1, Ordering::Relaxed);
        let target = *front.borrow();
        let ok = match target {
            None => false,
            Some(addr) => {
                if conn
                    .as_ref()
                    .is_none_or(|(a, s)| *a != addr || s.is_closed())
                {
                    conn = connect(addr).await.map(|s| (addr, s));
                }
                match conn.as_mut() {
                    Some((_, tx)) => get(tx, &authority, &path).await.is_ok(),
                    None => false,
                }
            }
        };
        if !ok {
            failed.fetch_add(1, Ordering::Relaxed);
            conn = None;
        }
    }
}

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let s = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = s.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(tx)
}

/// One GET; the status and body when it is not a success.
async fn get(tx: &mut Sender, authority: &str, path: &str) -> Result<(), String> {
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let rsp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
        .await
        .map_err(|_| "no response within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim_end()
        ))
    }
}

/// Sends the request the `Try:` line shows until it succeeds (every workload it calls is
/// then ready and in discovery, every sidecar on the way has its certificate), or `within`
/// runs out: then the last failure.
pub async fn probe(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let outcome = match connect(addr).await {
            Some(mut tx) => get(&mut tx, authority, path).await,
            None => Err(format!("cannot connect to {addr}")),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
