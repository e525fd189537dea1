//! A tonic channel over endpoints that come and go, each watched: the shape
//! of tonic's `Channel::balance_channel`, with ejection.

use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower_service::Service;

use super::layer::{EjectDiscover, EjectionLayer};

/// The endpoint changes sent to a [`balance_channel`], as tonic's
/// `balance_channel` takes them, each `Endpoint` connected lazily.
#[derive(Debug)]
pub struct EndpointChanges<K> {
    rx: mpsc::Receiver<Change<K, Endpoint>>,
}

impl<K> futures_util::Stream for EndpointChanges<K> {
    type Item = Result<Change<K, Channel>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|change| {
            change.map(|c| {
                Ok(match c {
                    Change::Insert(k, endpoint) => Change::Insert(k, endpoint.connect_lazy()),
                    Change::Remove(k) => Change::Remove(k),
                })
            })
        })
    }
}

/// The service a [`balance_channel`] makes: a p2c balancer over the watched
/// endpoints, behind a `Buffer` so that it can be cloned (hand it to a
/// generated client, or to `ClientStack::grpc(..).layer(..)`).
///
/// A named type (not an alias of the balancer and buffer inside), so that
/// signatures and type mismatches say `EjectChannel<…>`.
pub struct EjectChannel<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: crate::classify::Classify<http::Response<tonic::body::Body>, tonic::transport::Error>
        + Send
        + Sync
        + 'static,
{
    inner: Buffer<ChannelRequest, <Balanced<K, C> as Service<ChannelRequest>>::Future>,
}

type ChannelRequest = http::Request<tonic::body::Body>;

/// The balancer inside an [`EjectChannel`].
type Balanced<K, C> = Balance<
    PendingRequestsDiscover<EjectDiscover<EndpointChanges<K>, C>, CompleteOnResponse>,
    ChannelRequest,
>;

wrapper_service!(
    EjectChannel<K, C>,
    Buffer<ChannelRequest, <Balanced<K, C> as Service<ChannelRequest>>::Future>,
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        C: crate::classify::Classify<http::Response<tonic::body::Body>, tonic::transport::Error>
            + Send
            + Sync
            + 'static,
);

/// A balanced tonic channel whose endpoints are added and removed at run
/// time, as with tonic's `Channel::balance_channel`, each watched by
/// `ejection` (tonic's own balanced channel cannot be: it balances inside,
/// where no layer sees which endpoint answered). Send
/// `Change::Insert(key, endpoint)` and `Change::Remove(key)`; `capacity` is
/// the buffer of changes and of requests waiting for the balancer. Needs a
/// tokio runtime (the buffer's worker is spawned). Changes apply when a
/// request next drives the balancer.
///
/// To call it from `tokio::spawn`, box the client you build on it
/// (`tower::util::BoxCloneService::new(client)`): the compiler cannot prove
/// a `Buffer` over a `BoxError` service's future `Send` inside an `async`
/// block ("implementation of `From` is not general enough").
///
/// ```no_run
/// # async fn doc() -> Result<(), seawall::BoxError> {
/// use seawall::eject::{balance_channel, EjectionLayer};
/// use tonic::transport::Endpoint;
/// use tower::discover::Change;
///
/// let ejection = EjectionLayer::grpc().build()?;
/// let (channel, changes) = balance_channel(&ejection, 64);
/// changes.send(Change::Insert("a", Endpoint::from_static("http://127.0.0.1:50051"))).await?;
/// changes.send(Change::Insert("b", Endpoint::from_static("http://127.0.0.1:50052"))).await?;
/// // `channel` goes where a `Channel` goes (a generated client, a client stack).
/// # let _ = channel;
/// # Ok(())
/// # }
/// ```
pub fn balance_channel<K, C>(
    ejection: &EjectionLayer<C>,
    capacity: usize,
) -> (EjectChannel<K, C>, mpsc::Sender<Change<K, Endpoint>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: crate::classify::Classify<http::Response<tonic::body::Body>, tonic::transport::Error>
        + Send
        + Sync
        + 'static,
{
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let discover = ejection.discover(EndpointChanges { rx });
    let balance = Balance::new(PendingRequestsDiscover::new(
        discover,
        CompleteOnResponse::default(),
    ));
    let inner = Buffer::new(balance, capacity.max(1));
    (EjectChannel { inner }, tx)
}
