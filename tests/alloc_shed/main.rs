#![cfg(feature = "shed")]
//! The admitted path of the adaptive limit and of the throttle allocates
//! nothing: counted with the shared counting allocator.

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use counting_alloc::{CountingAlloc, count_allocations};
use seawall::deadline::{self, Deadline};
use seawall::shed::criticality::{self, Criticality};
use seawall::shed::{
    AdaptiveLimitLayer, Aimd, Gradient2, LimitAlgorithm, QueueDelay, ThrottleLayer, WindowSample,
};
use tower::{Layer, Service};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// One call, polled by hand on this thread; returns the response.
fn call_once<S>(svc: &mut S, req: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("echo is immediate"),
    }
}

fn measure<S>(svc: &mut S, calls: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..1000 {
        assert_eq!(call_once(svc, i), i);
    }
    let (allocs, ()) = count_allocations(|| {
        for i in 0..calls {
            assert_eq!(call_once(svc, i), i);
        }
    });
    allocs
}

/// A boxed algorithm, so that one loop builds the layer with either.
#[derive(Debug)]
struct BoxedAlgorithm(Box<dyn LimitAlgorithm>);

impl LimitAlgorithm for BoxedAlgorithm {
    fn limit(&self) -> usize {
        self.0.limit()
    }

    fn update(&mut self, sample: &WindowSample) -> usize {
        self.0.update(sample)
    }

    fn next_window(&self, configured: Duration) -> Duration {
        self.0.next_window(configured)
    }
}

#[test]
fn adaptive_limit_admitted_path_allocates_nothing() {
    // Gradient2 and the default (QueueDelay), with every window closing
    // (min RTT 0, 1 ns windows, 1 sample): the limit update runs on nearly
    // every call and allocates nothing either.
    let algorithms: [(&str, Box<dyn LimitAlgorithm>); 2] = [
        ("gradient2", Box::new(Gradient2::default())),
        ("queue delay", Box::new(QueueDelay::default())),
    ];
    for (name, algorithm) in algorithms {
        let layer = AdaptiveLimitLayer::builder()
            .algorithm(BoxedAlgorithm(algorithm))
            .window(Duration::from_nanos(1))
            .min_window_samples(1)
            .min_rtt(Duration::ZERO)
            .build()
            .unwrap();
        let mut svc = layer.layer(Echo);
        let allocs = measure(&mut svc, 10_000);
        println!("adaptive limit ({name}, windows closing): {allocs} allocations in 10 000 calls");
        assert_eq!(allocs, 0);
        assert_eq!(layer.inflight(), 0);
        // Windows did close: the expected service time is known.
        assert!(layer.expected_rtt().is_some());
    }

    // Defaults (AIMD), with a deadline and a criticality in task-locals.
    let layer = AdaptiveLimitLayer::builder()
        .algorithm(Aimd::default())
        .build()
        .unwrap();
    let mut svc = layer.layer(Echo);
    let d = Deadline::after(Duration::from_secs(10));
    let allocs = deadline::sync_scope(d, || {
        criticality::sync_scope(Criticality::Sheddable, || measure(&mut svc, 10_000))
    });
    println!("adaptive limit (aimd, deadline + criticality): {allocs} allocations in 10 000 calls");
    assert_eq!(allocs, 0);
}

#[test]
fn throttle_admitted_path_allocates_nothing() {
    let layer = ThrottleLayer::builder().seed(1).build().unwrap();
    let mut svc = layer.layer(Echo);
    let allocs = measure(&mut svc, 10_000);
    println!("throttle: {allocs} allocations in 10 000 calls");
    assert_eq!(allocs, 0);
    assert_eq!(layer.totals(), (11_000, 11_000));
}
