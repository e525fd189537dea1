//! A tonic gRPC server behind seawall's recommended server stack
//! (`seawall::stack::ServerStack`, answered by `GrpcRejectionLayer`).
//!
//! ```text
//! GrpcRejectionLayer       (outermost) rejections -> real gRPC codes + grpc-retry-pushback-ms
//! DeadlineFromHeadersLayer the client's grpc-timeout, minus 5 ms (this example's; the presets take 10 ms)
//! DeadlineLayer            at most 10 s per call, enforced                 -> DEADLINE_EXCEEDED
//! RateLimitLayer           100 calls/s per client IP                       -> RESOURCE_EXHAUSTED
//! AdaptiveLimitLayer       adaptive concurrency limit (QueueDelay, 1..1000) -> UNAVAILABLE
//! BulkheadLayer            64 handlers at once, 16 waiting for <= 20 ms    -> UNAVAILABLE
//! AttemptTimeoutLayer      2 s per handler run                             -> DEADLINE_EXCEEDED
//! ```
//!
//! The service, `demo.Greeter/SayHello`, is written by hand in
//! `examples/common/greeter.rs` (prost messages, no `protoc`; the `.proto` is
//! in its docs). Its handler works `work_ms` and answers with the deadline
//! budget it received. The stack is in `examples/common/grpc_server_stack.rs`;
//! the integration test `tests/examples_grpc` runs the same code.
//!
//! # Run
//!
//! ```text
//! cargo run --example tonic_server --features tonic            # 127.0.0.1:50051
//! cargo run --example tonic_server --features tonic -- 50052   # or PORT=50052
//! cargo run --example tonic_client --features tonic            # in another terminal
//! ```
//!
//! # Try it
//!
//! With the `.proto` from `examples/common/greeter.rs` saved as `demo.proto`:
//!
//! ```text
//! # OK, with the budget the handler saw (800 ms asked, minus this example's 5 ms
//! # margin; the server presets take 10 ms):
//! grpcurl -plaintext -proto demo.proto -H 'grpc-timeout: 800m' \
//!   -d '{"name":"you","work_ms":300}' 127.0.0.1:50051 demo.Greeter/SayHello
//! #   { "message": "hello, you", "deadlineMs": "795", "budgetMs": "795", "leftMs": "495" }
//!
//! # DEADLINE_EXCEEDED (not tonic's CANCELLED): 100 ms budget, 500 ms of work
//! grpcurl -plaintext -proto demo.proto -H 'grpc-timeout: 100m' \
//!   -d '{"name":"you","work_ms":500}' 127.0.0.1:50051 demo.Greeter/SayHello
//! #   ERROR: Code: DeadlineExceeded  Message: deadline exceeded
//!
//! # UNAVAILABLE (shed) and RESOURCE_EXHAUSTED (rate limited) under load:
//! ghz --insecure --proto demo.proto --call demo.Greeter.SayHello \
//!   -d '{"name":"load","work_ms":1500}' -c 200 --rps 80 -z 10s 127.0.0.1:50051
//! #   80 calls/s of 1.5 s work want ~120 in flight: the adaptive limit (20 at first)
//! #   admits what it can and the rest is Unavailable at once, instead of queueing
//! ghz --insecure --proto demo.proto --call demo.Greeter.SayHello \
//!   -d '{"name":"flood"}' -c 50 -n 5000 127.0.0.1:50051
//! #   past 100 calls/s from one client: ResourceExhausted, with grpc-retry-pushback-ms
//! ```
//!
//! # What to look at
//!
//! Logs (stderr, target `seawall`, `seawall::observe::TracingHook`): each
//! rejection at DEBUG with `layer`, `name` (`greeter.rate_limit`,
//! `greeter.limit`, `greeter.bulkhead`, `greeter.deadline`,
//! `greeter.handler`, `greeter.ingress`), `reason` and `detail`. With `--features tonic,metrics`, Prometheus text on
//! `127.0.0.1:9001/metrics`: `seawall_rejections_total{layer,name,reason}`,
//! `seawall_calls_total{layer,name,outcome}`, `seawall_call_duration_seconds_bucket`,
//! `seawall_limit{layer="adaptive_limit",name="greeter.limit"}`.

#[path = "common/greeter.rs"]
mod greeter;
#[path = "common/grpc_server_stack.rs"]
mod grpc_server_stack;

use std::net::SocketAddr;

use seawall::Observer;
use seawall::observe::TracingHook;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use greeter::GreeterServer;
use grpc_server_stack::ServerConfig;

fn port() -> u16 {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(50051)
}

#[cfg(feature = "metrics")]
fn observer() -> Result<Observer, seawall::BoxError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(SocketAddr::from(([127, 0, 0, 1], 9001)))
        .with_recommended_naming(true)
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])?
        .install()?;
    Ok(Observer::new((
        TracingHook::new(),
        seawall::observe::MetricsHook::new(),
    )))
}

#[cfg(not(feature = "metrics"))]
fn observer() -> Result<Observer, seawall::BoxError> {
    Ok(Observer::new(TracingHook::new()))
}

#[tokio::main]
async fn main() -> Result<(), seawall::BoxError> {
    // seawall's events at DEBUG, everything else at INFO.
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(
            Targets::new()
                .with_target("seawall", Level::DEBUG)
                .with_default(Level::INFO),
        )
        .init();

    let cfg = ServerConfig {
        observer: observer()?,
        ..ServerConfig::default()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port()));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("demo.Greeter listening on {addr} (Ctrl-C to stop)");
    let server = grpc_server_stack::serve(listener, &cfg, GreeterServer::demo(), async {
        let _ = tokio::signal::ctrl_c().await;
    })?;
    server.await?;
    Ok(())
}
