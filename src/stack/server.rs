//! The recommended server stack.

use std::fmt;

use std::time::Duration;

use tower::layer::util::Identity;
use tower_layer::Layer;

use super::part::{HoldPoint, IngressPart, InnerTimeout, Skip, StackPart, part_name, stack_timers};
use crate::bulkhead::{Bulkhead, BulkheadBuilder, BulkheadHandle, BulkheadLayer};
use crate::deadline::{
    AttemptTimeoutLayer, AttemptTimeoutService, DeadlineLayer, DeadlineService, InnerTimers,
};
use crate::error::{ConfigError, Name};
use crate::hold::{Head, Inbound};
use crate::observe::Observer;
use crate::shed::criticality::FromTaskLocal;
use crate::shed::{AdaptiveLimit, AdaptiveLimitLayer, AdaptiveLimitLayerBuilder};

const KIND: &str = "server_stack";

/// The server stacks' margin per hop: taken off the time a client says
/// it has, so that the server's own answer (504, `DEADLINE_EXCEEDED`)
/// reaches the client before the client's timer fires. Without it both
/// fire at the same instant and the same call ends sometimes as the
/// server's answer, sometimes as the client's timeout (seen on loopback
/// with the client preset's attempt timeout).
#[cfg(feature = "http")]
pub(crate) const HOP_MARGIN: Duration = Duration::from_millis(10);

/// Handlers in flight at most, whatever the adaptive limit says: a guard on
/// memory, at twice the adaptive limit's default maximum (`QueueDelay`,
/// 1000), so that the adaptive limit (which sheds by priority) is what
/// turns requests away: at the limit, the classes' guaranteed shares
/// (70 % of it by default for `Critical` and `CriticalPlus`, 80 % in all)
/// admit up to 1.8 times the limit in flight. At 1000, a limit of 900 held
/// by sheddable work let 100 of the 450 critical requests its share
/// guarantees in, and refused the rest `BulkheadFull`, blind to priority.
/// A limit's maximum set higher raises it (see [`derived_bulkhead`]).
const BULKHEAD_MAX_CONCURRENT: usize = 2000;

/// The bulkhead of a server stack whose bulkhead limit was not set: twice
/// the adaptive limit's maximum, at least [`BULKHEAD_MAX_CONCURRENT`] and
/// at most the bulkhead's largest, so that a maximum raised by the builder
/// or by a reload still leaves the adaptive limit to decide by priority.
pub(crate) fn derived_bulkhead(max_limit: Option<usize>) -> usize {
    max_limit
        .map_or(BULKHEAD_MAX_CONCURRENT, |m| {
            m.saturating_mul(2).max(BULKHEAD_MAX_CONCURRENT)
        })
        .min(crate::bulkhead::MAX_LIMIT)
}

/// A server stack's total budget must leave its ingress's margin per hop
/// some time.
pub(crate) fn check_margin(total: Duration, margin: Duration) -> Result<(), ConfigError> {
    if total <= margin {
        return Err(ConfigError::new(
            KIND,
            format!(
                "total_budget must be above the margin per hop the header deadline \
                 takes off ({margin:?}), got {total:?}"
            ),
        ));
    }
    Ok(())
}

/// The recommended server stack, as one layer; start with
/// [`ServerStack::builder`].
///
/// Outermost first: the optional ingress part `O` (in the presets: the
/// answer of every rejection as a response or a gRPC status, then
/// [`DeadlineFromHeadersLayer`](crate::deadline::propagate::DeadlineFromHeadersLayer)
/// and the inbound attempt mark) → [`DeadlineLayer`] (the server's own cap)
/// → the optional rate limit `R` (feature `rate-limit`) → the optional
/// bulkheads per tenant `T` (feature `keyed`, see
/// [`ServerStackBuilder::tenant_bulkhead`]) →
/// [`AdaptiveLimitLayer`] → [`BulkheadLayer`] → [`AttemptTimeoutLayer`]
/// (the handler timeout) → the innermost part `I` that comes with the
/// ingress (in the presets, [`CallBodyLayer`](crate::body::CallBodyLayer):
/// request and answer bodies held to the deadline, and the bulkhead permit
/// held to the answer's last byte). The [module
/// docs](super) explain the order. Parts left out are tower's
/// [`Identity`], which adds nothing.
///
/// Every service built from one `ServerStackLayer` (and every clone) shares
/// one rate limiter, adaptive limit and bulkhead: build one stack per
/// service or route you want to protect separately (a route whose
/// handlers wait on a dependency through a seawall client stack needs
/// none of its own: see [`ServerStackBuilder::adaptive_limit`]).
pub struct ServerStackLayer<
    O = Identity,
    R = Identity,
    P = FromTaskLocal,
    I = Identity,
    T = Identity,
> {
    ingress: O,
    deadline: DeadlineLayer,
    rate_limit: R,
    tenants: T,
    limit: AdaptiveLimitLayer<P>,
    bulkhead: BulkheadLayer,
    handler: AttemptTimeoutLayer,
    // The handler timeout was set on the builder (not the budget's): a
    // reload checks it as the next build will take it.
    handler_set: bool,
    // The ingress's margin per hop, which a reloaded budget must exceed.
    ingress_margin: Duration,
    // The bulkhead's limit follows the adaptive limit's maximum (neither
    // the builder nor a reload set it).
    bulkhead_derived: std::sync::Arc<std::sync::atomic::AtomicBool>,
    innermost: I,
}

