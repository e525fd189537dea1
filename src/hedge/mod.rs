//! Hedged requests: when a request has not answered after a delay, send a
//! copy; the first answer wins and the others are cancelled. It cuts the
//! tail a few slow replicas or a garbage collection pause add to every
//! caller ("The Tail at Scale": with hedging, a p99.9 of 1,800 ms became
//! 74 ms for a few percent of extra load).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use seawall::hedge::HedgeLayer;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! // The first call is stuck for 10 s; the copy answers in 10 ms.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let backend = service_fn(move |req: u32| {
//!     let n = seen.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let slow = if n == 0 { 10_000 } else { 10 };
//!         tokio::time::sleep(Duration::from_millis(slow)).await;
//!         Ok::<_, seawall::BoxError>(req * 2)
//!     }
//! });
//! let layer = HedgeLayer::builder()
//!     .delay(Duration::from_millis(50)) // or the default: the p95 of recent calls
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(backend);
//!
//! let start = tokio::time::Instant::now();
//! let answer = svc.ready().await.unwrap().call(21).await.unwrap();
//! assert_eq!(answer, 42);
//! assert_eq!(start.elapsed(), Duration::from_millis(60)); // 50 ms, then the copy's 10
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```
//!
//! # What is hedged, and how much
//!
//! - **When**: after a fixed delay ([`delay`](HedgeLayerBuilder::delay)), or
//!   by default after the p95 of recent successful calls, read from a
//!   bounded histogram (O(1) per sample, no allocation; see
//!   [`DEFAULT_QUANTILE`]). No hedge until the estimator has
//!   [`DEFAULT_MIN_SAMPLES`] samples.
//! - **How many**: at most [`max_attempts`](HedgeLayerBuilder::max_attempts)
//!   in flight per request (default 2, at most 5 as gRPC allows), each the
//!   delay after the one before.
//! - **How much load**: each hedge draws from a budget, 10 % of the requests
//!   plus 1 per second over a sliding second by default
//!   ([`DEFAULT_BUDGET_RATIO`]), or the retry layer's budget when
//!   [shared](HedgeLayerBuilder::budget). When every call turns slow (a
//!   brownout), every request wants a hedge until the estimate catches up,
//!   and the budget is what keeps the dependency at 1.1 times its load at
//!   most, not 2.
//! - **Deadline**: no hedge that cannot get as much time as the request
//!   waited before it ([`deadline::current`](crate::deadline::current)); an
//!   attempt timeout below bounds each copy, as it bounds any attempt it
//!   may cut: under the gRPC preset, whose policy does not retry a
//!   timeout, the first attempt runs to the request's deadline (its
//!   `grpc-timeout` says the whole budget) while a copy, a second attempt,
//!   gets the attempt timeout (its `grpc-timeout` says that, or the time
//!   left if shorter).
//! - **Only what is safe to repeat**: the [`RetryPolicy`](crate::retry::RetryPolicy)
//!   decides (`may_hedge`, `clone_request`), so the HTTP and gRPC retry
//!   policies hedge idempotent methods and opted-in gRPC methods only (a
//!   `POST` an `Idempotency-Key` makes safe to retry is not hedged). A
//!   hedge carries the attempt header (`on_attempt`, attempt 2 and up), so
//!   the server side sees a repeat and does not hedge or retry it again;
//!   a request that arrived as a retry or a hedge is sent once.
//! - **With a breaker below**: a cancelled copy is not counted (its slot is
//!   given back); a copy refused in this process (an open breaker, a full
//!   bulkhead) reached nobody: its budget comes back and no more hedges are
//!   sent for that request.
//!
//! A hedge that answers with a retryable failure does not end the request
//! while another attempt is running; when none is left, the last failure is
//! returned, for a retry layer above. Nor does a hedge's answer that is not
//! a success (a `4xx`, a failure): a server that follows the IETF
//! idempotency-key draft answers a second request with a key in flight
//! `409 Conflict`, and the original, mid-work, would be cancelled for it.
//!
//! # Where it helps, and where it does not
//!
//! - **A tail of up to about 5 % of calls** (the p95 falls among the fast
//!   ones): in the storm's heavy-tail scenario, 5 % of calls at 200 ms, the
//!   p99 drops from 200 to 25 ms for 4.4 % more calls. When a larger share is
//!   slow (one slow replica in ten is 10 %), the p95 *is* the slow latency
//!   and no copy goes before it: set a [`quantile`](HedgeLayerBuilder::quantile)
//!   below the slow share, a [`budget_ratio`](HedgeLayerBuilder::budget_ratio)
//!   above it, and a third attempt (a copy is slow as often): for 10 % of
//!   calls at 200 ms, `quantile(0.85, 20, 1 s)`, `budget_ratio(0.15)`,
//!   `max_attempts(3)` take the p99 from 200 to 32 ms for 10.2 % more calls
//!   (`tests/hedge`); or a fixed [`delay`](HedgeLayerBuilder::delay).
//! - **One estimate per layer**, for every route it carries: on a host whose
//!   routes differ in latency, the slow route's calls are all past the p95
//!   and get the copies (a 100 ms route with 3 % of the traffic beside a
//!   10 ms one was sent 1.9 calls per request in an outside trial); give
//!   such routes a stack of their own.
//! - **A queueing dependency** (every call slow because it waits behind
//!   others): a copy waits in the same queue; the budget keeps the extra
//!   load to its 10 %.
//! - **HTTP/1.1** cancels a losing copy by closing its connection: a new
//!   connection for each (a TLS handshake each over TLS); HTTP/2 and gRPC
//!   reset the stream only.
//!
//! Events: [`HedgeSent`](crate::observe::EventKind::HedgeSent) for each copy,
//! [`BudgetExhausted`](crate::observe::EventKind::BudgetExhausted) when the
//! budget said no.

mod estimator;
mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::{
    DEFAULT_BUDGET_RATIO, DEFAULT_BUDGET_WINDOW, DEFAULT_MAX_ATTEMPTS, DEFAULT_MIN_SAMPLES,
    DEFAULT_QUANTILE, DEFAULT_WINDOW, HedgeLayer, HedgeLayerBuilder, MAX_ATTEMPTS_LIMIT,
};
pub use self::service::Hedge;
