//! The contenders the benches compare, shared by `stack.rs` (criterion,
//! time) and `instructions.rs` (valgrind, instructions and clock reads):
//! each layer and both stacks, seawall beside tower's built-ins and
//! tower-resilience, on a no-op service.
//!
//! The macros `per_layer!` and `full_stacks!` call `$f!(name, closure)`
//! for every contender; the caller brings `Duration`, `Layer`,
//! `ServiceBuilder` and `BoxError` into scope.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Duration;

use seawall::BoxError;
use tower::{Service, ServiceExt};

pub const BIG: u32 = 1_000_000_000;
pub const LIMIT: usize = 1_000;

pub type Noop = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, BoxError>>>;

pub fn noop() -> Noop {
    tower::service_fn((|x| std::future::ready(Ok(x))) as fn(u64) -> _)
}

/// A retry policy for tower's `Retry` that retries errors, never successes.
#[derive(Clone)]
pub struct Trivial;

impl<E> tower::retry::Policy<u64, u64, E> for Trivial {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        result.is_err().then(|| std::future::ready(()))
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// A hedging policy for tower's `Hedge` that may copy every request.
#[derive(Clone)]
pub struct TrivialHedge;

impl tower::hedge::Policy<u64> for TrivialHedge {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }

    fn can_retry(&self, _req: &u64) -> bool {
        true
    }
}

/// `iters` calls through `svc`, one at a time.
pub async fn drive<S>(svc: &mut S, iters: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..iters {
        let ready = match svc.ready().await {
            Ok(s) => s,
            Err(e) => panic!("not ready: {e:?}"),
        };
        match ready.call(black_box(i)).await {
            Ok(r) => {
                black_box(r);
            }
            Err(e) => panic!("call {i} failed: {e:?}"),
        }
    }
}

// ------------------------------------------------------------------ seawall

pub fn sw_client() -> seawall::stack::ClientStackLayer {
    seawall::stack::ClientStack::builder("client")
        .total_budget(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(300))
        .bulkhead(|b| b.max_concurrent(LIMIT))
        .build()
        .expect("client stack")
}

/// The client stack with an observer listening to every event (a counter):
/// what a stack reporting to metrics costs.
pub fn sw_client_observed() -> seawall::stack::ClientStackLayer {
    static EVENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    seawall::stack::ClientStack::builder("client")
        .total_budget(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(300))
        .bulkhead(|b| b.max_concurrent(LIMIT))
        .observer(seawall::observe::Observer::new(
            |_: &seawall::observe::Event<'_>| {
                EVENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        ))
        .build()
        .expect("client stack")
}

pub fn sw_server() -> seawall::stack::ServerStackLayer<
    tower::layer::util::Identity,
    seawall::rate_limit::RateLimitLayer,
> {
    seawall::stack::ServerStack::builder("server")
        .total_budget(Duration::from_secs(2))
        .handler_timeout(Duration::from_millis(500))
        .rate_limit(seawall::rate_limit::Quota::per_second(BIG), |r| r)
        .bulkhead(|b| b.max_concurrent(LIMIT))
        // Two threads that share the stack on two busy cores see the
        // scheduler's pauses as queueing: the adaptive limit (its minimum
        // is 1) may drop below the two calls the contended bench keeps in
        // flight and shed one. A floor of 2 keeps every measured call an
        // admitted one.
        .adaptive_limit(|l| l.limits(Some(2), None))
        .build()
        .expect("server stack")
}

// ------------------------------------------------------------------ HTTP unary calls

