use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::limiter::{Completion, Permit};
use crate::error::{BoxError, RejectionKind, rejection};
use crate::hold::{Head, Hold};
use crate::observe::Outcome;

pin_project! {
    /// The response future of [`AdaptiveLimit`](super::AdaptiveLimit).
    ///
    /// An admitted call holds its place under the limit until its answer's
    /// head comes back or this future is dropped. Completion feeds the limit: an `Ok` is an RTT
    /// sample; an error that says a call did not make it in time
    /// (`DeadlineExceeded`, `AttemptTimeout`) is a drop; other errors are
    /// ignored, an `Overloaded` too (a dependency's "busy" passed on). A
    /// future dropped before it finished (a caller that went) is not
    /// counted.
    ///
    /// While the handler waits on a call out through a seawall client
    /// stack (a [`Retry`](crate::retry::Retry), the client stack's layer
    /// that spans the whole call), the call is out of the count of calls
    /// in flight, back in it (over the limit if need be) when the wait
    /// ends, and its latency sample leaves that time out: a dependency that
    /// queues or hangs behind one route is no queue of this server's, and
    /// fills no place the other routes need. A call out made another way
    /// (a plain client), or polled on a task of its own (spawned), counts
    /// as the handler's own time; the handler's own work while a call out
    /// is open (a `join!` of the two) counts as outside. A client stack's
    /// own limit keeps nothing apart (its calls are all out).
    pub struct ResponseFuture<F, M = Head> {
        #[pin]
        state: State<F>,
        hold: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Admitted { #[pin] future: F, permit: Option<Permit> },
        Rejected { error: Option<BoxError> },
    }
}

impl<F, M> ResponseFuture<F, M> {
    #[inline]
    pub(crate) fn admitted(future: F, permit: Permit) -> Self {
        ResponseFuture {
            state: State::Admitted {
                future,
                permit: Some(permit),
            },
            hold: PhantomData,
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
            hold: PhantomData,
        }
    }
}

impl<F, M> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Admitted { permit, .. } => f
                .debug_struct("ResponseFuture")
                .field("permit", permit)
                .finish_non_exhaustive(),
            State::Rejected { error } => f
                .debug_struct("ResponseFuture")
                .field("error", error)
                .finish(),
        }
    }
}

/// How a failed call feeds the limit, from the rejection in its error (one
/// walk of its source chain). A call that did not make it through in time
/// is a drop: a deadline (the request's, passed here: also one that passed
/// before the handler could send its own call) or an attempt timeout (the
/// handler timeout). A refusal of a layer below in this process (a
/// bulkhead for a pool) is refused, not failed; an `Overloaded` is a
/// dependency's "busy" the handler passed on, no queue of this server's,
/// as the presets judge a 503 or 429 answer (counted as drops, a
/// dependency shedding for a few seconds halved the limit of every server
/// in front of it, which then refused healthy traffic while it grew back).
/// Neither is a sample; nor is any other failure.
fn failed(err: &BoxError) -> Completion {
    match rejection(&**err) {
        Some(r)
            if matches!(
                r.kind(),
                RejectionKind::DeadlineExceeded | RejectionKind::AttemptTimeout
            ) =>
        {
            Completion::Drop
        }
        Some(r) if r.is_local() => Completion::Sample(Outcome::Refused),
        Some(r) if r.kind() == RejectionKind::Overloaded => Completion::Sample(Outcome::Overloaded),
        _ => Completion::Ignore,
    }
}

impl<F, M, T, E> Future for ResponseFuture<F, M>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    M: Hold<T>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = crate::clock::Edge::enter();
        match self.project().state.project() {
            StateProj::Admitted { future, permit } => {
                // An answer is seen where it lies and handed back from
                // there (see ARCHITECTURE.md).
                // The handler's waits on calls out, current while it runs.
                let mut poll = {
                    let _waits = permit
                        .as_mut()
                        .filter(|p| p.waits_apart())
                        .map(|p| crate::outbound::Scope::enter(&mut p.waits));
                    future.poll(cx)
                };
                let Poll::Ready(result) = &mut poll else {
                    if let Some(permit) = permit {
                        permit.follow_waits();
                    }
                    return Poll::Pending;
                };
                // The handler below ran: an instant read inside it (a
                // client stack it called) is not its end.
                crate::clock::handler_ran();
                let Some(mut permit) = permit.take() else {
                    return Poll::Ready(Err("future polled after completion".into()));
                };
                match result {
                    // The head: the call's latency, and its place given back
                    // (a streamed body that follows holds the bulkhead's
                    // permit, not a place: see `hold`).
                    Ok(response) if M::PAST_HEAD => permit.complete_answer(|| {
                        match M::outcome(response) {
                            // A handler that ran out of time (waiting on a
                            // dependency that hung, say): counted apart, for
                            // the time it held its place.
                            Outcome::Failure if M::timed_out(response) => Completion::TimedOut,
                            outcome => Completion::Sample(outcome),
                        }
                    }),
                    Ok(_) => permit.complete(Completion::Sample(Outcome::Success)),
                    Err(_) => {
                        // A failure is judged as a `BoxError`.
                        let result = ready!(poll).map_err(Into::into);
                        permit.complete(match &result {
                            Err(e) => failed(e),
                            Ok(_) => Completion::Ignore,
                        });
                        return Poll::Ready(result);
                    }
                }
                poll.map_err(Into::into)
            }
            StateProj::Rejected { error } => crate::error::poll_rejected(error),
        }
    }
}
