#![cfg(feature = "rate-limit")]
//! Rate limiting in paused time: exact quotas, exact waits, keys, memory cap,
//! headers and wait mode.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use seawall::BoxError;
use seawall::deadline::{self, Deadline};
use seawall::error::{RejectionKind, rejection_of};
use seawall::observe::{Event, EventKind, Observer, Recorder};
use seawall::rate_limit::{Fallback, Key, Quota, RateLimitLayer};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

fn echo() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = std::future::Ready<Result<u64, Infallible>>,
> + Clone {
    tower::service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x)))
}

async fn call<S>(svc: &mut S, x: u64) -> Result<u64, BoxError>
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    svc.ready().await?.call(x).await
}

fn retry_after(err: &BoxError) -> Option<Duration> {
    let r = rejection_of(err).expect("a seawall rejection");
    assert_eq!(r.kind(), RejectionKind::RateLimited);
    r.retry_after()
}

/// Whether `hint` is the time to the next cell, `base`, stretched as the
/// layer stretches its hints: by a factor in `[1, 1.5)`.
fn stretched(hint: Duration, base: Duration) -> bool {
    hint >= base && hint < base.mul_f64(1.5)
}

/// Asserts `err` is a rate-limit refusal whose hint is `base` stretched.
#[track_caller]
fn assert_hint(err: &BoxError, base: Duration) {
    let hint = retry_after(err).expect("a retry_after");
    assert!(stretched(hint, base), "hint {hint:?}, base {base:?}");
}

/// `outcomes` against `expected`: answers and times exactly, a refusal's
/// hint as its base stretched.
#[track_caller]
fn assert_outcomes(
    actual: &[(Result<u64, Option<Duration>>, Duration)],
    expected: &[(Result<u64, Option<Duration>>, Duration)],
) {
    assert_eq!(actual.len(), expected.len(), "{actual:?}");
    for (a, e) in actual.iter().zip(expected) {
        let same = match (&a.0, &e.0) {
            (Err(Some(h)), Err(Some(b))) => stretched(*h, *b),
            (x, y) => x == y,
        };
        assert!(same && a.1 == e.1, "{actual:?} against {expected:?}");
    }
}

/// Refusals the recorder saw with this detail.
fn refusals(recorder: &Recorder, detail: &str) -> usize {
    recorder.count(|e| matches!(e.kind, EventKind::Rejected { detail: d, .. } if d == detail))
}

#[tokio::test(start_paused = true)]
async fn burst_then_steady_rate_admits_exactly_the_quota() {
    // 10 per second: a burst of 10, then one every 100 ms.
    let layer = RateLimitLayer::builder(Quota::per_second(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());

    for i in 0..10 {
        assert_eq!(call(&mut svc, i).await.unwrap(), i, "burst request {i}");
    }
    let err = call(&mut svc, 10).await.unwrap_err();
    // The first rejection's hint is the time until the next cell (stretched
    // by up to half, so that callers refused together spread out).
    assert_hint(&err, Duration::from_millis(100));
    advance(Duration::from_millis(30)).await;
    let err = call(&mut svc, 11).await.unwrap_err();
    assert_hint(&err, Duration::from_millis(70));
    advance(Duration::from_millis(70)).await;
    assert!(
        call(&mut svc, 12).await.is_ok(),
        "conforms exactly at the next cell"
    );

    // Steady state: a request every 10 ms for 2 s; one in ten is admitted.
    let mut admitted = 0;
    let mut rejected = 0;
    for i in 0..200 {
        advance(Duration::from_millis(10)).await;
        match call(&mut svc, i).await {
            Ok(_) => admitted += 1,
            Err(e) => {
                let w = retry_after(&e).unwrap();
                assert!(
                    w > Duration::ZERO && w < Duration::from_millis(150),
                    "{w:?}"
                );
                rejected += 1;
            }
        }
    }
    assert_eq!(admitted, 20, "2 s at 10/s");
    assert_eq!(rejected, 180);
}

#[tokio::test(start_paused = true)]
async fn quota_is_shared_by_clones_and_services_of_one_layer() {
    let layer = RateLimitLayer::builder(Quota::per_minute(3))
        .build()
        .unwrap();
    let mut a = layer.layer(echo());
    let mut b = a.clone();
    let mut c = layer.layer(echo());
    assert!(call(&mut a, 1).await.is_ok());
    assert!(call(&mut b, 2).await.is_ok());
    assert!(call(&mut c, 3).await.is_ok());
    let err = call(&mut a, 4).await.unwrap_err();
    assert_hint(&err, Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn noisy_key_is_limited_while_others_pass_untouched() {
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
        .name("tenants")
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());

    // Tenant 0 sends 50 requests, interleaved with 5 each from tenants 1..=3.
    let mut noisy_ok = 0;
    let mut quiet_ok = 0;
    for i in 0..50u64 {
        if call(&mut svc, i).await.is_ok() {
            noisy_ok += 1;
        }
        if i % 10 == 0 {
            for t in 1..=3u64 {
                if call(&mut svc, t * 1000 + i).await.is_ok() {
                    quiet_ok += 1;
                }
            }
        }
    }
    assert_eq!(noisy_ok, 5);
    assert_eq!(quiet_ok, 15, "every quiet tenant request admitted");
    assert_eq!(layer.tracked_keys(), 4);
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::Rejected {
                reason: RejectionKind::RateLimited,
                detail: "limit",
                retry_after: Some(_)
            }
        ) && e.name == "tenants"),
        45
    );
}

