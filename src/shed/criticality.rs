//! Request criticality: which requests are shed first under overload.
//!
//! A request's [`Criticality`] comes from the layer's extractor (a
//! [`CriticalityOf`] implementation):
//! - [`FromTaskLocal`] (the default, any request type): the criticality set
//!   for the task with [`scope`] / [`sync_scope`], else
//!   [`Criticality::Critical`];
//! - any closure `Fn(&Req) -> Criticality`;
//! - [`FromHttpRequest`] (feature `http`): a `Criticality` in the request's
//!   extensions, else the [`HEADER`] header (`x-seawall-criticality`), else
//!   the task-local one, else `Critical`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use seawall::shed::criticality::{self, Criticality};
//!
//! assert_eq!(criticality::current(), None);
//! criticality::scope(Criticality::Sheddable, async {
//!     assert_eq!(criticality::current(), Some(Criticality::Sheddable));
//! })
//! .await;
//! assert_eq!("critical_plus".parse(), Ok(Criticality::CriticalPlus));
//! # }
//! ```

use std::fmt;
use std::str::FromStr;

/// How important a request is, from most to least critical (the four classes
/// of Google SRE's "Handling Overload").
///
/// Under overload the lowest class is shed first; each class can be given a
/// guaranteed share of the limit (see
/// [`AdaptiveLimitLayerBuilder::share`](super::AdaptiveLimitLayerBuilder::share)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Criticality {
    /// The most critical requests: failing them has serious user-visible
    /// impact. Keep this class small.
    CriticalPlus,
    /// The default class of production requests.
    #[default]
    Critical,
    /// Requests that tolerate some unavailability (batch, prefetch with a
    /// user waiting later).
    SheddablePlus,
    /// Requests that tolerate frequent unavailability; shed first.
    Sheddable,
}

impl Criticality {
    /// Every class, most critical first.
    pub const ALL: [Criticality; 4] = [
        Criticality::CriticalPlus,
        Criticality::Critical,
        Criticality::SheddablePlus,
        Criticality::Sheddable,
    ];

    /// A short, stable, lower-case label (`"critical_plus"`, …), also the
    /// header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Criticality::CriticalPlus => "critical_plus",
            Criticality::Critical => "critical",
            Criticality::SheddablePlus => "sheddable_plus",
            Criticality::Sheddable => "sheddable",
        }
    }

    /// 0 for `CriticalPlus` … 3 for `Sheddable`.
    #[inline]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error of parsing an unknown criticality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseCriticalityError;

impl fmt::Display for ParseCriticalityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("unknown criticality (expected critical_plus, critical, sheddable_plus or sheddable)")
    }
}

impl std::error::Error for ParseCriticalityError {}

impl FromStr for Criticality {
    type Err = ParseCriticalityError;

    /// Parses `critical_plus`, `critical`, `sheddable_plus`, `sheddable`,
    /// ignoring ASCII case, with `-` accepted for `_` (so the SRE spelling
    /// `CRITICAL_PLUS` works too). Surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > 16 {
            return Err(ParseCriticalityError);
        }
        let mut buf = [0u8; 16];
        for (b, c) in buf.iter_mut().zip(s.bytes()) {
            *b = match c {
                b'-' => b'_',
                c => c.to_ascii_lowercase(),
            };
        }
        match &buf[..s.len()] {
            b"critical_plus" => Ok(Criticality::CriticalPlus),
            b"critical" => Ok(Criticality::Critical),
            b"sheddable_plus" => Ok(Criticality::SheddablePlus),
            b"sheddable" => Ok(Criticality::Sheddable),
            _ => Err(ParseCriticalityError),
        }
    }
}

thread_local! {
    static CURRENT: std::cell::Cell<Option<Criticality>> = const { std::cell::Cell::new(None) };
}

/// The criticality set for the current task by [`scope`] or [`sync_scope`].
#[inline]
pub fn current() -> Option<Criticality> {
    crate::local::get(&CURRENT)
}

/// Runs `fut` with `criticality` as the [`current()`] one.
pub fn scope<F: std::future::Future>(
    criticality: Criticality,
    fut: F,
) -> crate::local::Scoped<Criticality, F> {
    crate::local::Scoped::new(&CURRENT, criticality, fut)
}

