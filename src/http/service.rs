use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::response::response_for_error;

/// The service built by [`RejectionResponseLayer`](super::RejectionResponseLayer):
/// turns the inner service's `Err` into an `Ok` HTTP response.
///
/// **Readiness.** `poll_ready` passes the inner service's readiness through.
/// If the inner service *fails* readiness, the error is kept and `poll_ready`
/// reports ready; the next `call` answers that error as a response without
/// calling the inner service, and the following `poll_ready` asks the inner
/// service again.
pub struct RejectionResponse<S> {
    inner: S,
    ready_error: Option<BoxError>,
}

impl<S> RejectionResponse<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        RejectionResponse {
            inner,
            ready_error: None,
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

impl<S: Clone> Clone for RejectionResponse<S> {
    fn clone(&self) -> Self {
        // A pending readiness error belongs to the clone that saw it.
        RejectionResponse::new(self.inner.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for RejectionResponse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectionResponse")
            .field("inner", &self.inner)
            .field("ready_error", &self.ready_error.is_some())
            .finish()
    }
}

impl<S, Req, B> Service<Req> for RejectionResponse<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: From<&'static str>,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, B>;

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
            Some(err) => ResponseFuture::ready(response_for_error(&*err)),
            None => ResponseFuture::new(self.inner.call(req)),
        }
    }
}
