//! [`CallBody`]: a response body that carries what its call still holds —
//! the call's deadline, and under [`BodyEnd`] the
//! bulkhead permit and the breaker's verdict — to its last byte (feature
//! `http`).
//!
//! Every body the protocol presets hand out is a `CallBody`: on a client,
//! [`PropagateDeadline`](crate::deadline::propagate::PropagateDeadline) wraps the
//! dependency's answer; on a server, [`CallBodyLayer`] wraps the
//! handler's. Composing by hand, put either below the layers that should
//! hold until the body ends (see [`hold`](crate::hold)).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use http_body_util::{BodyExt, StreamBody};
//! use seawall::body::CallBodyLayer;
//! use seawall::DeadlineLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::builder(Duration::from_secs(1)).build()?)
//!     .layer(CallBodyLayer::new())
//!     .service(service_fn(|_req: http::Request<_>| async {
//!         // The head at once, the body never.
//!         let never = futures::stream::pending::<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>>();
//!         Ok::<_, seawall::BoxError>(http::Response::new(StreamBody::new(never)))
//!     }));
//!
//! let res = svc.oneshot(http::Request::new(())).await?;
//! // The total budget covers the body: it ends with `DeadlineExceeded` after 1 s.
//! let err = res.into_body().collect().await.unwrap_err();
//! assert!(err.is::<seawall::error::DeadlineExceeded>());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::deadline::Deadline;
use crate::deadline::layer::Shared;
use crate::deadline::service::{TIMED_OUT, reject_deadline};
use crate::error::BoxError;
#[allow(unused_imports)]
use crate::hold::DutyKind;
use crate::hold::{BodyEnd, Duty, Hold};
use crate::observe::LayerKind;

mod layer;

pub use self::layer::{CallBodyFuture, CallBodyLayer, CallBodyLayerBuilder, CallBodyService};

pin_project! {
    /// A response body held to its call: it ends with a
    /// [`DeadlineExceeded`](crate::error::DeadlineExceeded) error (event
    /// detail `"timed_out"`) if the call's deadline passes while it is
    /// still streaming — the deadline covers the whole call, not only the
    /// wait for the head — and it carries what the layers above hold until
    /// its end (see [`hold`](crate::hold)): a bulkhead permit is given
    /// back, and the breaker's verdict given, when the body ends, fails, or
    /// is dropped.
    ///
    /// It holds its timer inline (no allocation), so, like tower-http's
    /// `TimeoutBody`, it is `!Unpin`: `BodyExt::collect` takes it as it is;
    /// for `BodyExt::frame`, pin it first (`let mut body =
    /// std::pin::pin!(res.into_body());`). `into_inner()` drops the
    /// deadline and lets go of what it holds.
    ///
    /// [`PropagateDeadline`](crate::deadline::propagate::PropagateDeadline) (in the HTTP
    /// and gRPC client presets) puts every response body in one, with the
    /// deadline it sent the server: the attempt's time left (the attempt
    /// timeout or the total budget, whichever ends first). A body that is
    /// complete when the head arrives, or a call with no deadline, arms no
    /// timer (the timer is armed by the first read that finds the body
    /// unfinished). A gRPC response (`content-type: application/grpc…`)
    /// ends with the `DEADLINE_EXCEEDED` status instead (feature `tonic`),
    /// as a generated client reports it. On the server side,
    /// [`CallBodyLayer`] (in the server presets) holds the handler's answers
    /// to the request's deadline the same way: an HTTP answer still
    /// streaming is cut off (the connection reports an incomplete body), a
    /// gRPC one ends with `grpc-status: 4` in its trailers. An answer's
    /// reads go to the body while its deadline is ahead (from the second
    /// read, one clock read each; the first needs none: its head was just
    /// checked); a timer is armed only by a read that finds the body not
    /// ready, so an answer whose frames are ready (a unary gRPC answer's
    /// message, then its trailers) registers none, and a producer that is
    /// always ready is cut at the deadline. A reply read by this process
    /// hands over what has arrived first; from a stream's third frame each
    /// is checked against the deadline, and past it frames keep coming for
    /// 20 ms (what a late reader finds there), then the body is cut: a
    /// stream that is always ready for a slow reader ends too, and the
    /// breaker counts it as its head said, a success (the reader was late,
    /// not the dependency).
    /// Retry looks at
    /// heads only: a body cut off after its head arrived is not retried,
    /// and the error reaches whoever reads the body.
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        // The deadline, and the layer that reports its passing.
        limit: Option<(Deadline, Arc<Shared>)>,
        ending: Ending,
        // An answer this process sends (server side).
        answer: bool,
        // An answer not polled yet: its head was checked against the
        // deadline as it was answered.
        fresh: bool,
        expired: bool,
        // A reply: the frames handed over, up to 2 (from the third, each
        // is checked against the deadline; past it, `sleep` is set to the
        // end of the late reader's grace).
        frames: u8,
        // A gRPC reply: the messages it started, up to 2 (two make it a
        // stream), and the bytes left of the one under way.
        messages: Messages,
        held: Held,
    }
}

