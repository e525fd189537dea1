#![cfg(all(feature = "serde", feature = "http"))]
//! Settings from files: `examples/seawall.toml` builds the stacks the
//! builders build; refused settings name their path.

use std::time::Duration;

use seawall::config::ServiceConfig;
use seawall::stack::{ClientStack, ServerStack};
use tower::{Layer, ServiceExt};

fn example() -> ServiceConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/seawall.toml"
    ))
    .expect("the example file");
    toml::from_str(&text).expect("the example file parses")
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

    // The server: its budget and bulkhead.
    let server = c.server("api").unwrap();
    assert_eq!(server.bulkhead_handle().max_concurrent(), 800);
    let preset = ServerStack::http("api")
        .configure(c.server_settings().unwrap())
        .rate_limit(
            c.server_settings().unwrap().rate_limit.unwrap().quota(),
            |r| r,
        )
        .build()
        .unwrap();
    assert_eq!(preset.bulkhead_handle().max_concurrent(), 800);
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
    let e = refused(
        r#"{"methodConfig": [{"name": [{"service": "a.B"}], "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.1s"}}]}"#,
    );
    assert!(e.contains("hedges every method"), "{e}");
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

    let server = c.server("api").unwrap();
    let mut s = c.server_settings().unwrap().clone();
    s.bulkhead.max_concurrent = Some(100);
    server.reload(&s).unwrap();
    assert_eq!(server.bulkhead_handle().max_concurrent(), 100);
    s.bulkhead.max_concurrent = Some(0);
    assert!(server.reload(&s).is_err());
    assert_eq!(server.bulkhead_handle().max_concurrent(), 100);
}
