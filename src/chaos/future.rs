use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::BoxError;

use super::error::InjectedFault;
use super::fault::Fault;

pin_project! {
    /// The response future of [`Chaos`](super::Chaos): waits out the injected
    /// delay, if any, then polls the inner future or returns the injected
    /// error.
    pub struct ResponseFuture<F> {
        #[pin]
        delay: Option<Sleep>,
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Call { #[pin] future: F },
        Fail { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn call(delay: Option<Sleep>, future: F) -> Self {
        ResponseFuture {
            delay,
            kind: Kind::Call { future },
        }
    }

    pub(crate) fn fail(delay: Option<Sleep>, error: BoxError) -> Self {
        ResponseFuture {
            delay,
            kind: Kind::Fail { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Call { .. } => "call",
            Kind::Fail { .. } => "fail",
        };
        f.debug_struct("ResponseFuture")
            .field("delayed", &self.delay.is_some())
            .field("kind", &kind)
            .finish()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(sleep) = this.delay.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
            this.delay.set(None);
        }
        match this.kind.project() {
            KindProj::Call { future } => future.poll(cx).map_err(Into::into),
            KindProj::Fail { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| Box::new(InjectedFault::new("chaos", Fault::Error))))),
        }
    }
}
