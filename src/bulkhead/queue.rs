//! The bulkhead engine: an atomic permit counter plus a bounded wait queue,
//! free of tower types.
//!
//! - Admission with a free permit is one compare-and-swap: no lock, no
//!   allocation.
//! - Callers that find no free permit take a slot in a bounded queue kept in a
//!   `std::sync::Mutex` (held for a few instructions, never across `.await`).
//!   The slots live in one `Vec` reused for the life of the bulkhead and are
//!   linked into an index-based doubly linked list, so enqueue, dequeue (front
//!   or back) and removal of any waiter are O(1) and allocate nothing once the
//!   slab has reached its high-water mark.
//! - A released permit is handed straight to the next waiter (front for FIFO
//!   and CoDel, back for LIFO) and its waker is woken; a waiter that is dropped
//!   leaves the queue, and one dropped after being handed a permit passes the
//!   permit on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Name;
use crate::observe::Observer;
use crate::stripe::{Striped, Ticket};

/// The order in which waiting callers are admitted when a permit frees up.
///
/// Whatever the order, at most `max_queue` callers wait and each gives up after
/// `max_wait` or at its request deadline, whichever comes first.
///
/// The order is exact: a released permit is handed to the next waiter
/// directly, and while anyone waits, newcomers queue behind them instead of
/// taking a permit on the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QueueOrder {
    /// First in, first out (the default): the caller that has waited longest
    /// goes next.
    #[default]
    Fifo,
    /// Last in, first out: the newest caller goes next. Under a standing queue
    /// the newest callers are the ones most likely to still have time left, so
    /// LIFO keeps goodput up, at the cost of starving old waiters (bound them
    /// with `max_wait`).
    Lifo,
    /// FIFO with CoDel queue management (Facebook, "Fail at Scale"): while the
    /// queue keeps draining, a waiter may wait up to the CoDel `interval`
    /// (default 100 ms); once the queue has not been empty for a whole
    /// interval, waiters older than the CoDel `target` (default 5 ms) are
    /// rejected (detail `"codel"`). A burst is absorbed; a standing queue fails
    /// fast.
    Codel,
    /// CoDel as above, plus Facebook's adaptive LIFO: FIFO while the queue
    /// drains, LIFO once it has been standing for an interval, so the freshest
    /// requests are served first under overload.
    AdaptiveLifo,
}

impl QueueOrder {
    /// Whether the CoDel timeouts apply.
    #[inline]
    pub(crate) fn uses_codel(self) -> bool {
        matches!(self, QueueOrder::Codel | QueueOrder::AdaptiveLifo)
    }

    /// A short, stable, lower-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            QueueOrder::Fifo => "fifo",
            QueueOrder::Lifo => "lifo",
            QueueOrder::Codel => "codel",
            QueueOrder::AdaptiveLifo => "adaptive_lifo",
        }
    }
}

/// Why a waiter stopped waiting without a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// The queue was full (or there is no queue).
    QueueFull,
    /// `max_wait` passed.
    MaxWait,
    /// The request deadline passed (or would have passed first).
    Deadline,
    /// CoDel: the queue is standing and the waiter is older than the target.
    Codel,
}

impl GiveUp {
    /// The `detail` of the `Rejected` event.
    pub(crate) const fn detail(self) -> &'static str {
        match self {
            GiveUp::QueueFull => "queue_full",
            GiveUp::MaxWait => "max_wait",
            GiveUp::Deadline => "deadline",
            GiveUp::Codel => "codel",
        }
    }
}

/// Settings of the engine (validated by the builder).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_concurrent: usize,
    pub(crate) max_queue: usize,
    pub(crate) max_wait: Duration,
    pub(crate) order: QueueOrder,
    pub(crate) codel_target: Duration,
    pub(crate) codel_interval: Duration,
    /// Backpressure mode without a `max_queue`: the clones waiting in
    /// `poll_ready` are not counted against one (each holds one place at
    /// most, and a full queue would fail `poll_ready`, which a `Buffer` or
    /// a balancer takes for a dead service).
    pub(crate) unbounded_readiness: bool,
}

