//! The [`LimitAlgorithm`] trait and the per-window sample it is fed.

use std::fmt;
use std::time::Duration;

/// What the adaptive limit observed during one sampling window.
///
/// The layer aggregates completed calls in atomics and hands one
/// `WindowSample` to its [`LimitAlgorithm`] when a window closes (by default
/// after 1 s and at least 10 samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSample {
    rtt: Duration,
    fastest: Option<Duration>,
    samples: u64,
    max_inflight: usize,
    drops: u64,
    timed_out: u64,
    timed_out_rtt: Duration,
    refused: u64,
    span: Duration,
    kept: usize,
}

impl WindowSample {
    /// A window whose calls took `rtt` on average, with at most
    /// `max_inflight` calls in flight, and `drops` dropped calls.
    pub const fn new(rtt: Duration, max_inflight: usize, drops: u64) -> Self {
        WindowSample {
            rtt,
            fastest: None,
            samples: 1,
            max_inflight,
            drops,
            timed_out: 0,
            timed_out_rtt: Duration::ZERO,
            refused: 0,
            span: Duration::ZERO,
            kept: 0,
        }
    }

    /// Sets how many round-trip times were averaged into [`rtt`](Self::rtt).
    pub const fn with_samples(mut self, samples: u64) -> Self {
        self.samples = samples;
        self
    }

    /// The average round-trip time of the calls that completed in the window
    /// (zero when the window held only drops).
    pub const fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Sets the shortest round-trip time of the window's calls.
    pub const fn with_fastest(mut self, fastest: Duration) -> Self {
        self.fastest = Some(fastest);
        self
    }

    /// The shortest round-trip time of the window's calls, when known (the
    /// adaptive limit layer gives it). A queue that stands through a window
    /// delays every call, the fastest too; an average raised by a few slow
    /// calls (a handler that retried its dependency) leaves it where it was.
    pub const fn fastest(&self) -> Option<Duration> {
        self.fastest
    }

    /// How many round-trip times were averaged into [`rtt`](Self::rtt).
    pub const fn samples(&self) -> u64 {
        self.samples
    }

    /// The largest number of calls in flight during the window (counted when
    /// calls are admitted; a burst's calls over the limit are not).
    pub const fn max_inflight(&self) -> usize {
        self.max_inflight
    }

    /// How many calls were dropped: they did not make it in time (a
    /// deadline or an attempt timeout below the limit ended them). A call
    /// cancelled by its caller, or failed with a dependency's `Overloaded`,
    /// is not a drop.
    pub const fn drops(&self) -> u64 {
        self.drops
    }

    /// Sets how many calls were answered with "the handler ran out of
    /// time", and their average round-trip time (see
    /// [`timed_out`](Self::timed_out)).
    pub const fn with_timed_out(mut self, count: u64, rtt: Duration) -> Self {
        self.timed_out = count;
        self.timed_out_rtt = rtt;
        self
    }

    /// How many calls were answered with "the handler ran out of time" (in
    /// the protocol presets: an HTTP `504`, or a gRPC `DEADLINE_EXCEEDED`
    /// or `CANCELLED` in the head), apart from [`samples`](Self::samples)
    /// and [`drops`](Self::drops). Such an answer is a handler that waited
    /// its budget out, on a dependency that hung, or in a queue (this
    /// server's, or a dependency's) that made it late: a sample of the time
    /// it held its place when the window's other calls were answered
    /// without a queue, a drop otherwise. [`did_drop`](Self::did_drop)
    /// counts them; [`QueueDelay`](super::QueueDelay) judges them.
    pub const fn timed_out(&self) -> u64 {
        self.timed_out
    }

    /// The average round-trip time of the [`timed_out`](Self::timed_out)
    /// answers (zero when there were none).
    pub const fn timed_out_rtt(&self) -> Duration {
        self.timed_out_rtt
    }

    /// Sets how many requests the limit refused in the window, and how
    /// long the window lasted.
    pub const fn with_refused(mut self, refused: u64, span: Duration) -> Self {
        self.refused = refused;
        self.span = span;
        self
    }

    /// How many requests the limit refused in the window (the adaptive
    /// limit layer counts them).
    pub const fn refused(&self) -> u64 {
        self.refused
    }

    /// How long the window lasted (zero when not known).
    pub const fn span(&self) -> Duration {
        self.span
    }

    /// Sets how many calls at the limit kept their places (see
    /// [`kept`](Self::kept)).
    pub const fn with_kept(mut self, kept: usize) -> Self {
        self.kept = kept;
        self
    }

    /// How many of the calls in flight at the limit kept their places
    /// (0 when none did, or not known). For an algorithm that
    /// [judges such windows](LimitAlgorithm::judges_kept), the adaptive
    /// limit layer watches runs of requests over the limit (admitted in a
    /// burst, or refused; none more than 50 ms, or four expected service
    /// times, after the one before), judged once a run lasts that long, and
    /// each time they were found so, once it lasts twice as long again.
    /// They do when, over the run, the requests over the limit are at least
    /// the window's minimum of samples and as many as the answers; those
    /// answers (failed ones included) are at least one and took no more
    /// than twice the service time expected before the run on average; and
    /// every call that ended, answered or not (cut by a timer, or answered
    /// that it ran out of time), accounts for under a quarter of the limit
    /// in flight (their time in flight, summed, over the run's span:
    /// Little's law). The calls at the limit then wait on something that is
    /// no queue of this service's (handlers waiting on a dependency that
    /// hangs behind one route, while the others are answered as before),
    /// and the layer closes the window then, instead of after its
    /// configured length (unless another completion is closing it). Calls
    /// that come and go, a queue's waiters that time out included, account
    /// for what is in flight; a slowdown of every answer (a brownout) is
    /// not this.
    pub const fn kept(&self) -> usize {
        self.kept
    }

