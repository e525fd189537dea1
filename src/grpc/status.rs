//! The mapping from errors to gRPC statuses and trailers-only responses, free
//! of tower types.

use std::error::Error;
use std::time::Duration;

use http::HeaderValue;
use http::header::CONTENT_TYPE;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::{RejectionKind, rejection};
use crate::http::{AnswerError, Named};

/// The metadata key of gRPC retry pushback (gRPC proposal A6): the number of
/// milliseconds the client should wait before retrying.
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// [`PUSHBACK_HEADER`] as a header name, made at compile time (a name made
/// from a string at run time is validated byte by byte on every call).
pub(crate) const PUSHBACK_NAME: http::HeaderName = http::HeaderName::from_static(PUSHBACK_HEADER);

/// A status's or head's pushback: `None` without one, `Some(None)` for one
/// that says not to retry (negative, or not a number), `Some(Some(wait))`
/// otherwise. The one reading of it: the gRPC retry policy's, and
/// [`response_for_status`](super::response_for_status)'s.
pub(crate) fn pushback_of(metadata: &http::HeaderMap) -> Option<Option<Duration>> {
    metadata.get(PUSHBACK_NAME).map(pushback_value)
}

/// A `grpc-retry-pushback-ms` value: a non-negative integer (at most 18
/// digits) is the wait; `None` (do not retry) for anything else.
pub(crate) fn pushback_value(value: &HeaderValue) -> Option<Duration> {
    crate::deadline::wire::header_number(value.as_bytes(), 18)
        .ok()
        .map(Duration::from_millis)
}

/// The message of the status for errors that are not seawall rejections.
const INTERNAL_ERROR_MESSAGE: &str = "internal error";

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static(crate::http::GRPC_CONTENT_TYPE);

/// The gRPC code a rejection of `kind` answers with.
///
/// | kind | code |
/// |---|---|
/// | circuit open, bulkhead full, overloaded, retry budget exhausted | `UNAVAILABLE` |
/// | rate limited | `RESOURCE_EXHAUSTED` |
/// | deadline exceeded, attempt timeout | `DEADLINE_EXCEEDED` |
///
/// ```
/// use seawall::grpc::code_for;
/// use seawall::RejectionKind;
/// use tonic::Code;
///
/// assert_eq!(code_for(RejectionKind::Overloaded), Code::Unavailable);
/// assert_eq!(code_for(RejectionKind::RateLimited), Code::ResourceExhausted);
/// assert_eq!(code_for(RejectionKind::AttemptTimeout), Code::DeadlineExceeded);
/// ```
pub const fn code_for(kind: RejectionKind) -> Code {
    match kind {
        RejectionKind::CircuitOpen
        | RejectionKind::BulkheadFull
        | RejectionKind::Overloaded
        | RejectionKind::RetryBudgetExhausted => Code::Unavailable,
        RejectionKind::RateLimited => Code::ResourceExhausted,
        RejectionKind::DeadlineExceeded | RejectionKind::AttemptTimeout => Code::DeadlineExceeded,
    }
}

