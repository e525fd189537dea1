//! Overhead per call of the timeout-budget layers on a no-op service,
//! side by side with tower's `Timeout` and tower-resilience's `TimeLimiter`.
//!
//! Every call is `poll_ready` + `call` + one poll of the response future, by
//! hand, on a thread that has entered a tokio runtime with time enabled (the
//! layers create tokio timers). The no-op service answers at once.
//!
//! Groups:
//! - `deadline/current_thread`: one thread.
//! - `deadline/contended_2_threads`: two threads, each with its own clone of
//!   services built from one layer, calling at the same time; the time
//!   reported is wall time per call per thread.

#[path = "common/mod.rs"]
mod common;

use std::sync::Barrier;
use std::task::{Context, Waker};
use std::time::Duration;

use common::{noop, one_call, runtime};
use criterion::{Criterion, criterion_group, criterion_main};
use seawall::deadline::{AttemptTimeoutLayer, DeadlineLayer};
use tower::Layer;

/// The contenders, each a factory of services sharing one layer.
#[derive(Clone, Copy)]
enum Kind {
    Baseline,
    Deadline,
    Attempt,
    Both,
    TowerTimeout,
    TimeLimiter,
}

const KINDS: [(Kind, &str); 6] = [
    (Kind::Baseline, "no_layer"),
    (Kind::Deadline, "seawall_deadline"),
    (Kind::Attempt, "seawall_attempt_timeout"),
    (Kind::Both, "seawall_deadline+attempt_timeout"),
    (Kind::TowerTimeout, "tower_timeout"),
    (Kind::TimeLimiter, "tower_resilience_timelimiter"),
];

/// Runs `iters` calls through a service of `kind` (built from `layers`).
fn run(kind: Kind, layers: &Layers, iters: u64) {
    let mut cx = Context::from_waker(Waker::noop());
    macro_rules! go {
        ($svc:expr) => {{
            let mut svc = $svc;
            for i in 0..iters {
                one_call(&mut svc, &mut cx, i);
            }
        }};
    }
    match kind {
        Kind::Baseline => go!(noop()),
        Kind::Deadline => go!(layers.deadline.layer(noop())),
        Kind::Attempt => go!(layers.attempt.layer(noop())),
        Kind::Both => go!(layers.deadline.layer(layers.attempt.layer(noop()))),
        Kind::TowerTimeout => go!(layers.tower.layer(noop())),
        Kind::TimeLimiter => go!(layers.limiter.layer(noop())),
    }
}

struct Layers {
    deadline: DeadlineLayer,
    attempt: AttemptTimeoutLayer,
    tower: tower::timeout::TimeoutLayer,
    limiter: tower_resilience::timelimiter::TimeLimiterLayer<
        tower_resilience::timelimiter::FixedTimeout,
    >,
}

fn layers() -> Layers {
    Layers {
        deadline: DeadlineLayer::new(Duration::from_secs(1)).unwrap(),
        attempt: AttemptTimeoutLayer::new(Duration::from_millis(300)).unwrap(),
        tower: tower::timeout::TimeoutLayer::new(Duration::from_secs(1)),
        limiter: tower_resilience::timelimiter::TimeLimiterLayer::builder()
            .timeout_duration(Duration::from_secs(1))
            .build(),
    }
}

fn current_thread(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let layers = layers();
    let mut group = c.benchmark_group("deadline/current_thread");
    for (kind, name) in KINDS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = tokio::time::Instant::now();
                run(kind, &layers, iters);
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn contended(c: &mut Criterion) {
    let layers = layers();
    let mut group = c.benchmark_group("deadline/contended_2_threads");
    for (kind, name) in KINDS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(2);
                let times: Vec<Duration> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..2)
                        .map(|_| {
                            let (layers, barrier) = (&layers, &barrier);
                            s.spawn(move || {
                                let rt = runtime();
                                let _guard = rt.enter();
                                barrier.wait();
                                let start = tokio::time::Instant::now();
                                run(kind, layers, iters);
                                start.elapsed()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("bench thread"))
                        .collect()
                });
                times.into_iter().max().unwrap_or_default()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = current_thread, contended
}
criterion_main!(benches);
