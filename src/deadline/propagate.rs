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
//!   and sets the resulting [`Deadline`] in the request's extensions and as the
//!   task-local [`current()`](super::current) deadline for the whole call.
//!   Only the first value of each header is read. Unreadable values
//!   (anything but the exact wire format: a sign, spaces, a decimal point,
//!   non-ASCII bytes, too many digits) never panic: they are ignored and
//!   reported as [`EventKind::InputIgnored`], or refused with
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
//! use seawall::deadline::{self, Deadline, DeadlineFromHeadersLayer, PropagateDeadlineLayer};
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::service::{EXPIRED_ON_ARRIVAL, reject_deadline};
use super::wire::{ParseTimeoutError, format_grpc_timeout, parse_grpc_timeout, parse_timeout_ms};
use super::{Deadline, HasDeadline, Scoped};
use crate::body::CallBody;
use crate::clock;
use crate::deadline::layer::Shared;
use crate::error::{BoxError, ConfigError, Name};
use crate::observe::{EventKind, LayerKind, Observer};

/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The default integer-milliseconds header: `x-request-timeout-ms`.
pub const DEFAULT_MS_HEADER: &str = "x-request-timeout-ms";

/// The default cap on a timeout read from headers: 30 seconds.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

/// The `reason` of the [`EventKind::InputIgnored`] event reported when a
/// header asked for more than the configured maximum and was clamped.
pub const CLAMPED: &str = "clamped";

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
    /// [`EventKind::InputIgnored`]. The default.
    #[default]
    Ignore,
    /// Report [`EventKind::InputIgnored`] and fail the request with
    /// [`InvalidTimeout`], without calling the inner service.
    Reject,
}

/// A request carried a timeout header that could not be read, and the ingress
/// layer was configured with [`OnInvalid::Reject`]. Maps naturally to HTTP 400
/// / gRPC `INVALID_ARGUMENT`. Not a seawall rejection: the request was bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTimeout {
    input: &'static str,
    reason: ParseTimeoutError,
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

struct IngressConfig {
    grpc: bool,
    ms_header: Option<(HeaderName, &'static str)>,
    max: Duration,
    margin: Duration,
    default_budget: Option<Duration>,
    on_invalid: OnInvalid,
    shared: Arc<Shared>,
}

/// Reads the request's deadline from `grpc-timeout` and an integer-milliseconds
/// header (server side). See the [module documentation](self).
///
/// Defaults: reads `grpc-timeout` and `x-request-timeout-ms`, clamps to
/// 30 s, margin 0, no default budget, ignores invalid values, name
/// `"deadline_from_headers"`, no observer. The configuration is shared (an
/// `Arc`) by every service built from one layer.
#[derive(Clone)]
pub struct DeadlineFromHeadersLayer {
    cfg: Arc<IngressConfig>,
}

impl DeadlineFromHeadersLayer {
    /// The layer with every default (`builder().build()`).
    pub fn new() -> Self {
        // The defaults are valid by construction.
        match Self::builder().build() {
            Ok(layer) => layer,
            Err(e) => unreachable!("default deadline ingress configuration is valid: {e}"),
        }
    }

    /// A builder starting from the defaults.
    pub fn builder() -> DeadlineFromHeadersLayerBuilder {
        DeadlineFromHeadersLayerBuilder {
            grpc: true,
            ms_header: Some(DEFAULT_MS_HEADER),
            max: DEFAULT_MAX,
            margin: Duration::ZERO,
            default_budget: None,
            on_invalid: OnInvalid::Ignore,
            name: Name::from("deadline_from_headers"),
            observer: Observer::none(),
        }
    }
}

impl Default for DeadlineFromHeadersLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DeadlineFromHeadersLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cfg;
        f.debug_struct("DeadlineFromHeadersLayer")
            .field("grpc_timeout", &c.grpc)
            .field("ms_header", &c.ms_header.as_ref().map(|h| h.1))
            .field("max", &c.max)
            .field("margin", &c.margin)
            .field("default_budget", &c.default_budget)
            .field("on_invalid", &c.on_invalid)
            .field("name", &c.shared.name)
            .finish()
    }
}

