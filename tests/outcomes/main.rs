//! The outcome model: every result has an origin, and no classifier can make
//! a local refusal count against the dependency. Also: every layer that
//! waits reads the request's own deadline.
#![cfg(feature = "full")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use seawall::BoxError;
use seawall::BulkheadLayer;
use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow, WindowSnapshot};
use seawall::classify::{Classify, ErrorsAsFailures};
use seawall::deadline::Deadline;
use seawall::error::{
    AttemptTimeout, BulkheadFull, CircuitOpen, DeadlineExceeded, Overloaded, RateLimited,
    RejectionKind, RetryBudgetExhausted, rejection_of,
};
use seawall::grpc::GrpcStatusClassifier;
use seawall::http::HttpStatusClassifier;
use seawall::observe::Outcome;
use seawall::observe::State;
use seawall::retry::{Jitter, RetryLayer};
use seawall::stack::DependencyFailures;
use tokio::time::Instant;
use tower::Layer;
use tower::{Service, ServiceExt, service_fn};

/// What the dependency (or a layer below the breaker) answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok200,
    Http500,
    Http503,
    Http404,
    RemoteError,
    AttemptTimeout,
    ShedderOverloaded,
    /// This process's own refusals, by kind.
    LocalBulkhead,
    LocalRateLimit,
    LocalBreaker,
    LocalBudget,
    LocalDeadlineBeforeSending,
    LocalThrottle,
}

impl Answer {
    fn is_local(self) -> bool {
        matches!(
            self,
            Answer::LocalBulkhead
                | Answer::LocalRateLimit
                | Answer::LocalBreaker
                | Answer::LocalBudget
                | Answer::LocalDeadlineBeforeSending
                | Answer::LocalThrottle
        )
    }

    fn result(self) -> Result<http::Response<()>, BoxError> {
        let res = |code: u16| Ok(http::Response::builder().status(code).body(()).unwrap());
        let ms = Duration::from_millis;
        match self {
            Answer::Ok200 => res(200),
            Answer::Http500 => res(500),
            Answer::Http503 => res(503),
            Answer::Http404 => res(404),
            Answer::RemoteError => Err("connection reset".into()),
            Answer::AttemptTimeout => Err(AttemptTimeout::new("dep.attempt").into()),
            Answer::ShedderOverloaded => Err(Overloaded::new("server.limit", Some(ms(100))).into()),
            Answer::LocalBulkhead => Err(BulkheadFull::new("dep.bulkhead", Some(ms(100))).into()),
            Answer::LocalRateLimit => Err(RateLimited::new("dep.rate", Some(ms(10))).into()),
            Answer::LocalBreaker => Err(CircuitOpen::new("inner.breaker", Some(ms(10))).into()),
            Answer::LocalBudget => Err(RetryBudgetExhausted::new("inner.retry").into()),
            Answer::LocalDeadlineBeforeSending => {
                Err(DeadlineExceeded::before_sending("dep.attempt").into())
            }
            Answer::LocalThrottle => Err(Overloaded::local("dep.throttle", None).into()),
        }
    }
}

fn any_answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        Just(Answer::Ok200),
        Just(Answer::Http500),
        Just(Answer::Http503),
        Just(Answer::Http404),
        Just(Answer::RemoteError),
        Just(Answer::AttemptTimeout),
        Just(Answer::ShedderOverloaded),
        Just(Answer::LocalBulkhead),
        Just(Answer::LocalRateLimit),
        Just(Answer::LocalBreaker),
        Just(Answer::LocalBudget),
        Just(Answer::LocalDeadlineBeforeSending),
        Just(Answer::LocalThrottle),
    ]
}

type Res = http::Response<()>;
type Hostile = fn(Result<&Res, &BoxError>) -> Outcome;

/// Runs `answers` through a breaker with `classifier` and checks, call by
/// call, that a local refusal leaves the window exactly as it was.
fn check_window<C>(classifier: C, answers: &[Answer]) -> Result<(), TestCaseError>
where
    C: Classify<Res, BoxError> + Clone,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = CircuitBreakerLayer::builder()
            .window(SlidingWindow::count(1000))
            .minimum_calls(1000)
            .without_consecutive_failures()
            .classifier(classifier)
            .build()
            .unwrap();
        let handle = layer.handle();
        let next = Arc::new(std::sync::Mutex::new(Answer::Ok200));
        let n = next.clone();
        let mut svc = layer.layer(service_fn(move |_: ()| {
            let a = *n.lock().unwrap();
            async move { a.result() }
        }));
        for &answer in answers {
            let before: WindowSnapshot = handle.metrics();
            *next.lock().unwrap() = answer;
            let _ = svc.ready().await.unwrap().call(()).await;
            let after = handle.metrics();
            // Nor a shedder's "busy" (count_overload is off by default).
            if answer.is_local() || matches!(answer, Answer::ShedderOverloaded) {
                prop_assert_eq!(before, after, "{:?} changed the window", answer);
            }
            prop_assert_eq!(handle.state(), State::Closed);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For random sequences of outcomes of every origin, no local refusal
    /// and no shedder's `Overloaded` ever changes the breaker's window,
    /// under every shipped classifier and under one that calls everything a
    /// failure.
    #[test]
    fn no_local_refusal_ever_changes_the_window(answers in prop::collection::vec(any_answer(), 1..200)) {
        let hostile: Hostile = |_| Outcome::Failure;
        check_window(hostile, &answers)?;
        check_window(ErrorsAsFailures, &answers)?;
        check_window(DependencyFailures, &answers)?;
        check_window(HttpStatusClassifier::new(), &answers)?;
        check_window(GrpcStatusClassifier::new(), &answers)?;
    }
}

