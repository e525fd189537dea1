#![cfg(feature = "redis")]
//! The Redis backend against a real `redis-server` started by the test on a
//! free loopback port. These tests run in real time: the limiter's clock is
//! Redis server time (`TIME` inside the script), which paused tokio time
//! cannot drive.
//!
//! Without the `redis-server` binary the tests are skipped with a message —
//! unless `CI` is set, where its absence is a failure.

use std::convert::Infallible;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::ConnectionManager;
use seawall::BoxError;
use seawall::error::{RejectionKind, rejection_of};
use seawall::observe::{EventKind, Observer, Recorder, State};
use seawall::rate_limit::{FailurePolicy, Key, Quota, RateLimitLayer, RedisBackend};
use tower::{Layer, Service, ServiceExt};

const REDIS_SERVER: &str = "redis-server";

struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server, or returns `None` (with a message) when the binary is
    /// absent and `CI` is unset.
    fn start() -> Option<RedisServer> {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` (see [`RedisServer::start`]).
    fn start_on(port: u16) -> Option<RedisServer> {
        Self::start_with(port, &[])
    }

    /// Starts a server on `port` with `extra` arguments.
    fn start_with(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let found = Command::new(REDIS_SERVER)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server not found, and CI is set: the Redis tests must run in CI");
            }
            eprintln!("SKIPPED: redis-server not found on PATH (set CI=1 to make this a failure)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("seawall-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = Command::new(REDIS_SERVER)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = RedisServer { child, port, dir };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on port {port} within 5 s");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn connection(&self) -> ConnectionManager {
        let client = redis::Client::open(self.url()).unwrap();
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        client
            .get_connection_manager_with_config(config)
            .await
            .unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn echo() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = std::future::Ready<Result<u64, Infallible>>,
> + Clone {
    tower::service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x)))
}

async fn call<S>(svc: &mut S, x: u64) -> Result<u64, BoxError>
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    // A generous safety bound: a call never hangs, whatever Redis does.
    tokio::time::timeout(Duration::from_secs(5), async {
        svc.ready().await?.call(x).await
    })
    .await
    .expect("a rate-limited call must never hang")
}

async fn admitted<S>(svc: &mut S, n: u64) -> u64
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    let mut ok = 0;
    for i in 0..n {
        if call(svc, i).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

/// Holds every client's writes and scripts (a rate-limit check is a
/// script) for up to 10 s, from a connection of its own: in force once
/// this returns. Reads, such as `CLIENT UNPAUSE`, still go through.
async fn hold_scripts(server: &RedisServer) -> ConnectionManager {
    let mut admin = server.connection().await;
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async::<()>(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    admin
}

/// Ends [`hold_scripts`].
async fn release_scripts(admin: &mut ConnectionManager) {
    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async::<()>(admin)
        .await
        .expect("CLIENT UNPAUSE");
}

async fn info_field(conn: &mut ConnectionManager, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap();
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            // "total_commands_processed:123" or "cmdstat_evalsha:calls=5,usec=…"
            let rest = rest.strip_prefix("calls=").unwrap_or(rest);
            let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            return n.parse().unwrap();
        }
    }
    0
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_quota() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let quota = Quota::per_minute(100);

    // Two "processes": two layers built independently, each with its own connection.
    let a = RateLimitLayer::builder(quota)
        .name("api")
        .redis(
            RedisBackend::new(server.connection().await)
                .prefix("shared")
                .timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let b = RateLimitLayer::builder(quota)
        .name("api")
        .redis(
            RedisBackend::new(server.connection().await)
                .prefix("shared")
                .timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let (mut sa, mut sb) = (a.layer(echo()), b.layer(echo()));
    let mut together = 0;
    let mut first_wait = None;
    for i in 0..200 {
        for svc in [&mut sa, &mut sb] {
            match call(svc, i).await {
                Ok(_) => together += 1,
                Err(e) => {
                    let r = rejection_of(&e).unwrap();
                    assert_eq!(r.kind(), RejectionKind::RateLimited);
                    first_wait.get_or_insert(r.retry_after().unwrap());
                }
            }
        }
    }
    // Two local limiters with the same quota admit twice as much.
    let la = RateLimitLayer::builder(quota).build().unwrap();
    let lb = RateLimitLayer::builder(quota).build().unwrap();
    let (mut la, mut lb) = (la.layer(echo()), lb.layer(echo()));
    let local = admitted(&mut la, 200).await + admitted(&mut lb, 200).await;

    println!(
        "400 requests over two instances: redis-shared admitted {together}, two local limiters admitted {local}"
    );
    assert!(
        (95..=105).contains(&together),
        "shared quota 100 ±5%, admitted {together}"
    );
    assert!(
        (190..=210).contains(&local),
        "two local limiters: 2 × 100, admitted {local}"
    );
    let w = first_wait.unwrap();
    assert!(
        w > Duration::ZERO && w < Duration::from_millis(900),
        "retry_after {w:?} within one period, stretched by up to half"
    );
}

#[tokio::test]
async fn keyed_limits_share_across_instances_and_keys_expire() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let quota = Quota::per_second(5);
    let build = |conn| {
        RateLimitLayer::builder(quota)
            .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
            .name("keyed")
            .redis(RedisBackend::new(conn).timeout(Duration::from_secs(1)))
            .build()
            .unwrap()
    };
    let a = build(server.connection().await);
    let b = build(server.connection().await);
    let (mut sa, mut sb) = (a.layer(echo()), b.layer(echo()));
    let mut noisy = 0;
    for i in 0..10 {
        noisy +=
            u64::from(call(&mut sa, i).await.is_ok()) + u64::from(call(&mut sb, i).await.is_ok());
    }
    let mut other = 0;
    for i in 0..5 {
        other += u64::from(call(&mut sa, 7000 + i).await.is_ok());
    }
    assert!(
        (5..=6).contains(&noisy),
        "tenant 0 shares 5 across both instances, got {noisy}"
    );
    assert_eq!(other, 5, "tenant 7 is untouched");

    // Redis memory stays bounded: each key expires with its burst window (1 s).
    let mut conn = server.connection().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(b"seawall:keyed:n:\0\0\0\0\0\0\0\x07".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 1000,
        "key TTL {ttl} ms within the 1 s window"
    );
}

/// A Redis backend's timeout and probe interval are checked when the
/// limiter is built: a timeout too long to add to the clock, none at all,
/// or a probe on every request are refused, saying which.
#[tokio::test]
async fn redis_settings_are_checked_when_built() {
    let backend = || RedisBackend::connect("redis://127.0.0.1:1/");
    let build = |b: RedisBackend| {
        RateLimitLayer::builder(Quota::per_second(5))
            .redis(b)
            .build()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = build(backend().await.unwrap().timeout(Duration::MAX)).unwrap_err();
    assert!(err.contains("redis timeout must be in"), "{err}");
    let err = build(backend().await.unwrap().timeout(Duration::ZERO)).unwrap_err();
    assert!(err.contains("redis timeout must be in"), "{err}");
    let err = build(backend().await.unwrap().probe_interval(Duration::ZERO)).unwrap_err();
    assert!(
        err.contains("probe_interval must be in 1ms..=3600s"),
        "{err}"
    );
    let err = build(backend().await.unwrap().probe_interval(Duration::MAX)).unwrap_err();
    assert!(err.contains("probe_interval must be in"), "{err}");
    assert!(build(backend().await.unwrap().timeout(Duration::from_secs(60))).is_ok());
}

/// A bucket stored an hour ahead of Redis's clock (a clock stepped back, a
/// failover to a server whose clock is behind) owes one burst window, not
/// an hour: its next request is told to come back within the window.
#[tokio::test]
async fn a_bucket_ahead_of_the_clock_owes_at_most_one_window() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .keyed(|x: &u64| Some(Key::from_u64(*x)))
        .name("stepped")
        .redis(RedisBackend::new(server.connection().await).timeout(Duration::from_secs(1)))
        .build()
        .unwrap();
    let mut conn = server.connection().await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let an_hour_ahead = secs * 1_000_000 + micros + 3_600_000_000;
    let _: () = redis::cmd("SET")
        .arg(b"seawall:stepped:n:\0\0\0\0\0\0\0\x07".as_slice())
        .arg(an_hour_ahead.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut svc = layer.layer(echo());
    let err = call(&mut svc, 7).await.unwrap_err();
    let wait = seawall::error::rejection_of(&err)
        .and_then(|r| r.retry_after())
        .expect("a wait");
    assert!(
        wait <= Duration::from_secs(1),
        "told to come back in {wait:?}, more than the 1 s window"
    );
    // Coming back then, it is served: what it owes is stored capped.
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    assert!(
        call(&mut svc, 7).await.is_ok(),
        "served after the wait it was told"
    );
    // Another key is untouched.
    assert!(call(&mut svc, 8).await.is_ok());
}

#[tokio::test]
async fn one_redis_round_trip_per_request() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = RateLimitLayer::builder(Quota::per_second(1000))
        .redis(RedisBackend::new(server.connection().await).timeout(Duration::from_secs(1)))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let mut probe = server.connection().await;
    // The first call sends the script itself (one EVAL, which caches it),
    // not its hash first (EVALSHA → NOSCRIPT → EVAL: two round trips).
    assert!(call(&mut svc, 0).await.is_ok());
    assert_eq!(
        (
            info_field(&mut probe, "commandstats", "cmdstat_eval").await,
            info_field(&mut probe, "commandstats", "cmdstat_evalsha").await
        ),
        (1, 0),
        "one EVAL, no EVALSHA"
    );

    let script_cmds = ["cmdstat_time", "cmdstat_get", "cmdstat_set"];
    let mut inner_before = 0;
    for c in script_cmds {
        inner_before += info_field(&mut probe, "commandstats", c).await;
    }
    let evalsha_before = info_field(&mut probe, "commandstats", "cmdstat_evalsha").await;
    let eval_before = info_field(&mut probe, "commandstats", "cmdstat_eval").await;
    let before = info_field(&mut probe, "stats", "total_commands_processed").await;

    const N: u64 = 50;
    assert_eq!(admitted(&mut svc, N).await, N);

    let after = info_field(&mut probe, "stats", "total_commands_processed").await;
    let evalsha_after = info_field(&mut probe, "commandstats", "cmdstat_evalsha").await;
    let eval_after = info_field(&mut probe, "commandstats", "cmdstat_eval").await;
    let mut inner_after = 0;
    for c in script_cmds {
        inner_after += info_field(&mut probe, "commandstats", c).await;
    }
    // total_commands_processed also counts the commands the script runs
    // (TIME, GET, SET) and the INFO that read `before` (a command is counted
    // once it has run, so that INFO shows up in `after` only).
    let inner = inner_after - inner_before;
    let total = after - before - 1;
    let client_commands = total - inner;
    println!(
        "{N} requests: {total} commands processed, of which {inner} inside the script; \
         {client_commands} sent by the client ({} EVALSHA, {} EVAL)",
        evalsha_after - evalsha_before,
        eval_after - eval_before
    );
    assert_eq!(evalsha_after - evalsha_before, N, "one EVALSHA per request");
    assert_eq!(eval_after - eval_before, 0, "the script stays cached");
    assert_eq!(inner, 3 * N, "TIME, GET, SET inside each script run");
    assert_eq!(client_commands, N, "exactly one round trip per request");
}

async fn killed_mid_test(policy: FailurePolicy) -> (Recorder, Vec<Result<u64, BoxError>>) {
    let mut server = RedisServer::start().expect("checked by the caller");
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(10))
        .name("fleet")
        .observer(Observer::new(recorder.clone()))
        .redis(
            RedisBackend::new(server.connection().await)
                .timeout(Duration::from_millis(100))
                .on_failure(policy),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    // Healthy: two requests through Redis.
    assert!(call(&mut svc, 0).await.is_ok());
    assert!(call(&mut svc, 1).await.is_ok());
    server.kill();
    let mut results = Vec::new();
    for i in 0..20 {
        results.push(call(&mut svc, i).await);
    }
    (recorder, results)
}

fn assert_degraded_once(recorder: &Recorder) {
    assert!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::BackendError {
                backend: "redis",
                ..
            }
        )) >= 1
    );
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::StateChanged {
                from: State::Healthy,
                to: State::Degraded,
                ..
            }
        )),
        1
    );
}

#[tokio::test]
async fn redis_down_fail_open_admits() {
    if !redis_available() {
        return;
    }
    let (recorder, results) = killed_mid_test(FailurePolicy::FailOpen).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        20,
        "fail open admits all 20"
    );
    assert_degraded_once(&recorder);
}

#[tokio::test]
async fn redis_down_fail_closed_rejects() {
    if !redis_available() {
        return;
    }
    let (recorder, results) = killed_mid_test(FailurePolicy::FailClosed).await;
    for r in &results {
        let e = r.as_ref().unwrap_err();
        let v = rejection_of(e).unwrap();
        assert_eq!(v.kind(), RejectionKind::RateLimited);
        assert_eq!(v.retry_after(), None);
    }
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::Rejected {
                detail: "backend_unavailable",
                ..
            }
        )),
        20
    );
    assert_degraded_once(&recorder);
}

#[tokio::test]
async fn redis_down_falls_back_to_a_local_share_of_the_quota() {
    if !redis_available() {
        return;
    }
    // 10 per minute over 2 instances: the local fallback admits 5 per 2 minutes.
    let (recorder, results) = killed_mid_test(FailurePolicy::Local { instances: 2 }).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    assert_degraded_once(&recorder);
}

/// The default policy: with Redis gone, each instance limits on its own
/// with the whole quota. Two instances, a quota of 10 a minute per key: a
/// key over its quota, its requests spread over both, gets at most the
/// quota from each (20 of 60, where failing open gave it all 60); a key
/// within its quota is never refused; the layers say they are degraded.
#[tokio::test]
async fn by_default_each_instance_limits_alone_with_the_whole_quota_while_redis_is_down() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let build = |conn| {
        RateLimitLayer::builder(Quota::per_minute(10))
            .keyed(|x: &u64| Some(Key::from_u64(*x / 1000)))
            .name("fleet")
            .redis(RedisBackend::new(conn).timeout(Duration::from_millis(100)))
            .build()
            .unwrap()
    };
    let (a, b) = (
        build(server.connection().await),
        build(server.connection().await),
    );
    let (mut sa, mut sb) = (a.layer(echo()), b.layer(echo()));
    // Healthy: one quota for both instances.
    let mut big = 0;
    for i in 0..8 {
        big +=
            u64::from(call(&mut sa, i).await.is_ok()) + u64::from(call(&mut sb, i).await.is_ok());
    }
    assert_eq!(big, 10, "one quota across both instances");
    assert_eq!(a.backend_state(), Some(State::Healthy));
    server.kill();
    let (mut big, mut small) = (0, 0);
    for i in 0..30 {
        big +=
            u64::from(call(&mut sa, i).await.is_ok()) + u64::from(call(&mut sb, i).await.is_ok());
    }
    for i in 0..5 {
        small += u64::from(call(&mut sa, 5000 + i).await.is_ok())
            + u64::from(call(&mut sb, 5000 + i).await.is_ok());
    }
    assert_eq!(big, 20, "the quota from each of two instances, of 60 sent");
    assert_eq!(small, 10, "a key within its quota is not refused");
    assert_eq!(a.backend_state(), Some(State::Degraded));
    assert_eq!(b.backend_state(), Some(State::Degraded));
}

fn redis_available() -> bool {
    // Start (and stop) a server once to apply the skip-or-fail rule.
    RedisServer::start().is_some()
}

#[tokio::test]
async fn back_to_healthy_when_redis_returns() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let port = server.port;
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(1000))
        .name("fleet")
        .observer(Observer::new(recorder.clone()))
        .redis(
            RedisBackend::new(server.connection().await)
                .timeout(Duration::from_millis(100))
                .probe_interval(Duration::from_millis(50))
                .on_failure(FailurePolicy::FailClosed),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(call(&mut svc, 0).await.is_ok());
    server.kill();
    assert!(
        call(&mut svc, 1).await.is_err(),
        "fail closed while Redis is down"
    );
    drop(server);
    let _server = RedisServer::start_on(port).expect("restart on the same port");
    // Probes go to Redis every 50 ms; the connection manager reconnects.
    let mut recovered = false;
    for i in 0..100 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if call(&mut svc, i).await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "admitted through Redis again");
    let changes: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::StateChanged { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (State::Healthy, State::Degraded),
            (State::Degraded, State::Healthy)
        ]
    );
}

#[tokio::test]
async fn slow_redis_times_out_and_follows_the_policy() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(1000))
        .observer(Observer::new(recorder.clone()))
        .redis(
            RedisBackend::new(server.connection().await)
                .timeout(Duration::from_millis(100))
                .on_failure(FailurePolicy::FailOpen),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(call(&mut svc, 0).await.is_ok());
    // Redis holds every check from now on.
    let mut admin = hold_scripts(&server).await;
    let started = tokio::time::Instant::now();
    assert!(
        call(&mut svc, 1).await.is_ok(),
        "fail open after the 100 ms timeout"
    );
    let waited = started.elapsed();
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::BackendError {
                backend: "redis",
                cause: "timeout"
            }
        )),
        1
    );
    println!("slow redis: answered by the failure policy after {waited:?} (timeout 100 ms)");
    release_scripts(&mut admin).await;
}

/// In the server stack, every wait below the deadline ends by it (the
/// deadline runs no timer of its own): a Redis round trip that outlasts
/// the request's budget ends at the budget with `DeadlineExceeded` from the
/// rate limit, and Redis is not marked unhealthy for it.
#[cfg(all(feature = "deadline", feature = "shed", feature = "bulkhead"))]
#[tokio::test]
async fn the_server_stack_deadline_ends_a_slow_redis_round_trip() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let recorder = Recorder::new();
    let backend = RedisBackend::new(server.connection().await)
        .timeout(Duration::from_secs(2))
        .on_failure(FailurePolicy::FailOpen);
    let stack = seawall::stack::ServerStack::builder("api")
        .total_budget(Duration::from_millis(100))
        .observer(Observer::new(recorder.clone()))
        .rate_limit(Quota::per_minute(1000), |r| r.redis(backend))
        .build()
        .unwrap();
    let mut svc = stack.layer(echo());
    assert_eq!(
        call(&mut svc, 7).await.unwrap(),
        7,
        "Redis answers: admitted"
    );
    // Redis holds every check from now on.
    let mut admin = hold_scripts(&server).await;
    let err = call(&mut svc, 1).await.unwrap_err();
    let r = rejection_of(&err).expect("a rejection");
    assert_eq!(r.kind(), RejectionKind::DeadlineExceeded, "{err}");
    assert_eq!(r.name(), "api.rate_limit", "{err}");
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::Rejected {
                reason: RejectionKind::DeadlineExceeded,
                detail: "deadline_in_backend",
                ..
            }
        )),
        1
    );
    // Cut by the request's budget (100 ms), not by the backend's timeout
    // (2 s): no backend error, no degraded state.
    assert_eq!(
        recorder.count(|e| matches!(e.kind, EventKind::BackendError { .. })),
        0
    );
    release_scripts(&mut admin).await;
    assert_eq!(call(&mut svc, 8).await.unwrap(), 8, "Redis answers again");
}

/// A hung Redis under budgets shorter than its timeout: a request is cut by
/// its own deadline, and its call to Redis goes on apart until Redis's own
/// timeout (100 ms here; budgets of 60 ms): then the limiter is degraded,
/// the next requests follow the policy (fail open) at once instead of each
/// spending its budget on Redis, and a probe once Redis answers again
/// makes it healthy. One request is enough: serial requests (or a
/// cluster's slots, each seeing a request now and then) never overlap.
#[cfg(all(feature = "deadline", feature = "shed", feature = "bulkhead"))]
#[tokio::test]
async fn a_hung_redis_is_judged_by_its_own_timeout_under_budgets_shorter_than_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let recorder = Recorder::new();
    let backend = RedisBackend::new(server.connection().await)
        .timeout(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(200));
    let stack = seawall::stack::ServerStack::builder("api")
        .total_budget(Duration::from_millis(60))
        .observer(Observer::new(recorder.clone()))
        .rate_limit(Quota::per_minute(1000), |r| r.redis(backend))
        .build()
        .unwrap();
    let mut svc = stack.layer(echo());
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7, "Redis answers");
    let timeouts = |r: &Recorder| {
        r.count(|e| {
            matches!(
                e.kind,
                EventKind::BackendError {
                    backend: "redis",
                    cause: "timeout"
                }
            )
        })
    };
    let mut admin = hold_scripts(&server).await;
    // One request, cut by its 60 ms budget: its call to Redis goes on apart
    // and is judged when Redis's own 100 ms timeout runs out, 40 ms later.
    let t0 = tokio::time::Instant::now();
    let err = call(&mut svc, 1).await.unwrap_err();
    let r = rejection_of(&err).expect("a rejection");
    assert_eq!(r.kind(), RejectionKind::DeadlineExceeded, "{err}");
    assert_eq!(r.name(), "api.rate_limit", "{err}");
    assert_eq!(timeouts(&recorder), 0, "not judged by the request's budget");
    tokio::time::sleep_until(t0 + Duration::from_millis(130)).await;
    assert_eq!(timeouts(&recorder), 1, "judged by Redis's own timeout");
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::StateChanged {
                to: State::Degraded,
                ..
            }
        )),
        1
    );
    // Redis still holds every script: admitted by the policy without
    // asking it (a request that asked would be cut by its budget).
    for x in 3..8 {
        assert_eq!(call(&mut svc, x).await.unwrap(), x, "fail open at once");
    }
    release_scripts(&mut admin).await;
    // The next probe (due 200 ms after the judgement) finds Redis again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(call(&mut svc, 9).await.unwrap(), 9);
    assert_eq!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::StateChanged {
                from: State::Degraded,
                to: State::Healthy,
                ..
            }
        )),
        1,
        "healthy again after one probe"
    );
}

/// A hung Redis whose callers give up before its timeout, by a timer of
/// their own (no deadline the limiter sees): the dropped request's call
/// goes on apart and is judged when Redis's own timeout (100 ms) runs out;
/// the limiter is degraded and the next request follows the policy at
/// once. (Dropped calls were never judged: the limiter stayed healthy,
/// every request waiting on Redis until its caller gave up.)
#[tokio::test]
async fn a_hung_redis_is_judged_when_its_callers_give_up_first() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(1000))
        .observer(Observer::new(recorder.clone()))
        .redis(
            RedisBackend::new(server.connection().await)
                .timeout(Duration::from_millis(100))
                .probe_interval(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7, "Redis answers");
    let timeouts = |r: &Recorder| {
        r.count(|e| {
            matches!(
                e.kind,
                EventKind::BackendError {
                    backend: "redis",
                    cause: "timeout"
                }
            )
        })
    };
    let mut admin = hold_scripts(&server).await;
    // The caller gives up after 30 ms and drops its request.
    let t0 = tokio::time::Instant::now();
    let pending = svc.ready().await.unwrap().call(1);
    let gave_up = tokio::time::timeout(Duration::from_millis(30), pending).await;
    assert!(gave_up.is_err(), "Redis holds the call: the caller gave up");
    assert_eq!(timeouts(&recorder), 0, "not judged by the caller's timer");
    tokio::time::sleep_until(t0 + Duration::from_millis(150)).await;
    assert_eq!(timeouts(&recorder), 1, "judged by Redis's own timeout");
    assert_eq!(
        state_changes(&recorder),
        vec![(State::Healthy, State::Degraded)]
    );
    // Degraded: failing open at once, without asking Redis.
    let t1 = tokio::time::Instant::now();
    assert_eq!(call(&mut svc, 2).await.unwrap(), 2);
    assert!(
        t1.elapsed() < Duration::from_millis(50),
        "followed the policy at once: {:?}",
        t1.elapsed()
    );
    release_scripts(&mut admin).await;
}

#[tokio::test]
async fn wait_mode_through_redis_waits_for_the_shared_cells() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = RateLimitLayer::builder(Quota::per_second(20).burst(2))
        .wait(Duration::from_secs(1))
        .redis(RedisBackend::new(server.connection().await).timeout(Duration::from_secs(1)))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let started = tokio::time::Instant::now();
    // A burst of 2, then one cell every 50 ms: 10 requests need about 400 ms
    // of waiting, each wait told by Redis and well inside the 1 s maximum.
    assert_eq!(admitted(&mut svc, 10).await, 10);
    let took = started.elapsed();
    println!("redis wait mode: 10 requests at 20/s (burst 2) took {took:?}");
    assert!(
        took >= Duration::from_millis(390),
        "the requests did wait: {took:?}"
    );
}

// ---------------------------------------------------------------- weighted cost

/// Through Redis, a request costs its cells too: two instances share one
/// burst of 10 cells; a 6-cell request then a 6-cell one from the other
/// instance: the second waits for the 2 cells it lacks; above the burst,
/// refused at once without a round trip.
#[tokio::test]
async fn weighted_costs_through_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let quota = Quota::per_second(10);
    let build = |conn| {
        RateLimitLayer::builder(quota)
            .name("weighted")
            .redis(RedisBackend::new(conn).timeout(Duration::from_secs(1)))
            .cost(|n: &u64| *n as u32)
            .build()
            .unwrap()
    };
    let a = build(server.connection().await);
    let b = build(server.connection().await);
    let (mut sa, mut sb) = (a.layer(echo()), b.layer(echo()));
    assert!(call(&mut sa, 6).await.is_ok());
    let err = call(&mut sb, 6).await.unwrap_err();
    let wait = rejection_of(&err).unwrap().retry_after().unwrap();
    assert!(
        wait > Duration::from_millis(100) && wait < Duration::from_millis(300),
        "the 2 missing cells take about 200 ms, stretched by up to half: {wait:?}"
    );
    assert!(call(&mut sb, 4).await.is_ok(), "the 4 cells left");
    let err = call(&mut sa, 11).await.unwrap_err();
    let r = rejection_of(&err).unwrap();
    assert_eq!(
        (r.kind(), r.retry_after()),
        (RejectionKind::RateLimited, None)
    );
}

// ---------------------------------------------------------------- cluster

/// A Redis Cluster of 3 primaries and 3 replicas on free loopback ports
/// (each port and its bus port, +10000), made with `redis-cli --cluster
/// create`.
struct Cluster {
    nodes: Vec<RedisServer>,
}

/// A free port whose cluster bus port (+10000) is free too.
/// A free loopback port, never one handed out before in this process: the
/// tests run at once, and one may start its server on a port a while after
/// it picked it (a Redis that comes back), while the kernel, which saw the
/// port free, gives it to another test's cluster node.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn free_cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port < 55_000
            && !taken.contains(&port)
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl Cluster {
    fn start() -> Option<Cluster> {
        redis_available().then_some(())?;
        Some(Self::start_on(&Self::free_ports()))
    }

    /// Six free ports for a cluster's nodes.
    fn free_ports() -> Vec<u16> {
        let mut ports = Vec::new();
        for _ in 0..6 {
            let p = free_cluster_port(&ports);
            ports.push(p);
        }
        ports
    }

    fn start_on(ports: &[u16]) -> Cluster {
        let nodes: Vec<RedisServer> = ports
            .iter()
            .map(|&p| {
                RedisServer::start_with(
                    p,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-require-full-coverage",
                        "no",
                        // Replicas sync at once (Redis 7 waits 5 s by
                        // default): a replica that never synced does not
                        // take over.
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                )
                .expect("redis-server")
            })
            .collect();
        // On a busy machine a node may not answer the first time: a few
        // tries, bounded.
        let mut tries = 0;
        let out = loop {
            let mut create = Command::new("redis-cli");
            create.arg("--cluster").arg("create");
            for p in ports {
                create.arg(format!("127.0.0.1:{p}"));
            }
            let out = create
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .output()
                .expect("redis-cli --cluster create");
            tries += 1;
            if out.status.success() || tries == 5 {
                break out;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert!(
            out.status.success(),
            "cluster create failed after {tries} tries: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes };
        cluster.wait_until_ok(Duration::from_secs(10));
        cluster
    }

    /// Waits until every live node says `cluster_state:ok` and every
    /// replica is in sync with its primary.
    fn wait_until_ok(&self, within: Duration) {
        let start = std::time::Instant::now();
        let says = |port: u16, args: &[&str], what: &str| {
            Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(what))
        };
        while start.elapsed() < within {
            let ok = self.nodes.iter().all(|n| {
                says(n.port, &["cluster", "info"], "cluster_state:ok")
                    && (says(n.port, &["info", "replication"], "role:master")
                        || says(n.port, &["info", "replication"], "master_link_status:up"))
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster was not ok within {within:?}");
    }

    fn client(&self, timeout: Duration) -> redis::cluster::ClusterClient {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        cluster_client(&ports, timeout)
    }

    /// The port of the primary holding `key`'s slot.
    fn primary_of(&self, key: &[u8]) -> u16 {
        let port = self.nodes[0].port.to_string();
        let slot = key_slot(key);
        let out = Command::new("redis-cli")
            .args(["-p", &port, "cluster", "nodes"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        let addr = f[1].split('@').next().unwrap();
                        return addr.rsplit(':').next().unwrap().parse().unwrap();
                    }
                }
            }
        }
        panic!("no primary for slot {slot}");
    }

    fn kill(&mut self, port: u16) {
        for n in &mut self.nodes {
            if n.port == port {
                n.kill();
            }
        }
    }
}

/// A cluster client for the nodes on `ports` (listening or not).
fn cluster_client(ports: &[u16], timeout: Duration) -> redis::cluster::ClusterClient {
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    // Short retry waits and a connection timeout well under the
    // limiter's (as `RedisBackend::cluster` advises).
    redis::cluster::ClusterClient::builder(urls)
        .connection_timeout(timeout / 5)
        .response_timeout(timeout)
        .min_retry_wait(1)
        .max_retry_wait(10)
        .build()
        .unwrap()
}

/// The cluster slot of `key` (no hash tag): CRC16-XMODEM modulo 16384.
fn key_slot(key: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in key {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[test]
fn key_slots_match_redis() {
    // From the Redis Cluster specification: "123456789" has CRC16 0x31C3.
    assert_eq!(key_slot(b"123456789"), 0x31C3);
}

/// Two limiter instances on a real 3-primary cluster hold one fleet-wide
/// quota per key (keys spread over the primaries); then the primary of one
/// key is killed mid-run: a third limiter's keys, spread over every slot,
/// probe once per degraded range of 64 slots, not once per slot; while key
/// 50's slot has no primary, the local-share policy decides and no request
/// waits longer than the backend timeout; once its replica is promoted,
/// the shared quota holds again.
#[tokio::test]
async fn a_redis_cluster_holds_one_quota_and_survives_a_failover() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let timeout = Duration::from_millis(100);
    let quota = Quota::per_minute(30);
    let recorder = Recorder::new();
    let build = |backend: RedisBackend, recorder: &Recorder| {
        RateLimitLayer::builder(quota)
            .name("fleet")
            .observer(Observer::new(recorder.clone()))
            .keyed(|x: &u64| Some(Key::from_u64(*x % 100)))
            .redis(
                backend
                    .timeout(timeout)
                    .probe_interval(Duration::from_millis(200))
                    .on_failure(FailurePolicy::Local { instances: 2 }),
            )
            .build()
            .unwrap()
    };
    let backend = || RedisBackend::cluster(cluster.client(timeout));
    let a = build(backend().await, &recorder);
    let b = build(backend().await, &recorder);
    let (mut sa, mut sb) = (a.layer(echo()), b.layer(echo()));

    // Before: keys 0..6 (spread over the primaries), 30 requests each per
    // instance: the fleet admits 30 per key.
    let mut before = 0;
    for key in 0..6u64 {
        for i in 0..30 {
            before += u64::from(call(&mut sa, key + 100 * i).await.is_ok());
            before += u64::from(call(&mut sb, key + 100 * i).await.is_ok());
        }
    }
    let before_ratio = before as f64 / (6.0 * 30.0);
    println!("before the failover: admitted {before} of a fleet-wide 6 x 30 ({before_ratio:.2})");
    assert!(
        (0.95..=1.1).contains(&before_ratio),
        "one quota per key: {before}"
    );

    // A third limiter, its keys spread over every slot.
    let spread_rec = Recorder::new();
    let spread = RateLimitLayer::builder(quota)
        .name("spread")
        .observer(Observer::new(spread_rec.clone()))
        .keyed(|x: &u64| Some(Key::from_u64(*x)))
        .redis(
            backend()
                .await
                .timeout(timeout)
                .probe_interval(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let burst = || {
        futures::future::join_all((0..600u64).map(|k| {
            let mut s = spread.layer(echo());
            async move { call(&mut s, k).await }
        }))
    };
    let probes = || {
        spread_rec.count(|e| {
            matches!(
                e.kind,
                EventKind::BackendError {
                    backend: "redis",
                    ..
                }
            )
        })
    };

    // Kill the primary of key 50's slot, mid-run.
    let mut key50 = b"seawall:fleet:n:".to_vec();
    key50.extend_from_slice(&50u64.to_be_bytes());
    let victim = cluster.primary_of(&key50);
    cluster.kill(victim);

    // 600 keys at once, in about 590 slots: those that fail (the dead
    // primary's, and any the cluster client could not serve meanwhile)
    // degrade their ranges of 64 slots. Once their probes are due, 600
    // again: one probe per degraded range, 256 at most, not one per slot.
    burst().await;
    let first = probes();
    tokio::time::sleep(Duration::from_millis(250)).await;
    burst().await;
    let second = probes() - first;
    println!("during the failover: {first} keys failed, then {second} probes");
    assert!(first >= 100, "the dead primary's keys fail: {first}");
    assert!(
        (1..=256).contains(&second),
        "one probe per degraded range: {second}"
    );
    let mut slowest = Duration::ZERO;
    let mut during = 0;
    for i in 0..40 {
        let start = std::time::Instant::now();
        during += u64::from(call(&mut sa, 50 + 100 * i).await.is_ok());
        slowest = slowest.max(start.elapsed());
    }
    println!(
        "during the failover: key 50 admitted {during} of 40 locally, slowest request {slowest:?}"
    );
    assert!(
        slowest < timeout + Duration::from_millis(50),
        "no request waits past the backend timeout: {slowest:?}"
    );
    // The local share of 30 a minute over 2 instances: 15.
    assert_eq!(during, 15, "the local share while the slot has no primary");
    assert!(
        recorder.count(|e| matches!(
            e.kind,
            EventKind::StateChanged {
                to: State::Degraded,
                ..
            }
        )) >= 1
    );

    // Meanwhile the keys of the other primaries stay on Redis (health is
    // kept per slot): one fleet-wide quota each.
    let mut others = 0;
    let mut counted = 0;
    for key in 60..80u64 {
        let mut k = b"seawall:fleet:n:".to_vec();
        k.extend_from_slice(&key.to_be_bytes());
        if cluster.primary_of(&k) == victim {
            continue;
        }
        counted += 1;
        for i in 0..30 {
            others += u64::from(call(&mut sa, key + 100 * i).await.is_ok());
            others += u64::from(call(&mut sb, key + 100 * i).await.is_ok());
        }
        if counted == 3 {
            break;
        }
    }
    println!("during the failover: keys on the other primaries admitted {others} of 3 x 30");
    assert!(
        (88..=100).contains(&others),
        "one quota per key on the healthy primaries: {others}"
    );

    // The replica takes over (node timeout 1 s); the next probe of that
    // slot connects anew and finds it: healthy again, one quota.
    cluster.nodes.retain(|n| n.port != victim);
    cluster.wait_until_ok(Duration::from_secs(15));
    let healthy = std::time::Instant::now();
    let to = |state: State| {
        recorder.count(|e| matches!(e.kind, EventKind::StateChanged { to, .. } if to == state))
    };
    while to(State::Healthy) < to(State::Degraded) {
        // Requests for key 50 probe its slot.
        let _ = call(&mut sa, 50).await;
        let _ = call(&mut sb, 50).await;
        assert!(
            healthy.elapsed() < Duration::from_secs(15),
            "every degraded limiter healthy again within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "healthy again {:?} after the cluster said ok",
        healthy.elapsed()
    );
    // Keys 50..56 (key 50 on the promoted primary; in Redis, all fresh).
    let mut after = 0;
    for key in 50..56u64 {
        for i in 0..30 {
            after += u64::from(call(&mut sa, key + 100 * i).await.is_ok());
            after += u64::from(call(&mut sb, key + 100 * i).await.is_ok());
        }
    }
    let after_ratio = after as f64 / (6.0 * 30.0);
    println!("after the failover: admitted {after} of a fleet-wide 6 x 30 ({after_ratio:.2})");
    assert!(
        (0.95..=1.1).contains(&after_ratio),
        "one quota per key again: {after}"
    );
}

/// A cluster that cannot be reached when the service starts does not stop
/// it: the limiter starts degraded (the local share decides, within the
/// timeout), connects in the background, and is healthy (one fleet quota)
/// once the cluster is up.
#[tokio::test]
async fn a_cluster_down_at_start_does_not_stop_the_service() {
    if !redis_available() {
        return;
    }
    let ports = Cluster::free_ports();
    let timeout = Duration::from_millis(100);
    let recorder = Recorder::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(30))
        .name("early")
        .observer(Observer::new(recorder.clone()))
        .redis(
            RedisBackend::cluster(cluster_client(&ports, timeout))
                .await
                .timeout(timeout)
                .probe_interval(Duration::from_millis(200))
                .on_failure(FailurePolicy::Local { instances: 2 }),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let mut early = 0;
    for i in 0..40 {
        let start = std::time::Instant::now();
        early += u64::from(call(&mut svc, i).await.is_ok());
        assert!(start.elapsed() < timeout + Duration::from_millis(50));
    }
    assert_eq!(early, 15, "the local share of 30 over 2 instances");

    let _cluster = Cluster::start_on(&ports);
    let up = std::time::Instant::now();
    let healthy = || {
        recorder.count(|e| {
            matches!(
                e.kind,
                EventKind::StateChanged {
                    to: State::Healthy,
                    ..
                }
            )
        })
    };
    while healthy() == 0 {
        let _ = call(&mut svc, 1000).await;
        assert!(up.elapsed() < Duration::from_secs(15), "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh key through Redis: the fleet quota, 30.
    let mut later = 0;
    for i in 0..40 {
        later += u64::from(call(&mut svc, 7 + 1000 * i).await.is_ok());
    }
    println!(
        "cluster down at start: {early} of 40 by the local share; connected {:?} after it came up; then {later} of 40",
        up.elapsed()
    );
    assert!(
        (28..=31).contains(&later),
        "the fleet quota through Redis: {later}"
    );
}

/// The state changes a recorder saw, in order.
fn state_changes(recorder: &Recorder) -> Vec<(State, State)> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::StateChanged { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect()
}

/// Calls (fail-closed, so that Redis decides every admission) every 60 ms
/// until one is admitted through Redis; how many rounds that took.
async fn rounds_until_admitted<S>(svc: &mut S, most: u64) -> Option<u64>
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    for i in 0..most {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if call(svc, i).await.is_ok() {
            return Some(i + 1);
        }
    }
    None
}

/// `RedisBackend::connect`: the service starts while Redis is down (the
/// limiter degraded, its policy applied), and uses Redis as soon as it is
/// up; after Redis was down for 3 s and restarts, within a few reconnect
/// waits of 100 ms at most. (The `redis` crate's default connection backs off up to 3.2 s: an
/// outside trial saw a restarted Redis used again only 4.5 s after it came
/// back, every tenant unlimited meanwhile.)
#[tokio::test]
async fn connect_starts_with_redis_down_and_follows_a_restart() {
    if !redis_available() {
        return;
    }
    let port = free_port();
    let recorder = Recorder::new();
    let backend = RedisBackend::connect(&format!("redis://127.0.0.1:{port}/"))
        .await
        .expect("no connection is made yet")
        .probe_interval(Duration::from_millis(50))
        .on_failure(FailurePolicy::FailClosed);
    let layer = RateLimitLayer::builder(Quota::per_minute(1000))
        .observer(Observer::new(recorder.clone()))
        .redis(backend)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(call(&mut svc, 0).await.is_err(), "Redis down: fail closed");
    assert_eq!(
        state_changes(&recorder),
        vec![(State::Healthy, State::Degraded)]
    );
    let mut server = RedisServer::start_on(port).unwrap();
    let up = rounds_until_admitted(&mut svc, 30).await;
    assert!(up.is_some(), "Redis used once it is up");
    server.kill();
    drop(server);
    // Down for 3 s, called all along.
    for i in 0..50 {
        assert!(call(&mut svc, i).await.is_err(), "Redis down again");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let _server = RedisServer::start_on(port).unwrap();
    let back = rounds_until_admitted(&mut svc, 30).await;
    println!("Redis used {up:?} and {back:?} rounds of 60 ms after it came up");
    assert!(back.is_some_and(|n| n <= 10), "{back:?} rounds");
    assert_eq!(
        state_changes(&recorder),
        vec![
            (State::Healthy, State::Degraded),
            (State::Degraded, State::Healthy),
            (State::Healthy, State::Degraded),
            (State::Degraded, State::Healthy)
        ]
    );
}

/// With the default probe interval (1 s), a Redis restarted after the
/// connection's own reconnects gave up is used again as soon as the first
/// probe after the restart has connected anew, not one probe interval
/// later: that probe fails on the connection that lost Redis, its new
/// connection is made in the background, and the next request probes on
/// it. Redis comes back 600 ms after a failed probe; the next probe is due
/// 400 ms after that. An outside trial saw the limiter healthy again 1.2 to
/// 1.4 s after a restart (here, 1.4 s), every tenant unlimited meanwhile.
#[tokio::test]
async fn a_restarted_redis_is_used_again_by_the_first_probe_after_it() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start().unwrap();
    let port = server.port;
    let recorder = Recorder::new();
    let backend = RedisBackend::connect(&server.url())
        .await
        .unwrap()
        .on_failure(FailurePolicy::FailClosed);
    let layer = RateLimitLayer::builder(Quota::per_second(10_000))
        .observer(Observer::new(recorder.clone()))
        .redis(backend)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert!(call(&mut svc, 0).await.is_ok(), "Redis up");
    server.kill();
    drop(server);
    let errors = |r: &Recorder| r.count(|e| matches!(e.kind, EventKind::BackendError { .. }));
    // Down for 2.5 s (the connection's reconnects given up), called every
    // 20 ms; then up again 600 ms after a failed probe.
    let down = tokio::time::Instant::now();
    let mut seen = 0;
    let mut failed_probe_at = down;
    while down.elapsed() < Duration::from_millis(2_500)
        || failed_probe_at.elapsed() < Duration::from_millis(100)
    {
        assert!(call(&mut svc, 1).await.is_err(), "Redis down: fail closed");
        let now_seen = errors(&recorder);
        if now_seen > seen {
            (seen, failed_probe_at) = (now_seen, tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep_until(failed_probe_at + Duration::from_millis(600)).await;
    let _server = RedisServer::start_on(port).unwrap();
    let restarted = tokio::time::Instant::now();
    let mut back = None;
    while restarted.elapsed() < Duration::from_secs(3) {
        if call(&mut svc, 2).await.is_ok() {
            back = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("Redis used again {back:?} after its restart");
    let back = back.expect("Redis used again within 3 s");
    assert!(
        back < Duration::from_millis(800),
        "used again {back:?} after the restart, the next probe due 400 ms after it"
    );
}

/// A TCP proxy on loopback to `target` whose connections can be made to go
/// silent (nothing forwarded either way, nothing closed), as a host that
/// vanished or an address that moved leaves them; connections made after
/// that are forwarded.
struct SilencingProxy {
    port: u16,
    /// Connections numbered below this are silent.
    silent_below: Arc<std::sync::atomic::AtomicU64>,
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl SilencingProxy {
    async fn start(target: u16) -> SilencingProxy {
        use std::sync::atomic::AtomicU64;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent_below = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, a) = (silent_below.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (s1, s2) = (s.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(k) = cr.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        if n >= s1.load(Ordering::SeqCst) && sw.write_all(&buf[..k]).await.is_err()
                        {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(k) = sr.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        if n >= s2.load(Ordering::SeqCst) && cw.write_all(&buf[..k]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        SilencingProxy {
            port,
            silent_below,
            accepted,
        }
    }

    /// Every connection made so far goes silent.
    fn silence(&self) {
        self.silent_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// A connection that goes silent without an error (a host gone without a
/// reset, an address moved in a failover) is replaced: `RedisBackend::connect`
/// connects anew in the background as the degraded limiter probes, and the
/// limit is kept through Redis again within a few probe intervals. The
/// `redis` crate's connection manager replaces a connection only on
/// errors: the limiter stayed degraded (failing open) for good.
#[tokio::test]
async fn a_connection_gone_silent_is_replaced() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = SilencingProxy::start(server.port).await;
    let recorder = Recorder::new();
    let backend = RedisBackend::connect(&format!("redis://127.0.0.1:{}/", proxy.port))
        .await
        .unwrap()
        .timeout(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(100));
    let layer = RateLimitLayer::builder(Quota::per_minute(2))
        .observer(Observer::new(recorder.clone()))
        .redis(backend)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert_eq!(admitted(&mut svc, 3).await, 2, "the quota, through Redis");
    proxy.silence();
    // Silent: degraded, failing open.
    assert!(call(&mut svc, 0).await.is_ok());
    assert_eq!(
        state_changes(&recorder),
        vec![(State::Healthy, State::Degraded)]
    );
    let start = std::time::Instant::now();
    while state_changes(&recorder).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still degraded after 3 s: {:?}",
            state_changes(&recorder)
        );
        let _ = call(&mut svc, 0).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("healthy again {:?} after the first probe", start.elapsed());
    // Through Redis again: the bucket it kept is still empty.
    assert!(
        call(&mut svc, 0).await.is_err(),
        "limited through Redis again"
    );
}

#[test]
fn connect_refuses_a_url_that_is_not_redis() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(RedisBackend::connect("http://example"))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid rate_limit configuration: invalid Redis URL \"http://example\""),
        "{err}"
    );
}

/// While failing open, no limit is kept, and the answers say none: no
/// `RateLimit` fields (they said the whole quota was left, on every
/// answer). Through Redis, they count down.
#[tokio::test]
async fn failing_open_sends_no_ratelimit_fields() {
    use seawall::rate_limit::headers::IetfHeaders;
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let layer = RateLimitLayer::builder(Quota::per_minute(10))
        .redis(
            RedisBackend::new(server.connection().await)
                .timeout(Duration::from_millis(100))
                .on_failure(FailurePolicy::FailOpen),
        )
        .response_headers(IetfHeaders::default())
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|_: http::Request<()>| {
        std::future::ready(Ok::<_, Infallible>(http::Response::new(())))
    }));
    async fn fields<S>(svc: &S) -> (Option<String>, bool)
    where
        S: Service<http::Request<()>, Response = http::Response<()>, Error = BoxError> + Clone,
    {
        let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        (
            res.headers()
                .get("ratelimit")
                .map(|v| v.to_str().unwrap().to_owned()),
            res.headers().contains_key("ratelimit-policy"),
        )
    }
    assert_eq!(
        fields(&svc).await,
        (Some("\"default\";r=9;t=6".to_owned()), true)
    );
    assert_eq!(
        fields(&svc).await,
        (Some("\"default\";r=8;t=12".to_owned()), true)
    );
    server.kill();
    for _ in 0..3 {
        assert_eq!(fields(&svc).await, (None, false));
    }
}

/// A request whose future is dropped before it is ever polled has not
/// asked Redis, and Redis is not asked for it: its cell stays (one a
/// minute, burst 1: the next request is admitted). Judged apart as a cut
/// call, it ran the script and spent the cell.
#[tokio::test]
async fn a_request_dropped_before_it_is_polled_takes_no_cell() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = RateLimitLayer::builder(Quota::per_minute(1))
        .redis(RedisBackend::new(server.connection().await))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let never_polled = svc.ready().await.unwrap().call(1);
    drop(never_polled);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        call(&mut svc, 2).await.unwrap(),
        2,
        "the cell is still there"
    );
}

/// The README's limit for a fleet, over real HTTP on loopback: two
/// instances built from its code share one quota per API key through
/// Redis; with Redis gone, each limits on its own with the whole quota
/// (the default policy), with `429`s, `Retry-After` and `RateLimit` fields
/// as usual, and says it is degraded.
#[cfg(feature = "axum")]
#[tokio::test]
async fn the_readme_fleet_limit_over_http() -> Result<(), BoxError> {
    use axum::{Router, routing::get};
    use seawall::ServerStack;
    let Some(mut server) = RedisServer::start() else {
        return Ok(());
    };
    let url = server.url();
    let instance = |url: String| async move {
        // --- README fleet rate limit begins ---
        use http::HeaderName;
        use seawall::rate_limit::{HeaderKey, Quota, RedisBackend, headers::IetfHeaders};

        let redis = RedisBackend::connect(&url).await?; // connects lazily: starts while Redis is down
        let stack = ServerStack::http("api")
            .total_budget(Duration::from_secs(5))
            .rate_limit(Quota::per_second(20), |r| {
                r.keyed(HeaderKey::new(HeaderName::from_static("x-api-key")))
                    .response_headers(IetfHeaders::new("default").expect("a valid policy name"))
                    .redis(redis)
            })
            .build()?;
        let limit = stack.rate_limit().clone(); // limit.backend_state(): for an alert, not for readiness
        // --- README fleet rate limit ends ---
        let app = Router::new()
            .route("/", get(|| async { "hello" }))
            .layer(stack);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok::<_, BoxError>((addr, limit))
    };
    let (a, limit_a) = instance(url.clone()).await?;
    let (b, limit_b) = instance(url).await?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    // Status, whether a `Retry-After` came with a 429 and `RateLimit` with a
    // 200, of one request with `key` to `to`.
    let get = |to: std::net::SocketAddr, key: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{to}/"))
                .header("x-api-key", key)
                .body(http_body_util::Empty::new())
                .unwrap();
            let res = client.request(req).await.unwrap();
            let status = res.status().as_u16();
            let fields = match status {
                200 => res.headers().contains_key("ratelimit"),
                429 => res.headers().contains_key("retry-after"),
                _ => false,
            };
            (status, fields)
        }
    };
    // Sends `n` requests with `key`, every other one to each instance:
    // how many were admitted; every answer a 200 or a 429 with its fields.
    let spread = |key: &'static str, n: usize| {
        let get = &get;
        async move {
            let mut admitted = 0;
            for i in 0..n {
                let (status, fields) = get(if i % 2 == 0 { a } else { b }, key).await;
                assert!(
                    matches!(status, 200 | 429) && fields,
                    "{key} {i}: {status}, fields {fields}"
                );
                admitted += usize::from(status == 200);
            }
            admitted
        }
    };
    // Healthy: one quota of 20 (a second) across both instances.
    // The burst of 20, and 20 a second refilled while the requests ran
    // (a few tens of ms on loopback; bounded by the time they took).
    let refill =
        |since: tokio::time::Instant| (since.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    let start = tokio::time::Instant::now();
    let big = spread("big", 40).await;
    let most = 20 + refill(start);
    assert!(
        (20..=most).contains(&big),
        "{big} of 40 admitted, at most {most}"
    );
    assert_eq!(limit_a.backend_state(), Some(State::Healthy));
    server.kill();
    // Redis gone: the quota from each instance.
    let start = tokio::time::Instant::now();
    let big = spread("big", 80).await;
    let most = 2 * (20 + refill(start));
    assert!(
        (40..=most).contains(&big),
        "{big} of 80 admitted, at most {most}"
    );
    assert_eq!(spread("small", 10).await, 10, "within its quota");
    assert_eq!(limit_a.backend_state(), Some(State::Degraded));
    assert_eq!(limit_b.backend_state(), Some(State::Degraded));
    Ok(())
}
