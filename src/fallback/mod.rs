//! Fallback: a call that failed or was refused gets an answer anyway — a
//! cached value, a default, a degraded response, or a second service's —
//! chosen by how it ended.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use seawall::error::Overloaded;
//! use seawall::fallback::{fallback_fn, FallbackLayer, FallbackOn};
//! use seawall::observe::FallbackReason;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! // A price service shedding load.
//! let prices = service_fn(|_sku: &'static str| async {
//!     Err::<u32, seawall::BoxError>(Overloaded::new("prices", None).into())
//! });
//! let layer = FallbackLayer::builder(fallback_fn(|reason: FallbackReason, _: Result<&u32, &seawall::BoxError>| async move {
//!     assert_eq!(reason, FallbackReason::Overloaded);
//!     Some(999) // the list price, from the catalogue
//! }))
//! .on(FallbackOn::REFUSED | FallbackOn::OVERLOADED) // not for real failures
//! .build()
//! .unwrap();
//! let price = layer.layer(prices).oneshot("sku-1").await.unwrap();
//! assert_eq!(price, 999);
//! # }
//! ```
//!
//! # How a call is judged
//!
//! With the [outcome model](crate::classify): an error whose rejection is a
//! [`DeadlineExceeded`](crate::error::DeadlineExceeded) is
//! [`Deadline`](crate::observe::FallbackReason::Deadline); a local refusal
//! (this process's bulkhead, rate limit, open breaker, spent budget) is
//! [`Refused`](crate::observe::FallbackReason::Refused); anything else is
//! what the [classifier](FallbackLayerBuilder::classifier) says:
//! [`Overloaded`](crate::observe::FallbackReason::Overloaded),
//! [`Failure`](crate::observe::FallbackReason::Failure), or no fallback (a
//! success, an ignored outcome such as a 404). With the HTTP or gRPC
//! classifier, a 503 response or an `UNAVAILABLE` status is answered for
//! too, not only errors.
//!
//! # Bounded
//!
//! The fallback's own answer gets at most [`DEFAULT_TIMEOUT`] (1 s, or
//! [`timeout`](FallbackLayerBuilder::timeout)) and never past the request's
//! deadline (the task-local one, or the one the request carries); cut
//! there, or answering `None`, it lets the original outcome through. The
//! service keeps its error type: the layer adds no error of its own.
//!
//! So that it has time to answer for a deadline, the call below runs under
//! the request's deadline less a tenth of the time left (at most the
//! fallback's timeout) when the fallback answers for
//! [`DEADLINE`](FallbackOn::DEADLINE): a client stack under it whose budget
//! is longer than the request's (the README's server preset of 950 ms
//! over a client of 2 s) gives up 95 ms early, and the fallback answers
//! then. Without the reserve, in an outside trial of that setup with a
//! dependency hanging for 10 s, the first 1.5 s of the hang got `504`s
//! until the breaker opened. The server preset's own refusals (its
//! adaptive limit shedding before the handler runs) come before a fallback
//! around the client, and stay `503`s: a hang makes every answer as slow
//! as the deadline, and the limit refused 13 % of a hang's requests at 200
//! a second in that trial; a handler that always answers in time (its
//! fallback does) takes a floor under the limit of about the requests a
//! second × its deadline (`.adaptive_limit(|l| l.limits(Some(200), None))`
//! on the server preset served every request of the hang from the
//! fallback in a new-user check).
//!
//! Called from an axum handler or `tokio::spawn`, box the client first
//! (`tower::util::BoxCloneSyncService::new(client)`): the compiler cannot
//! prove a `fallback_fn` closure's lifetimes general enough inside an
//! `async` block ("implementation of `FnOnce` is not general enough").
//!
//! # Around an HTTP client stack
//!
//! The fallback answers with the service's own response type. The HTTP
//! client preset answers `http::Response<CallBody<Incoming>>`, a body no one
//! but hyper can make: box the body first, then the fallback can build
//! responses of that type. Give it the stack's classifier, or it sees only
//! errors (a 503 response is not one):
//!
//! ```no_run
//! # async fn doc() -> Result<(), seawall::BoxError> {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use http_body_util::combinators::UnsyncBoxBody;
//! use seawall::fallback::{fallback_fn, FallbackLayer};
//! use seawall::http::HttpStatusClassifier;
//! use seawall::observe::FallbackReason;
//! use seawall::stack::ClientStack;
//! use seawall::body::CallBody;
//! use seawall::BoxError;
//! use hyper::body::Incoming;
//! use tower::{Layer, ServiceBuilder, ServiceExt};
//!
//! type Body = UnsyncBoxBody<Bytes, BoxError>;
//! let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//!     .build_http::<Full<Bytes>>();
//! let stack = ClientStack::http("catalogue")
//!     .total_budget(Duration::from_secs(2))
//!     .attempt_timeout(Duration::from_millis(500))
//!     .build()?;
//! let fallback = FallbackLayer::builder(fallback_fn(
//!     |reason: FallbackReason, _: Result<&http::Response<Body>, &BoxError>| async move {
//!         let body = Full::new(Bytes::from_static(b"[]")).map_err(Into::into).boxed_unsync();
//!         Some(http::Response::builder().header("x-degraded", reason.as_str()).body(body).unwrap())
//!     },
//! ))
//! .classifier(HttpStatusClassifier::new())
//! .build()?;
//! let client = ServiceBuilder::new()
//!     .layer(fallback)
//!     .map_response(|res: http::Response<CallBody<Incoming>>| {
//!         res.map(|b| b.map_err(Into::into).boxed_unsync())
//!     })
//!     .service(stack.layer(hyper));
//! let req = http::Request::get("http://127.0.0.1:3000/products").body(Full::default())?;
//! let res = client.oneshot(req).await?;
//! # let _ = res;
//! # Ok(())
//! # }
//! ```
//!
//! (The example needs `hyper = "1"` among your dependencies, for
//! `Incoming`.) A [`fallback_fn`] answers every request it wraps, a `POST`
//! as well as a `GET`: for a client that sends both, decide by the request
//! with [`fallback_with`] (keep its method, and decline with `None`), or
//! wrap only the client you read with.
//!
//! The stack retries before the fallback sees anything: a 503 with
//! `Retry-After` is retried after its wait (within the budget), so its
//! fallback answers after that wait; lower the retry layer's
//! `max_retry_after` (or retry less) for a quicker degraded answer.
//!
//! For axum, answer a `Response` ([`fallback_fn`] returning
//! `Some(response)`); for a tonic client, a `tonic::Status::into_http()`
//! is a response too. Each answer is reported as
//! [`FallbackUsed`](crate::observe::EventKind::FallbackUsed) with its
//! reason (metric `seawall.fallbacks`).

mod layer;
mod policy;
mod service;

pub use self::layer::{DEFAULT_TIMEOUT, FallbackLayer, FallbackLayerBuilder};
pub use self::policy::{
    FallbackFn, FallbackOn, FallbackPolicy, FallbackTo, FallbackWith, ToAnswer, fallback_fn,
    fallback_to, fallback_with,
};
pub use self::service::{Fallback, ResponseFuture};
