//! The Redis backend: one GCRA Lua script per request, on Redis server time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, RedisResult, Script};
use tokio::time::Instant;

use super::decorate::RateLimitStatus;
use super::key::{Key, MissingKey};
use super::layer::{DETAIL_BACKEND, DETAIL_LIMIT, Shared};
use super::limiter::{Admit, Verdict};
use super::quota::Quota;
use crate::error::{ConfigError, Name};
use crate::observe::{EventKind, LayerKind, Observer, State};

/// The longest [`RedisBackend::timeout`] accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest [`RedisBackend::probe_interval`] accepted.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// The longest [`RedisBackend::probe_interval`] accepted.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(3600);

/// GCRA in one atomic step. KEYS[1]: the bucket; ARGV[1]: the period
/// (emission interval) in µs, rounded up; ARGV[2]: the burst; ARGV[3]: the request's
/// cost in cells (at most the burst). Time is Redis server time, so
/// instances with skewed clocks agree. The key expires when its bucket is
/// full again (at most one burst window), so Redis memory stays bounded. A
/// bucket owes at most one burst window: a stored time further ahead (Redis's
/// clock stepped back, a failover to a server whose clock is behind) is
/// taken as a bucket just emptied, as the local engine does.
/// Returns {1, remaining, reset_us} or {0, retry_after_us, 0}.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if tat > now + period * burst then
  tat = now + period * burst
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
end
local new_tat = tat + period * cost
local allow_at = new_tat - period * burst
if now < allow_at then
  return {0, allow_at - now, 0}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
local remaining = math.floor((now + period * burst - new_tat) / period)
return {1, remaining, new_tat - now}
";

/// What a Redis-backed limiter does while Redis is unreachable, fails or
/// answers later than the [timeout](RedisBackend::timeout).
///
/// The default is `Local { instances: 1 }`: each instance limits on its
/// own with the whole quota while Redis is away. No client within its
/// quota is refused (what it sends one instance is no more than what it
/// sends in all), and a client over it gets at most the quota from each
/// instance, with `429`s and `RateLimit` fields as usual. Chosen by an
/// outside trial: two replicas behind a balancer that spreads each
/// client's requests over both, Redis down for 15 s, a client sending 3×
/// its quota got 900 requests of the 320 allowed with [`FailOpen`]
/// (everything it sent, and no client could tell), 640 with the default
/// (its quota at each replica), 318 with `Local { instances: 2 }`. Set
/// `instances` to the fleet's size to keep the fleet's limit when
/// balancing spreads a client's requests evenly; keep 1 when clients stick
/// to one instance (a long-lived connection each), where a divided quota
/// would refuse a client within its own.
///
/// [`FailOpen`]: FailurePolicy::FailOpen
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit every request, with no `RateLimit` fields: no limit is kept
    /// while Redis is away.
    FailOpen,
    /// Reject every request with [`RateLimited`](crate::error::RateLimited)
    /// (no `retry_after`).
    FailClosed,
    /// Limit locally with the quota divided by `instances` (the number of
    /// instances sharing the Redis quota), so the fleet as a whole keeps about
    /// the same limit. A request costing more than the divided burst (but
    /// within the quota's) takes the whole divided burst: it passes when the
    /// local bucket is full.
    Local {
        /// How many instances share the quota (at least 1).
        instances: u32,
    },
}

impl Default for FailurePolicy {
    /// `Local { instances: 1 }` (see [`FailurePolicy`]).
    fn default() -> Self {
        FailurePolicy::Local { instances: 1 }
    }
}

