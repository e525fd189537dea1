#![cfg(all(feature = "fallback", feature = "full"))]
//! The fallback layer: each way a call ends routes as configured, a slow
//! fallback is cut at the deadline, the service keeps its error type, and
//! over real HTTP an axum handler's client answers a degraded response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use seawall::BoxError;
use seawall::bulkhead::BulkheadLayer;
use seawall::deadline::{self, Deadline, DeadlineLayer};
use seawall::error::{AttemptTimeout, CircuitOpen, DeadlineExceeded, Overloaded};
use seawall::fallback::{FallbackLayer, FallbackOn, fallback_fn, fallback_to, fallback_with};
use seawall::http::HttpStatusClassifier;
use seawall::observe::{EventKind, FallbackReason, Observer, Recorder};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

/// A service ending every call with `err()`.
fn failing(
    err: impl Fn() -> BoxError + Send + Sync + Clone + 'static,
) -> impl Service<u32, Response = String, Error = BoxError, Future: Send> + Clone {
    service_fn(move |_: u32| {
        let err = err.clone();
        async move { Err::<String, _>(err()) }
    })
}

/// The reason the fallback was called with, or `None` when it was not.
async fn routed(
    on: FallbackOn,
    err: impl Fn() -> BoxError + Send + Sync + Clone + 'static,
) -> Option<FallbackReason> {
    let layer = FallbackLayer::builder(fallback_fn(
        |reason: FallbackReason, _: Result<&String, &BoxError>| async move {
            Some(reason.as_str().to_owned())
        },
    ))
    .on(on)
    .build()
    .unwrap();
    match layer.layer(failing(err)).oneshot(1).await {
        Ok(r) => Some(match r.as_str() {
            "refused" => FallbackReason::Refused,
            "overloaded" => FallbackReason::Overloaded,
            "failure" => FallbackReason::Failure,
            "deadline" => FallbackReason::Deadline,
            other => panic!("{other}"),
        }),
        Err(_) => None,
    }
}

#[tokio::test(start_paused = true)]
async fn each_ending_routes_by_its_origin() {
    let open =
        || -> BoxError { CircuitOpen::new("dep.breaker", Some(Duration::from_secs(1))).into() };
    let busy = || -> BoxError { Overloaded::new("dep", None).into() };
    let broken = || -> BoxError { "connection reset".into() };
    let timed_out = || -> BoxError { AttemptTimeout::new("dep.attempt").into() };
    let late = || -> BoxError { DeadlineExceeded::new("dep.deadline").into() };
    let all = FallbackOn::ALL;
    assert_eq!(routed(all, open).await, Some(FallbackReason::Refused));
    assert_eq!(routed(all, busy).await, Some(FallbackReason::Overloaded));
    assert_eq!(routed(all, broken).await, Some(FallbackReason::Failure));
    assert_eq!(routed(all, timed_out).await, Some(FallbackReason::Failure));
    assert_eq!(routed(all, late).await, Some(FallbackReason::Deadline));

    // Only what is routed.
    let shed = FallbackOn::REFUSED | FallbackOn::OVERLOADED;
    assert_eq!(routed(shed, open).await, Some(FallbackReason::Refused));
    assert_eq!(routed(shed, busy).await, Some(FallbackReason::Overloaded));
    assert_eq!(routed(shed, broken).await, None);
    assert_eq!(routed(shed, late).await, None);
    assert_eq!(
        routed(FallbackOn::DEADLINE, late).await,
        Some(FallbackReason::Deadline)
    );
    assert_eq!(routed(FallbackOn::DEADLINE, open).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_successful_call_never_reaches_the_fallback() {
    let called = Arc::new(AtomicU32::new(0));
    let c = called.clone();
    let layer = FallbackLayer::builder(fallback_fn(
        move |_: FallbackReason, _: Result<&u32, &BoxError>| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Some(0) }
        },
    ))
    .build()
    .unwrap();
    let svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, BoxError>(x + 1) }));
    assert_eq!(svc.oneshot(41).await.unwrap(), 42);
    assert_eq!(called.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_fallback_is_cut_at_the_deadline_and_the_original_error_returned() {
    let layer = FallbackLayer::builder(fallback_fn(
        |_: FallbackReason, _: Result<&String, &BoxError>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Some("too late".to_owned())
        },
    ))
    .build()
    .unwrap();
    let svc = layer.layer(failing(|| "broken".into()));
    // Under a 300 ms deadline set around the call.
    let start = Instant::now();
    let err = deadline::scope(Deadline::after(300 * MS), svc.clone().oneshot(1))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "broken");
    assert_eq!(start.elapsed(), 300 * MS);

    // Without a deadline, its own 1 s.
    let start = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "broken");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_past_the_clocks_range_answers_instead_of_panicking() {
    let layer = FallbackLayer::builder(fallback_fn(
        |_: FallbackReason, _: Result<&String, &BoxError>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Some("degraded".to_owned())
        },
    ))
    .timeout(Duration::MAX)
    .build()
    .unwrap();
    let svc = layer.layer(failing(|| "broken".into()));
    let start = Instant::now();
    assert_eq!(svc.oneshot(1).await.unwrap(), "degraded");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_layer_below_ends_in_the_deadline_fallback_in_time() {
    // The dependency hangs; the deadline layer below cuts it at 200 ms and
    // the fallback answers within what is left of a 250 ms outer deadline.
    let hang = service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<String, BoxError>("late".into())
    });
    let rec = Recorder::new();
    let layer = FallbackLayer::builder(fallback_fn(
        |reason: FallbackReason, _: Result<&String, &BoxError>| async move {
            tokio::time::sleep(20 * MS).await;
            Some(format!("fallback after {reason}"))
        },
    ))
    .observer(Observer::from(rec.clone()))
    .build()
    .unwrap();
    let svc = layer.layer(DeadlineLayer::new(200 * MS).unwrap().layer(hang));
    let start = Instant::now();
    let answer = deadline::scope(Deadline::after(250 * MS), svc.oneshot(1))
        .await
        .unwrap();
    assert_eq!(answer, "fallback after deadline");
    assert_eq!(start.elapsed(), 220 * MS);
    let used: Vec<_> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::FallbackUsed { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(used, vec![FallbackReason::Deadline]);
}

