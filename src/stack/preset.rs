//! The protocol presets of both stacks: the HTTP and gRPC client presets,
//! then the HTTP and gRPC server presets, with the outer parts that name
//! their services.

use tower::layer::util::Identity;
use tower_layer::Layer;

use super::client::{ClientStack, ClientStackBuilder, ClientStackService};
use super::part::part_name;
use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
use crate::deadline::AttemptTimeoutService;
use crate::deadline::propagate::{
    PropagateDeadline, PropagateDeadlineLayer, PropagateDeadlineLayerBuilder,
};
use crate::error::Name;
use crate::hold::BodyEnd;
use crate::http::HttpStatusClassifier;
use crate::retry::http::HttpRetry;

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
/// bulkhead and the attempt timeout around `S`, letting go at the body's end.
type AtAttempt<S, C> = CircuitBreaker<Bulkhead<AttemptTimeoutService<S>, BodyEnd>, C, BodyEnd>;

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
    /// a newcomer gets it right with the two budgets alone.
    ///
    /// | part | HTTP preset |
    /// |---|---|
    /// | breaker classifier | [`HttpStatusClassifier`]: 5xx and 408 fail (a bare 503 too: a proxy with no healthy upstream); 429 and a 503 with `Retry-After` are "busy" (not counted by the breaker); other 4xx ignored; connection errors and attempt timeouts fail; this process's own refusals never count |
    /// | retry policy | [`HttpRetry`]: only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or requests with an `Idempotency-Key`; 5xx (not 501), 408, 429, connection errors, attempt timeouts; `Retry-After` honoured; `x-seawall-attempt` stamped |
    /// | propagation | each attempt carries its time left as `x-request-timeout-ms` and `grpc-timeout` ([`propagate_deadline`](ClientStackBuilder::propagate_deadline) to change) |
    /// | the response body | held to the attempt's deadline; the bulkhead permit and the breaker's verdict are held until it ends, fails or is dropped (a body that fails counts as a failure, one dropped half way not at all: see [`hold`](crate::hold)) — read or drop the bodies you get |
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
    /// `ClientStackLayer<HttpRetry, HttpStatusClassifier, PropagateDeadlineLayer, HttpOutermost>`.
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
        let propagate = PropagateDeadlineLayer::builder().name(part_name(&name, "propagate"));
        ClientStack::builder(name)
            .retry(|r| r.policy(HttpRetry::new()))
            .breaker(|b| b.classifier(HttpStatusClassifier::new()))
            .with_innermost(propagate)
            .with_outermost(HttpOutermost::default())
    }
}

impl<P, C, O, H> ClientStackBuilder<P, C, PropagateDeadlineLayerBuilder, O, H> {
    /// Configures the deadline propagation of this stack (`|p| p.no_ms_header()`
    /// for a gRPC backend, `|p| p.grpc_timeout(false)` for a plain HTTP one).
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
mod grpc {
    use tower::layer::util::Stack;

    use super::super::client::{ClientStack, ClientStackBuilder, ClientStackService};
    use super::super::part::{StackPart, part_name};
    use super::{AtAttempt, Identity, Layer};
    use crate::deadline::propagate::{
        PropagateDeadline, PropagateDeadlineLayer, PropagateDeadlineLayerBuilder,
    };
    use crate::error::{ConfigError, Name};
    use crate::grpc::transport::{TonicTransport, TonicTransportLayer};
    use crate::grpc::{GrpcRejection, GrpcStatusClassifier};
    use crate::hold::BodyEnd;
    use crate::observe::Observer;
    use crate::retry::grpc::GrpcRetry;
    use crate::retry::http::{ReplayBodyLayer, ReplayBodyService};

