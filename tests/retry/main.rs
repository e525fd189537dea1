#![cfg(feature = "retry")]
//! Behaviour of the retry layer: jitter bounds, reproducible seeds, the budget
//! during an outage and a brownout, deadlines, server hints, idempotency,
//! cancellation, and the "retry at one layer" guard.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall::BoxError;
use seawall::deadline::{self, Deadline};
use seawall::error::{AttemptTimeout, CircuitOpen, DeadlineExceeded, RateLimited};
use seawall::observe::{EventKind, GiveUpReason, Observer, Recorder};
use seawall::retry::{
    Backoff, BackoffState, BudgetSnapshot, Jitter, RetryLayer, scope_inbound_attempt,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A budget's counts: requests, retries, retries still available.
fn counts(s: BudgetSnapshot) -> (u64, u64, u64) {
    (s.requests, s.retries, s.available)
}

/// The layer's defaults (its budget), retries 1 ms apart, unjittered.
fn default_budget_1ms_apart() -> RetryLayer {
    RetryLayer::builder()
        .backoff(MS, MS)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn scheduled(rec: &Recorder) -> Vec<(u32, Duration)> {
    rec.events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::RetryScheduled { attempt, delay } => Some((attempt, delay)),
            _ => None,
        })
        .collect()
}

fn gave_up(rec: &Recorder) -> Vec<(u32, GiveUpReason)> {
    rec.events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::RetryGaveUp { attempts, reason } => Some((attempts, reason)),
            _ => None,
        })
        .collect()
}

fn count(calls: &AtomicU32) -> u32 {
    calls.load(Ordering::SeqCst)
}

/// Fails every call at once with "boom".
fn always_failing(
    calls: Arc<AtomicU32>,
) -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl Future<Output = Result<u32, BoxError>>,
> + Clone {
    tower::service_fn(move |_req: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, BoxError>("boom".into()) }
    })
}

/// Fails every call with "boom" after `after`.
fn slow_failing(
    calls: Arc<AtomicU32>,
    after: Duration,
) -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl Future<Output = Result<u32, BoxError>>,
> + Clone {
    tower::service_fn(move |_req: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(after).await;
            Err::<u32, BoxError>("boom".into())
        }
    })
}

/// Answers call `i` with `outcomes[i]` (the last one repeats), recording when
/// each call arrived.
fn scripted(
    outcomes: Vec<Result<u32, BoxError>>,
    log: Arc<Mutex<Vec<Instant>>>,
) -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl Future<Output = Result<u32, BoxError>>,
> + Clone {
    let outcomes = Arc::new(Mutex::new(outcomes));
    tower::service_fn(move |_req: u32| {
        let mut log = log.lock().unwrap();
        log.push(Instant::now());
        let i = log.len() - 1;
        let outs = outcomes.lock().unwrap();
        let out = match &outs[i.min(outs.len() - 1)] {
            Ok(v) => Ok(*v),
            Err(e) => Err(clone_err(e)),
        };
        async move { out }
    })
}

fn clone_err(e: &BoxError) -> BoxError {
    if let Some(r) = e.downcast_ref::<RateLimited>() {
        return r.clone().into();
    }
    if let Some(r) = e.downcast_ref::<CircuitOpen>() {
        return r.clone().into();
    }
    if let Some(r) = e.downcast_ref::<AttemptTimeout>() {
        return r.clone().into();
    }
    if let Some(r) = e.downcast_ref::<DeadlineExceeded>() {
        return r.clone().into();
    }
    e.to_string().into()
}

// ---------------------------------------------------------------- backoff

#[test]
fn every_jitter_kind_stays_inside_its_bounds_over_many_draws() {
    let base = 10 * MS;
    let cap = Duration::from_secs(1);
    for jitter in [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        let b = Backoff::new(base, cap).unwrap().with_jitter(jitter);
        let mut rng = Backoff::rng(2024);
        let mut ratio_sum = 0.0;
        let mut draws = 0u32;
        let (mut min_ratio, mut max_ratio) = (f64::MAX, 0.0f64);
        for _session in 0..2_000 {
            let mut state = BackoffState::new();
            let mut prev = base;
            for n in 0..10u32 {
                let (lo, hi) = b.bounds(&state);
                let d = b.next_delay(&mut state, &mut rng);
                assert!(
                    lo <= d && d <= hi,
                    "{jitter:?} n={n}: {d:?} outside {lo:?}..={hi:?}"
                );
                let ceil = b.ceiling(n);
                assert_eq!(ceil, (base * 2u32.pow(n)).min(cap));
                match jitter {
                    Jitter::None => assert_eq!(d, ceil),
                    Jitter::Full => assert!(d <= ceil),
                    Jitter::Equal => assert!(d >= ceil / 2 && d <= ceil),
                    Jitter::Decorrelated => assert!(d >= base && d <= (prev * 3).min(cap)),
                    _ => unreachable!(),
                }
                let r = d.as_secs_f64() / ceil.as_secs_f64();
                ratio_sum += r;
                min_ratio = min_ratio.min(r);
                max_ratio = max_ratio.max(r);
                draws += 1;
                prev = d;
            }
        }
        let mean = ratio_sum / f64::from(draws);
        println!(
            "{jitter:?}: {draws} draws, delay/ceiling mean {mean:.3}, min {min_ratio:.3}, max {max_ratio:.3}"
        );
        match jitter {
            Jitter::None => assert_eq!((min_ratio, max_ratio), (1.0, 1.0)),
            Jitter::Full => {
                // Uniform on 0..=1 of the ceiling: spread over the whole range.
                assert!((0.48..=0.52).contains(&mean), "{mean}");
                assert!(min_ratio < 0.01 && max_ratio > 0.99);
            }
            Jitter::Equal => {
                assert!((0.73..=0.77).contains(&mean), "{mean}");
                assert!((0.5..0.51).contains(&min_ratio) && max_ratio > 0.99);
            }
            _ => {}
        }
    }
}

async fn delays_with_seed(seed: u64) -> Vec<Duration> {
    let rec = Recorder::new();
    let layer = RetryLayer::builder()
        .seed(seed)
        .max_attempts(5)
        .observer(rec.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(Arc::default()));
    for i in 0..3 {
        let r = svc.ready().await.unwrap().call(i).await;
        assert_eq!(r.unwrap_err().to_string(), "boom");
    }
    scheduled(&rec).into_iter().map(|(_, d)| d).collect()
}

