//! gRPC answers for seawall rejections: `tonic::Status` codes with retry
//! pushback, trailers-only responses for tonic servers, and a status-code
//! classifier.
//!
//! Seawall layers fail with a [`BoxError`] holding a rejection marker. This
//! module maps any such error, also when wrapped in other errors (it follows
//! `source()` chains with [`error::rejection`](crate::error::rejection)), to the
//! status a gRPC client can act on:
//!
//! | rejection | code | `grpc-retry-pushback-ms` | message |
//! |---|---|---|---|
//! | [`CircuitOpen`](crate::error::CircuitOpen) | `UNAVAILABLE` | when known | `circuit open` |
//! | [`BulkheadFull`](crate::error::BulkheadFull) | `UNAVAILABLE` | when known | `bulkhead full` |
//! | [`Overloaded`](crate::error::Overloaded) | `UNAVAILABLE` | when known | `overloaded` |
//! | [`RetryBudgetExhausted`](crate::error::RetryBudgetExhausted) | `UNAVAILABLE` | — | `retry budget exhausted` |
//! | [`RateLimited`](crate::error::RateLimited) | `RESOURCE_EXHAUSTED` | when known | `rate limited` |
//! | [`DeadlineExceeded`](crate::error::DeadlineExceeded) | `DEADLINE_EXCEEDED` | — | `deadline exceeded` |
//! | [`AttemptTimeout`](crate::error::AttemptTimeout) | `DEADLINE_EXCEEDED` | — | `attempt timed out` |
//! | a `tonic::Status` (in the chain) | its own | its own | its own |
//! | [`InvalidTimeout`](crate::deadline::propagate::InvalidTimeout) (the caller's `grpc-timeout`, under `OnInvalid::Reject`) | `INVALID_ARGUMENT` | — | `invalid grpc-timeout` |
//! | any other error | `UNKNOWN` | — | `internal error` |
//!
//! The pushback (gRPC proposal A6) is the rejection's `retry_after` in whole
//! milliseconds, rounded **up** and never `0`; gRPC clients with retry
//! policies wait that long before their next attempt. Messages name the reason
//! only: never the layer instance, nor the message of a non-seawall error.
//!
//! - [`status_for`] builds the `tonic::Status` (for handlers and clients).
//! - [`GrpcRejectionLayer`] wraps a tonic server stack
//!   (`Server::builder().layer(...)`) and answers rejections as trailers-only
//!   gRPC responses, so clients see the code and the pushback (without it,
//!   tonic resets the stream and clients see `INTERNAL`).
//! - [`StatusErrorsLayer`] is the client side's: around seawall layers
//!   wrapping a `Channel`, their errors reach the caller as the mapped
//!   `Status` (not `UNKNOWN`), with the error as its source, so that
//!   [`error::rejection(&status)`](crate::error::rejection) tells this
//!   process's own refusal (kind, layer, `retry_after`) from a server's
//!   status. The [gRPC client preset](crate::ClientStack::grpc) ends with
//!   it.
//! - [`GrpcStatusClassifier`] classifies calls for the circuit breaker and
//!   the client throttle.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use seawall::error::RateLimited;
//! use seawall::grpc::status_for;
//! use seawall::BoxError;
//! use tonic::Code;
//!
//! let err: BoxError = RateLimited::new("per-tenant", Some(Duration::from_millis(250))).into();
//! let status = status_for(&err);
//! assert_eq!(status.code(), Code::ResourceExhausted);
//! assert_eq!(status.message(), "rate limited");
//! assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "250");
//! ```

mod across;
mod classify;
mod errors;
pub(crate) mod status;
pub(crate) mod transport;

pub use self::across::{response_for_status, status_for_response};
pub use self::classify::GrpcStatusClassifier;
pub use self::errors::{StatusErrors, StatusErrorsFuture, StatusErrorsLayer};
use self::status::GrpcAnswer;
pub use self::status::{PUSHBACK_HEADER, code_for};
pub use self::transport::{TonicTransport, TonicTransportFuture, TonicTransportLayer};

use crate::error::BoxError;

crate::http::named_answer! {
    /// Wraps a gRPC server stack so that its errors become proper trailers-only
    /// gRPC responses: HTTP 200, `content-type: application/grpc`, `grpc-status`,
    /// `grpc-message`, `grpc-retry-pushback-ms` when the rejection knows its wait,
    /// and an empty body. Clients then see the mapped code (`UNAVAILABLE`,
    /// `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`) and the pushback. Without it, a
    /// tonic server resets the stream for an error that is not a `tonic::Status`,
    /// and clients see `INTERNAL` ("h2 protocol error"). The wrapped service never fails (its error type is
    /// [`Infallible`](std::convert::Infallible)).
    ///
    /// Put it **outside** the seawall layers it answers for. It holds no state.
    ///
    /// On the client side, use [`StatusErrorsLayer`]: the same statuses, with
    /// the error they came from as their source.
    ///
    /// ```no_run
    /// use seawall::grpc::GrpcRejectionLayer;
    /// use tower::ServiceBuilder;
    ///
    /// # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
    /// tonic::transport::Server::builder()
    ///     .layer(
    ///         ServiceBuilder::new()
    ///             .layer(GrpcRejectionLayer::new())
    ///             // the seawall layers go here, below it
    ///             .concurrency_limit(64),
    ///     )
    ///     .add_routes(routes)
    ///     .serve("127.0.0.1:50051".parse()?)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    layer GrpcRejectionLayer;

    /// The service built by [`GrpcRejectionLayer`]: turns the inner service's
    /// `Err` into a trailers-only gRPC response. Works for any body type with
    /// a `Default` (the empty body of a trailers-only response).
    service GrpcRejection;
    /// The response future of [`GrpcRejection`]: the inner service's
    /// response, or the trailers-only answer for its error.
    future ResponseFuture;
    answer GrpcAnswer, body Default;
}

/// The `tonic::Status` for an error: the mapped code, message and pushback
/// for a seawall rejection (found through `source()` chains), a copy of the
/// `tonic::Status` found in the chain, or `UNKNOWN` (`internal error`) for any
/// other error. See the [module docs](self) for the table.
///
/// ```
/// use std::time::Duration;
/// use seawall::error::{CircuitOpen, DeadlineExceeded};
/// use seawall::grpc::status_for;
/// use seawall::BoxError;
/// use tonic::Code;
///
/// let open: BoxError = CircuitOpen::new("db", Some(Duration::from_millis(1400))).into();
/// let status = status_for(&open);
/// assert_eq!(status.code(), Code::Unavailable);
/// assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "1400");
///
/// let late: BoxError = DeadlineExceeded::new("edge").into();
/// assert_eq!(status_for(&late).code(), Code::DeadlineExceeded);
/// assert!(status_for(&late).metadata().get("grpc-retry-pushback-ms").is_none());
///
/// let other: BoxError = "db password rejected".into();
/// assert_eq!(status_for(&other).code(), Code::Unknown);
/// assert_eq!(status_for(&other).message(), "internal error");
/// ```
pub fn status_for(err: &BoxError) -> tonic::Status {
    status::status_for_error(&**err)
}
