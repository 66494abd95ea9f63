//! Kubernetes service-account tokens, checked with a `TokenReview`.
//!
//! One `POST /apis/authentication.k8s.io/v1/tokenreviews` per Certify, with
//! `spec.audiences = ["identity.l5d.io"]` (retried once without audiences if the API server
//! says the token's audiences do not match, to accept legacy tokens, as Linkerd does).
//! `status.user.username = system:serviceaccount:<ns>:<sa>` becomes the identity
//! `<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`.
//!
//! This is hand-written on hyper 1 + tokio-rustls (ring) rather than on kube's client: one
//! POST, and this crate builds without kube and k8s-openapi (see the crate README); the client
//! reuses the HTTP/TLS stack the workspace already compiles. Connections are kept alive in a
//! small pool; the API server's bearer token is reread on every call (kubelet rotates it).

use crate::token::{AuthError, Authenticator};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use proto::id::IdentityName;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The audience Linkerd's projected tokens carry.
pub const AUDIENCE: &str = "identity.l5d.io";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const MAX_IDLE: usize = 8;

/// Where the API server is and how to talk to it.
#[derive(Clone, Debug)]
pub struct TokenReviewConfig {
    /// `https://host:port` (or `http://` for `kubectl proxy`).
    pub api_url: http::Uri,
    /// PEM roots for the API server's certificate (required for https).
    pub ca_file: Option<PathBuf>,
    /// Our own bearer token, reread on every call.
    pub token_file: Option<PathBuf>,
    pub control_plane_ns: String,
    pub trust_domain: String,
    /// Per review, connection included.
    pub timeout: Duration,
}

/// Why the TokenReview client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("not in a cluster: {0} is not set")]
    NoEnv(&'static str),
    #[error("bad API server URL {0:?}")]
    Url(String),
    #[error("https needs a CA file for the API server")]
    NoCa,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bad CA file: {0}")]
    Ca(String),
}