#[tokio::test(start_paused = true)]
async fn a_seeded_layer_replays_the_same_delays() {
    let a = delays_with_seed(7).await;
    let b = delays_with_seed(7).await;
    let c = delays_with_seed(8).await;
    assert_eq!(a.len(), 12, "3 requests x 4 retries");
    assert_eq!(a, b);
    assert_ne!(a, c);
    // The engine alone too.
    let backoff = Backoff::default().with_jitter(Jitter::Decorrelated);
    assert_eq!(
        backoff.delays(99).take(50).collect::<Vec<_>>(),
        backoff.delays(99).take(50).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------- attempts

#[tokio::test(start_paused = true)]
async fn at_most_three_attempts_by_default_with_full_jitter_bounds() {
    let calls = Arc::new(AtomicU32::new(0));
    let rec = Recorder::new();
    let layer = RetryLayer::builder().observer(rec.clone()).build().unwrap();
    assert_eq!(layer.max_attempts(), 3);
    let mut svc = layer.layer(always_failing(calls.clone()));
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert_eq!(count(&calls), 3);
    let s = scheduled(&rec);
    assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), [2, 3]);
    assert!(s[0].1 <= 50 * MS && s[1].1 <= 100 * MS, "{s:?}");
    assert_eq!(gave_up(&rec), [(3, GiveUpReason::MaxAttempts)]);
    assert_eq!(rec.count(|e| e.kind == EventKind::CallStarted), 3);
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_is_never_retried_attempt_timeout_is() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let rec = Recorder::new();
    let svc = scripted(
        vec![
            Err(AttemptTimeout::new("attempt").into()),
            Err(DeadlineExceeded::new("deadline").into()),
            Ok(1),
        ],
        log.clone(),
    );
    let mut svc = RetryLayer::builder()
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(svc);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.downcast_ref::<DeadlineExceeded>().is_some(), "{err}");
    assert_eq!(log.lock().unwrap().len(), 2);
    assert_eq!(gave_up(&rec), [(2, GiveUpReason::NotRetryable)]);
}

/// A layer below that ran out of the request's time (a `DeadlineExceeded`
/// of a client stack's limit, for a request that waited there; an
/// attempt timeout let run on to the deadline) is given up on for the
/// deadline, not as not retryable; with time left, a `DeadlineExceeded`
/// from below is still not retryable.
#[tokio::test(start_paused = true)]
async fn a_layer_below_out_of_the_requests_time_is_given_up_on_for_the_deadline() {
    for error in [
        || BoxError::from(DeadlineExceeded::before_sending("dep.limit")),
        || BoxError::from(AttemptTimeout::new("dep.attempt")),
    ] {
        let rec = Recorder::new();
        let mut svc = RetryLayer::builder()
            .observer(rec.clone())
            .build()
            .unwrap()
            .layer(tower::service_fn(move |_: u32| async move {
                // Runs to the request's deadline.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err::<u32, BoxError>(error())
            }));
        let fut = svc.ready().await.unwrap().call(1);
        let err = deadline::scope(Deadline::after(Duration::from_millis(200)), fut)
            .await
            .unwrap_err();
        assert!(seawall::error::rejection_of(&err).is_some(), "{err}");
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::Deadline)], "{err}");
    }
    // With time left: not retryable, as before.
    let rec = Recorder::new();
    let mut svc = RetryLayer::builder()
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(tower::service_fn(|_: u32| async {
            Err::<u32, BoxError>(DeadlineExceeded::before_sending("dep.limit").into())
        }));
    let fut = svc.ready().await.unwrap().call(1);
    deadline::scope(Deadline::after(Duration::from_millis(200)), fut)
        .await
        .unwrap_err();
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::NotRetryable)]);
}

// ---------------------------------------------------------------- budget

#[derive(Clone)]
struct NaiveAttempts(u32);

impl<E> tower::retry::Policy<u32, u32, E> for NaiveAttempts {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut u32, result: &mut Result<u32, E>) -> Option<Self::Future> {
        if result.is_err() && self.0 > 1 {
            self.0 -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &u32) -> Option<u32> {
        Some(*req)
    }
}

#[tokio::test(start_paused = true)]
async fn total_outage_amplification_is_bounded_by_the_budget() {
    const REQUESTS: u32 = 10_000;
    // Defaults: 5% of requests + 10 retries/s over a 10 s window = 100 (and
    // half of the succeeded requests: none in an outage).
    const BOUND: u32 = REQUESTS + REQUESTS / 20 + 100;

    let calls = Arc::new(AtomicU32::new(0));
    let rec = Recorder::new();
    let layer = RetryLayer::builder().observer(rec.clone()).build().unwrap();
    let mut svc = layer.layer(always_failing(calls.clone()));
    let mut futures = Vec::with_capacity(REQUESTS as usize);
    for i in 0..REQUESTS {
        futures.push(svc.ready().await.unwrap().call(i));
    }
    let results = futures::future::join_all(futures).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap_err().to_string() == "boom")
    );
    let seawall_attempts = count(&calls);

    // The same outage through a plain 3-attempt retry.
    let naive_calls = Arc::new(AtomicU32::new(0));
    let mut naive =
        tower::retry::RetryLayer::new(NaiveAttempts(3)).layer(always_failing(naive_calls.clone()));
    let mut futures = Vec::with_capacity(REQUESTS as usize);
    for i in 0..REQUESTS {
        futures.push(naive.ready().await.unwrap().call(i));
    }
    futures::future::join_all(futures).await;
    let naive_attempts = count(&naive_calls);

    println!(
        "total outage, {REQUESTS} requests: seawall retry made {seawall_attempts} attempts \
         (bound {BOUND}, amplification {:.3}x); a plain 3-attempt retry made {naive_attempts} ({:.1}x)",
        f64::from(seawall_attempts) / f64::from(REQUESTS),
        f64::from(naive_attempts) / f64::from(REQUESTS),
    );
    assert!(seawall_attempts <= BOUND);
    // Every request's first attempt lands before any retry is decided, so the
    // budget is used exactly to its bound.
    assert_eq!(seawall_attempts, 10_600);
    assert_eq!(naive_attempts, 30_000);
    assert_eq!(counts(layer.budget().snapshot()), (10_000, 600, 0));
    // 9 400 refused at their first retry, the 600 retried ones at their
    // second: the first 36 by the budget, and once those retries saved
    // nothing, the others as futile but 1 in 8 (probes the budget refuses).
    let futile = rec.count(|e| {
        e.kind
            == EventKind::RetryGaveUp {
                attempts: 2,
                reason: GiveUpReason::RetriesFutile,
            }
    });
    assert_eq!(futile, 494);
    assert_eq!(
        rec.count(|e| e.kind == EventKind::BudgetExhausted),
        10_000 - futile
    );
    assert_eq!(
        rec.count(|e| e.kind
            == EventKind::RetryGaveUp {
                attempts: 1,
                reason: GiveUpReason::BudgetExhausted
            }),
        9_400
    );
    assert_eq!(
        rec.count(|e| e.kind
            == EventKind::RetryGaveUp {
                attempts: 2,
                reason: GiveUpReason::BudgetExhausted
            }),
        600 - futile
    );
    assert_eq!(scheduled(&rec).len(), 600);
}

