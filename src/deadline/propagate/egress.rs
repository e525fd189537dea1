//! Egress: the time left written onto an outbound request (client side).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::HeaderName;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{DEFAULT_MS_HEADER, GRPC_TIMEOUT_NAME, header_name};
use crate::body::CallBody;
use crate::clock;
use crate::deadline::Deadline;
use crate::deadline::layer::Shared;
use crate::deadline::service::{EXPIRED_ON_ARRIVAL, reject_deadline};
use crate::deadline::wire::{format_grpc_timeout, parse_grpc_timeout, parse_timeout_ms};
use crate::error::{BoxError, ConfigError, Name};
use crate::http::value::header_value;
use crate::observe::{LayerKind, Observer};

struct EgressConfig {
    grpc: bool,
    ms_header: Option<HeaderName>,
    // Whether response bodies are held to the deadline too.
    body: bool,
    shared: Arc<Shared>,
}

/// Writes the time left in the request's budget onto outbound requests
/// (client side). See the [module documentation](super).
///
/// The time left is the earlier of the request's own deadline (its
/// extensions) and the task-local [`current()`](crate::deadline::current) one. With
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
    /// Writes both `grpc-timeout` and `x-request-timeout-ms`
    /// (`builder().build()`).
    pub fn new() -> Self {
        Self::preset(Self::builder())
    }

    /// Writes `grpc-timeout` only (gRPC clients).
    pub fn grpc() -> Self {
        Self::preset(Self::builder().no_ms_header())
    }

    /// Writes `x-request-timeout-ms` only (plain HTTP clients).
    pub fn http() -> Self {
        Self::preset(Self::builder().grpc_timeout(false))
    }

    fn preset(builder: PropagateDeadlineLayerBuilder) -> Self {
        // The presets are valid by construction.
        match builder.build() {
            Ok(layer) => layer,
            Err(e) => unreachable!("preset propagation settings are valid: {e}"),
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
    super::header_setters!("write", "Write");

    /// Whether the deadline covers the response body too (default `true`:
    /// a body still streaming when the deadline passes ends with an error).
    /// With `false`, only the head is waited for against the deadline; the
    /// [`CallBody`] still carries what the layers above hold.
    pub fn body_deadline(mut self, covers: bool) -> Self {
        self.body = covers;
        self
    }

    crate::observe::name_and_observer!(
        "The instance name (default `\"propagate_deadline\"`).",
        "The observer that receives this layer's events (default: none)."
    );

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
                shared: Arc::new(Shared::new(Duration::ZERO, self.name, self.observer)),
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
        let Some(deadline) = crate::deadline::of(&req) else {
            return EgressFuture {
                state: EgressState::Running {
                    inner: self.inner.call(req),
                    deadline: None,
                    shared: cfg.shared.clone(),
                },
            };
        };
        let left = deadline.remaining_from(clock::edge_now());
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
                .get(&GRPC_TIMEOUT_NAME)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()).ok())
                .is_some_and(|existing| existing <= left);
            if !keep {
                if let Some(v) = header_value(format_grpc_timeout(left).as_bytes()) {
                    headers.insert(GRPC_TIMEOUT_NAME, v);
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
                // Digits on the stack, copied once into this thread's
                // buffer of values (no allocation per value).
                let mut buf = [0u8; 20];
                if let Some(v) = header_value(crate::deadline::wire::decimal(ms, &mut buf)) {
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
        // No edge of the clock: the answer is wrapped without a read.
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
            EgressProj::Rejected { error } => crate::error::poll_rejected(error),
        }
    }
}