/// A bulkhead below the breaker, a surge of local traffic, a breaker that
/// opens on one failure: never opened, under every shipped classifier and a
/// hostile one.
#[tokio::test(start_paused = true)]
async fn a_local_surge_never_opens_the_breaker_under_any_classifier() {
    async fn surge<C: Classify<Res, BoxError> + Clone>(
        classifier: C,
    ) -> (State, (u64, u64, u64), usize) {
        let breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .classifier(classifier)
            .build()
            .unwrap();
        let handle = breaker.handle();
        let bulkhead = BulkheadLayer::builder().max_concurrent(2).build().unwrap();
        let svc = breaker.layer(bulkhead.layer(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, BoxError>(http::Response::builder().status(200).body(()).unwrap())
        })));
        let calls = (0..20).map(|_| svc.clone().oneshot(()));
        let results = futures::future::join_all(calls).await;
        let full = results
            .iter()
            .filter(|r| {
                r.as_ref()
                    .err()
                    .and_then(rejection_of)
                    .is_some_and(|v| v.kind() == RejectionKind::BulkheadFull)
            })
            .count();
        let m = handle.metrics();
        (handle.state(), (m.calls, m.failures, m.slow_calls), full)
    }
    // Calls, failures, slow calls in the window.
    let two_calls = (2, 0, 0);
    let hostile: Hostile = |_| Outcome::Failure;
    // The hostile classifier calls the two successes failures too: that
    // opens the breaker, but only because of them.
    let (state, metrics, full) = surge(hostile).await;
    assert_eq!(full, 18);
    assert_eq!(
        metrics.0, 1,
        "{state:?}: opened by a call that reached the dependency"
    );
    assert_eq!(
        surge(ErrorsAsFailures).await,
        (State::Closed, two_calls, 18)
    );
    assert_eq!(
        surge(DependencyFailures).await,
        (State::Closed, two_calls, 18)
    );
    assert_eq!(
        surge(HttpStatusClassifier::new()).await,
        (State::Closed, two_calls, 18)
    );
    assert_eq!(
        surge(GrpcStatusClassifier::new()).await,
        (State::Closed, two_calls, 18)
    );
}

/// The retry layer alone, no task-local deadline: the deadline the request
/// carries bounds its backoff (it used to sleep 10 s and make 3 attempts).
#[tokio::test(start_paused = true)]
async fn retry_reads_the_deadline_in_the_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let retry = RetryLayer::builder()
        .backoff(Duration::from_secs(5), Duration::from_secs(5))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let svc = retry.layer(service_fn(move |_req: http::Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>("connection reset".into()) }
    }));
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_secs(1)));
    let t0 = Instant::now();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection reset",
        "the last error, at once"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no 5 s backoff fits a 1 s deadline"
    );
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

/// The bulkhead alone, no task-local deadline: a request whose own deadline
/// passes while it waits in the queue is `DeadlineExceeded`, at its deadline.
#[tokio::test(start_paused = true)]
async fn bulkhead_queue_reads_the_deadline_in_the_request() {
    let bulkhead = BulkheadLayer::builder()
        .name("pool")
        .max_concurrent(1)
        .max_queue(4)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = bulkhead.layer(service_fn(|_req: http::Request<()>| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, BoxError>(())
    }));
    let running = tokio::spawn(svc.clone().oneshot(http::Request::new(())));
    tokio::task::yield_now().await;
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(300)));
    let t0 = Instant::now();
    let err = svc.clone().oneshot(req).await.unwrap_err();
    let view = rejection_of(&err).unwrap();
    assert_eq!(view.kind(), RejectionKind::DeadlineExceeded);
    assert_eq!(view.name(), "pool");
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    running.await.unwrap().unwrap();
}

