//! The protocol presets of the client stack, `ClientStack::http` and
//! `ClientStack::grpc`, with their defaults, over loopback against real
//! servers: a real hyper client against axum, a real tonic `Channel` and
//! tonic client against a tonic server.
//!
//! These tests run in real time (real sockets); every loop is bounded in
//! count, and no assertion fails because something took longer than it
//! does on an idle machine (the breaker's probes are counted, not timed).
#![cfg(all(feature = "tonic", feature = "full"))]

#[path = "../../examples/common/greeter.rs"]
mod greeter;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::deadline::propagate::PropagateDeadlineLayerBuilder;
use seawall::error::{RejectionKind, rejection_of};
use seawall::grpc::GrpcStatusClassifier;
use seawall::http::HttpStatusClassifier;
use seawall::observe::{LayerKind, State};
use seawall::retry::grpc::GrpcRetry;
use seawall::retry::http::HttpRetry;
use seawall::stack::{
    ClientStack, ClientStackBuilder, GrpcClient, GrpcOutermost, GrpcTransportPart, HttpClient,
    HttpOutermost,
};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Layer, ServiceExt};

use greeter::{GreeterServer, HelloRequest, call_say_hello};

type Hyper = Client<HttpConnector, Full<Bytes>>;

/// The HTTP client preset with its defaults: 2 s per request, 500 ms per
/// attempt.
fn http_preset()
-> ClientStackBuilder<HttpRetry, HttpStatusClassifier, PropagateDeadlineLayerBuilder, HttpOutermost>
{
    ClientStack::http("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
}

/// The gRPC client preset with its defaults and the given attempt timeout
/// (2 s per request).
fn grpc_preset(
    attempt: Duration,
) -> ClientStackBuilder<GrpcRetry, GrpcStatusClassifier, GrpcTransportPart, GrpcOutermost> {
    ClientStack::grpc("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(attempt)
}

/// The same stack, for a surge of local traffic: two attempts in flight at
/// most, one attempt per call (a refused call would be retried after its
/// hint: one attempt keeps the count of refusals exact), a breaker that
/// opens on one counted failure.
fn for_a_local_surge<P, C, L, O>(
    b: ClientStackBuilder<P, C, L, O>,
) -> ClientStackBuilder<P, C, L, O> {
    b.bulkhead(|b| b.max_concurrent(2))
        .retry(|r| r.max_attempts(1))
        .breaker(|b| b.consecutive_failures(1))
}

fn hyper() -> Hyper {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An axum server on loopback; every route counts its hits.
struct HttpServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

/// A streamed body: "head " at once, "tail" after `delay`.
fn chunks(delay: Duration) -> axum::body::Body {
    let first = futures::stream::iter([Ok::<_, Infallible>(Bytes::from("head "))]);
    let second = futures::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Bytes::from("tail"))
    });
    axum::body::Body::from_stream(first.chain(second))
}

/// Serves `app` on a free loopback port.
async fn serve_axum(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn http_server() -> HttpServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let count = move || {
        h.fetch_add(1, Ordering::SeqCst);
    };
    let (c1, c2, c3, c4) = (count.clone(), count.clone(), count.clone(), count);
    let app = Router::new()
        .route(
            "/fail",
            get({
                let c = c1.clone();
                move || async move {
                    c();
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "broken")
                }
            })
            .post(move || async move {
                c1();
                (http::StatusCode::INTERNAL_SERVER_ERROR, "broken")
            }),
        )
        .route(
            "/busy",
            get(move || async move {
                c2();
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    [(http::header::RETRY_AFTER, "0")],
                    "busy",
                )
            }),
        )
        .route(
            "/no_upstream",
            get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream") }),
        )
        .route(
            "/slow",
            post({
                let c = c3.clone();
                move || async move {
                    c();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    "done"
                }
            })
            .get(move || async move {
                c3();
                tokio::time::sleep(Duration::from_secs(3)).await;
                "done"
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/ok",
            get(move || async move {
                c4();
                tokio::time::sleep(Duration::from_millis(200)).await;
                "ok"
            }),
        );
    let addr = serve_axum(app).await;
    HttpServer { addr, hits }
}

/// An observer that counts a breaker's probes: with one probe per half-open
/// state (the presets'), each move to half-open lets exactly one call
/// through.
fn probe_counter() -> (seawall::Observer, Arc<AtomicUsize>) {
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = probes.clone();
    let observer = seawall::Observer::new(move |e: &seawall::observe::Event<'_>| {
        if let seawall::observe::EventKind::StateChanged {
            to: State::HalfOpen,
            ..
        } = e.kind
        {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (observer, probes)
}

/// After the 20 attempts that opened the breaker, only its probes reached
/// the dependency, at least one and at most one per open time (100 ms)
/// since `start`. Returns the probes.
fn only_probes_reached_it(
    hits: &AtomicUsize,
    probes: &AtomicUsize,
    start: tokio::time::Instant,
) -> usize {
    let probed = probes.load(Ordering::SeqCst);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        20 + probed,
        "only probes reached it"
    );
    let open_times = start.elapsed().as_millis() as usize / 100 + 2;
    assert!(
        (1..=open_times).contains(&probed),
        "{probed} probes in {:?}",
        start.elapsed()
    );
    probed
}

fn get_req(addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn http_preset_breaker_opens_on_500_then_refuses_fast() {
    let server = http_server().await;
    // Only the budgets are set: every other setting is the preset's default
    // (an observer counts the breaker's probes).
    let (observer, probes) = probe_counter();
    let stack = http_preset().observer(observer).build().unwrap();
    let breaker = stack.breaker_handle();
    let client: HttpClient<Hyper> = stack.layer(hyper());

    let mut calls_until_open = 0;
    for _ in 0..150 {
        if breaker.state() == State::Open {
            break;
        }
        calls_until_open += 1;
        let res = client.clone().oneshot(get_req(server.addr, "/fail")).await;
        match res {
            Ok(res) => assert_eq!(res.status(), 500),
            Err(e) => assert_eq!(rejection_of(&e).unwrap().kind(), RejectionKind::CircuitOpen),
        }
    }
    assert_eq!(
        breaker.state(),
        State::Open,
        "the breaker opens on HTTP 500"
    );
    // The stack's breaker judges its window from 20 calls: 20 failures
    // of 20 open it, during the 7th call (whose last retry may come after
    // the 100 ms open time: then it is a probe).
    let reached = server.hits.load(Ordering::SeqCst);
    assert_eq!(
        reached,
        20 + probes.load(Ordering::SeqCst),
        "attempts that reached the dependency: 20, and probes"
    );
    assert!(
        calls_until_open < 20,
        "retries are attempts too: {calls_until_open} calls"
    );

    // While the dependency stays down, only probes reach it, one per open
    // time (100 ms); every other call is refused at once with the open
    // time's remainder, stretched by up to half.
    let start = tokio::time::Instant::now();
    let (mut refused, mut passed_on, mut latest) = (0, 0, 0);
    for i in 0..300 {
        if i == 150 {
            // Past the open time: the next call is a probe.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        match client.clone().oneshot(get_req(server.addr, "/fail")).await {
            Err(err) => {
                let view = rejection_of(&err).unwrap();
                assert_eq!(view.kind(), RejectionKind::CircuitOpen);
                let wait = view.retry_after().expect("when to come back");
                // The open time's remainder, stretched by up to half; or,
                // once it is over with fewer than 5 calls refused since the
                // breaker opened (a loop slowed by a busy machine), when
                // the probe goes at the latest: 2 s after it opened.
                if wait > Duration::from_millis(150) {
                    assert!(wait <= Duration::from_secs(3), "{wait:?}");
                    latest += 1;
                }
                refused += 1;
            }
            // A probe's own answer, after its retries were probes too.
            Ok(res) => {
                assert_eq!(res.status(), 500);
                passed_on += 1;
            }
        }
    }
    let probed = only_probes_reached_it(&server.hits, &probes, start);
    assert!(
        refused >= 300 - probed,
        "{refused} refused, {passed_on} passed on"
    );
    // At most the 4 refusals before the 5th lets a probe go, per opening.
    assert!(latest <= 4 * (probed + 1), "{latest} told the latest probe");
    println!(
        "http preset vs a dependency answering 500: {calls_until_open} calls, {reached} attempts \
         reached it before the breaker opened; then {refused} of 300 calls refused without \
         reaching it, {probed} probes in {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn http_preset_never_retries_a_timed_out_post() {
    let server = http_server().await;
    // A client of its own for each request: a timeout makes the next ones
    // of the same client less likely to be retried (timeouts common).
    let client = || {
        ClientStack::http("dep")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(200))
            .build()
            .unwrap()
            .layer(hyper())
    };
    let post = http::Request::post(format!("http://{}/slow", server.addr))
        .body(Full::new(Bytes::from_static(b"{\"amount\":5}")))
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = client().oneshot(post).await.unwrap_err();
    assert_eq!(
        rejection_of(&err).unwrap().kind(),
        RejectionKind::AttemptTimeout
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "the POST ran once");
    // Not cut at its 200 ms (no retry could follow): it had the request's
    // 2 s to answer.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );

    // The same with an Idempotency-Key is retried, as is a GET.
    let keyed = http::Request::post(format!("http://{}/slow", server.addr))
        .header("idempotency-key", "order-7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let _ = client().oneshot(keyed).await.unwrap_err();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1 + 3);
    let _ = client()
        .oneshot(get_req(server.addr, "/slow"))
        .await
        .unwrap_err();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1 + 3 + 3);
}

/// A failed answer gives the preset's bulkhead its permit back at its head
/// (a successful one holds it to its body's end), and the retry lets the
/// answer go before it makes the next attempt: a bulkhead of one has the
/// permit for the retry.
#[tokio::test]
async fn http_preset_retry_lets_the_failed_answer_go_before_the_next_attempt() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/flaky",
        get(move || {
            let n = h.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "try again")
                } else {
                    (http::StatusCode::OK, "ok")
                }
            }
        }),
    );
    let addr = serve_axum(app).await;
    // A failed answer's unread body holds no permit: its head said it is
    // done.
    {
        let one = http_preset().retry(|r| r.max_attempts(1)).build().unwrap();
        let permits = one.bulkhead_handle();
        let res = one
            .layer(hyper())
            .oneshot(get_req(addr, "/flaky"))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(permits.available_permits(), permits.max_concurrent());
        hits.store(0, Ordering::SeqCst);
    }
    // One permit, no queue, two attempts: the retry gets the permit or the
    // caller gets this process's refusal instead of the dependency's answer.
    let stack = http_preset()
        .bulkhead(|b| b.max_concurrent(1).max_queue(0))
        .retry(|r| r.max_attempts(2))
        .build()
        .unwrap();
    let bulkhead = stack.bulkhead_handle();
    let client = stack.layer(hyper());
    let res = client.oneshot(get_req(addr, "/flaky")).await.unwrap();
    assert_eq!(res.status(), 200, "the retry was refused by the bulkhead");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    assert_eq!(bulkhead.available_permits(), 1);
}

/// (19 answers: under the 20 that a run of busy answers needs to open
/// the breaker, as a dependency that answers nothing else does.)
#[tokio::test]
async fn http_preset_busy_answers_are_not_counted_by_the_breaker() {
    let server = http_server().await;
    let stack = http_preset()
        .breaker(|b| b.consecutive_failures(1))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    for _ in 0..19 {
        let res = client
            .clone()
            .oneshot(get_req(server.addr, "/busy"))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0, "a 503 is not counted");
    assert!(server.hits.load(Ordering::SeqCst) >= 19);
}

/// One route of the dependency broken, the other healthy: the preset's
/// breaker does not take the healthy route down with the broken one. The
/// first 18 requests to the broken route fail three attempts each, and
/// their 36 retries, none saving its request, make retries of failures
/// futile: the next 7 are sent once, but one retried as a probe (25 + 37
/// failures in 87 calls; three attempts in four failed while every failure
/// was retried). A breaker opening at half its calls failing opened here
/// (as the stack's did before its threshold was 80 %), and refused the
/// healthy route's requests too.
#[tokio::test]
async fn one_failing_route_does_not_open_the_preset_breaker() {
    let server = http_server().await;
    let stack = http_preset().build().unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let mut fast_ok = 0;
    for _ in 0..25 {
        let res = client
            .clone()
            .oneshot(get_req(server.addr, "/fast"))
            .await
            .unwrap();
        if res.status() == 200 {
            fast_ok += 1;
        }
        res.into_body().collect().await.unwrap();
        let res = client
            .clone()
            .oneshot(get_req(server.addr, "/fail"))
            .await
            .unwrap();
        assert_eq!(res.status(), 500, "the dependency's own answer");
        res.into_body().collect().await.unwrap();
        assert_eq!(breaker.state(), State::Closed);
    }
    assert_eq!(fast_ok, 25, "the healthy route is served");
    let m = breaker.metrics();
    assert_eq!(
        (m.calls, m.failures),
        (87, 62),
        "retries of the broken route's failures stop after 36"
    );
}

