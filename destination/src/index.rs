//! The index: every known service, and one shared topic per watched `(service, port)`.
//!
//! Sources write whole [`Service`]s ([`Index::set_service`], [`Index::remove_service`],
//! [`Index::reset`]). For each topic that has watchers, the index resolves the port's
//! endpoints, diffs them against the topic's current snapshot and, if anything changed,
//! publishes a new versioned [`Snapshot`] carrying that diff on the topic's
//! `tokio::sync::watch` channel.
//!
//! All watchers of a topic share one channel and one snapshot. A watcher keeps only an `Arc`
//! of the last snapshot it sent: when the next one it sees is exactly one version later it
//! sends the precomputed [`Snapshot::diff`]; when it has fallen behind (the channel keeps
//! only the latest value) it diffs its last snapshot against the current one. So a slow
//! watcher costs no queue, only the snapshot it still holds.

use crate::model::{Endpoint, Service, ServiceKey};
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};
use tokio::sync::watch;

/// Endpoints by address.
pub type EndpointMap = BTreeMap<SocketAddr, Arc<Endpoint>>;

/// The shared index. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug, Default)]
pub struct Index {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    services: HashMap<ServiceKey, Arc<Service>>,
    topics: HashMap<TopicKey, watch::Sender<Arc<Snapshot>>>,
    endpoints: usize,
    /// A channel that never changes, for streams that send once and then only wait for
    /// [`Index::close`].
    idle: Option<watch::Sender<Arc<Snapshot>>>,
    closed: bool,
}

type TopicKey = (ServiceKey, u16);

/// One version of a topic.
#[derive(Debug)]
pub struct Snapshot {
    /// Starts at 0 when the topic is created; +1 per published change.
    pub version: u64,
    /// The service exists (it may still have no endpoints).
    pub exists: bool,
    /// The service declares this port.
    pub declared: bool,
    /// Traffic to this port is opaque.
    pub opaque: bool,
    pub endpoints: Arc<EndpointMap>,
    /// What changed since `version - 1` (empty for version 0).
    pub diff: Arc<Diff>,
}

/// Endpoints added (or changed) and removed between two snapshots.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub add: Vec<Arc<Endpoint>>,
    pub remove: Vec<Arc<Endpoint>>,
}

/// Sizes for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub services: usize,
    /// Backends over all services.
    pub endpoints: usize,
    pub topics: usize,
    /// Watchers per service (summed over its ports); services without watchers are left out.
    pub watchers: BTreeMap<ServiceKey, usize>,
}

// === impl Index ===

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces a service and updates its watchers. Returns whether it changed.
    pub fn set_service(&self, key: ServiceKey, svc: Service) -> bool {
        self.lock().set(key, Some(svc))
    }

    /// Removes a service; its watchers see every endpoint removed and `exists = false`.
    pub fn remove_service(&self, key: &ServiceKey) -> bool {
        self.lock().set(key.clone(), None)
    }

    /// Replaces the whole set of services (a registry reload or a Kubernetes relist):
    /// services not in `services` are removed. Returns how many services changed.
    pub fn reset(&self, services: HashMap<ServiceKey, Service>) -> usize {
        let mut inner = self.lock();
        let gone: Vec<ServiceKey> = inner
            .services
            .keys()
            .filter(|k| !services.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = 0;
        for k in gone {
            changed += usize::from(inner.set(k, None));
        }
        for (k, s) in services {
            changed += usize::from(inner.set(k, Some(s)));
        }
        changed
    }

    /// Subscribes to a service port. `None` if the service is unknown.
    ///
    /// The receiver's current value is the snapshot to send first; it is marked as seen, so
    /// `changed()` fires on the next change.
    pub fn watch(&self, key: &ServiceKey, port: u16) -> Option<watch::Receiver<Arc<Snapshot>>> {
        self.subscribe(key, port, true)
    }

    /// Subscribes to a service port whether or not the service exists yet (profiles follow
    /// a service that appears later).
    pub fn watch_profile(&self, key: &ServiceKey, port: u16) -> watch::Receiver<Arc<Snapshot>> {
        match self.subscribe(key, port, false) {
            Some(rx) => rx,
            // Unreachable: only `must_exist` refuses.
            None => watch::channel(Arc::new(Snapshot::initial(None, port))).1,
        }
    }

    fn subscribe(
        &self,
        key: &ServiceKey,
        port: u16,
        must_exist: bool,
    ) -> Option<watch::Receiver<Arc<Snapshot>>> {
        let mut inner = self.lock();
        let svc = inner.services.get(key).cloned();
        if must_exist && svc.is_none() {
            return None;
        }
        let topic = (key.clone(), port);
        if let Some(tx) = inner.topics.get(&topic) {
            return Some(tx.subscribe());
        }
        let snapshot = Snapshot::initial(svc.as_deref(), port);
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        if !inner.closed {
            inner.topics.insert(topic, tx);
        }
        Some(rx)
    }

    pub fn service(&self, key: &ServiceKey) -> Option<Arc<Service>> {
        self.lock().services.get(key).cloned()
    }

    /// The service whose cluster IP is `ip` (`None` if none or several).
    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<ServiceKey> {
        let inner = self.lock();
        let at_ip = inner
            .services
            .iter()
            .filter(|(_, s)| s.cluster_ips.contains(&ip));
        linkerd_control::only(at_ip.map(|(k, _)| k)).cloned()
    }

    /// The endpoint at `addr` in any service (for `GetProfile` on a pod address).
    pub fn endpoint_at(&self, addr: SocketAddr) -> Option<(ServiceKey, Arc<Endpoint>, bool)> {
        let inner = self.lock();
        for (key, svc) in &inner.services {
            if !svc.backends.iter().any(|b| b.ip == addr.ip()) {
                continue;
            }
            if let Some(ep) = svc.endpoints(addr.port()).remove(&addr) {
                let opaque = svc.is_opaque(addr.port());
                return Some((key.clone(), ep, opaque));
            }
        }
        None
    }

    /// A receiver that sees no change until [`Index::close`], then ends.
    pub fn hold(&self) -> watch::Receiver<Arc<Snapshot>> {
        let mut inner = self.lock();
        if inner.closed {
            return watch::channel(Arc::new(Snapshot::initial(None, 0))).1;
        }
        inner
            .idle
            .get_or_insert_with(|| watch::channel(Arc::new(Snapshot::initial(None, 0))).0)
            .subscribe()
    }

    /// Ends every watch: their streams finish what they were sending, then end (so a
    /// graceful server shutdown is not held up by streams that never end).
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.topics.clear();
        inner.idle = None;
    }

    /// Current sizes; also drops topics nobody watches any more.
    pub fn stats(&self) -> Stats {
        let mut inner = self.lock();
        inner.topics.retain(|_, tx| tx.receiver_count() > 0);
        let mut watchers = BTreeMap::new();
        for ((key, _), tx) in &inner.topics {
            *watchers.entry(key.clone()).or_insert(0) += tx.receiver_count();
        }
        Stats {
            services: inner.services.len(),
            endpoints: inner.endpoints,
            topics: inner.topics.len(),
            watchers,
        }
    }
}

