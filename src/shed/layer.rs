use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::algorithm::LimitAlgorithm;
use super::criticality::{Criticality, FromTaskLocal};
use super::limiter::{Config, Limiter};
use super::queue_delay::QueueDelay;
use super::service::AdaptiveLimit;

/// The queue for a herd's default bound (see
/// [`AdaptiveLimitLayerBuilder::max_queue`]).
const MAX_QUEUE: usize = 1000;
use crate::error::{ConfigError, Name};
#[cfg(feature = "http")]
use crate::hold::BodyEnd;
use crate::hold::Head;
use crate::observe::Observer;
use crate::stripe::Striped;

/// Applies an adaptive concurrency limit to a service; see the
/// [module docs](super).
///
/// Every service built from one layer (and every clone of them) shares one
/// limit: build the layer once per protected resource and reuse it; building
/// a new layer per connection or per route gives each its own limit.
///
/// A call keeps its place until its response arrives (its head, for a
/// streamed response: see [`hold`](crate::hold)).
pub struct AdaptiveLimitLayer<P = FromTaskLocal, M = Head> {
    pub(crate) limiter: Striped<Limiter>,
    pub(crate) extractor: Arc<P>,
    hold: PhantomData<fn() -> M>,
}

impl<P, M> Clone for AdaptiveLimitLayer<P, M> {
    fn clone(&self) -> Self {
        AdaptiveLimitLayer {
            limiter: self.limiter.clone(),
            extractor: Arc::clone(&self.extractor),
            hold: PhantomData,
        }
    }
}

impl<P, M> fmt::Debug for AdaptiveLimitLayer<P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl AdaptiveLimitLayer {
    /// A builder with the defaults: QueueDelay, 1 s windows of at least 10
    /// samples, RTTs under 100 µs ignored, doomed requests rejected, shares
    /// `CriticalPlus` 20 %, `Critical` 50 %, `SheddablePlus` 10 %,
    /// `Sheddable` 0 %, criticality from the task-local.
    pub fn builder() -> AdaptiveLimitLayerBuilder {
        AdaptiveLimitLayerBuilder::default()
    }
}

impl<P, M> AdaptiveLimitLayer<P, M> {
    /// This limit in a protocol stack (the server presets): its
    /// `CallFinished` events judge a response by its protocol status
    /// (`http::Response<CallBody<B>>`), where the default mode reports
    /// every response a success. The place is given back at the head in
    /// either mode: a stream's lifetime says nothing of what the service
    /// can answer at once (see [`hold`](crate::hold)); a bulkhead bounds
    /// streams.
    #[cfg(feature = "http")]
    pub fn until_body_end(self) -> AdaptiveLimitLayer<P, BodyEnd> {
        self.hold_until()
    }

    // For the stacks (a build without them does not call it).
    #[allow(dead_code)]
    pub(crate) fn hold_until<M2>(self) -> AdaptiveLimitLayer<P, M2> {
        AdaptiveLimitLayer {
            limiter: self.limiter,
            extractor: self.extractor,
            hold: PhantomData,
        }
    }

