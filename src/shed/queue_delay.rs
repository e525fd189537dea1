//! QueueDelay: a concurrency limit that keeps the queue in front of a
//! service short, by comparing each window's latency with the service's
//! latency when nothing queues.

use super::algorithm::{LimitAlgorithm, WindowSample};
use crate::error::ConfigError;

/// A limit that converges on what the service can run at once, from 1 to
/// thousands, by keeping the queueing delay small. Not the default: see
/// "When to choose it" below.
///
/// For each window (`rtt` = the window's average latency):
///
/// 1. `base` is the service's latency when nothing queues, measured in a
///    *draining window*: every `drain_every` windows under load (and once
///    right after the first), one window runs at a quarter of the limit, so
///    the queue empties and the window's latency is the service's own.
///    Between drains, a lower window latency lowers `base`.
/// 2. While `rtt ≤ base × (1 + tolerance)` nothing queues: when at least
///    half the limit was in flight, the limit grows, ×2 per window until
///    the first sign of queueing, then by `increase` (5 %, at least 1) per
///    window.
/// 3. When `rtt` is above that with at least a quarter of the limit in
///    flight, requests queue: `limit = limit × base × (1 + tolerance) /
///    rtt` (at most halved per window), the limit at which the queueing
///    delay would be `tolerance` of the service time. A window with calls
///    that timed out or were shed below cuts the limit by a tenth at least.
/// 4. Otherwise the window says nothing about capacity: the limit stays
///    put.
///
/// Without draining windows `base` would only be measured with a queue in
/// front of the service and the limit would creep upward; each one costs
/// up to three quarters of one window's throughput while the service is
/// saturated (about 4 % with the defaults), nothing otherwise.
///
/// The draining window assumes a window outlasts the queue in front of the
/// service (service times well under the window, 1 s by default).
///
/// A cut that does not bring the latency down, while it is more than twice
/// the target, means the service itself got slower (a brownout), not
/// busier: `base` is measured again at once, and the limit grows back.
///
/// Defaults: initial 20, min 1, max 1000, tolerance 0.1, increase 0.05,
/// a draining window every 20.
///
/// # When to choose it
///
/// Measured in `tests/shed` (a backend of 4 to 256 slots, three times its
/// capacity offered for a minute): the limit settles at 1.25× the slots and
/// the backend serves 97–98 % of its capacity. The default,
/// [`Gradient2`](super::Gradient2), settled at 44 for 4 slots and at 66
/// for 256: a queue of 40 in front of the small backend, the large one kept
/// at 22 % of its capacity. Choose `QueueDelay` when the backend's
/// concurrency is far from 20–60.
///
/// It is not the default because it reads a slow, steady latency increase
/// as queueing: in the storm's latency creep (service time doubling every
/// 5 s) it kept 38 % of requests where Gradient2 kept 69 %, and its draining
/// windows cost 2–4 points under a flapping dependency.
///
/// ```
/// use seawall::shed::{AdaptiveLimitLayer, QueueDelay};
///
/// let layer = AdaptiveLimitLayer::builder()
///     .algorithm(QueueDelay::builder().max_limit(2000).build().unwrap())
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct QueueDelay {
    limit: f64,
    min_limit: usize,
    max_limit: usize,
    tolerance: f64,
    increase: f64,
    drain_every: usize,
    base: f64,
    slow_start: bool,
    windows: usize,
    next_drain: usize,
    /// The latency of the last window in which the limit was cut (ns).
    cut_at_rtt: Option<f64>,
    /// The limit to restore after a draining window.
    draining: Option<f64>,
}

impl Default for QueueDelay {
    fn default() -> Self {
        QueueDelayBuilder::default().build_unchecked()
    }
}

impl QueueDelay {
    /// A builder with the defaults.
    pub fn builder() -> QueueDelayBuilder {
        QueueDelayBuilder::default()
    }

    /// The latency of the service when nothing queues, in seconds (0 before
    /// the first window).
    pub fn base_rtt_secs(&self) -> f64 {
        self.base / 1e9
    }

    fn clamp(&self, limit: f64) -> f64 {
        limit.clamp(self.min_limit as f64, self.max_limit as f64)
    }
}

