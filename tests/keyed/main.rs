#![cfg(all(feature = "keyed", feature = "circuit-breaker", feature = "bulkhead"))]
//! Layers per key: a breaker per tenant, a bulkhead per key, eviction of
//! idle keys, the overflow instance, the memory of a key spray, and no
//! allocation for a known key.

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use counting_alloc::{CountingAlloc, count_allocations, live_bytes_on_this_thread};
use seawall::BoxError;
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use seawall::error::{RejectionKind, rejection_of};
use seawall::keyed::KeyedLayer;
use seawall::observe::{EventKind, Observer, Recorder, State};
use seawall::rate_limit::Key;
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

fn tenant(req: &(u64, u64)) -> Option<Key> {
    Some(Key::from_u64(req.0))
}

fn breaker(_: &Key) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .window(SlidingWindow::count(10))
        .minimum_calls(5)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn one_tenant_failing_opens_only_its_own_breaker() {
    // Tenant 7 always fails; the others always succeed.
    let backend = tower::service_fn(|(t, x): (u64, u64)| async move {
        if t == 7 {
            Err::<u64, BoxError>("broken".into())
        } else {
            Ok(x)
        }
    });
    let keyed = KeyedLayer::builder(tenant, breaker).build().unwrap();
    let svc = keyed.layer(backend);
    for i in 0..5 {
        let e = svc.clone().oneshot((7, i)).await.unwrap_err();
        assert!(rejection_of(&e).is_none(), "call {i} was refused: {e}");
    }
    // The sixth is refused by tenant 7's open breaker.
    let e = svc.clone().oneshot((7, 5)).await.unwrap_err();
    assert_eq!(rejection_of(&e).unwrap().kind(), RejectionKind::CircuitOpen);
    for t in 0..20 {
        assert_eq!(svc.clone().oneshot((t + 100, t)).await.unwrap(), t);
    }
    assert_eq!(
        keyed.get(&Key::from_u64(7)).unwrap().handle().state(),
        State::Open
    );
    assert_eq!(
        keyed.get(&Key::from_u64(100)).unwrap().handle().state(),
        State::Closed
    );
    // A handle forces one key's state.
    keyed
        .get(&Key::from_u64(101))
        .unwrap()
        .handle()
        .force_open();
    let e = svc.clone().oneshot((101, 0)).await.unwrap_err();
    assert_eq!(rejection_of(&e).unwrap().kind(), RejectionKind::CircuitOpen);
    assert_eq!(svc.clone().oneshot((102, 3)).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_per_key_keeps_one_key_from_taking_every_slot() {
    // Requests are plain numbers: tenant = n / 1000.
    let slow = tower::service_fn(|x: u64| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<u64, BoxError>(x)
    });
    let keyed = KeyedLayer::builder(
        |x: &u64| Some(Key::from_u64(x / 1000)),
        |_: &Key| BulkheadLayer::builder().max_concurrent(2).build().unwrap(),
    )
    .build()
    .unwrap();
    let svc = keyed.layer(slow);
    // Tenant 1 sends 5 at once: 2 run, 3 are refused.
    let burst: Vec<_> = (0..5)
        .map(|i| tokio::spawn(svc.clone().oneshot(1000 + i)))
        .collect();
    tokio::task::yield_now().await;
    // Tenant 2 is not affected.
    let other = tokio::spawn(svc.clone().oneshot(2009));
    let mut refused = 0;
    for b in burst {
        if let Err(e) = b.await.unwrap() {
            assert_eq!(
                rejection_of(&e).unwrap().kind(),
                RejectionKind::BulkheadFull
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 3);
    assert_eq!(other.await.unwrap().unwrap(), 2009);
}

/// A table with no room, or whose keys would be evicted between their
/// calls (their layers' state lost), is refused when built.
#[test]
fn a_table_of_no_keys_or_of_keys_idle_at_once_is_refused() {
    let e = KeyedLayer::builder(tenant, breaker)
        .max_keys(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("max_keys must be at least 1"), "{e}");
    let e = KeyedLayer::builder(tenant, breaker)
        .idle_after(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("idle_after must be above zero"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_for_new_ones_and_busy_keys_never_are() {
    let rec = Recorder::new();
    let slow = tower::service_fn(|(_, x): (u64, u64)| async move {
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok::<u64, BoxError>(x)
    });
    let fast = tower::service_fn(|(_, x): (u64, u64)| async move { Ok::<u64, BoxError>(x) });
    let keyed = KeyedLayer::builder(tenant, breaker)
        .max_keys(3)
        .observer(Observer::from(rec.clone()))
        .build()
        .unwrap();
    // Key 1 has a call in flight for two minutes; keys 2 and 3 are used once.
    let busy = tokio::spawn(keyed.layer(slow).oneshot((1, 0)));
    tokio::task::yield_now().await;
    let svc = keyed.layer(fast);
    svc.clone().oneshot((2, 0)).await.unwrap();
    svc.clone().oneshot((3, 0)).await.unwrap();
    assert_eq!(keyed.len(), 3);
    // Full, nothing idle yet: key 4 goes through the overflow instance.
    svc.clone().oneshot((4, 0)).await.unwrap();
    assert!(keyed.get(&Key::from_u64(4)).is_none());
    assert_eq!(
        rec.events()
            .iter()
            .filter(|e| matches!(
                e.kind,
                EventKind::InputIgnored {
                    input: "key",
                    reason: "too_many_keys"
                }
            ))
            .count(),
        1
    );
    // A minute later keys 2 and 3 are idle; key 1 is still busy.
    tokio::time::sleep(Duration::from_secs(61)).await;
    svc.clone().oneshot((5, 0)).await.unwrap();
    assert_eq!(keyed.evicted(), 2);
    assert!(
        keyed.get(&Key::from_u64(1)).is_some(),
        "a busy key was evicted"
    );
    assert!(keyed.get(&Key::from_u64(5)).is_some());
    busy.await.unwrap().unwrap();
}

/// Polls one call of a ready-at-once service to its end, by hand.
fn drive<S: Service<(u64, u64), Response = u64>>(svc: &mut S, req: (u64, u64)) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
        return false;
    }
    let fut = pin!(svc.call(req));
    matches!(fut.poll(&mut cx), Poll::Ready(Ok(_)))
}

fn echo() -> impl Service<
    (u64, u64),
    Response = u64,
    Error = Infallible,
    Future = std::future::Ready<Result<u64, Infallible>>,
> + Clone {
    tower::service_fn(|(_, x): (u64, u64)| std::future::ready(Ok::<_, Infallible>(x)))
}

#[test]
fn a_known_key_costs_no_allocation() {
    let keyed = KeyedLayer::builder(tenant, breaker).build().unwrap();
    let mut svc = keyed.layer(echo());
    for t in 0..100 {
        assert!(drive(&mut svc, (t, 0)));
    }
    let (allocs, ok) = count_allocations(|| {
        (0..10_000u64)
            .filter(|&i| drive(&mut svc, (i % 100, i)))
            .count()
    });
    assert_eq!(ok, 10_000);
    assert_eq!(
        allocs, 0,
        "{allocs} allocations for 10 000 calls on known keys"
    );
}

/// 10⁶ keys sprayed through a keyed breaker: the table stops at its cap,
/// and the memory held stops growing with it.
#[test]
fn a_million_keys_stay_under_the_cap() {
    let before = live_bytes_on_this_thread();
    let keyed = KeyedLayer::builder(tenant, breaker).build().unwrap();
    let mut svc = keyed.layer(echo());
    for t in 0..20_000u64 {
        assert!(drive(&mut svc, (t, 0)));
    }
    let full = live_bytes_on_this_thread() - before;
    for t in 20_000..1_000_000u64 {
        assert!(drive(&mut svc, (t, 0)));
    }
    let later = live_bytes_on_this_thread() - before;
    println!(
        "keyed breaker at its cap: {} keys, {:.1} MiB held ({} bytes a key); after 10^6 keys: {:.1} MiB",
        keyed.len(),
        full as f64 / (1 << 20) as f64,
        full / keyed.len() as i64,
        later as f64 / (1 << 20) as f64
    );
    assert_eq!(keyed.len(), seawall::keyed::DEFAULT_MAX_KEYS);
    assert!(
        later <= full + (64 << 10),
        "the memory grew with the spray: {full} then {later}"
    );
}

/// A retry budget per key: one tenant's failures spend its own budget, not
/// the others'.
#[tokio::test(start_paused = true)]
async fn a_retry_budget_per_key_is_spent_by_its_own_failures_only() {
    use seawall::retry::RetryLayer;
    let backend = tower::service_fn(|x: u64| async move {
        if x / 1000 == 1 {
            Err::<u64, BoxError>("broken".into())
        } else {
            Ok(x)
        }
    });
    let keyed = KeyedLayer::builder(
        |x: &u64| Some(Key::from_u64(x / 1000)),
        |_: &Key| {
            RetryLayer::builder()
                .budget_ratio(0.0)
                .budget_success_ratio(0.0)
                .min_retries_per_sec(1)
                .budget_window(Duration::from_secs(10))
                .build()
                .unwrap()
        },
    )
    .build()
    .unwrap();
    let svc = keyed.layer(backend);
    // Tenant 1 fails every call: its floor of 10 retries is spent.
    for i in 0..20 {
        let _ = svc.clone().oneshot(1000 + i).await;
    }
    let one = keyed.get(&Key::from_u64(1)).unwrap();
    assert_eq!(one.budget().snapshot().available, 0);
    // Tenant 2's budget is untouched.
    assert_eq!(svc.clone().oneshot(2000).await.unwrap(), 2000);
    let two = keyed.get(&Key::from_u64(2)).unwrap();
    assert_eq!(two.budget().snapshot().available, 10);
}
