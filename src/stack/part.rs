//! Optional parts of the stack builders, built together with the stack.

use tower::layer::util::Identity;

use crate::error::{ConfigError, Name};
use crate::observe::Observer;

pub(crate) mod sealed {
    /// The stacks' part traits are sealed: their implementations are the
    /// parts the builders hand out.
    pub trait Sealed {}

    impl Sealed for super::Skip {}
    impl Sealed for tower::layer::util::Identity {}
    impl<I, O> Sealed for tower::layer::util::Stack<I, O> {}
    #[cfg(feature = "hedge")]
    impl<Q> Sealed for crate::hedge::HedgeLayerBuilder<Q> {}
    #[cfg(feature = "http")]
    impl Sealed for crate::deadline::propagate::PropagateDeadlineLayerBuilder {}
    #[cfg(feature = "http")]
    impl Sealed for crate::deadline::propagate::DeadlineFromHeadersLayerBuilder {}
    #[cfg(all(feature = "http", feature = "deadline"))]
    impl Sealed for crate::deadline::propagate::PropagateDeadlineLayer {}
    #[cfg(all(feature = "http", feature = "deadline"))]
    impl Sealed for crate::body::CallBodyLayer {}
    #[cfg(feature = "rate-limit")]
    impl<X, D> Sealed for crate::rate_limit::RateLimitLayerBuilder<X, D> {}
    #[cfg(feature = "rate-limit")]
    impl<X, D> Sealed for crate::rate_limit::RateLimitLayer<X, D> {}
}

/// An optional layer of a stack builder, kept unbuilt until the stack is
/// built (so that the stack's observer reaches it whatever the order of the
/// builder calls).
///
/// Implemented for [`Skip`] (the part is left out: it builds tower's
/// [`Identity`], which adds nothing to the service type and costs nothing)
/// and for the builders of the optional seawall layers the stacks accept.
/// Sealed: the builders hand out every part there is.
pub trait StackPart: sealed::Sealed {
    /// The layer this part builds.
    type Layer;

    /// Builds the layer, handing it the stack's observer when one was set.
    /// (The stacks' plumbing: not for use outside them.)
    #[doc(hidden)]
    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError>;

    /// Tells the part the stack's total budget before it is built (the
    /// server presets' ingress holds answers to it); most parts ignore it.
    #[doc(hidden)]
    fn with_budget(self, _budget: std::time::Duration) -> Self
    where
        Self: Sized,
    {
        self
    }
}

/// An optional part left out of a stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Skip;

impl StackPart for Skip {
    type Layer = Identity;

    #[inline]
    fn build_part(self, _observer: Option<&Observer>) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

/// The hedging part of a client stack: [`Skip`] (no hedging) or, with
/// feature `hedge`, a `HedgeLayerBuilder`, built with the stack's retry
/// policy `P` and observer.
pub trait HedgePart<P>: sealed::Sealed {
    /// The layer this part builds.
    type Layer;

    /// Builds the layer with the stack's retry policy and observer.
    #[doc(hidden)]
    fn build_hedge(
        self,
        policy: &P,
        observer: Option<&Observer>,
    ) -> Result<Self::Layer, ConfigError>;

    /// The fixed delay before a copy, if one was set.
    #[doc(hidden)]
    fn fixed_delay(&self) -> Option<std::time::Duration> {
        None
    }
}

impl<P> HedgePart<P> for Skip {
    type Layer = Identity;

    #[inline]
    fn build_hedge(self, _: &P, _: Option<&Observer>) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

#[cfg(feature = "hedge")]
impl<P: Clone + 'static, Q> HedgePart<P> for crate::hedge::HedgeLayerBuilder<Q> {
    type Layer = crate::hedge::HedgeLayer<P>;

    fn build_hedge(
        self,
        policy: &P,
        observer: Option<&Observer>,
    ) -> Result<Self::Layer, ConfigError> {
        let builder = self.policy(policy.clone());
        match observer {
            Some(o) => builder.observer(o.clone()).build(),
            None => builder.build(),
        }
    }

    fn fixed_delay(&self) -> Option<std::time::Duration> {
        self.fixed_delay_setting()
    }
}

#[cfg(feature = "http")]
impl StackPart for crate::deadline::propagate::PropagateDeadlineLayerBuilder {
    type Layer = crate::deadline::propagate::PropagateDeadlineLayer;

    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
        match observer {
            Some(o) => self.observer(o.clone()).build(),
            None => self.build(),
        }
    }
}

#[cfg(feature = "http")]
/// A server stack's ingress: a request it refuses has the rest of its body
/// read first (see [`Release`](crate::hold::Release)).
impl StackPart for crate::deadline::propagate::DeadlineFromHeadersLayerBuilder {
    type Layer = crate::deadline::propagate::DeadlineFromHeadersLayer<crate::hold::Inbound>;

    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
        let built = match observer {
            Some(o) => self.observer(o.clone()).build(),
            None => self.build(),
        };
        built.map(|layer| layer.held())
    }

    /// The cap a caller may ask for is the stack's budget (or a lower
    /// `max`), as in the presets: with the header cap's 30 s default under
    /// a 60 s budget, a caller that asked for 45 s got 30, and one that
    /// asked nothing got 60.
    fn with_budget(self, budget: std::time::Duration) -> Self {
        self.cap_at(budget)
    }
}

