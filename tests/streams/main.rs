//! Streamed responses through the protocol presets, with their defaults,
//! over loopback: a real hyper client against axum, a real tonic `Channel`
//! and tonic streaming client against a tonic server. The call ends when
//! its body ends: bulkhead permits are held to the last chunk and given
//! back when the reader drops the stream half way (the server's adaptive
//! limit gives its place back at the head); the breaker counts a
//! body that fails or ends with an error status in its trailers, and does
//! not count a body the reader dropped.
//!
//! These tests run in real time (real sockets: a paused clock would jump
//! over data still in flight on loopback); every wait is bounded, and no
//! assertion depends on how long anything took beyond a lower bound.
#![cfg(all(feature = "tonic", feature = "full"))]

#[path = "../../examples/common/greeter.rs"]
mod greeter;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::error::{RejectionKind, rejection_of};
use seawall::stack::{ClientStack, ServerStack};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Layer, ServiceExt};

use greeter::{HelloReply, HelloRequest};

type Hyper = Client<HttpConnector, Full<Bytes>>;

fn hyper() -> Hyper {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2() -> Hyper {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Serves `app` on a free loopback port.
async fn serve_axum(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `n` chunks "0 ", "1 ", …, the first at once, then one every `every`;
/// with `fail`, an error after the last one (the server resets the
/// stream).
fn chunks(n: usize, every: Duration, fail: bool) -> axum::body::Body {
    let s = futures::stream::iter(0..n).then(move |i| async move {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(format!("{i} ")))
    });
    let tail = futures::stream::iter(fail.then(|| Err(std::io::Error::other("broken"))));
    axum::body::Body::from_stream(s.chain(tail))
}

/// Waits until `done` holds, for 2 s at most.
async fn settle(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(done(), "not settled after 2 s");
}

fn get_req(addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Reads one frame of a body.
async fn one_frame<B: http_body::Body<Data = Bytes> + Unpin>(body: &mut B) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    let frame = body.frame().await.expect("a frame").expect("no error");
    frame.into_data().expect("data")
}

// ---------------------------------------------------------------- HTTP client

#[tokio::test]
async fn http_client_preset_holds_the_permit_to_the_last_chunk() {
    let addr = serve_axum(
        Router::new()
            .route(
                "/stream",
                get(|| async { chunks(3, Duration::from_millis(20), false) }),
            )
            .route(
                "/broken",
                get(|| async { chunks(2, Duration::from_millis(20), true) }),
            ),
    )
    .await;
    let stack = ClientStack::http("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let (bulkhead, breaker) = (stack.bulkhead_handle(), stack.breaker_handle());
    let client = stack.layer(hyper());

    // Read to the end: held until the last chunk, then one success.
    let res = client
        .clone()
        .oneshot(get_req(addr, "/stream"))
        .await
        .unwrap();
    assert_eq!(bulkhead.in_flight(), 1, "the body is still streaming");
    assert_eq!(breaker.metrics().calls, 0, "judged at the end");
    let mut body = pin!(res.into_body());
    assert_eq!(one_frame(&mut body).await, "0 ");
    assert_eq!(bulkhead.in_flight(), 1);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "1 2 ");
    assert_eq!(bulkhead.in_flight(), 0);
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures), (1, 0));

    // Dropped half way: given back, counted as its head said (a success).
    let res = client
        .clone()
        .oneshot(get_req(addr, "/stream"))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    assert_eq!(one_frame(&mut body).await, "0 ");
    assert_eq!(bulkhead.in_flight(), 1);
    drop(body);
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(
        (breaker.metrics().calls, breaker.metrics().failures),
        (2, 0),
        "a dropped stream counts as its head said"
    );

    // A body that fails mid-stream is a failure of the dependency.
    let res = client
        .clone()
        .oneshot(get_req(addr, "/broken"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.into_body().collect().await.is_err());
    assert_eq!(bulkhead.in_flight(), 0);
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures), (3, 1));
}

// ---------------------------------------------------------------- HTTP server

#[tokio::test]
async fn http_server_preset_holds_the_bulkhead_to_the_last_chunk() {
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let limit = stack.adaptive_limit().clone();
    let bulkhead = stack.bulkhead_handle();
    let addr = serve_axum(
        Router::new()
            .route(
                "/stream",
                get(|| async { chunks(3, Duration::from_millis(20), false) }),
            )
            .layer(stack),
    )
    .await;
    let client = h2();

    let res = client.request(get_req(addr, "/stream")).await.unwrap();
    // The limit's place is given back at the head; the permit is held.
    assert_eq!((limit.inflight(), bulkhead.in_flight()), (0, 1));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "0 1 2 ");
    // The server lets go once it has sent the last chunk.
    settle(|| (limit.inflight(), bulkhead.in_flight()) == (0, 0)).await;

    // The client drops the stream half way (HTTP/2 resets it): the server
    // drops the answer and gives the places back.
    let res = client.request(get_req(addr, "/stream")).await.unwrap();
    let mut body = Box::pin(res.into_body());
    assert_eq!(one_frame(&mut body).await, "0 ");
    assert_eq!((limit.inflight(), bulkhead.in_flight()), (0, 1));
    drop(body);
    settle(|| (limit.inflight(), bulkhead.in_flight()) == (0, 0)).await;
}

