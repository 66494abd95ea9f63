//! The proxy's identity: a key that never leaves the process, a CSR, and a certificate from the
//! identity service (`io.linkerd.proxy.identity.Identity/Certify`), renewed before it expires.
//!
//! The key and CSR are generated in memory at startup (ECDSA P-256), or read from
//! `LINKERD2_PROXY_IDENTITY_DIR` (`key.p8`, `csr.der`) when a Linkerd-style injector prepared
//! them. Renewal happens at 70% of the certificate's remaining lifetime, clamped to
//! [min_refresh, max_refresh]; a failed attempt is retried after a jittered `min_refresh` while
//! the current certificate keeps serving. Each new certificate is published through the
//! credentials watch, so new connections use it and established ones are untouched.

use crate::{
    control::{Io, tower_service_fn},
    metrics::Metrics,
    tls::{Credentials, TrustRoots},
};
use hyper_util::rt::TokioIo;
use proto::api::identity::{CertifyRequest, identity_client::IdentityClient};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// Where and how to get a certificate.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// This proxy's identity (the CSR's only DNS SAN).
    pub local_name: String,
    pub trust_anchors_pem: String,
    /// Re-read for every request, so a rotated projected token is picked up.
    pub token_file: PathBuf,
    /// `host:port` of the identity service.
    pub svc_addr: String,
    /// The identity service's own identity; required unless `svc_addr` is loopback, which is
    /// reached in plaintext.
    pub svc_name: Option<String>,
    /// A directory with `key.p8` and `csr.der` prepared before the proxy starts.
    pub dir: Option<PathBuf>,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key or CSR: {0}")]
    Key(String),
    #[error("cannot reach the identity service at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("identity service refused: {0}")]
    Refused(String),
    #[error("invalid certificate from the identity service: {0}")]
    BadResponse(String),
    #[error(transparent)]
    Creds(#[from] crate::tls::CredsError),
}

/// The private key and the CSR that asks for `local_name`.
struct KeyAndCsr {
    key_pkcs8: Vec<u8>,
    csr_der: Vec<u8>,
}

/// Obtains and renews the certificate forever, publishing each one on `tx`.
pub(crate) async fn run(
    cfg: IdentityConfig,
    roots: TrustRoots,
    tx: watch::Sender<Option<Arc<Credentials>>>,
    metrics: Arc<Metrics>,
) {
    let material = match key_and_csr(&cfg).await {
        Ok(m) => m,
        Err(e) => {
            // Without a key nothing can ever be certified; stay unready and say why.
            warn!(error = %e, "identity disabled: cannot prepare a key and CSR");
            return;
        }
    };
    loop {
        let wait = match certify(&cfg, &roots, &material).await {
            Ok(creds) => {
                let not_after = creds.not_after;
                let refresh = refresh_in(not_after, SystemTime::now(), &cfg);
                info!(identity = %cfg.local_name, ?refresh, "certified");
                metrics.set_identity_times(unix(not_after), unix(SystemTime::now() + refresh));
                let _ = tx.send(Some(Arc::new(creds)));
                refresh
            }
            Err(e) => {
                metrics.identity_refresh_failed();
                let retry = cfg.min_refresh.mul_f64(0.5 + fastrand::f64());
                warn!(error = %e, ?retry, "certify failed; keeping the current certificate");
                retry
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// 70% of the time left, clamped to the configured bounds.
pub(crate) fn refresh_in(not_after: SystemTime, now: SystemTime, cfg: &IdentityConfig) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    left.mul_f64(0.7).clamp(cfg.min_refresh, cfg.max_refresh)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

async fn key_and_csr(cfg: &IdentityConfig) -> Result<KeyAndCsr, IdentityError> {
    if let Some(dir) = &cfg.dir {
        let key_path = dir.join("key.p8");
        let csr_path = dir.join("csr.der");
        if tokio::fs::try_exists(&key_path).await.unwrap_or(false) {
            let key_pkcs8 = read(&key_path).await?;
            let csr_der = read(&csr_path).await?;
            return Ok(KeyAndCsr { key_pkcs8, csr_der });
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![cfg.local_name.clone()])
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cfg.local_name.clone());
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pkcs8: key.serialize_der(),
        csr_der: csr.der().to_vec(),
    })
}

async fn read(path: &std::path::Path) -> Result<Vec<u8>, IdentityError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        })
}

