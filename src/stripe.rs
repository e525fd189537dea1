//! State shared by every call of a layer, kept by each call's future
//! without every call writing one shared reference count.
//!
//! A response future must own a handle on its layer's state (it outlives
//! the `call` that made it). With one `Arc`, every call increments and
//! decrements the same count: two writes to one cache line that every
//! thread calling the layer takes in turn. [`Striped`] keeps one extra
//! `Arc` per thread slot (up to [`MAX_STRIPES`], made the first time a
//! thread of that slot calls), each on cache lines of its own; a call
//! clones its thread's, so threads calling one layer write no count in
//! common. Reading the state costs a pointer or two more.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The most thread slots one state is split into (a power of two).
pub(crate) const MAX_STRIPES: usize = 16;

/// A layer's state, with its per-thread handles: one pointer, as a plain
/// `Arc` (services that hold it, and futures that hold services, keep
/// their size), cloned as one.
pub(crate) struct Striped<T>(Arc<Stripes<T>>);

/// The state and its thread slots' handles.
struct Stripes<T> {
    value: Arc<T>,
    /// Room for [`MAX_STRIPES`] (a fixed length: a thread's slot needs no
    /// bounds check); the machine's threads use the first
    /// [`stripe_count`].
    slots: [OnceLock<Arc<Stripe<T>>>; MAX_STRIPES],
}

/// One thread slot's handle on the state: its reference count on cache
/// lines of its own.
#[repr(align(128))]
pub(crate) struct Stripe<T>(Arc<T>);

impl<T> Deref for Stripe<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What a call's future keeps: a clone of its thread slot's handle.
pub(crate) struct Ticket<T>(Arc<Stripe<T>>);

impl<T> Ticket<T> {
    /// The slot's handle, for a holder that erases the state's type.
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    pub(crate) fn into_stripe(self) -> Arc<Stripe<T>> {
        self.0
    }
}

impl<T> Clone for Ticket<T> {
    #[inline]
    fn clone(&self) -> Self {
        Ticket(self.0.clone())
    }
}

impl<T> Deref for Ticket<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Striped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.value.fmt(f)
    }
}

impl<T: fmt::Debug> fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T> Clone for Striped<T> {
    fn clone(&self) -> Self {
        Striped(self.0.clone())
    }
}

impl<T> Deref for Striped<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T> Striped<T> {
    /// The state, split into as many slots as the machine runs threads at
    /// once (a power of two, at most [`MAX_STRIPES`]); no slot's handle is
    /// made yet.
    pub(crate) fn new(value: T) -> Self {
        Striped(Arc::new(Stripes {
            value: Arc::new(value),
            slots: std::array::from_fn(|_| OnceLock::new()),
        }))
    }

    /// The state's own `Arc` (for handles that outlive every layer).
    #[cfg_attr(
        not(any(feature = "circuit-breaker", feature = "bulkhead")),
        allow(dead_code)
    )]
    pub(crate) fn arc(&self) -> &Arc<T> {
        &self.0.value
    }

    /// A handle for a call on this thread: a clone of its slot's.
    #[inline]
    pub(crate) fn ticket(&self) -> Ticket<T> {
        let slot = &self.0.slots[thread_slot() & (MAX_STRIPES - 1)];
        match slot.get() {
            Some(stripe) => Ticket(stripe.clone()),
            None => self.first_ticket(slot),
        }
    }

    /// The handle of thread slot `slot` (this thread's, read once for
    /// several uses).
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    #[inline]
    pub(crate) fn ticket_at(&self, slot: usize) -> Ticket<T> {
        let slot = &self.0.slots[slot & (MAX_STRIPES - 1)];
        match slot.get() {
            Some(stripe) => Ticket(stripe.clone()),
            None => self.first_ticket(slot),
        }
    }

    /// The first call of a thread slot makes the slot's handle. Out of
    /// line: once per slot.
    #[inline(never)]
    #[cold]
    fn first_ticket(&self, slot: &OnceLock<Arc<Stripe<T>>>) -> Ticket<T> {
        Ticket(
            slot.get_or_init(|| Arc::new(Stripe(self.0.value.clone())))
                .clone(),
        )
    }
}

/// Thread slots per state: the threads the machine runs at once, rounded
/// up to a power of two, at most [`MAX_STRIPES`]. Asked once per process.
pub(crate) fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .next_power_of_two()
            .min(MAX_STRIPES)
    })
}

thread_local! {
    /// This thread's slot, given at its first call (`usize::MAX`: none yet).
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's slot, below [`stripe_count`]: threads take slots in turn
/// in the order of their first call, so the first threads of a runtime
/// take different ones.
#[inline]
pub(crate) fn thread_slot() -> usize {
    SLOT.try_with(|slot| {
        let i = slot.get();
        if i != usize::MAX { i } else { first_slot(slot) }
    })
    .unwrap_or(0)
}

/// Gives this thread its slot. Out of line: once per thread.
#[cold]
#[inline(never)]
fn first_slot(slot: &Cell<usize>) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let i = NEXT.fetch_add(1, Ordering::Relaxed) & (stripe_count() - 1);
    slot.set(i);
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_slot_and_every_ticket_reads_the_one_state() {
        let s = Striped::new(7u32);
        let here = s.ticket();
        assert_eq!(*here, 7);
        // The same thread: the same slot, one handle made.
        let again = s.ticket();
        assert!(Arc::ptr_eq(&here.0, &again.0));
        let (other, other_slot) = {
            let s = s.clone();
            std::thread::spawn(move || (s.ticket(), thread_slot()))
                .join()
                .unwrap()
        };
        assert_eq!(*other, 7);
        assert_eq!(thread_slot(), thread_slot(), "a thread keeps its slot");
        assert!(thread_slot() < stripe_count() && other_slot < stripe_count());
        // The state lives as long as any ticket does: the last one holds it
        // through its slot's handle alone.
        drop(s);
        drop((here, again));
        assert_eq!(*other, 7);
        assert_eq!(Arc::strong_count(&other.0.0), 1);
    }
}
