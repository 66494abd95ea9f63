//! Inbound authorization: which clients may talk to each inbound port, per connection (opaque
//! TCP) and per request (HTTP), as Linkerd's policy controller describes it through
//! `io.linkerd.proxy.inbound.InboundServerPolicies`.
//!
//! Every inbound port has a [`ServerPolicy`] behind a watch: the local default
//! (`LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`) until the policy service says otherwise (see
//! [`client`]). A decision reads the current policy, so an update applies to the next
//! connection or request without touching established connections.
//!
//! ```text
//! opaque connection ─► authorize(client ip, client identity) ─► allow: forward │ deny: close
//! HTTP request ─► route (hosts, path, method, headers) ─► no route: 404
//!              └► route authorizations + server authorizations ─► allow │ deny: 403 / PERMISSION_DENIED
//!                   └► local rate limit (total, per identity, overrides) ─► over: 429 / RESOURCE_EXHAUSTED
//! ```

pub mod client;
mod convert;
mod model;
pub(crate) mod ratelimit;
#[cfg(test)]
mod tests;

pub use crate::http::matching::*;
pub use model::*;

use crate::metrics::Metrics;
use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicUsize},
};
use tokio::sync::watch;

/// The inbound policy of every port: watched ports follow the policy service, the others get
/// the default.
#[derive(Clone, Debug)]
pub struct Policies {
    ports: Arc<HashMap<u16, watch::Receiver<Arc<ServerPolicy>>>>,
    default: Arc<ServerPolicy>,
    /// Watched ports that have not heard from the policy service yet (readiness waits).
    pending: Arc<AtomicUsize>,
}

impl Policies {
    /// Only the local default, for every port (no policy service).
    pub fn fixed(default: DefaultPolicy, cluster_networks: &[Net], metrics: &Metrics) -> Self {
        Self {
            ports: Arc::default(),
            default: Arc::new(ServerPolicy::default_for(
                default,
                cluster_networks,
                metrics,
            )),
            pending: Arc::default(),
        }
    }

    pub fn new(
        ports: HashMap<u16, watch::Receiver<Arc<ServerPolicy>>>,
        default: Arc<ServerPolicy>,
        pending: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            ports: Arc::new(ports),
            default,
            pending,
        }
    }

    /// The count of watched ports still waiting for their first policy.
    pub fn pending(&self) -> Arc<AtomicUsize> {
        self.pending.clone()
    }

    /// The policy of a port right now.
    pub fn get(&self, port: u16) -> Arc<ServerPolicy> {
        match self.ports.get(&port) {
            Some(rx) => rx.borrow().clone(),
            None => self.default.clone(),
        }
    }

    /// A handle that always reads the port's current policy.
    pub fn port(&self, port: u16) -> PortPolicy {
        PortPolicy {
            rx: self.ports.get(&port).cloned(),
            default: self.default.clone(),
        }
    }
}

/// One port's policy, read again for every decision.
#[derive(Clone, Debug)]
pub struct PortPolicy {
    rx: Option<watch::Receiver<Arc<ServerPolicy>>>,
    default: Arc<ServerPolicy>,
}

impl PortPolicy {
    pub fn current(&self) -> Arc<ServerPolicy> {
        match &self.rx {
            Some(rx) => rx.borrow().clone(),
            None => self.default.clone(),
        }
    }
}
