//! QueueDelay: a concurrency limit that keeps the queue in front of a
//! service short, by comparing each window's latency with the service's
//! latency when nothing queues.

use std::time::Duration;

use super::algorithm::{LimitAlgorithm, WindowSample};
use crate::error::ConfigError;

/// At the start, the second window's latency is a queue of ours only above
/// the first's by this share, or by `tolerance` if more (see
/// [`QueueDelay`]'s rule 2): a doubling past the knee adds up to half its
/// calls' latency.
const PROVISIONAL_RISE: f64 = 0.5;

/// The default limit algorithm: it converges on what the service can run at
/// once, from 1 to thousands, by keeping the queueing delay small, and tells
/// a queue of its own from a service that got slower.
///
/// For each window (`rtt` = the window's average latency, `busy` = the most
/// calls in flight):
///
/// 1. `base` is the service's latency when nothing queues. It is lowered by
///    any window with a lower latency, and measured by *draining windows*:
///    two thirds of the calls in flight (half of a few) for a short while
///    (a quarter of a window, or four latencies if longer). If the latency
///    falls with them, a queue of ours was there and the lowest latency
///    seen stands; if it falls about as much as the calls did, the drain is
///    still above the knee and the next window at the limit drains again.
///    If it does not
///    fall, no queue was there and the drain's latency *is* the service's,
///    slower or faster than before; with a queue allowance (a client
///    stack's limit), a drain after a window at the limit whose latency
///    stays a quarter or more above `base` is a slower dependency, and the
///    limit follows it as in rule 4 (the storm's "slow dependency": 300 ms
///    calls at 400 a second need 120 in flight; back to its limit of 105,
///    growing 5 % a window, the limit refused for all of a 10 s
///    slowdown), unless the answers a second held through the drain (fell
///    by less than a quarter of what it took): a dependency of fixed
///    throughput, whose queue the window before the drain was still
///    filling, and `base` stays (`tests/shed`: one worker sent three times
///    what it answers, the limit went from 105 to 362 and 852 callers
///    waited out their budgets, 130 now). A drain runs only when a queue may be
///    hiding: the limit was reached two windows in a row, or the latency
///    stayed above the tolerance two windows in a row with at least half
///    the limit in flight and a queue that stood (see 3); then at most every
///    `drain_every` windows (sooner after the first two, or after one that
///    found a queue). A service well within its capacity never drains.
/// 2. While `rtt ≤ base × (1 + tolerance)` (or `base` plus the
///    [queue allowance](QueueDelayBuilder::queue_allowance), if more:
///    `target` below) nothing queues: when at least
///    half the limit was in flight, the limit grows, ×2 per window (while
///    the limit is reached) until the first sign of queueing, then by
///    `increase` (5 %, at least 1) per window. With a queue allowance, a
///    window above `base × (1 + tolerance)` but within `target` is a queue
///    tolerated: the limit is not cut for it, and grows by `increase` only
///    (doubled, it filled the allowance in a window and passed it before
///    the next could judge). But when such a window reached the limit and
///    every call in it slowed (its fastest a quarter or more above
///    `base`), none ran out of time, and no queue of ours showed in the
///    last `drain_every` windows, it is a *growth test* in place of a
///    drain: the limit grows to where a queue of ours would fill the
///    allowance (`limit × target / rtt`), by a quarter at most (a tenth at
///    least, or no test; one in `drain_every` windows at most). If the
///    next window's calls in flight rose by a tenth or more, its latency
///    by less than half as much (and fell by a tenth at most), and its
///    answers a second by a quarter as much or more, no queue of ours is
///    there: the dependency got slower, and the limit follows it as in
///    rule 4 (if that window reached the limit, at once to what it asked
///    for, ×2 at least). If the latency rose with the calls, the answers a
///    second held, or calls ran out of time, a queue of ours was seen.
///    Calls in flight that did not rise, or a latency that fell (a
///    dependency recovering), tell nothing. (A dependency with
///    workers to spare that went from 10 to 450 ms, 300 requests a
///    second, callers with 1 s, `tests/stack`: 2835 of 3000 answered; 2672
///    when a drain to two thirds of the calls looked for the queue, four
///    latencies long. The storm's "slow dependency": 99.4 %, 97.8 %
///    before.) At the start (every window
///    so far doubled the limit), the limit reached two windows in a row
///    drains nothing: each doubling is the test, as a queue of ours hidden
///    in `base` grows with it. The layer closes a window early meanwhile
///    ([`LimitAlgorithm::judges_start`]), once requests over the limit
///    have come for four service times (50 ms at least) and the window
///    has lasted as long and holds the minimum of samples. The first such
///    window is biased to the fastest calls (they end first), so the
///    second window's latency takes its place as `base` unless it rose by
///    half (or by `tolerance`, if more) or the window had drops (a
///    doubling past the knee adds up to half its calls' latency). A limit
///    held at its maximum ends the start, as does any window after which
///    the limit is less than twice what it was. Meanwhile a burst over the
///    limit goes on until a burst's length after the next window can be
///    judged, and is judged with
///    it (its calls samples, its calls in flight the load; a queue cuts
///    from those). A server started under a
///    load above its initial limit doubles it within a few service times,
///    not once a window (`tests/shed`: 24 in flight at 40 ms, none of the
///    first 1200 requests refused, 88 before; 80 in flight, none of 6000,
///    3431 before; the storm's "started under load", 48 in flight
///    at 10–30 ms, every request served, 81 % of 5 s before).
/// 3. Above that, with at least half the limit in flight, requests
///    queue: `limit = limit × target / rtt` (at most halved
///    per window), the limit at which the queueing delay would be
///    `tolerance` of the service time (or the allowance). Below the limit, only if the queue
///    stood: even the window's fastest call took longer than
///    `base × (1 + tolerance)` (a queue that stands delays every call; an
///    average raised by some slow calls, a handler that retried its
///    dependency for a third of its requests, is no queue: in an outside
///    trial it was taken for one, the limit fell from 20 to 2 with at most
///    11 calls in flight, and 3 % of the requests were refused). Calls that timed out or were shed
///    below cut the limit by a tenth at least, when some queueing shows.
///    When a fifth or more of a window's calls timed out (drops) while
///    the answered ones were slowed past `base × (1 + tolerance)`, the
///    answers are the calls that came through in time, their latency cut
///    off by the deadline however long the queue: the limit is cut to the
///    share of calls answered (at most halved), a draining window's too,
///    and for two windows a latency above what a queue of ours can make
///    (rule 4) is that queue, not a slower service. If, two windows in a
///    row, the answers a second fall with such cuts (about in proportion,
///    beyond chance, the limit refusing the calls whose answers were lost)
///    while the answers' latency does not fall with the queue, the calls
///    run out of time at any limit (a service too slow for the deadline,
///    not a queue of ours): the cuts are undone and the answered calls'
///    latency is `base`. The run of such cuts ends with the first window
///    that is not cut off so, or four windows after its first cut. (`tests/stack`: 8 workers whose latency went from
///    10 to 100 ms, sent five times what they then answer, by callers with
///    490 ms: 807 of the 800 answerable answered in time (some queued
///    before; 725 with the limit refusing the requests over it at once),
///    and 8.5 s of the workers' 80 spent on calls cut before their answer; judged by the
///    answers' latency alone, the limit stayed at 60 to 100, 457 answered
///    and 46 s cut. A dependency made slower with no queue, 30 % of its
///    calls past a 130 ms deadline at any load, sent 1000 requests a
///    second: the limit is cut for two windows, then the cuts are undone,
///    6037 of 10 000 answered, 5957 before this rule; never undone, 1481,
///    and 5668 of the next 10 000 refused once it is fast again.)
/// 4. A service that got slower is not a queue: when the latency moves by
///    more than a quarter while the limit and the calls in flight stay
///    within a tenth of the last window's, `base` moves with it; when a
///    run of cuts that took a tenth or more of the calls in flight brought
///    the latency down by less than half of that, the cuts are undone and
///    the latency now is the service's own; and when the latency is more
///    than any queue of ours can make (above `busy ×` the lowest window
///    latency of the last `drain_every` windows or so: a call waits for
///    `busy - 1` others at most, whatever the service can run at once),
///    the service, or what it waits on, got slower. Then `base` takes the
///    latency; a window that reached the limit takes it at once to what
///    the window asked for (the requests that came per second, refused ones
///    included, × the latency, and a quarter more: Little's law; at most
///    four times itself, as a refused request that came back is counted
///    again), or to twice itself if that is more, and it grows ×2 per
///    window while it is reached, until the first sign of queueing: a
///    handler that waits on a dependency 60 times slower needs 60 times
///    the calls in flight. After the second
///    kind of evidence (cuts undone), which a service of limited workers
///    that got slower gives as well, it grows so only if no queue of ours
///    showed in the last `drain_every` windows (a drain or a cut that
///    brought the latency down, or such growth that met one). While it
///    grows so, no window drains and the third kind is not looked for: the
///    first queueing (a queue of workers its growth made) ends it, as does
///    a window that does not reach the limit. The third kind is not looked
///    for either within two windows of a queue of ours (a drain or a cut
///    that brought the latency down) or of a cut for answers cut off by
///    the deadline (rule 3): a latency above what the queue can make from
///    a `busy` measured before the service got slower is that queue (in a
///    brownout of 8 workers it read 290 ms at 25 in flight as a slower
///    service, and quadrupled the limit). Answers that said the
///    handler ran out of time ([`WindowSample::timed_out`]) count in this
///    latency, each for the time it held its place, when the window's
///    answered calls met no queue (at most `target`: a
///    dependency that hangs behind one route, while the others are served
///    as before); otherwise they are drops.
/// 5. Calls at the limit that keep their places
///    ([`WindowSample::kept`]: for 50 ms or more, requests over the limit
///    while the calls that ended, their answers no slower than before,
///    accounted for under a quarter of the limit), while the window's
///    answers took at most twice `base` (or there were none, and nothing
///    timed out or was dropped): handlers that wait on a dependency that
///    hangs behind one route, while the others are answered as before. The
///    limit doubles at once (the layer closes such a window when it finds
///    them, and again each time they have kept their places twice as
///    long), and grows ×2 per window while it is reached until the first
///    sign of queueing. A window closed so for which this does not hold
///    changes nothing (it is too short to judge by), and the layer closes
///    no other early in that run of requests over the limit.
/// 6. Windows last at least three latencies (at most four configured
///    windows), so that a slow service's window is not all leftovers of the
///    one before.
/// 7. A hang's cuts are undone: after windows of drops only (every call
///    out of time) halved the limit, the first window answered within
///    `target` and with no drops puts it back to what it was before them
///    (before the doublings for its first calls, which keep their places:
///    rule 5), at most the initial limit, unless an answered window cut it
///    meanwhile (a queue of ours, learned again). A hang says nothing of a queue of ours,
///    and below half the limit in flight nothing makes a limit grow: at
///    200 requests a second of 5 ms, a client stack's limit stayed at the
///    25 a hang left, and a slowdown to 300 ms after it (60 in flight) was
///    refused 98 requests (`tests/shed`; 5.8–13.5 % of an 8 s slowdown
///    through two client presets in an outside trial's chain).
///
/// Defaults: initial 20, min 1, max 1000, tolerance 0.1, no queue
/// allowance, increase 0.05, a draining window every 20 under load (the
/// client stack's limit: a queue allowance of its attempt timeout).
///
/// # Why it is the default
///
/// Measured in `tests/shed` (a backend of 1 to 1000 slots, three times its
/// capacity offered by closed-loop clients for a minute): the limit stays
/// within 1.5× of the slots (two for one slot) and the backend serves 98–
/// 100 % of its capacity. [`Gradient2`](super::Gradient2), the default
/// before, settled at 44 for 4 slots and at 66 for 256: a queue of 40 in
/// front of the small backend, the large one kept at 22 % of its capacity.
/// In the storm's scenarios (`cargo run --release --example storm`) it
/// keeps within 2 points of the best configuration everywhere, a latency
/// creep (service time doubling every 5 s) and a brownout (×10) included,
/// and never refuses a call while the service is within its capacity at a
/// steady rate. Arrivals at random, which queue for a while at any rate
/// near capacity, it keeps to a tenth of the service time as well: the
/// layer's bursts over the limit serve their peaks (`tests/shed`, 8
/// workers at 95 % of capacity: 0.7 % refused, 3.7 % without bursts, 1.8 %
/// before a queue that drained let the next burst in; none at 80 %).
/// Over handlers that only wait on a dependency that gets 60 times slower
/// (5 ms to 300 ms at 200 requests a second, `tests/shed`), the server
/// stack refuses during the window it takes to learn it (3.1 % of the slow
/// phase's first 20 s; 3.5 % when the limit doubled from 20, 5.5 % before
/// the layer's bursts), then nothing; before rule 4's last part it refused
/// 76 %. A slowdown of 5 s to 400 ms, with one caller in five waiting
/// 300 ms, is refused 119 requests of its 1000, all in its first 1.3 s
/// (268 over 2.5 s by doublings). (Rule 5 does not see these: every answer
/// got slower, as in a brownout of a dependency with fewer workers, where
/// doubling the limit would queue more in front of it.) A dependency that
/// hangs behind one route of two (200 requests a second each, handlers
/// waiting 950 ms) costs the other route nothing: the limit doubles four
/// times within 850 ms of the hang's start, at 50, 100, 200 and 400 ms of
/// requests over it (261 refused, over 3 s, before rule 5).
///
/// What it cannot see: a queue fed by fewer calls than half the limit.
/// Below half the limit in flight the latency moves no limit, so a handler
/// whose dependency fails and is retried, then answers at once behind an
/// open breaker, with 1 to 5 calls in flight, keeps the limit at its 20
/// (`tests/shed`; judged from a quarter of the limit, as before, it fell
/// to 10, and to 3 while draining, and a burst then was refused past 3).
/// The price: 7 callers that each wait for their answer, in front of a
/// service of 2 workers at 10 ms, keep a queue under a limit of 20 (35 ms
/// a call instead of 10) until they are 10 or more (12 callers: the limit
/// falls to 3, 18 ms a call). A limit grows only while half of it is in
/// flight, so this shows only after the load falls from where the
/// limit was learned, or at the start: set a lower `initial_limit` for a
/// small service known in advance.
///
/// ```
/// use seawall::shed::{AdaptiveLimitLayer, QueueDelay};
///
/// let layer = AdaptiveLimitLayer::builder()
///     .algorithm(QueueDelay::builder().max_limit(2000).build().unwrap())
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct QueueDelay {
    limit: f64,
    min_limit: usize,
    max_limit: usize,
    tolerance: f64,
    /// Queueing delay tolerated whatever the service's latency (ns).
    allowance: f64,
    increase: f64,
    drain_every: usize,
    base: f64,
    growth: Growth,
    /// The last window that showed a queue of ours for certain: a drain or
    /// a cut that brought the latency down, or growth after a slowdown
    /// that met queueing. Within `drain_every` windows of it, a slower
    /// service is one of limited workers, and the limit does not grow ×2;
    /// within two, a latency above what a queue of ours can make is not
    /// taken for a slower service (rule 4's third kind).
    queue_seen: Option<usize>,
    /// The last window whose answers were cut off by the deadline (see
    /// `censored` in `judge`): for two windows after it, a latency above
    /// what a queue of ours can make is the same queue, not a slower
    /// service.
    censored_at: Option<usize>,
    /// A run of cuts for answers cut off by the deadline, under way (see
    /// [`CensoredCut`]).
    censored_cut: Option<CensoredCut>,
    /// The lowest window latency (ns) of the last `drain_every` windows
    /// before this run of them, and of this run so far (∞ when none):
    /// the service's latency without a queue, whatever rules moved `base`.
    floor: (f64, f64),
    windows: usize,
    next_drain: usize,
    /// The latency that made the last window cut the limit (ns), and the
    /// limit before the cut.
    cut: Option<(f64, f64)>,
    /// The last window's latency (ns), concurrency and limit.
    previous: Option<(f64, f64, f64)>,
    /// Draining windows so far.
    drains: usize,
    /// Whether the last window reached the limit.
    saturated: bool,
    /// The start: every window so far doubled the limit. Meanwhile the
    /// limit reached two windows in a row drains nothing (its doubling is
    /// the test: a queue of ours hidden in `base` grows with it, and shows
    /// as latency above the tolerance).
    starting: bool,
    /// `base` is the first window's, closed early at the start: biased to
    /// the fastest calls, which end first. The next window's latency takes
    /// its place unless it rose by half (see `PROVISIONAL_RISE`).
    provisional: bool,
    /// Whether the last window's latency was above the tolerance.
    above: bool,
    /// In a draining window: the limit, the calls in flight, the latency
    /// (ns) and the answers a second of the window before it.
    draining: Option<(f64, f64, f64, Option<f64>)>,
    /// The initial limit.
    initial: f64,
    /// The limit before a run of doublings for calls that keep their
    /// places (rule 5), until an answered window without them.
    kept_from: Option<f64>,
    /// The limit before a hang's first cut (windows of drops only), while
    /// no window has been answered without a queue since: see
    /// [`QueueDelay`]'s rule 7.
    hang_from: Option<f64>,
    /// A growth test under way (see [`Probe`]).
    probe: Option<Probe>,
    /// The window of the last growth test: one in `drain_every` windows
    /// at most.
    probed_at: Option<usize>,
}

