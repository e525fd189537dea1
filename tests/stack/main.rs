//! The recommended stacks, composed: validation messages, instance names, and
//! behaviour with numbers (backend calls, attempts, elapsed time, rejection
//! kinds) under paused time.
#![cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use seawall::BoxError;
use seawall::error::{RejectionKind, rejection_of};
use seawall::observe::{EventKind, GiveUpReason, LayerKind, Observer, Outcome, Recorder, State};
use seawall::retry::Jitter;
use seawall::stack::{ClientStack, ServerStack};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Two calls at once through `stack`, over a dependency answering 7 after
/// 100 ms.
async fn two_at_once(
    stack: &seawall::stack::ClientStackLayer,
) -> (Result<u32, BoxError>, Result<u32, BoxError>) {
    let mut svc = stack.layer(service_fn(|_: u32| async {
        tokio::time::sleep(ms(100)).await;
        Ok::<u32, BoxError>(7)
    }));
    let first = svc.ready().await.unwrap().call(1);
    let second = svc.ready().await.unwrap().call(2);
    tokio::join!(first, second)
}

/// Calls `layer` reported finished with `outcome`.
fn finished(recorder: &Recorder, layer: LayerKind, outcome: Outcome) -> usize {
    recorder.count(|e| {
        e.layer == layer
            && matches!(e.kind, EventKind::CallFinished { outcome: o, .. } if o == outcome)
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn kind(err: &BoxError) -> RejectionKind {
    rejection_of(err)
        .unwrap_or_else(|| panic!("not a rejection: {err}"))
        .kind()
}

/// A backend that counts its calls and fails each one at once.
fn failing(
    calls: Arc<AtomicU32>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future = impl Future + Send> + Clone {
    service_fn(move |_: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, BoxError>("connection reset".into()) }
    })
}

// ---------------------------------------------------------------- validation

fn client_err(b: seawall::stack::ClientStackBuilder) -> String {
    b.build().unwrap_err().to_string()
}

#[test]
fn client_requires_its_total_budget() {
    assert_eq!(
        client_err(ClientStack::builder("p").attempt_timeout(ms(300))),
        "invalid client_stack configuration: total_budget must be set"
    );
}

/// The attempt timeout defaults to half the total budget (room for a
/// retry after an attempt that timed out), or all of it when no retry can
/// follow; a budget too short for half of it and the first backoff is
/// refused, saying the attempt timeout was the default.
#[test]
fn client_attempt_timeout_defaults_to_half_the_budget() {
    let stack = ClientStack::builder("p")
        .total_budget(ms(1000))
        .build()
        .unwrap();
    assert_eq!(stack.attempt_timeout().per_try(), ms(500));
    let stack = ClientStack::builder("p")
        .total_budget(ms(1000))
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    assert_eq!(stack.attempt_timeout().per_try(), ms(1000));
    #[cfg(feature = "http")]
    {
        let stack = ClientStack::http("p")
            .total_budget(ms(2000))
            .build()
            .unwrap();
        assert_eq!(stack.attempt_timeout().per_try(), ms(1000));
    }
    let err = client_err(ClientStack::builder("p").total_budget(ms(100)));
    assert!(
        err.starts_with("invalid client_stack configuration: retry schedule does not fit total_budget (100ms): attempt_timeout (50ms)"),
        "{err}"
    );
    assert!(
        err.ends_with("(attempt_timeout was not set: it defaults to half the total_budget)"),
        "{err}"
    );
    // Set, it is taken as it is.
    let stack = ClientStack::builder("p")
        .total_budget(ms(100))
        .attempt_timeout(ms(30))
        .build()
        .unwrap();
    assert_eq!(stack.attempt_timeout().per_try(), ms(30));
}

#[test]
fn client_refuses_attempt_timeout_above_budget() {
    assert_eq!(
        client_err(
            ClientStack::builder("p")
                .total_budget(ms(200))
                .attempt_timeout(ms(300))
        ),
        "invalid client_stack configuration: attempt_timeout must be at most total_budget (200ms), got 300ms"
    );
    // Equal is allowed when there is no retry to fit.
    assert!(
        ClientStack::builder("p")
            .total_budget(ms(300))
            .attempt_timeout(ms(300))
            .retry(|r| r.max_attempts(1))
            .build()
            .is_ok()
    );
}

fn schedule_msg(per_try: &str, first: &str) -> String {
    format!(
        "invalid client_stack configuration: retry schedule does not fit total_budget (1s): \
         attempt_timeout ({per_try}) + the longest first backoff ({first}) + the retry's \
         min_remaining (10ms) must be at most total_budget, or a request whose first attempt \
         times out may get no second attempt; lower them, keeping an attempt at least twice \
         the dependency's latency, or set max_attempts(1) with attempt_timeout equal to \
         total_budget"
    )
}

#[test]
fn client_refuses_a_retry_schedule_that_cannot_fit() {
    let b = |per_try| {
        ClientStack::builder("p")
            .total_budget(ms(1000))
            .attempt_timeout(ms(per_try))
    };
    // 941 ms + 50 ms (default base, full jitter: first delay at most 50 ms)
    // + 10 ms (min_remaining) = 1001 ms.
    assert_eq!(client_err(b(941)), schedule_msg("941ms", "50ms"));
    // 940 ms fits exactly.
    assert!(b(940).build().is_ok());
    // A smaller min_remaining makes room.
    assert!(b(941).retry(|r| r.min_remaining(ms(5))).build().is_ok());
    // Decorrelated jitter's first delay reaches 3 × base: 700 + 300 + 10.
    assert_eq!(
        client_err(b(700).retry(|r| r.backoff(ms(100), ms(2000)).jitter(Jitter::Decorrelated))),
        schedule_msg("700ms", "300ms")
    );
    // No jitter: exactly the base.
    assert!(
        b(890)
            .retry(|r| r.backoff(ms(100), ms(2000)).jitter(Jitter::None))
            .build()
            .is_ok()
    );
    // One attempt: nothing to fit.
    assert!(b(1000).retry(|r| r.max_attempts(1)).build().is_ok());
}

/// A hedge's fixed delay over half the budget is refused: a copy is sent
/// only with as much time left as the request has waited, so none would
/// go. Past the attempt timeout is fine: an attempt no retry can follow
/// (every one of the gRPC preset's by default) is not cut there.
#[cfg(feature = "hedge")]
#[test]
fn a_hedge_delay_over_half_the_budget_is_refused() {
    let b = |delay| {
        ClientStack::builder("p")
            .total_budget(ms(1000))
            .attempt_timeout(ms(300))
            .hedge(move |h| h.delay(ms(delay)))
            .build()
    };
    let e = b(501).unwrap_err().to_string();
    assert!(
        e.contains("delay (501ms) must be at most half the stack's total_budget (1s)"),
        "{e}"
    );
    assert!(b(500).is_ok());
    #[cfg(feature = "tonic")]
    assert!(
        ClientStack::grpc("p")
            .total_budget(ms(2000))
            .attempt_timeout(ms(300))
            .hedge(|h| h.delay(ms(500)))
            .retry(|r| r.policy(seawall::retry::grpc::GrpcRetry::new().hedge_method("/p.P/Get")))
            .build()
            .is_ok()
    );
}

/// A stack that propagates its deadline keeps 20 ms for a retry, as the
/// presets do (a seawall server takes 10 ms off what it is told), unless
/// `min_remaining` is set, before or after.
#[cfg(feature = "http")]
#[test]
fn a_stack_that_propagates_its_deadline_keeps_20_ms_for_a_retry() {
    let b = |per_try| {
        ClientStack::builder("p")
            .total_budget(ms(1000))
            .attempt_timeout(ms(per_try))
    };
    // 931 + 50 + 20 = 1001: refused with propagation, fine without.
    assert!(b(931).build().is_ok());
    let err = b(931).propagate_deadline(|p| p).build().unwrap_err();
    assert!(err.to_string().contains("min_remaining (20ms)"), "{err}");
    assert!(b(930).propagate_deadline(|p| p).build().is_ok());
    // Set before or after, the retry's own setting stays.
    let before = b(931)
        .retry(|r| r.min_remaining(ms(5)))
        .propagate_deadline(|p| p);
    assert_eq!(before.build().unwrap().retry().min_remaining(), ms(5));
    let after = b(931)
        .propagate_deadline(|p| p)
        .retry(|r| r.min_remaining(ms(10)));
    assert_eq!(after.build().unwrap().retry().min_remaining(), ms(10));
}

#[tokio::test(start_paused = true)]
async fn the_tightest_accepted_schedule_still_makes_its_second_attempt() {
    // 940 ms + at most 50 ms of backoff + 10 ms: the second attempt always
    // starts, whatever the jitter draws.
    for seed in 0..20 {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let slow = service_fn(move |_: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<u32, BoxError>(0)
            }
        });
        let stack = ClientStack::builder("p")
            .total_budget(ms(1000))
            .attempt_timeout(ms(940))
            .retry(|r| r.seed(seed))
            .build()
            .unwrap();
        let start = Instant::now();
        let err = stack.layer(slow).oneshot(1).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "seed {seed}");
        assert_eq!(start.elapsed(), ms(1000));
        assert_eq!(kind(&err), RejectionKind::DeadlineExceeded);
    }
}