#[tokio::test(start_paused = true)]
async fn global_quota_applies_on_top_of_per_key_quota() {
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
        .global_quota(Quota::per_second(8))
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let a: usize = futures_ok(&mut svc, 0, 5).await;
    let b: usize = futures_ok(&mut svc, 1000, 5).await;
    assert_eq!(
        (a, b),
        (5, 3),
        "tenant B gets only what is left of the global 8"
    );
    assert_eq!(refusals(&recorder, "global_limit"), 2);
}

/// A request the global quota refuses gives its key's cells back: a
/// tenant refused three times while another filled the global quota is
/// admitted when the global quota has room again (its key's three cells
/// were spent by the refusals: it was told to wait 19 s more).
#[tokio::test(start_paused = true)]
async fn a_request_the_global_quota_refuses_gives_its_key_s_cells_back() {
    let recorder = Recorder::new();
    // Per key: a burst of 3, one cell every 20 s; in total: one a second.
    let layer = RateLimitLayer::builder(Quota::per_minute(3))
        .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
        .global_quota(Quota::per_second(1))
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert_eq!(call(&mut svc, 1000).await.unwrap(), 1000, "tenant B");
    for a in 1..=3 {
        let err = call(&mut svc, a).await.unwrap_err();
        assert_hint(&err, Duration::from_secs(1));
    }
    assert_eq!(refusals(&recorder, "global_limit"), 3);
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        call(&mut svc, 4).await.unwrap(),
        4,
        "tenant A's cells are there"
    );
    // And the key's burst is whole but that one cell: two more (each a
    // second apart, for the global quota), then 20 s.
    for a in 5..=6 {
        advance(Duration::from_secs(1)).await;
        assert_eq!(call(&mut svc, a).await.unwrap(), a);
    }
    advance(Duration::from_secs(1)).await;
    let err = call(&mut svc, 7).await.unwrap_err();
    assert_hint(&err, Duration::from_secs(17));
}

/// A request costing more than the global quota's burst (within its key's)
/// never fits: refused at once, with no `retry_after`, before its key's
/// bucket is asked. The key keeps its whole burst: five 2-cell requests
/// a second apart (the global burst of 2 refills each second).
#[tokio::test(start_paused = true)]
async fn a_request_above_the_global_burst_takes_nothing_from_its_key() {
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(10))
        .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
        .cost(|x: &u64| (*x % 1000) as u32)
        .global_quota(Quota::per_second(2))
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let err = call(&mut svc, 5).await.unwrap_err();
    assert_eq!(retry_after(&err), None);
    assert_eq!(refusals(&recorder, "cost_above_burst"), 1);
    for i in 0..5 {
        assert_eq!(call(&mut svc, 2).await.unwrap(), 2, "2-cell request {i}");
        advance(Duration::from_secs(1)).await;
    }
    let err = call(&mut svc, 2).await.unwrap_err();
    assert_eq!(
        rejection_of(&err).unwrap().kind(),
        RejectionKind::RateLimited,
        "the key's 10 cells are spent"
    );
}

async fn futures_ok<S>(svc: &mut S, base: u64, n: u64) -> usize
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    let mut ok = 0;
    for i in 0..n {
        if call(svc, base + i).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_follow_the_fallback_rule() {
    let extract = |x: &u64| (*x != 0).then(|| Key::from_u64(*x));

    let recorder = Recorder::new();
    let reject = RateLimitLayer::builder(Quota::per_second(5))
        .keyed(extract)
        .fallback(Fallback::Reject)
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let mut svc = reject.layer(echo());
    let err = call(&mut svc, 0).await.unwrap_err();
    assert_eq!(retry_after(&err), None);
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::InputIgnored {
                input: "key",
                reason: "absent"
            }
        )),
        1
    );
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::Rejected {
                detail: "no_key",
                retry_after: None,
                ..
            }
        )),
        1
    );

    // Shared bucket: key-less requests share one bucket of 2 per second.
    let shared = RateLimitLayer::builder(Quota::per_second(5))
        .keyed(extract)
        .fallback_quota(Quota::per_second(2))
        .build()
        .unwrap();
    let mut svc = shared.layer(echo());
    assert!(call(&mut svc, 0).await.is_ok());
    assert!(call(&mut svc, 0).await.is_ok());
    let err = call(&mut svc, 0).await.unwrap_err();
    assert_hint(&err, Duration::from_millis(500));
    // keyed requests are unaffected
    assert_eq!(futures_ok(&mut svc, 1, 5).await, 5);
}

