//! gRPC's service config (the JSON of `grpc.service_config`): its
//! `timeout`, `retryPolicy`, `hedgingPolicy` and `retryThrottling`, read
//! into the gRPC client preset.

use std::time::Duration;

use serde::Deserialize;
use tonic::Code;

use crate::error::ConfigError;

/// A gRPC service config, as gRPC clients read it (`serde_json::from_str`).
/// Only the fields below are read; others are ignored, as gRPC does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct GrpcServiceConfig {
    /// The per-method configurations.
    #[serde(default)]
    pub method_config: Vec<MethodConfig>,
    /// gRPC's retry throttling.
    #[serde(default)]
    pub retry_throttling: Option<RetryThrottling>,
}

/// One `methodConfig` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MethodConfig {
    /// The methods it applies to (a service alone: all its methods; none,
    /// or `{}`: every method).
    #[serde(default)]
    pub name: Vec<MethodName>,
    /// The deadline of a call (`"1.5s"`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// The retry policy.
    #[serde(default)]
    pub retry_policy: Option<GrpcRetryPolicy>,
    /// The hedging policy.
    #[serde(default)]
    pub hedging_policy: Option<HedgingPolicy>,
}

/// A `name` of a `methodConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct MethodName {
    /// `package.Service` (empty: every service).
    #[serde(default)]
    pub service: String,
    /// The method (empty: every method of the service).
    #[serde(default)]
    pub method: String,
}

/// A `retryPolicy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct GrpcRetryPolicy {
    /// Attempts, the first included (gRPC caps it at 5).
    pub max_attempts: u32,
    /// The first backoff (`"0.1s"`).
    pub initial_backoff: String,
    /// The longest backoff.
    pub max_backoff: String,
    /// The backoff's growth per attempt.
    pub backoff_multiplier: f64,
    /// The status codes retried (`"UNAVAILABLE"`, or its number `14`).
    #[serde(deserialize_with = "codes")]
    pub retryable_status_codes: Vec<String>,
}

/// A `hedgingPolicy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HedgingPolicy {
    /// Attempts in flight, the first included.
    pub max_attempts: u32,
    /// The delay before each copy (`"0.05s"`; absent: at once).
    #[serde(default)]
    pub hedging_delay: Option<String>,
    /// Status codes after which the other copies keep running. A copy's
    /// failure never ends a request whose first attempt still runs; the
    /// first attempt's ends it unless the stack's retry policy retries its
    /// code, so each code here must be one it retries
    /// ([`ClientStackBuilder::service_config`](crate::stack::ClientStackBuilder::service_config)
    /// checks).
    #[serde(default, deserialize_with = "codes")]
    pub non_fatal_status_codes: Vec<String>,
}

/// `retryThrottling`: a token bucket of failures.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RetryThrottling {
    /// The bucket's size.
    pub max_tokens: u32,
    /// Tokens a success adds back.
    pub token_ratio: f64,
}

/// What a service config says for the gRPC preset.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct GrpcPolicy {
    /// The call deadline: the stack's total budget.
    pub timeout: Option<Duration>,
    /// `max_attempts`, backoff base and cap, and the policy with its codes.
    pub retry: Option<(u32, Duration, Duration, crate::retry::grpc::GrpcRetry)>,
    /// The hedge's delay and attempts, and the methods hedged (their paths).
    pub hedging: Option<(Duration, u32, Vec<String>)>,
}

/// Status codes as protobuf JSON writes an enum: names or numbers (kept as
/// text, read by [`code`]).
fn codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Name(String),
        Number(i64),
    }
    Ok(Vec::<NameOrNumber>::deserialize(d)?
        .into_iter()
        .map(|c| match c {
            NameOrNumber::Name(n) => n,
            NameOrNumber::Number(n) => n.to_string(),
        })
        .collect())
}

/// A protobuf JSON duration: seconds with an `s` suffix (`"0.1s"`, `"2s"`).
fn duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    s.strip_suffix('s')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .and_then(|n| Duration::try_from_secs_f64(n).ok())
        .ok_or_else(|| {
            ConfigError::new(
                "grpc_service_config",
                format!("{field}: {s:?} is not a duration such as \"0.1s\""),
            )
        })
}

