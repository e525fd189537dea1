//! Fault injection for tests and demos: injected errors, latency and outage
//! windows, reproducible from a seed and driven by tokio time.
//!
//! [`ChaosLayer`] wraps any service and, per call, decides from a seeded plan:
//!
//! - **errors**: with probability `error_rate` the call fails with an
//!   injected error ([`InjectedFault`] by default, or any error you make,
//!   seawall rejections included) instead of reaching the inner service;
//! - **latency**: with probability `latency_rate` (default 1) the response,
//!   or the failure, is delayed by a [`Latency`]: fixed, uniform in a range,
//!   or exponential with a cap;
//! - **outages**: every call made inside an outage window (an interval of
//!   time since the layer was built, once or repeating) fails with
//!   [`Fault::Outage`].
//!
//! The plan of call number *n* depends only on the seed and *n* (each call
//! seeds its own `SmallRng` from both), so a test that makes calls in the
//! same order sees the same faults every run, and the success path takes no
//! lock. (Same faults on one platform with one `rand` version: `SmallRng`
//! is not portable across them.) A call's plan is drawn when its service
//! is made ready, so a call planned to fail reserves nothing below. All time is tokio time: under `#[tokio::test(start_paused = true)]`
//! injected delays and outage windows are exact and cost no real time.
//!
//! Under axum, a `ChaosLayer` on a router fails with its injected errors,
//! and `Router::layer` wants none: put
//! [`RejectionResponseLayer`](crate::http::RejectionResponseLayer)
//! (feature `http`) outside it, which answers them (an [`InjectedFault`] as
//! a `500`, a seawall rejection made with `error` as its own status), or
//! put it below a server preset, which answers them already.
//!
//! Every service and clone built from one layer shares one call counter and
//! one start time. The layer reports no events of its own; the layers around
//! it report what the faults did to them.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use seawall::chaos::{ChaosLayer, Latency};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let chaos = ChaosLayer::builder()
//!     .seed(7)
//!     .error_rate(0.25)
//!     .latency(Latency::Fixed(Duration::from_millis(30)))
//!     .build()
//!     .expect("valid configuration");
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(chaos)
//!     .service_fn(|n: u32| async move { Ok::<_, seawall::BoxError>(n) });
//!
//! let start = tokio::time::Instant::now();
//! let mut failures = 0;
//! for n in 0..100 {
//!     if svc.ready().await.unwrap().call(n).await.is_err() {
//!         failures += 1;
//!     }
//! }
//! // Every call waited exactly 30 ms of (paused) tokio time.
//! assert_eq!(start.elapsed(), Duration::from_millis(3000));
//! // About a quarter failed; seed 7 fixes exactly which ones.
//! assert_eq!(failures, 27);
//! # }
//! ```

mod error;
mod fault;
mod future;
mod layer;
mod service;

pub use self::error::InjectedFault;
pub use self::fault::{Fault, Latency};
pub use self::future::ResponseFuture;
pub use self::layer::{ChaosLayer, ChaosLayerBuilder};
pub use self::service::Chaos;
