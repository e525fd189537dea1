//! The harness the benches share: criterion settings, a current-thread
//! runtime, a no-op service and a hand-polled call.
//!
//! Included by each bench with `#[path = "common/mod.rs"] mod common;`; a
//! bench uses only some of it.
#![allow(dead_code)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::Criterion;
use criterion::measurement::WallTime;
use tower::{Service, service_fn};

/// Short runs on a shared machine: 1 s warm-up, 2 s measurement, 30 samples.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// A benchmark group named `name` with the settings of [`config`].
pub fn configure<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    g
}

/// A current-thread tokio runtime with time enabled.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// A service that answers its request at once.
pub type Noop = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, std::io::Error>>>;

/// The no-op service.
pub fn noop() -> Noop {
    service_fn((|x| std::future::ready(Ok(x))) as fn(u64) -> _)
}

/// One call by hand: `poll_ready`, `call` and one poll of the response
/// future, which must answer `Ok` at once.
#[inline]
pub fn one_call<S: Service<u64>>(svc: &mut S, cx: &mut Context<'_>, x: u64) {
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("service not ready"),
    }
    let mut fut = pin!(svc.call(x));
    match fut.as_mut().poll(cx) {
        Poll::Ready(Ok(r)) => {
            black_box(r);
        }
        _ => panic!("call did not answer at once"),
    }
}
