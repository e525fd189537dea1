//! The protocol presets of both stacks: the HTTP and gRPC client presets,
//! then the HTTP and gRPC server presets, with the outer parts that name
//! their services.

use tower::layer::util::Identity;
use tower_layer::Layer;

use super::client::{ClientStack, ClientStackBuilder, ClientStackService};
use super::part::part_name;
use crate::deadline::propagate::{
    PropagateDeadline, PropagateDeadlineLayer, PropagateDeadlineLayerBuilder,
};
use crate::error::Name;
use crate::hold::BodyEnd;
use crate::http::HttpStatusClassifier;
use crate::retry::http::HttpRetry;

/// The protocol presets' smallest time left worth a retry: 20 ms, twice a
/// seawall server's margin per hop (10 ms), so that a retry leaves the
/// dependency 10 ms or more to answer in. With the retry layer's own 10 ms,
/// a retry sent with 10 ms left reached a seawall server out of time: in an
/// outside trial of a three-tier chain, 171 retries of a shed leaf's `503`s
/// reached it told 0 to 10 ms and were refused `504`, and the middle tier
/// passed that on instead of the leaf's "busy".
pub(crate) const PRESET_MIN_REMAINING: std::time::Duration = std::time::Duration::from_millis(20);

/// The service the [HTTP client preset](ClientStack::http) makes around a
/// client `S` (a hyper client, a `reqwest`-like tower service, …): name it in
/// a struct field.
///
/// ```
/// use http_body_util::Full;
/// use bytes::Bytes;
/// # type HyperClient = tower::util::BoxCloneService<http::Request<Full<Bytes>>, http::Response<String>, std::io::Error>;
/// struct Inventory {
///     // `HyperClient` is your client's type, for example
///     // `hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>`.
///     client: seawall::stack::HttpClient<HyperClient>,
/// }
/// ```
///
/// `H` is the hedge part: [`Identity`](tower::layer::util::Identity) unless
/// the stack was built with [`hedge`](ClientStackBuilder::hedge)
/// (`HttpClient<S, HedgeLayer<HttpRetry>>`).
///
/// `P` and `C` are the retry policy and the breaker's classifier:
/// [`HttpRetry`] and [`HttpStatusClassifier`] unless the builder changed them.
///
/// A named type (not an alias of the layers inside), so that signatures
/// and type mismatches say `HttpClient<…>`; it forwards `poll_ready` and
/// `call` to the [`ClientStackService`] inside unchanged.
pub struct HttpClient<S, H = Identity, P = HttpRetry, C = HttpStatusClassifier>
where
    H: Layer<AtAttempt<PropagateDeadline<S>, C>>,
{
    inner: ClientStackService<PropagateDeadline<S>, P, C, BodyEnd, H>,
}

/// What a client stack's hedge part wraps: the breaker, and below it the
/// adaptive limit, the bulkhead and the attempt timeout around `S`, letting
/// go at the body's end.
type AtAttempt<S, C> = super::client::PerAttempt<S, C, BodyEnd>;

wrapper_service!(
    HttpClient<S, H, P, C>,
    ClientStackService<PropagateDeadline<S>, P, C, BodyEnd, H>,
    where H: Layer<AtAttempt<PropagateDeadline<S>, C>>,
);

/// The outermost part of the [HTTP client preset](ClientStack::http): it adds
/// no layer and names the stack's service [`HttpClient`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpOutermost {
    _private: (),
}

impl<S, P, C, H> Layer<ClientStackService<PropagateDeadline<S>, P, C, BodyEnd, H>> for HttpOutermost
where
    H: Layer<AtAttempt<PropagateDeadline<S>, C>>,
{
    type Service = HttpClient<S, H, P, C>;

    fn layer(
        &self,
        inner: ClientStackService<PropagateDeadline<S>, P, C, BodyEnd, H>,
    ) -> Self::Service {
        HttpClient { inner }
    }
}

