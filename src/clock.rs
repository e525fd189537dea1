//! The one clock: every seawall layer reads `tokio::time::Instant`, so
//! `#[tokio::test(start_paused = true)]` drives every timer, window and quota.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//!
//! let before = seawall::clock::now();
//! tokio::time::sleep(Duration::from_secs(5)).await; // instant in paused time
//! assert_eq!(seawall::clock::now() - before, Duration::from_secs(5));
//! # }
//! ```

use std::cell::Cell;

pub use tokio::time::Instant;

/// The current time on tokio's clock: `tokio::time::Instant::now()`, the
/// clock every seawall layer keeps time by (paused and advanced by
/// `#[tokio::test(start_paused = true)]`).
///
/// The layers themselves read it once per edge of a call: while a request
/// goes in through their `call`s (one synchronous chain), and while its
/// answer comes out through their futures' `poll`, every seawall layer on
/// the way shares the first read of the edge, so a whole stack reads the
/// clock twice per call, not once per layer. This function is not part of
/// that sharing: called from a handler, it reads the clock then.
#[inline]
pub fn now() -> Instant {
    Instant::now()
}

/// The handler below has run in this poll (said by the adaptive limit's
/// future, which takes its latency sample next, and by the server presets'
/// `CallBody` around the handler): an instant read inside it, deeper than
/// the caller's edges (a client stack called in the handler reads the clock
/// as its answer comes back), is stale after the handler's own work, so the
/// next read is fresh, and shared by the layers on the way out. An instant
/// read at the caller's depth or above (a layer's read after the handler
/// returned: layers between do not open edges on the way out) stands;
/// where nothing read the clock during the handler's poll (every plain
/// handler), there is nothing to forget: no extra read.
#[cfg_attr(
    not(any(feature = "shed", all(feature = "http", feature = "deadline"))),
    allow(dead_code)
)]
#[inline]
pub(crate) fn handler_ran() {
    EDGE.with(|edge| {
        if edge.read_depth.get() > edge.depth.get() {
            edge.now.set(None);
            edge.read_depth.set(0);
        }
    });
}

/// The current time on tokio's clock, read once per edge of a call (see
/// [`now`]): the layers' read. Outside an edge, `Instant::now()`.
// (A build with no layer feature reads none.)
#[allow(dead_code)]
#[inline]
pub(crate) fn edge_now() -> Instant {
    EDGE.with(|edge| match edge.now.get() {
        Some(now) => now,
        None => {
            #[cfg(test)]
            READS.with(|reads| reads.set(reads.get() + 1));
            let now = Instant::now();
            let depth = edge.depth.get();
            if depth != 0 {
                edge.now.set(Some(now));
                edge.read_depth.set(depth);
            }
            now
        }
    })
}

#[cfg(test)]
thread_local! {
    /// Reads of tokio's clock made by [`now`] on this thread (tests only).
    pub(crate) static READS: Cell<u64> = const { Cell::new(0) };
}

/// The edges open on this thread (nested: one per layer on the way), and
/// the instant of the outermost once read. The instant is `None` whenever
/// no edge is open.
struct EdgeState {
    depth: Cell<u32>,
    now: Cell<Option<Instant>>,
    /// The depth at which `now` was read (0: none read).
    read_depth: Cell<u32>,
}

thread_local! {
    static EDGE: EdgeState = const {
        EdgeState {
            depth: Cell::new(0),
            now: Cell::new(None),
            read_depth: Cell::new(0),
        }
    };
}

/// One layer's part of an edge of a call (its `call`, or its future's
/// `poll`): while any is alive on this thread, [`now`] reads the clock once.
/// Entering counts one more edge open and ending counts it off; the
/// outermost one's end (the count back at zero) forgets the instant. A
/// guard of no size: entering is one increment, ending one decrement and a
/// test, with no flag to keep on the stack of every layer.
// Layers that read the clock open edges; a build with no layer feature
// has none.
#[allow(dead_code)]
pub(crate) struct Edge {
    _not_send: std::marker::PhantomData<*const ()>,
}