/// The service the inner part of a [`ServerStackLayer`] makes around `S`:
/// adaptive limit → bulkhead → handler timeout. The rate limit and the
/// ingress wrap it (see [`ServerStackLayer`]'s `Layer` impl). `M` is where
/// the bulkhead lets go of a call ([`Head`], or with an HTTP ingress
/// [`BodyEnd`](crate::hold::BodyEnd): see [`hold`](crate::hold)); the
/// limit gives its place back at the head either way. Both let go of a
/// request they refuse as [`Inbound<M>`](Inbound) does: with an HTTP
/// ingress, the rest of a body the client is still sending is read first
/// (see [`Release`](crate::hold::Release)).
///
/// A named type (not an alias of the layers inside), so that signatures
/// and type mismatches say `ServerCore<…>`; it forwards `poll_ready` and
/// `call` to them unchanged. (A bound the layers inside do not meet, such
/// as a request body that is not `Clone` for a retry, is still reported on
/// the layer that needs it.)
pub struct ServerCore<S, P = FromTaskLocal, M = Head> {
    inner: AdaptiveLimit<Bulkhead<AttemptTimeoutService<S>, Inbound<M>>, P, Inbound<M>>,
}

/// A service the outer parts of a server stack wrap (its
/// [`ServerCore`], or a part around it): `Hold` is where they let go of a
/// call and how they let go of a request they refuse, as the stack's
/// adaptive limit and bulkhead do ([`Inbound<M>`](Inbound): with an HTTP
/// ingress, a refused request's body is read to its end first). Sealed.
pub trait ServerInner: server_inner::Sealed {
    /// [`Inbound<M>`](Inbound), `M` being the stack's hold point.
    type Hold;
}

pub(crate) mod server_inner {
    pub trait Sealed {}
}

impl<S, P, M> server_inner::Sealed for ServerCore<S, P, M> {}

impl<S, P, M> ServerInner for ServerCore<S, P, M> {
    type Hold = Inbound<M>;
}

/// The rate-limit part of a built server stack around `S`, the service
/// inside it: [`Identity`], or a
/// [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) whose refusals are
/// let go of as the stack's adaptive limit lets go of its own (see
/// [`ServerInner`]). Sealed.
pub trait OuterPart<S>: outer_part::Sealed {
    /// The service it makes around `S`.
    type Service;

    /// Wraps `inner`.
    #[doc(hidden)]
    fn layer_outer(&self, inner: S) -> Self::Service;
}

mod outer_part {
    pub trait Sealed {}
    impl Sealed for tower::layer::util::Identity {}
    #[cfg(feature = "rate-limit")]
    impl<X, D> Sealed for crate::rate_limit::RateLimitLayer<X, D> {}
}

impl<S> OuterPart<S> for Identity {
    type Service = S;

    #[inline]
    fn layer_outer(&self, inner: S) -> S {
        inner
    }
}

#[cfg(feature = "rate-limit")]
impl<S: ServerInner, X, D> OuterPart<S> for crate::rate_limit::RateLimitLayer<X, D> {
    type Service = crate::rate_limit::RateLimit<S, X, D, S::Hold>;

    #[inline]
    fn layer_outer(&self, inner: S) -> Self::Service {
        self.layer_held(inner)
    }
}

wrapper_service!(
    ServerCore<S, P, M>,
    AdaptiveLimit<Bulkhead<AttemptTimeoutService<S>, Inbound<M>>, P, Inbound<M>>,
    where
);

/// The service a [`ServerStackLayer`] makes around `S` (`S` being the
/// service inside the handler timeout: yours, or in the protocol presets,
/// the body layer around yours), below the ingress part if there is one.
///
/// `M` is where the bulkhead lets go of a call ([`Head`], or
/// [`BodyEnd`](crate::hold::BodyEnd) in the presets; the adaptive limit
/// gives its place back at the head either way); `R` is
/// the rate-limit part and `T` the bulkheads per tenant
/// ([`Identity`](tower::layer::util::Identity) when the stack has none).
///
/// A named type (not an alias of the layers inside), so that signatures
/// and type mismatches say `ServerStackService<…>`; it forwards `poll_ready` and
/// `call` to them unchanged. (A bound the layers inside do not meet, such
/// as a request body that is not `Clone` for a retry, is still reported on
/// the layer that needs it.)
pub struct ServerStackService<
    S,
    P = FromTaskLocal,
    M = Head,
    R = tower::layer::util::Identity,
    T = tower::layer::util::Identity,
> where
    T: Layer<ServerCore<S, P, M>>,
    R: OuterPart<T::Service>,
{
    inner: DeadlineService<R::Service, InnerTimers>,
}

wrapper_service!(
    ServerStackService<S, P, M, R, T>,
    DeadlineService<R::Service, InnerTimers>,
    where T: Layer<ServerCore<S, P, M>>, R: OuterPart<T::Service>,
);

impl<S, O, R, P, I, T> Layer<S> for ServerStackLayer<O, R, P, I, T>
where
    I: Layer<S> + HoldPoint,
    T: Layer<ServerCore<I::Service, P, I::Hold>>,
    R: OuterPart<T::Service>,
    O: Layer<ServerStackService<I::Service, P, I::Hold, R, T>>,
{
    type Service = O::Service;

    fn layer(&self, service: S) -> Self::Service {
        let s = self.innermost.layer(service);
        let s = self.handler.layer(s);
        let s = self
            .bulkhead
            .clone()
            .hold_until::<Inbound<I::Hold>>()
            .layer(s);
        let s = ServerCore {
            inner: self.limit.clone().hold_until::<Inbound<I::Hold>>().layer(s),
        };
        let s = self.tenants.layer(s);
        let s = self.rate_limit.layer_outer(s);
        self.ingress.layer(ServerStackService {
            inner: self.deadline.layer_with(s),
        })
    }
}