/// A dependency in a brownout: until `healthy` is set, the first attempt of
/// each request fails and its retry succeeds. Counts every call in `calls`.
fn brownout(
    healthy: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    tower::service_fn(move |req: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        let first = seen.lock().unwrap().insert(req);
        let fail = first && !healthy.load(Ordering::SeqCst);
        async move {
            if fail {
                Err::<u32, BoxError>("brownout".into())
            } else {
                Ok(req)
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_brownout_is_retried_within_budget_and_the_budget_refills() {
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let svc = brownout(healthy.clone(), calls.clone());
    // Finagle's plain budget (no credit for successes), whose arithmetic
    // this test follows.
    let layer = RetryLayer::builder()
        .backoff(MS, MS)
        .jitter(Jitter::None)
        .budget_ratio(0.1)
        .budget_success_ratio(0.0)
        .build()
        .unwrap();
    let mut svc = layer.layer(svc);

    // 300 requests, one after the other, within the first second.
    let mut ok = 0;
    for i in 0..300 {
        if svc.ready().await.unwrap().call(i).await.is_ok() {
            ok += 1;
        }
    }
    // Request k may retry while retries + 1 <= 100 + k/10: requests 1..=111,
    // then every tenth (120, 130, …, 300): 130 retries, all successful.
    assert_eq!(ok, 130);
    assert_eq!(count(&calls), 430);
    assert_eq!(counts(layer.budget().snapshot()), (300, 130, 0));

    // The dependency recovers; the window slides past the brownout.
    healthy.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(counts(layer.budget().snapshot()), (0, 0, 100));
    for i in 1000..1100 {
        svc.ready().await.unwrap().call(i).await.unwrap();
    }
    assert_eq!(layer.budget().snapshot().available, 110);

    // A new wobble is absorbed again.
    healthy.store(false, Ordering::SeqCst);
    for i in 2000..2005 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    assert_eq!(counts(layer.budget().snapshot()), (105, 5, 105));
}

#[tokio::test(start_paused = true)]
async fn every_service_and_clone_from_one_layer_shares_one_budget() {
    let layer = RetryLayer::new();
    let ok = tower::service_fn(|r: u32| async move { Ok::<u32, BoxError>(r) });
    let mut a = layer.layer(ok);
    let mut b = a.clone();
    let mut c = layer.layer(ok);
    a.ready().await.unwrap().call(1).await.unwrap();
    b.ready().await.unwrap().call(2).await.unwrap();
    c.ready().await.unwrap().call(3).await.unwrap();
    assert_eq!(layer.budget().snapshot().requests, 3);
    assert_eq!(c.budget().snapshot().requests, 3);
}

/// A request is counted in the budget when its first attempt ends: a
/// success as a request and a success at once, a failure before its retry
/// is taken, with the success of the retry that saves it credited later.
#[tokio::test(start_paused = true)]
async fn a_request_is_counted_when_its_first_attempt_ends() {
    let layer = RetryLayer::builder()
        .backoff(MS, MS)
        .jitter(Jitter::None)
        .budget_ratio(0.1)
        .budget_success_ratio(0.5)
        .min_retries_per_sec(0)
        .build()
        .unwrap();
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = Arc::new(Mutex::new(Some(wait)));
    let failed_once = Arc::new(AtomicBool::new(false));
    let mut svc = layer.layer(tower::service_fn(move |r: u32| {
        let wait = wait.lock().unwrap().take();
        let failed_once = failed_once.clone();
        async move {
            if let Some(wait) = wait {
                let _ = wait.await;
            }
            // Request 2 fails once, then succeeds.
            if r == 2 && !failed_once.swap(true, Ordering::SeqCst) {
                return Err::<u32, BoxError>("unavailable".into());
            }
            Ok(r)
        }
    }));
    let in_flight = tokio::spawn(svc.ready().await.unwrap().call(0));
    tokio::task::yield_now().await;
    assert_eq!(
        counts(layer.budget().snapshot()),
        (0, 0, 0),
        "a first attempt in flight is not counted"
    );
    release.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), 0);
    // 0.1 × 1 + 0.5 × 1 of a retry: none yet.
    assert_eq!(counts(layer.budget().snapshot()), (1, 0, 0));
    for r in [1, 3, 4] {
        svc.ready().await.unwrap().call(r).await.unwrap();
    }
    // Four requests, four successes: 0.4 + 2 = 2 retries available.
    assert_eq!(counts(layer.budget().snapshot()), (4, 0, 2));
    // Request 2 fails: counted, then retried from the budget, then credited.
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    let s = layer.budget().snapshot();
    assert_eq!((s.requests, s.retries), (5, 1));
    // 0.5 + 0.5 × 5 = 3 retries in all, one taken.
    assert_eq!(s.available, 2);
}

// ---------------------------------------------------------------- deadline

#[tokio::test(start_paused = true)]
async fn no_second_attempt_when_the_backoff_would_end_past_the_deadline() {
    let calls = Arc::new(AtomicU32::new(0));
    let rec = Recorder::new();
    let layer = RetryLayer::builder()
        .backoff(80 * MS, 80 * MS)
        .jitter(Jitter::None)
        .observer(rec.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(slow_failing(calls.clone(), 50 * MS));

    // 100 ms budget: failure at 50 ms + 80 ms backoff = 130 ms > 100 ms.
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(1);
    let err = deadline::scope(Deadline::after(100 * MS), fut)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert_eq!(count(&calls), 1);
    assert_eq!(start.elapsed(), 50 * MS, "gave up at once, no sleep");
    assert!(scheduled(&rec).is_empty());
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::Deadline)]);

    // 200 ms budget: the retry fits (starts at 130 ms); the next 80 ms
    // backoff, due at 180 ms, does not.
    rec.clear();
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(2);
    let err = deadline::scope(Deadline::after(200 * MS), fut)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert_eq!(count(&calls), 3);
    assert_eq!(start.elapsed(), 180 * MS);
    assert_eq!(scheduled(&rec), [(2, 80 * MS)]);
    assert_eq!(gave_up(&rec), [(2, GiveUpReason::Deadline)]);
}

#[tokio::test(start_paused = true)]
async fn no_retry_below_the_minimum_remaining_budget_and_deadline_exceeded_when_spent() {
    let calls = Arc::new(AtomicU32::new(0));
    let build = |min: Duration| {
        RetryLayer::builder()
            .backoff(45 * MS, 45 * MS)
            .jitter(Jitter::None)
            .min_remaining(min)
            .build()
            .unwrap()
            .layer(slow_failing(calls.clone(), 50 * MS))
    };
    // 50 ms + 45 ms leaves 5 ms: below the default 10 ms minimum.
    let mut svc = build(seawall::retry::DEFAULT_MIN_REMAINING);
    let fut = svc.ready().await.unwrap().call(1);
    let err = deadline::scope(Deadline::after(100 * MS), fut)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert_eq!(count(&calls), 1);

    // With no minimum the retry starts at 95 ms.
    let mut svc = build(Duration::ZERO);
    let fut = svc.ready().await.unwrap().call(1);
    let _ = deadline::scope(Deadline::after(100 * MS), fut).await;
    assert_eq!(count(&calls), 3);

    // The deadline itself ran out during the attempt: DeadlineExceeded.
    let rec = Recorder::new();
    let mut svc = RetryLayer::builder()
        .observer(rec.clone())
        .name("payments-retry")
        .build()
        .unwrap()
        .layer(slow_failing(calls.clone(), 120 * MS));
    let fut = svc.ready().await.unwrap().call(1);
    let err = deadline::scope(Deadline::after(100 * MS), fut)
        .await
        .unwrap_err();
    let de = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("DeadlineExceeded");
    assert_eq!(de.name(), "payments-retry");
    assert_eq!(count(&calls), 4);
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::Deadline)]);
    assert_eq!(
        rec.count(|e| matches!(
            e.kind,
            EventKind::Rejected {
                detail: "deadline_spent",
                ..
            }
        )),
        1
    );
}