#[tokio::test(start_paused = true)]
async fn a_million_distinct_keys_never_exceed_the_cap() {
    const CAP: usize = 10_000;
    let full = Arc::new(AtomicU64::new(0));
    let full2 = full.clone();
    let layer = RateLimitLayer::builder(Quota::per_second(10))
        .keyed(|x: &u64| Some(Key::from_u64(*x)))
        .max_keys(CAP)
        .fallback(Fallback::Reject)
        .min_sweep_interval(Duration::from_millis(100))
        .observer(Observer::new(move |e: &Event<'_>| {
            if matches!(
                e.kind,
                EventKind::Rejected {
                    detail: "keys_full",
                    ..
                }
            ) {
                full2.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());

    let mut admitted = 0u64;
    let mut max_tracked = 0;
    let mut max_capacity = 0;
    // One million distinct keys, 1000 per millisecond of paused time (1 s in all).
    for i in 0..1_000_000u64 {
        if i % 1000 == 0 {
            advance(Duration::from_millis(1)).await;
            max_capacity = max_capacity.max(layer.key_capacity());
        }
        // `echo` is always ready: call without polling readiness each time.
        if svc.call(i).await.is_ok() {
            admitted += 1;
        }
        // checked after every single call
        max_tracked = max_tracked.max(layer.tracked_keys());
    }
    max_tracked = max_tracked.max(layer.tracked_keys());
    println!(
        "1M keys, cap {CAP}: max tracked {max_tracked}, max map capacity {max_capacity}, \
         admitted {admitted}, rejected at cap {}, evicted {}",
        full.load(Ordering::Relaxed),
        layer.evicted_keys()
    );
    assert!(max_tracked <= CAP, "tracked {max_tracked} > cap {CAP}");
    assert_eq!(max_tracked, CAP, "the spray does reach the cap");
    assert_eq!(admitted + full.load(Ordering::Relaxed), 1_000_000);
    // Every key is new, so each admission beyond the tracked ones needed an
    // eviction: admitted = evicted + tracked at the end.
    assert_eq!(admitted, layer.evicted_keys() + layer.tracked_keys() as u64);
    // A key admitted at t (bucket full again at t + 100 ms) is idle for
    // governor's retain_recent from t + 200 ms; sweeps run at most every
    // 100 ms, so the 10 000 slots turn over about every 300 ms: at least 3
    // times in the 1 s spray.
    assert!(
        layer.evicted_keys() >= 30_000,
        "evicted {}",
        layer.evicted_keys()
    );
    // Memory: the map never holds more than the cap, so its allocation stays
    // within a small factor of it.
    assert!(max_capacity <= 4 * CAP, "map capacity {max_capacity}");
    // Once the spray stops, everything becomes idle and is evicted.
    advance(Duration::from_secs(1)).await;
    assert!(layer.evict_idle());
    assert_eq!(layer.tracked_keys(), 0);
}

/// A request waiting for its cell holds nothing of the service below: over
/// a concurrency limit of 4, one tenant's requests waiting their turn do
/// not take the permits another tenant's request needs (the service polled
/// ready stays with the layer; a waiting request makes a clone of it ready
/// once admitted).
#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_its_cell_holds_no_permit_below() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
        .wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = layer.layer(tower::limit::ConcurrencyLimitLayer::new(4).layer(echo()));
    let t0 = Instant::now();
    // Tenant 0: four requests at once on one service, as a connection
    // sends them; the first is admitted, three wait 1, 2 and 3 s.
    let mut tenant0 = svc.clone();
    let mut waiting = Vec::new();
    for i in 0..4 {
        waiting.push(tenant0.ready().await.unwrap().call(i));
    }
    // Tenant 1 is served at once: the waiting requests hold no permit.
    let mut tenant1 = svc.clone();
    let ready = tokio::time::timeout(Duration::from_millis(1), tenant1.ready()).await;
    assert!(ready.is_ok(), "tenant 1 not ready: permits held by waiters");
    assert_eq!(ready.unwrap().unwrap().call(1000).await.unwrap(), 1000);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // The waiters are served in their turn.
    let handles: Vec<_> = waiting
        .into_iter()
        .map(|f| tokio::spawn(async move { (f.await, Instant::now()) }))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (r, at) = h.await.unwrap();
        assert_eq!(r.unwrap(), i as u64);
        assert_eq!(at - t0, Duration::from_secs(i as u64));
    }
}

/// Over a concurrency limit of one, with one service handle called the
/// usual way (`ready`, then `call`, then the next): the second request
/// waits for its cell, then for the only permit, which the handle's
/// readiness had reserved and the layer gives back (kept, the request
/// waited for it for good).
#[tokio::test(start_paused = true)]
async fn a_waiting_request_over_a_limit_of_one_is_served() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::limit::ConcurrencyLimitLayer::new(1).layer(echo()));
    let t0 = Instant::now();
    for i in 0..3u64 {
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            svc.ready().await.unwrap().call(i).await
        })
        .await
        .expect("served, not stuck waiting for a permit");
        assert_eq!(answer.unwrap(), i);
        assert_eq!(t0.elapsed(), Duration::from_secs(i));
    }
}

#[tokio::test(start_paused = true)]
async fn wait_mode_waits_exactly_and_respects_max_wait() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let t0 = Instant::now();
    assert!(call(&mut svc, 1).await.is_ok());
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert!(call(&mut svc, 2).await.is_ok());
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(1),
        "waited exactly one period"
    );

    // Two waiters at once: the second one's wait is 2 s, still within max.
    let (mut s1, mut s2) = (svc.clone(), svc.clone());
    let (a, b) = tokio::join!(call(&mut s1, 3), call(&mut s2, 4));
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(t0.elapsed(), Duration::from_secs(3));

    // Max wait 500 ms: a 1 s wait is refused at once, with the exact wait.
    let recorder = Recorder::new();
    let short = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_millis(500))
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let mut svc = short.layer(echo());
    assert!(call(&mut svc, 1).await.is_ok());
    let t1 = Instant::now();
    let err = call(&mut svc, 2).await.unwrap_err();
    assert_eq!(
        t1.elapsed(),
        Duration::ZERO,
        "no waiting when the wait is too long"
    );
    assert_hint(&err, Duration::from_secs(1));
    assert_eq!(refusals(&recorder, "wait_exceeds_limit"), 1);
}

