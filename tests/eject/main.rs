#![cfg(all(feature = "eject", feature = "full"))]
//! Outlier ejection: the rules in paused time, the replica scenario's
//! figures, and a balanced tonic client over three real servers, one killed
//! and restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use seawall::BoxError;
use seawall::eject::{Ejectable, EjectionLayer};
use seawall::observe::{EventKind, Observer, Recorder, State};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A replica whose behaviour can be switched: broken (fails in 1 ms) or
/// answering after `latency_ms`.
#[derive(Clone)]
struct Replica {
    broken: Arc<AtomicBool>,
    latency_ms: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Replica {
    fn new() -> Self {
        Replica {
            broken: Arc::new(AtomicBool::new(false)),
            latency_ms: Arc::new(AtomicU64::new(10)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Service<u64> for Replica {
    type Response = u64;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let broken = self.broken.load(Ordering::SeqCst);
        let ms = self.latency_ms.load(Ordering::SeqCst);
        Box::pin(async move {
            if broken {
                tokio::time::sleep(MS).await;
                return Err("down".into());
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(req)
        })
    }
}

async fn ready_call<S: Service<u64, Error = BoxError>>(
    svc: &mut S,
    i: u64,
) -> Result<S::Response, BoxError> {
    svc.ready().await?.call(i).await
}

/// Four replicas behind `layer`, the first broken and ejected after its
/// five failures in a row.
async fn first_of_four_ejected(
    layer: &EjectionLayer,
) -> (
    Vec<Replica>,
    Vec<Ejectable<Replica, seawall::classify::ErrorsAsFailures>>,
) {
    let replicas: Vec<Replica> = (0..4).map(|_| Replica::new()).collect();
    let mut eps: Vec<_> = replicas.iter().map(|r| layer.layer(r.clone())).collect();
    replicas[0].broken.store(true, Ordering::SeqCst);
    for i in 0..5 {
        assert!(ready_call(&mut eps[0], i).await.is_err());
    }
    assert_eq!(layer.ejected(), 1);
    (replicas, eps)
}

/// An ejection layer with the defaults, reporting to a recorder.
fn recorded() -> (Recorder, EjectionLayer) {
    let rec = Recorder::new();
    let layer = EjectionLayer::builder()
        .observer(Observer::from(rec.clone()))
        .build()
        .unwrap();
    (rec, layer)
}

#[tokio::test(start_paused = true)]
async fn five_failures_in_a_row_eject_then_one_probe_decides() {
    let (rec, layer) = recorded();
    let replicas: Vec<Replica> = (0..4).map(|_| Replica::new()).collect();
    let mut eps: Vec<Ejectable<Replica, _>> =
        replicas.iter().map(|r| layer.layer(r.clone())).collect();
    replicas[0].broken.store(true, Ordering::SeqCst);
    for i in 0..4 {
        assert!(ready_call(&mut eps[0], i).await.is_err());
        assert!(!eps[0].is_ejected());
    }
    assert!(ready_call(&mut eps[0], 4).await.is_err());
    assert!(eps[0].is_ejected(), "not ejected after 5 failures in a row");
    assert_eq!(layer.ejected(), 1);
    // Not ready while ejected: 5 s.
    let t0 = tokio::time::Instant::now();
    eps[0].ready().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    // The probe fails: out again, as long.
    assert!(eps[0].call(5).await.is_err());
    let t0 = tokio::time::Instant::now();
    eps[0].ready().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    // It recovered: the probe succeeds and it is healthy.
    replicas[0].broken.store(false, Ordering::SeqCst);
    assert_eq!(eps[0].call(6).await.unwrap(), 6);
    assert_eq!(layer.ejected(), 0);
    // Offending again right after: out twice as long.
    replicas[0].broken.store(true, Ordering::SeqCst);
    for i in 0..5 {
        assert!(ready_call(&mut eps[0], i).await.is_err());
    }
    let t0 = tokio::time::Instant::now();
    eps[0].ready().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    replicas[0].broken.store(false, Ordering::SeqCst);
    assert_eq!(eps[0].call(7).await.unwrap(), 7);
    let states: Vec<(State, State)> = rec
        .events()
        .iter()
        .filter(|e| e.name == "ejection.0")
        .filter_map(|e| match e.kind {
            EventKind::StateChanged { from, to, .. } if from != to => Some((from, to)),
            _ => None,
        })
        .collect();
    use State::{HalfOpen, Healthy, Open};
    assert_eq!(
        states,
        vec![
            (Healthy, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Healthy),
            (Healthy, Open),
            (Open, HalfOpen),
            (HalfOpen, Healthy),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_half_the_set_and_never_the_last_one() {
    let layer = EjectionLayer::builder().build().unwrap();
    let replicas: Vec<Replica> = (0..4).map(|_| Replica::new()).collect();
    let mut eps: Vec<_> = replicas.iter().map(|r| layer.layer(r.clone())).collect();
    for r in &replicas {
        r.broken.store(true, Ordering::SeqCst);
    }
    for ep in eps.iter_mut() {
        for i in 0..5 {
            let _ = ready_call(ep, i).await;
        }
    }
    assert_eq!(layer.ejected(), 2, "half of 4");
    let two = EjectionLayer::builder()
        .max_ejected_percent(100)
        .build()
        .unwrap();
    let mut pair: Vec<_> = replicas[..2].iter().map(|r| two.layer(r.clone())).collect();
    for ep in pair.iter_mut() {
        for i in 0..5 {
            let _ = ready_call(ep, i).await;
        }
    }
    assert_eq!(two.ejected(), 1, "the last one stays");
    // An endpoint dropped leaves the set and its slot.
    drop(pair);
    assert_eq!(two.endpoints(), 0);
    assert_eq!(two.ejected(), 0);
}

/// Drives `n` calls through a p2c balancer over `eps`, one every `every`.
async fn drive<S>(balanced: &mut S, n: u64, every: Duration) -> u64
where
    S: Service<u64, Response = u64, Error = BoxError>,
    S::Future: Send + 'static,
{
    let mut failed = 0;
    let mut tasks = Vec::new();
    for i in 0..n {
        let fut = balanced.ready().await.unwrap().call(i);
        tasks.push(tokio::spawn(fut));
        tokio::time::sleep(every).await;
    }
    for t in tasks {
        if t.await.unwrap().is_err() {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(start_paused = true)]
async fn a_slow_replica_is_a_latency_outlier() {
    let (rec, layer) = recorded();
    let replicas: Vec<Replica> = (0..10).map(|_| Replica::new()).collect();
    replicas[3].latency_ms.store(100, Ordering::SeqCst);
    let eps: Vec<_> = replicas.iter().map(|r| layer.layer(r.clone())).collect();
    let mut balanced = Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(eps),
        CompleteOnResponse::default(),
    ));
    drive(&mut balanced, 12_000, MS).await; // 12 s at 1000/s
    let reasons: Vec<&str> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::EndpointEjected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec!["latency"]);
    let before = replicas[3].calls.load(Ordering::SeqCst);
    drive(&mut balanced, 2_000, MS).await; // inside its 5 s ejection (10 s to 15 s)
    assert_eq!(replicas[3].calls.load(Ordering::SeqCst), before);
}

#[tokio::test(start_paused = true)]
async fn a_replica_failing_a_fifth_of_its_calls_is_a_success_rate_outlier() {
    let (rec, layer) = recorded();
    // Replica 0 fails one of its calls in five: never five in a row.
    let n = Arc::new(AtomicU64::new(0));
    let flaky = tower::service_fn(move |i: u64| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(10 * MS).await;
            if k % 5 == 0 {
                Err::<u64, BoxError>("flaky".into())
            } else {
                Ok(i)
            }
        }
    });
    let mut eps: Vec<tower::util::BoxService<u64, u64, BoxError>> =
        vec![tower::util::BoxService::new(layer.layer(flaky))];
    for _ in 1..10 {
        eps.push(tower::util::BoxService::new(layer.layer(Replica::new())));
    }
    let mut balanced = Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(eps),
        CompleteOnResponse::default(),
    ));
    drive(&mut balanced, 12_000, MS).await;
    let reasons: Vec<&str> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::EndpointEjected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec!["success_rate"]);
}

/// A replica that hangs: the attempt timeout above the balancer ends its
/// calls (dropping them), and those count as its failures: five in a row
/// eject it, and its probe, ended the same way, sends it out again.
#[tokio::test(start_paused = true)]
async fn a_hung_replica_whose_calls_an_attempt_timeout_ends_is_ejected() {
    let (rec, layer) = recorded();
    let replicas: Vec<Replica> = (0..4).map(|_| Replica::new()).collect();
    replicas[2].latency_ms.store(3_600_000, Ordering::SeqCst); // an hour
    let eps: Vec<_> = replicas.iter().map(|r| layer.layer(r.clone())).collect();
    let balanced = Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(eps),
        CompleteOnResponse::default(),
    ));
    let mut client = seawall::deadline::AttemptTimeoutLayer::new(200 * MS)
        .unwrap()
        .layer(balanced);
    // 12 s at 100 calls a second.
    let failed = drive(&mut client, 1_200, 10 * MS).await;
    let hung_calls = replicas[2].calls.load(Ordering::SeqCst);
    let ejections: Vec<(&str, Duration)> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::EndpointEjected { reason, duration } => Some((reason, duration)),
            _ => None,
        })
        .collect();
    println!("hung replica: {hung_calls} calls, {failed} timed out, ejections {ejections:?}");
    // Out after five timed-out calls in a row; 5 s later its probe times
    // out too and sends it out again for as long, twice in 12 s.
    assert_eq!(
        ejections,
        vec![
            ("consecutive_failures", Duration::from_secs(5)),
            ("probe_failed", Duration::from_secs(5)),
            ("probe_failed", Duration::from_secs(5)),
        ]
    );
    // Five in a row, the few p2c sent it while they ran (200 ms), two
    // probes: every other call went to the three that answer.
    assert!(
        (7..=10).contains(&hung_calls),
        "{hung_calls} calls to the hung replica"
    );
    assert_eq!(failed, hung_calls);
}