impl Inner {
    fn set(&mut self, key: ServiceKey, svc: Option<Service>) -> bool {
        let svc = match svc {
            Some(new) => {
                if self.services.get(&key).is_some_and(|old| **old == new) {
                    return false;
                }
                let new = Arc::new(new);
                self.endpoints += new.endpoint_count();
                if let Some(old) = self.services.insert(key.clone(), new.clone()) {
                    self.endpoints -= old.endpoint_count();
                }
                Some(new)
            }
            None => match self.services.remove(&key) {
                Some(old) => {
                    self.endpoints -= old.endpoint_count();
                    None
                }
                None => return false,
            },
        };
        self.publish(&key, svc.as_deref());
        true
    }

    /// Republishes every watched port of `key`, dropping topics nobody watches.
    fn publish(&mut self, key: &ServiceKey, svc: Option<&Service>) {
        self.topics.retain(|(k, port), tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            if k == key {
                let current = tx.borrow().clone();
                if let Some(next) = current.next(svc, *port) {
                    tx.send_replace(Arc::new(next));
                }
            }
            true
        });
    }
}

// === impl Snapshot ===

impl Snapshot {
    fn initial(svc: Option<&Service>, port: u16) -> Self {
        Self {
            version: 0,
            exists: svc.is_some(),
            declared: svc.is_some_and(|s| s.port(port).is_some()),
            opaque: svc.is_some_and(|s| s.is_opaque(port)),
            endpoints: Arc::new(svc.map(|s| s.endpoints(port)).unwrap_or_default()),
            diff: Arc::default(),
        }
    }

    /// The next version for `svc`, or `None` if nothing a watcher sees changed.
    fn next(&self, svc: Option<&Service>, port: u16) -> Option<Self> {
        let endpoints = svc
            .map(|s| s.endpoints_reusing(port, &self.endpoints))
            .unwrap_or_default();
        let diff = Diff::between(&self.endpoints, &endpoints);
        let exists = svc.is_some();
        let declared = svc.is_some_and(|s| s.port(port).is_some());
        let opaque = svc.is_some_and(|s| s.is_opaque(port));
        let same = diff.is_empty()
            && exists == self.exists
            && declared == self.declared
            && opaque == self.opaque;
        if same {
            return None;
        }
        Some(Self {
            version: self.version + 1,
            exists,
            declared,
            opaque,
            // Nothing moved: keep sharing the old map (and any watcher's hold on it).
            endpoints: if diff.is_empty() {
                self.endpoints.clone()
            } else {
                Arc::new(endpoints)
            },
            diff: Arc::new(diff),
        })
    }
}

// === impl Diff ===

impl Diff {
    /// A merge over the two address-ordered maps: O(old + new).
    pub fn between(old: &EndpointMap, new: &EndpointMap) -> Self {
        use std::cmp::Ordering::*;
        let mut diff = Self::default();
        let mut a = old.iter().peekable();
        let mut b = new.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return diff,
                (Some((_, o)), None) => {
                    diff.remove.push((*o).clone());
                    a.next();
                }
                (None, Some((_, n))) => {
                    diff.add.push((*n).clone());
                    b.next();
                }
                (Some((ka, o)), Some((kb, n))) => match ka.cmp(kb) {
                    Less => {
                        diff.remove.push((*o).clone());
                        a.next();
                    }
                    Greater => {
                        diff.add.push((*n).clone());
                        b.next();
                    }
                    Equal => {
                        if !Arc::ptr_eq(o, n) && **o != **n {
                            diff.add.push((*n).clone());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}
