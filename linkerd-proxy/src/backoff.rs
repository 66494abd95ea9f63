//! Exponential backoff with jitter: the one schedule behind every wait-and-try-again in the
//! proxy (control-plane streams reconnecting, an endpoint that failed to connect, failure
//! accrual's ejections, a route's retries).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    /// The share of each wait drawn at random (0: none, 0.5: between half and all of it).
    pub jitter: f64,
}

impl Backoff {
    /// How control-plane streams reconnect: 100 ms doubling to 10 s, each wait between half
    /// and all of that, so that proxies that lost the service together come back apart.
    pub const RECONNECT: Backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(10),
        jitter: 0.5,
    };

    /// The wait before try number `n` after the first (0-based): `min × 2ⁿ` capped at `max`,
    /// less a random share of up to `jitter` of it.
    pub fn delay(&self, n: u32) -> Duration {
        let base = self.min.saturating_mul(1u32 << n.min(16)).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_within_the_jitter() {
        let b = Backoff::RECONNECT;
        for (n, base) in [(0, 100), (1, 200), (3, 800), (7, 10_000), (40, 10_000)] {
            let d = b.delay(n).as_millis() as u64;
            assert!(base / 2 <= d && d <= base, "try {n}: {d} ms");
        }
        let fixed = Backoff {
            jitter: 0.0,
            ..Backoff::RECONNECT
        };
        assert_eq!(fixed.delay(2), Duration::from_millis(400));
    }
}
