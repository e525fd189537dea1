//! gRPC response classification by status code.

use std::fmt;

use tonic::{Code, Status};

use crate::classify::{Classify, error_origin};
use crate::observe::Outcome;

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

/// Classifies gRPC calls by status code into the [`Outcome`] model, for the
/// circuit breaker and the client throttle.
///
/// The default rules:
///
/// | code | outcome |
/// |---|---|
/// | `OK` | [`Success`](Outcome::Success) |
/// | `RESOURCE_EXHAUSTED`; `UNAVAILABLE` a server answered (in a response), with or without `grpc-retry-pushback-ms`; `UNAVAILABLE` with pushback | [`Overloaded`](Outcome::Overloaded): the server said "busy" |
/// | `UNAVAILABLE` no server answered (an `Err`: a connection refused or lost), `DEADLINE_EXCEEDED`, `CANCELLED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` | [`Failure`](Outcome::Failure) |
/// | every other code (`NOT_FOUND`, `INVALID_ARGUMENT`, …) | [`Ignored`](Outcome::Ignored): the caller's own affair |
///
/// A server's `UNAVAILABLE` is "busy" with or without pushback: gRPC
/// servers that are not seawall shed with a bare one (Envoy's overflow, a
/// hand-written cap). Counted as failures, those answers opened the gRPC
/// preset's breaker: in an outside trial of a dependency of 8 slots
/// answering `UNAVAILABLE` at once when full, at 4 to 10 times its
/// capacity, it opened about 7 times a second and 28 % of the dependency's
/// capacity was served, where a plain tonic client got all of it. A server
/// answers it fast, broken or busy: it fails fast without the breaker. A
/// connection that could not be made is an `Err`, and counts (turn the
/// server's off with [`answered_unavailable_is_overload(false)`](Self::answered_unavailable_is_overload)).
///
/// `CANCELLED` is a failure because a server sends it: a tonic server
/// answers a call whose `grpc-timeout` passed with `CANCELLED` ("Timeout
/// expired"), where others send `DEADLINE_EXCEEDED`; this client's own
/// cancellations (a dropped call, its own timers) never come back as a
/// status. Against a plain tonic dependency that got slow, a breaker blind
/// to it saw only the timeouts its own timer won.
///
/// Each rule can be changed alone: [`failure_code`](Self::failure_code),
/// [`overload_code`](Self::overload_code), [`ignored_code`](Self::ignored_code),
/// [`success_code`](Self::success_code).
///
/// Where the code is read from:
///
/// - an `Ok` response with a `grpc-status` header (a *trailers-only* response,
///   as servers send for errors raised before any message, and as
///   [`GrpcRejectionLayer`](super::GrpcRejectionLayer) answers): that code;
/// - an `Ok` response with an HTTP status other than 200 and no `grpc-status`
///   (a proxy answered): the code the gRPC spec maps it to (429, 502, 503,
///   504 → `UNAVAILABLE`; 400 → `INTERNAL`; 401 → `UNAUTHENTICATED`;
///   403 → `PERMISSION_DENIED`; 404 → `UNIMPLEMENTED`; others → `UNKNOWN`),
///   except that a proxy's 429 and 503 are an overload, as they are for HTTP;
/// - an `Err` that is a [`tonic::Status`], or a [`BoxError`](crate::BoxError) holding one in
///   its `source()` chain: that status's code (and its pushback metadata);
/// - any other `Err`: a failure, except seawall's own rejections (a local
///   refusal is [`Refused`](Outcome::Refused), a shedder's `Overloaded` is
///   [`Overloaded`](Outcome::Overloaded)).
///
/// A status sent in the *trailers* of a normal response is not in the head.
/// The gRPC client preset ([`ClientStack::grpc`](crate::stack::ClientStack::grpc))
/// reads the first frame of every response below its breaker, so a failure
/// sent as headers and then trailers with no message reaches this
/// classifier as a trailers-only one. A status in trailers *after* a message
/// (a stream) is not in the head: the presets' layers that hold a call until
/// its body ends (the breaker, the bulkhead, the throttle) judge it there,
/// as a server's answer (a bare `UNAVAILABLE` is busy there too); other
/// code that reads trailers can use
/// [`classify_trailers`](Self::classify_trailers).
///
/// ```
/// use seawall::classify::Classify;
/// use seawall::observe::Outcome;
/// use seawall::grpc::GrpcStatusClassifier;
/// use tonic::{Code, Status};
///
/// let classifier = GrpcStatusClassifier::new().failure_code(Code::Aborted);
/// let trailers_only = http::Response::builder()
///     .header("grpc-status", "13") // INTERNAL
///     .body(())
///     .unwrap();
/// assert_eq!(Classify::<_, Status>::classify(&classifier, Ok(&trailers_only)), Outcome::Failure);
///
/// // UNAVAILABLE: busy when a server answered it, a failure when none did.
/// let answered = http::Response::builder()
///     .header("grpc-status", "14")
///     .body(())
///     .unwrap();
/// assert_eq!(Classify::<_, Status>::classify(&classifier, Ok(&answered)), Outcome::Overloaded);
/// let refused = Status::unavailable("connection refused");
/// assert_eq!(Classify::<http::Response<()>, _>::classify(&classifier, Err(&refused)), Outcome::Failure);
///
/// let busy = http::Response::builder()
///     .header("grpc-status", "14")
///     .header("grpc-retry-pushback-ms", "250")
///     .body(())
///     .unwrap();
/// assert_eq!(Classify::<_, Status>::classify(&classifier, Ok(&busy)), Outcome::Overloaded);
///
/// let err = Status::not_found("no such user");
/// assert_eq!(Classify::<http::Response<()>, _>::classify(&classifier, Err(&err)), Outcome::Ignored);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GrpcStatusClassifier {
    /// Two bits per code (0..=16): 0 success, 1 failure, 2 overloaded, 3 ignored.
    table: u64,
    /// `UNAVAILABLE` with a pushback header is an overload.
    pushback_is_overload: bool,
    /// `UNAVAILABLE` answered by the server (a `grpc-status` in a
    /// response), with or without pushback, is an overload.
    answered_unavailable_is_overload: bool,
}