/// A read of a body this process reads, waiting for more: in a server call
/// (a handler reading a request's body, or a dependency's reply), that
/// time is spent waiting on the network, not on the server's own work, so
/// it is a wait out of the call, as a wait on a client stack's call is
/// (see `outbound`): left out of the server's adaptive limit's latency
/// sample and, while it lasts, the call out of its count of calls in
/// flight (a read waiting on a client holds none of the handler's
/// resources; counted, slow uploads kept the limit at the uploads in
/// flight, 133 in `tests/shed` where the handler needs 8, and growing).
/// Clients uploading a request body
/// slowly read as a queue before: in a new user's trial over real HTTP
/// (half of 400 requests a second sending 12 KiB over 550 ms to a handler
/// of 5 ms), the limit halved and refused 47 to 97 requests in the first
/// 5 s while the server and its dependency were idle.
///
/// Opened where a read finds nothing, closed by the next read (woken, as
/// more came), or when the body is dropped, in the server call it opened
/// in; the clock is read afresh each time (an instant cached by the
/// layers may be older than the handler's own work before the read).
#[derive(Debug, Default)]
struct WaitOut(Option<std::num::NonZeroU32>);

impl WaitOut {
    /// A read found nothing: a wait opens.
    #[cold]
    fn pending(&mut self) {
        #[cfg(any(feature = "shed", feature = "retry"))]
        if self.0.is_none() {
            self.0 = crate::outbound::begin(crate::clock::now);
        }
    }

    /// A read begins (woken, as more came): an open wait closes.
    #[inline]
    fn read(&mut self) {
        if let Some(token) = self.0.take() {
            Self::close(token);
        }
    }

    #[cold]
    fn close(token: std::num::NonZeroU32) {
        #[cfg(any(feature = "shed", feature = "retry"))]
        crate::outbound::end(token, crate::clock::now);
        #[cfg(not(any(feature = "shed", feature = "retry")))]
        let _ = token;
    }
}

impl Drop for WaitOut {
    fn drop(&mut self) {
        self.read();
    }
}

/// The messages a gRPC reply has started, read from their length prefixes
/// until a second one starts: a unary reply has one, so a second makes the
/// reply a stream. A stream ended by a deadline after it delivered is no
/// failure of the dependency: its budget ended it, and the breaker counts
/// nothing for it (50 streams cut at one instant were 50 failures in a row,
/// and opened the breaker on the unary calls of their stack in an outside
/// trial). A unary reply cut part way still counts as failed.
///
/// Three bytes, so that the body does not grow: the messages started (0
/// to 2), whether the count was lost, and the bytes still to come of the
/// message under way (up to 2 MiB − 1; a message spanning frames beyond
/// that loses the count).
#[derive(Debug, Clone, Copy, Default)]
struct Messages([u8; 3]);

const LOST: u32 = 1 << 2;
const SKIP_SHIFT: u32 = 3;
const MAX_SKIP: u32 = (1 << 21) - 1;

