//! [`RateLimitLayerBuilder`]: the settings of a rate limit, checked when it
//! is built.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::decorate::NoHeaders;
use super::key::{Global, Weighted};
use super::layer::{Fallback, Mode, Primary, RateLimitLayer, Shared};
use super::limiter::{Bucket, KeyedBuckets, KeyedSettings, QuotaCell};
use super::quota::Quota;
use crate::error::{ConfigError, Name};
use crate::observe::Observer;

impl RateLimitLayer {
    /// A builder for a global limit of `quota` (see [`RateLimitLayerBuilder`]
    /// for keys, modes and the other settings and their defaults).
    pub fn builder(quota: Quota) -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            extractor: Global,
            decorator: NoHeaders,
            settings: Settings {
                quota,
                keyed: false,
                name: None,
                observer: Observer::default(),
                mode: Mode::Reject,
                global: None,
                fallback: Fallback::SharedBucket,
                fallback_quota: None,
                keys: KeyedSettings {
                    max_keys: DEFAULT_MAX_KEYS,
                    sweep_every: DEFAULT_SWEEP_EVERY,
                    min_sweep_interval: DEFAULT_MIN_SWEEP_INTERVAL,
                },
                #[cfg(feature = "redis")]
                redis: None,
            },
        }
    }
}

/// Default [`RateLimitLayerBuilder::max_keys`]: 100 000 tracked keys.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Networks the overflow table of a keyed limit tracks at most (see
/// [`RateLimitLayerBuilder::max_keys`]).
pub const OVERFLOW_NETWORKS: usize = 4096;
/// Default [`RateLimitLayerBuilder::sweep_every`]: every 10 000 new keys.
pub const DEFAULT_SWEEP_EVERY: u64 = 10_000;
/// Default [`RateLimitLayerBuilder::min_sweep_interval`]: 1 s.
pub const DEFAULT_MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Builds a [`RateLimitLayer`]; start with [`RateLimitLayer::builder`].
///
/// Defaults: global (one bucket for all requests), [`Mode::Reject`],
/// [`Fallback::SharedBucket`] with the layer's quota, no response headers, at
/// most [`DEFAULT_MAX_KEYS`] keys, idle-key sweep every
/// [`DEFAULT_SWEEP_EVERY`] new keys and at most once per
/// [`DEFAULT_MIN_SWEEP_INTERVAL`], name `"rate_limit"`, no observer.
pub struct RateLimitLayerBuilder<X = Global, D = NoHeaders> {
    extractor: X,
    decorator: D,
    settings: Settings,
}

/// The builder's settings that do not depend on its type parameters, so that
/// a method that changes one moves them as one field.
struct Settings {
    quota: Quota,
    keyed: bool,
    name: Option<Name>,
    observer: Observer,
    mode: Mode,
    global: Option<Quota>,
    fallback: Fallback,
    fallback_quota: Option<Quota>,
    keys: KeyedSettings,
    #[cfg(feature = "redis")]
    redis: Option<super::redis::RedisBackend>,
}

impl<X, D> fmt::Debug for RateLimitLayerBuilder<X, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("quota", &self.settings.quota)
            .field("keyed", &self.settings.keyed)
            .field("mode", &self.settings.mode)
            .field("fallback", &self.settings.fallback)
            .finish_non_exhaustive()
    }
}

impl<D> RateLimitLayerBuilder<Global, D> {
    /// One bucket of the quota per key found by `extractor`
    /// ([`HeaderKey`](crate::rate_limit::HeaderKey),
    /// [`ClientIp`](crate::rate_limit::ClientIp), [`PeerAddr`](crate::rate_limit::PeerAddr),
    /// or a closure `Fn(&Req) -> Option<Key>`). Call it before
    /// [`cost`](Self::cost) (which wraps the key extractor): after it, there
    /// is no `keyed` to call.
    pub fn keyed<Y>(self, extractor: Y) -> RateLimitLayerBuilder<Y, D> {
        RateLimitLayerBuilder {
            extractor,
            decorator: self.decorator,
            settings: Settings {
                keyed: true,
                ..self.settings
            },
        }
    }
}

