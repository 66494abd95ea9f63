//! Support for the mTLS tests: a certificate authority made at test time, the identity service
//! in-process, meshed proxies certified by it, raw TLS clients and a fake meshed peer, and a
//! steady traffic generator.
//!
//! ```text
//!  test ──► A.outbound ══ mTLS (A's cert, SNI = B's identity) ══► B.inbound ──► app
//!            │                                                    │
//!            └── Certify ──► IdentityService (127.0.0.1:<port>) ◄─┘
//! ```
//!
//! Everything binds `127.0.0.1:0` (the identity service keeps its port across a restart), and
//! every certificate chains to a trust anchor generated for the test.

use crate::{
    client::{Reply, TestBody},
    metrics::Metrics,
    proxy::TestProxy,
};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use linkerd_identity::{
    AuthConfig, Config,
    ca::LeafPolicy,
    token::{self, LocalTokens},
    trust::{TrustFiles, TrustOptions, generate_trust},
};
use linkerd_proxy::config as env;
use linkerd2_proxy_api::destination::{
    DestinationProfile, GetDestination, Update, WeightedAddr, WeightedAddrSet,
    destination_server::{Destination, DestinationServer},
    update,
};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, pem::PemObject,
};
use std::{
    convert::Infallible,
    error::Error as StdError,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tonic::{
    Status,
    codegen::tokio_stream::{self, Stream},
    transport::server::TcpIncoming,
};

/// The gauge with the current certificate's NotAfter (unix seconds).
pub const CERT_EXPIRY: &str = "control_identity_cert_expiration_timestamp_seconds";
/// The gauge with the time the current certificate will be renewed (unix seconds).
pub const CERT_REFRESH: &str = "control_identity_cert_refresh_timestamp_seconds";

/// The service-account identity of `sa` in the test namespace.
pub fn identity(sa: &str) -> String {
    format!("{sa}.mtls.serviceaccount.identity.linkerd.cluster.local")
}

/// `name=addr#identity`: one meshed endpoint for `MESH_PROXY_STATIC_ENDPOINTS`.
pub fn meshed_endpoint(name: &str, addr: SocketAddr, identity: &str) -> String {
    format!("{name}={addr}#{identity}")
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error and its sources, one line.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === TempDir ===

/// A fresh directory under the system temporary directory, removed when dropped.
pub use linkerd_control::test_support::TempDir;

// === Ca ===

/// A trust anchor and an issuer signed by it (what `mesh identity init` makes), with which a
/// test can also sign certificates itself.
#[derive(Clone, Debug)]
pub struct Ca {
    pub files: TrustFiles,
}

/// A certificate chain (leaf first, then the issuer) and the leaf's key.
#[derive(Debug)]
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    pub fn clone_leaf(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Ca {
    /// A fresh anchor and issuer for `cluster.local`.
    pub fn generate() -> Self {
        Self::generate_for("cluster.local")
    }

    /// A fresh anchor and issuer named for `trust_domain`.
    pub fn generate_for(trust_domain: &str) -> Self {
        let opts = TrustOptions {
            trust_domain: trust_domain.to_string(),
            ..TrustOptions::default()
        };
        Self {
            files: generate_trust(&opts).expect("generate a trust anchor"),
        }
    }

    pub fn anchor_pem(&self) -> &str {
        &self.files.anchor_pem
    }

    /// The trust anchor as a root store.
    pub fn roots(&self) -> Arc<RootCertStore> {
        roots(&self.files.anchor_pem)
    }

    fn issuer_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.files.issuer_cert_pem.as_bytes())
            .expect("issuer certificate PEM")
    }

    /// A leaf for `identity` signed by the issuer, valid from `not_before` to `not_after`,
    /// shaped like the identity service's leaves (P-256, DNS SAN, server and client auth).
    pub fn leaf(&self, identity: &str, not_before: SystemTime, not_after: SystemTime) -> Leaf {
        let issuer_key =
            KeyPair::from_pem(&self.files.issuer_key_pem).expect("issuer key PEM is valid");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.files.issuer_cert_pem, issuer_key)
            .expect("issuer certificate PEM is valid");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        let mut params =
            CertificateParams::new(vec![identity.to_string()]).expect("a valid DNS name");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity);
        params.distinguished_name = dn;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).expect("sign a leaf");
        Leaf {
            chain: vec![cert.der().clone(), self.issuer_der()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A leaf valid from a minute ago for an hour.
    pub fn valid_leaf(&self, identity: &str) -> Leaf {
        let now = SystemTime::now();
        self.leaf(
            identity,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .expect("a time after 1970")
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).expect("a representable time")
}

/// A root store holding every certificate in `pem`.
pub fn roots(pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.expect("anchor PEM"))
            .expect("a valid trust anchor");
    }
    Arc::new(roots)
}

