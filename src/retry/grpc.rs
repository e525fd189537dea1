//! gRPC retries (feature `tonic`): `UNAVAILABLE` and configured codes, server
//! pushback, at the `http::Request` level of a tonic `Channel`.
//!
//! [`GrpcRetry`] classifies:
//! - a response whose headers carry `grpc-status` (a *trailers-only*
//!   response, how servers answer errors before any message): retried when the
//!   code is in the set (default `UNAVAILABLE` only). A status sent in the
//!   trailers after a response body cannot be seen without consuming the body
//!   and counts as a success here;
//! - a response without `grpc-status` and with HTTP status 502, 503 or 504 as
//!   `UNAVAILABLE` (gRPC's HTTP-to-status mapping);
//! - a [`tonic::Status`] error (anywhere in the error's `source()` chain) by its
//!   code; an [`AttemptTimeout`](crate::error::AttemptTimeout) as
//!   `DEADLINE_EXCEEDED` (the attempt may have run on the server: retried
//!   only when that code is opted in); other errors (connection errors,
//!   seawall rejections) as [`classify_error`] does: retried, except
//!   `DeadlineExceeded` and `CircuitOpen`.
//!
//! Server pushback `grpc-retry-pushback-ms` (in the response headers or the
//! status metadata) is honoured: a positive value is the wait before the
//! retry (the backoff starts over afterwards); `0` is the backoff's jittered
//! wait (at once, every refused client would come back together); a
//! negative or unparseable value means "do not retry".
//!
//! gRPC does not know whether a method is idempotent: every method is
//! retried on the configured codes, so configure only codes that mean the
//! server did not process the call, or restrict the retries to the methods
//! that may run twice ([`GrpcRetry::retry_method`],
//! [`GrpcRetry::retry_service`]; what a gRPC service config's `retryPolicy`
//! for named methods becomes).
//! Retries carry their attempt number in the
//! [`ATTEMPT_HEADER`](super::ATTEMPT_HEADER) and gRPC's
//! `grpc-previous-rpc-attempts` (a first attempt neither). A tonic `Channel` takes
//! `http::Request<tonic::body::Body>`: the gRPC client preset
//! ([`ClientStack::grpc`](crate::stack::ClientStack::grpc)) puts
//! [`ReplayBodyLayer`](super::http::ReplayBodyLayer) above the retry layer and
//! hands the `Channel` its own body type below it.
//!
//! # Example
//!
//! ```
//! use http::Response;
//! use seawall::retry::grpc::GrpcRetry;
//! use seawall::retry::{RetryPolicy, Verdict};
//! use seawall::BoxError;
//! use tonic::Code;
//!
//! let policy = GrpcRetry::new().with_code(Code::ResourceExhausted);
//! let trailers_only = |code: &'static str, pushback: Option<&'static str>| {
//!     let mut b = Response::builder().header("grpc-status", code);
//!     if let Some(p) = pushback {
//!         b = b.header("grpc-retry-pushback-ms", p);
//!     }
//!     b.body(()).unwrap()
//! };
//! let verdict = |r: &Response<()>| {
//!     RetryPolicy::<http::Request<()>, _>::classify(&policy, Ok::<_, &BoxError>(r))
//! };
//! assert_eq!(verdict(&trailers_only("14", None)), Verdict::RETRY); // UNAVAILABLE
//! assert_eq!(
//!     verdict(&trailers_only("14", Some("250"))),
//!     Verdict::Retry { after: Some(std::time::Duration::from_millis(250)) }
//! );
//! assert_eq!(verdict(&trailers_only("14", Some("-1"))), Verdict::DoNotRetry);
//! // A pushback of 0 asks no wait: the backoff's, jittered, not at once.
//! assert_eq!(verdict(&trailers_only("14", Some("0"))), Verdict::RETRY);
//! assert_eq!(verdict(&trailers_only("3", None)), Verdict::Fail); // INVALID_ARGUMENT
//! assert_eq!(verdict(&trailers_only("0", None)), Verdict::Success);
//! ```

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response};
use tonic::Code;

use super::http::{Replayable, arrived_as_retry, copy_request};
use super::policy::{RetryPolicy, Verdict, classify_error};
use crate::error::BoxError;

