use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::state::{CLOSED, Core, DISABLED, FORCED_OPEN, METRICS_ONLY};
use super::window::WindowSnapshot;
use crate::clock;
use crate::observe::State;

/// What a layer shares with its services, their futures and its handles.
pub(crate) struct Shared<C> {
    pub(crate) core: Core,
    pub(crate) classifier: C,
}

pub(crate) trait CoreRef: Send + Sync + 'static {
    fn core(&self) -> &Core;
    #[cfg_attr(not(all(feature = "http", feature = "deadline")), allow(dead_code))]
    fn classifier(&self) -> &(dyn std::any::Any + Send + Sync);
}

impl<T: CoreRef> CoreRef for crate::stripe::Stripe<T> {
    fn core(&self) -> &Core {
        (**self).core()
    }

    fn classifier(&self) -> &(dyn std::any::Any + Send + Sync) {
        (**self).classifier()
    }
}

impl<C: Send + Sync + 'static> CoreRef for Shared<C> {
    fn core(&self) -> &Core {
        &self.core
    }

    fn classifier(&self) -> &(dyn std::any::Any + Send + Sync) {
        &self.classifier
    }
}

/// Reads and steers one breaker (obtained from
/// [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle)).
/// Cheap to clone; every clone acts on the same breaker.
///
/// Manual states: [`force_open`](Self::force_open) rejects every call
/// (`retry_after` none) until [`reset`](Self::reset);
/// [`disable`](Self::disable) lets every call through and records nothing;
/// [`metrics_only`](Self::metrics_only) lets every call through and keeps
/// counting, so the rates stay readable, but never opens. Each of them is
/// reported as a `StateChanged` event.
///
/// Hooks run while the breaker changes state: a hook must not call the
/// handle's switching methods (`force_open`, `disable`, `metrics_only`,
/// `reset`) or [`retune`](Self::retune) (each waits for the state change
/// under way to end); reading is fine, [`tuning`](Self::tuning) included.
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    shared: Arc<dyn CoreRef>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new<C: Send + Sync + 'static>(shared: Arc<Shared<C>>) -> Self {
        CircuitBreakerHandle { shared }
    }

    fn core(&self) -> &Core {
        self.shared.core()
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        self.core().name.as_str()
    }

    /// The current state. An open breaker whose open time has passed reads
    /// [`State::Open`] until the next call moves it to half-open.
    pub fn state(&self) -> State {
        self.core().state()
    }

    /// The window's counts now (calls, failures, slow calls). While open or
    /// half-open, the window that opened the breaker.
    pub fn metrics(&self) -> WindowSnapshot {
        self.core().snapshot(clock::now())
    }

    /// The window's failure rate (0..=1), `None` while it is empty.
    pub fn failure_rate(&self) -> Option<f64> {
        self.metrics().failure_rate()
    }

    /// The window's slow-call rate (0..=1), `None` while it is empty.
    pub fn slow_call_rate(&self) -> Option<f64> {
        self.metrics().slow_call_rate()
    }

    /// While open: the time left until the breaker lets probes through.
    pub fn retry_after(&self) -> Option<Duration> {
        self.core().open_remaining(clock::now())
    }

    /// Holds the breaker open: every call is rejected, until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.core().set_manual(FORCED_OPEN);
    }

    /// Turns the breaker off: every call goes through, nothing is recorded
    /// (the window is emptied).
    pub fn disable(&self) {
        self.core().set_manual(DISABLED);
    }

    /// Every call goes through; outcomes are counted (from an empty window)
    /// and readable, but the breaker never opens.
    pub fn metrics_only(&self) {
        self.core().set_manual(METRICS_ONLY);
    }

    /// Back to closed, whatever the state: empty window, open time back to
    /// its base.
    pub fn reset(&self) {
        self.core().set_manual(CLOSED);
    }

    /// The settings [`retune`](Self::retune) may change, as they are now.
    pub fn tuning(&self) -> super::BreakerTuning {
        self.core().tuning()
    }

    /// Changes the breaker's thresholds and open times at run time (an
    /// operator's reload), keeping its state, its window and an open time
    /// already running; no lock or allocation is added on the request path.
    /// A closed breaker whose window is already at or over a new rate
    /// threshold opens at once (a run of failures already longer than a new
    /// `consecutive_failures` opens it at the next failure). Reported as a [`Reconfigured`](crate::observe::EventKind::Reconfigured)
    /// event; the tuning in place again changes nothing and reports nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use seawall::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder().build().unwrap();
    /// let handle = layer.handle();
    /// let mut t = handle.tuning();
    /// t.open_duration = Duration::from_secs(5);
    /// t.failure_rate_threshold = 0.25;
    /// handle.retune(t).unwrap();
    /// assert_eq!(handle.tuning().open_duration, Duration::from_secs(5));
    ///
    /// t.failure_rate_threshold = 1.5; // refused: nothing changes
    /// assert!(handle.retune(t).is_err());
    /// assert_eq!(handle.tuning().failure_rate_threshold, 0.25);
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::error::ConfigError) naming the setting, as the
    /// builder's; the breaker is left as it was.
    pub fn retune(&self, t: super::BreakerTuning) -> Result<(), crate::error::ConfigError> {
        let config = &self.core().config;
        t.check(config.rate_trips, config.slow_call_nanos != u64::MAX)?;
        // The tuning in place: no change, no event.
        if t != self.tuning() {
            self.core().retune(&t);
        }
        Ok(())
    }

    /// The slow-call duration it was built with (`None`: no call is slow).
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn slow_call_duration(&self) -> Option<std::time::Duration> {
        match self.core().config.slow_call_nanos {
            u64::MAX => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}
