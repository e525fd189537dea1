use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::fault::Plan;
use super::future::ResponseFuture;
use super::layer::Shared;

/// The service built by [`ChaosLayer`](super::ChaosLayer).
///
/// **Readiness.** The next call's plan is drawn in `poll_ready`. A call
/// planned to fail is ready at once and returns its error without touching
/// the inner service: it reserves nothing there (no `ConcurrencyLimit` or
/// `Buffer` slot, no bulkhead permit), so an outage fails fast even behind
/// a busy inner service. Any other call is ready when the inner service is;
/// one that gets injected latency calls the inner service at once (using
/// the readiness it reserved), and its future first polls the inner future
/// once the delay has passed. A service kept ready (a balancer's ready
/// cache) keeps its plan: an outage window is judged when the service was
/// made ready, and under a balancer an endpoint whose next call is planned
/// to fail is ready at once, so it may be picked a little more often than
/// its busy peers.
pub struct Chaos<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The plan drawn by `poll_ready` for the next call.
    planned: Option<Plan>,
}

impl<S: Clone> Clone for Chaos<S> {
    fn clone(&self) -> Self {
        // A clone draws its own plan (and reserves its own readiness).
        Chaos {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            planned: None,
        }
    }
}

impl<S> Chaos<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Chaos {
            inner,
            shared,
            planned: None,
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
        let plan = *self.planned.get_or_insert_with(|| self.shared.next_plan());
        if plan.fault.is_some() {
            // Fails without the inner service: nothing to reserve there.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // A call without `poll_ready` first (a contract breach) still gets a
        // plan of its own.
        let plan = self
            .planned
            .take()
            .unwrap_or_else(|| self.shared.next_plan());
        let delay = plan.delay.map(tokio::time::sleep);
        match plan.fault {
            Some(fault) => ResponseFuture::fail(delay, self.shared.error(fault)),
            None => ResponseFuture::call(delay, self.inner.call(req)),
        }
    }
}
