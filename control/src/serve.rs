//! The serve sequence of a control-plane service: bind the service's and the admin listener,
//! start the admin server and the source, serve gRPC until the shutdown signal, then end the
//! watch streams, drain connections for at most a grace period, and stop the rest.

use crate::{
    admin::serve_admin,
    metrics::SourceMetrics,
    shutdown::{Shutdown, stopped},
};
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A service's listener (gRPC or the webhook) and its admin listener, bound.
#[derive(Debug)]
pub struct Listeners {
    pub main: TcpListener,
    pub admin: TcpListener,
}

/// What a gRPC service brings to its serve sequence, [`Grpc::serve`].
#[derive(Debug)]
pub struct Grpc<S> {
    /// For the log line (`destination gRPC listening`).
    pub name: &'static str,
    pub svc: S,
    /// Per-stream bytes h2 may hold beyond what the socket took (see [`Grpc::serve_h2`]).
    pub max_send_buf: usize,
    /// How long shutdown waits for open streams to finish.
    pub grace: Duration,
}

/// What the admin server answers: `/metrics` text and `/ready`.
#[derive(Debug)]
pub struct Admin<M, R> {
    pub metrics: M,
    pub ready: R,
}

/// The admin answers of a service fed by a source: `metrics` renders the metrics text, and
/// the service is ready once `source` has loaded its first full state (until then, `/ready`
/// answers `not_yet`).
pub fn source_admin<M>(
    metrics: M,
    source: Arc<SourceMetrics>,
    not_yet: &'static str,
) -> Admin<M, impl Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static>
where
    M: Fn() -> String + Clone + Send + Sync + 'static,
{
    let ready = move || source.is_ready().then_some(()).ok_or(not_yet);
    Admin { metrics, ready }
}

/// A source's task (a registry watcher or the Kubernetes watches), given the stop signal.
pub type Source = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a service's `bind` returns: its listeners, bound, and what it loaded before serving
/// (`S`: an index, a CA, its metrics, what `run` needs of its configuration), ready to
/// [`Bound::run`]. It dereferences to `S`.
#[derive(Debug)]
pub struct Bound<S> {
    listeners: Listeners,
    service: S,
}

/// A service's serve sequence on its bound listeners.
pub trait Service {
    type Error;

    /// Serves on `listeners` until `shutdown` completes, then winds down.
    fn run(
        self,
        listeners: Listeners,
        shutdown: impl Shutdown,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<S> Bound<S> {
    pub fn new(listeners: Listeners, service: S) -> Self {
        Self { listeners, service }
    }

    /// The address of the service's own listener (gRPC).
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.admin_addr()
    }
}

impl<S: Service> Bound<S> {
    /// Serves until `shutdown` completes (the service's [`Service::run`]).
    pub async fn run(self, shutdown: impl Shutdown) -> Result<(), S::Error> {
        self.service.run(self.listeners, shutdown).await
    }
}

impl<S> std::ops::Deref for Bound<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.service
    }
}

impl Listeners {
    /// Binds `addr` and `admin_addr`.
    pub async fn bind(addr: SocketAddr, admin_addr: SocketAddr) -> Result<Self, BindError> {
        let listen = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { addr, source })
        };
        Ok(Self {
            main: listen(addr).await?,
            admin: listen(admin_addr).await?,
        })
    }

    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.main.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// The next connection on `listener`, or `None` once `stop` holds `true`. A failed accept (out
/// of file descriptors, say) is logged and retried after a short pause instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, addr = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(stop) => return None,
        }
    }
}

impl<S, B> Grpc<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The serve sequence: starts the admin server and the source (`source` gets the stop
    /// signal) and serves gRPC on `listeners` until `shutdown` completes; then calls `close`
    /// (watch streams never end on their own: ending them lets connections close), waits up to
    /// the grace period for connections to finish, and stops the admin server and the source.
    pub async fn serve<M, R>(
        self,
        listeners: Listeners,
        admin: Admin<M, R>,
        source: impl FnOnce(watch::Receiver<bool>) -> Option<Source>,
        close: impl FnOnce(),
        shutdown: impl Future<Output = ()> + Send,
    ) where
        M: Fn() -> String + Clone + Send + Sync + 'static,
        R: Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let admin = tokio::spawn(serve_admin(
            listeners.admin,
            stop_rx.clone(),
            admin.metrics,
            admin.ready,
        ));
        let source = source(stop_rx).map(tokio::spawn);
        if let Ok(addr) = listeners.main.local_addr() {
            tracing::info!(%addr, "{} gRPC listening", self.name);
        }
        let (draining, drain_rx) = watch::channel(false);
        let server = Self::serve_h2(listeners.main, self.svc, drain_rx, self.max_send_buf);
        let mut server = tokio::spawn(server);
        shutdown.await;
        close();
        let _ = draining.send(true);
        if tokio::time::timeout(self.grace, &mut server).await.is_err() {
            tracing::warn!("connections still open after the grace period; closing them");
            server.abort();
        }
        let _ = stop.send(true);
        let _ = admin.await;
        if let Some(s) = source {
            let _ = s.await;
        }
    }

    /// Serves gRPC (HTTP/2 only, on hyper directly: tonic's transport server does not expose
    /// the per-stream send buffer, `max_send_buf`) on `listener` until `drain` turns true, then
    /// asks every connection to finish and waits for them.
    pub async fn serve_h2(
        listener: TcpListener,
        svc: S,
        mut drain: watch::Receiver<bool>,
        max_send_buf: usize,
    ) {
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.max_send_buf_size(max_send_buf);
        let mut conns = tokio::task::JoinSet::new();
        while let Some((io, peer)) = accept(&listener, &mut drain).await {
            let _ = io.set_nodelay(true);
            let conn = h2.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc.clone()));
            let mut drain = drain.clone();
            conns.spawn(async move {
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        return;
                    }
                    _ = stopped(&mut drain) => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            });
            // Reap finished connections so the set holds only live ones.
            while conns.try_join_next().is_some() {}
        }
        while conns.join_next().await.is_some() {}
    }
}
