use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::backoff::BackoffState;
use super::budget::{FailureRetry, RequestTicket, TimeoutRefusal, Withdrawal};
use super::layer::{SessionRng, Shared};
use super::policy::{RetryPolicy, Verdict};
use super::service::Local;
use crate::deadline::Deadline;
use crate::error::{BoxError, DeadlineExceeded, RejectionKind};

/// The `detail` of the refusal of a retry the deadline left no time for.
pub(crate) const DEADLINE_SPENT: &str = "deadline_spent";
use crate::observe::{EventKind, GiveUpReason, LayerKind, Outcome};

pin_project! {
    #[project = StateProj]
    enum State<F, S, T> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Sleeping the backoff before the next attempt, with the outcome it
        // would answer and the retry granted by the budget.
        Backoff {
            #[pin]
            sleep: Sleep,
            last: Option<Result<T, BoxError>>,
            withdrawal: Option<Withdrawal>,
        },
        // Waiting for a copy of the service to be ready for the next
        // attempt, no longer than the deadline: the timer is made at the
        // first poll that finds the copy not ready. The copy lives only in
        // this state, so it takes no room beside an attempt in flight.
        Ready {
            service: Option<S>,
            #[pin]
            sleep: Option<Sleep>,
            last: Option<Result<T, BoxError>>,
            withdrawal: Option<Withdrawal>,
        },
    }
}

pin_project! {
    /// The response future of [`Retry`](super::Retry): a state machine
    /// (calling, backing off, waiting for readiness) holding the attempt in
    /// flight or the backoff timer inline.
    ///
    /// Dropping it cancels cleanly: the attempt or timer is dropped with it,
    /// nothing is spawned, and a retry granted by the budget but not yet
    /// started is handed back.
    ///
    /// Made in a handler under a server's adaptive limit, the call's time,
    /// from `call` to its end, is the handler's wait on a call out: not in
    /// the server's latency sample nor its count of calls in flight (see
    /// [`AdaptiveLimit`](crate::shed::AdaptiveLimit)).
    pub struct ResponseFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, S, S::Response>,
        local: Arc<Local<S, P>>,
        request: Option<Req>,
        attempts: u32,
        no_retry: GiveUpReason,
        backoff: BackoffState,
        rng: Option<SessionRng>,
        started: Option<Instant>,
        deadline: Option<Deadline>,
        counted: Counted,
        // The attempt in flight, left uncut, ran past its own limit (and is
        // counted as a timeout already).
        overran: bool,
        // The wait this call opened in the server call its first poll ran
        // in (see `outbound`), closed when it ends.
        outbound: Option<std::num::NonZeroU32>,
        polled: bool,
        // The attempt in flight is a retry after the dependency failed:
        // whether it saves the request is told to the budget as it ends.
        after_failure: bool,
    }

    impl<S, Req, P> PinnedDrop for ResponseFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(token) = this.outbound.take() {
                crate::outbound::end(token, crate::clock::edge_now);
            }
            if let StateProj::Backoff { withdrawal, .. } | StateProj::Ready { withdrawal, .. } =
                this.state.project()
            {
                if let Some(w) = withdrawal.take() {
                    this.local.shared.budget.refund(w);
                }
            }
        }
    }
}

