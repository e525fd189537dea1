//! Sliding windows of call outcomes, free of tower types.
//!
//! Two kinds, both lock-free when recording and O(1) per call and per read:
//!
//! - [`CountWindow`]: exactly the last `n` calls. A ring of one-byte outcome
//!   slots written at a `fetch_add` cursor; the running totals (calls,
//!   failures, slow calls, packed in one `AtomicU64`) change only by the
//!   difference between the outcome written and the one it evicts, so a
//!   success replacing a success writes nothing but the cursor.
//! - [`TimeWindow`]: the calls of the last `T`, kept in a ring of buckets of
//!   `T / buckets` each, with running totals. When time moves to a new bucket,
//!   a short mutex section resets the stale buckets it passes over (at most the
//!   number of buckets, whatever `T` and the call rate) and subtracts what they
//!   held from the totals.
//!
//! Totals stay exact under concurrency: every change to a slot or bucket is
//! made with an atomic read-modify-write and its exact difference is applied
//! to the totals, additions before the write that publishes them and
//! subtractions after the write that removes them, so a total never dips below
//! what its slots hold.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The counts of a window at one moment, and the rates derived from them.
///
/// ```
/// use seawall::circuit_breaker::WindowSnapshot;
///
/// let s = WindowSnapshot::default();
/// assert_eq!((s.calls, s.failures, s.slow_calls), (0, 0, 0));
/// assert_eq!(s.failure_rate(), None); // no calls yet
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WindowSnapshot {
    /// Calls recorded in the window.
    pub calls: u64,
    /// Of those, calls classified as failures.
    pub failures: u64,
    /// Of those, calls that took longer than the slow-call duration (whatever
    /// their outcome).
    pub slow_calls: u64,
}

impl WindowSnapshot {
    /// `failures / calls`, or `None` when the window is empty.
    pub fn failure_rate(&self) -> Option<f64> {
        rate(self.failures, self.calls)
    }

    /// `slow_calls / calls`, or `None` when the window is empty.
    pub fn slow_call_rate(&self) -> Option<f64> {
        rate(self.slow_calls, self.calls)
    }
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    if whole == 0 {
        None
    } else {
        Some(part as f64 / whole as f64)
    }
}

/// One outcome, as stored in a slot: bit 0 = a call is recorded, bit 1 =
/// failure, bit 2 = slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code(u8);

impl Code {
    #[inline]
    pub(crate) fn new(failure: bool, slow: bool) -> Self {
        Code(1 | (failure as u8) << 1 | (slow as u8) << 2)
    }
}

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// The largest count-based window (it leaves each packed total room for the
/// calls in flight between its two updates).
pub(crate) const MAX_COUNT_WINDOW: u32 = 1_000_000;

/// The packed contribution of one slot value to the totals.
#[inline]
fn contrib(code: u8) -> u64 {
    let c = code as u64;
    (c & 1) | ((c >> 1) & 1) << FIELD_BITS | ((c >> 2) & 1) << (2 * FIELD_BITS)
}

/// Exactly the last `n` calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    cursor: Padded<AtomicUsize>,
    /// calls | failures << 21 | slow << 42
    totals: Padded<AtomicU64>,
}

