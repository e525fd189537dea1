#![cfg(all(
    feature = "metrics",
    feature = "circuit-breaker",
    feature = "rate-limit",
    feature = "shed"
))]
//! seawall's metrics as Prometheus scrapes them: the real
//! `metrics-exporter-prometheus` recorder and its HTTP listener on a free
//! loopback port (its own test binary: the recorder is process-wide), a
//! breaker that opens and a rate limiter that refuses, then one scrape over
//! a socket. Names carry their units (`_seconds`) and counters `_total`;
//! every seawall series has `# HELP` and `# TYPE` lines; the state gauge has
//! exactly one state at 1.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use seawall::observe::MetricsHook;
use seawall::rate_limit::{Quota, RateLimitLayer};
use seawall::{BoxError, Observer};
use tower::{ServiceBuilder, ServiceExt};

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_conventional_names_help_and_one_state() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .with_recommended_naming(true)
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .unwrap()
        .install()
        .unwrap();
    // Created after the recorder: it describes every metric to it.
    let observer = Observer::new(MetricsHook::new());

    let breaker = CircuitBreakerLayer::builder()
        .name("backend")
        .window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .observer(observer.clone())
        .build()
        .unwrap();
    let limit = RateLimitLayer::builder(Quota::per_second(30))
        .name("api")
        .observer(observer.clone())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(limit)
        .layer(breaker)
        .service(tower::service_fn(|fail: bool| async move {
            if fail {
                Err::<(), BoxError>("down".into())
            } else {
                Ok(())
            }
        }));
    for i in 0..40 {
        let _ = svc.clone().oneshot(i >= 2).await;
    }
    more_events(&observer).await;
    // A layer built and never called: its counters are there at zero, so
    // that a rate over them sees their first increase. And a layer built
    // again under a name that counted already (a reload) takes nothing
    // from its counts.
    let _idle = CircuitBreakerLayer::builder()
        .name("idle")
        .observer(observer.clone())
        .build()
        .unwrap();
    let _idle_limit = seawall::shed::AdaptiveLimitLayer::builder()
        .name("idle.limit")
        .observer(observer.clone())
        .build()
        .unwrap();
    let _again = RateLimitLayer::builder(Quota::per_second(30))
        .name("api")
        .observer(observer.clone())
        .build()
        .unwrap();

    // The listener serves once the recorder's exporter task runs.
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(body) = std::panic::catch_unwind(|| scrape(addr)) {
            if body.contains("seawall_") {
                text = body;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!text.is_empty(), "no seawall metrics scraped");

    // Every seawall series: a TYPE and a HELP line.
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut series: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            helps.insert(name.to_owned(), help.to_owned());
        } else if line.starts_with("seawall_") {
            series.push(line);
        }
    }
    println!("{text}");
    let expected = [
        ("seawall_calls_total", "counter"),
        ("seawall_call_duration_seconds", "histogram"),
        ("seawall_rejections_total", "counter"),
        ("seawall_state", "gauge"),
    ];
    for (name, kind) in expected {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        assert!(
            helps.get(name).is_some_and(|h| h.len() > 10),
            "{name} has a HELP line"
        );
    }
    for family in types.keys().filter(|n| n.starts_with("seawall_")) {
        assert!(helps.contains_key(family), "{family} has a HELP line");
    }
    assert!(
        series
            .iter()
            .any(|s| s.starts_with("seawall_call_duration_seconds_bucket{")),
        "the duration histogram's buckets"
    );
    // The adaptive limit against its calls in flight.
    for name in ["seawall_limit", "seawall_limit_inflight"] {
        assert_eq!(types.get(name).map(String::as_str), Some("gauge"), "{name}");
        assert!(helps.get(name).is_some_and(|h| h.len() > 10), "{name}");
        assert!(
            series
                .iter()
                .any(|s| s.starts_with(&format!("{name}{{")) && s.contains("name=\"server\"")),
            "{name} of the adaptive limit"
        );
    }
    // The later layers: a hedge, a fallback, an ejection, a retune.
    for (name, label) in [
        ("seawall_hedges_total", "layer=\"hedge\""),
        ("seawall_fallbacks_total", "reason=\"failure\""),
        ("seawall_ejections_total", "reason=\"consecutive_failures\""),
        (
            "seawall_reconfigurations_total",
            "layer=\"circuit_breaker\"",
        ),
    ] {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some("counter"),
            "{name}"
        );
        assert!(
            helps.get(name).is_some_and(|h| h.len() > 10),
            "{name} has a HELP line"
        );
        assert!(
            series
                .iter()
                .any(|s| s.starts_with(name) && s.contains(label)),
            "{name} with {label}"
        );
    }
    assert!(
        series
            .iter()
            .any(|s| s.starts_with("seawall_rejections_total{")
                && s.contains("reason=\"circuit_open\"")),
        "the breaker refused once open"
    );
    assert!(
        series
            .iter()
            .any(|s| s.starts_with("seawall_rejections_total{")
                && s.contains("reason=\"rate_limited\"")),
        "the limiter refused the excess"
    );
    // Built, never called: each counter of the layer at 0 (its calls by
    // outcome, its refusals by detail); built again: its counts kept.
    let value = |prefix: &str, labels: &[&str]| -> Option<f64> {
        series
            .iter()
            .find(|s| s.starts_with(prefix) && labels.iter().all(|l| s.contains(l)))
            .map(|s| s.rsplit(' ').next().unwrap().parse().unwrap())
    };
    for outcome in ["success", "failure", "overloaded", "refused", "ignored"] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            value("seawall_calls_total{", &["name=\"idle\"", &label]),
            Some(0.0),
            "{outcome}"
        );
    }
    // An adaptive limit's gauges, both there as it is built.
    assert_eq!(
        value("seawall_limit_inflight{", &["name=\"idle.limit\""]),
        Some(0.0)
    );
    assert!(value("seawall_limit{", &["name=\"idle.limit\""]).is_some_and(|l| l >= 1.0));
    assert_eq!(
        value(
            "seawall_call_duration_seconds_count{",
            &["name=\"idle\"", "outcome=\"failure\""]
        ),
        Some(0.0),
        "the duration histogram, registered at zero"
    );
    for detail in ["open", "half_open_full", "forced_open"] {
        let label = format!("detail=\"{detail}\"");
        assert_eq!(
            value("seawall_rejections_total{", &["name=\"idle\"", &label]),
            Some(0.0),
            "{detail}"
        );
    }
    let refused = value(
        "seawall_rejections_total{",
        &["name=\"api\"", "detail=\"limit\""],
    );
    assert!(refused.is_some_and(|n| n >= 5.0), "kept: {refused:?}");
    // The breaker's changes of state, by the state entered: opened once;
    // the idle one's at 0.
    assert_eq!(
        value(
            "seawall_state_changes_total{",
            &["name=\"backend\"", "state=\"open\""]
        ),
        Some(1.0)
    );
    for state in ["closed", "open", "half_open"] {
        let label = format!("state=\"{state}\"");
        assert_eq!(
            value("seawall_state_changes_total{", &["name=\"idle\"", &label]),
            Some(0.0),
            "{state}"
        );
    }
    // The breaker's state gauge: one series per state, exactly one at 1.
    let states: Vec<(&str, f64)> = series
        .iter()
        .filter(|s| s.starts_with("seawall_state{") && s.contains("name=\"backend\""))
        .map(|s| {
            let state = s
                .split("state=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let value: f64 = s.rsplit(' ').next().unwrap().parse().unwrap();
            (state, value)
        })
        .collect();
    assert!(states.len() >= 3, "{states:?}");
    let ones: Vec<_> = states.iter().filter(|(_, v)| *v == 1.0).collect();
    assert_eq!(ones.len(), 1, "exactly one state at 1: {states:?}");
    assert_eq!(ones[0].0, "open");
}

