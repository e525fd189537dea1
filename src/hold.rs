//! Where a layer lets go of a call: when the response head arrives
//! ([`Head`], every layer's default) or when the response body ends
//! ([`BodyEnd`], the protocol stacks).
//!
//! A streamed response is still work when its head arrives: the server is
//! still producing it, the connection still carries it, a gRPC status is
//! still to come in its trailers. Under [`BodyEnd`], the
//! [bulkhead](crate::bulkhead) keeps its permit and the [circuit
//! breaker](crate::circuit_breaker) its verdict (and a half-open probe
//! slot) until the body of an `http::Response<CallBody<B>>` ends, fails, or
//! is dropped: the [`CallBody`](crate::body::CallBody) carries them. A body
//! already complete when the head arrives is let go at once, and so is an
//! answer whose head says it failed or is busy (a 5xx, a 429, a gRPC error
//! status in the head): its body is a message, and a retry keeping it
//! through a backoff would hold the permit while it sleeps.
//!
//! The [adaptive limit](crate::shed) gives its place back at the head in
//! either mode. It learns what the service can answer at once from the
//! time to an answer, and a stream's lifetime says nothing of that: places
//! held by streams would only blind it. Twenty streams whose heads came
//! back at once held every place of the server preset's limit, and every
//! other request was refused for as long as they flowed (`tests/streams`).
//! A bulkhead bounds streams: the server presets' (2000 in flight) guards
//! memory; give long-lived streams a stack of their own with the bulkhead
//! they need.
//!
//! Speed is judged by the head (the time to the first byte, where a queue
//! shows): the adaptive limit's latency sample and the breaker's slow-call
//! time are the head's, so a long healthy stream is not a slow call; the
//! permits are held until the end. The breaker judges a head that looks like
//! a success again at the end: a body that fails, is cut by its deadline,
//! or ends with a gRPC error status in its trailers is a failure, but a
//! gRPC stream (a reply that started a second message) that a deadline
//! ends after it delivered, `DEADLINE_EXCEEDED` in its trailers or this
//! process's own cut, counts neither way (a budget ended it, not a fault:
//! 50 streams cut at one instant were 50 failures in a row and opened the
//! breaker on their stack's unary calls in an outside trial); a body
//! the reader drops before its end counts as its head said, a success (a
//! caller that reads the status and drops the body has its answer; leaving
//! those out left only failures in the window, and a healthy dependency's
//! 2 % of 500s opened the breaker), unless a read was left waiting for more
//! (a reader that gave up on a stalled body: not counted). A head that says
//! failure is counted at once. A half-open probe's body is judged at its
//! end too: in the protocol presets a body that is read lasts no longer
//! than its attempt timeout (a body kept unread holds its permits until it
//! is read or dropped: drop responses you do not read), and meanwhile one
//! more probe goes per open time (see
//! the [breaker](crate::circuit_breaker)). Retry looks at
//! heads only: a response whose head has arrived is never retried.
//!
//! The [client](crate::stack::ClientStack::http) and
//! [server](crate::stack::ServerStack::http) presets hold until the body
//! ends; composing by hand, ask a layer for it with `until_body_end()`
//! (feature `http`) and put a layer below it that hands out `CallBody`
//! responses ([`PropagateDeadline`](crate::deadline::propagate::PropagateDeadline) on a
//! client, [`CallBodyLayer`](crate::body::CallBodyLayer) around a handler).
//!
//! ```
//! # #[cfg(all(feature = "http", feature = "bulkhead", feature = "deadline"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use http_body_util::{BodyExt, StreamBody};
//! use seawall::body::CallBodyLayer;
//! use seawall::BulkheadLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let bulkhead = BulkheadLayer::builder().max_concurrent(1).build()?.until_body_end();
//! let handle = bulkhead.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(bulkhead)
//!     .layer(CallBodyLayer::new())
//!     .service(service_fn(|_req: http::Request<_>| async {
//!         // A body of two chunks, still streaming when the head is sent.
//!         let chunks = futures::stream::iter(["a", "b"].map(|c| {
//!             Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(c)))
//!         }));
//!         Ok::<_, seawall::BoxError>(http::Response::new(StreamBody::new(chunks)))
//!     }));
//!
//! let res = svc.oneshot(http::Request::new(())).await?;
//! assert_eq!(handle.available_permits(), 0); // the body is still to be read
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "ab");
//! assert_eq!(handle.available_permits(), 1); // read to the end: let go
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "http", feature = "bulkhead", feature = "deadline")))]
//! # fn main() {}
//! ```

// Without a body to hold them (features `http` and `deadline`), duties
// are made and let go at once.
#![cfg_attr(not(all(feature = "http", feature = "deadline")), allow(dead_code))]

