//! Overhead of the adaptive concurrency limit per call, side by side with
//! tower's `ConcurrencyLimit` + `LoadShed` and tower-resilience's adaptive
//! limiter, over an immediate inner service. Calls are polled by hand (no
//! runtime), single-threaded and with 2 threads sharing one limiter.
//!
//! `cargo bench --bench shed -- --noplot`

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use seawall::shed::{AdaptiveLimitLayer, ThrottleLayer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder};
use tower_resilience::adaptive::{AdaptiveLimiterLayer, Aimd as TrAimd};

#[derive(Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

#[inline]
fn call_once<S: Service<u64, Response = u64>>(svc: &mut S, req: u64) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(v)) => v,
        _ => panic!("rejected or pending"),
    }
}

fn seawall_default() -> impl Service<u64, Response = u64> + Clone + Send {
    AdaptiveLimitLayer::builder().build().unwrap().layer(Echo)
}

/// Every call is an RTT sample (min RTT 0): the window atomics are updated
/// on each completion and a window closes every second.
fn seawall_sampled() -> impl Service<u64, Response = u64> + Clone + Send {
    AdaptiveLimitLayer::builder()
        .min_rtt(Duration::ZERO)
        .build()
        .unwrap()
        .layer(Echo)
}

fn tower_limit_shed() -> impl Service<u64, Response = u64> + Clone + Send {
    ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(200)
        .service(Echo)
}

fn tower_resilience_adaptive() -> impl Service<u64, Response = u64> + Clone + Send {
    let aimd = TrAimd::builder()
        .initial_limit(20)
        .min_limit(20)
        .max_limit(200)
        .build()
        .unwrap();
    AdaptiveLimiterLayer::new(aimd).layer(Echo)
}

fn seawall_throttle() -> impl Service<u64, Response = u64> + Clone + Send {
    ThrottleLayer::builder()
        .seed(1)
        .build()
        .unwrap()
        .layer(Echo)
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("shed/single_thread");
    macro_rules! bench {
        ($name:literal, $svc:expr) => {{
            let mut svc = $svc;
            let mut i = 0u64;
            g.bench_function($name, |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    black_box(call_once(&mut svc, black_box(i)))
                })
            });
        }};
    }
    bench!("baseline (no layer)", Echo);
    bench!("seawall adaptive limit (gradient2)", seawall_default());
    bench!(
        "seawall adaptive limit (every call sampled)",
        seawall_sampled()
    );
    bench!("tower concurrency_limit + load_shed", tower_limit_shed());
    bench!(
        "tower-resilience adaptive (aimd)",
        tower_resilience_adaptive()
    );
    bench!("seawall throttle", seawall_throttle());
    g.finish();
}

/// Two threads, each with its own clone of one service (one shared limiter),
/// make `iters` calls each; the time is per pair of concurrent calls.
fn contended_run<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send,
{
    let barrier = Barrier::new(3);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let mut svc = svc.clone();
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    black_box(call_once(&mut svc, black_box(i)));
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("shed/two_threads");
    macro_rules! bench {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            g.bench_function($name, |b| b.iter_custom(|iters| contended_run(&svc, iters)));
        }};
    }
    bench!("baseline (no layer)", Echo);
    bench!("seawall adaptive limit (gradient2)", seawall_default());
    bench!(
        "seawall adaptive limit (every call sampled)",
        seawall_sampled()
    );
    bench!("tower concurrency_limit + load_shed", tower_limit_shed());
    bench!(
        "tower-resilience adaptive (aimd)",
        tower_resilience_adaptive()
    );
    bench!("seawall throttle", seawall_throttle());
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = single, contended
}
criterion_main!(benches);
