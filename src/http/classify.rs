//! HTTP response classification by status code.

use std::fmt;

use http::StatusCode;

use crate::classify::{Classify, Outcome};

/// Classifies HTTP responses by status code, for the circuit breaker, the
/// adaptive limit and the client throttle.
///
/// By default `5xx` and `408 Request Timeout` are failures; every other status
/// (`1xx`, `2xx`, `3xx`, and `4xx` other than 408, including `429`) is a
/// success: a client error says nothing about the health of the service.
/// Every `Err` is a failure, seawall rejections from layers below included.
/// Codes can be added to or removed from the failure set.
///
/// Classifying is a bit test: no allocation, O(1).
///
/// ```
/// use http::{Response, StatusCode};
/// use seawall::classify::{Classify, Outcome};
/// use seawall::http::HttpStatusClassifier;
///
/// let classifier = HttpStatusClassifier::new()
///     .failure_code(StatusCode::TOO_MANY_REQUESTS)
///     .success_code(StatusCode::NOT_IMPLEMENTED);
///
/// let res = |code: u16| Response::builder().status(code).body(()).unwrap();
/// let classify = |code| Classify::<Response<()>, std::io::Error>::classify(&classifier, Ok(&res(code)));
/// assert_eq!(classify(503), Outcome::Failure);
/// assert_eq!(classify(408), Outcome::Failure);
/// assert_eq!(classify(429), Outcome::Failure);
/// assert_eq!(classify(501), Outcome::Success);
/// assert_eq!(classify(404), Outcome::Success);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HttpStatusClassifier {
    /// One bit per status code 0..1024 (`StatusCode` spans 100..=999).
    failures: [u64; 16],
}

impl HttpStatusClassifier {
    /// The default classifier: `5xx` and `408` are failures.
    pub const fn new() -> Self {
        let mut c = HttpStatusClassifier { failures: [0; 16] };
        let mut code = 500;
        while code < 600 {
            c = c.with(code, true);
            code += 1;
        }
        c.with(408, true)
    }

    /// A classifier with an empty failure set: only `Err` is a failure until
    /// codes are added with [`failure_code`](Self::failure_code).
    pub const fn errors_only() -> Self {
        HttpStatusClassifier { failures: [0; 16] }
    }

    /// Also counts `code` as a failure (for example `429`).
    pub const fn failure_code(self, code: StatusCode) -> Self {
        self.with(code.as_u16(), true)
    }

    /// Counts `code` as a success (for example `501 Not Implemented`).
    pub const fn success_code(self, code: StatusCode) -> Self {
        self.with(code.as_u16(), false)
    }

    /// Whether a response with `code` is classified as a failure.
    #[inline]
    pub const fn is_failure(&self, code: StatusCode) -> bool {
        let c = code.as_u16() as usize;
        self.failures[(c >> 6) & 15] & (1 << (c & 63)) != 0
    }

    const fn with(mut self, code: u16, failure: bool) -> Self {
        let c = code as usize;
        let (word, bit) = ((c >> 6) & 15, 1u64 << (c & 63));
        if failure {
            self.failures[word] |= bit;
        } else {
            self.failures[word] &= !bit;
        }
        self
    }
}

impl Default for HttpStatusClassifier {
    fn default() -> Self {
        HttpStatusClassifier::new()
    }
}

impl fmt::Debug for HttpStatusClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Codes<'a>(&'a HttpStatusClassifier);
        impl fmt::Debug for Codes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut list = f.debug_list();
                for code in 100u16..1000 {
                    if let Ok(code) = StatusCode::from_u16(code) {
                        if self.0.is_failure(code) {
                            list.entry(&code.as_u16());
                        }
                    }
                }
                list.finish()
            }
        }
        f.debug_struct("HttpStatusClassifier")
            .field("failure_codes", &Codes(self))
            .finish()
    }
}

impl<B, E> Classify<http::Response<B>, E> for HttpStatusClassifier {
    #[inline]
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) if !self.is_failure(res.status()) => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_5xx_and_408() {
        let c = HttpStatusClassifier::new();
        for code in 100u16..1000 {
            let status = StatusCode::from_u16(code).unwrap();
            let expected = (500..600).contains(&code) || code == 408;
            assert_eq!(c.is_failure(status), expected, "{code}");
        }
    }

    #[test]
    fn codes_can_be_added_and_removed() {
        let c =
            HttpStatusClassifier::errors_only().failure_code(StatusCode::from_u16(999).unwrap());
        assert!(c.is_failure(StatusCode::from_u16(999).unwrap()));
        assert!(!c.is_failure(StatusCode::INTERNAL_SERVER_ERROR));
        let c = c.success_code(StatusCode::from_u16(999).unwrap());
        assert_eq!(c, HttpStatusClassifier::errors_only());
    }
}
