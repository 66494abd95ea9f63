//! The webhook server: HTTPS (rustls, ring; TLS 1.3 and 1.2, which some API servers still
//! offer first) on `:8443`, and a plaintext admin server with `/metrics`, `/ready`, `/live`.

use crate::{
    Error,
    admission::{self, Handled},
    config::InjectConfig,
    events::Events,
    metrics::Metrics,
    namespaces::Namespaces,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use linkerd_control::{Listeners, ReadError, stopped};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    convert::Infallible, future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_rustls::TlsAcceptor;

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The webhook (default `0.0.0.0:8443`; the Service maps 443 to it).
    pub addr: SocketAddr,
    /// `/metrics`, `/ready`, `/live` (default `0.0.0.0:9995`, Linkerd's injector admin port).
    pub admin_addr: SocketAddr,
    /// PEM certificate chain and key of the webhook's serving certificate.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub inject: InjectConfig,
    pub namespaces: Namespaces,
    /// Where `Injected`/`InjectionFailed` events go.
    pub events: Events,
    /// How long in-flight reviews may take to finish after the shutdown signal.
    pub grace: Duration,
}

/// Shared by every connection.
#[derive(Debug)]
struct State {
    inject: InjectConfig,
    namespaces: Namespaces,
    events: Events,
    metrics: Arc<Metrics>,
}

/// Bound listeners and loaded certificate, ready to [`Bound::run`].
pub struct Bound {
    listener: TcpListener,
    admin: TcpListener,
    tls: TlsAcceptor,
    state: Arc<State>,
    grace: Duration,
}

/// Loads the serving certificate and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let tls = tls_acceptor(&config.tls_cert, &config.tls_key).await?;
    let Listeners { main, admin } = Listeners::bind(config.addr, config.admin_addr).await?;
    Ok(Bound {
        listener: main,
        admin,
        tls,
        state: Arc::new(State {
            inject: config.inject,
            namespaces: config.namespaces,
            events: config.events,
            metrics: Arc::new(Metrics::default()),
        }),
        grace: config.grace,
    })
}

/// [`bind`] then [`Bound::run`].
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await;
    Ok(())
}

async fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, Error> {
    let read = |p: &PathBuf| {
        let p = p.clone();
        async move { tokio::fs::read(&p).await.map_err(ReadError::at(&p)) }
    };
    let (cert_pem, key_pem) = (read(cert).await?, read(key).await?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("listener", &self.listener)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Bound {
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets in-flight reviews finish
    /// (at most the grace period) and stops the admin server.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop, stopped) = watch::channel(false);
        let admin = tokio::spawn(serve_admin(
            self.admin,
            self.state.metrics.clone(),
            stopped.clone(),
        ));
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "injector webhook listening");
        }
        let mut conns = JoinSet::new();
        let accepting = async {
            let mut unset = stopped.clone();
            while let Some((tcp, peer)) = linkerd_control::accept(&self.listener, &mut unset).await
            {
                // Reap finished connections so the set does not grow.
                while conns.try_join_next().is_some() {}
                let _ = tcp.set_nodelay(true);
                let (tls, state, stop) = (self.tls.clone(), self.state.clone(), stopped.clone());
                conns.spawn(serve_conn(tcp, peer, tls, state, stop));
            }
        };
        // `stop` is set only below, so accepting ends with the shutdown future.
        tokio::select! {
            _ = accepting => {}
            _ = shutdown => {}
        }
        while conns.try_join_next().is_some() {}
        tracing::info!(in_flight = conns.len(), "shutting down");
        let _ = stop.send(true);
        let drained = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, drained).await.is_err() {
            tracing::warn!("grace period over; closing the remaining connections");
            conns.abort_all();
        }
        let _ = admin.await;
    }
}

/// One webhook connection: TLS, then HTTP/1.1 until the client closes it or `stop` turns true,
/// when it finishes the request in hand and closes.
async fn serve_conn(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let io = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(webhook(req, &state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection failed");
            }
            return;
        }
        _ = stopped(&mut stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// One review: POST `/` (or `/inject`) with an AdmissionReview.
async fn webhook(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    if !matches!(req.uri().path(), "/" | "/inject") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let too_big = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > admission::MAX_BODY);
    if too_big {
        state.metrics.bad_request();
        return text(StatusCode::PAYLOAD_TOO_LARGE, "body over 10 MB\n");
    }
    let body = match Limited::new(req.into_body(), admission::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            state.metrics.bad_request();
            if e.is::<http_body_util::LengthLimitError>() {
                return text(StatusCode::PAYLOAD_TOO_LARGE, "body over 10 MB\n");
            }
            return text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}\n"),
            );
        }
    };
    let review = match admission::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.bad_request();
            tracing::warn!(error = %e, "bad AdmissionReview");
            return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        }
    };
    state.metrics.request();
    let ns = admission::namespace(&review);
    let annotations = state.namespaces.annotations(ns).await;
    let (rsp, handled) = admission::handle(
        &review,
        annotations.as_ref().map_err(Clone::clone),
        &state.inject,
    );
    let name = review
        .object
        .as_ref()
        .and_then(|o| o.metadata.name.clone().or(o.metadata.generate_name.clone()))
        .unwrap_or_default();
    let ns = ns.unwrap_or_default();
    match &handled {
        Handled::Injected => tracing::info!(%ns, pod = %name, uid = %review.uid, "injected"),
        Handled::Skipped(reason) => {
            tracing::debug!(%ns, pod = %name, uid = %review.uid, %reason, "not injected")
        }
        Handled::Failed(e) => tracing::error!(
            %ns, pod = %name, uid = %review.uid, error = %e,
            "injection failed; the pod is admitted without a proxy"
        ),
    }
    state.metrics.handled(&handled);
    let owner = review
        .object
        .as_ref()
        .and_then(|o| o.metadata.owner_references.as_ref()?.first());
    state.events.record(ns, owner, &handled);
    match admission::encode(rsp) {
        Ok(body) => {
            let mut rsp = Response::new(Full::new(Bytes::from(body)));
            rsp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the response: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// Serves `/metrics`, `/ready` and `/live` until `shutdown` turns true. Always ready: the
/// certificate is loaded and the webhook listener bound before this server starts.
async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    linkerd_control::serve_admin(listener, shutdown, move || metrics.render(), || Ok(())).await
}
