use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::estimator::LatencyEstimator;
use super::service::Hedge;
use crate::error::{ConfigError, Name};
use crate::observe::Observer;
use crate::retry::{RetryBudget, RetryErrors};

/// The most attempts one request may have in flight: gRPC's limit.
pub const MAX_ATTEMPTS_LIMIT: u32 = 5;

/// The default number of attempts in flight per request: the request and
/// one hedge.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;

/// The default latency quantile a hedge waits for: p95.
///
/// Chosen by the heavy-tail scenario (`tests/hedge`, and the storm's
/// `tail` scenario): when 5 % of calls take 20 times the median, waiting
/// for p95 hedges the slow 5 % and little else (4.4 % more calls), and the
/// caller's p99 falls from 200 ms to 21–25 ms.
pub const DEFAULT_QUANTILE: f64 = 0.95;

/// The default number of samples a window needs before its quantile is
/// trusted: 20.
pub const DEFAULT_MIN_SAMPLES: u32 = 20;

/// The default estimator window: 1 s (a window closes when it is at least
/// this long and holds [`DEFAULT_MIN_SAMPLES`]).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);

/// The default hedge budget: hedges may be at most 10 % of the requests, plus
/// 1 per second, over a sliding **1 s** ([`DEFAULT_BUDGET_WINDOW`]).
///
/// Chosen by the storm's heavy-tail scenario (`cargo run --release
/// --example storm`, asserted in `tests/storm`): with a 5 % tail, hedging
/// at p95 sends 4.4 % more calls, well inside 10 %. When the dependency
/// then browns out (every call slow, 90 % of its workers busy), every
/// request outlasts the old p95 until the estimate catches up, and the
/// budget is what holds the extra load: 1.8 % more calls and a p99 of
/// 59 ms (45 ms without hedging), where tower's unbudgeted `Hedge` sent
/// 20 % more and its p99 went to 464 ms.
pub const DEFAULT_BUDGET_RATIO: f64 = 0.1;

/// The window of the default hedge budget: 1 s.
///
/// Chosen by the same brownout: over a 10 s window, the allowance the
/// healthy phase left unused (10 % of 2000 requests, less the 4.4 % spent)
/// was spent in one burst when the brownout began, and the queue it built
/// at 90 % load took seconds to drain (p99 307 ms); over 1 s the burst is
/// a tenth of that (p99 59 ms).
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(1);

/// When a hedge is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Delay {
    Fixed(Duration),
    Quantile {
        quantile: f64,
        min_samples: u32,
        window: Duration,
    },
}

pub(crate) struct Shared<P> {
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    pub(crate) policy: P,
    pub(crate) max_attempts: u32,
    pub(crate) fixed: Option<Duration>,
    pub(crate) estimator: Option<LatencyEstimator>,
    pub(crate) budget: RetryBudget,
    /// Whether this layer counts requests into its budget (not when the
    /// budget is a retry layer's, which counts them already).
    pub(crate) deposits: bool,
}

impl<P> Shared<P> {
    /// The delay after which an attempt still running gets a hedge, if one
    /// is known.
    #[inline]
    pub(crate) fn delay(&self) -> Option<Duration> {
        match &self.estimator {
            Some(e) => e.estimate(),
            None => self.fixed,
        }
    }
}

/// Applies [`Hedge`] to a service: after a delay, a copy of a request that
/// has not answered; the first answer wins. See the [module docs](super).
///
/// Every service built from one `HedgeLayer` (and their clones) shares one
/// latency estimator and one hedge budget.
pub struct HedgeLayer<P = RetryErrors> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for HedgeLayer<P> {
    fn clone(&self) -> Self {
        HedgeLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<P> fmt::Debug for HedgeLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("name", &self.shared.name)
            .field("max_attempts", &self.shared.max_attempts)
            .field("delay", &self.shared.delay())
            .finish_non_exhaustive()
    }
}

