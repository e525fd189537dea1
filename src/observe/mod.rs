//! The one metrics hook every seawall layer reports through.
//!
//! Every layer instance carries a [`Name`](crate::error::Name) and an
//! [`Observer`]. When something happens — a call starts or finishes, a request is
//! rejected, a breaker changes state, a retry is scheduled, a limit moves — the
//! layer hands a borrowed [`Event`] to the observer's [`Hook`].
//!
//! Build one `Observer` and pass it to every layer builder: wire observability
//! once, see every layer. The default observer is empty and costs one branch:
//! no event is built, nothing is formatted or allocated.
//!
//! Hooks shipped here:
//! - any closure `Fn(&Event<'_>)`, its argument's type written out
//!   (`Observer::new(|e: &Event<'_>| …)`: without it, rustc cannot infer
//!   the closure's type, error E0282);
//! - [`TracingHook`]: `tracing` events with structured fields;
//! - [`MetricsHook`] (feature `metrics`): the `metrics` facade, names below;
//! - [`OtelHook`] (feature `opentelemetry`): OpenTelemetry instruments on
//!   your `Meter`, names below;
//! - [`Recorder`]: keeps events in memory for tests and dashboards;
//! - a pair `(A, B)` of hooks reports to both.
//!
//! # Example
//!
//! ```
//! use seawall::observe::{Event, EventKind, LayerKind, Observer, Recorder};
//!
//! let recorder = Recorder::new();
//! let observer = Observer::new(recorder.clone());
//! // …pass `observer.clone()` to every layer builder…
//! observer.emit(LayerKind::CircuitBreaker, "payments", EventKind::CallStarted);
//!
//! assert_eq!(recorder.count(|e| e.kind == EventKind::CallStarted), 1);
//! assert_eq!(recorder.events()[0].name, "payments");
//! ```
//!
//! # Metric names
//!
//! [`MetricsHook`] (feature `metrics`) reports through the
//! [`metrics`](https://docs.rs/metrics) facade and describes every metric
//! (unit and help text) when it is created. Names are dot-separated;
//! Prometheus exporters turn dots into underscores and, with recommended
//! naming, add `_total` to counters; durations are in seconds and say so in
//! their names, as Prometheus wants. Labels: `layer` (the [`LayerKind`]
//! label), `name` (the instance name), and `outcome` ([`Outcome`]) /
//! `reason` / `state` / … where stated. Every counter a layer may report
//! is published at zero as the layer is built (see [`Hook::on_layer_built`]),
//! so that a rate over it sees its first increase.
//!
//! [`OtelHook`] (feature `opentelemetry`) records the same events on
//! OpenTelemetry instruments, named by OpenTelemetry's rules: the unit is
//! the instrument's metadata (`s`, `{call}`), not part of the name;
//! attributes are namespaced (`seawall.layer`, `seawall.name`, …), and
//! the semantic conventions' `error.type` says why a call failed or a
//! request was refused.
//!
//! | Prometheus (`MetricsHook`) | OpenTelemetry (`OtelHook`), unit | what | labels / attributes |
//! |---|---|---|---|
//! | `seawall_calls_total` | `seawall.calls` counter, `{call}` | calls let through and finished | layer, name, outcome; OTel: `error.type` = the outcome unless success |
//! | `seawall_call_duration_seconds` | `seawall.call.duration` histogram, `s` | their durations | as above |
//! | `seawall_rejections_total` | `seawall.rejections` counter, `{request}` | requests refused, and calls cut short by a timeout (`attempt_timeout` / `timed_out`) | layer, name, reason (OTel `error.type`), detail (a short static word: `limit`, `doomed`, `queue_full`, `open`, …; OTel `seawall.rejection.detail`) |
//! | `seawall_state` | `seawall.state` gauge, `{state}` | a stateful layer's state, exactly one at 1 | layer, name, state |
//! | `seawall_state_changes_total` | `seawall.state.changes` counter, `{change}` | changes of state, by the state entered | layer, name, state |
//! | `seawall_retries_total` | `seawall.retries` counter, `{retry}` | retries scheduled | layer, name |
//! | `seawall_retry_delay_seconds` | `seawall.retry.delay` histogram, `s` | their backoffs | layer, name |
//! | `seawall_retry_gave_up_total` | `seawall.retry.gave_up` counter | requests no longer retried | layer, name, reason ([`GiveUpReason`]: `circuit_open` for those an open breaker below turned away) |
//! | `seawall_retry_budget_exhausted_total` | `seawall.retry.budget_exhausted` counter | retries the budget refused | layer, name |
//! | `seawall_limit` | `seawall.limit` gauge, `{call}` | a concurrency limit (adaptive or bulkhead) | layer, name |
//! | `seawall_limit_inflight` | `seawall.limit.inflight` gauge, `{call}` | the most calls in flight under an adaptive limit in its last window (a burst's over the limit included); while no window can close (every call failing), the calls in flight | layer, name |
//! | `seawall_hedges_total` | `seawall.hedges` counter | hedges sent | layer, name |
//! | `seawall_fallbacks_total` | `seawall.fallbacks` counter | calls a fallback answered | layer, name, reason |
//! | `seawall_reconfigurations_total` | `seawall.reconfigurations` counter | settings taken at run time | layer, name |
//! | `seawall_ejections_total` | `seawall.ejections` counter | endpoints ejected | layer, name, reason |
//! | `seawall_input_ignored_total` | `seawall.input.ignored` counter | bad input ignored | layer, name, input, reason |
//! | `seawall_backend_errors_total` | `seawall.backend.errors` counter | backend (Redis) errors | layer, name, backend, reason (OTel `error.type`) |