/// A growth test: under a queue allowance, a window at the limit whose
/// calls all slowed (its fastest a quarter above `base`), within the
/// allowance, grew the limit by up to a quarter (a queue of ours would
/// then fill the allowance). If the next window's latency does not rise
/// with its calls in flight, there is no queue of ours: the dependency got
/// slower and needs more calls in flight (rule 4). If it rises, a queue of
/// ours was seen.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The window that grew the limit.
    at: usize,
    /// Its calls in flight, latency (ns) and answers a second.
    busy: f64,
    rtt: f64,
    rate: Option<f64>,
}

/// How the limit grows while it is reached with no queue of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    /// By `increase` (5 %, at least 1) per window.
    Additive,
    /// ×2 per window, from the start until the first sign of queueing.
    Doubling,
    /// ×2 per window because the service got slower: no drain and no new
    /// slowdown looked for meanwhile; it ends at the first queueing (which
    /// shows a queue of ours) or in a window that does not reach the limit.
    DoublingAfterSlowdown,
}

impl Default for QueueDelay {
    fn default() -> Self {
        QueueDelayBuilder::default().build_unchecked()
    }
}

impl QueueDelay {
    /// A builder with the defaults.
    pub fn builder() -> QueueDelayBuilder {
        QueueDelayBuilder::default()
    }

    /// The latency of the service when nothing queues, in seconds (0 before
    /// the first window).
    pub fn base_rtt_secs(&self) -> f64 {
        self.base / 1e9
    }

    /// The latency at which the queueing delay is `tolerance` of the
    /// service's own.
    fn target(&self) -> f64 {
        (self.base * (1.0 + self.tolerance)).max(self.base + self.allowance)
    }

    fn clamp(&self, limit: f64) -> f64 {
        limit.clamp(self.min_limit as f64, self.max_limit as f64)
    }

    /// The first step after a slowdown from a limit of `from` reached: to
    /// what the window asked for if that is more than twice `from` (the
    /// requests that came per second × `rtt` (ns), Little's law, and a
    /// quarter more), at most four times `from` (refused requests that came
    /// back are counted each time).
    fn asked_after_slowdown(&self, sample: &WindowSample, rtt: f64, from: f64) -> f64 {
        let asked = sample
            .asked_per_sec()
            .map_or(0.0, |r| (1.25 * r * rtt / 1e9).ceil());
        self.clamp((from * 2.0).max(asked.min(from * 4.0)))
    }

