//! The breaker's state machine, free of tower types.
//!
//! One `AtomicU64` holds the state, a generation that changes on every
//! transition, and (in half-open) the number of probe slots still free.
//! Admission and recording in the closed state read it and touch the window's
//! atomics: no lock. Transitions, and the (few) half-open probe results, take
//! a short `Mutex` section; no lock is ever held across an `.await`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::window::{Code, CountWindow, Padded, TimeWindow, Window, WindowSnapshot};
use crate::error::Name;
use crate::observe::{EventKind, LayerKind, Observer, State};

/// The `detail` of a refusal while open.
pub(crate) const DETAIL_OPEN: &str = "open";
/// The `detail` of a refusal while half open with every probe out.
pub(crate) const DETAIL_HALF_OPEN_FULL: &str = "half_open_full";
/// The `detail` of a refusal while forced open.
pub(crate) const DETAIL_FORCED_OPEN: &str = "forced_open";

pub(crate) const CLOSED: u8 = 0;
pub(crate) const OPEN: u8 = 1;
pub(crate) const HALF_OPEN: u8 = 2;
pub(crate) const FORCED_OPEN: u8 = 3;
pub(crate) const DISABLED: u8 = 4;
pub(crate) const METRICS_ONLY: u8 = 5;

const FREE_SHIFT: u32 = 8;
const GEN_SHIFT: u32 = 24;
const FREE_MASK: u64 = 0xffff;

#[inline]
fn pack(state: u8, free: u32, generation: u64) -> u64 {
    state as u64 | ((free as u64) & FREE_MASK) << FREE_SHIFT | generation << GEN_SHIFT
}
#[inline]
fn state_of(word: u64) -> u8 {
    (word & 0xff) as u8
}
#[inline]
fn free_of(word: u64) -> u32 {
    ((word >> FREE_SHIFT) & FREE_MASK) as u32
}
#[inline]
fn gen_of(word: u64) -> u64 {
    word >> GEN_SHIFT
}

pub(crate) fn public_state(s: u8) -> State {
    match s {
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        FORCED_OPEN => State::ForcedOpen,
        DISABLED => State::Disabled,
        METRICS_ONLY => State::MetricsOnly,
        _ => State::Closed,
    }
}

/// The window the breaker judges the closed state by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowConfig {
    Count(u32),
    Time { span: Duration, buckets: u32 },
}

/// With `probe_after_refused` set, how long after the breaker opened (or
/// let the last late probe in) a probe goes whatever the calls refused
/// (see `Core::wait_to_probe`): a dependency called rarely is probed every
/// 2 s, not every 100 ms; an open time of 2 s or more is not lengthened.
const PROBE_WITHIN_NANOS: i64 = 2_000_000_000;

/// A validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) tuning: super::BreakerTuning,
    pub(crate) window: WindowConfig,
    /// The slow-call duration in nanoseconds (saturating), compared with
    /// each call's latency.
    pub(crate) slow_call_nanos: u64,
    pub(crate) rate_trips: bool,
    pub(crate) permitted_in_half_open: u32,
    /// Calls refused before a probe once the open time is over (0: none).
    pub(crate) probe_after_refused: u32,
    pub(crate) open_jitter: f64,
    pub(crate) seed: Option<u64>,
    pub(crate) backpressure: bool,
    pub(crate) count_overload: bool,
}

/// What a call admitted by the breaker must report back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PermitKind {
    /// Closed or metrics-only: record the outcome in the window.
    Record,
    /// A half-open probe: report the outcome, or free the slot if dropped.
    Probe,
    /// A probe let in while every slot was out for longer than the open
    /// time (a probe stuck on a hung dependency): reports its outcome as a
    /// probe, and frees no slot if dropped, as it took none.
    LateProbe,
    /// Disabled: nothing to record.
    Ignore,
}

/// An admitted call's ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit {
    pub(crate) generation: u64,
    pub(crate) kind: PermitKind,
    /// The thread slot of the call's layer handle: the lane its outcome is
    /// counted in (see `TimeWindow`; 0 until the service sets it).
    pub(crate) lane: u8,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) detail: &'static str,
}

#[derive(Debug)]
struct Control {
    /// Trips since the last healthy close (drives the open-time growth).
    trips: u32,
    /// The open time, its growth per trip and its cap (changed by a retune).
    open: (Duration, f64, Duration),
    rng: SmallRng,
    probes_done: u32,
    probe_failures: u32,
    probe_slow: u32,
    /// When the breaker last turned half-open (ns after `origin`).
    half_open_at: i64,
}

/// What a `poll_ready` in backpressure mode waits for (see
/// [`Core::backpressure_wait`]); the breaker's moves wake it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// An instant: the end of an open time, or when a late probe is let in.
    Until(Instant),
    /// The next move of the breaker's state.
    Moved,
}