/// A dependency that answers slowly but within the attempt timeout (850 ms
/// of 1 s) is answered, and the preset's breaker stays closed: it counts no
/// call as slow by default. It took calls over 80 % of the attempt timeout
/// for slow, and opened once its window held 20 of them.
#[tokio::test]
async fn a_slow_answer_within_the_attempt_timeout_does_not_open_the_preset_breaker() {
    let app = Router::new().route(
        "/slow_ok",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(850)).await;
            "ok"
        }),
    );
    let addr = serve_axum(app).await;
    let stack = ClientStack::http("dep")
        .total_budget(Duration::from_secs(3))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let calls = (0..30).map(|_| {
        let client = client.clone();
        async move {
            let res = client.oneshot(get_req(addr, "/slow_ok")).await.unwrap();
            let status = res.status().as_u16();
            res.into_body().collect().await.unwrap();
            status
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(statuses, vec![200; 30]);
    assert_eq!(breaker.state(), State::Closed);
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures, m.slow_calls), (30, 0, 0));
}

/// Seawall on both hops, over real HTTP: a leaf in the server preset that
/// answers in 400 ms, called through the client preset (1.5 s budget,
/// 800 ms attempts) by 30 requests whose caller gave them 300 ms, then by 5
/// with the whole budget. The leaf answers each short one 504 10 ms before the
/// deadline it was sent, the request's own: not the dependency's failure.
/// The breaker stays closed, and the five are served (counted as failures,
/// the 504s opened it, and the five got its refusal).
#[tokio::test]
async fn answers_to_callers_short_deadlines_do_not_open_the_preset_breaker() {
    use seawall::deadline::{Deadline, scope};
    let leaf = seawall::stack::ServerStack::http("leaf")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/work",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        )
        .layer(leaf);
    let addr = serve_axum(app).await;
    let stack = ClientStack::http("front.leaf")
        .total_budget(Duration::from_millis(1500))
        .attempt_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let short = (0..30).map(|_| {
        let client = client.clone();
        scope(Deadline::after(Duration::from_millis(300)), async move {
            match client.oneshot(get_req(addr, "/work")).await {
                Ok(res) => res.status().as_u16(),
                Err(e) => match rejection_of(&e).map(|r| r.kind()) {
                    Some(RejectionKind::DeadlineExceeded) => 1,
                    _ => 0,
                },
            }
        })
    });
    let short = futures::future::join_all(short).await;
    // Each ended by its deadline: the leaf's 504, or (on a busy machine)
    // the client's own deadline first.
    assert!(short.iter().all(|&s| s == 504 || s == 1), "{short:?}");
    assert_eq!(breaker.state(), State::Closed, "{:?}", breaker.metrics());
    assert_eq!(breaker.metrics().failures, 0);
    let long = (0..5).map(|_| {
        let client = client.clone();
        async move {
            let res = client.oneshot(get_req(addr, "/work")).await.unwrap();
            res.status().as_u16()
        }
    });
    assert_eq!(futures::future::join_all(long).await, vec![200; 5]);
}

/// A dependency that sheds as nginx's `limit_conn` does: 2 slots, and a
/// bare `503` (no `Retry-After`) at once when both are taken. 24 callers at
/// once keep it far over its capacity: its 503s come in runs of far more
/// than 50, and the breaker, which counted them as failures, opened on
/// them (in an outside trial at 4 to 10 times a dependency's capacity it
/// then opened and closed 8 times a second, serving 11 % of what the
/// dependency could). Busy is not broken: it stays closed, and the
/// dependency serves what it can.
#[tokio::test]
async fn http_preset_breaker_stays_closed_on_a_shedders_bare_503s() {
    use axum::response::IntoResponse;
    let slots = Arc::new(tokio::sync::Semaphore::new(2));
    let served = Arc::new(AtomicUsize::new(0));
    let (s, n) = (slots.clone(), served.clone());
    let app = Router::new().route(
        "/work",
        get(move || {
            let (s, n) = (s.clone(), n.clone());
            async move {
                let Ok(_slot) = s.try_acquire() else {
                    return http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
                n.fetch_add(1, Ordering::SeqCst);
                "done".into_response()
            }
        }),
    );
    let addr = serve_axum(app).await;
    let rec = seawall::observe::Recorder::new();
    let stack = http_preset().observer(rec.clone()).build().unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let callers = (0..24).map(|_| {
        let client = client.clone();
        async move {
            let mut answers = Vec::new();
            for _ in 0..10 {
                let res = client.clone().oneshot(get_req(addr, "/work")).await;
                answers.push(res.map(|r| r.status().as_u16()).map_err(|e| e.to_string()));
            }
            answers
        }
    });
    let answers: Vec<_> = futures::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let opened = opens(&rec);
    assert_eq!(opened, 0, "{:?}", breaker.metrics());
    assert!(
        answers.iter().all(|a| matches!(a, Ok(200 | 503))),
        "{answers:?}"
    );
    assert_eq!(breaker.metrics().failures, 0);
    assert!(served.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn http_preset_local_bulkhead_refusals_never_open_the_breaker() {
    let server = http_server().await;
    let stack = for_a_local_surge(http_preset()).build().unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let calls = (0..20).map(|_| client.clone().oneshot(get_req(server.addr, "/ok")));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .err()
                .and_then(rejection_of)
                .is_some_and(|v| v.kind() == RejectionKind::BulkheadFull && v.is_local())
        })
        .count();
    assert_eq!((ok, full), (2, 18));
    // The two answers are judged when their bodies end.
    assert_eq!(breaker.metrics().calls, 0, "bodies not read yet");
    for res in results.into_iter().flatten() {
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 2, "only the calls that reached it");
    assert_eq!(breaker.metrics().failures, 0);
}

// ---------------------------------------------------------------- gRPC

/// How the raw gRPC server answers `SayHello`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    /// `INTERNAL`, trailers-only.
    TrailersOnly,
    /// `INTERNAL` sent as headers, then trailers with no message.
    HeadersThenTrailers,
    /// `UNAVAILABLE` with `grpc-retry-pushback-ms: 0`: busy.
    Busy,
    /// `UNAVAILABLE` without pushback, trailers-only: how a gRPC server
    /// that is not seawall sheds (Envoy's overflow, a hand-written cap).
    Unavailable,
    /// `INTERNAL` sent as headers, an empty data frame, then trailers.
    HeadersEmptyDataThenTrailers,
    /// A reply that starts at once (headers) and whose message comes 800 ms
    /// later, then `OK` trailers: a slow first message.
    SlowFirstMessage,
}

/// A gRPC service `demo.Greeter` whose every call `F` answers (tonic
/// takes it as it takes a generated server: named, cloned per
/// connection).
#[derive(Clone)]
struct GreeterFn<F>(F);

impl<F> NamedService for GreeterFn<F> {
    const NAME: &'static str = "demo.Greeter";
}

impl<F, Fut> tower::Service<http::Request<Body>> for GreeterFn<F>
where
    F: FnMut(http::Request<Body>) -> Fut,
    Fut: Future<Output = http::Response<Body>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let answer = (self.0)(req);
        Box::pin(async move { Ok(answer.await) })
    }
}

/// The answer of a gRPC server that answers every call the same way.
async fn raw_answer(answer: Answer) -> http::Response<Body> {
    match answer {
        Answer::TrailersOnly => Status::internal("down").into_http(),
        Answer::Unavailable => Status::unavailable("overloaded").into_http(),
        Answer::Busy => {
            let mut s = Status::unavailable("busy");
            s.metadata_mut()
                .insert("grpc-retry-pushback-ms", "0".parse().unwrap());
            s.into_http()
        }
        Answer::HeadersThenTrailers | Answer::HeadersEmptyDataThenTrailers => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "13".parse().unwrap());
            trailers.insert("grpc-message", "down".parse().unwrap());
            // Metadata with two values: both reach the client.
            trailers.append("x-failed-shard", "3".parse().unwrap());
            trailers.append("x-failed-shard", "7".parse().unwrap());
            let mut frames = Vec::new();
            if answer == Answer::HeadersEmptyDataThenTrailers {
                frames.push(Ok::<_, Status>(http_body::Frame::data(Bytes::new())));
            }
            frames.push(Ok(http_body::Frame::trailers(trailers)));
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("x-handler-metadata", "set before failing")
                .body(Body::new(StreamBody::new(futures::stream::iter(frames))))
                .unwrap()
        }
        Answer::SlowFirstMessage => {
            use prost::Message as _;
            let reply = greeter::HelloReply {
                message: "late but fine".into(),
                ..Default::default()
            }
            .encode_to_vec();
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
            framed.extend_from_slice(&reply);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok::<_, Status>(http_body::Frame::data(Bytes::from(framed)))
            })
            .chain(futures::stream::iter([Ok(http_body::Frame::trailers(
                trailers,
            ))]));
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::new(StreamBody::new(frames)))
                .unwrap()
        }
    }
}

/// A server answering every call with `answer`, and its count of calls.
async fn serve_raw(answer: Answer) -> (Channel, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let channel = serve_grpc(GreeterFn(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        raw_answer(answer)
    }))
    .await;
    (channel, hits)
}