use std::fmt;
use std::marker::PhantomData;

/// Let go of a call when its response (head) arrives: the default of every
/// layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head;

/// Hold a call until its response body ends, fails or is dropped
/// (responses of type `http::Response<CallBody<B>>`, feature `http`); see
/// the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyEnd;

/// A server's point of letting go: as `M` ([`Head`], or [`BodyEnd`] in the
/// protocol presets), and a request refused before the service behind the
/// layer saw it is let go as [`Release`] says: an `http::Request` whose
/// body the client is still sending has the rest of it read first. The
/// [server stacks](crate::stack::ServerStack) give it to every layer that
/// refuses a request at once; you meet it only in their types.
pub struct Inbound<M = BodyEnd>(PhantomData<fn() -> M>);

impl<M> fmt::Debug for Inbound<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Inbound")
    }
}

impl<M> Clone for Inbound<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Inbound<M> {}

impl<M> Default for Inbound<M> {
    fn default() -> Self {
        Inbound(PhantomData)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Head {}
    impl Sealed for super::BodyEnd {}
    impl<M> Sealed for super::Inbound<M> {}
}

/// A point where a layer lets go of a call whose response is a `T`:
/// [`Head`] for any `T`, [`BodyEnd`] for `http::Response<CallBody<B>>`.
/// Sealed.
pub trait Hold<T>: sealed::Sealed + Send + Sync + 'static {
    /// Whether this point may hold past the head.
    #[doc(hidden)]
    const PAST_HEAD: bool;

    /// Hands `duty` to the response to carry until its body ends; gives it
    /// back if the response cannot (then the layer lets go now).
    #[doc(hidden)]
    fn hold(response: &mut T, duty: Duty) -> Option<Duty>;

    /// The outcome a layer reports for a response it lets go of at its head
    /// (the `CallFinished` event): a success for any `T` but a protocol's
    /// response, which its classifier judges.
    #[doc(hidden)]
    #[inline]
    fn outcome(response: &T) -> crate::observe::Outcome {
        let _ = response;
        crate::observe::Outcome::Success
    }

    /// Whether a response the layer lets go of at its head says the
    /// handler ran out of time (an HTTP `504`, a gRPC `DEADLINE_EXCEEDED`
    /// in the head): never for any `T` but a protocol's response.
    #[doc(hidden)]
    #[inline]
    fn timed_out(response: &T) -> bool {
        let _ = response;
        false
    }
}

impl<T> Hold<T> for Head {
    const PAST_HEAD: bool = false;

    #[inline]
    fn hold(_: &mut T, duty: Duty) -> Option<Duty> {
        Some(duty)
    }
}

impl<T, M: Hold<T>> Hold<T> for Inbound<M> {
    const PAST_HEAD: bool = M::PAST_HEAD;

    #[inline]
    fn hold(response: &mut T, duty: Duty) -> Option<Duty> {
        M::hold(response, duty)
    }

    #[inline]
    fn outcome(response: &T) -> crate::observe::Outcome {
        M::outcome(response)
    }

    #[inline]
    fn timed_out(response: &T) -> bool {
        M::timed_out(response)
    }
}

/// What a layer does with a request `Req` it refuses before the service
/// behind it saw it: drops it ([`Head`], [`BodyEnd`], [`Inbound<Head>`]),
/// or at an HTTP server ([`Inbound<BodyEnd>`], feature `http`) reads the
/// rest of an `http::Request`'s body first, in a task of its own, then
/// drops it. Sealed.
///
/// Why a server reads it: the refusal is answered at once, while an
/// HTTP/2 client may still be sending the body (a gRPC message is sent
/// just after the head). A body dropped before its end resets the
/// stream, and the frames of it still on their way then arrive on a
/// reset stream. hyper's HTTP/2 (h2 0.4.16 and later) counts such small
/// frames against a budget per connection and closes the connection
/// (`GOAWAY`, `ENHANCE_YOUR_CALM`) when it runs out, with every call in
/// flight on it. A server preset refusing a third of the calls of plain
/// tonic clients had its connections closed every 4 s or so, 211 to 440
/// calls lost a run; an axum server's connection closed the same way
/// (`tests/presets`, `refused_calls_keep_the_http2_connection_open` and
/// its neighbours). About [`DRAIN_BYTES`], for at most [`DRAIN_TIME`],
/// are read; a longer body is dropped (its frames are large, and large
/// frames are not counted). The server
/// presets' layers that refuse a request at once all read it: the
/// deadline read from headers (a call sent with no time left), the rate
/// limit, the bulkheads per tenant, the adaptive limit and the bulkhead;
/// the bulkhead also after a wait in its queue, and the rate limit also
/// in `Mode::Wait` (a request whose cell would come too late). A request
/// a rate limit refuses after waiting for its cell or for Redis's answer
/// is still dropped: by then a small body has arrived.
pub trait Release<Req>: sealed::Sealed {
    /// Lets go of `request`, refused.
    #[doc(hidden)]
    fn release(request: Req);
}

