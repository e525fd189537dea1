//! HTTP retries: which responses and requests are retried, replaying request
//! bodies, and the server side of the "retry at one layer" guard.
//!
//! - [`HttpRetry`] retries 5xx responses (not 501), 408, 429 and errors
//!   (connection errors and seawall rejections, but never `DeadlineExceeded`),
//!   only for idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or
//!   requests carrying an `Idempotency-Key` header. A
//!   [`retry-after-ms`](crate::http::RETRY_AFTER_MS) (a seawall server's
//!   wait in milliseconds) is honoured as the wait, else a `Retry-After` in
//!   delay-seconds; a `Retry-After` given as an
//!   HTTP-date (or unparseable) means no retry, since seawall reads only
//!   tokio's clock and cannot tell how far away a calendar date is. A
//!   retry carries its attempt number (2, 3, …) in [`ATTEMPT_HEADER`]; a
//!   first attempt carries none (its absence means attempt 1, as gRPC's
//!   `grpc-previous-rpc-attempts` is sent on retries only), and one
//!   copied from an inbound request is taken off.
//! - Bodies: `http::Request<B>` is not `Clone`. Put [`ReplayBodyLayer`] above
//!   the retry layer: it reads the body once, up to a limit (default 64 KiB),
//!   and hands the retry layer an `http::Request<ReplayBody<B>>` that can be
//!   replayed. A larger body is streamed through once (what was read first is
//!   sent first) and the request is not retried
//!   ([`GiveUpReason::NotReplayable`](crate::observe::GiveUpReason::NotReplayable)).
//!   Requests whose body type is `Clone` work without it.
//! - [`MarkInboundAttemptLayer`] (server side) reads the attempt header of an
//!   inbound request and records it (request extension [`InboundAttempt`] and
//!   the task-local [`inbound_attempt`](super::inbound_attempt)), so the client
//!   stacks called while handling a retried request do not retry again.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use seawall::retry::http::{HttpRetry, ReplayBody, ReplayBodyLayer};
//! use seawall::retry::RetryLayer;
//! use seawall::BoxError;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let upstream = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
//!     // Retries carry their attempt number; a first attempt none.
//!     let retry = req.headers().contains_key("x-seawall-attempt");
//!     let body = req.into_body().collect().await?.to_bytes();
//!     let status = if retry { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
//!     let mut res = Response::new(body);
//!     *res.status_mut() = status;
//!     Ok::<_, BoxError>(res)
//! });
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(ReplayBodyLayer::default())
//!     .layer(RetryLayer::builder().policy(HttpRetry::new()).build().unwrap())
//!     .service(upstream);
//!
//! let req = Request::put("/items/7").body(Full::new(Bytes::from("hello"))).unwrap();
//! let res = client.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.into_body(), "hello"); // the body was replayed on the retry
//! # }
//! ```

mod inbound;
mod replay;

pub use self::inbound::{InboundAttempt, MarkInboundAttempt, MarkInboundAttemptLayer, attempt_of};
pub use self::replay::{ReplayBody, ReplayBodyFuture, ReplayBodyLayer, ReplayBodyService};

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::ATTEMPT_HEADER;
use super::policy::{RetryPolicy, Verdict, classify_error};
use crate::error::BoxError;

/// The `Idempotency-Key` request header: a request carrying it may be retried
/// whatever its method.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The default limit of [`ReplayBodyLayer`]: 64 KiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// The retry policy for HTTP clients; see the [module docs](self).
///
/// ```
/// use http::{Method, Request, Response, StatusCode};
/// use seawall::retry::http::HttpRetry;
/// use seawall::retry::{RetryPolicy, Verdict};
/// use seawall::BoxError;
///
/// let p = HttpRetry::new();
/// let res = |code: u16| Response::builder().status(code).body(()).unwrap();
/// let verdict = |r: &Response<()>| RetryPolicy::<Request<()>, _>::classify(&p, Ok::<_, &BoxError>(r));
/// assert_eq!(verdict(&res(503)), Verdict::RETRY);
/// assert_eq!(verdict(&res(501)), Verdict::Fail);
/// assert_eq!(verdict(&res(404)), Verdict::Success);
///
/// let post = Request::post("/pay").body(()).unwrap();
/// assert!(!RetryPolicy::<_, Response<()>>::may_retry(&p, &post));
/// let keyed = Request::post("/pay").header("idempotency-key", "k1").body(()).unwrap();
/// assert!(RetryPolicy::<_, Response<()>>::may_retry(&p, &keyed));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpRetry {
    _private: (),
}

impl HttpRetry {
    /// The policy: 5xx (not 501), 408, 429 and errors, idempotent requests only.
    pub const fn new() -> Self {
        HttpRetry { _private: () }
    }

    /// Whether a response status is retried: 408, 429 and 5xx except 501.
    pub fn is_retryable_status(status: StatusCode) -> bool {
        matches!(status.as_u16(), 408 | 429)
            || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
    }

