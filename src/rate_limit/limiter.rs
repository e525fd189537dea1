//! The local limiting engine (no tower types): GCRA on tokio's clock, a
//! bucket of one atomic word for global limits (governor's algorithm,
//! written out) and governor's keyed limiter over a bounded store.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// One GCRA bucket: governor's algorithm (the same decisions, `remaining`
/// and waits as its direct limiter), on one atomic word and tokio's clock.
///
/// The theoretical arrival time is kept in nanoseconds since the bucket was
/// made; 0 means none yet. A check is one clock read (shared by the layers
/// of a call) and one compare-and-swap.
#[derive(Debug)]
pub(crate) struct Bucket {
    quota: Quota,
    /// Nanoseconds per cell (at least 1).
    t: u64,
    /// The burst tolerance: `t × (burst − 1)`.
    tau: u64,
    start: Instant,
    tat: AtomicU64,
}

impl Bucket {
    pub(crate) fn new(quota: Quota, what: &str) -> Result<Bucket, ConfigError> {
        let q = quota.validate(what)?;
        let t = u64::try_from(q.replenish_interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let tau = t.saturating_mul(u64::from(q.burst_size().get() - 1));
        Ok(Bucket {
            quota,
            t,
            tau,
            start: crate::clock::now(),
            tat: AtomicU64::new(0),
        })
    }

    /// `cost` cells (at least 1). `want_status`: compute `remaining` /
    /// `reset` (a division), only needed for response headers; otherwise
    /// both read 0. A cost above the burst is refused with [`NEVER`].
    #[inline]
    pub(crate) fn check(&self, cost: u32, want_status: bool) -> Result<Admit, Duration> {
        let (t, tau) = (self.t, self.tau);
        let extra = t.saturating_mul(u64::from(cost.max(1) - 1));
        if extra > tau {
            return Err(NEVER);
        }
        let now = u64::try_from(
            crate::clock::now()
                .saturating_duration_since(self.start)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX);
        let mut prev = self.tat.load(Ordering::Acquire);
        loop {
            let tat = if prev == 0 { now } else { prev };
            let earliest = tat.saturating_add(extra).saturating_sub(tau);
            if now < earliest {
                return Err(Duration::from_nanos(earliest - now));
            }
            let next = tat.max(now).saturating_add(t).saturating_add(extra);
            match self
                .tat
                .compare_exchange_weak(prev, next, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => {
                    if !want_status {
                        return Ok(Admit::UNKNOWN);
                    }
                    let remaining = (now
                        .saturating_add(tau)
                        .saturating_add(t)
                        .saturating_sub(next))
                    .min(tau.saturating_add(t))
                        / t;
                    return Ok(admit(&self.quota, remaining as u32));
                }
                Err(actual) => prev = actual,
            }
        }
    }

    pub(crate) fn quota(&self) -> &Quota {
        &self.quota
    }
}

/// Counters shared by the store and the engine.
#[derive(Debug, Default)]
struct Counters {
    /// Keys in the map (exact: only the store inserts, only sweeps remove).
    count: AtomicUsize,
    /// Keys inserted so far.
    inserts: AtomicU64,
    /// Set every `sweep_every` insertions; the engine then sweeps.
    sweep_due: AtomicBool,
}

/// The theoretical arrival time the store reports for a new key when the map
/// is full: so far in the future (2^62 ns, 146 years) that governor refuses
/// the cell, which the engine recognises by the absurd wait. Real waits are
/// at most one period (validated to at most a year).
const FULL_TAT: u64 = 1 << 62;

/// The "wait" of a cost above the burst: it never fits.
pub(crate) const NEVER: Duration = Duration::MAX;
const FULL_WAIT: Duration = Duration::from_secs(50 * 365 * 24 * 3600);

/// governor's keyed state store over a map of at most `cap` keys.
///
/// A known key costs one map lookup. A new key takes a slot under the cap
/// (an atomic compare-and-swap, under the map shard's lock) and is inserted;
/// when no slot is free, the key is not inserted and the cell is refused with
/// the [`FULL_TAT`] marker.
#[derive(Debug)]
pub(crate) struct Store {
    map: Arc<DashMap<Key, InMemoryState>>,
    counters: Arc<Counters>,
    cap: usize,
    sweep_every: u64,
}

impl Store {
    fn reserve(&self) -> bool {
        self.counters
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.cap).then_some(c + 1)
            })
            .is_ok()
    }
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

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(v) = self.map.get(key) {
            return v.measure_and_replace(&NotKeyed::NonKey, f);
        }
        match self.map.entry(*key) {
            Entry::Occupied(e) => e.get().measure_and_replace(&NotKeyed::NonKey, f),
            Entry::Vacant(v) => {
                if !self.reserve() {
                    drop(v);
                    return f(Some(Nanos::from(FULL_TAT))).map(|(t, _)| t);
                }
                let n = self.counters.inserts.fetch_add(1, Ordering::Relaxed) + 1;
                if n % self.sweep_every == 0 {
                    self.counters.sweep_due.store(true, Ordering::Relaxed);
                }
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
                self.counters.count.fetch_sub(1, Ordering::AcqRel);
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
    counters: Arc<Counters>,
    settings: KeyedSettings,
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
        let counters = Arc::new(Counters::default());
        let store = Store {
            map: map.clone(),
            counters: counters.clone(),
            cap: settings.max_keys,
            sweep_every: settings.sweep_every,
        };
        Ok(KeyedBuckets {
            quota,
            limiter: KeyedGov::new(q, store, TokioClock::new()),
            map,
            counters,
            settings,
            last_sweep: Mutex::new(None),
            evicted: AtomicU64::new(0),
        })
    }

    #[inline]
    fn check_once(&self, key: &Key, cost: u32, want_status: bool) -> KeyedCheck {
        let checked = if cost <= 1 {
            self.limiter.check_key(key)
        } else {
            match self
                .limiter
                .check_key_n(key, NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN))
            {
                Ok(r) => r,
                Err(_) => return KeyedCheck::Decided(Err(NEVER)),
            }
        };
        KeyedCheck::Decided(match checked {
            Ok(snap) if want_status => Ok(admit(&self.quota, snap.remaining_burst_capacity())),
            Ok(_) => Ok(Admit::UNKNOWN),
            Err(nu) => {
                let wait = nu.wait_time_from(TokioInstant::new(Instant::now()));
                if wait >= FULL_WAIT {
                    return KeyedCheck::Full;
                }
                Err(wait)
            }
        })
    }

    /// One cell for `key`: one map lookup for a known key.
    #[inline]
    pub(crate) fn check(&self, key: &Key, cost: u32, want_status: bool) -> KeyedCheck {
        let r = match self.check_once(key, cost, want_status) {
            // New key at the cap: evict idle keys (if a sweep is allowed
            // now), then try once more.
            KeyedCheck::Full if self.sweep() => self.check_once(key, cost, want_status),
            r => r,
        };
        if self.counters.sweep_due.load(Ordering::Relaxed)
            && self.counters.sweep_due.swap(false, Ordering::Relaxed)
        {
            self.sweep();
        }
        r
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
        self.counters.count.load(Ordering::Acquire)
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
    /// The bucket decides as governor's direct limiter does, cell for cell:
    /// the same admissions, `remaining` and waits, over 3000 steps of random
    /// gaps and costs in paused time.
    #[test]
    fn the_bucket_decides_as_governor_does() {
        use governor::middleware::StateInformationMiddleware;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            for quota in [
                Quota::per_second(10),
                Quota::per_minute(7).burst(3),
                Quota::new(5, Duration::from_millis(300)),
            ] {
                let ours = Bucket::new(quota, "q").unwrap();
                let theirs =
                    RateLimiter::direct_with_clock(quota.validate("q").unwrap(), TokioClock::new())
                        .with_middleware::<StateInformationMiddleware>();
                let mut z = 7u64;
                for _ in 0..3000 {
                    z = crate::clock::splitmix64(z);
                    tokio::time::advance(Duration::from_millis(z % 97)).await;
                    let cost = 1 + (z >> 20) as u32 % 3;
                    let a = ours.check(cost, true);
                    let b = match theirs.check_n(NonZeroU32::new(cost).unwrap()) {
                        Err(_) => Err(NEVER),
                        Ok(Ok(snap)) => Ok(admit(&quota, snap.remaining_burst_capacity())),
                        Ok(Err(nu)) => {
                            Err(nu.wait_time_from(TokioInstant::new(crate::clock::now())))
                        }
                    };
                    assert_eq!(a, b, "{quota:?}, cost {cost}");
                }
            }
        });
    }

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
            b.check(1, true),
            Ok(Admit {
                remaining: 1,
                reset: Duration::from_millis(500)
            })
        );
        assert_eq!(
            b.check(1, true),
            Ok(Admit {
                remaining: 0,
                reset: Duration::from_secs(1)
            })
        );
        assert_eq!(b.check(1, true), Err(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(b.check(1, true), Err(Duration::from_millis(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn cap_holds_and_idle_keys_are_evicted() {
        let k = KeyedBuckets::new(Quota::per_second(10), settings(3)).unwrap();
        for i in 0..3 {
            assert!(matches!(
                k.check(&Key::from_u64(i), 1, true),
                KeyedCheck::Decided(Ok(_))
            ));
        }
        assert_eq!(k.check(&Key::from_u64(3), 1, true), KeyedCheck::Full);
        assert_eq!(k.tracked(), 3);
        // known keys still go through
        assert!(matches!(
            k.check(&Key::from_u64(0), 1, true),
            KeyedCheck::Decided(Ok(_))
        ));
        // after the buckets refill, the sweep evicts them
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(matches!(
            k.check(&Key::from_u64(3), 1, true),
            KeyedCheck::Decided(Ok(_))
        ));
        assert_eq!(k.tracked(), 1);
        assert_eq!(k.evicted(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_takes_several_cells_and_never_more_than_its_burst() {
        let b = Bucket::new(Quota::per_second(10), "test").unwrap();
        assert!(b.check(8, false).is_ok());
        // 4 more: 2 are there, 2 come in 200 ms.
        assert_eq!(b.check(4, false), Err(Duration::from_millis(200)));
        assert_eq!(b.check(11, false), Err(NEVER));
        let k = KeyedBuckets::new(Quota::per_second(10), settings(3)).unwrap();
        assert_eq!(
            k.check(&Key::from_u64(0), 11, false),
            KeyedCheck::Decided(Err(NEVER))
        );
    }

    #[test]
    fn tat_is_read_without_change() {
        let s = InMemoryState::default();
        assert_eq!(tat_of(&s), 0);
    }
}
