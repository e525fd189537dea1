//! HTTP answers for seawall rejections: status codes, `Retry-After`, short
//! bodies, and a status-code classifier.
//!
//! Seawall layers fail with a [`BoxError`] holding a rejection marker. This
//! module turns any such error, also when wrapped in other errors (it follows
//! `source()` chains with [`error::rejection`](crate::error::rejection)), into
//! the response a client can act on:
//!
//! | rejection | status | `Retry-After` | body |
//! |---|---|---|---|
//! | [`CircuitOpen`](crate::error::CircuitOpen) | 503 | when known | `circuit open` |
//! | [`BulkheadFull`](crate::error::BulkheadFull) | 503 | when known | `bulkhead full` |
//! | [`Overloaded`](crate::error::Overloaded) | 503 | when known | `overloaded` |
//! | [`RetryBudgetExhausted`](crate::error::RetryBudgetExhausted) | 503 | — | `retry budget exhausted` |
//! | [`RateLimited`](crate::error::RateLimited) | 429 | when known | `rate limited` |
//! | [`DeadlineExceeded`](crate::error::DeadlineExceeded) | 504 | — | `deadline exceeded` |
//! | [`AttemptTimeout`](crate::error::AttemptTimeout) | 504 | — | `attempt timed out` |
//! | [`InvalidTimeout`](crate::deadline::propagate::InvalidTimeout) (the caller's header, under `OnInvalid::Reject`) | 400 | — | `invalid timeout header` |
//! | any other error | 500 | — | `internal server error` |
//!
//! Bodies are plain text (`content-type: text/plain; charset=utf-8`) and name
//! the reason only: never the layer instance name, nor the message of a
//! non-seawall error (it may hold internal details; log it where the error is
//! produced). `Retry-After` is in `delay-seconds`, rounded **up** to whole
//! seconds and never `0`: a 1.4 s wait reads `2`, a 400 ms wait reads `1`.
//! Beside it, [`retry-after-ms`](RETRY_AFTER_MS) gives the wait in
//! milliseconds (`1400`, `400`), which seawall's HTTP client preset reads
//! first: refused clients come back spread over the jittered hint, not
//! together a second later, and a caller with less than a second left can
//! still wait for it.
//!
//! Two ways in:
//!
//! - [`RejectionResponseLayer`]: put it outside the seawall layers; the stack's
//!   `Err` becomes an `Ok` response and the error type becomes
//!   [`Infallible`](std::convert::Infallible), so axum's `Router::layer` takes
//!   the stack as is. Works for any body type that can be built from a
//!   `&'static str` (axum's `Body`, `String`, `Full<Bytes>`, …).
//! - With feature `axum`: [`handle_error`], an error handler for axum's
//!   `HandleErrorLayer`.
//!
//! The building blocks are public too: [`status_for`], [`body_for`],
//! [`retry_after_header`] and [`rejection_response`].
//!
//! [`HttpStatusClassifier`] classifies responses for the circuit breaker and
//! the client throttle: 5xx (but 501 and 503) and 408 fail; 429 and
//! 503, with or without `Retry-After`, are overloaded ("busy"); 501 and other 4xx are the
//! caller's mistake (ignored); the rest succeed.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use seawall::error::CircuitOpen;
//! use seawall::http::RejectionResponseLayer;
//! use seawall::BoxError;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Stands in for a seawall stack whose breaker is open.
//! let svc = ServiceBuilder::new()
//!     .layer(RejectionResponseLayer::new())
//!     .service_fn(|_req: http::Request<()>| async {
//!         Err::<http::Response<String>, BoxError>(
//!             CircuitOpen::new("db", Some(Duration::from_millis(1400))).into(),
//!         )
//!     });
//!
//! let res = svc.oneshot(http::Request::new(())).await.unwrap(); // Infallible
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["retry-after"], "2");
//! assert_eq!(res.body(), "circuit open");
//! # }
//! ```

mod answer;
mod classify;
mod future;
pub(crate) mod response;
mod service;
#[cfg(feature = "deadline")]
pub(crate) mod value;

#[cfg(feature = "tonic")]
pub(crate) use self::answer::AnswerError;
#[cfg(feature = "tonic")]
pub(crate) use self::answer::Named;
use self::answer::TextAnswer;
pub use self::classify::HttpStatusClassifier;
#[cfg(feature = "tonic")]
pub(crate) use self::classify::{paces, says_busy};
pub(crate) use self::future::AnswerErrorsFuture;
pub use self::response::{RETRY_AFTER_MS, body_for, retry_after_header, status_for};
pub(crate) use self::service::AnswerErrors;
#[cfg(feature = "tonic")]
pub(crate) use self::service::named_answer;
#[cfg(feature = "tonic")]
pub(crate) use self::service::poll_ready_keeping;