/// A handler still reading the request body when the caller's deadline
/// passes reads `DeadlineExceeded`.
#[tokio::test]
async fn http_server_preset_holds_request_bodies_to_the_deadline() {
    let seen: Arc<Mutex<Vec<Option<RejectionKind>>>> = Arc::default();
    let s = seen.clone();
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let addr = serve_axum(
        Router::new()
            .route(
                "/upload",
                post(move |body: axum::body::Body| {
                    let s = s.clone();
                    async move {
                        let read = body.collect().await;
                        let kind = read.err().map(|e| {
                            let e: seawall::BoxError = e.into();
                            rejection_of(&e).map(|r| r.kind())
                        });
                        s.lock().unwrap().push(kind.flatten());
                        "read"
                    }
                }),
            )
            .layer(stack),
    )
    .await;
    let client: Client<HttpConnector, BoxBody<Bytes, Infallible>> =
        Client::builder(TokioExecutor::new()).build_http();
    let upload = |second_after: Duration| {
        let first = futures::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(
            Bytes::from("part one "),
        ))]);
        let second = futures::stream::once(async move {
            tokio::time::sleep(second_after).await;
            Ok(http_body::Frame::data(Bytes::from("part two")))
        });
        http::Request::post(format!("http://{addr}/upload"))
            .header("x-request-timeout-ms", "500")
            .body(BoxBody::new(StreamBody::new(first.chain(second))))
            .unwrap()
    };

    // In time: read whole.
    let res = client
        .request(upload(Duration::from_millis(100)))
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "read");
    // Too late: the handler's read fails at the deadline (500 ms less the
    // 10 ms hop margin); its answer comes after the deadline, and the caller
    // gets the deadline's own answer (not a connection closed without one).
    let start = tokio::time::Instant::now();
    let res = client
        .request(upload(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert!(start.elapsed() >= Duration::from_millis(490));
    settle(|| seen.lock().unwrap().len() == 2).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some(RejectionKind::DeadlineExceeded)]
    );
}

/// A seawall client calling a seawall server: the server holds its answer
/// to the deadline the client sent, less its 10 ms margin, and cuts it
/// first; the client reports that cut as its deadline passing
/// (`DeadlineExceeded`, named after its `.propagate` part), not as an I/O
/// error.
#[tokio::test]
async fn a_cut_by_the_server_preset_reads_as_the_clients_deadline() {
    let server = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let addr = serve_axum(
        Router::new()
            .route(
                "/stream",
                get(|| async { chunks(20, Duration::from_millis(50), false) }),
            )
            .layer(server),
    )
    .await;
    let stack = ClientStack::http("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client = stack.layer(hyper());
    let res = client.oneshot(get_req(addr, "/stream")).await.unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    let rejection = rejection_of(&err).expect("a seawall rejection");
    assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
    assert_eq!(rejection.name(), "dep.propagate");
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures), (1, 1));
}

// ---------------------------------------------------------------- gRPC

/// How the raw streaming server ends its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `OK` trailers after the messages.
    Ok,
    /// `UNAVAILABLE` in the trailers after the messages.
    Unavailable,
    /// `DEADLINE_EXCEEDED` in the trailers after the messages.
    DeadlineExceeded,
}

/// A tonic server answering every call with `messages` replies, one every
/// `every` (the first at once), then trailers saying `end`.
#[derive(Clone)]
struct Streamer {
    messages: usize,
    every: Duration,
    end: End,
    hits: Arc<AtomicUsize>,
}

impl NamedService for Streamer {
    const NAME: &'static str = "demo.Greeter";
}

fn framed(text: &str) -> Bytes {
    use prost::Message as _;
    let reply = HelloReply {
        message: text.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(reply.len() as u32).to_be_bytes());
    out.extend_from_slice(&reply);
    Bytes::from(out)
}

impl tower::Service<http::Request<Body>> for Streamer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let (n, every, end) = (self.messages, self.every, self.end);
        Box::pin(async move {
            let messages = futures::stream::iter(0..n).then(move |i| async move {
                if i > 0 {
                    tokio::time::sleep(every).await;
                }
                Ok::<_, Status>(http_body::Frame::data(framed(&format!("m{i}"))))
            });
            let mut trailers = http::HeaderMap::new();
            let code = match end {
                End::Ok => "0",
                End::Unavailable => "14",
                End::DeadlineExceeded => "4",
            };
            trailers.insert("grpc-status", code.parse().unwrap());
            let tail = futures::stream::iter([Ok(http_body::Frame::trailers(trailers))]);
            Ok(http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::new(StreamBody::new(messages.chain(tail))))
                .unwrap())
        })
    }
}