    /// The layer instance's name.
    pub fn name(&self) -> &str {
        self.limiter.name.as_str()
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limiter.limit()
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> usize {
        self.limiter.inflight()
    }

    /// Requests waiting in the limit's queue now: for a herd (see
    /// [`AdaptiveLimitLayerBuilder::max_queue`]), or for a place at any
    /// time in a limit that
    /// [waits at the limit](AdaptiveLimitLayerBuilder::wait_at_limit).
    pub fn queued(&self) -> usize {
        self.limiter.queued()
    }

    /// Calls of `class` in flight now.
    pub fn inflight_of(&self, class: Criticality) -> usize {
        self.limiter.inflight_of(class)
    }

    /// Changes the bounds of the limit at run time (an operator's reload):
    /// `None` keeps a bound. The algorithm keeps what it has learned; the
    /// limit is clamped into the new bounds at once (calls in flight are
    /// not disturbed: a lower limit admits no new call until enough have
    /// returned), and a limit a lower maximum cut comes back when the
    /// maximum is raised again, unless it learned lower meanwhile (it left
    /// that maximum). Reported as a
    /// [`Reconfigured`](crate::observe::EventKind::Reconfigured) event (and
    /// a `LimitChanged` one when the limit moved).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for bounds the algorithm refuses (`1 ≤ min ≤ max`
    /// for the built-in ones); nothing is changed.
    pub fn set_limits(
        &self,
        min_limit: Option<usize>,
        max_limit: Option<usize>,
    ) -> Result<(), ConfigError> {
        self.limiter.set_bounds(min_limit, max_limit)
    }

    /// Whether a request the limit refuses waits in its queue for a place
    /// instead (see
    /// [`AdaptiveLimitLayerBuilder::wait_at_limit`]).
    pub fn wait_at_limit(&self) -> bool {
        self.limiter.waits_at_limit()
    }

    /// Turns the wait at the limit on or off at run time (what a settings
    /// file's `limit = { wait_at_limit = .. }` reloads). Requests that wait
    /// already wait on; turned off, they are judged as a herd's waiters
    /// are (served while they can be in time, refused once they cannot).
    pub fn set_wait_at_limit(&self, wait: bool) {
        self.limiter.set_wait_at_limit(wait);
    }

    stacks_only! {
        /// The limit's maximum, for an algorithm with bounds (the built-in
        /// ones).
        pub(crate) fn max_limit(&self) -> Option<usize> {
            self.limiter.bounds().map(|(_, max)| max)
        }
    }

    /// Whether [`set_limits`](Self::set_limits) would take these bounds.
    #[cfg(feature = "serde")]
    pub(crate) fn check_limits(
        &self,
        min_limit: Option<usize>,
        max_limit: Option<usize>,
    ) -> Result<(), ConfigError> {
        self.limiter.check_bounds(min_limit, max_limit)
    }

    /// The service time a request should expect: the average RTT of the
    /// last closed window (`None` before the first window closed). The
    /// doomed-work check takes the window's fastest answer instead.
    pub fn expected_rtt(&self) -> Option<Duration> {
        self.limiter.expected_rtt()
    }
}

impl<S, P, M> Layer<S> for AdaptiveLimitLayer<P, M> {
    type Service = AdaptiveLimit<S, P, M>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit::new(inner, self.limiter.clone(), Arc::clone(&self.extractor))
    }
}

/// Builder for [`AdaptiveLimitLayer`]; see [`AdaptiveLimitLayer::builder`]
/// for the defaults.
pub struct AdaptiveLimitLayerBuilder<P = FromTaskLocal> {
    settings: AdaptiveLimitLayerBuilderSettings,
    extractor: P,
}

/// The settings of a [`AdaptiveLimitLayerBuilder`] that its type parameters do not
/// touch: one field to move when a method changes a parameter.
#[derive(Debug)]
struct AdaptiveLimitLayerBuilderSettings {
    algorithm: Option<Box<dyn LimitAlgorithm>>,
    bounds: (Option<usize>, Option<usize>),
    window: Duration,
    min_window_samples: u64,
    min_rtt: Duration,
    shares: [f64; 4],
    reject_doomed: bool,
    burst: Duration,
    max_queue: usize,
    waits_apart: bool,
    wait_at_limit: Option<bool>,
    name: Name,
    observer: Observer,
}

impl Default for AdaptiveLimitLayerBuilder {
    fn default() -> Self {
        AdaptiveLimitLayerBuilder {
            settings: AdaptiveLimitLayerBuilderSettings {
                algorithm: None,
                bounds: (None, None),
                window: Duration::from_secs(1),
                min_window_samples: 10,
                min_rtt: Duration::from_micros(100),
                shares: [0.2, 0.5, 0.1, 0.0],
                reject_doomed: true,
                burst: super::limiter::BURST,
                max_queue: MAX_QUEUE,
                waits_apart: true,
                wait_at_limit: None,
                name: Name::from("adaptive_limit"),
                observer: Observer::default(),
            },
            extractor: FromTaskLocal,
        }
    }
}

impl<P> fmt::Debug for AdaptiveLimitLayerBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitLayerBuilder")
            .field("algorithm", &self.settings.algorithm)
            .field("window", &self.settings.window)
            .field("min_window_samples", &self.settings.min_window_samples)
            .field("min_rtt", &self.settings.min_rtt)
            .field("shares", &self.settings.shares)
            .field("reject_doomed", &self.settings.reject_doomed)
            .field("burst", &self.settings.burst)
            .field("name", &self.settings.name)
            .finish_non_exhaustive()
    }
}

impl<P> AdaptiveLimitLayerBuilder<P> {
    /// The limit algorithm (default [`QueueDelay::default()`]); pass an
    /// [`Aimd`](super::Aimd) or your own [`LimitAlgorithm`].
    pub fn algorithm(mut self, algorithm: impl LimitAlgorithm) -> Self {
        self.settings.algorithm = Some(Box::new(algorithm));
        self
    }

