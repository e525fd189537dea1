use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::policy::FallbackOn;
use super::service::Fallback;
use crate::classify::ErrorsAsFailures;
use crate::error::{ConfigError, Name};
use crate::observe::Observer;

/// The default bound on a fallback's own answer: 1 s (or the request's
/// deadline, if sooner).
///
/// Chosen so that a fallback never becomes the new slow dependency: a
/// cache or a degraded read answers in milliseconds, and a fallback still
/// waiting after a second is itself failing. A request with a deadline gets
/// no more than its deadline (`tests/fallback`: a slow fallback is cut
/// there and the original outcome returned).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Shared<F, C> {
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    pub(crate) policy: F,
    pub(crate) classifier: C,
    pub(crate) on: FallbackOn,
    pub(crate) timeout: Duration,
}

/// Applies [`Fallback`] to a service: a failed or refused call is answered
/// by a fallback. See the [module docs](super).
pub struct FallbackLayer<F, C = ErrorsAsFailures> {
    shared: Arc<Shared<F, C>>,
}

impl<F, C> Clone for FallbackLayer<F, C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<F, C> fmt::Debug for FallbackLayer<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.shared.name)
            .field("on", &self.shared.on)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl<F> FallbackLayer<F, ErrorsAsFailures> {
    /// A builder around `policy` (a [`FallbackPolicy`](super::FallbackPolicy):
    /// [`fallback_fn`](super::fallback_fn), [`fallback_with`](super::fallback_with),
    /// [`fallback_to`](super::fallback_to) or your own), answering for every
    /// reason, judging responses with [`ErrorsAsFailures`] (errors only;
    /// give an HTTP or gRPC classifier with
    /// [`classifier`](FallbackLayerBuilder::classifier) to answer for a 503
    /// or an `UNAVAILABLE` status too).
    pub fn builder(policy: F) -> FallbackLayerBuilder<F, ErrorsAsFailures> {
        FallbackLayerBuilder {
            settings: FallbackLayerBuilderSettings {
                name: Name::from("fallback"),
                observer: Observer::none(),
                on: FallbackOn::ALL,
                timeout: DEFAULT_TIMEOUT,
            },
            policy,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<S, F, C> Layer<S> for FallbackLayer<F, C> {
    type Service = Fallback<S, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.shared.clone())
    }
}

/// Builds a [`FallbackLayer`]; see [`FallbackLayer::builder`].
pub struct FallbackLayerBuilder<F, C = ErrorsAsFailures> {
    settings: FallbackLayerBuilderSettings,
    policy: F,
    classifier: C,
}

/// The settings of a [`FallbackLayerBuilder`] that its type parameters do not
/// touch: one field to move when a method changes a parameter.
#[derive(Debug, Clone)]
struct FallbackLayerBuilderSettings {
    name: Name,
    observer: Observer,
    on: FallbackOn,
    timeout: Duration,
}

impl<F, C> fmt::Debug for FallbackLayerBuilder<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayerBuilder")
            .field("name", &self.settings.name)
            .field("on", &self.settings.on)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, C> FallbackLayerBuilder<F, C> {
    crate::observe::name_and_observer!(
        in settings,
        "The instance name in events and metrics (default `\"fallback\"`).",
        "The observer this layer reports to (default: none)."
    );

    /// The reasons the fallback answers for (default
    /// [`FallbackOn::ALL`]): `FallbackOn::REFUSED | FallbackOn::OVERLOADED`
    /// serves a degraded answer when this process or the dependency sheds
    /// load, and lets real failures through.
    pub fn on(mut self, on: FallbackOn) -> Self {
        self.settings.on = on;
        self
    }

    /// How responses are judged (default: errors only, every response is a
    /// success). With [`HttpStatusClassifier`](crate::http::HttpStatusClassifier)
    /// a 5xx (but 501 and 503) is a failure and a 429 or a 503 an
    /// overload; with the gRPC classifier, an
    /// `UNAVAILABLE` status is an overload when a server answered it and a
    /// failure when none did (a connection refused). Use
    /// the classifier of the stack the fallback goes around. Errors are
    /// judged by the outcome model whatever the classifier: a local
    /// refusal is always [`Refused`](crate::observe::FallbackReason::Refused).
    pub fn classifier<C2>(self, classifier: C2) -> FallbackLayerBuilder<F, C2> {
        FallbackLayerBuilder {
            settings: self.settings,
            classifier,
            policy: self.policy,
        }
    }

    /// The longest the fallback's own answer may take (default
    /// [`DEFAULT_TIMEOUT`], 1 s); the request's deadline, when it has one,
    /// bounds it too. A fallback cut there lets the original outcome
    /// through.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"fallback"`) when the timeout is zero or
    /// no reason is routed.
    pub fn build(self) -> Result<FallbackLayer<F, C>, ConfigError> {
        if self.settings.timeout.is_zero() {
            return Err(ConfigError::new("fallback", "timeout must be above zero"));
        }
        if self.settings.on == FallbackOn(0) {
            return Err(ConfigError::new(
                "fallback",
                "no reason to answer for: give at least one FallbackOn",
            ));
        }
        self.settings.observer.layer_built(
            crate::observe::LayerKind::Fallback,
            self.settings.name.as_str(),
            &[],
        );
        Ok(FallbackLayer {
            shared: Arc::new(Shared {
                name: self.settings.name,
                observer: self.settings.observer,
                policy: self.policy,
                classifier: self.classifier,
                on: self.settings.on,
                timeout: self.settings.timeout,
            }),
        })
    }
}
