//! Retries with jittered backoff, a retry budget and deadline awareness: a
//! retry layer that cannot turn a brownout into a retry storm.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use seawall::retry::RetryLayer;
//! use seawall::BoxError;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! // A dependency that fails its first call, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let c = calls.clone();
//! let flaky = tower::service_fn(move |req: u32| {
//!     let n = c.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         if n == 0 { Err::<u32, BoxError>("connection reset".into()) } else { Ok(req * 2) }
//!     }
//! });
//!
//! // Build the layer once per dependency: its budget is shared by every
//! // service and clone built from it.
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .backoff(Duration::from_millis(20), Duration::from_secs(1))
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new().layer(retry).service(flaky);
//!
//! let answer = svc.ready().await.unwrap().call(21).await.unwrap();
//! assert_eq!(answer, 42);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```
//!
//! # What it does
//!
//! - **Attempts.** At most `max_attempts` calls per request, the first one
//!   included (default 3). The [`RetryPolicy`] decides, per outcome, whether to
//!   retry ([`Verdict`]). The default [`RetryErrors`] retries every error but
//!   seawall's `DeadlineExceeded`, an open breaker's `CircuitOpen`, a
//!   `RetryBudgetExhausted` and a `RateLimited` that says waiting will not
//!   help (no `retry_after`), and does retry `AttemptTimeout`. With feature `http`, [`http::HttpRetry`]
//!   retries 5xx (not 501), 408, 429 and connection errors for idempotent
//!   requests; with feature `tonic`, [`grpc::GrpcRetry`] retries `UNAVAILABLE`
//!   and the codes you configure.
//! - **Backoff.** Exponential, capped, with [full jitter](Jitter::Full) by
//!   default (base 50 ms, cap 2 s); equal, decorrelated and no jitter are
//!   selectable ([`Jitter`] lists the formulas and bounds). `seed` makes the
//!   delays reproducible.
//! - **Budget.** One [`RetryBudget`] per layer, shared by every service and
//!   clone built from it: over a sliding window (default 10 s) retries may be
//!   at most a fraction of requests (default 5 %, plus half of those that
//!   succeeded) plus a floor
//!   (default 10 retries/s, so 100 per window). A request is counted when
//!   its first attempt ends (a success as a request and a success in one
//!   atomic write); one still in flight is not counted yet. When the budget
//!   is empty the request fails with its last outcome. During a total outage, 10 000
//!   requests within one 10 s window therefore make at most 10 600 attempts
//!   (10 500 and the floor's 100), where a plain 3-attempt retry makes 30 000.
//! - **Timeouts.** An attempt that timed out (an
//!   [`AttemptTimeout`](crate::error::AttemptTimeout) below) is retried only
//!   while timeouts are rare: no more than 2 plus `ratio` (5 %) of the
//!   requests of the last two slices of the window (2 s with the defaults;
//!   2, so that at any traffic a hung call or two are a tail: a service of
//!   2 requests a second has its one hung call retried). Past that, the
//!   dependency is
//!   slow for everyone, not in its tail (a saturated queue): a retry cannot
//!   be faster, it adds load where none can be spared (the timed-out call
//!   may still be running there), and it goes to the back of the queue.
//!   The layer then tells an [`AttemptTimeoutLayer`](crate::deadline::AttemptTimeoutLayer)
//!   below not to cut the attempts it makes (see the
//!   [deadline module](crate::deadline)), and timeouts are judged again as
//!   each slice passes. A timeout not retried for this is reported as
//!   `RetryGaveUp` with reason
//!   [`TimeoutsCommon`](crate::observe::GiveUpReason::TimeoutsCommon).
//!   Attempts already in flight when timeouts become common are cut at
//!   their limit and not retried, unless the attempt timeout is linked to
//!   this layer, as the [`ClientStack`](crate::stack::ClientStack) links
//!   them (then it asks as its timer fires, and lets them run on). Other
//!   failures are retried as before.
//! - **Retries that save nothing.** A failure of the dependency (not a
//!   timeout, a refusal of this process, or a busy answer that asks for a
//!   wait or says "over quota"; a bare `503` or `UNAVAILABLE`, which a
//!   retry to another instance may cure, counts as a failure) is retried only
//!   while such retries save their requests: the layer keeps the share of
//!   retries after a failure that succeeded, a moving average over the
//!   last few dozen, and while fewer than 1 in 10 do, it retries 1 failure
//!   in 8 (which tells when retries save requests again), on the budget's
//!   share of requests and its floor only, as it does a timeout, and gives
//!   the others up with reason
//!   [`RetriesFutile`](crate::observe::GiveUpReason::RetriesFutile). A
//!   request that fails every time it is sent (a "poison" request, a broken
//!   route) is then sent about once rather than `max_attempts` times, while
//!   failures that a retry cures (30 % of calls failing at random: 7 retries
//!   in 10 succeed) are retried as before. A judgement that no retry has
//!   confirmed for a whole budget window (10 s) is forgotten. It is one
//!   judgement per layer, over every route it serves: a route that always
//!   fails, carrying most of the failures, makes retries futile for a
//!   route whose rarer failures a retry would cure (give such a route a
//!   stack of its own). Chosen by `tests/stack`'s poison
//!   request (1 in 20 failing after 150 ms of one of 8 workers: retried
//!   three times, they pushed the dependency past its capacity, and 2775 of
//!   the 2850 healthy requests were served; now all of them, as by a plain
//!   client) and by a new user's trial of it over real HTTP (92 % served
//!   where a plain client served all).
//! - **Deadline.** The layer reads the task-local [`deadline::current()`](crate::deadline::current).
//!   It never sleeps a backoff that ends past the deadline and never starts a
//!   retry with less than `min_remaining` (default 10 ms) left; it then
//!   returns the last outcome, or `DeadlineExceeded` when nothing is left at
//!   all. The first attempt is always made (expiry on arrival is the
//!   deadline layer's job).
//! - **Server hints.** A `retry_after` carried by a seawall rejection
//!   (circuit open, rate limited, …), an HTTP `Retry-After` (delay-seconds) or
//!   a gRPC `grpc-retry-pushback-ms` replaces the backoff: the retry waits
//!   exactly that long, if that fits the deadline and `max_retry_after`
//!   (default 10 s); otherwise the request is not retried. A negative or
//!   unparseable pushback means "do not retry". After a hint the backoff
//!   starts over.
//! - **Retry at one layer.** Outbound HTTP/gRPC retries carry their
//!   attempt number (2, 3, …) in the [`ATTEMPT_HEADER`] (`x-seawall-attempt`;
//!   a first attempt carries none, and one copied from an inbound request
//!   is taken off). A server
//!   that receives attempt 2 or later can record it
//!   ([`http::MarkInboundAttemptLayer`], or [`scope_inbound_attempt`]); the
//!   retry layers of the client stacks called while handling it then send
//!   each request once, so attempts do not multiply across hops.
//! - **Requests.** `Req: Clone` works directly: the request is cloned only
//!   when a retry is possible, and kept for the next attempt. An
//!   `http::Request` whose body is not `Clone` goes through
//!   [`http::ReplayBodyLayer`], which buffers the body once (up to 64 KiB by
//!   default) so it can be replayed; a larger body is sent once and not retried.
//!
//! # Events
//!
//! Every attempt reports `CallStarted` / `CallFinished`, every retry
//! `RetryScheduled { attempt, delay }` (before its backoff), and every
//! failed request that is not retried further `RetryGaveUp { attempts, reason }`;
//! an empty budget also reports `BudgetExhausted`.
//!
//! # Readiness and cancellation
//!
//! `poll_ready` is the inner service's. The response future is a state machine
//! (calling, backing off, waiting for readiness) with no boxing and no spawned
//! task; retries use a clone of the inner service, polled ready before each
//! retry. Dropping the future mid-backoff drops the timer and hands the
//! granted retry back to the budget. The failed outcome is kept during the
//! backoff, so it can be returned if the retry finally does not happen (for
//! an HTTP response, its unread body is held until then).

