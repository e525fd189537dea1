use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;

/// The service built by [`ChaosLayer`](super::ChaosLayer).
///
/// **Readiness.** `poll_ready` is the inner service's. A call that gets an
/// injected fault then returns its error without calling the inner service.
/// A call that gets injected latency calls the inner service at once (using
/// the readiness it reserved), and its future first polls the inner future
/// once the delay has passed.
#[derive(Clone)]
pub struct Chaos<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Chaos<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Chaos { inner, shared }
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

impl<S: fmt::Debug> fmt::Debug for Chaos<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, Req> Service<Req> for Chaos<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let plan = self.shared.next_plan();
        let delay = plan.delay.map(tokio::time::sleep);
        match plan.fault {
            Some(fault) => ResponseFuture::fail(delay, self.shared.error(fault)),
            None => ResponseFuture::call(delay, self.inner.call(req)),
        }
    }
}
