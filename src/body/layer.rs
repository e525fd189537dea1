//! [`CallBodyLayer`]: the middleware that puts a call's bodies in
//! [`CallBody`] wrappers held to the call's deadline.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{CallBody, is_grpc};
use crate::deadline::Deadline;
use crate::deadline::layer::Shared;
use crate::deadline::service::{TIMED_OUT, reject_deadline};
use crate::error::{BoxError, ConfigError, Name};
use crate::observe::{LayerKind, Observer};

/// Puts a service's requests and answers in [`CallBody`] bodies held to
/// the request's deadline (the one it carries or the task-local one when
/// the service is called, whichever ends first): the innermost layer of the
/// server presets, so that the layers above can hold until the answer's
/// last byte (see [`hold`](crate::hold)) and the caller's deadline covers
/// the whole call.
///
/// - A handler still reading the request body when the deadline passes
///   reads a [`DeadlineExceeded`](crate::error::DeadlineExceeded) error.
///   The service below receives `http::Request<CallBody<B>>`: an axum
///   `Router` and tonic's routes take any body; a handler written for one
///   body type takes `CallBody<B>` (or calls `into_inner()`).
/// - A gRPC answer cut by its deadline ends with `grpc-status: 4`
///   (`DEADLINE_EXCEEDED`) in its trailers; an HTTP one is cut off (the
///   connection reports an incomplete body).
#[derive(Clone)]
pub struct CallBodyLayer {
    pub(super) shared: Arc<Shared>,
    deadline: bool,
}

impl CallBodyLayer {
    /// The layer, named `"body"`, with no observer.
    pub fn new() -> Self {
        CallBodyLayer::builder()
            .build()
            .expect("the default settings are valid")
    }

    /// A builder (name, observer, whether the deadline covers the body).
    pub fn builder() -> CallBodyLayerBuilder {
        CallBodyLayerBuilder {
            name: Name::from("body"),
            observer: Observer::none(),
            deadline: true,
        }
    }
}

impl Default for CallBodyLayer {
    fn default() -> Self {
        CallBodyLayer::new()
    }
}

impl fmt::Debug for CallBodyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallBodyLayer")
            .field("name", &self.shared.name)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Configures a [`CallBodyLayer`].
#[derive(Debug)]
pub struct CallBodyLayerBuilder {
    name: Name,
    observer: Observer,
    deadline: bool,
}

impl CallBodyLayerBuilder {
    crate::observe::name_and_observer!(
        "The instance name, reported with a `\"timed_out\"` rejection when a\ndeadline cuts a body (default `\"body\"`).",
        "The observer the cut is reported to."
    );

    /// Whether the deadline covers the body (default `true`); with `false`
    /// the bodies only carry what the layers above hold.
    pub fn body_deadline(mut self, covers: bool) -> Self {
        self.deadline = covers;
        self
    }

    /// Builds the layer.
    pub fn build(self) -> Result<CallBodyLayer, ConfigError> {
        Ok(CallBodyLayer {
            shared: Arc::new(Shared::new(
                std::time::Duration::ZERO,
                self.name,
                self.observer,
            )),
            deadline: self.deadline,
        })
    }
}

impl<S> Layer<S> for CallBodyLayer {
    type Service = CallBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallBodyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`CallBodyLayer`]. `poll_ready` is the inner service's.
#[derive(Clone, Debug)]
pub struct CallBodyService<S> {
    inner: S,
    layer: CallBodyLayer,
}

impl<S, B, RB> Service<http::Request<B>> for CallBodyService<S>
where
    S: Service<http::Request<CallBody<B>>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<CallBody<RB>>;
    type Error = BoxError;
    type Future = CallBodyFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = if self.layer.deadline {
            crate::deadline::of(&req)
        } else {
            None
        };
        // The request body too: a handler still reading it when the
        // deadline passes gets `DeadlineExceeded`.
        let shared = &self.layer.shared;
        let req = req.map(|body| CallBody::new(body, deadline, shared, false));
        CallBodyFuture {
            inner: self.inner.call(req),
            deadline,
            shared: Arc::clone(&self.layer.shared),
        }
    }
}

pin_project! {
    /// The response future of [`CallBodyService`].
    pub struct CallBodyFuture<F> {
        #[pin]
        inner: F,
        deadline: Option<Deadline>,
        shared: Arc<Shared>,
    }
}

impl<F> fmt::Debug for CallBodyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallBodyFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for CallBodyFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<CallBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = ready!(this.inner.poll(cx));
        // The handler ran: an instant read before its work is stale.
        crate::clock::handler_ran();
        let response = polled.map_err(Into::into)?;
        let grpc = is_grpc(&response);
        let deadline = *this.deadline;
        let shared = &*this.shared;
        // An answer made after the deadline (say, a handler that answered
        // the error of a request body cut at the deadline) would be cut
        // before its first byte, and the caller would see the connection
        // close without a status: the deadline's own answer goes instead
        // (504, `DEADLINE_EXCEEDED`).
        if deadline.is_some_and(|d| d.instant() <= crate::clock::edge_now()) {
            return Poll::Ready(Err(reject_deadline(LayerKind::Deadline, shared, TIMED_OUT)));
        }
        Poll::Ready(Ok(response.map(|body| {
            CallBody::new(body, deadline, shared, grpc).answering()
        })))
    }
}