impl<S> Layer<S> for DeadlineFromHeadersLayer {
    type Service = DeadlineFromHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineFromHeaders {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// Builds a [`DeadlineFromHeadersLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineFromHeadersLayerBuilder {
    grpc: bool,
    ms_header: Option<&'static str>,
    max: Duration,
    margin: Duration,
    default_budget: Option<Duration>,
    on_invalid: OnInvalid,
    name: Name,
    observer: Observer,
}

impl DeadlineFromHeadersLayerBuilder {
    /// The layer that holds the answers to the deadline this ingress reads
    /// (innermost in the server presets), reporting under the same name.
    #[cfg(all(feature = "retry", feature = "circuit-breaker", feature = "shed"))]
    pub(crate) fn answer_layer(
        &self,
        observer: Option<&Observer>,
    ) -> Result<crate::body::CallBodyLayer, ConfigError> {
        let observer = observer.cloned().unwrap_or_else(|| self.observer.clone());
        crate::body::CallBodyLayer::builder()
            .name(self.name.clone())
            .observer(observer)
            .build()
    }

    /// Caps every deadline at `budget` (the server's own budget, in the
    /// server presets), a request without a readable header included, so
    /// that the answer's body is held to it too.
    #[cfg(all(feature = "retry", feature = "circuit-breaker", feature = "shed"))]
    pub(crate) fn cap_at(mut self, budget: Duration) -> Self {
        self.max = self.max.min(budget);
        self.default_budget = Some(self.default_budget.map_or(budget, |d| d.min(budget)));
        self
    }

    /// Whether to read `grpc-timeout` (default `true`).
    pub fn grpc_timeout(mut self, read: bool) -> Self {
        self.grpc = read;
        self
    }

    /// The integer-milliseconds header to read (default
    /// `x-request-timeout-ms`). Checked by [`build`](Self::build).
    pub fn ms_header(mut self, name: &'static str) -> Self {
        self.ms_header = Some(name);
        self
    }

    /// Read no milliseconds header.
    pub fn no_ms_header(mut self) -> Self {
        self.ms_header = None;
        self
    }

    /// The longest timeout a caller may ask for (default 30 s). Longer
    /// values are clamped to it and reported as
    /// `InputIgnored { reason: "clamped" }`.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Time subtracted from the caller's timeout for this hop (default 0), so
    /// the answer can travel back before the caller gives up.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The budget given to requests that carry no (readable) timeout header
    /// (default: none, such requests get no deadline from this layer). Not
    /// reduced by the margin.
    pub fn default_budget(mut self, budget: Duration) -> Self {
        self.default_budget = Some(budget);
        self
    }

    /// What to do with unreadable values (default [`OnInvalid::Ignore`]).
    pub fn on_invalid(mut self, on_invalid: OnInvalid) -> Self {
        self.on_invalid = on_invalid;
        self
    }

    /// The instance name (default `"deadline_from_headers"`).
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// The observer that receives this layer's events (default: none).
    pub fn observer(mut self, observer: impl Into<Observer>) -> Self {
        self.observer = observer.into();
        self
    }

    /// Builds the layer. Fails on a zero `max`, a `margin` not below `max`, a
    /// `default_budget` of zero or above `max`, an invalid header name, or
    /// when no header is read and no default budget is set.
    pub fn build(self) -> Result<DeadlineFromHeadersLayer, ConfigError> {
        const KIND: &str = "deadline_from_headers";
        if self.max.is_zero() {
            return Err(ConfigError::new(
                KIND,
                "max must be greater than zero, got 0ns",
            ));
        }
        if self.margin >= self.max {
            return Err(ConfigError::new(
                KIND,
                format!(
                    "margin must be below max ({:?}), got {:?}",
                    self.max, self.margin
                ),
            ));
        }
        if let Some(d) = self.default_budget {
            if d.is_zero() || d > self.max {
                return Err(ConfigError::new(
                    KIND,
                    format!(
                        "default_budget must be in (0, max = {:?}], got {d:?}",
                        self.max
                    ),
                ));
            }
        }
        if !self.grpc && self.ms_header.is_none() && self.default_budget.is_none() {
            return Err(ConfigError::new(
                KIND,
                "reads no header (grpc_timeout false, no ms_header) and has no default_budget",
            ));
        }
        let ms_header = match self.ms_header {
            Some(n) => Some((header_name(KIND, n)?, n)),
            None => None,
        };
        Ok(DeadlineFromHeadersLayer {
            cfg: Arc::new(IngressConfig {
                grpc: self.grpc,
                ms_header,
                max: self.max,
                margin: self.margin,
                default_budget: self.default_budget,
                on_invalid: self.on_invalid,
                shared: Arc::new(Shared {
                    limit: self.max,
                    name: self.name,
                    observer: self.observer,
                }),
            }),
        })
    }
}

/// The service built by [`DeadlineFromHeadersLayer`]. `poll_ready` passes the
/// inner readiness through.
#[derive(Clone)]
pub struct DeadlineFromHeaders<S> {
    inner: S,
    cfg: Arc<IngressConfig>,
}

impl<S: fmt::Debug> fmt::Debug for DeadlineFromHeaders<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineFromHeaders")
            .field("inner", &self.inner)
            .field("name", &self.cfg.shared.name)
            .finish()
    }
}