    /// The service the [gRPC client preset](ClientStack::grpc) makes around a
    /// tonic transport `S` (a `tonic::transport::Channel`): name it in a
    /// struct field, hand it to a generated client's `new`.
    ///
    /// ```ignore
    /// struct Handler {
    ///     greeter: GreeterClient<seawall::stack::GrpcClient<tonic::transport::Channel>>,
    /// }
    /// ```
    ///
    /// `H` is the hedge part: [`Identity`](tower::layer::util::Identity)
    /// unless the stack was built with
    /// [`hedge`](ClientStackBuilder::hedge) (`GrpcClient<Channel,
    /// HedgeLayer<GrpcRetry>>`).
    ///
    /// `P` and `C` are the retry policy and the breaker's classifier:
    /// [`GrpcRetry`] and [`GrpcStatusClassifier`] unless the builder changed
    /// them.
    ///
    /// A named type (not an alias of the layers inside), so that signatures
    /// and type mismatches say `GrpcClient<…>`; it forwards `poll_ready` and
    /// `call` unchanged to the layers inside: the answer of errors as gRPC
    /// statuses, body replay, then the [`ClientStackService`].
    pub struct GrpcClient<S, H = Identity, P = GrpcRetry, C = GrpcStatusClassifier>
    where
        H: Layer<AtAttempt<PropagateDeadline<TonicTransport<S>>, C>>,
    {
        inner: GrpcInner<S, H, P, C>,
    }

    /// The layers inside a [`GrpcClient`].
    type GrpcInner<S, H, P, C> = GrpcRejection<
        ReplayBodyService<
            ClientStackService<PropagateDeadline<TonicTransport<S>>, P, C, BodyEnd, H>,
        >,
    >;

    wrapper_service!(
        GrpcClient<S, H, P, C>,
        GrpcInner<S, H, P, C>,
        where H: Layer<AtAttempt<PropagateDeadline<TonicTransport<S>>, C>>,
    );

    /// The outermost part of the [gRPC client preset](ClientStack::grpc):
    /// body replay (so a retry can resend the request), then the answer of
    /// every error as a gRPC status; it names the stack's service
    /// [`GrpcClient`].
    #[derive(Debug, Clone, Default)]
    pub struct GrpcOutermost {
        replay: ReplayBodyLayer,
    }

    impl<S, P, C, H>
        Layer<ClientStackService<PropagateDeadline<TonicTransport<S>>, P, C, BodyEnd, H>>
        for GrpcOutermost
    where
        H: Layer<AtAttempt<PropagateDeadline<TonicTransport<S>>, C>>,
    {
        type Service = GrpcClient<S, H, P, C>;

        fn layer(
            &self,
            inner: ClientStackService<PropagateDeadline<TonicTransport<S>>, P, C, BodyEnd, H>,
        ) -> Self::Service {
            GrpcClient {
                inner: GrpcRejection::new(self.replay.layer(inner)),
            }
        }
    }

    /// The innermost part of the gRPC preset, unbuilt: `grpc-timeout`
    /// propagation over the [`TonicTransport`] adapter.
    #[derive(Debug)]
    pub struct GrpcTransportPart {
        propagate: PropagateDeadlineLayerBuilder,
        attempt_name: Name,
    }

    impl crate::stack::part::sealed::Sealed for GrpcTransportPart {}

    impl StackPart for GrpcTransportPart {
        type Layer = Stack<TonicTransportLayer, PropagateDeadlineLayer>;

        fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
            let propagate = self.propagate.build_part(observer)?;
            Ok(Stack::new(
                TonicTransportLayer::new(self.attempt_name),
                propagate,
            ))
        }
    }

