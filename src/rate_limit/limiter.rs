//! The local limiting engine (no tower types): GCRA on tokio's clock
//! (governor's algorithm, written out), one atomic word per bucket, for a
//! global limit or per key over a bounded map. The quota lives in atomics
//! so that it can change while the buckets keep what they owe.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::bounded::BoundedMap;
use super::key::Key;
use super::quota::Quota;
use crate::error::ConfigError;

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

/// The "wait" of a cost above the burst: it never fits.
pub(crate) const NEVER: Duration = Duration::MAX;

/// A quota that can change at run time: the period (nanoseconds per cell),
/// the burst tolerance and the burst, in atomics (the tolerance computed
/// when the quota is set, not on every check). A check racing with a change
/// may see one quota's period with the other's burst for that one decision,
/// and may leave its bucket owing up to one burst window of the old quota
/// (which runs down as time passes).
#[derive(Debug)]
pub(crate) struct QuotaCell {
    /// Nanoseconds per cell (at least 1).
    t: AtomicU64,
    /// `t × (burst − 1)`.
    tau: AtomicU64,
    burst: AtomicU32,
}

impl QuotaCell {
    pub(crate) fn new(quota: Quota, what: &str) -> Result<QuotaCell, ConfigError> {
        let (t, tau, burst) = Self::parts(quota, what)?;
        Ok(QuotaCell {
            t: AtomicU64::new(t),
            tau: AtomicU64::new(tau),
            burst: AtomicU32::new(burst),
        })
    }

    /// `(t, tau, burst)` of a valid quota.
    fn parts(quota: Quota, what: &str) -> Result<(u64, u64, u32), ConfigError> {
        quota.validate(what)?;
        let t = crate::clock::nanos(quota.period()).max(1);
        let burst = quota.burst_size();
        Ok((t, t.saturating_mul(u64::from(burst.max(1) - 1)), burst))
    }

    /// Replaces the quota (validated first; nothing changes on an error).
    /// Callers serialise changes (the layer's reload lock), so that two
    /// reloads at once leave one of their quotas, not a mix.
    pub(crate) fn set(&self, quota: Quota, what: &str) -> Result<(), ConfigError> {
        let (t, tau, burst) = Self::parts(quota, what)?;
        self.t.store(t, Ordering::Relaxed);
        self.tau.store(tau, Ordering::Relaxed);
        self.burst.store(burst, Ordering::Relaxed);
        Ok(())
    }

    /// The quota now.
    pub(crate) fn get(&self) -> Quota {
        Quota::with_period(Duration::from_nanos(self.t.load(Ordering::Relaxed)))
            .burst(self.burst.load(Ordering::Relaxed))
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst.load(Ordering::Relaxed)
    }

    /// `(t, tau, burst)`: nanoseconds per cell, the burst tolerance
    /// `t × (burst − 1)`, and the burst.
    #[inline]
    fn gcra(&self) -> (u64, u64, u32) {
        (
            self.t.load(Ordering::Relaxed),
            self.tau.load(Ordering::Relaxed),
            self.burst.load(Ordering::Relaxed),
        )
    }
}

/// Nanoseconds from `start` to now (one clock read).
#[inline]
fn nanos_since(start: Instant) -> u64 {
    crate::clock::nanos_between(start, crate::clock::edge_now())
}

/// One GCRA decision on the theoretical arrival time in `cell`
/// (nanoseconds since the table's start; 0 = none yet), governor's
/// algorithm: the same admissions, `remaining` and waits as its limiters.
///
/// What a bucket owes is cut to one burst of a new quota when the quota
/// changes ([`owe_at_most_one_burst`]), not here: a check that read the
/// clock a little before another thread's (threads read it apart) sees
/// that thread's admission beyond its own `now + tau + t`, and cutting it
/// there undid the admission.
#[inline(always)]
fn gcra(
    cell: &AtomicU64,
    q: &QuotaCell,
    now: u64,
    cost: u32,
    want_status: bool,
) -> Result<Admit, Duration> {
    let (t, tau, burst) = q.gcra();
    // A request of one cell (the usual) has no extra to compute.
    let extra = if cost > 1 {
        t.saturating_mul(u64::from(cost - 1))
    } else {
        0
    };
    // Never fits: judged by the burst read with the period (not by `tau`,
    // stored apart, which a check racing with a change may read from the
    // other quota). One cell always fits: a burst is at least 1.
    if cost > 1 && cost > burst {
        return Err(NEVER);
    }
    let full = now.saturating_add(tau).saturating_add(t);
    let mut prev = cell.load(Ordering::Acquire);
    loop {
        let tat = if prev == 0 { now } else { prev };
        let earliest = tat.saturating_add(extra).saturating_sub(tau);
        if now < earliest {
            return Err(Duration::from_nanos(earliest - now));
        }
        let next = tat.max(now).saturating_add(t).saturating_add(extra);
        match cell.compare_exchange_weak(prev, next, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => {
                if !want_status {
                    return Ok(Admit::UNKNOWN);
                }
                return Ok(status(full, next, t, tau, burst));
            }
            Err(actual) => prev = actual,
        }
    }
}