async fn certify(
    cfg: &IdentityConfig,
    roots: &TrustRoots,
    material: &KeyAndCsr,
) -> Result<Credentials, IdentityError> {
    let token = read(&cfg.token_file).await?;
    let channel = connect(cfg, roots).await?;
    let mut client = IdentityClient::new(channel);
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        client.certify(CertifyRequest {
            identity: cfg.local_name.clone(),
            token,
            certificate_signing_request: material.csr_der.clone(),
        }),
    )
    .await
    .map_err(|_| IdentityError::Refused("timed out".into()))?
    .map_err(|s| IdentityError::Refused(format!("{:?}: {}", s.code(), s.message())))?
    .into_inner();

    let not_after = rsp
        .valid_until
        .and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            Some(UNIX_EPOCH + Duration::from_secs(secs))
        })
        .ok_or_else(|| IdentityError::BadResponse("no valid_until".into()))?;
    if not_after <= SystemTime::now() {
        return Err(IdentityError::BadResponse(
            "certificate already expired".into(),
        ));
    }
    let mut chain = vec![CertificateDer::from(rsp.leaf_certificate)];
    chain.extend(
        rsp.intermediate_certificates
            .into_iter()
            .map(CertificateDer::from),
    );
    let leaf_id = crate::tls::identity_of(&chain[0]);
    if leaf_id.as_deref() != Some(cfg.local_name.as_str()) {
        return Err(IdentityError::BadResponse(format!(
            "certificate is for {leaf_id:?}, not {}",
            cfg.local_name
        )));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(material.key_pkcs8.clone()));
    // Building the server config checks that the key matches the certificate.
    Ok(Credentials::new(
        &cfg.local_name,
        roots,
        chain,
        key,
        not_after,
    )?)
}

/// A gRPC channel to the identity service: plaintext to a loopback address, otherwise TLS that
/// verifies the service's identity (no client certificate: we have none yet).
async fn connect(
    cfg: &IdentityConfig,
    roots: &TrustRoots,
) -> Result<tonic::transport::Channel, IdentityError> {
    let err = |reason: String| IdentityError::Connect {
        addr: cfg.svc_addr.clone(),
        reason,
    };
    let addr: SocketAddr = tokio::net::lookup_host(&cfg.svc_addr)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no addresses".into()))?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(3));
    let tls = match (&cfg.svc_name, addr.ip().is_loopback()) {
        (_, true) => None,
        (Some(name), false) => {
            let name = ServerName::try_from(name.clone()).map_err(|e| err(e.to_string()))?;
            Some((
                tokio_rustls::TlsConnector::from(roots.anonymous_client()?),
                name,
            ))
        }
        (None, false) => {
            return Err(err(
                "LINKERD2_PROXY_IDENTITY_SVC_NAME is required for a non-loopback address".into(),
            ));
        }
    };
    let connector = tower_service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(connector.connect(name, tcp).await?),
            };
            Ok::<_, std::io::Error>(TokioIo::new(io))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> IdentityConfig {
        IdentityConfig {
            local_name: "web.ns.serviceaccount.identity.linkerd.cluster.local".into(),
            trust_anchors_pem: String::new(),
            token_file: PathBuf::from("/nonexistent"),
            svc_addr: "127.0.0.1:8080".into(),
            svc_name: None,
            dir: None,
            min_refresh: Duration::from_secs(10),
            max_refresh: Duration::from_secs(24 * 3600),
        }
    }

    #[test]
    fn refreshes_at_70_percent_clamped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cfg();
        assert_eq!(
            refresh_in(now + Duration::from_secs(24 * 3600), now, &c),
            Duration::from_secs_f64(24.0 * 3600.0 * 0.7)
        );
        assert_eq!(
            refresh_in(now + Duration::from_secs(5), now, &c),
            c.min_refresh
        );
        assert_eq!(refresh_in(now, now, &c), c.min_refresh);
        assert_eq!(
            refresh_in(now + Duration::from_secs(100 * 86400), now, &c),
            c.max_refresh
        );
    }

    #[tokio::test]
    async fn generates_a_p256_key_and_a_csr_for_the_local_name() {
        let m = key_and_csr(&cfg()).await.unwrap();
        assert!(!m.key_pkcs8.is_empty());
        // The CSR is DER (a SEQUENCE) and names the identity.
        assert_eq!(m.csr_der[0], 0x30);
        let name = b"web.ns.serviceaccount.identity.linkerd.cluster.local";
        assert!(m.csr_der.windows(name.len()).any(|w| w == name));
    }
}
