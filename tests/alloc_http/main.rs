//! The success path of the response-producing layers allocates nothing.
#![cfg(feature = "http")]

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use counting_alloc::{CountingAlloc, allocations_on_this_thread};
use seawall::BoxError;
use tower::{Layer, Service};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn ok_service()
-> impl Service<(), Response = http::Response<String>, Error = BoxError, Future: Unpin> {
    tower::service_fn(|()| {
        std::future::ready(Ok::<_, BoxError>(http::Response::new(String::new())))
    })
}

/// Polls `svc` ready, calls it and polls the future to completion, by hand.
fn one_call<S>(svc: &mut S) -> http::Response<String>
where
    S: Service<(), Response = http::Response<String>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut fut = pin!(svc.call(()));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        other => panic!("not ready: {:?}", other.map(|r| r.map(|_| ()))),
    }
}

fn allocations_per_call<S>(svc: &mut S) -> u64
where
    S: Service<(), Response = http::Response<String>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..100 {
        one_call(svc);
    }
    let before = allocations_on_this_thread();
    for _ in 0..1000 {
        let res = one_call(svc);
        assert_eq!(res.status(), 200);
    }
    allocations_on_this_thread() - before
}

#[test]
fn reference_inner_service_allocates_nothing() {
    assert_eq!(allocations_per_call(&mut ok_service()), 0);
}

#[test]
fn rejection_response_success_path_allocates_nothing() {
    let mut svc = seawall::http::RejectionResponseLayer::new().layer(ok_service());
    assert_eq!(allocations_per_call(&mut svc), 0);
}

#[cfg(feature = "tonic")]
#[test]
fn grpc_rejection_success_path_allocates_nothing() {
    // GrpcRejection serves http::Request; adapt the unit request.
    let inner = tower::service_fn(|_req: http::Request<()>| {
        std::future::ready(Ok::<_, BoxError>(http::Response::new(String::new())))
    });
    let mut svc = seawall::grpc::GrpcRejectionLayer::new().layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = || {
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let mut fut = pin!(svc.call(http::Request::new(())));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(res)) => assert_eq!(res.status(), 200),
            _ => panic!("not ready"),
        }
    };
    for _ in 0..100 {
        call();
    }
    let before = allocations_on_this_thread();
    for _ in 0..1000 {
        call();
    }
    assert_eq!(allocations_on_this_thread() - before, 0);
}
