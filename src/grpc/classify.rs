//! gRPC response classification by status code.

use std::any::Any;
use std::error::Error;
use std::fmt;

use tonic::{Code, Status};

use crate::classify::{Classify, Outcome};
use crate::error::BoxError;

/// Every gRPC code, in numeric order.
const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// Classifies gRPC calls by status code, for the circuit breaker, the adaptive
/// limit and the client throttle.
///
/// Failures by default: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`,
/// `UNKNOWN`, `RESOURCE_EXHAUSTED`. Every other code (`OK`, `NOT_FOUND`,
/// `INVALID_ARGUMENT`, …) is a success: it says nothing about the health of the
/// service. Codes can be added to or removed from the failure set.
///
/// Where the code is read from:
///
/// - an `Ok` response with a `grpc-status` header (a *trailers-only* response,
///   as servers send for errors raised before any message, and as
///   [`GrpcRejectionLayer`](super::GrpcRejectionLayer) answers): that code;
/// - an `Ok` response with an HTTP status other than 200 and no `grpc-status`
///   (a proxy answered): the code the gRPC spec maps it to (429, 502, 503,
///   504 → `UNAVAILABLE`; 400 → `INTERNAL`; 401 → `UNAUTHENTICATED`;
///   403 → `PERMISSION_DENIED`; 404 → `UNIMPLEMENTED`; others → `UNKNOWN`);
/// - an `Err` that is a [`tonic::Status`], or a [`BoxError`] holding one in
///   its `source()` chain: that status's code;
/// - any other `Err` (transport errors, seawall rejections): a failure.
///
/// **Limit:** a normal unary or streaming response sends its `grpc-status` in
/// the *trailers*, after the body. Through [`Classify`] this classifier sees
/// the response head only, so such a response counts as a success when it
/// arrives, whatever code its trailers carry later. Errors a server raises
/// before sending a message come trailers-only, and are classified; code that
/// reads the trailers can use [`classify_trailers`](Self::classify_trailers).
///
/// ```
/// use seawall::classify::{Classify, Outcome};
/// use seawall::grpc::GrpcStatusClassifier;
/// use tonic::{Code, Status};
///
/// let classifier = GrpcStatusClassifier::new().failure_code(Code::Aborted);
/// let trailers_only = http::Response::builder()
///     .header("grpc-status", "14") // UNAVAILABLE
///     .body(())
///     .unwrap();
/// assert_eq!(Classify::<_, Status>::classify(&classifier, Ok(&trailers_only)), Outcome::Failure);
///
/// let err = Status::not_found("no such user");
/// assert_eq!(Classify::<http::Response<()>, _>::classify(&classifier, Err(&err)), Outcome::Success);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GrpcStatusClassifier {
    /// One bit per code (0..=16).
    failures: u32,
}

impl GrpcStatusClassifier {
    /// The default classifier: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`,
    /// `UNKNOWN` and `RESOURCE_EXHAUSTED` are failures.
    pub const fn new() -> Self {
        GrpcStatusClassifier { failures: 0 }
            .failure_code(Code::Unavailable)
            .failure_code(Code::DeadlineExceeded)
            .failure_code(Code::Internal)
            .failure_code(Code::Unknown)
            .failure_code(Code::ResourceExhausted)
    }

    /// Also counts `code` as a failure (for example `ABORTED`).
    pub const fn failure_code(self, code: Code) -> Self {
        GrpcStatusClassifier {
            failures: self.failures | bit(code),
        }
    }

    /// Counts `code` as a success (for example `RESOURCE_EXHAUSTED`, when a
    /// dependency's quota errors should not open a breaker).
    pub const fn success_code(self, code: Code) -> Self {
        GrpcStatusClassifier {
            failures: self.failures & !bit(code),
        }
    }

    /// Whether `code` is classified as a failure.
    #[inline]
    pub const fn is_failure(&self, code: Code) -> bool {
        self.failures & bit(code) != 0
    }

    /// The outcome of a call that ended with `code`.
    #[inline]
    pub const fn outcome(&self, code: Code) -> Outcome {
        if self.is_failure(code) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    /// The outcome read from a call's trailers (or any header map carrying
    /// `grpc-status`), for code that sees the trailers of a normal response;
    /// `None` when there is no `grpc-status`. An unparseable code reads as
    /// `UNKNOWN`.
    ///
    /// ```
    /// use seawall::classify::Outcome;
    /// use seawall::grpc::GrpcStatusClassifier;
    ///
    /// let mut trailers = http::HeaderMap::new();
    /// trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
    /// assert_eq!(GrpcStatusClassifier::new().classify_trailers(&trailers), Some(Outcome::Failure));
    /// assert_eq!(GrpcStatusClassifier::new().classify_trailers(&http::HeaderMap::new()), None);
    /// ```
    pub fn classify_trailers(&self, trailers: &http::HeaderMap) -> Option<Outcome> {
        trailers
            .get(Status::GRPC_STATUS)
            .map(|v| self.outcome(Code::from_bytes(v.as_bytes())))
    }
}

#[inline]
const fn bit(code: Code) -> u32 {
    1 << ((code as i32 as u32) & 31)
}

/// The code of a response head, if it carries one.
fn response_code<B>(res: &http::Response<B>) -> Option<Code> {
    if let Some(value) = res.headers().get(Status::GRPC_STATUS) {
        return Some(Code::from_bytes(value.as_bytes()));
    }
    let code = match res.status().as_u16() {
        200 => return None,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Some(code)
}

/// The code of an error, if it is or holds a `tonic::Status`.
fn error_code<E: 'static>(err: &E) -> Option<Code> {
    let any = err as &dyn Any;
    if let Some(status) = any.downcast_ref::<Status>() {
        return Some(status.code());
    }
    let mut cur: Option<&(dyn Error + 'static)> = match any.downcast_ref::<BoxError>() {
        Some(boxed) => Some(&**boxed),
        None => None,
    };
    while let Some(e) = cur {
        if let Some(status) = e.downcast_ref::<Status>() {
            return Some(status.code());
        }
        cur = e.source();
    }
    None
}

impl Default for GrpcStatusClassifier {
    fn default() -> Self {
        GrpcStatusClassifier::new()
    }
}

impl fmt::Debug for GrpcStatusClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Codes<'a>(&'a GrpcStatusClassifier);
        impl fmt::Debug for Codes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(ALL_CODES.iter().filter(|c| self.0.is_failure(**c)))
                    .finish()
            }
        }
        f.debug_struct("GrpcStatusClassifier")
            .field("failure_codes", &Codes(self))
            .finish()
    }
}

impl<B, E: 'static> Classify<http::Response<B>, E> for GrpcStatusClassifier {
    #[inline]
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => match response_code(res) {
                Some(code) => self.outcome(code),
                None => Outcome::Success,
            },
            Err(err) => match error_code(err) {
                Some(code) => self.outcome(code),
                None => Outcome::Failure,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_failure_set() {
        let c = GrpcStatusClassifier::new();
        let failing: Vec<Code> = ALL_CODES
            .iter()
            .copied()
            .filter(|&k| c.is_failure(k))
            .collect();
        assert_eq!(
            failing,
            vec![
                Code::Unknown,
                Code::DeadlineExceeded,
                Code::ResourceExhausted,
                Code::Internal,
                Code::Unavailable
            ]
        );
    }
}