#[test]
fn client_refuses_a_slow_call_threshold_that_never_trips() {
    let msg = |got: &str| {
        format!(
            "invalid client_stack configuration: slow_call_duration must be below \
             attempt_timeout (300ms), got {got}: a call cannot take longer than its attempt \
             timeout, so the slow-call rate could never trip"
        )
    };
    let b = || {
        ClientStack::builder("p")
            .total_budget(ms(1000))
            .attempt_timeout(ms(300))
    };
    assert_eq!(client_err(b().slow_call_duration(ms(300))), msg("300ms"));
    assert_eq!(client_err(b().slow_call_duration(ms(5000))), msg("5s"));
    assert!(b().slow_call_duration(ms(299)).build().is_ok());
    // Set on the stack's breaker, it is checked the same way.
    assert_eq!(
        client_err(b().breaker(|c| c.slow_call_duration(ms(5000)))),
        msg("5s")
    );
    // No slow-call duration by default.
    assert!(b().build().is_ok());
}

/// A dependency answering just within the attempt timeout (450 ms of 500)
/// is answered, not shut off: by default no call is slow to the client
/// stack's breaker, which stays closed through 100 such calls. With a
/// slow-call duration set (400 ms), every call in the window is slow and
/// the breaker opens after its minimum of 20 calls.
#[tokio::test(start_paused = true)]
async fn a_dependency_answering_within_the_attempt_timeout_is_not_shut_off() {
    for slow in [None, Some(ms(400))] {
        let rec = Recorder::new();
        let mut b = ClientStack::builder("dep")
            .total_budget(ms(2000))
            .attempt_timeout(ms(500))
            .observer(Observer::new(rec.clone()));
        if let Some(d) = slow {
            b = b.slow_call_duration(d);
        }
        let stack = b.build().unwrap();
        let svc = stack.layer(service_fn(|n: u32| async move {
            tokio::time::sleep(ms(450)).await;
            Ok::<u32, BoxError>(n)
        }));
        let mut answered = 0;
        for i in 0..100 {
            if svc.clone().oneshot(i).await.is_ok() {
                answered += 1;
            }
        }
        let opened = rec
            .events()
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::StateChanged {
                        to: State::Open,
                        ..
                    }
                )
            })
            .count();
        match slow {
            None => assert_eq!((answered, opened), (100, 0)),
            Some(_) => assert!(opened >= 1 && answered < 100, "{answered} {opened}"),
        }
    }
}

/// Nine callers in ten send a 300 ms budget to a healthy dependency that
/// answers in 400 ms, under a 500 ms attempt timeout; the tenth waits 1 s.
/// The short budgets end their attempts as their callers' deadlines, not
/// as the dependency's failures: the breaker stays closed and every
/// long-budget caller is served. Counted as failures (nine in ten of the
/// window), they opened the breaker, which then served 2 of the 20.
#[tokio::test(start_paused = true)]
async fn callers_with_short_budgets_do_not_open_the_breaker_for_the_rest() {
    use seawall::deadline::{Deadline, scope};
    let rec = Recorder::new();
    let stack = ClientStack::builder("dep")
        .total_budget(ms(1000))
        .attempt_timeout(ms(500))
        .observer(Observer::new(rec.clone()))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = stack.layer(service_fn(move |n: u32| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(ms(400)).await;
            Ok::<u32, BoxError>(n)
        }
    }));
    let (mut long_served, mut short_late) = (0, 0);
    for i in 0..200u32 {
        if i % 10 == 9 {
            if svc.clone().oneshot(i).await.is_ok() {
                long_served += 1;
            }
        } else {
            let err = scope(Deadline::after(ms(300)), svc.clone().oneshot(i))
                .await
                .unwrap_err();
            if kind(&err) == RejectionKind::DeadlineExceeded {
                short_late += 1;
            }
        }
    }
    assert_eq!((long_served, short_late), (20, 180));
    // Every request reached the dependency once: none refused, none retried.
    assert_eq!(calls.load(Ordering::SeqCst), 200);
    let breaker = |e: &&seawall::observe::RecordedEvent| e.layer == LayerKind::CircuitBreaker;
    let events = rec.events();
    assert!(
        !events.iter().filter(breaker).any(|e| matches!(
            e.kind,
            EventKind::StateChanged {
                to: State::Open,
                ..
            }
        )),
        "the breaker opened"
    );
    let ignored = events
        .iter()
        .filter(breaker)
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::CallFinished {
                    outcome: Outcome::Ignored,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ignored, 180);
}

#[test]
fn client_passes_layer_refusals_through() {
    let b = || {
        ClientStack::builder("p")
            .total_budget(ms(1000))
            .attempt_timeout(ms(300))
    };
    assert_eq!(
        client_err(b().retry(|r| r.max_attempts(0))),
        "invalid retry configuration: max_attempts must be in 1..=100, got 0"
    );
    assert_eq!(
        client_err(b().breaker(|c| c.failure_rate_threshold(1.5))),
        "invalid circuit_breaker configuration: failure_rate_threshold must be in (0, 1], got 1.5"
    );
    assert_eq!(
        client_err(b().bulkhead(|c| c.max_concurrent(0))),
        "invalid bulkhead configuration: max_concurrent must be in 1..=1000000, got 0"
    );
    assert_eq!(
        client_err(
            ClientStack::builder("p")
                .total_budget(Duration::ZERO)
                .attempt_timeout(ms(1))
        ),
        "invalid deadline configuration: budget must be greater than zero, got 0ns"
    );
}

#[test]
fn server_validation() {
    assert_eq!(
        ServerStack::builder("api").build().unwrap_err().to_string(),
        "invalid server_stack configuration: total_budget must be set"
    );
    assert_eq!(
        ServerStack::builder("api")
            .total_budget(ms(500))
            .handler_timeout(ms(501))
            .build()
            .unwrap_err()
            .to_string(),
        "invalid server_stack configuration: handler_timeout must be at most total_budget (500ms), got 501ms"
    );
    let layer = ServerStack::builder("api")
        .total_budget(ms(500))
        .build()
        .unwrap();
    assert_eq!(layer.handler_timeout().per_try(), ms(500));
}

#[test]
fn every_layer_is_named_after_the_stack() {
    let c = ClientStack::builder("payments")
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .build()
        .unwrap();
    assert_eq!(c.deadline().name(), "payments.deadline");
    assert_eq!(c.retry().name(), "payments.retry");
    assert_eq!(c.breaker_handle().name(), "payments.breaker");
    assert_eq!(c.bulkhead().name(), "payments.bulkhead");
    assert_eq!(c.adaptive_limit().name(), "payments.limit");
    assert_eq!(c.adaptive_limit().limit(), 100);
    assert_eq!(c.attempt_timeout().name(), "payments.attempt");
    // A name set in a closure wins.
    let c = ClientStack::builder("payments")
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .retry(|r| r.name("payments-retry"))
        .build()
        .unwrap();
    assert_eq!(c.retry().name(), "payments-retry");

    let s = ServerStack::builder("api")
        .total_budget(ms(1000))
        .build()
        .unwrap();
    assert_eq!(s.deadline().name(), "api.deadline");
    assert_eq!(s.bulkhead().name(), "api.bulkhead");
    assert_eq!(s.handler_timeout().name(), "api.handler");
}

// ---------------------------------------------------------------- client behaviour