    /// Whether a request may be retried: an idempotent method (GET, HEAD,
    /// OPTIONS, TRACE, PUT, DELETE) or an `Idempotency-Key` header.
    pub fn is_idempotent<B>(req: &Request<B>) -> bool {
        idempotent_method(req.method()) || req.headers().contains_key(&IDEMPOTENCY_KEY_NAME)
    }

    fn classify_response<RB>(res: &Response<RB>) -> Verdict {
        if !Self::is_retryable_status(res.status()) {
            return if res.status().is_server_error() {
                Verdict::Fail
            } else {
                Verdict::Success
            };
        }
        // The wait in milliseconds first (a seawall server's), then
        // `Retry-After`'s whole seconds.
        match crate::http::response::asked_wait(res.headers()) {
            None => Verdict::RETRY,
            // `0`: no wait asked, and none given at once either (every
            // refused client would come back together): the backoff's, with
            // its jitter, as `retry-after-ms: 0` is read.
            Some(Some(after)) if after.is_zero() => Verdict::RETRY,
            Some(Some(after)) => Verdict::Retry { after: Some(after) },
            Some(None) => Verdict::DoNotRetry,
        }
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE: idempotent by HTTP's rules.
fn idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Parses a `Retry-After` in delay-seconds (`"120"`, at most 10 digits, read
/// as every number in a header is: see
/// [`parse_timeout_ms`](crate::deadline::parse_timeout_ms)). `None` for an
/// HTTP-date or anything else.
pub fn parse_delay_seconds(value: &HeaderValue) -> Option<Duration> {
    crate::http::response::delay_seconds(value)
}

/// Parses a `retry-after-ms` value: a whole number of milliseconds above
/// zero (at most 10 digits). `None` for anything else, `0` included (then
/// `Retry-After` decides): a wait of nothing would send every refused
/// client back at once, without the backoff's jitter.
pub fn parse_delay_ms(value: &HeaderValue) -> Option<Duration> {
    crate::http::response::delay_ms(value)
}

/// [`ATTEMPT_HEADER`] as a header name, made at compile time (a name made
/// from a string at run time is validated byte by byte on every call).
pub(crate) const ATTEMPT_NAME: HeaderName = HeaderName::from_static(ATTEMPT_HEADER);

/// [`PREVIOUS_ATTEMPTS_HEADER`](super::PREVIOUS_ATTEMPTS_HEADER) as a
/// header name, made at compile time.
pub(crate) const PREVIOUS_ATTEMPTS_NAME: HeaderName =
    HeaderName::from_static(super::PREVIOUS_ATTEMPTS_HEADER);

/// [`IDEMPOTENCY_KEY`] as a header name, made at compile time.
const IDEMPOTENCY_KEY_NAME: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);

/// Writes a retry's attempt number into [`ATTEMPT_HEADER`]. A first
/// attempt carries none (a server reads its absence as attempt 1): written
/// into every request, the header cost the HTTP client preset 813
/// instructions a call of its 8808 (`.ci/instructions`). One the request
/// already carries (copied
/// from an inbound request by a handler that forwards its headers) is
/// taken off, as the first attempt's `1` replaced it.
pub(crate) fn stamp_attempt(headers: &mut HeaderMap, attempt: u32) {
    if attempt > 1 {
        headers.insert(ATTEMPT_NAME, HeaderValue::from(attempt));
    } else if !headers.is_empty() {
        headers.remove(ATTEMPT_NAME);
    }
}

/// Whether `req` was marked as a retried inbound request
/// ([`MarkInboundAttemptLayer`] puts the mark).
pub(crate) fn arrived_as_retry<B>(req: &Request<B>) -> bool {
    req.extensions()
        .get::<InboundAttempt>()
        .is_some_and(|a| a.0 > 1)
}

pub(crate) fn copy_request<B>(req: &Request<B>, body: B) -> Request<B> {
    let mut r = Request::new(body);
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    r
}

/// A request body a retry can send again: any `Clone` body (`Full<Bytes>`,
/// `String`, `()`, …), or a [`ReplayBody`] read within its limit (a larger
/// one is sent once). Sealed.
pub trait Replayable: Sized + sealed::Sealed {
    /// A copy for the next attempt, if the body can be sent again.
    #[doc(hidden)]
    fn replay(&self) -> Option<Self>;
}

mod sealed {
    pub trait Sealed {}
    impl<B: Clone> Sealed for B {}
    impl<B> Sealed for super::ReplayBody<B> {}
}

impl<B: Clone> Replayable for B {
    #[inline]
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<B> Replayable for ReplayBody<B> {
    #[inline]
    fn replay(&self) -> Option<Self> {
        self.try_clone()
    }
}

impl<B, RB> RetryPolicy<Request<B>, Response<RB>> for HttpRetry
where
    B: Replayable + Send + 'static,
{
    fn outcome(
        &self,
        result: Result<&Response<RB>, &BoxError>,
        _verdict: Verdict,
    ) -> crate::observe::Outcome {
        const STATUSES: crate::http::HttpStatusClassifier =
            crate::http::HttpStatusClassifier::new();
        crate::classify::Classify::classify(&STATUSES, result)
    }

    fn classify(&self, result: Result<&Response<RB>, &BoxError>) -> Verdict {
        match result {
            Ok(res) => Self::classify_response(res),
            Err(e) => classify_error(e),
        }
    }

    fn is_deadline_answer(&self, result: Result<&Response<RB>, &BoxError>) -> bool {
        crate::classify::Classify::is_deadline_answer(
            &crate::http::HttpStatusClassifier::new(),
            result,
        )
    }

    fn is_busy_answer(&self, result: Result<&Response<RB>, &BoxError>) -> bool {
        matches!(result, Ok(res) if res.status() == http::StatusCode::TOO_MANY_REQUESTS)
    }

    fn clone_request(&self, req: &Request<B>) -> Option<Request<B>> {
        Some(copy_request(req, req.body().replay()?))
    }

    fn may_retry(&self, req: &Request<B>) -> bool {
        Self::is_idempotent(req)
    }

    /// An idempotent method only: a request that an `Idempotency-Key` makes
    /// safe to retry after it failed gains nothing from a copy while it
    /// runs (a server that keeps the key refuses the copy, `409 Conflict`,
    /// or holds it until the original's answer) and costs a call.
    fn may_hedge(&self, req: &Request<B>) -> bool {
        idempotent_method(req.method())
    }

    fn arrived_as_retry(&self, req: &Request<B>) -> bool {
        arrived_as_retry(req)
    }

    fn on_attempt(&self, req: &mut Request<B>, attempt: u32) {
        stamp_attempt(req.headers_mut(), attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_seconds_parsing() {
        let p = |s: &'static str| parse_delay_seconds(&HeaderValue::from_static(s));
        assert_eq!(p("120"), Some(Duration::from_secs(120)));
        assert_eq!(p(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p("-1"), None);
        assert_eq!(p("1.5"), None);
        assert_eq!(p("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(p("99999999999"), None);
    }

    /// Every number read from a header follows one rule: the same inputs
    /// are read, or refused, by the `Retry-After`, pushback, attempt and
    /// milliseconds readers alike.
    #[test]
    fn every_header_number_is_read_by_one_rule() {
        let read = ["7", " 7", "7\t", " \t7 "];
        let refused = ["", " ", "+7", "-7", "7.0", "7 7", "0x7", "7ms", "\u{664}"];
        for v in read.iter().chain(&refused) {
            let value = HeaderValue::from_str(v).unwrap();
            let delay = parse_delay_seconds(&value).map(|d| d.as_secs());
            let ms = crate::deadline::parse_timeout_ms(value.as_bytes())
                .ok()
                .map(|d| d.as_millis() as u64);
            let attempt = {
                let req = Request::get("/").header(ATTEMPT_HEADER, value.clone());
                let n = attempt_of(&req.body(()).unwrap());
                (n != 1).then_some(u64::from(n))
            };
            let want = read.contains(v).then_some(7);
            assert_eq!((delay, ms, attempt), (want, want, want), "{v:?}");
            #[cfg(feature = "tonic")]
            assert_eq!(
                crate::retry::grpc::parse_pushback(&value).map(|d| d.as_millis() as u64),
                want,
                "{v:?}"
            );
        }
    }

    #[test]
    fn attempt_header_parsing() {
        let r = |k: &'static str, v: &'static str| Request::get("/").header(k, v).body(()).unwrap();
        assert_eq!(attempt_of(&Request::get("/").body(()).unwrap()), 1);
        assert_eq!(attempt_of(&r(ATTEMPT_HEADER, "3")), 3);
        assert_eq!(attempt_of(&r(ATTEMPT_HEADER, "x")), 1);
        assert_eq!(attempt_of(&r(ATTEMPT_HEADER, "0")), 1);
        assert_eq!(attempt_of(&r("grpc-previous-rpc-attempts", "1")), 2);
    }

    /// Busy: a `429` (and, in the retry layer, any answer that asks for a
    /// wait); a bare `503` (one instance of several down gives it too) is
    /// not.
    #[test]
    fn busy_answers() {
        let policy = HttpRetry::new();
        let busy = |code: u16| {
            let res = Response::builder().status(code).body(()).unwrap();
            RetryPolicy::<Request<()>, _>::is_busy_answer(&policy, Ok(&res))
        };
        assert!(busy(429));
        assert!(!busy(503));
        assert!(!busy(500));
    }

    #[test]
    fn statuses() {
        for (code, retry) in [
            (500, true),
            (501, false),
            (502, true),
            (503, true),
            (504, true),
            (408, true),
            (429, true),
            (404, false),
            (200, false),
        ] {
            assert_eq!(
                HttpRetry::is_retryable_status(StatusCode::from_u16(code).unwrap()),
                retry,
                "{code}"
            );
        }
    }
}