impl IngressConfig {
    fn ignored(&self, input: &'static str, reason: &'static str) {
        self.shared.observer.emit(
            LayerKind::Deadline,
            self.shared.name.as_str(),
            EventKind::InputIgnored { input, reason },
        );
    }

    /// The timeout the headers ask for (already clamped), or the first
    /// invalid header when configured to reject.
    fn read<B>(&self, req: &http::Request<B>) -> Result<Option<Duration>, InvalidTimeout> {
        let mut asked: Option<(Duration, &'static str)> = None;
        let mut invalid = None;
        let mut take =
            |input: &'static str, parsed: Result<Duration, ParseTimeoutError>| match parsed {
                Ok(d) => {
                    if asked.is_none_or(|(a, _)| d < a) {
                        asked = Some((d, input));
                    }
                }
                Err(reason) => {
                    self.ignored(input, reason.as_str());
                    if invalid.is_none() {
                        invalid = Some(InvalidTimeout { input, reason });
                    }
                }
            };
        if self.grpc {
            if let Some(v) = req.headers().get(GRPC_TIMEOUT) {
                take(GRPC_TIMEOUT, parse_grpc_timeout(v.as_bytes()));
            }
        }
        if let Some((name, label)) = &self.ms_header {
            if let Some(v) = req.headers().get(name) {
                take(label, parse_timeout_ms(v.as_bytes()));
            }
        }
        if let (Some(err), OnInvalid::Reject) = (invalid, self.on_invalid) {
            return Err(err);
        }
        Ok(asked.map(|(d, input)| {
            if d > self.max {
                self.ignored(input, CLAMPED);
                self.max
            } else {
                d
            }
        }))
    }
}

impl<S, B> Service<http::Request<B>> for DeadlineFromHeaders<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = IngressFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let cfg = &*self.cfg;
        let now = clock::now();
        let budget = match cfg.read(&req) {
            Ok(asked) => asked
                .map(|d| d.saturating_sub(cfg.margin))
                .or(cfg.default_budget),
            Err(invalid) => {
                return IngressFuture {
                    state: IngressState::Rejected {
                        error: Some(invalid.into()),
                    },
                };
            }
        };
        let upstream = super::of(&req);
        let deadline = match (budget.map(|b| Deadline::after_from(now, b)), upstream) {
            (Some(d), u) => d.min_opt(u),
            (None, Some(u)) => u,
            (None, None) => {
                return IngressFuture {
                    state: IngressState::Plain {
                        inner: self.inner.call(req),
                    },
                };
            }
        };
        if deadline.instant() <= now {
            return IngressFuture {
                state: IngressState::Rejected {
                    error: Some(reject_deadline(
                        LayerKind::Deadline,
                        &cfg.shared,
                        EXPIRED_ON_ARRIVAL,
                    )),
                },
            };
        }
        req.set_deadline(deadline);
        let inner = &mut self.inner;
        let fut = super::sync_scope(deadline, || inner.call(req));
        IngressFuture {
            state: IngressState::Scoped {
                inner: super::scope(deadline, fut),
            },
        }
    }
}

pin_project! {
    #[project = IngressProj]
    enum IngressState<F> {
        Scoped {
            #[pin]
            inner: Scoped<F>,
        },
        Plain { #[pin] inner: F },
        Rejected { error: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`DeadlineFromHeaders`]: the inner future run
    /// with the request's deadline as the task-local deadline.
    pub struct IngressFuture<F> {
        #[pin]
        state: IngressState<F>,
    }
}

impl<F> fmt::Debug for IngressFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressFuture").finish_non_exhaustive()
    }
}

fn poll_rejected<T>(error: &mut Option<BoxError>) -> Poll<Result<T, BoxError>> {
    Poll::Ready(Err(error.take().unwrap_or_else(|| {
        "deadline future polled after completion".into()
    })))
}

