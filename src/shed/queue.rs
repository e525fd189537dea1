//! The adaptive limit's queue: the requests the limit would refuse for
//! [`JOINS`](super::limiter::JOINS) after a burst that began after a quiet
//! spell (a herd), and after that while it drains if they come slower than
//! places free, wait here, first come first served, for a place under
//! the limit, while their deadlines let them be served; in a limit that
//! waits at the limit (a client stack's), a `Critical` or `CriticalPlus`
//! request with a deadline that it refuses waits here at any time (not
//! while a waiter's patience has run out), the newest served first.
//!
//! The slots live in one `Vec` reused for the life of the limit and are
//! linked into an index-based doubly linked list (as the bulkhead's queue),
//! so that joining, leaving from anywhere and being served or refused are
//! O(1) and allocate nothing once the slab reached its high-water mark.
//! The list is only ever touched on the paths of requests over the limit
//! and of calls that end while someone waits.

use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::criticality::Criticality;
use crate::bulkhead::queue::{Ends, Linked, NIL};

/// Where a waiter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Free slot.
    Free,
    /// Waiting in the list.
    Waiting,
    /// Handed a place under the limit (counted in flight).
    Granted,
    /// Refused: it cannot be served in time; come back after the hint.
    Refused(Duration),
}

#[derive(Debug)]
struct Slot {
    prev: u32,
    next: u32,
    place: Place,
    class: Criticality,
    deadline: Instant,
    /// `Queue::ended` when it joined.
    joined: u64,
    /// The limiter's window generation when it joined (see
    /// `Limiter::hand_place`).
    window: u64,
    waker: Option<Waker>,
}

impl Linked for Slot {
    fn links(&mut self) -> (&mut u32, &mut u32) {
        (&mut self.prev, &mut self.next)
    }
}

/// The waiters, oldest at `head`, and what the limit's drain rate is
/// measured from.
#[derive(Debug)]
pub(crate) struct Queue {
    slots: Vec<Slot>,
    free: u32,
    pub(crate) ends: Ends,
    pub(crate) max: usize,
    /// When the queue last went from empty to waiting (ns since the
    /// limiter's epoch) and the calls that ended since: how fast places
    /// come free while it stands.
    pub(crate) opened_ns: u64,
    pub(crate) ended: u64,
    /// The last span the drain was measured over: when it ended, `ended`
    /// then, and the time a place took to come free in it (ns; 0: none
    /// yet).
    pub(crate) mark_ns: u64,
    pub(crate) mark_ended: u64,
    pub(crate) recent_drain_ns: u64,
    /// Requests over the limit that came while a herd's queue drains,
    /// after it stopped taking arrivals (the limiter's `try_queue`), and
    /// since when they are counted (ns since the limiter's epoch, plus one;
    /// before this queue began or stopped taking arrivals: none counted
    /// yet): how fast they come.
    pub(crate) late_ns: u64,
    pub(crate) late: u64,
}

impl Queue {
    pub(crate) fn new(max: usize) -> Self {
        Queue {
            slots: Vec::new(),
            free: NIL,
            ends: Ends::EMPTY,
            max,
            opened_ns: 0,
            ended: 0,
            mark_ns: 0,
            mark_ended: 0,
            recent_drain_ns: 0,
            late_ns: 0,
            late: 0,
        }
    }

    /// Joins at the tail; `None` when it is full.
    pub(crate) fn push(
        &mut self,
        class: Criticality,
        deadline: Instant,
        now_ns: u64,
        window: u64,
    ) -> Option<u32> {
        if self.ends.len >= self.max {
            return None;
        }
        let idx = if self.free != NIL {
            let idx = self.free;
            self.free = self.slots[idx as usize].next;
            idx
        } else {
            // (Waiters, and slots settled whose futures have not been
            // polled since: as many as such futures live; never shrunk.)
            let idx = u32::try_from(self.slots.len()).ok().filter(|&i| i != NIL)?;
            self.slots.push(Slot {
                prev: NIL,
                next: NIL,
                place: Place::Free,
                class,
                deadline,
                joined: 0,
                window: 0,
                waker: None,
            });
            idx
        };
        if self.ends.len == 0 {
            self.opened_ns = now_ns;
            self.ended = 0;
            self.mark_ns = now_ns;
            self.mark_ended = 0;
            self.recent_drain_ns = 0;
        }
        let slot = &mut self.slots[idx as usize];
        slot.place = Place::Waiting;
        slot.class = class;
        slot.deadline = deadline;
        slot.joined = self.ended;
        slot.window = window;
        slot.waker = None;
        self.ends.push_back(&mut self.slots, idx);
        Some(idx)
    }