/// Whether `cert` names `identity` (the DNS SAN is stored as plain bytes in the DER).
pub fn names(cert: &CertificateDer<'_>, identity: &str) -> bool {
    cert.as_ref()
        .windows(identity.len())
        .any(|w| w == identity.as_bytes())
}

// === IdentityService ===

/// The identity service (`linkerd_identity`) in-process on `127.0.0.1`, with local HMAC
/// tokens and a fresh [`Ca`].
#[derive(Debug)]
pub struct IdentityService {
    pub ca: Ca,
    dir: TempDir,
    config: Config,
    addr: SocketAddr,
    tokens: LocalTokens,
    running: Option<Serving>,
}

#[derive(Debug)]
struct Serving {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), linkerd_identity::Error>>,
}

/// Leaves that live `lifetime`, NotBefore/NotAfter widened by `skew` (the service's rule).
pub fn leaf_policy(lifetime: Duration, skew: Duration) -> LeafPolicy {
    LeafPolicy { lifetime, skew }
}

impl IdentityService {
    /// Generates trust material and a token key, and serves on an ephemeral port.
    pub async fn start(policy: LeafPolicy) -> Self {
        let ca = Ca::generate();
        let dir = TempDir::new("mtls-identity");
        let paths = ca.files.write(dir.path()).expect("write the trust files");
        let key = token::generate_key_file_contents().expect("a token key");
        let key_file = dir.path().join("token.key");
        std::fs::write(&key_file, &key).expect("write the token key");
        let tokens = LocalTokens::from_key_file_contents(key.as_bytes()).expect("a token key");
        let config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            trust_anchors: paths.anchor,
            issuer_cert: paths.issuer_cert,
            issuer_key: paths.issuer_key,
            auth: AuthConfig::Local { key_file },
            policy,
            reload_interval: Duration::from_secs(60),
        };
        let bound = linkerd_identity::bind(config.clone())
            .await
            .expect("bind the identity service");
        let addr = bound.grpc_addr().expect("identity address");
        assert!(
            bound.ca().issuer().is_some(),
            "the identity service loaded its issuer"
        );
        let mut svc = Self {
            ca,
            dir,
            config,
            addr,
            tokens,
            running: None,
        };
        svc.run(bound);
        svc
    }

    fn run(&mut self, bound: linkerd_identity::server::Bound) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        self.running = Some(Serving { stop, task });
    }

    /// The gRPC address proxies are pointed at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the service down and waits until its listener is closed.
    pub async fn stop(&mut self) {
        let Some(s) = self.running.take() else {
            return;
        };
        let _ = s.stop.send(());
        let res = crate::within(Duration::from_secs(10), "identity shutdown", s.task).await;
        res.expect("the identity task")
            .expect("the identity service ran cleanly");
        // Nothing listens any more: Certify calls are refused.
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "the identity port still accepts connections after shutdown"
        );
    }

    /// Serves again, on the same port.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "restart of a running service");
        let config = Config {
            addr: self.addr,
            ..self.config.clone()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let bound = loop {
            match linkerd_identity::bind(config.clone()).await {
                Ok(b) => break b,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "rebinding the identity port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind the identity service on {}: {e}", self.addr),
            }
        };
        self.run(bound);
    }

    /// Mints a token for `identity` (valid for an hour) into a file, as a projected service
    /// account token would be, and returns its path.
    pub fn token_file(&self, identity: &str) -> PathBuf {
        let name = identity.parse().expect("a valid identity name");
        let token = self
            .tokens
            .mint(&name, Duration::from_secs(3600), SystemTime::now());
        let path = self.dir.path().join(format!("{identity}.token"));
        std::fs::write(&path, token).expect("write a token file");
        path
    }

    /// The identity variables for a proxy named `identity`.
    pub fn proxy_env(&self, identity: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                env::ENV_IDENTITY_TRUST_ANCHORS,
                self.ca.files.anchor_pem.clone(),
            ),
            (env::ENV_IDENTITY_LOCAL_NAME, identity.to_string()),
            (env::ENV_IDENTITY_SVC_ADDR, self.addr.to_string()),
            (
                env::ENV_IDENTITY_TOKEN_FILE,
                self.token_file(identity).display().to_string(),
            ),
        ]
    }

    /// Starts a proxy named `identity`, certified by this service, configured further by
    /// `extra`, and waits until it holds a certificate (`/ready` is 200).
    pub async fn proxy(&self, identity: &str, extra: &[(&str, &str)]) -> TestProxy {
        let vars = self.proxy_env(identity);
        let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        let proxy = TestProxy::start(&all).await;
        crate::within(
            Duration::from_secs(10),
            "the proxy's first certificate",
            async {
                while ready(proxy.admin).await != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        )
        .await;
        proxy
    }
}