pub(crate) fn code(field: &str, name: &str) -> Result<Code, ConfigError> {
    let codes = [
        ("CANCELLED", Code::Cancelled),
        ("UNKNOWN", Code::Unknown),
        ("INVALID_ARGUMENT", Code::InvalidArgument),
        ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
        ("NOT_FOUND", Code::NotFound),
        ("ALREADY_EXISTS", Code::AlreadyExists),
        ("PERMISSION_DENIED", Code::PermissionDenied),
        ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
        ("FAILED_PRECONDITION", Code::FailedPrecondition),
        ("ABORTED", Code::Aborted),
        ("OUT_OF_RANGE", Code::OutOfRange),
        ("UNIMPLEMENTED", Code::Unimplemented),
        ("INTERNAL", Code::Internal),
        ("UNAVAILABLE", Code::Unavailable),
        ("DATA_LOSS", Code::DataLoss),
        ("UNAUTHENTICATED", Code::Unauthenticated),
    ];
    // By name, or by number (protobuf JSON writes an enum either way).
    let by_number = name
        .parse::<i32>()
        .ok()
        .filter(|n| (1..=16).contains(n))
        .map(Code::from_i32);
    codes
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
        .or(by_number)
        .ok_or_else(|| {
            ConfigError::new(
                "grpc_service_config",
                format!("{field}: {name:?} is not a gRPC status code name"),
            )
        })
}

/// The methods a config's retry policy applies to: no names when some
/// retry entry covers every method (no name, or `{}`).
struct RetryScope<'a> {
    names: Vec<&'a MethodName>,
}

impl<'a> RetryScope<'a> {
    /// `None`: no retry policy. `Some` with no names: every method.
    fn of(entries: &'a [MethodConfig]) -> Option<Self> {
        let mut names = Vec::new();
        let mut any = false;
        for m in entries.iter().filter(|m| m.retry_policy.is_some()) {
            any = true;
            if m.name.is_empty() || m.name.iter().any(|n| n.service.is_empty()) {
                return Some(RetryScope { names: Vec::new() });
            }
            for n in &m.name {
                if !names
                    .iter()
                    .any(|o: &&MethodName| o.service == n.service && o.method == n.method)
                {
                    names.push(n);
                }
            }
        }
        any.then_some(RetryScope { names })
    }

    /// Whether the methods `n` names are retried (every method when the
    /// scope names none).
    fn covers(&self, n: &MethodName) -> bool {
        self.names.is_empty()
            || self
                .names
                .iter()
                .any(|r| r.service == n.service && (r.method.is_empty() || r.method == n.method))
    }
}