    /// The oldest waiter.
    pub(crate) fn head(&self) -> Option<u32> {
        (self.ends.head != NIL).then_some(self.ends.head)
    }

    /// The newest waiter.
    pub(crate) fn tail(&self) -> Option<u32> {
        (self.ends.tail != NIL).then_some(self.ends.tail)
    }

    /// The waiter before `idx` (older), if any.
    pub(crate) fn older(&self, idx: u32) -> Option<u32> {
        let prev = self.slots[idx as usize].prev;
        (prev != NIL).then_some(prev)
    }

    /// The limiter's window generation when waiter `idx` joined.
    pub(crate) fn window(&self, idx: u32) -> u64 {
        self.slots[idx as usize].window
    }

    pub(crate) fn class(&self, idx: u32) -> Criticality {
        self.slots[idx as usize].class
    }

    pub(crate) fn deadline(&self, idx: u32) -> Instant {
        self.slots[idx as usize].deadline
    }

    pub(crate) fn place(&self, idx: u32) -> Place {
        self.slots[idx as usize].place
    }

    /// Whether a call ended since waiter `idx` joined.
    pub(crate) fn moved_since(&self, idx: u32) -> bool {
        self.ended > self.slots[idx as usize].joined
    }

    /// Takes waiter `idx` out of the list and gives it `place` (granted or
    /// refused); returns its waker (woken with the lock held: a tokio
    /// waker only schedules its task).
    pub(crate) fn settle(&mut self, idx: u32, place: Place) -> Option<Waker> {
        self.unlink(idx);
        let slot = &mut self.slots[idx as usize];
        slot.place = place;
        slot.waker.take()
    }

    /// Keeps the waker of waiter `idx`, to be woken when it is settled.
    pub(crate) fn set_waker(&mut self, idx: u32, waker: &Waker) {
        let slot = &mut self.slots[idx as usize];
        match &slot.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
    }

    /// Gives slot `idx` back, out of the list if it still waits.
    pub(crate) fn free(&mut self, idx: u32) {
        debug_assert!(self.slots[idx as usize].place != Place::Free, "freed twice");
        if self.slots[idx as usize].place == Place::Waiting {
            self.unlink(idx);
        }
        let slot = &mut self.slots[idx as usize];
        slot.place = Place::Free;
        slot.waker = None;
        slot.prev = NIL;
        slot.next = self.free;
        self.free = idx;
    }

    fn unlink(&mut self, idx: u32) {
        self.ends.unlink(&mut self.slots, idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_leaves_and_reuses_its_slots() {
        let now = Instant::now();
        let mut q = Queue::new(3);
        let a = q.push(Criticality::Critical, now, 1, 0).unwrap();
        let b = q.push(Criticality::CriticalPlus, now, 2, 0).unwrap();
        let c = q.push(Criticality::Critical, now, 3, 0).unwrap();
        assert_eq!(q.push(Criticality::Critical, now, 4, 0), None, "full at 3");
        assert_eq!(q.opened_ns, 1);
        assert_eq!((q.head(), q.tail()), (Some(a), Some(c)));
        // Leaves from the middle.
        q.free(b);
        assert_eq!(q.ends.len, 2);
        assert!(q.settle(a, Place::Granted).is_none());
        assert_eq!(q.place(a), Place::Granted);
        assert_eq!((q.head(), q.tail()), (Some(c), Some(c)));
        q.settle(c, Place::Refused(Duration::from_millis(5)));
        assert_eq!((q.head(), q.tail(), q.ends.len), (None, None, 0));
        q.free(a);
        q.free(c);
        // The freed slots are reused: no fourth one.
        for _ in 0..3 {
            q.push(Criticality::Critical, now, 9, 0).unwrap();
        }
        assert_eq!(q.slots.len(), 3);
        assert_eq!(q.opened_ns, 9);
    }
}
