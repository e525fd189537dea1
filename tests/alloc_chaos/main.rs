//! A call that the chaos layer lets through (no fault drawn) allocates
//! nothing, with or without injected latency.
#![cfg(feature = "chaos")]

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use counting_alloc::{CountingAlloc, allocations_on_this_thread};
use seawall::BoxError;
use seawall::chaos::{ChaosLayer, Latency};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn echo() -> impl Service<u32, Response = u32, Error = BoxError, Future: Unpin> + Clone {
    tower::service_fn(|n: u32| std::future::ready(Ok::<_, BoxError>(n)))
}

#[test]
fn pass_through_calls_allocate_nothing() {
    // error_rate 0 with outage windows configured (checked on every call).
    let layer = ChaosLayer::builder()
        .seed(1)
        .error_rate(0.0)
        .outage(Duration::from_secs(3600), Duration::from_secs(7200))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = |n: u32| {
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let mut fut = pin!(svc.call(n));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(v)) => assert_eq!(v, n),
            _ => panic!("not ready"),
        }
    };
    for n in 0..100 {
        call(n);
    }
    let before = allocations_on_this_thread();
    for n in 0..1000 {
        call(n);
    }
    assert_eq!(allocations_on_this_thread() - before, 0);
}

#[test]
fn delayed_calls_allocate_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = ChaosLayer::builder()
            .seed(1)
            .latency(Latency::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(20),
            })
            .build()
            .unwrap();
        let mut svc = layer.layer(echo());
        for n in 0..100 {
            assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
        }
        let before = allocations_on_this_thread();
        for n in 0..1000 {
            assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
        }
        assert_eq!(allocations_on_this_thread() - before, 0);
    });
}
