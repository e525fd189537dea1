//! The local limiting engine (no tower types): governor's GCRA on tokio's
//! clock, a direct bucket for global limits and a bounded keyed store.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::RateLimiter;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use tokio::time::Instant;

use super::clock::{TokioClock, TokioInstant};
use super::key::Key;
use super::quota::Quota;
use crate::error::ConfigError;

type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;
type KeyedGov = RateLimiter<Key, Store, TokioClock, StateInformationMiddleware>;

/// A positive decision: how many more requests the bucket admits right now,
/// and how long until it is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admit {
    pub(crate) remaining: u32,
    pub(crate) reset: Duration,
}

impl Admit {
    /// An admission whose bucket state was not computed.
    pub(crate) const UNKNOWN: Admit = Admit {
        remaining: 0,
        reset: Duration::ZERO,
    };
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admit(Admit),
    /// Refused; `wait` is the exact time until the request would conform
    /// (`None` when waiting would not help, e.g. no usable key).
    Deny {
        wait: Option<Duration>,
        detail: &'static str,
    },
}

#[inline]
fn admit(quota: &Quota, remaining: u32) -> Admit {
    let used = quota.burst_size().saturating_sub(remaining);
    Admit {
        remaining,
        reset: quota.period().saturating_mul(used),
    }
}

/// One GCRA bucket (governor's direct limiter).
#[derive(Debug)]
pub(crate) struct Bucket {
    quota: Quota,
    limiter: Direct,
}

impl Bucket {
    pub(crate) fn new(quota: Quota, what: &str) -> Result<Bucket, ConfigError> {
        let q = quota.validate(what)?;
        Ok(Bucket {
            quota,
            limiter: RateLimiter::direct_with_clock(q, TokioClock::new())
                .with_middleware::<StateInformationMiddleware>(),
        })
    }

    /// One cell. `want_status`: compute `remaining` / `reset` (a division),
    /// only needed for response headers; otherwise both read 0.
    #[inline]
    pub(crate) fn check(&self, want_status: bool) -> Result<Admit, Duration> {
        match self.limiter.check() {
            Ok(snap) if want_status => Ok(admit(&self.quota, snap.remaining_burst_capacity())),
            Ok(_) => Ok(Admit::UNKNOWN),
            Err(not_until) => Err(not_until.wait_time_from(TokioInstant::new(Instant::now()))),
        }
    }

    pub(crate) fn quota(&self) -> &Quota {
        &self.quota
    }
}

/// governor's keyed state store over a shared map, so the engine can see
/// which keys are tracked and bound their number.
#[derive(Debug)]
pub(crate) struct Store {
    map: Arc<DashMap<Key, InMemoryState>>,
    count: Arc<AtomicUsize>,
}

fn tat_of(state: &InMemoryState) -> u64 {
    // Reads the state without replacing it: the closure declines.
    match state.measure_and_replace(&NotKeyed::NonKey, |tat| {
        Err::<((), Nanos), u64>(tat.map_or(0, |n| n.as_u64()))
    }) {
        Ok(()) => 0,
        Err(t) => t,
    }
}