    /// The service (or what it waits on) got slower, not busier: its
    /// latency `rtt` (ns) is its own now, and the same calls may need more
    /// in flight. How many is not known (a service of a few workers that
    /// got slower looks the same as one that only waits on another): the
    /// limit grows ×2 per window while it is reached, until the first sign
    /// of queueing — when `beyond_queueing` (no queue of ours could make
    /// this latency), or when no queue of ours showed in the last
    /// `drain_every` windows (one that did says the service has workers,
    /// and a slower one needs no more of them).
    fn follow_slower(&mut self, rtt: f64, beyond_queueing: bool) {
        self.base = rtt;
        self.cut = None;
        self.above = false;
        if beyond_queueing || self.over(self.queue_seen) {
            // (No drain while it grows: the first queueing ends the growth.)
            self.growth = Growth::DoublingAfterSlowdown;
        }
    }

    /// Whether `drain_every` windows or more have passed since window
    /// `at` (none: yes).
    fn over(&self, at: Option<usize>) -> bool {
        at.is_none_or(|at| self.windows >= at + self.drain_every)
    }
}

/// A run of cuts for answers cut off by the deadline: if the answers a
/// second fall with the limit, beyond chance, the limit refusing the calls
/// that would have been answered, while the answers' latency does not
/// fall with it, the calls run out of time at any limit (a slower
/// service, not a queue of ours), and the cuts are undone.
#[derive(Debug, Clone, Copy)]
struct CensoredCut {
    /// The window of the first cut.
    at: usize,
    /// The limit before it.
    limit_before: f64,
    /// The answers' latency in its window (ns).
    rtt: f64,
    /// The last window looked like answers lost with the limit.
    lost: bool,
    /// The answers a second of the first window at the lower limit, and
    /// that limit.
    reference: Option<(f64, f64)>,
}

/// The answers a second of a window (none when its length is not known).
fn answered_per_sec(sample: &WindowSample) -> Option<f64> {
    let span = sample.span().as_secs_f64();
    (span > 0.0).then(|| sample.samples() as f64 / span)
}

/// Whether a window's answers are fewer than `rate` a second would give
/// by more than chance: two standard deviations of a Poisson count.
fn fewer_beyond_chance(rate: f64, sample: &WindowSample) -> bool {
    let expected = rate * sample.span().as_secs_f64();
    expected - sample.samples() as f64 > 2.0 * expected.sqrt()
}

/// Whether a window's answers are more than `rate` a second would give by
/// more than chance (see [`fewer_beyond_chance`]).
fn more_beyond_chance(rate: f64, sample: &WindowSample) -> bool {
    let expected = rate * sample.span().as_secs_f64();
    sample.samples() as f64 - expected > 2.0 * expected.sqrt()
}

/// The requests a second a window's limit refused.
fn refused_per_sec(sample: &WindowSample) -> f64 {
    let span = sample.span().as_secs_f64();
    if span > 0.0 {
        sample.refused() as f64 / span
    } else {
        0.0
    }
}

/// The share of a window's calls that were answered (not dropped).
fn answered_share(sample: &WindowSample) -> f64 {
    let n = sample.samples() as f64;
    n / (n + sample.drops() as f64).max(1.0)
}

impl LimitAlgorithm for QueueDelay {
    fn limit(&self) -> usize {
        self.limit as usize
    }

    /// A draining window lasts a quarter of a window, or four times the
    /// latency before it if that is longer (the queue must clear and the
    /// service's own latency show); any other window at least three
    /// latencies. At most four configured windows.
    fn next_window(&self, configured: Duration) -> Duration {
        let rtt = |n: f64, r: f64| Duration::from_nanos((n * r) as u64);
        match (self.draining, self.previous) {
            (Some((_, _, before_rtt, _)), _) => configured
                .div_f64(4.0)
                .max(rtt(4.0, before_rtt))
                .min(configured * 4),
            (None, Some((last_rtt, _, _))) => {
                configured.max(rtt(3.0, last_rtt)).min(configured * 4)
            }
            (None, None) => configured,
        }
    }

    fn update(&mut self, sample: &WindowSample) -> usize {
        let before = self.limit;
        self.judge(sample);
        // (A limit held at its maximum does not double: the start ends.)
        if self.limit < before * 2.0 {
            self.starting = false;
        }
        self.limit()
    }

    fn judges_kept(&self) -> bool {
        true
    }

    fn judges_start(&self) -> bool {
        true
    }

    fn bounds(&self) -> Option<(usize, usize)> {
        Some((self.min_limit, self.max_limit))
    }

    fn set_bounds(&mut self, min: Option<usize>, max: Option<usize>) -> Result<usize, ConfigError> {
        (self.min_limit, self.max_limit) =
            super::aimd::new_bounds((self.min_limit, self.max_limit), min, max)?;
        self.limit = self.clamp(self.limit);
        Ok(self.limit())
    }
}

impl QueueDelay {
    /// Judges one window (see [`QueueDelay`]'s rules): the limit after it.
    fn judge(&mut self, sample: &WindowSample) -> usize {
        let before = self.limit;
        if sample.kept() == 0 && sample.rtt() > Duration::ZERO {
            // An answered window: a run of doublings for kept places, if
            // any, is over.
            self.kept_from = None;
        }
        let limit = self.judge_rules(sample);
        // An answered window that cut the limit after a hang (a queue of
        // ours, drops behind one, a drain): the limit is learned again
        // from the answers, and the hang's is not restored over it.
        if self.hang_from.is_some() && sample.rtt() > Duration::ZERO && self.limit < before {
            self.hang_from = None;
        }
        limit
    }

