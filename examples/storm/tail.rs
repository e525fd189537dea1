//! The heavy-tail scenario: a backend whose calls mostly take 10 ms but 5 %
//! take 200 ms (20 times the median), then a brownout where every call is
//! slow, served with and without hedging, and with tower's `Hedge` on the
//! same arrivals.
//!
//! The backend has 8 workers in front of a FIFO queue: a copy costs a
//! worker, so extra load shows up as queueing for everyone. At 200
//! requests per second it runs at about half its capacity with the tail,
//! at 90 % in the brownout (every call 36 ms): a copy of every request
//! there would need 180 %.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use seawall::BoxError;
use seawall::stack::ClientStack;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Every call's latency in the brownout: 36 ms, 90 % of the workers at
/// 200 requests per second (a copy of every request would need 180 %).
pub const BROWNOUT_MS: u64 = 36;

/// How the requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailMode {
    /// seawall's client stack with its defaults, no hedging.
    Plain,
    /// The same stack with `.hedge(|h| h)`: hedging with its defaults.
    Hedged,
    /// tower's `Timeout` (1 s) and `Hedge` at p95 (20 samples, 1 s
    /// rotation), what a tower user writes (behind a `Buffer`, as `Hedge`
    /// is not `Clone`).
    TowerHedge,
}

impl TailMode {
    /// Every mode, in table order.
    pub const ALL: [TailMode; 3] = [TailMode::Plain, TailMode::Hedged, TailMode::TowerHedge];

    /// The label in tables.
    pub fn label(self) -> &'static str {
        match self {
            TailMode::Plain => "no hedging",
            TailMode::Hedged => "seawall hedge",
            TailMode::TowerHedge => "tower Hedge",
        }
    }
}

/// The scenario's shape.
#[derive(Debug, Clone, Copy)]
pub struct Tail {
    /// Requests per second, evenly spaced.
    pub rate: u32,
    /// Seconds of the heavy tail before the brownout.
    pub tail_secs: u64,
    /// Seconds of the brownout.
    pub brownout_secs: u64,
    /// The deadline of each request.
    pub deadline: Duration,
    /// The RNG seed of the latencies.
    pub seed: u64,
}

impl Tail {
    /// The example's scenario: 30 s of the tail, 10 s of brownout.
    pub fn full() -> Self {
        Tail {
            rate: 200,
            tail_secs: 30,
            brownout_secs: 10,
            deadline: Duration::from_secs(1),
            seed: 0x7a11,
        }
    }

    /// The boundary between the phases, in seconds.
    pub fn brownout_at(&self) -> f64 {
        self.tail_secs as f64
    }

    fn total(&self) -> u64 {
        self.tail_secs + self.brownout_secs
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The backend: 8 workers behind a FIFO queue; each call's latency drawn
/// from the phase's distribution (heavy tail, then brownout).
#[derive(Clone)]
struct Backend {
    workers: Arc<Semaphore>,
    calls: Arc<AtomicU64>,
    start: Instant,
    brownout_at: Duration,
    seed: u64,
}

impl Service<u64> for Backend {
    type Response = u64;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let brownout = self.start.elapsed() >= self.brownout_at;
        let r = mix(self.seed ^ n);
        let ms = if brownout {
            BROWNOUT_MS
        } else if r % 100 < 5 {
            200
        } else {
            8 + (r >> 8) % 5 // 8..=12 ms
        };
        let workers = self.workers.clone();
        Box::pin(async move {
            let _worker = workers.acquire_owned().await?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(req)
        })
    }
}

#[derive(Clone)]
struct Repeat;

impl tower::hedge::Policy<u64> for Repeat {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }

    fn can_retry(&self, _: &u64) -> bool {
        true
    }
}

/// One request's fate.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// When it arrived, in seconds from the start.
    pub at: f64,
    /// How long the caller waited.
    pub latency: Duration,
    /// Answered successfully within the deadline.
    pub good: bool,
}

/// A mode's run.
#[derive(Debug, Clone)]
pub struct TailRun {
    /// The mode.
    pub mode: TailMode,
    /// Every request, in arrival order.
    pub requests: Vec<Outcome>,
    /// Backend calls made per second of arrivals (index: second).
    pub calls_per_sec: Vec<u64>,
}

/// Figures for requests arriving in `[from, to)` seconds.
#[derive(Debug, Clone, Copy)]
pub struct TailSummary {
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Share answered well within the deadline.
    pub goodput: f64,
    /// Backend calls per request.
    pub load: f64,
}