impl<X, D> RateLimitLayerBuilder<X, D> {
    /// Makes a request cost `cost(&req)` cells instead of one (an export
    /// 20, a search 5, …; 0 is free), with the local limiter and with Redis
    /// alike: the request waits, or its `retry_after` says, until that many
    /// cells are free, and the `RateLimit` header's `r` counts cells. A
    /// request that costs more than the quota's burst (or than the
    /// [`global_quota`](Self::global_quota)'s) can never pass: it is
    /// refused at once with [`RateLimited`](crate::error::RateLimited), no
    /// `retry_after` (event detail `"cost_above_burst"`; size the burst for
    /// your most expensive request). Call it after
    /// [`keyed`](RateLimitLayerBuilder::keyed).
    ///
    /// The cost must be known when the request reaches the limit: from the
    /// request itself (a closure on the path or method, as below), or a
    /// [`Cost`](crate::rate_limit::Cost) extension read by
    /// [`cost_from_extension`](crate::rate_limit::cost_from_extension) and
    /// set *outside* the limit (`ServiceBuilder::map_request` before it). A
    /// layer on an axum route runs inside the router, after the limit: a
    /// `Cost` set there is never seen.
    ///
    /// ```
    /// # #[cfg(feature = "axum")]
    /// # fn main() -> Result<(), seawall::BoxError> {
    /// use axum::body::Body;
    /// use seawall::rate_limit::{PeerAddr, Quota, RateLimitLayer};
    ///
    /// // Per client: 10 cells a second; a search costs 5.
    /// let limit = RateLimitLayer::builder(Quota::per_second(10))
    ///     .keyed(PeerAddr::new())
    ///     .cost(|req: &http::Request<Body>| if req.uri().path().starts_with("/search") { 5 } else { 1 })
    ///     .build()?;
    /// # let _ = limit;
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "axum"))]
    /// # fn main() {}
    /// ```
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), seawall::BoxError> {
    /// use seawall::rate_limit::{Quota, RateLimitLayer};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// // 10 cells a second, a burst of 10; a request costs its number.
    /// let layer = RateLimitLayer::builder(Quota::per_second(10))
    ///     .cost(|n: &u32| *n)
    ///     .build()?;
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, seawall::BoxError>(n) }));
    /// assert!(svc.clone().oneshot(8).await.is_ok());
    /// assert!(svc.clone().oneshot(4).await.is_err()); // 2 cells left
    /// assert!(svc.clone().oneshot(2).await.is_ok());
    /// assert!(svc.oneshot(11).await.is_err()); // above the burst: never
    /// # Ok(())
    /// # }
    /// ```
    pub fn cost<F>(self, cost: F) -> RateLimitLayerBuilder<Weighted<X, F>, D> {
        RateLimitLayerBuilder {
            extractor: Weighted {
                key: self.extractor,
                cost,
            },
            decorator: self.decorator,
            settings: self.settings,
        }
    }

    /// Writes rate-limit information into every admitted response with
    /// `decorator` — with feature `http`,
    /// [`IetfHeaders`](crate::rate_limit::headers::IetfHeaders) for the IETF
    /// `RateLimit-Policy` / `RateLimit` fields.
    pub fn response_headers<E>(self, decorator: E) -> RateLimitLayerBuilder<X, E> {
        RateLimitLayerBuilder {
            extractor: self.extractor,
            decorator,
            settings: self.settings,
        }
    }

    /// The instance name in events and rejections (default `"rate_limit"`).
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.settings.name = Some(name.into());
        self
    }

    /// Where events go (default: nowhere).
    pub fn observer(mut self, observer: impl Into<Observer>) -> Self {
        self.settings.observer = observer.into();
        self
    }

    /// Reject or wait (default [`Mode::Reject`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.settings.mode = mode;
        self
    }

    /// Shorthand for `mode(Mode::Wait { max })`.
    pub fn wait(self, max: Duration) -> Self {
        self.mode(Mode::Wait { max })
    }

    /// Also applies one global `quota` to every request, after its per-key
    /// limit admitted it (per tenant *and* in total). A request the global
    /// limit refuses gives its key's cells back (unless a later request of
    /// the key took cells after them; through [`redis`](Self::redis), a
    /// key's cells kept in Redis stay spent). A request costing more than
    /// either burst is refused at once, before either is asked. Response fields
    /// ([`response_headers`](Self::response_headers)) describe whichever of
    /// the two has fewer requests left. For more limits, stack layers. In
    /// [`Mode::Wait`], a request waiting for its own key's cells takes its
    /// global cell when it starts to wait (so that a tenant's waiting
    /// requests do not hold the global quota back for the others): calls
    /// let through at one instant can then pass the global burst by the
    /// requests that were waiting for their keys.
    pub fn global_quota(mut self, quota: Quota) -> Self {
        self.settings.global = Some(quota);
        self
    }

    /// The rule for requests without a usable key, and for new keys when the
    /// key cap is reached (default [`Fallback::SharedBucket`]).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.settings.fallback = fallback;
        self
    }

    /// The quota of the shared fallback bucket (default: the layer's quota).
    /// A request that the layer's quota lets through but that costs more
    /// than this quota's burst takes the whole burst (it passes when the
    /// bucket is full).
    pub fn fallback_quota(mut self, quota: Quota) -> Self {
        self.settings.fallback_quota = Some(quota);
        self
    }

    /// The most keys tracked at once (default [`DEFAULT_MAX_KEYS`]). A new key
    /// arriving at the cap triggers an eviction of idle keys (keys whose
    /// bucket is full again); if none can go, an IP key (from
    /// [`ClientIp`](super::ClientIp) or [`PeerAddr`](super::PeerAddr)) takes
    /// the bucket of its wider network (/24 for IPv4, /48 for IPv6) in an
    /// overflow table of at most [`OVERFLOW_NETWORKS`] networks, with the
    /// fallback quota: a spray of addresses from one network fills the map,
    /// then drains its own network's bucket, and newcomers from other
    /// networks are still admitted (the table holds about 0.5 MB at most).
    /// Other keys, and IP keys once the overflow table is full too (a spray
    /// across more than 4096 /24s or /48s), follow the [`Fallback`] rule
    /// (with [`Fallback::Reject`] there is no overflow table). The cap is
    /// exact: a slot is taken with an atomic compare-and-swap before a key is
    /// inserted. Memory is therefore bounded by about 80 bytes per map slot
    /// (an inline key of up to [`MAX_KEY_LEN`](crate::rate_limit::MAX_KEY_LEN)
    /// bytes and a pointer to its GCRA state) times the map's capacity, which
    /// stays within a small factor of the cap, plus 32 bytes per key held
    /// (10 000 keys → 16 384 slots, about 1.6 MB; 131 bytes a key measured at
    /// the default cap), whatever the clients send.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.settings.keys.max_keys = max_keys;
        self
    }

    /// Sweep idle keys every `keys` new keys (default
    /// [`DEFAULT_SWEEP_EVERY`]), and whenever a new key finds the table full.
    pub fn sweep_every(mut self, keys: u64) -> Self {
        self.settings.keys.sweep_every = keys;
        self
    }

    /// Sweep at most once per `interval` (default
    /// [`DEFAULT_MIN_SWEEP_INTERVAL`]; above zero), so that a flood of new
    /// keys at the cap cannot make every request scan the map.
    pub fn min_sweep_interval(mut self, interval: Duration) -> Self {
        self.settings.keys.min_sweep_interval = interval;
        self
    }

    /// Limits through Redis, shared by every instance using the same Redis
    /// and key prefix (feature `redis`; see
    /// [`RedisBackend`](crate::rate_limit::RedisBackend)).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: super::redis::RedisBackend) -> Self {
        self.settings.redis = Some(backend);
        self
    }

    /// Replaces the quota given to [`RateLimitLayer::builder`].
    pub fn quota(mut self, quota: Quota) -> Self {
        self.settings.quota = quota;
        self
    }

    #[cfg(feature = "serde")]
    pub(crate) fn set_quota(&mut self, quota: Quota) {
        self.settings.quota = quota;
    }

    /// Validates the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<X, D>, ConfigError> {
        self.settings.quota.validate("quota")?;
        if let Mode::Wait { max } = self.settings.mode {
            if max.is_zero() {
                return Err(ConfigError::new(
                    "rate_limit",
                    "Mode::Wait max must be greater than zero (use Mode::Reject), got 0s",
                ));
            }
        }
        #[allow(unused_mut)]
        let mut local_quota = self.settings.quota;

        #[cfg(feature = "redis")]
        let redis = match self.settings.redis {
            Some(b) => {
                let state = super::redis::RedisState::new(b, self.settings.quota)?;
                if let Some(n) = state.local_instances() {
                    local_quota = self.settings.quota.divided_by(n);
                }
                Some(Arc::new(state))
            }
            None => None,
        };
        let primary = if self.settings.keyed {
            Primary::Keyed(KeyedBuckets::new(local_quota, self.settings.keys)?.stand_in())
        } else {
            Primary::Global(Bucket::new(local_quota, "quota")?.stand_in())
        };
        let global = match self.settings.global {
            Some(q) => Some(Bucket::new(q, "global_quota")?),
            None => None,
        };
        let fallback_bucket = match self.settings.fallback {
            Fallback::SharedBucket => Some(
                Bucket::new(
                    self.settings.fallback_quota.unwrap_or(local_quota),
                    "fallback_quota",
                )?
                .stand_in(),
            ),
            Fallback::Reject => None,
        };
        let overflow = match (self.settings.keyed, self.settings.fallback) {
            (true, Fallback::SharedBucket) => Some(
                KeyedBuckets::new(
                    self.settings.fallback_quota.unwrap_or(local_quota),
                    KeyedSettings {
                        max_keys: OVERFLOW_NETWORKS,
                        ..self.settings.keys
                    },
                )?
                .stand_in(),
            ),
            _ => None,
        };
        let name = self
            .settings
            .name
            .unwrap_or_else(|| Name::from("rate_limit"));
        self.settings.observer.layer_built(
            crate::observe::LayerKind::RateLimit,
            name.as_str(),
            &[crate::observe::refusal(
                crate::error::RejectionKind::RateLimited,
                super::layer::DETAIL_LIMIT,
            )],
        );
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                jitter: crate::clock::Jitter::new(name.as_str()),
                name,
                observer: self.settings.observer,
                extractor: self.extractor,
                decorator: self.decorator,
                mode: self.settings.mode,
                quota: QuotaCell::new(self.settings.quota, "quota")?,
                fallback_follows: self.settings.fallback_quota.is_none(),
                reload: std::sync::Mutex::new(()),
                primary,
                global,
                fallback: self.settings.fallback,
                fallback_bucket,
                overflow,
                #[cfg(feature = "redis")]
                redis,
            }),
        })
    }
}
