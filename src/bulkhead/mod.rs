//! Bulkhead: at most `max_concurrent` calls in flight and at most `max_queue`
//! callers waiting, so one slow dependency or route cannot drown the process.
//!
//! When a dependency slows down, calls to it hold their resources longer, more
//! requests pile up behind them, and soon every worker is stuck on the one slow
//! thing. A bulkhead caps the calls in flight to that dependency and bounds how
//! many callers may wait, and how long: the excess is refused at once with
//! [`BulkheadFull`](crate::error::BulkheadFull) (HTTP 503 / gRPC `UNAVAILABLE`,
//! retryable elsewhere), so goodput stays close to capacity instead of
//! collapsing.
//!
//! - **Admission.** A free permit is taken with one atomic compare-and-swap:
//!   no lock, no allocation. The permit lives in the response future and is
//!   released when the inner future completes or the response future is
//!   dropped.
//! - **Waiting.** With every permit taken, up to `max_queue` callers wait
//!   (default 0: reject at once). A waiter gives up after `max_wait`
//!   (default 1 s) or at its request deadline
//!   ([`deadline::current()`](crate::deadline::current)), whichever comes
//!   first. A freed permit is handed straight to the next waiter in
//!   [`QueueOrder`]: FIFO (default), LIFO, CoDel (target 5 ms, interval
//!   100 ms) or CoDel with adaptive LIFO; while anyone waits, newcomers queue
//!   behind them rather than take a permit. A waiter that is dropped leaves the
//!   queue; if it was dropped just after being handed a permit, the permit
//!   passes on to the next waiter.
//! - **Rejections** emit [`EventKind::Rejected`](crate::observe::EventKind)
//!   with reason `bulkhead_full` and detail `"queue_full"`, `"max_wait"`,
//!   `"deadline"` or `"codel"`. Admitted calls emit `CallStarted` and
//!   `CallFinished` (outcome: `Err` a failure; `Ok` a success, or, for an HTTP
//!   response held to its body's end (`BodyEnd`), as its status says: a 5xx a
//!   failure (but a 503), a 429 or a 503 an overload, a 4xx ignored).
//! - **Shared state.** The permits and the queue belong to the
//!   [`BulkheadLayer`], in an `Arc`: every service built from one layer, and
//!   every clone of those services, shares them. Build one layer (one named
//!   bulkhead) per dependency or route. [`BulkheadHandle`] reads the free
//!   permits and the queue length, for metrics and tests.
//!
//! # Readiness
//!
//! By default `poll_ready` only reports the inner service's readiness and the
//! waiting happens *inside the response future*: `poll_ready` is `Ready`
//! whenever the inner service is, and a caller learns it was refused from the
//! future's `BulkheadFull` error. Callers that act on readiness (balancers)
//! can choose [`backpressure`](BulkheadBuilder::backpressure) mode instead:
//! `poll_ready` reserves a permit and is `Pending` until one is free. See
//! [`Bulkhead`] for the details of both modes.
//!
//! Waiting needs a tokio runtime with time enabled (the waiter's timer is a
//! `tokio::time::Sleep`).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use seawall::bulkhead::{BulkheadLayer, QueueOrder};
//! use seawall::error::{rejection_of, RejectionKind};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! // One bulkhead for the database: 2 queries at once, 1 waiting, for 50 ms at most.
//! let db_bulkhead = BulkheadLayer::builder()
//!     .name("db")
//!     .max_concurrent(2)
//!     .max_queue(1)
//!     .max_wait(Duration::from_millis(50))
//!     .queue_order(QueueOrder::Fifo)
//!     .build()?;
//! let handle = db_bulkhead.handle();
//!
//! let mut db = ServiceBuilder::new()
//!     .layer(db_bulkhead)
//!     .service_fn(|q: &'static str| async move {
//!         tokio::time::sleep(Duration::from_millis(100)).await; // a slow query
//!         Ok::<_, std::convert::Infallible>(q.len())
//!     });
//!
//! let a = db.ready().await?.call("a");
//! let b = db.ready().await?.call("b");
//! let c = db.ready().await?.call("c"); // waits: both permits are taken
//! let d = db.ready().await?.call("d"); // refused at once: the queue is full
//! assert_eq!((handle.available_permits(), handle.queue_len()), (0, 1));
//!
//! let err = d.await.unwrap_err();
//! assert_eq!(rejection_of(&err).unwrap().kind(), RejectionKind::BulkheadFull);
//! assert_eq!(err.to_string(), "bulkhead full (db)");
//!
//! // `c` waits 50 ms at most, but the first query takes 100 ms: it gives up.
//! let (a, b, c) = tokio::join!(a, b, c);
//! assert_eq!((a?, b?), (1, 1));
//! assert!(c.is_err());
//! assert_eq!(handle.available_permits(), 2);
//! # Ok(())
//! # }
//! ```

mod future;
mod handle;
mod layer;
pub(crate) mod queue;
mod service;

pub use self::future::ResponseFuture;
pub use self::handle::BulkheadHandle;
#[cfg(feature = "serde")]
pub(crate) use self::layer::check_max_concurrent;
pub use self::layer::{BulkheadBuilder, BulkheadLayer, MAX_LIMIT};
pub use self::queue::QueueOrder;
pub use self::service::Bulkhead;
#[cfg(feature = "keyed")]
pub(crate) use self::service::admit;
