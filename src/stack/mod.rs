//! The recommended stacks: the seawall layers composed in the order that
//! works, for a client calling a dependency and for a server taking traffic.
//!
//! # Start with a protocol preset
//!
//! | | HTTP (feature `http`) | gRPC (feature `tonic`) |
//! |---|---|---|
//! | server | [`ServerStack::http`] → [`HttpServer<S>`] | [`ServerStack::grpc`] → [`GrpcServer<Routes>`](GrpcServer) |
//! | client | [`ClientStack::http`] → [`HttpClient<S>`] | [`ClientStack::grpc`] → [`GrpcClient<Channel>`](GrpcClient) |
//!
//! Each preset's service is a named type: compiler messages say
//! `HttpClient<…>` or `HttpServer<…>`, not the layers inside.
//!
//! A preset knows its protocol: which statuses mean broken, busy or the
//! caller's own mistake (so the breaker opens on HTTP 500 and gRPC
//! `INTERNAL`, and on a connection refused, never on a shedding server's
//! 429 or 503 or `UNAVAILABLE`, with or without a wait, nor on this
//! process's own full bulkhead), which requests are safe to repeat (a timed-out `POST` runs
//! once), where the deadline travels on the wire, and how a refusal is
//! answered (503/429/504 with `Retry-After`, gRPC statuses with pushback).
//! Set the budgets; every other default is chosen for you.
//!
//! The generic stacks below, [`ClientStack::builder`] and
//! [`ServerStack::builder`], take any request type. **What they cannot
//! know:** to them every `Ok` is a success, so an HTTP 500 or a gRPC error
//! status inside an `Ok` response is a success too, and the default retry
//! policy retries any request it can clone, whatever its method. Use them
//! for non-HTTP services, or bring your own classifier and policy.
//!
//! Each builder names every layer after the stack (`payments.retry`,
//! `payments.breaker`, …), hands them one [`Observer`](crate::Observer),
//! checks the settings against each other when built, and returns one
//! `tower::Layer` that applies the real seawall layers by value: the service
//! it makes is a plain nesting of their services ([`ClientStackService`]),
//! with no boxing and no allocation per call.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use seawall::stack::ClientStack;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! let payments = ClientStack::builder("payments")
//!     .total_budget(Duration::from_secs(1))
//!     .attempt_timeout(Duration::from_millis(300))
//!     .retry(|r| r.max_attempts(3))
//!     .breaker(|b| b.consecutive_failures(5))
//!     .bulkhead(|b| b.max_concurrent(50))
//!     .build()?;
//! assert_eq!(payments.breaker_handle().name(), "payments.breaker");
//!
//! let client = service_fn(|amount: u32| async move { Ok::<_, seawall::BoxError>(amount) });
//! let mut svc = payments.layer(client);
//! assert_eq!(svc.ready().await?.call(42).await?, 42);
//!
//! // Settings that contradict each other are refused when built.
//! let err = ClientStack::builder("payments")
//!     .total_budget(Duration::from_millis(200))
//!     .attempt_timeout(Duration::from_millis(300))
//!     .build()
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "invalid client_stack configuration: attempt_timeout must be at most total_budget (200ms), got 300ms"
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # The client stack
//!
//! ```text
//! DeadlineLayer          total budget: every attempt and backoff included
//!  └─ RetryLayer         jittered backoff, retry budget, never past the deadline
//!      └─ CircuitBreakerLayer   sees every attempt; open = fail fast
//!          └─ AdaptiveLimitLayer   attempts in flight to what the dependency answers in time
//!              └─ BulkheadLayer     caps attempts in flight to the dependency
//!                  └─ AttemptTimeoutLayer   min(per try, budget left)
//!                      └─ [PropagateDeadlineLayer]  (http) the attempt's time left on the wire
//!                          └─ your client
//! ```
//!
//! - **Deadline outermost**, so one budget bounds the whole request: the
//!   first attempt, every backoff and every retry. The layers below read it
//!   (retry never sleeps past it, nor waits past it for a service to be
//!   ready; the bulkhead never queues past it; the attempt timeout never
//!   runs past it). Since every wait inside ends by the deadline, the
//!   deadline layer runs no timer of its own
//!   ([`InnerTimers`](crate::deadline::InnerTimers)): one timer less to
//!   keep in each response future (400 bytes in all over a no-op service).
//!   A call that runs out of time fails with
//!   [`DeadlineExceeded`](crate::error::DeadlineExceeded) named after the
//!   layer that was waiting (the attempt timeout, the bulkhead, the retry),
//!   or, when too little time is left to start a retry, with the last
//!   attempt's own outcome. Under a deadline from above (a server stack's,
//!   in a handler) the client stack keeps 10 ms, at most a tenth of what
//!   is left, so that its own timer ends the call before the server's.
//! - **Retry above the breaker**, so every attempt passes through the
//!   breaker: it counts retries as the calls they are, and once it opens, a
//!   retry meets [`CircuitOpen`](crate::error::CircuitOpen) at once, which
//!   the default retry policy does not retry (the breaker already speaks for
//!   the dependency): an open breaker ends the request instead of being
//!   hammered by its retries. Retries below a breaker would be invisible to
//!   it (one "call" hiding three failures).
//! - **Breaker above the bulkhead**, so an open breaker fails fast without
//!   taking a slot or a queue place. A full bulkhead is this process's own
//!   limit, not the dependency failing: the stack's breaker classifier,
//!   [`DependencyFailures`], does not count it at all (neither a failure nor
//!   a success diluting the failure rate).
//! - **An adaptive limit below the breaker**: the attempts in flight to
//!   the dependency, learnt from their latency
//!   ([`QueueDelay`](crate::shed::QueueDelay)), where a queue at the
//!   dependency shorter than the attempt timeout is its callers' to wait
//!   out, and attempts that time out cut the limit. Its refusal is this
//!   process's own (the breaker does not count it; the retry layer retries
//!   it after the time it names, within the retry budget). A dependency
//!   that queues past what it can answer in time is sent what it can
//!   answer, and its callers get a refusal at once instead of a timeout.
//!   Called from a handler under a server stack, the time a call waits in
//!   the client stack is not the server's: the server's adaptive limit
//!   leaves it out of its latency and its count of calls in flight, so one
//!   route's dependency, queueing or hung, costs the other routes nothing.
//! - **Bulkhead above the attempt timeout**, so a slot is held only while an
//!   attempt runs (released during backoff), and time waiting for a slot is
//!   not charged to the attempt's own timer (the total deadline still bounds
//!   it).
//! - **Attempt timeout innermost** (before propagation), so each attempt gets
//!   a fresh `min(per try, time left)` and fails with a retryable
//!   [`AttemptTimeout`](crate::error::AttemptTimeout), or with
//!   [`DeadlineExceeded`](crate::error::DeadlineExceeded) when the budget was
//!   the binding limit (not retried: nothing is left).
//! - **Propagation last** (feature `http`,
//!   [`ClientStackBuilder::propagate_deadline`]), so the header a server
//!   receives is the time this attempt really has.
//!
//! ## Validation
//!
//! [`ClientStackBuilder::build`] refuses, with a
//! [`ConfigError`](crate::ConfigError) of layer `"client_stack"`:
//!
//! | rule | message |
//! |---|---|
//! | `total_budget` set (`attempt_timeout` defaults to half of it) | `total_budget must be set` |
//! | `attempt_timeout ≤ total_budget` | `attempt_timeout must be at most total_budget (…), got …` |
//! | with `max_attempts ≥ 2`: `attempt_timeout + longest first backoff + min_remaining ≤ total_budget` | `retry schedule does not fit total_budget (…): …` |
//! | `slow_call_duration < attempt_timeout` (when set) | `slow_call_duration must be below attempt_timeout (…), got …` |
//!
//! The retry rule is the worst case of a second attempt: the first attempt
//! times out at `attempt_timeout`, the first backoff draws its upper bound
//! (the base delay for full, equal or no jitter; up to 3 × base for
//! decorrelated jitter), and the retry layer starts a retry only with at
//! least its `min_remaining` (default 10 ms; 20 ms in the protocol presets
//! and with `propagate_deadline`) of budget left. With the defaults (50 ms
//! base, full jitter) and a 1 s budget, the longest attempt timeout
//! accepted is 940 ms (930 ms in the presets).
//!
//! The slow-call rule: the attempt timeout cuts every call
//! at `attempt_timeout`, so a slow-call threshold at or above it can never
//! trip. By default the stack counts no call as slow (a call answered
//! within its attempt timeout was answered); a slow-call duration set with
//! `slow_call_duration` must be below the attempt timeout.
//!
//! [`ServerStackBuilder::build`] (and so the presets `ServerStack::http`
//! and `ServerStack::grpc`) refuses, with layer `"server_stack"`:
//!
//! | rule | message |
//! |---|---|
//! | `total_budget` set | `total_budget must be set` |
//! | `handler_timeout ≤ total_budget` | `handler_timeout must be at most total_budget (…), got …` |
//!
//! # The server stack
//!
//! ```text
//! [answer layer]               (presets) rejections as 429/503/504 or gRPC statuses
//!  └─ [DeadlineFromHeadersLayer]   (presets) the client's deadline from grpc-timeout / x-request-timeout-ms
//!      └─ [MarkInboundAttemptLayer]  (presets) a retried request is not retried again below
//!          └─ DeadlineLayer            the server's own cap; the earlier deadline wins
//!              └─ [RateLimitLayer]     (rate-limit) abusive or runaway callers
//!                  └─ [TenantBulkheadLayer]  (keyed) a share of the handler per tenant
//!                      └─ AdaptiveLimitLayer   load shedding: adaptive limit, priorities, doomed work
//!                          └─ BulkheadLayer    hard cap on handlers in flight (a pool size)
//!                              └─ AttemptTimeoutLayer   handler timeout
//!                                  └─ [CallBodyLayer]   (presets) answers held to the deadline and their end
//!                                      └─ your handler
//! ```
//!
//! The bracketed parts marked "presets" are what `ServerStack::http` and
//! `ServerStack::grpc` add to the generic [`ServerStack::builder`].
//!
//! - **Ingress and deadline first**, so every layer below knows the
//!   request's deadline: the load shedder rejects work that cannot finish in
//!   time, the bulkhead never queues past it, the handler reads it with
//!   [`deadline::remaining()`](crate::deadline::remaining).
//! - **Rate limit before shedding**: it is the cheapest check (one atomic
//!   for a global limit) and it is about *who* calls, not about load. Over-quota
//!   traffic is turned away with `429` before it can take capacity from the
//!   others or feed the adaptive limit's latency samples.
//! - **A bulkhead per tenant before the adaptive limit**
//!   ([`ServerStackBuilder::tenant_bulkhead`], when you add it): the limit
//!   refuses every caller alike, so under one tenant's flood the others
//!   would be refused as often as the flooder; a tenant's own bulkhead
//!   refuses its excess before it takes a place under the limit. Below the
//!   deadline, so a wait in a tenant's queue ends by the request's deadline.
//! - **Adaptive limit before the bulkhead**: the limit decides how much work
//!   the service can take right now and sheds the excess at once (`503`,
//!   lowest priorities first); the bulkhead below is a fixed hard cap (for
//!   example a connection pool's size) that the adaptive limit may not
//!   exceed. Time spent in the bulkhead's queue, if it has one, shows in the
//!   limit's latency samples, so the limit comes down when requests queue.
//! - **Handler timeout innermost**, so it times the handler only (its
//!   answer included: a streamed body is cut at the handler timeout). It is
//!   clamped to the deadline, and every wait above it ends by the deadline
//!   too (the bulkhead's queue, a rate-limit wait, a Redis round trip), so
//!   here too the deadline layer runs no timer of its own
//!   ([`InnerTimers`](crate::deadline::InnerTimers)): the layer that was
//!   waiting when the deadline passed fails the request with
//!   `DeadlineExceeded` (the handler timeout, named `<stack>.handler`, once
//!   the handler runs).
//!
//! Rejections therefore come in a fixed order under pressure: `RateLimited`
//! (429) before `Overloaded` (503) before `BulkheadFull` (503). With feature
//! `http`, put [`RejectionResponseLayer`](crate::http::RejectionResponseLayer)
//! outside the stack to answer them as responses.
//!
//! The stack protects the server, not one caller from another: under one
//! tenant's flood it keeps serving at capacity, and refuses the others as
//! often as the flooder. A bulkhead per tenant outside it gives each its
//! share ([`keyed`](crate::keyed), "On a server: a share per tenant").
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use seawall::error::{rejection_of, RejectionKind};
//! use seawall::rate_limit::Quota;
//! use seawall::stack::ServerStack;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! let api = ServerStack::builder("api")
//!     .total_budget(Duration::from_secs(2))
//!     .handler_timeout(Duration::from_millis(500))
//!     .rate_limit(Quota::per_second(100), |r| r)
//!     .bulkhead(|b| b.max_concurrent(64))
//!     .build()?;
//! let mut svc = api.layer(service_fn(|x: u32| async move { Ok::<_, seawall::BoxError>(x) }));
//! for i in 0..100 {
//!     assert_eq!(svc.ready().await?.call(i).await?, i);
//! }
//! let err = svc.ready().await?.call(100).await.unwrap_err();
//! let view = rejection_of(&err).unwrap();
//! assert_eq!(view.kind(), RejectionKind::RateLimited);
//! assert_eq!(view.name(), "api.rate_limit");
//! let hint = view.retry_after().unwrap(); // the next cell's 10 ms, stretched
//! assert!(hint >= Duration::from_millis(10) && hint <= Duration::from_millis(15));
//! # Ok(())
//! # }
//! ```
//!
//! # Cost
//!
//! The stacks add no state of their own: a call through them costs what the
//! layers cost, and the layers allocate nothing on the success path. The
//! request type may: the retry keeps a copy of an `http::Request` for a
//! possible retry (none when the request may not be retried), propagation
//! writes header values, and the server presets store the caller's deadline
//! in the request's extensions for handlers (the client stack does not:
//! its deadline travels with the call, and as a header from the protocol
//! presets; it stores it only in a request type of your own that keeps it
//! without allocating, [`HasDeadline::STORING_ALLOCATES`](crate::HasDeadline::STORING_ALLOCATES),
//! so that it crosses a task or a hop of yours).
//!
//! # Another order
//!
//! The built layers are readable ([`ClientStackLayer::retry`],
//! [`ClientStackLayer::breaker`], …) and cloneable, so a different order is a
//! `tower::ServiceBuilder` away; the order above is the one we recommend and
//! test.

