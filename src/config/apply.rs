//! Each layer's builder takes its settings section: `configure` sets what
//! the section says and keeps the rest, so a layer used on its own reads the
//! same file format as the stacks (which call these).

#[cfg(feature = "eject")]
use super::EjectionSettings;
#[cfg(feature = "hedge")]
use super::HedgeSettings;
use super::{BreakerSettings, BulkheadSettings, LimitSettings, RetrySettings};

#[cfg(feature = "retry")]
impl<P> crate::retry::RetryLayerBuilder<P> {
    /// Applies a [`RetrySettings`] section (feature `serde`): each setting
    /// present replaces the builder's.
    pub fn configure(self, s: &RetrySettings) -> Self {
        let mut b = self;
        if let Some(n) = s.max_attempts {
            b = b.max_attempts(n);
        }
        if s.backoff_base.is_some() || s.backoff_cap.is_some() {
            let (base, cap) = b.backoff_bounds();
            b = b.backoff(s.backoff_base.unwrap_or(base), s.backoff_cap.unwrap_or(cap));
        }
        if let Some(x) = s.budget_ratio {
            b = b.budget_ratio(x);
        }
        if let Some(x) = s.budget_success_ratio {
            b = b.budget_success_ratio(x);
        }
        if let Some(n) = s.min_retries_per_sec {
            b = b.min_retries_per_sec(n);
        }
        b
    }
}

#[cfg(feature = "circuit-breaker")]
impl<C> crate::circuit_breaker::CircuitBreakerBuilder<C> {
    /// Applies a [`BreakerSettings`] section (feature `serde`): each setting
    /// present replaces the builder's.
    pub fn configure(self, s: &BreakerSettings) -> Self {
        let mut b = self.retuned(|t| s.tune(t));
        if let Some(n) = s.half_open_calls {
            b = b.permitted_calls_in_half_open(n);
        }
        if let Some(x) = s.count_overload {
            b = b.count_overload(x);
        }
        b
    }
}

#[cfg(feature = "bulkhead")]
impl crate::bulkhead::BulkheadBuilder {
    /// Applies a [`BulkheadSettings`] section (feature `serde`): each
    /// setting present replaces the builder's.
    pub fn configure(self, s: &BulkheadSettings) -> Self {
        let mut b = self;
        if let Some(n) = s.max_concurrent {
            b = b.max_concurrent(n);
        }
        if let Some(n) = s.max_queue {
            b = b.max_queue(n);
        }
        if let Some(d) = s.max_wait {
            b = b.max_wait(d);
        }
        b
    }
}

#[cfg(feature = "shed")]
impl<P> crate::shed::AdaptiveLimitLayerBuilder<P> {
    /// Applies a [`LimitSettings`] section (feature `serde`): the bounds of
    /// the algorithm's limit (see
    /// [`limits`](crate::shed::AdaptiveLimitLayerBuilder::limits)), and the
    /// wait at the limit if present (see
    /// [`wait_at_limit`](crate::shed::AdaptiveLimitLayerBuilder::wait_at_limit)).
    pub fn configure(self, s: &LimitSettings) -> Self {
        let b = self.limits(s.min_limit, s.max_limit);
        match s.wait_at_limit {
            Some(wait) => b.wait_at_limit(wait),
            None => b,
        }
    }
}

#[cfg(feature = "shed")]
impl<C> crate::shed::ThrottleLayerBuilder<C> {
    /// Applies a [`ThrottleSettings`](super::ThrottleSettings) section
    /// (feature `serde`): each setting present replaces the builder's.
    pub fn configure(self, s: &super::ThrottleSettings) -> Self {
        let mut b = self;
        if let Some(d) = s.window {
            b = b.window(d);
        }
        if let Some(x) = s.k {
            b = b.k(x);
        }
        if let Some(x) = s.max_rejection_probability {
            b = b.max_rejection_probability(x);
        }
        b
    }
}

#[cfg(feature = "rate-limit")]
impl<X, D> crate::rate_limit::RateLimitLayerBuilder<X, D> {
    /// Applies a [`Rate`](super::Rate) (feature `serde`): it replaces the
    /// quota.
    pub fn configure(self, rate: &super::Rate) -> Self {
        self.quota(rate.quota())
    }
}

#[cfg(feature = "hedge")]
impl<P> crate::hedge::HedgeLayerBuilder<P> {
    /// Applies a [`HedgeSettings`] section (feature `serde`): each setting
    /// present replaces the builder's.
    pub fn configure(self, s: &HedgeSettings) -> Self {
        let mut b = self;
        if let Some(d) = s.delay {
            b = b.delay(d);
        }
        if let Some(n) = s.max_attempts {
            b = b.max_attempts(n);
        }
        if let Some(x) = s.budget_ratio {
            b = b.budget_ratio(x);
        }
        b
    }
}

#[cfg(feature = "eject")]
impl<C> crate::eject::EjectionLayerBuilder<C> {
    /// Applies an [`EjectionSettings`] section (feature `serde`): each
    /// setting present replaces the builder's.
    pub fn configure(self, s: &EjectionSettings) -> Self {
        let mut b = self;
        if let Some(n) = s.consecutive_failures {
            b = b.consecutive_failures(n);
        }
        if s.ejection_time.is_some() || s.max_ejection_time.is_some() {
            let (base, max) = b.ejection_times();
            b = b.ejection_time(
                s.ejection_time.unwrap_or(base),
                s.max_ejection_time.unwrap_or(max),
            );
        }
        if let Some(n) = s.max_ejected_percent {
            b = b.max_ejected_percent(n);
        }
        if let Some(d) = s.interval {
            let (_, calls, endpoints) = b.intervals();
            b = b.interval(d, calls, endpoints);
        }
        if let Some(x) = s.success_rate_stdev_factor {
            b = b.success_rate_stdev_factor(x);
        }
        if let Some(x) = s.latency_factor {
            // 0 turns it off; anything else goes to the builder, which
            // refuses a factor not above 1 (a negative or NaN one is a
            // mistake, not "off").
            b = b.latency_factor((x != 0.0).then_some(x));
        }
        if let Some(x) = s.count_overload {
            b = b.count_overload(x);
        }
        b
    }
}