    impl ClientStack {
        /// The client stack for a gRPC dependency (feature `tonic`), around a
        /// tonic `Channel`: the [generic stack](ClientStack::builder) with
        /// what gRPC needs, so that a newcomer gets it right with the two
        /// budgets alone.
        ///
        /// | part | gRPC preset |
        /// |---|---|
        /// | breaker classifier | [`GrpcStatusClassifier`]: `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DEADLINE_EXCEEDED`, `DATA_LOSS` fail; `RESOURCE_EXHAUSTED` and `UNAVAILABLE` with pushback are "busy" (not counted by the breaker); other codes ignored; this process's own refusals never count |
        /// | status of a failure sent as headers then trailers | read below the breaker ([`TonicTransport`]): classified and retried like a trailers-only one |
        /// | retry policy | [`GrpcRetry`]: `UNAVAILABLE` only (the server did not process the call), `grpc-retry-pushback-ms` honoured; opt more codes in with `.retry(\|r\| r.policy(GrpcRetry::new().with_code(Code::DeadlineExceeded)))` for idempotent methods |
        /// | body replay | request bodies up to 64 KiB are kept for a retry |
        /// | propagation | each attempt carries its time left as `grpc-timeout` |
        /// | streams | the deadline covers the whole stream (`DEADLINE_EXCEEDED` after the messages sent in time); the bulkhead permit and the breaker's verdict are held until the stream ends: an error status in the trailers after messages counts as a failure, a stream dropped half way not at all; a started stream is never retried. A stream that outlasts the attempt timeout is cut and counted: give long-lived streaming methods their own stack whose budgets fit them |
        /// | the `Channel`'s own timeout | an attempt timeout, never `UNKNOWN` |
        /// | errors | answered as gRPC statuses: the tonic client sees `DEADLINE_EXCEEDED`, `UNAVAILABLE` with pushback, `RESOURCE_EXHAUSTED` … |
        ///
        /// The service is a [`GrpcClient<Channel>`](GrpcClient): hand it to a
        /// generated client (`GreeterClient::new(svc)`). The built layer, to
        /// keep in a struct field, is a
        /// `ClientStackLayer<GrpcRetry, GrpcStatusClassifier, Stack<TonicTransportLayer, PropagateDeadlineLayer>, GrpcOutermost>`.
        ///
        /// Made for unary and server-streaming calls. The request body is read
        /// (up to the replay limit) before the call is sent, so a
        /// client-streaming or bidirectional call must have its first messages
        /// ready when it is made: a call whose first request message is sent
        /// only after the answer begins would wait until its deadline.
        ///
        /// ```no_run
        /// # async fn run() -> Result<(), seawall::BoxError> {
        /// use std::time::Duration;
        /// use seawall::stack::ClientStack;
        /// use tower::Layer;
        ///
        /// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
        /// let greeter = ClientStack::grpc("greeter")
        ///     .total_budget(Duration::from_secs(2))
        ///     .attempt_timeout(Duration::from_millis(600))
        ///     .build()?;
        /// let svc = greeter.layer(channel);
        /// // let mut client = GreeterClient::new(svc);
        /// # let _ = svc;
        /// # Ok(())
        /// # }
        /// ```
        pub fn grpc(
            name: impl Into<Name>,
        ) -> ClientStackBuilder<GrpcRetry, GrpcStatusClassifier, GrpcTransportPart, GrpcOutermost>
        {
            let name = name.into();
            let part = GrpcTransportPart {
                propagate: PropagateDeadlineLayer::builder()
                    .name(part_name(&name, "propagate"))
                    .no_ms_header(),
                attempt_name: part_name(&name, "attempt"),
            };
            ClientStack::builder(name)
                .retry(|r| r.policy(GrpcRetry::new()))
                .breaker(|b| b.classifier(GrpcStatusClassifier::new()))
                .with_innermost(part)
                .with_outermost(GrpcOutermost::default())
        }
    }

    impl<P, C, O, H> ClientStackBuilder<P, C, GrpcTransportPart, O, H> {
        /// Configures the `grpc-timeout` propagation of this stack.
        pub fn propagate_deadline(
            self,
            f: impl FnOnce(PropagateDeadlineLayerBuilder) -> PropagateDeadlineLayerBuilder,
        ) -> Self {
            self.map_innermost(|p| GrpcTransportPart {
                propagate: f(p.propagate),
                attempt_name: p.attempt_name,
            })
        }

        /// The largest request body kept for a retry (default 64 KiB); a
        /// larger one is sent once.
        pub fn replay_limit(
            self,
            limit: usize,
        ) -> ClientStackBuilder<P, C, GrpcTransportPart, GrpcOutermost, H> {
            self.with_outermost(GrpcOutermost {
                replay: ReplayBodyLayer::new(limit),
            })
        }
    }
}

#[cfg(feature = "tonic")]
pub use self::server::{GrpcIngress, GrpcIngressLayer, GrpcServer};
pub use self::server::{HttpIngress, HttpIngressLayer, HttpServer};

mod server {
    use std::time::Duration;

    use super::super::part::{IngressPart, StackPart, part_name};
    use super::super::server::{ServerCore, ServerStack, ServerStackBuilder, ServerStackService};
    use super::{Identity, Layer};
    use crate::body::{CallBodyLayer, CallBodyService};
    use crate::deadline::propagate::{
        DeadlineFromHeaders, DeadlineFromHeadersLayer, DeadlineFromHeadersLayerBuilder,
    };
    use crate::error::{ConfigError, Name};
    use crate::hold::BodyEnd;
    use crate::http::{RejectionResponse, RejectionResponseLayer};
    use crate::observe::Observer;
    use crate::retry::http::{MarkInboundAttempt, MarkInboundAttemptLayer};
    use crate::shed::criticality::FromTaskLocal;

