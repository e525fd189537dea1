//! The recommended client stack.

use std::fmt;

use std::time::Duration;

use tower::layer::util::Identity;
use tower_layer::Layer;

use super::classify::DependencyFailures;
use super::part::{HedgePart, HoldPoint, InnerTimeout, Skip, StackPart, part_name, stack_timers};
use crate::bulkhead::{Bulkhead, BulkheadBuilder, BulkheadHandle, BulkheadLayer};
use crate::circuit_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer,
};
use crate::deadline::{
    AttemptTimeoutLayer, AttemptTimeoutService, DeadlineLayer, DeadlineService, InnerTimers,
};
use crate::error::{ConfigError, Name};
use crate::hold::Head;
use crate::observe::Observer;
use crate::retry::{
    Backoff, BackoffState, Retry, RetryBudget, RetryErrors, RetryLayer, RetryLayerBuilder,
};
use crate::shed::criticality::FromTaskLocal;
use crate::shed::{AdaptiveLimit, AdaptiveLimitLayer, AdaptiveLimitLayerBuilder};

const KIND: &str = "client_stack";

/// Attempts in flight to one dependency at most.
const BULKHEAD_MAX_CONCURRENT: usize = 1024;

/// Calls a client stack's open breaker refuses before a probe, once its
/// open time is over ([`CircuitBreakerBuilder::probe_after_refused`](crate::circuit_breaker::CircuitBreakerBuilder::probe_after_refused)).
/// Chosen by an outside trial at 2, 10 and 40 requests a second through a
/// chain of presets: with a probe at the end of every 100 ms open time, a
/// dead dependency called twice a second took 2.18 calls per request (one
/// without seawall). 5: at most one probe in 6 calls below 50 a second,
/// and the storm (600 a second, 60 calls an open time) unchanged.
const STACK_PROBE_AFTER_REFUSED: u32 = 5;

/// The adaptive limit's first limit on the attempts in flight (see
/// [`ClientStackBuilder`]).
const CLIENT_INITIAL_LIMIT: usize = 100;

/// The recommended client stack, as one layer; start with
/// [`ClientStack::builder`].
///
/// Outermost first: [`DeadlineLayer`] (total budget) → [`RetryLayer`] →
/// the optional hedge `H` (a `HedgeLayer`, with
/// [`ClientStackBuilder::hedge`]) → [`CircuitBreakerLayer`] →
/// [`AdaptiveLimitLayer`] → [`BulkheadLayer`] → [`AttemptTimeoutLayer`] →
/// the optional innermost
/// part `L` (with feature `http`, deadline propagation). The
/// [module docs](super) explain the order.
///
/// It holds the built seawall layers and applies them by value: the service
/// it makes is a [`ClientStackService`], a plain nesting of the layers'
/// services with no boxing. Every service built from one `ClientStackLayer`
/// (and every clone) shares **one** retry budget, breaker, adaptive limit
/// and bulkhead: build one stack per dependency.
pub struct ClientStackLayer<
    P = RetryErrors,
    C = DependencyFailures,
    L = tower::layer::util::Identity,
    O = tower::layer::util::Identity,
    H = tower::layer::util::Identity,
> {
    deadline: DeadlineLayer,
    retry: RetryLayer<P>,
    hedge: H,
    breaker: CircuitBreakerLayer<C>,
    limit: AdaptiveLimitLayer,
    bulkhead: BulkheadLayer,
    attempt: AttemptTimeoutLayer,
    // The attempt timeout was set on the builder (not the budget's
    // default): a reload checks it as the next build will take it.
    attempt_set: bool,
    inner: L,
    outer: O,
}

/// The service a [`ClientStackLayer`] makes around `S` (`S` being the service
/// below the attempt timeout: yours, or with propagation, a
/// [`PropagateDeadline`](crate::deadline::propagate::PropagateDeadline) around yours).
///
/// `M` is where the bulkhead and the breaker let go of a call: at the
/// response head ([`Head`]), or, in the HTTP and gRPC presets, at the end of
/// the response body ([`BodyEnd`](crate::hold::BodyEnd); see
/// [`hold`](crate::hold)).
///
/// `H` is the hedge part: [`Identity`] (no hedging, the default) or a
/// `HedgeLayer` (feature `hedge`).
///
/// A named type (not an alias of the layers inside), so that signatures
/// and type mismatches say `ClientStackService<…>`; it forwards `poll_ready` and
/// `call` to them unchanged. (A bound the layers inside do not meet, such
/// as a request body that is not `Clone` for a retry, is still reported on
/// the layer that needs it.)
pub struct ClientStackService<S, P = RetryErrors, C = DependencyFailures, M = Head, H = Identity>
where
    H: Layer<PerAttempt<S, C, M>>,
{
    inner: StackInner<S, P, C, M, H>,
}

