use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::answer::AnswerError;

pin_project! {
    /// The response future of [`AnswerErrors`](super::AnswerErrors): the inner
    /// service's response, or the answer `A` builds for its error.
    pub(crate) struct AnswerErrorsFuture<F, B, A> {
        #[pin]
        kind: Kind<F, B>,
        _answer: PhantomData<fn() -> A>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Ready { response: Option<http::Response<B>> },
    }
}

impl<F, B, A> AnswerErrorsFuture<F, B, A> {
    pub(crate) fn new(future: F) -> Self {
        AnswerErrorsFuture {
            kind: Kind::Inner { future },
            _answer: PhantomData,
        }
    }

    pub(crate) fn ready(response: http::Response<B>) -> Self {
        AnswerErrorsFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
            _answer: PhantomData,
        }
    }
}

impl<F, B, A> fmt::Debug for AnswerErrorsFuture<F, B, A> {
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

impl<F, B, E, A> Future for AnswerErrorsFuture<F, B, A>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    A: AnswerError<B>,
{
    type Output = Result<http::Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => match ready!(future.poll(cx)) {
                Ok(res) => Poll::Ready(Ok(res)),
                Err(err) => {
                    let err: BoxError = err.into();
                    Poll::Ready(Ok(A::answer(&*err)))
                }
            },
            // Polled again after completion: answer a generic error rather
            // than panic.
            KindProj::Ready { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(A::internal_error)))
            }
        }
    }
}
