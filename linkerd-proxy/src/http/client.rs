//! Upstream HTTP connections, pooled per endpoint.
//!
//! The pool is keyed by endpoint (address and expected TLS identity), not by the request's
//! authority, so requests keep their original `Host`/`:authority` whatever endpoint the
//! balancer chose. HTTP/1 connections (the proxy's own client, `h1.rs`) are reused one request
//! at a time (keep-alive) and return to the pool when their response body has been read;
//! HTTP/2 connections (`h2.rs`) are shared by every request to the endpoint. An endpoint with
//! an identity is dialled with mTLS. Upgrades go over hyper's HTTP/1 client, one connection
//! each.

use super::{
    body::ProxyBody,
    errors::ProxyError,
    h1, h2,
    pool::{Key, KeyMap},
};
use crate::{
    io::{BoxIo, CountingIo},
    lock,
    metrics::{Direction, Metrics, Peer, TcpKey, TcpStats, Tls},
    resolve::Endpoint,
    tls::{self, CredsRx},
    transport,
};
use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::{
    sync::{Arc, Mutex, Weak, atomic::Ordering},
    time::Duration,
};
use tracing::debug;

/// How long an idle HTTP/1 upstream connection is kept: below the keep-alive timeouts of
/// common servers (nginx 75 s, Go 90 s), so the server rarely closes one just as it is reused.
pub(crate) const HTTP1_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    h1: Arc<h1::Pool>,
    h2: Mutex<KeyMap<h2::Conn>>,
    /// One connect at a time per HTTP/2 endpoint: concurrent first requests wait for it and
    /// share the connection instead of each dialling their own.
    h2_connecting: Mutex<KeyMap<Arc<tokio::sync::Mutex<()>>>>,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    direction: Direction,
    tls: Tls,
    creds: Option<CredsRx>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// A request that failed, with the request itself when none of it reached the endpoint (no