/// No slot: the end of an index-based list.
pub(crate) const NIL: u32 = u32::MAX;

/// A slot of an index-based doubly linked list kept in a slab (this
/// bulkhead's waiters, the adaptive limit's queue for a herd).
pub(crate) trait Linked {
    fn links(&mut self) -> (&mut u32, &mut u32);
}

/// The ends and length of an index-based doubly linked list over `slots`.
#[derive(Debug)]
pub(crate) struct Ends {
    /// The oldest slot in the list (`NIL`: none).
    pub(crate) head: u32,
    /// The newest slot in the list (`NIL`: none).
    pub(crate) tail: u32,
    /// The slots in the list.
    pub(crate) len: usize,
}

impl Ends {
    /// An empty list.
    pub(crate) const EMPTY: Ends = Ends {
        head: NIL,
        tail: NIL,
        len: 0,
    };

    /// Links slot `idx` at the tail.
    pub(crate) fn push_back<S: Linked>(&mut self, slots: &mut [S], idx: u32) {
        let tail = self.tail;
        {
            let (prev, next) = slots[idx as usize].links();
            *prev = tail;
            *next = NIL;
        }
        if tail == NIL {
            self.head = idx;
        } else {
            *slots[tail as usize].links().1 = idx;
        }
        self.tail = idx;
        self.len += 1;
    }

    /// Takes slot `idx` out of the list.
    pub(crate) fn unlink<S: Linked>(&mut self, slots: &mut [S], idx: u32) {
        let (prev, next) = {
            let (p, n) = slots[idx as usize].links();
            let links = (*p, *n);
            (*p, *n) = (NIL, NIL);
            links
        };
        if prev == NIL {
            self.head = next;
        } else {
            *slots[prev as usize].links().1 = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            *slots[next as usize].links().0 = prev;
        }
        self.len -= 1;
    }
}

/// Slots preallocated at build time (more, up to the bound, are added on
/// demand and then reused).
const PREALLOCATED_SLOTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Waiting,
    Granted,
}

#[derive(Debug)]
struct Slot {
    prev: u32,
    next: u32,
    state: SlotState,
    waker: Option<Waker>,
}

impl Linked for Slot {
    fn links(&mut self) -> (&mut u32, &mut u32) {
        (&mut self.prev, &mut self.next)
    }
}

/// The wait list: a slab of slots with an intrusive doubly linked list of the
/// waiting ones (oldest at `head`) and a free list (through `next`).
#[derive(Debug)]
struct WaitList {
    slots: Vec<Slot>,
    max_slots: usize,
    free: u32,
    ends: Ends,
    /// When the queue last went from empty to non-empty.
    busy_since: Option<Instant>,
}

impl WaitList {
    fn new(max_queue: usize, max_concurrent: usize, unbounded: bool) -> Self {
        // A slot is held by a waiting caller (at most `max_queue`, or one
        // per waiting clone) or by a caller that was handed a permit and has
        // not yet been polled (at most `max_concurrent`).
        let max_slots = if unbounded {
            NIL as usize - 1
        } else {
            max_queue
                .saturating_add(max_concurrent)
                .min(NIL as usize - 1)
        };
        WaitList {
            slots: Vec::with_capacity(max_queue.min(PREALLOCATED_SLOTS)),
            max_slots,
            free: NIL,
            ends: Ends::EMPTY,
            busy_since: None,
        }
    }

    /// Takes a free slot, or `None` when every slot is taken.
    fn alloc(&mut self) -> Option<u32> {
        if self.free != NIL {
            let idx = self.free;
            self.free = self.slots[idx as usize].next;
            return Some(idx);
        }
        if self.slots.len() >= self.max_slots {
            return None;
        }
        self.slots.push(Slot {
            prev: NIL,
            next: NIL,
            state: SlotState::Free,
            waker: None,
        });
        Some((self.slots.len() - 1) as u32)
    }

    fn release_slot(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        slot.state = SlotState::Free;
        slot.waker = None;
        slot.prev = NIL;
        slot.next = self.free;
        self.free = idx;
    }

