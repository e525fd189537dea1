//! The client-side throttle's response future.
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::layer::ThrottleShared;
use crate::classify::{Classify, JudgeFn, judge};
use crate::error::BoxError;
use crate::hold::{Duty, DutyKind, End, Head, HoldVerdict};
use crate::observe::{EventKind, LayerKind, Outcome};

pin_project! {
    /// The response future of [`Throttle`](super::Throttle). When the call
    /// finishes, a result the classifier calls a success counts as an accept
    /// (in the time bucket where the request was counted); a result it calls
    /// ignored takes the request back out of that bucket (counted as neither
    /// request nor accept); a future dropped before it finished counts as a
    /// request without an accept.
    pub struct ThrottleFuture<F, C, M = Head> {
        #[pin]
        state: ThrottleState<F, C>,
        hold: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = ThrottleStateProj]
    enum ThrottleState<F, C> {
        Called {
            #[pin]
            future: F,
            shared: Arc<ThrottleShared>,
            classifier: Arc<C>,
            start: Instant,
        },
        Rejected { error: Option<BoxError> },
    }
}

impl<F, C, M> ThrottleFuture<F, C, M> {
    pub(crate) fn called(
        future: F,
        shared: Arc<ThrottleShared>,
        classifier: Arc<C>,
        start: Instant,
    ) -> Self {
        ThrottleFuture {
            state: ThrottleState::Called {
                future,
                shared,
                classifier,
                start,
            },
            hold: PhantomData,
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        ThrottleFuture {
            state: ThrottleState::Rejected { error: Some(error) },
            hold: PhantomData,
        }
    }
}

impl<F, C, M> fmt::Debug for ThrottleFuture<F, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            ThrottleState::Called { shared, .. } => f
                .debug_struct("ThrottleFuture")
                .field("shared", shared)
                .finish_non_exhaustive(),
            ThrottleState::Rejected { error } => f
                .debug_struct("ThrottleFuture")
                .field("error", error)
                .finish(),
        }
    }
}

impl<F, C, M, T, E> Future for ThrottleFuture<F, C, M>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classify<T, E>,
    M: HoldVerdict<T, C>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = crate::clock::Edge::enter();
        match self.project().state.project() {
            ThrottleStateProj::Called {
                future,
                shared,
                classifier,
                start,
            } => {
                let mut result = ready!(future.poll(cx));
                let outcome = judge(&**classifier, result.as_ref());
                if let (Ok(response), Outcome::Success) = (&mut result, outcome) {
                    // Looks like a success; the body may still fail: its
                    // accept waits for the body's end.
                    if let Some(j) = M::pending(response) {
                        let classifier: Arc<dyn Any + Send + Sync> = classifier.clone();
                        let pending = ThrottlePending {
                            shared: shared.clone(),
                            classifier,
                            start: *start,
                            judge: j.0,
                            done: false,
                            waiting: false,
                        };
                        match M::hold(response, Duty(DutyKind::Throttle(pending))) {
                            None => return Poll::Ready(result.map_err(Into::into)),
                            Some(Duty(DutyKind::Throttle(mut back))) => back.done = true,
                            #[allow(unreachable_patterns)]
                            Some(_) => {}
                        }
                    }
                }
                record(shared, *start, outcome);
                Poll::Ready(result.map_err(Into::into))
            }
            ThrottleStateProj::Rejected { error } => crate::error::poll_rejected(error),
        }
    }
}

/// A throttled call whose head looked like a success, waiting in its body:
/// its accept is counted when the body ends well; a body that fails is
/// judged by the classifier; one dropped before its end counts as its head
/// said, an accept (a caller that reads the status and drops the body has
/// its answer: taking those back left only the failures in the window,
/// and the throttle refused a healthy dependency's traffic).
#[cfg_attr(not(all(feature = "http", feature = "deadline")), allow(dead_code))]
pub(crate) struct ThrottlePending {
    shared: Arc<ThrottleShared>,
    classifier: Arc<dyn Any + Send + Sync>,
    start: Instant,
    judge: JudgeFn,
    done: bool,
    /// A read of the body is waiting for more (set by the body).
    pub(crate) waiting: bool,
}

#[cfg_attr(not(all(feature = "http", feature = "deadline")), allow(dead_code))]
impl ThrottlePending {
    pub(crate) fn settle(mut self, end: End<'_>) {
        self.done = true;
        let outcome = match end {
            End::Complete => Outcome::Success,
            End::Failed(error) => (self.judge)(&*self.classifier, error),
        };
        record(&self.shared, self.start, outcome);
    }
}

/// Counts a finished call admitted at `start` and reports it.
fn record(shared: &ThrottleShared, start: Instant, outcome: Outcome) {
    match outcome {
        // Counted in the bucket of its request, so both leave the window
        // together (and no clock read is needed).
        Outcome::Success => shared.window().accept(start),
        // A request the backend did not accept: it failed or said "busy".
        Outcome::Failure | Outcome::Overloaded => {}
        // Not counted (a local refusal, or ignored): its request, counted at
        // admission, is taken back from the same bucket.
        _ => shared.window().forget(start),
    }
    if shared.observer.is_enabled() {
        shared.observer.emit(
            LayerKind::Throttle,
            shared.name.as_str(),
            EventKind::CallFinished {
                outcome,
                latency: crate::clock::elapsed(start, crate::clock::edge_now()),
            },
        );
    }
}

impl Drop for ThrottlePending {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            if self.waiting {
                // Given up on while a read waited for more: taken back.
                self.shared.window().forget(self.start);
            } else {
                record(&self.shared, self.start, Outcome::Success);
            }
        }
    }
}
