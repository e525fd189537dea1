//! A tiny gRPC service, `demo.Greeter/SayHello`, written by hand (prost
//! messages, tonic's unary plumbing) so the examples need no `protoc`.
//! Shared by `examples/tonic_server.rs`, `examples/tonic_client.rs` and the
//! `examples_grpc` integration test.
//!
//! The equivalent `.proto`:
//!
//! ```text
//! syntax = "proto3";
//! package demo;
//! service Greeter { rpc SayHello(HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; uint64 work_ms = 2; }
//! message HelloReply {
//!   string message = 1;
//!   optional uint64 deadline_ms = 2;  // the call's deadline, on arrival
//!   optional uint64 budget_ms = 3;    // what this handler run may use, on arrival
//!   optional uint64 left_ms = 4;      // what is left after the work
//! }
//! ```
#![allow(dead_code)] // each includer uses a different part of this file

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use seawall::BoxError;
use seawall::deadline::{self, Deadline};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic_prost::ProstCodec;

/// The full method path.
pub const SAY_HELLO: &str = "/demo.Greeter/SayHello";

/// The request: who to greet, and how long the server should pretend to work.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub work_ms: u64,
}

/// The reply: the greeting, and the time budget the handler saw (each
/// absent when the call had no deadline).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Time left until the call's deadline, on arrival.
    #[prost(uint64, optional, tag = "2")]
    pub deadline_ms: Option<u64>,
    /// Time this handler run may use, on arrival: the call's deadline or the
    /// server's handler timeout, whichever comes first.
    #[prost(uint64, optional, tag = "3")]
    pub budget_ms: Option<u64>,
    /// Time left after the work.
    #[prost(uint64, optional, tag = "4")]
    pub left_ms: Option<u64>,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<HelloReply, Status>> + Send>>;
type Handler = Arc<dyn Fn(tonic::Request<HelloRequest>) -> HandlerFuture + Send + Sync>;

/// The server side of `demo.Greeter`, around a handler function.
#[derive(Clone)]
pub struct GreeterServer {
    handler: Handler,
}

impl GreeterServer {
    /// A server answering with `handler`.
    pub fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(tonic::Request<HelloRequest>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HelloReply, Status>> + Send + 'static,
    {
        GreeterServer {
            handler: Arc::new(move |req| Box::pin(handler(req))),
        }
    }

    /// The example's server: [`say_hello`].
    pub fn demo() -> Self {
        GreeterServer::new(say_hello)
    }
}

/// The example's handler: works `work_ms` (at most 60 s) and reports the
/// time budget it was given.
///
/// The budget comes two ways:
/// - the call's [`Deadline`] in the request's extensions (seawall's deadline
///   layers put it in the `http::Request`; tonic hands the extensions to the
///   handler), a value that can be moved to other tasks;
/// - `seawall::deadline::remaining()`, the task-local deadline of this run:
///   the call's deadline or the handler timeout, whichever comes first. Any
///   code the handler calls can read it, and a client stack's propagation
///   layer writes it on outbound calls.
pub async fn say_hello(req: tonic::Request<HelloRequest>) -> Result<HelloReply, Status> {
    let call_deadline = req.extensions().get::<Deadline>().map(|d| d.remaining());
    let budget = deadline::remaining();
    let HelloRequest { name, work_ms } = req.into_inner();
    tokio::time::sleep(Duration::from_millis(work_ms.min(60_000))).await;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(HelloReply {
        message: format!("hello, {name}"),
        deadline_ms: call_deadline.map(ms),
        budget_ms: budget.map(ms),
        left_ms: deadline::remaining().map(ms),
    })
}

impl NamedService for GreeterServer {
    const NAME: &'static str = "demo.Greeter";
}

impl tower::Service<http::Request<Body>> for GreeterServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let handler = self.handler.clone();
        Box::pin(async move {
            if req.uri().path() != SAY_HELLO {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let unary = tower::service_fn(move |req: tonic::Request<HelloRequest>| {
                let reply = handler(req);
                async move { reply.await.map(tonic::Response::new) }
            });
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok(grpc.unary(unary, req).await)
        })
    }
}

/// Calls `SayHello` through any gRPC client service: a plain `Channel` or a
/// seawall client stack around one.
pub async fn call_say_hello<S>(
    svc: S,
    req: tonic::Request<HelloRequest>,
) -> Result<HelloReply, Status>
where
    S: tonic::client::GrpcService<Body>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    let mut grpc = tonic::client::Grpc::new(svc);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    grpc.unary(
        req,
        PathAndQuery::from_static(SAY_HELLO),
        ProstCodec::<HelloRequest, HelloReply>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}
