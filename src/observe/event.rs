use std::fmt;
use std::time::Duration;

use crate::error::RejectionKind;

/// Which kind of seawall layer reported an event. A low-cardinality label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LayerKind {
    /// [`DeadlineLayer`](crate::deadline) (total budget) and header ingress.
    Deadline,
    /// The per-attempt timeout layer.
    AttemptTimeout,
    /// The retry layer.
    Retry,
    /// The circuit breaker.
    CircuitBreaker,
    /// The bulkhead.
    Bulkhead,
    /// The adaptive concurrency limit (load shedding).
    AdaptiveLimit,
    /// Client-side adaptive throttling.
    Throttle,
    /// The rate limiter.
    RateLimit,
    /// Fault injection.
    Chaos,
    /// Hedged requests.
    Hedge,
    /// The fallback layer.
    Fallback,
    /// Outlier ejection in a balanced set.
    Ejection,
    /// A table of layers per key.
    Keyed,
}

impl LayerKind {
    /// A short, stable, lower-case label (`"circuit_breaker"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            LayerKind::Deadline => "deadline",
            LayerKind::AttemptTimeout => "attempt_timeout",
            LayerKind::Retry => "retry",
            LayerKind::CircuitBreaker => "circuit_breaker",
            LayerKind::Bulkhead => "bulkhead",
            LayerKind::AdaptiveLimit => "adaptive_limit",
            LayerKind::Throttle => "throttle",
            LayerKind::RateLimit => "rate_limit",
            LayerKind::Chaos => "chaos",
            LayerKind::Hedge => "hedge",
            LayerKind::Fallback => "fallback",
            LayerKind::Ejection => "ejection",
            LayerKind::Keyed => "keyed",
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a call through a layer ended, and where the outcome came from.
///
/// Every result a layer sees has an origin (see [`classify`](crate::classify)):
///
/// | outcome | origin | circuit breaker | client throttle |
/// |---|---|---|---|
/// | [`Success`](Outcome::Success) | the dependency answered well | a call | an accept |
/// | [`Failure`](Outcome::Failure) | the dependency is broken (5xx, connection error, attempt timeout, `INTERNAL`) | a failed call | a request, no accept |
/// | [`Overloaded`](Outcome::Overloaded) | the dependency said "busy" (429, 503, `RESOURCE_EXHAUSTED`, a server's `UNAVAILABLE`) | not counted (opt in with `count_overload`), but a second of bare busy answers only (none saying when to come back) opens it | a request, no accept |
/// | [`Refused`](Outcome::Refused) | this process refused it (bulkhead, rate limit, open breaker, spent budget) | never counted | not counted |
/// | [`Ignored`](Outcome::Ignored) | the caller's own mistake (most 4xx), or a call not to count | not counted | not counted |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Outcome {
    /// The dependency answered well.
    Success,
    /// The dependency failed: it is broken (a remote failure).
    Failure,
    /// The dependency answered "busy, come back later" (a remote overload):
    /// it is alive and protecting itself. A breaker does not count it by
    /// default; the retry budget, the client throttle and the adaptive limit
    /// are the layers built for it.
    Overloaded,
    /// This process refused the call before the dependency saw it (a local
    /// refusal): its own bulkhead, rate limit, open breaker, spent retry
    /// budget, or a deadline gone before sending. Never counted against the
    /// dependency, whatever a classifier says.
    Refused,
    /// The call is not counted: neither success nor failure. It says nothing
    /// about the dependency's health (the caller's own mistake, such as most
    /// 4xx, or a cancellation you do not want to count).
    Ignored,
}

