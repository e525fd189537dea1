//! One layer instance per key: a breaker, a bulkhead or a retry budget per
//! host, tenant or route, with bounded memory.
//!
//! [`KeyedLayer`] holds a layer per key, made by your factory the first
//! time the key is seen; each request goes through its key's layer. Any
//! seawall layer keeps its state in the layer, so `KeyedLayer` around a
//! [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer)
//! is a breaker per key, around a
//! [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) a bulkhead per key,
//! around a [`RetryLayer`](crate::retry::RetryLayer) a retry budget per key.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! use seawall::circuit_breaker::CircuitBreakerLayer;
//! use seawall::keyed::KeyedLayer;
//! use seawall::observe::State;
//! use seawall::rate_limit::Key;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! // Requests are (tenant, payload); tenant 7's calls all fail.
//! let backend = service_fn(|(tenant, x): (u64, u32)| async move {
//!     if tenant == 7 { Err::<u32, seawall::BoxError>("broken".into()) } else { Ok(x) }
//! });
//! let per_tenant = KeyedLayer::builder(
//!     |req: &(u64, u32)| Some(Key::from_u64(req.0)),
//!     |key: &Key| {
//!         CircuitBreakerLayer::builder()
//!             .name(format!("tenants.breaker.{key}")) // events and metrics per tenant
//!             .minimum_calls(5)
//!             .window(seawall::circuit_breaker::SlidingWindow::count(10))
//!             .build()
//!             .expect("valid settings")
//!     },
//! )
//! .build()?;
//! let svc = per_tenant.layer(backend);
//! for i in 0..10 {
//!     let _ = svc.clone().oneshot((7, i)).await;
//! }
//! // Tenant 7's breaker is open; tenant 8 is served.
//! let seven = per_tenant.get(&Key::from_u64(7)).unwrap();
//! assert_eq!(seven.handle().state(), State::Open);
//! assert_eq!(svc.clone().oneshot((8, 1)).await?, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Bounded
//!
//! At most [`max_keys`](KeyedLayerBuilder::max_keys) keys (default
//! [`DEFAULT_MAX_KEYS`], 10 000). A key with no call in flight and none for
//! [`idle_after`](KeyedLayerBuilder::idle_after) (default 60 s) is evicted
//! when room is needed (a sweep of the table, at most once a second; its
//! state starts fresh if it comes back). When the table is full of keys in
//! use, requests of new keys share one overflow instance (reported once
//! until a sweep makes room, as an
//! [`InputIgnored`](crate::observe::EventKind::InputIgnored) `"key"` /
//! `"too_many_keys"`): memory stays bounded whatever keys a client sprays.
//! A request whose key cannot be read goes through the overflow instance
//! too.
//!
//! "In flight" is until the response's head: a layer that holds its permit
//! until the body ends (`until_body_end`) keeps it in the body, and a key
//! whose only calls are long bodies may be evicted while they stream (its
//! new instance does not count them). Eviction also starts a key's state
//! afresh, what a rate limit or breaker had learned included: a client that
//! can make new keys (new addresses of its own) can fill the table and wait
//! out `idle_after` to have its own key evicted. Keep `idle_after` above
//! the longest period that matters (a quota's, a body's) and key by what a
//! client cannot choose. A known key costs a map read and no allocation. A breaker, bulkhead
//! or adaptive limit instance also keeps a handle per thread that has
//! called it (about 300 bytes each; see `ARCHITECTURE.md`).
//!
//! Events carry the names your factory gives each instance: name them after
//! the key (`format!("db.breaker.{key}")`, `Key` is `Display`) for per-key
//! metrics and messages, or give them all one name. Per-key names are
//! bounded by `max_keys` at any one time, not over time: a metrics exporter
//! keeps a series for every name it has seen, so name instances after keys
//! only when the keys are a set you know (your tenants), never after keys a
//! client picks (addresses, headers). With a metrics hook, an instance
//! publishes its counters at zero as it is built (a breaker's calls by
//! outcome, refusals, state changes, and its success and failure latency
//! histograms: about 50 series with a dozen buckets), so a per-key name
//! costs that per key from the key's first request. A bulkhead built with a `max_queue`
//! keeps its first 64 queue places allocated (32 bytes each), per key.
//!
//! # On a server: a share per tenant
//!
//! A bulkhead per tenant keeps one tenant from taking every handler: the
//! server presets have it built in,
//! [`ServerStackBuilder::tenant_bulkhead`](crate::stack::ServerStackBuilder::tenant_bulkhead)
//! (this table of bulkheads, below the preset's deadline and above its
//! adaptive limit, its refusals answered as the preset's). The guide's
//! (`docs/guide.md`) "One tenant must not starve the rest" shows the code, run by
//! `tests/tenants`. Another layer per tenant (a breaker) goes around the
//! preset, with a
//! [`RejectionResponseLayer`](crate::http::RejectionResponseLayer) around
//! it so that its refusals are answered (on a tonic server,
//! `GrpcRejectionLayer` from the `grpc` module, outermost); its waits then
//! come before the preset reads the caller's deadline. Key by a header
//! your own edge sets or checks
//! ([`HeaderKey`](crate::rate_limit::HeaderKey)), or by address
//! ([`ClientIp`](crate::rate_limit::ClientIp)).
//!
//! # Under a client stack
//!
//! Put the keyed layer around your client, below the stack
//! (`stack.layer(per_host.layer(client))`): the stack's retry then sees a key's open breaker as a local
//! refusal (not retried, not counted by the stack's own breaker), while a
//! key's failures before its breaker opens count in the stack's breaker too
//! (one tenant failing alone rarely reaches the shared breaker's rate; many
//! failing together open it, as they should).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::rate_limit::bounded::BoundedMap;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, ConfigError, Name};
use crate::observe::{EventKind, LayerKind, Observer};
use crate::oneshot::Oneshot;
use crate::rate_limit::{Key, KeyExtractor};

