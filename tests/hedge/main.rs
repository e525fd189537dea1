#![cfg(all(feature = "hedge", feature = "circuit-breaker", feature = "bulkhead"))]
//! Hedged requests in paused time: the tail they cut, the load they add (a
//! heavy tail, a brownout), deadlines, idempotency, the breaker below, and
//! random cancellation leaving nothing behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use seawall::BoxError;
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::deadline::DeadlineLayer;
use seawall::hedge::HedgeLayer;
use seawall::observe::{EventKind, Observer, Recorder};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// splitmix64: a reproducible pseudo-random sequence.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A backend whose call number `n` takes `latency(n)`; counts its calls.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicU64>,
    latency: Arc<dyn Fn(u64) -> Duration + Send + Sync>,
}

impl Backend {
    fn new(latency: impl Fn(u64) -> Duration + Send + Sync + 'static) -> Self {
        Backend {
            calls: Arc::new(AtomicU64::new(0)),
            latency: Arc::new(latency),
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<u64> for Backend {
    type Response = u64;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let d = (self.latency)(n);
        Box::pin(async move {
            tokio::time::sleep(d).await;
            Ok(req)
        })
    }
}

/// The heavy tail: 5 % of calls take 20 times the median (10 ms → 200 ms).
fn heavy_tail(n: u64) -> Duration {
    if mix(n) % 100 < 5 { 200 * MS } else { 10 * MS }
}

/// Sends `requests` requests, one every `every`, each in its own task;
/// returns their latencies, sorted.
async fn run<S>(svc: S, requests: u64, every: Duration) -> Vec<Duration>
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for i in 0..requests {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let r = svc.oneshot(i).await;
            (r.is_ok(), start.elapsed())
        }));
        tokio::time::sleep(every).await;
    }
    let mut lat = Vec::new();
    for t in tasks {
        let (ok, d) = t.await.unwrap();
        assert!(ok);
        lat.push(d);
    }
    lat.sort();
    lat
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(start_paused = true)]
async fn hedging_at_p95_cuts_a_heavy_tail_p99_ninefold_for_under_ten_percent_more_calls() {
    const N: u64 = 4000;
    let plain = Backend::new(heavy_tail);
    let without = run(plain.clone(), N, 5 * MS).await;

    let backend = Backend::new(heavy_tail);
    let layer = HedgeLayer::builder().build().unwrap(); // the defaults: p95, 10 % budget
    let with = run(layer.layer(backend.clone()), N, 5 * MS).await;

    let (p50, p99, p999) = (
        quantile(&with, 0.5),
        quantile(&with, 0.99),
        quantile(&with, 0.999),
    );
    let (p50_0, p99_0, p999_0) = (
        quantile(&without, 0.5),
        quantile(&without, 0.99),
        quantile(&without, 0.999),
    );
    let extra = backend.calls() as f64 / N as f64 - 1.0;
    println!(
        "without: p50 {p50_0:?} p99 {p99_0:?} p99.9 {p999_0:?}; \
         hedged: p50 {p50:?} p99 {p99:?} p99.9 {p999:?}; extra load {:.1} %",
        extra * 100.0
    );
    assert_eq!(plain.calls(), N);
    assert_eq!(p99_0, 200 * MS);
    assert_eq!(p50, 10 * MS, "the median is not delayed");
    assert!(
        p99 * 5 <= p99_0,
        "p99 {p99:?} is not 5 times below {p99_0:?}"
    );
    assert!(p99 <= 30 * MS, "p99 {p99:?}");
    assert!(extra > 0.03, "hardly any hedge was sent: {extra}");
    assert!(extra <= 0.10, "extra load {extra} above the 10 % budget");
}

