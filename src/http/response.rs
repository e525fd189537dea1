//! The mapping from errors to HTTP responses, free of tower types.

use std::error::Error;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::error::{RejectionKind, rejection};

/// The `content-type` of every body this module writes.
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The body written for errors that are not seawall rejections.
pub(crate) const INTERNAL_ERROR_BODY: &str = "internal server error";

/// The body written for a caller's unreadable timeout header
/// ([`InvalidTimeout`](crate::deadline::propagate::InvalidTimeout), under
/// `OnInvalid::Reject`).
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
pub(crate) const INVALID_TIMEOUT_BODY: &str = "invalid timeout header";

/// The HTTP status a rejection of `kind` answers with.
///
/// | kind | status |
/// |---|---|
/// | [`CircuitOpen`](RejectionKind::CircuitOpen), [`BulkheadFull`](RejectionKind::BulkheadFull), [`Overloaded`](RejectionKind::Overloaded) | `503 Service Unavailable` |
/// | [`RetryBudgetExhausted`](RejectionKind::RetryBudgetExhausted) | `503 Service Unavailable` |
/// | [`RateLimited`](RejectionKind::RateLimited) | `429 Too Many Requests` |
/// | [`DeadlineExceeded`](RejectionKind::DeadlineExceeded), [`AttemptTimeout`](RejectionKind::AttemptTimeout) | `504 Gateway Timeout` |
///
/// ```
/// use http::StatusCode;
/// use seawall::http::status_for;
/// use seawall::RejectionKind;
///
/// assert_eq!(status_for(RejectionKind::RateLimited), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(status_for(RejectionKind::CircuitOpen), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(status_for(RejectionKind::DeadlineExceeded), StatusCode::GATEWAY_TIMEOUT);
/// ```
pub const fn status_for(kind: RejectionKind) -> StatusCode {
    match kind {
        RejectionKind::CircuitOpen
        | RejectionKind::BulkheadFull
        | RejectionKind::Overloaded
        | RejectionKind::RetryBudgetExhausted => StatusCode::SERVICE_UNAVAILABLE,
        RejectionKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        RejectionKind::DeadlineExceeded | RejectionKind::AttemptTimeout => {
            StatusCode::GATEWAY_TIMEOUT
        }
    }
}

/// The short plain-text body a rejection of `kind` answers with
/// (`"circuit open"`, `"rate limited"`, …). It names the reason only, never the
/// layer instance or any other internal detail.
///
/// ```
/// use seawall::http::body_for;
/// use seawall::RejectionKind;
///
/// assert_eq!(body_for(RejectionKind::CircuitOpen), "circuit open");
/// assert_eq!(body_for(RejectionKind::DeadlineExceeded), "deadline exceeded");
/// ```
pub const fn body_for(kind: RejectionKind) -> &'static str {
    kind.message()
}

/// Whole seconds to advertise for a wait: rounded **up**, and never 0 (a client
/// told "0" retries at once, before the layer is ready to take the request).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    crate::clock::ceil_secs(wait).max(1)
}

/// The header that carries a refusal's wait in milliseconds beside
/// `Retry-After`: `retry-after-ms`. `Retry-After` counts whole seconds, so
/// a jittered hint under a second (the adaptive limit's: its expected
/// service time, at least 100 ms, stretched by up to half) reads `1` for
/// every refused client, all of them come back together a second later,
/// and a caller with less than a second left cannot wait for it; seawall's HTTP client preset reads
/// this one first, as gRPC clients read a pushback in milliseconds. Other
/// clients keep `Retry-After`.
pub const RETRY_AFTER_MS: http::HeaderName = http::HeaderName::from_static("retry-after-ms");

/// The wait an HTTP answer's head asks for: `retry-after-ms` above `0`
/// first (a seawall server's), then `Retry-After` in whole seconds. `None`
/// without either; `Some(None)` for a `Retry-After` that is no number of
/// seconds (an HTTP-date cannot be measured on tokio's clock);
/// `Some(Some(wait))` otherwise, zero for `Retry-After: 0` (no wait asked).
/// The one reading of both headers: the HTTP retry policy's, and
/// [`status_for_response`](crate::grpc::status_for_response)'s.
#[cfg_attr(not(any(feature = "retry", feature = "tonic")), allow(dead_code))]
pub(crate) fn asked_wait(headers: &http::HeaderMap) -> Option<Option<Duration>> {
    if let Some(ms) = headers.get(RETRY_AFTER_MS).and_then(delay_ms) {
        return Some(Some(ms));
    }
    headers.get(http::header::RETRY_AFTER).map(delay_seconds)
}