#[allow(dead_code)]
impl Edge {
    #[inline]
    pub(crate) fn enter() -> Edge {
        EDGE.with(|edge| edge.depth.set(edge.depth.get().wrapping_add(1)));
        Edge {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for Edge {
    #[inline]
    fn drop(&mut self) {
        EDGE.with(|edge| {
            let depth = edge.depth.get().wrapping_sub(1);
            edge.depth.set(depth);
            if depth == 0 {
                edge.now.set(None);
            }
        });
    }
}

/// Whether `at` has passed, by the timer in `slot`: a response future's
/// lazy timer, made at the first call (when the future has something to
/// wait for), so a call that never waits never touches the timer wheel.
/// Out of line: only a waiting future reaches it.
#[cfg_attr(not(any(feature = "deadline", feature = "retry")), allow(dead_code))]
#[inline(never)]
pub(crate) fn timer_fired(
    mut slot: std::pin::Pin<&mut Option<tokio::time::Sleep>>,
    at: Instant,
    cx: &mut std::task::Context<'_>,
) -> bool {
    use std::future::Future;
    if slot.is_none() {
        slot.set(Some(tokio::time::sleep_until(at)));
    }
    slot.as_pin_mut().is_some_and(|s| s.poll(cx).is_ready())
}

/// Waits in a service's `poll_ready` until `until`, on the boxed timer in
/// `slot` (made at the first wait, moved when `until` moves; boxed so that
/// the service stays small). Ready once `until` has passed: from then on the
/// caller judges by `until` itself, not by [`now`], whose instant an edge
/// may have read before a timer on another worker fired.
#[cfg_attr(
    not(any(feature = "circuit-breaker", feature = "eject")),
    allow(dead_code)
)]
#[inline(never)]
pub(crate) fn poll_boxed_timer(
    slot: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    until: Instant,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    use std::future::Future;
    let sleep = match slot {
        Some(sleep) => {
            if sleep.deadline() != until {
                sleep.as_mut().reset(until);
            }
            sleep
        }
        None => slot.insert(Box::pin(tokio::time::sleep_until(until))),
    };
    sleep.as_mut().poll(cx)
}

/// Nanoseconds from `earlier` to `later`, negative when `later` comes first
/// (saturating at ±`i64::MAX`, some 292 years).
///
/// The same as `later - earlier` in `std`, without its cost: std's
/// subtraction is an out-of-line call that normalises through
/// `Duration` (about 55 instructions, paid on the success path of every
/// layer that keeps time). An `Instant` hashes as its seconds and
/// nanoseconds (a `Timespec` on Unix, a `Duration` elsewhere), and its
/// `Hash` is generic, so reading those two fields through a
/// [`Hasher`](std::hash::Hasher) is inlined to two loads. Should an
/// `Instant` ever hash as anything else, std's subtraction is used.
#[inline]
pub(crate) fn signed_nanos(earlier: Instant, later: Instant) -> i64 {
    match (Parts::of(earlier), Parts::of(later)) {
        (Some(e), Some(l)) => {
            let nanos = i64::from(l.nanos) - i64::from(e.nanos);
            match l
                .secs
                .checked_sub(e.secs)
                .and_then(|s| s.checked_mul(1_000_000_000))
                .and_then(|n| n.checked_add(nanos))
            {
                Some(n) => n.max(-i64::MAX),
                None if l.secs > e.secs => i64::MAX,
                None => -i64::MAX,
            }
        }
        _ => match later.checked_duration_since(earlier) {
            Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            None => -i64::try_from((earlier - later).as_nanos()).unwrap_or(i64::MAX),
        },
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (some 584 years).
// Used by the layers; a build with no layer feature has no caller.
#[allow(dead_code)]
#[inline]
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds from `earlier` to `later`; 0 when `later` is not after it.
#[inline]
pub(crate) fn nanos_between(earlier: Instant, later: Instant) -> u64 {
    signed_nanos(earlier, later).max(0) as u64
}

/// Time from `earlier` to `later`; zero when `later` is not after it
/// (`later.saturating_duration_since(earlier)`, inlined: see
/// [`signed_nanos`]).
#[inline]
pub(crate) fn elapsed(earlier: Instant, later: Instant) -> std::time::Duration {
    std::time::Duration::from_nanos(nanos_between(earlier, later))
}

/// An instant's seconds and nanoseconds, as its `Hash` writes them.
#[derive(Default)]
struct Parts {
    secs: i64,
    nanos: u32,
    writes: u8,
    other: bool,
}

impl Parts {
    #[inline]
    fn of(at: Instant) -> Option<Parts> {
        use std::hash::Hash;
        let mut parts = Parts::default();
        at.hash(&mut parts);
        (parts.writes == 2 && !parts.other && parts.nanos < 1_000_000_000).then_some(parts)
    }

    /// Takes the `n`-th write (0: seconds, 1: nanoseconds); any other
    /// write, or one out of place, marks the instant as unreadable.
    #[inline]
    fn take(&mut self, n: u8, value: Option<i64>) {
        match (self.writes == n, value) {
            (true, Some(v)) if n == 0 => self.secs = v,
            (true, Some(v)) => self.nanos = v as u32,
            _ => self.other = true,
        }
        self.writes = self.writes.saturating_add(1);
    }
}

impl std::hash::Hasher for Parts {
    fn finish(&self) -> u64 {
        0
    }

    #[inline]
    fn write(&mut self, _: &[u8]) {
        self.other = true;
    }

    #[inline]
    fn write_i64(&mut self, secs: i64) {
        self.take(0, Some(secs));
    }

    #[inline]
    fn write_u64(&mut self, secs: u64) {
        self.take(0, i64::try_from(secs).ok());
    }

    #[inline]
    fn write_u32(&mut self, nanos: u32) {
        self.take(1, Some(i64::from(nanos)));
    }
}

/// `d` in whole seconds, rounded **up** (400 ms → 1, 2 s → 2, 2.001 s → 3,
/// 0 → 0): what `Retry-After` and the `RateLimit` fields advertise, so a client
/// never comes back early.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(seawall::clock::ceil_secs(Duration::from_millis(400)), 1);
/// assert_eq!(seawall::clock::ceil_secs(Duration::from_millis(2001)), 3);
/// assert_eq!(seawall::clock::ceil_secs(Duration::ZERO), 0);
/// ```
#[inline]
pub fn ceil_secs(d: std::time::Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// The smallest hint a shedder or a bulkhead gives with its refusal (and a
/// half-open breaker whose probes are all out).
#[cfg(any(feature = "bulkhead", feature = "circuit-breaker"))]
pub(crate) const MIN_HINT: std::time::Duration = std::time::Duration::from_millis(100);

/// Spreads the `retry_after` hints of one layer instance: each hint is its
/// base stretched by a pseudo-random factor in `[1, 1.5)`, so that clients
/// refused together do not all come back at the same instant.
///
/// The sequence is a hash of the instance name and a counter: lock-free, no
/// clock read, and the same from one run to the next (simulations in paused
/// time stay reproducible).
#[cfg(any(
    feature = "bulkhead",
    feature = "circuit-breaker",
    feature = "rate-limit"
))]
#[derive(Debug)]
pub(crate) struct Jitter {
    seed: u64,
    counter: std::sync::atomic::AtomicU64,
}

#[cfg(any(
    feature = "bulkhead",
    feature = "circuit-breaker",
    feature = "rate-limit"
))]
impl Jitter {
    pub(crate) fn new(name: &str) -> Self {
        // FNV-1a over the name.
        let mut seed = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Jitter {
            seed,
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `base` times a factor in `[1, 1.5)`; never shorter than `base`.
    pub(crate) fn stretch(&self, base: std::time::Duration) -> std::time::Duration {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The splitmix64 sequence from `seed`: the value for counter `n`
        // mixes `seed + n × golden`.
        let z = splitmix64(
            self.seed
                .wrapping_add(n.wrapping_sub(1).wrapping_mul(GOLDEN)),
        );
        stretch_by(base, z >> 11)
    }
}

/// `base` plus `base × m / 2⁵⁴` for `m` below 2⁵³, the extra in whole
/// nanoseconds rounded down: below half of `base`, so the factor stays
/// under 1.5 after rounding (through `f64` it could reach 1.5), and never
/// below `base`. In two parts, so that no product overflows.
#[cfg(any(
    feature = "bulkhead",
    feature = "circuit-breaker",
    feature = "rate-limit"
))]
fn stretch_by(base: std::time::Duration, m: u64) -> std::time::Duration {
    let m = u128::from(m);
    let ns = base.as_nanos();
    let extra = (ns >> 54) * m + (((ns & ((1 << 54) - 1)) * m) >> 54);
    let extra = std::time::Duration::new(
        (extra / 1_000_000_000) as u64,
        (extra % 1_000_000_000) as u32,
    );
    base.saturating_add(extra)
}

