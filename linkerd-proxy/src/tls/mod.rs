//! Mutual TLS between proxies: credentials, the client side (dialling a meshed endpoint) and
//! the server side's ClientHello peek.

pub mod client_hello;
mod creds;

pub use self::creds::{Credentials, CredsError, CredsRx, TrustRoots, identity_of, provider};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

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
/// accepting only a certificate that chains to the trust anchors and names `identity`.
pub async fn connect<I>(
    creds: &CredsRx,
    identity: &str,
    io: I,
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
    tokio_rustls::TlsConnector::from(config)
        .connect(name, io)
        .await
        .map_err(|source| TlsError::Handshake {
            identity: identity.to_string(),
            source,
        })
}
