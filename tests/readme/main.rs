//! The code of the README and of `docs/guide.md`, compiled and run: if
//! this breaks, the docs are wrong. Each block marked `--- README …
//! begins ---` here is shown in one of them as it runs here.
#![cfg(all(feature = "axum", feature = "rate-limit"))]

use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use seawall::ServerStack;

#[tokio::test(start_paused = true)]
async fn quick_start_server_stack() -> Result<(), seawall::BoxError> {
    // --- README quick start begins ---
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_millis(950)) // a little under what callers wait (1 s)
        .build()?; // refuses nonsense: a handler timeout above the budget, …

    let app: Router = Router::new()
        .route("/", get(|| async { "hello" }))
        // rejections become 429 / 503 with Retry-After, or 504; the error type stays Infallible
        .layer(stack);
    // --- README quick start ends ---

    let get = || http::Request::get("/").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(get()).await?.status(), 200);
    // A caller with no time left: refused without running the handler.
    let late = http::Request::get("/")
        .header("x-request-timeout-ms", "0")
        .body(Body::empty())?;
    assert_eq!(app.clone().oneshot(late).await?.status(), 504);
    // A caller asking for more than the budget gets the budget.
    let greedy = http::Request::get("/")
        .header("grpc-timeout", "1H")
        .body(Body::empty())?;
    assert_eq!(app.oneshot(greedy).await?.status(), 200);
    // The README's closure hook compiles as written.
    let _observer = seawall::Observer::new(|e: &seawall::observe::Event<'_>| {
        println!("{} {}: {:?}", e.layer.as_str(), e.name, e.kind)
    });
    Ok(())
}

/// The guide's fix for a lone layer on a route: the answer layer outside it.
#[tokio::test(start_paused = true)]
async fn a_lone_layer_on_a_route_answers_through_rejection_response()
-> Result<(), seawall::BoxError> {
    use seawall::bulkhead::BulkheadLayer;
    // --- README route_layer fix begins ---
    use seawall::http::RejectionResponseLayer;
    use tower::ServiceBuilder;

    let export = get(export).route_layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(BulkheadLayer::builder().max_concurrent(4).build()?),
    );
    // --- README route_layer fix ends ---
    async fn export() -> &'static str {
        tokio::time::sleep(Duration::from_secs(1)).await;
        "done"
    }
    let app: Router = Router::new().route("/export", export);
    let get = || http::Request::get("/export").body(Body::empty()).unwrap();
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(app.clone().oneshot(get())))
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        let res = c.await??;
        statuses.push((
            res.status().as_u16(),
            res.headers().contains_key("retry-after"),
        ));
    }
    statuses.sort();
    // Four run, the fifth is refused at once with a Retry-After.
    assert_eq!(
        statuses,
        [
            (200, false),
            (200, false),
            (200, false),
            (200, false),
            (503, true)
        ]
    );
    Ok(())
}

