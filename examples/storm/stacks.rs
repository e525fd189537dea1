//! seawall's stacks in the storm, exactly as a user gets them: the generic
//! [`ClientStack`] and [`ServerStack`] with their defaults, only the budgets
//! set. Copy from here.
//!
//! Client, outermost first:
//!
//! ```text
//! DeadlineLayer 1 s          one total budget per request, retries included
//!   RetryLayer               at most 3 attempts, jittered backoff, retry budget
//!     CircuitBreakerLayer    stop calling a backend that fails; probe to come back
//!       BulkheadLayer        this client's attempts in flight
//!         AttemptTimeoutLayer  500 ms per attempt: half the budget, by default (never past the deadline)
//! ```
//!
//! Server, in front of the backend:
//!
//! ```text
//! DeadlineLayer              honour the caller's deadline: drop work nobody waits for
//!   AdaptiveLimitLayer       admit what the backend can serve now, reject the rest at once
//!     BulkheadLayer          a hard cap on work in flight
//!       AttemptTimeoutLayer  the handler timeout
//! ```
//!
//! The request type here is the simulation's own, not HTTP, so the generic
//! stacks apply: to them every `Ok` is a success and every error a failure,
//! except a server's `Overloaded` (an overload: not counted by the breaker)
//! and this process's own refusals (never counted).

use std::time::Duration;

use seawall::error::ConfigError;
use seawall::observe::Observer;
use seawall::stack::{ClientStack, ServerStack};
use tower::Layer;

use super::{Backend, Scenario, Stack, Stacks, Wire};

/// seawall's stacks around `backend`, every layer reporting to `observer`;
/// with `breaker` false, the clients' breakers count but never open (to
/// measure the retry budget alone). With middle tiers, each one is a
/// service with the server stack whose handler calls the next hop through
/// the client stack.
pub(super) fn seawall(
    scenario: &Scenario,
    wire: &Wire,
    backend: Backend,
    observer: Observer,
    breaker: bool,
) -> Result<Stacks, ConfigError> {
    let mut deep = if scenario.client_only {
        Stack::new(backend)
    } else {
        server(Stack::new(backend), "backend", &observer)?
    };
    for tier in (0..scenario.middle_tiers).rev() {
        let name = format!("tier{}", tier + 1);
        let handler = client(scenario, wire, deep, &name, &observer, breaker)?;
        deep = server(handler, &name, &observer)?;
    }
    let client = client(scenario, wire, deep, "backend", &observer, breaker)?;
    Ok(Stacks {
        client,
        client_desc: format!(
            "seawall ClientStack defaults: Deadline {:?} -> Retry -> CircuitBreaker -> AdaptiveLimit -> Bulkhead -> AttemptTimeout 500ms",
            scenario.deadline
        ),
        server_desc: if scenario.client_only {
            "backend (unbounded queue)".into()
        } else {
            "seawall ServerStack defaults: Deadline (caller's) -> AdaptiveLimit -> Bulkhead -> backend".into()
        },
    })
}

/// The server stack in front of `inner`. 10 s is the server's own cap for
/// requests that bring no deadline; the caller's deadline travels with the
/// request.
fn server(inner: Stack, name: &str, observer: &Observer) -> Result<Stack, ConfigError> {
    Ok(Stack::new(
        ServerStack::builder(name.to_owned())
            .observer(observer.clone())
            .total_budget(Duration::from_secs(10))
            .build()?
            .layer(inner),
    ))
}

/// The client stack calling `server` over the network: the request's budget
/// and each attempt's.
fn client(
    scenario: &Scenario,
    wire: &Wire,
    server: Stack,
    name: &str,
    observer: &Observer,
    breaker: bool,
) -> Result<Stack, ConfigError> {
    // (The seed only makes the backoff draws reproducible from run to run;
    // it changes no behaviour.)
    let stack = ClientStack::builder(name.to_owned())
        .observer(observer.clone())
        .total_budget(scenario.deadline)
        .retry(|r| r.seed(scenario.seed))
        .build()?;
    if !breaker {
        stack.breaker_handle().metrics_only();
    }
    Ok(Stack::new(stack.layer(wire.connect(server))))
}
