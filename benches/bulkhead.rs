//! Overhead per admitted call of the bulkhead on a no-op service, side by side
//! with tower's `ConcurrencyLimit` (alone and under `LoadShed`, tower's
//! closest equivalent of a reject-when-full bulkhead) and tower-resilience's
//! bulkhead.
//!
//! Every call is `poll_ready` + `call` + one poll of the response future, by
//! hand, on a thread that has entered a tokio runtime with time enabled. The
//! no-op service answers at once, so every call finds a free permit (the
//! admitted path); the limit is 100 for everyone.
//!
//! Groups:
//! - `bulkhead/current_thread`: one thread.
//! - `bulkhead/contended_2_threads`: two threads, each with its own clone of a
//!   service built from one layer (so both hit the same permits), calling at
//!   the same time; the time reported is wall time per call per thread.

#[path = "common/mod.rs"]
mod common;

use std::sync::Barrier;
use std::task::{Context, Waker};
use std::time::Duration;

use common::{noop, one_call, runtime};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;

const LIMIT: usize = 100;

#[derive(Clone, Copy)]
enum Kind {
    Baseline,
    Seawall,
    SeawallBackpressure,
    SeawallCodel,
    TowerLimit,
    TowerLimitShed,
    Resilience,
}

const KINDS: [(Kind, &str); 7] = [
    (Kind::Baseline, "no_layer"),
    (Kind::Seawall, "seawall_bulkhead"),
    (Kind::SeawallBackpressure, "seawall_bulkhead_backpressure"),
    (Kind::SeawallCodel, "seawall_bulkhead_codel_queue"),
    (Kind::TowerLimit, "tower_concurrency_limit"),
    (Kind::TowerLimitShed, "tower_load_shed+concurrency_limit"),
    (Kind::Resilience, "tower_resilience_bulkhead"),
];

/// The layers, built once per benchmark so threads share their state.
struct Layers {
    seawall: seawall::bulkhead::BulkheadLayer,
    seawall_backpressure: seawall::bulkhead::BulkheadLayer,
    seawall_codel: seawall::bulkhead::BulkheadLayer,
    tower_limit: tower::limit::GlobalConcurrencyLimitLayer,
    resilience: tower_resilience::bulkhead::BulkheadLayer,
}

impl Layers {
    fn new() -> Self {
        use seawall::bulkhead::{BulkheadLayer, QueueOrder};
        Layers {
            seawall: BulkheadLayer::builder()
                .max_concurrent(LIMIT)
                .build()
                .expect("bulkhead"),
            seawall_backpressure: BulkheadLayer::builder()
                .max_concurrent(LIMIT)
                .backpressure(true)
                .build()
                .expect("bulkhead"),
            seawall_codel: BulkheadLayer::builder()
                .max_concurrent(LIMIT)
                .max_queue(1000)
                .queue_order(QueueOrder::Codel)
                .build()
                .expect("bulkhead"),
            tower_limit: tower::limit::GlobalConcurrencyLimitLayer::new(LIMIT),
            resilience: tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(LIMIT)
                .build()
                .expect("tower-resilience bulkhead"),
        }
    }
}

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
        Kind::Seawall => go!(layers.seawall.layer(noop())),
        Kind::SeawallBackpressure => go!(layers.seawall_backpressure.layer(noop())),
        Kind::SeawallCodel => go!(layers.seawall_codel.layer(noop())),
        Kind::TowerLimit => go!(layers.tower_limit.layer(noop())),
        Kind::TowerLimitShed => {
            go!(tower::load_shed::LoadShedLayer::new().layer(layers.tower_limit.layer(noop())))
        }
        Kind::Resilience => go!(layers.resilience.layer(noop())),
    }
}

fn current_thread(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let layers = Layers::new();
    let mut group = c.benchmark_group("bulkhead/current_thread");
    for (kind, name) in KINDS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                run(kind, &layers, iters);
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn contended(c: &mut Criterion) {
    let layers = Layers::new();
    let mut group = c.benchmark_group("bulkhead/contended_2_threads");
    for (kind, name) in KINDS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(2);
                let times: Vec<Duration> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..2)
                        .map(|_| {
                            s.spawn(|| {
                                let rt = runtime();
                                let _guard = rt.enter();
                                barrier.wait();
                                let start = std::time::Instant::now();
                                run(kind, &layers, iters);
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
