//! The rejection marker types every seawall layer returns, and the one shared
//! view over them.
//!
//! Layers fail with a [`BoxError`] (tower's convention). When a seawall layer
//! refuses a request, the box holds one of the small marker types below. Each of
//! them offers the same [`Rejection`] view: *what* happened ([`RejectionKind`]),
//! *which* layer instance said no (its [`Name`]), and *when* to come back
//! (`retry_after`), if the layer knows.
//!
//! [`rejection`] finds that view in any error, also when it is wrapped inside
//! other errors (through [`Error::source`] chains), so the HTTP and gRPC mappings
//! and the retry layer treat every rejection alike whatever order the layers were
//! stacked in.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use seawall::error::{rejection, CircuitOpen, RejectionKind};
//! use seawall::BoxError;
//!
//! let err: BoxError = CircuitOpen::new("payments-breaker", Some(Duration::from_secs(3))).into();
//! assert_eq!(err.to_string(), "circuit open (payments-breaker)");
//!
//! let view = rejection(&*err).expect("a seawall rejection");
//! assert_eq!(view.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(view.name(), "payments-breaker");
//! assert_eq!(view.retry_after(), Some(Duration::from_secs(3)));
//! ```

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use tower::BoxError;

/// The name of one layer instance, such as `"payments-breaker"`.
///
/// It appears in every event the instance reports and in every rejection it
/// returns. Cloning is cheap (a reference count).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Creates a name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Name(name.into())
    }

    /// The name as a string slice.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Arc::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(Arc::from(s))
    }
}

impl From<&Name> for Name {
    fn from(n: &Name) -> Self {
        n.clone()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Calls `$m!` with every marker type (after `$arg;` when given): the one
/// list of them. Each marker's [`RejectionKind`] variant has its name.
macro_rules! for_each_marker {
    ($m:ident $(, $arg:expr)?) => {
        $m!(
            $($arg;)?
            DeadlineExceeded,
            AttemptTimeout,
            CircuitOpen,
            BulkheadFull,
            Overloaded,
            RateLimited,
            RetryBudgetExhausted
        )
    };
}

/// `[RejectionKind::A, …]` from the list of markers.
macro_rules! kinds {
    ($($ty:ident),*) => {
        [$(RejectionKind::$ty),*]
    };
}

/// What kind of rejection a seawall layer returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The request's total budget ran out ([`DeadlineExceeded`]).
    DeadlineExceeded,
    /// One attempt ran longer than its per-attempt timeout while budget was
    /// left ([`AttemptTimeout`]). Retryable.
    AttemptTimeout,
    /// A circuit breaker is open ([`CircuitOpen`]).
    CircuitOpen,
    /// A bulkhead had no free slot and no room (or time) to wait ([`BulkheadFull`]).
    BulkheadFull,
    /// A load shedder refused the request ([`Overloaded`]).
    Overloaded,
    /// A rate limiter refused the request ([`RateLimited`]).
    RateLimited,
    /// The retry budget was empty ([`RetryBudgetExhausted`]).
    RetryBudgetExhausted,
}

impl RejectionKind {
    /// A short, stable, lower-case label, used in metrics and logs
    /// (`"deadline_exceeded"`, `"circuit_open"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectionKind::DeadlineExceeded => "deadline_exceeded",
            RejectionKind::AttemptTimeout => "attempt_timeout",
            RejectionKind::CircuitOpen => "circuit_open",
            RejectionKind::BulkheadFull => "bulkhead_full",
            RejectionKind::Overloaded => "overloaded",
            RejectionKind::RateLimited => "rate_limited",
            RejectionKind::RetryBudgetExhausted => "retry_budget_exhausted",
        }
    }

    /// The short message of a rejection of this kind (`"deadline
    /// exceeded"`, `"circuit open"`, …): its `Display` without the instance
    /// name, and the body of its HTTP answer.
    pub const fn message(self) -> &'static str {
        match self {
            RejectionKind::DeadlineExceeded => "deadline exceeded",
            RejectionKind::AttemptTimeout => "attempt timed out",
            RejectionKind::CircuitOpen => "circuit open",
            RejectionKind::BulkheadFull => "bulkhead full",
            RejectionKind::Overloaded => "overloaded",
            RejectionKind::RateLimited => "rate limited",
            RejectionKind::RetryBudgetExhausted => "retry budget exhausted",
        }
    }

    /// Whether a rejection of this kind is a local refusal unless its
    /// constructor says otherwise (see [`Rejection::is_local`]).
    const fn local_by_default(self) -> bool {
        matches!(
            self,
            RejectionKind::CircuitOpen
                | RejectionKind::BulkheadFull
                | RejectionKind::RateLimited
                | RejectionKind::RetryBudgetExhausted
        )
    }

    /// Every kind, in declaration order.
    pub const ALL: [RejectionKind; 7] = for_each_marker!(kinds);
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The shared view of a seawall rejection: kind, layer instance name and, when
/// the layer knows it, how long to wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection<'a> {
    kind: RejectionKind,
    name: &'a str,
    retry_after: Option<Duration>,
    local: bool,
}

