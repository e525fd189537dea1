//! HTTP answers for seawall rejections, through a real axum server over
//! loopback, and the status-code classifier.
#![cfg(all(feature = "http", feature = "axum"))]

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::BoxError;
use seawall::classify::Classify;
use seawall::error::{
    AttemptTimeout, BulkheadFull, CircuitOpen, DeadlineExceeded, Overloaded, RateLimited,
    RetryBudgetExhausted,
};
use seawall::http::{HttpStatusClassifier, RejectionResponseLayer, handle_error};
use seawall::observe::Outcome;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A non-seawall error that wraps another one, to check `source()` chains.
#[derive(Debug)]
struct Wrapped(BoxError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("while calling the db")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

const SECRET: &str = "password=hunter2 at 10.0.0.7";

/// The error each case's inner service returns.
fn error_for(case: &str) -> BoxError {
    let ms = Duration::from_millis;
    match case {
        "circuit_open" => CircuitOpen::new("db", Some(ms(1400))).into(),
        "circuit_open_forced" => CircuitOpen::new("db", None).into(),
        "bulkhead_full" => BulkheadFull::new("pool", Some(ms(400))).into(),
        "overloaded" => Overloaded::new("shed", None).into(),
        "rate_limited" => RateLimited::new("api", Some(ms(400))).into(),
        "rate_limited_long" => RateLimited::new("api", Some(ms(1400))).into(),
        "rate_limited_exact" => RateLimited::new("api", Some(ms(3000))).into(),
        "deadline" => DeadlineExceeded::new("edge").into(),
        "attempt_timeout" => AttemptTimeout::new("db-attempt").into(),
        "retry_budget" => RetryBudgetExhausted::new("retry").into(),
        "wrapped" => Box::new(Wrapped(CircuitOpen::new("db", Some(ms(1400))).into())),
        _ => SECRET.into(),
    }
}

/// Expected (status, Retry-After, body) per case.
const CASES: &[(&str, u16, Option<&str>, &str)] = &[
    ("circuit_open", 503, Some("2"), "circuit open"),
    ("circuit_open_forced", 503, None, "circuit open"),
    ("bulkhead_full", 503, Some("1"), "bulkhead full"),
    ("overloaded", 503, None, "overloaded"),
    ("rate_limited", 429, Some("1"), "rate limited"),
    ("rate_limited_long", 429, Some("2"), "rate limited"),
    ("rate_limited_exact", 429, Some("3"), "rate limited"),
    ("deadline", 504, None, "deadline exceeded"),
    ("attempt_timeout", 504, None, "attempt timed out"),
    ("retry_budget", 503, None, "retry budget exhausted"),
    ("wrapped", 503, Some("2"), "circuit open"),
    ("other", 500, None, "internal server error"),
];

fn failing(
    case: &'static str,
) -> impl Service<Request, Response = Response, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(
        move |_req: Request| async move { Err::<Response, BoxError>(error_for(case)) },
    )
}

/// The app: `/handle/<case>` answers through `HandleErrorLayer` +
/// `handle_error`, `/layer/<case>` through `RejectionResponseLayer`, and
/// `/guarded` is a normal handler behind `Router::layer` with a stand-in
/// seawall layer that rejects when asked to.
fn app() -> Router {
    let mut router = Router::new();
    for &(case, ..) in CASES {
        router = router
            .route_service(
                &format!("/handle/{case}"),
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .service(failing(case)),
            )
            .route_service(
                &format!("/layer/{case}"),
                ServiceBuilder::new()
                    .layer(RejectionResponseLayer::new())
                    .service(failing(case)),
            );
    }
    let guarded = Router::new()
        .route("/guarded", get(|| async { "hello" }))
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .filter(|req: Request| -> Result<Request, BoxError> {
                    match req.headers().get("x-reject").and_then(|v| v.to_str().ok()) {
                        Some(case) => Err(error_for(case)),
                        None => Ok(req),
                    }
                }),
        );
    router.merge(guarded)
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app()).await.unwrap();
    });
    addr
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: String,
}

