#![cfg(feature = "deadline")]
//! Zero heap allocations per call through DeadlineLayer + AttemptTimeoutLayer,
//! and for the no-op observer.

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use counting_alloc::{CountingAlloc, allocations_on_this_thread, count_allocations};
use seawall::BoxError;
use seawall::deadline::{AttemptTimeoutLayer, DeadlineLayer};
use seawall::error::RejectionKind;
use seawall::observe::{EventKind, LayerKind, Observer};
use tower::{Layer, Service, service_fn};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const WARM_UP: usize = 64;
const CALLS: usize = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn stack() -> impl Service<u64, Response = u64, Error = BoxError> {
    let ready = service_fn(|x: u64| std::future::ready(Ok::<_, BoxError>(x + 1)));
    DeadlineLayer::new(Duration::from_secs(1)).unwrap().layer(
        AttemptTimeoutLayer::new(Duration::from_millis(100))
            .unwrap()
            .layer(ready),
    )
}

/// poll_ready + call + poll to completion, by hand, on this thread.
fn one_call<S: Service<u64, Response = u64, Error = BoxError>>(
    svc: &mut S,
    cx: &mut Context<'_>,
    x: u64,
) {
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("ready service not ready"),
    }
    let mut fut = pin!(svc.call(x));
    match fut.as_mut().poll(cx) {
        Poll::Ready(Ok(y)) => assert_eq!(y, x + 1),
        _ => panic!("ready service did not answer"),
    }
}

#[test]
fn zero_allocations_per_call_through_deadline_and_attempt_timeout() {
    let rt = runtime();
    let _guard = rt.enter(); // timers need the runtime's time driver
    let mut svc = stack();
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..WARM_UP as u64 {
        one_call(&mut svc, &mut cx, i);
    }
    let (allocs, ()) = count_allocations(|| {
        for i in 0..CALLS as u64 {
            one_call(&mut svc, &mut cx, i);
        }
    });
    println!("deadline+attempt_timeout, ready service: {allocs} allocations in {CALLS} calls");
    assert_eq!(allocs, 0);
}

async fn run<S: Service<u64, Response = u64, Error = BoxError>>(svc: &mut S, i: u64) {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(svc.call(i).await.unwrap(), i + 1);
}

#[test]
fn zero_allocations_per_call_when_the_timers_are_registered() {
    // The inner service yields once, so both timers are polled and registered
    // with tokio's timer wheel before the response arrives.
    let rt = runtime();
    let total = rt.block_on(async {
        let yielding = service_fn(|x: u64| async move {
            tokio::task::yield_now().await;
            Ok::<_, BoxError>(x + 1)
        });
        let mut svc = DeadlineLayer::new(Duration::from_secs(1)).unwrap().layer(
            AttemptTimeoutLayer::new(Duration::from_millis(100))
                .unwrap()
                .layer(yielding),
        );
        for i in 0..WARM_UP as u64 {
            run(&mut svc, i).await;
        }
        let before = allocations_on_this_thread();
        for i in 0..CALLS as u64 {
            run(&mut svc, i).await;
        }
        allocations_on_this_thread() - before
    });
    println!("deadline+attempt_timeout, yielding service: {total} allocations in {CALLS} calls");
    assert_eq!(total, 0);
}

#[test]
fn zero_allocations_for_the_no_op_observer() {
    // The counter is live: one boxed value is one allocation.
    let (boxed, b) = count_allocations(|| std::hint::black_box(Box::new(7u64)));
    assert_eq!((boxed, *b), (1, 7));

    let observer = Observer::default();
    let (allocs, ()) = count_allocations(|| {
        for _ in 0..CALLS {
            observer.emit(
                LayerKind::Deadline,
                "deadline",
                EventKind::Rejected {
                    reason: RejectionKind::DeadlineExceeded,
                    detail: "timed_out",
                    retry_after: None,
                },
            );
            observer.emit(
                LayerKind::AttemptTimeout,
                "attempt_timeout",
                EventKind::CallStarted,
            );
        }
    });
    println!(
        "Observer::default().emit: {allocs} allocations in {} emits",
        2 * CALLS
    );
    assert_eq!(allocs, 0);
}