impl<'a> Rejection<'a> {
    /// What happened.
    #[inline]
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The name of the layer instance that rejected the request.
    #[inline]
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// How long the caller should wait before trying again, if known.
    #[inline]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether this process refused the call before the dependency saw it
    /// (a *local refusal*): a full bulkhead, a rate limit, an open breaker, a
    /// spent retry budget, a client throttle, a deadline gone before sending.
    /// Such a rejection says nothing about the dependency, and no layer
    /// counts it against it, whatever classifier a user writes
    /// ([`Outcome::Refused`](crate::observe::Outcome::Refused)).
    ///
    /// Not local: an [`AttemptTimeout`] (the dependency was too slow), a
    /// [`DeadlineExceeded`] that fired while the call was under way, and an
    /// [`Overloaded`] from a load shedder (the server protecting itself: a
    /// remote overload when it comes back to a client).
    #[inline]
    pub fn is_local(&self) -> bool {
        self.local
    }
}

/// What the future of a refused call answers: its rejection, once; polled
/// again after that, an error saying so (never a panic).
#[inline]
#[cfg_attr(not(feature = "deadline"), allow(dead_code))]
pub(crate) fn poll_rejected<T>(
    error: &mut Option<BoxError>,
) -> std::task::Poll<Result<T, BoxError>> {
    std::task::Poll::Ready(Err(error
        .take()
        .unwrap_or_else(|| "future polled after completion".into())))
}

mod sealed {
    pub trait Sealed {}
}

/// Implemented by every seawall rejection marker (sealed: [`rejection`]
/// recognises these markers and no others).
pub trait Reject: Error + Send + Sync + sealed::Sealed + 'static {
    /// The shared view of this rejection.
    fn rejection(&self) -> Rejection<'_>;
}

macro_rules! marker {
    (
        $(#[$meta:meta])*
        $ty:ident, $kind:ident, retry_after
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty {
            name: Name,
            retry_after: Option<Duration>,
            local: bool,
        }

        impl $ty {
            /// Creates the rejection for the layer instance `name`.
            pub fn new(name: impl Into<Name>, retry_after: Option<Duration>) -> Self {
                $ty { name: name.into(), retry_after, local: RejectionKind::$kind.local_by_default() }
            }

            /// The name of the layer instance that rejected the request.
            pub fn name(&self) -> &str {
                self.name.as_str()
            }

            /// How long the caller should wait before trying again, if known.
            pub fn retry_after(&self) -> Option<Duration> {
                self.retry_after
            }
        }

        marker!(@common $ty, $kind);
    };
    (
        $(#[$meta:meta])*
        $ty:ident, $kind:ident
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty {
            name: Name,
            local: bool,
        }

        impl $ty {
            /// Creates the rejection for the layer instance `name`.
            pub fn new(name: impl Into<Name>) -> Self {
                $ty { name: name.into(), local: RejectionKind::$kind.local_by_default() }
            }

            /// The name of the layer instance that rejected the request.
            pub fn name(&self) -> &str {
                self.name.as_str()
            }
        }

        marker!(@common $ty, $kind);
    };
    (@common $ty:ident, $kind:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let message = RejectionKind::$kind.message();
                if self.name.as_str().is_empty() {
                    f.pad(message)
                } else {
                    write!(f, "{message} ({})", self.name)
                }
            }
        }

        impl Error for $ty {}

        impl sealed::Sealed for $ty {}

        impl Reject for $ty {
            fn rejection(&self) -> Rejection<'_> {
                Rejection {
                    kind: RejectionKind::$kind,
                    name: self.name.as_str(),
                    retry_after: self.retry_after_opt(),
                    local: self.local,
                }
            }
        }
    };
}

