//! Opaque TCP forwarding: bidirectional copy with half-close and byte counts.

use crate::{
    drain::Drain,
    io::CountingIo,
    metrics::{Direction, Metrics, Peer, TcpKey, Tls},
    transport,
};
use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// Dials `target` and relays bytes both ways until both sides have closed. When one side
/// finishes sending, its write-half is shut down on the other side (half-close), so
/// request/response protocols that signal the end of a request by closing keep working.
pub async fn forward<I>(
    mut io: I,
    target: SocketAddr,
    direction: Direction,
    tls: Tls,
    connect_timeout: Duration,
    metrics: &Metrics,
    _drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match transport::connect(target, connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "opaque forward failed");
            return;
        }
    };
    let stats = metrics.tcp(TcpKey {
        direction,
        peer: Peer::Dst,
        target_addr: target,
        tls,
    });
    stats.open_total.fetch_add(1, Ordering::Relaxed);
    let mut upstream = CountingIo::new(upstream, stats.bytes.clone());
    match tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
        Ok((to, from)) => debug!(%target, to, from, "opaque connection closed"),
        Err(e) => debug!(%target, error = %e, "opaque connection failed"),
    }
    stats.close_total.fetch_add(1, Ordering::Relaxed);
}

/// Tracks an accepted connection in the `peer="src"` TCP metrics for its lifetime.
#[derive(Debug)]
pub struct SrcConn {
    stats: Arc<crate::metrics::TcpStats>,
}

impl SrcConn {
    pub fn open(
        metrics: &Metrics,
        direction: Direction,
        target_addr: SocketAddr,
        tls: Tls,
    ) -> Self {
        let stats = metrics.tcp(TcpKey {
            direction,
            peer: Peer::Src,
            target_addr,
            tls,
        });
        stats.open_total.fetch_add(1, Ordering::Relaxed);
        Self { stats }
    }

    pub fn counters(&self) -> Arc<crate::io::ByteCounters> {
        self.stats.bytes.clone()
    }
}

impl Drop for SrcConn {
    fn drop(&mut self) {
        self.stats.close_total.fetch_add(1, Ordering::Relaxed);
    }
}
