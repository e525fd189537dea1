//! Per-call overhead of rate limiting: seawall (global and keyed) side by side
//! with tower's `RateLimit`, governor used directly, and tower-resilience's
//! rate limiter; single-threaded and with two threads contending for one
//! limiter. Quotas are huge so every call is admitted: this measures the
//! admission path.

#[path = "common/mod.rs"]
mod common;
/// governor's limiters on tokio's clock (the crate's own test clock).
#[path = "../src/rate_limit/clock.rs"]
mod tokio_clock;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{Quota as GovQuota, RateLimiter as GovLimiter};
use seawall::rate_limit::{Key, Quota, RateLimitLayer};
use tokio_clock::TokioClock;
use tower::{Layer, Service};

const BIG: u32 = 1_000_000_000;

fn echo() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = std::future::Ready<Result<u64, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x)))
}

/// One call, polled by hand (every future here completes on its first poll).
#[inline]
fn drive<S: Service<u64>>(svc: &mut S, x: u64) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(_)) => return false,
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    let mut fut = pin!(svc.call(x));
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => return r.is_ok(),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

fn seawall_global() -> impl Service<u64, Response = u64> + Clone + Send {
    RateLimitLayer::builder(Quota::new(BIG, Duration::from_secs(1)))
        .build()
        .unwrap()
        .layer(echo())
}

fn seawall_keyed() -> impl Service<u64, Response = u64> + Clone + Send {
    RateLimitLayer::builder(Quota::new(BIG, Duration::from_secs(1)))
        .keyed(|x: &u64| Some(Key::from_u64(*x & 1023)))
        .build()
        .unwrap()
        .layer(echo())
}

fn tower_rate() -> impl Service<u64, Response = u64> {
    tower::limit::RateLimitLayer::new(u64::from(BIG), Duration::from_secs(1)).layer(echo())
}

fn resilience() -> impl Service<u64, Response = u64> + Clone + Send {
    tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(BIG as usize)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::ZERO)
        .build()
        .unwrap()
        .layer(echo())
}

fn gov_quota() -> GovQuota {
    GovQuota::per_second(NonZeroU32::new(BIG).unwrap())
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // No runtime context while measuring: tokio's `Instant::now()` then reads
    // the OS clock directly, as in production builds (with tokio's
    // `test-util`, enabled for this crate's tests, a clock read inside a
    // runtime context goes through the runtime's clock lock).
    let mut g = c.benchmark_group("rate_limit/current_thread");

    let mut plain = echo();
    g.bench_function("baseline (no limiter)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(drive(&mut plain, i))
        })
    });
    let mut s = seawall_global();
    g.bench_function("seawall global", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(drive(&mut s, i))
        })
    });
    let mut s = seawall_keyed();
    g.bench_function("seawall keyed (1024 keys)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(drive(&mut s, i))
        })
    });
    // tower's RateLimit creates its timer at construction: that needs the runtime.
    let mut s = {
        let _enter = rt.enter();
        tower_rate()
    };
    g.bench_function("tower RateLimit", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(drive(&mut s, i))
        })
    });
    let mut s = resilience();
    g.bench_function("tower-resilience ratelimiter", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(drive(&mut s, i))
        })
    });
    let direct = GovLimiter::direct(gov_quota());
    g.bench_function("governor direct (quanta clock)", |b| {
        b.iter(|| black_box(direct.check().is_ok()))
    });
    let direct_tokio = GovLimiter::direct_with_clock(gov_quota(), TokioClock::new());
    g.bench_function("governor direct (tokio clock)", |b| {
        b.iter(|| black_box(direct_tokio.check().is_ok()))
    });
    let keyed = GovLimiter::keyed(gov_quota());
    g.bench_function("governor keyed dashmap (1024 keys)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(keyed.check_key(&(i & 1023)).is_ok())
        })
    });
    g.finish();
}

/// Two threads call clones of one limiter; reports the time per call per
/// thread.
fn contended<S, F>(iters: u64, make: F) -> Duration
where
    F: Fn() -> S,
    S: Service<u64> + Send,
{
    let mut a = make();
    let mut b = make();
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..iters {
                black_box(drive(&mut a, i));
            }
        });
        scope.spawn(|| {
            for i in 0..iters {
                black_box(drive(&mut b, i));
            }
        });
    });
    start.elapsed()
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit/2_threads_contended");
    let s = seawall_global();
    g.bench_function("seawall global", |b| {
        b.iter_custom(|iters| contended(iters, || s.clone()))
    });
    let s = seawall_keyed();
    g.bench_function("seawall keyed (1024 keys)", |b| {
        b.iter_custom(|iters| contended(iters, || s.clone()))
    });
    let s = resilience();
    g.bench_function("tower-resilience ratelimiter", |b| {
        b.iter_custom(|iters| contended(iters, || s.clone()))
    });
    let direct = GovLimiter::direct_with_clock(gov_quota(), TokioClock::new());
    g.bench_function("governor direct (tokio clock)", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        for _ in 0..iters {
                            black_box(direct.check().is_ok());
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    let keyed = GovLimiter::keyed(gov_quota());
    g.bench_function("governor keyed dashmap (1024 keys)", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        for i in 0..iters {
                            black_box(keyed.check_key(&(i & 1023)).is_ok());
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = single_thread, two_threads
}
criterion_main!(benches);
