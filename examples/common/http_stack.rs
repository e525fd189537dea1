//! seawall's HTTP server preset (`seawall::stack::ServerStack::http`) for an
//! axum app, shared by `examples/axum_server.rs` and the `examples_http`
//! integration test.
//!
//! Outermost first, each layer sees what the one above let through:
//!
//! ```text
//! RejectionResponseLayer   errors -> 429 / 503 / 504 + Retry-After (error type becomes Infallible)
//! DeadlineFromHeadersLayer the client's budget: x-request-timeout-ms or grpc-timeout, minus a margin
//! MarkInboundAttemptLayer  records x-seawall-attempt (a retried request is not retried again below)
//! DeadlineLayer            caps that budget (and gives one to requests without) and enforces it
//! RateLimitLayer           per client IP, IETF RateLimit headers on admitted responses  -> 429
//! AdaptiveLimitLayer       adaptive concurrency limit, x-seawall-criticality priorities -> 503
//! BulkheadLayer            at most N handlers at once, a short bounded queue            -> 503
//! AttemptTimeoutLayer      one handler run may take at most this long                   -> 504
//! ```
//!
//! Cheap refusals come first: a rate-limited request costs a key lookup and
//! an atomic operation, and never takes a concurrency slot. Every layer keeps its state
//! in an `Arc` owned by the layer, so the clones `Router::layer` makes for
//! each route share one limiter, one adaptive limit and one bulkhead.
#![allow(dead_code)] // each includer uses a different part of this file

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Extension};
use axum::http::{Extensions, Uri};
use axum::routing::get;
use seawall::deadline::{self, Deadline};
use seawall::rate_limit::headers::IetfHeaders;
use seawall::rate_limit::{PeerAddr, Quota};
use seawall::shed::QueueDelay;
use seawall::shed::criticality::FromHttpRequest;
use seawall::stack::ServerStack;
use seawall::{ConfigError, Observer};
use tokio::net::TcpListener;

/// The knobs of the server stack. `Default` holds the values the example
/// runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The longest budget a request gets, whatever its client asks for; also
    /// the budget of requests that carry no timeout header.
    pub max_budget: Duration,
    /// Taken off the client's timeout, to leave time for the answer to travel back.
    pub margin: Duration,
    /// Requests per client IP address.
    pub rate: Quota,
    /// The adaptive concurrency limit: (initial, min, max).
    pub concurrency: (usize, usize, usize),
    /// Handlers running at once.
    pub max_concurrent: usize,
    /// Requests waiting for a handler slot.
    pub max_queue: usize,
    /// How long a request may wait in the bulkhead queue.
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
            rate: Quota::per_second(50).burst(20),
            concurrency: (20, 1, 1000),
            max_concurrent: 64,
            max_queue: 16,
            max_wait: Duration::from_millis(20),
            handler_timeout: Duration::from_secs(2),
            observer: Observer::none(),
        }
    }
}

/// The client's IP address, from the `ConnectInfo` that
/// `into_make_service_with_connect_info` puts in every request.
fn peer_ip(ext: &Extensions) -> Option<IpAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Puts `router` behind the server stack (see the module docs).
///
/// `Router::layer` wraps the routes that exist when it is called: add every
/// route first.
pub fn protect(router: Router, cfg: &ServerConfig) -> Result<Router, ConfigError> {
    let (initial, min, max) = cfg.concurrency;
    let algorithm = QueueDelay::builder()
        .initial_limit(initial)
        .min_limit(min)
        .max_limit(max)
        .build()?;
    // The HTTP preset: rejections answered as 429 / 503 / 504 with
    // Retry-After, the client's deadline read from its headers, the attempt
    // header of a calling client stack recorded. Layers named "api.ingress",
    // "api.deadline", "api.rate_limit", "api.limit", "api.bulkhead" and
    // "api.handler".
    let stack = ServerStack::http("api")
        .observer(cfg.observer.clone())
        .total_budget(cfg.max_budget)
        .handler_timeout(cfg.handler_timeout)
        .deadline_from_headers(|d| d.max(cfg.max_budget).margin(cfg.margin))
        .rate_limit(cfg.rate, |r| {
            r.keyed(PeerAddr::with(peer_ip))
                .response_headers(IetfHeaders::default())
        })
        .adaptive_limit(|l| l.algorithm(algorithm).criticality(FromHttpRequest))
        .bulkhead(|b| {
            b.max_concurrent(cfg.max_concurrent)
                .max_queue(cfg.max_queue)
                .max_wait(cfg.max_wait)
        })
        .build()?;
    Ok(router.layer(stack))
}

/// The example's routes, without the stack.
///
/// `/export` has a policy of its own inside the server's: exports are
/// expensive, so at most two run at once (none wait: a third is answered
/// 503 with `Retry-After` at once) and each may take 5 s. A route's stack is
/// a `ServerStack::http` like the server's, given to `MethodRouter::layer`.
pub fn routes() -> Router {
    let export_policy = ServerStack::http("export")
        .total_budget(Duration::from_secs(5))
        .bulkhead(|b| b.max_concurrent(2))
        .build()
        .expect("a valid configuration");
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/work", get(work))
        .route("/export", get(export).layer(export_policy))
}

/// `GET /export?ms=N`: an expensive export that takes `N` ms (at most 60 s).
async fn export(uri: Uri) -> String {
    let ms = query_ms(&uri);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("exported in {ms} ms\n")
}

/// The `ms=N` query parameter, at most 60 s.
fn query_ms(uri: &Uri) -> u64 {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(60_000)
}

/// `GET /work?ms=N`: pretends to work for `N` ms (at most 60 s) and reports
/// its time budget:
///
/// - `deadline_ms`: time left until the request's deadline, on arrival, from
///   `Extension<Deadline>` (the deadline is in the request's extensions, a
///   value that can be moved to other tasks);
/// - `budget_ms`: time this handler run may use, on arrival, from
///   `seawall::deadline::remaining()` (the task-local deadline: the
///   request's deadline or the handler timeout, whichever comes first; any
///   code below the stack can read it);
/// - `left_ms`: the same after the work.
async fn work(Extension(deadline): Extension<Deadline>, uri: Uri) -> String {
    let on_arrival = deadline.remaining();
    let budget = deadline::remaining().unwrap_or_default();
    let ms = query_ms(&uri);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let left = deadline::remaining().unwrap_or_default();
    format!(
        "deadline_ms={} budget_ms={} worked_ms={ms} left_ms={}\n",
        on_arrival.as_millis(),
        budget.as_millis(),
        left.as_millis()
    )
}

/// Serves `app` on `listener` with each connection's address available to
/// the per-client rate limit, until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