use crate::classify::packed::{FAILURE, IGNORED, OVERLOADED, SUCCESS, unpack};

impl GrpcStatusClassifier {
    /// The default rules (see the type's docs).
    pub const fn new() -> Self {
        let mut c = GrpcStatusClassifier {
            table: 0,
            pushback_is_overload: true,
            answered_unavailable_is_overload: true,
        };
        let mut i = 1;
        while i < ALL_CODES.len() {
            c = c.with(ALL_CODES[i], IGNORED);
            i += 1;
        }
        c.with(Code::Unavailable, FAILURE)
            .with(Code::DeadlineExceeded, FAILURE)
            .with(Code::Cancelled, FAILURE)
            .with(Code::Internal, FAILURE)
            .with(Code::Unknown, FAILURE)
            .with(Code::DataLoss, FAILURE)
            .with(Code::ResourceExhausted, OVERLOADED)
    }

    /// Counts `code` as a remote failure (for example `ABORTED`).
    pub const fn failure_code(self, code: Code) -> Self {
        self.with(code, FAILURE)
    }

    /// Counts `code` as a remote overload.
    pub const fn overload_code(self, code: Code) -> Self {
        self.with(code, OVERLOADED)
    }

    /// Does not count `code` at all (for example `NOT_FOUND`, already the
    /// default).
    pub const fn ignored_code(self, code: Code) -> Self {
        self.with(code, IGNORED)
    }

    /// Counts `code` as a success.
    pub const fn success_code(self, code: Code) -> Self {
        self.with(code, SUCCESS)
    }

    /// Whether `UNAVAILABLE` with `grpc-retry-pushback-ms` is an overload
    /// (default: yes; off, it takes `UNAVAILABLE`'s own rule).
    pub const fn pushback_is_overload(mut self, enabled: bool) -> Self {
        self.pushback_is_overload = enabled;
        self
    }

    /// Whether `UNAVAILABLE` that a server answered (a `grpc-status` in a
    /// response's head or trailers), with or without pushback, is an
    /// overload while `UNAVAILABLE`'s rule is "failure" (default: yes). A
    /// connection the client could not make or lost is an `Err`, and keeps
    /// the rule. Off, a server's `UNAVAILABLE` without pushback counts as
    /// a failure (a server that answers it only when it is broken).
    pub const fn answered_unavailable_is_overload(mut self, enabled: bool) -> Self {
        self.answered_unavailable_is_overload = enabled;
        self
    }

    /// The outcome of `code` with `headers`, answered by the server.
    #[inline]
    fn answered(&self, code: Code, headers: &http::HeaderMap) -> Outcome {
        let outcome = self.outcome_with(code, headers);
        if self.answered_unavailable_is_overload
            && code == Code::Unavailable
            && outcome == Outcome::Failure
        {
            return Outcome::Overloaded;
        }
        outcome
    }

    /// Whether `code` is classified as a remote failure.
    #[inline]
    pub const fn is_failure(&self, code: Code) -> bool {
        matches!(self.outcome(code), Outcome::Failure)
    }

    /// The outcome of a call that ended with `code` (no pushback).
    #[inline]
    pub const fn outcome(&self, code: Code) -> Outcome {
        unpack(self.table >> slot(code))
    }

    /// The outcome of a call that ended with `code` and the metadata
    /// `headers` (read for `grpc-retry-pushback-ms`).
    #[inline]
    pub fn outcome_with(&self, code: Code, headers: &http::HeaderMap) -> Outcome {
        if self.pushback_is_overload
            && code == Code::Unavailable
            && headers.contains_key(&crate::grpc::status::PUSHBACK_NAME)
        {
            return Outcome::Overloaded;
        }
        self.outcome(code)
    }