async fn get_path(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
    reject: Option<&str>,
) -> Answer {
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    if let Some(case) = reject {
        req = req.header("x-reject", case);
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, retry_after, content_type) = (
        res.status().as_u16(),
        header("retry-after"),
        header("content-type"),
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        retry_after,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn check(answer: &Answer, case: &str, status: u16, retry_after: Option<&str>, body: &str) {
    assert_eq!(answer.status, status, "status of {case}");
    assert_eq!(
        answer.retry_after.as_deref(),
        retry_after,
        "retry-after of {case}"
    );
    assert_eq!(answer.body, body, "body of {case}");
    assert_eq!(
        answer.content_type.as_deref(),
        Some("text/plain; charset=utf-8"),
        "content-type of {case}"
    );
    assert!(
        !answer.body.contains("hunter2") && !answer.body.contains("db"),
        "{case} leaks"
    );
}

#[tokio::test]
async fn handle_error_answers_every_rejection_over_a_real_server() {
    let addr = serve().await;
    let client = client();
    for &(case, status, retry_after, body) in CASES {
        let answer = get_path(&client, addr, &format!("/handle/{case}"), None).await;
        check(&answer, case, status, retry_after, body);
    }
}

#[tokio::test]
async fn rejection_layer_answers_every_rejection_over_a_real_server() {
    let addr = serve().await;
    let client = client();
    for &(case, status, retry_after, body) in CASES {
        let answer = get_path(&client, addr, &format!("/layer/{case}"), None).await;
        check(&answer, case, status, retry_after, body);
    }
}

#[tokio::test]
async fn rejection_layer_works_with_router_layer_and_passes_successes_through() {
    let addr = serve().await;
    let client = client();

    let ok = get_path(&client, addr, "/guarded", None).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.retry_after, None);
    assert_eq!(ok.body, "hello");

    for &(case, status, retry_after, body) in CASES {
        let answer = get_path(&client, addr, "/guarded", Some(case)).await;
        check(&answer, case, status, retry_after, body);
    }
}

/// A service whose readiness fails with a rejection, then recovers.
#[derive(Clone)]
struct FailsReadinessOnce {
    failed: bool,
}

impl Service<()> for FailsReadinessOnce {
    type Response = http::Response<String>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.failed {
            Poll::Ready(Ok(()))
        } else {
            self.failed = true;
            Poll::Ready(Err(RateLimited::new(
                "api",
                Some(Duration::from_millis(2500)),
            )
            .into()))
        }
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        std::future::ready(Ok(http::Response::new("served".to_owned())))
    }
}

#[tokio::test]
async fn readiness_errors_become_the_next_response_then_the_inner_service_is_asked_again() {
    let mut svc = tower::Layer::layer(
        &RejectionResponseLayer::new(),
        FailsReadinessOnce { failed: false },
    );
    let first = svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(first.status(), 429);
    assert_eq!(first.headers()["retry-after"], "3");
    assert_eq!(first.body(), "rate limited");

    let second = svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.body(), "served");
}

#[test]
fn error_type_is_infallible() {
    fn assert_infallible<S: Service<Request, Error = Infallible>>(_: &S) {}
    let svc = ServiceBuilder::new()
        .layer(RejectionResponseLayer::new())
        .service(failing("overloaded"));
    assert_infallible(&svc);
}

fn response(code: u16) -> http::Response<Body> {
    http::Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap()
}

fn classify(c: &HttpStatusClassifier, code: u16) -> Outcome {
    Classify::<http::Response<Body>, BoxError>::classify(c, Ok(&response(code)))
}

