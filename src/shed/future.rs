use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::limiter::{Completion, Limiter, Permit};
use crate::error::{BoxError, RejectionKind, rejection};
use crate::hold::{Head, Hold, Release};
use crate::observe::Outcome;
use crate::stripe::Ticket;

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
    ///
    /// A request queued for a herd (see
    /// [`max_queue`](super::AdaptiveLimitLayerBuilder::max_queue)), or
    /// over a limit that
    /// [waits at the limit](super::AdaptiveLimitLayerBuilder::wait_at_limit),
    /// waits here for its place, holding its request and a clone of the inner
    /// service (polled ready), in one allocation; dropped while it waits,
    /// it leaves the queue, and gives back a place it was handed.
    pub struct ResponseFuture<S, Req, M = Head>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        hold: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Admitted { #[pin] future: S::Future, permit: Option<Permit> },
        // Queued for a herd, or refused: one state, so that an admitted
        // call's poll and drop tell two states apart, not three.
        Cold { cold: Cold<S, Req> },
    }
}

/// A future that is no admitted call's.
enum Cold<S, Req>
where
    S: Service<Req>,
{
    /// Queued for a herd, waiting for a place.
    Queued(Pin<Box<Waiting<S, Req>>>),
    /// Refused (the error taken once it was returned).
    Refused(Option<BoxError>),
}

/// A request's place in the queue for a herd: leaves it when dropped.
pub(crate) struct Place {
    limiter: Ticket<Limiter>,
    idx: u32,
    left: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if !self.left {
            self.limiter.leave(self.idx);
        }
    }
}

pin_project! {
    /// A queued request, until its place comes (or it is refused).
    pub(crate) struct Waiting<S, Req> {
        place: Place,
        service: Option<S>,
        request: Option<Req>,
        // What a retry layer above said of this attempt as it was called
        // (whether a retry may follow a timeout of it), said again around
        // the call made later.
        gate: Option<bool>,
        // Its deadline; the sleep ends at its patience first (see
        // `Limiter::out_of_patience`), then at the deadline.
        deadline: tokio::time::Instant,
        patient: bool,
        #[pin]
        sleep: Sleep,
    }
}

impl<S, Req, M> ResponseFuture<S, Req, M>
where
    S: Service<Req>,
{
    /// A request queued at `idx`, to be called on `service` (polled ready)
    /// once its place comes; refused at `patience` if no call ended
    /// meanwhile, and at its `deadline` at the latest.
    pub(crate) fn queued(
        limiter: Ticket<Limiter>,
        idx: u32,
        service: S,
        request: Req,
        deadline: tokio::time::Instant,
        patience: tokio::time::Instant,
    ) -> Self {
        ResponseFuture {
            state: State::Cold {
                cold: Cold::Queued(Box::pin(Waiting {
                    place: Place {
                        limiter,
                        idx,
                        left: false,
                    },
                    service: Some(service),
                    request: Some(request),
                    gate: crate::deadline::retry_may_follow(),
                    deadline,
                    patient: patience < deadline,
                    sleep: tokio::time::sleep_until(patience.min(deadline)),
                })),
            },
            hold: PhantomData,
        }
    }

    #[inline]
    pub(crate) fn admitted(future: S::Future, permit: Permit) -> Self {
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
            state: State::Cold {
                cold: Cold::Refused(Some(error)),
            },
            hold: PhantomData,
        }
    }
}

impl<S, Req, M> fmt::Debug for ResponseFuture<S, Req, M>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Cold {
                cold: Cold::Queued(_),
            } => f
                .debug_struct("ResponseFuture")
                .field("queued", &true)
                .finish_non_exhaustive(),
            State::Admitted { permit, .. } => f
                .debug_struct("ResponseFuture")
                .field("permit", permit)
                .finish_non_exhaustive(),
            State::Cold {
                cold: Cold::Refused(error),
            } => f
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

