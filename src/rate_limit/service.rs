use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::decorate::Decorate;
use super::future::ResponseFuture;
use super::key::{Key, KeyExtractor};
use super::layer::{Mode, Reserve, Shared, Step};
use super::limiter::Verdict;
use crate::error::BoxError;
use crate::hold::{Head, Release};

/// The rate-limiting service built by [`RateLimitLayer`](super::RateLimitLayer).
///
/// Clones share the layer's limiter.
///
/// **Readiness:** `poll_ready` is the inner service's readiness, unchanged.
/// Limits are per request (a key is only known once the request is seen), so
/// the decision is made in `call`: in [`Mode::Reject`] the returned future
/// fails at once with [`RateLimited`](crate::error::RateLimited); in
/// [`Mode::Wait`] it waits for a cell before calling the inner service.
/// Waiting (and the Redis backend's round trip) takes a clone of the inner
/// service, made ready once the request is admitted, which is why the inner
/// service must be `Clone`: what the service polled ready reserved when it
/// said "ready" (a `ConcurrencyLimit` permit, a `Buffer` slot, a
/// backpressure bulkhead's permit) is given back at once, neither held by
/// a request waiting for its cell nor kept by the layer.
///
/// `M` is how it lets go of a request it refuses at once ([`Head`]: drops
/// it; in a [server stack](crate::stack::ServerStack), the stack's
/// [`Inbound`](crate::hold::Inbound): see [`Release`]).
pub struct RateLimit<S, X, D, M = Head> {
    inner: S,
    shared: Arc<Shared<X, D>>,
    hold: PhantomData<fn() -> M>,
}

impl<S, X, D, M> RateLimit<S, X, D, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<X, D>>) -> Self {
        RateLimit {
            inner,
            shared,
            hold: PhantomData,
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

    /// Consumes the rate limiter, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, X, D, M> Clone for RateLimit<S, X, D, M> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            hold: PhantomData,
        }
    }
}

impl<S: fmt::Debug, X, D, M> fmt::Debug for RateLimit<S, X, D, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, X, D, M, Req> Service<Req> for RateLimit<S, X, D, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req>,
    D: Decorate<S::Response>,
    M: Release<Req>,
    Req: crate::deadline::HasDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, X, D>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let shared = &self.shared;
        let cost = shared.extractor.cost(&req);
        // A global limit has one key: it is made only for a request that
        // waits for its cell.
        let (step, key) = match shared.global_bucket() {
            Some(b) => {
                let (v, s) = shared.decide_global(b, cost, D::ENABLED);
                (Step::Now(v, s), None)
            }
            None => {
                let key = shared.extractor.extract(&req);
                (shared.decide(&key, cost, D::ENABLED), Some(key))
            }
        };
        let key = || key.unwrap_or(Ok(Key::GLOBAL));
        match step {
            Step::Now(Verdict::Admit(_), status) => {
                ResponseFuture::called(shared, status, || self.inner.call(req))
            }
            Step::Now(Verdict::Deny { wait, detail }, _) => match (shared.mode, wait) {
                (Mode::Wait { max }, Some(w)) => wait_for_cells::<_, _, _, M, _>(
                    &mut self.inner,
                    shared,
                    max,
                    w,
                    cost,
                    key(),
                    req,
                ),
                _ => {
                    let refused = ResponseFuture::rejected(shared, wait, detail);
                    M::release(req);
                    refused
                }
            },
            #[cfg(feature = "redis")]
            Step::Redis(call) => {
                let by_max = match shared.mode {
                    Mode::Wait { max } => Some(by_max_of(crate::clock::edge_now(), max)),
                    Mode::Reject => None,
                };
                let svc = release_ready(&mut self.inner);
                let deadline = crate::deadline::of(&req).map(|d| d.instant());
                ResponseFuture::redis(call, by_max, deadline, key(), svc, req, shared)
            }
        }
    }
}

