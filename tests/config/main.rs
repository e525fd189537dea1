#![cfg(all(feature = "serde", feature = "http"))]
//! Settings from files: `examples/seawall.toml` builds the stacks the
//! builders build; refused settings name their path.

use std::time::Duration;

use seawall::config::ServiceConfig;
use seawall::rate_limit::Quota;
use seawall::stack::{ClientStack, ServerStack};
use tower::{Layer, Service, ServiceExt};

fn example() -> ServiceConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/seawall.toml"
    ))
    .expect("the example file");
    toml::from_str(&text).expect("the example file parses")
}

/// The `[server]` section of a settings file's `text`.
fn server_section(text: &str) -> seawall::config::ServerSettings {
    toml::from_str::<ServiceConfig>(text)
        .unwrap()
        .server_settings()
        .unwrap()
        .clone()
}

#[test]
fn the_example_file_reads_into_its_settings() {
    let c = example();
    let payments = c.client_settings("payments").unwrap();
    assert_eq!(payments.total_budget, Some(Duration::from_secs(2)));
    assert_eq!(payments.attempt_timeout, Some(Duration::from_millis(500)));
    assert_eq!(payments.retry.max_attempts, Some(2));
    assert_eq!(
        payments.retry.backoff_base,
        Some(Duration::from_millis(100))
    );
    assert_eq!(payments.breaker.open_duration, Some(Duration::from_secs(2)));
    assert_eq!(payments.bulkhead.max_concurrent, Some(64));
    let server = c.server_settings().unwrap();
    assert_eq!(server.total_budget, Some(Duration::from_secs(5)));
    let rate = server.rate_limit.unwrap();
    assert_eq!(rate.rate, (500, Duration::from_secs(1)));
    assert_eq!(rate.quota().burst_size(), 100);
    assert_eq!(c.clients.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_stacks_it_builds_behave_as_configured() {
    let c = example();
    // The generic stack: 2 attempts; 10 failures in a row open the breaker.
    let payments = c.client("payments").unwrap();
    assert_eq!(payments.retry().max_attempts(), 2);
    assert_eq!(payments.bulkhead_handle().max_concurrent(), 64);
    let failing =
        tower::service_fn(|_: u32| async { Err::<u32, seawall::BoxError>("down".into()) });
    let svc = payments.layer(failing);
    for _ in 0..5 {
        let _ = svc.clone().oneshot(1).await;
    }
    assert_eq!(
        payments.breaker_handle().state(),
        seawall::observe::State::Open
    );

    // A preset, configured from the same section.
    let http = c
        .build_client("payments", ClientStack::http("payments"))
        .unwrap();
    assert_eq!(http.retry().max_attempts(), 2);
    assert_eq!(http.bulkhead_handle().max_concurrent(), 64);

    // The server: its budget, bulkhead and rate limit (the file's rate
    // replaces the builder's quota).
    let server = c
        .build_server(ServerStack::builder("api").rate_limit(Quota::per_second(1), |r| r))
        .unwrap();
    assert_eq!(server.bulkhead_handle().max_concurrent(), 800);
    assert_eq!(
        server.rate_limit().quota(),
        Quota::per_second(500).burst(100)
    );
    let preset = c
        .build_server(ServerStack::http("api").rate_limit(Quota::per_second(1), |r| r))
        .unwrap();
    assert_eq!(preset.bulkhead_handle().max_concurrent(), 800);
    assert_eq!(preset.rate_limit().quota().burst_size(), 100);
    // A stack with no place for the file's rate limit refuses it, saying
    // what to add.
    let e = c.server("api").unwrap_err().to_string();
    assert!(
        e.contains(
            "server.rate_limit: this stack has no rate limit; build it with \
             `ServiceConfig::build_server(ServerStack::builder(\"api\").rate_limit(quota, |r| r))`"
        ),
        "{e}"
    );
    // `configure` by hand: the file's rate replaces the builder's quota, and
    // a builder without a rate limit refuses it when built.
    let by_hand = ServerStack::http("api")
        .rate_limit(Quota::per_second(1), |r| r)
        .configure(c.server_settings().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        by_hand.rate_limit().quota(),
        Quota::per_second(500).burst(100)
    );
    let e = ServerStack::http("api")
        .configure(c.server_settings().unwrap())
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("this stack has no rate limit; add `.rate_limit(quota, |r| r)`"),
        "{e}"
    );
    let e = c
        .build_server(ServerStack::http("api"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.rate_limit: this stack has no rate limit"),
        "{e}"
    );
}

#[test]
fn refused_settings_name_their_path() {
    let bad: ServiceConfig = toml::from_str(
        r#"
        [clients.payments]
        total_budget = "2s"
        attempt_timeout = "500ms"
        breaker = { failure_rate_threshold = 1.5 }
        "#,
    )
    .unwrap();
    let e = bad.client("payments").unwrap_err().to_string();
    assert!(
        e.starts_with("invalid circuit_breaker configuration: clients.payments.breaker: failure_rate_threshold"),
        "{e}"
    );
    // The same through a preset's builder.
    let e = bad
        .build_client("payments", ClientStack::http("payments"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("clients.payments.breaker: failure_rate_threshold"),
        "{e}"
    );
    assert!(e.contains("1.5"), "{e}");

    let e = bad.client("orders").unwrap_err().to_string();
    assert!(e.contains("clients.orders: no such section"), "{e}");

    let unknown = toml::from_str::<ServiceConfig>(
        r#"
        [clients.payments]
        total_budget = "2s"
        retry = { max_atempts = 2 }
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("unknown field `max_atempts`"), "{unknown}");

    let duration = toml::from_str::<ServiceConfig>(
        r#"
        [clients.payments]
        total_budget = "two seconds"
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        duration.contains("\"two seconds\" is not a duration"),
        "{duration}"
    );

    let rate = toml::from_str::<ServiceConfig>(
        r#"
        [server]
        rate_limit = { rate = "fast" }
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(rate.contains("\"fast\" is not a rate"), "{rate}");
    let short: ServiceConfig = toml::from_str("[server]\nrate_limit = \"100/s\"\n").unwrap();
    let r = short.server_settings().unwrap().rate_limit.unwrap();
    assert_eq!((r.rate, r.burst), ((100, Duration::from_secs(1)), None));
    let wrong = toml::from_str::<ServiceConfig>("[server]\nrate_limit = \"100 per second\"\n")
        .unwrap_err()
        .to_string();
    assert!(wrong.contains("is not a rate such as \"100/s\""), "{wrong}");

    // A missing budget is refused at build, with its path.
    let none: ServiceConfig = toml::from_str("[clients.payments]\n").unwrap();
    let e = none.client("payments").unwrap_err().to_string();
    assert!(
        e.contains("clients.payments: ") && e.contains("total_budget must be set"),
        "{e}"
    );
}

/// A gRPC service config's timeout, retry policy and hedged methods, read
/// into the gRPC preset; what does not map is refused by name.
#[cfg(feature = "tonic")]
#[test]
fn a_grpc_service_config_sets_the_grpc_preset() {
    use seawall::config::GrpcServiceConfig;
    let json = r#"{
        "methodConfig": [
            {
                "name": [{"service": "catalogue.Catalogue"}],
                "timeout": "1.5s",
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
                }
            },
            {
                "name": [{"service": "catalogue.Catalogue", "method": "GetItem"}],
                "timeout": "1.5s",
                "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s"}
            }
        ]
    }"#;
    let config: GrpcServiceConfig = serde_json::from_str(json).unwrap();
    let policy = config.policy().unwrap();
    assert_eq!(policy.timeout, Some(Duration::from_millis(1500)));
    let (attempts, base, cap, retry) = policy.retry.unwrap();
    assert_eq!(
        (attempts, base, cap),
        (4, Duration::from_millis(100), Duration::from_secs(1))
    );
    assert!(retry.retries(tonic::Code::ResourceExhausted));
    assert!(!retry.retries(tonic::Code::Internal));
    // The service named: every method of it, no other service's.
    assert!(retry.retries_method("/catalogue.Catalogue/ListItems"));
    assert!(!retry.retries_method("/billing.Billing/Charge"));
    let (delay, hedges, methods) = policy.hedging.clone().unwrap();
    assert_eq!((delay, hedges), (Duration::from_millis(50), 3));
    assert_eq!(methods, vec!["/catalogue.Catalogue/GetItem".to_owned()]);

    let stack = ClientStack::grpc("catalogue")
        .attempt_timeout(Duration::from_millis(500))
        .service_config(&config)
        .unwrap()
        .hedge(|h| h.delay(delay).max_attempts(hedges))
        .build()
        .unwrap();
    assert_eq!(stack.retry().max_attempts(), 4);
    assert_eq!(
        stack.hedge().current_delay(),
        Some(Duration::from_millis(50))
    );

    // A config without a retry policy keeps the one set on the builder, and
    // its hedged methods are added to those set before.
    let timeout_only: GrpcServiceConfig = serde_json::from_str(
        r#"{"methodConfig": [{"name": [{"service": "a.B", "method": "Get"}], "timeout": "1s",
            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s"}}]}"#,
    )
    .unwrap();
    let stack = ClientStack::grpc("ab")
        .attempt_timeout(Duration::from_millis(500))
        .retry(|r| {
            r.policy(
                seawall::retry::grpc::GrpcRetry::new()
                    .with_code(tonic::Code::DeadlineExceeded)
                    .hedge_method("/a.B/List"),
            )
        })
        .service_config(&timeout_only)
        .unwrap()
        .build()
        .unwrap();
    let policy = stack.retry().policy();
    assert!(
        policy.retries(tonic::Code::DeadlineExceeded),
        "the builder's codes"
    );
    assert!(policy.hedges("/a.B/List") && policy.hedges("/a.B/Get"));
    // Hedged methods beyond the 16 a stack holds, counting the builder's,
    // are refused (4 of them were dropped without a word).
    let ten = |prefix: &str| {
        (0..10)
            .map(|i| format!(r#"{{"service": "a.B", "method": "{prefix}{i}"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let config: GrpcServiceConfig = serde_json::from_str(&format!(
        r#"{{"methodConfig": [{{"name": [{}],
            "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "0.05s"}}}}]}}"#,
        ten("Get")
    ))
    .unwrap();
    let builder_hedges = (0..10).fold(seawall::retry::grpc::GrpcRetry::new(), |p, i| {
        p.hedge_method(&format!("/a.B/List{i}"))
    });
    let e = ClientStack::grpc("ab")
        .retry(|r| r.policy(builder_hedges))
        .service_config(&config)
        .expect_err("20 hedged methods were taken")
        .to_string();
    assert!(e.contains("one method too many"), "{e}");
    // More than 5 attempts is taken as 5, as gRPC does; fewer than 2 is
    // refused.
    let nine: GrpcServiceConfig = serde_json::from_str(
        r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s",
            "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#,
    )
    .unwrap();
    assert_eq!(nine.policy().unwrap().retry.unwrap().0, 5);
    // No name: every method.
    assert!(
        nine.policy()
            .unwrap()
            .retry
            .unwrap()
            .3
            .retries_method("/any.Svc/Any")
    );
    // What does not map.
    let refused = |json: &str| {
        serde_json::from_str::<GrpcServiceConfig>(json)
            .unwrap()
            .policy()
            .unwrap_err()
            .to_string()
    };
    assert!(
        refused(r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#)
            .contains("retryThrottling")
    );
    let e = refused(
        r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s",
            "maxBackoff": "1s", "backoffMultiplier": 1.5, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#,
    );
    assert!(
        e.contains("methodConfig[0].retryPolicy.backoffMultiplier"),
        "{e}"
    );
    let e = refused(
        r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s",
            "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["SOMETIMES"]}}]}"#,
    );
    assert!(
        e.contains("\"SOMETIMES\" is not a gRPC status code name"),
        "{e}"
    );
    let e = refused(r#"{"methodConfig": [{"timeout": "1s"}, {"timeout": "2s"}]}"#);
    assert!(e.contains("methodConfig[1].timeout"), "{e}");
    // A retry policy for a service beside a write of it with none: the one
    // policy would retry the write too.
    let e = refused(
        r#"{"methodConfig": [
            {"name": [{"service": "shop.Orders"}],
             "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "INTERNAL"]}},
            {"name": [{"service": "shop.Orders", "method": "Create"}]}]}"#,
    );
    assert!(
        e.contains(
            "methodConfig[1]: no retryPolicy for methods another entry's retryPolicy covers"
        ),
        "{e}"
    );
    // The same for a read named alone: the write is not covered, and is
    // sent once (below).
    let reads_only: GrpcServiceConfig = serde_json::from_str(
        r#"{"methodConfig": [
            {"name": [{"service": "shop.Orders", "method": "Get"}],
             "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "INTERNAL"]}},
            {"name": [{"service": "shop.Orders", "method": "Create"}], "timeout": "2s"}]}"#,
    )
    .unwrap();
    let retry = reads_only.policy().unwrap().retry.unwrap().3;
    assert!(retry.retries_method("/shop.Orders/Get"));
    assert!(!retry.retries_method("/shop.Orders/Create"));
    assert!(!retry.retries_method("/shop.Admin/Get"));
    let e = refused(
        r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s",
            "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": []}}]}"#,
    );
    assert!(e.contains("retryableStatusCodes: empty"), "{e}");
    let e = refused(r#"{"methodConfig": [{"name": [{"method": "Get"}], "timeout": "1s"}]}"#);
    assert!(
        e.contains("methodConfig[0].name: method \"Get\" without its service"),
        "{e}"
    );
    // Non-fatal codes are checked against the stack's retry policy, the
    // builder's when the config has none.
    let internal: GrpcServiceConfig = serde_json::from_str(
        r#"{"methodConfig": [{"name": [{"service": "a.B", "method": "Get"}],
            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.1s",
                "nonFatalStatusCodes": ["INTERNAL"]}}]}"#,
    )
    .unwrap();
    let e = ClientStack::grpc("ab")
        .service_config(&internal)
        .expect_err("INTERNAL is not retried by the preset")
        .to_string();
    assert!(
        e.contains("hedgingPolicy.nonFatalStatusCodes: Internal is not retried"),
        "{e}"
    );
    assert!(
        ClientStack::grpc("ab")
            .retry(|r| {
                r.policy(seawall::retry::grpc::GrpcRetry::new().with_code(tonic::Code::Internal))
            })
            .service_config(&internal)
            .is_ok(),
        "the builder's codes retry it"
    );
    let e = refused(
        r#"{"methodConfig": [{"name": [{"service": "a.B", "method": "Get"}],
            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.1s",
                "nonFatalStatusCodes": ["SOMETIMES"]}}]}"#,
    );
    assert!(e.contains("nonFatalStatusCodes: \"SOMETIMES\""), "{e}");
    let e = refused(
        r#"{"methodConfig": [{"name": [{"service": "a.B"}], "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.1s"}}]}"#,
    );
    assert!(e.contains("hedges every method"), "{e}");
}

