//! The innermost part of the gRPC client preset: a tonic transport (a
//! `Channel`) as the stack needs it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{AttemptTimeout, BoxError, Name};

/// Adapts a tonic transport (a `Channel`, or any service of
/// `http::Request<tonic::body::Body>`) to the gRPC client stack; the
/// innermost layer of [`ClientStack::grpc`](crate::stack::ClientStack::grpc).
///
/// - **Request bodies**: takes any request body (the replayable one of the
///   retry layer) and hands the transport a `tonic::body::Body`.
/// - **Its own timer**: a `Channel` enforces the `grpc-timeout` it sends and
///   fails with tonic's `TimeoutExpired` at the same instant as the attempt
///   timeout above; that error becomes seawall's
///   [`AttemptTimeout`](crate::error::AttemptTimeout), so the expiry means one
///   thing whichever timer wins (retried when opted in and budget is left,
///   `DEADLINE_EXCEEDED` for the caller otherwise, never `UNKNOWN`).
/// - **Other transport errors** (connection refused or reset) become the
///   `tonic::Status` tonic itself would report (`UNAVAILABLE`), so the
///   classifier and the retry policy read a code.
/// - **A failure sent as headers, then trailers** (what grpc-go, grpcio and
///   others send when a handler set metadata before failing): when a
///   response head has no `grpc-status`, the first frame of its body is
///   awaited for at most 20 ms before the response is handed up. Trailers
///   with a failure status and no message before them are moved into the
///   head, exactly as a *trailers-only* response, so the breaker and the
///   retry layer above see the status. Anything else (data, `OK` trailers)
///   is kept and sent on first: nothing is lost or copied. Empty data frames
///   are skipped.
///
/// So a response head is handed up when its first frame arrives or 20 ms
/// after the head, whichever is first: a stream whose first message comes
/// later is not held back longer than that. A status in trailers *after* a
/// message is not seen here.
#[derive(Debug, Clone)]
pub struct TonicTransportLayer {
    attempt_name: Name,
}

impl TonicTransportLayer {
    /// The layer; a `Channel`'s own timeout becomes an
    /// [`AttemptTimeout`](crate::error::AttemptTimeout) named `attempt_name`.
    pub fn new(attempt_name: impl Into<Name>) -> Self {
        TonicTransportLayer {
            attempt_name: attempt_name.into(),
        }
    }
}

impl<S> Layer<S> for TonicTransportLayer {
    type Service = TonicTransport<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TonicTransport {
            inner,
            attempt_name: self.attempt_name.clone(),
        }
    }
}

/// The service of [`TonicTransportLayer`]. `poll_ready` is the transport's.
#[derive(Debug, Clone)]
pub struct TonicTransport<S> {
    inner: S,
    attempt_name: Name,
}

impl<S> TonicTransport<S> {
    /// The wrapped transport.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<http::Request<B>> for TonicTransport<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = TonicTransportFuture<S::Future, RB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| transport_error(e.into(), &self.attempt_name))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        TonicTransportFuture {
            state: State::Calling {
                future: self.inner.call(req.map(tonic::body::Body::new)),
            },
            attempt_name: self.attempt_name.clone(),
        }
    }
}

/// tonic's `TimeoutExpired` as an `AttemptTimeout`; any other transport
/// error as the `Status` tonic would make of it.
fn transport_error(err: BoxError, attempt_name: &Name) -> BoxError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    while let Some(e) = cur {
        if e.is::<tonic::TimeoutExpired>() {
            return AttemptTimeout::new(attempt_name.clone()).into();
        }
        if e.is::<Status>() || crate::error::rejection(e).is_some() {
            return err;
        }
        cur = e.source();
    }
    Box::new(Status::from_error(err))
}

/// How long a response head without `grpc-status` waits for its body's
/// first frame before it is handed up as it is. A failure sent as headers
/// then trailers arrives at once (in the same flight); a stream whose first
/// message comes later is not held back longer than this.
pub(crate) const PEEK_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

