//! seawall's gRPC server preset (`seawall::stack::ServerStack::grpc`) for a
//! tonic server, shared by `examples/tonic_server.rs` and the `examples_grpc`
//! integration test.
//!
//! Outermost first:
//!
//! ```text
//! GrpcRejectionLayer       rejections -> real gRPC codes + grpc-retry-pushback-ms
//! DeadlineFromHeadersLayer the client's grpc-timeout, minus a margin
//! MarkInboundAttemptLayer  records x-seawall-attempt (a retried call is not retried again below)
//! DeadlineLayer            caps it (and gives one to calls without) and enforces it -> DEADLINE_EXCEEDED
//! RateLimitLayer           per client IP                                -> RESOURCE_EXHAUSTED
//! AdaptiveLimitLayer       adaptive concurrency limit, priorities       -> UNAVAILABLE
//! BulkheadLayer            at most N handlers at once, a short queue    -> UNAVAILABLE
//! AttemptTimeoutLayer      one handler run may take at most this long   -> DEADLINE_EXCEEDED
//! ```
//!
//! The preset puts `GrpcRejectionLayer` outermost: tonic turns any other
//! error of a layer into a reset stream, which clients see as `INTERNAL` (or
//! `UNKNOWN`) without the pushback.
//!
//! tonic's own server also reads `grpc-timeout`, outside these layers, and
//! answers `CANCELLED` when it fires. The margin makes seawall's deadline the
//! earlier one, so the server answers `DEADLINE_EXCEEDED`, while the client
//! is still waiting, and the handler gets the budget it really has. (A
//! tonic client enforces the timeout it sends as well, reporting
//! `CANCELLED` locally; the gRPC client preset maps that to
//! `DEADLINE_EXCEEDED` too.)
#![allow(dead_code)] // each includer uses a different part of this file

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use http::Extensions;
use seawall::rate_limit::{PeerAddr, Quota};
use seawall::shed::QueueDelay;
use seawall::shed::criticality::FromHttpRequest;
use seawall::stack::ServerStack;
use seawall::{ConfigError, Observer};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};

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
            concurrency: (20, 1, 1000),
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
    let (initial, min, max) = cfg.concurrency;
    let algorithm = QueueDelay::builder()
        .initial_limit(initial)
        .min_limit(min)
        .max_limit(max)
        .build()?;
    // The gRPC preset: rejections answered as gRPC statuses with pushback,
    // the client's grpc-timeout read, the attempt header of a calling client
    // stack recorded. Layers named "greeter.ingress", "greeter.deadline",
    // "greeter.rate_limit", "greeter.limit", "greeter.bulkhead" and
    // "greeter.handler".
    let stack = ServerStack::grpc("greeter")
        .observer(cfg.observer.clone())
        .total_budget(cfg.max_budget)
        .handler_timeout(cfg.handler_timeout)
        .deadline_from_headers(|d| d.max(cfg.max_budget).margin(cfg.margin))
        .rate_limit(cfg.rate, |r| r.keyed(PeerAddr::with(peer_ip)))
        .adaptive_limit(|l| l.algorithm(algorithm).criticality(FromHttpRequest))
        .bulkhead(|b| {
            b.max_concurrent(cfg.max_concurrent)
                .max_queue(cfg.max_queue)
                .max_wait(cfg.max_wait)
        })
        .build()?;
    let router = Server::builder().layer(stack).add_service(greeter);
    Ok(router.serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown))
}