    /// The server presets' margin per hop: taken off the time a client says
    /// it has, so that the server's own answer (504, `DEADLINE_EXCEEDED`)
    /// reaches the client before the client's timer fires. Without it both
    /// fire at the same instant and the same call ends sometimes as the
    /// server's answer, sometimes as the client's timeout (seen on loopback
    /// with the client preset's attempt timeout).
    pub(super) const HOP_MARGIN: Duration = Duration::from_millis(10);

    /// The outermost part of the [HTTP server preset](ServerStack::http),
    /// unbuilt: rejections answered as responses (429 / 503 / 504 with
    /// `Retry-After`), the client's deadline read from its headers, and the
    /// attempt number a client stack sent recorded (so the handler's own
    /// client stacks do not retry a retried request again).
    #[derive(Debug)]
    pub struct HttpIngress {
        deadline: DeadlineFromHeadersLayerBuilder,
    }

    /// The server presets' outermost parts differ only in how a rejection
    /// is answered: `$ingress` (unbuilt) builds `$layer`, which makes
    /// `$server`: the deadline read from headers, the inbound attempt
    /// marked, and `$answer` (a layer making `$answered`) outermost.
    macro_rules! ingress_part {
        (
            $ingress:ident, $answer:ident, $answered:ident,
            $(#[$layer_meta:meta])* layer $layer:ident,
            $(#[$server_meta:meta])* server $server:ident $(,)?
        ) => {
            impl crate::stack::part::sealed::Sealed for $ingress {}

            impl IngressPart for $ingress {
                type Innermost = CallBodyLayer;

                fn build_innermost(
                    &self,
                    observer: Option<&Observer>,
                ) -> Result<Self::Innermost, ConfigError> {
                    self.deadline.answer_layer(observer)
                }
            }

            impl StackPart for $ingress {
                type Layer = $layer;

                fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
                    Ok($layer {
                        deadline: self.deadline.build_part(observer)?,
                    })
                }

                fn with_budget(self, budget: std::time::Duration) -> Self {
                    $ingress {
                        deadline: self.deadline.cap_at(budget),
                    }
                }
            }

            impl<R, P> ServerStackBuilder<$ingress, R, P> {
                /// Configures how the client's deadline is read (header
                /// names, cap, margin, what to do with bad input).
                pub fn deadline_from_headers(
                    self,
                    f: impl FnOnce(DeadlineFromHeadersLayerBuilder) -> DeadlineFromHeadersLayerBuilder,
                ) -> Self {
                    self.map_ingress(|i| $ingress {
                        deadline: f(i.deadline),
                    })
                }
            }

            $(#[$layer_meta])*
            #[derive(Debug, Clone)]
            pub struct $layer {
                deadline: DeadlineFromHeadersLayer,
            }

            impl<S, P, R> Layer<Core<S, P, R>> for $layer
            where
                R: Layer<ServerCore<CallBodyService<S>, P, BodyEnd>>,
            {
                type Service = $server<S, P, R>;

                fn layer(&self, inner: Core<S, P, R>) -> Self::Service {
                    let marked = MarkInboundAttemptLayer::new().layer(inner);
                    $server {
                        inner: $answer::new().layer(self.deadline.layer(marked)),
                    }
                }
            }

            $(#[$server_meta])*
            ///
            /// `S` is your service, `P` the adaptive limit's criticality
            /// source and `R` the rate-limit part
            /// ([`Identity`](tower::layer::util::Identity) when the stack has
            /// none). A named type (not an alias of the layers inside), so
            /// that signatures and type mismatches say its name; it forwards
            /// `poll_ready` and `call` to them unchanged.
            pub struct $server<S, P = FromTaskLocal, R = Identity>
            where
                R: Layer<ServerCore<CallBodyService<S>, P, BodyEnd>>,
            {
                inner: $answered<DeadlineFromHeaders<MarkInboundAttempt<Core<S, P, R>>>>,
            }

            wrapper_service!(
                $server<S, P, R>,
                $answered<DeadlineFromHeaders<MarkInboundAttempt<Core<S, P, R>>>>,
                where R: Layer<ServerCore<CallBodyService<S>, P, BodyEnd>>,
            );
        };
    }

    /// The generic server stack's service around a preset's body layer and
    /// `S`: what a preset's ingress wraps.
    type Core<S, P, R> = ServerStackService<CallBodyService<S>, P, BodyEnd, R>;

    ingress_part!(
        HttpIngress, RejectionResponseLayer, RejectionResponse,
        /// The outermost part of the [HTTP server preset](ServerStack::http),
        /// built: it makes the preset's service, an [`HttpServer`].
        layer HttpIngressLayer,
        /// The service the [HTTP server preset](ServerStack::http) makes
        /// around your service (an axum `Router`, …): rejections answered as
        /// 429 / 503 / 504 responses with `Retry-After`, the client's
        /// deadline read from its headers, the inbound attempt marked, then
        /// the generic [`ServerStackService`] with the body held to the
        /// deadline.
        server HttpServer,
    );

    impl ServerStack {
        /// The server stack for an HTTP service (feature `http`), for
        /// example an axum `Router`: the [generic stack](ServerStack::builder)
        /// with what HTTP needs, so that a newcomer gets it right with the
        /// budget alone.
        ///
        /// On top of the generic stack, outermost:
        ///
        /// - every rejection is answered as a response (errors become
        ///   [`Infallible`](std::convert::Infallible), as axum requires):
        ///   429 for a rate limit, 503 for shedding or a full bulkhead, 504
        ///   for a deadline, each with a `Retry-After` when the layer knows
        ///   when to come back (shed and full-bulkhead answers always do,
        ///   jittered); an error your handler returns is a 500;
        /// - the client's deadline is read from `x-request-timeout-ms` or
        ///   `grpc-timeout`, less a 10 ms margin per hop (so the server's
        ///   504 reaches the client before the client's own timer fires),
        ///   capped at the total budget; change with
        ///   [`deadline_from_headers`](ServerStackBuilder::deadline_from_headers);
        /// - the `x-seawall-attempt` a client stack sends is recorded, so the
        ///   handler's own client stacks do not retry a retried request;
        /// - innermost, a [`CallBodyLayer`](crate::body::CallBodyLayer): the
        ///   answer is held to the deadline to its last byte, and so are the
        ///   adaptive limit's place and the bulkhead permit (a streaming
        ///   answer counts while it streams; see [`hold`](crate::hold)); the
        ///   request body too: a handler still waiting for it at the
        ///   deadline reads an error holding `DeadlineExceeded` (axum wraps
        ///   it in an `axum::Error`: find it with
        ///   [`rejection_of`](crate::error::rejection_of)), and an answer
        ///   made after the deadline is replaced by the 504. The service
        ///   inside receives `http::Request<CallBody<B>>` — an axum `Router`
        ///   takes any body.
        ///
        /// The built layer, to keep in a struct field, is a
        /// `ServerStackLayer<HttpIngressLayer, Identity, FromTaskLocal, CallBodyLayer>`
        /// (`Identity` becomes the `RateLimitLayer` once the stack has a rate
        /// limit). Put it on the router with `Router::layer`: axum turns the
        /// answers' [`CallBody`](crate::body::CallBody) bodies into its own.
        /// The service it makes around a router is an [`HttpServer`]; to
        /// serve one kept on its own with `axum::serve`, put it back in a
        /// router: `Router::new().fallback_service(svc)`.
        ///
        /// The adaptive limit sheds by criticality (sheddable requests first)
        /// once it knows each request's class. It does not read the
        /// `x-seawall-criticality` header by default, since any client could
        /// claim `critical_plus`; behind an edge you control, opt in with
        /// `.adaptive_limit(|l| l.criticality(FromHttpRequest))`
        /// ([`FromHttpRequest`](crate::shed::criticality::FromHttpRequest)).
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
        /// # async fn main() -> Result<(), seawall::BoxError> {
        /// use std::time::Duration;
        /// use axum::{body::Body, routing::get, Router};
        /// use seawall::stack::ServerStack;
        /// use tower::ServiceExt;
        ///
        /// let stack = ServerStack::http("api")
        ///     .total_budget(Duration::from_secs(5))
        ///     .build()?;
        /// let app: Router = Router::new()
        ///     .route("/", get(|| async { "hello" }))
        ///     .layer(stack);
        ///
        /// let ok = app.clone().oneshot(http::Request::get("/").body(Body::empty())?).await?;
        /// assert_eq!(ok.status(), 200);
        /// let late = http::Request::get("/").header("x-request-timeout-ms", "0").body(Body::empty())?;
        /// assert_eq!(app.oneshot(late).await?.status(), 504);
        /// # Ok(())
        /// # }
        /// ```
        pub fn http(name: impl Into<Name>) -> ServerStackBuilder<HttpIngress> {
            let builder = ServerStack::builder(name);
            let deadline = DeadlineFromHeadersLayer::builder()
                .name(part_name(builder.stack_name(), "ingress"))
                .margin(HOP_MARGIN);
            builder.with_ingress(HttpIngress { deadline })
        }
    }

    #[cfg(feature = "tonic")]
    pub use self::grpc::{GrpcIngress, GrpcIngressLayer, GrpcServer};

    #[cfg(feature = "tonic")]
    mod grpc {

        use super::*;
        use crate::grpc::{GrpcRejection, GrpcRejectionLayer};

        /// The outermost part of the [gRPC server preset](ServerStack::grpc),
        /// unbuilt: rejections answered as gRPC statuses
        /// (`RESOURCE_EXHAUSTED`, `UNAVAILABLE` with `grpc-retry-pushback-ms`,
        /// `DEADLINE_EXCEEDED`), the client's `grpc-timeout` read, and the
        /// attempt number a client stack sent recorded.
        #[derive(Debug)]
        pub struct GrpcIngress {
            pub(super) deadline: DeadlineFromHeadersLayerBuilder,
        }

        ingress_part!(
            GrpcIngress, GrpcRejectionLayer, GrpcRejection,
            /// The outermost part of the [gRPC server preset](ServerStack::grpc),
            /// built: it makes the preset's service, a [`GrpcServer`].
            layer GrpcIngressLayer,
            /// The service the [gRPC server preset](ServerStack::grpc) makes
            /// around your tonic routes: rejections answered as gRPC statuses
            /// with pushback, the client's `grpc-timeout` read, the inbound
            /// attempt marked, then the generic [`ServerStackService`] with
            /// the stream held to the deadline.
            server GrpcServer,
        );

        impl ServerStack {
            /// The server stack for a tonic server (feature `tonic`): the
            /// [generic stack](ServerStack::builder) with what gRPC needs.
            /// Give it to `tonic::transport::Server::builder().layer(..)`; the
            /// service it makes around your routes is a [`GrpcServer`], and
            /// the built layer a
            /// `ServerStackLayer<GrpcIngressLayer, Identity, FromTaskLocal, CallBodyLayer>`.
            ///
            /// On top of the generic stack, outermost: every rejection is
            /// answered as a gRPC status (`RESOURCE_EXHAUSTED` for a rate
            /// limit, `UNAVAILABLE` for shedding or a full bulkhead,
            /// `DEADLINE_EXCEEDED` for a deadline), with
            /// `grpc-retry-pushback-ms` when the layer knows when to come
            /// back (shed and full-bulkhead answers always do, jittered);
            /// the client's `grpc-timeout` is read, less a 10 ms margin per
            /// hop, capped at the total budget (tonic's own `grpc-timeout`
            /// handling answers
            /// `CANCELLED`, this one `DEADLINE_EXCEEDED` and hands the time
            /// left to the handler); the `x-seawall-attempt` a client stack
            /// sends is recorded. A streaming answer is held to the deadline
            /// (it ends with `grpc-status: 4` in its trailers) and holds the
            /// adaptive limit's place and the bulkhead permit until it ends
            /// (see [`hold`](crate::hold)).
            ///
            /// ```no_run
            /// # async fn run(routes: tonic::service::Routes) -> Result<(), seawall::BoxError> {
            /// use std::time::Duration;
            /// use seawall::stack::ServerStack;
            ///
            /// let stack = ServerStack::grpc("greeter")
            ///     .total_budget(Duration::from_secs(5))
            ///     .build()?;
            /// tonic::transport::Server::builder()
            ///     .layer(stack)
            ///     .add_routes(routes)
            ///     .serve("127.0.0.1:50051".parse()?)
            ///     .await?;
            /// # Ok(())
            /// # }
            /// ```
            pub fn grpc(name: impl Into<Name>) -> ServerStackBuilder<GrpcIngress> {
                let builder = ServerStack::builder(name);
                let deadline = DeadlineFromHeadersLayer::builder()
                    .name(part_name(builder.stack_name(), "ingress"))
                    .no_ms_header()
                    .margin(HOP_MARGIN);
                builder.with_ingress(GrpcIngress { deadline })
            }
        }
    }
}
