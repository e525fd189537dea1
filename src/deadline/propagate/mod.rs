//! Deadline propagation over HTTP and gRPC headers (feature `http`).
//!
//! Two layers carry a request's deadline across hops as a *relative*
//! timeout, so clock skew between hosts does not matter:
//!
//! - **Ingress** ([`DeadlineFromHeadersLayer`], for servers) reads
//!   `grpc-timeout` and an integer-milliseconds header (default
//!   [`DEFAULT_MS_HEADER`], `x-request-timeout-ms`), takes the smaller,
//!   clamps it to a maximum (default [`DEFAULT_MAX`], 30 s: a client may not
//!   reserve a server for an hour), subtracts a per-hop margin (default 0),
//!   and sets the resulting [`Deadline`](super::Deadline) in the request's extensions and as the
//!   task-local [`current()`](super::current) deadline for the whole call.
//!   Only the first value of each header is read. Unreadable values
//!   (anything but the exact wire format: a sign, spaces, a decimal point,
//!   non-ASCII bytes, too many digits) never panic: they are ignored and
//!   reported as [`EventKind::InputIgnored`](crate::observe::EventKind::InputIgnored), or refused with
//!   [`InvalidTimeout`] under [`OnInvalid::Reject`]. A deadline that has
//!   already passed on arrival (`0m`, or no more than the margin) is refused
//!   with [`DeadlineExceeded`](crate::error::DeadlineExceeded) without calling
//!   the inner service.
//! - **Egress** ([`PropagateDeadlineLayer`], for clients) writes the time left
//!   (the earlier of the request's deadline and the task-local one) onto the
//!   outbound request as `grpc-timeout` and/or the milliseconds header,
//!   rounding **down**, and fails with
//!   [`DeadlineExceeded`](crate::error::DeadlineExceeded) instead of sending
//!   when no time is left.
//!
//! The ingress layer does not enforce the deadline by itself: put a
//! [`DeadlineLayer`](super::DeadlineLayer) below it (its budget then acts as
//! the server's own cap, and the client's shorter deadline wins).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use seawall::deadline::{self, Deadline};
//! use seawall::{DeadlineFromHeadersLayer, PropagateDeadlineLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! // A client the handler uses: it records the header it would send.
//! let client = PropagateDeadlineLayer::new().layer(service_fn(|req: http::Request<()>| async move {
//!     let sent = req.headers()["grpc-timeout"].to_str()?.to_owned();
//!     Ok::<_, seawall::BoxError>(http::Response::new(sent))
//! }));
//!
//! let server = DeadlineFromHeadersLayer::builder()
//!     .margin(Duration::from_millis(50))
//!     .build()?
//!     .layer(service_fn(move |req: http::Request<()>| {
//!         let client = client.clone();
//!         async move {
//!             // The handler sees the budget in the task-local and in the
//!             // request's extensions (axum: `Extension<Deadline>`).
//!             let from_ext = req.extensions().get::<Deadline>().map(|d| d.remaining());
//!             assert_eq!(from_ext, Some(Duration::from_millis(1450)));
//!             assert_eq!(deadline::remaining(), Some(Duration::from_millis(1450)));
//!             tokio::time::sleep(Duration::from_millis(100)).await;
//!             let res = client.oneshot(http::Request::new(())).await?;
//!             Ok::<_, seawall::BoxError>(res.map(seawall::body::CallBody::into_inner))
//!         }
//!     }));
//!
//! let req = http::Request::builder().header("grpc-timeout", "1500m").body(())?;
//! assert_eq!(server.oneshot(req).await?.into_body(), "1350m");
//! # Ok(())
//! # }
//! ```

mod egress;
mod ingress;

pub use self::egress::{
    EgressFuture, PropagateDeadline, PropagateDeadlineLayer, PropagateDeadlineLayerBuilder,
};
pub use self::ingress::{
    DeadlineFromHeaders, DeadlineFromHeadersLayer, DeadlineFromHeadersLayerBuilder, IngressFuture,
};

use std::fmt;
use std::time::Duration;

use http::header::HeaderName;

use super::wire::ParseTimeoutError;
use crate::error::ConfigError;

/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// [`GRPC_TIMEOUT`] as a header name, made at compile time (a name made
/// from a string at run time is validated byte by byte on every call).
pub(crate) const GRPC_TIMEOUT_NAME: http::HeaderName = http::HeaderName::from_static(GRPC_TIMEOUT);

/// The default integer-milliseconds header: `x-request-timeout-ms`.
pub const DEFAULT_MS_HEADER: &str = "x-request-timeout-ms";

/// The default cap on a timeout read from headers: 30 seconds.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

/// The `reason` of the [`EventKind::InputIgnored`](crate::observe::EventKind::InputIgnored) event reported when a
/// header asked for more than the configured maximum and was clamped.
pub(crate) const CLAMPED: &str = "clamped";

/// The header setters both builders share (`grpc-timeout`, the milliseconds
/// header), read by the ingress, written by the egress.
macro_rules! header_setters {
    ($verb:literal, $Verb:literal) => {
        #[doc = concat!("Whether to ", $verb, " `grpc-timeout` (default `true`).")]
        pub fn grpc_timeout(mut self, on: bool) -> Self {
            self.grpc = on;
            self
        }

        #[doc = concat!("The integer-milliseconds header to ", $verb, " (default")]
        /// `x-request-timeout-ms`). Checked by [`build`](Self::build).
        pub fn ms_header(mut self, name: &'static str) -> Self {
            self.ms_header = Some(name);
            self
        }

        #[doc = concat!($Verb, " no milliseconds header.")]
        pub fn no_ms_header(mut self) -> Self {
            self.ms_header = None;
            self
        }
    };
}
use header_setters;

fn header_name(layer: &'static str, name: &'static str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        ConfigError::new(
            layer,
            format!("ms_header must be a valid HTTP header name, got {name:?}"),
        )
    })
}

/// What the ingress layer does with a timeout header it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnInvalid {
    /// Ignore the header (as if absent) and report
    /// [`EventKind::InputIgnored`](crate::observe::EventKind::InputIgnored). The default.
    #[default]
    Ignore,
    /// Report [`EventKind::InputIgnored`](crate::observe::EventKind::InputIgnored) and fail the request with
    /// [`InvalidTimeout`], without calling the inner service.
    Reject,
}

/// A request carried a timeout header that could not be read, and the ingress
/// layer was configured with [`OnInvalid::Reject`]. Maps naturally to HTTP 400
/// / gRPC `INVALID_ARGUMENT`. Not a seawall rejection: the request was bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTimeout {
    pub(super) input: &'static str,
    pub(super) reason: ParseTimeoutError,
}

impl InvalidTimeout {
    /// The header (`"grpc-timeout"` or the milliseconds header name).
    pub fn input(&self) -> &'static str {
        self.input
    }

    /// What was wrong with it.
    pub fn reason(&self) -> ParseTimeoutError {
        self.reason
    }
}

impl fmt::Display for InvalidTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} header: {}", self.input, self.reason)
    }
}

impl std::error::Error for InvalidTimeout {}