/// The layers an attempt goes through, below the retry and the hedge:
/// breaker → adaptive limit → bulkhead → attempt timeout, around `S`,
/// letting go of a call at `M`.
pub(crate) type PerAttempt<S, C, M> =
    CircuitBreaker<AdaptiveLimit<Bulkhead<AttemptTimeoutService<S>, M>, FromTaskLocal, M>, C, M>;

/// The layers inside a [`ClientStackService`].
type StackInner<S, P, C, M, H> =
    DeadlineService<Retry<<H as Layer<PerAttempt<S, C, M>>>::Service, P>, InnerTimers>;

wrapper_service!(
    ClientStackService<S, P, C, M, H>,
    StackInner<S, P, C, M, H>,
    where H: Layer<PerAttempt<S, C, M>>,
);

impl<S, P, C, L, O, H> Layer<S> for ClientStackLayer<P, C, L, O, H>
where
    L: Layer<S> + HoldPoint,
    H: Layer<PerAttempt<L::Service, C, L::Hold>>,
    O: Layer<ClientStackService<L::Service, P, C, L::Hold, H>>,
{
    type Service = O::Service;

    fn layer(&self, service: S) -> Self::Service {
        let s = self.inner.layer(service);
        let s = self.attempt.layer(s);
        let s = self.bulkhead.clone().hold_until::<L::Hold>().layer(s);
        let s = self.limit.clone().hold_until::<L::Hold>().layer(s);
        let s = self.breaker.clone().hold_until::<L::Hold>().layer(s);
        let s = self.hedge.layer(s);
        let s = self.retry.layer(s);
        self.outer.layer(ClientStackService {
            inner: self.deadline.layer_with(s),
        })
    }
}

impl<P, C, L, O, H> ClientStackLayer<P, C, L, O, H> {
    /// The hedge part ([`Identity`] when the stack does not hedge).
    pub fn hedge(&self) -> &H {
        &self.hedge
    }

    /// The total-budget layer (outermost).
    pub fn deadline(&self) -> &DeadlineLayer {
        &self.deadline
    }

    /// The retry layer.
    pub fn retry(&self) -> &RetryLayer<P> {
        &self.retry
    }

    /// The circuit breaker layer.
    pub fn breaker(&self) -> &CircuitBreakerLayer<C> {
        &self.breaker
    }

    /// The adaptive limit on the attempts in flight to the dependency.
    pub fn adaptive_limit(&self) -> &AdaptiveLimitLayer {
        &self.limit
    }

    /// The bulkhead layer.
    pub fn bulkhead(&self) -> &BulkheadLayer {
        &self.bulkhead
    }

    /// The per-attempt timeout layer.
    pub fn attempt_timeout(&self) -> &AttemptTimeoutLayer {
        &self.attempt
    }

    /// Whether the attempt timeout was set on the builder.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn attempt_set(&self) -> bool {
        self.attempt_set
    }

    /// The optional innermost layer ([`Identity`](tower::layer::util::Identity)
    /// when none was configured).
    pub fn innermost(&self) -> &L {
        &self.inner
    }

    /// The optional outermost layer ([`Identity`](tower::layer::util::Identity)
    /// for the generic stack; for the gRPC preset, body replay and the
    /// errors as `tonic::Status`).
    pub fn outermost(&self) -> &O {
        &self.outer
    }

    /// The retry budget shared by every service built from this stack.
    pub fn retry_budget(&self) -> &RetryBudget {
        self.retry.budget()
    }

    /// A handle on this stack's bulkhead: its permits and queue, and its
    /// limit changed at run time ([`set_max_concurrent`](BulkheadHandle::set_max_concurrent)).
    pub fn bulkhead_handle(&self) -> BulkheadHandle {
        self.bulkhead.handle()
    }
}

impl<P, C: Send + Sync + 'static, L, O, H> ClientStackLayer<P, C, L, O, H> {
    /// A handle on this stack's circuit breaker (state, rates, manual states).
    pub fn breaker_handle(&self) -> CircuitBreakerHandle {
        self.breaker.handle()
    }
}

impl<P, C, L: Clone, O: Clone, H: Clone> Clone for ClientStackLayer<P, C, L, O, H>
where
    RetryLayer<P>: Clone,
{
    fn clone(&self) -> Self {
        ClientStackLayer {
            deadline: self.deadline.clone(),
            retry: self.retry.clone(),
            hedge: self.hedge.clone(),
            breaker: self.breaker.clone(),
            limit: self.limit.clone(),
            bulkhead: self.bulkhead.clone(),
            attempt: self.attempt.clone(),
            attempt_set: self.attempt_set,
            inner: self.inner.clone(),
            outer: self.outer.clone(),
        }
    }
}

impl<P, C, L: fmt::Debug, O: fmt::Debug, H: fmt::Debug> fmt::Debug
    for ClientStackLayer<P, C, L, O, H>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStackLayer")
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("hedge", &self.hedge)
            .field("breaker", &self.breaker)
            .field("bulkhead", &self.bulkhead)
            .field("attempt_timeout", &self.attempt)
            .field("innermost", &self.inner)
            .field("outermost", &self.outer)
            .finish()
    }
}

