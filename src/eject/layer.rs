use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tower_layer::Layer;

use super::registry::{Registry, Settings};
use super::service::Ejectable;
use crate::classify::ErrorsAsFailures;
use crate::error::{ConfigError, Name};
use crate::observe::{EventKind, LayerKind, Observer};

/// Failures in a row that eject an endpoint: 5 (Envoy's `consecutive_5xx`).
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// An ejection's length: 5 s. An endpoint ejected again after it came back
/// stays out `n` times as long the `n`-th time (up to
/// [`DEFAULT_MAX_EJECTION`]; each healthy interval forgives one); a failed
/// probe keeps it out for the same time again.
///
/// Chosen by the storm's replica scenario (`cargo run --release --example
/// storm`, asserted in `tests/storm`): replicas broken for 15 to 30 s serve
/// their share again within a few seconds of their recovery, for 0.09 to
/// 0.23 % of requests costing a call to a broken replica. A 10 s base left two of
/// them out 15 s after they recovered; Envoy's growth on every failed probe
/// (which returns a host to full traffic, where seawall sends one probe)
/// left a replica broken for 16 s out for 15 s more. The cost of a short
/// ejection: a slow replica, ejected as a latency outlier, comes back
/// sooner between ejections (1.8 % of the calls in the slow phase's second
/// half, 0.7 % with 10 s).
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(5);
/// The longest ejection: 300 s (Envoy's).
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// The largest share of the set ejected at once: 50 % (at least one
/// endpoint, never the last).
///
/// Chosen by the replica scenario: with three replicas of ten broken,
/// Envoy's 10 % ejects one and leaves two taking a fifth of the calls; at
/// 50 % all three are out (100 % of requests succeed, 0.23 % of them cost a
/// call to a broken replica), while half of the set stays in service
/// whatever happens.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
/// How often success-rate and latency outliers are looked for: 10 s
/// (Envoy's interval).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The most endpoints one layer watches: 256 (more are served, never
/// ejected, and reported once).
pub const DEFAULT_MAX_ENDPOINTS: usize = 256;
/// Endpoints with enough calls an interval needs before success-rate
/// outliers are looked for: 5 (Envoy's).
pub const DEFAULT_SUCCESS_RATE_MIN_HOSTS: u32 = 5;
/// Calls an endpoint needs in an interval to count for the success rate:
/// 100 (Envoy's).
pub const DEFAULT_SUCCESS_RATE_VOLUME: u32 = 100;
/// How far below the set's mean success rate an outlier is, in standard
/// deviations: 1.9 (Envoy's).
pub const DEFAULT_SUCCESS_RATE_STDEV_FACTOR: f64 = 1.9;
/// How many times the set's median latency makes a latency outlier: 5.
pub const DEFAULT_LATENCY_FACTOR: f64 = 5.0;

pub(crate) struct Shared<C> {
    pub(crate) registry: Registry,
    pub(crate) classifier: C,
    pub(crate) count_overload: bool,
}

impl<C> Shared<C> {
    /// No slot was left for a new endpoint: it is served, never ejected.
    pub(crate) fn full(&self) {
        self.registry.observer.emit(
            LayerKind::Ejection,
            self.registry.name.as_str(),
            EventKind::InputIgnored {
                input: "endpoint",
                reason: "too_many_endpoints",
            },
        );
    }
}

/// Watches the endpoints of one balanced set and takes outliers out of it:
/// apply it to each endpoint's service (every one from the same layer),
/// then balance them. See the [module docs](super).
pub struct EjectionLayer<C = ErrorsAsFailures> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for EjectionLayer<C> {
    fn clone(&self) -> Self {
        EjectionLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for EjectionLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EjectionLayer")
            .field("registry", &self.shared.registry)
            .finish_non_exhaustive()
    }
}

