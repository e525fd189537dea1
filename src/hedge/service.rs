use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use crate::error::BoxError;
use crate::retry::RetryPolicy;

/// A service whose slow requests get hedged (built by
/// [`HedgeLayer`](super::HedgeLayer)).
///
/// `poll_ready` forwards the inner service's readiness. A request that may
/// be hedged is cloned at `call`, with the inner service (tower's `Retry`
/// does the same); each hedge waits for that clone to be ready.
pub struct Hedge<S, P> {
    inner: S,
    shared: Arc<Shared<P>>,
}

impl<S, P> Hedge<S, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<P>>) -> Self {
        Hedge { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the hedge.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P> Clone for Hedge<S, P> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Hedge<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Hedge<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let shared = &*self.shared;
        if shared.deposits {
            shared.budget.deposit();
        }
        // Only one layer of a call chain hedges: a request that arrived as a
        // retry or a hedge from upstream is sent once.
        let upstream_retry = crate::retry::inbound::arrived_as_retry(&shared.policy, &req);
        let copy = if upstream_retry || !shared.policy.may_hedge(&req) {
            None
        } else {
            shared.policy.clone_request(&req)
        };
        let service = copy.as_ref().map(|_| self.inner.clone());
        let started = crate::clock::edge_now();
        let future = self.inner.call(req);
        ResponseFuture::new(future, self.shared.clone(), service, copy, started)
    }
}