/// `wait(Duration::MAX)`, no maximum of the layer's own: a request waits
/// for its cell (it was read as no wait at all: refused at once).
#[tokio::test(start_paused = true)]
async fn wait_mode_with_no_maximum_waits_for_the_cell() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::MAX)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let t0 = Instant::now();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(call(&mut svc, 2).await.unwrap(), 2);
    assert_eq!(t0.elapsed(), Duration::from_secs(1), "waited one period");
    // Under a deadline, the cell after it is out of time, not too long a
    // wait.
    let err = deadline::scope(
        Deadline::after(Duration::from_millis(300)),
        call(&mut svc, 3),
    )
    .await
    .unwrap_err();
    assert_eq!(
        rejection_of(&err).unwrap().kind(),
        RejectionKind::DeadlineExceeded
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn wait_mode_never_waits_past_the_deadline() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(call(&mut svc, 1).await.is_ok());

    // 300 ms of budget left, 1 s to wait: the request cannot be served in
    // time, refused at once as DeadlineExceeded (a local refusal).
    let t0 = Instant::now();
    let err = deadline::scope(
        Deadline::after(Duration::from_millis(300)),
        call(&mut svc, 2),
    )
    .await
    .unwrap_err();
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let view = rejection_of(&err).unwrap();
    assert_eq!(view.kind(), RejectionKind::DeadlineExceeded);
    assert!(view.is_local());
    assert_eq!(view.retry_after(), None);

    // 1.5 s of budget: waits the 1 s and goes through.
    let ok = deadline::scope(
        Deadline::after(Duration::from_millis(1500)),
        call(&mut svc, 3),
    )
    .await;
    assert_eq!(ok.unwrap(), 3);
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

/// A waiting request's cell is its own: a later request with the same
/// budget (1.5 s) finds the next cell at 2 s, after its deadline (within the
/// layer's maximum wait of 10 s), and fails at once as out of time
/// (`DeadlineExceeded`, `deadline_before_cell`), while the first is served
/// at 1 s. (Both were told 1 s and waited; whichever woke first took the
/// cell.)
#[tokio::test(start_paused = true)]
async fn a_waiting_request_keeps_its_cell_and_a_later_one_out_of_time_fails_at_once() {
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_secs(10))
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(call(&mut svc, 1).await.is_ok());
    let t0 = Instant::now();
    let mut waiter_svc = svc.clone();
    let waiter = deadline::scope(
        Deadline::after(Duration::from_millis(1500)),
        call(&mut waiter_svc, 2),
    );
    tokio::pin!(waiter);
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(waiter.as_mut(), cx))
    })
    .await;
    assert!(first.is_pending(), "waits for its cell, at 1 s");
    let err = deadline::scope(
        Deadline::after(Duration::from_millis(1500)),
        call(&mut svc, 3),
    )
    .await
    .unwrap_err();
    assert_eq!(t0.elapsed(), Duration::ZERO, "refused at once");
    let view = rejection_of(&err).unwrap();
    assert_eq!(view.kind(), RejectionKind::DeadlineExceeded, "{err}");
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::Rejected {
                reason: RejectionKind::DeadlineExceeded,
                detail: "deadline_before_cell",
                ..
            }
        )),
        1
    );
    assert_eq!(waiter.await.unwrap(), 2);
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

/// Makes the call of request `x` on a clone of `svc` now (the limit
/// decides), and returns its future.
async fn called<S>(svc: &S, x: u64) -> S::Future
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone,
{
    let mut s = svc.clone();
    s.ready().await.unwrap().call(x)
}

/// Each future's answer (or its `retry_after`) and when it came, from `t0`.
async fn outcomes<F>(t0: Instant, futures: Vec<F>) -> Vec<(Result<u64, Option<Duration>>, Duration)>
where
    F: std::future::Future<Output = Result<u64, BoxError>> + Send + 'static,
{
    let handles: Vec<_> = futures
        .into_iter()
        .map(|f| tokio::spawn(async move { (f.await, Instant::now()) }))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        let (r, at) = h.await.unwrap();
        out.push((r.map_err(|e| retry_after(&e)), at - t0));
    }
    out
}

/// Requests that wait are served in the order they came, each at its own
/// time, and one whose time would come after the maximum wait is refused at
/// once. At 1 a second, waits of at most 2 s, five requests at once: the
/// first is admitted, the second called at 1 s, the third at 2 s; the
/// fourth and fifth would be at 3 s: refused at 0 s, told 3 s. (All four
/// were told 1 s, woke together, and the last two were refused at 2 s,
/// told 1 s, after waiting the whole maximum.)
#[tokio::test(start_paused = true)]
async fn waiting_requests_take_their_cells_in_order_and_too_late_is_refused_at_once() {
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_secs(2))
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let svc = layer.layer(echo());
    let t0 = Instant::now();
    let mut futures = Vec::new();
    for x in 1..=5 {
        futures.push(called(&svc, x).await);
    }
    let s = Duration::from_secs;
    assert_outcomes(
        &outcomes(t0, futures).await,
        &[
            (Ok(1), s(0)),
            (Ok(2), s(1)),
            (Ok(3), s(2)),
            (Err(Some(s(3))), s(0)),
            (Err(Some(s(3))), s(0)),
        ],
    );
    assert_eq!(refusals(&recorder, "wait_exceeds_limit"), 2);
}

/// A waiting request dropped before its time gives its cell back when no
/// later request took a cell after it: the next request gets its time. One
/// dropped with a later request behind it leaves its cell spent (the later
/// one keeps its time).
#[tokio::test(start_paused = true)]
async fn a_waiting_request_dropped_before_its_time_gives_its_cell_back() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = layer.layer(echo());
    let t0 = Instant::now();
    let first = called(&svc, 1).await;
    let second = called(&svc, 2).await; // 1 s
    drop(called(&svc, 3).await); // 2 s, given back
    let fourth = called(&svc, 4).await; // 2 s
    let fifth = called(&svc, 5).await; // 3 s
    drop(fourth); // the fifth is behind it: 2 s stays spent
    let sixth = called(&svc, 6).await; // 4 s
    let s = Duration::from_secs;
    assert_eq!(
        outcomes(t0, vec![first, second, fifth, sixth]).await,
        [(Ok(1), s(0)), (Ok(2), s(1)), (Ok(5), s(3)), (Ok(6), s(4))]
    );
}

