use crate::stripe::Striped;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::handle::BulkheadHandle;
use super::queue::{Engine, QueueOrder, Settings};
use super::service::Bulkhead;
use crate::error::{ConfigError, Name};
#[cfg(feature = "http")]
use crate::hold::BodyEnd;
use crate::hold::Head;
use crate::observe::Observer;

const KIND: &str = "bulkhead";

/// The largest accepted `max_concurrent` and `max_queue`.
pub const MAX_LIMIT: usize = 1_000_000;

/// Applies a [`Bulkhead`] to services: at most `max_concurrent` calls in
/// flight, at most `max_queue` callers waiting for a turn.
///
/// The layer owns the bulkhead's state (permits and queue) in an `Arc`: every
/// service built from one layer, and every clone of those services, shares the
/// same permits. Build one layer per dependency or route you want to isolate,
/// and give each its own [`name`](BulkheadBuilder::name).
///
/// See the [module docs](crate::bulkhead) for behaviour and an example.
///
/// The layer lets go of a permit when the response arrives; with
/// [`until_body_end`](Self::until_body_end) (the protocol presets), when
/// its body ends or is dropped (see [`hold`](crate::hold)).
pub struct BulkheadLayer<M = Head> {
    engine: Striped<Engine>,
    backpressure: bool,
    hold: PhantomData<fn() -> M>,
}

impl<M> Clone for BulkheadLayer<M> {
    fn clone(&self) -> Self {
        BulkheadLayer {
            engine: self.engine.clone(),
            backpressure: self.backpressure,
            hold: PhantomData,
        }
    }
}

impl BulkheadLayer {
    /// A builder with the defaults: `max_concurrent` 25, `max_queue` 0 (reject
    /// at once when every permit is taken), `max_wait` 1 s, FIFO order, CoDel
    /// target 5 ms and interval 100 ms, no backpressure, name `"bulkhead"`, no
    /// observer.
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder::default()
    }
}

impl<M> BulkheadLayer<M> {
    /// This bulkhead, holding each permit until the response body ends,
    /// fails or is dropped (responses of type `http::Response<CallBody<B>>`;
    /// see [`hold`](crate::hold)).
    #[cfg(feature = "http")]
    pub fn until_body_end(self) -> BulkheadLayer<BodyEnd> {
        self.hold_until()
    }

    // For the stacks (a build without them does not call it).
    #[allow(dead_code)]
    pub(crate) fn hold_until<M2>(self) -> BulkheadLayer<M2> {
        BulkheadLayer {
            engine: self.engine,
            backpressure: self.backpressure,
            hold: PhantomData,
        }
    }

    /// A handle reading this bulkhead's permits and queue.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle {
            engine: Arc::clone(self.engine.arc()),
        }
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        self.engine.name.as_str()
    }

    /// Its engine (a tenant's bulkhead in the server stack calls through
    /// it directly).
    #[cfg(feature = "keyed")]
    pub(crate) fn engine(&self) -> &Striped<Engine> {
        &self.engine
    }

    /// A new bulkhead with this one's settings, name and observer, and
    /// permits of its own (a new tenant's): the settings were checked and
    /// the layer announced to the observer when this one was built.
    #[cfg(feature = "keyed")]
    pub(crate) fn fresh(&self) -> Self {
        let engine = &self.engine;
        BulkheadLayer {
            engine: Striped::new(Engine::new(
                engine.settings.clone(),
                engine.name.clone(),
                engine.observer.clone(),
            )),
            backpressure: self.backpressure,
            hold: PhantomData,
        }
    }
}

impl<S, M> Layer<S> for BulkheadLayer<M> {
    type Service = Bulkhead<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::from_parts(inner, self.engine.clone(), self.backpressure)
    }
}

impl<M> fmt::Debug for BulkheadLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("handle", &self.handle())
            .field("backpressure", &self.backpressure)
            .finish()
    }
}

/// Builds a [`BulkheadLayer`]; [`build`](BulkheadBuilder::build) validates the
/// settings.
#[derive(Debug, Clone)]
pub struct BulkheadBuilder {
    max_concurrent: usize,
    max_queue: usize,
    max_wait: Duration,
    order: QueueOrder,
    codel_target: Duration,
    codel_interval: Duration,
    backpressure: bool,
    name: Name,
    observer: Observer,
    /// `max_concurrent` was set (a server stack derives its own otherwise).
    max_set: bool,
}

impl Default for BulkheadBuilder {
    fn default() -> Self {
        BulkheadBuilder {
            max_concurrent: 25,
            max_queue: 0,
            max_wait: Duration::from_secs(1),
            order: QueueOrder::Fifo,
            codel_target: Duration::from_millis(5),
            codel_interval: Duration::from_millis(100),
            backpressure: false,
            name: Name::from(KIND),
            observer: Observer::none(),
            max_set: false,
        }
    }
}

