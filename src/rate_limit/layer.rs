use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;

use super::decorate::{NoHeaders, RateLimitStatus};
use super::key::{Global, Key, MissingKey, Prefixes};
use super::limiter::{
    Admit, Bucket, KeyedBuckets, KeyedCheck, NEVER, QuotaCell, Taken, Took, Verdict,
};
use super::quota::Quota;
use super::service::RateLimit;
use crate::error::{ConfigError, Name};
use crate::observe::{EventKind, LayerKind, Observer};

/// What a request does when its limit has no cell for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Fail at once with [`RateLimited`](crate::error::RateLimited), whose
    /// `retry_after` is the wait until the request would conform, stretched
    /// by a factor in `[1, 1.5)` so that callers refused together do not
    /// all come back at the instant a cell frees (never shorter than the
    /// wait; the default).
    #[default]
    Reject,
    /// Wait for a cell, up to `max` — and never past the request's deadline
    /// ([`deadline::current()`](crate::deadline::current)). A request that
    /// finds no cell takes its cells at once for the first instant they are
    /// free (from its own bucket and a
    /// [`global_quota`](super::RateLimitLayerBuilder::global_quota)'s, for
    /// the later of their two times), as if it were admitted then, and is
    /// called at that instant without another check: waiting requests are
    /// served in the order they came, each at its own time. One whose time
    /// would come after `max` fails at once with `RateLimited` (its
    /// `retry_after` the wait until that time, stretched by up to half);
    /// after its deadline, at once with `DeadlineExceeded`. Dropped before its time, a request gives
    /// its cells back, unless a later request took cells after them (those
    /// stay spent, and the later requests keep their times). Through Redis
    /// (requests with a key) a waiting request takes no cells: it waits for
    /// the time Redis told it, then asks again, so requests waiting on one
    /// key may be told the same time, and all but one wait again. A request
    /// that waits keeps its wait (timer, key, request, cells) in one
    /// allocation; one admitted at once allocates nothing.
    Wait {
        /// The longest wait (`Duration::MAX`: no maximum of the layer's
        /// own; the request's deadline still bounds it).
        max: Duration,
    },
}

/// What happens to a request that has no usable key (the extractor found
/// none), or whose key is new while the limiter already tracks
/// [`max_keys`](super::RateLimitLayerBuilder::max_keys) keys and none is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fallback {
    /// All such requests share one bucket with the layer's quota (or the one
    /// set with [`RateLimitLayerBuilder::fallback_quota`](super::RateLimitLayerBuilder::fallback_quota)) — the default.
    /// The bucket is this instance's, with a Redis backend too: a fleet of
    /// `n` instances admits keyless requests at `n` times the quota (in an
    /// outside trial, two instances admitted 43.8 a second against a
    /// tenant's 21.9); `fallback_quota` can divide it.
    #[default]
    SharedBucket,
    /// Reject them with [`RateLimited`](crate::error::RateLimited) (no
    /// `retry_after`).
    Reject,
}

/// Rejection details reported in [`EventKind::Rejected`].
pub(crate) const DETAIL_LIMIT: &str = "limit";
pub(crate) const DETAIL_GLOBAL: &str = "global_limit";
pub(crate) const DETAIL_NO_KEY: &str = "no_key";
pub(crate) const DETAIL_KEYS_FULL: &str = "keys_full";
pub(crate) const DETAIL_WAIT_TOO_LONG: &str = "wait_exceeds_limit";
/// A request costs more cells than the burst holds: it can never pass.
pub(crate) const DETAIL_COST: &str = "cost_above_burst";
#[cfg(feature = "redis")]
pub(crate) const DETAIL_BACKEND: &str = "backend_unavailable";
/// Waiting, the request's cell would come only after its deadline.
pub(crate) const DETAIL_DEADLINE_BEFORE_CELL: &str = "deadline_before_cell";
/// The request's deadline passed before Redis answered.
#[cfg(feature = "redis")]
pub(crate) const DETAIL_DEADLINE_IN_BACKEND: &str = "deadline_in_backend";