/// With a global quota, a waiting request takes its cells from its key's
/// bucket and the global one together, for the later of their times:
/// requests are served in the order they came across tenants, each at its
/// own time, and one whose time would come after the maximum wait is
/// refused at once (its key's cell given back). Per key a burst of 2, one a
/// second; in total one a second; waits up to 3 s. (Each wake-up found the
/// global cell taken by another and waited again; the last was refused
/// after waiting 3 s, told 1 s.)
#[tokio::test(start_paused = true)]
async fn waiting_requests_take_cells_from_their_key_and_the_global_quota() {
    let layer = RateLimitLayer::builder(Quota::per_second(1).burst(2))
        .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
        .global_quota(Quota::per_second(1))
        .wait(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let t0 = Instant::now();
    let mut futures = Vec::new();
    for x in [1, 2, 1001, 3, 4] {
        futures.push(called(&svc, x).await);
    }
    let s = Duration::from_secs;
    assert_outcomes(
        &outcomes(t0, futures).await,
        &[
            (Ok(1), s(0)),
            (Ok(2), s(1)),
            (Ok(1001), s(2)),
            (Ok(3), s(3)),
            (Err(Some(s(4))), s(0)),
        ],
    );
    // Tenant A's key counts its last request at 3 s: at 4 s its next cell
    // is there, and the global one.
    advance(s(1)).await;
    assert_eq!(t0.elapsed(), s(4));
    assert_eq!(call(&mut svc, 5).await.unwrap(), 5);
    assert_eq!(t0.elapsed(), s(4));
}

/// A tenant's requests waiting for its own cells do not hold the global
/// quota back for the other tenants: per key one a second (burst 1), in
/// total 100 a second (burst 100), waits up to 5 s. Tenant A's six
/// requests at once wait 1 to 5 s for its own cells; tenant B's request is
/// admitted at once. (The global bucket was charged at A's last time, 5 s
/// on, and B waited 4 s for a quota 99 % idle.)
#[tokio::test(start_paused = true)]
async fn a_tenant_waiting_for_its_cells_does_not_hold_the_global_quota() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
        .global_quota(Quota::per_second(100))
        .wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let t0 = Instant::now();
    let mut futures = Vec::new();
    for x in 1..=6 {
        futures.push(called(&svc, x).await);
    }
    assert_eq!(call(&mut svc, 1001).await.unwrap(), 1001);
    assert_eq!(t0.elapsed(), Duration::ZERO, "tenant B admitted at once");
    let s = Duration::from_secs;
    assert_eq!(
        outcomes(t0, futures).await,
        (1..=6).map(|x| (Ok(x), s(x - 1))).collect::<Vec<_>>()
    );
}

#[test]
fn nonsense_configuration_is_refused() {
    let e = RateLimitLayer::builder(Quota::per_second(0))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("burst"), "{e}");
    let e = RateLimitLayer::builder(Quota::with_period(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("period"), "{e}");
    let e = RateLimitLayer::builder(Quota::per_second(5).burst(0))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("burst"), "{e}");
    let e = RateLimitLayer::builder(Quota::per_second(5))
        .keyed(|x: &u64| Some(Key::from_u64(*x)))
        .max_keys(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("max_keys"), "{e}");
    let e = RateLimitLayer::builder(Quota::per_second(5))
        .keyed(|x: &u64| Some(Key::from_u64(*x)))
        .min_sweep_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("min_sweep_interval must be above zero"),
        "{e}"
    );
    let e = RateLimitLayer::builder(Quota::per_second(5))
        .wait(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("Wait"), "{e}");
}

#[cfg(feature = "http")]
mod http_keys {
    use super::*;
    use http::{HeaderName, Request, Response};
    use seawall::rate_limit::headers::IetfHeaders;
    use seawall::rate_limit::{ClientIp, HeaderKey, PeerAddr};
    use std::net::{IpAddr, SocketAddr};

    fn ok_http() -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = Infallible,
        Future = std::future::Ready<Result<Response<()>, Infallible>>,
    > + Clone {
        tower::service_fn(|_req: Request<()>| std::future::ready(Ok(Response::new(()))))
    }

    /// The answer to one plain request, which must be admitted.
    async fn answered<S>(svc: &mut S) -> Response<()>
    where
        S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
    {
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap()
    }

    /// Whether one request from `peer` is admitted.
    async fn admits<S>(svc: &mut S, peer: &str) -> bool
    where
        S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
    {
        svc.ready()
            .await
            .unwrap()
            .call(req(peer, None))
            .await
            .is_ok()
    }

    fn req(peer: &str, xff: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        r
    }