/// connection could be had), so that it may go to another endpoint.
#[derive(Debug)]
pub struct SendError {
    pub error: ProxyError,
    /// Boxed: it is rare, and every send's result would otherwise be the size of a request.
    pub unsent: Option<Box<Request<ProxyBody>>>,
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// An error that came before `req` was used: hand the request back.
fn unsent(error: ProxyError, req: Request<ProxyBody>) -> SendError {
    SendError {
        error,
        unsent: Some(Box::new(req)),
    }
}

impl Client {
    /// A client whose upstream connections are counted in the `peer="dst"` TCP metrics of
    /// `direction`, and which dials meshed endpoints with the credentials in `creds`.
    pub fn new(
        connect_timeout: Duration,
        max_idle_per_endpoint: usize,
        metrics: Arc<Metrics>,
        direction: Direction,
        tls: Tls,
        creds: Option<CredsRx>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                h1: Arc::new(h1::Pool::new(max_idle_per_endpoint)),
                h2: Mutex::default(),
                h2_connecting: Mutex::default(),
                connect_timeout,
                metrics,
                direction,
                tls,
                creds,
            }),
        }
    }

    /// Closes idle HTTP/1 connections (between `idle / 2` and `idle` unused, or closed by the
    /// server) for as long as the client lives.
    pub fn evict_idle(&self, idle: Duration) -> impl Future<Output = ()> + Send + 'static {
        let pool = Arc::downgrade(&self.inner.h1);
        async move { crate::idle::evict_idle(&pool, idle).await }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    pub async fn send(
        &self,
        ep: &Endpoint,
        proto: Protocol,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let key = (ep.addr, ep.identity.clone());
        match proto {
            Protocol::Http1 => self.send_h1(key, req).await,
            Protocol::Http2 => self.send_h2(key, req).await,
        }
    }

    /// Sends an HTTP/1 request on an idle pooled connection to the endpoint, or a new one.
    /// The connection returns to the pool when the response body has been read.
    async fn send_h1(
        &self,
        key: Key,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let inner = &self.inner;
        let (conn, reused) = match inner.h1.checkout(&key) {
            Some(c) => (c, true),
            None => match Box::pin(inner.connect_h1(&key)).await {
                Ok(c) => (c, false),
                Err(e) => return Err(unsent(e, req)),
            },
        };
        let reconnect = || Box::pin(inner.connect_h1(&key));
        let rsp = h1::send(&inner.h1, conn, reused, req, reconnect).await?;
        Ok(rsp.map(|body| ProxyBody::H1 {
            body,
            recorder: None,
        }))
    }

    /// Sends an HTTP/1 request on a new, unpooled connection that supports upgrades.
    pub async fn send_upgrade(
        &self,
        ep: &Endpoint,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut sender = Box::pin(self.connect_upgradable(&(ep.addr, ep.identity.clone()))).await?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(ProxyError::Upstream)?;
        Ok(rsp.map(|body| ProxyBody::stream(body, None)))
    }

    /// Callers box this future (and [`Client::connect_h2`]'s): connecting (TCP, TLS, the HTTP
    /// handshake) is rare next to sending, and its state is large; awaited inline it would
    /// make every request's future, which hyper moves around per request, that much larger.
    async fn connect_upgradable(
        &self,
        key: &Key,
    ) -> Result<http1::SendRequest<ProxyBody>, ProxyError> {
        let (io, stats) = self.inner.connect(key).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::Handshake(e.into()))?;
        let addr = key.0;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
            }
            stats.close_total.fetch_add(1, Ordering::Relaxed);
        });
        Ok(sender)
    }

    /// Sends an HTTP/2 request on the endpoint's shared connection, opening it if there is
    /// none. A connection found going away (or gone) before the request was sent on it is
    /// replaced once: nothing of the request was sent, so any request may go again.
    async fn send_h2(
        &self,
        key: Key,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let conn = match self.h2_conn(&key).await {
            Ok(c) => c,
            Err(e) => return Err(unsent(e, req)),
        };
        let ready = match conn.ready().await {
            Ok(r) => r,
            Err(e) => {
                debug!(addr = %key.0, error = %e, "upstream HTTP/2 connection is going away");
                {
                    let mut h2 = lock(&self.inner.h2);
                    if h2.get(&key).is_some_and(|c| c.same(&conn)) {
                        h2.remove(&key);
                    }
                }
                let again = match self.h2_conn(&key).await {
                    Ok(c) => c.ready().await.map_err(ProxyError::from),
                    Err(e) => Err(e),
                };
                match again {
                    Ok(r) => r,
                    Err(e) => return Err(unsent(e, req)),
                }
            }
        };
        let rsp = ready.send(req).await.map_err(ProxyError::from)?;
        Ok(rsp.map(|body| ProxyBody::H2 {
            body,
            recorder: None,
        }))
    }

    /// The endpoint's open HTTP/2 connection, or a new one. One connect at a time per
    /// endpoint: concurrent first requests wait for it and share it.
    async fn h2_conn(&self, key: &Key) -> Result<h2::Conn, ProxyError> {
        let open = |inner: &Inner| lock(&inner.h2).get(key).filter(|c| !c.is_closed()).cloned();
        if let Some(c) = open(&self.inner) {
            return Ok(c);
        }
        let gate = lock(&self.inner.h2_connecting)
            .entry(key.clone())
            .or_default()
            .clone();
        let _connecting = gate.lock().await;
        if let Some(c) = open(&self.inner) {
            return Ok(c);
        }
        let res = Box::pin(self.connect_h2(key)).await;
        lock(&self.inner.h2_connecting).remove(key);
        let c = res?;
        lock(&self.inner.h2).insert(key.clone(), c.clone());
        Ok(c)
    }

    async fn connect_h2(&self, key: &Key) -> Result<h2::Conn, ProxyError> {
        let (io, stats) = self.inner.connect(key).await?;
        let inner = Arc::downgrade(&self.inner);
        let k = key.clone();
        let on_close = move || {
            stats.close_total.fetch_add(1, Ordering::Relaxed);
            if let Some(inner) = Weak::upgrade(&inner) {
                let mut h2 = lock(&inner.h2);
                if h2.get(&k).is_some_and(|c| c.is_closed()) {
                    h2.remove(&k);
                }
            }
        };
        h2::Conn::handshake(io, on_close)
            .await
            .map_err(|e| ProxyError::Handshake(e.into()))
    }
}

impl Inner {
    /// A new connection for the proxy's own HTTP/1 client.
    async fn connect_h1(&self, key: &Key) -> Result<h1::Conn, ProxyError> {
        let (io, stats) = self.connect(key).await?;
        Ok(h1::Conn::new(io, stats, key.clone()))
    }

    /// Dials the endpoint (with mTLS when it has an identity) and counts the connection.
    async fn connect(&self, (addr, identity): &Key) -> Result<(BoxIo, Arc<TcpStats>), ProxyError> {
        let stream = transport::connect(*addr, self.connect_timeout).await?;
        let tls = match identity {
            Some(id) => Tls::Established {
                peer_id: Some(id.clone()),
            },
            None => self.tls.clone(),
        };
        let stats = self.metrics.tcp(TcpKey {
            direction: self.direction,
            peer: Peer::Dst,
            target_addr: *addr,
            tls,
            dst_labels: None,
        });
        stats.open_total.fetch_add(1, Ordering::Relaxed);
        let io = CountingIo::new(stream, stats.bytes.clone());
        let io: BoxIo = match (identity, &self.creds) {
            (None, _) => Box::new(io),
            (Some(id), Some(creds)) => {
                match tls::connect_within(creds, id, io, self.connect_timeout).await {
                    Ok(tls) => Box::new(tls),
                    Err(e) => {
                        stats.close_total.fetch_add(1, Ordering::Relaxed);
                        return Err(e.into());
                    }
                }
            }
            (Some(_), None) => {
                stats.close_total.fetch_add(1, Ordering::Relaxed);
                return Err(tls::TlsError::NoCredentials.into());
            }
        };
        Ok((io, stats))
    }
}
