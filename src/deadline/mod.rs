//! Timeout budgets: a [`Deadline`] that travels with the request.
//!
//! A deadline is an absolute point in time (a `tokio::time::Instant`). Inside
//! the process it travels two ways at once:
//!
//! - in the request itself, for request types that implement [`HasDeadline`]
//!   (`http::Request` keeps it in its extensions, so an axum handler can take
//!   `Extension<Deadline>`), and
//! - as a value of the call in progress (task-local in effect: seawall sets it
//!   in thread-local cells around each `call` and `poll`), so every layer
//!   below and the handler itself can read it with [`current()`] whatever the
//!   request type.
//!
//! On the wire it travels as a *relative* timeout (no clock skew between
//! hosts): a receiver counts it from when it reads the request, so time
//! the request spent in its socket buffers or accept queue (a receiver
//! paused by a long GC or `SIGSTOP`) is not taken off.
//!
//! # Example
//!
//! The examples run on paused time (tokio's `test-util` feature,
//! `#[tokio::test(start_paused = true)]`), so the durations they assert are
//! exact; on a running clock they are lower bounds.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use seawall::deadline::Deadline;
//!
//! let deadline = Deadline::after(Duration::from_millis(300));
//! tokio::time::sleep(Duration::from_millis(100)).await;
//! assert_eq!(deadline.remaining(), Duration::from_millis(200));
//! assert!(!deadline.is_expired());
//! # }
//! ```
//!
//! # Layers (feature `deadline`)
//!
//! - [`DeadlineLayer`] gives each request a **total budget** for everything
//!   below it, retries included. On `call` it sets the request's deadline to
//!   `min(existing, start + budget)`, where *existing* is [`of`]`(&req)` (the
//!   request's own deadline and the task-local one) and *start* is the first
//!   `poll_ready` of that service clone for that request that had to wait
//!   (or `call`, when the inner service was ready at once): time spent
//!   waiting for readiness is charged to the budget. It stores the deadline in the
//!   request ([`HasDeadline::set_deadline`]) and runs the inner `call` and
//!   every poll of the response future with it as the task-local
//!   [`current()`] deadline. A request whose deadline has already passed is
//!   refused with [`DeadlineExceeded`](crate::error::DeadlineExceeded)
//!   without calling the inner service; when the deadline passes mid-call the
//!   call fails with `DeadlineExceeded` (the inner future is dropped).
//!   Requires `Req: HasDeadline` (one line for your own request types:
//!   `impl HasDeadline for MyRequest {}`).
//! - [`AttemptTimeoutLayer`] limits **each attempt** to `min(per_try, time
//!   left)`, the time left being read from the task-local [`current()`]
//!   deadline when `call` runs, so it works for any request type. When the
//!   per-attempt timer fires while budget remains the attempt fails with
//!   [`AttemptTimeout`](crate::error::AttemptTimeout) (retryable); when the
//!   total deadline cut the attempt short it fails with `DeadlineExceeded`
//!   (not retryable: nothing is left; not the dependency's failure to a
//!   circuit breaker above), also when a timer below ran to that deadline
//!   and said `AttemptTimeout` (a tonic channel's, to the `grpc-timeout`
//!   it was sent). A total deadline less than 20 ms before the attempt's
//!   own end (a tenth of the attempt timeout, when that is less), as with
//!   an attempt timeout as long as the budget, ends it as an
//!   `AttemptTimeout`: the dependency had its attempt, and a breaker
//!   counts a dependency that hangs. With no time left at all it refuses
//!   the attempt without calling the inner service. The attempt's deadline is
//!   the task-local deadline below it, so outbound calls advertise it.
//! - Under a [`RetryLayer`](crate::retry::RetryLayer), an attempt is cut at
//!   its own limit only if a retry can follow it. The last attempt, one the
//!   request cannot be copied for (a `POST` under the HTTP preset), one the
//!   retry policy would not retry after a timeout
//!   ([`RetryPolicy::may_retry_timeout`](crate::retry::RetryPolicy::may_retry_timeout):
//!   the gRPC preset's, unless `DEADLINE_EXCEEDED` is opted in), or any
//!   attempt made while the retry budget finds timeouts common (see
//!   [`RetryBudget`](crate::retry::RetryBudget)) runs on under the
//!   request's deadline, which is then the one below it and on the wire:
//!   cutting it would throw away its time and its work for nothing, and an
//!   answer that comes after the attempt timeout but before the deadline
//!   is the caller's. Past its own limit it counts as a timeout to the
//!   retry layer; at the deadline the attempt ends as an `AttemptTimeout`
//!   (what a breaker between counts: a dependency that hangs is counted),
//!   which the caller gets when it was the last attempt (`DeadlineExceeded`
//!   from the retry layer when a retry was still allowed but the deadline
//!   is spent). An attempt a retry can follow, answered within 20 ms of
//!   its own limit with the dependency's answer to the deadline it was
//!   sent (a seawall server's `504`, met a moment before this layer's
//!   timer), timed out too, to the retry layer and its budget. The
//!   scenario: a dependency you do not
//!   own, queueing at 110 % of its capacity for 6 s (`cargo run --example
//!   storm`, "queueing dependency"), whose queue stays within a 1 s
//!   deadline: a client that waits serves everyone; the client stack with a
//!   500 ms attempt timeout cut and retried attempts as the queue passed
//!   500 ms and served 83.6 % (60.5 % with its breaker off), and serves
//!   99.1 % now, with 1.01 calls per request.
//!
//! `poll_ready` of both layers passes the inner readiness through and never
//! times out by itself (a service cannot own a timer without allocating); put
//! a bulkhead (in its default mode: one in `backpressure` mode waits in
//! `poll_ready`, unbounded) or a load shedder below to bound waiting. A
//! `tower::buffer::Buffer` goes below the deadline layer, not above it: its
//! worker polls readiness for every request in turn, and a wait begun for a
//! request whose caller gave up is charged to the next one. Both layers keep their
//! configuration in an `Arc`: every service and clone built from one layer
//! shares it. The timers are tokio `Sleep`s pinned inside the named response
//! futures, created only when the inner future is first found pending: no
//! allocation per call, and no timer at all for calls that answer at once. Calls must run inside a tokio runtime with
//! time enabled.
//!
//! # Ordering
//!
//! Deadline outermost, attempt timeout innermost, retries in between:
//!
//! ```text
//! DeadlineLayer (total, e.g. 1 s)
//!   └─ retry
//!       └─ AttemptTimeoutLayer (per try, e.g. 300 ms)
//!           └─ [PropagateDeadlineLayer] └─ client
//! ```
//!
//! With a 1 s budget, 300 ms per try, `max_attempts(4)` and no backoff,
//! attempts start at 0, 300, 600 and 900 ms; the fourth gets only the 100 ms left and ends the request at
//! exactly 1 s with `DeadlineExceeded`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use seawall::deadline::{AttemptTimeoutLayer, DeadlineLayer};
//! use seawall::error::{rejection_of, RejectionKind};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let slow = service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, seawall::BoxError>("done")
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(1))?)
//!     .layer(AttemptTimeoutLayer::new(Duration::from_millis(300))?)
//!     .service(slow);
//!
//! let start = tokio::time::Instant::now();
//! let err = svc.oneshot(()).await.unwrap_err();
//! // No retry layer here: the first attempt times out after 300 ms, retryably.
//! assert_eq!(start.elapsed(), Duration::from_millis(300));
//! assert_eq!(rejection_of(&err).unwrap().kind(), RejectionKind::AttemptTimeout);
//! # Ok(())
//! # }
//! ```
//!
//! # Reading the budget in a handler
//!
//! Below a [`DeadlineLayer`] (or the header ingress layer), handler code
//! reads the time left with [`remaining()`], whatever the request type. With
//! `http::Request` the deadline is also in the request's extensions, so an
//! axum handler can take `Extension<Deadline>` (and keep it when it spawns
//! work on another task, where the task-local does not follow: run the
//! spawned work in [`scope`]`(deadline, work)`, and the client stacks it
//! calls take that deadline as they would in the handler).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use seawall::deadline::{self, DeadlineLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! let handler = service_fn(|query: String| async move {
//!     // Skip the expensive path when too little time is left.
//!     let left = deadline::remaining().unwrap_or(Duration::MAX);
//!     let answer = if left < Duration::from_millis(100) { "cached" } else { "fresh" };
//!     Ok::<_, seawall::BoxError>(format!("{query}: {answer}"))
//! });
//! let svc = DeadlineLayer::new(Duration::from_millis(250))?.layer(handler);
//! assert_eq!(svc.oneshot("price".to_string()).await?, "price: fresh");
//! # Ok(())
//! # }
//! ```
//!
//! # Propagation (feature `http`)
//!
//! The [`propagate`] module carries deadlines across hops as relative
//! timeouts: [`DeadlineFromHeadersLayer`](propagate::DeadlineFromHeadersLayer) reads `grpc-timeout` and
//! `x-request-timeout-ms` on servers (clamped to 30 s by default, minus a
//! per-hop margin), [`PropagateDeadlineLayer`](propagate::PropagateDeadlineLayer) writes the time left on
//! clients, rounded down. The wire formats are available without any feature
//! through [`parse_grpc_timeout`], [`format_grpc_timeout`] and
//! [`parse_timeout_ms`].
//!
//! # Events
//!
//! Every rejection is reported as [`EventKind::Rejected`](crate::observe::EventKind::Rejected)
//! with the instance name, `reason` `deadline_exceeded` or `attempt_timeout`,
//! and one of these `detail`s:
//!
//! | detail | meaning |
//! |---|---|
//! | `expired_on_arrival` | the request's deadline had already passed when it reached the layer; the inner service was not called |
//! | `expired_waiting_ready` | ([`DeadlineLayer`]) the budget was spent waiting in `poll_ready`; the inner service was not called |
//! | `timed_out` | the deadline or the per-attempt timer fired during the call |
//!
//! The header ingress layer reports unreadable or clamped headers as
//! [`EventKind::InputIgnored`](crate::observe::EventKind::InputIgnored)
//! (`input` = the header, `reason` = `malformed`, `too_long`, `bad_unit`,
//! `empty` or `clamped`).

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// An absolute deadline on tokio's clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

