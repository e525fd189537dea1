//! The storm simulation: a backend of fixed capacity, an open-loop client load,
//! a phase schedule, and the four client/server stacks under comparison.
//!
//! Everything runs on a current-thread tokio runtime in paused time with a
//! seeded RNG, so a run takes a few seconds of wall time and prints the same
//! numbers every time. `tests/storm/main.rs` includes this file to check
//! exactly that on a shorter timeline.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seawall::observe::LayerKind;
use seawall::{BoxError, Deadline, Event, EventKind, HasDeadline, Observer};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

#[path = "resilience.rs"]
mod resilience;
#[path = "stacks.rs"]
mod stacks;

/// How long a call of a route that hangs ([`Condition::RouteHangs`]) waits
/// before it is answered: longer than any caller waits.
pub const HANG: Duration = Duration::from_secs(30);

/// A boxed response future (the example's own services; the crate never boxes).
pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A type-erased client or server stack.
pub type Stack = BoxCloneService<Req, Resp, BoxError>;

// ---------------------------------------------------------------------------
// scenario
// ---------------------------------------------------------------------------

/// What the backend is going through during a phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Normal service times.
    Healthy,
    /// Every service time multiplied by this factor (a slow dependency).
    Slow(f64),
    /// Every call fails after a short delay.
    Down,
    /// This share of calls (0..=1) fails after a short delay; the others are
    /// served normally (a partial failure).
    Failing(f64),
    /// This share of *requests* (0..=1) fails after a short delay, every
    /// attempt of it: one route of the dependency is broken, the others
    /// are served normally.
    RouteDown(f64),
    /// This share of *requests* (0..=1) hangs: one route of the backend
    /// waits on a dependency of its own that hung, and answers only after
    /// [`HANG`], taking no worker meanwhile; the others are served
    /// normally.
    RouteHangs(f64),
    /// The dependency sheds load as a proxy in front of it would (nginx's
    /// `limit_conn`): a call that finds this many calls in flight or queued
    /// fails at once, with no hint of when to come back; the others are
    /// served normally.
    Shedding(usize),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Healthy => f.write_str("backend healthy"),
            Condition::Slow(x) => write!(f, "backend latency x{x}"),
            Condition::Down => f.write_str("backend down, every call fails"),
            Condition::Failing(p) => write!(f, "{:.0}% of calls fail fast", p * 100.0),
            Condition::RouteDown(p) => {
                write!(f, "one route ({:.0}% of requests) fails fast", p * 100.0)
            }
            Condition::RouteHangs(p) => {
                write!(f, "one route ({:.0}% of requests) hangs", p * 100.0)
            }
            Condition::Shedding(n) => write!(f, "backend sheds beyond {n} calls"),
        }
    }
}

/// One phase of the timeline.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Short name printed in the tables.
    pub name: &'static str,
    /// How long the phase lasts.
    pub duration: Duration,
    /// Offered load as a fraction of the backend's healthy capacity.
    pub load: f64,
    /// The backend's condition.
    pub condition: Condition,
}

/// The whole scenario: backend size, client deadline, phases, seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Seed of every random draw (arrivals, service times).
    pub seed: u64,
    /// Concurrent workers in the backend.
    pub workers: usize,
    /// Mean healthy service time (each call draws uniformly in 0.5x..1.5x).
    pub service_time: Duration,
    /// How long a failing call takes while the backend is down.
    pub fail_time: Duration,
    /// Each client request's total deadline; goodput counts only answers
    /// that arrive within it.
    pub deadline: Duration,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// Services between the client and the backend's server, each with the
    /// mode's stacks (0: the client calls the backend's server directly).
    pub middle_tiers: usize,
    /// The share of requests the client marks critical (the rest are
    /// sheddable); `None`: requests carry no criticality.
    pub critical_share: Option<f64>,
    /// The dependency runs no server stack in any mode (a service the
    /// caller does not own): only the client stacks differ.
    pub client_only: bool,
}

/// Three phases: `middle`, with 5 s before and after it at 60 % of
/// capacity in the `edge` condition ("healthy", then "after").
fn framed(edge: Condition, middle: Phase) -> Vec<Phase> {
    let at_rest = |name| Phase {
        name,
        duration: Duration::from_secs(5),
        load: 0.6,
        condition: edge,
    };
    vec![at_rest("healthy"), middle, at_rest("after")]
}

impl Scenario {
    /// The full scenario the example runs: 100 s, about 72 300 requests per
    /// mode.
    pub fn full() -> Self {
        Scenario::with_phase_lengths([20, 10, 20, 20, 30])
    }

    /// A partial failure: the same backend at 60 % of capacity, 30 % of its
    /// calls failing fast, for `secs` seconds.
    pub fn partial_failure(secs: u64) -> Self {
        let mut s = Scenario::quick();
        s.phases = vec![Phase {
            name: "partial",
            duration: Duration::from_secs(secs),
            load: 0.6,
            condition: Condition::Failing(0.3),
        }];
        s
    }

