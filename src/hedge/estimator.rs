//! The latency estimator behind a percentile hedge delay: a log-linear
//! histogram of atomic counters, O(1) per sample and per read, with a fixed
//! size whatever the traffic.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Sub-buckets per power of two: 8, so a bucket is at most 12.5 % wide.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two covered above the exact range: 1 µs to 2⁴⁰ µs (12 days).
const OCTAVES: usize = 38;
/// Buckets in all: the 8 exact microseconds, then 8 per octave.
pub(crate) const BUCKETS: usize = SUB + OCTAVES * SUB;

/// The bucket of a latency of `us` microseconds.
#[inline]
fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // ≥ SUB_BITS
    let m = ((us >> (e - SUB_BITS)) as usize) & (SUB - 1);
    let i = SUB + (e - SUB_BITS) as usize * SUB + m;
    i.min(BUCKETS - 1)
}

/// The upper edge of bucket `i`, in microseconds: every latency counted in
/// it is below this (a delay read from it errs late, never early).
fn upper_edge_us(i: usize) -> u64 {
    if i < SUB {
        return i as u64 + 1;
    }
    let e = (i - SUB) / SUB + SUB_BITS as usize;
    let m = ((i - SUB) % SUB) as u64;
    (SUB as u64 + m + 1) << (e - SUB_BITS as usize)
}

/// Estimates a quantile of recent latencies.
///
/// Samples go into the open window's histogram. A window closes once it is
/// at least `window` long *and* holds at least `min_samples` samples: its
/// quantile becomes the estimate, and a new window opens. Until the first
/// window closes there is no estimate (and so no hedge).
pub(crate) struct LatencyEstimator {
    quantile: f64,
    min_samples: u32,
    window: Duration,
    origin: Instant,
    counts: Box<[AtomicU32]>,
    samples: AtomicU32,
    /// The open window's start, in nanoseconds since `origin`.
    opened: AtomicU64,
    /// The estimate in microseconds; 0 while there is none.
    estimate_us: AtomicU64,
    closing: AtomicBool,
}

impl LatencyEstimator {
    pub(crate) fn new(quantile: f64, min_samples: u32, window: Duration, now: Instant) -> Self {
        LatencyEstimator {
            quantile,
            min_samples: min_samples.max(1),
            window,
            origin: now,
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            samples: AtomicU32::new(0),
            opened: AtomicU64::new(0),
            estimate_us: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// The estimate: the quantile of the last closed window, if one closed.
    #[inline]
    pub(crate) fn estimate(&self) -> Option<Duration> {
        match self.estimate_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Counts one latency measured at `now`.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        let n = self
            .samples
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < self.min_samples {
            return;
        }
        let at = self.nanos(now);
        let opened = self.opened.load(Ordering::Relaxed);
        if at.saturating_sub(opened) < self.window.as_nanos() as u64 {
            return;
        }
        if self.closing.swap(true, Ordering::Acquire) {
            return; // another thread closes it
        }
        // Another thread may have closed it between the reads above and
        // taking `closing`: the window is judged again, not closed on the
        // few samples recorded since.
        if self.samples.load(Ordering::Relaxed) < self.min_samples
            || at.saturating_sub(self.opened.load(Ordering::Relaxed))
                < self.window.as_nanos() as u64
        {
            self.closing.store(false, Ordering::Release);
            return;
        }
        self.close(at);
        self.closing.store(false, Ordering::Release);
    }

    /// Closes the open window: its quantile becomes the estimate. O(buckets),
    /// once per window.
    fn close(&self, at: u64) {
        let total: u64 = self
            .counts
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum();
        if total == 0 {
            return;
        }
        // The smallest latency with at least `quantile` of the samples at or
        // below it.
        let rank = ((self.quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        let mut found = BUCKETS - 1;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(c.load(Ordering::Relaxed));
            if seen >= rank {
                found = i;
                break;
            }
        }
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
        self.samples.store(0, Ordering::Relaxed);
        self.opened.store(at, Ordering::Relaxed);
        self.estimate_us
            .store(upper_edge_us(found).max(1), Ordering::Relaxed);
    }

    fn nanos(&self, now: Instant) -> u64 {
        crate::clock::nanos_between(self.origin, now)
    }
}

impl std::fmt::Debug for LatencyEstimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyEstimator")
            .field("quantile", &self.quantile)
            .field("estimate", &self.estimate())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_at_most_an_eighth_wide() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            100,
            1_000,
            123_456,
            10_000_000,
            u64::MAX,
        ] {
            let b = bucket(us);
            assert!(b >= last, "bucket of {us} went back");
            last = b;
            if us < (1 << 40) {
                let hi = upper_edge_us(b);
                assert!(hi > us, "{us} µs is not below its bucket's edge {hi}");
                assert!(
                    (hi - us) as f64 <= (us as f64 / 8.0).max(1.0),
                    "bucket of {us} µs too wide: edge {hi}"
                );
            }
        }
    }

    #[test]
    fn no_estimate_before_a_full_window_then_the_quantile() {
        let t0 = Instant::now();
        let e = LatencyEstimator::new(0.95, 20, Duration::from_secs(1), t0);
        // 19 samples over 2 s: too few.
        for i in 0..19u64 {
            e.record(
                Duration::from_millis(10),
                t0 + Duration::from_millis(100 * i),
            );
        }
        assert_eq!(e.estimate(), None);
        // 100 samples, 1..=100 ms, ending after the window: p95 ≈ 95 ms.
        let e = LatencyEstimator::new(0.95, 20, Duration::from_secs(1), t0);
        for ms in 1..=100u64 {
            e.record(
                Duration::from_millis(ms),
                t0 + Duration::from_millis(10 * ms + 1),
            );
        }
        let p95 = e.estimate().expect("an estimate after 1 s and 100 samples");
        assert!(
            p95 >= Duration::from_millis(95) && p95 <= Duration::from_millis(108),
            "p95 of 1..=100 ms read {p95:?}"
        );
    }

    #[test]
    fn the_estimate_follows_the_latest_window() {
        let t0 = Instant::now();
        let e = LatencyEstimator::new(0.5, 10, Duration::from_secs(1), t0);
        let mut t = t0;
        for _ in 0..50 {
            t += Duration::from_millis(30);
            e.record(Duration::from_millis(10), t);
        }
        let before = e.estimate().unwrap();
        assert!(before <= Duration::from_millis(12), "{before:?}");
        for _ in 0..50 {
            t += Duration::from_millis(30);
            e.record(Duration::from_millis(200), t);
        }
        let after = e.estimate().unwrap();
        assert!(after >= Duration::from_millis(200), "{after:?}");
    }
}
