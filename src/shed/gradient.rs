//! Gradient2: a latency-gradient concurrency limit (Netflix `Gradient2Limit`).

use super::aimd::validate_limits;
use super::algorithm::{LimitAlgorithm, WindowSample};
use crate::error::ConfigError;

/// An algorithm for [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer) (the
/// default is [`QueueDelay`](super::QueueDelay)): compares the short-term RTT (this window's average) with a long-term
/// exponential average, with the formula and defaults of Netflix
/// concurrency-limits' `Gradient2Limit`.
///
/// For each window sample (`short` = the window's RTT):
/// 1. `long` = exponential moving average of `short` over `long_window`
///    samples (600; the first 10 are a plain average);
/// 2. if `long / short > 2`, the long average decays by ×0.95 (recovery after
///    a long overload);
/// 3. if `max_inflight < limit / 2` the service is app-limited: the limit
///    stays put;
/// 4. `gradient = clamp(rtt_tolerance × long / short, 0.5, 1.0)`;
///    `new = limit × gradient + queue_size`;
///    `limit = limit × (1 − smoothing) + new × smoothing`, clamped to
///    `min_limit..=max_limit`.
///
/// The limit is kept as a real number; the layer uses its integer part.
/// While latency stays flat the limit grows by `smoothing × queue_size`
/// (0.8 with the defaults) per window.
///
/// Its limit does not follow the backend's own concurrency: behind a
/// backend offered three times its capacity (the harness of `tests/shed`,
/// limits free from 1 to 1000) it settled at 44 for 4 slots and at 66 for
/// 256: a queue of 40 in front of the small backend, the large one kept at
/// 22 % of its capacity. That is why it is no longer the default; choose it
/// to match a service that already runs Netflix's limiter with these
/// settings.
///
/// Defaults: initial 20, min 20, max 200, smoothing 0.2, rtt tolerance 1.5,
/// long window 600, queue size 4.
///
/// ```
/// use std::time::Duration;
/// use seawall::shed::{Gradient2, LimitAlgorithm, WindowSample};
///
/// let mut g = Gradient2::default();
/// let flat = WindowSample::new(Duration::from_millis(10), 20, 0);
/// g.update(&flat); // 20.8
/// g.update(&flat); // 21.6
/// assert_eq!(g.limit(), 21);
/// ```
#[derive(Debug, Clone)]
pub struct Gradient2 {
    estimated: f64,
    min_limit: usize,
    max_limit: usize,
    smoothing: f64,
    rtt_tolerance: f64,
    queue_size: usize,
    long_rtt: ExpAvg,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2Builder::default().build_unchecked()
    }
}

impl Gradient2 {
    /// A builder with the defaults.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder::default()
    }

    /// The limit as the real number the algorithm keeps.
    pub fn estimated_limit(&self) -> f64 {
        self.estimated
    }

    /// The long-term RTT average, in seconds (0 before the first sample).
    pub fn long_rtt_secs(&self) -> f64 {
        self.long_rtt.value / 1e9
    }
}

impl LimitAlgorithm for Gradient2 {
    fn limit(&self) -> usize {
        self.estimated as usize
    }

    fn update(&mut self, sample: &WindowSample) -> usize {
        let short = sample.rtt().as_nanos() as f64;
        if short <= 0.0 {
            // A window of drops only: no RTT to learn from.
            return self.limit();
        }
        let long = self.long_rtt.add(short);
        if long / short > 2.0 {
            self.long_rtt.value *= 0.95;
        }
        if (sample.max_inflight() as f64) < self.estimated / 2.0 {
            return self.limit();
        }
        let gradient = (self.rtt_tolerance * long / short).clamp(0.5, 1.0);
        let new = self.estimated * gradient + self.queue_size as f64;
        let new = self.estimated * (1.0 - self.smoothing) + new * self.smoothing;
        self.estimated = new.clamp(self.min_limit as f64, self.max_limit as f64);
        self.limit()
    }

