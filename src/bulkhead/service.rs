use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::{ResponseFuture, reject};
use super::handle::BulkheadHandle;
use super::queue::{Acquire, Engine, GiveUp, Permit, Waiter};
use crate::error::BoxError;
use crate::hold::{Head, Hold, Release};
use crate::stripe::Striped;

/// A service with a bulkhead in front: at most `max_concurrent` calls in
/// flight, at most `max_queue` callers waiting. Built by
/// [`BulkheadLayer`](super::BulkheadLayer).
///
/// Clones share the bulkhead of the layer they were built from. A clone starts
/// without a reserved permit (backpressure mode), so cloning never copies a
/// permit.
///
/// # Readiness
///
/// - Default mode: `poll_ready` reports the inner service's readiness and
///   never waits for a permit. `call` admits the request at once when a permit
///   is free; otherwise the request waits in the bulkhead's queue *inside the
///   response future* (which then holds a clone of the inner service, already
///   polled ready, and calls it once a permit is handed over). A full queue,
///   `max_wait`, the request deadline or CoDel end the wait with
///   [`BulkheadFull`](crate::error::BulkheadFull). Requires `S: Clone` only for
///   the requests that wait.
/// - Backpressure mode: `poll_ready` reserves a permit first, returning
///   `Pending` (with a place in the queue, in queue order) while none is free,
///   then polls the inner service. No timer applies to that wait. Without a
///   `max_queue` (the default) every clone polled waits, with one place
///   each; with one, at most that many wait at once and `poll_ready` of one
///   more fails with `BulkheadFull` (detail `"queue_full"`), which a tower
///   `Buffer` or a balancer takes for a dead service. `call` uses the
///   reserved permit; a `call` without a reserved permit is admitted only if a
///   permit is free, and rejected otherwise.
pub struct Bulkhead<S, M = Head> {
    inner: S,
    hold: PhantomData<fn() -> M>,
    engine: Striped<Engine>,
    backpressure: bool,
    ready: Ready,
}

enum Ready {
    Idle,
    Waiting(Waiter),
    Reserved(Permit),
}

impl<S, M> Bulkhead<S, M> {
    pub(crate) fn from_parts(inner: S, engine: Striped<Engine>, backpressure: bool) -> Self {
        Bulkhead {
            inner,
            hold: PhantomData,
            engine,
            backpressure,
            ready: Ready::Idle,
        }
    }

    /// A handle reading this bulkhead's permits and queue (shared with the
    /// layer and every service built from it).
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle {
            engine: Arc::clone(self.engine.arc()),
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

    /// Consumes the bulkhead and returns the inner service (releasing a
    /// permit reserved by `poll_ready`, if any).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, M> Clone for Bulkhead<S, M> {
    fn clone(&self) -> Self {
        Bulkhead {
            inner: self.inner.clone(),
            hold: PhantomData,
            engine: self.engine.clone(),
            backpressure: self.backpressure,
            ready: Ready::Idle,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for Bulkhead<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ready = match self.ready {
            Ready::Idle => "idle",
            Ready::Waiting(_) => "waiting",
            Ready::Reserved(_) => "reserved",
        };
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("handle", &self.handle())
            .field("backpressure", &self.backpressure)
            .field("ready", &ready)
            .finish()
    }
}

impl<S, M, Req> Service<Req> for Bulkhead<S, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: crate::deadline::HasDeadline,
    M: Hold<S::Response> + Release<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.backpressure {
            if let Some(waiting) = reserve(&self.engine, &mut self.ready, cx) {
                return waiting;
            }
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                self.ready = Ready::Idle;
                Poll::Ready(Err(e.into()))
            }
        }
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        // No edge of the clock of its own: the bulkhead reads the clock
        // only for an observer's times and a queue's wait, and shares the
        // edge of the layers around it (see `clock::edge_now`).
        let permit = match self.ready {
            Ready::Reserved(_) => match std::mem::replace(&mut self.ready, Ready::Idle) {
                Ready::Reserved(permit) => Some(permit),
                _ => None,
            },
            _ => self.engine.try_acquire(),
        };
        if let Some(permit) = permit {
            return ResponseFuture::running(permit, || self.inner.call(req));
        }
        call_without_permit(&self.engine, self.backpressure, &mut self.inner, req)
    }
}

