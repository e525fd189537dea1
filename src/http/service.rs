use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::answer::{AnswerError, sealed::Sealed};
use super::future::AnswerErrorsFuture;

/// The service built by [`AnswerErrorsLayer`](super::AnswerErrorsLayer):
/// turns the inner service's `Err` into an `Ok` HTTP response built by `A`
/// ([`TextAnswer`](super::TextAnswer) for
/// [`RejectionResponse`](super::RejectionResponse), `GrpcAnswer` for
/// `seawall::grpc::GrpcRejection`). Its error type is
/// [`Infallible`](std::convert::Infallible).
///
/// **Readiness.** `poll_ready` passes the inner service's readiness through.
/// If the inner service *fails* readiness, the error is kept and `poll_ready`
/// reports ready; the next `call` answers that error as a response without
/// calling the inner service, and the following `poll_ready` asks the inner
/// service again.
pub struct AnswerErrors<S, A> {
    inner: S,
    ready_error: Option<BoxError>,
    _answer: PhantomData<fn() -> A>,
}

impl<S, A> AnswerErrors<S, A> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        AnswerErrors {
            inner,
            ready_error: None,
            _answer: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, A> Clone for AnswerErrors<S, A> {
    fn clone(&self) -> Self {
        // A pending readiness error belongs to the clone that saw it.
        AnswerErrors::new(self.inner.clone())
    }
}

impl<S: fmt::Debug, A: Sealed> fmt::Debug for AnswerErrors<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(A::SERVICE)
            .field("inner", &self.inner)
            .field("ready_error", &self.ready_error.is_some())
            .finish()
    }
}

impl<S, Req, B, A> Service<Req> for AnswerErrors<S, A>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    A: AnswerError<B>,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = AnswerErrorsFuture<S::Future, B, A>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                self.ready_error = Some(err.into());
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.ready_error.take() {
            Some(err) => AnswerErrorsFuture::ready(A::answer(&*err)),
            None => AnswerErrorsFuture::new(self.inner.call(req)),
        }
    }
}