    /// One route broken: the same backend at 60 % of capacity, where half of
    /// the requests (one route of two) fail fast, every attempt, for `secs`
    /// seconds, between 5 s healthy before and after. The other route is
    /// healthy: a breaker that opens for the whole dependency turns a half
    /// outage into a full one.
    pub fn route_down(secs: u64) -> Self {
        Scenario::one_route("route down", Condition::RouteDown(0.5), secs)
    }

    /// `condition` for `secs` seconds at 60 % of capacity, in a phase named
    /// `name`, between 5 s healthy before and after.
    fn one_route(name: &'static str, condition: Condition, secs: u64) -> Self {
        let mut s = Scenario::quick();
        s.phases = framed(
            Condition::Healthy,
            Phase {
                name,
                duration: Duration::from_secs(secs),
                load: 0.6,
                condition,
            },
        );
        s
    }

    /// One route hangs: the same backend at 60 % of capacity, where half of
    /// the requests (one route of two) wait on a dependency of the
    /// backend's that hung, for `secs` seconds, between 5 s healthy before
    /// and after. The other route is healthy: the calls waiting on the hung
    /// one must not take its place under a limit, nor open a breaker over
    /// it.
    pub fn route_hangs(secs: u64) -> Self {
        Scenario::one_route("route hangs", Condition::RouteHangs(0.5), secs)
    }

    /// A dependency behind a load shedder that answers a bare error (no
    /// `Retry-After`, as nginx's `limit_conn` answers 503) to a call that
    /// finds twice its workers busy or queued, under a surge at twice its
    /// capacity for `secs` seconds, between 5 s at 60 % before and after.
    pub fn shedding(secs: u64) -> Self {
        let mut s = Scenario::quick();
        let shedding = Condition::Shedding(s.workers * 2);
        s.phases = framed(
            shedding,
            Phase {
                name: "surge",
                duration: Duration::from_secs(secs),
                load: 2.0,
                condition: shedding,
            },
        );
        s
    }

    /// A queueing dependency the caller does not own (no server stack in any
    /// mode: an unbounded queue in front of its workers, which finish work
    /// its callers gave up on) offered `load` times its capacity for `secs`
    /// seconds, between 5 s at 60 % before and after. At 110 % for 6 s its
    /// queue grows by a tenth of a second every second and stays within
    /// the deadline: a caller that waits is served, and every attempt cut
    /// and retried only lengthens the queue. At 130 % for 10 s the queue
    /// passes the deadline: only refusing some of the calls keeps the rest
    /// in time.
    pub fn queueing(secs: u64, load: f64) -> Self {
        let mut s = Scenario::quick();
        s.client_only = true;
        // A small service: 4 workers x 36 ms, about 111 requests a second
        // (the client's bulkhead of 256 holds more than 2 s of its queue).
        s.workers = 4;
        s.service_time = Duration::from_millis(36);
        s.phases = framed(
            Condition::Healthy,
            Phase {
                name: "overload",
                duration: Duration::from_secs(secs),
                load,
                condition: Condition::Healthy,
            },
        );
        s
    }

    /// A dependency that gets slower without queueing (client stacks only):
    /// 400 workers x 20 ms, offered `rate` requests a second, whose every
    /// call takes `factor` times as long for `secs` seconds, between 5 s
    /// healthy before and after. Its workers are never all busy: a caller
    /// that waits is served, slowly, and needs more calls in flight (at
    /// x15 and 400 a second, 300 ms calls, about 120 where the client
    /// stack's limit starts at 100).
    pub fn slow_dependency(secs: u64, factor: f64, rate: f64) -> Self {
        let mut s = Scenario::quick();
        s.client_only = true;
        s.workers = 400;
        let load = rate / s.capacity();
        s.phases = framed(
            Condition::Healthy,
            Phase {
                name: "slow",
                duration: Duration::from_secs(secs),
                load,
                condition: Condition::Slow(factor),
            },
        );
        for p in &mut s.phases {
            p.load = load;
        }
        s
    }

    /// A server started under a steady load (a deploy, a restart): a
    /// backend of 80 workers x 20 ms (4000 requests a second) offered 60 %
    /// of it from the first instant, 48 calls in flight where a fresh
    /// adaptive limit starts at 20, for `secs` seconds.
    pub fn started_under_load(secs: u64) -> Self {
        let mut s = Scenario::quick();
        s.workers = 80;
        s.phases = vec![Phase {
            name: "started",
            duration: Duration::from_secs(secs),
            load: 0.6,
            condition: Condition::Healthy,
        }];
        s
    }

    /// A flapping dependency: healthy for 3 s, down for 2 s, `cycles` times,
    /// at 60 % of capacity.
    pub fn flapping(cycles: usize) -> Self {
        let mut s = Scenario::quick();
        s.phases = (0..cycles)
            .flat_map(|_| {
                [
                    Phase {
                        name: "up",
                        duration: Duration::from_secs(3),
                        load: 0.6,
                        condition: Condition::Healthy,
                    },
                    Phase {
                        name: "down",
                        duration: Duration::from_secs(2),
                        load: 0.6,
                        condition: Condition::Down,
                    },
                ]
            })
            .collect();
        s
    }