#[cfg(feature = "tonic")]
impl<O, R, P, I, T> ServerStackLayer<O, R, P, I, T> {
    /// This stack around one tonic service, keeping the service's name, so
    /// that tonic's `Server::builder().add_service(..)` takes it: a stack of
    /// its own for the services that wait on one dependency, and another
    /// for the rest (`docs/guide.md`, "One route's dependency queues"), where
    /// `Server::builder().layer(stack)` puts every service under one limit.
    /// The service takes any request body, as tonic's generated servers do
    /// (the stack hands it the body wrapped, to hold it to the deadline).
    ///
    /// ```no_run
    /// # use std::convert::Infallible;
    /// # use std::task::{Context, Poll};
    /// # #[derive(Clone)]
    /// # struct Svc;
    /// # impl tonic::server::NamedService for Svc {
    /// #     const NAME: &'static str = "shop.Inventory";
    /// # }
    /// # // As tonic's generated servers: any request body.
    /// # impl<B> tower::Service<http::Request<B>> for Svc {
    /// #     type Response = http::Response<tonic::body::Body>;
    /// #     type Error = Infallible;
    /// #     type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    /// #     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
    /// #         Poll::Ready(Ok(()))
    /// #     }
    /// #     fn call(&mut self, _: http::Request<B>) -> Self::Future {
    /// #         std::future::ready(Ok(tonic::Status::ok("").into_http()))
    /// #     }
    /// # }
    /// # let (inventory, catalog) = (Svc, Svc);
    /// # async fn run(inventory: Svc, catalog: Svc) -> Result<(), seawall::BoxError> {
    /// use std::time::Duration;
    /// use seawall::ServerStack;
    ///
    /// // `inventory` waits on a dependency; `catalog` does local work.
    /// let calls_the_dependency = ServerStack::grpc("inventory")
    ///     .total_budget(Duration::from_millis(950))
    ///     .build()?;
    /// let local = ServerStack::grpc("shop")
    ///     .total_budget(Duration::from_millis(950))
    ///     .build()?;
    /// tonic::transport::Server::builder()
    ///     .add_service(calls_the_dependency.layer_named(inventory))
    ///     .add_service(local.layer_named(catalog))
    ///     .serve("127.0.0.1:50051".parse()?)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn layer_named<N>(&self, service: N) -> Named<<Self as Layer<N>>::Service, N>
    where
        Self: Layer<N>,
        N: tonic::server::NamedService,
    {
        Named {
            inner: self.layer(service),
            name: std::marker::PhantomData,
        }
    }
}

/// A stack around one tonic service, under the service's name (see
/// [`ServerStackLayer::layer_named`]): it forwards `poll_ready` and `call`
/// to the stack, and its `NAME` is the service's.
#[cfg(feature = "tonic")]
pub struct Named<S, N> {
    inner: S,
    name: std::marker::PhantomData<fn() -> N>,
}

#[cfg(feature = "tonic")]
impl<S, N: tonic::server::NamedService> tonic::server::NamedService for Named<S, N> {
    const NAME: &'static str = N::NAME;
}

#[cfg(feature = "tonic")]
impl<S: tower_service::Service<Req>, N, Req> tower_service::Service<Req> for Named<S, N> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

#[cfg(feature = "tonic")]
impl<S: Clone, N> Clone for Named<S, N> {
    fn clone(&self) -> Self {
        Named {
            inner: self.inner.clone(),
            name: std::marker::PhantomData,
        }
    }
}