/// An HTTP unary call as a `u64` call (feature `http`): a `GET` with an
/// empty `Full` body through `S`, and the answer's body read to its end
/// (where the protocol presets let go of their permits).
#[cfg(feature = "http")]
pub mod http_unary {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};

    use bytes::Bytes;
    use http_body::Body;
    use http_body_util::Full;
    use pin_project_lite::pin_project;
    use seawall::BoxError;
    use tower::Service;

    pub type Req = http::Request<Full<Bytes>>;
    pub type Res = http::Response<Full<Bytes>>;

    /// The backend: a 200 with a one-chunk body, at once, whatever the
    /// request's body type.
    #[derive(Clone, Copy)]
    pub struct Backend;

    impl<B> Service<http::Request<B>> for Backend {
        type Response = Res;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Res, BoxError>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: http::Request<B>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Full::new(Bytes::from_static(
                b"ok",
            )))))
        }
    }

    pub fn backend() -> Backend {
        Backend
    }

    #[derive(Clone)]
    pub struct Unary<S>(pub S);

    impl<S, RB> Service<u64> for Unary<S>
    where
        S: Service<Req, Response = http::Response<RB>>,
        S::Error: Into<BoxError>,
        RB: Body<Data = Bytes>,
        RB::Error: Into<BoxError>,
    {
        type Response = u64;
        type Error = BoxError;
        type Future = UnaryFuture<S::Future, RB>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.0.poll_ready(cx).map_err(Into::into)
        }

        fn call(&mut self, n: u64) -> Self::Future {
            let req = http::Request::get("http://dep/").body(Full::new(Bytes::new()));
            UnaryFuture {
                state: State::Calling {
                    call: self.0.call(req.expect("a valid request")),
                },
                n,
            }
        }
    }

    pin_project! {
        #[project = StateProj]
        enum State<F, RB> {
            Calling { #[pin] call: F },
            Reading { #[pin] body: RB },
        }
    }

    pin_project! {
        pub struct UnaryFuture<F, RB> {
            #[pin]
            state: State<F, RB>,
            n: u64,
        }
    }

    impl<F, E, RB> Future for UnaryFuture<F, RB>
    where
        F: Future<Output = Result<http::Response<RB>, E>>,
        E: Into<BoxError>,
        RB: Body<Data = Bytes>,
        RB::Error: Into<BoxError>,
    {
        type Output = Result<u64, BoxError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut this = self.project();
            loop {
                match this.state.as_mut().project() {
                    StateProj::Calling { call } => {
                        let body = ready!(call.poll(cx)).map_err(Into::into)?.into_body();
                        this.state.set(State::Reading { body });
                    }
                    StateProj::Reading { mut body } => match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(e.into())),
                        None => return Poll::Ready(Ok(*this.n)),
                    },
                }
            }
        }
    }

    /// The HTTP client preset with its defaults (2 s, 500 ms).
    pub fn client() -> seawall::stack::HttpClient<Backend> {
        use tower::Layer;
        seawall::stack::ClientStack::http("dep")
            .total_budget(std::time::Duration::from_secs(2))
            .attempt_timeout(std::time::Duration::from_millis(500))
            .build()
            .expect("http client preset")
            .layer(backend())
    }
}

#[cfg(feature = "http")]
macro_rules! http_unary {
    ($f:ident) => {{
        use contenders::http_unary::{Unary, backend, client};
        $f!(@single "http_unary/bare", |_: ()| Unary(backend()));
        $f!(@single "http_unary/seawall_client_preset", |_: ()| Unary(client()));
        let server = seawall::stack::ServerStack::http("api")
            .total_budget(Duration::from_secs(2))
            .build()
            .expect("http server preset");
        $f!(@single "http_unary/seawall_server_preset", |_: ()| Unary(server.layer(backend())));
    }};
}

#[cfg(not(feature = "http"))]
macro_rules! http_unary {
    ($f:ident) => {{}};
}

// ------------------------------------------------------------------ governor

/// governor's keyed limiter in front of a service (a call's key: its number
/// modulo 1024), the peer of a keyed seawall rate limit; a refused call
/// fails at once.
#[derive(Clone)]
pub struct GovernorKeyed<S> {
    pub limiter: std::sync::Arc<governor::DefaultKeyedRateLimiter<u64>>,
    pub inner: S,
}

