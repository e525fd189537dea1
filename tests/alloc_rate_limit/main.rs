#![cfg(feature = "rate-limit")]
//! Zero heap allocations per admitted call (global limiter, and a keyed
//! limiter on keys it already tracks), counted by the shared counting
//! allocator on the current thread.

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use counting_alloc::{CountingAlloc, count_allocations, live_bytes_on_this_thread};
use seawall::rate_limit::{Key, Quota, RateLimitLayer};
use tower::{Layer, Service};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

fn echo() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = std::future::Ready<Result<u64, Infallible>>,
> + Clone {
    tower::service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x)))
}

/// Polls one call to completion by hand (the futures here are ready at once).
fn drive<S>(svc: &mut S, x: u64) -> bool
where
    S: Service<u64, Response = u64>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => return false,
    }
    let fut = pin!(svc.call(x));
    matches!(fut.poll(&mut cx), Poll::Ready(Ok(v)) if v == x)
}

const CALLS: u64 = 10_000;

#[test]
fn global_limiter_admits_without_allocating() {
    let layer = RateLimitLayer::builder(Quota::per_second(1_000_000))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    for i in 0..100 {
        assert!(drive(&mut svc, i));
    }
    let (allocs, admitted) =
        count_allocations(|| (0..CALLS).filter(|&i| drive(&mut svc, i)).count());
    assert_eq!(admitted as u64, CALLS);
    println!("global: {allocs} allocations for {CALLS} admitted calls");
    assert_eq!(allocs, 0, "allocations per admitted call must be 0");
}

#[test]
fn keyed_limiter_admits_known_keys_without_allocating() {
    let layer = RateLimitLayer::builder(Quota::per_second(1_000_000))
        .keyed(|x: &u64| Some(Key::from_u64(*x % 64)))
        .sweep_every(1_000_000)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    for i in 0..1_000 {
        assert!(drive(&mut svc, i));
    }
    let (allocs, admitted) =
        count_allocations(|| (0..CALLS).filter(|&i| drive(&mut svc, i)).count());
    assert_eq!(admitted as u64, CALLS);
    println!("keyed (64 known keys): {allocs} allocations for {CALLS} admitted calls");
    assert_eq!(allocs, 0, "allocations per admitted call must be 0");
    // The idle-key sweep (run every `sweep_every` calls, at most once per
    // `min_sweep_interval`) is the one amortized cost: measure it alone.
    let (sweep_allocs, ran) = count_allocations(|| layer.evict_idle());
    assert!(ran);
    println!("keyed: one idle-key sweep over 64 keys made {sweep_allocs} allocations");
    assert!(
        sweep_allocs <= 64,
        "a sweep allocates at most a little: {sweep_allocs}"
    );
}

#[test]
fn rejected_calls_allocate_only_the_error() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(drive(&mut svc, 0));
    // The rejection's BoxError (the error box and the name's reference count).
    let (allocs, admitted) = count_allocations(|| (0..100).filter(|&i| drive(&mut svc, i)).count());
    assert_eq!(admitted, 0);
    println!("rejected: {allocs} allocations for 100 rejected calls");
    assert_eq!(
        allocs, 100,
        "one allocation (the boxed error) per rejection"
    );
}

/// The memory a keyed limiter holds at its caps, measured: a spray of
/// 300 000 IPv6 clients, each from its own /64, over 8 192 /48s, fills the
/// key map (100 000 keys, the default cap) and the overflow table (4 096
/// networks); the heap the limiter holds then stays put however long the
/// spray goes on.
#[test]
fn memory_at_the_key_cap_is_bounded() {
    let before = live_bytes_on_this_thread();
    let layer = RateLimitLayer::builder(Quota::per_minute(10))
        .keyed(|n: &u64| {
            let n = *n as u128;
            // 2001:db8:XXXX:YYYY::1, a /48 per 8192-th, a /64 each.
            let ip = (0x2001_0db8u128 << 96) | ((n % 8192) << 80) | ((n / 8192) << 64) | 1;
            Some(Key::from_network(std::net::IpAddr::V6(ip.into()), 32, 64))
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    for i in 0..200_000u64 {
        drive(&mut svc, i);
    }
    let full = live_bytes_on_this_thread() - before;
    for i in 200_000..300_000u64 {
        drive(&mut svc, i);
    }
    let later = live_bytes_on_this_thread() - before;
    println!(
        "keyed limiter at its caps: {} keys, {:.1} MiB held ({} bytes a key); \
         after 100 000 more new clients: {:.1} MiB",
        layer.tracked_keys(),
        full as f64 / (1 << 20) as f64,
        full / layer.tracked_keys() as i64,
        later as f64 / (1 << 20) as f64,
    );
    assert_eq!(layer.tracked_keys(), 100_000);
    assert!(full < 32 << 20, "under 32 MiB at the caps: {full} bytes");
    assert!(
        later <= full + (1 << 20),
        "the spray goes on, the memory does not grow: {full} then {later}"
    );
}
