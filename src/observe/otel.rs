use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

use super::catalog::{CATALOG, Spec};
use super::{Event, EventKind, Hook, LayerKind, Outcome, State};

/// A [`Hook`] that reports through the OpenTelemetry metrics API (feature
/// `opentelemetry`), on a [`Meter`] of your `MeterProvider`.
///
/// The instruments follow OpenTelemetry's naming rules (dotted names, the
/// unit as instrument metadata rather than in the name, no `_total`) and
/// its semantic conventions where one exists: a failed call or a refusal
/// carries `error.type` (the outcome, or the reason of the refusal). The
/// [module docs](super#metric-names) list every instrument beside the
/// Prometheus name the `metrics` hook gives it.
///
/// ```
/// # #[cfg(feature = "opentelemetry")] {
/// use opentelemetry::metrics::MeterProvider as _;
/// use seawall::observe::{Observer, OtelHook};
///
/// let provider = opentelemetry::global::meter_provider(); // or your SDK's provider
/// let observer = Observer::new(OtelHook::new(&provider.meter("seawall")));
/// # let _ = observer;
/// # }
/// ```
///
/// Attribute values are built only when an event is reported; with no hook
/// set, layers do none of this work.
#[derive(Debug, Clone)]
pub struct OtelHook {
    calls: Counter<u64>,
    duration: Histogram<f64>,
    rejections: Counter<u64>,
    state: Gauge<i64>,
    state_changes: Counter<u64>,
    retries: Counter<u64>,
    retry_delay: Histogram<f64>,
    gave_up: Counter<u64>,
    budget_exhausted: Counter<u64>,
    limit: Gauge<u64>,
    inflight: Gauge<u64>,
    input_ignored: Counter<u64>,
    hedges: Counter<u64>,
    fallbacks: Counter<u64>,
    reconfigurations: Counter<u64>,
    ejections: Counter<u64>,
    backend_errors: Counter<u64>,
}

/// The catalog's entry for the OpenTelemetry instrument `name`.
fn spec(name: &str) -> &'static Spec {
    CATALOG
        .iter()
        .find(|m| m.otel == name)
        .expect("every instrument is in the catalog")
}

macro_rules! instrument {
    ($meter:expr, $make:ident, $name:literal $(, $with:ident($arg:expr))?) => {{
        let m = spec($name);
        $meter
            .$make(m.otel)
            .with_unit(m.unit)
            .with_description(m.help)
            $(.$with($arg))?
            .build()
    }};
}

/// Bucket boundaries of the duration histograms, in seconds (the SDK's
/// default ones, 0 to 10 000, are made for milliseconds: every call under
/// 5 s would fall in one bucket).
const SECONDS_BOUNDARIES: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl OtelHook {
    /// Creates every instrument on `meter` (once: recording is then a
    /// lookup of the attribute set, by the SDK).
    pub fn new(meter: &Meter) -> Self {
        OtelHook {
            calls: instrument!(meter, u64_counter, "seawall.calls"),
            duration: instrument!(
                meter,
                f64_histogram,
                "seawall.call.duration",
                with_boundaries(SECONDS_BOUNDARIES.to_vec())
            ),
            rejections: instrument!(meter, u64_counter, "seawall.rejections"),
            state: instrument!(meter, i64_gauge, "seawall.state"),
            state_changes: instrument!(meter, u64_counter, "seawall.state.changes"),
            retries: instrument!(meter, u64_counter, "seawall.retries"),
            retry_delay: instrument!(
                meter,
                f64_histogram,
                "seawall.retry.delay",
                with_boundaries(SECONDS_BOUNDARIES.to_vec())
            ),
            gave_up: instrument!(meter, u64_counter, "seawall.retry.gave_up"),
            budget_exhausted: instrument!(meter, u64_counter, "seawall.retry.budget_exhausted"),
            limit: instrument!(meter, u64_gauge, "seawall.limit"),
            inflight: instrument!(meter, u64_gauge, "seawall.limit.inflight"),
            input_ignored: instrument!(meter, u64_counter, "seawall.input.ignored"),
            hedges: instrument!(meter, u64_counter, "seawall.hedges"),
            fallbacks: instrument!(meter, u64_counter, "seawall.fallbacks"),
            reconfigurations: instrument!(meter, u64_counter, "seawall.reconfigurations"),
            ejections: instrument!(meter, u64_counter, "seawall.ejections"),
            backend_errors: instrument!(meter, u64_counter, "seawall.backend.errors"),
        }
    }

    /// Publishes the state of a stateful layer: `state` at 1 and every other
    /// state of that layer kind at 0 (layers do it through
    /// [`EventKind::StateChanged`] events).
    pub fn set_state(&self, layer: LayerKind, name: &str, state: State) {
        for s in State::all_for(layer) {
            self.state.record(
                i64::from(*s == state),
                &[
                    KeyValue::new("seawall.layer", layer.as_str()),
                    KeyValue::new("seawall.name", name.to_owned()),
                    KeyValue::new("seawall.state", s.as_str()),
                ],
            );
        }
    }
}

