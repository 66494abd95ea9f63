//! Load shedding: a bound on the requests a proxy direction has in flight.
//!
//! Each request takes a [`Permit`] before any work is done for it and holds it until its
//! response has ended (the permit travels in the response body's recorder). When the bound is
//! reached, a request is refused at once, before it costs memory or reaches the application:
//! `503` with `l5d-proxy-error` on HTTP/1, `REFUSED_STREAM` on HTTP/2 (which a client may
//! always retry, since nothing of the request was processed).

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

#[derive(Debug)]
pub struct InFlight {
    current: AtomicUsize,
    max: usize,
    /// Requests refused because the bound was reached.
    shed: AtomicU64,
}

/// One request in flight.
#[derive(Debug)]
pub struct Permit(Arc<InFlight>);

impl InFlight {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            current: AtomicUsize::new(0),
            max,
            shed: AtomicU64::new(0),
        })
    }

    /// A permit, or `None` (counted) when `max` requests are in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        // One atomic add on the common path; past the bound it is undone.
        if self.current.fetch_add(1, Ordering::Relaxed) < self.max {
            return Some(Permit(self.clone()));
        }
        self.current.fetch_sub(1, Ordering::Relaxed);
        self.shed.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_returned() {
        let f = InFlight::new(2);
        let a = f.try_acquire().unwrap();
        let b = f.try_acquire().unwrap();
        assert!(f.try_acquire().is_none());
        assert_eq!((f.current(), f.shed()), (2, 1));
        drop(a);
        let c = f.try_acquire().unwrap();
        drop((b, c));
        assert_eq!(f.current(), 0);
    }
}
