use super::{Event, EventKind, Hook, State};

/// A [`Hook`] that reports through the [`metrics`] facade (feature `metrics`).
///
/// The metric names and labels are listed in the [module docs](super). Install
/// any `metrics` recorder (for example `metrics-exporter-prometheus`) and pass
/// `Observer::new(MetricsHook::new())` to the layers.
///
/// Label values are built only when an event is reported; with no hook set,
/// layers do none of this work.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsHook;

impl MetricsHook {
    /// Creates the hook.
    pub const fn new() -> Self {
        MetricsHook
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
        let layer = e.layer.as_str();
        let name = e.name.to_owned();
        match e.kind {
            EventKind::CallStarted => {}
            EventKind::CallFinished { outcome, latency } => {
                metrics::counter!("seawall.calls", "layer" => layer, "name" => name.clone(), "outcome" => outcome.as_str())
                    .increment(1);
                metrics::histogram!("seawall.call.duration", "layer" => layer, "name" => name, "outcome" => outcome.as_str())
                    .record(latency.as_secs_f64());
            }
            EventKind::Rejected { reason, detail, .. } => {
                metrics::counter!("seawall.rejections", "layer" => layer, "name" => name, "reason" => reason.as_str(), "detail" => detail)
                    .increment(1);
            }
            EventKind::StateChanged { to, .. } => self.set_state(e.layer, e.name, to),
            EventKind::RetryScheduled { delay, .. } => {
                metrics::counter!("seawall.retries", "layer" => layer, "name" => name.clone())
                    .increment(1);
                metrics::histogram!("seawall.retry.delay", "layer" => layer, "name" => name)
                    .record(delay.as_secs_f64());
            }
            EventKind::RetryGaveUp { reason, .. } => {
                metrics::counter!("seawall.retry.gave_up", "layer" => layer, "name" => name, "reason" => reason.as_str())
                    .increment(1);
            }
            EventKind::BudgetExhausted => {
                metrics::counter!("seawall.retry.budget_exhausted", "layer" => layer, "name" => name)
                    .increment(1);
            }
            EventKind::LimitChanged { to, .. } => {
                metrics::gauge!("seawall.limit", "layer" => layer, "name" => name).set(to as f64);
            }
            EventKind::InputIgnored { input, reason } => {
                metrics::counter!("seawall.input.ignored", "layer" => layer, "name" => name, "input" => input, "reason" => reason)
                    .increment(1);
            }
            EventKind::BackendError { backend, cause } => {
                metrics::counter!("seawall.backend.errors", "layer" => layer, "name" => name, "backend" => backend, "reason" => cause)
                    .increment(1);
            }
        }
    }
}
