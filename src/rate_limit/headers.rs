//! The IETF `RateLimit-Policy` and `RateLimit` response fields
//! (draft-ietf-httpapi-ratelimit-headers-11, structured fields).

use std::sync::OnceLock;

use http::HeaderValue;
use http::header::HeaderName;

use super::decorate::{Decorate, RateLimitStatus};
use super::quota::Quota;
use crate::error::ConfigError;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` value of `quota` under the policy name `name`:
/// `"default";q=100;w=60` (`q` requests in any window of `w` whole seconds;
/// see [`policy`] for how they are chosen).
///
/// ```
/// use seawall::rate_limit::{Quota, headers::policy_value};
/// assert_eq!(policy_value("default", &Quota::per_minute(100)), "\"default\";q=100;w=60");
/// ```
pub fn policy_value(name: &str, quota: &Quota) -> String {
    let (q, w) = policy(quota);
    format!("\"{name}\";q={q};w={w}")
}

/// The `(q, w)` of the policy that describes `quota`: `q` requests in any
/// window of `w` whole seconds, such that a client that never sends more
/// than `q` in any `w` seconds is never refused (`q` is at most the burst,
/// and at most what refills in `w`), and is told at most one request less
/// than the limiter sustains over `w` (`w / period − q ≤ 1`).
///
/// `w` is the time the whole burst takes to refill, rounded up to whole
/// seconds, when that keeps the second promise; otherwise the longest whole
/// number of seconds in which the burst and one more cell refill. A burst
/// that refills in under a second with a cell to spare (`(burst + 1) ×
/// period < 1 s`: `Quota::per_second(50).burst(20)`) has no honest
/// whole-second window: the policy says `q = burst` per second, which a
/// client can always send, and understates the rate; the `RateLimit` field
/// (requests remaining now) is exact.
///
/// ```
/// use std::time::Duration;
/// use seawall::rate_limit::{Quota, headers::policy};
/// assert_eq!(policy(&Quota::per_minute(100)), (100, 60));
/// assert_eq!(policy(&Quota::with_period(Duration::from_millis(1500)).burst(3)), (3, 5));
/// assert_eq!(policy(&Quota::per_second(50).burst(20)), (20, 1));
/// ```
pub fn policy(quota: &Quota) -> (u64, u64) {
    const SEC: u128 = 1_000_000_000;
    let p = quota.period().as_nanos().max(1);
    let b = u128::from(quota.burst_size());
    let q_of = |w: u128| b.min(w * SEC / p);
    let fits = |w: u128| w * SEC <= (q_of(w) + 1) * p;
    let refill = (b * p).div_ceil(SEC).max(1);
    let w = if fits(refill) {
        refill
    } else {
        ((b + 1) * p / SEC).max(1)
    };
    let clamp = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
    (clamp(q_of(w)), clamp(w))
}

/// The `RateLimit` value: `"default";r=50;t=30` (`r` requests remaining,
/// `t` seconds until the quota is fully available again, rounded up).
///
/// ```
/// use std::time::Duration;
/// use seawall::rate_limit::headers::rate_limit_value;
/// assert_eq!(rate_limit_value("default", 50, Duration::from_millis(29_400)), "\"default\";r=50;t=30");
/// ```
pub fn rate_limit_value(name: &str, remaining: u32, reset: std::time::Duration) -> String {
    format!(
        "\"{name}\";r={remaining};t={}",
        crate::clock::ceil_secs(reset)
    )
}

/// Adds `RateLimit-Policy` and `RateLimit` to every admitted response (the
/// layer's response-header option; see
/// [`RateLimitLayerBuilder::response_headers`](crate::rate_limit::RateLimitLayerBuilder::response_headers)).
///
/// The policy value is formatted once and shared; the `RateLimit` value is
/// formatted per response (one small allocation). Rejected requests carry no
/// response from this layer: the HTTP mapping of the rejection writes
/// `Retry-After`.
#[derive(Debug)]
pub struct IetfHeaders {
    name: String,
    policy: OnceLock<(Quota, HeaderValue)>,
}

impl IetfHeaders {
    /// Headers for the policy named `name` (`"default"` in the draft's
    /// examples). The name must be printable ASCII without `"` or `\`.
    pub fn new(name: &str) -> Result<IetfHeaders, ConfigError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(ConfigError::new(
                "rate_limit",
                format!(
                    "response header policy name {name:?} must be non-empty printable ASCII without '\"' or '\\'"
                ),
            ));
        }
        Ok(IetfHeaders {
            name: name.to_owned(),
            policy: OnceLock::new(),
        })
    }

    fn policy(&self, quota: &Quota) -> HeaderValue {
        let (q, v) = self
            .policy
            .get_or_init(|| (*quota, to_value(policy_value(&self.name, quota))));
        if q == quota {
            v.clone()
        } else {
            to_value(policy_value(&self.name, quota))
        }
    }
}

impl Default for IetfHeaders {
    fn default() -> Self {
        IetfHeaders {
            name: "default".to_owned(),
            policy: OnceLock::new(),
        }
    }
}

fn to_value(s: String) -> HeaderValue {
    // Only printable ASCII is ever formatted (the name is validated).
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
}

impl<B> Decorate<http::Response<B>> for IetfHeaders {
    fn decorate(&self, res: &mut http::Response<B>, status: &RateLimitStatus) {
        let h = res.headers_mut();
        h.insert(RATELIMIT_POLICY, self.policy(&status.quota));
        h.insert(
            RATELIMIT,
            to_value(rate_limit_value(&self.name, status.remaining, status.reset)),
        );
    }
}