    /// A client stack's limit: its calls are all out, none kept apart.
    #[cfg(all(feature = "deadline", feature = "retry", feature = "circuit-breaker"))]
    pub(crate) fn for_calls_out(mut self) -> Self {
        self.settings.waits_apart = false;
        self
    }

    /// Whether an algorithm was given.
    #[cfg(all(feature = "deadline", feature = "retry", feature = "circuit-breaker"))]
    pub(crate) fn has_algorithm(&self) -> bool {
        self.settings.algorithm.is_some()
    }

    /// Bounds for the algorithm's limit (`None` keeps the algorithm's own;
    /// [`QueueDelay`]'s are 1..=1000), set through
    /// [`LimitAlgorithm::set_bounds`] when the layer is built — what a
    /// settings file's `limit = { min_limit, max_limit }` sets.
    pub fn limits(mut self, min_limit: Option<usize>, max_limit: Option<usize>) -> Self {
        if min_limit.is_some() {
            self.settings.bounds.0 = min_limit;
        }
        if max_limit.is_some() {
            self.settings.bounds.1 = max_limit;
        }
        self
    }

    /// The shortest sampling window (default 1 s). A window closes at the
    /// first completion after it has lasted this long *and* holds
    /// [`min_window_samples`](Self::min_window_samples) samples; the
    /// algorithm then runs once. Two exceptions. At the start, for an
    /// algorithm that [judges it](super::LimitAlgorithm::judges_start) (the
    /// default [`QueueDelay`](super::QueueDelay) does): while every window
    /// so far has doubled the limit, a window closes at a request over the
    /// limit once such requests have come for four expected service times
    /// (50 ms at least), the window has lasted as long and holds the
    /// minimum of samples (RTTs only), so that a server started under a
    /// load above its initial limit raises it within a few service times.
    /// And for an algorithm that
    /// [judges such windows](super::LimitAlgorithm::judges_kept) (the
    /// default [`QueueDelay`](super::QueueDelay) does): a window closes
    /// sooner, at a request over the limit, when the calls at the limit
    /// keep their places ([`WindowSample::kept`](super::WindowSample::kept):
    /// a dependency that hangs behind one route, while the others are
    /// answered as before), judged after 50 ms of requests over the limit
    /// (four expected service times, if longer), and after twice as long
    /// each time they were found so; waiting out the window, the limit
    /// would refuse the other routes for all of it.
    pub fn window(mut self, window: Duration) -> Self {
        self.settings.window = window;
        self
    }

    /// Samples (RTTs and drops) a window needs before it closes (default 10;
    /// a window closed early at the start needs as many RTTs).
    pub fn min_window_samples(mut self, samples: u64) -> Self {
        self.settings.min_window_samples = samples;
        self
    }

    /// RTTs below this are not sampled (default 100 µs): such answers (cache
    /// hits, fast errors) say nothing about the backend's capacity.
    pub fn min_rtt(mut self, min_rtt: Duration) -> Self {
        self.settings.min_rtt = min_rtt;
        self
    }

    /// The share of the limit guaranteed to `class` (in `0..=1`; all shares
    /// together at most 1). Defaults: `CriticalPlus` 0.2, `Critical` 0.5,
    /// `SheddablePlus` 0.1, `Sheddable` 0.
    ///
    /// Shares are enforced only when the limit is reached (as in Netflix's
    /// partitioned limits): below the limit every class is admitted; at the
    /// limit a request is still admitted while its class has fewer than
    /// `ceil(share × limit)` calls in flight, so the top classes keep their
    /// share while the lowest classes absorb the rejections. In-flight calls
    /// can then exceed the limit, by at most the sum of the guaranteed shares
    /// (`ceil(share × limit)` per class): the adaptive algorithm sees the
    /// extra latency and lowers the limit.
    pub fn share(mut self, class: Criticality, share: f64) -> Self {
        self.settings.shares[class.index()] = share;
        self
    }