impl HedgeLayer<RetryErrors> {
    /// A builder starting from the defaults: 2 attempts in flight, a hedge
    /// after the p95 of recent latencies (none before 20 samples), a budget
    /// of 10 % of requests + 1/s over a sliding second.
    pub fn builder() -> HedgeLayerBuilder<RetryErrors> {
        HedgeLayerBuilder {
            settings: HedgeLayerBuilderSettings {
                name: Name::from("hedge"),
                observer: Observer::none(),
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                delay: Delay::Quantile {
                    quantile: DEFAULT_QUANTILE,
                    min_samples: DEFAULT_MIN_SAMPLES,
                    window: DEFAULT_WINDOW,
                },
                budget: None,
                budget_ratio: DEFAULT_BUDGET_RATIO,
            },
            policy: RetryErrors,
        }
    }
}

impl<P> HedgeLayer<P> {
    /// The budget hedges draw from.
    pub fn budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// The delay after which a request gets a hedge now: the fixed delay, or
    /// the current latency estimate (`None` until the estimator has enough
    /// samples: no hedge).
    pub fn current_delay(&self) -> Option<Duration> {
        self.shared.delay()
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        self.shared.name.as_str()
    }
}

impl<S, P> Layer<S> for HedgeLayer<P> {
    type Service = Hedge<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::new(inner, self.shared.clone())
    }
}

/// Builds a [`HedgeLayer`]; see [`HedgeLayer::builder`].
pub struct HedgeLayerBuilder<P = RetryErrors> {
    settings: HedgeLayerBuilderSettings,
    policy: P,
}

/// The settings of a [`HedgeLayerBuilder`] that its type parameters do not
/// touch: one field to move when a method changes a parameter.
#[derive(Debug, Clone)]
struct HedgeLayerBuilderSettings {
    name: Name,
    observer: Observer,
    max_attempts: u32,
    delay: Delay,
    budget: Option<RetryBudget>,
    budget_ratio: f64,
}

impl<P> fmt::Debug for HedgeLayerBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayerBuilder")
            .field("name", &self.settings.name)
            .field("max_attempts", &self.settings.max_attempts)
            .field("delay", &self.settings.delay)
            .field("budget_ratio", &self.settings.budget_ratio)
            .finish_non_exhaustive()
    }
}

impl<P> HedgeLayerBuilder<P> {
    crate::observe::name_and_observer!(
        in settings,
        "The instance name in events and metrics (default `\"hedge\"`).",
        "The observer this layer reports to (default: none)."
    );

    /// What may be hedged and what counts as an answer: a
    /// [`RetryPolicy`](crate::retry::RetryPolicy) (its `may_hedge`,
    /// `clone_request`, `on_attempt` and `classify`). The HTTP retry policy
    /// hedges idempotent methods only (a request an `Idempotency-Key` makes
    /// safe is retried after a failure, not hedged: a server keeping the key
    /// refuses a copy while the original runs); the gRPC one, the methods
    /// opted in.
    pub fn policy<Q>(self, policy: Q) -> HedgeLayerBuilder<Q> {
        HedgeLayerBuilder {
            settings: self.settings,
            policy,
        }
    }

