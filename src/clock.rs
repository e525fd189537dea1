//! The one clock: every seawall layer reads `tokio::time::Instant`, so
//! `#[tokio::test(start_paused = true)]` drives every timer, window and quota.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//!
//! let before = seawall::clock::now();
//! tokio::time::sleep(Duration::from_secs(5)).await; // instant in paused time
//! assert_eq!(seawall::clock::now() - before, Duration::from_secs(5));
//! # }
//! ```

pub use tokio::time::Instant;

#[cfg(feature = "rate-limit")]
pub use crate::rate_limit::{TokioClock, TokioInstant};

/// The current time on tokio's clock.
#[inline]
pub fn now() -> Instant {
    Instant::now()
}

/// `d` in whole seconds, rounded **up** (400 ms → 1, 2 s → 2, 2.001 s → 3,
/// 0 → 0): what `Retry-After` and the `RateLimit` fields advertise, so a client
/// never comes back early.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(seawall::clock::ceil_secs(Duration::from_millis(400)), 1);
/// assert_eq!(seawall::clock::ceil_secs(Duration::from_millis(2001)), 3);
/// assert_eq!(seawall::clock::ceil_secs(Duration::ZERO), 0);
/// ```
#[inline]
pub fn ceil_secs(d: std::time::Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// The smallest hint a shedder or a bulkhead gives with its refusal.
pub(crate) const MIN_HINT: std::time::Duration = std::time::Duration::from_millis(100);

/// `base` stretched by a random factor in `[1, 1.5)`: the `retry_after` of a
/// refusal, so that clients told to wait do not all come back at the same
/// instant. Never shorter than `base`.
pub(crate) fn jittered(base: std::time::Duration) -> std::time::Duration {
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    use std::cell::RefCell;
    thread_local! {
        static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
    }
    let factor: f64 = RNG.with(|r| r.borrow_mut().random_range(1.0..1.5));
    base.mul_f64(factor)
}
