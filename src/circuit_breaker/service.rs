use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::future::Future;

use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;
use tower_service::Service;

use super::future::{Guard, ResponseFuture};
use super::handle::Shared;
use super::state::{Core, Permit, PermitKind, Refusal, Wait};
use crate::classify::Classify;
use crate::clock;
use crate::error::{BoxError, CircuitOpen, RejectionKind};
use crate::hold::{Head, HoldVerdict};
use crate::observe::{EventKind, LayerKind};
use crate::stripe::Striped;

/// A service guarded by a circuit breaker (built by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer)). Clones share the
/// layer's breaker.
///
/// `poll_ready`: by default it only forwards the inner service's readiness, and
/// a call made while the breaker is open fails at once with
/// [`CircuitOpen`]. In backpressure mode it reports `Pending` while the
/// breaker is open, and wakes the task when the open time is over; also
/// while it is forced open, or half-open with every probe slot taken, until
/// it moves.
pub struct CircuitBreaker<S, C, M = Head> {
    inner: S,
    hold: PhantomData<fn() -> M>,
    shared: Striped<Shared<C>>,
    /// Backpressure mode only: the wake-up at the end of the open time. Made
    /// once per service the first time it waits, then reset.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Backpressure mode only, while waiting: the wake-up when an operator
    /// moves the breaker.
    moved: Option<Pin<Box<OwnedNotified>>>,
}

impl<S, C, M> CircuitBreaker<S, C, M> {
    pub(crate) fn new(inner: S, shared: Striped<Shared<C>>) -> Self {
        CircuitBreaker {
            inner,
            hold: PhantomData,
            shared,
            sleep: None,
            moved: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the breaker.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, M> Clone for CircuitBreaker<S, C, M> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            hold: PhantomData,
            shared: self.shared.clone(),
            sleep: None,
            moved: None,
        }
    }
}

impl<S: fmt::Debug, C, M> fmt::Debug for CircuitBreaker<S, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.shared.core.name)
            .field("state", &self.shared.core.state())
            .finish()
    }
}

impl<S, C, M, Req> Service<Req> for CircuitBreaker<S, C, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error>,
    M: HoldVerdict<S::Response, C>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.shared.core.config.backpressure
            && wait_while_open(&self.shared, &mut self.sleep, &mut self.moved, cx)
        {
            return Poll::Pending;
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // Two paths, each straight: a timed call's, and an untimed one's
        // (no slow calls, a count window, no hook), which reads no clock
        // while closed and opens no edge of it.
        if self.shared.core.timed {
            self.admit::<Req, true>(req)
        } else {
            self.admit::<Req, false>(req)
        }
    }
}

impl<S, C, M> CircuitBreaker<S, C, M> {
    /// Admits or refuses a call; `TIMED`: whether it keeps time (an
    /// untimed call carries the breaker's origin instead).
    #[inline]
    fn admit<Req, const TIMED: bool>(&mut self, req: Req) -> ResponseFuture<S::Future, C, M>
    where
        S: Service<Req>,
    {
        let core = &self.shared.core;
        let _edge = TIMED.then(crate::clock::Edge::enter);
        let now = if TIMED {
            clock::edge_now()
        } else {
            core.origin
        };
        let clock = core.clock;
        // This thread's slot: its handle on the state, and the lane of the
        // window the call is counted in.
        let slot = crate::stripe::thread_slot();
        match core.try_acquire(now, TIMED) {
            // The inner call made where the future is built: no copy of
            // it on the way. (A late probe took no slot; a disabled breaker
            // none.)
            Ok(mut permit) if permit.kind != PermitKind::Probe => {
                permit.lane = slot as u8;
                started(core);
                ResponseFuture::called(
                    self.inner.call(req),
                    Guard::new(self.shared.ticket_at(slot), permit, now, clock),
                )
            }
            Ok(mut permit) => {
                permit.lane = slot as u8;
                let future = call_probe(&mut self.inner, req, core, permit);
                ResponseFuture::called(
                    future,
                    Guard::new(self.shared.ticket_at(slot), permit, now, clock),
                )
            }
            Err(refusal) => ResponseFuture::rejected(refused(core, refusal)),
        }
    }
}

/// Reports a call let through.
#[inline(always)]
fn started(core: &Core) {
    core.observer.emit(
        LayerKind::CircuitBreaker,
        core.name.as_str(),
        EventKind::CallStarted,
    );
}