/// Redis settings for [`RateLimitLayerBuilder::redis`](crate::rate_limit::RateLimitLayerBuilder::redis).
///
/// Every instance whose layer uses the same Redis, the same key
/// [`prefix`](RedisBackend::prefix) and the same quota enforces one shared
/// limit. Each request costs exactly one round trip (`EVALSHA` of a GCRA Lua
/// script; the first call, a probe, and the first call after a failure
/// send the script itself with `EVAL`, which caches it, so that a Redis
/// that forgot its scripts costs no second round trip),
/// bounded by [`timeout`](RedisBackend::timeout). On an error or a timeout the
/// layer reports [`EventKind::BackendError`] (`backend: "redis"`, cause
/// `"timeout"`, `"connection"`, `"protocol"` or `"error"`), switches
/// [`State::Healthy`] → [`State::Degraded`] (one `StateChanged` event), and
/// follows its [`FailurePolicy`]. While degraded it tries Redis again once
/// per [`probe_interval`](RedisBackend::probe_interval), and other requests
/// follow the policy without waiting on Redis. A probe is a live request:
/// it waits for Redis up to the timeout (one request a probe interval on
/// each instance, and on a cluster in each range of slots that failed).
/// A probe that fails connects anew in the background, and the next
/// request probes again on that connection once it is made: a restarted
/// Redis is used again just after the first probe that follows its
/// restart (`tests/rate_limit_redis`: 0.4 s after it, with the next probe
/// due then; 1.4 s when the new connection waited for the next probe
/// interval). The first success switches back to `Healthy`; the layer's
/// [`backend_state`](crate::rate_limit::RateLimitLayer::backend_state)
/// says which it is now (for a readiness check, say). A Redis that hung
/// (a paused process) runs the scripts it held when it resumes: the keys
/// of the requests that timed out meanwhile are charged their cells,
/// although those requests followed the policy. A round trip is also bounded by the request's deadline
/// ([`deadline::of`](crate::deadline::of)): when that comes first, the
/// request fails with [`DeadlineExceeded`](crate::error::DeadlineExceeded)
/// (event detail `"deadline_in_backend"`), and Redis is not judged by that
/// one request's budget but by its own timeout: the cut call goes on apart
/// (a task of its own) until Redis answers or the `timeout` since it was
/// made runs out, and is judged then, as any call; so is the call of a
/// request its caller drops while Redis has not answered (a timeout of the
/// caller's own, a client gone). So a hung Redis is
/// judged within one timeout of the first request it holds, whatever the
/// budgets of the requests (before, cut calls counted only while they
/// overlapped: serial requests with budgets under the timeout, or the
/// slots of a cluster each seeing a request now and then, left a hung
/// Redis unjudged, every request failing after its whole budget).
///
/// The Redis call is a boxed future inside the layer's future: the `redis`
/// crate's connection API returns boxed futures that borrow the connection,
/// so this one path allocates; the local limiter never does.
///
/// In [`Mode::Wait`](crate::rate_limit::Mode::Wait), a request Redis refuses
/// waits for the time Redis told it and asks again: the script takes no
/// cells for a later instant (the local limiter does), so requests waiting
/// on one key may be told one time, and all but one wait again.
///
/// The script keeps time in microseconds (Redis's clock): the quota's
/// period is sent rounded up to a whole microsecond, never looser than the
/// quota (`Quota::per_second(400_000)`, 2.5 µs, runs at 3 µs: 333 333 a
/// second). A period under 1 µs is refused when the limiter is built.
///
/// Defaults: prefix `"seawall"`, timeout 50 ms, probe interval 1 s,
/// [`FailurePolicy::Local`] with the whole quota on each instance (see
/// [`FailurePolicy`]).
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    probe_interval: Duration,
    policy: FailurePolicy,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("probe_interval", &self.probe_interval)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A single node or a cluster.
#[derive(Clone)]
enum Conn {
    Single(Arc<Single>),
    Cluster(Arc<Cluster>),
}

/// One Redis server's connection (swapped after a reconnection, read
/// without a lock), and how to make a new one when the limiter made it.
struct Single {
    conn: arc_swap::ArcSwap<ConnectionManager>,
    remake: Option<(redis::Client, redis::aio::ConnectionManagerConfig)>,
    reconnecting: AtomicBool,
    /// A connection made in the background was stored since a probe last
    /// looked (see [`Conn::take_fresh`]).
    fresh: AtomicBool,
}

impl Single {
    /// Connects anew in the background (see [`reconnect_apart`]), so that
    /// the next probe uses a fresh connection: a connection that went
    /// silent (a failover that moved the address, a host gone without a
    /// reset) answers no error, and the `redis` crate's manager replaces a
    /// connection only on errors. A connection made elsewhere
    /// (`RedisBackend::new`) is kept.
    fn reconnect(single: &Arc<Single>, every: Duration) {
        let Some((client, config)) = &single.remake else {
            return;
        };
        reconnect_apart(
            single,
            |s| &s.reconnecting,
            every,
            || ConnectionManager::new_with_config(client.clone(), config.clone()),
            |s, conn| {
                s.conn.store(Arc::new(conn));
                s.fresh.store(true, Ordering::Release);
            },
        );
    }
}