/// Entry point of the recommended client stack; see [`ClientStack::builder`].
#[derive(Debug, Clone, Copy)]
pub struct ClientStack {
    _priv: (),
}

impl ClientStack {
    /// A builder for the stack of the dependency `name` (for example
    /// `"payments"`). Every layer is named after it: `payments.deadline`,
    /// `payments.retry`, `payments.breaker`, `payments.limit` (the
    /// adaptive limit on its attempts), `payments.bulkhead`,
    /// `payments.attempt` and, with propagation, `payments.propagate`.
    ///
    /// [`total_budget`](ClientStackBuilder::total_budget) must be set;
    /// [`attempt_timeout`](ClientStackBuilder::attempt_timeout) defaults to
    /// half of it; every other setting has the default of its layer, except
    /// the ones the stack chooses (listed on [`ClientStackBuilder`]).
    ///
    /// For an HTTP or gRPC dependency, start from a protocol preset
    /// instead (`ClientStack::http` with feature `http`, `ClientStack::grpc`
    /// with feature `tonic`): this generic stack retries any error and
    /// replays requests by cloning them (a tonic `Channel`'s bodies cannot
    /// be cloned).
    pub fn builder(name: impl Into<Name>) -> ClientStackBuilder {
        let name = name.into();
        ClientStackBuilder {
            retry: RetryLayer::builder().name(part_name(&name, "retry")),
            breaker: CircuitBreakerLayer::builder()
                .name(part_name(&name, "breaker"))
                // The breaker's own defaults, chosen by the storm; no
                // call is slow unless `slow_call_duration` is set: a call
                // that ends within its attempt timeout was answered. A
                // probe waits for 5 calls refused (or 2 s): a dependency
                // called less often than every 100 ms is not probed by
                // every call.
                .probe_after_refused(STACK_PROBE_AFTER_REFUSED)
                .classifier(DependencyFailures),
            inner: Skip,
            outer: Identity::new(),
            hedge: Skip,
            common: Common {
                limit: AdaptiveLimitLayer::builder().name(part_name(&name, "limit")),
                bulkhead: BulkheadLayer::builder()
                    .name(part_name(&name, "bulkhead"))
                    .max_concurrent(BULKHEAD_MAX_CONCURRENT),
                name,
                observer: None,
                total_budget: None,
                attempt_timeout: None,
                slow_call_duration: None,
            },
        }
    }
}