/// The default cap on keys: 10 000 (the keyed rate limiter's is 100 000;
/// a breaker's window is larger than a token bucket).
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// How long a key must be idle to be evicted: 60 s.
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(60);

/// How fine a key's last use is kept: 1 s (eviction waits for 60 s).
const LAST_USED_GRAIN: u64 = 1_000_000_000;

/// The least time between two eviction sweeps: 1 s.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Entry<L> {
    pub(crate) layer: L,
    /// Nanoseconds since the table's origin of the last call.
    last_used: AtomicU64,
}

pub(crate) struct Table<X, F, L> {
    name: Name,
    observer: Observer,
    pub(crate) extractor: X,
    factory: F,
    /// At most `max_keys`, swept at most once a second (so a spray of new
    /// keys at the cap costs a map read each, not a walk of the table).
    map: BoundedMap<Entry<L>>,
    overflow: Arc<Entry<L>>,
    idle_after: Duration,
    origin: Instant,
    overflowed: AtomicU64,
}

impl<X, F, L> Table<X, F, L>
where
    F: Fn(&Key) -> L,
{
    fn nanos(&self, now: Instant) -> u64 {
        crate::clock::nanos_between(self.origin, now)
    }

    /// The entry of `key`: a map read for a known key; a new instance for a
    /// new one (after evicting idle keys when the table is full), or the
    /// overflow instance when no room is left.
    pub(crate) fn entry(&self, key: Option<Key>) -> Arc<Entry<L>> {
        let now = self.nanos(crate::clock::edge_now());
        let Some(key) = key else {
            return self.overflow.clone();
        };
        if let Some(e) = self.try_entry(&key, now) {
            return e;
        }
        // Full: evict the keys with no call in flight and none for
        // `idle_after` (at most once a second), then try again.
        let idle = crate::clock::nanos(self.idle_after);
        let swept = self.map.sweep(now, |e| {
            Arc::strong_count(e) > 1
                || now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle
        });
        if swept.is_some_and(|gone| gone > 0) {
            self.overflowed.store(0, Ordering::Relaxed);
        }
        if let Some(e) = self.try_entry(&key, now) {
            return e;
        }
        if self.overflowed.swap(1, Ordering::Relaxed) == 0 {
            self.observer.emit(
                LayerKind::Keyed,
                self.name.as_str(),
                EventKind::InputIgnored {
                    input: "key",
                    reason: "too_many_keys",
                },
            );
        }
        self.overflow.clone()
    }

    /// The entry of `key` if it is held or a place is left for it.
    fn try_entry(&self, key: &Key, now: u64) -> Option<Arc<Entry<L>>> {
        self.map.with(
            key,
            || Entry {
                layer: (self.factory)(key),
                last_used: AtomicU64::new(now),
            },
            |e, new| {
                // Written at most once a second per key: a busy key's calls
                // on several threads do not all write one shared word.
                if !new
                    && now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= LAST_USED_GRAIN
                {
                    e.last_used.store(now, Ordering::Relaxed);
                }
                e.clone()
            },
        )
    }
}

