//! seawall's gRPC client preset (`seawall::stack::ClientStack::grpc`) around
//! a tonic `Channel`, shared by `examples/tonic_client.rs` and the
//! `examples_grpc` integration test.
//!
//! The preset brings what gRPC needs (outermost first):
//!
//! ```text
//! StatusErrorsLayer       client-side errors -> tonic::Status with the real code, pushback, the error as its source
//! ReplayBodyLayer         keeps the request body so a retry can resend it
//! DeadlineLayer           the total budget of the call, retries included -> DEADLINE_EXCEEDED
//! RetryLayer              UNAVAILABLE (+ what you opt in), pushback honoured, retry budget
//! CircuitBreakerLayer     counts INTERNAL/UNKNOWN/DATA_LOSS/DEADLINE_EXCEEDED/CANCELLED,
//!                         and UNAVAILABLE when no server answered; "busy" (a server's
//!                         UNAVAILABLE, RESOURCE_EXHAUSTED) and this client's own
//!                         refusals are not counted                    -> UNAVAILABLE + pushback
//! BulkheadLayer           caps this client's attempts in flight
//! AttemptTimeoutLayer     each attempt gets min(per try, time left)
//! PropagateDeadlineLayer  grpc-timeout = the attempt's time left
//! TonicTransport          the Channel's own timeout -> attempt timeout; a failure sent as
//!                         headers then trailers is read like a trailers-only one
//! Channel
//! ```
//!
//! Each layer keeps its state in an `Arc`: clone the returned service freely,
//! every clone shares one budget and one breaker. Build one stack per server
//! (per dependency), not per call.
#![allow(dead_code)] // each includer uses a different part of this file

use std::time::Duration;

use seawall::circuit_breaker::{CircuitBreakerHandle, SlidingWindow};
use seawall::retry::grpc::GrpcRetry;
use seawall::stack::{ClientStack, GrpcClient};
use seawall::{ConfigError, Observer};
use tonic::Code;
use tonic::transport::Channel;
use tower::Layer;

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

/// Wraps `channel` in the gRPC client preset. Returns the service to hand to
/// `tonic::client::Grpc` (or a generated client's `new`) and a handle on the
/// breaker.
pub fn protect(
    channel: Channel,
    cfg: &ClientConfig,
) -> Result<(GrpcClient<Channel>, CircuitBreakerHandle), ConfigError> {
    // Layers named "greeter.deadline", "greeter.retry", "greeter.breaker",
    // "greeter.bulkhead", "greeter.attempt" and "greeter.propagate".
    let stack = ClientStack::grpc("greeter")
        .observer(cfg.observer.clone())
        .total_budget(cfg.total)
        .attempt_timeout(cfg.per_try)
        .retry(|r| {
            // SayHello is idempotent: an attempt that ran out of its time may
            // be retried too (no retry starts without enough budget left).
            r.policy(GrpcRetry::new().with_code(Code::DeadlineExceeded))
                .max_attempts(cfg.max_attempts)
        })
        .breaker(|b| {
            b.window(SlidingWindow::count(cfg.breaker_window))
                .minimum_calls(cfg.minimum_calls)
                .open_duration(cfg.open_duration)
        })
        .bulkhead(|b| b.max_concurrent(cfg.max_concurrent))
        .build()?;
    Ok((stack.layer(channel), stack.breaker_handle()))
}
