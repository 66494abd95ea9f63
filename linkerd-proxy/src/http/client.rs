//! Upstream HTTP connections, pooled per endpoint address.
//!
//! The pool is keyed by endpoint, not by the request's authority, so requests keep their
//! original `Host`/`:authority` whatever endpoint the balancer chose. HTTP/1 connections are
//! reused one request at a time (keep-alive) and returned to the pool once the previous response
//! has been read; HTTP/2 connections are shared by every request to the endpoint.

use super::{body::ProxyBody, errors::ProxyError};
use crate::{
    io::CountingIo,
    metrics::{Direction, Metrics, Peer, TcpKey, TcpStats, Tls},
    transport,
};
use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};
use tracing::debug;

#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    h1_idle: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<ProxyBody>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<ProxyBody>>>,
    connect_timeout: Duration,
    max_idle_per_endpoint: usize,
    metrics: Arc<Metrics>,
    direction: Direction,
    tls: Tls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Client {
    /// A client whose upstream connections are counted in the `peer="dst"` TCP metrics of
    /// `direction`.
    pub fn new(
        connect_timeout: Duration,
        max_idle_per_endpoint: usize,
        metrics: Arc<Metrics>,
        direction: Direction,
        tls: Tls,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                h1_idle: Mutex::default(),
                h2: Mutex::default(),
                connect_timeout,
                max_idle_per_endpoint,
                metrics,
                direction,
                tls,
            }),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        proto: Protocol,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match proto {
            Protocol::Http1 => self.send_h1(addr, req).await,
            Protocol::Http2 => self.send_h2(addr, req).await,
        }
    }

    /// Sends an HTTP/1 request on a new, unpooled connection that supports upgrades.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = self.connect_h1(addr).await?;
        sender.send_request(req).await.map_err(ProxyError::Upstream)
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = match self.checkout_h1(addr) {
            Some(s) => s,
            None => self.connect_h1(addr).await?,
        };
        let rsp = sender
            .send_request(req)
            .await
            .map_err(ProxyError::Upstream)?;
        // The connection can carry another request once this response has been read; wait for
        // that in the background and then offer it back to the pool.
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                inner.checkin_h1(addr, sender);
            }
        });
        Ok(rsp)
    }

    fn checkout_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = lock(&self.inner.h1_idle);
        let conns = idle.get_mut(&addr)?;
        while let Some(s) = conns.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        idle.remove(&addr);
        None
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<ProxyBody>, ProxyError> {
        let (stream, stats) = self.inner.connect(addr).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
            }
            stats.close_total.fetch_add(1, Ordering::Relaxed);
        });
        Ok(sender)
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let existing = lock(&self.inner.h2).get(&addr).cloned();
        let mut sender = match existing {
            Some(s) if !s.is_closed() => s,
            _ => {
                let s = self.connect_h2(addr).await?;
                lock(&self.inner.h2).insert(addr, s.clone());
                s
            }
        };
        sender.ready().await.map_err(ProxyError::Upstream)?;
        sender.send_request(req).await.map_err(ProxyError::Upstream)
    }

    async fn connect_h2(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<ProxyBody>, ProxyError> {
        let (stream, stats) = self.inner.connect(addr).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(3))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Handshake)?;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
            stats.close_total.fetch_add(1, Ordering::Relaxed);
            let mut h2 = lock(&inner.h2);
            if h2.get(&addr).is_some_and(|s| s.is_closed()) {
                h2.remove(&addr);
            }
        });
        Ok(sender)
    }
}

impl Inner {
    async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<(CountingIo<tokio::net::TcpStream>, Arc<TcpStats>), ProxyError> {
        let stream = transport::connect(addr, self.connect_timeout).await?;
        let stats = self.metrics.tcp(TcpKey {
            direction: self.direction,
            peer: Peer::Dst,
            target_addr: addr,
            tls: self.tls.clone(),
        });
        stats.open_total.fetch_add(1, Ordering::Relaxed);
        Ok((CountingIo::new(stream, stats.bytes.clone()), stats))
    }

    fn checkin_h1(&self, addr: SocketAddr, sender: http1::SendRequest<ProxyBody>) {
        let mut idle = lock(&self.h1_idle);
        let conns = idle.entry(addr).or_default();
        conns.retain(|s| !s.is_closed());
        if conns.len() < self.max_idle_per_endpoint {
            conns.push(sender);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