/// A layer per key; see the [module docs](self).
pub struct KeyedLayer<X, F, L> {
    pub(crate) table: Arc<Table<X, F, L>>,
}

impl<X, F, L> Clone for KeyedLayer<X, F, L> {
    fn clone(&self) -> Self {
        KeyedLayer {
            table: self.table.clone(),
        }
    }
}

impl<X, F, L> fmt::Debug for KeyedLayer<X, F, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLayer")
            .field("name", &self.table.name)
            .field("keys", &self.table.map.len())
            .field("max_keys", &self.table.map.max())
            .finish_non_exhaustive()
    }
}

impl<X, F, L> KeyedLayer<X, F, L>
where
    F: Fn(&Key) -> L + Send + Sync + 'static,
{
    /// A builder: `extractor` reads each request's key (a closure
    /// `Fn(&Req) -> Option<Key>` or any rate-limit key extractor:
    /// `ClientIp`, `HeaderKey`, …); `factory` makes the layer of a
    /// new key (and once, of the overflow: with the key
    /// [`Key::GLOBAL`]).
    pub fn builder(extractor: X, factory: F) -> KeyedLayerBuilder<X, F> {
        KeyedLayerBuilder {
            name: Name::from("keyed"),
            observer: Observer::none(),
            extractor,
            factory,
            max_keys: DEFAULT_MAX_KEYS,
            idle_after: DEFAULT_IDLE_AFTER,
        }
    }
}

impl<X, F, L: Clone> KeyedLayer<X, F, L> {
    /// The layer of `key`, if the key is in the table: its handle reads or
    /// forces that key's state (`.handle().force_open()` for a breaker).
    pub fn get(&self, key: &Key) -> Option<L> {
        self.table.map.get(key).map(|e| e.layer.clone())
    }

    /// The layer requests go through when the table is full or their key
    /// cannot be read.
    pub fn overflow(&self) -> L {
        self.table.overflow.layer.clone()
    }
}

impl<X, F, L> KeyedLayer<X, F, L> {
    /// Keys in the table now.
    pub fn len(&self) -> usize {
        self.table.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.map.len() == 0
    }

    /// Keys evicted so far.
    pub fn evicted(&self) -> u64 {
        self.table.map.evicted()
    }
}

impl<S, X, F, L> Layer<S> for KeyedLayer<X, F, L> {
    type Service = Keyed<S, X, F, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Keyed {
            inner,
            table: self.table.clone(),
        }
    }
}

/// Builds a [`KeyedLayer`]; see [`KeyedLayer::builder`].
pub struct KeyedLayerBuilder<X, F> {
    name: Name,
    observer: Observer,
    extractor: X,
    factory: F,
    max_keys: usize,
    idle_after: Duration,
}

impl<X, F> fmt::Debug for KeyedLayerBuilder<X, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLayerBuilder")
            .field("name", &self.name)
            .field("max_keys", &self.max_keys)
            .field("idle_after", &self.idle_after)
            .finish_non_exhaustive()
    }
}

