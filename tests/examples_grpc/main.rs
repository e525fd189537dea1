//! The `tonic_server` and `tonic_client` examples' stacks, run for real: a
//! tonic server on loopback behind `examples/common/grpc_server_stack.rs`,
//! called with a plain tonic `Channel` and through the client stack of
//! `examples/common/grpc_client_stack.rs`. Rejections are forced by state (a
//! quota of one, handlers held on a semaphore or hanging, budgets far shorter
//! than a handler that never answers), never by a race against the clock.
#![cfg(all(
    feature = "tonic",
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "rate-limit",
    feature = "shed",
    feature = "bulkhead"
))]

#[path = "../../examples/common/greeter.rs"]
mod greeter;
#[path = "../../examples/common/grpc_client_stack.rs"]
mod grpc_client_stack;
#[path = "../../examples/common/grpc_server_stack.rs"]
mod grpc_server_stack;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall::circuit_breaker::CircuitBreakerHandle;
use seawall::deadline::{self, Deadline};
use seawall::observe::{EventKind, State};
use seawall::observe::{RecordedEvent, Recorder};
use seawall::rate_limit::Quota;
use seawall::{Observer, RejectionKind};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;
use tonic::{Code, Status};

use greeter::{GreeterServer, HelloReply, HelloRequest};
use grpc_client_stack::ClientConfig;
use grpc_server_stack::ServerConfig;

/// The gRPC client stack of `tonic_client`, boxed.
type BoxedClient = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<seawall::body::CallBody<tonic::body::Body>>,
    Status,
>;

/// What the handler saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    /// The `x-seawall-attempt` header the client stack writes on retries
    /// (a first attempt carries none).
    attempt: Option<String>,
    /// The deadline budget on arrival (`seawall::deadline::remaining()`).
    budget: Option<Duration>,
}

/// The test handler. By request name: `hold` waits until released,
/// `hang-once` never answers the first time, `hang…` never answers, `down`
/// fails with UNAVAILABLE; any other name gets the example's `say_hello`.
struct Probe {
    seen: Mutex<Vec<Seen>>,
    entered_tx: mpsc::UnboundedSender<()>,
    release: Semaphore,
    hung_once: AtomicBool,
}

