//! The governor clock adapter: governor reads tokio's clock.
//!
//! governor's default clock is `quanta`, which ignores tokio's paused time.
//! [`TokioClock`] implements [`governor::clock::Clock`] over
//! [`tokio::time::Instant`], so a limiter built with it follows
//! `tokio::time::pause()` / `advance()` like every other seawall layer.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use governor::{Quota, RateLimiter};
//! use seawall::rate_limit::TokioClock;
//!
//! let quota = Quota::per_second(NonZeroU32::new(1).unwrap());
//! let limiter = RateLimiter::direct_with_clock(quota, TokioClock::new());
//! assert!(limiter.check().is_ok());
//! assert!(limiter.check().is_err());
//! tokio::time::advance(Duration::from_secs(1)).await;
//! assert!(limiter.check().is_ok());
//! # }
//! ```

use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use tokio::time::Instant;

/// A [`governor::clock::Clock`] reading [`tokio::time::Instant::now`].
///
/// Zero-sized and free to copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokioClock;

impl TokioClock {
    /// The clock.
    pub const fn new() -> Self {
        TokioClock
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    #[inline]
    fn now(&self) -> TokioInstant {
        TokioInstant(crate::clock::now())
    }
}

/// A reading of [`TokioClock`]: a [`tokio::time::Instant`] that implements
/// governor's [`Reference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokioInstant(Instant);

impl TokioInstant {
    /// Wraps a tokio instant.
    pub const fn new(instant: Instant) -> Self {
        TokioInstant(instant)
    }

    /// The tokio instant.
    pub const fn into_inner(self) -> Instant {
        self.0
    }
}

impl From<Instant> for TokioInstant {
    fn from(i: Instant) -> Self {
        TokioInstant(i)
    }
}

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    #[inline]
    fn add(self, other: Nanos) -> TokioInstant {
        let d = Duration::from_nanos(other.as_u64());
        // Saturate instead of panicking on absurd additions.
        TokioInstant(self.0.checked_add(d).unwrap_or(self.0))
    }
}

impl Reference for TokioInstant {
    #[inline]
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    #[inline]
    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(
            self.0
                .checked_sub(Duration::from_nanos(duration.as_u64()))
                .unwrap_or(self.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let c = TokioClock::new();
        let a = c.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        let b = c.now();
        assert_eq!(
            b.duration_since(a),
            Nanos::from(Duration::from_millis(1500))
        );
        assert_eq!(a.duration_since(b), Nanos::from(0u64));
        assert_eq!(a + Nanos::from(Duration::from_millis(1500)), b);
        assert_eq!(
            b.saturating_sub(Nanos::from(Duration::from_millis(1500))),
            a
        );
    }
}
