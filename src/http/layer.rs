use tower_layer::Layer;

use super::service::RejectionResponse;

/// Wraps a service so that its errors become HTTP responses: seawall
/// rejections get their mapped status, `Retry-After` and short body, any other
/// error a generic `500`. The wrapped service never fails (its error type is
/// [`Infallible`](std::convert::Infallible)), which is what axum's
/// `Router::layer` and `route_layer` ask for.
///
/// Put it **outside** the seawall layers it answers for. It holds no state;
/// see the [module docs](crate::http) for the exact responses.
///
/// ```
/// use seawall::http::RejectionResponseLayer;
/// use tower::ServiceBuilder;
///
/// let stack = ServiceBuilder::new()
///     .layer(RejectionResponseLayer::new())
///     // .layer(breaker).layer(limiter) ...
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, seawall::BoxError>(http::Response::new(String::from("hello")))
///     });
/// # let _ = stack;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectionResponseLayer {
    _priv: (),
}

impl RejectionResponseLayer {
    /// Creates the layer.
    pub const fn new() -> Self {
        RejectionResponseLayer { _priv: () }
    }
}

impl<S> Layer<S> for RejectionResponseLayer {
    type Service = RejectionResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RejectionResponse::new(inner)
    }
}
