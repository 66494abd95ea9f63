//! Load shedding: a bound on the requests a proxy direction has in flight, and the requests of
//! one server connection.
//!
//! Each request takes its place ([`ConnRequests::start`]) before any work is done for it and
//! holds it ([`Held`]) until its response has ended (the place travels in the response body's
//! recorder). When the direction's bound is reached, a request is refused at once, before it
//! costs memory or reaches the application: `503` with `l5d-proxy-error` on HTTP/1,
//! `REFUSED_STREAM` on HTTP/2 (which a client may always retry, since nothing of the request
//! was processed). The same place tells the HTTP/1 header-read timeout whether a request is in
//! progress or a head is being read (`header_timeout.rs`).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};

/// One direction's requests in flight, and its bound.
#[derive(Debug)]
pub struct InFlight {
    current: AtomicUsize,
    max: usize,
    /// Requests refused because the bound was reached.
    shed: AtomicU64,
}

impl InFlight {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            current: AtomicUsize::new(0),
            max,
            shed: AtomicU64::new(0),
        })
    }

    /// Takes a place, or counts a refusal when `max` requests are in flight.
    fn try_take(&self) -> bool {
        // One atomic add on the common path; past the bound it is undone.
        if self.current.fetch_add(1, Ordering::Relaxed) < self.max {
            return true;
        }
        self.current.fetch_sub(1, Ordering::Relaxed);
        self.shed.fetch_add(1, Ordering::Relaxed);
        false
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

/// In `ConnRequests::active`: the connection was upgraded and carries opaque bytes now.
const UPGRADED: u32 = u32::MAX;

/// The requests of one server connection.
#[derive(Debug)]
pub(crate) struct ConnRequests {
    in_flight: Arc<InFlight>,
    /// Requests whose responses have not ended, or [`UPGRADED`].
    active: AtomicU32,
    /// Heads completed so far (which head a header-read timer was armed for).
    heads: AtomicU64,
    /// Bytes of the next head have been read (HTTP/1). A new connection starts with the bytes
    /// detection read.
    in_head: AtomicBool,
}

/// One request's place: in its direction's bound and among its connection's requests. Dropped
/// when its response has ended. One pointer, as it rides in every response body.
#[derive(Debug)]
pub struct Held(Arc<ConnRequests>);

impl ConnRequests {
    pub(crate) fn new(in_flight: Arc<InFlight>) -> Arc<Self> {
        Arc::new(Self {
            in_flight,
            active: AtomicU32::new(0),
            heads: AtomicU64::new(0),
            in_head: AtomicBool::new(true),
        })
    }

    /// A request whose head has been read: its place, or `None` (counted) when the direction
    /// has its maximum in flight. Either way the head is complete.
    pub(crate) fn start(self: &Arc<Self>) -> Option<Held> {
        self.in_head.store(false, Ordering::Relaxed);
        self.heads.fetch_add(1, Ordering::Relaxed);
        if !self.in_flight.try_take() {
            return None;
        }
        let _ = self
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                (a != UPGRADED).then_some(a + 1)
            });
        Some(Held(self.clone()))
    }

    /// Called after each read of an HTTP/1 connection (`got`: bytes arrived). Returns the head
    /// being read, if one is: no request in progress and bytes of a next head seen.
    pub(super) fn after_read(&self, got: bool) -> Option<u64> {
        if self.active.load(Ordering::Relaxed) != 0 {
            return None;
        }
        if got {
            self.in_head.store(true, Ordering::Relaxed);
        } else if !self.in_head.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.heads.load(Ordering::Relaxed))
    }
}

impl Held {
    /// The connection this request arrived on now carries an upgraded protocol (`101`,
    /// `CONNECT`): its reads are no longer heads.
    pub fn upgraded(&self) {
        self.0.active.store(UPGRADED, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let c = &self.0;
        c.in_flight.current.fetch_sub(1, Ordering::Relaxed);
        let _ = c
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                (a != UPGRADED && a > 0).then(|| a - 1)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_direction_and_returned() {
        let f = InFlight::new(2);
        let (a, b) = (ConnRequests::new(f.clone()), ConnRequests::new(f.clone()));
        let x = a.start().unwrap();
        let y = b.start().unwrap();
        assert!(a.start().is_none());
        assert_eq!((f.current(), f.shed()), (2, 1));
        drop(x);
        let z = a.start().unwrap();
        drop((y, z));
        assert_eq!(f.current(), 0);
        // An upgraded connection's place is returned; the connection stays upgraded.
        let u = a.start().unwrap();
        u.upgraded();
        drop(u);
        assert_eq!(f.current(), 0);
        assert_eq!(a.after_read(true), None);
    }
}
