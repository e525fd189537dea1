use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use tower_layer::Layer;

use super::handle::{CircuitBreakerHandle, Shared};
use super::service::CircuitBreaker;
use super::state::{Config, Core, WindowConfig};
use super::window::MAX_COUNT_WINDOW;
use crate::classify::ErrorsAsFailures;
use crate::error::{ConfigError, Name};
#[cfg(feature = "http")]
use crate::hold::BodyEnd;
use crate::hold::Head;
use crate::observe::Observer;
use crate::stripe::Striped;

pub(crate) const KIND: &str = "circuit_breaker";

/// The default window: the last 10 s of calls.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Calls in the window before a rate is judged, by default.
pub(crate) const DEFAULT_MINIMUM_CALLS: u32 = 20;
/// The share of failed calls in the window that opens the breaker, by
/// default.
pub(crate) const DEFAULT_FAILURE_RATE: f64 = 0.8;
/// Failures in a row that open the breaker whatever its window holds, by
/// default.
pub(crate) const DEFAULT_IN_A_ROW: u32 = 50;
/// Probes a half-open breaker lets through to decide, by default.
pub(crate) const DEFAULT_PROBES: u32 = 1;
/// How long the breaker stays open before probing, every time, by default.
pub(crate) const DEFAULT_OPEN: Duration = Duration::from_millis(100);

/// The longest open time accepted (about 30 years).
pub(crate) const MAX_OPEN: Duration = crate::deadline::MAX_BUDGET;

/// The window a closed breaker judges the failure and slow-call rates by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `n` calls (`1..=1_000_000`). Calls made on
    /// one thread fill it in order. Threads calling one breaker take
    /// positions in short runs (at most `n / 8` shared among the machine's
    /// threads, and 16), so that they do not write one counter on every
    /// call: until the ring comes round, a run's positions that its thread
    /// has not used yet keep the call from `n` calls before (and an emptied
    /// window, after a close, may take as many calls more than `n` to be
    /// full). A window too small for runs (fewer than 16 calls a thread) is
    /// exactly the last `n`.
    Count(u32),
    /// The calls of the last `span`, kept in `buckets` buckets of
    /// `span / buckets` (`1..=1_000` buckets, each at least 1 ms wide). A call
    /// counts from the moment it finishes until its bucket leaves the window:
    /// for at least `span - span / buckets` and less than `span`. Each of
    /// the machine's thread slots (up to 16) counts its calls in buckets of
    /// its own, so that threads calling one breaker write no counter in
    /// common: 24 bytes per bucket and slot, 168 more per slot (10 buckets
    /// on 16 slots: 6.4 KiB).
    Time {
        /// How far back the window reaches.
        span: Duration,
        /// How many buckets the span is cut into.
        buckets: u32,
    },
}

impl SlidingWindow {
    /// A count-based window of the last `n` calls.
    pub const fn count(n: u32) -> Self {
        SlidingWindow::Count(n)
    }

    /// A time-based window of the last `span`, in 10 buckets.
    pub const fn time(span: Duration) -> Self {
        SlidingWindow::Time { span, buckets: 10 }
    }
}

/// The breaker's own default: the last 10 s, in 10 buckets (see
/// [`CircuitBreakerBuilder::window`]).
impl Default for SlidingWindow {
    fn default() -> Self {
        SlidingWindow::time(DEFAULT_WINDOW)
    }
}

/// Applies a circuit breaker to a service. Every service (and every clone)
/// built from one layer shares **one** breaker: build one layer per
/// dependency you want to protect separately.
///
/// Built with [`CircuitBreakerLayer::builder`]; see the [module
/// docs](crate::circuit_breaker) for the behaviour and the defaults.
///
/// The layer lets go of a call when its response arrives; with
/// [`until_body_end`](Self::until_body_end) (the HTTP and gRPC client
/// presets), a head that looks like a success is judged again when its body
/// ends (see [`hold`](crate::hold)).
pub struct CircuitBreakerLayer<C = ErrorsAsFailures, M = Head> {
    shared: Striped<Shared<C>>,
    hold: PhantomData<fn() -> M>,
}