/// 2⁶⁴ divided by the golden ratio: splitmix64's increment.
#[cfg(any(
    feature = "bulkhead",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "rate-limit"
))]
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finaliser: a well-mixed 64-bit hash of `z + golden ratio`.
#[cfg(any(
    feature = "bulkhead",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "rate-limit"
))]
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(all(
    test,
    any(
        feature = "bulkhead",
        feature = "circuit-breaker",
        feature = "rate-limit"
    )
))]
mod jitter_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_factor_stays_in_one_to_one_and_a_half_after_rounding() {
        let top = (1u64 << 53) - 1;
        for base in [
            Duration::from_nanos(1),
            Duration::from_nanos(3),
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(86_400 * 365),
            Duration::MAX / 3,
        ] {
            assert_eq!(stretch_by(base, 0), base);
            let most = stretch_by(base, top);
            assert!(
                most >= base && most.as_nanos() * 2 < base.as_nanos() * 3,
                "{base:?}: {most:?}"
            );
            // Half-way: a quarter more, to the nanosecond below.
            let half = stretch_by(base, 1 << 52);
            assert_eq!(half.as_nanos(), base.as_nanos() + base.as_nanos() / 4);
        }
        assert_eq!(stretch_by(Duration::MAX, top), Duration::MAX);
        assert_eq!(stretch_by(Duration::ZERO, top), Duration::ZERO);
        let jitter = Jitter::new("x");
        for _ in 0..10_000 {
            let hint = jitter.stretch(Duration::from_millis(100));
            assert!(hint >= Duration::from_millis(100) && hint < Duration::from_millis(150));
        }
    }
}