impl Outcome {
    /// `"success"`, `"failure"`, `"overloaded"`, `"refused"` or `"ignored"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Overloaded => "overloaded",
            Outcome::Refused => "refused",
            Outcome::Ignored => "ignored",
        }
    }

    /// `true` for [`Outcome::Success`] only.
    pub const fn is_success(self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// `true` for [`Outcome::Failure`] only.
    pub const fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure)
    }

    /// `true` for [`Outcome::Overloaded`] only.
    pub const fn is_overloaded(self) -> bool {
        matches!(self, Outcome::Overloaded)
    }

    /// `true` for [`Outcome::Refused`] only.
    pub const fn is_refused(self) -> bool {
        matches!(self, Outcome::Refused)
    }

    /// `true` for [`Outcome::Ignored`].
    pub const fn is_ignored(self) -> bool {
        matches!(self, Outcome::Ignored)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The state of a stateful layer (circuit breaker states; also used by a
/// backend that can be healthy or degraded).
///
/// The metrics adapter keeps one gauge per state and sets exactly one of
/// them to 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum State {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are rejected until the open time has passed.
    Open,
    /// A limited number of probe calls are let through.
    HalfOpen,
    /// Held open by an operator: every call is rejected.
    ForcedOpen,
    /// Always closed; nothing is recorded.
    Disabled,
    /// Records outcomes in its window, but never rejects and never changes state.
    MetricsOnly,
    /// A backend (such as the Redis limiter) answers normally.
    Healthy,
    /// A backend failed; the layer follows its failure policy.
    Degraded,
    /// A retry layer's attempts rarely time out: an attempt that does is
    /// cut at its attempt timeout and retried.
    TimeoutsRare,
    /// A retry layer's attempts time out often (the dependency is slow for
    /// everyone): an attempt is not cut at its attempt timeout but runs on
    /// to the request's deadline, and a timed-out one is not retried (see
    /// the [retry module](crate::retry), "Timeouts"). The sign of a
    /// dependency slowed down while `attempt_timeout` refusals stop.
    TimeoutsCommon,
}

impl State {
    /// A short, stable, lower-case label (`"half_open"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics_only",
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::TimeoutsRare => "timeouts_rare",
            State::TimeoutsCommon => "timeouts_common",
        }
    }

    /// The states a layer of `kind` can be in (the set the state gauge covers).
    pub const fn all_for(kind: LayerKind) -> &'static [State] {
        match kind {
            LayerKind::CircuitBreaker => &[
                State::Closed,
                State::Open,
                State::HalfOpen,
                State::ForcedOpen,
                State::Disabled,
                State::MetricsOnly,
            ],
            LayerKind::Ejection => &[State::Healthy, State::Open, State::HalfOpen],
            LayerKind::Retry => &[State::TimeoutsRare, State::TimeoutsCommon],
            _ => &[State::Healthy, State::Degraded],
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a retry layer stopped retrying a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The attempt limit was reached.
    MaxAttempts,
    /// The retry budget was empty.
    BudgetExhausted,
    /// The next attempt would not fit the request's deadline, or the
    /// dependency answered to that deadline as it ended (an HTTP `504`, a
    /// gRPC `DEADLINE_EXCEEDED`: see
    /// [`RetryPolicy::is_deadline_answer`](crate::retry::RetryPolicy::is_deadline_answer)),
    /// or a layer below ran out of it (a `DeadlineExceeded` or an
    /// `AttemptTimeout` with 20 ms or less of the deadline left: a wait in
    /// a client stack limit's queue, an attempt run on to the deadline).
    Deadline,
    /// The server asked for a wait longer than allowed, or said not to retry.
    Pushback,
    /// The outcome is not retryable by the policy (a `4xx`, a status it
    /// does not retry, an error it fails; or the request is not safe to
    /// retry).
    NotRetryable,
    /// The request could not be replayed (body too large to buffer, or not cloneable).
    NotReplayable,
    /// The attempt timed out while timeouts are common (the dependency is
    /// slow for everyone, as a saturated queue is): a retry would not be
    /// faster (see the [retry module](crate::retry), "Timeouts").
    TimeoutsCommon,
    /// An open circuit breaker below refused the attempt (it was never
    /// sent): not retried while the breaker is open. During an outage,
    /// every request the breaker turns away; reported as `not_retryable`
    /// before, which read as requests unsafe to retry.
    CircuitOpen,
    /// The dependency failed, and retries of its failures have lately
    /// failed again (fewer than 1 in 10 saved its request, as for a
    /// request that fails every time it is sent): not retried, but 1 in 8
    /// such failures, which tell when retries save requests again (see
    /// the [retry module](crate::retry), "Retries that save nothing").
    RetriesFutile,
}