    /// A slow latency creep: the backend's service time doubles every
    /// `step_secs` seconds (x1, x2, x4, x8, x16), at 30 % of its healthy
    /// capacity.
    pub fn latency_creep(step_secs: u64) -> Self {
        let mut s = Scenario::quick();
        s.phases = [
            ("x1", 1.0),
            ("x2", 2.0),
            ("x4", 4.0),
            ("x8", 8.0),
            ("x16", 16.0),
        ]
        .into_iter()
        .map(|(name, x)| Phase {
            name,
            duration: Duration::from_secs(step_secs),
            load: 0.3,
            condition: Condition::Slow(x),
        })
        .collect();
        s
    }

    /// A chain: the client calls service A, which calls service B, which
    /// calls the backend, each hop with the mode's client stack (its retries)
    /// and each service with the mode's server stack. The backend is healthy,
    /// then down, then healthy again, at 60 % of its capacity.
    pub fn chain(secs: [u64; 3]) -> Self {
        let mut s = Scenario::quick();
        s.middle_tiers = 2;
        s.phases = vec![
            Phase {
                name: "healthy",
                duration: Duration::from_secs(secs[0]),
                load: 0.6,
                condition: Condition::Healthy,
            },
            Phase {
                name: "outage",
                duration: Duration::from_secs(secs[1]),
                load: 0.6,
                condition: Condition::Down,
            },
            Phase {
                name: "recovery",
                duration: Duration::from_secs(secs[2]),
                load: 0.6,
                condition: Condition::Healthy,
            },
        ];
        s
    }

    /// A surge with mixed criticality: 5 s at 60 % of capacity, then 15 s at
    /// 180 %, where 30 % of the requests are critical (user-facing) and the
    /// rest sheddable (prefetch, batch), then 5 s back at 60 %.
    pub fn priority_surge() -> Self {
        let mut s = Scenario::quick();
        s.critical_share = Some(0.3);
        s.phases = framed(
            Condition::Healthy,
            Phase {
                name: "surge",
                duration: Duration::from_secs(15),
                load: 1.8,
                condition: Condition::Healthy,
            },
        );
        s
    }

    /// A shorter timeline with the same shape (`--quick`): 40 s.
    pub fn quick() -> Self {
        Scenario::with_phase_lengths([6, 6, 8, 8, 12])
    }

    fn with_phase_lengths(secs: [u64; 5]) -> Self {
        let d = Duration::from_secs;
        Scenario {
            seed: 0x5EA_3A11,
            workers: 20,
            service_time: Duration::from_millis(20),
            fail_time: Duration::from_millis(5),
            deadline: Duration::from_secs(1),
            middle_tiers: 0,
            critical_share: None,
            client_only: false,
            phases: vec![
                Phase {
                    name: "healthy",
                    duration: d(secs[0]),
                    load: 0.6,
                    condition: Condition::Healthy,
                },
                Phase {
                    name: "surge",
                    duration: d(secs[1]),
                    load: 1.8,
                    condition: Condition::Healthy,
                },
                Phase {
                    name: "brownout",
                    duration: d(secs[2]),
                    load: 0.6,
                    condition: Condition::Slow(10.0),
                },
                Phase {
                    name: "outage",
                    duration: d(secs[3]),
                    load: 0.6,
                    condition: Condition::Down,
                },
                Phase {
                    name: "recovery",
                    duration: d(secs[4]),
                    load: 0.6,
                    condition: Condition::Healthy,
                },
            ],
        }
    }

    /// Healthy capacity in requests per second (workers / mean service time).
    pub fn capacity(&self) -> f64 {
        self.workers as f64 / self.service_time.as_secs_f64()
    }

    /// The best goodput phase `i` allows: the backend's capacity in that
    /// phase over the offered load (1.0 at most; 0 while it is down).
    pub fn possible(&self, i: usize) -> f64 {
        let phase = &self.phases[i];
        let capacity = match phase.condition {
            Condition::Healthy => self.capacity(),
            Condition::Slow(x) => self.capacity() / x,
            Condition::Down => 0.0,
            // Every request can be served: a failed call can be tried again.
            Condition::Failing(_) => self.capacity(),
            // The broken route's requests cannot be served.
            Condition::RouteDown(p) | Condition::RouteHangs(p) => {
                ((1.0 - p) * phase.load).min(1.0) * self.capacity()
            }
            Condition::Shedding(_) => self.capacity(),
        };
        (capacity / (phase.load * self.capacity())).min(1.0)
    }

    /// The best goodput the whole run allows: each phase's
    /// [`possible`](Self::possible), weighted by the requests it offers.
    pub fn possible_overall(&self) -> f64 {
        let (mut good, mut offered) = (0.0, 0.0);
        for (i, p) in self.phases.iter().enumerate() {
            let n = p.load * p.duration.as_secs_f64();
            good += self.possible(i) * n;
            offered += n;
        }
        if offered > 0.0 { good / offered } else { 0.0 }
    }