// ---------------------------------------------------------------- hints

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_exactly() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let rec = Recorder::new();
    let svc = scripted(
        vec![
            Err(RateLimited::new("upstream", Some(300 * MS)).into()),
            Ok(7),
        ],
        log.clone(),
    );
    let mut svc = RetryLayer::builder()
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(svc);
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 7);
    let times: Vec<_> = log.lock().unwrap().iter().map(|t| *t - start).collect();
    assert_eq!(times, [Duration::ZERO, 300 * MS]);
    assert_eq!(scheduled(&rec), [(2, 300 * MS)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_deadline_or_the_maximum_is_not_waited_for() {
    // Does not fit a 200 ms deadline.
    let log = Arc::new(Mutex::new(Vec::new()));
    let rec = Recorder::new();
    let svc = scripted(
        vec![
            Err(RateLimited::new("upstream", Some(300 * MS)).into()),
            Ok(7),
        ],
        log.clone(),
    );
    let mut svc = RetryLayer::builder()
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(svc);
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(1);
    let err = deadline::scope(Deadline::after(200 * MS), fut)
        .await
        .unwrap_err();
    let rl = err.downcast_ref::<RateLimited>().expect("the last error");
    assert_eq!(rl.retry_after(), Some(300 * MS));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::Deadline)]);

    // Longer than max_retry_after (no deadline at all).
    let log = Arc::new(Mutex::new(Vec::new()));
    let rec = Recorder::new();
    let svc = scripted(
        vec![
            Err(RateLimited::new("api", Some(Duration::from_secs(5))).into()),
            Ok(7),
        ],
        log.clone(),
    );
    let mut svc = RetryLayer::builder()
        .max_retry_after(Duration::from_secs(1))
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(svc);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.downcast_ref::<RateLimited>().is_some());
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::Pushback)]);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_is_not_retried_by_default() {
    // Even with a short open time that would fit the deadline: waiting it out
    // only turns the request into a stale probe.
    let log = Arc::new(Mutex::new(Vec::new()));
    let rec = Recorder::new();
    let svc = scripted(
        vec![Err(CircuitOpen::new("db", Some(100 * MS)).into()), Ok(7)],
        log.clone(),
    );
    let mut svc = RetryLayer::builder()
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(svc);
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(1);
    let err = deadline::scope(Deadline::after(Duration::from_secs(1)), fut)
        .await
        .unwrap_err();
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("the breaker's rejection");
    assert_eq!(open.retry_after(), Some(100 * MS));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::CircuitOpen)]);
}

// ---------------------------------------------------------------- cancellation

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_backoff_cancels_cleanly() {
    let calls = Arc::new(AtomicU32::new(0));
    let rec = Recorder::new();
    let layer = RetryLayer::builder()
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .jitter(Jitter::None)
        .observer(rec.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(calls.clone()));
    let metrics = tokio::runtime::Handle::current().metrics();

    let mut fut = Box::pin(svc.ready().await.unwrap().call(1));
    assert!(futures::poll!(fut.as_mut()).is_pending());
    // The first attempt failed; the retry is granted and sleeping.
    assert_eq!(count(&calls), 1);
    assert_eq!(scheduled(&rec), [(2, Duration::from_secs(1))]);
    assert_eq!(counts(layer.budget().snapshot()), (1, 1, 99));
    assert_eq!(metrics.num_alive_tasks(), 0);

    drop(fut);
    // The granted retry was handed back; nothing runs on.
    assert_eq!(counts(layer.budget().snapshot()), (1, 0, 100));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count(&calls), 1);
    assert_eq!(metrics.num_alive_tasks(), 0);
    assert!(gave_up(&rec).is_empty());
}

// ---------------------------------------------------------------- one layer

#[tokio::test(start_paused = true)]
async fn a_request_handled_for_an_inbound_retry_is_sent_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let rec = Recorder::new();
    let layer = RetryLayer::builder().observer(rec.clone()).build().unwrap();
    let svc = layer.layer(always_failing(calls.clone()));

    let mut s = svc.clone();
    let r = scope_inbound_attempt(2, async move { s.ready().await.unwrap().call(1).await }).await;
    assert_eq!(r.unwrap_err().to_string(), "boom");
    assert_eq!(count(&calls), 1);
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::NotRetryable)]);

    // An inbound first attempt is retried as usual.
    let mut s = svc.clone();
    let _ = scope_inbound_attempt(1, async move { s.ready().await.unwrap().call(1).await }).await;
    assert_eq!(count(&calls), 4);

    // Opting out of the guard.
    let mut s = RetryLayer::builder()
        .honor_inbound_retries(false)
        .build()
        .unwrap()
        .layer(always_failing(calls.clone()));
    let _ = scope_inbound_attempt(2, async move { s.ready().await.unwrap().call(1).await }).await;
    assert_eq!(count(&calls), 7);
}

// ---------------------------------------------------------------- config

#[test]
fn nonsense_configuration_is_refused() {
    let msg = |r: Result<RetryLayer, seawall::ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        msg(RetryLayer::builder().max_attempts(0).build()),
        "invalid retry configuration: max_attempts must be in 1..=100, got 0"
    );
    assert!(msg(RetryLayer::builder().budget_ratio(1.5).build()).contains("ratio"));
    assert!(msg(RetryLayer::builder().budget_window(MS).build()).contains("window"));
    assert!(msg(RetryLayer::builder().backoff(Duration::ZERO, MS).build()).contains("base"));
    assert!(msg(RetryLayer::builder().backoff(MS * 2, MS).build()).contains("cap"));
    assert!(
        msg(RetryLayer::builder()
            .max_retry_after(Duration::from_secs(90_000))
            .build())
        .contains("max_retry_after")
    );
    let layer = RetryLayer::builder()
        .name("x")
        .observer(Observer::default())
        .build()
        .unwrap();
    assert_eq!(layer.name(), "x");
    assert_eq!(layer.backoff(), Backoff::default());
}

// ---------------------------------------------------------------- http

#[cfg(feature = "http")]
mod http_tests {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use seawall::retry::http::{HttpRetry, MarkInboundAttemptLayer, ReplayBody, ReplayBodyLayer};
    use tower::ServiceBuilder;

    type Log = Arc<Mutex<Vec<(String, usize)>>>;

