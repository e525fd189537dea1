//! An axum 0.8 server behind seawall's recommended server stack
//! (`seawall::stack::ServerStack`, answered by `RejectionResponseLayer`).
//!
//! ```text
//! RejectionResponseLayer   rejections -> 429 / 503 / 504 with Retry-After
//! DeadlineFromHeadersLayer client budget from x-request-timeout-ms / grpc-timeout (minus a 5 ms margin set here; the presets take 10 ms)
//! DeadlineLayer            at most 10 s per request, enforced             -> 504
//! RateLimitLayer           100 req/s per client IP, burst 100             -> 429 + Retry-After
//! AdaptiveLimitLayer       adaptive concurrency limit (QueueDelay, 1..1000) -> 503
//! BulkheadLayer            64 handlers at once, 16 waiting for <= 20 ms   -> 503
//! AttemptTimeoutLayer      2 s per handler run                            -> 504
//! ```
//!
//! The stack itself is in `examples/common/http_stack.rs` (the integration
//! test `tests/examples_http` runs the same code).
//!
//! # Run
//!
//! ```text
//! cargo run --example axum_server --features axum            # listens on 127.0.0.1:3000
//! cargo run --example axum_server --features axum -- 8080    # or PORT=8080
//! cargo run --example axum_server --features axum,metrics    # + Prometheus on 127.0.0.1:9000/metrics
//! ```
//!
//! # Try it
//!
//! ```text
//! # 200, and the budget the handler saw: the client's 800 ms minus the 5 ms margin
//! # (deadline_ms, from Extension<Deadline>), which is also what this run may use
//! # (budget_ms, from seawall::deadline::remaining(): under the 2 s handler timeout):
//! curl -i -H 'x-request-timeout-ms: 800' 'http://127.0.0.1:3000/work?ms=300'
//! #   HTTP/1.1 200 OK
//! #   ratelimit-policy: "default";q=100;w=1
//! #   ratelimit: "default";r=99;t=1
//! #   deadline_ms=794 budget_ms=794 worked_ms=300 left_ms=494
//!
//! # 429 + Retry-After: 150 requests at once from one client, 100 in the burst
//! # (curl >= 7.84 for %header{...})
//! curl -s --no-progress-meter --parallel --parallel-max 50 \
//!   -w '%{http_code} retry-after: %header{retry-after}\n' \
//!   $(printf -- '-o /dev/null http://127.0.0.1:3000/ %.0s' $(seq 150)) | sort | uniq -c
//! #   ~106 200 retry-after:
//! #    ~44 429 retry-after: 1
//!
//! # 504: the client's budget (100 ms) is shorter than the work (500 ms)
//! curl -i -H 'x-request-timeout-ms: 100' 'http://127.0.0.1:3000/work?ms=500'
//! #   HTTP/1.1 504 Gateway Timeout ... deadline exceeded
//! # 504: one handler run may take 2 s
//! curl -i 'http://127.0.0.1:3000/work?ms=2500'
//! #   HTTP/1.1 504 Gateway Timeout ... attempt timed out
//!
//! # 503: 90 requests of 1.5 s work at once (under the rate limit's burst): the
//! # adaptive limit admits ~20, the rest is shed at once instead of queueing
//! curl -s --no-progress-meter --parallel --parallel-max 90 -w '%{http_code}\n' \
//!   $(printf -- '-o /dev/null http://127.0.0.1:3000/work?ms=1500 %.0s' $(seq 90)) | sort | uniq -c
//! #    ~21 200
//! #    ~69 503
//! # The same with a load tool: 80 req/s (under the rate limit) of 1.5 s work
//! # want ~120 in flight
//! hey -z 10s -c 200 -q 0.4 'http://127.0.0.1:3000/work?ms=1500'
//! #   Status code distribution: 200 for what the limit admits, 503 (answered at once) for the rest
//! # ...and meanwhile, sheddable traffic goes first:
//! curl -i -H 'x-seawall-criticality: sheddable' 'http://127.0.0.1:3000/work?ms=10'
//! #   HTTP/1.1 503 Service Unavailable ... overloaded
//! ```
//!
//! # What to look at
//!
//! Logs (stderr, target `seawall`, through `seawall::observe::TracingHook`):
//! every rejection at DEBUG with `layer`, `name` (`api.rate_limit`,
//! `api.limit`, `api.bulkhead`, `api.deadline`, `api.handler`,
//! `api.ingress`), `reason` and `detail`;
//! adaptive limit changes at DEBUG; ignored timeout headers (malformed,
//! clamped to 10 s) at DEBUG.
//!
//! Metrics (with `--features metrics`, `curl -s 127.0.0.1:9000/metrics | grep seawall`):
//! `seawall_rejections_total{layer,name,reason}` (what was refused and by whom),
//! `seawall_calls_total{layer,name,outcome}` and
//! `seawall_call_duration_seconds_bucket` (what got through, how long it took),
//! `seawall_limit{layer="adaptive_limit",name="api.limit"}` (the adaptive limit, once it moves),
//! `seawall_input_ignored_total` (unreadable timeout headers).

#[path = "common/http_stack.rs"]
mod http_stack;

use std::net::SocketAddr;

use seawall::Observer;
use seawall::observe::TracingHook;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use http_stack::ServerConfig;

fn port() -> u16 {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000)
}

#[cfg(feature = "metrics")]
fn observer() -> Result<Observer, seawall::BoxError> {
    // Prometheus text format on 127.0.0.1:9000/metrics.
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(SocketAddr::from(([127, 0, 0, 1], 9000)))
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
        rate: seawall::rate_limit::Quota::per_second(100),
        observer: observer()?,
        ..ServerConfig::default()
    };
    let app = http_stack::protect(http_stack::routes(), &cfg)?;

    let addr = SocketAddr::from(([127, 0, 0, 1], port()));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on http://{addr} (Ctrl-C to stop)");
    http_stack::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
