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
