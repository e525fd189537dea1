//! The shared admission state of the adaptive limit: atomics on the request
//! path, the [`LimitAlgorithm`] behind a short lock taken once per window.
//! Free of tower types.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use tokio::time::Instant;

use super::algorithm::{LimitAlgorithm, WindowSample};
use super::criticality::Criticality;
use super::queue::{Place, Queue};
use crate::error::{Name, RejectionKind};
use crate::observe::{EventKind, LayerKind, Observer, Outcome};
use crate::stripe::{Striped, Ticket};

/// Why a request was refused at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The limit was reached and the request's class had used its share.
    Limit,
    /// The request's deadline is shorter than the expected service time.
    Doomed,
    /// The request waited in the queue, and was refused: the rate places
    /// came free at said it could not be served in time, its place came
    /// too late for a call at the limit (a herd's waiter), no call ended
    /// within its patience, it was the oldest waiter of a full queue (in a
    /// limit that waits at the limit), or its deadline came.
    Queue,
    /// As `Limit`, during a burst, within [`JOINS`] of the start of a
    /// burst that may queue, while its queue takes arrivals or drains, or
    /// at any time in a limit that waits at the limit: it may wait in the
    /// queue instead (see `Limiter::try_queue`); reported as `Limit` if
    /// not.
    LimitMayWait,
}

impl Refusal {
    pub(crate) const fn detail(self) -> &'static str {
        match self {
            Refusal::Limit | Refusal::LimitMayWait => "limit",
            Refusal::Doomed => "doomed",
            Refusal::Queue => "queue",
        }
    }
}

/// How an admitted call ended, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// Finished: its RTT is a sample.
    Sample(Outcome),
    /// Finished with a sign of overload below.
    Drop,
    /// Finished with an error that says nothing about capacity.
    Ignore,
    /// Answered that it ran out of time (a `504`, a `DEADLINE_EXCEEDED`:
    /// a handler that waited its budget out, on a dependency that hung,
    /// say): a failure, counted apart for the algorithm
    /// (`WindowSample::timed_out`), which takes its time held as a sample
    /// when the window's other calls met no queue, as a drop otherwise.
    TimedOut,
}

pub(crate) struct Config {
    pub(crate) window: Duration,
    pub(crate) min_window_samples: u64,
    pub(crate) min_rtt: Duration,
    pub(crate) shares: [f64; 4],
    pub(crate) reject_doomed: bool,
    pub(crate) burst: Duration,
    /// The most requests that wait in the queue for a herd (0: none; see
    /// `try_queue`).
    pub(crate) max_queue: usize,
    /// Leave the handler's waits on calls out through a client stack out
    /// of the count and the latency (a server's limit; not a client
    /// stack's, whose calls are all out, and whose refusals are therefore
    /// local: see [`Limiter::guards_calls_out`]).
    pub(crate) waits_apart: bool,
    /// A request the limit refuses waits for a place instead (see
    /// [`Limiter::try_queue`]).
    pub(crate) wait_at_limit: bool,
}

/// How long a burst above the limit is admitted (see `bursting`):
/// CoDel's interval, the time a queue may stand before it is a standing
/// queue.
pub(crate) const BURST: Duration = Duration::from_millis(100);

/// How long a run of requests over the limit lasts before it is first
/// judged for calls that keep their places at it, and the longest break
/// in such a run (see `Limiter::over_limit`): half a burst's length, or
/// four expected service times if longer.
const EARLY: Duration = Duration::from_millis(50);

/// [`EARLY`], or four `expected` service times (ns) if longer: how long a
/// run of requests over the limit, or a window at the start, lasts before
/// it is judged (see `Limiter::over_limit`).
fn early_ns(expected: u64) -> u64 {
    crate::clock::nanos(EARLY).max(expected.saturating_mul(4))
}

/// What a burst says of a request over the limit past its class's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Burst {
    /// Admitted over the limit.
    Admit,
    /// Refused here, but a herd's queue may take it (a burst goes on, or
    /// began it within [`JOINS`], or the queue drains): it may wait in the
    /// queue.
    Queue,
    /// Refused.
    Refuse,
}

/// A burst is admitted up to this many times the limit in flight.
const BURST_FACTOR: usize = 4;

/// The most calls in flight a burst admits under `limit`, within `bounds`.
fn burst_cap(limit: usize, bounds: Option<(usize, usize)>) -> usize {
    let cap = limit.saturating_mul(BURST_FACTOR);
    match bounds {
        Some((_, max)) => cap.min(max).max(limit),
        None => cap,
    }
}

/// A run of requests over the limit (admitted in a burst or refused, none
/// more than [`EARLY`] after the one before), and the calls that ended
/// meanwhile: to judge whether the calls at the limit keep their places
/// (see `Limiter::over_limit`).
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    /// When the run began (ns since `epoch`, plus one; 0: no run).
    start: u64,
    /// Its last request over the limit (the same clock).
    last: u64,
    /// How long the run must last before it is judged next (ns).
    next: u64,
    /// The algorithm let a window closed for it change nothing: no more
    /// in this run.
    declined: bool,
    /// Requests over the limit so far.
    over: u64,
    /// The calls that ended since it began (see [`Ended`]).
    ended: Ended,
    /// The window generation (`win_gen`) whose counters were last read,
    /// and what they were then.
    generation: u64,
    seen: Ended,
    /// The expected service time (ns; 0: unknown).
    expected: u64,
}

/// Ended calls: every one's time in flight (ns), and the answers' (failed
/// ones included; not the drops, nor the answers that said the handler ran
/// out of time) time and count (see `Limiter::window_ended`).
#[derive(Debug, Default, Clone, Copy)]
struct Ended {
    time: u64,
    answered_time: u64,
    answered: u64,
}

impl Ended {
    /// These counts with those of `now` since `seen` added (all of one
    /// window, each only growing).
    fn plus_since(self, now: Ended, seen: Ended) -> Ended {
        let add = |a: u64, n: u64, s: u64| a.saturating_add(n.saturating_sub(s));
        Ended {
            time: add(self.time, now.time, seen.time),
            answered_time: add(self.answered_time, now.answered_time, seen.answered_time),
            answered: add(self.answered, now.answered, seen.answered),
        }
    }
}

