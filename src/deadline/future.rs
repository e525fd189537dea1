//! Response futures of the deadline layers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Sleep, sleep_until};

use super::Deadline;
use super::layer::Shared;
use super::service::{TIMED_OUT, reject_deadline};
use crate::error::{AttemptTimeout, BoxError, RejectionKind};
use crate::observe::{EventKind, LayerKind};

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<F> {
        Running {
            #[pin]
            inner: F,
            // Created at the first poll that finds the inner future pending,
            // so a call that answers at once never touches the timer wheel.
            #[pin]
            sleep: Option<Sleep>,
            deadline: Deadline,
            shared: Arc<Shared>,
            overall_binds: bool,
        },
        Rejected {
            error: Option<BoxError>,
        },
    }
}

impl<F: Future> State<F> {
    pub(crate) fn running(
        inner: F,
        deadline: Deadline,
        shared: Arc<Shared>,
        overall_binds: bool,
    ) -> Self {
        State::Running {
            inner,
            sleep: None,
            deadline,
            shared,
            overall_binds,
        }
    }

    pub(crate) fn poll_state<T, E>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        layer: LayerKind,
    ) -> Poll<Result<T, BoxError>>
    where
        F: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        match self.project() {
            StateProj::Running {
                inner,
                mut sleep,
                deadline,
                shared,
                overall_binds,
            } => {
                // Every poll of the inner future sees the deadline as the
                // task-local `current()` one (an attempt bound by the
                // request's deadline: that one is current already).
                let polled = if *overall_binds && layer == LayerKind::AttemptTimeout {
                    inner.poll(cx)
                } else {
                    super::sync_scope(*deadline, || inner.poll(cx))
                };
                if let Poll::Ready(res) = polled {
                    return Poll::Ready(res.map_err(Into::into));
                }
                if sleep.is_none() {
                    sleep.set(Some(sleep_until(deadline.instant())));
                }
                let fired = match sleep.as_pin_mut() {
                    Some(sleep) => sleep.poll(cx).is_ready(),
                    None => false,
                };
                if !fired {
                    return Poll::Pending;
                }
                if *overall_binds || layer == LayerKind::Deadline {
                    return Poll::Ready(Err(reject_deadline(layer, shared, TIMED_OUT)));
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
                Poll::Ready(Err(AttemptTimeout::new(shared.name.clone()).into()))
            }
            StateProj::Rejected { error } => crate::error::poll_rejected(error),
        }
    }
}

pin_project! {
    /// The response future of [`DeadlineService`](super::DeadlineService).
    ///
    /// Runs the inner future with the request's deadline as the task-local
    /// [`current()`](super::current) deadline on every poll, and fails with
    /// [`DeadlineExceeded`](crate::error::DeadlineExceeded) when the deadline
    /// passes first. The timer is pinned inside; nothing is boxed.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn running(inner: F, deadline: Deadline, shared: Arc<Shared>) -> Self {
        ResponseFuture {
            state: State::running(inner, deadline, shared, true),
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = crate::clock::Edge::enter();
        self.project().state.poll_state(cx, LayerKind::Deadline)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