/// The shared breaker.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) name: Name,
    pub(crate) observer: Observer,
    pub(crate) config: Config,
    /// Whether its calls keep time: a slow-call duration is set, or a hook
    /// listens for latencies. An untimed breaker reads the clock only as a
    /// call ends in a time window (the call's bucket), or opens it or finds
    /// it open.
    pub(crate) timed: bool,
    /// How its calls keep time (`future::TIMED`, `CLOCKED` or `UNTIMED`):
    /// an untimed call in a time window reads the clock as it ends (once,
    /// shared with the layers around it), not as it goes in.
    pub(crate) clock: u8,
    /// Spreads the `retry_after` of refusals (`[1, 1.5)` × the time left).
    pub(crate) jitter: crate::clock::Jitter,
    /// The instant the breaker was made: the times it keeps count from.
    pub(crate) origin: Instant,
    /// Read by every call, written on transitions: a line of its own.
    word: Padded<AtomicU64>,
    window: Window,
    /// The runs a success ends, in one word that a success reads once:
    /// failures in a row in the low half; in the high half, when the run
    /// of bare "busy" answers with no success since began (a stamp: ms
    /// after `origin` plus one, wrapping; 0: no run; see
    /// [`on_busy`](Self::on_busy)).
    runs: AtomicU64,
    /// The busy answers of that run: its stamp in the high half (a count
    /// kept for another run starts again), the count in the low half.
    busy_calls: AtomicU64,
    /// The stamp of the last bare busy answer: a run goes on while they
    /// come within [`BUSY_RUN`] of each other.
    busy_last: AtomicU32,
    /// The settings a retune changes, read per call: failure and slow-call
    /// rate thresholds (f64 bits), minimum calls, failures in a row (0: off).
    failure_rate: AtomicU64,
    slow_rate: AtomicU64,
    minimum_calls: AtomicU32,
    in_a_row: AtomicU32,
    /// Nanoseconds after `origin` at which an open breaker lets probes in;
    /// while half-open, at which a call finding every probe slot taken is
    /// let in as one more probe.
    open_until: AtomicI64,
    /// The open time of the last trip, in nanoseconds: also how long the
    /// half-open probes may all be out before one more is let in.
    open_nanos: AtomicI64,
    /// Calls refused since the breaker opened, or since the last late
    /// probe (see [`wait_to_probe`](Self::wait_to_probe)).
    refused: AtomicU32,
    /// After a close from half-open: until when (ns after `origin`) the
    /// fresh window is not judged (0: judged). It fills with the fastest
    /// answers first: the failures of a dependency that fails half its
    /// calls at once and answers the other half later made a window of
    /// failures only, which reopened it at once, again and again.
    judge_after: AtomicI64,
    control: Mutex<Control>,
    /// The open time, its growth and its cap as a retune last set them, for
    /// [`tuning`](Self::tuning) to read without the control lock (held
    /// while a state change is reported: a hook that reads the tuning on
    /// one would wait for itself).
    open_tuning: Mutex<(Duration, f64, Duration)>,
    /// Backpressure mode only: wakes the tasks waiting for the open time to
    /// end when an operator moves the breaker (a reset, disable, …).
    pub(crate) moved: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl Core {
    pub(crate) fn new(name: Name, observer: Observer, config: Config) -> Self {
        let origin = Instant::now();
        let window = match config.window {
            WindowConfig::Count(n) => Window::Count(CountWindow::new(n)),
            WindowConfig::Time { span, buckets } => {
                Window::Time(TimeWindow::new(origin, span, buckets))
            }
        };
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let timed = config.slow_call_nanos != u64::MAX || observer.is_enabled();
        let core = Core {
            timed,
            clock: match (timed, &config.window) {
                (true, _) => super::future::TIMED,
                (false, WindowConfig::Time { .. }) => super::future::CLOCKED,
                (false, WindowConfig::Count(_)) => super::future::UNTIMED,
            },
            jitter: crate::clock::Jitter::new(name.as_str()),
            name,
            observer,
            origin,
            word: Padded(AtomicU64::new(pack(CLOSED, 0, 0))),
            window,
            runs: AtomicU64::new(0),
            busy_calls: AtomicU64::new(0),
            busy_last: AtomicU32::new(0),
            failure_rate: AtomicU64::new(config.tuning.failure_rate_threshold.to_bits()),
            slow_rate: AtomicU64::new(config.tuning.slow_call_rate_threshold.to_bits()),
            minimum_calls: AtomicU32::new(config.tuning.minimum_calls),
            in_a_row: AtomicU32::new(config.tuning.consecutive_failures.unwrap_or(0)),
            open_until: AtomicI64::new(0),
            open_nanos: AtomicI64::new(0),
            refused: AtomicU32::new(0),
            judge_after: AtomicI64::new(0),
            open_tuning: Mutex::new((
                config.tuning.open_duration,
                config.tuning.open_multiplier,
                config.tuning.max_open_duration,
            )),
            control: Mutex::new(Control {
                trips: 0,
                open: (
                    config.tuning.open_duration,
                    config.tuning.open_multiplier,
                    config.tuning.max_open_duration,
                ),
                rng,
                probes_done: 0,
                probe_failures: 0,
                probe_slow: 0,
                half_open_at: 0,
            }),
            moved: config
                .backpressure
                .then(|| std::sync::Arc::new(tokio::sync::Notify::new())),
            config,
        };
        // The state gauge starts with exactly one state at 1.
        core.emit_state(State::Closed, State::Closed, None, None);
        core
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[inline]
    fn nanos(&self, at: Instant) -> i64 {
        crate::clock::signed_nanos(self.origin, at)
    }

    fn emit_state(&self, from: State, to: State, fr: Option<f64>, sr: Option<f64>) {
        // Tasks waiting in `poll_ready` (backpressure) look again.
        if let Some(moved) = &self.moved {
            moved.notify_waiters();
        }
        self.observer.emit(
            LayerKind::CircuitBreaker,
            self.name.as_str(),
            EventKind::StateChanged {
                from,
                to,
                failure_rate: fr,
                slow_call_rate: sr,
            },
        );
    }

    /// The settings a retune may change, as they are now.
    pub(crate) fn tuning(&self) -> super::BreakerTuning {
        let open = *self
            .open_tuning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        super::BreakerTuning {
            failure_rate_threshold: f64::from_bits(self.failure_rate.load(Ordering::Acquire)),
            slow_call_rate_threshold: f64::from_bits(self.slow_rate.load(Ordering::Acquire)),
            minimum_calls: self.minimum_calls.load(Ordering::Acquire),
            consecutive_failures: match self.in_a_row.load(Ordering::Acquire) {
                0 => None,
                n => Some(n),
            },
            open_duration: open.0,
            open_multiplier: open.1,
            max_open_duration: open.2,
        }
    }

    /// Applies new settings (checked by the caller); the state, the window
    /// and an open time already running are kept.
    pub(crate) fn retune(&self, t: &super::BreakerTuning) {
        let mut control = self.lock();
        self.failure_rate
            .store(t.failure_rate_threshold.to_bits(), Ordering::Release);
        self.slow_rate
            .store(t.slow_call_rate_threshold.to_bits(), Ordering::Release);
        // (Sequentially consistent with a time window's success, which
        // reads it after counting itself: see `TimeWindow::filling`.)
        self.minimum_calls.store(t.minimum_calls, Ordering::SeqCst);
        if let Window::Time(w) = &self.window {
            // A raised minimum: the window may no longer hold it.
            w.forget_filled();
        }
        let in_a_row = t.consecutive_failures.unwrap_or(0);
        if self.in_a_row.swap(in_a_row, Ordering::AcqRel) == 0 && in_a_row != 0 {
            // Successes while the rule was off did not end the run it
            // counted: it starts anew (a run of busy answers goes on).
            self.runs.fetch_and(!LOW_HALF, Ordering::AcqRel);
        }
        control.open = (t.open_duration, t.open_multiplier, t.max_open_duration);
        *self
            .open_tuning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = control.open;
        drop(control);
        self.observer.emit(
            LayerKind::CircuitBreaker,
            self.name.as_str(),
            EventKind::Reconfigured,
        );
        // The window is judged by the new rates now, not at the next call
        // that changes its counts (unless it is a fresh one still waiting
        // for the answers of the calls let in at a close: the next call past
        // that judges it).
        let word = self.word.load(Ordering::Acquire);
        if state_of(word) == CLOSED && self.config.rate_trips {
            let now = crate::clock::edge_now();
            let after = self.judge_after.load(Ordering::Acquire);
            if after != 0 && self.nanos(now) < after {
                return;
            }
            let snap = self.window.snapshot(now);
            if self.rates_trip(&snap) {
                self.trip_closed(gen_of(word), now, snap, false);
            }
        }
    }

    /// The current state (an open breaker whose open time has passed reads
    /// `Open` until the next call moves it to half-open).
    #[inline]
    pub(crate) fn state(&self) -> State {
        public_state(state_of(self.word.load(Ordering::Acquire)))
    }

    /// The window's counts now.
    pub(crate) fn snapshot(&self, now: Instant) -> WindowSnapshot {
        self.window.snapshot(now)
    }

    /// Time until an open breaker lets probes through, if it is open.
    pub(crate) fn open_remaining(&self, now: Instant) -> Option<Duration> {
        let word = self.word.load(Ordering::Acquire);
        if state_of(word) != OPEN {
            return None;
        }
        let until = self.open_until.load(Ordering::Acquire);
        let at = self.nanos(now);
        Some(nanos_to_duration(
            self.next_probe(at, until).saturating_sub(at),
        ))
    }

    /// The instant (ns after `origin`) a probe may go, seen at `at`, the
    /// open time (or the last probe's) over at `until`; at or before `at`:
    /// now. Past the open time, with `probe_after_refused` set, the calls
    /// refused decide, or the latest instant.
    fn next_probe(&self, at: i64, until: i64) -> i64 {
        if at < until {
            return until;
        }
        match self.probe_latest(until) {
            Some(latest) if !self.refused_enough() => latest,
            _ => until,
        }
    }

    /// With `probe_after_refused` set (and no backpressure), when a probe
    /// goes whatever the calls refused, for an open time over at `until`.
    fn probe_latest(&self, until: i64) -> Option<i64> {
        if self.config.probe_after_refused == 0 || self.config.backpressure {
            return None;
        }
        let opened = until.saturating_sub(self.open_nanos.load(Ordering::Relaxed));
        Some(until.max(opened.saturating_add(PROBE_WITHIN_NANOS)))
    }

    /// Whether enough calls were refused for a probe (see
    /// [`wait_to_probe`](Self::wait_to_probe)).
    fn refused_enough(&self) -> bool {
        self.refused.load(Ordering::Relaxed) >= self.config.probe_after_refused
    }

    /// What a `poll_ready` in backpressure mode waits for: an open time to
    /// end; while half-open with no probe slot free, a move (a probe's
    /// verdict, a slot given back) or the time a late probe is let in (a
    /// probe stuck on a dependency that hangs does not hold the endpoint
    /// off for ever); forced open, an operator's move. `None`: nothing, a
    /// call now would be admitted (or refused for another reason).
    pub(crate) fn backpressure_wait(&self, now: Instant) -> Option<Wait> {
        let word = self.word.load(Ordering::Acquire);
        match state_of(word) {
            OPEN => self.open_deadline(now).map(Wait::Until),
            HALF_OPEN if free_of(word) == 0 => {
                let until = self.open_until.load(Ordering::Acquire);
                let left = nanos_to_duration(until.saturating_sub(self.nanos(now)));
                (!left.is_zero()).then(|| Wait::Until(now + left))
            }
            FORCED_OPEN => Some(Wait::Moved),
            _ => None,
        }
    }

    /// The instant an open breaker lets probes through, when it is open and
    /// that instant is still ahead.
    pub(crate) fn open_deadline(&self, now: Instant) -> Option<Instant> {
        match self.open_remaining(now) {
            Some(d) if !d.is_zero() => Some(now + d),
            _ => None,
        }
    }

    /// Admits a call or refuses it. Lock-free except for the open → half-open
    /// transition. `now` is the time if the call is `timed`; an open
    /// breaker reads the clock itself when it is not.
    #[inline]
    pub(crate) fn try_acquire(&self, now: Instant, timed: bool) -> Result<Permit, Refusal> {
        // Closed: one load, inlined into the layer's call; every other
        // state out of line.
        let word = self.word.load(Ordering::Acquire);
        if state_of(word) == CLOSED {
            return Ok(Permit {
                generation: gen_of(word),
                kind: PermitKind::Record,
                lane: 0,
            });
        }
        self.try_acquire_slow(now, timed)
    }

    /// [`try_acquire`](Self::try_acquire) in a state other than closed (or
    /// one that was closed a moment ago).
    #[inline(never)]
    fn try_acquire_slow(&self, now: Instant, timed: bool) -> Result<Permit, Refusal> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            let generation = gen_of(word);
            match state_of(word) {
                CLOSED | METRICS_ONLY => {
                    return Ok(Permit {
                        generation,
                        kind: PermitKind::Record,
                        lane: 0,
                    });
                }
                DISABLED => {
                    return Ok(Permit {
                        generation,
                        kind: PermitKind::Ignore,
                        lane: 0,
                    });
                }
                FORCED_OPEN => {
                    return Err(Refusal {
                        retry_after: None,
                        detail: DETAIL_FORCED_OPEN,
                    });
                }
                OPEN => {
                    let now = if timed { now } else { crate::clock::edge_now() };
                    let until = self.open_until.load(Ordering::Acquire);
                    let at = self.nanos(now);
                    if let Some(wait) = self.wait_to_probe(at, until) {
                        return Err(Refusal {
                            retry_after: Some(wait),
                            detail: DETAIL_OPEN,
                        });
                    }
                    self.to_half_open(generation, now);
                }
                _ => {
                    // Half-open: take a probe slot from the state word itself,
                    // so a slot always belongs to the generation it came from.
                    let free = free_of(word);
                    let now = if timed { now } else { crate::clock::edge_now() };
                    if free == 0 {
                        return self.late_probe(generation, now);
                    }
                    // The next probe may go once every slot has been out for
                    // an open time (set before the slot is taken, so a call
                    // that finds none free never reads an older instant).
                    // Replaced only as read, and put back if the slot is not
                    // taken: a verdict that reopened the breaker meanwhile
                    // keeps its own open time (`open_locked` writes it on
                    // both sides of the state).
                    let prev = self.open_until.load(Ordering::Acquire);
                    let mine = self
                        .nanos(now)
                        .saturating_add(self.open_nanos.load(Ordering::Relaxed));
                    if self
                        .open_until
                        .compare_exchange(prev, mine, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        continue;
                    }
                    let next = pack(HALF_OPEN, free - 1, generation);
                    if self
                        .word
                        .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Ok(Permit {
                            generation,
                            kind: PermitKind::Probe,
                            lane: 0,
                        });
                    }
                    let _ = self.open_until.compare_exchange(
                        mine,
                        prev,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
        }
    }

    /// Half-open with every probe slot taken: the call is one more probe if
    /// the slots have all been out for an open time (a probe stuck on a
    /// dependency that hangs must not keep the breaker refusing after the
    /// dependency is back), one per open time; otherwise refused.
    #[cold]
    #[inline(never)]
    fn late_probe(&self, generation: u64, now: Instant) -> Result<Permit, Refusal> {
        let at = self.nanos(now);
        let until = self.open_until.load(Ordering::Acquire);
        let wait = self.wait_to_probe(at, until);
        if wait.is_none()
            && self
                .open_until
                .compare_exchange(
                    until,
                    at.saturating_add(self.open_nanos.load(Ordering::Relaxed)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            let word = self.word.load(Ordering::Acquire);
            if state_of(word) == HALF_OPEN && gen_of(word) == generation {
                self.refused.store(0, Ordering::Relaxed);
                return Ok(Permit {
                    generation,
                    kind: PermitKind::LateProbe,
                    lane: 0,
                });
            }
        }
        // The probes decide within about a round trip: come back soon
        // (stretched when the refusal is made, as every hint of the
        // breaker's); with every probe out for an open time already, when
        // the next may go at the latest.
        Err(Refusal {
            retry_after: Some(
                wait.filter(|_| at >= until)
                    .unwrap_or(crate::clock::MIN_HINT),
            ),
            detail: DETAIL_HALF_OPEN_FULL,
        })
    }

    /// A call admitted with `permit` finished with this outcome at `now`
    /// (if `timed`: an untimed call reads the clock only if its outcome
    /// opens the breaker, and only a count window records it).
    #[inline]
    pub(crate) fn on_complete(
        &self,
        permit: Permit,
        now: Instant,
        timed: bool,
        failure: bool,
        slow: bool,
    ) {
        self.complete(permit, now, failure, slow, || {
            if timed { now } else { crate::clock::edge_now() }
        });
    }

    /// A call's outcome known after its head, at the end of its body: counted
    /// in the window at `head` (the time of the head, already read), so the
    /// body's end reads the clock only if the outcome opens the breaker.
    pub(crate) fn on_late_complete(
        &self,
        permit: Permit,
        head: Instant,
        failure: bool,
        slow: bool,
    ) {
        self.complete(permit, head, failure, slow, crate::clock::edge_now);
    }

    /// Records an outcome in the window at `at` (a time window's calls are
    /// always timed); `now` gives the time an opening starts from.
    #[inline]
    fn complete(
        &self,
        permit: Permit,
        at: Instant,
        failure: bool,
        slow: bool,
        now: impl FnOnce() -> Instant,
    ) {
        match permit.kind {
            PermitKind::Ignore => {}
            PermitKind::Record => self.record_closed(permit, at, failure, slow, now),
            PermitKind::Probe | PermitKind::LateProbe => {
                self.record_probe(permit, failure, slow, now)
            }
        }
    }

    /// A call admitted with `permit` was dropped before it finished, or
    /// finished with an outcome that is not counted: a probe gives its slot
    /// back; other calls record nothing.
    pub(crate) fn on_cancel(&self, permit: Permit) {
        if permit.kind != PermitKind::Probe {
            return;
        }
        let mut word = self.word.load(Ordering::Acquire);
        while state_of(word) == HALF_OPEN && gen_of(word) == permit.generation {
            let next = pack(HALF_OPEN, free_of(word) + 1, permit.generation);
            match self
                .word
                .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // A slot is free again: a task waiting for one looks.
                    if let Some(moved) = &self.moved {
                        moved.notify_waiters();
                    }
                    return;
                }
                Err(w) => word = w,
            }
        }
    }

    /// A call admitted with `permit` was answered a bare "busy"
    /// ([`Outcome::Overloaded`](crate::observe::Outcome::Overloaded), not
    /// counted as a failure, and not pacing its caller: see
    /// [`end_busy_run`](Self::end_busy_run) for one that does). A closed
    /// breaker whose answers have all been such for [`BUSY_RUN`], at least
    /// `minimum_calls` of them (each within [`BUSY_RUN`] of the last) with
    /// no success between, opens: the dependency serves nothing (a server
    /// that sheds part of its load serves the rest, and its successes end
    /// the run). A probe answered so is a failed probe: the dependency
    /// still serves nothing (given back, its slot made every call a
    /// probe). Out of line: only a busy answer comes here.
    #[cold]
    #[inline(never)]
    pub(crate) fn on_busy(&self, permit: Permit, now: impl FnOnce() -> Instant) {
        match permit.kind {
            PermitKind::Record => {}
            PermitKind::Probe | PermitKind::LateProbe => {
                return self.record_probe(permit, true, false, now);
            }
            PermitKind::Ignore => return,
        }
        let word = self.word.load(Ordering::Acquire);
        if gen_of(word) != permit.generation || state_of(word) != CLOSED {
            return;
        }
        let now = now();
        // (Milliseconds after `origin`, plus one, wrapping, never 0: a run
        // is judged over a second or so.)
        let ms = ((self.nanos(now) / 1_000_000) as u32)
            .wrapping_add(1)
            .max(1);
        // The run this answer is in: the one going on, unless the last
        // busy answer came longer ago than `BUSY_RUN` (sporadic ones among
        // other answers are no run), or a new one.
        let gap = ms.wrapping_sub(self.busy_last.swap(ms, Ordering::AcqRel)) as i32;
        let mut runs = self.runs.load(Ordering::Acquire);
        let first = loop {
            let first = (runs >> 32) as u32;
            if first != 0 && gap < BUSY_RUN_MS as i32 {
                break first;
            }
            let next = (u64::from(ms) << 32) | (runs & LOW_HALF);
            match self
                .runs
                .compare_exchange_weak(runs, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break ms,
                Err(current) => runs = current,
            }
        };
        let mut calls = self.busy_calls.load(Ordering::Acquire);
        let n = loop {
            let n = if (calls >> 32) as u32 == first {
                (calls as u32).saturating_add(1)
            } else {
                1
            };
            let next = (u64::from(first) << 32) | u64::from(n);
            match self.busy_calls.compare_exchange_weak(
                calls,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break n,
                Err(current) => calls = current,
            }
        };
        let lasted = ms.wrapping_sub(first);
        if n >= self.busy_minimum() && (BUSY_RUN_MS..1 << 31).contains(&lasted) {
            // (No failure rate: none was counted.)
            self.trip(permit.generation, now, None, None);
        }
    }

    /// The busy answers a run needs to open the breaker: `minimum_calls`,
    /// or a count window's size if smaller (as its rates are judged).
    fn busy_minimum(&self) -> u32 {
        let minimum = self.minimum_calls.load(Ordering::Relaxed);
        match self.config.window {
            WindowConfig::Count(n) => minimum.min(n),
            WindowConfig::Time { .. } => minimum,
        }
        .max(1)
    }

    /// A head that looks like a success (held to its body's end, which may
    /// come seconds later) ends a run of bare busy answers: the dependency
    /// serves. (Not a run of failures: the body may still fail, as a
    /// stream that fails after its first message does.)
    #[inline]
    pub(crate) fn end_busy_run(&self) {
        if self.runs.load(Ordering::Relaxed) >> 32 != 0 {
            self.runs.fetch_and(LOW_HALF, Ordering::AcqRel);
        }
    }

    /// A busy answer that paces its caller (a quota's refusal, a wait
    /// named) ends both runs, of bare busy answers and of failures in a
    /// row: that server is up and answering. (A seawall server that
    /// admitted a burst and shed the rest answered some of its queue `504`
    /// at the client's attempt deadline between its `503`s with
    /// `Retry-After`; not counted, those `503`s left the `504`s in a row,
    /// and the client's breaker opened at start in 7 of 11 runs of a new
    /// user's trial.)
    #[cold]
    pub(crate) fn end_runs(&self) {
        if self.runs.load(Ordering::Relaxed) != 0 {
            self.runs.store(0, Ordering::Release);
        }
    }

    #[inline(always)]
    fn record_closed(
        &self,
        permit: Permit,
        at: Instant,
        failure: bool,
        slow: bool,
        now: impl FnOnce() -> Instant,
    ) {
        let word = self.word.load(Ordering::Acquire);
        if gen_of(word) != permit.generation {
            // Admitted before a transition: not part of this state's window.
            return;
        }
        let snap = self.window.record_and_snapshot(
            at,
            Code::new(failure, slow),
            permit.lane.into(),
            || u64::from(self.minimum_calls.load(Ordering::SeqCst)),
        );
        if state_of(word) != CLOSED {
            // Metrics-only: counts, never trips.
            return;
        }
        let mut trip = false;
        if failure {
            // (A failure leaves a run of busy answers as it is: a
            // dependency that fails or sheds every call serves nothing.)
            let limit = self.in_a_row.load(Ordering::Relaxed);
            if limit != 0 {
                let before = self.runs.fetch_add(1, Ordering::AcqRel) as u32;
                trip = before.saturating_add(1) >= limit;
            }
        } else if self.runs.load(Ordering::Relaxed) != 0 {
            // A success ends both runs.
            self.runs.store(0, Ordering::Release);
        }
        if self.judge_after.load(Ordering::Relaxed) != 0 {
            return self.record_after_close(permit.generation, snap, trip, now());
        }
        if self.config.rate_trips && !trip {
            // Counts a call left unable to open it (unchanged, or lowered
            // by a success: see `Window::record_and_snapshot`) were judged
            // by the call that made them (and by a retune since).
            if let Some(snap) = snap
                && self.rates_trip(&snap)
            {
                self.trip_closed(permit.generation, now(), snap, false);
            }
        } else if trip {
            let now = now();
            let snap = snap.unwrap_or_else(|| self.window.snapshot(now));
            self.trip_closed(permit.generation, now, snap, true);
        }
    }

    /// A call recorded in the fresh window of a close from half-open: the
    /// window's rates open the breaker only three times the last probe's
    /// time after the close, once the answers of the calls let in at the
    /// close have had time to come back (the slow ones last), and are
    /// judged on every call until then, changed counts or not; a run of
    /// failures in a row opens it at once.
    #[cold]
    fn record_after_close(
        &self,
        generation: u64,
        snap: Option<WindowSnapshot>,
        in_a_row: bool,
        now: Instant,
    ) {
        let after = self.judge_after.load(Ordering::Acquire);
        if after != 0 {
            if self.nanos(now) < after {
                // The rates wait; a run of failures in a row opens it
                // whatever the window holds, as at any other time.
                if in_a_row {
                    let snap = snap.unwrap_or_else(|| self.window.snapshot(now));
                    self.trip_closed(generation, now, snap, true);
                }
                return;
            }
            // Judged from now on, as any closed breaker.
            let _ =
                self.judge_after
                    .compare_exchange(after, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        let snap = snap.unwrap_or_else(|| self.window.snapshot(now));
        if in_a_row || (self.config.rate_trips && self.rates_trip(&snap)) {
            self.trip_closed(generation, now, snap, in_a_row);
        }
    }

    /// Whether these counts open a closed breaker.
    #[inline]
    fn rates_trip(&self, snap: &WindowSnapshot) -> bool {
        // Both thresholds are above 0: a window with no failure and no slow
        // call (a healthy service's, on every call) cannot open it.
        if snap.failures == 0 && snap.slow_calls == 0 {
            return false;
        }
        let minimum_calls = self.minimum_calls.load(Ordering::Relaxed);
        let minimum = match self.config.window {
            WindowConfig::Count(n) => minimum_calls.min(n),
            WindowConfig::Time { .. } => minimum_calls,
        } as u64;
        if snap.calls == 0 || snap.calls < minimum {
            return false;
        }
        let calls = snap.calls as f64;
        snap.failures as f64 / calls >= f64::from_bits(self.failure_rate.load(Ordering::Relaxed))
            || snap.slow_calls as f64 / calls
                >= f64::from_bits(self.slow_rate.load(Ordering::Relaxed))
    }

    /// The open time for the next trip, given the trips since the last
    /// healthy close.
    fn open_duration(&self, control: &mut Control) -> Duration {
        let c = &self.config;
        let (open, multiplier, max) = control.open;
        let base = open.as_secs_f64();
        let grown = base * multiplier.powi(control.trips.min(1024) as i32);
        let max = max.as_secs_f64();
        let mut secs = grown.min(max);
        if c.open_jitter > 0.0 {
            // Uniform in ±jitter around the capped time, and below the cap
            // only: at the cap the draw still spreads (a clamp after the
            // draw made half of them exactly `max`, in step across a fleet).
            let low = secs * (1.0 - c.open_jitter);
            let high = (secs * (1.0 + c.open_jitter)).min(max);
            if high > low {
                secs = control.rng.random_range(low..=high);
            }
        }
        // Whole nanoseconds, so retry_after values are exact.
        Duration::from_nanos((secs * 1e9).round() as u64).max(Duration::from_nanos(1))
    }

    /// Opens the breaker (under the lock), from `from`.
    fn open_locked(
        &self,
        control: &mut Control,
        from: u8,
        generation: u64,
        now: Instant,
        fr: Option<f64>,
        sr: Option<f64>,
    ) {
        let d = self.open_duration(control);
        control.trips = control.trips.saturating_add(1);
        let d = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.open_nanos.store(d, Ordering::Relaxed);
        self.refused.store(0, Ordering::Relaxed);
        let until = self.nanos(now).saturating_add(d);
        self.open_until.store(until, Ordering::Release);
        self.runs.store(0, Ordering::Release);
        self.word
            .store(pack(OPEN, 0, next_gen(generation)), Ordering::Release);
        // Again: a half-open admission that read the state before it
        // changed may have replaced the first write (see `try_acquire_slow`).
        self.open_until.store(until, Ordering::Release);
        self.emit_state(public_state(from), State::Open, fr, sr);
    }

    /// Opens a closed breaker, reporting the failure rate that opened it:
    /// the window's, or 1 for a run of failures in a row (`in_a_row`), whose
    /// window may hold a low rate (the run opened it: a log that read
    /// `failure_rate=0.031` at the open of a breaker that 50 failures in a
    /// row had opened misled a new user's reading of an outage).
    #[cold]
    fn trip_closed(&self, generation: u64, now: Instant, snap: WindowSnapshot, in_a_row: bool) {
        let failure_rate = if in_a_row {
            Some(1.0)
        } else {
            snap.failure_rate()
        };
        self.trip(generation, now, failure_rate, snap.slow_call_rate());
    }

    /// Opens the breaker if it is still closed in `generation`, reporting
    /// the rates that opened it (none for a run of "busy" answers).
    #[cold]
    fn trip(&self, generation: u64, now: Instant, fr: Option<f64>, sr: Option<f64>) {
        let mut control = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if gen_of(word) != generation || state_of(word) != CLOSED {
            return;
        }
        self.open_locked(&mut control, CLOSED, generation, now, fr, sr);
    }

    /// How long until a probe may go, at `at` (ns after `origin`), the
    /// open time (or the last probe's) over at `until`, counting this call
    /// as refused; `None`: it may go now. With `probe_after_refused` set,
    /// a probe after the open time waits for that many calls refused since
    /// the breaker opened (or since the last late probe), or until
    /// [`PROBE_WITHIN_NANOS`] after it.
    #[inline]
    fn wait_to_probe(&self, at: i64, until: i64) -> Option<Duration> {
        let next = self.next_probe(at, until);
        if next <= at {
            return None;
        }
        // (Counted only with the gate on: in backpressure mode calls wait
        // for the open time instead of being refused. Bounded, and no write
        // on the shared line once enough.)
        if self.probe_latest(until).is_some() && !self.refused_enough() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        Some(nanos_to_duration(next - at))
    }

    #[cold]
    fn to_half_open(&self, generation: u64, now: Instant) {
        let mut control = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if gen_of(word) != generation || state_of(word) != OPEN {
            return;
        }
        if self.nanos(now) < self.open_until.load(Ordering::Acquire) {
            return;
        }
        control.probes_done = 0;
        control.probe_failures = 0;
        control.probe_slow = 0;
        control.half_open_at = self.nanos(now);
        self.refused.store(0, Ordering::Relaxed);
        self.word.store(
            pack(
                HALF_OPEN,
                self.config.permitted_in_half_open,
                next_gen(generation),
            ),
            Ordering::Release,
        );
        self.emit_state(State::Open, State::HalfOpen, None, None);
    }

    #[cold]
    fn record_probe(
        &self,
        permit: Permit,
        failure: bool,
        slow: bool,
        now: impl FnOnce() -> Instant,
    ) {
        let mut control = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if gen_of(word) != permit.generation || state_of(word) != HALF_OPEN {
            return;
        }
        control.probes_done += 1;
        control.probe_failures += failure as u32;
        control.probe_slow += slow as u32;
        let permitted = self.config.permitted_in_half_open;
        if control.probes_done < permitted {
            return;
        }
        let fr = control.probe_failures as f64 / permitted as f64;
        let sr = control.probe_slow as f64 / permitted as f64;
        if fr < f64::from_bits(self.failure_rate.load(Ordering::Relaxed))
            && sr < f64::from_bits(self.slow_rate.load(Ordering::Relaxed))
        {
            // The probes took up to this long: the calls let in at the
            // close answer within about as much. At most a second (the
            // time from half-open includes waiting for probes to come, and
            // a dependency dying again meanwhile is not judged), and none
            // for a breaker that opens on runs of failures only.
            let now = self.nanos(now());
            let probe = now.saturating_sub(control.half_open_at).max(0);
            let after = if probe == 0 || !self.config.rate_trips {
                0
            } else {
                now.saturating_add(probe.saturating_mul(3).min(MAX_JUDGE_DELAY))
            };
            self.close_locked(
                &mut control,
                (HALF_OPEN, permit.generation),
                after,
                Some(fr),
                Some(sr),
            );
        } else {
            self.open_locked(
                &mut control,
                HALF_OPEN,
                permit.generation,
                now(),
                Some(fr),
                Some(sr),
            );
        }
    }

    /// Closes the breaker (under the lock), from state `from` of
    /// `generation`; its fresh window is judged from `judge_after` on.
    fn close_locked(
        &self,
        control: &mut Control,
        (from, generation): (u8, u64),
        judge_after: i64,
        fr: Option<f64>,
        sr: Option<f64>,
    ) {
        control.trips = 0;
        self.window.reset();
        self.runs.store(0, Ordering::Release);
        self.judge_after.store(judge_after, Ordering::Release);
        self.word
            .store(pack(CLOSED, 0, next_gen(generation)), Ordering::Release);
        self.emit_state(public_state(from), State::Closed, fr, sr);
    }

    /// Moves to a state chosen by an operator: `CLOSED` (a reset: empty
    /// window, open time back to its base), `FORCED_OPEN`, `DISABLED` or
    /// `METRICS_ONLY`.
    pub(crate) fn set_manual(&self, to: u8) {
        self.set_manual_locked(to);
        // Tasks waiting for an open time to end look again.
        if let Some(moved) = &self.moved {
            moved.notify_waiters();
        }
    }

    fn set_manual_locked(&self, to: u8) {
        let mut control = self.lock();
        let word = self.word.load(Ordering::Acquire);
        let from = state_of(word);
        let generation = gen_of(word);
        if to == CLOSED {
            self.close_locked(&mut control, (from, generation), 0, None, None);
            return;
        }
        if to == METRICS_ONLY || to == DISABLED {
            self.window.reset();
        }
        if from == to {
            return;
        }
        self.word
            .store(pack(to, 0, next_gen(generation)), Ordering::Release);
        self.emit_state(public_state(from), public_state(to), None, None);
    }
}

/// How long a run of "busy" answers with no success between (at least
/// `minimum_calls` of them) lasts before it opens a closed breaker (see
/// [`Core::on_busy`]).
pub(crate) const BUSY_RUN: Duration = Duration::from_secs(1);
const BUSY_RUN_MS: u32 = BUSY_RUN.as_millis() as u32;

/// The low half of a word of two halves.
const LOW_HALF: u64 = u32::MAX as u64;

/// The longest a fresh window waits after a close before it is judged (ns).
const MAX_JUDGE_DELAY: i64 = 1_000_000_000;

#[inline]
fn nanos_to_duration(nanos: i64) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

#[inline]
fn next_gen(generation: u64) -> u64 {
    (generation + 1) & ((1 << (64 - GEN_SHIFT)) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            window: WindowConfig::Count(4),
            tuning: super::super::BreakerTuning {
                failure_rate_threshold: 0.5,
                slow_call_rate_threshold: 1.0,
                minimum_calls: 4,
                consecutive_failures: None,
                open_duration: Duration::from_secs(10),
                open_multiplier: 2.0,
                max_open_duration: Duration::from_secs(30),
            },
            slow_call_nanos: 1_000_000_000,
            rate_trips: true,
            permitted_in_half_open: 2,
            probe_after_refused: 0,
            open_jitter: 0.0,
            seed: Some(1),
            backpressure: false,
            count_overload: false,
        }
    }

    /// With `probe_after_refused(3)` and an open time of 100 ms: past the
    /// open time, calls are refused until 3 were, or until 2 s after the
    /// open; the handle's `retry_after` says the latter meanwhile; a probe
    /// stuck in half-open lets one more through on the same terms.
    #[tokio::test(start_paused = true)]
    async fn a_probe_waits_for_calls_refused_or_two_seconds() {
        let mut c = config();
        c.probe_after_refused = 3;
        c.permitted_in_half_open = 1;
        c.tuning.open_duration = Duration::from_millis(100);
        c.tuning.open_multiplier = 1.0;
        let core = Core::new(Name::from("t"), Observer::none(), c);
        let t0 = Instant::now();
        for failure in [false, false, true, true] {
            let p = core.try_acquire(t0, true).unwrap();
            core.on_complete(p, t0, true, failure, false);
        }
        assert_eq!(core.state(), State::Open);
        let ms = Duration::from_millis;
        // Within the open time: refused, counted (1).
        assert_eq!(
            core.try_acquire(t0 + ms(50), true).unwrap_err().retry_after,
            Some(ms(50))
        );
        // Past it: the handle says 2 s after the open, and two more are
        // refused with that (2, 3).
        assert_eq!(core.open_remaining(t0 + ms(500)), Some(ms(1500)));
        for at in [500, 900] {
            let r = core.try_acquire(t0 + ms(at), true).unwrap_err();
            assert_eq!(r.retry_after, Some(ms(2000 - at)), "at {at} ms");
        }
        assert_eq!(core.open_remaining(t0 + ms(950)), Some(Duration::ZERO));
        // 3 refused: the next call probes, and stays out.
        let _stuck = core.try_acquire(t0 + ms(1000), true).unwrap();
        assert_eq!(core.state(), State::HalfOpen);
        // Every slot out for its open time: one more probe once 3 calls
        // were refused since, or 2 s after the stuck one went.
        for at in [1200, 1300, 1400] {
            let r = core.try_acquire(t0 + ms(at), true).unwrap_err();
            assert_eq!(r.detail, "half_open_full", "at {at} ms");
        }
        let late = core.try_acquire(t0 + ms(1500), true).unwrap();
        assert_eq!(late.kind, PermitKind::LateProbe);
        // The count starts again: 2 s after that one, with no call between.
        assert!(core.try_acquire(t0 + ms(1700), true).is_err());
        let again = core.try_acquire(t0 + ms(3500), true).unwrap();
        assert_eq!(again.kind, PermitKind::LateProbe);
    }

    #[tokio::test(start_paused = true)]
    async fn trips_probes_and_grows() {
        let core = Core::new(Name::from("t"), Observer::none(), config());
        let now = Instant::now();
        for failure in [false, false, true, true] {
            let p = core.try_acquire(now, true).unwrap();
            core.on_complete(p, now, true, failure, false);
        }
        assert_eq!(core.state(), State::Open);
        let r = core.try_acquire(now, true).unwrap_err();
        assert_eq!(r.retry_after, Some(Duration::from_secs(10)));
        let later = now + Duration::from_secs(10);
        let p1 = core.try_acquire(later, true).unwrap();
        let p2 = core.try_acquire(later, true).unwrap();
        assert_eq!(core.state(), State::HalfOpen);
        assert_eq!(
            core.try_acquire(later, true).unwrap_err().detail,
            "half_open_full"
        );
        core.on_cancel(p2);
        let p3 = core.try_acquire(later, true).unwrap();
        core.on_complete(p1, later, true, true, false);
        core.on_complete(p3, later, true, false, false);
        // 1 of 2 probes failed: 50 % is not below 50 %: open again, 20 s.
        assert_eq!(core.state(), State::Open);
        assert_eq!(core.open_remaining(later), Some(Duration::from_secs(20)));
        // Stale completion of the cancelled probe is ignored.
        core.on_complete(p2, later, true, false, false);
        assert_eq!(core.state(), State::Open);
    }
}