service::named_answer! {
    /// Wraps a service so that its errors become HTTP responses: seawall
    /// rejections get their mapped status, `Retry-After` and short body, any other
    /// error a generic `500`. The wrapped service never fails (its error type is
    /// [`Infallible`](std::convert::Infallible)), which is what axum's
    /// `Router::layer` and `route_layer` ask for.
    ///
    /// Put it **outside** the seawall layers it answers for. It holds no state;
    /// see the [module docs](crate::http) for the exact responses.
    ///
    /// ```
    /// use seawall::http::RejectionResponseLayer;
    /// use tower::ServiceBuilder;
    ///
    /// let stack = ServiceBuilder::new()
    ///     .layer(RejectionResponseLayer::new())
    ///     // .layer(breaker).layer(limiter) ...
    ///     .service_fn(|_req: http::Request<String>| async {
    ///         Ok::<_, seawall::BoxError>(http::Response::new(String::from("hello")))
    ///     });
    /// # let _ = stack;
    /// ```
    layer RejectionResponseLayer;
    /// The service built by [`RejectionResponseLayer`]: turns the inner service's
    /// `Err` into an `Ok` HTTP response. Works for any body type that can be
    /// built from a `&'static str`.
    service RejectionResponse;
    /// The response future of [`RejectionResponse`]: the inner service's
    /// response, or the answer for its error.
    future ResponseFuture;
    answer TextAnswer, body From<&'static str>;
}

use crate::error::BoxError;

/// The response for an error: the mapped status, `Retry-After` and body for a
/// seawall rejection (found through `source()` chains), or a generic `500`
/// (`internal server error`) for any other error. See the
/// [module docs](self) for the table.
///
/// ```
/// use seawall::error::RateLimited;
/// use seawall::http::rejection_response;
/// use seawall::BoxError;
/// use std::time::Duration;
///
/// let err: BoxError = RateLimited::new("api", Some(Duration::from_millis(400))).into();
/// let res: http::Response<String> = rejection_response(&err);
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["retry-after"], "1");
/// assert_eq!(res.body(), "rate limited");
///
/// let other: BoxError = "connection refused to 10.0.0.7".into();
/// let res: http::Response<String> = rejection_response(&other);
/// assert_eq!(res.status(), 500);
/// assert_eq!(res.body(), "internal server error");
/// ```
pub fn rejection_response<B>(err: &BoxError) -> http::Response<B>
where
    B: From<&'static str>,
{
    response::response_for_error(&**err)
}

/// An error handler for axum's `HandleErrorLayer`: answers seawall rejections
/// with their status, `Retry-After` and body, other errors with a generic 500
/// (see the [module docs](self)).
///
/// ```
/// use axum::{error_handling::HandleErrorLayer, routing::get, Router};
/// use tower::ServiceBuilder;
///
/// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
///     ServiceBuilder::new()
///         .layer(HandleErrorLayer::new(seawall::http::handle_error))
///         // the seawall layers go here, below the error handler
///         .timeout(std::time::Duration::from_secs(5)),
/// );
/// # let _ = app;
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub async fn handle_error(err: BoxError) -> axum_core::response::Response {
    rejection_response(&err)
}

/// `hint` with `n` more bytes in front (a body whose first bytes were read
/// ahead).
#[cfg_attr(not(any(feature = "retry", feature = "tonic")), allow(dead_code))]
pub(crate) fn hint_plus(hint: http_body::SizeHint, n: usize) -> http_body::SizeHint {
    let n = n as u64;
    let mut out = http_body::SizeHint::new();
    out.set_lower(hint.lower().saturating_add(n));
    if let Some(upper) = hint.upper() {
        out.set_upper(upper.saturating_add(n));
    }
    out
}

/// gRPC's status trailer (and trailers-only header), for the parts of the
/// crate that read gRPC answers without tonic.
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
pub(crate) const GRPC_STATUS: &str = "grpc-status";

/// Whether trailers carry a `grpc-status` other than `0` (`OK`).
#[cfg(any(feature = "tonic", feature = "deadline"))]
pub(crate) fn failed_grpc_status(trailers: &http::HeaderMap) -> bool {
    const NAME: http::HeaderName = http::HeaderName::from_static(GRPC_STATUS);
    trailers.get(&NAME).is_some_and(|v| v.as_bytes() != b"0")
}

/// The content type of gRPC answers (`application/grpc`, and its `+proto`
/// kinds).
#[cfg_attr(not(any(feature = "deadline", feature = "tonic")), allow(dead_code))]
pub(crate) const GRPC_CONTENT_TYPE: &str = "application/grpc";
