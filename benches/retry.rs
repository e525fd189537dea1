//! Overhead of a first-try success through a retry layer: seawall's
//! `RetryLayer` side by side with tower's `Retry` (a trivial policy) and
//! tower-resilience's retry, plus the bare service, on a current-thread
//! runtime and with two threads contending for one layer's shared state.
//!
//! Run: `cargo bench --bench retry -- --noplot`

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use seawall::BoxError;
use tower::{Layer, Service, ServiceExt};

#[derive(Clone)]
struct Trivial;

impl tower::retry::Policy<u32, u32, BoxError> for Trivial {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut u32,
        result: &mut Result<u32, BoxError>,
    ) -> Option<Self::Future> {
        result.is_err().then(|| std::future::ready(()))
    }

    fn clone_request(&mut self, req: &u32) -> Option<u32> {
        Some(*req)
    }
}

fn inner() -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = std::future::Ready<Result<u32, BoxError>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|x: u32| std::future::ready(Ok::<u32, BoxError>(x)))
}

/// Runs `iters` calls on one service and returns the time taken.
async fn run<S>(mut svc: S, iters: u64) -> Duration
where
    S: Service<u32, Response = u32>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let r = svc.ready().await.unwrap().call(i as u32).await.unwrap();
        black_box(r);
    }
    start.elapsed()
}

macro_rules! contenders {
    ($f:ident) => {{
        $f!("bare service", inner());
        $f!(
            "seawall RetryLayer",
            seawall::retry::RetryLayer::new().layer(inner())
        );
        $f!(
            "tower Retry",
            tower::retry::RetryLayer::new(Trivial).layer(inner())
        );
        $f!(
            "tower-resilience retry",
            tower_resilience::retry::RetryLayer::<u32, u32, BoxError>::builder()
                .max_attempts(3)
                .build()
                .layer(inner())
        );
    }};
}

fn current_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("retry_first_try_success/current_thread");
    macro_rules! bench {
        ($name:expr, $svc:expr) => {
            let svc = $svc;
            group.bench_function($name, |b| {
                b.iter_custom(|iters| rt.block_on(run(svc.clone(), iters)))
            });
        };
    }
    contenders!(bench);
    group.finish();
}

fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("retry_first_try_success/contended_2_threads");
    macro_rules! bench {
        ($name:expr, $svc:expr) => {
            let svc = $svc;
            group.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    let (a, z) = (svc.clone(), svc.clone());
                    rt.block_on(async move {
                        let start = Instant::now();
                        let t1 = tokio::spawn(run(a, iters / 2 + 1));
                        let t2 = tokio::spawn(run(z, iters / 2 + 1));
                        t1.await.unwrap();
                        t2.await.unwrap();
                        start.elapsed()
                    })
                })
            });
        };
    }
    contenders!(bench);
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = current_thread, contended
}
criterion_main!(benches);
