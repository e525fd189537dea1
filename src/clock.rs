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

use std::cell::Cell;

pub use tokio::time::Instant;

/// The current time on tokio's clock.
///
/// Read once per edge of a call: while a request goes in through the
/// layers' `call` (one synchronous chain), and while its answer comes out
/// through their futures' `poll`, every seawall layer on the way reads the
/// same instant — the first read of the edge. A whole stack reads the clock
/// twice per call, not once per layer. Outside a layer, it is
/// `tokio::time::Instant::now()`.
#[inline]
pub fn now() -> Instant {
    if DEPTH.with(Cell::get) == 0 {
        return Instant::now();
    }
    NOW.with(|cell| match cell.get() {
        Some(now) => now,
        None => {
            let now = Instant::now();
            cell.set(Some(now));
            now
        }
    })
}

thread_local! {
    // How many layers' edges are open on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    // The instant of the open edge, once read.
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// One layer's part of an edge of a call (its `call`, or its future's
/// `poll`): while any is alive on this thread, [`now`] reads the clock once.
/// The outermost one forgets the instant when it ends.
// Every layer opens edges; a build with no layer feature has none.
#[allow(dead_code)]
pub(crate) struct Edge(());

#[allow(dead_code)]
impl Edge {
    #[inline]
    pub(crate) fn enter() -> Edge {
        DEPTH.with(|d| d.set(d.get().wrapping_add(1)));
        Edge(())
    }
}

impl Drop for Edge {
    #[inline]
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            let depth = d.get().saturating_sub(1);
            d.set(depth);
            depth
        });
        if depth == 0 {
            NOW.with(|n| n.set(None));
        }
    }
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
#[cfg(feature = "bulkhead")]
pub(crate) const MIN_HINT: std::time::Duration = std::time::Duration::from_millis(100);

/// Spreads the `retry_after` hints of one layer instance: each hint is its
/// base stretched by a pseudo-random factor in `[1, 1.5)`, so that clients
/// refused together do not all come back at the same instant.
///
/// The sequence is a hash of the instance name and a counter: lock-free, no
/// clock read, and the same from one run to the next (simulations in paused
/// time stay reproducible).
#[cfg(feature = "bulkhead")]
#[derive(Debug)]
pub(crate) struct Jitter {
    seed: u64,
    counter: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "bulkhead")]
impl Jitter {
    pub(crate) fn new(name: &str) -> Self {
        // FNV-1a over the name.
        let mut seed = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Jitter {
            seed,
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `base` times a factor in `[1, 1.5)`; never shorter than `base`.
    pub(crate) fn stretch(&self, base: std::time::Duration) -> std::time::Duration {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The splitmix64 sequence from `seed`: its n-th value mixes
        // `seed + (n + 1) × golden`.
        let z = splitmix64(
            self.seed
                .wrapping_add(n.wrapping_sub(1).wrapping_mul(GOLDEN)),
        );
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 + unit / 2.0)
    }
}

/// 2⁶⁴ divided by the golden ratio: splitmix64's increment.
#[cfg(any(feature = "bulkhead", feature = "retry"))]
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finaliser: a well-mixed 64-bit hash of `z + golden ratio`.
#[cfg(any(feature = "bulkhead", feature = "retry"))]
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod edge_tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_edge_reads_the_clock_once_and_forgets_when_the_outermost_ends() {
        let before = now();
        tokio::time::advance(Duration::from_secs(1)).await;
        // Outside an edge: a fresh read each time.
        assert_eq!(now() - before, Duration::from_secs(1));

        let outer = Edge::enter();
        let first = now();
        let inner = Edge::enter();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(now(), first, "layers on one edge share its first read");
        drop(inner);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(now(), first, "an inner layer's end does not forget it");
        drop(outer);
        assert_eq!(
            now() - first,
            Duration::from_secs(2),
            "the next edge reads anew"
        );

        // A new edge after that reads the clock again, once.
        let again = Edge::enter();
        let second = now();
        assert_eq!(second - first, Duration::from_secs(2));
        drop(again);
    }
}
