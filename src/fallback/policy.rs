use std::fmt;
use std::future::Future;
use std::ops::BitOr;

use tower_service::Service;

use crate::observe::FallbackReason;

/// Which endings a [`FallbackLayer`](super::FallbackLayer) answers for: a set
/// of [`FallbackReason`]s (`FallbackOn::REFUSED | FallbackOn::OVERLOADED`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FallbackOn(pub(crate) u8);

impl FallbackOn {
    /// This process refused the call before sending it (a local refusal).
    pub const REFUSED: FallbackOn = FallbackOn(1);
    /// The dependency said it was busy (a remote overload).
    pub const OVERLOADED: FallbackOn = FallbackOn(2);
    /// The dependency failed (a remote failure).
    pub const FAILURE: FallbackOn = FallbackOn(4);
    /// The request's deadline ran out. The fallback answers only within the
    /// request's own deadline: the call below runs under that deadline less
    /// a tenth of the time left (at most the fallback's timeout), and the
    /// fallback answers in that tenth (see the [module docs](super)). A
    /// fallback that declines to answer for the deadline (answers `None`)
    /// still costs the call that tenth: leave `DEADLINE` out of
    /// [`on`](super::FallbackLayerBuilder::on) then.
    pub const DEADLINE: FallbackOn = FallbackOn(8);
    /// Every reason (the default).
    pub const ALL: FallbackOn = FallbackOn(15);

    /// Whether `reason` is in the set.
    pub const fn contains(self, reason: FallbackReason) -> bool {
        let bit = match reason {
            FallbackReason::Refused => 1,
            FallbackReason::Overloaded => 2,
            FallbackReason::Failure => 4,
            FallbackReason::Deadline => 8,
        };
        self.0 & bit != 0
    }
}

impl BitOr for FallbackOn {
    type Output = FallbackOn;

    fn bitor(self, rhs: FallbackOn) -> FallbackOn {
        FallbackOn(self.0 | rhs.0)
    }
}

impl fmt::Debug for FallbackOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = [
            FallbackReason::Refused,
            FallbackReason::Overloaded,
            FallbackReason::Failure,
            FallbackReason::Deadline,
        ];
        f.debug_set()
            .entries(
                all.iter()
                    .filter(|r| self.contains(**r))
                    .map(|r| r.as_str()),
            )
            .finish()
    }
}

/// What a fallback answers with, for requests `Req` of a service answering
/// `Result<Res, E>`.
///
/// [`memo`](Self::memo) keeps what the answer will need from the request
/// (it is called for every request, before the request goes to the
/// service: keep it cheap, `()` when nothing is needed).
/// [`answer`](Self::answer) is called when a call ends for a reason the
/// layer routes; its future gives the response, or `None` to let the
/// original outcome through.
///
/// Made from closures by [`fallback_fn`] and [`fallback_with`], from a
/// second service by [`fallback_to`].
pub trait FallbackPolicy<Req, Res, E>: Send + Sync + 'static {
    /// What is kept from each request.
    type Memo;
    /// The fallback's answer.
    type Future: Future<Output = Option<Res>>;

    /// Keeps what [`answer`](Self::answer) needs from `req`.
    fn memo(&self, req: &Req) -> Self::Memo;

    /// The answer for a call that ended with `outcome` for `reason`.
    fn answer(
        &self,
        memo: Self::Memo,
        reason: FallbackReason,
        outcome: Result<&Res, &E>,
    ) -> Self::Future;
}

/// A fallback from a closure of the reason and the outcome; see
/// [`fallback_fn`].
#[derive(Clone, Copy)]
pub struct FallbackFn<F> {
    f: F,
}

impl<F> fmt::Debug for FallbackFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFn").finish_non_exhaustive()
    }
}

/// A fallback answering from the reason and the failed outcome alone (a
/// default response, a cached value that needs no key, a degraded answer).
///
/// ```
/// use seawall::fallback::fallback_fn;
/// use seawall::observe::FallbackReason;
///
/// let stale = fallback_fn(|_: FallbackReason, _: Result<&String, &seawall::BoxError>| async {
///     Some("the last known price: 42".to_owned())
/// });
/// # let _ = stale;
/// ```
pub fn fallback_fn<F>(f: F) -> FallbackFn<F> {
    FallbackFn { f }
}