#[tokio::test(start_paused = true)]
async fn client_attempts_per_request_are_bounded_and_backoffs_exact() {
    let calls = Arc::new(AtomicU32::new(0));
    let stack = ClientStack::builder("payments")
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .retry(|r| {
            r.max_attempts(3)
                .backoff(ms(50), ms(1000))
                .jitter(Jitter::None)
        })
        .build()
        .unwrap();
    let mut svc = stack.layer(failing(calls.clone()));

    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    // 3 attempts, backoffs of 50 ms then 100 ms, failures answered at once.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), ms(150));
    assert_eq!(err.to_string(), "connection reset");
    assert_eq!(stack.breaker_handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_stops_retries_from_reaching_the_backend() {
    let calls = Arc::new(AtomicU32::new(0));
    let recorder = Recorder::new();
    let stack = ClientStack::builder("payments")
        .observer(Observer::new(recorder.clone()))
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .retry(|r| {
            r.max_attempts(3)
                .backoff(ms(50), ms(1000))
                .jitter(Jitter::None)
        })
        .breaker(|b| {
            b.consecutive_failures_only(5)
                .open_duration(Duration::from_secs(30))
        })
        .build()
        .unwrap();
    let handle = stack.breaker_handle();
    let mut svc = stack.layer(failing(calls.clone()));

    // Request 1: three attempts, three failures.
    let e1 = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(e1.to_string(), "connection reset");
    assert_eq!(handle.state(), State::Closed);

    // Request 2: failures 4 and 5 open the breaker; its third attempt meets the
    // open breaker, and a CircuitOpen is not retried.
    let start = Instant::now();
    let e2 = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(handle.state(), State::Open);
    assert_eq!(kind(&e2), RejectionKind::CircuitOpen);
    assert_eq!(rejection_of(&e2).unwrap().name(), "payments.breaker");
    // The 29.9 s left, stretched by the breaker's jitter.
    let wait = rejection_of(&e2).unwrap().retry_after().unwrap();
    assert!(wait >= ms(29_900) && wait < ms(44_850), "{wait:?}");
    assert_eq!(handle.retry_after(), Some(ms(29_900)));
    assert_eq!(start.elapsed(), ms(150));

    // Ten more requests: rejected at once by the breaker, not retried, and
    // the backend is never called again.
    let start = Instant::now();
    for i in 0..10 {
        let e = svc.ready().await.unwrap().call(i).await.unwrap_err();
        assert_eq!(kind(&e), RejectionKind::CircuitOpen);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // 1 rejection in request 2, 10 afterwards, each reported once.
    assert_eq!(
        recorder.count(|e| e.name == "payments.breaker"
            && matches!(
                e.kind,
                EventKind::Rejected {
                    reason: RejectionKind::CircuitOpen,
                    ..
                }
            )),
        11
    );
    // Retries scheduled: 2 in request 1, 2 in request 2, none afterwards.
    assert_eq!(
        recorder.count(|e| matches!(e.kind, EventKind::RetryScheduled { .. })),
        4
    );
    // Given up: request 1 at its attempt limit, the 11 others on the open
    // breaker (said so: not "not retryable", which reads as unsafe).
    let gave_up = |reason: GiveUpReason| {
        recorder
            .count(|e| matches!(e.kind, EventKind::RetryGaveUp { reason: r, .. } if r == reason))
    };
    assert_eq!(
        (
            gave_up(GiveUpReason::MaxAttempts),
            gave_up(GiveUpReason::CircuitOpen),
            gave_up(GiveUpReason::NotRetryable)
        ),
        (1, 11, 0)
    );
}

/// At 2 requests a second, a breaker open 100 ms at a time is half-open
/// again for every request: each probes a dependency that fails every
/// call, and the breaker spares it nothing. The client stack's breaker
/// waits for 5 calls refused (or 2 s) before a probe: of 100 requests
/// over a 50 s outage, a quarter reach the dependency (one in 2 s),
/// against all of them with a probe after every open time; once it is
/// back, the first request after the next probe is answered, 1.96 s later
/// (0.48 s).
#[tokio::test(start_paused = true)]
async fn a_rarely_called_dependency_is_not_probed_by_every_call() {
    async fn outage(probe_after_refused: Option<u32>) -> (u32, u32, Duration) {
        let calls = Arc::new(AtomicU32::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dependency = {
            let (calls, down) = (calls.clone(), down.clone());
            service_fn(move |n: u32| {
                calls.fetch_add(1, Ordering::SeqCst);
                let down = down.load(Ordering::SeqCst);
                async move {
                    if down {
                        Err::<u32, BoxError>("connection reset".into())
                    } else {
                        Ok(n)
                    }
                }
            })
        };
        let mut builder = ClientStack::builder("rare").total_budget(ms(1000));
        if let Some(n) = probe_after_refused {
            builder = builder.breaker(move |b| b.probe_after_refused(n));
        }
        let stack = builder.build().unwrap();
        let handle = stack.breaker_handle();
        let svc = stack.layer(dependency);
        let mut tick = tokio::time::interval(ms(500));
        // 10 s to open it (20 calls in its window, failures every one),
        // then 100 requests (50 s) while it is down.
        let mut during = 0;
        for i in 0..120 {
            tick.tick().await;
            if i == 20 {
                assert_eq!(handle.state(), State::Open);
                during = calls.load(Ordering::SeqCst);
            }
            let _ = svc.clone().oneshot(i).await;
        }
        let during = calls.load(Ordering::SeqCst) - during;
        // Back: how long until a request is answered.
        down.store(false, Ordering::SeqCst);
        let back = Instant::now();
        let mut answered = 0;
        while answered == 0 {
            tick.tick().await;
            if svc.clone().oneshot(0).await.is_ok() {
                answered = 1;
            }
        }
        (during, answered, back.elapsed())
    }
    let (stack, _, back) = outage(None).await;
    let (every_open_time, _, back_at_once) = outage(Some(0)).await;
    println!(
        "calls during 100 requests: {stack} (every open time: {every_open_time}); back after {back:?} ({back_at_once:?})"
    );
    assert_eq!(every_open_time, 100);
    assert_eq!(stack, 25);
    assert!(back <= ms(2500), "{back:?}");
    assert!(back_at_once <= ms(500), "{back_at_once:?}");
}

#[tokio::test(start_paused = true)]
async fn total_deadline_bounds_elapsed_time_exactly() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let slow = service_fn(move |_: u32| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<u32, BoxError>(0)
        }
    });
    let stack = ClientStack::builder("inventory")
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .retry(|r| {
            r.max_attempts(5)
                .backoff(ms(50), ms(1000))
                .jitter(Jitter::None)
        })
        .build()
        .unwrap();
    let mut svc = stack.layer(slow);

    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    // Attempts at 0 (timed out at 300), 350 (timed out at 650), 750 (cut at
    // 1000 by the budget): 5 attempts allowed, 3 fit.
    assert_eq!(start.elapsed(), ms(1000));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(kind(&err), RejectionKind::DeadlineExceeded);
    // The breaker counted the two attempt timeouts; the third attempt, cut
    // by the request's budget before its own timeout, is not counted.
    assert_eq!(stack.breaker_handle().metrics().failures, 2);
    assert_eq!(stack.breaker_handle().metrics().calls, 2);
}

/// Fails every call; after its first call no copy of it is ever ready
/// again (a client whose connections all broke).
#[derive(Clone)]
struct StallsAfterFirstCall(Arc<AtomicU32>);

impl Service<u32> for StallsAfterFirstCall {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.0.load(Ordering::SeqCst) == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err("connection reset".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_for_readiness_ends_by_the_total_budget() {
    let calls = Arc::new(AtomicU32::new(0));
    let recorder = Recorder::new();
    let stack = ClientStack::builder("inventory")
        .observer(Observer::new(recorder.clone()))
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .retry(|r| r.backoff(ms(50), ms(50)).jitter(Jitter::None))
        .build()
        .unwrap();
    let mut svc = stack.layer(StallsAfterFirstCall(calls.clone()));
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(1);
    let err = tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("the stack answers within its budget")
        .unwrap_err();
    // Failed at 0, backed off to 50 ms, then waited for a ready copy
    // until 990 ms, when less than the retry's minimum 10 ms was left: the
    // caller gets the dependency's own error, within the budget.
    assert_eq!(start.elapsed(), ms(990));
    assert_eq!(err.to_string(), "connection reset");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::RetryGaveUp {
                attempts: 1,
                reason: seawall::observe::GiveUpReason::Deadline
            }
        )),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn full_bulkhead_is_not_a_dependency_failure() {
    let recorder = Recorder::new();
    let stack = ClientStack::builder("db")
        .observer(Observer::new(recorder.clone()))
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .retry(|r| r.max_attempts(1))
        .breaker(|b| b.consecutive_failures_only(1))
        .bulkhead(|b| b.max_concurrent(1))
        .build()
        .unwrap();
    let handle = stack.breaker_handle();
    let (a, b) = two_at_once(&stack).await;
    assert_eq!(a.unwrap(), 7);
    assert_eq!(kind(&b.unwrap_err()), RejectionKind::BulkheadFull);
    // With one failure in a row opening it, the breaker is still closed.
    assert_eq!(handle.state(), State::Closed);
    // The BulkheadFull outcome is not counted at all (it used to count as a
    // success): the window holds only the call that reached the dependency.
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures, m.slow_calls), (1, 0, 0));
    let breaker_finished = |outcome| finished(&recorder, LayerKind::CircuitBreaker, outcome);
    assert_eq!(breaker_finished(Outcome::Success), 1);
    assert_eq!(breaker_finished(Outcome::Refused), 1);
    assert_eq!(breaker_finished(Outcome::Failure), 0);
    // The retry layer above reports the attempts alike: the bulkhead's
    // refusal is refused there too, not failed.
    let retry_finished = |outcome| finished(&recorder, LayerKind::Retry, outcome);
    assert_eq!(
        (
            retry_finished(Outcome::Success),
            retry_finished(Outcome::Refused),
            retry_finished(Outcome::Failure)
        ),
        (1, 1, 0)
    );
}