#[test]
fn the_settings_are_checked_when_built() {
    assert!(
        EjectionLayer::builder()
            .consecutive_failures(0)
            .build()
            .is_err()
    );
    assert!(
        EjectionLayer::builder()
            .max_ejected_percent(101)
            .build()
            .is_err()
    );
    assert!(
        EjectionLayer::builder()
            .ejection_time(Duration::from_secs(10), Duration::from_secs(1))
            .build()
            .is_err()
    );
    assert!(
        EjectionLayer::builder()
            .latency_factor(Some(0.5))
            .build()
            .is_err()
    );
    assert!(EjectionLayer::builder().max_endpoints(0).build().is_err());
    let e = EjectionLayer::builder()
        .interval(Duration::from_secs(10), 0, 5)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("min_calls"), "{e}");
    assert!(
        EjectionLayer::builder()
            .interval(Duration::from_secs(10), 100, 0)
            .build()
            .is_err()
    );
}

/// Two clones of one endpoint wait for its probe: both are ready once the
/// probe has succeeded (the one woken by the probe's end at once, the other
/// within 50 ms).
#[tokio::test(start_paused = true)]
async fn every_clone_waiting_for_a_probe_is_ready_after_it() {
    let layer = EjectionLayer::builder().build().unwrap();
    let (replicas, mut eps) = first_of_four_ejected(&layer).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    replicas[0].broken.store(false, Ordering::SeqCst);
    replicas[0].latency_ms.store(100, Ordering::SeqCst);
    // The probe: 100 ms.
    let probe = eps[0].ready().await.unwrap().call(9);
    let probe = tokio::spawn(probe);
    let t0 = tokio::time::Instant::now();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let mut clone = eps[0].clone();
            tokio::spawn(async move {
                clone.ready().await.unwrap();
                t0.elapsed()
            })
        })
        .collect();
    assert_eq!(probe.await.unwrap().unwrap(), 9);
    let mut waited = Vec::new();
    for w in waiters {
        let d = tokio::time::timeout(Duration::from_secs(1), w)
            .await
            .expect("a clone still waits for a probe that ended")
            .unwrap();
        waited.push(d);
    }
    waited.sort();
    println!("clones ready after {waited:?}");
    assert_eq!(waited[0], 100 * MS, "the clone the probe's end wakes");
    assert!(waited[1] <= 150 * MS, "{:?}", waited[1]);
    assert_eq!(layer.ejected(), 0);
}

