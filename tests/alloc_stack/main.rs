#![cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
//! Zero heap allocations per admitted call through the full recommended
//! client and server stacks, measured layer by layer too, for a ready
//! service and for one that yields (so every timer is registered).

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use counting_alloc::{CountingAlloc, allocations_on_this_thread, count_allocations};
use seawall::BoxError;
use seawall::deadline::HasDeadline;
use seawall::observe::{Event, Observer};
use seawall::stack::{ClientStack, ClientStackLayer, ServerStack};
use tower::layer::util::Identity;
use tower::{Layer, Service, service_fn};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const WARM_UP: usize = 256;
const CALLS: usize = 1_000;

/// A small `Clone` request, as a user's own type would be.
#[derive(Debug, Clone, PartialEq)]
struct Charge {
    account: u32,
    cents: u64,
}

impl HasDeadline for Charge {}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn ready_backend() -> impl Service<Charge, Response = u64, Error = BoxError, Future: Send> + Clone {
    service_fn(|c: Charge| std::future::ready(Ok::<_, BoxError>(c.cents + 1)))
}

fn yielding_backend() -> impl Service<Charge, Response = u64, Error = BoxError, Future: Send> + Clone
{
    service_fn(|c: Charge| async move {
        tokio::task::yield_now().await;
        Ok::<_, BoxError>(c.cents + 1)
    })
}

fn charge(i: u64) -> Charge {
    Charge {
        account: 7,
        cents: i,
    }
}

/// poll_ready + call + poll to completion, by hand, on this thread.
fn one_call<S: Service<Charge, Response = u64, Error = BoxError>>(svc: &mut S, i: u64) {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("ready service not ready"),
    }
    let mut fut = pin!(svc.call(charge(i)));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(y)) => assert_eq!(y, i + 1),
        Poll::Ready(Err(e)) => panic!("call {i} failed: {e}"),
        Poll::Pending => panic!("ready service did not answer"),
    }
}

/// Allocations per `CALLS` calls after a warm-up, polling by hand.
fn allocations_ready<S: Service<Charge, Response = u64, Error = BoxError>>(mut svc: S) -> u64 {
    let rt = runtime();
    let _guard = rt.enter();
    for i in 0..WARM_UP as u64 {
        one_call(&mut svc, i);
    }
    let (allocs, ()) = count_allocations(|| {
        for i in 0..CALLS as u64 {
            one_call(&mut svc, i);
        }
    });
    allocs
}

/// Allocations per `CALLS` calls after a warm-up, awaited on a current-thread
/// runtime (the backend yields once, so the timers are registered).
fn allocations_awaited<S: Service<Charge, Response = u64, Error = BoxError>>(mut svc: S) -> u64 {
    runtime().block_on(async move {
        async fn run<S: Service<Charge, Response = u64, Error = BoxError>>(svc: &mut S, i: u64) {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
            assert_eq!(svc.call(charge(i)).await.unwrap(), i + 1);
        }
        for i in 0..WARM_UP as u64 {
            run(&mut svc, i).await;
        }
        let before = allocations_on_this_thread();
        for i in 0..CALLS as u64 {
            run(&mut svc, i).await;
        }
        allocations_on_this_thread() - before
    })
}

fn client(observer: Option<Observer>) -> ClientStackLayer {
    let mut b = ClientStack::builder("payments")
        .total_budget(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(300))
        .retry(|r| r.max_attempts(3).seed(1));
    if let Some(o) = observer {
        b = b.observer(o);
    }
    b.build().unwrap()
}

/// A hook that counts events: enabled, but allocation-free.
fn counting_observer() -> (Observer, Arc<AtomicU64>) {
    let n = Arc::new(AtomicU64::new(0));
    let m = n.clone();
    let observer = Observer::new(move |_: &Event<'_>| {
        m.fetch_add(1, Ordering::Relaxed);
    });
    (observer, n)
}

#[test]
fn the_counter_is_live() {
    let (boxed, b) = count_allocations(|| std::hint::black_box(Box::new(7u64)));
    assert_eq!((boxed, *b), (1, 7));
}

#[test]
fn client_stack_allocates_nothing_per_call() {
    let ready = allocations_ready(client(None).layer(ready_backend()));
    let awaited = allocations_awaited(client(None).layer(yielding_backend()));
    println!(
        "client stack: ready backend {ready} allocations / {CALLS} calls; yielding backend {awaited} / {CALLS}"
    );
    assert_eq!((ready, awaited), (0, 0));
}