#[cfg(feature = "rate-limit")]
impl<X, D> StackPart for crate::rate_limit::RateLimitLayerBuilder<X, D> {
    type Layer = crate::rate_limit::RateLimitLayer<X, D>;

    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
        match observer {
            Some(o) => self.observer(o.clone()).build(),
            None => self.build(),
        }
    }
}

/// `"{stack}.{part}"`: the instance name of one layer of a stack.
pub(crate) fn part_name(stack: &Name, part: &str) -> Name {
    Name::from(format!("{stack}.{part}"))
}

/// The inner timeout of a stack: the client's per attempt, the server's per
/// handler.
pub(crate) struct InnerTimeout {
    /// Its part's name (`"attempt"`, `"handler"`).
    pub(crate) part: &'static str,
    /// Its setting's name, for errors (`"attempt_timeout"`).
    pub(crate) setting: &'static str,
    pub(crate) timeout: std::time::Duration,
    /// See `AttemptTimeoutLayerBuilder::own_end`: 20 ms for a client's
    /// attempts, zero for a server's handler.
    pub(crate) own_end: std::time::Duration,
}

/// A stack's two timers: its total budget (`{stack}.deadline`) and its inner
/// timeout, named after the stack and reporting to its observer. The inner
/// timeout may not exceed the budget.
pub(crate) fn stack_timers(
    stack: &Name,
    kind: &'static str,
    total: std::time::Duration,
    inner: InnerTimeout,
    deadline_in_request: bool,
    upstream_margin: std::time::Duration,
    observer: Option<&Observer>,
) -> Result<
    (
        crate::deadline::DeadlineLayer,
        crate::deadline::AttemptTimeoutLayer,
    ),
    ConfigError,
> {
    let mut deadline = crate::deadline::DeadlineLayer::builder(total)
        .name(part_name(stack, "deadline"))
        .in_request(deadline_in_request)
        .upstream_margin(upstream_margin);
    let mut timeout = crate::deadline::AttemptTimeoutLayer::builder(inner.timeout)
        .name(part_name(stack, inner.part))
        .own_end(inner.own_end);
    if let Some(o) = observer {
        deadline = deadline.observer(o.clone());
        timeout = timeout.observer(o.clone());
    }
    let deadline = deadline.build()?;
    let timeout = timeout.build()?;
    if inner.timeout > total {
        return Err(ConfigError::new(
            kind,
            format!(
                "{} must be at most total_budget ({total:?}), got {:?}",
                inner.setting, inner.timeout
            ),
        ));
    }
    Ok((deadline, timeout))
}

/// Where the layers of a stack let go of a call, as its innermost part
/// decides: at the head ([`Head`](crate::hold::Head)) when nothing below
/// hands out [`CallBody`](crate::body::CallBody) responses, at the end of
/// the body ([`BodyEnd`](crate::hold::BodyEnd)) when something does (the
/// protocol presets). See [`hold`](crate::hold).
pub trait HoldPoint: sealed::Sealed {
    /// [`Head`](crate::hold::Head) or [`BodyEnd`](crate::hold::BodyEnd).
    type Hold;
}

impl HoldPoint for Identity {
    type Hold = crate::hold::Head;
}

/// A pair holds as its outer layer (the one the stack sees) does.
impl<I, O: HoldPoint> HoldPoint for tower::layer::util::Stack<I, O> {
    type Hold = O::Hold;
}

#[cfg(all(feature = "http", feature = "deadline"))]
impl HoldPoint for crate::deadline::propagate::PropagateDeadlineLayer {
    type Hold = crate::hold::BodyEnd;
}

#[cfg(all(feature = "http", feature = "deadline"))]
impl HoldPoint for crate::body::CallBodyLayer {
    type Hold = crate::hold::BodyEnd;
}

/// An ingress part of the server stack: with it comes the stack's
/// innermost layer ([`Identity`] for none; with an HTTP ingress, the
/// [`CallBodyLayer`](crate::body::CallBodyLayer) that holds the handler's
/// answers to the caller's deadline, so that the stack's bulkhead holds
/// until an answer's last byte).
pub trait IngressPart: StackPart {
    /// The innermost layer that comes with this ingress.
    type Innermost: HoldPoint;

    /// Builds it (before the ingress itself), with the stack's observer.
    #[doc(hidden)]
    fn build_innermost(&self, observer: Option<&Observer>) -> Result<Self::Innermost, ConfigError>;

    /// The time this ingress takes off a caller's for the hop back (none
    /// by default): the stack's budget must be above it.
    #[doc(hidden)]
    fn margin(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl IngressPart for Skip {
    type Innermost = Identity;

    fn build_innermost(&self, _observer: Option<&Observer>) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

#[cfg(all(feature = "http", feature = "deadline"))]
impl IngressPart for crate::deadline::propagate::DeadlineFromHeadersLayerBuilder {
    type Innermost = crate::body::CallBodyLayer;

    fn build_innermost(
        &self,
        observer: Option<&Observer>,
    ) -> Result<crate::body::CallBodyLayer, ConfigError> {
        self.answer_layer(observer)
    }

    fn margin(&self) -> std::time::Duration {
        self.margin_value()
    }
}