/// Back from an ejection, the one probe goes to the clone made ready first:
/// a second clone polled meanwhile waits (it would send an ordinary call to
/// an endpoint still out); the first dropped without calling gives the
/// probe back, and the dead endpoint takes one call per ejection.
#[tokio::test(start_paused = true)]
async fn only_the_clone_made_ready_first_holds_the_probe() {
    let layer = EjectionLayer::builder().build().unwrap();
    let (replicas, eps) = first_of_four_ejected(&layer).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut a = eps[0].clone();
    let mut b = eps[0].clone();
    a.ready().await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(1), b.ready()).await;
    assert!(
        waited.is_err(),
        "a second clone was ready while the first held the probe"
    );
    drop(a);
    tokio::time::timeout(Duration::from_millis(100), b.ready())
        .await
        .expect("the probe a dropped clone held was not given back")
        .unwrap();
    let calls = replicas[0].calls.load(Ordering::SeqCst);
    assert!(b.call(7).await.is_err(), "the probe of a broken endpoint");
    assert_eq!(replicas[0].calls.load(Ordering::SeqCst), calls + 1);
    // Out again: no clone is ready until the next ejection ends.
    let mut c = eps[0].clone();
    assert!(
        tokio::time::timeout(Duration::from_secs(4), c.ready())
            .await
            .is_err(),
        "ready again before the second ejection ended"
    );
    assert_eq!(replicas[0].calls.load(Ordering::SeqCst), calls + 1);
}