/// The guide's priorities by route: checkout critical, the rest sheddable.
#[tokio::test(start_paused = true)]
async fn priorities_by_route() -> Result<(), seawall::BoxError> {
    // --- README priorities begin ---
    use seawall::shed::criticality::Criticality;

    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .adaptive_limit(|l| {
            l.criticality(|req: &axum::http::Request<axum::body::Body>| {
                if req.uri().path().starts_with("/checkout") {
                    Criticality::Critical
                } else {
                    Criticality::Sheddable
                }
            })
        })
        .build()?;
    // --- README priorities end ---
    // The limit (20 at start) full of recommendations that wait: another
    // one is shed, a checkout still goes through (its guaranteed share).
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let app: Router = Router::new()
        .route("/checkout", get(|| async { "paid" }))
        .route(
            "/recommendations",
            get(move || {
                let held = held.clone();
                async move {
                    let _ = held.acquire().await;
                    "later"
                }
            }),
        )
        .layer(stack.clone());
    let get_req = |path: &str| http::Request::get(path).body(Body::empty()).unwrap();
    let waiting: Vec<_> = (0..20)
        .map(|_| tokio::spawn(app.clone().oneshot(get_req("/recommendations"))))
        .collect();
    while stack.adaptive_limit().inflight() < 20 {
        tokio::task::yield_now().await;
    }
    let shed = app.clone().oneshot(get_req("/recommendations")).await?;
    assert_eq!(shed.status(), 503);
    assert!(shed.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(
        app.clone().oneshot(get_req("/checkout")).await?.status(),
        200
    );
    gate.add_permits(20);
    for w in waiting {
        assert_eq!(w.await??.status(), 200);
    }
    Ok(())
}

/// The guide's rate limit per client, over real HTTP on loopback from two
/// source addresses: served with the connection's address, each client
/// has its own bucket; served without it, all share one.
#[tokio::test]
async fn rate_limit_per_client_over_http() -> Result<(), seawall::BoxError> {
    use std::net::{IpAddr, SocketAddr};
    // --- README rate limit per client begins ---
    use seawall::rate_limit::{ClientIp, Quota, headers::IetfHeaders};

    let headers = IetfHeaders::new("default")?; // RateLimit-Policy and RateLimit on admitted responses
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .rate_limit(Quota::per_minute(10), |r| {
            r.keyed(ClientIp::new()).response_headers(headers)
        })
        .build()?;
    // --- README rate limit per client ends ---
    let router = || Router::new().route("/", get(|| async { "hello" }));

    async fn serve(app: Router, connect_info: bool) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if connect_info {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
            } else {
                axum::serve(listener, app).await
            }
        });
        Ok(addr)
    }
    /// Status, `Retry-After` and `RateLimit` of a GET from `from`.
    async fn get_from(
        from: &str,
        to: SocketAddr,
    ) -> Result<(u16, Option<String>, Option<String>), seawall::BoxError> {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(Some(from.parse::<IpAddr>()?));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
        let res = client.get(format!("http://{to}/").parse()?).await?;
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok((
            res.status().as_u16(),
            header("retry-after"),
            header("ratelimit"),
        ))
    }

    let addr = serve(router().layer(stack), true).await?;
    for i in 0..10u32 {
        let (status, retry_after, remaining) = get_from("127.0.0.1", addr).await?;
        assert_eq!((status, retry_after), (200, None), "request {i}");
        let want = format!("\"default\";r={};t={}", 9 - i, 6 * (i + 1));
        assert_eq!(remaining.as_deref(), Some(want.as_str()), "request {i}");
    }
    let (status, retry_after, _) = get_from("127.0.0.1", addr).await?;
    assert_eq!(status, 429);
    // The next cell's 6 s, stretched by up to half, in whole seconds.
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((6..=9).contains(&retry_after), "{retry_after}");
    // Another client has a bucket of its own.
    let (status, _, remaining) = get_from("127.0.0.2", addr).await?;
    assert_eq!(
        (status, remaining.as_deref()),
        (200, Some("\"default\";r=9;t=6"))
    );

    // Served without the connection's address: one bucket for everyone.
    let plain = ServerStack::http("plain")
        .total_budget(Duration::from_secs(5))
        .rate_limit(Quota::per_minute(10), |r| r.keyed(ClientIp::new()))
        .build()?;
    let addr = serve(router().layer(plain), false).await?;
    for i in 0..10 {
        assert_eq!(get_from("127.0.0.1", addr).await?.0, 200, "request {i}");
    }
    let (status, retry_after, _) = get_from("127.0.0.2", addr).await?;
    assert_eq!(status, 429);
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((6..=9).contains(&retry_after), "{retry_after}");
    Ok(())
}

// --- README handler calling a dependency begins ---
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use seawall::stack::HttpClient;
use tower::ServiceExt; // oneshot

type Inventory = HttpClient<Client<HttpConnector, Full<Bytes>>>;