impl<C, M> Clone for CircuitBreakerLayer<C, M> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: self.shared.clone(),
            hold: PhantomData,
        }
    }
}

impl<C, M> CircuitBreakerLayer<C, M> {
    /// This breaker, judging a response whose head looks like a success
    /// again when its body ends, fails or is dropped (responses of type
    /// `http::Response<CallBody<B>>`; see [`hold`](crate::hold)).
    #[cfg(feature = "http")]
    pub fn until_body_end(self) -> CircuitBreakerLayer<C, BodyEnd> {
        self.hold_until()
    }

    // For the stacks (a build without them does not call it).
    #[allow(dead_code)]
    pub(crate) fn hold_until<M2>(self) -> CircuitBreakerLayer<C, M2> {
        CircuitBreakerLayer {
            shared: self.shared,
            hold: PhantomData,
        }
    }
}

impl<C, M> fmt::Debug for CircuitBreakerLayer<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.shared.core.name)
            .field("state", &self.shared.core.state())
            .finish()
    }
}

impl CircuitBreakerLayer<ErrorsAsFailures> {
    /// A builder with the defaults listed in the [module
    /// docs](crate::circuit_breaker).
    pub fn builder() -> CircuitBreakerBuilder<ErrorsAsFailures> {
        CircuitBreakerBuilder::default()
    }
}

impl<C: Send + Sync + 'static, M> CircuitBreakerLayer<C, M> {
    /// A handle on this layer's breaker: read its state and rates, or switch
    /// it to forced-open, disabled, metrics-only, or back to closed.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.shared.arc().clone())
    }
}

impl<S, C, M> Layer<S> for CircuitBreakerLayer<C, M> {
    type Service = CircuitBreaker<S, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.shared.clone())
    }
}

/// Configures a [`CircuitBreakerLayer`]. Every setting has a default (see the
/// [module docs](crate::circuit_breaker)); [`build`](Self::build) refuses
/// nonsense with a [`ConfigError`].
pub struct CircuitBreakerBuilder<C = ErrorsAsFailures> {
    settings: Settings,
    classifier: C,
}

/// Every setting but the classifier (whose type the builder carries): one
/// struct, so that changing the classifier moves one field, and the
/// defaults are written once.
#[derive(Debug, Clone)]
struct Settings {
    tuning: super::BreakerTuning,
    name: Name,
    observer: Observer,
    window: SlidingWindow,
    slow_call_duration: Duration,
    rate_trips: bool,
    permitted_in_half_open: u32,
    probe_after_refused: u32,
    open_jitter: f64,
    seed: Option<u64>,
    backpressure: bool,
    count_overload: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tuning: super::BreakerTuning {
                failure_rate_threshold: DEFAULT_FAILURE_RATE,
                slow_call_rate_threshold: 1.0,
                minimum_calls: DEFAULT_MINIMUM_CALLS,
                consecutive_failures: Some(DEFAULT_IN_A_ROW),
                open_duration: DEFAULT_OPEN,
                open_multiplier: 1.0,
                max_open_duration: Duration::from_secs(600),
            },
            name: Name::from(KIND),
            observer: Observer::none(),
            window: SlidingWindow::time(DEFAULT_WINDOW),
            slow_call_duration: Duration::MAX,
            rate_trips: true,
            permitted_in_half_open: DEFAULT_PROBES,
            probe_after_refused: 0,
            open_jitter: 0.0,
            seed: None,
            backpressure: false,
            count_overload: false,
        }
    }
}

