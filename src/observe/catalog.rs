//! Every metric seawall's hooks report, once: its OpenTelemetry name and
//! unit, its Prometheus name (through the `metrics` facade), its kind and
//! its help text. `MetricsHook` describes these, `OtelHook` builds its
//! instruments from them.

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric (a build with one hook reads half of it).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(
    not(all(feature = "metrics", feature = "opentelemetry")),
    allow(dead_code)
)]
pub(crate) struct Spec {
    /// The OpenTelemetry instrument name (the unit is metadata).
    pub(crate) otel: &'static str,
    /// The `metrics` facade's name (a duration says its unit).
    pub(crate) prometheus: &'static str,
    pub(crate) kind: Kind,
    /// The unit in UCUM form (`s`, `{call}`).
    pub(crate) unit: &'static str,
    pub(crate) help: &'static str,
}

const fn spec(
    otel: &'static str,
    prometheus: &'static str,
    kind: Kind,
    unit: &'static str,
    help: &'static str,
) -> Spec {
    Spec {
        otel,
        prometheus,
        kind,
        unit,
        help,
    }
}

pub(crate) const CATALOG: &[Spec] = &[
    spec(
        "seawall.calls",
        "seawall.calls",
        Kind::Counter,
        "{call}",
        "Calls a seawall layer let through and saw finish, by outcome (success, failure, overloaded, refused, ignored).",
    ),
    spec(
        "seawall.call.duration",
        "seawall.call.duration.seconds",
        Kind::Histogram,
        "s",
        "How long the calls a seawall layer let through took, by outcome.",
    ),
    spec(
        "seawall.rejections",
        "seawall.rejections",
        Kind::Counter,
        "{request}",
        "Requests a seawall layer refused, and calls it cut short by a timeout, by reason and detail.",
    ),
    spec(
        "seawall.state",
        "seawall.state",
        Kind::Gauge,
        "{state}",
        "The state of a stateful seawall layer: exactly one state at 1.",
    ),
    spec(
        "seawall.state.changes",
        "seawall.state.changes",
        Kind::Counter,
        "{change}",
        "Changes of a stateful seawall layer's state, by the state entered (a breaker's opens, say, however short).",
    ),
    spec(
        "seawall.hedges",
        "seawall.hedges",
        Kind::Counter,
        "{request}",
        "Hedges a seawall hedge layer sent (copies of requests that had not answered).",
    ),
    spec(
        "seawall.fallbacks",
        "seawall.fallbacks",
        Kind::Counter,
        "{call}",
        "Calls a seawall fallback layer answered for, by reason (refused, overloaded, failure, deadline).",
    ),
    spec(
        "seawall.reconfigurations",
        "seawall.reconfigurations",
        Kind::Counter,
        "{reload}",
        "Settings a seawall layer took at run time (reloads).",
    ),
    spec(
        "seawall.ejections",
        "seawall.ejections",
        Kind::Counter,
        "{ejection}",
        "Endpoints a seawall ejection layer took out of their balanced set, by reason.",
    ),
    spec(
        "seawall.retries",
        "seawall.retries",
        Kind::Counter,
        "{retry}",
        "Retries a seawall retry layer scheduled.",
    ),
    spec(
        "seawall.retry.delay",
        "seawall.retry.delay.seconds",
        Kind::Histogram,
        "s",
        "The delays before the retries a seawall retry layer scheduled.",
    ),
    spec(
        "seawall.retry.gave_up",
        "seawall.retry.gave_up",
        Kind::Counter,
        "{request}",
        "Requests a seawall retry layer stopped retrying, by reason (circuit_open: an open breaker below turned them away).",
    ),
    spec(
        "seawall.retry.budget_exhausted",
        "seawall.retry.budget_exhausted",
        Kind::Counter,
        "{retry}",
        "Retries refused by an empty retry budget.",
    ),
    spec(
        "seawall.limit",
        "seawall.limit",
        Kind::Gauge,
        "{call}",
        "The current limit of a seawall concurrency limit (an adaptive limit, or a bulkhead's limit set at run time).",
    ),
    spec(
        "seawall.limit.inflight",
        "seawall.limit.inflight",
        Kind::Gauge,
        "{call}",
        "The most calls in flight under a seawall adaptive limit during its last window.",
    ),
    spec(
        "seawall.input.ignored",
        "seawall.input.ignored",
        Kind::Counter,
        "{input}",
        "Bad input (a header, a key) a seawall layer ignored, by input and reason.",
    ),
    spec(
        "seawall.backend.errors",
        "seawall.backend.errors",
        Kind::Counter,
        "{error}",
        "Errors of a seawall layer's backend (Redis), by reason.",
    ),
];