#[test]
fn client_stack_with_an_enabled_observer_allocates_nothing_per_call() {
    let (observer, events) = counting_observer();
    let allocs = allocations_ready(client(Some(observer)).layer(ready_backend()));
    println!("client stack, counting observer: {allocs} allocations / {CALLS} calls");
    assert_eq!(allocs, 0);
    assert!(events.load(Ordering::Relaxed) >= 2 * (WARM_UP + CALLS) as u64);
}

#[test]
fn client_stack_layer_by_layer() {
    // Each layer of the built stack alone, then growing from the inside out.
    let c = client(None);
    let b = ready_backend;
    let figures = [
        (
            "attempt timeout",
            allocations_ready(c.attempt_timeout().layer(b())),
        ),
        ("bulkhead", allocations_ready(c.bulkhead().layer(b()))),
        ("breaker", allocations_ready(c.breaker().layer(b()))),
        ("retry", allocations_ready(c.retry().layer(b()))),
        ("deadline", allocations_ready(c.deadline().layer(b()))),
        (
            "deadline+retry+breaker+bulkhead+attempt",
            allocations_ready(c.layer(b())),
        ),
    ];
    for (layer, allocs) in figures {
        println!("client {layer}: {allocs} allocations / {CALLS} calls");
    }
    assert!(figures.iter().all(|(_, a)| *a == 0), "{figures:?}");
}

#[cfg(feature = "rate-limit")]
fn server() -> seawall::stack::ServerStackLayer<Identity, seawall::rate_limit::RateLimitLayer> {
    ServerStack::builder("api")
        .total_budget(Duration::from_secs(2))
        .handler_timeout(Duration::from_millis(500))
        // Enough cells that no call of the test is refused.
        .rate_limit(seawall::rate_limit::Quota::per_second(1_000_000), |r| r)
        .build()
        .unwrap()
}

#[cfg(feature = "rate-limit")]
#[test]
fn server_stack_allocates_nothing_per_call() {
    let ready = allocations_ready(server().layer(ready_backend()));
    let awaited = allocations_awaited(server().layer(yielding_backend()));
    println!(
        "server stack: ready backend {ready} allocations / {CALLS} calls; yielding backend {awaited} / {CALLS}"
    );
    assert_eq!((ready, awaited), (0, 0));
}

#[cfg(feature = "rate-limit")]
#[test]
fn server_stack_layer_by_layer() {
    let s = server();
    let b = ready_backend;
    let figures = [
        (
            "handler timeout",
            allocations_ready(s.handler_timeout().layer(b())),
        ),
        ("bulkhead", allocations_ready(s.bulkhead().layer(b()))),
        (
            "adaptive limit",
            allocations_ready(s.adaptive_limit().layer(b())),
        ),
        ("rate limit", allocations_ready(s.rate_limit().layer(b()))),
        ("deadline", allocations_ready(s.deadline().layer(b()))),
        (
            "deadline+rate limit+limit+bulkhead+handler",
            allocations_ready(s.layer(b())),
        ),
    ];
    for (layer, allocs) in figures {
        println!("server {layer}: {allocs} allocations / {CALLS} calls");
    }
    assert!(figures.iter().all(|(_, a)| *a == 0), "{figures:?}");
}

#[test]
fn server_stack_without_rate_limit_allocates_nothing_per_call() {
    let s = ServerStack::builder("api")
        .total_budget(Duration::from_secs(2))
        .build()
        .unwrap();
    let _: &Identity = s.rate_limit();
    let allocs = allocations_ready(s.layer(ready_backend()));
    println!("server stack without rate limit: {allocs} allocations / {CALLS} calls");
    assert_eq!(allocs, 0);
}

/// `http::Request` is not free to carry: these figures are the request
/// type's own costs (extensions map, header values, the retry's copy),
/// measured and pinned so that a change shows.
#[cfg(feature = "http")]
mod http_requests {
    use super::*;

    type Req = http::Request<()>;

    type Res = http::Response<http_body_util::Full<bytes::Bytes>>;

    /// A body not yet read when the head comes back: the layers hold their
    /// permits in it until it is dropped.
    fn backend() -> impl Service<Req, Response = Res, Error = BoxError, Future: Send> + Clone {
        service_fn(|_: Req| {
            std::future::ready(Ok::<_, BoxError>(http::Response::new(
                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
            )))
        })
    }

    /// (The response is an `http::Response`; through the propagation layer
    /// its body is wrapped in a `CallBody`, which allocates nothing, and
    /// carries the bulkhead permit and the breaker's verdict until it is
    /// dropped, which allocates nothing either.)
    fn per_call<S: Service<Req, Error = BoxError>>(svc: S) -> f64 {
        per_call_of(svc, || http::Request::new(()))
    }

