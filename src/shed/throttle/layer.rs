//! The client-side throttle's layer and builder.
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::service::Throttle;
use super::window::ThrottleWindow;
use crate::classify::ErrorsAsFailures;
use crate::error::{ConfigError, Name};
#[cfg(feature = "http")]
use crate::hold::BodyEnd;
use crate::hold::Head;
use crate::observe::Observer;

/// The shared state of a [`ThrottleLayer`].
pub(crate) struct ThrottleShared {
    window: ThrottleWindow,
    pub(crate) name: Name,
    pub(crate) observer: Observer,
}

impl ThrottleShared {
    /// The window (lock-free).
    #[inline]
    pub(crate) fn window(&self) -> &ThrottleWindow {
        &self.window
    }
}

impl fmt::Debug for ThrottleShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleShared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Client-side adaptive throttling; see the [module docs](crate::shed#client-side-adaptive-throttling).
///
/// Every service built from one layer (and every clone of them) shares one
/// window: build one layer per backend you call.
///
/// A call is judged when its response arrives; with
/// [`until_body_end`](Self::until_body_end), a response whose head looks
/// like a success is judged again when its body ends (see
/// [`hold`](crate::hold)).
pub struct ThrottleLayer<C = ErrorsAsFailures, M = Head> {
    pub(crate) shared: Arc<ThrottleShared>,
    pub(crate) classifier: Arc<C>,
    hold: PhantomData<fn() -> M>,
}

impl<C, M> Clone for ThrottleLayer<C, M> {
    fn clone(&self) -> Self {
        ThrottleLayer {
            shared: Arc::clone(&self.shared),
            classifier: Arc::clone(&self.classifier),
            hold: PhantomData,
        }
    }
}

impl<C, M> fmt::Debug for ThrottleLayer<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl ThrottleLayer {
    /// A builder with the defaults: a 2-minute window in 120 buckets, K = 2,
    /// rejection probability capped at 0.9, every `Ok` an accept.
    pub fn builder() -> ThrottleLayerBuilder {
        ThrottleLayerBuilder::default()
    }
}

impl<C, M> ThrottleLayer<C, M> {
    /// This throttle, counting the accept of a response whose head looks
    /// like a success only when its body ends well (responses of type
    /// `http::Response<CallBody<B>>`; see [`hold`](crate::hold)).
    #[cfg(feature = "http")]
    pub fn until_body_end(self) -> ThrottleLayer<C, BodyEnd> {
        ThrottleLayer {
            shared: self.shared,
            classifier: self.classifier,
            hold: PhantomData,
        }
    }

    /// The probability with which the next request would be throttled.
    pub fn rejection_probability(&self) -> f64 {
        self.shared.window().probability_at(crate::clock::now())
    }

    /// `(requests, accepts)` counted in the current window.
    pub fn totals(&self) -> (u64, u64) {
        let w = self.shared.window();
        w.probability_at(crate::clock::now());
        w.totals()
    }
}

impl<S, C, M> Layer<S> for ThrottleLayer<C, M> {
    type Service = Throttle<S, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle::new(
            inner,
            Arc::clone(&self.shared),
            Arc::clone(&self.classifier),
        )
    }
}

/// Builder for [`ThrottleLayer`]; see [`ThrottleLayer::builder`] for the
/// defaults.
pub struct ThrottleLayerBuilder<C = ErrorsAsFailures> {
    settings: ThrottleLayerBuilderSettings,
    classifier: C,
}

/// The settings of a [`ThrottleLayerBuilder`] that its type parameters do not
/// touch: one field to move when a method changes a parameter.
#[derive(Debug, Clone)]
struct ThrottleLayerBuilderSettings {
    window: Duration,
    buckets: usize,
    k: f64,
    max_probability: f64,
    seed: Option<u64>,
    name: Name,
    observer: Observer,
}

impl Default for ThrottleLayerBuilder {
    fn default() -> Self {
        ThrottleLayerBuilder {
            settings: ThrottleLayerBuilderSettings {
                window: Duration::from_secs(120),
                buckets: 120,
                k: 2.0,
                max_probability: 0.9,
                seed: None,
                name: Name::from("throttle"),
                observer: Observer::default(),
            },
            classifier: ErrorsAsFailures,
        }
    }
}