impl BulkheadBuilder {
    /// Calls allowed in flight at once (default 25, Resilience4j's
    /// `maxConcurrentCalls`). Must be in `1..=1_000_000`.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self.max_set = true;
        self
    }

    stacks_only! {
        /// A default `max_concurrent` of a stack's own, not marked as set.
        pub(crate) fn default_max_concurrent(mut self, n: usize) -> Self {
            self.max_concurrent = n;
            self
        }
    }

    stacks_only! {
        /// Whether [`max_concurrent`](Self::max_concurrent) was called.
        pub(crate) fn max_concurrent_set(&self) -> bool {
            self.max_set
        }
    }

    /// Callers allowed to wait for a permit (default 0: reject at once when
    /// every permit is taken, like Resilience4j's `maxWaitDuration` 0 and
    /// Polly's `QueueLimit` 0). Must be at most `1_000_000`.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// The longest a caller waits in the queue (default 1 s). A caller also
    /// stops waiting at its request deadline
    /// ([`deadline::current()`](crate::deadline::current)) if that comes
    /// first. Must be above zero and at most
    /// [`MAX_BUDGET`](crate::deadline::MAX_BUDGET). In `backpressure` mode a
    /// caller waits in `poll_ready` instead, where neither bounds it (a
    /// service has no request, and no timer of its own, there): bound it
    /// above, with the caller's own timeout.
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// The order waiting callers are admitted in (default
    /// [`QueueOrder::Fifo`]).
    pub fn queue_order(mut self, order: QueueOrder) -> Self {
        self.order = order;
        self
    }

    /// Shorthand for `queue_order(QueueOrder::Lifo)`.
    pub fn lifo(self) -> Self {
        self.queue_order(QueueOrder::Lifo)
    }

    /// Shorthand for `queue_order(QueueOrder::Codel)`.
    pub fn codel(self) -> Self {
        self.queue_order(QueueOrder::Codel)
    }

    /// CoDel's target queueing delay (default 5 ms): once the queue is
    /// standing, waiters older than this are rejected. Must be above zero and
    /// below the interval.
    pub fn codel_target(mut self, d: Duration) -> Self {
        self.codel_target = d;
        self
    }

    /// CoDel's interval (default 100 ms): a queue that has not been empty for
    /// this long is standing; while it drains, a waiter may wait this long at
    /// most. Must be above the target and at most 1 hour.
    pub fn codel_interval(mut self, d: Duration) -> Self {
        self.codel_interval = d;
        self
    }

    /// Backpressure mode (default off): `poll_ready` reserves a permit and
    /// returns `Pending` while none is free, instead of queueing inside the
    /// response future. For callers that act on readiness, such as balancers.
    /// Every clone polled waits, unless `max_queue` bounds how many may (one
    /// more then fails `poll_ready`). See the [module
    /// docs](crate::bulkhead#readiness).
    pub fn backpressure(mut self, on: bool) -> Self {
        self.backpressure = on;
        self
    }

    crate::observe::name_and_observer!(
        "The instance name, in events and rejections (default `\"bulkhead\"`).",
        "The observer that receives this bulkhead's events (default: none)."
    );

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        check_max_concurrent(self.max_concurrent)?;
        if self.max_queue > MAX_LIMIT {
            return Err(ConfigError::new(
                KIND,
                format!(
                    "max_queue must be at most {MAX_LIMIT}, got {}",
                    self.max_queue
                ),
            ));
        }
        if self.max_wait.is_zero() || self.max_wait > crate::deadline::MAX_BUDGET {
            return Err(ConfigError::new(
                KIND,
                format!(
                    "max_wait must be above zero and at most {:?} (use max_queue(0) to reject at once), got {:?}",
                    crate::deadline::MAX_BUDGET,
                    self.max_wait
                ),
            ));
        }
        if self.codel_target.is_zero() || self.codel_target >= self.codel_interval {
            return Err(ConfigError::new(
                KIND,
                format!(
                    "codel_target must be above zero and below codel_interval ({:?}), got {:?}",
                    self.codel_interval, self.codel_target
                ),
            ));
        }
        if self.codel_interval > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                KIND,
                format!(
                    "codel_interval must be at most 1h, got {:?}",
                    self.codel_interval
                ),
            ));
        }
        let settings = Settings {
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            order: self.order,
            codel_target: self.codel_target,
            codel_interval: self.codel_interval,
            unbounded_readiness: self.backpressure && self.max_queue == 0,
        };
        {
            use super::queue::GiveUp;
            self.observer.layer_built(
                crate::observe::LayerKind::Bulkhead,
                self.name.as_str(),
                &[
                    crate::observe::refusal(
                        crate::error::RejectionKind::BulkheadFull,
                        GiveUp::QueueFull.detail(),
                    ),
                    crate::observe::refusal(
                        crate::error::RejectionKind::BulkheadFull,
                        GiveUp::MaxWait.detail(),
                    ),
                    crate::observe::refusal(
                        crate::error::RejectionKind::BulkheadFull,
                        GiveUp::Codel.detail(),
                    ),
                    crate::observe::refusal(
                        crate::error::RejectionKind::DeadlineExceeded,
                        GiveUp::Deadline.detail(),
                    ),
                ],
            );
        }
        let engine = Striped::new(Engine::new(settings, self.name, self.observer));
        // Reported once as built (from the limit to itself), so that a
        // limit gauge has the bulkhead's value from the start, as a state
        // gauge has the breaker's.
        engine.observer.emit(
            crate::observe::LayerKind::Bulkhead,
            engine.name.as_str(),
            crate::observe::EventKind::LimitChanged {
                from: self.max_concurrent,
                to: self.max_concurrent,
            },
        );
        Ok(BulkheadLayer {
            engine,
            backpressure: self.backpressure,
            hold: PhantomData,
        })
    }
}

/// The one rule for a limit of calls in flight: the builder's, a run-time
/// change's and a reload's.
pub(crate) fn check_max_concurrent(n: usize) -> Result<(), ConfigError> {
    if n == 0 || n > MAX_LIMIT {
        return Err(ConfigError::new(
            KIND,
            format!("max_concurrent must be in 1..={MAX_LIMIT}, got {n}"),
        ));
    }
    Ok(())
}
