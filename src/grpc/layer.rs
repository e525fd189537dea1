use tower_layer::Layer;

use super::service::GrpcRejection;

/// Wraps a gRPC server stack so that its errors become proper trailers-only
/// gRPC responses: HTTP 200, `content-type: application/grpc`, `grpc-status`,
/// `grpc-message`, `grpc-retry-pushback-ms` when the rejection knows its wait,
/// and an empty body. Clients then see the mapped code (`UNAVAILABLE`,
/// `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`) and the pushback. Without it, a
/// tonic server resets the stream for an error that is not a `tonic::Status`,
/// and clients see `INTERNAL` ("h2 protocol error"). The wrapped service never fails (its error type is
/// [`Infallible`](std::convert::Infallible)).
///
/// Put it **outside** the seawall layers it answers for. It holds no state.
///
/// On the client side, put it outside the seawall layers that wrap a tonic
/// `Channel` (and hand the stack to the generated client or
/// `tonic::client::Grpc`): a rejection then reaches the caller as the mapped
/// `Status`, pushback in its metadata, instead of `UNKNOWN`.
///
/// ```no_run
/// use seawall::grpc::GrpcRejectionLayer;
/// use tower::ServiceBuilder;
///
/// # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
/// tonic::transport::Server::builder()
///     .layer(
///         ServiceBuilder::new()
///             .layer(GrpcRejectionLayer::new())
///             // the seawall layers go here, below it
///             .concurrency_limit(64),
///     )
///     .add_routes(routes)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRejectionLayer {
    _priv: (),
}

impl GrpcRejectionLayer {
    /// Creates the layer.
    pub const fn new() -> Self {
        GrpcRejectionLayer { _priv: () }
    }
}

impl<S> Layer<S> for GrpcRejectionLayer {
    type Service = GrpcRejection<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcRejection::new(inner)
    }
}