/// An ejection time past the clock's range keeps the endpoint out (it
/// overflowed: a panic in a debug build, an ejection ended at once in a
/// release build).
#[tokio::test(start_paused = true)]
async fn an_ejection_past_the_clocks_range_keeps_the_endpoint_out() {
    let layer = EjectionLayer::builder()
        .ejection_time(Duration::MAX, Duration::MAX)
        .build()
        .unwrap();
    let (_replicas, mut eps) = first_of_four_ejected(&layer).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(eps[0].is_ejected());
    assert!(
        tokio::time::timeout(Duration::from_secs(1), eps[0].ready())
            .await
            .is_err(),
        "the endpoint came back"
    );
}

/// `max_endpoints` makes its slots when built: a value meant as "no cap"
/// is refused, not an allocation that aborts.
#[test]
fn a_max_endpoints_beyond_the_cap_is_refused() {
    let err = EjectionLayer::builder()
        .max_endpoints(usize::MAX)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("max_endpoints"), "{err}");
    assert!(
        EjectionLayer::builder()
            .max_endpoints(65_536)
            .build()
            .is_ok()
    );
}

/// An endpoint removed from the set with a call in flight no longer counts
/// in it: the one left is never ejected.
#[tokio::test(start_paused = true)]
async fn an_endpoint_that_left_with_a_call_in_flight_no_longer_counts() {
    let layer = EjectionLayer::builder().build().unwrap();
    let a = Replica::new();
    let b = Replica::new();
    b.latency_ms.store(60_000, Ordering::SeqCst);
    let mut ep_a = layer.layer(a.clone());
    let mut ep_b = layer.layer(b.clone());
    let in_flight = tokio::spawn(ep_b.ready().await.unwrap().call(1));
    drop(ep_b);
    assert_eq!(layer.endpoints(), 1, "B left the set");
    a.broken.store(true, Ordering::SeqCst);
    for i in 0..10 {
        assert!(ready_call(&mut ep_a, i).await.is_err());
    }
    assert_eq!(layer.ejected(), 0, "the only endpoint left was ejected");
    assert!(!ep_a.is_ejected());
    in_flight.abort();
}

#[path = "../../examples/common/greeter.rs"]
mod greeter;

