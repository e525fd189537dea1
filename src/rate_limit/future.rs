use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::decorate::{Decorate, RateLimitStatus};
use super::key::{Key, KeyExtractor, MissingKey};
#[cfg(feature = "redis")]
use super::layer::DETAIL_DEADLINE_IN_BACKEND;
use super::layer::{DETAIL_DEADLINE_BEFORE_CELL, DETAIL_WAIT_TOO_LONG, Held, Shared, Step};
use super::limiter::Verdict;
use crate::error::{BoxError, RateLimited, RejectionKind};
use crate::observe::{EventKind, LayerKind};

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit): the inner
    /// call, an immediate rejection, a wait for a cell ([`Mode::Wait`](super::Mode)),
    /// or (feature `redis`) the round trip to Redis.
    ///
    /// Dropped while it waits for cells it took ([`Mode::Wait`](super::Mode)),
    /// it gives them back, unless a later request took cells after them
    /// (they stay spent).
    #[project = Proj]
    pub struct ResponseFuture<F, S, Req, X, D> {
        #[pin]
        state: State<F, S, Req, X, D>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, Req, X, D> {
        Called {
            #[pin]
            fut: F,
            deco: Option<(Arc<Shared<X, D>>, RateLimitStatus)>,
        },
        Rejected {
            err: Option<BoxError>,
        },
        // The waiting states are boxed: they are the slow paths (a request
        // waiting for its cell, a Redis round trip), and inline they would
        // make every admitted call's future several hundred bytes larger.
        Waiting {
            inner: Pin<Box<Wait<S, Req, X, D>>>,
        },
        Redis {
            inner: Pin<Box<RedisWait<S, Req, X, D>>>,
        },
    }
}

pin_project! {
    /// A request waiting for its cell: the cells it took, given back if it
    /// is dropped before its time; or (through Redis) none, asking again
    /// when the wait is over.
    #[project = WaitProj]
    struct Wait<S, Req, X, D> {
        #[pin]
        sleep: Sleep,
        // The cells taken for the end of the sleep (and the status then).
        held: Option<(Held, Option<RateLimitStatus>)>,
        // The latest admission by the layer's maximum wait (`max` after
        // the request came), and the request's deadline.
        by_max: Instant,
        deadline: Option<Instant>,
        key: Result<Key, MissingKey>,
        // A service of its own, made ready once the request is admitted:
        // the layer's own service, polled ready by its caller, stays with
        // the layer, and a reservation it holds (a concurrency permit, a
        // channel's slot) is not kept through the wait.
        svc: Option<S>,
        req: Option<Req>,
        // Admitted, its service not ready yet (with its status).
        admitted: Option<Option<RateLimitStatus>>,
        shared: Arc<Shared<X, D>>,
    }
    impl<S, Req, X, D> PinnedDrop for Wait<S, Req, X, D> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((held, _)) = this.held.take() {
                this.shared.give_back(&held, this.key);
            }
        }
    }
}

pin_project! {
    /// A request waiting for Redis's decision.
    ///
    /// Dropped while its call is pending (its caller gave up first: a
    /// timeout of its own, a client gone), the call is judged as a deadline
    /// cut's is: it goes on apart until Redis answers or the backend's
    /// timeout runs out (else a hung Redis whose callers all give up
    /// before that timeout was never judged, and never degraded).
    #[project = RedisWaitProj]
    struct RedisWait<S, Req, X, D> {
        call: RedisCall,
        // The call's outcome was taken (or the call handed on to be judged
        // apart): nothing to judge when dropped.
        settled: bool,
        // The call was polled: a call never polled has not reached Redis
        // (its future is lazy) and is dropped with the request, not judged
        // (unless it is a probe).
        polled: bool,
        #[pin]
        timer: Sleep,
        // The request's deadline ends the round trip before the backend's
        // timeout does: the wait is cut, not counted as a Redis failure.
        cut_by_deadline: bool,
        // As `Wait`'s, in the waiting mode only.
        by_max: Option<Instant>,
        deadline: Option<Instant>,
        key: Result<Key, MissingKey>,
        // As `Wait`'s.
        svc: Option<S>,
        req: Option<Req>,
        admitted: Option<Option<RateLimitStatus>>,
        shared: Arc<Shared<X, D>>,
    }
    impl<S, Req, X, D> PinnedDrop for RedisWait<S, Req, X, D> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A probe goes on even unpolled: it claimed its range's probe
            // time, and its reconnect is the range's way back.
            if !*this.settled && (*this.polled || is_probe(this.call)) {
                judge_apart(this.shared, this.call);
            }
        }
    }
}