mod classify;
mod client;
#[cfg(feature = "serde")]
mod config;
mod part;
#[cfg(feature = "http")]
mod preset;
mod server;
#[cfg(feature = "keyed")]
mod tenants;

pub use self::classify::DependencyFailures;
pub use self::client::{ClientStack, ClientStackBuilder, ClientStackLayer, ClientStackService};
#[cfg(feature = "serde")]
pub use self::config::{RateLimitReload, RateLimitSetting};
pub use self::part::{HedgePart, HoldPoint, IngressPart, Skip, StackPart};
#[cfg(feature = "tonic")]
pub use self::preset::{
    GrpcClient, GrpcIngress, GrpcIngressLayer, GrpcOutermost, GrpcServer, GrpcTransportPart,
};
#[cfg(feature = "http")]
pub use self::preset::{HttpClient, HttpIngress, HttpIngressLayer, HttpOutermost, HttpServer};
#[cfg(feature = "tonic")]
pub use self::server::{ByMethod, ByMethodFuture, Named};
pub use self::server::{
    OuterPart, ServerCore, ServerInner, ServerStack, ServerStackBuilder, ServerStackLayer,
    ServerStackService,
};
#[cfg(feature = "keyed")]
pub use self::tenants::{TenantBulkhead, TenantBulkheadLayer, TenantBulkheads, TenantFuture};

