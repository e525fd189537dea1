//! Circuit breaker: stop calling a dependency that is failing or slow, give it
//! time to recover, then let a few probe calls decide whether it has.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
//! use seawall::error::{rejection_of, RejectionKind};
//! use seawall::observe::State;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .window(SlidingWindow::count(10)) // the last 10 calls
//!     .minimum_calls(10)
//!     .failure_rate_threshold(0.5)
//!     .open_duration(Duration::from_secs(5))
//!     .build()
//!     .expect("valid configuration");
//! let handle = layer.handle();
//!
//! let mut svc = layer.layer(service_fn(|fail: bool| async move {
//!     if fail { Err("down") } else { Ok("paid") }
//! }));
//! for i in 0..10 {
//!     let _ = svc.ready().await.unwrap().call(i % 2 == 0).await; // 50 % fail
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Open: calls fail at once, saying when to come back.
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! let view = rejection_of(&err).unwrap();
//! assert_eq!(view.kind(), RejectionKind::CircuitOpen);
//! // The 5 s left until it probes, stretched so that callers refused
//! // together do not all come back at once.
//! let wait = view.retry_after().unwrap();
//! assert!(wait >= Duration::from_secs(5) && wait < Duration::from_millis(7_500));
//! # }
//! ```
//!
//! # How it decides
//!
//! - **Closed**: calls go through and their outcomes fill a sliding window,
//!   either the last `n` calls ([`SlidingWindow::Count`]) or the calls of the
//!   last `T` ([`SlidingWindow::Time`], a ring of buckets). Once the window
//!   holds at least `minimum_calls` calls, the breaker opens when the failure
//!   rate is at or above `failure_rate_threshold`, or when the share of calls
//!   slower than `slow_call_duration` (successes and failures alike) is at or
//!   above `slow_call_rate_threshold`. The window really slides: after 1 000
//!   successes, a 10-call window at 50 % opens after 5 failures. A run of
//!   `consecutive_failures` in a row (50 by default) opens it whatever the
//!   window holds (a "busy" answer that paces its caller, a server up and
//!   answering, ends the run), and so does a run of bare "busy" answers
//!   ([`Outcome::Overloaded`](crate::observe::Outcome::Overloaded), not
//!   counted, none pacing its caller) with no success between, each
//!   within a second of the last, that lasts a second and holds
//!   `minimum_calls` calls: a dependency that serves nothing (see
//!   [`count_overload`](CircuitBreakerBuilder::count_overload)). After a close from half-open, the fresh window is judged
//!   from three times the probe's time after the close on (at most 1 s):
//!   it fills with the fastest answers first, and a dependency failing half
//!   its calls at once and answering the rest later would reopen it on a
//!   window of failures only.
//! - **Open**: calls are rejected at once with [`CircuitOpen`], whose
//!   `retry_after` is the time left until half-open stretched by a factor in
//!   `[1, 1.5)`, different for each refusal (a sequence seeded by the
//!   breaker's name): callers refused together come back spread out rather
//!   than all at the moment the first probes go (the exact time left is
//!   [`CircuitBreakerHandle::retry_after`]). The open time starts
//!   at `open_duration`, is multiplied by `open_multiplier` on each trip that
//!   follows without a healthy close in between, capped at
//!   `max_open_duration`, optionally jittered (`open_jitter`, seedable), and
//!   returns to its base after a healthy close.
//! - **Half-open**: exactly `permitted_calls_in_half_open` probe calls are let
//!   through; others are rejected with a `retry_after` of 100 ms stretched
//!   the same way (the probes decide within about a round trip: by then the
//!   breaker is closed, or open with a time to wait). When every probe has
//!   finished, the breaker closes (with an empty window) if their failure and
//!   slow-call rates are below the thresholds, and opens again otherwise. A
//!   probe held to its body's end ([`BodyEnd`](crate::hold::BodyEnd)) is
//!   judged at that end, as any call (judged at its head or its first
//!   message, a dependency whose streams failed after their first message
//!   was closed on at every probe: 22 times in 10 s in an outside trial);
//!   the protocol presets end a body at its attempt timeout, and the late
//!   probes below go meanwhile. A
//!   probe whose future is dropped before it finishes, or that the classifier
//!   calls [`Ignored`](crate::observe::Outcome::Ignored), or "busy" with a
//!   wait named (see [`Classify::is_paced_answer`](crate::classify::Classify::is_paced_answer)),
//!   frees its slot for another probe and does not count toward the
//!   verdict; a probe answered a bare "busy" is a failed probe. A probe that hangs
//!   holds its slot until it ends (an attempt timeout below the breaker ends
//!   it, as a failure); meanwhile, once every slot has been out for the last
//!   open time, the next call goes as one more probe (one per open time),
//!   whose answer counts toward the verdict as any probe's. With one slot
//!   (the client stacks') that answer is the verdict; with `n`, the verdict
//!   waits for `n` answers, hung probes' or late ones'. Answers of probes
//!   from a state that has passed are not counted.
//! - **Manual states**, through a [`CircuitBreakerHandle`] from
//!   [`CircuitBreakerLayer::handle`]: forced-open, disabled (always closed,
//!   nothing recorded), metrics-only (counts, never opens), and `reset` back to
//!   closed. The handle also reads the state and the window's rates.
//!
//! Outcomes are classified by a [`Classify`](crate::classify::Classify)
//! (default [`ErrorsAsFailures`](crate::classify::ErrorsAsFailures): every
//! `Err` is a failure, including rejections from seawall layers *below* the
//! breaker, such as an attempt timeout). A call whose future is dropped before
//! it finishes is not counted, nor is a call classified
//! [`Outcome::Ignored`](crate::observe::Outcome::Ignored): it stays out of the
//! window (calls, failures and slow calls alike) and neither extends nor
//! breaks a run of consecutive failures; its `CallFinished` event reports
//! outcome `Ignored`. Whatever the classifier says, a local refusal (a
//! bulkhead, a rate limit below the breaker) is never counted, and neither
//! is a call that the request's own deadline ended, while a deadline is set
//! above the breaker (the request's budget, or its caller's, ended the call
//! before its attempt timeout: callers with short budgets do not shut a
//! healthy dependency off for the rest; so if every caller's budget is
//! shorter than the attempt timeout, a dependency that hangs is never
//! counted: keep the attempt timeout below the budgets callers send): a
//! failure that comes back in the
//! deadline's last 20 ms and says "deadline", either a
//! [`DeadlineExceeded`](crate::error::DeadlineExceeded) raised below the
//! breaker or the dependency's answer to the deadline it was sent
//! ([`Classify::is_deadline_answer`](crate::classify::Classify::is_deadline_answer):
//! a 504, gRPC `DEADLINE_EXCEEDED` or `CANCELLED`; a seawall server
//! answers 10 ms before the deadline) when an attempt timeout below saw
//! the deadline cut the attempt short, or let the attempt run on past its
//! own limit to the deadline (no retry could follow it, or timeouts were
//! common: the dependency had the caller's whole time and answered; a
//! middle tier slowed by its own dependency opened its callers' breakers
//! when these were counted, `tests/presets`
//! `answers_at_the_requests_deadline_do_not_open_the_breaker`). Counted: an attempt timeout (also
//! one as long as the budget, and a deadline answer under it: the
//! dependency had its attempt), any
//! other failure however little time was left (a refused connection
//! under a 15 ms budget), and a deadline set below the breaker that ends a
//! call while the request's has more than 20 ms to go. The rule is read as
//! a response's head arrives: a body that the deadline cuts later is
//! counted as the failure it ends with.
//!
//! Every state change is reported as [`EventKind::StateChanged`] with the
//! failure and slow-call rates that caused it; the initial closed state is
//! reported once when the layer is built, so a state gauge has exactly one
//! state at 1 from the start. Admitted calls report `CallStarted` and
//! `CallFinished`, rejections `Rejected { reason: CircuitOpen, detail }`
//! with detail `"open"`, `"half_open_full"` or `"forced_open"`.
//!
//! [`EventKind::StateChanged`]: crate::observe::EventKind::StateChanged
//! [`CircuitOpen`]: crate::error::CircuitOpen
//!
//! # Defaults
//!
//! A breaker that comes back fast and does not turn a partial failure into
//! a full one, chosen by the storm simulation (`cargo run --release
//! --example storm`, asserted in `tests/storm`), the same alone, in a
//! [`ClientStack`](crate::ClientStack) or per key:
//!
//! - a **time window of 10 s**, judged from **20 calls** at **80 %**
//!   failures, and **50 failures in a row** open it whatever the window
//!   holds. The run of failures is what opens it at once when a dependency
//!   dies right after a period of successes (an outage following a
//!   brownout: 0.48 attempts per request reached the dead backend on the
//!   window alone). 80 % and 50, not Resilience4j's 50 % and a run of 20:
//!   with one route of two broken (`tests/storm`, one route down), the
//!   retries of the broken route's requests make two attempts in three
//!   fail, runs of 20 happen by chance, and the breaker took the healthy
//!   route down with it (32 % served, where a client without protection
//!   served 66 %; 66 % now). A dependency behind a load shedder whose
//!   refusals count as failures (a bare error, at twice its capacity) is
//!   not shut off either;
//! - **open 100 ms, every time** (no growth), then **1 probe**: a
//!   dependency that comes back is served again within about 0.1 s (a
//!   flapping dependency, down 2 s in every 5: 58.2 % served against 60 %
//!   possible; open 1 s with 5 probes, each recovery refused up to a second
//!   of calls, and 0.25 s still refused up to a quarter of one;
//!   Resilience4j's 60 s doubling to 600 s left it refused for the rest of
//!   the run). A dead dependency gets a probe every 100 ms or so: 0.07
//!   attempts per request in the flapping dependency's down phases. A
//!   dependency called less often than once in 100 ms would be probed by
//!   every call: a [`ClientStack`](crate::ClientStack)'s breaker waits for
//!   5 calls refused, or 2 s, before a probe
//!   ([`probe_after_refused`](CircuitBreakerBuilder::probe_after_refused));
//! - **no slow calls** unless `slow_call_duration` is set (Resilience4j
//!   counts a call over 60 s as slow and opens when all of the window's
//!   calls are). A dependency answering every call within its timeout,
//!   only slowly, is answering, and shutting it off would fail every call
//!   instead of none. A call that takes too long is ended by a timeout
//!   ([`AttemptTimeoutLayer`](crate::deadline::AttemptTimeoutLayer)) and
//!   counted as a failure.
//!
//! A time window reads the clock as each call ends; with a count window
//! (`.window(SlidingWindow::count(100))`), slow calls off and no observer,
//! a closed breaker reads no clock at all.
//!
//! | setting | default |
//! |---|---|
//! | `window` | the last 10 s, in 10 buckets ([`SlidingWindow::time`]) |
//! | `minimum_calls` | 20 |
//! | `failure_rate_threshold` | 0.8 (80 %) |
//! | `consecutive_failures` | 50 (`without_consecutive_failures()` turns it off) |
//! | `slow_call_rate_threshold` | 1.0 (100 %) |
//! | `slow_call_duration` | none (`Duration::MAX`: no call is slow) |
//! | `permitted_calls_in_half_open` | 1 |
//! | `open_duration` | 100 ms |
//! | `open_multiplier` | 1 (the same open time on every trip) |
//! | `probe_after_refused` | 0 (5 in a `ClientStack`) |
//! | `max_open_duration` | 600 s |
//! | `open_jitter` | 0 |
//! | `backpressure` | off |
//! | `name` | `"circuit_breaker"` |
//!
//! # Sharing, and one breaker per dependency
//!
//! The breaker lives in an `Arc` created by the layer: every service built
//! from one layer, and every clone of those services, shares **one** breaker.
//! To protect several downstream hosts separately, build one layer per host:
//!
//! ```
//! use std::collections::HashMap;
//! use seawall::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer};
//! use seawall::observe::State;
//!
//! let mut breakers: HashMap<&str, CircuitBreakerLayer> = HashMap::new();
//! for host in ["db-1.internal", "db-2.internal"] {
//!     let layer = CircuitBreakerLayer::builder()
//!         .name(format!("db:{host}"))
//!         .build()
//!         .expect("valid configuration");
//!     breakers.insert(host, layer);
//! }
//! // Wrap each host's client with its own layer:
//! // `breakers["db-1.internal"].layer(client_for("db-1.internal"))`.
//! let db1: CircuitBreakerHandle = breakers["db-1.internal"].handle();
//! db1.force_open(); // only db-1 is cut off
//! assert_eq!(db1.state(), State::ForcedOpen);
//! assert_eq!(breakers["db-2.internal"].handle().state(), State::Closed);
//! ```
//!
//! # Readiness
//!
//! By default `poll_ready` only forwards the inner service's readiness: while
//! open, the service stays ready and each call fails fast. With
//! `backpressure(true)` it reports `Pending` while the breaker is open and
//! wakes the task when the open time is over (a `tokio::time::Sleep` made
//! once per service, in that mode only), or at once when an operator moves
//! the breaker through its handle (`reset`, `disable`, …), which suits
//! balancers; also while it is forced open (until the operator moves it)
//! and while it is half-open with every probe slot taken (until a probe's
//! verdict, a slot given back, or the time a late probe is let in past a
//! stuck one, an open time on): a balancer does not pick an endpoint
//! whose calls would all be refused. Two clones ready at once for the one
//! slot: the second is refused in `call` (`half_open_full`).
//!
//! # Cost
//!
//! In the closed state a call takes no lock and allocates nothing: an atomic
//! load of the state, a reference-count increment, the window's atomics (a
//! success replacing a success in a count window writes only the cursor; a
//! time window counts each thread slot's calls apart, and a success there is
//! not judged unless it brings the window to its minimum calls or the window
//! moved), one clock read as the call ends with
//! the default time window (none with a count window, two with slow calls or
//! an observer; in a stack, shared with the layers around). State
//! transitions take a short mutex section (never held across an `.await`);
//! resetting the window on close is O(window size) (a time window's: its
//! buckets times the thread slots).

