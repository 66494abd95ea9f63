//! Opaque TCP forwarding: bidirectional copy with half-close and byte counts, over mTLS when
//! the endpoint is a meshed proxy.

use crate::{
    balance::Target,
    drain::Drain,
    io::{BoxIo, CountingIo, Io},
    metrics::{Direction, Metrics, Peer, TcpKey, TcpStats, Tls},
    resolve::Endpoint,
    tls::{self, CredsRx, TlsError},
    transport::{self, ConnectError},
};
use std::{sync::Arc, sync::atomic::Ordering, time::Duration};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Connects to an endpoint: TCP, then mTLS when the endpoint names an identity.
pub(crate) async fn dial(
    ep: &Endpoint,
    timeout: Duration,
    creds: Option<&CredsRx>,
) -> Result<BoxIo, DialError> {
    let stream = transport::connect(ep.addr, timeout).await?;
    dial_io(ep, stream, creds, timeout).await
}

/// Wraps a connected stream in mTLS when the endpoint names an identity; the handshake is
/// bounded by `timeout`.
async fn dial_io<I: Io>(
    ep: &Endpoint,
    io: I,
    creds: Option<&CredsRx>,
    timeout: Duration,
) -> Result<BoxIo, DialError> {
    match (&ep.identity, creds) {
        (None, _) => Ok(Box::new(io)),
        (Some(id), Some(creds)) => Ok(Box::new(tls::connect_within(creds, id, io, timeout).await?)),
        (Some(_), None) => Err(TlsError::NoCredentials.into()),
    }
}

/// What a forward needs to know about its side of the proxy.
#[derive(Clone, Debug)]
pub(crate) struct Forward<'a> {
    pub direction: Direction,
    /// The TLS label for a plaintext upstream connection.
    pub plaintext: Tls,
    pub connect_timeout: Duration,
    pub creds: Option<&'a CredsRx>,
    pub metrics: &'a Metrics,
}

/// Dials the target and relays bytes both ways until both sides have closed. When one side
/// finishes sending, its write-half is shut down on the other side (half-close), so protocols
/// that end a request by closing keep working. A balanced target counts as in flight on its
/// endpoint for as long as the connection lasts, and is backed off if it cannot be reached.
pub(crate) async fn forward(io: BoxIo, target: &Target, f: Forward<'_>, drain: Drain) {
    let ep = target.endpoint();
    match transport::connect(ep.addr, f.connect_timeout).await {
        Ok(stream) => forward_on(io, stream, target, f, drain).await,
        Err(e) => {
            target.connect_failed();
            debug!(error = %e, "opaque forward failed");
        }
    }
}

/// [`forward`] over a TCP connection to the target that is already established.
pub(crate) async fn forward_on(
    mut io: BoxIo,
    stream: tokio::net::TcpStream,
    target: &Target,
    f: Forward<'_>,
    _drain: Drain,
) {
    let ep = target.endpoint();
    let tls = match &ep.identity {
        Some(id) => Tls::Established {
            peer_id: Some(id.clone()),
        },
        None => f.plaintext.clone(),
    };
    let stats = f.metrics.tcp(TcpKey {
        direction: f.direction,
        peer: Peer::Dst,
        target_addr: ep.addr,
        tls,
        dst_labels: ep.labels.clone(),
    });
    stats.open_total.fetch_add(1, Ordering::Relaxed);
    let counted = CountingIo::new(stream, stats.bytes.clone());
    match dial_io(ep, counted, f.creds, f.connect_timeout).await {
        Ok(mut upstream) => {
            target.connected();
            match tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
                Ok((to, from)) => debug!(target = %ep.addr, to, from, "opaque connection closed"),
                Err(e) => debug!(target = %ep.addr, error = %e, "opaque connection failed"),
            }
        }
        Err(e) => {
            if matches!(e, DialError::Tls(TlsError::Handshake { .. })) {
                target.connect_failed();
            }
            debug!(error = %e, "opaque forward failed");
        }
    }
    stats.close_total.fetch_add(1, Ordering::Relaxed);
}

/// Tracks an accepted connection in the `peer="src"` TCP metrics for its lifetime.
#[derive(Debug)]
pub(crate) struct SrcConn {
    stats: Arc<TcpStats>,
}

impl SrcConn {
    pub(crate) fn open(
        metrics: &Metrics,
        direction: Direction,
        target_addr: std::net::SocketAddr,
        tls: Tls,
    ) -> Self {
        let stats = metrics.tcp(TcpKey {
            direction,
            peer: Peer::Src,
            target_addr,
            tls,
            dst_labels: None,
        });
        stats.open_total.fetch_add(1, Ordering::Relaxed);
        Self { stats }
    }

    pub(crate) fn counters(&self) -> Arc<crate::io::ByteCounters> {
        self.stats.bytes.clone()
    }
}

impl Drop for SrcConn {
    fn drop(&mut self) {
        self.stats.close_total.fetch_add(1, Ordering::Relaxed);
    }
}
