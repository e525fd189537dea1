//! The shared state of one balanced set: a fixed table of endpoint slots,
//! all atomics, and the rules that eject an endpoint and bring it back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Name;
use crate::observe::{EventKind, LayerKind, Observer, State};

/// An endpoint's state, in [`Slot::state`].
pub(crate) const HEALTHY: u32 = 0;
pub(crate) const EJECTED: u32 = 1;
/// Back after an ejection: one probe call decides.
pub(crate) const PROBING: u32 = 2;
/// The probe is in flight.
pub(crate) const PROBE_SENT: u32 = 3;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) consecutive_failures: u32,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection: Duration,
    pub(crate) max_ejected_percent: u32,
    pub(crate) interval: Duration,
    pub(crate) success_rate_min_hosts: u32,
    pub(crate) success_rate_volume: u32,
    pub(crate) success_rate_stdev_factor: f64,
    pub(crate) latency_factor: Option<f64>,
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) in_use: AtomicBool,
    /// The endpoint's service is in the set (its calls in flight may keep
    /// the slot in use after it left).
    pub(crate) present: AtomicBool,
    pub(crate) state: AtomicU32,
    /// Nanoseconds since the registry's origin when the ejection ends.
    pub(crate) until: AtomicU64,
    pub(crate) consecutive: AtomicU32,
    /// "Busy" answers since its last success (see [`Registry::busy`]).
    pub(crate) busy_run: AtomicU32,
    pub(crate) times_ejected: AtomicU32,
    /// Ejected (or its probe failed) since the last sweep.
    pub(crate) offended: AtomicBool,
    /// This interval's calls, successes and summed latency (µs).
    pub(crate) calls: AtomicU64,
    pub(crate) successes: AtomicU64,
    pub(crate) latency_us: AtomicU64,
    /// Its recent share of "busy" answers: a moving average over about
    /// the last 16 answers, in 1/65 536ths (see [`Registry::busy`]).
    pub(crate) busy_share: AtomicU32,
    /// The endpoint's `poll_ready` waiting for a probe in flight.
    pub(crate) waker: futures_util::task::AtomicWaker,
}

/// [`Slot::busy_share`]'s one.
const SHARE_ONE: u32 = 1 << 16;

impl Slot {
    /// An answer that was not "busy": its busy share decays (a load alone
    /// while it is nil, as on a healthy endpoint; a lost update between
    /// racing answers moves a heuristic by a sixteenth).
    #[inline]
    fn answered_not_busy(&self) {
        let share = self.busy_share.load(Ordering::Relaxed);
        if share != 0 {
            self.busy_share
                .store(share - share.div_ceil(16), Ordering::Relaxed);
        }
    }

    /// A "busy" answer: its busy share grows by a sixteenth of the rest.
    fn answered_busy(&self) -> u32 {
        let share = self.busy_share.load(Ordering::Relaxed);
        let share = share + (SHARE_ONE - share) / 16;
        self.busy_share.store(share, Ordering::Relaxed);
        share
    }

    /// Empties the slot's history; its state is set by the caller.
    fn clear(&self) {
        self.until.store(0, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.busy_run.store(0, Ordering::Relaxed);
        self.times_ejected.store(0, Ordering::Relaxed);
        self.offended.store(false, Ordering::Relaxed);
        self.calls.store(0, Ordering::Relaxed);
        self.successes.store(0, Ordering::Relaxed);
        self.latency_us.store(0, Ordering::Relaxed);
        self.busy_share.store(0, Ordering::Relaxed);
    }
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    Consecutive,
    SuccessRate,
    Latency,
    ProbeFailed,
    Busy,
}

impl Why {
    /// Every reason.
    pub(crate) const ALL: [Why; 5] = [
        Why::Consecutive,
        Why::SuccessRate,
        Why::Latency,
        Why::ProbeFailed,
        Why::Busy,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Why::Consecutive => "consecutive_failures",
            Why::SuccessRate => "success_rate",
            Why::Latency => "latency",
            Why::ProbeFailed => "probe_failed",
            Why::Busy => "busy_alone",
        }
    }
}