impl Default for CircuitBreakerBuilder<ErrorsAsFailures> {
    fn default() -> Self {
        CircuitBreakerBuilder {
            settings: Settings::default(),
            classifier: ErrorsAsFailures,
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<C> CircuitBreakerBuilder<C> {
    crate::observe::name_and_observer!(
        in settings,
        "The instance name, used in events and in [`CircuitOpen`](crate::error::CircuitOpen)\nrejections. Default: `\"circuit_breaker\"`.",
        "The observer every event goes to. Default: none."
    );

    /// The sliding window. Default: the last 10 s of calls
    /// (`SlidingWindow::time(Duration::from_secs(10))`, 10 buckets).
    pub fn window(mut self, window: SlidingWindow) -> Self {
        self.settings.window = window;
        self
    }

    /// Opens when the failure rate is at or above this (`0 < t <= 1`).
    /// Default: 0.8.
    pub fn failure_rate_threshold(mut self, threshold: f64) -> Self {
        self.settings.tuning.failure_rate_threshold = threshold;
        self
    }

    /// Opens when the share of slow calls is at or above this (`0 < t <= 1`).
    /// Default: 1.0 (every call in the window slow). Below 1, it needs a
    /// [`slow_call_duration`](Self::slow_call_duration), or the build fails.
    pub fn slow_call_rate_threshold(mut self, threshold: f64) -> Self {
        self.settings.tuning.slow_call_rate_threshold = threshold;
        self
    }

    /// A call taking longer than this is slow (whatever its outcome).
    /// Default: none (`Duration::MAX`): no call is slow. A slow answer is
    /// still an answer; ending calls that take too long is a timeout's job,
    /// and a timed-out call is a failure. Setting it makes every call read
    /// the clock as it goes in and as it ends.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.settings.slow_call_duration = duration;
        self
    }

    stacks_only! {
        /// The slow-call time set, if any (a stack checks it against its
        /// attempt timeout).
        pub(crate) fn slow_call_setting(&self) -> Option<Duration> {
            Some(self.settings.slow_call_duration).filter(|d| *d != Duration::MAX)
        }
    }

    /// Rates are judged only once the window holds this many calls (at least
    /// 1; for a count window of `n` calls, `min(minimum_calls, n)` applies).
    /// Default: 20.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.settings.tuning.minimum_calls = calls;
        self
    }

    /// Also open after `n` failures in a row (at least 1), whatever the
    /// window says. Default: 50.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.settings.tuning.consecutive_failures = Some(n);
        self
    }

    /// Opens on the window's rates only, never on a run of failures in a
    /// row (the default opens after 50).
    pub fn without_consecutive_failures(mut self) -> Self {
        self.settings.tuning.consecutive_failures = None;
        self
    }

    /// Open **only** after `n` failures in a row: the window still counts (its
    /// rates stay readable through the handle) but never opens the breaker.
    /// (A dependency that answers nothing but a bare "busy" for a second
    /// opens it all the same: see [`count_overload`](Self::count_overload).)
    pub fn consecutive_failures_only(mut self, n: u32) -> Self {
        self.settings.tuning.consecutive_failures = Some(n);
        self.settings.rate_trips = false;
        self
    }

