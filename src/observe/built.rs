//! What a layer tells its observer as it is built: the series it may count,
//! for a metrics hook to publish at zero (see `Hook::on_layer_built`).
// Unused in a build without any layer.
#![cfg_attr(
    not(any(
        feature = "deadline",
        feature = "retry",
        feature = "circuit-breaker",
        feature = "bulkhead",
        feature = "shed",
        feature = "rate-limit",
        feature = "hedge",
        feature = "fallback",
        feature = "eject"
    )),
    allow(dead_code)
)]

use std::time::Duration;

use super::{Event, EventKind, FallbackReason, GiveUpReason, LayerKind, Observer, Outcome, State};
use crate::error::RejectionKind;

impl Observer {
    /// Tells the hook, if one listens, that a layer of `kind` named `name`
    /// was built (see [`Hook::on_layer_built`](super::Hook::on_layer_built)):
    /// the events every layer of its kind may count, and `own`, those of
    /// its own (its refusals by reason and detail, in the words its module
    /// reports them with; see [`refusal`]).
    pub(crate) fn layer_built(&self, kind: LayerKind, name: &str, own: &[EventKind]) {
        if let Some(hook) = &self.hook {
            hook.on_layer_built(&counted_by(kind, name, own));
        }
    }
}

/// A refusal's event as a layer lists it for [`Observer::layer_built`].
pub(crate) const fn refusal(reason: RejectionKind, detail: &'static str) -> EventKind {
    EventKind::Rejected {
        reason,
        detail,
        retry_after: None,
    }
}

/// The events that count something a layer of `kind` may report, one per
/// series (its calls by outcome, its state changes, its retries, …, and
/// `own`), with nothing in them that a series is keyed by but their kind.
fn counted_by<'a>(kind: LayerKind, name: &'a str, own: &[EventKind]) -> Vec<Event<'a>> {
    let mut kinds: Vec<EventKind> = Vec::new();
    if matches!(
        kind,
        LayerKind::Retry
            | LayerKind::CircuitBreaker
            | LayerKind::Bulkhead
            | LayerKind::AdaptiveLimit
            | LayerKind::Throttle
    ) {
        kinds.extend(
            [
                Outcome::Success,
                Outcome::Failure,
                Outcome::Overloaded,
                Outcome::Refused,
                Outcome::Ignored,
            ]
            .map(|outcome| EventKind::CallFinished {
                outcome,
                latency: Duration::ZERO,
            }),
        );
    }
    kinds.extend_from_slice(own);
    if matches!(
        kind,
        LayerKind::CircuitBreaker | LayerKind::Retry | LayerKind::RateLimit
    ) {
        // Each state entered, from another (a rate limit's: with Redis).
        let states = State::all_for(kind);
        kinds.extend(states.iter().map(|&to| EventKind::StateChanged {
            from: *states.iter().find(|&&s| s != to).unwrap_or(&to),
            to,
            failure_rate: None,
            slow_call_rate: None,
        }));
    }
    match kind {
        LayerKind::Retry => {
            kinds.push(EventKind::RetryScheduled {
                attempt: 2,
                delay: Duration::ZERO,
            });
            kinds.push(EventKind::BudgetExhausted);
            kinds.extend(
                [
                    GiveUpReason::MaxAttempts,
                    GiveUpReason::BudgetExhausted,
                    GiveUpReason::Deadline,
                    GiveUpReason::Pushback,
                    GiveUpReason::NotRetryable,
                    GiveUpReason::NotReplayable,
                    GiveUpReason::TimeoutsCommon,
                    GiveUpReason::CircuitOpen,
                    GiveUpReason::RetriesFutile,
                ]
                .map(|reason| EventKind::RetryGaveUp {
                    attempts: 1,
                    reason,
                }),
            );
        }
        LayerKind::Hedge => kinds.push(EventKind::HedgeSent {
            attempt: 2,
            delay: Duration::ZERO,
        }),
        LayerKind::Fallback => kinds.extend(
            [
                FallbackReason::Refused,
                FallbackReason::Overloaded,
                FallbackReason::Failure,
                FallbackReason::Deadline,
            ]
            .map(|reason| EventKind::FallbackUsed { reason }),
        ),
        _ => {}
    }
    kinds
        .into_iter()
        .map(|k| Event::new(kind, name, k))
        .collect()
}