async fn serve_streamer(messages: usize, every: Duration, end: End) -> (Channel, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = Streamer {
        messages,
        every,
        end,
        hits: hits.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(svc);
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, hits)
}

/// A server-streaming call through a tonic client: the stream of replies.
async fn stream_hello<S>(svc: S) -> Result<tonic::Streaming<HelloReply>, Status>
where
    S: tonic::client::GrpcService<Body>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<seawall::BoxError>,
{
    let mut grpc = tonic::client::Grpc::new(svc);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
    let path = http::uri::PathAndQuery::from_static("/demo.Greeter/SayHellos");
    let req = tonic::Request::new(HelloRequest {
        name: "stream".into(),
        work_ms: 0,
    });
    Ok(grpc.server_streaming(req, path, codec).await?.into_inner())
}

/// Every message of a stream, then how it ended.
async fn drain(mut stream: tonic::Streaming<HelloReply>) -> (Vec<String>, Option<Code>) {
    let mut got = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => got.push(m.message),
            Ok(None) => return (got, None),
            Err(status) => return (got, Some(status.code())),
        }
    }
}

fn grpc_preset() -> seawall::stack::ClientStackBuilder<
    seawall::retry::grpc::GrpcRetry,
    seawall::grpc::GrpcStatusClassifier,
    seawall::stack::GrpcTransportPart,
    seawall::stack::GrpcOutermost,
> {
    ClientStack::grpc("dep")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(600))
}

#[tokio::test]
async fn grpc_client_preset_counts_a_status_in_trailers_after_messages() {
    // (messages, end, calls the breaker counts, failures among them): a
    // server's `UNAVAILABLE` in the trailers is "busy", as in a head, and
    // counts neither way (it was a failure here, busy in a head: a 20 ms
    // race); a stream (two messages or more) that a deadline ended after
    // it delivered counts nothing: a budget ended it, not a fault (50
    // streams cut at one instant opened a breaker in an outside trial);
    // one message then `DEADLINE_EXCEEDED` is a unary answer that timed
    // out: a failure.
    for (messages, end, calls, failures) in [
        (2, End::Ok, 1, 0),
        (2, End::Unavailable, 0, 0),
        (2, End::DeadlineExceeded, 0, 0),
        (1, End::DeadlineExceeded, 1, 1),
    ] {
        let (channel, hits) = serve_streamer(messages, Duration::from_millis(20), end).await;
        let stack = grpc_preset().build().unwrap();
        let (bulkhead, breaker) = (stack.bulkhead_handle(), stack.breaker_handle());
        let stream = stream_hello(stack.layer(channel)).await.unwrap();
        assert_eq!(bulkhead.in_flight(), 1, "{end:?}: streaming");
        let (got, code) = drain(stream).await;
        assert_eq!(got, ["m0", "m1"][..messages], "{end:?}");
        let expected = match end {
            End::Ok => None,
            End::Unavailable => Some(Code::Unavailable),
            End::DeadlineExceeded => Some(Code::DeadlineExceeded),
        };
        assert_eq!(code, expected);
        assert_eq!(bulkhead.in_flight(), 0, "{end:?}: given back");
        let m = breaker.metrics();
        assert_eq!((m.calls, m.failures), (calls, failures), "{end:?}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "{end:?}: a started stream is not retried"
        );
    }
}

#[tokio::test]
async fn grpc_client_preset_cuts_a_stream_at_the_deadline_and_frees_a_dropped_one() {
    // 30 messages 100 ms apart outlive the 2 s budget: the stream ends
    // DEADLINE_EXCEEDED after the messages sent in time, counted neither
    // way (a budget ended a stream that delivered); the permit is back. (The 600 ms attempt timeout does not cut
    // it: the preset would not retry a timed-out attempt, so the attempt
    // runs on under the request's deadline.)
    let (channel, _) = serve_streamer(30, Duration::from_millis(100), End::Ok).await;
    let stack = grpc_preset().build().unwrap();
    let (bulkhead, breaker) = (stack.bulkhead_handle(), stack.breaker_handle());
    let svc = stack.layer(channel);
    let start = tokio::time::Instant::now();
    let (got, code) = drain(stream_hello(svc.clone()).await.unwrap()).await;
    assert_eq!(code, Some(Code::DeadlineExceeded));
    assert!(start.elapsed() >= Duration::from_millis(1900));
    assert!(
        (15..30).contains(&got.len()),
        "m0 at once, then one every 100 ms, until 2 s: {got:?}"
    );
    assert_eq!(bulkhead.in_flight(), 0);
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures), (0, 0));

    // Dropped after two messages: given back, counted as its head said.
    let mut stream = stream_hello(svc).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(bulkhead.in_flight(), 1);
    drop(stream);
    assert_eq!(bulkhead.in_flight(), 0);
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures), (1, 0));
}

