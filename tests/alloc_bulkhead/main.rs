#![cfg(feature = "bulkhead")]
//! Heap allocations per call through the bulkhead: zero on the admitted path
//! (default and backpressure mode, with and without an observer), zero for a
//! call that waits in the queue once the queue's slots are warm, and exactly
//! one (the boxed error) for a rejection.

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use counting_alloc::{CountingAlloc, count_allocations};
use seawall::BoxError;
use seawall::bulkhead::{BulkheadLayer, QueueOrder};
use seawall::observe::{Event, Observer};
use tower::{Layer, Service, service_fn};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const WARM_UP: usize = 64;
const CALLS: usize = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

type Ready = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, BoxError>>>;

fn ready_service() -> Ready {
    service_fn((|x: u64| std::future::ready(Ok(x + 1))) as fn(u64) -> _)
}

/// poll_ready + call + poll to completion, by hand, on this thread.
fn one_call<S>(svc: &mut S, cx: &mut Context<'_>, x: u64)
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("bulkhead with free permits not ready"),
    }
    let mut fut = pin!(svc.call(x));
    match fut.as_mut().poll(cx) {
        Poll::Ready(Ok(y)) => assert_eq!(y, x + 1),
        _ => panic!("admitted call did not answer"),
    }
}

fn admitted_path_allocations(layer: BulkheadLayer) -> u64 {
    let rt = runtime();
    let _guard = rt.enter();
    let mut svc = layer.layer(ready_service());
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..WARM_UP {
        one_call(&mut svc, &mut cx, i as u64);
    }
    let (allocs, ()) = count_allocations(|| {
        for i in 0..CALLS {
            one_call(&mut svc, &mut cx, i as u64);
        }
    });
    assert_eq!(layer.handle().available_permits(), 8);
    allocs
}

#[test]
fn zero_allocations_per_admitted_call() {
    let builder = || {
        BulkheadLayer::builder()
            .max_concurrent(8)
            .max_queue(16)
            .queue_order(QueueOrder::Codel)
    };
    assert_eq!(admitted_path_allocations(builder().build().unwrap()), 0);

    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    let observer = Observer::new(move |_: &Event<'_>| {
        seen.fetch_add(1, Ordering::Relaxed);
    });
    let with_hook = builder().observer(observer).build().unwrap();
    assert_eq!(admitted_path_allocations(with_hook), 0);
    // The limit as built, then CallStarted + CallFinished per call.
    assert_eq!(events.load(Ordering::Relaxed), 1 + 2 * (WARM_UP + CALLS));

    let backpressure = builder().backpressure(true).build().unwrap();
    assert_eq!(admitted_path_allocations(backpressure), 0);
}

#[test]
fn zero_allocations_for_a_call_that_waits_once_warm() {
    let rt = runtime();
    let _guard = rt.enter();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(ready_service());
    let mut cx = Context::from_waker(Waker::noop());

    // One call holds the permit (not yet polled); a second waits in the queue;
    // completing the first hands the permit to the second.
    let mut round = |x: u64| {
        let mut svc2 = svc.clone();
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut first = pin!(svc.call(x));
        assert!(svc2.poll_ready(&mut cx).is_ready());
        let mut second = pin!(svc2.call(x + 1));
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(handle.queue_len(), 1);
        assert!(matches!(first.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        assert!(matches!(second.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        assert_eq!(handle.available_permits(), 1);
    };
    for i in 0..WARM_UP {
        round(i as u64);
    }
    let (allocs, ()) = count_allocations(|| {
        for i in 0..CALLS {
            round(i as u64);
        }
    });
    assert_eq!(allocs, 0, "{allocs} allocations in {CALLS} queued rounds");
}

#[test]
fn one_allocation_per_rejection() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let mut svc = layer.layer(ready_service());
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let _held = svc.call(0);
    let mut reject = || {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = pin!(svc.call(1));
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
    };
    for _ in 0..WARM_UP {
        reject();
    }
    let (allocs, ()) = count_allocations(|| {
        for _ in 0..CALLS {
            reject();
        }
    });
    assert_eq!(allocs, CALLS as u64, "the boxed BulkheadFull, nothing else");
}