pub(crate) struct Registry {
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    pub(crate) settings: Settings,
    pub(crate) slots: Box<[Slot]>,
    pub(crate) origin: Instant,
    /// Endpoints in the set now (registered, and their service not yet
    /// dropped).
    pub(crate) active: AtomicU32,
    /// Endpoints ejected now (probing ones included: they serve one call).
    pub(crate) ejected: AtomicU32,
    /// When the next outlier sweep is due (ns since origin).
    next_sweep: AtomicU64,
    sweeping: Mutex<()>,
    pub(crate) names: Box<[Name]>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("active", &self.active)
            .field("ejected", &self.ejected)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(name: Name, observer: Observer, settings: Settings, capacity: usize) -> Self {
        let now = crate::clock::edge_now();
        Registry {
            names: (0..capacity)
                .map(|i| Name::from(format!("{name}.{i}")))
                .collect(),
            name,
            observer,
            settings,
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            origin: now,
            active: AtomicU32::new(0),
            ejected: AtomicU32::new(0),
            next_sweep: AtomicU64::new(crate::clock::nanos(settings.interval)),
            sweeping: Mutex::new(()),
        }
    }

    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        crate::clock::nanos_between(self.origin, at)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    /// Takes a free slot for a new endpoint, if one is left.
    pub(crate) fn register(&self) -> Option<usize> {
        for (i, slot) in self.slots.iter().enumerate() {
            if slot
                .in_use
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // A sweep's ejection that came after the last endpoint here
                // left is not this one's.
                self.heal(slot);
                slot.clear();
                slot.present.store(true, Ordering::Release);
                self.active.fetch_add(1, Ordering::AcqRel);
                self.emit(i, State::Healthy, State::Healthy);
                return Some(i);
            }
        }
        None
    }

    /// An endpoint left the set (every clone of its service was dropped;
    /// its calls in flight still hold the slot). It is no longer counted
    /// among the set's endpoints, nor among its ejected ones; if every
    /// endpoint left in the set is ejected, their ejections end: the set
    /// is never without an endpoint taking calls (Envoy's panic mode).
    pub(crate) fn leave(&self, i: usize) {
        let slot = &self.slots[i];
        slot.present.store(false, Ordering::Release);
        self.heal(slot);
        let active = self.active.fetch_sub(1, Ordering::AcqRel) - 1;
        if active > 0 && self.ejected.load(Ordering::Acquire) >= active {
            for (k, other) in self.slots.iter().enumerate() {
                if other.present.load(Ordering::Acquire) && self.heal(other) {
                    other.consecutive.store(0, Ordering::Relaxed);
                    self.emit(k, State::Open, State::Healthy);
                    other.waker.wake();
                }
            }
        }
    }

    /// The slot's last holder went (the service and its calls in flight):
    /// it is free for a new endpoint.
    pub(crate) fn release(&self, i: usize) {
        let slot = &self.slots[i];
        self.heal(slot);
        slot.clear();
        slot.in_use.store(false, Ordering::Release);
    }

    /// Sets a slot healthy, and takes it out of the ejected count if it
    /// was in it (one swap: an ejection racing with it is counted once);
    /// whether it was.
    fn heal(&self, slot: &Slot) -> bool {
        let was = slot.state.swap(HEALTHY, Ordering::AcqRel) != HEALTHY;
        if was {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
        }
        was
    }

    fn emit(&self, i: usize, from: State, to: State) {
        self.observer.emit(
            LayerKind::Ejection,
            self.names[i].as_str(),
            EventKind::StateChanged {
                from,
                to,
                failure_rate: None,
                slow_call_rate: None,
            },
        );
    }

    /// Where endpoint `i` stands at `now`: `Ok(())` when it takes calls (a
    /// probing endpoint: the one probe), `Err(until)` while ejected (or its
    /// probe is in flight: `None`).
    pub(crate) fn admit(&self, i: usize, now: Instant) -> Result<bool, Option<Instant>> {
        let slot = &self.slots[i];
        match slot.state.load(Ordering::Acquire) {
            HEALTHY => Ok(false),
            EJECTED => {
                let until = slot.until.load(Ordering::Acquire);
                if self.nanos(now) < until {
                    return Err(Some(self.instant(until)));
                }
                if slot
                    .state
                    .compare_exchange(EJECTED, PROBING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.emit(i, State::Open, State::HalfOpen);
                }
                self.admit(i, now)
            }
            PROBING => Ok(true),
            _ => Err(None),
        }
    }

    /// Whether endpoint `i` takes calls as usual (not ejected, nor back on
    /// probation).
    #[inline]
    pub(crate) fn is_healthy(&self, i: usize) -> bool {
        self.slots[i].state.load(Ordering::Acquire) == HEALTHY
    }

    /// Whether endpoint `i`'s probe is taken (held by a clone made ready,
    /// or in flight).
    pub(crate) fn probe_taken(&self, i: usize) -> bool {
        self.slots[i].state.load(Ordering::Acquire) == PROBE_SENT
    }

    /// Endpoint `i` is about to send its probe: only one goes.
    pub(crate) fn take_probe(&self, i: usize) -> bool {
        self.slots[i]
            .state
            .compare_exchange(PROBING, PROBE_SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A call on endpoint `i` finished: `failure` (a remote failure or
    /// overload), or a success; `None` when it is not counted.
    pub(crate) fn record(
        &self,
        i: usize,
        failure: Option<bool>,
        latency: Duration,
        probe: bool,
        now: Instant,
    ) {
        let slot = &self.slots[i];
        if probe {
            // Each from the probe's own state: an ejection ended meanwhile
            // (the endpoint left, or the set had no other) stays ended.
            match failure {
                Some(false) => {
                    slot.consecutive.store(0, Ordering::Relaxed);
                    slot.busy_share.store(0, Ordering::Relaxed);
                    if slot
                        .state
                        .compare_exchange(PROBE_SENT, HEALTHY, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.ejected.fetch_sub(1, Ordering::AcqRel);
                        self.emit(i, State::HalfOpen, State::Healthy);
                    }
                    slot.waker.wake();
                }
                Some(true) => {
                    // Out again for as long (a probe is one call: a dead
                    // endpoint costs one call per ejection, and comes back
                    // within one ejection of its recovery); it stays
                    // counted as ejected.
                    let n = slot.times_ejected.load(Ordering::Acquire);
                    slot.offended.store(true, Ordering::Release);
                    slot.until.store(
                        self.nanos(now).saturating_add(self.ejection_time(n)),
                        Ordering::Release,
                    );
                    if slot
                        .state
                        .compare_exchange(PROBE_SENT, EJECTED, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        return;
                    }
                    self.emit(i, State::HalfOpen, State::Open);
                    self.observer.emit(
                        LayerKind::Ejection,
                        self.names[i].as_str(),
                        EventKind::EndpointEjected {
                            reason: Why::ProbeFailed.as_str(),
                            duration: Duration::from_nanos(self.ejection_time(n)),
                        },
                    );
                    slot.waker.wake();
                }
                None => {
                    // Not counted: the probe slot is free again.
                    let _ = slot.state.compare_exchange(
                        PROBE_SENT,
                        PROBING,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    slot.waker.wake();
                }
            }
            return;
        }
        let Some(failure) = failure else { return };
        slot.answered_not_busy();
        slot.calls.fetch_add(1, Ordering::Relaxed);
        slot.latency_us.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if failure {
            let n = slot.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= self.settings.consecutive_failures {
                self.eject(i, Why::Consecutive, now);
            }
        } else {
            slot.successes.fetch_add(1, Ordering::Relaxed);
            if slot.consecutive.load(Ordering::Relaxed) != 0 {
                slot.consecutive.store(0, Ordering::Relaxed);
            }
            if slot.busy_run.load(Ordering::Relaxed) != 0 {
                slot.busy_run.store(0, Ordering::Relaxed);
            }
        }
        self.sweep_if_due(now);
    }

    /// A call on endpoint `i` was answered "busy" (an overload it
    /// signalled, not counted as a failure). An endpoint busy alone is
    /// ejected: `consecutive_failures` busy answers (or a multiple) since
    /// its last success, "busy" to at least half of its recent answers (a
    /// moving average over about 16), while at least half of the other
    /// endpoints taking calls answer "busy" to under a tenth of theirs. It
    /// says "busy" to everyone while its peers serve: a proxy with no
    /// upstream answering a bare `503`, drawing the balancer's calls with
    /// its fast answers. While its peers are busy too, the set is
    /// overloaded, and taking one out would only load the others more (the
    /// recent shares, not the interval's counts: as an overload begins, a
    /// peer's calls of the last seconds, served, hid that it was busy now).
    /// Whether a probe so answered failed.
    pub(crate) fn busy(&self, i: usize, probe: bool, now: Instant) -> bool {
        let slot = &self.slots[i];
        let share = slot.answered_busy();
        if probe {
            return self.busy_alone(i);
        }
        let n = slot.busy_run.fetch_add(1, Ordering::AcqRel) + 1;
        // Judged every `consecutive_failures` busy answers in a row: the
        // look at the set is a pass over its slots.
        let every = self.settings.consecutive_failures.max(1);
        if n % every == 0 && share >= SHARE_ONE / 2 && self.busy_alone(i) {
            self.eject(i, Why::Busy, now);
        }
        self.sweep_if_due(now);
        false
    }

    /// Runs the interval's sweep if it is due.
    #[inline]
    fn sweep_if_due(&self, now: Instant) {
        if self.nanos(now) >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep(now);
        }
    }

    /// Whether at least half of the endpoints other than `i` taking calls
    /// (and at least one) answer "busy" to under a tenth of their calls.
    fn busy_alone(&self, i: usize) -> bool {
        let (mut calm, mut busy) = (0usize, 0usize);
        for (j, slot) in self.slots.iter().enumerate() {
            if j == i
                || !slot.present.load(Ordering::Acquire)
                || slot.state.load(Ordering::Acquire) != HEALTHY
            {
                continue;
            }
            if slot.busy_share.load(Ordering::Relaxed) < SHARE_ONE / 10 {
                calm += 1;
            } else {
                busy += 1;
            }
        }
        calm > 0 && calm >= busy
    }

    /// How long the `n`-th ejection of an endpoint lasts: the base time `n`
    /// times, capped.
    fn ejection_time(&self, n: u32) -> u64 {
        let t = self.settings.base_ejection.saturating_mul(n.max(1));
        crate::clock::nanos(t.min(self.settings.max_ejection))
    }

    /// Ejects endpoint `i` if the cap allows: at most the configured share
    /// of the set (at least one endpoint), never the last one taking calls.
    pub(crate) fn eject(&self, i: usize, why: Why, now: Instant) -> bool {
        let active = self.active.load(Ordering::Acquire);
        let cap = (active * self.settings.max_ejected_percent / 100).max(1);
        let mut ejected = self.ejected.load(Ordering::Acquire);
        loop {
            if ejected >= cap || ejected + 1 >= active {
                return false;
            }
            match self.ejected.compare_exchange(
                ejected,
                ejected + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(e) => ejected = e,
            }
        }
        let slot = &self.slots[i];
        // The ejection's end is in place before the state says ejected: a
        // `poll_ready` on another thread that sees the state reads this end,
        // not the last ejection's (which would send a probe at once). Stored
        // only while the endpoint is healthy, when nothing reads it (a racing
        // ejection of the same endpoint stores about the same).
        let n = slot.times_ejected.load(Ordering::Acquire).saturating_add(1);
        let time = self.ejection_time(n);
        if slot.state.load(Ordering::Acquire) == HEALTHY {
            slot.until
                .store(self.nanos(now).saturating_add(time), Ordering::Release);
        }
        if slot
            .state
            .compare_exchange(HEALTHY, EJECTED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if !slot.present.load(Ordering::Acquire) {
            // The endpoint left (while a sweep judged it, or with calls in
            // flight): no ejection (if its slot is taken again meanwhile,
            // the new endpoint's registration heals it).
            if slot
                .state
                .compare_exchange(EJECTED, HEALTHY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.ejected.fetch_sub(1, Ordering::AcqRel);
            }
            return false;
        }
        slot.times_ejected.fetch_add(1, Ordering::AcqRel);
        slot.offended.store(true, Ordering::Release);
        slot.consecutive.store(0, Ordering::Relaxed);
        slot.busy_run.store(0, Ordering::Relaxed);
        self.emit(i, State::Healthy, State::Open);
        self.observer.emit(
            LayerKind::Ejection,
            self.names[i].as_str(),
            EventKind::EndpointEjected {
                reason: why.as_str(),
                duration: Duration::from_nanos(time),
            },
        );
        true
    }

    /// Once per interval: ejects success-rate and latency outliers among the
    /// endpoints with enough calls, then starts a new interval.
    fn sweep(&self, now: Instant) {
        let Ok(_guard) = self.sweeping.try_lock() else {
            return;
        };
        let at = self.nanos(now);
        if at < self.next_sweep.load(Ordering::Relaxed) {
            return;
        }
        self.next_sweep.store(
            at.saturating_add(crate::clock::nanos(self.settings.interval)),
            Ordering::Relaxed,
        );
        let s = &self.settings;
        // (index, success rate, mean latency µs) of endpoints with volume.
        let mut stats: [(usize, f64, f64); SWEEP_MAX] = [(0, 0.0, 0.0); SWEEP_MAX];
        let mut n = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            // A whole healthy interval forgives one past ejection (Envoy's
            // decay).
            let offended = slot.offended.swap(false, Ordering::AcqRel);
            if !offended && slot.state.load(Ordering::Acquire) == HEALTHY {
                let _ = slot
                    .times_ejected
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
            let calls = slot.calls.swap(0, Ordering::Relaxed);
            let ok = slot.successes.swap(0, Ordering::Relaxed);
            let lat = slot.latency_us.swap(0, Ordering::Relaxed);
            if !slot.present.load(Ordering::Acquire)
                || slot.state.load(Ordering::Acquire) != HEALTHY
                || calls < u64::from(s.success_rate_volume)
                || n == SWEEP_MAX
            {
                continue;
            }
            stats[n] = (i, ok as f64 / calls as f64, lat as f64 / calls as f64);
            n += 1;
        }
        if n == 0 || (n as u32) < s.success_rate_min_hosts {
            return;
        }
        let stats = &mut stats[..n];
        let mean = stats.iter().map(|x| x.1).sum::<f64>() / n as f64;
        let var = stats.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / n as f64;
        // Envoy's floor, and at least `SUCCESS_RATE_MIN_GAP` below the mean:
        // among peers that failed nothing, one stray failure is always
        // √(n − 1) deviations out (2 of them for five endpoints).
        let floor = mean - (s.success_rate_stdev_factor * var.sqrt()).max(SUCCESS_RATE_MIN_GAP);
        for &(i, rate, _) in stats.iter() {
            if rate < floor {
                self.eject(i, Why::SuccessRate, now);
            }
        }
        if let Some(factor) = s.latency_factor {
            let mut means: [f64; SWEEP_MAX] = [0.0; SWEEP_MAX];
            for (k, x) in stats.iter().enumerate() {
                means[k] = x.2;
            }
            let means = &mut means[..n];
            means.sort_by(|a, b| a.total_cmp(b));
            // The lower middle: of two endpoints, the slower one is judged
            // against the faster.
            let median = means[(n - 1) / 2];
            for &(i, _, lat) in stats.iter() {
                if median > 0.0 && lat > factor * median {
                    self.eject(i, Why::Latency, now);
                }
            }
        }
    }
}

/// The most endpoints one sweep compares (the first ones with volume).
const SWEEP_MAX: usize = 256;

/// The least an endpoint's success rate is below the set's mean to be an
/// outlier: 5 points. Without it, an endpoint with one failure among peers
/// with none is an outlier whatever its rate (five endpoints, one failure in
/// 1000); one that fails 5 % more of its calls than the set costs its callers
/// a retry each, less than its share moved onto the others.
pub(crate) const SUCCESS_RATE_MIN_GAP: f64 = 0.05;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
            max_ejected_percent: 50,
            interval: Duration::from_secs(10),
            success_rate_min_hosts: 3,
            success_rate_volume: 10,
            success_rate_stdev_factor: 1.9,
            latency_factor: Some(5.0),
        }
    }

    fn registry(n: usize) -> (Registry, Vec<usize>) {
        let r = Registry::new(Name::from("set"), Observer::default(), settings(), n);
        let ids = (0..n).map(|_| r.register().unwrap()).collect();
        (r, ids)
    }

    const MS: Duration = Duration::from_millis(1);

    /// Failures in a row eject; the ejection lasts the base time, then one
    /// probe decides: a failed probe sends it back out as long, a good one
    /// brings it back.
    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_eject_and_one_probe_decides() {
        let (r, ids) = registry(4);
        let t0 = crate::clock::edge_now();
        for _ in 0..2 {
            r.record(ids[0], Some(true), MS, false, t0);
        }
        assert_eq!(r.admit(ids[0], t0), Ok(false), "two failures are not three");
        r.record(ids[0], Some(false), MS, false, t0);
        for _ in 0..2 {
            r.record(ids[0], Some(true), MS, false, t0);
        }
        assert_eq!(r.admit(ids[0], t0), Ok(false), "a success resets the count");
        r.record(ids[0], Some(true), MS, false, t0);
        let back = t0 + Duration::from_secs(5);
        assert_eq!(r.admit(ids[0], t0), Err(Some(back)));
        // Back: one probe only.
        assert_eq!(r.admit(ids[0], back), Ok(true));
        assert!(r.take_probe(ids[0]));
        assert!(!r.take_probe(ids[0]));
        assert_eq!(r.admit(ids[0], back), Err(None), "its probe is in flight");
        r.record(ids[0], Some(true), MS, true, back);
        assert_eq!(
            r.admit(ids[0], back),
            Err(Some(back + Duration::from_secs(5))),
            "a failed probe: out again as long"
        );
        let again = back + Duration::from_secs(5);
        assert_eq!(r.admit(ids[0], again), Ok(true));
        assert!(r.take_probe(ids[0]));
        r.record(ids[0], Some(false), MS, true, again);
        assert_eq!(r.admit(ids[0], again), Ok(false));
        assert_eq!(r.ejected.load(Ordering::Acquire), 0);
    }

    /// "Busy" answers eject an endpoint busy alone: a multiple of 3 (the
    /// settings' failures in a row) since its last success, busy to half
    /// its recent answers, while the others serve; not while the others are
    /// busy too, nor when a success came between; a probe answered busy
    /// while the others serve fails.
    #[tokio::test(start_paused = true)]
    async fn busy_answers_eject_an_endpoint_busy_alone() {
        let (r, ids) = registry(4);
        let t0 = crate::clock::edge_now();
        // A set busy all over: the others busy to one call in three.
        for &other in &ids[1..] {
            for _ in 0..10 {
                r.record(other, Some(false), MS, false, t0);
                r.record(other, Some(false), MS, false, t0);
                assert!(!r.busy(other, false, t0));
            }
        }
        for _ in 0..15 {
            assert!(!r.busy(ids[0], false, t0));
        }
        assert_eq!(r.admit(ids[0], t0), Ok(false), "the others are busy too");
        // The others serve again (their shares decay under a tenth).
        for &other in &ids[1..] {
            for _ in 0..20 {
                r.record(other, Some(false), MS, false, t0);
            }
        }
        r.record(ids[0], Some(false), MS, false, t0);
        for _ in 0..2 {
            r.busy(ids[0], false, t0);
        }
        r.record(ids[0], Some(false), MS, false, t0);
        for _ in 0..2 {
            r.busy(ids[0], false, t0);
        }
        assert_eq!(r.admit(ids[0], t0), Ok(false), "a success resets the run");
        r.busy(ids[0], false, t0);
        let back = t0 + Duration::from_secs(5);
        assert_eq!(r.admit(ids[0], t0), Err(Some(back)), "busy alone: out");
        assert_eq!(r.admit(ids[0], back), Ok(true));
        assert!(r.take_probe(ids[0]));
        let failed = r.busy(ids[0], true, back);
        assert!(failed, "a probe answered busy while the others serve");
        r.record(ids[0], Some(failed), MS, true, back);
        assert!(r.admit(ids[0], back).is_err(), "out again");

        // From a clean start, busy alone: out once busy to half its recent
        // answers (at the 12th busy answer in a row, the 4th multiple of 3).
        let (r, ids) = registry(4);
        for &other in &ids[1..] {
            r.record(other, Some(false), MS, false, t0);
        }
        for k in 1..=12 {
            r.busy(ids[0], false, t0);
            assert_eq!(r.admit(ids[0], t0).is_err(), k == 12, "after {k}");
        }
    }

    /// At most half the set is ejected, and never the last endpoint.
    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_half_the_set_and_never_the_last() {
        let (r, ids) = registry(4);
        let t0 = crate::clock::edge_now();
        let ejected: Vec<bool> = ids
            .iter()
            .map(|&i| r.eject(i, Why::Consecutive, t0))
            .collect();
        assert_eq!(ejected, [true, true, false, false]);
        let (r, ids) = registry(1);
        assert!(!r.eject(ids[0], Why::Consecutive, t0), "the last one stays");
        let (r, ids) = registry(2);
        assert!(r.eject(ids[0], Why::Consecutive, t0));
        assert!(!r.eject(ids[1], Why::Consecutive, t0));
    }

    /// An endpoint that offends again after coming back is out `n` times
    /// the base time, capped.
    #[tokio::test(start_paused = true)]
    async fn repeat_offenders_stay_out_longer_up_to_the_cap() {
        let (r, ids) = registry(4);
        let mut t = crate::clock::edge_now();
        let mut lengths = Vec::new();
        for _ in 0..3 {
            assert!(r.eject(ids[0], Why::Consecutive, t));
            let Err(Some(until)) = r.admit(ids[0], t) else {
                panic!("ejected")
            };
            lengths.push(until - t);
            t = until;
            assert_eq!(r.admit(ids[0], t), Ok(true));
            assert!(r.take_probe(ids[0]));
            r.record(ids[0], Some(false), MS, true, t);
        }
        assert_eq!(
            lengths,
            [5, 10, 12].map(Duration::from_secs),
            "5 s, 10 s, then the 12 s cap"
        );
    }

    /// Every interval, an endpoint whose success rate is far below the
    /// set's, or whose latency is far above the median, is ejected.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_finds_success_rate_and_latency_outliers() {
        let (r, ids) = registry(6);
        let t0 = crate::clock::edge_now();
        for (k, &i) in ids.iter().enumerate() {
            for call in 0..20 {
                // Endpoint 1 fails half its calls (never 3 in a row);
                // endpoint 2 is 10× slower than the rest.
                let failure = k == 1 && call % 2 == 0;
                let latency = if k == 2 { 10 * MS } else { MS };
                r.record(i, Some(failure), latency, false, t0);
            }
        }
        assert_eq!(r.ejected.load(Ordering::Acquire), 0, "no sweep yet");
        let later = t0 + Duration::from_secs(10);
        r.record(ids[5], Some(false), MS, false, later);
        assert!(
            matches!(r.admit(ids[1], later), Err(Some(_))),
            "success-rate outlier"
        );
        assert!(
            matches!(r.admit(ids[2], later), Err(Some(_))),
            "latency outlier"
        );
        for &i in &[ids[0], ids[3], ids[4], ids[5]] {
            assert_eq!(r.admit(i, later), Ok(false));
        }
    }

    /// Drives endpoint `i` through one interval's calls: `failures` of
    /// `calls` failed, each taking `latency`.
    fn interval_of(
        r: &Registry,
        i: usize,
        calls: u32,
        failures: u32,
        latency: Duration,
        t: Instant,
    ) {
        for call in 0..calls {
            // Spread out: never `consecutive_failures` in a row.
            let failure = failures > 0
                && call % (calls / failures) == 0
                && call / (calls / failures) < failures;
            r.record(i, Some(failure), latency, false, t);
        }
    }

    /// One failure in 1000 among peers that failed nothing is no outlier
    /// (it is √4 = 2 deviations below their mean); 10 % is.
    #[tokio::test(start_paused = true)]
    async fn a_stray_failure_is_no_success_rate_outlier() {
        for (failures, ejected) in [(1, false), (20, false), (100, true)] {
            let (r, ids) = registry(5);
            let t0 = crate::clock::edge_now();
            for (k, &i) in ids.iter().enumerate() {
                interval_of(&r, i, 1000, if k == 0 { failures } else { 0 }, MS, t0);
            }
            let later = t0 + Duration::from_secs(10);
            r.record(ids[4], Some(false), MS, false, later);
            assert_eq!(
                r.admit(ids[0], later).is_err(),
                ejected,
                "{failures} failures in 1000"
            );
        }
    }

    /// Of two endpoints (`min_endpoints` 2), the slower one is judged
    /// against the faster one.
    #[tokio::test(start_paused = true)]
    async fn of_two_endpoints_the_slower_is_a_latency_outlier() {
        let mut s = settings();
        s.success_rate_min_hosts = 2;
        let r = Registry::new(Name::from("pair"), Observer::default(), s, 2);
        let ids: Vec<usize> = (0..2).map(|_| r.register().unwrap()).collect();
        let t0 = crate::clock::edge_now();
        interval_of(&r, ids[0], 20, 0, MS, t0);
        interval_of(&r, ids[1], 20, 0, 10 * MS, t0);
        let later = t0 + Duration::from_secs(10);
        r.record(ids[0], Some(false), MS, false, later);
        assert!(matches!(r.admit(ids[1], later), Err(Some(_))), "slower one");
        assert_eq!(r.admit(ids[0], later), Ok(false));
    }

    /// An endpoint that left the set (its calls in flight keep the slot) is
    /// neither counted nor ejected; when every endpoint left is ejected,
    /// their ejections end.
    #[tokio::test(start_paused = true)]
    async fn endpoints_that_left_do_not_count_and_the_set_keeps_one_taking_calls() {
        let (r, ids) = registry(2);
        let t0 = crate::clock::edge_now();
        r.leave(ids[1]);
        assert_eq!(r.active.load(Ordering::Acquire), 1);
        assert!(!r.eject(ids[0], Why::Consecutive, t0), "the last one stays");
        assert!(!r.eject(ids[1], Why::Consecutive, t0), "it left");
        assert_eq!(r.ejected.load(Ordering::Acquire), 0);
        r.release(ids[1]);
        assert_eq!(r.active.load(Ordering::Acquire), 1);

        // Four, two ejected; the two healthy ones leave: the other two are
        // back at once.
        let (r, ids) = registry(4);
        assert!(r.eject(ids[0], Why::Consecutive, t0));
        assert!(r.eject(ids[1], Why::Consecutive, t0));
        r.leave(ids[2]);
        assert_eq!(
            r.ejected.load(Ordering::Acquire),
            2,
            "one of three left taking calls"
        );
        r.leave(ids[3]);
        assert_eq!(r.ejected.load(Ordering::Acquire), 0);
        assert_eq!(r.admit(ids[0], t0), Ok(false));
        assert_eq!(r.admit(ids[1], t0), Ok(false));
        // A probe's answer after its ejection ended changes no count.
        let (r, ids) = registry(3);
        assert!(r.eject(ids[0], Why::Consecutive, t0));
        let back = t0 + Duration::from_secs(5);
        assert_eq!(r.admit(ids[0], back), Ok(true));
        assert!(r.take_probe(ids[0]));
        r.leave(ids[1]);
        r.leave(ids[2]);
        assert_eq!(r.ejected.load(Ordering::Acquire), 0);
        r.record(ids[0], Some(true), MS, true, back);
        assert_eq!(r.ejected.load(Ordering::Acquire), 0);
        assert_eq!(r.admit(ids[0], back), Ok(false));
    }
}
