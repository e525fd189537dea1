//! The per-attempt timeout: its layer, service and response future.

use crate::stripe::Striped;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::Deadline;
use super::future::State;
use super::layer::Shared;
use super::service::{EXPIRED_ON_ARRIVAL, reject_deadline};
use crate::clock;
use crate::error::{BoxError, ConfigError, Name};
use crate::observe::{LayerKind, Observer};

/// Limits each attempt to `min(per_try, time left in the request's budget)`.
///
/// Place it innermost, below a retry layer, so each retry gets a fresh
/// per-attempt timer while the [`DeadlineLayer`](super::DeadlineLayer) above bounds them all. See
/// the [module documentation](crate::deadline).
///
/// ```
/// use std::time::Duration;
/// use seawall::deadline::AttemptTimeoutLayer;
///
/// let layer = AttemptTimeoutLayer::new(Duration::from_millis(300))?;
/// assert_eq!(layer.per_try(), Duration::from_millis(300));
/// let named = AttemptTimeoutLayer::builder(Duration::from_millis(300)).name("inventory-try").build()?;
/// assert_eq!(named.name(), "inventory-try");
/// # Ok::<(), seawall::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct AttemptTimeoutLayer {
    shared: Striped<Shared>,
}

impl AttemptTimeoutLayer {
    /// A layer limiting each attempt to `per_try`, named `"attempt_timeout"`,
    /// with no observer: `builder(per_try).build()`, so a zero `per_try` is
    /// refused.
    pub fn new(per_try: Duration) -> Result<Self, ConfigError> {
        Self::builder(per_try).build()
    }

    /// A builder for a layer limiting each attempt to `per_try`.
    pub fn builder(per_try: Duration) -> AttemptTimeoutLayerBuilder {
        AttemptTimeoutLayerBuilder {
            per_try,
            name: Name::from("attempt_timeout"),
            observer: Observer::none(),
            own_end: super::ANSWER_MARGIN,
        }
    }

    /// The per-attempt timeout.
    pub fn per_try(&self) -> Duration {
        self.shared.limit
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        self.shared.name.as_str()
    }

    stacks_only! {
        /// The same layer, linked to the retry layer above it in a stack:
        /// while `signal` is set (timeouts are common, so a timed-out
        /// attempt would not be retried), an attempt that reaches its limit
        /// is not cut but runs on to the request's deadline.
        pub(crate) fn with_retry_signal(self, signal: super::RetrySignal) -> Self {
            AttemptTimeoutLayer {
                shared: Striped::new(Shared {
                    own_end: self.shared.own_end,
                    retry_signal: Some(signal),
                    ..Shared::new(
                        self.shared.limit,
                        self.shared.name.clone(),
                        self.shared.observer.clone(),
                    )
                }),
            }
        }
    }
}

impl fmt::Debug for AttemptTimeoutLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeoutLayer")
            .field("per_try", &self.shared.limit)
            .field("name", &self.shared.name)
            .field("observer", &self.shared.observer)
            .finish()
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeoutService::new(inner, self.shared.clone())
    }
}

/// Builds an [`AttemptTimeoutLayer`]; see [`AttemptTimeoutLayer::builder`].
#[derive(Debug, Clone)]
pub struct AttemptTimeoutLayerBuilder {
    per_try: Duration,
    name: Name,
    observer: Observer,
    own_end: Duration,
}

impl AttemptTimeoutLayerBuilder {
    crate::observe::name_and_observer!(
        "The instance name used in events and rejections (default `\"attempt_timeout\"`).",
        "The observer that receives this layer's events (default: none)."
    );

    stacks_only! {
        /// An attempt that the request's deadline ends within `margin` of
        /// its own end ends as the attempt's own timeout (default 20 ms,
        /// and at most a tenth of the attempt timeout); a server's handler
        /// timeout takes zero: a deadline that ends its handler with the
        /// handler's own timeout is the request's.
        pub(crate) fn own_end(mut self, margin: Duration) -> Self {
            self.own_end = margin;
            self
        }
    }

    /// Builds the layer. Fails if `per_try` is zero.
    pub fn build(self) -> Result<AttemptTimeoutLayer, ConfigError> {
        if self.per_try.is_zero() {
            return Err(ConfigError::new(
                "attempt_timeout",
                "per_try must be greater than zero, got 0ns",
            ));
        }
        self.observer.layer_built(
            crate::observe::LayerKind::AttemptTimeout,
            self.name.as_str(),
            &[crate::observe::refusal(
                crate::error::RejectionKind::AttemptTimeout,
                super::service::TIMED_OUT,
            )],
        );
        Ok(AttemptTimeoutLayer {
            shared: Striped::new(Shared {
                own_end: self.own_end.min(self.per_try / 10),
                ..Shared::new(self.per_try, self.name, self.observer)
            }),
        })
    }
}

