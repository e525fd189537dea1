//! Optional parts of the stack builders, built together with the stack.

use tower::layer::util::Identity;

use crate::error::{ConfigError, Name};
use crate::observe::Observer;

/// An optional layer of a stack builder, kept unbuilt until the stack is
/// built (so that the stack's observer reaches it whatever the order of the
/// builder calls).
///
/// Implemented for [`Skip`] (the part is left out: it builds tower's
/// [`Identity`], which adds nothing to the service type and costs nothing)
/// and for the builders of the optional seawall layers the stacks accept.
pub trait StackPart {
    /// The layer this part builds.
    type Layer;

    /// Builds the layer, handing it the stack's observer when one was set.
    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError>;

    /// Tells the part the stack's total budget before it is built (the
    /// server presets' ingress holds answers to it); most parts ignore it.
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

#[cfg(feature = "http")]
impl StackPart for crate::deadline::PropagateDeadlineLayerBuilder {
    type Layer = crate::deadline::PropagateDeadlineLayer;

    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
        match observer {
            Some(o) => self.observer(o.clone()).build(),
            None => self.build(),
        }
    }
}

#[cfg(feature = "http")]
impl StackPart for crate::deadline::DeadlineFromHeadersLayerBuilder {
    type Layer = crate::deadline::DeadlineFromHeadersLayer;

    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
        match observer {
            Some(o) => self.observer(o.clone()).build(),
            None => self.build(),
        }
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