/// How long a background reconnection may take.
const RECONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Connects anew in the background with `connect`, one attempt at a time
/// and at most one started per `every` (the probes of many degraded slots
/// ask together; `busy` says one is out), and hands the connection made to
/// `store`; the probe that asked does not wait for it.
fn reconnect_apart<O, F, T, E>(
    owner: &Arc<O>,
    busy: fn(&O) -> &AtomicBool,
    every: Duration,
    connect: impl FnOnce() -> F,
    store: fn(&O, T),
) where
    O: Send + Sync + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: 'static,
    E: 'static,
{
    if busy(owner).swap(true, Ordering::AcqRel) {
        return;
    }
    let fresh = connect();
    let owner = Arc::clone(owner);
    tokio::spawn(async move {
        // Free again a tenth of an interval early: the next probe, due one
        // interval after this one, finds it free (released at the same
        // instant, the two timers raced, and a probe that lost found it
        // busy and made no new connection: a restarted Redis was then used
        // again one interval later, in about one test run in six).
        let next = Instant::now() + every - every / 10;
        if let Ok(Ok(conn)) = tokio::time::timeout(RECONNECT_WITHIN, fresh).await {
            store(&owner, conn);
        }
        tokio::time::sleep_until(next).await;
        busy(&owner).store(false, Ordering::Release);
    });
}

/// A cluster client and its current connection (swapped after a
/// reconnection, read without a lock).
struct Cluster {
    client: ClusterClient,
    conn: ArcSwapOption<ClusterConnection>,
    reconnecting: AtomicBool,
    /// See [`Single::fresh`].
    fresh: AtomicBool,
}

impl Cluster {
    /// Connects anew in the background (see [`reconnect_apart`]), so that
    /// the next probe uses a connection that read the cluster's topology
    /// after a failover.
    fn reconnect(cluster: &Arc<Cluster>, every: Duration) {
        reconnect_apart(
            cluster,
            |c| &c.reconnecting,
            every,
            || {
                let client = cluster.client.clone();
                async move { client.get_async_connection().await }
            },
            |c, conn| {
                c.conn.store(Some(Arc::new(conn)));
                c.fresh.store(true, Ordering::Release);
            },
        );
    }
}

impl Conn {
    /// Whether a connection made in the background was stored since the
    /// last call (and forgets it).
    fn take_fresh(&self) -> bool {
        let fresh = match self {
            Conn::Single(s) => &s.fresh,
            Conn::Cluster(c) => &c.fresh,
        };
        fresh.load(Ordering::Acquire) && fresh.swap(false, Ordering::AcqRel)
    }
}

