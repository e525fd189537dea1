//! The server side of "retry at one layer": the attempt an inbound request arrived as.
use std::task::{Context, Poll};

use http::{HeaderName, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::local::Scoped;
#[cfg(doc)]
use crate::retry::ATTEMPT_HEADER;
use crate::retry::inbound::{scope_inbound_attempt, sync_scope_inbound_attempt};

/// The attempt number an inbound request arrived as, recorded in its
/// extensions by [`MarkInboundAttemptLayer`] when it is a retry (above 1);
/// a request without it is a first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InboundAttempt(pub u32);

/// The attempt number an inbound request says it is: the
/// [`ATTEMPT_HEADER`], or gRPC's
/// `grpc-previous-rpc-attempts` plus one; 1 when neither is present or
/// readable.
pub fn attempt_of<B>(req: &Request<B>) -> u32 {
    // At most 9 digits: fits in a u32.
    let header = |name: &HeaderName| -> Option<u32> {
        let v = req.headers().get(name)?;
        let n = crate::deadline::wire::header_number(v.as_bytes(), 9).ok()?;
        u32::try_from(n).ok()
    };
    let own = header(&super::ATTEMPT_NAME).filter(|n| *n >= 1);
    let grpc = header(&super::PREVIOUS_ATTEMPTS_NAME).map(|n| n.saturating_add(1));
    own.into_iter().chain(grpc).max().unwrap_or(1)
}

/// Server side of the "retry at one layer" guard: records the attempt an
/// inbound request arrived as (see [`attempt_of`]) in its extensions
/// ([`InboundAttempt`]) and in the task-local
/// [`inbound_attempt`](crate::retry::inbound_attempt) while it is handled, so the
/// retry layers of client stacks called by the handler send a retried
/// request's sub-requests only once.
///
/// `poll_ready` is the inner service's. Malformed attempt headers count as
/// attempt 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct MarkInboundAttemptLayer {
    _private: (),
}

impl MarkInboundAttemptLayer {
    /// The layer.
    pub const fn new() -> Self {
        MarkInboundAttemptLayer { _private: () }
    }
}

impl<S> Layer<S> for MarkInboundAttemptLayer {
    type Service = MarkInboundAttempt<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MarkInboundAttempt { inner }
    }
}

/// The service of [`MarkInboundAttemptLayer`].
#[derive(Debug, Clone)]
pub struct MarkInboundAttempt<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for MarkInboundAttempt<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Scoped<u32, S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let attempt = attempt_of(&req);
        // A first attempt needs no mark (absent means 1): no extension
        // insert for the common case.
        if attempt > 1 {
            req.extensions_mut().insert(InboundAttempt(attempt));
        }
        // Built whole inside the scope (ARCHITECTURE.md, the shape of every
        // layer).
        let inner = &mut self.inner;
        sync_scope_inbound_attempt(attempt, || scope_inbound_attempt(attempt, inner.call(req)))
    }
}