/// The client stack's adaptive limit refusing an attempt is this process
/// declining to send: the breaker and the retry layer above report it
/// refused, as a full bulkhead's, not as the dependency's "busy"; a breaker
/// that counts overloads does not count it (it did, and its own limit
/// could open it).
#[tokio::test(start_paused = true)]
async fn the_client_limits_refusal_is_refused_not_the_dependencys_overload() {
    let recorder = Recorder::new();
    let stack = ClientStack::builder("db")
        .observer(Observer::new(recorder.clone()))
        .total_budget(ms(1000))
        .attempt_timeout(ms(300))
        .retry(|r| r.max_attempts(1))
        .breaker(|b| b.consecutive_failures_only(1).count_overload(true))
        // (No queue for a herd: the second attempt is refused, not queued.)
        .adaptive_limit(|l| l.limits(Some(1), Some(1)).max_queue(0))
        .build()
        .unwrap();
    let handle = stack.breaker_handle();
    let (a, b) = two_at_once(&stack).await;
    assert_eq!(a.unwrap(), 7);
    let err = b.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::Overloaded);
    assert!(seawall::error::rejection(&*err).is_some_and(|r| r.is_local()));
    // One failure in a row would open it: the refusal is not counted.
    assert_eq!(handle.state(), State::Closed);
    for layer in [LayerKind::CircuitBreaker, LayerKind::Retry] {
        assert_eq!(
            (
                finished(&recorder, layer, Outcome::Success),
                finished(&recorder, layer, Outcome::Refused),
                finished(&recorder, layer, Outcome::Overloaded)
            ),
            (1, 1, 0),
            "{layer:?}"
        );
    }
}

// ---------------------------------------------------------------- server behaviour

/// Polls a future once.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

#[cfg(feature = "rate-limit")]
#[tokio::test(start_paused = true)]
async fn server_rejections_come_in_layer_order() {
    use seawall::rate_limit::Quota;
    use seawall::shed::Aimd;

    let stack = ServerStack::builder("api")
        .total_budget(Duration::from_secs(2))
        .rate_limit(Quota::per_second(6), |r| r)
        .adaptive_limit(|a| {
            a.algorithm(
                Aimd::builder()
                    .initial_limit(4)
                    .min_limit(1)
                    .max_limit(4)
                    .build()
                    .unwrap(),
            )
            // (No queue for a herd: refused at the limit, not queued.)
            .max_queue(0)
        })
        .bulkhead(|b| b.max_concurrent(2))
        .build()
        .unwrap();
    let mut svc = stack.layer(service_fn(|x: u32| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<u32, BoxError>(x)
    }));

    // Admission happens in `call`: make all seven calls first (each future
    // holds what it was admitted to), then look at the outcomes.
    let mut futures = Vec::new();
    for i in 0..7 {
        futures.push(Box::pin(svc.ready().await.unwrap().call(i)));
    }
    assert_eq!(stack.adaptive_limit().inflight(), 4);
    let mut outcomes = Vec::new();
    for f in &mut futures {
        outcomes.push(match poll_once(f) {
            Poll::Pending => None,
            Poll::Ready(Ok(_)) => unreachable!("the handler sleeps"),
            Poll::Ready(Err(e)) => Some((kind(&e), rejection_of(&e).unwrap().name().to_owned())),
        });
    }
    let k = |kind: RejectionKind, name: &str| Some((kind, name.to_owned()));
    assert_eq!(
        outcomes,
        vec![
            None,                                            // admitted everywhere
            None,                                            // bulkhead now 2/2
            k(RejectionKind::BulkheadFull, "api.bulkhead"),  // limit 3/4, bulkhead full
            k(RejectionKind::BulkheadFull, "api.bulkhead"),  // limit 4/4
            k(RejectionKind::Overloaded, "api.limit"),       // limit full: shed before the bulkhead
            k(RejectionKind::Overloaded, "api.limit"),       // 6th cell of the rate limit
            k(RejectionKind::RateLimited, "api.rate_limit"), // every layer would refuse: the rate limit answers
        ]
    );
    // The two rejected by the bulkhead gave their limit slots back.
    assert_eq!(stack.adaptive_limit().inflight(), 2);
    drop(futures);
    assert_eq!(stack.adaptive_limit().inflight(), 0);
    assert_eq!(stack.bulkhead_handle().available_permits(), 2);
}

#[tokio::test(start_paused = true)]
async fn server_handler_timeout_and_budget() {
    let stack = ServerStack::builder("api")
        .total_budget(ms(800))
        .handler_timeout(ms(250))
        .build()
        .unwrap();
    let mut svc = stack.layer(service_fn(|x: u64| async move {
        tokio::time::sleep(ms(x)).await;
        Ok::<u64, BoxError>(x)
    }));
    assert_eq!(svc.ready().await.unwrap().call(200).await.unwrap(), 200);
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(400).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(250));
    assert_eq!(kind(&err), RejectionKind::AttemptTimeout);
    assert_eq!(rejection_of(&err).unwrap().name(), "api.handler");
}

// ---------------------------------------------------------------- http

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn client_propagates_each_attempts_time_left() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let backend = service_fn(move |req: http::Request<()>| {
        let header = req.headers()["x-request-timeout-ms"]
            .to_str()
            .unwrap()
            .to_owned();
        s.lock().unwrap().push(header);
        async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(http::Response::new(String::new()))
        }
    });
    let stack = ClientStack::builder("users")
        .total_budget(ms(500))
        .attempt_timeout(ms(300))
        .retry(|r| r.backoff(ms(50), ms(1000)).jitter(Jitter::None))
        .propagate_deadline(|p| p)
        .build()
        .unwrap();
    assert!(format!("{:?}", stack.innermost()).contains("\"users.propagate\""));
    let svc = stack.layer(backend);
    let start = Instant::now();
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    // Attempt 1 at 0 ms has 300 ms; attempt 2 at 350 ms has the 150 ms left.
    assert_eq!(*seen.lock().unwrap(), ["300", "150"]);
    assert_eq!(start.elapsed(), ms(500));
    assert_eq!(kind(&err), RejectionKind::DeadlineExceeded);
}

/// The client's deadline less the 10 ms margin per hop, as in the protocol
/// presets: the server's 504 goes out before the client's own timer fires.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn server_takes_the_clients_shorter_deadline() {
    let stack = ServerStack::builder("api")
        .total_budget(Duration::from_secs(2))
        .deadline_from_headers(|d| d)
        .build()
        .unwrap();
    let svc = stack.layer(service_fn(|_: http::Request<_>| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, BoxError>(http::Response::new(String::new()))
    }));
    let req = http::Request::builder()
        .header("grpc-timeout", "120m")
        .body(String::new())
        .unwrap();
    let start = Instant::now();
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(110));
    assert_eq!(kind(&err), RejectionKind::DeadlineExceeded);
    // Without a header, the server's own budget applies.
    let start = Instant::now();
    let err = svc
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(kind(&err), RejectionKind::DeadlineExceeded);
}

/// A stack whose attempt timeout is its whole budget (one attempt, as its
/// validation asks) still opens its breaker on a dependency that hangs: each
/// attempt had its full timeout, so each is the dependency's failure, not
/// the request's deadline.
#[tokio::test(start_paused = true)]
async fn a_hung_dependency_opens_the_breaker_when_the_attempt_timeout_is_the_budget() {
    let stack = ClientStack::builder("dep")
        .total_budget(ms(1000))
        .attempt_timeout(ms(1000))
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = stack.layer(service_fn(move |_: u32| {
        c.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<u32, BoxError>>()
    }));
    let hung = futures::future::join_all((0..30).map(|i| svc.clone().oneshot(i))).await;
    assert!(
        hung.iter()
            .all(|r| kind(r.as_ref().unwrap_err()) == RejectionKind::AttemptTimeout)
    );
    assert_eq!(breaker.state(), State::Open, "{:?}", breaker.metrics());
    assert_eq!(breaker.metrics().failures, 20, "opened at its 20 calls");
    let err = svc.clone().oneshot(30).await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::CircuitOpen);
    assert_eq!(calls.load(Ordering::SeqCst), 30);
}

