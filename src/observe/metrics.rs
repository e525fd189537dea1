use super::catalog::Kind;
use super::{Event, EventKind, Hook, Outcome, State};

/// A [`Hook`] that reports through the [`metrics`] facade (feature `metrics`).
///
/// The metric names and labels are listed in the [module docs](super). Install
/// any `metrics` recorder (for example `metrics-exporter-prometheus`) and pass
/// `Observer::new(MetricsHook::new())` to the layers.
///
/// Label values are built only when an event is reported; with no hook set,
/// layers do none of this work.
#[derive(Debug, Clone, Copy)]
pub struct MetricsHook;

impl Default for MetricsHook {
    fn default() -> Self {
        MetricsHook::new()
    }
}

impl MetricsHook {
    /// Creates the hook and describes every seawall metric to the installed
    /// `metrics` recorder (units and help texts: the `# HELP` lines of a
    /// Prometheus exporter). Create it after installing the recorder.
    pub fn new() -> Self {
        Self::describe();
        MetricsHook
    }

    /// Describes every seawall metric to the installed recorder (done by
    /// [`new`](Self::new); call it again after installing another one).
    pub fn describe() {
        for m in super::catalog::CATALOG {
            let (name, help) = (m.prometheus, m.help);
            let unit = (m.unit == "s").then_some(metrics::Unit::Seconds);
            match (m.kind, unit) {
                (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
                (Kind::Counter, None) => metrics::describe_counter!(name, help),
                (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, help),
                (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
                (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
                (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
            }
        }
    }

    /// Publishes the initial state of a stateful layer: `state` at 1 and every
    /// other state of that layer kind at 0. Layers call this through a
    /// [`EventKind::StateChanged`] event when they are built; users rarely need it.
    pub fn set_state(&self, layer: super::LayerKind, name: &str, state: State) {
        for s in State::all_for(layer) {
            metrics::gauge!(
                "seawall.state",
                "layer" => layer.as_str(),
                "name" => name.to_owned(),
                "state" => s.as_str()
            )
            .set(if *s == state { 1.0 } else { 0.0 });
        }
    }
}

impl Hook for MetricsHook {
    fn on_event(&self, e: &Event<'_>) {
        self.count(e, 1);
    }

    /// Each counter at zero (`increment(0)`: a series already there keeps
    /// its count); no histogram sample, no gauge.
    fn on_layer_built(&self, events: &[Event<'_>]) {
        for e in events {
            self.count(e, 0);
        }
    }
}

impl MetricsHook {
    /// Records `e`, its counters incremented by `n` (0: the series published
    /// with nothing counted, and no histogram sample or gauge set).
    fn count(&self, e: &Event<'_>, n: u64) {
        // Nothing recorded for a call's start: no label made (a copy of the
        // name) for it, on every admitted call.
        if matches!(e.kind, EventKind::CallStarted) {
            return;
        }
        let layer = e.layer.as_str();
        let name = e.name.to_owned();
        let sampled = n > 0;
        match e.kind {
            EventKind::CallStarted => {}
            EventKind::CallFinished { outcome, latency } => {
                metrics::counter!("seawall.calls", "layer" => layer, "name" => name.clone(), "outcome" => outcome.as_str())
                    .increment(n);
                // Registered at zero too (no sample) for successes and
                // failures, the latencies a dashboard draws: their `_count`
                // and buckets are there before the first call. (Not the
                // other outcomes': a dozen buckets each, for every layer.)
                if sampled || matches!(outcome, Outcome::Success | Outcome::Failure) {
                    let h = metrics::histogram!("seawall.call.duration.seconds", "layer" => layer, "name" => name, "outcome" => outcome.as_str());
                    if sampled {
                        h.record(latency.as_secs_f64());
                    }
                }
            }
            EventKind::Rejected { reason, detail, .. } => {
                metrics::counter!("seawall.rejections", "layer" => layer, "name" => name, "reason" => reason.as_str(), "detail" => detail)
                    .increment(n);
            }
            EventKind::StateChanged { from, to, .. } => {
                if sampled {
                    self.set_state(e.layer, e.name, to);
                }
                if from != to {
                    metrics::counter!("seawall.state.changes", "layer" => layer, "name" => name, "state" => to.as_str())
                        .increment(n);
                }
            }
            EventKind::RetryScheduled { delay, .. } => {
                metrics::counter!("seawall.retries", "layer" => layer, "name" => name.clone())
                    .increment(n);
                let h = metrics::histogram!("seawall.retry.delay.seconds", "layer" => layer, "name" => name);
                if sampled {
                    h.record(delay.as_secs_f64());
                }
            }
            EventKind::RetryGaveUp { reason, .. } => {
                metrics::counter!("seawall.retry.gave_up", "layer" => layer, "name" => name, "reason" => reason.as_str())
                    .increment(n);
            }
            EventKind::BudgetExhausted => {
                metrics::counter!("seawall.retry.budget_exhausted", "layer" => layer, "name" => name)
                    .increment(n);
            }
            EventKind::LimitChanged { from, to } => {
                // As built (from the limit to itself): an adaptive limit's
                // in-flight gauge is there too, at 0, before a window closes.
                if from == to && e.layer == super::LayerKind::AdaptiveLimit {
                    metrics::gauge!("seawall.limit.inflight", "layer" => layer, "name" => name.clone())
                        .set(0.0);
                }
                metrics::gauge!("seawall.limit", "layer" => layer, "name" => name).set(to as f64);
            }
            EventKind::LimitSampled {
                limit,
                peak_inflight,
                ..
            } => {
                metrics::gauge!("seawall.limit", "layer" => layer, "name" => name.clone())
                    .set(limit as f64);
                metrics::gauge!("seawall.limit.inflight", "layer" => layer, "name" => name)
                    .set(peak_inflight as f64);
            }
            EventKind::InputIgnored { input, reason } => {
                metrics::counter!("seawall.input.ignored", "layer" => layer, "name" => name, "input" => input, "reason" => reason)
                    .increment(n);
            }
            EventKind::HedgeSent { .. } => {
                metrics::counter!("seawall.hedges", "layer" => layer, "name" => name).increment(n);
            }
            EventKind::FallbackUsed { reason } => {
                metrics::counter!("seawall.fallbacks", "layer" => layer, "name" => name, "reason" => reason.as_str())
                    .increment(n);
            }
            EventKind::Reconfigured => {
                metrics::counter!("seawall.reconfigurations", "layer" => layer, "name" => name)
                    .increment(n);
            }
            EventKind::EndpointEjected { reason, .. } => {
                metrics::counter!("seawall.ejections", "layer" => layer, "name" => name, "reason" => reason)
                    .increment(n);
            }
            EventKind::BackendError { backend, cause } => {
                metrics::counter!("seawall.backend.errors", "layer" => layer, "name" => name, "backend" => backend, "reason" => cause)
                    .increment(n);
            }
        }
    }
}