    /// The requests that came in the window per second, answered, dropped
    /// or refused: what the window asked for. `None` when its span is not
    /// known.
    pub fn asked_per_sec(&self) -> Option<f64> {
        let secs = self.span.as_secs_f64();
        (secs > 0.0).then(|| {
            self.samples
                .saturating_add(self.drops)
                .saturating_add(self.timed_out)
                .saturating_add(self.refused) as f64
                / secs
        })
    }

    /// Whether any call of the window was dropped, or answered that it ran
    /// out of time ([`timed_out`](Self::timed_out)).
    pub const fn did_drop(&self) -> bool {
        self.drops > 0 || self.timed_out > 0
    }
}

/// An algorithm that turns window samples into a concurrency limit.
///
/// Implemented by [`QueueDelay`](super::QueueDelay) (the default),
/// [`Gradient2`](super::Gradient2) and [`Aimd`](super::Aimd); implement it to plug your own into
/// [`AdaptiveLimitLayerBuilder::algorithm`](super::AdaptiveLimitLayerBuilder::algorithm).
/// It is called under a short lock, once per window, never on the request
/// path of admitted calls.
///
/// ```
/// use seawall::shed::{LimitAlgorithm, WindowSample};
///
/// /// Halves the limit on drops, otherwise adds one, between 1 and 64.
/// #[derive(Debug)]
/// struct Halving(usize);
///
/// impl LimitAlgorithm for Halving {
///     fn limit(&self) -> usize { self.0 }
///     fn update(&mut self, sample: &WindowSample) -> usize {
///         self.0 = if sample.did_drop() { (self.0 / 2).max(1) } else { (self.0 + 1).min(64) };
///         self.0
///     }
/// }
///
/// let mut h = Halving(10);
/// assert_eq!(h.update(&WindowSample::new(std::time::Duration::from_millis(5), 10, 1)), 5);
/// ```
pub trait LimitAlgorithm: fmt::Debug + Send + 'static {
    /// The current limit (before any sample: the initial limit). At least 1.
    fn limit(&self) -> usize;

    /// Feeds the sample of a closed window and returns the new limit. The
    /// layer treats a returned 0 as 1.
    fn update(&mut self, sample: &WindowSample) -> usize;

    /// How long the next window lasts, given the configured length (called
    /// after each [`update`](Self::update)). The default keeps the
    /// configured length; an algorithm that probes with a lower limit for a
    /// while (as [`QueueDelay`](super::QueueDelay) does) can make that
    /// window shorter, or longer when calls take longer than a window. The
    /// layer clamps the answer to `1 ms..=4 × configured`.
    fn next_window(&self, configured: Duration) -> Duration {
        configured
    }

    /// Whether this algorithm judges windows that the layer closes early
    /// when the calls at the limit keep their places
    /// ([`WindowSample::kept`]); `false` by default, and the layer then
    /// closes every window after its configured length, as before.
    /// [`QueueDelay`](super::QueueDelay) does: it doubles the limit on such
    /// a window whose answers met no queue, and changes nothing otherwise.
    /// An algorithm that says `true` is fed windows as short as 50 ms.
    fn judges_kept(&self) -> bool {
        false
    }

    /// Whether the algorithm judges windows closed early at the start
    /// (`false` by default; [`QueueDelay`](super::QueueDelay) does). While
    /// every window so far has doubled the limit, the adaptive limit layer
    /// closes a window once requests over the limit have come for four
    /// expected service times (50 ms at least) and the window has lasted
    /// as long and holds the minimum of samples (the sample's
    /// [`kept`](WindowSample::kept) is 0): a server started under a load
    /// above its initial limit needs it raised within a few service times,
    /// not once a window. Such a window's sample counts the calls a burst
    /// admitted over the limit meanwhile (their latencies and their calls
    /// in flight, at most four times the limit): after each doubling, a
    /// burst goes on until a burst's length after the next window can be
    /// judged. The first window
    /// after which the limit is less than twice what it was ends the
    /// start.
    fn judges_start(&self) -> bool {
        false
    }

    /// The bounds of the limit, `(min, max)`, for an algorithm that has
    /// them (the built-in ones); `None` by default. A change of bounds to
    /// the ones in place is no change (no event).
    fn bounds(&self) -> Option<(usize, usize)> {
        None
    }

    /// Changes the bounds of the limit (an operator's reload, or
    /// [`AdaptiveLimitLayerBuilder::limits`](super::AdaptiveLimitLayerBuilder::limits)),
    /// keeping what the algorithm has learned; the limit is clamped into
    /// them. `None` keeps a bound. Returns the new limit. The built-in
    /// algorithms take any `1 ≤ min ≤ max`; the default refuses (an
    /// algorithm without bounds has none to change).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::error::ConfigError) for bounds the algorithm
    /// refuses; nothing is changed.
    fn set_bounds(
        &mut self,
        min_limit: Option<usize>,
        max_limit: Option<usize>,
    ) -> Result<usize, crate::error::ConfigError> {
        let _ = (min_limit, max_limit);
        Err(crate::error::ConfigError::new(
            "adaptive_limit",
            "this limit algorithm has no bounds to change",
        ))
    }
}