async fn serve_grpc<S>(svc: S) -> Channel
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(svc);
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A tonic server on loopback with the layer `$stack` around `$svc`; its
/// address (a macro: tonic's bounds on a layered server are long).
macro_rules! serve_addr_in {
    ($stack:expr, $svc:expr) => {{
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .layer($stack)
            .add_service($svc);
        tokio::spawn(
            router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr
    }};
}

/// The same server, and a channel to it.
macro_rules! serve_grpc_in {
    ($stack:expr, $svc:expr) => {{
        let addr = serve_addr_in!($stack, $svc);
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }};
}

/// How many times the breaker that `rec` hears opened.
fn opens(rec: &seawall::observe::Recorder) -> usize {
    rec.count(|e| {
        matches!(
            e.kind,
            seawall::EventKind::StateChanged {
                to: State::Open,
                ..
            }
        )
    })
}

/// The status's `grpc-retry-pushback-ms`.
fn pushback_ms(status: &Status) -> u64 {
    let value = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback");
    value.to_str().unwrap().parse().unwrap()
}

fn hello() -> tonic::Request<HelloRequest> {
    tonic::Request::new(HelloRequest {
        name: "preset".into(),
        work_ms: 0,
    })
}

/// A tonic channel keeps the `grpc-timeout` the preset sends it, and ends
/// a hung call a moment before the attempt's own timer would, as the
/// attempt's `AttemptTimeout`: each is reported by the attempt layer, as
/// its timer's would be (an outside trial over tonic counted 1 of 52).
#[tokio::test]
async fn grpc_preset_reports_the_attempt_timeouts_its_channel_keeps() {
    let channel = serve_grpc(GreeterFn(|_| std::future::pending())).await;
    let rec = seawall::observe::Recorder::new();
    let stack = ClientStack::grpc("dep")
        .total_budget(Duration::from_millis(300))
        .observer(rec.clone())
        .build()
        .unwrap();
    let client: GrpcClient<Channel> = stack.layer(channel);
    for _ in 0..4 {
        let status = call_say_hello(client.clone(), hello()).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    let timed_out = rec.count(|e| {
        e.layer == LayerKind::AttemptTimeout
            && matches!(
                e.kind,
                seawall::observe::EventKind::Rejected {
                    reason: RejectionKind::AttemptTimeout | RejectionKind::DeadlineExceeded,
                    ..
                }
            )
    });
    assert_eq!(timed_out, 4);
}

#[tokio::test]
async fn grpc_preset_breaker_opens_on_internal_then_refuses_fast() {
    let (channel, hits) = serve_raw(Answer::TrailersOnly).await;
    let (observer, probes) = probe_counter();
    let stack = grpc_preset(Duration::from_millis(500))
        .observer(observer)
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client: GrpcClient<Channel> = stack.layer(channel);

    let mut calls_until_open = 0;
    // Which calls failed with the dependency's own status, and which with
    // this client's refusal (`rejection` finds it in the status's source).
    let mut own = Vec::new();
    for _ in 0..150 {
        if breaker.state() == State::Open {
            break;
        }
        calls_until_open += 1;
        let status = call_say_hello(client.clone(), hello()).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        own.push(seawall::error::rejection(&status).map(|r| (r.kind(), r.name().to_owned())));
    }
    // Twenty calls, one attempt each (INTERNAL is not retried), end with
    // the dependency's status; the twentieth opens the breaker.
    let reached = hits.load(Ordering::SeqCst);
    assert_eq!(own, vec![None; 20], "the dependency's own statuses");
    assert_eq!(reached, 20);
    assert_eq!(
        breaker.state(),
        State::Open,
        "the breaker opens on INTERNAL"
    );

    // While the dependency stays down, only probes reach it; every other
    // call is refused at once, named, with the open time's remainder as
    // its pushback.
    let start = tokio::time::Instant::now();
    let mut refused = 0;
    for i in 0..300 {
        if i == 150 {
            // Past the open time: the next call is a probe.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let status = call_say_hello(client.clone(), hello()).await.unwrap_err();
        let Some(refusal) = seawall::error::rejection(&status) else {
            // A probe's own answer.
            assert_eq!(status.code(), Code::Internal);
            continue;
        };
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "circuit open");
        assert_eq!(
            (refusal.kind(), refusal.name()),
            (RejectionKind::CircuitOpen, "dep.breaker")
        );
        let retry_after = refusal.retry_after().expect("the open time left");
        assert!(retry_after <= Duration::from_millis(150), "{retry_after:?}");
        assert_eq!(
            pushback_ms(&status),
            u64::try_from(retry_after.as_millis()).unwrap()
                + u64::from(retry_after.subsec_nanos() % 1_000_000 != 0)
        );
        refused += 1;
        if refused == 1 {
            // What an axum handler answers its own caller (the README's
            // gRPC handler): 503 with Retry-After.
            let res = readme_grpc_handler_answer(Err(status));
            assert_eq!(res.status(), 503);
            assert_eq!(res.headers()["retry-after"], "1");
        }
    }
    let probed = only_probes_reached_it(&hits, &probes, start);
    assert!(refused >= 300 - probed, "{refused} refused");
    println!(
        "grpc preset vs a dependency answering INTERNAL: {calls_until_open} calls, {reached} \
         attempts reached it before the breaker opened; then {refused} of 300 calls refused \
         without reaching it, {probed} probes in {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn grpc_preset_reads_a_failure_sent_as_headers_then_trailers() {
    for answer in [
        Answer::TrailersOnly,
        Answer::HeadersThenTrailers,
        Answer::HeadersEmptyDataThenTrailers,
    ] {
        let (channel, hits) = serve_raw(answer).await;
        let stack = grpc_preset(Duration::from_millis(500))
            .retry(|r| r.policy(GrpcRetry::new().with_code(Code::Internal)))
            .build()
            .unwrap();
        let breaker = stack.breaker_handle();
        let status = call_say_hello(stack.layer(channel), hello())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{answer:?}");
        assert_eq!(status.message(), "down", "{answer:?}");
        if answer != Answer::TrailersOnly {
            let shards: Vec<_> = status
                .metadata()
                .get_all("x-failed-shard")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(shards, ["3", "7"], "{answer:?}");
        }
        // Retried (INTERNAL, opted in: 3 attempts) and counted by the
        // breaker.
        assert_eq!(hits.load(Ordering::SeqCst), 3, "{answer:?}");
        let m = breaker.metrics();
        assert_eq!((m.calls, m.failures), (3, 3), "{answer:?}");
    }
}

/// A server's `UNAVAILABLE`, with pushback (a seawall server's refusal) or
/// without (how a gRPC server that is not seawall sheds: Envoy's overflow,
/// a hand-written cap), is busy: retried, and not counted. In an outside
/// trial of a dependency answering it without pushback at 4 to 10 times its
/// capacity, the preset's breaker, which counted it, opened about 7 times a
/// second and 28 % of the dependency's capacity was served, where a plain
/// tonic client got all of it. (Six calls, each answered busy three times:
/// 18 answers, under the 20 a run of busy answers needs to open the
/// breaker, as a dependency that answers nothing else does: see
/// `grpc_preset_breaker_opens_on_a_dependency_that_answers_only_unavailable`.)
#[tokio::test]
async fn grpc_preset_busy_answers_are_not_counted_by_the_breaker() {
    for answer in [Answer::Busy, Answer::Unavailable] {
        let (channel, hits) = serve_raw(answer).await;
        let stack = grpc_preset(Duration::from_millis(500))
            .breaker(|b| b.consecutive_failures(1))
            .build()
            .unwrap();
        let breaker = stack.breaker_handle();
        let client = stack.layer(channel);
        for _ in 0..6 {
            let status = call_say_hello(client.clone(), hello()).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable);
            assert!(seawall::error::rejection(&status).is_none(), "{status:?}");
        }
        assert_eq!(breaker.state(), State::Closed, "{answer:?}");
        assert_eq!(
            breaker.metrics().calls,
            0,
            "{answer:?}: busy is not counted"
        );
        assert!(hits.load(Ordering::SeqCst) > 6, "{answer:?}: retried");
    }
}

/// A server that is not there (connection refused) is no server's answer:
/// its `UNAVAILABLE` counts as a failure, and the breaker opens, where a
/// server's own `UNAVAILABLE` is busy.
#[tokio::test]
async fn grpc_preset_breaker_opens_when_no_server_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let stack = grpc_preset(Duration::from_millis(500)).build().unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(channel);
    let mut refused_by_breaker = 0;
    for _ in 0..30 {
        let status = call_say_hello(client.clone(), hello()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        if seawall::error::rejection(&status).is_some() {
            refused_by_breaker += 1;
        }
    }
    assert!(breaker.metrics().failures >= 20, "{:?}", breaker.metrics());
    assert!(refused_by_breaker > 0, "the breaker opened");
}

#[tokio::test]
async fn grpc_preset_tonic_client_sees_deadline_exceeded() {
    let entered = Arc::new(AtomicUsize::new(0));
    let e = entered.clone();
    let channel = serve_grpc(GreeterServer::new(move |_req| {
        e.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(greeter::HelloReply::default())
        }
    }))
    .await;
    let stack = ClientStack::grpc("dep")
        .total_budget(Duration::from_millis(600))
        .attempt_timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let status = call_say_hello(stack.layer(channel), hello())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // DEADLINE_EXCEEDED is not retried unless opted in: it may have run.
    assert_eq!(entered.load(Ordering::SeqCst), 1);
    assert_eq!(
        breaker.metrics().failures,
        1,
        "a timed-out attempt is a failure"
    );
}

/// The same on gRPC: a greeter in the server preset that answers in 400
/// ms, called through the gRPC client preset by 30 calls whose caller gave
/// them 300 ms, then by 5 with the whole budget. The server answers each
/// short one `DEADLINE_EXCEEDED` 10 ms before the `grpc-timeout` it was
/// sent, the caller's own deadline: the breaker stays closed, and the five
/// are served.
/// The README's axum handler over the gRPC client preset: the HTTP answer
/// for the call's outcome.
fn readme_grpc_handler_answer(
    result: Result<tonic::Response<greeter::HelloReply>, Status>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match result {
        // --- README gRPC handler begins ---
        Ok(reply) => reply.into_inner().message.into_response(),
        // This process refused or gave up (breaker open, budget spent, out of
        // time): 503 or 429 with Retry-After, or 504. The dependency was busy
        // (a server's UNAVAILABLE, with pushback or not, or RESOURCE_EXHAUSTED
        // with pushback): 503 with its wait, if any, which the caller's breaker
        // does not count (RESOURCE_EXHAUSTED without one: 429). It ran out of the
        // time it was sent (DEADLINE_EXCEEDED, or CANCELLED from a plain tonic
        // server): 504. It failed or could not be reached: 502.
        Err(status) => seawall::grpc::response_for_status(&status),
        // --- README gRPC handler ends ---
    }
}

#[tokio::test]
async fn grpc_answers_to_callers_short_deadlines_do_not_open_the_preset_breaker() {
    use seawall::deadline::{Deadline, scope};
    let leaf = seawall::stack::ServerStack::grpc("leaf")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let greeter = GreeterServer::new(|_req| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok(greeter::HelloReply::default())
    });
    let channel = serve_grpc_in!(leaf, greeter);
    let stack = ClientStack::grpc("front.leaf")
        .total_budget(Duration::from_millis(1500))
        .attempt_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(channel);
    let short = (0..30).map(|_| {
        let client = client.clone();
        scope(Deadline::after(Duration::from_millis(300)), async move {
            call_say_hello(client, hello()).await.unwrap_err().code()
        })
    });
    let short = futures::future::join_all(short).await;
    assert_eq!(short, vec![Code::DeadlineExceeded; 30]);
    // What the README's axum handler answers its own caller for each: 504
    // (its caller's breaker does not count that), not 502.
    for code in &short {
        let answer = readme_grpc_handler_answer(Err(Status::new(*code, "deadline exceeded")));
        assert_eq!(answer.status(), 504);
    }
    assert_eq!(breaker.state(), State::Closed, "{:?}", breaker.metrics());
    assert_eq!(breaker.metrics().failures, 0);
    let long = (0..5).map(|_| call_say_hello(client.clone(), hello()));
    let long = futures::future::join_all(long).await;
    assert!(long.iter().all(|r| r.is_ok()), "{long:?}");
}

#[tokio::test]
async fn grpc_preset_local_bulkhead_refusals_never_open_the_breaker() {
    let channel = serve_grpc(GreeterServer::new(|_req| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(greeter::HelloReply::default())
    }))
    .await;
    let stack = for_a_local_surge(grpc_preset(Duration::from_secs(1)))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(channel);
    let calls = (0..20).map(|_| call_say_hello(client.clone(), hello()));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok, 2);
    assert_eq!(full.len(), 18);
    for status in full {
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "bulkhead full");
        let ms = pushback_ms(status);
        assert!((100..=150).contains(&ms), "{ms} (rounded up to whole ms)");
        let own = seawall::error::rejection(status).expect("this client's own refusal");
        assert_eq!(own.kind(), RejectionKind::BulkheadFull);
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        (breaker.metrics().calls, breaker.metrics().failures),
        (2, 0)
    );
}

#[tokio::test]
async fn http_preset_body_is_read_by_the_client() {
    // The preset hands back the dependency's response untouched.
    let server = http_server().await;
    let stack = http_preset().build().unwrap();
    let res = stack
        .layer(hyper())
        .oneshot(get_req(server.addr, "/ok"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

// ------------------------------------------------------- server presets

fn limit_of_one() -> seawall::shed::Gradient2 {
    seawall::shed::Gradient2::builder()
        .initial_limit(1)
        .min_limit(1)
        .max_limit(1)
        .build()
        .unwrap()
}

/// A route `/hold` answering once `release` gives it a permit, in the HTTP
/// server preset with a limit of one call (its adaptive limit set up by
/// `limit`): the second request while one is held is shed.
fn held_until_released(
    release: &Arc<tokio::sync::Semaphore>,
    limit: impl FnOnce(
        seawall::shed::AdaptiveLimitLayerBuilder,
    ) -> seawall::shed::AdaptiveLimitLayerBuilder,
) -> Router {
    hold_route(release).layer(
        seawall::stack::ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .adaptive_limit(|l| limit(l.algorithm(limit_of_one())))
            .build()
            .unwrap(),
    )
}

/// A route `/hold` (`GET` and `POST`) answering once `release` gives it a
/// permit.
fn hold_route(release: &Arc<tokio::sync::Semaphore>) -> Router {
    let r = release.clone();
    let held = move || {
        let r = r.clone();
        async move {
            let _permit = r.acquire().await.unwrap();
            "released"
        }
    };
    Router::new().route("/hold", get(held.clone()).post(held))
}

#[tokio::test]
async fn http_server_preset_sheds_with_a_retry_after() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let addr = serve_axum(held_until_released(&release, |l| l)).await;
    let client = hyper();
    let held = tokio::spawn(client.clone().oneshot(get_req(addr, "/hold")));
    // Wait until the first request holds the one slot.
    let mut shed = None;
    for _ in 0..200 {
        let res = client
            .clone()
            .oneshot(get_req(addr, "/hold"))
            .await
            .unwrap();
        if res.status() == 503 {
            shed = Some(res);
            break;
        }
        tokio::task::yield_now().await;
    }
    let shed = shed.expect("the second request is shed while the first holds the slot");
    assert_eq!(shed.headers()["retry-after"], "1");
    let body = shed.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"overloaded");
    release.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
}

/// A seawall HTTP server that sheds answers `retry-after-ms` beside
/// `Retry-After`; the HTTP client preset waits that (about 100 to 150 ms),
/// not the header's whole second, so a caller with 800 ms gets its answer
/// from the retry. It gave up at once on `Retry-After: 1`.
#[tokio::test]
async fn http_client_preset_retries_a_shed_request_after_its_milliseconds() {
    let stack = seawall::stack::ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .adaptive_limit(|l| l.algorithm(limit_of_one()).burst(Duration::ZERO))
        .build()
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    let app = Router::new()
        .route(
            "/work",
            get(move || {
                let s = s.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    s.fetch_add(1, Ordering::SeqCst);
                    "done"
                }
            }),
        )
        .layer(stack);
    let addr = serve_axum(app).await;
    let rec = seawall::observe::Recorder::new();
    let client = ClientStack::http("api")
        .total_budget(Duration::from_millis(800))
        .attempt_timeout(Duration::from_millis(500))
        .observer(rec.clone())
        .build()
        .unwrap()
        .layer(hyper());
    let (a, b) = tokio::join!(
        client.clone().oneshot(get_req(addr, "/work")),
        client.clone().oneshot(get_req(addr, "/work"))
    );
    assert_eq!(
        (a.unwrap().status(), b.unwrap().status()),
        (http::StatusCode::OK, http::StatusCode::OK)
    );
    assert_eq!(served.load(Ordering::SeqCst), 2);
    let waits: Vec<Duration> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            seawall::EventKind::RetryScheduled { delay, .. } => Some(delay),
            _ => None,
        })
        .collect();
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!(
        waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(151),
        "{waits:?}"
    );
}

