//! Outcome classification: where a finished call's result came from, and
//! what it says about the dependency.
//!
//! Every result a layer sees is one of five [`Outcome`]s:
//!
//! - [`Outcome::Success`]: the dependency answered well.
//! - [`Outcome::Failure`], a **remote failure**: the dependency is broken (a
//!   5xx but 503, a connection error, an attempt timeout, gRPC `INTERNAL`).
//! - [`Outcome::Overloaded`], a **remote overload**: the dependency answered
//!   "busy" (HTTP 429 or 503, gRPC `RESOURCE_EXHAUSTED` or a server's
//!   `UNAVAILABLE`, with or without a wait; a seawall server's `Overloaded`).
//! - [`Outcome::Refused`], a **local refusal**: this process said no before
//!   the dependency saw the call (its own bulkhead, rate limit, open breaker,
//!   spent retry budget, client throttle, a deadline gone before sending).
//! - [`Outcome::Ignored`]: the caller's own mistake (most 4xx) or a call not
//!   to count.
//!
//! A circuit breaker opens on *broken*, never on *us*, and by default not on
//! *busy* either ([`count_overload`](crate::circuit_breaker::CircuitBreakerBuilder::count_overload)):
//! busy is for the retry budget, the client throttle and the adaptive limit.
//!
//! # The rule no classifier can break
//!
//! A local refusal is recognised by the model itself, before any classifier
//! runs ([`judge`]): an error holding a seawall rejection whose
//! [`is_local`](crate::error::Rejection::is_local) is true is
//! [`Outcome::Refused`], whatever the classifier would say. So a classifier a
//! user writes — even `|_| Outcome::Failure` — can never open a breaker on
//! this process's own full bulkhead.
//!
//! # Classifiers
//!
//! [`Classify`] is implemented by closures, by [`ErrorsAsFailures`] (the
//! generic default: `Ok` is a success, an error a failure, a shedder's
//! `Overloaded` an overload), and with the protocol features by
//! [`HttpStatusClassifier`](crate::http::HttpStatusClassifier) (5xx but 503 fail,
//! 429 and 503 busy, 4xx ignored) and
//! [`GrpcStatusClassifier`](crate::grpc::GrpcStatusClassifier). The protocol
//! classifiers compose: take one and change a single rule
//! (`.overload_code(502)`, `.ignored_code(Code::NotFound)`).
//!
//! # Example
//!
//! ```
//! use seawall::classify::{judge, Classify, ErrorsAsFailures};
//! use seawall::error::{AttemptTimeout, BulkheadFull};
//! use seawall::observe::Outcome;
//! use seawall::BoxError;
//!
//! let ok: Result<&u16, &BoxError> = Ok(&200);
//! assert_eq!(ErrorsAsFailures.classify(ok), Outcome::Success);
//!
//! // A classifier that calls everything a failure…
//! let everything_fails = |_: Result<&u16, &BoxError>| Outcome::Failure;
//! let slow: BoxError = AttemptTimeout::new("db.attempt").into();
//! assert_eq!(judge(&everything_fails, Err::<&u16, _>(&slow)), Outcome::Failure);
//! // …still cannot blame the dependency for this process's own full bulkhead.
//! let full: BoxError = BulkheadFull::new("db.bulkhead", None).into();
//! assert_eq!(judge(&everything_fails, Err::<&u16, _>(&full)), Outcome::Refused);
//! ```

use std::any::Any;

use crate::error::{BoxError, RejectionKind};

use crate::observe::Outcome;