/// Runs `f` with `criticality` as the [`current()`] one.
pub fn sync_scope<R>(criticality: Criticality, f: impl FnOnce() -> R) -> R {
    crate::local::sync_scope(&CURRENT, criticality, f)
}

/// Finds the criticality of a request.
pub trait CriticalityOf<Req>: Send + Sync + 'static {
    /// The request's criticality.
    fn criticality_of(&self, req: &Req) -> Criticality;
}

/// The default extractor, for any request type: the task-local criticality
/// ([`current()`]), else [`Criticality::Critical`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FromTaskLocal;

impl<Req> CriticalityOf<Req> for FromTaskLocal {
    #[inline]
    fn criticality_of(&self, _req: &Req) -> Criticality {
        current().unwrap_or_default()
    }
}

impl<Req, F> CriticalityOf<Req> for F
where
    F: Fn(&Req) -> Criticality + Send + Sync + 'static,
{
    #[inline]
    fn criticality_of(&self, req: &Req) -> Criticality {
        self(req)
    }
}

/// The header [`FromHttpRequest`] reads: `x-seawall-criticality`, with one of
/// `critical_plus`, `critical`, `sheddable_plus`, `sheddable`.
pub const HEADER: &str = "x-seawall-criticality";

/// Extractor for `http::Request` (feature `http`): a [`Criticality`] in the
/// request's extensions, else the [`HEADER`] header, else the task-local
/// one, else [`Criticality::Critical`]. An unparseable header value is
/// ignored.
///
/// The header comes from the caller: accept it only from trusted callers
/// (strip or overwrite it at your edge), or any client can claim
/// `critical_plus`.
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct FromHttpRequest;

#[cfg(feature = "http")]
impl<B> CriticalityOf<http::Request<B>> for FromHttpRequest {
    fn criticality_of(&self, req: &http::Request<B>) -> Criticality {
        if let Some(c) = req.extensions().get::<Criticality>() {
            return *c;
        }
        // Made at compile time: a name made from a string at run time is
        // validated byte by byte on every call.
        const NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
        if let Some(c) = req
            .headers()
            .get(&NAME)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            return c;
        }
        current().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_spellings_and_rejects_garbage() {
        for c in Criticality::ALL {
            assert_eq!(c.as_str().parse(), Ok(c));
            assert_eq!(c.as_str().to_ascii_uppercase().parse(), Ok(c));
        }
        assert_eq!(" Sheddable-Plus ".parse(), Ok(Criticality::SheddablePlus));
        for bad in [
            "",
            "critical!",
            "very_very_very_critical",
            "crítical",
            "plus",
        ] {
            assert_eq!(bad.parse::<Criticality>(), Err(ParseCriticalityError));
        }
    }

    #[test]
    fn ordering_is_most_critical_first() {
        assert!(Criticality::CriticalPlus < Criticality::Sheddable);
        assert_eq!(Criticality::default(), Criticality::Critical);
        assert_eq!(Criticality::Sheddable.index(), 3);
    }

    #[test]
    fn task_local_and_default() {
        assert_eq!(FromTaskLocal.criticality_of(&()), Criticality::Critical);
        let c = sync_scope(Criticality::SheddablePlus, || {
            FromTaskLocal.criticality_of(&())
        });
        assert_eq!(c, Criticality::SheddablePlus);
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_extension_then_header_then_task_local() {
        let mut req = http::Request::new(());
        assert_eq!(FromHttpRequest.criticality_of(&req), Criticality::Critical);
        req.headers_mut()
            .insert(HEADER, http::HeaderValue::from_static("sheddable"));
        assert_eq!(FromHttpRequest.criticality_of(&req), Criticality::Sheddable);
        req.extensions_mut().insert(Criticality::CriticalPlus);
        assert_eq!(
            FromHttpRequest.criticality_of(&req),
            Criticality::CriticalPlus
        );
        let mut req = http::Request::new(());
        req.headers_mut()
            .insert(HEADER, http::HeaderValue::from_static("bogus"));
        let c = sync_scope(Criticality::SheddablePlus, || {
            FromHttpRequest.criticality_of(&req)
        });
        assert_eq!(c, Criticality::SheddablePlus);
    }
}