impl Probe {
    async fn handle(&self, req: tonic::Request<HelloRequest>) -> Result<HelloReply, Status> {
        // The call's deadline is in the request's extensions; the task-local
        // one is never later (the handler timeout can make it earlier).
        let request_deadline = req.extensions().get::<Deadline>().copied();
        let budget = deadline::remaining();
        let ok = match (deadline::current(), request_deadline) {
            (Some(local), Some(request)) => local <= request,
            (local, request) => local.is_none() && request.is_none(),
        };
        if !ok {
            return Err(Status::internal(
                "task-local deadline later than the call's",
            ));
        }
        let name = req.get_ref().name.clone();
        self.seen.lock().unwrap().push(Seen {
            name: name.clone(),
            attempt: req
                .metadata()
                .get("x-seawall-attempt")
                .map(|v| v.to_str().unwrap().to_owned()),
            budget,
        });
        let _ = self.entered_tx.send(());
        match name.as_str() {
            "hold" => {
                if let Ok(permit) = self.release.acquire().await {
                    permit.forget();
                }
            }
            "hang-once" if !self.hung_once.swap(true, Ordering::SeqCst) => {
                std::future::pending::<()>().await
            }
            "hang-once" => {}
            n if n.starts_with("hang") => std::future::pending::<()>().await,
            "busy" => return Err(Status::unavailable("try again later")),
            "down" => return Err(Status::internal("database down")),
            _ => {}
        }
        greeter::say_hello(req).await
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct Server {
    channel: Channel,
    probe: Arc<Probe>,
    entered_rx: mpsc::UnboundedReceiver<()>,
    recorder: Recorder,
}

async fn start(cfg: ServerConfig) -> Server {
    let recorder = Recorder::new();
    let cfg = ServerConfig {
        observer: Observer::new(recorder.clone()),
        ..cfg
    };
    let (entered_tx, entered_rx) = mpsc::unbounded_channel();
    let probe = Arc::new(Probe {
        seen: Mutex::new(Vec::new()),
        entered_tx,
        release: Semaphore::new(0),
        hung_once: AtomicBool::new(false),
    });
    let p = probe.clone();
    let greeter = GreeterServer::new(move |req| {
        let p = p.clone();
        async move { p.handle(req).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = grpc_server_stack::serve(listener, &cfg, greeter, std::future::pending())
        .expect("valid configuration");
    tokio::spawn(server);
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Server {
        channel,
        probe,
        entered_rx,
        recorder,
    }
}

fn hello(name: &str) -> tonic::Request<HelloRequest> {
    tonic::Request::new(HelloRequest {
        name: name.to_owned(),
        work_ms: 0,
    })
}

fn pushback(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn rejections(recorder: &Recorder) -> Vec<(String, RejectionKind)> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e: RecordedEvent| match e.kind {
            EventKind::Rejected { reason, .. } => Some((e.name, reason)),
            _ => None,
        })
        .collect()
}

impl Server {
    /// A plain tonic call, no client stack.
    async fn call(&self, req: tonic::Request<HelloRequest>) -> Result<HelloReply, Status> {
        greeter::call_say_hello(self.channel.clone(), req).await
    }

    /// Sends a `hold` call on its own task; returns once the handler runs
    /// (and so holds its bulkhead and adaptive-limit slots).
    async fn hold_one(&mut self) -> tokio::task::JoinHandle<Result<HelloReply, Status>> {
        let channel = self.channel.clone();
        let task = tokio::spawn(greeter::call_say_hello(channel, hello("hold")));
        self.entered_rx.recv().await.expect("the handler runs");
        task
    }

    /// The client stack of `tonic_client` around this server's channel.
    fn client(&self, cfg: ClientConfig) -> (BoxedClient, CircuitBreakerHandle) {
        let (svc, breaker) =
            grpc_client_stack::protect(self.channel.clone(), &cfg).expect("valid configuration");
        (tower::util::BoxCloneSyncService::new(svc), breaker)
    }
}

#[tokio::test]
async fn handler_sees_the_propagated_deadline() {
    let server = start(ServerConfig::default()).await;

    // A plain client's grpc-timeout, minus the server's 5 ms margin.
    let mut req = hello("plain");
    req.set_timeout(Duration::from_millis(1500));
    let reply = server.call(req).await.unwrap();
    assert_eq!(reply.message, "hello, plain");
    let deadline = reply.deadline_ms.expect("a deadline");
    assert!(deadline <= 1495 && deadline > 0, "{deadline}");
    // Under the 2 s handler timeout, the call's deadline is what binds.
    assert!(reply.budget_ms.unwrap() <= deadline);
    assert!(reply.left_ms.unwrap() <= reply.budget_ms.unwrap());

    // No grpc-timeout: the server's own 10 s budget for the call, 2 s for
    // the handler run.
    let reply = server.call(hello("no timeout")).await.unwrap();
    let deadline = reply.deadline_ms.expect("a deadline");
    assert!(deadline <= 10_000 && deadline > 2000, "{deadline}");
    let budget = reply.budget_ms.expect("a deadline");
    assert!(budget <= 2000 && budget > 0, "{budget}");

    // Through the client stack (2 s per call, 600 ms per attempt): the
    // server sees the attempt's time left, minus its margin.
    let (client, _) = server.client(ClientConfig::default());
    let reply = greeter::call_say_hello(client, hello("stack"))
        .await
        .unwrap();
    let deadline = reply.deadline_ms.expect("a deadline");
    assert!(deadline <= 595 && deadline > 0, "{deadline}");

    let seen = server.probe.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].name, "stack");
    assert_eq!(seen[2].attempt, None);
    assert!(seen[2].budget.unwrap() <= Duration::from_millis(595));
    assert_eq!(seen[0].attempt, None);
    assert!(rejections(&server.recorder).is_empty());
}

/// `grpc-retry-pushback-ms` of a 1-per-minute quota, `elapsed` after the
/// first call: 60 000 ms minus what has passed, rounded up.
fn expected_pushback(elapsed: Duration) -> std::ops::RangeInclusive<u64> {
    // The time to the next cell, stretched by up to half.
    60_000u64.saturating_sub(elapsed.as_millis() as u64 + 1)..=90_000
}

#[tokio::test]
async fn rate_limited_is_resource_exhausted_with_pushback() {
    let server = start(ServerConfig {
        rate: Quota::per_minute(1),
        ..ServerConfig::default()
    })
    .await;

    let start = tokio::time::Instant::now();
    server.call(hello("first")).await.unwrap();
    for _ in 0..3 {
        let status = server.call(hello("again")).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(status.message(), "rate limited");
        let wait = pushback(&status).expect("pushback");
        assert!(
            expected_pushback(start.elapsed()).contains(&wait),
            "pushback {wait} ms after {:?}",
            start.elapsed()
        );
    }
    assert_eq!(server.probe.seen().len(), 1);
    assert_eq!(
        rejections(&server.recorder),
        vec![("greeter.rate_limit".to_owned(), RejectionKind::RateLimited); 3]
    );
}

#[tokio::test]
async fn full_bulkhead_is_unavailable() {
    let mut server = start(ServerConfig {
        max_concurrent: 1,
        max_queue: 0,
        ..ServerConfig::default()
    })
    .await;

    let held = server.hold_one().await;
    let status = server.call(hello("second")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "bulkhead full");
    // max(max_wait, 100 ms) stretched by [1, 1.5): the client is told when to come back.
    let ms = pushback(&status).expect("a full bulkhead sends pushback");
    assert!((100..=150).contains(&ms), "{ms} (rounded up to whole ms)");

    server.probe.release.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().message, "hello, hold");
    assert_eq!(
        server.call(hello("third")).await.unwrap().message,
        "hello, third"
    );
    assert_eq!(
        rejections(&server.recorder),
        vec![("greeter.bulkhead".to_owned(), RejectionKind::BulkheadFull)]
    );
}

#[tokio::test]
async fn adaptive_limit_is_unavailable() {
    let mut server = start(ServerConfig {
        concurrency: (1, 1, 1),
        ..ServerConfig::default()
    })
    .await;

    let held = server.hold_one().await;
    let mut sheddable = hello("sheddable");
    sheddable
        .metadata_mut()
        .insert("x-seawall-criticality", "sheddable".parse().unwrap());
    for req in [hello("second"), sheddable] {
        let status = server.call(req).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(status.message(), "overloaded");
        // The expected service time, at least 100 ms, stretched by [1, 1.5).
        let ms = pushback(&status).expect("a shed call is told when to come back");
        assert!((100..=150).contains(&ms), "{ms}");
    }

    server.probe.release.add_permits(1);
    held.await.unwrap().unwrap();
    server.call(hello("after")).await.unwrap();
    assert_eq!(
        rejections(&server.recorder),
        vec![("greeter.limit".to_owned(), RejectionKind::Overloaded); 2]
    );
}

#[tokio::test]
async fn server_cap_is_deadline_exceeded() {
    let server = start(ServerConfig {
        max_budget: Duration::from_millis(50),
        handler_timeout: Duration::from_millis(50),
        ..ServerConfig::default()
    })
    .await;

    // The server's own 50 ms cap, on a call without grpc-timeout.
    let status = server.call(hello("hang-cap")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "deadline exceeded");

    // A client asking for a minute gets the server's 50 ms too.
    let mut req = hello("hang-client");
    req.set_timeout(Duration::from_secs(60));
    let status = server.call(req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "deadline exceeded");

    let rejected = rejections(&server.recorder);
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected
            .iter()
            .all(|(_, kind)| *kind == RejectionKind::DeadlineExceeded)
    );
    // Whichever handler ran got at most the server's 50 ms (minus the 5 ms
    // margin when the cap replaced the client's timeout).
    for s in server.probe.seen() {
        let most = if s.name == "hang-client" { 45 } else { 50 };
        assert!(s.budget.unwrap() <= Duration::from_millis(most), "{s:?}");
    }
}