/// A tail of 10 % of calls (one slow replica in ten): the p95 is the slow
/// latency, and the defaults send no copy before it; a quantile below the
/// slow share, a budget above it and a third attempt (a copy is slow one
/// time in ten as well) cut the tail: p99 200 ms to 32 ms for 10.2 % more
/// calls (what the guide and the module docs advise).
#[tokio::test(start_paused = true)]
async fn a_tail_heavier_than_five_percent_takes_a_lower_quantile() {
    const N: u64 = 4000;
    let tail = |n: u64| if mix(n) % 100 < 10 { 200 * MS } else { 10 * MS };
    let backend = Backend::new(tail);
    let defaults = HedgeLayer::builder().build().unwrap();
    let with_defaults = run(defaults.layer(backend.clone()), N, 5 * MS).await;
    let default_extra = backend.calls() as f64 / N as f64 - 1.0;

    let backend = Backend::new(tail);
    let tuned = HedgeLayer::builder()
        .quantile(0.85, 20, Duration::from_secs(1))
        .budget_ratio(0.15)
        .max_attempts(3)
        .build()
        .unwrap();
    let with_tuned = run(tuned.layer(backend.clone()), N, 5 * MS).await;
    let extra = backend.calls() as f64 / N as f64 - 1.0;
    let (p99_d, p99_t) = (quantile(&with_defaults, 0.99), quantile(&with_tuned, 0.99));
    println!(
        "10 % slow: defaults p99 {p99_d:?} extra {:.1} %; p85, 15 %, 3 attempts: p99 {p99_t:?} extra {:.1} %",
        default_extra * 100.0,
        extra * 100.0
    );
    assert_eq!(p99_d, 200 * MS, "the defaults cut a 10 % tail");
    assert!(p99_t <= 40 * MS, "p99 {p99_t:?}");
    assert!(extra <= 0.16, "extra load {extra}");
}

#[tokio::test(start_paused = true)]
async fn in_a_brownout_the_budget_keeps_the_extra_load_under_its_share() {
    const N: u64 = 3000;
    // Healthy for the first 1000 calls, then every call takes 300 ms.
    let backend = Backend::new(|n| if n < 1000 { 10 * MS } else { 300 * MS });
    let rec = Recorder::new();
    let layer = HedgeLayer::builder()
        .observer(Observer::from(rec.clone()))
        .build()
        .unwrap();
    let started = Instant::now();
    let lat = run(layer.layer(backend.clone()), N, 5 * MS).await;
    let secs = started.elapsed().as_secs_f64();
    let hedges = rec
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::HedgeSent { .. }))
        .count() as u64;
    let extra = backend.calls() - N;
    println!(
        "brownout: {extra} hedges for {N} requests over {secs:.1} s, p99 {:?}",
        quantile(&lat, 0.99)
    );
    assert_eq!(extra, hedges);
    // The estimate follows the slow calls within a window or two: a few
    // hedges at the turn, then none.
    assert!(
        extra <= N / 20,
        "{extra} hedges: the estimate did not follow"
    );
    let _ = secs;

    // With a fixed delay every slow request wants a hedge: the budget is
    // what holds them to 10 % of the requests plus 1 per second.
    let backend = Backend::new(|n| if n < 1000 { 10 * MS } else { 300 * MS });
    let rec = Recorder::new();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .observer(Observer::from(rec.clone()))
        .build()
        .unwrap();
    let started = Instant::now();
    run(layer.layer(backend.clone()), N, 5 * MS).await;
    let secs = started.elapsed().as_secs_f64();
    let extra = backend.calls() - N;
    println!("brownout, fixed delay: {extra} hedges for {N} requests over {secs:.1} s");
    let cap = N / 10 + secs.ceil() as u64 + 10;
    assert!(extra <= cap, "{extra} hedges above the cap {cap}");
    // 2000 slow requests fill the last 10 s window: about 200 + 10 hedges.
    assert!(extra >= 180, "the budget was not used: {extra}");
    assert!(
        rec.events()
            .iter()
            .any(|e| matches!(e.kind, EventKind::BudgetExhausted))
    );
}

#[tokio::test(start_paused = true)]
async fn no_hedge_without_time_to_finish_and_none_past_the_deadline() {
    let backend = Backend::new(|_| 500 * MS);
    let hedge = HedgeLayer::builder().delay(60 * MS).build().unwrap();
    // 100 ms: at 60 ms only 40 ms are left, less than the 60 ms waited.
    let mut svc = DeadlineLayer::new(100 * MS)
        .unwrap()
        .layer(hedge.layer(backend.clone()));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(backend.calls(), 1, "a hedge was sent with 40 ms left");

    // 200 ms: the hedge goes at 60 ms (140 ms left), and the request still
    // ends at its deadline.
    let mut svc = DeadlineLayer::new(200 * MS)
        .unwrap()
        .layer(hedge.layer(backend.clone()));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_eq!(start.elapsed(), 200 * MS);
    assert_eq!(backend.calls(), 3);
}

