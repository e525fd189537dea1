//! A map of keys under a cap, for the state a layer keeps per key (the keyed
//! rate limiter's buckets, `KeyedLayer`'s instances): a known key costs one
//! map read; a new key reserves its place atomically before it is inserted,
//! so threads adding keys at once never take the map past the cap; idle
//! entries are evicted by sweeps the callers run, at most one at a time and
//! at most once per interval.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::Key;

/// At most `max` keys, each with a `V`.
#[derive(Debug)]
pub(crate) struct BoundedMap<V> {
    map: DashMap<Key, V>,
    /// Keys in the map or about to be.
    held: AtomicUsize,
    max: usize,
    /// The least time between two sweeps.
    min_sweep: Duration,
    /// When the next sweep may run, on the caller's clock (nanoseconds
    /// since an origin of its own).
    next_sweep: AtomicU64,
    /// A sweep is running (the others do not wait for it).
    sweeping: AtomicBool,
    evicted: AtomicU64,
}

impl<V> BoundedMap<V> {
    /// A map of at most `max` keys (at least 1), swept at most once per
    /// `min_sweep`.
    pub(crate) fn new(max: usize, min_sweep: Duration) -> Self {
        BoundedMap {
            map: DashMap::new(),
            held: AtomicUsize::new(0),
            max: max.max(1),
            min_sweep,
            next_sweep: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            evicted: AtomicU64::new(0),
        }
    }

    /// `with` applied to the value of `key` (`false`) or, for a new key while
    /// a place is left, to the value `make` gives it (`true`); `None` when the
    /// key is new and the map is full.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        key: &Key,
        make: impl FnOnce() -> V,
        with: impl FnOnce(&V, bool) -> R,
    ) -> Option<R> {
        if let Some(v) = self.map.get(key) {
            return Some(with(&v, false));
        }
        match self.map.entry(*key) {
            Entry::Occupied(e) => Some(with(e.get(), false)),
            Entry::Vacant(v) => {
                if !self.reserve() {
                    return None;
                }
                // A `make` that panics gives its place back.
                let unreserve = Unreserve(&self.held);
                let value = v.insert(make());
                std::mem::forget(unreserve);
                Some(with(&value, true))
            }
        }
    }

    fn reserve(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Evicts the entries `keep` refuses, if no sweep ran in the last
    /// `min_sweep` (and none is running): the number evicted, or `None` when
    /// no sweep ran. `now`: the caller's time (nanoseconds since its own
    /// origin, the same one on every call), already read for the request.
    pub(crate) fn sweep(&self, now: u64, mut keep: impl FnMut(&V) -> bool) -> Option<usize> {
        if now < self.next_sweep.load(Ordering::Acquire)
            || self.sweeping.swap(true, Ordering::AcqRel)
        {
            return None;
        }
        if now < self.next_sweep.load(Ordering::Acquire) {
            // Another sweep ran since the first look.
            self.sweeping.store(false, Ordering::Release);
            return None;
        }
        let min = crate::clock::nanos(self.min_sweep);
        self.next_sweep
            .store(now.saturating_add(min), Ordering::Release);
        let mut gone = 0;
        self.map.retain(|_, v| {
            let kept = keep(v);
            gone += usize::from(!kept);
            kept
        });
        if gone > 0 {
            self.held.fetch_sub(gone, Ordering::AcqRel);
            self.evicted.fetch_add(gone as u64, Ordering::Relaxed);
            if self.map.len().saturating_mul(4) < self.map.capacity() {
                self.map.shrink_to_fit();
            }
        }
        self.sweeping.store(false, Ordering::Release);
        Some(gone)
    }

    /// The cap.
    #[cfg_attr(not(feature = "keyed"), allow(dead_code))]
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The map's capacity (what its memory is sized for).
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Keys evicted so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// `f` applied to the value of `key`, if it is held (no insertion).
    pub(crate) fn read<R>(&self, key: &Key, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.map.get(key).map(|v| f(&v))
    }

    /// `f` applied to every value held (each shard read-locked in turn).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        for entry in self.map.iter() {
            f(entry.value());
        }
    }

    /// A clone of the value of `key`, if it is held.
    #[cfg_attr(not(feature = "keyed"), allow(dead_code))]
    pub(crate) fn get_cloned(&self, key: &Key) -> Option<V>
    where
        V: Clone,
    {
        self.map.get(key).map(|v| v.clone())
    }
}

/// Gives back a place reserved for a new key unless forgotten once the key
/// is in.
struct Unreserve<'a>(&'a AtomicUsize);

impl Drop for Unreserve<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        Key::from_u64(n)
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn the_cap_holds_and_sweeps_wait_their_interval() {
        let m: BoundedMap<u64> = BoundedMap::new(2, Duration::from_secs(1));
        assert_eq!(m.with(&key(1), || 10, |v, new| (*v, new)), Some((10, true)));
        assert_eq!(
            m.with(&key(1), || 99, |v, new| (*v, new)),
            Some((10, false))
        );
        assert_eq!(m.with(&key(2), || 20, |v, _| *v), Some(20));
        assert_eq!(m.with(&key(3), || 30, |v, _| *v), None, "full");
        assert_eq!(m.len(), 2);
        // A sweep keeping only 20; the next one must wait a second.
        assert_eq!(m.sweep(0, |v| *v == 20), Some(1));
        assert_eq!(m.sweep(SECOND - 1, |_| false), None);
        assert_eq!(m.with(&key(3), || 30, |v, _| *v), Some(30));
        assert_eq!((m.len(), m.evicted()), (2, 1));
        assert_eq!(m.sweep(SECOND, |_| false), Some(2));
        assert_eq!((m.len(), m.evicted(), m.get_cloned(&key(2))), (0, 3, None));
    }

    /// A factory that panics for a key leaves no place taken: after as many
    /// panics as the cap, new keys still get in.
    #[test]
    fn a_panicking_factory_gives_its_place_back() {
        let m: BoundedMap<u64> = BoundedMap::new(2, Duration::from_secs(1));
        for n in 0..4 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                m.with(&key(100 + n), || panic!("no such tenant"), |v, _| *v)
            }));
            assert!(r.is_err());
        }
        assert_eq!(m.len(), 0);
        assert_eq!(m.with(&key(1), || 10, |v, _| *v), Some(10));
        assert_eq!(m.with(&key(2), || 20, |v, _| *v), Some(20));
        assert_eq!(m.with(&key(3), || 30, |v, _| *v), None, "full");
    }

    #[test]
    fn threads_adding_keys_at_once_never_pass_the_cap() {
        let m: BoundedMap<u64> = BoundedMap::new(10, Duration::ZERO);
        let made = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let (m, made) = (&m, &made);
                scope.spawn(move || {
                    for k in 0..2_000 {
                        m.with(
                            &key(t * 1_000_000 + k),
                            || made.fetch_add(1, Ordering::Relaxed),
                            |_, _| (),
                        );
                    }
                });
            }
        });
        assert_eq!(m.len(), 10);
        assert_eq!(made.load(Ordering::Relaxed), 10);
    }
}
