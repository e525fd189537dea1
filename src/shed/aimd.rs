//! AIMD: additive increase, multiplicative decrease (Netflix `AIMDLimit`).

use std::time::Duration;

use super::algorithm::{LimitAlgorithm, WindowSample};
use crate::error::ConfigError;

/// Additive-increase / multiplicative-decrease concurrency limit, with the
/// formula and defaults of Netflix concurrency-limits' `AIMDLimit`.
///
/// For each window sample:
/// - if a call was dropped, or the window's RTT is above `timeout`:
///   `limit = floor(limit × backoff_ratio)`;
/// - else if `max_inflight × 2 ≥ limit` (the limit is actually used):
///   `limit = limit + 1`;
/// - then the limit is clamped to `min_limit..=max_limit`.
///
/// Defaults: initial 20, min 20, max 200, backoff ratio 0.9, timeout 5 s.
///
/// ```
/// use std::time::Duration;
/// use seawall::shed::{Aimd, LimitAlgorithm, WindowSample};
///
/// let mut aimd = Aimd::builder().initial_limit(10).min_limit(1).build().unwrap();
/// let ok = WindowSample::new(Duration::from_millis(10), 10, 0);
/// assert_eq!(aimd.update(&ok), 11);
/// let dropped = WindowSample::new(Duration::from_millis(10), 11, 1);
/// assert_eq!(aimd.update(&dropped), 9); // floor(11 × 0.9)
/// ```
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: usize,
    min_limit: usize,
    max_limit: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        AimdBuilder::default().build_unchecked()
    }
}

impl Aimd {
    /// A builder with the defaults.
    pub fn builder() -> AimdBuilder {
        AimdBuilder::default()
    }
}

impl LimitAlgorithm for Aimd {
    fn limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &WindowSample) -> usize {
        let mut limit = self.limit;
        if sample.did_drop() || sample.rtt() > self.timeout {
            limit = (limit as f64 * self.backoff_ratio) as usize;
        } else if sample.max_inflight().saturating_mul(2) >= limit {
            limit = limit.saturating_add(1);
        }
        self.limit = limit.clamp(self.min_limit, self.max_limit);
        self.limit
    }

    fn bounds(&self) -> Option<(usize, usize)> {
        Some((self.min_limit, self.max_limit))
    }

    fn set_bounds(&mut self, min: Option<usize>, max: Option<usize>) -> Result<usize, ConfigError> {
        (self.min_limit, self.max_limit) = new_bounds((self.min_limit, self.max_limit), min, max)?;
        self.limit = self.limit.clamp(self.min_limit, self.max_limit);
        Ok(self.limit)
    }
}