impl Messages {
    fn bits(self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], 0])
    }

    fn started(self) -> u32 {
        self.bits() & 0b11
    }

    fn lost(self) -> bool {
        self.bits() & LOST != 0
    }

    fn skip(self) -> u32 {
        self.bits() >> SKIP_SHIFT
    }

    fn store(&mut self, started: u32, lost: bool, skip: u32) {
        let bits = if skip > MAX_SKIP {
            started | LOST
        } else {
            started | if lost { LOST } else { 0 } | skip << SKIP_SHIFT
        };
        let [a, b, c, _] = bits.to_le_bytes();
        self.0 = [a, b, c];
    }

    /// Whether the reply started a second message.
    fn stream(&self) -> bool {
        self.started() >= 2
    }

    /// Reads a gRPC reply's frame (out of line: an HTTP reply never
    /// comes here, and a gRPC one only until its second message).
    #[inline(never)]
    fn read<D: bytes::Buf>(&mut self, frame: &Frame<D>) {
        if let Some(data) = frame.data_ref() {
            let chunk = data.chunk();
            if chunk.len() == data.remaining() {
                self.count(chunk);
            } else {
                self.store(self.started(), true, 0);
            }
        }
    }

    /// Reads the prefixes in `data`, until a second message starts.
    fn count(&mut self, data: &[u8]) {
        let (mut started, mut lost, mut skip) = (self.started(), self.lost(), self.skip());
        let mut rest = data;
        while !lost && started < 2 && !rest.is_empty() {
            if skip > 0 {
                let n = rest.len().min(skip as usize);
                skip -= n as u32;
                rest = &rest[n..];
                continue;
            }
            let Some((prefix, after)) = rest.split_first_chunk::<5>() else {
                lost = true;
                break;
            };
            started += 1;
            let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
            let n = after.len().min(len as usize);
            skip = len - n as u32;
            rest = &after[n..];
        }
        self.store(started, lost, skip);
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

/// What the layers above hold until the body ends: one of each kind (a
/// second bulkhead above the first lets go at the head).
#[derive(Default)]
struct Held {
    #[cfg(feature = "bulkhead")]
    bulkhead: Option<crate::bulkhead::queue::Permit>,
    #[cfg(feature = "circuit-breaker")]
    breaker: Option<crate::circuit_breaker::Pending>,
    #[cfg(feature = "shed")]
    throttle: Option<crate::shed::ThrottlePending>,
    // Whether anything above is held (the fast path checks this alone).
    any: bool,
    // A body this process reads (a request's on a server, a reply on a
    // client), while a read waits for more: the wait it opened in the
    // server call it is read in (see `outbound`). Here, in what would be
    // this struct's padding, the body does not grow.
    wait_out: WaitOut,
}

impl Held {
    /// Takes `duty` if its slot is free; gives it back otherwise.
    fn take(&mut self, duty: Duty) -> Option<Duty> {
        #[allow(unreachable_patterns)]
        let back = match duty.0 {
            #[cfg(feature = "bulkhead")]
            DutyKind::Bulkhead(permit) if self.bulkhead.is_none() => {
                self.bulkhead = Some(permit);
                None
            }
            #[cfg(feature = "circuit-breaker")]
            DutyKind::Breaker(pending) if self.breaker.is_none() => {
                self.breaker = Some(pending);
                None
            }
            #[cfg(feature = "shed")]
            DutyKind::Throttle(pending) if self.throttle.is_none() => {
                self.throttle = Some(pending);
                None
            }
            other => Some(Duty(other)),
        };
        if back.is_none() {
            self.any = true;
        }
        back
    }

    /// Whether a read is left waiting for more: a verdict dropped then
    /// counts nothing (a reader that gave up on a stalled body, by a timer
    /// of its own or a reset); dropped with no read waiting, it counts as
    /// the head said (a caller that read the status and let the body go).
    #[inline]
    fn set_waiting(&mut self, waiting: bool) {
        #[cfg(feature = "circuit-breaker")]
        if let Some(pending) = &mut self.breaker {
            pending.waiting = waiting;
        }
        #[cfg(feature = "shed")]
        if let Some(pending) = &mut self.throttle {
            pending.waiting = waiting;
        }
        let _ = waiting;
    }

    /// Lets go of everything, the verdicts counting nothing (a stream its
    /// deadline ended after it delivered).
    fn let_go_uncounted(&mut self) {
        self.set_waiting(true);
        drop(std::mem::take(self));
    }

    /// Lets go of everything: the breaker's verdict first, then the permit.
    #[cfg_attr(
        not(any(feature = "circuit-breaker", feature = "shed")),
        allow(unused_variables)
    )]
    fn release(&mut self, failure: Option<&BoxError>) {
        if !self.any {
            return;
        }
        self.any = false;
        let _edge = crate::clock::Edge::enter();
        #[cfg(any(feature = "circuit-breaker", feature = "shed"))]
        let end = || match failure {
            Some(error) => crate::hold::End::Failed(error),
            None => crate::hold::End::Complete,
        };
        #[cfg(feature = "circuit-breaker")]
        if let Some(pending) = self.breaker.take() {
            pending.settle(end());
        }
        #[cfg(feature = "shed")]
        if let Some(pending) = self.throttle.take() {
            pending.settle(end());
        }
        #[cfg(feature = "bulkhead")]
        drop(self.bulkhead.take());
    }
}

impl<B> CallBody<B> {
    /// `inner` held to `deadline`, reported as the layer `shared` names. The
    /// timer is armed on the first poll that finds the body unfinished.
    pub(crate) fn new(
        inner: B,
        deadline: Option<Deadline>,
        shared: &Arc<Shared>,
        grpc: bool,
    ) -> Self {
        CallBody {
            inner,
            sleep: None,
            limit: deadline.map(|d| (d, shared.clone())),
            ending: if grpc {
                Ending::GrpcStatus
            } else {
                Ending::Error
            },
            answer: false,
            fresh: false,
            expired: false,
            frames: 0,
            messages: Messages::default(),
            held: Held::default(),
        }
    }

    /// The body of an answer this process sends (server side): a gRPC one
    /// ends with `grpc-status: 4` (`DEADLINE_EXCEEDED`) in its trailers
    /// instead of an error.
    pub(crate) fn answering(mut self) -> Self {
        if self.ending == Ending::GrpcStatus {
            self.ending = Ending::GrpcTrailers;
        }
        self.answer = true;
        self.fresh = true;
        self
    }

    /// A body with no deadline, holding nothing.
    pub fn unlimited(inner: B) -> Self {
        CallBody {
            inner,
            sleep: None,
            limit: None,
            ending: Ending::Error,
            answer: false,
            fresh: false,
            expired: false,
            frames: 0,
            messages: Messages::default(),
            held: Held::default(),
        }
    }

    /// The deadline the body is held to, if any.
    pub fn deadline(&self) -> Option<Deadline> {
        self.limit.as_ref().map(|(d, _)| *d)
    }

    /// Whether the body still holds something for the layers above (a
    /// permit, a verdict to give).
    pub fn holds(&self) -> bool {
        self.held.any
    }

