//! Ingress: the deadline read from a request's headers (server side).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderName;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    CLAMPED, DEFAULT_MAX, DEFAULT_MS_HEADER, GRPC_TIMEOUT, GRPC_TIMEOUT_NAME, InvalidTimeout,
    OnInvalid, header_name,
};
use crate::clock;
use crate::deadline::layer::Shared;
use crate::deadline::service::{EXPIRED_ON_ARRIVAL, reject_deadline};
use crate::deadline::wire::{ParseTimeoutError, parse_grpc_timeout, parse_timeout_ms};
use crate::deadline::{Deadline, HasDeadline};
use crate::error::{BoxError, ConfigError, Name};
use crate::hold::{Head, Release};
use crate::local::Scoped;
use crate::observe::{EventKind, LayerKind, Observer};

struct IngressConfig {
    grpc: bool,
    ms_header: Option<(HeaderName, &'static str)>,
    max: Duration,
    margin: Duration,
    default_budget: Option<Duration>,
    on_invalid: OnInvalid,
    /// A deadline cut to the server's own budget is no bad input (see
    /// `cap_at`): not reported.
    quiet_clamp: bool,
    shared: Arc<Shared>,
}

/// Reads the request's deadline from `grpc-timeout` and an integer-milliseconds
/// header (server side). See the [module documentation](super).
///
/// Defaults: reads `grpc-timeout` and `x-request-timeout-ms`, clamps to
/// 30 s, margin 0, no default budget, ignores invalid values, name
/// `"deadline_from_headers"`, no observer. The configuration is shared (an
/// `Arc`) by every service built from one layer.
///
/// `M` is how its services let go of a request they refuse ([`Head`]: drop
/// it; a server stack's ingress reads the rest of its body first, see
/// [`Release`]).
pub struct DeadlineFromHeadersLayer<M = Head> {
    cfg: Arc<IngressConfig>,
    hold: PhantomData<fn() -> M>,
}

impl<M> Clone for DeadlineFromHeadersLayer<M> {
    fn clone(&self) -> Self {
        DeadlineFromHeadersLayer {
            cfg: self.cfg.clone(),
            hold: PhantomData,
        }
    }
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
            max: None,
            margin: Duration::ZERO,
            default_budget: None,
            on_invalid: OnInvalid::Ignore,
            quiet_clamp: false,
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

impl<M> fmt::Debug for DeadlineFromHeadersLayer<M> {
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

impl<S, M> Layer<S> for DeadlineFromHeadersLayer<M> {
    type Service = DeadlineFromHeaders<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineFromHeaders {
            inner,
            cfg: self.cfg.clone(),
            hold: PhantomData,
        }
    }
}

impl<M> DeadlineFromHeadersLayer<M> {
    stacks_only! {
        /// The same layer, letting go of a request it refuses as `M2` does
        /// (see [`Release`]).
        pub(crate) fn held<M2>(self) -> DeadlineFromHeadersLayer<M2> {
            DeadlineFromHeadersLayer {
                cfg: self.cfg,
                hold: PhantomData,
            }
        }
    }
}

/// Builds a [`DeadlineFromHeadersLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineFromHeadersLayerBuilder {
    grpc: bool,
    ms_header: Option<&'static str>,
    /// `None`: the default (30 s), or the server's budget in a stack.
    max: Option<Duration>,
    margin: Duration,
    default_budget: Option<Duration>,
    on_invalid: OnInvalid,
    quiet_clamp: bool,
    name: Name,
    observer: Observer,
}

impl DeadlineFromHeadersLayerBuilder {
    /// The margin per hop it takes off a caller's time.
    #[cfg(all(feature = "retry", feature = "circuit-breaker", feature = "shed"))]
    pub(crate) fn margin_value(&self) -> Duration {
        self.margin
    }

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
    /// that the answer's body is held to it too. The cap a caller may ask
    /// for is the budget itself, or a lower [`max`](Self::max) if one was
    /// set (which then bounds the requests without a header too).
    #[cfg(all(feature = "retry", feature = "circuit-breaker", feature = "shed"))]
    pub(crate) fn cap_at(mut self, budget: Duration) -> Self {
        let max = self.max.map_or(budget, |m| m.min(budget));
        // A caller's deadline longer than the server's budget is what the
        // presets' advice makes of every caller's (a budget a little under
        // what they wait): cut, not reported (an outside trial's "ignored
        // input" counted every request). A lower `max` set by hand still
        // reports what it cuts.
        self.quiet_clamp = max == budget;
        self.max = Some(max);
        // A default budget set by hand above `max` is still refused by
        // `build`; one not set is the cap.
        self.default_budget = Some(self.default_budget.map_or(max, |d| d.min(budget)));
        self
    }

