//! seawall's recommended server stack for a tonic server, shared by
//! `examples/tonic_server.rs` and the `examples_grpc` integration test.
//!
//! Outermost first:
//!
//! ```text
//! GrpcRejectionLayer       rejections -> real gRPC codes + grpc-retry-pushback-ms
//! DeadlineFromHeadersLayer the client's grpc-timeout, minus a margin
//! DeadlineLayer            caps it (and gives one to calls without) and enforces it -> DEADLINE_EXCEEDED
//! RateLimitLayer           per client IP                                -> RESOURCE_EXHAUSTED
//! AdaptiveLimitLayer       adaptive concurrency limit, priorities       -> UNAVAILABLE
//! BulkheadLayer            at most N handlers at once, a short queue    -> UNAVAILABLE
//! AttemptTimeoutLayer      one handler run may take at most this long   -> DEADLINE_EXCEEDED
//! ```
//!
//! `GrpcRejectionLayer` must be outermost: tonic turns any other error of a
//! layer into a reset stream, which clients see as `INTERNAL` (or `UNKNOWN`)
//! without the pushback.
//!
//! tonic's own server also reads `grpc-timeout`, outside these layers, and
//! answers `CANCELLED` when it fires. The margin makes seawall's deadline the
//! earlier one, so the server answers `DEADLINE_EXCEEDED`, while the client
//! is still waiting, and the handler gets the budget it really has. (A
//! tonic client enforces the timeout it sends as well, reporting
//! `CANCELLED` locally; the `tonic_client` stack maps that to
//! `DEADLINE_EXCEEDED` too.)
#![allow(dead_code)] // each includer uses a different part of this file

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use http::Extensions;
use seawall::bulkhead::BulkheadLayer;
use seawall::deadline::{AttemptTimeoutLayer, DeadlineFromHeadersLayer, DeadlineLayer};
use seawall::grpc::GrpcRejectionLayer;
use seawall::rate_limit::{PeerAddr, Quota, RateLimitLayer};
use seawall::shed::criticality::FromHttpRequest;
use seawall::shed::{AdaptiveLimitLayer, Gradient2};
use seawall::{ConfigError, Observer};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tower::ServiceBuilder;

use super::greeter::GreeterServer;

/// The knobs of the server stack. `Default` holds the values the example
/// runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The longest budget a call gets, whatever its client asks for; also the
    /// budget of calls that carry no `grpc-timeout`.
    pub max_budget: Duration,
    /// Taken off the client's `grpc-timeout`.
    pub margin: Duration,
    /// Calls per client IP address.
    pub rate: Quota,
    /// The adaptive concurrency limit: (initial, min, max).
    pub concurrency: (usize, usize, usize),
    /// Handlers running at once.
    pub max_concurrent: usize,
    /// Calls waiting for a handler slot.
    pub max_queue: usize,
    /// How long a call may wait in the bulkhead queue.
    pub max_wait: Duration,
    /// How long one handler run may take.
    pub handler_timeout: Duration,
    /// Where every layer reports its events.
    pub observer: Observer,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_budget: Duration::from_secs(10),
            margin: Duration::from_millis(5),
            rate: Quota::per_second(100),
            concurrency: (20, 20, 200),
            max_concurrent: 64,
            max_queue: 16,
            max_wait: Duration::from_millis(20),
            handler_timeout: Duration::from_secs(2),
            observer: Observer::none(),
        }
    }
}

/// The client's IP address, from the connection info tonic puts in every
/// request.
fn peer_ip(ext: &Extensions) -> Option<IpAddr> {
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|a| a.ip())
}

/// Builds the stack (see the module docs) around `greeter` and returns the
/// server, to be awaited: it serves `listener` until `shutdown` completes.
pub fn serve<F>(
    listener: TcpListener,
    cfg: &ServerConfig,
    greeter: GreeterServer,
    shutdown: F,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send + use<F>, ConfigError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let obs = &cfg.observer;
    let (initial, min, max) = cfg.concurrency;
    let stack = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::new())
        .layer(
            DeadlineFromHeadersLayer::builder()
                .no_ms_header()
                .max(cfg.max_budget)
                .margin(cfg.margin)
                .name("client_timeout")
                .observer(obs.clone())
                .build()?,
        )
        .layer(
            DeadlineLayer::builder(cfg.max_budget)
                .name("request")
                .observer(obs.clone())
                .build()?,
        )
        .layer(
            RateLimitLayer::builder(cfg.rate)
                .keyed(PeerAddr::with(peer_ip))
                .name("per_client")
                .observer(obs.clone())
                .build()?,
        )
        .layer(
            AdaptiveLimitLayer::builder()
                .algorithm(
                    Gradient2::builder()
                        .initial_limit(initial)
                        .min_limit(min)
                        .max_limit(max)
                        .build()?,
                )
                .criticality(FromHttpRequest)
                .name("adaptive")
                .observer(obs.clone())
                .build()?,
        )
        .layer(
            BulkheadLayer::builder()
                .max_concurrent(cfg.max_concurrent)
                .max_queue(cfg.max_queue)
                .max_wait(cfg.max_wait)
                .name("handlers")
                .observer(obs.clone())
                .build()?,
        )
        .layer(
            AttemptTimeoutLayer::builder(cfg.handler_timeout)
                .name("handler")
                .observer(obs.clone())
                .build()?,
        );
    let router = Server::builder().layer(stack).add_service(greeter);
    Ok(router.serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown))
}