/// A reload that changes only the retry budget's shares reports it, once,
/// from the retry layer; the same file again reports nothing.
#[tokio::test(start_paused = true)]
async fn a_budget_reload_is_reported_by_the_retry_layer() {
    let c = example();
    let rec = seawall::observe::Recorder::new();
    let payments = c
        .build_client(
            "payments",
            ClientStack::builder("payments").observer(seawall::Observer::new(rec.clone())),
        )
        .unwrap();
    let mut s = c.client_settings("payments").unwrap().clone();
    s.retry.budget_ratio = Some(0.3);
    let reconfigured = || {
        rec.events()
            .iter()
            .filter(|e| e.kind == seawall::observe::EventKind::Reconfigured)
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    payments.reload(&s).unwrap();
    assert_eq!(payments.retry_budget().ratio_ppm(), 300_000);
    assert_eq!(reconfigured(), ["payments.retry"]);
    payments.reload(&s).unwrap();
    assert_eq!(reconfigured(), ["payments.retry"], "no change, no event");
}

/// Settings a reload leaves to the next build are checked by the rules that
/// build applies: a value it would refuse is refused now, and nothing
/// changes.
#[tokio::test(start_paused = true)]
async fn a_reload_refuses_what_the_next_build_would() {
    let c = example();
    let payments = c.client("payments").unwrap();
    let limit = payments.bulkhead_handle().max_concurrent();
    for (line, refused) in [
        (
            "breaker = { half_open_calls = 0 }",
            "permitted_calls_in_half_open",
        ),
        (
            "slow_call_duration = \"0s\"",
            "slow_call_duration must be above zero",
        ),
        (
            "bulkhead = { max_concurrent = 3, max_wait = \"0s\" }",
            "max_wait must be above zero",
        ),
        ("attempt_timeout = \"0s\"", "payments"),
    ] {
        let changed: ServiceConfig = toml::from_str(&format!(
            "[clients.payments]\ntotal_budget = \"2s\"\n{line}"
        ))
        .unwrap();
        let e = payments
            .reload(changed.client_settings("payments").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(refused), "{line}: {e}");
        assert_eq!(payments.bulkhead_handle().max_concurrent(), limit, "{line}");
    }
}

/// A reload of a running stack from a changed file: the breaker's open time
/// and threshold, the bulkhead's limit and the retry budget's share change,
/// the rest waits for a rebuild; a refused file changes nothing.
#[tokio::test(start_paused = true)]
async fn a_running_stack_reloads_what_can_change() {
    let c = example();
    let payments = c.client("payments").unwrap();
    assert_eq!(
        payments.breaker_handle().tuning().open_duration,
        Duration::from_secs(2)
    );
    let changed: ServiceConfig = toml::from_str(
        r#"
        [clients.payments]
        total_budget = "2s"
        attempt_timeout = "500ms"
        breaker = { open_duration = "5s", failure_rate_threshold = 0.3 }
        bulkhead = { max_concurrent = 16 }
        retry = { budget_ratio = 0.2 }
        "#,
    )
    .unwrap();
    let floor = payments.retry_budget().floor();
    payments
        .reload(changed.client_settings("payments").unwrap())
        .unwrap();
    assert_eq!(payments.retry_budget().ratio_ppm(), 200_000);
    assert_eq!(
        payments.retry_budget().floor(),
        floor,
        "an absent setting is kept"
    );
    let t = payments.breaker_handle().tuning();
    assert_eq!(
        (t.open_duration, t.failure_rate_threshold),
        (Duration::from_secs(5), 0.3)
    );
    assert_eq!(payments.bulkhead_handle().max_concurrent(), 16);

    let refused: ServiceConfig = toml::from_str(
        r#"
        [clients.payments]
        breaker = { failure_rate_threshold = 2.0 }
        bulkhead = { max_concurrent = 8 }
        retry = { budget_ratio = 0.5 }
        "#,
    )
    .unwrap();
    let e = payments
        .reload(refused.client_settings("payments").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("payments.breaker: failure_rate_threshold"),
        "{e}"
    );
    assert_eq!(
        payments.bulkhead_handle().max_concurrent(),
        16,
        "a refused reload changed the bulkhead"
    );
    assert_eq!(
        payments.retry_budget().ratio_ppm(),
        200_000,
        "a refused reload changed the budget"
    );
    assert_eq!(
        payments.breaker_handle().tuning().failure_rate_threshold,
        0.3
    );

    let server = c
        .build_server(ServerStack::builder("api").rate_limit(Quota::per_second(1), |r| r))
        .unwrap();
    let mut s = c.server_settings().unwrap().clone();
    s.bulkhead.max_concurrent = Some(100);
    server.reload(&s).unwrap();
    assert_eq!(server.bulkhead_handle().max_concurrent(), 100);
    s.bulkhead.max_concurrent = Some(0);
    assert!(server.reload(&s).is_err());
    assert_eq!(server.bulkhead_handle().max_concurrent(), 100);
    // A refused rate changes nothing, the bulkhead included.
    s.bulkhead.max_concurrent = Some(50);
    s.rate_limit = Some(
        toml::from_str::<Wrap>("r = { rate = \"1/s\", burst = 0 }")
            .unwrap()
            .r,
    );
    let e = server.reload(&s).unwrap_err().to_string();
    assert!(
        e.contains("api.rate_limit: quota: the burst (requests per window) must be at least 1"),
        "{e}"
    );
    assert_eq!(server.bulkhead_handle().max_concurrent(), 100);
    assert_eq!(server.rate_limit().quota().burst_size(), 100);
    // A stack without a rate limit refuses one.
    let bare = ServerStack::builder("bare")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let e = bare.reload(&s).unwrap_err().to_string();
    assert!(
        e.contains("rate_limit: this stack has no rate limit"),
        "{e}"
    );
}

#[derive(serde::Deserialize)]
struct Wrap {
    r: seawall::config::Rate,
}

/// A reload in the middle of a load: 1000 requests a second against the
/// file's 500/s (burst 100), then `{ rate = "100/s", burst = 20 }`: the
/// admitted rate follows at once, the bucket is not refilled by the change
/// (it owed 200 ms, the whole new burst), and a `Reconfigured` event says
/// so.
#[tokio::test(start_paused = true)]
async fn a_reload_during_load_changes_the_admitted_rate() {
    let c = example();
    let events = seawall::observe::Recorder::new();
    let server = c
        .build_server(
            ServerStack::builder("api")
                .observer(events.clone())
                .rate_limit(Quota::per_second(1), |r| r),
        )
        .unwrap();
    let svc = server.layer(tower::service_fn(|x: u32| async move {
        Ok::<u32, seawall::BoxError>(x)
    }));
    // One second of load at 1 request per millisecond.
    async fn second(
        svc: &(impl tower::Service<u32, Response = u32, Error = seawall::BoxError> + Clone),
    ) -> (u32, u32, Option<Duration>) {
        let (mut ok, mut refused, mut wait) = (0, 0, None);
        for i in 0..1000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            match svc.clone().oneshot(i).await {
                Ok(_) => ok += 1,
                Err(e) => {
                    let r = seawall::error::rejection(&*e).expect("a rejection");
                    assert_eq!(r.kind(), seawall::error::RejectionKind::RateLimited);
                    refused += 1;
                    wait = wait.max(r.retry_after());
                }
            }
        }
        (ok, refused, wait)
    }
    let before = second(&svc).await;
    // The burst (100) then 500/s: 100 + 500 × 0.9 s ≈ 599 in the first second.
    assert!((590..=610).contains(&before.0), "{before:?}");
    let steady = second(&svc).await;
    assert!((495..=505).contains(&steady.0), "{steady:?}");

    let mut s = c.server_settings().unwrap().clone();
    s.rate_limit = Some(
        toml::from_str::<Wrap>("r = { rate = \"100/s\", burst = 20 }")
            .unwrap()
            .r,
    );
    server.reload(&s).unwrap();
    assert_eq!(
        server.rate_limit().quota(),
        Quota::per_second(100).burst(20)
    );
    let after = second(&svc).await;
    // The bucket owed its whole new burst when the quota changed: no burst
    // is given back, only the new rate.
    assert!((95..=105).contains(&after.0), "{after:?}");
    let wait = after.2.expect("a retry_after");
    assert!(
        wait <= Duration::from_millis(10) + Duration::from_millis(5),
        "{wait:?}"
    );
    assert_eq!(
        events
            .events()
            .iter()
            .filter(|e| e.kind == seawall::observe::EventKind::Reconfigured
                && e.name == "api.rate_limit")
            .count(),
        1
    );
}

