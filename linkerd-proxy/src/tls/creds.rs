//! TLS credentials: the proxy's certificate and key, turned into rustls server and client
//! configurations, published through a watch so a renewal swaps them without touching
//! established connections (each connection keeps the config it started with).
//!
//! Policy, shared by both sides: TLS 1.3 only, the ring provider, peers verified against the
//! mesh trust anchors. The client checks that the server's certificate carries exactly the
//! identity discovery named (the SNI we send is that identity). The server has two configs:
//! [`Credentials::server`] requires a client certificate and verifies it; [`Credentials::
//! server_optional`] verifies one when it is presented and otherwise lets the client through as
//! TLS *without* a client identity. The inbound side uses the second only for a port whose
//! policy can admit such a client (an unauthenticated authorization, or Linkerd's
//! `PermitMeshTLS { clients: Unauthenticated }`, which proxies bootstrapping their identity
//! need to reach the identity service). A connection without a client identity never
//! satisfies an authorization that asks for one.

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{sync::Arc, time::SystemTime};
use tokio::sync::watch;

/// The mesh trust anchors.
#[derive(Clone, Debug)]
pub struct TrustRoots {
    roots: Arc<RootCertStore>,
}

/// The proxy's current identity, ready to serve and to dial.
#[derive(Debug)]
pub struct Credentials {
    pub local_id: Arc<str>,
    /// Client certificate required, chaining to the trust anchors.
    pub server: Arc<ServerConfig>,
    /// Client certificate verified when presented, but not required.
    pub server_optional: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub not_after: SystemTime,
}

pub type CredsRx = watch::Receiver<Option<Arc<Credentials>>>;

#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("no trust anchors in the PEM bundle")]
    NoAnchors,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid trust anchor: {0}")]
    Anchor(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TrustRoots {
    /// Parses a PEM bundle of trust anchors.
    pub fn from_pem(pem: &str) -> Result<Self, CredsError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| CredsError::Pem(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| CredsError::Anchor(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(CredsError::NoAnchors);
        }
        Ok(Self {
            roots: Arc::new(roots),
        })
    }

    /// A client config that presents no certificate: for reaching the identity service before
    /// the proxy has one.
    pub fn anonymous_client(&self) -> Result<Arc<ClientConfig>, CredsError> {
        let c = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        Ok(Arc::new(c))
    }
}

impl Credentials {
    /// Builds both configs from a certificate chain (leaf first) and its private key.
    pub fn new(
        local_id: &str,
        roots: &TrustRoots,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        not_after: SystemTime,
    ) -> Result<Self, CredsError> {
        let server = |optional: bool| -> Result<Arc<ServerConfig>, CredsError> {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.roots.clone(), provider());
            let verifier = if optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| CredsError::Verifier(e.to_string()))?;
            let config = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())?;
            Ok(Arc::new(config))
        };
        let (server, server_optional) = (server(false)?, server(true)?);
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots.roots.clone())
            .with_client_auth_cert(chain, key)?;
        Ok(Self {
            local_id: Arc::from(local_id),
            server,
            server_optional,
            client: Arc::new(client),
            not_after,
        })
    }
}

/// The identity (first DNS SAN) of a verified peer certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = ee.valid_dns_names().next()?;
    Some(Arc::from(name))
}
