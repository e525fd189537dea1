//! Request bodies read once, up to a limit, so that a retry can send them again.
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::Request;
use http::header::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::DEFAULT_REPLAY_LIMIT;
use crate::error::BoxError;

pin_project! {
    /// A request body read ahead so it can be sent again: either fully
    /// buffered (replayable) or, when it was larger than the limit, the part
    /// read so far followed by the rest of the original body (sent once).
    ///
    /// Made by [`ReplayBodyLayer`], or directly with [`ReplayBody::full`].
    pub struct ReplayBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = ReplayProj]
    enum Inner<B> {
        // The whole body, in memory: the bytes not yet sent, and the trailers.
        Full {
            data: Bytes,
            trailers: Option<HeaderMap>,
        },
        // The bytes read ahead, then the rest of the original body.
        Streaming {
            prefix: Bytes,
            #[pin]
            rest: B,
        },
    }
}

impl<B> ReplayBody<B> {
    /// A replayable body holding `data`.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::buffered(data.into(), None)
    }

    fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ReplayBody {
            inner: Inner::Full { data, trailers },
        }
    }

    fn streaming(prefix: Bytes, rest: B) -> Self {
        ReplayBody {
            inner: Inner::Streaming { prefix, rest },
        }
    }

    /// Whether the body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.inner, Inner::Full { .. })
    }

    /// A fresh copy of a buffered body (cheap: the bytes are shared), or
    /// `None` if the body was too large to buffer.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            Inner::Full { data, trailers } => Some(Self::buffered(data.clone(), trailers.clone())),
            Inner::Streaming { .. } => None,
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Full { data, trailers } => f
                .debug_struct("ReplayBody::Full")
                .field("len", &data.len())
                .field("trailers", &trailers.is_some())
                .finish(),
            Inner::Streaming { prefix, .. } => f
                .debug_struct("ReplayBody::Streaming")
                .field("prefix_len", &prefix.len())
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            ReplayProj::Full { data, trailers } => {
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(data)))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ReplayProj::Streaming { prefix, rest } => {
                if !prefix.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(prefix)))));
                }
                match ready!(rest.poll_frame(cx)) {
                    None => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    ))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full { data, trailers } => data.is_empty() && trailers.is_none(),
            Inner::Streaming { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full { data, .. } => SizeHint::with_exact(data.len() as u64),
            Inner::Streaming { prefix, rest } => {
                crate::http::hint_plus(rest.size_hint(), prefix.len())
            }
        }
    }
}

/// Reads each request body once, up to a limit, so the retry layer below can
/// replay it: turns `http::Request<B>` into `http::Request<ReplayBody<B>>`.
///
/// Bodies up to the limit (default 64 KiB, [`DEFAULT_REPLAY_LIMIT`]) are held
/// in memory for the life of the request; larger ones are streamed once and
/// their request is not retried. Read-ahead never waits: a body whose next
/// frame is not ready (a stream fed as the call goes, a gRPC bidirectional
/// call, an upload still arriving) is sent at once with what was read, once.
/// A body that fails while being read fails the
/// request with that error, before any attempt. The body type must be `Unpin`
/// (hyper's `Incoming`, axum's and tonic's `Body`, `Full` are).
///
/// `poll_ready` is the inner service's; the ready service is used for the call
/// once the body is read (a clone takes its place).
#[derive(Debug, Clone, Copy)]
pub struct ReplayBodyLayer {
    limit: usize,
}

impl ReplayBodyLayer {
    /// Buffers bodies of up to `limit` bytes (0: never buffer a non-empty body).
    pub const fn new(limit: usize) -> Self {
        ReplayBodyLayer { limit }
    }

    /// The limit in bytes.
    pub const fn limit(&self) -> usize {
        self.limit
    }
}

impl Default for ReplayBodyLayer {
    /// A 64 KiB limit.
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_LIMIT)
    }
}