    /// A request with a header already, as most are: its header map has
    /// its tables, and what is left is what the layers add.
    fn with_a_header() -> Req {
        let mut req = http::Request::new(());
        req.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        req
    }

    fn per_call_of<S: Service<Req, Error = BoxError>>(mut svc: S, request: fn() -> Req) -> f64 {
        let rt = runtime();
        let _guard = rt.enter();
        let mut cx = Context::from_waker(Waker::noop());
        let mut one = |svc: &mut S| {
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let mut fut = pin!(svc.call(request()));
            assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        };
        for _ in 0..WARM_UP {
            one(&mut svc);
        }
        let (allocs, ()) = count_allocations(|| {
            for _ in 0..CALLS {
                one(&mut svc);
            }
        });
        allocs as f64 / CALLS as f64
    }

    #[test]
    fn http_client_stack_costs_are_the_request_types() {
        let c = ClientStack::builder("users")
            .total_budget(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(300))
            .propagate_deadline(|p| p)
            .build()
            .unwrap();
        let figures = [
            ("deadline", per_call(c.deadline().layer(backend()))),
            ("retry", per_call(c.retry().layer(backend()))),
            ("breaker", per_call(c.breaker().layer(backend()))),
            ("bulkhead", per_call(c.bulkhead().layer(backend()))),
            (
                "attempt timeout",
                per_call(c.attempt_timeout().layer(backend())),
            ),
            ("propagate", per_call(c.innermost().layer(backend()))),
            (
                "deadline+propagate",
                per_call(c.deadline().layer(c.innermost().layer(backend()))),
            ),
            (
                "deadline+retry",
                per_call(c.deadline().layer(c.retry().layer(backend()))),
            ),
            ("full stack", per_call(c.layer(backend()))),
        ];
        for (layer, a) in figures {
            println!("http client {layer}: {a} allocations per call");
        }
        // The stack's deadline travels by task-local, not in the request's
        // extensions (no insert, and the retry's copy of the request has
        // nothing to clone); propagation writes `grpc-timeout` and
        // `x-request-timeout-ms` into the empty header map, which makes its
        // two tables (2 per call, the request's own). The two values
        // (`300m` or `299999u`, and `300` or `299`: at most 10 bytes a
        // call) are cut from one buffer of the thread's, a new one (2
        // allocations, its bytes and its count) every 1024 bytes: at most
        // 2 per 102 calls, where a `Bytes` per value made 2 per call.
        let per_layer: Vec<f64> = figures.iter().map(|(_, a)| *a).collect();
        // (One more for a buffer begun in the warm-up.)
        let refills =
            2.0 * ((CALLS as f64 / (1024.0 / 10.0_f64).floor()).ceil() + 1.0) / CALLS as f64;
        let propagating = [6, 8];
        for (i, (layer, a)) in figures.iter().enumerate() {
            if propagating.contains(&i) {
                assert!(
                    *a >= 2.0 && *a <= 2.0 + refills,
                    "{layer}: {a} allocations per call"
                );
            } else {
                assert_eq!(*a, 0.0, "{layer} allocates nothing");
            }
        }
        assert_eq!(per_layer.len(), 9);

        // A request with a header: its map's two tables (the request's
        // own), the retry's copy of the map (two more: what a retry costs,
        // kept for a second attempt), and the values' refills.
        let own = per_call_of(backend(), with_a_header);
        let retry = per_call_of(c.retry().layer(backend()), with_a_header);
        let headed = per_call_of(c.layer(backend()), with_a_header);
        println!(
            "http client, a request with a header: {own} alone, {retry} through the retry, \
             {headed} through the stack (allocations per call)"
        );
        assert_eq!(own, 2.0);
        assert_eq!(retry, 4.0);
        assert!(headed > retry && headed <= retry + refills, "{headed}");
    }

    /// The HTTP server preset, with the caller's deadline in a header, the
    /// answer's body read to its end: one extension insert at the ingress
    /// (the deadline, for `Extension<Deadline>` in handlers) and nothing
    /// else; the server's own budget does not store a second copy when the
    /// caller's is shorter, and a first attempt is not marked.
    #[test]
    fn http_server_preset_costs_one_extension_insert() {
        let stack = seawall::stack::ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .build()
            .unwrap();
        let per_call = server_preset_per_call(stack.layer(handler()), None);
        println!("http server preset with a header deadline: {per_call} allocations per call");
        // One extension insert into an empty `http::Extensions`: its box,
        // its table and the value's box.
        assert_eq!(per_call, 3.0, "one extension insert");
    }

