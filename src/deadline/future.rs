//! Response futures of the deadline layers.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Deadline;
use super::layer::Shared;
use super::service::{TIMED_OUT, reject_deadline};
use crate::error::{AttemptTimeout, BoxError, RejectionKind};
use crate::observe::{EventKind, LayerKind};
use crate::stripe::Striped;
use pin_project_lite::pin_project;

/// How a [`DeadlineService`](super::DeadlineService) learns that the
/// deadline has passed: [`OwnTimer`] (the default) or [`InnerTimers`].
///
/// Sealed: these two are the only kinds.
pub trait Expiry: sealed::Timer {}

/// The deadline layer runs a timer of its own and fails the call with
/// [`DeadlineExceeded`](crate::error::DeadlineExceeded) when it fires: what
/// [`DeadlineLayer`](super::DeadlineLayer) builds. The timer (a
/// `tokio::time::Sleep`, 112 bytes inline) is made at the first poll that
/// finds the inner future pending, so a call that answers at once never
/// touches the timer wheel.
#[derive(Debug, Clone, Copy)]
pub struct OwnTimer;

/// The deadline layer sets the deadline (in the request, and as the
/// task-local [`current()`](super::current) one on every poll) but runs no
/// timer: every wait below it ends by the deadline already.
///
/// The [client stack](crate::stack::ClientStack) and the [server
/// stack](crate::stack::ServerStack) are built this way. Below the server's
/// deadline, the handler timeout is clamped to it, the bulkhead's queue
/// wait and a rate-limit wait end by it, and so does a Redis round trip of
/// the rate limit. Below the client's deadline, the attempt timeout is
/// clamped to the deadline, the
/// bulkhead's queue wait ends by it (a queued call is then made on the
/// instance polled ready, with no second wait), a retry's backoff never
/// outlasts it and a retry waits for readiness only until too little of it
/// is left, so a second timer for the same instant would only add 112
/// bytes to every response future; with no rejection of its own to make,
/// the response future keeps nothing of the layer either (no reference
/// count is touched per call). The layer that was waiting reports the
/// expiry ([`DeadlineExceeded`](crate::error::DeadlineExceeded) named after
/// it; a retry that gives up returns the last attempt's outcome unless the
/// deadline itself is spent); the deadline layer emits no rejection of its
/// own.
#[derive(Debug, Clone, Copy)]
pub struct InnerTimers;

impl Expiry for OwnTimer {}
impl Expiry for InnerTimers {}

pub(crate) mod sealed {
    use std::pin::Pin;
    use std::task::Context;

    use tokio::time::{Instant, Sleep};

    use crate::deadline::layer::Shared;
    use crate::stripe::{Striped, Ticket};

    /// The timer slot of a deadline future, and whether it fired.
    pub trait Timer {
        /// What the response future keeps for the timer.
        type Slot;
        /// An unarmed slot.
        fn unarmed() -> Self::Slot;
        /// Whether the deadline `at` has passed, arming the timer at the
        /// first call (the inner future is pending).
        fn fired(slot: Pin<&mut Self::Slot>, at: Instant, cx: &mut Context<'_>) -> bool;
        /// Moves an armed timer to `at`.
        fn rearm(slot: Pin<&mut Self::Slot>, at: Instant);
        /// Whether the timer was armed (the inner future was pending).
        fn armed(slot: &Self::Slot) -> bool;
        /// What the response future keeps of the layer: its shared state,
        /// for the rejection when the timer fires, or nothing without a
        /// timer.
        type Owner;
        /// The response future's part of the layer (`kept` is called only
        /// if the layer is kept).
        fn owner(kept: impl FnOnce() -> Kept) -> Self::Owner;
        /// The layer's shared state, if kept.
        fn kept(owner: &Self::Owner) -> Option<&Kept>;
    }

    /// A deadline layer's shared state, kept by a response future.
    pub struct Kept(Ticket<Shared>);

    impl std::fmt::Debug for Kept {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Kept")
        }
    }