/// "Busy" passes through a chain of both protocols, each hop in its preset:
/// an HTTP leaf that runs one request at a time sheds the next with a wait;
/// a tonic handler calling it passes that on with `status_for_response`
/// (`RESOURCE_EXHAUSTED` with pushback), and an axum front calling the tonic
/// service answers its caller with `response_for_status` (the README's
/// handler): `503` with `Retry-After` and the leaf's milliseconds. No
/// breaker on the way counts it, and the front's gRPC preset, with its
/// default retries, runs the middle tier's handler once (it was
/// `UNAVAILABLE`, which that preset retries on every method: a handler
/// that had done its work would do it again). With the handlers before
/// them, the front answered `502` (an outside trial).
#[tokio::test]
async fn a_busy_leaf_stays_busy_through_a_grpc_middle_tier_to_the_http_front() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let leaf = serve_axum(held_until_released(&release, |l| l.burst(Duration::ZERO))).await;
    let to_leaf = ClientStack::http("leaf")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(1))
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let leaf_breaker = to_leaf.breaker_handle();
    let to_leaf = to_leaf.layer(hyper());
    let middle_runs = Arc::new(AtomicUsize::new(0));
    let runs = middle_runs.clone();
    let middle = GreeterServer::new(move |_req| {
        let to_leaf = to_leaf.clone();
        runs.fetch_add(1, Ordering::SeqCst);
        async move {
            let (inventory, req) = (to_leaf, get_req(leaf, "/hold"));
            // --- README tonic handler begins ---
            let res = inventory
                .oneshot(req)
                .await
                .map_err(|err| seawall::grpc::status_for(&err))?;
            if let Some(status) = seawall::grpc::status_for_response(&res) {
                return Err(status);
            }
            // --- README tonic handler ends ---
            Ok(greeter::HelloReply::default())
        }
    });
    let middle_stack = seawall::stack::ServerStack::grpc("middle")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let channel = serve_grpc_in!(middle_stack, middle);
    let to_middle = ClientStack::grpc("middle")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let middle_breaker = to_middle.breaker_handle();
    let to_middle = to_middle.layer(channel);
    // The leaf's one slot, held.
    let held = tokio::spawn(hyper().oneshot(get_req(leaf, "/hold")));
    let mut answer = None;
    for _ in 0..200 {
        middle_runs.store(0, Ordering::SeqCst);
        let result = call_say_hello(to_middle.clone(), hello()).await;
        let res = readme_grpc_handler_answer(result.map(tonic::Response::new));
        if res.status() != 200 {
            answer = Some(res);
            break;
        }
        tokio::task::yield_now().await;
    }
    let answer = answer.expect("the leaf sheds while its slot is held");
    assert_eq!(
        middle_runs.load(Ordering::SeqCst),
        1,
        "the middle tier's handler ran again"
    );
    assert_eq!(answer.status(), 503, "{answer:?}");
    assert_eq!(answer.headers()["retry-after"], "1");
    let ms: u64 = answer.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (100..=150).contains(&ms),
        "the leaf's jittered hint: {ms} ms"
    );
    assert_eq!(leaf_breaker.metrics().calls, 0, "busy is not counted");
    assert_eq!(middle_breaker.metrics().calls, 0, "busy is not counted");
    release.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn server_shedding_never_opens_the_client_breaker() {
    // A seawall gRPC server that runs one call at a time and sheds the rest
    // (no queue for a herd, which would serve them one after the other),
    // called by the gRPC client preset with a breaker that opens on a single
    // counted failure.
    let stack = seawall::stack::ServerStack::grpc("greeter")
        .total_budget(Duration::from_secs(5))
        .adaptive_limit(|l| l.algorithm(limit_of_one()).max_queue(0))
        .build()
        .unwrap();
    let greeter = GreeterServer::new(|_req| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(greeter::HelloReply::default())
    });
    let channel = serve_grpc_in!(stack, greeter);

    // What the server answers to a plain tonic client while it is busy.
    let plain =
        futures::future::join_all((0..5).map(|_| call_say_hello(channel.clone(), hello()))).await;
    let shed: Vec<_> = plain.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!shed.is_empty(), "one at a time: the others are shed");
    for status in &shed {
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "overloaded");
        assert!(
            status.metadata().get("grpc-retry-pushback-ms").is_some(),
            "{status:?}"
        );
    }

    let client_stack = ClientStack::grpc("greeter")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(1000))
        .breaker(|b| b.consecutive_failures(1))
        .build()
        .unwrap();
    let breaker = client_stack.breaker_handle();
    let client = client_stack.layer(channel);
    let results =
        futures::future::join_all((0..8).map(|_| call_say_hello(client.clone(), hello()))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(ok >= 1);
    assert_eq!(breaker.state(), State::Closed, "busy is not broken");
    let m = breaker.metrics();
    assert_eq!(m.failures, 0);
    assert_eq!(
        m.calls as usize, ok,
        "only the calls that were served are counted"
    );
}

#[tokio::test]
async fn server_preset_answers_before_the_client_preset_times_out() {
    // Both presets with defaults: the server takes its 10 ms margin off the
    // time the client says it has, so a slow handler ends as the server's
    // 504, every time, not as a race between the two timers.
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let server_stack = seawall::stack::ServerStack::http("api")
        .total_budget(Duration::from_secs(10))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/slow",
            post(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    "done"
                }
            }),
        )
        .layer(server_stack);
    let addr = serve_axum(app).await;
    let client = ClientStack::http("api")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .layer(hyper());
    for i in 1..=5 {
        let post = http::Request::post(format!("http://{addr}/slow"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = client
            .clone()
            .oneshot(post)
            .await
            .expect("the server's answer, not a timeout");
        assert_eq!(res.status(), 504);
        assert_eq!(hits.load(Ordering::SeqCst), i, "a POST runs once");
    }
}

/// A reply whose head comes at once and whose first message comes after the
/// attempt timeout: the head is handed up (the preset reads the first frame
/// for 20 ms at most), and the body is held to the deadline sent in
/// `grpc-timeout`: the call ends `DEADLINE_EXCEEDED` at the attempt timeout,
/// as a gRPC deadline covers the whole stream. It is not retried (the head
/// had come), and the breaker counts it as a failure when the body is cut
/// (a head that looks like a success is judged again at the body's end).
/// (`DEADLINE_EXCEEDED` opted in: a retry may follow a timed-out attempt,
/// so the attempt timeout cuts it; without, it runs on to the budget.)
#[tokio::test(start_paused = true)]
async fn grpc_preset_holds_the_body_to_the_attempts_deadline() {
    let (channel, hits) = serve_raw(Answer::SlowFirstMessage).await;
    let stack = grpc_preset(Duration::from_millis(500))
        .retry(|r| r.policy(GrpcRetry::new().with_code(tonic::Code::DeadlineExceeded)))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let start = tokio::time::Instant::now();
    let status = call_say_hello(stack.layer(channel), hello())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("dep.propagate"), "{status:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        (breaker.metrics().calls, breaker.metrics().failures),
        (1, 1)
    );
}

/// An HTTP response whose head comes at once and whose body's second chunk
/// comes after the attempt's deadline: reading the body fails with
/// `DeadlineExceeded` at that deadline (500 ms after the call began, not
/// 2 s); a body that ends in time is untouched; a response cut this way is
/// not retried (the head came) and is counted by the breaker as a failure
/// when its body is cut.
#[tokio::test(start_paused = true)]
async fn http_preset_holds_the_body_to_the_attempts_deadline() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { chunks(Duration::from_secs(2)) }
            }),
        )
        .route(
            "/fast",
            get(|| async { chunks(Duration::from_millis(100)) }),
        );
    let addr = serve_axum(app).await;
    let stack = ClientStack::http("api")
        .total_budget(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    let start = tokio::time::Instant::now();
    let res = client.clone().oneshot(get("/slow")).await.unwrap();
    assert_eq!(res.status(), 200);
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    let rejection = rejection_of(&err).expect("a seawall rejection");
    assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
    assert_eq!(rejection.name(), "api.propagate");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(
        (breaker.metrics().calls, breaker.metrics().failures),
        (1, 1)
    );

    let res = client.clone().oneshot(get("/fast")).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "head tail");
}

/// The server presets hold their answers to the caller's deadline and to
/// their own budget: an axum answer still streaming when the
/// `x-request-timeout-ms` budget (less the 10 ms hop margin) or the
/// server's `total_budget` runs out is cut off, and the client sees an
/// incomplete body at that moment; a gRPC answer ends with `grpc-status: 4`
/// (`DEADLINE_EXCEEDED`) in its trailers. An answer that ends in time is
/// untouched.
#[tokio::test(start_paused = true)]
async fn server_presets_hold_answers_to_the_callers_deadline() {
    let http_stack = seawall::stack::ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let grpc_stack = seawall::stack::ServerStack::grpc("rpc")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let http_app = Router::new()
        .route("/slow", get(|| async { chunks(Duration::from_secs(2)) }))
        .route(
            "/fast",
            get(|| async { chunks(Duration::from_millis(100)) }),
        )
        .layer(http_stack);
    let grpc_app = Router::new()
        .route(
            "/slow",
            post(|| async {
                http::Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .body(chunks(Duration::from_secs(2)))
                    .unwrap()
            }),
        )
        .layer(grpc_stack);
    let http_addr = serve_axum(http_app).await;
    let grpc_addr = serve_axum(grpc_app).await;
    let client = hyper();
    let budget = |method: http::Method, uri: String| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("x-request-timeout-ms", "500")
            .header("grpc-timeout", "500m")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    let start = tokio::time::Instant::now();
    let res = client
        .request(budget(
            http::Method::GET,
            format!("http://{http_addr}/slow"),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.into_body().collect().await.is_err(), "cut off");
    assert_eq!(start.elapsed(), Duration::from_millis(490));

    let res = client
        .request(budget(
            http::Method::GET,
            format!("http://{http_addr}/fast"),
        ))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "head tail");

    // No header: the server's own budget (5 s) holds the answer, which
    // takes 2 s: untouched. A server with a 1 s budget cuts it at 1 s.
    let short = seawall::stack::ServerStack::http("short")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let short_addr = serve_axum(
        Router::new()
            .route("/slow", get(|| async { chunks(Duration::from_secs(2)) }))
            .layer(short),
    )
    .await;
    let plain = |uri: String| {
        http::Request::get(uri)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let start = tokio::time::Instant::now();
    let res = client
        .request(plain(format!("http://{http_addr}/slow")))
        .await
        .unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "head tail"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let start = tokio::time::Instant::now();
    let res = client
        .request(plain(format!("http://{short_addr}/slow")))
        .await
        .unwrap();
    assert!(res.into_body().collect().await.is_err(), "cut off");
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    // gRPC runs on HTTP/2, where trailers always reach the client.
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let start = tokio::time::Instant::now();
    let res = h2
        .request(budget(
            http::Method::POST,
            format!("http://{grpc_addr}/slow"),
        ))
        .await
        .unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(490));
    let trailers = collected.trailers().expect("trailers").clone();
    assert_eq!(trailers["grpc-status"], "4");
    // The reason only: the server's layer names stay inside.
    assert_eq!(
        trailers["grpc-message"], "deadline exceeded",
        "{trailers:?}"
    );
    assert_eq!(collected.to_bytes(), "head ");
}

/// A keyed rate limit behind the HTTP server preset, with the default
/// `ClientIp` and axum serving connect info: each client has its own
/// bucket (3 admitted, then 429 with `Retry-After`), not one shared by all.
#[tokio::test(start_paused = true)]
async fn keyed_rate_limit_reads_axums_connect_info() {
    let stack = seawall::stack::ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .rate_limit(seawall::rate_limit::Quota::per_minute(3), |b| {
            b.keyed(seawall::rate_limit::ClientIp::new())
        })
        .build()
        .unwrap();
    let limit = stack.rate_limit().clone();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(stack);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let client = hyper();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = http::Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = client.request(req).await.unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().contains_key(http::header::RETRY_AFTER));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        limit.tracked_keys(),
        1,
        "keyed by 127.0.0.1, not the fallback"
    );
}

/// A server whose first request is stuck for 800 ms and every other one
/// answers at once; it records the attempt header of each request.
async fn slow_first_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = move |headers: http::HeaderMap| {
        let s = s.clone();
        async move {
            let attempt = headers
                .get("x-seawall-attempt")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let n = {
                let mut seen = s.lock().unwrap();
                seen.push(attempt);
                seen.len()
            };
            if n == 1 {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            format!("hit {n}")
        }
    };
    let app = Router::new().route("/item", get(handler.clone()).post(handler));
    (serve_axum(app).await, seen)
}