pub(crate) enum Primary {
    Global(Bucket),
    Keyed(KeyedBuckets),
}

/// Which bucket gave a request its own cells (the request's key says
/// which of a table's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Own {
    /// Its key's (or the one global bucket's).
    Primary,
    /// Its network's, in the overflow table.
    Overflow,
    /// The keyless fallback's.
    Fallback,
}

/// A request's own bucket, found again.
enum OwnBucket<'a> {
    One(&'a Bucket),
    Keyed(&'a KeyedBuckets, Key),
}

impl OwnBucket<'_> {
    fn give_back(&self, taken: &Taken) -> bool {
        match self {
            OwnBucket::One(b) => b.give_back(taken),
            OwnBucket::Keyed(t, k) => t.give_back(k, taken),
        }
    }

    fn retime(&self, taken: &mut Taken, to: Instant) -> bool {
        match self {
            OwnBucket::One(b) => b.retime(taken, to),
            OwnBucket::Keyed(t, k) => t.retime(k, taken, to),
        }
    }
}

/// The cells a waiting request took: its own bucket's and the global
/// quota's (see [`Shared::reserve`]), given back if it is dropped before
/// its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    own: Own,
    taken: Taken,
    global: Option<Taken>,
}

/// A waiting request's decision ([`Shared::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// Admitted at once, or refused (with the wait until its time when that
    /// comes too late).
    Now(Verdict, Option<RateLimitStatus>),
    /// Its cells are taken for `at`: called then, without another check.
    Later {
        at: Instant,
        status: Option<RateLimitStatus>,
        held: Held,
    },
}

pub(crate) enum Step {
    Now(Verdict, Option<RateLimitStatus>),
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisCall),
}

/// A refusal with the wait until the request conforms (none for a cost
/// above the burst: it never will).
fn deny(wait: Duration, detail: &'static str) -> Verdict {
    if wait == NEVER {
        return Verdict::Deny {
            wait: None,
            detail: DETAIL_COST,
        };
    }
    Verdict::Deny {
        wait: Some(wait),
        detail,
    }
}

/// The wait from `now` until `at` (`None`: never, [`NEVER`]).
fn wait_until(now: Instant, at: Option<Instant>) -> Duration {
    at.map_or(NEVER, |at| crate::clock::elapsed(now, at))
}

/// State shared by every service built from one layer.
pub(crate) struct Shared<X, D> {
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    pub(crate) extractor: X,
    pub(crate) decorator: D,
    pub(crate) mode: Mode,
    pub(crate) quota: QuotaCell,
    /// Whether the fallback bucket and the overflow table follow the
    /// layer's quota (no `fallback_quota` of their own).
    pub(super) fallback_follows: bool,
    /// Held by a quota change.
    pub(super) reload: std::sync::Mutex<()>,
    pub(super) primary: Primary,
    pub(super) global: Option<Bucket>,
    pub(super) fallback: Fallback,
    pub(super) fallback_bucket: Option<Bucket>,
    /// New IP keys at the cap: one bucket per coarser network.
    pub(super) overflow: Option<KeyedBuckets>,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<Arc<super::redis::RedisState>>,
    /// Stretches the hints of refusals.
    pub(crate) jitter: crate::clock::Jitter,
}

impl<X, D> Shared<X, D> {
    fn status(&self, quota: Quota, a: Admit) -> RateLimitStatus {
        RateLimitStatus {
            quota,
            remaining: a.remaining,
            reset: a.reset,
        }
    }