impl GrpcServiceConfig {
    /// What this config says for one client stack (one dependency): the
    /// `methodConfig` entries' timeout and retry policy, which must agree
    /// (a seawall stack has one policy per dependency), and the hedged
    /// methods.
    ///
    /// The retry policy retries the methods its entries name (a service:
    /// all its methods; an entry without a name, or `{}`: every method),
    /// and a call to any other method is sent once, as gRPC does
    /// ([`GrpcRetry::retry_method`](crate::retry::grpc::GrpcRetry::retry_method)).
    /// The timeout is the stack's total budget for every method.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (layer `"grpc_service_config"`) for what does not
    /// map: `retryThrottling` (a token bucket of failures; seawall's retry
    /// budget is a share of requests over a window: set `budget_ratio`
    /// instead), a `backoffMultiplier` other than 2 (seawall doubles), entries
    /// whose timeouts or retry policies differ, an entry with neither a retry
    /// nor a hedging policy for methods a retry entry covers (a write in a
    /// retried service: the one retry policy would retry it), a method with
    /// both a retry and a hedging policy, `maxAttempts` below 2 (above 5 it
    /// is taken as 5, as gRPC does), an empty `retryableStatusCodes`, more
    /// than 16 names retried or
    /// methods hedged, a method named without its service, and malformed
    /// durations or codes. Each error names the field.
    pub fn policy(&self) -> Result<GrpcPolicy, ConfigError> {
        let err = |m: String| Err(ConfigError::new("grpc_service_config", m));
        if self.retry_throttling.is_some() {
            return err(
                "retryThrottling: no equivalent; seawall's retry budget is a share of \
                        requests over a sliding window (retry.budget_ratio)"
                    .into(),
            );
        }
        // A name is a service's methods or one method; a method without
        // its service names nothing gRPC would match.
        for (i, m) in self.method_config.iter().enumerate() {
            if let Some(n) = m
                .name
                .iter()
                .find(|n| n.service.is_empty() && !n.method.is_empty())
            {
                return err(format!(
                    "methodConfig[{i}].name: method {:?} without its service; name \
                     {{\"service\": \"pkg.Service\", \"method\": {:?}}}",
                    n.method, n.method
                ));
            }
        }
        // The retry policy applies to the names its entries give (every
        // method for an entry without a name, or with `{}`); other methods
        // are sent once, as gRPC does. An entry with neither policy for
        // methods a retry entry covers (a write in a retried service) is
        // refused: the stack's one policy would retry them. A hedged entry
        // may go without: a method hedged is one that may run twice.
        let retried = RetryScope::of(&self.method_config);
        if let Some(scope) = &retried {
            if let Some(i) = self.method_config.iter().position(|m| {
                m.retry_policy.is_none()
                    && m.hedging_policy.is_none()
                    && (m.name.is_empty() || m.name.iter().any(|n| scope.covers(n)))
            }) {
                return err(format!(
                    "methodConfig[{i}]: no retryPolicy for methods another entry's retryPolicy \
                     covers; a seawall stack has one retry policy: give these methods a stack \
                     of their own, or name the retried methods one by one"
                ));
            }
            if scope.names.len() > crate::retry::grpc::MAX_RETRIED_NAMES {
                return err(format!(
                    "retryPolicy: {} names retried; a stack retries {} at most (name their \
                     services instead)",
                    scope.names.len(),
                    crate::retry::grpc::MAX_RETRIED_NAMES
                ));
            }
        }
        let mut out = GrpcPolicy::default();
        let mut hedged = Vec::new();
        for (i, m) in self.method_config.iter().enumerate() {
            let at = format!("methodConfig[{i}]");
            if let Some(t) = &m.timeout {
                let t = duration(&format!("{at}.timeout"), t)?;
                match out.timeout {
                    Some(prev) if prev != t => {
                        return err(format!(
                            "{at}.timeout: {t:?} differs from an earlier entry's {prev:?}; a \
                             seawall stack has one budget per dependency"
                        ));
                    }
                    _ => out.timeout = Some(t),
                }
            }
            if m.retry_policy.is_some() && m.hedging_policy.is_some() {
                return err(format!(
                    "{at}: both retryPolicy and hedgingPolicy (gRPC allows one)"
                ));
            }
            if let Some(r) = &m.retry_policy {
                let f = format!("{at}.retryPolicy");
                if r.max_attempts < 2 {
                    return err(format!(
                        "{f}.maxAttempts: must be at least 2, got {}",
                        r.max_attempts
                    ));
                }
                if (r.backoff_multiplier - 2.0).abs() > f64::EPSILON {
                    return err(format!(
                        "{f}.backoffMultiplier: seawall's backoff doubles; got {}",
                        r.backoff_multiplier
                    ));
                }
                let base = duration(&format!("{f}.initialBackoff"), &r.initial_backoff)?;
                let cap = duration(&format!("{f}.maxBackoff"), &r.max_backoff)?;
                let codes = r
                    .retryable_status_codes
                    .iter()
                    .map(|c| code(&format!("{f}.retryableStatusCodes"), c))
                    .collect::<Result<Vec<_>, _>>()?;
                if codes.is_empty() {
                    return err(format!(
                        "{f}.retryableStatusCodes: empty; a retry policy retries at least one \
                         code (\"UNAVAILABLE\")"
                    ));
                }
                let policy = crate::retry::grpc::GrpcRetry::with_codes(codes);
                // gRPC treats more than 5 as 5 (A6), and so does this.
                let this = (r.max_attempts.min(5), base, cap, policy);
                match &out.retry {
                    Some(prev) if *prev != this => {
                        return err(format!(
                            "{f}: differs from an earlier entry's; a seawall stack has one \
                             retry policy per dependency"
                        ));
                    }
                    _ => out.retry = Some(this),
                }
            }
            if let Some(h) = &m.hedging_policy {
                let f = format!("{at}.hedgingPolicy");
                if h.max_attempts < 2 {
                    return err(format!(
                        "{f}.maxAttempts: must be at least 2, got {}",
                        h.max_attempts
                    ));
                }
                let delay = match &h.hedging_delay {
                    Some(d) => duration(&format!("{f}.hedgingDelay"), d)?,
                    None => Duration::ZERO,
                };
                if delay.is_zero() {
                    return err(format!(
                        "{f}.hedgingDelay: copies sent at once are not hedges; give a delay"
                    ));
                }
                for n in &m.name {
                    if n.method.is_empty() {
                        return err(format!(
                            "{f}: name {{service: {:?}}} hedges every method; list the idempotent \
                             methods one by one",
                            n.service
                        ));
                    }
                    hedged.push(format!("/{}/{}", n.service, n.method));
                }
                // Read here (a bad name is refused by its field); checked
                // against the stack's retry policy where that is known, in
                // `ClientStackBuilder::service_config`.
                for c in &h.non_fatal_status_codes {
                    code(&format!("{f}.nonFatalStatusCodes"), c)?;
                }
                let attempts = h.max_attempts.min(5);
                match &out.hedging {
                    Some((d, a, _)) if (*d, *a) != (delay, attempts) => {
                        return err(format!("{f}: differs from an earlier entry's"));
                    }
                    _ => out.hedging = Some((delay, attempts, Vec::new())),
                }
            }
        }
        if let (Some(scope), Some(r)) = (&retried, &mut out.retry) {
            for n in &scope.names {
                r.3 = if n.method.is_empty() {
                    r.3.retry_service(&n.service)
                } else {
                    r.3.retry_method(&format!("/{}/{}", n.service, n.method))
                };
            }
        }
        hedged.sort();
        hedged.dedup();
        let most = crate::retry::grpc::MAX_HEDGED_METHODS;
        if hedged.len() > most {
            return err(format!(
                "hedgingPolicy: {} methods hedged; a stack hedges {most} at most",
                hedged.len()
            ));
        }
        if let Some(h) = &mut out.hedging {
            h.2 = hedged;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_protobuf_json_seconds() {
        assert_eq!(duration("t", "0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(duration("t", "2s").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("t", "0s").unwrap(), Duration::ZERO);
        // Refused, never a panic: no unit, another unit, negative, not a
        // number, too large for a Duration.
        for bad in ["2", "100ms", "1m", "-1s", "NaNs", "infs", "1e300s", "s", ""] {
            let e = duration("methodConfig[0].timeout", bad).unwrap_err();
            assert!(
                e.message().starts_with("methodConfig[0].timeout: "),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_policy_reads_codes_as_json_names_or_numbers() {
        let p: GrpcRetryPolicy = serde_json::from_str(
            r#"{"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 8]}"#,
        )
        .unwrap();
        assert_eq!(p.retryable_status_codes, ["UNAVAILABLE", "8"]);
        assert_eq!(
            code("c", &p.retryable_status_codes[1]).unwrap(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn status_codes_are_read_by_name_or_number() {
        assert_eq!(code("c", "UNAVAILABLE").unwrap(), Code::Unavailable);
        assert_eq!(code("c", "unavailable").unwrap(), Code::Unavailable);
        assert_eq!(code("c", "14").unwrap(), Code::Unavailable);
        assert_eq!(
            code("c", "RESOURCE_EXHAUSTED").unwrap(),
            Code::ResourceExhausted
        );
        // OK is no failure to retry; 17 is no code.
        for bad in ["OK_ISH", "0", "17", "-1", ""] {
            assert!(code("retryableStatusCodes[0]", bad).is_err(), "{bad}");
        }
    }
}