/// A breaker held to the body's end over answers whose bodies are dropped
/// unread (a caller that reads the status only): each success counts as
/// its head said. Taking those back left only the one failure in 20 in the
/// window, and a healthy dependency opened the breaker.
#[tokio::test(start_paused = true)]
async fn successes_whose_bodies_are_dropped_unread_count() {
    use http_body_util::Full;
    let breaker = CircuitBreakerLayer::builder()
        .classifier(HttpStatusClassifier::new())
        .window(SlidingWindow::count(20))
        .minimum_calls(20)
        .build()
        .unwrap()
        .until_body_end();
    let handle = breaker.handle();
    let n = Arc::new(AtomicU32::new(0));
    let svc = tower::ServiceBuilder::new()
        .layer(breaker)
        .layer(seawall::body::CallBodyLayer::new())
        .service(service_fn(
            move |_: http::Request<seawall::body::CallBody<()>>| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    let status = if k % 20 == 19 { 500 } else { 200 };
                    Ok::<_, BoxError>(
                        http::Response::builder()
                            .status(status)
                            .body(Full::new(bytes::Bytes::from_static(b"ok")))
                            .unwrap(),
                    )
                }
            },
        ));
    for _ in 0..400 {
        let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        drop(res);
    }
    assert_eq!(handle.state(), State::Closed);
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (20, 1));
}

/// A half-open probe held to the body's end is judged at that end: a
/// stream that fails after its first message keeps the breaker open (judged
/// at its head or its first message, a dependency whose streams all failed
/// that way was closed on at every probe: 22 times in 10 s in an outside
/// trial over tonic); one that ends well closes it.
#[tokio::test(start_paused = true)]
async fn a_probes_body_is_judged_at_its_end() {
    use http_body_util::{BodyExt, StreamBody};
    // 0: a 500; 1: a 200 with one message, then the stream fails; 2: a
    // 200 with one message, then its end.
    let mode = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreakerLayer::builder()
        .classifier(HttpStatusClassifier::new())
        .window(SlidingWindow::count(1))
        .minimum_calls(1)
        .permitted_calls_in_half_open(1)
        .open_duration(Duration::from_secs(1))
        .open_multiplier(1.0)
        .build()
        .unwrap()
        .until_body_end();
    let handle = breaker.handle();
    let m = mode.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(breaker)
        .layer(seawall::body::CallBodyLayer::new())
        .service(service_fn(
            move |_: http::Request<seawall::body::CallBody<()>>| {
                let mode = m.load(Ordering::SeqCst);
                async move {
                    type Frames = futures::stream::BoxStream<
                        'static,
                        Result<http_body::Frame<bytes::Bytes>, BoxError>,
                    >;
                    use futures::StreamExt;
                    let message = || {
                        futures::stream::once(async {
                            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"event")))
                        })
                    };
                    let (status, frames): (u16, Frames) = match mode {
                        0 => (500, futures::stream::empty().boxed()),
                        1 => (
                            200,
                            message()
                                .chain(futures::stream::once(async {
                                    tokio::time::sleep(Duration::from_millis(150)).await;
                                    Err::<_, BoxError>("reset".into())
                                }))
                                .boxed(),
                        ),
                        _ => (200, message().boxed()),
                    };
                    Ok::<_, BoxError>(
                        http::Response::builder()
                            .status(status)
                            .body(StreamBody::new(frames))
                            .unwrap(),
                    )
                }
            },
        ));
    let call = || svc.clone().oneshot(http::Request::new(()));
    let _ = call().await.unwrap();
    assert_eq!(handle.state(), State::Open);
    // A probe whose stream fails after its first message: open again.
    mode.store(1, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = call().await.unwrap();
    let mut body = std::pin::pin!(probe.into_body());
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "event");
    assert_eq!(handle.state(), State::HalfOpen, "judged at the end");
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(handle.state(), State::Open);
    // A probe whose stream ends well: closed.
    mode.store(2, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = call().await.unwrap();
    assert_eq!(
        probe.into_body().collect().await.unwrap().to_bytes(),
        "event"
    );
    assert_eq!(handle.state(), State::Closed);
}

/// A body dropped while a read waits for more (its reader gave up on a
/// stalled body by a timer of its own) is not counted: nothing is known of
/// how it would have ended. One dropped with no read waiting counts as its
/// head said.
#[tokio::test(start_paused = true)]
async fn a_body_given_up_on_while_a_read_waits_is_not_counted() {
    use http_body_util::{BodyExt, StreamBody};
    let breaker = CircuitBreakerLayer::builder()
        .classifier(HttpStatusClassifier::new())
        .build()
        .unwrap()
        .until_body_end();
    let handle = breaker.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(breaker)
        .layer(seawall::body::CallBodyLayer::new())
        .service(service_fn(
            |_: http::Request<seawall::body::CallBody<()>>| async {
                let stalled =
                    futures::stream::pending::<Result<http_body::Frame<bytes::Bytes>, BoxError>>();
                Ok::<_, BoxError>(http::Response::new(StreamBody::new(stalled)))
            },
        ));
    for _ in 0..10 {
        let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        let mut body = std::pin::pin!(res.into_body());
        let read = tokio::time::timeout(Duration::from_millis(10), body.frame()).await;
        assert!(read.is_err(), "stalled");
    }
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (0, 0));
    let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    drop(res);
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (1, 0));
}