/// Decides whether a call's result is a success, a failure, or not to be
/// counted ([`Outcome::Ignored`]).
pub trait Classify<Res, E>: Send + Sync + 'static {
    /// Classifies one result.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;

    /// Whether `result` is the dependency's answer to the deadline it was
    /// sent: an HTTP `504` ([`HttpStatusClassifier`](crate::http::HttpStatusClassifier)),
    /// a gRPC `DEADLINE_EXCEEDED` or `CANCELLED` (a tonic server's answer
    /// past its `grpc-timeout`; [`GrpcStatusClassifier`](crate::grpc::GrpcStatusClassifier)).
    /// A circuit breaker does not count such a failure when it comes back
    /// in the last 20 ms of a deadline set above it: the request's own
    /// deadline ended the call, not the dependency's health (see the
    /// [`circuit_breaker`](crate::circuit_breaker) module). The default,
    /// for closures and the generic classifiers, is `false`: only a
    /// seawall [`DeadlineExceeded`](crate::error::DeadlineExceeded) is
    /// recognised then, which the breaker checks by itself.
    #[inline]
    fn is_deadline_answer(&self, result: Result<&Res, &E>) -> bool {
        let _ = result;
        false
    }

    /// Whether `result`, a "busy" answer ([`Outcome::Overloaded`]), paces
    /// its caller: a quota's refusal (HTTP `429`, gRPC
    /// `RESOURCE_EXHAUSTED`) or an answer that names a wait (`Retry-After`,
    /// `retry-after-ms`, `grpc-retry-pushback-ms`), as a server that sheds
    /// or whose own breaker is open answers. A circuit breaker opens on a
    /// run of busy answers with no success between (a dependency that
    /// serves nothing, down behind its proxy) only if none of them paces
    /// its caller: such a server is up, and says when to come back (see
    /// the [`circuit_breaker`](crate::circuit_breaker) module). The
    /// default is `false`; a seawall rejection with a `retry_after` in
    /// the error is recognised by the breaker by itself.
    #[inline]
    fn is_paced_answer(&self, result: Result<&Res, &E>) -> bool {
        let _ = result;
        false
    }
}

/// The generic classifier: `Ok` is a success; an `Err` is a failure, except
/// a seawall [`Overloaded`](crate::error::Overloaded) from a load shedder (an
/// overload) and a local refusal (refused; see [`judge`]).
///
/// It cannot know more: an `Ok` holding an HTTP 500 or a gRPC error status is
/// a success to it. For HTTP and gRPC use the protocol classifiers (the
/// protocol presets of the stacks do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<Res, E: 'static> Classify<Res, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => error_origin(e).unwrap_or(Outcome::Failure),
        }
    }
}

/// The origin the model gives an error by itself: [`Outcome::Refused`] for a
/// local refusal, [`Outcome::Overloaded`] for a load shedder's
/// [`Overloaded`](crate::error::Overloaded), `None` for anything else (the
/// classifier decides).
///
/// The error is recognised when it is a [`BoxError`] holding a seawall
/// rejection (anywhere in its `source()` chain) or a seawall marker type
/// itself. Every seawall layer returns `BoxError`, so a seawall layer below
/// the breaker is always recognised; an error type of your own that wraps a
/// rejection (an enum, `anyhow::Error`) is not: convert it into `BoxError`
/// below the breaker (`tower::ServiceBuilder::map_err(Into::into)`).
///
/// Whether a rejection is local is decided by its marker, not by who sees
/// it: a stack that wraps another in the same process (an in-process
/// "dependency" with its own breaker or bulkhead) sees that one's
/// refusals as local too.
pub fn error_origin<E: 'static>(err: &E) -> Option<Outcome> {
    let view = crate::error::rejection_in(err)?;
    if view.is_local() {
        Some(Outcome::Refused)
    } else if view.kind() == RejectionKind::Overloaded {
        Some(Outcome::Overloaded)
    } else {
        None
    }
}

/// Whether `err` is a local refusal (see [`Rejection::is_local`](crate::error::Rejection::is_local)).
#[inline]
pub fn is_local_refusal<E: 'static>(err: &E) -> bool {
    error_origin(err) == Some(Outcome::Refused)
}