/// The server stack's bulkhead (a memory guard) leaves room for what the
/// adaptive limit's shares admit: a limit of 900 held by sheddable work
/// lets in the 450 critical requests its share guarantees (half of it), and
/// the limit refuses the 451st, by priority. With a bulkhead of 1000, 350
/// of them were refused `BulkheadFull`.
#[tokio::test(start_paused = true)]
async fn the_server_bulkhead_leaves_room_for_the_limits_shares() {
    use seawall::shed::Aimd;
    use seawall::shed::criticality::{self, Criticality};
    let stack = ServerStack::builder("api")
        .total_budget(Duration::from_secs(600))
        .adaptive_limit(|l| {
            l.algorithm(
                Aimd::builder()
                    .initial_limit(900)
                    .min_limit(900)
                    .max_limit(900)
                    .build()
                    .unwrap(),
            )
            .burst(Duration::ZERO)
        })
        .build()
        .unwrap();
    let svc = stack.layer(service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(())
    }));
    let start = |class: Criticality| {
        let call = svc.clone().oneshot(0);
        tokio::spawn(criticality::scope(class, call))
    };
    let sheddable: Vec<_> = (0..900).map(|_| start(Criticality::Sheddable)).collect();
    let critical: Vec<_> = (0..451).map(|_| start(Criticality::Critical)).collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(stack.bulkhead_handle().in_flight(), 1350);
    let mut refused = Vec::new();
    for c in critical {
        if let Err(e) = c.await.unwrap() {
            refused.push(rejection_of(&e).map(|r| (r.kind(), r.name().to_string())));
        }
    }
    assert_eq!(
        refused,
        vec![Some((RejectionKind::Overloaded, "api.limit".to_string()))]
    );
    for s in sheddable {
        s.await.unwrap().unwrap();
    }
}

/// The HTTP client preset starts no retry with less than 20 ms left, twice a
/// seawall server's 10 ms margin per hop: a busy answer asking for 185 ms
/// under a 200 ms budget is not retried (15 ms would be left, and the
/// dependency, told 15 ms, keeps 5 of them), one asking for 170 ms is. Its
/// budgets are checked against the same 20 ms.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_http_preset_starts_no_retry_with_less_than_20_ms_left() {
    for (wait_ms, attempts) in [(185u64, 1u32), (170, 2)] {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = ClientStack::http("dep")
            .total_budget(Duration::from_millis(200))
            .attempt_timeout(Duration::from_millis(100))
            .build()
            .unwrap()
            .layer(service_fn(move |_: http::Request<String>| {
                c.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok::<_, BoxError>(
                        http::Response::builder()
                            .status(503)
                            .header("retry-after-ms", wait_ms.to_string())
                            .body(String::new())
                            .unwrap(),
                    )
                }
            }));
        let res = svc
            .oneshot(http::Request::get("/").body(String::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(calls.load(Ordering::SeqCst), attempts, "asked {wait_ms} ms");
    }
    let err = ClientStack::http("dep")
        .total_budget(Duration::from_millis(565))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("min_remaining (20ms)"), "{err}");
}

/// A backend that counts its calls and answers each after `delay`.
fn answering_after(
    calls: Arc<AtomicU32>,
    delay: Duration,
) -> impl Service<u32, Response = u32, Error = BoxError, Future = impl Future + Send> + Clone {
    service_fn(move |n: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            Ok::<u32, BoxError>(n)
        }
    })
}

/// A client stack of 2 s, 200 ms attempts and backoffs of 50 then 100 ms.
fn slow_dep_client() -> seawall::stack::ClientStackLayer {
    ClientStack::builder("dep")
        .total_budget(ms(2000))
        .attempt_timeout(ms(200))
        .retry(|r| r.backoff(ms(50), ms(1000)).jitter(Jitter::None))
        .build()
        .unwrap()
}

/// An attempt no retry can follow is not cut at its attempt timeout: the
/// last of three attempts, to a dependency answering in 500 ms under a
/// 200 ms attempt timeout, gets the rest of the 2 s budget and its answer
/// comes back (it was cut at 200 ms, and the request failed, every
/// attempt's work thrown away). The same with one attempt allowed.
#[tokio::test(start_paused = true)]
async fn the_last_attempt_runs_on_to_the_deadline() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = slow_dep_client().layer(answering_after(calls.clone(), ms(500)));
    let start = Instant::now();
    assert_eq!(svc.clone().oneshot(7).await.unwrap(), 7);
    // 200 ms, 50 ms backoff, 200 ms, 100 ms backoff, then 500 ms.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), ms(1050));

    let calls = Arc::new(AtomicU32::new(0));
    let once = ClientStack::builder("dep")
        .total_budget(ms(2000))
        .attempt_timeout(ms(200))
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let svc = once.layer(answering_after(calls.clone(), ms(500)));
    assert_eq!(svc.oneshot(8).await.unwrap(), 8);
    assert_eq!(
        (calls.load(Ordering::SeqCst), start.elapsed()),
        (1, ms(500))
    );

    // A dependency that hangs: the last attempt ends at the deadline as an
    // attempt timeout (the breaker counts it), not as the deadline's.
    let calls = Arc::new(AtomicU32::new(0));
    let svc = once.layer(answering_after(calls.clone(), ms(60_000)));
    let start = Instant::now();
    let err = svc.oneshot(9).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(2000));
    assert_eq!(kind(&err), RejectionKind::AttemptTimeout);
    let failures = once.breaker_handle().metrics().failures;
    assert_eq!(failures, 1, "the hang is counted by the breaker");
}

/// Timeouts are retried while they are rare, not once they are common: a
/// dependency that answers every call in 500 ms under a 200 ms attempt
/// timeout (slow for everyone, as a saturated queue is) gets its first
/// timeouts retried, up to 2 and 5 % of the requests; after that a request
/// is sent once and not cut, and is answered in 500 ms. Counted as the budget counts: 40 requests at once,
/// then 40 more.
#[tokio::test(start_paused = true)]
async fn timeouts_common_to_every_call_are_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = slow_dep_client().layer(answering_after(calls.clone(), ms(500)));
    let wave = |n: u32| {
        let svc = svc.clone();
        async move {
            let all = (0..n).map(|i| svc.clone().oneshot(i));
            futures::future::join_all(all).await
        }
    };
    let first = wave(40).await;
    let ok = first.iter().filter(|r| r.is_ok()).count();
    let first_calls = calls.load(Ordering::SeqCst);
    println!("first wave: {ok} of 40 answered, {first_calls} calls");
    let second = wave(40).await;
    let ok2 = second.iter().filter(|r| r.is_ok()).count();
    let second_calls = calls.load(Ordering::SeqCst) - first_calls;
    println!("second wave: {ok2} of 40 answered, {second_calls} calls");
    // Every request answered: none cut with no retry to follow it.
    assert_eq!((ok, ok2), (40, 40));
    // The first wave: all 40 reach their attempt timeout at once; the
    // first 2 are cut and retried, the 3rd finds that timeouts would be
    // common and, as the other 37, runs on and is answered; the 2 retries,
    // sent once timeouts are common, are not cut either.
    assert_eq!(first_calls, 40 + 2);
    // The second wave, timeouts still common: each request sent once.
    assert_eq!(second_calls, 40);
}

/// Timeouts becoming common, and rare again, are a state of the retry
/// layer (`seawall_state{state="timeouts_common"}`): while they are common
/// no attempt is cut, so no `attempt_timeout` refusal says the dependency
/// is still slow (in an outside trial they stopped 3 s into a 15 s
/// slowdown and nothing else but the latency said so).
#[tokio::test(start_paused = true)]
async fn timeouts_common_and_rare_again_are_reported_as_the_retry_layers_state() {
    // Three attempts, and one (no attempt is cut, none retried: judged again
    // all the same, as with the gRPC preset's policy, which retries no
    // timeout).
    for attempts in [3, 1] {
        timeouts_state_with(attempts).await;
    }
}