/// The longest budget a [`Deadline::after`] can express (about 30 years); longer
/// budgets are clamped to it, so arithmetic on deadlines never overflows.
pub const MAX_BUDGET: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

impl Deadline {
    /// The deadline at `instant`.
    #[inline]
    pub const fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// The deadline `budget` from now (clamped to [`MAX_BUDGET`]).
    #[inline]
    pub fn after(budget: Duration) -> Self {
        Self::after_from(Instant::now(), budget)
    }

    /// The deadline `budget` after `now` (clamped to [`MAX_BUDGET`]).
    #[inline]
    pub fn after_from(now: Instant, budget: Duration) -> Self {
        let budget = budget.min(MAX_BUDGET);
        Deadline(
            now.checked_add(budget)
                .unwrap_or_else(|| now + MAX_BUDGET.min(Duration::from_secs(86_400))),
        )
    }

    /// The instant of the deadline.
    #[inline]
    pub const fn instant(self) -> Instant {
        self.0
    }

    /// Time left until the deadline, zero once it has passed.
    #[inline]
    pub fn remaining(self) -> Duration {
        self.remaining_from(Instant::now())
    }

    /// Time left from `now` until the deadline, zero once it has passed.
    #[inline]
    pub fn remaining_from(self, now: Instant) -> Duration {
        crate::clock::elapsed(now, self.0)
    }

