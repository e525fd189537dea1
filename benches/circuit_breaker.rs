//! Circuit breaker overhead in the closed state: seawall side by side with
//! tower-resilience's circuit breaker and failsafe, on one thread and with two
//! threads contending for one breaker; and the cost per call of seawall's time
//! window for a 1 s and a 600 s span after 100 000 calls (it must be flat).
//!
//! Run: `cargo bench --bench circuit_breaker -- --noplot`

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::configure;
use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::futures::CircuitBreaker as _;
use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use tower::{Layer, Service, ServiceExt, service_fn};

fn ok(i: u64) -> Ready<Result<u64, Infallible>> {
    ready(Ok(i))
}

/// The baseline plus the two clock reads a breaker needs per call to time
/// it (for slow-call detection): on machines where reading the clock is a
/// system call, they dominate every breaker's cost.
fn ok_after_two_clock_reads(i: u64) -> Ready<Result<u64, Infallible>> {
    black_box(tokio::time::Instant::now());
    black_box(tokio::time::Instant::now());
    ready(Ok(i))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn seawall_svc(
    window: SlidingWindow,
) -> impl Service<u64, Response = u64, Error: std::fmt::Debug> + Clone + Send + 'static {
    let layer = CircuitBreakerLayer::builder()
        .window(window)
        .build()
        .expect("valid configuration");
    layer.layer(service_fn(ok))
}

fn tower_resilience_svc()
-> impl Service<u64, Response = u64, Error: std::fmt::Debug> + Clone + Send + 'static {
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(100)
        .build()
        .expect("valid configuration");
    layer.layer(service_fn(ok))
}

/// `iters` calls through `svc`, one at a time.
async fn drive<S>(svc: &mut S, iters: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..iters {
        let ready = match svc.ready().await {
            Ok(s) => s,
            Err(_) => panic!("not ready"),
        };
        let out = ready.call(black_box(i)).await;
        black_box(out.is_ok());
    }
}

type Failsafe = failsafe::StateMachine<
    failsafe::failure_policy::OrElse<
        failsafe::failure_policy::SuccessRateOverTimeWindow<failsafe::backoff::EqualJittered>,
        failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::EqualJittered>,
    >,
    (),
>;

/// `iters` calls through a failsafe breaker, one at a time.
async fn drive_failsafe(cb: &Failsafe, iters: u64) {
    for i in 0..iters {
        let out = cb.call(ok(black_box(i))).await;
        black_box(out.is_ok());
    }
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn one_thread<S>(g: &mut Group<'_>, rt: &tokio::runtime::Runtime, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                drive(&mut svc, iters).await;
                start.elapsed()
            })
        })
    });
}

/// Runs `work` on two threads at once (each with its own current-thread
/// runtime) and returns the slower thread's time.
fn on_two_threads<T, F, Fut>(make: impl Fn() -> T, iters: u64, work: F) -> Duration
where
    T: Send + 'static,
    F: Fn(T, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let subject = make();
            let barrier = barrier.clone();
            let work = work.clone();
            std::thread::spawn(move || {
                let rt = runtime();
                barrier.wait();
                let start = std::time::Instant::now();
                rt.block_on(work(subject, iters));
                start.elapsed()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

fn two_threads<S>(g: &mut Group<'_>, name: &str, svc: S)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                || svc.clone(),
                iters,
                |mut svc: S, n| async move { drive(&mut svc, n).await },
            )
        })
    });
}

fn closed_current_thread(c: &mut Criterion) {
    let rt = runtime();
    let mut g = configure(c, "circuit_breaker/closed_current_thread");
    one_thread(&mut g, &rt, "baseline_service_fn", service_fn(ok));
    one_thread(
        &mut g,
        &rt,
        "baseline_two_clock_reads",
        service_fn(ok_after_two_clock_reads),
    );
    one_thread(
        &mut g,
        &rt,
        "seawall_count_100",
        seawall_svc(SlidingWindow::count(100)),
    );
    one_thread(
        &mut g,
        &rt,
        "seawall_time_60s",
        seawall_svc(SlidingWindow::time(Duration::from_secs(60))),
    );
    one_thread(
        &mut g,
        &rt,
        "tower_resilience_count_100",
        tower_resilience_svc(),
    );
    let cb: Failsafe = failsafe::Config::new().build();
    g.bench_function("failsafe_default", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                drive_failsafe(&cb, iters).await;
                start.elapsed()
            })
        })
    });
    g.finish();
}

/// Two threads share one breaker. The reported time is per iteration, where
/// one iteration is one call on each thread at once.
fn contended_2_threads(c: &mut Criterion) {
    let mut g = configure(c, "circuit_breaker/contended_2_threads");
    two_threads(&mut g, "baseline_service_fn", service_fn(ok));
    two_threads(
        &mut g,
        "seawall_count_100",
        seawall_svc(SlidingWindow::count(100)),
    );
    two_threads(
        &mut g,
        "seawall_time_60s",
        seawall_svc(SlidingWindow::time(Duration::from_secs(60))),
    );
    two_threads(&mut g, "tower_resilience_count_100", tower_resilience_svc());
    let cb: Failsafe = failsafe::Config::new().build();
    g.bench_function("failsafe_default", |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                || cb.clone(),
                iters,
                |cb: Failsafe, n| async move { drive_failsafe(&cb, n).await },
            )
        })
    });
    g.finish();
}

/// Seawall's windows after 100 000 calls: a 1 s and a 600 s time window (the
/// 1 s one rotates its buckets during the measurement), and count windows of
/// 100 and 100 000 calls. The cost per call must not depend on the span or
/// the window size.
fn window_flatness(c: &mut Criterion) {
    let rt = runtime();
    let mut g = configure(c, "circuit_breaker/window_after_100k_calls");
    for (name, window) in [
        ("time_1s", SlidingWindow::time(Duration::from_secs(1))),
        ("time_600s", SlidingWindow::time(Duration::from_secs(600))),
        ("count_100", SlidingWindow::count(100)),
        ("count_100000", SlidingWindow::count(100_000)),
    ] {
        let mut svc = seawall_svc(window);
        rt.block_on(drive(&mut svc, 100_000));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = std::time::Instant::now();
                    drive(&mut svc, iters).await;
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    closed_current_thread,
    contended_2_threads,
    window_flatness
);
criterion_main!(benches);