    /// A bulkhead per tenant adds no allocation for a tenant already in
    /// its table: a map read, the tenant's bulkhead made once.
    #[test]
    fn http_server_preset_with_tenant_bulkheads_costs_the_same() {
        let stack = seawall::stack::ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .tenant_bulkhead(
                seawall::rate_limit::HeaderKey::new(http::HeaderName::from_static("x-tenant")),
                4,
                |b| b,
            )
            .build()
            .unwrap();
        let per_call = server_preset_per_call(stack.layer(handler()), Some("acme"));
        println!("http server preset with tenant bulkheads: {per_call} allocations per call");
        assert_eq!(per_call, 3.0, "one extension insert, nothing per tenant");
        assert_eq!(stack.tenants().len(), 1);
    }

    /// In an axum `Router`, as the README puts it (`.layer(stack)` on the
    /// routes) and as `axum::serve` runs it (its state given, so its
    /// routes are made once): any layer on the routes costs axum two
    /// allocations per request (the layered route's copy and its boxed
    /// future), and one that wraps the request and response bodies two
    /// more (axum boxes each into its `Body`). The preset wraps both (to
    /// hold them to the deadline and its bulkhead permit to the answer's
    /// end); beyond that it allocates once per request: the caller's
    /// deadline in the request's extensions, which already hold the
    /// route's parameters.
    #[test]
    fn http_server_preset_in_an_axum_router_costs_one_allocation() {
        use http_body_util::BodyExt;
        let stack = seawall::stack::ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .build()
            .unwrap();
        let routes = || axum::Router::<()>::new().route("/", axum::routing::get(|| async { "ok" }));
        let alone = server_preset_per_call(routes().with_state(()), None);
        let any_layer =
            server_preset_per_call(routes().layer(Identity::new()).with_state(()), None);
        // Wraps both bodies and does nothing else.
        let wrapping = tower::ServiceBuilder::new()
            .map_response(|res: axum::response::Response| res.map(|b| b.map_err(|e| e)))
            .map_request(|req: http::Request<axum::body::Body>| req.map(|b| b.map_err(|e| e)));
        let wrapped = server_preset_per_call(routes().layer(wrapping).with_state(()), None);
        let preset = server_preset_per_call(routes().layer(stack).with_state(()), None);
        println!(
            "axum router, allocations per request: {alone} alone, {any_layer} with a layer that \
             does nothing, {wrapped} with one that wraps the bodies, {preset} with the server preset"
        );
        assert_eq!(any_layer - alone, 2.0, "axum's cost of a layer");
        assert_eq!(wrapped - any_layer, 2.0, "axum's boxes of wrapped bodies");
        assert_eq!(preset - wrapped, 1.0, "the deadline's box");
    }

    fn handler() -> impl Service<
        http::Request<seawall::body::CallBody<http_body_util::Empty<bytes::Bytes>>>,
        Response = Res,
        Error = BoxError,
        Future: Send,
    > + Clone {
        service_fn(|_: http::Request<_>| {
            std::future::ready(Ok::<_, BoxError>(http::Response::new(
                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
            )))
        })
    }

    /// Allocations per call through a server preset's service, with the
    /// caller's deadline in a header (and `x-tenant: tenant` if given), the
    /// answer's body read to its end; the request's own (its header map's
    /// tables and values), measured alone, taken off.
    fn server_preset_per_call<S, B>(mut svc: S, tenant: Option<&str>) -> f64
    where
        S: Service<
                http::Request<http_body_util::Empty<bytes::Bytes>>,
                Response = http::Response<B>,
                Error = std::convert::Infallible,
            >,
        B: http_body::Body<Error: std::fmt::Debug>,
    {
        let rt = runtime();
        let _guard = rt.enter();
        let mut cx = Context::from_waker(Waker::noop());
        let request = || {
            let mut b = http::Request::builder().header("x-request-timeout-ms", "500");
            if let Some(t) = tenant {
                b = b.header("x-tenant", t);
            }
            b.body(http_body_util::Empty::new()).unwrap()
        };
        let mut call = || {
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let mut fut = pin!(svc.call(request()));
            let Poll::Ready(Ok(res)) = fut.as_mut().poll(&mut cx) else {
                panic!("answered at once")
            };
            assert_eq!(res.status(), 200);
            let mut body = pin!(res.into_body());
            while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
                frame.unwrap();
            }
        };
        for _ in 0..WARM_UP {
            call();
        }
        let (allocs, ()) = count_allocations(|| {
            for _ in 0..CALLS {
                call();
            }
        });
        let (request_allocs, _) = count_allocations(request);
        (allocs - request_allocs * CALLS as u64) as f64 / CALLS as f64
    }
}
