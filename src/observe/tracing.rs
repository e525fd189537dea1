use super::{Event, EventKind, Hook, State};

/// A [`Hook`] that turns events into `tracing` events with structured fields
/// (`layer`, `name`, and the event's own fields), under the target `seawall`.
///
/// Levels: calls at `trace`; rejections, retries and ignored input at `debug`;
/// state transitions at `info` (`warn` when a breaker opens or a backend
/// degrades; a breaker's turns between open and half-open through an
/// outage, each about ten times a second with the defaults, at `debug`:
/// the outage was said once as it opened, and its end is said as the
/// breaker closes); limit changes and an exhausted retry budget (one event per
/// retry refused) at `debug`; backend errors at `warn`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingHook;

impl TracingHook {
    /// Creates the hook.
    pub const fn new() -> Self {
        TracingHook
    }
}

impl Hook for TracingHook {
    fn on_event(&self, e: &Event<'_>) {
        let layer = e.layer.as_str();
        let name = e.name;
        match e.kind {
            EventKind::CallStarted => {
                tracing::trace!(target: "seawall", layer, name, "call started")
            }
            EventKind::CallFinished { outcome, latency } => tracing::trace!(
                target: "seawall",
                layer,
                name,
                outcome = outcome.as_str(),
                latency_s = latency.as_secs_f64(),
                "call finished"
            ),
            EventKind::Rejected {
                reason,
                detail,
                retry_after,
            } => tracing::debug!(
                target: "seawall",
                layer,
                name,
                reason = reason.as_str(),
                detail,
                retry_after_s = retry_after.map(|d| d.as_secs_f64()),
                "request rejected"
            ),
            EventKind::StateChanged {
                from,
                to,
                failure_rate,
                slow_call_rate,
            } => {
                if from == to {
                    // The initial state, reported once for gauges: not news.
                    tracing::debug!(
                        target: "seawall",
                        layer,
                        name,
                        state = to.as_str(),
                        "initial state"
                    )
                } else {
                    // One event, its level and message by the change.
                    macro_rules! changed {
                        ($level:ident, $message:literal) => {
                            tracing::$level!(
                                target: "seawall",
                                layer,
                                name,
                                from = from.as_str(),
                                to = to.as_str(),
                                failure_rate,
                                slow_call_rate,
                                $message
                            )
                        };
                    }
                    if from == State::HalfOpen && to == State::Open {
                        // A failed probe: the outage goes on.
                        changed!(debug, "probe failed, open again")
                    } else if from == State::Open
                        && to == State::HalfOpen
                        && e.layer == super::LayerKind::CircuitBreaker
                    {
                        // The open time is over: a probe goes (as often
                        // as a failed one reopens it).
                        changed!(debug, "open time over, probing")
                    } else if matches!(
                        to,
                        State::Open | State::ForcedOpen | State::Degraded | State::TimeoutsCommon
                    ) {
                        changed!(warn, "state changed")
                    } else {
                        changed!(info, "state changed")
                    }
                }
            }
            EventKind::RetryScheduled { attempt, delay } => tracing::debug!(
                target: "seawall",
                layer,
                name,
                attempt,
                delay_s = delay.as_secs_f64(),
                "retry scheduled"
            ),
            EventKind::RetryGaveUp { attempts, reason } => tracing::debug!(
                target: "seawall",
                layer,
                name,
                attempts,
                reason = reason.as_str(),
                "retry gave up"
            ),
            EventKind::BudgetExhausted => {
                // One per retry refused: at `warn`, an outage would log one
                // line per request.
                tracing::debug!(target: "seawall", layer, name, "retry budget exhausted")
            }
            EventKind::LimitChanged { from, to } => {
                tracing::debug!(target: "seawall", layer, name, from, to, "limit changed")
            }
            EventKind::LimitSampled {
                limit,
                peak_inflight,
                rtt,
            } => tracing::trace!(
                target: "seawall",
                layer,
                name,
                limit,
                peak_inflight,
                rtt_ms = rtt.as_secs_f64() * 1e3,
                "limit window closed"
            ),
            EventKind::InputIgnored { input, reason } => {
                tracing::debug!(target: "seawall", layer, name, input, reason, "input ignored")
            }
            EventKind::HedgeSent { attempt, delay } => tracing::debug!(
                target: "seawall",
                layer,
                name,
                attempt,
                delay_ms = delay.as_secs_f64() * 1e3,
                "hedge sent"
            ),
            EventKind::FallbackUsed { reason } => {
                tracing::debug!(target: "seawall", layer, name, reason = reason.as_str(), "fallback used")
            }
            EventKind::Reconfigured => {
                tracing::info!(target: "seawall", layer, name, "settings changed")
            }
            EventKind::EndpointEjected { reason, duration } => tracing::warn!(
                target: "seawall",
                layer,
                name,
                reason,
                duration_ms = duration.as_secs_f64() * 1e3,
                "endpoint ejected"
            ),
            EventKind::BackendError { backend, cause } => {
                tracing::warn!(target: "seawall", layer, name, backend, cause, "backend error")
            }
        }
    }
}