    /// Total length of the timeline.
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Start and end (seconds from the start) of phase `i`.
    pub fn bounds(&self, i: usize) -> (f64, f64) {
        let start: Duration = self.phases[..i].iter().map(|p| p.duration).sum();
        (
            start.as_secs_f64(),
            (start + self.phases[i].duration).as_secs_f64(),
        )
    }

    /// Index of the phase at `t` seconds (the last phase for `t` past the end).
    pub fn phase_at(&self, t: f64) -> usize {
        (0..self.phases.len())
            .find(|&i| t < self.bounds(i).1)
            .unwrap_or(self.phases.len() - 1)
    }

    /// Open-loop arrivals (Poisson, offset from the start), identical for
    /// every mode.
    pub fn arrivals(&self) -> Vec<Duration> {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut out = Vec::new();
        for i in 0..self.phases.len() {
            let (start, end) = self.bounds(i);
            let rate = self.phases[i].load * self.capacity();
            let mut t = start;
            loop {
                // exponential inter-arrival time
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                t += -u.ln() / rate;
                if t >= end {
                    break;
                }
                out.push(Duration::from_secs_f64(t));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// request / response
// ---------------------------------------------------------------------------

/// One request. It carries the deadline that a seawall client propagates (none
/// for the baselines); `caller_gives_up` is the simulation's own bookkeeping
/// of the client's deadline, used only to measure doomed work.
#[derive(Debug, Clone)]
pub struct Req {
    deadline: Option<Deadline>,
    caller_gives_up: Instant,
    /// When the caller sent it (seconds since the start): what it costs is
    /// counted in the phase it arrived in.
    arrived: f64,
    /// Which route the request takes: a uniform draw in `[0, 1)`, the same
    /// for every attempt of it.
    route: f64,
}

impl HasDeadline for Req {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

/// A successful answer.
#[derive(Debug, Clone, Copy)]
pub struct Resp;

/// The error the backend answers with while it is down.
#[derive(Debug)]
pub struct BackendError;

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("backend unavailable")
    }
}

impl std::error::Error for BackendError {}

// ---------------------------------------------------------------------------
// measurements
// ---------------------------------------------------------------------------

/// Counters for one second of the timeline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Second {
    /// Requests that arrived in this second.
    pub offered: u64,
    /// Of those, answered successfully within their deadline.
    pub good: u64,
    /// Calls sent to the server in this second (every attempt, retries
    /// included), whichever request they were for: the chart's.
    pub attempts: u64,
    /// Calls sent to the server for the requests that arrived in this
    /// second, whenever sent: the tables' (a phase's figures are over the
    /// requests offered in it).
    pub attempts_for: u64,
    /// Calls that reached the backend itself (past the server's own
    /// layers) for the requests that arrived in this second.
    pub backend_calls_for: u64,
    /// Worker time (ms) for the requests that arrived in this second, on
    /// answers that came while their caller still waited.
    pub useful_ms_for: f64,
    /// Worker time (ms) for the requests that arrived in this second, on
    /// answers that came after their caller's deadline, and on work cut off
    /// before its end (a server that dropped the call at its deadline).
    pub doomed_ms_for: f64,
}

/// How one client request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    /// Success within the deadline.
    Good,
    /// Success, but after the deadline: useless to the caller.
    Late,
    /// An error; the label names its cause (a seawall rejection kind,
    /// `timeout` for tower's timeout, `backend_error`, …).
    Failed(&'static str),
}

impl End {
    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            End::Good => "ok",
            End::Late => "late",
            End::Failed(reason) => reason,
        }
    }
}

/// One finished client request.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Arrival, seconds from the start.
    pub arrival: f64,
    /// Whether the client marked the request critical.
    pub critical: bool,
    /// What the caller waited, start to answer.
    pub latency: Duration,
    /// How it ended.
    pub end: End,
}

#[derive(Debug, Default)]
struct Book {
    seconds: Vec<Second>,
    records: Vec<Record>,
}

#[derive(Debug)]
struct Meter {
    start: Instant,
    book: Mutex<Book>,
    client_in_flight: AtomicUsize,
    backend_in_flight: AtomicUsize,
}

