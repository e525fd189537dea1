//! The "retry at one layer" guard: which attempt the request being handled
//! arrived as.

use std::future::Future;

thread_local! {
    static INBOUND_ATTEMPT: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// The attempt number (1-based) of the inbound request this task is handling,
/// if a server-side layer recorded it (with feature `http`,
/// [`MarkInboundAttemptLayer`](super::http::MarkInboundAttemptLayer) does, from
/// the [`ATTEMPT_HEADER`](super::ATTEMPT_HEADER)), or [`scope_inbound_attempt`] did.
///
/// When it is above 1, the request being handled is itself a retry made by a
/// caller upstream, and every [`RetryLayer`](super::RetryLayer) on this task
/// sends its requests only once (unless built with
/// `honor_inbound_retries(false)`): attempts multiply across layers, so only one
/// layer should retry.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use seawall::retry::{inbound_attempt, scope_inbound_attempt};
///
/// assert_eq!(inbound_attempt(), None);
/// scope_inbound_attempt(2, async {
///     assert_eq!(inbound_attempt(), Some(2));
/// })
/// .await;
/// # }
/// ```
#[inline]
pub fn inbound_attempt() -> Option<u32> {
    crate::local::get(&INBOUND_ATTEMPT)
}

/// Runs `fut` as the handling of an inbound request that arrived as attempt
/// `attempt` (1-based).
pub fn scope_inbound_attempt<F: Future>(attempt: u32, fut: F) -> crate::local::Scoped<u32, F> {
    crate::local::Scoped::new(&INBOUND_ATTEMPT, attempt, fut)
}

/// Runs `f` as the handling of an inbound request that arrived as attempt
/// `attempt` (1-based).
pub fn sync_scope_inbound_attempt<R>(attempt: u32, f: impl FnOnce() -> R) -> R {
    crate::local::sync_scope(&INBOUND_ATTEMPT, attempt, f)
}

#[inline]
fn inbound_is_retry() -> bool {
    inbound_attempt().is_some_and(|a| a > 1)
}

/// Whether `req` is already a retry (or a hedge) of an upstream caller: the
/// inbound request being handled was one, or `req` says so itself. Only one
/// layer of a call chain repeats a request.
#[inline]
pub(crate) fn arrived_as_retry<Req, Res>(
    policy: &impl super::RetryPolicy<Req, Res>,
    req: &Req,
) -> bool {
    inbound_is_retry() || policy.arrived_as_retry(req)
}