    impl Kept {
        #[inline(always)]
        pub(crate) fn new(shared: &Striped<Shared>) -> Self {
            Kept(shared.ticket())
        }

        #[inline(always)]
        pub(crate) fn get(&self) -> &Shared {
            &self.0
        }
    }

    impl Timer for super::OwnTimer {
        type Slot = Option<Sleep>;

        #[inline(always)]
        fn unarmed() -> Self::Slot {
            None
        }

        #[inline]
        fn fired(slot: Pin<&mut Self::Slot>, at: Instant, cx: &mut Context<'_>) -> bool {
            crate::clock::timer_fired(slot, at, cx)
        }

        fn rearm(slot: Pin<&mut Self::Slot>, at: Instant) {
            if let Some(sleep) = slot.as_pin_mut() {
                sleep.reset(at);
            }
        }

        #[inline(always)]
        fn armed(slot: &Self::Slot) -> bool {
            slot.is_some()
        }

        type Owner = Kept;

        #[inline(always)]
        fn owner(kept: impl FnOnce() -> Kept) -> Self::Owner {
            kept()
        }

        #[inline(always)]
        fn kept(owner: &Self::Owner) -> Option<&Kept> {
            Some(owner)
        }
    }

    impl Timer for super::InnerTimers {
        type Slot = ();

        #[inline(always)]
        fn unarmed() -> Self::Slot {}

        #[inline]
        fn fired(_: Pin<&mut Self::Slot>, _: Instant, _: &mut Context<'_>) -> bool {
            false
        }

        fn rearm(_: Pin<&mut Self::Slot>, _: Instant) {}

        #[inline(always)]
        fn armed(_: &Self::Slot) -> bool {
            false
        }

        // No timer, no rejection of its own: nothing of the layer to keep
        // (no reference count touched per call).
        type Owner = ();

        #[inline(always)]
        fn owner(_: impl FnOnce() -> Kept) -> Self::Owner {}

        #[inline(always)]
        fn kept(_: &Self::Owner) -> Option<&Kept> {
            None
        }
    }
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<F, X: Expiry = OwnTimer> {
        Running {
            #[pin]
            inner: F,
            #[pin]
            sleep: <X as sealed::Timer>::Slot,
            deadline: Deadline,
            shared: <X as sealed::Timer>::Owner,
            overall_binds: bool,
            // The request's deadline ends the call as its own (see
            // `AttemptTimeoutService::call`); always, for a deadline.
            cut_short: bool,
            // An attempt no retry can follow: at its own limit it is not
            // cut but runs on to the request's deadline (see
            // `AttemptTimeoutService::call`); never, for a deadline.
            uncut: bool,
            expiry: PhantomData<fn() -> X>,
        },
        Rejected {
            error: Option<BoxError>,
        },
    }
}