impl Meter {
    fn new(start: Instant, secs: usize) -> Self {
        Meter {
            start,
            book: Mutex::new(Book {
                seconds: vec![Second::default(); secs],
                records: Vec::new(),
            }),
            client_in_flight: AtomicUsize::new(0),
            backend_in_flight: AtomicUsize::new(0),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Nothing panics while holding the lock; recover the data regardless.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn second(book: &mut Book, at: f64) -> Option<&mut Second> {
        let i = at.max(0.0) as usize;
        book.seconds.get_mut(i)
    }

    fn since_start(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }
}

// ---------------------------------------------------------------------------
// the backend
// ---------------------------------------------------------------------------

/// The simulated backend: `workers` concurrent workers, an unbounded FIFO queue
/// in front of them, service times set by the phase schedule. The same in
/// every mode; only what stands in front of it changes.
#[derive(Debug, Clone)]
pub struct Backend {
    shared: Arc<BackendShared>,
}

#[derive(Debug)]
struct BackendShared {
    workers: Semaphore,
    scenario: Scenario,
    calls: AtomicU64,
    meter: Arc<Meter>,
}

/// Decrements the backend's in-flight count when the call ends or is dropped.
struct InFlight(Arc<BackendShared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .meter
            .backend_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend call's work under way: dropped before its end, the worker
/// time spent on it is counted as doomed.
struct Cut<'a> {
    shared: &'a BackendShared,
    begin: Instant,
    arrived: f64,
    done: bool,
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let ms = self.begin.elapsed().as_secs_f64() * 1e3;
        let mut book = self.shared.meter.book();
        if let Some(s) = Meter::second(&mut book, self.arrived) {
            s.doomed_ms_for += ms;
        }
    }
}

/// A uniform draw in `[0, 1)` for call number `n` (splitmix64), so service
/// times do not depend on the order in which calls are scheduled.
fn unit(seed: u64, n: u64) -> f64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Backend {
    fn new(scenario: Scenario, meter: Arc<Meter>) -> Self {
        Backend {
            shared: Arc::new(BackendShared {
                workers: Semaphore::new(scenario.workers),
                scenario,
                calls: AtomicU64::new(0),
                meter,
            }),
        }
    }
}

impl Service<Req> for Backend {
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFut<Resp>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.shared.clone();
        let n = shared.calls.fetch_add(1, Ordering::Relaxed);
        let meter = &shared.meter;
        let at = meter.since_start(Instant::now());
        // A shedding proxy in front of the backend refuses at once: the call
        // never reaches the backend.
        if let Condition::Shedding(limit) =
            shared.scenario.phases[shared.scenario.phase_at(at)].condition
        {
            if meter.backend_in_flight.load(Ordering::Relaxed) >= limit {
                return Box::pin(std::future::ready(Err(BackendError.into())));
            }
        }
        meter.backend_in_flight.fetch_add(1, Ordering::Relaxed);
        {
            let mut book = meter.book();
            if let Some(s) = Meter::second(&mut book, req.arrived) {
                s.backend_calls_for += 1;
            }
        }
        let guard = InFlight(shared.clone());
        Box::pin(async move {
            let _guard = guard;
            let sc = &shared.scenario;
            if let Condition::RouteHangs(p) = sc.phases[sc.phase_at(at)].condition {
                if req.route < p {
                    // Waiting on what hung, not working: no worker.
                    tokio::time::sleep(HANG).await;
                    return Ok(Resp);
                }
            }
            let _worker = shared.workers.acquire().await?;
            let begin = Instant::now();
            // Work cut off before its end (dropped with this future) was
            // spent for nothing: counted as doomed.
            let mut cut = Cut {
                shared: &shared,
                begin,
                arrived: req.arrived,
                done: false,
            };
            let phase = sc.phase_at(shared.meter.since_start(begin));
            let jitter = 0.5 + unit(sc.seed, n);
            let (busy, result) = match sc.phases[phase].condition {
                Condition::Healthy => (sc.service_time.mul_f64(jitter), Ok(Resp)),
                Condition::Slow(x) => (sc.service_time.mul_f64(jitter * x), Ok(Resp)),
                Condition::Down => (sc.fail_time, Err(BackendError.into())),
                Condition::Failing(p) if unit(!sc.seed, n) < p => {
                    (sc.fail_time, Err(BackendError.into()))
                }
                Condition::Failing(_) => (sc.service_time.mul_f64(jitter), Ok(Resp)),
                Condition::RouteDown(p) if req.route < p => {
                    (sc.fail_time, Err(BackendError.into()))
                }
                Condition::RouteDown(_) | Condition::RouteHangs(_) | Condition::Shedding(_) => {
                    (sc.service_time.mul_f64(jitter), Ok(Resp))
                }
            };
            tokio::time::sleep(busy).await;
            cut.done = true;
            let done = Instant::now();
            let mut book = shared.meter.book();
            if let Some(s) = Meter::second(&mut book, req.arrived) {
                let ms = busy.as_secs_f64() * 1e3;
                if done > req.caller_gives_up {
                    s.doomed_ms_for += ms;
                } else {
                    s.useful_ms_for += ms;
                }
            }
            result
        })
    }
}

// ---------------------------------------------------------------------------
// the network hop
// ---------------------------------------------------------------------------

/// The hop between client and server: every call runs the server stack on its
/// own task, so the server keeps working after the client stops waiting (as a
/// real server does), unless the server's own layers drop the work.
/// It also counts every call that crosses it: the attempts.
#[derive(Debug, Clone)]
pub struct Network<S> {
    server: S,
    meter: Arc<Meter>,
}

/// Connects clients to servers through a counted [`Network`] hop.
#[derive(Debug, Clone)]
pub struct Wire {
    meter: Arc<Meter>,
}

impl Wire {
    /// A network hop in front of `server`.
    pub fn connect<S>(&self, server: S) -> Network<S> {
        Network {
            server,
            meter: self.meter.clone(),
        }
    }
}