    /// Whether the deadline has passed.
    #[inline]
    pub fn is_expired(self) -> bool {
        self.0 <= Instant::now()
    }

    /// The earlier of two deadlines (merging keeps the earlier one).
    #[inline]
    pub fn min(self, other: Deadline) -> Deadline {
        if other.0 < self.0 { other } else { self }
    }

    /// The earlier of `self` and `other`, if any.
    #[inline]
    pub fn min_opt(self, other: Option<Deadline>) -> Deadline {
        match other {
            Some(o) => self.min(o),
            None => self,
        }
    }
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Deadline")
            .field(&format_args!("{:?} remaining", self.remaining()))
            .finish()
    }
}

thread_local! {
    static CURRENT: std::cell::Cell<Option<Deadline>> = const { std::cell::Cell::new(None) };
}

thread_local! {
    /// Set by a retry layer around the inner `call` of each attempt: whether
    /// a retry may follow if that attempt times out (`None`: no retry layer
    /// said, as when a layer between makes the call later).
    static RETRY_MAY_FOLLOW: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Makes `call` (an attempt's inner call) with `may_follow` telling an
/// [`AttemptTimeoutLayer`] below whether a retry may follow a timeout of it:
/// when none can, the attempt is not cut at its own limit (cutting it would
/// only throw away the time and the work done) and runs on to the request's
/// deadline.
#[inline]
#[cfg_attr(not(feature = "retry"), allow(dead_code))]
pub(crate) fn call_with_retry_gate<R>(may_follow: bool, call: impl FnOnce() -> R) -> R {
    // The common case, a retry may follow: nothing to set, nothing read.
    // (Under an outer retry layer that said none may follow, the inner
    // one's attempts then run on too: they get the time, not the retry.)
    // A guard, not a scope the result travels out of: the caller's
    // future is built where it is kept (no copy of it on the way).
    let _gate = (!may_follow).then(|| crate::local::Guard::set(&RETRY_MAY_FOLLOW, false));
    call()
}

/// What the retry layer above said of the attempt being called (see
/// [`call_with_retry_gate`]).
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
#[inline]
pub(crate) fn retry_may_follow() -> Option<bool> {
    crate::local::get(&RETRY_MAY_FOLLOW)
}

/// Asked by an attempt timeout linked to the retry layer above it in a
/// stack, as its timer fires: whether timeouts are common now (a timed-out
/// attempt would not be retried).
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
pub(crate) type RetrySignal = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

thread_local! {
    /// What an attempt timeout noted of its attempt for the retry layer
    /// above ([`OVERRAN`], [`AT_LIMIT`]; see [`take_attempt_notes`]).
    static ATTEMPT_NOTES: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// A note of [`take_attempt_notes`]: an attempt left uncut passed its own
/// limit, a timeout to the retry layer above.
#[cfg_attr(not(feature = "retry"), allow(dead_code))]
pub(crate) const OVERRAN: u8 = 1;

/// A note of [`take_attempt_notes`]: an attempt cut at its own limit was
/// answered within [`ANSWER_MARGIN`] of that limit. The dependency's
/// answer to the deadline it was sent (a seawall server's `504`) is then
/// this attempt's timeout, met by the dependency a moment before its
/// timer: in a chain A → B → C, B answers `504` at the deadline A's
/// attempt sent it.
#[cfg_attr(not(feature = "retry"), allow(dead_code))]
pub(crate) const AT_LIMIT: u8 = 2;

/// Notes that an attempt no retry could follow ran past its own limit (it
/// goes on to the request's deadline): to the retry layer above, whose poll
/// is under way on this thread, it counts as a timed-out attempt.
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
#[cold]
pub(crate) fn note_overran() {
    let _ = ATTEMPT_NOTES.try_with(|c| c.set(c.get() | OVERRAN));
}

/// Notes that an attempt cut at its own limit was answered within
/// [`ANSWER_MARGIN`] of it (see [`AT_LIMIT`]).
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
#[cold]
pub(crate) fn note_at_limit() {
    let _ = ATTEMPT_NOTES.try_with(|c| c.set(c.get() | AT_LIMIT));
}

/// Clears an [`AT_LIMIT`] note (an answer at the limit that succeeded).
#[inline]
#[cfg_attr(not(feature = "retry"), allow(dead_code))]
pub(crate) fn clear_at_limit() {
    let _ = ATTEMPT_NOTES.try_with(|c| c.set(c.get() & !AT_LIMIT));
}

/// What the attempts polled under this poll noted ([`OVERRAN`],
/// [`AT_LIMIT`]); clears the notes.
#[inline]
#[cfg_attr(not(feature = "retry"), allow(dead_code))]
pub(crate) fn take_attempt_notes() -> u8 {
    ATTEMPT_NOTES.try_with(|c| c.replace(0)).unwrap_or(0)
}

/// The deadline of the request being handled on this task, if a seawall layer
/// set one for the call in progress (or [`scope`] did).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use seawall::deadline::{self, Deadline};
///
/// assert!(deadline::current().is_none());
/// let d = Deadline::after(Duration::from_secs(1));
/// deadline::scope(d, async {
///     assert_eq!(deadline::current(), Some(d));
///     assert_eq!(deadline::remaining(), Some(Duration::from_secs(1)));
/// })
/// .await;
/// # }
/// ```
#[inline]
pub fn current() -> Option<Deadline> {
    crate::local::get(&CURRENT)
}

/// The time left in the current request's budget, if it has a deadline.
#[inline]
pub fn remaining() -> Option<Duration> {
    current().map(Deadline::remaining)
}

/// Runs `fut` with `deadline` as the [`current()`] deadline.
pub fn scope<F: std::future::Future>(
    deadline: Deadline,
    fut: F,
) -> crate::local::Scoped<Deadline, F> {
    crate::local::Scoped::new(&CURRENT, deadline, fut)
}

/// How close to the request's deadline an answer is taken for the
/// dependency's answer to that deadline (a seawall server answers 10 ms
/// before the deadline it was sent, and the answer takes a little longer
/// to come back); and, at most, how close to its own end an attempt may
/// be cut by the request's deadline and still end as its own (a tenth of
/// the attempt timeout when that is less).
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
pub(crate) const ANSWER_MARGIN: Duration = Duration::from_millis(20);

stacks_only! {
    /// The time a client stack keeps before a deadline from above (at most
    /// a tenth of what is left of it): a call made in a handler under a
    /// server stack whose budget ends first ends by the client's own timer,
    /// not by the server's at the same instant (which the HTTP server
    /// preset's could win): the handler answers with the error, and an
    /// attempt that ran on to the deadline counts to the breaker.
    pub(crate) const UPSTREAM_MARGIN: Duration = Duration::from_millis(10);
}

thread_local! {
    /// The request deadline that last cut an attempt short on this thread
    /// (see [`cut_short`]).
    static CUT_SHORT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Notes that the request's `deadline` cut an attempt short (it was
/// shorter than the attempt timeout by a margin), as the attempt's answer
/// goes up to the layers above on this thread: a circuit breaker above
/// reads a deadline answer to it (504, `DEADLINE_EXCEEDED`) as the
/// request's deadline, not the dependency's failure.
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
#[cold]
pub(crate) fn note_cut_short(deadline: Deadline) {
    CUT_SHORT.with(|c| c.set(Some(deadline.instant())));
}

/// Whether an attempt under the request's `deadline` was cut short by it
/// (see [`note_cut_short`]); a note of another request's deadline says
/// nothing of this one.
#[cfg_attr(
    not(all(feature = "deadline", feature = "circuit-breaker")),
    allow(dead_code)
)]
pub(crate) fn cut_short(deadline: Deadline) -> bool {
    CUT_SHORT.with(|c| c.get() == Some(deadline.instant()))
}

thread_local! {
    /// Set while an attempt timeout drops the call its own timer ended (see
    /// [`drop_timed_out`]).
    static TIMED_OUT_DROP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `drop`, which drops the inner call of an attempt that its own
/// timeout ended, with a note on this thread that the call is dropped for
/// that reason: a layer below whose future goes with it (an endpoint's
/// ejection) reads the note as the endpoint's failure to answer in time, not
/// as a caller that went away.
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
#[cold]
pub(crate) fn drop_timed_out(drop: impl FnOnce()) {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            TIMED_OUT_DROP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(TIMED_OUT_DROP.with(|c| c.replace(true)));
    drop();
}

/// Whether the future being dropped now goes because an attempt timeout
/// above ended its call (see [`drop_timed_out`]).
#[cfg_attr(not(feature = "eject"), allow(dead_code))]
pub(crate) fn dropping_timed_out() -> bool {
    TIMED_OUT_DROP.with(|c| c.get())
}

/// Sets `deadline` as the [`current()`] deadline until the guard drops: a
/// layer's `call` builds its future in place under it (a closure's result
/// would be copied out).
#[cfg(feature = "deadline")]
#[inline]
pub(crate) fn enter_scope(deadline: Deadline) -> crate::local::Guard<Deadline> {
    crate::local::Guard::set(&CURRENT, deadline)
}

/// Runs `f` with `deadline` as the [`current()`] deadline.
#[inline]
pub fn sync_scope<R>(deadline: Deadline, f: impl FnOnce() -> R) -> R {
    crate::local::sync_scope(&CURRENT, deadline, f)
}

/// A request that can carry its own [`Deadline`].
///
/// Both methods have defaults that carry nothing, so any request type can opt
/// in with `impl HasDeadline for MyRequest {}`; the deadline then travels in
/// the task-local only (see [`current()`]). Implement both to keep it in a
/// field: it then crosses tasks and hops of your own, and a client stack
/// stores it there. `http::Request` (feature `http`) keeps it in its
/// extensions when a layer stores it (a server stack does, so that axum
/// handlers can extract it; a client stack does not, as that allocates:
/// see [`STORING_ALLOCATES`](Self::STORING_ALLOCATES), and the presets send
/// it as a header instead).
pub trait HasDeadline {
    /// Whether [`set_deadline`](Self::set_deadline) allocates (`false` by
    /// default; `true` for `http::Request` and `tonic::Request`, whose
    /// extensions do). A client stack stores the deadline only in requests
    /// where it costs no allocation (a field of your own type, which then
    /// carries it across a task or a hop of your own); the HTTP and gRPC
    /// presets send it as a header instead.
    const STORING_ALLOCATES: bool = false;

    /// The deadline the request carries, if any.
    fn deadline(&self) -> Option<Deadline> {
        None
    }

    /// Stores `deadline` in the request.
    fn set_deadline(&mut self, deadline: Deadline) {
        let _ = deadline;
    }
}

macro_rules! carries_nothing {
    ($($ty:ty),*) => {$(
        /// Carries no deadline of its own (the task-local one applies).
        impl HasDeadline for $ty {}
    )*};
}
carries_nothing!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    String,
    &'static str
);

/// Requests with `extensions`: the deadline is kept there.
macro_rules! in_extensions {
    ($($cfg:literal: $ty:ty),*) => {$(
        #[cfg(feature = $cfg)]
        impl<B> HasDeadline for $ty {
            const STORING_ALLOCATES: bool = true;

            #[inline]
            fn deadline(&self) -> Option<Deadline> {
                self.extensions().get::<Deadline>().copied()
            }

            #[inline]
            fn set_deadline(&mut self, deadline: Deadline) {
                self.extensions_mut().insert(deadline);
            }
        }
    )*};
}
in_extensions!("http": http::Request<B>, "tonic": tonic::Request<B>);

/// The deadline that applies to `req`: the earlier of the one it carries and
/// the task-local [`current()`] one.
#[inline]
pub fn of<R: HasDeadline + ?Sized>(req: &R) -> Option<Deadline> {
    earliest(req.deadline())
}

/// The earlier of `deadline` and the task-local [`current()`] one.
#[inline]
pub(crate) fn earliest(deadline: Option<Deadline>) -> Option<Deadline> {
    match (deadline, current()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(feature = "deadline")]
mod attempt;
#[cfg(feature = "deadline")]
mod future;
#[cfg(feature = "deadline")]
pub(crate) mod layer;
#[cfg(all(feature = "deadline", feature = "http"))]
pub mod propagate;
#[cfg(feature = "deadline")]
pub(crate) mod service;
pub(crate) mod wire;

#[cfg(feature = "deadline")]
pub use self::attempt::{
    AttemptFuture, AttemptTimeoutLayer, AttemptTimeoutLayerBuilder, AttemptTimeoutService,
};
#[cfg(feature = "deadline")]
pub use self::future::{Expiry, InnerTimers, OwnTimer, ResponseFuture};
#[cfg(feature = "deadline")]
pub use self::layer::{DeadlineLayer, DeadlineLayerBuilder};
#[cfg(feature = "deadline")]
pub use self::service::DeadlineService;
pub use self::wire::{
    GrpcTimeout, ParseTimeoutError, format_grpc_timeout, parse_grpc_timeout, parse_timeout_ms,
};
