//! A governor clock on tokio's time, for the tests that check seawall's
//! buckets against governor's limiters cell for cell (and the benches that
//! run governor beside them): governor's default clock, `quanta`, ignores
//! tokio's paused time. Not part of the crate's API.

use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use tokio::time::Instant;

/// A [`governor::clock::Clock`] reading [`tokio::time::Instant::now`].
///
/// Zero-sized and free to copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TokioClock;

impl TokioClock {
    /// The clock.
    pub(super) const fn new() -> Self {
        TokioClock
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    #[inline]
    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

/// A reading of [`TokioClock`]: a [`tokio::time::Instant`] that implements
/// governor's [`Reference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct TokioInstant(Instant);

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
