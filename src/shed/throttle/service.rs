//! The client-side throttle's service.
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ThrottleFuture;
use super::layer::ThrottleShared;
use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::{BoxError, Overloaded};
use crate::hold::{Head, HoldVerdict};

/// The `detail` of a refusal.
pub(crate) const DETAIL_THROTTLED: &str = "throttled";
use crate::observe::{EventKind, LayerKind};

/// A client service under adaptive throttling; built by
/// [`ThrottleLayer`](super::ThrottleLayer).
///
/// `poll_ready` forwards the inner service's readiness; the throttling
/// decision is made in `call`: a throttled call fails at once with
/// [`Overloaded`] (event detail `"throttled"`) without reaching the inner
/// service.
pub struct Throttle<S, C = ErrorsAsFailures, M = Head> {
    inner: S,
    shared: Arc<ThrottleShared>,
    classifier: Arc<C>,
    hold: PhantomData<fn() -> M>,
}

impl<S, C, M> Throttle<S, C, M> {
    pub(crate) fn new(inner: S, shared: Arc<ThrottleShared>, classifier: Arc<C>) -> Self {
        Throttle {
            inner,
            shared,
            classifier,
            hold: PhantomData,
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

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, M> Clone for Throttle<S, C, M> {
    fn clone(&self) -> Self {
        Throttle {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            classifier: Arc::clone(&self.classifier),
            hold: PhantomData,
        }
    }
}

impl<S: fmt::Debug, C, M> fmt::Debug for Throttle<S, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, C, M, Req> Service<Req> for Throttle<S, C, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error>,
    M: HoldVerdict<S::Response, C>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ThrottleFuture<S::Future, C, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let now = crate::clock::edge_now();
        let admitted = self.shared.window().admit(now);
        let observer = &self.shared.observer;
        if !admitted {
            // No hint: the rejection chance comes from a two-minute window
            // and will not have changed a moment later; a retry layer above
            // keeps its own backoff.
            observer.emit(
                LayerKind::Throttle,
                self.shared.name.as_str(),
                EventKind::Rejected {
                    reason: crate::error::RejectionKind::Overloaded,
                    detail: DETAIL_THROTTLED,
                    retry_after: None,
                },
            );
            return ThrottleFuture::rejected(
                Overloaded::local(self.shared.name.clone(), None).into(),
            );
        }
        observer.emit(
            LayerKind::Throttle,
            self.shared.name.as_str(),
            EventKind::CallStarted,
        );
        ThrottleFuture::called(
            self.inner.call(req),
            Arc::clone(&self.shared),
            Arc::clone(&self.classifier),
            now,
        )
    }
}
