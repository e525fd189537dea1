use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use super::layer::Shared;
use crate::classify::is_local_refusal;
use crate::clock;
use crate::error::BoxError;
use crate::observe::{EventKind, LayerKind};
use crate::retry::{RetryPolicy, Verdict, Withdrawal};

/// Hedges one request may have in flight beside it.
const MAX_EXTRA: usize = super::layer::MAX_ATTEMPTS_LIMIT as usize - 1;

pin_project! {
    /// A hedge in flight: boxed, so that a request that is never hedged
    /// carries no room for one (hedging is the slow path).
    pub(crate) struct Extra<F> {
        #[pin]
        future: F,
        started: Instant,
        withdrawal: Option<Withdrawal>,
    }
}

pin_project! {
    /// The response future of [`Hedge`](super::Hedge): the request in
    /// flight, the timer of the next hedge, and the hedges sent.
    ///
    /// The first answer that is not a retryable failure wins and the other
    /// attempts are dropped (cancelled: their permits come back, a breaker
    /// does not count them), except a copy's answer that is not a success
    /// (a `409 Conflict` for a key in use, a `404`, a failure): it waits for
    /// the attempts still running, and the request ends as they do (the
    /// copy's answer is returned only when no other attempt answered).
    /// A retryable failure waits for the attempts still running; when none
    /// is left, the last one is returned (for a retry layer above to
    /// handle).
    pub struct ResponseFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        #[pin]
        first: Option<S::Future>,
        #[pin]
        sleep: Option<Sleep>,
        // Boxed: a hedge is the slow path (sent after the latency
        // percentile), and inline its room would be in every call's future.
        extras: [Option<Pin<Box<Extra<S::Future>>>>; MAX_EXTRA],
        shared: Arc<Shared<P>>,
        service: Option<S>,
        request: Option<Req>,
        last: Option<Result<S::Response, BoxError>>,
        first_started: Instant,
        last_sent: Instant,
        sent: u32,
        stopped: bool,
    }
}

impl<S, Req, P> ResponseFuture<S, Req, P>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        future: S::Future,
        shared: Arc<Shared<P>>,
        service: Option<S>,
        request: Option<Req>,
        started: Instant,
    ) -> Self {
        ResponseFuture {
            first: Some(future),
            sleep: None,
            extras: Default::default(),
            shared,
            service,
            request,
            last: None,
            first_started: started,
            last_sent: started,
            sent: 1,
            stopped: false,
        }
    }

    /// Attempts sent so far (1 before any hedge).
    pub fn attempts(&self) -> u32 {
        self.sent
    }
}

impl<S, Req, P> fmt::Debug for ResponseFuture<S, Req, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.sent)
            .finish_non_exhaustive()
    }
}

/// What one finished attempt means: `Some` is the answer; `None` means wait
/// for the others.
fn settle<P, Req, T>(
    shared: &Shared<P>,
    last: &mut Option<Result<T, BoxError>>,
    stopped: &mut bool,
    result: Result<T, BoxError>,
    started: Instant,
    attempt: u32,
    withdrawal: Option<Withdrawal>,
) -> Option<Result<T, BoxError>>
where
    P: RetryPolicy<Req, T>,
{
    if attempt > 1 && matches!(&result, Err(e) if is_local_refusal(e)) {
        // A hedge refused in this process (an open breaker, a full
        // bulkhead): nothing was sent. Its budget comes back, and no more
        // hedges for this request.
        if let Some(w) = withdrawal {
            shared.budget.refund(w);
        }
        *stopped = true;
        if last.is_none() {
            *last = Some(result);
        }
        return None;
    }
    let verdict = shared.policy.classify(result.as_ref());
    if attempt > 1
        && !matches!(verdict, Verdict::Retry { .. })
        && shared.policy.outcome(result.as_ref(), verdict) != crate::observe::Outcome::Success
    {
        // A copy's answer that is not a success does not end a request
        // whose other attempts still run: a server that answers a second
        // request with the same `Idempotency-Key` `409 Conflict` while the
        // first is in flight (the IETF draft's rule) answers the copy that
        // way, and the original, mid-work, would be cancelled for it. The
        // answer is kept in case they fail too; no more copies are sent.
        *stopped = true;
        if last.is_none() {
            *last = Some(result);
        }
        return None;
    }
    match verdict {
        Verdict::Success => {
            if let Some(estimator) = &shared.estimator {
                let now = clock::edge_now();
                estimator.record(crate::clock::elapsed(started, now), now);
            }
            Some(result)
        }
        Verdict::Retry { .. } => {
            *last = Some(result);
            None
        }
        _ => Some(result),
    }
}

