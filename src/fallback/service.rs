use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use super::layer::Shared;
use super::policy::FallbackPolicy;
use crate::classify::{Classify, judge};
use crate::deadline::HasDeadline;
use crate::error::RejectionKind;
use crate::observe::{EventKind, FallbackReason, LayerKind, Outcome};

/// A service whose failed or refused calls are answered by a fallback
/// (built by [`FallbackLayer`](super::FallbackLayer)). Its error type is
/// the inner service's: a call the fallback does not answer ends as it
/// ended.
pub struct Fallback<S, F, C> {
    inner: S,
    shared: Arc<Shared<F, C>>,
}

impl<S, F, C> Fallback<S, F, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<F, C>>) -> Self {
        Fallback { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the fallback.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, F, C> Clone for Fallback<S, F, C> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, F, C> fmt::Debug for Fallback<S, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, F, C, Req> Service<Req> for Fallback<S, F, C>
where
    S: Service<Req>,
    S::Error: 'static,
    F: FallbackPolicy<Req, S::Response, S::Error>,
    C: Classify<S::Response, S::Error>,
    Req: HasDeadline,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, F, C, Req, S::Response, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        // An edge of the call, as every layer's that reads the clock: the
        // read is shared with the layers below and forgotten after them.
        let _edge = crate::clock::Edge::enter();
        let memo = self.shared.policy.memo(&req);
        let deadline = crate::deadline::of(&req);
        // A fallback for the deadline needs time left when the call below
        // gives up: the call gets the request's deadline less a tenth of
        // the time left (at most the fallback's timeout), and the fallback
        // answers in that tenth. Without it, the call ran to the request's
        // own deadline, and the fallback had no time to answer.
        let reserved = match deadline {
            Some(d) if self.shared.on.contains(FallbackReason::Deadline) => {
                let left = d.remaining_from(crate::clock::edge_now());
                let reserve = (left / 10).min(self.shared.timeout);
                d.instant()
                    .checked_sub(reserve)
                    .filter(|_| !reserve.is_zero())
                    .map(crate::deadline::Deadline::at)
            }
            _ => None,
        };
        let future = match reserved {
            Some(inner) => {
                req.set_deadline(inner);
                crate::deadline::sync_scope(inner, || self.inner.call(req))
            }
            None => self.inner.call(req),
        };
        ResponseFuture {
            state: State::Calling {
                future,
                memo: Some(memo),
                deadline: deadline.map(crate::deadline::Deadline::instant),
                reserved,
            },
            shared: self.shared.clone(),
            request: PhantomData,
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, M, A, T, E> {
        Calling {
            #[pin]
            future: Fut,
            memo: Option<M>,
            deadline: Option<Instant>,
            // The deadline the call runs under (the request's less the
            // fallback's reserve), when one is kept.
            reserved: Option<crate::deadline::Deadline>,
        },
        Answering {
            #[pin]
            answer: A,
            #[pin]
            sleep: Sleep,
            original: Option<Result<T, E>>,
            reason: FallbackReason,
        },
        Done,
    }
}

pin_project! {
    /// The response future of [`Fallback`]: the call, then, if it ended for
    /// a routed reason, the fallback's answer bounded by its timeout and the
    /// request's deadline.
    pub struct ResponseFuture<Fut, F, C, Req, T, E>
    where
        F: FallbackPolicy<Req, T, E>,
    {
        #[pin]
        state: State<Fut, F::Memo, F::Future, T, E>,
        shared: Arc<Shared<F, C>>,
        request: PhantomData<fn(Req)>,
    }
}

impl<Fut, F, C, Req, T, E> fmt::Debug for ResponseFuture<Fut, F, C, Req, T, E>
where
    F: FallbackPolicy<Req, T, E>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The reason a call that ended with `outcome` gets a fallback, if any.
fn reason_of<C, T, E>(classifier: &C, outcome: Result<&T, &E>) -> Option<FallbackReason>
where
    C: Classify<T, E>,
    E: 'static,
{
    if let Err(e) = outcome {
        let kind = crate::error::rejection_in(e).map(|r| r.kind());
        if kind == Some(RejectionKind::DeadlineExceeded) {
            return Some(FallbackReason::Deadline);
        }
    }
    match judge(classifier, outcome) {
        Outcome::Refused => Some(FallbackReason::Refused),
        Outcome::Overloaded => Some(FallbackReason::Overloaded),
        Outcome::Failure => Some(FallbackReason::Failure),
        _ => None,
    }
}

impl<Fut, T, E, F, C, Req> Future for ResponseFuture<Fut, F, C, Req, T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: 'static,
    F: FallbackPolicy<Req, T, E>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling {
                    future,
                    memo,
                    deadline,
                    reserved,
                } => {
                    let outcome = ready!(match *reserved {
                        Some(d) => crate::deadline::sync_scope(d, || future.poll(cx)),
                        None => future.poll(cx),
                    });
                    let shared = &**this.shared;
                    let reason = reason_of(&shared.classifier, outcome.as_ref())
                        .filter(|r| shared.on.contains(*r));
                    let (Some(reason), Some(memo)) = (reason, memo.take()) else {
                        this.state.set(State::Done);
                        return Poll::Ready(outcome);
                    };
                    let now = crate::clock::edge_now();
                    // A timeout past the clock's range: the deadline, or
                    // a day (no panic for a `Duration::MAX` meaning "none").
                    let mut until = now
                        .checked_add(shared.timeout)
                        .unwrap_or_else(|| now + Duration::from_secs(86_400));
                    if let Some(d) = *deadline {
                        until = until.min(d);
                    }
                    if until <= now {
                        this.state.set(State::Done);
                        return Poll::Ready(outcome);
                    }
                    let answer = shared.policy.answer(memo, reason, outcome.as_ref());
                    this.state.set(State::Answering {
                        answer,
                        sleep: sleep_until(until),
                        original: Some(outcome),
                        reason,
                    });
                }
                StateProj::Answering {
                    answer,
                    sleep,
                    original,
                    reason,
                } => {
                    if let Poll::Ready(a) = answer.poll(cx) {
                        let out = match a {
                            Some(res) => {
                                let shared = &**this.shared;
                                shared.observer.emit(
                                    LayerKind::Fallback,
                                    shared.name.as_str(),
                                    EventKind::FallbackUsed { reason: *reason },
                                );
                                Ok(res)
                            }
                            None => match original.take() {
                                Some(o) => o,
                                None => return Poll::Pending,
                            },
                        };
                        this.state.set(State::Done);
                        return Poll::Ready(out);
                    }
                    ready!(sleep.poll(cx));
                    // The fallback is itself too slow: the original outcome.
                    let Some(out) = original.take() else {
                        return Poll::Pending;
                    };
                    this.state.set(State::Done);
                    return Poll::Ready(out);
                }
                // Polled after completion (the error type is the inner
                // service's: no error of its own to give).
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::ErrorsAsFailures;
    use crate::error::{BoxError, BulkheadFull, DeadlineExceeded, Overloaded};

    fn reason(outcome: Result<&u32, &BoxError>) -> Option<FallbackReason> {
        reason_of(&ErrorsAsFailures, outcome)
    }

    #[test]
    fn each_ending_gets_its_reason_and_a_success_none() {
        assert_eq!(reason(Ok(&1)), None);
        let refused: BoxError = BulkheadFull::new("b", None).into();
        assert_eq!(reason(Err(&refused)), Some(FallbackReason::Refused));
        let busy: BoxError = Overloaded::new("remote", None).into();
        assert_eq!(reason(Err(&busy)), Some(FallbackReason::Overloaded));
        let failed: BoxError = "connection reset".into();
        assert_eq!(reason(Err(&failed)), Some(FallbackReason::Failure));
    }

    #[test]
    fn a_deadline_is_its_own_reason_wherever_it_was_refused() {
        // Refused before sending (a local refusal) or cut in flight: both
        // are the deadline, not a refusal or a failure.
        let before: BoxError = DeadlineExceeded::before_sending("d").into();
        let cut: BoxError = DeadlineExceeded::new("d").into();
        assert_eq!(reason(Err(&before)), Some(FallbackReason::Deadline));
        assert_eq!(reason(Err(&cut)), Some(FallbackReason::Deadline));
    }
}
