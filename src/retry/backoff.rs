//! The backoff engine: exponential, capped delays with a choice of jitter.
//!
//! Free of tower types: it maps a retry number (and, for decorrelated jitter,
//! the previous delay) and a random source to a delay, and can be tested and
//! benchmarked alone.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::ConfigError;

/// How a backoff delay is randomised.
///
/// With `d = min(cap, base × 2ⁿ)` for the `n`-th retry (`n` starts at 0), the
/// draws stay inside these bounds:
///
/// | jitter | delay | bounds |
/// |---|---|---|
/// | [`None`](Jitter::None) | `d` | exactly `d` |
/// | [`Full`](Jitter::Full) (default) | `U(0, d)` | `0 ..= d` |
/// | [`Equal`](Jitter::Equal) | `d/2 + U(0, d/2)` | `d/2 ..= d` |
/// | [`Decorrelated`](Jitter::Decorrelated) | `min(cap, U(base, 3 × prev))`, `prev` starting at `base` | `base ..= min(cap, 3 × prev)` |
///
/// Full jitter spreads contending clients the most and made the least total
/// work in AWS's backoff simulation; it is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: `min(cap, base × 2ⁿ)`.
    None,
    /// Full jitter: `U(0, min(cap, base × 2ⁿ))`.
    #[default]
    Full,
    /// Equal jitter: half the exponential delay, plus up to the other half.
    Equal,
    /// Decorrelated jitter: `min(cap, U(base, 3 × previous delay))`.
    Decorrelated,
}

impl Jitter {
    /// A short, stable, lower-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Jitter::None => "none",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
        }
    }
}

