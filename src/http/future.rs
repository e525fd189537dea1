use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::response::{INTERNAL_ERROR_BODY, response_for_error};

pin_project! {
    /// The response future of [`RejectionResponse`](super::RejectionResponse).
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Ready { response: Option<http::Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn ready(response: http::Response<B>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: From<&'static str>,
{
    type Output = Result<http::Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => match ready!(future.poll(cx)) {
                Ok(res) => Poll::Ready(Ok(res)),
                Err(err) => {
                    let err: BoxError = err.into();
                    Poll::Ready(Ok(response_for_error(&*err)))
                }
            },
            KindProj::Ready { response } => Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                // Polled again after completion: answer a generic error
                // rather than panic.
                let mut res = http::Response::new(B::from(INTERNAL_ERROR_BODY));
                *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                res
            }))),
        }
    }
}
