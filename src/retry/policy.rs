//! What is retried: the pluggable [`RetryPolicy`] and the default [`RetryErrors`].

use std::time::Duration;

use crate::error::{BoxError, RejectionKind, rejection};

/// A policy's decision about one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// A success: return it.
    Success,
    /// A failure that must not be retried: return it.
    Fail,
    /// A failure worth retrying. `after` is the server's hint, if it gave one:
    /// the next attempt waits that long instead of the backoff, provided the
    /// wait fits the deadline and the configured maximum: exactly, or, for
    /// a wait in whole seconds (HTTP `Retry-After`'s resolution, which
    /// would bring every caller told "1" back at one instant), a random
    /// wait up to a fifth longer, cut to what fits the deadline.
    Retry {
        /// The server's `retry_after` / `Retry-After` / pushback, if any.
        after: Option<Duration>,
    },
    /// The server said not to retry (a negative or unparseable pushback):
    /// return the outcome.
    DoNotRetry,
}

impl Verdict {
    /// A retryable failure without a server hint.
    pub const RETRY: Verdict = Verdict::Retry { after: None };

    /// Whether the outcome counts as a failure (everything but [`Verdict::Success`]).
    pub const fn is_failure(self) -> bool {
        !matches!(self, Verdict::Success)
    }
}

/// Decides, per outcome, whether a request is retried, and how a request is
/// replayed.
///
/// The retry layer converts the inner service's error into a [`BoxError`]
/// before classifying, so one policy serves any error type.
pub trait RetryPolicy<Req, Res>: Send + Sync + 'static {
    /// Classifies one attempt's outcome.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Verdict;

    /// A copy of `req` for another attempt, or `None` if it cannot be replayed
    /// (the request is then sent once; a failure is returned with
    /// [`GiveUpReason::NotReplayable`](crate::observe::GiveUpReason::NotReplayable)).
    fn clone_request(&self, req: &Req) -> Option<Req>;

    /// The outcome an attempt reports (its `CallFinished` event, and so the
    /// retry layer's `seawall_calls_total`), in the model every layer
    /// reports by: `verdict` is what [`classify`](Self::classify) said of
    /// `result`. Default: a seawall overload in an error is
    /// [`Overloaded`](crate::observe::Outcome::Overloaded), otherwise a
    /// success or a failure as the verdict says. The protocol policies judge
    /// a response as their protocol's default classifier does, as the
    /// circuit breaker beside them does with its default (HTTP 429, or 503
    /// with `Retry-After`: overloaded; 4xx: ignored; a breaker given a
    /// classifier of its own may judge otherwise). A local refusal below (an open breaker, a
    /// full bulkhead) is reported refused whatever this says.
    fn outcome(
        &self,
        result: Result<&Res, &BoxError>,
        verdict: Verdict,
    ) -> crate::observe::Outcome {
        use crate::observe::Outcome;
        match result {
            Err(e) => crate::classify::error_origin(e),
            Ok(_) => None,
        }
        .unwrap_or(if verdict.is_failure() {
            Outcome::Failure
        } else {
            Outcome::Success
        })
    }

    /// Whether `result` is the dependency's answer to the deadline it was
    /// sent (an HTTP `504`, a gRPC `DEADLINE_EXCEEDED` or `CANCELLED`): a
    /// failure the retry layer gives up on for the request's deadline
    /// ([`GiveUpReason::Deadline`](crate::observe::GiveUpReason::Deadline))
    /// when it came back with 20 ms or less of that deadline left, not as
    /// not retryable. In a client stack, one that came back with 20 ms or
    /// less left of the attempt's own limit (the deadline that attempt
    /// sent) is that attempt's timeout: judged and retried as one (see
    /// [`RetryBudget`](super::RetryBudget) on timeouts that are common; in
    /// a chain A → B → C, B's `504` at the time A's attempt gave it).
    /// Default: `false`; the protocol policies say it as
    /// their classifiers do
    /// ([`Classify::is_deadline_answer`](crate::classify::Classify::is_deadline_answer)).
    fn is_deadline_answer(&self, result: Result<&Res, &BoxError>) -> bool {
        let _ = result;
        false
    }

    /// Whether `result`, a failure to be retried, is the dependency saying
    /// it is busy: at its capacity or its quota, where a retry takes
    /// another request's place rather than saving one. Its retry draws on
    /// the budget's fraction of requests and floor only, not its share of
    /// succeeded requests (see
    /// [`RetryBudget::DEFAULT_SUCCESS_RATIO`](super::RetryBudget::DEFAULT_SUCCESS_RATIO)).
    /// An answer that asked for a wait (`Verdict::Retry { after: Some(_) }`)
    /// is busy whatever this says. Default: nothing else; the protocol
    /// policies add an HTTP `429` and a gRPC `RESOURCE_EXHAUSTED`. A bare
    /// `503` or `UNAVAILABLE` is not busy to them: one instance of several
    /// down says so too, where a retry to another saves the request (the
    /// retry layer takes it for busy once 10 such answers come with no
    /// request succeeding since: then the dependency serves nothing).
    fn is_busy_answer(&self, result: Result<&Res, &BoxError>) -> bool {
        let _ = result;
        false
    }

    /// Whether `req` may be retried at all (for example, only idempotent HTTP
    /// methods). Asked once, before the first attempt. Default: yes.
    fn may_retry(&self, req: &Req) -> bool {
        let _ = req;
        true
    }

    /// Whether an attempt of `req` that timed out (an
    /// [`AttemptTimeout`](crate::error::AttemptTimeout) below) would be
    /// retried. Asked as each attempt is made: when it would not, an
    /// [`AttemptTimeoutLayer`](crate::deadline::AttemptTimeoutLayer) below
    /// does not cut the attempt, which runs on to the request's deadline
    /// (see the [deadline module](crate::deadline)). Default: yes (the
    /// verdict then decides). The gRPC policy says yes only when
    /// `DEADLINE_EXCEEDED` is among its retried codes.
    fn may_retry_timeout(&self, req: &Req) -> bool {
        let _ = req;
        true
    }

    /// Whether a copy of `req` may be sent while it is still in flight (a
    /// hedge; see [`hedge`](crate::hedge)). A hedge runs beside an attempt
    /// that may be executing, so it is safe only for idempotent requests.
    /// Default: [`may_retry`](Self::may_retry). The HTTP policy hedges
    /// idempotent methods only (not a request an `Idempotency-Key` makes
    /// safe to retry: a server keeping the key refuses a copy while the
    /// original runs); the gRPC policy, only the methods opted in with
    /// [`hedge_method`](super::grpc::GrpcRetry::hedge_method).
    fn may_hedge(&self, req: &Req) -> bool {
        self.may_retry(req)
    }

    /// Whether `req` itself says it arrived as a retry from upstream (the
    /// "retry at one layer" guard; see [`inbound_attempt`](super::inbound_attempt)).
    /// Default: no.
    fn arrived_as_retry(&self, req: &Req) -> bool {
        let _ = req;
        false
    }

    /// Stamps the 1-based attempt number on an outbound request, just before
    /// it is sent (the HTTP and gRPC policies set the
    /// [`ATTEMPT_HEADER`](super::ATTEMPT_HEADER) on retries, and take a
    /// copied one off a first attempt). Default: nothing.
    fn on_attempt(&self, req: &mut Req, attempt: u32) {
        let _ = (req, attempt);
    }
}

