//! seawall: composable tower middleware that keeps services standing when
//! traffic surges and dependencies fail.
//!
//! (crate docs are completed as layers land)
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
pub mod clock;
pub mod deadline;
pub mod error;
pub mod observe;

#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
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

#[cfg(feature = "bulkhead")]
pub use crate::bulkhead::{BulkheadLayer, QueueOrder};
#[cfg(feature = "chaos")]
pub use crate::chaos::ChaosLayer;
#[cfg(feature = "circuit-breaker")]
pub use crate::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, SlidingWindow};
#[cfg(feature = "deadline")]
pub use crate::deadline::{AttemptTimeoutLayer, DeadlineLayer};
#[cfg(all(feature = "deadline", feature = "http"))]
pub use crate::deadline::{DeadlineFromHeadersLayer, PropagateDeadlineLayer};
#[cfg(feature = "tonic")]
pub use crate::grpc::{GrpcRejectionLayer, GrpcStatusClassifier};
#[cfg(feature = "http")]
pub use crate::http::{HttpStatusClassifier, RejectionResponseLayer};
#[cfg(feature = "retry")]
pub use crate::retry::{Jitter, RetryBudget, RetryLayer};
#[cfg(feature = "shed")]
pub use crate::shed::{AdaptiveLimitLayer, Criticality, ThrottleLayer};