/// A pending Redis call whose request no longer waits for it, judged apart
/// (see [`RedisState::cut`](super::redis::RedisState::cut)).
#[cfg(feature = "redis")]
fn judge_apart<X, D>(shared: &Shared<X, D>, call: &mut RedisCall) {
    if let Some(r) = &shared.redis {
        r.cut(&shared.observer, &shared.name, call);
    }
}

#[cfg(not(feature = "redis"))]
fn judge_apart<X, D>(_: &Shared<X, D>, call: &mut RedisCall) {
    match *call {}
}

/// Whether a Redis call is a probe of a degraded range.
#[cfg(feature = "redis")]
fn is_probe(call: &RedisCall) -> bool {
    call.probe
}

#[cfg(not(feature = "redis"))]
fn is_probe(call: &RedisCall) -> bool {
    match *call {}
}

#[cfg(feature = "redis")]
type RedisCall = super::redis::RedisCall;
#[cfg(not(feature = "redis"))]
type RedisCall = Never;

/// Uninhabited: no Redis call without feature `redis`.
#[cfg(not(feature = "redis"))]
#[derive(Debug)]
enum Never {}

impl<F, S, Req, X, D> fmt::Debug for ResponseFuture<F, S, Req, X, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
            State::Waiting { .. } => "waiting",
            State::Redis { .. } => "redis",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pub(crate) fn reject<X, D>(
    shared: &Shared<X, D>,
    wait: Option<Duration>,
    detail: &'static str,
) -> BoxError {
    // The time to the next cell, stretched so that callers refused
    // together do not all come back at the instant it frees.
    let hint = wait.map(|w| shared.jitter.stretch(w));
    shared.observer.emit(
        LayerKind::RateLimit,
        shared.name.as_str(),
        EventKind::Rejected {
            reason: RejectionKind::RateLimited,
            detail,
            retry_after: hint,
        },
    );
    RateLimited::new(shared.name.clone(), hint).into()
}

impl<F, S, Req, X, D> ResponseFuture<F, S, Req, X, D> {
    #[inline]
    pub(crate) fn called<Res>(
        shared: &Arc<Shared<X, D>>,
        status: Option<RateLimitStatus>,
        call: impl FnOnce() -> F,
    ) -> Self
    where
        D: Decorate<Res>,
    {
        shared.observer.emit(
            LayerKind::RateLimit,
            shared.name.as_str(),
            EventKind::CallStarted,
        );
        let deco = if D::ENABLED {
            status.map(|s| (shared.clone(), s))
        } else {
            None
        };
        ResponseFuture {
            state: State::Called { fut: call(), deco },
        }
    }

    pub(crate) fn rejected(
        shared: &Shared<X, D>,
        wait: Option<Duration>,
        detail: &'static str,
    ) -> Self {
        ResponseFuture {
            state: State::Rejected {
                err: Some(reject(shared, wait, detail)),
            },
        }
    }

    /// A request out of time: its cell would come only after its deadline
    /// (`DETAIL_DEADLINE_BEFORE_CELL`), or its deadline passed while Redis
    /// had not answered (`DETAIL_DEADLINE_IN_BACKEND`).
    pub(crate) fn deadline_exceeded(shared: &Shared<X, D>, detail: &'static str) -> Self {
        shared.observer.emit(
            crate::observe::LayerKind::RateLimit,
            shared.name.as_str(),
            crate::observe::EventKind::Rejected {
                reason: crate::error::RejectionKind::DeadlineExceeded,
                detail,
                retry_after: None,
            },
        );
        ResponseFuture {
            state: State::Rejected {
                err: Some(
                    crate::error::DeadlineExceeded::before_sending(shared.name.clone()).into(),
                ),
            },
        }
    }

    /// A request that waits until `until`: for the cells it took
    /// (`held`, with its status), called then; or, with none, to ask again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn waiting(
        until: Instant,
        by_max: Instant,
        deadline: Option<Instant>,
        key: Result<Key, MissingKey>,
        held: Option<(Held, Option<RateLimitStatus>)>,
        svc: S,
        req: Req,
        shared: &Arc<Shared<X, D>>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                inner: Box::pin(Wait {
                    sleep: tokio::time::sleep_until(until),
                    held,
                    by_max,
                    deadline,
                    key,
                    svc: Some(svc),
                    req: Some(req),
                    admitted: None,
                    shared: shared.clone(),
                }),
            },
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(
        call: RedisCall,
        by_max: Option<Instant>,
        deadline: Option<Instant>,
        key: Result<Key, MissingKey>,
        svc: S,
        req: Req,
        shared: &Arc<Shared<X, D>>,
    ) -> Self {
        let timeout = shared
            .redis
            .as_ref()
            .map_or(Duration::ZERO, |r| r.timeout());
        let by_timeout = crate::clock::edge_now() + timeout;
        let (until, cut_by_deadline) = match deadline {
            Some(d) if d < by_timeout => (d, true),
            _ => (by_timeout, false),
        };
        ResponseFuture {
            state: State::Redis {
                inner: Box::pin(RedisWait {
                    call,
                    settled: false,
                    polled: false,
                    timer: tokio::time::sleep_until(until),
                    cut_by_deadline,
                    by_max,
                    deadline,
                    key,
                    svc: Some(svc),
                    req: Some(req),
                    admitted: None,
                    shared: shared.clone(),
                }),
            },
        }
    }
}