#[cfg(feature = "tonic")]
impl<S: fmt::Debug, N: tonic::server::NamedService> fmt::Debug for Named<S, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Named")
            .field("name", &N::NAME)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Some methods of one tonic service through one service (a stack of
/// their own), the rest through another, under the service's name: for a
/// service whose streaming methods want budgets of their own (a stream
/// lasts longer than a unary call should) when they cannot be moved to a
/// service of their own in the `.proto`.
///
/// `methods` are full paths (`"/market.Market/Watch"`), each checked to
/// name a method of `matched`'s service (a path of another service is
/// refused; a method's own name cannot be checked: copy it from the
/// `.proto`, case and all); a request whose path is one of them goes to
/// `matched`, any other to `rest`. Its name is `matched`'s (both wrap the
/// same tonic service, with [`ServerStackLayer::layer_named`]; any two
/// gRPC server presets fit together, a rate limit or tenants' bulkheads
/// in either or not). `poll_ready` is ready when both are: the server
/// stacks wait for nothing of their own there (their refusals are
/// answers), so one side's load does not hold the other's calls.
///
/// ```no_run
/// # use std::convert::Infallible;
/// # use std::task::{Context, Poll};
/// # #[derive(Clone)]
/// # struct MarketServer;
/// # impl tonic::server::NamedService for MarketServer {
/// #     const NAME: &'static str = "market.Market";
/// # }
/// # impl<B> tower::Service<http::Request<B>> for MarketServer {
/// #     type Response = http::Response<tonic::body::Body>;
/// #     type Error = Infallible;
/// #     type Future = std::future::Ready<Result<Self::Response, Infallible>>;
/// #     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
/// #         Poll::Ready(Ok(()))
/// #     }
/// #     fn call(&mut self, _: http::Request<B>) -> Self::Future {
/// #         std::future::ready(Ok(tonic::Status::ok("").into_http()))
/// #     }
/// # }
/// # async fn run(market: MarketServer) -> Result<(), seawall::BoxError> {
/// use std::time::Duration;
/// use seawall::stack::{ByMethod, ServerStack};
///
/// // `Watch` streams for as long as its callers watch; `Quote` answers in
/// // milliseconds.
/// let streams = ServerStack::grpc("market.watch")
///     .total_budget(Duration::from_secs(3600))
///     .build()?;
/// let unary = ServerStack::grpc("market")
///     .total_budget(Duration::from_millis(950))
///     .build()?;
/// tonic::transport::Server::builder()
///     .add_service(ByMethod::new(
///         ["/market.Market/Watch"],
///         streams.layer_named(market.clone()),
///         unary.layer_named(market),
///     )?)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "tonic")]
#[derive(Clone, Debug)]
pub struct ByMethod<A, B> {
    methods: std::sync::Arc<[Box<str>]>,
    matched: A,
    rest: B,
}

#[cfg(feature = "tonic")]
impl<A: tonic::server::NamedService, B> ByMethod<A, B> {
    /// The calls of `methods` (full paths) to `matched`, any other to
    /// `rest`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"by_method"`) when a path is not
    /// `/{service}/{Method}` with `matched`'s service name, or none is
    /// given.
    pub fn new<M: AsRef<str>>(
        methods: impl IntoIterator<Item = M>,
        matched: A,
        rest: B,
    ) -> Result<Self, ConfigError> {
        let methods: std::sync::Arc<[Box<str>]> =
            methods.into_iter().map(|m| Box::from(m.as_ref())).collect();
        if methods.is_empty() {
            return Err(ConfigError::new(
                "by_method",
                "at least one method must be given",
            ));
        }
        for m in methods.iter() {
            let method = m
                .strip_prefix('/')
                .and_then(|p| p.strip_prefix(A::NAME))
                .and_then(|p| p.strip_prefix('/'));
            if !method.is_some_and(|name| !name.is_empty() && !name.contains('/')) {
                return Err(ConfigError::new(
                    "by_method",
                    format!(
                        "{m:?} is not a method of {}: a path is \"/{}/Method\"",
                        A::NAME,
                        A::NAME
                    ),
                ));
            }
        }
        Ok(ByMethod {
            methods,
            matched,
            rest,
        })
    }
}

#[cfg(feature = "tonic")]
impl<A: tonic::server::NamedService, B> tonic::server::NamedService for ByMethod<A, B> {
    const NAME: &'static str = A::NAME;
}

#[cfg(feature = "tonic")]
impl<A, B, Body> tower_service::Service<http::Request<Body>> for ByMethod<A, B>
where
    A: tower_service::Service<http::Request<Body>>,
    B: tower_service::Service<http::Request<Body>, Response = A::Response, Error = A::Error>,
{
    type Response = A::Response;
    type Error = A::Error;
    type Future = ByMethodFuture<A::Future, B::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let matched = self.matched.poll_ready(cx)?;
        let rest = self.rest.poll_ready(cx)?;
        if matched.is_ready() && rest.is_ready() {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if self.methods.iter().any(|m| **m == *path) {
            ByMethodFuture {
                side: Side::Matched {
                    inner: self.matched.call(req),
                },
            }
        } else {
            ByMethodFuture {
                side: Side::Rest {
                    inner: self.rest.call(req),
                },
            }
        }
    }
}

#[cfg(feature = "tonic")]
pin_project_lite::pin_project! {
    /// The response future of [`ByMethod`]: the one of the service the
    /// call went to.
    #[derive(Debug)]
    pub struct ByMethodFuture<F, G> {
        #[pin]
        side: Side<F, G>,
    }
}

#[cfg(feature = "tonic")]
pin_project_lite::pin_project! {
    #[project = SideProj]
    #[derive(Debug)]
    enum Side<F, G> {
        Matched { #[pin] inner: F },
        Rest { #[pin] inner: G },
    }
}

#[cfg(feature = "tonic")]
impl<F, G, T, E> std::future::Future for ByMethodFuture<F, G>
where
    F: std::future::Future<Output = Result<T, E>>,
    G: std::future::Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project().side.project() {
            SideProj::Matched { inner } => inner.poll(cx),
            SideProj::Rest { inner } => inner.poll(cx),
        }
    }
}

impl<O, R, P, I, T> ServerStackLayer<O, R, P, I, T> {
    /// The optional ingress layer ([`Identity`] when none was configured).
    pub fn ingress(&self) -> &O {
        &self.ingress
    }

    /// The server's total-budget layer.
    pub fn deadline(&self) -> &DeadlineLayer {
        &self.deadline
    }

    /// The optional rate limit layer ([`Identity`] when none was configured).
    pub fn rate_limit(&self) -> &R {
        &self.rate_limit
    }

    /// The optional bulkheads per tenant
    /// ([`TenantBulkheadLayer`](super::TenantBulkheadLayer), or
    /// [`Identity`] when none was configured): see
    /// [`ServerStackBuilder::tenant_bulkhead`].
    pub fn tenants(&self) -> &T {
        &self.tenants
    }

    /// The adaptive concurrency limit (its current limit and in-flight calls).
    pub fn adaptive_limit(&self) -> &AdaptiveLimitLayer<P> {
        &self.limit
    }

    /// The bulkhead layer.
    pub fn bulkhead(&self) -> &BulkheadLayer {
        &self.bulkhead
    }

    /// A handle on this stack's bulkhead: its permits and queue, and its
    /// limit changed at run time ([`set_max_concurrent`](BulkheadHandle::set_max_concurrent)).
    pub fn bulkhead_handle(&self) -> BulkheadHandle {
        self.bulkhead.handle()
    }

    /// The handler timeout layer.
    pub fn handler_timeout(&self) -> &AttemptTimeoutLayer {
        &self.handler
    }

    /// Whether the handler timeout was set on the builder.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn handler_set(&self) -> bool {
        self.handler_set
    }

    /// The ingress's margin per hop (zero without one).
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn ingress_margin(&self) -> Duration {
        self.ingress_margin
    }

    /// Whether the bulkhead's limit follows the adaptive limit's maximum.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn bulkhead_derived(&self) -> &std::sync::atomic::AtomicBool {
        &self.bulkhead_derived
    }
}

