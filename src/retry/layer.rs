use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tower_layer::Layer;

use super::backoff::{Backoff, Jitter};
use super::budget::RetryBudget;
use super::policy::RetryErrors;
use super::service::Retry;
use crate::error::{ConfigError, Name};
use crate::observe::Observer;

/// Applies [`Retry`] to a service: jittered backoff, a shared retry budget,
/// deadline awareness and server hints. See the [module docs](super).
///
/// Every service built from one `RetryLayer` (and every clone of those
/// services) shares **one** [`RetryBudget`] and one random sequence: build the
/// layer once per dependency and apply it everywhere that dependency is called.
#[derive(Clone)]
pub struct RetryLayer<P = RetryErrors> {
    shared: Arc<Shared<P>>,
}

pub(crate) struct Shared<P> {
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    pub(crate) policy: P,
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: u32,
    pub(crate) budget: RetryBudget,
    pub(crate) min_remaining: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) honor_inbound: bool,
    seed: u64,
    seq: AtomicU64,
}

impl<P> Shared<P> {
    /// The random source of one request's backoff session: derived from the
    /// layer's seed and the request's rank among requests that backed off, so
    /// a seeded layer replays the same delays for the same order of retries.
    pub(crate) fn session_rng(&self) -> SessionRng {
        let k = self.seq.fetch_add(1, Ordering::Relaxed);
        use crate::clock::splitmix64;
        SessionRng::new(splitmix64(self.seed ^ splitmix64(k)))
    }
}

/// The random source of one backoff session: splitmix64, 8 bytes in the
/// response future (a session draws a handful of numbers), with `None`
/// (not drawn yet) in the same 8 bytes: its state is never zero (a state
/// that would be is [`GOLDEN`](crate::clock::GOLDEN) instead).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionRng(std::num::NonZeroU64);

impl SessionRng {
    fn new(state: u64) -> Self {
        SessionRng(std::num::NonZeroU64::new(state).unwrap_or(GOLDEN_NZ))
    }
}

const GOLDEN_NZ: std::num::NonZeroU64 = match std::num::NonZeroU64::new(crate::clock::GOLDEN) {
    Some(g) => g,
    None => unreachable!(),
};

impl rand::RngCore for SessionRng {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        let state = self.0.get().wrapping_add(crate::clock::GOLDEN);
        *self = SessionRng::new(state);
        crate::clock::splitmix64(state)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

impl RetryLayer<RetryErrors> {
    /// A layer with every default (see [`RetryLayerBuilder`]).
    pub fn new() -> Self {
        // The defaults are valid by construction.
        match Self::builder().build() {
            Ok(layer) => layer,
            Err(e) => unreachable!("default retry configuration is valid: {e}"),
        }
    }

    /// A builder starting from the defaults.
    pub fn builder() -> RetryLayerBuilder<RetryErrors> {
        RetryLayerBuilder::new()
    }
}

impl Default for RetryLayer<RetryErrors> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> RetryLayer<P> {
    /// The policy deciding what is retried.
    pub fn policy(&self) -> &P {
        &self.shared.policy
    }

    /// The budget shared by every service built from this layer.
    pub fn budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// The layer instance's name.
    pub fn name(&self) -> &str {
        self.shared.name.as_str()
    }

    /// Reports a change of this layer's settings made at run time (its
    /// budget's shares, by a stack's reload).
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn reconfigured(&self) {
        self.shared.observer.emit(
            crate::observe::LayerKind::Retry,
            self.shared.name.as_str(),
            crate::observe::EventKind::Reconfigured,
        );
    }

    /// The most attempts made per request, the first one included.
    pub fn max_attempts(&self) -> u32 {
        self.shared.max_attempts
    }

    /// The backoff.
    pub fn backoff(&self) -> Backoff {
        self.shared.backoff
    }

    /// The smallest remaining deadline budget a retry is started (or its
    /// backoff scheduled) with.
    pub fn min_remaining(&self) -> Duration {
        self.shared.min_remaining
    }
}

impl<S, P> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_shared(inner, self.shared.clone())
    }
}

