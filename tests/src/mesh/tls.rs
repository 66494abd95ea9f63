//! Raw TLS clients, and a fake meshed peer (a TLS server presenting a given certificate).

use super::{Leaf, error_chain, lock, provider, roots};
use crate::client::{Reply, TestBody};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, ServerName};
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{io::AsyncReadExt, net::TcpStream, task::JoinHandle};

/// A TLS 1.3 client trusting `anchor_pem`, presenting `cert` if given.
pub fn client_config(anchor_pem: &str, cert: Option<&Leaf>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots(anchor_pem));
    let config = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
            .expect("a client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Connects and completes a TLS handshake with SNI `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The certificate chain a TLS server at `addr` presents for `sni`.
pub async fn server_chain(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Vec<CertificateDer<'static>> {
    let tls = crate::within(
        Duration::from_secs(10),
        "a TLS handshake",
        tls_connect(addr, sni, config),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS handshake with {addr} ({sni}): {e}"));
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("the server presented certificates")
        .to_vec()
}

/// One HTTP/1.1 request over a new TLS connection; `Err` describes a handshake or connection
/// failure (with its causes).
pub async fn tls_request(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    req: Request<TestBody>,
) -> Result<Reply, String> {
    crate::within(Duration::from_secs(10), "a request over TLS", async {
        let tls = tls_connect(addr, sni, config)
            .await
            .map_err(|e| format!("handshake: {}", error_chain(&e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| error_chain(&e))?;
        tokio::spawn(conn);
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        let (parts, body) = rsp.into_parts();
        let collected = body.collect().await.map_err(|e| error_chain(&e))?;
        let trailers = collected.trailers().cloned();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    })
    .await
}

/// Handshakes with `sni` and waits for the server's verdict on our certificate. In TLS 1.3 the
/// client finishes its side of the handshake before the server has checked the client's
/// certificate, so a refusal arrives as an alert on the first read. Returns the refusal (the
/// error and its causes); panics if the server accepted the connection (it then waits for us
/// to speak, and nothing arrives within 5 s) or sent data.
pub async fn refused(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> String {
    let mut tls = match crate::within(
        Duration::from_secs(10),
        "a TLS handshake",
        tls_connect(addr, sni, config),
    )
    .await
    {
        Ok(tls) => tls,
        Err(e) => return error_chain(&e),
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Err(e)) => error_chain(&e),
        Ok(Ok(0)) => "closed without an alert".to_string(),
        Ok(Ok(n)) => panic!(
            "the server accepted the connection and sent {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("the server accepted the connection (no alert within 5 s)"),
    }
}

// === TlsPeer ===

/// A fake meshed peer: a TLS 1.3 server presenting a given certificate, verifying (but not
/// requiring) client certificates against given roots, and answering every HTTP/1 or HTTP/2
/// request with `200 peer`. It records what reached it, so a test can show that nothing did.
#[derive(Debug)]
pub struct TlsPeer {
    addr: SocketAddr,
    state: Arc<PeerState>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct PeerState {
    handshakes: AtomicUsize,
    failed_handshakes: AtomicUsize,
    client_certs: Mutex<Vec<Vec<CertificateDer<'static>>>>,
    requests: Mutex<Vec<(Version, HeaderMap)>>,
}

impl TlsPeer {
    pub async fn start(cert: Leaf, client_roots: Arc<RootCertStore>) -> Self {
        let verifier = WebPkiClientVerifier::builder_with_provider(client_roots, provider())
            .allow_unauthenticated()
            .build()
            .expect("a client verifier");
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.chain, cert.key)
            .expect("a server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let state = Arc::new(PeerState::default());
        let s = state.clone();
        let (addr, task) = crate::accept_each("TLS peer", move |stream| {
            let (acceptor, s) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(_) => {
                        s.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                if let Some(certs) = tls.get_ref().1.peer_certificates() {
                    lock(&s.client_certs).push(certs.to_vec());
                }
                s.handshakes.fetch_add(1, Ordering::SeqCst);
                crate::serve_http(tls, move |req| {
                    lock(&s.requests).push((req.version(), req.headers().clone()));
                    std::future::ready(Response::new(crate::client::full("peer\n")))
                })
                .await;
            });
        })
        .await;
        Self { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Completed handshakes.
    pub fn handshakes(&self) -> usize {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// Handshakes that failed (the client aborted, or sent a certificate we do not trust).
    pub fn failed_handshakes(&self) -> usize {
        self.state.failed_handshakes.load(Ordering::SeqCst)
    }

    /// The certificate chains clients presented, one per completed handshake that had one.
    pub fn client_certs(&self) -> Vec<Vec<CertificateDer<'static>>> {
        lock(&self.state.client_certs).clone()
    }

    /// Every request received: its version and headers.
    pub fn requests(&self) -> Vec<(Version, HeaderMap)> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for TlsPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