    /// [`judge`](Self::judge)'s rules.
    fn judge_rules(&mut self, sample: &WindowSample) -> usize {
        let rtt = sample.rtt().as_nanos() as f64;
        // Calls at the limit that keep their places (the layer found them:
        // `WindowSample::kept`), while the window's answers took at most
        // twice `base` (the layer's own bar: the route that hung may have
        // been the fastest), or there were none and nothing timed out
        // (every request refused; calls that all run out of time may be in
        // a queue of ours): they wait on something that is no queue of
        // ours (a dependency that hangs behind one route, while the others
        // are answered as before). The limit doubles, and grows ×2 per
        // window while it is reached, until the first queueing. (A
        // slowdown that shows in the next window is judged as one: its
        // latency is no queue of ours.)
        if sample.kept() > 0 {
            if self.base > 0.0 && rtt <= 2.0 * self.base && (rtt > 0.0 || !sample.did_drop()) {
                self.cut = None;
                self.above = false;
                self.draining = None;
                if self.growth == Growth::Additive {
                    self.growth = Growth::Doubling;
                }
                // (A hang's first calls keep their places too: the limit
                // before this run of doublings is the one rule 7 restores.)
                self.kept_from.get_or_insert(self.limit);
                self.limit = self.clamp(self.limit * 2.0);
            }
            // (Otherwise closed early for them, but with answers slowed by
            // a queue, or drops only: too short a window to judge by.)
            return self.limit();
        }
        if rtt <= 0.0 {
            // A window of drops only: no latency to learn from. Drops with
            // less than half the limit in flight are no queue of ours (calls
            // that could not make their deadline at any load): no cut.
            if sample.did_drop() && sample.max_inflight() as f64 >= self.limit / 2.0 {
                self.hang_from
                    .get_or_insert(self.kept_from.unwrap_or(self.limit));
                self.limit = self.clamp(self.limit / 2.0);
                // Every call timed out: a dependency hung, not a queue of
                // ours. Once calls are answered again, the limit doubles
                // back (it climbed 5 % a window: a minute of refusals after
                // a 30 s hang that had halved it to 1).
                self.growth = Growth::Doubling;
                self.draining = None;
                self.cut = None;
            }
            return self.limit();
        }
        // The first window answered without a queue and without drops
        // after a hang: the hang's cuts were no evidence of a queue of
        // ours, so the limit goes back to what it was before them (at most
        // the initial limit: the hang's first calls may have doubled it).
        if let Some(from) = self.hang_from {
            if self.base > 0.0 && rtt <= self.target() && !sample.did_drop() {
                self.hang_from = None;
                self.limit = self.limit.max(self.clamp(from.min(self.initial)));
            }
        }
        // Answers that said the handler ran out of time, while the other
        // calls were answered without a queue (no slower than the service
        // without one): handlers that waited on a dependency, not in a
        // queue of ours, each holding its place for the time it took; the
        // window's latency with them tells how far the limit must follow.
        // Otherwise (every call slow, or no `base` yet) they are drops.
        let held = sample.timed_out() > 0 && self.base > 0.0 && rtt <= self.target();
        let did_drop = if held {
            sample.drops() > 0
        } else {
            sample.did_drop()
        };
        let slower_rtt = if held {
            let n = sample.samples() as f64;
            let t = sample.timed_out() as f64;
            (rtt * n + sample.timed_out_rtt().as_nanos() as f64 * t) / (n + t)
        } else {
            rtt
        };
        self.windows += 1;
        self.floor.1 = self.floor.1.min(rtt);
        if self.windows % self.drain_every.max(1) == 0 {
            self.floor = (self.floor.1, f64::INFINITY);
        }
        let busy = sample.max_inflight() as f64;
        let saturated = busy >= self.limit.floor();
        if self.growth == Growth::DoublingAfterSlowdown
            && (!saturated || self.limit >= self.max_limit as f64)
        {
            // Growth after a slowdown is over: the limit covers the calls.
            self.growth = Growth::Doubling;
        }
        let was_saturated = std::mem::replace(&mut self.saturated, saturated);
        let previous = self.previous.replace((rtt, busy, self.limit));
        // The answered calls were slowed by a queue, and a fifth or more
        // of the calls ran out of time: their latency is cut off by the
        // deadline (the answered are the ones that came through in time)
        // and says less than the queue is. Judged by the share answered.
        let share = answered_share(sample);
        let censored = sample.drops().saturating_mul(4) >= sample.samples()
            && self.base > 0.0
            && rtt > self.base * (1.0 + self.tolerance);
        let answered_rate = answered_per_sec(sample);
        if let Some(cut) = self.censored_cut.as_mut() {
            match cut.reference {
                _ if !censored || self.windows > cut.at + 4 => self.censored_cut = None,
                // The first window at the lower limit: the answers a second
                // to judge the next by.
                None => cut.reference = answered_rate.map(|rate| (rate, self.limit)),
                Some((rate_before, limit_before)) => {
                    // What the cuts since took from the limit.
                    let taken = 1.0 - self.limit / limit_before;
                    let lost = taken >= 0.1
                        && answered_rate.is_some_and(|now| {
                            now < rate_before * (1.0 - taken / 2.0)
                                && refused_per_sec(sample) >= (rate_before - now) / 2.0
                                && fewer_beyond_chance(rate_before, sample)
                        })
                        && rtt >= cut.rtt * (1.0 - (1.0 - self.limit / cut.limit_before) / 4.0);
                    // Two windows in a row.
                    let seen_before = std::mem::replace(&mut cut.lost, lost);
                    if lost && seen_before {
                        // The cuts took answers with them, about in
                        // proportion, and turned those calls away: no
                        // queue of ours, but calls that run out of time at
                        // any limit (a service that got slower for the
                        // deadline). They are undone, and the answered
                        // calls' latency is the service's. (A queue of
                        // ours past the deadline gives as many answers, or
                        // more, at a lower limit; fewer answers with no
                        // more refused are fewer requests; and a few
                        // dozen answers a window vary by chance. Deep in
                        // a queue past the deadline, the answers a second
                        // fall with the limit too, until it is low enough
                        // for most calls to make it; but the answers'
                        // latency falls with the queue, where a slower
                        // service's stays: over real HTTP, a brownout's
                        // cuts from 100 to 34 were undone on the answers
                        // alone, their latency down from 303 to 241 ms;
                        // and from 100 to 34 again, on one window that
                        // looked so by a hair: it takes two in a row.)
                        let restore = cut.limit_before;
                        self.censored_cut = None;
                        self.censored_at = None;
                        self.draining = None;
                        self.limit = self.clamp(restore.max(self.limit));
                        self.follow_slower(rtt, false);
                        return self.limit();
                    }
                }
            }
        }
        if let Some(probe) = self.probe.take() {
            // A growth test's window: the calls in flight rose with the
            // limit; did the latency?
            let rose = busy / probe.busy.max(1.0) - 1.0;
            if probe.at + 1 == self.windows && (rose >= 0.1 || did_drop || censored) {
                // (Calls out of time say a queue of ours as well; so do
                // answers a second that held while the calls rose, a
                // dependency of fixed throughput whose queue was still
                // filling. A latency that fell is a dependency recovering:
                // no verdict.)
                let rate_rose = probe
                    .rate
                    .zip(answered_rate)
                    .is_none_or(|(before, now)| now >= before * (1.0 + rose / 4.0));
                if !did_drop
                    && !censored
                    && rate_rose
                    && rtt <= probe.rtt * (1.0 + rose / 2.0)
                    && rtt >= probe.rtt * 0.9
                    && rtt > self.base * 1.25
                {
                    // No queue of ours: a slower dependency (rule 4).
                    self.follow_slower(rtt, true);
                    if saturated {
                        self.limit = self.asked_after_slowdown(sample, rtt, self.limit);
                    }
                    return self.limit();
                }
                // (Faster again: no verdict.)
                if did_drop || censored || rtt >= probe.rtt * 0.9 {
                    self.queue_seen = Some(self.windows);
                }
            }
        }
        if let Some((before_limit, before_busy, before_rtt, before_rate)) = self.draining.take() {
            if censored {
                // The drain kept most calls out of time: still above the
                // knee, and its latency is no measure of the service's.
                // Cut on by the share answered (at most halved), and judge
                // the next window as after a cut.
                self.queue_seen = Some(self.windows);
                self.censored_at = Some(self.windows);
                self.drains += 1;
                self.next_drain = self.windows + 1;
                self.growth = Growth::Additive;
                self.censored_cut.get_or_insert(CensoredCut {
                    at: self.windows,
                    limit_before: before_limit,
                    rtt,
                    lost: false,
                    reference: None,
                });
                self.limit = self.clamp((self.limit * share).max(self.limit / 2.0));
                self.previous = Some((before_rtt, before_busy, before_limit));
                return self.limit();
            }
            // Fewer calls in flight for a while: if a queue of ours was
            // there, the latency fell with them, and the lowest latency seen
            // is closer to the service's own.
            if rtt < before_rtt * 0.9 {
                self.queue_seen = Some(self.windows);
            }
            // The answers a second held (fell by less than a quarter of
            // what the drain took from the calls in flight): what bounds them is
            // the service's throughput, not its latency, and calls above
            // it queue. With fewer calls in flight a queue's latency falls
            // as well, once the calls from before the drain are through; if
            // it did not, the window before the drain was still filling
            // the queue (its latency an average of calls that found it
            // shorter), or the drain held back no call. Either way no
            // measure of a slower service: `base` stays. Judged so under a queue
            // allowance (a client stack's limit), where the verdict of a
            // slower service grows the limit at once and moves the queue
            // it tolerates with `base`; a server's limit without one only
            // takes the latency for `base`, which its next drain corrects
            // (judged so, an earlier form of this check refused 90 of 3600
            // critical requests at three times its capacity, not 12). (A service that got slower
            // answers fewer calls a second at a lower limit: 300 ms calls
            // at 105 in flight, 350 a second, then about 260 through a
            // drain to 70. Taken for a slower one, a queue at a dependency
            // of one worker, sent three times what it answers, had the
            // client stack's limit go from 105 to 362, and 852 callers in
            // 12 s wait out their budgets of 1 s for nothing: `tests/shed`.)
            // (Beyond chance: a slower service's answers fall by about
            // three quarters of what the drain took, the calls from before
            // it answering at the old rate for a latency; and only after a
            // drain that took a tenth or more.)
            let drained = 1.0 - self.limit / before_busy.max(1.0);
            let rate_held = self.allowance > 0.0
                && drained >= 0.1
                && before_rate.zip(answered_rate).is_some_and(|(before, now)| {
                    now >= before * (1.0 - drained / 4.0)
                        && more_beyond_chance(before * (1.0 - 0.75 * drained), sample)
                });
            if rate_held {
                self.queue_seen = Some(self.windows);
            }
            // No fall, at a latency a quarter or more above `base`, after a
            // window that reached the limit: the dependency got slower, not
            // busier, and under a queue allowance (a client stack's limit,
            // whose dependency may run any number of calls at once) the
            // limit follows it as for a latency beyond any queue of ours
            // (rule 4): at once to what the window asked for, at most four
            // times the limit before the drain, and ×2 per window while it
            // is reached. (Back to where it was, growing 5 % a window, it
            // refused for the whole of a 10 s slowdown in the storm's "slow
            // dependency": 300 ms calls at 400 a second need 120 in flight,
            // and every other window drained again.)
            if self.allowance > 0.0
                && !rate_held
                && self.base > 0.0
                && rtt >= before_rtt * 0.9
                && rtt > self.base * 1.25
                && before_busy >= before_limit.floor()
            {
                self.follow_slower(rtt, true);
                self.limit = self.asked_after_slowdown(sample, rtt, before_limit);
                self.previous = Some((before_rtt, before_busy, before_limit));
                return self.limit();
            }
            if self.base <= 0.0 || rtt < self.base || (rtt >= before_rtt * 0.9 && !rate_held) {
                // (No fall: no queue of ours at the drained limit, so this is
                // the service's own latency, slower or faster than `base`.)
                self.base = rtt;
            }
            // The latency fell by half as much as the calls in flight or
            // more: still above the knee, drain again at once. The first
            // two drains are followed by a third soon after.
            let ratio = before_busy / self.limit.max(1.0);
            let fell = before_rtt > rtt * (1.0 + (ratio - 1.0) / 2.0);
            self.drains += 1;
            self.next_drain = self.windows
                + if fell {
                    1
                } else if self.drains < 2 {
                    3
                } else {
                    self.drain_every
                };
            // Back to where the window before it was, but no higher than the
            // limit at which the queueing delay would be `tolerance`.
            let target = self.target();
            let knee = if before_rtt > target {
                before_busy * target / before_rtt
            } else {
                before_limit
            };
            self.limit = self.clamp(knee.max(self.limit));
            // The next window is compared with the one before the drain.
            self.previous = Some((before_rtt, before_busy, before_limit));
            return self.limit();
        }
        // More latency than a queue of ours can make: with at most `busy`
        // calls in flight, a call waits for `busy - 1` others at most, so
        // on average it takes well under `busy ×` the service's latency
        // without a queue (the lowest of the last windows), whatever the
        // service can run at once. The service, or what it waits on, got
        // slower (unless `base` already says so).
        let floor = self.floor.0.min(self.floor.1);
        // (Not while the limit grows after a slowdown: a queue of ours that
        // its growth makes is judged as a queue, and ends it.)
        if self.windows > 2
            && self.growth != Growth::DoublingAfterSlowdown
            && self
                .censored_at
                .max(self.queue_seen)
                .is_none_or(|at| self.windows > at + 2)
            && slower_rtt > busy.max(1.0) * floor
            && slower_rtt > self.base * 1.25
        {
            // (The service's own latency is the answered calls'.)
            self.follow_slower(rtt, true);
            if saturated {
                // Reached, with no queue of ours: the first step at once,
                // to what the window asked for if that is more (the
                // requests that came per second × the latency now, Little's
                // law, and a quarter more, as the window's average latency
                // still holds calls from before the slowdown: a dependency
                // 80 times slower at 200 requests a second needs 80 in
                // flight, reached in one window instead of three doublings
                // from 20), at most four times the limit (refused requests
                // that came back are counted each time).
                self.limit = self.asked_after_slowdown(sample, slower_rtt, self.limit);
            }
            return self.limit();
        }
        // The service changed speed while this limiter's own load did not:
        // latency that moves with a steady limit and steady concurrency is
        // the service's, not a queue of ours. Scale `base` with it.
        if let Some((prev_rtt, prev_busy, prev_limit)) = previous {
            let steady = (self.limit - prev_limit).abs() <= 0.1 * prev_limit
                && (busy - prev_busy).abs() <= 0.1 * prev_busy + 1.0;
            let ratio = rtt / prev_rtt;
            // (Not from the first window: it began before the load did.)
            if steady && self.windows > 2 && self.base > 0.0 && !(0.8..=1.25).contains(&ratio) {
                self.base *= ratio;
            }
        }
        // Cuts that took a tenth or more of the calls in flight and brought
        // the latency down by less than half of that mean the service got
        // slower, not busier: undo them, and the latency now (with the limit
        // cut, no queue) is the service's own. Counted over a run of cuts,
        // so that several small ones are judged as one.
        let cutting = self.cut.take();
        if let Some((before_rtt, before_limit)) = cutting {
            // What the cuts took from what was in flight (`before_limit` is
            // the lower of the limit and the calls in flight then).
            let taken = 1.0 - self.limit / before_limit;
            // A queue's latency falls with the calls in flight, by about
            // what was taken; this one fell by less than half of that.
            if taken >= 0.1 && rtt <= before_rtt * (1.0 - taken / 2.0) {
                self.queue_seen = Some(self.windows);
            }
            // (This also undoes cuts for answers cut off by the deadline,
            // whose latency hardly falls with the queue, when it stays
            // above `target`: never under a queue allowance of the
            // attempt timeout, which the deadline keeps the answers
            // under. Without one, a server's cuts so are undone after a
            // window: in the storm's "queueing dependency past the
            // deadline", skipping that for them served 80.2 % where this
            // served 81.6 %, before the client stack's limit held the
            // requests over it in its queue.)
            if taken >= 0.1 && rtt > before_rtt * (1.0 - taken / 2.0) && rtt > self.target() {
                self.limit = self.clamp(before_limit);
                self.follow_slower(rtt, false);
                return self.limit();
            }
        }
        // (The first window's latency, closed early at the start, is
        // biased to the fastest calls, which end first: the next window's
        // takes its place unless it rose by half, which a doubling past
        // the knee does.)
        let provisional = std::mem::replace(&mut self.provisional, false);
        if self.base <= 0.0
            || rtt < self.base
            || (provisional
                && !did_drop
                && rtt <= self.base * (1.0 + PROVISIONAL_RISE.max(self.tolerance)))
        {
            self.provisional = self.base <= 0.0 && self.starting;
            self.base = rtt;
        }
        // Drain when a queue of ours may be hiding in `base`: the limit was
        // reached two windows in a row, or the latency is above the
        // tolerance. A service well within its capacity never drains.
        let target = self.target();
        let above = rtt > target;
        let was_above = std::mem::replace(&mut self.above, above);
        // (Latency alone suspects a queue only while at least half the
        // limit is in flight: below that the limit is not what the calls
        // wait on, and a dependency's latency moving with light load is
        // not read as a queue of ours.)
        let used = busy >= self.limit / 2.0;
        // Below the limit, a queue that stands through the window delays
        // every call, the fastest too: a window whose fastest call took no
        // longer than the service without a queue had calls that waited for
        // nothing, and an average raised by some slow calls (a handler that
        // retried its dependency, a mix of cheap and costly requests) is
        // neither drained nor cut for. At the limit, the average is judged
        // alone.
        let stood = saturated
            || sample
                .fastest()
                .is_none_or(|f| f.as_nanos() as f64 > target);
        let suspect =
            (saturated && was_saturated && !self.starting) || (above && was_above && used && stood);
        // A growth test in place of a drain: under a queue allowance, at
        // the limit, every call slowed (the window's fastest too, well
        // above `base`), the latency within the allowance, and no queue of
        // ours seen lately. The limit grows to where a queue of ours would fill the
        // allowance, by a quarter at most and a tenth at least.
        let grow_by = (target / rtt).min(1.25);
        let grown = self.clamp((self.limit * grow_by).max(self.limit + 1.0));
        if self.allowance > 0.0
            && grown > self.limit
            && self.over(self.probed_at)
            && saturated
            && !self.starting
            && !above
            && !did_drop
            && grow_by >= 1.1
            && sample
                .fastest()
                .is_some_and(|f| f.as_nanos() as f64 > self.base * 1.25)
            && self.growth != Growth::DoublingAfterSlowdown
            && self.over(self.queue_seen)
        {
            self.probe = Some(Probe {
                at: self.windows,
                busy,
                rtt,
                rate: answered_rate,
            });
            self.probed_at = Some(self.windows);
            self.limit = grown;
            return self.limit();
        }
        if suspect
            && self.growth != Growth::DoublingAfterSlowdown
            && self.windows >= self.next_drain
        {
            // Two thirds of the calls in flight (half of a few: a limit is
            // a whole number).
            let depth = if busy.min(self.limit) >= 8.0 {
                1.5
            } else {
                2.0
            };
            self.draining = Some((self.limit, self.limit.min(busy), rtt, answered_rate));
            self.limit = self.clamp((self.limit.min(busy) / depth).ceil());
            return self.limit();
        }
        let queueing = above && used && stood;
        // Calls that timed out or were shed below count only with some
        // queueing and half the limit in flight: a service that got slower
        // times calls out at any limit, and calls that could not make
        // their deadline at any load are not a queue of ours.
        let dropped = did_drop && used && rtt > self.base * (1.0 + self.tolerance / 2.0);
        let before = self.limit;
        if queueing || dropped || (censored && used) {
            // A queue: shrink to where it would be `tolerance` of the
            // service time; calls that timed out or were shed below: by a
            // tenth at least.
            let mut factor = if queueing { target / rtt } else { 1.0 };
            if dropped {
                factor = factor.min(0.9);
            }
            if censored && used {
                // Most calls out of time behind a queue: down to the share
                // answered in time (at most halved; see `censored`).
                factor = factor.min(share);
                self.censored_at = Some(self.windows);
                self.censored_cut.get_or_insert(CensoredCut {
                    at: self.windows,
                    limit_before: self.limit,
                    rtt,
                    lost: false,
                    reference: None,
                });
            }
            if self.growth == Growth::DoublingAfterSlowdown {
                self.queue_seen = Some(self.windows);
            }
            self.growth = Growth::Additive;
            // (At the start, the calls in flight may be a burst's, above
            // the limit: the knee is where they would queue `tolerance`.)
            let from = if self.starting {
                busy.max(self.limit)
            } else {
                self.limit
            };
            // (A queue ends the start: less than twice the limit.)
            let most = if self.starting {
                self.limit * 2.0 - 1.0
            } else {
                f64::INFINITY
            };
            self.limit = self.clamp((from * factor).max(self.limit / 2.0).min(most));
            if self.limit < before.min(busy) {
                // The first cut of a run sets the mark to judge them by.
                self.cut = Some(cutting.unwrap_or((rtt, before.min(busy))));
            }
        } else if rtt <= target
            && busy >= self.limit / 2.0
            && rtt > self.base * (1.0 + self.tolerance)
        {
            // A queue within the allowance: tolerated, and grown into by
            // `increase` a window (doubled, it filled the allowance within
            // a window or two and passed it before the next could judge).
            // Growth after a slowdown meets it, and ends.
            if self.growth == Growth::DoublingAfterSlowdown {
                self.queue_seen = Some(self.windows);
            }
            self.growth = Growth::Additive;
            if saturated {
                self.limit = self.clamp(self.limit + (self.limit * self.increase).max(1.0));
            }
        } else if rtt <= target && busy >= self.limit / 2.0 {
            // No queue, and the limit was used: grow.
            self.limit = if self.growth != Growth::Additive && saturated {
                self.clamp(self.limit * 2.0)
            } else {
                self.clamp(self.limit + (self.limit * self.increase).max(1.0))
            };
        }
        self.limit()
    }
}