impl<S, Req, P> Future for ResponseFuture<S, Req, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = clock::Edge::enter();
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            let mut answer = None;
            if let Some(fut) = this.first.as_mut().as_pin_mut() {
                if let Poll::Ready(result) = fut.poll(cx) {
                    this.first.set(None);
                    answer = settle(
                        shared,
                        this.last,
                        this.stopped,
                        result.map_err(Into::into),
                        *this.first_started,
                        1,
                        None,
                    );
                }
            }
            for (i, slot) in this.extras.iter_mut().enumerate() {
                if answer.is_some() {
                    break;
                }
                let Some(extra) = slot else { continue };
                let extra = extra.as_mut().project();
                let Poll::Ready(result) = extra.future.poll(cx) else {
                    continue;
                };
                let (started, withdrawal) = (*extra.started, extra.withdrawal.take());
                *slot = None;
                answer = settle(
                    shared,
                    this.last,
                    this.stopped,
                    result.map_err(Into::into),
                    started,
                    i as u32 + 2,
                    withdrawal,
                );
            }
            if let Some(answer) = answer {
                // An attempt of the others may have noted that it ran on,
                // for a retry layer above that sees only this answer: the
                // note goes with it.
                let _ = crate::deadline::take_attempt_notes();
                // The others are cancelled now, not when this future is dropped.
                this.first.set(None);
                for slot in this.extras.iter_mut() {
                    *slot = None;
                }
                return Poll::Ready(answer);
            }
            let running = this.first.is_some() || this.extras.iter().any(Option::is_some);
            if !running {
                return Poll::Ready(
                    this.last
                        .take()
                        .unwrap_or_else(|| Err("hedge future polled after completion".into())),
                );
            }

            // The next hedge, if one may be sent.
            if *this.stopped || *this.sent >= shared.max_attempts || this.request.is_none() {
                return Poll::Pending;
            }
            let Some(delay) = shared.delay() else {
                // No estimate yet: no hedge.
                return Poll::Pending;
            };
            let Some(at) = this.last_sent.checked_add(delay) else {
                // A delay past the clock's range: no hedge.
                stop(this.stopped, this.service);
                return Poll::Pending;
            };
            match this.sleep.as_mut().as_pin_mut() {
                Some(sleep) => {
                    if sleep.deadline() != at {
                        sleep.reset(at);
                    }
                }
                None => this.sleep.set(Some(sleep_until(at))),
            }
            if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            // A hedge that cannot get as long as the request waited before
            // it (since its first copy went: at least until the timer fired,
            // longer if the copy's service was not ready then) is not worth
            // its load.
            let waited = clock::edge_now()
                .max(at)
                .saturating_duration_since(*this.first_started);
            if crate::deadline::current().is_some_and(|d| d.remaining() < waited) {
                stop(this.stopped, this.service);
                return Poll::Pending;
            }
            let Some(service) = this.service.as_mut() else {
                *this.stopped = true;
                return Poll::Pending;
            };
            match service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    stop(this.stopped, this.service);
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {}
            }
            let Some(withdrawal) = shared.budget.try_withdraw() else {
                shared.observer.emit(
                    LayerKind::Hedge,
                    shared.name.as_str(),
                    EventKind::BudgetExhausted,
                );
                // The copy made ready gives its place back (a `Buffer`'s
                // slot, a bulkhead's permit) now, not when the request ends.
                stop(this.stopped, this.service);
                return Poll::Pending;
            };
            let attempt = *this.sent + 1;
            let copy = if attempt < shared.max_attempts {
                this.request
                    .as_ref()
                    .and_then(|r| shared.policy.clone_request(r))
            } else {
                None
            };
            let mut request = match copy {
                Some(c) => c,
                None => match this.request.take() {
                    Some(r) => r,
                    None => {
                        shared.budget.refund(withdrawal);
                        stop(this.stopped, this.service);
                        return Poll::Pending;
                    }
                },
            };
            shared.policy.on_attempt(&mut request, attempt);
            let now = clock::edge_now();
            shared.observer.emit(
                LayerKind::Hedge,
                shared.name.as_str(),
                EventKind::HedgeSent {
                    attempt,
                    delay: crate::clock::elapsed(*this.first_started, now),
                },
            );
            let future = service.call(request);
            if let Some(slot) = this.extras.iter_mut().find(|s| s.is_none()) {
                *slot = Some(Box::pin(Extra {
                    future,
                    started: now,
                    withdrawal: Some(withdrawal),
                }));
            }
            *this.sent = attempt;
            *this.last_sent = now;
        }
    }
}

/// No more hedges for this request: the service copy it kept for them is
/// dropped, and with it any place its readiness reserved.
fn stop<S>(stopped: &mut bool, service: &mut Option<S>) {
    *stopped = true;
    *service = None;
}
