use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::layer::Shared;
use crate::classify::{Classify, judge};
use crate::clock;
use crate::observe::Outcome;

/// Gives the endpoint's slot back when the last handle on it goes.
struct SlotGuard<C> {
    shared: Arc<Shared<C>>,
    index: Option<usize>,
}

impl<C> Drop for SlotGuard<C> {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            self.shared.registry.release(i);
        }
    }
}

/// The endpoint's place in the set, held by its service and every clone of
/// it: when the last goes, the endpoint leaves the set (its calls in flight
/// keep only the slot).
struct Presence<C> {
    slot: Arc<SlotGuard<C>>,
}

impl<C> Drop for Presence<C> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.index {
            self.slot.shared.registry.leave(i);
        }
    }
}

/// How often a clone of an endpoint that waits for the endpoint's probe
/// looks again: the endpoint wakes one waiting clone when the probe ends,
/// the last one that waited.
const PROBE_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// One endpoint of a balanced set, watched for outliers (built by
/// [`EjectionLayer`](super::EjectionLayer)).
///
/// `poll_ready` reports `Pending` while the endpoint is ejected (a balancer
/// such as `tower::balance::p2c` then picks among the others) and wakes the
/// task when the ejection ends; back, it takes one probe call, and is
/// healthy again if the probe succeeds. Clones share the endpoint: it
/// leaves the set when the last of them is dropped.
pub struct Ejectable<S, C> {
    inner: S,
    presence: Arc<Presence<C>>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// This clone was made ready holding the endpoint's one probe.
    probing: bool,
}

impl<S, C> Drop for Ejectable<S, C> {
    fn drop(&mut self) {
        if self.probing {
            // Made ready for the probe and dropped without calling: the
            // probe is free for another clone.
            if let Some(i) = self.presence.slot.index {
                let registry = &self.presence.slot.shared.registry;
                registry.record(i, None, std::time::Duration::ZERO, true, clock::edge_now());
            }
        }
    }
}

impl<S, C> Ejectable<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C>>) -> Self {
        let index = shared.registry.register();
        if index.is_none() {
            shared.full();
        }
        Ejectable {
            inner,
            presence: Arc::new(Presence {
                slot: Arc::new(SlotGuard { shared, index }),
            }),
            sleep: None,
            probing: false,
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

    /// Whether the endpoint is ejected now (its probe in flight counts).
    pub fn is_ejected(&self) -> bool {
        let slot = &self.presence.slot;
        match slot.index {
            Some(i) => slot.shared.registry.admit(i, clock::edge_now()).is_err(),
            None => false,
        }
    }
}

impl<S: Clone, C> Clone for Ejectable<S, C> {
    fn clone(&self) -> Self {
        Ejectable {
            inner: self.inner.clone(),
            presence: self.presence.clone(),
            sleep: None,
            probing: false,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Ejectable<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ejectable")
            .field("inner", &self.inner)
            .field("slot", &self.presence.slot.index)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for Ejectable<S, C>
where
    S: Service<Req>,
    S::Error: 'static,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.presence.slot.index {
            // This clone holds the probe (taken by an earlier `poll_ready`),
            // unless the ejection ended meanwhile (the set had no other
            // endpoint taking calls): then it is admitted as any call is.
            Some(i) if self.probing && self.presence.slot.shared.registry.probe_taken(i) => {}
            // Healthy (nearly always): admitted without reading the clock.
            Some(i) if !self.probing && self.presence.slot.shared.registry.is_healthy(i) => {}
            Some(i) => {
                self.probing = false;
                let registry = &self.presence.slot.shared.registry;
                let mut now = clock::edge_now();
                loop {
                    match registry.admit(i, now) {
                        Ok(false) => break,
                        // Back from an ejection: the one probe is taken as
                        // the clone is made ready (the other clones wait for
                        // it), and given back if this clone is dropped
                        // without calling.
                        Ok(true) => {
                            if registry.take_probe(i) {
                                self.probing = true;
                                break;
                            }
                        }
                        Err(Some(until)) => {
                            // Woken when its time is over, or when its
                            // ejection ends early (no endpoint of the set
                            // left taking calls).
                            registry.slots[i].waker.register(cx.waker());
                            ready!(clock::poll_boxed_timer(&mut self.sleep, until, cx));
                            // The ejection is over: judged by `until`, not by
                            // an instant read before the timer fired.
                            now = now.max(until);
                        }
                        Err(None) => {
                            // Its probe is in flight (or held by a clone made
                            // ready): woken when it ends (this clone, if it
                            // waited last; any other looks again every
                            // `PROBE_RECHECK`).
                            registry.slots[i].waker.register(cx.waker());
                            now = now.max(clock::edge_now());
                            if registry.admit(i, now) != Err(None) {
                                // It ended meanwhile.
                                continue;
                            }
                            let at = match &self.sleep {
                                Some(sleep) if sleep.deadline() > now => sleep.deadline(),
                                _ => now + PROBE_RECHECK,
                            };
                            ready!(clock::poll_boxed_timer(&mut self.sleep, at, cx));
                            now = now.max(at);
                        }
                    }
                }
            }
            None => {}
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let slot = &self.presence.slot;
        let probe = std::mem::take(&mut self.probing);
        ResponseFuture {
            inner: self.inner.call(req),
            slot: slot.index.map(|_| slot.clone()),
            probe,
            start: clock::edge_now(),
        }
    }
}

pin_project! {
    /// The response future of [`Ejectable`]: the inner call, whose outcome
    /// counts for the endpoint.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        slot: Option<Arc<SlotGuard<C>>>,
        probe: bool,
        start: Instant,
    }

    impl<F, C> PinnedDrop for ResponseFuture<F, C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(slot) = this.slot.take() else { return };
            let Some(i) = slot.index else { return };
            if crate::deadline::dropping_timed_out() {
                // An attempt timeout above ended the call: the endpoint did
                // not answer in time, a failure (a probe's too).
                let now = clock::edge_now();
                let latency = crate::clock::elapsed(*this.start, now);
                slot.shared.registry.record(i, Some(true), latency, *this.probe, now);
            } else if *this.probe {
                // A probe dropped for any other reason (its caller went, a
                // hedge won) decides nothing.
                slot.shared.registry.record(i, None, std::time::Duration::ZERO, true, clock::edge_now());
            }
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: 'static,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // No edge of its own: the instant read as the answer comes back is
        // read at the depth of the layer polling this one, and shared with
        // it (an adaptive limit above forgets a read deeper than its own,
        // as one made inside its handler, and read again: 3 clock reads a
        // call under the client stack where its own 2 suffice).
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(slot) = this.slot.take() {
            if let Some(i) = slot.index {
                let shared = &slot.shared;
                let now = clock::edge_now();
                let failure = match judge(&shared.classifier, result.as_ref()) {
                    Outcome::Success => Some(false),
                    Outcome::Failure => Some(true),
                    Outcome::Overloaded if shared.count_overload => Some(true),
                    // Busy: a failure only for an endpoint busy alone.
                    Outcome::Overloaded => {
                        shared.registry.busy(i, *this.probe, now).then_some(true)
                    }
                    _ => None,
                };
                shared.registry.record(
                    i,
                    failure,
                    crate::clock::elapsed(*this.start, now),
                    *this.probe,
                    now,
                );
                *this.probe = false;
            }
        }
        Poll::Ready(result)
    }
}