impl<S> Service<Req> for Network<S>
where
    S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFut<Resp>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        {
            let at = self.meter.since_start(Instant::now());
            let mut book = self.meter.book();
            if let Some(s) = Meter::second(&mut book, at) {
                s.attempts += 1;
            }
            if let Some(s) = Meter::second(&mut book, req.arrived) {
                s.attempts_for += 1;
            }
        }
        let (tx, rx) = oneshot::channel();
        let server = self.server.clone();
        // The request's criticality travels with it, as seawall's
        // `x-seawall-criticality` header would carry it.
        let criticality = seawall::shed::criticality::current();
        tokio::spawn(async move {
            let call = server.oneshot(req);
            let result = match criticality {
                Some(c) => seawall::shed::criticality::scope(c, call).await,
                None => call.await,
            };
            let _ = tx.send(result);
        });
        Box::pin(async move { rx.await.map_err(BoxError::from)?.map_err(over_the_wire) })
    }
}

/// What a seawall server's refusal becomes on the caller's side of a wire,
/// as the protocol presets carry it: one that says when to come back (an
/// overload, a full bulkhead, an open breaker, a rate limit: 503 or 429
/// with `Retry-After`, gRPC pushback) arrives as the dependency's "busy";
/// a deadline or attempt timeout (504, `DEADLINE_EXCEEDED`) as the
/// dependency's deadline answer; one without a time (an empty retry
/// budget: gRPC's `UNAVAILABLE` without pushback) as a plain failure. The server's own rejection
/// does not cross: the caller's layers would take its refusals for their
/// own process's, never counted and never retried. Other errors (the
/// backend's, a baseline's) stand for the status a user maps them to, and
/// cross as they are.
fn over_the_wire(error: BoxError) -> BoxError {
    use seawall::error::{DeadlineExceeded, Overloaded, RejectionKind, rejection};
    let Some(r) = rejection(&*error) else {
        return error;
    };
    if r.retry_after().is_some() {
        Overloaded::new("dependency", r.retry_after()).into()
    } else if matches!(
        r.kind(),
        RejectionKind::DeadlineExceeded | RejectionKind::AttemptTimeout
    ) {
        DeadlineExceeded::new("dependency").into()
    } else {
        BoxError::from(format!("the dependency failed: {error}"))
    }
}

// ---------------------------------------------------------------------------
// modes
// ---------------------------------------------------------------------------

/// The ways the same traffic is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No timeouts, no retries, no limits: the client waits for whatever comes.
    Unprotected,
    /// What people usually write: a 1 s timeout per try and 3 retries, no
    /// backoff, no budget, no breaker.
    Naive,
    /// The best stack tower-resilience allows, tuned to the backend (see
    /// `resilience.rs`).
    TowerResilience,
    /// seawall's recommended client and server stacks.
    Seawall,
    /// The same with the client's breaker never opening (counting only):
    /// what the retry budget alone does. Not in [`Mode::ALL`].
    SeawallWithoutBreaker,
}

impl Mode {
    /// All modes, in print order.
    pub const ALL: [Mode; 4] = [
        Mode::Unprotected,
        Mode::Naive,
        Mode::TowerResilience,
        Mode::Seawall,
    ];

    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Unprotected => "unprotected",
            Mode::Naive => "naive",
            Mode::TowerResilience => "t-resilience",
            Mode::Seawall => "seawall",
            Mode::SeawallWithoutBreaker => "seawall, breaker off",
        }
    }
}

/// The client and server stacks of one mode, with a description of each.
pub struct Stacks {
    /// What the client calls.
    pub client: Stack,
    /// Printed description of the client stack.
    pub client_desc: String,
    /// Printed description of the server stack.
    pub server_desc: String,
}

impl fmt::Debug for Stacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stacks")
            .field("client", &self.client_desc)
            .field("server", &self.server_desc)
            .finish()
    }
}

/// Builds the stacks of `mode` around `backend`, with the scenario's middle
/// tiers between the client and the backend's server.
fn build(
    mode: Mode,
    scenario: &Scenario,
    wire: &Wire,
    backend: Backend,
    observer: Observer,
) -> Result<Stacks, BoxError> {
    let naive_client = |inner: Stack| -> Stack {
        Stack::new(
            ServiceBuilder::new()
                .retry(naive::Retries(3))
                .timeout(scenario.deadline)
                .service(wire.connect(inner)),
        )
    };
    let mut stacks = match mode {
        Mode::Unprotected => {
            let mut deep = Stack::new(backend);
            for _ in 0..scenario.middle_tiers {
                deep = Stack::new(wire.connect(deep));
            }
            Stacks {
                client: Stack::new(wire.connect(deep)),
                client_desc: "plain call, waits for the answer".into(),
                server_desc: "backend (unbounded queue)".into(),
            }
        }
        Mode::Naive => {
            let mut deep = Stack::new(backend);
            for _ in 0..scenario.middle_tiers {
                deep = naive_client(deep);
            }
            Stacks {
                client: naive_client(deep),
                client_desc: format!(
                    "tower Retry (3 retries, no backoff, no budget) -> tower Timeout {:?} per try",
                    scenario.deadline
                ),
                server_desc: "backend (unbounded queue)".into(),
            }
        }
        Mode::TowerResilience => resilience::stacks(scenario, wire, backend)?,
        Mode::Seawall | Mode::SeawallWithoutBreaker => {
            stacks::seawall(scenario, wire, backend, observer, mode == Mode::Seawall)?
        }
    };
    if scenario.middle_tiers > 0 {
        stacks.client_desc = format!(
            "{} (and at each of {} middle tiers)",
            stacks.client_desc, scenario.middle_tiers
        );
    }
    Ok(stacks)
}