impl<F, T, E> Future for IngressFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = crate::clock::Edge::enter();
        match self.project().state.project() {
            IngressProj::Scoped { inner } => inner.poll(cx).map_err(Into::into),
            IngressProj::Plain { inner } => inner.poll(cx).map_err(Into::into),
            IngressProj::Rejected { error } => poll_rejected(error),
        }
    }
}

struct EgressConfig {
    grpc: bool,
    ms_header: Option<HeaderName>,
    // Whether response bodies are held to the deadline too.
    body: bool,
    shared: Arc<Shared>,
}

/// Writes the time left in the request's budget onto outbound requests
/// (client side). See the [module documentation](self).
///
/// The time left is the earlier of the request's own deadline (its
/// extensions) and the task-local [`current()`](super::current) one. With
/// none, the request is sent unchanged. A timeout header already on the
/// request is kept when it is shorter. When no time is left (less than 1 ns,
/// or less than 1 ms when only the milliseconds header is written) the call
/// fails with [`DeadlineExceeded`](crate::error::DeadlineExceeded) and
/// nothing is sent.
///
/// Defaults ([`new`](Self::new)): writes both `grpc-timeout` and
/// `x-request-timeout-ms`, name `"propagate_deadline"`, no observer.
#[derive(Clone)]
pub struct PropagateDeadlineLayer {
    cfg: Arc<EgressConfig>,
}

impl PropagateDeadlineLayer {
    /// Writes both `grpc-timeout` and `x-request-timeout-ms`.
    pub fn new() -> Self {
        Self::make(true, Some(HeaderName::from_static(DEFAULT_MS_HEADER)))
    }

    /// Writes `grpc-timeout` only (gRPC clients).
    pub fn grpc() -> Self {
        Self::make(true, None)
    }

    /// Writes `x-request-timeout-ms` only (plain HTTP clients).
    pub fn http() -> Self {
        Self::make(false, Some(HeaderName::from_static(DEFAULT_MS_HEADER)))
    }

    fn make(grpc: bool, ms_header: Option<HeaderName>) -> Self {
        PropagateDeadlineLayer {
            cfg: Arc::new(EgressConfig {
                grpc,
                ms_header,
                body: true,
                shared: Arc::new(Shared {
                    limit: Duration::ZERO,
                    name: Name::from("propagate_deadline"),
                    observer: Observer::none(),
                }),
            }),
        }
    }

    /// A builder starting from the defaults of [`new`](Self::new).
    pub fn builder() -> PropagateDeadlineLayerBuilder {
        PropagateDeadlineLayerBuilder {
            grpc: true,
            ms_header: Some(DEFAULT_MS_HEADER),
            body: true,
            name: Name::from("propagate_deadline"),
            observer: Observer::none(),
        }
    }
}

impl Default for PropagateDeadlineLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PropagateDeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateDeadlineLayer")
            .field("grpc_timeout", &self.cfg.grpc)
            .field("ms_header", &self.cfg.ms_header)
            .field("name", &self.cfg.shared.name)
            .finish()
    }
}

impl<S> Layer<S> for PropagateDeadlineLayer {
    type Service = PropagateDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateDeadline {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// Builds a [`PropagateDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct PropagateDeadlineLayerBuilder {
    grpc: bool,
    ms_header: Option<&'static str>,
    body: bool,
    name: Name,
    observer: Observer,
}

impl PropagateDeadlineLayerBuilder {
    /// Whether to write `grpc-timeout` (default `true`).
    pub fn grpc_timeout(mut self, write: bool) -> Self {
        self.grpc = write;
        self
    }

    /// The integer-milliseconds header to write (default
    /// `x-request-timeout-ms`). Checked by [`build`](Self::build).
    pub fn ms_header(mut self, name: &'static str) -> Self {
        self.ms_header = Some(name);
        self
    }

    /// Write no milliseconds header.
    pub fn no_ms_header(mut self) -> Self {
        self.ms_header = None;
        self
    }

    /// Whether the deadline covers the response body too (default `true`:
    /// a body still streaming when the deadline passes ends with an error).
    /// With `false`, only the head is waited for against the deadline; the
    /// [`CallBody`] still carries what the layers above hold.
    pub fn body_deadline(mut self, covers: bool) -> Self {
        self.body = covers;
        self
    }

    /// The instance name (default `"propagate_deadline"`).
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// The observer that receives this layer's events (default: none).
    pub fn observer(mut self, observer: impl Into<Observer>) -> Self {
        self.observer = observer.into();
        self
    }