    /// Applies the extra global quota to a request Redis admitted (a local
    /// decision applies it in [`both`](Self::both)). The status (for
    /// response headers) when a quota is given (the bucket state was
    /// computed). A refusal here does not give the key's cells back to
    /// Redis: they are spent.
    #[cfg(feature = "redis")]
    #[inline(always)]
    pub(crate) fn finish(
        &self,
        quota: Option<Quota>,
        a: Admit,
        cost: u32,
    ) -> (Verdict, Option<RateLimitStatus>) {
        let mut status = quota.map(|q| self.status(q, a));
        if let Some(g) = &self.global {
            match g.check(cost, status.is_some()) {
                Err(w) => return (deny(w, DETAIL_GLOBAL), None),
                // The fields describe the limit closer to refusing: the
                // global one when it has fewer requests left.
                Ok(ga) => {
                    if let Some(s) = &mut status {
                        if ga.remaining < s.remaining {
                            *s = self.status(g.quota().get(), ga);
                        }
                    }
                }
            }
        }
        (Verdict::Admit(a), status)
    }

    fn fallback(
        &self,
        detail: &'static str,
        cost: u32,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        match (&self.fallback, &self.fallback_bucket) {
            (Fallback::SharedBucket, Some(b)) => {
                self.settle(b.quota(), b.check(cost, want_status), detail, want_status)
            }
            _ => (Verdict::Deny { wait: None, detail }, None),
        }
    }