mod naive {
    use std::future::{Ready, ready};

    use super::{Req, Resp};

    /// Retries any error, up to `n` times, immediately.
    #[derive(Debug, Clone)]
    pub struct Retries(pub usize);

    impl<E> tower::retry::Policy<Req, Resp, E> for Retries {
        type Future = Ready<()>;

        fn retry(&mut self, _req: &mut Req, result: &mut Result<Resp, E>) -> Option<Self::Future> {
            match result {
                Err(_) if self.0 > 0 => {
                    self.0 -= 1;
                    Some(ready(()))
                }
                _ => None,
            }
        }

        fn clone_request(&mut self, req: &Req) -> Option<Req> {
            Some(req.clone())
        }
    }
}

/// Names the cause of a failed request.
fn failure_label(err: &BoxError) -> &'static str {
    if let Some(r) = seawall::error::rejection_of(err) {
        return r.kind().as_str();
    }
    if let Some(label) = resilience::label(err) {
        return label;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
    while let Some(e) = cur {
        if e.is::<tower::timeout::error::Elapsed>() {
            return "timeout";
        }
        if e.is::<BackendError>() {
            return "backend_error";
        }
        cur = e.source();
    }
    "other"
}

// ---------------------------------------------------------------------------
// running
// ---------------------------------------------------------------------------

/// Everything measured in one run of one mode.
#[derive(Debug)]
pub struct Run {
    /// Which mode ran.
    pub mode: Mode,
    /// Printed description of the client stack.
    pub client_desc: String,
    /// Printed description of the server stack.
    pub server_desc: String,
    /// Per-second counters over the timeline.
    pub seconds: Vec<Second>,
    /// Every client request, in arrival order.
    pub records: Vec<Record>,
    /// State and limit changes the seawall layers reported (seconds, layer, event).
    pub events: Vec<(f64, LayerKind, EventKind)>,
}

/// Runs `mode` through `scenario` on its own paused current-thread runtime.
pub fn run(scenario: &Scenario, mode: Mode) -> Result<Run, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(run_async(scenario, mode))
}

async fn run_async(scenario: &Scenario, mode: Mode) -> Result<Run, BoxError> {
    let start = Instant::now();
    let total = scenario.total();
    let secs = total.as_secs_f64().ceil() as usize;
    let meter = Arc::new(Meter::new(start, secs));
    let backend = Backend::new(scenario.clone(), meter.clone());
    let trace = std::env::var_os("STORM_TRACE").is_some();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let observer = Observer::new(move |e: &Event<'_>| {
        let t = Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64();
        let keep = matches!(
            e.kind,
            EventKind::StateChanged { .. } | EventKind::LimitChanged { .. }
        );
        if keep {
            if trace {
                eprintln!("{t:8.3} {} {} {:?}", e.layer.as_str(), e.name, e.kind);
            }
            if let Ok(mut v) = sink.lock() {
                v.push((t, e.layer, e.kind));
            }
        }
    });
    let wire = Wire {
        meter: meter.clone(),
    };
    let stacks = build(mode, scenario, &wire, backend, observer)?;
    let arrivals = scenario.arrivals();

    for (i, offset) in arrivals.iter().enumerate() {
        let at = start + *offset;
        let criticality = scenario.critical_share.map(|share| {
            if unit(scenario.seed ^ 0xC417, i as u64) < share {
                seawall::shed::criticality::Criticality::Critical
            } else {
                seawall::shed::criticality::Criticality::Sheddable
            }
        });
        tokio::time::sleep_until(at).await;
        let arrival = offset.as_secs_f64();
        let gives_up = at + scenario.deadline;
        let req = Req {
            deadline: None,
            caller_gives_up: gives_up,
            arrived: arrival,
            route: unit(scenario.seed ^ 0x7017E, i as u64),
        };
        let client = stacks.client.clone();
        let meter = meter.clone();
        meter.client_in_flight.fetch_add(1, Ordering::Relaxed);
        {
            let mut book = meter.book();
            if let Some(s) = Meter::second(&mut book, arrival) {
                s.offered += 1;
            }
        }
        tokio::spawn(async move {
            let began = Instant::now();
            let call = client.oneshot(req);
            let result = match criticality {
                Some(c) => seawall::shed::criticality::scope(c, call).await,
                None => call.await,
            };
            let now = Instant::now();
            let end = match &result {
                Ok(_) if now <= gives_up => End::Good,
                Ok(_) => End::Late,
                Err(e) => End::Failed(failure_label(e)),
            };
            let mut book = meter.book();
            if end == End::Good {
                if let Some(s) = Meter::second(&mut book, arrival) {
                    s.good += 1;
                }
            }
            book.records.push(Record {
                arrival,
                critical: criticality == Some(seawall::shed::criticality::Criticality::Critical),
                latency: now - began,
                end,
            });
            drop(book);
            meter.client_in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    // Let every request and every backend call finish (bounded).
    let give_up = Instant::now() + Duration::from_secs(3600);
    while (meter.client_in_flight.load(Ordering::Relaxed) > 0
        || meter.backend_in_flight.load(Ordering::Relaxed) > 0)
        && Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut book = meter.book();
    let mut records = std::mem::take(&mut book.records);
    records.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Ok(Run {
        mode,
        client_desc: stacks.client_desc,
        server_desc: stacks.server_desc,
        seconds: std::mem::take(&mut book.seconds),
        records,
        events: std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner())),
    })
}

