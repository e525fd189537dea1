//! The client stack's default breaker classifier.

use crate::classify::Classify;
use crate::error::{BoxError, RejectionKind, rejection};
use crate::observe::Outcome;

/// The circuit breaker classifier of the [`ClientStack`](super::ClientStack):
/// every `Ok` is a success, every `Err` a failure of the dependency **except**
/// a [`BulkheadFull`](crate::error::BulkheadFull) rejection, which is
/// [`Outcome::Ignored`]: not counted at all.
///
/// In the client stack the bulkhead sits *below* the breaker. A full
/// bulkhead is this process running out of its own slots and says nothing
/// about the dependency: counted as a failure, a burst of local traffic would
/// open the breaker on a healthy dependency; counted as a success, it would
/// dilute the failure rate of a dependency that is failing. So the breaker
/// leaves it out of its window. An
/// [`AttemptTimeout`](crate::error::AttemptTimeout) (the dependency was too
/// slow) is a failure.
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
/// assert_eq!(DependencyFailures.classify(Err::<&(), _>(&full)), Outcome::Ignored);
/// assert_eq!(DependencyFailures.classify(Err::<&(), _>(&slow)), Outcome::Failure);
/// assert_eq!(DependencyFailures.classify(Ok::<_, &BoxError>(&())), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DependencyFailures;

impl<Res> Classify<Res, BoxError> for DependencyFailures {
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => match rejection(&**e) {
                Some(r) if r.kind() == RejectionKind::BulkheadFull => Outcome::Ignored,
                _ => Outcome::Failure,
            },
        }
    }
}