    /// Whether to reject doomed requests (default `true`): a request whose
    /// remaining deadline ([`deadline::current()`](crate::deadline::current))
    /// has already passed, or — on current evidence only — is shorter than
    /// the expected service time, is rejected at admission with `Overloaded`
    /// (event detail and metric label `"doomed"`, where a request over the
    /// limit has `"limit"`) instead of using a slot to die.
    ///
    /// Current evidence means: the server is busy (at least half its limit
    /// in flight, so the request would wait behind others), the expected
    /// service time (the fastest answer of the last closed window) was
    /// measured
    /// less than two windows ago, and the server has not been idle (nothing
    /// in flight) since that window's calls: after an idle moment, what is
    /// in flight may be other work. An idle server admits every request whose
    /// deadline has not passed: refused requests add no latency samples, so
    /// an estimate from a burst of slow requests would otherwise go on
    /// refusing short-budget requests long after the burst.
    pub fn reject_doomed(mut self, enabled: bool) -> Self {
        self.settings.reject_doomed = enabled;
        self
    }

    /// How long a burst above the limit is admitted (default 100 ms, CoDel's
    /// interval; zero: never; at most 10 s). When the calls in flight reach
    /// the limit after a quiet spell (the limit refused nothing for this
    /// long), `Critical` and `CriticalPlus` requests over it are admitted
    /// for this long, up to four times the limit in flight (no more than
    /// the algorithm's upper bound); the calls in flight falling back below
    /// the limit and reaching it again renew it. A queue that stands at the
    /// limit for all of it is held there: the limit refuses, and a new
    /// burst waits until it has refused nothing for this long, or the
    /// calls in flight have fallen to half the limit since its last
    /// refusal (the queue drained; and the calls in flight have fallen
    /// below the limit, or twice this long has passed since the last burst
    /// began). Requests that fan out (a caller's 8 calls at once) reach
    /// the limit at any load near capacity: waiting for a spell without a
    /// refusal, which such a load never gives, the limit cost 32 % of such
    /// requests a call at 91 % of capacity; letting the next burst in once
    /// the queue drained, 4.6 % (`tests/shed`). `Sheddable` and
    /// `SheddablePlus` requests never burst. A burst's calls are no latency
    /// samples of the algorithm's (they waited in the burst's queue by
    /// choice), and do not
    /// count in a window's calls in flight. At the start (for an algorithm
    /// that [judges it](super::LimitAlgorithm::judges_start)), after each
    /// window that doubled the limit a burst goes on until a burst's
    /// length after the next window can be judged, and a window closed
    /// early for the start counts its burst's calls as samples and its
    /// calls in flight as the load: what comes over the limit then is what
    /// the next doubling would admit, and is judged with it.
    ///
    /// Requests that arrive at random come in bursts well above their
    /// average, which a handler without a limit absorbs in a few service
    /// times; without bursts the limit refused them (an outside trial over
    /// real HTTP: 1.2 % refused at 80 % of a server's capacity, 10.5 % at
    /// 95 %, where a plain server answered all in time; 0.2 % and 4.4 %
    /// with them).
    pub fn burst(mut self, burst: Duration) -> Self {
        self.settings.burst = burst;
        self
    }

    /// How many requests may wait in the queue for a herd, or for a place
    /// in a limit that [waits at the limit](Self::wait_at_limit) (default
    /// 1000, a guard on memory: each holds its request and a clone of the
    /// inner service; zero: no queue; at most 100 000).
    ///
    /// During a [burst](Self::burst) that began after a window (1 s by
    /// default) without a refusal at the limit (a herd comes after a quiet
    /// spell; a server held at its limit refuses all along), after it
    /// within 1 s of its start (a herd that came slower than the burst's
    /// cap), and for 1 s after such a burst began the queue, a `Critical` or `CriticalPlus`
    /// request with a deadline that
    /// the limit would refuse waits instead, first come first served (in a
    /// limit that [waits at the limit](Self::wait_at_limit): newest first), for a
    /// place under the limit, if it can be served within its deadline at
    /// the rate places come free (the faster of the rate measured as calls
    /// end and the last window's service time over the limit; unknown, it
    /// waits; after the second, by the measured rate only, and unknown, it
    /// is refused). As calls end, the newest waiters that can no longer be
    /// served in time are refused (judged by the same rate while the queue
    /// takes arrivals, by the measured one, over the last 100 ms or more,
    /// after)
    /// ([`Overloaded`](crate::error::Overloaded), detail `"queue"`), each
    /// told to come back when the queue before it will have drained; one
    /// whose deadline comes first leaves with
    /// [`DeadlineExceeded`](crate::error::DeadlineExceeded). A waiter that
    /// sees no call end for its patience (a window, or four expected
    /// service times if longer) is refused with the limit's hint, and
    /// nothing waits again until the calls in flight fall below the limit
    /// and reach it again: a dependency hung behind the calls at the limit
    /// must not make every request wait. A waiter's latency sample begins
    /// when its task is polled with its place (its place is counted in
    /// flight from when it is handed over). After that second, requests
    /// over the limit join the queue while it drains only if they come
    /// slower than places free, by a third at least (the traffic after a
    /// herd); faster, they are refused at once; while requests wait,
    /// each refusal at the limit is told when the queue will have drained
    /// (by the measured rate, at most the newest waiter's deadline), not the
    /// limit's usual 100 to 150 ms.
    ///
    /// Chosen by a herd, many requests at one instant and then none (a job
    /// at the top of the minute, clients reconnecting after a deploy): 2000
    /// requests at once at a handler of 4 workers at 10 ms, callers with
    /// 2 s (`tests/shed`). With no queue the limit admitted its burst and
    /// refused the rest at once: 80 served, where the handler without a
    /// limit served 800; with the queue, 797. Over real HTTP the herd
    /// reached the server over 300 to 440 ms (new connections, on 2
    /// cores), while the server, busy taking them in, answered few calls:
    /// hence the second of arrivals, and the rate measured over the last
    /// span rather than since the queue began (621 to 664 served, plain
    /// axum 632 to 713; with a queue open for 100 ms, 148 to 232). The
    /// quiet window keeps an overload that lasts from beginning a queue
    /// each time the last one drained. Its price, in the storm: a surge
    /// that begins after a quiet spell queues its first second (p99 834
    /// ms, 185 ms refusing at once; goodput 53.2 %, 53.5 %).
    pub fn max_queue(mut self, max: usize) -> Self {
        self.settings.max_queue = max;
        self
    }