async fn timeouts_state_with(attempts: u32) {
    let recorder = Recorder::new();
    let delay = Arc::new(AtomicU64::new(500));
    let d = delay.clone();
    let stack = ClientStack::builder("dep")
        .observer(Observer::new(recorder.clone()))
        .total_budget(ms(2000))
        .attempt_timeout(ms(200))
        .retry(|r| {
            r.max_attempts(attempts)
                .backoff(ms(50), ms(1000))
                .jitter(Jitter::None)
        })
        .build()
        .unwrap();
    let svc = stack.layer(service_fn(move |i: u32| {
        let d = d.load(Ordering::Relaxed);
        async move {
            tokio::time::sleep(ms(d)).await;
            Ok::<u32, BoxError>(i)
        }
    }));
    let states = || -> Vec<(State, State)> {
        recorder
            .events()
            .iter()
            .filter(|e| e.name == "dep.retry")
            .filter_map(|e| match e.kind {
                EventKind::StateChanged { from, to, .. } => Some((from, to)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(states(), [(State::TimeoutsRare, State::TimeoutsRare)]);
    let all = (0..40).map(|i| svc.clone().oneshot(i));
    futures::future::join_all(all).await;
    assert_eq!(
        states()[1..],
        [(State::TimeoutsRare, State::TimeoutsCommon)]
    );
    // The dependency fast again: 5 s of calls, 20 a second.
    delay.store(5, Ordering::Relaxed);
    for i in 0..100 {
        svc.clone().oneshot(i).await.unwrap();
        tokio::time::sleep(ms(45)).await;
    }
    assert_eq!(
        states()[1..],
        [
            (State::TimeoutsRare, State::TimeoutsCommon),
            (State::TimeoutsCommon, State::TimeoutsRare)
        ]
    );
}

/// An attempt no retry can follow is not cut when it waited in the
/// bulkhead's queue first (its inner call made later, from the queue): one
/// attempt allowed, a bulkhead of 1 with a queue, a dependency answering in
/// 500 ms under a 200 ms attempt timeout. The queued request is called at
/// 500 ms and answered at 1 s. (It was cut at 700 ms: the word that no
/// retry can follow was said only around a call made at once.)
#[tokio::test(start_paused = true)]
async fn a_queued_last_attempt_is_not_cut_either() {
    let calls = Arc::new(AtomicU32::new(0));
    let stack = ClientStack::builder("dep")
        .total_budget(ms(2000))
        .attempt_timeout(ms(200))
        .retry(|r| r.max_attempts(1))
        .bulkhead(|b| b.max_concurrent(1).max_queue(1))
        .build()
        .unwrap();
    let svc = stack.layer(answering_after(calls.clone(), ms(500)));
    let start = Instant::now();
    let (first, second) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert_eq!((first.unwrap(), second.unwrap()), (1, 2));
    assert_eq!(
        (calls.load(Ordering::SeqCst), start.elapsed()),
        (2, ms(1000))
    );
}

/// A call that no retry can follow, made in a handler under a server stack
/// whose budget ends before the client's, hangs: the client keeps 10 ms
/// before the server's deadline, so its own timer ends the call, its
/// breaker counts the hang and the handler has the error to answer with
/// (at the server's instant, the HTTP server preset's timer could win and
/// drop the call: no count, and no answer of the handler's).
#[tokio::test(start_paused = true)]
async fn a_hung_call_under_a_server_stacks_budget_is_ended_by_the_clients_timer() {
    let server = ServerStack::builder("front")
        .total_budget(ms(950))
        .build()
        .unwrap();
    let client = ClientStack::builder("dep")
        .total_budget(Duration::from_secs(1))
        .attempt_timeout(ms(500))
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let breaker = client.breaker_handle();
    let dep = client.layer(service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<u32, BoxError>(0)
    }));
    let svc = server.layer(service_fn(move |x: u32| {
        let dep = dep.clone();
        async move {
            match dep.oneshot(x).await {
                Ok(y) => Ok::<_, BoxError>(y),
                // The handler's own answer to the dependency's timeout.
                Err(err) if rejection_of(&err).is_some() => Ok(504),
                Err(err) => Err(err),
            }
        }
    }));
    let start = Instant::now();
    let answer = svc.oneshot(1).await.unwrap();
    assert_eq!(answer, 504, "the handler answered");
    assert_eq!(start.elapsed(), ms(940));
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures), (1, 1), "the hang counted: {m:?}");
}

/// A request type of the user's own that keeps its deadline in a field.
#[derive(Clone, Default)]
struct OwnRequest {
    deadline: Option<seawall::Deadline>,
}

impl seawall::HasDeadline for OwnRequest {
    fn deadline(&self) -> Option<seawall::Deadline> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: seawall::Deadline) {
        self.deadline = Some(deadline);
    }
}

/// The client stack stores the request's deadline in a request type that
/// keeps it without allocating, so that it crosses a hop of the user's own
/// (a task spawned per call, as a network would): the server behind it
/// drops the call at the caller's deadline, not at its own budget. (It
/// stayed task-local: the storm's server held a hung route's calls for its
/// own 10 s.)
#[tokio::test(start_paused = true)]
async fn the_client_stack_stores_the_deadline_in_a_request_that_keeps_it() {
    let server = tower::util::BoxCloneService::new(
        ServerStack::builder("own")
            .total_budget(Duration::from_secs(10))
            .build()
            .unwrap()
            .layer(service_fn(|_req: OwnRequest| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, BoxError>(())
            })),
    );
    // The hop: the server's work runs on its own task and goes on after
    // the caller stops waiting, as a real server's does.
    let ended = Arc::new(std::sync::Mutex::new(None));
    let seen = Arc::new(std::sync::Mutex::new(None));
    let (e, s) = (ended.clone(), seen.clone());
    let hop = service_fn(move |req: OwnRequest| {
        *s.lock().unwrap() = req.deadline.map(|d| d.remaining());
        let (server, e) = (server.clone(), e.clone());
        let start = Instant::now();
        tokio::spawn(async move {
            let out = server.oneshot(req).await;
            *e.lock().unwrap() = Some((start.elapsed(), out.is_err()));
        });
        std::future::pending::<Result<(), BoxError>>()
    });
    let client = ClientStack::builder("own")
        .total_budget(ms(1000))
        .attempt_timeout(ms(1000))
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap()
        .layer(hop);
    let started = Instant::now();
    assert!(client.oneshot(OwnRequest::default()).await.is_err());
    assert_eq!(started.elapsed(), ms(1000));
    assert_eq!(*seen.lock().unwrap(), Some(ms(1000)));
    tokio::time::sleep(ms(100)).await;
    // The server's deadline layer ended it at the caller's deadline.
    assert_eq!(*ended.lock().unwrap(), Some((ms(1000), true)));
}

/// The client stack of the limit's load tests (1 s in all, 500 ms an
/// attempt, its adaptive limit as `limit` makes it), and its dependency's
/// `workers` (without, none waits).
fn limited_dependency(
    limit: impl FnOnce(
        seawall::shed::AdaptiveLimitLayerBuilder,
    ) -> seawall::shed::AdaptiveLimitLayerBuilder,
    workers: Option<usize>,
) -> (
    seawall::stack::ClientStackLayer,
    Arc<tokio::sync::Semaphore>,
) {
    let stack = ClientStack::builder("dep")
        .total_budget(ms(1000))
        .attempt_timeout(ms(500))
        .adaptive_limit(limit)
        // (The backoff's and the breaker's jitter, seeded: the same
        // draws every run.)
        .retry(|r| r.seed(7))
        .breaker(|b| b.seed(7))
        .build()
        .unwrap();
    let workers =
        tokio::sync::Semaphore::new(workers.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS));
    (stack, Arc::new(workers))
}

