//! How an error becomes a response: the [`AnswerError`] trait and the plain-text
//! answer, free of tower types.

use std::error::Error;

use super::response::{INTERNAL_ERROR_BODY, response_for_error};

/// Builds the `Ok` response that [`AnswerErrors`](super::AnswerErrors) returns
/// in place of an error.
///
/// Implemented by [`TextAnswer`] (plain-text HTTP responses, for
/// [`RejectionResponseLayer`](super::RejectionResponseLayer)) and, with
/// feature `tonic`, by `seawall::grpc::GrpcAnswer` (trailers-only gRPC
/// responses, for `seawall::grpc::GrpcRejectionLayer`). The trait is sealed:
/// it names the response format of a layer and is not implemented outside
/// seawall.
pub trait AnswerError<B>: sealed::Sealed {
    /// The response for `err`: the mapped answer for a seawall rejection
    /// (found through `source()` chains), a generic error otherwise.
    fn answer(err: &(dyn Error + 'static)) -> http::Response<B>;

    /// The generic internal-error response, answered when a finished response
    /// future is polled again.
    fn internal_error() -> http::Response<B>;
}

pub(crate) mod sealed {
    /// Seals [`AnswerError`](super::AnswerError) and names the layer and
    /// service types in their `Debug` output.
    // Reachable only as a supertrait; not nameable outside the crate.
    #[allow(unreachable_pub)]
    pub trait Sealed {
        /// The name the layer's `Debug` output uses.
        const LAYER: &'static str;
        /// The name the service's `Debug` output uses.
        const SERVICE: &'static str;
    }
}

/// Answers errors with plain-text HTTP responses: the mapped status,
/// `Retry-After` and short body for a seawall rejection, a generic `500`
/// otherwise (see the [module docs](crate::http)). Works for any body type
/// that can be built from a `&'static str`.
///
/// A type-level marker (it has no values): the answer of
/// [`RejectionResponseLayer`](super::RejectionResponseLayer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextAnswer {}

impl sealed::Sealed for TextAnswer {
    const LAYER: &'static str = "RejectionResponseLayer";
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
