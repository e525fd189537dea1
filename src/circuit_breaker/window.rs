//! Sliding windows of call outcomes, free of tower types.
//!
//! Two kinds, both lock-free when recording and O(1) per call (a time
//! window's read sums its lanes: O(thread slots)):
//!
//! - [`CountWindow`]: the last `n` calls. A ring of one-byte outcome slots;
//!   the running totals (calls, failures, slow calls, packed in one
//!   `AtomicU64`) change only by the difference between the outcome written
//!   and the one it evicts, so a success replacing a success writes no
//!   slot and no total. Positions in the ring are handed out in short runs
//!   to each thread slot (see [`crate::stripe`]), which takes one run from
//!   the shared cursor and then counts its calls in its own lane: threads
//!   calling one breaker do not write one cursor on every call. One thread
//!   alone on its lane gets consecutive positions, so its calls fill the
//!   ring in order; with several, at most (lanes × (run − 1)) slots,
//!   positions a lane took but has not used yet, hold a call from one lap
//!   (`n` calls) before, and an emptied window may take as many calls more
//!   than `n` to be full. A run is used up before the next is taken: of two
//!   threads sharing a lane, the one that reaches the run's end takes the
//!   next, the other one position from the cursor, so no run is lost. A run
//!   is at most an eighth of the window shared among the lanes (a window of
//!   100 calls on two lanes: runs of 6), and 1 — the shared cursor on every
//!   call, exactly the last `n` — when the window is too small to share.
//! - [`TimeWindow`]: the calls of the last `T`, kept in a ring of buckets of
//!   `T / buckets` each, with running totals, a ring and totals per thread
//!   slot (a lane), summed where the counts are judged. When time moves to a
//!   new bucket, a short mutex section resets the stale buckets it passes
//!   over in every lane (at most the number of buckets, whatever `T` and the
//!   call rate) and subtracts what they held from the lane's totals.
//!
//! Totals stay exact under concurrency: every change to a slot or bucket is
//! made with an atomic read-modify-write and its exact difference is applied
//! to the totals, additions before the write that publishes them and
//! subtractions after the write that removes them, so a total never dips below
//! what its slots hold.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
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

/// A lane's next position, in its low half.
const LANE_MASK: u64 = u32::MAX as u64;

/// The most positions one run hands a lane.
const MAX_RUN: u32 = 16;

/// The largest count-based window (it leaves each packed total room for the
/// calls in flight between its two updates).
pub(crate) const MAX_COUNT_WINDOW: u32 = 1_000_000;

/// The packed contribution of one slot value to the totals.
#[inline]
fn contrib(code: u8) -> u64 {
    let c = code as u64;
    (c & 1) | ((c >> 1) & 1) << FIELD_BITS | ((c >> 2) & 1) << (2 * FIELD_BITS)
}

/// The last `n` calls (see the [module docs](self) for how positions are
/// handed out).
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    cursor: Padded<AtomicUsize>,
    /// Per thread slot: the end of its run (high 32 bits) and its next
    /// position (low 32 bits; both may pass the ring's end, and wrap when
    /// taken). Empty when runs are of 1.
    lanes: Box<[Padded<AtomicU64>]>,
    /// Positions per run taken from the cursor.
    run: u32,
    /// calls | failures << 21 | slow << 42
    totals: Padded<AtomicU64>,
}

impl CountWindow {
    /// A window of the last `size` calls (`1..=MAX_COUNT_WINDOW`, clamped).
    pub(crate) fn new(size: u32) -> Self {
        Self::with_lanes(size, crate::stripe::stripe_count())
    }

