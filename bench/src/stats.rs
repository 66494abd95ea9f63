//! Latency summaries from raw samples (microseconds).

/// Percentiles of a set of latency samples, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Summary {
    /// Sorts `samples` in place and reads the percentiles off it (nearest rank).
    pub fn from_samples(samples: &mut [u32]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Self {
            count: samples.len(),
            p50: u64::from(nearest_rank(samples, 500)),
            p99: u64::from(nearest_rank(samples, 990)),
            p999: u64::from(nearest_rank(samples, 999)),
            max: u64::from(samples[samples.len() - 1]),
        })
    }
}

/// The nearest-rank quantile of sorted, non-empty `sorted`, `per_mille` in thousandths (999 is
/// p99.9). Integer arithmetic: floating point would turn 0.999 * 1000 into 1000.0000000000001.
fn nearest_rank(sorted: &[u32], per_mille: usize) -> u32 {
    let n = sorted.len();
    // The smallest value such that at least per_mille/1000 of the samples are <= it.
    let rank = (per_mille * n).div_ceil(1000);
    sorted[rank.clamp(1, n) - 1]
}

/// A duration as whole microseconds, saturating at `u32::MAX` (about 71 minutes).
pub fn micros_u32(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u32> = (1..=1000).rev().collect();
        let s = Summary::from_samples(&mut v).expect("non-empty");
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert_eq!(s.max, 1000);
    }

    #[test]
    fn single_sample() {
        let s = Summary::from_samples(&mut [7]).expect("non-empty");
        assert_eq!((s.p50, s.p99, s.p999, s.max), (7, 7, 7, 7));
    }

    #[test]
    fn empty_is_none() {
        assert!(Summary::from_samples(&mut []).is_none());
    }
}