impl GiveUpReason {
    /// A short, stable, lower-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::MaxAttempts => "max_attempts",
            GiveUpReason::BudgetExhausted => "budget_exhausted",
            GiveUpReason::Deadline => "deadline",
            GiveUpReason::Pushback => "pushback",
            GiveUpReason::NotRetryable => "not_retryable",
            GiveUpReason::NotReplayable => "not_replayable",
            GiveUpReason::TimeoutsCommon => "timeouts_common",
            GiveUpReason::CircuitOpen => "circuit_open",
            GiveUpReason::RetriesFutile => "retries_futile",
        }
    }
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a fallback answered: how the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FallbackReason {
    /// This process refused the call before sending it (a local refusal:
    /// its bulkhead, rate limit, open breaker, spent retry budget).
    Refused,
    /// The dependency said it was busy (a remote overload).
    Overloaded,
    /// The dependency failed (a remote failure).
    Failure,
    /// The request's deadline ran out.
    Deadline,
}

impl FallbackReason {
    /// `"refused"`, `"overloaded"`, `"failure"` or `"deadline"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Refused => "refused",
            FallbackReason::Overloaded => "overloaded",
            FallbackReason::Failure => "failure",
            FallbackReason::Deadline => "deadline",
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What happened. Every variant is plain data (`Copy`, no allocation).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// A call was admitted and handed to the inner service.
    CallStarted,
    /// A call finished. A call dropped before it finished (its caller gave
    /// up, a hedge's other copy won) reports none: `CallStarted` minus
    /// `CallFinished` is not the calls in flight (a bulkhead handle's
    /// `in_flight()` and an adaptive limit's `inflight()` count those).
    CallFinished {
        /// Success or failure, as classified by the layer.
        outcome: Outcome,
        /// Time from admission to completion.
        latency: Duration,
    },
    /// The layer refused a request.
    Rejected {
        /// The rejection kind returned to the caller.
        reason: RejectionKind,
        /// A finer, low-cardinality detail (`"queue_full"`, `"expired_on_arrival"`, …),
        /// or `""`.
        detail: &'static str,
        /// The wait the rejection advertises, if any.
        retry_after: Option<Duration>,
    },
    /// A stateful layer changed state (and once as a breaker is built, from
    /// its state to itself, so that a state gauge has its value from the
    /// start).
    ///
    /// A breaker opens from `Closed` once per outage, then again from
    /// `HalfOpen` after each failed probe: with the defaults (open 100 ms,
    /// then one probe) about ten times a second while the dependency is
    /// down. To count or alert on outages, take the changes from `Closed`
    /// to `Open`, and their end from `HalfOpen` to `Closed`.
    StateChanged {
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
        /// The window's failure rate (0..=1) at the change, if it applies.
        /// A breaker opened by failures in a row (`consecutive_failures`)
        /// reports 1, the rate of the run that opened it: its window's
        /// may be low (a few hundred successes before the run). One
        /// opened by a run of bare "busy" answers (a dependency that
        /// serves nothing; see
        /// [`count_overload`](crate::circuit_breaker::CircuitBreakerBuilder::count_overload))
        /// reports none: no failure was counted.
        failure_rate: Option<f64>,
        /// The window's slow-call rate (0..=1) at the change, if it applies.
        slow_call_rate: Option<f64>,
    },
    /// A retry was scheduled.
    RetryScheduled {
        /// The number of the attempt that will be made (2 for the first retry).
        attempt: u32,
        /// The backoff slept before it.
        delay: Duration,
    },
    /// The retry layer gave up on a request and returned its last outcome.
    RetryGaveUp {
        /// Attempts made in total.
        attempts: u32,
        /// Why it stopped.
        reason: GiveUpReason,
    },
    /// A retry budget had no token for a retry.
    BudgetExhausted,
    /// An adaptive limit changed, or a bulkhead's limit was set at run time
    /// (and once as either is built, from its limit to itself, so that a
    /// limit gauge has its value from the start).
    LimitChanged {
        /// The previous limit.
        from: usize,
        /// The new limit.
        to: usize,
    },
    /// An adaptive limit closed a sampling window (about once a second): its
    /// limit after the window, the most calls in flight during it, and
    /// their average latency. What a dashboard draws as "limit vs in
    /// flight", at no cost per call. While its calls end without closing
    /// one (every one failing, or too few to judge), about once a window
    /// length after two have passed: its limit, the calls in flight then,
    /// and no latency (zero); the window that closes after that reports
    /// the calls in flight as it closes.
    LimitSampled {
        /// The limit after the window.
        limit: usize,
        /// The most calls in flight during the window, those admitted over
        /// the limit (a burst's, a class's guaranteed share) included: above
        /// `limit` when the server took more than its limit.
        peak_inflight: usize,
        /// The average latency of the window's calls (zero without samples).
        rtt: Duration,
    },
    /// Malformed, oversized or otherwise unusable input (a header, a key) was
    /// ignored or rejected.
    InputIgnored {
        /// Which input (`"grpc-timeout"`, `"x-forwarded-for"`, …).
        input: &'static str,
        /// Why (`"malformed"`, `"too_large"`, …).
        reason: &'static str,
    },
    /// A hedge was sent: a copy of a request that had not answered, handed
    /// to the service below. A copy a layer below refused in this process
    /// (an open breaker, a full bulkhead) is reported here too, and by that
    /// layer's `Rejected`; it left no request on the wire and costs no
    /// hedge budget.
    HedgeSent {
        /// The number of the copy (2 for the first hedge).
        attempt: u32,
        /// How long the request had been waiting.
        delay: Duration,
    },
    /// A fallback answered for a call that failed or was refused.
    FallbackUsed {
        /// What the call ended with.
        reason: FallbackReason,
    },
    /// A layer's settings were changed at run time (a reload).
    Reconfigured,
    /// An endpoint was taken out of its balanced set.
    EndpointEjected {
        /// Why (`"consecutive_failures"`, `"success_rate"`, `"latency"`,
        /// `"probe_failed"`, `"busy_alone"`: "busy" answers in a row while
        /// the rest of the set served).
        reason: &'static str,
        /// For how long.
        duration: Duration,
    },
    /// A backend the layer depends on (such as Redis) failed or was slow.
    BackendError {
        /// Which backend (`"redis"`).
        backend: &'static str,
        /// A low-cardinality cause (`"timeout"`, `"connection"`, …).
        cause: &'static str,
    },
}

