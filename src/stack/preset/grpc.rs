//! The gRPC client preset, its transport part and the outer part that names
//! its service.

use tower::layer::util::Stack;

use super::super::client::{ClientStack, ClientStackBuilder, ClientStackService};
use super::super::part::{StackPart, part_name};
use super::{AtAttempt, Identity, Layer};
use crate::deadline::propagate::{
    PropagateDeadline, PropagateDeadlineLayer, PropagateDeadlineLayerBuilder,
};
use crate::error::{ConfigError, Name};
use crate::grpc::transport::{TonicTransport, TonicTransportLayer};
use crate::grpc::{GrpcStatusClassifier, StatusErrors};
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
/// `call` unchanged to the layers inside: errors as `tonic::Status`
/// ([`StatusErrors`]), body replay, then the [`ClientStackService`]. Its
/// error type is `tonic::Status`.
pub struct GrpcClient<S, H = Identity, P = GrpcRetry, C = GrpcStatusClassifier>
where
    H: Layer<AtAttempt<PropagateDeadline<TonicTransport<S>>, C>>,
{
    inner: GrpcInner<S, H, P, C>,
}

/// The layers inside a [`GrpcClient`].
type GrpcInner<S, H, P, C> = StatusErrors<
    ReplayBodyService<ClientStackService<PropagateDeadline<TonicTransport<S>>, P, C, BodyEnd, H>>,
>;

wrapper_service!(
    GrpcClient<S, H, P, C>,
    GrpcInner<S, H, P, C>,
    where H: Layer<AtAttempt<PropagateDeadline<TonicTransport<S>>, C>>,
);

/// The outermost part of the [gRPC client preset](ClientStack::grpc):
/// body replay (so a retry can resend the request), then every error as a
/// `tonic::Status` with the error as its source ([`StatusErrors`]); it
/// names the stack's service
/// [`GrpcClient`].
#[derive(Debug, Clone, Default)]
pub struct GrpcOutermost {
    replay: ReplayBodyLayer,
}

impl<S, P, C, H> Layer<ClientStackService<PropagateDeadline<TonicTransport<S>>, P, C, BodyEnd, H>>
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
            inner: StatusErrors::new(self.replay.layer(inner)),
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
    /// what gRPC needs, so that a newcomer gets it right with its budget
    /// alone (`total_budget`; each attempt gets half of it unless
    /// `attempt_timeout` says otherwise).
    ///
    /// | part | gRPC preset |
    /// |---|---|
    /// | breaker classifier | [`GrpcStatusClassifier`]: `INTERNAL`, `UNKNOWN`, `DEADLINE_EXCEEDED`, `CANCELLED` (a tonic server's timeout), `DATA_LOSS` fail, and `UNAVAILABLE` when no server answered it (a connection refused or lost); `RESOURCE_EXHAUSTED` and a server's `UNAVAILABLE`, with or without pushback, are "busy" (not counted by the breaker, but a second of bare `UNAVAILABLE` only, from 20 calls, opens it: see [`count_overload`](crate::circuit_breaker::CircuitBreakerBuilder::count_overload)); other codes ignored; this process's own refusals never count |
    /// | status of a failure sent as headers then trailers | read below the breaker ([`TonicTransport`]): classified and retried like a trailers-only one |
    /// | retry policy | [`GrpcRetry`]: `UNAVAILABLE` only (the server did not process the call), `grpc-retry-pushback-ms` honoured; opt more codes in with `.retry(\|r\| r.policy(GrpcRetry::new().with_code(Code::DeadlineExceeded)))` for idempotent methods |
    /// | body replay | request bodies up to 64 KiB are kept for a retry |
    /// | propagation | each attempt carries its time left as `grpc-timeout` |
    /// | streams | the deadline covers the whole stream (`DEADLINE_EXCEEDED` after the messages sent in time); the bulkhead permit and the breaker's verdict are held until the stream ends: an error status in the trailers after messages counts as a failure, a stream dropped half way as its head said (not at all if a read was waiting for more); a started stream is never retried. A stream that outlasts the request's deadline (the attempt's only when a retry may follow a timed-out attempt, `DEADLINE_EXCEEDED` opted in) is cut, and counts neither way to the breaker once it has delivered (a second message started; a unary answer cut part way is a failure): give long-lived streaming methods their own stack whose budgets fit them, on the server too ([`ByMethod`](crate::stack::ByMethod)) |
    /// | the `Channel`'s own timeout | an attempt timeout, never `UNKNOWN` |
    /// | errors | a `tonic::Status` ([`StatusErrors`](crate::grpc::StatusErrors)): the tonic client sees `DEADLINE_EXCEEDED`, `UNAVAILABLE` with pushback, `RESOURCE_EXHAUSTED` …; [`error::rejection(&status)`](crate::error::rejection) finds this process's own refusal in it (kind, layer, `retry_after`) and nothing in a server's status |
    ///
    /// The service is a [`GrpcClient<Channel>`](GrpcClient): hand it to a
    /// generated client (`GreeterClient::new(svc)`). The built layer, to
    /// keep in a struct field, is a
    /// `ClientStackLayer<GrpcRetry, GrpcStatusClassifier, Stack<TonicTransportLayer, PropagateDeadlineLayer>, GrpcOutermost>`
    /// ([`GrpcRetry`](crate::retry::grpc::GrpcRetry),
    /// [`GrpcStatusClassifier`](crate::GrpcStatusClassifier),
    /// `tower::layer::util::Stack`,
    /// [`TonicTransportLayer`](crate::grpc::TonicTransportLayer),
    /// [`PropagateDeadlineLayer`](crate::PropagateDeadlineLayer),
    /// [`GrpcOutermost`](crate::stack::GrpcOutermost)).
    ///
    /// Unary and server-streaming calls are retried with their request
    /// (read ahead, up to the replay limit). A client-streaming or
    /// bidirectional call is sent as soon as its next message is not ready
    /// (with what was read ahead first) and is then not retried: a call
    /// that sends its next message only after an answer (ping-pong) goes
    /// out at once.
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
    ) -> ClientStackBuilder<GrpcRetry, GrpcStatusClassifier, GrpcTransportPart, GrpcOutermost> {
        let name = name.into();
        let part = GrpcTransportPart {
            propagate: PropagateDeadlineLayer::builder()
                .name(part_name(&name, "propagate"))
                .no_ms_header(),
            attempt_name: part_name(&name, "attempt"),
        };
        ClientStack::builder(name)
            .retry(|r| {
                r.policy(GrpcRetry::new())
                    .min_remaining(super::PRESET_MIN_REMAINING)
            })
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
    /// larger one is sent once (so with 0 every call is sent once: no
    /// retry, no hedged copy).
    pub fn replay_limit(
        self,
        limit: usize,
    ) -> ClientStackBuilder<P, C, GrpcTransportPart, GrpcOutermost, H> {
        self.with_outermost(GrpcOutermost {
            replay: ReplayBodyLayer::new(limit),
        })
    }
}
