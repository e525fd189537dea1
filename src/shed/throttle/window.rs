//! Client-side adaptive throttling (Google SRE, "Handling Overload"): the
//! engine, free of tower types.
//!
//! Over a sliding window (a ring of time buckets with running totals, O(1)
//! per call), the client counts `requests` (every call the application made,
//! throttled ones included) and `accepts` (calls the backend accepted). A
//! new call is rejected locally with probability
//! `min(cap, max(0, (requests − K·accepts) / (requests + 1)))`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One time bucket: the absolute index it counts for, and its counts.
#[derive(Debug)]
struct Bucket {
    index: AtomicU64,
    requests: AtomicU64,
    accepts: AtomicU64,
}

/// The window, lock-free: every call is a handful of atomic operations
/// (no lock on any path). The thread that moves the window forward empties
/// the buckets that leave it; a count racing with that move may land in
/// the bucket after its own (it then leaves the window one bucket late) —
/// a probabilistic throttle does not need more.
#[derive(Debug)]
pub(crate) struct ThrottleWindow {
    buckets: Box<[Bucket]>,
    bucket_ns: u64,
    /// Absolute index (time since `epoch` / bucket length) of the newest bucket.
    head: AtomicU64,
    requests: AtomicI64,
    accepts: AtomicI64,
    epoch: Instant,
    k: f64,
    cap: f64,
    /// A splitmix64 sequence: the draws of the rejection coin.
    rng: AtomicU64,
}

impl ThrottleWindow {
    pub(crate) fn new(
        window: Duration,
        buckets: usize,
        k: f64,
        cap: f64,
        seed: Option<u64>,
    ) -> Self {
        let buckets = buckets.max(1);
        let bucket_ns = u64::try_from(window.as_nanos() / buckets as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        ThrottleWindow {
            buckets: (0..buckets as u64)
                .map(|i| Bucket {
                    index: AtomicU64::new(i),
                    requests: AtomicU64::new(0),
                    accepts: AtomicU64::new(0),
                })
                .collect(),
            bucket_ns,
            head: AtomicU64::new(0),
            requests: AtomicI64::new(0),
            accepts: AtomicI64::new(0),
            epoch: crate::clock::edge_now(),
            k,
            cap,
            rng: AtomicU64::new(seed.unwrap_or_else(|| {
                use rand::{RngCore, SeedableRng};
                rand::rngs::SmallRng::from_os_rng().next_u64()
            })),
        }
    }

    fn index_of(&self, at: Instant) -> u64 {
        crate::clock::nanos_between(self.epoch, at) / self.bucket_ns
    }

    /// Moves the window to `now`, forgetting buckets that left it.
    fn advance(&self, now: Instant) {
        let idx = self.index_of(now);
        let mut head = self.head.load(Ordering::Acquire);
        while idx > head {
            match self
                .head
                .compare_exchange_weak(head, idx, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // This thread moved the window: it empties the buckets
                    // that left it (at most all of them).
                    let n = self.buckets.len() as u64;
                    let from = head.saturating_add(1).max(idx.saturating_sub(n - 1));
                    for i in from..=idx {
                        let b = &self.buckets[(i % n) as usize];
                        b.index.store(i, Ordering::Release);
                        let r = b.requests.swap(0, Ordering::AcqRel);
                        let a = b.accepts.swap(0, Ordering::AcqRel);
                        self.requests.fetch_sub(r as i64, Ordering::AcqRel);
                        self.accepts.fetch_sub(a as i64, Ordering::AcqRel);
                    }
                    return;
                }
                Err(current) => head = current,
            }
        }
    }

    /// The rejection probability given the window's totals.
    pub(crate) fn probability(&self) -> f64 {
        let (requests, accepts) = self.totals();
        let requests = requests as f64;
        let p = (requests - self.k * accepts as f64) / (requests + 1.0);
        p.clamp(0.0, self.cap)
    }

    /// The probability at `now` (moves the window).
    pub(crate) fn probability_at(&self, now: Instant) -> f64 {
        self.advance(now);
        self.probability()
    }

    /// A uniform draw in `[0, 1)`.
    fn draw(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Counts a request and decides whether it may be sent (`true`) or is
    /// throttled (`false`). The probability is computed before the request is
    /// counted.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        self.advance(now);
        let p = self.probability();
        let n = self.buckets.len() as u64;
        let idx = self.head.load(Ordering::Acquire);
        self.buckets[(idx % n) as usize]
            .requests
            .fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        !(p > 0.0 && self.draw() < p)
    }

    /// The bucket a request admitted at `admitted_at` was counted in, if
    /// that bucket is still in the window.
    fn bucket_of(&self, admitted_at: Instant) -> Option<&Bucket> {
        let idx = self.index_of(admitted_at);
        let head = self.head.load(Ordering::Acquire);
        let n = self.buckets.len() as u64;
        if idx > head || head - idx >= n {
            // In the future (cannot happen: admission advanced the head) or
            // already out of the window.
            return None;
        }
        let b = &self.buckets[(idx % n) as usize];
        (b.index.load(Ordering::Acquire) == idx).then_some(b)
    }

