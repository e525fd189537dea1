//! Settings from files (feature `serde`): the client stacks of a service's
//! dependencies and its server stack, read with your own deserializer
//! (TOML, YAML, JSON), built into the same layers the builders build.
//!
//! Durations are written as `"250ms"`, `"2s"`, `"1m 30s"`; rates as
//! `"100/s"`, `"6000/min"`. Unknown fields are errors, and a setting the
//! layers refuse is reported with its path (`invalid circuit_breaker
//! configuration: clients.payments.breaker: failure_rate_threshold must be
//! in (0, 1], got 1.5`).
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use seawall::config::ServiceConfig;
//!
//! let config: ServiceConfig = toml::from_str(r#"
//!     [server]
//!     total_budget = "5s"
//!
//!     [clients.payments]
//!     total_budget = "2s"
//!     attempt_timeout = "500ms"
//!     retry = { max_attempts = 2 }
//!     breaker = { open_duration = "2s" }
//! "#)?;
//! let payments = config.client("payments")?;     // the generic client stack
//! let server = config.server("api")?;            // the generic server stack
//! assert_eq!(payments.retry().max_attempts(), 2);
//! # let _ = server;
//! # Ok(())
//! # }
//! ```
//!
//! With the protocol presets, hand the preset's builder over:
//! `config.build_client("payments", ClientStack::http("payments"))?` and
//! `config.build_server(ServerStack::http("api").rate_limit(q, |r| r))?` (refused settings named
//! by path), or apply a section yourself and add what a file cannot say
//! (`ClientStack::http("payments").configure(config.client_settings("payments")?).hedge(|h| h).build()`).
//! `examples/seawall.toml` is a whole file; `tests/config` loads it.
//!
//! The settings structs are `#[non_exhaustive]` (a new setting will not
//! break your code): read them from a file, or in code start from
//! `Default::default()` and set the fields you want
//! (`let mut s = ClientSettings::default(); s.total_budget = Some(..);`); a
//! [`Rate`] is parsed from its text (`"100/s".parse::<Rate>()?`). In code,
//! the builders say the same more directly; the settings are for files and
//! reloads.
//!
//! A layer used on its own reads its section the same way: each builder has
//! a `configure` taking its settings ([`RetrySettings`],
//! [`BreakerSettings`], [`BulkheadSettings`], [`LimitSettings`],
//! [`ThrottleSettings`], a [`Rate`], [`HedgeSettings`],
//! [`EjectionSettings`]), so your own file
//! format can embed them:
//! `EjectionLayer::builder().configure(&my_file.eject).build()?`.
//!
//! A gRPC service config (`GrpcServiceConfig`, features `serde` and
//! `tonic`; read it with your own `serde_json`) gives the
//! gRPC preset its timeout, retry policy and hedged methods:
//! `ClientStack::grpc(name).service_config(&config)?` (and
//! `.hedge(|h| h.delay(d).max_attempts(n))` when it has a hedging policy).

mod apply;
#[cfg(feature = "tonic")]
pub(crate) mod grpc;

#[cfg(feature = "tonic")]
pub use self::grpc::{
    GrpcPolicy, GrpcRetryPolicy, GrpcServiceConfig, HedgingPolicy, MethodConfig, MethodName,
    RetryThrottling,
};

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration such as \"250ms\": {e}"))
        })
    }

    pub(super) fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        de(d).map(Some)
    }
}

/// A whole service: a server stack and a client stack per dependency.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The server stack's settings.
    #[serde(default)]
    pub server: Option<ServerSettings>,
    /// A client stack's settings per dependency, by name.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientSettings>,
}

impl ServiceConfig {
    /// The settings of the client stack `name`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the missing section.
    pub fn client_settings(&self, name: &str) -> Result<&ClientSettings, ConfigError> {
        self.clients
            .get(name)
            .ok_or_else(|| ConfigError::new("service", format!("clients.{name}: no such section")))
    }

    /// The server stack's settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when there is no `server` section.
    pub fn server_settings(&self) -> Result<&ServerSettings, ConfigError> {
        self.server
            .as_ref()
            .ok_or_else(|| ConfigError::new("service", "server: no such section"))
    }

    /// The generic client stack `name`, built from its section (as
    /// [`ClientStack::from_config`](crate::stack::ClientStack::from_config)).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the path of the setting that was refused.
    pub fn client(&self, name: &str) -> Result<crate::stack::ClientStackLayer, ConfigError> {
        crate::stack::ClientStack::from_config(name, self.client_settings(name)?)
    }

    /// The generic server stack, named `name`, built from the `server`
    /// section (without a rate limit: a section with a `rate_limit` is
    /// refused; build that one with
    /// `build_server(ServerStack::builder(name).rate_limit(q, |r| r))`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the path of the setting that was refused.
    pub fn server(
        &self,
        name: &str,
    ) -> Result<
        crate::stack::ServerStackLayer<tower::layer::util::Identity, tower::layer::util::Identity>,
        ConfigError,
    > {
        crate::stack::ServerStack::from_config(name, self.server_settings()?)
    }
}

