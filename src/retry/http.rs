//! HTTP retries: which responses and requests are retried, replaying request
//! bodies, and the server side of the "retry at one layer" guard.
//!
//! - [`HttpRetry`] retries 5xx responses (not 501), 408, 429 and errors
//!   (connection errors and seawall rejections, but never `DeadlineExceeded`),
//!   only for idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or
//!   requests carrying an `Idempotency-Key` header. A `Retry-After` in
//!   delay-seconds is honoured as the wait; a `Retry-After` given as an
//!   HTTP-date (or unparseable) means no retry, since seawall reads only
//!   tokio's clock and cannot tell how far away a calendar date is. Every
//!   outbound attempt carries [`ATTEMPT_HEADER`].
//! - Bodies: `http::Request<B>` is not `Clone`. Put [`ReplayBodyLayer`] above
//!   the retry layer: it reads the body once, up to a limit (default 64 KiB),
//!   and hands the retry layer an `http::Request<ReplayBody<B>>` that can be
//!   replayed. A larger body is streamed through once (what was read first is
//!   sent first) and the request is not retried
//!   ([`GiveUpReason::NotReplayable`](crate::observe::GiveUpReason::NotReplayable)).
//!   Requests whose body type is `Clone` work without it.
//! - [`MarkInboundAttemptLayer`] (server side) reads the attempt header of an
//!   inbound request and records it (request extension [`InboundAttempt`] and
//!   the task-local [`inbound_attempt`](super::inbound_attempt)), so the client
//!   stacks called while handling a retried request do not retry again.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use seawall::retry::http::{HttpRetry, ReplayBody, ReplayBodyLayer};
//! use seawall::retry::RetryLayer;
//! use seawall::BoxError;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let upstream = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
//!     let attempt = req.headers()["x-seawall-attempt"].to_str()?.to_owned();
//!     let body = req.into_body().collect().await?.to_bytes();
//!     let status = if attempt == "1" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!     let mut res = Response::new(body);
//!     *res.status_mut() = status;
//!     Ok::<_, BoxError>(res)
//! });
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(ReplayBodyLayer::default())
//!     .layer(RetryLayer::builder().policy(HttpRetry::new()).build().unwrap())
//!     .service(upstream);
//!
//! let req = Request::put("/items/7").body(Full::new(Bytes::from("hello"))).unwrap();
//! let res = client.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.into_body(), "hello"); // the body was replayed on the retry
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::ATTEMPT_HEADER;
use super::inbound::{InboundScoped, scope_inbound_attempt, sync_scope_inbound_attempt};
use super::policy::{RetryPolicy, Verdict, classify_error};
use crate::error::BoxError;

/// The `Idempotency-Key` request header: a request carrying it may be retried
/// whatever its method.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The default limit of [`ReplayBodyLayer`]: 64 KiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// The retry policy for HTTP clients; see the [module docs](self).
///
/// ```
/// use http::{Method, Request, Response, StatusCode};
/// use seawall::retry::http::HttpRetry;
/// use seawall::retry::{RetryPolicy, Verdict};
/// use seawall::BoxError;
///
/// let p = HttpRetry::new();
/// let res = |code: u16| Response::builder().status(code).body(()).unwrap();
/// let verdict = |r: &Response<()>| RetryPolicy::<Request<()>, _>::classify(&p, Ok::<_, &BoxError>(r));
/// assert_eq!(verdict(&res(503)), Verdict::RETRY);
/// assert_eq!(verdict(&res(501)), Verdict::Fail);
/// assert_eq!(verdict(&res(404)), Verdict::Success);
///
/// let post = Request::post("/pay").body(()).unwrap();
/// assert!(!RetryPolicy::<_, Response<()>>::may_retry(&p, &post));
/// let keyed = Request::post("/pay").header("idempotency-key", "k1").body(()).unwrap();
/// assert!(RetryPolicy::<_, Response<()>>::may_retry(&p, &keyed));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpRetry {
    _private: (),
}

impl HttpRetry {
    /// The policy: 5xx (not 501), 408, 429 and errors, idempotent requests only.
    pub const fn new() -> Self {
        HttpRetry { _private: () }
    }

    /// Whether a response status is retried: 408, 429 and 5xx except 501.
    pub fn is_retryable_status(status: StatusCode) -> bool {
        matches!(status.as_u16(), 408 | 429)
            || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
    }

    /// Whether a request may be retried: an idempotent method (GET, HEAD,
    /// OPTIONS, TRACE, PUT, DELETE) or an `Idempotency-Key` header.
    pub fn is_idempotent<B>(req: &Request<B>) -> bool {
        matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ) || req.headers().contains_key(IDEMPOTENCY_KEY)
    }

    fn classify_response<RB>(res: &Response<RB>) -> Verdict {
        if !Self::is_retryable_status(res.status()) {
            return if res.status().is_server_error() {
                Verdict::Fail
            } else {
                Verdict::Success
            };
        }
        match res.headers().get(RETRY_AFTER) {
            None => Verdict::RETRY,
            Some(v) => match parse_delay_seconds(v) {
                Some(after) => Verdict::Retry { after: Some(after) },
                None => Verdict::DoNotRetry,
            },
        }
    }
}

/// Parses a `Retry-After` in delay-seconds (`"120"`). `None` for an
/// HTTP-date or anything else.
pub fn parse_delay_seconds(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().map(Duration::from_secs)
}

