use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::handle::{CoreRef, Shared};
use super::state::Core;
use super::state::{Permit, PermitKind};
use crate::classify::{Classify, JudgeFn, judge};
use crate::clock;
use crate::error::{BoxError, CircuitOpen};
use crate::hold::{Duty, DutyKind, End, Head, HoldVerdict};
use crate::observe::{EventKind, LayerKind, Outcome};
use crate::stripe::Ticket;

/// An admitted call's ticket, kept in its future: reports the outcome when the
/// call finishes, or gives a half-open probe slot back if the future is
/// dropped first.
pub(crate) struct Guard<C> {
    shared: Ticket<Shared<C>>,
    // The permit's two fields, kept apart so that the small ones below
    // share its padding (8 bytes off the future).
    generation: u64,
    kind: PermitKind,
    lane: u8,
    /// When the call went in (an untimed call: the breaker's origin).
    start: Instant,
    /// How the call keeps time: [`UNTIMED`], [`CLOCKED`] or [`TIMED`].
    clock: u8,
    done: bool,
}

/// A call that reads no clock while the breaker is closed (a count window,
/// no slow calls, no hook).
pub(crate) const UNTIMED: u8 = 0;
/// A call that reads the clock as it ends only (a time window's bucket).
pub(crate) const CLOCKED: u8 = 1;
/// A call that keeps its latency (see `Core::timed`).
pub(crate) const TIMED: u8 = 2;

impl<C> Guard<C> {
    pub(crate) fn new(
        shared: Ticket<Shared<C>>,
        permit: Permit,
        start: Instant,
        clock: u8,
    ) -> Self {
        Guard {
            shared,
            generation: permit.generation,
            kind: permit.kind,
            lane: permit.lane,
            start,
            clock,
            done: false,
        }
    }
}

impl<C> Guard<C> {
    /// The permit the call was admitted with.
    #[inline]
    fn permit(&self) -> Permit {
        Permit {
            generation: self.generation,
            kind: self.kind,
            lane: self.lane,
        }
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.core.on_cancel(self.permit());
        }
    }
}

pin_project! {
    /// The future of a [`CircuitBreaker`](super::CircuitBreaker) call: the
    /// inner call with its breaker ticket, or an immediate [`CircuitOpen`]
    /// rejection.
    pub struct ResponseFuture<F, C, M = Head> {
        #[pin]
        kind: Kind<F, C>,
        hold: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            guard: Guard<C>,
        },
        Rejected {
            error: Option<BoxError>,
        },
    }
}

impl<F, C, M> ResponseFuture<F, C, M> {
    #[inline]
    pub(crate) fn called(future: F, guard: Guard<C>) -> Self {
        ResponseFuture {
            kind: Kind::Called { future, guard },
            hold: PhantomData,
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Rejected {
                error: Some(error.into()),
            },
            hold: PhantomData,
        }
    }
}

impl<F, C, M> fmt::Debug for ResponseFuture<F, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { .. } => f.write_str("ResponseFuture::Called"),
            Kind::Rejected { .. } => f.write_str("ResponseFuture::Rejected"),
        }
    }
}

impl<F, C, M, T, E> Future for ResponseFuture<F, C, M>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classify<T, E>,
    M: HoldVerdict<T, C>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            // Three paths, each straight, as in the service's `call`.
            KindProj::Called { future, guard } => match guard.clock {
                TIMED => poll_called::<F, C, M, T, E, TIMED>(future, guard, cx),
                CLOCKED => poll_called::<F, C, M, T, E, CLOCKED>(future, guard, cx),
                _ => poll_called::<F, C, M, T, E, UNTIMED>(future, guard, cx),
            },
            KindProj::Rejected { error } => crate::error::poll_rejected(error),
        }
    }
}

