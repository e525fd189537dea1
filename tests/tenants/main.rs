#![cfg(all(
    feature = "axum",
    feature = "keyed",
    feature = "bulkhead",
    feature = "shed"
))]
//! One tenant must not starve the rest: an axum server whose handler can
//! run 8 requests at once (20 ms each, about 400 a second), a noisy tenant
//! sending 1500 requests a second and four quiet ones 40 a second each,
//! for 5 s of paused time. The README's recipe (the server preset and a
//! bulkhead per tenant, keyed by a header) against the preset alone and
//! against no protection; a quiet request counts as served when its `200`
//! arrives within 1 s.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderName, Request, StatusCode};
use seawall::ServerStack;
use seawall::bulkhead::BulkheadLayer;
use seawall::http::RejectionResponseLayer;
use seawall::keyed::KeyedLayer;
use seawall::rate_limit::{HeaderKey, Key};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};

/// The handler: one of 8 workers for 20 ms (waiting for a free one in an
/// unbounded queue, as a pool does).
fn app(workers: Arc<Semaphore>) -> Router {
    Router::new().route(
        "/",
        get(move || {
            let workers = workers.clone();
            async move {
                let _worker = workers.acquire().await.expect("open");
                tokio::time::sleep(Duration::from_millis(20)).await;
                "done"
            }
        }),
    )
}

/// The README's recipe: a bulkhead per tenant, outside the server preset,
/// so that a tenant's excess is refused before it takes a place under the
/// server's limit.
fn per_tenant(router: Router) -> Result<Router, seawall::BoxError> {
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .build()?;
    let tenants = KeyedLayer::builder(
        HeaderKey::new(HeaderName::from_static("x-tenant")),
        |_: &Key| {
            BulkheadLayer::builder()
                .max_concurrent(4) // half the handler's 8 workers
                .build()
                .expect("valid settings")
        },
    )
    .build()?;
    Ok(router.layer(stack).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(tenants),
    ))
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u32,
    served: u32,
    refused_with_retry_after: u32,
}

/// Runs the load through `router`: per tenant, what was sent and served.
async fn run(router: Router) -> Vec<Tally> {
    let tenants: [(&str, u64); 5] = [
        ("noisy", 1500),
        ("quiet-1", 40),
        ("quiet-2", 40),
        ("quiet-3", 40),
        ("quiet-4", 40),
    ];
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (t, &(name, per_sec)) in tenants.iter().enumerate() {
        let count = per_sec * 5;
        for i in 0..count {
            let router = router.clone();
            // Evenly spaced, each tenant offset a little from the others.
            let at = start + Duration::from_nanos(i * 1_000_000_000 / per_sec + t as u64 * 137_000);
            tasks.spawn(async move {
                tokio::time::sleep_until(at).await;
                let req = Request::get("/")
                    .header("x-tenant", name)
                    .body(Body::empty())
                    .unwrap();
                let answer =
                    tokio::time::timeout(Duration::from_secs(1), router.oneshot(req)).await;
                let (served, retry_after) = match answer {
                    Ok(Ok(res)) => (
                        res.status() == StatusCode::OK,
                        res.headers().contains_key(http::header::RETRY_AFTER),
                    ),
                    _ => (false, false),
                };
                (t, served, retry_after)
            });
        }
    }
    let mut tally = vec![Tally::default(); tenants.len()];
    while let Some(done) = tasks.join_next().await {
        let (t, served, retry_after) = done.expect("no panic");
        tally[t].sent += 1;
        tally[t].served += u32::from(served);
        tally[t].refused_with_retry_after += u32::from(!served && retry_after);
    }
    tally
}

