//! Outcome classification: deciding whether a finished call was a success, a
//! failure, or not to be counted at all, shared by the circuit breaker and the
//! client throttle.
//!
//! A classifier answers one of three [`Outcome`]s:
//!
//! - [`Outcome::Success`]: the dependency answered well. The breaker counts a
//!   call (not a failure); the throttle counts a request and an accept.
//! - [`Outcome::Failure`]: the dependency failed. The breaker counts a failed
//!   call; the throttle counts a request but no accept.
//! - [`Outcome::Ignored`]: the call says nothing about the dependency's health
//!   (a rejection by this process's own bulkhead below the breaker, a server
//!   shedding load, a cancellation you do not want to count). It is not
//!   counted: the breaker leaves it out of its window and out of a run of
//!   consecutive failures, and a half-open probe that ends `Ignored` frees its
//!   slot for another probe without counting toward the verdict; the throttle
//!   counts neither a request nor an accept. Events still report the call,
//!   with outcome `"ignored"`.
//!
//! Classification is separate from the layers that use it, so one classifier can
//! serve several layers, and users can plug their own. The default,
//! [`ErrorsAsFailures`], counts every `Err` (including seawall rejections from
//! layers *below*, such as an attempt timeout) as a failure and every `Ok` as a
//! success. With feature `http` the [`http`](crate::http) module adds a status
//! code classifier (5xx and 408 fail, 4xx do not); with feature `tonic` the
//! [`grpc`](crate::grpc) module adds a gRPC status classifier.
//!
//! # Example
//!
//! ```
//! use seawall::classify::{Classify, ErrorsAsFailures};
//! use seawall::observe::Outcome;
//!
//! let ok: Result<&u16, &std::io::Error> = Ok(&200);
//! assert_eq!(ErrorsAsFailures.classify(ok), Outcome::Success);
//!
//! // Any closure works too: here responses above 499 are failures.
//! let by_code = |r: Result<&u16, &std::io::Error>| match r {
//!     Ok(code) if *code < 500 => Outcome::Success,
//!     _ => Outcome::Failure,
//! };
//! assert_eq!(by_code.classify(Ok(&503)), Outcome::Failure);
//!
//! // A 429 (the server shedding load) is neither: not counted.
//! let shedding_ignored = |r: Result<&u16, &std::io::Error>| match r {
//!     Ok(429) => Outcome::Ignored,
//!     Ok(code) if *code < 500 => Outcome::Success,
//!     _ => Outcome::Failure,
//! };
//! assert_eq!(shedding_ignored.classify(Ok(&429)), Outcome::Ignored);
//! ```

pub use crate::observe::Outcome;

/// Decides whether a call's result is a success, a failure, or not to be
/// counted ([`Outcome::Ignored`]).
pub trait Classify<Res, E>: Send + Sync + 'static {
    /// Classifies one result.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

/// The default classifier: `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<Res, E> Classify<Res, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
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