marker!(
    /// The request's total time budget ran out, or had already run out when it
    /// arrived. Maps to HTTP 504 and gRPC `DEADLINE_EXCEEDED`. Never retried by
    /// seawall's retry layer: no budget is left to retry with.
    DeadlineExceeded, DeadlineExceeded
);
marker!(
    /// One attempt exceeded its per-attempt timeout while the request still had
    /// budget left. Retryable; counted as a failure by a circuit breaker above.
    /// Maps to HTTP 504 and gRPC `DEADLINE_EXCEEDED`.
    AttemptTimeout, AttemptTimeout
);
marker!(
    /// A circuit breaker is open and refused the request without calling the
    /// service. `retry_after` is the time until the breaker lets probes
    /// through again (while half-open with every probe out, 100 ms; none
    /// while forced open), stretched by a factor in `[1, 1.5)`. Maps to
    /// HTTP 503 and gRPC `UNAVAILABLE`.
    CircuitOpen, CircuitOpen, retry_after
);
marker!(
    /// A bulkhead had every slot busy and no room, or no time, to wait.
    /// Maps to HTTP 503 and gRPC `UNAVAILABLE`.
    BulkheadFull, BulkheadFull, retry_after
);
marker!(
    /// A load shedder refused the request to protect the service (adaptive
    /// limit reached, request shed by priority, or its deadline could not be
    /// met). Maps to HTTP 503 and gRPC `UNAVAILABLE`.
    Overloaded, Overloaded, retry_after
);
marker!(
    /// A rate limiter refused the request. `retry_after` is the wait until
    /// the request would conform, stretched by a factor in `[1, 1.5)` (never
    /// shorter). Maps to HTTP 429 and gRPC `RESOURCE_EXHAUSTED`.
    RateLimited, RateLimited, retry_after
);
marker!(
    /// The retry budget was empty, so a failed request was not retried.
    RetryBudgetExhausted, RetryBudgetExhausted
);

impl DeadlineExceeded {
    /// The rejection of a request whose deadline had passed before it was
    /// sent: a local refusal (see [`Rejection::is_local`]).
    pub fn before_sending(name: impl Into<Name>) -> Self {
        DeadlineExceeded {
            name: name.into(),
            local: true,
        }
    }
}

impl Overloaded {
    /// The rejection of a client-side layer of this process (a client
    /// throttle) that refused the call before sending it: a local refusal
    /// (see [`Rejection::is_local`]). [`Overloaded::new`] is a load
    /// shedder's answer, a remote overload to whoever called it.
    pub fn local(name: impl Into<Name>, retry_after: Option<Duration>) -> Self {
        Overloaded {
            name: name.into(),
            retry_after,
            local: true,
        }
    }
}

trait RetryAfterOpt {
    fn retry_after_opt(&self) -> Option<Duration>;
}

macro_rules! no_retry_after {
    ($($ty:ident),*) => {$(
        impl RetryAfterOpt for $ty {
            fn retry_after_opt(&self) -> Option<Duration> { None }
        }
    )*};
}
macro_rules! with_retry_after {
    ($($ty:ident),*) => {$(
        impl RetryAfterOpt for $ty {
            fn retry_after_opt(&self) -> Option<Duration> { self.retry_after }
        }
    )*};
}
no_retry_after!(DeadlineExceeded, AttemptTimeout, RetryBudgetExhausted);
with_retry_after!(CircuitOpen, BulkheadFull, Overloaded, RateLimited);

/// A layer configuration that makes no sense (a zero window, a threshold
/// outside `(0, 1]`, an attempt timeout above the total budget, …), returned by
/// the builders when they are built.
///
/// ```
/// use seawall::error::ConfigError;
///
/// let err = ConfigError::new("circuit_breaker", "failure_rate_threshold must be in (0, 1], got 1.5");
/// assert_eq!(
///     err.to_string(),
///     "invalid circuit_breaker configuration: failure_rate_threshold must be in (0, 1], got 1.5"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    layer: &'static str,
    message: std::borrow::Cow<'static, str>,
}