#[test]
fn classifier_default_outcomes() {
    let c = HttpStatusClassifier::default();
    let table = [
        (100, Outcome::Success),
        (200, Outcome::Success),
        (204, Outcome::Success),
        (301, Outcome::Success),
        (304, Outcome::Success),
        (400, Outcome::Ignored),
        (401, Outcome::Ignored),
        (404, Outcome::Ignored),
        (408, Outcome::Failure),
        (409, Outcome::Ignored),
        (429, Outcome::Overloaded),
        (499, Outcome::Ignored),
        (500, Outcome::Failure),
        (501, Outcome::Ignored),
        (502, Outcome::Failure),
        (503, Outcome::Overloaded),
        (504, Outcome::Failure),
        (599, Outcome::Failure),
        (600, Outcome::Success),
        (999, Outcome::Success),
    ];
    for (code, expected) in table {
        assert_eq!(classify(&c, code), expected, "{code}");
    }
    let count = |o| {
        (100u16..1000)
            .filter(|&code| classify(&c, code) == o)
            .count()
    };
    assert_eq!(count(Outcome::Failure), 99); // 5xx but 501 and 503, and 408
    assert_eq!(count(Outcome::Overloaded), 2); // 429, 503
    // A 503 is "busy" with or without a Retry-After. Counted as a failure
    // (a 503 that means "down" behind a proxy), one that says when to come
    // back stays busy, unless that is turned off too.
    let shed = http::Response::builder()
        .status(503)
        .header("retry-after", "2")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        Classify::<http::Response<Body>, BoxError>::classify(&c, Ok(&shed)),
        Outcome::Overloaded
    );
    let down = HttpStatusClassifier::new().failure_code(http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(classify(&down, 503), Outcome::Failure);
    assert_eq!(
        Classify::<http::Response<Body>, BoxError>::classify(&down, Ok(&shed)),
        Outcome::Overloaded
    );
    let strict = down.retry_after_is_overload(false);
    assert_eq!(
        Classify::<http::Response<Body>, BoxError>::classify(&strict, Ok(&shed)),
        Outcome::Failure
    );
    assert_eq!(count(Outcome::Ignored), 99); // 4xx but 408 and 429, and 501
}

#[test]
fn classifier_errors_by_origin() {
    let c = HttpStatusClassifier::new();
    for (case, expected) in [
        ("circuit_open", Outcome::Refused),
        ("rate_limited", Outcome::Refused),
        ("bulkhead_full", Outcome::Refused),
        ("overloaded", Outcome::Overloaded),
        ("attempt_timeout", Outcome::Failure),
        ("deadline", Outcome::Failure),
        ("other", Outcome::Failure),
    ] {
        let err = error_for(case);
        assert_eq!(
            Classify::<http::Response<Body>, BoxError>::classify(&c, Err(&err)),
            expected,
            "{case}"
        );
    }
    let io = std::io::Error::other("reset");
    assert_eq!(
        Classify::<http::Response<Body>, _>::classify(&c, Err(&io)),
        Outcome::Failure
    );
    // With every status a success, errors still fail.
    let errors_only = HttpStatusClassifier::errors_only();
    assert_eq!(classify(&errors_only, 503), Outcome::Success);
    assert_eq!(
        Classify::<http::Response<Body>, BoxError>::classify(
            &errors_only,
            Err(&error_for("other"))
        ),
        Outcome::Failure
    );
}

#[test]
fn classifier_rules_change_one_at_a_time() {
    let c = HttpStatusClassifier::new()
        .overload_code(http::StatusCode::BAD_GATEWAY)
        .failure_code(http::StatusCode::NOT_IMPLEMENTED)
        .success_code(http::StatusCode::NOT_FOUND);
    assert_eq!(classify(&c, 502), Outcome::Overloaded);
    assert_eq!(classify(&c, 501), Outcome::Failure);
    assert_eq!(classify(&c, 404), Outcome::Success);
    // The rest as before.
    assert_eq!(classify(&c, 500), Outcome::Failure);
    assert_eq!(classify(&c, 503), Outcome::Overloaded);
    assert_eq!(classify(&c, 400), Outcome::Ignored);
    assert_eq!(
        format!(
            "{:?}",
            HttpStatusClassifier::errors_only()
                .failure_code(http::StatusCode::BAD_GATEWAY)
                .ignored_code(http::StatusCode::NOT_FOUND)
        ),
        "HttpStatusClassifier { failure_codes: [502], overload_codes: [], ignored_codes: [404], retry_after_is_overload: false }"
    );
}