/// An exponential, capped backoff with [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use seawall::retry::{Backoff, BackoffState, Jitter};
///
/// let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
///     .unwrap()
///     .with_jitter(Jitter::None);
/// let delays: Vec<_> = backoff.delays(7).take(5).collect();
/// assert_eq!(
///     delays,
///     [10, 20, 40, 80, 100].map(Duration::from_millis).to_vec()
/// );
///
/// // Nonsense is refused when the backoff is made.
/// assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
/// assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
///
/// // One request's backoff session is a `BackoffState`.
/// let mut state = BackoffState::new();
/// let mut rng = Backoff::rng(42);
/// let first = backoff.next_delay(&mut state, &mut rng);
/// assert_eq!(first, Duration::from_millis(10));
/// assert_eq!(state.retries(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// Base 50 ms, cap 2 s, full jitter.
    fn default() -> Self {
        Backoff {
            base: Self::DEFAULT_BASE,
            cap: Self::DEFAULT_CAP,
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The default base delay: 50 ms.
    pub const DEFAULT_BASE: Duration = Duration::from_millis(50);
    /// The default cap: 2 s.
    pub const DEFAULT_CAP: Duration = Duration::from_secs(2);
    /// The largest cap accepted: one day.
    pub const MAX_CAP: Duration = Duration::from_secs(86_400);

    /// A backoff starting at `base` and doubling up to `cap`, with full jitter.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `base` is zero, `cap` is below `base`, or `cap`
    /// is above [`Backoff::MAX_CAP`].
    pub fn new(base: Duration, cap: Duration) -> Result<Self, ConfigError> {
        if base.is_zero() {
            return Err(ConfigError::new(
                "retry",
                "backoff base must be greater than zero, got 0",
            ));
        }
        if cap < base {
            return Err(ConfigError::new(
                "retry",
                format!("backoff cap must be at least the base ({base:?}), got {cap:?}"),
            ));
        }
        if cap > Self::MAX_CAP {
            return Err(ConfigError::new(
                "retry",
                format!("backoff cap must be at most one day, got {cap:?}"),
            ));
        }
        Ok(Backoff {
            base,
            cap,
            jitter: Jitter::Full,
        })
    }

    /// The same backoff with another jitter.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay of the `retry`-th retry (0-based): `min(cap, base × 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        // base ≤ one day < 2^47 ns, so a shift by at most 64 fits in u128.
        let base = self.base.as_nanos();
        let cap = self.cap.as_nanos();
        let raw = base << retry.min(64);
        nanos(raw.min(cap))
    }

    /// The inclusive bounds of the next delay drawn from `state`.
    pub fn bounds(&self, state: &BackoffState) -> (Duration, Duration) {
        match self.jitter {
            Jitter::None => {
                let d = self.ceiling(state.retries);
                (d, d)
            }
            Jitter::Full => (Duration::ZERO, self.ceiling(state.retries)),
            Jitter::Equal => {
                let d = self.ceiling(state.retries);
                (d / 2, d)
            }
            Jitter::Decorrelated => {
                let prev = if state.prev_ns == 0 {
                    self.base
                } else {
                    Duration::from_nanos(state.prev_ns)
                };
                let hi = prev.saturating_mul(3).min(self.cap).max(self.base);
                (self.base, hi)
            }
        }
    }

    /// Draws the next delay of one backoff session and advances the session.
    pub fn next_delay<R: Rng + ?Sized>(&self, state: &mut BackoffState, rng: &mut R) -> Duration {
        let (lo, hi) = self.bounds(state);
        let d = match self.jitter {
            Jitter::None => hi,
            Jitter::Full | Jitter::Decorrelated => draw(rng, lo, hi),
            Jitter::Equal => {
                // d/2 + U(0, d/2): the upper half is `hi - lo`, so odd
                // nanosecond counts still reach `hi` exactly.
                lo + draw(rng, Duration::ZERO, hi - lo)
            }
        };
        state.retries = state.retries.saturating_add(1);
        state.prev_ns = crate::clock::nanos(d);
        d
    }

    /// A small, fast random source for backoff draws, seeded with `seed`.
    pub fn rng(seed: u64) -> SmallRng {
        SmallRng::seed_from_u64(seed)
    }

    /// The endless sequence of delays of one backoff session, drawn from a
    /// random source seeded with `seed` (the same seed gives the same sequence).
    pub fn delays(&self, seed: u64) -> Delays {
        Delays {
            backoff: *self,
            state: BackoffState::new(),
            rng: Self::rng(seed),
        }
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

pub(crate) fn draw<R: Rng + ?Sized>(rng: &mut R, lo: Duration, hi: Duration) -> Duration {
    let lo_n = crate::clock::nanos(lo);
    let hi_n = crate::clock::nanos(hi);
    if hi_n <= lo_n {
        return lo;
    }
    Duration::from_nanos(rng.random_range(lo_n..=hi_n))
}

/// One request's backoff session: how many retries were scheduled and the
/// previous delay (used by decorrelated jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
// 12 bytes aligned to 4: in a retry future it packs with the small fields
// beside it (16 bytes, aligned to 8, it took 8 more).
#[repr(C, packed(4))]
pub struct BackoffState {
    retries: u32,
    /// The previous delay in nanoseconds (a `Duration` would take 8 bytes
    /// more of every retry future).
    prev_ns: u64,
}

impl BackoffState {
    /// A fresh session.
    pub const fn new() -> Self {
        BackoffState {
            retries: 0,
            prev_ns: 0,
        }
    }

    /// Delays drawn so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Starts over from the base delay (done after a server's pushback, as gRPC does).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

/// The delays of one backoff session; see [`Backoff::delays`].
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    state: BackoffState,
    rng: SmallRng,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.backoff.next_delay(&mut self.state, &mut self.rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jitter_strategy() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ]
    }

    proptest! {
        #[test]
        fn draws_stay_inside_documented_bounds(
            base_us in 1u64..1_000_000,
            extra_us in 0u64..10_000_000,
            jitter in jitter_strategy(),
            seed in any::<u64>(),
        ) {
            let base = Duration::from_micros(base_us);
            let cap = base + Duration::from_micros(extra_us);
            let b = Backoff::new(base, cap).unwrap().with_jitter(jitter);
            let mut state = BackoffState::new();
            let mut rng = Backoff::rng(seed);
            let mut prev = base;
            for n in 0..40u32 {
                let d = b.next_delay(&mut state, &mut rng);
                let ceil = b.ceiling(n);
                prop_assert!(d <= cap);
                match jitter {
                    Jitter::None => prop_assert_eq!(d, ceil),
                    Jitter::Full => prop_assert!(d <= ceil),
                    Jitter::Equal => prop_assert!(d >= ceil / 2 && d <= ceil),
                    Jitter::Decorrelated => {
                        prop_assert!(d >= base);
                        prop_assert!(d <= (prev * 3).min(cap));
                    }
                }
                prev = d;
            }
        }

        #[test]
        fn same_seed_same_sequence(seed in any::<u64>(), jitter in jitter_strategy()) {
            let b = Backoff::default().with_jitter(jitter);
            let a: Vec<_> = b.delays(seed).take(20).collect();
            let c: Vec<_> = b.delays(seed).take(20).collect();
            prop_assert_eq!(a, c);
        }

        #[test]
        fn ceiling_is_monotonic_and_capped(base_ms in 1u64..10_000, extra in 0u64..100_000, n in 0u32..200) {
            let base = Duration::from_millis(base_ms);
            let cap = base + Duration::from_millis(extra);
            let b = Backoff::new(base, cap).unwrap();
            prop_assert!(b.ceiling(n) <= b.ceiling(n.saturating_add(1)));
            prop_assert!(b.ceiling(n) <= cap);
            prop_assert!(b.ceiling(n) >= base);
        }
    }

    #[test]
    fn validation_names_the_setting() {
        let e = Backoff::new(Duration::ZERO, Duration::from_secs(1)).unwrap_err();
        assert!(e.message().contains("base"), "{e}");
        let e = Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert!(e.message().contains("cap"), "{e}");
        let e = Backoff::new(Duration::from_secs(1), Duration::from_secs(90_000)).unwrap_err();
        assert!(e.message().contains("one day"), "{e}");
        assert!(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn huge_retry_numbers_saturate_at_cap() {
        let b = Backoff::new(Duration::from_secs(1), Backoff::MAX_CAP).unwrap();
        assert_eq!(b.ceiling(u32::MAX), Backoff::MAX_CAP);
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
    }

    #[test]
    fn reset_starts_over_from_base() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
            .unwrap()
            .with_jitter(Jitter::None);
        let mut s = BackoffState::new();
        let mut rng = Backoff::rng(1);
        b.next_delay(&mut s, &mut rng);
        assert_eq!(b.next_delay(&mut s, &mut rng), Duration::from_millis(20));
        s.reset();
        assert_eq!(b.next_delay(&mut s, &mut rng), Duration::from_millis(10));
    }
}