    /// Appends slot `idx` at the tail, in state `Waiting`.
    fn push_back(&mut self, idx: u32, waker: Option<Waker>, now: Option<Instant>) {
        if self.ends.len == 0 {
            self.busy_since = now;
        }
        let slot = &mut self.slots[idx as usize];
        slot.state = SlotState::Waiting;
        slot.waker = waker;
        self.ends.push_back(&mut self.slots, idx);
    }

    fn unlink(&mut self, idx: u32) {
        self.ends.unlink(&mut self.slots, idx);
        if self.ends.len == 0 {
            self.busy_since = None;
        }
    }
}

/// Result of [`Engine::acquire`].
#[derive(Debug)]
pub(crate) enum Acquire {
    /// A permit was free.
    Permit(Permit),
    /// The caller waits in the queue; `codel_until` is when CoDel gives up on
    /// it (if CoDel applies).
    Queued {
        waiter: Waiter,
        codel_until: Option<Instant>,
    },
    /// No permit and no room to wait.
    Full,
}

/// The shared state of one bulkhead: permits, wait queue, name and observer.
#[derive(Debug)]
pub(crate) struct Engine {
    available: AtomicUsize,
    /// The limit now (`settings.max_concurrent` until a resize).
    max: AtomicUsize,
    /// Permits to retire as they come back, after a resize made the limit
    /// smaller than the permits held.
    debt: AtomicUsize,
    /// Number of waiting (linked) slots; written under the lock, read without.
    queued: AtomicUsize,
    list: Mutex<WaitList>,
    pub(crate) settings: Settings,
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    pub(crate) jitter: crate::clock::Jitter,
}