impl<S> Layer<S> for ReplayBodyLayer {
    type Service = ReplayBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReplayBodyService {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`ReplayBodyLayer`].
#[derive(Debug, Clone)]
pub struct ReplayBodyService<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<Request<B>> for ReplayBodyService<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ReplayBodyFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        ReplayBodyFuture {
            state: ReadState::Reading {
                service: Some(service),
                parts: Some(parts),
                body: Some(body),
                buf: BytesMut::new(),
                limit: self.limit,
            },
        }
    }
}

pin_project! {
    #[project = ReadProj]
    enum ReadState<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Reading {
            service: Option<S>,
            parts: Option<http::request::Parts>,
            body: Option<B>,
            buf: BytesMut,
            limit: usize,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

pin_project! {
    /// The response future of [`ReplayBodyService`]: reads the body, then
    /// calls the inner service.
    pub struct ReplayBodyFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: ReadState<S, B>,
    }
}

impl<S, B> fmt::Debug for ReplayBodyFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ReadState::Reading { .. } => "reading",
            ReadState::Calling { .. } => "calling",
        };
        f.debug_struct("ReplayBodyFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B> Future for ReplayBodyFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                ReadProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                ReadProj::Reading {
                    service,
                    parts,
                    body,
                    buf,
                    limit,
                } => {
                    let replay = match read_body(cx, body, buf, *limit) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(replay)) => replay,
                    };
                    let (Some(mut service), Some(parts)) = (service.take(), parts.take()) else {
                        return Poll::Ready(Err(
                            "replay body future polled after completion".into()
                        ));
                    };
                    let future = service.call(Request::from_parts(parts, replay));
                    this.state.set(ReadState::Calling { future });
                }
            }
        }
    }
}

fn read_body<B>(
    cx: &mut Context<'_>,
    body: &mut Option<B>,
    buf: &mut BytesMut,
    limit: usize,
) -> Poll<Result<ReplayBody<B>, BoxError>>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let Some(b) = body.as_mut() else {
        return Poll::Ready(Err("replay body future polled after completion".into()));
    };
    // Known to be too large: do not read anything ahead.
    if b.size_hint().lower() > limit as u64 {
        if let Some(rest) = body.take() {
            return Poll::Ready(Ok(ReplayBody::streaming(Bytes::new(), rest)));
        }
    }
    loop {
        let Some(b) = body.as_mut() else {
            return Poll::Ready(Err("replay body future polled after completion".into()));
        };
        if b.is_end_stream() {
            body.take();
            return Poll::Ready(Ok(ReplayBody::buffered(std::mem::take(buf).freeze(), None)));
        }
        let frame = match Pin::new(b).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            // The rest is not there yet: a stream the caller feeds as it
            // goes (a gRPC client or bidirectional stream waiting for an
            // answer, an upload still arriving). Read ahead no further: it
            // goes now, what was read first, sent once.
            Poll::Pending => {
                return Poll::Ready(match body.take() {
                    Some(rest) => Ok(ReplayBody::streaming(std::mem::take(buf).freeze(), rest)),
                    None => Err("replay body future polled after completion".into()),
                });
            }
        };
        match frame {
            None => {
                body.take();
                return Poll::Ready(Ok(ReplayBody::buffered(std::mem::take(buf).freeze(), None)));
            }
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let over = buf.len().saturating_add(data.remaining()) > limit;
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        let n = chunk.len();
                        buf.extend_from_slice(chunk);
                        data.advance(n);
                    }
                    if over {
                        if let Some(rest) = body.take() {
                            return Poll::Ready(Ok(ReplayBody::streaming(
                                std::mem::take(buf).freeze(),
                                rest,
                            )));
                        }
                    }
                }
                Err(frame) => {
                    // A trailers frame ends the body.
                    let trailers = frame.into_trailers().ok();
                    body.take();
                    return Poll::Ready(Ok(ReplayBody::buffered(
                        std::mem::take(buf).freeze(),
                        trailers,
                    )));
                }
            },
        }
    }
}