/// The bucket's state after an admission that left its theoretical
/// arrival time at `next`, seen when it is `full` (`tau + t` after the
/// admission's instant).
#[inline(always)]
fn status(full: u64, next: u64, t: u64, tau: u64, burst: u32) -> Admit {
    let remaining = (full.saturating_sub(next)).min(tau.saturating_add(t)) / t;
    let remaining = remaining as u32;
    let used = burst.saturating_sub(remaining);
    Admit {
        remaining,
        reset: Duration::from_nanos(t).saturating_mul(used),
    }
}

/// Cells a request took from one bucket (see [`take`]): the request
/// conforms at `at`. Given back, they put the bucket's theoretical arrival
/// time back from `after` to `before` — only while no later request has
/// taken cells after them (the time is still `after`); otherwise they stay
/// spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// When the request conforms: nanoseconds since the bucket's start (its
    /// `now` for one that conformed at once).
    at: u64,
    before: u64,
    after: u64,
    /// The time its cells stand for, `t × cost`.
    span: u64,
}

/// GCRA for a request admitted at the first instant, from `max(now,
/// from)`, at which it conforms, if that is no later than `latest`: its
/// cells are taken now, the theoretical arrival time moved on as if it were
/// admitted then, so that requests that wait for cells are given them in
/// the order they came, each at its own time. For `from` and `latest` at
/// `now` this is [`gcra`]'s decision (the same admissions, times and
/// status). `Err(Some(at))`: the request conforms only at `at`, after
/// `latest` (nothing taken); `Err(None)`: its cost is above the burst.
/// The status is the bucket's at `at`.
fn take(
    cell: &AtomicU64,
    q: &QuotaCell,
    now: u64,
    cost: u32,
    (from, latest): (u64, u64),
    want_status: bool,
) -> Result<(Admit, Taken), Option<u64>> {
    let (t, tau, burst) = q.gcra();
    let extra = t.saturating_mul(u64::from(cost.saturating_sub(1)));
    if cost > 1 && cost > burst {
        return Err(None);
    }
    let from = from.max(now);
    let mut prev = cell.load(Ordering::Acquire);
    loop {
        let tat = if prev == 0 { now } else { prev };
        let at = tat.saturating_add(extra).saturating_sub(tau).max(from);
        if at > latest {
            return Err(Some(at));
        }
        let base = tat.max(at);
        let next = base.saturating_add(t).saturating_add(extra);
        match cell.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let admit = if want_status {
                    status(
                        at.saturating_add(tau).saturating_add(t),
                        next,
                        t,
                        tau,
                        burst,
                    )
                } else {
                    Admit::UNKNOWN
                };
                let taken = Taken {
                    at,
                    before: prev,
                    after: next,
                    span: next - base,
                };
                return Ok((admit, taken));
            }
            Err(actual) => prev = actual,
        }
    }
}

/// Gives the cells of `taken` back to `cell` if no later request has taken
/// cells after them; whether it did.
fn give_back(cell: &AtomicU64, taken: &Taken) -> bool {
    cell.compare_exchange(
        taken.after,
        taken.before,
        Ordering::AcqRel,
        Ordering::Acquire,
    )
    .is_ok()
}

