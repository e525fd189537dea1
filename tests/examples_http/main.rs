//! The `axum_server` example's stack, run for real: an axum server on
//! loopback behind `examples/common/http_stack.rs`, called with a hyper
//! client. Every rejection is forced by state (a quota of one, a handler held
//! on a semaphore, a zero or short budget), never by a race against the clock.
#![cfg(all(
    feature = "axum",
    feature = "deadline",
    feature = "rate-limit",
    feature = "shed",
    feature = "bulkhead"
))]

#[path = "../../examples/common/http_stack.rs"]
mod http_stack;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::observe::{EventKind, RecordedEvent, Recorder};
use seawall::rate_limit::Quota;
use seawall::{Observer, RejectionKind};
use tokio::sync::{Semaphore, mpsc};

use http_stack::ServerConfig;

/// A `/hold` handler: tells the test it is running, then waits until the test
/// releases it.
struct Hold {
    entered: AtomicUsize,
    entered_tx: mpsc::UnboundedSender<()>,
    release: Semaphore,
}

impl Hold {
    async fn run(&self) -> &'static str {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let _ = self.entered_tx.send(());
        if let Ok(permit) = self.release.acquire().await {
            permit.forget();
        }
        "released\n"
    }
}

struct Server {
    addr: SocketAddr,
    hold: Arc<Hold>,
    entered_rx: mpsc::UnboundedReceiver<()>,
    recorder: Recorder,
    client: HttpClient,
}

/// Starts the example's routes plus `/hold` behind the example's stack, with
/// `cfg` and a recorder as the observer.
async fn start(cfg: ServerConfig) -> Server {
    let recorder = Recorder::new();
    let cfg = ServerConfig {
        observer: Observer::new(recorder.clone()),
        ..cfg
    };
    let (entered_tx, entered_rx) = mpsc::unbounded_channel();
    let hold = Arc::new(Hold {
        entered: AtomicUsize::new(0),
        entered_tx,
        release: Semaphore::new(0),
    });
    let h = hold.clone();
    let routes = http_stack::routes().route(
        "/hold",
        get(move || {
            let h = h.clone();
            async move { h.run().await }
        }),
    );
    let app = http_stack::protect(routes, &cfg).expect("valid configuration");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http_stack::serve(listener, app, std::future::pending()));
    Server {
        addr,
        hold,
        entered_rx,
        recorder,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// A `key=value` number from the `/work` body.
    fn field(&self, key: &str) -> u64 {
        self.body
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.body))
            .parse()
            .unwrap()
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn fetch(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

impl Server {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        fetch(&self.client, self.addr, path, headers).await
    }

    /// Sends `GET /hold` on its own task and returns once the handler runs
    /// (and so holds its bulkhead and adaptive-limit slots).
    async fn hold_one(&mut self) -> tokio::task::JoinHandle<Answer> {
        let (addr, client) = (self.addr, self.client.clone());
        let task = tokio::spawn(async move { fetch(&client, addr, "/hold", &[]).await });
        self.entered_rx.recv().await.expect("the handler runs");
        task
    }

    fn rejections(&self) -> Vec<(String, RejectionKind, &'static str)> {
        self.recorder
            .events()
            .into_iter()
            .filter_map(|e: RecordedEvent| match e.kind {
                EventKind::Rejected { reason, detail, .. } => Some((e.name, reason, detail)),
                _ => None,
            })
            .collect()
    }
}

fn rejection(
    name: &str,
    reason: RejectionKind,
    detail: &'static str,
) -> (String, RejectionKind, &'static str) {
    (name.to_owned(), reason, detail)
}

