//! The client throttle (Google SRE's adaptive throttling): its window of
//! requests and accepts, and the layer, service and future around it. See
//! the [`shed`](super) module docs.

mod future;
mod layer;
mod service;
mod window;

pub use self::future::ThrottleFuture;
pub(crate) use self::future::ThrottlePending;
pub use self::layer::{ThrottleLayer, ThrottleLayerBuilder};
pub use self::service::Throttle;