/// The time a request waited is counted until its copy could go: a copy
/// whose service was not ready until 600 ms of a 1 s deadline would get
/// 400 ms, less than the 600 ms the request already waited, and is not sent
/// (it was judged at the timer's 100 ms and sent).
#[tokio::test(start_paused = true)]
async fn a_copy_that_waited_for_readiness_is_judged_when_it_could_go() {
    // Call 0 holds one of two places for 600 ms; call 1, the request, is
    // stuck; a copy would answer in 5 ms. The request under `deadline`,
    // hedged after 100 ms: its answer or error, when, and the calls made.
    async fn hedged_under(deadline: Duration) -> (Result<u64, BoxError>, Duration, u64) {
        let backend = Backend::new(|n| match n {
            0 => 600 * MS,
            1 => 10_000 * MS,
            _ => 5 * MS,
        });
        let limited = tower::limit::ConcurrencyLimitLayer::new(2).layer(backend.clone());
        let blocker = tokio::spawn(limited.clone().oneshot(0));
        tokio::task::yield_now().await;
        let hedge = HedgeLayer::builder().delay(100 * MS).build().unwrap();
        let mut svc = DeadlineLayer::new(deadline)
            .unwrap()
            .layer(hedge.layer(limited));
        let start = Instant::now();
        let result = svc.ready().await.unwrap().call(1).await;
        let took = start.elapsed();
        blocker.await.unwrap().unwrap();
        (result, took, backend.calls())
    }
    // 1 s: ready at 600 ms, 400 ms left, less than the 600 ms waited.
    let (result, took, calls) = hedged_under(1000 * MS).await;
    let err = result.unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_eq!(took, 1000 * MS);
    assert_eq!(calls, 2, "a copy was sent at 600 ms with 400 ms left");
    // 2 s: the copy goes once ready (1.4 s left) and answers.
    let (result, took, calls) = hedged_under(2000 * MS).await;
    assert_eq!(result.unwrap(), 1);
    assert_eq!(took, 605 * MS);
    assert_eq!(calls, 3);
}