/// Classifies a result under the model's rule: a local refusal is
/// [`Outcome::Refused`] and a seawall [`Overloaded`](crate::error::Overloaded)
/// error (a shedder below said "busy") is [`Outcome::Overloaded`], whatever
/// `classifier` says; everything else is the classifier's verdict. Every
/// seawall layer that counts outcomes (the circuit breaker, the client
/// throttle) classifies through this, so a classifier that calls every
/// `Err` a failure cannot open a breaker on busy or on this process.
/// (Responses are the classifier's: a 503 inside an `Ok` is judged by it.)
#[inline]
pub fn judge<C, Res, E>(classifier: &C, result: Result<&Res, &E>) -> Outcome
where
    C: Classify<Res, E> + ?Sized,
    E: 'static,
{
    match result {
        Err(e) => match error_origin(e) {
            Some(origin) => origin,
            None => classifier.classify(result),
        },
        r => classifier.classify(r),
    }
}

/// How a classifier of `T` responses judges a failed body: a function made
/// for one classifier type `C` (passed as `&dyn Any`), so that a response
/// body can carry it without naming `C`.
pub(crate) type JudgeFn = fn(&(dyn Any + Send + Sync), &BoxError) -> Outcome;

/// The [`JudgeFn`] of classifier `C` for responses `T`.
#[cfg(all(feature = "http", feature = "deadline"))]
pub(crate) fn judge_error<C, T>(classifier: &(dyn Any + Send + Sync), error: &BoxError) -> Outcome
where
    C: Classify<T, BoxError>,
{
    match classifier.downcast_ref::<C>() {
        Some(c) => judge(c, Err::<&T, _>(error)),
        None => error_origin(error).unwrap_or(Outcome::Failure),
    }
}

impl<Res, E, F> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> Outcome + Send + Sync + 'static,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        self(result)
    }
}

/// Outcomes packed in two bits, for the protocol classifiers' rule tables.
#[cfg(feature = "http")]
pub(crate) mod packed {
    use super::Outcome;

    pub(crate) const SUCCESS: u64 = 0;
    pub(crate) const FAILURE: u64 = 1;
    pub(crate) const OVERLOADED: u64 = 2;
    pub(crate) const IGNORED: u64 = 3;

