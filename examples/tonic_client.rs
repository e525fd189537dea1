//! A tonic gRPC client behind seawall's gRPC client preset
//! (`seawall::stack::ClientStack::grpc`), calling the `tonic_server` example.
//!
//! ```text
//! StatusErrorsLayer         client-side errors -> tonic::Status with the real code, the error as its source
//! ReplayBodyLayer           keeps the request body so a retry can resend it
//! DeadlineLayer             2 s per call, retries included
//! RetryLayer                3 attempts at most, UNAVAILABLE / DEADLINE_EXCEEDED (this
//!                           example opts DEADLINE_EXCEEDED in; the preset retries
//!                           UNAVAILABLE only), jittered backoff, retry budget (5 % of
//!                           calls + 50 % of the calls that succeeded + 10/s, over 10 s)
//! CircuitBreakerLayer       this example's: opens at 50 % failures over the last 20
//!                           calls (10 at least), 5 s (the preset's defaults are in the
//!                           README's "Layers and their defaults")
//! AdaptiveLimitLayer        the attempts in flight, learned from the dependency's
//!                           answers (from 100, at most 1000): refuses locally,
//!                           before the dependency's queue outlasts the attempt
//! BulkheadLayer             64 attempts in flight at most
//! AttemptTimeoutLayer       600 ms per attempt, or what is left of the 2 s
//! PropagateDeadlineLayer    grpc-timeout = the attempt's time left
//! TonicTransport            the Channel's own timeout as an attempt timeout
//! Channel
//! ```
//!
//! The stack is in `examples/common/grpc_client_stack.rs`; the integration
//! test `tests/examples_grpc` runs the same code against the server stack.
//!
//! # Run
//!
//! ```text
//! cargo run --example tonic_server --features tonic        # terminal 1
//! cargo run --example tonic_client --features tonic        # terminal 2: 20 calls, 100 ms of work each
//! cargo run --example tonic_client --features tonic -- http://127.0.0.1:50051 1000 10
//! #                                                        # URL, work_ms, calls
//! ```
//!
//! What you will see:
//!
//! ```text
//! $ cargo run --example tonic_client --features tonic -- http://127.0.0.1:50051 100 3
//!   0 OK in  105 ms: "hello, call 0"; the server saw a deadline 594 ms away
//!   ...
//! ```
//!
//! The server saw the attempt's 600 ms (minus the 5 ms margin the example
//! server sets; the server presets take 10 ms per hop), not the 2 s
//! of the call.
//!
//! ```text
//! $ cargo run --example tonic_client --features tonic -- http://127.0.0.1:50051 1000 6
//!   0 DeadlineExceeded in 1835 ms: "deadline exceeded"
//!   1 DeadlineExceeded in 1866 ms: "deadline exceeded"
//!   2 DeadlineExceeded in 1815 ms: "deadline exceeded"
//!   3 Unavailable in  617 ms: "circuit open" (come back in 4982 ms)
//!   4 Unavailable in    0 ms: "circuit open" (come back in 4877 ms)
//!   5 Unavailable in    0 ms: "circuit open" (come back in 4776 ms)
//! breaker: Open
//! ```
//!
//! Each attempt runs out of its 600 ms on the server, which answers
//! DEADLINE_EXCEEDED; the retry layer tries again while budget is left, three
//! attempts in all. The tenth failed attempt opens the breaker: from then on
//! calls fail at once with UNAVAILABLE "circuit open" and a
//! `grpc-retry-pushback-ms` saying when to come back. Without a server,
//! connection errors are retried and open the breaker the same way.
//!
//! # What to look at
//!
//! Logs (stderr, target `seawall`): retries scheduled (attempt, delay) and
//! given up (why) from `greeter.retry`; rejections from `greeter.attempt`,
//! `greeter.deadline` and `greeter.breaker`; breaker state changes at
//! INFO/WARN with the failure rate that tripped it.

#[path = "common/greeter.rs"]
mod greeter;
#[path = "common/grpc_client_stack.rs"]
mod grpc_client_stack;

use std::time::Duration;

use seawall::Observer;
use seawall::observe::TracingHook;
use tonic::transport::Channel;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use greeter::HelloRequest;
use grpc_client_stack::ClientConfig;

#[tokio::main]
async fn main() -> Result<(), seawall::BoxError> {
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(
            Targets::new()
                .with_target("seawall", Level::DEBUG)
                .with_default(Level::INFO),
        )
        .init();

    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let work_ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let calls: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);

    // Lazy: the stack decides what happens while the server is down.
    let channel = Channel::from_shared(url)?.connect_lazy();
    let cfg = ClientConfig {
        observer: Observer::new(TracingHook::new()),
        ..ClientConfig::default()
    };
    let (client, breaker) = grpc_client_stack::protect(channel, &cfg)?;

    for i in 0..calls {
        let started = tokio::time::Instant::now();
        let req = tonic::Request::new(HelloRequest {
            name: format!("call {i}"),
            work_ms,
        });
        // A clone of the stack per call: all clones share the budget and breaker.
        match greeter::call_say_hello(client.clone(), req).await {
            Ok(reply) => println!(
                "{i:>3} OK in {:>4} ms: {:?}; the server saw a deadline {} ms away",
                started.elapsed().as_millis(),
                reply.message,
                reply
                    .deadline_ms
                    .map_or_else(|| "(none)".to_owned(), |b| b.to_string()),
            ),
            // This client's own refusal carries its layer's name; a
            // status the server answered carries none.
            Err(status) => println!(
                "{i:>3} {:?} in {:>4} ms: {:?} from {}{}",
                status.code(),
                started.elapsed().as_millis(),
                status.message(),
                seawall::error::rejection(&status)
                    .map_or_else(|| "the server".to_owned(), |r| r.name().to_owned()),
                status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .map(|ms| format!(" (come back in {ms} ms)"))
                    .unwrap_or_default(),
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("breaker: {:?}", breaker.state());
    Ok(())
}
