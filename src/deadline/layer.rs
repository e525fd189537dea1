use crate::stripe::Striped;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use tower_layer::Layer;

use super::Deadline;
use super::service::DeadlineService;
use crate::error::{ConfigError, Name};
use crate::observe::Observer;

/// Configuration shared by every service built from one layer.
pub(crate) struct Shared {
    pub(crate) limit: Duration,
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    /// An attempt timeout's: how close to its own end the request's
    /// deadline may fall and the attempt still end as its own (see
    /// `AttemptTimeoutService::call`); zero for a deadline.
    pub(crate) own_end: Duration,
    /// An attempt timeout's link to the retry layer above it in a stack:
    /// set while timeouts are common, when a timed-out attempt is not
    /// retried (its budget's judgement), so that an attempt reaching its
    /// limit then is not cut but runs on to the request's deadline.
    pub(crate) retry_signal: Option<super::RetrySignal>,
    /// A deadline's: the time it keeps before a deadline from above (a
    /// server stack's task-local one, when a handler makes this call, or
    /// one the request carries), at most a tenth of what is left of it;
    /// zero for other timers. A client stack's, so that its own timer ends
    /// a call that hangs before the server's drops it: the handler has the
    /// error to answer with, and an attempt that ran on to the deadline
    /// counts to the breaker.
    pub(crate) upstream_margin: Duration,
}

impl Shared {
    /// A timer's settings with `limit` (zero for a layer that only reads
    /// deadlines), under `name`, reporting to `observer`: no margins, no
    /// link to a retry layer (each timer sets its own on what this gives).
    pub(crate) fn new(limit: Duration, name: Name, observer: Observer) -> Self {
        Shared {
            limit,
            name,
            observer,
            own_end: Duration::ZERO,
            retry_signal: None,
            upstream_margin: Duration::ZERO,
        }
    }

    /// `upstream`, a deadline from above, less this layer's margin before
    /// it (at most a tenth of what is left of it at `now`).
    #[inline]
    pub(crate) fn before_upstream(&self, upstream: Deadline, now: Instant) -> Deadline {
        if self.upstream_margin.is_zero() {
            return upstream;
        }
        let margin = self.upstream_margin.min(upstream.remaining_from(now) / 10);
        Deadline::at(
            upstream
                .instant()
                .checked_sub(margin)
                .unwrap_or(upstream.instant()),
        )
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("limit", &self.limit)
            .field("name", &self.name)
            .field("observer", &self.observer)
            .finish()
    }
}

/// Gives every request a total time budget: everything below this layer,
/// retries included, must finish within it.
///
/// See the [module documentation](crate::deadline) for the full behaviour.
/// The configuration lives in an `Arc`: every service and clone built from one
/// layer shares it.
///
/// ```
/// use std::time::Duration;
/// use seawall::deadline::DeadlineLayer;
///
/// // Quick form: name "deadline", no observer.
/// let layer = DeadlineLayer::new(Duration::from_secs(2))?;
/// assert_eq!(layer.budget(), Duration::from_secs(2));
///
/// // Validated form.
/// let layer = DeadlineLayer::builder(Duration::from_millis(800)).name("checkout").build()?;
/// assert!(DeadlineLayer::new(Duration::ZERO).is_err());
/// # Ok::<(), seawall::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct DeadlineLayer {
    shared: Striped<Shared>,
    in_request: bool,
}

impl DeadlineLayer {
    /// A layer with a total budget of `budget`, named `"deadline"`, with no
    /// observer: `builder(budget).build()`, so a zero budget is refused.
    pub fn new(budget: Duration) -> Result<Self, ConfigError> {
        Self::builder(budget).build()
    }

    /// A builder for a layer with a total budget of `budget`.
    pub fn builder(budget: Duration) -> DeadlineLayerBuilder {
        DeadlineLayerBuilder {
            budget,
            name: Name::from("deadline"),
            observer: Observer::none(),
            in_request: true,
            upstream_margin: Duration::ZERO,
        }
    }

    /// The total budget.
    pub fn budget(&self) -> Duration {
        self.shared.limit
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        self.shared.name.as_str()
    }
}

