use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower_layer::Layer;

use super::error::InjectedFault;
use super::fault::{Fault, Faults, Latency, Plan, Window};
use super::service::Chaos;
use crate::error::{BoxError, ConfigError, Name};

/// The most outage windows one layer accepts.
const MAX_OUTAGES: usize = 1024;

type ErrorFn = Arc<dyn Fn(Fault) -> BoxError + Send + Sync>;

/// State shared by every service built from one layer.
pub(crate) struct Shared {
    name: Name,
    faults: Faults,
    calls: AtomicU64,
    created: Instant,
    error: Option<ErrorFn>,
}

impl Shared {
    /// The plan for the next call.
    pub(crate) fn next_plan(&self) -> Plan {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let elapsed = if self.faults.outages.is_empty() {
            Duration::ZERO
        } else {
            crate::clock::elapsed(self.created, crate::clock::edge_now())
        };
        self.faults.plan(call, elapsed)
    }

    /// The error for an injected fault.
    pub(crate) fn error(&self, fault: Fault) -> BoxError {
        match &self.error {
            Some(make) => make(fault),
            None => Box::new(InjectedFault::new(self.name.clone(), fault)),
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.name)
            .field("faults", &self.faults)
            .field("calls", &self.calls.load(Ordering::Relaxed))
            .field("custom_error", &self.error.is_some())
            .finish()
    }
}

/// Fault injection for tests and demos: injected errors at a rate, injected
/// latency, and outage windows, all reproducible from a seed and driven by
/// tokio time.
///
/// Every service and clone built from one layer shares one call counter, one
/// seed and one start time: call number *n* through any of them gets the same
/// fault plan for the same seed. See the [module docs](crate::chaos).
///
/// ```
/// use std::time::Duration;
/// use seawall::chaos::{ChaosLayer, Latency};
///
/// let chaos = ChaosLayer::builder()
///     .seed(42)
///     .error_rate(0.1)
///     .latency(Latency::Uniform { min: Duration::from_millis(5), max: Duration::from_millis(50) })
///     .outage(Duration::from_secs(30), Duration::from_secs(40))
///     .build()
///     .expect("valid chaos configuration");
/// # let _ = chaos;
/// ```
#[derive(Clone)]
pub struct ChaosLayer {
    shared: Arc<Shared>,
}

impl ChaosLayer {
    /// A builder with no faults configured.
    pub fn builder() -> ChaosLayerBuilder {
        ChaosLayerBuilder::default()
    }

    /// How many calls the services built from this layer have planned so far.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// The seed in use (the configured one, or the one drawn at build time).
    pub fn seed(&self) -> u64 {
        self.shared.faults.seed
    }
}

impl fmt::Debug for ChaosLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> Layer<S> for ChaosLayer {
    type Service = Chaos<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Chaos::new(inner, self.shared.clone())
    }
}

/// Builds a [`ChaosLayer`]. Defaults: no injected errors (`error_rate` 0), no
/// latency, no outages, a seed drawn from the OS, name `"chaos"`, errors of
/// type [`InjectedFault`].
#[derive(Default)]
pub struct ChaosLayerBuilder {
    name: Option<Name>,
    seed: Option<u64>,
    error_rate: f64,
    latency: Option<Latency>,
    latency_rate: Option<f64>,
    outages: Vec<Window>,
    error: Option<ErrorFn>,
}

impl fmt::Debug for ChaosLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayerBuilder")
            .field("name", &self.name)
            .field("seed", &self.seed)
            .field("error_rate", &self.error_rate)
            .field("latency", &self.latency)
            .field("latency_rate", &self.latency_rate)
            .field("outages", &self.outages)
            .field("custom_error", &self.error.is_some())
            .finish()
    }
}

impl ChaosLayerBuilder {
    /// The instance name, used in [`InjectedFault`] errors (default `"chaos"`).
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The seed of the fault plan. With a seed, call number *n* always gets
    /// the same plan. Without one, a seed is drawn from the OS at build time
    /// (read it back with [`ChaosLayer::seed`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The fraction of calls (in `0..=1`) that fail with an injected error
    /// instead of reaching the inner service. Default 0.
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// The error returned for injected faults, made per failing call from the
    /// [`Fault`] (error draw or outage). Default: [`InjectedFault`]. Any error
    /// works, seawall rejections included, to test how a stack answers them.
    pub fn error<F>(mut self, make: F) -> Self
    where
        F: Fn(Fault) -> BoxError + Send + Sync + 'static,
    {
        self.error = Some(Arc::new(make));
        self
    }

