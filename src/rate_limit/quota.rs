use std::time::Duration;

use crate::error::ConfigError;

/// How many requests a limit admits: a burst, refilled one cell at a time at a
/// steady rate (GCRA, the generic cell rate algorithm, as in governor).
///
/// `Quota::per_minute(100)` admits a burst of 100 requests, then one every
/// 600 ms; the burst refills completely within a minute of idleness. The
/// *window* of a quota is `burst × period`; the `RateLimit-Policy` header
/// describes it in whole seconds, as
/// [`headers::policy`](crate::rate_limit::headers::policy) explains.
///
/// Nonsense (zero requests, zero period, zero burst) is refused when the layer
/// is built.
///
/// ```
/// use std::time::Duration;
/// use seawall::rate_limit::Quota;
///
/// let q = Quota::per_minute(100);
/// assert_eq!(q.period(), Duration::from_millis(600));
/// assert_eq!(q.burst_size(), 100);
/// assert_eq!(q.window(), Duration::from_secs(60));
///
/// // 10 per second on average, bursts of at most 5:
/// let q = Quota::per_second(10).burst(5);
/// assert_eq!(q.period(), Duration::from_millis(100));
/// assert_eq!(q.window(), Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    period: Duration,
    burst: u32,
}

impl Quota {
    /// `n` requests per `window`, in a burst of up to `n`.
    pub fn new(n: u32, window: Duration) -> Quota {
        let period = if n == 0 { Duration::ZERO } else { window / n };
        Quota { period, burst: n }
    }

    /// `n` requests per second, in a burst of up to `n`.
    pub fn per_second(n: u32) -> Quota {
        Quota::new(n, Duration::from_secs(1))
    }

    /// `n` requests per minute, in a burst of up to `n`.
    pub fn per_minute(n: u32) -> Quota {
        Quota::new(n, Duration::from_secs(60))
    }

    /// `n` requests per hour, in a burst of up to `n`.
    pub fn per_hour(n: u32) -> Quota {
        Quota::new(n, Duration::from_secs(3600))
    }

    /// One request every `period`, in a burst of 1 (set a burst with [`Quota::burst`]).
    pub fn with_period(period: Duration) -> Quota {
        Quota { period, burst: 1 }
    }

    /// Sets the largest burst, keeping the rate.
    pub fn burst(self, burst: u32) -> Quota {
        Quota { burst, ..self }
    }

    /// The time one cell takes to refill (the emission interval).
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The largest burst.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The time the whole burst takes to refill: `burst × period`.
    pub fn window(&self) -> Duration {
        self.period.saturating_mul(self.burst)
    }

    /// This quota split across `instances` (each gets `burst / instances`
    /// cells, at least one, refilled `instances` times slower).
    pub fn divided_by(self, instances: u32) -> Quota {
        let n = instances.max(1);
        Quota {
            period: self.period.saturating_mul(n),
            burst: (self.burst / n).max(1),
        }
    }

    pub(crate) fn validate(&self, what: &str) -> Result<(), ConfigError> {
        if self.burst == 0 {
            return Err(ConfigError::new(
                "rate_limit",
                format!("{what}: the burst (requests per window) must be at least 1, got 0"),
            ));
        }
        if self.period.is_zero() {
            return Err(ConfigError::new(
                "rate_limit",
                format!(
                    "{what}: the period (the window divided by the burst: one request every period) \
                     must be greater than zero, got {:?} for a burst of {}",
                    self.period, self.burst
                ),
            ));
        }
        if self.period > Duration::from_secs(365 * 24 * 3600) {
            return Err(ConfigError::new(
                "rate_limit",
                format!(
                    "{what}: the period must be at most one year, got {:?}",
                    self.period
                ),
            ));
        }
        if self.window() > Duration::from_secs(10 * 365 * 24 * 3600) {
            return Err(ConfigError::new(
                "rate_limit",
                format!(
                    "{what}: the window (burst × period) must be at most ten years, got {:?}",
                    self.window()
                ),
            ));
        }
        Ok(())
    }
}