    /// The body inside.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The body inside (the deadline is dropped with the wrapper, and what
    /// it held is let go, as for a body dropped before its end).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for CallBody<B> {
    /// An empty body with no deadline (what an answer made by a layer
    /// carries).
    fn default() -> Self {
        CallBody::unlimited(B::default())
    }
}

impl<B: From<&'static str>> From<&'static str> for CallBody<B> {
    /// A text body with no deadline (what an answer made by a layer
    /// carries).
    fn from(text: &'static str) -> Self {
        CallBody::unlimited(B::from(text))
    }
}

impl<B: fmt::Debug> fmt::Debug for CallBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallBody")
            .field("inner", &self.inner)
            .field("deadline", &self.deadline())
            .field("armed", &self.sleep.is_some())
            .field("expired", &self.expired)
            .field("holds", &self.held.any)
            .finish()
    }
}

impl<B> Body for CallBody<B>
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
        self.poll_held(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> CallBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// A read, held to the deadline and settling what the body holds.
    /// A body this process reads opens a wait out of the server call where
    /// a read finds nothing, and closes it at the next read (see
    /// [`WaitOut`]): tracked where the read returns pending, not by
    /// looking at every read's answer, which copied it (71 to 121 more
    /// instructions a call through the HTTP presets).
    #[inline(always)]
    fn poll_held(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        this.held.wait_out.read();
        if *this.expired {
            return Poll::Ready(None);
        }
        if this.held.any {
            // Until a frame comes (`settle`): dropped meanwhile, the body was
            // given up on while more was awaited.
            this.held.set_waiting(true);
        }
        let Some((deadline, shared)) = this.limit.as_ref() else {
            let Poll::Ready(polled) = this.inner.as_mut().poll_frame(cx) else {
                if !*this.answer {
                    this.held.wait_out.pending();
                }
                return Poll::Pending;
            };
            return Poll::Ready(settle(
                this.held,
                polled.map(|r| r.map_err(Into::into)),
                || this.inner.is_end_stream(),
            ));
        };
        // A reply read by this process: what has arrived is handed over
        // first, so a reader that comes late loses nothing that came in
        // time, and the deadline cuts only a wait for more. An answer this
        // process sends: the deadline first (a producer that is always
        // ready is cut too). Either way the body is polled with its
        // deadline as the task-local one: a stream's producer, running
        // after its handler returned, still reads its budget and its
        // outbound calls carry it.
        let deadline = *deadline;
        if !*this.answer {
            if let Poll::Ready(polled) = poll_scoped(deadline, this.inner.as_mut(), cx) {
                // A stream (a third frame on) that is always ready is held
                // to its deadline too: past it, frames are handed over for
                // `LATE_GRACE` more (what came in time, to a late reader),
                // then it is cut.
                if let Some(Ok(frame)) = &polled {
                    if *this.ending == Ending::GrpcStatus && !this.messages.stream() {
                        this.messages.read(frame);
                    }
                    if *this.frames < 2 {
                        *this.frames += 1;
                    } else if past_grace(deadline, this.sleep.as_mut()) {
                        *this.expired = true;
                        return Poll::Ready(Some(cut_late(this.held, shared, *this.ending)));
                    }
                }
                let polled = polled.map(|r| {
                    r.map_err(|error| {
                        // The server held the reply to the deadline this
                        // process sent it, less its margin, and cut it:
                        // that is this deadline passing.
                        if deadline.remaining() <= CUT_MARGIN {
                            *this.expired = true;
                            return timed_out(shared, *this.ending);
                        }
                        error.into()
                    })
                });
                return Poll::Ready(settle_reply(
                    this.held,
                    polled,
                    || this.inner.is_end_stream(),
                    this.messages.stream(),
                ));
            }
        }
        // An answer's first poll: its head was checked against the
        // deadline as it was answered, a moment ago, so the body is polled
        // at once. Later polls before any timer read the clock and poll the
        // body while the deadline is ahead (a unary gRPC answer's trailers,
        // ready at its second read: no timer). Only a poll that finds the
        // body not ready arms the timer.
        let fresh = std::mem::take(this.fresh);
        // Whether the body was polled on this call already (and was not
        // ready).
        let mut polled_now = fresh;
        if fresh
            || (*this.answer
                && this.sleep.is_none()
                && (this.inner.is_end_stream() || crate::clock::edge_now() < deadline.instant()))
        {
            polled_now = true;
            if let Poll::Ready(polled) = poll_scoped(deadline, this.inner.as_mut(), cx) {
                let polled = polled.map(|r| r.map_err(Into::into));
                return Poll::Ready(settle(this.held, polled, || this.inner.is_end_stream()));
            }
        }
        if this.sleep.is_none() && !this.inner.is_end_stream() {
            this.sleep
                .set(Some(tokio::time::sleep_until(deadline.instant())));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                *this.expired = true;
                let error = reject_deadline(LayerKind::Deadline, shared, TIMED_OUT);
                if this.messages.stream() {
                    this.held.let_go_uncounted();
                } else {
                    this.held.release(Some(&error));
                }
                return Poll::Ready(Some(cut_frame(error, *this.ending)));
            }
        }
        if !*this.answer || polled_now {
            // A reply, or an answer whose body was polled just above.
            if !*this.answer {
                this.held.wait_out.pending();
            }
            return Poll::Pending;
        }
        let polled = ready!(poll_scoped(deadline, this.inner.as_mut(), cx));
        Poll::Ready(settle(
            this.held,
            polled.map(|r| r.map_err(Into::into)),
            || this.inner.is_end_stream(),
        ))
    }
}