impl<P> fmt::Debug for RetryLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<P> fmt::Debug for Shared<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("budget", &self.budget)
            .field("min_remaining", &self.min_remaining)
            .field("max_retry_after", &self.max_retry_after)
            .field("honor_inbound_retries", &self.honor_inbound)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RetryLayer`]; every setting has the default stated on its method.
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayerBuilder<P = RetryErrors> {
    settings: RetryLayerBuilderSettings,
    policy: P,
}

/// The settings of a [`RetryLayerBuilder`] that its type parameters do not
/// touch: one field to move when a method changes a parameter.
#[derive(Debug, Clone)]
struct RetryLayerBuilderSettings {
    name: Name,
    observer: Observer,
    max_attempts: u32,
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    seed: Option<u64>,
    ratio: f64,
    success_ratio: f64,
    min_per_sec: u32,
    window: Duration,
    min_remaining: Duration,
    /// `min_remaining` was set (a stack that propagates its deadline
    /// raises its own otherwise).
    min_remaining_set: bool,
    max_retry_after: Duration,
    honor_inbound: bool,
}

impl RetryLayerBuilder<RetryErrors> {
    fn new() -> Self {
        let backoff = Backoff::default();
        RetryLayerBuilder {
            settings: RetryLayerBuilderSettings {
                name: Name::from("retry"),
                observer: Observer::default(),
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                base: backoff.base(),
                cap: backoff.cap(),
                jitter: backoff.jitter(),
                seed: None,
                ratio: RetryBudget::DEFAULT_RATIO,
                success_ratio: RetryBudget::DEFAULT_SUCCESS_RATIO,
                min_per_sec: RetryBudget::DEFAULT_MIN_PER_SEC,
                window: RetryBudget::DEFAULT_WINDOW,
                min_remaining: DEFAULT_MIN_REMAINING,
                min_remaining_set: false,
                max_retry_after: DEFAULT_MAX_RETRY_AFTER,
                honor_inbound: true,
            },
            policy: RetryErrors,
        }
    }
}

/// The default smallest remaining deadline budget worth starting a retry with: 10 ms.
pub const DEFAULT_MIN_REMAINING: Duration = Duration::from_millis(10);
/// The default longest server-requested wait the layer will honour: 10 s.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// The largest `max_attempts` accepted.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// The rule on `max_attempts` (`1..=`[`MAX_ATTEMPTS_LIMIT`]), as a build
/// checks it (and a stack's reload, for the build that will take it).
pub(crate) fn check_max_attempts(n: u32) -> Result<(), ConfigError> {
    if n == 0 || n > MAX_ATTEMPTS_LIMIT {
        return Err(ConfigError::new(
            "retry",
            format!("max_attempts must be in 1..=100, got {n}"),
        ));
    }
    Ok(())
}
/// Default [`RetryLayerBuilder::max_attempts`]: 3 (the first and two
/// retries; gRPC's and Polly's).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl<P> RetryLayerBuilder<P> {
    /// The policy set so far.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn current_policy(&self) -> &P {
        &self.policy
    }

    crate::observe::name_and_observer!(
        in settings,
        "The instance name used in events (default `\"retry\"`).",
        "Where events go (default: nowhere)."
    );

    /// The policy deciding what is retried (default [`RetryErrors`]; see also
    /// the HTTP and gRPC policies).
    pub fn policy<Q>(self, policy: Q) -> RetryLayerBuilder<Q> {
        RetryLayerBuilder {
            settings: self.settings,
            policy,
        }
    }

    /// Attempts per request in total, the first call included (default 3;
    /// `1..=100`). 1 disables retries.
    ///
    /// 3 is chosen by the storm's partial failure (30 % of calls failing
    /// fast): three attempts leave 0.3³ = 2.7 % of requests failing, and
    /// 97 % succeed (`tests/storm`); each attempt more would save under
    /// 1 % there, and is one more call a dead dependency receives for every
    /// request the budget lets through.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n;
        self
    }

    /// The attempts set so far (the stacks' default attempt timeout
    /// depends on whether a retry can follow).
    #[cfg_attr(
        not(all(feature = "deadline", feature = "circuit-breaker", feature = "shed")),
        allow(dead_code)
    )]
    pub(crate) fn max_attempts_setting(&self) -> u32 {
        self.settings.max_attempts
    }

    /// The backoff's base and cap set so far.
    #[cfg(feature = "serde")]
    pub(crate) fn backoff_bounds(&self) -> (Duration, Duration) {
        (self.settings.base, self.settings.cap)
    }

    /// Exponential backoff from `base`, doubling up to `cap` (default 50 ms
    /// to 2 s).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.settings.base = base;
        self.settings.cap = cap;
        self
    }

    /// The jitter (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// Seeds the backoff's random source so the delays are reproducible
    /// (default: seeded once from the operating system).
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// The fraction of requests that may be retried, in `0.0..=1.0`
    /// (default 0.05: 5 %; see [`RetryBudget::DEFAULT_RATIO`]).
    pub fn budget_ratio(mut self, ratio: f64) -> Self {
        self.settings.ratio = ratio;
        self
    }

    /// The fraction of *succeeded* requests added to the budget, in
    /// `0.0..=1.0` (default 0.5; 0 gives Finagle's plain budget). See
    /// [`RetryBudget::adaptive`] and [`RetryBudget::DEFAULT_SUCCESS_RATIO`]
    /// for the scenarios that chose the default. A retry of a "busy" answer
    /// (the policy's outcome `Overloaded`, or a wait asked for) does not
    /// draw on it: only on the fraction of requests and the floor.
    pub fn budget_success_ratio(mut self, ratio: f64) -> Self {
        self.settings.success_ratio = ratio;
        self
    }

    /// Retries per second always allowed whatever the traffic (default 10);
    /// the floor is this times the budget window.
    pub fn min_retries_per_sec(mut self, n: u32) -> Self {
        self.settings.min_per_sec = n;
        self
    }

    /// The budget's sliding window (default 10 s; 10 ms..=1 h).
    pub fn budget_window(mut self, window: Duration) -> Self {
        self.settings.window = window;
        self
    }

    /// A retry is not started when less than this is left of the request's
    /// deadline, nor scheduled when its backoff would leave less (default
    /// 10 ms; 20 ms in the protocol presets and in a client stack that
    /// propagates its deadline, which leaves a seawall server 10 ms after
    /// its own margin per hop).
    pub fn min_remaining(mut self, min: Duration) -> Self {
        self.settings.min_remaining = min;
        self.settings.min_remaining_set = true;
        self
    }

    /// A stack's own default `min_remaining`: taken unless
    /// [`min_remaining`](Self::min_remaining) was set.
    #[cfg(feature = "http")]
    pub(crate) fn default_min_remaining(mut self, min: Duration) -> Self {
        if !self.settings.min_remaining_set {
            self.settings.min_remaining = min;
        }
        self
    }

    /// The longest server-requested wait (`retry_after`, `Retry-After`,
    /// pushback) honoured; a longer request means no retry (default 10 s;
    /// at most one day).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.settings.max_retry_after = max;
        self
    }

    /// Whether a request handled on behalf of an inbound retry (see
    /// [`inbound_attempt`](super::inbound_attempt)) is sent only once, so
    /// retries happen at one layer only (default `true`).
    pub fn honor_inbound_retries(mut self, honor: bool) -> Self {
        self.settings.honor_inbound = honor;
        self
    }

    /// Validates the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting when `max_attempts` is outside
    /// `1..=100`, the backoff is invalid (see [`Backoff::new`]), the budget is
    /// invalid (see [`RetryBudget::new`]), or `max_retry_after` is above one day;
    /// for a [`GrpcRetry`](super::grpc::GrpcRetry) given a name that is not
    /// a method's path or a service's (see its `hedge_method`).
    pub fn build(self) -> Result<RetryLayer<P>, ConfigError>
    where
        P: 'static,
    {
        check_max_attempts(self.settings.max_attempts)?;
        #[cfg(feature = "tonic")]
        if let Some(grpc) =
            (&self.policy as &dyn std::any::Any).downcast_ref::<super::grpc::GrpcRetry>()
        {
            grpc.check()?;
        }
        if self.settings.max_retry_after > Backoff::MAX_CAP {
            return Err(ConfigError::new(
                "retry",
                format!(
                    "max_retry_after must be at most one day, got {:?}",
                    self.settings.max_retry_after
                ),
            ));
        }
        let backoff =
            Backoff::new(self.settings.base, self.settings.cap)?.with_jitter(self.settings.jitter);
        let budget = RetryBudget::adaptive(
            self.settings.ratio,
            self.settings.success_ratio,
            self.settings.min_per_sec,
            self.settings.window,
        )?;
        let seed = match self.settings.seed {
            Some(s) => s,
            None => SmallRng::from_os_rng().next_u64(),
        };
        self.settings.observer.layer_built(
            crate::observe::LayerKind::Retry,
            self.settings.name.as_str(),
            &[crate::observe::refusal(
                crate::error::RejectionKind::DeadlineExceeded,
                super::future::DEADLINE_SPENT,
            )],
        );
        if self.settings.observer.is_enabled() {
            budget.watch(self.settings.observer.clone(), self.settings.name.clone());
        }
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                name: self.settings.name,
                observer: self.settings.observer,
                policy: self.policy,
                backoff,
                max_attempts: self.settings.max_attempts,
                budget,
                min_remaining: self.settings.min_remaining,
                max_retry_after: self.settings.max_retry_after,
                honor_inbound: self.settings.honor_inbound,
                seed,
                seq: AtomicU64::new(0),
            }),
        })
    }
}