#[tokio::test(start_paused = true)]
async fn up_to_max_attempts_each_a_delay_after_the_last_and_the_first_answer_wins() {
    // Calls 0 and 1 are stuck; call 2 answers in 5 ms.
    let backend = Backend::new(|n| if n < 2 { 10_000 * MS } else { 5 * MS });
    let rec = Recorder::new();
    let layer = HedgeLayer::builder()
        .delay(20 * MS)
        .max_attempts(3)
        .budget_ratio(1.0)
        .observer(Observer::from(rec.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(backend.clone());
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
    assert_eq!(start.elapsed(), 45 * MS); // hedges at 20 and 40 ms, then 5 ms
    assert_eq!(backend.calls(), 3);
    let sent: Vec<(u32, Duration)> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::HedgeSent { attempt, delay } => Some((attempt, delay)),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![(2, 20 * MS), (3, 40 * MS)]);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_until_the_estimator_has_enough_samples() {
    let backend = Backend::new(|n| if n == 0 { 300 * MS } else { 10 * MS });
    let layer = HedgeLayer::builder().build().unwrap();
    let mut svc = layer.layer(backend.clone());
    let start = Instant::now();
    svc.ready().await.unwrap().call(0).await.unwrap();
    assert_eq!(start.elapsed(), 300 * MS, "hedged with no estimate");
    assert_eq!(backend.calls(), 1);
    assert_eq!(layer.current_delay(), None);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_refused_by_an_open_breaker_is_not_an_answer_and_costs_no_budget() {
    let backend = Backend::new(|_| 100 * MS);
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    let handle = breaker.handle();
    let hedge = HedgeLayer::builder().delay(20 * MS).build().unwrap();
    let mut svc = hedge.layer(breaker.layer(backend.clone()));
    let before = hedge.budget().snapshot().available;
    let call = svc.ready().await.unwrap().call(5);
    let force = async {
        tokio::time::sleep(10 * MS).await;
        handle.force_open();
    };
    let (answer, ()) = tokio::join!(call, force);
    assert_eq!(answer.unwrap(), 5, "the first attempt's answer");
    assert_eq!(backend.calls(), 1, "the hedge reached the backend");
    assert_eq!(hedge.budget().snapshot().available, before);
}

#[tokio::test(start_paused = true)]
async fn cancelled_hedges_are_neither_failures_nor_successes_to_the_breaker_below() {
    // Every even call is slow: the first attempt of each request loses.
    let backend = Backend::new(|n| if n % 2 == 0 { 200 * MS } else { 10 * MS });
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    let handle = breaker.handle();
    let hedge = HedgeLayer::builder()
        .delay(20 * MS)
        .budget_ratio(1.0)
        .build()
        .unwrap();
    let mut svc = hedge.layer(breaker.layer(backend.clone()));
    for i in 0..50 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    assert_eq!(backend.calls(), 100);
    let m = handle.metrics();
    assert_eq!(
        (m.calls, m.failures),
        (50, 0),
        "only the winners are counted"
    );
}

/// A service whose `poll_ready` reserves a place until `call` uses it or
/// the copy is dropped, as tower's `Buffer` and a bulkhead in backpressure
/// mode do; counts the places reserved and not used.
struct Reserving {
    backend: Backend,
    reserved: Arc<AtomicU32>,
    holds: bool,
}

impl Clone for Reserving {
    fn clone(&self) -> Self {
        Reserving {
            backend: self.backend.clone(),
            reserved: self.reserved.clone(),
            holds: false,
        }
    }
}

impl Drop for Reserving {
    fn drop(&mut self) {
        if self.holds {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Service<u64> for Reserving {
    type Response = u64;
    type Error = BoxError;
    type Future = <Backend as Service<u64>>::Future;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if !self.holds {
            self.holds = true;
            self.reserved.fetch_add(1, Ordering::SeqCst);
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        assert!(self.holds, "called without poll_ready");
        self.holds = false;
        self.reserved.fetch_sub(1, Ordering::SeqCst);
        self.backend.call(req)
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_the_budget_refuses_gives_the_place_it_reserved_back_at_once() {
    let backend = Backend::new(|_| 300 * MS);
    let reserved = Arc::new(AtomicU32::new(0));
    let rec = Recorder::new();
    let hedge = HedgeLayer::builder()
        .delay(20 * MS)
        .budget(seawall::retry::RetryBudget::new(0.0, 0, Duration::from_secs(10)).unwrap())
        .observer(Observer::from(rec.clone()))
        .build()
        .unwrap();
    let mut svc = hedge.layer(Reserving {
        backend: backend.clone(),
        reserved: reserved.clone(),
        holds: false,
    });
    let call = svc.ready().await.unwrap().call(3);
    assert_eq!(reserved.load(Ordering::SeqCst), 0);
    let watch = async {
        // The hedge's timer fired at 20 ms and the budget said no.
        tokio::time::sleep(30 * MS).await;
        reserved.load(Ordering::SeqCst)
    };
    let (answer, held) = tokio::join!(call, watch);
    assert_eq!(answer.unwrap(), 3);
    assert_eq!(
        held, 0,
        "the refused hedge's copy kept its place for the whole request"
    );
    assert_eq!(backend.calls(), 1);
    assert!(
        rec.events()
            .iter()
            .any(|e| matches!(e.kind, EventKind::BudgetExhausted))
    );
}

#[tokio::test(start_paused = true)]
async fn a_later_hedge_needs_as_long_as_the_request_has_waited_and_a_huge_delay_sends_none() {
    // Every call takes 500 ms; hedges every 20 ms, three copies at most.
    // With 70 ms: the second copy goes at 20 ms (50 ms left, 20 waited); at
    // 40 ms the request has waited 40 ms and 30 ms are left: no third.
    let backend = Backend::new(|_| 500 * MS);
    let hedge = HedgeLayer::builder()
        .delay(20 * MS)
        .max_attempts(3)
        .budget_ratio(1.0)
        .build()
        .unwrap();
    let mut svc = DeadlineLayer::new(70 * MS)
        .unwrap()
        .layer(hedge.layer(backend.clone()));
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_eq!(backend.calls(), 2, "a third copy was sent with 30 ms left");

    // A delay past the clock's range: no hedge, no panic.
    let backend = Backend::new(|_| 10 * MS);
    let hedge = HedgeLayer::builder().delay(Duration::MAX).build().unwrap();
    let mut svc = hedge.layer(backend.clone());
    assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), 4);
    assert_eq!(backend.calls(), 1);
}

#[test]
fn the_settings_are_checked_when_built() {
    assert!(HedgeLayer::builder().max_attempts(1).build().is_err());
    assert!(HedgeLayer::builder().max_attempts(6).build().is_err());
    assert!(HedgeLayer::builder().delay(Duration::ZERO).build().is_err());
    assert!(HedgeLayer::builder().quantile(1.0, 20, MS).build().is_err());
    assert!(
        HedgeLayer::builder()
            .quantile(0.9, 20, Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(HedgeLayer::builder().budget_ratio(1.5).build().is_err());
    let e = HedgeLayer::builder().max_attempts(9).build().unwrap_err();
    assert!(
        e.to_string()
            .contains("max_attempts must be in 2..=5, got 9"),
        "{e}"
    );
}

/// Requests dropped at random points, through hedges over a breaker and a
/// bulkhead, leave every permit free and the breaker's window consistent.
#[tokio::test(start_paused = true)]
async fn random_drops_leave_no_permit_behind() {
    let backend = Backend::new(|n| Duration::from_millis(5 + mix(n) % 60));
    let bulkhead = BulkheadLayer::builder().max_concurrent(64).build().unwrap();
    let permits = bulkhead.handle();
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    let hedge = HedgeLayer::builder()
        .delay(15 * MS)
        .max_attempts(3)
        .budget_ratio(1.0)
        .build()
        .unwrap();
    let svc = hedge.layer(breaker.layer(bulkhead.layer(backend.clone())));
    let dropped = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..2000u64 {
        let svc = svc.clone();
        let dropped = dropped.clone();
        let cut = Duration::from_millis(mix(i ^ 0xabcd) % 80);
        tasks.push(tokio::spawn(async move {
            if tokio::time::timeout(cut, svc.oneshot(i)).await.is_err() {
                dropped.fetch_add(1, Ordering::SeqCst);
            }
        }));
        if i % 4 == 0 {
            tokio::time::sleep(MS).await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        dropped.load(Ordering::SeqCst) > 200,
        "too few drops to mean much"
    );
    assert_eq!(permits.available_permits(), 64);
    assert_eq!(permits.in_flight(), 0);
}

/// A gRPC client stack that hedges checks its policy's method names when
/// built: a hedge with no method opted in (it would send no copy), or a
/// name that is not a method's path (a typo, a wildcard), is refused,
/// saying how to name one; a path opted in builds. A new user's hedge on
/// `ClientStack::grpc` with no method, or `"kv.Kv/Get"`, built, sent no
/// copy, and the tail's p99 stayed 203 ms.
#[cfg(feature = "tonic")]
#[test]
fn a_grpc_hedge_that_hedges_no_method_is_refused_when_built() {
    use seawall::ClientStack;
    use seawall::retry::grpc::GrpcRetry;
    let stack = |policy: Option<GrpcRetry>| {
        let b = ClientStack::grpc("kv")
            .total_budget(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(500));
        match policy {
            Some(p) => b.retry(|r| r.policy(p)).hedge(|h| h).build().map(|_| ()),
            None => b.hedge(|h| h).build().map(|_| ()),
        }
    };
    let err = stack(None).unwrap_err().to_string();
    assert!(
        err.contains("hedges no method") && err.contains("hedge_method"),
        "{err}"
    );
    for bad in [
        "kv.Kv/Get",
        "/kv.Kv/*",
        "kv.Kv",
        "/kv.Kv/",
        "//Get",
        "/kv.Kv/Get/x",
    ] {
        let err = stack(Some(
            GrpcRetry::new()
                .hedge_method("/kv.Kv/Get")
                .hedge_method(bad),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("hedge_method given") && err.contains("\"/package.Service/Method\""),
            "{bad}: {err}"
        );
    }
    let err = stack(Some(
        GrpcRetry::new()
            .hedge_method("/kv.Kv/Get")
            .retry_service("kv.Kv/"),
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("retry_service given"), "{err}");
    let too_many = (0..17).fold(GrpcRetry::new(), |p, i| {
        p.hedge_method(&format!("/kv.Kv/M{i}"))
    });
    let err = stack(Some(too_many)).unwrap_err().to_string();
    assert!(err.contains("more than the most"), "{err}");
    assert!(stack(Some(GrpcRetry::new().hedge_method("/kv.Kv/Get"))).is_ok());
    assert!(
        stack(Some(
            GrpcRetry::new()
                .hedge_method("/kv.Kv/Get")
                .retry_method("/kv.Kv/Put")
                .retry_service("kv.Admin")
        ))
        .is_ok()
    );
    // No hedge: no method needs opting in.
    assert!(
        ClientStack::grpc("kv")
            .total_budget(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(500))
            .build()
            .is_ok()
    );
}
