use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::queue::{Engine, GiveUp, Permit, Waiter};
use crate::error::{BoxError, BulkheadFull, DeadlineExceeded};
use crate::hold::{Duty, DutyKind, Head, Hold, Release};
use crate::observe::{EventKind, LayerKind, Outcome};
use crate::{clock, deadline};

/// Emits the `Rejected` event and builds the error: `DeadlineExceeded` when
/// the request's deadline ended the wait (nothing is left to come back
/// with), `BulkheadFull` with a jittered `retry_after` otherwise.
pub(crate) fn reject(engine: &Engine, why: GiveUp) -> BoxError {
    if why == GiveUp::Deadline {
        engine.observer.emit(
            LayerKind::Bulkhead,
            engine.name.as_str(),
            EventKind::Rejected {
                reason: crate::error::RejectionKind::DeadlineExceeded,
                detail: why.detail(),
                retry_after: None,
            },
        );
        // Never sent: a local refusal.
        return DeadlineExceeded::before_sending(engine.name.clone()).into();
    }
    let retry_after = retry_hint(engine, why);
    engine.observer.emit(
        LayerKind::Bulkhead,
        engine.name.as_str(),
        EventKind::Rejected {
            reason: crate::error::RejectionKind::BulkheadFull,
            detail: why.detail(),
            retry_after: Some(retry_after),
        },
    );
    BulkheadFull::new(engine.name.clone(), Some(retry_after)).into()
}

/// The `retry_after` of a full bulkhead: for a waiter that waited in the
/// queue without a slot (`max_wait`, CoDel), the queue's `max_wait`;
/// for a request that found every place and the queue taken, or no queue,
/// [`MIN_HINT`](crate::clock::MIN_HINT) (100 ms): a full queue is a
/// moment's verdict, and a queue sized for bursts empties within a few
/// service times (told `max_wait`, 1 s by default, a caller with a budget
/// of 1 s never came back: in an outside trial over tonic, a front whose 8
/// calls at once met the full queue of a pool at 65 % of its capacity gave
/// up every such call at once, and lost 0.7 % of its requests). Never less
/// than that floor.
/// Stretched by a pseudo-random factor in `[1, 1.5)` so that refused
/// clients do not come back together.
fn retry_hint(engine: &Engine, why: GiveUp) -> std::time::Duration {
    let base = match why {
        GiveUp::MaxWait | GiveUp::Codel => engine.settings.max_wait,
        GiveUp::QueueFull | GiveUp::Deadline => crate::clock::MIN_HINT,
    };
    engine.jitter.stretch(base.max(crate::clock::MIN_HINT))
}

/// Emits `CallStarted`; returns the start time if a hook listens (for the
/// latency of `CallFinished`).
#[inline]
fn started(engine: &Engine) -> Option<Instant> {
    if engine.observer.is_enabled() {
        engine.observer.emit(
            LayerKind::Bulkhead,
            engine.name.as_str(),
            EventKind::CallStarted,
        );
        Some(clock::edge_now())
    } else {
        None
    }
}

/// When a waiter gives up and why: the earliest of `max_wait`, the request
/// deadline and CoDel's limit (ties: deadline, then `max_wait`, then CoDel).
fn give_up_at(
    max_wait_until: Option<Instant>,
    codel_until: Option<Instant>,
    deadline: Option<deadline::Deadline>,
) -> (Option<Instant>, GiveUp) {
    let mut at = max_wait_until;
    let mut why = GiveUp::MaxWait;
    if let Some(c) = codel_until {
        if at.is_none_or(|a| c < a) {
            at = Some(c);
            why = GiveUp::Codel;
        }
    }
    if let Some(d) = deadline.map(deadline::Deadline::instant) {
        if at.is_none_or(|a| d <= a) {
            at = Some(d);
            why = GiveUp::Deadline;
        }
    }
    (at, why)
}