impl fmt::Debug for DeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineLayer")
            .field("budget", &self.shared.limit)
            .field("name", &self.shared.name)
            .field("observer", &self.shared.observer)
            .finish()
    }
}

impl DeadlineLayer {
    /// The service with the timer kind `X` (the stacks choose it).
    pub(crate) fn layer_with<S, X>(&self, inner: S) -> DeadlineService<S, X> {
        DeadlineService::new(inner, self.shared.clone(), self.in_request)
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.layer_with(inner)
    }
}

/// Builds a [`DeadlineLayer`]; see [`DeadlineLayer::builder`].
#[derive(Debug, Clone)]
pub struct DeadlineLayerBuilder {
    budget: Duration,
    name: Name,
    observer: Observer,
    in_request: bool,
    upstream_margin: Duration,
}

impl DeadlineLayerBuilder {
    /// Whether the deadline is also stored in the request when storing it
    /// allocates (default `true`; an `http::Request` keeps it in its
    /// extensions, where a handler reads it with `Extension<Deadline>`:
    /// [`HasDeadline::STORING_ALLOCATES`](super::HasDeadline::STORING_ALLOCATES)).
    /// Every layer and service called within the request's task reads the
    /// task-local deadline anyway; the copy in the request carries it
    /// across a task boundary (a `tower::buffer` worker, a hop of your own)
    /// and to code that reads extensions. Storing it in extensions costs
    /// heap allocations per request; the client stack leaves it out there
    /// (the protocol presets send it as a header). A request type that
    /// stores it without allocating always gets it.
    pub fn in_request(mut self, store: bool) -> Self {
        self.in_request = store;
        self
    }

    stacks_only! {
        /// Keeps `margin` (at most a tenth of what is left) before a
        /// deadline from above: the client stacks' (`UPSTREAM_MARGIN`).
        pub(crate) fn upstream_margin(mut self, margin: Duration) -> Self {
            self.upstream_margin = margin;
            self
        }
    }

    crate::observe::name_and_observer!(
        "The instance name used in events and rejections (default `\"deadline\"`).",
        "The observer that receives this layer's events (default: none)."
    );

    /// Builds the layer. Fails if the budget is zero.
    pub fn build(self) -> Result<DeadlineLayer, ConfigError> {
        if self.budget.is_zero() {
            return Err(ConfigError::new(
                "deadline",
                "budget must be greater than zero, got 0ns",
            ));
        }
        {
            use super::service::{EXPIRED_ON_ARRIVAL, EXPIRED_WAITING_READY, TIMED_OUT};
            self.observer.layer_built(
                crate::observe::LayerKind::Deadline,
                self.name.as_str(),
                &[
                    crate::observe::refusal(
                        crate::error::RejectionKind::DeadlineExceeded,
                        EXPIRED_ON_ARRIVAL,
                    ),
                    crate::observe::refusal(
                        crate::error::RejectionKind::DeadlineExceeded,
                        EXPIRED_WAITING_READY,
                    ),
                    crate::observe::refusal(
                        crate::error::RejectionKind::DeadlineExceeded,
                        TIMED_OUT,
                    ),
                ],
            );
        }
        Ok(DeadlineLayer {
            shared: Striped::new(Shared {
                upstream_margin: self.upstream_margin,
                ..Shared::new(self.budget, self.name, self.observer)
            }),
            in_request: self.in_request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(margin: Duration) -> Shared {
        Shared {
            upstream_margin: margin,
            ..Shared::new(Duration::from_secs(1), Name::from("t"), Observer::none())
        }
    }

    /// The margin before a deadline from above: 10 ms, at most a tenth of
    /// what is left, none for a deadline already passed or a layer without.
    #[test]
    fn the_margin_before_a_deadline_from_above() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let up = |left| Deadline::at(now + ms(left));
        let client = shared(ms(10));
        assert_eq!(client.before_upstream(up(950), now), up(940));
        assert_eq!(client.before_upstream(up(50), now), up(45));
        assert_eq!(client.before_upstream(up(0), now), up(0));
        let passed = Deadline::at(now);
        assert_eq!(client.before_upstream(passed, now + ms(5)), passed);
        assert_eq!(
            shared(Duration::ZERO).before_upstream(up(950), now),
            up(950)
        );
    }
}