#[tokio::test]
async fn handler_sees_the_clients_budget_minus_the_margin() {
    let server = start(ServerConfig::default()).await;

    let ok = server
        .get("/work?ms=0", &[("x-request-timeout-ms", "5000")])
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    // 5000 ms asked, 5 ms margin: the handler never sees more than 4995 ms
    // until the request's deadline, and one run may take 2 s at most.
    let deadline = ok.field("deadline_ms");
    assert!(deadline <= 4995 && deadline > 2000, "{deadline}");
    let budget = ok.field("budget_ms");
    assert!(budget <= 2000 && budget > 0, "{budget}");
    assert!(ok.field("left_ms") <= budget);
    assert_eq!(ok.field("worked_ms"), 0);
    // The per-client quota (50/s, burst 20) is advertised on admitted responses.
    assert_eq!(ok.header("ratelimit-policy"), Some("\"default\";q=20;w=1"));
    assert_eq!(ok.header("retry-after"), None);

    // grpc-timeout is read too.
    let ok = server.get("/work", &[("grpc-timeout", "300m")]).await;
    assert_eq!(ok.status, 200);
    assert!(ok.field("deadline_ms") <= 295);
    assert!(ok.field("budget_ms") <= ok.field("deadline_ms"));

    // Asking for more than the server's 10 s cap gets the cap (minus the margin).
    let capped = server
        .get("/work", &[("x-request-timeout-ms", "600000")])
        .await;
    assert_eq!(capped.status, 200);
    assert!(capped.field("deadline_ms") <= 9995);
    assert!(capped.field("deadline_ms") > 5000);

    // No header, or an unreadable one: the server's own 10 s budget.
    for headers in [&[][..], &[("x-request-timeout-ms", "banana")][..]] {
        let own = server.get("/work", headers).await;
        assert_eq!(own.status, 200);
        assert!(own.field("deadline_ms") <= 10_000);
        assert!(own.field("deadline_ms") > 5000);
        assert!(own.field("budget_ms") <= 2000);
    }
    assert!(server.rejections().is_empty(), "{:?}", server.rejections());
    assert_eq!(
        server.recorder.count(|e| matches!(
            e.kind,
            EventKind::InputIgnored {
                input: "x-request-timeout-ms",
                ..
            }
        )),
        1, // malformed (a deadline cut to the server's own budget is no bad input)
    );
}

/// `Retry-After` of a 1-per-minute quota, asked `elapsed` after the first
/// request: 60 s rounded up, unless the machine took over a second.
fn expected_retry_after(elapsed: Duration) -> std::ops::RangeInclusive<u64> {
    // The time to the next cell, stretched by up to half.
    if elapsed < Duration::from_secs(1) {
        60..=90
    } else {
        60u64.saturating_sub(elapsed.as_secs() + 1)..=90
    }
}

#[tokio::test]
async fn burst_past_the_rate_limit_is_429_with_retry_after() {
    let server = start(ServerConfig {
        rate: Quota::per_minute(1),
        ..ServerConfig::default()
    })
    .await;

    let start = tokio::time::Instant::now();
    let first = server.get("/", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "hello\n");
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"default\";q=1;w=60")
    );
    let remaining = first.header("ratelimit").unwrap();
    assert!(remaining.starts_with("\"default\";r=0;t="), "{remaining}");

    for _ in 0..3 {
        let limited = server.get("/work?ms=0", &[]).await;
        assert_eq!(limited.status, 429, "{limited:?}");
        assert_eq!(limited.body, "rate limited");
        let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
        assert!(
            expected_retry_after(start.elapsed()).contains(&retry_after),
            "retry-after {retry_after} after {:?}",
            start.elapsed()
        );
        // Refused requests carry no quota headers of their own.
        assert_eq!(limited.header("ratelimit"), None);
    }
    assert_eq!(
        server.rejections(),
        vec![rejection("api.rate_limit", RejectionKind::RateLimited, "limit"); 3]
    );
}

#[tokio::test]
async fn full_bulkhead_is_503_until_the_handler_finishes() {
    let mut server = start(ServerConfig {
        max_concurrent: 1,
        max_queue: 0,
        ..ServerConfig::default()
    })
    .await;

    let held = server.hold_one().await;
    let full = server.get("/", &[]).await;
    assert_eq!(full.status, 503, "{full:?}");
    assert_eq!(full.body, "bulkhead full");
    // A hint under a second reads 1 (rounded up, never 0).
    assert_eq!(full.header("retry-after"), Some("1"));

    server.hold.release.add_permits(1);
    let done = held.await.unwrap();
    assert_eq!((done.status, done.body.as_str()), (200, "released\n"));
    // The slot is free again.
    assert_eq!(server.get("/", &[]).await.status, 200);

    assert_eq!(server.hold.entered.load(Ordering::SeqCst), 1);
    assert_eq!(
        server.rejections(),
        vec![rejection(
            "api.bulkhead",
            RejectionKind::BulkheadFull,
            "queue_full"
        )]
    );
}