    /// One IPv6 /64 is one client: 1000 addresses of one /64 share one
    /// bucket (3 admitted), while a client of another /64, and an IPv4
    /// client, keep theirs; `prefixes` changes the grouping, and nonsense
    /// prefixes are refused.
    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_are_keyed_by_their_64() {
        let layer = RateLimitLayer::builder(Quota::per_minute(3))
            .keyed(ClientIp::new())
            .build()
            .unwrap();
        let mut svc = layer.layer(ok_http());
        let mut ok = 0;
        for i in 0..1000u32 {
            let peer = format!("[2001:db8:aa:bb:{:x}:{:x}::1]:443", i >> 8, i & 0xff);
            if admits(&mut svc, &peer).await {
                ok += 1;
            }
        }
        assert_eq!(ok, 3, "one bucket for the whole /64");
        assert_eq!(layer.tracked_keys(), 1);
        for peer in ["[2001:db8:aa:cc::1]:443", "192.0.2.1:443", "192.0.2.2:443"] {
            for _ in 0..3 {
                assert!(admits(&mut svc, peer).await);
            }
        }
        assert_eq!(layer.tracked_keys(), 4);

        // Whole addresses when asked: two addresses of one /64 are two keys.
        let whole = RateLimitLayer::builder(Quota::per_minute(3))
            .keyed(ClientIp::new().prefixes(32, 128).unwrap())
            .build()
            .unwrap();
        let mut svc = whole.layer(ok_http());
        for peer in ["[2001:db8::1]:443", "[2001:db8::2]:443"] {
            assert!(admits(&mut svc, peer).await);
        }
        assert_eq!(whole.tracked_keys(), 2);
        // IPv4 by /24, and the peer extractor groups the same way.
        let k = |p: PeerAddr, ip: &str| p.key_of(ip.parse::<IpAddr>().unwrap());
        let by24 = PeerAddr::new().prefixes(24, 64).unwrap();
        assert_eq!(k(by24, "198.51.100.7"), k(by24, "198.51.100.200"));
        assert_ne!(k(by24, "198.51.100.7"), k(by24, "198.51.101.7"));
        assert_ne!(
            k(PeerAddr::new(), "198.51.100.7"),
            k(PeerAddr::new(), "198.51.100.8")
        );
        for (v4, v6) in [(0, 64), (33, 64), (32, 0), (32, 129)] {
            assert!(ClientIp::new().prefixes(v4, v6).is_err(), "/{v4} /{v6}");
            assert!(PeerAddr::new().prefixes(v4, v6).is_err(), "/{v4} /{v6}");
        }
    }