/// Polls an admitted call and reports its outcome once it is ready;
/// `CLOCK`: how the call keeps time.
#[inline]
fn poll_called<F, C, M, T, E, const CLOCK: u8>(
    future: Pin<&mut F>,
    guard: &mut Guard<C>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classify<T, E>,
    M: HoldVerdict<T, C>,
{
    // A call that reads the clock as it ends shares the instant the layers
    // inside read, inside an edge of its own: an instant read at the
    // caller's depth would outlive a handler's work in the same poll
    // (see `clock::handler_ran`), and a response held to its body's end
    // would read it twice.
    let _edge = (CLOCK != UNTIMED).then(crate::clock::Edge::enter);
    // The answer is judged where it lies and handed back from
    // there (see ARCHITECTURE.md).
    let mut poll = future.poll(cx);
    let Poll::Ready(result) = &mut poll else {
        return Poll::Pending;
    };
    if !guard.done {
        let shared = &*guard.shared;
        // The model first: a local refusal is never counted,
        // whatever the classifier says.
        let mut outcome = judge(&shared.classifier, result.as_ref());
        if outcome == Outcome::Failure
            && ended_by_the_requests_deadline(&shared.classifier, result.as_ref())
        {
            outcome = Outcome::Ignored;
        }
        // A busy answer: a bare one may be a dependency that serves
        // nothing; one that paces its caller is from a server that is up
        // (see `Core::on_busy`).
        let busy = (outcome == Outcome::Overloaded && !shared.core.config.count_overload)
            .then(|| !paced(&shared.classifier, result.as_ref()));
        // Judged (a classifier that panicked has left the guard to give a
        // probe's slot back).
        guard.done = true;
        let held = match (result, outcome) {
            // Looks like a success, but the body may still fail
            // (or carry an error status in its trailers): judged
            // when it ends.
            (Ok(response), Outcome::Success) => M::pending(response).and_then(|j| {
                let (head, latency) = elapsed::<C, CLOCK>(guard);
                let pending = Pending {
                    shared: guard.shared.clone().into_stripe(),
                    permit: guard.permit(),
                    head,
                    latency,
                    judge: j.0,
                    done: false,
                    waiting: false,
                };
                match M::hold(response, Duty(DutyKind::Breaker(pending))) {
                    None => Some(()),
                    Some(Duty(DutyKind::Breaker(mut back))) => {
                        back.done = true;
                        None
                    }
                    #[allow(unreachable_patterns)]
                    Some(_) => None,
                }
            }),
            _ => None,
        };
        if held.is_some() {
            // Judged at its body's end, which may come long after: the
            // dependency served its head.
            shared.core.end_busy_run();
        } else {
            let (now, latency) = elapsed::<C, CLOCK>(guard);
            let at = At::Now {
                now,
                timed: CLOCK != UNTIMED,
            };
            finish(&shared.core, guard.permit(), latency, outcome, at, busy);
        }
    }
    poll.map_err(Into::into)
}

/// Whether a busy answer paces its caller: the classifier says so
/// ([`Classify::is_paced_answer`]), or the error is a seawall rejection
/// with a `retry_after`. Out of line: only a busy answer asks.
#[cold]
#[inline(never)]
fn paced<C, T, E>(classifier: &C, result: Result<&T, &E>) -> bool
where
    C: Classify<T, E>,
    E: 'static,
{
    classifier.is_paced_answer(result)
        || result
            .err()
            .and_then(|e| crate::error::rejection_in(e))
            .is_some_and(|r| r.retry_after().is_some())
}

/// Whether a failed call was ended by the request's own deadline, while a
/// deadline is set outside the breaker (the stack's total budget, or a
/// shorter one its caller sent): the failure came back in that deadline's
/// last 20 ms and says "deadline" — a
/// [`DeadlineExceeded`](crate::error::DeadlineExceeded) raised inside the
/// breaker as the deadline passed, or the dependency's answer to the
/// deadline it was sent ([`Classify::is_deadline_answer`]: HTTP 504, gRPC
/// `DEADLINE_EXCEEDED` or `CANCELLED`) when an attempt timeout below saw
/// that deadline cut the attempt short (not one whose timeout is the
/// whole budget: that dependency had its attempt), or let the attempt run
/// on to it past its own limit (the dependency answered, given the
/// caller's whole time). The dependency was not given its
/// attempt timeout, so the call says nothing of its health and is not
/// counted: callers with short budgets do not open a breaker on a healthy
/// dependency for callers with longer ones. Counted: an attempt timeout,
/// any other failure (a 500, a refused connection) however little time
/// was left, and a deadline that passed while the request's had more than
/// 20 ms to go (one set only inside the breaker, a `DeadlineLayer` below
/// it). Out of line: only a failed call reaches it.
#[inline(never)]
fn ended_by_the_requests_deadline<C, T, E>(classifier: &C, result: Result<&T, &E>) -> bool
where
    C: Classify<T, E>,
    E: 'static,
{
    #[cfg(feature = "deadline")]
    {
        let Some(deadline) = crate::deadline::current() else {
            return false;
        };
        deadline.remaining() <= crate::deadline::ANSWER_MARGIN
            && (result
                .err()
                .and_then(|e| crate::error::rejection_in(e))
                .is_some_and(|r| {
                    r.kind() == crate::error::RejectionKind::DeadlineExceeded && !r.is_local()
                })
                || (classifier.is_deadline_answer(result) && crate::deadline::cut_short(deadline)))
    }
    #[cfg(not(feature = "deadline"))]
    {
        let _ = (classifier, result);
        false
    }
}

/// The instant now and the nanoseconds since the call went in, for a
/// timed call; for an untimed one, 0 and the instant now in a time window
/// (the call's bucket), its start again (no clock read) in a count window.
#[inline(always)]
fn elapsed<C, const CLOCK: u8>(guard: &Guard<C>) -> (Instant, u64) {
    match CLOCK {
        TIMED => {
            let now = clock::edge_now();
            (now, crate::clock::nanos_between(guard.start, now))
        }
        CLOCKED => (clock::edge_now(), 0),
        _ => (guard.start, 0),
    }
}

/// When a call's outcome is recorded.
#[derive(Clone, Copy)]
enum At {
    /// As the call ends, at this instant (if `timed`; an untimed call
    /// reads the clock only if its outcome opens the breaker).
    Now { now: Instant, timed: bool },
    /// At the end of its body, in the window at the head's instant (the
    /// clock is read only if the outcome opens the breaker).
    BodyEnd { head: Instant },
}

/// Records a finished call's outcome (or gives its slot back when it is
/// not counted) and reports it; `busy`, for a busy answer not counted:
/// whether it is bare (`Some(true)`: it may extend a run of them, see
/// `Core::on_busy`) or paces its caller (`Some(false)`: it ends one).
#[inline(always)]
fn finish(core: &Core, permit: Permit, latency: u64, outcome: Outcome, at: At, busy: Option<bool>) {
    let failure = match outcome {
        Outcome::Success => Some(false),
        Outcome::Failure => Some(true),
        Outcome::Overloaded if core.config.count_overload => Some(true),
        // Not counted: recorded nowhere, and a probe's slot is given back,
        // exactly as if it had been dropped.
        _ => None,
    };
    match failure {
        Some(failure) => {
            let slow = latency > core.config.slow_call_nanos;
            match at {
                At::Now { now, timed } => core.on_complete(permit, now, timed, failure, slow),
                At::BodyEnd { head } => core.on_late_complete(permit, head, failure, slow),
            }
        }
        // A "busy" answer: not counted, unless every answer has been busy
        // for a while (see `Core::on_busy`).
        None if busy == Some(true) => match at {
            At::Now { now, timed } => {
                core.on_busy(permit, || if timed { now } else { clock::edge_now() })
            }
            At::BodyEnd { .. } => core.on_busy(permit, clock::edge_now),
        },
        None => {
            if busy == Some(false) {
                core.end_runs();
            }
            core.on_cancel(permit)
        }
    }
    core.observer.emit(
        LayerKind::CircuitBreaker,
        core.name.as_str(),
        EventKind::CallFinished {
            outcome,
            latency: Duration::from_nanos(latency),
        },
    );
}

/// A call whose head looked like a success, waiting in its body for the
/// verdict; a body dropped before its end counts as its head said, a
/// success (a caller that reads the status and drops the body has had its
/// answer: leaving those out would leave only failures in the window).
/// Its latency (for slow calls and the `CallFinished` event) is the head's:
/// a healthy stream that lasts is not a slow call. It counts in the window
/// at the head's instant too, so the body's end reads the clock only when
/// its outcome opens the breaker (the open time runs from then).
#[cfg_attr(not(all(feature = "http", feature = "deadline")), allow(dead_code))]
pub(crate) struct Pending {
    shared: Arc<dyn CoreRef>,
    permit: Permit,
    /// The instant the head came back.
    head: Instant,
    /// Nanoseconds from the call to its head.
    latency: u64,
    judge: JudgeFn,
    done: bool,
    /// A read of the body is waiting for more (set by the body).
    pub(crate) waiting: bool,
}

#[cfg_attr(not(all(feature = "http", feature = "deadline")), allow(dead_code))]
impl Pending {
    /// Gives the verdict of the body's end: a complete body confirms the
    /// head's success; a failed one is classified as the error it ended
    /// with (see `Drop` for one dropped before its end).
    pub(crate) fn settle(mut self, end: End<'_>) {
        let outcome = match end {
            End::Complete => Outcome::Success,
            End::Failed(error) => (self.judge)(self.shared.classifier(), error),
        };
        self.settle_as(outcome);
    }

    /// Gives `outcome` as the verdict.
    fn settle_as(&mut self, outcome: Outcome) {
        self.done = true;
        let core = self.shared.core();
        // (A body that ends busy, a stream's status in its trailers, is
        // in no run of busy answers, nor ends one: not counted, as ever.)
        finish(
            core,
            self.permit,
            self.latency,
            outcome,
            At::BodyEnd { head: self.head },
            None,
        );
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            if self.waiting {
                // Given up on while a read waited for more: nothing known.
                self.done = true;
                self.shared.core().on_cancel(self.permit);
            } else {
                // Dropped before its end: the head's verdict stands.
                self.settle_as(Outcome::Success);
            }
        }
    }
}
