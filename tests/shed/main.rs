#![cfg(feature = "shed")]
//! Load shedding: goodput under overload, priorities, doomed work, client
//! throttling, limit events. All in paused time.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall::deadline::{self, Deadline};
use seawall::error::{BoxError, Overloaded, RejectionKind, rejection_of};
use seawall::observe::{EventKind, LayerKind, Observer, Recorder};
use seawall::shed::criticality::{self, Criticality};
use seawall::shed::{AdaptiveLimitLayer, Aimd, Gradient2, ThrottleLayer};
use tokio::time::{Instant, sleep, timeout};
use tower::{BoxError as TowerBoxError, Layer, Service, ServiceExt, service_fn};

const CAPACITY: usize = 100;
const BASE: Duration = Duration::from_millis(50);
const DEADLINE: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A backend of fixed capacity: up to `CAPACITY` concurrent calls take
/// `BASE`; past it, each call takes `BASE × inflight / CAPACITY` (the work is
/// shared, throughput stays at CAPACITY / BASE = 2000/s). A cancelled call
/// stops using the backend.
#[derive(Clone)]
struct Backend {
    inflight: Arc<AtomicUsize>,
}

struct Slot(Arc<AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<R> Service<R> for Backend {
    type Response = ();
    type Error = TowerBoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<(), TowerBoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        let n = self.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot(self.inflight.clone());
        let factor = (n as f64 / CAPACITY as f64).max(1.0);
        Box::pin(async move {
            sleep(BASE.mul_f64(factor)).await;
            drop(slot);
            Ok(())
        })
    }
}

fn backend() -> Backend {
    Backend {
        inflight: Arc::new(AtomicUsize::new(0)),
    }
}

#[derive(Default)]
struct ClassStats {
    ok: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
}

impl ClassStats {
    fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
            + self.timed_out.load(Ordering::Relaxed)
    }
    fn success(&self) -> f64 {
        self.ok.load(Ordering::Relaxed) as f64 / self.total().max(1) as f64
    }
}

struct Stats {
    classes: [ClassStats; 4],
    /// Latency histogram of admitted, answered calls, 1 ms buckets.
    latency_ms: Vec<AtomicU64>,
}

impl Stats {
    fn new() -> Arc<Self> {
        Arc::new(Stats {
            classes: Default::default(),
            latency_ms: (0..=2000).map(|_| AtomicU64::new(0)).collect(),
        })
    }
    fn ok(&self) -> u64 {
        self.classes.iter().map(|c| c.ok.load(Ordering::Relaxed)).sum()
    }
    fn rejected(&self) -> u64 {
        self.classes.iter().map(|c| c.rejected.load(Ordering::Relaxed)).sum()
    }
    fn timed_out(&self) -> u64 {
        self.classes.iter().map(|c| c.timed_out.load(Ordering::Relaxed)).sum()
    }
    fn p99_ms(&self) -> u64 {
        let total: u64 = self.latency_ms.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        let target = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (ms, b) in self.latency_ms.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return ms as u64;
            }
        }
        u64::MAX
    }
}