    /// A spray of 100 000 IPv6 addresses, each from its own /64 in a few
    /// /48s, fills the key map (10 000 here); the spray's new keys then take
    /// their /48's bucket in the overflow table, and 1 000 newcomers from
    /// other networks, arriving during the spray, are all admitted. A spray
    /// from a single /64 is a single key.
    #[tokio::test(start_paused = true)]
    async fn a_spray_from_a_few_networks_does_not_starve_newcomers() {
        let layer = RateLimitLayer::builder(Quota::per_minute(10))
            .keyed(ClientIp::new())
            .max_keys(10_000)
            .build()
            .unwrap();
        let mut svc = layer.layer(ok_http());
        let (mut newcomers, mut spray_ok) = (0, 0);
        for i in 0..100_000u32 {
            // /64s of 2001:db8:0:0::/44 .. (16 /48s), one request each.
            let peer = format!("[2001:db8:{:x}:{:x}::1]:443", i >> 16, i & 0xffff);
            if admits(&mut svc, &peer).await {
                spray_ok += 1;
            }
            if i % 100 == 99 {
                // Each from its own /48.
                let peer = format!("[2001:db9:{:x}::1]:443", i / 100);
                if admits(&mut svc, &peer).await {
                    newcomers += 1;
                }
            }
        }
        println!(
            "spray: {spray_ok} of 100000 admitted, newcomers {newcomers} of 1000, keys {}",
            layer.tracked_keys()
        );
        assert_eq!(layer.tracked_keys(), 10_000, "the spray fills the map");
        // The map's keys, then 10 a minute for each of the 2 /48s the rest
        // of the spray came from.
        assert!(spray_ok <= 10_000 + 20, "{spray_ok}");
        assert!(newcomers >= 990, "{newcomers} of 1000 newcomers admitted");

        // One /64: one key, however many addresses.
        let layer = RateLimitLayer::builder(Quota::per_minute(10))
            .keyed(ClientIp::new())
            .max_keys(10_000)
            .build()
            .unwrap();
        let mut svc = layer.layer(ok_http());
        for i in 0..100_000u32 {
            let peer = format!("[2001:db8:1:1:{:x}:{:x}::1]:443", i >> 16, i & 0xffff);
            let _ = svc.ready().await.unwrap().call(req(&peer, None)).await;
        }
        assert_eq!(layer.tracked_keys(), 1);
        for n in 0..1000u32 {
            let peer = format!("[2001:db9:{:x}::1]:443", n);
            assert!(admits(&mut svc, &peer).await);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn forwarded_for_spoofing_does_not_choose_the_key() {
        let layer = RateLimitLayer::builder(Quota::per_minute(3))
            .keyed(ClientIp::new().trust("10.0.0.0/8").unwrap())
            .build()
            .unwrap();
        let mut svc = layer.layer(ok_http());
        // The attacker (203.0.113.7, behind our proxy 10.0.0.1) prepends a
        // fresh fake address to every request.
        let mut ok = 0;
        for i in 0..20 {
            let xff = format!("198.51.100.{i}, 203.0.113.7");
            if svc
                .ready()
                .await
                .unwrap()
                .call(req("10.0.0.1:5000", Some(&xff)))
                .await
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 3, "one bucket for the attacker whatever it prepends");
        assert_eq!(layer.tracked_keys(), 1);
        // Another client behind the same proxy is untouched.
        for _ in 0..3 {
            let r = req("10.0.0.1:5000", Some("192.0.2.50"));
            assert!(svc.ready().await.unwrap().call(r).await.is_ok());
        }
        // A direct (untrusted) peer cannot use the header at all: the
        // attacker connecting directly is keyed by its own address, whose
        // bucket is already empty, not by the 192.0.2.99 it claims.
        let r = req("203.0.113.7:6000", Some("192.0.2.99"));
        assert!(svc.ready().await.unwrap().call(r).await.is_err());
        assert_eq!(layer.tracked_keys(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn header_and_peer_keys() {
        let layer = RateLimitLayer::builder(Quota::per_second(2))
            .keyed(HeaderKey::new(HeaderName::from_static("x-api-key")))
            .fallback(Fallback::Reject)
            .build()
            .unwrap();
        let mut svc = layer.layer(ok_http());
        let with = |k: &str| Request::builder().header("x-api-key", k).body(()).unwrap();
        assert!(svc.ready().await.unwrap().call(with("a")).await.is_ok());
        assert!(svc.ready().await.unwrap().call(with("a")).await.is_ok());
        assert!(svc.ready().await.unwrap().call(with("a")).await.is_err());
        assert!(svc.ready().await.unwrap().call(with("b")).await.is_ok());
        let long = "k".repeat(65);
        assert!(
            svc.ready().await.unwrap().call(with(&long)).await.is_err(),
            "too long: no key"
        );
        assert!(
            svc.ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .is_err(),
            "absent: no key"
        );

        let layer = RateLimitLayer::builder(Quota::per_second(1))
            .keyed(PeerAddr::with(|ext| ext.get::<IpAddr>().copied()))
            .build()
            .unwrap();
        let mut svc = layer.layer(ok_http());
        let from = |ip: &str| {
            let mut r = Request::new(());
            r.extensions_mut().insert(ip.parse::<IpAddr>().unwrap());
            r
        };
        assert!(
            svc.ready()
                .await
                .unwrap()
                .call(from("192.0.2.1"))
                .await
                .is_ok()
        );
        assert!(
            svc.ready()
                .await
                .unwrap()
                .call(from("192.0.2.1"))
                .await
                .is_err()
        );
        assert!(
            svc.ready()
                .await
                .unwrap()
                .call(from("192.0.2.2"))
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ietf_headers_are_exact() {
        let layer = RateLimitLayer::builder(Quota::per_minute(100))
            .response_headers(IetfHeaders::default())
            .build()
            .unwrap();
        let mut svc = layer.layer(ok_http());
        let res = answered(&mut svc).await;
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=100;w=60");
        assert_eq!(
            res.headers()["ratelimit"],
            "\"default\";r=99;t=1",
            "0.6 s rounds up to 1"
        );
        for _ in 0..48 {
            svc.ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
        }
        let res = answered(&mut svc).await;
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=100;w=60");
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=50;t=30");

        // 10 s later, 16 cells have come back (one per 600 ms).
        advance(Duration::from_secs(10)).await;
        let res = answered(&mut svc).await;
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=65;t=21");

        let named = RateLimitLayer::builder(Quota::per_second(10).burst(5))
            .response_headers(IetfHeaders::new("api").unwrap())
            .build()
            .unwrap();
        let mut svc = named.layer(ok_http());
        let res = answered(&mut svc).await;
        assert_eq!(res.headers()["ratelimit-policy"], "\"api\";q=5;w=1");
        assert_eq!(res.headers()["ratelimit"], "\"api\";r=4;t=1");
        assert!(IetfHeaders::new("bad\"name").is_err());

        // With a global quota closer to refusing than the request's own: the
        // fields describe the global one, which refuses next.
        let both = RateLimitLayer::builder(Quota::per_second(10).burst(5))
            .global_quota(Quota::per_second(2).burst(2))
            .response_headers(IetfHeaders::new("api").unwrap())
            .build()
            .unwrap();
        let mut svc = both.layer(ok_http());
        let res = answered(&mut svc).await;
        assert_eq!(res.headers()["ratelimit-policy"], "\"api\";q=2;w=1");
        assert_eq!(res.headers()["ratelimit"], "\"api\";r=1;t=1");
        let second = answered(&mut svc).await;
        assert_eq!(second.headers()["ratelimit"], "\"api\";r=0;t=1");
        let third = svc.ready().await.unwrap().call(Request::new(())).await;
        assert!(
            third.is_err(),
            "refused by the global quota, as the fields said"
        );
    }
}

/// The deadline the request carries counts too, with no task-local one set.
#[tokio::test(start_paused = true)]
async fn wait_mode_reads_the_deadline_in_the_request() {
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|req: http::Request<u64>| async move {
        Ok::<_, BoxError>(*req.body())
    }));
    let req = |x: u64, budget_ms: u64| {
        let mut r = http::Request::new(x);
        r.extensions_mut()
            .insert(Deadline::after(Duration::from_millis(budget_ms)));
        r
    };
    assert_eq!(svc.clone().oneshot(req(1, 5000)).await.unwrap(), 1);
    let t0 = Instant::now();
    let err = svc.clone().oneshot(req(2, 300)).await.unwrap_err();
    assert_eq!(
        rejection_of(&err).unwrap().kind(),
        RejectionKind::DeadlineExceeded
    );
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(svc.clone().oneshot(req(3, 1500)).await.unwrap(), 3);
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

/// The `RateLimit-Policy` a limiter advertises is honest for any quota: a
/// client that never sends more than `q` requests in any `w` seconds is
/// never refused by that limiter, whatever its arrival times; and the
/// policy understates the sustained rate by at most one request per window
/// wherever a whole-second window can say it (`(burst + 1) × period ≥
/// 1 s`; otherwise it is `q = burst` per second).
mod honest_policy {
    use super::*;
    use proptest::prelude::*;
    use seawall::rate_limit::headers::policy;

    /// The arrivals (ms from the start) a policy follower keeps from
    /// `wanted`: one is sent only if fewer than `q` were sent in the `w`
    /// seconds before it, its own instant included.
    fn follow(wanted: &[u64], q: u64, w_ms: u64) -> Vec<u64> {
        let mut sent: Vec<u64> = Vec::new();
        for &t in wanted {
            let recent = sent.iter().filter(|&&s| s + w_ms > t).count() as u64;
            if recent < q {
                sent.push(t);
            }
        }
        sent
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn a_client_that_follows_the_policy_is_never_refused(
            burst in 1u32..=40,
            period_ms in 5u64..=2_000,
            gaps in proptest::collection::vec(0u64..1_500, 1..120),
        ) {
            let quota = Quota::with_period(Duration::from_millis(period_ms)).burst(burst);
            let (q, w) = policy(&quota);
            // Honesty of the numbers.
            let rate_per_window = (w * 1000) as f64 / period_ms as f64;
            prop_assert!(q <= u64::from(burst));
            prop_assert!(q as f64 <= rate_per_window + 1e-9);
            if (u64::from(burst) + 1) * period_ms >= 1000 {
                prop_assert!(rate_per_window - q as f64 <= 1.0 + 1e-9, "q={q} w={w}");
            } else {
                prop_assert_eq!((q, w), (u64::from(burst), 1));
            }
            // The limiter itself, on a follower's arrivals.
            let mut t = 0;
            let wanted: Vec<u64> = gaps.iter().map(|g| { t += g; t }).collect();
            let sent = follow(&wanted, q, w * 1000);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let refused = rt.block_on(async {
                let layer = RateLimitLayer::builder(quota).build().unwrap();
                let mut svc = layer.layer(echo());
                let start = Instant::now();
                let mut refused = Vec::new();
                for &at in &sent {
                    tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                    if call(&mut svc, at).await.is_err() {
                        refused.push(at);
                    }
                }
                refused
            });
            prop_assert!(refused.is_empty(), "q={} w={} refused at {:?} of {:?}", q, w, refused, sent);
        }
    }
}

// ---------------------------------------------------------------- weighted cost

/// A keyless request that the quota lets through but that costs more than
/// the keyless fallback's own burst takes that whole burst: it passes when
/// the fallback bucket is full, and the next one is told its real wait (it
/// was refused for good, with no `retry_after`).
#[tokio::test(start_paused = true)]
async fn a_request_above_a_stand_in_bucket_s_burst_takes_its_whole_burst() {
    let layer = RateLimitLayer::builder(Quota::per_second(10))
        .keyed(|n: &u64| (*n >= 1000).then(|| Key::from_u64(*n)))
        .cost(|n: &u64| if *n < 1000 { *n as u32 } else { 1 })
        .fallback_quota(Quota::per_second(2))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    // Keyless, 5 cells against the fallback's burst of 2: admitted.
    assert!(call(&mut svc, 5).await.is_ok());
    // The bucket is empty: the next waits for its 2 cells, 1 s.
    let err = call(&mut svc, 5).await.unwrap_err();
    assert_hint(&err, Duration::from_secs(1));
    advance(Duration::from_secs(1)).await;
    assert!(call(&mut svc, 5).await.is_ok());
    // Above the quota's own burst, refused for good as before.
    let err = call(&mut svc, 11).await.unwrap_err();
    assert_eq!(retry_after(&err), None);
}

/// A request costs what its cost function says: an 8-cell request takes
/// 8 of a burst of 10; a 4-cell one then waits for the 2 cells it lacks
/// (200 ms at 10 a second) and says so; a request above the burst is refused
/// at once, with no `retry_after`, even in wait mode; a 0-cell one is free.
#[tokio::test(start_paused = true)]
async fn a_request_costs_its_cells() {
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_second(10))
        .name("api")
        .observer(Observer::new(recorder.clone()))
        .cost(|n: &u64| *n as u32)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(call(&mut svc, 8).await.is_ok());
    let err = call(&mut svc, 4).await.unwrap_err();
    assert_hint(&err, Duration::from_millis(200));
    assert!(call(&mut svc, 2).await.is_ok());
    assert!(call(&mut svc, 0).await.is_ok(), "free");
    let err = call(&mut svc, 11).await.unwrap_err();
    let r = rejection_of(&err).unwrap();
    assert_eq!(
        (r.kind(), r.retry_after()),
        (RejectionKind::RateLimited, None)
    );
    let details: Vec<&str> = recorder
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Rejected { detail, .. } => Some(detail),
            _ => None,
        })
        .collect();
    assert_eq!(details, ["limit", "cost_above_burst"]);

    // A second later the bucket is full again: 10 cells, then nothing.
    advance(Duration::from_secs(1)).await;
    assert!(call(&mut svc, 10).await.is_ok());
    assert!(call(&mut svc, 1).await.is_err());

    // Wait mode waits for the cells a request needs, and never for a cost
    // above the burst.
    let mut waiting = RateLimitLayer::builder(Quota::per_second(10))
        .wait(Duration::from_secs(5))
        .cost(|n: &u64| *n as u32)
        .build()
        .unwrap()
        .layer(echo());
    assert!(call(&mut waiting, 10).await.is_ok());
    let start = Instant::now();
    assert!(call(&mut waiting, 5).await.is_ok());
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    let start = Instant::now();
    assert!(call(&mut waiting, 11).await.is_err());
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// Keyed limits weigh per key: one client's heavy requests drain its own
/// bucket, not another's.
#[tokio::test(start_paused = true)]
async fn weighted_costs_are_per_key() {
    let layer = RateLimitLayer::builder(Quota::per_second(10))
        .keyed(|n: &u64| Some(Key::from_u64(*n % 2)))
        .cost(|n: &u64| if *n < 100 { 5 } else { 1 })
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    // Key 0: two 5-cell requests, then refused.
    assert!(call(&mut svc, 2).await.is_ok());
    assert!(call(&mut svc, 4).await.is_ok());
    assert!(call(&mut svc, 6).await.is_err());
    // Key 1 untouched: ten 1-cell requests.
    for n in 0..10 {
        assert!(call(&mut svc, 101 + 2 * n).await.is_ok(), "request {n}");
    }
    assert!(call(&mut svc, 121).await.is_err());
}
