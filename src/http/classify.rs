//! HTTP response classification by status code.

use std::fmt;

use http::StatusCode;

use crate::classify::{Classify, error_origin};
use crate::observe::Outcome;

/// Classifies HTTP responses by status code into the [`Outcome`] model, for
/// the circuit breaker and the client throttle.
///
/// The default rules:
///
/// | status | outcome | why |
/// |---|---|---|
/// | 1xx, 2xx, 3xx | [`Success`](Outcome::Success) | |
/// | 429, 503 | [`Overloaded`](Outcome::Overloaded) | the server said "busy": alive, protecting itself |
/// | other 5xx, 408 | [`Failure`](Outcome::Failure) | the server (or the way to it) is broken or too slow |
/// | 501 and other 4xx | [`Ignored`](Outcome::Ignored) | the caller's own mistake: says nothing about the server |
///
/// A 503 is "busy" with or without a `Retry-After` (HTTP's meaning: a
/// temporary overload). Load shedders that are not seawall send it bare:
/// nginx's `limit_req` and `limit_conn`, HAProxy's queue timeout, a cloud
/// load balancer. Counted as failures, those answers opened the breaker:
/// in an outside trial over real HTTP, a dependency of 8 slots answering
/// `503` at once when full, at 4 to 10 times its capacity, tripped the
/// HTTP preset's breaker through runs of 50 failures in a row, and it then
/// opened and closed about 8 times a second (each probe, sent to a
/// dependency the breaker had just left idle, succeeded; the next fast
/// 503s filled the new window): 11 % of the dependency's capacity served,
/// where a client without protection served 100 %. A proxy with no healthy
/// upstream answers a bare 503 too, at once: it fails fast without the
/// breaker. Where a 503 means the dependency is down, count it with
/// [`failure_code(StatusCode::SERVICE_UNAVAILABLE)`](Self::failure_code);
/// a 503 with a `Retry-After` then stays "busy" (turn that off with
/// [`retry_after_is_overload(false)`](Self::retry_after_is_overload)).
///
/// An `Err` is a [`Failure`](Outcome::Failure) (a connection error, an
/// attempt timeout), except a seawall [`Overloaded`](crate::error::Overloaded)
/// ([`Overloaded`](Outcome::Overloaded)) and a local refusal
/// ([`Refused`](Outcome::Refused); the breaker enforces that one whatever the
/// classifier, see [`judge`](crate::classify::judge)).
///
/// Each rule can be changed alone: [`failure_code`](Self::failure_code),
/// [`overload_code`](Self::overload_code), [`ignored_code`](Self::ignored_code),
/// [`success_code`](Self::success_code). Classifying is a table lookup: no
/// allocation, O(1).
///
/// ```
/// use http::{Response, StatusCode};
/// use seawall::classify::Classify;
/// use seawall::observe::Outcome;
/// use seawall::http::HttpStatusClassifier;
///
/// // A gateway in front of us answers 502 when it is itself overloaded.
/// let classifier = HttpStatusClassifier::new().overload_code(StatusCode::BAD_GATEWAY);
///
/// let res = |code: u16| Response::builder().status(code).body(()).unwrap();
/// let classify = |code| Classify::<Response<()>, std::io::Error>::classify(&classifier, Ok(&res(code)));
/// assert_eq!(classify(500), Outcome::Failure);
/// assert_eq!(classify(502), Outcome::Overloaded);
/// assert_eq!(classify(503), Outcome::Overloaded); // busy, with or without Retry-After
/// assert_eq!(classify(429), Outcome::Overloaded);
/// let shed = Response::builder().status(503).header("retry-after", "1").body(()).unwrap();
/// assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&shed)), Outcome::Overloaded);
/// assert_eq!(classify(408), Outcome::Failure);
/// assert_eq!(classify(404), Outcome::Ignored);
/// assert_eq!(classify(200), Outcome::Success);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HttpStatusClassifier {
    /// Two bits per status code 0..1024 (`StatusCode` spans 100..=999):
    /// 0 success, 1 failure, 2 overloaded, 3 ignored.
    table: [u64; 32],
    /// A 503 whose rule is "failure" is an overload when it has a `Retry-After`.
    retry_after_is_overload: bool,
}

use crate::classify::packed::{FAILURE, IGNORED, OVERLOADED, SUCCESS, unpack};

impl HttpStatusClassifier {
    /// The default rules (see the type's docs).
    pub const fn new() -> Self {
        let mut c = HttpStatusClassifier {
            table: [0; 32],
            retry_after_is_overload: true,
        };
        let mut code = 400;
        while code < 500 {
            c = c.with(code, IGNORED);
            code += 1;
        }
        while code < 600 {
            c = c.with(code, FAILURE);
            code += 1;
        }
        c.with(408, FAILURE)
            .with(429, OVERLOADED)
            .with(503, OVERLOADED)
            .with(501, IGNORED)
    }

    /// Every status a success: only an `Err` fails until codes are added
    /// with [`failure_code`](Self::failure_code) and the like.
    pub const fn errors_only() -> Self {
        HttpStatusClassifier {
            table: [0; 32],
            retry_after_is_overload: false,
        }
    }

    /// Whether a 503 with a `Retry-After` header is an overload while its
    /// rule is "failure" (`failure_code(StatusCode::SERVICE_UNAVAILABLE)`;
    /// default: yes).
    pub const fn retry_after_is_overload(mut self, enabled: bool) -> Self {
        self.retry_after_is_overload = enabled;
        self
    }