    fn bounds(&self) -> Option<(usize, usize)> {
        Some((self.min_limit, self.max_limit))
    }

    fn set_bounds(&mut self, min: Option<usize>, max: Option<usize>) -> Result<usize, ConfigError> {
        (self.min_limit, self.max_limit) =
            super::aimd::new_bounds((self.min_limit, self.max_limit), min, max)?;
        self.estimated = self
            .estimated
            .clamp(self.min_limit as f64, self.max_limit as f64);
        Ok(self.limit())
    }
}

/// Exponential moving average with a warm-up: plain average of the first
/// `warmup` samples, then `value += (sample − value) × 2 / (window + 1)`.
#[derive(Debug, Clone)]
struct ExpAvg {
    value: f64,
    sum: f64,
    count: u32,
    warmup: u32,
    factor: f64,
}

impl ExpAvg {
    fn new(window: u32, warmup: u32) -> Self {
        ExpAvg {
            value: 0.0,
            sum: 0.0,
            count: 0,
            warmup,
            factor: 2.0 / (f64::from(window) + 1.0),
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }
}

/// Builder for [`Gradient2`]; see there for the defaults.
#[derive(Debug, Clone)]
pub struct Gradient2Builder {
    initial_limit: usize,
    min_limit: usize,
    max_limit: usize,
    smoothing: f64,
    rtt_tolerance: f64,
    long_window: u32,
    queue_size: usize,
}

impl Default for Gradient2Builder {
    fn default() -> Self {
        let (initial_limit, min_limit, max_limit) = Self::DEFAULT_LIMITS;
        Gradient2Builder {
            initial_limit,
            min_limit,
            max_limit,
            smoothing: 0.2,
            rtt_tolerance: 1.5,
            long_window: 600,
            queue_size: 4,
        }
    }
}

impl Gradient2Builder {
    super::aimd::limit_setters!(20, 20, 200);

    /// Weight of each new estimate (default 0.2; in `(0, 1]`).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// How much slower than the long-term RTT the short-term RTT may be
    /// before the limit shrinks (default 1.5; at least 1).
    pub fn rtt_tolerance(mut self, tolerance: f64) -> Self {
        self.rtt_tolerance = tolerance;
        self
    }

    /// Samples in the long-term RTT average (default 600; at least 1).
    pub fn long_window(mut self, samples: u32) -> Self {
        self.long_window = samples;
        self
    }

    /// Headroom added to the limit each update, letting it probe upwards
    /// (default 4).
    pub fn queue_size(mut self, queue_size: usize) -> Self {
        self.queue_size = queue_size;
        self
    }