/// The outside trial's case: 50 streams opened together through one
/// client preset all outlive its budget and are cut at one instant. They
/// delivered; a budget ended them: the breaker counts none of them, stays
/// closed, and the next call is let through (50 failures in a row opened
/// it before, and it refused the stack's healthy unary calls).
#[tokio::test]
async fn fifty_streams_cut_together_by_the_budget_do_not_open_the_breaker() {
    let (channel, _) = serve_streamer(30, Duration::from_millis(100), End::Ok).await;
    let stack = grpc_preset().build().unwrap();
    let breaker = stack.breaker_handle();
    let svc = stack.layer(channel);
    let streams: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { drain(stream_hello(svc).await.unwrap()).await })
        })
        .collect();
    for s in streams {
        let (got, code) = s.await.unwrap();
        assert_eq!(code, Some(Code::DeadlineExceeded));
        assert!(got.len() >= 15, "{}", got.len());
    }
    let m = breaker.metrics();
    assert_eq!((m.calls, m.failures), (0, 0));
    assert_eq!(breaker.state(), seawall::observe::State::Closed);
    // The next call goes through (and is cut the same way).
    let (got, _) = drain(stream_hello(svc).await.unwrap()).await;
    assert!(!got.is_empty());
}

/// A bidirectional echo server: one reply for each request message, as it
/// comes (gRPC frames: a flag byte, a 4-byte length, the message).
#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "demo.Greeter";
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let incoming = req.into_body().into_data_stream();
            let replies = futures::stream::unfold(
                (incoming, bytes::BytesMut::new()),
                |(mut incoming, mut buf)| async move {
                    use prost::Message as _;
                    loop {
                        if buf.len() >= 5 {
                            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                            if buf.len() >= 5 + len {
                                let frame = buf.split_to(5 + len);
                                let req = HelloRequest::decode(&frame[5..]).ok()?;
                                let reply = framed(&format!("pong {}", req.name));
                                return Some((
                                    Ok::<_, Status>(http_body::Frame::data(reply)),
                                    (incoming, buf),
                                ));
                            }
                        }
                        match incoming.next().await {
                            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                            _ => return None,
                        }
                    }
                },
            );
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let tail = futures::stream::iter([Ok(http_body::Frame::trailers(trailers))]);
            Ok(http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::new(StreamBody::new(replies.chain(tail))))
                .unwrap())
        })
    }
}

/// A ping-pong bidirectional call through the gRPC client preset: the
/// client sends its next message only after the reply to the last. The
/// call goes out at its first message (the preset does not wait for the
/// request stream to end before sending it) and is not retried.
#[tokio::test]
async fn grpc_client_preset_sends_a_ping_pong_bidirectional_call_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(Echo);
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let stack = grpc_preset().build().unwrap();
    let bulkhead = stack.bulkhead_handle();
    let mut grpc = tonic::client::Grpc::new(stack.layer(channel));
    let (tx, rx) = tokio::sync::mpsc::channel::<HelloRequest>(1);
    let ping = |name: &str| HelloRequest {
        name: name.into(),
        work_ms: 0,
    };
    tx.send(ping("1")).await.unwrap();
    let call = async {
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
        let path = http::uri::PathAndQuery::from_static("/demo.Greeter/Chat");
        let requests =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut replies = grpc
            .streaming(tonic::Request::new(requests), path, codec)
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        for next in ["2", "3"] {
            got.push(replies.message().await.unwrap().unwrap().message);
            tx.send(ping(next)).await.unwrap();
        }
        got.push(replies.message().await.unwrap().unwrap().message);
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call waited for its request stream to end");
    assert_eq!(got, ["pong 1", "pong 2", "pong 3"]);
    assert_eq!(bulkhead.in_flight(), 0);
}

// ---------------------------------------------------------------- drops

mod drops {
    //! 10^4 streamed calls through the HTTP client preset around the HTTP
    //! server preset (in process, paused time: deterministic), each dropped
    //! at a random point — before its head, after k chunks, or read to the
    //! end — with random chunk counts, delays, failures and 500s. Every
    //! permit, place and probe slot comes back.

    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use seawall::BoxError;
    use seawall::observe::State;

    type Answer = axum::body::Body;