    /// Answers the first call with `first` (status, Retry-After, and
    /// `retry-after-ms` after a `|`: `"1|120"`), then 200; logs each call's
    /// attempt header and body length.
    fn upstream(
        first: (u16, Option<&'static str>),
        log: Log,
    ) -> impl Service<
        Request<ReplayBody<Full<Bytes>>>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<()>, BoxError>> + Send,
    > + Clone {
        let n = Arc::new(AtomicU32::new(0));
        tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            async move {
                let attempt = req
                    .headers()
                    .get("x-seawall-attempt")
                    .map(|v| v.to_str().unwrap().to_owned())
                    // A first attempt carries none.
                    .unwrap_or_else(|| "none".to_owned());
                let body = req.into_body().collect().await?.to_bytes();
                log.lock().unwrap().push((attempt, body.len()));
                let mut b = Response::builder().status(if k == 0 { first.0 } else { 200 });
                if k == 0 {
                    if let Some(ra) = first.1 {
                        let (secs, ms) = ra.split_once('|').unwrap_or((ra, ""));
                        b = b.header("retry-after", secs);
                        if !ms.is_empty() {
                            b = b.header("retry-after-ms", ms);
                        }
                    }
                }
                Ok::<_, BoxError>(b.body(())?)
            }
        })
    }

    fn client(
        first: (u16, Option<&'static str>),
        log: Log,
        rec: &Recorder,
    ) -> impl Service<Request<Full<Bytes>>, Response = Response<()>, Error = BoxError> + Clone {
        replaying(rec).service(upstream(first, log))
    }

    /// Bodies read for replay, then the HTTP policy's retries, reporting to
    /// `rec`.
    fn replaying(
        rec: &Recorder,
    ) -> ServiceBuilder<
        tower::layer::util::Stack<
            RetryLayer<HttpRetry>,
            tower::layer::util::Stack<ReplayBodyLayer, tower::layer::util::Identity>,
        >,
    > {
        ServiceBuilder::new()
            .layer(ReplayBodyLayer::default())
            .layer(
                RetryLayer::builder()
                    .policy(HttpRetry::new())
                    .observer(rec.clone())
                    .build()
                    .unwrap(),
            )
    }

    fn body(s: &'static str) -> Full<Bytes> {
        Full::new(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_is_not_retried_the_same_post_with_an_idempotency_key_is() {
        let log = Log::default();
        let rec = Recorder::new();
        let mut c = client((503, None), log.clone(), &rec);
        let req = Request::post("/pay").body(body("hello")).unwrap();
        let res = c.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(*log.lock().unwrap(), [("none".to_owned(), 5)]);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::NotRetryable)]);

        let log = Log::default();
        let rec = Recorder::new();
        let mut c = client((503, None), log.clone(), &rec);
        let req = Request::post("/pay")
            .header("idempotency-key", "order-42")
            .body(body("hello"))
            .unwrap();
        let res = c.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            *log.lock().unwrap(),
            [("none".to_owned(), 5), ("2".to_owned(), 5)]
        );
        assert_eq!(scheduled(&rec).len(), 1);
        assert!(gave_up(&rec).is_empty());
    }

    /// One GET through a client whose dependency answers `first` once,
    /// within `within` if given: its status, the layer's events, the calls
    /// made and the time taken.
    async fn get_once(
        first: (u16, Option<&'static str>),
        within: Option<Duration>,
    ) -> (StatusCode, Recorder, usize, Duration) {
        let log = Log::default();
        let rec = Recorder::new();
        let start = Instant::now();
        let status = {
            let mut c = client(first, log.clone(), &rec);
            let fut = c
                .ready()
                .await
                .unwrap()
                .call(Request::get("/").body(body("")).unwrap());
            match within {
                Some(d) => deadline::scope(Deadline::after(d), fut).await,
                None => fut.await,
            }
            .unwrap()
            .status()
        };
        let calls = log.lock().unwrap().len();
        (status, rec, calls, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_header_is_honoured_or_refused() {
        let ms = Duration::from_millis;
        // One retry, after `secs` and up to a fifth more; `took` that wait
        // (the timer wheel's millisecond rounds it up).
        let waited_seconds = |rec: &Recorder, took: Duration, secs: u64| {
            let [(2, delay)] = scheduled(rec)[..] else {
                panic!("{:?}", scheduled(rec))
            };
            let wait = Duration::from_secs(secs);
            assert!(delay >= wait && delay <= wait + wait / 5, "{delay:?}");
            assert!(took >= delay && took <= delay + ms(1), "{took:?}");
        };
        // delay-seconds: waited at least that long, up to a fifth more
        // (every caller told "2" would come back at one instant).
        let (status, rec, _, took) = get_once((503, Some("2")), None).await;
        assert_eq!(status, StatusCode::OK);
        waited_seconds(&rec, took, 2);

        // Longer than the deadline: the 429 is returned at once.
        let (status, rec, calls, _) =
            get_once((429, Some("8")), Some(Duration::from_secs(5))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(calls, 1);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::Deadline)]);

        // A seawall server's wait in milliseconds beside it: that one, so
        // a caller with 800 ms left still retries (it gave up on the `1`).
        for within in [None, Some(ms(800))] {
            let (status, rec, _, took) = get_once((503, Some("1|120")), within).await;
            assert_eq!(status, StatusCode::OK, "within {within:?}");
            assert_eq!(took, ms(120));
            assert_eq!(scheduled(&rec), [(2, ms(120))]);
        }
        let (status, rec, _, _) = get_once((503, Some("1|120")), Some(ms(100))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::Deadline)]);

        // A wait of 0 ms is no hint (every refused client back at once):
        // `Retry-After` decides.
        let (status, rec, _, took) = get_once((503, Some("1|0")), None).await;
        assert_eq!(status, StatusCode::OK);
        waited_seconds(&rec, took, 1);

        // `Retry-After: 0` asks no wait, and gets the backoff's jittered one
        // (at once, every refused client came back together).
        let (status, rec, calls, took) = get_once((503, Some("0")), None).await;
        assert_eq!((status, calls), (StatusCode::OK, 2));
        let waits = scheduled(&rec);
        assert_eq!(waits.len(), 1);
        assert!(waits[0].1 > Duration::ZERO, "{waits:?}");
        // (The timer wheel's millisecond rounds the wait up.)
        assert!(took >= waits[0].1 && took < waits[0].1 + ms(1), "{took:?}");

        // An HTTP-date cannot be measured on tokio's clock: not retried.
        let (status, rec, _, _) =
            get_once((503, Some("Wed, 21 Oct 2015 07:28:00 GMT")), None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::Pushback)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_limit_is_sent_once_whole_and_not_retried() {
        let log = Log::default();
        let rec = Recorder::new();
        let mut c = client((503, None), log.clone(), &rec);
        let big = Bytes::from(vec![7u8; 100 * 1024]);
        let req = Request::put("/blob").body(Full::new(big)).unwrap();
        let res = c.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(*log.lock().unwrap(), [("none".to_owned(), 100 * 1024)]);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::NotReplayable)]);

        // Exactly at the limit: buffered and replayed.
        let log = Log::default();
        let mut c = client((503, None), log.clone(), &rec);
        let req = Request::put("/blob")
            .body(Full::new(Bytes::from(vec![7u8; 64 * 1024])))
            .unwrap();
        let res = c.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            *log.lock().unwrap(),
            [("none".to_owned(), 65_536), ("2".to_owned(), 65_536)]
        );
    }

    type Frames = http_body_util::StreamBody<
        futures::stream::Iter<
            std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;

    fn frames(parts: &[&'static str], trailer: Option<&'static str>) -> Frames {
        let mut v: Vec<_> = parts
            .iter()
            .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if let Some(t) = trailer {
            let mut map = http::HeaderMap::new();
            map.insert("x-checksum", http::HeaderValue::from_static(t));
            v.push(Ok(http_body::Frame::trailers(map)));
        }
        http_body_util::StreamBody::new(futures::stream::iter(v))
    }

    type Seen = Arc<Mutex<Vec<(Bytes, Option<String>)>>>;

    /// 503 on the first call, then 200; records each body and its trailer.
    fn recording(
        seen: Seen,
    ) -> impl Service<
        Request<ReplayBody<Frames>>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<()>, BoxError>> + Send,
    > + Clone {
        tower::service_fn(move |req: Request<ReplayBody<Frames>>| {
            let seen = seen.clone();
            async move {
                let collected = req.into_body().collect().await?;
                let trailer = collected
                    .trailers()
                    .and_then(|t| t.get("x-checksum"))
                    .map(|v| v.to_str().unwrap().to_owned());
                let mut seen = seen.lock().unwrap();
                seen.push((collected.to_bytes(), trailer));
                let status = if seen.len() == 1 { 503 } else { 200 };
                Ok::<_, BoxError>(Response::builder().status(status).body(())?)
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn streamed_bodies_keep_their_order_and_trailers() {
        // Over a 10-byte limit: what was read ahead is sent first, then the
        // rest, once.
        let seen = Seen::default();
        let mut c = ServiceBuilder::new()
            .layer(ReplayBodyLayer::new(10))
            .layer(
                RetryLayer::builder()
                    .policy(HttpRetry::new())
                    .build()
                    .unwrap(),
            )
            .service(recording(seen.clone()));
        let req = Request::put("/")
            .body(frames(&["hello", "world", "!!!", "tail"], None))
            .unwrap();
        let res = c.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            *seen.lock().unwrap(),
            [(Bytes::from_static(b"helloworld!!!tail"), None)]
        );

        // Within the limit, with trailers: both attempts get body and trailers.
        let seen = Seen::default();
        let mut c = ServiceBuilder::new()
            .layer(ReplayBodyLayer::new(10))
            .layer(
                RetryLayer::builder()
                    .policy(HttpRetry::new())
                    .build()
                    .unwrap(),
            )
            .service(recording(seen.clone()));
        let req = Request::put("/")
            .body(frames(&["ab", "cd"], Some("sum-1")))
            .unwrap();
        let res = c.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let want = (Bytes::from_static(b"abcd"), Some("sum-1".to_owned()));
        assert_eq!(*seen.lock().unwrap(), [want.clone(), want]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_marks_inbound_retries_so_its_clients_do_not_retry_again() {
        let log = Log::default();
        let rec = Recorder::new();
        // The dependency is down: every call 503.
        let down = replaying(&rec).service({
            let log = log.clone();
            tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
                let log = log.clone();
                async move {
                    let a = req.headers().get("x-seawall-attempt");
                    let a = a.map_or(Ok("none"), |a| a.to_str())?.to_owned();
                    log.lock().unwrap().push((a, 0));
                    Ok::<_, BoxError>(Response::builder().status(503).body(())?)
                }
            })
        });
        let mut server = ServiceBuilder::new()
            .layer(MarkInboundAttemptLayer::new())
            .service(tower::service_fn(move |_req: Request<()>| {
                let mut dep = down.clone();
                async move {
                    let res = dep
                        .ready()
                        .await?
                        .call(Request::get("/dep").body(body(""))?)
                        .await?;
                    Ok::<_, BoxError>(res.status())
                }
            }));

        // Inbound first attempt: the handler's client retries (3 attempts).
        let req = Request::get("/").body(()).unwrap();
        server.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 3);

        // Inbound retry (attempt 2): its sub-request is sent once.
        log.lock().unwrap().clear();
        rec.clear();
        let req = Request::get("/")
            .header("x-seawall-attempt", "2")
            .body(())
            .unwrap();
        let status = server.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // Sent marked as the retry it is part of: the hop after this one
        // does not retry it either (it was sent as attempt 1, and retried
        // there).
        assert_eq!(*log.lock().unwrap(), [("2".to_owned(), 0)]);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::NotRetryable)]);
    }

    /// A request body whose next frame is not ready (a stream fed as the
    /// call goes) is sent at once with what was read, and not retried: the
    /// call is not held until the stream ends.
    #[tokio::test(start_paused = true)]
    async fn a_body_still_being_fed_is_sent_at_once_and_not_retried() {
        type Feed = http_body_util::StreamBody<
            futures::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, BoxError>>,
        >;
        let rec = Recorder::new();
        let first_frames = Log::default();
        let mut c = replaying(&rec).service({
            let first_frames = first_frames.clone();
            tower::service_fn(move |req: Request<ReplayBody<Feed>>| {
                let first_frames = first_frames.clone();
                async move {
                    // Reads one message, answers 503 (would be retried).
                    let mut body = req.into_body();
                    let frame = body.frame().await.unwrap()?;
                    let data = frame.into_data().unwrap();
                    first_frames
                        .lock()
                        .unwrap()
                        .push((String::from_utf8_lossy(&data).into_owned(), 0));
                    Ok::<_, BoxError>(Response::builder().status(503).body(())?)
                }
            })
        });
        use futures::StreamExt;
        let feed: Feed = http_body_util::StreamBody::new(
            futures::stream::iter([Ok(http_body::Frame::data(Bytes::from_static(b"ping")))])
                .chain(futures::stream::pending())
                .boxed(),
        );
        let req = Request::put("/chat").body(feed).unwrap();
        let call = c.ready().await.unwrap().call(req);
        let res = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call waited for the stream to end")
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(*first_frames.lock().unwrap(), [("ping".to_owned(), 0)]);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::NotReplayable)]);
    }
}