impl Hook for OtelHook {
    fn on_event(&self, e: &Event<'_>) {
        self.count(e, 1);
    }

    /// Each counter at zero (`add(0, ..)`); no histogram sample, no gauge.
    fn on_layer_built(&self, events: &[Event<'_>]) {
        for e in events {
            self.count(e, 0);
        }
    }
}

impl OtelHook {
    /// Records `e`, its counters added `n` (0: the series published with
    /// nothing counted, and no histogram sample or gauge set).
    fn count(&self, e: &Event<'_>, n: u64) {
        let sampled = n > 0;
        let layer = KeyValue::new("seawall.layer", e.layer.as_str());
        let name = KeyValue::new("seawall.name", e.name.to_owned());
        match e.kind {
            EventKind::CallStarted => {}
            EventKind::CallFinished { outcome, latency } => {
                let out = KeyValue::new("seawall.outcome", outcome.as_str());
                let all = [
                    layer,
                    name,
                    out,
                    KeyValue::new("error.type", outcome.as_str()),
                ];
                // `error.type` only on calls that did not succeed.
                let attrs = if outcome == Outcome::Success {
                    &all[..3]
                } else {
                    &all[..]
                };
                self.calls.add(n, attrs);
                if sampled {
                    self.duration.record(latency.as_secs_f64(), attrs);
                }
            }
            EventKind::Rejected { reason, detail, .. } => self.rejections.add(
                n,
                &[
                    layer,
                    name,
                    KeyValue::new("error.type", reason.as_str()),
                    KeyValue::new("seawall.rejection.detail", detail),
                ],
            ),
            EventKind::StateChanged { from, to, .. } => {
                if sampled {
                    self.set_state(e.layer, e.name, to);
                }
                if from != to {
                    self.state_changes.add(
                        n,
                        &[layer, name, KeyValue::new("seawall.state", to.as_str())],
                    );
                }
            }
            EventKind::RetryScheduled { delay, .. } => {
                let attrs = [layer, name];
                self.retries.add(n, &attrs);
                if sampled {
                    self.retry_delay.record(delay.as_secs_f64(), &attrs);
                }
            }
            EventKind::RetryGaveUp { reason, .. } => self.gave_up.add(
                n,
                &[
                    layer,
                    name,
                    KeyValue::new("seawall.reason", reason.as_str()),
                ],
            ),
            EventKind::BudgetExhausted => self.budget_exhausted.add(n, &[layer, name]),
            EventKind::LimitChanged { from, to } => {
                let attrs = [layer, name];
                // As built: the in-flight gauge too, at 0 (see `MetricsHook`).
                if from == to && e.layer == LayerKind::AdaptiveLimit {
                    self.inflight.record(0, &attrs);
                }
                self.limit.record(to as u64, &attrs);
            }
            EventKind::LimitSampled {
                limit,
                peak_inflight,
                ..
            } => {
                let attrs = [layer, name];
                self.limit.record(limit as u64, &attrs);
                self.inflight.record(peak_inflight as u64, &attrs);
            }
            EventKind::InputIgnored { input, reason } => self.input_ignored.add(
                n,
                &[
                    layer,
                    name,
                    KeyValue::new("seawall.input", input),
                    KeyValue::new("seawall.reason", reason),
                ],
            ),
            EventKind::HedgeSent { .. } => self.hedges.add(n, &[layer, name]),
            EventKind::FallbackUsed { reason } => self.fallbacks.add(
                n,
                &[
                    layer,
                    name,
                    KeyValue::new("seawall.reason", reason.as_str()),
                ],
            ),
            EventKind::Reconfigured => self.reconfigurations.add(n, &[layer, name]),
            EventKind::EndpointEjected { reason, .. } => self
                .ejections
                .add(n, &[layer, name, KeyValue::new("seawall.reason", reason)]),
            EventKind::BackendError { backend, cause } => self.backend_errors.add(
                n,
                &[
                    layer,
                    name,
                    KeyValue::new("seawall.backend", backend),
                    KeyValue::new("error.type", cause),
                ],
            ),
        }
    }
}