#[tokio::test]
async fn client_retries_unavailable_and_its_breaker_opens_on_failures() {
    let server = start(ServerConfig::default()).await;
    let recorder = Recorder::new();
    let (client, breaker) = server.client(ClientConfig {
        total: Duration::from_secs(30),
        per_try: Duration::from_secs(10),
        max_attempts: 3,
        breaker_window: 3,
        minimum_calls: 3,
        open_duration: Duration::from_secs(30),
        max_concurrent: 8,
        observer: Observer::new(recorder.clone()),
    });

    // Three attempts, all UNAVAILABLE: the call fails with the server's
    // status. The server answered "not now": busy, not counted.
    let status = greeter::call_say_hello(client.clone(), hello("busy"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "try again later");
    let attempts: Vec<_> = server.probe.seen().into_iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, [None, Some("2".into()), Some("3".into())]);
    assert_eq!(
        recorder.count(|e| matches!(e.kind, EventKind::RetryScheduled { .. })),
        2
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0, "busy is not counted");

    // INTERNAL: a failure, not retried. Three out of three: the breaker is
    // open, calls fail at once and never reach the server.
    for _ in 0..3 {
        let status = greeter::call_say_hello(client.clone(), hello("down"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
    }
    assert_eq!(breaker.state(), State::Open);
    for name in ["down", "healthy"] {
        let start = tokio::time::Instant::now();
        let status = greeter::call_say_hello(client.clone(), hello(name))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "circuit open");
        let wait = pushback(&status).expect("pushback");
        // The 30 s left (less what this test took), stretched by the
        // breaker's jitter: callers refused together come back spread out.
        assert!((20_000..45_000).contains(&wait), "{wait}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(server.probe.seen().len(), 6);
}

#[tokio::test]
async fn client_budget_is_propagated_and_enforced() {
    let server = start(ServerConfig::default()).await;
    let (client, _) = server.client(ClientConfig {
        total: Duration::from_secs(1),
        per_try: Duration::from_secs(1),
        max_attempts: 1,
        ..ClientConfig::default()
    });

    let status = greeter::call_say_hello(client, hello("hang"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // One attempt. The handler got the
    // client's 1 s (less what had passed), minus the server's 5 ms margin.
    let seen = server.probe.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].attempt, None);
    let budget = seen[0].budget.expect("a deadline");
    assert!(budget <= Duration::from_millis(995), "{budget:?}");
}

#[tokio::test]
async fn timed_out_attempt_is_retried_within_the_total_budget() {
    let server = start(ServerConfig::default()).await;
    let recorder = Recorder::new();
    let (client, breaker) = server.client(ClientConfig {
        total: Duration::from_secs(30),
        per_try: Duration::from_millis(500),
        observer: Observer::new(recorder.clone()),
        ..ClientConfig::default()
    });

    // The first attempt hangs until its 500 ms run out; the second answers.
    let reply = greeter::call_say_hello(client, hello("hang-once"))
        .await
        .unwrap();
    assert_eq!(reply.message, "hello, hang-once");

    let seen = server.probe.seen();
    let attempts: Vec<_> = seen.iter().map(|s| s.attempt.clone()).collect();
    assert_eq!(attempts, [None, Some("2".into())]);
    // Each attempt advertised its own 500 ms, not the 30 s of the call.
    for s in &seen {
        assert!(s.budget.unwrap() <= Duration::from_millis(495), "{s:?}");
    }
    assert_eq!(
        recorder.count(|e| matches!(e.kind, EventKind::RetryScheduled { .. })),
        1
    );
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test]
async fn client_sees_deadline_exceeded_whichever_timer_fires_first() {
    // No server margin: the server's deadline, tonic's timers on both sides
    // and the client stack's own timers all expire at about the same time.
    let server = start(ServerConfig {
        margin: Duration::ZERO,
        ..ServerConfig::default()
    })
    .await;
    let recorder = Recorder::new();
    let (client, breaker) = server.client(ClientConfig {
        total: Duration::from_millis(300),
        per_try: Duration::from_millis(300),
        max_attempts: 1,
        observer: Observer::new(recorder.clone()),
        ..ClientConfig::default()
    });

    for _ in 0..3 {
        let status = greeter::call_say_hello(client.clone(), hello("hang"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    // Three failures are below the breaker's 10-call minimum.
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        recorder
            .count(|e| matches!(e.kind, EventKind::Rejected { .. }) && e.name == "greeter.breaker"),
        0
    );
}