/// Whole milliseconds of pushback for a wait: rounded **up**, never 0.
pub(crate) fn pushback_ms(wait: Duration) -> u64 {
    let ms = wait.as_millis();
    let ms = if wait.subsec_nanos() % 1_000_000 != 0 {
        ms.saturating_add(1)
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// The gRPC code of a response head: its `grpc-status`, or (a head without
/// one, from a proxy) the HTTP status mapped as gRPC does (429, 502, 503 and
/// 504 are `UNAVAILABLE`); `None` for a `200` without `grpc-status` (the
/// status comes in the trailers).
pub(crate) fn head_code<B>(res: &http::Response<B>) -> Option<Code> {
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

/// The `tonic::Status` in `err`'s source chain, if any.
pub(crate) fn status_in<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Status> {
    crate::error::find_in_chain(err)
}

/// A status the server sent in a response's trailers (a stream that ended
/// with it after its head): an answer, as a status in the head is, not a
/// call no server answered (what a `Status` error without this mark may be).
#[derive(Debug)]
pub(crate) struct InTrailers(pub(crate) Status);

impl std::fmt::Display for InTrailers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl Error for InTrailers {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// The status a server sent in trailers, if `err` is one.
pub(crate) fn in_trailers<E: 'static>(err: &E) -> Option<&Status> {
    (err as &dyn std::any::Any)
        .downcast_ref::<crate::error::BoxError>()
        .and_then(|boxed| boxed.downcast_ref::<InTrailers>())
        .map(|t| &t.0)
}

/// The `tonic::Status` an error of any type is or holds, if any.
pub(crate) fn status_of<E: 'static>(err: &E) -> Option<&Status> {
    let any = err as &dyn std::any::Any;
    if let Some(status) = any.downcast_ref::<Status>() {
        return Some(status);
    }
    any.downcast_ref::<crate::error::BoxError>()
        .and_then(|boxed| status_in(&**boxed))
}

/// The status for any error (see [`status_for`](super::status_for)).
pub(crate) fn status_for_error(err: &(dyn Error + 'static)) -> Status {
    if let Some(r) = rejection(err) {
        let mut status = Status::new(code_for(r.kind()), crate::http::body_for(r.kind()));
        if let Some(wait) = r.retry_after() {
            status
                .metadata_mut()
                .insert(PUSHBACK_HEADER, MetadataValue::from(pushback_ms(wait)));
        }
        return status;
    }
    match status_in(err) {
        Some(status) => status.clone(),
        #[cfg(feature = "deadline")]
        None if crate::error::find_in_chain::<crate::deadline::propagate::InvalidTimeout>(err)
            .is_some() =>
        {
            Status::new(Code::InvalidArgument, "invalid grpc-timeout")
        }
        None => Status::new(Code::Unknown, INTERNAL_ERROR_MESSAGE),
    }
}

/// A trailers-only gRPC response carrying `status`: HTTP 200,
/// `content-type: application/grpc`, `grpc-status`, `grpc-message`, the
/// status metadata (pushback included) and an empty body.
fn trailers_only<B: Default>(status: &Status) -> http::Response<B> {
    let mut res = http::Response::new(B::default());
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
    if status.add_header(headers).is_err() {
        // Only metadata or a message that cannot be a header value fails;
        // the code alone still tells the client what happened.
        headers.insert(Status::GRPC_STATUS, HeaderValue::from(status.code() as i32));
    }
    res
}

/// Answers errors with trailers-only gRPC responses: HTTP 200, the mapped
/// `grpc-status`, `grpc-message` and pushback for a seawall rejection, the
/// status itself for a `tonic::Status` in the chain, `UNKNOWN` otherwise (see
/// the [module docs](crate::grpc)). Works for any body type with a `Default`
/// (the empty body).
///
/// A type-level marker (it has no values): the answer of
/// [`GrpcRejectionLayer`](super::GrpcRejectionLayer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrpcAnswer {}

impl Named for GrpcAnswer {
    const SERVICE: &'static str = "GrpcRejection";
}

impl<B: Default> AnswerError<B> for GrpcAnswer {
    #[inline]
    fn answer(err: &(dyn Error + 'static)) -> http::Response<B> {
        trailers_only(&status_for_error(err))
    }

    fn internal_error() -> http::Response<B> {
        trailers_only(&Status::unknown(INTERNAL_ERROR_MESSAGE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_rounds_up_to_whole_milliseconds() {
        assert_eq!(pushback_ms(Duration::ZERO), 1);
        assert_eq!(pushback_ms(Duration::from_micros(1)), 1);
        assert_eq!(pushback_ms(Duration::from_micros(1500)), 2);
        assert_eq!(pushback_ms(Duration::from_millis(1400)), 1400);
        assert_eq!(pushback_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn trailers_only_response_has_the_code_and_pushback() {
        let err: crate::BoxError =
            crate::error::CircuitOpen::new("db", Some(Duration::from_millis(1400))).into();
        let res: http::Response<()> = trailers_only(&status_for_error(&*err));
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()["grpc-message"], "circuit%20open");
        assert_eq!(res.headers()[PUSHBACK_HEADER], "1400");
    }
}