impl<O: Clone, R: Clone, P, I: Clone, T: Clone> Clone for ServerStackLayer<O, R, P, I, T> {
    fn clone(&self) -> Self {
        ServerStackLayer {
            innermost: self.innermost.clone(),
            ingress: self.ingress.clone(),
            deadline: self.deadline.clone(),
            rate_limit: self.rate_limit.clone(),
            tenants: self.tenants.clone(),
            limit: self.limit.clone(),
            bulkhead: self.bulkhead.clone(),
            handler: self.handler.clone(),
            handler_set: self.handler_set,
            ingress_margin: self.ingress_margin,
            bulkhead_derived: self.bulkhead_derived.clone(),
        }
    }
}

impl<O: fmt::Debug, R: fmt::Debug, P, I: fmt::Debug, T: fmt::Debug> fmt::Debug
    for ServerStackLayer<O, R, P, I, T>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStackLayer")
            .field("ingress", &self.ingress)
            .field("deadline", &self.deadline)
            .field("rate_limit", &self.rate_limit)
            .field("tenants", &self.tenants)
            .field("adaptive_limit", &self.limit)
            .field("bulkhead", &self.bulkhead)
            .field("handler_timeout", &self.handler)
            .field("innermost", &self.innermost)
            .finish()
    }
}

/// Entry point of the recommended server stack; see [`ServerStack::builder`].
#[derive(Debug, Clone, Copy)]
pub struct ServerStack {
    _priv: (),
}

impl ServerStack {
    /// A builder for the stack of the service `name` (for example `"api"`).
    /// Every layer is named after it: `api.ingress`, `api.deadline`,
    /// `api.rate_limit`, `api.tenant` (and the tenants' table
    /// `api.tenants`), `api.limit`, `api.bulkhead`, `api.handler`.
    ///
    /// [`total_budget`](ServerStackBuilder::total_budget) must be set; every
    /// other setting has the default of its layer, except the bulkhead
    /// (2000 handlers, or twice the adaptive limit's maximum when higher:
    /// see [`bulkhead`](ServerStackBuilder::bulkhead)) and the header
    /// deadline of [`deadline_from_headers`](ServerStackBuilder::deadline_from_headers)
    /// and of the presets (a margin per hop of 10 ms, capped at the total
    /// budget). The
    /// handler timeout defaults to the total budget.
    pub fn builder(name: impl Into<Name>) -> ServerStackBuilder {
        let name = name.into();
        ServerStackBuilder {
            limit: AdaptiveLimitLayer::builder().name(part_name(&name, "limit")),
            ingress: Skip,
            rate_limit: Skip,
            tenants: Skip,
            common: Common {
                bulkhead: BulkheadLayer::builder()
                    .name(part_name(&name, "bulkhead"))
                    .default_max_concurrent(BULKHEAD_MAX_CONCURRENT),
                deferred: None,
                name,
                observer: None,
                total_budget: None,
                handler_timeout: None,
            },
        }
    }
}

/// Builds a [`ServerStackLayer`]; see [`ServerStack::builder`].
pub struct ServerStackBuilder<O = Skip, R = Skip, P = FromTaskLocal, T = Skip> {
    common: Common,
    ingress: O,
    rate_limit: R,
    tenants: T,
    limit: AdaptiveLimitLayerBuilder<P>,
}

/// The settings of a [`ServerStackBuilder`] that no builder method changes
/// the type of: a method that does moves them as one field.
struct Common {
    name: Name,
    observer: Option<Observer>,
    total_budget: Option<Duration>,
    handler_timeout: Option<Duration>,
    bulkhead: BulkheadBuilder,
    /// A setting refused before the build (a settings file's), returned by
    /// [`build`](ServerStackBuilder::build).
    deferred: Option<ConfigError>,
}

impl<O: fmt::Debug, R: fmt::Debug, P, T: fmt::Debug> fmt::Debug for ServerStackBuilder<O, R, P, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStackBuilder")
            .field("name", &self.common.name)
            .field("total_budget", &self.common.total_budget)
            .field("handler_timeout", &self.common.handler_timeout)
            .field("ingress", &self.ingress)
            .field("rate_limit", &self.rate_limit)
            .field("tenants", &self.tenants)
            .field("adaptive_limit", &self.limit)
            .field("bulkhead", &self.common.bulkhead)
            .finish_non_exhaustive()
    }
}