pub(crate) struct Limiter {
    jitter: crate::clock::Jitter,
    inflight: AtomicUsize,
    by_class: [AtomicUsize; 4],
    limit: AtomicUsize,
    // Current window, in atomics.
    win_start_ns: AtomicU64,
    win_sum_ns: AtomicU64,
    /// The window's fastest sample (`u64::MAX`: none yet).
    win_min_ns: AtomicU64,
    win_count: AtomicU64,
    win_drops: AtomicU64,
    /// Answers that said the handler ran out of time (`TimedOut`): their
    /// count and latencies, apart from the samples (the algorithm judges
    /// them: see `WindowSample::timed_out`).
    win_timed_out: AtomicU64,
    win_timed_out_sum_ns: AtomicU64,
    /// The time the window's drops were held (ns; for `window_ended`).
    win_drop_sum_ns: AtomicU64,
    /// Bumped before a window's counters are reset and again after (odd
    /// meanwhile): a reader of several counters knows they are of one
    /// window (see `over_limit`).
    win_gen: AtomicU64,
    /// Calls that ended in a failure or a "busy" answer (no samples):
    /// their count and time in flight, for `window_ended` only.
    win_failed: AtomicU64,
    win_failed_sum_ns: AtomicU64,
    /// Requests the limit refused in the window (refusal path only).
    win_refused: AtomicU64,
    /// A burst's latencies in the current window: not the algorithm's
    /// samples, but part of the service time a request should expect.
    win_burst_sum_ns: AtomicU64,
    win_burst_count: AtomicU64,
    win_max_inflight: AtomicUsize,
    /// The most calls in flight in the current window when above the limit
    /// (a burst's, a class's share): what `LimitSampled` reports with the
    /// limit's own peak, not the algorithm's load. 0 when never above.
    win_over_peak: AtomicUsize,
    /// When a window that could not close was last reported (see
    /// `report_stalled`), in nanoseconds since `epoch`.
    stalled_report_ns: AtomicU64,
    /// Average RTT of the last closed window, in nanoseconds (0: unknown).
    expected_rtt_ns: AtomicU64,
    /// When `expected_rtt_ns` was measured (ns since `epoch`).
    expected_at_ns: AtomicU64,
    /// How many times nothing was in flight any more (the work of the
    /// windows before has left).
    idle: AtomicU64,
    /// `idle` while the window of `expected_rtt_ns` was measured.
    expected_idle: AtomicU64,
    /// The shortest a request of that window could expect: its fastest
    /// answer (what the doomed check refuses by: one limit over cheap and
    /// costly routes must not refuse a cheap one by the costly ones'
    /// latency).
    doomed_ns: AtomicU64,
    /// When the last burst began, or was renewed (ns since `epoch`, plus
    /// one; 0: never).
    burst_start_ns: AtomicU64,
    /// When the limit last refused a request that a burst may admit (ns
    /// since `epoch`, plus one; 0: never).
    refused_ns: AtomicU64,
    /// The most calls in flight a burst admits: [`BURST_FACTOR`] times the
    /// limit, no more than the algorithm's upper bound.
    burst_cap: AtomicUsize,
    /// The limit a lower maximum cut at a reload (0: none), given back
    /// when the maximum is raised again if the limit stayed at that
    /// maximum meanwhile (it learned nothing lower). Changed only under
    /// the algorithm's lock.
    cut_by_bounds: AtomicUsize,
    epoch: Instant,
    window_ns: u64,
    /// The current window's length (the algorithm may shorten one).
    cur_window_ns: AtomicU64,
    min_window_samples: u64,
    /// The shortest latency taken as a sample, in nanoseconds.
    min_rtt_ns: u64,
    shares: [f64; 4],
    reject_doomed: bool,
    waits_apart: bool,
    /// A request the limit refuses waits in the queue for a place instead,
    /// to its deadline (see `try_queue` and `grant`); a reload may change
    /// it (read on the paths of requests over the limit and of calls that
    /// end while someone waits only).
    wait_at_limit: AtomicBool,
    /// [`BURST`], or as configured (ns; 0: no bursts).
    burst_ns: u64,
    /// The queue for a herd's bound (0: no queue).
    max_queue: usize,
    algorithm: Mutex<Box<dyn LimitAlgorithm>>,
    /// Whether the algorithm judges windows closed early for calls that
    /// keep their places ([`LimitAlgorithm::judges_kept`]).
    judges_kept: bool,
    /// The start: every window closed so far doubled the limit (see
    /// `over_limit`). Only for an algorithm that
    /// [judges](LimitAlgorithm::judges_start) such windows; changed only
    /// under the algorithm's lock.
    starting: AtomicBool,
    /// The run of requests over the limit (that path only, never waited
    /// for): see `over_limit`.
    over_run: Mutex<Run>,
    /// Requests waiting in `queue` (written under its lock, read without:
    /// a call that ends looks at it, and takes the lock only if someone
    /// waits).
    waiting: AtomicUsize,
    /// The queue for a herd, or of a limit that waits at the limit (see
    /// `try_queue`); taken only by requests over the limit and by calls
    /// that end while someone waits (while a queue stands, in a limit that
    /// waits at the limit, each call's end and each request over it).
    queue: Mutex<Queue>,
    /// A waiter ran out of patience (see `out_of_patience`): nothing waits
    /// until the calls in flight fall below the limit and reach it again
    /// (see `reached`).
    stalled: AtomicBool,
    /// Until when requests over the limit may join the queue for a herd
    /// (ns since `epoch`, plus one: see [`JOINS`]).
    joins_until_ns: AtomicU64,
    /// The last refusal at the limit, or of a waiter (the same clock; 0:
    /// none). Unlike `refused_ns`, the calls in flight falling to half the
    /// limit do not clear it.
    last_refusal_ns: AtomicU64,
    /// The last burst began after a window without such a refusal: its
    /// queue for a herd may begin (see `try_queue`).
    burst_may_queue: AtomicBool,
    pub(crate) name: Name,
    pub(crate) observer: Observer,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("limit", &self.limit())
            .field("inflight", &self.inflight())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    pub(crate) fn new(
        algorithm: Box<dyn LimitAlgorithm>,
        config: Config,
        name: Name,
        observer: Observer,
    ) -> Self {
        let limit = algorithm.limit().max(1);
        Limiter {
            inflight: AtomicUsize::new(0),
            by_class: Default::default(),
            limit: AtomicUsize::new(limit),
            win_start_ns: AtomicU64::new(0),
            win_sum_ns: AtomicU64::new(0),
            win_min_ns: AtomicU64::new(u64::MAX),
            win_count: AtomicU64::new(0),
            win_drops: AtomicU64::new(0),
            win_timed_out: AtomicU64::new(0),
            win_timed_out_sum_ns: AtomicU64::new(0),
            win_drop_sum_ns: AtomicU64::new(0),
            win_gen: AtomicU64::new(0),
            win_failed: AtomicU64::new(0),
            win_failed_sum_ns: AtomicU64::new(0),
            win_refused: AtomicU64::new(0),
            win_burst_sum_ns: AtomicU64::new(0),
            win_burst_count: AtomicU64::new(0),
            win_max_inflight: AtomicUsize::new(0),
            win_over_peak: AtomicUsize::new(0),
            stalled_report_ns: AtomicU64::new(0),
            expected_rtt_ns: AtomicU64::new(0),
            expected_at_ns: AtomicU64::new(0),
            idle: AtomicU64::new(0),
            expected_idle: AtomicU64::new(0),
            doomed_ns: AtomicU64::new(0),
            burst_start_ns: AtomicU64::new(0),
            refused_ns: AtomicU64::new(0),
            burst_cap: AtomicUsize::new(burst_cap(limit, algorithm.bounds())),
            cut_by_bounds: AtomicUsize::new(0),
            epoch: Instant::now(),
            window_ns: crate::clock::nanos(config.window),
            cur_window_ns: AtomicU64::new(crate::clock::nanos(config.window)),
            min_window_samples: config.min_window_samples,
            min_rtt_ns: crate::clock::nanos(config.min_rtt),
            shares: config.shares,
            reject_doomed: config.reject_doomed,
            waits_apart: config.waits_apart,
            wait_at_limit: AtomicBool::new(config.wait_at_limit),
            burst_ns: crate::clock::nanos(config.burst),
            max_queue: config.max_queue,
            judges_kept: algorithm.judges_kept(),
            starting: AtomicBool::new(algorithm.judges_start()),
            algorithm: Mutex::new(algorithm),
            over_run: Mutex::new(Run::default()),
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(Queue::new(config.max_queue)),
            stalled: AtomicBool::new(false),
            joins_until_ns: AtomicU64::new(0),
            last_refusal_ns: AtomicU64::new(0),
            burst_may_queue: AtomicBool::new(true),
            jitter: crate::clock::Jitter::new(name.as_str()),
            name,
            observer,
        }
    }

    #[inline]
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn inflight_of(&self, class: Criticality) -> usize {
        self.by_class[class.index()].load(Ordering::Relaxed)
    }