/// The default policy: every error is retried, except seawall's
/// [`DeadlineExceeded`](crate::error::DeadlineExceeded) (no budget left),
/// [`RetryBudgetExhausted`](crate::error::RetryBudgetExhausted) (raised by
/// code of yours whose own budget is spent; a retry layer that gives up
/// answers with its last outcome, so do not stack two of them), a
/// [`RateLimited`](crate::error::RateLimited) without a `retry_after`
/// (waiting would not help: a cost above the burst) and
/// [`CircuitOpen`](crate::error::CircuitOpen) (see [`classify_error`]). An
/// [`AttemptTimeout`](crate::error::AttemptTimeout) is retried. A seawall
/// rejection's `retry_after` (rate limited, overloaded, …) becomes the server
/// hint. Every `Ok` response is a success.
///
/// Requests must be `Clone`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryErrors;

impl<Req, Res> RetryPolicy<Req, Res> for RetryErrors
where
    Req: Clone,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) => classify_error(e),
        }
    }

    #[inline]
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// The default classification of an error, shared by every shipped policy:
/// never retry [`DeadlineExceeded`](crate::error::DeadlineExceeded),
/// [`RetryBudgetExhausted`](crate::error::RetryBudgetExhausted),
/// [`CircuitOpen`](crate::error::CircuitOpen) or a
/// [`RateLimited`](crate::error::RateLimited) without a `retry_after`; retry anything else, taking a
/// seawall rejection's `retry_after` as the hint.
///
/// A circuit breaker's rejection is not retried: the breaker already speaks for
/// the dependency, and a request that waits out the open time only comes back,
/// late and with little budget left, at the moment the breaker lets its few
/// probes through, together with every other request that waited. Such stale
/// probes get shed or time out, and the breaker opens again. To retry it
/// anyway, use [`policy_fn`].
///
/// ```
/// use std::time::Duration;
/// use seawall::error::{CircuitOpen, DeadlineExceeded, AttemptTimeout};
/// use seawall::retry::{classify_error, Verdict};
/// use seawall::BoxError;
///
/// let e: BoxError = DeadlineExceeded::new("api").into();
/// assert_eq!(classify_error(&e), Verdict::Fail);
/// let e: BoxError = AttemptTimeout::new("api").into();
/// assert_eq!(classify_error(&e), Verdict::RETRY);
/// let e: BoxError = CircuitOpen::new("db", Some(Duration::from_secs(5))).into();
/// assert_eq!(classify_error(&e), Verdict::Fail);
/// ```
pub fn classify_error(err: &BoxError) -> Verdict {
    match rejection(&**err) {
        Some(r) => match r.kind() {
            RejectionKind::DeadlineExceeded
            | RejectionKind::RetryBudgetExhausted
            | RejectionKind::CircuitOpen => Verdict::Fail,
            RejectionKind::RateLimited if r.retry_after().is_none() => Verdict::Fail,
            _ => Verdict::Retry {
                after: r.retry_after(),
            },
        },
        None => Verdict::RETRY,
    }
}