/// Asks the presets' classifier about a response by its head (`method`
/// of [`Classify`](crate::classify::Classify)): gRPC's for a gRPC status in
/// the headers (a trailers-only answer; feature `tonic`), HTTP's for any
/// other (an HTTP answer looks up no header).
macro_rules! by_head {
    ($response:expr, $method:ident) => {{
        use crate::classify::Classify;
        let response = $response;
        #[cfg(feature = "tonic")]
        if response.body().ending != Ending::Error && response.headers().contains_key("grpc-status")
        {
            const GRPC: crate::grpc::GrpcStatusClassifier =
                crate::grpc::GrpcStatusClassifier::new();
            return Classify::<_, BoxError>::$method(&GRPC, Ok(response));
        }
        const HTTP: crate::http::HttpStatusClassifier = crate::http::HttpStatusClassifier::new();
        Classify::<_, BoxError>::$method(&HTTP, Ok(response))
    }};
}

impl<B: Body> Hold<http::Response<CallBody<B>>> for BodyEnd {
    const PAST_HEAD: bool = true;

    #[inline]
    fn hold(response: &mut http::Response<CallBody<B>>, duty: Duty) -> Option<Duty> {
        let body = response.body_mut();
        if body.expired || body.inner.is_end_stream() {
            // Nothing left to hold it for.
            return Some(duty);
        }
        body.held.take(duty)
    }

    /// By the head, as the presets' breakers judge it: a gRPC status in the
    /// headers (a trailers-only answer) by gRPC's classifier (feature
    /// `tonic`), any other response by its HTTP status (a 5xx but 503 a
    /// failure, a 429 or a 503 an overload, a 4xx ignored). A
    /// status in the trailers comes after the head and is not seen here.
    #[inline]
    fn outcome(response: &http::Response<CallBody<B>>) -> crate::observe::Outcome {
        by_head!(response, classify)
    }

    /// As the presets' retry layers read a deadline's answer: a gRPC
    /// status in the head by gRPC's classifier (`DEADLINE_EXCEEDED`, or
    /// `CANCELLED`, a tonic server's past its `grpc-timeout`), any other
    /// response by its HTTP status (a `504`).
    #[inline]
    fn timed_out(response: &http::Response<CallBody<B>>) -> bool {
        by_head!(response, is_deadline_answer)
    }
}

impl<B, C> crate::hold::HoldVerdict<http::Response<CallBody<B>>, C> for BodyEnd
where
    B: Body + 'static,
    C: crate::classify::Classify<http::Response<CallBody<B>>, BoxError>,
{
    #[inline]
    fn pending(response: &http::Response<CallBody<B>>) -> Option<crate::hold::Judge> {
        let body = response.body();
        if body.expired || body.inner.is_end_stream() {
            return None;
        }
        Some(crate::hold::Judge(
            crate::classify::judge_error::<C, http::Response<CallBody<B>>>,
        ))
    }
}

/// Polls `inner` with `deadline` as the task-local deadline.
#[allow(clippy::type_complexity)]
fn poll_scoped<B: Body>(
    deadline: Deadline,
    inner: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
    crate::deadline::sync_scope(deadline, || inner.poll_frame(cx))
}

/// How close to its deadline a reply's failure counts as the deadline
/// passing: a server holding its answer to the deadline it was sent (less
/// its per-hop margin, 10 ms in the server presets) cuts it that much
/// early.
const CUT_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a reply's frames are still handed over once its deadline has
/// passed: long enough for a late reader to take what is already there,
/// short against a stream that is always ready.
const LATE_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// The end of a reply cut past its deadline's grace: what it held let go
/// as if the reader had dropped it (the reader was late, not the
/// dependency: the breaker counts the head's success), the deadline as its
/// error.
/// Out of line: a stream's slow path.
#[cold]
#[inline(never)]
fn cut_late<D>(held: &mut Held, shared: &Shared, ending: Ending) -> Result<Frame<D>, BoxError> {
    let error = reject_deadline(LayerKind::Deadline, shared, TIMED_OUT);
    // (Frames kept coming: no read was left waiting.)
    held.set_waiting(false);
    drop(std::mem::take(held));
    cut_frame(error, ending)
}

/// The last frame of a body its deadline cut, as its `ending` says.
fn cut_frame<D>(error: BoxError, ending: Ending) -> Result<Frame<D>, BoxError> {
    match ending {
        Ending::Error => Err(error),
        Ending::GrpcStatus => Err(grpc_status(error)),
        Ending::GrpcTrailers => Ok(Frame::trailers(deadline_trailers(&error))),
    }
}

