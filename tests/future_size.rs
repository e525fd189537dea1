//! The response futures a caller holds per call stay small: every byte of
//! them is copied as the future moves (into a task, through `.await`s).
//!
//! Sizes are exact for one compiler. Timers (112 B each as a
//! `tokio::time::Sleep`) are most of the client stack's future: the
//! attempt's timeout, overlapped by the bulkhead's queue timer (a request
//! that waits for a permit allocates nothing, `tests/alloc_bulkhead`) and
//! by the retry's backoff and readiness timer, which share the room of the
//! attempt in flight. Neither stack's deadline runs a timer of its own
//! (`deadline::InnerTimers`): every wait inside ends by it.

use std::time::Duration;

use seawall::BoxError;
use tower::{Layer, Service};

type Noop = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, BoxError>>>;

fn noop() -> Noop {
    tower::service_fn((|x| std::future::ready(Ok(x))) as fn(u64) -> _)
}

fn future_size<S: Service<u64>>(_: &S) -> usize {
    std::mem::size_of::<S::Future>()
}

const NOOP: usize = std::mem::size_of::<std::future::Ready<Result<u64, BoxError>>>();

#[test]
fn the_client_stack_future_fits_in_400_bytes() {
    let stack = seawall::stack::ClientStack::builder("client")
        .total_budget(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(300))
        .bulkhead(|b| b.max_concurrent(1000))
        .build()
        .unwrap()
        .layer(noop());
    let size = future_size(&stack);
    println!("client stack future: {size} B");
    // The goal is 400 B; the deadline keeps nothing of its layer
    // without a timer of its own, which made it 392; the adaptive limit on
    // the attempts (its place, the call's start and its waits on calls
    // out) added 56 (448). The retry's backoff session in 24 bytes (its
    // previous delay in nanoseconds, its random source's "not drawn yet"
    // in the source's own 8 bytes) and the breaker's permit kept as its
    // two fields took 24 off (424); the retry's backoff session packed
    // among its small fields, its budget ticket and its wait on calls out
    // each in the bytes of their values, 16 more (408); the adaptive
    // limit's class and flags in two bytes of its waits' padding, 8 more:
    // the 400.
    assert!(size <= 400, "client stack future is {size} B");
}

#[test]
fn each_layer_adds_little_to_the_inner_future() {
    let breaker = seawall::circuit_breaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .layer(noop());
    let bulkhead = seawall::bulkhead::BulkheadLayer::builder()
        .max_concurrent(10)
        .max_queue(10)
        .build()
        .unwrap()
        .layer(noop());
    let attempt = seawall::deadline::AttemptTimeoutLayer::new(Duration::from_secs(1))
        .unwrap()
        .layer(noop());
    let rate =
        seawall::rate_limit::RateLimitLayer::builder(seawall::rate_limit::Quota::per_second(10))
            .build()
            .unwrap()
            .layer(noop());
    let sleep = std::mem::size_of::<tokio::time::Sleep>();
    let over = |s: usize| s - NOOP;
    println!(
        "over the inner future: breaker {} B, bulkhead {} B, attempt timeout {} B, rate limit {} B (a Sleep is {sleep} B)",
        over(future_size(&breaker)),
        over(future_size(&bulkhead)),
        over(future_size(&attempt)),
        over(future_size(&rate)),
    );
    assert!(over(future_size(&breaker)) <= 48);
    // The queue's timer is inline (a queued call allocates nothing).
    assert!(over(future_size(&bulkhead)) <= sleep + 64);
    assert!(over(future_size(&attempt)) <= sleep + 40);
    // The rate limit's waiting states (a cell to wait for, a Redis round
    // trip) are boxed: an admitted call carries no timer.
    assert!(over(future_size(&rate)) <= 64);
}

#[test]
fn the_server_stack_future_carries_one_timer() {
    let stack = seawall::stack::ServerStack::builder("server")
        .total_budget(Duration::from_secs(2))
        .handler_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .layer(noop());
    let size = future_size(&stack);
    let sleep = std::mem::size_of::<tokio::time::Sleep>();
    println!("server stack future: {size} B (a Sleep is {sleep} B)");
    // The handler timeout's timer, overlapped by the bulkhead's queue
    // timer; the deadline runs none of its own (`deadline::InnerTimers`):
    // with one, the future was 384 B. The adaptive limit keeps its
    // handler's waits on calls out (16 B more than the call's start alone;
    // its class and flags kept in two bytes of them, 8 B less).
    assert!(size <= 264, "server stack future is {size} B");
}
