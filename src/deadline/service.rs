use crate::stripe::Striped;
use std::fmt;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::future::{Expiry, OwnTimer, ResponseFuture};
use super::layer::Shared;
use super::{Deadline, HasDeadline};
use crate::clock;
use crate::error::{BoxError, DeadlineExceeded, RejectionKind};
use crate::observe::{EventKind, LayerKind};

/// The `detail` of a rejection for a request whose own deadline (from the
/// request or the task-local) had already passed when it arrived.
pub(crate) const EXPIRED_ON_ARRIVAL: &str = "expired_on_arrival";
/// The `detail` of a rejection for a request whose budget was used up while
/// the service was waiting to become ready.
pub(crate) const EXPIRED_WAITING_READY: &str = "expired_waiting_ready";
/// The `detail` of a rejection for a call cut off when its time ran out.
pub(crate) const TIMED_OUT: &str = "timed_out";

#[cold]
#[inline(never)]
pub(crate) fn reject_deadline(layer: LayerKind, shared: &Shared, detail: &'static str) -> BoxError {
    shared.observer.emit(
        layer,
        shared.name.as_str(),
        EventKind::Rejected {
            reason: RejectionKind::DeadlineExceeded,
            detail,
            retry_after: None,
        },
    );
    if detail == TIMED_OUT {
        DeadlineExceeded::new(shared.name.clone()).into()
    } else {
        // Refused before the call was made: a local refusal.
        DeadlineExceeded::before_sending(shared.name.clone()).into()
    }
}

/// The service built by [`DeadlineLayer`](super::DeadlineLayer).
///
/// `poll_ready` passes the inner service's readiness through unchanged. The
/// budget clock of the next request starts at the first `poll_ready` (after a
/// call, or after the service was cloned) that finds the inner service not
/// ready, so time spent waiting to become ready counts against the budget;
/// when the inner service is ready at once, the clock starts at `call`.
/// `poll_ready` itself never times out.
///
/// `X` says how the call learns that its deadline passed: by a timer of
/// this layer's own ([`OwnTimer`], what [`DeadlineLayer`](super::DeadlineLayer)
/// builds), or from the layers inside, which all end by the deadline
/// ([`InnerTimers`](super::InnerTimers), inside the client and server stacks).
pub struct DeadlineService<S, X = OwnTimer> {
    inner: S,
    shared: Striped<Shared>,
    // When `poll_ready` first had to wait, and the task that waited: a
    // wait another task left behind (its caller gave up) is not the next
    // call's.
    ready_since: Option<Instant>,
    // The task that waited (its waker's data pointer): the one allowed to
    // call on that wait.
    ready_task: usize,
    in_request: bool,
    expiry: PhantomData<fn() -> X>,
}

impl<S, X> DeadlineService<S, X> {
    pub(crate) fn new(inner: S, shared: Striped<Shared>, in_request: bool) -> Self {
        DeadlineService {
            inner,
            shared,
            ready_since: None,
            ready_task: 0,
            in_request,
            expiry: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes this service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, X> Clone for DeadlineService<S, X> {
    /// A clone starts with its own readiness: the budget clock of the clone
    /// starts at its own first `poll_ready`.
    fn clone(&self) -> Self {
        DeadlineService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            ready_since: None,
            ready_task: 0,
            in_request: self.in_request,
            expiry: PhantomData,
        }
    }
}

impl<S: fmt::Debug, X> fmt::Debug for DeadlineService<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineService")
            .field("inner", &self.inner)
            .field("budget", &self.shared.limit)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, Req, X> Service<Req> for DeadlineService<S, X>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: HasDeadline,
    X: Expiry,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, X>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending => {
                // The budget clock starts at the first `poll_ready` that has
                // to wait; a service ready at once costs no clock read here.
                let task = cx.waker().data() as usize;
                if self.ready_since.is_none() || self.ready_task != task {
                    self.ready_since = Some(clock::edge_now());
                    self.ready_task = task;
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                if self.ready_since.is_some() && self.ready_task != cx.waker().data() as usize {
                    // Another task waited and gave up: this call did not
                    // wait.
                    self.ready_since = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                self.ready_since = None;
                Poll::Ready(Err(e.into()))
            }
        }
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        // A call made from a handler after another call of the same poll
        // ended: that call's read (deeper than here) is stale by whatever
        // the handler did since; the budget starts now.
        crate::clock::handler_ran();
        let _edge = crate::clock::Edge::enter();
        let now = clock::edge_now();
        let waited = self.ready_since.take();
        let start = waited.unwrap_or(now);
        let own = Deadline::after_from(start, self.shared.limit);
        // A client stack's timer ends a little before a deadline from
        // above (a server stack's, in a handler), so that the call ends on
        // its own terms (see `UPSTREAM_MARGIN`).
        let upstream = super::of(&req).map(|up| self.shared.before_upstream(up, now));
        let deadline = own.min_opt(upstream);
        if deadline.instant() <= now {
            let upstream_expired = upstream.is_some_and(|u| u.instant() <= now);
            let detail = if waited.is_some() && !upstream_expired {
                EXPIRED_WAITING_READY
            } else {
                EXPIRED_ON_ARRIVAL
            };
            return ResponseFuture::rejected(reject_deadline(
                LayerKind::Deadline,
                &self.shared,
                detail,
            ));
        }
        // Stored in the request unless it is there already (a server's
        // ingress stored the caller's, shorter than this budget), or it
        // would allocate where the layer leaves it out (a client stack's
        // `http::Request`: the presets send it as a header).
        if (self.in_request || !Req::STORING_ALLOCATES) && req.deadline() != Some(deadline) {
            req.set_deadline(deadline);
        }
        let inner = &mut self.inner;
        let owner = super::future::owner::<X>(&self.shared);
        let _scope = super::enter_scope(deadline);
        ResponseFuture::running(|| inner.call(req), deadline, owner)
    }
}