/// The service built by [`AttemptTimeoutLayer`](super::AttemptTimeoutLayer).
///
/// Each call (each attempt) gets `min(per_try, time left)` where the time
/// left comes from the task-local [`current()`](super::current) deadline,
/// read when `call` runs. `poll_ready` passes the inner readiness through; the
/// per-attempt timer starts at `call`.
pub struct AttemptTimeoutService<S> {
    inner: S,
    shared: Striped<Shared>,
}

impl<S> AttemptTimeoutService<S> {
    pub(crate) fn new(inner: S, shared: Striped<Shared>) -> Self {
        AttemptTimeoutService { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes this service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for AttemptTimeoutService<S> {
    fn clone(&self) -> Self {
        AttemptTimeoutService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AttemptTimeoutService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeoutService")
            .field("inner", &self.inner)
            .field("per_try", &self.shared.limit)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, Req> Service<Req> for AttemptTimeoutService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let _edge = crate::clock::Edge::enter();
        let now = clock::edge_now();
        let per_try = Deadline::after_from(now, self.shared.limit);
        let overall = super::current();
        let (deadline, overall_binds, uncut) = match overall {
            Some(o) if o <= per_try => (o, true, false),
            // An attempt no retry can follow (the retry layer above has no
            // attempt, copy or budget left for one) is not cut at its own
            // limit: under the request's deadline (the one the calls below
            // see and send), its timer tells the retry layer when it passes
            // its limit, then runs on to that deadline, where the attempt
            // ends as its own timeout (a dependency that hangs is counted).
            Some(_) if super::retry_may_follow() == Some(false) => (per_try, true, true),
            _ => (per_try, false, false),
        };
        if overall_binds && deadline.instant() <= now {
            return AttemptFuture::rejected(reject_deadline(
                LayerKind::AttemptTimeout,
                &self.shared,
                EXPIRED_ON_ARRIVAL,
            ));
        }
        // The request's deadline cuts the attempt short: it ends as that
        // deadline, which says nothing of the dependency (a circuit breaker
        // does not count it). Within 20 ms of the attempt's own end (a
        // tenth of the attempt timeout, when that is less) the
        // dependency had its attempt timeout, and the attempt ends as its
        // own: a stack whose attempt timeout is its budget still counts a
        // dependency that hangs.
        let cut_short = overall_binds
            && deadline
                .instant()
                .checked_add(self.shared.own_end)
                .is_some_and(|t| t <= per_try.instant());
        // When the request's deadline binds, it is the task-local one
        // already: no scope of its own to set.
        // Taken before the inner call, which comes last (ARCHITECTURE.md,
        // the shape of every layer).
        let kept = super::future::sealed::Kept::new(&self.shared);
        if overall_binds {
            AttemptFuture::running(self.inner.call(req), deadline, true, cut_short, uncut, kept)
        } else {
            // Built whole inside the scope.
            let inner = &mut self.inner;
            super::sync_scope(deadline, || {
                AttemptFuture::running(inner.call(req), deadline, false, false, false, kept)
            })
        }
    }
}

pin_project! {
    /// The response future of [`AttemptTimeoutService`](super::AttemptTimeoutService).
    ///
    /// Runs the inner future with the attempt's deadline as the task-local
    /// [`current()`](super::current) deadline, so layers below (such as
    /// [`PropagateDeadline`](super::PropagateDeadlineLayer) with feature
    /// `http`) see the attempt's limit. Fails with
    /// [`AttemptTimeout`](crate::error::AttemptTimeout) when the per-attempt
    /// timer fires while budget remains, or with
    /// [`DeadlineExceeded`](crate::error::DeadlineExceeded) when the request's
    /// deadline cut the attempt short (by 20 ms or more; see the
    /// [module documentation](super)). An attempt no retry can follow (a
    /// retry layer above says so) is not cut at its limit: it runs on, and
    /// fails with `AttemptTimeout` at the request's deadline.
    pub struct AttemptFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F: Future> AttemptFuture<F> {
    #[inline]
    pub(crate) fn running(
        inner: F,
        deadline: Deadline,
        overall_binds: bool,
        cut_short: bool,
        uncut: bool,
        kept: super::future::sealed::Kept,
    ) -> Self {
        // Built in place (a helper returning the state costs a copy of
        // the inner future).
        AttemptFuture {
            state: State::Running {
                inner,
                sleep: None,
                deadline,
                shared: kept,
                overall_binds,
                cut_short,
                uncut,
                expiry: std::marker::PhantomData,
            },
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        AttemptFuture {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // No edge of the clock: an answer passes through without a clock
        // read (see `clock::edge_now`); a fired timer is judged by the timer.
        self.project()
            .state
            .poll_state(cx, LayerKind::AttemptTimeout)
    }
}

impl<F> fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptFuture").finish_non_exhaustive()
    }
}