/// The adaptive limit's bounds from a file, then a reload under load: 70
/// calls at once against a slow handler, a burst over the limit of 30 up to
/// the upper bound (60 in flight); `limit = { max_limit = 5 }` clamps the
/// limit at once, the calls in flight finish, and new calls are refused as
/// overloaded until fewer than 5 are in flight (the bound caps bursts too). A refused
/// bound changes nothing.
#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_bounds_reload_under_load() {
    let c: ServiceConfig = toml::from_str(
        r#"
        [server]
        total_budget = "5s"
        limit = { min_limit = 30, max_limit = 60 }
        "#,
    )
    .unwrap();
    let events = seawall::observe::Recorder::new();
    // (No queue for a herd: the requests over the burst are refused.)
    let server = c
        .build_server(
            ServerStack::builder("api")
                .observer(events.clone())
                .adaptive_limit(|l| l.max_queue(0)),
        )
        .unwrap();
    // QueueDelay starts at 20: clamped into 30..=60.
    assert_eq!(server.adaptive_limit().limit(), 30);
    let svc = server.layer(tower::service_fn(|x: u32| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<u32, seawall::BoxError>(x)
    }));
    let mut calls = Vec::new();
    for i in 0..70 {
        calls.push(tokio::spawn(svc.clone().oneshot(i)));
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(
        server.adaptive_limit().inflight(),
        60,
        "a burst over the limit of 30 admitted up to the upper bound, 10 refused"
    );

    let refused: ServiceConfig =
        toml::from_str("[server]\nlimit = { min_limit = 0 }\nbulkhead = { max_concurrent = 7 }\n")
            .unwrap();
    let e = server
        .reload(refused.server_settings().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api.limit: min_limit must be at least 1, got 0"),
        "{e}"
    );
    assert_eq!(server.adaptive_limit().limit(), 30);
    assert_ne!(
        server.bulkhead_handle().max_concurrent(),
        7,
        "a refused reload changed the bulkhead"
    );

    let smaller: ServiceConfig =
        toml::from_str("[server]\nlimit = { min_limit = 1, max_limit = 5 }\n").unwrap();
    server.reload(smaller.server_settings().unwrap()).unwrap();
    assert_eq!(server.adaptive_limit().limit(), 5);
    // The 60 in flight are not disturbed; a new call is refused.
    let late = svc.clone().oneshot(99).await.unwrap_err();
    assert_eq!(
        seawall::error::rejection(&*late).unwrap().kind(),
        seawall::error::RejectionKind::Overloaded
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    let mut ok = 0;
    for c in calls {
        ok += c.await.unwrap().is_ok() as u32;
    }
    assert_eq!(ok, 60);
    assert_eq!(server.adaptive_limit().inflight(), 0);
    // Below the new limit, calls are admitted again: 5 at once, not 6.
    let mut calls = Vec::new();
    for i in 0..6 {
        calls.push(tokio::spawn(svc.clone().oneshot(i)));
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_millis(150)).await;
    let mut ok = 0;
    for c in calls {
        ok += c.await.unwrap().is_ok() as u32;
    }
    assert_eq!(ok, 5);
    // The maximum raised again: the limit it had before the cut (30) comes
    // back, as it stayed at 5 meanwhile; it did not start again from 5.
    let wider: ServiceConfig =
        toml::from_str("[server]\nlimit = { min_limit = 1, max_limit = 60 }\n").unwrap();
    server.reload(wider.server_settings().unwrap()).unwrap();
    assert_eq!(server.adaptive_limit().limit(), 30);
    let kinds: Vec<_> = events
        .events()
        .into_iter()
        .filter(|e| e.name == "api.limit")
        .map(|e| e.kind)
        .filter(|k| {
            matches!(
                k,
                seawall::observe::EventKind::Reconfigured
                    | seawall::observe::EventKind::LimitChanged { .. }
            )
        })
        .collect();
    assert_eq!(
        kinds[..3],
        [
            // Its limit once as built, so that a gauge starts at it.
            seawall::observe::EventKind::LimitChanged { from: 30, to: 30 },
            seawall::observe::EventKind::Reconfigured,
            seawall::observe::EventKind::LimitChanged { from: 30, to: 5 }
        ]
    );
}

/// Every layer used on its own reads its section of a user's own file
/// format through its builder's `configure`.
#[tokio::test(start_paused = true)]
async fn each_layer_reads_its_own_section() {
    use seawall::config::{
        BreakerSettings, BulkheadSettings, EjectionSettings, HedgeSettings, LimitSettings, Rate,
        RetrySettings, ThrottleSettings,
    };
    #[derive(serde::Deserialize)]
    struct MyFile {
        retry: RetrySettings,
        breaker: BreakerSettings,
        bulkhead: BulkheadSettings,
        limit: LimitSettings,
        rate: Rate,
        hedge: HedgeSettings,
        eject: EjectionSettings,
        throttle: ThrottleSettings,
    }
    let f: MyFile = toml::from_str(
        r#"
        retry = { max_attempts = 4, backoff_base = "20ms", budget_ratio = 0.05 }
        breaker = { consecutive_failures = 3, open_duration = "7s" }
        bulkhead = { max_concurrent = 12, max_queue = 0 }
        limit = { min_limit = 40, max_limit = 80 }
        rate = "30/s"
        hedge = { delay = "15ms", max_attempts = 3, budget_ratio = 0.2 }
        eject = { consecutive_failures = 2, ejection_time = "1s" }
        throttle = { k = 5.0, max_rejection_probability = 2.0 }
        "#,
    )
    .unwrap();
    let retry = seawall::retry::RetryLayer::builder()
        .configure(&f.retry)
        .build()
        .unwrap();
    assert_eq!(retry.max_attempts(), 4);
    assert_eq!(retry.backoff().base(), Duration::from_millis(20));
    assert_eq!(retry.budget().ratio_ppm(), 50_000);
    // A base alone keeps the builder's cap, not the default one.
    let capped = seawall::retry::RetryLayer::builder()
        .backoff(Duration::from_millis(5), Duration::from_millis(300))
        .configure(&f.retry)
        .build()
        .unwrap();
    assert_eq!(
        (capped.backoff().base(), capped.backoff().cap()),
        (Duration::from_millis(20), Duration::from_millis(300))
    );
    let breaker = seawall::circuit_breaker::CircuitBreakerLayer::builder()
        .configure(&f.breaker)
        .build()
        .unwrap();
    let t = breaker.handle().tuning();
    assert_eq!(
        (t.consecutive_failures, t.open_duration),
        (Some(3), Duration::from_secs(7))
    );
    let bulkhead = seawall::bulkhead::BulkheadLayer::builder()
        .configure(&f.bulkhead)
        .build()
        .unwrap();
    assert_eq!(bulkhead.handle().max_concurrent(), 12);
    let limit = seawall::shed::AdaptiveLimitLayer::builder()
        .configure(&f.limit)
        .build()
        .unwrap();
    assert_eq!(limit.limit(), 40, "the initial 20, clamped into 40..=80");
    let rate = seawall::rate_limit::RateLimitLayer::builder(Quota::per_second(1))
        .configure(&f.rate)
        .build()
        .unwrap();
    assert_eq!(rate.quota(), Quota::per_second(30));
    let hedge = seawall::hedge::HedgeLayer::builder()
        .configure(&f.hedge)
        .build()
        .unwrap();
    assert_eq!(hedge.current_delay(), Some(Duration::from_millis(15)));
    assert_eq!(hedge.budget().ratio_ppm(), 200_000);
    // The throttle's settings reach its builder's checks.
    let e = seawall::shed::ThrottleLayer::builder()
        .configure(&f.throttle)
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_rejection_probability"), "{e}");
    // Two remote failures in a row eject an endpoint (the default is 5).
    let eject = seawall::eject::EjectionLayer::builder()
        .configure(&f.eject)
        .build()
        .unwrap();
    let failing =
        tower::service_fn(|_: u32| async { Err::<u32, seawall::BoxError>("down".into()) });
    let mut endpoints: Vec<_> = (0..2).map(|_| eject.layer(failing)).collect();
    for _ in 0..2 {
        let _ = endpoints[0].ready().await.unwrap().call(1).await;
    }
    assert_eq!(eject.ejected(), 1);
    // A latency factor of 0 turns the check off; a negative one is refused,
    // not taken for "off".
    let eject_with = |text: &str| {
        let s: EjectionSettings = toml::from_str(text).unwrap();
        seawall::eject::EjectionLayer::builder()
            .configure(&s)
            .build()
    };
    assert!(eject_with("latency_factor = 0.0").is_ok());
    let e = eject_with("latency_factor = -1.0").unwrap_err().to_string();
    assert!(e.contains("latency_factor must be above 1"), "{e}");
}

/// A reload checks the settings that take effect at the next build as that
/// build will: a section it takes is a section that builds.
#[tokio::test(start_paused = true)]
async fn a_reload_refuses_a_section_its_next_build_would_refuse() {
    let c = example();
    let payments = c.client("payments").unwrap();
    let before = payments.bulkhead_handle().max_concurrent();
    let reload = |toml_text: &str| {
        let cfg: ServiceConfig = toml::from_str(toml_text).unwrap();
        let section = cfg.client_settings("payments").unwrap().clone();
        let at_reload = payments.reload(&section).map_err(|e| e.to_string());
        let at_build = cfg
            .build_client("payments", ClientStack::builder("payments"))
            .map(|_| ())
            .map_err(|e| e.to_string());
        (at_reload, at_build)
    };
    // The attempt timeout above the total budget: refused by both, and the
    // reload changes nothing else in the section.
    let (at_reload, at_build) = reload(
        r#"
        [clients.payments]
        total_budget = "1s"
        attempt_timeout = "2s"
        bulkhead = { max_concurrent = 7 }
        "#,
    );
    let e = at_reload.unwrap_err();
    assert!(
        e.contains("payments: attempt_timeout must be at most total_budget (1s), got 2s"),
        "{e}"
    );
    assert!(
        at_build
            .unwrap_err()
            .contains("attempt_timeout must be at most total_budget")
    );
    assert_eq!(payments.bulkhead_handle().max_concurrent(), before);
    // No room for a second attempt: refused by both.
    let (at_reload, at_build) = reload(
        r#"
        [clients.payments]
        total_budget = "1s"
        attempt_timeout = "990ms"
        "#,
    );
    assert!(
        at_reload
            .unwrap_err()
            .contains("retry schedule does not fit")
    );
    assert!(
        at_build
            .unwrap_err()
            .contains("retry schedule does not fit")
    );
    // No attempt at all: refused by both, named by the retry layer.
    let (at_reload, at_build) = reload(
        r#"
        [clients.payments]
        total_budget = "2s"
        attempt_timeout = "500ms"
        retry = { max_attempts = 0 }
        bulkhead = { max_concurrent = 7 }
        "#,
    );
    let e = at_reload.unwrap_err();
    assert!(
        e.contains("payments.retry: max_attempts must be in 1..=100, got 0"),
        "{e}"
    );
    assert!(
        at_build
            .unwrap_err()
            .contains("max_attempts must be in 1..=100, got 0")
    );
    assert_eq!(payments.bulkhead_handle().max_concurrent(), before);
    // A section that builds reloads.
    let (at_reload, at_build) = reload(
        r#"
        [clients.payments]
        total_budget = "2s"
        attempt_timeout = "500ms"
        bulkhead = { max_concurrent = 7 }
        "#,
    );
    assert_eq!((at_reload, at_build), (Ok(()), Ok(())));
    assert_eq!(payments.bulkhead_handle().max_concurrent(), 7);
}

/// A stack with no attempt timeout set has half its total budget: a reload
/// of the budget alone is checked with half the new budget, as the next
/// build will take it.
#[tokio::test(start_paused = true)]
async fn a_reload_checks_the_default_attempt_timeout_against_the_new_budget() {
    let payments = ClientStack::builder("payments")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(
        payments.attempt_timeout().per_try(),
        Duration::from_millis(500)
    );
    let section = |text: &str| {
        toml::from_str::<ServiceConfig>(text)
            .unwrap()
            .client_settings("payments")
            .unwrap()
            .clone()
    };
    // 2 s: 1 s attempts fit.
    payments
        .reload(&section("[clients.payments]\ntotal_budget = \"2s\""))
        .unwrap();
    // 100 ms: 50 ms attempts leave no room for the first backoff.
    let e = payments
        .reload(&section("[clients.payments]\ntotal_budget = \"100ms\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("attempt_timeout (50ms)"), "{e}");
}

/// A slow-call time set in code stays at the next build when the file sets
/// none: a reload to an attempt timeout at or below it is refused, as that
/// build would be (it was taken).
#[tokio::test(start_paused = true)]
async fn a_client_reload_checks_a_slow_call_time_set_in_code() {
    let builder = || {
        ClientStack::builder("payments")
            .total_budget(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(500))
            .slow_call_duration(Duration::from_millis(400))
    };
    let stack = builder().build().unwrap();
    let cfg: ServiceConfig =
        toml::from_str("[clients.payments]\nattempt_timeout = \"300ms\"").unwrap();
    let section = cfg.client_settings("payments").unwrap();
    let at_build = builder()
        .configure(section)
        .build()
        .map(|_| ())
        .unwrap_err();
    assert!(
        at_build
            .to_string()
            .contains("slow_call_duration must be below attempt_timeout")
    );
    let e = stack.reload(section).unwrap_err().to_string();
    assert!(
        e.contains("slow_call_duration must be below attempt_timeout"),
        "{e}"
    );
    let fine: ServiceConfig =
        toml::from_str("[clients.payments]\nattempt_timeout = \"450ms\"").unwrap();
    stack
        .reload(fine.client_settings("payments").unwrap())
        .unwrap();
}

/// A retry floor the budget's window rounds to no retry is refused by a
/// reload before anything changes (it was refused after the breaker and
/// the bulkhead had taken the file's values).
#[tokio::test(start_paused = true)]
async fn a_reload_refused_for_its_retry_floor_changes_nothing() {
    let stack = ClientStack::builder("payments")
        .total_budget(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .retry(|r| r.budget_window(Duration::from_millis(200)))
        .build()
        .unwrap();
    let before = stack.bulkhead_handle().max_concurrent();
    let cfg: ServiceConfig = toml::from_str(
        "[clients.payments]\nretry = { min_retries_per_sec = 2 }\nbulkhead = { max_concurrent = 7 }",
    )
    .unwrap();
    let e = stack
        .reload(cfg.client_settings("payments").unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("less than one retry"), "{e}");
    assert_eq!(stack.bulkhead_handle().max_concurrent(), before);
}

/// A handler timeout set in code stays at the next build when the file sets
/// none: a reload to a budget below it is refused, as that build would be;
/// one left unset follows the budget down.
#[tokio::test(start_paused = true)]
async fn a_server_reload_checks_a_handler_timeout_set_in_code() {
    let section = server_section("[server]\ntotal_budget = \"1s\"");
    let set = ServerStack::builder("api")
        .total_budget(Duration::from_secs(5))
        .handler_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let e = set.reload(&section).unwrap_err().to_string();
    assert!(
        e.contains("handler_timeout must be at most total_budget"),
        "{e}"
    );
    let unset = ServerStack::builder("api")
        .total_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    unset.reload(&section).unwrap();
}

/// A server stack's bulkhead not set follows the adaptive limit's
/// maximum, at twice it (so that the limit's priority shares still
/// decide), when built and when a reload changes the maximum; one set in
/// code or by a reload stays as set.
#[tokio::test(start_paused = true)]
async fn a_server_bulkhead_not_set_follows_the_limit_maximum() {
    let budget = Duration::from_secs(1);
    let default = ServerStack::http("api")
        .total_budget(budget)
        .build()
        .unwrap();
    assert_eq!(default.bulkhead_handle().max_concurrent(), 2000);
    let raised = ServerStack::http("api")
        .total_budget(budget)
        .adaptive_limit(|l| l.limits(None, Some(5000)))
        .build()
        .unwrap();
    assert_eq!(raised.bulkhead_handle().max_concurrent(), 10_000);
    let lower = ServerStack::builder("api")
        .total_budget(budget)
        .adaptive_limit(|l| l.limits(None, Some(100)))
        .build()
        .unwrap();
    assert_eq!(lower.bulkhead_handle().max_concurrent(), 2000);
    let set = ServerStack::builder("api")
        .total_budget(budget)
        .adaptive_limit(|l| l.limits(None, Some(5000)))
        .bulkhead(|b| b.max_concurrent(300))
        .build()
        .unwrap();
    assert_eq!(set.bulkhead_handle().max_concurrent(), 300);

    // Reloads: the maximum raised, then lowered, moves the bulkhead with it.
    default
        .reload(&server_section("[server]\nlimit = { max_limit = 4000 }"))
        .unwrap();
    assert_eq!(default.bulkhead_handle().max_concurrent(), 8000);
    default
        .reload(&server_section("[server]\nlimit = { max_limit = 500 }"))
        .unwrap();
    assert_eq!(default.bulkhead_handle().max_concurrent(), 2000);
    // A reload that sets the bulkhead: it stays as set from then on.
    default
        .reload(&server_section(
            "[server]\nbulkhead = { max_concurrent = 700 }",
        ))
        .unwrap();
    default
        .reload(&server_section("[server]\nlimit = { max_limit = 4000 }"))
        .unwrap();
    assert_eq!(default.bulkhead_handle().max_concurrent(), 700);
    set.reload(&server_section("[server]\nlimit = { max_limit = 9000 }"))
        .unwrap();
    assert_eq!(set.bulkhead_handle().max_concurrent(), 300);
}

/// A budget at or below the header deadline's margin per hop (10 ms in
/// the presets) is refused as such, at build and at reload (a file that
/// reloads is a file that builds).
#[tokio::test(start_paused = true)]
async fn a_server_budget_within_the_hop_margin_is_refused_alike_at_build_and_reload() {
    let e = ServerStack::http("api")
        .total_budget(Duration::from_millis(10))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("total_budget must be above the margin per hop the header deadline takes off (10ms), got 10ms"),
        "{e}"
    );
    let preset = ServerStack::http("api")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let section = server_section("[server]\ntotal_budget = \"10ms\"");
    let e = preset.reload(&section).unwrap_err().to_string();
    assert!(
        e.contains("api: total_budget must be above the margin per hop"),
        "{e}"
    );
    // Without a header deadline there is no margin: the same budget builds
    // and reloads.
    let plain = ServerStack::builder("api")
        .total_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    plain.reload(&section).unwrap();
    ServerStack::builder("api")
        .total_budget(Duration::from_millis(10))
        .build()
        .unwrap();
}

/// The server's time budgets take effect at its next build; a reload
/// checks them as that build will, and a reload of values already in
/// place reports no change.
#[tokio::test(start_paused = true)]
async fn a_server_reload_checks_its_budgets_and_reports_only_changes() {
    use seawall::observe::{EventKind, Observer, Recorder};
    let rec = Recorder::new();
    let c = example();
    let server = c
        .build_server(
            ServerStack::builder("api")
                .observer(Observer::new(rec.clone()))
                .rate_limit(Quota::per_second(1), |r| r),
        )
        .unwrap();
    // A handler timeout above the budget: refused, named, nothing changed.
    let before = server.bulkhead_handle().max_concurrent();
    let e = server
        .reload(&server_section(
            r#"
            [server]
            total_budget = "5s"
            handler_timeout = "6s"
            bulkhead = { max_concurrent = 9 }
            "#,
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api: handler_timeout must be at most total_budget (5s), got 6s"),
        "{e}"
    );
    assert_eq!(server.bulkhead_handle().max_concurrent(), before);
    let built = c.build_server(ServerStack::builder("api").rate_limit(Quota::per_second(1), |r| r));
    assert!(built.is_ok(), "the example itself builds");
    // The file reloaded as it is: every value is in place, no event.
    let reconfigured = || {
        rec.count(|e| {
            matches!(
                e.kind,
                EventKind::Reconfigured | EventKind::LimitChanged { .. }
            )
        })
    };
    let quiet = reconfigured();
    server.reload(c.server_settings().unwrap()).unwrap();
    server.reload(c.server_settings().unwrap()).unwrap();
    assert_eq!(reconfigured(), quiet, "no change, no event");
    // One real change: one event, from the layer that changed.
    let mut s = c.server_settings().unwrap().clone();
    s.bulkhead.max_concurrent = Some(before + 1);
    server.reload(&s).unwrap();
    assert_eq!(reconfigured(), quiet + 1);
}

/// An open time above the default cap (600 s) in a file: the stack built
/// from it and a stack reloading it take it alike, the cap raised to it.
#[tokio::test(start_paused = true)]
async fn a_long_open_time_is_taken_alike_at_build_and_at_reload() {
    let long: ServiceConfig = toml::from_str(
        r#"
        [clients.payments]
        total_budget = "2s"
        attempt_timeout = "500ms"
        breaker = { open_duration = "20m" }
        "#,
    )
    .unwrap();
    let built = long.client("payments").unwrap();
    let t = built.breaker_handle().tuning();
    assert_eq!(
        (t.open_duration, t.max_open_duration),
        (Duration::from_secs(1200), Duration::from_secs(1200))
    );
    let running = example().client("payments").unwrap();
    running
        .reload(long.client_settings("payments").unwrap())
        .unwrap();
    let r = running.breaker_handle().tuning();
    assert_eq!(
        (r.open_duration, r.max_open_duration),
        (t.open_duration, t.max_open_duration)
    );
}

/// Two reloads at once end as one after the other, not as a mix: a reload
/// started (from another thread) while another is between its layers
/// waits for it. Here the second starts from the first's own
/// `Reconfigured` event, after the first set the limit's bounds and before
/// it set the bulkhead and the rate: it finished there and then, and the
/// first then set its bulkhead and rate over the second's (the limit from
/// one file, the rest from the other).
#[test]
fn two_reloads_at_once_do_not_mix() {
    use std::sync::{Arc, Mutex, OnceLock, mpsc};
    let file = |max: usize, bulkhead: usize, rate: &str| -> seawall::config::ServerSettings {
        let c: ServiceConfig = toml::from_str(&format!(
            "[server]\nlimit = {{ max_limit = {max} }}\nbulkhead = {{ max_concurrent = {bulkhead} }}\nrate_limit = \"{rate}\"\n"
        ))
        .unwrap();
        c.server_settings().unwrap().clone()
    };
    let (a, b) = (file(100, 100, "100/s"), file(200, 200, "200/s"));
    type Server = seawall::stack::ServerStackLayer<
        tower::layer::util::Identity,
        seawall::rate_limit::RateLimitLayer,
    >;
    let server_cell: Arc<OnceLock<Server>> = Arc::new(OnceLock::new());
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let started = Arc::new(Mutex::new(Some((b, tx))));
    let hook = {
        let server_cell = server_cell.clone();
        let started = started.clone();
        move |e: &seawall::observe::Event<'_>| {
            if !matches!(e.kind, seawall::observe::EventKind::Reconfigured) || e.name != "api.limit"
            {
                return;
            }
            let Some((b, tx)) = started.lock().unwrap().take() else {
                return;
            };
            let server = server_cell.get().unwrap().clone();
            std::thread::spawn(move || {
                server.reload(&b).unwrap();
                let _ = tx.send(());
            });
            // The second reload cannot finish while this one runs.
            let _ = rx.lock().unwrap().recv_timeout(Duration::from_millis(200));
        }
    };
    let server = ServerStack::builder("api")
        .total_budget(Duration::from_secs(1))
        .rate_limit(Quota::per_second(10), |r| r)
        .observer(seawall::Observer::new(hook))
        .build()
        .unwrap();
    let _ = server_cell.set(server.clone());
    server.reload(&a).unwrap();
    // The second reload, once it has run (within a second).
    let b_done = || {
        server.bulkhead_handle().max_concurrent() == 200
            && server.rate_limit().quota() == Quota::per_second(200)
    };
    for _ in 0..200 {
        if b_done() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let state = (
        server.bulkhead_handle().max_concurrent(),
        server.rate_limit().quota(),
    );
    assert_eq!(
        state,
        (200, Quota::per_second(200)),
        "the second reload, whole, after the first"
    );
}

/// A client section's `limit` sets the bounds of the client stack's
/// adaptive limit on its attempts, at build and at reload; a refused
/// reload (a minimum above the maximum) changes nothing, the breaker
/// included.
#[tokio::test(start_paused = true)]
async fn a_client_section_bounds_the_client_stack_s_adaptive_limit() {
    let cfg: ServiceConfig = toml::from_str(
        "[clients.payments]\ntotal_budget = \"2s\"\nattempt_timeout = \"500ms\"\nlimit = { max_limit = 30 }",
    )
    .unwrap();
    let stack =
        ClientStack::from_config("payments", cfg.client_settings("payments").unwrap()).unwrap();
    assert_eq!(stack.adaptive_limit().limit(), 30);

    let held: ServiceConfig =
        toml::from_str("[clients.payments]\nlimit = { min_limit = 1000, max_limit = 1000 }")
            .unwrap();
    stack
        .reload(held.client_settings("payments").unwrap())
        .unwrap();
    assert_eq!(stack.adaptive_limit().limit(), 1000);

    let before = stack.breaker_handle().tuning();
    let bad: ServiceConfig = toml::from_str(
        "[clients.payments]\nbreaker = { consecutive_failures = 7 }\nlimit = { min_limit = 50, max_limit = 40 }",
    )
    .unwrap();
    let e = stack
        .reload(bad.client_settings("payments").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("payments.limit") && e.contains("max_limit (40)"),
        "{e}"
    );
    assert_eq!(stack.adaptive_limit().limit(), 1000);
    assert_eq!(stack.breaker_handle().tuning(), before, "nothing changed");
}

/// A client section's `limit = { wait_at_limit = .. }` reaches the client
/// stack's limit, which waits at the limit by default, and a reload turns
/// it back on; a server stack's limit does not wait unless told to.
#[tokio::test(start_paused = true)]
async fn a_section_sets_the_wait_at_the_limit_and_a_reload_changes_it() {
    let default: ServiceConfig =
        toml::from_str("[clients.payments]\ntotal_budget = \"2s\"").unwrap();
    let stack =
        ClientStack::from_config("payments", default.client_settings("payments").unwrap()).unwrap();
    assert!(
        stack.adaptive_limit().wait_at_limit(),
        "a client stack's default"
    );
    let off: ServiceConfig = toml::from_str(
        "[clients.payments]\ntotal_budget = \"2s\"\nlimit = { wait_at_limit = false }",
    )
    .unwrap();
    let stack =
        ClientStack::from_config("payments", off.client_settings("payments").unwrap()).unwrap();
    assert!(!stack.adaptive_limit().wait_at_limit());
    let on: ServiceConfig =
        toml::from_str("[clients.payments]\nlimit = { wait_at_limit = true }").unwrap();
    stack
        .reload(on.client_settings("payments").unwrap())
        .unwrap();
    assert!(stack.adaptive_limit().wait_at_limit());

    let server: ServiceConfig = toml::from_str("[server]\ntotal_budget = \"1s\"").unwrap();
    let api = ServerStack::from_config("api", server.server_settings().unwrap()).unwrap();
    assert!(
        !api.adaptive_limit().wait_at_limit(),
        "a server stack's default"
    );
    let on: ServiceConfig = toml::from_str("[server]\nlimit = { wait_at_limit = true }").unwrap();
    api.reload(on.server_settings().unwrap()).unwrap();
    assert!(api.adaptive_limit().wait_at_limit());
}
