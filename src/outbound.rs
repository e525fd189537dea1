//! The time a server's call spends waiting on calls out of this process.
//!
//! A server's adaptive limit judges the queue in front of its own work by
//! its calls' latency. A handler that waits on a dependency through a
//! seawall client stack spends that time outside: a dependency that
//! queues would otherwise read as a queue of this server's, and the limit,
//! shared by every route, would refuse the routes that never call it. So
//! the limit's future keeps a [`Waits`] for its call and makes it current
//! around each poll of the handler; a retry layer (the outermost layer of
//! a client stack that waits) opens a wait at its future's first poll and
//! closes it when it ends. While a wait is open the call is out of the
//! limit's count of calls in flight, and the limit takes the time its call
//! had at least one wait open (overlapping calls out counted once) off
//! its latency sample. A call out polled on a task of its own opens no
//! wait (the handler's time stays its own). A read of a body this process
//! reads (`CallBody`: a request's body on a server, a dependency's reply)
//! that waits for more is such a wait too, from the read that found
//! nothing to the one that found a frame: clients uploading slowly are no
//! queue of the server's.

// A build with the server's limit and no retry layer (or the reverse) has
// one side of it only.
#![cfg_attr(not(all(feature = "shed", feature = "retry")), allow(dead_code))]

use std::cell::Cell;

use crate::clock::Instant;

/// One server call's start, and its waits on calls out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    /// When the server call began: the instant the waits are kept from.
    start: Instant,
    /// The server call's identity (a count of the server calls made on
    /// this thread): a call out closes its wait only in the call it opened
    /// it in.
    id: u32,
    /// Calls out open now.
    open: u16,
    /// Two bytes of the server call's own (its class and flags: see the
    /// adaptive limit's `Permit`), kept here where they fill what would be
    /// padding; calls out leave them as they are.
    pub(crate) owner: [u8; 2],
    /// Time with at least one call out open (ns): the closed waits' sum,
    /// less, while one is open, when the first of them opened (ns from
    /// `start`), so that adding the time now gives the total.
    outside: i64,
}

impl Waits {
    #[inline]
    pub(crate) fn new(start: Instant) -> Self {
        let id = NEXT_ID
            .try_with(|n| {
                // (Never 0: a call out's token is a `NonZeroU32`.)
                let id = n.get().wrapping_add(1).max(1);
                n.set(id);
                id
            })
            .unwrap_or(0);
        Waits {
            start,
            id,
            open: 0,
            owner: [0; 2],
            outside: 0,
        }
    }

    /// When the server call began.
    #[inline]
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// Whether a call out is open.
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.open > 0
    }

    /// Time spent outside up to `now` (ns): the closed waits, and an open
    /// one so far.
    #[inline]
    pub(crate) fn outside_ns(&self, now: Instant) -> u64 {
        let open = if self.open > 0 { self.at(now) } else { 0 };
        self.outside.saturating_add(open).max(0) as u64
    }

    /// `now` in ns from `start`.
    #[inline]
    fn at(&self, now: Instant) -> i64 {
        crate::clock::signed_nanos(self.start, now)
    }
}

thread_local! {
    static CURRENT: Cell<Option<Waits>> = const { Cell::new(None) };
    static NEXT_ID: Cell<u32> = const { Cell::new(0) };
}

/// Makes `waits` current until dropped, then takes back
/// what calls out added and restores what was current before.
#[must_use = "the waits are current only while the guard lives"]
pub(crate) struct Scope<'a> {
    waits: &'a mut Waits,
    before: Option<Waits>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<'a> Scope<'a> {
    #[inline]
    pub(crate) fn enter(waits: &'a mut Waits) -> Self {
        let before = CURRENT.try_with(|c| c.replace(Some(*waits))).ok().flatten();
        Scope {
            waits,
            before,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for Scope<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Ok(Some(now)) = CURRENT.try_with(|c| c.replace(self.before)) {
            *self.waits = now;
        }
    }
}

/// A call out begins (read `now` only when a server call is current): the
/// token to end it with, `None` outside any server call.
#[inline]
pub(crate) fn begin(now: impl FnOnce() -> Instant) -> Option<std::num::NonZeroU32> {
    CURRENT
        .try_with(|c| {
            let mut waits = c.get()?;
            if waits.open == 0 {
                waits.outside = waits.outside.saturating_sub(waits.at(now()));
            }
            waits.open = waits.open.saturating_add(1);
            c.set(Some(waits));
            std::num::NonZeroU32::new(waits.id)
        })
        .ok()
        .flatten()
}

/// The call out that `begin` gave `token` for has ended (or was dropped):
/// in the server call it began in, its wait closes.
#[inline]
pub(crate) fn end(token: std::num::NonZeroU32, now: impl FnOnce() -> Instant) {
    let _ = CURRENT.try_with(|c| {
        let Some(mut waits) = c.get() else { return };
        if waits.id != token.get() || waits.open == 0 {
            return;
        }
        waits.open -= 1;
        if waits.open == 0 {
            waits.outside = waits.outside.saturating_add(waits.at(now()));
        }
        c.set(Some(waits));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn overlapping_calls_out_count_once_and_foreign_ones_not_at_all() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut waits = Waits::new(t0);
        assert_eq!(begin(|| at(0)), None, "no server call current");
        let (a, b);
        {
            let _scope = Scope::enter(&mut waits);
            a = begin(|| at(10)).unwrap();
            b = begin(|| at(20)).unwrap();
            end(a, || at(30));
        }
        // Between polls: nothing current.
        assert_eq!(waits.outside_ns(at(35)), 25_000_000, "open since 10");
        {
            let _scope = Scope::enter(&mut waits);
            // Another server call nested inside, with its own waits.
            let mut inner = Waits::new(t0);
            {
                let _inner = Scope::enter(&mut inner);
                end(b, || at(40)); // not its call: ignored
                let c = begin(|| at(40)).unwrap();
                end(c, || at(45));
            }
            assert_eq!(inner.outside_ns(at(50)), 5_000_000);
            end(b, || at(50));
        }
        assert_eq!(waits.outside_ns(at(90)), 40_000_000, "10 to 50, once");
        assert_eq!(begin(|| at(0)), None, "restored");
    }
}
