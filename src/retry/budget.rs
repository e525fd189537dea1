//! The retry budget engine (see [`RetryBudget`] for the rule, the algorithm
//! and its cost). Free of tower types; every operation has an `_at(now)` form
//! for the unit tests beside it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ConfigError;

/// Number of buckets in the sliding window.
pub(crate) const BUCKETS: usize = 10;

// A slice's word: its requests (22 bits), its succeeded requests (22 bits)
// and the low 20 bits of its slice number (its tag). Slice numbers are
// counted in full everywhere else; a word's tag and slot tell a slice in
// the window from one that left it, except for a word left untouched for a
// multiple of 5 × 2^20 slices (87 minutes of the shortest window's 1 ms
// slices, 60 days of the default 1 s ones), whose old counts are then read
// as current (a ticket that old credits a success to the current slice).
const COUNT_BITS: u32 = 22;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TAG_SHIFT: u32 = 2 * COUNT_BITS;
const TAG_MASK: u64 = (1 << (64 - TAG_SHIFT)) - 1;
/// The slices over which timeouts are judged rare or common: this one and
/// the one before (2 s of the default 10 s window), so that a dependency
/// slow for everyone stops the retries of timeouts within a slice or two.
const RECENT_SLICES: u64 = 2;
/// Busy answers with no request succeeding since, from which a retry of
/// one no longer draws on the successes' credit (see
/// [`RetryBudget::busy_run`]).
const BUSY_RUN_ANSWERS: u64 = 10;
/// Timeouts in those slices that are rare whatever the traffic.
const TIMEOUTS_FLOOR: u64 = 2;
/// The share of retries after a failure that saved their request, as a
/// moving average, below which such retries are futile (in ppm): 1 in 10.
const FUTILE_YIELD_PPM: u64 = 100_000;
/// Each retry's outcome moves that average by a sixteenth of the way: from
/// every retry saving its request, 36 in a row that do not make retries
/// futile, and one that does brings them back.
const YIELD_SHIFT: u32 = 4;
/// While retries are futile, one failure in this many is retried all the
/// same, to tell when they save requests again.
const FUTILE_PROBE_EVERY: u64 = 8;
/// One request, one succeeded request, in a slice's word.
const ONE_REQUEST: u64 = 1;
const ONE_SUCCESS: u64 = 1 << COUNT_BITS;
const PPM: u64 = 1_000_000;

/// A retry budget: retries may be at most a fraction of requests, plus a
/// small floor, over a sliding window (in the spirit of Finagle's
/// `RetryBudget` and gRPC retry throttling).
///
/// # Rule, algorithm and cost
///
/// The window is a ring of 10 buckets (each `window / 10` wide, 1 s by
/// default). Each bucket counts the requests (deposits) and the retries
/// (withdrawals) made during its slice of time. A retry is allowed when
///
/// ```text
/// retries_in_window + 1 ≤ ratio × requests_in_window + min_retries_per_sec × window
/// ```
///
/// so over any window, retries are at most `ratio` of the requests plus a
/// floor; requests and retries leave the window together, so credit earned
/// long ago cannot fund a storm now (the flaw of an unbounded token bucket).
///
/// A [`RetryLayer`](super::RetryLayer) also counts the attempts that timed
/// out, and retries one only while timeouts are rare:
///
/// ```text
/// timeouts_in_last_2_slices ≤ 2 + ratio × requests_in_last_2_slices
/// ```
///
/// (2 + 5 % of the last 2 s's requests with the defaults). More than that,
/// the dependency is slow for everyone, as a saturated queue is, not in its
/// tail: retrying adds load where there is none to spare (see the
/// [module documentation](super), "Timeouts").
///
/// - A **deposit** (every request, the success path) is one clock read and one
///   compare-and-swap on one atomic word holding the bucket's slice number and
///   its counts (requests, and succeeded requests for an
///   [`adaptive`](Self::adaptive) budget); no lock. A
///   [`RetryLayer`](super::RetryLayer) counts a request when its first
///   attempt ends, with its success in the same compare-and-swap when it
///   succeeded.
/// - A **withdrawal** (only when a retry is wanted) takes a short
///   `std::sync::Mutex` section that sums the ten buckets and records the retry,
///   so concurrent retries can never overdraw the budget. It is never held
///   across an `.await`.
///
/// Both are O(1): the ring has a fixed ten buckets whatever the window length.
/// A bucket counts up to 4 194 303 requests (and as many successes) per
/// slice (4.2 M requests a second with the default 1 s slices, 11 650 with
/// the longest window's 360 s ones); beyond that, deposits saturate, which
/// only makes the budget stricter.
///
/// Cloning is cheap and clones share one budget. A
/// [`RetryLayer`](super::RetryLayer) owns one, shared by every service built
/// from that layer (and their clones).
///
/// ```
/// use std::time::Duration;
/// use seawall::retry::RetryBudget;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // 10% of requests, plus 1 retry/s over 10 s (a floor of 10 per window).
/// let budget = RetryBudget::new(0.1, 1, Duration::from_secs(10)).unwrap();
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// let mut granted = 0;
/// while budget.try_withdraw().is_some() {
///     granted += 1;
/// }
/// assert_eq!(granted, 10 + 10);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    start: Instant,
    bucket_nanos: u64,
    // Atomics, so that an operator can change them at run time
    // (`set_ratios`); read with relaxed loads.
    ratio_ppm: AtomicU64,
    success_ratio_ppm: AtomicU64,
    floor: AtomicU64,
    window: Duration,
    /// Per slice: its number, its requests and its succeeded requests.
    counts: [AtomicU64; BUCKETS],
    withdrawals: Mutex<Ring>,
    /// While timeouts are common (then a timeout is not retried), the
    /// slice in which that was judged, plus one; 0 while they are rare.
    /// Judged at each timeout, and again once that slice has passed.
    timeouts_common: AtomicU64,
    /// "Busy" answers to be retried since the last request that
    /// succeeded (see [`RetryBudget::busy_run`]).
    busy_since_success: AtomicU64,
    /// The share of retries after a failure that saved their request, a
    /// moving average in ppm (see [`RetryBudget::failure_retry`]).
    retry_yield_ppm: AtomicU64,
    /// Failures met while retries were futile, for one in
    /// [`FUTILE_PROBE_EVERY`] to be retried all the same.
    futile_failures: AtomicU64,
    /// The slice in which a retry after a failure last ended: a judgement
    /// of futility that no retry has confirmed for a whole window is
    /// forgotten.
    yield_slice: AtomicU64,
    /// Per slice: its number and the attempts that timed out in it (in
    /// the requests' place of the word).
    timeouts: [AtomicU64; BUCKETS],
    /// Who hears when timeouts become common or rare again (the retry
    /// layer's observer and name; set once, as the layer is built).
    watch: std::sync::OnceLock<(crate::observe::Observer, crate::error::Name)>,
}

