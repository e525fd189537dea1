use std::time::Duration;

use super::quota::Quota;

/// What the limit said about an admitted request: the quota that applied, how
/// many more requests it admits right now, and when it is full again.
/// Handed to the layer's [`Decorate`] (the response-header option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStatus {
    /// The quota of the limit that admitted the request (the per-key quota of
    /// a keyed layer).
    pub quota: Quota,
    /// Requests the bucket admits right now, after this one.
    pub remaining: u32,
    /// Time until the bucket is full again (to within one period).
    pub reset: Duration,
}

/// Writes rate-limit information into responses (the layer's response-header
/// option). [`NoHeaders`] (the default) writes nothing;
/// [`IetfHeaders`](crate::rate_limit::headers::IetfHeaders) (feature `http`) writes the
/// IETF `RateLimit-Policy` and `RateLimit` fields.
pub trait Decorate<Res>: Send + Sync + 'static {
    /// `false` when [`Decorate::decorate`] does nothing: the layer then skips
    /// the bookkeeping.
    const ENABLED: bool = true;

    /// Adds the information of `status` to `res`.
    fn decorate(&self, res: &mut Res, status: &RateLimitStatus);
}

/// Leaves responses untouched (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl<Res> Decorate<Res> for NoHeaders {
    const ENABLED: bool = false;

    #[inline(always)]
    fn decorate(&self, _res: &mut Res, _status: &RateLimitStatus) {}
}