// ---------------------------------------------------------------- grpc

#[cfg(feature = "tonic")]
mod grpc_tests {
    use super::*;
    use http::{Request, Response};
    use seawall::retry::grpc::GrpcRetry;

    type CallLog = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

    fn upstream(
        first_pushback: &'static str,
        log: CallLog,
    ) -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<()>, BoxError>>,
    > + Clone {
        tower::service_fn(move |req: Request<()>| {
            let mut log = log.lock().unwrap();
            let prev = req
                .headers()
                .get("grpc-previous-rpc-attempts")
                .map(|v| v.to_str().unwrap().to_owned());
            log.push((Instant::now(), prev));
            // Trailers-only UNAVAILABLE with pushback first, then OK.
            let res = if log.len() == 1 {
                Response::builder()
                    .header("grpc-status", "14")
                    .header("grpc-retry-pushback-ms", first_pushback)
                    .body(())
            } else {
                Response::builder().header("grpc-status", "0").body(())
            };
            async move { Ok::<_, BoxError>(res?) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_pushback_is_honoured_and_a_negative_one_stops_retries() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder::new();
        let mut svc = RetryLayer::builder()
            .policy(GrpcRetry::new())
            .observer(rec.clone())
            .build()
            .unwrap()
            .layer(upstream("250", log.clone()));
        let start = Instant::now();
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.headers()["grpc-status"], "0");
        let log_now: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, p)| (*t - start, p.clone()))
            .collect();
        assert_eq!(
            log_now,
            [(Duration::ZERO, None), (250 * MS, Some("1".to_owned()))]
        );
        assert_eq!(scheduled(&rec), [(2, 250 * MS)]);

        let log = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder::new();
        let mut svc = RetryLayer::builder()
            .policy(GrpcRetry::new())
            .observer(rec.clone())
            .build()
            .unwrap()
            .layer(upstream("-1", log.clone()));
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(log.lock().unwrap().len(), 1);
        assert_eq!(gave_up(&rec), [(1, GiveUpReason::Pushback)]);
    }