use std::fmt;
use std::sync::Arc;

mod built;
#[cfg(any(feature = "metrics", feature = "opentelemetry"))]
mod catalog;
mod event;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "opentelemetry")]
mod otel;
mod recorder;
mod tracing;

#[cfg(any(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead",
    feature = "shed",
    feature = "rate-limit"
))]
pub(crate) use self::built::refusal;
pub use self::event::{Event, EventKind, FallbackReason, GiveUpReason, LayerKind, Outcome, State};
#[cfg(feature = "metrics")]
pub use self::metrics::MetricsHook;
#[cfg(feature = "opentelemetry")]
pub use self::otel::OtelHook;
pub use self::recorder::{RecordedEvent, Recorder};
pub use self::tracing::TracingHook;

/// The `name` and `observer` setters of a layer builder (fields `name:
/// Name` and `observer: Observer`, or those of its field `$in`), with their
/// docs (unused in builds without any layer).
#[allow(unused_macros)]
macro_rules! name_and_observer {
    ($name_doc:literal, $observer_doc:literal) => {
        #[doc = $name_doc]
        pub fn name(mut self, name: impl Into<$crate::error::Name>) -> Self {
            self.name = name.into();
            self
        }

        #[doc = $observer_doc]
        pub fn observer(mut self, observer: impl Into<$crate::observe::Observer>) -> Self {
            self.observer = observer.into();
            self
        }
    };
    (in $in:ident, $name_doc:literal, $observer_doc:literal) => {
        #[doc = $name_doc]
        pub fn name(mut self, name: impl Into<$crate::error::Name>) -> Self {
            self.$in.name = name.into();
            self
        }

        #[doc = $observer_doc]
        pub fn observer(mut self, observer: impl Into<$crate::observe::Observer>) -> Self {
            self.$in.observer = observer.into();
            self
        }
    };
}
#[allow(unused_imports)]
pub(crate) use name_and_observer;