impl ConfigError {
    /// Creates the error for a layer kind (`"retry"`, …) with a message that
    /// names the setting, the rule and the value given.
    pub fn new(layer: &'static str, message: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        ConfigError {
            layer,
            message: message.into(),
        }
    }

    /// The layer kind whose configuration was refused.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} configuration: {}", self.layer, self.message)
    }
}

impl Error for ConfigError {}

/// Finds the seawall rejection in `err`, looking at `err` itself and then down
/// its [`Error::source`] chain. Returns `None` for errors that are not seawall
/// rejections.
///
/// ```
/// use seawall::error::{rejection, RateLimited, RejectionKind};
/// use seawall::BoxError;
///
/// #[derive(Debug)]
/// struct Wrapper(BoxError);
/// impl std::fmt::Display for Wrapper {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("wrapped") }
/// }
/// impl std::error::Error for Wrapper {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> { Some(&*self.0) }
/// }
///
/// let err: BoxError = Box::new(Wrapper(RateLimited::new("api", None).into()));
/// assert_eq!(rejection(&*err).unwrap().kind(), RejectionKind::RateLimited);
/// ```
pub fn rejection<'a>(err: &'a (dyn Error + 'static)) -> Option<Rejection<'a>> {
    let mut cur: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = view(e) {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// The first error of type `T` in `err`'s `source()` chain, `err`
/// included.
#[cfg_attr(
    not(any(all(feature = "http", feature = "deadline"), feature = "tonic")),
    allow(dead_code)
)]
pub(crate) fn find_in_chain<'a, T: Error + 'static>(
    err: &'a (dyn Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(err), |&e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

/// Returns the rejection view of `$e` (anything with `downcast_ref`) when
/// it is one of the markers.
macro_rules! return_marker_view {
    ($e:expr; $($ty:ident),*) => {$(
        if let Some(r) = $e.downcast_ref::<$ty>() {
            return Some(r.rejection());
        }
    )*};
}

fn view<'a>(e: &'a (dyn Error + 'static)) -> Option<Rejection<'a>> {
    for_each_marker!(return_marker_view, e);
    None
}

/// The rejection view of `any` when it is a marker itself (not boxed).
pub(crate) fn marker_view(any: &dyn std::any::Any) -> Option<Rejection<'_>> {
    for_each_marker!(return_marker_view, any);
    None
}

/// The rejection in an error of any type: a [`BoxError`] holding one
/// anywhere in its source chain, a `tonic::Status` holding one in its
/// source (the gRPC client preset's error), or a marker itself.
pub(crate) fn rejection_in<E: 'static>(err: &E) -> Option<Rejection<'_>> {
    let any = err as &dyn std::any::Any;
    if let Some(boxed) = any.downcast_ref::<BoxError>() {
        return rejection(&**boxed);
    }
    #[cfg(feature = "tonic")]
    if let Some(status) = any.downcast_ref::<tonic::Status>() {
        return rejection(status);
    }
    marker_view(any)
}

/// Finds the seawall rejection in a [`BoxError`]; shorthand for
/// [`rejection`]`(&*err)`.
pub fn rejection_of(err: &BoxError) -> Option<Rejection<'_>> {
    rejection(&**err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(BoxError);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn display_is_short_and_names_the_instance() {
        assert_eq!(
            DeadlineExceeded::new("api").to_string(),
            "deadline exceeded (api)"
        );
        assert_eq!(DeadlineExceeded::new("").to_string(), "deadline exceeded");
        assert_eq!(
            BulkheadFull::new("db", None).to_string(),
            "bulkhead full (db)"
        );
        assert_eq!(
            RetryBudgetExhausted::new("r").to_string(),
            "retry budget exhausted (r)"
        );
    }

    #[test]
    fn view_found_through_source_chain() {
        let inner: BoxError = Overloaded::new("shed", Some(Duration::from_millis(250))).into();
        let err: BoxError = Box::new(Outer(Box::new(Outer(inner))));
        let r = rejection_of(&err).unwrap();
        assert_eq!(r.kind(), RejectionKind::Overloaded);
        assert_eq!(r.name(), "shed");
        assert_eq!(r.retry_after(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn non_seawall_errors_have_no_view() {
        let err: BoxError = "boom".into();
        assert!(rejection_of(&err).is_none());
    }

    #[test]
    fn every_kind_has_a_distinct_label() {
        let mut labels: Vec<_> = RejectionKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), RejectionKind::ALL.len());
    }
}