/// The retry policy for gRPC calls; see the [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GrpcRetry {
    codes: u32,
    /// The methods that may be hedged, as FNV-1a hashes of their paths.
    hedged: [u64; MAX_HEDGED_METHODS],
    hedged_len: u8,
    /// The methods (`/pkg.Svc/Method`) and services (`/pkg.Svc/`) retried,
    /// as hashes of their paths; none: every method.
    scope: [u64; MAX_RETRIED_NAMES],
    scope_len: u8,
    /// The calls given a name refused (not a method path or a service
    /// name, or past the most), as `REFUSED_*` bits: the stack's `build`
    /// says which.
    refused: u8,
}

impl std::fmt::Debug for GrpcRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes: Vec<Code> = (0..17)
            .map(Code::from)
            .filter(|c| self.retries(*c))
            .collect();
        f.debug_struct("GrpcRetry")
            .field("codes", &codes)
            .field("hedged_methods", &self.hedged_len)
            .field("retried_names", &self.scope_len)
            .finish()
    }
}

/// [`GrpcRetry::refused`]'s bits: the call given a name refused, and
/// whether one was past the most.
const REFUSED_HEDGE_METHOD: u8 = 1;
const REFUSED_RETRY_METHOD: u8 = 2;
const REFUSED_RETRY_SERVICE: u8 = 4;
const REFUSED_TOO_MANY: u8 = 8;

/// The most methods one [`GrpcRetry`] opts in to hedging.
pub const MAX_HEDGED_METHODS: usize = 16;

/// The most methods and services one [`GrpcRetry`] restricts its retries to
/// ([`retry_method`](GrpcRetry::retry_method),
/// [`retry_service`](GrpcRetry::retry_service)).
pub const MAX_RETRIED_NAMES: usize = 16;

/// Adds `h` to the first `len` of `set`, if there is room and it is not in
/// yet; whether it is in now (`false`: no room).
fn add_hash(set: &mut [u64], len: &mut u8, h: u64) -> bool {
    let n = usize::from(*len);
    if set[..n].contains(&h) {
        return true;
    }
    if n < set.len() {
        set[n] = h;
        *len += 1;
        return true;
    }
    false
}

/// Whether `path` is a method's path: `/`, a service name, `/`, a method
/// name, neither empty, no wildcard.
fn is_method_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            !service.is_empty()
                && !method.is_empty()
                && !method.contains('/')
                && !path.contains('*')
        })
}