    /// The handler: the answer the request's headers ask for.
    async fn handler<B>(req: http::Request<B>) -> Result<http::Response<Answer>, BoxError> {
        let num = |name: &str| -> u64 {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (head_ms, chunks, every_ms, end) = (
            num("x-head-ms"),
            num("x-chunks"),
            num("x-every-ms"),
            num("x-end"),
        );
        tokio::time::sleep(Duration::from_millis(head_ms)).await;
        let frames = futures::stream::iter(0..chunks).then(move |i| async move {
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(format!("{i}"))))
        });
        let tail = futures::stream::iter(
            (end == 1).then(|| Err::<http_body::Frame<Bytes>, BoxError>("broken".into())),
        );
        let status = if end == 2 { 500 } else { 200 };
        Ok(http::Response::builder()
            .status(status)
            .body(axum::body::Body::new(StreamBody::new(frames.chain(tail))))?)
    }

    /// A random call; in an outage, every answer is a 500.
    fn request(rng: &mut SmallRng, outage: bool) -> http::Request<Full<Bytes>> {
        // One call in a hundred streams slowly enough to be cut by the
        // attempt's deadline (500 ms).
        let every = if rng.random_ratio(1, 100) {
            200
        } else {
            rng.random_range(0..3)
        };
        http::Request::get("http://dep/stream")
            .header("x-head-ms", rng.random_range(0..3).to_string())
            .header("x-chunks", rng.random_range(0..5).to_string())
            .header("x-every-ms", every.to_string())
            .header(
                "x-end",
                if outage { 2 } else { rng.random_range(0..20) }.to_string(),
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    /// How far the reader goes.
    #[derive(Clone, Copy)]
    enum Drop {
        /// Gives up on the head after this many ms.
        Head(u64),
        /// Reads this many frames, then drops the body.
        After(usize),
        /// Reads to the end.
        End,
    }

    /// Responses whose body held something for the layers above when it
    /// came back.
    static HELD: AtomicUsize = AtomicUsize::new(0);

    /// `Some(true)`: a response came back; `Some(false)`: the breaker
    /// refused; `None`: given up before the head, or another error.
    async fn one<S, RB>(svc: S, req: http::Request<Full<Bytes>>, drop_at: Drop) -> Option<bool>
    where
        S: tower::Service<
                http::Request<Full<Bytes>>,
                Response = http::Response<seawall::body::CallBody<RB>>,
                Error = BoxError,
            >,
        RB: http_body::Body<Data = Bytes>,
        RB::Error: Into<BoxError>,
    {
        let call = svc.oneshot(req);
        let res = match drop_at {
            Drop::Head(ms) => match tokio::time::timeout(Duration::from_millis(ms), call).await {
                Ok(res) => res,
                Err(_) => return None,
            },
            _ => call.await,
        };
        let res = match res {
            Ok(res) => res,
            Err(e) => {
                let kind = rejection_of(&e).map(|r| r.kind());
                return (kind == Some(RejectionKind::CircuitOpen)).then_some(false);
            }
        };
        if res.body().holds() {
            HELD.fetch_add(1, Ordering::Relaxed);
        }
        let mut body = Box::pin(res.into_body());
        let frames = match drop_at {
            Drop::After(k) => k,
            _ => usize::MAX,
        };
        for _ in 0..frames {
            match body.frame().await {
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        Some(true)
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_streams_dropped_at_random_points_leave_every_place_free() {
        let client_stack = ClientStack::http("dep")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(500))
            .bulkhead(|b| b.max_concurrent(8))
            .build()
            .unwrap();
        let server_stack = ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .build()
            .unwrap();
        let (client_bulkhead, breaker) = (
            client_stack.bulkhead_handle(),
            client_stack.breaker_handle(),
        );
        let (limit, server_bulkhead) = (
            server_stack.adaptive_limit().clone(),
            server_stack.bulkhead_handle(),
        );
        let server = server_stack.layer(tower::service_fn(handler));
        // The server answers errors as responses (Infallible): the client's
        // transport error type is a BoxError.
        let transport =
            tower::ServiceExt::map_err(server, |e: Infallible| -> BoxError { match e {} });
        let client = client_stack.layer(transport);

        let mut rng = SmallRng::seed_from_u64(12);
        let mut opened = 0;
        let (mut admitted, mut refused) = (0, 0);
        for batch in 0..1250 {
            // A short outage now and then opens the breaker (7 batches of 8:
            // once retries of failures save nothing, they are not retried,
            // and the breaker opens on 50 failures in a row); the calls after
            // its open time are its half-open probes, dropped like the rest.
            let outage = batch % 125 < 7;
            let calls: Vec<_> = (0..8)
                .map(|_| {
                    let drop_at = match rng.random_range(0..3) {
                        0 => Drop::Head(rng.random_range(0..4)),
                        1 => Drop::After(rng.random_range(0..4)),
                        _ => Drop::End,
                    };
                    one(client.clone(), request(&mut rng, outage), drop_at)
                })
                .collect();
            for got in futures::future::join_all(calls).await {
                match got {
                    Some(true) => admitted += 1,
                    Some(false) => refused += 1,
                    None => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if breaker.state() == State::Open {
                opened += 1;
            }
            // Between batches nothing is in flight: everything came back.
            assert_eq!(client_bulkhead.in_flight(), 0);
            assert_eq!((limit.inflight(), server_bulkhead.in_flight()), (0, 0));
        }
        assert!(opened >= 10, "each outage opened the breaker: {opened}");
        assert!(
            admitted > 5000 && refused > 0,
            "{admitted} admitted, {refused} refused"
        );
        let held = HELD.load(Ordering::Relaxed);
        assert!(held > 2000, "bodies held their call: {held}");

        // No half-open probe slot leaked: after the open time, probes are
        // admitted and close the breaker again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..20 {
            let req = http::Request::get("http://dep/ok")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = client.clone().oneshot(req).await.expect("admitted");
            let _ = res.into_body().collect().await.unwrap();
        }
        assert_eq!(breaker.state(), State::Closed);
    }
}

// ---------------------------------------------------------------- in process

mod in_process {
    //! The same rules without sockets, in paused time (exact figures).

    use super::*;
    use futures::SinkExt;
    use seawall::BoxError;
    use seawall::observe::State;

    type Frames = futures::channel::mpsc::Receiver<Result<http_body::Frame<Bytes>, BoxError>>;

    /// A backend whose answer's body is fed by a task: `n` chunks, one
    /// every `every` (the first at once), produced whether or not anyone
    /// reads them (as a socket buffers them); the channel closes after the
    /// last one if `close`.
    fn fed(n: usize, every: Duration, close: bool) -> http::Response<StreamBody<Frames>> {
        let (mut tx, rx) = futures::channel::mpsc::channel(64);
        tokio::spawn(async move {
            for i in 0..n {
                if i > 0 {
                    tokio::time::sleep(every).await;
                }
                let _ = tx
                    .send(Ok(http_body::Frame::data(Bytes::from(format!("{i} ")))))
                    .await;
            }
            if !close {
                // Keep the channel open: the body waits for more.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        http::Response::new(StreamBody::new(rx))
    }

    fn preset() -> seawall::stack::ClientStackLayer<
        seawall::retry::http::HttpRetry,
        seawall::http::HttpStatusClassifier,
        seawall::deadline::propagate::PropagateDeadlineLayer,
        seawall::stack::HttpOutermost,
    > {
        ClientStack::http("dep")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    }

    fn get() -> http::Request<Full<Bytes>> {
        http::Request::get("http://dep/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    /// Streams that last 90 % of the attempt timeout (past the stack's
    /// slow-call threshold of 80 %) are healthy: the breaker judges a
    /// stream's speed by its head, and stays closed after 40 of them.
    #[tokio::test(start_paused = true)]
    async fn long_healthy_streams_are_not_slow_calls() {
        let stack = preset();
        let breaker = stack.breaker_handle();
        let client = stack.layer(tower::service_fn(|_: http::Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(fed(10, Duration::from_millis(50), true))
        }));
        for _ in 0..40 {
            let start = tokio::time::Instant::now();
            let res = client.clone().oneshot(get()).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 20);
            assert_eq!(start.elapsed(), Duration::from_millis(450));
        }
        // The window holds the last 10 s of calls, each counted at its
        // head: 20 of them, enough (20) for the breaker to judge, none slow.
        let m = breaker.metrics();
        assert_eq!((m.calls, m.failures, m.slow_calls), (20, 0, 0));
        assert_eq!(breaker.state(), State::Closed);
    }

    /// A body that fails after a good head opens the breaker from the
    /// instant the body failed (its open time is not shortened by the time
    /// the body took), though the call counts in the window at its head.
    #[tokio::test(start_paused = true)]
    async fn a_failure_at_the_body_end_opens_from_then() {
        let stack = ClientStack::http("dep")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(500))
            .breaker(|b| {
                b.consecutive_failures(1)
                    .open_duration(Duration::from_secs(5))
            })
            .build()
            .unwrap();
        let breaker = stack.breaker_handle();
        let client = stack.layer(tower::service_fn(|_: http::Request<Full<Bytes>>| async {
            let (mut tx, rx) = futures::channel::mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(http_body::Frame::data(Bytes::from_static(b"part"))))
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tx
                    .send(Err::<http_body::Frame<Bytes>, BoxError>("reset".into()))
                    .await;
            });
            Ok::<_, BoxError>(http::Response::new(StreamBody::new(rx)))
        }));
        let start = tokio::time::Instant::now();
        let res = client.clone().oneshot(get()).await.unwrap();
        assert_eq!(breaker.state(), State::Closed, "the head looked fine");
        assert!(res.into_body().collect().await.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.retry_after(), Some(Duration::from_secs(5)));
        // 5 s after the head, the breaker is still open (0.3 s to go).
        tokio::time::advance(Duration::from_millis(4_700)).await;
        assert_eq!(breaker.retry_after(), Some(Duration::from_millis(300)));
        let refused = client.clone().oneshot(get()).await.unwrap_err();
        let view = seawall::error::rejection(refused.as_ref()).expect("a rejection");
        assert_eq!(view.kind(), seawall::error::RejectionKind::CircuitOpen);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(
            client.clone().oneshot(get()).await.is_ok(),
            "a probe goes through"
        );
        // Its answer, dropped unread with no read waiting, counts as its
        // head said.
        assert_eq!(breaker.state(), State::Closed);
    }

    /// A reader that comes back after the deadline gets what arrived in
    /// time; only a wait for more is cut (and counted).
    #[tokio::test(start_paused = true)]
    async fn a_late_reader_gets_what_came_in_time() {
        let stack = preset();
        let breaker = stack.breaker_handle();
        let client = stack.layer(tower::service_fn(|_: http::Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(fed(3, Duration::from_millis(100), false))
        }));
        let res = client.clone().oneshot(get()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut body = Box::pin(res.into_body());
        for want in ["0 ", "1 ", "2 "] {
            assert_eq!(one_frame(&mut body).await, want);
        }
        assert_eq!(breaker.metrics().calls, 0, "not judged yet");
        // The producer sent everything but never closed its channel: the
        // reader now waits for more, past the deadline: cut.
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(
            rejection_of(&err).map(|r| r.kind()),
            Some(RejectionKind::DeadlineExceeded)
        );
        let m = breaker.metrics();
        assert_eq!((m.calls, m.failures), (1, 1));

        // Closed in time and read late: whole, a success.
        let client = preset().layer(tower::service_fn(|_: http::Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(fed(3, Duration::from_millis(100), true))
        }));
        let res = client.oneshot(get()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "0 1 2 ");
    }

    /// A stream whose producer is always ahead of a slow reader is still
    /// held to the attempt's deadline (500 ms): frames are handed over up to
    /// it, then the body ends with the deadline, and the permit is back.
    #[tokio::test(start_paused = true)]
    async fn a_stream_always_ready_for_a_slow_reader_is_cut_at_its_deadline() {
        let stack = ClientStack::http("dep")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let (bulkhead, breaker) = (stack.bulkhead_handle(), stack.breaker_handle());
        let client = stack.layer(tower::service_fn(|_: http::Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(fed(100, Duration::from_millis(1), true))
        }));
        let start = tokio::time::Instant::now();
        let res = client.oneshot(get()).await.unwrap();
        let mut body = pin!(res.into_body());
        let mut read = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => read += 1,
                Some(Err(e)) => break e,
                None => panic!("all {read} frames read: the deadline never cut the stream"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            rejection_of(&err).map(|r| r.kind()),
            Some(RejectionKind::DeadlineExceeded)
        );
        // A frame every 50 ms up to 500 ms, and one more within the grace.
        assert!((10..=12).contains(&read), "{read} frames");
        assert!(
            start.elapsed() <= Duration::from_millis(600),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(bulkhead.in_flight(), 0);
        // The reader was late, not the dependency: counted as the head
        // said, a success.
        let m = breaker.metrics();
        assert_eq!((m.calls, m.failures), (1, 0));
    }

    /// The client throttle, held to the body's end, counts an accept only
    /// for a body that ends well; a body that fails is a request without an
    /// accept; one dropped half way counts as its head said, an accept.
    #[tokio::test(start_paused = true)]
    async fn the_throttle_counts_an_accept_when_the_body_ends_well() {
        let throttle = seawall::ThrottleLayer::builder()
            .build()
            .unwrap()
            .until_body_end();
        let svc = tower::ServiceBuilder::new()
            .layer(throttle.clone())
            .layer(seawall::deadline::propagate::PropagateDeadlineLayer::new())
            .service(tower::service_fn(
                |req: http::Request<Full<Bytes>>| async move {
                    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> =
                        if req.uri().path() == "/broken" {
                            vec![
                                Ok(http_body::Frame::data(Bytes::from("a"))),
                                Err("broken".into()),
                            ]
                        } else {
                            vec![Ok(http_body::Frame::data(Bytes::from("a")))]
                        };
                    Ok::<_, BoxError>(http::Response::new(StreamBody::new(futures::stream::iter(
                        frames,
                    ))))
                },
            ));
        let call = |path: &'static str| {
            svc.clone().oneshot(
                http::Request::get(path)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        };
        let res = call("/ok").await.unwrap();
        assert_eq!(throttle.totals(), (1, 0), "judged at the end");
        res.into_body().collect().await.unwrap();
        assert_eq!(throttle.totals(), (1, 1));
        let res = call("/broken").await.unwrap();
        assert!(res.into_body().collect().await.is_err());
        assert_eq!(throttle.totals(), (2, 1));
        let res = call("/ok").await.unwrap();
        assert_eq!(throttle.totals(), (3, 1));
        drop(res);
        assert_eq!(
            throttle.totals(),
            (3, 2),
            "a dropped body: its head's accept"
        );
    }

    /// A server preset serving long streams (25 s) learns from their heads:
    /// the adaptive limit's latency sample is taken at each head, so its
    /// windows close while the streams flow.
    #[tokio::test(start_paused = true)]
    async fn the_server_limit_learns_from_stream_heads() {
        let stack = ServerStack::http("api")
            .total_budget(Duration::from_secs(30))
            .build()
            .unwrap();
        let limit = stack.adaptive_limit().clone();
        let svc = stack.layer(tower::service_fn(|_: http::Request<_>| async {
            // 5 ms to the head, then a stream that lasts 25 s.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, BoxError>(fed(25, Duration::from_secs(1), true).map(axum::body::Body::new))
        }));
        let mut bodies = Vec::new();
        for _ in 0..25 {
            let res = svc
                .clone()
                .oneshot(http::Request::new(Full::new(Bytes::new())))
                .await
                .unwrap();
            bodies.push(Box::pin(res.into_body()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            limit.inflight(),
            0,
            "a stream's place is given back at its head"
        );
        assert!(
            limit.expected_rtt().is_some(),
            "a window closed on the heads' samples while the streams flow"
        );
        drop(bodies);
    }

    /// Streams whose heads come back at once (as an axum SSE route's do)
    /// give their adaptive-limit places back at the head and hold bulkhead
    /// permits: forty of them through the server preset leave its limit of
    /// 20 free for the next request. Held places locked the server: the
    /// first 20 streams took every place, no window closed (their heads
    /// were under `min_rtt`), and the 20 streams and every request after
    /// them were refused. A stack of their own with a bulkhead bounds
    /// streams.
    #[tokio::test(start_paused = true)]
    async fn stream_heads_give_the_server_limit_its_places_back() {
        let handler = tower::service_fn(|req: http::Request<_>| async move {
            if req.uri().path() == "/stream" {
                Ok::<_, BoxError>(fed(25, Duration::from_secs(1), true).map(axum::body::Body::new))
            } else {
                Ok(http::Response::new(axum::body::Body::from("hello")))
            }
        });
        let request = |path: &str| {
            http::Request::get(path)
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        for streams_bulkhead in [None, Some(30)] {
            let mut builder = ServerStack::http("api").total_budget(Duration::from_secs(30));
            if let Some(n) = streams_bulkhead {
                builder = builder.bulkhead(move |b| b.max_concurrent(n));
            }
            let stack = builder.build().unwrap();
            let (limit, bulkhead) = (stack.adaptive_limit().clone(), stack.bulkhead_handle());
            let svc = stack.layer(handler);
            let (mut bodies, mut refused) = (Vec::new(), Vec::new());
            for i in 0..40 {
                let res = svc.clone().oneshot(request("/stream")).await.unwrap();
                if res.status() == http::StatusCode::OK {
                    bodies.push(Box::pin(res.into_body()));
                } else {
                    let retry_after = res.headers().get(http::header::RETRY_AFTER).cloned();
                    refused.push((i, res.status().as_u16(), retry_after));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(limit.inflight(), 0, "no place is held past a head");
            assert_eq!(limit.limit(), 20);
            match streams_bulkhead {
                None => {
                    assert!(refused.is_empty(), "no stream refused: {refused:?}");
                    assert_eq!(bulkhead.in_flight(), 40, "every stream holds a permit");
                    let res = svc.clone().oneshot(request("/")).await.unwrap();
                    assert_eq!(
                        res.status(),
                        http::StatusCode::OK,
                        "a plain request is admitted"
                    );
                }
                Some(n) => {
                    let at: Vec<usize> = refused.iter().map(|r| r.0).collect();
                    assert_eq!(
                        at,
                        (n..40).collect::<Vec<_>>(),
                        "the bulkhead bounds streams"
                    );
                    assert!(
                        refused
                            .iter()
                            .all(|(_, status, retry)| *status == 503 && retry.is_some()),
                        "{refused:?}"
                    );
                    assert_eq!(bulkhead.in_flight(), n);
                }
            }
            drop(bodies);
            assert_eq!((limit.inflight(), bulkhead.in_flight()), (0, 0));
        }
    }

    /// A stream's producer, running after its handler returned, still reads
    /// the call's budget: the body is polled with the deadline as the
    /// task-local one.
    #[tokio::test(start_paused = true)]
    async fn a_stream_reads_its_budget_while_it_flows() {
        let stack = ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .build()
            .unwrap();
        let svc = stack.layer(tower::service_fn(|_: http::Request<_>| async {
            let chunks = futures::stream::iter(0..3).then(|_| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let left = seawall::deadline::remaining().map_or(0, |d| d.as_millis());
                Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(format!("{left} "))))
            });
            Ok::<_, BoxError>(http::Response::new(axum::body::Body::new(StreamBody::new(
                chunks,
            ))))
        }));
        let req = http::Request::builder()
            .header("x-request-timeout-ms", "500")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        // 500 ms less the 10 ms hop margin, less 10 ms per chunk.
        assert_eq!(body, "480 470 460 ");
    }
}