mod future;
mod handle;
mod layer;
mod service;
mod state;
mod window;

pub(crate) use self::future::Pending;
/// The settings of a breaker that change at run time, with
/// [`CircuitBreakerHandle::retune`]: read them with
/// [`tuning`](CircuitBreakerHandle::tuning), change some, hand them back.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BreakerTuning {
    /// The failure rate that opens it, in `(0, 1]`.
    pub failure_rate_threshold: f64,
    /// The slow-call rate that opens it, in `(0, 1]`.
    pub slow_call_rate_threshold: f64,
    /// Calls in the window before a rate is judged (at least 1).
    pub minimum_calls: u32,
    /// Failures in a row that open it (`None`: off).
    pub consecutive_failures: Option<u32>,
    /// How long it stays open the first time.
    pub open_duration: std::time::Duration,
    /// The growth of the open time per trip (at least 1).
    pub open_multiplier: f64,
    /// The longest open time.
    pub max_open_duration: std::time::Duration,
}

impl BreakerTuning {
    /// The one rule for these settings: the builder's and a retune's
    /// (`slow_calls`: whether the breaker has a slow-call time).
    pub(crate) fn check(
        &self,
        rate_trips: bool,
        slow_calls: bool,
    ) -> Result<(), crate::error::ConfigError> {
        use self::layer::MAX_OPEN;
        let err = |m: String| Err(crate::error::ConfigError::new(self::layer::KIND, m));
        for (setting, t) in [
            ("failure_rate_threshold", self.failure_rate_threshold),
            ("slow_call_rate_threshold", self.slow_call_rate_threshold),
        ] {
            if !(t > 0.0 && t <= 1.0) {
                return err(format!("{setting} must be in (0, 1], got {t}"));
            }
        }
        if self.slow_call_rate_threshold < 1.0 && !slow_calls {
            return err(format!(
                "slow_call_rate_threshold {} needs a slow_call_duration: without one no call is slow",
                self.slow_call_rate_threshold
            ));
        }
        if self.minimum_calls == 0 {
            return err("minimum_calls must be at least 1, got 0".into());
        }
        if self.consecutive_failures == Some(0) {
            return err("consecutive_failures must be at least 1, got 0".into());
        }
        if !rate_trips && self.consecutive_failures.is_none() {
            return err(
                "consecutive_failures cannot be turned off on a breaker that opens on them only"
                    .into(),
            );
        }
        if self.open_duration.is_zero() || self.open_duration > MAX_OPEN {
            return err(format!(
                "open_duration must be above zero and at most ~30 years, got {:?}",
                self.open_duration
            ));
        }
        if !(self.open_multiplier.is_finite() && self.open_multiplier >= 1.0) {
            return err(format!(
                "open_multiplier must be finite and at least 1, got {}",
                self.open_multiplier
            ));
        }
        if self.max_open_duration < self.open_duration || self.max_open_duration > MAX_OPEN {
            return err(format!(
                "max_open_duration must be at least open_duration ({:?}) and at most ~30 years, got {:?}",
                self.open_duration, self.max_open_duration
            ));
        }
        Ok(())
    }
}

pub use self::future::ResponseFuture;
pub use self::handle::CircuitBreakerHandle;
pub use self::layer::{CircuitBreakerBuilder, CircuitBreakerLayer, SlidingWindow};

pub use self::service::CircuitBreaker;
pub use self::window::WindowSnapshot;