/// What to do after a decision made inside the future. An admitted
/// request is marked `admitted` and its service made ready, then called
/// (pending while it is not ready: the next poll goes on from `admitted`).
#[allow(clippy::too_many_arguments)]
fn next<F, S, Req, X, D>(
    (verdict, status): (Verdict, Option<RateLimitStatus>),
    by_max: Option<Instant>,
    deadline: Option<Instant>,
    key: Result<Key, MissingKey>,
    svc: &mut Option<S>,
    req: &mut Option<Req>,
    admitted: &mut Option<Option<RateLimitStatus>>,
    shared: &Arc<Shared<X, D>>,
    cx: &mut Context<'_>,
) -> Poll<State<F, S, Req, X, D>>
where
    S: Service<Req, Future = F>,
    S::Error: Into<BoxError>,
    D: Decorate<S::Response>,
{
    Poll::Ready(match verdict {
        Verdict::Admit(_) => {
            *admitted = Some(status);
            return ready_then_call(svc, req, status, shared, cx);
        }
        Verdict::Deny { wait, detail } => match (by_max, wait) {
            (Some(by_max), Some(w)) => {
                // The rule of the layer's `call`, for a request woken to
                // find its cell gone (or told by Redis to wait).
                let now = crate::clock::edge_now();
                let limit = match deadline {
                    Some(d) if d < by_max => d,
                    _ => by_max,
                };
                if now + w <= limit {
                    match (svc.take(), req.take()) {
                        (Some(s), Some(r)) => {
                            ResponseFuture::waiting(
                                now + w,
                                by_max,
                                deadline,
                                key,
                                None,
                                s,
                                r,
                                shared,
                            )
                            .state
                        }
                        _ => spent(),
                    }
                } else if deadline == Some(limit) && now + w <= by_max {
                    // The wait itself would be allowed, but the cell comes
                    // after the request's deadline.
                    ResponseFuture::deadline_exceeded(shared, DETAIL_DEADLINE_BEFORE_CELL).state
                } else {
                    State::Rejected {
                        err: Some(reject(shared, Some(w), DETAIL_WAIT_TOO_LONG)),
                    }
                }
            }
            _ => State::Rejected {
                err: Some(reject(shared, wait, detail)),
            },
        },
    })
}

/// The state of a future polled again after it handed its request on.
fn spent<F, S, Req, X, D>() -> State<F, S, Req, X, D> {
    State::Rejected {
        err: Some("rate limit future polled after completion".into()),
    }
}

/// An admitted request's own service made ready, then called.
fn ready_then_call<F, S, Req, X, D>(
    svc: &mut Option<S>,
    req: &mut Option<Req>,
    status: Option<RateLimitStatus>,
    shared: &Arc<Shared<X, D>>,
    cx: &mut Context<'_>,
) -> Poll<State<F, S, Req, X, D>>
where
    S: Service<Req, Future = F>,
    S::Error: Into<BoxError>,
    D: Decorate<S::Response>,
{
    let Some(s) = svc.as_mut() else {
        return Poll::Ready(spent());
    };
    if let Err(e) = ready!(s.poll_ready(cx)) {
        return Poll::Ready(State::Rejected {
            err: Some(e.into()),
        });
    }
    Poll::Ready(match (svc.take(), req.take()) {
        (Some(mut s), Some(r)) => ResponseFuture::called(shared, status, || s.call(r)).state,
        _ => spent(),
    })
}

impl<F, S, Req, X, D, Res, E> Future for ResponseFuture<F, S, Req, X, D>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    S: Service<Req, Response = Res, Error = E, Future = F>,
    X: KeyExtractor<Req>,
    D: Decorate<Res>,
{
    type Output = Result<Res, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The admitted call's path, small enough to inline into the
        // caller's poll; the others are out of line.
        let mut state = self.project().state;
        if let StateProj::Called { fut, deco } = state.as_mut().project() {
            return poll_called(fut, deco, cx);
        }
        poll_slow(state, cx)
    }
}

