//! How an error becomes a response: the [`AnswerError`] trait and the plain-text
//! answer, free of tower types.

use std::error::Error;

use super::response::{INTERNAL_ERROR_BODY, response_for_error};

/// Builds the `Ok` response that [`AnswerErrors`](super::AnswerErrors)
/// returns in place of an error: [`TextAnswer`] (plain-text HTTP responses,
/// for [`RejectionResponseLayer`](super::RejectionResponseLayer)) and, with
/// feature `tonic`, `GrpcAnswer` (trailers-only gRPC responses, for
/// `GrpcRejectionLayer`).
pub(crate) trait AnswerError<B>: Named {
    /// The response for `err`: the mapped answer for a seawall rejection
    /// (found through `source()` chains), a generic error otherwise.
    fn answer(err: &(dyn Error + 'static)) -> http::Response<B>;

    /// The generic internal-error response, answered when a finished response
    /// future is polled again.
    fn internal_error() -> http::Response<B>;
}

/// The name of an answer's service, for `Debug` output.
pub(crate) trait Named {
    /// The name the service's `Debug` output uses.
    const SERVICE: &'static str;
}

/// Answers errors with plain-text HTTP responses: the mapped status,
/// `Retry-After` and short body for a seawall rejection, a generic `500`
/// otherwise (see the [module docs](crate::http)). Works for any body type
/// that can be built from a `&'static str`.
///
/// A type-level marker (it has no values): the answer of
/// [`RejectionResponseLayer`](super::RejectionResponseLayer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextAnswer {}

impl Named for TextAnswer {
    const SERVICE: &'static str = "RejectionResponse";
}

impl<B: From<&'static str>> AnswerError<B> for TextAnswer {
    #[inline]
    fn answer(err: &(dyn Error + 'static)) -> http::Response<B> {
        response_for_error(err)
    }

    fn internal_error() -> http::Response<B> {
        let mut res = http::Response::new(B::from(INTERNAL_ERROR_BODY));
        *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        res
    }
}