/// A greeter server on `addr` (0 = a free port) that counts its calls;
/// dropping the returned sender shuts it down.
async fn greeter_on(
    addr: std::net::SocketAddr,
    hits: Arc<AtomicU64>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = greeter::GreeterServer::new(move |req: tonic::Request<greeter::HelloRequest>| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move { greeter::say_hello(req).await }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (addr, stop)
}

/// Three real tonic servers, one channel each, each watched by one
/// ejection layer and balanced by p2c, under the gRPC client preset: one
/// server is killed (at most 2 calls of 100 fail, those whose three
/// attempts all reached it before it was ejected; none after) and
/// restarted (its probe finds it, and it takes calls again).
#[tokio::test]
async fn a_balanced_tonic_client_rides_out_a_killed_server_and_takes_it_back() {
    use seawall::stack::ClientStack;
    use tonic::transport::Endpoint;

    let hits: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut servers = Vec::new();
    for h in &hits {
        servers.push(greeter_on(any, h.clone()).await);
    }
    let addrs: Vec<std::net::SocketAddr> = servers.iter().map(|(a, _)| *a).collect();
    // The guide's recipe, as written there.
    let ejection = EjectionLayer::grpc().build().unwrap();
    let endpoints = addrs
        .iter()
        .map(|a| Ok(ejection.layer(Endpoint::from_shared(format!("http://{a}"))?.connect_lazy())))
        .collect::<Result<Vec<_>, tonic::transport::Error>>()
        .unwrap();
    let balanced = tower::buffer::Buffer::new(
        Balance::new(PendingRequestsDiscover::new(
            ServiceList::new(endpoints),
            CompleteOnResponse::default(),
        )),
        64,
    );
    let client = ClientStack::grpc("greeter")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .layer(balanced);
    let hello = || {
        tonic::Request::new(greeter::HelloRequest {
            name: "balanced".into(),
            work_ms: 0,
        })
    };
    for _ in 0..60 {
        greeter::call_say_hello(client.clone(), hello())
            .await
            .unwrap();
    }
    assert!(
        hits.iter().all(|h| h.load(Ordering::SeqCst) > 0),
        "an endpoint got no call"
    );

    // Kill server 1.
    let (addr1, stop1) = servers.remove(1);
    drop(stop1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Until it is ejected (5 failures in a row), a call whose three
    // attempts all land on it fails: a few at most.
    let mut failed = 0;
    for _ in 0..100 {
        if greeter::call_say_hello(client.clone(), hello())
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    assert!(
        failed <= 2,
        "{failed} of 100 calls failed with server 1 down"
    );
    assert_eq!(ejection.ejected(), 1, "the dead server was not ejected");
    // Ejected: every call succeeds.
    for i in 0..50 {
        let r = greeter::call_say_hello(client.clone(), hello()).await;
        assert!(r.is_ok(), "call {i} failed after the ejection: {r:?}");
    }
    let dead_hits = hits[1].load(Ordering::SeqCst);

    // Restart it on the same port: within its ejection (5 s) and a probe,
    // it takes calls again.
    let (_addr, _stop1) = greeter_on(addr1, hits[1].clone()).await;
    let restarted = tokio::time::Instant::now();
    let mut calls = 0;
    while hits[1].load(Ordering::SeqCst) < dead_hits + 5 {
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "server 1 not back after 15 s"
        );
        greeter::call_say_hello(client.clone(), hello())
            .await
            .unwrap();
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ejection.ejected(), 0);
    assert_eq!(ejection.endpoints(), 3);
    assert!(calls > 0);
}

/// Endpoints that come and go: `EjectionLayer::discover` over a stream of
/// changes (as tonic's `balance_channel` takes), a broken one ejected, then
/// removed from the set, leaving its slot.
#[tokio::test(start_paused = true)]
async fn endpoints_from_a_changing_discovery_are_watched_and_leave_cleanly() {
    use tower::discover::Change;
    let layer = EjectionLayer::builder().build().unwrap();
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::new()).collect();
    replicas[0].broken.store(true, Ordering::SeqCst);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    for (i, r) in replicas.iter().enumerate() {
        tx.unbounded_send(Ok::<_, std::convert::Infallible>(Change::Insert(
            i,
            r.clone(),
        )))
        .unwrap();
    }
    let mut balanced = Balance::new(PendingRequestsDiscover::new(
        layer.discover(rx),
        CompleteOnResponse::default(),
    ));
    let failed = drive(&mut balanced, 300, MS).await;
    assert_eq!(layer.endpoints(), 3);
    assert_eq!(layer.ejected(), 1);
    // Five in a row eject it; calls already on their way to it fail too.
    assert!(failed <= 8, "{failed} failed");
    tx.unbounded_send(Ok(Change::Remove(0))).unwrap();
    let failed = drive(&mut balanced, 100, MS).await;
    assert_eq!(failed, 0);
    assert_eq!(layer.endpoints(), 2, "the removed endpoint kept its slot");
    assert_eq!(layer.ejected(), 0);
}

/// The HTTP client preset built per endpoint behind a balancer (each with
/// its own breaker, in backpressure mode so that an open one reads as not
/// ready): three real axum servers, one answering 500; its breaker opens
/// and the balancer stops sending it calls.
#[tokio::test]
async fn the_http_preset_per_endpoint_behind_a_balancer() {
    use bytes::Bytes;
    use http_body_util::Full;
    use seawall::stack::ClientStack;

    let mut addrs = Vec::new();
    let mut hits = Vec::new();
    for broken in [true, false, false] {
        let h = Arc::new(AtomicU64::new(0));
        let c = h.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if broken {
                        (http::StatusCode::INTERNAL_SERVER_ERROR, "broken")
                    } else {
                        (http::StatusCode::OK, "ok")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        hits.push(h);
    }
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut breakers = Vec::new();
    let endpoints: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let stack = ClientStack::http(format!("replica{i}"))
                .total_budget(Duration::from_secs(2))
                .attempt_timeout(Duration::from_millis(500))
                .retry(|r| r.max_attempts(1)) // the retry goes above the balancer
                // Open long enough that no probe falls inside the run,
                // however slow the machine.
                .breaker(|b| {
                    b.backpressure(true)
                        .consecutive_failures(5)
                        .open_duration(Duration::from_secs(5))
                })
                .build()
                .unwrap();
            breakers.push(stack.breaker_handle());
            // Each endpoint sends to its own address.
            let authority = addr.to_string();
            let client =
                tower::util::MapRequestLayer::new(move |mut req: http::Request<Full<Bytes>>| {
                    *req.uri_mut() = format!("http://{authority}{}", req.uri().path())
                        .parse()
                        .unwrap();
                    req
                })
                .layer(hyper.clone());
            stack.layer(client)
        })
        .collect();
    let mut balanced = Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(endpoints),
        CompleteOnResponse::default(),
    ));
    let mut ok = 0;
    for _ in 0..200 {
        let req = http::Request::get("/").body(Full::default()).unwrap();
        let res = balanced.ready().await.unwrap().call(req).await.unwrap();
        if res.status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(breakers[0].state(), seawall::observe::State::Open);
    let broken_hits = hits[0].load(Ordering::SeqCst);
    println!("{ok} of 200 answered 200; the broken server saw {broken_hits} calls");
    assert!(
        broken_hits <= 10,
        "the broken server saw {broken_hits} calls"
    );
    assert!(ok >= 190, "{ok} of 200");
}