impl RedisBackend {
    /// Limits through the Redis server at `url`
    /// (`"redis://10.0.0.7:6379/"`), on a connection made for a rate
    /// limiter: the way to connect to one Redis server.
    ///
    /// - No connection is made now: the service starts while Redis is
    ///   down. The first request that finds it down waits out the
    ///   limiter's [`timeout`](Self::timeout) (about 50 to 100 ms) and the
    ///   limiter is degraded (its [`FailurePolicy`] applies) until Redis
    ///   answers a probe.
    /// - `TCP_NODELAY`: without it a request and its answer can wait on
    ///   each other's acknowledgement; in an outside trial, a Redis 30 ms
    ///   away (well under the 50 ms timeout) timed out so often that a
    ///   tenant got 5.7 times its quota.
    /// - Reconnects are retried 10 to 100 ms apart (the `redis` crate's
    ///   defaults back off up to 3.2 s: a restarted Redis was used again
    ///   4.5 s after it came back, every tenant unlimited meanwhile), and a
    ///   connection attempt gives up after 100 ms.
    /// - While the limiter is degraded, a probe also connects anew in the
    ///   background (at most once per probe interval), and the next probe
    ///   uses that connection: a connection that went silent without an
    ///   error (a host gone without a reset, an address moved in a
    ///   failover), which the `redis` crate's manager never replaces, is
    ///   replaced within a few probe intervals (`tests/rate_limit_redis`:
    ///   healthy again 0.34 s after a proxy silenced the connection, with
    ///   probes every 100 ms; degraded for good before).
    ///
    /// Fails on a URL that is not a Redis URL. Call it on a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), seawall::BoxError> {
    /// use seawall::rate_limit::{Quota, RateLimitLayer, RedisBackend};
    ///
    /// let layer = RateLimitLayer::builder(Quota::per_second(100))
    ///     .redis(RedisBackend::connect("redis://10.0.0.7:6379/").await?)
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        use redis::IntoConnectionInfo;
        let invalid = |e: RedisError| {
            ConfigError::new("rate_limit", format!("invalid Redis URL {url:?}: {e}"))
        };
        let info = url
            .into_connection_info()
            .map_err(invalid)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(invalid)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(Duration::from_millis(100)));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(invalid)?;
        Ok(Self::with(Conn::Single(Arc::new(Single {
            conn: arc_swap::ArcSwap::from_pointee(conn),
            remake: Some((client, config)),
            reconnecting: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
        }))))
    }

    /// Limits through `conn` (a `redis::aio::ConnectionManager`, which
    /// reconnects by itself on errors). [`connect`](Self::connect) makes one
    /// suited to a limiter; a connection of your own should set
    /// `TCP_NODELAY` and reconnect waits well under a second (see there),
    /// and is kept as it is: one that goes silent without an error is not
    /// replaced (`connect`'s is).
    pub fn new(conn: ConnectionManager) -> Self {
        Self::with(Conn::Single(Arc::new(Single {
            conn: arc_swap::ArcSwap::from_pointee(conn),
            remake: None,
            reconnecting: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
        })))
    }

    /// Limits through a Redis Cluster (or a Valkey cluster): connects with
    /// `client` now, and again in the background whenever the limiter is
    /// degraded and probes (a new connection reads the cluster's current
    /// topology, so a replica promoted after its primary failed is found by
    /// the next probe). A cluster that cannot be reached now does not stop
    /// the service from starting: it connects in the background, and until
    /// then the first request of each range of slots (see below) fails at
    /// once, without waiting, and degrades its range (its
    /// [`FailurePolicy`] applies; one `BackendError` event per range, 256 at
    /// most).
    ///
    /// Each limit key is one Redis key, so each check is one script on the
    /// primary of that key's slot; `MOVED` / `ASK` redirections are followed
    /// by the client library. Health is kept per range of 64 slots: while a
    /// range has no primary (a failover takes the cluster's node timeout and
    /// an election, a few seconds), the keys of that range follow the
    /// policy and one of their requests per probe interval probes (a live
    /// request that waits up to the [`timeout`](Self::timeout)); keys on the
    /// other primaries stay on Redis (but those of a range shared with the
    /// missing primary: a cluster gives each primary ranges of thousands of
    /// slots, so a few of 256 at most). A probe connects anew in the
    /// background, one connection at most per probe interval. The limiter
    /// reports `Degraded` while any range is. The keys of a failed range
    /// follow the policy for that long (by default each instance limits
    /// them with the whole quota; with [`FailurePolicy::FailOpen`] they
    /// admit everything), and their Redis buckets start full again after.
    ///
    /// Give the client a connection timeout and retry waits well under the
    /// limiter's timeout (the limiter never waits longer than that anyway):
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), seawall::BoxError> {
    /// use std::time::Duration;
    /// use seawall::rate_limit::{FailurePolicy, Quota, RateLimitLayer, RedisBackend};
    ///
    /// let client = redis::cluster::ClusterClient::builder(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .connection_timeout(Duration::from_millis(10))
    ///     .response_timeout(Duration::from_millis(50))
    ///     .min_retry_wait(1)
    ///     .max_retry_wait(10)
    ///     .build()?;
    /// let layer = RateLimitLayer::builder(Quota::per_second(1000))
    ///     .redis(RedisBackend::cluster(client).await
    ///         .on_failure(FailurePolicy::Local { instances: 4 }))
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cluster(client: ClusterClient) -> Self {
        let conn = client.get_async_connection().await.ok().map(Arc::new);
        Self::with(Conn::Cluster(Arc::new(Cluster {
            client,
            conn: ArcSwapOption::new(conn),
            reconnecting: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
        })))
    }

    fn with(conn: Conn) -> Self {
        RedisBackend {
            conn,
            prefix: "seawall".to_owned(),
            timeout: Duration::from_millis(50),
            probe_interval: Duration::from_secs(1),
            policy: FailurePolicy::default(),
        }
    }

    /// The Redis key prefix; keys are `{prefix}:{name}:{kind}:{key}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest wait for Redis per request (default 50 ms; at most 60 s,
    /// checked when the limiter is built).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often a degraded limiter tries Redis again (default 1 s; 1 ms to
    /// 1 h, checked when the limiter is built).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// What to do while Redis fails (default `FailurePolicy::Local {
    /// instances: 1 }`: see [`FailurePolicy`]).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// The pending Redis call of one request, and the health slot of its key.
/// Boxed: the redis crate's connection futures borrow the connection and
/// are boxed themselves.
pub(crate) struct RedisCall {
    pub(crate) fut: Pin<Box<dyn Future<Output = RedisResult<Vec<i64>>> + Send>>,
    pub(crate) slot: usize,
    /// When the call was made (ns since the state's start).
    pub(crate) started_ns: u64,
    /// A probe of a degraded range (it reconnects, and claimed the range's
    /// probe time).
    pub(crate) probe: bool,
}

/// The slots of a Redis Cluster.
const CLUSTER_SLOTS: usize = 16_384;

/// Health is kept per range of 64 cluster slots (one for a single node):
/// while one primary is missing, the keys of its ranges follow the policy
/// (and of a range it shares with another primary: a cluster gives each
/// primary ranges of thousands of slots). Per slot, a primary's 5 461
/// slots each probed once per probe interval: under keys spread over the
/// slots nearly every request to them was a probe, waiting out the timeout.
const HEALTH_RANGES: usize = 256;

pub(crate) struct RedisState {
    conn: Conn,
    script: Arc<Script>,
    /// Whether Redis answered the script since the last failed call: until
    /// it has, calls send the script itself (`EVAL`, one round trip that
    /// caches it) rather than its hash (`EVALSHA`, then `EVAL` on
    /// `NOSCRIPT`: two round trips, which a Redis a few tens of ms away
    /// could not make within the timeout).
    script_known: Arc<AtomicBool>,
    prefix: Vec<u8>,
    timeout: Duration,
    probe_interval: Duration,
    policy: FailurePolicy,
    quota: Quota,
    period_us: u64,
    /// Per health slot: 0 while healthy, else when the next probe is due
    /// (ns since `start`, at least 1).
    slots: Box<[AtomicU64]>,
    /// Slots not healthy: the limiter is `Degraded` while any is.
    degraded_slots: AtomicUsize,
    /// Calls a deadline cut that are still waited for apart (see `cut`).
    watched: AtomicUsize,
    start: Instant,
}

/// The most calls a deadline cut that are waited for apart at once: one of
/// them judges a hung Redis as well as all of them would.
const MAX_WATCHED: usize = 64;

impl RedisState {
    pub(crate) fn new(b: RedisBackend, quota: Quota) -> Result<RedisState, ConfigError> {
        if b.timeout.is_zero() || b.timeout > MAX_TIMEOUT {
            return Err(ConfigError::new(
                "rate_limit",
                format!(
                    "redis timeout must be in (0s, {MAX_TIMEOUT:?}], got {:?}",
                    b.timeout
                ),
            ));
        }
        if b.probe_interval < MIN_PROBE_INTERVAL || b.probe_interval > MAX_PROBE_INTERVAL {
            return Err(ConfigError::new(
                "rate_limit",
                format!(
                    "redis probe_interval must be in {MIN_PROBE_INTERVAL:?}..={MAX_PROBE_INTERVAL:?} (each probe waits for Redis), got {:?}",
                    b.probe_interval
                ),
            ));
        }
        if let FailurePolicy::Local { instances: 0 } = b.policy {
            return Err(ConfigError::new(
                "rate_limit",
                "FailurePolicy::Local instances must be at least 1, got 0",
            ));
        }
        let period_us = period_micros(quota.period());
        if quota.period() < Duration::from_micros(1) {
            return Err(ConfigError::new(
                "rate_limit",
                format!(
                    "with redis the quota period must be at least 1µs, got {:?}",
                    quota.period()
                ),
            ));
        }
        let slots = match b.conn {
            Conn::Single(_) => 1,
            Conn::Cluster(_) => HEALTH_RANGES,
        };
        Ok(RedisState {
            script: Arc::new(Script::new(GCRA_LUA)),
            script_known: Arc::new(AtomicBool::new(false)),
            prefix: b.prefix.into_bytes(),
            timeout: b.timeout,
            probe_interval: b.probe_interval,
            policy: b.policy,
            quota,
            period_us,
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            degraded_slots: AtomicUsize::new(0),
            watched: AtomicUsize::new(0),
            start: Instant::now(),
            conn: b.conn,
        })
    }

    pub(crate) fn local_instances(&self) -> Option<u32> {
        match self.policy {
            FailurePolicy::Local { instances } => Some(instances),
            _ => None,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn now_ns(&self) -> u64 {
        crate::clock::nanos_between(self.start, crate::clock::edge_now())
    }

    /// The Redis key of a limit key: `{prefix}:{name}:{kind}:{key}`.
    pub(crate) fn key_for(&self, name: &str, key: &Key) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + name.len() + key.as_bytes().len() + 4);
        k.extend_from_slice(&self.prefix);
        k.push(b':');
        k.extend_from_slice(name.as_bytes());
        k.push(b':');
        k.push(key.tag_char());
        k.push(b':');
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The health slot of a Redis key: its range of cluster slots, or 0 on
    /// a single node.
    pub(crate) fn slot_of(&self, redis_key: &[u8]) -> usize {
        if self.slots.len() == 1 {
            0
        } else {
            usize::from(cluster_slot(redis_key)) / (CLUSTER_SLOTS / HEALTH_RANGES)
        }
    }

    /// Whether a request of `slot` asks Redis (`Some(probe)`): always while
    /// the slot is healthy; while not, one request per probe interval.
    pub(crate) fn should_call(&self, slot: usize) -> Option<bool> {
        let cell = &self.slots[slot];
        let mut due = cell.load(Ordering::Acquire);
        if due == 0 {
            return Some(false);
        }
        if self.conn.take_fresh() {
            // A probe's new connection is ready: every degraded range
            // probes now, on it, not a probe interval later. (A restarted
            // Redis failed the first probe after it came back, on the
            // connection that had lost it, and was used again only at the
            // next: 1.2 to 1.4 s after the restart in an outside trial.)
            for cell in self.slots.iter() {
                let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    (d != 0).then_some(1)
                });
            }
            due = cell.load(Ordering::Acquire);
            if due == 0 {
                return Some(false);
            }
        }
        let now = self.now_ns();
        let next = now.saturating_add(self.probe_ns()).max(1);
        (now >= due
            && cell
                .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then_some(true)
    }

    fn probe_ns(&self) -> u64 {
        crate::clock::nanos(self.probe_interval)
    }

    pub(crate) fn call(&self, k: Vec<u8>, slot: usize, cost: u32, probe: bool) -> RedisCall {
        let script = self.script.clone();
        let known = self.script_known.clone();
        let conn = self.conn.clone();
        let period = self.period_us;
        let burst = self.quota.burst_size();
        let every = self.probe_interval;
        let fut = Box::pin(async move {
            // EVALSHA, and on NOSCRIPT the script itself with EVAL (which
            // caches it on that node): routed by the key, so it reaches the
            // node that needs it — a replica promoted in a failover has an
            // empty script cache, and a `SCRIPT LOAD` would go elsewhere.
            let call = |verb: &str, body: &str| {
                let mut cmd = redis::cmd(verb);
                cmd.arg(body)
                    .arg(1)
                    .arg(&k[..])
                    .arg(period)
                    .arg(burst)
                    .arg(cost);
                cmd
            };
            let eval = call("EVAL", GCRA_LUA);
            // A probe, or the first call since a failure (a restarted
            // Redis has forgotten its scripts): the script itself.
            let first = if probe || !known.load(Ordering::Acquire) {
                None
            } else {
                Some(call("EVALSHA", script.get_hash()))
            };
            let evalsha = first.as_ref();
            let result = match conn {
                Conn::Single(single) => {
                    // A probe connects anew first (in the background: the
                    // next probe uses it).
                    if probe {
                        Single::reconnect(&single, every);
                    }
                    let mut c = ConnectionManager::clone(&single.conn.load());
                    run(&mut c, evalsha, &eval).await
                }
                Conn::Cluster(cluster) => {
                    let current = cluster.conn.load_full();
                    // A probe of a degraded slot connects anew first (in
                    // the background: the next probe uses it).
                    if probe || current.is_none() {
                        Cluster::reconnect(&cluster, every);
                    }
                    let Some(current) = current else {
                        return Err(RedisError::from((
                            redis::ErrorKind::Io,
                            "not connected to the cluster yet",
                        )));
                    };
                    let mut c = ClusterConnection::clone(&current);
                    run(&mut c, evalsha, &eval).await
                }
            };
            known.store(result.is_ok(), Ordering::Release);
            result
        });
        RedisCall {
            fut,
            slot,
            started_ns: self.now_ns(),
            probe,
        }
    }

    /// The decision from a finished (or timed-out: `None`) Redis call.
    pub(crate) fn complete<X, D>(
        &self,
        shared: &Shared<X, D>,
        key: &Result<Key, MissingKey>,
        cost: u32,
        slot: usize,
        outcome: Option<RedisResult<Vec<i64>>>,
    ) -> (Verdict, Option<RateLimitStatus>) {
        let cause = match outcome {
            Some(Ok(v)) if v.len() == 3 => {
                self.healthy(&shared.observer, &shared.name, slot);
                let us = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
                return if v[0] == 1 {
                    shared.finish(
                        Some(self.quota),
                        Admit {
                            remaining: u32::try_from(v[1]).unwrap_or(0),
                            reset: us(v[2]),
                        },
                        cost,
                    )
                } else {
                    (
                        Verdict::Deny {
                            wait: Some(us(v[1])),
                            detail: DETAIL_LIMIT,
                        },
                        None,
                    )
                };
            }
            Some(Ok(_)) => "protocol",
            Some(Err(e)) => cause_of(&e),
            None => "timeout",
        };
        self.failed(&shared.observer, &shared.name, slot, cause);
        self.degraded(shared, key, cost, true)
    }

    /// A round trip that the request's deadline cut before Redis answered,
    /// or whose request was dropped while it was pending (its caller gave
    /// up). One request's budget does not judge Redis: the call goes on in a
    /// task of its own until Redis answers or the timeout since it was made
    /// runs out, and is judged then (outside a runtime, or with
    /// [`MAX_WATCHED`] such calls already out, it is dropped unjudged).
    pub(crate) fn cut(self: &Arc<Self>, observer: &Observer, name: &Name, call: &mut RedisCall) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.watched.fetch_add(1, Ordering::AcqRel) >= MAX_WATCHED {
            self.watched.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let fut = std::mem::replace(&mut call.fut, Box::pin(std::future::pending()));
        let by = self.start + Duration::from_nanos(call.started_ns) + self.timeout;
        let (state, observer, name, slot) =
            (self.clone(), observer.clone(), name.clone(), call.slot);
        runtime.spawn(async move {
            let cause = match tokio::time::timeout_at(by, fut).await {
                Ok(Ok(v)) if v.len() == 3 => None,
                Ok(Ok(_)) => Some("protocol"),
                Ok(Err(e)) => Some(cause_of(&e)),
                Err(_) => Some("timeout"),
            };
            state.watched.fetch_sub(1, Ordering::AcqRel);
            match cause {
                None => state.healthy(&observer, &name, slot),
                Some(cause) => state.failed(&observer, &name, slot, cause),
            }
        });
    }

    /// `Degraded` while any range of slots is, else `Healthy`.
    pub(crate) fn state(&self) -> State {
        if self.degraded_slots.load(Ordering::Acquire) == 0 {
            State::Healthy
        } else {
            State::Degraded
        }
    }

    /// Redis answered a call of `slot`.
    fn healthy(&self, observer: &Observer, name: &Name, slot: usize) {
        if self.slots[slot].swap(0, Ordering::AcqRel) != 0
            && self.degraded_slots.fetch_sub(1, Ordering::AcqRel) == 1
        {
            // (A connection made meanwhile is no news at the next failure.)
            self.conn.take_fresh();
            observer.emit(
                LayerKind::RateLimit,
                name.as_str(),
                EventKind::StateChanged {
                    from: State::Degraded,
                    to: State::Healthy,
                    failure_rate: None,
                    slow_call_rate: None,
                },
            );
        }
    }

    fn failed(&self, observer: &Observer, name: &Name, slot: usize, cause: &'static str) {
        observer.emit(
            LayerKind::RateLimit,
            name.as_str(),
            EventKind::BackendError {
                backend: "redis",
                cause,
            },
        );
        let now = self.now_ns();
        let next = now.saturating_add(self.probe_ns()).max(1);
        if self.slots[slot].swap(next, Ordering::AcqRel) == 0
            && self.degraded_slots.fetch_add(1, Ordering::AcqRel) == 0
        {
            observer.emit(
                LayerKind::RateLimit,
                name.as_str(),
                EventKind::StateChanged {
                    from: State::Healthy,
                    to: State::Degraded,
                    failure_rate: None,
                    slow_call_rate: None,
                },
            );
        }
    }

    /// The decision while Redis is unavailable.
    pub(crate) fn degraded<X, D>(
        &self,
        shared: &Shared<X, D>,
        key: &Result<Key, MissingKey>,
        cost: u32,
        want_status: bool,
    ) -> (Verdict, Option<RateLimitStatus>) {
        match self.policy {
            // No `RateLimit` fields: no limit is kept while failing open
            // (they said the whole quota was left, on every answer).
            FailurePolicy::FailOpen => shared.finish(
                None,
                Admit {
                    remaining: self.quota.burst_size(),
                    reset: Duration::ZERO,
                },
                cost,
            ),
            FailurePolicy::FailClosed => (
                Verdict::Deny {
                    wait: None,
                    detail: DETAIL_BACKEND,
                },
                None,
            ),
            FailurePolicy::Local { .. } => shared.decide_local(key, cost, want_status),
        }
    }
}

/// The period sent to the script, in whole microseconds (its clock's unit),
/// rounded up: never looser than the quota (rounded down, the period of
/// `Quota::per_second(400_000)`, 2.5 µs, was sent as 2 µs: 500 000 a
/// second).
fn period_micros(period: Duration) -> u64 {
    u64::try_from(period.as_nanos().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, if not empty) or of the
/// whole key, modulo 16384.
fn cluster_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % CLUSTER_SLOTS as u16
}

/// `evalsha`, or `eval` if there is none or the node does not know the
/// script.
async fn run(
    conn: &mut impl redis::aio::ConnectionLike,
    evalsha: Option<&redis::Cmd>,
    eval: &redis::Cmd,
) -> RedisResult<Vec<i64>> {
    let Some(evalsha) = evalsha else {
        return eval.query_async(conn).await;
    };
    match evalsha.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            eval.query_async(conn).await
        }
        r => r,
    }
}