/// The Grafana dashboard in `examples/grafana` queries only what seawall
/// ships: every `seawall_*` name in its queries is a series the exporter
/// shows for the documented metrics (with Prometheus's recommended naming).
#[test]
fn the_grafana_dashboard_queries_shipped_metrics() {
    let text = include_str!("../../examples/grafana/seawall-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    let shipped = [
        "seawall_calls_total",
        "seawall_call_duration_seconds_bucket",
        "seawall_call_duration_seconds_sum",
        "seawall_call_duration_seconds_count",
        "seawall_rejections_total",
        "seawall_state",
        "seawall_retries_total",
        "seawall_retry_delay_seconds_bucket",
        "seawall_retry_gave_up_total",
        "seawall_retry_budget_exhausted_total",
        "seawall_limit",
        "seawall_limit_inflight",
        "seawall_input_ignored_total",
        "seawall_backend_errors_total",
        "seawall_hedges_total",
        "seawall_fallbacks_total",
        "seawall_ejections_total",
        "seawall_reconfigurations_total",
    ];
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs.push(
        dash["templating"]["list"][1]["query"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        let mut rest = expr.as_str();
        let mut found = 0;
        while let Some(at) = rest.find("seawall_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(shipped.contains(&name.as_str()), "{name} in {expr}");
            found += 1;
            rest = &rest[at + name.len()..];
        }
        assert!(found > 0, "a seawall metric in {expr}");
    }
}

/// One event of each kind the later layers report: a hedge sent, a
/// fallback answer, an endpoint ejected, a breaker retuned.
#[cfg(all(feature = "hedge", feature = "fallback", feature = "eject"))]
async fn more_events(observer: &Observer) {
    use seawall::eject::EjectionLayer;
    use seawall::fallback::{FallbackLayer, fallback_fn};
    use seawall::hedge::HedgeLayer;
    use seawall::observe::FallbackReason;
    use tower::{Layer, Service};

    let slow = tower::service_fn(|x: u32| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<u32, BoxError>(x)
    });
    let hedge = HedgeLayer::builder()
        .delay(Duration::from_millis(5))
        .observer(observer.clone())
        .build()
        .unwrap();
    hedge.layer(slow).oneshot(1).await.unwrap();

    let failing = tower::service_fn(|_: u32| async { Err::<u32, BoxError>("down".into()) });
    let fallback = FallbackLayer::builder(fallback_fn(
        |_: FallbackReason, _: Result<&u32, &BoxError>| async { Some(0) },
    ))
    .observer(observer.clone())
    .build()
    .unwrap();
    assert_eq!(fallback.layer(failing).oneshot(1).await.unwrap(), 0);

    let ejection = EjectionLayer::builder()
        .observer(observer.clone())
        .build()
        .unwrap();
    let mut endpoints: Vec<_> = (0..2).map(|_| ejection.layer(failing)).collect();
    for _ in 0..5 {
        let _ = endpoints[0].ready().await.unwrap().call(1).await;
    }
    assert_eq!(ejection.ejected(), 1);

    let breaker = CircuitBreakerLayer::builder()
        .observer(observer.clone())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut t = handle.tuning();
    t.open_duration = Duration::from_secs(5);
    handle.retune(t).unwrap();

    // An adaptive limit's windows: 30 calls of 2 ms in 20 ms windows (in
    // real time: the recorder is process-wide and shared with the scrape).
    let adaptive = seawall::shed::AdaptiveLimitLayer::builder()
        .name("server")
        .window(Duration::from_millis(20))
        .min_window_samples(1)
        .observer(observer.clone())
        .build()
        .unwrap();
    let server = adaptive.layer(tower::service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<(), BoxError>(())
    }));
    for _ in 0..30 {
        server.clone().oneshot(()).await.unwrap();
    }
}

#[cfg(not(all(feature = "hedge", feature = "fallback", feature = "eject")))]
async fn more_events(_: &Observer) {}