/// The built HTTP client preset, `ClientStack::http(..).build()?`: the
/// type to keep it in a struct field (`H`: `HedgeLayer<HttpRetry>` with
/// `.hedge(..)`). The service it makes is an [`HttpClient<S>`].
///
/// ```
/// use std::time::Duration;
/// use seawall::stack::{ClientStack, HttpClientStack};
///
/// struct Clients {
///     inventory: HttpClientStack,
/// }
/// let clients = Clients {
///     inventory: ClientStack::http("inventory")
///         .total_budget(Duration::from_secs(1))
///         .build()?,
/// };
/// # let _ = clients.inventory;
/// # Ok::<(), seawall::BoxError>(())
/// ```
#[cfg(feature = "http")]
pub type HttpClientStack<H = tower::layer::util::Identity> = ClientStackLayer<
    crate::retry::http::HttpRetry,
    crate::http::HttpStatusClassifier,
    crate::deadline::propagate::PropagateDeadlineLayer,
    HttpOutermost,
    H,
>;

/// The built gRPC client preset, `ClientStack::grpc(..).build()?`: the
/// type to keep it in a struct field (`H`: `HedgeLayer<GrpcRetry>` with
/// `.hedge(..)`). The service it makes is a [`GrpcClient<S>`].
#[cfg(feature = "tonic")]
pub type GrpcClientStack<H = tower::layer::util::Identity> = ClientStackLayer<
    crate::retry::grpc::GrpcRetry,
    crate::grpc::GrpcStatusClassifier,
    tower::layer::util::Stack<
        crate::grpc::TonicTransportLayer,
        crate::deadline::propagate::PropagateDeadlineLayer,
    >,
    GrpcOutermost,
    H,