/// `GET /ready` on an admin server: the status code.
pub async fn ready(admin: SocketAddr) -> u16 {
    crate::client::get(admin, "/ready").await.status.as_u16()
}

/// A gauge's value, if the scrape has it.
pub fn gauge(m: &Metrics, name: &str) -> Option<f64> {
    m.find(name, &[]).next().map(|s| s.value)
}

// === raw TLS clients ===

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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS peer");
        let addr = listener.local_addr().expect("TLS peer address");
        let state = Arc::new(PeerState::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
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
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            lock(&s.requests).push((req.version(), req.headers().clone()));
                            Ok::<_, Infallible>(Response::new(crate::client::full("peer\n")))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
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

// === gRPC: a service that reports the caller's identity ===

/// A Destination service that reports the `l5d-client-id` its requests carried: `Get` streams
/// one update whose metric label `client_id` holds it, `GetProfile` fails with `NOT_FOUND` and
/// the message `client_id=<value>`. (`-` when the header is missing.)
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientIdEcho;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn client_id_of<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get("l5d-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

#[tonic::async_trait]
impl Destination for ClientIdEcho {
    type GetStream = Streamed<Update>;
    type GetProfileStream = Streamed<DestinationProfile>;

    async fn get(
        &self,
        request: tonic::Request<GetDestination>,
    ) -> Result<tonic::Response<Self::GetStream>, Status> {
        let id = client_id_of(&request);
        let update = Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: vec![WeightedAddr {
                    weight: 1,
                    ..Default::default()
                }],
                metric_labels: [("client_id".to_string(), id)].into(),
            })),
        };
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(vec![
            Ok(update),
        ]))))
    }

    async fn get_profile(
        &self,
        request: tonic::Request<GetDestination>,
    ) -> Result<tonic::Response<Self::GetProfileStream>, Status> {
        Err(Status::not_found(format!(
            "client_id={}",
            client_id_of(&request)
        )))
    }
}

/// Serves [`ClientIdEcho`] on an ephemeral loopback port.
pub async fn serve_client_id_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gRPC server");
    let addr = listener.local_addr().expect("gRPC server address");
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DestinationServer::new(ClientIdEcho))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
    });
    (addr, task)
}

// === opaque TCP ===