impl TokenReviewConfig {
    /// An API server at `api_url`, with no CA or bearer token file yet and a 10s timeout.
    pub fn new(api_url: http::Uri, control_plane_ns: &str, trust_domain: &str) -> Self {
        Self {
            api_url,
            ca_file: None,
            token_file: None,
            control_plane_ns: control_plane_ns.into(),
            trust_domain: trust_domain.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// The in-cluster configuration: `KUBERNETES_SERVICE_HOST`/`_PORT` and the pod's
    /// service-account token and CA.
    pub fn in_cluster(control_plane_ns: &str, trust_domain: &str) -> Result<Self, KubeError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| KubeError::NoEnv("KUBERNETES_SERVICE_HOST"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .map_err(|_| KubeError::NoEnv("KUBERNETES_SERVICE_PORT"))?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!("https://{host}:{port}");
        let api_url = url.parse().map_err(|_| KubeError::Url(url))?;
        Ok(Self {
            ca_file: Some(PathBuf::from(SA_DIR).join("ca.crt")),
            token_file: Some(PathBuf::from(SA_DIR).join("token")),
            ..Self::new(api_url, control_plane_ns, trust_domain)
        })
    }
}

/// The Kubernetes [`Authenticator`].
pub struct TokenReview {
    config: TokenReviewConfig,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for TokenReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReview")
            .field("api_url", &self.config.api_url)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Review {
    status: ReviewStatus,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ReviewStatus {
    authenticated: bool,
    user: UserInfo,
    error: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct UserInfo {
    username: String,
}

impl TokenReview {
    /// Reads the CA file (if any) and prepares the client; connects lazily.
    pub async fn new(config: TokenReviewConfig) -> Result<Self, KubeError> {
        let url = &config.api_url;
        let bad_url = || KubeError::Url(url.to_string());
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url()),
        };
        let host = url.host().ok_or_else(bad_url)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let path = config.ca_file.as_ref().ok_or(KubeError::NoCa)?;
            let pem = tokio::fs::read(path)
                .await
                .map_err(|source| KubeError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
            let name = ServerName::try_from(host.clone()).map_err(|_| bad_url())?;
            Some((tls_connector(&pem)?, name))
        } else {
            None
        };
        Ok(Self {
            config,
            host,
            port,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn review(&self, token: &str, audiences: &[&str]) -> Result<ReviewStatus, AuthError> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token, "audiences": audiences },
        });
        let body = Bytes::from(body.to_string());
        let post = tokio::time::timeout(self.config.timeout, self.post(body));
        let (status, body) = post
            .await
            .map_err(|_| AuthError::Unavailable("TokenReview timed out".into()))?
            .map_err(AuthError::Unavailable)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
            return Err(AuthError::Unavailable(format!(
                "TokenReview answered {status}: {text}"
            )));
        }
        let review: Review = serde_json::from_slice(&body)
            .map_err(|e| AuthError::Unavailable(format!("bad TokenReview response: {e}")))?;
        Ok(review.status)
    }

    /// POSTs a review on a pooled connection; a stale pooled connection is retried once.
    async fn post(&self, body: Bytes) -> Result<(http::StatusCode, Bytes), String> {
        let bearer = match &self.config.token_file {
            Some(p) => Some(
                tokio::fs::read_to_string(p)
                    .await
                    .map_err(|e| format!("cannot read the API token {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let (mut sender, mut reused) = match self.checkout().await {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        loop {
            let req = self.request(body.clone(), bearer.as_deref())?;
            match sender.send_request(req).await {
                Ok(rsp) => {
                    let status = rsp.status();
                    let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
                    self.checkin(sender);
                    return Ok((status, body.to_bytes()));
                }
                // Creating a TokenReview has no side effects, so a request that died on a
                // pooled connection the server had closed is simply sent again.
                Err(_) if reused => {
                    sender = self.connect().await?;
                    reused = false;
                }
                Err(e) => return Err(format!("TokenReview request failed: {e}")),
            }
        }
    }

    fn request(
        &self,
        body: Bytes,
        bearer: Option<&str>,
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let mut req = http::Request::post(REVIEW_PATH)
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json");
        if let Some(t) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {}", t.trim()));
        }
        req.body(Full::new(body)).map_err(|e| e.to_string())
    }

    async fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let mut s = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if s.ready().await.is_ok() {
                return Some(s);
            }
        }
    }

    fn checkin(&self, s: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.is_closed() && idle.len() < MAX_IDLE {
            idle.push(s);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let addr = (self.host.as_str(), self.port);
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            format!(
                "cannot connect to the API server {}:{}: {e}",
                self.host, self.port
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let handshake = |e: hyper::Error| format!("HTTP handshake with the API server: {e}");
        let sender = match &self.tls {
            Some((tls, name)) => {
                let tls = tls
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with the API server: {e}"))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(handshake)?;
                tokio::spawn(async move { drop(conn.await) });
                sender
            }
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake)?;
                tokio::spawn(async move { drop(conn.await) });
                sender
            }
        };
        Ok(sender)
    }

    fn identity(&self, username: &str) -> Result<IdentityName, AuthError> {
        let bad = || AuthError::Unauthenticated(format!("{username:?} is not a service account"));
        let mut parts = username.split(':');
        let (Some("system"), Some("serviceaccount"), Some(ns), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let c = &self.config;
        IdentityName::service_account(sa, ns, &c.control_plane_ns, &c.trust_domain)
            .map_err(|_| bad())
    }
}

impl Authenticator for TokenReview {
    async fn authenticate(&self, token: &[u8]) -> Result<IdentityName, AuthError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| AuthError::Unauthenticated("token is not UTF-8".into()))?;
        let mut status = self.review(token, &[AUDIENCE]).await?;
        if !status.authenticated && status.error.contains("token audiences") {
            tracing::debug!("retrying the TokenReview without audiences (legacy token)");
            status = self.review(token, &[]).await?;
        }
        if !status.authenticated {
            let why = if status.error.is_empty() {
                "not authenticated".to_string()
            } else {
                status.error
            };
            return Err(AuthError::Unauthenticated(why));
        }
        self.identity(&status.user.username)
    }
}

fn tls_connector(ca_pem: &[u8]) -> Result<TlsConnector, KubeError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| KubeError::Ca(e.to_string()))?;
        roots.add(cert).map_err(|e| KubeError::Ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(KubeError::Ca("no certificates".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
