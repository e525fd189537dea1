#![cfg(feature = "deadline")]
//! Timeout budgets: DeadlineLayer, AttemptTimeoutLayer and header propagation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use seawall::BoxError;
use seawall::deadline::{self, AttemptTimeoutLayer, Deadline, DeadlineLayer, HasDeadline};
use seawall::error::{RejectionKind, rejection_of};
use seawall::observe::{EventKind, LayerKind, Observer, Recorder};
use tokio::time::{Instant, Sleep, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

/// A request type carrying its own deadline.
#[derive(Debug, Clone, Default)]
struct Req {
    deadline: Option<Deadline>,
}

impl HasDeadline for Req {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
    fn set_deadline(&mut self, d: Deadline) {
        self.deadline = Some(d);
    }
}

fn view(err: &BoxError) -> (RejectionKind, String) {
    let r = rejection_of(err).unwrap_or_else(|| panic!("not a seawall rejection: {err}"));
    (r.kind(), r.name().to_owned())
}

fn rejected(rec: &Recorder) -> Vec<(LayerKind, String, RejectionKind, &'static str)> {
    rec.events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Rejected { reason, detail, .. } => Some((e.layer, e.name, reason, detail)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn upstream_deadline_shrinks_as_time_passes() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let inner = service_fn(move |req: Req| {
        let s = s.clone();
        async move {
            let from_req = req.deadline().map(|d| d.remaining());
            s.lock().unwrap().push((from_req, deadline::remaining()));
            sleep(200 * MS).await;
            s.lock().unwrap().push((from_req, deadline::remaining()));
            Ok::<_, BoxError>(())
        }
    });
    // Budget 5 s, but the caller's deadline (task-local) is 1 s away: 1 s binds.
    let svc = DeadlineLayer::new(Duration::from_secs(5))
        .unwrap()
        .layer(inner);
    let upstream = Deadline::after(Duration::from_secs(1));
    sleep(250 * MS).await;
    deadline::scope(upstream, svc.clone().oneshot(Req::default()))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (Some(750 * MS), Some(750 * MS)),
            (Some(750 * MS), Some(550 * MS)),
        ]
    );

    // A deadline carried by the request itself binds the same way, and the
    // layer's own budget binds when it is the shorter one.
    seen.lock().unwrap().clear();
    let svc = DeadlineLayer::new(300 * MS)
        .unwrap()
        .layer(svc.into_inner());
    let req = Req {
        deadline: Some(Deadline::after(Duration::from_secs(1))),
    };
    svc.oneshot(req).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (Some(300 * MS), Some(300 * MS)),
            (Some(300 * MS), Some(100 * MS)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn budget_running_out_mid_call_fails_with_deadline_exceeded() {
    let rec = Recorder::new();
    let layer = DeadlineLayer::builder(500 * MS)
        .name("checkout")
        .observer(Observer::new(rec.clone()))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: Req| async {
        sleep(Duration::from_secs(2)).await;
        Ok::<_, BoxError>("late")
    }));
    let start = Instant::now();
    let err = svc.oneshot(Req::default()).await.unwrap_err();
    assert_eq!(start.elapsed(), 500 * MS);
    assert_eq!(
        view(&err),
        (RejectionKind::DeadlineExceeded, "checkout".into())
    );
    assert_eq!(
        rejected(&rec),
        vec![(
            LayerKind::Deadline,
            "checkout".into(),
            RejectionKind::DeadlineExceeded,
            "timed_out"
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn expired_request_never_reaches_the_inner_service() {
    let rec = Recorder::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = DeadlineLayer::builder(Duration::from_secs(5))
        .name("edge")
        .observer(Observer::new(rec.clone()))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(move |_: Req| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    }));

    // Expired in the request.
    let req = Req {
        deadline: Some(Deadline::after(10 * MS)),
    };
    sleep(10 * MS).await;
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(view(&err), (RejectionKind::DeadlineExceeded, "edge".into()));

    // Expired in the task-local.
    let d = Deadline::after(MS);
    sleep(5 * MS).await;
    let err = deadline::scope(d, svc.clone().oneshot(Req::default()))
        .await
        .unwrap_err();
    assert_eq!(view(&err), (RejectionKind::DeadlineExceeded, "edge".into()));

    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let expected = (
        LayerKind::Deadline,
        "edge".to_owned(),
        RejectionKind::DeadlineExceeded,
        "expired_on_arrival",
    );
    assert_eq!(rejected(&rec), vec![expected.clone(), expected]);

    // A zero budget refuses everything (builder refuses it up front).
    let err = DeadlineLayer::builder(Duration::ZERO).build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid deadline configuration: budget must be greater than zero, got 0ns"
    );
    let err = AttemptTimeoutLayer::builder(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.layer(), "attempt_timeout");
    // `new` is `builder().build()`: it refuses the same.
    assert_eq!(
        DeadlineLayer::new(Duration::ZERO).unwrap_err().to_string(),
        "invalid deadline configuration: budget must be greater than zero, got 0ns"
    );
    assert_eq!(
        AttemptTimeoutLayer::new(Duration::ZERO)
            .unwrap_err()
            .layer(),
        "attempt_timeout"
    );
}

/// A service that becomes ready only at a given instant.
struct ReadyAt {
    sleep: Pin<Box<Sleep>>,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Option<Duration>>>,
}

impl Service<Req> for ReadyAt {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.sleep.as_mut().poll(cx).map(Ok)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.seen.lock().unwrap() = req.deadline().map(|d| d.remaining());
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_in_poll_ready_counts_against_the_budget() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(None));
    let rec = Recorder::new();
    let layer = DeadlineLayer::builder(Duration::from_secs(1))
        .name("api")
        .observer(Observer::new(rec.clone()))
        .build()
        .unwrap();

    // Ready after 300 ms: 700 ms are left at the call.
    let mut svc = layer.layer(ReadyAt {
        sleep: Box::pin(sleep(300 * MS)),
        calls: calls.clone(),
        seen: seen.clone(),
    });
    let start = Instant::now();
    svc.ready().await.unwrap();
    assert_eq!(start.elapsed(), 300 * MS);
    svc.call(Req::default()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(700 * MS));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Ready only after 1.2 s: the budget was spent waiting; the call is
    // refused without reaching the service.
    let mut svc = layer.layer(ReadyAt {
        sleep: Box::pin(sleep(1200 * MS)),
        calls: calls.clone(),
        seen: seen.clone(),
    });
    svc.ready().await.unwrap();
    let err = svc.call(Req::default()).await.unwrap_err();
    assert_eq!(view(&err), (RejectionKind::DeadlineExceeded, "api".into()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        rejected(&rec),
        vec![(
            LayerKind::Deadline,
            "api".into(),
            RejectionKind::DeadlineExceeded,
            "expired_waiting_ready"
        )]
    );
}

/// A wait in `poll_ready` that its task gave up on is not charged to the
/// next call, made by another task once the service is ready.
#[tokio::test(start_paused = true)]
async fn a_wait_another_task_gave_up_is_not_the_next_calls() {
    struct Flag;
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {}
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(None));
    let layer = DeadlineLayer::builder(Duration::from_secs(1))
        .name("api")
        .build()
        .unwrap();
    let mut svc = layer.layer(ReadyAt {
        sleep: Box::pin(sleep(300 * MS)),
        calls: calls.clone(),
        seen: seen.clone(),
    });
    // Task A polls, has to wait, and goes away.
    let a = std::task::Waker::from(Arc::new(Flag));
    assert!(svc.poll_ready(&mut Context::from_waker(&a)).is_pending());
    // 2 s later task B finds it ready and calls: its own full budget.
    tokio::time::advance(Duration::from_secs(2)).await;
    let b = std::task::Waker::from(Arc::new(Flag));
    assert!(matches!(
        svc.poll_ready(&mut Context::from_waker(&b)),
        Poll::Ready(Ok(()))
    ));
    svc.call(Req::default()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(Duration::from_secs(1)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A naive retry loop: calls again after every `AttemptTimeout`, without limit.
#[derive(Clone)]
struct RetryLoop<S> {
    inner: S,
    attempts: Arc<AtomicUsize>,
}

impl<S> Service<Req> for RetryLoop<S>
where
    S: Service<Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = self.inner.clone();
        let attempts = self.attempts.clone();
        Box::pin(async move {
            loop {
                attempts.fetch_add(1, Ordering::SeqCst);
                match inner.clone().oneshot(req.clone()).await {
                    Err(e) if view(&e).0 == RejectionKind::AttemptTimeout => continue,
                    other => return other,
                }
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn retries_cannot_outlive_the_total_budget() {
    let rec = Recorder::new();
    let obs = Observer::new(rec.clone());
    let attempts = Arc::new(AtomicUsize::new(0));
    let inner_calls = Arc::new(Mutex::new(Vec::new()));
    let ic = inner_calls.clone();
    let start = Instant::now();
    let slow = service_fn(move |_: Req| {
        ic.lock()
            .unwrap()
            .push((start.elapsed(), deadline::remaining()));
        async {
            sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(())
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(
            DeadlineLayer::builder(Duration::from_secs(1))
                .name("total")
                .observer(obs.clone())
                .build()
                .unwrap(),
        )
        .layer(tower::layer::layer_fn(|inner| RetryLoop {
            inner,
            attempts: attempts.clone(),
        }))
        .layer(
            AttemptTimeoutLayer::builder(300 * MS)
                .name("per-try")
                .observer(obs)
                .build()
                .unwrap(),
        )
        .service(slow);

    let err = svc.oneshot(Req::default()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    // Each attempt sees min(300 ms, time left) as its deadline.
    assert_eq!(
        *inner_calls.lock().unwrap(),
        vec![
            (Duration::ZERO, Some(300 * MS)),
            (300 * MS, Some(300 * MS)),
            (600 * MS, Some(300 * MS)),
            (900 * MS, Some(100 * MS)),
        ]
    );
    // The last attempt was cut by the total deadline, not by its own timer.
    assert_eq!(
        view(&err),
        (RejectionKind::DeadlineExceeded, "per-try".into())
    );
    let per_try_timeout = (
        LayerKind::AttemptTimeout,
        "per-try".to_owned(),
        RejectionKind::AttemptTimeout,
        "timed_out",
    );
    assert_eq!(
        rejected(&rec),
        vec![
            per_try_timeout.clone(),
            per_try_timeout.clone(),
            per_try_timeout,
            (
                LayerKind::AttemptTimeout,
                "per-try".to_owned(),
                RejectionKind::DeadlineExceeded,
                "timed_out"
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_or_deadline_exceeded_depending_on_the_binding_limit() {
    let rec = Recorder::new();
    let layer = AttemptTimeoutLayer::builder(100 * MS)
        .name("try")
        .observer(Observer::new(rec.clone()))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = layer.layer(service_fn(move |_: ()| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            sleep(200 * MS).await;
            Ok::<_, BoxError>(())
        }
    }));

    // No overall deadline: the per-try timer fires at 100 ms.
    let start = Instant::now();
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(view(&err), (RejectionKind::AttemptTimeout, "try".into()));

    // 1 s of budget left: still the per-try timer, still retryable.
    let start = Instant::now();
    let d = Deadline::after(Duration::from_secs(1));
    let err = deadline::scope(d, svc.clone().oneshot(()))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(view(&err), (RejectionKind::AttemptTimeout, "try".into()));

    // Only 40 ms left: the total deadline binds, DeadlineExceeded at 40 ms.
    let start = Instant::now();
    let d = Deadline::after(40 * MS);
    let err = deadline::scope(d, svc.clone().oneshot(()))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), 40 * MS);
    assert_eq!(view(&err), (RejectionKind::DeadlineExceeded, "try".into()));

    // Nothing left: refused without calling the service.
    let d = Deadline::after(MS);
    sleep(MS).await;
    let err = deadline::scope(d, svc.clone().oneshot(()))
        .await
        .unwrap_err();
    assert_eq!(view(&err), (RejectionKind::DeadlineExceeded, "try".into()));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A fast call is untouched.
    let ok = AttemptTimeoutLayer::new(100 * MS)
        .unwrap()
        .layer(service_fn(|x: u32| async move {
            sleep(99 * MS).await;
            Ok::<_, BoxError>(x + 1)
        }));
    assert_eq!(ok.oneshot(41).await.unwrap(), 42);

    let details: Vec<_> = rejected(&rec)
        .into_iter()
        .map(|(_, name, kind, detail)| (name, kind, detail))
        .collect();
    assert_eq!(
        details,
        vec![
            ("try".into(), RejectionKind::AttemptTimeout, "timed_out"),
            ("try".into(), RejectionKind::AttemptTimeout, "timed_out"),
            ("try".into(), RejectionKind::DeadlineExceeded, "timed_out"),
            (
                "try".into(),
                RejectionKind::DeadlineExceeded,
                "expired_on_arrival"
            ),
        ]
    );
}

#[cfg(feature = "http")]
mod propagation {
    use super::*;
    use http::{HeaderValue, Request};
    use seawall::deadline::ParseTimeoutError;
    use seawall::deadline::propagate::{
        DeadlineFromHeadersLayer, InvalidTimeout, OnInvalid, PropagateDeadlineLayer,
    };

    type Seen = Arc<Mutex<Vec<(Option<Duration>, Option<Duration>)>>>;

    /// A handler recording (extension deadline remaining, task-local remaining).
    fn recording_handler(
        seen: Seen,
    ) -> impl Service<Request<()>, Response = http::Response<()>, Error = BoxError, Future: Send> + Clone
    {
        service_fn(move |req: Request<()>| {
            let seen = seen.clone();
            async move {
                let ext = req.extensions().get::<Deadline>().map(|d| d.remaining());
                seen.lock().unwrap().push((ext, deadline::remaining()));
                Ok::<_, BoxError>(http::Response::new(()))
            }
        })
    }

    fn request(headers: &[(&str, &[u8])]) -> Request<()> {
        let mut req = Request::new(());
        for (name, value) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        req
    }

    fn ignored(rec: &Recorder) -> Vec<(&'static str, &'static str)> {
        rec.events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::InputIgnored { input, reason } => Some((input, reason)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn header_round_trip_ingress_remaining_egress() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        let client = PropagateDeadlineLayer::new().layer(service_fn(move |req: Request<()>| {
            let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            s.lock()
                .unwrap()
                .push((h("grpc-timeout"), h("x-request-timeout-ms")));
            async { Ok::<_, BoxError>(http::Response::new(())) }
        }));
        let server = DeadlineFromHeadersLayer::builder()
            .margin(50 * MS)
            .build()
            .unwrap()
            .layer(service_fn(move |req: Request<()>| {
                let client = client.clone();
                async move {
                    let ext = req.extensions().get::<Deadline>().copied();
                    assert_eq!(ext.map(|d| d.remaining()), Some(1450 * MS));
                    assert_eq!(deadline::remaining(), Some(1450 * MS));
                    sleep(100 * MS).await;
                    assert_eq!(deadline::remaining(), Some(1350 * MS));
                    client.oneshot(Request::new(())).await
                }
            }));

        server
            .clone()
            .oneshot(request(&[("grpc-timeout", b"1500m")]))
            .await
            .unwrap();
        // Milliseconds header in, sub-millisecond remainder rounded down on the way out.
        server
            .oneshot(request(&[("x-request-timeout-ms", b"1500")]))
            .await
            .unwrap();
        assert_eq!(
            *sent.lock().unwrap(),
            vec![
                (Some("1350m".into()), Some("1350".into())),
                (Some("1350m".into()), Some("1350".into())),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn egress_rounds_down_keeps_shorter_headers_and_refuses_when_expired() {
        let rec = Recorder::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        let client = PropagateDeadlineLayer::builder()
            .name("to-inventory")
            .observer(Observer::new(rec.clone()))
            .build()
            .unwrap()
            .layer(service_fn(move |req: Request<()>| {
                let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                c.lock()
                    .unwrap()
                    .push((h("grpc-timeout"), h("x-request-timeout-ms")));
                async { Ok::<_, BoxError>(http::Response::new(())) }
            }));

        // 1.2345678 s left: 1234567u (rounded down to whole microseconds), 1234 ms.
        let d = Deadline::after(Duration::from_nanos(1_234_567_800));
        deadline::scope(d, client.clone().oneshot(Request::new(())))
            .await
            .unwrap();

        // A shorter timeout already on the request is kept; a longer one is replaced.
        let mut req = request(&[("grpc-timeout", b"1S"), ("x-request-timeout-ms", b"9000")]);
        req.set_deadline(Deadline::after(Duration::from_secs(2)));
        client.clone().oneshot(req).await.unwrap();

        // No deadline anywhere: sent unchanged.
        client.clone().oneshot(Request::new(())).await.unwrap();

        // No time left: refused, nothing sent.
        let d = Deadline::after(MS);
        sleep(MS).await;
        let err = deadline::scope(d, client.clone().oneshot(Request::new(())))
            .await
            .unwrap_err();
        assert_eq!(
            view(&err),
            (RejectionKind::DeadlineExceeded, "to-inventory".into())
        );

        assert_eq!(
            *calls.lock().unwrap(),
            vec![
                (Some("1234567u".into()), Some("1234".into())),
                (Some("1S".into()), Some("2000".into())),
                (None, None),
            ]
        );
        assert_eq!(
            rejected(&rec),
            vec![(
                LayerKind::Deadline,
                "to-inventory".into(),
                RejectionKind::DeadlineExceeded,
                "expired_on_arrival"
            )]
        );

        // Milliseconds only: less than 1 ms left counts as nothing left.
        let ms_only = PropagateDeadlineLayer::http().layer(service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        }));
        let d = Deadline::after(Duration::from_micros(999));
        let err = deadline::scope(d, ms_only.oneshot(Request::new(())))
            .await
            .unwrap_err();
        assert_eq!(view(&err).0, RejectionKind::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn requested_timeouts_are_clamped_to_the_maximum() {
        let rec = Recorder::new();
        let seen: Seen = Arc::default();
        let svc = DeadlineFromHeadersLayer::builder()
            .max(Duration::from_secs(10))
            .observer(Observer::new(rec.clone()))
            .build()
            .unwrap()
            .layer(recording_handler(seen.clone()));
        let ten = Some(Duration::from_secs(10));

        for headers in [
            &[("grpc-timeout", &b"1H"[..])][..],
            &[("x-request-timeout-ms", b"120000")],
            &[("x-request-timeout-ms", b"999999999999999999")],
        ] {
            svc.clone().oneshot(request(headers)).await.unwrap();
        }
        // Both headers: the smaller wins (1.5 s), no clamping.
        svc.clone()
            .oneshot(request(&[
                ("grpc-timeout", b"2S"),
                ("x-request-timeout-ms", b"1500"),
            ]))
            .await
            .unwrap();

        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (ten, ten),
                (ten, ten),
                (ten, ten),
                (Some(1500 * MS), Some(1500 * MS))
            ]
        );
        assert_eq!(
            ignored(&rec),
            vec![
                ("grpc-timeout", "clamped"),
                ("x-request-timeout-ms", "clamped"),
                ("x-request-timeout-ms", "clamped"),
            ]
        );

        // The default cap is 30 s.
        let seen: Seen = Arc::default();
        let svc = DeadlineFromHeadersLayer::new().layer(recording_handler(seen.clone()));
        svc.oneshot(request(&[("grpc-timeout", b"99999999H")]))
            .await
            .unwrap();
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(*seen.lock().unwrap(), vec![(thirty, thirty)]);
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_headers_are_ignored_with_an_event() {
        let rec = Recorder::new();
        let seen: Seen = Arc::default();
        let svc = DeadlineFromHeadersLayer::builder()
            .name("ingress")
            .default_budget(Duration::from_secs(2))
            .observer(Observer::new(rec.clone()))
            .build()
            .unwrap()
            .layer(recording_handler(seen.clone()));

        let bad: [(&str, &[u8]); 8] = [
            ("grpc-timeout", b"abc"),
            ("grpc-timeout", b"-5m"),
            ("grpc-timeout", b"123456789m"),
            ("grpc-timeout", b"\xff10m"),
            ("grpc-timeout", b"10s"),
            ("x-request-timeout-ms", b"-1"),
            ("x-request-timeout-ms", b"1.5"),
            ("x-request-timeout-ms", b"1234567890123456789"),
        ];
        for h in bad {
            svc.clone().oneshot(request(&[h])).await.unwrap();
        }
        // One readable and one unreadable header: the readable one applies.
        svc.clone()
            .oneshot(request(&[
                ("grpc-timeout", b"??"),
                ("x-request-timeout-ms", b"700"),
            ]))
            .await
            .unwrap();

        let two = Some(Duration::from_secs(2));
        let mut expected = vec![(two, two); 8];
        expected.push((Some(700 * MS), Some(700 * MS)));
        assert_eq!(*seen.lock().unwrap(), expected);
        assert_eq!(
            ignored(&rec),
            vec![
                ("grpc-timeout", "malformed"),
                ("grpc-timeout", "malformed"),
                ("grpc-timeout", "too_long"),
                ("grpc-timeout", "malformed"),
                ("grpc-timeout", "bad_unit"),
                ("x-request-timeout-ms", "malformed"),
                ("x-request-timeout-ms", "malformed"),
                ("x-request-timeout-ms", "too_long"),
                ("grpc-timeout", "malformed"),
            ]
        );
        assert!(rec.events().iter().all(|e| e.name == "ingress"));

        // Without a default budget, an ignored header means no deadline at all.
        let seen: Seen = Arc::default();
        let svc = DeadlineFromHeadersLayer::new().layer(recording_handler(seen.clone()));
        svc.oneshot(request(&[("grpc-timeout", b"1.5S")]))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(None, None)]);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_headers_can_be_rejected_and_expired_ones_are() {
        let rec = Recorder::new();
        let seen: Seen = Arc::default();
        let svc = DeadlineFromHeadersLayer::builder()
            .name("ingress")
            .on_invalid(OnInvalid::Reject)
            .margin(20 * MS)
            .observer(Observer::new(rec.clone()))
            .build()
            .unwrap()
            .layer(recording_handler(seen.clone()));

        let err = svc
            .clone()
            .oneshot(request(&[("grpc-timeout", b"1 S")]))
            .await
            .unwrap_err();
        let invalid = err.downcast_ref::<InvalidTimeout>().unwrap();
        assert_eq!(invalid.input(), "grpc-timeout");
        assert_eq!(invalid.reason(), ParseTimeoutError::Malformed);
        assert_eq!(
            err.to_string(),
            "invalid grpc-timeout header: timeout value is not made of ASCII digits"
        );
        // Answered as the caller's mistake: 400 / INVALID_ARGUMENT (not 500 /
        // UNKNOWN, which a client's breaker would count against the server).
        let res: http::Response<String> = seawall::http::rejection_response(&err);
        assert_eq!(res.status(), 400);
        assert_eq!(res.body(), "invalid timeout header");
        #[cfg(feature = "tonic")]
        assert_eq!(
            seawall::grpc::status_for(&err).code(),
            tonic::Code::InvalidArgument
        );

        // Zero, or no more than the margin: expired on arrival.
        for value in [&b"0n"[..], b"20m"] {
            let err = svc
                .clone()
                .oneshot(request(&[("grpc-timeout", value)]))
                .await
                .unwrap_err();
            assert_eq!(
                view(&err),
                (RejectionKind::DeadlineExceeded, "ingress".into())
            );
        }
        // 21 ms minus a 20 ms margin leaves exactly 1 ms.
        svc.clone()
            .oneshot(request(&[("grpc-timeout", b"21m")]))
            .await
            .unwrap();

        assert_eq!(*seen.lock().unwrap(), vec![(Some(MS), Some(MS))]);
        assert_eq!(ignored(&rec), vec![("grpc-timeout", "malformed")]);
        let expired = (
            LayerKind::Deadline,
            "ingress".to_owned(),
            RejectionKind::DeadlineExceeded,
            "expired_on_arrival",
        );
        assert_eq!(rejected(&rec), vec![expired.clone(), expired]);
    }

    #[tokio::test(start_paused = true)]
    async fn ingress_then_deadline_layer_enforces_the_callers_deadline() {
        let svc = tower::ServiceBuilder::new()
            .layer(DeadlineFromHeadersLayer::new())
            .layer(DeadlineLayer::new(Duration::from_secs(10)).unwrap())
            .service(service_fn(|_: Request<()>| async {
                sleep(Duration::from_secs(5)).await;
                Ok::<_, BoxError>(http::Response::new(()))
            }));
        let start = Instant::now();
        let err = svc
            .oneshot(request(&[("x-request-timeout-ms", b"250")]))
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), 250 * MS);
        assert_eq!(
            view(&err),
            (RejectionKind::DeadlineExceeded, "deadline".into())
        );
    }

    #[test]
    fn builders_refuse_nonsense() {
        let e = |r: Result<DeadlineFromHeadersLayer, seawall::ConfigError>| {
            r.unwrap_err().message().to_owned()
        };
        assert_eq!(
            e(DeadlineFromHeadersLayer::builder()
                .max(Duration::ZERO)
                .build()),
            "max must be greater than zero, got 0ns"
        );
        assert_eq!(
            e(DeadlineFromHeadersLayer::builder()
                .max(Duration::from_secs(1))
                .margin(Duration::from_secs(1))
                .build()),
            "margin must be below max (1s), got 1s"
        );
        assert_eq!(
            e(DeadlineFromHeadersLayer::builder()
                .default_budget(Duration::from_secs(31))
                .build()),
            "default_budget must be in (0, max = 30s], got 31s"
        );
        assert_eq!(
            e(DeadlineFromHeadersLayer::builder()
                .ms_header("bad header")
                .build()),
            "ms_header must be a valid HTTP header name, got \"bad header\""
        );
        assert!(
            PropagateDeadlineLayer::builder()
                .grpc_timeout(false)
                .no_ms_header()
                .build()
                .is_err()
        );
    }
}

/// Which deadline ended an attempt: the request's, more than 20 ms before
/// the attempt's own timeout, ends it as `DeadlineExceeded` (not the
/// dependency's failure), also when a timer below ran to the same
/// deadline (a tonic channel's, to the `grpc-timeout` it was sent) and
/// said `AttemptTimeout`; within 20 ms of its own end the attempt had its
/// time, and ends as an `AttemptTimeout`.
#[tokio::test(start_paused = true)]
async fn an_attempt_ends_as_the_deadline_that_cut_it_short() {
    use seawall::error::AttemptTimeout;
    let attempt = AttemptTimeoutLayer::new(800 * MS).unwrap();
    // A timer below that fires at the deadline the attempt runs to.
    let svc = attempt.layer(service_fn(|_: ()| async {
        let d = deadline::current().expect("the attempt's deadline");
        tokio::time::sleep_until(d.instant()).await;
        Err::<(), BoxError>(AttemptTimeout::new("transport").into())
    }));
    let run = |budget: Duration| {
        let svc = svc.clone();
        async move {
            let start = Instant::now();
            let err = deadline::scope(Deadline::after(budget), svc.oneshot(()))
                .await
                .unwrap_err();
            (view(&err), start.elapsed())
        }
    };
    // The request's 300 ms cut the 800 ms attempt short.
    assert_eq!(
        run(300 * MS).await,
        (
            (RejectionKind::DeadlineExceeded, "transport".to_owned()),
            300 * MS
        )
    );
    // 790 ms: within 20 ms of the attempt's own end, the attempt's.
    assert_eq!(
        run(790 * MS).await,
        (
            (RejectionKind::AttemptTimeout, "transport".to_owned()),
            790 * MS
        )
    );
    // 2 s: the attempt's own timeout binds.
    assert_eq!(
        run(2000 * MS).await,
        (
            (RejectionKind::AttemptTimeout, "transport".to_owned()),
            800 * MS
        )
    );

    // The same with the attempt layer's own timer (a dependency that hangs).
    assert_hung_attempt_ends(
        &attempt,
        [
            (300, RejectionKind::DeadlineExceeded),
            (780, RejectionKind::DeadlineExceeded),
            (781, RejectionKind::AttemptTimeout),
            (800, RejectionKind::AttemptTimeout),
        ],
    )
    .await;
}

/// How an attempt on a dependency that never answers ends, under each
/// request budget (ms): the request's deadline, or the attempt's timeout.
async fn assert_hung_attempt_ends<const N: usize>(
    attempt: &AttemptTimeoutLayer,
    cases: [(u32, RejectionKind); N],
) {
    let svc = attempt.layer(service_fn(|_: ()| async {
        std::future::pending::<Result<(), BoxError>>().await
    }));
    for (budget, kind) in cases {
        let err = deadline::scope(Deadline::after(budget * MS), svc.clone().oneshot(()))
            .await
            .unwrap_err();
        assert_eq!(view(&err).0, kind, "{budget} ms left");
    }
}

/// The margin within which an attempt cut by the request's deadline still
/// ends as its own is a tenth of a short attempt timeout: a 15 ms attempt
/// with 5 ms of the request left is cut short (`DeadlineExceeded`), not
/// the dependency's timeout.
#[tokio::test(start_paused = true)]
async fn a_short_attempt_cut_by_the_request_ends_as_its_deadline() {
    let attempt = AttemptTimeoutLayer::new(15 * MS).unwrap();
    assert_hung_attempt_ends(
        &attempt,
        [
            (5, RejectionKind::DeadlineExceeded),
            (13, RejectionKind::DeadlineExceeded),
            (14, RejectionKind::AttemptTimeout),
            (100, RejectionKind::AttemptTimeout),
        ],
    )
    .await;
}