/// Writes `data` on a new connection, half-closes, and reads the echo to its end.
pub async fn tcp_echo(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut r, mut w) = stream.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut echoed = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut echoed)).await;
    let _w = writer.await.map_err(std::io::Error::other)??;
    match read {
        Ok(r) => r.map(|_| echoed),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no end of the echo within 10 s",
        )),
    }
}

/// Bytes that no detector mistakes for HTTP (the first is 0), of length `len`.
pub fn opaque_payload(len: usize) -> Vec<u8> {
    crate::pattern(len)
}

// === Traffic ===

/// Counts of one traffic stream.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    pub failed: u64,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < 10 {
            self.failures.push(what);
        }
    }
}

/// A steady stream of requests through a proxy until stopped: HTTP/1.1 requests on one
/// keep-alive connection to the outbound listener (proxy mode), every `http_every`; and, if a
/// TCP address is given, an opaque echo on a new connection every `tcp_every` (each one a new
/// mTLS handshake between the proxies).
#[derive(Debug)]
pub struct Traffic {
    stop: watch::Sender<bool>,
    http: JoinHandle<Tally>,
    tcp: Option<JoinHandle<Tally>>,
}

impl Traffic {
    pub fn start(outbound: SocketAddr, uri: String, tcp: Option<SocketAddr>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let http = tokio::spawn(http_loop(
            outbound,
            uri,
            Duration::from_millis(10),
            stopped.clone(),
        ));
        let tcp = tcp
            .map(|addr| tokio::spawn(tcp_loop(addr, Duration::from_millis(50), stopped.clone())));
        Self { stop, http, tcp }
    }

    /// Stops, and returns the HTTP and TCP tallies.
    pub async fn stop(self) -> (Tally, Tally) {
        let _ = self.stop.send(true);
        let http = self.http.await.expect("the HTTP traffic task");
        let tcp = match self.tcp {
            Some(t) => t.await.expect("the TCP traffic task"),
            None => Tally::default(),
        };
        (http, tcp)
    }
}

type Sender1 = hyper::client::conn::http1::SendRequest<TestBody>;

async fn connect1(addr: SocketAddr) -> Result<Sender1, String> {
    let io = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn http_loop(
    outbound: SocketAddr,
    uri: String,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender1> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0u64.. {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        let result = async {
            let s = match sender.as_mut() {
                Some(s) if !s.is_closed() => s,
                _ => sender.insert(connect1(outbound).await?),
            };
            s.ready().await.map_err(|e| error_chain(&e))?;
            let body = format!("request {i}");
            let req = crate::client::request(
                http::Method::POST,
                &uri,
                crate::client::full(Bytes::from(body.clone())),
            );
            let rsp = tokio::time::timeout(Duration::from_secs(5), s.send_request(req))
                .await
                .map_err(|_| "no response within 5 s".to_string())?
                .map_err(|e| error_chain(&e))?;
            let status = rsp.status();
            let headers = rsp.headers().clone();
            let got = rsp
                .into_body()
                .collect()
                .await
                .map_err(|e| error_chain(&e))?
                .to_bytes();
            if status != 200 || got != body.as_bytes() {
                return Err(format!(
                    "{status} {headers:?} {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            Ok::<_, String>(())
        }
        .await;
        match result {
            Ok(()) => tally.ok += 1,
            Err(e) => {
                tally.fail(format!("request {i}: {e}"));
                sender = None;
            }
        }
    }
    tally
}

async fn tcp_loop(addr: SocketAddr, every: Duration, stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let data = opaque_payload(2048);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0u64.. {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        match tcp_echo(addr, &data).await {
            Ok(echoed) if echoed == data => tally.ok += 1,
            Ok(echoed) => tally.fail(format!(
                "connection {i}: echoed {} bytes, not the {} sent",
                echoed.len(),
                data.len()
            )),
            Err(e) => tally.fail(format!("connection {i}: {e}")),
        }
    }
    tally
}