>;

/// The built HTTP server preset, `ServerStack::http(..).build()?`: the
/// type to keep it in a struct field. `R` is the rate limit's layer with
/// `.rate_limit(..)`, `P` the criticality extractor set on its adaptive
/// limit, `T` the tenants' bulkheads' layer with `.tenant_bulkhead(..)`.
///
/// ```
/// use std::time::Duration;
/// use seawall::stack::{HttpServerStack, ServerStack};
///
/// let stack: HttpServerStack = ServerStack::http("api")
///     .total_budget(Duration::from_millis(950))
///     .build()?;
/// # let _ = stack;
/// # Ok::<(), seawall::BoxError>(())
/// ```
#[cfg(feature = "http")]
pub type HttpServerStack<
    R = tower::layer::util::Identity,
    P = crate::shed::criticality::FromTaskLocal,
    T = tower::layer::util::Identity,
> = ServerStackLayer<HttpIngressLayer, R, P, crate::body::CallBodyLayer, T>;

/// The built gRPC server preset, `ServerStack::grpc(..).build()?`: the
/// type to keep it in a struct field (`R`, `P`, `T` as for
/// [`HttpServerStack`]).
#[cfg(feature = "tonic")]
pub type GrpcServerStack<
    R = tower::layer::util::Identity,
    P = crate::shed::criticality::FromTaskLocal,
    T = tower::layer::util::Identity,
> = ServerStackLayer<GrpcIngressLayer, R, P, crate::body::CallBodyLayer, T>;