impl CountWindow {
    /// A window of the last `size` calls (`1..=MAX_COUNT_WINDOW`, clamped).
    pub(crate) fn new(size: u32) -> Self {
        let size = size.clamp(1, MAX_COUNT_WINDOW) as usize;
        CountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            cursor: Padded(AtomicUsize::new(0)),
            totals: Padded(AtomicU64::new(0)),
        }
    }

    /// The window's size.
    pub(crate) fn size(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Records one call, evicting the oldest once the window is full.
    #[inline]
    pub(crate) fn record(&self, code: Code) {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        if slot.load(Ordering::Relaxed) == code.0 {
            // The evicted outcome equals the new one: nothing changes.
            return;
        }
        self.totals.fetch_add(contrib(code.0), Ordering::AcqRel);
        let old = slot.swap(code.0, Ordering::AcqRel);
        if old != 0 {
            self.totals.fetch_sub(contrib(old), Ordering::AcqRel);
        }
    }

    /// The counts now.
    #[inline]
    pub(crate) fn snapshot(&self) -> WindowSnapshot {
        let v = self.totals.load(Ordering::Acquire);
        // Between a call's two total updates a count may read one high; clamp.
        let calls = (v & FIELD_MASK).min(self.size());
        WindowSnapshot {
            calls,
            failures: ((v >> FIELD_BITS) & FIELD_MASK).min(calls),
            slow_calls: ((v >> (2 * FIELD_BITS)) & FIELD_MASK).min(calls),
        }
    }

    /// Empties the window. O(n); called on state transitions only.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            if slot.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                self.totals.fetch_sub(contrib(old), Ordering::AcqRel);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl Counts {
    #[inline]
    fn add(&self, code: Code) {
        self.calls.fetch_add(1, Ordering::AcqRel);
        if code.0 & 2 != 0 {
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        if code.0 & 4 != 0 {
            self.slow.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The calls of the last `T`, in a ring of buckets.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    origin: Instant,
    bucket_nanos: i64,
    buckets: Box<[Counts]>,
    /// The newest bucket's epoch (bucket-width ticks since `origin`); starts
    /// far in the past, so the first call resets every bucket once.
    head: Padded<AtomicI64>,
    totals: Padded<Counts>,
    rotate: Mutex<()>,
}

impl TimeWindow {
    /// A window of `span` in `buckets` buckets (both at least 1; the bucket
    /// width is at least 1 ns).
    pub(crate) fn new(origin: Instant, span: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let nanos = i64::try_from(span.as_nanos()).unwrap_or(i64::MAX);
        let bucket_nanos = (nanos / buckets as i64).max(1);
        TimeWindow {
            origin,
            bucket_nanos,
            buckets: (0..buckets).map(|_| Counts::default()).collect(),
            head: Padded(AtomicI64::new(i64::MIN / 4)),
            totals: Padded(Counts::default()),
            rotate: Mutex::new(()),
        }
    }

    #[inline]
    fn epoch(&self, now: Instant) -> i64 {
        // Signed: instants before the origin (a layer built before a paused
        // test runtime started, say) stay ordered.
        let nanos = crate::clock::signed_nanos(self.origin, now);
        if nanos >= 0 {
            // The usual case, in unsigned arithmetic (no sign fix-ups).
            (nanos as u64 / self.bucket_nanos as u64) as i64
        } else {
            nanos.div_euclid(self.bucket_nanos)
        }
    }

    /// The bucket of `epoch` in the ring.
    #[inline]
    fn bucket(&self, epoch: i64) -> &Counts {
        let n = self.buckets.len();
        let i = if epoch >= 0 {
            (epoch as u64 % n as u64) as usize
        } else {
            epoch.rem_euclid(n as i64) as usize
        };
        &self.buckets[i]
    }

    /// Moves the head to `epoch`, resetting the buckets passed over.
    fn advance(&self, epoch: i64) {
        let _guard = self.rotate.lock().unwrap_or_else(|p| p.into_inner());
        let head = self.head.load(Ordering::Acquire);
        if epoch <= head {
            return;
        }
        let n = self.buckets.len() as i64;
        let steps = epoch.saturating_sub(head).min(n);
        for ep in (epoch - steps + 1)..=epoch {
            self.drain(self.bucket(ep));
        }
        self.head.store(epoch, Ordering::Release);
    }

    #[inline]
    fn current(&self, now: Instant) -> i64 {
        let epoch = self.epoch(now);
        let head = self.head.load(Ordering::Acquire);
        if epoch > head {
            self.advance(epoch);
            epoch
        } else if head - epoch >= self.buckets.len() as i64 {
            // A clock read that lagged a whole window behind: count it now.
            head
        } else {
            epoch
        }
    }

    /// Records one call made at `now`.
    #[inline(always)]
    pub(crate) fn record(&self, now: Instant, code: Code) {
        let epoch = self.current(now);
        let b = self.bucket(epoch);
        // Totals first, bucket second: a reset that takes the bucket's count
        // subtracts only what was already added.
        self.totals.add(code);
        b.add(code);
    }

    /// The counts of the window ending at `now`.
    #[inline]
    pub(crate) fn snapshot(&self, now: Instant) -> WindowSnapshot {
        let _ = self.current(now);
        self.totals()
    }

    /// The counts as they stand, without moving the window: right after a
    /// [`record`](Self::record), which moved it already.
    #[inline]
    fn totals(&self) -> WindowSnapshot {
        let calls = self.totals.calls.load(Ordering::Acquire);
        WindowSnapshot {
            calls,
            failures: self.totals.failures.load(Ordering::Acquire).min(calls),
            slow_calls: self.totals.slow.load(Ordering::Acquire).min(calls),
        }
    }

    /// Empties the window. O(buckets); called on state transitions only.
    pub(crate) fn reset(&self) {
        let _guard = self.rotate.lock().unwrap_or_else(|p| p.into_inner());
        for b in self.buckets.iter() {
            self.drain(b);
        }
    }

    /// Empties one bucket out of the totals. Same discipline as the count
    /// window: take exactly what the bucket held, then subtract exactly that.
    /// Under the rotation lock.
    fn drain(&self, b: &Counts) {
        let c = b.calls.swap(0, Ordering::AcqRel);
        let f = b.failures.swap(0, Ordering::AcqRel);
        let s = b.slow.swap(0, Ordering::AcqRel);
        self.totals.calls.fetch_sub(c, Ordering::AcqRel);
        self.totals.failures.fetch_sub(f, Ordering::AcqRel);
        self.totals.slow.fetch_sub(s, Ordering::AcqRel);
    }
}

/// Keeps a hot atomic on a cache line of its own (two lines, for adjacent-line
/// prefetchers), so threads writing one do not slow down readers of another.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Either window.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    #[inline]
    pub(crate) fn snapshot(&self, now: Instant) -> WindowSnapshot {
        match self {
            Window::Count(w) => w.snapshot(),
            Window::Time(w) => w.snapshot(now),
        }
    }

    /// Records one call made at `now` and returns the counts with it.
    // Always: on the success path of every call (the compiler's own choice
    // moves with unrelated code and cost up to 36 instructions per call).
    #[inline(always)]
    pub(crate) fn record_and_snapshot(&self, now: Instant, code: Code) -> WindowSnapshot {
        match self {
            Window::Count(w) => {
                w.record(code);
                w.snapshot()
            }
            Window::Time(w) => {
                w.record(now, code);
                w.totals()
            }
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Code = Code(1);
    const FAIL: Code = Code(3);
    const SLOW: Code = Code(5);

    #[test]
    fn count_window_slides() {
        let w = CountWindow::new(10);
        for _ in 0..1000 {
            w.record(OK);
        }
        assert_eq!(w.snapshot().calls, 10);
        for i in 1..=5 {
            w.record(FAIL);
            assert_eq!(w.snapshot().failures, i);
        }
        assert_eq!(w.snapshot().failure_rate(), Some(0.5));
        for _ in 0..10 {
            w.record(SLOW);
        }
        assert_eq!(
            w.snapshot(),
            WindowSnapshot {
                calls: 10,
                failures: 0,
                slow_calls: 10
            }
        );
        w.reset();
        assert_eq!(w.snapshot(), WindowSnapshot::default());
    }

    #[test]
    fn count_window_partially_filled() {
        let w = CountWindow::new(100);
        w.record(OK);
        w.record(FAIL);
        w.record(Code::new(true, true));
        assert_eq!(
            w.snapshot(),
            WindowSnapshot {
                calls: 3,
                failures: 2,
                slow_calls: 1
            }
        );
    }

    #[test]
    fn time_window_totals_stay_exact_while_buckets_rotate_under_contention() {
        let t0 = Instant::now();
        let w = std::sync::Arc::new(TimeWindow::new(t0, Duration::from_millis(10), 10));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        // Each thread walks its own clock (1 µs a call, offset
                        // per thread), so buckets rotate while others record,
                        // and some records arrive late.
                        let now = t0 + Duration::from_micros(i + t * 300);
                        w.record(now, Code::new(i % 3 == 0, i % 5 == 0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sum = |f: fn(&Counts) -> &AtomicU64| -> u64 {
            w.buckets.iter().map(|b| f(b).load(Ordering::Relaxed)).sum()
        };
        assert_eq!(w.totals.calls.load(Ordering::Relaxed), sum(|c| &c.calls));
        assert_eq!(
            w.totals.failures.load(Ordering::Relaxed),
            sum(|c| &c.failures)
        );
        assert_eq!(w.totals.slow.load(Ordering::Relaxed), sum(|c| &c.slow));
        // Once everything has aged out, the totals are exactly zero (no
        // underflow, nothing left behind).
        let later = t0 + Duration::from_secs(10);
        assert_eq!(w.snapshot(later), WindowSnapshot::default());
        assert_eq!(w.totals.calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn count_window_totals_match_its_slots_under_contention() {
        let w = std::sync::Arc::new(CountWindow::new(7));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..100_000u64 {
                        w.record(Code::new((i + t) % 3 == 0, (i * t) % 4 == 0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut expected = WindowSnapshot::default();
        for slot in w.slots.iter() {
            let v = slot.load(Ordering::Relaxed);
            expected.calls += (v & 1) as u64;
            expected.failures += ((v >> 1) & 1) as u64;
            expected.slow_calls += ((v >> 2) & 1) as u64;
        }
        assert_eq!(expected.calls, 7);
        assert_eq!(w.snapshot(), expected);
        assert_eq!(w.totals.load(Ordering::Relaxed), {
            expected.calls
                | expected.failures << FIELD_BITS
                | expected.slow_calls << (2 * FIELD_BITS)
        });
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_handles_instants_before_its_origin() {
        let t0 = Instant::now();
        // Built "later" than the clock reads it will see.
        let w = TimeWindow::new(t0 + Duration::from_secs(5), Duration::from_secs(10), 10);
        w.record(t0, FAIL);
        assert_eq!(w.snapshot(t0).failures, 1);
        assert_eq!(w.snapshot(t0 + Duration::from_millis(9_999)).failures, 1);
        assert_eq!(w.snapshot(t0 + Duration::from_secs(10)).failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_old_buckets() {
        let t0 = Instant::now();
        let w = TimeWindow::new(t0, Duration::from_secs(10), 10);
        w.record(t0, FAIL);
        w.record(t0 + Duration::from_millis(4500), OK);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(w.snapshot(at(9_999)).calls, 2);
        assert_eq!(w.snapshot(at(9_999)).failures, 1);
        // Bucket [0 s, 1 s) leaves the window at 10 s.
        assert_eq!(w.snapshot(at(10_000)).failures, 0);
        assert_eq!(w.snapshot(at(10_000)).calls, 1);
        // The call at 4.5 s sits in bucket [4 s, 5 s), which leaves at 14 s.
        assert_eq!(w.snapshot(at(13_999)).calls, 1);
        assert_eq!(w.snapshot(at(14_000)).calls, 0);
        // A jump far ahead resets at most every bucket once.
        w.record(at(1_000_000), SLOW);
        assert_eq!(w.snapshot(at(1_000_000)).slow_calls, 1);
        w.reset();
        assert_eq!(w.snapshot(at(1_000_000)), WindowSnapshot::default());
    }
}