/// An admitted call: its answer, with the rate-limit headers when the
/// layer adds them.
#[inline]
fn poll_called<F, X, D, Res, E>(
    fut: Pin<&mut F>,
    deco: &mut Option<(Arc<Shared<X, D>>, RateLimitStatus)>,
    cx: &mut Context<'_>,
) -> Poll<Result<Res, BoxError>>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    D: Decorate<Res>,
{
    // The answer is decorated where it lies and handed back from there
    // (see ARCHITECTURE.md).
    let mut poll = fut.poll(cx);
    if D::ENABLED {
        if let Poll::Ready(Ok(res)) = &mut poll {
            if let Some((shared, status)) = deco.take() {
                shared.decorator.decorate(res, &status);
            }
        }
    }
    poll.map_err(Into::into)
}

/// The rejected, waiting and Redis states of [`ResponseFuture`] (and the
/// call they lead to).
#[inline(never)]
fn poll_slow<F, S, Req, X, D, Res, E>(
    mut state: Pin<&mut State<F, S, Req, X, D>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Res, BoxError>>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    S: Service<Req, Response = Res, Error = E, Future = F>,
    X: KeyExtractor<Req>,
    D: Decorate<Res>,
{
    // An admitted call's answer reads no clock here: only the waiting
    // states open an edge of the call (see `clock::edge_now`).
    let mut edge = None;
    loop {
        let new = match state.as_mut().project() {
            StateProj::Called { fut, deco } => return poll_called(fut, deco, cx),
            StateProj::Rejected { err } => return crate::error::poll_rejected(err),
            StateProj::Waiting { inner } => {
                edge.get_or_insert_with(crate::clock::Edge::enter);
                let WaitProj {
                    sleep,
                    held,
                    by_max,
                    deadline,
                    key,
                    svc,
                    req,
                    admitted,
                    shared,
                } = inner.as_mut().project();
                if let Some(status) = *admitted {
                    ready!(ready_then_call(svc, req, status, shared, cx))
                } else if held.is_some() {
                    ready!(sleep.poll(cx));
                    // Its time: the cells it took admit it, no check again.
                    let status = held.take().and_then(|(_, status)| status);
                    *admitted = Some(status);
                    ready!(ready_then_call(svc, req, status, shared, cx))
                } else {
                    ready!(sleep.poll(cx));
                    let shared = shared.clone();
                    let cost = req.as_ref().map_or(1, |r| shared.extractor.cost(r));
                    match shared.decide(key, cost, D::ENABLED) {
                        Step::Now(v, status) => ready!(next(
                            (v, status),
                            Some(*by_max),
                            *deadline,
                            *key,
                            svc,
                            req,
                            admitted,
                            &shared,
                            cx,
                        )),
                        #[cfg(feature = "redis")]
                        Step::Redis(call) => match (svc.take(), req.take()) {
                            (Some(s), Some(r)) => {
                                ResponseFuture::redis(
                                    call,
                                    Some(*by_max),
                                    *deadline,
                                    *key,
                                    s,
                                    r,
                                    &shared,
                                )
                                .state
                            }
                            _ => spent(),
                        },
                    }
                }
            }
            #[cfg(feature = "redis")]
            StateProj::Redis { inner } => {
                edge.get_or_insert_with(crate::clock::Edge::enter);
                let RedisWaitProj {
                    call,
                    settled,
                    polled,
                    timer,
                    cut_by_deadline,
                    by_max,
                    deadline,
                    key,
                    svc,
                    req,
                    admitted,
                    shared,
                } = inner.as_mut().project();
                if let Some(status) = *admitted {
                    let new = ready!(ready_then_call(svc, req, status, shared, cx));
                    state.set(new);
                    continue;
                }
                *polled = true;
                let outcome = match call.fut.as_mut().poll(cx) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => {
                        ready!(timer.poll(cx));
                        None
                    }
                };
                // Judged here, by its outcome or its timeout, or cut below:
                // not again when dropped.
                *settled = true;
                if outcome.is_none() && *cut_by_deadline {
                    // Out of time before Redis answered: the request
                    // fails, and Redis is judged by its own timeout, not
                    // by this request's budget.
                    judge_apart(shared, call);
                    let new = ResponseFuture::deadline_exceeded(shared, DETAIL_DEADLINE_IN_BACKEND);
                    state.set(new.state);
                    continue;
                }
                let shared = shared.clone();
                let cost = req.as_ref().map_or(1, |r| shared.extractor.cost(r));
                let (v, status) = match &shared.redis {
                    Some(r) => r.complete(&shared, key, cost, call.slot, outcome),
                    None => shared.decide_local(key, cost, D::ENABLED),
                };
                ready!(next(
                    (v, status),
                    *by_max,
                    *deadline,
                    *key,
                    svc,
                    req,
                    admitted,
                    &shared,
                    cx,
                ))
            }
            #[cfg(not(feature = "redis"))]
            StateProj::Redis { inner } => match inner.call {},
        };
        state.set(new);
    }
}