/// Builds a [`ClientStackLayer`]; see [`ClientStack::builder`].
///
/// What the stack sets on top of each layer's own defaults:
///
/// - instance names derived from the stack name (`"{name}.retry"`, …);
/// - the breaker classifier [`DependencyFailures`] (a full bulkhead below the
///   breaker says nothing about the dependency: not counted);
/// - the breaker's own defaults, which the storm chose for this stack (see
///   [the breaker's defaults](crate::circuit_breaker#defaults)): a time
///   window of 10 s judged from 20 calls at 80 % failures, or 50 failures
///   in a row; open 100 ms every time, then 1 probe;
/// - a bulkhead of **1024** attempts in flight (Envoy's default
///   `max_requests` per cluster; the layer's own default is 25): a guard
///   on this process's memory, not a limiter. At 25 it was the client's
///   bulkhead, blind to priorities, that turned the storm's surges away, so
///   the server never shed by criticality (critical requests: 56 % served
///   in the priority surge, 78 % with 256 or more); at 256, one route of a
///   dependency hanging at 300 requests a second (the storm's "one route
///   hangs") filled it with attempts waiting on the hung route, and the
///   healthy route's were turned away (61.3 % served over the run against
///   66.4 % without protection; 66.4 % at 1024). The
///   cost: requests the server sheds are retried within the budget, so
///   in the storm's surge 1.06 attempts per request reached the server
///   (0.54 when the client's bulkhead turned them away), for the same
///   goodput;
/// - an adaptive limit on the attempts in flight
///   ([`QueueDelay`](crate::shed::QueueDelay), initial **100**, at most
///   1000, doubling at the start as a server's does), that tolerates a
///   queue at the dependency up to the attempt timeout
///   ([`QueueDelayBuilder::queue_allowance`](crate::shed::QueueDelayBuilder::queue_allowance))
///   and is cut by attempts that time out. A request over it waits in its
///   queue, never sent, for a place or its deadline, the newest first
///   ([`wait_at_limit`](crate::shed::AdaptiveLimitLayerBuilder::wait_at_limit)),
///   as a plain client's request waits at the dependency. The scenarios: a
///   dependency queueing past the deadline (the storm's, 130 % of its
///   capacity for 10 s) served 85.1 % (81.6 % refusing those requests at
///   once) where the breaker alone kept 64.8 %; one within
///   the deadline (110 % for 6 s) 99.1 %, as before the stack had the
///   limit (a limit that kept the dependency's queue to a tenth of its
///   service time refused the callers who could have waited: 97.8 %, and
///   94.7 % at half the attempt timeout); a route of a server whose
///   dependency restarted cold (`tests/shed`: 1037 of its 1800 requests
///   answered, the dependency able to answer about 960 in that time plus
///   what its warm phase queued, where a limit of its own on the server
///   kept it to 888), the server's other route served in full; and a busy
///   client (200 attempts in flight from its first instant): started at
///   20, as a server's limit, it refused some of them while it doubled (an
///   outside trial over real HTTP, 4000 requests a second: 89 to 241 in
///   the first second; `tests/stack`: 36 of 8000), at 100 none; and a
///   brownout past the callers' deadline (an outside trial over real HTTP,
///   a chain of three services: 8 workers at 10 times their latency, sent
///   five times what they then answer, the calls with the 479 ms their
///   callers left): the limit is cut by the share of calls answered in
///   time when a fifth or more run out of time behind a queue (see
///   [`QueueDelay`](crate::shed::QueueDelay), rule 3), and `tests/stack`
///   answers 807 of the 800 answerable (some queued before; 725
///   refusing the requests over the limit at once), with 8.5 s of the
///   workers' 80 spent on calls cut before their answer (457 and 46 s when the limit
///   judged by the answers' latency alone; the trial: 80 to 84 % of the
///   possible, 29 to 31 % of the workers' time cut). The cost: a small
///   dependency is held to its workers later (4 workers at twice their
///   capacity: after a minute, 22 of the last 800 requests out of time;
///   after 20 s, 44); and a dependency that got 15 times slower without
///   queueing (the storm's "slow dependency": 120 in flight needed at
///   400 requests a second) has the requests over the limit held back
///   for its first 2 s, until a growth test (a quarter more, in the
///   first window whose every call slowed) finds no queue of the limit's
///   own and the limit follows it (99.4 % served, 100 % by a caller that
///   waits);
/// - a retry budget that grows with success ([`RetryLayer`]'s default,
///   [`RetryBudget::DEFAULT_SUCCESS_RATIO`]): a partial failure of 30 % is
///   retried to 97 % success;
/// - no slow calls: the breaker opens on failures only (an attempt that
///   times out is one), unless a slow-call duration is set with
///   [`slow_call_duration`](Self::slow_call_duration). A call answered
///   within its attempt timeout was answered: a dependency slowed to 400 ms
///   under a 500 ms attempt timeout, called behind a seawall server, was
///   shut off by a breaker that took calls over 80 % of the attempt timeout
///   for slow (its one probe judged slow, it opened again at every
///   half-open), and its callers were served 3.3 % where no protection
///   served 10.7 % (an outside trial over real HTTP);
/// - the attempt timeout linked to the retry layer: an attempt reaching its
///   limit while timeouts are common (more of them in the last 2 s than 2
///   plus 5 % of those 2 s's requests, so a timed-out attempt would not be
///   retried) is not cut but
///   runs on to the request's deadline, as is
///   the last attempt (see [the deadline module](crate::deadline)); one
///   made before timeouts were common was sent its own limit
///   (`grpc-timeout`, `x-request-timeout-ms`), which a dependency that
///   reads it keeps to. The
///   scenario: a dependency queueing at 110 % of its capacity (the storm's
///   "queueing dependency"), served 99.1 % where cutting and retrying
///   attempts as its queue passed the attempt timeout served 83.6 %;
/// - under a deadline from above (a handler's, from its server stack),
///   10 ms of it, at most a tenth, kept for the handler to answer in, so
///   that the client's error, not the server's timer, answers; and the
///   deadline not stored in the request's extensions (it travels with
///   the call);
/// - with [`propagate_deadline`](Self::propagate_deadline), a retry's
///   `min_remaining` of 20 ms (see there).
///
/// [`build`](Self::build) checks the settings against each other; see
/// [`build`](Self::build) for the rules.
pub struct ClientStackBuilder<
    P = RetryErrors,
    C = DependencyFailures,
    L = Skip,
    O = Identity,
    H = Skip,
> {
    common: Common,
    pub(super) retry: RetryLayerBuilder<P>,
    breaker: CircuitBreakerBuilder<C>,
    inner: L,
    outer: O,
    hedge: H,
}

/// The settings of a [`ClientStackBuilder`] that no builder method changes
/// the type of: a method that does moves them as one field.
struct Common {
    name: Name,
    observer: Option<Observer>,
    total_budget: Option<Duration>,
    attempt_timeout: Option<Duration>,
    slow_call_duration: Option<Duration>,
    limit: AdaptiveLimitLayerBuilder,
    bulkhead: BulkheadBuilder,
}

