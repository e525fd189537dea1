use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::criticality::{CriticalityOf, FromTaskLocal};
use super::future::ResponseFuture;
use super::limiter::{Limiter, Refusal};
use crate::error::{BoxError, Overloaded};
use crate::hold::{Head, Hold, Release};
use crate::observe::{EventKind, LayerKind};
use crate::stripe::Striped;

/// A service under an adaptive concurrency limit; built by
/// [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer).
///
/// `poll_ready` forwards the inner service's readiness. The admission
/// decision is made in `call` (it needs the request's criticality and
/// deadline): over the limit the call fails at once with [`Overloaded`],
/// unless it waits in the limit's queue, for a herd during a burst (see
/// [`max_queue`](super::AdaptiveLimitLayerBuilder::max_queue)) or at any
/// time in a limit that
/// [waits at the limit](super::AdaptiveLimitLayerBuilder::wait_at_limit);
/// a waiting request holds a clone of the inner service, which must be
/// `Clone`.
pub struct AdaptiveLimit<S, P = FromTaskLocal, M = Head> {
    inner: S,
    limiter: Striped<Limiter>,
    extractor: Arc<P>,
    hold: PhantomData<fn() -> M>,
}

impl<S, P, M> AdaptiveLimit<S, P, M> {
    pub(crate) fn new(inner: S, limiter: Striped<Limiter>, extractor: Arc<P>) -> Self {
        AdaptiveLimit {
            inner,
            limiter,
            extractor,
            hold: PhantomData,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limiter.limit()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P, M> Clone for AdaptiveLimit<S, P, M> {
    fn clone(&self) -> Self {
        AdaptiveLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            extractor: Arc::clone(&self.extractor),
            hold: PhantomData,
        }
    }
}

impl<S: fmt::Debug, P, M> fmt::Debug for AdaptiveLimit<S, P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, P, M, Req> Service<Req> for AdaptiveLimit<S, P, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: CriticalityOf<Req>,
    M: Hold<S::Response> + Release<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let class = self.extractor.criticality_of(&req);
        let permit = match self.limiter.try_acquire(class, crate::clock::edge_now()) {
            Ok(permit) => permit,
            Err(refusal) => {
                let refusal = match refusal {
                    Refusal::LimitMayWait => {
                        let now = crate::clock::edge_now();
                        if let Some((idx, patience)) = self.limiter.try_queue(class, now) {
                            return queued(self, idx, patience, now, req);
                        }
                        self.limiter.note_refused();
                        Refusal::Limit
                    }
                    refusal => refusal,
                };
                let error = refused(&self.limiter, refusal);
                M::release(req);
                return ResponseFuture::rejected(error);
            }
        };
        self.limiter.observer.emit(
            LayerKind::AdaptiveLimit,
            self.limiter.name.as_str(),
            EventKind::CallStarted,
        );
        ResponseFuture::admitted(self.inner.call(req), permit)
    }
}

/// A request queued for a herd at `idx`: its future, with the inner
/// service polled ready (a clone is left in its place). Out of line.
#[cold]
#[inline(never)]
fn queued<S, P, M, Req>(
    svc: &mut AdaptiveLimit<S, P, M>,
    idx: u32,
    patience: std::time::Duration,
    now: tokio::time::Instant,
    req: Req,
) -> ResponseFuture<S, Req, M>
where
    S: Service<Req> + Clone,
{
    let clone = svc.inner.clone();
    let ready = std::mem::replace(&mut svc.inner, clone);
    // At its deadline at the latest (it has one: see `try_queue`).
    let deadline = crate::deadline::current().map_or(now, crate::deadline::Deadline::instant);
    ResponseFuture::queued(
        svc.limiter.ticket(),
        idx,
        ready,
        req,
        deadline,
        now.checked_add(patience).unwrap_or(deadline),
    )
}

/// A queued request that leaves the queue without its place: refused with
/// `hint` (it could not be served in time, or the calls at the limit did
/// not move), or at its deadline (`None`).
#[cold]
pub(crate) fn refused_from_queue(limiter: &Limiter, hint: Option<std::time::Duration>) -> BoxError {
    limiter.note_refusal(crate::clock::edge_now());
    let Some(hint) = hint else {
        limiter.observer.emit(
            LayerKind::AdaptiveLimit,
            limiter.name.as_str(),
            EventKind::Rejected {
                reason: crate::error::RejectionKind::DeadlineExceeded,
                detail: Refusal::Queue.detail(),
                retry_after: None,
            },
        );
        return crate::error::DeadlineExceeded::before_sending(limiter.name.clone()).into();
    };
    limiter.emit_rejected(Refusal::Queue, hint);
    if limiter.guards_calls_out() {
        Overloaded::local(limiter.name.clone(), Some(hint)).into()
    } else {
        Overloaded::new(limiter.name.clone(), Some(hint)).into()
    }
}

/// Reports a refused call and builds its error, with a jittered hint. Out
/// of line: an admitted call never reaches it.
#[inline(never)]
fn refused(limiter: &Limiter, refusal: Refusal) -> BoxError {
    let now = crate::clock::edge_now();
    limiter.note_refusal(now);
    let hint = limiter.refusal_hint(now);
    limiter.emit_rejected(refusal, hint);
    if limiter.guards_calls_out() {
        Overloaded::local(limiter.name.clone(), Some(hint)).into()
    } else {
        Overloaded::new(limiter.name.clone(), Some(hint)).into()
    }
}
