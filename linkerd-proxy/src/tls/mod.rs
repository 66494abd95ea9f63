//! Mutual TLS between proxies: credentials, the client side (dialling a meshed endpoint) and
//! the server side's ClientHello peek.

pub mod client_hello;
mod creds;

pub use self::creds::{Credentials, CredsError, CredsRx, TrustRoots, identity_of, provider};

use rustls_pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The bound on a handshake made with [`connect`]; the data path uses [`connect_within`] with
/// the configured connect timeout instead.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no TLS credentials yet (the proxy has not been certified)")]
    NoCredentials,
    #[error("invalid server identity {0:?}")]
    BadName(String),
    #[error("TLS handshake with {identity} failed: {source}")]
    Handshake {
        identity: String,
        #[source]
        source: std::io::Error,
    },
}

/// Dials TLS 1.3 to a peer proxy, presenting our certificate, sending `identity` as SNI and
/// accepting only a certificate that chains to the trust anchors and names `identity`. The
/// handshake is bounded by [`DEFAULT_HANDSHAKE_TIMEOUT`].
pub async fn connect<I>(
    creds: &CredsRx,
    identity: &str,
    io: I,
) -> Result<tokio_rustls::client::TlsStream<I>, TlsError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    connect_within(creds, identity, io, DEFAULT_HANDSHAKE_TIMEOUT).await
}

/// [`connect`], failing with [`TlsError::Handshake`] (a `TimedOut` error) when the handshake
/// does not complete within `timeout`: a peer that accepts the TCP connection but never
/// answers (a wedged process still has a listen backlog) must not hold the request forever.
pub async fn connect_within<I>(
    creds: &CredsRx,
    identity: &str,
    io: I,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<I>, TlsError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let config = creds
        .borrow()
        .as_ref()
        .map(|c| c.client.clone())
        .ok_or(TlsError::NoCredentials)?;
    let name = ServerName::try_from(identity.to_string())
        .map_err(|_| TlsError::BadName(identity.to_string()))?;
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, io);
    let result = match tokio::time::timeout(timeout, handshake).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no handshake within {timeout:?}"),
        )),
    };
    result.map_err(|source| TlsError::Handshake {
        identity: identity.to_string(),
        source,
    })
}
