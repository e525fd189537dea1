//! The client side's answer to errors: a `tonic::Status`, with the error it
//! came from as its source.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use super::status::status_for_error;
use crate::error::BoxError;

/// Wraps seawall layers around a tonic transport (a `Channel`) so that their
/// errors reach the caller as a `tonic::Status` with the mapped code,
/// message and pushback (the table of the [module docs](super)), **and the
/// error it came from as the status's source**: a generated client returns
/// that status as is, and
/// [`error::rejection(&status)`](crate::error::rejection) finds this
/// process's own refusal in it — its kind, the name of the layer and its
/// `retry_after` — where a status answered by the server has none. The
/// outermost part of the [gRPC client preset](crate::ClientStack::grpc).
///
/// A readiness error of the layers inside is kept and answered by the next
/// `call` (a generated client would report a failed `poll_ready` as
/// `UNKNOWN`); the following `poll_ready` asks the layers inside again.
/// Put it **outside** the seawall layers it answers for; on a server, use
/// [`GrpcRejectionLayer`](super::GrpcRejectionLayer), which answers with
/// trailers-only responses. It holds no state.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use seawall::error::{CircuitOpen, rejection};
/// use seawall::grpc::StatusErrorsLayer;
/// use seawall::{BoxError, RejectionKind};
/// use tower::{Layer, ServiceExt};
///
/// // A layer inside that refuses, as an open breaker does.
/// let refusing = tower::service_fn(|_: ()| async {
///     Err::<(), BoxError>(CircuitOpen::new("greeter.breaker", Some(Duration::from_millis(800))).into())
/// });
/// let status = StatusErrorsLayer::new().layer(refusing).oneshot(()).await.unwrap_err();
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "800");
/// // This process's own refusal, named:
/// let own = rejection(&status).expect("a seawall rejection");
/// assert_eq!(own.kind(), RejectionKind::CircuitOpen);
/// assert_eq!(own.name(), "greeter.breaker");
/// assert_eq!(own.retry_after(), Some(Duration::from_millis(800)));
///
/// // A server's status is not one.
/// assert!(rejection(&tonic::Status::unavailable("circuit open")).is_none());
/// # }
/// ```
#[derive(Clone, Copy, Default)]
pub struct StatusErrorsLayer {
    _private: (),
}

impl StatusErrorsLayer {
    /// The layer.
    pub const fn new() -> Self {
        StatusErrorsLayer { _private: () }
    }
}

impl fmt::Debug for StatusErrorsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusErrorsLayer")
    }
}

impl<S> Layer<S> for StatusErrorsLayer {
    type Service = StatusErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusErrors::new(inner)
    }
}

/// The service of [`StatusErrorsLayer`]: the inner service's response, or
/// its error as a `tonic::Status` whose source is that error.
pub struct StatusErrors<S> {
    inner: S,
    ready_error: Option<BoxError>,
}

impl<S> StatusErrors<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        StatusErrors {
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

impl<S: Clone> Clone for StatusErrors<S> {
    fn clone(&self) -> Self {
        // A pending readiness error belongs to the clone that saw it.
        StatusErrors::new(self.inner.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for StatusErrors<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusErrors")
            .field("inner", &self.inner)
            .field("ready_error", &self.ready_error.is_some())
            .finish()
    }
}

impl<S, Req> Service<Req> for StatusErrors<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Status;
    type Future = StatusErrorsFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        crate::http::poll_ready_keeping(&mut self.inner, &mut self.ready_error, cx).map(Ok)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.ready_error.take() {
            Some(err) => StatusErrorsFuture {
                inner: None,
                failed: Some(status_from(err)),
            },
            None => StatusErrorsFuture {
                inner: Some(self.inner.call(req)),
                failed: None,
            },
        }
    }
}

pin_project! {
    /// The response future of [`StatusErrors`].
    pub struct StatusErrorsFuture<F> {
        #[pin]
        inner: Option<F>,
        failed: Option<Status>,
    }
}

impl<F> fmt::Debug for StatusErrorsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusErrorsFuture")
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for StatusErrorsFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Status>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(|e| status_from(e.into())),
            None => Poll::Ready(Err(this
                .failed
                .take()
                .unwrap_or_else(|| Status::unknown("polled after completion")))),
        }
    }
}

/// The status for `err` (see [`status_for`](super::status_for)), with `err`
/// as its source; a `tonic::Status` itself is returned as it is.
fn status_from(err: BoxError) -> Status {
    let err = match err.downcast::<Status>() {
        Ok(status) => return *status,
        Err(err) => err,
    };
    let mut status = status_for_error(&*err);
    status.set_source(Arc::from(err));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{DeadlineExceeded, rejection};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_status_from_below_is_handed_on_as_it_is() {
        let svc = tower::service_fn(|_: ()| async {
            Err::<(), BoxError>(Status::permission_denied("no").into())
        });
        let status = StatusErrors::new(svc).oneshot(()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "no");
        assert!(rejection(&status).is_none());
    }

    #[tokio::test]
    async fn a_readiness_error_is_answered_by_the_next_call() {
        struct FailsReady;
        impl Service<()> for FailsReady {
            type Response = ();
            type Error = BoxError;
            type Future = std::future::Ready<Result<(), BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Err(DeadlineExceeded::new("edge").into()))
            }
            fn call(&mut self, _: ()) -> Self::Future {
                unreachable!("never ready")
            }
        }
        let status = StatusErrors::new(FailsReady).oneshot(()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(rejection(&status).map(|r| r.name()), Some("edge"));
    }

    #[tokio::test]
    async fn any_other_error_is_unknown_and_kept_as_the_source() {
        let svc = tower::service_fn(|_: ()| async { Err::<(), BoxError>("disk on fire".into()) });
        let status = StatusErrors::new(svc).oneshot(()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert_eq!(status.message(), "internal error");
        let source = std::error::Error::source(&status).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("disk on fire"));
    }
}
