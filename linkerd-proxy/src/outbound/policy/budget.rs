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

/// Properties over any sequence of requests, retries and pauses, checked against a model: a
/// plain list of what happened when, summed over the last `ttl` whole seconds.
#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// This many requests.
        Deposit(u8),
        /// This many retries asked for.
        Withdraw(u8),
        /// Time passes (milliseconds).
        Wait(u32),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            3 => (1u8..=30).prop_map(Op::Deposit),
            3 => (1u8..=30).prop_map(Op::Withdraw),
            2 => (0u32..1_500).prop_map(Op::Wait),
            1 => (1_500u32..70_000).prop_map(Op::Wait),
        ];
        proptest::collection::vec(op, 0..120)
    }

    /// What was granted when: (second since the budget's start, requests, retries).
    #[derive(Default)]
    struct Model {
        events: Vec<(u64, u64, u64)>,
    }

    impl Model {
        /// Requests and retries in the window that ends in second `now` and spans `len`.
        fn window(&self, now: u64, len: u64) -> (u64, u64) {
            self.events
                .iter()
                .filter(|(s, ..)| s + len > now)
                .fold((0, 0), |(r, t), (_, dr, dt)| (r + dr, t + dt))
        }
    }

    /// Runs `ops` on a budget in paused time, checking each retry against the model.
    fn run(ratio: f64, min_per_sec: u32, ttl: Duration, ops: &[Op]) -> Result<(), TestCaseError> {
        let rt = crate::paused_runtime();
        rt.block_on(async {
            let budget = Budget::new(ratio, min_per_sec, ttl);
            let len = ttl.as_secs().clamp(1, 60);
            let mut model = Model::default();
            let mut elapsed = Duration::ZERO;
            for op in ops {
                let now = elapsed.as_secs();
                match *op {
                    Op::Deposit(n) => {
                        for _ in 0..n {
                            budget.deposit();
                        }
                        model.events.push((now, u64::from(n), 0));
                    }
                    Op::Withdraw(n) => {
                        for _ in 0..n {
                            let (reqs, retries) = model.window(now, len);
                            let allowed = reqs as f64 * ratio.max(0.0) + f64::from(min_per_sec) * len as f64;
                            let granted = budget.withdraw();
                            // Never more retries in the window than the budget allows.
                            prop_assert!(
                                !granted || (retries + 1) as f64 <= allowed,
                                "retry {} granted with {reqs} requests in the window (allowed {allowed})",
                                retries + 1,
                            );
                            // And the budget is used up: a retry within it is granted.
                            prop_assert_eq!(
                                granted,
                                retries < (reqs as f64 * ratio.max(0.0)) as u64 + u64::from(min_per_sec) * len,
                                "at {:?} with {} requests and {} retries in the window",
                                elapsed,
                                reqs,
                                retries
                            );
                            if granted {
                                model.events.push((now, 0, 1));
                            }
                        }
                    }
                    Op::Wait(ms) => {
                        let d = Duration::from_millis(u64::from(ms));
                        tokio::time::advance(d).await;
                        elapsed += d;
                    }
                }
            }
            Ok(())
        })
    }

    proptest! {
        #[test]
        fn retries_stay_within_ratio_times_requests_plus_the_minimum(
            ratio in 0.0f64..2.0,
            min_per_sec in 0u32..5,
            ttl_ms in 0u64..70_000,
            ops in ops(),
        ) {
            run(ratio, min_per_sec, Duration::from_millis(ttl_ms), &ops)?;
        }

        #[test]
        fn a_zero_budget_never_allows_a_retry(
            ratio in prop_oneof![Just(0.0), -5.0f64..0.0],
            ttl_ms in 0u64..70_000,
            ops in ops(),
        ) {
            let rt = crate::paused_runtime();
            rt.block_on(async {
                let budget = Budget::new(ratio, 0, Duration::from_millis(ttl_ms));
                for op in &ops {
                    match *op {
                        Op::Deposit(n) => (0..n).for_each(|_| budget.deposit()),
                        Op::Withdraw(n) => {
                            for _ in 0..n {
                                prop_assert!(!budget.withdraw());
                            }
                        }
                        Op::Wait(ms) => {
                            tokio::time::advance(Duration::from_millis(u64::from(ms))).await;
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}