impl<S, Req, P> ResponseFuture<S, Req, P>
where
    S: Service<Req>,
{
    /// The first attempt, made by `call`, last (ARCHITECTURE.md, the shape
    /// of every layer).
    #[inline]
    pub(crate) fn new(
        local: Arc<Local<S, P>>,
        request: Option<Req>,
        no_retry: GiveUpReason,
        started: Option<Instant>,
        deadline: Option<Deadline>,
        call: impl FnOnce() -> S::Future,
    ) -> Self {
        ResponseFuture {
            deadline,
            counted: Counted::NOT,
            overran: false,
            outbound: None,
            polled: false,
            after_failure: false,
            state: State::Calling { future: call() },
            local,
            request,
            attempts: 1,
            no_retry,
            backoff: BackoffState::new(),
            rng: None,
            started,
        }
    }

    /// Attempts started so far (1 while the first is in flight).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl<S, Req, P> fmt::Debug for ResponseFuture<S, Req, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::Backoff { .. } => "backoff",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Why no retry is scheduled, and whether the deadline itself is spent.
struct GiveUp {
    reason: GiveUpReason,
    deadline_spent: bool,
}

impl GiveUp {
    fn new(reason: GiveUpReason) -> Self {
        GiveUp {
            reason,
            deadline_spent: false,
        }
    }
}

impl<S, Req, P> Future for ResponseFuture<S, Req, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    /// The common case inline: the attempt in flight ends in a success.
    /// Everything else (a failure, a retry to plan, a backoff, a readiness
    /// wait) is out of line.
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = crate::clock::Edge::enter();
        // Inside a server's call, the time from here to this call's end is
        // spent outside it: from the first poll, on the task that awaits
        // the call (a call spawned on a task of its own is not the
        // handler's wait).
        let this = self.as_mut().project();
        if !*this.polled {
            *this.polled = true;
            *this.outbound = crate::outbound::begin(crate::clock::edge_now);
        }
        let poll = self.as_mut().poll_calls(cx);
        if poll.is_ready() {
            if let Some(token) = self.as_mut().project().outbound.take() {
                crate::outbound::end(token, crate::clock::edge_now);
            }
        }
        poll
    }
}