/// A policy made from a classifying closure, for `Clone` requests; see
/// [`policy_fn`].
#[derive(Clone, Copy)]
pub struct PolicyFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for PolicyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyFn").finish_non_exhaustive()
    }
}

/// A policy for `Clone` requests from a closure classifying each outcome.
///
/// ```
/// use seawall::retry::{policy_fn, RetryLayer, Verdict};
/// use seawall::BoxError;
///
/// // Retry odd responses, never errors.
/// let policy = policy_fn(|r: Result<&u32, &BoxError>| match r {
///     Ok(n) if n % 2 == 1 => Verdict::RETRY,
///     Ok(_) => Verdict::Success,
///     Err(_) => Verdict::Fail,
/// });
/// let layer = RetryLayer::builder().policy(policy).build().unwrap();
/// # let _ = layer;
/// ```
pub fn policy_fn<F>(f: F) -> PolicyFn<F> {
    PolicyFn { f }
}

impl<Req, Res, F> RetryPolicy<Req, Res> for PolicyFn<F>
where
    Req: Clone,
    F: Fn(Result<&Res, &BoxError>) -> Verdict + Send + Sync + 'static,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Verdict {
        (self.f)(result)
    }

    #[inline]
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{
        AttemptTimeout, BulkheadFull, CircuitOpen, DeadlineExceeded, Overloaded, RateLimited,
        RetryBudgetExhausted,
    };

    #[test]
    fn errors_are_retried_except_where_no_retry_can_help() {
        let hint = Some(Duration::from_millis(250));
        let cases: [(BoxError, Verdict); 10] = [
            // No time left, no budget left, an open breaker: not retried.
            (DeadlineExceeded::new("d").into(), Verdict::Fail),
            (DeadlineExceeded::before_sending("d").into(), Verdict::Fail),
            (RetryBudgetExhausted::new("t").into(), Verdict::Fail),
            (CircuitOpen::new("b", hint).into(), Verdict::Fail),
            // A rate limit that no wait would pass (a cost above the burst).
            (RateLimited::new("r", None).into(), Verdict::Fail),
            // Retried, after the hint when the layer gave one.
            (
                AttemptTimeout::new("a").into(),
                Verdict::Retry { after: None },
            ),
            (
                BulkheadFull::new("k", hint).into(),
                Verdict::Retry { after: hint },
            ),
            (
                Overloaded::new("s", hint).into(),
                Verdict::Retry { after: hint },
            ),
            (
                RateLimited::new("r", hint).into(),
                Verdict::Retry { after: hint },
            ),
            // Not seawall's: a connection error, retried at once.
            (std::io::Error::other("reset").into(), Verdict::RETRY),
        ];
        for (err, verdict) in cases {
            assert_eq!(classify_error(&err), verdict, "{err}");
        }
    }
}
