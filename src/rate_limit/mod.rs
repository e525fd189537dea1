//! Rate limiting on GCRA (governor's algorithm): global or per key, safe client keys,
//! bounded memory, standard headers, and a Redis backend for fleets.
//!
//! [`RateLimitLayer`] admits requests at a [`Quota`] (a burst refilled at a
//! steady rate). A refused request fails with
//! [`RateLimited`](crate::error::RateLimited) whose `retry_after` is the
//! wait until it would conform (the same admissions, waits and remaining
//! counts as governor's limiters, checked cell for cell in tests),
//! stretched by a factor in `[1, 1.5)` so that callers refused together do
//! not all come back at one instant, or — in [`Mode::Wait`] — waits for
//! its cell, up to a maximum and never past the request's
//! [deadline](crate::deadline::current); a waiting request takes
//! its cells when it starts to wait, so waiting requests are served in the
//! order they came, and one that could not be served in time is refused at
//! once.
//!
//! - **Shared state.** The limiter lives in an `Arc` owned by the layer: every
//!   service built from one layer, and every clone, shares one quota.
//! - **Global or keyed.** The default is one global bucket (one atomic
//!   compare-and-swap, no allocation). With
//!   [`RateLimitLayerBuilder::keyed`] each key found by a [`KeyExtractor`] gets
//!   its own bucket: [`HeaderKey`] (API key, tenant id), [`PeerAddr`] (the
//!   connection's address), [`ClientIp`] (the client behind trusted proxies:
//!   the rightmost untrusted `X-Forwarded-For` / `Forwarded` address, so
//!   clients cannot forge their key), or any closure. [`RateLimitLayerBuilder::global_quota`]
//!   adds a total limit on top of the per-key one; stack layers for more.
//! - **No key.** A request without a usable key follows the [`Fallback`]
//!   rule: a shared bucket (default) or rejection.
//! - **Bounded memory.** At most [`max_keys`](RateLimitLayerBuilder::max_keys)
//!   keys are tracked. Idle keys (whose bucket is full again) are evicted by
//!   the layer itself (the map is retained and shrunk) —
//!   every N new keys, and when a new key arrives at the cap — so no background
//!   task is needed. When the cap is reached and no key is idle, new keys go
//!   to the [`Fallback`] rule: a flood of a million distinct keys cannot grow
//!   the map past the cap.
//! - **Paused time.** Every bucket reads tokio's clock, so every limit
//!   follows `tokio::time::pause()` / `advance()`.
//! - **Run-time changes.** [`RateLimitLayer::set_quota`] changes the quota
//!   of a running layer (an operator's reload): no bucket is dropped or
//!   refilled, each keeps what it owes within the new burst.
//! - **Headers** (feature `http`): [`IetfHeaders`](headers::IetfHeaders) writes the IETF
//!   `RateLimit-Policy: "default";q=100;w=60` and `RateLimit: "default";r=50;t=30`
//!   fields on admitted responses. A refusal's `Retry-After` (its
//!   stretched wait rounded *up* to whole seconds) is written by the HTTP
//!   mapping of the rejection, below.
//! - **On an HTTP server** (feature `axum` or `http`): add the limit to the
//!   server preset, `ServerStack::http(..).rate_limit(quota, |r| r.keyed(ClientIp::new()))`
//!   (see [`ServerStackBuilder::rate_limit`](crate::stack::ServerStackBuilder::rate_limit)),
//!   which answers a refusal with `429` and `Retry-After`; a lone
//!   `RateLimitLayer` on a router needs
//!   [`RejectionResponseLayer`](crate::http::RejectionResponseLayer) outside
//!   it for that (and for the router's `Infallible` error type). [`PeerAddr`]
//!   and [`ClientIp`] read the connection's address, which axum hands over
//!   only when served with
//!   `app.into_make_service_with_connect_info::<SocketAddr>()`: served
//!   plainly, every request lacks a key and all share the fallback bucket
//!   (an `InputIgnored` event says so). The guide's (`docs/guide.md`) "A
//!   rate limit per client" runs this over real HTTP.
//! - **Redis** (feature `redis`): the same layer backed by one GCRA Lua script
//!   per request on Redis server time, with a failure policy and a per-call
//!   timeout (see [`RedisBackend`]; connect to one server with
//!   [`RedisBackend::connect`]`(url).await?`, which starts without Redis
//!   and reconnects within a probe; to a cluster with
//!   [`RedisBackend::cluster`]). Keys live in Redis; keyless requests keep
//!   a bucket per instance ([`Fallback::SharedBucket`]).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use seawall::error::{rejection_of, RejectionKind};
//! use seawall::rate_limit::{Quota, RateLimitLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let layer = RateLimitLayer::builder(Quota::per_second(2)).name("api").build().unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) });
//!
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
//! assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
//! let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
//! let r = rejection_of(&err).unwrap();
//! assert_eq!(r.kind(), RejectionKind::RateLimited);
//! // The time to the next cell, 500 ms, stretched by up to half so that
//! // callers refused together do not come back at one instant.
//! let hint = r.retry_after().unwrap();
//! assert!(hint >= Duration::from_millis(500) && hint <= Duration::from_millis(750));
//!
//! tokio::time::advance(Duration::from_millis(500)).await;
//! assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), 4);
//! # }
//! ```

pub(crate) mod bounded;
mod builder;
#[cfg(test)]
mod clock;
mod decorate;
mod future;
mod key;
mod layer;
mod limiter;
mod quota;
mod service;

#[cfg(feature = "http")]
mod client_ip;
#[cfg(feature = "http")]
pub mod headers;
#[cfg(feature = "redis")]
mod redis;

pub use self::builder::{
    DEFAULT_MAX_KEYS, DEFAULT_MIN_SWEEP_INTERVAL, DEFAULT_SWEEP_EVERY, OVERFLOW_NETWORKS,
    RateLimitLayerBuilder,
};
pub use self::decorate::{Decorate, NoHeaders, RateLimitStatus};
pub use self::future::ResponseFuture;
#[cfg(feature = "http")]
pub use self::key::cost_from_extension;
pub use self::key::{
    Cidr, Cost, Global, Key, KeyExtractor, MAX_KEY_LEN, MissingKey, PeerAddr, Weighted,
};
pub use self::layer::{Fallback, Mode, RateLimitLayer};
pub use self::quota::Quota;
pub use self::service::RateLimit;

#[cfg(feature = "http")]
pub use self::client_ip::{ClientIp, ForwardedHeader, HeaderKey};
#[cfg(feature = "redis")]
pub use self::redis::{FailurePolicy, RedisBackend};
