//! Shared test helpers: temporary trust material, a running identity server, a client.
#![allow(dead_code, clippy::unwrap_used)]

use linkerd_identity::{
    AuthConfig, Config,
    api::{CertifyRequest, CertifyResponse, identity_client::IdentityClient},
    ca::LeafPolicy,
    metrics::Metrics,
    token::LocalTokens,
    trust::{TrustFiles, TrustOptions, TrustPaths, generate_trust},
};
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

pub const ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

pub use linkerd_control::test_support::TempDir;

/// Trust material and a token key written to a temporary directory.
pub struct Trust {
    pub dir: TempDir,
    pub files: TrustFiles,
    pub paths: TrustPaths,
    pub key_file: PathBuf,
    pub tokens: LocalTokens,
}

impl Trust {
    pub fn new() -> Self {
        Self::with(TrustOptions::default())
    }

    pub fn with(opts: TrustOptions) -> Self {
        let dir = TempDir::new("trust");
        let files = generate_trust(&opts).unwrap();
        let paths = files.write(dir.path()).unwrap();
        let key_file = dir.path().join("token.key");
        linkerd_identity::token::write_key_file(&key_file).unwrap();
        let tokens =
            LocalTokens::from_key_file_contents(&std::fs::read(&key_file).unwrap()).unwrap();
        Self {
            dir,
            files,
            paths,
            key_file,
            tokens,
        }
    }

    pub fn config(&self) -> Config {
        Config {
            addr: ([127, 0, 0, 1], 0).into(),
            admin_addr: ([127, 0, 0, 1], 0).into(),
            trust_anchors: self.paths.anchor.clone(),
            issuer_cert: self.paths.issuer_cert.clone(),
            issuer_key: self.paths.issuer_key.clone(),
            auth: AuthConfig::Local {
                key_file: self.key_file.clone(),
            },
            policy: LeafPolicy::default(),
            reload_interval: Duration::from_millis(50),
        }
    }

    pub fn token(&self, id: &str) -> Vec<u8> {
        self.tokens
            .mint(
                &id.parse().unwrap(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .into_bytes()
    }

    /// A good request for `id`.
    pub fn request(&self, id: &str) -> CertifyRequest {
        CertifyRequest {
            identity: id.to_string(),
            token: self.token(id),
            certificate_signing_request: linkerd_identity::bench::csr_for(id).unwrap(),
        }
    }
}

/// A running server; stopped on drop.
pub struct Running {
    pub metrics: Arc<Metrics>,
    running: linkerd_control::test_support::Running<linkerd_identity::Error>,
}

impl std::ops::Deref for Running {
    type Target = linkerd_control::test_support::Running<linkerd_identity::Error>;

    fn deref(&self) -> &Self::Target {
        &self.running
    }
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let bound = linkerd_identity::bind(config).await.unwrap();
        Self {
            metrics: bound.metrics().clone(),
            running: linkerd_control::test_support::Running::spawn(bound),
        }
    }

    pub async fn client(&self) -> IdentityClient<tonic::transport::Channel> {
        IdentityClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn certify(&self, req: CertifyRequest) -> Result<CertifyResponse, tonic::Status> {
        self.client()
            .await
            .certify(req)
            .await
            .map(|r| r.into_inner())
    }

    /// GETs an admin path; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        linkerd_control::test_support::admin_get(self.admin, path).await
    }

    pub async fn stop(self) {
        self.running.stop(Duration::from_secs(60)).await.unwrap();
    }
}

/// Polls `f` every 20ms until it returns true, for at most 10s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses a DER certificate, asserting there is nothing after it.
pub fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    use x509_parser::prelude::FromDer;
    let (rest, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    c
}

pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
