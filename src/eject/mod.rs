//! Outlier ejection for balanced clients: each endpoint of a balanced set
//! is watched with the outcome model, and an outlier is taken out of the
//! set for a while — what Envoy, Istio and gRPC (A50) do, for
//! `tower::balance`.
//!
//! A single breaker in front of ten replicas turns a partial outage into a
//! full one: one replica failing is 10 % of calls, below its threshold;
//! three failing open it and the seven healthy ones are refused too. An
//! endpoint that is ejected just stops being picked.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use seawall::eject::EjectionLayer;
//! use tower::balance::p2c::Balance;
//! use tower::discover::ServiceList;
//! use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! // Three replicas; the first is broken.
//! let replica = |broken: bool| {
//!     service_fn(move |x: u32| async move {
//!         if broken { Err::<u32, seawall::BoxError>("down".into()) } else { Ok(x) }
//!     })
//! };
//! let ejection = EjectionLayer::builder().build()?;
//! let endpoints: Vec<_> = [true, false, false]
//!     .into_iter()
//!     .map(|broken| ejection.layer(replica(broken)))
//!     .collect();
//! let discover =
//!     PendingRequestsDiscover::new(ServiceList::new(endpoints), CompleteOnResponse::default());
//! let mut balanced = Balance::new(discover);
//!
//! let mut failed = 0;
//! for i in 0..200 {
//!     if balanced.ready().await?.call(i).await.is_err() {
//!         failed += 1;
//!     }
//! }
//! assert_eq!(ejection.ejected(), 1); // out after 5 failures in a row
//! assert!(failed <= 5, "{failed}");
//! # Ok(())
//! # }
//! ```
//!
//! # Rules (Envoy's, with defaults chosen by the replica scenario)
//!
//! - **Failures in a row**: 5 remote failures in a row eject an endpoint
//!   ([`DEFAULT_CONSECUTIVE_FAILURES`]). A local refusal never counts. A
//!   remote overload ("busy") is no failure, but an endpoint busy alone is
//!   ejected: 5 busy answers in a row (checked at each multiple), busy to
//!   half of its recent answers (about the last 16), while at least half of
//!   the others are busy to under a tenth of theirs (a proxy with no
//!   upstream answering a bare `503`; a set busy all over keeps its
//!   endpoints); with
//!   [`count_overload`](EjectionLayerBuilder::count_overload) it is a
//!   failure. A call that
//!   an attempt timeout above the balancer ends (seawall's
//!   [`AttemptTimeoutLayer`](crate::deadline::AttemptTimeoutLayer), the
//!   client stacks') is a failure too: an endpoint that hangs is ejected
//!   after 5 of them. A call dropped for any other reason (the request's
//!   deadline, a hedge that won, a caller that went) counts for nothing.
//!   A call is judged by its response head: a status in the trailers of a
//!   streamed answer (a gRPC stream that fails midway) or a body cut off
//!   counts as the head said (a unary gRPC error is in the head).
//! - **Outliers** (every 10 s, among endpoints with 100 calls, when at least
//!   5 have them): a success rate more than 1.9 standard deviations below the
//!   set's mean, and at least 5 points below it (one stray failure among
//!   peers that failed nothing is not an outlier); a mean latency above 5
//!   times the set's median.
//! - **How long**: 5 s ([`DEFAULT_BASE_EJECTION`]); an endpoint that
//!   offends again after coming back stays out `n` times as long the `n`-th
//!   time, at most 300 s (each healthy interval forgives one).
//! - **How many**: at most half of the set at once
//!   ([`DEFAULT_MAX_EJECTED_PERCENT`]), at least one, never the last one.
//!   An endpoint leaves the set when its service (every clone) is dropped,
//!   even while its calls in flight run; if the endpoints left are all
//!   ejected, their ejections end (the set always has one taking calls).
//! - **Coming back**: when its time is over, an endpoint takes one probe
//!   call; a success makes it healthy, a failure ejects it again for as
//!   long (one call per ejection is all a dead endpoint costs, and it comes
//!   back within one ejection of its recovery).
//!
//! An ejected endpoint's `poll_ready` is `Pending` (woken when its time is
//! over), so `tower::balance::p2c::Balance` picks among the others. For
//! tonic, make one `Channel` per endpoint, wrap each, and balance them with
//! `Balance`; for endpoints that come and go, `balance_channel` (feature
//! `tonic-channel`) has the shape of tonic's `Channel::balance_channel` — a
//! service and a sender of `Change<K, Endpoint>` — with every endpoint
//! watched, or give `Balance` [`EjectionLayer::discover`] over your own
//! stream of changes. Tonic's own `balance_list` and `balance_channel`
//! balance inside the `Channel`, where no layer can see which endpoint
//! answered a call: use these instead. Events: each endpoint's [`StateChanged`](crate::observe::EventKind::StateChanged)
//! (healthy, open = ejected, half-open = probing) as `"{name}.{i}"`, where
//! `i` is the endpoint's slot (taken when its service is made, given back
//! and reused when it is dropped; a removed endpoint's history goes with
//! it; a new one starts with a `Healthy → Healthy` event, so that the
//! state gauge has one state at 1), and
//! [`EndpointEjected`](crate::observe::EventKind::EndpointEjected) with the
//! reason and the time.
//!
//! # Shared breaker, per-endpoint breakers, or ejection?
//!
//! - One dependency behind one address (a load balancer you do not see
//!   through): one client stack, one breaker.
//! - Endpoints you balance yourself: ejection below the balancer, and one
//!   client stack above it (its retry sends a failed call to another
//!   endpoint, its breaker opens only when the whole set fails).
//! - A per-endpoint breaker (a `CircuitBreakerLayer` per endpoint, in
//!   [`backpressure`](crate::circuit_breaker::CircuitBreakerBuilder::backpressure)
//!   mode so that an open breaker reads as not ready) works too, but it
//!   judges each endpoint alone: it cannot see that one endpoint is slower
//!   or worse than the others, and it has no cap on how many are out. A
//!   protocol preset per endpoint does this: `ClientStack::http(name)
//!   .retry(|r| r.max_attempts(1)).breaker(|b| b.backpressure(true))` around
//!   each endpoint's client, balanced (retry above the balancer, where a
//!   second attempt can reach another endpoint; `tests/eject` runs it
//!   against real servers).

#[cfg(feature = "tonic-channel")]
mod channel;
mod layer;
mod registry;
mod service;

#[cfg(feature = "tonic-channel")]
pub use self::channel::{EjectChannel, EndpointChanges, balance_channel};

pub use self::layer::{
    DEFAULT_BASE_EJECTION, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_INTERVAL, DEFAULT_LATENCY_FACTOR,
    DEFAULT_MAX_EJECTED_PERCENT, DEFAULT_MAX_EJECTION, DEFAULT_MAX_ENDPOINTS,
    DEFAULT_SUCCESS_RATE_MIN_HOSTS, DEFAULT_SUCCESS_RATE_STDEV_FACTOR, DEFAULT_SUCCESS_RATE_VOLUME,
    EjectionLayer, EjectionLayerBuilder,
};
pub use self::service::{Ejectable, ResponseFuture};