impl<X, F> KeyedLayerBuilder<X, F> {
    crate::observe::name_and_observer!(
        "The table's name in its own events (default `\"keyed\"`).",
        "The observer of the table's own events (a full table); each key's\nlayer reports to the observer its factory gives it."
    );

    /// The most keys held (default 10 000).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// How long a key must go without calls to be evicted (default 60 s;
    /// above zero: with none, every key not in a call would be evicted
    /// by the next sweep of a full table, its layer's state, a breaker's
    /// window or a bulkhead's count, lost between its calls).
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle_after = idle;
        self
    }

    /// Builds the layer (and the overflow instance).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"keyed"`) when `max_keys` or
    /// `idle_after` is zero.
    pub fn build<L>(self) -> Result<KeyedLayer<X, F, L>, ConfigError>
    where
        F: Fn(&Key) -> L,
    {
        if self.max_keys == 0 {
            return Err(ConfigError::new("keyed", "max_keys must be at least 1"));
        }
        if self.idle_after.is_zero() {
            return Err(ConfigError::new(
                "keyed",
                "idle_after must be above zero, got 0ns",
            ));
        }
        let overflow = Arc::new(Entry {
            layer: (self.factory)(&Key::GLOBAL),
            last_used: AtomicU64::new(0),
        });
        Ok(KeyedLayer {
            table: Arc::new(Table {
                name: self.name,
                observer: self.observer,
                extractor: self.extractor,
                factory: self.factory,
                map: BoundedMap::new(self.max_keys, SWEEP_EVERY),
                overflow,
                idle_after: self.idle_after,
                origin: crate::clock::edge_now(),
                overflowed: AtomicU64::new(0),
            }),
        })
    }
}

/// The service of a [`KeyedLayer`]: each request goes through its key's
/// layer around a clone of the inner service.
///
/// `poll_ready` forwards the inner service's readiness; the key's own
/// readiness (a breaker in backpressure mode, a bulkhead's queue) is waited
/// for in the response future.
pub struct Keyed<S, X, F, L> {
    inner: S,
    table: Arc<Table<X, F, L>>,
}

impl<S: Clone, X, F, L> Clone for Keyed<S, X, F, L> {
    fn clone(&self) -> Self {
        Keyed {
            inner: self.inner.clone(),
            table: self.table.clone(),
        }
    }
}

impl<S: fmt::Debug, X, F, L> fmt::Debug for Keyed<S, X, F, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("inner", &self.inner)
            .field("name", &self.table.name)
            .finish()
    }
}

impl<S, X, F, L, Req> Service<Req> for Keyed<S, X, F, L>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req>,
    F: Fn(&Key) -> L,
    L: Layer<S>,
    L::Service: Service<Req, Response = S::Response>,
    <L::Service as Service<Req>>::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<L::Service, Req, L>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let entry = self.table.entry(self.table.extractor.extract(&req).ok());
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        let service = entry.layer.layer(inner);
        ResponseFuture {
            inner: Oneshot::new(service, req),
            _entry: entry,
        }
    }
}

pin_project! {
    /// The response future of [`Keyed`]: the key's service made ready, then
    /// called. It holds the key's entry, so that a key with a call in
    /// flight is never evicted.
    pub struct ResponseFuture<S: Service<Req>, Req, L> {
        #[pin]
        inner: Oneshot<S, Req>,
        _entry: Arc<Entry<L>>,
    }
}