#[cfg(test)]
mod subtraction_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_instant_reads_as_its_seconds_and_nanoseconds() {
        assert!(Parts::of(Instant::now()).is_some());
    }

    #[test]
    fn differences_match_std_on_both_sides_and_across_second_borrows() {
        let base = Instant::now();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut offsets = vec![0u64, 1, 999_999_999, 1_000_000_000, 1_000_000_001];
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Up to ~3 days, with every nanosecond remainder.
            offsets.push(seed % 300_000_000_000_000);
        }
        for (i, &a) in offsets.iter().enumerate() {
            let b = offsets[(i * 7 + 3) % offsets.len()];
            let x = base + Duration::from_nanos(a);
            let y = base + Duration::from_nanos(b);
            let expected = i64::try_from(a).unwrap() - i64::try_from(b).unwrap();
            assert_eq!(signed_nanos(y, x), expected, "{a} - {b}");
            assert_eq!(elapsed(y, x), x.saturating_duration_since(y));
            assert_eq!(nanos_between(y, x), expected.max(0) as u64);
        }
    }
}

#[cfg(test)]
mod edge_tests {
    use std::time::Duration;

    use super::*;

    /// The deadline each call of the returned client (a deadline of 1 s
    /// over a service that notes it) ran under.
    #[cfg(feature = "deadline")]
    #[allow(clippy::type_complexity)]
    fn deadline_client() -> (
        std::sync::Arc<std::sync::Mutex<Vec<Option<Instant>>>>,
        impl tower::Service<(), Response = (), Error = crate::BoxError>,
    ) {
        use tower::Layer;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let inner = tower::service_fn(move |_: ()| {
            s.lock()
                .unwrap()
                .push(crate::deadline::current().map(|d| d.instant()));
            std::future::ready(Ok::<_, crate::BoxError>(()))
        });
        let client = crate::deadline::DeadlineLayer::new(Duration::from_secs(1))
            .unwrap()
            .layer(inner);
        (seen, client)
    }

