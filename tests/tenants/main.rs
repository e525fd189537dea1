#![cfg(all(
    feature = "axum",
    feature = "keyed",
    feature = "bulkhead",
    feature = "shed"
))]
//! One tenant must not starve the rest: an axum server whose handler can
//! run 8 requests at once (20 ms each, about 400 a second), a noisy tenant
//! sending 1500 requests a second and four quiet ones 40 a second each,
//! for 5 s of paused time, each tenant a Poisson stream. The README's
//! recipe (the server preset with a bulkhead per tenant,
//! `.tenant_bulkhead(..)`, keyed by a header, its queue of 4 and wait of
//! 100 ms by default) against the preset alone and against no protection;
//! a quiet request counts as served when its `200` arrives within 1 s. The
//! tonic version of the recipe runs on a real tonic server.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderName, Request, StatusCode};
use seawall::ServerStack;
use seawall::rate_limit::{HeaderKey, Key};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The handler: one of 8 workers for 20 ms (waiting for a free one in an
/// unbounded queue, as a pool does); 400 ms for the tenant `slow`, whose
/// requests are expensive.
fn app(workers: Arc<Semaphore>) -> Router {
    Router::new().route(
        "/",
        get(move |headers: http::HeaderMap| {
            let workers = workers.clone();
            let slow = headers.get("x-tenant").is_some_and(|t| t == "slow");
            async move {
                let _worker = workers.acquire().await.expect("open");
                let ms = if slow { 400 } else { 20 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "done"
            }
        }),
    )
}

/// The README's recipe: the server preset with a bulkhead per tenant
/// (4 places, half the handler's 8 workers, and the part's default queue
/// of 4 for at most 100 ms), so that a tenant's excess is refused before
/// it takes a place under the server's limit.
fn per_tenant(router: Router) -> Result<Router, seawall::BoxError> {
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .tenant_bulkhead(
            HeaderKey::new(HeaderName::from_static("x-tenant")),
            4,
            |b| b,
        )
        .build()?;
    Ok(router.layer(stack))
}

/// [`per_tenant`] with no queue.
fn per_tenant_queueless(router: Router) -> Result<Router, seawall::BoxError> {
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .tenant_bulkhead(
            HeaderKey::new(HeaderName::from_static("x-tenant")),
            4,
            |b| b.max_queue(0),
        )
        .build()?;
    Ok(router.layer(stack))
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u32,
    served: u32,
    refused_with_retry_after: u32,
}

/// A uniform draw in `[0, 1)` from `state` (splitmix64).
fn unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// [`run_with`] under the flood: 1500 requests a second.
async fn run(router: Router) -> Vec<Tally> {
    run_with(router, 1500.0).await
}

/// Runs the load through `router`: per tenant, what was sent and served.
/// 5 s of requests from every tenant, each a Poisson stream from a fixed
/// seed (a quiet tenant's requests come in random bursts, as real ones
/// do); the noisy tenant sends `noisy` a second.
async fn run_with(router: Router, noisy: f64) -> Vec<Tally> {
    run_tenants(router, "noisy", noisy).await
}

/// [`run_with`], the first tenant named `first`.
async fn run_tenants(router: Router, first: &'static str, rate: f64) -> Vec<Tally> {
    let tenants: [(&str, f64); 5] = [
        (first, rate),
        ("quiet-1", 40.0),
        ("quiet-2", 40.0),
        ("quiet-3", 40.0),
        ("quiet-4", 40.0),
    ];
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut seed = 0x5EED_u64;
    for (t, &(name, per_sec)) in tenants.iter().enumerate() {
        let mut at = 0.0;
        loop {
            at += -(1.0 - unit(&mut seed)).ln() / per_sec;
            if at >= 5.0 {
                break;
            }
            let router = router.clone();
            let at = start + Duration::from_secs_f64(at);
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
    assert_eq!(served[2], 1.0, "{served:?}");
    assert!((800..=1100).contains(&recipe[0].served), "{recipe:?}");
    assert_eq!(
        recipe[0].refused_with_retry_after,
        recipe[0].sent - recipe[0].served,
        "{recipe:?}"
    );
    // With no flood, every tenant at 40 a second: the recipe serves all.
    // Without its queue a tenant's own random bursts meet its 4 places
    // (about 1 % refused, flood or not, in an outside trial over tonic).
    let calm = run_with(per_tenant(app(Arc::new(Semaphore::new(8)))).unwrap(), 40.0).await;
    let queueless = |noisy| async move {
        let router = per_tenant_queueless(app(Arc::new(Semaphore::new(8)))).unwrap();
        quiet_served(&run_with(router, noisy).await)
    };
    let (calm_queueless, flood_queueless) = (queueless(40.0).await, queueless(1500.0).await);
    println!(
        "no flood: per tenant {:.4}, without its queue {calm_queueless:.4}; flood without the queue {flood_queueless:.4}",
        quiet_served(&calm)
    );
    assert_eq!(quiet_served(&calm), 1.0);
    assert!(calm_queueless < 1.0 && flood_queueless < 1.0);
}

/// A tenant whose requests are slow rather than many: 25 a second of
/// 400 ms each want 10 of the handler's 8 workers. Without protection the
/// quiet tenants are served (their 20 ms fit in what is left of a second
/// after the queue's wait) and the slow tenant's requests mostly pass
/// their deadline in the queue; the preset alone refuses every request
/// alike, whatever it costs, so the slow tenant's load costs the quiet
/// ones too; a bulkhead per tenant holds the slow tenant to its 4
/// workers: the quiet tenants served in full, and the slow one more than
/// with no protection.
#[tokio::test(start_paused = true)]
async fn a_tenant_of_slow_requests_is_kept_to_its_share() {
    let none = run_tenants(app(Arc::new(Semaphore::new(8))), "slow", 25.0).await;
    let preset = run_tenants(
        app(Arc::new(Semaphore::new(8))).layer(
            ServerStack::http("api")
                .total_budget(Duration::from_secs(5))
                .build()
                .unwrap(),
        ),
        "slow",
        25.0,
    )
    .await;
    let recipe = run_tenants(
        per_tenant(app(Arc::new(Semaphore::new(8)))).unwrap(),
        "slow",
        25.0,
    )
    .await;
    let served = [&none, &preset, &recipe].map(|t| quiet_served(t));
    println!(
        "slow tenant: quiet tenants served within 1 s: none {:.3}, preset {:.3}, per tenant {:.3}; \
         the slow one {} / {} / {} of {}",
        served[0],
        served[1],
        served[2],
        none[0].served,
        preset[0].served,
        recipe[0].served,
        recipe[0].sent
    );
    assert!(served[1] < 0.8, "{served:?}");
    assert_eq!(served[2], 1.0, "{served:?}");
    // Its 4 workers' worth: 10 a second of 400 ms requests, 50 in 5 s;
    // with no protection, most of its requests waited past their deadline.
    assert!((40..=55).contains(&recipe[0].served), "{recipe:?}");
    assert!(recipe[0].served > 2 * none[0].served, "{none:?}");
}

#[cfg(feature = "tonic")]
#[path = "../../examples/common/greeter.rs"]
mod greeter;

/// The recipe on a real tonic server, as the README writes it for tonic:
/// the gRPC server preset with a bulkhead per tenant. A tenant holding its
/// 4 places and its 4 queue places has its next call refused
/// `UNAVAILABLE` with `grpc-retry-pushback-ms`, while another tenant's
/// call is served meanwhile.
#[cfg(feature = "tonic")]
#[tokio::test]
async fn on_tonic_a_full_tenant_is_refused_with_pushback_while_another_is_served() {
    use greeter::{GreeterServer, HelloReply, HelloRequest};

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
        .tenant_bulkhead(
            HeaderKey::new(HeaderName::from_static("x-tenant")),
            4,
            |b| b,
        )
        .build()
        .unwrap();
    let tenants = stack.tenants().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
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
    // The noisy tenant takes its 4 places (its calls wait in the handler)
    // and its 4 queue places.
    let mut held: Vec<_> = (0..8).map(|_| tokio::spawn(call("noisy"))).collect();
    inside
        .subscribe()
        .wait_for(|n| *n == 4)
        .await
        .expect("the server runs");
    // A ninth is refused at once once the 4 waiting are queued; until
    // then it would queue, and is given up (its place freed) after 50 ms.
    // (Should the queued ones have waited out their 100 ms meanwhile,
    // each try sends 4 more to fill the queue again.)
    let mut refused = None;
    for _ in 0..100 {
        if let Ok(answer) = tokio::time::timeout(Duration::from_millis(50), call("noisy")).await {
            refused = Some(answer.expect_err("the noisy tenant's calls wait for the gate"));
            break;
        }
        held.extend((0..4).map(|_| tokio::spawn(call("noisy"))));
    }
    let status = refused.expect("a ninth noisy call is refused");
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
    println!("refused with pushback {pushback} ms");
    // The queue's longest wait, 100 ms, stretched by up to half.
    assert!((100..150).contains(&pushback), "{pushback}");
    // Another tenant is served meanwhile.
    let quiet = call("quiet").await.expect("the quiet tenant is served");
    assert_eq!(quiet.into_inner().message, "hi");
    let noisy = tenants
        .get(&Key::from_bytes(b"noisy").unwrap())
        .expect("a tenant held");
    assert_eq!(noisy.available_permits(), 0);
    assert_eq!(
        tenants
            .get(&Key::from_bytes(b"quiet").unwrap())
            .expect("held")
            .available_permits(),
        4
    );
    assert_eq!(tenants.len(), 2);
    release.add_permits(held.len());
    // The 4 in the handler are answered; the 4 queued are answered too, or
    // refused the same way if they waited their 100 ms first.
    let mut answered = 0;
    for h in held {
        match h.await.unwrap() {
            Ok(reply) => {
                assert_eq!(reply.into_inner().message, "hi");
                answered += 1;
            }
            Err(status) => assert_eq!(
                (status.code(), status.message()),
                (tonic::Code::Unavailable, "bulkhead full")
            ),
        }
    }
    assert!(answered >= 4, "{answered}");
}

/// Inside the preset, a tenant's wait in its queue is within the caller's
/// deadline: a request queued behind its tenant's busy place, with 200 ms
/// left by its header (190 after the hop's margin) and a queue that would
/// wait 500 ms, is answered `504` when its deadline comes, not served
/// late; another tenant is served meanwhile.
#[tokio::test(start_paused = true)]
async fn a_tenants_queue_wait_ends_at_the_callers_deadline() {
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .tenant_bulkhead(
            HeaderKey::new(HeaderName::from_static("x-tenant")),
            1,
            |b| b.max_wait(Duration::from_millis(500)),
        )
        .build()
        .unwrap();
    let router = one_second_handler().layer(stack);
    let req = tenant_request;
    let first = tokio::spawn(router.clone().oneshot(req("a", None)));
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let queued = router.clone().oneshot(req("a", Some(200))).await.unwrap();
    assert_eq!(queued.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_millis(190));
    // Tenant b has a place of its own.
    let other = router.oneshot(req("b", Some(2000))).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
}

/// The tenants' bulkheads compose with the preset's other parts in either
/// order of the builder calls: a rate limit refuses first (429), then a
/// full tenant (503), and another tenant is served.
#[tokio::test(start_paused = true)]
async fn tenant_bulkheads_and_a_rate_limit_build_in_either_order() {
    use seawall::rate_limit::Quota;
    let key = || HeaderKey::new(HeaderName::from_static("x-tenant"));
    let stacks = [
        ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .rate_limit(Quota::per_minute(3), |r| r)
            .tenant_bulkhead(key(), 1, |b| b.max_queue(0))
            .build()
            .unwrap(),
        ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .tenant_bulkhead(key(), 1, |b| b.max_queue(0))
            .rate_limit(Quota::per_minute(3), |r| r)
            .build()
            .unwrap(),
    ];
    for stack in stacks {
        let router = one_second_handler().layer(stack);
        let req = |tenant: &str| tenant_request(tenant, None);
        let first = tokio::spawn(router.clone().oneshot(req("a")));
        tokio::task::yield_now().await;
        let statuses = [
            router.clone().oneshot(req("a")).await.unwrap().status(),
            router.clone().oneshot(req("b")).await.unwrap().status(),
            router.clone().oneshot(req("c")).await.unwrap().status(),
        ];
        // The quota of 3 a minute is spent by a, a and b: c is rate limited.
        assert_eq!(
            statuses,
            [
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

/// A handler that takes 1 s.
fn one_second_handler() -> Router {
    Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            "done"
        }),
    )
}

/// A request of `tenant`, with `x-request-timeout-ms` if given.
fn tenant_request(tenant: &str, timeout_ms: Option<u32>) -> Request<Body> {
    let mut b = Request::get("/").header("x-tenant", tenant);
    if let Some(ms) = timeout_ms {
        b = b.header("x-request-timeout-ms", ms);
    }
    b.body(Body::empty()).unwrap()
}