/// A client budget longer than the request's own deadline (the README's:
/// a server preset of 950 ms over a client of 2 s): the call below gets
/// the request's deadline less a tenth of the time left, and the fallback
/// answers in that tenth. The call ran to the request's own deadline, and
/// the fallback had no time left: every request of a hang got the error
/// until a breaker opened (an outside trial: 504s for 1.5 s).
#[tokio::test(start_paused = true)]
async fn the_fallback_keeps_a_tenth_of_the_time_left_to_answer_in() {
    let hang = service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<String, BoxError>("late".into())
    });
    let layer = FallbackLayer::builder(fallback_fn(
        |reason: FallbackReason, _: Result<&String, &BoxError>| async move {
            Some(format!("cached, after {reason}"))
        },
    ))
    .build()
    .unwrap();
    let svc = layer.layer(
        DeadlineLayer::new(Duration::from_secs(2))
            .unwrap()
            .layer(hang),
    );
    let start = Instant::now();
    let answer = deadline::scope(Deadline::after(950 * MS), svc.clone().oneshot(1))
        .await
        .unwrap();
    assert_eq!(answer, "cached, after deadline");
    assert_eq!(start.elapsed(), 855 * MS);
    // A fallback that does not answer for the deadline keeps nothing: the
    // call has all the time.
    let refusals_only = FallbackLayer::builder(fallback_fn(
        |_: FallbackReason, _: Result<&String, &BoxError>| async { Some("x".to_owned()) },
    ))
    .on(FallbackOn::REFUSED)
    .build()
    .unwrap();
    let hang = service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<String, BoxError>("late".into())
    });
    let svc = refusals_only.layer(
        DeadlineLayer::new(Duration::from_secs(2))
            .unwrap()
            .layer(hang),
    );
    let start = Instant::now();
    assert!(
        deadline::scope(Deadline::after(950 * MS), svc.oneshot(1))
            .await
            .is_err()
    );
    assert_eq!(start.elapsed(), 950 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_falls_back_to_a_second_service() {
    let slow = service_fn(|x: u32| async move {
        tokio::time::sleep(100 * MS).await;
        Ok::<String, BoxError>(format!("primary {x}"))
    });
    let replica =
        service_fn(|x: u32| async move { Ok::<String, BoxError>(format!("replica {x}")) });
    let primary = BulkheadLayer::builder()
        .max_concurrent(1)
        .build()
        .unwrap()
        .layer(slow);
    let svc = FallbackLayer::builder(fallback_to(replica))
        .on(FallbackOn::REFUSED)
        .build()
        .unwrap()
        .layer(primary);
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert_eq!(a.unwrap(), "primary 1");
    assert_eq!(
        b.unwrap(),
        "replica 2",
        "the bulkhead's refusal went to the replica"
    );
}

#[tokio::test(start_paused = true)]
async fn the_memo_carries_what_the_answer_needs_from_the_request() {
    let layer = FallbackLayer::builder(fallback_with(
        |id: &u32| *id * 10,
        |key: u32, _: FallbackReason, _: Result<&String, &BoxError>| async move {
            Some(format!("cached {key}"))
        },
    ))
    .build()
    .unwrap();
    let svc = layer.layer(failing(|| "down".into()));
    assert_eq!(svc.oneshot(7).await.unwrap(), "cached 70");
}

#[test]
fn the_settings_are_checked_when_built() {
    let f = || fallback_fn(|_: FallbackReason, _: Result<&u32, &BoxError>| async { None::<u32> });
    assert!(
        FallbackLayer::builder(f())
            .timeout(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(FallbackLayer::builder(f()).build().is_ok());
}

/// An HTTP 503 from a real axum server is an overload with the HTTP
/// classifier: the client answers a degraded response.
#[tokio::test]
async fn over_http_a_503_gets_the_degraded_answer() {
    let app = axum::Router::new()
        .route(
            "/busy",
            axum::routing::get(|| async {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    "busy",
                )
            }),
        )
        .route(
            "/missing",
            axum::routing::get(|| async { (http::StatusCode::NOT_FOUND, "no") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    // The same client, its bodies collected to `Bytes` first, so that a
    // fallback can build responses of that type.
    let collected = tower::service_fn(move |req: http::Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let res = client.request(req).await?;
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(http::Response::from_parts(parts, bytes))
        }
    });
    let degraded = FallbackLayer::builder(fallback_fn(
        |reason: FallbackReason, _: Result<&http::Response<Bytes>, &BoxError>| async move {
            Some(
                http::Response::builder()
                    .status(200)
                    .header("x-degraded", reason.as_str())
                    .body(Bytes::from_static(b"[]"))
                    .unwrap(),
            )
        },
    ))
    .classifier(HttpStatusClassifier::new())
    .build()
    .unwrap()
    .layer(collected);
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let res = degraded.clone().oneshot(get("/busy")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-degraded"], "overloaded");
    assert_eq!(&res.into_body()[..], b"[]");
    // A 404 is the caller's own mistake: no fallback.
    let res = degraded.oneshot(get("/missing")).await.unwrap();
    assert_eq!(res.status(), 404);
}