    /// Whether a `Critical` or `CriticalPlus` request with a deadline
    /// that the limit refuses waits in its queue for a place instead, at
    /// any time, not only in a herd (default: `false`; `true` for a
    /// [`ClientStack`](crate::stack::ClientStack)'s limit, whose calls
    /// all go out to one dependency).
    ///
    /// The waiter holds no place at the dependency, and waits to its
    /// deadline, up to [`max_queue`](Self::max_queue) waiters (a full
    /// queue refuses its oldest to make room). As places come free, the
    /// newest waiter takes one if the last window's fastest answer fits
    /// its deadline (while that estimate is fresh and half the limit in
    /// flight, as the doomed check judges an arrival; any waiter with
    /// [`reject_doomed(false)`](Self::reject_doomed)), else the newest of
    /// the next few that it fits, else the next arrival does: an overload
    /// that stands serves the requests with the most time left (LIFO, as
    /// Facebook's adaptive LIFO does under load). No waiter is refused for
    /// the estimate, which may be stale: when the dependency recovers, the
    /// places come free fast and the waiters are served. A waiter counts,
    /// for the algorithm, as a request the limit turned away, unless it is
    /// handed a place within the window it joined in (its answer is then a
    /// sample). As in a herd, a waiter that sees no call end for its
    /// patience (a window, or four expected service times if longer) is
    /// refused, and nothing waits again until the calls at the limit move
    /// (a dependency that hangs: refused at once meanwhile). With hedging
    /// above (a client stack's `.hedge(..)`), a request that waits past
    /// the hedge delay may be copied, within the hedge budget. While
    /// requests wait, each call's end and each request over the limit
    /// takes the queue's lock (no request under the limit does).
    ///
    /// Chosen by a dependency that slows for a few seconds, then recovers
    /// (an outside trial: 8 workers from 10 to 500 ms for 5 s, 200
    /// requests a second, callers with 1 s). A request the client limit
    /// refused was lost, where a plain client's request waited at the
    /// dependency and was served when it recovered; waiting here, the
    /// requests of the slowdown's last second are served (with the
    /// stack's breaker left out of it: 3149 to 3177 served of 4039, 3090
    /// refusing at once, 3215 without seawall), and the dependency does
    /// not queue them. A brownout past the callers' deadline
    /// (`tests/stack`): 807 answered of the 800 the dependency could
    /// answer in time (some queued before), 725 refusing at once. The storm's "queueing
    /// dependency past the deadline" goes from 81.6 % to 85.1 %, its
    /// "slow dependency" from 97.6 % to 97.8 % (measured before the
    /// growth test that took it to 99.4 %). The price: under an
    /// overload that lasts, the requests the dependency cannot serve fail
    /// at their deadline, not at once (`false` for that; then a request
    /// over the limit is refused at once but in the queue for a herd, see
    /// [`max_queue`](Self::max_queue)).
    pub fn wait_at_limit(mut self, wait: bool) -> Self {
        self.settings.wait_at_limit = Some(wait);
        self
    }