impl EjectionLayer<ErrorsAsFailures> {
    /// A builder with the defaults: 5 failures in a row, or a success rate
    /// 1.9 standard deviations below the set's (Envoy's), or a mean latency
    /// 5 times the median, eject an endpoint for 5 s (×n the n-th time it
    /// offends again, up to 300 s), at most half of the set at once.
    pub fn builder() -> EjectionLayerBuilder<ErrorsAsFailures> {
        EjectionLayerBuilder {
            classifier: ErrorsAsFailures,
            common: Common {
                name: Name::from("ejection"),
                observer: Observer::none(),
                count_overload: false,
                max_endpoints: DEFAULT_MAX_ENDPOINTS,
                settings: Settings {
                    consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
                    base_ejection: DEFAULT_BASE_EJECTION,
                    max_ejection: DEFAULT_MAX_EJECTION,
                    max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
                    interval: DEFAULT_INTERVAL,
                    success_rate_min_hosts: DEFAULT_SUCCESS_RATE_MIN_HOSTS,
                    success_rate_volume: DEFAULT_SUCCESS_RATE_VOLUME,
                    success_rate_stdev_factor: DEFAULT_SUCCESS_RATE_STDEV_FACTOR,
                    latency_factor: Some(DEFAULT_LATENCY_FACTOR),
                },
            },
        }
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl EjectionLayer<crate::http::HttpStatusClassifier> {
    /// A builder for endpoints that answer HTTP (each a client pinned to
    /// one replica): [`builder`](EjectionLayer::builder)'s defaults, with
    /// statuses judged by
    /// [`HttpStatusClassifier`](crate::http::HttpStatusClassifier): a `500`
    /// is a failure (a `503` or `429` is "busy": see
    /// [`count_overload`](EjectionLayerBuilder::count_overload)). With
    /// `builder()`'s classifier every answer is an `Ok` response, a
    /// success: in an outside trial (3 replicas, one answering `500` to
    /// half its calls) that replica was never ejected, and it drew more
    /// calls than with no protection at all (its fast answers looked the
    /// least loaded to the balancer); with this one it was ejected within
    /// 0.2 s of its fault and got 30 to 48 of 12 000 calls in 20 s.
    ///
    /// ```
    /// use seawall::eject::EjectionLayer;
    ///
    /// let ejection = EjectionLayer::http().build()?;
    /// # let _ = ejection;
    /// # Ok::<(), seawall::ConfigError>(())
    /// ```
    pub fn http() -> EjectionLayerBuilder<crate::http::HttpStatusClassifier> {
        EjectionLayer::builder().classifier(crate::http::HttpStatusClassifier::new())
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl EjectionLayer<crate::grpc::GrpcStatusClassifier> {
    /// A builder for gRPC endpoints: [`builder`](EjectionLayer::builder)'s
    /// defaults, with statuses judged by
    /// [`GrpcStatusClassifier`](crate::grpc::GrpcStatusClassifier): an
    /// `INTERNAL` answer, or an `UNAVAILABLE` from a transport that could
    /// not reach the endpoint, is a failure (an `UNAVAILABLE` or
    /// `RESOURCE_EXHAUSTED` that a server answered is "busy": see
    /// [`count_overload`](EjectionLayerBuilder::count_overload)).
    ///
    /// ```
    /// use seawall::eject::EjectionLayer;
    ///
    /// let ejection = EjectionLayer::grpc().build()?;
    /// # let _ = ejection;
    /// # Ok::<(), seawall::ConfigError>(())
    /// ```
    pub fn grpc() -> EjectionLayerBuilder<crate::grpc::GrpcStatusClassifier> {
        EjectionLayer::builder().classifier(crate::grpc::GrpcStatusClassifier::new())
    }
}

/// The most endpoints one layer can watch (its slots are made when built).
const MAX_ENDPOINTS: usize = 65_536;

impl<C> EjectionLayer<C> {
    /// Endpoints registered now: those whose services exist. Endpoints a
    /// discovery adds or removes count once the balancer has taken the
    /// change, which it does when a request next drives it.
    pub fn endpoints(&self) -> usize {
        self.shared.registry.active.load(Ordering::Acquire) as usize
    }

    /// Endpoints ejected now (one waiting for its probe's answer included).
    pub fn ejected(&self) -> usize {
        self.shared.registry.ejected.load(Ordering::Acquire) as usize
    }
}

impl<S, C> Layer<S> for EjectionLayer<C> {
    type Service = Ejectable<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Ejectable::new(inner, self.shared.clone())
    }
}

/// Builds an [`EjectionLayer`]; see [`EjectionLayer::builder`].
pub struct EjectionLayerBuilder<C = ErrorsAsFailures> {
    classifier: C,
    common: Common,
}

/// The builder's settings that do not depend on its classifier, so that
/// [`classifier`](EjectionLayerBuilder::classifier) moves them as one field.
struct Common {
    name: Name,
    observer: Observer,
    count_overload: bool,
    max_endpoints: usize,
    settings: Settings,
}

impl<C> fmt::Debug for EjectionLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EjectionLayerBuilder")
            .field("name", &self.common.name)
            .field("settings", &self.common.settings)
            .finish_non_exhaustive()
    }
}

impl<C> EjectionLayerBuilder<C> {
    crate::observe::name_and_observer!(
        in common,
        "The instance name (default `\"ejection\"`); endpoint `i` reports as\n`\"{name}.{i}\"`.",
        "The observer this layer reports to (default: none)."
    );