impl<S, Req, M> Future for ResponseFuture<S, Req, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: Hold<S::Response> + Release<Req>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = crate::clock::Edge::enter();
        let mut this = self.project();
        if let State::Cold { .. } = &*this.state {
            if let Some(error) = ready!(poll_cold::<S, Req, M>(this.state.as_mut(), cx)) {
                return Poll::Ready(Err(error));
            }
        }
        match this.state.project() {
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
            // (Left by `poll_cold` only once admitted.)
            StateProj::Cold { .. } => Poll::Pending,
        }
    }
}

/// A future that is no admitted call's: `Ready(None)` once a queued
/// request was handed its place (the state is then `Admitted`),
/// `Ready(Some(error))` refused (its error, once). Out of line: the
/// admitted calls' poll only looks at the state's tag.
#[cold]
#[inline(never)]
fn poll_cold<S, Req, M>(
    mut state: Pin<&mut State<S, Req>>,
    cx: &mut Context<'_>,
) -> Poll<Option<BoxError>>
where
    S: Service<Req>,
    M: Release<Req>,
{
    let StateProj::Cold { cold } = state.as_mut().project() else {
        return Poll::Ready(None);
    };
    let waiting = match cold {
        Cold::Queued(waiting) => waiting,
        Cold::Refused(error) => {
            return Poll::Ready(Some(
                error
                    .take()
                    .unwrap_or_else(|| "future polled after completion".into()),
            ));
        }
    };
    match ready!(poll_place::<S, Req, M>(waiting.as_mut(), cx)) {
        Ok((future, permit)) => {
            state.set(State::Admitted {
                future,
                permit: Some(permit),
            });
            Poll::Ready(None)
        }
        Err(error) => {
            state.set(State::Cold {
                cold: Cold::Refused(None),
            });
            Poll::Ready(Some(error))
        }
    }
}

/// A queued request: once its place comes, the inner service called (and
/// its permit); refused (too late to be served), or at its deadline, the
/// error. Out of line: no admitted call comes here.
#[cold]
#[inline(never)]
fn poll_place<S, Req, M>(
    waiting: Pin<&mut Waiting<S, Req>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(S::Future, Permit), BoxError>>
where
    S: Service<Req>,
    M: Release<Req>,
{
    let mut this = waiting.project();
    let limiter = &this.place.limiter;
    let stands = loop {
        match limiter.poll_place(this.place.idx, cx) {
            Poll::Pending if this.sleep.as_mut().poll(cx).is_ready() => {
                if *this.patient {
                    *this.patient = false;
                    let now = crate::clock::edge_now();
                    if let Some(hint) = limiter.out_of_patience(this.place.idx, now) {
                        this.place.left = true;
                        limiter.leave(this.place.idx);
                        break Err(Some(hint));
                    }
                    // The calls at the limit move: on to its deadline.
                    this.sleep.as_mut().reset(*this.deadline);
                    continue;
                }
                // Its deadline came first.
                this.place.left = true;
                limiter.leave(this.place.idx);
                break Err(None);
            }
            Poll::Pending => return Poll::Pending,
            Poll::Ready(stands) => {
                this.place.left = true;
                break stands.map_err(Some);
            }
        }
    };
    match stands {
        Ok(class) => {
            let permit = Permit::granted(this.place.limiter.clone(), class);
            let (Some(mut svc), Some(req)) = (this.service.take(), this.request.take()) else {
                return Poll::Ready(Err("future polled after completion".into()));
            };
            let future = match *this.gate {
                Some(may_follow) => {
                    crate::deadline::call_with_retry_gate(may_follow, || svc.call(req))
                }
                None => svc.call(req),
            };
            Poll::Ready(Ok((future, permit)))
        }
        Err(hint) => {
            if let Some(request) = this.request.take() {
                M::release(request);
            }
            Poll::Ready(Err(super::service::refused_from_queue(
                &this.place.limiter,
                hint,
            )))
        }
    }
}
