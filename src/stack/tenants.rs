//! A bulkhead per tenant inside the server stack (feature `keyed`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::part::StackPart;
use super::server::ServerInner;
use crate::bulkhead::{BulkheadBuilder, BulkheadHandle, BulkheadLayer};
use crate::error::{BoxError, ConfigError, Name};
use crate::hold::{Hold, Release};
use crate::keyed::{Entry, KeyedLayer, Table};
use crate::observe::Observer;
use crate::rate_limit::{Key, KeyExtractor};

/// A tenant's bulkhead starts with a queue of 4: a tenant's own random
/// bursts wait a little instead of being refused (`tests/tenants`, four
/// quiet tenants sending Poisson streams to a handler of 8 workers, each
/// with 4 places: without a queue, 0.4 % of their requests were refused
/// with no flood at all, with it none).
pub(crate) const TENANT_QUEUE: usize = 4;
/// A tenant's queued request waits at most 100 ms, a few handler times:
/// one that waited that long without a place is let go and told to come
/// back after 100 to 150 ms, as one that finds the queue full is (a full
/// bulkhead's hint), where the bulkhead's default wait of 1 s held it, and
/// then told it, 1 to 1.5 s. No scenario chose between them: the same
/// scenario, with the queue, serves every quiet request at either wait;
/// the shorter frees a flooding tenant's callers sooner.
pub(crate) const TENANT_MAX_WAIT: Duration = Duration::from_millis(100);

/// Makes a new tenant's bulkhead (a fresh instance of the checked
/// settings): called once per new key, never per request.
type TenantFactory = Box<dyn Fn(&Key) -> BulkheadLayer + Send + Sync>;

/// The bulkhead-per-tenant part of a server stack, unbuilt: see
/// [`ServerStackBuilder::tenant_bulkhead`](super::ServerStackBuilder::tenant_bulkhead).
pub struct TenantBulkheads<X> {
    key: X,
    bulkhead: BulkheadBuilder,
    table: Name,
}

impl<X> TenantBulkheads<X> {
    pub(crate) fn new(key: X, bulkhead: BulkheadBuilder, table: Name) -> Self {
        TenantBulkheads {
            key,
            bulkhead,
            table,
        }
    }
}

impl<X> fmt::Debug for TenantBulkheads<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantBulkheads")
            .field("bulkhead", &self.bulkhead)
            .finish_non_exhaustive()
    }
}

impl<X> super::part::sealed::Sealed for TenantBulkheads<X> {}

impl<X> StackPart for TenantBulkheads<X> {
    type Layer = TenantBulkheadLayer<X>;

    fn build_part(self, observer: Option<&Observer>) -> Result<Self::Layer, ConfigError> {
        let mut bulkhead = self.bulkhead;
        if let Some(o) = observer {
            bulkhead = bulkhead.observer(o.clone());
        }
        // Checked and announced to the observer here, once: every tenant's
        // instance is a fresh one of the same settings.
        let template = bulkhead.build()?;
        let factory: TenantFactory = Box::new(move |_: &Key| template.fresh());
        let mut table = KeyedLayer::builder(self.key, factory).name(self.table);
        if let Some(o) = observer {
            table = table.observer(o.clone());
        }
        Ok(TenantBulkheadLayer {
            keyed: table.build()?,
        })
    }
}

/// The bulkhead-per-tenant part of a built server stack: a
/// [`BulkheadLayer`] per key, in a [`KeyedLayer`] table (at most 10 000
/// tenants held, one idle 60 s evicted when room is needed; requests
/// without a key, and new tenants while the table is full, share one more
/// instance). See
/// [`ServerStackBuilder::tenant_bulkhead`](super::ServerStackBuilder::tenant_bulkhead).
pub struct TenantBulkheadLayer<X> {
    keyed: KeyedLayer<X, TenantFactory, BulkheadLayer>,
}

impl<X> TenantBulkheadLayer<X> {
    /// The bulkhead of tenant `key`, if the tenant is in the table.
    pub fn get(&self, key: &Key) -> Option<BulkheadHandle> {
        self.keyed.get(key).map(|b| b.handle())
    }

    /// The bulkhead shared by requests without a key, and by new tenants
    /// while the table is full.
    pub fn overflow(&self) -> BulkheadHandle {
        self.keyed.overflow().handle()
    }

    /// Tenants in the table now.
    pub fn len(&self) -> usize {
        self.keyed.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty()
    }
}

impl<X> Clone for TenantBulkheadLayer<X> {
    fn clone(&self) -> Self {
        TenantBulkheadLayer {
            keyed: self.keyed.clone(),
        }
    }
}

impl<X> fmt::Debug for TenantBulkheadLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantBulkheadLayer")
            .field(&self.keyed)
            .finish()
    }
}

impl<S: ServerInner, X> Layer<S> for TenantBulkheadLayer<X> {
    type Service = TenantBulkhead<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantBulkhead {
            inner,
            table: self.keyed.table.clone(),
        }
    }
}

/// The service of a [`TenantBulkheadLayer`]: each request through its
/// tenant's bulkhead. The tenant's bulkhead is found in the table as the
/// request comes in, and the request goes on to the service inside at once
/// when it has a place (no clone of the service inside, no allocation);
/// one that waits in its tenant's queue takes a clone along, as a
/// [`Bulkhead`](crate::bulkhead::Bulkhead) does.
///
/// `poll_ready` is the inner service's.
pub struct TenantBulkhead<S, X> {
    inner: S,
    table: Arc<Table<X, TenantFactory, BulkheadLayer>>,
}

impl<S: ServerInner, X> super::server::server_inner::Sealed for TenantBulkhead<S, X> {}

impl<S: ServerInner, X> ServerInner for TenantBulkhead<S, X> {
    type Hold = S::Hold;
}

impl<S: Clone, X> Clone for TenantBulkhead<S, X> {
    fn clone(&self) -> Self {
        TenantBulkhead {
            inner: self.inner.clone(),
            table: self.table.clone(),
        }
    }
}

impl<S: fmt::Debug, X> fmt::Debug for TenantBulkhead<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantBulkhead")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, X, Req> Service<Req> for TenantBulkhead<S, X>
where
    S: Service<Req> + Clone + ServerInner,
    S::Error: Into<BoxError>,
    S::Hold: Hold<S::Response> + Release<Req>,
    X: KeyExtractor<Req>,
    Req: crate::deadline::HasDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TenantFuture<S, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let entry = self.table.entry(self.table.extractor.extract(&req).ok());
        let inner = crate::bulkhead::admit(entry.layer.engine(), &mut self.inner, req);
        TenantFuture {
            inner,
            _entry: entry,
        }
    }
}

pin_project! {
    /// The response future of a [`TenantBulkhead`]: the tenant's
    /// bulkhead's. It holds the tenant's entry, so that a tenant with a call
    /// in flight is never evicted.
    pub struct TenantFuture<S, Req>
    where
        S: Service<Req>,
        S: ServerInner,
    {
        #[pin]
        inner: crate::bulkhead::ResponseFuture<S, Req, S::Hold>,
        _entry: Arc<Entry<BulkheadLayer>>,
    }
}

impl<S: Service<Req> + ServerInner, Req> fmt::Debug for TenantFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantFuture").finish_non_exhaustive()
    }
}

impl<S, Req> Future for TenantFuture<S, Req>
where
    S: Service<Req> + ServerInner,
    S::Error: Into<BoxError>,
    S::Hold: Hold<S::Response> + Release<Req>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
