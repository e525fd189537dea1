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
    /// was built (see [`Hook::on_layer_built`](super::Hook::on_layer_built)).
    pub(crate) fn layer_built(&self, kind: LayerKind, name: &str) {
        if let Some(hook) = &self.hook {
            hook.on_layer_built(&counted_by(kind, name));
        }
    }
}

/// The events that count something a layer of `kind` may report, one per
/// series (its calls by outcome, its refusals by reason and detail, its
/// retries, …), with nothing in them that a series is keyed by but their
/// kind: given to [`Hook::on_layer_built`](super::Hook::on_layer_built) as
/// each layer is built, so that a metrics hook publishes them at zero.
pub(crate) fn counted_by(kind: LayerKind, name: &str) -> Vec<Event<'_>> {
    use RejectionKind as R;
    let refused = |reason, detail| EventKind::Rejected {
        reason,
        detail,
        retry_after: None,
    };
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
    let rejections: &[(RejectionKind, &'static str)] = match kind {
        LayerKind::Deadline => &[
            (R::DeadlineExceeded, "expired_on_arrival"),
            (R::DeadlineExceeded, "expired_waiting_ready"),
            (R::DeadlineExceeded, "timed_out"),
        ],
        LayerKind::AttemptTimeout => &[(R::AttemptTimeout, "timed_out")],
        LayerKind::Retry => &[(R::DeadlineExceeded, "deadline_spent")],
        LayerKind::CircuitBreaker => &[
            (R::CircuitOpen, "open"),
            (R::CircuitOpen, "half_open_full"),
            (R::CircuitOpen, "forced_open"),
        ],
        LayerKind::Bulkhead => &[
            (R::BulkheadFull, "queue_full"),
            (R::BulkheadFull, "max_wait"),
            (R::BulkheadFull, "codel"),
            (R::DeadlineExceeded, "deadline"),
        ],
        LayerKind::AdaptiveLimit => &[(R::Overloaded, "limit"), (R::Overloaded, "doomed")],
        LayerKind::Throttle => &[(R::Overloaded, "throttled")],
        LayerKind::RateLimit => &[(R::RateLimited, "limit")],
        _ => &[],
    };
    kinds.extend(rejections.iter().map(|&(r, d)| refused(r, d)));
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
                ]
                .map(|reason| EventKind::RetryGaveUp {
                    attempts: 1,
                    reason,
                }),
            );
        }
        LayerKind::Ejection => kinds.extend(
            [
                "consecutive_failures",
                "success_rate",
                "latency",
                "probe_failed",
                "busy_alone",
            ]
            .map(|reason| EventKind::EndpointEjected {
                reason,
                duration: Duration::ZERO,
            }),
        ),
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