pin_project! {
    #[project = StateProj]
    enum State<F, RB> {
        Calling { #[pin] future: F },
        Peeking {
            parts: Option<http::response::Parts>,
            body: Option<RB>,
            #[pin]
            timer: Option<tokio::time::Sleep>,
        },
    }
}

pin_project! {
    /// The response future of [`TonicTransport`].
    pub struct TonicTransportFuture<F, RB> {
        #[pin]
        state: State<F, RB>,
        attempt_name: Name,
    }
}

impl<F, RB> fmt::Debug for TonicTransportFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::Peeking { .. } => "reading the first frame",
        };
        f.debug_struct("TonicTransportFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, E, RB> Future for TonicTransportFuture<F, RB>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<BoxError>,
{
    type Output = Result<http::Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let res = match ready!(future.poll(cx)) {
                        Ok(res) => res,
                        Err(e) => {
                            return Poll::Ready(Err(transport_error(e.into(), this.attempt_name)));
                        }
                    };
                    if res.status() != http::StatusCode::OK
                        || res.headers().contains_key(Status::GRPC_STATUS)
                    {
                        // Trailers-only, or not gRPC at all: the head says it.
                        return Poll::Ready(Ok(res.map(tonic::body::Body::new)));
                    }
                    let (parts, body) = res.into_parts();
                    this.state.set(State::Peeking {
                        parts: Some(parts),
                        body: Some(body),
                        timer: None,
                    });
                }
                StateProj::Peeking {
                    parts,
                    body,
                    mut timer,
                } => {
                    let Some(b) = body.as_mut() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let frame = match Pin::new(b).poll_frame(cx) {
                        Poll::Ready(frame) => frame,
                        Poll::Pending => {
                            // Wait a little for the first frame, no longer.
                            if timer.is_none() {
                                timer.set(Some(tokio::time::sleep(PEEK_WAIT)));
                            }
                            let expired = timer.as_pin_mut().is_some_and(|t| t.poll(cx).is_ready());
                            if !expired {
                                return Poll::Pending;
                            }
                            let (Some(parts), Some(body)) = (parts.take(), body.take()) else {
                                return Poll::Ready(Err("polled after completion".into()));
                            };
                            return Poll::Ready(Ok(http::Response::from_parts(
                                parts,
                                tonic::body::Body::new(body),
                            )));
                        }
                    };
                    // An empty data frame says nothing: read on.
                    if let Some(Ok(f)) = &frame {
                        if f.data_ref().is_some_and(|d| d.is_empty()) {
                            continue;
                        }
                    }
                    let (Some(mut parts), Some(body)) = (parts.take(), body.take()) else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let body = match frame {
                        None => tonic::body::Body::empty(),
                        Some(Err(e)) => {
                            return Poll::Ready(Err(transport_error(e.into(), this.attempt_name)));
                        }
                        Some(Ok(frame)) => match frame.into_trailers() {
                            // Headers, then trailers with a failure and no
                            // message: the same as a trailers-only answer.
                            Ok(trailers) if is_failure(&trailers) => {
                                // Each trailer replaces the header of its
                                // name, every value of it kept.
                                for name in trailers.keys() {
                                    parts.headers.remove(name);
                                }
                                for (name, value) in &trailers {
                                    parts.headers.append(name, value.clone());
                                }
                                tonic::body::Body::empty()
                            }
                            // An `OK` with no message (a stream with none):
                            // the trailers stay trailers, for the client.
                            Ok(trailers) => tonic::body::Body::new(Prepended {
                                first: Some(Frame::trailers(trailers)),
                                rest: body,
                            }),
                            Err(frame) => tonic::body::Body::new(Prepended {
                                first: Some(frame),
                                rest: body,
                            }),
                        },
                    };
                    return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
                }
            }
        }
    }
}

use crate::http::failed_grpc_status as is_failure;

pin_project! {
    /// A body whose first frame was read ahead: that frame, then the rest.
    struct Prepended<B> {
        first: Option<Frame<Bytes>>,
        #[pin]
        rest: B,
    }
}

impl<B> Body for Prepended<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.rest.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().and_then(|f| f.data_ref());
        crate::http::hint_plus(self.rest.size_hint(), first.map_or(0, |d| d.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_status_other_than_ok_in_trailers_is_a_failure() {
        let with = |code: Option<&'static str>| {
            let mut t = http::HeaderMap::new();
            if let Some(c) = code {
                t.insert(Status::GRPC_STATUS, http::HeaderValue::from_static(c));
            }
            is_failure(&t)
        };
        assert!(!with(None), "no status: the stream's end decides");
        assert!(!with(Some("0")));
        assert!(with(Some("14")));
        assert!(with(Some("4")));
    }
}