/// Builds a [`QueueDelay`]; see its docs for the defaults.
#[derive(Debug, Clone)]
pub struct QueueDelayBuilder {
    initial_limit: usize,
    min_limit: usize,
    max_limit: usize,
    tolerance: f64,
    allowance: Duration,
    increase: f64,
    drain_every: usize,
}

impl Default for QueueDelayBuilder {
    fn default() -> Self {
        let (initial_limit, min_limit, max_limit) = Self::DEFAULT_LIMITS;
        QueueDelayBuilder {
            initial_limit,
            min_limit,
            max_limit,
            tolerance: 0.1,
            allowance: Duration::ZERO,
            increase: 0.05,
            drain_every: 20,
        }
    }
}

impl QueueDelayBuilder {
    super::aimd::limit_setters!(20, 1, 1000);

    /// The queueing delay tolerated, as a share of the service's own
    /// latency (default 0.1; `0 < tolerance ≤ 10`).
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The queueing delay tolerated whatever the service's own latency,
    /// when more than `tolerance` of it (default none). A client stack's
    /// limit on the attempts to a dependency tolerates its attempt
    /// timeout: a queue at the dependency that its callers can wait out is
    /// theirs to wait; attempts that time out cut the limit.
    pub fn queue_allowance(mut self, allowance: Duration) -> Self {
        self.allowance = allowance;
        self
    }

    /// The growth per window once queueing was seen, as a share of the limit
    /// (default 0.05, at least 1 a window; `0 < increase ≤ 1`).
    pub fn increase(mut self, increase: f64) -> Self {
        self.increase = increase;
        self
    }

    /// One draining window in this many loaded windows (default 20;
    /// `2..=1000`).
    pub fn drain_every(mut self, windows: usize) -> Self {
        self.drain_every = windows;
        self
    }