    /// A bucket's answer: admitted, or refused with the wait and `detail`
    /// (with no global quota: [`both`](Self::both) decides with one).
    #[inline(always)]
    fn settle(
        &self,
        quota: &QuotaCell,
        checked: Result<Admit, Duration>,
        detail: &'static str,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        match checked {
            Ok(a) => (
                Verdict::Admit(a),
                want_status.then(|| self.status(quota.get(), a)),
            ),
            Err(w) => (deny(w, detail), None),
        }
    }

    /// A new key at the cap: an IP key takes its coarser network's bucket in
    /// the overflow table (a spray from one network drains its own bucket,
    /// not the one newcomers from elsewhere share); other keys, or a full
    /// overflow table, follow the fallback rule.
    fn overflow(
        &self,
        key: &Key,
        cost: u32,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        let (Some(table), Some(ip)) = (&self.overflow, key.ip()) else {
            return self.fallback(DETAIL_KEYS_FULL, cost, want_status);
        };
        let network = Prefixes::OVERFLOW.key_of(ip);
        match table.check(&network, cost, want_status) {
            KeyedCheck::Decided(r) => self.settle(table.quota(), r, DETAIL_KEYS_FULL, want_status),
            KeyedCheck::Full => self.fallback(DETAIL_KEYS_FULL, cost, want_status),
        }
    }

    /// The local decision for `key` (the primary limit, then the global one).
    /// `want_status`: compute the bucket state for response headers.
    #[inline(always)]
    pub(crate) fn decide_local(
        &self,
        key: &Result<Key, MissingKey>,
        cost: u32,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        if let Some(decided) = self.by_cost(cost) {
            return decided;
        }
        if let Err(m) = key {
            self.observer.emit(
                LayerKind::RateLimit,
                self.name.as_str(),
                EventKind::InputIgnored {
                    input: m.input,
                    reason: m.reason,
                },
            );
        }
        if self.global.is_some() {
            return self.both(key, cost, want_status);
        }
        let Ok(key) = key else {
            return self.fallback(DETAIL_NO_KEY, cost, want_status);
        };
        match &self.primary {
            Primary::Global(b) => self.settle_global(b, cost, want_status),
            Primary::Keyed(k) => match k.check(key, cost, want_status) {
                KeyedCheck::Decided(r) => self.settle(k.quota(), r, DETAIL_LIMIT, want_status),
                KeyedCheck::Full => self.overflow(key, cost, want_status),
            },
        }
    }

    /// The bucket of a global limit decided here (no Redis): every request
    /// has the one key [`Key::GLOBAL`], so none need be extracted.
    #[inline(always)]
    pub(crate) fn global_bucket(&self) -> Option<&Bucket> {
        #[cfg(feature = "redis")]
        if self.redis.is_some() {
            return None;
        }
        match &self.primary {
            Primary::Global(b) => Some(b),
            Primary::Keyed(_) => None,
        }
    }

    /// [`decide_local`](Self::decide_local) for the key [`Key::GLOBAL`] on
    /// the bucket of [`global_bucket`](Self::global_bucket).
    #[inline(always)]
    pub(crate) fn decide_global(
        &self,
        b: &Bucket,
        cost: u32,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        if let Some(decided) = self.by_cost(cost) {
            return decided;
        }
        match &self.global {
            Some(_) => self.both(&Ok(Key::GLOBAL), cost, want_status),
            None => self.settle_global(b, cost, want_status),
        }
    }

    /// The decision a request's cost alone makes: a free one is admitted,
    /// one above the burst (of the quota or of the global quota) never
    /// fits; `None` for the others. One cell always fits (a burst is at
    /// least 1), with no load.
    #[inline(always)]
    fn by_cost(&self, cost: u32) -> Option<(Verdict, Option<RateLimitStatus>)> {
        if cost == 0 {
            return Some((Verdict::Admit(Admit::UNKNOWN), None));
        }
        if cost > 1 && self.above_burst(cost) {
            return Some((deny(NEVER, DETAIL_COST), None));
        }
        None
    }

    /// Whether `cost` is above the quota's burst or the global quota's:
    /// it never fits, and is refused before any bucket is asked.
    #[inline]
    pub(crate) fn above_burst(&self, cost: u32) -> bool {
        cost > self.quota.burst()
            || self
                .global
                .as_ref()
                .is_some_and(|g| cost > g.quota().burst())
    }

    /// The bucket that gave a request with `key` its own cells.
    fn own_bucket(&self, own: Own, key: &Result<Key, MissingKey>) -> Option<OwnBucket<'_>> {
        match (own, key) {
            (Own::Primary, _) => match (&self.primary, key) {
                (Primary::Global(b), _) => Some(OwnBucket::One(b)),
                (Primary::Keyed(t), Ok(k)) => Some(OwnBucket::Keyed(t, *k)),
                (Primary::Keyed(_), Err(_)) => None,
            },
            (Own::Overflow, Ok(k)) => {
                let ip = k.ip()?;
                let table = self.overflow.as_ref()?;
                Some(OwnBucket::Keyed(table, Prefixes::OVERFLOW.key_of(ip)))
            }
            (Own::Overflow, Err(_)) => None,
            (Own::Fallback, _) => self.fallback_bucket.as_ref().map(OwnBucket::One),
        }
    }

    /// `cost` cells for `key` from its own bucket (the routing of
    /// [`decide_local`](Self::decide_local)), taken for an admission
    /// within `(from, latest)` (see [`Bucket::take`]): which bucket, its
    /// quota, and its answer with the refusal's detail; or a refusal no
    /// wait helps.
    #[allow(clippy::type_complexity)]
    fn take_own(
        &self,
        key: &Result<Key, MissingKey>,
        cost: u32,
        now: Instant,
        within: (Instant, Instant),
        want_status: bool,
    ) -> Result<(Own, &QuotaCell, Took, &'static str), Verdict> {
        let fallback = |detail| match (&self.fallback, &self.fallback_bucket) {
            (Fallback::SharedBucket, Some(b)) => Ok((
                Own::Fallback,
                b.quota(),
                b.take(cost, now, within, want_status),
                detail,
            )),
            _ => Err(Verdict::Deny { wait: None, detail }),
        };
        let Ok(k) = key else {
            return fallback(DETAIL_NO_KEY);
        };
        match &self.primary {
            Primary::Global(b) => Ok((
                Own::Primary,
                b.quota(),
                b.take(cost, now, within, want_status),
                DETAIL_LIMIT,
            )),
            Primary::Keyed(t) => match t.take(k, cost, now, within, want_status) {
                Some(r) => Ok((Own::Primary, t.quota(), r, DETAIL_LIMIT)),
                None => {
                    let network = k.ip().map(|ip| Prefixes::OVERFLOW.key_of(ip));
                    match (&self.overflow, network) {
                        (Some(table), Some(n)) => {
                            match table.take(&n, cost, now, within, want_status) {
                                Some(r) => Ok((Own::Overflow, table.quota(), r, DETAIL_KEYS_FULL)),
                                None => fallback(DETAIL_KEYS_FULL),
                            }
                        }
                        _ => fallback(DETAIL_KEYS_FULL),
                    }
                }
            },
        }
    }

    /// The local decision with a global quota: the request's cells from
    /// its own bucket, then from the global one; refused by the global
    /// quota, it gives its own cells back (when no later request took
    /// cells after them), so that a key is not charged for requests that
    /// were never admitted.
    #[inline(never)]
    fn both(
        &self,
        key: &Result<Key, MissingKey>,
        cost: u32,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        let now = crate::clock::edge_now();
        match self.take_cells(key, cost, want_status, now, now) {
            Ok((a, status, _, _)) => (Verdict::Admit(a), status),
            Err(refused) => (refused, None),
        }
    }

    /// Whether a waiting request with `key` takes its cells when it starts
    /// to wait ([`reserve`](Self::reserve)): a local decision. Through
    /// Redis it asks again when its wait is over.
    pub(crate) fn reserves(&self, key: &Result<Key, MissingKey>) -> bool {
        #[cfg(feature = "redis")]
        if self.redis.is_some() && key.is_ok() {
            return false;
        }
        let _ = key;
        true
    }

    /// A waiting request's decision (a local one: see
    /// [`reserves`](Self::reserves)): its cells, from its own bucket and the
    /// global quota's, taken now for the first instant at which it conforms,
    /// if that is no later than `latest`, as if it were admitted then —
    /// requests that wait are given cells in the order they came, each at
    /// its own time, and one whose time would come after `latest` is
    /// refused at once with the wait until that time (nothing taken).
    pub(crate) fn reserve(
        &self,
        key: &Result<Key, MissingKey>,
        cost: u32,
        want_status: bool,
        now: Instant,
        latest: Instant,
    ) -> Reserve {
        match self.take_cells(key, cost, want_status, now, latest) {
            Ok((a, status, at, _)) if at <= now => Reserve::Now(Verdict::Admit(a), status),
            Ok((_, status, at, held)) => Reserve::Later { at, status, held },
            Err(refused) => Reserve::Now(refused, None),
        }
    }

    /// `cost` cells for `key` from its own bucket, then from the global
    /// quota's (if any), for the first instant at which both have them,
    /// if that is no later than `latest`: the admission (its status), its
    /// instant and the cells taken; or the refusal. The own bucket counts
    /// the request at the global quota's later time when no later request
    /// took cells after it (otherwise at its own, earlier, time: the
    /// request is still called at the later one).
    #[allow(clippy::type_complexity)]
    fn take_cells(
        &self,
        key: &Result<Key, MissingKey>,
        cost: u32,
        want_status: bool,
        now: Instant,
        latest: Instant,
    ) -> Result<(Admit, Option<RateLimitStatus>, Instant, Held), Verdict> {
        let (own, quota, (a, mut taken, mut at)) =
            match self.take_own(key, cost, now, (now, latest), want_status)? {
                (own, quota, Ok(took), _) => (own, quota, took),
                (_, _, Err(at), detail) => return Err(deny(wait_until(now, at), detail)),
            };
        let mut status = want_status.then(|| self.status(quota.get(), a));
        let Some(global) = &self.global else {
            let held = Held {
                own,
                taken,
                global: None,
            };
            return Ok((a, status, at, held));
        };
        // The global cells are taken from now, not from the key's own time:
        // taken for a later instant, they moved the global bucket on to it,
        // and its capacity between (every other key's) went unused. A
        // request that waits for its key's cells so holds a global cell
        // from before it is called (the global quota can let through that
        // many more at once, at most the requests waiting).
        match global.take(cost, now, (now, latest), want_status) {
            Ok((ga, global_taken, global_at)) => {
                if global_at > at {
                    if let Some(b) = self.own_bucket(own, key) {
                        b.retime(&mut taken, global_at);
                    }
                    at = global_at;
                }
                // The fields describe the limit closer to refusing: the
                // global one when it has fewer requests left.
                if let Some(s) = &mut status {
                    if ga.remaining < s.remaining {
                        *s = self.status(global.quota().get(), ga);
                    }
                }
                let held = Held {
                    own,
                    taken,
                    global: Some(global_taken),
                };
                Ok((a, status, at, held))
            }
            Err(global_at) => {
                if let Some(b) = self.own_bucket(own, key) {
                    b.give_back(&taken);
                }
                Err(deny(wait_until(now, global_at), DETAIL_GLOBAL))
            }
        }
    }

    /// Gives back the cells a waiting request took (it was dropped before
    /// its time): each bucket's, if no later request took cells after
    /// them there; otherwise they stay spent.
    pub(crate) fn give_back(&self, held: &Held, key: &Result<Key, MissingKey>) {
        if let (Some(g), Some(taken)) = (&self.global, &held.global) {
            g.give_back(taken);
        }
        if let Some(b) = self.own_bucket(held.own, key) {
            b.give_back(&held.taken);
        }
    }

    /// `cost` cells from the global bucket `b` (then the extra global limit).
    #[inline(always)]
    fn settle_global(
        &self,
        b: &Bucket,
        cost: u32,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        self.settle(
            b.quota(),
            b.check(cost, want_status),
            DETAIL_LIMIT,
            want_status,
        )
    }

    /// The decision for `key` and a request of `cost` cells: local, or a
    /// pending Redis call.
    #[inline]
    pub(crate) fn decide(
        &self,
        key: &Result<Key, MissingKey>,
        cost: u32,
        want_status: bool,
    ) -> Step {
        #[cfg(feature = "redis")]
        if let (Some(r), Ok(k)) = (&self.redis, key) {
            if cost == 0 || self.above_burst(cost) {
                let (v, s) = self.decide_local(key, cost, want_status);
                return Step::Now(v, s);
            }
            let redis_key = r.key_for(self.name.as_str(), k);
            let slot = r.slot_of(&redis_key);
            if let Some(probe) = r.should_call(slot) {
                return Step::Redis(r.call(redis_key, slot, cost, probe));
            }
            let (v, s) = r.degraded(self, key, cost, want_status);
            return Step::Now(v, s);
        }
        let (v, s) = self.decide_local(key, cost, want_status);
        Step::Now(v, s)
    }

    pub(crate) fn tracked_keys(&self) -> usize {
        match &self.primary {
            Primary::Global(_) => 0,
            Primary::Keyed(k) => k.tracked(),
        }
    }
}

