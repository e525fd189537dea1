//! Overhead per call of the recommended stacks and of each of their layers,
//! on a no-op service: seawall side by side with tower's built-ins and
//! tower-resilience, in one run.
//!
//! Every call is `ready().await` + `call().await` on a current-thread tokio
//! runtime (time enabled); the no-op service answers at once, so every call
//! is admitted and succeeds at its first attempt. Groups:
//!
//! - `stack/current_thread`: one thread.
//! - `stack/contended_2_threads`: two threads, each with its own runtime and
//!   its own clone of services built from one layer (so they contend for the
//!   layer's shared state), calling at the same time; the time reported is
//!   the slower thread's wall time per call.
//!
//! Equivalents: tower has no circuit breaker; its closest bulkhead is
//! `LoadShed` over `GlobalConcurrencyLimit`; its `RateLimit` is not `Clone`
//! (each service has its own), so it is left out of the contended group.
//!
//! Run: `cargo bench --bench stack -- --noplot`

#[path = "common/mod.rs"]
mod common;
#[macro_use]
#[path = "common/contenders.rs"]
mod contenders;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{configure, runtime};
use contenders::*;
use criterion::{Criterion, criterion_group, criterion_main};
use seawall::BoxError;
use tower::{Layer, Service, ServiceBuilder};

fn current_thread(c: &mut Criterion) {
    let rt = runtime();
    let mut g = configure(c, "stack/current_thread");
    macro_rules! one {
        (@single $name:expr, $make:expr) => {
            one!($name, $make)
        };
        ($name:expr, $make:expr) => {{
            // Built inside the runtime: some services create timers when made.
            let mut svc = {
                let _enter = rt.enter();
                ($make)(())
            };
            g.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = std::time::Instant::now();
                        drive(&mut svc, iters).await;
                        start.elapsed()
                    })
                })
            });
        }};
    }
    per_layer!(one);
    full_stacks!(one);
    http_unary!(one);
    g.finish();
}

/// Runs `iters` calls on each of two threads at once, each with its own
/// current-thread runtime and its own service, and returns the slower
/// thread's time.
fn on_two_threads<S>(make: &dyn Fn() -> S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64> + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let mut svc = make();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = runtime();
                barrier.wait();
                let start = std::time::Instant::now();
                rt.block_on(drive(&mut svc, iters));
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

fn contended(c: &mut Criterion) {
    let rt = runtime();
    let mut g = configure(c, "stack/contended_2_threads");
    macro_rules! two {
        (@single $name:expr, $make:expr) => {
            // Not shareable across threads (not `Clone`): left out.
            let _ = ($name, $make);
        };
        ($name:expr, $make:expr) => {{
            let make = || {
                let _enter = rt.enter();
                ($make)(())
            };
            g.bench_function($name, |b| {
                b.iter_custom(|iters| on_two_threads(&make, iters))
            });
        }};
    }
    per_layer!(two);
    full_stacks!(two);
    g.finish();
}

criterion_group!(benches, current_thread, contended);
criterion_main!(benches);