    /// Builds the algorithm.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the limits are out of order (`1 ≤ min ≤
    /// initial ≤ max`), or a setting is outside its range.
    pub fn build(self) -> Result<QueueDelay, ConfigError> {
        super::aimd::validate_limits(self.initial_limit, self.min_limit, self.max_limit)?;
        let err = |m: String| Err(ConfigError::new("adaptive_limit", m));
        if !(self.tolerance > 0.0 && self.tolerance <= 10.0) {
            return err(format!(
                "tolerance must be in (0, 10], got {}",
                self.tolerance
            ));
        }
        if !(self.increase > 0.0 && self.increase <= 1.0) {
            return err(format!("increase must be in (0, 1], got {}", self.increase));
        }
        if !(2..=1000).contains(&self.drain_every) {
            return err(format!(
                "drain_every must be in 2..=1000 windows, got {}",
                self.drain_every
            ));
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> QueueDelay {
        QueueDelay {
            limit: self.initial_limit as f64,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            tolerance: self.tolerance,
            allowance: self.allowance.as_nanos() as f64,
            increase: self.increase,
            drain_every: self.drain_every,
            base: 0.0,
            growth: Growth::Doubling,
            queue_seen: None,
            censored_at: None,
            censored_cut: None,
            floor: (f64::INFINITY, f64::INFINITY),
            windows: 0,
            next_drain: 1,
            cut: None,
            previous: None,
            drains: 0,
            saturated: false,
            starting: true,
            provisional: false,
            above: false,
            draining: None,
            initial: self.initial_limit as f64,
            kept_from: None,
            hang_from: None,
            probe: None,
            probed_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn window(ms: f64, busy: usize) -> WindowSample {
        WindowSample::new(Duration::from_secs_f64(ms / 1e3), busy, 0).with_samples(100)
    }

    /// A client stack's limit: from 100, a queue allowance of 500 ms.
    fn with_allowance() -> QueueDelay {
        QueueDelay::builder()
            .initial_limit(100)
            .queue_allowance(Duration::from_millis(500))
            .build()
            .unwrap()
    }

    /// Feeds `n` identical windows and returns the limit after them.
    fn feed(q: &mut QueueDelay, n: usize, ms: f64, busy: impl Fn(usize) -> usize) -> usize {
        for _ in 0..n {
            let b = busy(q.limit());
            q.update(&window(ms, b));
        }
        q.limit()
    }

    /// With a queue allowance (a client stack's limit), a queue within it
    /// is not cut for, and grown into by `increase` a window, not ×2: from
    /// 100 doubling, the limit ran to 200 in one window of a dependency
    /// that came back cold (an outside trial over tonic: its queue near
    /// 200, a third of the calls to it out of time; 97 to 122, growing so).
    #[test]
    fn a_queue_within_the_allowance_is_grown_into_slowly() {
        let mut q = with_allowance();
        // Light load: no growth, the start ends, `base` is 20 ms.
        assert_eq!(feed(&mut q, 3, 20.0, |_| 10), 100);
        // At the limit, 280 ms a call: a queue within the allowance.
        assert_eq!(q.update(&window(280.0, 100)), 105);
        // Past the allowance (20 ms and 500): cut.
        assert!(q.update(&window(900.0, 80)) < 105);
        // Without an allowance, 280 ms is a queue: cut at once.
        let mut plain = QueueDelay::builder().initial_limit(100).build().unwrap();
        feed(&mut plain, 3, 20.0, |_| 10);
        assert!(plain.update(&window(280.0, 100)) < 100);
    }

    /// With a queue allowance, a drain that finds no queue of its own after
    /// the dependency got slower (300 ms where it answered in 20, the limit
    /// reached two windows in a row) follows it as a slower service: to
    /// what the drain's window asked for (Little's law, a quarter more), at
    /// most four times the limit before the drain, and no drain while it
    /// grows. Without an allowance (a server's own work), back to where
    /// it was.
    #[test]
    fn a_drain_that_finds_a_slower_dependency_follows_it() {
        let mut q = with_allowance();
        assert_eq!(feed(&mut q, 3, 20.0, |_| 10), 100);
        // At the limit, slower: a queue within the allowance, then a drain.
        assert_eq!(q.update(&window(290.0, 100)), 105);
        q.update(&window(300.0, 105));
        let drained = q.limit();
        assert_eq!(drained, 70);
        // The drain: 300 ms still, 400 requests a second asked.
        let drain = window(300.0, 70).with_refused(100, Duration::from_secs(1));
        q.update(&drain);
        // 1.25 × (100 + 100) a second × 0.3 s = 75, less than 2 × 105.
        assert_eq!(q.limit(), 210);
        assert!((q.base_rtt_secs() - 0.300).abs() < 1e-6);
        assert_eq!(q.growth, Growth::DoublingAfterSlowdown);
        // Asked for more: up to four times the limit before the drain.
        let mut asked = with_allowance();
        feed(&mut asked, 3, 20.0, |_| 10);
        asked.update(&window(290.0, 100));
        asked.update(&window(300.0, 105));
        asked.update(&window(300.0, 70).with_refused(1000, Duration::from_secs(1)));
        // 1.25 × 1100 × 0.3 = 413 (at most 420).
        assert_eq!(asked.limit(), 413);
        // A server's limit, no allowance: the same drain goes back to where it was.
        let mut plain = QueueDelay::builder().initial_limit(100).build().unwrap();
        feed(&mut plain, 3, 20.0, |_| 10);
        plain.update(&window(20.0, 100));
        let before = plain.limit();
        plain.update(&window(21.0, before));
        let drained = plain.limit();
        assert!(drained < before, "{drained} < {before}");
        plain.update(&window(21.0, drained));
        assert_eq!(plain.limit(), before);
    }

    /// With a queue allowance, a window at the limit whose calls all slowed
    /// (its fastest too) within the allowance grows the limit to where a
    /// queue of ours would fill it, by a quarter at most, instead of
    /// draining: if the next window's latency does not rise with its calls
    /// in flight, the dependency got slower and the limit follows it (×2
    /// at least); if it rises, a queue of ours is seen and the limit does
    /// not follow. A window that still holds calls from before the
    /// slowdown (its fastest at `base`) tests nothing.
    #[test]
    fn a_growth_test_tells_a_slower_dependency_from_a_queue_of_ours() {
        let fastest = |ms: f64| Duration::from_secs_f64(ms / 1e3);
        let slowed = |ms: f64, busy: usize| window(ms, busy).with_fastest(fastest(ms * 0.9));
        let start = || {
            let mut q = with_allowance();
            assert_eq!(feed(&mut q, 3, 20.0, |_| 10), 100);
            // The slowdown's first window, its fastest call from before.
            assert_eq!(
                q.update(&window(250.0, 100).with_fastest(fastest(20.0))),
                105
            );
            assert!(q.probe.is_none());
            // Every call slowed, 300 ms at the limit: 520 / 300 is more
            // than a quarter.
            assert_eq!(q.update(&slowed(300.0, 105)), 131);
            assert!(q.probe.is_some());
            q
        };
        // The latency held at 131 in flight: a slower dependency.
        let mut slower = start();
        assert_eq!(slower.update(&slowed(300.0, 131)), 262);
        assert_eq!(slower.growth, Growth::DoublingAfterSlowdown);
        assert!((slower.base_rtt_secs() - 0.300).abs() < 1e-6);
        // It rose with them: a queue of ours.
        let mut queue = start();
        let after = queue.update(&slowed(380.0, 131));
        assert!(after <= 131, "{after}");
        assert_eq!(queue.queue_seen, Some(queue.windows));
        assert_ne!(queue.growth, Growth::DoublingAfterSlowdown);
        // Faster again (a dependency recovering): no verdict, and no new
        // test within `drain_every` windows.
        let mut recovering = start();
        assert!(recovering.update(&slowed(200.0, 131)) <= 131);
        assert_ne!(recovering.growth, Growth::DoublingAfterSlowdown);
        assert_eq!(recovering.queue_seen, None);
        recovering.update(&slowed(300.0, 131));
        assert!(recovering.probe.is_none());
        // Calls out of time in the test's window say a queue too.
        let mut dropped = start();
        let late = WindowSample::new(Duration::from_millis(300), 131, 40)
            .with_samples(100)
            .with_fastest(fastest(270.0));
        assert!(dropped.update(&late) <= 131);
        assert_eq!(dropped.queue_seen, Some(dropped.windows));
        // Near the allowance, too little room to test (500 ms of 540: the
        // latency doubled at a steady load, so `base` did, to 40 ms): the
        // limit reached two windows in a row drains, to two thirds.
        let mut near = with_allowance();
        feed(&mut near, 3, 20.0, |_| 10);
        near.update(&window(250.0, 100).with_fastest(fastest(20.0)));
        assert_eq!(near.update(&slowed(500.0, 105)), 70);
        assert!(near.probe.is_none());
    }

    /// A window of `answered` answers at `ms` over `secs`, with `busy` in
    /// flight.
    fn spanned(ms: f64, busy: usize, answered: u64, secs: f64) -> WindowSample {
        WindowSample::new(Duration::from_secs_f64(ms / 1e3), busy, 0)
            .with_samples(answered)
            .with_refused(0, Duration::from_secs_f64(secs))
    }

    /// A drain whose latency does not fall: a slower dependency if the
    /// answers a second fell with the calls in flight (300 ms calls, 350 a
    /// second at 105, 260 a second through a drain to 70), followed at
    /// once; a queue at a dependency of fixed throughput, still filling in
    /// the window before the drain, if they held (350 a second through it):
    /// `base` stays and the limit goes back to where it was.
    #[test]
    fn a_drain_whose_answers_held_is_no_slower_dependency() {
        let drain = |answered: u64| {
            let mut q = with_allowance();
            assert_eq!(feed(&mut q, 3, 20.0, |_| 10), 100);
            assert_eq!(q.update(&spanned(290.0, 100, 345, 1.0)), 105);
            q.update(&spanned(300.0, 105, 350, 1.0));
            assert_eq!(q.limit(), 70);
            q.update(&spanned(300.0, 70, answered, 1.2));
            q
        };
        let slower = drain(312);
        assert_eq!(slower.limit(), 210);
        assert!((slower.base_rtt_secs() - 0.300).abs() < 1e-6);
        assert_eq!(slower.growth, Growth::DoublingAfterSlowdown);
        let held = drain(420);
        assert_eq!(held.limit(), 105);
        assert!((held.base_rtt_secs() - 0.020).abs() < 1e-6);
        assert_eq!(held.growth, Growth::Additive);
        // Within chance of what a slower one gives: followed.
        assert_eq!(drain(330).limit(), 210);
    }

    /// A window of `answered` answers at `ms` and `drops` out of time, with
    /// `busy` in flight and `refused` refused over one second.
    fn cut_off(ms: f64, busy: usize, answered: u64, drops: u64, refused: u64) -> WindowSample {
        WindowSample::new(Duration::from_secs_f64(ms / 1e3), busy, drops)
            .with_samples(answered)
            .with_refused(refused, Duration::from_secs(1))
    }

    /// A queue past the deadline: the answers are the calls that came
    /// through in time, at a latency the deadline caps, so the answers'
    /// latency alone (here within the allowance) would keep the limit.
    /// With a fifth or more out of time it is cut to the share answered,
    /// at most halved; and it stays cut while the answers a second hold
    /// (a queue of ours: the workers answer as many at a lower limit).
    #[test]
    fn answers_cut_off_by_the_deadline_cut_the_limit_to_the_share_answered() {
        let mut q = with_allowance();
        assert_eq!(feed(&mut q, 3, 10.0, |_| 10), 100);
        // 70 answered of 100, slowed: cut to 70 %.
        assert_eq!(q.update(&cut_off(300.0, 100, 70, 30, 0)), 70);
        // At the limit two windows in a row: a draining window, two
        // thirds of it.
        assert_eq!(q.update(&cut_off(290.0, 70, 40, 60, 200)), 47);
        // It kept 50 of 90 out of time (as many answers a second): still
        // past the deadline, cut on by the share answered, at most halved
        // (judged as a draining window, the limit would have gone back to
        // 70).
        assert_eq!(q.update(&cut_off(250.0, 47, 40, 50, 300)), 23);
        // A fifth out of time, answers as fast as without a queue (one
        // route's dependency hangs): no cut for them.
        let mut hang = with_allowance();
        feed(&mut hang, 3, 10.0, |_| 10);
        assert!(hang.update(&cut_off(10.0, 100, 50, 50, 0)) >= 100);
    }

    /// Calls that run out of time at any limit (a service too slow for the
    /// deadline, with no queue): the cuts lose answers a second about in
    /// proportion, the limit refusing them, while the answers' latency
    /// stays. Two windows so, and the cuts are undone; one is chance.
    #[test]
    fn cuts_that_lose_answers_without_a_queue_are_undone() {
        let mut q = with_allowance();
        feed(&mut q, 3, 10.0, |_| 10);
        // 700 answered of 1000, at 85 ms: cut to 70 %.
        assert_eq!(q.update(&cut_off(85.0, 100, 700, 300, 0)), 70);
        // At 70: 490 answers, the reference; cut on to 49.
        // At 70 (reached twice: a draining window next, at 47): 490
        // answers, the reference.
        assert_eq!(q.update(&cut_off(85.0, 70, 490, 210, 300)), 47);
        // At 47: 343 answers (30 % fewer, the limit refusing 500), the
        // latency the same: the first window so; cut on by the share.
        assert_eq!(q.update(&cut_off(85.0, 47, 343, 147, 500)), 32);
        // The second in a row: undone, to the limit before the first cut.
        assert_eq!(q.update(&cut_off(85.0, 32, 240, 100, 650)), 100);
        // 85 ms is now the service's own: a drain finds no queue, and the
        // limit grows again.
        assert_eq!(q.update(&cut_off(85.0, 100, 700, 300, 0)), 67);
        assert_eq!(q.update(&cut_off(85.0, 67, 470, 200, 300)), 100);
        assert_eq!(q.update(&cut_off(85.0, 100, 700, 300, 0)), 105);
    }

    /// A dependency 80 times slower, its window's refusals counted (each
    /// retry of a refused request again): the limit goes in one step to
    /// what the window asked for, at most four times itself.
    #[test]
    fn a_slower_service_is_followed_in_one_step_at_most_four_times_the_limit() {
        let slower = |refused: u64| {
            let mut q = QueueDelay::builder().build().unwrap();
            feed(&mut q, 5, 5.0, |_| 2);
            assert_eq!(q.limit(), 20);
            let w = WindowSample::new(Duration::from_millis(400), 20, 0)
                .with_samples(50)
                .with_refused(refused, Duration::from_secs(1));
            q.update(&w);
            q.limit()
        };
        // 200 requests a second (50 answered, 150 refused) × 400 ms × 1.25
        // is 100: four times 20 at most.
        assert_eq!(slower(150), 80);
        // 150 a second: 75.
        assert_eq!(slower(100), 75);
        // 60 a second: twice the limit, more than what was asked.
        assert_eq!(slower(10), 40);
        // Refused requests that came back again and again: 5050 a second.
        assert_eq!(slower(5000), 80);
    }

    /// After a healthy spell at 5 ms, windows in which 100 answers said the
    /// handler ran out of time at 940 ms, beside 50 answered in what
    /// `answered(limit)` says, with `busy(limit)` calls in flight: the
    /// limits after each.
    fn with_timed_out(
        answered: impl Fn(usize) -> f64,
        busy: impl Fn(usize) -> usize,
    ) -> Vec<usize> {
        let mut q = QueueDelay::builder().build().unwrap();
        feed(&mut q, 5, 5.0, |_| 2);
        (0..6)
            .map(|_| {
                let l = q.limit();
                let w = WindowSample::new(Duration::from_secs_f64(answered(l) / 1e3), busy(l), 0)
                    .with_samples(50)
                    .with_timed_out(100, Duration::from_millis(940))
                    .with_refused(100, Duration::from_secs(1));
                q.update(&w);
                q.limit()
            })
            .collect()
    }

    /// Answers that ran out of time beside answers at the service's own
    /// latency are handlers that waited on a dependency that hung: the
    /// limit follows the time they held, as a slower dependency's, until it
    /// holds the calls that come (190 here). Beside answers slowed by a
    /// queue of ours (8 workers at 5 ms), they are drops: the limit stays
    /// near the workers, not grown to hold them (taken as samples there,
    /// it grew to 202 in six windows).
    #[test]
    fn timed_out_answers_are_samples_only_beside_answers_that_met_no_queue() {
        let hung = with_timed_out(|_| 5.0, |l| l.min(190));
        // (Then 5 % a window while half of it is used, as any limit.)
        assert_eq!(hung, [80, 160, 320, 336, 352, 370]);
        let queued = with_timed_out(|l| 5.0 * (l as f64 / 8.0).max(1.0), |l| l);
        assert!(queued.iter().all(|&l| l <= 40), "{queued:?}");
    }

    /// At the limit, refusing, with answers at the service's own latency
    /// (5 ms, after a spell of 8 workers under unlimited demand that showed
    /// a queue): windows of 100 ms in which `kept(limit)` calls at the
    /// limit kept their places, and the limits after each.
    fn at_the_limit(kept: impl Fn(usize) -> usize) -> Vec<usize> {
        let mut q = QueueDelay::default();
        run_workers(&mut q, 40, 5.0, 8);
        (0..5)
            .map(|_| {
                let l = q.limit();
                let w = window(5.0, l)
                    .with_refused(50, Duration::from_millis(100))
                    .with_kept(kept(l));
                q.update(&w);
                q.limit()
            })
            .collect()
    }

    /// Calls that keep their places at the limit (a dependency that hangs
    /// behind one route, while the answers met no queue) double it every
    /// window, with no drain; calls that come and go at the limit grow it
    /// a little, or drain it, as before.
    #[test]
    fn calls_that_keep_their_places_at_the_limit_double_it() {
        let kept = at_the_limit(|l| l - 1);
        assert!(kept.windows(2).all(|w| w[1] >= 2 * w[0]), "{kept:?}");
        assert!(kept[0] >= 18 && kept[4] >= 16 * kept[0], "{kept:?}");
        let moving = at_the_limit(|_| 0);
        assert!(
            moving.windows(2).all(|w| w[1] <= w[0] + 1 + w[0] / 20),
            "{moving:?}"
        );
    }

    /// A window closed early for calls that keep their places, whose
    /// answers took more than twice `base` (a queue, or every answer
    /// slower), or that held drops only, changes nothing: too short to
    /// judge by.
    #[test]
    fn a_kept_window_of_slow_answers_or_drops_changes_nothing() {
        let mut q = QueueDelay::default();
        run_workers(&mut q, 40, 5.0, 8);
        let l = q.limit();
        let slow = window(15.0, l)
            .with_refused(50, Duration::from_millis(100))
            .with_kept(l - 1);
        assert_eq!(q.update(&slow), l);
        let drops = WindowSample::new(Duration::ZERO, l, 30)
            .with_samples(0)
            .with_refused(50, Duration::from_millis(100))
            .with_kept(l - 1);
        assert_eq!(q.update(&drops), l);
        // Without `kept`, the same window is judged: `base` follows a
        // service that got slower (rule 4), or the limit is cut.
        let mut judged = q.clone();
        judged.update(&window(15.0, l));
        assert!(judged.limit() < l || judged.base_rtt_secs() > q.base_rtt_secs());
    }

    /// A service of `workers` workers under unlimited demand (the limit
    /// always reached): a call takes `ms`, or longer in a queue of ours.
    fn run_workers(q: &mut QueueDelay, n: usize, ms: f64, workers: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let busy = q.limit();
                let rtt = ms * (busy as f64 / workers as f64).max(1.0);
                q.update(&window(rtt, busy));
                q.limit()
            })
            .collect()
    }

    /// A service of a few workers that gets far slower (more than its
    /// workers can explain) is probed once: the queue that the probe's
    /// growth makes ends it, and the limit settles at the workers again. It
    /// used to read its own growing queue as the service getting slower
    /// still, and doubled the limit to its maximum.
    #[test]
    fn a_slower_service_of_few_workers_is_not_given_more_than_them() {
        for (workers, times) in [(2, 10.0), (4, 10.0), (4, 60.0)] {
            let mut q = QueueDelay::default();
            run_workers(&mut q, 40, 5.0, workers);
            let after = run_workers(&mut q, 60, 5.0 * times, workers);
            let settled = &after[30..];
            assert!(
                after.iter().all(|&l| l <= 8 * workers),
                "{workers} workers, ×{times}: {after:?}"
            );
            assert!(
                // (A draining window dips below the workers for a while.)
                settled
                    .iter()
                    .all(|&l| l >= workers / 2 && l <= 2 * workers),
                "{workers} workers, ×{times}: {settled:?}"
            );
        }
    }

    /// A dependency that hangs for 30 windows (every call times out: windows
    /// of drops only) halves the limit to its floor; once it answers again
    /// the limit doubles back within a few windows. It grew 5 % a window
    /// from there: about 66 windows of refusals for a learned 200.
    #[test]
    fn the_limit_doubles_back_after_a_hang() {
        let mut q = QueueDelay::default();
        run_workers(&mut q, 60, 5.0, 200);
        let learned = q.limit();
        assert!(learned >= 100, "learned {learned}");
        for _ in 0..30 {
            let busy = q.limit();
            q.update(&WindowSample::new(Duration::ZERO, busy, busy as u64));
        }
        assert_eq!(q.limit(), 1);
        let back = run_workers(&mut q, 12, 5.0, 200);
        assert!(
            back[11] >= learned / 2,
            "learned {learned}, after the hang: {back:?}"
        );
    }

    /// At a light load (2 in flight), a hang's windows of drops only halve
    /// a client stack's limit; the first window answered without a queue
    /// puts it back to the 100 it was, where nothing else would (2 in
    /// flight make no limit grow). A window with drops does not.
    #[test]
    fn a_hangs_cuts_are_undone_once_answered_without_a_queue() {
        let mut q = with_allowance();
        for _ in 0..5 {
            q.update(&window(5.0, 2));
        }
        assert_eq!(q.limit(), 100);
        for _ in 0..3 {
            let busy = q.limit();
            q.update(&WindowSample::new(Duration::ZERO, busy, busy as u64));
        }
        assert_eq!(q.limit(), 12);
        // The hang's last calls still running out of time: not yet.
        let tail = WindowSample::new(Duration::from_millis(5), 2, 3).with_samples(100);
        assert_eq!(q.update(&tail), 12);
        assert_eq!(q.update(&window(5.0, 2)), 100);
        // Once: a later hang starts from there again.
        assert_eq!(q.update(&window(5.0, 2)), 100);

        // A queue of ours found after a hang (calls out of time behind
        // answers slowed by it) is learned from, and not undone by a quiet
        // window later.
        for _ in 0..3 {
            let busy = q.limit();
            q.update(&WindowSample::new(Duration::ZERO, busy, busy as u64));
        }
        assert_eq!(q.limit(), 12);
        let queued =
            q.update(&WindowSample::new(Duration::from_millis(40), 12, 5).with_samples(100));
        assert!(queued < 12, "cut by the queue: {queued}");
        assert_eq!(q.update(&window(5.0, 2)), queued);
    }

    /// A hang's first calls keep their places, and rule 5 doubles the
    /// limit for them before the windows of drops: rule 7 restores the
    /// limit from before those doublings, a learned 8 (not 20, the
    /// initial limit, nor the 32 they reached).
    #[test]
    fn a_hang_restores_the_limit_from_before_its_doublings() {
        let mut q = QueueDelay::default();
        for _ in 0..5 {
            q.update(&window(5.0, 2));
        }
        q.limit = 8.0;
        let kept = WindowSample::new(Duration::from_millis(5), 8, 0)
            .with_samples(20)
            .with_kept(4);
        assert_eq!(q.update(&kept), 16);
        assert_eq!(q.update(&kept), 32);
        for _ in 0..4 {
            let busy = q.limit();
            q.update(&WindowSample::new(Duration::ZERO, busy, busy as u64));
        }
        assert_eq!(q.limit(), 2);
        assert_eq!(q.update(&window(5.0, 1)), 8);
    }

    /// A service that got ten times slower while the limit and the calls in
    /// flight stayed put: `base` follows, and the limit is not cut.
    #[test]
    fn a_slower_service_is_not_a_queue() {
        let mut q = QueueDelay::default();
        // 8 in flight, under half the limit of 20: no growth, no drain.
        feed(&mut q, 5, 20.0, |_| 8);
        assert_eq!(q.limit(), 20);
        assert!((q.base_rtt_secs() - 0.020).abs() < 1e-6);
        feed(&mut q, 3, 200.0, |_| 8);
        assert_eq!(q.limit(), 20);
        assert!(
            (q.base_rtt_secs() - 0.200).abs() < 1e-6,
            "{}",
            q.base_rtt_secs()
        );
    }

    /// Latency that grows with the calls in flight is a queue: the limit is
    /// cut to where the queueing delay is a tenth of the service's latency.
    #[test]
    fn a_queue_of_its_own_cuts_the_limit() {
        let mut q = QueueDelay::default();
        feed(&mut q, 3, 100.0, |_| 15);
        let before = q.limit();
        // At the limit, with a latency 50 % above the service's own.
        q.update(&window(150.0, before));
        // limit × 1.1 / 1.5
        assert_eq!(q.limit(), (before as f64 * 1.1 / 1.5) as usize);
    }

    /// A draining window that finds no queue measures the service's own
    /// latency, higher or lower than before; one that finds the latency
    /// falling as fast as the calls in flight drains again in the next window.
    #[test]
    fn draining_windows_measure_the_service() {
        let mut q = QueueDelay::default();
        q.update(&window(100.0, 10)); // half the limit: base 100 ms, grown by 1
        q.update(&window(100.0, q.limit())); // the limit reached once: doubled
        let limit = q.limit();
        q.update(&window(300.0, limit)); // reached twice, latency ×3: drain
        let drained = q.limit();
        assert!(drained < limit, "{drained} < {limit}");
        // The drain lasts four latencies (1.2 s), within four windows.
        assert_eq!(
            q.next_window(Duration::from_secs(1)),
            Duration::from_millis(1200)
        );
        // Latency fell as fast as the calls in flight: still a queue. The
        // lowest latency seen stands, and the next window at the limit
        // drains again.
        q.update(&window(300.0 * drained as f64 / limit as f64, drained));
        assert!(q.draining.is_none());
        assert!(q.base_rtt_secs() <= 0.100 + 1e-9);
        let l = q.limit();
        q.update(&window(300.0, l));
        assert!(q.draining.is_some());
        // Any other window lasts at least three latencies.
        let mut r = QueueDelay::default();
        r.update(&window(500.0, 5));
        assert_eq!(
            r.next_window(Duration::from_secs(1)),
            Duration::from_millis(1500)
        );
    }

    /// At the start, a window at the limit with no queue doubles it, and
    /// the next one at the limit too, with no drain between (a server
    /// started under a load of 200 in flight reaches it in four windows);
    /// the first window that does not double it ends the start, and two at
    /// the limit in a row drain again.
    #[test]
    fn the_start_doubles_the_limit_while_it_is_reached_without_draining() {
        let mut q = QueueDelay::default();
        let limits: Vec<_> = (0..4)
            .map(|_| {
                let l = q.limit();
                q.update(&window(40.0, l));
                q.limit()
            })
            .collect();
        assert_eq!(limits, [40, 80, 160, 320]);
        // 200 in flight: not reached, grown by 5 %.
        assert_eq!(q.update(&window(40.0, 200)), 336);
        let l = q.limit();
        assert_eq!(q.update(&window(40.0, l)), 672);
        let l = q.limit();
        assert!(q.update(&window(40.0, l)) < l);
        assert!(q.draining.is_some());
    }

    /// At the start, the short windows' averages are noisy (the first one
    /// biased to the fastest calls, which end first): a rise under half
    /// (five tolerances) is no queue, and `base` follows it; a clear rise
    /// is one, and cuts the limit, which ends the start.
    #[test]
    fn at_the_start_only_a_clear_rise_of_latency_is_a_queue() {
        let mut q = QueueDelay::default();
        assert_eq!(q.update(&window(17.3, 20)), 40);
        // 13 % more: doubled again, `base` now the latest.
        assert_eq!(q.update(&window(19.6, 40)), 80);
        assert!((q.base_rtt_secs() - 0.0196).abs() < 1e-9);
        // 60 % more: a queue of ours.
        let cut = q.update(&window(31.4, 80));
        assert!((40..80).contains(&cut), "{cut}");
        assert!((q.base_rtt_secs() - 0.0196).abs() < 1e-9);
        // After the start the tolerance is 10 % again.
        let l = q.limit();
        assert!(q.update(&window(23.0, l)) < l);
    }

    /// A limit held at its maximum ends the start (it no longer doubles):
    /// two windows at it in a row drain again, as after any start.
    #[test]
    fn a_limit_held_at_its_maximum_ends_the_start() {
        let mut q = QueueDelay::builder().max_limit(40).build().unwrap();
        assert_eq!(q.update(&window(40.0, 20)), 40);
        assert!(q.starting);
        assert_eq!(q.update(&window(50.0, 40)), 40);
        assert!(!q.starting);
        assert!(q.update(&window(50.0, 40)) < 40);
        assert!(q.draining.is_some());
    }

    /// At the start a queue is a rise of half `base`, whatever the
    /// tolerance below that (a doubling past the knee at most doubles the
    /// latency: a bar of `5 × tolerance` let any load through at 0.2); and
    /// a window with drops is judged as always, `base` kept.
    #[test]
    fn at_the_start_a_queue_is_a_rise_of_half_and_drops_still_cut() {
        let mut q = QueueDelay::builder().tolerance(0.2).build().unwrap();
        assert_eq!(q.update(&window(40.0, 20)), 40);
        // 60 % more: a queue, cut to where it would be 20 % of 40 ms.
        assert_eq!(q.update(&window(64.0, 40)), 30);
        assert!(!q.starting);

        let mut q = QueueDelay::default();
        assert_eq!(q.update(&window(40.0, 20)), 40);
        // 10 % more with calls that timed out: cut by a tenth.
        let drops = WindowSample::new(Duration::from_millis(44), 40, 5).with_samples(100);
        assert_eq!(q.update(&drops), 36);
        assert!((q.base_rtt_secs() - 0.040).abs() < 1e-9);
    }

    /// At the start a window's calls in flight may be a burst's, above the
    /// limit: a queue cuts from them, to where they would queue
    /// `tolerance` (80 in flight at 64 ms against 40: 55), not from the
    /// limit (27).
    #[test]
    fn at_the_start_a_queue_cuts_from_the_calls_in_flight() {
        let mut q = QueueDelay::default();
        assert_eq!(q.update(&window(40.0, 20)), 40);
        assert_eq!(q.update(&window(64.0, 80)), 55);
        assert!(!q.starting);
    }
}
