//! Load balancing over a logical destination's endpoints: power of two choices over a
//! peak-EWMA cost, with connect-failure backoff and a bounded wait (fail-fast) when nothing is
//! available.
//!
//! Each endpoint keeps a [`Load`]: the requests (or connections) in flight on it and a
//! round-trip estimate. An endpoint never measured is probed by one request at a time; the
//! estimate (a default until then) is replaced by the first measured response, then jumps to any sample above it (peak) and otherwise moves towards new samples
//! with a weight that grows with the time since the last one; with no samples it decays
//! towards zero, so an endpoint that was slow once is tried again later.
//! A pick draws two distinct available endpoints at random and takes the one with the lower
//! `rtt × (in flight + 1)`. An endpoint that fails to connect is left out for an exponential,
//! jittered backoff.
//!
//! A [`Balancer`] follows one destination's [`Resolution`] watch, keeping the loads of endpoints
//! that stay across updates. [`Balancers`] caches one balancer per name and evicts those that
//! nobody used for the idle timeout.

use crate::{
    idle::{IdleMap, Touched},
    resolve::{Endpoint, Resolution, Resolve, ResolveError},
};
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalanceConfig {
    /// The round-trip estimate of an endpoint with no samples yet.
    pub default_rtt: Duration,
    /// How fast old samples lose weight (the EWMA time constant).
    pub decay: Duration,
    /// How long a request waits for an available endpoint before failing.
    pub failfast: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        // Linkerd's peak-EWMA defaults (30 ms, 10 s).
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failfast: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalanceError {
    /// Discovery says the name does not exist, or never answered: the caller may fall back
    /// (to the original destination, an IP literal or DNS).
    #[error("{0} is not known to service discovery")]
    Unknown(String),
    #[error("no available endpoints for {0} within {1:?}")]
    Unavailable(String, Duration),
}

/// Load and health of one endpoint.
#[derive(Debug)]
pub(crate) struct Load {
    state: Mutex<LoadState>,
}

#[derive(Debug)]
struct LoadState {
    pending: u32,
    rtt_ns: f64,
    stamp: Instant,
    failures: u32,
    down_until: Option<Instant>,
    /// Whether the endpoint is still being probed: no response measured yet, or only the
    /// first, which usually includes connecting (and the TLS handshake) and so overstates the
    /// endpoint's latency.
    unsampled: bool,
    /// Responses measured so far (counted up to 2).
    samples: u8,
    /// Failure accrual: failed responses in a row, times ejected in a row, and until when.
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Load {
    fn new(default_rtt: Duration, now: Instant) -> Self {
        Self {
            state: Mutex::new(LoadState {
                pending: 0,
                rtt_ns: default_rtt.as_nanos() as f64,
                stamp: now,
                failures: 0,
                down_until: None,
                unsampled: true,
                samples: 0,
                consecutive: 0,
                ejections: 0,
                ejected_until: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LoadState> {
        crate::lock(&self.state)
    }

    /// `rtt × (pending + 1)` with the estimate decayed to `now`.
    fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let mut s = self.lock();
        if s.unsampled {
            // Never measured: probe it with one request at a time (free while idle, the
            // default estimate while a probe is in flight), so a new endpoint is measured soon
            // without a burst of requests landing on it before anyone knows how fast it is.
            return if s.pending == 0 {
                0.0
            } else {
                s.rtt_ns * f64::from(s.pending + 1)
            };
        }
        s.observe(0.0, now, decay);
        s.rtt_ns * f64::from(s.pending + 1)
    }

    /// Until when the endpoint is left out: backing off a connect failure, or ejected by
    /// failure accrual.
    fn is_down(&self, now: Instant) -> Option<Instant> {
        let s = self.lock();
        match (
            s.down_until.filter(|t| *t > now),
            s.ejected_until.filter(|t| *t > now),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Requests or connections in flight on this endpoint.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> u32 {
        self.lock().pending
    }
}

impl LoadState {
    /// A measured round trip. The first one replaces the default estimate (it prices the
    /// endpoint while a second probe is in flight); the second replaces the first outright,
    /// because the first usually paid for connecting: a new endpoint's real latency counts
    /// from then on instead of a handshake being remembered for the length of the decay.
    fn sample(&mut self, sample_ns: f64, now: Instant, decay: Duration) {
        if self.unsampled {
            self.samples = self.samples.saturating_add(1);
            self.unsampled = self.samples < 2;
            self.rtt_ns = sample_ns;
            self.stamp = now;
        } else {
            self.observe(sample_ns, now, decay);
        }
    }

    fn observe(&mut self, sample_ns: f64, now: Instant, decay: Duration) {
        if sample_ns > self.rtt_ns {
            self.rtt_ns = sample_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
            let w = (-elapsed / (decay.as_nanos() as f64).max(1.0)).exp();
            self.rtt_ns = self.rtt_ns * w + sample_ns * (1.0 - w);
        }
        self.stamp = now;
    }
}

/// Failure accrual (Linkerd's consecutive-failures breaker): consecutive failures take an
/// endpoint out of its balancer for a backoff that grows while it keeps failing its probes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accrual {
    pub max_failures: u32,
    pub backoff: crate::backoff::Backoff,
}

/// An endpoint chosen for one request (or one TCP connection). It counts as in flight on the
/// endpoint until it is dropped; [`Picked::complete`] also records the round trip.
#[derive(Debug)]
pub struct Picked {
    pub endpoint: Endpoint,
    load: Arc<Load>,
    cfg: BalanceConfig,
    start: Instant,
}

impl Picked {
    fn new(endpoint: Endpoint, load: Arc<Load>, cfg: BalanceConfig) -> Self {
        load.lock().pending += 1;
        Self {
            endpoint,
            load,
            cfg,
            start: Instant::now(),
        }
    }

    /// The response (headers) arrived: record its latency; the endpoint is healthy.
    pub fn complete(&self) {
        let now = Instant::now();
        let sample = now.saturating_duration_since(self.start).as_nanos() as f64;
        let mut s = self.load.lock();
        s.sample(sample, now, self.cfg.decay);
        s.failures = 0;
        s.down_until = None;
    }

    /// Connecting to the endpoint failed: leave it out for a while.
    pub fn connect_failed(&self) {
        let mut s = self.load.lock();
        s.failures = s.failures.saturating_add(1);
        // Jitter over the upper half, so endpoints that failed together come back apart.
        let backoff = crate::backoff::Backoff {
            min: self.cfg.backoff_min,
            max: self.cfg.backoff_max,
            jitter: 0.5,
        };
        s.down_until = Some(Instant::now() + backoff.delay(s.failures - 1));
    }

    /// Failure accrual: a response (or error) counted as a success or a failure. After
    /// `max_failures` failures in a row the endpoint is ejected for the accrual's backoff; when
    /// that passes it is probed, and one more failure ejects it again for twice as long, while
    /// a success readmits it for good.
    pub fn accrue(&self, ok: bool, accrual: &Accrual) {
        let mut s = self.load.lock();
        if ok {
            s.consecutive = 0;
            s.ejections = 0;
            s.ejected_until = None;
            return;
        }
        s.consecutive = s.consecutive.saturating_add(1);
        // On probation (ejected before): one failure is enough.
        if s.consecutive >= accrual.max_failures || s.ejections > 0 {
            let wait = accrual.backoff.delay(s.ejections);
            s.ejections = s.ejections.saturating_add(1);
            s.consecutive = 0;
            s.ejected_until = Some(Instant::now() + wait);
        }
    }

    /// The connection to the endpoint was established.
    pub fn connected(&self) {
        let mut s = self.load.lock();
        s.failures = 0;
        s.down_until = None;
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        let mut s = self.load.lock();
        s.pending = s.pending.saturating_sub(1);
    }
}

#[derive(Clone, Debug)]
struct Slot {
    endpoint: Endpoint,
    load: Arc<Load>,
}

#[derive(Debug)]
struct State {
    rx: watch::Receiver<Resolution>,
    resolution: Resolution,
    slots: Vec<Slot>,
}

/// Balances requests over the endpoints of one destination.
#[derive(Debug)]
pub struct Balancer {
    name: String,
    cfg: BalanceConfig,
    state: Mutex<State>,
    used: AtomicBool,
}

enum Choice {
    Ready(Picked),
    Wait {
        rx: watch::Receiver<Resolution>,
        retry_at: Option<Instant>,
    },
    Unknown,
}

impl Balancer {
    pub fn new(name: String, mut rx: watch::Receiver<Resolution>, cfg: BalanceConfig) -> Self {
        let resolution = rx.borrow_and_update().clone();
        let now = Instant::now();
        let slots = slots_for(&resolution, &[], cfg.default_rtt, now);
        Self {
            name,
            cfg,
            state: Mutex::new(State {
                rx,
                resolution,
                slots,
            }),
            used: AtomicBool::new(true),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Picks an endpoint, waiting up to the fail-fast timeout for one to become available.
    pub async fn pick(&self) -> Result<Picked, BalanceError> {
        self.used.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.cfg.failfast;
        loop {
            match self.try_pick() {
                Choice::Ready(p) => return Ok(p),
                Choice::Unknown => return Err(BalanceError::Unknown(self.name.clone())),
                Choice::Wait { mut rx, retry_at } => {
                    let until = retry_at.map_or(deadline, |t| t.min(deadline));
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() {
                                // The source is gone: what we hold is all we will ever have.
                                tokio::time::sleep_until(until).await;
                            }
                        }
                        _ = tokio::time::sleep_until(until) => {}
                    }
                    if Instant::now() >= deadline {
                        return match self.try_pick() {
                            Choice::Ready(p) => Ok(p),
                            // Discovery never answered: let the caller fall back.
                            _ if self.pending() => Err(BalanceError::Unknown(self.name.clone())),
                            Choice::Unknown => Err(BalanceError::Unknown(self.name.clone())),
                            Choice::Wait { .. } => Err(BalanceError::Unavailable(
                                self.name.clone(),
                                self.cfg.failfast,
                            )),
                        };
                    }
                }
            }
        }
    }

    fn pending(&self) -> bool {
        matches!(self.lock().resolution, Resolution::Pending)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    fn try_pick(&self) -> Choice {
        let now = Instant::now();
        let mut st = self.lock();
        if st.rx.has_changed().unwrap_or(false) {
            let resolution = st.rx.borrow_and_update().clone();
            st.slots = slots_for(&resolution, &st.slots, self.cfg.default_rtt, now);
            st.resolution = resolution;
        }
        match st.resolution {
            Resolution::Unknown => return Choice::Unknown,
            Resolution::Pending | Resolution::Ready(_) => {}
        }
        let mut avail: [Option<&Slot>; 2] = [None, None];
        let mut count = 0usize;
        let mut retry_at: Option<Instant> = None;
        // Reservoir-sample two distinct available slots in one pass (no allocation).
        for slot in &st.slots {
            if let Some(t) = slot.load.is_down(now) {
                retry_at = Some(retry_at.map_or(t, |r| r.min(t)));
                continue;
            }
            count += 1;
            if count <= 2 {
                avail[count - 1] = Some(slot);
            } else {
                let j = fastrand::usize(..count);
                if j < 2 {
                    avail[j] = Some(slot);
                }
            }
        }
        let chosen = match avail {
            [Some(a), Some(b)] => {
                let (ca, cb) = (
                    a.load.cost(now, self.cfg.decay),
                    b.load.cost(now, self.cfg.decay),
                );
                if ca < cb || (ca == cb && fastrand::bool()) {
                    a
                } else {
                    b
                }
            }
            [Some(a), None] => a,
            _ => {
                return Choice::Wait {
                    rx: st.rx.clone(),
                    retry_at,
                };
            }
        };
        Choice::Ready(Picked::new(
            chosen.endpoint.clone(),
            chosen.load.clone(),
            self.cfg,
        ))
    }
}

/// The slots for a new resolution, keeping the load of every endpoint that stays.
fn slots_for(res: &Resolution, old: &[Slot], default_rtt: Duration, now: Instant) -> Vec<Slot> {
    let Resolution::Ready(eps) = res else {
        // Pending keeps nothing to pick from; Unknown too.
        return Vec::new();
    };
    eps.iter()
        .map(|ep| {
            let load = old
                .iter()
                .find(|s| s.endpoint == *ep)
                .map(|s| s.load.clone())
                .unwrap_or_else(|| Arc::new(Load::new(default_rtt, now)));
            Slot {
                endpoint: ep.clone(),
                load,
            }
        })
        .collect()
}

/// Where one request or connection goes: an endpoint picked by a balancer, or an address with
/// no balancer behind it (the original destination, an IP literal, DNS).
#[derive(Debug)]
pub(crate) enum Target {
    Balanced(Picked),
    Direct(Endpoint),
}

impl Target {
    pub(crate) fn direct(addr: SocketAddr) -> Self {
        Target::Direct(Endpoint {
            labels: None,
            addr,
            identity: None,
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        match self {
            Target::Balanced(p) => &p.endpoint,
            Target::Direct(e) => e,
        }
    }

    pub(crate) fn complete(&self) {
        if let Target::Balanced(p) = self {
            p.complete();
        }
    }

    pub(crate) fn connect_failed(&self) {
        if let Target::Balanced(p) = self {
            p.connect_failed();
        }
    }

    pub(crate) fn connected(&self) {
        if let Target::Balanced(p) = self {
            p.connected();
        }
    }

    pub(crate) fn accrue(&self, ok: bool, accrual: &Accrual) {
        if let Target::Balanced(p) = self {
            p.accrue(ok, accrual);
        }
    }
}

/// Resolves a logical `host:port`: balanced over discovered endpoints when a resolver serves
/// the name; otherwise (or when discovery says it does not exist) `fallback`, then an IP
/// literal, then DNS.
pub(crate) async fn target_for(
    balancer: Option<&Balancer>,
    authority: &str,
    fallback: Option<SocketAddr>,
) -> Result<Target, ResolveError> {
    if let Some(b) = balancer {
        match b.pick().await {
            Ok(p) => return Ok(Target::Balanced(p)),
            Err(BalanceError::Unknown(_)) => {}
            Err(BalanceError::Unavailable(..)) => {
                return Err(ResolveError::NoEndpoints(authority.to_string()));
            }
        }
    }
    if let Some(addr) = fallback {
        return Ok(Target::direct(addr));
    }
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(Target::direct(addr));
    }
    let mut addrs = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| ResolveError::Unresolvable(authority.to_string(), e.to_string()))?;
    addrs
        .next()
        .map(Target::direct)
        .ok_or_else(|| ResolveError::Unresolvable(authority.to_string(), "no addresses".into()))
}

/// One balancer per destination name, created on first use and evicted when idle.
pub struct Balancers {
    resolve: Arc<dyn Resolve>,
    cfg: BalanceConfig,
    map: Arc<IdleMap<Balancer>>,
}

impl std::fmt::Debug for Balancers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancers")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Touched for Balancer {
    fn touched(&self) -> &AtomicBool {
        &self.used
    }
}

impl Balancers {
    pub fn new(resolve: Arc<dyn Resolve>, cfg: BalanceConfig) -> Self {
        Self {
            resolve,
            cfg,
            map: Arc::default(),
        }
    }

    /// The balancer for `authority` (`host:port`), or `None` when no resolver serves the name.
    pub fn get(&self, authority: &str) -> Option<Arc<Balancer>> {
        let key = authority.trim_end_matches('.').to_ascii_lowercase();
        self.map.get_or_insert_with(&key, || {
            let rx = self.resolve.resolve(&key)?;
            Some(Balancer::new(key.clone(), rx, self.cfg))
        })
    }

    /// Drops balancers that nobody holds and nobody used since the previous sweep; dropping
    /// one releases its discovery watch.
    pub fn sweep(&self) -> usize {
        crate::idle::Sweep::sweep(&*self.map)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sweeps every `idle / 2` while the balancers live, so an unused balancer lives between
    /// `idle / 2` and `idle`.
    pub async fn evict_idle(self: Arc<Self>, idle: Duration) {
        let map = Arc::downgrade(&self.map);
        drop(self);
        crate::idle::evict_idle(&map, idle).await;
    }
}

#[cfg(test)]
mod tests;