impl<S, Req, P> ResponseFuture<S, Req, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    /// [`poll`](Future::poll) within its edge of the clock.
    #[inline(always)]
    fn poll_calls(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        let this = self.as_mut().project();
        if let StateProj::Calling { future } = this.state.project() {
            // A success is judged on the answer where it lies and handed
            // back from there: taken out first, a large answer (an HTTP
            // response) would be copied once more (see ARCHITECTURE.md).
            let poll = future.poll(cx);
            let shared = &*this.local.shared;
            if poll.is_pending() {
                if crate::deadline::take_attempt_notes() & crate::deadline::OVERRAN != 0 {
                    overran(shared, this.overran);
                }
                return Poll::Pending;
            }
            let judged = match &poll {
                Poll::Ready(Ok(response)) => Some(shared.policy.classify(Ok(response))),
                _ => None,
            };
            if let (Some(Verdict::Success), Poll::Ready(Ok(response))) = (judged, &poll) {
                succeeded(
                    shared,
                    this.started,
                    this.counted,
                    this.after_failure,
                    || shared.policy.outcome(Ok(response), Verdict::Success),
                );
                return poll.map_err(Into::into);
            }
            let result = ready!(poll).map_err(Into::into);
            let verdict = judged.unwrap_or_else(|| shared.policy.classify(result.as_ref()));
            if matches!(verdict, Verdict::Success) {
                succeeded(
                    shared,
                    this.started,
                    this.counted,
                    this.after_failure,
                    || shared.policy.outcome(result.as_ref(), verdict),
                );
                return Poll::Ready(result);
            }
            return self.poll_slow(cx, Some((result, verdict)));
        }
        self.poll_slow(cx, None)
    }

    /// The state machine, from an attempt that has just ended (`ended`,
    /// with its verdict) or from the state as it stands.
    #[inline(never)]
    fn poll_slow(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut ended: Option<(Result<S::Response, BoxError>, Verdict)>,
    ) -> Poll<Result<S::Response, BoxError>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let (result, verdict) = match ended.take() {
                        Some(ended) => ended,
                        None => {
                            let polled = future.poll(cx);
                            if polled.is_pending()
                                && crate::deadline::take_attempt_notes() & crate::deadline::OVERRAN
                                    != 0
                            {
                                overran(&this.local.shared, this.overran);
                            }
                            let result = ready!(polled).map_err(Into::into);
                            let verdict = this.local.shared.policy.classify(result.as_ref());
                            (result, verdict)
                        }
                    };
                    let shared = &*this.local.shared;
                    let local = matches!(&result, Err(e) if crate::classify::is_local_refusal(e));
                    // (A success is told by `succeeded`, below, which
                    // takes the flag itself.)
                    if !matches!(verdict, Verdict::Success)
                        && std::mem::take(this.after_failure)
                        && !local
                    {
                        shared.budget.retried_failure_ended(false);
                    }
                    if *this.counted == Counted::NOT && !matches!(verdict, Verdict::Success) {
                        // The first attempt failed: the request is counted
                        // now, before any retry is taken from the budget
                        // (its success, if a retry saves it, is credited
                        // to the same slice).
                        *this.counted = Counted::pending(shared.budget.deposit_request());
                    }
                    // An attempt that ran on and ended in the same poll
                    // left its note: taken here, so that it is neither
                    // counted twice nor left for another request's poll.
                    let notes = crate::deadline::take_attempt_notes();
                    let noted = notes & crate::deadline::OVERRAN != 0;
                    // The dependency's answer to the deadline the attempt
                    // sent, come at the attempt's own limit, is that
                    // attempt's timeout: what the budget judges timeouts
                    // by, and what a retry after a timeout needs (in a
                    // chain A → B → C over HTTP, B's `504` at the time A's
                    // attempt gave it, while C is slow).
                    // (Also when the attempt's timer fired first, a moment
                    // before that answer, and let it run on.)
                    let counted = std::mem::take(this.overran);
                    let timed_out = matches!(&result, Err(e) if super::is_attempt_timeout(e))
                        || ((notes & crate::deadline::AT_LIMIT != 0 || noted || counted)
                            && shared.policy.is_deadline_answer(result.as_ref()));
                    if (timed_out || noted) && !counted {
                        shared.budget.deposit_timeout();
                    }
                    if let Some(started) = this.started.take() {
                        // The outcome model, as every layer reports it: a
                        // refusal of a layer below (an open breaker, a full
                        // bulkhead) is refused, not failed.
                        let outcome = match &result {
                            Err(e) if crate::classify::is_local_refusal(e) => Outcome::Refused,
                            r => shared.policy.outcome(r.as_ref(), verdict),
                        };
                        call_finished(shared, outcome, started);
                    }
                    let give_up = match verdict {
                        Verdict::Success => {
                            // (Reported above already.)
                            succeeded(
                                shared,
                                this.started,
                                this.counted,
                                this.after_failure,
                                || Outcome::Success,
                            );
                            return Poll::Ready(result);
                        }
                        Verdict::Fail => GiveUp::new(match &result {
                            Err(e)
                                if crate::error::rejection_in(e).is_some_and(|r| {
                                    r.kind() == crate::error::RejectionKind::CircuitOpen
                                }) =>
                            {
                                GiveUpReason::CircuitOpen
                            }
                            r if answered_to_the_deadline::<P, Req, _>(
                                shared,
                                r.as_ref(),
                                *this.deadline,
                            ) =>
                            {
                                GiveUpReason::Deadline
                            }
                            _ => GiveUpReason::NotRetryable,
                        }),
                        Verdict::DoNotRetry => GiveUp::new(GiveUpReason::Pushback),
                        Verdict::Retry { after } => {
                            // The dependency said it is busy (or asked for
                            // a wait): a retry takes another's place there
                            // rather than saving a request. (Not a refusal
                            // of a layer below, such as the stack's own
                            // limit: the retry passes it again, admitted
                            // only where it has room.)
                            let busy = !local
                                && (after.is_some()
                                    || shared.policy.is_busy_answer(result.as_ref())
                                    || (shared.policy.outcome(result.as_ref(), verdict)
                                        == Outcome::Overloaded
                                        && shared.budget.busy_run()));
                            // The dependency failed (not busy, no timeout,
                            // no refusal of this process's).
                            let failed = !busy && !timed_out && !local;
                            match plan(
                                shared,
                                timed_out,
                                busy,
                                failed,
                                *this.attempts,
                                this.request.is_some(),
                                *this.no_retry,
                                after,
                                this.backoff,
                                this.rng,
                                *this.deadline,
                            ) {
                                Ok((delay, withdrawal)) => {
                                    *this.after_failure = failed;
                                    shared.observer.emit(
                                        LayerKind::Retry,
                                        shared.name.as_str(),
                                        EventKind::RetryScheduled {
                                            attempt: *this.attempts + 1,
                                            delay,
                                        },
                                    );
                                    this.state.set(State::Backoff {
                                        sleep: tokio::time::sleep(delay),
                                        last: Some(result),
                                        withdrawal: Some(withdrawal),
                                    });
                                    continue;
                                }
                                Err(g) => g,
                            }
                        }
                    };
                    return Poll::Ready(give_up_with(shared, *this.attempts, give_up, result));
                }
                StateProj::Backoff {
                    sleep,
                    last,
                    withdrawal,
                } => {
                    ready!(sleep.poll(cx));
                    let (last, withdrawal) = (last.take(), withdrawal.take());
                    this.state.set(State::Ready {
                        service: None,
                        sleep: None,
                        last,
                        withdrawal,
                    });
                }
                StateProj::Ready {
                    service,
                    mut sleep,
                    last,
                    withdrawal,
                } => {
                    let shared = &*this.local.shared;
                    if service.is_none() {
                        *service = this.local.spare();
                    }
                    let Some(service) = service.as_mut() else {
                        // Not reachable: a retry is only scheduled once the
                        // spare copy is kept.
                        return Poll::Ready(take_last(last, shared));
                    };
                    let deadline = crate::deadline::earliest(*this.deadline);
                    let expired = match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => false,
                        Poll::Ready(Err(e)) => {
                            if let Some(w) = withdrawal.take() {
                                shared.budget.refund(w);
                            }
                            let give_up = GiveUp::new(GiveUpReason::NotRetryable);
                            return Poll::Ready(give_up_with(
                                shared,
                                *this.attempts,
                                give_up,
                                Err(e.into()),
                            ));
                        }
                        Poll::Pending => {
                            // Not ready: wait, but only until the moment a
                            // retry would no longer have the time it needs.
                            let Some(deadline) = deadline else {
                                return Poll::Pending;
                            };
                            let at = deadline.instant();
                            let at = at.checked_sub(shared.min_remaining).unwrap_or(at);
                            if !crate::clock::timer_fired(sleep.as_mut(), at, cx) {
                                return Poll::Pending;
                            }
                            true
                        }
                    };
                    // Time may have passed while waiting for readiness.
                    if let Some(deadline) = deadline {
                        let remaining = deadline.remaining();
                        if expired || remaining < shared.min_remaining {
                            if let Some(w) = withdrawal.take() {
                                shared.budget.refund(w);
                            }
                            let give_up = GiveUp {
                                reason: GiveUpReason::Deadline,
                                deadline_spent: remaining.is_zero(),
                            };
                            let last = take_last(last, shared);
                            return Poll::Ready(give_up_with(
                                shared,
                                *this.attempts,
                                give_up,
                                last,
                            ));
                        }
                    }
                    let Some(mut req) = this.request.take() else {
                        return Poll::Ready(take_last(last, shared));
                    };
                    let attempt = *this.attempts + 1;
                    if attempt < shared.max_attempts {
                        *this.request = shared.policy.clone_request(&req);
                        if this.request.is_none() {
                            *this.no_retry = GiveUpReason::NotReplayable;
                        }
                    }
                    // The retry is made: its budget withdrawal stands.
                    *withdrawal = None;
                    *this.attempts = attempt;
                    shared.policy.on_attempt(&mut req, attempt);
                    if shared.observer.is_enabled() {
                        shared.observer.emit(
                            LayerKind::Retry,
                            shared.name.as_str(),
                            EventKind::CallStarted,
                        );
                        *this.started = Some(crate::clock::edge_now());
                    }
                    // The last attempt's answer goes before the next one
                    // is made: what its body holds (a permit of the
                    // bulkhead below, a connection) is free for it.
                    *last = None;
                    // The budget asked first, whatever follows: timeouts
                    // judged common are judged again as attempts go on (a
                    // layer that never retries a timeout, the gRPC
                    // preset's, kept its `timeouts_common` state for good).
                    let may_follow = shared.budget.may_retry_timeout()
                        && attempt < shared.max_attempts
                        && this.request.is_some()
                        && shared.policy.may_retry_timeout(&req);
                    let future =
                        crate::deadline::call_with_retry_gate(may_follow, || service.call(req));
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