impl StateStore for Store {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(v) = self.map.get(key) {
            return v.measure_and_replace(&NotKeyed::NonKey, f);
        }
        // Only reached when a sweep removed the key between admission and
        // this check: count the re-insertion.
        match self.map.entry(*key) {
            Entry::Occupied(e) => e.get().measure_and_replace(&NotKeyed::NonKey, f),
            Entry::Vacant(v) => {
                self.count.fetch_add(1, Ordering::AcqRel);
                v.insert(InMemoryState::default())
                    .measure_and_replace(&NotKeyed::NonKey, f)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<Key> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.map.retain(|_, v| {
            let keep = tat_of(v) > drop_below;
            if !keep {
                self.count.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        });
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Settings of the keyed store's memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyedSettings {
    pub(crate) max_keys: usize,
    pub(crate) sweep_every: u64,
    pub(crate) min_sweep_interval: Duration,
}

/// The result of a keyed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyedCheck {
    Decided(Result<Admit, Duration>),
    /// The key is new and the store is full even after evicting idle keys.
    Full,
}

/// Per-key GCRA buckets, at most `max_keys` of them.
///
/// Idle keys (whose bucket is full again) are evicted by governor's
/// `retain_recent` + `shrink_to_fit`, run by the calls themselves: every
/// `sweep_every` calls, and when a new key arrives at the cap — at most once
/// per `min_sweep_interval`, by one caller at a time (the others do not wait).
#[derive(Debug)]
pub(crate) struct KeyedBuckets {
    quota: Quota,
    limiter: KeyedGov,
    map: Arc<DashMap<Key, InMemoryState>>,
    count: Arc<AtomicUsize>,
    settings: KeyedSettings,
    calls: AtomicU64,
    last_sweep: Mutex<Option<Instant>>,
    evicted: AtomicU64,
}

impl KeyedBuckets {
    pub(crate) fn new(quota: Quota, settings: KeyedSettings) -> Result<Self, ConfigError> {
        let q = quota.validate("quota")?;
        if settings.max_keys == 0 {
            return Err(ConfigError::new(
                "rate_limit",
                "max_keys must be at least 1, got 0",
            ));
        }
        if settings.sweep_every == 0 {
            return Err(ConfigError::new(
                "rate_limit",
                "sweep_every must be at least 1 call, got 0",
            ));
        }
        let map = Arc::new(DashMap::new());
        let count = Arc::new(AtomicUsize::new(0));
        let store = Store {
            map: map.clone(),
            count: count.clone(),
        };
        Ok(KeyedBuckets {
            quota,
            limiter: KeyedGov::new(q, store, TokioClock::new()),
            map,
            count,
            settings,
            calls: AtomicU64::new(0),
            last_sweep: Mutex::new(None),
            evicted: AtomicU64::new(0),
        })
    }

    /// Takes a slot under the cap for a new key.
    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.settings.max_keys).then_some(c + 1)
            })
            .is_ok()
    }

    #[inline]
    pub(crate) fn check(&self, key: &Key, want_status: bool) -> KeyedCheck {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if n % self.settings.sweep_every == self.settings.sweep_every - 1 {
            self.sweep();
        }
        if !self.map.contains_key(key) {
            let reserved = self.reserve() || (self.sweep() && self.reserve());
            if !reserved {
                return KeyedCheck::Full;
            }
            match self.map.entry(*key) {
                Entry::Occupied(_) => {
                    // Another caller inserted it meanwhile: give the slot back.
                    self.count.fetch_sub(1, Ordering::AcqRel);
                }
                Entry::Vacant(v) => {
                    v.insert(InMemoryState::default());
                }
            }
        }
        KeyedCheck::Decided(match self.limiter.check_key(key) {
            Ok(snap) if want_status => Ok(admit(&self.quota, snap.remaining_burst_capacity())),
            Ok(_) => Ok(Admit::UNKNOWN),
            Err(nu) => Err(nu.wait_time_from(TokioInstant::new(Instant::now()))),
        })
    }

    /// Evicts idle keys; returns whether a sweep ran.
    pub(crate) fn sweep(&self) -> bool {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return false;
        };
        let now = Instant::now();
        if let Some(l) = *last {
            if now.saturating_duration_since(l) < self.settings.min_sweep_interval {
                return false;
            }
        }
        *last = Some(now);
        let before = self.map.len();
        self.limiter.retain_recent();
        let after = self.map.len();
        if after < before {
            self.evicted
                .fetch_add((before - after) as u64, Ordering::Relaxed);
            if after.saturating_mul(4) < self.map.capacity() {
                self.limiter.shrink_to_fit();
            }
        }
        true
    }

    pub(crate) fn tracked(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub(crate) fn quota(&self) -> &Quota {
        &self.quota
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_keys: usize) -> KeyedSettings {
        KeyedSettings {
            max_keys,
            sweep_every: 1_000_000,
            min_sweep_interval: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_burst_then_rate() {
        let b = Bucket::new(Quota::per_second(2), "quota").unwrap();
        assert_eq!(
            b.check(true),
            Ok(Admit {
                remaining: 1,
                reset: Duration::from_millis(500)
            })
        );
        assert_eq!(
            b.check(true),
            Ok(Admit {
                remaining: 0,
                reset: Duration::from_secs(1)
            })
        );
        assert_eq!(b.check(true), Err(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(b.check(true), Err(Duration::from_millis(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn cap_holds_and_idle_keys_are_evicted() {
        let k = KeyedBuckets::new(Quota::per_second(10), settings(3)).unwrap();
        for i in 0..3 {
            assert!(matches!(
                k.check(&Key::from_u64(i), true),
                KeyedCheck::Decided(Ok(_))
            ));
        }
        assert_eq!(k.check(&Key::from_u64(3), true), KeyedCheck::Full);
        assert_eq!(k.tracked(), 3);
        // known keys still go through
        assert!(matches!(
            k.check(&Key::from_u64(0), true),
            KeyedCheck::Decided(Ok(_))
        ));
        // after the buckets refill, the sweep evicts them
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(matches!(
            k.check(&Key::from_u64(3), true),
            KeyedCheck::Decided(Ok(_))
        ));
        assert_eq!(k.tracked(), 1);
        assert_eq!(k.evicted(), 3);
    }

    #[test]
    fn tat_is_read_without_change() {
        let s = InMemoryState::default();
        assert_eq!(tat_of(&s), 0);
    }
}