    /// The outcome of the two low bits of `bits`.
    #[inline]
    pub(crate) const fn unpack(bits: u64) -> Outcome {
        match bits & 3 {
            SUCCESS => Outcome::Success,
            FAILURE => Outcome::Failure,
            OVERLOADED => Outcome::Overloaded,
            _ => Outcome::Ignored,
        }
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

    fn boxed(e: impl Into<BoxError>) -> BoxError {
        e.into()
    }

    /// An error of the caller's own that keeps a rejection as its source.
    #[derive(Debug)]
    struct Wrapped(BoxError);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn the_model_gives_each_rejection_its_origin() {
        let hint = Some(Duration::from_millis(100));
        let cases: [(BoxError, Option<Outcome>); 10] = [
            (boxed(CircuitOpen::new("b", hint)), Some(Outcome::Refused)),
            (boxed(BulkheadFull::new("k", hint)), Some(Outcome::Refused)),
            (boxed(RateLimited::new("r", hint)), Some(Outcome::Refused)),
            (
                boxed(RetryBudgetExhausted::new("t")),
                Some(Outcome::Refused),
            ),
            (
                boxed(DeadlineExceeded::before_sending("d")),
                Some(Outcome::Refused),
            ),
            (
                boxed(Overloaded::local("throttle", None)),
                Some(Outcome::Refused),
            ),
            // A shedder's answer is the dependency saying "busy".
            (
                boxed(Overloaded::new("shed", hint)),
                Some(Outcome::Overloaded),
            ),
            // Timeouts and everything else: the classifier decides.
            (boxed(DeadlineExceeded::new("d")), None),
            (boxed(AttemptTimeout::new("a")), None),
            (boxed(std::io::Error::other("reset")), None),
        ];
        for (err, origin) in cases {
            assert_eq!(error_origin(&err), origin, "{err}");
            assert_eq!(
                is_local_refusal(&err),
                origin == Some(Outcome::Refused),
                "{err}"
            );
        }
    }

    #[test]
    fn a_rejection_is_found_through_the_source_chain_and_as_a_bare_marker() {
        let inside: BoxError = Wrapped(boxed(BulkheadFull::new("k", None))).into();
        assert_eq!(error_origin(&inside), Some(Outcome::Refused));
        assert_eq!(
            error_origin(&BulkheadFull::new("k", None)),
            Some(Outcome::Refused)
        );
        assert_eq!(
            error_origin(&Overloaded::new("shed", None)),
            Some(Outcome::Overloaded)
        );
        // An error type of the caller's own is not looked into (documented).
        assert_eq!(
            error_origin(&Wrapped(boxed(BulkheadFull::new("k", None)))),
            None
        );
    }

    #[test]
    fn judge_puts_local_refusals_before_any_classifier() {
        let always_failure = |_: Result<&u32, &BoxError>| Outcome::Failure;
        let always_success = |_: Result<&u32, &BoxError>| Outcome::Success;
        let full = boxed(BulkheadFull::new("k", None));
        let shed = boxed(Overloaded::new("shed", None));
        let broken = boxed(std::io::Error::other("reset"));
        assert_eq!(
            judge(&always_failure, Err::<&u32, _>(&full)),
            Outcome::Refused
        );
        assert_eq!(
            judge(&always_success, Err::<&u32, _>(&full)),
            Outcome::Refused
        );
        // A shedder's "busy" too.
        assert_eq!(
            judge(&always_failure, Err::<&u32, _>(&shed)),
            Outcome::Overloaded
        );
        assert_eq!(
            judge(&always_success, Err::<&u32, _>(&shed)),
            Outcome::Overloaded
        );
        // Anything else is the classifier's call.
        assert_eq!(
            judge(&always_success, Err::<&u32, _>(&broken)),
            Outcome::Success
        );
        assert_eq!(
            judge(&always_failure, Ok::<_, &BoxError>(&7)),
            Outcome::Failure
        );
    }

    #[test]
    fn errors_as_failures() {
        let c = ErrorsAsFailures;
        let judge_err = |e: BoxError| judge(&c, Err::<&u32, _>(&e));
        assert_eq!(judge(&c, Ok::<_, &BoxError>(&1u32)), Outcome::Success);
        assert_eq!(
            judge_err(boxed(std::io::Error::other("x"))),
            Outcome::Failure
        );
        assert_eq!(judge_err(boxed(AttemptTimeout::new("a"))), Outcome::Failure);
        assert_eq!(
            judge_err(boxed(DeadlineExceeded::new("d"))),
            Outcome::Failure
        );
        assert_eq!(
            judge_err(boxed(Overloaded::new("shed", None))),
            Outcome::Overloaded
        );
        assert_eq!(
            judge_err(boxed(CircuitOpen::new("b", None))),
            Outcome::Refused
        );
    }

    #[cfg(all(feature = "http", feature = "deadline"))]
    #[test]
    fn a_judge_fn_classifies_with_its_own_classifier_or_falls_back_to_the_model() {
        let ignore_all = |_: Result<&u32, &BoxError>| Outcome::Ignored;
        fn judge_fn_of<C: Classify<u32, BoxError>>(_: &C) -> JudgeFn {
            judge_error::<C, u32>
        }
        let f = judge_fn_of(&ignore_all);
        let broken = boxed(std::io::Error::other("reset"));
        let full = boxed(BulkheadFull::new("k", None));
        assert_eq!(f(&ignore_all, &broken), Outcome::Ignored);
        assert_eq!(f(&ignore_all, &full), Outcome::Refused);
        // Handed another classifier than its own: the model, then Failure.
        assert_eq!(f(&ErrorsAsFailures, &broken), Outcome::Failure);
        assert_eq!(
            f(&ErrorsAsFailures, &boxed(Overloaded::new("s", None))),
            Outcome::Overloaded
        );
    }
}