impl TailRun {
    /// The figures of the requests arriving in `[from, to)`.
    pub fn summary(&self, from: f64, to: f64) -> TailSummary {
        let mut lat: Vec<Duration> = self
            .requests
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .map(|r| r.latency)
            .collect();
        lat.sort();
        let n = lat.len();
        let q = |p: f64| {
            if n == 0 {
                return Duration::ZERO;
            }
            lat[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
        };
        let good = self
            .requests
            .iter()
            .filter(|r| r.at >= from && r.at < to && r.good)
            .count();
        let calls: u64 = self.calls_per_sec
            [from as usize..(to as usize).min(self.calls_per_sec.len())]
            .iter()
            .sum();
        TailSummary {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            goodput: good as f64 / n as f64,
            load: calls as f64 / n as f64,
        }
    }
}

/// Runs `mode` through `tail` in paused time.
pub fn run_tail(tail: &Tail, mode: TailMode) -> Result<TailRun, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(run_async(*tail, mode))
}

type Svc = tower::util::BoxCloneService<u64, u64, BoxError>;

async fn run_async(tail: Tail, mode: TailMode) -> Result<TailRun, BoxError> {
    let start = Instant::now();
    let calls = Arc::new(AtomicU64::new(0));
    let backend = Backend {
        workers: Arc::new(Semaphore::new(8)),
        calls: calls.clone(),
        start,
        brownout_at: Duration::from_secs(tail.tail_secs),
        seed: tail.seed,
    };
    let stack = || ClientStack::builder("tail").total_budget(tail.deadline);
    let svc: Svc = match mode {
        TailMode::Plain => Svc::new(stack().build()?.layer(backend)),
        TailMode::Hedged => Svc::new(stack().hedge(|h| h).build()?.layer(backend)),
        // `Hedge` is not `Clone`: a `Buffer` shares it between the tasks.
        TailMode::TowerHedge => Svc::new(tower::buffer::Buffer::new(
            ServiceBuilder::new()
                .timeout(tail.deadline)
                .layer_fn(|s| tower::hedge::Hedge::new(s, Repeat, 20, 0.95, Duration::from_secs(1)))
                .service(backend),
            4096,
        )),
    };
    let total = tail.total();
    let every = Duration::from_secs(1) / tail.rate;
    let mut tasks = Vec::new();
    let mut calls_per_sec = vec![0u64; total as usize + 2];
    let mut last_calls = 0;
    let mut second = 0usize;
    for i in 0..(total * u64::from(tail.rate)) {
        let at = start.elapsed().as_secs_f64();
        if at as usize > second {
            let now_calls = calls.load(Ordering::Relaxed);
            calls_per_sec[second] = now_calls - last_calls;
            last_calls = now_calls;
            second = at as usize;
        }
        let svc = svc.clone();
        let deadline = tail.deadline;
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = tokio::time::timeout(deadline, svc.oneshot(i)).await;
            let latency = t0.elapsed();
            Outcome {
                at,
                latency,
                good: matches!(r, Ok(Ok(_))) && latency <= deadline,
            }
        }));
        tokio::time::sleep(every).await;
    }
    let mut requests = Vec::with_capacity(tasks.len());
    for t in tasks {
        requests.push(t.await?);
    }
    calls_per_sec[second] += calls.load(Ordering::Relaxed) - last_calls;
    Ok(TailRun {
        mode,
        requests,
        calls_per_sec,
    })
}

/// The scenario's table: each phase, each mode.
pub fn table(tail: &Tail, runs: &[TailRun]) -> String {
    let mut out = String::new();
    let phases = [
        ("heavy tail", 0.0, tail.brownout_at()),
        ("brownout", tail.brownout_at(), tail.total() as f64),
    ];
    for (name, from, to) in phases {
        out.push_str(&format!(
            "  {name:<10} | {:<13} | {:>7} | {:>7} | {:>7} | {:>7} | {:>14}\n",
            "mode", "p50", "p99", "p99.9", "goodput", "calls/request"
        ));
        for run in runs {
            let s = run.summary(from, to);
            out.push_str(&format!(
                "  {:<10} | {:<13} | {:>7} | {:>7} | {:>7} | {:>6.1}% | {:>14.3}\n",
                "",
                run.mode.label(),
                format!("{:.0?}", s.p50),
                format!("{:.0?}", s.p99),
                format!("{:.0?}", s.p999),
                s.goodput * 100.0,
                s.load
            ));
        }
    }
    out
}