mod backoff;
mod budget;
mod future;
pub(crate) mod inbound;
mod layer;
mod policy;
mod service;

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

pub use self::backoff::{Backoff, BackoffState, Delays, Jitter};

/// Whether an attempt ended on its own timeout (an attempt timeout below):
/// for the budget, a timeout; for the gRPC policy, a `DEADLINE_EXCEEDED`.
pub(crate) fn is_attempt_timeout(error: &crate::error::BoxError) -> bool {
    crate::error::rejection_of(error)
        .is_some_and(|r| r.kind() == crate::error::RejectionKind::AttemptTimeout)
}
pub use self::budget::{BudgetSnapshot, RequestTicket, RetryBudget, Withdrawal};
pub use self::future::ResponseFuture;
pub use self::inbound::{inbound_attempt, scope_inbound_attempt, sync_scope_inbound_attempt};
#[cfg(feature = "serde")]
pub(crate) use self::layer::check_max_attempts;
pub use self::layer::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_AFTER, DEFAULT_MIN_REMAINING, MAX_ATTEMPTS_LIMIT,
    RetryLayer, RetryLayerBuilder,
};
pub use self::policy::{PolicyFn, RetryErrors, RetryPolicy, Verdict, classify_error, policy_fn};
pub use self::service::Retry;

/// The header carrying a retry's attempt number on outbound HTTP and gRPC
/// requests: `x-seawall-attempt` (2 for the first retry, 3 for the
/// next…). A first attempt carries none: a server reads its absence as 1.
pub const ATTEMPT_HEADER: &str = "x-seawall-attempt";

/// gRPC's header counting the attempts made before this one
/// (`grpc-previous-rpc-attempts`): written by the gRPC retry policy, read
/// on the server side as the attempt number less one.
pub const PREVIOUS_ATTEMPTS_HEADER: &str = "grpc-previous-rpc-attempts";