/// Moves the admission of cells `taken` from `cell` on to `to` (later than
/// its time): the bucket counts the request then, as if it had come then
/// (a request that waits for another bucket too, called at the later of
/// their times). Only while no later request has taken cells after it;
/// whether it moved.
fn retime(cell: &AtomicU64, taken: &mut Taken, to: u64) -> bool {
    let after = taken.after.max(to.saturating_add(taken.span));
    let moved = cell
        .compare_exchange(taken.after, after, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if moved {
        taken.after = after;
        taken.at = to;
    }
    moved
}

/// What [`Bucket::take`] and [`KeyedBuckets::take`] answer: the cells
/// taken (with the bucket's status at the admission, and its instant), or
/// the instant the request would conform (`None`: never, its cost is above
/// the burst).
pub(crate) type Took = Result<(Admit, Taken, Instant), Option<Instant>>;

/// Cuts what the bucket in `cell` owes to one whole burst of the quota in
/// `q` at `now` (its theoretical arrival time to at most `now + tau + t`):
/// run when the quota changes, so that a bucket left owing a larger quota's
/// burst owes one burst of the new one, and from then on runs down as time
/// passes. A request waiting for cells it reserved keeps its time; the
/// bucket forgets the cells beyond the bound.
fn owe_at_most_one_burst(cell: &AtomicU64, q: &QuotaCell, now: u64) {
    let (t, tau, _) = q.gcra();
    let full = now.saturating_add(tau).saturating_add(t);
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |prev| {
        (prev > full).then_some(full)
    });
}

/// One GCRA bucket on one atomic word and tokio's clock.
///
/// A check is one clock read (shared by the layers of a call) and one
/// compare-and-swap.
#[derive(Debug)]
pub(crate) struct Bucket {
    quota: QuotaCell,
    start: Instant,
    tat: AtomicU64,
    drains: bool,
}

/// The cost a bucket charges: a stand-in for the layer's quota (a share of
/// it while Redis is down, the keyless fallback's) charges a request that
/// the layer's quota lets through, but that costs more than its own burst,
/// the whole burst: it passes when the bucket is full, where it would never
/// pass.
#[inline(always)]
fn charged(drains: bool, quota: &QuotaCell, cost: u32) -> u32 {
    if drains && cost > 1 {
        cost.min(quota.burst())
    } else {
        cost
    }
}

impl Bucket {
    pub(crate) fn new(quota: Quota, what: &str) -> Result<Bucket, ConfigError> {
        Ok(Bucket {
            quota: QuotaCell::new(quota, what)?,
            start: crate::clock::edge_now(),
            tat: AtomicU64::new(0),
            drains: false,
        })
    }

    /// A stand-in for the layer's quota: a request costing more than this
    /// bucket's burst (but within the layer's, which the layer checks)
    /// takes the whole burst.
    pub(crate) fn stand_in(mut self) -> Self {
        self.drains = true;
        self
    }

    /// `cost` cells (at least 1). `want_status`: compute `remaining` /
    /// `reset` (a division), only needed for response headers; otherwise
    /// both read 0. A cost above the burst is refused with [`NEVER`] (a
    /// stand-in charges the burst).
    #[inline]
    pub(crate) fn check(&self, cost: u32, want_status: bool) -> Result<Admit, Duration> {
        gcra(
            &self.tat,
            &self.quota,
            nanos_since(self.start),
            charged(self.drains, &self.quota, cost),
            want_status,
        )
    }

    /// [`take`]: `cost` cells (charged as [`check`](Self::check) charges
    /// them) for a request admitted at the first instant from `from` (and
    /// `now`) at which it conforms, if that is no later than `latest`.
    pub(crate) fn take(
        &self,
        cost: u32,
        now: Instant,
        (from, latest): (Instant, Instant),
        want_status: bool,
    ) -> Took {
        let ns = |at| crate::clock::nanos_between(self.start, at);
        take(
            &self.tat,
            &self.quota,
            ns(now),
            charged(self.drains, &self.quota, cost),
            (ns(from), ns(latest)),
            want_status,
        )
        .map(|(a, taken)| (a, taken, self.at(taken.at)))
        .map_err(|at| at.map(|at| self.at(at)))
    }

    /// Gives cells taken by [`take`](Self::take) back, if no later request
    /// took cells after them; whether it did.
    pub(crate) fn give_back(&self, taken: &Taken) -> bool {
        give_back(&self.tat, taken)
    }