impl LimitAlgorithm for QueueDelay {
    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn update(&mut self, sample: &WindowSample) -> usize {
        let rtt = sample.rtt().as_nanos() as f64;
        if rtt <= 0.0 {
            // A window of drops only: no latency to learn from.
            if sample.did_drop() {
                self.limit = self.clamp(self.limit / 2.0);
            }
            return self.limit();
        }
        self.windows += 1;
        if let Some(before) = self.draining.take() {
            // The queue drained: this window's latency is the service's own.
            // A base that fell a lot may still have had a queue in it:
            // drain again soon.
            let fell = self.base > 0.0 && rtt < self.base * 0.8;
            if self.base > 0.0 && rtt > self.base * 1.25 {
                // The service itself got slower: find its capacity again.
                self.slow_start = true;
            }
            self.base = rtt;
            self.next_drain = self.windows + if fell { 3 } else { self.drain_every };
            self.limit = self.clamp(before);
            return self.limit();
        }
        if self.base <= 0.0 || rtt < self.base {
            self.base = rtt;
        }
        let busy = sample.max_inflight() as f64;
        // A cut that did not bring the latency down means the service got
        // slower, not busier: measure `base` again now.
        let cut_in_vain = self.cut_at_rtt.take().is_some_and(|before| {
            rtt >= before * 0.9 && rtt > 2.0 * self.base * (1.0 + self.tolerance)
        });
        if (cut_in_vain || self.windows >= self.next_drain) && busy > self.limit / 4.0 {
            self.draining = Some(self.limit);
            self.limit = self.clamp((self.limit / 4.0).ceil());
            return self.limit();
        }
        let target = self.base * (1.0 + self.tolerance);
        let queueing = rtt > target && busy >= self.limit / 4.0;
        if queueing || sample.did_drop() {
            // A queue: shrink to where it would be `tolerance` of the
            // service time; calls that timed out or were shed below: by a
            // tenth at least.
            let mut factor = if queueing { target / rtt } else { 1.0 };
            if sample.did_drop() {
                factor = factor.min(0.9);
            }
            self.slow_start = false;
            self.limit = self.clamp((self.limit * factor).max(self.limit / 2.0));
            self.cut_at_rtt = Some(rtt);
        } else if rtt <= target && busy >= self.limit / 2.0 {
            // No queue, and the limit was used: grow.
            self.limit = if self.slow_start {
                self.clamp(self.limit * 2.0)
            } else {
                self.clamp(self.limit + (self.limit * self.increase).max(1.0))
            };
        }
        self.limit()
    }
}

/// Builds a [`QueueDelay`]; see its docs for the defaults.
#[derive(Debug, Clone)]
pub struct QueueDelayBuilder {
    initial_limit: usize,
    min_limit: usize,
    max_limit: usize,
    tolerance: f64,
    increase: f64,
    drain_every: usize,
}

impl Default for QueueDelayBuilder {
    fn default() -> Self {
        QueueDelayBuilder {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            tolerance: 0.1,
            increase: 0.05,
            drain_every: 20,
        }
    }
}

impl QueueDelayBuilder {
    super::aimd::limit_setters!("20", "1", "1000");

    /// The queueing delay tolerated, as a share of the service's own
    /// latency (default 0.1; `0 < tolerance ≤ 10`).
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The growth per window once queueing was seen, as a share of the limit
    /// (default 0.05, at least 1 a window; `0 < increase ≤ 1`).
    pub fn increase(mut self, increase: f64) -> Self {
        self.increase = increase;
        self
    }

    /// One draining window in this many loaded windows (default 20;
    /// `2..=1000`).
    pub fn drain_every(mut self, windows: usize) -> Self {
        self.drain_every = windows;
        self
    }

    /// Builds the algorithm.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the limits are out of order (`1 ≤ min ≤
    /// initial ≤ max`), or a setting is outside its range.
    pub fn build(self) -> Result<QueueDelay, ConfigError> {
        super::aimd::validate_limits(self.initial_limit, self.min_limit, self.max_limit)?;
        let err = |m: String| Err(ConfigError::new("adaptive_limit", m));
        if !(self.tolerance > 0.0 && self.tolerance <= 10.0) {
            return err(format!(
                "tolerance must be in (0, 10], got {}",
                self.tolerance
            ));
        }
        if !(self.increase > 0.0 && self.increase <= 1.0) {
            return err(format!("increase must be in (0, 1], got {}", self.increase));
        }
        if !(2..=1000).contains(&self.drain_every) {
            return err(format!(
                "drain_every must be in 2..=1000 windows, got {}",
                self.drain_every
            ));
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> QueueDelay {
        QueueDelay {
            limit: self.initial_limit as f64,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            tolerance: self.tolerance,
            increase: self.increase,
            drain_every: self.drain_every,
            base: 0.0,
            slow_start: true,
            windows: 0,
            next_drain: 1,
            cut_at_rtt: None,
            draining: None,
        }
    }
}