    /// A `DEADLINE_EXCEEDED` the dependency answers as the request's
    /// deadline ends (not retried by the gRPC policy's default) is given up
    /// on for the deadline, not as not retryable; one answered with time
    /// left is not retryable, as before.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_answer_at_the_deadline_gives_up_for_the_deadline() {
        for (answer_after, reason) in [
            (990 * MS, GiveUpReason::Deadline),
            (100 * MS, GiveUpReason::NotRetryable),
        ] {
            let rec = Recorder::new();
            let dep = tower::service_fn(move |_: Request<()>| async move {
                tokio::time::sleep(answer_after).await;
                Ok::<_, BoxError>(Response::builder().header("grpc-status", "4").body(())?)
            });
            let mut svc = RetryLayer::builder()
                .policy(GrpcRetry::new())
                .observer(rec.clone())
                .build()
                .unwrap()
                .layer(dep);
            let fut = svc.ready().await.unwrap().call(Request::new(()));
            let res = deadline::scope(Deadline::after(Duration::from_secs(1)), fut)
                .await
                .unwrap();
            assert_eq!(res.headers()["grpc-status"], "4");
            assert_eq!(
                gave_up(&rec),
                [(1, reason)],
                "answered after {answer_after:?}"
            );
        }
    }
}

/// The default budget grows with success: in the same brownout (the first
/// attempt of each request fails, its retry succeeds), each saved request
/// adds half a retry to the budget. Every first attempt failing is the case
/// where the budget should stay bounded: it saves 229 of 300 (a plain 10 %
/// budget saved 130) and no more.
#[tokio::test(start_paused = true)]
async fn the_default_budget_grows_with_success() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = brownout(Arc::new(AtomicBool::new(false)), calls.clone());
    let layer = default_budget_1ms_apart();
    let mut svc = layer.layer(svc);
    let mut ok = 0;
    for i in 0..300 {
        if svc.ready().await.unwrap().call(i).await.is_ok() {
            ok += 1;
        }
    }
    // Request k retries while retries + 1 <= 100 (floor) + 0.05 k + 0.5 ×
    // successes, and only retried requests succeed: every request up to
    // k = 200 (100 + 0.55 k), then while retries before it <= 198 + 0.1 k:
    // 229 retries by k = 300.
    assert_eq!(ok, 229);
    assert_eq!(count(&calls), 300 + 229);
    let snap = layer.budget().snapshot();
    assert_eq!((snap.requests, snap.retries, snap.available), (300, 229, 0));
}

/// A service that counts its clones and fails the calls it is told to.
struct Cloned {
    clones: Arc<AtomicU32>,
    fail: Arc<AtomicBool>,
}

impl Clone for Cloned {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Cloned {
            clones: self.clones.clone(),
            fail: self.fail.clone(),
        }
    }
}

impl Service<u32> for Cloned {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        if self.fail.load(Ordering::SeqCst) {
            std::future::ready(Err("boom".into()))
        } else {
            std::future::ready(Ok(x))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_succeeds_clones_nothing_and_each_retry_clones_the_spare_once() {
    let clones = Arc::new(AtomicU32::new(0));
    let fail = Arc::new(AtomicBool::new(false));
    let mut svc = RetryLayer::builder().build().unwrap().layer(Cloned {
        clones: clones.clone(),
        fail: fail.clone(),
    });
    for i in 0..100 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    // The spare copy, taken at the first call that could be retried.
    assert_eq!(count(&clones), 1);

    // A failing call is retried up to the limit (3 attempts): each of its
    // 2 retries runs on its own clone of the spare.
    fail.store(true, Ordering::SeqCst);
    let err = svc.ready().await.unwrap().call(7).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert_eq!(count(&clones), 3);
}

/// A policy that retries errors but never has a copy of the request to send
/// again (a body past its replay limit, say).
struct NoCopy;

impl seawall::retry::RetryPolicy<u32, u32> for NoCopy {
    fn classify(&self, result: Result<&u32, &BoxError>) -> seawall::retry::Verdict {
        match result {
            Ok(_) => seawall::retry::Verdict::Success,
            Err(_) => seawall::retry::Verdict::RETRY,
        }
    }

    fn clone_request(&self, _: &u32) -> Option<u32> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_with_no_copy_is_sent_once_and_takes_no_spare_service() {
    let clones = Arc::new(AtomicU32::new(0));
    let fail = Arc::new(AtomicBool::new(true));
    let rec = Recorder::new();
    let mut svc = RetryLayer::builder()
        .policy(NoCopy)
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(Cloned {
            clones: clones.clone(),
            fail: fail.clone(),
        });
    let err = svc.ready().await.unwrap().call(7).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    // No retry can be sent, so no spare copy of the service is taken.
    assert_eq!(count(&clones), 0);
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::NotReplayable)]);
}

/// Fails every call with "boom"; after its first call, no copy of it is
/// ever ready again (a connection pool that lost every connection).
#[derive(Clone)]
struct StallsAfterFirstCall {
    calls: Arc<AtomicU32>,
}

impl Service<u32> for StallsAfterFirstCall {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if count(&self.calls) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err("boom".into()))
    }
}

/// A retry layer named "stalled" (20 ms backoff, no jitter) with
/// `min_remaining`, and one call through it to a service that stalls after
/// its first call, under a 100 ms deadline: the error, the time it took and
/// the calls made.
async fn stalled_call(
    min_remaining: Duration,
    rec: &Recorder,
) -> (RetryLayer, BoxError, Duration, u32) {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = RetryLayer::builder()
        .backoff(20 * MS, 20 * MS)
        .jitter(Jitter::None)
        .min_remaining(min_remaining)
        .observer(rec.clone())
        .name("stalled")
        .build()
        .unwrap();
    let mut svc = layer.layer(StallsAfterFirstCall {
        calls: calls.clone(),
    });
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(1);
    // (A wait no timer bounds would never end: the guard makes it fail.)
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        deadline::scope(Deadline::after(100 * MS), fut),
    )
    .await
    .expect("the retry gives up within the deadline")
    .unwrap_err();
    (layer, err, start.elapsed(), count(&calls))
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_readiness_only_while_the_deadline_leaves_time_for_it() {
    // Fails at 0, backs off until 20 ms, then waits for a ready copy until
    // 90 ms, when less than the minimum 10 ms would be left: the last
    // outcome, and the retry it had taken from the budget handed back.
    let rec = Recorder::new();
    let (layer, err, elapsed, calls) =
        stalled_call(seawall::retry::DEFAULT_MIN_REMAINING, &rec).await;
    assert_eq!(err.to_string(), "boom");
    assert_eq!((elapsed, calls), (90 * MS, 1));
    assert_eq!(scheduled(&rec), [(2, 20 * MS)]);
    assert_eq!(gave_up(&rec), [(1, GiveUpReason::Deadline)]);
    // One request counted, no retry left spent.
    let (requests, retries, _) = counts(layer.budget().snapshot());
    assert_eq!((requests, retries), (1, 0));

    // With no minimum it waits to the deadline itself: DeadlineExceeded,
    // named after the retry layer.
    let (_, err, elapsed, calls) = stalled_call(Duration::ZERO, &Recorder::new()).await;
    assert_eq!((elapsed, calls), (100 * MS, 1));
    let de = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("DeadlineExceeded");
    assert_eq!(de.name(), "stalled");
}