struct Ring {
    epochs: [u64; BUCKETS],
    counts: [u64; BUCKETS],
    /// The latest slice a withdrawal was counted in.
    latest: u64,
}

/// A granted retry, to hand back with [`RetryBudget::refund`] if the retry
/// is finally not made (for example, its request was dropped mid-backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Withdrawal {
    epoch: u64,
}

/// The budget's view of the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetSnapshot {
    /// Requests counted in the window.
    pub requests: u64,
    /// Retries granted in the window.
    pub retries: u64,
    /// Retries that would still be granted now.
    pub available: u64,
}

impl RetryBudget {
    /// The default fraction of requests that may be retried whatever their
    /// outcome, in a [`RetryLayer`](super::RetryLayer): 5 %.
    ///
    /// Chosen by the total outage of the storm simulation with the breaker
    /// off (`tests/storm`): nothing succeeds, so this share and the floor are
    /// all a retry storm can take. At 600 requests per second, 10 % + 10/s
    /// let 1.12 attempts per request reach the dead backend; 5 % + 10/s
    /// hold it under 1.1. The share of succeeded requests
    /// ([`DEFAULT_SUCCESS_RATIO`](Self::DEFAULT_SUCCESS_RATIO)) is what
    /// makes the budget generous when retries save requests.
    pub const DEFAULT_RATIO: f64 = 0.05;
    /// The default share of succeeded requests added to the budget of a
    /// [`RetryLayer`](super::RetryLayer): 50 %.
    ///
    /// Chosen by two scenarios of the storm simulation (`tests/storm`): a
    /// partial failure where 30 % of calls fail fast needs about 0.39
    /// retries per request to save 97 % of them (three attempts), where a
    /// plain 10 % budget saved 78 %; with 0.05 + 0.5 × (≈ 0.97 succeeded) ≈
    /// 0.53 retries per request available it saves 97 %+. In a total outage
    /// nothing succeeds, so only the 5 % and the floor are left: the budget
    /// is tight exactly when retries only add load. A retry of a "busy"
    /// answer (an overload answer, or one that asks for a wait) does not
    /// draw on this share: a busy dependency's answers are its capacity or
    /// its quota, and a retry there takes another request's place.
    pub const DEFAULT_SUCCESS_RATIO: f64 = 0.5;
    /// The default floor: 10 retries per second.
    pub const DEFAULT_MIN_PER_SEC: u32 = 10;
    /// The default window: 10 s.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    /// The shortest window accepted: 10 ms (1 ms buckets).
    pub const MIN_WINDOW: Duration = Duration::from_millis(10);
    /// The longest window accepted: one hour.
    pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

