//! Upstream connections kept between requests, by endpoint (its address and the identity its
//! proxy must present), so that the original authority of each request is preserved whatever
//! endpoint the balancer chose.

use crate::lock;
use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Endpoint address and the identity its proxy must present.
pub(crate) type Key = (SocketAddr, Option<Arc<str>>);

/// A connection a [`Pool`] can keep.
pub trait Pooled: Send + 'static {
    /// The endpoint it is connected to.
    fn key(&self) -> &Key;
    /// True while the server has neither closed the idle connection nor sent anything unasked.
    fn is_idle_open(&mut self) -> bool;
}

/// Idle upstream connections by endpoint, each with the sweep count when it was checked in.
#[derive(Debug)]
pub struct Pool<C> {
    /// Oldest first; checkout takes the most recent.
    idle: Mutex<KeyMap<VecDeque<(C, u64)>>>,
    max_idle_per_endpoint: usize,
    sweeps: AtomicU64,
}

impl<C: Pooled> Pool<C> {
    pub fn new(max_idle_per_endpoint: usize) -> Self {
        Self {
            idle: Mutex::default(),
            max_idle_per_endpoint,
            sweeps: AtomicU64::new(0),
        }
    }

    /// The most recently used idle connection to the endpoint that is still open.
    pub fn checkout(&self, key: &Key) -> Option<C> {
        let mut idle = lock(&self.idle);
        let conns = idle.get_mut(key)?;
        while let Some((mut c, _)) = conns.pop_back() {
            if c.is_idle_open() {
                return Some(c);
            }
        }
        idle.remove(key);
        None
    }

    /// Keeps `conn` for reuse; when the endpoint already has its most idle connections, the
    /// oldest goes. Idle connections the server closed meanwhile are skipped at checkout and
    /// dropped by the sweep: probing them all at every checkin cost a poll per idle
    /// connection per request.
    pub fn checkin(&self, conn: C) {
        if self.max_idle_per_endpoint == 0 {
            return;
        }
        let now = self.sweeps.load(Ordering::Relaxed);
        let mut idle = lock(&self.idle);
        let conns = idle.entry(conn.key().clone()).or_default();
        if conns.len() >= self.max_idle_per_endpoint {
            conns.pop_front();
        }
        conns.push_back((conn, now));
    }
}

impl<C: Pooled> crate::idle::Sweep for Pool<C> {
    /// Closes the connections that were idle through a whole sweep period or that the server
    /// closed, and forgets endpoints with none left: with sweeps every `idle / 2`, an unused
    /// connection lives between `idle / 2` and `idle`.
    fn sweep(&self) -> usize {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = lock(&self.idle);
        let mut closed = 0;
        idle.retain(|_, conns| {
            let before = conns.len();
            conns.retain_mut(|(c, since)| *since + 1 >= now && c.is_idle_open());
            closed += before - conns.len();
            !conns.is_empty()
        });
        closed
    }
}

impl<C> Pool<C> {
    #[cfg(test)]
    pub fn idle(&self, key: &Key) -> usize {
        lock(&self.idle).get(key).map_or(0, VecDeque::len)
    }
}

/// Pool maps are looked up on every request and keyed by local data (endpoint address and
/// identity), so they use a cheap multiplicative hash instead of SipHash, which cost ~600
/// instructions per HTTP/2 request hashing the identity name.
pub(crate) type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<FastHasher>>;

#[derive(Debug, Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}