impl ClientStack {
    /// The client stack for an HTTP dependency (feature `http`): the
    /// [generic stack](ClientStack::builder) with what HTTP needs, so that
    /// a newcomer gets it right with its budget alone (`total_budget`;
    /// each attempt gets half of it unless `attempt_timeout` says otherwise).
    ///
    /// | part | HTTP preset |
    /// |---|---|
    /// | breaker classifier | [`HttpStatusClassifier`]: 5xx (but 501 and 503) and 408 fail; 429 and 503 are "busy", with or without `Retry-After` (not counted by the breaker, but a second of bare 503s only, from 20 calls, opens it: see [`count_overload`](crate::circuit_breaker::CircuitBreakerBuilder::count_overload)); other 4xx ignored; connection errors and attempt timeouts fail; this process's own refusals never count |
    /// | retry policy | [`HttpRetry`]: only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or requests with an `Idempotency-Key`; 5xx (not 501), 408, 429, connection errors, attempt timeouts; `retry-after-ms` honoured, else `Retry-After`; `x-seawall-attempt` on retries |
    /// | propagation | each attempt carries its time left as `x-request-timeout-ms` (`.propagate_deadline(\|p\| p.grpc_timeout(true))` adds `grpc-timeout`: see [`propagate_deadline`](ClientStackBuilder::propagate_deadline)) |
    /// | the response body | held to the attempt's deadline; the bulkhead permit and the breaker's verdict are held until it ends, fails or is dropped (a body that fails counts as a failure, one dropped before its end as its head said, a success: see [`hold`](crate::hold)) — read or drop the bodies you get |
    ///
    /// Request bodies must be `Clone` to be retried (`Full<Bytes>`,
    /// `String`, `Empty<Bytes>`, …). For a streaming body, put
    /// [`ReplayBodyLayer`](crate::retry::http::ReplayBodyLayer) above the
    /// stack and give the client `ReplayBody<B>` bodies; larger than its limit
    /// (64 KiB), a request is sent once.
    ///
    /// The service is an [`HttpClient<S>`]; errors stay errors (a
    /// [`BoxError`](crate::BoxError) holding the rejection, with its
    /// `retry_after`), responses stay responses whatever their status. The
    /// built layer, to keep in a struct field, is a
    /// `ClientStackLayer<HttpRetry, HttpStatusClassifier, PropagateDeadlineLayer, HttpOutermost>`:
    ///
    /// ```
    /// use seawall::retry::http::HttpRetry;
    /// use seawall::stack::{ClientStackLayer, HttpOutermost};
    /// use seawall::{HttpStatusClassifier, PropagateDeadlineLayer};
    ///
    /// struct Inventory {
    ///     stack: ClientStackLayer<HttpRetry, HttpStatusClassifier, PropagateDeadlineLayer, HttpOutermost>,
    /// }
    /// ```
    ///
    /// Against a seawall server, a call that runs out of time usually comes
    /// back as `Ok` with a `504` (the server answers 10 ms before the
    /// client's own timer, from the deadline the request carries), not as an
    /// [`AttemptTimeout`](crate::error::AttemptTimeout) error.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), seawall::BoxError> {
    /// use std::time::Duration;
    /// use seawall::stack::ClientStack;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let inventory = ClientStack::http("inventory")
    ///     .total_budget(Duration::from_secs(2))
    ///     .attempt_timeout(Duration::from_millis(500))
    ///     .build()?;
    /// // Stands in for a hyper client.
    /// let client = service_fn(|req: http::Request<String>| async move {
    ///     let status = if req.method() == http::Method::POST { 500 } else { 200 };
    ///     Ok::<_, seawall::BoxError>(http::Response::builder().status(status).body(String::new())?)
    /// });
    /// let svc = inventory.layer(client);
    /// let post = http::Request::post("/orders").body(String::from("{}"))?;
    /// // A 500 comes back as a response, and a POST is never retried.
    /// assert_eq!(svc.clone().oneshot(post).await?.status(), 500);
    /// assert_eq!(inventory.breaker_handle().metrics().failures, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn http(
        name: impl Into<Name>,
    ) -> ClientStackBuilder<
        HttpRetry,
        HttpStatusClassifier,
        PropagateDeadlineLayerBuilder,
        HttpOutermost,
    > {
        let name = name.into();
        // `x-request-timeout-ms` only: a plain HTTP dependency reads no
        // `grpc-timeout` (a seawall server reads either), and the second
        // header cost 842 instructions a call of the preset's 8808
        // (`.ci/instructions`).
        let propagate = PropagateDeadlineLayer::builder()
            .name(part_name(&name, "propagate"))
            .grpc_timeout(false);
        ClientStack::builder(name)
            .retry(|r| {
                r.policy(HttpRetry::new())
                    .min_remaining(PRESET_MIN_REMAINING)
            })
            .breaker(|b| b.classifier(HttpStatusClassifier::new()))
            .with_innermost(propagate)
            .with_outermost(HttpOutermost::default())
    }
}

impl<P, C, O, H> ClientStackBuilder<P, C, PropagateDeadlineLayerBuilder, O, H> {
    /// Configures the deadline propagation of this stack (the HTTP preset
    /// writes `x-request-timeout-ms` only, `|p| p.grpc_timeout(true)` adds
    /// `grpc-timeout`; the gRPC preset `grpc-timeout` only).
    pub fn propagate_deadline(
        self,
        f: impl FnOnce(PropagateDeadlineLayerBuilder) -> PropagateDeadlineLayerBuilder,
    ) -> Self {
        self.map_innermost(f)
    }
}

#[cfg(feature = "tonic")]
pub use self::grpc::{GrpcClient, GrpcOutermost, GrpcTransportPart};

#[cfg(feature = "tonic")]
mod grpc;

#[cfg(feature = "tonic")]
pub use self::server::{GrpcIngress, GrpcIngressLayer, GrpcServer};
pub use self::server::{HttpIngress, HttpIngressLayer, HttpServer};

mod server;