    /// Injects latency into calls (all of them, unless
    /// [`latency_rate`](Self::latency_rate) says otherwise). The delay comes
    /// before the response, or before the injected failure.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = Some(latency);
        self
    }

    /// The fraction of calls (in `0..=1`) that get the injected latency.
    /// Default 1 (every call) once a latency is set; without a
    /// [`latency`](Self::latency) the build fails.
    pub fn latency_rate(mut self, rate: f64) -> Self {
        self.latency_rate = Some(rate);
        self
    }

    /// Adds an outage window: every call made from `start` until (not
    /// including) `end`, measured from the moment the layer is built, fails
    /// with [`Fault::Outage`]. Windows may overlap; at most 1024.
    pub fn outage(mut self, start: Duration, end: Duration) -> Self {
        self.outages.push(Window {
            start,
            end,
            period: None,
        });
        self
    }

    /// Adds a repeating outage: down for `length` every `period`, the first
    /// time `first` after the layer is built (windows
    /// `[first + k·period, first + k·period + length)` for k = 0, 1, 2, …).
    /// `length` must be above zero and below `period`. Counts as one window
    /// towards the limit of 1024.
    pub fn periodic_outage(mut self, first: Duration, length: Duration, period: Duration) -> Self {
        self.outages.push(Window {
            start: first,
            end: first.saturating_add(length),
            period: Some(period),
        });
        self
    }

    /// Validates the configuration and builds the layer. Its clock (for
    /// outage windows) starts now.
    ///
    /// Fails when a rate is outside `0..=1` (or not a number), a
    /// `latency_rate` is set without a latency, a latency
    /// distribution is malformed (`Uniform` min above max, `Exponential` mean
    /// of zero or max below the mean), a window does not end after it starts,
    /// a periodic outage is not shorter than its period, or there are more
    /// than 1024 windows.
    pub fn build(self) -> Result<ChaosLayer, ConfigError> {
        check_rate("error_rate", self.error_rate)?;
        if let Some(rate) = self.latency_rate {
            check_rate("latency_rate", rate)?;
            if self.latency.is_none() {
                return Err(ConfigError::new(
                    "chaos",
                    format!(
                        "latency_rate {rate} needs a latency to inject: set one with latency()"
                    ),
                ));
            }
        }
        if let Some(latency) = &self.latency {
            latency.validate()?;
        }
        if self.outages.len() > MAX_OUTAGES {
            return Err(ConfigError::new(
                "chaos",
                format!(
                    "at most {MAX_OUTAGES} outage windows are allowed, got {}",
                    self.outages.len()
                ),
            ));
        }
        for w in &self.outages {
            if w.start >= w.end {
                return Err(ConfigError::new(
                    "chaos",
                    format!(
                        "an outage window must end after it starts, got {:?}..{:?}",
                        w.start, w.end
                    ),
                ));
            }
            if let Some(period) = w.period {
                if w.end - w.start >= period {
                    return Err(ConfigError::new(
                        "chaos",
                        format!(
                            "a periodic outage must be shorter than its period, got length {:?} every {period:?}",
                            w.end - w.start
                        ),
                    ));
                }
            }
        }
        let seed = match self.seed {
            Some(seed) => seed,
            None => SmallRng::from_os_rng().random(),
        };
        Ok(ChaosLayer {
            shared: Arc::new(Shared {
                name: self.name.unwrap_or_else(|| Name::from("chaos")),
                faults: Faults {
                    seed,
                    error_rate: self.error_rate,
                    latency: self.latency,
                    latency_rate: self.latency_rate.unwrap_or(1.0),
                    outages: self.outages,
                },
                calls: AtomicU64::new(0),
                created: crate::clock::edge_now(),
                error: self.error,
            }),
        })
    }
}

fn check_rate(setting: &str, rate: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "chaos",
            format!("{setting} must be in 0..=1, got {rate}"),
        ))
    }
}