/// `balance_channel`: tonic's `balance_channel` shape with ejection. Three
/// real servers added as endpoints; one killed (ejected; calls keep
/// succeeding), then removed from the set, then added back on a restarted
/// server.
#[tokio::test]
async fn a_balance_channel_with_ejection_over_real_servers() {
    use seawall::eject::balance_channel;
    use seawall::grpc::GrpcStatusClassifier;
    use seawall::stack::ClientStack;
    use tonic::transport::Endpoint;
    use tower::discover::Change;

    let hits: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut servers = Vec::new();
    for h in &hits {
        servers.push(greeter_on(any, h.clone()).await);
    }
    let ejection = EjectionLayer::builder()
        .classifier(GrpcStatusClassifier::new())
        .build()
        .unwrap();
    let (channel, changes) = balance_channel(&ejection, 64);
    for (i, (addr, _)) in servers.iter().enumerate() {
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        changes.send(Change::Insert(i, endpoint)).await.unwrap();
    }
    let client = ClientStack::grpc("greeter")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .layer(channel);
    let hello = || {
        tonic::Request::new(greeter::HelloRequest {
            name: "balanced".into(),
            work_ms: 0,
        })
    };
    for _ in 0..60 {
        greeter::call_say_hello(client.clone(), hello())
            .await
            .unwrap();
    }
    assert_eq!(ejection.endpoints(), 3);
    assert!(
        hits.iter().all(|h| h.load(Ordering::SeqCst) > 0),
        "an endpoint got no call"
    );

    let (addr1, stop1) = servers.remove(1);
    drop(stop1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut failed = 0;
    for _ in 0..100 {
        if greeter::call_say_hello(client.clone(), hello())
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    assert!(failed <= 2, "{failed} of 100 failed");
    assert_eq!(ejection.ejected(), 1);

    // Removed from the set: its slot is freed.
    changes.send(Change::Remove(1)).await.unwrap();
    for _ in 0..20 {
        greeter::call_say_hello(client.clone(), hello())
            .await
            .unwrap();
    }
    assert_eq!((ejection.endpoints(), ejection.ejected()), (2, 0));

    // Restarted and added back: it takes calls.
    let (_addr, _stop) = greeter_on(addr1, hits[1].clone()).await;
    let before = hits[1].load(Ordering::SeqCst);
    changes
        .send(Change::Insert(
            1,
            Endpoint::from_shared(format!("http://{addr1}")).unwrap(),
        ))
        .await
        .unwrap();
    for _ in 0..60 {
        greeter::call_say_hello(client.clone(), hello())
            .await
            .unwrap();
    }
    assert_eq!(ejection.endpoints(), 3);
    assert!(
        hits[1].load(Ordering::SeqCst) > before,
        "the restarted server got no call"
    );
}