/// Builder for [`Aimd`]; see there for the defaults.
#[derive(Debug, Clone)]
pub struct AimdBuilder {
    initial_limit: usize,
    min_limit: usize,
    max_limit: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Default for AimdBuilder {
    fn default() -> Self {
        let (initial_limit, min_limit, max_limit) = Self::DEFAULT_LIMITS;
        AimdBuilder {
            initial_limit,
            min_limit,
            max_limit,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AimdBuilder {
    limit_setters!(20, 20, 200);

    /// The factor applied on a drop (default 0.9; in `0.5..1`).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// A window RTT above this counts as a drop (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn build_unchecked(self) -> Aimd {
        Aimd {
            limit: self.initial_limit.clamp(self.min_limit, self.max_limit),
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            backoff_ratio: self.backoff_ratio,
            timeout: self.timeout,
        }
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        validate_limits(self.initial_limit, self.min_limit, self.max_limit)?;
        if !(0.5..1.0).contains(&self.backoff_ratio) {
            return Err(ConfigError::new(
                "adaptive_limit",
                format!(
                    "aimd backoff_ratio must be in 0.5..1, got {}",
                    self.backoff_ratio
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "adaptive_limit",
                "aimd timeout must be above zero, got 0",
            ));
        }
        Ok(self.build_unchecked())
    }
}

/// The `initial_limit`, `min_limit` and `max_limit` setters of a limit
/// algorithm's builder, documented with its defaults.
macro_rules! limit_setters {
    ($initial:literal, $min:literal, $max:literal) => {
        /// The defaults of the initial, lowest and highest limits, stated
        /// once: the builder starts from them and the setters' docs quote them.
        const DEFAULT_LIMITS: (usize, usize, usize) = ($initial, $min, $max);

        #[doc = concat!("The limit before the first window (default ", stringify!($initial), ").")]
        pub fn initial_limit(mut self, limit: usize) -> Self {
            self.initial_limit = limit;
            self
        }

        #[doc = concat!("The lowest limit (default ", stringify!($min), "; at least 1).")]
        pub fn min_limit(mut self, limit: usize) -> Self {
            self.min_limit = limit;
            self
        }

        #[doc = concat!("The highest limit (default ", stringify!($max), ").")]
        pub fn max_limit(mut self, limit: usize) -> Self {
            self.max_limit = limit;
            self
        }
    };
}
pub(crate) use limit_setters;

/// New bounds from the current ones and a change (`None` keeps one),
/// checked as the builders check them.
pub(crate) fn new_bounds(
    now: (usize, usize),
    min: Option<usize>,
    max: Option<usize>,
) -> Result<(usize, usize), ConfigError> {
    let (min, max) = (min.unwrap_or(now.0), max.unwrap_or(now.1));
    validate_limits(min, min, max)?;
    Ok((min, max))
}

pub(crate) fn validate_limits(initial: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if min == 0 {
        return Err(ConfigError::new(
            "adaptive_limit",
            "min_limit must be at least 1, got 0",
        ));
    }
    if max < min {
        return Err(ConfigError::new(
            "adaptive_limit",
            format!("max_limit ({max}) must be at least min_limit ({min})"),
        ));
    }
    if !(min..=max).contains(&initial) {
        return Err(ConfigError::new(
            "adaptive_limit",
            format!(
                "initial_limit must be in min_limit..=max_limit ({min}..={max}), got {initial}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every built-in algorithm takes new bounds, clamps its limit into
    /// them and refuses bounds out of order, changing nothing.
    #[test]
    fn bounds_change_and_clamp_the_limit() {
        use super::super::{Gradient2, QueueDelay};
        let mut algorithms: Vec<Box<dyn LimitAlgorithm>> = vec![
            Box::new(Aimd::default()),
            Box::new(Gradient2::default()),
            Box::new(QueueDelay::default()),
        ];
        for a in &mut algorithms {
            let before = a.limit();
            assert!(a.set_bounds(Some(0), None).is_err());
            assert!(a.set_bounds(Some(10), Some(5)).is_err());
            assert_eq!(a.limit(), before, "{a:?}");
            assert_eq!(a.set_bounds(Some(1), Some(5)).unwrap(), 5, "{a:?}");
            assert_eq!(a.limit(), 5);
            // One bound kept: the maximum stays 5.
            assert_eq!(a.set_bounds(Some(2), None).unwrap(), 5, "{a:?}");
            assert!(a.set_bounds(Some(6), None).is_err());
            assert_eq!(a.set_bounds(Some(300), Some(400)).unwrap(), 300, "{a:?}");
        }
    }

    #[test]
    fn defaults_match_netflix() {
        let a = Aimd::default();
        assert_eq!(a.limit(), 20);
        assert_eq!((a.min_limit, a.max_limit), (20, 200));
        assert_eq!(a.backoff_ratio, 0.9);
        assert_eq!(a.timeout, Duration::from_secs(5));
    }

    #[test]
    fn grows_by_one_when_used_and_backs_off_on_drop() {
        let mut a = Aimd::builder().min_limit(1).build().unwrap();
        // used: inflight 10 × 2 >= 20
        assert_eq!(a.update(&WindowSample::new(ms(10), 10, 0)), 21);
        assert_eq!(a.update(&WindowSample::new(ms(10), 11, 0)), 22);
        // app-limited: 10 × 2 < 22 → unchanged
        assert_eq!(a.update(&WindowSample::new(ms(10), 10, 0)), 22);
        // drop: floor(22 × 0.9) = 19
        assert_eq!(a.update(&WindowSample::new(ms(10), 22, 1)), 19);
        // rtt above the 5 s timeout counts as a drop: floor(19 × 0.9) = 17
        assert_eq!(a.update(&WindowSample::new(ms(5001), 19, 0)), 17);
        // exactly the timeout is not above it: grows
        assert_eq!(a.update(&WindowSample::new(ms(5000), 17, 0)), 18);
    }

    #[test]
    fn sequence_of_drops_stops_at_min() {
        let mut a = Aimd::builder()
            .initial_limit(100)
            .min_limit(50)
            .build()
            .unwrap();
        let drop = WindowSample::new(ms(1), 100, 3);
        let seq: Vec<usize> = (0..8).map(|_| a.update(&drop)).collect();
        assert_eq!(seq, vec![90, 81, 72, 64, 57, 51, 50, 50]);
    }

    #[test]
    fn clamps_at_max() {
        let mut a = Aimd::builder()
            .initial_limit(199)
            .max_limit(200)
            .build()
            .unwrap();
        let used = WindowSample::new(ms(1), 200, 0);
        assert_eq!(a.update(&used), 200);
        assert_eq!(a.update(&used), 200);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(Aimd::builder().min_limit(0).build().is_err());
        assert!(Aimd::builder().max_limit(10).build().is_err()); // initial 20 > max
        assert!(Aimd::builder().backoff_ratio(1.0).build().is_err());
        assert!(Aimd::builder().backoff_ratio(f64::NAN).build().is_err());
        assert!(Aimd::builder().timeout(Duration::ZERO).build().is_err());
        let e = Aimd::builder().initial_limit(5).build().unwrap_err();
        assert_eq!(
            e.message(),
            "initial_limit must be in min_limit..=max_limit (20..=200), got 5"
        );
    }
}
