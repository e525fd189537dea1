//! Load shedding: an adaptive concurrency limit with priorities and doomed-work
//! rejection, and client-side adaptive throttling.
//!
//! Under overload a service should keep its *goodput* — requests answered
//! within their deadline — close to its capacity instead of collapsing under
//! ever longer queues. [`AdaptiveLimitLayer`] finds that capacity by itself
//! from observed latency and turns the excess away at once with
//! [`Overloaded`](crate::error::Overloaded); [`ThrottleLayer`] makes clients
//! stop sending what a struggling backend would reject anyway.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use seawall::error::{rejection_of, RejectionKind};
//! use seawall::shed::{AdaptiveLimitLayer, Aimd};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! let limit = AdaptiveLimitLayer::builder()
//!     .name("api")
//!     .algorithm(Aimd::builder().initial_limit(2).min_limit(1).build().unwrap())
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new().layer(limit.clone()).service(service_fn(|ms: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(ms)).await;
//!     Ok::<_, std::convert::Infallible>(ms)
//! }));
//!
//! // Two calls in flight fill the limit of 2; a third at the same moment is
//! // a burst, which a queue absorbs: admitted.
//! let a = svc.ready().await.unwrap().call(500);
//! let b = svc.ready().await.unwrap().call(500);
//! let c = svc.ready().await.unwrap().call(500);
//! assert_eq!(limit.inflight(), 3);
//! // A queue that stands for 100 ms is no burst: the next call is turned
//! // away at once instead of queueing.
//! tokio::time::sleep(Duration::from_millis(100)).await;
//! let err = svc.ready().await.unwrap().call(10).await.unwrap_err();
//! assert_eq!(rejection_of(&err).unwrap().kind(), RejectionKind::Overloaded);
//! assert_eq!((a.await.unwrap(), b.await.unwrap(), c.await.unwrap()), (500, 500, 500));
//! assert_eq!(limit.inflight(), 0);
//! # }
//! ```
//!
//! # The adaptive limit
//!
//! Admission is one atomic in-flight counter compared with an atomic limit:
//! no lock, no allocation. A request over the limit is refused at once,
//! but in the queue for a herd and, in a client stack, the wait at the
//! limit (both below). Each finished call adds its round-trip
//! time to a sampling window (atomics); when a window closes (default: 1 s
//! and at least 10 samples) the [`LimitAlgorithm`] runs once, under a short
//! lock that no request waits on, and the new limit is reported with
//! [`EventKind::LimitChanged`](crate::observe::EventKind::LimitChanged).
//!
//! - [`QueueDelay`] (default: initial 20, min 1, max 1000) learns what the
//!   service can run at once and keeps the queue in front of it at a tenth
//!   of its latency, telling a queue of its own from a service that got
//!   slower; [`Gradient2`] and [`Aimd`] follow the formulas and defaults of
//!   Netflix concurrency-limits (initial 20, min 20, max 200); plug your own
//!   with [`LimitAlgorithm`].
//! - How a call feeds the limit: an `Ok` response is an RTT sample (RTTs
//!   under 100 µs are ignored), but in the HTTP and gRPC presets, whose
//!   responses are judged by their status, a failed or "busy" one (a 5xx,
//!   a 429, an error `grpc-status`) is ignored: a dependency that fails or
//!   refuses at once, its answers passed on, must not make slow answers
//!   look like a queue's, nor is its refusal a queue of this server's;
//!   but an answer that says the handler ran out of time (a `504`, a
//!   `DEADLINE_EXCEEDED` in the head: a handler whose dependency hung
//!   answered it at its budget) is a sample of the time it held its
//!   place, as a slower dependency's answer is (without them, the limit
//!   saw only the other routes' fast answers at the limit, and drained
//!   while their requests were refused); an error that says a call did
//!   not make it in time (`DeadlineExceeded`, `AttemptTimeout`: the
//!   handler timeout) is a *drop*; other errors are
//!   ignored, an `Overloaded` too (a dependency's "busy" that the handler
//!   passed on, or a client throttle's refusal in it: no queue here; as
//!   drops, a dependency that shed for a few seconds halved the limit of
//!   the server in front of it, which then refused healthy traffic while
//!   the limit grew back). A response future dropped before it finished (a caller
//!   that went, a hedge that lost, an HTTP/2 stream reset) releases its slot
//!   and is not counted, as Netflix's gRPC limiter ignores a cancel: put
//!   the timeout that should count *below* the limit (the server presets'
//!   handler timeout, an [`AttemptTimeoutLayer`](crate::deadline::AttemptTimeoutLayer)),
//!   where it ends as a `DeadlineExceeded` or `AttemptTimeout` drop. (Counted
//!   as drops, 5 % of calls hedged away shrank an AIMD limit to its floor at
//!   a tenth of its load.) Gradient2 learns from RTTs only; AIMD backs off on drops;
//!   QueueDelay cuts on drops only when some queueing shows, or when every
//!   call of a window was dropped with half the limit in flight (a hung
//!   dependency: halved, then doubled back once calls are answered).
//! - Bursts: arrivals at random come in bursts well above their average,
//!   which a queue absorbs in a few service times. For 100 ms after the
//!   limit is reached from a quiet spell (CoDel's interval), `Critical` and
//!   `CriticalPlus` requests over it are admitted, up to four times the
//!   limit in flight (no more than its upper bound); a queue that stands
//!   at the limit longer is held there, and a new burst waits until the
//!   limit has refused nothing for 100 ms, or the calls in flight fell to
//!   half of it (the rules in full at
//!   [`burst`](AdaptiveLimitLayerBuilder::burst), which sets the time;
//!   zero: no bursts). A burst's calls are no samples of the algorithm's.
//!   During a burst, and within 1 s of its start, the requests past it
//!   may wait in the queue for a herd (below).
//! - Every service and clone built from one layer shares one limit.
//! - `poll_ready` forwards the inner service's readiness; the decision is made
//!   in `call` (a rejection is at once, or after a wait in the limit's queue).
//!
//! ## Priorities
//!
//! Each request has a [`Criticality`](criticality::Criticality) (`CriticalPlus`, `Critical`,
//! `SheddablePlus`, `Sheddable`), found by the layer's extractor: the
//! task-local set with [`criticality::scope`] (default), a closure over the
//! request, or with feature `http` [`criticality::FromHttpRequest`] (an
//! extension, then the `x-seawall-criticality` header). Below the limit
//! everything is admitted. At the limit, only a class still under its
//! guaranteed share of the limit gets in (defaults: `CriticalPlus` 20 %,
//! `Critical` 50 %, `SheddablePlus` 10 %, `Sheddable` 0 %), so the lowest
//! classes are shed first while the top ones keep their share (as in
//! Netflix's partitioned limits). A share is a guarantee, not an order: a
//! class past its own share is refused at the limit even while a lower
//! class under its share still gets in (at most 1.8 times the limit in
//! flight with the defaults, besides a burst's admissions). Give the classes you protect the shares they
//! need.
//!
//! ## Doomed work
//!
//! A request whose remaining deadline
//! ([`deadline::current()`](crate::deadline::current)) is shorter than the
//! fastest answer of the last window (no request could finish in less;
//! one limit over a cheap route and a costly one must not refuse the cheap
//! one by the costly one's latency, as the window's average did) cannot
//! finish in time; it is rejected at admission (event detail `"doomed"`,
//! an [`Overloaded`](crate::error::Overloaded) with a `retry_after`: the
//! caller's next request may bring a longer budget) instead of taking a
//! slot to die. Only on current evidence: while the server is busy (half
//! its limit in flight), on an estimate under two windows old, measured
//! since the server was last idle; an idle server admits everything.
//! Turn it off with
//! [`reject_doomed(false)`](AdaptiveLimitLayerBuilder::reject_doomed).
//!
//! ## The queue for a herd
//!
//! A herd, many requests at one instant and then none (a job at the top of
//! the minute, clients reconnecting after a deploy), is more than a burst
//! admits. During a burst that began after a window without a refusal (a
//! herd comes after a quiet spell), after it within 1 s of its start (a
//! herd that came slower than the burst's cap), and for 1 s after such a
//! burst began the queue, a `Critical` or `CriticalPlus` request with a deadline that the limit
//! would refuse waits in the limit's queue instead (first come, first
//! served, but in a client stack's limit: see below; at most [`max_queue`](AdaptiveLimitLayerBuilder::max_queue),
//! 1000 by default), for a place under the limit, as long as it can be
//! served within its deadline at the rate places come free. As calls end,
//! the newest waiters that can no longer be served in time are refused
//! (detail `"queue"`), each told
//! to come back when the queue before it will have drained; a waiter that
//! sees no call end within its patience (a window, or four expected
//! service times if longer) is refused with the
//! limit's hint, and nothing waits again until the calls at the limit
//! move (a dependency hung behind them must not make each request wait).
//! Requests that come after that second join the queue while it drains
//! only if they come slower than places free, by a third at least (the
//! traffic after a herd); otherwise they are refused at once, told when
//! the queue will have drained. An overload that lasts, refusing all
//! along, never begins a queue after its first. 2000 requests at once at 4
//! workers of 10 ms, callers with 2 s: 797 served; without the queue 80,
//! the rest refused at once; without seawall, 800 (`tests/shed`).
//!
//! ## A client stack's limit waits
//!
//! A [`ClientStack`](crate::stack::ClientStack)'s limit, whose calls all
//! go out to one dependency, queues at any time
//! ([`wait_at_limit`](AdaptiveLimitLayerBuilder::wait_at_limit)): a
//! `Critical` or `CriticalPlus` request with a deadline that it refuses
//! waits for a place, never sent, to its deadline (up to `max_queue`; a
//! waiter that sees no call end for its patience is refused, as in a
//! herd), as a plain client's request waits at the dependency. The places
//! that come free go to the newest waiters first, if the last window's
//! fastest answer fits their deadlines; no waiter is refused for the
//! estimate: a dependency that recovers serves them.
//!
//! ## Otherwise, no queue
//!
//! Outside a herd, a limit that does not wait at the limit (a server's)
//! does not queue: what it admits goes on at once,
//! bursts included, and what it refuses is refused at once, with a
//! `retry_after` (its `poll_ready` is the inner service's). A bulkhead
//! queue in front of it does not hold those back: the bulkhead's queue
//! fills only when its own `max_concurrent` is reached, which knows
//! nothing of the limit. A caller that should wait and come back does so
//! on the `retry_after` (seawall's client stacks do).
//!
//! # Client-side adaptive throttling
//!
//! [`ThrottleLayer`] implements the adaptive throttling of Google SRE's
//! "Handling Overload" on the client: over a sliding window (2 minutes, in
//! 120 one-second buckets, O(1) per call) it counts `requests` (every call
//! the application made, throttled ones included) and `accepts` (calls the
//! backend accepted, as the [`Classify`](crate::classify::Classify) you give
//! it says; by default every `Ok`; a call it classifies
//! [`Ignored`](crate::observe::Outcome::Ignored) is counted as neither), and
//! rejects a new call locally, with
//! `Overloaded` (event detail `"throttled"`), with probability
//!
//! `min(0.9, max(0, (requests − K × accepts) / (requests + 1)))`, K = 2.
//!
//! The cap (0.9; Envoy's admission control uses 0.8) keeps a trickle of
//! calls reaching the backend so the throttle sees it recover. Random draws
//! come from a counter-based generator (splitmix64, one atomic add per
//! draw); [`ThrottleLayerBuilder::seed`] makes them deterministic. The
//! window is lock-free: a few atomic operations when a call starts and when
//! it is accepted or ignored.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use seawall::shed::ThrottleLayer;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! let throttle = ThrottleLayer::builder().name("users-api").seed(1).build().unwrap();
//! let mut client = ServiceBuilder::new().layer(throttle.clone()).service(service_fn(|_: ()| async {
//!     Err::<(), _>("unavailable")
//! }));
//! let mut sent = 0;
//! for _ in 0..1000 {
//!     match client.ready().await.unwrap().call(()).await {
//!         Err(e) if e.to_string().starts_with("overloaded") => {}
//!         _ => sent += 1,
//!     }
//! }
//! // The backend rejects everything: the client soon sends only ~10 %.
//! assert!(sent < 150, "{sent}");
//! assert_eq!(throttle.rejection_probability(), 0.9);
//! # }
//! ```

mod aimd;
mod algorithm;
pub mod criticality;
mod future;
mod gradient;
mod layer;
pub(crate) mod limiter;
mod queue;
mod queue_delay;
mod service;
mod throttle;

pub use self::aimd::{Aimd, AimdBuilder};
pub use self::algorithm::{LimitAlgorithm, WindowSample};
pub use self::future::ResponseFuture;
pub use self::gradient::{Gradient2, Gradient2Builder};
pub use self::layer::{AdaptiveLimitLayer, AdaptiveLimitLayerBuilder};
pub use self::queue_delay::{QueueDelay, QueueDelayBuilder};
pub use self::service::AdaptiveLimit;
pub(crate) use self::throttle::ThrottlePending;
pub use self::throttle::{Throttle, ThrottleFuture, ThrottleLayer, ThrottleLayerBuilder};