/// What a client stack (its adaptive limit as `limit` makes it) got from
/// a dependency of 50 ms (with `workers`, every request beyond them waits,
/// without bound, for one; without, none waits), sent `n` requests one
/// every `gap`: of those from the `from`-th on, answered, out of time,
/// refused by the stack's adaptive limit, refused by its open breaker.
async fn client_load(
    limit: impl FnOnce(
        seawall::shed::AdaptiveLimitLayerBuilder,
    ) -> seawall::shed::AdaptiveLimitLayerBuilder,
    workers: Option<usize>,
    n: u32,
    gap: Duration,
    from: u32,
) -> [u32; 4] {
    let (stack, workers) = limited_dependency(limit, workers);
    let svc = stack.layer(service_fn(move |n: u32| {
        let workers = workers.clone();
        async move {
            let _worker = workers.acquire().await.unwrap();
            tokio::time::sleep(ms(50)).await;
            Ok::<u32, std::convert::Infallible>(n)
        }
    }));
    let counts: Arc<[AtomicU32; 4]> = Arc::new(Default::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(start + gap * i).await;
        let (svc, counts) = (svc.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let slot = limit_slot(svc.oneshot(i).await);
            if i >= from {
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    [0, 1, 2, 3].map(|i| counts[i].load(Ordering::Relaxed))
}

/// A dependency of 4 workers at 50 ms (80 answers a second) sent 160
/// requests a second for 60 s: the last 5 s (see [`client_load`]).
async fn queueing_dependency_at_twice_its_capacity(
    limit: impl FnOnce(
        seawall::shed::AdaptiveLimitLayerBuilder,
    ) -> seawall::shed::AdaptiveLimitLayerBuilder,
) -> [u32; 4] {
    client_load(limit, Some(4), 9600, Duration::from_micros(6250), 8800).await
}

/// Answered, out of time, held back by the stack's limit (`dep.limit`:
/// refused, with a time to come back, or waited in its queue to its
/// deadline; never sent), or refused by its open breaker.
fn limit_slot(result: Result<u32, BoxError>) -> usize {
    match result {
        Ok(_) => 0,
        Err(e) => match kind(&e) {
            RejectionKind::DeadlineExceeded if rejection_of(&e).unwrap().name() == "dep.limit" => 2,
            RejectionKind::DeadlineExceeded | RejectionKind::AttemptTimeout => 1,
            RejectionKind::Overloaded => {
                let r = rejection_of(&e).unwrap();
                assert_eq!(r.name(), "dep.limit");
                assert!(r.retry_after().is_some(), "a time to come back");
                2
            }
            RejectionKind::CircuitOpen => 3,
            other => panic!("{other:?}: {e}"),
        },
    }
}

/// The client stack's adaptive limit, cut by the attempts that time out,
/// sends a dependency queueing past what it answers in time what it
/// answers, and holds the rest back in its queue, where they wait to their
/// deadline without being sent: of the last 800 requests of a minute, 406
/// answered (the dependency can answer 400 in 5 s, and some queued before
/// them), 31 out of time, 363 held back, the breaker never open. With
/// `wait_at_limit(false)` (the stack before its limit waited), which
/// refuses the requests over it at once but for those its queue for a
/// herd takes in the overload's first second: 426, 9 and 365 (402, 13
/// and 385 when only a burst past its cap began that queue; here the
/// herd's first-come order serves more than waiting newest first). (From its start at 100 it takes a
/// while to come down to 4 workers: 135 of the 800 out of time after 20 s;
/// started at 20, 26 after 10 s.) Held at 1000 (as the stack was before
/// it had the limit), the queue grows toward the deadline: 269 answered,
/// 377 out of time, and the breaker, opening on those timeouts, refuses
/// the rest.
#[tokio::test(start_paused = true)]
async fn the_client_limit_sends_a_queueing_dependency_what_it_answers_in_time() {
    let limited = queueing_dependency_at_twice_its_capacity(|l| l).await;
    let refusing = queueing_dependency_at_twice_its_capacity(|l| l.wait_at_limit(false)).await;
    println!("refusing {refusing:?}");
    let held =
        queueing_dependency_at_twice_its_capacity(|l| l.limits(Some(1000), Some(1000))).await;
    println!("limited {limited:?}, held at 1000 {held:?}");
    assert_eq!(limited.iter().sum::<u32>(), 800);
    assert!(limited[0] >= 370, "{limited:?}");
    assert!(limited[1] <= 40, "{limited:?}");
    assert_eq!(limited[3], 0, "the breaker stays closed: {limited:?}");
    assert!(refusing[0] >= 400, "refusing at once: {refusing:?}");
    assert!(refusing[1] <= 30, "refusing at once: {refusing:?}");
    assert_eq!(held[2], 0, "held at 1000: nothing refused by the limit");
    assert!(held[0] + 80 <= limited[0], "held at 1000: {held:?}");
    assert!(held[1] >= 300, "held at 1000: {held:?}");
}

/// A dependency of 8 workers at 10 ms whose latency goes to 100 ms (a
/// brownout: 80 answers a second) for 10 s, sent 400 requests a second,
/// each made by a caller with `caller` of budget (a handler under a server
/// stack: the client stack's deadline is the caller's, less its margin).
/// Of the brownout's 4000 requests: answered, out of time, refused by the
/// limit, refused by the breaker; and the workers' time (ms) spent on
/// calls cut before their answer.
async fn brownout(
    limit: impl FnOnce(
        seawall::shed::AdaptiveLimitLayerBuilder,
    ) -> seawall::shed::AdaptiveLimitLayerBuilder,
    caller: Duration,
) -> ([u32; 4], u64) {
    let (during, _, cut) = slowdown(limit, caller, Some(8), |_| ms(100), 400).await;
    (during, cut)
}

/// A dependency of `workers` (without, none waits) at 10 ms whose latency
/// goes to `slow(n)` for request `n` for 10 s between 10 s at 10 ms, sent
/// `per_sec` requests a second by callers with `caller` of budget: the
/// counts of the 10 s slow and of the 10 s after (see [`limit_slot`]), and
/// the workers' time (ms) spent on calls cut before their answer.
async fn slowdown(
    limit: impl FnOnce(
        seawall::shed::AdaptiveLimitLayerBuilder,
    ) -> seawall::shed::AdaptiveLimitLayerBuilder,
    caller: Duration,
    workers: Option<usize>,
    slow: fn(u32) -> Duration,
    per_sec: u32,
) -> ([u32; 4], [u32; 4], u64) {
    let (stack, workers) = limited_dependency(limit, workers);
    let cut_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    // 0 before, 1 slow, 2 after.
    let phase = |t: Duration| (t.as_secs() / 10).min(2) as usize;
    let svc = {
        let cut_ms = cut_ms.clone();
        stack.layer(service_fn(move |n: u32| {
            let (workers, cut_ms) = (workers.clone(), cut_ms.clone());
            async move {
                let _worker = workers.acquire().await.unwrap();
                let latency = if phase(start.elapsed()) == 1 {
                    slow(n)
                } else {
                    ms(10)
                };
                // Counts the worker's time if the call is cut before its end.
                struct Cut(Instant, Arc<std::sync::atomic::AtomicU64>, bool);
                impl Drop for Cut {
                    fn drop(&mut self) {
                        if !self.2 {
                            let spent = self.0.elapsed().as_millis() as u64;
                            self.1.fetch_add(spent, Ordering::Relaxed);
                        }
                    }
                }
                let mut cut = Cut(Instant::now(), cut_ms, false);
                tokio::time::sleep(latency).await;
                cut.2 = true;
                Ok::<u32, std::convert::Infallible>(n)
            }
        }))
    };
    let counts: Arc<[[AtomicU32; 4]; 2]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    for i in 0..30 * per_sec {
        let at = start + Duration::from_secs(1) / per_sec * i;
        tokio::time::sleep_until(at).await;
        let (svc, counts) = (svc.clone(), counts.clone());
        let phase = phase(at - start);
        tasks.push(tokio::spawn(async move {
            let deadline = seawall::deadline::Deadline::after(caller);
            let slot = limit_slot(seawall::deadline::scope(deadline, svc.oneshot(i)).await);
            if phase > 0 {
                counts[phase - 1][slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let [during, after] =
        [0, 1].map(|p| [0, 1, 2, 3].map(|i| counts[p][i].load(Ordering::Relaxed)));
    (during, after, cut_ms.load(Ordering::Relaxed))
}

/// A brownout past what the callers' deadline lets through: with 490 ms
/// left to them (490 ms for a server stack's handler under a caller that
/// waits 500 ms), an answer needs at most about 38 calls in flight at the
/// dependency. The answers that come in time are the ones that waited
/// least, so their latency stays under the deadline however long the
/// queue: the limit is cut by the share of calls answered when a fifth or
/// more ran out of time behind a queue, and undoes the cuts if the
/// answers a second fell with them (a service too slow for the deadline at
/// any limit). 807 of the 800 the dependency could answer in time (some
/// queued before), 297 out of time, its workers' time spent on calls cut
/// before their answer 8.5 s of 80; the requests over the limit wait in
/// its queue, the newest first, for the places that come free. Refusing
/// them at once instead (`wait_at_limit(false)`): 725 answered, 295 out of
/// time, 9.6 s cut. (The limit, judging by the answers' latency alone,
/// stayed at 60 to 100: 457 answered, 1648 out of time, 46 s of the
/// workers' time cut; an outside trial over real HTTP, a chain of three
/// services: 80 to 84 % of the possible, 29 to 31 % of the workers' time
/// cut.) With 1 s to the callers the default answers 965 (789 refusing at
/// once); held at 1000 (as the stack was before it had the limit), 224,
/// with 3776 out of time and 76 s of the workers' time cut.
#[tokio::test(start_paused = true)]
async fn a_brownout_past_the_callers_deadline_is_sent_what_it_answers_in_time() {
    let (tight, tight_cut) = brownout(|l| l, ms(490)).await;
    let (roomy, _) = brownout(|l| l, ms(1000)).await;
    let (refusing, refusing_cut) = brownout(|l| l.wait_at_limit(false), ms(490)).await;
    let (refusing_roomy, _) = brownout(|l| l.wait_at_limit(false), ms(1000)).await;
    println!("refusing: 490 ms {refusing:?} {refusing_cut} ms cut, 1 s {refusing_roomy:?}");
    let (held, held_cut) = brownout(|l| l.limits(Some(1000), Some(1000)), ms(490)).await;
    println!(
        "490 ms: {tight:?}, {tight_cut} ms cut; 1 s: {roomy:?}; held at 1000: {held:?}, {held_cut} ms cut"
    );
    assert_eq!(tight.iter().sum::<u32>(), 4000);
    assert!(tight[0] >= 780, "of 800 possible: {tight:?}");
    assert!(tight[1] <= 350, "{tight:?}");
    assert!(tight_cut <= 12_000, "{tight_cut} ms of 80 000 cut");
    assert_eq!(tight[3], 0, "the breaker stays closed: {tight:?}");
    assert!(roomy[0] >= 900, "{roomy:?}");
    assert!(
        tight[0] >= refusing[0] + 50,
        "refusing at once: {refusing:?}"
    );
    assert!(
        refusing_cut <= 12_000,
        "refusing at once: {refusing_cut} ms cut"
    );
    assert!(
        roomy[0] >= refusing_roomy[0] + 100,
        "refusing at once: {refusing_roomy:?}"
    );
    assert!(held[0] + 150 <= tight[0], "held at 1000: {held:?}");
    assert!(held_cut >= 3 * tight_cut, "held at 1000: {held_cut} ms cut");
}

/// A dependency that got slower with no queue (no workers to wait for:
/// 50 to 150 ms a call, spread evenly), 1000 requests a second, callers
/// with 130 ms: 30 % of the calls run out of time at any limit. The
/// limit cuts for them as for a queue past the deadline (see
/// [`a_brownout_past_the_callers_deadline_is_sent_what_it_answers_in_time`]),
/// finds the answers a second falling with the cuts while their latency
/// stays (the requests it held back count as turned away), and undoes
/// them: 6365 of the 10 000 answered (about 7000 could be; 6037 refusing
/// the requests over the limit at once, `wait_at_limit(false)`), and none
/// held back once the dependency is fast again. Cuts never undone kept
/// 1481, and refused 5668 of the next 10 000.
#[tokio::test(start_paused = true)]
async fn a_dependency_too_slow_for_the_deadline_at_any_limit_keeps_its_limit() {
    let slow = |n: u32| ms(50 + u64::from(n.wrapping_mul(37) % 101));
    let (during, after, _) = slowdown(|l| l, ms(130), None, slow, 1000).await;
    let (r_during, r_after, _) =
        slowdown(|l| l.wait_at_limit(false), ms(130), None, slow, 1000).await;
    println!("refusing: slow {r_during:?}; after {r_after:?}");
    println!("slow: {during:?}; after: {after:?}");
    assert_eq!(during.iter().sum::<u32>(), 10_000);
    assert!(during[0] >= 6200, "{during:?}");
    assert!(during[2] <= 1500, "held back by the limit: {during:?}");
    assert_eq!(after, [10_000, 0, 0, 0], "fast again: nothing held back");
    assert!(
        during[0] >= r_during[0] + 200,
        "refusing at once: {r_during:?}"
    );
    assert_eq!(
        r_after,
        [10_000, 0, 0, 0],
        "refusing at once, fast again: {r_after:?}"
    );
}

/// A dependency that got slower with workers to spare (no queue: 10 to
/// 450 ms a call for 10 s), 300 requests a second, callers with 1 s: 135
/// calls in flight are needed where the limit stands at 100. The first
/// window whose calls all slowed, within the attempt timeout, grows the
/// limit by 13 % (to where a queue of ours would fill the timeout); the
/// next window's latency does not rise with its calls in flight, so the
/// dependency got slower and the limit doubles, 3.7 s into this slowdown
/// (its windows three latencies of 450 ms long):
/// 2835 of the 3000 answered. Before this growth test, the limit drained
/// to two thirds of its calls to look for a queue, for four latencies
/// (1.8 s): 2672 answered (an outside trial over real HTTP, 20 to 450 ms
/// for 7 s: 92.8 to 94.6 % served, 97.9 to 98.5 % now, 100 % with no
/// limit).
#[tokio::test(start_paused = true)]
async fn a_dependency_slower_with_workers_to_spare_is_sent_what_it_needs() {
    let (during, after, cut) = slowdown(|l| l, ms(1000), None, |_| ms(450), 300).await;
    println!("slow: {during:?}; after: {after:?}; {cut} ms cut");
    assert_eq!(during.iter().sum::<u32>(), 3000);
    assert!(during[0] >= 2800, "{during:?}");
    assert!(during[2] <= 200, "held back by the limit: {during:?}");
    assert_eq!(during[3], 0, "the breaker stays closed: {during:?}");
    assert_eq!(after[1..], [0, 0, 0], "fast again: nothing held back");
}

/// The first 2 s of a busy start: 4000 requests a second to a healthy
/// dependency of 50 ms (200 in flight; see [`client_load`]).
async fn busy_start(
    limit: impl FnOnce(
        seawall::shed::AdaptiveLimitLayerBuilder,
    ) -> seawall::shed::AdaptiveLimitLayerBuilder,
) -> [u32; 4] {
    client_load(limit, None, 8000, Duration::from_micros(250), 0).await
}

/// The client stack's limit starts at 100 attempts in flight: a busy
/// client (200 in flight from its first instant) is refused nothing while
/// the limit doubles to what it needs. Started at 20, as a server's, the
/// same client had requests refused (an outside trial over real HTTP: 89
/// to 241 in the first second at 4000 a second); with the queue for a
/// herd, which holds what its first burst did not admit, none, and still
/// some without it.
#[tokio::test(start_paused = true)]
async fn a_busy_client_is_refused_nothing_at_its_start() {
    let at_20 = |queue| {
        move |l: seawall::shed::AdaptiveLimitLayerBuilder| {
            l.algorithm(
                seawall::shed::QueueDelay::builder()
                    .initial_limit(20)
                    .queue_allowance(ms(500))
                    .build()
                    .unwrap(),
            )
            .max_queue(queue)
        }
    };
    let default = busy_start(|l| l).await;
    let queued = busy_start(at_20(1000)).await;
    let unqueued = busy_start(at_20(0)).await;
    println!("initial 100: {default:?}; initial 20: {queued:?}, without a queue {unqueued:?}");
    assert_eq!(default, [8000, 0, 0, 0]);
    assert_eq!(queued, [8000, 0, 0, 0]);
    assert!(unqueued[2] > 0, "{unqueued:?}");
}

/// A "poison" request: one in 20 fails every time it is sent, after 150 ms
/// of one of the dependency's 8 workers; the others take 10 ms. Sent once,
/// they keep the workers 64 % busy; sent three times (the HTTP preset's
/// attempts), 120 %, and every request waits behind them. Retries of its
/// failures save nothing, so after about 36 retries that failed again the
/// preset sends such a failure once (and 1 in 8 again, to tell when
/// retries save requests): the healthy requests are served as a plain
/// client serves them: 2850 of 2850, 213 calls for the 150 poison
/// requests. With every failure retried, as before, 2775 and 421 (a new
/// user's trial over real HTTP, its callers retrying a 500 once: 92 % where
/// a plain client served them all).
#[tokio::test(start_paused = true)]
async fn a_request_that_fails_every_time_is_not_sent_three_times() {
    let workers = Arc::new(tokio::sync::Semaphore::new(8));
    let poison_calls = Arc::new(AtomicU32::new(0));
    let (w, p) = (workers.clone(), poison_calls.clone());
    let stack = ClientStack::http("dep")
        .total_budget(ms(1000))
        .build()
        .unwrap();
    let client = stack.layer(service_fn(move |req: http::Request<String>| {
        let (w, p) = (w.clone(), p.clone());
        async move {
            let poison = req.uri().path() == "/poison";
            let _worker = w.acquire_owned().await.unwrap();
            if poison {
                p.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(ms(150)).await;
            } else {
                tokio::time::sleep(ms(10)).await;
            }
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(if poison { 500 } else { 200 })
                    .body(String::new())
                    .unwrap(),
            )
        }
    }));
    // 300 requests a second for 10 s, evenly spaced; each caller waits 1 s.
    let mut calls = Vec::new();
    let start = Instant::now();
    for i in 0..3000u32 {
        tokio::time::sleep_until(start + Duration::from_micros(3333) * i).await;
        let path = if i % 20 == 19 { "/poison" } else { "/" };
        let req = http::Request::get(path).body(String::new()).unwrap();
        let call = client.clone().oneshot(req);
        calls.push(tokio::spawn(async move {
            matches!(tokio::time::timeout(ms(1000), call).await, Ok(Ok(res)) if res.status() == 200)
        }));
    }
    let mut served = 0;
    for c in calls {
        served += u32::from(c.await.unwrap());
    }
    let poison = poison_calls.load(Ordering::SeqCst);
    println!("healthy served {served} of 2850; poison calls {poison} for 150 requests");
    assert!(served >= 2840, "{served}");
    // Three attempts for the first ones, about 1.1 once retries are futile.
    assert!(poison <= 230, "{poison}");
}
