//! gRPC answers for seawall rejections, through a real tonic server and client
//! over loopback (HTTP/2), and the gRPC status classifier.
#![cfg(feature = "tonic")]

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use seawall::BoxError;
use seawall::classify::Classify;
use seawall::error::{
    AttemptTimeout, BulkheadFull, CircuitOpen, DeadlineExceeded, Overloaded, RateLimited,
    RetryBudgetExhausted,
};
use seawall::grpc::{GrpcRejectionLayer, GrpcStatusClassifier, status_for};
use seawall::observe::Outcome;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The one message of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    text: String,
}

/// A hand-written unary service `test.Echo/Say`: echoes the text, or, when
/// the text names a case, fails from inside the handler with
/// `seawall::grpc::status_for` (or a plain handler status).
#[derive(Clone)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let handler = tower::service_fn(|req: tonic::Request<Echo>| async move {
                let text = req.into_inner().text;
                match text.as_str() {
                    "handler:not_found" => Err(Status::not_found("no such echo")),
                    t if t.starts_with("handler:") => Err(status_for(&error_for(&t[8..]))),
                    _ => Ok(tonic::Response::new(Echo { text })),
                }
            });
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
            Ok(grpc.unary(handler, req).await)
        })
    }
}

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

fn error_for(case: &str) -> BoxError {
    let ms = Duration::from_millis;
    match case {
        "circuit_open" => CircuitOpen::new("db", Some(ms(1400))).into(),
        "circuit_open_forced" => CircuitOpen::new("db", None).into(),
        "bulkhead_full" => BulkheadFull::new("pool", Some(ms(250))).into(),
        "overloaded" => Overloaded::new("shed", None).into(),
        "rate_limited" => RateLimited::new("api", Some(Duration::from_micros(400_500))).into(),
        "deadline" => DeadlineExceeded::new("edge").into(),
        "attempt_timeout" => AttemptTimeout::new("db-attempt").into(),
        "retry_budget" => RetryBudgetExhausted::new("retry").into(),
        "wrapped" => Box::new(Wrapped(RateLimited::new("api", Some(ms(3000))).into())),
        "status" => Box::new(Status::permission_denied("not yours")),
        _ => "password=hunter2 at 10.0.0.7".into(),
    }
}

/// (case, code, message, pushback)
const CASES: &[(&str, Code, &str, Option<&str>)] = &[
    (
        "circuit_open",
        Code::Unavailable,
        "circuit open",
        Some("1400"),
    ),
    (
        "circuit_open_forced",
        Code::Unavailable,
        "circuit open",
        None,
    ),
    (
        "bulkhead_full",
        Code::Unavailable,
        "bulkhead full",
        Some("250"),
    ),
    ("overloaded", Code::Unavailable, "overloaded", None),
    (
        "rate_limited",
        Code::ResourceExhausted,
        "rate limited",
        Some("401"),
    ),
    (
        "deadline",
        Code::DeadlineExceeded,
        "deadline exceeded",
        None,
    ),
    (
        "attempt_timeout",
        Code::DeadlineExceeded,
        "attempt timed out",
        None,
    ),
    (
        "retry_budget",
        Code::Unavailable,
        "retry budget exhausted",
        None,
    ),
    (
        "wrapped",
        Code::ResourceExhausted,
        "rate limited",
        Some("3000"),
    ),
    ("status", Code::PermissionDenied, "not yours", None),
    ("other", Code::Unknown, "internal error", None),
];

/// A stand-in for a seawall stack: rejects requests whose `x-reject`
/// metadata names a case.
fn rejecting_filter(req: http::Request<Body>) -> Result<http::Request<Body>, BoxError> {
    match req.headers().get("x-reject").and_then(|v| v.to_str().ok()) {
        Some(case) => Err(error_for(case)),
        None => Ok(req),
    }
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        Server::builder()
            .layer(
                ServiceBuilder::new()
                    .layer(GrpcRejectionLayer::new())
                    .filter(rejecting_filter),
            )
            .add_service(EchoServer)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    addr
}

