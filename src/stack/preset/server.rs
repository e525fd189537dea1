//! The HTTP and gRPC server presets and the ingress parts that name their
//! services.

use super::super::part::{IngressPart, StackPart, part_name};
use super::super::server::{
    HOP_MARGIN, ServerCore, ServerStack, ServerStackBuilder, ServerStackService,
};
use super::{Identity, Layer};
use crate::body::{CallBodyLayer, CallBodyService};
use crate::deadline::propagate::{
    DeadlineFromHeaders, DeadlineFromHeadersLayer, DeadlineFromHeadersLayerBuilder,
};
use crate::error::{ConfigError, Name};
use crate::hold::{BodyEnd, Inbound};
use crate::http::{RejectionResponse, RejectionResponseLayer};
use crate::observe::Observer;
use crate::retry::http::{MarkInboundAttempt, MarkInboundAttemptLayer};
use crate::shed::criticality::FromTaskLocal;

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

            fn margin(&self) -> std::time::Duration {
                self.deadline.margin_value()
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

        impl<R, P, T> ServerStackBuilder<$ingress, R, P, T> {
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
            deadline: DeadlineFromHeadersLayer<Inbound>,
        }

        impl<S, P, R, T> Layer<Core<S, P, R, T>> for $layer
        where
            T: Layer<ServerCore<CallBodyService<S>, P, BodyEnd>>,
            R: crate::stack::OuterPart<T::Service>,
        {
            type Service = $server<S, P, R, T>;

            fn layer(&self, inner: Core<S, P, R, T>) -> Self::Service {
                let marked = MarkInboundAttemptLayer::new().layer(inner);
                $server {
                    inner: $answer::new().layer(self.deadline.layer(marked)),
                }
            }
        }

        $(#[$server_meta])*
        ///
        /// `S` is your service, `P` the adaptive limit's criticality
        /// source, `R` the rate-limit part and `T` the bulkheads per
        /// tenant ([`Identity`](tower::layer::util::Identity) when the
        /// stack has none). A named type (not an alias of the layers
        /// inside), so that signatures and type mismatches say its name;
        /// it forwards `poll_ready` and `call` to them unchanged.
        pub struct $server<S, P = FromTaskLocal, R = Identity, T = Identity>
        where
            T: Layer<ServerCore<CallBodyService<S>, P, BodyEnd>>,
            R: crate::stack::OuterPart<T::Service>,
        {
            inner: $answered<DeadlineFromHeaders<MarkInboundAttempt<Core<S, P, R, T>>, Inbound>>,
        }

        wrapper_service!(
            $server<S, P, R, T>,
            $answered<DeadlineFromHeaders<MarkInboundAttempt<Core<S, P, R, T>>, Inbound>>,
            where T: Layer<ServerCore<CallBodyService<S>, P, BodyEnd>>, R: crate::stack::OuterPart<T::Service>,
        );
    };
}

/// The generic server stack's service around a preset's body layer and
/// `S`: what a preset's ingress wraps.
type Core<S, P, R, T> = ServerStackService<CallBodyService<S>, P, BodyEnd, R, T>;

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
    ///
    /// Its answers have [`CallBody`](crate::body::CallBody) bodies, which
    /// `axum::serve` does not take on their own: put the stack on the
    /// router (`router.layer(stack)`), or an `HttpServer` kept in a field
    /// back in one (`Router::new().fallback_service(svc)`).
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
    ///   answer is held to the deadline to its last byte, and so is the
    ///   bulkhead permit (a streaming answer counts against the bulkhead
    ///   while it streams; the adaptive limit's place is given back at its
    ///   head: see [`hold`](crate::hold)); the
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
    /// (`seawall::stack::ServerStackLayer`, `seawall::stack::HttpIngressLayer`,
    /// `tower::layer::util::Identity`, `seawall::shed::criticality::FromTaskLocal`,
    /// `seawall::body::CallBodyLayer`; `Identity` becomes the
    /// `RateLimitLayer` once the stack has a rate limit, and a fifth
    /// parameter, [`TenantBulkheadLayer`](crate::stack::TenantBulkheadLayer),
    /// comes with [`tenant_bulkhead`](ServerStackBuilder::tenant_bulkhead)). Put it on the
    /// router with `Router::layer`: axum turns the answers'
    /// [`CallBody`](crate::body::CallBody) bodies into its own. Among
    /// tower-http's layers it goes innermost, its own `layer` call first,
    /// with CORS, the body limit, a cheap authentication and the trace
    /// outside it, and a health route added after the layers (the README's
    /// axum server, and the guide's "Among tower-http's layers": outermost, it answered `503` to
    /// requests that were `401`, `413` and preflights, without CORS
    /// headers).
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
        /// Give it to `tonic::transport::Server::builder().layer(..)`, or,
        /// to keep a health service (and any other) out of it, to each
        /// of your services with
        /// [`layer_named`](crate::stack::ServerStackLayer::layer_named) (under one
        /// `layer(..)`, health checks are shed with the rest: 112 of 150
        /// at four times capacity in a new user's trial); the
        /// service it makes around your routes is a [`GrpcServer`], and
        /// the built layer a
        /// `ServerStackLayer<GrpcIngressLayer, Identity, FromTaskLocal, CallBodyLayer>`
        /// (`seawall::stack::ServerStackLayer`, `seawall::stack::GrpcIngressLayer`,
        /// `tower::layer::util::Identity`, `seawall::shed::criticality::FromTaskLocal`,
        /// `seawall::body::CallBodyLayer`; `Identity` becomes the
        /// `RateLimitLayer` once the stack has a rate limit, and a fifth
        /// parameter, [`TenantBulkheadLayer`](crate::stack::TenantBulkheadLayer),
        /// comes with [`tenant_bulkhead`](ServerStackBuilder::tenant_bulkhead)).
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
        /// bulkhead permit until it ends; the adaptive limit's place is
        /// given back at its head (see [`hold`](crate::hold)).
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