/// A call through the bulkhead `engine` to `inner` (already polled
/// ready), outside backpressure mode: admitted at once when a permit is
/// free; otherwise refused, or (with a queue) queued with a clone of
/// `inner` in the response future. What `Bulkhead::call` does without a
/// reserved permit, for a tenant's bulkhead in the server stack, which
/// picks the engine per request.
#[inline(always)]
#[cfg_attr(
    not(all(
        feature = "deadline",
        feature = "retry",
        feature = "circuit-breaker",
        feature = "shed",
        feature = "keyed"
    )),
    allow(dead_code)
)]
pub(crate) fn admit<S, M, Req>(
    engine: &Striped<Engine>,
    inner: &mut S,
    req: Req,
) -> ResponseFuture<S, Req, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: crate::deadline::HasDeadline,
    M: Hold<S::Response> + Release<Req>,
{
    if let Some(permit) = engine.try_acquire() {
        return ResponseFuture::running(permit, || inner.call(req));
    }
    call_without_permit(engine, false, inner, req)
}

/// No permit free: refused at once, or queued. Out of line, so that an
/// admitted call's `call` stays small.
#[inline(never)]
fn call_without_permit<S, M, Req>(
    engine: &Striped<Engine>,
    backpressure: bool,
    inner: &mut S,
    req: Req,
) -> ResponseFuture<S, Req, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: crate::deadline::HasDeadline,
    M: Hold<S::Response> + Release<Req>,
{
    if backpressure || engine.settings.max_queue == 0 {
        // No queue, or (backpressure mode) `call` without a reserved
        // permit while none is free: refuse at once.
        let error = reject(engine, GiveUp::QueueFull);
        M::release(req);
        return ResponseFuture::rejected(error);
    }
    let now = crate::clock::edge_now();
    match engine.acquire(None, Some(now)) {
        Acquire::Permit(permit) => ResponseFuture::running(permit, || inner.call(req)),
        Acquire::Full => {
            let error = reject(engine, GiveUp::QueueFull);
            M::release(req);
            ResponseFuture::rejected(error)
        }
        Acquire::Queued {
            waiter,
            codel_until,
        } => {
            // The waiting request keeps the instance that was polled
            // ready; the caller's service continues with a fresh clone.
            let clone = inner.clone();
            let service = std::mem::replace(inner, clone);
            // The request's own deadline, or the task-local one.
            let deadline = crate::deadline::of(&req);
            ResponseFuture::waiting(waiter, service, req, now, codel_until, engine, deadline)
        }
    }
}

/// Backpressure mode: reserves a permit for the next call, or queues for
/// one. `None` once a permit is reserved; otherwise what `poll_ready`
/// returns (pending while queued, an error when the queue is full). Out of
/// line, so that the default mode's readiness is only the inner service's.
#[inline(never)]
fn reserve(
    engine: &Striped<Engine>,
    ready: &mut Ready,
    cx: &mut Context<'_>,
) -> Option<Poll<Result<(), BoxError>>> {
    loop {
        match ready {
            Ready::Reserved(_) => return None,
            Ready::Waiting(waiter) => match waiter.poll(cx) {
                Poll::Ready(permit) => *ready = Ready::Reserved(permit),
                Poll::Pending => return Some(Poll::Pending),
            },
            Ready::Idle => {
                if let Some(permit) = engine.try_acquire() {
                    *ready = Ready::Reserved(permit);
                    continue;
                }
                let now = engine
                    .settings
                    .order
                    .uses_codel()
                    .then(crate::clock::edge_now);
                match engine.acquire_ready(Some(cx.waker()), now) {
                    Acquire::Permit(permit) => *ready = Ready::Reserved(permit),
                    Acquire::Queued { waiter, .. } => {
                        *ready = Ready::Waiting(waiter);
                        return Some(Poll::Pending);
                    }
                    Acquire::Full => {
                        return Some(Poll::Ready(Err(reject(engine, GiveUp::QueueFull))));
                    }
                }
            }
        }
    }
}