/// Whether a reply's frame, handed over now, comes more than
/// [`LATE_GRACE`] after the first one handed over past the deadline. One
/// clock read, from a stream's third frame on. The grace's end is kept in
/// the body's timer slot, set (not registered) at the first frame past the
/// deadline: a timer there that ends at the deadline is the one a wait
/// armed, and the grace starts now.
#[inline(never)]
fn past_grace(deadline: Deadline, mut sleep: Pin<&mut Option<Sleep>>) -> bool {
    // A read of its own, not an edge's: a handler that reads a long reply
    // inside a server's poll must not leave the server an instant from
    // before its own work (see `clock::handler_ran`).
    let now = crate::clock::now();
    if now < deadline.instant() {
        return false;
    }
    if let Some(grace) = sleep.as_ref().as_pin_ref() {
        if grace.deadline() > deadline.instant() {
            return now > grace.deadline();
        }
    }
    sleep.set(Some(tokio::time::sleep_until(now + LATE_GRACE)));
    false
}

/// The error of a reply cut at its deadline (reported as the layer
/// `shared` names).
fn timed_out(shared: &Shared, ending: Ending) -> BoxError {
    let error = reject_deadline(LayerKind::Deadline, shared, TIMED_OUT);
    match ending {
        Ending::GrpcStatus => grpc_status(error),
        _ => error,
    }
}

/// [`settle`] for a reply read by this process: a gRPC stream (a second
/// message started) that its deadline ended, `DEADLINE_EXCEEDED` in its
/// trailers, counts nothing (see [`Messages`]).
fn settle_reply<D>(
    held: &mut Held,
    polled: Option<Result<Frame<D>, BoxError>>,
    at_end: impl FnOnce() -> bool,
    stream: bool,
) -> Option<Result<Frame<D>, BoxError>> {
    if stream && held.any {
        if let Some(Ok(frame)) = &polled {
            if frame
                .trailers_ref()
                .and_then(|t| t.get(crate::http::GRPC_STATUS))
                .is_some_and(|status| status == "4")
            {
                held.let_go_uncounted();
                return polled;
            }
        }
    }
    settle(held, polled, at_end)
}

/// Lets go of what the body holds when `polled` ends it (its end, an error,
/// trailers, or data after which the body is at its end).
fn settle<D>(
    held: &mut Held,
    polled: Option<Result<Frame<D>, BoxError>>,
    at_end: impl FnOnce() -> bool,
) -> Option<Result<Frame<D>, BoxError>> {
    if !held.any {
        return polled;
    }
    held.set_waiting(false);
    match &polled {
        None => held.release(None),
        Some(Err(error)) => held.release(Some(error)),
        Some(Ok(frame)) => {
            if let Some(trailers) = frame.trailers_ref() {
                match trailer_status(trailers) {
                    Some(error) => held.release(Some(&error)),
                    None => held.release(None),
                }
            } else if at_end() {
                held.release(None);
            }
        }
    }
    polled
}

/// The error a gRPC status in trailers stands for, if it is not `OK`.
fn trailer_status(trailers: &http::HeaderMap) -> Option<BoxError> {
    if !crate::http::failed_grpc_status(trailers) {
        return None;
    }
    #[cfg(feature = "tonic")]
    return tonic::Status::from_header_map(trailers)
        .map(|s| Box::new(crate::grpc::status::InTrailers(s)) as BoxError);
    #[cfg(not(feature = "tonic"))]
    Some(
        format!(
            "grpc-status {} in trailers",
            String::from_utf8_lossy(trailers[crate::http::GRPC_STATUS].as_bytes())
        )
        .into(),
    )
}

/// The `DEADLINE_EXCEEDED` status a generated client reports (feature
/// `tonic`; without it, the rejection itself).
fn grpc_status(error: BoxError) -> BoxError {
    #[cfg(feature = "tonic")]
    return Box::new(tonic::Status::deadline_exceeded(error.to_string()));
    #[cfg(not(feature = "tonic"))]
    error
}

/// The trailers that end a gRPC answer cut by its deadline. The message
/// names the reason only, never the layer instance (as every gRPC answer
/// seawall sends).
fn deadline_trailers(_error: &BoxError) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    // 4: DEADLINE_EXCEEDED.
    trailers.insert(
        crate::http::GRPC_STATUS,
        http::HeaderValue::from_static("4"),
    );
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static(crate::error::RejectionKind::DeadlineExceeded.message()),
    );
    trailers
}