/// Where a request stands in the retry budget: counted as its first attempt
/// ends (a success counts as a request and a success in one write).
///
/// In 8 bytes: 0, the first attempt is in flight; `u64::MAX`, counted, with
/// its success if it had one; any other, counted when its first attempt
/// failed, in the budget's window slice one below it (a success is credited
/// to that slice).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Counted(u64);

impl Counted {
    const NOT: Counted = Counted(0);
    const DONE: Counted = Counted(u64::MAX);

    fn pending(ticket: RequestTicket) -> Counted {
        Counted(ticket.epoch().saturating_add(1).min(u64::MAX - 1))
    }
}

/// An attempt succeeded: reported (if observed and not reported yet) and
/// its request counted as succeeded in the budget, once.
#[inline]
fn succeeded<P>(
    shared: &Shared<P>,
    started: &mut Option<Instant>,
    counted: &mut Counted,
    after_failure: &mut bool,
    outcome: impl FnOnce() -> Outcome,
) {
    if *after_failure {
        *after_failure = false;
        shared.budget.retried_failure_ended(true);
    }
    // An attempt answered at its limit with a success left its note: taken,
    // so that no other request's answer in this poll reads it as its own.
    crate::deadline::clear_at_limit();
    if let Some(started) = started.take() {
        // (The outcome is asked only when an observer listens: a success
        // is not always `Success` to it, a 404 being `Ignored`.)
        call_finished(shared, outcome(), started);
    }
    match std::mem::replace(counted, Counted::DONE) {
        Counted::NOT => shared.budget.deposit_succeeded(),
        Counted::DONE => {}
        Counted(slice) => shared
            .budget
            .credit_success(RequestTicket::in_slice(slice - 1)),
    }
}