/// The hash of a service's paths' common prefix, `/pkg.Svc/`.
fn service_hash(service: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in std::iter::once(b'/')
        .chain(service.bytes())
        .chain(std::iter::once(b'/'))
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn path_hash(path: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in path.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Default for GrpcRetry {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcRetry {
    /// Retries `UNAVAILABLE` only.
    pub const fn new() -> Self {
        GrpcRetry {
            codes: 1 << (Code::Unavailable as i32),
            hedged: [0; MAX_HEDGED_METHODS],
            hedged_len: 0,
            scope: [0; MAX_RETRIED_NAMES],
            scope_len: 0,
            refused: 0,
        }
    }

    /// Retries only the method `path` (`"/bank.Ledger/GetBalance"`) and the
    /// others opted in with this and [`retry_service`](Self::retry_service);
    /// a call to any other method is sent once, as gRPC does for a method
    /// no `retryPolicy` names. Without either, every method is retried on
    /// the policy's codes (the default). At most [`MAX_RETRIED_NAMES`] in
    /// all; a name past the most, or not a method's path, is refused by the
    /// client stack's `build`.
    #[must_use]
    pub fn retry_method(mut self, path: &str) -> Self {
        if is_method_path(path) {
            self.add_retried(path_hash(path), REFUSED_RETRY_METHOD);
        } else {
            self.refused |= REFUSED_RETRY_METHOD;
        }
        self
    }

    /// Retries only the methods of `service` (`"bank.Ledger"`) and the
    /// others opted in; see [`retry_method`](Self::retry_method).
    #[must_use]
    pub fn retry_service(mut self, service: &str) -> Self {
        if !service.is_empty() && !service.contains(['/', '*']) {
            self.add_retried(service_hash(service), REFUSED_RETRY_SERVICE);
        } else {
            self.refused |= REFUSED_RETRY_SERVICE;
        }
        self
    }

    fn add_retried(&mut self, h: u64, by: u8) {
        if !add_hash(&mut self.scope, &mut self.scope_len, h) {
            self.refused |= by | REFUSED_TOO_MANY;
        }
    }

    /// Whether calls to the method `path` may be retried: every method when
    /// no [`retry_method`](Self::retry_method) or
    /// [`retry_service`](Self::retry_service) restricts them.
    pub fn retries_method(&self, path: &str) -> bool {
        let n = usize::from(self.scope_len);
        if n == 0 {
            return true;
        }
        let scope = &self.scope[..n];
        if scope.contains(&path_hash(path)) {
            return true;
        }
        // `/pkg.Svc/Method`: its service is the part up to the second `/`.
        path.strip_prefix('/')
            .and_then(|rest| rest.find('/'))
            .is_some_and(|i| scope.contains(&path_hash(&path[..i + 2])))
    }

    /// Opts the method `path` (`"/helloworld.Greeter/SayHello"`) in to
    /// hedging: with a [`hedge`](crate::hedge) layer (the gRPC client
    /// preset's [`hedge`](crate::stack::ClientStackBuilder::hedge)), a call
    /// to it still running after the hedge delay gets a copy. Only for
    /// idempotent methods: both copies may run. No method is hedged unless
    /// opted in; at most [`MAX_HEDGED_METHODS`]. A path not of the form
    /// `"/package.Service/Method"`, or one past the most, is refused by the
    /// client stack's `build` (a path is compared as it is, case
    /// included).
    #[must_use]
    pub fn hedge_method(mut self, path: &str) -> Self {
        if is_method_path(path) {
            self.add_hedged(path_hash(path));
        } else {
            self.refused |= REFUSED_HEDGE_METHOD;
        }
        self
    }

    /// Opts in the method whose path hashes to `h`, if there is room and it
    /// is not in yet.
    fn add_hedged(&mut self, h: u64) {
        if !add_hash(&mut self.hedged, &mut self.hedged_len, h) {
            self.refused |= REFUSED_HEDGE_METHOD | REFUSED_TOO_MANY;
        }
    }

    /// Refuses a policy given a name that is not a method's path
    /// (`"/pkg.Svc/Method"`) or a service's name (`"pkg.Svc"`), or more
    /// than the most: a typo would have left that method unretried or
    /// unhedged without a word. Called by the client stacks' `build`.
    pub(crate) fn check(&self) -> Result<(), crate::error::ConfigError> {
        if self.refused == 0 {
            return Ok(());
        }
        let calls: Vec<&str> = [
            (REFUSED_HEDGE_METHOD, "hedge_method"),
            (REFUSED_RETRY_METHOD, "retry_method"),
            (REFUSED_RETRY_SERVICE, "retry_service"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.refused & bit != 0)
        .map(|(_, call)| call)
        .collect();
        let why = if self.refused & REFUSED_TOO_MANY != 0 {
            format!(
                "more than the most ({MAX_HEDGED_METHODS} hedged methods, {MAX_RETRIED_NAMES} retried names), or "
            )
        } else {
            String::new()
        };
        Err(crate::error::ConfigError::new(
            "retry",
            format!(
                "GrpcRetry: {} given {why}a name refused: a method is named by its path as in the .proto, \"/package.Service/Method\" (case included, no wildcard); a service (retry_service) by \"package.Service\"",
                calls.join(" / ")
            ),
        ))
    }

    /// Whether any method is opted in to hedging.
    pub(crate) fn hedges_any(&self) -> bool {
        self.hedged_len > 0
    }

    /// These codes, with the methods `earlier` opted in to hedging kept
    /// beside this policy's (at most [`MAX_HEDGED_METHODS`] in all).
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn keeping_hedged_of(mut self, earlier: &GrpcRetry) -> Self {
        for &h in &earlier.hedged[..usize::from(earlier.hedged_len)] {
            self.add_hedged(h);
        }
        self
    }

    /// Whether calls to the method `path` may be hedged.
    pub fn hedges(&self, path: &str) -> bool {
        let h = path_hash(path);
        self.hedged[..usize::from(self.hedged_len)].contains(&h)
    }

    /// Also retries `code` (`OK` is ignored).
    #[must_use]
    pub fn with_code(mut self, code: Code) -> Self {
        if code != Code::Ok {
            self.codes |= 1 << (code as i32);
        }
        self
    }

    /// Retries exactly `codes` (`OK` is ignored).
    #[must_use]
    pub fn with_codes(codes: impl IntoIterator<Item = Code>) -> Self {
        codes.into_iter().fold(
            GrpcRetry {
                codes: 0,
                ..GrpcRetry::new()
            },
            GrpcRetry::with_code,
        )
    }

    /// Whether `code` is retried.
    pub fn retries(&self, code: Code) -> bool {
        let c = code as i32;
        (0..32).contains(&c) && self.codes & (1 << c) != 0
    }

    fn verdict(&self, code: Code, headers: &HeaderMap) -> Verdict {
        if code == Code::Ok {
            return Verdict::Success;
        }
        if !self.retries(code) {
            return Verdict::Fail;
        }
        match crate::grpc::status::pushback_of(headers) {
            None => Verdict::RETRY,
            // `0`: no wait asked, and none given at once either (every
            // refused client would come back together): the backoff's, with
            // its jitter, as HTTP's `Retry-After: 0` is read.
            Some(Some(after)) if after.is_zero() => Verdict::RETRY,
            Some(Some(after)) => Verdict::Retry { after: Some(after) },
            Some(None) => Verdict::DoNotRetry,
        }
    }

    fn classify_response<RB>(&self, res: &Response<RB>) -> Verdict {
        // The same reading of a head as the breaker's classifier.
        match crate::grpc::status::head_code(res) {
            Some(code) => self.verdict(code, res.headers()),
            None => Verdict::Success,
        }
    }

    fn classify_error(&self, err: &BoxError) -> Verdict {
        if let Some(status) = crate::grpc::status::status_in(&**err) {
            return self.verdict(status.code(), status.metadata().as_ref());
        }
        // An attempt that timed out here is a DEADLINE_EXCEEDED: it may have
        // run on the server, so it is retried only when that code is opted
        // in (idempotent methods), as gRPC's own retry policy does.
        if super::is_attempt_timeout(err) {
            return self.verdict(Code::DeadlineExceeded, &HeaderMap::new());
        }
        classify_error(err)
    }
}

/// Parses `grpc-retry-pushback-ms`: `Some(wait)` for a non-negative integer
/// (at most 18 digits, read as every number in a header is: see
/// [`parse_timeout_ms`](crate::deadline::parse_timeout_ms)), `None` (do not
/// retry) for a negative or unparseable value.
pub fn parse_pushback(value: &HeaderValue) -> Option<Duration> {
    crate::grpc::status::pushback_value(value)
}

fn stamp<B>(req: &mut Request<B>, attempt: u32) {
    let headers = req.headers_mut();
    super::http::stamp_attempt(headers, attempt);
    if attempt > 1 {
        headers.insert(
            super::http::PREVIOUS_ATTEMPTS_NAME,
            HeaderValue::from(attempt - 1),
        );
    }
}

impl<B, RB> RetryPolicy<Request<B>, Response<RB>> for GrpcRetry
where
    B: Replayable + Send + 'static,
{
    fn outcome(
        &self,
        result: Result<&Response<RB>, &BoxError>,
        _verdict: Verdict,
    ) -> crate::observe::Outcome {
        const STATUSES: crate::grpc::GrpcStatusClassifier =
            crate::grpc::GrpcStatusClassifier::new();
        crate::classify::Classify::classify(&STATUSES, result)
    }

    fn classify(&self, result: Result<&Response<RB>, &BoxError>) -> Verdict {
        match result {
            Ok(res) => self.classify_response(res),
            Err(e) => self.classify_error(e),
        }
    }

    fn is_deadline_answer(&self, result: Result<&Response<RB>, &BoxError>) -> bool {
        crate::classify::Classify::is_deadline_answer(
            &crate::grpc::GrpcStatusClassifier::new(),
            result,
        )
    }

    fn is_busy_answer(&self, result: Result<&Response<RB>, &BoxError>) -> bool {
        let code = match result {
            Ok(res) => crate::grpc::status::head_code(res),
            Err(e) => crate::grpc::status::status_in(&**e).map(tonic::Status::code),
        };
        code == Some(tonic::Code::ResourceExhausted)
    }

    fn clone_request(&self, req: &Request<B>) -> Option<Request<B>> {
        Some(copy_request(req, req.body().replay()?))
    }

    fn may_retry(&self, req: &Request<B>) -> bool {
        self.scope_len == 0 || self.retries_method(req.uri().path())
    }

    fn may_hedge(&self, req: &Request<B>) -> bool {
        self.hedges(req.uri().path())
    }

    fn may_retry_timeout(&self, _: &Request<B>) -> bool {
        // An attempt timed out is a DEADLINE_EXCEEDED to this policy.
        self.retries(Code::DeadlineExceeded)
    }

    fn arrived_as_retry(&self, req: &Request<B>) -> bool {
        arrived_as_retry(req)
    }

    fn on_attempt(&self, req: &mut Request<B>, attempt: u32) {
        stamp(req, attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_opted_in_methods_are_hedged() {
        let p = GrpcRetry::new()
            .hedge_method("/a.B/Get")
            .hedge_method("/a.B/Get");
        assert!(p.hedges("/a.B/Get"));
        assert!(!p.hedges("/a.B/Put"));
        assert!(!GrpcRetry::new().hedges("/a.B/Get"));
        let many = (0..40).fold(GrpcRetry::new(), |p, i| {
            p.hedge_method(&format!("/a.B/M{i}"))
        });
        assert!(many.hedges("/a.B/M15"));
        assert!(!many.hedges("/a.B/M16"), "beyond the cap is ignored");
        let req = Request::builder().uri("/a.B/Get").body(()).unwrap();
        assert!(RetryPolicy::<Request<()>, Response<()>>::may_hedge(
            &p, &req
        ));
        assert!(RetryPolicy::<Request<()>, Response<()>>::may_retry(
            &p, &req
        ));
    }

    /// Busy: `RESOURCE_EXHAUSTED` (and, in the retry layer, any answer
    /// with pushback); a bare `UNAVAILABLE` is not.
    #[test]
    fn busy_answers() {
        let policy = GrpcRetry::new();
        let busy = |status: tonic::Status| {
            let e: BoxError = Box::new(status);
            RetryPolicy::<Request<()>, Response<()>>::is_busy_answer(&policy, Err(&e))
        };
        assert!(busy(tonic::Status::resource_exhausted("quota")));
        assert!(!busy(tonic::Status::unavailable("down")));
        let head = |code: &'static str| {
            http::Response::builder()
                .header("grpc-status", code)
                .body(())
                .unwrap()
        };
        let res = head("8");
        assert!(RetryPolicy::<Request<()>, _>::is_busy_answer(
            &policy,
            Ok(&res)
        ));
        let res = head("14");
        assert!(!RetryPolicy::<Request<()>, _>::is_busy_answer(
            &policy,
            Ok(&res)
        ));
    }

    #[test]
    fn pushback_rules() {
        let p = |s: &'static str| parse_pushback(&HeaderValue::from_static(s));
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(p("-5"), None);
        assert_eq!(p("soon"), None);
    }

    #[test]
    fn status_errors_by_code() {
        let policy = GrpcRetry::new();
        let e: BoxError = Box::new(tonic::Status::unavailable("down"));
        assert_eq!(policy.classify_error(&e), Verdict::RETRY);
        let e: BoxError = Box::new(tonic::Status::invalid_argument("bad"));
        assert_eq!(policy.classify_error(&e), Verdict::Fail);
        let mut s = tonic::Status::unavailable("busy");
        s.metadata_mut()
            .insert(crate::grpc::PUSHBACK_HEADER, "40".parse().unwrap());
        let e: BoxError = Box::new(s);
        assert_eq!(
            policy.classify_error(&e),
            Verdict::Retry {
                after: Some(Duration::from_millis(40))
            }
        );
        let e: BoxError = crate::error::DeadlineExceeded::new("d").into();
        assert_eq!(policy.classify_error(&e), Verdict::Fail);
    }

    #[test]
    fn heads_without_grpc_status_read_as_the_classifier_reads_them() {
        use crate::classify::Classify;
        use crate::observe::Outcome;
        let policy = GrpcRetry::new();
        let classifier = crate::grpc::GrpcStatusClassifier::new();
        let head = |code: u16| http::Response::builder().status(code).body(()).unwrap();
        for (code, verdict, outcome) in [
            (200, Verdict::Success, Outcome::Success),
            // A proxy's answers, mapped as gRPC does.
            // "Busy": an overload to the breaker, retried (overloads are).
            (429, Verdict::RETRY, Outcome::Overloaded),
            (503, Verdict::RETRY, Outcome::Overloaded),
            (502, Verdict::RETRY, Outcome::Failure),
            (404, Verdict::Fail, Outcome::Ignored),
        ] {
            let res = head(code);
            assert_eq!(
                RetryPolicy::<Request<()>, _>::classify(&policy, Ok(&res)),
                verdict,
                "{code}"
            );
            assert_eq!(
                Classify::<_, BoxError>::classify(&classifier, Ok(&res)),
                outcome,
                "{code}"
            );
        }
    }

    #[test]
    fn code_set() {
        let p = GrpcRetry::with_codes([Code::Aborted, Code::Ok]);
        assert!(p.retries(Code::Aborted));
        assert!(!p.retries(Code::Unavailable));
        assert!(!p.retries(Code::Ok));
    }
}