    fn build_unchecked(self) -> Gradient2 {
        Gradient2 {
            estimated: self.initial_limit.clamp(self.min_limit, self.max_limit) as f64,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            smoothing: self.smoothing,
            rtt_tolerance: self.rtt_tolerance,
            queue_size: self.queue_size,
            long_rtt: ExpAvg::new(self.long_window.max(1), 10),
        }
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Gradient2, ConfigError> {
        validate_limits(self.initial_limit, self.min_limit, self.max_limit)?;
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(ConfigError::new(
                "adaptive_limit",
                format!(
                    "gradient2 smoothing must be in (0, 1], got {}",
                    self.smoothing
                ),
            ));
        }
        if !(self.rtt_tolerance >= 1.0 && self.rtt_tolerance.is_finite()) {
            return Err(ConfigError::new(
                "adaptive_limit",
                format!(
                    "gradient2 rtt_tolerance must be a finite number >= 1, got {}",
                    self.rtt_tolerance
                ),
            ));
        }
        if self.long_window == 0 {
            return Err(ConfigError::new(
                "adaptive_limit",
                "gradient2 long_window must be at least 1, got 0",
            ));
        }
        Ok(self.build_unchecked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn flat_latency_grows_by_smoothing_times_queue_size() {
        let mut g = Gradient2::default();
        assert_eq!(g.limit(), 20);
        let flat = WindowSample::new(ms(10), 20, 0);
        let seq: Vec<usize> = (0..6).map(|_| g.update(&flat)).collect();
        // 20.8, 21.6, 22.4, 23.2, 24.0, 24.8
        assert_eq!(seq, vec![20, 21, 22, 23, 24, 24]);
        assert!(close(g.estimated_limit(), 24.8));
        assert!(close(g.long_rtt_secs(), 0.010));
    }

    #[test]
    fn latency_doubling_shrinks_the_limit() {
        let mut g = Gradient2::builder().initial_limit(100).build().unwrap();
        // 10 warm-up windows at 10 ms: limit grows 100 → 108.
        for _ in 0..10 {
            g.update(&WindowSample::new(ms(10), 100, 0));
        }
        assert!(close(g.estimated_limit(), 108.0));
        // Now 40 ms: long = 10 × (1 − 2/601) + 40 × 2/601 ms,
        // gradient = max(0.5, 1.5 × long / 40) = 0.5 → new = 108 × 0.5 + 4 = 58,
        // limit = 108 × 0.8 + 58 × 0.2 = 98.
        assert_eq!(g.update(&WindowSample::new(ms(40), 108, 0)), 98);
        assert!(close(g.estimated_limit(), 98.0));
        // 20 ms: long ≈ 10.2 ms, gradient = 1.5 × 10.2 / 20 ≈ 0.765.
        let long = g.long_rtt.value * (1.0 - 2.0 / 601.0) + 20e6 * 2.0 / 601.0;
        let gradient = 1.5 * long / 20e6;
        let expect = 98.0 * 0.8 + (98.0 * gradient + 4.0) * 0.2;
        assert_eq!(g.update(&WindowSample::new(ms(20), 98, 0)), expect as usize);
        assert_eq!(expect as usize, 94);
    }

    #[test]
    fn app_limited_does_not_move() {
        let mut g = Gradient2::builder().initial_limit(100).build().unwrap();
        // 49 in flight < 100 / 2.
        for _ in 0..5 {
            assert_eq!(g.update(&WindowSample::new(ms(10), 49, 0)), 100);
        }
        // 50 is enough to grow.
        assert_eq!(g.update(&WindowSample::new(ms(10), 50, 0)), 100);
        assert!(close(g.estimated_limit(), 100.8));
    }

    #[test]
    fn clamps_and_ignores_rttless_windows() {
        let mut g = Gradient2::builder().initial_limit(200).build().unwrap();
        assert_eq!(g.update(&WindowSample::new(ms(10), 200, 0)), 200);
        assert_eq!(g.update(&WindowSample::new(Duration::ZERO, 200, 5)), 200);
        let mut g = Gradient2::default();
        for _ in 0..10 {
            g.update(&WindowSample::new(ms(10), 200, 0));
        }
        for _ in 0..50 {
            g.update(&WindowSample::new(ms(1000), 200, 0));
        }
        assert_eq!(g.limit(), 20);
    }

    #[test]
    fn long_rtt_decays_after_long_overload() {
        let mut g = Gradient2::default();
        for _ in 0..10 {
            g.update(&WindowSample::new(ms(100), 20, 0));
        }
        // short 10 ms, long ≈ 99.7 ms → ratio > 2 → long × 0.95.
        g.update(&WindowSample::new(ms(10), 20, 0));
        let expect = (100e6 * (1.0 - 2.0 / 601.0) + 10e6 * 2.0 / 601.0) * 0.95;
        assert!(close(g.long_rtt.value, expect));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(Gradient2::builder().smoothing(0.0).build().is_err());
        assert!(Gradient2::builder().smoothing(1.5).build().is_err());
        assert!(Gradient2::builder().rtt_tolerance(0.9).build().is_err());
        assert!(Gradient2::builder().long_window(0).build().is_err());
        assert!(Gradient2::builder().min_limit(0).build().is_err());
        assert!(Gradient2::builder().build().is_ok());
    }
}