/// Reports an attempt's end to the observer (only an observed attempt has a
/// start time).
#[inline(never)]
fn call_finished<P>(shared: &Shared<P>, outcome: Outcome, started: Instant) {
    shared.observer.emit(
        LayerKind::Retry,
        shared.name.as_str(),
        EventKind::CallFinished {
            outcome,
            latency: crate::clock::elapsed(started, crate::clock::edge_now()),
        },
    );
}

/// Decides the delay of the next retry, or why there is none. Takes a retry
/// from the budget last, so a refused retry never spends budget.
#[allow(clippy::too_many_arguments)]
fn plan<P>(
    shared: &Shared<P>,
    timed_out: bool,
    busy: bool,
    failed: bool,
    attempts: u32,
    replayable: bool,
    no_retry: GiveUpReason,
    after: Option<Duration>,
    backoff: &mut BackoffState,
    rng: &mut Option<SessionRng>,
    deadline: Option<Deadline>,
) -> Result<(Duration, Withdrawal), GiveUp> {
    if attempts >= shared.max_attempts {
        return Err(GiveUp::new(GiveUpReason::MaxAttempts));
    }
    if !replayable {
        return Err(GiveUp::new(no_retry));
    }
    let mut delay = match after {
        Some(wait) if wait > shared.max_retry_after => {
            return Err(GiveUp::new(GiveUpReason::Pushback));
        }
        Some(wait) => {
            // As gRPC does: after a pushback, the backoff starts over.
            backoff.reset();
            // A wait in whole seconds is at HTTP `Retry-After`'s
            // resolution: every caller told "1" in a second would come
            // back at one instant. Spread over a fifth more.
            if wait >= Duration::from_secs(1) && wait.subsec_nanos() == 0 {
                let rng = rng.get_or_insert_with(|| shared.session_rng());
                super::backoff::draw(rng, wait, wait + wait / 5)
            } else {
                wait
            }
        }
        None => {
            let rng = rng.get_or_insert_with(|| shared.session_rng());
            shared.backoff.next_delay(backoff, rng)
        }
    };
    if let Some(deadline) = crate::deadline::earliest(deadline) {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Err(GiveUp {
                reason: GiveUpReason::Deadline,
                deadline_spent: true,
            });
        }
        if delay.saturating_add(shared.min_remaining) > remaining {
            // (A spread wait is cut to what fits, if the wait asked for does.)
            match after {
                Some(wait) if wait.saturating_add(shared.min_remaining) <= remaining => {
                    delay = remaining - shared.min_remaining;
                }
                _ => return Err(GiveUp::new(GiveUpReason::Deadline)),
            }
        }
    }
    let probe = failed
        && match shared.budget.failure_retry() {
            FailureRetry::Saves => false,
            FailureRetry::Probe => true,
            FailureRetry::Futile => return Err(GiveUp::new(GiveUpReason::RetriesFutile)),
        };
    let granted = match timed_out {
        true => match shared.budget.try_withdraw_after_timeout() {
            Err(TimeoutRefusal::Common) => {
                return Err(GiveUp::new(GiveUpReason::TimeoutsCommon));
            }
            Err(TimeoutRefusal::Budget) => None,
            Ok(w) => Some(w),
        },
        false if busy || probe => shared.budget.try_withdraw_busy(),
        false => shared.budget.try_withdraw(),
    };
    match granted {
        Some(w) => Ok((delay, w)),
        None => {
            shared.observer.emit(
                LayerKind::Retry,
                shared.name.as_str(),
                EventKind::BudgetExhausted,
            );
            Err(GiveUp::new(GiveUpReason::BudgetExhausted))
        }
    }
}