fn quiet_served(tally: &[Tally]) -> f64 {
    let (sent, served) = tally[1..]
        .iter()
        .fold((0, 0), |(s, v), t| (s + t.sent, v + t.served));
    f64::from(served) / f64::from(sent)
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_per_tenant_keeps_a_noisy_tenant_from_starving_the_quiet_ones() {
    let none = run(app(Arc::new(Semaphore::new(8)))).await;
    let preset = run(app(Arc::new(Semaphore::new(8))).layer(
        ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .build()
            .unwrap(),
    ))
    .await;
    let recipe = run(per_tenant(app(Arc::new(Semaphore::new(8)))).unwrap()).await;
    let served = [&none, &preset, &recipe].map(|t| quiet_served(t));
    println!(
        "quiet tenants served within 1 s: none {:.3}, preset {:.3}, per tenant {:.3}",
        served[0], served[1], served[2]
    );
    println!(
        "noisy tenant served: none {}, preset {}, per tenant {} (of {})",
        none[0].served, preset[0].served, recipe[0].served, recipe[0].sent
    );
    // No protection: the queue grows without bound and nobody is served in
    // time after the first moments.
    assert!(served[0] < 0.2, "{served:?}");
    // The preset alone keeps the server serving (about its capacity) but
    // cannot tell tenants apart: the quiet ones are refused as often as
    // the noisy one.
    assert!(served[1] < 0.5, "{served:?}");
    assert!(preset[0].served > 1000, "{preset:?}");
    // A bulkhead per tenant: every quiet request served; the noisy tenant
    // gets its share (4 of the 8 workers, about 200 a second), its excess
    // refused with a Retry-After.
    assert!(served[2] >= 0.99, "{served:?}");
    assert!((800..=1100).contains(&recipe[0].served), "{recipe:?}");
    assert_eq!(
        recipe[0].refused_with_retry_after,
        recipe[0].sent - recipe[0].served,
        "{recipe:?}"
    );
}

#[cfg(feature = "tonic")]
#[path = "../../examples/common/greeter.rs"]
mod greeter;

/// The recipe on a real tonic server, as the README writes it for tonic:
/// `GrpcRejectionLayer` outermost, then the tenants' bulkheads, then the
/// gRPC server preset (tonic's `Server::builder().layer(..)` puts the
/// first layer outermost, as `ServiceBuilder` does; axum's `Router::layer`
/// is the other way round). A tenant holding its 4 places has its fifth
/// call refused `UNAVAILABLE` with `grpc-retry-pushback-ms`, while another
/// tenant's call is served meanwhile.
#[cfg(feature = "tonic")]
#[tokio::test]
async fn on_tonic_a_full_tenant_is_refused_with_pushback_while_another_is_served() {
    use greeter::{GreeterServer, HelloReply, HelloRequest};
    use seawall::grpc::GrpcRejectionLayer;

    let release = Arc::new(Semaphore::new(0));
    let inside = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let (gate, arrived) = (release.clone(), inside.clone());
    let server = GreeterServer::new(move |req: tonic::Request<HelloRequest>| {
        let (gate, arrived) = (gate.clone(), arrived.clone());
        async move {
            // The noisy tenant's calls wait until the test lets them go.
            if req.metadata().get("x-tenant").is_some_and(|t| t == "noisy") {
                arrived.send_modify(|n| *n += 1);
                gate.acquire().await.expect("open").forget();
            }
            Ok(HelloReply {
                message: "hi".into(),
                ..Default::default()
            })
        }
    });
    // The README's recipe for tonic.
    let stack = ServerStack::grpc("api")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let tenants = KeyedLayer::builder(
        HeaderKey::new(HeaderName::from_static("x-tenant")),
        |_: &Key| {
            BulkheadLayer::builder()
                .max_concurrent(4)
                .build()
                .expect("valid")
        },
    )
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GrpcRejectionLayer::new()) // a full tenant: UNAVAILABLE with pushback
            .layer(tenants)
            .layer(stack)
            .add_service(server)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let call = |tenant: &'static str| {
        let channel = channel.clone();
        async move {
            let mut req = tonic::Request::new(HelloRequest::default());
            req.metadata_mut()
                .insert("x-tenant", tenant.parse().unwrap());
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            grpc.unary(
                req,
                http::uri::PathAndQuery::from_static(greeter::SAY_HELLO),
                tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await
        }
    };
    // The noisy tenant takes its 4 places (its calls wait in the handler).
    let held: Vec<_> = (0..4).map(|_| tokio::spawn(call("noisy"))).collect();
    // Once the 4 are in the handler, a fifth is refused at once.
    inside
        .subscribe()
        .wait_for(|n| *n == 4)
        .await
        .expect("the server runs");
    let status = call("noisy")
        .await
        .expect_err("a fifth noisy call is refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "bulkhead full");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1500).contains(&pushback), "{pushback}");
    // Another tenant is served meanwhile.
    let quiet = call("quiet").await.expect("the quiet tenant is served");
    assert_eq!(quiet.into_inner().message, "hi");
    release.add_permits(4);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().into_inner().message, "hi");
    }
}
