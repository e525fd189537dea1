//! seawall's recommended client stack (`seawall::stack::ClientStack`) around
//! a tonic `Channel`, shared by `examples/tonic_client.rs` and the
//! `examples_grpc` integration test.
//!
//! Outermost first:
//!
//! ```text
//! GrpcRejectionLayer      client-side rejections -> tonic::Status with the real code
//! ReplayBodyLayer         buffers the request body so a retry can resend it
//! ClientStack "greeter":
//!   DeadlineLayer           the total budget of the call, retries included -> DEADLINE_EXCEEDED
//!   RetryLayer              UNAVAILABLE / per-try DEADLINE_EXCEEDED, jittered backoff, retry budget
//!   CircuitBreakerLayer     stops calling a server that keeps failing      -> UNAVAILABLE + pushback
//!   BulkheadLayer           caps this client's attempts in flight
//!   AttemptTimeoutLayer     each attempt gets min(per try, time left)
//!   PropagateDeadlineLayer  writes grpc-timeout = the attempt's time left (rounded down)
//! map_request             ReplayBody -> tonic Body
//! map_err                 tonic's own client-side timeout -> AttemptTimeout
//! Channel
//! ```
//!
//! The breaker sits below the retry layer, so it sees every attempt; the
//! attempt timeout below the breaker, so a hung attempt counts as a failure.
//! Each layer keeps its state in an `Arc`: clone the returned service freely,
//! every clone shares one budget and one breaker. Build one stack per server
//! (per dependency), not per call.
//!
//! A tonic `Channel` enforces the `grpc-timeout` it sends, too, at the same
//! instant as the attempt timeout above it, and fails with a transport error
//! that tonic calls `TimeoutExpired`. The `map_err` turns it into seawall's
//! `AttemptTimeout`, so the expiry means one thing whichever timer wins:
//! retried while budget is left, `DEADLINE_EXCEEDED` for the caller otherwise
//! (instead of `UNKNOWN`).
#![allow(dead_code)] // each includer uses a different part of this file

use std::convert::Infallible;
use std::error::Error;
use std::time::Duration;

use seawall::circuit_breaker::{CircuitBreakerHandle, SlidingWindow};
use seawall::classify::Classify;
use seawall::error::AttemptTimeout;
use seawall::grpc::{GrpcRejectionLayer, GrpcStatusClassifier};
use seawall::observe::Outcome;
use seawall::retry::grpc::GrpcRetry;
use seawall::retry::http::{ReplayBody, ReplayBodyLayer};
use seawall::stack::{ClientStack, DependencyFailures};
use seawall::{BoxError, ConfigError, Observer};
use tonic::Code;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceBuilder};

/// The knobs of the client stack. `Default` holds the values the example
/// runs with.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The budget of one call, every attempt and backoff included.
    pub total: Duration,
    /// The budget of one attempt (capped by what is left of `total`).
    pub per_try: Duration,
    /// Attempts per call, the first one included.
    pub max_attempts: u32,
    /// The breaker's sliding window, in calls; it opens when at least
    /// `minimum_calls` are in it and half of them failed.
    pub breaker_window: u32,
    /// Calls in the window before the breaker may open.
    pub minimum_calls: u32,
    /// How long the breaker stays open before letting probes through.
    pub open_duration: Duration,
    /// Attempts in flight to the server at once.
    pub max_concurrent: usize,
    /// Where every layer reports its events.
    pub observer: Observer,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            total: Duration::from_secs(2),
            per_try: Duration::from_millis(600),
            max_attempts: 3,
            breaker_window: 20,
            minimum_calls: 10,
            open_duration: Duration::from_secs(5),
            max_concurrent: 64,
            observer: Observer::none(),
        }
    }
}

/// Wraps `channel` in the client stack (see the module docs). Returns the
/// service to hand to `tonic::client::Grpc` (or a generated client's
/// `with_origin`/`new`) and a handle on the breaker.
#[allow(clippy::type_complexity)]
pub fn protect(
    channel: Channel,
    cfg: &ClientConfig,
) -> Result<
    (
        impl Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static,
        CircuitBreakerHandle,
    ),
    ConfigError,
> {
    // Layers named "greeter.deadline", "greeter.retry", "greeter.breaker",
    // "greeter.bulkhead", "greeter.attempt" and "greeter.propagate".
    let client_stack = ClientStack::builder("greeter")
        .observer(cfg.observer.clone())
        .total_budget(cfg.total)
        .attempt_timeout(cfg.per_try)
        .retry(|r| {
            // UNAVAILABLE: the server did not process the call. An attempt
            // that ran out of its per-try time on the server comes back as
            // DEADLINE_EXCEEDED: retry it too, as SayHello is idempotent.
            // (No retry starts without enough of the total budget left.)
            r.policy(GrpcRetry::new().with_code(Code::DeadlineExceeded))
                .max_attempts(cfg.max_attempts)
        })
        .breaker(|b| {
            b.window(SlidingWindow::count(cfg.breaker_window))
                .minimum_calls(cfg.minimum_calls)
                .failure_rate_threshold(0.5)
                .open_duration(cfg.open_duration)
                .classifier(dependency_failures as Classifier)
        })
        .bulkhead(|b| b.max_concurrent(cfg.max_concurrent))
        .propagate_deadline(|p| p.no_ms_header())
        .build()?;
    let handle = client_stack.breaker_handle();
    let stack = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::new())
        .layer(ReplayBodyLayer::default())
        .layer(client_stack)
        .map_request(|req: http::Request<ReplayBody<Body>>| req.map(Body::new))
        .map_err(channel_timeout_as_attempt_timeout)
        .service(channel);
    Ok((stack, handle))
}

type Classifier = fn(Result<&http::Response<Body>, &BoxError>) -> Outcome;

/// The breaker's classifier: a gRPC status in the response head
/// (trailers-only answers: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN,
/// RESOURCE_EXHAUSTED fail; NOT_FOUND and the like say nothing about the
/// server's health), and for errors the stack's `DependencyFailures` (every
/// error fails but this client's own full bulkhead, which is not counted).
fn dependency_failures(result: Result<&http::Response<Body>, &BoxError>) -> Outcome {
    match result {
        Ok(_) => GrpcStatusClassifier::new().classify(result),
        Err(_) => DependencyFailures.classify(result),
    }
}

/// The `Channel`'s own expiry of the `grpc-timeout` it sent, as seawall's
/// `AttemptTimeout` (named like the attempt timeout layer); other errors as
/// they are.
fn channel_timeout_as_attempt_timeout(err: tonic::transport::Error) -> BoxError {
    let mut cur: Option<&(dyn Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if e.is::<tonic::TimeoutExpired>() {
            return AttemptTimeout::new("attempt").into();
        }
        cur = e.source();
    }
    err.into()
}