impl EventKind {
    /// A short, stable, lower-case label for the variant.
    pub const fn as_str(&self) -> &'static str {
        match self {
            EventKind::CallStarted => "call_started",
            EventKind::CallFinished { .. } => "call_finished",
            EventKind::Rejected { .. } => "rejected",
            EventKind::StateChanged { .. } => "state_changed",
            EventKind::RetryScheduled { .. } => "retry_scheduled",
            EventKind::RetryGaveUp { .. } => "retry_gave_up",
            EventKind::BudgetExhausted => "budget_exhausted",
            EventKind::LimitChanged { .. } => "limit_changed",
            EventKind::LimitSampled { .. } => "limit_sampled",
            EventKind::InputIgnored { .. } => "input_ignored",
            EventKind::HedgeSent { .. } => "hedge_sent",
            EventKind::FallbackUsed { .. } => "fallback_used",
            EventKind::EndpointEjected { .. } => "endpoint_ejected",
            EventKind::Reconfigured => "reconfigured",
            EventKind::BackendError { .. } => "backend_error",
        }
    }
}

/// One event reported by a layer instance: which kind of layer, its instance
/// name, and what happened. Borrowed: hooks that keep events copy what they need.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Event<'a> {
    /// The kind of layer that reported it.
    pub layer: LayerKind,
    /// The layer instance's name.
    pub name: &'a str,
    /// What happened.
    pub kind: EventKind,
}

impl<'a> Event<'a> {
    /// Creates an event.
    #[inline]
    pub const fn new(layer: LayerKind, name: &'a str, kind: EventKind) -> Self {
        Event { layer, name, kind }
    }
}
