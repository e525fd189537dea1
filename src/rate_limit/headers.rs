//! The IETF `RateLimit-Policy` and `RateLimit` response fields
//! (draft-ietf-httpapi-ratelimit-headers-11, structured fields).

use std::sync::OnceLock;

use http::HeaderValue;
use http::header::HeaderName;

use super::decorate::{Decorate, RateLimitStatus, retry_after_secs};
use super::quota::Quota;
use crate::error::ConfigError;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` value of `quota` under the policy name `name`:
/// `"default";q=100;w=60` (quota units `q` in a window of `w` seconds, the
/// window rounded up to whole seconds).
///
/// ```
/// use seawall::rate_limit::{Quota, headers::policy_value};
/// assert_eq!(policy_value("default", &Quota::per_minute(100)), "\"default\";q=100;w=60");
/// ```
pub fn policy_value(name: &str, quota: &Quota) -> String {
    format!(
        "\"{name}\";q={};w={}",
        quota.burst_size(),
        retry_after_secs(quota.window())
    )
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
    format!("\"{name}\";r={remaining};t={}", retry_after_secs(reset))
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