/// Open-loop load: `per_ms` requests every millisecond for `duration`, each
/// with a 1 s deadline (the caller gives up then). Only requests started
/// after `warmup` are counted.
async fn open_loop<S>(
    svc: S,
    per_ms: usize,
    duration: Duration,
    warmup: Duration,
    class_of: fn(u64) -> Criticality,
) -> Arc<Stats>
where
    S: Service<Criticality, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let stats = Stats::new();
    let start = Instant::now();
    let mut tick = tokio::time::interval(ms(1));
    let mut i = 0u64;
    while start.elapsed() < duration {
        tick.tick().await;
        let counted = start.elapsed() >= warmup;
        for _ in 0..per_ms {
            let class = class_of(i);
            i += 1;
            let svc = svc.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let call = svc.oneshot(class);
                let res = deadline::scope(Deadline::after(DEADLINE), timeout(DEADLINE, call)).await;
                if !counted {
                    return;
                }
                let c = &stats.classes[class as usize];
                match res {
                    Ok(Ok(())) => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                        let l = t0.elapsed().as_millis().min(2000) as usize;
                        stats.latency_ms[l].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        assert_eq!(rejection_of(&e).unwrap().kind(), RejectionKind::Overloaded);
                        c.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        c.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
    sleep(DEADLINE + ms(100)).await;
    stats
}

fn all_critical(_: u64) -> Criticality {
    Criticality::Critical
}

#[tokio::test(start_paused = true)]
async fn goodput_stays_near_capacity_under_4x_overload() {
    const SECS: u64 = 30;
    const WARMUP: u64 = 15;
    let measured = (SECS - WARMUP) as f64;
    let capacity_per_s = CAPACITY as f64 / BASE.as_secs_f64(); // 2000/s

    // Without a limit.
    let plain = tower::util::MapErrLayer::new(Into::<BoxError>::into).layer(backend());
    let unprotected = open_loop(plain, 8, Duration::from_secs(SECS), Duration::from_secs(WARMUP), all_critical).await;
    let goodput_plain = unprotected.ok() as f64 / measured;

    // With the adaptive limit (Gradient2, defaults but 100 ms windows).
    let limit = AdaptiveLimitLayer::builder()
        .window(ms(100))
        .build()
        .unwrap();
    let protected = open_loop(limit.layer(backend()), 8, Duration::from_secs(SECS), Duration::from_secs(WARMUP), all_critical).await;
    let goodput = protected.ok() as f64 / measured;
    let p99 = protected.p99_ms();

    println!(
        "offered 8000/s, capacity {capacity_per_s}/s; without limit: goodput {goodput_plain:.0}/s \
         ({:.1}%), timed out {}; with adaptive limit: goodput {goodput:.0}/s ({:.1}%), \
         rejected {}, timed out {}, p99 {p99} ms, final limit {}",
        100.0 * goodput_plain / capacity_per_s,
        unprotected.timed_out(),
        100.0 * goodput / capacity_per_s,
        protected.rejected(),
        protected.timed_out(),
        limit.limit(),
    );
    assert!(goodput >= 0.9 * capacity_per_s, "goodput {goodput}");
    assert!(p99 < DEADLINE.as_millis() as u64, "p99 {p99} ms");
    assert_eq!(protected.timed_out(), 0);
    assert!(goodput_plain < 0.1 * capacity_per_s, "goodput without limit {goodput_plain}");
    assert_eq!(limit.inflight(), 0);
}

/// 5 % CriticalPlus, 10 % Critical, 25 % SheddablePlus, 60 % Sheddable,
/// interleaved (37 is coprime with 100).
fn mixed(i: u64) -> Criticality {
    match (i * 37) % 100 {
        0..5 => Criticality::CriticalPlus,
        5..15 => Criticality::Critical,
        15..40 => Criticality::SheddablePlus,
        _ => Criticality::Sheddable,
    }
}

#[tokio::test(start_paused = true)]
async fn critical_requests_survive_3x_overload() {
    let limit = AdaptiveLimitLayer::builder()
        .window(ms(100))
        .criticality(|c: &Criticality| *c)
        .build()
        .unwrap();
    let stats = open_loop(limit.layer(backend()), 6, Duration::from_secs(30), Duration::from_secs(15), mixed).await;
    let rate = |c: Criticality| stats.classes[c as usize].success();
    let rejected = |c: Criticality| stats.classes[c as usize].rejected.load(Ordering::Relaxed);
    println!(
        "success: critical_plus {:.4}, critical {:.4}, sheddable_plus {:.4}, sheddable {:.4}; \
         rejected: {} / {} / {} / {}; final limit {}",
        rate(Criticality::CriticalPlus),
        rate(Criticality::Critical),
        rate(Criticality::SheddablePlus),
        rate(Criticality::Sheddable),
        rejected(Criticality::CriticalPlus),
        rejected(Criticality::Critical),
        rejected(Criticality::SheddablePlus),
        rejected(Criticality::Sheddable),
        limit.limit(),
    );
    assert!(rate(Criticality::CriticalPlus) >= 0.99);
    assert!(rate(Criticality::Critical) >= 0.99);
    assert!(rate(Criticality::SheddablePlus) > rate(Criticality::Sheddable));
    // Sheddable requests absorb the rejections: at 3× load about two thirds
    // of all requests must go, and the two sheddable classes take ≥ 99 % of them.
    let total_rejected = stats.rejected();
    let sheddable = rejected(Criticality::SheddablePlus) + rejected(Criticality::Sheddable);
    assert!(sheddable as f64 >= 0.99 * total_rejected as f64);
    assert_eq!(stats.timed_out(), 0);
}