    /// A window of `size` calls shared by `lanes` thread slots.
    fn with_lanes(size: u32, lanes: usize) -> Self {
        let size = size.clamp(1, MAX_COUNT_WINDOW) as usize;
        let lanes = lanes.max(1);
        let run = (size / (8 * lanes)).clamp(1, MAX_RUN as usize) as u32;
        let lanes = if run > 1 { lanes } else { 0 };
        CountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            cursor: Padded(AtomicUsize::new(0)),
            lanes: (0..lanes).map(|_| Padded(AtomicU64::new(0))).collect(),
            run,
            totals: Padded(AtomicU64::new(0)),
        }
    }

    /// The window's size.
    pub(crate) fn size(&self) -> u64 {
        self.slots.len() as u64
    }

    /// The next position for a call on the thread numbered `thread`: from
    /// its lane's run, or a new run from the shared cursor.
    #[inline]
    fn position(&self, thread: usize) -> usize {
        let n = self.slots.len();
        if self.lanes.is_empty() {
            return self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        }
        let lane = &self.lanes[thread & (self.lanes.len() - 1)];
        // One add takes the lane's next position (the lane's own thread is
        // usually alone on it: no contention).
        let word = lane.fetch_add(1, Ordering::Relaxed);
        let (at, end) = ((word & LANE_MASK) as usize, (word >> 32) as usize);
        if at >= end {
            return self.past_run(lane, at == end);
        }
        // A run starts below `n` and is no longer than the ring.
        if at >= n { at - n } else { at }
    }

    /// A position when the lane's run is used up: the one thread whose add
    /// reached the run's end takes the next run; another thread of the
    /// lane that comes before that run is stored takes one position of its
    /// own from the cursor (so no run is ever stored over and lost).
    #[inline(never)]
    fn past_run(&self, lane: &AtomicU64, first_past: bool) -> usize {
        if first_past {
            self.new_run(lane)
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots.len()
        }
    }

    /// Takes a run from the shared cursor: its first position now, the rest
    /// kept in the lane.
    fn new_run(&self, lane: &AtomicU64) -> usize {
        let run = self.run as usize;
        let first = self.cursor.fetch_add(run, Ordering::Relaxed) % self.slots.len();
        lane.store(
            ((first + run) as u64) << 32 | (first + 1) as u64,
            Ordering::Relaxed,
        );
        first
    }

    /// Records one call, evicting the oldest once the window is full;
    /// whether the totals changed.
    #[cfg(test)]
    fn record(&self, code: Code) -> bool {
        self.record_on(crate::stripe::thread_slot(), code)
    }

    /// Records one call made on the thread numbered `thread` (the thread
    /// slot of the call's layer handle, taken as it went in); whether the
    /// totals changed.
    #[inline]
    pub(crate) fn record_on(&self, thread: usize, code: Code) -> bool {
        let slot = &self.slots[self.position(thread)];
        if slot.load(Ordering::Relaxed) == code.0 {
            // The evicted outcome equals the new one: nothing changes.
            return false;
        }
        self.totals.fetch_add(contrib(code.0), Ordering::AcqRel);
        let old = slot.swap(code.0, Ordering::AcqRel);
        if old != 0 {
            self.totals.fetch_sub(contrib(old), Ordering::AcqRel);
        }
        true
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
        // The lanes' runs go too: the emptied window fills from the cursor
        // on, with no position left behind in a lane.
        for lane in self.lanes.iter() {
            lane.store(0, Ordering::Relaxed);
        }
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
    /// Adds one call.
    #[inline]
    fn add(&self, code: Code) {
        // (Sequentially consistent: see `TimeWindow::filling`.)
        self.calls.fetch_add(1, Ordering::SeqCst);
        if code.0 & 2 != 0 {
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        if code.0 & 4 != 0 {
            self.slow.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The calls of the last `T`, in a ring of buckets, kept per thread slot.
///
/// Each thread slot (a lane, see [`crate::stripe`]) counts its calls in a
/// ring of its own, with its own totals, on cache lines of its own: threads
/// calling one breaker write no count in common (with one shared ring and
/// totals, each call wrote two lines every calling thread took in turn: 11
/// million calls a second on two threads, where a count window made 50 to
/// 77). The window's counts are the sum of the lanes' totals, read where a
/// call is judged. A success is judged only when the window may open the
/// breaker on it: by the first success that finds the window holding the
/// minimum of calls (successes before it, while the window holds fewer,
/// sum the lanes to check), or when it moved (see
/// [`record_in`](Self::record_in)); `filled` remembers the head's epoch
/// at which the window was last seen holding the minimum.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    origin: Instant,
    bucket_nanos: i64,
    /// Buckets per lane.
    ring: usize,
    /// Counts per lane: its totals, then its ring, then [`LANE_GAP`] unused
    /// (`stride` each), so that two lanes' counts are never on one line.
    counts: Box<[Counts]>,
    stride: usize,
    /// Lanes less one (their number is a power of two).
    lane_mask: usize,
    /// The newest bucket's epoch (bucket-width ticks since `origin`); starts
    /// far in the past, so the first call resets every bucket once.
    head: Padded<AtomicI64>,
    /// The head's epoch at which the window was last seen holding at least
    /// the minimum of calls ([`NOT_FILLED`]: not since the last reset or
    /// retune).
    filled: AtomicI64,
    /// Resets and retunes so far: a check of the minimum that one overtook
    /// does not leave `filled` behind it (see [`filling`](Self::filling)).
    forgets: AtomicU64,
    /// The window moved on a read of its counts, not on a call: the next
    /// call's counts are judged whatever its outcome (see
    /// [`record_in`](Self::record_in)).
    moved_on_read: AtomicBool,
    rotate: Mutex<()>,
}

/// The unused counts after a lane's ring (with more than one lane): 6 of
/// 24 bytes, so that the counts of two lanes are at least 144 bytes apart,
/// never on one pair of cache lines (adjacent-line prefetchers take two).
const LANE_GAP: usize = 6;

/// `filled` when the window is not known to hold the minimum of calls.
const NOT_FILLED: i64 = i64::MIN;

impl TimeWindow {
    /// A window of `span` in `buckets` buckets (both at least 1; the bucket
    /// width is at least 1 ns), a lane per thread slot.
    pub(crate) fn new(origin: Instant, span: Duration, buckets: u32) -> Self {
        Self::with_lanes(origin, span, buckets, crate::stripe::stripe_count())
    }

    /// A window of `span` in `buckets` buckets counted in `lanes` lanes (a
    /// power of two).
    fn with_lanes(origin: Instant, span: Duration, buckets: u32, lanes: usize) -> Self {
        let buckets = buckets.max(1);
        let nanos = i64::try_from(span.as_nanos()).unwrap_or(i64::MAX);
        let bucket_nanos = (nanos / buckets as i64).max(1);
        let lanes = lanes.max(1).next_power_of_two();
        let ring = buckets as usize;
        let stride = ring + 1 + if lanes > 1 { LANE_GAP } else { 0 };
        TimeWindow {
            origin,
            bucket_nanos,
            ring,
            counts: (0..lanes * stride).map(|_| Counts::default()).collect(),
            stride,
            lane_mask: lanes - 1,
            head: Padded(AtomicI64::new(i64::MIN / 4)),
            filled: AtomicI64::new(NOT_FILLED),
            forgets: AtomicU64::new(0),
            moved_on_read: AtomicBool::new(false),
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

    /// The index in a lane's ring of `epoch`'s bucket.
    #[inline(always)]
    fn index(&self, epoch: i64) -> usize {
        let n = self.ring;
        if epoch >= 0 {
            (epoch as u64 % n as u64) as usize
        } else {
            epoch.rem_euclid(n as i64) as usize
        }
    }

    /// A lane's totals and ring.
    #[inline(always)]
    fn lane(&self, lane: usize) -> (&Counts, &[Counts]) {
        let at = (lane & self.lane_mask) * self.stride;
        let lane = &self.counts[at..at + 1 + self.ring];
        (&lane[0], &lane[1..])
    }

    /// The number of lanes.
    #[inline]
    fn lanes(&self) -> usize {
        self.lane_mask + 1
    }

    /// Moves the head to `epoch`, resetting the buckets passed over; `on_read`:
    /// for a read of the counts, which leaves the next call to judge them.
    /// Out of line: once per bucket width, not per call.
    #[cold]
    #[inline(never)]
    fn advance(&self, epoch: i64, on_read: bool) {
        let _guard = self.rotate.lock().unwrap_or_else(|p| p.into_inner());
        let head = self.head.load(Ordering::Acquire);
        if epoch <= head {
            return;
        }
        let n = self.ring as i64;
        let steps = epoch.saturating_sub(head).min(n);
        for lane in 0..self.lanes() {
            let (totals, ring) = self.lane(lane);
            for ep in (epoch - steps + 1)..=epoch {
                drain(totals, &ring[self.index(ep)]);
            }
        }
        if on_read {
            // Before the head: a call that sees the new head sees the flag.
            self.moved_on_read.store(true, Ordering::Relaxed);
        }
        self.head.store(epoch, Ordering::Release);
    }

    /// The epoch `now` counts in, whether the window moved to it (buckets
    /// left it), and the head's epoch (a clock read that lagged behind
    /// another call's counts in an older bucket); `on_read`: see
    /// [`advance`](Self::advance).
    #[inline(always)]
    fn current(&self, now: Instant, on_read: bool) -> (i64, bool, i64) {
        let epoch = self.epoch(now);
        let head = self.head.load(Ordering::Acquire);
        if epoch > head {
            self.advance(epoch, on_read);
            (epoch, true, epoch)
        } else if head - epoch >= self.ring as i64 {
            // A clock read that lagged a whole window behind: count it now.
            (head, false, head)
        } else {
            (epoch, false, head)
        }
    }

    /// Records one call made at `now` in `lane` (the thread slot of the
    /// call's layer handle, taken as the call went in: a call that ends on
    /// another thread counts in its first thread's lane, exact all the
    /// same); whether the counts may open the
    /// breaker now, for a breaker that judges from `minimum` calls: a
    /// failure or a slow call raises their rate; a success lowers both, so
    /// it can open the breaker only when it brings the calls up to the
    /// `minimum` (the first success that finds the window holding that many
    /// since it moved, was reset or retuned is judged: see
    /// [`filling`](Self::filling)), or when the window moved since the last
    /// call (buckets of successes that left it may leave a higher failure
    /// rate), on this call or on a read of its counts.
    #[inline(always)]
    pub(crate) fn record_in(
        &self,
        lane: usize,
        now: Instant,
        code: Code,
        minimum: impl FnOnce() -> u64,
    ) -> bool {
        let (epoch, moved, head) = self.current(now, false);
        // The lane's totals, then its ring (see `lane`).
        let at = (lane & self.lane_mask) * self.stride;
        // Totals first, bucket second: a reset that takes the bucket's count
        // subtracts only what was already added.
        self.counts[at].add(code);
        self.counts[at + 1 + self.index(epoch)].add(code);
        code.0 != 1
            || moved
            // (After the count: a read that moved the window since is seen.)
            || (self.moved_on_read.load(Ordering::Relaxed)
                && self.moved_on_read.swap(false, Ordering::AcqRel))
            // (Sequentially consistent: see `filling`.)
            || (self.filled.load(Ordering::SeqCst) != head && self.filling(head, minimum))
    }

    /// A success in a window not known to hold the minimum of calls with
    /// its head at `head`: whether it does now (the window is judged, and
    /// remembered as filled at `head`). The calls are summed after this one
    /// was counted, and `minimum` read after them (sequentially consistent
    /// with other calls' counts, and with a retune's store of the minimum,
    /// its forget and its read of the counts: of two such, one sees the
    /// other's change). A reset or retune that came between the check and
    /// the remembering undoes it. Out of line: once per bucket width, and
    /// on each success of a window short of the minimum (light traffic).
    #[cold]
    #[inline(never)]
    fn filling(&self, head: i64, minimum: impl FnOnce() -> u64) -> bool {
        let forgets = self.forgets.load(Ordering::SeqCst);
        let calls = self.totals().calls;
        if calls < minimum() {
            return false;
        }
        self.filled.fetch_max(head, Ordering::SeqCst);
        if self.forgets.load(Ordering::SeqCst) != forgets {
            // The minimum may have been raised, or the window emptied,
            // since the check.
            self.filled.store(NOT_FILLED, Ordering::SeqCst);
        }
        true
    }

    /// The counts of the window ending at `now`.
    #[inline]
    pub(crate) fn snapshot(&self, now: Instant) -> WindowSnapshot {
        let _ = self.current(now, true);
        self.totals()
    }

    /// The counts as they stand, without moving the window: right after a
    /// [`record_in`](Self::record_in), which moved it already. The sum of the
    /// lanes' totals.
    #[inline]
    fn totals(&self) -> WindowSnapshot {
        let (mut calls, mut failures, mut slow) = (0u64, 0u64, 0u64);
        for lane in 0..self.lanes() {
            let (totals, _) = self.lane(lane);
            // (Sequentially consistent: see `filling`.)
            calls += totals.calls.load(Ordering::SeqCst);
            failures += totals.failures.load(Ordering::Acquire);
            slow += totals.slow.load(Ordering::Acquire);
        }
        WindowSnapshot {
            calls,
            failures: failures.min(calls),
            slow_calls: slow.min(calls),
        }
    }

    /// Forgets that the window held the minimum of calls: a retune may have
    /// raised it.
    pub(crate) fn forget_filled(&self) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.filled.store(NOT_FILLED, Ordering::SeqCst);
    }

    /// Empties the window. O(lanes × buckets); called on state transitions
    /// only.
    pub(crate) fn reset(&self) {
        let _guard = self.rotate.lock().unwrap_or_else(|p| p.into_inner());
        for lane in 0..self.lanes() {
            let (totals, ring) = self.lane(lane);
            for b in ring {
                drain(totals, b);
            }
        }
        self.forget_filled();
    }
}

/// Empties one bucket out of its lane's totals. Same discipline as the
/// count window: take exactly what the bucket held, then subtract exactly
/// that. Under the rotation lock.
fn drain(totals: &Counts, b: &Counts) {
    let c = b.calls.swap(0, Ordering::AcqRel);
    let f = b.failures.swap(0, Ordering::AcqRel);
    let s = b.slow.swap(0, Ordering::AcqRel);
    totals.calls.fetch_sub(c, Ordering::AcqRel);
    totals.failures.fetch_sub(f, Ordering::AcqRel);
    totals.slow.fetch_sub(s, Ordering::AcqRel);
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

    /// Records one call made at `now` (which only a time window reads) and
    /// returns the counts with it, or `None` when they cannot open the
    /// breaker if the counts without it did not: a count window's call
    /// evicting one with the same outcome (the counts are those the call
    /// that made them was judged by), a time window's success that neither
    /// brought the calls up to `minimum` nor moved the window (see
    /// [`TimeWindow::record_in`]).
    // Always: on the success path of every call (the compiler's own choice
    // moves with unrelated code and cost up to 36 instructions per call).
    #[inline(always)]
    pub(crate) fn record_and_snapshot(
        &self,
        now: Instant,
        code: Code,
        lane: usize,
        minimum: impl FnOnce() -> u64,
    ) -> Option<WindowSnapshot> {
        match self {
            Window::Count(w) => w.record_on(lane, code).then(|| w.snapshot()),
            Window::Time(w) => w.record_in(lane, now, code, minimum).then(|| w.totals()),
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

    impl TimeWindow {
        /// Records in this thread's lane.
        fn record(&self, now: Instant, code: Code, minimum: impl FnOnce() -> u64) -> bool {
            self.record_in(crate::stripe::thread_slot(), now, code, minimum)
        }
    }

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
        // One lane shared by four threads, and four lanes (each thread's
        // slot masked to them: a lane each on a machine of 4 threads or
        // more, shared in pairs on 2).
        for lanes in [1, 4] {
            let w = std::sync::Arc::new(TimeWindow::with_lanes(
                t0,
                Duration::from_millis(10),
                10,
                lanes,
            ));
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let w = w.clone();
                    std::thread::spawn(move || {
                        for i in 0..50_000u64 {
                            // Each thread walks its own clock (1 µs a call,
                            // offset per thread), so buckets rotate while
                            // others record, and some records arrive late.
                            let now = t0 + Duration::from_micros(i + t * 300);
                            w.record(now, Code::new(i % 3 == 0, i % 5 == 0), || 0);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            for lane in 0..lanes {
                let (totals, ring) = w.lane(lane);
                let sum = |f: fn(&Counts) -> &AtomicU64| -> u64 {
                    ring.iter().map(|b| f(b).load(Ordering::Relaxed)).sum()
                };
                assert_eq!(totals.calls.load(Ordering::Relaxed), sum(|c| &c.calls));
                assert_eq!(
                    totals.failures.load(Ordering::Relaxed),
                    sum(|c| &c.failures)
                );
                assert_eq!(totals.slow.load(Ordering::Relaxed), sum(|c| &c.slow));
            }
            // Once everything has aged out, the totals are exactly zero (no
            // underflow, nothing left behind).
            let later = t0 + Duration::from_secs(10);
            assert_eq!(w.snapshot(later), WindowSnapshot::default());
            assert!(
                w.counts
                    .iter()
                    .all(|c| c.calls.load(Ordering::Relaxed) == 0),
                "lanes {lanes}"
            );
        }
    }

    /// Two threads on lanes of their own write no count on a line the
    /// other writes: their totals and rings are two cache lines apart.
    #[test]
    fn lanes_keep_their_counts_two_lines_apart() {
        let w = TimeWindow::with_lanes(Instant::now(), Duration::from_secs(10), 10, 4);
        let span = |lane| {
            let (totals, ring) = w.lane(lane);
            let first = totals as *const Counts as usize;
            let last = &ring[ring.len() - 1] as *const Counts as usize;
            (first, last + std::mem::size_of::<Counts>())
        };
        for lane in 0..3 {
            let (_, end) = span(lane);
            let (next, _) = span(lane + 1);
            assert!(next - end >= 128, "lane {lane}: {end} to {next}");
        }
        assert_eq!(
            TimeWindow::with_lanes(Instant::now(), Duration::from_secs(10), 10, 1)
                .counts
                .len(),
            11
        );
    }

    /// A success is judged by the first that finds the window holding the
    /// minimum of calls (the one that brings it there; those before it only
    /// check); then not until the window moves, is reset or retuned.
    #[tokio::test(start_paused = true)]
    async fn time_window_judges_the_success_that_fills_it() {
        let t0 = Instant::now();
        let w = TimeWindow::with_lanes(t0, Duration::from_secs(10), 10, 2);
        let at = |ms| t0 + Duration::from_millis(ms);
        // The first call moves the window: judged.
        assert!(w.record(at(0), OK, || 3));
        assert!(!w.record(at(1), OK, || 3));
        assert!(w.record(at(2), OK, || 3), "the third brings it to 3");
        assert!(!w.record(at(3), OK, || 3));
        assert!(w.record(at(4), FAIL, || 3), "a failure is always judged");
        assert!(!w.record(at(5), OK, || 3));
        // A new bucket: the window moved.
        assert!(w.record(at(1_000), OK, || 3));
        // Then the first success in it is judged once more (the epoch it
        // was seen filled at is gone), and no other.
        assert!(w.record(at(1_001), OK, || 3));
        assert!(!w.record(at(1_002), OK, || 3));
        // A raised minimum: judged again until the window holds it.
        w.forget_filled();
        assert!(!w.record(at(1_003), OK, || 11));
        assert!(w.record(at(1_004), OK, || 11), "the eleventh call");
        assert!(!w.record(at(1_005), OK, || 11));
        w.reset();
        assert!(!w.record(at(1_006), OK, || 2));
        assert!(w.record(at(1_007), OK, || 2));
    }

    #[test]
    fn count_window_totals_match_its_slots_under_contention() {
        // 7 slots: runs of 1, the shared cursor; 400 slots on 4 lanes: runs
        // of 12 taken by threads in turn.
        for (size, lanes, run) in [(7, 4, 1), (400, 4, 12)] {
            let w = std::sync::Arc::new(CountWindow::with_lanes(size, lanes));
            assert_eq!(w.run, run);
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
            assert_eq!(expected.calls, u64::from(size));
            assert_eq!(w.snapshot(), expected);
            assert_eq!(w.totals.load(Ordering::Relaxed), {
                expected.calls
                    | expected.failures << FIELD_BITS
                    | expected.slow_calls << (2 * FIELD_BITS)
            });
        }
    }

    #[test]
    fn one_thread_fills_the_ring_in_order_whatever_the_lanes() {
        // Runs of 6 on 2 lanes: one thread's calls are exactly the last 100.
        let w = CountWindow::with_lanes(100, 2);
        assert_eq!(w.run, 6);
        let mut model = std::collections::VecDeque::new();
        for i in 0..1_000u64 {
            let code = Code::new(i % 7 < 3, i % 11 == 0);
            w.record(code);
            model.push_back(code);
            if model.len() > 100 {
                model.pop_front();
            }
            let count = |bit: u8| model.iter().filter(|c| c.0 & bit != 0).count() as u64;
            assert_eq!(
                w.snapshot(),
                WindowSnapshot {
                    calls: count(1),
                    failures: count(2),
                    slow_calls: count(4),
                },
                "call {i}"
            );
        }
    }

    #[test]
    fn a_thread_that_stops_leaves_at_most_its_run_behind_for_one_lap() {
        let w = CountWindow::with_lanes(100, 2);
        // 100 failures on thread 0 fill the ring (runs of 6: positions 100
        // and 101 are left in its lane); then thread 1 takes a run
        // (102..108), writes one position and stops.
        for _ in 0..100 {
            w.record_on(0, FAIL);
        }
        w.record_on(1, OK);
        // Thread 0's successes: the 5 positions thread 1 holds keep their
        // failures while the rest of the ring turns over...
        for _ in 0..94 {
            w.record_on(0, OK);
        }
        assert_eq!(w.snapshot().failures, 5);
        assert_eq!(w.snapshot().calls, 100);
        // ...and the ring coming round writes them.
        for _ in 0..12 {
            w.record_on(0, OK);
        }
        assert_eq!(w.snapshot().failures, 0);
        // Thread 1 coming back writes where its run left off: a success
        // replacing a success.
        w.record_on(1, OK);
        assert_eq!(
            w.snapshot(),
            WindowSnapshot {
                calls: 100,
                failures: 0,
                slow_calls: 0
            }
        );
    }

    #[test]
    fn threads_sharing_a_lane_lose_no_run() {
        // Two threads on one lane: when a run is used up, one of them takes
        // the next and the other a position of its own, so no run is stored
        // over. After a ring of failures and 200 000 successes, only the
        // lane's unused rest of a run (at most 15 positions) can still hold
        // a failure.
        let w = std::sync::Arc::new(CountWindow::with_lanes(1_000, 2));
        assert_eq!(w.run, 16);
        for _ in 0..1_000 {
            w.record_on(0, FAIL);
        }
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        w.record_on(0, OK);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snap = w.snapshot();
        assert_eq!(snap.calls, 1_000);
        assert!(snap.failures <= 15, "{snap:?}");
    }

    #[test]
    fn a_reset_leaves_no_position_behind_in_a_lane() {
        // A window of 100 on 2 lanes, as a breaker that closes: after the
        // reset, 100 calls on one thread fill it, whatever its lane held.
        let w = CountWindow::with_lanes(100, 2);
        for _ in 0..103 {
            w.record_on(1, FAIL);
        }
        w.reset();
        assert_eq!(w.snapshot(), WindowSnapshot::default());
        for _ in 0..100 {
            w.record_on(1, OK);
        }
        assert_eq!(w.snapshot().calls, 100);
    }

    #[test]
    fn small_windows_keep_one_cursor() {
        // Too small to share among 16 lanes: runs of 1, no lanes.
        let w = CountWindow::with_lanes(100, 16);
        assert_eq!((w.run, w.lanes.len()), (1, 0));
        let w = CountWindow::with_lanes(1_000, 16);
        assert_eq!((w.run, w.lanes.len()), (7, 16));
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_handles_instants_before_its_origin() {
        let t0 = Instant::now();
        // Built "later" than the clock reads it will see.
        let w = TimeWindow::new(t0 + Duration::from_secs(5), Duration::from_secs(10), 10);
        w.record(t0, FAIL, || 0);
        assert_eq!(w.snapshot(t0).failures, 1);
        assert_eq!(w.snapshot(t0 + Duration::from_millis(9_999)).failures, 1);
        assert_eq!(w.snapshot(t0 + Duration::from_secs(10)).failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_old_buckets() {
        let t0 = Instant::now();
        let w = TimeWindow::new(t0, Duration::from_secs(10), 10);
        w.record(t0, FAIL, || 0);
        w.record(t0 + Duration::from_millis(4500), OK, || 0);
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
        w.record(at(1_000_000), SLOW, || 0);
        assert_eq!(w.snapshot(at(1_000_000)).slow_calls, 1);
        w.reset();
        assert_eq!(w.snapshot(at(1_000_000)), WindowSnapshot::default());
    }
}