    /// Counts an accepted request that was admitted at `admitted_at`: in that
    /// request's bucket if it is still in the window, else not at all (its
    /// request has left the window too).
    pub(crate) fn accept(&self, admitted_at: Instant) {
        if let Some(b) = self.bucket_of(admitted_at) {
            b.accepts.fetch_add(1, Ordering::AcqRel);
            self.accepts.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes back the request admitted at `admitted_at` (its call ended with
    /// an outcome that is not counted): from that request's bucket if it is
    /// still in the window, else nothing (it has left the window already).
    /// The running totals stay the sum of the buckets.
    pub(crate) fn forget(&self, admitted_at: Instant) {
        if let Some(b) = self.bucket_of(admitted_at) {
            let taken = b
                .requests
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                .is_ok();
            if taken {
                self.requests.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub(crate) fn totals(&self) -> (u64, u64) {
        let r = self.requests.load(Ordering::Acquire).max(0) as u64;
        let a = self.accepts.load(Ordering::Acquire).max(0) as u64;
        (r, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> ThrottleWindow {
        ThrottleWindow::new(Duration::from_secs(120), 120, 2.0, 0.9, Some(7))
    }

    #[test]
    fn formula_matches_sre() {
        let t = w();
        t.requests.store(100, Ordering::Relaxed);
        t.accepts.store(30, Ordering::Relaxed);
        // (100 − 60) / 101
        assert!((t.probability() - 40.0 / 101.0).abs() < 1e-12);
        t.accepts.store(50, Ordering::Relaxed);
        assert_eq!(t.probability(), 0.0);
        t.accepts.store(0, Ordering::Relaxed);
        // 100 / 101 capped at 0.9
        assert_eq!(t.probability(), 0.9);
    }

    #[test]
    fn threads_count_without_a_lock() {
        let t = std::sync::Arc::new(w());
        let now = t.epoch;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        assert!(t.admit(now));
                        t.accept(now);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.totals(), (40_000, 40_000));
    }

    #[test]
    fn healthy_backend_is_never_throttled() {
        let t = w();
        let now = t.epoch;
        for _ in 0..10_000 {
            assert!(t.admit(now));
            t.accept(now);
        }
        assert_eq!(t.totals(), (10_000, 10_000));
    }

    #[test]
    fn buckets_leave_the_window() {
        let t = w();
        let t0 = t.epoch;
        for s in 0..120u64 {
            let now = t0 + Duration::from_secs(s);
            t.admit(now);
            t.admit(now);
            t.accept(now);
        }
        assert_eq!(t.totals(), (240, 120));
        // One second later the first bucket (2 requests, 1 accept) leaves.
        assert_eq!(t.probability_at(t0 + Duration::from_secs(120)), 0.0);
        assert_eq!(t.totals(), (238, 119));
        // 60 s later half the window is gone.
        t.probability_at(t0 + Duration::from_secs(179));
        assert_eq!(t.totals(), (120, 60));
        // After a whole idle window everything is forgotten.
        t.probability_at(t0 + Duration::from_secs(1000));
        assert_eq!(t.totals(), (0, 0));
    }

    #[test]
    fn accepts_land_in_their_request_bucket() {
        let t = w();
        let t0 = t.epoch;
        assert!(t.admit(t0));
        // The window moves on 60 s before the answer comes back.
        t.probability_at(t0 + Duration::from_secs(60));
        t.accept(t0);
        assert_eq!(t.totals(), (1, 1));
        // Both leave together when the first bucket expires.
        t.probability_at(t0 + Duration::from_secs(120));
        assert_eq!(t.totals(), (0, 0));
        // An answer to a request that already left the window is not counted.
        t.accept(t0);
        assert_eq!(t.totals(), (0, 0));
    }

    #[test]
    fn forgotten_requests_leave_their_bucket() {
        let t = w();
        let t0 = t.epoch;
        assert!(t.admit(t0));
        t.accept(t0);
        assert!(t.admit(t0));
        // The window moves on 30 s before the second call ends, not counted.
        assert!(t.admit(t0 + Duration::from_secs(30)));
        t.forget(t0);
        assert_eq!(t.totals(), (2, 1));
        // The first bucket leaves with 1 request and 1 accept: no underflow.
        t.probability_at(t0 + Duration::from_secs(120));
        assert_eq!(t.totals(), (1, 0));
        // A request that already left the window is not taken back twice.
        t.forget(t0);
        assert_eq!(t.totals(), (1, 0));
        t.forget(t0 + Duration::from_secs(30));
        assert_eq!(t.totals(), (0, 0));
        t.forget(t0 + Duration::from_secs(30));
        assert_eq!(t.totals(), (0, 0));
    }

    #[test]
    fn rejection_rate_follows_probability_with_seeded_rng() {
        let t = w();
        let now = t.epoch;
        t.requests.store(1000, Ordering::Relaxed);
        t.buckets[0].requests.store(1000, Ordering::Relaxed);
        // p = 0.9 (cap): about 90% of 10 000 draws throttled.
        let mut sent = 0;
        for _ in 0..10_000 {
            // keep requests fixed to hold p constant
            if t.admit(now) {
                sent += 1;
            }
            t.requests.store(1000, Ordering::Relaxed);
            t.buckets[0].requests.store(1000, Ordering::Relaxed);
        }
        assert!((900..=1100).contains(&sent), "sent {sent}");
    }
}