    /// Probe calls let through in half-open (`1..=65_535`); the breaker closes
    /// if their failure and slow-call rates are below the thresholds, and
    /// opens again otherwise. Default: 1.
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.settings.permitted_in_half_open = calls;
        self
    }

    /// Once its open time is over, the breaker lets a probe through only
    /// after `calls` calls were refused since it opened (half-open with
    /// every probe out, since the last probe went), or once 2 s have passed
    /// since then (an open time of 2 s or more is not lengthened; the 2 s
    /// are not jittered). [`CircuitBreakerHandle::retry_after`](super::CircuitBreakerHandle::retry_after)
    /// says the 2 s meanwhile. Default: 0 (a probe at
    /// the end of every open time); the
    /// [`ClientStack`](crate::ClientStack)'s breaker: 5.
    ///
    /// A dependency called less often than once an open time is otherwise
    /// probed by every call: at 2 requests a second, each found a breaker
    /// open 100 ms half-open again, and a dead dependency took as many calls
    /// as with no breaker (an outside trial through a chain of presets:
    /// 2.18 calls per request with their retries, 1 without seawall). At
    /// the traffic the open time was chosen at (600 requests a second, 60
    /// in 100 ms) nothing changes. The price, below about 50 calls a
    /// second: a dependency that comes back is probed up to 2 s after the
    /// breaker opened, not 100 ms.
    pub fn probe_after_refused(mut self, calls: u32) -> Self {
        self.settings.probe_after_refused = calls;
        self
    }

    /// The open time after a first trip. Default: 100 ms.
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.settings.tuning.open_duration = duration;
        self
    }

    /// Each further trip before a healthy close multiplies the open time by
    /// this (at least 1; 1 keeps it constant). Default: 1.
    pub fn open_multiplier(mut self, multiplier: f64) -> Self {
        self.settings.tuning.open_multiplier = multiplier;
        self
    }

    /// The run-time settings set so far, changed by `f` (a file's section).
    #[cfg(feature = "serde")]
    pub(crate) fn retuned(
        mut self,
        f: impl FnOnce(super::BreakerTuning) -> super::BreakerTuning,
    ) -> Self {
        self.settings.tuning = f(self.settings.tuning);
        self
    }

    /// The open time never exceeds this (at least the base open duration).
    /// Default: 600 s.
    pub fn max_open_duration(mut self, duration: Duration) -> Self {
        self.settings.tuning.max_open_duration = duration;
        self
    }

    /// Spreads each open time uniformly over `1 ± jitter` of it (`jitter` in
    /// `0..1`), the part above the maximum cut off (an open time at the cap
    /// is drawn from `(1 − jitter) × max ..= max`), so a fleet of clients
    /// does not probe in step. Default: 0 (exact open times).
    pub fn open_jitter(mut self, jitter: f64) -> Self {
        self.settings.open_jitter = jitter;
        self
    }

    /// Seeds the jitter's random generator (reproducible runs). Default: seeded
    /// from the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// Backpressure mode: while open, `poll_ready` reports `Pending` until the
    /// breaker lets probes through (and wakes the task then), instead of
    /// staying ready and failing calls fast; forced open, or half-open with
    /// every probe slot taken, until it moves. For balancers. Default: off.
    pub fn backpressure(mut self, enabled: bool) -> Self {
        self.settings.backpressure = enabled;
        self
    }

    /// Whether a remote overload ([`Outcome::Overloaded`](crate::observe::Outcome::Overloaded):
    /// a 429 or a 503, `RESOURCE_EXHAUSTED`, a server's `UNAVAILABLE`, a
    /// shedder's `Overloaded`) counts as a failure. Default: **no**, it is
    /// not counted at all.
    ///
    /// Chosen by the surge scenario: a healthy server that sheds load for
    /// 30 s answers "busy" to part of the traffic; counted as failures, those
    /// answers open the breaker, which then refuses *every* call for its open
    /// time, again and again while the surge lasts (with an open time of
    /// 60 s doubling on each trip, as Resilience4j's, a minute or more of
    /// zero goodput for a server that was serving most requests). Overload is for the layers
    /// built for it: the retry budget, the client throttle, the adaptive
    /// limit. Turn this on for a dependency whose "busy" answers really mean
    /// it is down (a proxy answering 503 for a dead backend).
    ///
    /// Off, a dependency that answers *nothing but* a bare "busy" still
    /// opens the breaker: a run of busy answers with no success between,
    /// each within a second of the last, that lasts a second and holds
    /// `minimum_calls` calls (a dependency down behind its proxy serves
    /// nothing, and its callers' retries sent it twice their calls); and
    /// a probe answered a bare "busy" is a failed probe, whatever opened
    /// the breaker (given back, its slot made every call a probe). A
    /// server that sheds part of its load serves the rest, and each
    /// success (or head that looks like one) ends the run; an answer
    /// that paces its caller ([`Classify::is_paced_answer`](crate::classify::Classify::is_paced_answer): a quota's
    /// refusal, or a wait named, as a seawall server's refusals, its own
    /// open breaker's included) ends it, and a run of failures in a row
    /// too: that server is up and answering.
    pub fn count_overload(mut self, enabled: bool) -> Self {
        self.settings.count_overload = enabled;
        self
    }

    /// How results are classified as successes, failures, or not counted
    /// ([`Outcome::Ignored`](crate::observe::Outcome::Ignored): left out of
    /// the window; a half-open probe frees its slot). Default:
    /// [`ErrorsAsFailures`] (every `Err`, including a seawall rejection from a
    /// layer below such as an attempt timeout, is a failure).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            settings: self.settings,
            classifier,
        }
    }

    fn validate(&self) -> Result<Config, ConfigError> {
        let err = |msg: String| Err(ConfigError::new(KIND, msg));
        let window = match self.settings.window {
            SlidingWindow::Count(n) => {
                if n == 0 || n > MAX_COUNT_WINDOW {
                    return err(format!(
                        "window Count must be in 1..={MAX_COUNT_WINDOW} calls, got {n}"
                    ));
                }
                WindowConfig::Count(n)
            }
            SlidingWindow::Time { span, buckets } => {
                if buckets == 0 || buckets > 1_000 {
                    return err(format!(
                        "window Time buckets must be in 1..=1000, got {buckets}"
                    ));
                }
                if span > MAX_OPEN || span / buckets < Duration::from_millis(1) {
                    return err(format!(
                        "window Time span / buckets must be at least 1ms (and span at most ~30 years), got {span:?} / {buckets}"
                    ));
                }
                WindowConfig::Time { span, buckets }
            }
        };
        self.settings.tuning.check(
            self.settings.rate_trips,
            self.settings.slow_call_duration != Duration::MAX,
        )?;
        if self.settings.slow_call_duration.is_zero() {
            return err("slow_call_duration must be above zero, got 0ns".into());
        }
        if self.settings.permitted_in_half_open == 0
            || self.settings.permitted_in_half_open > 65_535
        {
            return err(format!(
                "permitted_calls_in_half_open must be in 1..=65535, got {}",
                self.settings.permitted_in_half_open
            ));
        }
        if !(0.0..1.0).contains(&self.settings.open_jitter) {
            return err(format!(
                "open_jitter must be in 0..1, got {}",
                self.settings.open_jitter
            ));
        }
        Ok(Config {
            tuning: self.settings.tuning,
            window,
            slow_call_nanos: crate::clock::nanos(self.settings.slow_call_duration),
            rate_trips: self.settings.rate_trips,
            permitted_in_half_open: self.settings.permitted_in_half_open,
            probe_after_refused: self.settings.probe_after_refused,
            open_jitter: self.settings.open_jitter,
            seed: self.settings.seed,
            backpressure: self.settings.backpressure,
            count_overload: self.settings.count_overload,
        })
    }

    /// Validates the settings and builds the layer, with its breaker in the
    /// closed state (reported once to the observer as a `StateChanged` event
    /// from `Closed` to `Closed`, so a state gauge starts at one state).
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError>
    where
        C: Send + Sync + 'static,
    {
        let config = self.validate()?;
        self.settings.observer.layer_built(
            crate::observe::LayerKind::CircuitBreaker,
            self.settings.name.as_str(),
            &[
                crate::observe::refusal(
                    crate::error::RejectionKind::CircuitOpen,
                    super::state::DETAIL_OPEN,
                ),
                crate::observe::refusal(
                    crate::error::RejectionKind::CircuitOpen,
                    super::state::DETAIL_HALF_OPEN_FULL,
                ),
                crate::observe::refusal(
                    crate::error::RejectionKind::CircuitOpen,
                    super::state::DETAIL_FORCED_OPEN,
                ),
            ],
        );
        let core = Core::new(self.settings.name, self.settings.observer, config);
        Ok(CircuitBreakerLayer {
            shared: Striped::new(Shared {
                core,
                classifier: self.classifier,
            }),
            hold: PhantomData,
        })
    }
}