pin_project! {
    /// The response future of [`Bulkhead`](super::Bulkhead).
    ///
    /// It waits for a permit if the request was queued, calls the inner
    /// service, and holds the permit until the inner future completes or this
    /// future is dropped. Dropped while waiting, it leaves the queue (and
    /// passes on a permit it was handed but had not yet used).
    pub struct ResponseFuture<S, Req, M = Head>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        started: Option<Instant>,
        hold: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Waiting {
            waiter: Waiter,
            service: Option<S>,
            request: Option<Req>,
            #[pin]
            sleep: Option<Sleep>,
            until: Option<Instant>,
            why: GiveUp,
            // What a retry layer above said of this attempt as it was
            // called (whether a retry may follow a timeout of it), said
            // again around the call made later.
            gate: Option<bool>,
        },
        Admitted {
            service: Option<S>,
            request: Option<Req>,
            permit: Option<Permit>,
            gate: Option<bool>,
        },
        Running {
            #[pin]
            future: S::Future,
            permit: Option<Permit>,
        },
        Rejected {
            error: Option<BoxError>,
        },
        Done,
    }
}

impl<S, Req, M> ResponseFuture<S, Req, M>
where
    S: Service<Req>,
{
    #[inline]
    pub(crate) fn running(permit: Permit, call: impl FnOnce() -> S::Future) -> Self {
        let started = started(permit.engine());
        ResponseFuture {
            state: State::Running {
                future: call(),
                permit: Some(permit),
            },
            started,
            hold: PhantomData,
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
            started: None,
            hold: PhantomData,
        }
    }

    pub(crate) fn waiting(
        waiter: Waiter,
        service: S,
        request: Req,
        now: Instant,
        codel_until: Option<Instant>,
        engine: &Engine,
        deadline: Option<deadline::Deadline>,
    ) -> Self
    where
        M: Release<Req>,
    {
        let max_wait_until = now.checked_add(engine.settings.max_wait);
        let (until, why) = give_up_at(max_wait_until, codel_until, deadline);
        if until.is_some_and(|u| u <= now) {
            // Nothing left to wait for (the deadline has passed): leave the
            // queue (dropping the waiter) and say so at once.
            drop(waiter);
            let error = reject(engine, why);
            M::release(request);
            return Self::rejected(error);
        }
        ResponseFuture {
            state: State::Waiting {
                waiter,
                service: Some(service),
                request: Some(request),
                sleep: None,
                until,
                why,
                gate: deadline::retry_may_follow(),
            },
            started: None,
            hold: PhantomData,
        }
    }
}

impl<S, Req, M> Future for ResponseFuture<S, Req, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: Hold<S::Response> + Release<Req>,
{
    type Output = Result<S::Response, BoxError>;