    /// The outcome of a whole response head: its status's rule, and the
    /// 503-with-`Retry-After` rule.
    #[inline]
    pub fn outcome_of<B>(&self, res: &http::Response<B>) -> Outcome {
        let outcome = self.outcome(res.status());
        if self.retry_after_is_overload
            && outcome == Outcome::Failure
            && res.status() == StatusCode::SERVICE_UNAVAILABLE
            && says_busy(res)
        {
            return Outcome::Overloaded;
        }
        outcome
    }

    /// Counts `code` as a remote failure (for example `501`).
    pub const fn failure_code(self, code: StatusCode) -> Self {
        self.with(code.as_u16(), FAILURE)
    }

    /// Counts `code` as a remote overload (for example `502` from a gateway
    /// that sheds).
    pub const fn overload_code(self, code: StatusCode) -> Self {
        self.with(code.as_u16(), OVERLOADED)
    }

    /// Does not count `code` at all (for example `404` on a lookup API).
    pub const fn ignored_code(self, code: StatusCode) -> Self {
        self.with(code.as_u16(), IGNORED)
    }

    /// Counts `code` as a success.
    pub const fn success_code(self, code: StatusCode) -> Self {
        self.with(code.as_u16(), SUCCESS)
    }

    /// The outcome of a response with status `code`.
    #[inline]
    pub const fn outcome(&self, code: StatusCode) -> Outcome {
        let c = code.as_u16() as usize & 1023;
        unpack(self.table[c >> 5] >> ((c & 31) * 2))
    }

    /// Whether a response with `code` is classified as a remote failure.
    #[inline]
    pub const fn is_failure(&self, code: StatusCode) -> bool {
        matches!(self.outcome(code), Outcome::Failure)
    }

    const fn with(mut self, code: u16, class: u64) -> Self {
        let c = code as usize & 1023;
        let shift = (c & 31) * 2;
        self.table[c >> 5] = (self.table[c >> 5] & !(3 << shift)) | (class << shift);
        self
    }
}

/// Whether a response head says "busy, come back later": a 429, or a 503
/// with a `Retry-After` (a busy answer that [`paces`] its caller).
pub(crate) fn says_busy<B>(res: &http::Response<B>) -> bool {
    matches!(res.status().as_u16(), 429 | 503) && paces(res)
}

/// Whether a response head paces its caller: a `429` (a quota's
/// refusal), or any answer with `Retry-After` or `retry-after-ms`.
pub(crate) fn paces<B>(res: &http::Response<B>) -> bool {
    res.status() == StatusCode::TOO_MANY_REQUESTS
        || res.headers().contains_key(http::header::RETRY_AFTER)
        || res.headers().contains_key(super::RETRY_AFTER_MS)
}

impl Default for HttpStatusClassifier {
    fn default() -> Self {
        HttpStatusClassifier::new()
    }
}

impl fmt::Debug for HttpStatusClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Codes<'a>(&'a HttpStatusClassifier, Outcome);
        impl fmt::Debug for Codes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut list = f.debug_list();
                for code in 100u16..1000 {
                    if let Ok(code) = StatusCode::from_u16(code) {
                        if self.0.outcome(code) == self.1 {
                            list.entry(&code.as_u16());
                        }
                    }
                }
                list.finish()
            }
        }
        f.debug_struct("HttpStatusClassifier")
            .field("failure_codes", &Codes(self, Outcome::Failure))
            .field("overload_codes", &Codes(self, Outcome::Overloaded))
            .field("ignored_codes", &Codes(self, Outcome::Ignored))
            .field("retry_after_is_overload", &self.retry_after_is_overload)
            .finish()
    }
}

impl<B, E: 'static> Classify<http::Response<B>, E> for HttpStatusClassifier {
    #[inline]
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => self.outcome_of(res),
            Err(e) => error_origin(e).unwrap_or(Outcome::Failure),
        }
    }

    /// A `504 Gateway Timeout`: a seawall server's answer to a deadline
    /// it was sent.
    #[inline]
    fn is_deadline_answer(&self, result: Result<&http::Response<B>, &E>) -> bool {
        result.is_ok_and(|res| res.status() == StatusCode::GATEWAY_TIMEOUT)
    }

    /// A `429`, or any answer with `Retry-After` or `retry-after-ms`.
    #[inline]
    fn is_paced_answer(&self, result: Result<&http::Response<B>, &E>) -> bool {
        result.is_ok_and(paces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table() {
        let c = HttpStatusClassifier::new();
        for code in 100u16..1000 {
            let status = StatusCode::from_u16(code).unwrap();
            let expected = match code {
                429 | 503 => Outcome::Overloaded,
                408 => Outcome::Failure,
                501 => Outcome::Ignored,
                400..=499 => Outcome::Ignored,
                500..=599 => Outcome::Failure,
                _ => Outcome::Success,
            };
            assert_eq!(c.outcome(status), expected, "{code}");
        }
    }

    #[test]
    fn one_rule_changes_alone() {
        let c = HttpStatusClassifier::new().overload_code(StatusCode::BAD_GATEWAY);
        for code in 100u16..1000 {
            let status = StatusCode::from_u16(code).unwrap();
            if code == 502 {
                assert_eq!(c.outcome(status), Outcome::Overloaded);
            } else {
                assert_eq!(
                    c.outcome(status),
                    HttpStatusClassifier::new().outcome(status)
                );
            }
        }
        let back = c.failure_code(StatusCode::BAD_GATEWAY);
        assert_eq!(back, HttpStatusClassifier::new());
        let c =
            HttpStatusClassifier::errors_only().failure_code(StatusCode::from_u16(999).unwrap());
        assert!(c.is_failure(StatusCode::from_u16(999).unwrap()));
        assert_eq!(
            c.success_code(StatusCode::from_u16(999).unwrap()),
            HttpStatusClassifier::errors_only()
        );
    }
}