    /// How outcomes are judged (default [`ErrorsAsFailures`]: only an `Err`
    /// fails, so an HTTP `500` or a gRPC `INTERNAL` in an `Ok` answer
    /// counts as a success; [`EjectionLayer::http`] and
    /// [`EjectionLayer::grpc`] judge statuses). A local refusal never
    /// counts; an answer the classifier calls "busy" (HTTP `503` and `429`,
    /// a gRPC `UNAVAILABLE` or `RESOURCE_EXHAUSTED` that a server sent)
    /// ejects an endpoint busy alone (see
    /// [`count_overload`](Self::count_overload)).
    pub fn classifier<C2>(self, classifier: C2) -> EjectionLayerBuilder<C2> {
        EjectionLayerBuilder {
            classifier,
            common: self.common,
        }
    }

    /// Whether an endpoint answering "busy" counts as failing, whatever
    /// the rest of the set answers (default off). Off, "busy" answers eject
    /// an endpoint only when it is busy alone: 5 of them in a row (the
    /// [`consecutive_failures`](Self::consecutive_failures), checked at each
    /// multiple), from an endpoint busy to at least half of its recent
    /// answers (a moving average over about 16: from a clean record, at the
    /// 15th busy answer in a row), while at least half of the other
    /// endpoints taking calls are busy to under a tenth of theirs; a probe
    /// so answered fails. A set busy all over is
    /// overloaded, and taking endpoints out would only load the others
    /// more; an endpoint busy alone is broken in a way that says "busy":
    /// in an outside trial over HTTP (3 replicas, 600 requests a second),
    /// one answering a bare `503` to every call, as a proxy with no
    /// upstream does, drew 10 238 of 12 024 calls in 20 s with its fast
    /// answers while it was never ejected (56 % served; 42 % with no
    /// protection).
    pub fn count_overload(mut self, yes: bool) -> Self {
        self.common.count_overload = yes;
        self
    }

    /// Failures in a row that eject an endpoint (default 5; at least 1).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.common.settings.consecutive_failures = n;
        self
    }

    /// An ejection's length (default 5 s) and the longest (default 300 s):
    /// the `n`-th ejection of an endpoint that came back in between lasts
    /// `n` times the first.
    pub fn ejection_time(mut self, base: Duration, max: Duration) -> Self {
        self.common.settings.base_ejection = base;
        self.common.settings.max_ejection = max;
        self
    }

    /// The largest share of the set ejected at once, in percent (default
    /// 50; at least one endpoint may be, and never the last).
    pub fn max_ejected_percent(mut self, percent: u32) -> Self {
        self.common.settings.max_ejected_percent = percent;
        self
    }

    /// How often outliers are looked for (default 10 s), among endpoints
    /// with at least `min_calls` calls in the interval (default 100), when
    /// at least `min_endpoints` have them (default 5).
    pub fn interval(mut self, interval: Duration, min_calls: u32, min_endpoints: u32) -> Self {
        self.common.settings.interval = interval;
        self.common.settings.success_rate_volume = min_calls;
        self.common.settings.success_rate_min_hosts = min_endpoints;
        self
    }

    /// An endpoint whose success rate is more than `factor` standard
    /// deviations below the set's mean, and at least 5 points below it, is
    /// ejected (default 1.9, Envoy's). The 5 points keep a healthy set
    /// whole: among endpoints that failed nothing, one with a single
    /// failure is always √(n − 1) deviations below (2 for five endpoints).
    pub fn success_rate_stdev_factor(mut self, factor: f64) -> Self {
        self.common.settings.success_rate_stdev_factor = factor;
        self
    }

    /// An endpoint whose mean latency is above `factor` times the median of
    /// the set's is ejected (default 5; `None` turns it off).
    pub fn latency_factor(mut self, factor: Option<f64>) -> Self {
        self.common.settings.latency_factor = factor;
        self
    }

    #[cfg(feature = "serde")]
    pub(crate) fn ejection_times(&self) -> (Duration, Duration) {
        (
            self.common.settings.base_ejection,
            self.common.settings.max_ejection,
        )
    }

    #[cfg(feature = "serde")]
    pub(crate) fn intervals(&self) -> (Duration, u32, u32) {
        (
            self.common.settings.interval,
            self.common.settings.success_rate_volume,
            self.common.settings.success_rate_min_hosts,
        )
    }