/// The attempt in flight, left uncut because no retry could follow it, ran
/// past its own limit: a timeout, to the budget's judgement of whether
/// timeouts are rare (once per attempt).
#[cold]
#[inline(never)]
fn overran<P>(shared: &Shared<P>, counted: &mut bool) {
    if !std::mem::replace(counted, true) {
        shared.budget.deposit_timeout();
    }
}

/// The deadline that bounds the retries: the one the request carried (or the
/// task-local one) when it was called, or a task-local one set around this
/// future since, whichever is earlier.
#[inline]
fn take_last<P, R>(
    last: &mut Option<Result<R, BoxError>>,
    shared: &Shared<P>,
) -> Result<R, BoxError> {
    match last.take() {
        Some(r) => r,
        None => Err(DeadlineExceeded::new(shared.name.clone()).into()),
    }
}

/// Whether a failed attempt is the dependency's answer to the request's
/// deadline (see [`RetryPolicy::is_deadline_answer`]), or a layer below's
/// `DeadlineExceeded` or `AttemptTimeout`, come back with
/// [`ANSWER_MARGIN`](crate::deadline::ANSWER_MARGIN) or less of it left:
/// given up on for the deadline, not as not retryable (a gRPC
/// `DEADLINE_EXCEEDED`, which the gRPC policy does not retry by default,
/// counted `not_retryable` 74 times in an outside trial where the
/// requests' time had gone in refused attempts and their retries). Out of
/// line: only a failure that is not retried reaches it.
#[inline(never)]
fn answered_to_the_deadline<P, Req, R>(
    shared: &Shared<P>,
    result: Result<&R, &BoxError>,
    deadline: Option<Deadline>,
) -> bool
where
    P: RetryPolicy<Req, R>,
{
    // (The answer first: the clock is read only for a deadline answer.)
    // A layer below that ran out of the request's time (its attempt
    // timeout, let run on to the deadline; a wait in a client stack's
    // limit) is given up on for the deadline too: a new user's dashboard
    // read 1714 such requests a run as `not_retryable`.
    let out_of_time_below = || {
        matches!(result, Err(e) if crate::error::rejection_in(e).is_some_and(|r| matches!(
            r.kind(),
            crate::error::RejectionKind::DeadlineExceeded | crate::error::RejectionKind::AttemptTimeout
        )))
    };
    (shared.policy.is_deadline_answer(result) || out_of_time_below())
        && crate::deadline::earliest(deadline)
            .is_some_and(|d| d.remaining() <= crate::deadline::ANSWER_MARGIN)
}

/// Reports the give-up and returns what the caller gets: the last outcome,
/// or `DeadlineExceeded` when the deadline itself is spent.
fn give_up_with<P, R>(
    shared: &Shared<P>,
    attempts: u32,
    give_up: GiveUp,
    last: Result<R, BoxError>,
) -> Result<R, BoxError> {
    let name = shared.name.as_str();
    shared.observer.emit(
        LayerKind::Retry,
        name,
        EventKind::RetryGaveUp {
            attempts,
            reason: give_up.reason,
        },
    );
    if give_up.deadline_spent {
        shared.observer.emit(
            LayerKind::Retry,
            name,
            EventKind::Rejected {
                reason: RejectionKind::DeadlineExceeded,
                detail: DEADLINE_SPENT,
                retry_after: None,
            },
        );
        return Err(DeadlineExceeded::new(shared.name.clone()).into());
    }
    last
}
