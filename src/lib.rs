//! seawall: composable [tower] middleware that keeps services standing when
//! traffic surges and dependencies fail.
//!
//! Every layer wraps any `tower::Service` — an axum router, a tonic server, a
//! tonic `Channel`, a hyper client — and reports through one metrics hook.
//!
//! | layer | stops | rejects with |
//! |---|---|---|
//! | [`deadline`]: [`DeadlineLayer`], [`AttemptTimeoutLayer`], header propagation | work that can no longer succeed; slow dependencies eating the caller's budget | [`DeadlineExceeded`](error::DeadlineExceeded), [`AttemptTimeout`](error::AttemptTimeout) |
//! | [`retry`]: [`RetryLayer`] with a [`RetryBudget`] | transient failures, without retry storms | the last error |
//! | [`circuit_breaker`]: [`CircuitBreakerLayer`] | hammering a dependency that is down | [`CircuitOpen`](error::CircuitOpen) with `retry_after` |
//! | [`bulkhead`]: [`BulkheadLayer`] | one dependency or route drowning the process | [`BulkheadFull`](error::BulkheadFull) |
//! | [`shed`]: [`AdaptiveLimitLayer`], [`ThrottleLayer`] | overload collapse, queues of doomed work | [`Overloaded`](error::Overloaded) |
//! | [`rate_limit`]: [`RateLimitLayer`] (local or Redis) | abusive or runaway callers | [`RateLimited`](error::RateLimited) with `retry_after` |
//! | [`hedge`]: [`HedgeLayer`](hedge::HedgeLayer) | a slow tail, without doubling the load | never refuses |
//! | [`fallback`]: [`FallbackLayer`](fallback::FallbackLayer) | a failure or refusal reaching the user when a degraded answer would do | the original outcome, when it declines |
//! | [`eject`]: [`EjectionLayer`](eject::EjectionLayer) | a broken or slow replica dragging a balanced set down | an ejected endpoint is not ready |
//! | [`keyed`]: [`KeyedLayer`](keyed::KeyedLayer) | one tenant or host tripping the protection of all | what the key's layer says |
//!
//! **Start with a protocol preset** (see [`stack`]): `ClientStack::http`
//! around a hyper client, `ClientStack::grpc` around a tonic `Channel`,
//! `ServerStack::http` around an axum `Router`, `ServerStack::grpc` in a
//! tonic server (features `http` / `tonic`). Each knows how its protocol says "broken", "busy" and "your
//! mistake", what is safe to retry, and where the deadline travels; set the
//! budgets and keep the defaults. The layers below compose by hand too.
//!
//! Rejections are small marker types in a `BoxError`; [`error::rejection`]
//! gives one view of any of them (kind, layer instance, `retry_after`), and the
//! [`http`] and [`grpc`] modules turn them into 503/429/504 responses with
//! `Retry-After`, or `UNAVAILABLE` / `RESOURCE_EXHAUSTED` / `DEADLINE_EXCEEDED`.
//!
//! # Example: a client stack
//!
//! Order matters. From the outside in: one total budget, retries within it
//! (bounded by a budget shared by every clone), a circuit breaker that sees
//! every attempt, and a per-attempt timeout.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use seawall::observe::{Observer, Recorder};
//! use seawall::{AttemptTimeoutLayer, CircuitBreakerLayer, DeadlineLayer, RetryLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let recorder = Recorder::new();
//! let observer = Observer::new(recorder.clone()); // wire observability once
//!
//! let stack = ServiceBuilder::new()
//!     .layer(DeadlineLayer::builder(Duration::from_secs(2)).name("inventory").observer(observer.clone()).build()?)
//!     .layer(RetryLayer::builder().name("inventory").observer(observer.clone()).build()?)
//!     .layer(CircuitBreakerLayer::builder().name("inventory").observer(observer.clone()).build()?)
//!     .layer(AttemptTimeoutLayer::builder(Duration::from_millis(500)).name("inventory").observer(observer.clone()).build()?);
//!
//! // Build once, clone per use: every clone shares one breaker and one retry budget.
//! let client = stack.service(service_fn(|item: u32| async move {
//!     Ok::<_, seawall::BoxError>(item * 2)
//! }));
//!
//! assert_eq!(client.clone().oneshot(21).await?, 42);
//! assert!(!recorder.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # Paths
//!
//! The crate root re-exports the types you start from (the layers, the
//! presets, [`Deadline`], [`Rejection`], [`Observer`]). Every other item has
//! exactly one path, in the module of the layer it belongs to:
//! `seawall::deadline::propagate::OnInvalid`,
//! `seawall::shed::criticality::scope`, `seawall::observe::Outcome`.
//! `public-api.txt` in the repository lists them all, re-exports included.
//!
//! # Observability
//!
//! Every layer takes an [`Observer`] and reports borrowed [`Event`]s through it:
//! calls, rejections with reasons, state changes, retries, limit changes. Ship
//! them to `tracing` ([`observe::TracingHook`]), the `metrics` facade
//! ([`observe::MetricsHook`], feature `metrics`; names in [`observe`]), a
//! closure, or an in-memory [`observe::Recorder`]. With no observer set, a layer
//! builds no event at all.
//!
//! # Time
//!
//! Every layer reads `tokio::time`, so `#[tokio::test(start_paused = true)]`
//! drives every timer, window and quota deterministically ([`clock`]).
//!
//! # Cargo features
//!
//! Layers: `deadline`, `retry`, `circuit-breaker`, `bulkhead`, `shed`,
//! `rate-limit`, `hedge`, `fallback`, `eject`, `keyed` (all on by default) and
//! `chaos`. Integrations (opt-in): `http`, `axum`, `tonic`, `metrics`,
//! `opentelemetry`, `redis`, `serde` (settings from files), `tonic-channel`
//! (a balanced tonic channel with ejection); `full` turns everything on. The protocol presets
//! need `http` (HTTP) or `tonic` (gRPC).
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs link items of every feature (checked with `--all-features`);
// built with some features off, in a user's `cargo doc`, those links read
// as plain text instead of warnings.
#![cfg_attr(not(feature = "full"), allow(rustdoc::broken_intra_doc_links))]