impl<O, R, P, T> ServerStackBuilder<O, R, P, T> {
    /// The observer every layer of the stack reports to (default: none). It
    /// replaces any observer set inside the per-layer closures.
    pub fn observer(mut self, observer: impl Into<Observer>) -> Self {
        self.common.observer = Some(observer.into());
        self
    }

    /// The most time a request may spend in this server, waiting in queues
    /// included (required). A client's shorter deadline (from headers, with
    /// [`deadline_from_headers`](Self::deadline_from_headers)) wins.
    pub fn total_budget(mut self, budget: Duration) -> Self {
        self.common.total_budget = Some(budget);
        self
    }

    /// The most time the handler itself may run, once admitted, its answer's
    /// body included (in the presets a streamed answer is cut at it)
    /// (default: the total budget; at most the total budget).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.common.handler_timeout = Some(timeout);
        self
    }

    /// Configures the adaptive concurrency limit, starting from its defaults
    /// ([`QueueDelay`](crate::shed::QueueDelay): initial limit 20, minimum 1,
    /// maximum 1000; chosen by the adaptive-limit harness of `tests/shed`,
    /// where it settles within 1.5× of backends of 1 to 1000 slots and
    /// Gradient2 settled at 44 for 4 slots and 66 for 256, and by the storm,
    /// where it stays within 2 points of the best configuration in every
    /// scenario, a latency creep and a brownout included) and the stack's
    /// name. May change the criticality extractor.
    ///
    /// A handler's wait on a call through a seawall client stack is not
    /// this server's: the limit leaves it out of the call's latency and,
    /// while it lasts, the call out of its count of calls in flight (a
    /// dependency that queues or hangs behind one route would otherwise
    /// take the limit every route shares: `tests/shed`, one stack over two
    /// routes, one calling a dependency that restarted cold, the other
    /// route answered in full, 33 of 600 before). So is a read of the
    /// request's body (or of a dependency's reply) waiting for more of it
    /// in the presets, whose bodies are `CallBody`s: clients uploading
    /// slowly are no queue of this server's (`tests/shed`: half of 400
    /// requests a second sending their body over 550 ms to a handler of
    /// 5 ms, the limit learns 5 ms and 8 calls in flight, where it learned
    /// 379 ms and 133).
    pub fn adaptive_limit<P2>(
        self,
        f: impl FnOnce(AdaptiveLimitLayerBuilder<P>) -> AdaptiveLimitLayerBuilder<P2>,
    ) -> ServerStackBuilder<O, R, P2, T> {
        ServerStackBuilder {
            limit: f(self.limit),
            common: self.common,
            ingress: self.ingress,
            rate_limit: self.rate_limit,
            tenants: self.tenants,
        }
    }

    /// Configures the bulkhead, starting from the stack's default (2000
    /// handlers in flight, no queue: a guard on memory at twice the
    /// adaptive limit's maximum, the most its classes' guaranteed shares
    /// admit at the limit, so that the adaptive limit, which sheds by
    /// priority, is what turns requests away; chosen by the storm's
    /// priority surge, where a bulkhead of 25 below the adaptive limit
    /// refused critical and sheddable requests alike, and by a limit of 900
    /// held by sheddable work, where a bulkhead of 1000 refused 350 of the
    /// 450 critical requests the limit's share admits) and the stack's
    /// name. Unless `max_concurrent` is set here (or by a settings file),
    /// it follows the adaptive limit's maximum: twice it when that is above
    /// 1000, when the stack is built and when a reload changes the maximum
    /// (`limits(None, Some(5000))` gives a bulkhead of 10 000).
    pub fn bulkhead(mut self, f: impl FnOnce(BulkheadBuilder) -> BulkheadBuilder) -> Self {
        self.common.bulkhead = f(self.common.bulkhead);
        self
    }

    /// Adds a rate limit of `quota` below the deadline (feature
    /// `rate-limit`), configured by `f` from the rate limit's defaults
    /// (global, reject at once) and the stack's name. `|b| b` keeps them;
    /// `|b| b.keyed(ClientIp::new())` limits per client network (IPv6 by
    /// /64): behind axum, serve with
    /// `app.into_make_service_with_connect_info::<SocketAddr>()` so that the
    /// peer address is known (feature `axum`); without it every request
    /// shares the fallback bucket, and an `InputIgnored` event says so.
    #[cfg(feature = "rate-limit")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
    pub fn rate_limit<X, D>(
        self,
        quota: crate::rate_limit::Quota,
        f: impl FnOnce(
            crate::rate_limit::RateLimitLayerBuilder,
        ) -> crate::rate_limit::RateLimitLayerBuilder<X, D>,
    ) -> ServerStackBuilder<O, crate::rate_limit::RateLimitLayerBuilder<X, D>, P, T> {
        let part = f(crate::rate_limit::RateLimitLayer::builder(quota)
            .name(part_name(&self.common.name, "rate_limit")));
        ServerStackBuilder {
            rate_limit: part,
            common: self.common,
            ingress: self.ingress,
            tenants: self.tenants,
            limit: self.limit,
        }
    }

    /// Gives the rate-limit part a settings file's rate; a refusal is
    /// returned by [`build`](Self::build).
    #[cfg(feature = "serde")]
    pub(crate) fn set_rate(mut self, rate: &crate::config::Rate) -> Self
    where
        R: super::config::RateLimitSetting,
    {
        if let Err(e) = self.rate_limit.set_rate(rate) {
            self.common.deferred.get_or_insert(e);
        }
        self
    }

    /// Builds every layer and checks them against each other.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"server_stack"`) when `total_budget` was not
    /// set, or the handler timeout is above it; a layer's own refusal is
    /// returned as that layer's error.
    #[allow(clippy::type_complexity)]
    pub fn build(
        self,
    ) -> Result<ServerStackLayer<O::Layer, R::Layer, P, O::Innermost, T::Layer>, ConfigError>
    where
        O: IngressPart,
        R: StackPart,
        T: StackPart,
    {
        if let Some(e) = self.common.deferred {
            return Err(e);
        }
        let total = self
            .common
            .total_budget
            .ok_or_else(|| ConfigError::new(KIND, "total_budget must be set"))?;
        let handler_set = self.common.handler_timeout.is_some();
        let handler_timeout = self.common.handler_timeout.unwrap_or(total);
        let obs = self.common.observer.as_ref();
        let (deadline, handler) = stack_timers(
            &self.common.name,
            KIND,
            total,
            InnerTimeout {
                part: "handler",
                setting: "handler_timeout",
                timeout: handler_timeout,
                own_end: std::time::Duration::ZERO,
            },
            true,
            std::time::Duration::ZERO,
            obs,
        )?;
        let ingress_margin = self.ingress.margin();
        check_margin(total, ingress_margin)?;
        let mut limit = self.limit;
        let mut bulkhead = self.common.bulkhead;
        if let Some(o) = obs {
            limit = limit.observer(o.clone());
            bulkhead = bulkhead.observer(o.clone());
        }
        let innermost = self.ingress.build_innermost(obs)?;
        let limit = limit.build()?;
        let bulkhead_derived = !bulkhead.max_concurrent_set();
        if bulkhead_derived {
            bulkhead = bulkhead.default_max_concurrent(derived_bulkhead(limit.max_limit()));
        }
        Ok(ServerStackLayer {
            innermost,
            ingress: self.ingress.with_budget(total).build_part(obs)?,
            deadline,
            rate_limit: self.rate_limit.build_part(obs)?,
            tenants: self.tenants.build_part(obs)?,
            limit,
            bulkhead: bulkhead.build()?,
            handler,
            handler_set,
            ingress_margin,
            bulkhead_derived: std::sync::Arc::new(bulkhead_derived.into()),
        })
    }
}