#[tokio::test]
async fn adaptive_limit_sheds_at_its_limit() {
    let mut server = start(ServerConfig {
        concurrency: (1, 1, 1),
        ..ServerConfig::default()
    })
    .await;

    let held = server.hold_one().await;
    for headers in [&[][..], &[("x-seawall-criticality", "sheddable")][..]] {
        let shed = server.get("/work?ms=0", headers).await;
        assert_eq!(shed.status, 503, "{shed:?}");
        assert_eq!(shed.body, "overloaded");
        assert_eq!(shed.header("retry-after"), Some("1"));
        // The limit's hint, 100 ms stretched by [1, 1.5), in milliseconds
        // beside it.
        let ms: u64 = shed.header("retry-after-ms").unwrap().parse().unwrap();
        assert!((100..=150).contains(&ms), "{ms}");
    }

    server.hold.release.add_permits(1);
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(server.get("/", &[]).await.status, 200);

    let shed = server.rejections();
    assert_eq!(shed.len(), 2, "{shed:?}");
    assert!(
        shed.iter()
            .all(|(name, reason, _)| name == "api.limit" && *reason == RejectionKind::Overloaded),
        "{shed:?}"
    );
}

#[tokio::test]
async fn budget_running_out_mid_call_is_504() {
    let server = start(ServerConfig {
        margin: Duration::ZERO,
        max_concurrent: 1,
        max_queue: 0,
        concurrency: (1, 1, 1),
        ..ServerConfig::default()
    })
    .await;

    // The handler never finishes; the client's 50 ms do.
    let late = server.get("/hold", &[("x-request-timeout-ms", "50")]).await;
    assert_eq!(late.status, 504, "{late:?}");
    assert_eq!(late.body, "deadline exceeded");
    assert_eq!(late.header("retry-after"), None);

    let rejected = server.rejections();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].1, RejectionKind::DeadlineExceeded);
    assert!(
        ["api.deadline", "api.handler"].contains(&rejected[0].0.as_str()),
        "{rejected:?}"
    );
    // Nothing leaked: the bulkhead and adaptive-limit slots (one each) of the
    // abandoned call are free again.
    assert_eq!(server.get("/", &[]).await.status, 200);
}

#[tokio::test]
async fn expired_on_arrival_is_504_without_calling_the_handler() {
    let server = start(ServerConfig::default()).await;
    for headers in [("x-request-timeout-ms", "0"), ("grpc-timeout", "0n")] {
        let late = server.get("/hold", &[headers]).await;
        assert_eq!(late.status, 504, "{headers:?}: {late:?}");
        assert_eq!(late.body, "deadline exceeded");
    }
    assert_eq!(server.hold.entered.load(Ordering::SeqCst), 0);
    assert_eq!(
        server.rejections(),
        vec![
            rejection(
                "api.ingress",
                RejectionKind::DeadlineExceeded,
                "expired_on_arrival"
            );
            2
        ]
    );
}

#[tokio::test]
async fn slow_handler_hits_the_attempt_timeout() {
    let server = start(ServerConfig {
        handler_timeout: Duration::from_millis(50),
        ..ServerConfig::default()
    })
    .await;

    let slow = server.get("/hold", &[]).await;
    assert_eq!(slow.status, 504, "{slow:?}");
    assert_eq!(slow.body, "attempt timed out");
    assert_eq!(
        server.rejections(),
        vec![rejection(
            "api.handler",
            RejectionKind::AttemptTimeout,
            "timed_out"
        )]
    );
}

#[tokio::test]
async fn export_route_has_its_own_tighter_policy() {
    let server = start(ServerConfig::default()).await;
    // Three exports at once: the route's own bulkhead runs two, answers the
    // third at once with 503 and a Retry-After; the server's stack let all in.
    let calls = (0..3).map(|_| server.get("/export?ms=1000", &[]));
    let mut answers = futures::future::join_all(calls).await;
    answers.sort_by_key(|a| a.status);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![200, 200, 503], "{answers:?}");
    assert_eq!(answers[2].body, "bulkhead full");
    assert_eq!(answers[2].header("retry-after"), Some("1"));
    assert_eq!(answers[0].body, "exported in 1000 ms\n");
    // The refusal came from the route's own layer.
    assert!(
        server
            .rejections()
            .iter()
            .all(|(name, _, _)| !name.starts_with("api.")),
        "{:?}",
        server.rejections()
    );
}