impl<Req> Release<Req> for Head {
    #[inline]
    fn release(_: Req) {}
}

impl<Req> Release<Req> for BodyEnd {
    #[inline]
    fn release(_: Req) {}
}

impl<Req> Release<Req> for Inbound<Head> {
    #[inline]
    fn release(_: Req) {}
}

#[cfg(feature = "http")]
impl<B> Release<http::Request<B>> for Inbound<BodyEnd>
where
    B: http_body::Body + Send + 'static,
{
    #[inline]
    fn release(request: http::Request<B>) {
        drain(request.into_body());
    }
}

/// How much of a refused request's body an [`Inbound<BodyEnd>`] layer
/// reads before it stops (64 KiB and the frame that crosses it; 64 KiB is
/// HTTP/2's default window of a stream, a small message and its frames
/// many times over; the frames of a larger upload are large, and it is
/// dropped as before).
pub const DRAIN_BYTES: usize = 64 * 1024;

/// The longest an [`Inbound<BodyEnd>`] layer reads a refused request's
/// body (1 s: the rest of a small body arrives within a round trip).
pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads `body` to its end (at most [`DRAIN_BYTES`] and [`DRAIN_TIME`]) in
/// a task of its own, then drops it; outside a tokio runtime it is dropped
/// at once. Out of line: a refusal's path.
#[cfg(feature = "http")]
#[inline(never)]
fn drain<B>(body: B)
where
    B: http_body::Body + Send + 'static,
{
    use bytes::Buf;

    if body.is_end_stream() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut read = 0usize;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(frame)) =
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            {
                if let Some(data) = frame.data_ref() {
                    read += data.remaining();
                    if read >= DRAIN_BYTES {
                        break;
                    }
                }
            }
        })
        .await;
    });
}

/// What a layer still holds for a call (a permit, a verdict to give),
/// handed to the response body to carry. Opaque (the layers' plumbing, in
/// the signature of a hidden method).
#[doc(hidden)]
pub struct Duty(pub(crate) DutyKind);

pub(crate) enum DutyKind {
    #[cfg(feature = "bulkhead")]
    Bulkhead(crate::bulkhead::queue::Permit),
    #[cfg(feature = "circuit-breaker")]
    Breaker(crate::circuit_breaker::Pending),
    #[cfg(feature = "shed")]
    Throttle(crate::shed::ThrottlePending),
}

impl fmt::Debug for Duty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[allow(unreachable_patterns)]
        let what = match &self.0 {
            #[cfg(feature = "bulkhead")]
            DutyKind::Bulkhead(_) => "bulkhead permit",
            #[cfg(feature = "circuit-breaker")]
            DutyKind::Breaker(_) => "breaker verdict",
            #[cfg(feature = "shed")]
            DutyKind::Throttle(_) => "throttle verdict",
            _ => "nothing",
        };
        f.write_str(what)
    }
}

/// How a held body ended, for the verdicts it carries.
#[cfg(any(feature = "circuit-breaker", feature = "shed"))]
pub(crate) enum End<'a> {
    /// Read to its end (trailers without an error status included).
    Complete,
    /// Failed: the body's error, its deadline's, or the gRPC status of its
    /// trailers.
    Failed(&'a crate::error::BoxError),
}

/// For the circuit breaker and the client throttle: whether a response
/// whose head looks like a success is judged again when its body ends
/// ([`BodyEnd`], with the classifier `C` reading the body's failure as an
/// error), or now ([`Head`]). Sealed.
pub trait HoldVerdict<T, C>: Hold<T> {
    /// The judge of the body's end, if the verdict waits for it.
    #[doc(hidden)]
    fn pending(response: &T) -> Option<Judge>;
}

impl<T, C> HoldVerdict<T, C> for Head {
    #[inline]
    fn pending(_: &T) -> Option<Judge> {
        None
    }
}

/// How a classifier judges a body that failed, made for one classifier and
/// response type. Opaque (the layers' plumbing, in the signature of a
/// hidden method).
#[doc(hidden)]
#[derive(Clone, Copy)]
#[allow(dead_code)]
pub struct Judge(pub(crate) crate::classify::JudgeFn);

impl fmt::Debug for Judge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Judge")
    }
}