// ---------------------------------------------------------------------------
// summaries
// ---------------------------------------------------------------------------

/// The numbers of one mode over one phase (or the whole run).
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests that arrived.
    pub offered: u64,
    /// Answered successfully within the deadline.
    pub good: u64,
    /// Median latency as the caller saw it (any outcome).
    pub p50: Duration,
    /// 99th percentile latency as the caller saw it (any outcome).
    pub p99: Duration,
    /// Calls sent over the network (every hop) per client request.
    pub amplification: f64,
    /// Calls that reached the backend per client request.
    pub backend_per_request: f64,
    /// Requests that did not end well, by cause, most frequent first.
    pub failures: Vec<(&'static str, u64)>,
    /// Share of worker time spent on answers that came after the caller's deadline.
    pub doomed_share: f64,
}

impl Summary {
    /// Goodput as a fraction of offered requests.
    pub fn goodput(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            self.good as f64 / self.offered as f64
        }
    }
}

impl Run {
    /// Goodput of the requests marked critical (`true`) or not, arriving in
    /// `[from, to)` seconds.
    pub fn goodput_of(&self, critical: bool, from: f64, to: f64) -> f64 {
        let (mut offered, mut good) = (0u64, 0u64);
        for r in self
            .records
            .iter()
            .filter(|r| r.critical == critical && r.arrival >= from && r.arrival < to)
        {
            offered += 1;
            if r.end == End::Good {
                good += 1;
            }
        }
        if offered == 0 {
            0.0
        } else {
            good as f64 / offered as f64
        }
    }

    /// Summary over arrivals (and backend calls) in `[from, to)` seconds.
    pub fn summary(&self, from: f64, to: f64) -> Summary {
        let mut latencies: Vec<Duration> = Vec::new();
        let mut good = 0;
        let mut failures: Vec<(&'static str, u64)> = Vec::new();
        for r in self
            .records
            .iter()
            .filter(|r| r.arrival >= from && r.arrival < to)
        {
            latencies.push(r.latency);
            if r.end == End::Good {
                good += 1;
            } else {
                let label = r.end.label();
                match failures.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, n)) => *n += 1,
                    None => failures.push((label, 1)),
                }
            }
        }
        failures.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        latencies.sort_unstable();
        let pct = |p: f64| -> Duration {
            if latencies.is_empty() {
                Duration::ZERO
            } else {
                let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
                latencies[i - 1]
            }
        };
        let secs = &self.seconds
            [(from as usize).min(self.seconds.len())..(to.ceil() as usize).min(self.seconds.len())];
        let attempts: u64 = secs.iter().map(|s| s.attempts_for).sum();
        let backend_calls: u64 = secs.iter().map(|s| s.backend_calls_for).sum();
        let useful: f64 = secs.iter().map(|s| s.useful_ms_for).sum();
        let doomed: f64 = secs.iter().map(|s| s.doomed_ms_for).sum();
        let offered = latencies.len() as u64;
        Summary {
            offered,
            good,
            p50: pct(0.50),
            p99: pct(0.99),
            amplification: if offered == 0 {
                0.0
            } else {
                attempts as f64 / offered as f64
            },
            backend_per_request: if offered == 0 {
                0.0
            } else {
                backend_calls as f64 / offered as f64
            },
            failures,
            doomed_share: if useful + doomed > 0.0 {
                doomed / (useful + doomed)
            } else {
                0.0
            },
        }
    }

    /// Seconds from `from` until goodput per second is back to at least 90% of
    /// the offered load and stays there for `hold` seconds; `None` if it never
    /// does before the end of the timeline.
    pub fn time_to_recover(&self, from: f64, hold: usize) -> Option<f64> {
        let first = from as usize;
        let n = self.seconds.len();
        let ok = |s: &Second| s.offered == 0 || s.good as f64 >= 0.9 * s.offered as f64;
        (first..n.saturating_sub(hold - 1))
            .find(|&i| self.seconds[i..i + hold].iter().all(ok))
            .map(|i| (i - first) as f64)
    }
}