/// A request in [`Mode::Wait`] that found no cells (it would conform after
/// `w`): a local decision takes its cells for its time now, and it waits
/// for that time (see [`Shared::reserve`]); through Redis it waits `w` and
/// asks again. A request whose time comes after the layer's maximum wait
/// or its deadline fails at once.
#[inline(never)]
fn wait_for_cells<S, X, D, M, Req>(
    inner: &mut S,
    shared: &Arc<Shared<X, D>>,
    max: std::time::Duration,
    w: std::time::Duration,
    cost: u32,
    key: Result<Key, super::key::MissingKey>,
    req: Req,
) -> ResponseFuture<S::Future, S, Req, X, D>
where
    S: Service<Req> + Clone,
    D: Decorate<S::Response>,
    M: Release<Req>,
    Req: crate::deadline::HasDeadline,
{
    let now = crate::clock::edge_now();
    let deadline = crate::deadline::of(&req);
    let by_max = by_max_of(now, max);
    let limit = limit_of(now, max, deadline);
    let waiting = |inner: &mut S, until, held, req| {
        let svc = release_ready(inner);
        let deadline = deadline.map(|d| d.instant());
        ResponseFuture::waiting(until, by_max, deadline, key, held, svc, req, shared)
    };
    let w = if shared.reserves(&key) {
        match shared.reserve(&key, cost, D::ENABLED, now, limit) {
            Reserve::Now(Verdict::Admit(_), status) => {
                return ResponseFuture::called(shared, status, || inner.call(req));
            }
            Reserve::Later { at, status, held } => {
                return waiting(inner, at, Some((held, status)), req);
            }
            Reserve::Now(Verdict::Deny { wait: Some(w), .. }, _) => w,
            Reserve::Now(Verdict::Deny { wait: None, detail }, _) => {
                let refused = ResponseFuture::rejected(shared, None, detail);
                M::release(req);
                return refused;
            }
        }
    } else if now + w <= limit {
        return waiting(inner, now + w, None, req);
    } else {
        w
    };
    if deadline.is_some_and(|d| d.instant() == limit) && now + w <= by_max {
        // The wait itself would be allowed, but the cell comes after the
        // request's deadline: the request cannot be served in time at all.
        let refused =
            ResponseFuture::deadline_exceeded(shared, super::layer::DETAIL_DEADLINE_BEFORE_CELL);
        M::release(req);
        return refused;
    }
    let refused = ResponseFuture::rejected(shared, Some(w), super::layer::DETAIL_WAIT_TOO_LONG);
    M::release(req);
    refused
}

/// A clone of the inner service for a request that waits (for its cell, or
/// for Redis), made ready once admitted; the service its caller polled
/// ready is replaced by another clone and dropped, so that what it reserved
/// (a `ConcurrencyLimit` permit, a `Buffer` slot) is given back: kept by
/// the layer, a reservation of the only permit left the admitted request
/// waiting for it for good; kept by the request, it was held through the
/// wait.
fn release_ready<S: Clone>(inner: &mut S) -> S {
    let fresh = inner.clone();
    drop(std::mem::replace(inner, fresh));
    inner.clone()
}

/// The latest instant a waiting request may be admitted: `max` from now, and
/// never past the request's deadline (the one it carries or the task-local
/// one, whichever is earlier: `deadline`).
pub(crate) fn limit_of(
    now: Instant,
    max: std::time::Duration,
    deadline: Option<crate::deadline::Deadline>,
) -> Instant {
    let by_max = by_max_of(now, max);
    match deadline {
        Some(d) if d.instant() < by_max => d.instant(),
        _ => by_max,
    }
}

/// The latest admission by the layer's maximum wait alone. A maximum past
/// the clock's range (`Duration::MAX` for "no maximum") is read as thirty
/// years (it was read as no wait at all).
pub(crate) fn by_max_of(now: Instant, max: std::time::Duration) -> Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 24 * 3600);
    now.checked_add(max)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400))
}