impl Engine {
    pub(crate) fn new(settings: Settings, name: Name, observer: Observer) -> Self {
        Engine {
            available: AtomicUsize::new(settings.max_concurrent),
            max: AtomicUsize::new(settings.max_concurrent),
            debt: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            list: Mutex::new(WaitList::new(
                settings.max_queue,
                settings.max_concurrent,
                settings.unbounded_readiness,
            )),
            settings,
            jitter: crate::clock::Jitter::new(name.as_str()),
            name,
            observer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, WaitList> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Retires a returned permit against the debt, if any is left.
    fn retire(&self) -> bool {
        self.debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok()
    }

    /// Permits still to retire after a shrink.
    #[inline]
    pub(crate) fn debt(&self) -> usize {
        self.debt.load(Ordering::Acquire)
    }

    /// The limit of calls in flight now.
    #[inline]
    pub(crate) fn max_concurrent(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// Changes the limit of calls in flight. Growing frees permits at once
    /// (waiters first); shrinking takes free permits away, and retires the
    /// rest as calls in flight return theirs (their permits stay valid).
    /// Returns the limit before.
    pub(crate) fn resize(&self, n: usize) -> usize {
        let grew = {
            let mut list = self.lock();
            let old = self.max.swap(n, Ordering::AcqRel);
            if n >= old {
                let mut add = n - old;
                // One read-modify-write: a permit returned meanwhile retires
                // against the same debt (a load then a subtraction could
                // take more than is left and wrap it, retiring every permit
                // from then on).
                let debt = self
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                        Some(d - d.min(add))
                    })
                    .unwrap_or_else(|d| d);
                add -= debt.min(add);
                list.max_slots = self
                    .settings
                    .max_queue
                    .saturating_add(n)
                    .min(NIL as usize - 1)
                    .max(list.max_slots);
                self.available.fetch_add(add, Ordering::SeqCst);
                (old, add > 0)
            } else {
                let mut cut = old - n;
                while cut > 0 && self.take() {
                    cut -= 1;
                }
                self.debt.fetch_add(cut, Ordering::AcqRel);
                (old, false)
            }
        };
        if grew.1 && self.queued.load(Ordering::SeqCst) != 0 {
            self.hand_off();
        }
        grew.0
    }

    /// Free permits right now.
    #[inline]
    pub(crate) fn available_permits(&self) -> usize {
        self.available.load(Ordering::Acquire)
    }

    /// Callers waiting in the queue right now.
    #[inline]
    pub(crate) fn queue_len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Takes one permit if one is free (one CAS loop, no lock).
    #[inline]
    fn take(&self) -> bool {
        let mut cur = self.available.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return false;
            }
            match self.available.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Returns a permit: hands it to the next waiter if any, else makes it free.
    fn release(&self) {
        if self.debt.load(Ordering::Relaxed) != 0 && self.retire() {
            return;
        }
        self.available.fetch_add(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) != 0 {
            self.hand_off();
        }
    }

    /// Hands free permits to waiters, in queue order, while both exist.
    fn hand_off(&self) {
        loop {
            let waker = {
                let mut list = self.lock();
                if list.ends.len == 0 {
                    return;
                }
                let lifo = match self.settings.order {
                    QueueOrder::Lifo => true,
                    QueueOrder::AdaptiveLifo => list.busy_since.is_some_and(|busy| {
                        crate::clock::elapsed(busy, crate::clock::edge_now())
                            >= self.settings.codel_interval
                    }),
                    QueueOrder::Fifo | QueueOrder::Codel => false,
                };
                let idx = if lifo { list.ends.tail } else { list.ends.head };
                if !self.take() {
                    return;
                }
                list.unlink(idx);
                self.queued.fetch_sub(1, Ordering::SeqCst);
                let slot = &mut list.slots[idx as usize];
                slot.state = SlotState::Granted;
                slot.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// What makes permits and places: the engine with its per-thread handles
/// (a permit keeps its thread's, see [`crate::stripe`]).
impl Striped<Engine> {
    /// The admitted fast path: a permit if one is free and nobody waits
    /// (waiters go first: with anyone queued, newcomers queue behind them).
    #[inline]
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        if self.queued.load(Ordering::SeqCst) == 0 && self.take() {
            Some(Permit {
                engine: self.ticket(),
            })
        } else {
            None
        }
    }

    /// A permit if one is free and nobody waits, else a place in the queue if
    /// there is room.
    ///
    /// `now` is needed only for CoDel (the busy period); pass it when the
    /// order uses CoDel. A `Queued` waiter may already have been handed a
    /// permit: its first poll finds it.
    pub(crate) fn acquire(&self, waker: Option<&Waker>, now: Option<Instant>) -> Acquire {
        self.acquire_within(waker, now, self.settings.max_queue)
    }

    /// [`acquire`](Self::acquire) for a clone's `poll_ready` in backpressure
    /// mode: a place in the queue however many wait when the bulkhead has
    /// no `max_queue`.
    pub(crate) fn acquire_ready(&self, waker: Option<&Waker>, now: Option<Instant>) -> Acquire {
        let max = if self.settings.unbounded_readiness {
            usize::MAX
        } else {
            self.settings.max_queue
        };
        self.acquire_within(waker, now, max)
    }

    fn acquire_within(
        &self,
        waker: Option<&Waker>,
        now: Option<Instant>,
        max_queue: usize,
    ) -> Acquire {
        if let Some(p) = self.try_acquire() {
            return Acquire::Permit(p);
        }
        if max_queue == 0 {
            return Acquire::Full;
        }
        let mut list = self.lock();
        if list.ends.len == 0 && self.take() {
            // The waiters left meanwhile and a permit is free.
            return Acquire::Permit(Permit {
                engine: self.ticket(),
            });
        }
        if list.ends.len >= max_queue {
            // Any permit freed now goes to the waiters already queued.
            return Acquire::Full;
        }
        let Some(idx) = list.alloc() else {
            return Acquire::Full;
        };
        // Announce the waiter, then look at the permits (below): a releaser
        // adds its permit, then looks at `queued`. Both are SeqCst, so one of
        // the two sees the other and runs the hand-off: no permit is left free
        // while someone waits, no wakeup is lost.
        self.queued.fetch_add(1, Ordering::SeqCst);
        list.push_back(idx, waker.cloned(), now);
        let codel_until = match (self.settings.order.uses_codel(), now, list.busy_since) {
            (true, Some(now), Some(busy)) => {
                Some((busy + self.settings.codel_interval).max(now + self.settings.codel_target))
            }
            _ => None,
        };
        drop(list);
        if self.available.load(Ordering::SeqCst) != 0 {
            self.hand_off();
        }
        Acquire::Queued {
            waiter: Waiter {
                engine: self.ticket(),
                slot: idx,
                done: false,
            },
            codel_until,
        }
    }
}

/// One permit of a bulkhead; returned (or handed to the next waiter) on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    engine: Ticket<Engine>,
}

impl Permit {
    /// The bulkhead this permit belongs to.
    #[inline]
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.engine.release();
    }
}

/// A place in a bulkhead's queue; leaves the queue on drop (passing on a
/// permit it was handed but never took).
#[derive(Debug)]
pub(crate) struct Waiter {
    engine: Ticket<Engine>,
    slot: u32,
    done: bool,
}

impl Waiter {
    /// The bulkhead this waiter waits in.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checks the place: the permit if it was handed one, else registers
    /// `cx`'s waker and returns `Pending`.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Permit> {
        if self.done {
            // Defensive: a finished waiter is never polled again.
            return Poll::Pending;
        }
        let mut list = self.engine.lock();
        let slot = &mut list.slots[self.slot as usize];
        match slot.state {
            SlotState::Granted => {
                list.release_slot(self.slot);
                self.done = true;
                Poll::Ready(Permit {
                    engine: self.engine.clone(),
                })
            }
            SlotState::Waiting => {
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            SlotState::Free => Poll::Pending,
        }
    }

    /// Takes the place out of the queue. If it had already been handed a
    /// permit, returns that permit (the caller keeps it or drops it, which
    /// passes it on).
    pub(crate) fn leave(&mut self) -> Option<Permit> {
        if self.done {
            return None;
        }
        self.done = true;
        let mut list = self.engine.lock();
        match list.slots[self.slot as usize].state {
            SlotState::Waiting => {
                list.unlink(self.slot);
                self.engine.queued.fetch_sub(1, Ordering::SeqCst);
                list.release_slot(self.slot);
                None
            }
            SlotState::Granted => {
                list.release_slot(self.slot);
                Some(Permit {
                    engine: self.engine.clone(),
                })
            }
            SlotState::Free => None,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done {
            // Dropping the returned permit, if any, passes it on.
            drop(self.leave());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn engine(max_concurrent: usize, max_queue: usize, order: QueueOrder) -> Striped<Engine> {
        Striped::new(Engine::new(
            Settings {
                max_concurrent,
                max_queue,
                max_wait: Duration::from_secs(1),
                order,
                codel_target: Duration::from_millis(5),
                codel_interval: Duration::from_millis(100),
                unbounded_readiness: false,
            },
            Name::from("t"),
            Observer::none(),
        ))
    }

    fn queued(a: Acquire) -> Waiter {
        match a {
            Acquire::Queued { waiter, .. } => waiter,
            other => panic!("expected Queued, got {other:?}"),
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn fast_path_then_queue_then_full() {
        let e = engine(2, 1, QueueOrder::Fifo);
        let p1 = e.try_acquire().unwrap();
        let p2 = e.try_acquire().unwrap();
        assert!(e.try_acquire().is_none());
        assert_eq!(e.available_permits(), 0);
        let mut w = queued(e.acquire(None, None));
        assert_eq!(e.queue_len(), 1);
        assert!(matches!(e.acquire(None, None), Acquire::Full));
        assert!(w.poll(&mut cx()).is_pending());
        drop(p1);
        // Handed straight to the waiter, not made free.
        assert_eq!(e.available_permits(), 0);
        assert_eq!(e.queue_len(), 0);
        let p3 = match w.poll(&mut cx()) {
            Poll::Ready(p) => p,
            Poll::Pending => panic!("waiter not granted"),
        };
        drop((p2, p3, w));
        assert_eq!(e.available_permits(), 2);
        assert_eq!(e.lock().ends.len, 0);
    }

    #[test]
    fn fifo_and_lifo_grant_order() {
        for (order, expect) in [(QueueOrder::Fifo, [0, 1, 2]), (QueueOrder::Lifo, [2, 1, 0])] {
            let e = engine(1, 3, order);
            let p = e.try_acquire().unwrap();
            let mut ws: Vec<Waiter> = (0..3).map(|_| queued(e.acquire(None, None))).collect();
            let mut granted = Vec::new();
            let mut held = p;
            for _ in 0..3 {
                drop(held);
                let (i, permit) = (0..3)
                    .find_map(|i| match ws[i].poll(&mut cx()) {
                        Poll::Ready(permit) => Some((i, permit)),
                        Poll::Pending => None,
                    })
                    .unwrap();
                granted.push(i);
                held = permit;
            }
            drop(held);
            assert_eq!(e.available_permits(), 1);
            assert_eq!(granted, expect, "{order:?}");
            drop(ws.drain(..));
        }
    }

    #[test]
    fn dropped_waiter_leaves_and_granted_waiter_passes_permit_on() {
        let e = engine(1, 3, QueueOrder::Fifo);
        let p = e.try_acquire().unwrap();
        let w0 = queued(e.acquire(None, None));
        let mut w1 = queued(e.acquire(None, None));
        let w2 = queued(e.acquire(None, None));
        drop(w2); // queued, dropped: leaves
        assert_eq!(e.queue_len(), 2);
        drop(p); // handed to w0
        assert_eq!(e.queue_len(), 1);
        drop(w0); // granted but never polled: passes the permit to w1
        assert_eq!(e.queue_len(), 0);
        assert_eq!(e.available_permits(), 0);
        let p1 = match w1.poll(&mut cx()) {
            Poll::Ready(p) => p,
            Poll::Pending => panic!("permit was not passed on"),
        };
        drop(p1);
        drop(w1);
        assert_eq!(e.available_permits(), 1);
        let list = e.lock();
        assert_eq!(list.ends.len, 0);
        assert_eq!(list.ends.head, NIL);
        assert_eq!(list.ends.tail, NIL);
    }

    #[test]
    fn newcomers_do_not_jump_the_queue() {
        let e = engine(1, 3, QueueOrder::Fifo);
        let p = e.try_acquire().unwrap();
        let mut w0 = queued(e.acquire(None, None));
        // The instant between a release's two steps: the permit is back in the
        // counter, the hand-off has not run yet.
        std::mem::forget(p);
        e.available.fetch_add(1, Ordering::SeqCst);
        assert!(e.try_acquire().is_none(), "fast path must not barge");
        // A newcomer queues behind w0, and its enqueue hands the free permit
        // over in order: to w0.
        let mut w1 = queued(e.acquire(None, None));
        assert_eq!(e.available_permits(), 0);
        assert!(w1.poll(&mut cx()).is_pending());
        let p0 = match w0.poll(&mut cx()) {
            Poll::Ready(p) => p,
            Poll::Pending => panic!("w0 was not handed the permit"),
        };
        drop(p0);
        assert!(w1.poll(&mut cx()).is_ready());
        assert_eq!(e.available_permits(), 1);
        assert_eq!(e.queue_len(), 0);
    }

    #[test]
    fn slots_are_reused() {
        let e = engine(1, 2, QueueOrder::Fifo);
        let p = e.try_acquire().unwrap();
        for _ in 0..100 {
            let a = queued(e.acquire(None, None));
            let b = queued(e.acquire(None, None));
            drop(b);
            drop(a);
        }
        assert!(e.lock().slots.len() <= 2);
        drop(p);
        assert_eq!(e.available_permits(), 1);
    }

    #[test]
    fn zero_queue_is_full_at_once() {
        let e = engine(1, 0, QueueOrder::Fifo);
        let _p = e.try_acquire().unwrap();
        assert!(matches!(e.acquire(None, None), Acquire::Full));
        assert_eq!(e.queue_len(), 0);
    }
}