/// Whether `response` is a gRPC one (`content-type: application/grpc…`).
pub(crate) fn is_grpc<B>(response: &http::Response<B>) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes()
                .starts_with(crate::http::GRPC_CONTENT_TYPE.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gRPC message: its 5-byte prefix (uncompressed, length) and body.
    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn a_second_message_makes_a_reply_a_stream() {
        // A unary reply of 40 000 bytes in three frames: one message.
        let unary = message(40_000);
        let mut m = Messages::default();
        for frame in unary.chunks(16_384) {
            m.count(frame);
        }
        assert_eq!(
            (m.started(), m.skip(), m.lost(), m.stream()),
            (1, 0, false, false)
        );
        // Part way through it: the rest of the message still to come.
        let mut m = Messages::default();
        m.count(&unary[..16_384]);
        assert_eq!((m.started(), m.skip()), (1, 40_005 - 16_384));
        // Two messages in one frame, or the second in a frame of its own.
        let mut two = message(3);
        two.extend(message(4));
        let mut m = Messages::default();
        m.count(&two);
        assert!(m.stream());
        let mut m = Messages::default();
        m.count(&message(3));
        assert!(!m.stream());
        m.count(&message(0));
        assert!(m.stream());
        // A prefix split across frames stops the count: the reply stays
        // unary (its cut a failure, as before).
        let mut m = Messages::default();
        m.count(&two[..10]);
        m.count(&two[10..]);
        assert!(m.lost() && !m.stream());
        // A message spanning frames beyond 2 MiB loses the count too.
        let mut m = Messages::default();
        m.count(&message(3_000_000)[..100]);
        assert!(m.lost() && !m.stream());
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn a_trailer_status_other_than_ok_is_an_error() {
        assert!(trailer_status(&trailers(&[])).is_none(), "no status");
        assert!(trailer_status(&trailers(&[("grpc-status", "0")])).is_none());
        let err = trailer_status(&trailers(&[
            ("grpc-status", "14"),
            ("grpc-message", "down"),
        ]))
        .expect("UNAVAILABLE is an error");
        #[cfg(feature = "tonic")]
        {
            let status = crate::grpc::status::status_in(&*err).expect("a tonic status");
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(status.message(), "down");
        }
        #[cfg(not(feature = "tonic"))]
        assert!(err.to_string().contains("14"), "{err}");
    }

    #[test]
    fn a_cut_answer_ends_with_deadline_exceeded_and_no_instance_name() {
        let cut = deadline_trailers(&BoxError::from("payments.propagate: deadline exceeded"));
        assert_eq!(cut[crate::http::GRPC_STATUS], "4");
        assert_eq!(cut["grpc-message"], "deadline exceeded");
        // What a client reading the trailers sees: an error.
        assert!(trailer_status(&cut).is_some());
    }

    #[test]
    fn grpc_answers_are_told_by_their_content_type() {
        let with = |ct: &'static str| {
            http::Response::builder()
                .header(http::header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&with("application/grpc")));
        assert!(is_grpc(&with("application/grpc+proto")));
        assert!(!is_grpc(&with("application/json")));
        assert!(!is_grpc(&http::Response::new(())));
    }

    /// The slots a body holds for the layers above: one of each kind, let
    /// go at the body's last frame, at its deadline, or when it is dropped.
    #[cfg(feature = "bulkhead")]
    mod held {
        use std::convert::Infallible;
        use std::time::Duration;

        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};

        use super::*;
        use crate::bulkhead::QueueOrder;
        use crate::bulkhead::queue::{Engine, Settings};
        use crate::error::Name;
        use crate::observe::Observer;

        fn engine(max_concurrent: usize) -> crate::stripe::Striped<Engine> {
            crate::stripe::Striped::new(Engine::new(
                Settings {
                    max_concurrent,
                    max_queue: 0,
                    max_wait: Duration::from_secs(1),
                    order: QueueOrder::Fifo,
                    codel_target: Duration::from_millis(5),
                    codel_interval: Duration::from_millis(100),
                    unbounded_readiness: false,
                },
                Name::from("t"),
                Observer::none(),
            ))
        }

        fn permit(engine: &crate::stripe::Striped<Engine>) -> Duty {
            Duty(DutyKind::Bulkhead(
                engine.try_acquire().expect("a free permit"),
            ))
        }

        /// A body that answers every read the same way: its next frame
        /// never comes, or is always ready, forever.
        #[derive(Clone, Copy)]
        enum Steady {
            Stalled,
            Endless,
        }

        impl Body for Steady {
            type Data = Bytes;
            type Error = Infallible;

            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                match *self {
                    Steady::Stalled => Poll::Pending,
                    Steady::Endless => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x"))))),
                }
            }
        }

        #[test]
        fn one_slot_per_kind_and_a_second_duty_is_given_back() {
            let e = engine(3);
            let mut held = Held::default();
            assert!(held.take(permit(&e)).is_none(), "the first is held");
            let back = held.take(permit(&e)).expect("the slot is taken");
            assert_eq!(e.available_permits(), 1);
            drop(back);
            assert_eq!(e.available_permits(), 2, "given back, then dropped");
            held.release(None);
            assert_eq!(e.available_permits(), 3);
            assert!(!held.any);
            held.release(None);
            assert_eq!(
                e.available_permits(),
                3,
                "a second release lets go of nothing"
            );
        }

        #[test]
        fn a_held_slot_is_let_go_when_dropped() {
            let e = engine(1);
            let mut held = Held::default();
            assert!(held.take(permit(&e)).is_none());
            assert_eq!(e.available_permits(), 0);
            drop(held);
            assert_eq!(e.available_permits(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn a_body_holds_until_its_last_frame_not_until_it_is_dropped() {
            let e = engine(1);
            let body = CallBody::unlimited(Full::new(Bytes::from_static(b"ab")));
            let mut res = http::Response::new(body);
            assert!(BodyEnd::hold(&mut res, permit(&e)).is_none());
            assert!(res.body().holds());
            assert_eq!(e.available_permits(), 0);
            let mut body = std::pin::pin!(res.into_body());
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "ab");
            assert!(!body.holds());
            assert_eq!(e.available_permits(), 1, "let go at the last frame");
            assert!(body.frame().await.is_none());
            assert_eq!(e.available_permits(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn a_finished_body_holds_nothing() {
            let e = engine(1);
            let mut res = http::Response::new(CallBody::unlimited(Full::new(Bytes::new())));
            assert!(BodyEnd::hold(&mut res, permit(&e)).is_some(), "given back");
            assert!(!res.body().holds());
        }

        #[tokio::test(start_paused = true)]
        async fn a_complete_answer_is_read_without_arming_a_timer() {
            let layer = CallBodyLayer::new();
            let deadline = Deadline::after(Duration::from_millis(300));
            let body = CallBody::new(
                Full::new(Bytes::from_static(b"ok")),
                Some(deadline),
                &layer.shared,
                false,
            )
            .answering();
            let mut body = std::pin::pin!(body);
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "ok");
            assert!(body.frame().await.is_none());
            assert!(
                body.sleep.is_none(),
                "no timer registered for an answer complete at its first read"
            );
        }

        /// A unary gRPC answer: its message at the first read, its trailers
        /// at the second, both ready: no timer is registered.
        #[tokio::test(start_paused = true)]
        async fn a_message_then_trailers_arm_no_timer() {
            let layer = CallBodyLayer::new();
            let deadline = Deadline::after(Duration::from_millis(300));
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = futures::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"message"))),
                Ok(Frame::trailers(trailers)),
            ]);
            let body = CallBody::new(
                http_body_util::StreamBody::new(frames),
                Some(deadline),
                &layer.shared,
                true,
            )
            .answering();
            let mut body = std::pin::pin!(body);
            assert!(body.frame().await.unwrap().unwrap().is_data());
            assert!(body.frame().await.unwrap().unwrap().is_trailers());
            assert!(body.frame().await.is_none());
            assert!(body.sleep.is_none(), "a timer was registered");
        }

        #[tokio::test(start_paused = true)]
        async fn an_answer_always_ready_is_cut_at_its_deadline() {
            let layer = CallBodyLayer::new();
            let deadline = Deadline::after(Duration::from_millis(300));
            let body =
                CallBody::new(Steady::Endless, Some(deadline), &layer.shared, false).answering();
            let mut body = std::pin::pin!(body);
            // The first read goes straight to the body; later ones that find
            // it ready are judged by the clock (a timer is armed only for a
            // read that finds it not ready).
            assert!(body.frame().await.unwrap().is_ok());
            assert!(body.sleep.is_none());
            assert!(body.frame().await.unwrap().is_ok());
            assert!(body.sleep.is_none(), "no timer for a body that is ready");
            tokio::time::advance(Duration::from_millis(299)).await;
            assert!(body.frame().await.unwrap().is_ok(), "still in time");
            tokio::time::advance(Duration::from_millis(1)).await;
            let err = body.frame().await.unwrap().unwrap_err();
            assert_eq!(
                crate::error::rejection_of(&err).map(|r| r.kind()),
                Some(crate::error::RejectionKind::DeadlineExceeded)
            );
            assert!(body.frame().await.is_none(), "a cut answer has ended");
        }

        #[tokio::test(start_paused = true)]
        async fn an_answer_pending_at_its_first_read_arms_the_timer_then() {
            let layer = CallBodyLayer::new();
            let deadline = Deadline::after(Duration::from_millis(300));
            let body =
                CallBody::new(Steady::Stalled, Some(deadline), &layer.shared, false).answering();
            let start = tokio::time::Instant::now();
            let mut body = std::pin::pin!(body);
            let err = body.frame().await.unwrap().unwrap_err();
            assert_eq!(start.elapsed(), Duration::from_millis(300));
            assert_eq!(
                crate::error::rejection_of(&err).map(|r| r.kind()),
                Some(crate::error::RejectionKind::DeadlineExceeded)
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_stalled_body_lets_go_at_its_deadline() {
            let e = engine(1);
            let layer = CallBodyLayer::new();
            let deadline = Deadline::after(Duration::from_millis(300));
            let body = CallBody::new(Steady::Stalled, Some(deadline), &layer.shared, false);
            let mut res = http::Response::new(body);
            assert!(BodyEnd::hold(&mut res, permit(&e)).is_none());
            let start = tokio::time::Instant::now();
            let mut body = std::pin::pin!(res.into_body());
            let err = body.frame().await.unwrap().unwrap_err();
            assert_eq!(start.elapsed(), Duration::from_millis(300));
            assert_eq!(
                crate::error::rejection_of(&err).map(|r| r.kind()),
                Some(crate::error::RejectionKind::DeadlineExceeded)
            );
            assert_eq!(e.available_permits(), 1, "let go when the deadline cut it");
            assert!(body.frame().await.is_none(), "a cut body has ended");
        }
    }
}