    /// The outcome read from a call's trailers (or any header map carrying
    /// `grpc-status`), for code that sees the trailers of a normal response;
    /// `None` when there is no `grpc-status`. An unparseable code reads as
    /// `UNKNOWN`.
    ///
    /// ```
    /// use seawall::observe::Outcome;
    /// use seawall::grpc::GrpcStatusClassifier;
    ///
    /// let mut trailers = http::HeaderMap::new();
    /// trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
    /// assert_eq!(GrpcStatusClassifier::new().classify_trailers(&trailers), Some(Outcome::Failure));
    /// assert_eq!(GrpcStatusClassifier::new().classify_trailers(&http::HeaderMap::new()), None);
    /// ```
    pub fn classify_trailers(&self, trailers: &http::HeaderMap) -> Option<Outcome> {
        trailers
            .get(Status::GRPC_STATUS)
            .map(|v| self.answered(Code::from_bytes(v.as_bytes()), trailers))
    }

    const fn with(mut self, code: Code, class: u64) -> Self {
        let shift = slot(code);
        self.table = (self.table & !(3 << shift)) | (class << shift);
        self
    }
}

#[inline]
const fn slot(code: Code) -> u32 {
    ((code as i32 as u32) & 31) * 2
}

impl Default for GrpcStatusClassifier {
    fn default() -> Self {
        GrpcStatusClassifier::new()
    }
}

impl fmt::Debug for GrpcStatusClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Codes<'a>(&'a GrpcStatusClassifier, Outcome);
        impl fmt::Debug for Codes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(ALL_CODES.iter().filter(|c| self.0.outcome(**c) == self.1))
                    .finish()
            }
        }
        f.debug_struct("GrpcStatusClassifier")
            .field("failure_codes", &Codes(self, Outcome::Failure))
            .field("overload_codes", &Codes(self, Outcome::Overloaded))
            .field("pushback_is_overload", &self.pushback_is_overload)
            .field(
                "answered_unavailable_is_overload",
                &self.answered_unavailable_is_overload,
            )
            .finish()
    }
}

impl<B, E: 'static> Classify<http::Response<B>, E> for GrpcStatusClassifier {
    #[inline]
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => match super::status::head_code(res) {
                // A proxy's "busy" (a 429; a 503 with a wait, or bare)
                // without grpc-status: an overload, as for HTTP, unless the
                // rule for UNAVAILABLE was changed from a failure, or the
                // rule that applies is turned off.
                Some(Code::Unavailable)
                    if !res.headers().contains_key(Status::GRPC_STATUS)
                        && self.outcome(Code::Unavailable) == Outcome::Failure
                        && match res.status().as_u16() {
                            429 => true,
                            503 if crate::http::says_busy(res) => self.pushback_is_overload,
                            503 => self.answered_unavailable_is_overload,
                            _ => false,
                        } =>
                {
                    Outcome::Overloaded
                }
                Some(code) if res.headers().contains_key(Status::GRPC_STATUS) => {
                    self.answered(code, res.headers())
                }
                Some(code) => self.outcome_with(code, res.headers()),
                None => Outcome::Success,
            },
            Err(err) => {
                // A status sent in trailers (a stream that ended with it):
                // the server answered, as in a head.
                if let Some(status) = super::status::in_trailers(err) {
                    return self.answered(status.code(), status.metadata().as_ref());
                }
                match super::status::status_of(err) {
                    Some(status) => self.outcome_with(status.code(), status.metadata().as_ref()),
                    None => error_origin(err).unwrap_or(Outcome::Failure),
                }
            }
        }
    }

    /// `DEADLINE_EXCEEDED` (a seawall server's answer to the deadline it
    /// was sent) or `CANCELLED` (a tonic server's, past its
    /// `grpc-timeout`), in the head or as the error's status.
    #[inline]
    fn is_deadline_answer(&self, result: Result<&http::Response<B>, &E>) -> bool {
        let code = match result {
            Ok(res) => super::status::head_code(res),
            Err(err) => super::status::status_of(err).map(|s| s.code()),
        };
        matches!(code, Some(Code::DeadlineExceeded | Code::Cancelled))
    }

    /// `RESOURCE_EXHAUSTED`, or a status with `grpc-retry-pushback-ms`, in
    /// the head, the trailers or the error; with no `grpc-status`, a
    /// proxy's `429`, or an answer with `Retry-After` or `retry-after-ms`.
    #[inline]
    fn is_paced_answer(&self, result: Result<&http::Response<B>, &E>) -> bool {
        let paced = |code: Code, metadata: &http::HeaderMap| {
            code == Code::ResourceExhausted
                || metadata.contains_key(&crate::grpc::status::PUSHBACK_NAME)
        };
        match result {
            Ok(res) => match res.headers().contains_key(Status::GRPC_STATUS) {
                true => {
                    super::status::head_code(res).is_some_and(|code| paced(code, res.headers()))
                }
                false => crate::http::paces(res),
            },
            Err(err) => super::status::in_trailers(err)
                .or_else(|| super::status::status_of(err))
                .is_some_and(|s| paced(s.code(), s.metadata().as_ref())),
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
                Code::Cancelled,
                Code::Unknown,
                Code::DeadlineExceeded,
                Code::Internal,
                Code::Unavailable,
                Code::DataLoss
            ]
        );
    }
}