    super::header_setters!("read", "Read");

    /// The longest timeout a caller may ask for (default 30 s; in a
    /// [`ServerStack`](crate::stack::ServerStack), the stack's total
    /// budget). Longer values are clamped to it and reported as
    /// `InputIgnored { reason: "clamped" }`, but in a server stack those
    /// cut to the stack's own budget (a caller waiting longer than the
    /// server works is no bad input; only a lower `max` set here reports).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = Some(max);
        self
    }

    /// Time subtracted from the caller's timeout for this hop (default 0), so
    /// the answer can travel back before the caller gives up. The server
    /// stacks take 10 ms: with none, the server's own answer to the
    /// deadline (`504`, `DEADLINE_EXCEEDED`) and the caller's timer fire at
    /// the same instant, and on loopback the same call ended sometimes as
    /// the one, sometimes as the other. The layer alone keeps 0, the time
    /// the caller sent.
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

    crate::observe::name_and_observer!(
        "The instance name (default `\"deadline_from_headers\"`).",
        "The observer that receives this layer's events (default: none)."
    );

    /// Builds the layer. Fails on a zero `max`, a `margin` not below `max`, a
    /// `default_budget` of zero or above `max`, an invalid header name, or
    /// when no header is read and no default budget is set.
    pub fn build(self) -> Result<DeadlineFromHeadersLayer, ConfigError> {
        const KIND: &str = "deadline_from_headers";
        let max = self.max.unwrap_or(DEFAULT_MAX);
        if max.is_zero() {
            return Err(ConfigError::new(
                KIND,
                "max must be greater than zero, got 0ns",
            ));
        }
        if self.margin >= max {
            return Err(ConfigError::new(
                KIND,
                format!(
                    "margin must be below max ({:?}), got {:?}",
                    max, self.margin
                ),
            ));
        }
        if let Some(d) = self.default_budget {
            if d.is_zero() || d > max {
                return Err(ConfigError::new(
                    KIND,
                    format!("default_budget must be in (0, max = {:?}], got {d:?}", max),
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
                max,
                margin: self.margin,
                default_budget: self.default_budget,
                on_invalid: self.on_invalid,
                quiet_clamp: self.quiet_clamp,
                shared: Arc::new(Shared::new(max, self.name, self.observer)),
            }),
            hold: PhantomData,
        })
    }
}

/// The service built by [`DeadlineFromHeadersLayer`]. `poll_ready` passes the
/// inner readiness through.
///
/// `M` is how it lets go of a request it refuses (out of time on arrival,
/// or with a header it rejects): [`Head`] drops it; the server presets'
/// [`Inbound`](crate::hold::Inbound) reads the rest of its body first (see
/// [`Release`]).
pub struct DeadlineFromHeaders<S, M = Head> {
    inner: S,
    cfg: Arc<IngressConfig>,
    hold: PhantomData<fn() -> M>,
}

impl<S: Clone, M> Clone for DeadlineFromHeaders<S, M> {
    fn clone(&self) -> Self {
        DeadlineFromHeaders {
            inner: self.inner.clone(),
            cfg: self.cfg.clone(),
            hold: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for DeadlineFromHeaders<S, M> {
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
            if let Some(v) = req.headers().get(&GRPC_TIMEOUT_NAME) {
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
                if !self.quiet_clamp {
                    self.ignored(input, CLAMPED);
                }
                self.max
            } else {
                d
            }
        }))
    }
}

impl<S, B, M> Service<http::Request<B>> for DeadlineFromHeaders<S, M>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    M: Release<http::Request<B>>,
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
        let now = clock::edge_now();
        let budget = match cfg.read(&req) {
            Ok(asked) => asked
                .map(|d| d.saturating_sub(cfg.margin))
                .or(cfg.default_budget),
            Err(invalid) => {
                M::release(req);
                return IngressFuture {
                    state: IngressState::Rejected {
                        error: Some(invalid.into()),
                    },
                };
            }
        };
        let upstream = crate::deadline::of(&req);
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
            let error = reject_deadline(LayerKind::Deadline, &cfg.shared, EXPIRED_ON_ARRIVAL);
            M::release(req);
            return IngressFuture {
                state: IngressState::Rejected { error: Some(error) },
            };
        }
        req.set_deadline(deadline);
        // Built whole inside the scope (ARCHITECTURE.md, the shape of every
        // layer).
        let inner = &mut self.inner;
        crate::deadline::sync_scope(deadline, || IngressFuture {
            state: IngressState::Scoped {
                inner: crate::deadline::scope(deadline, inner.call(req)),
            },
        })
    }
}