    /// The most endpoints watched (default 256, at most 65 536): their
    /// slots are made when the layer is built. An endpoint past them is
    /// passed through unwatched (reported as an `InputIgnored` event).
    /// An outlier sweep compares the first 256 endpoints with enough calls.
    pub fn max_endpoints(mut self, n: usize) -> Self {
        self.common.max_endpoints = n;
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"ejection"`) when a count or a time is
    /// zero, the percentage is above 100, the latency factor is not above
    /// 1, or the stdev factor is negative.
    pub fn build(self) -> Result<EjectionLayer<C>, ConfigError> {
        let s = self.common.settings;
        let err = |m: String| Err(ConfigError::new("ejection", m));
        if s.consecutive_failures == 0 {
            return err("consecutive_failures must be at least 1".into());
        }
        if s.base_ejection.is_zero() || s.max_ejection < s.base_ejection {
            return err(format!(
                "ejection times must be above zero with max >= base, got {:?} and {:?}",
                s.base_ejection, s.max_ejection
            ));
        }
        if s.max_ejected_percent > 100 {
            return err(format!(
                "max_ejected_percent must be in 0..=100, got {}",
                s.max_ejected_percent
            ));
        }
        if s.interval.is_zero() || s.success_rate_volume == 0 || s.success_rate_min_hosts == 0 {
            return err(format!(
                "interval, min_calls and min_endpoints must be above zero, got {:?}, {} and {}",
                s.interval, s.success_rate_volume, s.success_rate_min_hosts
            ));
        }
        if s.latency_factor.is_some_and(|f| f.is_nan() || f <= 1.0) {
            return err(format!(
                "latency_factor must be above 1, got {:?}",
                s.latency_factor
            ));
        }
        if s.success_rate_stdev_factor.is_nan() || s.success_rate_stdev_factor < 0.0 {
            return err(format!(
                "success_rate_stdev_factor must be at least 0, got {}",
                s.success_rate_stdev_factor
            ));
        }
        if !(1..=MAX_ENDPOINTS).contains(&self.common.max_endpoints) {
            return err(format!(
                "max_endpoints must be in 1..={MAX_ENDPOINTS}, got {}",
                self.common.max_endpoints
            ));
        }
        self.common.observer.layer_built(
            crate::observe::LayerKind::Ejection,
            self.common.name.as_str(),
            &super::registry::Why::ALL.map(|why| crate::observe::EventKind::EndpointEjected {
                reason: why.as_str(),
                duration: std::time::Duration::ZERO,
            }),
        );
        Ok(EjectionLayer {
            shared: Arc::new(Shared {
                registry: Registry::new(
                    self.common.name,
                    self.common.observer,
                    s,
                    self.common.max_endpoints,
                ),
                classifier: self.classifier,
                count_overload: self.common.count_overload,
            }),
        })
    }
}

impl<C> EjectionLayer<C> {
    /// Wraps every endpoint a service discovery inserts (a
    /// [`tower::discover::Discover`] such as `ServiceList`, or a stream of
    /// `Change`s fed as endpoints come and go) in this layer; a removed
    /// endpoint leaves the set. Give the result to
    /// `tower::balance::p2c::Balance`.
    ///
    /// For tonic, map each `Endpoint` to `endpoint.connect_lazy()` in the
    /// stream: the set then changes at run time as with tonic's
    /// `Channel::balance_channel`, with each endpoint watched.
    pub fn discover<D>(&self, discover: D) -> EjectDiscover<D, C> {
        EjectDiscover {
            inner: discover,
            layer: self.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A service discovery whose endpoints are watched by an
    /// [`EjectionLayer`]; see [`EjectionLayer::discover`].
    pub struct EjectDiscover<D, C> {
        #[pin]
        inner: D,
        layer: EjectionLayer<C>,
    }
}

impl<D: fmt::Debug, C> fmt::Debug for EjectDiscover<D, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EjectDiscover")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<D, K, S, E, C> futures_util::Stream for EjectDiscover<D, C>
where
    D: futures_util::Stream<Item = Result<tower::discover::Change<K, S>, E>>,
{
    type Item = Result<tower::discover::Change<K, Ejectable<S, C>>, E>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use tower::discover::Change;
        let this = self.project();
        this.inner.poll_next(cx).map(|item| {
            item.map(|change| {
                change.map(|c| match c {
                    Change::Insert(k, s) => Change::Insert(k, this.layer.layer(s)),
                    Change::Remove(k) => Change::Remove(k),
                })
            })
        })
    }
}
