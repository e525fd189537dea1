//! The client stack's default breaker classifier.

use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::BoxError;
use crate::observe::Outcome;

/// The circuit breaker classifier of the generic [`ClientStack`](super::ClientStack):
/// every `Ok` is a success; an `Err` is a failure of the dependency, except
/// a local refusal ([`Outcome::Refused`]: this process's own full bulkhead
/// below the breaker, a deadline gone before sending, …) and a load
/// shedder's [`Overloaded`](crate::error::Overloaded) ([`Outcome::Overloaded`]).
///
/// The refusal rule does not depend on this classifier: the breaker applies
/// it to every classifier ([`judge`](crate::classify::judge)). It is the same
/// as [`ErrorsAsFailures`](crate::classify::ErrorsAsFailures) and stays for
/// its name.
///
/// **What it cannot know:** a response is a success whatever it holds. An
/// HTTP 500 or a gRPC error status arrives as an `Ok`; the protocol presets
/// ([`ClientStack::http`](super::ClientStack::http),
/// [`ClientStack::grpc`](super::ClientStack::grpc)) read statuses.
///
/// ```
/// use seawall::classify::Classify;
/// use seawall::error::{AttemptTimeout, BulkheadFull};
/// use seawall::observe::Outcome;
/// use seawall::stack::DependencyFailures;
/// use seawall::BoxError;
///
/// let full: BoxError = BulkheadFull::new("payments.bulkhead", None).into();
/// let slow: BoxError = AttemptTimeout::new("payments.attempt").into();
/// assert_eq!(DependencyFailures.classify(Err::<&(), _>(&full)), Outcome::Refused);
/// assert_eq!(DependencyFailures.classify(Err::<&(), _>(&slow)), Outcome::Failure);
/// assert_eq!(DependencyFailures.classify(Ok::<_, &BoxError>(&())), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DependencyFailures;

impl<Res> Classify<Res, BoxError> for DependencyFailures {
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        ErrorsAsFailures.classify(result)
    }
}