impl<Req, Res, E, F, Fut> FallbackPolicy<Req, Res, E> for FallbackFn<F>
where
    F: Fn(FallbackReason, Result<&Res, &E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Res>>,
{
    type Memo = ();
    type Future = Fut;

    #[inline]
    fn memo(&self, _: &Req) {}

    fn answer(&self, (): (), reason: FallbackReason, outcome: Result<&Res, &E>) -> Fut {
        (self.f)(reason, outcome)
    }
}

/// A fallback that keeps something of the request; see [`fallback_with`].
#[derive(Clone, Copy)]
pub struct FallbackWith<M, F> {
    memo: M,
    f: F,
}

impl<M, F> fmt::Debug for FallbackWith<M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackWith").finish_non_exhaustive()
    }
}

/// A fallback that keeps `memo(&request)` (a path, a cache key) and answers
/// from it, the reason and the failed outcome.
///
/// ```
/// use seawall::fallback::fallback_with;
/// use seawall::observe::FallbackReason;
///
/// // Answer a failed product lookup from a local cache, by product id.
/// let cached = fallback_with(
///     |id: &u64| *id,
///     |id: u64, _: FallbackReason, _: Result<&String, &seawall::BoxError>| async move {
///         Some(format!("product {id} (cached)"))
///     },
/// );
/// # let _ = cached;
/// ```
pub fn fallback_with<M, F>(memo: M, f: F) -> FallbackWith<M, F> {
    FallbackWith { memo, f }
}

impl<Req, Res, E, K, M, F, Fut> FallbackPolicy<Req, Res, E> for FallbackWith<M, F>
where
    M: Fn(&Req) -> K + Send + Sync + 'static,
    F: Fn(K, FallbackReason, Result<&Res, &E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Res>>,
{
    type Memo = K;
    type Future = Fut;

    #[inline]
    fn memo(&self, req: &Req) -> K {
        (self.memo)(req)
    }

    fn answer(&self, memo: K, reason: FallbackReason, outcome: Result<&Res, &E>) -> Fut {
        (self.f)(memo, reason, outcome)
    }
}

/// A fallback that sends a copy of the request to a second service; see
/// [`fallback_to`].
#[derive(Clone, Debug)]
pub struct FallbackTo<S> {
    service: S,
}

/// A fallback that sends a clone of the request to `service` (a replica in
/// another region, a degraded read path). Its answer replaces the failed
/// one; its error lets the original outcome through. Requests must be
/// `Clone` (they are cloned before every call): an `http::Request` or a
/// `tonic::Request` is not, so for those use
/// [`fallback_with`] and keep the copy
/// the second service needs (its URI, method and headers) yourself.
///
/// Every request that fails is sent again, whatever it does: a write that
/// the first service carried out before it failed or timed out runs twice.
/// For writes, fall back only on refusals made before sending
/// (`FallbackLayer::builder(..).on(FallbackOn::REFUSED)`), or keep this
/// fallback to a stack for reads.
pub fn fallback_to<S>(service: S) -> FallbackTo<S> {
    FallbackTo { service }
}

impl<Req, Res, E, S> FallbackPolicy<Req, Res, E> for FallbackTo<S>
where
    Req: Clone,
    S: Service<Req, Response = Res> + Clone + Send + Sync + 'static,
{
    type Memo = Req;
    type Future = ToAnswer<S, Req>;

    fn memo(&self, req: &Req) -> Req {
        req.clone()
    }

    fn answer(&self, req: Req, _: FallbackReason, _: Result<&Res, &E>) -> Self::Future {
        ToAnswer {
            inner: crate::oneshot::Oneshot::new(self.service.clone(), req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`fallback_to`] service: its response, or `None`.
    pub struct ToAnswer<S: Service<Req>, Req> {
        #[pin]
        inner: crate::oneshot::Oneshot<S, Req>,
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ToAnswer<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToAnswer").finish_non_exhaustive()
    }
}

impl<S: Service<Req>, Req> Future for ToAnswer<S, Req> {
    type Output = Option<S::Response>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|out| out.and_then(Result::ok))
    }
}