async fn item(State((inventory, base)): State<(Inventory, String)>) -> Response {
    let req = http::Request::get(format!("{base}/item/7"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    match inventory.oneshot(req).await {
        // The dependency's answer, whatever its status: its body, and the
        // headers a caller acts on (a busy dependency's Retry-After, and the
        // milliseconds a seawall client reads first).
        Ok(res) => {
            let (parts, body) = res.into_parts();
            match body.collect().await {
                Ok(body) => {
                    let mut answer = (parts.status, body.to_bytes()).into_response();
                    for name in [
                        http::header::CONTENT_TYPE,
                        http::header::RETRY_AFTER,
                        seawall::http::RETRY_AFTER_MS,
                    ] {
                        if let Some(value) = parts.headers.get(&name) {
                            answer.headers_mut().insert(name, value.clone());
                        }
                    }
                    answer
                }
                // Cut by the request's deadline while it streamed: 504.
                Err(err) => seawall::http::rejection_response(&err),
            }
        }
        // This process refused or gave up (breaker open, budget spent, out of
        // time): 503 or 429 with Retry-After, or 504.
        Err(err) if seawall::error::rejection_of(&err).is_some() => {
            seawall::http::rejection_response(&err)
        }
        // The dependency could not be reached (connection refused, reset): 502.
        Err(_) => http::StatusCode::BAD_GATEWAY.into_response(),
    }
}
// --- README handler calling a dependency ends ---

/// Serves `app` on a free loopback port.
async fn serve_app(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The README's front: `item` behind the server preset, calling the
/// dependency at `dep` through `inventory`.
fn front(inventory: Inventory, dep: std::net::SocketAddr) -> Result<Router, seawall::BoxError> {
    Ok(Router::new()
        .route("/", get(item))
        .with_state((inventory, format!("http://{dep}")))
        .layer(
            ServerStack::http("front")
                .total_budget(Duration::from_secs(5))
                .build()?,
        ))
}

/// The README's handler that calls a dependency through the client preset,
/// behind the server preset, over real HTTP on loopback: the dependency's
/// 500s are passed on until the client's breaker opens, then the caller
/// gets the breaker's refusal as a 503 with `Retry-After`, and the
/// dependency is not called.
#[tokio::test]
async fn a_handler_calls_a_dependency_through_the_client_preset() -> Result<(), seawall::BoxError> {
    use hyper_util::rt::TokioExecutor;
    use seawall::ClientStack;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Layer;

    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let dependency = Router::new().route(
        "/item/7",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async { (http::StatusCode::INTERNAL_SERVER_ERROR, "broken") }
        }),
    );
    let dep_addr = serve_app(dependency).await;

    let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // An observer counts the breaker's probes (one per half-open state).
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = probes.clone();
    let observer = seawall::Observer::new(move |e: &seawall::observe::Event<'_>| {
        if let seawall::observe::EventKind::StateChanged {
            to: seawall::observe::State::HalfOpen,
            ..
        } = e.kind
        {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let inventory: Inventory = ClientStack::http("inventory")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .observer(observer)
        .build()?
        .layer(hyper_client);
    let front_addr = serve_app(front(inventory, dep_addr)?).await;

    let caller = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get_front = || {
        http::Request::get(format!("http://{front_addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut statuses = Vec::new();
    while statuses.len() < 10 && statuses.last().is_none_or(|s: &(u16, bool)| s.0 != 503) {
        let res = caller.request(get_front()).await?;
        statuses.push((
            res.status().as_u16(),
            res.headers().contains_key(http::header::RETRY_AFTER),
        ));
    }
    // Six requests get the dependency's 500 after three attempts each; the
    // breaker opens on the 20th failed attempt, during the 7th, whose last
    // retry meets it (or, if that retry comes after its 100 ms open time, is
    // its probe, fails, and a later request is refused). Only probes reach
    // the dependency once it is open.
    assert!((7..10).contains(&statuses.len()), "{statuses:?}");
    let (refused, passed_on) = statuses.split_last().unwrap();
    assert!(passed_on.iter().all(|s| *s == (500, false)), "{statuses:?}");
    assert_eq!(
        *refused,
        (503, true),
        "the breaker's refusal, with Retry-After"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        20 + probes.load(Ordering::SeqCst)
    );
    Ok(())
}

/// The same handler passes a busy dependency's `Retry-After` and
/// `retry-after-ms` on with its `503` (they were lost: the handler kept the
/// status and the body only), and
/// answers `502` when the dependency cannot be reached (it answered `500`).
#[tokio::test]
async fn the_handler_passes_on_a_busy_dependencys_retry_after_and_a_502_when_unreachable()
-> Result<(), seawall::BoxError> {
    use hyper_util::rt::TokioExecutor;
    use seawall::ClientStack;
    use tower::Layer;

    let busy = Router::new().route(
        "/item/7",
        get(|| async {
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                [
                    (http::header::RETRY_AFTER, "7"),
                    (seawall::http::RETRY_AFTER_MS, "6500"),
                ],
                "busy",
            )
        }),
    );
    let busy_addr = serve_app(busy).await;
    // A port with nothing listening on it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let closed_addr = closed.local_addr()?;
    drop(closed);

    let caller = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut answers = Vec::new();
    for dep in [busy_addr, closed_addr] {
        let inventory: Inventory = ClientStack::http("inventory")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(500))
            .build()?
            .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        let front_addr = serve_app(front(inventory, dep)?).await;
        let res = caller
            .request(
                http::Request::get(format!("http://{front_addr}/"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await?;
        let retry_after = res
            .headers()
            .get(http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let ms = res
            .headers()
            .get(seawall::http::RETRY_AFTER_MS)
            .map(|v| v.to_str().unwrap().to_owned());
        answers.push((res.status().as_u16(), retry_after, ms));
    }
    assert_eq!(
        answers,
        vec![
            (503, Some("7".to_owned()), Some("6500".to_owned())),
            (502, None, None)
        ],
        "the busy dependency's answer, then the unreachable one's"
    );
    Ok(())
}

/// The guide's breaker per host: two servers on loopback, one answering
/// `500` to every call. Its breaker opens after its 20 calls and refuses the
/// rest without sending them; every call to the other host is served.
#[cfg(all(feature = "keyed", feature = "circuit-breaker"))]
#[tokio::test]
async fn a_breaker_per_host() -> Result<(), seawall::BoxError> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let broken = serve_app(Router::new().route(
        "/",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async { http::StatusCode::INTERNAL_SERVER_ERROR }
        }),
    ))
    .await;
    let healthy = serve_app(Router::new().route("/", get(|| async { "fine" }))).await;
    let hyper_client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    use tower::Layer;
    // --- README breaker per host begins ---
    use seawall::circuit_breaker::CircuitBreakerLayer;
    use seawall::http::HttpStatusClassifier;
    use seawall::keyed::KeyedLayer;
    use seawall::rate_limit::Key;

    // One breaker per host the client calls: a host that fails is shut off
    // alone, the others are not.
    let per_host = KeyedLayer::builder(
        |req: &http::Request<Full<Bytes>>| {
            req.uri()
                .authority()
                .and_then(|a| Key::from_bytes(a.as_str().as_bytes()))
        },
        |host: &Key| {
            CircuitBreakerLayer::builder()
                .name(format!("hosts.breaker.{host}")) // events and metrics per host
                .classifier(HttpStatusClassifier::new())
                .build()
                .expect("valid settings")
        },
    )
    .build()?;
    let client = per_host.layer(hyper_client); // or below a ClientStack::http
    // --- README breaker per host ends ---
    let get = |addr: std::net::SocketAddr| {
        http::Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut refused = Vec::new();
    for i in 0..30 {
        match client.clone().oneshot(get(broken)).await {
            Ok(res) => assert_eq!(res.status(), 500, "call {i}"),
            Err(err) => {
                let r = seawall::error::rejection_of(&err).expect("a refusal");
                assert_eq!(r.kind(), seawall::RejectionKind::CircuitOpen);
                assert!(
                    r.name().starts_with("hosts.breaker.127.0.0.1:"),
                    "{}",
                    r.name()
                );
                refused.push(i);
            }
        }
        let res = client.clone().oneshot(get(healthy)).await?;
        assert_eq!(res.status(), 200, "the other host, call {i}");
    }
    assert_eq!(refused, (20..30).collect::<Vec<_>>());
    assert_eq!(hits.load(Ordering::SeqCst), 20);
    Ok(())
}

/// The guide's stack per group of routes ("One route's dependency
/// queues"): the groups' limits are apart, so calls piling up behind
/// `/inventory` fill its limit only, and `/catalog` is served at once, as
/// `/health` in no stack is; around every route, one stack holds both back
/// with them.
#[tokio::test(start_paused = true)]
async fn a_stack_per_group_of_routes() -> Result<(), seawall::BoxError> {
    #[derive(Clone)]
    struct AppState;
    // A dependency that never answers in time: its calls stay in flight.
    async fn inventory(axum::extract::State(_): axum::extract::State<AppState>) -> &'static str {
        std::future::pending().await
    }
    async fn health() -> &'static str {
        "ok"
    }
    async fn catalog() -> &'static str {
        "catalog"
    }
    let state = AppState;
    // --- README stack per group of routes begins ---
    let calls_the_dependency = Router::new().route("/inventory", get(inventory)).layer(
        ServerStack::http("inventory")
            .total_budget(Duration::from_millis(950))
            .build()?,
    );
    let local = Router::new().route("/catalog", get(catalog)).layer(
        ServerStack::http("api")
            .total_budget(Duration::from_millis(950))
            .build()?,
    );
    let app = calls_the_dependency
        .merge(local)
        .route("/health", get(health))
        .with_state(state);
    // --- README stack per group of routes ends ---
    let one_stack = Router::new()
        .route("/inventory", get(inventory))
        .route("/health", get(health))
        .route("/catalog", get(catalog))
        .layer(
            ServerStack::http("api")
                .total_budget(Duration::from_millis(950))
                .build()?,
        )
        .with_state(AppState);

    let req = |path: &str| http::Request::get(path).body(Body::empty()).unwrap();
    // What a request got within 100 ms: its status, or none (it waits).
    let within = |app: Router, path: &'static str| async move {
        tokio::time::timeout(Duration::from_millis(100), app.oneshot(req(path)))
            .await
            .ok()
            .map(|r| r.map(|r| r.status().as_u16()))
            .transpose()
    };
    for (name, app, others_served) in [
        ("a stack per group", app, true),
        ("one stack", one_stack, false),
    ] {
        // 100 calls pile up behind /inventory, past the limit (20 at
        // start) and its burst of 100 ms.
        let mut piled = Vec::new();
        for _ in 0..100 {
            piled.push(tokio::spawn(app.clone().oneshot(req("/inventory"))));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The limit is full of /inventory's calls: the next is not
        // answered within 100 ms.
        assert_eq!(within(app.clone(), "/inventory").await?, None, "{name}");
        // /catalog: served at once by a stack of its own group, and
        // /health by none; held back with them by one stack.
        for path in ["/catalog", "/health"] {
            let got = within(app.clone(), path).await?;
            assert_eq!(got == Some(200), others_served, "{name} {path}: {got:?}");
        }
        for p in piled {
            p.abort();
        }
    }
    Ok(())
}

/// The guide's balanced HTTP client: three replicas on loopback, one
/// answering `500` to half its calls (5 in a row of every 10: with fewer
/// than 5 endpoints, only failures in a row eject). Each endpoint is the hyper client
/// with the replica's address written in, judged by `EjectionLayer::http()`:
/// the sick replica is ejected after 5 failures in a row and gets a few
/// calls of 300, and the requests are served (the preset retries the 500s
/// it got). With `EjectionLayer::builder()`, whose classifier fails only an
/// `Err`, the 500s are successes: the replica stays in and gets a third of
/// the calls or more.
#[cfg(feature = "eject")]
#[tokio::test]
async fn a_balanced_http_client_ejects_a_replica_answering_500() -> Result<(), seawall::BoxError> {
    use seawall::ClientStack;
    use seawall::eject::EjectionLayer;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
    use tower::{Layer, ServiceBuilder};

    // Replica `i`, counting its calls; the first answers 500 to half of them.
    let mut addrs = Vec::new();
    let mut calls = Vec::new();
    for i in 0..3 {
        let n = Arc::new(AtomicU64::new(0));
        let count = n.clone();
        let app = Router::new().route(
            "/items/7",
            get(move || {
                let k = count.fetch_add(1, Ordering::Relaxed);
                async move {
                    if i == 0 && k % 10 < 5 {
                        http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        http::StatusCode::OK
                    }
                }
            }),
        );
        addrs.push(serve_app(app).await);
        calls.push(n);
    }
    let hyper_client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();

    async fn run<C>(
        ejection: EjectionLayer<C>,
        addrs: &[std::net::SocketAddr],
        hyper_client: Client<HttpConnector, Full<Bytes>>,
    ) -> Result<(usize, usize), seawall::BoxError>
    where
        C: seawall::classify::Classify<
                http::Response<hyper::body::Incoming>,
                hyper_util::client::legacy::Error,
            > + Clone
            + Send
            + Sync
            + 'static,
    {
        // --- README balanced HTTP endpoints begins ---
        let endpoints: Vec<_> = addrs
            .iter()
            .map(|&addr| {
                let authority: http::uri::Authority = addr.to_string().parse().expect("an address");
                ejection.layer(
                    ServiceBuilder::new()
                        .map_request(move |mut req: http::Request<Full<Bytes>>| {
                            let mut parts = req.uri().clone().into_parts();
                            parts.scheme = Some(http::uri::Scheme::HTTP);
                            parts.authority = Some(authority.clone());
                            *req.uri_mut() =
                                http::Uri::from_parts(parts).expect("a path and an authority");
                            req
                        })
                        .service(hyper_client.clone()),
                )
            })
            .collect();
        // --- README balanced HTTP endpoints ends ---
        let balanced = tower::buffer::Buffer::new(
            Balance::new(PendingRequestsDiscover::new(
                ServiceList::new(endpoints),
                CompleteOnResponse::default(),
            )),
            1024,
        );
        let client = ClientStack::http("items")
            .total_budget(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(500))
            .retry(|r| r.seed(7))
            .breaker(|b| b.seed(7))
            .build()?
            .layer(balanced);
        let mut served = 0;
        for _ in 0..300 {
            let req = http::Request::get("/items/7").body(Full::new(Bytes::new()))?;
            let res = client.clone().oneshot(req).await?;
            served += usize::from(res.status() == 200);
        }
        Ok((served, ejection.ejected()))
    }

    let (served, ejected) =
        run(EjectionLayer::http().build()?, &addrs, hyper_client.clone()).await?;
    let sick = calls[0].swap(0, Ordering::Relaxed);
    println!("EjectionLayer::http(): {served} of 300 served, {sick} calls to the sick replica");
    // (p2c picks at random: a request whose three attempts all land on
    // the sick replica in its first five calls, before it is out, fails.)
    assert!(served >= 297, "{served} of 300 served");
    assert_eq!(ejected, 1);
    assert!(sick <= 15, "{sick} calls reached the sick replica");

    let (_, ejected) = run(EjectionLayer::builder().build()?, &addrs, hyper_client).await?;
    let sick = calls[0].load(Ordering::Relaxed);
    println!("EjectionLayer::builder(): {sick} calls to the sick replica");
    assert_eq!(ejected, 0, "a 500 is a success to errors-as-failures");
    // About a third of the calls and their retries (118 in one run).
    assert!(sick >= 60, "{sick} calls reached the sick replica");
    Ok(())
}

/// Each block these tests and `tests/presets` run, between `--- README …
/// begins ---` and `--- README … ends ---`, is in the README or in
/// `docs/guide.md` as it runs (whitespace aside): a change to one without
/// the other fails here.
#[test]
fn the_docs_show_the_code_their_tests_run() {
    fn words(text: &str) -> String {
        text.split_whitespace().collect()
    }
    fn marker<'a>(line: &'a str, edge: &str) -> Option<&'a str> {
        let name = line
            .trim()
            .strip_prefix("// --- README ")?
            .strip_suffix(" ---")?;
        [format!(" {edge}s"), format!(" {edge}")]
            .iter()
            .find_map(|end| name.strip_suffix(end.as_str()))
    }
    let docs = words(
        &[
            include_str!("../../README.md"),
            include_str!("../../docs/guide.md"),
        ]
        .concat(),
    );
    for (file, source, expected) in [
        ("tests/readme/main.rs", include_str!("main.rs"), 8),
        (
            "tests/presets/main.rs",
            include_str!("../presets/main.rs"),
            2,
        ),
    ] {
        let mut names = Vec::new();
        let mut lines = source.lines();
        while let Some(line) = lines.next() {
            let Some(name) = marker(line, "begin") else {
                continue;
            };
            let block: Vec<&str> = lines
                .by_ref()
                .take_while(|l| marker(l, "end").is_none())
                .collect();
            assert!(
                docs.contains(&words(&block.join("\n"))),
                "{file}: the block `{name}` is not shown in the README or docs/guide.md as it runs"
            );
            names.push(name);
        }
        assert_eq!(names.len(), expected, "{file}: {names:?}");
    }
}

/// A chain over real HTTP, every hop with the presets' defaults and only
/// the budgets set as the guide says: a caller's client stack (1 s; its
/// attempts 500 ms) → the README's handler behind the server preset
/// (950 ms, what its callers wait, a little under) calling a leaf through
/// the client preset (1 s) → a plain leaf that has slowed to 600 ms.
/// The first hop's attempt sends the middle tier 500 ms, and the middle
/// tier answers `504` at that deadline, a moment before the attempt's own
/// timer: that answer is the attempt's timeout, so the caller's retry
/// layer finds timeouts common, as it does for its own timer, and sends
/// the middle tier the whole time left, whose call to the leaf is then
/// answered. When such a `504` was a failure like any other, retried
/// into another 500 ms, every request failed (an outside trial: the
/// presets did worse than none while a leaf was slow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_gives_a_slowed_leaf_the_callers_time() -> Result<(), seawall::BoxError> {
    use hyper_util::rt::TokioExecutor;
    use seawall::ClientStack;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Layer;

    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let leaf = Router::new().route(
        "/item/7",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "item 7"
            }
        }),
    );
    let leaf_addr = serve_app(leaf).await;
    let to_leaf: Inventory = ClientStack::http("leaf")
        .total_budget(Duration::from_secs(1))
        .build()?
        .layer(Client::builder(TokioExecutor::new()).build_http());
    let middle = Router::new()
        .route("/", get(item))
        .with_state((to_leaf, format!("http://{leaf_addr}")))
        .layer(
            ServerStack::http("middle")
                .total_budget(Duration::from_millis(950))
                .build()?,
        );
    let middle_addr = serve_app(middle).await;
    let to_middle = ClientStack::http("middle")
        .total_budget(Duration::from_secs(1))
        .build()?
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let mut waves = Vec::new();
    for _ in 0..3 {
        let calls = (0..10).map(|_| {
            let req = http::Request::get(format!("http://{middle_addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            to_middle.clone().oneshot(req)
        });
        let answers = futures::future::join_all(calls).await;
        let served = answers
            .iter()
            .filter(|a| a.as_ref().is_ok_and(|r| r.status() == 200))
            .count();
        waves.push(served);
    }
    let hits = hits.load(Ordering::SeqCst);
    println!("served per wave of 10: {waves:?}; the leaf was called {hits} times");
    // The first wave's attempts reach the middle tier's deadline together:
    // the first two are retried (timeouts are rare yet), into the time
    // left, and the others are not; none is served (nor was any, when the
    // `504`s were retried as failures: [0, 0, 0]). The second wave is
    // sent with the time left, and the middle tier's own first two
    // attempts to the leaf are cut at its 500 ms attempt timeout before
    // it finds timeouts common in turn; the third wave is served whole.
    // (A wave that took long on a busy machine may find the judgements
    // of the one before forgotten, and meet the first two cuts again.)
    assert_eq!(waves[0], 0, "{waves:?}");
    assert!(waves[1] + waves[2] >= 15, "{waves:?}");
    // Each request reached the leaf about once: 30 requests, and the
    // retries of the few first timeouts.
    assert!(hits <= 45, "{hits}");
    Ok(())
}