impl<S> Service<u64> for GovernorKeyed<S>
where
    S: Service<u64, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, x: u64) -> Self::Future {
        if self.limiter.check_key(&(x % 1024)).is_ok() {
            futures::future::Either::Left(self.inner.call(x))
        } else {
            futures::future::Either::Right(std::future::ready(Err("rate limited".into())))
        }
    }
}

// ------------------------------------------------------------------ tower-resilience

pub fn tr_timelimiter(
    d: Duration,
) -> tower_resilience::timelimiter::TimeLimiterLayer<tower_resilience::timelimiter::FixedTimeout> {
    tower_resilience::timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(d)
        .build()
}

pub fn tr_breaker() -> tower_resilience::circuitbreaker::CircuitBreakerLayer {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(100)
        .build()
        .expect("tower-resilience breaker")
}

pub fn tr_bulkhead() -> tower_resilience::bulkhead::BulkheadLayer {
    tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT)
        .build()
        .expect("tower-resilience bulkhead")
}

pub fn tr_ratelimiter() -> tower_resilience::ratelimiter::RateLimiterLayer {
    tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(BIG as usize)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::ZERO)
        .build()
        .expect("tower-resilience rate limiter")
}

// ------------------------------------------------------------------ contenders

/// Every contender, as `$f!(name, service expression)`; the expression is
/// evaluated once per benchmark (per thread, from shared layers, in the
/// contended group).
macro_rules! per_layer {
    ($f:ident) => {{
        $f!("bare", |_: ()| noop());
        // timeout
        let at = seawall::deadline::AttemptTimeoutLayer::new(Duration::from_secs(1)).unwrap();
        $f!("timeout/seawall_attempt_timeout", |_: ()| at.layer(noop()));
        let dl = seawall::deadline::DeadlineLayer::new(Duration::from_secs(1)).unwrap();
        $f!("timeout/seawall_deadline", |_: ()| dl.layer(noop()));
        $f!(@single "timeout/seawall_deadline+attempt", |_: ()| dl.layer(at.layer(noop())));
        let tt = tower::timeout::TimeoutLayer::new(Duration::from_secs(1));
        $f!("timeout/tower", |_: ()| tt.layer(noop()));
        let tl = tr_timelimiter(Duration::from_secs(1));
        $f!("timeout/tower_resilience", |_: ()| tl.layer(noop()));
        // retry
        let sr = seawall::retry::RetryLayer::new();
        $f!("retry/seawall", |_: ()| sr.layer(noop()));
        $f!("retry/tower", |_: ()| tower::retry::RetryLayer::new(Trivial).layer(noop()));
        let tr = tower_resilience::retry::RetryLayer::<u64, u64, BoxError>::builder()
            .max_attempts(3)
            .build();
        $f!("retry/tower_resilience", |_: ()| tr.layer(noop()));
        // circuit breaker (tower has none)
        // Both judged over the last 100 calls at 50 %, as tower-resilience's.
        let sb = seawall::circuit_breaker::CircuitBreakerLayer::builder()
            .window(seawall::circuit_breaker::SlidingWindow::count(100))
            .minimum_calls(100)
            .failure_rate_threshold(0.5)
            .build()
            .expect("breaker");
        $f!("breaker/seawall", |_: ()| sb.layer(noop()));
        let sbd = seawall::circuit_breaker::CircuitBreakerLayer::builder().build().expect("breaker");
        $f!("breaker/seawall_default", |_: ()| sbd.layer(noop()));
        let tb = tr_breaker();
        $f!("breaker/tower_resilience", |_: ()| tb.layer(noop()));
        // bulkhead / concurrency limit
        let sh = seawall::bulkhead::BulkheadLayer::builder()
            .max_concurrent(LIMIT)
            .build()
            .expect("bulkhead");
        $f!("bulkhead/seawall", |_: ()| sh.layer(noop()));
        let gl = tower::limit::GlobalConcurrencyLimitLayer::new(LIMIT);
        $f!("bulkhead/tower_limit_load_shed", |_: ()| {
            tower::load_shed::LoadShedLayer::new().layer(gl.layer(noop()))
        });
        let th = tr_bulkhead();
        $f!("bulkhead/tower_resilience", |_: ()| th.layer(noop()));
        // load shedding
        // A floor of 2, as the server stack's below: two threads on two
        // busy cores see the scheduler's pauses as queueing, and a limit
        // of 1 would shed one of the two calls the contended bench keeps
        // in flight (the bench counts admitted calls only).
        let sa = seawall::shed::AdaptiveLimitLayer::builder()
            .limits(Some(2), None)
            .build()
            .expect("adaptive limit");
        $f!("shed/seawall_adaptive_limit", |_: ()| sa.layer(noop()));
        // rate limit
        let sl = seawall::rate_limit::RateLimitLayer::builder(seawall::rate_limit::Quota::per_second(BIG))
            .build()
            .expect("rate limit");
        $f!("rate_limit/seawall", |_: ()| sl.layer(noop()));
        // a bucket per key (1024 keys, each call's key its number modulo
        // 1024): the key map's lookup over the global limit's check;
        // governor's keyed limiter (its `DashMap` store, its own clock) the
        // peer
        let slk = seawall::rate_limit::RateLimitLayer::builder(seawall::rate_limit::Quota::per_second(BIG))
            .keyed(|x: &u64| Some(seawall::rate_limit::Key::from_u64(*x % 1024)))
            .build()
            .expect("keyed rate limit");
        $f!("rate_limit_keyed/seawall", |_: ()| slk.layer(noop()));
        let gk = std::sync::Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(
            std::num::NonZeroU32::new(BIG).expect("nonzero"),
        )));
        $f!("rate_limit_keyed/governor", |_: ()| GovernorKeyed {
            limiter: gk.clone(),
            inner: noop(),
        });
        $f!(@single "rate_limit/tower", |_: ()| {
            tower::limit::RateLimitLayer::new(u64::from(BIG), Duration::from_secs(1)).layer(noop())
        });
        let tq = tr_ratelimiter();
        $f!("rate_limit/tower_resilience", |_: ()| tq.layer(noop()));
        // hedge: the no-op answers at once, so no copy is ever sent; the
        // cost of watching for one (and of feeding the latency estimate)
        let sg = seawall::hedge::HedgeLayer::builder().build().expect("hedge");
        $f!(@single "hedge/seawall", |_: ()| sg.layer(noop()));
        $f!(@single "hedge/tower", |_: ()| {
            tower::hedge::Hedge::new(noop(), TrivialHedge, 20, 0.95, Duration::from_secs(1))
        });
        // outlier ejection (tower has none): one endpoint, no balancer
        let se = seawall::eject::EjectionLayer::builder().build().expect("ejection");
        $f!(@single "eject/seawall", |_: ()| se.layer(noop()));
        // fallback (tower has none): every call succeeds, none falls back
        let sf = seawall::fallback::FallbackLayer::builder(seawall::fallback::fallback_fn(
            |_: seawall::observe::FallbackReason, _: Result<&u64, &BoxError>| {
                std::future::ready(Some(0u64))
            },
        ))
        .build()
        .expect("fallback");
        $f!(@single "fallback/seawall", |_: ()| sf.layer(noop()));
        // a bulkhead per key (16 keys, each call's key its number modulo
        // 16): the table's lookup over the bulkhead alone
        let sk = seawall::keyed::KeyedLayer::builder(
            |x: &u64| Some(seawall::rate_limit::Key::from_u64(*x % 16)),
            |_: &seawall::rate_limit::Key| {
                seawall::bulkhead::BulkheadLayer::builder()
                    .max_concurrent(LIMIT)
                    .build()
                    .expect("bulkhead")
            },
        )
        .build()
        .expect("keyed");
        $f!(@single "keyed/seawall_bulkhead", |_: ()| sk.layer(noop()));
    }};
}