#[macro_use]
mod macros;

#[cfg(all(feature = "http", feature = "deadline"))]
pub mod body;
pub mod classify;
pub mod clock;
#[cfg(all(
    feature = "serde",
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
pub mod config;
pub mod deadline;
pub mod error;
pub mod hold;
pub mod local;
pub mod observe;
#[cfg(any(feature = "keyed", feature = "fallback"))]
mod oneshot;
#[cfg(any(feature = "shed", feature = "retry"))]
mod outbound;
#[cfg(any(
    feature = "circuit-breaker",
    feature = "bulkhead",
    feature = "deadline"
))]
mod stripe;

#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
#[cfg(feature = "eject")]
pub mod eject;
#[cfg(feature = "fallback")]
pub mod fallback;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "hedge")]
pub mod hedge;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "keyed")]
pub mod keyed;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "shed")]
pub mod shed;
#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
pub mod stack;

pub use crate::deadline::{Deadline, HasDeadline};
pub use crate::error::{BoxError, ConfigError, Name, Rejection, RejectionKind};
pub use crate::observe::{Event, EventKind, Hook, Observer};

#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
pub use crate::stack::{ClientStack, ServerStack};

#[cfg(feature = "bulkhead")]
pub use crate::bulkhead::{BulkheadLayer, QueueOrder};
#[cfg(feature = "chaos")]
pub use crate::chaos::ChaosLayer;
#[cfg(feature = "circuit-breaker")]
pub use crate::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, SlidingWindow};
#[cfg(all(feature = "deadline", feature = "http"))]
pub use crate::deadline::propagate::{DeadlineFromHeadersLayer, PropagateDeadlineLayer};
#[cfg(feature = "deadline")]
pub use crate::deadline::{AttemptTimeoutLayer, DeadlineLayer};
#[cfg(feature = "tonic")]
pub use crate::grpc::{GrpcRejectionLayer, GrpcStatusClassifier};
#[cfg(feature = "http")]
pub use crate::http::{HttpStatusClassifier, RejectionResponseLayer};
#[cfg(feature = "rate-limit")]
pub use crate::rate_limit::{Quota, RateLimitLayer};
#[cfg(feature = "retry")]
pub use crate::retry::{Jitter, RetryBudget, RetryLayer};
#[cfg(feature = "shed")]
pub use crate::shed::criticality::Criticality;
#[cfg(feature = "shed")]
pub use crate::shed::{AdaptiveLimitLayer, ThrottleLayer};
