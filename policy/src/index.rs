//! The index: the sources' [`State`] and one shared topic per watched inbound
//! `(workload, port)` and outbound `(service, port)`.
//!
//! Every change to the state recomputes each watched topic's message and publishes it only if
//! it differs from the last one (prost messages compare by value), on a `tokio::sync::watch`
//! channel shared by all the topic's watchers: a new watcher gets the current message at once,
//! a slow one only ever holds the latest. Topics nobody watches are dropped on the next change.
//! Recomputing is O(watched topics × resources in the namespace); at the scale of a local mesh
//! or a modest cluster it is microseconds per topic (see the README's figures).

use crate::{
    inbound,
    model::{ClusterConfig, Key, State},
    outbound,
};
use proto::api::{inbound::Server, outbound::OutboundPolicy};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};
use tokio::sync::watch;

/// A topic's value: `None` once the workload or service is gone (the streams end with
/// `NOT_FOUND`).
pub type InboundRx = watch::Receiver<Option<Arc<Server>>>;
pub type OutboundRx = watch::Receiver<Option<Arc<OutboundPolicy>>>;

/// The shared index; all methods take `&self`.
#[derive(Debug)]
pub struct Index {
    cfg: ClusterConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    inbound: Topics<Server>,
    outbound: Topics<OutboundPolicy>,
    closed: bool,
}

/// Sizes for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub workloads: usize,
    pub services: usize,
    /// Policy resources of every kind.
    pub resources: usize,
    pub inbound_topics: usize,
    pub outbound_topics: usize,
    pub inbound_watchers: usize,
    pub outbound_watchers: usize,
}

impl Index {
    pub fn new(cfg: ClusterConfig) -> Self {
        Self {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the whole state (a registry reload, a Kubernetes relist). Returns how many
    /// watched topics changed.
    pub fn reset(&self, state: State) -> usize {
        self.update(|s| *s = state)
    }

    /// Edits the state and republishes every watched topic that changed. Returns how many did.
    pub fn update(&self, f: impl FnOnce(&mut State)) -> usize {
        let mut inner = self.lock();
        let before = inner.state.clone();
        f(&mut inner.state);
        if inner.state == before {
            return 0;
        }
        inner.publish(&self.cfg)
    }

    /// A copy of the current state (tests, diagnostics).
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// Subscribes to `port` of `workload`; `None` if the workload is unknown. The receiver's
    /// current value is the first message to send.
    pub fn watch_inbound(&self, workload: &Key, port: u16) -> Option<InboundRx> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let first = || inbound::server(&inner.state, &self.cfg, workload, port);
        subscribe(
            &mut inner.inbound,
            inner.closed,
            (workload.clone(), port),
            first,
        )
    }

    /// Subscribes to `port` of service `svc`; `None` if the service is unknown.
    pub fn watch_outbound(&self, svc: &Key, port: u16) -> Option<OutboundRx> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let first = || outbound::policy(&inner.state, &self.cfg, svc, port);
        subscribe(
            &mut inner.outbound,
            inner.closed,
            (svc.clone(), port),
            first,
        )
    }

    /// The inbound policy right now (`GetPort`).
    pub fn inbound(&self, workload: &Key, port: u16) -> Option<Server> {
        inbound::server(&self.lock().state, &self.cfg, workload, port)
    }

    /// The outbound policy right now (`Get`).
    pub fn outbound(&self, svc: &Key, port: u16) -> Option<OutboundPolicy> {
        outbound::policy(&self.lock().state, &self.cfg, svc, port)
    }

    /// The service with cluster IP `ip` (`None` if none or several).
    pub fn service_by_ip(&self, ip: IpAddr) -> Option<Key> {
        let inner = self.lock();
        let at_ip = inner
            .state
            .services
            .iter()
            .filter(|(_, s)| s.cluster_ips.contains(&ip));
        linkerd_control::only(at_ip.map(|(k, _)| k)).cloned()
    }

    /// Ends every watch (their streams end) and refuses new topics: for shutdown.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.inbound.clear();
        inner.outbound.clear();
    }

    /// Current sizes; also drops topics nobody watches.
    pub fn stats(&self) -> Stats {
        let mut inner = self.lock();
        inner.inbound.retain(|_, tx| tx.receiver_count() > 0);
        inner.outbound.retain(|_, tx| tx.receiver_count() > 0);
        let s = &inner.state;
        Stats {
            workloads: s.workloads.len(),
            services: s.services.len(),
            resources: s.servers.len()
                + s.authorization_policies.len()
                + s.mesh_tls_authentications.len()
                + s.network_authentications.len()
                + s.rate_limits.len()
                + s.http_routes.len()
                + s.grpc_routes.len(),
            inbound_topics: inner.inbound.len(),
            outbound_topics: inner.outbound.len(),
            inbound_watchers: inner.inbound.values().map(|t| t.receiver_count()).sum(),
            outbound_watchers: inner.outbound.values().map(|t| t.receiver_count()).sum(),
        }
    }
}

impl Inner {
    fn publish(&mut self, cfg: &ClusterConfig) -> usize {
        let state = &self.state;
        republish(&mut self.inbound, |key, port| {
            inbound::server(state, cfg, key, port)
        }) + republish(&mut self.outbound, |key, port| {
            outbound::policy(state, cfg, key, port)
        })
    }
}

/// The watched topics of one direction, by `(workload or service, port)`.
type Topics<T> = HashMap<(Key, u16), watch::Sender<Option<Arc<T>>>>;

/// A receiver of `topic`: the live one's, or a new topic's whose first message is `first()`
/// (kept unless the index is `closed`); `None` if `first` finds nothing to send.
fn subscribe<T>(
    topics: &mut Topics<T>,
    closed: bool,
    topic: (Key, u16),
    first: impl FnOnce() -> Option<T>,
) -> Option<watch::Receiver<Option<Arc<T>>>> {
    if let Some(tx) = topics.get(&topic)
        && tx.borrow().is_some()
    {
        return Some(tx.subscribe());
    }
    let (tx, rx) = watch::channel(Some(Arc::new(first()?)));
    if !closed {
        topics.insert(topic, tx);
    }
    Some(rx)
}

/// Recomputes every watched topic with `compute` and sends the messages that changed; drops
/// the topics nobody watches and those whose subject is gone. Returns how many changed.
fn republish<T: PartialEq>(
    topics: &mut Topics<T>,
    compute: impl Fn(&Key, u16) -> Option<T>,
) -> usize {
    let mut changed = 0;
    topics.retain(|(key, port), tx| {
        if tx.receiver_count() == 0 {
            return false;
        }
        let next = compute(key, *port);
        if tx.borrow().as_deref() != next.as_ref() {
            changed += 1;
            let gone = next.is_none();
            tx.send_replace(next.map(Arc::new));
            // The streams end with NOT_FOUND; a later watch starts a new topic.
            return !gone;
        }
        true
    });
    changed
}
