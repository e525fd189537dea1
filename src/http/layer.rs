use std::fmt;
use std::marker::PhantomData;

use tower_layer::Layer;

use super::answer::sealed::Sealed;
use super::service::AnswerErrors;

/// Wraps a service in [`AnswerErrors`]: its errors become `Ok` responses
/// built by `A`. Use it through its aliases,
/// [`RejectionResponseLayer`](super::RejectionResponseLayer) (plain-text HTTP
/// answers) and, with feature `tonic`, `seawall::grpc::GrpcRejectionLayer`
/// (trailers-only gRPC answers). It holds no state.
pub struct AnswerErrorsLayer<A> {
    _answer: PhantomData<fn() -> A>,
}

impl<A> AnswerErrorsLayer<A> {
    /// Creates the layer.
    pub const fn new() -> Self {
        AnswerErrorsLayer {
            _answer: PhantomData,
        }
    }
}

impl<A> Default for AnswerErrorsLayer<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A> Clone for AnswerErrorsLayer<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for AnswerErrorsLayer<A> {}

impl<A: Sealed> fmt::Debug for AnswerErrorsLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(A::LAYER).field("_priv", &()).finish()
    }
}

impl<S, A> Layer<S> for AnswerErrorsLayer<A> {
    type Service = AnswerErrors<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AnswerErrors::new(inner)
    }
}