#[tokio::test]
async fn http_preset_with_hedging_answers_from_the_copy_and_never_hedges_a_post() {
    let (addr, seen) = slow_first_server().await;
    let stack = ClientStack::http("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(1))
        .hedge(|h| h.delay(Duration::from_millis(100)))
        .build()
        .unwrap();
    let client: HttpClient<Hyper, seawall::hedge::HedgeLayer<HttpRetry>> = stack.layer(hyper());
    let res = client
        .clone()
        .oneshot(get_req(addr, "/item"))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hit 2", "the copy answered");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![None, Some("2".to_owned())],
        "the copy carries attempt 2 (the first attempt none)"
    );

    // A POST is not idempotent: sent once, answered by the slow first call.
    let (addr, seen) = slow_first_server().await;
    let post = http::Request::post(format!("http://{addr}/item"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = client.clone().oneshot(post).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hit 1");
    assert_eq!(seen.lock().unwrap().len(), 1, "the POST was hedged");
}

/// What each attempt of the HTTP preset carries: its time left as
/// `x-request-timeout-ms` only (a plain HTTP dependency reads no
/// `grpc-timeout`; `grpc_timeout(true)` adds it), and a retry's attempt
/// number; a first attempt carries none, and one copied from an inbound
/// request (a handler that forwards its headers) is taken off.
#[tokio::test(start_paused = true)]
async fn http_preset_sends_one_header_for_the_time_left_and_none_on_a_first_attempt() {
    type Seen = Arc<std::sync::Mutex<Vec<[Option<String>; 3]>>>;
    let backend = |seen: Seen| {
        tower::service_fn(move |req: http::Request<Full<Bytes>>| {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let mut seen = seen.lock().unwrap();
            seen.push(["x-request-timeout-ms", "grpc-timeout", "x-seawall-attempt"].map(header));
            // The first attempt is refused, the retry served.
            let status = if seen.len() == 1 { 503 } else { 200 };
            std::future::ready(
                http::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .map_err(seawall::BoxError::from),
            )
        })
    };
    let request = || {
        http::Request::get("http://dep/item")
            .header("x-seawall-attempt", "5")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let some = |s: &str| Some(s.to_owned());

    // The attempts each header of a request saw, through the preset with
    // `grpc-timeout` left as it is or added.
    let seen_through = |grpc_timeout: Option<bool>| async move {
        let seen = Seen::default();
        let stack = ClientStack::http("dep")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(500))
            .retry(|r| {
                r.backoff(Duration::from_millis(50), Duration::from_secs(1))
                    .jitter(seawall::retry::Jitter::None)
            })
            .propagate_deadline(|p| match grpc_timeout {
                Some(on) => p.grpc_timeout(on),
                None => p,
            })
            .build()
            .unwrap();
        let res = stack
            .layer(backend(seen.clone()))
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        seen.lock().unwrap().clone()
    };
    assert_eq!(
        seen_through(None).await,
        [[some("500"), None, None], [some("500"), None, some("2")]]
    );
    assert_eq!(
        seen_through(Some(true)).await,
        [
            [some("500"), some("500m"), None],
            [some("500"), some("500m"), some("2")]
        ]
    );
}

#[tokio::test]
async fn grpc_preset_hedges_only_the_methods_opted_in() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let server = GreeterServer::new(move |req: tonic::Request<HelloRequest>| {
        let n = h.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            Ok(greeter::HelloReply {
                message: format!("hello {} from call {n}", req.into_inner().name),
                deadline_ms: None,
                budget_ms: None,
                left_ms: None,
            })
        }
    });
    let channel = serve_grpc(server.clone()).await;
    let hedged = ClientStack::grpc("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(1))
        .retry(|r| r.policy(GrpcRetry::new().hedge_method(greeter::SAY_HELLO)))
        .hedge(|h| h.delay(Duration::from_millis(100)))
        .build()
        .unwrap();
    let client = hedged.layer(channel.clone());
    let reply = call_say_hello(client, hello()).await.unwrap();
    assert_eq!(reply.message, "hello preset from call 2");
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Without its opt-in (another method's only: with none, `build`
    // refuses the hedge), the same call is sent once.
    hits.store(0, Ordering::SeqCst);
    let plain = ClientStack::grpc("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(1))
        .retry(|r| r.policy(GrpcRetry::new().hedge_method("/helloworld.Greeter/Other")))
        .hedge(|h| h.delay(Duration::from_millis(100)))
        .build()
        .unwrap();
    let reply = call_say_hello(plain.layer(channel), hello()).await.unwrap();
    assert_eq!(reply.message, "hello preset from call 1");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// The gRPC preset's own refusals, read from its error type (`Status`, the
/// rejection in its source): a local refusal for `error_origin` and
/// `is_local_refusal`, and so for a fallback or breaker around the preset
/// (they looked only in a `BoxError`, and called it a failure).
#[tokio::test]
async fn the_grpc_presets_own_refusal_is_local_to_the_layers_around_it() {
    let (channel, hits) = serve_raw(Answer::TrailersOnly).await;
    let stack = grpc_preset(Duration::from_millis(500)).build().unwrap();
    stack.breaker_handle().force_open();
    let client: GrpcClient<Channel> = stack.layer(channel);
    let req = http::Request::post(format!("http://localhost{}", greeter::SAY_HELLO))
        .body(tonic::body::Body::empty())
        .unwrap();
    let status = client.oneshot(req).await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(seawall::error::rejection(&status).is_some());
    assert_eq!(
        seawall::classify::error_origin(&status),
        Some(seawall::observe::Outcome::Refused)
    );
    assert!(seawall::classify::is_local_refusal(&status));
    // A fallback for refusals around the preset answers it.
    let fell_back = Arc::new(AtomicUsize::new(0));
    let f = fell_back.clone();
    let stack = grpc_preset(Duration::from_millis(500)).build().unwrap();
    stack.breaker_handle().force_open();
    let (channel, _) = serve_raw(Answer::TrailersOnly).await;
    let client: GrpcClient<Channel> = stack.layer(channel);
    let with_fallback = seawall::fallback::FallbackLayer::builder(seawall::fallback::fallback_fn(
        move |_, _: Result<&_, &Status>| {
            f.fetch_add(1, Ordering::SeqCst);
            async { None }
        },
    ))
    .on(seawall::fallback::FallbackOn::REFUSED)
    .build()
    .unwrap()
    .layer(client);
    let req = http::Request::post(format!("http://localhost{}", greeter::SAY_HELLO))
        .body(tonic::body::Body::empty())
        .unwrap();
    let _ = with_fallback.oneshot(req).await;
    assert_eq!(
        fell_back.load(Ordering::SeqCst),
        1,
        "the refusal did not reach the fallback"
    );
}

/// A gRPC service config's retry policy for one method, over real tonic:
/// that method is retried on the config's codes, and another method of the
/// same channel (a write the config never names) is sent once. The policy
/// was applied to every method: the write below ran three times.
#[tokio::test]
async fn grpc_service_config_retries_only_the_methods_it_names() {
    let (channel, hits) = serve_raw(Answer::TrailersOnly).await;
    let config: seawall::config::GrpcServiceConfig = serde_json::from_str(
        r#"{"methodConfig": [{"name": [{"service": "demo.Greeter", "method": "SayHello"}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["INTERNAL"]}}]}"#,
    )
    .unwrap();
    let client = grpc_preset(Duration::from_millis(500))
        .service_config(&config)
        .unwrap()
        .build()
        .unwrap()
        .layer(channel);
    let status = call_say_hello(client.clone(), hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the named method: three attempts"
    );
    hits.store(0, Ordering::SeqCst);
    let mut grpc = tonic::client::Grpc::new(client);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            hello(),
            http::uri::PathAndQuery::from_static("/demo.Greeter/Transfer"),
            tonic_prost::ProstCodec::<HelloRequest, greeter::HelloReply>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a method the config never names was retried"
    );
}

/// A hedged `PUT` with an `Idempotency-Key`, over real HTTP, against a
/// server that follows the IETF draft (a second request with a key in
/// flight is answered `409 Conflict`): the copy's 409 does not end the
/// request, the original is not cancelled, and its answer comes back (the
/// copy's 409 won, and the original, mid-work, was cancelled). A keyed
/// `POST`, retried after a failure, is not hedged: a copy of it can only
/// be refused while the original runs.
#[tokio::test]
async fn a_hedged_keyed_put_is_answered_by_the_original_and_a_keyed_post_is_not_hedged() {
    let in_flight = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let finished = Arc::new(AtomicUsize::new(0));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let (seen, done, refused) = (in_flight.clone(), finished.clone(), conflicts.clone());
    let keyed = move |headers: http::HeaderMap| {
        let (seen, done, refused) = (seen.clone(), done.clone(), refused.clone());
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if !seen.lock().unwrap().insert(key.clone()) {
                refused.fetch_add(1, Ordering::SeqCst);
                return (
                    http::StatusCode::CONFLICT,
                    "request with this key in flight",
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen.lock().unwrap().remove(&key);
            done.fetch_add(1, Ordering::SeqCst);
            (http::StatusCode::CREATED, "created")
        }
    };
    let app = Router::new().route("/orders/1", axum::routing::put(keyed.clone()).post(keyed));
    let addr = serve_axum(app).await;
    let client = http_preset()
        // Every request may have its copy (the default budget allows one
        // a second on top of a tenth of the requests).
        .hedge(|h| h.delay(Duration::from_millis(50)).budget_ratio(1.0))
        .build()
        .unwrap()
        .layer(hyper());
    let req = |method: http::Method, key: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}/orders/1"))
            .header("idempotency-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let start = std::time::Instant::now();
    let res = client
        .clone()
        .oneshot(req(http::Method::PUT, "put-1"))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        http::StatusCode::CREATED,
        "a copy's 409 ended the request"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the original was cancelled"
    );
    assert_eq!(
        conflicts.load(Ordering::SeqCst),
        1,
        "the PUT was hedged once"
    );
    let res = client
        .oneshot(req(http::Method::POST, "post-1"))
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::CREATED);
    assert_eq!(finished.load(Ordering::SeqCst), 2);
    assert_eq!(
        conflicts.load(Ordering::SeqCst),
        1,
        "the keyed POST was hedged"
    );
}

/// The retry layer reports each attempt's outcome as the breaker beside it
/// does, over real HTTP: a 503 with `Retry-After` is an overload (the retry
/// layer used to report it as a failure, so its `seawall_calls_total` said
/// `failure` where the breaker's said `overloaded`), a 500 a failure, a 404
/// ignored, a 200 a success.
#[tokio::test]
async fn retry_and_breaker_report_the_same_outcomes() {
    use seawall::Observer;
    use seawall::observe::{LayerKind, Outcome, Recorder};

    let server = http_server().await;
    let recorder = Recorder::new();
    let client = http_preset()
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap()
        .layer(hyper());
    for path in ["/busy", "/fail", "/nothing", "/fail"] {
        let get = http::Request::get(format!("http://{}{path}", server.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let _ = client.clone().oneshot(get).await;
    }
    let finished = |layer| finished_outcomes(&recorder, layer);
    let retry = finished(LayerKind::Retry);
    println!(
        "retry {retry:?}\nbreaker {:?}",
        finished(LayerKind::CircuitBreaker)
    );
    assert!(retry.contains(&Outcome::Overloaded), "{retry:?}");
    assert!(retry.contains(&Outcome::Ignored), "{retry:?}");
    assert!(retry.contains(&Outcome::Failure), "{retry:?}");
    assert_eq!(retry, finished(LayerKind::CircuitBreaker));
}

/// The server preset's layers report the handler's answers by their
/// status, as a client's breaker would judge them (they reported every
/// response a success, so `seawall_calls_total` could not show a server's
/// own errors), over real HTTP: a 500 a failure, a 503 with `Retry-After`
/// an overload, a 404 ignored, a 200 a success.
#[tokio::test]
async fn server_preset_reports_answers_by_status() {
    use seawall::Observer;
    use seawall::observe::{LayerKind, Outcome, Recorder};

    let recorder = Recorder::new();
    let stack = seawall::stack::ServerStack::http("api")
        .total_budget(Duration::from_secs(2))
        .observer(Observer::new(recorder.clone()))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/fail",
            get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/busy",
            get(|| async {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    [(http::header::RETRY_AFTER, "1")],
                    "busy",
                )
            }),
        )
        .layer(stack);
    let addr = serve_axum(app).await;
    let client = hyper();
    for path in ["/ok", "/fail", "/busy", "/missing"] {
        let res = client.request(get_req(addr, path)).await.unwrap();
        let _ = res.into_body().collect().await;
    }
    for layer in [LayerKind::AdaptiveLimit, LayerKind::Bulkhead] {
        let outcomes = finished_outcomes(&recorder, layer);
        assert_eq!(
            outcomes,
            [
                Outcome::Failure,
                Outcome::Ignored,
                Outcome::Overloaded,
                Outcome::Success
            ],
            "{layer:?}"
        );
    }
}

/// The outcomes of `layer`'s `CallFinished` events, sorted.
fn finished_outcomes(
    recorder: &seawall::observe::Recorder,
    layer: seawall::observe::LayerKind,
) -> Vec<seawall::observe::Outcome> {
    let mut outcomes: Vec<_> = recorder
        .events()
        .into_iter()
        .filter(|e| e.layer == layer)
        .filter_map(|e| match e.kind {
            seawall::observe::EventKind::CallFinished { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    outcomes.sort_by_key(|o| format!("{o:?}"));
    outcomes
}

/// A server preset's budget may exceed the header ingress's 30 s default
/// cap (a long SSE stack): it builds, the cap a caller may ask for is the
/// budget, and a request without a header gets the whole budget. A lower
/// `max` set by hand bounds both. (A budget of 31 s failed to build with an
/// error about `default_budget`, a setting the user never made.)
#[tokio::test(start_paused = true)]
async fn a_server_budget_above_30_s_caps_what_callers_ask_for() {
    let handler = tower::service_fn(|_: http::Request<_>| async {
        let left = seawall::deadline::remaining().unwrap_or_default();
        Ok::<_, seawall::BoxError>(http::Response::new(axum::body::Body::from(
            left.as_millis().to_string(),
        )))
    });
    macro_rules! ask {
        ($svc:expr, $asked:expr) => {{
            let mut req = http::Request::get("/");
            if let Some(ms) = $asked {
                req = req.header("x-request-timeout-ms", ms);
            }
            let req = req.body(Full::new(Bytes::new())).unwrap();
            let res = $svc.clone().oneshot(req).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }};
    }
    let long = seawall::stack::ServerStack::http("events")
        .total_budget(Duration::from_secs(60))
        .build()
        .expect("a 60 s budget builds")
        .layer(handler);
    // Less the preset's 10 ms margin per hop.
    assert_eq!(ask!(long, Some("45000")), "44990");
    assert_eq!(ask!(long, Some("90000")), "59990", "capped at the budget");
    assert_eq!(
        ask!(long, None::<&str>),
        "60000",
        "no header: the whole budget"
    );

    let capped = seawall::stack::ServerStack::http("events")
        .total_budget(Duration::from_secs(60))
        .deadline_from_headers(|d| d.max(Duration::from_secs(10)))
        .build()
        .unwrap()
        .layer(handler);
    assert_eq!(ask!(capped, Some("45000")), "9990");
    assert_eq!(ask!(capped, None::<&str>), "10000");

    // The generic builder's header ingress caps alike (with the same 10 ms
    // margin): a caller that asks for 45 s gets 45 s less the margin, not
    // the ingress's 30 s default, while one that asks nothing gets 60.
    let generic = seawall::stack::ServerStack::builder("events")
        .total_budget(Duration::from_secs(60))
        .deadline_from_headers(|d| d)
        .build()
        .unwrap()
        .layer(handler);
    assert_eq!(ask!(generic, Some("45000")), "44990");
    assert_eq!(ask!(generic, Some("90000")), "59990");
    assert_eq!(ask!(generic, None::<&str>), "60000");
}

/// The gRPC preset does not retry a timed-out attempt (`DEADLINE_EXCEEDED`
/// is not among its retried codes unless opted in): its attempt timeout
/// does not cut an attempt then, and a dependency answering in 500 ms under
/// a 200 ms attempt timeout and a 2 s budget is answered, once. (The
/// attempt was cut at 200 ms, sent `grpc-timeout` 200 ms, and the call
/// failed with nothing to follow it.) Opted in, the attempts are cut and
/// retried.
#[tokio::test]
async fn grpc_preset_does_not_cut_an_attempt_it_would_not_retry() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let server = GreeterServer::new(move |req: tonic::Request<HelloRequest>| {
        let n = h.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(greeter::HelloReply {
                message: format!("hello {} from call {n}", req.into_inner().name),
                deadline_ms: None,
                budget_ms: None,
                left_ms: None,
            })
        }
    });
    let channel = serve_grpc(server).await;
    let stack = grpc_preset(Duration::from_millis(200)).build().unwrap();
    let started = std::time::Instant::now();
    let reply = call_say_hello(stack.layer(channel.clone()), hello())
        .await
        .unwrap();
    assert_eq!(reply.message, "hello preset from call 1");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() >= Duration::from_millis(500));

    // DEADLINE_EXCEEDED opted in: the first two attempts are cut at 200 ms
    // and retried, and the last, which no retry can follow, runs on and is
    // answered.
    hits.store(0, Ordering::SeqCst);
    let retrying = grpc_preset(Duration::from_millis(200))
        .retry(|r| r.policy(GrpcRetry::new().with_code(tonic::Code::DeadlineExceeded)))
        .build()
        .unwrap();
    let reply = call_say_hello(retrying.layer(channel), hello())
        .await
        .unwrap();
    assert_eq!(reply.message, "hello preset from call 3");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// The README's "One route's dependency hangs", over real HTTP: an axum
/// front in the server preset, route `/a` calling a dependency through
/// the HTTP client preset (the README's budgets), route `/b` working 2 ms
/// on its own, 100 requests a second to each; the dependency hangs after
/// 1 s. With `/a` `Sheddable`, as the README says, every `/b` request is
/// answered while `/a`'s hung calls fill the limit (its own requests are
/// refused at once instead, `503` with `Retry-After`).
#[tokio::test]
async fn a_hanging_dependency_behind_a_sheddable_route_leaves_the_other_routes_whole() {
    use seawall::shed::criticality::Criticality;
    use std::sync::atomic::AtomicBool;
    let hung = Arc::new(AtomicBool::new(false));
    let h = hung.clone();
    let dep = serve_axum(Router::new().route(
        "/",
        get(move || {
            let hung = h.load(Ordering::SeqCst);
            async move {
                if hung {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                "x"
            }
        }),
    ))
    .await;
    let to_dep = ClientStack::http("x")
        .total_budget(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .layer(hyper());
    let stack = seawall::stack::ServerStack::http("front")
        .total_budget(Duration::from_millis(950))
        .adaptive_limit(|l| {
            l.criticality(|req: &http::Request<axum::body::Body>| {
                if req.uri().path().starts_with("/a") {
                    Criticality::Sheddable
                } else {
                    Criticality::Critical
                }
            })
        })
        .build()
        .unwrap();
    let front = serve_axum(
        Router::new()
            .route(
                "/a",
                get(move || {
                    let to_dep = to_dep.clone();
                    async move {
                        let req = http::Request::get(format!("http://{dep}/"))
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        match to_dep.oneshot(req).await {
                            Ok(res) => res.status(),
                            Err(err) if rejection_of(&err).is_some() => {
                                seawall::http::rejection_response::<axum::body::Body>(&err).status()
                            }
                            Err(_) => http::StatusCode::BAD_GATEWAY,
                        }
                    }
                }),
            )
            .route(
                "/b",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    "b"
                }),
            )
            .layer(stack),
    )
    .await;
    let client = hyper();
    let start = tokio::time::Instant::now();
    // 4 s, a request to each route every 10 ms; the dependency hangs from 1 s.
    let calls = (0..800u64).map(|n| {
        let client = client.clone();
        let hung = hung.clone();
        async move {
            tokio::time::sleep_until(start + Duration::from_millis(5 * n)).await;
            if n == 200 {
                hung.store(true, Ordering::SeqCst);
            }
            let route = if n % 2 == 0 { "/a" } else { "/b" };
            let res = tokio::time::timeout(
                Duration::from_secs(1),
                client.oneshot(get_req(front, route)),
            )
            .await;
            let status = match res {
                Ok(Ok(res)) => res.status().as_u16(),
                Ok(Err(_)) => 0,
                Err(_) => 1,
            };
            (n, route, status)
        }
    });
    let out = futures::future::join_all(calls).await;
    let b: Vec<u16> = out.iter().filter(|c| c.1 == "/b").map(|c| c.2).collect();
    assert!(b.iter().all(|&s| s == 200), "/b: {b:?}");
    let a_hung: Vec<u16> = out
        .iter()
        .filter(|c| c.1 == "/a" && c.0 >= 260)
        .map(|c| c.2)
        .collect();
    assert!(!a_hung.contains(&200), "{a_hung:?}");
    assert!(
        a_hung.contains(&503),
        "the hung calls filled the limit: {a_hung:?}"
    );
}

/// A tonic service that answers every call `OK` at once, under one of two
/// names; any request body, as tonic's generated servers take.
#[derive(Clone, Debug)]
struct Check<const STOCK: bool>;

impl NamedService for Check<true> {
    const NAME: &'static str = "demo.Stock";
}

impl NamedService for Check<false> {
    const NAME: &'static str = "demo.Health";
}

impl<const STOCK: bool, B> tower::Service<http::Request<B>> for Check<STOCK> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(Status::new(Code::Ok, "").into_http()))
    }
}