macro_rules! full_stacks {
    ($f:ident) => {{
        // client: total timeout → retry → [breaker] → bulkhead → attempt timeout
        let sc = sw_client();
        $f!("client/seawall", |_: ()| sc.layer(noop()));
        let sco = sw_client_observed();
        $f!("client/seawall_observed", |_: ()| sco.layer(noop()));
        // The same stack's layers without its breaker: what the breaker
        // adds to the stack.
        $f!("client/seawall_without_breaker", |_: ()| {
            ServiceBuilder::new()
                .layer(sc.deadline().clone())
                .layer(sc.retry().clone())
                .layer(sc.bulkhead().clone())
                .layer(sc.attempt_timeout().clone())
                .service(noop())
        });
        $f!("client/seawall_without_adaptive_limit", |_: ()| {
            ServiceBuilder::new()
                .layer(sc.deadline().clone())
                .layer(sc.retry().clone())
                .layer(sc.breaker().clone())
                .layer(sc.bulkhead().clone())
                .layer(sc.attempt_timeout().clone())
                .service(noop())
        });
        let tcl = tower::limit::GlobalConcurrencyLimitLayer::new(LIMIT);
        $f!("client/tower", |_: ()| {
            ServiceBuilder::new()
                .timeout(Duration::from_secs(1))
                .layer(tower::retry::RetryLayer::new(Trivial))
                .load_shed()
                .layer(tcl.clone())
                .timeout(Duration::from_millis(300))
                .service(noop())
        });
        let (c1, c2, c3, c4) = (
            tr_timelimiter(Duration::from_secs(1)),
            tr_breaker(),
            tr_bulkhead(),
            tr_timelimiter(Duration::from_millis(300)),
        );
        let c_retry = tower_resilience::retry::RetryLayer::<u64, u64, _>::builder()
            .max_attempts(3)
            .build();
        $f!("client/tower_resilience", |_: ()| {
            c1.layer(c_retry.layer(c2.layer(c3.layer(c4.layer(noop())))))
        });
        // server: deadline → rate limit → shed → bulkhead → handler timeout
        let ss = sw_server();
        $f!("server/seawall", |_: ()| ss.layer(noop()));
        // The same stack with a bulkhead per tenant (every call one tenant's,
        // already in the table): what `tenant_bulkhead` adds.
        let sst = seawall::stack::ServerStack::builder("server")
            .total_budget(Duration::from_secs(2))
            .handler_timeout(Duration::from_millis(500))
            .rate_limit(seawall::rate_limit::Quota::per_second(BIG), |r| r)
            .bulkhead(|b| b.max_concurrent(LIMIT))
            .adaptive_limit(|l| l.limits(Some(2), None))
            .tenant_bulkhead(
                |_: &u64| Some(seawall::rate_limit::Key::from_u64(7)),
                LIMIT,
                |b| b,
            )
            .build()
            .expect("server stack");
        $f!("server/seawall_tenants", |_: ()| sst.layer(noop()));
        // The same stack's layers without its adaptive limit (tower's
        // limit is a fixed one): what the adaptive limit adds.
        $f!("server/seawall_without_adaptive_limit", |_: ()| {
            ServiceBuilder::new()
                .layer(ss.deadline().clone())
                .layer(ss.rate_limit().clone())
                .layer(ss.bulkhead().clone())
                .layer(ss.handler_timeout().clone())
                .service(noop())
        });
        let tsl = tower::limit::GlobalConcurrencyLimitLayer::new(LIMIT);
        $f!(@single "server/tower", |_: ()| {
            ServiceBuilder::new()
                .timeout(Duration::from_secs(2))
                .rate_limit(u64::from(BIG), Duration::from_secs(1))
                .load_shed()
                .layer(tsl.clone())
                .timeout(Duration::from_millis(500))
                .service(noop())
        });
        let (s1, s2, s3, s4) = (
            tr_timelimiter(Duration::from_secs(2)),
            tr_ratelimiter(),
            tr_bulkhead(),
            tr_timelimiter(Duration::from_millis(500)),
        );
        $f!("server/tower_resilience", |_: ()| {
            s1.layer(s2.layer(s3.layer(s4.layer(noop()))))
        });
    }};
}
