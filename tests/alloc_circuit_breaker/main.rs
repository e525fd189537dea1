#![cfg(feature = "circuit-breaker")]
//! The circuit breaker's success path allocates nothing per call, in both
//! window kinds, also while the time window rotates its buckets.

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use counting_alloc::{CountingAlloc, allocations_on_this_thread};
use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use seawall::observe::State;
use tower::{Layer, Service, service_fn};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn ok(_: u32) -> Ready<Result<u32, Infallible>> {
    ready(Ok(7))
}

/// A zero-sized error: boxing it into a `BoxError` allocates nothing, so any
/// allocation counted would be the breaker's.
#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for Down {}

fn fail(_: u32) -> Ready<Result<u32, Down>> {
    ready(Err(Down))
}

/// Polls one call to completion by hand on this thread.
fn drive<S: Service<u32>>(svc: &mut S) -> Poll<Result<S::Response, S::Error>> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => return Poll::Pending,
    }
    let fut = pin!(svc.call(1));
    fut.poll(&mut cx)
}

/// Allocations made by `calls` calls, after a warm-up.
fn allocations_over<S: Service<u32>>(svc: &mut S, calls: u64) -> u64 {
    for _ in 0..1_000 {
        assert!(drive(svc).is_ready());
    }
    let before = allocations_on_this_thread();
    for _ in 0..calls {
        assert!(drive(svc).is_ready());
    }
    allocations_on_this_thread() - before
}

#[test]
fn success_path_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        // (Backpressure mode too: its `poll_ready` makes nothing while the
        // breaker is closed.)
        for (window, backpressure) in [
            (SlidingWindow::count(100), false),
            (SlidingWindow::count(100_000), false),
            (SlidingWindow::time(Duration::from_secs(1)), false),
            (SlidingWindow::time(Duration::from_secs(600)), false),
            (SlidingWindow::count(100), true),
        ] {
            let layer = CircuitBreakerLayer::builder()
                .window(window)
                .backpressure(backpressure)
                .build()
                .unwrap();
            let mut svc = layer.layer(service_fn(ok));
            let mut total = 0;
            // Move time between batches so the time windows rotate buckets
            // inside the measured calls.
            for _ in 0..20 {
                total += allocations_over(&mut svc, 10_000);
                tokio::time::advance(Duration::from_millis(150)).await;
            }
            assert_eq!(total, 0, "{window:?}: allocations in 200 000 calls");
            assert_eq!(layer.handle().state(), State::Closed);
        }
    });
}

#[test]
fn failures_below_the_threshold_allocate_nothing_either() {
    // Failures are recorded (slot and total updates) without allocating.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = CircuitBreakerLayer::builder()
            .window(SlidingWindow::count(100))
            .consecutive_failures_only(u32::MAX)
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(fail));
        assert_eq!(allocations_over(&mut svc, 10_000), 0);
        assert_eq!(layer.handle().failure_rate(), Some(1.0));
    });
}

#[test]
fn a_rejection_allocates_only_its_boxed_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = CircuitBreakerLayer::builder().build().unwrap();
        layer.handle().force_open();
        let mut svc = layer.layer(service_fn(ok));
        // One allocation per rejected call: the `Box` of the `CircuitOpen`
        // inside the `BoxError` (its name is a shared `Arc<str>`).
        assert_eq!(allocations_over(&mut svc, 10_000), 10_000);
    });
}
