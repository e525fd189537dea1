//! Outcome classification: deciding whether a finished call was a success or a
//! failure, shared by the circuit breaker, the adaptive limit and the client
//! throttle.
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
//! ```

pub use crate::observe::Outcome;

/// Decides whether a call's result is a success or a failure.
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