    /// Moves the admission of cells taken by [`take`](Self::take) on to
    /// `to`, if no later request took cells after them; whether it did.
    pub(crate) fn retime(&self, taken: &mut Taken, to: Instant) -> bool {
        retime(
            &self.tat,
            taken,
            crate::clock::nanos_between(self.start, to),
        )
    }

    /// The instant `ns` nanoseconds after the bucket's start.
    fn at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    pub(crate) fn quota(&self) -> &QuotaCell {
        &self.quota
    }

    /// Changes the quota (see [`QuotaCell::set`]); the bucket then owes at
    /// most one burst of the new one.
    pub(crate) fn set_quota(&self, quota: Quota, what: &str) -> Result<(), ConfigError> {
        self.quota.set(quota, what)?;
        owe_at_most_one_burst(&self.tat, &self.quota, nanos_since(self.start));
        Ok(())
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
/// A known key costs one map lookup (no lock: it waits on no insertion and
/// no sweep) and one compare-and-swap. A new key takes a slot under the cap
/// (an atomic compare-and-swap, under its bucket's lock) before it is inserted;
/// when no slot is free, the key is not inserted and the check is
/// [`KeyedCheck::Full`]. Idle keys (whose bucket is full again) are evicted
/// by the calls themselves: every `sweep_every` insertions, and when a new
/// key arrives at the cap — at most once per `min_sweep_interval`, by one
/// caller at a time (the others do not wait).
#[derive(Debug)]
pub(crate) struct KeyedBuckets {
    quota: QuotaCell,
    start: Instant,
    /// Each key's theoretical arrival time.
    map: BoundedMap<AtomicU64>,
    /// Keys inserted so far.
    inserts: AtomicU64,
    settings: KeyedSettings,
    drains: bool,
}

impl KeyedBuckets {
    pub(crate) fn new(quota: Quota, settings: KeyedSettings) -> Result<Self, ConfigError> {
        let quota = QuotaCell::new(quota, "quota")?;
        if settings.max_keys == 0 {
            return Err(ConfigError::new(
                "rate_limit",
                "max_keys must be at least 1, got 0",
            ));
        }
        if settings.sweep_every == 0 {
            return Err(ConfigError::new(
                "rate_limit",
                "sweep_every must be at least 1 key, got 0",
            ));
        }
        if settings.min_sweep_interval.is_zero() {
            return Err(ConfigError::new(
                "rate_limit",
                "min_sweep_interval must be above zero (a flood of new keys at the cap \
                 would scan the map on every request), got 0ns",
            ));
        }
        Ok(KeyedBuckets {
            quota,
            start: crate::clock::edge_now(),
            map: BoundedMap::new(settings.max_keys, settings.min_sweep_interval),
            inserts: AtomicU64::new(0),
            settings,
            drains: false,
        })
    }

    /// As [`Bucket::stand_in`].
    pub(crate) fn stand_in(mut self) -> Self {
        self.drains = true;
        self
    }

    /// `op` on the bucket of `key` (inserted if new); `None` for a new key
    /// at the cap. The second value says whether a sweep is due (this call
    /// inserted the `sweep_every`-th key).
    #[inline]
    fn once<R>(&self, key: &Key, op: impl FnOnce(&AtomicU64) -> R) -> (Option<R>, bool) {
        let done = self.map.with(
            key,
            || AtomicU64::new(0),
            |tat, new| {
                let r = op(tat);
                let due = new
                    && (self.inserts.fetch_add(1, Ordering::Relaxed) + 1)
                        % self.settings.sweep_every
                        == 0;
                (r, due)
            },
        );
        match done {
            Some((r, due)) => (Some(r), due),
            None => (None, false),
        }
    }

    /// `op` on the bucket of `key`, at `now`: a new key at the cap evicts
    /// idle keys (if a sweep is allowed now) and tries once more; `None`
    /// when it still finds no room.
    #[inline]
    fn on_bucket<R>(&self, key: &Key, now: u64, op: impl Fn(&AtomicU64) -> R) -> Option<R> {
        let (r, sweep_due) = match self.once(key, &op) {
            (None, _) if self.sweep_at(now) => self.once(key, &op),
            r => r,
        };
        if sweep_due {
            self.sweep_at(now);
        }
        r
    }

    /// One cell for `key`: one map lookup for a known key.
    #[inline]
    pub(crate) fn check(&self, key: &Key, cost: u32, want_status: bool) -> KeyedCheck {
        let now = nanos_since(self.start);
        let cost = charged(self.drains, &self.quota, cost);
        match self.on_bucket(key, now, |tat| {
            gcra(tat, &self.quota, now, cost, want_status)
        }) {
            Some(r) => KeyedCheck::Decided(r),
            None => KeyedCheck::Full,
        }
    }

    /// [`Bucket::take`] on the bucket of `key`; `None` for a new key at the
    /// cap (as [`check`](Self::check)'s `Full`).
    pub(crate) fn take(
        &self,
        key: &Key,
        cost: u32,
        now: Instant,
        (from, latest): (Instant, Instant),
        want_status: bool,
    ) -> Option<Took> {
        let ns = |at| crate::clock::nanos_between(self.start, at);
        let now = ns(now);
        let cost = charged(self.drains, &self.quota, cost);
        let within = (ns(from), ns(latest));
        let r = self.on_bucket(key, now, |tat| {
            take(tat, &self.quota, now, cost, within, want_status)
        })?;
        Some(
            r.map(|(a, taken)| (a, taken, self.at(taken.at)))
                .map_err(|at| at.map(|at| self.at(at))),
        )
    }

    /// [`Bucket::give_back`] to the bucket of `key` (none if the key is no
    /// longer tracked).
    pub(crate) fn give_back(&self, key: &Key, taken: &Taken) -> bool {
        self.map
            .read(key, |tat| give_back(tat, taken))
            .unwrap_or(false)
    }

    /// [`Bucket::retime`] on the bucket of `key`.
    pub(crate) fn retime(&self, key: &Key, taken: &mut Taken, to: Instant) -> bool {
        let to = crate::clock::nanos_between(self.start, to);
        self.map
            .read(key, |tat| retime(tat, taken, to))
            .unwrap_or(false)
    }

    /// The instant `ns` nanoseconds after the table's start.
    fn at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    /// Evicts idle keys; returns whether a sweep ran.
    pub(crate) fn sweep(&self) -> bool {
        self.sweep_at(nanos_since(self.start))
    }

    /// [`sweep`](Self::sweep) at `now` (nanoseconds since `start`).
    fn sweep_at(&self, now: u64) -> bool {
        // Idle: the bucket is full again (its theoretical arrival time has
        // passed), indistinguishable from a new key's.
        self.map
            .sweep(now, |tat| tat.load(Ordering::Acquire) > now)
            .is_some()
    }

    pub(crate) fn tracked(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.map.evicted()
    }

    pub(crate) fn quota(&self) -> &QuotaCell {
        &self.quota
    }

    /// Changes the quota (see [`QuotaCell::set`]); every key's bucket then
    /// owes at most one burst of the new one (one pass over the keys).
    pub(crate) fn set_quota(&self, quota: Quota, what: &str) -> Result<(), ConfigError> {
        self.quota.set(quota, what)?;
        let now = nanos_since(self.start);
        self.map
            .for_each(|tat| owe_at_most_one_burst(tat, &self.quota, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    /// A check that reads one quota's period and the other's burst
    /// tolerance (a reload between the stores: 1 ms × 10 to 10 ms × 10)
    /// may wait, but never refuses for good a cost both bursts allow.
    #[test]
    fn a_check_racing_a_reload_never_refuses_a_cost_that_fits_for_good() {
        use std::sync::atomic::{AtomicU32, AtomicU64};
        let mixed = QuotaCell {
            t: AtomicU64::new(10_000_000),
            tau: AtomicU64::new(9_000_000),
            burst: AtomicU32::new(10),
        };
        let cell = AtomicU64::new(0);
        for cost in 1..=10 {
            let r = gcra(&cell, &mixed, 1_000_000_000, cost, false);
            assert_ne!(r, Err(NEVER), "cost {cost}");
        }
        assert_eq!(gcra(&cell, &mixed, 1_000_000_000, 11, false), Err(NEVER));
    }

    /// Two threads read the clock a little apart: one that read it later
    /// admits first, then one that read it earlier checks. The later
    /// admission stands: at 1 a second (burst 1), the one cell of 5 s is
    /// taken once, and the next comes at 6 s. (The cut meant for a quota
    /// change read the admission as owed beyond the earlier `now`, took it
    /// back, and admitted a second request at 5 s.)
    #[test]
    fn a_check_that_read_the_clock_earlier_never_undoes_an_admission() {
        const S: u64 = 1_000_000_000;
        let q = QuotaCell::new(Quota::per_second(1), "quota").unwrap();
        let cell = AtomicU64::new(0);
        assert!(gcra(&cell, &q, 5 * S, 1, false).is_ok());
        assert_eq!(cell.load(Ordering::Relaxed), 6 * S);
        // Read the clock at 4 s, checks after the admission: 2 s to wait.
        assert_eq!(
            gcra(&cell, &q, 4 * S, 1, false),
            Err(Duration::from_secs(2))
        );
        assert_eq!(cell.load(Ordering::Relaxed), 6 * S);
        assert_eq!(
            gcra(&cell, &q, 5 * S, 1, false),
            Err(Duration::from_secs(1))
        );
        assert!(gcra(&cell, &q, 6 * S, 1, false).is_ok());
    }

    use governor::RateLimiter;
    use governor::clock::Clock as _;
    use governor::middleware::StateInformationMiddleware;

    use super::super::clock::{TokioClock, TokioInstant};

    #[tokio::test(start_paused = true)]
    async fn the_test_clock_follows_paused_time() {
        use governor::clock::Reference;
        use governor::nanos::Nanos;
        let c = TokioClock::new();
        let a = c.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        let b = c.now();
        assert_eq!(
            b.duration_since(a),
            Nanos::from(Duration::from_millis(1500))
        );
        assert_eq!(a.duration_since(b), Nanos::from(0u64));
        assert_eq!(a + Nanos::from(Duration::from_millis(1500)), b);
        assert_eq!(
            b.saturating_sub(Nanos::from(Duration::from_millis(1500))),
            a
        );
    }

    fn admit(quota: &Quota, remaining: u32) -> Admit {
        let used = quota.burst_size().saturating_sub(remaining);
        Admit {
            remaining,
            reset: quota.period().saturating_mul(used),
        }
    }

    fn governor_quota(quota: Quota) -> governor::Quota {
        governor::Quota::with_period(quota.period())
            .unwrap()
            .allow_burst(NonZeroU32::new(quota.burst_size()).unwrap())
    }

    /// The buckets decide as governor's limiters do, cell for cell: the same
    /// admissions, `remaining` and waits, over 3000 steps of random gaps,
    /// costs and (for keyed buckets) keys in paused time.
    #[test]
    fn the_buckets_decide_as_governor_does() {
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
                let taking = Bucket::new(quota, "q").unwrap();
                let keyed = KeyedBuckets::new(quota, settings(100)).unwrap();
                let theirs =
                    RateLimiter::direct_with_clock(governor_quota(quota), TokioClock::new())
                        .with_middleware::<StateInformationMiddleware>();
                let theirs_keyed =
                    RateLimiter::dashmap_with_clock(governor_quota(quota), TokioClock::new())
                        .with_middleware::<StateInformationMiddleware>();
                let mut z = 7u64;
                for _ in 0..3000 {
                    z = crate::clock::splitmix64(z);
                    tokio::time::advance(Duration::from_millis(z % 97)).await;
                    let cost = 1 + (z >> 20) as u32 % 3;
                    let key = (z >> 40) % 4;
                    let decide = |r: Result<
                        Result<
                            governor::middleware::StateSnapshot,
                            governor::NotUntil<TokioInstant>,
                        >,
                        governor::InsufficientCapacity,
                    >| match r {
                        Err(_) => Err(NEVER),
                        Ok(Ok(snap)) => Ok(admit(&quota, snap.remaining_burst_capacity())),
                        Ok(Err(nu)) => Err(nu.wait_time_from(TokioClock::new().now())),
                    };
                    let n = NonZeroU32::new(cost).unwrap();
                    let checked = ours.check(cost, true);
                    assert_eq!(checked, decide(theirs.check_n(n)), "{quota:?}, cost {cost}");
                    // Taking cells for now alone decides as a check does.
                    let now = Instant::now();
                    let took = taking
                        .take(cost, now, (now, now), true)
                        .map(|(a, _, _)| a)
                        .map_err(|at| at.map_or(NEVER, |at| at - now));
                    assert_eq!(took, checked, "{quota:?}, cost {cost}");
                    assert_eq!(
                        keyed.check(&Key::from_u64(key), cost, true),
                        KeyedCheck::Decided(decide(theirs_keyed.check_key_n(&key, n))),
                        "{quota:?}, key {key}, cost {cost}"
                    );
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

    /// A changed quota keeps what each bucket owes, in time, within the new
    /// burst: a key that spent 100 cells of `100/s` owes one second, the
    /// whole new burst of `10/s`; a key that spent nothing starts full.
    #[tokio::test(start_paused = true)]
    async fn a_changed_quota_keeps_what_buckets_owe() {
        let k = KeyedBuckets::new(Quota::per_second(100), settings(10)).unwrap();
        let (spent, fresh) = (Key::from_u64(0), Key::from_u64(1));
        assert!(matches!(
            k.check(&spent, 100, false),
            KeyedCheck::Decided(Ok(_))
        ));
        assert!(matches!(
            k.check(&fresh, 1, false),
            KeyedCheck::Decided(Ok(_))
        ));
        tokio::time::advance(Duration::from_millis(10)).await;
        k.set_quota(Quota::per_second(10), "quota").unwrap();
        assert_eq!(k.quota().get(), Quota::per_second(10));
        // 990 ms owed, 900 ms of tolerance: the next cell in 90 ms.
        assert_eq!(
            k.check(&spent, 1, false),
            KeyedCheck::Decided(Err(Duration::from_millis(90)))
        );
        for left in (0..10).rev() {
            assert_eq!(
                k.check(&fresh, 1, true),
                KeyedCheck::Decided(Ok(Admit {
                    remaining: left,
                    reset: Duration::from_millis(100) * (10 - left),
                }))
            );
        }
        assert_eq!(
            k.check(&fresh, 1, false),
            KeyedCheck::Decided(Err(Duration::from_millis(100)))
        );
        // Larger again: what is owed stays, the burst grows.
        let b = Bucket::new(Quota::per_second(10), "quota").unwrap();
        assert!(b.check(10, false).is_ok());
        b.set_quota(Quota::per_second(10).burst(20), "quota")
            .unwrap();
        assert!(b.check(10, false).is_ok());
        assert_eq!(b.check(1, false), Err(Duration::from_millis(100)));
        assert!(b.set_quota(Quota::per_second(0), "quota").is_err());
        assert_eq!(b.quota().get(), Quota::per_second(10).burst(20));
    }

    /// A bucket that owed far more than a new quota's burst (its old window
    /// was a minute) owes one new burst and no more: the next cell comes a
    /// new period later, and what it owes runs down from there.
    #[tokio::test(start_paused = true)]
    async fn a_smaller_window_cuts_what_a_bucket_owes_to_one_burst() {
        for keyed in [false, true] {
            let b = Bucket::new(Quota::per_minute(600), "quota").unwrap();
            let k = KeyedBuckets::new(Quota::per_minute(600), settings(10)).unwrap();
            let key = Key::from_u64(7);
            let check = |cost| {
                if keyed {
                    match k.check(&key, cost, false) {
                        KeyedCheck::Decided(r) => r,
                        KeyedCheck::Full => panic!("full"),
                    }
                } else {
                    b.check(cost, false)
                }
            };
            // The whole minute's burst at once: owed until t0 + 60 s.
            assert!(check(600).is_ok());
            b.set_quota(Quota::per_second(10), "quota").unwrap();
            k.set_quota(Quota::per_second(10), "quota").unwrap();
            assert_eq!(check(1), Err(Duration::from_millis(100)), "keyed {keyed}");
            tokio::time::advance(Duration::from_millis(100)).await;
            assert!(check(1).is_ok(), "keyed {keyed}: a new period later");
            assert_eq!(check(1), Err(Duration::from_millis(100)));
            // A second later the bucket is full again.
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(check(10).is_ok(), "keyed {keyed}");
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
}