    /// Attempts in flight per request at most, the request included
    /// (default 2; 2 to 5).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n;
        self
    }

    stacks_only! {
        /// The fixed delay set with [`delay`](Self::delay), if any.
        pub(crate) fn fixed_delay_setting(&self) -> Option<Duration> {
            match self.settings.delay {
                Delay::Fixed(d) => Some(d),
                Delay::Quantile { .. } => None,
            }
        }
    }

    /// Hedge after a fixed delay (as gRPC's `hedgingDelay` and Polly do),
    /// instead of a latency quantile.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.settings.delay = Delay::Fixed(delay);
        self
    }

    /// Hedge after the `quantile` (in `(0, 1)`, default 0.95) of recent
    /// latencies, read from windows of at least `min_samples` samples
    /// (default 20) and at least `window` long (default 1 s).
    pub fn quantile(mut self, quantile: f64, min_samples: u32, window: Duration) -> Self {
        self.settings.delay = Delay::Quantile {
            quantile,
            min_samples,
            window,
        };
        self
    }

    /// Hedges may be at most `ratio` of the requests (in `0..=1`, default
    /// 0.1), plus 1 per second, over a sliding 1 s. Ignored when a shared
    /// [`budget`](Self::budget) is given.
    pub fn budget_ratio(mut self, ratio: f64) -> Self {
        self.settings.budget_ratio = ratio;
        self
    }

    /// Draw hedges from this budget, shared with a retry layer
    /// (`retry_layer.budget().clone()`): retries and hedges then spend one
    /// allowance, and this layer does not count requests into it (the retry
    /// layer does, as each request's first attempt ends: a hedge sent while
    /// the first attempts of the requests in flight run is measured against
    /// the requests that have ended in the window).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.settings.budget = Some(budget);
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"hedge"`) when `max_attempts` is outside
    /// `2..=5`, the fixed delay is zero, the quantile is not in `(0, 1)`, the
    /// window is zero, or the budget ratio is not in `0..=1`; for the gRPC
    /// policy ([`GrpcRetry`](crate::retry::grpc::GrpcRetry)), when no method
    /// is opted in to hedging (no copy would be sent).
    pub fn build(self) -> Result<HedgeLayer<P>, ConfigError>
    where
        P: 'static,
    {
        let err = |m: String| ConfigError::new("hedge", m);
        #[cfg(feature = "tonic")]
        if (&self.policy as &dyn std::any::Any)
            .downcast_ref::<crate::retry::grpc::GrpcRetry>()
            .is_some_and(|grpc| !grpc.hedges_any())
        {
            // A new user's hedge that hedged nothing: the tail's p99 stayed
            // 203 ms, and nothing said why.
            return Err(err(
                "the gRPC policy hedges no method; opt the idempotent ones in with .retry(|r| r.policy(GrpcRetry::new().hedge_method(\"/pkg.Service/Method\")))".into(),
            ));
        }
        if !(2..=MAX_ATTEMPTS_LIMIT).contains(&self.settings.max_attempts) {
            return Err(err(format!(
                "max_attempts must be in 2..={MAX_ATTEMPTS_LIMIT}, got {}",
                self.settings.max_attempts
            )));
        }
        let (fixed, estimator) = match self.settings.delay {
            Delay::Fixed(d) if d.is_zero() => {
                return Err(err("the hedge delay must be above zero".into()));
            }
            Delay::Fixed(d) => (Some(d), None),
            Delay::Quantile {
                quantile,
                min_samples,
                window,
            } => {
                if !(quantile > 0.0 && quantile < 1.0) {
                    return Err(err(format!("quantile must be in (0, 1), got {quantile}")));
                }
                if window.is_zero() {
                    return Err(err("the estimator window must be above zero".into()));
                }
                let now = crate::clock::edge_now();
                (
                    None,
                    Some(LatencyEstimator::new(quantile, min_samples, window, now)),
                )
            }
        };
        let (budget, deposits) = match self.settings.budget {
            Some(b) => (b, false),
            None => (
                RetryBudget::new(self.settings.budget_ratio, 1, DEFAULT_BUDGET_WINDOW)
                    .map_err(|e| err(e.to_string()))?,
                true,
            ),
        };
        self.settings.observer.layer_built(
            crate::observe::LayerKind::Hedge,
            self.settings.name.as_str(),
            &[],
        );
        Ok(HedgeLayer {
            shared: Arc::new(Shared {
                name: self.settings.name,
                observer: self.settings.observer,
                policy: self.policy,
                max_attempts: self.settings.max_attempts,
                fixed,
                estimator,
                budget,
                deposits,
            }),
        })
    }
}