async fn say(channel: &Channel, text: &str, reject: Option<&str>) -> Result<Echo, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(Echo {
        text: text.to_owned(),
    });
    if let Some(case) = reject {
        req.metadata_mut().insert("x-reject", case.parse().unwrap());
    }
    grpc.unary(
        req,
        PathAndQuery::from_static("/test.Echo/Say"),
        ProstCodec::<Echo, Echo>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn pushback(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn layer_answers_rejections_with_codes_and_pushback_over_http2() {
    let addr = serve().await;
    let channel = connect(addr).await;

    let ok = say(&channel, "hello", None).await.unwrap();
    assert_eq!(ok.text, "hello");

    for &(case, code, message, pushback_ms) in CASES {
        let status = say(&channel, "hello", Some(case)).await.unwrap_err();
        assert_eq!(status.code(), code, "code of {case}");
        assert_eq!(status.message(), message, "message of {case}");
        assert_eq!(pushback(&status), pushback_ms, "pushback of {case}");
    }

    // The connection is still good after every rejection.
    assert_eq!(say(&channel, "again", None).await.unwrap().text, "again");
}

#[tokio::test]
async fn handlers_can_answer_with_status_for() {
    let addr = serve().await;
    let channel = connect(addr).await;

    for &(case, code, message, pushback_ms) in CASES {
        let status = say(&channel, &format!("handler:{case}"), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "code of {case}");
        assert_eq!(status.message(), message, "message of {case}");
        assert_eq!(pushback(&status), pushback_ms, "pushback of {case}");
    }
    let status = say(&channel, "handler:not_found", None).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn rejection_is_a_trailers_only_response() {
    let mut svc = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::new())
        .filter(rejecting_filter)
        .service(EchoServer);
    let req = http::Request::builder()
        .uri("/test.Echo/Say")
        .header("x-reject", "circuit_open")
        .body(Body::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-message"], "circuit%20open");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1400");
    assert_eq!(res.headers().len(), 4);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.is_empty());

    // The classifier reads the code from such a response.
    let req = http::Request::builder()
        .uri("/test.Echo/Say")
        .header("x-reject", "rate_limited")
        .body(Body::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let c = GrpcStatusClassifier::new();
    assert_eq!(
        Classify::<_, BoxError>::classify(&c, Ok(&res)),
        Outcome::Overloaded
    );
    let strict = GrpcStatusClassifier::new().failure_code(Code::ResourceExhausted);
    assert_eq!(
        Classify::<_, BoxError>::classify(&strict, Ok(&res)),
        Outcome::Failure
    );
}

fn head(grpc_status: Option<&str>, http_status: u16) -> http::Response<()> {
    let mut b = http::Response::builder().status(http_status);
    if let Some(code) = grpc_status {
        b = b.header("grpc-status", code);
    }
    b.body(()).unwrap()
}

fn classify_head(c: &GrpcStatusClassifier, grpc_status: Option<&str>, http_status: u16) -> Outcome {
    Classify::<_, Status>::classify(c, Ok(&head(grpc_status, http_status)))
}

#[test]
fn classifier_reads_grpc_status_from_response_heads() {
    let c = GrpcStatusClassifier::default();
    let table: [(u8, Outcome); 17] = [
        (0, Outcome::Success),     // OK
        (1, Outcome::Failure),     // CANCELLED (a tonic server's timeout)
        (2, Outcome::Failure),     // UNKNOWN
        (3, Outcome::Ignored),     // INVALID_ARGUMENT
        (4, Outcome::Failure),     // DEADLINE_EXCEEDED
        (5, Outcome::Ignored),     // NOT_FOUND
        (6, Outcome::Ignored),     // ALREADY_EXISTS
        (7, Outcome::Ignored),     // PERMISSION_DENIED
        (8, Outcome::Overloaded),  // RESOURCE_EXHAUSTED
        (9, Outcome::Ignored),     // FAILED_PRECONDITION
        (10, Outcome::Ignored),    // ABORTED
        (11, Outcome::Ignored),    // OUT_OF_RANGE
        (12, Outcome::Ignored),    // UNIMPLEMENTED
        (13, Outcome::Failure),    // INTERNAL
        (14, Outcome::Overloaded), // UNAVAILABLE, answered by the server
        (15, Outcome::Failure),    // DATA_LOSS
        (16, Outcome::Ignored),    // UNAUTHENTICATED
    ];
    for (code, expected) in table {
        assert_eq!(
            classify_head(&c, Some(&code.to_string()), 200),
            expected,
            "grpc-status {code}"
        );
    }
    // UNAVAILABLE with pushback: the server said "busy".
    let busy = http::Response::builder()
        .header("grpc-status", "14")
        .header("grpc-retry-pushback-ms", "300")
        .body(())
        .unwrap();
    assert_eq!(
        Classify::<_, Status>::classify(&c, Ok(&busy)),
        Outcome::Overloaded
    );
    // A server's UNAVAILABLE counts as a failure with both rules off; a
    // client-side UNAVAILABLE (no connection) always does.
    let strict = GrpcStatusClassifier::new()
        .answered_unavailable_is_overload(false)
        .pushback_is_overload(false);
    assert_eq!(
        Classify::<_, Status>::classify(&strict, Ok(&busy)),
        Outcome::Failure
    );
    let answered_only = GrpcStatusClassifier::new().answered_unavailable_is_overload(false);
    assert_eq!(
        classify_head(&answered_only, Some("14"), 200),
        Outcome::Failure
    );
    // A proxy's bare 503 follows that rule; its 429 and its 503 with a wait
    // stay busy.
    assert_eq!(classify_head(&answered_only, None, 503), Outcome::Failure);
    assert_eq!(
        classify_head(&answered_only, None, 429),
        Outcome::Overloaded
    );
    let proxy_busy = http::Response::builder()
        .status(503)
        .header("retry-after", "1")
        .body(())
        .unwrap();
    assert_eq!(
        Classify::<_, Status>::classify(&answered_only, Ok(&proxy_busy)),
        Outcome::Overloaded
    );
    assert_eq!(
        Classify::<_, Status>::classify(&answered_only, Ok(&busy)),
        Outcome::Overloaded
    );
    assert_eq!(
        Classify::<http::Response<()>, _>::classify(&c, Err(&Status::unavailable("no connection"))),
        Outcome::Failure
    );
    // Unparseable codes read as UNKNOWN: a failure.
    assert_eq!(classify_head(&c, Some("banana"), 200), Outcome::Failure);
    assert_eq!(classify_head(&c, Some("99"), 200), Outcome::Failure);
    // No grpc-status on a 200 head: the code comes later in trailers; success.
    assert_eq!(classify_head(&c, None, 200), Outcome::Success);
    // A proxy's HTTP error without grpc-status, mapped as the gRPC spec says.
    assert_eq!(classify_head(&c, None, 503), Outcome::Overloaded); // a proxy's "busy", as for HTTP
    assert_eq!(classify_head(&c, None, 429), Outcome::Overloaded); // a proxy's "busy"
    let shed = http::Response::builder()
        .status(503)
        .header("retry-after", "1")
        .body(())
        .unwrap();
    assert_eq!(
        Classify::<_, Status>::classify(&c, Ok(&shed)),
        Outcome::Overloaded
    ); // "busy, come back"
    // With UNAVAILABLE's rule changed, a proxy's "busy" follows it.
    let lenient = GrpcStatusClassifier::new().ignored_code(Code::Unavailable);
    assert_eq!(
        Classify::<_, Status>::classify(&lenient, Ok(&shed)),
        Outcome::Ignored
    );
    assert_eq!(classify_head(&c, None, 502), Outcome::Failure); // UNAVAILABLE
    assert_eq!(classify_head(&c, None, 404), Outcome::Ignored); // UNIMPLEMENTED
    assert_eq!(classify_head(&c, None, 401), Outcome::Ignored); // UNAUTHENTICATED
    assert_eq!(classify_head(&c, None, 400), Outcome::Failure); // INTERNAL
    assert_eq!(classify_head(&c, None, 418), Outcome::Failure); // UNKNOWN
}

#[test]
fn classifier_reads_status_errors() {
    let c = GrpcStatusClassifier::new();
    let err = |e: &Status| Classify::<http::Response<()>, Status>::classify(&c, Err(e));
    assert_eq!(err(&Status::unavailable("down")), Outcome::Failure);
    assert_eq!(err(&Status::not_found("nope")), Outcome::Ignored);
    assert_eq!(err(&Status::invalid_argument("bad")), Outcome::Ignored);
    assert_eq!(
        err(&Status::resource_exhausted("quota")),
        Outcome::Overloaded
    );

    let boxed = |e: BoxError| Classify::<http::Response<()>, BoxError>::classify(&c, Err(&e));
    assert_eq!(boxed(Box::new(Status::not_found("nope"))), Outcome::Ignored);
    assert_eq!(
        boxed(Box::new(Wrapped(Box::new(Status::already_exists("dup"))))),
        Outcome::Ignored
    );
    assert_eq!(
        boxed(Box::new(Wrapped(Box::new(Status::internal("bug"))))),
        Outcome::Failure
    );
    // This process's own refusals are refused, a shedder's answer an
    // overload, other errors failures.
    assert_eq!(boxed(error_for("circuit_open")), Outcome::Refused);
    assert_eq!(boxed(error_for("bulkhead_full")), Outcome::Refused);
    assert_eq!(boxed(error_for("overloaded")), Outcome::Overloaded);
    assert_eq!(boxed(error_for("attempt_timeout")), Outcome::Failure);
    assert_eq!(boxed(error_for("other")), Outcome::Failure);
    let io = std::io::Error::other("reset");
    assert_eq!(
        Classify::<http::Response<()>, _>::classify(&c, Err(&io)),
        Outcome::Failure
    );
}

#[test]
fn classifier_failure_codes_are_configurable() {
    let c = GrpcStatusClassifier::new()
        .failure_code(Code::Aborted)
        .success_code(Code::ResourceExhausted)
        .overload_code(Code::DataLoss);
    assert_eq!(classify_head(&c, Some("10"), 200), Outcome::Failure);
    assert_eq!(classify_head(&c, Some("8"), 200), Outcome::Success);
    assert_eq!(classify_head(&c, Some("14"), 200), Outcome::Overloaded);
    assert_eq!(classify_head(&c, Some("15"), 200), Outcome::Overloaded);
    // Every other rule is untouched.
    assert_eq!(classify_head(&c, Some("5"), 200), Outcome::Ignored);
    assert_eq!(
        format!("{c:?}"),
        "GrpcStatusClassifier { failure_codes: [Cancelled, Unknown, DeadlineExceeded, Aborted, Internal, Unavailable], overload_codes: [DataLoss], pushback_is_overload: true, answered_unavailable_is_overload: true }"
    );
}

#[tokio::test]
async fn without_the_layer_clients_lose_the_code_and_pushback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        Server::builder()
            .layer(tower::filter::FilterLayer::new(rejecting_filter))
            .add_service(EchoServer)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let channel = connect(addr).await;
    let status = say(&channel, "hello", Some("circuit_open"))
        .await
        .unwrap_err();
    // tonic resets the stream for a non-Status error: the client sees
    // INTERNAL, neither UNAVAILABLE nor the pushback.
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(pushback(&status), None);
}

async fn call_through<S>(svc: S) -> Result<String, Status>
where
    S: tonic::client::GrpcService<Body>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    let mut grpc = tonic::client::Grpc::new(svc);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    grpc.unary(
        tonic::Request::new(Echo {
            text: "hi".to_owned(),
        }),
        PathAndQuery::from_static("/test.Echo/Say"),
        ProstCodec::<Echo, Echo>::default(),
    )
    .await
    .map(|r| r.into_inner().text)
}

/// Client side: seawall layers around a `Channel`. Under the layer, the tonic
/// client sees the mapped code and pushback; without it, `UNKNOWN`.
#[tokio::test]
async fn client_side_layer_gives_tonic_clients_the_code() {
    let addr = serve().await;
    let channel = connect(addr).await;

    // A stand-in for an open client-side breaker: rejects every call.
    let open = |_req: http::Request<Body>| -> Result<http::Request<Body>, BoxError> {
        Err(error_for("circuit_open"))
    };

    let with_layer = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::new())
        .filter(open)
        .service(channel.clone());
    let status = call_through(with_layer).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "circuit open");
    assert_eq!(pushback(&status), Some("1400"));

    let without = ServiceBuilder::new().filter(open).service(channel.clone());
    let status = call_through(without).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(pushback(&status), None);

    // Calls that pass go through the layer unchanged.
    let passing = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::new())
        .service(channel);
    assert_eq!(call_through(passing).await.unwrap(), "hi");
}
