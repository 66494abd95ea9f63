//! A retry budget: retries may add `ratio` of the requests seen over the last `ttl`, plus
//! `min_per_sec` per second of it, so that retries cannot multiply load on a backend that is
//! already failing (a retry storm) while a quiet route can still retry.
//!
//! The window is a ring of one-second buckets of (requests, retries); a check sums the ring, so
//! the cost is a short uncontended lock and ten additions, paid only by routes that retry.

use std::{sync::Mutex, time::Duration};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_sec: u32,
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// The second (since `start`) that `buckets[head]` counts.
    head_sec: u64,
    head: usize,
    /// (requests, retries) per second.
    buckets: Vec<(u64, u64)>,
}

impl Budget {
    pub fn new(ratio: f64, min_per_sec: u32, ttl: Duration) -> Self {
        let secs = ttl.as_secs().clamp(1, 60) as usize;
        Self {
            ratio: ratio.max(0.0),
            min_per_sec,
            inner: Mutex::new(Window {
                start: Instant::now(),
                head_sec: 0,
                head: 0,
                buckets: vec![(0, 0); secs],
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (u64, u64), &[(u64, u64)]) -> T) -> T {
        let mut w = crate::lock(&self.inner);
        let now_sec = w.start.elapsed().as_secs();
        // Clear the buckets of the seconds that went by.
        let len = w.buckets.len();
        let gap = now_sec.saturating_sub(w.head_sec).min(len as u64) as usize;
        for _ in 0..gap {
            w.head = (w.head + 1) % len;
            let h = w.head;
            w.buckets[h] = (0, 0);
        }
        w.head_sec = now_sec;
        let h = w.head;
        let mut cur = w.buckets[h];
        let out = f(&mut cur, &w.buckets);
        w.buckets[h] = cur;
        out
    }

    /// Counts a request (the first attempt) into the window.
    pub fn deposit(&self) {
        self.with(|cur, _| cur.0 += 1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let (ratio, min) = (self.ratio, self.min_per_sec);
        self.with(|cur, all| {
            let (reqs, retries) = all
                .iter()
                .fold((0u64, 0u64), |(a, b), (r, t)| (a + r, b + t));
            let allowed = (reqs as f64 * ratio) as u64 + u64::from(min) * all.len() as u64;
            if retries < allowed {
                cur.1 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_by_ratio_plus_minimum_and_refill_as_the_window_moves() {
        let b = Budget::new(0.2, 1, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        // 20% of 100 requests + 1/s over the 10 s window.
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 30);
        // Still spent a second later.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!b.withdraw());
        // Once the window has moved past them, requests and retries are forgotten: only the
        // per-second minimum remains.
        tokio::time::advance(Duration::from_secs(10)).await;
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_never_retries() {
        let b = Budget::new(0.0, 0, Duration::from_secs(10));
        b.deposit();
        assert!(!b.withdraw());
    }
}