/// Serves `router` on a loopback port; the caller it returns sends an
/// empty gRPC call to a path over HTTP/2 and gives back the answer.
async fn serve_routes(
    router: tonic::transport::server::Router,
) -> impl Fn(&str) -> hyper_util::client::legacy::ResponseFuture {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    move |path: &str| {
        h2.request(
            http::Request::post(format!("http://{addr}{path}"))
                .header("content-type", "application/grpc")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    }
}

/// `ServerStackLayer::layer_named` (the README's stack per group of
/// services, on tonic): two services on one tonic server, each in a stack
/// of its own, are found under their own names, and each one's calls go
/// through its own stack only (its adaptive limit saw them, the other's
/// did not).
#[tokio::test]
async fn a_stack_per_tonic_service_keeps_the_services_name() {
    use seawall::observe::{EventKind, LayerKind, Observer, Recorder};
    let (stock_events, health_events) = (Recorder::new(), Recorder::new());
    let stack = |name: &'static str, rec: &Recorder| {
        seawall::ServerStack::grpc(name)
            .total_budget(Duration::from_secs(5))
            .observer(Observer::new(rec.clone()))
            .build()
            .unwrap()
    };
    let (calls_the_dependency, local) = (
        stack("inventory", &stock_events),
        stack("api", &health_events),
    );
    let call = serve_routes(
        tonic::transport::Server::builder()
            .add_service(calls_the_dependency.layer_named(Check::<true>))
            .add_service(local.layer_named(Check::<false>)),
    )
    .await;
    for (path, n) in [("/demo.Stock/Get", 3), ("/demo.Health/Check", 2)] {
        for _ in 0..n {
            let res = call(path).await.unwrap();
            assert_eq!(res.headers()["grpc-status"], "0", "{path}: {res:?}");
        }
    }
    // A service no stack was given: tonic's own answer, through neither.
    let res = call("/demo.Nothing/Get").await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "12", "UNIMPLEMENTED: {res:?}");
    let started = |rec: &Recorder| {
        rec.count(|e| e.layer == LayerKind::AdaptiveLimit && e.kind == EventKind::CallStarted)
    };
    assert_eq!(started(&stock_events), 3, "demo.Stock in its own stack");
    assert_eq!(started(&health_events), 2, "demo.Health in its own stack");
}

/// `ByMethod` (the README's streaming methods in a stack of their own):
/// one tonic service served through two stacks, the calls of the listed
/// method through one, every other through the other, under the
/// service's name, on a real tonic server.
#[tokio::test]
async fn by_method_sends_a_services_listed_methods_through_their_own_stack() {
    use seawall::observe::{EventKind, LayerKind, Observer, Recorder};
    use seawall::stack::ByMethod;
    let (stream_events, unary_events) = (Recorder::new(), Recorder::new());
    let stack = |name: &'static str, budget: Duration, rec: &Recorder| {
        seawall::ServerStack::grpc(name)
            .total_budget(budget)
            .observer(Observer::new(rec.clone()))
            .build()
            .unwrap()
    };
    let streams = stack("stock.watch", Duration::from_secs(3600), &stream_events);
    let unary = stack("stock", Duration::from_millis(950), &unary_events);
    // A path of another service, or none, is refused as built.
    let refused = |paths: &[&str]| {
        ByMethod::new(paths.iter().copied(), Check::<true>, Check::<true>)
            .unwrap_err()
            .to_string()
    };
    let not_a_method = |path: &str| {
        format!(
            "invalid by_method configuration: {path:?} is not a method of demo.Stock: a path is \"/demo.Stock/Method\""
        )
    };
    assert_eq!(
        refused(&["/demo.Stock/Watch", "/demo.Stocks/Watch"]),
        not_a_method("/demo.Stocks/Watch")
    );
    assert_eq!(
        refused(&["demo.Stock/Watch"]),
        not_a_method("demo.Stock/Watch")
    );
    assert_eq!(refused(&["/demo.Stock/"]), not_a_method("/demo.Stock/"));
    assert_eq!(
        refused(&[]),
        "invalid by_method configuration: at least one method must be given"
    );
    let call = serve_routes(
        tonic::transport::Server::builder().add_service(
            ByMethod::new(
                ["/demo.Stock/Watch"],
                streams.layer_named(Check::<true>),
                unary.layer_named(Check::<true>),
            )
            .unwrap(),
        ),
    )
    .await;
    for (path, n) in [("/demo.Stock/Watch", 2), ("/demo.Stock/Get", 3)] {
        for _ in 0..n {
            let res = call(path).await.unwrap();
            assert_eq!(res.headers()["grpc-status"], "0", "{path}: {res:?}");
        }
    }
    let started = |rec: &Recorder| {
        rec.count(|e| e.layer == LayerKind::AdaptiveLimit && e.kind == EventKind::CallStarted)
    };
    assert_eq!(
        started(&stream_events),
        2,
        "Watch through the streams' stack"
    );
    assert_eq!(started(&unary_events), 3, "the rest through the other");
}

// ------------------------------------- refusals and the HTTP/2 connection

/// A gRPC service `demo.Greeter` whose every call waits for a permit of
/// `release`, then answers OK (trailers-only).
fn held_greeter(
    release: Arc<tokio::sync::Semaphore>,
) -> GreeterFn<impl FnMut(http::Request<Body>) -> Answering + Clone> {
    GreeterFn(move |_| {
        let release = release.clone();
        Box::pin(async move {
            let _permit = release.acquire().await.unwrap();
            Status::new(Code::Ok, "").into_http()
        }) as Answering
    })
}

/// An answer on its way.
type Answering = Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;