fn stamp_attempt(headers: &mut HeaderMap, attempt: u32) {
    let value = match attempt {
        1 => HeaderValue::from_static("1"),
        n => HeaderValue::from(n),
    };
    headers.insert(HeaderName::from_static(ATTEMPT_HEADER), value);
}

fn arrived_as_retry<B>(req: &Request<B>) -> bool {
    req.extensions()
        .get::<InboundAttempt>()
        .is_some_and(|a| a.0 > 1)
}

pub(crate) fn copy_request<B>(req: &Request<B>, body: B) -> Request<B> {
    let mut r = Request::new(body);
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    r
}

impl<B, RB> RetryPolicy<Request<ReplayBody<B>>, Response<RB>> for HttpRetry
where
    B: Send + 'static,
{
    fn classify(&self, result: Result<&Response<RB>, &BoxError>) -> Verdict {
        match result {
            Ok(res) => Self::classify_response(res),
            Err(e) => classify_error(e),
        }
    }

    fn clone_request(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let body = req.body().try_clone()?;
        Some(copy_request(req, body))
    }

    fn may_retry(&self, req: &Request<ReplayBody<B>>) -> bool {
        Self::is_idempotent(req)
    }

    fn arrived_as_retry(&self, req: &Request<ReplayBody<B>>) -> bool {
        arrived_as_retry(req)
    }

    fn on_attempt(&self, req: &mut Request<ReplayBody<B>>, attempt: u32) {
        stamp_attempt(req.headers_mut(), attempt);
    }
}

/// For requests whose body is `Clone` (`Full<Bytes>`, `String`, `()`, …).
impl<B, RB> RetryPolicy<Request<B>, Response<RB>> for HttpRetry
where
    B: Clone + Send + 'static,
{
    fn classify(&self, result: Result<&Response<RB>, &BoxError>) -> Verdict {
        match result {
            Ok(res) => Self::classify_response(res),
            Err(e) => classify_error(e),
        }
    }

    fn clone_request(&self, req: &Request<B>) -> Option<Request<B>> {
        Some(copy_request(req, req.body().clone()))
    }

    fn may_retry(&self, req: &Request<B>) -> bool {
        Self::is_idempotent(req)
    }

    fn arrived_as_retry(&self, req: &Request<B>) -> bool {
        arrived_as_retry(req)
    }

    fn on_attempt(&self, req: &mut Request<B>, attempt: u32) {
        stamp_attempt(req.headers_mut(), attempt);
    }
}

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
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(prefix.len() as u64));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(prefix.len() as u64));
                }
                hint
            }
        }
    }
}

/// Reads each request body once, up to a limit, so the retry layer below can
/// replay it: turns `http::Request<B>` into `http::Request<ReplayBody<B>>`.
///
/// Bodies up to the limit (default 64 KiB, [`DEFAULT_REPLAY_LIMIT`]) are held
/// in memory for the life of the request; larger ones are streamed once and
/// their request is not retried. A body that fails while being read fails the
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
        match ready!(Pin::new(b).poll_frame(cx)) {
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
    let header = |name: &str| -> Option<u32> {
        let v = req.headers().get(name)?.to_str().ok()?.trim();
        if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    };
    let own = header(ATTEMPT_HEADER).filter(|n| *n >= 1);
    let grpc = header("grpc-previous-rpc-attempts").map(|n| n.saturating_add(1));
    own.into_iter().chain(grpc).max().unwrap_or(1)
}

/// Server side of the "retry at one layer" guard: records the attempt an
/// inbound request arrived as (see [`attempt_of`]) in its extensions
/// ([`InboundAttempt`]) and in the task-local
/// [`inbound_attempt`](super::inbound_attempt) while it is handled, so the
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
    type Future = InboundScoped<S::Future>;

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
        let inner = &mut self.inner;
        let future = sync_scope_inbound_attempt(attempt, || inner.call(req));
        scope_inbound_attempt(attempt, future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_seconds_parsing() {
        let p = |s: &'static str| parse_delay_seconds(&HeaderValue::from_static(s));
        assert_eq!(p("120"), Some(Duration::from_secs(120)));
        assert_eq!(p(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p("-1"), None);
        assert_eq!(p("1.5"), None);
        assert_eq!(p("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(p("99999999999"), None);
    }

    #[test]
    fn attempt_header_parsing() {
        let r = |k: &'static str, v: &'static str| Request::get("/").header(k, v).body(()).unwrap();
        assert_eq!(attempt_of(&Request::get("/").body(()).unwrap()), 1);
        assert_eq!(attempt_of(&r(ATTEMPT_HEADER, "3")), 3);
        assert_eq!(attempt_of(&r(ATTEMPT_HEADER, "x")), 1);
        assert_eq!(attempt_of(&r(ATTEMPT_HEADER, "0")), 1);
        assert_eq!(attempt_of(&r("grpc-previous-rpc-attempts", "1")), 2);
    }

    #[test]
    fn statuses() {
        for (code, retry) in [
            (500, true),
            (501, false),
            (502, true),
            (503, true),
            (504, true),
            (408, true),
            (429, true),
            (404, false),
            (200, false),
        ] {
            assert_eq!(
                HttpRetry::is_retryable_status(StatusCode::from_u16(code).unwrap()),
                retry,
                "{code}"
            );
        }
    }
}
