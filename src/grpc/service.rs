use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::status::{status_for_error, trailers_only};

/// The service built by [`GrpcRejectionLayer`](super::GrpcRejectionLayer):
/// turns the inner service's `Err` into a trailers-only gRPC response.
///
/// **Readiness.** `poll_ready` passes the inner service's readiness through.
/// If the inner service *fails* readiness, the error is kept and `poll_ready`
/// reports ready; the next `call` answers that error without calling the
/// inner service, and the following `poll_ready` asks the inner service again.
pub struct GrpcRejection<S> {
    inner: S,
    ready_error: Option<BoxError>,
}

impl<S> GrpcRejection<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        GrpcRejection {
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

impl<S: Clone> Clone for GrpcRejection<S> {
    fn clone(&self) -> Self {
        // A pending readiness error belongs to the clone that saw it.
        GrpcRejection::new(self.inner.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for GrpcRejection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcRejection")
            .field("inner", &self.inner)
            .field("ready_error", &self.ready_error.is_some())
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcRejection<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, ResBody>;

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

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        match self.ready_error.take() {
            Some(err) => ResponseFuture::ready(trailers_only(&status_for_error(&*err))),
            None => ResponseFuture::new(self.inner.call(req)),
        }
    }
}