    /// The service time an admitted request is expected to take: the average
    /// RTT of the last closed window (`None` before the first one).
    pub(crate) fn expected_rtt(&self) -> Option<Duration> {
        match self.expected_rtt_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Whether current evidence says a request with `remaining` time cannot
    /// finish: the server is busy (at least half its limit in flight, so a
    /// request waits behind others), the expected service time is fresh (its
    /// window closed less than two windows ago) and longer than `remaining`
    /// — the window's fastest answer (below its average: a cheap route's
    /// request under one limit with a costly route is judged by what the
    /// cheap one took).
    ///
    /// Without load, or on an estimate that nothing has refreshed (refused
    /// requests add no samples: an idle server would otherwise go on
    /// refusing on the latency of a burst long gone), the request is
    /// admitted.
    #[inline]
    fn doomed_by_evidence(&self, remaining: Duration, now: Instant) -> bool {
        let expected = self.doomed_ns.load(Ordering::Relaxed);
        if expected == 0 || remaining.as_nanos() >= u128::from(expected) {
            return false;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        if self.inflight.load(Ordering::Relaxed).saturating_mul(2) < limit {
            return false;
        }
        // The server went idle since: the work the estimate describes has
        // left, and what is in flight now may be other work.
        if self.idle.load(Ordering::Relaxed) != self.expected_idle.load(Ordering::Relaxed) {
            return false;
        }
        let now_ns = crate::clock::nanos_between(self.epoch, now);
        let at = self.expected_at_ns.load(Ordering::Relaxed);
        now_ns.saturating_sub(at) < self.window_ns.saturating_mul(2)
    }

    /// At the limit: whether class `idx`, with `busy` calls in flight before
    /// this one, is still under its guaranteed share, `ceil(share × limit)`.
    #[cold]
    fn under_share(&self, idx: usize, limit: usize, busy: usize) -> bool {
        busy < (self.shares[idx] * limit as f64).ceil() as usize
    }

    /// At the limit, past the class's share: whether this request is part
    /// of a burst the limit admits (`Critical` and `CriticalPlus` only, up
    /// to the burst's cap); a refusal is noted, whatever the class.
    ///
    /// A burst begins when the limit is reached after a quiet spell (it
    /// refused nothing in the last `burst`, and the calls in flight fell
    /// back below the limit since the last burst, or it began two `burst`
    /// ago or more), and lasts `burst`; the calls in flight falling back
    /// below the limit and reaching it again renew it. Arrivals at
    /// random come in bursts that a queue absorbs within a few service
    /// times, and fall back between them. A queue that stands at the limit
    /// for all of `burst` is held at it: from then on the limit refuses,
    /// and a new burst waits until it has refused nothing for `burst`, or
    /// until the calls in flight have fallen to half the limit (the queue
    /// that stood there drained: see `try_acquire`).
    /// Past the burst's cap while a burst goes on (or would begin), or over
    /// the limit after a burst that may queue within [`JOINS`] of its
    /// start, the request may wait in the queue for a herd instead of
    /// being refused ([`Burst::Queue`]: see `try_queue`; it counts as
    /// refused here).
    #[cold]
    #[inline(never)]
    fn bursting(&self, class: Criticality, before: usize, now: Instant) -> Burst {
        if self.burst_ns == 0 {
            return Burst::Refuse;
        }
        let now_ns = self.stamp(now);
        let mut open = false;
        if class.index() <= Criticality::Critical.index() {
            let start = self.burst_start_ns.load(Ordering::Relaxed);
            let age = now_ns.saturating_sub(start);
            let under_cap = before < self.burst_cap.load(Ordering::Relaxed);
            if start != 0 && age < self.burst_ns {
                if under_cap {
                    return Burst::Admit;
                }
                open = true;
            } else if now_ns < self.joins_until_ns.load(Ordering::Relaxed) {
                // The queue that a burst began still takes a herd's late
                // arrivals.
                open = true;
            } else {
                let refused = self.refused_ns.load(Ordering::Relaxed);
                let quiet = refused == 0 || now_ns.saturating_sub(refused) >= self.burst_ns;
                let rested = start == 0 || age >= self.burst_ns.saturating_mul(2);
                // (Past the cap, a burst begins only for the queue.)
                if quiet && rested && (under_cap || self.max_queue != 0) {
                    // (Whoever starts it, a burst has begun.)
                    let began = self
                        .burst_start_ns
                        .compare_exchange(start, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok();
                    if began && self.max_queue != 0 {
                        // Its queue for a herd may begin if nothing was
                        // refused for a window before it (a server held
                        // at its limit refuses all along; a herd comes
                        // after a quiet spell).
                        let last = self.last_refusal_ns.load(Ordering::Relaxed);
                        self.burst_may_queue.store(
                            last == 0 || now_ns.saturating_sub(last) >= self.window_ns,
                            Ordering::Relaxed,
                        );
                    }
                    if under_cap {
                        return Burst::Admit;
                    }
                    open = true;
                } else if start != 0
                    && age < crate::clock::nanos(JOINS)
                    && self.max_queue != 0
                    && self.burst_may_queue.load(Ordering::Relaxed)
                {
                    // A herd longer than its burst: the burst, begun after
                    // a quiet spell, ended within its cap, and requests
                    // still come over the limit within `JOINS` of its
                    // start. Its queue takes them, as if the burst had
                    // passed its cap (1 s bursts at three times a
                    // server's capacity, callers with 1 s, over real
                    // HTTP: refused at once, 60.2 to 61.3 % served, plain
                    // axum 64.8 to 66.7 %).
                    open = true;
                } else if self.waiting.load(Ordering::SeqCst) != 0 && !self.waits_at_limit() {
                    // A herd's queue drains: a request that comes after it
                    // stopped taking arrivals joins it if requests come
                    // slower than places free (see `try_queue`).
                    open = true;
                }
            }
        }
        self.refused_ns.store(now_ns, Ordering::Relaxed);
        if open { Burst::Queue } else { Burst::Refuse }
    }

    /// `now` as a burst's stamps keep it: ns since `epoch`, plus one (0
    /// stands for never).
    fn stamp(&self, now: Instant) -> u64 {
        crate::clock::nanos_between(self.epoch, now).saturating_add(1)
    }

    /// The calls in flight reached the limit from below at `now`: what was
    /// above it has drained. A burst going on is renewed; after one that
    /// ended without a refusal since, the next may begin at once.
    #[cold]
    #[inline(never)]
    fn reached(&self, now: Instant) {
        if self.stalled.load(Ordering::Relaxed) {
            // The calls at the limit moved.
            self.stalled.store(false, Ordering::Relaxed);
        }
        let start = self.burst_start_ns.load(Ordering::Relaxed);
        if start == 0 {
            return;
        }
        let now_ns = self.stamp(now);
        if start > now_ns {
            // Kept going at the start until its next judgement.
            return;
        }
        let next = if now_ns.saturating_sub(start) < self.burst_ns {
            now_ns
        } else {
            let refused = self.refused_ns.load(Ordering::Relaxed);
            if refused != 0 && now_ns.saturating_sub(refused) < self.burst_ns {
                // Held at the limit: no burst.
                return;
            }
            0
        };
        let _ =
            self.burst_start_ns
                .compare_exchange(start, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The current window's ended calls so far: the time in flight of
    /// every one, and of the answers (a burst's and failed ones included;
    /// not the drops, nor the answers that said the handler ran out of
    /// time), summed (ns), and how many answers.
    fn window_ended(&self) -> Ended {
        let answered_time = self
            .win_sum_ns
            .load(Ordering::Relaxed)
            .saturating_add(self.win_burst_sum_ns.load(Ordering::Relaxed))
            .saturating_add(self.win_failed_sum_ns.load(Ordering::Relaxed));
        let answered = self
            .win_count
            .load(Ordering::Relaxed)
            .saturating_add(self.win_burst_count.load(Ordering::Relaxed))
            .saturating_add(self.win_failed.load(Ordering::Relaxed));
        let time = answered_time
            .saturating_add(self.win_timed_out_sum_ns.load(Ordering::Relaxed))
            .saturating_add(self.win_drop_sum_ns.load(Ordering::Relaxed));
        Ended {
            time,
            answered_time,
            answered,
        }
    }

    /// A request over `limit` (admitted in a burst, or refused): whether
    /// the calls at the limit keep their places (see
    /// [`WindowSample::kept`]), judged over a run of such requests, none
    /// more than [`EARLY`] (or four expected service times) after the one
    /// before, once it has lasted that long, and after each time it was
    /// found so, once it has lasted twice as long as then (the calls at
    /// the limit kept their places twice as long: the limit doubles each
    /// time). They do when, over the run's whole span, the requests over
    /// the limit are at least the window's minimum of samples and as many
    /// as the answers; those answers are at least one and took no longer
    /// than twice the service time expected before the run on average (a
    /// slowdown of everything, a brownout, is no dependency hanging behind
    /// one route); and every call that ended, answered or not (a queue's
    /// waiters that timed out included), accounts for under a quarter of
    /// the limit in flight (their time in flight, summed, over the span:
    /// Little's law). Then the window closes now instead of after its
    /// configured length (1 s by default), during which the limit would
    /// refuse the other routes, and the algorithm judges it; one it lets
    /// change nothing ends the early closes of the run. Only for an
    /// algorithm that [judges](LimitAlgorithm::judges_kept) such windows.
    /// At the start (every window so far doubled the limit, for an
    /// algorithm that [judges it](LimitAlgorithm::judges_start)), the
    /// window closes too, kept or not, once the run and the window have
    /// lasted four expected service times (50 ms at least) and the window
    /// holds the minimum of RTT samples, and again each time it lasts as
    /// long.
    /// Never waits for the run: a request that finds it taken by another leaves
    /// it.
    #[cold]
    #[inline(never)]
    fn over_limit(&self, limit: usize, now: Instant) {
        if !self.judges_kept {
            return;
        }
        let mut run = match self.over_run.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        // The counters of one window: none reset meanwhile.
        let generation = self.win_gen.load(Ordering::SeqCst);
        let window = self.win_start_ns.load(Ordering::Relaxed);
        let ended = self.window_ended();
        if generation % 2 == 1 || self.win_gen.load(Ordering::SeqCst) != generation {
            return;
        }
        let at = self.stamp(now);
        let early = early_ns;
        if run.start == 0 || at.saturating_sub(run.last) > early(run.expected) {
            // A run begins.
            let expected = self.expected_rtt_ns.load(Ordering::Relaxed);
            *run = Run {
                start: at,
                last: at,
                next: early(expected),
                declined: false,
                over: 1,
                ended: Ended::default(),
                generation,
                seen: ended,
                expected,
            };
            return;
        }
        if run.generation != generation {
            // A new window: its counters began at zero.
            run.generation = generation;
            run.seen = Ended::default();
        }
        run.ended = run.ended.plus_since(ended, run.seen);
        run.seen = ended;
        run.last = at;
        run.over = run.over.saturating_add(1);
        if run.expected == 0 {
            // (A run that began before the first window closed.)
            run.expected = self.expected_rtt_ns.load(Ordering::Relaxed);
        }
        let span = at.saturating_sub(run.start);
        if run.declined || span < run.next {
            return;
        }
        let kept = run.over >= self.min_window_samples
            && run.ended.answered > 0
            && run.over >= run.ended.answered
            && run.expected > 0
            && u128::from(run.ended.answered_time)
                <= u128::from(run.ended.answered) * 2 * u128::from(run.expected)
            // (`time / span < limit / 4`, in integers.)
            && u128::from(run.ended.time) * 4 < u128::from(span) * limit as u128;
        // At the start (every window so far doubled the limit),
        // the window closes as well, kept or not, and the algorithm judges
        // it as any other: a server started under a load above its initial
        // limit, its calls answered without a queue, doubles the limit
        // within a few service times instead of refusing for a window (1 s
        // by default).
        // (Only once the window itself has lasted as long, its calls
        // admitted at the limit being judged, and holds samples enough to
        // judge by: at the start a burst's calls count as samples, see
        // `close_window`.)
        let now_ns = crate::clock::nanos_between(self.epoch, now);
        let starting = !kept
            && self.starting.load(Ordering::Relaxed)
            && now_ns.saturating_sub(window) >= early(self.expected_rtt_ns.load(Ordering::Relaxed))
            && self
                .win_count
                .load(Ordering::Relaxed)
                .saturating_add(self.win_burst_count.load(Ordering::Relaxed))
                >= self.min_window_samples;
        if !kept && !starting {
            run.next = span.saturating_add(early(run.expected));
            return;
        }
        let load = usize::try_from(run.ended.time / span.max(1)).unwrap_or(usize::MAX);
        let before = self.limit.load(Ordering::Relaxed);
        // (The run's lock is held: the algorithm's is never taken first.)
        self.close_window(
            window,
            now_ns,
            self.idle.load(Ordering::Relaxed),
            if kept {
                limit.saturating_sub(load).max(1)
            } else {
                0
            },
            starting,
        );
        if self.win_start_ns.load(Ordering::Relaxed) == window {
            // Not closed (another completion is closing it, or too few
            // samples yet): judged again a little later.
            run.next = span.saturating_add(early(run.expected));
        } else if starting {
            // Judged again once the calls at the new limit have had time
            // to show a queue: four service times, as now expected (the
            // burst goes on until then: see `close_window`).
            run.next = span.saturating_add(early(self.expected_rtt_ns.load(Ordering::Relaxed)));
        } else if self.limit.load(Ordering::Relaxed) == before {
            run.declined = true;
        } else {
            run.next = span.saturating_mul(2);
        }
    }

    /// Releases a slot; returns the idle count before this release.
    #[inline]
    fn release(&self, class: Criticality) -> u64 {
        let idle = self.idle.load(Ordering::Relaxed);
        self.by_class[class.index()].fetch_sub(1, Ordering::AcqRel);
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Nothing in flight any more.
            self.idle.fetch_add(1, Ordering::Relaxed);
        }
        if self.waiting.load(Ordering::SeqCst) != 0 {
            self.place_freed(true);
        }
        idle
    }

    /// A call admitted in a burst finished with an answer.
    #[cold]
    fn record_burst(&self, ns: u64, now: Instant, idle: u64) {
        self.win_burst_sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.win_burst_count.fetch_add(1, Ordering::Relaxed);
        self.maybe_close_window(now, idle);
    }

    // Always: on the path of every call (with the timed-out answers' arm,
    // the compiler took it out of line: 7 instructions more a call through
    // the HTTP server preset).
    #[inline(always)]
    fn record(&self, completion: Completion, ns: u64, now: Instant, idle: u64) {
        match completion {
            // An answer that failed or said "busy" (a protocol's 5xx, 429,
            // or error status) is no latency sample: a dependency that
            // fails or refuses at once, its answers passed on, would make
            // a queue of slow answers look like one of fast ones. Nor is
            // it a drop: a dependency's refusal is no queue of this
            // server's. (An answer that the handler ran out of time is
            // counted apart: `TimedOut`.)
            Completion::Ignore
            | Completion::Sample(Outcome::Failure | Outcome::Refused | Outcome::Overloaded) => {
                // (Counted only for the time the call was in flight: see
                // `window_ended`.)
                self.win_failed_sum_ns.fetch_add(ns, Ordering::Relaxed);
                self.win_failed.fetch_add(1, Ordering::Relaxed);
                self.report_stalled(crate::clock::nanos_between(self.epoch, now));
                return;
            }
            Completion::Drop => {
                self.win_drops.fetch_add(1, Ordering::Relaxed);
                self.win_drop_sum_ns.fetch_add(ns, Ordering::Relaxed);
            }
            Completion::TimedOut => {
                if ns >= self.min_rtt_ns {
                    self.win_timed_out_sum_ns.fetch_add(ns, Ordering::Relaxed);
                    self.win_timed_out.fetch_add(1, Ordering::Relaxed);
                }
            }
            Completion::Sample(_) => {
                if ns < self.min_rtt_ns {
                    return;
                }
                self.win_sum_ns.fetch_add(ns, Ordering::Relaxed);
                self.win_count.fetch_add(1, Ordering::Relaxed);
                // Written only by a call faster than any before it in the
                // window: a load on most calls.
                if ns < self.win_min_ns.load(Ordering::Relaxed) {
                    self.win_min_ns.fetch_min(ns, Ordering::Relaxed);
                }
            }
        }
        self.maybe_close_window(now, idle);
    }

    /// A window that cannot close (every call ending failed, or too few to
    /// judge: a dependency down behind a breaker that lets only probes
    /// through) keeps the limit where it is; what the calls in flight are
    /// then is reported as a `LimitSampled` with no latency, once per
    /// window length after two have passed, and the window that closes at
    /// last reports its calls in flight as it closes, not its peak (which
    /// the algorithm still judges by). Else the gauge kept the last closed
    /// window's peak (161 calls in flight, for the 12 s of an outage, in an
    /// outside trial, while only probes went out), and the window that
    /// spanned the outage reported it again as it closed.
    /// `now_ns`: since `epoch`. Nothing without an observer.
    #[cold]
    #[inline(never)]
    fn report_stalled(&self, now_ns: u64) {
        if !self.observer.is_enabled() {
            return;
        }
        let window = self.cur_window_ns.load(Ordering::Relaxed);
        let start = self.win_start_ns.load(Ordering::Relaxed);
        let last = self.stalled_report_ns.load(Ordering::Relaxed);
        if now_ns.saturating_sub(start) < window.saturating_mul(2)
            || now_ns.saturating_sub(last.max(start)) < window
            || self
                .stalled_report_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.observer.emit(
            LayerKind::AdaptiveLimit,
            self.name.as_str(),
            EventKind::LimitSampled {
                limit: self.limit.load(Ordering::Relaxed),
                peak_inflight: self.inflight.load(Ordering::Relaxed),
                rtt: Duration::ZERO,
            },
        );
    }

    /// `idle`: the idle count while the closing call was in flight.
    #[inline]
    fn maybe_close_window(&self, now: Instant, idle: u64) {
        let now_ns = crate::clock::nanos_between(self.epoch, now);
        let start = self.win_start_ns.load(Ordering::Relaxed);
        if now_ns.saturating_sub(start) < self.cur_window_ns.load(Ordering::Relaxed) {
            return;
        }
        self.close_window(start, now_ns, idle, 0, false);
    }

    /// Closes the window that began at `start` (ns since `epoch`), if it
    /// holds enough samples and no other completion is closing it: once
    /// per window, out of line. `at_start`: closed early for the start
    /// (see `over_limit`), which another close may have ended meanwhile.
    #[inline(never)]
    fn close_window(&self, start: u64, now_ns: u64, idle: u64, kept: usize, at_start: bool) {
        let count = self.win_count.load(Ordering::Relaxed);
        let drops = self.win_drops.load(Ordering::Relaxed);
        let bursts = self.win_burst_count.load(Ordering::Relaxed);
        let timed_out = self.win_timed_out.load(Ordering::Relaxed);
        if count
            .saturating_add(drops)
            .saturating_add(bursts)
            .saturating_add(timed_out)
            // (When calls at the limit kept their places, every request may
            // have been refused: each refusal is evidence too.)
            .saturating_add(if kept > 0 {
                self.win_refused.load(Ordering::Relaxed)
            } else {
                0
            })
            < self.min_window_samples
        {
            self.report_stalled(now_ns);
            return;
        }
        let mut algorithm = match self.algorithm.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // Another completion is closing this window.
            Err(TryLockError::WouldBlock) => return,
        };
        if self.win_start_ns.load(Ordering::Relaxed) != start
            || (at_start && !self.starting.load(Ordering::Relaxed))
        {
            return;
        }
        self.win_gen.fetch_add(1, Ordering::SeqCst);
        let sum = self.win_sum_ns.swap(0, Ordering::Relaxed);
        let fastest = self.win_min_ns.swap(u64::MAX, Ordering::Relaxed);
        let count = self.win_count.swap(0, Ordering::Relaxed);
        let drops = self.win_drops.swap(0, Ordering::Relaxed);
        let timed_out = self.win_timed_out.swap(0, Ordering::Relaxed);
        let timed_out_sum = self.win_timed_out_sum_ns.swap(0, Ordering::Relaxed);
        let refused = self.win_refused.swap(0, Ordering::Relaxed);
        let burst_sum = self.win_burst_sum_ns.swap(0, Ordering::Relaxed);
        let bursts = self.win_burst_count.swap(0, Ordering::Relaxed);
        self.win_failed.store(0, Ordering::Relaxed);
        self.win_failed_sum_ns.store(0, Ordering::Relaxed);
        self.win_drop_sum_ns.store(0, Ordering::Relaxed);
        // (The counters are the next window's from here.)
        self.win_start_ns.store(now_ns, Ordering::Relaxed);
        self.win_gen.fetch_add(1, Ordering::SeqCst);
        // The calls still in flight belong to the next window too (within
        // the limit: a burst's are not the limit's load).
        let limit_now = self.limit.load(Ordering::Relaxed);
        let inflight_now = self.inflight.load(Ordering::Relaxed);
        let max_inflight = self
            .win_max_inflight
            .swap(inflight_now.min(limit_now), Ordering::Relaxed);
        let over_peak = self.win_over_peak.swap(
            if inflight_now > limit_now {
                inflight_now
            } else {
                0
            },
            Ordering::Relaxed,
        );
        // What a dashboard draws against the limit: every call in flight,
        // a burst's included; after a window reported as stalled, the calls
        // in flight now (its peak may be from before, see `report_stalled`).
        let peak_inflight = if self.stalled_report_ns.load(Ordering::Relaxed) > start {
            inflight_now
        } else {
            max_inflight.max(over_peak)
        };
        // What a request should expect: every answer's latency, a burst's
        // included (the queue it made is there for the requests after it).
        let expected_ns = sum
            .saturating_add(burst_sum)
            .checked_div(count.saturating_add(bursts));
        // At the start, a burst's calls are samples too, and its calls in
        // flight the load: it admits what the next doubling would (twice
        // the limit), and is judged with it; calls at the limit may be
        // none of those that ended (a burst's keep the calls in flight
        // above it).
        let (sum, count, busy) = if at_start {
            (
                sum.saturating_add(burst_sum),
                count.saturating_add(bursts),
                max_inflight.max(over_peak.min(limit_now.saturating_mul(BURST_FACTOR))),
            )
        } else {
            (sum, count, max_inflight)
        };
        let avg_ns = sum.checked_div(count);
        let rtt = Duration::from_nanos(avg_ns.unwrap_or(0));
        let mut sample = WindowSample::new(rtt, busy, drops)
            .with_samples(count)
            .with_refused(refused, Duration::from_nanos(now_ns.saturating_sub(start)))
            .with_kept(kept);
        if fastest != u64::MAX {
            sample = sample.with_fastest(Duration::from_nanos(fastest));
        }
        if let Some(avg) = timed_out_sum.checked_div(timed_out) {
            sample = sample.with_timed_out(timed_out, Duration::from_nanos(avg));
        }
        let new = algorithm.update(&sample).max(1);
        if algorithm.bounds().is_some_and(|(_, max)| new < max) {
            // Learned lower than the maximum that cut it: what it had
            // learned before that is not given back.
            self.cut_by_bounds.store(0, Ordering::Relaxed);
        }
        let next = algorithm.next_window(Duration::from_nanos(self.window_ns));
        let next = crate::clock::nanos(next).clamp(
            1_000_000.min(self.window_ns),
            self.window_ns.saturating_mul(4),
        );
        self.cur_window_ns.store(next, Ordering::Relaxed);
        // Published under the algorithm's lock, as a reload's bounds are:
        // a reload between the two cannot be undone by this window.
        let old = self.limit.swap(new, Ordering::Relaxed);
        // (A limit held at its maximum does not double: the start ends.)
        if new < old.saturating_mul(2) {
            // The start is over (see `over_limit`).
            self.starting.store(false, Ordering::Relaxed);
        }
        self.burst_cap
            .store(burst_cap(new, algorithm.bounds()), Ordering::Relaxed);
        drop(algorithm);
        if new > old && self.waiting.load(Ordering::SeqCst) != 0 {
            // More places: the waiters take them.
            self.place_freed(false);
        }
        if let Some(expected_ns) = expected_ns {
            self.expected_rtt_ns
                .store(expected_ns.max(1), Ordering::Relaxed);
            self.doomed_ns
                .store(expected_ns.min(fastest).max(1), Ordering::Relaxed);
            // Stamped no later than one window before its close: a window
            // that an idle spell kept open until a late completion holds
            // old samples, and must not pass for fresh for long.
            let at = start.max(now_ns.saturating_sub(self.window_ns));
            self.expected_at_ns.store(at, Ordering::Relaxed);
            self.expected_idle.store(idle, Ordering::Relaxed);
        }
        if self.burst_ns > 0 && self.starting.load(Ordering::Relaxed) {
            // At the start, the limit doubled: a burst goes on until a
            // burst's length after the next window can be judged (four
            // service times, 50 ms at least: see `over_limit`); it would
            // end 100 ms after it began, often before the next doubling,
            // and refuse what that admits.
            let next = early_ns(self.expected_rtt_ns.load(Ordering::Relaxed));
            let stamp = now_ns.saturating_add(1).saturating_add(next);
            self.burst_start_ns.store(stamp, Ordering::Relaxed);
        }
        if old != new {
            self.observer.emit(
                LayerKind::AdaptiveLimit,
                self.name.as_str(),
                EventKind::LimitChanged { from: old, to: new },
            );
        }
        self.observer.emit(
            LayerKind::AdaptiveLimit,
            self.name.as_str(),
            EventKind::LimitSampled {
                limit: new,
                peak_inflight,
                rtt,
            },
        );
    }

    /// Whether [`set_bounds`](Self::set_bounds) would take these bounds
    /// (an algorithm that gives its bounds: checked against them; one that
    /// does not is checked as it takes them).
    /// `inflight` calls in flight under `limit`: the window's busiest
    /// (usually a plain read: it only moves up).
    #[inline]
    fn note_inflight(&self, inflight: usize, limit: usize) {
        if self.win_max_inflight.load(Ordering::Relaxed) < inflight {
            self.win_max_inflight
                .fetch_max(inflight.min(limit), Ordering::Relaxed);
        }
    }

    stacks_only! {
        /// The algorithm's bounds, `(min, max)`, if it has them.
        pub(crate) fn bounds(&self) -> Option<(usize, usize)> {
            self.algorithm
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .bounds()
        }
    }

    #[cfg(feature = "serde")]
    pub(crate) fn check_bounds(
        &self,
        min: Option<usize>,
        max: Option<usize>,
    ) -> Result<(), crate::error::ConfigError> {
        let algorithm = self
            .algorithm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match algorithm.bounds() {
            Some(now) => super::aimd::new_bounds(now, min, max).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Changes the algorithm's bounds (a reload: takes the algorithm's
    /// lock, which the request path never waits for), clamps the limit into
    /// them at once, and reports it.
    pub(crate) fn set_bounds(
        &self,
        min: Option<usize>,
        max: Option<usize>,
    ) -> Result<(), crate::error::ConfigError> {
        let mut algorithm = self
            .algorithm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = algorithm.bounds();
        let learned = algorithm.limit();
        let mut new = algorithm.set_bounds(min, max)?.max(1);
        // What the algorithm learned before a lower maximum cut it comes
        // back when the maximum rises again, if the limit stayed at that
        // maximum meanwhile (nothing lower was learned since): it is
        // raised to it by a floor set for a moment.
        // (A window that learned lower since the cut forgot it.)
        let cut = self.cut_by_bounds.swap(0, Ordering::Relaxed);
        let pinned = before.is_some_and(|(_, old_max)| learned >= old_max);
        let wanted = if pinned { learned.max(cut) } else { learned };
        if let Some((new_min, new_max)) = algorithm.bounds() {
            let target = wanted.min(new_max);
            if target > new && algorithm.set_bounds(Some(target), Some(new_max)).is_ok() {
                new = algorithm.set_bounds(Some(new_min), Some(new_max))?.max(1);
            }
            if wanted > new && new >= new_max {
                self.cut_by_bounds.store(wanted, Ordering::Relaxed);
            }
        }
        self.burst_cap
            .store(burst_cap(new, algorithm.bounds()), Ordering::Relaxed);
        let changed = before.is_none() || algorithm.bounds() != before;
        let old = self.limit.swap(new, Ordering::Relaxed);
        drop(algorithm);
        if new > old && self.waiting.load(Ordering::SeqCst) != 0 {
            self.place_freed(false);
        }
        if changed {
            self.observer.emit(
                LayerKind::AdaptiveLimit,
                self.name.as_str(),
                EventKind::Reconfigured,
            );
        }
        if old != new {
            self.observer.emit(
                LayerKind::AdaptiveLimit,
                self.name.as_str(),
                EventKind::LimitChanged { from: old, to: new },
            );
        }
        Ok(())
    }

    pub(crate) fn emit_rejected(&self, refusal: Refusal, retry_after: Duration) {
        self.observer.emit(
            LayerKind::AdaptiveLimit,
            self.name.as_str(),
            EventKind::Rejected {
                reason: RejectionKind::Overloaded,
                detail: refusal.detail(),
                retry_after: Some(retry_after),
            },
        );
    }

    /// Whether a request the limit refuses waits for a place instead (see
    /// `try_queue`).
    pub(crate) fn waits_at_limit(&self) -> bool {
        self.wait_at_limit.load(Ordering::Relaxed)
    }

    /// Turns the wait at the limit on or off (a reload): requests that wait
    /// already wait on.
    pub(crate) fn set_wait_at_limit(&self, wait: bool) {
        if self.wait_at_limit.swap(wait, Ordering::Relaxed) != wait {
            self.observer.emit(
                LayerKind::AdaptiveLimit,
                self.name.as_str(),
                EventKind::Reconfigured,
            );
        }
        if !wait && self.waiting.load(Ordering::SeqCst) != 0 {
            // The waiters are now judged as a herd's (see `grant`).
            self.place_freed(false);
        }
    }

    /// A client stack's limit (its calls are all out): its refusal is a
    /// local one ([`Overloaded::local`](crate::error::Overloaded::local)),
    /// this process declining to send, which the layers above report as
    /// refused, not as the dependency's "busy" (a server's limit refusing
    /// its callers is their remote overload).
    pub(crate) fn guards_calls_out(&self) -> bool {
        !self.waits_apart
    }

    /// The `retry_after` of a refusal: the expected service time (by then
    /// the requests in flight have had time to finish), at least
    /// [`MIN_HINT`](crate::clock::MIN_HINT), stretched by a random factor in
    /// `[1, 1.5)` so that refused clients do not come back together. An
    /// estimate older than a window of such calls takes (its minimum of
    /// samples at that latency, and two windows) describes work that has
    /// left (a brownout's, an hour ago): `MIN_HINT` then, until a window of
    /// the calls now in flight closes. (Not the doomed check's idle rule: a
    /// server held at a limit of one, each call emptying it, would hint the
    /// floor to every refusal.)
    pub(crate) fn retry_hint(&self, now: Instant) -> Duration {
        let base = self
            .fresh_expected_ns(now)
            .map_or(crate::clock::MIN_HINT, Duration::from_nanos)
            .max(crate::clock::MIN_HINT);
        self.jitter.stretch(base)
    }

    /// The expected service time (ns), unless it is older than a window of
    /// such calls takes (see [`retry_hint`](Self::retry_hint)).
    fn fresh_expected_ns(&self, now: Instant) -> Option<u64> {
        let age = crate::clock::nanos_between(self.epoch, now)
            .saturating_sub(self.expected_at_ns.load(Ordering::Relaxed));
        let expected = self.expected_rtt_ns.load(Ordering::Relaxed);
        let lasts = expected
            .saturating_mul(self.min_window_samples)
            .saturating_add(self.window_ns.saturating_mul(2));
        (expected != 0 && age < lasts).then_some(expected)
    }

    /// A request refused after all, having been let wait (or not let into
    /// the queue): one refusal in the window's count.
    #[cold]
    pub(crate) fn note_refused(&self) {
        self.win_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A refusal at the limit, or of a waiter, at `now` (see
    /// `last_refusal_ns`).
    #[cold]
    pub(crate) fn note_refusal(&self, now: Instant) {
        self.last_refusal_ns
            .store(self.stamp(now), Ordering::Relaxed);
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long a place under the limit takes to come free while the queue
    /// stands, as measured (ns; 0: unknown): over the last [`BURST`] or
    /// more in which calls ended, once one such span has passed; before,
    /// since the queue began, once [`DRAIN_EVIDENCE`] calls ended. The
    /// rate of the last span, not of the queue's whole life: a herd of new
    /// connections keeps a server's CPU busy taking them in, and few calls
    /// end meanwhile (10 in the first 300 ms over real HTTP, where 4
    /// workers then answered 360 a second). Since the queue began, it
    /// leans to the fast side (as if [`DRAIN_EVIDENCE`] more had ended):
    /// calls that end together (workers of equal service times) make the
    /// rate look slow just as the first of a batch ends (5 ended in 20 ms,
    /// where 4 end every 10 ms).
    fn measured_drain_ns(&self, q: &mut Queue, now: Instant) -> u64 {
        if q.ends.len == 0 {
            return 0;
        }
        let now_ns = self.stamp(now);
        if q.mark_ended == 0 && q.ended > 0 {
            // Spans run from one call's end to another's: calls that end
            // together (workers of equal service times) count alike at
            // both ends.
            q.mark_ns = now_ns;
            q.mark_ended = q.ended;
        }
        let span = now_ns.saturating_sub(q.mark_ns);
        if span >= self.burst_ns.max(1) && q.ended > q.mark_ended {
            q.recent_drain_ns = span / (q.ended - q.mark_ended);
            q.mark_ns = now_ns;
            q.mark_ended = q.ended;
        }
        if q.recent_drain_ns != 0 {
            return q.recent_drain_ns;
        }
        if q.ended >= DRAIN_EVIDENCE {
            return now_ns
                .saturating_sub(q.opened_ns)
                .checked_div(q.ended + DRAIN_EVIDENCE)
                .unwrap_or(0);
        }
        0
    }

    /// The drain the queue is judged by while it takes arrivals: the
    /// faster of the measured one and the last window's service time over
    /// the limit (Little's law: the calls at the limit leave at `limit`
    /// per service time; while fresh). Unknown (0): it joins. A herd of
    /// new connections keeps the server's CPU busy taking them in at
    /// first, and its first spans are slow: judged by the fastest span
    /// measured instead, 298 and 391 of 2000 were served over real HTTP,
    /// against 621 to 664 with this. The window's figure can be several
    /// times too fast (a limit doubled at the start): the waiters it kept
    /// are refused once the queue takes no more arrivals, by the measured
    /// drain (a new user's trial saw about 500 refused at 0.8 to 1.1 s on
    /// a freshly started server, 5 to 56 on one that had run before).
    fn joining_drain_ns(&self, q: &mut Queue, now: Instant, limit: usize) -> u64 {
        let measured = self.measured_drain_ns(q, now);
        let window = self
            .fresh_expected_ns(now)
            .map_or(0, |expected| expected / limit.max(1) as u64);
        match (measured, window) {
            (0, w) => w,
            (m, 0) => m,
            (m, w) => m.min(w),
        }
    }

    /// The `retry_after` of a request refused at the limit: while requests
    /// wait in the queue for a herd, when the queue before it will have
    /// drained (the measured rate; at least the limit's hint), stretched;
    /// else the limit's hint. A herd refused the usual 100 to 150 ms came
    /// back into a queue of about 2.7 s of work (a new user's trial).
    pub(crate) fn refusal_hint(&self, now: Instant) -> Duration {
        let hint = self.retry_hint(now);
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return hint;
        }
        let mut q = self.lock_queue();
        let limit = self.limit.load(Ordering::Relaxed);
        let drain = self.measured_drain_ns(&mut q, now);
        let ahead = self.inflight.load(Ordering::Relaxed).saturating_sub(limit) + q.ends.len;
        let wait = Self::drained_in(&q, now, drain, ahead);
        drop(q);
        if wait <= hint {
            hint
        } else {
            self.jitter.stretch(wait)
        }
    }

    /// When `ahead` places will have come free at `drain` each, but no
    /// later than the newest waiter's deadline: the queue holds no work
    /// past it (its waiters leave by then). A herd's first spans, while the
    /// server takes its connections in, are slow: told `drain × ahead`
    /// alone, refused callers were sent away for 10 to 19 s over real HTTP.
    fn drained_in(q: &Queue, now: Instant, drain: u64, ahead: usize) -> Duration {
        let wait = Duration::from_nanos(drain.saturating_mul(ahead as u64));
        match q.tail() {
            Some(tail) => wait.min(crate::clock::elapsed(now, q.deadline(tail))),
            None => wait,
        }
    }

    /// Whether a waiter with `ahead` calls to leave before its place comes
    /// free (those over the limit, the waiters before it and itself) can
    /// be served within `remaining`: its place, then as long as a call at
    /// the limit takes (`limit` places' drain). Unknown drain: yes.
    fn fits(drain_ns: u64, ahead: usize, limit: usize, remaining: Duration) -> bool {
        drain_ns == 0
            || u128::from(drain_ns) * (ahead as u128 + limit as u128) <= remaining.as_nanos()
    }

    /// A request the limit refused during a burst, or within [`JOINS`] of
    /// the start of a queue a burst began ([`Refusal::LimitMayWait`]: see
    /// `bursting`; `Critical` and `CriticalPlus` only), at `now`: whether
    /// it waits in the queue for a herd instead, and where, with its
    /// patience. It does when the queue has room, the request has a
    /// deadline, nothing ran out of patience since the calls at the limit
    /// last moved (see `out_of_patience`), and it can be served within its
    /// deadline at the rate places come free (see `joining_drain_ns` and
    /// `fits`). A herd (many requests at one instant, then none) is then
    /// served as far as the deadlines allow, first come first served, and
    /// the rest refused as calls end, once the rate says they cannot be
    /// served in time (see `place_freed`), each told when the queue will
    /// have drained; an
    /// overload that lasts queues its first [`JOINS`] only, and is refused
    /// at once from then on, as before.
    ///
    /// A limit that waits at the limit (`wait_at_limit`, a client
    /// stack's) takes any request it refused at the limit, whenever, with
    /// no judgement by the rate: it waits to its deadline, and `grant`
    /// hands the places out, the newest first. A full queue refuses its
    /// oldest waiter to make room.
    #[cold]
    #[inline(never)]
    pub(crate) fn try_queue(&self, class: Criticality, now: Instant) -> Option<(u32, Duration)> {
        let deadline = crate::deadline::current()?;
        if self.stalled.load(Ordering::Relaxed) || deadline.remaining_from(now).is_zero() {
            return None;
        }
        let now_ns = self.stamp(now);
        // (With no queue, `Queue::push` finds it full.)
        let mut q = self.lock_queue();
        let limit = self.limit.load(Ordering::Relaxed);
        let joins_until = self.joins_until_ns.load(Ordering::Relaxed);
        // A request after the queue's `JOINS`, while it drains (see
        // below): judged by the rate measured, as `place_freed` judges
        // the waiters then (the last window's may be several times too
        // fast).
        let late = q.ends.len != 0 && now_ns >= joins_until;
        let drain_ns = if self.waits_at_limit() {
            0
        } else if late {
            self.measured_drain_ns(&mut q, now)
        } else {
            self.joining_drain_ns(&mut q, now, limit)
        };
        if self.waits_at_limit() {
            // Waits to its deadline (see `grant`).
        } else if !Self::fits(
            drain_ns,
            self.inflight
                .load(Ordering::SeqCst)
                .saturating_sub(limit)
                .saturating_add(q.ends.len + 1),
            limit,
            deadline.remaining_from(now),
        ) {
            return None;
        } else if q.ends.len == 0 && now_ns >= self.joins_until_ns.load(Ordering::Relaxed) {
            // A queue begins, if its burst began after a window without a
            // refusal (see `bursting`): it takes arrivals for `JOINS`.
            // Else each time
            // the queue drained, the calls in flight fell to half the
            // limit, a burst began, and a queue with it: under an overload
            // that lasts, requests sent after its first second waited
            // 0.65 to 0.9 s (p50) on a warm server (a new user's trial).
            // (Within `JOINS` of its burst's start: a request that found
            // a queue draining, which emptied meanwhile, begins none.)
            let start = self.burst_start_ns.load(Ordering::Relaxed);
            if !self.burst_may_queue.load(Ordering::Relaxed)
                || start == 0
                || now_ns.saturating_sub(start) >= crate::clock::nanos(JOINS)
            {
                return None;
            }
            self.joins_until_ns.store(
                now_ns.saturating_add(crate::clock::nanos(JOINS)),
                Ordering::Relaxed,
            );
        } else if late {
            // The queue stopped taking arrivals and drains: a request over
            // the limit joins it only while they come slower than places
            // free, by a third at least (the herd is over, and the traffic
            // after it waits less than it would come back after a
            // refusal: 1 s herds at three times a server's capacity, with
            // 150 requests a second between them, refused those for the
            // half second the queue took to drain). An overload that lasts
            // comes faster, and is refused at once as before. Measured
            // over the last `LATE_SPAN` or so: a rate of now, not since
            // the queue began.
            let from = joins_until.max(q.opened_ns).max(1);
            if q.late_ns < from {
                q.late_ns = from;
                q.late = 0;
            } else if now_ns.saturating_sub(q.late_ns) >= crate::clock::nanos(LATE_SPAN) {
                // Halved, span and count: the same rate, half the weight.
                q.late_ns += now_ns.saturating_sub(q.late_ns) / 2;
                q.late /= 2;
            }
            q.late = q.late.saturating_add(1);
            let span = now_ns.saturating_sub(q.late_ns);
            if drain_ns == 0 || u128::from(q.late) * u128::from(drain_ns) * 3 > u128::from(span) * 2
            {
                return None;
            }
        }
        if self.waits_at_limit() && q.ends.len >= q.max {
            // Full: the oldest waiter, the least likely to be served (the
            // newest are), is refused to make room.
            if let Some(oldest) = q.head() {
                self.refuse_waiter(&mut q, oldest, self.retry_hint(now), now);
            }
        }
        let window = self.win_gen.load(Ordering::SeqCst);
        let idx = q.push(class, deadline.instant(), now_ns, window)?;
        if self.waits_at_limit() {
            // Counted as turned away at the limit, as it would have been
            // (the algorithm reads what the window asked for: its answers
            // and the requests the limit turned away), until it is handed
            // a place (see `hand_place`).
            self.note_refused();
        }
        self.waiting.store(q.ends.len, Ordering::SeqCst);
        // A place may have come free meanwhile.
        self.grant(&mut q, now);
        // (In a herd's queue, at most half the time left: a waiter behind
        // calls that hung leaves with the limit's hint, not at its
        // deadline.)
        let mut patience = Duration::from_nanos(
            self.fresh_expected_ns(now)
                .unwrap_or(0)
                .saturating_mul(4)
                .max(self.window_ns),
        );
        if !self.waits_at_limit() {
            patience = patience.min(deadline.remaining_from(now) / 2);
        }
        Some((idx, patience))
    }

    /// Waiter `idx`'s patience ran out: unless a call ended since it joined
    /// (the calls at the limit move), it leaves, refused with the limit's
    /// hint (the calls at the limit may be stuck: a dependency that hung
    /// behind them). `None`: it waits on, to its deadline.
    #[cold]
    pub(crate) fn out_of_patience(&self, idx: u32, now: Instant) -> Option<Duration> {
        let mut q = self.lock_queue();
        if q.place(idx) != Place::Waiting || q.moved_since(idx) {
            return None;
        }
        let hint = self.retry_hint(now);
        self.refuse_waiter(&mut q, idx, hint, now);
        self.waiting.store(q.ends.len, Ordering::SeqCst);
        // Nothing waits again until the calls at the limit move: a hung
        // dependency behind them would make every request that comes wait
        // its patience (see `reached`).
        self.stalled.store(true, Ordering::Relaxed);
        Some(hint)
    }

    /// Waiter `idx` is refused, told `hint`: out of the queue and woken,
    /// and counted as any refusal at the limit (in the window's count, and
    /// for the next burst).
    fn refuse_waiter(&self, q: &mut Queue, idx: u32, hint: Duration, now: Instant) {
        if let Some(waker) = q.settle(idx, Place::Refused(hint)) {
            waker.wake();
        }
        if !self.waits_at_limit() {
            // (A limit that waits at the limit counted it as it joined.)
            self.note_refused();
        }
        self.refused_ns.store(self.stamp(now), Ordering::Relaxed);
    }

    /// A place under the limit came free (`ended`: a call ended) while
    /// requests wait: the waiters take the free places (see `grant`); then,
    /// in a limit that does not wait at the limit, by the rate places come
    /// free (the joining one while the queue takes arrivals, the measured
    /// one after), the newest that can no longer be served in time are
    /// refused, each told when the queue before it will have drained.
    #[cold]
    #[inline(never)]
    fn place_freed(&self, ended: bool) {
        let now = crate::clock::edge_now();
        let mut q = self.lock_queue();
        if ended {
            q.ended = q.ended.saturating_add(1);
        }
        self.grant(&mut q, now);
        let limit = self.limit.load(Ordering::Relaxed);
        // While the queue still takes arrivals, by the rate they join by
        // (the faster of the measured one and the window's): a herd of new
        // connections arrives over a few hundred milliseconds, while the
        // server, busy taking them in, ends few calls. (A limit that waits
        // at the limit refuses no waiter by the rate.)
        let drain = if self.waits_at_limit() {
            0
        } else if self.stamp(now) < self.joins_until_ns.load(Ordering::Relaxed) {
            self.joining_drain_ns(&mut q, now, limit)
        } else {
            self.measured_drain_ns(&mut q, now)
        };
        if drain != 0 {
            let over = self.inflight.load(Ordering::SeqCst).saturating_sub(limit);
            while let Some(idx) = q.tail() {
                let ahead = over + q.ends.len;
                if Self::fits(
                    drain,
                    ahead,
                    limit,
                    crate::clock::elapsed(now, q.deadline(idx)),
                ) {
                    break;
                }
                let wait = Self::drained_in(&q, now, drain, ahead);
                let hint = self.jitter.stretch(wait.max(crate::clock::MIN_HINT));
                self.refuse_waiter(&mut q, idx, hint, now);
            }
        }
        self.waiting.store(q.ends.len, Ordering::SeqCst);
    }

    /// Hands the free places under the limit to the oldest waiters.
    /// A waiter whose deadline is nearer than a call at the limit takes
    /// (`limit` places' drain, as measured; else the last window's fastest
    /// answer, while fresh) is refused instead: its place would go to work
    /// that ends after its caller gave up.
    ///
    /// A limit that waits at the limit (`wait_at_limit`) hands them to the
    /// newest waiters instead, each to the newest of the last [`WALK`]
    /// whose deadline the last window's fastest answer fits (while that
    /// estimate is fresh and the limit busy, as a request's admission is
    /// judged; any, with `reject_doomed(false)`), else to the next arrival
    /// (adaptive LIFO: an overload that stands serves the requests with
    /// the most time left). It refuses no waiter: the others wait on to
    /// their deadlines (the estimate may be stale: a dependency that
    /// recovers serves them).
    fn grant(&self, q: &mut Queue, now: Instant) {
        if self.waits_at_limit() {
            'places: while self.inflight.load(Ordering::SeqCst) < self.limit.load(Ordering::Relaxed)
            {
                // The newest that can make it, among the newest few (with
                // deadlines of their callers', an older one may have more
                // time left).
                let mut next = q.tail();
                for _ in 0..WALK {
                    let Some(idx) = next else { break };
                    let doomed = self.reject_doomed
                        && self
                            .doomed_by_evidence(crate::clock::elapsed(now, q.deadline(idx)), now);
                    if !doomed {
                        if self.hand_place(q, idx) {
                            continue 'places;
                        }
                        break 'places;
                    }
                    next = q.older(idx);
                }
                break;
            }
            self.waiting.store(q.ends.len, Ordering::SeqCst);
            return;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let takes = match self.measured_drain_ns(q, now) {
            0 if self.fresh_expected_ns(now).is_some() => {
                u128::from(self.doomed_ns.load(Ordering::Relaxed))
            }
            0 => 0,
            drain => u128::from(drain) * limit as u128,
        };
        while let Some(idx) = q.head() {
            if takes > crate::clock::elapsed(now, q.deadline(idx)).as_nanos() {
                self.refuse_waiter(q, idx, self.retry_hint(now), now);
                continue;
            }
            if !self.hand_place(q, idx) {
                break;
            }
        }
        self.waiting.store(q.ends.len, Ordering::SeqCst);
    }

    /// Waiter `idx` takes a place under the limit, if one is free.
    fn hand_place(&self, q: &mut Queue, idx: u32) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let before = self.inflight.fetch_add(1, Ordering::SeqCst);
        if before >= limit {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if self.waits_at_limit() && q.window(idx) == self.win_gen.load(Ordering::SeqCst) {
            // Served after all: no longer a request the window turned away
            // (its answer will be a sample; counted once). In a later
            // window it stays one of the earlier window's.
            let _ = self
                .win_refused
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.by_class[q.class(idx).index()].fetch_add(1, Ordering::AcqRel);
        self.note_inflight(before + 1, limit);
        if let Some(waker) = q.settle(idx, Place::Granted) {
            waker.wake();
        }
        true
    }

    /// Where waiter `idx` stands: granted (with its class; its slot given
    /// back), refused (with the time to come back), or still waiting (its
    /// waker kept).
    pub(crate) fn poll_place(
        &self,
        idx: u32,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Criticality, Duration>> {
        let mut q = self.lock_queue();
        match q.place(idx) {
            Place::Waiting => {
                q.set_waker(idx, cx.waker());
                std::task::Poll::Pending
            }
            Place::Granted => {
                let class = q.class(idx);
                q.free(idx);
                std::task::Poll::Ready(Ok(class))
            }
            Place::Refused(hint) => {
                q.free(idx);
                std::task::Poll::Ready(Err(hint))
            }
            Place::Free => std::task::Poll::Ready(Err(crate::clock::MIN_HINT)),
        }
    }

    /// Waiter `idx` went (its caller did, or its deadline passed) before it
    /// found where it stands: out of the queue; a place it was granted is
    /// given back.
    pub(crate) fn leave(&self, idx: u32) {
        let mut q = self.lock_queue();
        let granted = (q.place(idx) == Place::Granted).then(|| q.class(idx));
        q.free(idx);
        if let Some(class) = granted {
            // Given back, counting nothing, as a permit dropped (see
            // `Permit::drop`), to the next waiter if any.
            self.by_class[class.index()].fetch_sub(1, Ordering::AcqRel);
            if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.idle.fetch_add(1, Ordering::Relaxed);
            }
            self.grant(&mut q, crate::clock::edge_now());
        } else if self.waits_at_limit() && q.ends.len != 0 {
            // A place left free for a newer waiter, who went: to the others.
            self.grant(&mut q, crate::clock::edge_now());
        }
        self.waiting.store(q.ends.len, Ordering::SeqCst);
    }
}

/// How many of the newest waiters a limit that waits at the limit looks
/// at for one that can make it, per place (see `Limiter::grant`).
const WALK: usize = 8;

/// How long a queue for a herd, once a burst began it, takes requests over
/// the limit: a herd of new connections reaches a server over a few
/// hundred milliseconds (2000 at once over real HTTP on 2 cores: over 400
/// ms, half of them 334 ms or more after the first).
pub(crate) const JOINS: Duration = Duration::from_secs(1);

/// The span over which the requests that come after a herd's queue
/// stopped taking arrivals are measured (halved, with their count, once
/// it passes this).
const LATE_SPAN: Duration = Duration::from_millis(250);

/// Calls that end while the queue stands before the rate they end at is
/// taken for the rate places come free (see `Limiter::measured_drain_ns`).
const DRAIN_EVIDENCE: u64 = 4;

/// Admission makes permits: the limiter with its per-thread handles (a
/// permit keeps its thread's, see [`crate::stripe`]).
impl Striped<Limiter> {
    /// Admission: O(1), a few atomics, no lock, no allocation.
    #[inline(always)]
    pub(crate) fn try_acquire(&self, class: Criticality, now: Instant) -> Result<Permit, Refusal> {
        if self.reject_doomed {
            if let Some(deadline) = crate::deadline::current() {
                let remaining = deadline.remaining_from(now);
                if remaining.is_zero() || self.doomed_by_evidence(remaining, now) {
                    return Err(Refusal::Doomed);
                }
            }
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        let idx = class.index();
        let class_before = self.by_class[idx].fetch_add(1, Ordering::AcqRel);
        let mut burst = false;
        if before >= limit {
            if !self.under_share(idx, limit, class_before) {
                let verdict = self.bursting(class, before, now);
                if verdict != Burst::Admit {
                    self.by_class[idx].fetch_sub(1, Ordering::AcqRel);
                    self.inflight.fetch_sub(1, Ordering::SeqCst);
                    if self.waiting.load(Ordering::SeqCst) != 0 {
                        // A call that ended meanwhile found its place taken
                        // by this request's count, and gave it to no one.
                        self.place_freed(false);
                    }
                    let may_wait = (verdict == Burst::Queue
                        || (self.waits_at_limit()
                            && class.index() <= Criticality::Critical.index()))
                        && self.max_queue != 0;
                    if !may_wait {
                        // (One that may wait is counted if it does not: see
                        // `note_refused`.)
                        self.win_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    self.over_limit(limit, now);
                    return Err(if may_wait {
                        Refusal::LimitMayWait
                    } else {
                        Refusal::Limit
                    });
                }
                self.over_limit(limit, now);
                burst = true;
            }
            self.win_over_peak.fetch_max(before + 1, Ordering::Relaxed);
        }
        if before + 1 == limit {
            self.reached(now);
        } else if before == limit / 2 && self.refused_ns.load(Ordering::Relaxed) != 0 {
            // The calls in flight fell to half the limit since it last
            // refused (they move one at a time: rising again, they pass
            // half): the queue that stood there has drained.
            self.refused_ns.store(0, Ordering::Relaxed);
        }
        let inflight = before + 1;
        // (A burst's calls are not the limit's load: the algorithm learns
        // from the calls within it, and a call admitted over the limit by
        // its share counts the limit reached.)
        if !burst {
            self.note_inflight(inflight, limit);
        }
        let mut waits = crate::outbound::Waits::new(now);
        waits.owner = [class.index() as u8, if burst { IN_BURST } else { 0 }];
        Ok(Permit {
            limiter: self.ticket(),
            waits,
        })
    }
}

/// One admitted call's place under the limit. Released when the call
/// finishes or when it is dropped (a dropped permit counts nothing).
///
/// 40 bytes in a response future: its class and flags are kept in two
/// bytes of its `Waits` (`owner`: the class's index, then the flags).
pub(crate) struct Permit {
    limiter: Ticket<Limiter>,
    /// Its waits on calls out (made current by the response future around
    /// each poll of the handler): not in its latency sample.
    pub(crate) waits: crate::outbound::Waits,
}

/// Admitted over the limit in a burst: its latency is no sample (it waited
/// in the burst's queue by choice), a drop still counts.
const IN_BURST: u8 = 1;
/// Given back.
const DONE: u8 = 2;
/// Out of the count while its handler waits on calls out.
const OUTSIDE: u8 = 4;

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("class", &self.class())
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The permit of a queued request handed a place (already counted in
    /// flight: see `Limiter::grant`).
    pub(crate) fn granted(limiter: Ticket<Limiter>, class: Criticality) -> Self {
        let mut waits = crate::outbound::Waits::new(crate::clock::edge_now());
        waits.owner = [class.index() as u8, 0];
        // (The permit first: a hook that panics drops it, and the place
        // is given back.)
        let permit = Permit { limiter, waits };
        permit.limiter.observer.emit(
            LayerKind::AdaptiveLimit,
            permit.limiter.name.as_str(),
            EventKind::CallStarted,
        );
        permit
    }

    /// Its class.
    #[inline]
    fn class(&self) -> Criticality {
        Criticality::ALL[self.class_index()]
    }

    /// Its class's index (see `Criticality::index`).
    #[inline]
    fn class_index(&self) -> usize {
        usize::from(self.waits.owner[0] & 3)
    }

    /// Whether `flag` is set.
    #[inline]
    fn has(&self, flag: u8) -> bool {
        self.waits.owner[1] & flag != 0
    }

    /// Sets `flag` to `on`.
    #[inline]
    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.waits.owner[1] |= flag;
        } else {
            self.waits.owner[1] &= !flag;
        }
    }

    /// Its limiter keeps its handler's waits on calls out apart (see
    /// `Config::waits_apart`).
    #[inline]
    pub(crate) fn waits_apart(&self) -> bool {
        self.limiter.waits_apart
    }

    /// After a poll of the handler: while it waits on a call out (through
    /// a client stack), its place is not in the count of calls in flight
    /// (it is no load of this server's: a dependency that queues or hangs
    /// behind one route would otherwise fill the limit every route
    /// shares); it takes it back when the last wait ends, over the limit
    /// if need be (it was admitted).
    #[inline]
    pub(crate) fn follow_waits(&mut self) {
        let waiting = self.waits.is_open();
        if waiting == self.has(OUTSIDE) || self.has(DONE) {
            return;
        }
        self.set(OUTSIDE, waiting);
        let limiter = &*self.limiter;
        let by_class = &limiter.by_class[self.class_index()];
        if waiting {
            by_class.fetch_sub(1, Ordering::AcqRel);
            if limiter.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
                // Nothing of this server's in flight any more.
                limiter.idle.fetch_add(1, Ordering::Relaxed);
            }
            if limiter.waiting.load(Ordering::SeqCst) != 0 {
                // Its place, while it waits, to the queue's oldest.
                limiter.place_freed(false);
            }
        } else {
            by_class.fetch_add(1, Ordering::AcqRel);
            let inflight = limiter.inflight.fetch_add(1, Ordering::AcqRel) + 1;
            limiter.note_inflight(inflight, limiter.limit.load(Ordering::Relaxed));
        }
    }

    /// Releases the permit and records how the call ended.
    #[inline]
    pub(crate) fn complete(&mut self, completion: Completion) {
        self.complete_at(completion, crate::clock::edge_now());
    }

    /// [`complete`](Self::complete), with the time the call ended.
    #[inline(always)]
    fn complete_at(&mut self, completion: Completion, now: Instant) {
        if self.has(DONE) {
            return;
        }
        self.set(DONE, true);
        let limiter = &*self.limiter;
        let idle = if self.has(OUTSIDE) {
            limiter.idle.load(Ordering::Relaxed)
        } else {
            limiter.release(self.class())
        };
        // In nanoseconds to the end: a `Duration` only for the event.
        self.report(
            completion,
            crate::clock::nanos_between(self.waits.start(), now),
            now,
            idle,
        );
    }

    /// Releases the permit for a protocol's answer, as `completion` judges
    /// it (by the protocol's classifier): the latency of a failed or
    /// "busy" answer is no sample (a dependency failing or refusing at
    /// once says nothing of a queue here; see [`Limiter::record`]), one
    /// that says the handler ran out of time is counted apart.
    #[inline]
    pub(crate) fn complete_answer(&mut self, completion: impl FnOnce() -> Completion) {
        self.complete(completion());
    }

    // Always: on the path of every call (left to the compiler, it went out
    // of line when the window began keeping its fastest call: 22
    // instructions more a call).
    #[inline(always)]
    fn report(&self, completion: Completion, rtt_ns: u64, now: Instant, idle: u64) {
        let limiter = &*self.limiter;
        match completion {
            // An answer's latency is the handler's own: its waits on calls
            // out through a client stack (a dependency's queue) are no
            // queue of this server's. A failure, a drop or a timed-out
            // answer counts for the whole time it held its place.
            Completion::Sample(Outcome::Success | Outcome::Ignored) => {
                let own_ns = rtt_ns.saturating_sub(self.waits.outside_ns(now));
                // (A timed-out answer is counted apart even in a burst:
                // not in the latency a request should expect.)
                if self.has(IN_BURST) {
                    limiter.record_burst(own_ns, now, idle)
                } else {
                    limiter.record(completion, own_ns, now, idle)
                }
            }
            // A drop or a timed-out answer that spent most of its time
            // waiting on calls out (a client stack's deadline, passed on)
            // is no sign of a queue here.
            Completion::Drop | Completion::TimedOut
                if self.waits.outside_ns(now).saturating_mul(2) > rtt_ns =>
            {
                limiter.record(Completion::Ignore, rtt_ns, now, idle)
            }
            _ => limiter.record(completion, rtt_ns, now, idle),
        }
        let outcome = match completion {
            Completion::Sample(outcome) => outcome,
            Completion::Drop | Completion::Ignore | Completion::TimedOut => Outcome::Failure,
        };
        limiter.observer.emit(
            LayerKind::AdaptiveLimit,
            limiter.name.as_str(),
            EventKind::CallFinished {
                outcome,
                latency: Duration::from_nanos(rtt_ns),
            },
        );
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.has(DONE) {
            self.set(DONE, true);
            let limiter = &*self.limiter;
            // The caller went (a cancel, a hedge that lost): says nothing
            // of this service's capacity (a timeout below the limit ends as
            // an error, a drop); the slot is given back, nothing counted.
            if !self.has(OUTSIDE) {
                limiter.release(self.class());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shed::Aimd;

    fn limiter(limit: usize, shares: [f64; 4]) -> Striped<Limiter> {
        let algo = Aimd::builder()
            .initial_limit(limit)
            .min_limit(1)
            .build()
            .unwrap();
        Striped::new(Limiter::new(
            Box::new(algo),
            Config {
                window: Duration::from_millis(100),
                min_window_samples: 2,
                min_rtt: Duration::from_micros(100),
                shares,
                reject_doomed: true,
                burst: Duration::ZERO,
                max_queue: 0,
                waits_apart: true,
                wait_at_limit: false,
            },
            Name::from("t"),
            Observer::default(),
        ))
    }

    #[test]
    fn admits_up_to_the_limit_then_only_guaranteed_shares() {
        let l = limiter(4, [0.5, 0.25, 0.0, 0.0]);
        let now = Instant::now();
        let mut held: Vec<Permit> = (0..4)
            .map(|_| l.try_acquire(Criticality::Sheddable, now).unwrap())
            .collect();
        assert_eq!(l.inflight(), 4);
        for class in [Criticality::Sheddable, Criticality::SheddablePlus] {
            assert_eq!(l.try_acquire(class, now).unwrap_err(), Refusal::Limit);
        }
        // CriticalPlus has ceil(0.5 × 4) = 2 guaranteed slots, Critical
        // ceil(0.25 × 4) = 1.
        held.push(l.try_acquire(Criticality::Critical, now).unwrap());
        assert_eq!(
            l.try_acquire(Criticality::Critical, now).unwrap_err(),
            Refusal::Limit
        );
        held.push(l.try_acquire(Criticality::CriticalPlus, now).unwrap());
        held.push(l.try_acquire(Criticality::CriticalPlus, now).unwrap());
        assert_eq!(
            l.try_acquire(Criticality::CriticalPlus, now).unwrap_err(),
            Refusal::Limit
        );
        // In flight: the limit plus the guaranteed shares, 4 + 2 + 1.
        assert_eq!(l.inflight(), 7);
        assert_eq!(l.inflight_of(Criticality::CriticalPlus), 2);
        assert_eq!(l.inflight_of(Criticality::Critical), 1);
        // Below the limit every class is admitted again.
        held.truncate(3);
        assert_eq!(l.inflight(), 3);
        held.push(l.try_acquire(Criticality::Sheddable, now).unwrap());
        drop(held);
        assert_eq!(l.inflight(), 0);
        assert_eq!(l.inflight_of(Criticality::Sheddable), 0);
    }

    #[test]
    fn dropped_permits_are_given_back_and_not_counted() {
        let l = limiter(10, [0.0; 4]);
        let t0 = Instant::now();
        let a = l.try_acquire(Criticality::Critical, t0).unwrap();
        let b = l.try_acquire(Criticality::Critical, t0).unwrap();
        assert_eq!(l.win_max_inflight.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(l.win_drops.load(Ordering::Relaxed), 0);
        assert_eq!(l.inflight(), 0);
        // The window (100 ms) has not elapsed in real time here; close it by hand.
        l.maybe_close_window(t0 + Duration::from_secs(1), 0);
        assert_eq!(l.limit(), 10);
        assert_eq!(l.expected_rtt(), None);
    }

    proptest::proptest! {
        #[test]
        fn inflight_is_exact_and_bounded(ops in proptest::collection::vec((0usize..4, proptest::bool::ANY, 0usize..64), 1..400)) {
            let shares = [0.2, 0.5, 0.1, 0.0];
            let l = limiter(8, shares);
            let now = Instant::now();
            let mut held: Vec<(Criticality, Permit)> = Vec::new();
            // Limit 8: ceilings 2 + 4 + 1 + 0 above it.
            let bound = 8 + 2 + 4 + 1;
            for (class, acquire, pick) in ops {
                let class = Criticality::ALL[class];
                if acquire || held.is_empty() {
                    if let Ok(p) = l.try_acquire(class, now) {
                        held.push((class, p));
                    }
                } else {
                    held.swap_remove(pick % held.len());
                }
                proptest::prop_assert_eq!(l.inflight(), held.len());
                proptest::prop_assert!(held.len() <= bound);
                for c in Criticality::ALL {
                    let n = held.iter().filter(|(k, _)| *k == c).count();
                    proptest::prop_assert_eq!(l.inflight_of(c), n);
                }
            }
            held.clear();
            proptest::prop_assert_eq!(l.inflight(), 0);
        }
    }
}