/// Composed by hand (a retry layer over an attempt timeout, under a
/// request deadline), 40 requests at once to a dependency answering every
/// call in 500 ms, 200 ms attempts: all 40 time out together; the first 2
/// (a couple of timeouts are a tail at any traffic) are retried, and the
/// other 38 find timeouts common: not retried, reported as `RetryGaveUp`
/// with reason `timeouts_common` (not as an empty budget, which it is
/// not).
#[tokio::test(start_paused = true)]
async fn timeouts_common_are_reported_as_such() {
    let rec = Recorder::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(deadline::DeadlineLayer::new(Duration::from_secs(2)).unwrap())
        .layer(
            seawall::retry::RetryLayer::builder()
                .observer(Observer::new(rec.clone()))
                .build()
                .unwrap(),
        )
        .layer(deadline::AttemptTimeoutLayer::new(Duration::from_millis(200)).unwrap())
        .service(tower::service_fn(move |n: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<u32, BoxError>(n)
            }
        }));
    let all = (0..40).map(|i| svc.clone().oneshot(i));
    let results = futures::future::join_all(all).await;
    let gave_up = |reason| {
        rec.count(|e| matches!(e.kind, EventKind::RetryGaveUp { reason: r, .. } if r == reason))
    };
    assert_eq!(gave_up(GiveUpReason::TimeoutsCommon), 38);
    assert_eq!(gave_up(GiveUpReason::BudgetExhausted), 0);
    assert_eq!(
        rec.count(|e| matches!(e.kind, EventKind::BudgetExhausted)),
        0
    );
    // The 2 retried: their second attempts, made once timeouts were
    // common, were not cut and were answered.
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 42);
}

/// A dependency that served 200 requests, then answers a bare "busy" (a
/// shedder's `Overloaded` with no wait: a `503` or a server's
/// `UNAVAILABLE` without one) to the next 100: a retry of such an answer
/// may draw on the successes' credit (one instance of several down
/// answers it too), but once 10 come with no request succeeding since,
/// the dependency serves nothing, and its retries draw on the budget's
/// fraction of requests and floor only: 100 + 5 % of the requests. (The
/// successes' credit paid for 200 here, every retry the 100 could make.)
#[tokio::test(start_paused = true)]
async fn a_run_of_bare_busy_answers_is_retried_within_the_floor_and_the_fraction() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |i: u32| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if i < 200 {
                Ok(i)
            } else {
                Err::<u32, BoxError>(seawall::error::Overloaded::new("dependency", None).into())
            }
        }
    });
    let layer = default_budget_1ms_apart();
    let mut svc = layer.layer(svc);
    for i in 0..300 {
        let _ = svc.ready().await.unwrap().call(i).await;
    }
    // 100 requests and 115 retries: the floor's 100 and 5 % of 300.
    assert_eq!(count(&calls) - 200, 215);
    let snap = layer.budget().snapshot();
    assert_eq!((snap.requests, snap.retries), (300, 115));
}

/// [`default_budget_1ms_apart`], observed.
fn observed_1ms_apart() -> (Recorder, RetryLayer) {
    let rec = Recorder::new();
    let layer = RetryLayer::builder()
        .backoff(MS, MS)
        .jitter(Jitter::None)
        .observer(rec.clone())
        .build()
        .unwrap();
    (rec, layer)
}

/// Requests given up because retries of failures were futile.
fn futile(rec: &Recorder) -> usize {
    gave_up(rec)
        .iter()
        .filter(|(_, r)| *r == GiveUpReason::RetriesFutile)
        .count()
}

/// A dependency whose answers are ready at once, 3 calls in 10 failing at
/// random: 7 retries in 10 save their request, so retries of failures are
/// never judged futile, whether the retry's answer comes on its first poll
/// or later. (A retry that succeeded on its first poll was not counted as
/// a save, and after 36 failed retries, 7 failures in 8 were given up.)
#[tokio::test(start_paused = true)]
async fn retries_that_save_requests_are_never_judged_futile() {
    let (rec, layer) = observed_1ms_apart();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = layer.layer(tower::service_fn(move |_req: u32| {
        // A fixed draw per call: 3 in 10 fail.
        let n = c.fetch_add(1, Ordering::SeqCst);
        let fail = n.wrapping_mul(2_654_435_761) % 10 < 3;
        async move {
            if fail {
                Err::<u32, BoxError>("boom".into())
            } else {
                Ok(7)
            }
        }
    }));
    let mut served = 0;
    for i in 0..2000 {
        served += u32::from(svc.clone().oneshot(i).await.is_ok());
    }
    let futile = futile(&rec);
    println!("served {served} of 2000, {futile} given up as futile");
    assert_eq!(futile, 0);
    assert!(served >= 1940, "{served}");
}

/// Retries judged futile (a dependency failing every call) are taken to
/// save requests again once a whole budget window (10 s) has passed with no
/// retry to confirm it: an occasional failure later is retried, not given
/// up 7 times in 8.
#[tokio::test(start_paused = true)]
async fn a_judgement_of_futility_is_forgotten_after_a_window() {
    let (rec, layer) = observed_1ms_apart();
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let svc = layer.layer(tower::service_fn(move |req: u32| {
        // Broken: every call fails. Then: only the odd requests fail.
        let fail = b.load(Ordering::SeqCst) || req % 2 == 1;
        async move {
            if fail {
                Err::<u32, BoxError>("boom".into())
            } else {
                Ok(req)
            }
        }
    }));
    for i in 0..40 {
        assert!(svc.clone().oneshot(i * 2).await.is_err());
    }
    let judged = futile(&rec);
    assert!(
        judged > 0,
        "retries of an always failing dependency are futile"
    );
    broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(11)).await;
    // A failing request is retried (twice: its retries fail too), not
    // given up as futile.
    let attempts_before = scheduled(&rec).len();
    let _ = svc.clone().oneshot(1).await;
    assert_eq!(futile(&rec), judged, "not given up as futile any more");
    assert_eq!(scheduled(&rec).len(), attempts_before + 2, "retried");
}