/// Rate limiting on GCRA: one global limit or one per key, with
/// bounded memory (see the [module docs](crate::rate_limit)).
///
/// Every service built from one layer — and every clone of those services —
/// shares the layer's limiter (it lives in an `Arc` the layer owns): layering
/// the same `RateLimitLayer` onto several routes makes them share one quota;
/// build a layer per route for separate quotas.
pub struct RateLimitLayer<X = Global, D = NoHeaders> {
    pub(super) shared: Arc<Shared<X, D>>,
}

impl<X, D> Clone for RateLimitLayer<X, D> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<X, D> fmt::Debug for RateLimitLayer<X, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name)
            .field("quota", &self.shared.quota.get())
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

impl<X, D> RateLimitLayer<X, D> {
    /// The number of keys the limiter tracks now (0 for a global limit).
    /// Never above [`max_keys`](super::RateLimitLayerBuilder::max_keys).
    pub fn tracked_keys(&self) -> usize {
        self.shared.tracked_keys()
    }

    /// The layer instance's name.
    pub fn name(&self) -> &str {
        self.shared.name.as_str()
    }

    /// The per-key (or global) quota.
    pub fn quota(&self) -> Quota {
        self.shared.quota.get()
    }

    /// Changes the quota at run time (a reload): the per-key (or global)
    /// quota, and the fallback bucket's and overflow table's when they
    /// follow the layer's (no
    /// [`fallback_quota`](super::RateLimitLayerBuilder::fallback_quota) of their
    /// own). No bucket is dropped or refilled: each keeps what it owes, in
    /// time, within the new burst — a key that spent its burst under
    /// `100/s` waits at most one new burst's worth under `10/s`, and one
    /// that spent nothing starts the new quota full. Requests in flight are
    /// unaffected; a check racing with the change may see parts of both
    /// quotas (the new period with the old burst tolerance, say) for that
    /// one decision, never refuses for good a cost both quotas' bursts
    /// allow, and may leave its bucket owing up to one burst window of the
    /// old quota. What each bucket owes is cut here, in one pass over the
    /// keys (no lock that stops a request), not on the
    /// request path. Lock-free and
    /// allocation-free on the request path (the quota lives in atomics).
    /// Reported as a [`Reconfigured`](crate::observe::EventKind::Reconfigured)
    /// event; the quota in place again changes nothing and reports nothing.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a quota the builder would refuse, or for a
    /// limit kept in Redis (its scripts carry the quota: build a new layer);
    /// nothing is changed.
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        let s = &*self.shared;
        self.check_quota(quota)?;
        // One change at a time: two reloads at once leave one quota in
        // every bucket, not a mix.
        let _reload = s
            .reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if quota == self.quota() {
            return Ok(()); // the quota in place: no change, no event
        }
        s.quota.set(quota, "quota")?;
        match &s.primary {
            Primary::Global(b) => b.set_quota(quota, "quota")?,
            Primary::Keyed(k) => k.set_quota(quota, "quota")?,
        }
        if s.fallback_follows {
            if let Some(b) = &s.fallback_bucket {
                b.set_quota(quota, "fallback_quota")?;
            }
            if let Some(t) = &s.overflow {
                t.set_quota(quota, "fallback_quota")?;
            }
        }
        s.observer.emit(
            LayerKind::RateLimit,
            s.name.as_str(),
            EventKind::Reconfigured,
        );
        Ok(())
    }

    /// Whether [`set_quota`](Self::set_quota) would take `quota` (nothing
    /// changes).
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] `set_quota` would return.
    pub fn check_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        quota.validate("quota")?;
        #[cfg(feature = "redis")]
        if self.shared.redis.is_some() {
            return Err(ConfigError::new(
                "rate_limit",
                "the quota of a limit kept in Redis cannot change at run time; build a new layer",
            ));
        }
        Ok(())
    }

    /// The state of the limit's backend, as the last request that asked
    /// Redis found it: `Some(Healthy)` while Redis answers,
    /// `Some(Degraded)` while it does not and the
    /// [`FailurePolicy`](crate::rate_limit::FailurePolicy) decides (each
    /// change is also a `StateChanged` event), `None` for a limit kept in
    /// this process alone (no backend to lose). An instance that has sent
    /// no request to Redis yet says `Healthy`. For an alert, not for a
    /// readiness check: every instance loses Redis at once, and each goes
    /// on serving under its policy.
    ///
    /// ```
    /// use seawall::rate_limit::{Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder(Quota::per_second(100)).build()?;
    /// assert_eq!(layer.backend_state(), None);
    /// # Ok::<(), seawall::ConfigError>(())
    /// ```
    pub fn backend_state(&self) -> Option<crate::observe::State> {
        #[cfg(feature = "redis")]
        if let Some(r) = &self.shared.redis {
            return Some(r.state());
        }
        None
    }

    /// Runs the idle-key eviction now (it also runs by itself; see
    /// [`RateLimitLayerBuilder::max_keys`](super::RateLimitLayerBuilder::max_keys)). Returns whether it ran (at most
    /// once per `min_sweep_interval`).
    pub fn evict_idle(&self) -> bool {
        match &self.shared.primary {
            Primary::Global(_) => false,
            Primary::Keyed(k) => k.sweep(),
        }
    }

    /// Keys evicted so far.
    pub fn evicted_keys(&self) -> u64 {
        match &self.shared.primary {
            Primary::Global(_) => 0,
            Primary::Keyed(k) => k.evicted(),
        }
    }

    /// The capacity (allocated slots) of the key map: bounded by the key cap
    /// rounded up to the map's growth steps.
    pub fn key_capacity(&self) -> usize {
        match &self.shared.primary {
            Primary::Global(_) => 0,
            Primary::Keyed(k) => k.capacity(),
        }
    }

    stacks_only! {
        /// This layer around `inner`, letting go of a request it refuses at
        /// once as `M` does (a server stack's: see `stack::OuterPart`).
        pub(crate) fn layer_held<S, M>(&self, inner: S) -> RateLimit<S, X, D, M> {
            RateLimit::new(inner, self.shared.clone())
        }
    }
}

