//! Client-side adaptive throttling (Google SRE, "Handling Overload"): the
//! engine, free of tower types.
//!
//! Over a sliding window (a ring of time buckets with running totals, O(1)
//! per call), the client counts `requests` (every call the application made,
//! throttled ones included) and `accepts` (calls the backend accepted). A
//! new call is rejected locally with probability
//! `min(cap, max(0, (requests − K·accepts) / (requests + 1)))`.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    accepts: u64,
}

#[derive(Debug)]
pub(crate) struct ThrottleWindow {
    buckets: Box<[Bucket]>,
    bucket_ns: u64,
    /// Absolute index (time since `epoch` / bucket length) of the newest bucket.
    head: u64,
    requests: u64,
    accepts: u64,
    epoch: Instant,
    k: f64,
    cap: f64,
    rng: SmallRng,
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
            buckets: vec![Bucket::default(); buckets].into_boxed_slice(),
            bucket_ns,
            head: 0,
            requests: 0,
            accepts: 0,
            epoch: Instant::now(),
            k,
            cap,
            rng: match seed {
                Some(seed) => SmallRng::seed_from_u64(seed),
                None => SmallRng::from_os_rng(),
            },
        }
    }

    /// Moves the window to `now`, forgetting buckets that left it.
    fn advance(&mut self, now: Instant) {
        let idx = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            / self.bucket_ns;
        if idx <= self.head {
            return;
        }
        let n = self.buckets.len() as u64;
        let steps = idx - self.head;
        if steps >= n {
            self.buckets.fill(Bucket::default());
            self.requests = 0;
            self.accepts = 0;
        } else {
            for i in 1..=steps {
                let slot = ((self.head + i) % n) as usize;
                let b = std::mem::take(&mut self.buckets[slot]);
                self.requests -= b.requests;
                self.accepts -= b.accepts;
            }
        }
        self.head = idx;
    }

    fn slot(&self) -> usize {
        (self.head % self.buckets.len() as u64) as usize
    }

    /// The rejection probability given the window's totals.
    pub(crate) fn probability(&self) -> f64 {
        let requests = self.requests as f64;
        let p = (requests - self.k * self.accepts as f64) / (requests + 1.0);
        p.clamp(0.0, self.cap)
    }

    /// The probability at `now` (moves the window).
    pub(crate) fn probability_at(&mut self, now: Instant) -> f64 {
        self.advance(now);
        self.probability()
    }

    /// Counts a request and decides whether it may be sent (`true`) or is
    /// throttled (`false`). The probability is computed before the request is
    /// counted.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        self.advance(now);
        let p = self.probability();
        let slot = self.slot();
        self.buckets[slot].requests += 1;
        self.requests += 1;
        !(p > 0.0 && self.rng.random::<f64>() < p)
    }

    /// The ring slot of the bucket a request admitted at `admitted_at` was
    /// counted in, if that bucket is still in the window.
    fn slot_of(&self, admitted_at: Instant) -> Option<usize> {
        let idx = u64::try_from(admitted_at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            / self.bucket_ns;
        let n = self.buckets.len() as u64;
        if idx > self.head || self.head - idx >= n {
            // In the future (cannot happen: admission advanced the head) or
            // already out of the window.
            return None;
        }
        Some((idx % n) as usize)
    }

    /// Counts an accepted request that was admitted at `admitted_at`: in that
    /// request's bucket if it is still in the window, else not at all (its
    /// request has left the window too).
    pub(crate) fn accept(&mut self, admitted_at: Instant) {
        if let Some(slot) = self.slot_of(admitted_at) {
            self.buckets[slot].accepts += 1;
            self.accepts += 1;
        }
    }

    /// Takes back the request admitted at `admitted_at` (its call ended with
    /// an outcome that is not counted): from that request's bucket if it is
    /// still in the window, else nothing (it has left the window already).
    /// The running totals stay the sum of the buckets.
    pub(crate) fn forget(&mut self, admitted_at: Instant) {
        if let Some(slot) = self.slot_of(admitted_at) {
            let bucket = &mut self.buckets[slot];
            if bucket.requests > 0 {
                bucket.requests -= 1;
                self.requests -= 1;
            }
        }
    }

    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.requests, self.accepts)
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
        let mut t = w();
        let now = t.epoch;
        for _ in 0..100 {
            t.requests += 1;
        }
        t.accepts = 30;
        // (100 − 60) / 101
        assert!((t.probability() - 40.0 / 101.0).abs() < 1e-12);
        t.accepts = 50;
        assert_eq!(t.probability(), 0.0);
        t.accepts = 0;
        // 100 / 101 capped at 0.9
        assert_eq!(t.probability(), 0.9);
        let _ = now;
    }

    #[test]
    fn healthy_backend_is_never_throttled() {
        let mut t = w();
        let now = t.epoch;
        for _ in 0..10_000 {
            assert!(t.admit(now));
            t.accept(now);
        }
        assert_eq!(t.totals(), (10_000, 10_000));
    }

    #[test]
    fn buckets_leave_the_window() {
        let mut t = w();
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
        let mut t = w();
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
        let mut t = w();
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
        let mut t = w();
        let now = t.epoch;
        t.requests = 1000;
        t.buckets[0].requests = 1000;
        // p = 0.9 (cap): about 90% of 10 000 draws throttled.
        let mut sent = 0;
        for _ in 0..10_000 {
            // keep requests fixed to hold p constant
            if t.admit(now) {
                sent += 1;
            }
            t.requests = 1000;
            t.buckets[0].requests = 1000;
        }
        assert!((900..=1100).contains(&sent), "sent {sent}");
    }
}
