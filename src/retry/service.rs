use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::inbound::arrived_as_retry;
use super::layer::Shared;
use super::policy::{RetryErrors, RetryPolicy};
use crate::error::BoxError;
use crate::observe::{EventKind, GiveUpReason, LayerKind};

/// Retries failed requests with jittered backoff, within a shared budget and
/// the request's deadline. Built by [`RetryLayer`](super::RetryLayer).
///
/// `poll_ready` is the inner service's `poll_ready` (errors converted into
/// [`BoxError`]). Each retry runs inside the response future on its own
/// clone of the inner service, polled ready before the retry is made (no
/// longer than the request's deadline leaves time for it). That clone is
/// made only when a retry is about to be made, from a spare copy of the
/// inner service that this service and its clones keep (taken at the
/// first call that could be retried): a call that succeeds clones nothing,
/// and the copy takes no room in the response future while an attempt is
/// in flight.
pub struct Retry<S, P = RetryErrors> {
    inner: S,
    local: Arc<Local<S, P>>,
}

/// What a retry service shares with its clones and its futures: the
/// layer's settings and the spare copy of the inner service that retries
/// clone.
pub(crate) struct Local<S, P> {
    pub(crate) shared: Arc<Shared<P>>,
    spare: OnceLock<Mutex<S>>,
}

impl<S: Clone, P> Local<S, P> {
    /// A clone of the spare copy for a retry (a lock, on retries only).
    pub(crate) fn spare(&self) -> Option<S> {
        let spare = self.spare.get()?;
        let copy = spare.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Some(copy)
    }
}

impl<S, P> Retry<S, P> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<P>>) -> Self {
        Retry {
            inner,
            local: Arc::new(Local {
                shared,
                spare: OnceLock::new(),
            }),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably. A change made through it reaches the
    /// calls this service makes, not the spare copy that retries clone
    /// (kept from the first call that could be retried).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The budget shared with every service built from the same layer.
    pub fn budget(&self) -> &super::RetryBudget {
        &self.local.shared.budget
    }
}

impl<S: Clone, P> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            local: self.local.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Retry<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("layer", &self.local.shared)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Retry<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
    Req: crate::deadline::HasDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let shared = &*self.local.shared;
        let inbound_retry = shared.honor_inbound && arrived_as_retry(&shared.policy, &req);
        // A request made for an inbound retry goes out marked as a retry
        // (its upstream attempt, or 2): the hops after this one do not
        // retry it either.
        let attempt = match inbound_retry {
            false => 1,
            true => crate::retry::inbound_attempt()
                .filter(|&a| a > 1)
                .unwrap_or(2),
        };
        shared.policy.on_attempt(&mut req, attempt);

        // The copy is made where it is kept, not moved through a tuple on
        // the way: each move of a request is a copy of it (an
        // `http::Request` is about 250 bytes).
        let mut no_retry = GiveUpReason::NotReplayable;
        let copy = if shared.max_attempts <= 1 {
            no_retry = GiveUpReason::MaxAttempts;
            None
        } else if inbound_retry || !shared.policy.may_retry(&req) {
            // Retried upstream already (retry at one layer), or not safe to retry.
            no_retry = GiveUpReason::NotRetryable;
            None
        } else {
            // No copy (a body past its replay limit): sent once, and
            // `NotReplayable` says why.
            shared.policy.clone_request(&req)
        };
        // As tower: the ready service makes this call, a clone is polled
        // ready before each retry (made from the spare copy, kept from the
        // first call that could be retried, one clone per retry).
        if copy.is_some() {
            self.local
                .spare
                .get_or_init(|| Mutex::new(self.inner.clone()));
        }

        let started = if shared.observer.is_enabled() {
            shared.observer.emit(
                LayerKind::Retry,
                shared.name.as_str(),
                EventKind::CallStarted,
            );
            Some(crate::clock::edge_now())
        } else {
            None
        };
        // The deadline the request carries, read before the call (a
        // request with no retry left needs none); the task-local one is
        // read where a retry is planned.
        let deadline = if copy.is_some() {
            crate::deadline::HasDeadline::deadline(&req)
        } else {
            None
        };
        // Whether a retry may follow a timeout of this attempt: an
        // attempt timeout below does not cut one that none can follow.
        // The budget asked first, whatever follows: timeouts judged common
        // are judged again as requests go on (see `ResponseFuture`).
        let may_follow = shared.budget.may_retry_timeout()
            && copy.is_some()
            && shared.policy.may_retry_timeout(&req);
        let inner = &mut self.inner;
        ResponseFuture::new(
            self.local.clone(),
            copy,
            no_retry,
            started,
            deadline,
            || crate::deadline::call_with_retry_gate(may_follow, || inner.call(req)),
        )
    }
}