    // Out of line: inlined into the layers around it, its answer goes
    // through one more temporary (see ARCHITECTURE.md).
    #[inline(never)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // No edge of the clock of its own (see `Bulkhead::call`).
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    waiter,
                    service,
                    request,
                    mut sleep,
                    until,
                    why,
                    gate,
                } => {
                    if let Poll::Ready(permit) = waiter.poll(cx) {
                        *this.started = started(permit.engine());
                        let (service, request, gate) = (service.take(), request.take(), *gate);
                        this.state.set(State::Admitted {
                            service,
                            request,
                            permit: Some(permit),
                            gate,
                        });
                        continue;
                    }
                    if sleep.is_none() {
                        // First poll: the deadline may be set around the
                        // future rather than around `call`.
                        if let Some(d) = deadline::current() {
                            if until.is_none_or(|u| d.instant() <= u) {
                                *until = Some(d.instant());
                                *why = GiveUp::Deadline;
                            }
                        }
                        if let Some(u) = *until {
                            sleep.set(Some(tokio::time::sleep_until(u)));
                        }
                    }
                    let expired = match sleep.as_pin_mut() {
                        Some(s) => s.poll(cx).is_ready(),
                        None => false,
                    };
                    if !expired {
                        return Poll::Pending;
                    }
                    match waiter.leave() {
                        Some(permit) => {
                            // Handed a permit just as the wait ran out: use it.
                            *this.started = started(permit.engine());
                            let (service, request, gate) = (service.take(), request.take(), *gate);
                            this.state.set(State::Admitted {
                                service,
                                request,
                                permit: Some(permit),
                                gate,
                            });
                        }
                        None => {
                            let error = reject(waiter.engine(), *why);
                            if let Some(request) = request.take() {
                                M::release(request);
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Admitted {
                    service,
                    request,
                    permit,
                    gate,
                } => {
                    // The instance kept is the one polled ready before the
                    // call was queued: it is called now, without waiting for
                    // its readiness again (a wait no timer would bound).
                    let Some(svc) = service.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    let (Some(req), Some(permit)) = (request.take(), permit.take()) else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    let future = match *gate {
                        Some(may_follow) => {
                            deadline::call_with_retry_gate(may_follow, || svc.call(req))
                        }
                        None => svc.call(req),
                    };
                    this.state.set(State::Running {
                        future,
                        permit: Some(permit),
                    });
                }
                StateProj::Running { future, permit } => {
                    // The answer is seen where it lies and handed back from
                    // there (see ARCHITECTURE.md).
                    let mut poll = future.poll(cx);
                    let Poll::Ready(result) = &mut poll else {
                        return Poll::Pending;
                    };
                    let Some(permit) = permit.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    if let Some(start) = *this.started {
                        let engine = permit.engine();
                        engine.observer.emit(
                            LayerKind::Bulkhead,
                            engine.name.as_str(),
                            EventKind::CallFinished {
                                outcome: match &*result {
                                    Ok(response) => M::outcome(response),
                                    Err(_) => Outcome::Failure,
                                },
                                latency: crate::clock::elapsed(start, clock::edge_now()),
                            },
                        );
                    }
                    // Releases the permit before handing the result back,
                    // unless the response's body carries it to its end: an
                    // answer whose head says it failed or is busy is done
                    // with (its body, a message, is no work of the
                    // dependency's, and a retry that keeps it through its
                    // backoff would hold the permit while it sleeps).
                    match result {
                        Ok(response)
                            if M::PAST_HEAD && M::outcome(response) == Outcome::Success =>
                        {
                            drop(M::hold(response, Duty(DutyKind::Bulkhead(permit))));
                        }
                        _ => drop(permit),
                    }
                    this.state.set(State::Done);
                    return poll.map_err(Into::into);
                }
                StateProj::Rejected { error } => {
                    let error = error.take();
                    this.state.set(State::Done);
                    return Poll::Ready(Err(match error {
                        Some(e) => e,
                        None => POLLED_AFTER_COMPLETION.into(),
                    }));
                }
                StateProj::Done => {
                    return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                }
            }
        }
    }
}

const POLLED_AFTER_COMPLETION: &str = "bulkhead response future polled after completion";

impl<S, Req, M> fmt::Debug for ResponseFuture<S, Req, M>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Admitted { .. } => "admitted",
            State::Running { .. } => "running",
            State::Rejected { .. } => "rejected",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn give_up_picks_the_earliest_with_tie_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let dl = |n| Some(deadline::Deadline::at(ms(n)));
        assert_eq!(
            give_up_at(Some(ms(50)), None, None),
            (Some(ms(50)), GiveUp::MaxWait)
        );
        assert_eq!(
            give_up_at(Some(ms(50)), None, dl(20)),
            (Some(ms(20)), GiveUp::Deadline)
        );
        assert_eq!(
            give_up_at(Some(ms(50)), None, dl(50)),
            (Some(ms(50)), GiveUp::Deadline)
        );
        assert_eq!(
            give_up_at(Some(ms(50)), None, dl(80)),
            (Some(ms(50)), GiveUp::MaxWait)
        );
        assert_eq!(
            give_up_at(Some(ms(50)), Some(ms(5)), dl(80)),
            (Some(ms(5)), GiveUp::Codel)
        );
        assert_eq!(
            give_up_at(Some(ms(50)), Some(ms(50)), None),
            (Some(ms(50)), GiveUp::MaxWait)
        );
        assert_eq!(give_up_at(None, None, None), (None, GiveUp::MaxWait));
    }
}