impl<S, X, D> Layer<S> for RateLimitLayer<X, D> {
    type Service = RateLimit<S, X, D>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Recorder;

    fn by_key(req: &u64) -> Option<Key> {
        (*req != 0).then(|| Key::from_u64(*req))
    }

    type ByKey = fn(&u64) -> Option<Key>;

    fn keyed(
        quota: Quota,
        fallback: Fallback,
        max_keys: usize,
        rec: &Recorder,
    ) -> RateLimitLayer<ByKey> {
        RateLimitLayer::builder(quota)
            .keyed(by_key as ByKey)
            .fallback(fallback)
            .max_keys(max_keys)
            .observer(rec.clone())
            .build()
            .unwrap()
    }

    fn decide(layer: &RateLimitLayer<ByKey>, req: u64, cost: u32) -> Verdict {
        let key = crate::rate_limit::KeyExtractor::extract(&layer.shared.extractor, &req);
        layer.shared.decide_local(&key, cost, false).0
    }

    fn detail(v: Verdict) -> Option<&'static str> {
        match v {
            Verdict::Admit(_) => None,
            Verdict::Deny { detail, .. } => Some(detail),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cost_is_checked_before_any_bucket() {
        let rec = Recorder::new();
        let layer = keyed(Quota::per_second(2), Fallback::Reject, 10, &rec);
        // Free: admitted, nothing taken.
        assert_eq!(detail(decide(&layer, 1, 0)), None);
        // Above the burst: refused for good (no wait can help).
        assert!(matches!(
            decide(&layer, 1, 3),
            Verdict::Deny {
                wait: None,
                detail: DETAIL_COST
            }
        ));
        // The bucket was untouched by both: two cells left.
        assert_eq!(detail(decide(&layer, 1, 2)), None);
        assert_eq!(detail(decide(&layer, 1, 1)), Some(DETAIL_LIMIT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_key_follows_the_fallback_and_is_reported() {
        let rec = Recorder::new();
        let refuse = keyed(Quota::per_second(5), Fallback::Reject, 10, &rec);
        assert!(matches!(
            decide(&refuse, 0, 1),
            Verdict::Deny {
                wait: None,
                detail: DETAIL_NO_KEY
            }
        ));
        assert_eq!(
            rec.count(|e| matches!(
                e.kind,
                EventKind::InputIgnored {
                    input: "key",
                    reason: "absent"
                }
            )),
            1
        );
        // With a shared bucket, keyless requests share one bucket of the quota.
        let shared = keyed(Quota::per_second(2), Fallback::SharedBucket, 10, &rec);
        assert_eq!(detail(decide(&shared, 0, 1)), None);
        assert_eq!(detail(decide(&shared, 0, 1)), None);
        assert_eq!(detail(decide(&shared, 0, 1)), Some(DETAIL_NO_KEY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_key_at_the_cap_goes_to_the_fallback() {
        let rec = Recorder::new();
        let layer = keyed(Quota::per_second(5), Fallback::Reject, 2, &rec);
        assert_eq!(detail(decide(&layer, 1, 1)), None);
        assert_eq!(detail(decide(&layer, 2, 1)), None);
        // Keys 1 and 2 are not idle (their buckets owe time): key 3 has no
        // room, and a non-IP key has no overflow table to go to.
        assert_eq!(detail(decide(&layer, 3, 1)), Some(DETAIL_KEYS_FULL));
        assert_eq!(detail(decide(&layer, 1, 1)), None, "known keys go on");
    }
}
