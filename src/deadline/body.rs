//! [`DeadlineBody`]: a response body held to the deadline of the call that
//! produced it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::Deadline;
use super::layer::Shared;
use super::service::{TIMED_OUT, reject_deadline};
use crate::error::BoxError;
use crate::observe::LayerKind;

pin_project! {
    /// A response body that ends with a
    /// [`DeadlineExceeded`](crate::error::DeadlineExceeded) error (event
    /// detail `"timed_out"`) if the call's deadline passes while it is
    /// still streaming: the deadline covers the whole call, not only the
    /// wait for the head.
    ///
    /// It holds its timer inline (no allocation), so, like tower-http's
    /// `TimeoutBody`, it is `!Unpin`: `BodyExt::collect` takes it as it is;
    /// for `BodyExt::frame`, pin it first (`let mut body =
    /// std::pin::pin!(res.into_body());`). `into_inner()` drops the
    /// deadline.
    ///
    /// [`PropagateDeadline`](super::PropagateDeadline) (in the HTTP and gRPC
    /// client presets) puts every response body in one, with the deadline it
    /// sent the server: the attempt's time left (the attempt timeout or the
    /// total budget, whichever ends first). A body that is complete when the
    /// head arrives, or a call with no deadline, arms no timer (the timer is
    /// armed by the first read that finds the body unfinished). A gRPC
    /// response (`content-type: application/grpc…`) ends with the
    /// `DEADLINE_EXCEEDED` status instead (feature `tonic`), as a generated
    /// client reports it. On the server side,
    /// [`DeadlineFromHeaders`](super::DeadlineFromHeaders) (in the server
    /// presets) holds its answers to the caller's deadline the same way: an
    /// HTTP answer still streaming is cut off (the connection reports an
    /// incomplete body), a gRPC one ends with `grpc-status: 4` in its
    /// trailers. The retry layer, the breaker and the bulkhead look
    /// at heads only: a body cut off after its head arrived is not retried,
    /// and the error reaches whoever reads the body.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        // The deadline, and the layer that reports its passing.
        limit: Option<(Deadline, Arc<Shared>)>,
        ending: Ending,
        expired: bool,
    }
}

/// How a body cut by its deadline ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// With the `DeadlineExceeded` rejection as the body's error.
    Error,
    /// With the `DEADLINE_EXCEEDED` status as the error (a gRPC reply read
    /// by this process).
    GrpcStatus,
    /// With `grpc-status: 4` in trailers (a gRPC answer this process sends).
    GrpcTrailers,
}

impl<B> DeadlineBody<B> {
    /// `inner` held to `deadline`, reported as the layer `shared` names. The
    /// timer is armed on the first poll that finds the body unfinished.
    pub(crate) fn new(
        inner: B,
        deadline: Option<Deadline>,
        shared: &Arc<Shared>,
        grpc: bool,
    ) -> Self {
        DeadlineBody {
            inner,
            sleep: None,
            limit: deadline.map(|d| (d, shared.clone())),
            ending: if grpc {
                Ending::GrpcStatus
            } else {
                Ending::Error
            },
            expired: false,
        }
    }

    /// The body of an answer this process sends (server side): a gRPC one
    /// ends with `grpc-status: 4` (`DEADLINE_EXCEEDED`) in its trailers
    /// instead of an error.
    pub(crate) fn answering(mut self) -> Self {
        if self.ending == Ending::GrpcStatus {
            self.ending = Ending::GrpcTrailers;
        }
        self
    }

    /// A body with no deadline.
    pub fn unlimited(inner: B) -> Self {
        DeadlineBody {
            inner,
            sleep: None,
            limit: None,
            ending: Ending::Error,
            expired: false,
        }
    }

    /// The deadline the body is held to, if any.
    pub fn deadline(&self) -> Option<Deadline> {
        self.limit.as_ref().map(|(d, _)| *d)
    }

    /// The body inside.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The body inside (the deadline is dropped with the wrapper).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for DeadlineBody<B> {
    /// An empty body with no deadline (what an answer made by a layer
    /// carries).
    fn default() -> Self {
        DeadlineBody::unlimited(B::default())
    }
}

impl<B: From<&'static str>> From<&'static str> for DeadlineBody<B> {
    /// A text body with no deadline (what an answer made by a layer
    /// carries).
    fn from(text: &'static str) -> Self {
        DeadlineBody::unlimited(B::from(text))
    }
}

impl<B: fmt::Debug> fmt::Debug for DeadlineBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineBody")
            .field("inner", &self.inner)
            .field("deadline", &self.deadline())
            .field("armed", &self.sleep.is_some())
            .field("expired", &self.expired)
            .finish()
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        let Some((deadline, shared)) = this.limit.as_ref() else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        if this.sleep.is_none() {
            if this.inner.is_end_stream() {
                return this.inner.poll_frame(cx).map_err(Into::into);
            }
            this.sleep
                .set(Some(tokio::time::sleep_until(deadline.instant())));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                *this.expired = true;
                let error = reject_deadline(LayerKind::Deadline, shared, TIMED_OUT);
                return Poll::Ready(Some(match *this.ending {
                    Ending::Error => Err(error),
                    Ending::GrpcStatus => Err(grpc_status(error)),
                    Ending::GrpcTrailers => Ok(Frame::trailers(deadline_trailers(&error))),
                }));
            }
        }
        this.inner.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `DEADLINE_EXCEEDED` status a generated client reports (feature
/// `tonic`; without it, the rejection itself).
fn grpc_status(error: BoxError) -> BoxError {
    #[cfg(feature = "tonic")]
    return Box::new(tonic::Status::deadline_exceeded(error.to_string()));
    #[cfg(not(feature = "tonic"))]
    error
}

/// The trailers that end a gRPC answer cut by its deadline.
fn deadline_trailers(error: &BoxError) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
    // Printable ASCII only (names are validated): no percent-encoding needed.
    if let Ok(message) = http::HeaderValue::from_str(&error.to_string()) {
        trailers.insert("grpc-message", message);
    }
    trailers
}