pin_project! {
    #[project = IngressProj]
    enum IngressState<F> {
        Scoped {
            #[pin]
            inner: Scoped<Deadline, F>,
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

impl<F, T, E> Future for IngressFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // No edge of the clock: an answer passes through without a read.
        match self.project().state.project() {
            IngressProj::Scoped { inner } => inner.poll(cx).map_err(Into::into),
            IngressProj::Plain { inner } => inner.poll(cx).map_err(Into::into),
            IngressProj::Rejected { error } => crate::error::poll_rejected(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Recorder;

    const MS: Duration = Duration::from_millis(1);

    /// What `layer` reads from a request carrying `headers`.
    fn read(
        layer: &DeadlineFromHeadersLayer,
        headers: &[(&'static str, &'static str)],
    ) -> Result<Option<Duration>, InvalidTimeout> {
        let mut req = http::Request::new(());
        for (name, value) in headers {
            req.headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        layer.cfg.read(&req)
    }

    fn ignored(rec: &Recorder, input: &'static str, reason: &'static str) -> usize {
        rec.count(|e| e.kind == EventKind::InputIgnored { input, reason })
    }

    #[test]
    fn the_smaller_header_wins_and_a_larger_than_max_one_is_clamped() {
        let rec = Recorder::new();
        let layer = DeadlineFromHeadersLayer::builder()
            .max(Duration::from_secs(10))
            .observer(rec.clone())
            .build()
            .unwrap();
        let both = |grpc, ms| read(&layer, &[(GRPC_TIMEOUT, grpc), (DEFAULT_MS_HEADER, ms)]);
        assert_eq!(both("2S", "1500"), Ok(Some(1500 * MS)));
        assert_eq!(both("1S", "1500"), Ok(Some(1000 * MS)));
        assert_eq!(read(&layer, &[]), Ok(None));
        assert_eq!(read(&layer, &[(GRPC_TIMEOUT, "1M")]), Ok(Some(10_000 * MS)));
        assert_eq!(ignored(&rec, GRPC_TIMEOUT, CLAMPED), 1);
    }

    #[test]
    fn an_unreadable_header_is_ignored_with_an_event_or_refused() {
        let rec = Recorder::new();
        let lenient = DeadlineFromHeadersLayer::builder()
            .observer(rec.clone())
            .build()
            .unwrap();
        let headers = [(GRPC_TIMEOUT, "5s"), (DEFAULT_MS_HEADER, "700")];
        assert_eq!(read(&lenient, &headers), Ok(Some(700 * MS)));
        assert_eq!(ignored(&rec, GRPC_TIMEOUT, "bad_unit"), 1);

        let strict = DeadlineFromHeadersLayer::builder()
            .on_invalid(OnInvalid::Reject)
            .build()
            .unwrap();
        let err = read(&strict, &headers).unwrap_err();
        assert_eq!(
            (err.input(), err.reason()),
            (GRPC_TIMEOUT, ParseTimeoutError::BadUnit)
        );
        assert_eq!(
            read(&strict, &[(DEFAULT_MS_HEADER, "700")]),
            Ok(Some(700 * MS))
        );
    }

    #[test]
    fn a_header_switched_off_is_not_read() {
        let no_grpc = DeadlineFromHeadersLayer::builder()
            .grpc_timeout(false)
            .build()
            .unwrap();
        assert_eq!(read(&no_grpc, &[(GRPC_TIMEOUT, "1S")]), Ok(None));
        let no_ms = DeadlineFromHeadersLayer::builder()
            .no_ms_header()
            .build()
            .unwrap();
        assert_eq!(read(&no_ms, &[(DEFAULT_MS_HEADER, "700")]), Ok(None));
        let own = DeadlineFromHeadersLayer::builder()
            .ms_header("x-budget-ms")
            .build()
            .unwrap();
        assert_eq!(read(&own, &[("x-budget-ms", "250")]), Ok(Some(250 * MS)));
        assert_eq!(read(&own, &[(DEFAULT_MS_HEADER, "700")]), Ok(None));
    }
}
