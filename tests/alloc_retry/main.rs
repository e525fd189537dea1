#![cfg(feature = "retry")]
//! A first-try success through the retry layer makes no heap allocation.

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use counting_alloc::{CountingAlloc, allocations_on_this_thread};
use seawall::BoxError;
use seawall::retry::RetryLayer;
use tower::{Layer, Service};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

fn drive<S: Service<u32, Response = u32, Error = BoxError>>(svc: &mut S, req: u32) -> u32 {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(v)) => v,
        _ => panic!("first try did not succeed at once"),
    }
}

#[test]
fn first_try_success_allocates_nothing() {
    // A runtime is entered so the budget reads tokio's clock as in production.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let inner = tower::service_fn(|x: u32| std::future::ready(Ok::<u32, BoxError>(x + 1)));
    let layer = RetryLayer::new();
    let mut svc = layer.layer(inner);

    for i in 0..100 {
        assert_eq!(drive(&mut svc, i), i + 1);
    }
    const CALLS: u64 = 10_000;
    let before = allocations_on_this_thread();
    for i in 0..CALLS as u32 {
        assert_eq!(drive(&mut svc, i), i + 1);
    }
    let allocs = allocations_on_this_thread() - before;
    println!("first-try success through RetryLayer: {allocs} allocations in {CALLS} calls");
    assert_eq!(allocs, 0);
    assert_eq!(layer.budget().snapshot().requests, 10_100);
}

#[derive(Debug)]
struct Flaky;

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky")
    }
}

impl std::error::Error for Flaky {}

#[test]
fn a_retried_request_allocates_only_for_its_error() {
    // A call that fails once (with a zero-sized error, whose box does not
    // allocate) and succeeds on retry: the backoff timer lives inline in the
    // response future, so nothing is allocated either.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let calls = std::cell::Cell::new(0u32);
    let inner = tower::service_fn(|x: u32| {
        calls.set(calls.get() + 1);
        let fail = calls.get() % 2 == 1;
        std::future::ready(if fail {
            Err::<u32, BoxError>(Box::new(Flaky))
        } else {
            Ok(x)
        })
    });
    let mut svc = RetryLayer::builder().seed(1).build().unwrap().layer(inner);
    rt.block_on(async {
        use tower::ServiceExt;
        for i in 0..10 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        let before = allocations_on_this_thread();
        for i in 0..50 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        let allocs = allocations_on_this_thread() - before;
        println!("fail-once-then-succeed: {allocs} allocations in 50 calls");
        assert_eq!(allocs, 0);
    });
}