/// Receives every event of the layers built with it.
///
/// Implementations must be cheap and must not block: they run inline on the
/// request path.
pub trait Hook: Send + Sync + 'static {
    /// Called for every event.
    fn on_event(&self, event: &Event<'_>);

    /// Called once as a layer is built with this hook, with the events that
    /// count something it may report, one per series: its calls by outcome,
    /// its refusals by reason and detail, its retries and give-ups by
    /// reason, its hedges, its fallbacks by reason (events of no count:
    /// zero latencies, no `retry_after`). `MetricsHook` and `OtelHook`
    /// publish each counter at zero, so that a rate over it sees its first
    /// increase: a series that first appears with a burst already in it
    /// shows none to Prometheus' `rate()` and `increase()` (in an outside
    /// trial, a client's adaptive limit refused 197 calls in one second and
    /// `increase()` over the run said 0). Default: nothing.
    fn on_layer_built(&self, events: &[Event<'_>]) {
        let _ = events;
    }
}

/// The no-op hook.
impl Hook for () {
    #[inline(always)]
    fn on_event(&self, _event: &Event<'_>) {}
}

impl<F> Hook for F
where
    F: Fn(&Event<'_>) + Send + Sync + 'static,
{
    #[inline]
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}

/// Both hooks receive every event, `A` first.
impl<A: Hook, B: Hook> Hook for (A, B) {
    #[inline]
    fn on_event(&self, event: &Event<'_>) {
        self.0.on_event(event);
        self.1.on_event(event);
    }

    fn on_layer_built(&self, events: &[Event<'_>]) {
        self.0.on_layer_built(events);
        self.1.on_layer_built(events);
    }
}

impl<H: Hook + ?Sized> Hook for Arc<H> {
    #[inline]
    fn on_event(&self, event: &Event<'_>) {
        (**self).on_event(event)
    }

    fn on_layer_built(&self, events: &[Event<'_>]) {
        (**self).on_layer_built(events)
    }
}

/// A cheaply cloneable handle to a [`Hook`], given to layer builders.
///
/// `Observer::default()` listens to nothing; layers then skip building events
/// altogether (see [`Observer::is_enabled`]).
#[derive(Clone, Default)]
pub struct Observer {
    hook: Option<Arc<dyn Hook>>,
}

impl Observer {
    /// An observer that reports to `hook`.
    pub fn new<H: Hook>(hook: H) -> Self {
        if std::any::TypeId::of::<H>() == std::any::TypeId::of::<()>() {
            return Observer::none();
        }
        Observer {
            hook: Some(Arc::new(hook)),
        }
    }

    /// An observer that listens to nothing (the default).
    pub const fn none() -> Self {
        Observer { hook: None }
    }

    /// Whether a hook listens. Layers check this before doing work that only
    /// serves events (such as reading the clock for a latency).
    #[inline(always)]
    pub fn is_enabled(&self) -> bool {
        self.hook.is_some()
    }

    /// Reports an event, if a hook listens.
    #[inline(always)]
    pub fn emit(&self, layer: LayerKind, name: &str, kind: EventKind) {
        if let Some(hook) = &self.hook {
            hook.on_event(&Event::new(layer, name, kind));
        }
    }

    /// Reports an event built only when a hook listens.
    #[inline(always)]
    pub fn emit_with(&self, layer: LayerKind, name: &str, kind: impl FnOnce() -> EventKind) {
        if let Some(hook) = &self.hook {
            hook.on_event(&Event::new(layer, name, kind()));
        }
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl<H: Hook> From<H> for Observer {
    fn from(hook: H) -> Self {
        Observer::new(hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn unit_hook_is_disabled() {
        assert!(!Observer::new(()).is_enabled());
        assert!(!Observer::default().is_enabled());
    }

    #[test]
    fn closure_and_pair_receive_events() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let rec = Recorder::new();
        let obs = Observer::new((
            move |_: &Event<'_>| {
                n2.fetch_add(1, Ordering::Relaxed);
            },
            rec.clone(),
        ));
        obs.emit(LayerKind::Retry, "r", EventKind::BudgetExhausted);
        obs.emit_with(LayerKind::Retry, "r", || EventKind::LimitChanged {
            from: 1,
            to: 2,
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
        assert_eq!(rec.len(), 2);
        assert_eq!(
            rec.events()[1].kind,
            EventKind::LimitChanged { from: 1, to: 2 }
        );
    }
}