/// A client stack's settings; each absent field keeps the stack's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientSettings {
    /// The total budget of a request (required to build).
    #[serde(default, deserialize_with = "duration::opt")]
    pub total_budget: Option<Duration>,
    /// The limit of each attempt (default: half the total budget, or all
    /// of it with one attempt).
    #[serde(default, deserialize_with = "duration::opt")]
    pub attempt_timeout: Option<Duration>,
    /// The breaker's slow-call duration.
    #[serde(default, deserialize_with = "duration::opt")]
    pub slow_call_duration: Option<Duration>,
    /// The retry layer.
    #[serde(default)]
    pub retry: RetrySettings,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// The bulkhead.
    #[serde(default)]
    pub bulkhead: BulkheadSettings,
    /// The adaptive limit's bounds, on the attempts in flight, and whether
    /// it waits at the limit.
    #[serde(default)]
    pub limit: LimitSettings,
}

/// The retry layer's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Attempts per request, the first included.
    pub max_attempts: Option<u32>,
    /// The first backoff.
    #[serde(default, deserialize_with = "duration::opt")]
    pub backoff_base: Option<Duration>,
    /// The longest backoff.
    #[serde(default, deserialize_with = "duration::opt")]
    pub backoff_cap: Option<Duration>,
    /// The share of requests that may be retried.
    pub budget_ratio: Option<f64>,
    /// The share of succeeded requests added to the budget.
    pub budget_success_ratio: Option<f64>,
    /// The floor of retries per second.
    pub min_retries_per_sec: Option<u32>,
}

/// The circuit breaker's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerSettings {
    /// The failure rate that opens it, in `(0, 1]`.
    pub failure_rate_threshold: Option<f64>,
    /// Calls in the window before a rate is judged.
    pub minimum_calls: Option<u32>,
    /// Failures in a row that open it.
    pub consecutive_failures: Option<u32>,
    /// How long it stays open.
    #[serde(default, deserialize_with = "duration::opt")]
    pub open_duration: Option<Duration>,
    /// Probes let through half-open.
    pub half_open_calls: Option<u32>,
    /// Whether a remote overload counts as a failure.
    pub count_overload: Option<bool>,
}

impl BreakerSettings {
    /// `t` with what this section sets of a breaker's run-time settings
    /// (an open time above the cap raises the cap to it): one rule when a
    /// stack is built from the section and when it reloads it.
    #[cfg(feature = "circuit-breaker")]
    pub(crate) fn tune(
        &self,
        mut t: crate::circuit_breaker::BreakerTuning,
    ) -> crate::circuit_breaker::BreakerTuning {
        if let Some(x) = self.failure_rate_threshold {
            t.failure_rate_threshold = x;
        }
        if let Some(n) = self.minimum_calls {
            t.minimum_calls = n;
        }
        if let Some(n) = self.consecutive_failures {
            t.consecutive_failures = Some(n);
        }
        if let Some(d) = self.open_duration {
            t.open_duration = d;
            t.max_open_duration = t.max_open_duration.max(d);
        }
        t
    }
}

/// The bulkhead's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BulkheadSettings {
    /// Calls in flight at most.
    pub max_concurrent: Option<usize>,
    /// Calls waiting at most.
    pub max_queue: Option<usize>,
    /// The longest wait for a permit.
    #[serde(default, deserialize_with = "duration::opt")]
    pub max_wait: Option<Duration>,
}

/// A hedge layer's settings (`HedgeLayerBuilder::configure`; the client
/// stacks add hedging in code, `.hedge(|h| h.configure(&s))`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeSettings {
    /// A fixed delay before a hedge (default: the p95 of recent calls).
    #[serde(default, deserialize_with = "duration::opt")]
    pub delay: Option<Duration>,
    /// Attempts in flight at most, the first included.
    pub max_attempts: Option<u32>,
    /// The share of requests that may be hedged.
    pub budget_ratio: Option<f64>,
}

/// A client-side throttle's settings (`ThrottleLayerBuilder::configure`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ThrottleSettings {
    /// The window requests and accepts are counted over.
    #[serde(default, deserialize_with = "duration::opt")]
    pub window: Option<Duration>,
    /// The multiplier K: the client keeps sending while
    /// `requests < K × accepts`.
    pub k: Option<f64>,
    /// The cap on the rejection probability.
    pub max_rejection_probability: Option<f64>,
}

/// An ejection layer's settings (`EjectionLayerBuilder::configure`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EjectionSettings {
    /// Remote failures in a row that eject an endpoint.
    pub consecutive_failures: Option<u32>,
    /// A first ejection's length.
    #[serde(default, deserialize_with = "duration::opt")]
    pub ejection_time: Option<Duration>,
    /// The longest ejection.
    #[serde(default, deserialize_with = "duration::opt")]
    pub max_ejection_time: Option<Duration>,
    /// The largest share of the set ejected at once, in percent.
    pub max_ejected_percent: Option<u32>,
    /// How often outliers are looked for.
    #[serde(default, deserialize_with = "duration::opt")]
    pub interval: Option<Duration>,
    /// Standard deviations below the mean success rate that eject.
    pub success_rate_stdev_factor: Option<f64>,
    /// Times the median latency that ejects (0 turns it off).
    pub latency_factor: Option<f64>,
    /// Whether a remote overload counts as a failure.
    pub count_overload: Option<bool>,
}