    /// Builds the layer. Fails when it would write no header, or on an
    /// invalid header name.
    pub fn build(self) -> Result<PropagateDeadlineLayer, ConfigError> {
        const KIND: &str = "propagate_deadline";
        if !self.grpc && self.ms_header.is_none() {
            return Err(ConfigError::new(
                KIND,
                "writes no header: enable grpc_timeout or set an ms_header",
            ));
        }
        let ms_header = match self.ms_header {
            Some(n) => Some(header_name(KIND, n)?),
            None => None,
        };
        Ok(PropagateDeadlineLayer {
            cfg: Arc::new(EgressConfig {
                grpc: self.grpc,
                ms_header,
                body: self.body,
                shared: Arc::new(Shared {
                    limit: Duration::ZERO,
                    name: self.name,
                    observer: self.observer,
                }),
            }),
        })
    }
}

/// The service built by [`PropagateDeadlineLayer`]. `poll_ready` passes the
/// inner readiness through.
#[derive(Clone)]
pub struct PropagateDeadline<S> {
    inner: S,
    cfg: Arc<EgressConfig>,
}

impl<S: fmt::Debug> fmt::Debug for PropagateDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateDeadline")
            .field("inner", &self.inner)
            .field("name", &self.cfg.shared.name)
            .finish()
    }
}

impl<S, B, RB> Service<http::Request<B>> for PropagateDeadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<CallBody<RB>>;
    type Error = BoxError;
    type Future = EgressFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let cfg = &*self.cfg;
        let Some(deadline) = super::of(&req) else {
            return EgressFuture {
                state: EgressState::Running {
                    inner: self.inner.call(req),
                    deadline: None,
                    shared: cfg.shared.clone(),
                },
            };
        };
        let left = deadline.remaining_from(clock::now());
        let least = if cfg.grpc {
            Duration::from_nanos(1)
        } else {
            Duration::from_millis(1)
        };
        if left < least {
            return EgressFuture {
                state: EgressState::Rejected {
                    error: Some(reject_deadline(
                        LayerKind::Deadline,
                        &cfg.shared,
                        EXPIRED_ON_ARRIVAL,
                    )),
                },
            };
        }
        let headers = req.headers_mut();
        // Room for both at once (an empty map allocates when it first grows).
        headers.reserve(usize::from(cfg.grpc) + usize::from(cfg.ms_header.is_some()));
        if cfg.grpc {
            let keep = headers
                .get(GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()).ok())
                .is_some_and(|existing| existing <= left);
            if !keep {
                if let Ok(v) = HeaderValue::from_str(format_grpc_timeout(left).as_str()) {
                    headers.insert(HeaderName::from_static(GRPC_TIMEOUT), v);
                }
            }
        }
        if let Some(name) = &cfg.ms_header {
            let keep = headers
                .get(name)
                .and_then(|v| parse_timeout_ms(v.as_bytes()).ok())
                .is_some_and(|existing| existing <= left);
            if !keep {
                let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                // Digits on the stack, copied once into the value.
                let mut buf = [0u8; 20];
                let mut at = buf.len();
                let mut n = ms;
                loop {
                    at -= 1;
                    buf[at] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                if let Ok(v) = HeaderValue::from_bytes(&buf[at..]) {
                    headers.insert(name.clone(), v);
                }
            }
        }
        EgressFuture {
            state: EgressState::Running {
                inner: self.inner.call(req),
                deadline: cfg.body.then_some(deadline),
                shared: cfg.shared.clone(),
            },
        }
    }
}

pin_project! {
    #[project = EgressProj]
    enum EgressState<F> {
        Running {
            #[pin]
            inner: F,
            deadline: Option<Deadline>,
            shared: Arc<Shared>,
        },
        Rejected { error: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`PropagateDeadline`].
    pub struct EgressFuture<F> {
        #[pin]
        state: EgressState<F>,
    }
}

impl<F> fmt::Debug for EgressFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for EgressFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<CallBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _edge = crate::clock::Edge::enter();
        match self.project().state.project() {
            EgressProj::Running {
                inner,
                deadline,
                shared,
            } => {
                let response = ready!(inner.poll(cx)).map_err(Into::into)?;
                let deadline = *deadline;
                let grpc = crate::body::is_grpc(&response);
                Poll::Ready(Ok(
                    response.map(|body| CallBody::new(body, deadline, shared, grpc))
                ))
            }
            EgressProj::Rejected { error } => poll_rejected(error),
        }
    }
}