fn cause_of(e: &RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() {
        "connection"
    } else {
        "error"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{cluster_slot, period_micros};
    use crate::rate_limit::Quota;

    /// The period the script gets is never shorter than the quota's: a
    /// fraction of a microsecond counts as a whole one.
    #[test]
    fn the_period_sent_to_redis_is_rounded_up() {
        // 2.5 µs: 3 µs (333 333 a second), not 2 µs (500 000 a second).
        assert_eq!(period_micros(Quota::per_second(400_000).period()), 3);
        assert_eq!(period_micros(Quota::per_second(3).period()), 333_334);
        assert_eq!(period_micros(Quota::per_second(1_000_000).period()), 1);
        assert_eq!(period_micros(Quota::per_minute(100).period()), 600_000);
        assert_eq!(period_micros(Duration::from_nanos(1_000_001)), 1_001);
        assert_eq!(period_micros(Duration::from_nanos(1)), 1);
        assert_eq!(period_micros(Duration::MAX), u64::MAX);
    }

    #[test]
    fn cluster_slots_are_redis_slots() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(cluster_slot(b"123456789"), 0x31C3);
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(
            cluster_slot(b"{user1000}.following"),
            cluster_slot(b"{user1000}.followers")
        );
        assert_eq!(cluster_slot(b"{}foo"), cluster_slot(b"{}foo"));
        assert_ne!(cluster_slot(b"{}foo"), cluster_slot(b"foo"));
    }
}