impl<C> fmt::Debug for ThrottleLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayerBuilder")
            .field("window", &self.settings.window)
            .field("buckets", &self.settings.buckets)
            .field("k", &self.settings.k)
            .field("max_rejection_probability", &self.settings.max_probability)
            .field("seed", &self.settings.seed)
            .field("name", &self.settings.name)
            .finish_non_exhaustive()
    }
}

impl<C> ThrottleLayerBuilder<C> {
    /// The sliding window requests and accepts are counted over (default
    /// 2 minutes).
    pub fn window(mut self, window: Duration) -> Self {
        self.settings.window = window;
        self
    }

    /// Time buckets in the window (default 120; 1..=3600). The window slides
    /// one bucket at a time.
    pub fn buckets(mut self, buckets: usize) -> Self {
        self.settings.buckets = buckets;
        self
    }

    /// The multiplier K (default 2; at least 1): the client keeps sending
    /// while `requests < K × accepts`. Lower is more aggressive.
    pub fn k(mut self, k: f64) -> Self {
        self.settings.k = k;
        self
    }

    /// The cap on the rejection probability (default 0.9, in `0..1`; Envoy's
    /// admission control uses 0.8). Below 1 so that some requests always
    /// reach the backend and the throttle sees it recover.
    pub fn max_rejection_probability(mut self, p: f64) -> Self {
        self.settings.max_probability = p;
        self
    }

    /// Seeds the random draws, for deterministic tests (default: seeded from
    /// the OS).
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// What counts as an accept (default [`ErrorsAsFailures`]: every `Ok`).
    /// Any [`Classify`](crate::classify::Classify); a call classified
    /// `Success` is an accept, one classified `Failure` a request without an
    /// accept, and one classified `Ignored` is not counted at all (its request
    /// is taken back out of the window). A call dropped before its head came
    /// back is a request without an accept; under `until_body_end`, a body
    /// dropped after a successful head is an accept.
    ///
    /// The backend's own overload rejections (`Overloaded`, HTTP 429, gRPC
    /// `RESOURCE_EXHAUSTED`) are what the throttle exists to react to: classify
    /// them `Failure` here, even where a circuit breaker's classifier ignores
    /// them.
    pub fn classifier<C2>(self, classifier: C2) -> ThrottleLayerBuilder<C2> {
        ThrottleLayerBuilder {
            settings: self.settings,
            classifier,
        }
    }

    crate::observe::name_and_observer!(
        in settings,
        "The instance name (default `\"throttle\"`).",
        "Where events go (default: nowhere)."
    );

    /// Validates and builds the layer.
    pub fn build(self) -> Result<ThrottleLayer<C>, ConfigError> {
        if self.settings.window.is_zero() {
            return Err(ConfigError::new(
                "throttle",
                "window must be above zero, got 0s",
            ));
        }
        if !(1..=3600).contains(&self.settings.buckets) {
            return Err(ConfigError::new(
                "throttle",
                format!("buckets must be in 1..=3600, got {}", self.settings.buckets),
            ));
        }
        if !(self.settings.k >= 1.0 && self.settings.k.is_finite()) {
            return Err(ConfigError::new(
                "throttle",
                format!("k must be a finite number >= 1, got {}", self.settings.k),
            ));
        }
        if !(0.0..1.0).contains(&self.settings.max_probability) {
            return Err(ConfigError::new(
                "throttle",
                format!(
                    "max_rejection_probability must be in 0..1, got {}",
                    self.settings.max_probability
                ),
            ));
        }
        let window = ThrottleWindow::new(
            self.settings.window,
            self.settings.buckets,
            self.settings.k,
            self.settings.max_probability,
            self.settings.seed,
        );
        self.settings.observer.layer_built(
            crate::observe::LayerKind::Throttle,
            self.settings.name.as_str(),
            &[crate::observe::refusal(
                crate::error::RejectionKind::Overloaded,
                super::service::DETAIL_THROTTLED,
            )],
        );
        Ok(ThrottleLayer {
            shared: Arc::new(ThrottleShared {
                window,
                name: self.settings.name,
                observer: self.settings.observer,
            }),
            classifier: Arc::new(self.classifier),
            hold: PhantomData,
        })
    }
}