    /// Two client calls in one poll of a handler (inside a server layer's
    /// edge): the second one's budget starts when it is made, not at the
    /// first call's read, which the handler's work since has made stale.
    #[cfg(feature = "deadline")]
    #[tokio::test(start_paused = true)]
    async fn a_second_call_in_one_poll_starts_its_budget_when_made() {
        use tower::Service;
        let (seen, mut client) = deadline_client();
        let start = now();
        // The server layer's edge around the handler's poll.
        let server = Edge::enter();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut first = std::pin::pin!(client.call(()));
        assert!(first.as_mut().poll(&mut cx).is_ready());
        // The handler's own work, then a second call in the same poll.
        tokio::time::advance(Duration::from_millis(200)).await;
        let mut second = std::pin::pin!(client.call(()));
        assert!(second.as_mut().poll(&mut cx).is_ready());
        drop(server);
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], Some(start + Duration::from_secs(1)));
        assert_eq!(
            seen[1],
            Some(start + Duration::from_millis(1200)),
            "the second call's budget started at the first call's read"
        );
    }

    /// The same with a default breaker (a time window, which reads the
    /// clock as its call ends) as the first call: its read is its own
    /// edge's, deeper than the handler, and does not outlive the
    /// handler's work.
    #[cfg(feature = "circuit-breaker")]
    #[tokio::test(start_paused = true)]
    async fn a_breakers_read_as_its_call_ends_does_not_outlive_the_handlers_work() {
        use tower::{Layer, Service};
        let (seen, mut client) = deadline_client();
        let mut breaker = crate::circuit_breaker::CircuitBreakerLayer::builder()
            .build()
            .unwrap()
            .layer(tower::service_fn(|_: ()| {
                std::future::ready(Ok::<_, crate::BoxError>(()))
            }));
        let start = now();
        let server = Edge::enter();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut first = std::pin::pin!(breaker.call(()));
        assert!(first.as_mut().poll(&mut cx).is_ready());
        tokio::time::advance(Duration::from_millis(200)).await;
        let mut second = std::pin::pin!(client.call(()));
        assert!(second.as_mut().poll(&mut cx).is_ready());
        drop(server);
        assert_eq!(
            seen.lock().unwrap()[0],
            Some(start + Duration::from_millis(1200)),
            "the call's budget started when it was made"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_edge_reads_the_clock_once_and_forgets_when_the_outermost_ends() {
        let before = edge_now();
        tokio::time::advance(Duration::from_secs(1)).await;
        // Outside an edge: a fresh read each time.
        assert_eq!(edge_now() - before, Duration::from_secs(1));

        let outer = Edge::enter();
        let first = edge_now();
        let inner = Edge::enter();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(edge_now(), first, "layers on one edge share its first read");
        assert_eq!(
            now() - first,
            Duration::from_secs(1),
            "the public read is not part of the sharing"
        );
        drop(inner);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(edge_now(), first, "an inner layer's end does not forget it");
        drop(outer);
        assert_eq!(
            edge_now() - first,
            Duration::from_secs(2),
            "the next edge reads anew"
        );

        // A new edge after that reads the clock again, once.
        let again = Edge::enter();
        let second = edge_now();
        assert_eq!(second - first, Duration::from_secs(2));
        drop(again);
    }
}

/// How often whole stacks read the clock: twice per call (once on the way
/// in, once on the way out), with or without an observer, counted on this
/// thread by the test-only counter in [`edge_now`].
#[cfg(all(
    test,
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed",
    feature = "bulkhead",
    feature = "rate-limit"
))]
mod read_count_tests {
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt};

    use crate::error::BoxError;
    use crate::observe::Observer;
    use crate::stack::{ClientStack, ServerStack};

    fn noop() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone {
        tower::service_fn(|i: u64| std::future::ready(Ok::<u64, BoxError>(i)))
    }

    /// Clock reads per call over `calls` calls of `svc`.
    async fn reads_per_call<S>(mut svc: S, calls: u64) -> f64
    where
        S: Service<u64, Response = u64>,
        S::Error: std::fmt::Debug,
    {
        // A first call builds what the layers build once.
        svc.ready().await.unwrap().call(0).await.unwrap();
        let before = super::READS.with(|r| r.get());
        for i in 0..calls {
            assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
        }
        (super::READS.with(|r| r.get()) - before) as f64 / calls as f64
    }

    /// An observer listening to every event (and doing nothing with them).
    fn listening_observer() -> Observer {
        Observer::new(|_: &crate::observe::Event<'_>| {})
    }

    fn client(observer: Observer) -> crate::stack::ClientStackLayer {
        ClientStack::builder("client")
            .total_budget(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(300))
            .observer(observer)
            .build()
            .unwrap()
    }

    fn server(
        observer: Observer,
    ) -> crate::stack::ServerStackLayer<
        tower::layer::util::Identity,
        crate::rate_limit::RateLimitLayer,
    > {
        ServerStack::builder("server")
            .total_budget(Duration::from_secs(2))
            .handler_timeout(Duration::from_millis(500))
            .rate_limit(crate::rate_limit::Quota::per_second(1_000_000), |r| r)
            .observer(observer)
            .build()
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn whole_stacks_read_the_clock_twice_per_call() {
        for observer in [Observer::none(), listening_observer()] {
            let observed = observer.is_enabled();
            let reads = reads_per_call(client(observer.clone()).layer(noop()), 100).await;
            assert_eq!(reads, 2.0, "client stack, observed: {observed}");
            let reads = reads_per_call(server(observer).layer(noop()), 100).await;
            assert_eq!(reads, 2.0, "server stack, observed: {observed}");
        }
    }

    /// The bulkhead opens no edge of its own: placed outermost and observed,
    /// over a layer that reads the clock, it reads once more per call (as
    /// ARCHITECTURE.md says); unobserved, it reads nothing.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_outermost_observed_bulkhead_reads_once_more() {
        let attempt = crate::deadline::AttemptTimeoutLayer::new(Duration::from_secs(1)).unwrap();
        let plain = crate::bulkhead::BulkheadLayer::builder()
            .max_concurrent(8)
            .build()
            .unwrap();
        assert_eq!(
            reads_per_call(plain.layer(attempt.layer(noop())), 100).await,
            1.0,
            "the attempt timeout's one read on the way in"
        );
        let observed = crate::bulkhead::BulkheadLayer::builder()
            .max_concurrent(8)
            .observer(listening_observer())
            .build()
            .unwrap();
        assert_eq!(
            reads_per_call(observed.layer(attempt.layer(noop())), 100).await,
            3.0,
            "its start and end, and the attempt timeout's"
        );
    }

    /// An ejection layer on a healthy endpoint reads the clock as a call
    /// goes in and as it ends (its latency), none to make it ready (3 a
    /// call before: its admission read it too); under a client stack, it
    /// shares the stack's two.
    #[cfg(feature = "eject")]
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_healthy_endpoint_reads_the_clock_twice_per_call() {
        let ejection = crate::eject::EjectionLayer::builder().build().unwrap();
        assert_eq!(reads_per_call(ejection.layer(noop()), 100).await, 2.0);
        let under = client(Observer::none()).layer(ejection.layer(noop()));
        assert_eq!(
            reads_per_call(under, 100).await,
            2.0,
            "under a client stack"
        );
    }

    /// A closed breaker with a count window, no slow calls and no hook reads
    /// no clock; a time window (the default) reads it as a call ends (the
    /// call's bucket); a slow-call duration or a hook make it read the
    /// clock as a call goes in and as it ends.
    #[cfg(feature = "circuit-breaker")]
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_closed_breaker_reads_the_clock_only_when_it_keeps_time() {
        use crate::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
        let b = || CircuitBreakerLayer::builder().window(SlidingWindow::count(100));
        let cases = [
            ("a count window", b().build().unwrap(), 0.0),
            (
                "the defaults",
                CircuitBreakerLayer::builder().build().unwrap(),
                1.0,
            ),
            (
                "slow calls",
                b().slow_call_duration(Duration::from_secs(5))
                    .build()
                    .unwrap(),
                2.0,
            ),
            (
                "time window",
                b().window(SlidingWindow::time(Duration::from_secs(10)))
                    .build()
                    .unwrap(),
                1.0,
            ),
            (
                "observed",
                b().observer(listening_observer()).build().unwrap(),
                2.0,
            ),
        ];
        for (what, layer, want) in cases {
            assert_eq!(
                reads_per_call(layer.layer(noop()), 100).await,
                want,
                "{what}"
            );
        }
    }
}