/// A `retry-after-ms` value: whole milliseconds above zero (at most 10
/// digits); `None` for anything else, `0` included.
#[cfg_attr(not(any(feature = "retry", feature = "tonic")), allow(dead_code))]
pub(crate) fn delay_ms(value: &HeaderValue) -> Option<Duration> {
    crate::deadline::wire::header_number(value.as_bytes(), 10)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// A `Retry-After` in delay-seconds (at most 10 digits); `None` for an
/// HTTP-date or anything else.
#[cfg_attr(not(any(feature = "retry", feature = "tonic")), allow(dead_code))]
pub(crate) fn delay_seconds(value: &HeaderValue) -> Option<Duration> {
    crate::deadline::wire::header_number(value.as_bytes(), 10)
        .ok()
        .map(Duration::from_secs)
}

/// A `retry-after-ms` value for a wait: whole milliseconds, rounded up,
/// never `0`.
pub(crate) fn retry_after_ms_header(wait: Duration) -> HeaderValue {
    let ms = wait.as_nanos().div_ceil(1_000_000).max(1);
    HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A `Retry-After` header value (RFC 9110 `delay-seconds`) for a wait: whole
/// seconds, rounded **up**, never `0`.
///
/// ```
/// use std::time::Duration;
/// use seawall::http::retry_after_header;
///
/// assert_eq!(retry_after_header(Duration::from_millis(1400)), "2");
/// assert_eq!(retry_after_header(Duration::from_millis(400)), "1");
/// assert_eq!(retry_after_header(Duration::from_secs(3)), "3");
/// assert_eq!(retry_after_header(Duration::ZERO), "1");
/// ```
pub fn retry_after_header(wait: Duration) -> HeaderValue {
    HeaderValue::from(retry_after_secs(wait))
}

/// Builds the response for any error: the mapped answer for a seawall rejection
/// (found through `source()` chains), a generic `500` otherwise.
pub(crate) fn response_for_error<B>(err: &(dyn Error + 'static)) -> Response<B>
where
    B: From<&'static str>,
{
    let (status, body, retry_after) = match rejection(err) {
        Some(r) => (status_for(r.kind()), body_for(r.kind()), r.retry_after()),
        #[cfg(feature = "deadline")]
        None if crate::error::find_in_chain::<crate::deadline::propagate::InvalidTimeout>(err)
            .is_some() =>
        {
            (StatusCode::BAD_REQUEST, INVALID_TIMEOUT_BODY, None)
        }
        None => (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR_BODY, None),
    };
    text_response(status, body, retry_after)
}

/// A plain-text answer with `status` and `body`, and the wait (`Retry-After`
/// in seconds, `retry-after-ms`) when there is one.
pub(crate) fn text_response<B>(
    status: StatusCode,
    body: &'static str,
    wait: Option<Duration>,
) -> Response<B>
where
    B: From<&'static str>,
{
    let mut res = Response::new(B::from(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, TEXT_PLAIN);
    if let Some(wait) = wait {
        headers.insert(RETRY_AFTER, retry_after_header(wait));
        headers.insert(RETRY_AFTER_MS, retry_after_ms_header(wait));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_up_and_never_zero() {
        let ms = |d| retry_after_ms_header(d).to_str().unwrap().to_owned();
        assert_eq!(ms(Duration::ZERO), "1");
        assert_eq!(ms(Duration::from_micros(120_001)), "121");
        assert_eq!(ms(Duration::from_millis(1400)), "1400");
        assert_eq!(ms(Duration::MAX), "18446744073709551615");
    }

    #[test]
    fn seconds_round_up_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(999)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn every_kind_has_a_status_and_body() {
        for kind in RejectionKind::ALL {
            assert!(status_for(kind).is_server_error() || status_for(kind).is_client_error());
            assert!(!body_for(kind).is_empty());
        }
    }
}