/// Makes a half-open probe's call: a hook or an inner service that panics
/// gives the probe's slot back as it unwinds (it was lost until a late
/// probe, one open time later). A closed breaker's call has no slot to
/// give back. Out of line: probes are rare.
#[cold]
#[inline(never)]
fn call_probe<S: Service<Req>, Req>(
    inner: &mut S,
    req: Req,
    core: &Core,
    permit: Permit,
) -> S::Future {
    struct Back<'a>(&'a Core, Permit);
    impl Drop for Back<'_> {
        fn drop(&mut self) {
            self.0.on_cancel(self.1);
        }
    }
    let back = Back(core, permit);
    started(core);
    let future = inner.call(req);
    // Made: the slot is the guard's now.
    std::mem::forget(back);
    future
}

/// Reports a refused call and builds its error, its `retry_after`
/// stretched by the breaker's jitter (callers refused together come back
/// spread over half the time again, not all as the breaker turns
/// half-open). Out of line: an admitted call never reaches it.
#[inline(never)]
fn refused(core: &Core, mut refusal: Refusal) -> CircuitOpen {
    refusal.retry_after = refusal.retry_after.map(|d| core.jitter.stretch(d));
    core.observer.emit(
        LayerKind::CircuitBreaker,
        core.name.as_str(),
        EventKind::Rejected {
            reason: RejectionKind::CircuitOpen,
            detail: refusal.detail,
            retry_after: refusal.retry_after,
        },
    );
    CircuitOpen::new(&core.name, refusal.retry_after)
}

/// Backpressure mode: whether the breaker is open and the task must wait
/// (woken at the end of the open time, or when an operator moves the
/// breaker). Out of line, so that the default mode's readiness is only the
/// inner service's.
#[inline(never)]
fn wait_while_open<C>(
    shared: &Shared<C>,
    slot: &mut Option<Pin<Box<Sleep>>>,
    moved: &mut Option<Pin<Box<OwnedNotified>>>,
    cx: &mut Context<'_>,
) -> bool {
    let core = &shared.core;
    loop {
        let mut now = clock::edge_now();
        let open = loop {
            match core.backpressure_wait(now) {
                Some(Wait::Until(until)) => {
                    if clock::poll_boxed_timer(slot, until, cx).is_pending() {
                        break true;
                    }
                    // The open time is over: judged by `until`, it ends the
                    // wait unless the breaker opened again since.
                    now = now.max(until);
                }
                // Forced open: until the breaker moves.
                Some(Wait::Moved) => break true,
                None => break false,
            }
        };
        if !open {
            // (Made only while open: nothing to wait for, nothing made.)
            *moved = None;
            return false;
        }
        let Some(notify) = &core.moved else {
            return true;
        };
        match moved {
            // Listening, then looking again: a move between the first look
            // and the wait still wakes this task.
            None => *moved = Some(Box::pin(notify.clone().notified_owned())),
            Some(m) => match m.as_mut().poll(cx) {
                // Moved since this wait began: look again.
                Poll::Ready(()) => *moved = None,
                Poll::Pending => return true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt};

    use crate::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
    use crate::error::BoxError;

    #[tokio::test(start_paused = true)]
    async fn a_fired_open_timer_ends_the_wait_even_on_an_edge_read_before_it() {
        let layer = CircuitBreakerLayer::builder()
            .window(SlidingWindow::count(1))
            .minimum_calls(1)
            .open_duration(Duration::from_secs(10))
            .backpressure(true)
            .build()
            .unwrap();
        let mut svc = layer.layer(tower::service_fn(|fail: bool| async move {
            if fail {
                Err::<(), BoxError>("down".into())
            } else {
                Ok(())
            }
        }));
        let _ = svc.ready().await.unwrap().call(true).await;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(
            svc.poll_ready(&mut cx).is_pending(),
            "open: the timer is armed"
        );
        // A layer above has read this edge's instant; then the open time
        // passes and the timer fires before this poll.
        let edge = crate::clock::Edge::enter();
        let read = crate::clock::edge_now();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(crate::clock::edge_now(), read, "the edge keeps its instant");
        assert!(
            svc.poll_ready(&mut cx).is_ready(),
            "ready once the timer fired (on the edge's older instant it armed the timer again)"
        );
        drop(edge);
    }
}
