//! A map of keys under a cap, for the state a layer keeps per key (the keyed
//! rate limiter's buckets, `KeyedLayer`'s instances): a known key costs one
//! lock-free map read; a new key reserves its place atomically before it is
//! inserted, so threads adding keys at once never take the map past the cap;
//! idle entries are evicted by sweeps the callers run, at most one at a time
//! and at most once per interval.
//!
//! The map is `scc`'s `HashIndex`: a read takes no lock and waits on no
//! writer (a new key's insertion or a sweep locks one bucket at a time, and
//! readers go on). It may move an entry when it grows or shrinks, reading a
//! copy meanwhile, so each value sits behind an `Arc`: every copy is the one
//! value, its atomics included.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use scc::hash_index::Entry;
use scc::{Guard, HashIndex};
use siphasher::sip::SipHasher13;

use super::Key;

/// At most `max` keys, each with a `V`.
pub(crate) struct BoundedMap<V> {
    map: HashIndex<Key, Arc<V>, KeyHash>,
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

impl<V> std::fmt::Debug for BoundedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMap")
            .field("held", &self.held)
            .field("max", &self.max)
            .field("evicted", &self.evicted)
            .finish_non_exhaustive()
    }
}

impl<V> BoundedMap<V> {
    /// A map of at most `max` keys (at least 1), swept at most once per
    /// `min_sweep`.
    pub(crate) fn new(max: usize, min_sweep: Duration) -> Self {
        BoundedMap {
            map: HashIndex::with_hasher(KeyHash::new()),
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
        with: impl FnOnce(&Arc<V>, bool) -> R,
    ) -> Option<R> {
        {
            let guard = Guard::new();
            if let Some(v) = self.map.peek(key, &guard) {
                return Some(with(v, false));
            }
        }
        self.insert(key, make, with)
    }

    /// A key not found by a read: inserted unless another thread just did
    /// (or the map is full). Out of line: a known key never reaches it.
    #[inline(never)]
    fn insert<R>(
        &self,
        key: &Key,
        make: impl FnOnce() -> V,
        with: impl FnOnce(&Arc<V>, bool) -> R,
    ) -> Option<R> {
        match self.map.entry_sync(*key) {
            Entry::Occupied(e) => Some(with(e.get(), false)),
            Entry::Vacant(v) => {
                if !self.reserve() {
                    return None;
                }
                // A `make` that panics gives its place back.
                let unreserve = Unreserve(&self.held);
                let value = Arc::new(make());
                std::mem::forget(unreserve);
                let r = with(&value, true);
                v.insert_entry(value);
                Some(r)
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
    /// Readers go on meanwhile; the map gives memory back as it empties.
    pub(crate) fn sweep(&self, now: u64, mut keep: impl FnMut(&Arc<V>) -> bool) -> Option<usize> {
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
        // Each entry is seen under its bucket's lock: one refused is removed
        // once, and counted once.
        self.map.retain_sync(|_, v| {
            let kept = keep(v);
            gone += usize::from(!kept);
            kept
        });
        if gone > 0 {
            self.held.fetch_sub(gone, Ordering::AcqRel);
            self.evicted.fetch_add(gone as u64, Ordering::Relaxed);
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
        let guard = Guard::new();
        self.map.peek(key, &guard).map(|v| f(v))
    }

    /// `f` applied to every value held (no lock that stops a reader).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        let guard = Guard::new();
        for (_, v) in self.map.iter(&guard) {
            f(v);
        }
    }

    /// The value of `key`, if it is held.
    #[cfg_attr(not(feature = "keyed"), allow(dead_code))]
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<V>> {
        let guard = Guard::new();
        self.map.peek(key, &guard).cloned()
    }
}

/// SipHash-1-3 (std's `HashMap` hash) under keys drawn at random for each
/// map, so that keys from outside (addresses, API keys) cannot be chosen to
/// fall on one bucket. [`Key`] feeds it whole words.
#[derive(Clone)]
struct KeyHash {
    k0: u64,
    k1: u64,
}

impl KeyHash {
    fn new() -> Self {
        // std's `RandomState` is seeded from the OS: what it makes of two
        // numbers is as unpredictable as its own keys.
        let seed = RandomState::new();
        KeyHash {
            k0: seed.hash_one(0u64),
            k1: seed.hash_one(1u64),
        }
    }
}

impl BuildHasher for KeyHash {
    type Hasher = SipHasher13;

    #[inline]
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
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
        assert_eq!(
            m.with(&key(1), || 10, |v, new| (**v, new)),
            Some((10, true))
        );
        assert_eq!(
            m.with(&key(1), || 99, |v, new| (**v, new)),
            Some((10, false))
        );
        assert_eq!(m.with(&key(2), || 20, |v, _| **v), Some(20));
        assert_eq!(m.with(&key(3), || 30, |v, _| **v), None, "full");
        assert_eq!(m.len(), 2);
        // A sweep keeping only 20; the next one must wait a second.
        assert_eq!(m.sweep(0, |v| **v == 20), Some(1));
        assert_eq!(m.sweep(SECOND - 1, |_| false), None);
        assert_eq!(m.with(&key(3), || 30, |v, _| **v), Some(30));
        assert_eq!((m.len(), m.evicted()), (2, 1));
        assert_eq!(m.sweep(SECOND, |_| false), Some(2));
        assert_eq!((m.len(), m.evicted(), m.get(&key(2))), (0, 3, None));
    }

    /// A factory that panics for a key leaves no place taken: after as many
    /// panics as the cap, new keys still get in.
    #[test]
    fn a_panicking_factory_gives_its_place_back() {
        let m: BoundedMap<u64> = BoundedMap::new(2, Duration::from_secs(1));
        for n in 0..4 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                m.with(&key(100 + n), || panic!("no such tenant"), |v, _| **v)
            }));
            assert!(r.is_err());
        }
        assert_eq!(m.len(), 0);
        assert_eq!(m.with(&key(1), || 10, |v, _| **v), Some(10));
        assert_eq!(m.with(&key(2), || 20, |v, _| **v), Some(20));
        assert_eq!(m.with(&key(3), || 30, |v, _| **v), None, "full");
    }

    /// A sweep holds a bucket's lock while it judges the entries there; a
    /// read of a key in that very bucket does not wait for it (with a
    /// `DashMap`, a sweep write-locked the shard and the read waited).
    #[test]
    fn a_read_never_waits_on_a_sweep() {
        use std::sync::mpsc::channel;
        let m: BoundedMap<u64> = BoundedMap::new(4, Duration::ZERO);
        assert_eq!(m.with(&key(1), || 10, |v, _| **v), Some(10));
        let (judging, judged) = channel();
        let (release, released) = channel::<()>();
        let (read, got) = channel();
        std::thread::scope(|scope| {
            let m = &m;
            scope.spawn(move || {
                m.sweep(0, |_| {
                    // The sweep holds the key's bucket until released.
                    let _ = judging.send(());
                    let _ = released.recv();
                    true
                })
            });
            judged.recv().expect("the sweep reached the key");
            scope.spawn(move || {
                let _ = read.send(m.with(&key(1), || 99, |v, new| (**v, new)));
            });
            // Bounded only so that a read that waits fails the test instead
            // of hanging it: the read does not wait on the sweep.
            let r = got.recv_timeout(Duration::from_secs(30));
            let _ = release.send(());
            assert_eq!(r, Ok(Some((10, false))), "the read waited on the sweep");
        });
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
