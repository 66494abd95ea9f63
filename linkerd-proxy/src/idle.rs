//! A cache of per-destination state (balancers, policy watches) that forgets what nobody uses:
//! an entry survives a sweep while someone holds it or used it since the previous sweep, and
//! dropping an entry ends whatever it was watching.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// What [`evict_idle`] sweeps: it drops what was not used since the previous sweep and says
/// how many it dropped.
pub(crate) trait Sweep {
    fn sweep(&self) -> usize;
}

/// An entry's "used since the last sweep" flag.
pub(crate) trait Touched {
    fn touched(&self) -> &AtomicBool;
}

#[derive(Debug)]
pub(crate) struct IdleMap<V> {
    map: Mutex<HashMap<String, Arc<V>>>,
}

impl<V> Default for IdleMap<V> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
        }
    }
}

impl<V: Touched> IdleMap<V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<V>>> {
        crate::lock(&self.map)
    }

    /// The entry for `key`, marked used; or the one `make` builds (none if it builds none).
    pub(crate) fn get_or_insert_with(
        &self,
        key: &str,
        make: impl FnOnce() -> Option<V>,
    ) -> Option<Arc<V>> {
        let mut map = self.lock();
        if let Some(v) = map.get(key) {
            v.touched().store(true, Ordering::Relaxed);
            return Some(v.clone());
        }
        let v = Arc::new(make()?);
        v.touched().store(true, Ordering::Relaxed);
        map.insert(key.to_string(), v.clone());
        Some(v)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Touched> Sweep for IdleMap<V> {
    /// Drops the entries that nobody holds and nobody used since the previous sweep.
    fn sweep(&self) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, v| Arc::strong_count(v) > 1 || v.touched().swap(false, Ordering::Relaxed));
        before - map.len()
    }
}

/// Sweeps `cache` every `idle / 2` until it is dropped, so an unused entry lives between
/// `idle / 2` and `idle`.
pub(crate) async fn evict_idle<S: Sweep>(cache: &std::sync::Weak<S>, idle: Duration) {
    let mut tick = tokio::time::interval((idle / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match cache.upgrade() {
            Some(c) => {
                c.sweep();
            }
            None => return,
        }
    }
}