impl<F: Future, X: Expiry> State<F, X> {
    #[inline]
    pub(crate) fn poll_state<T, E>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        layer: LayerKind,
    ) -> Poll<Result<T, BoxError>>
    where
        F: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let (error, own_timeout) = match self.as_mut().project() {
            StateProj::Running {
                inner,
                mut sleep,
                deadline,
                shared,
                overall_binds,
                cut_short,
                uncut,
                ..
            } => {
                // Every poll of the inner future sees the deadline as the
                // task-local `current()` one (an attempt bound by the
                // request's deadline: that one is current already).
                let polled = if *overall_binds && layer == LayerKind::AttemptTimeout {
                    inner.poll(cx)
                } else {
                    super::sync_scope(*deadline, || inner.poll(cx))
                };
                if polled.is_ready() {
                    if layer == LayerKind::AttemptTimeout {
                        if *cut_short {
                            super::note_cut_short(*deadline);
                        } else if X::armed(&sleep) {
                            // An attempt that waited (its timer armed; only
                            // one whose timer fired ran on).
                            answered_after_waiting(
                                *deadline,
                                *uncut,
                                *overall_binds,
                                X::kept(shared),
                            );
                        }
                        if matches!(polled, Poll::Ready(Err(_))) {
                            let (deadline, cut_short) = (*deadline, *cut_short);
                            let shared = X::kept(shared).map(sealed::Kept::get);
                            return polled
                                .map_err(|e| attempt_error(e.into(), deadline, cut_short, shared));
                        }
                    }
                    // Handed back as it lies (see ARCHITECTURE.md).
                    return polled.map_err(Into::into);
                }
                if !X::fired(sleep.as_mut(), deadline.instant(), cx) {
                    return Poll::Pending;
                }
                if (*uncut || (!*overall_binds && X::kept(shared).is_some_and(timeouts_common)))
                    && run_on(deadline, uncut)
                {
                    X::rearm(sleep.as_mut(), deadline.instant());
                    if !X::fired(sleep, deadline.instant(), cx) {
                        return Poll::Pending;
                    }
                }
                let error = expired(layer, X::kept(shared).map(sealed::Kept::get), *cut_short);
                (error, layer == LayerKind::AttemptTimeout && !*cut_short)
            }
            StateProj::Rejected { error } => return crate::error::poll_rejected(error),
        };
        if own_timeout {
            // The attempt's own timer ended the call: it is dropped now,
            // with the note that says so to an endpoint below (its
            // ejection counts a failure to answer in time).
            super::drop_timed_out(|| self.set(State::Rejected { error: None }));
        }
        Poll::Ready(Err(error))
    }
}

/// Whether the retry layer above an attempt timeout (linked in a stack)
/// would not retry a timeout now. Out of line: only a fired timer asks.
#[cold]
#[inline(never)]
fn timeouts_common(kept: &sealed::Kept) -> bool {
    kept.get()
        .retry_signal
        .as_ref()
        .is_some_and(|common| common())
}

/// What the layers above are told of an attempt that waited (its timer
/// armed) and was answered at `deadline`, its deadline now. One that ran on
/// past its own limit to the request's deadline: that deadline's end (a
/// breaker above does not count the dependency's answer to it: the
/// dependency had the caller's whole time, and answered). One cut at its
/// own limit and answered within `ANSWER_MARGIN` of it: `AT_LIMIT`, for
/// the retry layer linked above (a client stack's). Out of line: only an
/// attempt that waited reaches it.
#[inline(never)]
fn answered_after_waiting(
    deadline: Deadline,
    uncut: bool,
    overall_binds: bool,
    kept: Option<&sealed::Kept>,
) {
    if uncut {
        if super::current() == Some(deadline) {
            super::note_cut_short(deadline);
        }
    } else if !overall_binds
        && kept.is_some_and(|k| k.get().retry_signal.is_some())
        && deadline.remaining_from(crate::clock::edge_now()) <= super::ANSWER_MARGIN
    {
        super::note_at_limit();
    }
}

/// An attempt left uncut at its own limit (no retry can follow it): the
/// retry layer above is told it overran, and the attempt runs on to the
/// request's deadline, the current one (`true`; `deadline` is moved
/// there). Out of line: only an attempt past its limit reaches it.
#[cold]
#[inline(never)]
fn run_on(deadline: &mut Deadline, uncut: &mut bool) -> bool {
    match super::current() {
        Some(overall) if overall > *deadline => {
            super::note_overran();
            *deadline = overall;
            // (Kept: the attempt runs to the request's deadline; a fire
            // there finds nothing later to run on to.)
            *uncut = true;
            true
        }
        _ => {
            *uncut = false;
            false
        }
    }
}