#[cfg(feature = "keyed")]
impl<O, R, P> ServerStackBuilder<O, R, P> {
    /// Gives each tenant a bulkhead of its own (feature `keyed`, on by
    /// default): at most `max_concurrent` of a tenant's requests in the
    /// handler at once, so that one tenant's flood is refused before it
    /// takes the places every tenant shares under the stack's adaptive
    /// limit. `key` reads a request's tenant: a
    /// [`HeaderKey`](crate::rate_limit::HeaderKey) your own edge sets or
    /// checks, a [`ClientIp`](crate::rate_limit::ClientIp), or a closure
    /// `Fn(&Req) -> Option<Key>`. Size `max_concurrent` to the share of the
    /// handler's concurrency one tenant may take, and no smaller than what a
    /// tenant has in flight on its own (its rate times the handler's time)
    /// with room for its bursts: quiet tenants with about 2 calls in flight
    /// each were served 99.3 to 99.9 % with 4 places, 100 % with 8, in a new
    /// user's trial over tonic. Places are not lent: those a quiet tenant
    /// leaves idle stay idle while another tenant is refused.
    ///
    /// `f` configures the bulkhead from the part's defaults: a queue of 4,
    /// so that a tenant's own random bursts wait instead of being refused,
    /// and a wait of at most 100 ms, a few handler times, so that a request
    /// queued that long without a place is let go and told to come back
    /// after 100 to 150 ms, as a request that finds the queue full is
    /// (the queue's chosen by `tests/tenants`, four tenants at
    /// 40 requests a second and one at 1500 against a handler of 8
    /// workers: the quiet tenants served 100 %, with or without the flood;
    /// without the queue, 0.4 % of their requests were refused with no
    /// flood at all); `|b| b` keeps them. Every tenant's bulkhead is named
    /// `{stack}.tenant` (one set of metrics series for them all, whatever
    /// the number of tenants) and the table `{stack}.tenants`.
    ///
    /// The part sits below the deadline and the rate limit, above the
    /// adaptive limit: a tenant's wait in its queue is within the
    /// request's deadline (a request whose deadline comes first is
    /// answered `504`), and the adaptive limit learns from the handler's
    /// time alone. A full tenant is answered as any refusal of the stack:
    /// `503` with `Retry-After` in the HTTP preset, `UNAVAILABLE` with
    /// `grpc-retry-pushback-ms` in the gRPC preset. A tenant's place is
    /// given back when its answer's head is sent: a streamed body holds a
    /// place of the stack's own bulkhead, not of the tenant's.
    ///
    /// At most 10 000 tenants are held; one with no request for 60 s is
    /// evicted when room is needed. Requests without a key, and new
    /// tenants while the table is full of tenants active in the last 60 s,
    /// share one more bulkhead of the same size (see
    /// [`keyed`](crate::keyed)): key by what a client cannot choose.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), seawall::BoxError> {
    /// use std::time::Duration;
    /// use axum::{body::Body, routing::get, Router};
    /// use http::HeaderName;
    /// use seawall::rate_limit::HeaderKey;
    /// use seawall::stack::ServerStack;
    /// use tower::ServiceExt;
    ///
    /// let stack = ServerStack::http("api")
    ///     .total_budget(Duration::from_secs(5))
    ///     .tenant_bulkhead(HeaderKey::new(HeaderName::from_static("x-tenant")), 1, |b| {
    ///         b.max_queue(0) // for the example: no queue
    ///     })
    ///     .build()?;
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async {
    ///         tokio::time::sleep(Duration::from_secs(1)).await;
    ///         "done"
    ///     }))
    ///     .layer(stack);
    /// let req = |tenant: &str| {
    ///     http::Request::get("/").header("x-tenant", tenant).body(Body::empty())
    /// };
    ///
    /// // Tenant a's one place is taken...
    /// let first = tokio::spawn(app.clone().oneshot(req("a")?));
    /// tokio::task::yield_now().await;
    /// // ...so its next request is refused at once, with a time to come back,
    /// let refused = app.clone().oneshot(req("a")?).await?;
    /// assert_eq!(refused.status(), 503);
    /// assert!(refused.headers().contains_key("retry-after"));
    /// // while tenant b is served.
    /// assert_eq!(app.oneshot(req("b")?).await?.status(), 200);
    /// assert_eq!(first.await??.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    pub fn tenant_bulkhead<X>(
        self,
        key: X,
        max_concurrent: usize,
        f: impl FnOnce(BulkheadBuilder) -> BulkheadBuilder,
    ) -> ServerStackBuilder<O, R, P, super::TenantBulkheads<X>> {
        let bulkhead = f(BulkheadLayer::builder()
            .name(part_name(&self.common.name, "tenant"))
            .max_concurrent(max_concurrent)
            .max_queue(super::tenants::TENANT_QUEUE)
            .max_wait(super::tenants::TENANT_MAX_WAIT));
        let table = part_name(&self.common.name, "tenants");
        ServerStackBuilder {
            tenants: super::TenantBulkheads::new(key, bulkhead, table),
            common: self.common,
            ingress: self.ingress,
            rate_limit: self.rate_limit,
            limit: self.limit,
        }
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl<O, R, P, T> ServerStackBuilder<O, R, P, T> {
    /// Replaces the ingress part.
    pub(crate) fn with_ingress<O2>(self, ingress: O2) -> ServerStackBuilder<O2, R, P, T> {
        ServerStackBuilder {
            ingress,
            common: self.common,
            rate_limit: self.rate_limit,
            tenants: self.tenants,
            limit: self.limit,
        }
    }

    /// Changes the ingress part.
    pub(crate) fn map_ingress(mut self, f: impl FnOnce(O) -> O) -> Self {
        self.ingress = f(self.ingress);
        self
    }

    /// The name of the stack.
    pub(crate) fn stack_name(&self) -> &Name {
        &self.common.name
    }
}

impl<R, P, T> ServerStackBuilder<Skip, R, P, T> {
    /// Reads the client's deadline from `grpc-timeout` and
    /// `x-request-timeout-ms` outermost (feature `http`; requests must be
    /// `http::Request`s), configured by `f` from the ingress layer's defaults
    /// with the protocol presets' 10 ms margin per hop (so that this
    /// server's 504 reaches the client before the client's own timer fires;
    /// `.margin(Duration::ZERO)` for none; the cap is the stack's total
    /// budget, or a lower
    /// [`max`](crate::deadline::propagate::DeadlineFromHeadersLayerBuilder::max)
    /// if you set one, which then bounds requests without a header too).
    ///
    /// With axum, put [`RejectionResponseLayer`](crate::http::RejectionResponseLayer)
    /// outside the stack so rejections become responses:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), seawall::BoxError> {
    /// use std::time::Duration;
    /// use axum::{body::Body, routing::get, Router};
    /// use seawall::http::RejectionResponseLayer;
    /// use seawall::stack::ServerStack;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// let stack = ServerStack::builder("api")
    ///     .total_budget(Duration::from_secs(5))
    ///     .handler_timeout(Duration::from_secs(2))
    ///     .deadline_from_headers(|d| d.margin(Duration::from_millis(20)))
    ///     .bulkhead(|b| b.max_concurrent(128))
    ///     .build()?;
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .layer(ServiceBuilder::new().layer(RejectionResponseLayer::new()).layer(stack));
    ///
    /// let ok = app.clone().oneshot(http::Request::get("/").body(Body::empty())?).await?;
    /// assert_eq!(ok.status(), 200);
    /// // A client with 15 ms left, under the 20 ms margin: refused without running the handler.
    /// let late = http::Request::get("/").header("grpc-timeout", "15m").body(Body::empty())?;
    /// assert_eq!(app.oneshot(late).await?.status(), 504);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn deadline_from_headers(
        self,
        f: impl FnOnce(
            crate::deadline::propagate::DeadlineFromHeadersLayerBuilder,
        ) -> crate::deadline::propagate::DeadlineFromHeadersLayerBuilder,
    ) -> ServerStackBuilder<crate::deadline::propagate::DeadlineFromHeadersLayerBuilder, R, P, T>
    {
        let part = f(
            crate::deadline::propagate::DeadlineFromHeadersLayer::builder()
                .name(part_name(&self.common.name, "ingress"))
                .margin(HOP_MARGIN),
        );
        self.with_ingress(part)
    }
}