    /// How to find a request's [`Criticality`] (default [`FromTaskLocal`]):
    /// a closure `Fn(&Req) -> Criticality`,
    /// [`FromHttpRequest`](super::criticality::FromHttpRequest) (feature
    /// `http`), or any [`CriticalityOf`](super::criticality::CriticalityOf).
    pub fn criticality<P2>(self, extractor: P2) -> AdaptiveLimitLayerBuilder<P2> {
        AdaptiveLimitLayerBuilder {
            settings: self.settings,
            extractor,
        }
    }

    crate::observe::name_and_observer!(
        in settings,
        "The instance name (default `\"adaptive_limit\"`).",
        "Where events go (default: nowhere)."
    );

    /// Validates and builds the layer.
    pub fn build(self) -> Result<AdaptiveLimitLayer<P>, ConfigError> {
        if self.settings.window.is_zero() {
            return Err(ConfigError::new(
                "adaptive_limit",
                "window must be above zero, got 0s",
            ));
        }
        if self.settings.burst > Duration::from_secs(10) {
            return Err(ConfigError::new(
                "adaptive_limit",
                format!("burst must be at most 10s, got {:?}", self.settings.burst),
            ));
        }
        if self.settings.max_queue > 100_000 {
            return Err(ConfigError::new(
                "adaptive_limit",
                format!(
                    "max_queue must be at most 100000, got {}",
                    self.settings.max_queue
                ),
            ));
        }
        if self.settings.min_window_samples == 0 {
            return Err(ConfigError::new(
                "adaptive_limit",
                "min_window_samples must be at least 1, got 0",
            ));
        }
        for class in Criticality::ALL {
            let share = self.settings.shares[class.index()];
            if !(0.0..=1.0).contains(&share) {
                return Err(ConfigError::new(
                    "adaptive_limit",
                    format!("share of {class} must be in 0..=1, got {share}"),
                ));
            }
        }
        let total: f64 = self.settings.shares.iter().sum();
        if total > 1.0 + 1e-9 {
            return Err(ConfigError::new(
                "adaptive_limit",
                format!("shares must add up to at most 1, got {total}"),
            ));
        }
        let mut algorithm = self
            .settings
            .algorithm
            .unwrap_or_else(|| Box::new(QueueDelay::default()));
        if self.settings.bounds != (None, None) {
            algorithm.set_bounds(self.settings.bounds.0, self.settings.bounds.1)?;
        }
        let limiter = Limiter::new(
            algorithm,
            Config {
                window: self.settings.window,
                min_window_samples: self.settings.min_window_samples,
                min_rtt: self.settings.min_rtt,
                shares: self.settings.shares,
                reject_doomed: self.settings.reject_doomed,
                burst: self.settings.burst,
                max_queue: self.settings.max_queue,
                waits_apart: self.settings.waits_apart,
                wait_at_limit: self
                    .settings
                    .wait_at_limit
                    .unwrap_or(!self.settings.waits_apart),
            },
            self.settings.name,
            self.settings.observer,
        );
        // Reported once as built (from the limit to itself), as a
        // bulkhead's is: a limit gauge has its value from the start, not
        // from the first window that closes (one needs calls).
        let limit = limiter.limit();
        limiter.observer.layer_built(
            crate::observe::LayerKind::AdaptiveLimit,
            limiter.name.as_str(),
            &[
                crate::observe::refusal(
                    crate::error::RejectionKind::Overloaded,
                    super::limiter::Refusal::Limit.detail(),
                ),
                crate::observe::refusal(
                    crate::error::RejectionKind::Overloaded,
                    super::limiter::Refusal::Doomed.detail(),
                ),
                crate::observe::refusal(
                    crate::error::RejectionKind::Overloaded,
                    super::limiter::Refusal::Queue.detail(),
                ),
                crate::observe::refusal(
                    crate::error::RejectionKind::DeadlineExceeded,
                    super::limiter::Refusal::Queue.detail(),
                ),
            ],
        );
        limiter.observer.emit(
            crate::observe::LayerKind::AdaptiveLimit,
            limiter.name.as_str(),
            crate::observe::EventKind::LimitChanged {
                from: limit,
                to: limit,
            },
        );
        Ok(AdaptiveLimitLayer {
            limiter: Striped::new(limiter),
            extractor: Arc::new(self.extractor),
            hold: PhantomData,
        })
    }
}
