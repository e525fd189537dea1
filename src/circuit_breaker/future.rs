use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::handle::Shared;
use super::state::Permit;
use crate::classify::{Classify, judge};
use crate::clock;
use crate::error::{BoxError, CircuitOpen};
use crate::observe::{EventKind, LayerKind, Outcome};

/// An admitted call's ticket, kept in its future: reports the outcome when the
/// call finishes, or gives a half-open probe slot back if the future is
/// dropped first.
pub(crate) struct Guard<C> {
    shared: Arc<Shared<C>>,
    permit: Permit,
    start: Instant,
    done: bool,
}

impl<C> Guard<C> {
    pub(crate) fn new(shared: Arc<Shared<C>>, permit: Permit, start: Instant) -> Self {
        Guard {
            shared,
            permit,
            start,
            done: false,
        }
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.core.on_cancel(self.permit);
        }
    }
}

pin_project! {
    /// The future of a [`CircuitBreaker`](super::CircuitBreaker) call: the
    /// inner call with its breaker ticket, or an immediate [`CircuitOpen`]
    /// rejection.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
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
            error: Option<CircuitOpen>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, guard: Guard<C>) -> Self {
        ResponseFuture {
            kind: Kind::Called { future, guard },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { .. } => f.write_str("ResponseFuture::Called"),
            Kind::Rejected { .. } => f.write_str("ResponseFuture::Rejected"),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, guard } => {
                let result = ready!(future.poll(cx));
                if !guard.done {
                    guard.done = true;
                    let shared = &*guard.shared;
                    let core = &shared.core;
                    // The model first: a local refusal is never counted,
                    // whatever the classifier says.
                    let outcome = judge(&shared.classifier, result.as_ref());
                    let now = clock::now();
                    let latency = now.saturating_duration_since(guard.start);
                    let failure = match outcome {
                        Outcome::Success => Some(false),
                        Outcome::Failure => Some(true),
                        Outcome::Overloaded if core.config.count_overload => Some(true),
                        // Not counted: recorded nowhere, and a probe's slot
                        // is given back, exactly as if it had been dropped.
                        _ => None,
                    };
                    match failure {
                        Some(failure) => {
                            let slow = latency > core.config.slow_call_duration;
                            core.on_complete(guard.permit, now, failure, slow);
                        }
                        None => core.on_cancel(guard.permit),
                    }
                    core.observer.emit(
                        LayerKind::CircuitBreaker,
                        core.name.as_str(),
                        EventKind::CallFinished { outcome, latency },
                    );
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(e) => Poll::Ready(Err(e.into())),
                None => Poll::Pending,
            },
        }
    }
}