/// An HTTP/2 client written frame by frame, so that a test decides when
/// each frame leaves (a real client's next frames are already on their
/// way when an answer comes back; here they leave after it, every time).
mod raw_h2 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::sync::mpsc;

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 1;

    /// A frame read: its type, flags, stream and payload.
    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// A `GOAWAY`'s error code and debug data.
        pub fn goaway(&self) -> Option<(u32, String)> {
            (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
                let code = u32::from_be_bytes(self.payload[4..8].try_into().unwrap());
                (
                    code,
                    String::from_utf8_lossy(&self.payload[8..]).into_owned(),
                )
            })
        }
    }

    pub struct Conn {
        write: OwnedWriteHalf,
        pub frames: mpsc::UnboundedReceiver<Frame>,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK: every field a literal without indexing, names and values
    /// shorter than 127 bytes.
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(value.len() as u8);
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    impl Conn {
        /// Connects, sends the preface and empty settings; a task reads
        /// frames (acknowledging settings and pings) into `frames`.
        pub async fn connect(addr: std::net::SocketAddr) -> Conn {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut read, mut write) = stream.into_split();
            let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            hello.extend(frame(4, 0, 0, &[]));
            write.write_all(&hello).await.unwrap();
            let (tx, frames) = mpsc::unbounded_channel();
            let (acks, mut to_ack) = mpsc::unbounded_channel::<Vec<u8>>();
            tokio::spawn(async move {
                loop {
                    let mut head = [0u8; 9];
                    if read.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
                    let mut payload = vec![0u8; len];
                    if read.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    let (kind, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    match (kind, flags & 1) {
                        (4, 0) => drop(acks.send(frame(4, 1, 0, &[]))),
                        (6, 0) => drop(acks.send(frame(6, 1, 0, &payload))),
                        _ => {}
                    }
                    if tx
                        .send(Frame {
                            kind,
                            flags,
                            stream,
                            payload,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut conn = Conn { write, frames };
            // Acknowledgements go out before the next frame the test sends.
            tokio::task::yield_now().await;
            while let Ok(ack) = to_ack.try_recv() {
                conn.write.write_all(&ack).await.unwrap();
            }
            tokio::spawn(async move { while to_ack.recv().await.is_some() {} });
            conn
        }

        /// Opens `stream` with a `POST` to `path` (a gRPC call's head if
        /// `grpc`), with the fields `extra`.
        pub async fn head(&mut self, stream: u32, path: &str, grpc: bool, extra: &[(&str, &str)]) {
            let mut fields = vec![
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
            ];
            if grpc {
                fields.extend([("content-type", "application/grpc"), ("te", "trailers")]);
            } else {
                fields.push(("content-type", "text/plain"));
            }
            fields.extend_from_slice(extra);
            let fields = block(&fields);
            self.write
                .write_all(&frame(HEADERS, 4, stream, &fields))
                .await
                .unwrap();
        }

        /// The next answer's head on `stream`, or the server's `GOAWAY`;
        /// `None` if the connection closed or nothing came for 10 s.
        pub async fn answer(&mut self, stream: u32) -> Option<Frame> {
            loop {
                let wait = std::time::Duration::from_secs(10);
                let f = tokio::time::timeout(wait, self.frames.recv())
                    .await
                    .ok()??;
                if f.kind == GOAWAY || (f.kind == HEADERS && f.stream == stream) {
                    return Some(f);
                }
            }
        }

        /// Sends `data` on `stream`, ending it if `end`.
        pub async fn data(&mut self, stream: u32, data: &[u8], end: bool) {
            let flags = if end { END_STREAM } else { 0 };
            self.write
                .write_all(&frame(DATA, flags, stream, data))
                .await
                .unwrap();
        }
    }
}

/// A gRPC message as tonic sends it (HelloRequest { name: "x" }): one
/// small DATA frame, then an empty one ending the stream.
const SMALL_MESSAGE: [u8; 8] = [0, 0, 0, 0, 3, 0x0a, 0x01, b'x'];

/// The calls of [`refusals_on_one_connection`]: `POST`s to `path` (gRPC
/// calls if `grpc`), the held one with the fields `held`, the refused ones
/// with `refused`.
struct Calls<'a> {
    path: &'a str,
    grpc: bool,
    held: &'a [(&'a str, &'a str)],
    refused: &'a [(&'a str, &'a str)],
}

impl Calls<'_> {
    /// gRPC calls to `demo.Greeter`.
    fn grpc<'a>(held: &'a [(&'a str, &'a str)], refused: &'a [(&'a str, &'a str)]) -> Calls<'a> {
        Calls {
            path: "/demo.Greeter/SayHello",
            grpc: true,
            held,
            refused,
        }
    }
}

/// On one HTTP/2 connection to `addr`: stream 1 is a call held in the
/// handler (`limit`, the stack's adaptive limit, counts it), then
/// `refusals` calls are each refused at their head, and only then is
/// each call's message sent, as the frames a real client had on their
/// way; then `release` lets the held call answer, on the same connection.
/// Panics if the server closes it.
async fn refusals_on_one_connection(
    addr: SocketAddr,
    calls: Calls<'_>,
    limit: &seawall::shed::AdaptiveLimitLayer,
    release: &tokio::sync::Semaphore,
    refusals: u32,
) {
    let Calls {
        path,
        grpc,
        held,
        refused: extra,
    } = calls;
    let mut conn = raw_h2::Conn::connect(addr).await;
    conn.head(1, path, grpc, held).await;
    conn.data(1, &SMALL_MESSAGE, false).await;
    conn.data(1, &[], true).await;
    for _ in 0..500 {
        if limit.inflight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(limit.inflight(), 1, "stream 1 is in the handler");
    for i in 0..refusals {
        let stream = 3 + 2 * i;
        conn.head(stream, path, grpc, extra).await;
        let answer = conn.answer(stream).await;
        let answer = answer
            .unwrap_or_else(|| panic!("no answer to call {i}: the connection takes no more calls"));
        assert_ne!(
            answer.kind,
            raw_h2::GOAWAY,
            "the server closed the connection after {i} refusals: GOAWAY {:?}",
            answer.goaway()
        );
        if grpc {
            assert_eq!(
                answer.flags & raw_h2::END_STREAM,
                raw_h2::END_STREAM,
                "call {i} is refused with a trailers-only answer"
            );
        }
        // The message the client had on its way.
        conn.data(stream, &SMALL_MESSAGE, false).await;
        conn.data(stream, &[], true).await;
    }
    assert_eq!(limit.inflight(), 1, "stream 1 is still in the handler");
    release.add_permits(1);
    let answer = conn.answer(1).await.expect("an answer to the held call");
    assert_eq!(answer.kind, raw_h2::HEADERS, "{answer:?}");
    assert_eq!(limit.inflight(), 0);
}

/// [`refusals_on_one_connection`] against the gRPC preset (30 s, an
/// observer, and what `$configure` adds to the builder `$b`), around
/// [`held_greeter`]: 3000 refusals, every one by the layer `$layer`.
macro_rules! refusals_by {
    ($layer:expr, $held:expr, $extra:expr, |$b:ident| $configure:expr) => {{
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let rec = seawall::observe::Recorder::new();
        let $b = seawall::stack::ServerStack::grpc("dep").total_budget(Duration::from_secs(30));
        let stack = ($configure).observer(rec.clone()).build().unwrap();
        let limit = stack.adaptive_limit().clone();
        let addr = serve_addr_in!(stack, held_greeter(release.clone()));
        let calls = Calls::grpc($held, $extra);
        refusals_on_one_connection(addr, calls, &limit, &release, 3000).await;
        assert_eq!(refused_by(&rec, $layer), 3000, "{:?}", $layer);
    }};
}

/// How many calls the layer `layer` of the stack refused.
fn refused_by(rec: &seawall::observe::Recorder, layer: LayerKind) -> usize {
    rec.count(|e| {
        e.layer == layer && matches!(e.kind, seawall::observe::EventKind::Rejected { .. })
    })
}

/// The server preset refuses a call at its head, while the client is
/// still sending the call's message. It used to drop the body unread:
/// the stream was reset, and the message arriving on it then counted
/// against hyper's HTTP/2 budget for small frames on the connection (h2
/// 0.4.16 and later), which closed the connection (`GOAWAY`,
/// `ENHANCE_YOUR_CALM`) after about 2100 such refusals here, with every call
/// in flight on it. Plain tonic clients of a server shedding a third of
/// their calls lost 211 to 440 calls a run that way. Now the preset's
/// adaptive limit reads the rest of a refused call's body: 3000 refusals
/// on one connection, and the call held all along is answered on it.
#[tokio::test]
async fn refused_calls_keep_the_http2_connection_open() {
    refusals_by!(LayerKind::AdaptiveLimit, &[], &[], |b| b
        .adaptive_limit(|l| l.algorithm(limit_of_one())));
}

/// The same through the preset's other refusals: a tenant's bulkhead (one
/// place, no queue), the rate limit (one call an hour, refusing or
/// waiting up to 1 s) and the deadline
/// (calls sent with 1 ms left), 3000 each on one connection, which stays
/// open. Before, it stopped taking calls after about 2100 tenant
/// refusals; with the rate limit's and the deadline's, the refusals came
/// about 13 ms apart and the held call ran out of its 30 s first.
#[tokio::test]
async fn tenant_rate_limit_and_deadline_refusals_keep_the_http2_connection_open() {
    let acme = [("x-tenant", "acme")];
    let tenant = seawall::rate_limit::HeaderKey::new(http::HeaderName::from_static("x-tenant"));
    // A tenant's bulkhead reports its refusals as a bulkhead.
    refusals_by!(LayerKind::Bulkhead, &acme, &acme, |b| b.tenant_bulkhead(
        tenant,
        1,
        |b| b.max_queue(0)
    ));
    refusals_by!(LayerKind::RateLimit, &[], &[], |b| b
        .rate_limit(seawall::rate_limit::Quota::per_hour(1), |r| r));
    // Waiting for a cell up to 1 s: the next cell, an hour away, is
    // refused at once.
    refusals_by!(LayerKind::RateLimit, &[], &[], |b| b
        .rate_limit(seawall::rate_limit::Quota::per_hour(1), |r| r
            .wait(Duration::from_secs(1))));
    // Calls sent with 1 ms left, less than the preset's 10 ms margin for
    // the hop: out of time on arrival.
    refusals_by!(LayerKind::Deadline, &[], &[("grpc-timeout", "1m")], |b| b);
}

/// The HTTP preset over HTTP/2 (axum, with prior knowledge): 3000 `POST`s
/// its adaptive limit refuses with a `503`, each body sent after its
/// answer, on one connection, which stays open, and the held request is
/// answered on it.
#[tokio::test]
async fn http_preset_refusals_keep_the_http2_connection_open() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let rec = seawall::observe::Recorder::new();
    let stack = seawall::stack::ServerStack::http("api")
        .total_budget(Duration::from_secs(30))
        .adaptive_limit(|l| l.algorithm(limit_of_one()))
        .observer(rec.clone())
        .build()
        .unwrap();
    let limit = stack.adaptive_limit().clone();
    let addr = serve_axum(hold_route(&release).layer(stack)).await;
    let calls = Calls {
        path: "/hold",
        grpc: false,
        held: &[],
        refused: &[],
    };
    refusals_on_one_connection(addr, calls, &limit, &release, 3000).await;
    assert_eq!(refused_by(&rec, LayerKind::AdaptiveLimit), 3000);
}

/// A third-party API that allows 100 requests a second (a bucket of 100)
/// and answers `429` with `Retry-After: 1` beyond it, sent 150 a second for
/// 10 s through the HTTP client preset, callers with 3 s, with `quota`
/// below the stack if given: calls that reached the API, `429`s it sent,
/// requests served.
async fn rate_limited_api(quota: Option<seawall::rate_limit::RateLimitLayer>) -> [usize; 3] {
    use axum::response::IntoResponse;
    let calls = Arc::new(AtomicUsize::new(0));
    let too_many = Arc::new(AtomicUsize::new(0));
    let bucket = Arc::new(std::sync::Mutex::new((
        100.0f64,
        tokio::time::Instant::now(),
    )));
    let (c, t, b) = (calls.clone(), too_many.clone(), bucket.clone());
    let app = Router::new().route(
        "/api",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            let ok = {
                let mut g = b.lock().unwrap();
                let now = tokio::time::Instant::now();
                g.0 = (g.0 + (now - g.1).as_secs_f64() * 100.0).min(100.0);
                g.1 = now;
                let ok = g.0 >= 1.0;
                if ok {
                    g.0 -= 1.0;
                }
                ok
            };
            if !ok {
                t.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                if ok {
                    "ok".into_response()
                } else {
                    (
                        http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        "slow down",
                    )
                        .into_response()
                }
            }
        }),
    );
    let addr = serve_axum(app).await;
    let stack = ClientStack::http("api")
        .total_budget(Duration::from_secs(3))
        .build()
        .unwrap();
    let served = match quota {
        Some(quota) => rate_limited_load(addr, stack.layer(quota.layer(hyper()))).await,
        None => rate_limited_load(addr, stack.layer(hyper())).await,
    };
    [
        calls.load(Ordering::SeqCst),
        too_many.load(Ordering::SeqCst),
        served,
    ]
}

/// 150 requests a second for 10 s to `/api` at `addr` through `client`: the
/// requests served.
async fn rate_limited_load<S>(addr: SocketAddr, client: S) -> usize
where
    S: tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<seawall::body::CallBody<hyper::body::Incoming>>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    let served = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1500u32 {
        tokio::time::sleep_until(start + Duration::from_secs(1) / 150 * i).await;
        let (client, served) = (client.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!("http://{addr}/api"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            if let Ok(res) = client.oneshot(req).await {
                if res.status() == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    served.load(Ordering::SeqCst)
}

/// The API above through the preset alone. A retry of its `429` takes
/// another request's place under its quota: it draws on the retry budget's
/// 5 % of requests and its floor of 10 a second, not on its share of
/// succeeded requests (which is for failures a retry saves): 1.12 calls per
/// request, 1106 served (the quota's 1100 over the load, and retries after
/// it). With that share too (as before), 1.48 calls per request, 1169
/// served: the API sent 1.9 times the `429`s for 6 % more served, all
/// after the load, when its quota had room again.
#[tokio::test(start_paused = true)]
async fn http_preset_retries_a_rate_limited_api_within_the_budgets_floor() {
    let [calls, too_many, served] = rate_limited_api(None).await;
    let per_request = calls as f64 / 1500.0;
    println!("{calls} calls ({per_request:.2} a request), {too_many} 429s, {served} served");
    // The quota: 100 a second and the bucket's 100 at the start (and
    // retries for up to 3 s after the load).
    assert!(served >= 1050, "{served}");
    assert!(per_request <= 1.15, "{per_request:.2} calls a request");
}

/// The README's recipe for a dependency with a quota: a `RateLimitLayer` at
/// the quota below the client preset, requests waiting up to 200 ms for
/// their turn. Every attempt, retries included, takes its cell before it
/// is sent: the API sends no `429`, and as many requests are served.
#[tokio::test(start_paused = true)]
async fn a_quota_below_the_http_preset_keeps_a_rate_limited_api_within_it() {
    use seawall::rate_limit::{Quota, RateLimitLayer};
    let quota = RateLimitLayer::builder(Quota::per_second(100))
        .name("api.quota")
        .wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let [calls, too_many, served] = rate_limited_api(Some(quota)).await;
    println!("{calls} calls, {too_many} 429s, {served} served");
    // (None here; a few would be the two buckets' rounding.)
    assert!(too_many <= 5, "{too_many} 429s");
    assert!(served >= 1050, "{served}");
    assert!(calls <= served + 10, "{calls} calls for {served} served");
}

/// `Retry-After` counts whole seconds: 100 callers told "1" at one instant
/// would all come back at one instant. The HTTP client preset spreads a
/// wait in whole seconds over a fifth more: the retries come between 1 s
/// and 1.2 s, none before (all at 1 s before).
#[tokio::test(start_paused = true)]
async fn http_preset_spreads_a_retry_after_in_whole_seconds() {
    let seen: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
    let retried: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let (s, r) = (seen.clone(), retried.clone());
    let api = tower::service_fn(move |req: http::Request<Full<Bytes>>| {
        let id = req.headers()["x-id"].to_str().unwrap().to_owned();
        let n = {
            let mut seen = s.lock().unwrap();
            let n = seen.entry(id).or_default();
            *n += 1;
            *n
        };
        if n > 1 {
            r.lock().unwrap().push(start.elapsed());
        }
        async move {
            let res = if n == 1 {
                http::Response::builder()
                    .status(429)
                    .header("retry-after", "1")
                    .body(Full::new(Bytes::new()))
            } else {
                http::Response::builder().body(Full::new(Bytes::from_static(b"ok")))
            };
            Ok::<_, Infallible>(res.unwrap())
        }
    });
    let client = ClientStack::http("api")
        .total_budget(Duration::from_secs(3))
        .build()
        .unwrap()
        .layer(api);
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let req = http::Request::get("http://api.test/")
                .header("x-id", i.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            tokio::spawn(client.clone().oneshot(req))
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().status(), 200);
    }
    let retried = retried.lock().unwrap().clone();
    assert_eq!(retried.len(), 100);
    let (first, last) = (
        *retried.iter().min().unwrap(),
        *retried.iter().max().unwrap(),
    );
    println!("retries between {first:?} and {last:?}");
    assert!(first >= Duration::from_secs(1), "{first:?}");
    assert!(last <= Duration::from_millis(1200), "{last:?}");
    assert!(
        last - first >= Duration::from_millis(100),
        "{first:?}..{last:?}"
    );
}

/// A gRPC dependency that is down behind its own front (a tonic server
/// answering `UNAVAILABLE`, without pushback, to every call for 4 s) called
/// through the gRPC client preset with its defaults, 100 calls a second.
/// Its answers are "busy", not counted as failures; but a second of
/// nothing else opens the breaker, and its probes, answered busy, keep it
/// open: the server sees fewer calls than were made (a plain client sends
/// each one once; before this rule, the preset's retries sent 2.05 per
/// call for the whole outage, in an outside trial), at most about one
/// probe per open time over the outage's last 2 s. Once it answers again,
/// at most 5 calls are refused before a probe closes the breaker, and
/// every call is served.
#[tokio::test]
async fn grpc_preset_breaker_opens_on_a_dependency_that_answers_only_unavailable() {
    use std::sync::atomic::AtomicBool;
    let down = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(AtomicUsize::new(0));
    let (d, s) = (down.clone(), seen.clone());
    let channel = serve_grpc(GreeterServer::new(move |_req| {
        s.fetch_add(1, Ordering::SeqCst);
        let down = d.load(Ordering::SeqCst);
        async move {
            if down {
                Err(Status::unavailable("no healthy upstream"))
            } else {
                Ok(greeter::HelloReply::default())
            }
        }
    }))
    .await;
    let stack = ClientStack::grpc("dep")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(channel);
    let mut calls = Vec::new();
    let mut seen_at_2s = 0;
    for i in 0..400 {
        if i == 200 {
            seen_at_2s = seen.load(Ordering::SeqCst);
        }
        calls.push(tokio::spawn(call_say_hello(client.clone(), hello())));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let results = futures::future::join_all(calls).await;
    let seen_in_outage = seen.load(Ordering::SeqCst);
    assert!(results.iter().all(|r| r.as_ref().unwrap().is_err()));
    println!(
        "server calls in the outage: {seen_in_outage} for 400 calls, {} in its last 2 s",
        seen_in_outage - seen_at_2s
    );
    assert!(
        seen_in_outage < 360,
        "{seen_in_outage} server calls for 400"
    );
    assert!(
        seen_in_outage - seen_at_2s <= 60,
        "{} in the last 2 s",
        seen_in_outage - seen_at_2s
    );
    assert_eq!(breaker.metrics().failures, 0, "busy is not counted");

    // Served again: the breaker, open, lets a probe go once 5 calls were
    // refused (the client stack's probe gate), which closes it.
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    while call_say_hello(client.clone(), hello()).await.is_err() {
        refused += 1;
        assert!(refused <= 5, "{refused} refused once it answers again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..10 {
        call_say_hello(client.clone(), hello()).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed);
}

/// Over real HTTP, with the preset's defaults (one attempt, to count the
/// breaker's calls): a dependency that answers every call with a bare
/// `503` for 1.5 s (down behind its proxy) opens the breaker about a
/// second after the first; one that answers every call `503` with
/// `Retry-After` (a server shedding, or whose own breaker is open) is up
/// and says when to come back, and leaves it closed.
#[tokio::test]
async fn http_preset_breaker_opens_on_bare_503s_only_not_on_paced_ones() {
    use axum::response::IntoResponse;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/down",
            get(|| async { http::StatusCode::SERVICE_UNAVAILABLE.into_response() }),
        )
        .route(
            "/paced",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        [(http::header::RETRY_AFTER, "1")],
                    )
                        .into_response()
                }
            }),
        );
    let addr = serve_axum(app).await;
    for (path, opens) in [("/down", true), ("/paced", false)] {
        let stack = http_preset().retry(|r| r.max_attempts(1)).build().unwrap();
        let breaker = stack.breaker_handle();
        let client = stack.layer(hyper());
        let start = tokio::time::Instant::now();
        let mut opened_at = None;
        while start.elapsed() < Duration::from_millis(1500) {
            let res = client.clone().oneshot(get_req(addr, path)).await;
            if breaker.state() == State::Open && opened_at.is_none() {
                opened_at = Some(start.elapsed());
            }
            if opened_at.is_none() {
                assert_eq!(res.unwrap().status(), 503);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(breaker.metrics().calls, 0, "{path}: busy is not counted");
        if opens {
            let at = opened_at.expect("a bare 503 to every call opens it");
            assert!(at >= Duration::from_secs(1), "{path}: opened at {at:?}");
        } else {
            assert_eq!(opened_at, None, "{path}");
        }
    }
    assert!(hits.load(Ordering::SeqCst) >= 20);
}

/// A dependency that takes one new call per 200 ms, streams each answer
/// it takes for 1.5 s, and sheds the rest with a bare `503`: the breaker
/// judges a success at its body's end, but its head says the dependency
/// serves, and ends the run of busy answers (judged only at the bodies'
/// ends, the first 1.5 s were a run of 503s only, and the breaker opened
/// on a dependency that was serving all it could).
#[tokio::test]
async fn http_preset_a_streamed_success_ends_a_run_of_bare_503s() {
    use axum::response::IntoResponse;
    let last = Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
    let app = Router::new().route(
        "/stream",
        get(move || {
            let last = last.clone();
            async move {
                {
                    let mut last = last.lock().unwrap();
                    if last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                        return http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    *last = Some(tokio::time::Instant::now());
                }
                let body = futures::stream::once(async move {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok::<_, Infallible>(Bytes::from_static(b"done"))
                });
                axum::body::Body::from_stream(body).into_response()
            }
        }),
    );
    let addr = serve_axum(app).await;
    let rec = seawall::observe::Recorder::new();
    let stack = http_preset()
        .total_budget(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(5))
        .retry(|r| r.max_attempts(1))
        .observer(rec.clone())
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let mut calls = Vec::new();
    for _ in 0..250 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let res = client.oneshot(get_req(addr, "/stream")).await?;
            let status = res.status().as_u16();
            res.into_body().collect().await?;
            Ok::<u16, seawall::BoxError>(status)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().map_err(|e| e.to_string()))
        .collect();
    let opened = opens(&rec);
    assert_eq!(opened, 0, "{:?}", breaker.metrics());
    let served = answers.iter().filter(|a| matches!(a, Ok(200))).count();
    assert!(served >= 10, "{answers:?}");
    assert!(
        answers.iter().all(|a| matches!(a, Ok(200 | 503))),
        "{answers:?}"
    );
}

/// The built presets' types have names a struct field can take, with and
/// without their optional layers.
#[test]
fn the_built_presets_types_have_names() {
    use seawall::stack::ServerStack;
    use seawall::stack::{GrpcClientStack, GrpcServerStack, HttpClientStack, HttpServerStack};
    struct Stacks {
        http_client: HttpClientStack,
        hedged: HttpClientStack<seawall::hedge::HedgeLayer<HttpRetry>>,
        grpc_client: GrpcClientStack,
        http_server: HttpServerStack,
        grpc_server: GrpcServerStack,
    }
    let budget = Duration::from_secs(1);
    let stacks = Stacks {
        http_client: ClientStack::http("a").total_budget(budget).build().unwrap(),
        hedged: ClientStack::http("b")
            .total_budget(budget)
            .hedge(|h| h)
            .build()
            .unwrap(),
        grpc_client: ClientStack::grpc("c").total_budget(budget).build().unwrap(),
        http_server: ServerStack::http("d").total_budget(budget).build().unwrap(),
        grpc_server: ServerStack::grpc("e").total_budget(budget).build().unwrap(),
    };
    assert_eq!(stacks.http_client.breaker_handle().state(), State::Closed);
    assert_eq!(stacks.hedged.breaker_handle().state(), State::Closed);
    assert_eq!(stacks.grpc_client.breaker_handle().state(), State::Closed);
    assert_eq!(stacks.http_server.adaptive_limit().limit(), 20);
    assert_eq!(stacks.grpc_server.adaptive_limit().limit(), 20);
}

/// A dependency slow for everyone, behind the server preset, answers `504`
/// at the deadline each attempt sends it. Once the HTTP client preset finds
/// timeouts common, its attempts run on and send the whole time left, and
/// those `504`s come at the request's own deadline: the dependency had the
/// caller's whole time and answered, which its breaker does not count (it
/// counted them, and opened on a dependency that answers, when its own
/// slow dependency made it slow: a middle tier in an outside trial). Only
/// the first requests' answers at the 500 ms attempt timeout are counted,
/// as its own timer's timeouts are.
#[tokio::test(start_paused = true)]
async fn answers_at_the_requests_deadline_do_not_open_the_breaker() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let slow = tower::service_fn(move |_: http::Request<_>| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Infallible>(http::Response::new(axum::body::Body::empty()))
        }
    });
    // (No shorter than what its callers send: the guide's rule.)
    let server = seawall::stack::ServerStack::http("dep")
        .total_budget(Duration::from_secs(2))
        .build()
        .unwrap()
        .layer(slow);
    let client = ClientStack::http("dep")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let breaker = client.breaker_handle();
    let client = client.layer(server);
    let mut statuses = Vec::new();
    let mut after_first_wave = None;
    for _ in 0..4 {
        let wave = (0..10).map(|_| {
            let req = http::Request::get("http://dep/")
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.clone().oneshot(req)
        });
        for answer in futures::future::join_all(wave).await {
            statuses.push(match answer {
                Ok(res) => res.status().as_u16(),
                Err(e) => rejection_of(&e).map_or(0, |r| match r.kind() {
                    RejectionKind::CircuitOpen => 1,
                    _ => 2,
                }),
            });
        }
        after_first_wave.get_or_insert(breaker.metrics().failures);
    }
    let m = breaker.metrics();
    println!(
        "statuses {statuses:?}; breaker {:?}, calls {} failures {}; the dependency called {} times",
        breaker.state(),
        m.calls,
        m.failures,
        calls.load(Ordering::SeqCst)
    );
    // Every request reached the dependency and got its answer: none
    // refused by an open breaker (it opened at the 20th when they were
    // counted, and refused the last 20).
    assert!(statuses.iter().all(|s| *s == 504), "{statuses:?}");
    assert_eq!(breaker.state(), State::Closed);
    // The first wave's answers at the attempt timeout are counted (ten,
    // and one more when a retry of its first timeouts meets the attempt
    // timeout before the request's deadline); the three waves sent with
    // the time left, not.
    let first = after_first_wave.unwrap();
    assert!((10..=12).contains(&first), "{first}");
    assert_eq!(m.failures, first);
    assert_eq!(calls.load(Ordering::SeqCst), 42);
}
