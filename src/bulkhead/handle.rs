use std::fmt;
use std::sync::Arc;

use super::queue::{Engine, QueueOrder};

/// A view of one bulkhead's state, for tests, metrics and health endpoints,
/// and its limit changed at run time
/// ([`set_max_concurrent`](Self::set_max_concurrent)). Cheap to clone; every clone sees the same bulkhead as the layer
/// it came from and every service built from that layer.
///
/// ```
/// use seawall::bulkhead::BulkheadLayer;
///
/// let layer = BulkheadLayer::builder().max_concurrent(4).max_queue(2).build()?;
/// let handle = layer.handle();
/// assert_eq!(handle.available_permits(), 4);
/// assert_eq!(handle.in_flight(), 0);
/// assert_eq!(handle.queue_len(), 0);
/// # Ok::<(), seawall::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct BulkheadHandle {
    pub(crate) engine: Arc<Engine>,
}

impl BulkheadHandle {
    /// The bulkhead's instance name.
    pub fn name(&self) -> &str {
        self.engine.name.as_str()
    }

    /// Free permits right now (`max_concurrent` when idle).
    pub fn available_permits(&self) -> usize {
        self.engine.available_permits()
    }

    /// Permits held right now: calls in flight, plus waiters that were just
    /// handed a permit and have not yet started.
    pub fn in_flight(&self) -> usize {
        self.engine
            .max_concurrent()
            .saturating_add(self.engine.debt())
            .saturating_sub(self.engine.available_permits())
    }

    /// Callers waiting for a permit right now.
    pub fn queue_len(&self) -> usize {
        self.engine.queue_len()
    }

    /// The maximum of calls in flight now (as configured, or as last set
    /// with [`set_max_concurrent`](Self::set_max_concurrent)).
    pub fn max_concurrent(&self) -> usize {
        self.engine.max_concurrent()
    }

    /// Changes the maximum of calls in flight at run time (an operator's
    /// reload), without a lock or an allocation on the request path.
    /// Growing admits waiting callers at once; shrinking refuses new calls
    /// until enough calls in flight have finished (their permits stay
    /// valid). Reported as a
    /// [`LimitChanged`](crate::observe::EventKind::LimitChanged) event; the
    /// limit in place again changes nothing and reports nothing.
    ///
    /// ```
    /// use seawall::bulkhead::BulkheadLayer;
    ///
    /// let layer = BulkheadLayer::builder().max_concurrent(50).build().unwrap();
    /// let handle = layer.handle();
    /// handle.set_max_concurrent(20).unwrap();
    /// assert_eq!(handle.max_concurrent(), 20);
    /// assert_eq!(handle.available_permits(), 20);
    /// assert!(handle.set_max_concurrent(0).is_err()); // refused: nothing changes
    /// assert_eq!(handle.max_concurrent(), 20);
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::error::ConfigError) when `n` is outside
    /// `1..=`[`MAX_LIMIT`](super::MAX_LIMIT); the limit is left unchanged.
    pub fn set_max_concurrent(&self, n: usize) -> Result<(), crate::error::ConfigError> {
        super::layer::check_max_concurrent(n)?;
        let from = self.engine.resize(n);
        // The limit in place again is no change, and reports none.
        if from != n {
            self.engine.observer.emit(
                crate::observe::LayerKind::Bulkhead,
                self.engine.name.as_str(),
                crate::observe::EventKind::LimitChanged { from, to: n },
            );
        }
        Ok(())
    }

    /// The configured maximum of waiting callers.
    pub fn max_queue(&self) -> usize {
        self.engine.settings.max_queue
    }

    /// The configured queue order.
    pub fn queue_order(&self) -> QueueOrder {
        self.engine.settings.order
    }
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("name", &self.name())
            .field("available_permits", &self.available_permits())
            .field("max_concurrent", &self.max_concurrent())
            .field("queue_len", &self.queue_len())
            .field("max_queue", &self.max_queue())
            .field("queue_order", &self.queue_order())
            .finish()
    }
}