impl<S: Service<Req>, Req, L> fmt::Debug for ResponseFuture<S, Req, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, Req, L> Future for ResponseFuture<S, Req, L>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.project().inner.poll(cx)) {
            Some(out) => Poll::Ready(out.map_err(Into::into)),
            None => Poll::Ready(Err("keyed future polled after completion".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::observe::{Observer, Recorder};

    type Made = Arc<AtomicU32>;
    type ByU64 = fn(&u64) -> Option<Key>;

    /// A table whose "layer" is the number of instances made before it.
    fn table(
        max_keys: usize,
        made: &Made,
        observer: Observer,
    ) -> KeyedLayer<ByU64, impl Fn(&Key) -> u32 + use<>, u32> {
        let made = made.clone();
        let extractor: ByU64 = |r| Some(Key::from_u64(*r));
        KeyedLayer::builder(extractor, move |_: &Key| {
            made.fetch_add(1, Ordering::Relaxed)
        })
        .max_keys(max_keys)
        .idle_after(Duration::from_secs(60))
        .observer(observer)
        .build()
        .expect("valid settings")
    }

    fn key(n: u64) -> Option<Key> {
        Some(Key::from_u64(n))
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_key_reuses_its_instance() {
        let made = Made::default();
        let layer = table(10, &made, Observer::default());
        // The overflow instance is made at build: instance 0.
        assert_eq!(made.load(Ordering::Relaxed), 1);
        assert_eq!(layer.table.entry(key(1)).layer, 1);
        assert_eq!(layer.table.entry(key(2)).layer, 2);
        assert_eq!(layer.table.entry(key(1)).layer, 1);
        assert_eq!(made.load(Ordering::Relaxed), 3);
        assert_eq!(layer.len(), 2);
        assert_eq!(layer.get(&Key::from_u64(2)), Some(2));
        assert_eq!(layer.get(&Key::from_u64(3)), None);
        // No key: the overflow instance, nothing made.
        assert_eq!(layer.table.entry(None).layer, 0);
        assert_eq!(made.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn new_keys_at_the_cap_share_the_overflow_reported_once() {
        let made = Made::default();
        let rec = Recorder::new();
        let layer = table(2, &made, Observer::new(rec.clone()));
        layer.table.entry(key(1));
        layer.table.entry(key(2));
        for k in 3..10 {
            assert_eq!(layer.table.entry(key(k)).layer, 0, "key {k}");
        }
        assert_eq!(layer.len(), 2);
        assert_eq!(made.load(Ordering::Relaxed), 3);
        let events = rec.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            events[0].kind,
            EventKind::InputIgnored {
                input: "key",
                reason: "too_many_keys"
            }
        );
        // Known keys are still served by their own instances.
        assert_eq!(layer.table.entry(key(2)).layer, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_evicted_when_room_is_needed_busy_ones_are_not() {
        let made = Made::default();
        let rec = Recorder::new();
        let layer = table(2, &made, Observer::new(rec.clone()));
        let _in_flight = layer.table.entry(key(1)); // held: a call in flight
        layer.table.entry(key(2));
        tokio::time::advance(Duration::from_secs(59)).await;
        // Not idle long enough: overflow (and a sweep that evicts nothing).
        assert_eq!(layer.table.entry(key(3)).layer, 0);
        assert_eq!(layer.evicted(), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Key 2 has been idle 60 s; key 1 is in flight and stays.
        assert_eq!(layer.table.entry(key(3)).layer, 3);
        assert_eq!(layer.evicted(), 1);
        assert_eq!(layer.get(&Key::from_u64(1)), Some(1));
        assert_eq!(layer.get(&Key::from_u64(2)), None);
        // Key 2 comes back fresh once there is room (here: at the cap again,
        // and the sweep ran less than a second ago: overflow).
        assert_eq!(layer.table.entry(key(2)).layer, 0);
        // The table was full again after a sweep made room: reported again.
        assert_eq!(rec.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_keeps_its_key_alive() {
        let made = Made::default();
        let layer = table(1, &made, Observer::default());
        layer.table.entry(key(1));
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(30)).await;
            layer.table.entry(key(1)); // used every 30 s
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        // Last used 30 s ago: not idle, so key 2 overflows.
        assert_eq!(layer.table.entry(key(2)).layer, 0);
        assert_eq!(layer.evicted(), 0);
    }

    #[test]
    fn zero_keys_is_refused() {
        let extractor: fn(&u64) -> Option<Key> = |r| Some(Key::from_u64(*r));
        let err = KeyedLayer::builder(extractor, |_: &Key| 0u32)
            .max_keys(0)
            .build::<u32>()
            .unwrap_err();
        assert!(err.to_string().contains("max_keys"), "{err}");
    }
}