    /// A budget letting retries be at most `ratio` (in `0.0..=1.0`) of the
    /// requests, plus `min_per_sec × window` retries, over a sliding `window`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `ratio` is not a number in `0.0..=1.0`,
    /// `window` is outside [`MIN_WINDOW`](Self::MIN_WINDOW)`..=`[`MAX_WINDOW`](Self::MAX_WINDOW),
    /// or `min_per_sec × window` rounds to no retry while `min_per_sec` is
    /// not 0.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Result<Self, ConfigError> {
        RetryBudget::adaptive(ratio, 0.0, min_per_sec, window)
    }

    /// A budget that grows with success: retries may be at most `ratio` of
    /// the requests, plus `success_ratio` of the requests that succeeded,
    /// plus `min_per_sec × window`, over a sliding `window`:
    ///
    /// ```text
    /// retries + 1 ≤ ratio × requests + success_ratio × successes + min_per_sec × window
    /// ```
    ///
    /// Generous while most requests succeed (a partial failure, where a
    /// retry saves the request), tight when they do not (an outage, where
    /// retries only add load): with no success, only `ratio` and the floor
    /// are left.
    ///
    /// ```
    /// use std::time::Duration;
    /// use seawall::retry::RetryBudget;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let budget = RetryBudget::adaptive(0.1, 0.5, 0, Duration::from_secs(10)).unwrap();
    /// for _ in 0..100 {
    ///     let request = budget.deposit_request();
    ///     budget.credit_success(request); // every request succeeded
    /// }
    /// assert_eq!(budget.snapshot().available, 10 + 50);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); also when `success_ratio` is not in `0.0..=1.0`.
    pub fn adaptive(
        ratio: f64,
        success_ratio: f64,
        min_per_sec: u32,
        window: Duration,
    ) -> Result<Self, ConfigError> {
        Self::check_ratios(ratio, success_ratio)?;
        if window < Self::MIN_WINDOW || window > Self::MAX_WINDOW {
            return Err(ConfigError::new(
                "retry",
                format!("budget window must be between 10ms and 1h, got {window:?}"),
            ));
        }
        let bucket_nanos = u64::try_from(window.as_nanos() / BUCKETS as u128).unwrap_or(u64::MAX);
        let floor = Self::floor_of(min_per_sec, window)?;
        Ok(RetryBudget {
            inner: std::sync::Arc::new(Inner {
                start: crate::clock::edge_now(),
                bucket_nanos: bucket_nanos.max(1),
                ratio_ppm: AtomicU64::new((ratio * PPM as f64).round() as u64),
                success_ratio_ppm: AtomicU64::new((success_ratio * PPM as f64).round() as u64),
                floor: AtomicU64::new(floor),
                window,
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                withdrawals: Mutex::new(Ring {
                    epochs: [0; BUCKETS],
                    counts: [0; BUCKETS],
                    latest: 0,
                }),
                timeouts_common: AtomicU64::new(0),
                busy_since_success: AtomicU64::new(0),
                retry_yield_ppm: AtomicU64::new(PPM),
                futile_failures: AtomicU64::new(0),
                yield_slice: AtomicU64::new(0),
                timeouts: std::array::from_fn(|_| AtomicU64::new(0)),
                watch: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Reports to `observer`, under the retry layer `name`, when timeouts
    /// become common (attempts are then not cut, nor timed-out ones
    /// retried) and rare again, as the state `timeouts_common` or
    /// `timeouts_rare` (the first watcher only); the state it is in now is
    /// reported at once.
    pub(crate) fn watch(&self, observer: crate::observe::Observer, name: crate::error::Name) {
        use crate::observe::{EventKind, LayerKind, State};
        let state = if self.inner.timeouts_common.load(Ordering::Relaxed) != 0 {
            State::TimeoutsCommon
        } else {
            State::TimeoutsRare
        };
        observer.emit(
            LayerKind::Retry,
            name.as_str(),
            EventKind::StateChanged {
                from: state,
                to: state,
                failure_rate: None,
                slow_call_rate: None,
            },
        );
        let _ = self.inner.watch.set((observer, name));
    }

    /// The fraction of requests that may be retried, in parts per million.
    pub fn ratio_ppm(&self) -> u64 {
        self.inner.ratio_ppm.load(Ordering::Relaxed)
    }

    /// The fraction of succeeded requests added to the budget, in parts per
    /// million (0 for a plain [`new`](Self::new) budget).
    pub fn success_ratio_ppm(&self) -> u64 {
        self.inner.success_ratio_ppm.load(Ordering::Relaxed)
    }

    /// The retries granted per window regardless of traffic (`min_per_sec × window`).
    pub fn floor(&self) -> u64 {
        self.inner.floor.load(Ordering::Relaxed)
    }

    /// Changes the budget's shares at run time (an operator's reload): the
    /// share of requests, the share of succeeded requests and the floor
    /// per second, as in [`adaptive`](Self::adaptive); the window and the
    /// counts in it are kept. Every clone sees the change.
    ///
    /// ```
    /// use std::time::Duration;
    /// use seawall::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::new(0.1, 1, Duration::from_secs(10)).unwrap();
    /// budget.set_ratios(0.2, 0.0, 0).unwrap();
    /// assert_eq!((budget.ratio_ppm(), budget.floor()), (200_000, 0));
    /// assert!(budget.set_ratios(1.5, 0.0, 0).is_err()); // nothing changes
    /// assert_eq!(budget.ratio_ppm(), 200_000);
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when a share is not in `0.0..=1.0`, or
    /// `min_per_sec` over the window rounds to no retry.
    pub fn set_ratios(
        &self,
        ratio: f64,
        success_ratio: f64,
        min_per_sec: u32,
    ) -> Result<(), ConfigError> {
        let floor = self.checked_floor(ratio, success_ratio, min_per_sec)?;
        self.inner
            .ratio_ppm
            .store((ratio * PPM as f64).round() as u64, Ordering::Relaxed);
        self.inner.success_ratio_ppm.store(
            (success_ratio * PPM as f64).round() as u64,
            Ordering::Relaxed,
        );
        self.inner.floor.store(floor, Ordering::Relaxed);
        Ok(())
    }

    /// The checks [`set_ratios`](Self::set_ratios) makes, without changing
    /// anything (a reload checks every value before it changes one).
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn check_settings(
        &self,
        ratio: f64,
        success_ratio: f64,
        min_per_sec: u32,
    ) -> Result<(), ConfigError> {
        self.checked_floor(ratio, success_ratio, min_per_sec)
            .map(|_| ())
    }

    /// The floor of retries `min_per_sec` makes over the window, once the
    /// shares and it are checked.
    fn checked_floor(
        &self,
        ratio: f64,
        success_ratio: f64,
        min_per_sec: u32,
    ) -> Result<u64, ConfigError> {
        Self::check_ratios(ratio, success_ratio)?;
        Self::floor_of(min_per_sec, self.inner.window)
    }

    /// The retries `min_per_sec` allows over `window` whatever the traffic.
    /// A floor the window rounds to none (10 a second over a 10 ms window)
    /// is refused: it would allow no retry at low traffic, where it
    /// promises some.
    fn floor_of(min_per_sec: u32, window: Duration) -> Result<u64, ConfigError> {
        let floor = (f64::from(min_per_sec) * window.as_secs_f64()).round() as u64;
        if min_per_sec > 0 && floor == 0 {
            return Err(ConfigError::new(
                "retry",
                format!(
                    "min_retries_per_sec {min_per_sec} over a budget window of {window:?} is \
                     less than one retry; lengthen the window or set 0"
                ),
            ));
        }
        Ok(floor)
    }

    /// The one rule for the budget's shares: the constructors', a run-time
    /// change's and a reload's.
    pub(crate) fn check_ratios(ratio: f64, success_ratio: f64) -> Result<(), ConfigError> {
        for (what, r) in [
            ("budget ratio", ratio),
            ("budget success ratio", success_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(ConfigError::new(
                    "retry",
                    format!("{what} must be in 0.0..=1.0, got {r}"),
                ));
            }
        }
        Ok(())
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// Counts one request (call it once per request, not per attempt).
    #[inline]
    pub fn deposit(&self) {
        self.deposit_at(crate::clock::edge_now())
    }

    /// Counts one request, like [`deposit`](Self::deposit), and returns its
    /// ticket for [`credit_success`](Self::credit_success).
    #[inline]
    pub fn deposit_request(&self) -> RequestTicket {
        let epoch = self.inner.epoch(crate::clock::edge_now());
        bump(&self.inner.counts, epoch, ONE_REQUEST);
        RequestTicket { epoch }
    }

    /// Counts the request of `ticket` as succeeded (in the budget's window
    /// slice where it was counted; no clock read). A no-op for a plain
    /// budget, or once that slice has left the window.
    #[inline]
    pub fn credit_success(&self, ticket: RequestTicket) {
        // (Consumed: a ticket credits one success.)
        if self.inner.success_ratio_ppm.load(Ordering::Relaxed) > 0 {
            credit(&self.inner.counts, ticket.epoch);
        }
        self.inner.succeeded();
    }

    /// Counts one request that succeeded, in one compare-and-swap:
    /// [`deposit_request`](Self::deposit_request) then
    /// [`credit_success`](Self::credit_success).
    #[inline]
    pub(crate) fn deposit_succeeded(&self) {
        let epoch = self.inner.epoch(crate::clock::edge_now());
        let add = if self.inner.success_ratio_ppm.load(Ordering::Relaxed) > 0 {
            ONE_REQUEST | ONE_SUCCESS
        } else {
            ONE_REQUEST
        };
        bump(&self.inner.counts, epoch, add);
        self.inner.succeeded();
    }

    /// A "busy" answer to be retried (a bare `503` or `UNAVAILABLE`:
    /// one instance of several down answers it too, and a retry to
    /// another saves the request, so it may draw on the successes'
    /// credit): whether it comes in a run of [`BUSY_RUN_ANSWERS`] or more
    /// with no request succeeding since. Then the dependency serves
    /// nothing, a retry saves no request, and it draws on the budget's
    /// fraction of requests and floor only, as a busy answer that asked
    /// for a wait does (a dependency flapping 1 s down, 1 s up got 1.74
    /// to 1.85 calls per request in its down seconds in a new user's
    /// trial, paid by the successes of its up seconds).
    pub(crate) fn busy_run(&self) -> bool {
        self.inner
            .busy_since_success
            .fetch_add(1, Ordering::Relaxed)
            + 1
            >= BUSY_RUN_ANSWERS
    }

    /// A retry made after the dependency failed (not after a busy answer,
    /// a timeout or a refusal of this process) has ended: whether it saved
    /// its request. Moves the share of such retries that do (a moving
    /// average, by a sixteenth of the way per retry).
    #[cold]
    pub(crate) fn retried_failure_ended(&self, saved: bool) {
        let slice = self.inner.epoch(crate::clock::edge_now());
        self.inner.yield_slice.store(slice, Ordering::Relaxed);
        let _ =
            self.inner
                .retry_yield_ppm
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |y| {
                    Some(y - (y >> YIELD_SHIFT) + if saved { PPM >> YIELD_SHIFT } else { 0 })
                });
    }

    /// Whether a failure of the dependency may be retried: while retries
    /// after failures save their requests (1 in 10 or more of them lately),
    /// and, while they do not, 1 failure in 8 as a probe, which tells when
    /// they do again.
    ///
    /// A request that fails every time it is sent (a "poison" request, a
    /// route that is broken) is then sent about once, not three times: in
    /// a new user's trial, 1 request in 20 failing after 120 ms of a
    /// dependency's worker, retried by the HTTP preset, pushed the
    /// dependency past its capacity, and the healthy requests were served
    /// 92 % where a plain client served them all.
    ///
    /// A probe draws on the budget's share of requests and its floor only,
    /// not on the successes' credit: retries that save nothing must not
    /// spend, a few at a time, the credit of the successes before an
    /// outage (the storm's outage with the breaker off: 1.14 attempts per
    /// request from its second second on, where the budget alone held it
    /// to 1.1).
    pub(crate) fn failure_retry(&self) -> FailureRetry {
        if !self.retries_futile() {
            FailureRetry::Saves
        } else if self.inner.futile_failures.fetch_add(1, Ordering::Relaxed) % FUTILE_PROBE_EVERY
            == 0
        {
            FailureRetry::Probe
        } else {
            FailureRetry::Futile
        }
    }

    /// [`deposit`](Self::deposit) at `now`.
    pub(crate) fn deposit_at(&self, now: Instant) {
        bump(&self.inner.counts, self.inner.epoch(now), ONE_REQUEST);
    }
}

/// Whether a slot's word, `lead` slices (modulo the tag) ahead of the slice
/// wanted, holds a later slice another thread has already started (it read
/// the clock a moment later): one or two laps of the ring ahead. Anything
/// else is an old slice, started anew.
#[inline]
fn is_later_slice(lead: u64) -> bool {
    lead != 0 && lead % BUCKETS as u64 == 0 && lead <= 2 * BUCKETS as u64
}

/// Adds `add` (`ONE_REQUEST`, `ONE_SUCCESS` or both) to the counts of slice
/// `epoch` (the current one) in `ring`: lock-free; a full count stays full.
#[inline]
fn bump(ring: &[AtomicU64; BUCKETS], epoch: u64, add: u64) {
    add_to_slice(ring, epoch, add, true);
}

/// Adds a success to slice `epoch` (a request's, counted earlier) if its
/// slot still holds that slice; a no-op once the slice has been replaced.
#[inline]
fn credit(ring: &[AtomicU64; BUCKETS], epoch: u64) {
    add_to_slice(ring, epoch, ONE_SUCCESS, false);
}

/// Adds `add` to slice `epoch`'s word. A slot that holds a later slice is
/// left alone (another thread already moved on: dropping the count only
/// makes the budget stricter); one that holds a slice that has left the
/// window starts anew with `epoch` when `start` is set (a deposit at the
/// current slice), else is left alone (a credit to a slice long gone).
#[inline]
fn add_to_slice(ring: &[AtomicU64; BUCKETS], epoch: u64, add: u64, start: bool) {
    let slot = &ring[(epoch % BUCKETS as u64) as usize];
    let want = epoch & TAG_MASK;
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        let tag = cur >> TAG_SHIFT;
        let new = if tag == want {
            match plus(cur, add) {
                Some(new) => new,
                None => return,
            }
        } else if start && !is_later_slice(tag.wrapping_sub(want) & TAG_MASK) {
            (want << TAG_SHIFT) | add
        } else {
            return;
        };
        match slot.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// A slice's word with `add` counted, each count saturating on its own
/// (stricter, never wrong); `None` when nothing changes.
#[inline]
fn plus(cur: u64, add: u64) -> Option<u64> {
    let requests = ((cur & COUNT_MAX) + (add & COUNT_MAX)).min(COUNT_MAX);
    let successes = ((cur >> COUNT_BITS & COUNT_MAX) + (add >> COUNT_BITS)).min(COUNT_MAX);
    let new = (cur >> TAG_SHIFT) << TAG_SHIFT | successes << COUNT_BITS | requests;
    (new != cur).then_some(new)
}

/// Whether a failure of the dependency may be retried (see
/// [`RetryBudget::failure_retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureRetry {
    /// Retries of failures save their requests: retried as any.
    Saves,
    /// They do not, and this one is retried to tell when they do again,
    /// on the budget's share of requests and floor only.
    Probe,
    /// They do not: not retried.
    Futile,
}

/// Why a retry after a timeout was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutRefusal {
    /// Timeouts are common: none is retried.
    Common,
    /// The budget has no retry left.
    Budget,
}

/// A request counted by [`RetryBudget::deposit_request`]: where to credit
/// its success. Crediting consumes it, so a request is credited once.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestTicket {
    epoch: u64,
}

impl RequestTicket {
    /// The window slice the request was counted in.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ticket of a request counted in slice `epoch`.
    pub(crate) fn in_slice(epoch: u64) -> RequestTicket {
        RequestTicket { epoch }
    }
}

impl RetryBudget {
    /// Takes one retry from the budget, if the rule allows it.
    pub fn try_withdraw(&self) -> Option<Withdrawal> {
        self.try_withdraw_at(crate::clock::edge_now())
    }

    /// [`try_withdraw`](Self::try_withdraw) at `now`.
    pub(crate) fn try_withdraw_at(&self, now: Instant) -> Option<Withdrawal> {
        self.withdraw_at(now, true)
    }

    /// Takes one retry of an answer that said the dependency is busy (an
    /// overload answer, or one that asked for a wait), from the budget
    /// without the share of succeeded requests: that share is for failures
    /// a retry saves (some calls failing while the rest succeed), where a
    /// busy dependency's answers are its capacity or its quota, and a retry
    /// there takes another request's place. At most `ratio` of the
    /// requests and the floor (5 % + 10 a second by default).
    pub(crate) fn try_withdraw_busy(&self) -> Option<Withdrawal> {
        self.withdraw_at(crate::clock::edge_now(), false)
    }

    /// Takes one retry for an attempt that timed out, only while timeouts
    /// are rare: at most `ratio` of the window's requests timed out (5 % by
    /// default). Beyond that the dependency is slow for everyone, not in
    /// its tail: a retry cannot be faster, and it adds load to a dependency
    /// that has none to spare (a timed-out call may still be running
    /// there).
    ///
    /// While retries of failures save nothing (see
    /// [`failure_retry`](Self::failure_retry)), such a retry too draws on
    /// the budget's share of requests and its floor only: the successes'
    /// credit is for retries that save requests.
    pub(crate) fn try_withdraw_after_timeout(&self) -> Result<Withdrawal, TimeoutRefusal> {
        let now = crate::clock::edge_now();
        match self.inner.judge_timeouts(self.inner.epoch(now)) {
            true => Err(TimeoutRefusal::Common),
            false => self
                .withdraw_at(now, !self.retries_futile())
                .ok_or(TimeoutRefusal::Budget),
        }
    }

    /// Whether retries after failures have lately saved fewer than 1 in 10
    /// of their requests. A judgement that no retry has confirmed for a
    /// whole window (10 s by default: the failures since were too rare to
    /// probe, or an open breaker refused the retries) is forgotten, and
    /// retries are taken to save requests again: a dependency that failed
    /// for a while and then only now and then has its occasional failures
    /// retried, not 1 in 8 of them for as long as no probe succeeds.
    fn retries_futile(&self) -> bool {
        self.inner.retry_yield_ppm.load(Ordering::Relaxed) < FUTILE_YIELD_PPM && {
            let now = self.inner.epoch(crate::clock::edge_now());
            let last = self.inner.yield_slice.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= BUCKETS as u64 {
                self.inner.retry_yield_ppm.store(PPM, Ordering::Relaxed);
                false
            } else {
                true
            }
        }
    }

    /// Counts an attempt that timed out, and judges whether timeouts are
    /// common now.
    pub(crate) fn deposit_timeout(&self) {
        let epoch = self.inner.epoch(crate::clock::edge_now());
        bump(&self.inner.timeouts, epoch, ONE_REQUEST);
        self.inner.judge_timeouts(epoch);
    }

    stacks_only! {
        /// Whether timeouts are common now (the opposite of
        /// [`may_retry_timeout`](Self::may_retry_timeout)), for an attempt
        /// timeout below to ask as its timer fires.
        pub(crate) fn timeouts_signal(&self) -> crate::deadline::RetrySignal {
            let budget = self.clone();
            std::sync::Arc::new(move || {
                // With the attempt asking counted: the timeout that makes
                // them common is not cut either.
                !budget.may_retry_timeout() || {
                    let inner = &budget.inner;
                    inner.common_with(inner.epoch(crate::clock::edge_now()), 1)
                }
            })
        }
    }

    /// Whether a timeout may be retried now (timeouts were rare when last
    /// judged, or were common in a slice that has passed and are rare
    /// again): one load, no lock, no clock read while timeouts are rare;
    /// asked as each attempt is made.
    #[inline]
    pub(crate) fn may_retry_timeout(&self) -> bool {
        let judged = self.inner.timeouts_common.load(Ordering::Relaxed);
        judged == 0 || self.inner.judge_again(judged)
    }

    fn withdraw_at(&self, now: Instant, with_successes: bool) -> Option<Withdrawal> {
        let mut ring = self.inner.lock();
        // A thread that read the clock before another's withdrawal counts
        // at the later slice: it never resets a newer slot.
        let epoch = self.inner.epoch(now).max(ring.latest);
        ring.latest = epoch;
        let (requests, successes) = self.inner.counted(epoch);
        let successes = if with_successes { successes } else { 0 };
        let retries = ring.sum(epoch);
        if !self.inner.allows(requests, successes, retries + 1) {
            return None;
        }
        let i = (epoch % BUCKETS as u64) as usize;
        if ring.epochs[i] != epoch {
            ring.epochs[i] = epoch;
            ring.counts[i] = 0;
        }
        ring.counts[i] += 1;
        Some(Withdrawal { epoch })
    }

    /// Hands back a retry that was granted but not made. A no-op once the
    /// bucket it was taken from has left the window.
    pub fn refund(&self, withdrawal: Withdrawal) {
        let mut ring = self.inner.lock();
        let i = (withdrawal.epoch % BUCKETS as u64) as usize;
        if ring.epochs[i] == withdrawal.epoch {
            ring.counts[i] = ring.counts[i].saturating_sub(1);
        }
    }

    /// The current window's figures.
    pub fn snapshot(&self) -> BudgetSnapshot {
        self.snapshot_at(crate::clock::now())
    }

    /// [`snapshot`](Self::snapshot) at `now`.
    pub(crate) fn snapshot_at(&self, now: Instant) -> BudgetSnapshot {
        let epoch = self.inner.epoch(now);
        let (requests, successes) = self.inner.counted(epoch);
        let retries = self.inner.lock().sum(epoch);
        let allowance = self.inner.allowance_ppm(requests, successes) / PPM;
        BudgetSnapshot {
            requests,
            retries,
            available: allowance.saturating_sub(retries),
        }
    }
}

impl Inner {
    /// A request succeeded: a run of busy answers is over.
    #[inline]
    fn succeeded(&self) {
        if self.busy_since_success.load(Ordering::Relaxed) != 0 {
            self.busy_since_success.store(0, Ordering::Relaxed);
        }
    }

    #[inline]
    fn epoch(&self, now: Instant) -> u64 {
        // u64 nanoseconds cover 584 years; a u64 division is much cheaper
        // than a u128 one on the per-request path.
        let since = crate::clock::nanos_between(self.start, now);
        since / self.bucket_nanos
    }

    /// Whether more than `ratio` of the window's requests at `epoch` timed
    /// out; stored for [`RetryBudget::may_retry_timeout`].
    #[inline(never)]
    fn judge_timeouts(&self, epoch: u64) -> bool {
        let common = self.common_with(epoch, 0);
        let mark = if common { epoch + 1 } else { 0 };
        if self.timeouts_common.load(Ordering::Relaxed) != mark {
            let before = self.timeouts_common.swap(mark, Ordering::Relaxed);
            if (before != 0) != common {
                self.report_timeouts(common);
            }
        }
        common
    }

    /// Tells the watching layer's observer that timeouts became common (or
    /// rare again).
    #[cold]
    fn report_timeouts(&self, common: bool) {
        use crate::observe::{EventKind, LayerKind, State};
        if let Some((observer, name)) = self.watch.get() {
            let (from, to) = if common {
                (State::TimeoutsRare, State::TimeoutsCommon)
            } else {
                (State::TimeoutsCommon, State::TimeoutsRare)
            };
            observer.emit(
                LayerKind::Retry,
                name.as_str(),
                EventKind::StateChanged {
                    from,
                    to,
                    failure_rate: None,
                    slow_call_rate: None,
                },
            );
        }
    }

    /// Whether timeouts are common at `epoch`, with `extra` more counted.
    fn common_with(&self, epoch: u64, extra: u64) -> bool {
        let (timeouts, _) = count_recent(&self.timeouts, epoch, RECENT_SLICES);
        let timeouts = timeouts + extra;
        // A couple of timeouts are a tail at any traffic (a service of 2
        // requests a second with one hung call is not slow for everyone).
        let floor = TIMEOUTS_FLOOR;
        timeouts > floor && {
            let (requests, _) = count_recent(&self.counts, epoch, RECENT_SLICES);
            (timeouts - floor).saturating_mul(PPM)
                > self
                    .ratio_ppm
                    .load(Ordering::Relaxed)
                    .saturating_mul(requests)
        }
    }

    /// Timeouts were judged common in slice `judged - 1`: judged again once
    /// a later slice has begun (old timeouts leave with their slice);
    /// whether a timeout may be retried. Out of line: only while timeouts
    /// are common.
    #[cold]
    #[inline(never)]
    fn judge_again(&self, judged: u64) -> bool {
        let epoch = self.epoch(crate::clock::edge_now());
        epoch >= judged && !self.judge_timeouts(epoch)
    }

    /// The requests and the succeeded requests in the window at `epoch`
    /// (no successes for a plain budget).
    fn counted(&self, epoch: u64) -> (u64, u64) {
        let (requests, successes) = count_in_window(&self.counts, epoch);
        if self.success_ratio_ppm.load(Ordering::Relaxed) == 0 {
            return (requests, 0);
        }
        (requests, successes)
    }

    #[inline]
    fn allowance_ppm(&self, requests: u64, successes: u64) -> u64 {
        self.floor
            .load(Ordering::Relaxed)
            .saturating_mul(PPM)
            .saturating_add(
                self.ratio_ppm
                    .load(Ordering::Relaxed)
                    .saturating_mul(requests),
            )
            .saturating_add(
                self.success_ratio_ppm
                    .load(Ordering::Relaxed)
                    .saturating_mul(successes),
            )
    }

    #[inline]
    fn allows(&self, requests: u64, successes: u64, retries: u64) -> bool {
        retries.saturating_mul(PPM) <= self.allowance_ppm(requests, successes)
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.withdrawals.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The requests and succeeded requests of the slices of `ring` in the
/// window at `epoch`.
fn count_in_window(ring: &[AtomicU64; BUCKETS], epoch: u64) -> (u64, u64) {
    count_recent(ring, epoch, BUCKETS as u64)
}

/// The counts of the last `slices` slices of `ring` at `epoch` (this one
/// included).
fn count_recent(ring: &[AtomicU64; BUCKETS], epoch: u64, slices: u64) -> (u64, u64) {
    let want = epoch & TAG_MASK;
    ring.iter()
        .enumerate()
        .map(|(i, d)| {
            let v = d.load(Ordering::Relaxed);
            // Slices before this one, the word's: in the window below
            // `BUCKETS` (a later slice's word is far off modulo the tag),
            // and only if that slice belongs in this slot (an old word
            // whose tag happens to match is told apart by its slot).
            let age = want.wrapping_sub(v >> TAG_SHIFT) & TAG_MASK;
            if age < slices && epoch >= age && ((epoch - age) % BUCKETS as u64) as usize == i {
                (v & COUNT_MAX, v >> COUNT_BITS & COUNT_MAX)
            } else {
                (0, 0)
            }
        })
        .fold((0, 0), |(r, s), (dr, ds)| (r + dr, s + ds))
}

impl Ring {
    fn sum(&self, epoch: u64) -> u64 {
        self.epochs
            .iter()
            .zip(self.counts.iter())
            .filter(|(e, _)| **e <= epoch && epoch - **e < BUCKETS as u64)
            .map(|(_, c)| *c)
            .sum()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio_ppm", &self.ratio_ppm())
            .field("floor", &self.floor())
            .field("window", &self.inner.window)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timeouts are common past 2 plus `ratio` of the last two slices'
    /// requests; a timeout retry is refused then, and may be retried again
    /// once a later slice finds them rare.
    #[tokio::test(start_paused = true)]
    async fn timeouts_are_retried_while_rare() {
        let b = RetryBudget::adaptive(0.05, 0.5, 10, Duration::from_secs(10)).unwrap();
        for _ in 0..200 {
            b.deposit_succeeded();
        }
        // 2 + 5 % of 200 = 12 timeouts are rare; the 13th is not.
        for n in 1..=12 {
            b.deposit_timeout();
            assert!(b.may_retry_timeout(), "{n}");
            assert!(b.try_withdraw_after_timeout().is_ok(), "{n}");
        }
        b.deposit_timeout();
        assert!(!b.may_retry_timeout());
        assert_eq!(b.try_withdraw_after_timeout(), Err(TimeoutRefusal::Common));
        // Other retries are not refused for it.
        assert!(b.try_withdraw().is_some());
        // Two slices later the timeouts have left the span judged (the
        // requests too: none are needed for none to be common).
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!b.may_retry_timeout(), "still in the span");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.may_retry_timeout());
        // At 2 requests a second, one hung call is a tail: retried; a third
        // timeout in the span is not.
        let quiet = RetryBudget::adaptive(0.05, 0.5, 10, Duration::from_secs(10)).unwrap();
        for _ in 0..4 {
            quiet.deposit_succeeded();
        }
        quiet.deposit_timeout();
        quiet.deposit_timeout();
        assert!(quiet.may_retry_timeout());
        quiet.deposit_timeout();
        assert!(!quiet.may_retry_timeout());
    }

    fn budget(ratio: f64, min: u32) -> (RetryBudget, Instant) {
        let b = RetryBudget::new(ratio, min, Duration::from_secs(10)).unwrap();
        let t0 = b.inner.start;
        (b, t0)
    }

    fn drain(b: &RetryBudget, now: Instant) -> u64 {
        let mut n = 0;
        while b.try_withdraw_at(now).is_some() {
            n += 1;
        }
        n
    }

    #[test]
    fn floor_alone_is_min_per_sec_times_window() {
        let (b, t0) = budget(0.1, 10);
        assert_eq!(b.floor(), 100);
        assert_eq!(drain(&b, t0), 100);
    }

    #[test]
    fn ratio_of_requests_plus_floor() {
        let (b, t0) = budget(0.1, 10);
        for _ in 0..10_000 {
            b.deposit_at(t0);
        }
        assert_eq!(b.snapshot_at(t0).available, 1_100);
        assert_eq!(drain(&b, t0), 1_100);
        let s = b.snapshot_at(t0);
        assert_eq!((s.requests, s.retries, s.available), (10_000, 1_100, 0));
    }

    #[test]
    fn window_slides_and_refills() {
        let (b, t0) = budget(0.5, 0);
        for _ in 0..10 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0), 5);
        // 9.9 s later, still the same window.
        let t1 = t0 + Duration::from_millis(9_900);
        assert_eq!(drain(&b, t1), 0);
        // 10 s later, the first bucket left: no requests, no retries.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(
            b.snapshot_at(t2),
            BudgetSnapshot {
                requests: 0,
                retries: 0,
                available: 0
            }
        );
        for _ in 0..4 {
            b.deposit_at(t2);
        }
        assert_eq!(drain(&b, t2), 2);
    }

    #[test]
    fn refund_gives_the_retry_back_within_the_window() {
        let (b, t0) = budget(0.0, 1);
        let w: Vec<_> = (0..10).map(|_| b.try_withdraw_at(t0).unwrap()).collect();
        assert!(b.try_withdraw_at(t0).is_none());
        b.refund(w[0]);
        assert_eq!(b.snapshot_at(t0).available, 1);
        assert!(b.try_withdraw_at(t0).is_some());
    }

    /// Counts `failed` requests and `succeeded` ones (as `deposit_succeeded`
    /// does) at `b`'s start, and returns that instant.
    fn counted_at_start(b: &RetryBudget, failed: usize, succeeded: usize) -> Instant {
        let t0 = b.inner.start;
        for _ in 0..failed {
            b.deposit_at(t0);
        }
        for _ in 0..succeeded {
            bump(
                &b.inner.counts,
                b.inner.epoch(t0),
                ONE_REQUEST | ONE_SUCCESS,
            );
        }
        t0
    }

    #[test]
    fn a_succeeded_request_counts_as_a_request_and_a_success_in_one_word() {
        let b = RetryBudget::adaptive(0.1, 0.5, 0, Duration::from_secs(10)).unwrap();
        let t0 = counted_at_start(&b, 100, 100);
        let epoch = b.inner.epoch(t0);
        assert_eq!(b.inner.counted(epoch), (200, 100));
        // 0.1 × 200 + 0.5 × 100.
        assert_eq!(b.snapshot_at(t0).available, 70);
        // A ticket credits the slice it was counted in.
        let ticket = RequestTicket { epoch };
        b.credit_success(ticket);
        assert_eq!(b.inner.counted(epoch), (200, 101));
        // A plain budget counts no successes.
        let plain = RetryBudget::new(0.1, 0, Duration::from_secs(10)).unwrap();
        plain.credit_success(RequestTicket {
            epoch: plain.inner.epoch(plain.inner.start),
        });
        assert_eq!(
            plain.inner.counted(plain.inner.epoch(plain.inner.start)),
            (0, 0)
        );
    }

    #[test]
    fn a_busy_answer_is_retried_without_the_share_of_successes() {
        let b = RetryBudget::adaptive(0.05, 0.5, 1, Duration::from_secs(10)).unwrap();
        // 300 requests, 200 of them succeeded.
        let t0 = counted_at_start(&b, 100, 200);
        // 0.05 × 300 + 1 × 10 for a busy answer's retries: 25.
        let busy = std::iter::from_fn(|| b.withdraw_at(t0, false)).count();
        assert_eq!(busy, 25);
        // Others take the share of successes too: 0.05 × 300 + 0.5 × 200 +
        // 10 = 125, of which the busy answers' 25 are taken.
        assert_eq!(std::iter::from_fn(|| b.try_withdraw_at(t0)).count(), 100);
        assert!(b.withdraw_at(t0, false).is_none());
    }

    #[test]
    fn each_count_of_a_slice_saturates_on_its_own() {
        let (b, t0) = budget(0.1, 0);
        let epoch = b.inner.epoch(t0);
        let slot = &b.inner.counts[(epoch % BUCKETS as u64) as usize];
        slot.store(epoch << TAG_SHIFT | (COUNT_MAX - 1), Ordering::Relaxed);
        for _ in 0..3 {
            bump(&b.inner.counts, epoch, ONE_REQUEST | ONE_SUCCESS);
        }
        // The requests stop at the maximum and never carry into the
        // successes; the successes go on counting.
        assert_eq!(count_in_window(&b.inner.counts, epoch), (COUNT_MAX, 3));
        assert_eq!(slot.load(Ordering::Relaxed) >> TAG_SHIFT, epoch);
    }

    #[test]
    fn slices_are_told_apart_after_long_idle_times_and_old_tickets_change_nothing() {
        // 1 ms slices: the word's 20-bit tag wraps after 17.5 minutes.
        let b = RetryBudget::adaptive(0.5, 0.5, 0, RetryBudget::MIN_WINDOW).unwrap();
        let t0 = b.inner.start;
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        let old = b.inner.epoch(t0);
        for idle_ms in [15, 600_000, 1 << 20, 2_000_000] {
            let t = t0 + Duration::from_millis(idle_ms);
            assert_eq!(b.snapshot_at(t).requests, 0, "after {idle_ms} ms");
            for _ in 0..10 {
                b.deposit_at(t);
            }
            assert_eq!(b.snapshot_at(t).requests, 10, "after {idle_ms} ms");
            // A ticket of a slice whose slot moved on credits nothing.
            b.credit_success(RequestTicket { epoch: old });
            assert_eq!(
                b.inner.counted(b.inner.epoch(t)),
                (10, 0),
                "after {idle_ms} ms"
            );
        }
    }

    #[test]
    fn a_withdrawal_on_a_stale_clock_read_never_resets_a_newer_slot() {
        let (b, t0) = budget(0.0, 10);
        let t10 = t0 + Duration::from_secs(10);
        // Slices 10 and 0 share a slot.
        assert!(b.try_withdraw_at(t10).is_some());
        assert!(b.try_withdraw_at(t10).is_some());
        // A thread that read the clock at `t0` withdraws after them.
        assert!(b.try_withdraw_at(t0).is_some());
        assert_eq!(b.snapshot_at(t10).retries, 3);
    }

    #[test]
    fn only_a_word_one_or_two_laps_ahead_is_a_later_slice() {
        assert!(is_later_slice(BUCKETS as u64));
        assert!(is_later_slice(2 * BUCKETS as u64));
        for lead in [0, 1, 9, 11, 3 * BUCKETS as u64, 1024, TAG_MASK] {
            assert!(!is_later_slice(lead), "{lead}");
        }
    }

    #[test]
    fn validation() {
        assert!(RetryBudget::new(-0.1, 10, Duration::from_secs(10)).is_err());
        assert!(RetryBudget::new(1.5, 10, Duration::from_secs(10)).is_err());
        assert!(RetryBudget::new(f64::NAN, 10, Duration::from_secs(10)).is_err());
        assert!(RetryBudget::new(0.1, 10, Duration::from_millis(5)).is_err());
        assert!(RetryBudget::new(0.1, 10, Duration::from_secs(3601)).is_err());
        assert!(RetryBudget::new(0.0, 0, Duration::from_millis(10)).is_ok());
        // 10 a second over 10 ms rounds to no retry: refused, not a floor
        // of none; 50 a second is one.
        let e = RetryBudget::new(0.05, 10, Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("less than one retry"), "{e}");
        assert!(RetryBudget::new(0.05, 50, Duration::from_millis(20)).is_ok());
        let b = RetryBudget::new(0.05, 50, Duration::from_millis(20)).unwrap();
        assert!(b.set_ratios(0.05, 0.0, 10).is_err());
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let (b, t0) = budget(0.1, 0);
        for _ in 0..1_000 {
            b.deposit_at(t0);
        }
        let granted = std::sync::Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let b = b.clone();
                let g = granted.clone();
                s.spawn(move || {
                    for _ in 0..100 {
                        if b.try_withdraw_at(t0).is_some() {
                            g.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 100);
    }
}