impl<P, C, L: fmt::Debug, O, H> fmt::Debug for ClientStackBuilder<P, C, L, O, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStackBuilder")
            .field("name", &self.common.name)
            .field("total_budget", &self.common.total_budget)
            .field("attempt_timeout", &self.common.attempt_timeout)
            .field("slow_call_duration", &self.common.slow_call_duration)
            .field("breaker", &self.breaker)
            .field("bulkhead", &self.common.bulkhead)
            .field("innermost", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<P, C, L, O, H> ClientStackBuilder<P, C, L, O, H> {
    /// The observer every layer of the stack reports to (default: none). It
    /// replaces any observer set inside the per-layer closures.
    pub fn observer(mut self, observer: impl Into<Observer>) -> Self {
        self.common.observer = Some(observer.into());
        self
    }

    /// The total time budget of a request, every attempt and backoff
    /// included (required). A shorter deadline the request already carries
    /// wins, less 10 ms (at most a tenth of what is left of it): a call
    /// made in a handler under a server stack, whose deadline is then the
    /// one that binds, ends by this stack's timer before the server's: the
    /// handler has the error to answer with, and an attempt that ran on to
    /// the deadline counts to the breaker.
    pub fn total_budget(mut self, budget: Duration) -> Self {
        self.common.total_budget = Some(budget);
        self
    }

    /// The time limit of each attempt (at most the total budget). Default:
    /// half the total budget, which leaves room for a retry after an
    /// attempt that timed out (the storm runs 1 s and 500 ms), or the whole
    /// budget with `max_attempts(1)`. Set it when half the budget is not
    /// at least twice the dependency's usual latency and above its slow
    /// but healthy latency (see "Choosing the budgets" in `docs/guide.md`), and
    /// for a budget under 140 ms (120 ms with the retry's own
    /// `min_remaining` of 10 ms), where half of it leaves no room for the
    /// first backoff (`build` says so).
    pub fn attempt_timeout(mut self, per_try: Duration) -> Self {
        self.common.attempt_timeout = Some(per_try);
        self
    }

    /// The breaker's slow-call duration (default: none, no call is slow).
    /// Must be below the attempt timeout. With the breaker's slow-call rate
    /// threshold of 100 %, the breaker then also opens when every call in
    /// its window took longer (and a half-open probe that takes longer
    /// opens it again). Set it here rather than inside
    /// [`breaker`](Self::breaker): the stack sets it last.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.common.slow_call_duration = Some(duration);
        self
    }

    /// Configures the retry layer, starting from its defaults (3 attempts,
    /// full-jitter backoff from 50 ms to 2 s, a budget of 5 % of requests + 50 % of those that succeeded + 10/s) and the stack's
    /// name. May change the policy (`|b| b.policy(HttpRetry::default())`).
    pub fn retry<Q>(
        self,
        f: impl FnOnce(RetryLayerBuilder<P>) -> RetryLayerBuilder<Q>,
    ) -> ClientStackBuilder<Q, C, L, O, H> {
        ClientStackBuilder {
            retry: f(self.retry),
            outer: self.outer,
            hedge: self.hedge,
            common: self.common,
            breaker: self.breaker,
            inner: self.inner,
        }
    }

    /// Configures the circuit breaker, starting from the stack's defaults
    /// (a 10 s window judged from 20 calls at 80 % failures, 50 failures in
    /// a row, open 100 ms then 1 probe; see [`ClientStackBuilder`]) with the
    /// stack's name and classifier. May change the classifier.
    pub fn breaker<C2>(
        self,
        f: impl FnOnce(CircuitBreakerBuilder<C>) -> CircuitBreakerBuilder<C2>,
    ) -> ClientStackBuilder<P, C2, L, O, H> {
        ClientStackBuilder {
            breaker: f(self.breaker),
            outer: self.outer,
            hedge: self.hedge,
            common: self.common,
            retry: self.retry,
            inner: self.inner,
        }
    }

    /// Adds hedging between the retry layer and the breaker (feature
    /// `hedge`): a copy of a request still unanswered after the p95 of
    /// recent calls, within a budget of 10 % of requests (see
    /// [`hedge`](crate::hedge)), configured from those defaults in `f`. The
    /// stack gives it its name (`"{name}.hedge"`), its observer and the retry
    /// policy, which decides what may be hedged: with the HTTP preset,
    /// idempotent methods; with the gRPC preset, the methods opted in with
    /// [`GrpcRetry::hedge_method`](crate::retry::grpc::GrpcRetry::hedge_method),
    /// whatever `retry_method` restricts retries to (`build` refuses a gRPC
    /// hedge with no method opted in).
    ///
    /// Each copy goes through the breaker, the bulkhead and the attempt
    /// timeout like an attempt; a copy that loses is cancelled and not
    /// counted. The policy is the retry layer's as it stands at
    /// [`build`](Self::build), whatever the order of `.retry(..)` and
    /// `.hedge(..)`. No copy is sent before the latency estimator has a
    /// window of at least 20 samples and 1 s (or set a fixed
    /// [`delay`](crate::hedge::HedgeLayerBuilder::delay)).
    ///
    /// For gRPC, opt the idempotent methods in on the retry policy:
    ///
    /// ```
    /// # #[cfg(feature = "tonic")]
    /// # fn doc() -> Result<(), seawall::ConfigError> {
    /// use std::time::Duration;
    /// use seawall::retry::grpc::GrpcRetry;
    /// use seawall::stack::ClientStack;
    ///
    /// let stack = ClientStack::grpc("catalogue")
    ///     .total_budget(Duration::from_secs(2))
    ///     .attempt_timeout(Duration::from_millis(600))
    ///     .retry(|r| r.policy(GrpcRetry::new().hedge_method("/catalogue.Catalogue/GetItem")))
    ///     .hedge(|h| h)
    ///     .build()?;
    /// // `stack.layer(channel)` is a `GrpcClient<Channel, HedgeLayer<GrpcRetry>>`.
    /// # let _ = stack;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "hedge")]
    #[cfg_attr(docsrs, doc(cfg(feature = "hedge")))]
    pub fn hedge(
        self,
        f: impl FnOnce(crate::hedge::HedgeLayerBuilder) -> crate::hedge::HedgeLayerBuilder,
    ) -> ClientStackBuilder<P, C, L, O, crate::hedge::HedgeLayerBuilder> {
        let hedge =
            f(crate::hedge::HedgeLayer::builder().name(part_name(&self.common.name, "hedge")));
        ClientStackBuilder {
            hedge,
            retry: self.retry,
            outer: self.outer,
            common: self.common,
            breaker: self.breaker,
            inner: self.inner,
        }
    }

    /// Configures the adaptive limit on the attempts in flight to the
    /// dependency, starting from the layer's defaults and the stack's
    /// name. Without an [`algorithm`](AdaptiveLimitLayerBuilder::algorithm)
    /// of yours, the stack's is [`QueueDelay`](crate::shed::QueueDelay)
    /// with a [queue allowance](crate::shed::QueueDelayBuilder::queue_allowance)
    /// of the attempt timeout (see [`ClientStackBuilder`]). To hold it at
    /// its maximum instead, as the stack was before it had the limit:
    /// `.adaptive_limit(|l| l.limits(Some(1000), Some(1000)).reject_doomed(false))`
    /// (the second part: no refusal of a request whose time left is
    /// shorter than the expected latency).
    pub fn adaptive_limit(
        mut self,
        f: impl FnOnce(AdaptiveLimitLayerBuilder) -> AdaptiveLimitLayerBuilder,
    ) -> Self {
        self.common.limit = f(self.common.limit);
        self
    }

    /// Configures the bulkhead, starting from the stack's default (1024
    /// attempts in flight, no queue; see [`ClientStackBuilder`]) and the
    /// stack's name.
    pub fn bulkhead(mut self, f: impl FnOnce(BulkheadBuilder) -> BulkheadBuilder) -> Self {
        self.common.bulkhead = f(self.common.bulkhead);
        self
    }

    /// Builds every layer and checks them against each other.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"client_stack"`) when:
    ///
    /// - `total_budget` was not set;
    /// - `attempt_timeout` is above `total_budget`;
    /// - with `max_attempts` of 2 or more, the retry schedule does not fit the
    ///   budget: `attempt_timeout` plus the longest first backoff (the first
    ///   delay's upper bound for the jitter in use: the base for full, equal
    ///   and no jitter, up to 3 × base for decorrelated) plus the retry's
    ///   `min_remaining` (default 10 ms; 20 ms in the protocol presets and
    ///   with [`propagate_deadline`](Self::propagate_deadline)) must be
    ///   at most `total_budget`, or
    ///   a request whose first attempt times out may get no second one (the
    ///   retry layer schedules a retry only when its delay plus
    ///   `min_remaining` fits the time left);
    /// - the slow-call duration is not below `attempt_timeout` (a call
    ///   cannot take longer than its attempt timeout to answer, and a
    ///   streamed body is judged by its head, so such a threshold never
    ///   trips).
    ///
    /// A [`ConfigError`] (layer `"hedge"`) when, with a
    /// [`hedge`](Self::hedge) and the gRPC policy
    /// ([`GrpcRetry`](crate::retry::grpc::GrpcRetry)), no method is opted
    /// in to hedging (no copy would be sent); (layer `"retry"`) when a
    /// `GrpcRetry` was given a
    /// name that is not a method's path (`"/package.Service/Method"`) in
    /// `hedge_method` or `retry_method`, or a service's (`"package.Service"`)
    /// in `retry_service`, or more than the most of either. (A well-formed
    /// path that names no method, `"/kv.Kv/get"` for `Get`, cannot be told
    /// from a real one: check it against your `.proto`.) Also (layer
    /// `"hedge"`) when the hedge's fixed [`delay`](crate::hedge::HedgeLayerBuilder::delay)
    /// is over half the total budget: a copy is sent only with as much
    /// time left as the request has waited, so none would ever go.
    ///
    /// A layer's own refusal (a zero budget, `max_attempts(0)`, a breaker
    /// threshold outside `(0, 1]`, …) is returned as that layer's error.
    #[allow(clippy::type_complexity)]
    pub fn build(self) -> Result<ClientStackLayer<P, C, L::Layer, O, H::Layer>, ConfigError>
    where
        P: 'static,
        L: StackPart,
        H: HedgePart<P>,
        C: Send + Sync + 'static,
    {
        let total = self
            .common
            .total_budget
            .ok_or_else(|| ConfigError::new(KIND, "total_budget must be set"))?;
        let attempt_set = self.common.attempt_timeout.is_some();
        let per_try = self
            .common
            .attempt_timeout
            .unwrap_or_else(|| default_attempt_timeout(total, self.retry.max_attempts_setting()));
        let obs = self.common.observer.as_ref();

        // The deadline travels with the call inside the stack (and as a
        // header to the dependency): no extension insert per request. (A
        // request type that keeps it without allocating gets it stored:
        // `HasDeadline::STORING_ALLOCATES`.)
        let (deadline, attempt) = stack_timers(
            &self.common.name,
            KIND,
            total,
            InnerTimeout {
                part: "attempt",
                setting: "attempt_timeout",
                timeout: per_try,
                own_end: crate::deadline::ANSWER_MARGIN,
            },
            false,
            crate::deadline::UPSTREAM_MARGIN,
            obs,
        )?;
        let mut retry = self.retry;
        let mut bulkhead = self.common.bulkhead;
        // A queue at the dependency within an attempt timeout is its
        // callers' to wait out (unless the stack was given an algorithm).
        let mut limit = self.common.limit.for_calls_out();
        if !limit.has_algorithm() {
            limit = limit.algorithm(
                crate::shed::QueueDelay::builder()
                    .initial_limit(CLIENT_INITIAL_LIMIT)
                    .queue_allowance(per_try)
                    .build()?,
            );
        }
        if let Some(o) = obs {
            retry = retry.observer(o.clone());
            bulkhead = bulkhead.observer(o.clone());
            limit = limit.observer(o.clone());
        }
        let retry = retry.build()?;
        // An attempt reaching its limit while the retry layer would not
        // retry a timeout is not cut.
        let attempt = attempt.with_retry_signal(retry.budget().timeouts_signal());
        // Set on the stack, or on its breaker (`.breaker(|b| …)`).
        let slow = self
            .common
            .slow_call_duration
            .or(self.breaker.slow_call_setting());
        check_schedule(
            Schedule {
                total,
                per_try,
                max_attempts: retry.max_attempts(),
                backoff: retry.backoff(),
                min_remaining: retry.min_remaining(),
            },
            slow,
        )
        .map_err(|e| {
            if attempt_set {
                e
            } else {
                ConfigError::new(
                    KIND,
                    format!(
                        "{} (attempt_timeout was not set: it defaults to half the total_budget)",
                        e.message()
                    ),
                )
            }
        })?;
        let mut breaker = match slow {
            Some(slow) => self.breaker.slow_call_duration(slow),
            None => self.breaker,
        };
        if let Some(o) = obs {
            breaker = breaker.observer(o.clone());
        }
        let breaker = breaker.build()?;
        let bulkhead = bulkhead.build()?;
        let limit = limit.build()?;
        let inner = self.inner.build_part(obs)?;
        if let Some(delay) = self.hedge.fixed_delay() {
            // A copy goes only with as much time left as the request waited.
            if delay > total / 2 {
                return Err(ConfigError::new(
                    "hedge",
                    format!(
                        "delay ({delay:?}) must be at most half the stack's total_budget \
                         ({total:?}): a copy is sent only with as much time left as the \
                         request has waited"
                    ),
                ));
            }
        }
        let hedge = self.hedge.build_hedge(retry.policy(), obs)?;
        Ok(ClientStackLayer {
            deadline,
            retry,
            hedge,
            breaker,
            limit,
            bulkhead,
            attempt,
            attempt_set,
            inner,
            outer: self.outer,
        })
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl<P, C, L, O, H> ClientStackBuilder<P, C, L, O, H> {
    /// Replaces the innermost part.
    pub(crate) fn with_innermost<L2>(self, inner: L2) -> ClientStackBuilder<P, C, L2, O, H> {
        self.replace_parts(|_, outer| (inner, outer))
    }

    /// Changes the innermost part.
    pub(crate) fn map_innermost(mut self, f: impl FnOnce(L) -> L) -> Self {
        self.inner = f(self.inner);
        self
    }

    /// Replaces the outermost part.
    pub(crate) fn with_outermost<O2>(self, outer: O2) -> ClientStackBuilder<P, C, L, O2, H> {
        self.replace_parts(|inner, _| (inner, outer))
    }

    /// The same builder with its innermost and outermost parts replaced.
    fn replace_parts<L2, O2>(
        self,
        f: impl FnOnce(L, O) -> (L2, O2),
    ) -> ClientStackBuilder<P, C, L2, O2, H> {
        let (inner, outer) = f(self.inner, self.outer);
        ClientStackBuilder {
            inner,
            outer,
            hedge: self.hedge,
            common: self.common,
            retry: self.retry,
            breaker: self.breaker,
        }
    }

    /// The name of the stack.
    pub(crate) fn stack_name(&self) -> &Name {
        &self.common.name
    }
}

impl<P, C, O, H> ClientStackBuilder<P, C, Skip, O, H> {
    /// Adds deadline propagation innermost (feature `http`; requests must be
    /// `http::Request`s): each attempt's outbound request carries the time
    /// it has left as `grpc-timeout` and `x-request-timeout-ms` (configure
    /// which in `f`; `|b| b` keeps both).
    ///
    /// The retry's `min_remaining` becomes 20 ms, as in the protocol
    /// presets, unless set in [`retry`](Self::retry): a seawall server
    /// takes 10 ms off the time it is told for the answer's way back, and
    /// in an outside trial of a three-tier chain, retries sent with the
    /// retry layer's own 10 ms left (171 of them) reached such a server
    /// with no time and were refused `504`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), seawall::BoxError> {
    /// use std::time::Duration;
    /// use seawall::stack::ClientStack;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let stack = ClientStack::builder("users")
    ///     .total_budget(Duration::from_secs(1))
    ///     .attempt_timeout(Duration::from_millis(250))
    ///     .propagate_deadline(|p| p.no_ms_header()) // a gRPC backend: grpc-timeout only
    ///     .build()?;
    /// // Stands in for an HTTP/2 client: answers with the header it was sent.
    /// let client = service_fn(|req: http::Request<()>| async move {
    ///     let sent = req.headers()["grpc-timeout"].to_str()?.to_owned();
    ///     Ok::<_, seawall::BoxError>(http::Response::new(sent))
    /// });
    /// let res = stack.layer(client).oneshot(http::Request::new(())).await?;
    /// // (The body comes back held to the deadline: a `CallBody`.)
    /// assert_eq!(res.into_body().into_inner(), "250m");
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn propagate_deadline(
        self,
        f: impl FnOnce(
            crate::deadline::propagate::PropagateDeadlineLayerBuilder,
        ) -> crate::deadline::propagate::PropagateDeadlineLayerBuilder,
    ) -> ClientStackBuilder<P, C, crate::deadline::propagate::PropagateDeadlineLayerBuilder, O, H>
    {
        let part = f(
            crate::deadline::propagate::PropagateDeadlineLayer::builder()
                .name(part_name(self.stack_name(), "propagate")),
        );
        let mut this = self;
        // A dependency told the time left takes its own margin off it: a
        // retry needs more left than that (see `PRESET_MIN_REMAINING`).
        this.retry = this
            .retry
            .default_min_remaining(super::preset::PRESET_MIN_REMAINING);
        this.with_innermost(part)
    }
}

/// The durations a client stack's timing rules judge.
pub(crate) struct Schedule {
    pub(crate) total: Duration,
    pub(crate) per_try: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) min_remaining: Duration,
}

/// The attempt timeout a client stack takes when none is set: half the
/// total budget, room for a retry after an attempt that timed out (the
/// storm's 1 s and 500 ms), or the whole budget when no retry can follow.
pub(crate) fn default_attempt_timeout(total: Duration, max_attempts: u32) -> Duration {
    if max_attempts >= 2 { total / 2 } else { total }
}

/// The timing rules of a client stack (see the [module docs](super)), at
/// build and at reload: the attempt timeout within the total budget, room
/// for a second attempt, and a slow-call duration, when set, below the
/// attempt timeout.
pub(crate) fn check_schedule(s: Schedule, slow: Option<Duration>) -> Result<(), ConfigError> {
    let Schedule {
        total,
        per_try,
        max_attempts,
        backoff,
        min_remaining,
    } = s;
    if per_try > total {
        return Err(ConfigError::new(
            KIND,
            format!("attempt_timeout must be at most total_budget ({total:?}), got {per_try:?}"),
        ));
    }
    if max_attempts >= 2 {
        let (_, first) = backoff.bounds(&BackoffState::new());
        if per_try.saturating_add(first).saturating_add(min_remaining) > total {
            return Err(ConfigError::new(
                KIND,
                format!(
                    "retry schedule does not fit total_budget ({total:?}): attempt_timeout \
                     ({per_try:?}) + the longest first backoff ({first:?}) + the retry's \
                     min_remaining ({min_remaining:?}) must be at most total_budget, or a \
                     request whose first attempt times out may get no second attempt; lower \
                     them, keeping an attempt at least twice the dependency's latency, or set \
                     max_attempts(1) with attempt_timeout equal to total_budget"
                ),
            ));
        }
    }
    let Some(slow) = slow else {
        return Ok(());
    };
    if slow >= per_try {
        return Err(ConfigError::new(
            KIND,
            format!(
                "slow_call_duration must be below attempt_timeout ({per_try:?}), got \
                 {slow:?}: a call cannot take longer than its attempt timeout, so the \
                 slow-call rate could never trip"
            ),
        ));
    }
    Ok(())
}