/// An attempt's failure. A timeout below it ends as this layer's would
/// have:
/// - a transport that keeps the time itself (tonic's channel, from the
///   `grpc-timeout` the attempt sent) ends the call as this layer's
///   `AttemptTimeout` a moment before this layer's timer: reported here as
///   the timer's own would be (it was counted by no one: 52 attempts timed
///   out in an outside trial over tonic, 1 reported);
/// - when the request's deadline ended the attempt (within 20 ms of it), a
///   timer below that ran to the same deadline ends as the request's
///   deadline, [`DeadlineExceeded`](crate::error::DeadlineExceeded) (it is
///   not the dependency's failure).
///
/// Any other error is handed back as it is. Out of line: only a failed
/// attempt reaches it.
#[inline(never)]
fn attempt_error(
    error: BoxError,
    deadline: Deadline,
    cut_short: bool,
    shared: Option<&Shared>,
) -> BoxError {
    let Some(r) =
        crate::error::rejection_of(&error).filter(|r| r.kind() == RejectionKind::AttemptTimeout)
    else {
        return error;
    };
    let the_deadline = cut_short && deadline.remaining() <= super::ANSWER_MARGIN;
    if let Some(shared) = shared.filter(|s| r.name() == s.name.as_str()) {
        return expired(LayerKind::AttemptTimeout, Some(shared), the_deadline);
    }
    if the_deadline {
        return crate::error::DeadlineExceeded::new(r.name().to_owned()).into();
    }
    error
}

/// The error of a call whose timer fired (reported to the observer): the
/// request's deadline, or the attempt's own limit. Out of line: the
/// success path never reaches it.
#[inline(never)]
fn expired(layer: LayerKind, shared: Option<&Shared>, cut_short: bool) -> BoxError {
    let Some(shared) = shared else {
        // Without a timer of its own (`InnerTimers`) the layer never gets
        // here; should it, the call still ends as a deadline's.
        return crate::error::DeadlineExceeded::before_sending("deadline").into();
    };
    // (A deadline's own future is always `cut_short`.)
    if cut_short {
        return reject_deadline(layer, shared, TIMED_OUT);
    }
    shared.observer.emit(
        layer,
        shared.name.as_str(),
        EventKind::Rejected {
            reason: RejectionKind::AttemptTimeout,
            detail: TIMED_OUT,
            retry_after: None,
        },
    );
    AttemptTimeout::new(shared.name.clone()).into()
}

pin_project! {
    /// The response future of [`DeadlineService`](super::DeadlineService).
    ///
    /// Runs the inner future with the request's deadline as the task-local
    /// [`current()`](super::current) deadline on every poll, and fails with
    /// [`DeadlineExceeded`](crate::error::DeadlineExceeded) when the deadline
    /// passes first (with [`OwnTimer`]; with [`InnerTimers`], the layers
    /// inside report it). With [`OwnTimer`], the timer is pinned inside;
    /// nothing is boxed.
    pub struct ResponseFuture<F, X: Expiry = OwnTimer> {
        #[pin]
        state: State<F, X>,
    }
}

/// What a running future keeps of its layer, taken before the inner call
/// (work done while the inner future sits in a temporary costs a copy of
/// it).
#[inline(always)]
pub(crate) fn owner<X: Expiry>(shared: &Striped<Shared>) -> X::Owner {
    X::owner(|| sealed::Kept::new(shared))
}

impl<F: Future, X: Expiry> ResponseFuture<F, X> {
    #[inline]
    pub(crate) fn running(call: impl FnOnce() -> F, deadline: Deadline, owner: X::Owner) -> Self {
        // Built in place, the inner call made where its future is kept (a
        // helper returning the state, or a future passed in, costs a copy
        // of it).
        ResponseFuture {
            state: State::Running {
                inner: call(),
                sleep: X::unarmed(),
                deadline,
                shared: owner,
                overall_binds: true,
                cut_short: true,
                uncut: false,
                expiry: PhantomData,
            },
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E, X: Expiry> Future for ResponseFuture<F, X>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // No edge of the clock: an answer passes through without a clock
        // read (see `clock::edge_now`); a fired timer is judged by the timer.
        self.project().state.poll_state(cx, LayerKind::Deadline)
    }
}

impl<F, X: Expiry> fmt::Debug for ResponseFuture<F, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