/// The adaptive limit's bounds (the algorithm keeps what it learns within
/// them), and whether it waits at the limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitSettings {
    /// The lowest concurrency limit (at least 1).
    pub min_limit: Option<usize>,
    /// The highest concurrency limit.
    pub max_limit: Option<usize>,
    /// Whether a request the limit refuses waits for a place instead
    /// (default: `true` in a client stack, `false` in a server stack; see
    /// [`AdaptiveLimitLayerBuilder::wait_at_limit`](crate::shed::AdaptiveLimitLayerBuilder::wait_at_limit)).
    pub wait_at_limit: Option<bool>,
}

/// A server stack's settings; each absent field keeps the stack's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerSettings {
    /// The server's budget per request (required to build).
    #[serde(default, deserialize_with = "duration::opt")]
    pub total_budget: Option<Duration>,
    /// The handler's time limit.
    #[serde(default, deserialize_with = "duration::opt")]
    pub handler_timeout: Option<Duration>,
    /// The bulkhead.
    #[serde(default)]
    pub bulkhead: BulkheadSettings,
    /// The adaptive limit's bounds, and whether it waits at the limit.
    #[serde(default)]
    pub limit: LimitSettings,
    /// The rate limit's quota. The stack's builder must have a rate limit
    /// (`.rate_limit(quota, |r| r)`: a rate limit changes the stack's type,
    /// so it is added in code); `build_server` and `from_config` then give
    /// it this rate, a reload changes it, and a stack without one refuses it.
    #[serde(default)]
    pub rate_limit: Option<Rate>,
}

/// A rate: `"100/s"`, `"6000/min"`, `"10/100ms"` alone, or with a burst as
/// `{ rate = "100/s", burst = 20 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rate {
    /// Requests per period.
    pub rate: (u32, Duration),
    /// The burst (default: the rate's count).
    pub burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateTable {
    #[serde(deserialize_with = "rate")]
    rate: (u32, Duration),
    #[serde(default)]
    burst: Option<u32>,
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as \"100/s\", or { rate = \"100/s\", burst = 20 }")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Rate, E> {
                let rate = parse_rate(s).ok_or_else(|| {
                    E::custom(format!(
                        "{s:?} is not a rate such as \"100/s\", \"6000/min\" or \"10/100ms\""
                    ))
                })?;
                Ok(Rate { rate, burst: None })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Rate, A::Error> {
                let t = RateTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Rate {
                    rate: t.rate,
                    burst: t.burst,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl std::str::FromStr for Rate {
    type Err = ConfigError;

    /// A rate as a file writes it: `"100/s"`, `"6000/min"`, `"10/100ms"`
    /// (the burst is the count).
    ///
    /// ```
    /// let rate: seawall::config::Rate = "100/s".parse()?;
    /// # let _ = rate;
    /// # Ok::<(), seawall::ConfigError>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_rate(s) {
            Some(rate) => Ok(Rate { rate, burst: None }),
            None => Err(ConfigError::new(
                "rate_limit",
                format!("{s:?} is not a rate such as \"100/s\", \"6000/min\" or \"10/100ms\""),
            )),
        }
    }
}

#[cfg(feature = "rate-limit")]
impl Rate {
    /// The quota of this rate.
    pub fn quota(&self) -> crate::rate_limit::Quota {
        let q = crate::rate_limit::Quota::new(self.rate.0, self.rate.1);
        match self.burst {
            Some(b) => q.burst(b),
            None => q,
        }
    }
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(u32, Duration), D::Error> {
    let s = String::deserialize(d)?;
    parse_rate(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{s:?} is not a rate such as \"100/s\", \"6000/min\" or \"10/100ms\""
        ))
    })
}

fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (n, per) = s.split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let per = per.trim();
    let period = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => humantime::parse_duration(other).ok()?,
    };
    (!period.is_zero()).then_some((n, period))
}

/// Prefixes a layer's refusal with the path of the section it came from.
pub(crate) fn at(path: impl fmt::Display, e: ConfigError) -> ConfigError {
    let section = match e.layer() {
        "retry" => ".retry",
        "circuit_breaker" => ".breaker",
        "bulkhead" => ".bulkhead",
        "rate_limit" => ".rate_limit",
        "adaptive_limit" => ".limit",
        _ => "",
    };
    ConfigError::new(e.layer(), format!("{path}{section}: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100/s"), Some((100, Duration::from_secs(1))));
        assert_eq!(
            parse_rate("6000/min"),
            Some((6000, Duration::from_secs(60)))
        );
        assert_eq!(
            parse_rate("10/100ms"),
            Some((10, Duration::from_millis(100)))
        );
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("10/0s"), None);
        assert_eq!(parse_rate("ten/s"), None);
        assert_eq!(parse_rate("100"), None);
    }
}
